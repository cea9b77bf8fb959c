//! Users and API tokens are made here and nowhere else: the API (setup, users, tokens) and
//! first-boot provisioning both call this module, and the store keeps what it is given.
//!
//! - A user name is 1 to 32 letters, digits, `.`, `_` or `-`; a password has at least
//!   [`MIN_PASSWORD`] characters and is kept as its argon2 hash (PHC string).
//! - An API token's secret is shown once and kept as its SHA-256; its id is the first 12 hex
//!   digits of that hash. A token's scope never exceeds the role of whoever makes it.
//! - A login checks a password hash even for an unknown user, so its timing tells nothing.
//! - Passwords are checked by [`VERIFIERS`] threads, each with its argon2 memory made once: a
//!   flood of logins costs at most that many hashes at once and that much memory; a check that
//!   finds every verifier busy is refused at once ([`LoginError::Busy`]).
//! - A token is made by a session of its owner, or by an admin token: then no stronger and no
//!   longer-lived than that token, and revoked with it.
//! - The last administrator cannot be demoted or deleted.

use std::{
    path::Path,
    sync::{
        Arc, LazyLock, Mutex,
        atomic::{AtomicUsize, Ordering},
        mpsc,
    },
};

use anyhow::Context as _;
use argon2::{
    Algorithm, Argon2, Block, Params, PasswordHash, PasswordHasher as _, PasswordVerifier as _,
    Version, password_hash::SaltString,
};
use sha2::{Digest as _, Sha256};
use sluice_store::{FieldError, Role, Store, StoreError, Token, User};

/// Shortest password accepted.
pub const MIN_PASSWORD: usize = 10;
/// Longest user name.
const MAX_USERNAME: usize = 32;
/// Longest token name.
const MAX_TOKEN_NAME: usize = 64;

