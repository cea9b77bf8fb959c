//! The bodies of the API's requests and answers, shared by the server and the CLI client
//! ([`crate::client`]): a field renamed on one side fails to compile on the other.
//!
//! Requests refuse unknown fields. Answers whose shape belongs to another layer are that
//! layer's types: the configuration, its revisions and diff and the audit log are the store's
//! ([`sluice_store`]), counters, routes and talkers the dataplane view's ([`crate::show`]).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sluice_store::{Author, Pending, Role, XdpMode};

pub use sluice_store::{Config, StaticRoute};

pub use crate::bird::status::{ProtocolStatus, Protocols, RouteCounts};

// Requests.

/// `POST /setup`: the first administrator, with the one-time setup token.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Setup {
    /// The setup token (`STATE/setup-token`).
    pub token: String,
    /// Login name.
    pub username: String,
    /// Password.
    pub password: String,
}

/// `POST /login`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Login {
    /// Login name.
    pub username: String,
    /// Password.
    pub password: String,
}

/// `POST /users`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    /// Login name.
    pub name: String,
    /// Password.
    pub password: String,
    /// What the user may do.
    pub role: Role,
}

/// `PATCH /users/{name}`: what changes.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserPatch {
    /// A new password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// A new role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
}

/// `POST /tokens`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    /// A name for it, 1 to 64 characters.
    pub name: String,
    /// `read` or `admin`.
    pub scope: String,
    /// Days until it expires (none: when revoked; a token made by a token expires with it at
    /// the latest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_days: Option<u32>,
}

/// `POST /interfaces/{name}/attach` (the body may be empty): the XDP mode, if not the
/// configured one (`auto` for a new port).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attach {
    /// The XDP attach mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xdp_mode: Option<XdpMode>,
}

/// `DELETE /routes/static`: the route to remove (or `?prefix=P[&metric=M]`).
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteKey {
    /// Its prefix.
    pub prefix: ipnet::IpNet,
    /// Its metric; any metric when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<u32>,
}

/// `POST /config/commit`: commits the candidate.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Commit {
    /// Why.
    #[serde(default)]
    pub message: String,
    /// Rolled back unless confirmed within this many seconds (10 to 3600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirm_seconds: Option<u64>,
}

/// `POST /config/rollback`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rollback {
    /// The revision committed again.
    pub revision: u64,
    /// Why.
    #[serde(default)]
    pub message: String,
}

/// `POST /plugins`: a plugin, or a new version of one.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewPlugin {
    /// Its manifest (the plugin host reads it).
    pub manifest: Value,
    /// Its component (.wasm), in base64.
    pub wasm_base64: String,
    /// Its configuration; `{}` when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<Value>,
    /// Run it at once (the default), or only store it.
    #[serde(default = "yes")]
    pub enabled: bool,
}

const fn yes() -> bool {
    true
}

/// `PATCH /plugins/{name}`.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginPatch {
    /// Run it, or stop it keeping its store.
    pub enabled: bool,
}

/// `POST /diagnostics/ping` and `/diagnostics/traceroute`.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Diagnostic {
    /// The address probed (an address only: no name is looked up).
    pub target: std::net::IpAddr,
}

// Answers.

/// `GET /health`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Health {
    /// `ok`.
    pub status: String,
    /// Whether the first administrator exists.
    pub set_up: bool,
    /// The daemon's version.
    pub version: String,
    /// The plugin host: its state, restarts, and the plugins running and quarantined.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugins: Option<crate::plugins::HostReport>,
}

/// A user as made or changed: `POST /setup`, `POST /users`, `PATCH /users/{name}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UserRef {
    /// Login name.
    pub name: String,
    /// What the user may do.
    pub role: Role,
}

/// `POST /login`: the session's cookie comes in `Set-Cookie`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LoggedIn {
    /// Login name.
    pub name: String,
    /// What the user may do.
    pub role: Role,
    /// To echo in `X-CSRF-Token` on every state-changing request.
    pub csrf_token: String,
}

/// `POST /logout`.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct LoggedOut {
    /// `true`.
    pub logged_out: bool,
}

/// `GET /me`: the caller.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Me {
    /// Who, as the audit log names it (`USER:token:ID` for a token).
    pub name: String,
    /// The user (a token's owner).
    pub user: String,
    /// What the caller may do now.
    pub role: Role,
    /// A session's CSRF token (for a console page reloaded); none for a token.
    pub csrf_token: Option<String>,
}

/// A user of `GET /users`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UserInfo {
    /// Login name.
    pub name: String,
    /// What the user may do.
    pub role: Role,
    /// When made, ms since the Unix epoch.
    pub created_ms: u64,
}

/// `DELETE /users/{name}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Deleted {
    /// The user deleted.
    pub deleted: String,
}

/// A token of `GET /tokens` (never its secret).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TokenInfo {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// `read` or `admin`.
    pub scope: String,
    /// The user who made it.
    pub owner: String,
    /// When made, ms since the Unix epoch.
    pub created_ms: u64,
    /// When it expires, ms since the Unix epoch (none: when revoked).
    #[serde(default)]
    pub expires_ms: Option<u64>,
    /// The token that made it, which it ends with.
    #[serde(default)]
    pub parent: Option<String>,
}

/// `POST /tokens`: the token, with its secret shown this once.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MintedToken {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// `read` or `admin`.
    pub scope: String,
    /// The secret, for `Authorization: Bearer`.
    pub token: String,
    /// When it expires, ms since the Unix epoch (none: when revoked).
    #[serde(default)]
    pub expires_ms: Option<u64>,
    /// That it is shown once.
    pub note: String,
}

