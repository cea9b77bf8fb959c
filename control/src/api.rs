//! The REST API under `/api/v1`, served over HTTPS by the daemon (`--listen`), and Prometheus
//! metrics at `/metrics`.
//!
//! - Every route is listed once, in [`ROUTES`], with who may call it; the router, the access
//!   check and the `OpenAPI` document (`/api/v1/openapi.json`) all read that table.
//! - No default credentials: until the first administrator exists, a one-time setup token
//!   (printed in the log, written to `STATE/setup-token`) lets one be made (`POST /setup`).
//! - Users log in for a session cookie (`HttpOnly`, `Secure`, `SameSite=Strict`) and a CSRF token that
//!   every state-changing request must echo in `X-CSRF-Token`; API tokens (`Authorization:
//!   Bearer`) are scoped read or admin, shown once and stored as SHA-256 hashes. Passwords are
//!   argon2 hashes; failed logins are throttled per user and per source.
//! - Errors are RFC 9457 problem+json, naming the fields at fault; a request that fails writes
//!   nothing. Every change is in the audit log.

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use argon2::{
    Argon2, PasswordHash, PasswordHasher as _, PasswordVerifier as _, password_hash::SaltString,
};
use futures::StreamExt as _;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use sluice_store::{AuditEntry, Author, Config, FieldError, Role, StaticRoute, Store, StoreError};
use tokio::sync::Notify;
use tracing::{info, warn};
use warp::{
    Filter as _, Reply as _,
    http::{Method, StatusCode, header},
    hyper::body::Bytes,
};

use sluice_dataplane::PinDir;

/// Largest request body.
pub const BODY_LIMIT: usize = 64 << 10;
/// Largest body of `POST /plugins` (a component, in base64).
pub const PLUGIN_BODY_LIMIT: usize = 32 << 20;
/// How long the API waits for the plugin thread (a compile and an `init`).
const PLUGIN_WAIT: Duration = Duration::from_secs(30);
/// The session cookie's name.
pub const SESSION_COOKIE: &str = "sluice_session";
/// How long a session lasts.
const SESSION_TTL: Duration = Duration::from_hours(12);
/// Failed logins allowed before the throttle starts.
const FREE_FAILURES: u32 = 5;
/// Longest wait the throttle imposes.
const MAX_LOCKOUT: Duration = Duration::from_mins(15);
/// Shortest password accepted.
const MIN_PASSWORD: usize = 10;

/// Who may call a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Anyone (health, login, setup).
    Public,
    /// Any authenticated user or token.
    Viewer,
    /// Administrators, and admin tokens.
    Admin,
}

/// A route of the API.
#[derive(Clone, Copy, Debug)]
pub struct RouteSpec {
    /// HTTP method.
    pub method: &'static str,
    /// Path under `/api/v1`, `{name}` for a parameter.
    pub path: &'static str,
    /// Who may call it.
    pub access: Access,
    /// What it does.
    pub summary: &'static str,
}

const fn route(
    method: &'static str,
    path: &'static str,
    access: Access,
    summary: &'static str,
) -> RouteSpec {
    RouteSpec { method, path, access, summary }
}

/// Every route of the API.
pub const ROUTES: &[RouteSpec] = &[
    route("GET", "/health", Access::Public, "Liveness and whether the router is set up"),
    route("POST", "/setup", Access::Public, "Creates the first administrator with the setup token"),
    route("POST", "/login", Access::Public, "Starts a session: cookie and CSRF token"),
    route("POST", "/logout", Access::Viewer, "Ends the session"),
    route("GET", "/me", Access::Viewer, "The caller"),
    route("GET", "/openapi.json", Access::Viewer, "This document"),
    route("GET", "/users", Access::Admin, "Users"),
    route("POST", "/users", Access::Admin, "Creates a user"),
    route("PATCH", "/users/{name}", Access::Admin, "Changes a user's password or role"),
    route("DELETE", "/users/{name}", Access::Admin, "Deletes a user and its tokens"),
    route("GET", "/tokens", Access::Viewer, "API tokens (an administrator sees all)"),
    route("POST", "/tokens", Access::Viewer, "Creates an API token, shown once"),
    route("DELETE", "/tokens/{id}", Access::Viewer, "Revokes an API token"),
    route("GET", "/audit", Access::Admin, "The audit log, newest first (?limit=N)"),
    route("GET", "/interfaces", Access::Viewer, "Interfaces, with the XDP mode when attached"),
    route("POST", "/interfaces/{name}/attach", Access::Admin, "Makes an interface a routed port"),
    route("POST", "/interfaces/{name}/detach", Access::Admin, "Takes a routed port out of routing"),
    route("GET", "/counters", Access::Viewer, "The dataplane's counters"),
    route("GET", "/top-talkers", Access::Viewer, "Sources forwarding the most, sampled (?limit=N)"),
    route("GET", "/counters/stream", Access::Viewer, "Counters every second (server-sent events)"),
    route(
        "GET",
        "/lookup-tables",
        Access::Viewer,
        "What the lookup tables hold and the memory they use (read from the tables)",
    ),
    route("GET", "/routes", Access::Viewer, "The routes the dataplane holds"),
    route("GET", "/routes/static", Access::Viewer, "Static routes of the running configuration"),
    route("POST", "/routes/static", Access::Admin, "Adds a static route (committed at once)"),
    route("DELETE", "/routes/static", Access::Admin, "Removes a static route (body or ?prefix=)"),
    route("GET", "/config", Access::Viewer, "The running configuration and its revision"),
    route("GET", "/config/candidate", Access::Viewer, "The candidate configuration"),
    route("PUT", "/config/candidate", Access::Admin, "Stages a candidate configuration"),
    route("DELETE", "/config/candidate", Access::Admin, "Discards the candidate"),
    route("GET", "/config/diff", Access::Viewer, "The candidate against the running revision"),
    route("POST", "/config/commit", Access::Admin, "Commits the candidate, optionally to confirm"),
    route("POST", "/config/confirm", Access::Admin, "Confirms a commit waiting for it"),
    route("POST", "/config/rollback", Access::Admin, "Commits an earlier revision again"),
    route("GET", "/config/revisions", Access::Viewer, "The revision history"),
    route("GET", "/config/revisions/{id}", Access::Viewer, "One revision"),
    route("GET", "/config/export", Access::Viewer, "The running configuration as a file"),
    route("GET", "/plugins", Access::Viewer, "Plugins: manifest, state, reason if quarantined"),
    route("POST", "/plugins", Access::Admin, "Adds a plugin, or a new version of one"),
    route("PATCH", "/plugins/{name}", Access::Admin, "Enables or disables a plugin"),
    route("DELETE", "/plugins/{name}", Access::Admin, "Removes a plugin, its rules and its store"),
    route("PUT", "/plugins/{name}/config", Access::Admin, "Changes a plugin's configuration"),
    route("GET", "/plugins/{name}/logs", Access::Viewer, "A plugin's log"),
    route("POST", "/diagnostics/ping", Access::Admin, "Pings an address from the router"),
    route("POST", "/diagnostics/traceroute", Access::Admin, "Traces the path to an address"),
    route("POST", "/config/import", Access::Admin, "Commits a configuration file"),
];

/// A question to the daemon: which protocol installed the routes of these prefixes.
pub type OriginQuery = (Vec<ipnet::IpNet>, std::sync::mpsc::Sender<Vec<Option<u8>>>);

/// How long a route list waits for the daemon's loop to name origins (it answers between two
/// batches of netlink events; without an answer the origins are left out).
const ORIGIN_WAIT: Duration = Duration::from_secs(2);

/// Routes returned with their origin at most (looking them up costs the daemon's loop).
const ORIGIN_MAX: usize = 10_000;

/// What a route's protocol number (`rtm_protocol`) says of where it came from.
fn origin_name(protocol: Option<u8>) -> &'static str {
    use netlink_packet_route::route::RouteProtocol as P;
    let Some(p) = protocol else { return "neighbour" };
    if p == sluice_dataplane::apply::RTPROT_SLUICE {
        return "static";
    }
    match P::from(p) {
        P::Kernel => "kernel",
        P::Boot => "boot",
        P::Static => "static (ip route)",
        P::Ra => "router advertisement",
        P::Zebra => "zebra (FRR)",
        P::Bird => "bird",
        P::Dhcp => "dhcp",
        P::Babel => "babel",
        P::Bgp => "bgp (FRR)",
        P::Isis => "is-is (FRR)",
        P::Ospf => "ospf (FRR)",
        P::Rip => "rip (FRR)",
        _ => "other",
    }
}

/// An RFC 9457 problem: what the API answers instead of a result.
#[derive(Clone, Debug, Serialize)]
pub struct Problem {
    /// Kind (`urn:sluice:problem:SLUG`).
    #[serde(rename = "type")]
    pub kind: String,
    /// Short title: the status's reason.
    pub title: String,
    /// HTTP status.
    pub status: u16,
    /// What went wrong, for people.
    pub detail: String,
    /// The fields at fault.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// Seconds to wait (429).
    #[serde(skip)]
    pub retry_after: Option<u64>,
}

impl warp::reject::Reject for Problem {}

impl Problem {
    /// A problem with a status, a slug and a detail.
    pub fn new(status: StatusCode, slug: &str, detail: impl Into<String>) -> Self {
        Self {
            kind: format!("urn:sluice:problem:{slug}"),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: detail.into(),
            errors: Vec::new(),
            retry_after: None,
        }
    }

    /// A 4xx naming fields.
    pub fn fields(status: StatusCode, detail: impl Into<String>, errors: Vec<FieldError>) -> Self {
        Self { errors, ..Self::new(status, "invalid-input", detail) }
    }

    fn field(field: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        Self::fields(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("{field}: {message}"),
            vec![FieldError { field: field.to_owned(), message }],
        )
    }

    fn response(&self) -> warp::reply::Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_REQUEST);
        let mut r = warp::reply::with_status(warp::reply::json(self), status).into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/problem+json"),
        );
        if let Some(s) = self.retry_after
            && let Ok(v) = header::HeaderValue::from_str(&s.to_string())
        {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        r
    }
}

