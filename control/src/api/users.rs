//! Users: the first administrator (with the setup token), then users made, changed and
//! deleted by administrators; and the audit log of what they all did.

use sluice_store::{AuditLog, Role};
use tracing::info;
use warp::http::StatusCode;

use super::{
    Api, Problem,
    http::{Call, Reply, created, ok},
    models, same_secret,
};
use crate::auth::{self, Password};

/// `POST /setup`: the first administrator, made once with the setup token.
pub(super) fn setup(api: &Api, call: &Call<'_>) -> Reply {
    let b: models::Setup = call.body()?;
    let expected = api.setup_token.lock().expect("lock").clone();
    let Some(expected) = expected.filter(|_| !api.store.is_set_up().unwrap_or(true)) else {
        return Err(Problem::conflict("set-up", "the router is set up already: log in"));
    };
    if !same_secret(&b.token, &expected) {
        return Err(Problem::new(StatusCode::FORBIDDEN, "setup-token", "wrong setup token"));
    }
    if !auth::create_first_admin(&api.store, &b.username, Password::Clear(&b.password))? {
        return Err(Problem::conflict("set-up", "the router is set up"));
    }
    *api.setup_token.lock().expect("lock") = None;
    let _ = std::fs::remove_file(api.state_dir.join("setup-token"));
    info!(user = b.username, "first administrator created; the setup token is spent");
    created(models::UserRef { name: b.username, role: Role::Admin })
}

/// `GET /users`.
pub(super) fn list(api: &Api, _: &Call<'_>) -> Reply {
    let users = api.store.users()?.into_iter();
    ok(users
        .map(|u| models::UserInfo { name: u.name, role: u.role, created_ms: u.created_ms })
        .collect::<Vec<_>>())
}

/// `POST /users`.
pub(super) fn create(api: &Api, call: &Call<'_>) -> Reply {
    let n: models::NewUser = call.body()?;
    let user = auth::create_user(&api.store, &n.name, &n.password, n.role)?;
    created(models::UserRef { name: user.name, role: user.role })
}

/// `PATCH /users/{name}`: a new password ends the user's other sessions (the caller's own,
/// when it changes its own password, goes on); a new role ends them all.
pub(super) fn update(api: &Api, call: &Call<'_>) -> Reply {
    let p: models::UserPatch = call.body()?;
    let name = call.param();
    let before = api.store.user(name)?;
    let user = auth::update_user(&api.store, name, p.password.as_deref(), p.role)?;
    if before.is_some_and(|b| b.role != user.role) {
        api.sessions.end_user(name, None);
    } else if p.password.is_some() {
        let c = call.caller();
        let keep = c.session.as_deref().filter(|_| c.user == name);
        api.sessions.end_user(name, keep);
    }
    ok(models::UserRef { name: user.name, role: user.role })
}

/// `DELETE /users/{name}`: its sessions and tokens end too.
pub(super) fn delete(api: &Api, call: &Call<'_>) -> Reply {
    let name = call.param();
    auth::delete_user(&api.store, name, &call.caller().user)?;
    api.sessions.end_user(name, None);
    ok(models::Deleted { deleted: name.to_owned() })
}

/// `GET /audit?limit=N&log=changes|failures` (100 of the changes by default).
pub(super) fn audit(api: &Api, call: &Call<'_>) -> Reply {
    let limit = call.query("limit").and_then(|l| l.parse().ok()).unwrap_or(100);
    let log = match call.query("log").unwrap_or("changes") {
        "changes" => AuditLog::Changes,
        "failures" => AuditLog::Failures,
        other => {
            return Err(Problem::field("log", format!("{other:?} is not changes or failures")));
        }
    };
    ok(api.store.audit_entries(log, limit)?)
}

/// `GET /audit/refused`: anonymous requests to public routes refused since the start, by route
/// and status (counted, not logged).
pub(super) fn refused(api: &Api, _: &Call<'_>) -> Reply {
    let counts = api.refused.lock().expect("lock").clone();
    ok(counts
        .into_iter()
        .map(|((method, path, status), count)| models::Refused {
            route: format!("{method} /api/v1{path}"),
            status,
            count,
        })
        .collect::<Vec<_>>())
}