/// Why a user or a token was not made or changed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The user's name or password is refused (every field at fault).
    #[error("invalid user")]
    InvalidUser(Vec<FieldError>),
    /// One field is refused.
    #[error("{field}: {message}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// Why.
        message: String,
    },
    /// A user of that name exists.
    #[error("user {0:?} exists")]
    UserExists(String),
    /// No user of that name.
    #[error("no user {0:?}")]
    NoUser(String),
    /// A user may not delete itself.
    #[error("you cannot delete yourself")]
    DeleteSelf,
    /// The change would leave the router without an administrator.
    #[error("{0} is the last administrator: make another one first")]
    LastAdmin(String),
    /// The caller may not make this token.
    #[error("{0}")]
    TokenRefused(&'static str),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How the first administrator's password is given.
#[derive(Clone, Copy, Debug)]
pub enum Password<'a> {
    /// In clear: checked, then hashed.
    Clear(&'a str),
    /// As its argon2 hash (PHC string, `$argon2id$...`).
    Hash(&'a str),
    /// None: a random one nobody knows (the holder of a token made with the user may set one).
    Unknown,
}

/// `n` random bytes, hex.
pub fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    getrandom::getrandom(&mut b).expect("the kernel's random numbers");
    crate::plugins::hex(&b)
}

/// What a token's secret is kept and looked up as: its SHA-256, hex.
pub fn token_hash(secret: &str) -> String {
    crate::plugins::hex(&Sha256::digest(secret.as_bytes()))
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

/// Whether `password` is the one `hash` was made of.
pub fn password_matches(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash)
        .is_ok_and(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
}

/// Password checks at once, at most: each holds argon2's memory (19 MiB by default).
pub const VERIFIERS: usize = 2;
/// Largest argon2 memory a stored hash may ask for (an imported hash could ask for gigabytes).
const MAX_VERIFY_KIB: u32 = 64 << 10;

/// Why a login could not be checked.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// Every verifier is busy: try again in a moment.
    #[error("too many logins at once: try again in a moment")]
    Busy,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A password to check against a hash (`None`: an unknown user's, checked against nothing
/// with the same work).
struct Check {
    hash: Option<String>,
    password: String,
    answer: mpsc::Sender<bool>,
}

/// The verifier threads' queue (room for one check per verifier: [`IN_FLIGHT`] keeps it from
/// holding more).
static VERIFY: LazyLock<mpsc::SyncSender<Check>> = LazyLock::new(|| {
    let (tx, rx) = mpsc::sync_channel::<Check>(VERIFIERS);
    let rx = Arc::new(Mutex::new(rx));
    for i in 0..VERIFIERS {
        let rx = Arc::clone(&rx);
        std::thread::Builder::new()
            .name(format!("sluice-verify-{i}"))
            .spawn(move || {
                // Made once and kept: the memory of every check this thread makes (the
                // default parameters' at once, so that a flood of logins adds nothing).
                let mut memory = vec![Block::default(); Params::DEFAULT.block_count()];
                loop {
                    let check = rx.lock().expect("the queue").recv();
                    let Ok(check) = check else { return };
                    let good = verify_with(&mut memory, check.hash.as_deref(), &check.password);
                    let _ = check.answer.send(good);
                }
            })
            .expect("a verifier thread");
    }
    tx
});

/// Checks asked for and not yet answered.
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// Gives its place back when the check is answered (or its asker gave up).
struct InFlight;

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Starts the verifier threads with their memory (otherwise the first logins do).
pub fn start_verifiers() {
    LazyLock::force(&VERIFY);
}

/// Checks `password` against `hash` on a verifier thread; `Busy` at once when all are.
fn verify_bounded(hash: Option<&str>, password: &str) -> Result<bool, LoginError> {
    if IN_FLIGHT.fetch_add(1, Ordering::AcqRel) >= VERIFIERS {
        IN_FLIGHT.fetch_sub(1, Ordering::AcqRel);
        return Err(LoginError::Busy);
    }
    let _place = InFlight;
    let (answer, result) = mpsc::channel();
    let check = Check { hash: hash.map(str::to_owned), password: password.to_owned(), answer };
    // Never blocks: at most VERIFIERS checks are in flight, and the queue holds that many.
    VERIFY.send(check).map_err(|_| LoginError::Busy)?;
    Ok(result.recv().unwrap_or(false))
}

/// argon2 of `password` with `hash`'s parameters and salt, in `memory`, compared with `hash`.
/// With no hash, the same work with the default parameters, and `false`.
fn verify_with(memory: &mut Vec<Block>, hash: Option<&str>, password: &str) -> bool {
    let parsed = hash.map(PasswordHash::new);
    let (algorithm, version, params, salt, expected) = match &parsed {
        None => (Algorithm::Argon2id, Version::V0x13, Params::DEFAULT, [7u8; 16].to_vec(), None),
        Some(Err(_)) => return false,
        Some(Ok(h)) => {
            let (Ok(algorithm), Ok(params), Some(salt), Some(expected)) =
                (Algorithm::try_from(h.algorithm), Params::try_from(h), h.salt, h.hash)
            else {
                return false;
            };
            let version = h.version.map_or(Ok(Version::V0x13), Version::try_from);
            let mut buf = [0u8; 64];
            let (Ok(version), Ok(salt)) = (version, salt.decode_b64(&mut buf)) else {
                return false;
            };
            if params.m_cost() > MAX_VERIFY_KIB {
                tracing::warn!(kib = params.m_cost(), "a password hash asks for too much memory");
                return false;
            }
            (algorithm, version, params, salt.to_vec(), Some(expected))
        }
    };
    if memory.len() < params.block_count() {
        memory.resize(params.block_count(), Block::default());
    }
    let mut out = vec![0u8; expected.map_or(Params::DEFAULT_OUTPUT_LEN, |e| e.len())];
    let argon2 = Argon2::new(algorithm, version, params.clone());
    let blocks = &mut memory[..params.block_count()];
    if argon2.hash_password_into_with_memory(password.as_bytes(), &salt, &mut out, blocks).is_err()
    {
        return false;
    }
    // `Output`'s comparison takes the same time wherever the bytes differ.
    expected.is_some_and(|e| argon2::password_hash::Output::new(&out).is_ok_and(|o| o == e))
}

/// Whether `hash` is an argon2 PHC string.
pub fn is_password_hash(hash: &str) -> bool {
    hash.starts_with("$argon2") && PasswordHash::new(hash).is_ok()
}

/// What is wrong with a user name, if anything.
pub fn username_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() || name.len() > MAX_USERNAME {
        Some("1 to 32 characters")
    } else if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
        Some("letters, digits, '.', '_' and '-' only")
    } else {
        None
    }
}

/// What is wrong with a password, if anything.
pub fn password_problem(password: &str) -> Option<String> {
    (password.chars().count() < MIN_PASSWORD).then(|| format!("at least {MIN_PASSWORD} characters"))
}

/// A user name and password, checked together: every field at fault.
fn check_user(name: &str, password: Password<'_>) -> Result<(), AuthError> {
    let mut errors = Vec::new();
    if let Some(m) = username_problem(name) {
        errors.push(FieldError { field: "username".into(), message: m.into() });
    }
    match password {
        Password::Clear(p) => {
            if let Some(m) = password_problem(p) {
                errors.push(FieldError { field: "password".into(), message: m });
            }
        }
        Password::Hash(h) => {
            if !is_password_hash(h) {
                let message = "not an argon2 PHC string".into();
                errors.push(FieldError { field: "password_hash".into(), message });
            }
        }
        Password::Unknown => {}
    }
    if errors.is_empty() { Ok(()) } else { Err(AuthError::InvalidUser(errors)) }
}

/// The one place a user record is made.
fn user_record(name: &str, role: Role, password: Password<'_>) -> User {
    let password_hash = match password {
        Password::Clear(p) => hash_password(p),
        Password::Hash(h) => h.to_owned(),
        Password::Unknown => hash_password(&random_hex(32)),
    };
    User { name: name.to_owned(), role, password_hash, created_ms: crate::plugins::now_ms() }
}

/// Held while a change that could leave no administrator is checked and made.
static ADMINS: Mutex<()> = Mutex::new(());

/// How many administrators there are.
fn admins(store: &Store) -> Result<usize, StoreError> {
    Ok(store.users()?.iter().filter(|u| u.role == Role::Admin).count())
}

/// Adds a user, if its name is free.
pub fn create_user(
    store: &Store,
    name: &str,
    password: &str,
    role: Role,
) -> Result<User, AuthError> {
    check_user(name, Password::Clear(password))?;
    if store.user(name)?.is_some() {
        return Err(AuthError::UserExists(name.to_owned()));
    }
    let user = user_record(name, role, Password::Clear(password));
    store.put_user(&user)?;
    Ok(user)
}

/// Makes the first administrator, once: `false` if the router has one already.
pub fn create_first_admin(
    store: &Store,
    name: &str,
    password: Password<'_>,
) -> Result<bool, AuthError> {
    check_user(name, password)?;
    Ok(store.create_first_admin(&user_record(name, Role::Admin, password))?)
}

/// Changes a user's password and/or role.
pub fn update_user(
    store: &Store,
    name: &str,
    password: Option<&str>,
    role: Option<Role>,
) -> Result<User, AuthError> {
    let _guard = ADMINS.lock().expect("lock");
    let mut user = store.user(name)?.ok_or_else(|| AuthError::NoUser(name.to_owned()))?;
    if role == Some(Role::Viewer) && user.role == Role::Admin && admins(store)? <= 1 {
        return Err(AuthError::LastAdmin(name.to_owned()));
    }
    if let Some(p) = password {
        if let Some(message) = password_problem(p) {
            return Err(AuthError::Invalid { field: "password", message });
        }
        user.password_hash = hash_password(p);
    }
    if let Some(role) = role {
        user.role = role;
    }
    store.put_user(&user)?;
    Ok(user)
}

/// Deletes a user and its tokens, on behalf of user `by` (who may not delete itself).
pub fn delete_user(store: &Store, name: &str, by: &str) -> Result<(), AuthError> {
    if name == by {
        return Err(AuthError::DeleteSelf);
    }
    let _guard = ADMINS.lock().expect("lock");
    let user = store.user(name)?.ok_or_else(|| AuthError::NoUser(name.to_owned()))?;
    if user.role == Role::Admin && admins(store)? <= 1 {
        return Err(AuthError::LastAdmin(name.to_owned()));
    }
    if !store.delete_user(name)? {
        return Err(AuthError::NoUser(name.to_owned()));
    }
    Ok(())
}

/// The user whose name and password these are: `None` for a wrong pair, after the same work
/// as for a right one; `Busy` at once when every verifier is.
pub fn check_login(store: &Store, name: &str, password: &str) -> Result<Option<User>, LoginError> {
    let user = if username_problem(name).is_none() { store.user(name)? } else { None };
    let good = verify_bounded(user.as_ref().map(|u| u.password_hash.as_str()), password)?;
    Ok(user.filter(|_| good))
}

/// What a token's scope is called: `read` or `admin`.
pub const fn scope_name(scope: Role) -> &'static str {
    match scope {
        Role::Viewer => "read",
        Role::Admin => "admin",
    }
}