impl From<StoreError> for Problem {
    fn from(e: StoreError) -> Self {
        let detail = e.to_string();
        match e {
            StoreError::Invalid(errors) => {
                Self::fields(StatusCode::UNPROCESSABLE_ENTITY, detail, errors)
            }
            StoreError::Parse(m) => Self::field("body", m),
            StoreError::NoRevision(id) => {
                Self::new(StatusCode::NOT_FOUND, "no-revision", format!("no revision {id}"))
            }
            StoreError::PendingConfirm(_) => {
                Self::new(StatusCode::CONFLICT, "pending-confirm", detail)
            }
            _ => Self::new(StatusCode::INTERNAL_SERVER_ERROR, "store", detail),
        }
    }
}

/// A user's session.
#[derive(Clone, Debug)]
struct Session {
    user: String,
    role: Role,
    csrf: String,
    expires: Instant,
}

/// Failed logins of one user or source.
#[derive(Clone, Copy, Debug, Default)]
struct Failures {
    count: u32,
    until: Option<Instant>,
}

/// Who is calling, once authenticated.
#[derive(Clone, Debug)]
struct Caller {
    who: String,
    /// The user behind it (a token's owner).
    user: String,
    role: Role,
    from: String,
    session: Option<String>,
}

/// The API's state.
pub struct Api {
    store: Store,
    pin: PinDir,
    state_dir: PathBuf,
    sessions: Mutex<HashMap<String, Session>>,
    failures: Mutex<HashMap<String, Failures>>,
    setup_token: Mutex<Option<String>>,
    /// Told when a commit changed the running configuration: the daemon applies it.
    pub changed: Arc<Notify>,
    requests: AtomicU64,
    plugins: Option<std::sync::mpsc::Sender<crate::plugins::Command>>,
    /// The daemon's `--attach` ports: attached whatever the configuration says.
    fixed_ports: Vec<String>,
    /// Asks the daemon which protocol installed routes (its RIB knows).
    origins: Option<tokio::sync::mpsc::UnboundedSender<OriginQuery>>,
    /// The top talkers' reads, for their rates.
    talkers: Mutex<crate::show::TalkerWindow>,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api").field("state_dir", &self.state_dir).finish_non_exhaustive()
    }
}

/// `n` random bytes, hex.
pub(crate) fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    getrandom::getrandom(&mut b).expect("the kernel's random numbers");
    crate::plugins::hex(&b)
}

pub(crate) fn sha256(s: &str) -> String {
    crate::plugins::hex(&Sha256::digest(s.as_bytes()))
}

/// Compares secrets in time that does not depend on where they differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The argon2 hash of a password (PHC string).
pub fn hash_password(password: &str) -> String {
    let mut salt = [0u8; 16];
    getrandom::getrandom(&mut salt).expect("the kernel's random numbers");
    let salt = SaltString::encode_b64(&salt).expect("16 bytes of salt");
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 with default parameters")
        .to_string()
}

fn password_matches(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash)
        .is_ok_and(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
}

/// The wait a throttle imposes after `count` failures in a row.
pub fn lockout(count: u32) -> Option<Duration> {
    let over = count.checked_sub(FREE_FAILURES)?;
    Some(Duration::from_secs(1u64 << over.min(20)).min(MAX_LOCKOUT))
}

pub(crate) fn username_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() || name.len() > 32 {
        Some("1 to 32 characters")
    } else if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
        Some("letters, digits, '.', '_' and '-' only")
    } else {
        None
    }
}

pub(crate) fn password_problem(p: &str) -> Option<String> {
    (p.chars().count() < MIN_PASSWORD).then(|| format!("at least {MIN_PASSWORD} characters"))
}

/// A request as the router sees it.
struct Request {
    method: Method,
    path: String,
    query: HashMap<String, String>,
    bearer: Option<String>,
    cookie: Option<String>,
    csrf: Option<String>,
    from: String,
    body: Bytes,
}

/// What a handler answers.
enum Answer {
    Json(StatusCode, Value),
    Text(&'static str, String),
    Session(Value, String),
    Stream,
}

type Reply = Result<Answer, Problem>;

#[expect(clippy::unnecessary_wraps, reason = "handlers answer through it with `?` beside")]
fn ok(v: impl Serialize) -> Reply {
    Ok(Answer::Json(StatusCode::OK, serde_json::to_value(v).unwrap_or(Value::Null)))
}

#[expect(clippy::unnecessary_wraps, reason = "as `ok`")]
fn created(v: impl Serialize) -> Reply {
    Ok(Answer::Json(StatusCode::CREATED, serde_json::to_value(v).unwrap_or(Value::Null)))
}

/// The body as `T`: 400 for what is not JSON, 422 naming the field at fault.
fn body<T: DeserializeOwned>(b: &Bytes) -> Result<T, Problem> {
    let de = &mut serde_json::Deserializer::from_slice(b);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let detail = format!("the body: {}", e.inner());
        if e.inner().is_syntax() || e.inner().is_eof() {
            return Problem::fields(
                StatusCode::BAD_REQUEST,
                detail,
                vec![FieldError { field: "body".into(), message: "malformed JSON".into() }],
            );
        }
        // The path of the value that failed (an unknown field's own); a missing field is
        // named only in serde's message.
        let msg = e.inner().to_string();
        let path = e.path().to_string();
        let field = if path == "." {
            msg.split('`').nth(1).filter(|_| msg.contains("field")).unwrap_or("body").to_owned()
        } else {
            path
        };
        Problem::fields(
            StatusCode::UNPROCESSABLE_ENTITY,
            detail,
            vec![FieldError { field, message: msg }],
        )
    })
}

/// The route of `ROUTES` a request names, with its parameters.
fn find_route(method: &Method, path: &str) -> Result<(&'static RouteSpec, Vec<String>), Problem> {
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let mut path_known = false;
    for spec in ROUTES {
        let pat: Vec<&str> = spec.path.split('/').skip(1).collect();
        if pat.len() != segs.len() {
            continue;
        }
        let mut params = Vec::new();
        let fits = pat.iter().zip(&segs).all(|(p, s)| {
            if p.starts_with('{') {
                params.push((*s).to_owned());
                !s.is_empty()
            } else {
                p == s
            }
        });
        if !fits {
            continue;
        }
        path_known = true;
        if spec.method == method.as_str() {
            return Ok((spec, params));
        }
    }
    Err(if path_known {
        Problem::new(StatusCode::METHOD_NOT_ALLOWED, "method", format!("{method} {path}"))
    } else {
        Problem::new(StatusCode::NOT_FOUND, "not-found", format!("no route {path}"))
    })
}

impl Api {
    /// The API over a store; makes the setup token when no administrator exists yet.
    pub fn new(store: Store, pin: PinDir, state_dir: &Path) -> anyhow::Result<Self> {
        let api = Self {
            store,
            pin,
            state_dir: state_dir.to_owned(),
            sessions: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            setup_token: Mutex::new(None),
            changed: Arc::new(Notify::new()),
            requests: AtomicU64::new(0),
            plugins: None,
            fixed_ports: Vec::new(),
            origins: None,
            talkers: Mutex::new(crate::show::TalkerWindow::default()),
        };
        let path = api.state_dir.join("setup-token");
        if api.store.is_set_up()? {
            let _ = std::fs::remove_file(&path);
        } else {
            let token = random_hex(32);
            write_private(&path, token.as_bytes())?;
            warn!(
                token = %token,
                file = %path.display(),
                "no administrator yet: create one with this one-time setup token (POST /api/v1/setup or the console)"
            );
            eprintln!("sluice: one-time setup token: {token}");
            *api.setup_token.lock().expect("lock") = Some(token);
        }
        Ok(api)
    }

    /// Where plugin commands go (the daemon's plugin thread).
    #[must_use]
    pub fn with_plugins(mut self, tx: std::sync::mpsc::Sender<crate::plugins::Command>) -> Self {
        self.plugins = Some(tx);
        self
    }

    /// Where to ask which protocol installed a route.
    #[must_use]
    pub fn with_origins(mut self, tx: tokio::sync::mpsc::UnboundedSender<OriginQuery>) -> Self {
        self.origins = Some(tx);
        self
    }

    /// The protocols that installed these prefixes' routes (of the mirrored table), as the
    /// daemon's RIB has them; `None` where it has no route (a neighbour's host route) or does not
    /// answer in time.
    fn origins_of(&self, prefixes: Vec<ipnet::IpNet>) -> Vec<Option<u8>> {
        let n = prefixes.len();
        let Some(tx) = &self.origins else { return vec![None; n] };
        let (reply, answer) = std::sync::mpsc::channel();
        if tx.send((prefixes, reply)).is_err() {
            return vec![None; n];
        }
        answer.recv_timeout(ORIGIN_WAIT).unwrap_or_else(|_| vec![None; n])
    }

