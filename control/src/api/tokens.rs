//! API tokens: made from a session (up to its user's role) or by an admin token (no stronger
//! and no longer-lived than itself, ending with it; a read token makes none); listed and
//! revoked by their owner or an administrator. Revoking a token revokes those it made and ends
//! its streams.

use super::{
    Api, Problem,
    http::{Call, Reply, created, ok},
    models,
};
use crate::auth::{self, Maker, TokenRequest, scope_name};

/// Longest lifetime a token may ask for, days (ten years).
const MAX_DAYS: u32 = 3650;

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
            expires_ms: t.expires_ms,
            parent: t.parent,
        })
        .collect::<Vec<_>>())
}

/// `POST /tokens`: a token of the caller's user; its secret is in this answer only.
pub(super) fn create(api: &Api, call: &Call<'_>) -> Reply {
    let c = call.caller();
    let n: models::NewToken = call.body()?;
    let scope = auth::scope_of(&n.scope)
        .ok_or_else(|| Problem::field("scope", format!("{:?} is not read or admin", n.scope)))?;
    let expires_ms = match n.expires_in_days {
        Some(0 | MAX_DAYS..) => {
            let m = format!("1 to {} days", MAX_DAYS - 1);
            return Err(Problem::field("expires_in_days", m));
        }
        Some(days) => Some(crate::plugins::now_ms() + u64::from(days) * 86_400_000),
        None => None,
    };
    let maker = match &c.token {
        Some(token) => Maker::Token { token, role: c.user_role },
        None => Maker::User { name: &c.user, role: c.role },
    };
    let ask = TokenRequest { name: &n.name, scope, expires_ms };
    let m = auth::mint_token(&api.store, maker, ask)?;
    created(models::MintedToken {
        id: m.token.id,
        name: m.token.name,
        scope: n.scope,
        token: m.secret,
        expires_ms: m.token.expires_ms,
        note: "shown once: keep it now".into(),
    })
}

/// `DELETE /tokens/{id}`: one the caller sees, and those it made.
pub(super) fn revoke(api: &Api, call: &Call<'_>) -> Reply {
    let c = call.caller();
    let id = call.param();
    if !auth::revoke_token(&api.store, id, &c.user, c.role)? {
        return Err(Problem::not_found("no-token", format!("no token {id}")));
    }
    ok(models::Revoked { revoked: id.to_owned() })
}