/// The scope a name means (`read`, `admin`).
pub fn scope_of(name: &str) -> Option<Role> {
    match name {
        "read" => Some(Role::Viewer),
        "admin" => Some(Role::Admin),
        _ => None,
    }
}

/// A token just made, with its secret: shown once, not kept.
#[derive(Debug)]
pub struct Minted {
    /// The token as stored.
    pub token: Token,
    /// Its secret (`sluice_` and 64 hex digits).
    pub secret: String,
}

/// Who makes a token.
#[derive(Clone, Copy, Debug)]
pub enum Maker<'a> {
    /// A user, in a session (or at provisioning), with the role it has now.
    User {
        /// The user.
        name: &'a str,
        /// Its role.
        role: Role,
    },
    /// An admin token, on behalf of its owner whose role is `role` now.
    Token {
        /// The token.
        token: &'a Token,
        /// Its owner's role.
        role: Role,
    },
}

/// What a token to make asks for.
#[derive(Clone, Copy, Debug)]
pub struct TokenRequest<'a> {
    /// Its name.
    pub name: &'a str,
    /// Its scope.
    pub scope: Role,
    /// When it expires, ms since the Unix epoch (`None`: when revoked, or with its maker).
    pub expires_ms: Option<u64>,
}

/// Makes an API token for `maker`: a fresh secret. A session makes tokens up to its role; an
/// admin token makes tokens no stronger and no longer-lived than itself, which end with it; a
/// read token makes none.
pub fn mint_token(
    store: &Store,
    maker: Maker<'_>,
    ask: TokenRequest<'_>,
) -> Result<Minted, AuthError> {
    let (owner, allowed, parent, latest) = match maker {
        Maker::User { name, role } => (name, role, None, None),
        Maker::Token { token, role } => {
            if token.scope != Role::Admin {
                return Err(AuthError::TokenRefused("a read token cannot make tokens"));
            }
            (token.owner.as_str(), token.scope.min(role), Some(token.id.clone()), token.expires_ms)
        }
    };
    if ask.scope > allowed {
        let message = "only administrators may make admin tokens".into();
        return Err(AuthError::Invalid { field: "scope", message });
    }
    if ask.name.is_empty() || ask.name.len() > MAX_TOKEN_NAME {
        return Err(AuthError::Invalid { field: "name", message: "1 to 64 characters".into() });
    }
    let now = crate::plugins::now_ms();
    if ask.expires_ms.is_some_and(|e| e <= now) {
        let message = "must be in the future".into();
        return Err(AuthError::Invalid { field: "expires_in_days", message });
    }
    let expires_ms = match (ask.expires_ms, latest) {
        (Some(a), Some(l)) => Some(a.min(l)),
        (a, l) => a.or(l),
    };
    let secret = format!("sluice_{}", random_hex(32));
    let hash = token_hash(&secret);
    let token = Token {
        id: hash[..12].to_owned(),
        name: ask.name.to_owned(),
        scope: ask.scope,
        owner: owner.to_owned(),
        hash,
        created_ms: now,
        expires_ms,
        parent,
    };
    store.put_token(&token)?;
    Ok(Minted { token, secret })
}

