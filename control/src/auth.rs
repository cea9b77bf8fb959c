//! Users and API tokens are made here and nowhere else: the API (setup, users, tokens) and
//! first-boot provisioning both call this module, and the store keeps what it is given.
//!
//! - A user name is 1 to 32 letters, digits, `.`, `_` or `-`; a password has at least
//!   [`MIN_PASSWORD`] characters and is kept as its argon2 hash (PHC string).
//! - An API token's secret is shown once and kept as its SHA-256; its id is the first 12 hex
//!   digits of that hash. A token's scope never exceeds the role of whoever makes it.
//! - A login checks a password hash even for an unknown user, so its timing tells nothing.

use std::path::Path;

use anyhow::Context as _;
use argon2::{
    Argon2, PasswordHash, PasswordHasher as _, PasswordVerifier as _, password_hash::SaltString,
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
    let mut user = store.user(name)?.ok_or_else(|| AuthError::NoUser(name.to_owned()))?;
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
    if !store.delete_user(name)? {
        return Err(AuthError::NoUser(name.to_owned()));
    }
    Ok(())
}

/// The user whose name and password these are: `None` for a wrong pair, after the same work
/// as for a right one.
pub fn check_login(store: &Store, name: &str, password: &str) -> Result<Option<User>, StoreError> {
    static DUMMY_HASH: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| hash_password("not a password anyone has"));
    let user = store.user(name)?;
    let hash = user.as_ref().map_or(DUMMY_HASH.as_str(), |u| u.password_hash.as_str());
    let good = password_matches(hash, password);
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

/// Makes an API token of `owner`, whose role (or token's scope) is `allowed`: a fresh secret.
pub fn mint_token(
    store: &Store,
    owner: &str,
    allowed: Role,
    name: &str,
    scope: Role,
) -> Result<Minted, AuthError> {
    if scope > allowed {
        let message = "only administrators may make admin tokens".into();
        return Err(AuthError::Invalid { field: "scope", message });
    }
    if name.is_empty() || name.len() > MAX_TOKEN_NAME {
        return Err(AuthError::Invalid { field: "name", message: "1 to 64 characters".into() });
    }
    let secret = format!("sluice_{}", random_hex(32));
    let token = add_token(store, owner, name, scope, &secret)?;
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
        let m = mint_token(&store, "vera", Role::Admin, "ci", Role::Viewer).unwrap();
        assert!(m.secret.starts_with("sluice_") && m.secret.len() == 71, "{}", m.secret);
        let found = store.token_by_hash(&token_hash(&m.secret)).unwrap().unwrap();
        assert_eq!((found.id.len(), found.owner.as_str()), (12, "vera"));
        let e = mint_token(&store, "vera", Role::Viewer, "ci", Role::Admin).unwrap_err();
        assert!(matches!(e, AuthError::Invalid { field: "scope", .. }), "{e}");
        assert!(!revoke_token(&store, &found.id, "walt", Role::Viewer).unwrap(), "not his");
        assert!(revoke_token(&store, &found.id, "vera", Role::Viewer).unwrap());
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
