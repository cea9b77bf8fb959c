//! Who is calling: logins and their sessions (cookie and CSRF token), API tokens, and the
//! throttle on failed logins (per user and per source).

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use sluice_store::{Author, Role};
use warp::http::{Method, StatusCode};

use super::{
    Api, Problem,
    http::{Call, Reply, Request, ok, with_session},
    models,
};
use crate::auth::{self, random_hex};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "sluice_session";
/// How long a session lasts.
const SESSION_TTL: Duration = Duration::from_hours(12);
/// Failed logins allowed before the throttle starts.
const FREE_FAILURES: u32 = 5;
/// Longest wait the throttle imposes.
const MAX_LOCKOUT: Duration = Duration::from_mins(15);

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

/// The sessions, and the failed logins that throttle new ones.
#[derive(Debug, Default)]
pub(super) struct Sessions {
    sessions: Mutex<HashMap<String, Session>>,
    failures: Mutex<HashMap<String, Failures>>,
}

impl Sessions {
    /// A session that has not ended.
    fn get(&self, id: &str) -> Option<Session> {
        let mut sessions = self.sessions.lock().expect("lock");
        sessions.retain(|_, s| s.expires > Instant::now());
        sessions.get(id).cloned()
    }

    /// Ends every session of a user.
    pub(super) fn end_user(&self, user: &str) {
        self.sessions.lock().expect("lock").retain(|_, s| s.user != user);
    }
}

/// Who is calling, once authenticated.
#[derive(Clone, Debug)]
pub(super) struct Caller {
    /// As the audit log names it: the user, or `USER:token:ID`.
    pub who: String,
    /// The user behind it (a token's owner).
    pub user: String,
    /// What it may do now.
    pub role: Role,
    /// The remote address.
    pub from: String,
    /// Its session, when not a token.
    pub session: Option<String>,
}

impl Caller {
    /// The author of a change the caller makes.
    pub(super) fn author(&self, message: impl Into<String>) -> Author {
        Author { who: self.who.clone(), from: self.from.clone(), message: message.into() }
    }
}

/// Compares secrets in time that does not depend on where they differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The wait a throttle imposes after `count` failures in a row.
pub fn lockout(count: u32) -> Option<Duration> {
    let over = count.checked_sub(FREE_FAILURES)?;
    Some(Duration::from_secs(1u64 << over.min(20)).min(MAX_LOCKOUT))
}

/// The `Set-Cookie` value of a session (an empty id ends it).
pub(super) fn session_cookie(id: &str) -> String {
    if id.is_empty() {
        format!("{SESSION_COOKIE}=; HttpOnly; Secure; SameSite=Strict; Path=/; Max-Age=0")
    } else {
        format!(
            "{SESSION_COOKIE}={id}; HttpOnly; Secure; SameSite=Strict; Path=/; Max-Age={}",
            SESSION_TTL.as_secs()
        )
    }
}

impl Api {
    /// Authenticates a request: a bearer token, or a session cookie (with its CSRF token on a
    /// state-changing request).
    pub(super) fn caller(&self, r: &Request) -> Result<Caller, Problem> {
        if let Some(secret) = &r.bearer {
            let token = self
                .store
                .token_by_hash(&auth::token_hash(secret))?
                .ok_or_else(|| Problem::unauthenticated("unknown or revoked token"))?;
            let owner = self
                .store
                .user(&token.owner)?
                .ok_or_else(|| Problem::unauthenticated("the token's owner no longer exists"))?;
            return Ok(Caller {
                who: format!("{}:token:{}", owner.name, token.id),
                user: owner.name,
                role: token.scope.min(owner.role),
                from: r.from.clone(),
                session: None,
            });
        }
        let Some(id) = &r.cookie else {
            return Err(Problem::unauthenticated(
                "log in, or send an API token (Authorization: Bearer)",
            ));
        };
        let session = self
            .sessions
            .get(id)
            .ok_or_else(|| Problem::unauthenticated("the session has ended"))?;
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
                self.audit(&session.user, &r.from, action, Err(&p));
                return Err(p);
            }
        }
        // A user deleted or demoted since logging in loses what it lost.
        let user = self
            .store
            .user(&session.user)?
            .ok_or_else(|| Problem::unauthenticated("the user no longer exists"))?;
        Ok(Caller {
            who: user.name.clone(),
            user: user.name,
            role: user.role.min(session.role),
            from: r.from.clone(),
            session: Some(id.clone()),
        })
    }

    /// Whether an API token of this secret exists (`/metrics`).
    pub(super) fn knows_token(&self, secret: &str) -> bool {
        self.store.token_by_hash(&auth::token_hash(secret)).ok().flatten().is_some()
    }
}

/// `POST /login`: a session for a right name and password, unless the user or the source failed
/// too often lately.
pub(super) fn login(api: &Api, call: &Call<'_>) -> Reply {
    let r = call.request;
    let b: models::Login = call.body()?;
    let keys = [format!("user:{}", b.username), format!("from:{}", r.from)];
    let now = Instant::now();
    let wait = {
        let f = api.sessions.failures.lock().expect("lock");
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
    let user = auth::check_login(&api.store, &b.username, &b.password)?;
    let mut f = api.sessions.failures.lock().expect("lock");
    let Some(user) = user else {
        for k in &keys {
            let e = f.entry(k.clone()).or_default();
            e.count += 1;
            e.until = lockout(e.count).map(|d| now + d);
        }
        drop(f);
        let p = Problem::new(StatusCode::UNAUTHORIZED, "login", "wrong user name or password");
        api.audit(&b.username, &r.from, "POST /api/v1/login".into(), Err(&p));
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
    api.sessions.sessions.lock().expect("lock").insert(id.clone(), session);
    let answer = models::LoggedIn { name: user.name.clone(), role: user.role, csrf_token: csrf };
    api.audit(&user.name, &r.from, "POST /api/v1/login".into(), Ok(()));
    with_session(answer, id)
}

/// `POST /logout`: ends the session (the cookie too).
pub(super) fn logout(api: &Api, call: &Call<'_>) -> Reply {
    if let Some(id) = &call.caller().session {
        api.sessions.sessions.lock().expect("lock").remove(id);
    }
    with_session(models::LoggedOut { logged_out: true }, String::new())
}

/// `GET /me`: the caller, with its session's CSRF token, for a console page reloaded (cookies
/// only: the cookie is `HttpOnly`, same-origin, and this answer is JSON).
pub(super) fn me(api: &Api, call: &Call<'_>) -> Reply {
    let c = call.caller();
    let csrf = c.session.as_ref().and_then(|id| api.sessions.get(id)).map(|s| s.csrf);
    ok(models::Me { name: c.who.clone(), user: c.user.clone(), role: c.role, csrf_token: csrf })
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
