//! Who is calling: logins and their sessions (cookie and CSRF token), API tokens (with their
//! expiry), and whether a credential still holds (for streams). Failed logins go through the
//! [`Throttle`].

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use sluice_store::{AuditLog, Author, Role, Token};
use warp::http::{Method, StatusCode};

use super::{
    Api, Problem,
    http::{Call, Reply, Request, ok, with_session},
    models,
    throttle::Throttle,
};
use crate::auth::{self, random_hex};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "sluice_session";
/// How long a session lasts.
const SESSION_TTL: Duration = Duration::from_hours(12);
/// Sessions one user may hold at once; a new login beyond ends the oldest.
const SESSIONS_PER_USER: usize = 32;

/// A user's session.
#[derive(Clone, Debug)]
struct Session {
    user: String,
    role: Role,
    csrf: String,
    started: Instant,
    expires: Instant,
}

/// The sessions, and the throttle on failed logins.
#[derive(Debug, Default)]
pub(super) struct Sessions {
    sessions: Mutex<HashMap<String, Session>>,
    pub(super) throttle: Throttle,
}

impl Sessions {
    /// A session that has not ended.
    fn get(&self, id: &str) -> Option<Session> {
        let sessions = self.sessions.lock().expect("lock");
        sessions.get(id).filter(|s| s.expires > Instant::now()).cloned()
    }

    /// Starts a session; ends the ones that expired, and the user's oldest beyond
    /// [`SESSIONS_PER_USER`].
    fn start(&self, id: String, session: Session) {
        let mut sessions = self.sessions.lock().expect("lock");
        let now = Instant::now();
        sessions.retain(|_, s| s.expires > now);
        let mut mine: Vec<(Instant, String)> = sessions
            .iter()
            .filter(|(_, s)| s.user == session.user)
            .map(|(id, s)| (s.started, id.clone()))
            .collect();
        if mine.len() >= SESSIONS_PER_USER {
            mine.sort();
            for (_, id) in &mine[..=mine.len() - SESSIONS_PER_USER] {
                sessions.remove(id);
            }
        }
        sessions.insert(id, session);
    }

    /// Ends every session of a user but `keep` (the one that asked for the change).
    pub(super) fn end_user(&self, user: &str, keep: Option<&str>) {
        self.sessions
            .lock()
            .expect("lock")
            .retain(|id, s| s.user != user || keep == Some(id.as_str()));
    }

    /// Ends one session.
    fn end(&self, id: &str) {
        self.sessions.lock().expect("lock").remove(id);
    }
}

/// What a caller authenticated with, to check again later (a stream, each second).
#[derive(Clone, Debug)]
pub(super) enum Credential {
    /// A session, by id.
    Session(String),
    /// A token, by the hash of its secret.
    Token(String),
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
    /// What its user may do now (a token may do less).
    pub user_role: Role,
    /// The remote address.
    pub from: String,
    /// Its session, when not a token.
    pub session: Option<String>,
    /// Its token, when not a session.
    pub token: Option<Token>,
}

