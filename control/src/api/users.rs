//! Users: the first administrator (with the setup token), then users made, changed and
//! deleted by administrators; and the audit log of what they all did.

use sluice_store::Role;
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

/// `PATCH /users/{name}`.
pub(super) fn update(api: &Api, call: &Call<'_>) -> Reply {
    let p: models::UserPatch = call.body()?;
    let user = auth::update_user(&api.store, call.param(), p.password.as_deref(), p.role)?;
    ok(models::UserRef { name: user.name, role: user.role })
}

/// `DELETE /users/{name}`: its sessions end too.
pub(super) fn delete(api: &Api, call: &Call<'_>) -> Reply {
    let name = call.param();
    auth::delete_user(&api.store, name, &call.caller().user)?;
    api.sessions.end_user(name);
    ok(models::Deleted { deleted: name.to_owned() })
}

/// `GET /audit?limit=N` (100 by default).
pub(super) fn audit(api: &Api, call: &Call<'_>) -> Reply {
    let limit = call.query("limit").and_then(|l| l.parse().ok()).unwrap_or(100);
    ok(api.store.audit_log(limit)?)
}
