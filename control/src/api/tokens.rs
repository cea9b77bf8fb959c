//! API tokens: made by any user (an admin token by an administrator only), listed and revoked
//! by their owner or an administrator.

use super::{
    Api, Problem,
    http::{Call, Reply, created, ok},
    models,
};
use crate::auth::{self, scope_name};

/// `GET /tokens`: the caller's, or all for an administrator.
pub(super) fn list(api: &Api, call: &Call<'_>) -> Reply {
    let c = call.caller();
    let tokens = auth::visible_tokens(&api.store, &c.user, c.role)?;
    ok(tokens
        .into_iter()
        .map(|t| models::TokenInfo {
            id: t.id,
            name: t.name,
            scope: scope_name(t.scope).to_owned(),
            owner: t.owner,
            created_ms: t.created_ms,
        })
        .collect::<Vec<_>>())
}

/// `POST /tokens`: a token of the caller; its secret is in this answer only.
pub(super) fn create(api: &Api, call: &Call<'_>) -> Reply {
    let c = call.caller();
    let n: models::NewToken = call.body()?;
    let scope = auth::scope_of(&n.scope)
        .ok_or_else(|| Problem::field("scope", format!("{:?} is not read or admin", n.scope)))?;
    let m = auth::mint_token(&api.store, &c.user, c.role, &n.name, scope)?;
    created(models::MintedToken {
        id: m.token.id,
        name: m.token.name,
        scope: n.scope,
        token: m.secret,
        note: "shown once: keep it now".into(),
    })
}

/// `DELETE /tokens/{id}`: one the caller sees.
pub(super) fn revoke(api: &Api, call: &Call<'_>) -> Reply {
    let c = call.caller();
    let id = call.param();
    if !auth::revoke_token(&api.store, id, &c.user, c.role)? {
        return Err(Problem::not_found("no-token", format!("no token {id}")));
    }
    ok(models::Revoked { revoked: id.to_owned() })
}