/// Anonymous requests to a public route refused (`GET /audit/refused`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Refused {
    /// `METHOD /path`.
    pub route: String,
    /// The status they were answered.
    pub status: u16,
    /// How many since the daemon started.
    pub count: u64,
}

/// `DELETE /tokens/{id}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Revoked {
    /// The token revoked.
    pub revoked: String,
}

/// An interface of `GET /interfaces`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InterfaceInfo {
    /// Its name.
    pub name: String,
    /// Its index.
    pub ifindex: Option<u32>,
    /// `up`, `down` or `no-carrier`.
    pub state: String,
    /// Its MAC address.
    pub mac: Option<String>,
    /// Its MTU, when the dataplane serves it.
    pub mtu: Option<u32>,
    /// The XDP mode in use, when attached.
    pub xdp_mode: Option<String>,
    /// A routed port: `fixed` (the daemon's `--attach`), `configured`, or none.
    pub routed: Option<String>,
    /// Set while the port cannot take the frames XDP redirects to it (they go through the
    /// kernel instead): the cause, the veth peer if any, and the remedy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_not_ready: Option<sluice_dataplane::egress::NotReady>,
}

/// `POST /interfaces/{name}/attach`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Attached {
    /// The interface.
    pub name: String,
    /// `configured`.
    pub routed: String,
    /// The XDP mode configured.
    pub xdp_mode: XdpMode,
}

/// `POST /interfaces/{name}/detach`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Detached {
    /// The interface.
    pub name: String,
    /// None: no longer routed.
    pub routed: Option<String>,
}

/// `GET /routes`: the dataplane's routes, searched and cut.
#[derive(Clone, Debug, Serialize)]
pub struct RouteList {
    /// The routes returned.
    pub routes: Vec<RouteEntry>,
    /// Routes the dataplane holds.
    pub total: usize,
    /// Routes the search matched.
    pub matched: usize,
}

/// A route of `GET /routes`: as the dataplane holds it, and where it came from when looked up.
#[derive(Clone, Debug, Serialize)]
pub struct RouteEntry {
    /// The route.
    #[serde(flatten)]
    pub route: crate::show::RouteJson,
    /// Who installed it (`static`, `bird`, `kernel`, `local`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<&'static str>,
    /// Its protocol number (`rtm_protocol`); null for a neighbour's host route.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Option<u8>>,
}

/// What was removed: `DELETE /routes/static` (its prefix), `DELETE /plugins/{name}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Removed {
    /// The prefix or plugin.
    pub removed: String,
}

/// `GET /config`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Running {
    /// The running revision.
    pub revision: Option<u64>,
    /// Its configuration.
    pub config: Config,
    /// A commit waiting for its confirmation.
    pub pending_confirm: Option<Pending>,
}

/// `PUT /config/candidate`.
#[derive(Clone, Debug, Serialize)]
pub struct Staged {
    /// The candidate against the running revision.
    pub diff: Vec<sluice_store::Change>,
}

/// `DELETE /config/candidate`.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Discarded {
    /// `true`.
    pub discarded: bool,
}

/// `POST /config/commit`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Committed {
    /// The new revision.
    pub revision: u64,
    /// The confirmation it waits for, if asked.
    pub pending_confirm: Option<Pending>,
}

/// `POST /config/confirm`.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Confirmed {
    /// `true`.
    pub confirmed: bool,
}

/// A revision made: `POST /config/rollback`, `POST /config/import`.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct RevisionRef {
    /// The new revision.
    pub revision: u64,
}

/// A revision of `GET /config/revisions`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RevisionInfo {
    /// Its number.
    pub id: u64,
    /// When, ms since the Unix epoch.
    pub at_ms: u64,
    /// Who, from where, why.
    pub author: Author,
}

/// A plugin of `GET /plugins`: running (as the plugin host reports it) or only stored.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PluginEntry {
    /// Its name.
    pub name: String,
    /// Its version.
    pub version: Value,
    /// The tables it may write.
    pub tables: Value,
    /// SHA-256 of its component.
    pub sha256: String,
    /// The publisher key that signed it (running plugins only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publisher: Option<Option<String>>,
    /// `store` (the API) or `directory` (`--plugins DIR`).
    pub source: String,
    /// `state` (`running`, `quarantined` with its `reason`, `not-started`, `disabled`).
    pub status: Value,
    /// Rules it holds in the hook tables.
    pub rules: usize,
    /// Whether it runs.
    pub enabled: bool,
    /// What its current instance has used (running plugins only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Value>,
    /// Events it lost because it fell more than a few batches behind (running plugins only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropped_events: Option<u64>,
    /// Its configuration, when stored.
    pub config: Option<Value>,
}

/// `POST /plugins`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PluginAdded {
    /// Its name.
    pub name: String,
    /// SHA-256 of its component.
    pub sha256: String,
    /// Whether it runs.
    pub enabled: bool,
}

/// `PATCH /plugins/{name}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PluginEnabled {
    /// Its name.
    pub name: String,
    /// Whether it runs.
    pub enabled: bool,
}

/// `PUT /plugins/{name}/config`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PluginConfigured {
    /// Its name.
    pub name: String,
    /// `true`.
    pub configured: bool,
}

/// A line of `GET /plugins/{name}/logs`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PluginLogLine {
    /// When, ms since the Unix epoch.
    pub at_ms: u64,
    /// `debug`, `info`, `warn`, `error`, or `host` for what the host says about the plugin.
    pub level: String,
    /// The message.
    pub message: String,
}

/// `POST /diagnostics/ping` and `/diagnostics/traceroute`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DiagnosticOutput {
    /// The command run.
    pub command: String,
    /// Whether it succeeded.
    pub ok: bool,
    /// What it printed.
    pub output: String,
}