    /// `GET /routes`: the dataplane's routes, optionally searched (`q`, any text of a route)
    /// and cut (`limit`), each with its origin when at most [`ORIGIN_MAX`] are returned.
    fn routes(&self, r: &Request) -> Reply {
        let all = crate::show::routes(&self.pin).map_err(dataplane_problem)?;
        let limit = match r.query.get("limit") {
            None => None,
            Some(l) => Some(
                l.parse::<usize>()
                    .ok()
                    .filter(|n| (1..=1_000_000).contains(n))
                    .ok_or_else(|| Problem::field("limit", "1 to 1000000"))?,
            ),
        };
        let q = r.query.get("q").map(|q| q.trim().to_lowercase()).filter(|q| !q.is_empty());
        let mut doc = serde_json::to_value(&all).map_err(|e| {
            Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "encoding", e.to_string())
        })?;
        let mut list = match doc["routes"].take() {
            Value::Array(a) => a,
            _ => Vec::new(),
        };
        let total = list.len();
        if let Some(q) = &q {
            list.retain(|route| route.to_string().to_lowercase().contains(q.as_str()));
        }
        let matched = list.len();
        if let Some(l) = limit {
            list.truncate(l);
        }
        if list.len() <= ORIGIN_MAX {
            let prefixes: Vec<ipnet::IpNet> =
                list.iter().filter_map(|x| x["prefix"].as_str()?.parse().ok()).collect();
            if prefixes.len() == list.len() {
                for (route, proto) in list.iter_mut().zip(self.origins_of(prefixes)) {
                    let local = route["action"] == "local";
                    route["origin"] = json!(if local { "local" } else { origin_name(proto) });
                    route["protocol"] = json!(proto);
                }
            }
        }
        doc["routes"] = Value::Array(list);
        doc["total"] = json!(total);
        doc["matched"] = json!(matched);
        ok(doc)
    }

    /// The ports the daemon attaches by its `--attach` option (they cannot be detached here).
    #[must_use]
    pub fn with_fixed_ports(mut self, ports: Vec<String>) -> Self {
        self.fixed_ports = ports;
        self
    }

    /// Asks the plugin thread something and waits for the answer.
    fn ask_plugins<T>(
        &self,
        make: impl FnOnce(std::sync::mpsc::Sender<T>) -> crate::plugins::Command,
    ) -> Result<T, Problem> {
        let unavailable = |d: &str| {
            Problem::new(StatusCode::SERVICE_UNAVAILABLE, "plugins-unavailable", d.to_owned())
        };
        let tx = self.plugins.as_ref().ok_or_else(|| unavailable("this daemon runs no plugins"))?;
        let (reply, answer) = std::sync::mpsc::channel();
        tx.send(make(reply)).map_err(|_| unavailable("the plugin host is not running"))?;
        answer.recv_timeout(PLUGIN_WAIT).map_err(|_| unavailable("the plugin host did not answer"))
    }

    /// Starts (or restarts) a plugin with the plugin thread: the refusal is the caller's 422.
    fn start_plugin(&self, w: crate::plugins::Wanted) -> Result<(), Problem> {
        self.ask_plugins(|reply| crate::plugins::Command::Put(w, reply))?
            .map_err(|m| Problem::field("plugin", m))
    }

    /// The stored plugin `name`, ready to run with `config`.
    fn stored_plugin(
        &self,
        name: &str,
        config: Option<&Value>,
    ) -> Result<(sluice_store::Plugin, crate::plugins::Wanted), Problem> {
        let p = self.store.config()?.plugins.remove(name).ok_or_else(|| {
            Problem::new(StatusCode::NOT_FOUND, "no-plugin", format!("no plugin {name:?}"))
        })?;
        let manifest = serde_json::from_value(p.manifest.clone())
            .map_err(|e| Problem::field("manifest", format!("the stored manifest: {e}")))?;
        let wasm = self.store.wasm(&p.wasm_sha256)?.ok_or_else(|| {
            Problem::new(StatusCode::CONFLICT, "no-component", "the component is not stored")
        })?;
        let config = config.unwrap_or(&p.config).to_string();
        Ok((p, crate::plugins::Wanted { manifest, wasm: Arc::new(wasm), config }))
    }

    /// Commits the running configuration with plugin `name` set (or removed).
    fn commit_plugin(
        &self,
        name: &str,
        plugin: Option<sluice_store::Plugin>,
        c: &Caller,
        message: String,
    ) -> Result<(), Problem> {
        let mut config = self.store.config()?;
        match plugin {
            Some(p) => config.plugins.insert(name.to_owned(), p),
            None => config.plugins.remove(name),
        };
        self.store.commit_change(&config, &Self::author(c, message), None)?;
        self.changed.notify_one();
        Ok(())
    }

    fn plugin_list(&self) -> Reply {
        let running = self.ask_plugins(crate::plugins::Command::List).unwrap_or_default();
        let stored = self.store.config()?.plugins;
        let mut out: Vec<Value> = running
            .iter()
            .map(|p| {
                let s = stored.get(&p.name);
                json!({"name": p.name, "version": p.version, "tables": p.tables,
                       "sha256": p.sha256, "publisher": p.publisher, "source": p.source,
                       "status": p.status, "rules": p.rules, "enabled": true, "usage": p.usage,
                       "config": s.map(|s| &s.config)})
            })
            .collect();
        for (name, p) in stored.iter().filter(|(n, _)| !running.iter().any(|r| r.name == **n)) {
            let state = if p.enabled { "not-started" } else { "disabled" };
            out.push(json!({"name": name, "version": p.manifest["version"],
                            "tables": p.manifest["tables"], "sha256": p.wasm_sha256,
                            "source": "store", "status": {"state": state}, "rules": 0,
                            "enabled": p.enabled, "config": p.config}));
        }
        ok(out)
    }

    fn plugin_add(&self, r: &Request, c: &Caller) -> Reply {
        let b: NewPlugin = body(&r.body)?;
        let wasm =
            base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &b.wasm_base64)
                .map_err(|e| Problem::field("wasm_base64", format!("not base64: {e}")))?;
        let manifest: crate::plugins::Manifest = serde_json::from_value(b.manifest.clone())
            .map_err(|e| Problem::field("manifest", e.to_string()))?;
        let name = manifest.name.clone();
        let sha = crate::plugins::sha256_hex(&wasm);
        if !sha.eq_ignore_ascii_case(&manifest.sha256) {
            return Err(Problem::field(
                "manifest.sha256",
                format!("the component's SHA-256 is {sha}, the manifest says {}", manifest.sha256),
            ));
        }
        let config = b.config.unwrap_or_else(|| json!({}));
        let wasm = Arc::new(wasm);
        if b.enabled {
            let w = crate::plugins::Wanted {
                manifest,
                wasm: Arc::clone(&wasm),
                config: config.to_string(),
            };
            self.start_plugin(w)?;
        }
        self.store.put_wasm(&sha, &wasm)?;
        let p = sluice_store::Plugin {
            wasm_sha256: sha,
            manifest: b.manifest,
            config,
            enabled: b.enabled,
        };
        self.commit_plugin(&name, Some(p.clone()), c, format!("add plugin {name}"))?;
        created(json!({"name": name, "sha256": p.wasm_sha256, "enabled": p.enabled}))
    }

    fn author(c: &Caller, message: impl Into<String>) -> Author {
        Author { who: c.who.clone(), from: c.from.clone(), message: message.into() }
    }

    fn audit(&self, who: &str, from: &str, action: String, outcome: &Result<Answer, Problem>) {
        let outcome = match outcome {
            Ok(_) => "ok".to_owned(),
            Err(p) => format!("{} {}", p.status, p.detail),
        };
        let entry = AuditEntry {
            seq: 0,
            at_ms: 0,
            who: who.to_owned(),
            from: from.to_owned(),
            action,
            outcome,
        };
        if let Err(e) = self.store.audit(entry) {
            warn!(error = %e, "writing the audit log failed");
        }
    }

    /// Authenticates a request: a bearer token, or a session cookie (with its CSRF token on a
    /// state-changing request).
    fn caller(&self, r: &Request) -> Result<Caller, Problem> {
        let unauthorized =
            |d: &str| Problem::new(StatusCode::UNAUTHORIZED, "unauthenticated", d.to_owned());
        if let Some(secret) = &r.bearer {
            let token = self
                .store
                .token_by_hash(&sha256(secret))?
                .ok_or_else(|| unauthorized("unknown or revoked token"))?;
            let owner = self
                .store
                .user(&token.owner)?
                .ok_or_else(|| unauthorized("the token's owner no longer exists"))?;
            return Ok(Caller {
                who: format!("{}:token:{}", owner.name, token.id),
                user: owner.name,
                role: token.scope.min(owner.role),
                from: r.from.clone(),
                session: None,
            });
        }
        let Some(id) = &r.cookie else {
            return Err(unauthorized("log in, or send an API token (Authorization: Bearer)"));
        };
        let session = {
            let mut sessions = self.sessions.lock().expect("lock");
            sessions.retain(|_, s| s.expires > Instant::now());
            sessions.get(id).cloned().ok_or_else(|| unauthorized("the session has ended"))?
        };
        if r.method != Method::GET && r.method != Method::HEAD {
            let good = r.csrf.as_deref().is_some_and(|t| same_secret(t, &session.csrf));
            if !good {
                let p = Problem::new(
                    StatusCode::FORBIDDEN,
                    "csrf",
                    "a state-changing request needs the session's X-CSRF-Token header",
                );
                // Likely a forged request riding the user's cookie: the log says so.
                let action = format!("{} /api/v1{}", r.method, r.path);
                self.audit(&session.user, &r.from, action, &Err(p.clone()));
                return Err(p);
            }
        }
        // A user deleted or demoted since logging in loses what it lost.
        let user = self
            .store
            .user(&session.user)?
            .ok_or_else(|| unauthorized("the user no longer exists"))?;
        Ok(Caller {
            who: user.name.clone(),
            user: user.name,
            role: user.role.min(session.role),
            from: r.from.clone(),
            session: Some(id.clone()),
        })
    }

    /// Answers one request (not the event stream).
    fn handle(&self, r: &Request) -> Reply {
        let (spec, params) = find_route(&r.method, &r.path)?;
        let caller = match spec.access {
            Access::Public => None,
            access => {
                let c = self.caller(r)?;
                if access == Access::Admin && c.role != Role::Admin {
                    let p = Problem::new(
                        StatusCode::FORBIDDEN,
                        "forbidden",
                        format!("{} {} needs an administrator", spec.method, spec.path),
                    );
                    // A change a known caller may not make is worth keeping.
                    if spec.method != "GET" {
                        let action = format!("{} /api/v1{}", spec.method, r.path);
                        self.audit(&c.who, &r.from, action, &Err(p.clone()));
                    }
                    return Err(p);
                }
                Some(c)
            }
        };
        let changes = spec.method != "GET";
        let outcome = self.route(spec, &params, r, caller.as_ref());
        if changes && spec.path != "/login" {
            let who = caller.as_ref().map_or("anonymous", |c| c.who.as_str());
            self.audit(who, &r.from, format!("{} /api/v1{}", spec.method, r.path), &outcome);
        }
        outcome
    }

    #[expect(clippy::too_many_lines, reason = "one arm a route, as ROUTES lists them")]
    #[expect(clippy::many_single_char_names, reason = "r, c, p: the request, caller, parameter")]
    fn route(
        &self,
        spec: &RouteSpec,
        params: &[String],
        r: &Request,
        caller: Option<&Caller>,
    ) -> Reply {
        let c = || caller.expect("an authenticated route");
        let param = || params.first().cloned().unwrap_or_default();
        match (spec.method, spec.path) {
            ("GET", "/health") => ok(json!({
                "status": "ok",
                "set_up": self.store.is_set_up()?,
                "version": env!("CARGO_PKG_VERSION"),
            })),
            ("POST", "/setup") => self.setup(r),
            ("POST", "/login") => self.login(r),
            ("POST", "/logout") => {
                if let Some(id) = &c().session {
                    self.sessions.lock().expect("lock").remove(id);
                }
                Ok(Answer::Session(json!({"logged_out": true}), String::new()))
            }
            ("GET", "/me") => {
                // A session's CSRF token, for a console page reloaded (cookies only: the
                // cookie is HttpOnly, same-origin, and this answer is JSON).
                let csrf = c().session.as_ref().and_then(|id| {
                    self.sessions.lock().expect("lock").get(id).map(|s| s.csrf.clone())
                });
                ok(json!({"name": c().who, "user": c().user, "role": c().role, "csrf_token": csrf}))
            }
            ("GET", "/openapi.json") => ok(openapi()),
            ("GET", "/users") => ok(self
                .store
                .users()?
                .into_iter()
                .map(|u| json!({"name": u.name, "role": u.role, "created_ms": u.created_ms}))
                .collect::<Vec<_>>()),
            ("POST", "/users") => {
                let n: NewUser = body(&r.body)?;
                check_user(&n.name, &n.password)?;
                if self.store.user(&n.name)?.is_some() {
                    return Err(Problem::new(
                        StatusCode::CONFLICT,
                        "exists",
                        format!("user {:?} exists", n.name),
                    ));
                }
                let user = sluice_store::User {
                    name: n.name.clone(),
                    role: n.role,
                    password_hash: hash_password(&n.password),
                    created_ms: crate::plugins::now_ms(),
                };
                self.store.put_user(&user)?;
                created(json!({"name": n.name, "role": n.role}))
            }
            ("PATCH", "/users/{name}") => {
                let p: UserPatch = body(&r.body)?;
                let mut user = self.store.user(&param())?.ok_or_else(|| no_user(&param()))?;
                if let Some(pw) = &p.password {
                    if let Some(m) = password_problem(pw) {
                        return Err(Problem::field("password", m));
                    }
                    user.password_hash = hash_password(pw);
                }
                if let Some(role) = p.role {
                    user.role = role;
                }
                self.store.put_user(&user)?;
                ok(json!({"name": user.name, "role": user.role}))
            }
            ("DELETE", "/users/{name}") => {
                if param() == c().user {
                    return Err(Problem::new(
                        StatusCode::CONFLICT,
                        "self",
                        "you cannot delete yourself",
                    ));
                }
                if !self.store.delete_user(&param())? {
                    return Err(no_user(&param()));
                }
                self.sessions.lock().expect("lock").retain(|_, s| s.user != param());
                ok(json!({"deleted": param()}))
            }
            ("GET", "/tokens") => ok(self
                .store
                .tokens()?
                .into_iter()
                .filter(|t| c().role == Role::Admin || t.owner == c().user)
                .map(|t| {
                    json!({"id": t.id, "name": t.name, "scope": scope_name(t.scope),
                           "owner": t.owner, "created_ms": t.created_ms})
                })
                .collect::<Vec<_>>()),
            ("POST", "/tokens") => {
                let n: NewToken = body(&r.body)?;
                let scope = match n.scope.as_str() {
                    "read" => Role::Viewer,
                    "admin" if c().role == Role::Admin => Role::Admin,
                    "admin" => {
                        return Err(Problem::field(
                            "scope",
                            "only administrators may make admin tokens",
                        ));
                    }
                    other => {
                        return Err(Problem::field(
                            "scope",
                            format!("{other:?} is not read or admin"),
                        ));
                    }
                };
                if n.name.is_empty() || n.name.len() > 64 {
                    return Err(Problem::field("name", "1 to 64 characters"));
                }
                let secret = format!("sluice_{}", random_hex(32));
                let hash = sha256(&secret);
                let token = sluice_store::Token {
                    id: hash[..12].to_owned(),
                    name: n.name,
                    scope,
                    owner: c().user.clone(),
                    hash,
                    created_ms: crate::plugins::now_ms(),
                };
                self.store.put_token(&token)?;
                created(json!({"id": token.id, "name": token.name, "scope": n.scope,
                               "token": secret, "note": "shown once: keep it now"}))
            }
            ("DELETE", "/tokens/{id}") => {
                let mine = self
                    .store
                    .tokens()?
                    .into_iter()
                    .find(|t| t.id == param())
                    .filter(|t| c().role == Role::Admin || t.owner == c().user);
                if mine.is_none() || !self.store.revoke_token(&param())? {
                    return Err(Problem::new(
                        StatusCode::NOT_FOUND,
                        "no-token",
                        format!("no token {}", param()),
                    ));
                }
                ok(json!({"revoked": param()}))
            }
            ("GET", "/audit") => {
                let limit = r.query.get("limit").and_then(|l| l.parse().ok()).unwrap_or(100);
                ok(self.store.audit_log(limit)?)
            }
            ("GET", "/interfaces") => {
                let config = self.store.config()?;
                let mut list = interfaces(&self.pin);
                for i in &mut list {
                    let name = i["name"].as_str().unwrap_or_default();
                    let port = if self.fixed_ports.iter().any(|p| p == name) {
                        json!("fixed")
                    } else if config.interfaces.get(name).is_some_and(|c| c.attach) {
                        json!("configured")
                    } else {
                        Value::Null
                    };
                    i["routed"] = port;
                }
                ok(list)
            }
            ("POST", "/interfaces/{name}/attach") => {
                let name = param();
                if let Some(m) = sluice_store::interface_name_problem(&name) {
                    return Err(Problem::field("name", format!("interface name: {m}")));
                }
                if nix::net::if_::if_nametoindex(name.as_str()).is_err() {
                    return Err(Problem::new(
                        StatusCode::NOT_FOUND,
                        "no-interface",
                        format!("no interface {name:?} on this router"),
                    ));
                }
                let b: AttachBody =
                    if r.body.is_empty() { AttachBody::default() } else { body(&r.body)? };
                let mut config = self.store.config()?;
                let entry = config.interfaces.entry(name.clone()).or_insert_with(|| {
                    sluice_store::Interface {
                        attach: true,
                        xdp_mode: sluice_store::XdpMode::Auto,
                        addresses: Vec::new(),
                        mtu: None,
                        up: true,
                    }
                });
                let mode = b.xdp_mode.unwrap_or(entry.xdp_mode);
                let unchanged = entry.attach && entry.xdp_mode == mode;
                entry.attach = true;
                entry.xdp_mode = mode;
                if !unchanged {
                    self.commit(&config, c(), format!("attach {name}"), r)?;
                }
                ok(json!({"name": name, "routed": "configured", "xdp_mode": mode}))
            }
            ("POST", "/interfaces/{name}/detach") => {
                let name = param();
                if self.fixed_ports.contains(&name) {
                    return Err(Problem::new(
                        StatusCode::CONFLICT,
                        "fixed-port",
                        format!(
                            "{name} is attached by the daemon's --attach option: remove it there"
                        ),
                    ));
                }
                let mut config = self.store.config()?;
                match config.interfaces.get_mut(&name) {
                    Some(i) if i.attach => i.attach = false,
                    _ => {
                        return Err(Problem::new(
                            StatusCode::NOT_FOUND,
                            "not-routed",
                            format!("{name} is not a routed port of the configuration"),
                        ));
                    }
                }
                self.commit(&config, c(), format!("detach {name}"), r)?;
                ok(json!({"name": name, "routed": Value::Null}))
            }
            ("GET", "/counters") => ok(crate::show::stats(&self.pin).map_err(dataplane_problem)?),
            ("GET", "/counters/stream") => Ok(Answer::Stream),
            ("GET", "/lookup-tables") => {
                let view =
                    sluice_dataplane::LookupView::open(&self.pin).map_err(dataplane_problem)?;
                ok(view.usage())
            }
            ("GET", "/top-talkers") => {
                let limit = match r.query.get("limit") {
                    None => 10,
                    Some(l) => l
                        .parse()
                        .ok()
                        .filter(|n| (1..=100).contains(n))
                        .ok_or_else(|| Problem::field("limit", "1 to 100"))?,
                };
                let read = crate::show::talkers(&self.pin).map_err(dataplane_problem)?;
                let mut top = self.talkers.lock().expect("lock").update(Instant::now(), &read);
                top.talkers.truncate(limit);
                ok(top)
            }
            ("GET", "/routes") => self.routes(r),
            ("GET", "/routes/static") => ok(self.store.config()?.routes),
            ("POST", "/routes/static") => {
                let route: StaticRoute = body(&r.body)?;
                check_interface(route.dev.as_deref())?;
                let mut config = self.store.config()?;
                if config
                    .routes
                    .iter()
                    .any(|x| x.prefix == route.prefix && x.metric == route.metric)
                {
                    return Err(Problem::new(
                        StatusCode::CONFLICT,
                        "exists",
                        format!("{} metric {} exists", route.prefix, route.metric),
                    ));
                }
                config.routes.push(route.clone());
                self.commit(&config, c(), format!("add route {}", route.prefix), r)?;
                created(route)
            }
            ("DELETE", "/routes/static") => {
                let route = route_key(r)?;
                let mut config = self.store.config()?;
                let before = config.routes.len();
                config.routes.retain(|x| {
                    !(x.prefix == route.prefix && route.metric.is_none_or(|m| m == x.metric))
                });
                if config.routes.len() == before {
                    return Err(Problem::new(
                        StatusCode::NOT_FOUND,
                        "no-route",
                        format!("no static route {}", route.prefix),
                    ));
                }
                self.commit(&config, c(), format!("remove route {}", route.prefix), r)?;
                ok(json!({"removed": route.prefix}))
            }
            ("GET", "/config") => ok(json!({
                "revision": self.store.running()?.map(|r| r.id),
                "config": self.store.config()?,
                "pending_confirm": self.store.pending_confirm()?,
            })),
            ("GET", "/config/candidate") => ok(self.store.candidate()?),
            ("PUT", "/config/candidate") => {
                let config: Config = body(&r.body)?;
                let errors = config.validate();
                if !errors.is_empty() {
                    return Err(StoreError::Invalid(errors).into());
                }
                self.store.stage(&config)?;
                ok(json!({"diff": self.store.diff()?}))
            }
            ("DELETE", "/config/candidate") => {
                self.store.discard()?;
                ok(json!({"discarded": true}))
            }
            ("GET", "/config/diff") => ok(self.store.diff()?),
            ("POST", "/config/commit") => {
                let b: CommitBody = body(&r.body)?;
                let author = Self::author(c(), b.message);
                let rev = match b.confirm_seconds {
                    Some(s) if !(10..=3600).contains(&s) => {
                        return Err(Problem::field("confirm_seconds", "10 to 3600"));
                    }
                    Some(s) => self.store.commit_confirmed(&author, Duration::from_secs(s))?,
                    None => self.store.commit(&author)?,
                };
                self.changed.notify_one();
                ok(json!({"revision": rev.id, "pending_confirm": self.store.pending_confirm()?}))
            }
            ("POST", "/config/confirm") => {
                if !self.store.confirm()? {
                    return Err(Problem::new(
                        StatusCode::CONFLICT,
                        "nothing-pending",
                        "no commit waits for its confirmation",
                    ));
                }
                ok(json!({"confirmed": true}))
            }
            ("POST", "/config/rollback") => {
                let b: RollbackBody = body(&r.body)?;
                let rev = self.store.rollback_to(b.revision, &Self::author(c(), b.message))?;
                self.changed.notify_one();
                ok(json!({"revision": rev.id}))
            }
            ("GET", "/config/revisions") => ok(self
                .store
                .history()?
                .into_iter()
                .map(|(id, at_ms, a)| json!({"id": id, "at_ms": at_ms, "author": a}))
                .collect::<Vec<_>>()),
            ("GET", "/config/revisions/{id}") => {
                let id: u64 = param()
                    .parse()
                    .map_err(|_| Problem::field("id", format!("{:?} is not a number", param())))?;
                ok(self.store.revision(id)?)
            }
            ("GET", "/config/export") => Ok(Answer::Text("application/json", self.store.export()?)),
            ("GET", "/plugins") => self.plugin_list(),
            ("POST", "/plugins") => self.plugin_add(r, c()),
            ("PATCH", "/plugins/{name}") => {
                let b: PluginPatch = body(&r.body)?;
                let (mut p, w) = self.stored_plugin(&param(), None)?;
                if b.enabled && !p.enabled {
                    self.start_plugin(w)?;
                }
                p.enabled = b.enabled;
                let verb = if b.enabled { "enable" } else { "disable" };
                self.commit_plugin(&param(), Some(p), c(), format!("{verb} plugin {}", param()))?;
                ok(json!({"name": param(), "enabled": b.enabled}))
            }
            ("DELETE", "/plugins/{name}") => {
                self.stored_plugin(&param(), None)?;
                self.commit_plugin(&param(), None, c(), format!("remove plugin {}", param()))?;
                ok(json!({"removed": param()}))
            }
            ("PUT", "/plugins/{name}/config") => {
                let config: Value = body(&r.body)?;
                let (mut p, w) = self.stored_plugin(&param(), Some(&config))?;
                if p.enabled {
                    self.start_plugin(w)?;
                }
                p.config = config;
                self.commit_plugin(
                    &param(),
                    Some(p),
                    c(),
                    format!("configure plugin {}", param()),
                )?;
                ok(json!({"name": param(), "configured": true}))
            }
            ("POST", "/diagnostics/ping" | "/diagnostics/traceroute") => {
                let b: DiagnosticBody = body(&r.body)?;
                ok(diagnose(spec.path.ends_with("ping"), b.target)?)
            }
            ("GET", "/plugins/{name}/logs") => {
                let log =
                    self.ask_plugins(|reply| crate::plugins::Command::Logs(param(), reply))?;
                match log {
                    Some(lines) => ok(lines),
                    None => Err(Problem::new(
                        StatusCode::NOT_FOUND,
                        "not-running",
                        format!("no running plugin {:?}", param()),
                    )),
                }
            }
            ("POST", "/config/import") => {
                let text = std::str::from_utf8(&r.body)
                    .map_err(|_| Problem::field("body", "not UTF-8"))?;
                let message = r.query.get("message").cloned().unwrap_or_else(|| "import".into());
                let rev = self.store.import(text, &Self::author(c(), message))?;
                self.changed.notify_one();
                ok(json!({"revision": rev.id}))
            }
            (m, p) => Err(Problem::new(
                StatusCode::NOT_IMPLEMENTED,
                "not-implemented",
                format!("{m} {p} is listed but not served"),
            )),
        }
    }

    /// Commits a whole configuration made by the API, `?confirm_seconds=N` asking for a
    /// confirmation.
    fn commit(
        &self,
        config: &Config,
        c: &Caller,
        message: String,
        r: &Request,
    ) -> Result<(), Problem> {
        let confirm = match r.query.get("confirm_seconds") {
            Some(s) => match s.parse::<u64>() {
                Ok(s) if (10..=3600).contains(&s) => Some(Duration::from_secs(s)),
                _ => return Err(Problem::field("confirm_seconds", "10 to 3600")),
            },
            None => None,
        };
        self.store.commit_change(config, &Self::author(c, message), confirm).map_err(|e| {
            match e {
                // One route's fields, not the configuration's list.
                StoreError::Invalid(errors) => Problem::fields(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    errors.iter().map(|e| e.message.clone()).collect::<Vec<_>>().join("; "),
                    errors
                        .into_iter()
                        .map(|e| FieldError {
                            field: e.field.rsplit('.').next().unwrap_or(&e.field).to_owned(),
                            message: e.message,
                        })
                        .collect(),
                ),
                e => e.into(),
            }
        })?;
        self.changed.notify_one();
        Ok(())
    }

    fn setup(&self, r: &Request) -> Reply {
        let b: SetupBody = body(&r.body)?;
        let expected = self.setup_token.lock().expect("lock").clone();
        let Some(expected) = expected.filter(|_| !self.store.is_set_up().unwrap_or(true)) else {
            return Err(Problem::new(
                StatusCode::CONFLICT,
                "set-up",
                "the router is set up already: log in",
            ));
        };
        if !same_secret(&b.token, &expected) {
            return Err(Problem::new(StatusCode::FORBIDDEN, "setup-token", "wrong setup token"));
        }
        check_user(&b.username, &b.password)?;
        let user = sluice_store::User {
            name: b.username.clone(),
            role: Role::Admin,
            password_hash: hash_password(&b.password),
            created_ms: crate::plugins::now_ms(),
        };
        if !self.store.create_first_admin(&user)? {
            return Err(Problem::new(StatusCode::CONFLICT, "set-up", "the router is set up"));
        }
        *self.setup_token.lock().expect("lock") = None;
        let _ = std::fs::remove_file(self.state_dir.join("setup-token"));
        info!(user = b.username, "first administrator created; the setup token is spent");
        created(json!({"name": b.username, "role": Role::Admin}))
    }

    fn login(&self, r: &Request) -> Reply {
        let b: LoginBody = body(&r.body)?;
        let keys = [format!("user:{}", b.username), format!("from:{}", r.from)];
        let now = Instant::now();
        let wait = {
            let f = self.failures.lock().expect("lock");
            keys.iter().filter_map(|k| f.get(k)?.until).filter(|u| *u > now).max()
        };
        if let Some(until) = wait {
            let mut p = Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "throttled",
                "too many failed logins: wait before trying again",
            );
            p.retry_after = Some((until - now).as_secs().max(1));
            return Err(p);
        }
        let user = self.store.user(&b.username)?;
        // The hash is checked even for an unknown user, so timing tells nothing.
        let hash = user.as_ref().map_or(DUMMY_HASH.as_str(), |u| u.password_hash.as_str());
        let good = password_matches(hash, &b.password) && user.is_some();
        let mut f = self.failures.lock().expect("lock");
        let Some(user) = user.filter(|_| good) else {
            for k in &keys {
                let e = f.entry(k.clone()).or_default();
                e.count += 1;
                e.until = lockout(e.count).map(|d| now + d);
            }
            drop(f);
            let p = Problem::new(StatusCode::UNAUTHORIZED, "login", "wrong user name or password");
            self.audit(&b.username, &r.from, "POST /api/v1/login".into(), &Err(p.clone()));
            return Err(p);
        };
        for k in &keys {
            f.remove(k);
        }
        drop(f);
        let id = random_hex(32);
        let csrf = random_hex(32);
        let session = Session {
            user: user.name.clone(),
            role: user.role,
            csrf: csrf.clone(),
            expires: now + SESSION_TTL,
        };
        self.sessions.lock().expect("lock").insert(id.clone(), session);
        let answer =
            Answer::Session(json!({"name": user.name, "role": user.role, "csrf_token": csrf}), id);
        self.audit(&user.name, &r.from, "POST /api/v1/login".into(), &Ok(Answer::Stream));
        Ok(answer)
    }

    /// The Prometheus text of the counters and the API's own.
    fn metrics(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let _ = writeln!(out, "# HELP sluice_packets_total Packets by interface and outcome.");
        let _ = writeln!(out, "# TYPE sluice_packets_total counter");
        let stats = crate::show::stats(&self.pin).ok();
        let mut bytes = String::new();
        for i in stats.iter().flat_map(|s| &s.interfaces) {
            for (reason, c) in &i.counters {
                let labels = format!("interface=\"{}\",reason=\"{reason}\"", i.name);
                let _ = writeln!(out, "sluice_packets_total{{{labels}}} {}", c.packets);
                let _ = writeln!(bytes, "sluice_bytes_total{{{labels}}} {}", c.bytes);
            }
        }
        let _ = writeln!(out, "# HELP sluice_bytes_total Bytes by interface and outcome.");
        let _ = writeln!(out, "# TYPE sluice_bytes_total counter");
        out.push_str(&bytes);
        if let Ok(routes) = crate::show::routes(&self.pin) {
            let _ = writeln!(out, "# HELP sluice_routes Routes the dataplane holds.");
            let _ = writeln!(out, "# TYPE sluice_routes gauge");
            let v4 = routes.routes.iter().filter(|r| r.prefix.addr().is_ipv4()).count();
            let _ = writeln!(out, "sluice_routes{{family=\"ipv4\"}} {v4}");
            let _ = writeln!(out, "sluice_routes{{family=\"ipv6\"}} {}", routes.routes.len() - v4);
        }
        let _ = writeln!(out, "# HELP sluice_api_requests_total Requests the API answered.");
        let _ = writeln!(out, "# TYPE sluice_api_requests_total counter");
        let _ =
            writeln!(out, "sluice_api_requests_total {}", self.requests.load(Ordering::Relaxed));
        out
    }
}