impl Caller {
    /// What it authenticated with.
    pub(super) fn credential(&self) -> Credential {
        match (&self.session, &self.token) {
            (_, Some(t)) => Credential::Token(t.hash.clone()),
            (Some(id), None) => Credential::Session(id.clone()),
            (None, None) => Credential::Session(String::new()),
        }
    }

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
            let (token, owner) = self.token_of(&auth::token_hash(secret))?;
            return Ok(Caller {
                who: format!("{}:token:{}", owner.name, token.id),
                user: owner.name,
                role: token.scope.min(owner.role),
                user_role: owner.role,
                from: r.from.clone(),
                session: None,
                token: Some(token),
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
            user_role: user.role,
            from: r.from.clone(),
            session: Some(id.clone()),
            token: None,
        })
    }

    /// The token of this hash and its owner, if the token is neither revoked nor expired and
    /// its owner exists.
    fn token_of(&self, hash: &str) -> Result<(Token, sluice_store::User), Problem> {
        let token = self
            .store
            .token_by_hash(hash)?
            .ok_or_else(|| Problem::unauthenticated("unknown or revoked token"))?;
        if token.expired(crate::plugins::now_ms()) {
            return Err(Problem::unauthenticated("the token has expired"));
        }
        let owner = self
            .store
            .user(&token.owner)?
            .ok_or_else(|| Problem::unauthenticated("the token's owner no longer exists"))?;
        Ok((token, owner))
    }

    /// Whether an API token of this secret works (`/metrics`).
    pub(super) fn knows_token(&self, secret: &str) -> bool {
        self.token_of(&auth::token_hash(secret)).is_ok()
    }

    /// Whether a credential still holds: the session has not ended, the token is neither
    /// revoked nor expired.
    pub(super) fn still_valid(&self, credential: &Credential) -> bool {
        match credential {
            Credential::Session(id) => self
                .sessions
                .get(id)
                .is_some_and(|s| self.store.user(&s.user).ok().flatten().is_some()),
            Credential::Token(hash) => self.token_of(hash).is_ok(),
        }
    }
}

/// `POST /login`: a session for a right name and password, unless this user from this source,
/// or this source, failed too often lately. The attempt counts before the password is checked.
pub(super) fn login(api: &Api, call: &Call<'_>) -> Reply {
    let r = call.request;
    let b: models::Login = call.body()?;
    // A name that cannot exist is neither looked up nor kept in the throttle's table.
    let name = auth::username_problem(&b.username).is_none().then_some(b.username.as_str());
    let throttle = &api.sessions.throttle;
    let now = Instant::now();
    if let Some(wait) = throttle.wait(name, &r.from, now) {
        let mut p = Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "throttled",
            "too many failed logins: wait before trying again",
        );
        p.retry_after = Some(wait.as_secs().max(1));
        return Err(p);
    }
    throttle.failed(name, &r.from, now);
    let Some(user) = auth::check_login(&api.store, &b.username, &b.password)? else {
        let p = Problem::new(StatusCode::UNAUTHORIZED, "login", "wrong user name or password");
        let who = name.unwrap_or("(not a user name)");
        api.audit_to(AuditLog::Failures, who, &r.from, "POST /api/v1/login".into(), Err(&p));
        return Err(p);
    };
    throttle.succeeded(&user.name, &r.from);
    let id = random_hex(32);
    let csrf = random_hex(32);
    let session = Session {
        user: user.name.clone(),
        role: user.role,
        csrf: csrf.clone(),
        started: now,
        expires: now + SESSION_TTL,
    };
    api.sessions.start(id.clone(), session);
    let answer = models::LoggedIn { name: user.name.clone(), role: user.role, csrf_token: csrf };
    api.audit(&user.name, &r.from, "POST /api/v1/login".into(), Ok(()));
    with_session(answer, id)
}

/// `POST /logout`: ends the session (the cookie too).
pub(super) fn logout(api: &Api, call: &Call<'_>) -> Reply {
    if let Some(id) = &call.caller().session {
        api.sessions.end(id);
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
    fn secrets_compare_whole() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "abcd"));
    }

    #[test]
    fn a_user_holds_a_bounded_number_of_sessions_and_changes_end_them() {
        let s = Sessions::default();
        let now = Instant::now();
        let session = |user: &str, i: u64| Session {
            user: user.into(),
            role: Role::Admin,
            csrf: String::new(),
            started: now + Duration::from_millis(i),
            expires: now + SESSION_TTL,
        };
        for i in 0..40 {
            s.start(format!("a{i}"), session("ann", i));
        }
        s.start("b".into(), session("bob", 0));
        assert!(s.get("a0").is_none() && s.get("a39").is_some());
        assert_eq!(s.sessions.lock().unwrap().len(), SESSIONS_PER_USER + 1);
        s.end_user("ann", Some("a39"));
        assert!(s.get("a38").is_none() && s.get("a39").is_some() && s.get("b").is_some());
        s.end_user("ann", None);
        assert!(s.get("a39").is_none());
    }
}