/// Adds an API token whose secret the caller chose (a seed's, for automation).
pub fn add_token(
    store: &Store,
    owner: &str,
    name: &str,
    scope: Role,
    secret: &str,
) -> Result<Token, StoreError> {
    let hash = token_hash(secret);
    let token = Token {
        id: hash[..12].to_owned(),
        name: name.to_owned(),
        scope,
        owner: owner.to_owned(),
        hash,
        created_ms: crate::plugins::now_ms(),
        expires_ms: None,
        parent: None,
    };
    store.put_token(&token)?;
    Ok(token)
}

/// The tokens a user with `role` sees: an administrator all, others their own.
pub fn visible_tokens(store: &Store, user: &str, role: Role) -> Result<Vec<Token>, StoreError> {
    let mut tokens = store.tokens()?;
    tokens.retain(|t| role == Role::Admin || t.owner == user);
    Ok(tokens)
}

/// Revokes token `id` if the user with `role` sees it: `false` if not.
pub fn revoke_token(store: &Store, id: &str, user: &str, role: Role) -> Result<bool, StoreError> {
    let seen = visible_tokens(store, user, role)?.iter().any(|t| t.id == id);
    Ok(seen && store.revoke_token(id)?)
}

/// Writes a file only its owner may read (a secret: the setup token, a key).
pub fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    write_whole(path, contents, 0o600)
}