static DUMMY_HASH: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| hash_password("not a password anyone has"));

fn no_user(name: &str) -> Problem {
    Problem::new(StatusCode::NOT_FOUND, "no-user", format!("no user {name:?}"))
}

fn scope_name(r: Role) -> &'static str {
    match r {
        Role::Viewer => "read",
        Role::Admin => "admin",
    }
}

#[expect(clippy::needless_pass_by_value, reason = "used as map_err(dataplane_problem)")]
fn dataplane_problem(e: sluice_dataplane::DataplaneError) -> Problem {
    Problem::new(StatusCode::SERVICE_UNAVAILABLE, "dataplane", e.to_string())
}

fn check_user(name: &str, password: &str) -> Result<(), Problem> {
    let mut errors = Vec::new();
    if let Some(m) = username_problem(name) {
        errors.push(FieldError { field: "username".into(), message: m.into() });
    }
    if let Some(m) = password_problem(password) {
        errors.push(FieldError { field: "password".into(), message: m });
    }
    if errors.is_empty() {
        return Ok(());
    }
    Err(Problem::fields(StatusCode::UNPROCESSABLE_ENTITY, "invalid user", errors))
}

/// The route `DELETE /routes/static` names: in the body, or as `?prefix=P[&metric=M]`.
fn route_key(r: &Request) -> Result<RouteKey, Problem> {
    if !r.body.iter().all(u8::is_ascii_whitespace) {
        return body(&r.body);
    }
    let prefix = r
        .query
        .get("prefix")
        .ok_or_else(|| Problem::field("prefix", "missing: in the body or as ?prefix="))?;
    let prefix =
        prefix.parse().map_err(|e| Problem::field("prefix", format!("{prefix:?}: {e}")))?;
    let metric = match r.query.get("metric") {
        Some(m) => Some(
            m.parse().map_err(|_| Problem::field("metric", format!("{m:?} is not a number")))?,
        ),
        None => None,
    };
    Ok(RouteKey { prefix, metric })
}

