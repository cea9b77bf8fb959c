//! The REST API under `/api/v1`, served over HTTPS by the daemon (`--listen`), and Prometheus
//! metrics at `/metrics`.
//!
//! - Every route is listed once, in [`ROUTES`], with who may call it and the handler that
//!   answers it; the router, the access check and the `OpenAPI` document
//!   (`/api/v1/openapi.json`) all read that table.
//! - No default credentials: until the first administrator exists, a one-time setup token
//!   (printed in the log, written to `STATE/setup-token`) lets one be made (`POST /setup`).
//! - Users log in for a session cookie (`HttpOnly`, `Secure`, `SameSite=Strict`) and a CSRF token that
//!   every state-changing request must echo in `X-CSRF-Token`; API tokens (`Authorization:
//!   Bearer`) are scoped read or admin, shown once and stored as SHA-256 hashes, and may expire.
//!   Passwords are argon2 hashes, checked a few at a time; failed logins are throttled per
//!   (user, source) and per source, never per user alone.
//! - Before any body is read, the route is found, the caller authenticated and its role
//!   checked, the body's type (JSON) and declared length (the route's limit) checked.
//! - Errors are RFC 9457 problem+json, naming the fields at fault; a request that fails writes
//!   nothing. Every change and login is in the audit log; failed logins in a log of their own;
//!   anonymous requests refused on public routes are counted.
//!
//! The parts: [`models`] (request and answer bodies, shared with the CLI client), `problem`
//! (errors as HTTP), `router` (route, access, audit, `OpenAPI`), `session` (logins, cookies,
//! CSRF, tokens' expiry), `throttle` (failed logins), `http` (the warp filter), `tls` (certificate, HTTPS), and the handlers by
//! area: `users`, `tokens`, `interfaces`, `routes`, `config`, `plugins`, `status`, `metrics`,
//! `diagnostics`, `protocols`. A handler translates a request, calls the store or the library below (users
//! and tokens are made by [`crate::auth`]), and translates the answer.

mod config;
mod diagnostics;
mod http;
mod interfaces;
mod metrics;
pub mod models;
mod plugins;
mod problem;
mod protocols;
mod router;
mod routes;
mod session;
mod state;
mod status;
mod throttle;
mod tls;
mod tokens;
mod users;

#[cfg(test)]
mod tests;

pub use http::{BODY_LIMIT, CONFIG_BODY_LIMIT, PLUGIN_BODY_LIMIT, filter};
pub use problem::Problem;
pub use router::openapi;
pub use session::{SESSION_COOKIE, same_secret};
pub use state::{Api, OriginQuery};
pub use throttle::{lockout, source_of};
pub use tls::{ensure_certificate, serve};

use Access::{Admin, Public, Viewer};
use http::{Call, Reply};

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

/// What answers a route: the request (with its path parameters and caller) in, an answer or
/// a problem out.
type Handler = fn(&Api, &Call<'_>) -> Reply;

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
    /// Largest request body, bytes: a larger `Content-Length` is refused before any of it is
    /// read (and after the caller is checked).
    pub body_limit: usize,
    /// What answers it.
    handler: Handler,
}

const fn route(
    method: &'static str,
    path: &'static str,
    access: Access,
    handler: Handler,
    summary: &'static str,
) -> RouteSpec {
    RouteSpec { method, path, access, summary, body_limit: BODY_LIMIT, handler }
}

impl RouteSpec {
    /// The route with a larger body limit.
    const fn limit(self, body_limit: usize) -> Self {
        Self { body_limit, ..self }
    }
}