/// Writes `contents` to `path` with `mode` through a file beside it and a rename, so that a
/// reader (a client loading `ca.pem`, a script reading the setup token) sees the old file or
/// the whole new one, never a part.
pub fn write_whole(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut staged = path.as_os_str().to_owned();
    staged.push(".new");
    let staged = std::path::PathBuf::from(staged);
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&staged)?;
        std::io::Write::write_all(&mut f, contents)?;
        f.sync_all()?;
        std::fs::rename(&staged, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&staged);
    }
    written.with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_argon2_hashes_that_verify() {
        let h = hash_password("correct horse battery");
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(is_password_hash(&h));
        assert!(password_matches(&h, "correct horse battery"));
        assert!(!password_matches(&h, "wrong horse battery"));
        assert_ne!(h, hash_password("correct horse battery"), "salted");
    }

    #[test]
    fn the_verifiers_check_hashes_as_argon2_does_and_refuse_when_all_are_busy() {
        let h = hash_password("correct horse battery");
        assert!(verify_bounded(Some(&h), "correct horse battery").unwrap());
        assert!(!verify_bounded(Some(&h), "correct horse batterY").unwrap());
        assert!(!verify_bounded(None, "correct horse battery").unwrap());
        assert!(!verify_bounded(Some("$argon2id$garbage"), "x").unwrap());
        // Many at once: some are refused, none waits in a queue, the answers stay right.
        let results: Vec<Result<bool, LoginError>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..16)
                .map(|_| s.spawn(|| verify_bounded(Some(&h), "correct horse battery")))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let busy = results.iter().filter(|r| matches!(r, Err(LoginError::Busy))).count();
        assert!(busy > 0, "16 at once on {VERIFIERS} verifiers");
        assert!(results.iter().all(|r| matches!(r, Ok(true) | Err(LoginError::Busy))));
    }

    #[test]
    fn the_last_administrator_is_neither_demoted_nor_deleted() {
        let dir = std::env::temp_dir().join(format!("sluice-auth-admins-{}", random_hex(6)));
        let store = Store::open(&dir).unwrap();
        assert!(create_first_admin(&store, "root", Password::Unknown).unwrap());
        let e = update_user(&store, "root", None, Some(Role::Viewer)).unwrap_err();
        assert!(matches!(e, AuthError::LastAdmin(_)), "{e}");
        create_user(&store, "ops", "long enough password", Role::Admin).unwrap();
        update_user(&store, "root", None, Some(Role::Viewer)).unwrap();
        assert!(matches!(delete_user(&store, "ops", "root"), Err(AuthError::LastAdmin(_))));
        delete_user(&store, "root", "ops").unwrap();
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn names_and_passwords_are_checked_together() {
        let Err(AuthError::InvalidUser(e)) = check_user("bad name", Password::Clear("short"))
        else {
            panic!("refused");
        };
        let fields: Vec<&str> = e.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["username", "password"]);
        assert!(check_user("ops", Password::Hash("correct horse battery")).is_err());
        assert!(check_user("ops", Password::Unknown).is_ok());
    }

    #[test]
    fn tokens_are_kept_as_hashes_and_scoped_by_their_maker() {
        let dir = std::env::temp_dir().join(format!("sluice-auth-{}", random_hex(6)));
        let store = Store::open(&dir).unwrap();
        let ask = |scope| TokenRequest { name: "ci", scope, expires_ms: None };
        let vera = Maker::User { name: "vera", role: Role::Admin };
        let m = mint_token(&store, vera, ask(Role::Viewer)).unwrap();
        assert!(m.secret.starts_with("sluice_") && m.secret.len() == 71, "{}", m.secret);
        let found = store.token_by_hash(&token_hash(&m.secret)).unwrap().unwrap();
        assert_eq!((found.id.len(), found.owner.as_str()), (12, "vera"));
        let viewer = Maker::User { name: "vera", role: Role::Viewer };
        let e = mint_token(&store, viewer, ask(Role::Admin)).unwrap_err();
        assert!(matches!(e, AuthError::Invalid { field: "scope", .. }), "{e}");
        // A read token makes none; an admin token makes weaker, shorter-lived ones that end
        // with it.
        let by_read = Maker::Token { token: &found, role: Role::Admin };
        assert!(matches!(
            mint_token(&store, by_read, ask(Role::Viewer)),
            Err(AuthError::TokenRefused(_))
        ));
        let soon = crate::plugins::now_ms() + 60_000;
        let admin =
            mint_token(&store, vera, TokenRequest { expires_ms: Some(soon), ..ask(Role::Admin) })
                .unwrap();
        let child = mint_token(
            &store,
            Maker::Token { token: &admin.token, role: Role::Admin },
            ask(Role::Viewer),
        )
        .unwrap();
        assert_eq!(
            (child.token.expires_ms, child.token.parent.as_deref()),
            (Some(soon), Some(admin.token.id.as_str()))
        );
        let demoted = Maker::Token { token: &admin.token, role: Role::Viewer };
        assert!(
            mint_token(&store, demoted, ask(Role::Admin)).is_err(),
            "no stronger than its owner now"
        );
        assert!(revoke_token(&store, &admin.token.id, "vera", Role::Admin).unwrap());
        assert!(store.token_by_hash(&child.token.hash).unwrap().is_none(), "ended with its maker");
        assert!(!revoke_token(&store, &found.id, "walt", Role::Viewer).unwrap(), "not his");
        assert!(revoke_token(&store, &found.id, "vera", Role::Viewer).unwrap());
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