/// A route's interface must be a valid name the kernel has.
fn check_interface(dev: Option<&str>) -> Result<(), Problem> {
    let Some(dev) = dev else { return Ok(()) };
    if let Some(m) = sluice_store::interface_name_problem(dev) {
        return Err(Problem::field("dev", format!("interface name: {m}")));
    }
    if nix::net::if_::if_nametoindex(dev).is_err() {
        return Err(Problem::field("dev", format!("no interface {dev:?} on this router")));
    }
    Ok(())
}

/// The kernel's interfaces, with what the dataplane knows of each.
fn interfaces(pin: &PinDir) -> Vec<Value> {
    use nix::net::if_::InterfaceFlags as F;
    let attached = crate::show::stats(pin).map(|s| s.interfaces).unwrap_or_default();
    // getifaddrs answers for this process's network namespace (sysfs may show another).
    let mut links: std::collections::BTreeMap<String, (F, Option<String>)> =
        std::collections::BTreeMap::new();
    for a in nix::ifaddrs::getifaddrs().into_iter().flatten() {
        let mac = a
            .address
            .as_ref()
            .and_then(|s| s.as_link_addr())
            .and_then(nix::sys::socket::LinkAddr::addr)
            .map(|m| m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":"));
        let e = links.entry(a.interface_name.clone()).or_insert((a.flags, None));
        e.0 |= a.flags;
        if mac.is_some() {
            e.1 = mac;
        }
    }
    links
        .into_iter()
        .map(|(name, (flags, mac))| {
            let dp = attached.iter().find(|i| i.name == name);
            let state = if !flags.contains(F::IFF_UP) {
                "down"
            } else if flags.contains(F::IFF_RUNNING) {
                "up"
            } else {
                "no-carrier"
            };
            json!({
                "name": name,
                "ifindex": nix::net::if_::if_nametoindex(name.as_str()).ok(),
                "state": state,
                "mac": mac,
                "mtu": dp.map(|i| i.mtu),
                "xdp_mode": dp.map(|i| i.xdp_mode),
            })
        })
        .collect()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetupBody {
    token: String,
    username: String,
    password: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    username: String,
    password: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUser {
    name: String,
    password: String,
    role: Role,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserPatch {
    password: Option<String>,
    role: Option<Role>,
}

/// `POST /interfaces/{name}/attach`: the XDP mode, if not the configured one (`auto` for a new
/// port).
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AttachBody {
    xdp_mode: Option<sluice_store::XdpMode>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewToken {
    name: String,
    scope: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteKey {
    prefix: ipnet::IpNet,
    metric: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CommitBody {
    #[serde(default)]
    message: String,
    confirm_seconds: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewPlugin {
    manifest: Value,
    wasm_base64: String,
    config: Option<Value>,
    #[serde(default = "yes")]
    enabled: bool,
}

const fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DiagnosticBody {
    target: std::net::IpAddr,
}

/// Runs `ping` (4 echo requests) or `traceroute` (numeric, 15 hops at most) from the router
/// towards an address (an address only: no name is looked up, no shell is involved), bounded
/// in time; its output.
fn diagnose(ping: bool, target: std::net::IpAddr) -> Result<Value, Problem> {
    if target.is_unspecified() || target.is_multicast() {
        return Err(Problem::field("target", format!("{target} cannot be probed")));
    }
    let addr = target.to_string();
    let (program, args): (&str, Vec<&str>) = if ping {
        ("ping", vec!["-n", "-c", "4", "-i", "0.2", "-W", "1", &addr])
    } else {
        ("traceroute", vec!["-n", "-q", "1", "-w", "1", "-m", "15", &addr])
    };
    let out = std::process::Command::new("timeout")
        .arg("20")
        .arg(program)
        .args(&args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| {
            Problem::new(StatusCode::SERVICE_UNAVAILABLE, "diagnostics", format!("{program}: {e}"))
        })?;
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.code() == Some(127) {
        return Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "diagnostics",
            format!("{program} is not installed on this router"),
        ));
    }
    Ok(
        json!({"command": format!("{program} {}", args.join(" ")), "ok": out.status.success(), "output": text}),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PluginPatch {
    enabled: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackBody {
    revision: u64,
    #[serde(default)]
    message: String,
}

/// The `OpenAPI` 3.1 document of [`ROUTES`].
pub fn openapi() -> Value {
    let mut paths = serde_json::Map::new();
    for spec in ROUTES {
        let path = format!("/api/v1{}", spec.path);
        let entry = paths.entry(path).or_insert_with(|| json!({}));
        let params: Vec<Value> = spec
            .path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
            .map(|p| json!({"name": p, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        let security = match spec.access {
            Access::Public => json!([]),
            Access::Viewer | Access::Admin => json!([{"session": []}, {"token": []}]),
        };
        let role = match spec.access {
            Access::Public => "anyone",
            Access::Viewer => "viewer",
            Access::Admin => "admin",
        };
        entry[spec.method.to_lowercase()] = json!({
            "summary": spec.summary,
            "x-sluice-role": role,
            "parameters": params,
            "security": security,
            "responses": {
                "200": {"description": "OK"},
                "default": {"description": "A problem", "content": {"application/problem+json": {
                    "schema": {"$ref": "#/components/schemas/Problem"}}}}
            }
        });
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Sluice", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
        "components": {
            "securitySchemes": {
                "session": {"type": "apiKey", "in": "cookie", "name": SESSION_COOKIE},
                "token": {"type": "http", "scheme": "bearer"}
            },
            "schemas": {"Problem": {"type": "object", "properties": {
                "type": {"type": "string"}, "title": {"type": "string"},
                "status": {"type": "integer"}, "detail": {"type": "string"},
                "errors": {"type": "array", "items": {"type": "object", "properties": {
                    "field": {"type": "string"}, "message": {"type": "string"}}}}}}}
        }
    })
}

/// Writes a file only its owner may read.
pub(crate) fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    std::io::Write::write_all(&mut f, contents)
        .with_context(|| format!("writing {}", path.display()))
}

/// The certificate and key the API serves (`STATE/tls/cert.pem`, `key.pem`), made at first
/// start and signed by a certificate authority of the router's own (`STATE/tls/ca.pem`, whose
/// key is not kept): clients that trust `ca.pem` (`sluice ... --ca`) check the API's identity.
/// An operator may put other files there. Returns the certificate's and key's paths.
pub fn ensure_certificate(state_dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let dir = state_dir.join("tls");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    if !cert.exists() || !key.exists() {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let (ca_pem, leaf_pem, key_pem) = make_certificate().context("making a certificate")?;
        write_private(&key, key_pem.as_bytes())?;
        std::fs::write(&cert, format!("{leaf_pem}{ca_pem}"))
            .with_context(|| format!("writing {}", cert.display()))?;
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, ca_pem).with_context(|| format!("writing {}", ca.display()))?;
        info!(cert = %cert.display(), ca = %ca.display(), "made the API's certificate (replace it at will)");
    }
    let pem = std::fs::read_to_string(&cert).with_context(|| format!("{}", cert.display()))?;
    if let Some(der) = pem_der(&pem) {
        info!(sha256 = %crate::plugins::hex(&Sha256::digest(&der)), "API certificate");
    }
    Ok((cert, key))
}

/// A certificate authority and a certificate it signs for this host: (CA, certificate, key), PEM.
fn make_certificate() -> Result<(String, String, String), rcgen::Error> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose as Usage,
    };
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map_or_else(|_| "sluice".into(), |h| h.trim().to_owned());
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![Usage::KeyCertSign, Usage::CrlSign];
    ca.distinguished_name.push(DnType::CommonName, format!("Sluice {host} certificate authority"));
    let ca = ca.self_signed(&ca_key)?;
    let key = KeyPair::generate()?;
    // The names a client may use: the hostname, loopback, and the router's addresses now (a
    // client that checks the certificate compares the address it dialled).
    let mut names = vec![host.clone(), "localhost".into(), "127.0.0.1".into(), "::1".into()];
    for a in nix::ifaddrs::getifaddrs().into_iter().flatten() {
        let ip = a.address.as_ref().and_then(|s| {
            s.as_sockaddr_in()
                .map(|v4| std::net::IpAddr::V4(v4.ip()))
                .or_else(|| s.as_sockaddr_in6().map(|v6| std::net::IpAddr::V6(v6.ip())))
        });
        if let Some(ip) = ip
            && !ip.is_loopback()
            && !matches!(ip, std::net::IpAddr::V6(v6) if v6.is_unicast_link_local())
            && !names.contains(&ip.to_string())
        {
            names.push(ip.to_string());
        }
    }
    let mut leaf = CertificateParams::new(names)?;
    leaf.distinguished_name.push(DnType::CommonName, host);
    let leaf = leaf.signed_by(&key, &ca, &ca_key)?;
    Ok((ca.pem(), leaf.pem(), key.serialize_pem()))
}

/// The DER bytes of the first PEM block.
fn pem_der(text: &str) -> Option<Vec<u8>> {
    pem::parse(text).ok().map(pem::Pem::into_contents)
}

/// The counters every second, as server-sent events.
fn counter_stream(
    pin: PinDir,
) -> impl futures::Stream<Item = Result<warp::sse::Event, std::convert::Infallible>> {
    let ticks = tokio_stream_interval(Duration::from_secs(1));
    ticks.map(move |()| {
        let data = crate::show::stats(&pin)
            .ok()
            .and_then(|s| serde_json::to_string(&s).ok())
            .unwrap_or_else(|| "{}".into());
        Ok(warp::sse::Event::default().event("counters").data(data))
    })
}

fn tokio_stream_interval(period: Duration) -> impl futures::Stream<Item = ()> {
    futures::stream::unfold(tokio::time::interval(period), |mut i| async move {
        i.tick().await;
        Some(((), i))
    })
}

/// The whole request body, refused past `limit`.
async fn read_body(
    mut stream: impl futures::Stream<Item = Result<impl warp::Buf, warp::Error>> + Unpin,
    limit: usize,
) -> Result<Bytes, Problem> {
    let mut body = Vec::new();
    while let Some(chunk) = stream.next().await {
        let mut chunk = chunk
            .map_err(|e| Problem::new(StatusCode::BAD_REQUEST, "body", format!("the body: {e}")))?;
        while warp::Buf::has_remaining(&chunk) {
            let part = warp::Buf::chunk(&chunk);
            if body.len() + part.len() > limit {
                return Err(Problem::fields(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the body is over {limit} bytes"),
                    vec![FieldError { field: "body".into(), message: "too large".into() }],
                ));
            }
            body.extend_from_slice(part);
            let n = part.len();
            warp::Buf::advance(&mut chunk, n);
        }
    }
    Ok(Bytes::from(body))
}

fn session_cookie(id: &str) -> String {
    if id.is_empty() {
        format!("{SESSION_COOKIE}=; HttpOnly; Secure; SameSite=Strict; Path=/; Max-Age=0")
    } else {
        format!(
            "{SESSION_COOKIE}={id}; HttpOnly; Secure; SameSite=Strict; Path=/; Max-Age={}",
            SESSION_TTL.as_secs()
        )
    }
}

/// Every route of the API and `/metrics`, as one warp filter.
pub fn filter(
    api: &Arc<Api>,
) -> impl warp::Filter<Extract = (warp::reply::Response,), Error = std::convert::Infallible>
+ Clone
+ use<> {
    let with_api = {
        let api = Arc::clone(api);
        warp::any().map(move || Arc::clone(&api))
    };
    let v1 = warp::path("api")
        .and(warp::path("v1"))
        .and(warp::path::tail())
        .and(warp::method())
        .and(warp::query::<HashMap<String, String>>())
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::cookie::optional::<String>(SESSION_COOKIE))
        .and(warp::header::optional::<String>("x-csrf-token"))
        .and(warp::addr::remote())
        .and(warp::body::stream())
        .and(with_api.clone())
        .then(
            |tail: warp::path::Tail,
             method: Method,
             query,
             auth: Option<String>,
             cookie,
             csrf,
             from: Option<SocketAddr>,
             stream,
             api: Arc<Api>| async move {
                api.requests.fetch_add(1, Ordering::Relaxed);
                let limit = if method == Method::POST && tail.as_str() == "plugins" {
                    PLUGIN_BODY_LIMIT
                } else {
                    BODY_LIMIT
                };
                let body = match read_body(Box::pin(stream), limit).await {
                    Ok(b) => b,
                    Err(p) => return p.response(),
                };
                let req = Request {
                    method,
                    path: format!("/{}", tail.as_str()),
                    query,
                    bearer: auth.and_then(|a| a.strip_prefix("Bearer ").map(str::to_owned)),
                    cookie,
                    csrf,
                    from: from.map_or_else(|| "unknown".into(), |a| a.ip().to_string()),
                    body,
                };
                let pin = api.pin.clone();
                let answer = tokio::task::spawn_blocking(move || api.handle(&req))
                    .await
                    .unwrap_or_else(|e| {
                        Err(Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "panic", e.to_string()))
                    });
                respond(answer, pin)
            },
        );
    let metrics = warp::path("metrics")
        .and(warp::path::end())
        .and(warp::header::optional::<String>("authorization"))
        .and(with_api)
        .then(|auth: Option<String>, api: Arc<Api>| async move {
            let secret = auth.and_then(|a| a.strip_prefix("Bearer ").map(str::to_owned));
            let known = match secret {
                Some(s) => tokio::task::spawn_blocking({
                    let api = Arc::clone(&api);
                    move || api.store.token_by_hash(&sha256(&s)).ok().flatten().is_some()
                })
                .await
                .unwrap_or(false),
                None => false,
            };
            if !known {
                return Problem::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthenticated",
                    "/metrics needs an API token (Authorization: Bearer)",
                )
                .response();
            }
            let text = tokio::task::spawn_blocking(move || api.metrics()).await.unwrap_or_default();
            warp::reply::with_header(text, header::CONTENT_TYPE, "text/plain; version=0.0.4")
                .into_response()
        });
    let not_found = warp::any().map(|| {
        Problem::new(StatusCode::NOT_FOUND, "not-found", "no such page: the API is under /api/v1")
            .response()
    });
    v1.or(metrics).unify().or(crate::console::filter()).unify().or(not_found).unify()
}

fn respond(answer: Reply, pin: PinDir) -> warp::reply::Response {
    match answer {
        Ok(Answer::Json(status, v)) => {
            warp::reply::with_status(warp::reply::json(&v), status).into_response()
        }
        Ok(Answer::Text(ct, text)) => {
            warp::reply::with_header(text, header::CONTENT_TYPE, ct).into_response()
        }
        Ok(Answer::Session(v, id)) => {
            warp::reply::with_header(warp::reply::json(&v), header::SET_COOKIE, session_cookie(&id))
                .into_response()
        }
        Ok(Answer::Stream) => {
            warp::sse::reply(warp::sse::keep_alive().stream(counter_stream(pin))).into_response()
        }
        Err(p) => p.response(),
    }
}

/// Serves the API over HTTPS on `listen` until the process ends.
pub fn serve(api: &Arc<Api>, listen: SocketAddr, state_dir: &Path) -> anyhow::Result<()> {
    let (cert, key) = ensure_certificate(state_dir)?;
    // warp panics when it cannot bind: find out first, with a clear error.
    drop(
        std::net::TcpListener::bind(listen)
            .with_context(|| format!("listening on {listen} for the API"))?,
    );
    let server = warp::serve(filter(api)).tls().cert_path(&cert).key_path(&key);
    info!(%listen, "API listening (HTTPS)");
    tokio::spawn(server.bind(listen));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_found_with_their_parameters_and_wrong_methods_named() {
        let (spec, params) = find_route(&Method::DELETE, "/users/alice").unwrap();
        assert_eq!((spec.path, params), ("/users/{name}", vec!["alice".to_owned()]));
        let (spec, _) = find_route(&Method::GET, "/config/revisions/").unwrap();
        assert_eq!(spec.path, "/config/revisions");
        assert_eq!(find_route(&Method::PUT, "/health").unwrap_err().status, 405);
        assert_eq!(find_route(&Method::GET, "/nothing").unwrap_err().status, 404);
        assert_eq!(find_route(&Method::DELETE, "/users/").unwrap_err().status, 405);
    }

    #[test]
    fn the_openapi_document_lists_every_route_once() {
        let doc = openapi();
        let listed: usize =
            doc["paths"].as_object().unwrap().values().map(|p| p.as_object().unwrap().len()).sum();
        assert_eq!(listed, ROUTES.len());
        assert_eq!(doc["paths"]["/api/v1/users/{name}"]["delete"]["parameters"][0]["name"], "name");
        assert_eq!(doc["paths"]["/api/v1/health"]["get"]["security"], json!([]));
    }

    #[test]
    fn problems_name_the_field_serde_reports() {
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code, reason = "only parsed")]
        struct T {
            a: u32,
        }
        let p = body::<T>(&Bytes::from_static(b"{\"a\": 1, \"b\": 2}")).unwrap_err();
        assert_eq!((p.status, p.errors[0].field.as_str()), (422, "b"));
        let p = body::<T>(&Bytes::from_static(b"{\"a\": ")).unwrap_err();
        assert_eq!((p.status, p.errors[0].field.as_str()), (400, "body"));
        let p = body::<T>(&Bytes::from_static(b"{}")).unwrap_err();
        assert_eq!(p.errors[0].field, "a");
    }

    #[test]
    fn secrets_compare_whole_and_the_throttle_grows_to_a_cap() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "abcd"));
        assert_eq!(lockout(FREE_FAILURES - 1), None);
        assert_eq!(lockout(FREE_FAILURES), Some(Duration::from_secs(1)));
        assert_eq!(lockout(FREE_FAILURES + 3), Some(Duration::from_secs(8)));
        assert_eq!(lockout(FREE_FAILURES + 40), Some(MAX_LOCKOUT));
    }

    #[test]
    fn passwords_are_argon2_hashes_that_verify() {
        let h = hash_password("correct horse battery");
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(password_matches(&h, "correct horse battery"));
        assert!(!password_matches(&h, "wrong horse battery"));
        assert_ne!(h, hash_password("correct horse battery"), "salted");
    }

    /// An API over a store in a fresh directory, with no dataplane; removed on drop.
    struct Scratch {
        dir: PathBuf,
        api: Arc<Api>,
    }

    impl Scratch {
        fn new() -> Self {
            let dir = std::env::temp_dir().join(format!(
                "sluice-api-unit-{}-{}",
                std::process::id(),
                random_hex(6)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            let store = Store::open(&dir.join("db")).unwrap();
            let api = Api::new(store, PinDir::new(dir.join("no-pins")), &dir).unwrap();
            Self { dir, api: Arc::new(api) }
        }

        /// Sets up the first administrator and logs in: (cookie, CSRF token).
        async fn admin(&self) -> (String, String) {
            let f = filter(&self.api);
            let token = std::fs::read_to_string(self.dir.join("setup-token")).unwrap();
            let setup = json!({"token": token, "username": "root",
                               "password": "a long enough one"});
            let res = warp::test::request()
                .method("POST")
                .path("/api/v1/setup")
                .json(&setup)
                .reply(&f)
                .await;
            assert_eq!(res.status(), 201, "{:?}", res.body());
            let res = warp::test::request()
                .method("POST")
                .path("/api/v1/login")
                .json(&json!({"username": "root", "password": "a long enough one"}))
                .reply(&f)
                .await;
            assert_eq!(res.status(), 200, "{:?}", res.body());
            let cookie = res.headers()[header::SET_COOKIE].to_str().unwrap();
            let cookie = cookie.split(';').next().unwrap().to_owned();
            let body: Value = serde_json::from_slice(res.body()).unwrap();
            (cookie, body["csrf_token"].as_str().unwrap().to_owned())
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// The type of a problem answer, `None` for a success.
    fn problem_type(res: &warp::http::Response<Bytes>) -> Option<String> {
        if res.status().is_success() {
            return None;
        }
        assert_eq!(res.headers()[header::CONTENT_TYPE], "application/problem+json");
        let p: Value = serde_json::from_slice(res.body()).unwrap();
        assert_eq!(p["status"], res.status().as_u16(), "{p}");
        Some(p["type"].as_str().unwrap().to_owned())
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn every_listed_route_is_served_and_no_other() {
        let s = Scratch::new();
        let (cookie, csrf) = s.admin().await;
        let f = filter(&s.api);
        // Logout last: it ends the session the others use.
        let mut specs: Vec<&RouteSpec> = ROUTES.iter().collect();
        specs.sort_by_key(|r| r.path == "/logout");
        for spec in specs {
            let path =
                format!("/api/v1{}", spec.path).replace("{name}", "nobody").replace("{id}", "1");
            if spec.path == "/counters/stream" {
                // An endless body: the handler's answer is the stream.
                let req = Request {
                    method: Method::GET,
                    path: spec.path.to_owned(),
                    query: HashMap::new(),
                    bearer: None,
                    cookie: Some(cookie.split_once('=').unwrap().1.to_owned()),
                    csrf: None,
                    from: "test".into(),
                    body: Bytes::new(),
                };
                assert!(matches!(s.api.handle(&req), Ok(Answer::Stream)));
                continue;
            }
            let res = warp::test::request()
                .method(spec.method)
                .path(&path)
                .header("cookie", &cookie)
                .header("x-csrf-token", &csrf)
                .body("{}")
                .reply(&f)
                .await;
            // Handlers may refuse `{}` or a missing name, but the router knows the route.
            let kind = problem_type(&res);
            assert!(
                !matches!(
                    kind.as_deref(),
                    Some(
                        "urn:sluice:problem:not-found"
                            | "urn:sluice:problem:method"
                            | "urn:sluice:problem:not-implemented"
                            | "urn:sluice:problem:unauthenticated"
                            | "urn:sluice:problem:csrf"
                            | "urn:sluice:problem:forbidden"
                    )
                ),
                "{} {path}: {kind:?} {:?}",
                spec.method,
                res.body()
            );
        }
        for (method, path, kind) in [
            ("GET", "/api/v1/nothing", "not-found"),
            ("GET", "/api/v2/health", "not-found"),
            ("PUT", "/api/v1/health", "method"),
            ("GET", "/api/v1/users/root/more", "not-found"),
        ] {
            let res = warp::test::request().method(method).path(path).reply(&f).await;
            let want = format!("urn:sluice:problem:{kind}");
            assert_eq!(problem_type(&res).as_deref(), Some(want.as_str()), "{method} {path}");
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn sessions_need_their_csrf_token_and_bodies_their_limit() {
        let s = Scratch::new();
        let (cookie, csrf) = s.admin().await;
        let f = filter(&s.api);
        let user = json!({"name": "vera", "password": "long enough too", "role": "viewer"});
        let post = |csrf: Option<&str>, body: Vec<u8>| {
            let mut r = warp::test::request()
                .method("POST")
                .path("/api/v1/users")
                .header("cookie", &cookie)
                .body(body);
            if let Some(c) = csrf {
                r = r.header("x-csrf-token", c);
            }
            r
        };
        let body = serde_json::to_vec(&user).unwrap();
        let res = post(None, body.clone()).reply(&f).await;
        assert_eq!(problem_type(&res).as_deref(), Some("urn:sluice:problem:csrf"));
        let res = post(Some(&csrf[1..]), body.clone()).reply(&f).await;
        assert_eq!(problem_type(&res).as_deref(), Some("urn:sluice:problem:csrf"));
        let res = post(Some(&csrf), vec![b' '; BODY_LIMIT + 1]).reply(&f).await;
        assert_eq!(res.status(), 413);
        assert!(s.api.store.user("vera").unwrap().is_none(), "nothing written");
        let res = post(Some(&csrf), body.clone()).reply(&f).await;
        assert_eq!(res.status(), 201, "{:?}", res.body());
        let res = post(Some(&csrf), body).reply(&f).await;
        assert_eq!(problem_type(&res).as_deref(), Some("urn:sluice:problem:exists"));
        // A viewer may not make users.
        let res = warp::test::request()
            .method("POST")
            .path("/api/v1/login")
            .json(&json!({"username": "vera", "password": "long enough too"}))
            .reply(&f)
            .await;
        let vera = res.headers()[header::SET_COOKIE].to_str().unwrap().split(';').next().unwrap();
        let vera_csrf = serde_json::from_slice::<Value>(res.body()).unwrap()["csrf_token"].clone();
        let other = json!({"name": "walt", "password": "long enough three", "role": "admin"});
        let res = warp::test::request()
            .method("POST")
            .path("/api/v1/users")
            .header("cookie", vera)
            .header("x-csrf-token", vera_csrf.as_str().unwrap())
            .json(&other)
            .reply(&f)
            .await;
        assert_eq!(problem_type(&res).as_deref(), Some("urn:sluice:problem:forbidden"));
        assert!(s.api.store.user("walt").unwrap().is_none());
        // Every attempt at a change is audited with its outcome (but for the body refused
        // before anyone was known), newest first.
        let log = s.api.store.audit_log(20).unwrap();
        let users: Vec<(&str, &str)> = log
            .iter()
            .filter(|e| e.action == "POST /api/v1/users")
            .map(|e| (e.who.as_str(), e.outcome.get(..3).unwrap_or(&e.outcome)))
            .collect();
        let want =
            [("vera", "403"), ("root", "409"), ("root", "ok"), ("root", "403"), ("root", "403")];
        assert_eq!(users, want, "{log:?}");
    }

    #[test]
    fn problems_are_problem_json_with_retry_after_when_throttled() {
        let mut p = Problem::field("prefix", "host bits set");
        assert_eq!((p.status, p.kind.as_str()), (422, "urn:sluice:problem:invalid-input"));
        p.retry_after = Some(8);
        let r = p.response();
        assert_eq!(r.status(), 422);
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/problem+json");
        assert_eq!(r.headers()[header::RETRY_AFTER], "8");
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(v["errors"], json!([{"field": "prefix", "message": "host bits set"}]));
        assert_eq!(v["title"], "Unprocessable Entity");
        assert!(v.get("retry_after").is_none());
        let plain = serde_json::to_value(Problem::new(StatusCode::CONFLICT, "x", "y")).unwrap();
        assert!(plain.get("errors").is_none(), "no empty errors: {plain}");
    }

    #[test]
    fn the_certificate_is_signed_by_the_routers_own_authority() {
        let (ca, leaf, key) = make_certificate().unwrap();
        let ca = pem::parse(ca).unwrap();
        let leaf = pem::parse(leaf).unwrap();
        assert_eq!((ca.tag(), leaf.tag()), ("CERTIFICATE", "CERTIFICATE"));
        assert_ne!(ca.contents(), leaf.contents());
        assert!(key.contains("PRIVATE KEY"));
        assert_eq!(pem_der(&pem::encode(&leaf)).unwrap(), leaf.contents());
    }
}