/// Every route of the API.
pub const ROUTES: &[RouteSpec] = &[
    route("GET", "/health", Public, status::health, "Liveness and whether the router is set up"),
    route(
        "POST",
        "/setup",
        Public,
        users::setup,
        "Creates the first administrator with the setup token",
    ),
    route("POST", "/login", Public, session::login, "Starts a session: cookie and CSRF token"),
    route("POST", "/logout", Viewer, session::logout, "Ends the session"),
    route("GET", "/me", Viewer, session::me, "The caller"),
    route("GET", "/openapi.json", Viewer, status::openapi_document, "This document"),
    route("GET", "/users", Admin, users::list, "Users"),
    route("POST", "/users", Admin, users::create, "Creates a user"),
    route("PATCH", "/users/{name}", Admin, users::update, "Changes a user's password or role"),
    route("DELETE", "/users/{name}", Admin, users::delete, "Deletes a user and its tokens"),
    route("GET", "/tokens", Viewer, tokens::list, "API tokens (an administrator sees all)"),
    route("POST", "/tokens", Viewer, tokens::create, "Creates an API token, shown once"),
    route("DELETE", "/tokens/{id}", Viewer, tokens::revoke, "Revokes an API token"),
    route(
        "GET",
        "/audit",
        Admin,
        users::audit,
        "An audit log, newest first (?limit=N&log=changes|failures)",
    ),
    route(
        "GET",
        "/audit/refused",
        Admin,
        users::refused,
        "Anonymous requests to public routes refused, counted by route and status",
    ),
    route(
        "GET",
        "/interfaces",
        Viewer,
        interfaces::list,
        "Interfaces, with the XDP mode when attached",
    ),
    route(
        "POST",
        "/interfaces/{name}/attach",
        Admin,
        interfaces::attach,
        "Makes an interface a routed port",
    ),
    route(
        "POST",
        "/interfaces/{name}/detach",
        Admin,
        interfaces::detach,
        "Takes a routed port out of routing",
    ),
    route("GET", "/counters", Viewer, status::counters, "The dataplane's counters"),
    route(
        "GET",
        "/top-talkers",
        Viewer,
        status::top_talkers,
        "Sources forwarding the most, sampled (?limit=N)",
    ),
    route(
        "GET",
        "/counters/stream",
        Viewer,
        status::counter_stream,
        "Counters every second (server-sent events)",
    ),
    route(
        "GET",
        "/lookup-tables",
        Viewer,
        status::lookup_tables,
        "What the lookup tables hold and the memory they use (read from the tables)",
    ),
    route("GET", "/routes", Viewer, routes::list, "The routes the dataplane holds"),
    route(
        "GET",
        "/routes/static",
        Viewer,
        routes::static_list,
        "Static routes of the running configuration",
    ),
    route(
        "POST",
        "/routes/static",
        Admin,
        routes::static_add,
        "Adds a static route (committed at once)",
    ),
    route(
        "DELETE",
        "/routes/static",
        Admin,
        routes::static_remove,
        "Removes a static route (body or ?prefix=)",
    ),
    route("GET", "/config", Viewer, config::running, "The running configuration and its revision"),
    route("GET", "/config/candidate", Viewer, config::candidate, "The candidate configuration"),
    route("PUT", "/config/candidate", Admin, config::stage, "Stages a candidate configuration")
        .limit(CONFIG_BODY_LIMIT),
    route("DELETE", "/config/candidate", Admin, config::discard, "Discards the candidate"),
    route(
        "GET",
        "/config/diff",
        Viewer,
        config::diff,
        "The candidate against the running revision",
    ),
    route(
        "POST",
        "/config/commit",
        Admin,
        config::commit,
        "Commits the candidate, optionally to confirm",
    ),
    route("POST", "/config/confirm", Admin, config::confirm, "Confirms a commit waiting for it"),
    route("POST", "/config/rollback", Admin, config::rollback, "Commits an earlier revision again"),
    route("GET", "/config/revisions", Viewer, config::revisions, "The revision history"),
    route("GET", "/config/revisions/{id}", Viewer, config::revision, "One revision"),
    route("GET", "/config/export", Viewer, config::export, "The running configuration as a file"),
    route(
        "GET",
        "/plugins",
        Viewer,
        plugins::list,
        "Plugins: manifest, state, reason if quarantined",
    ),
    route("POST", "/plugins", Admin, plugins::add, "Adds a plugin, or a new version of one")
        .limit(PLUGIN_BODY_LIMIT),
    route("PATCH", "/plugins/{name}", Admin, plugins::enable, "Enables or disables a plugin"),
    route(
        "DELETE",
        "/plugins/{name}",
        Admin,
        plugins::remove,
        "Removes a plugin, its rules and its store",
    ),
    route(
        "PUT",
        "/plugins/{name}/config",
        Admin,
        plugins::configure,
        "Changes a plugin's configuration",
    ),
    route("GET", "/plugins/{name}/logs", Viewer, plugins::logs, "A plugin's log"),
    route(
        "POST",
        "/diagnostics/ping",
        Admin,
        diagnostics::ping,
        "Pings an address from the router",
    ),
    route(
        "POST",
        "/diagnostics/traceroute",
        Admin,
        diagnostics::traceroute,
        "Traces the path to an address",
    ),
    route("POST", "/config/import", Admin, config::import, "Commits a configuration file")
        .limit(CONFIG_BODY_LIMIT),
    route(
        "GET",
        "/protocols",
        Viewer,
        protocols::list,
        "BGP sessions and OSPF instances as the routing daemon reports them",
    ),
];
