//! Who may use the API: users with a role and a password hash, API tokens kept as hashes, and
//! the audit log of every change. All in the tree `auth`, each change flushed before it returns.
//! Hashing is the caller's: the store keeps what it is given.

use serde::{Deserialize, Serialize};
use sled::transaction::ConflictableTransactionError;

use crate::{Store, StoreError, decode, encode, now_ms};

const USER: &str = "user/";
const TOKEN: &str = "token/";
const AUDIT: &str = "audit/";
const AUDIT_NEXT: &[u8] = b"meta/audit-next";
/// Set once the first administrator exists: the setup token is spent.
const SET_UP: &[u8] = b"meta/set-up";
/// Audit entries kept; older ones are dropped as new ones come.
pub const AUDIT_KEEP: u64 = 100_000;

/// What a user or a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read everything.
    Viewer,
    /// Read and change everything.
    Admin,
}

/// A user of the API and console.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Login name.
    pub name: String,
    /// What the user may do.
    pub role: Role,
    /// The password's argon2 hash (PHC string).
    pub password_hash: String,
    /// When created, ms since the Unix epoch.
    pub created_ms: u64,
}

/// An API token, kept as the hash of its secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    /// Its id: the first characters of the hash, shown in lists.
    pub id: String,
    /// A name the owner gave it.
    pub name: String,
    /// `Viewer`: read only; `Admin`: everything its owner may do.
    pub scope: Role,
    /// The user who made it.
    pub owner: String,
    /// SHA-256 of the secret, hex.
    pub hash: String,
    /// When created, ms since the Unix epoch.
    pub created_ms: u64,
}

/// One entry of the audit log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Sequence number, from 1.
    #[serde(default)]
    pub seq: u64,
    /// When, ms since the Unix epoch.
    #[serde(default)]
    pub at_ms: u64,
    /// The user (or `token:ID`, `setup`).
    pub who: String,
    /// Remote address.
    pub from: String,
    /// What was asked (`POST /api/v1/routes/static 10.0.0.0/8`).
    pub action: String,
    /// `ok` or the reason it failed.
    pub outcome: String,
}

fn key(prefix: &str, name: &str) -> Vec<u8> {
    format!("{prefix}{name}").into_bytes()
}

impl Store {
    fn auth(&self) -> Result<sled::Tree, StoreError> {
        Ok(self.db.open_tree("auth")?)
    }

    fn list<T: for<'de> Deserialize<'de>>(&self, prefix: &str) -> Result<Vec<T>, StoreError> {
        self.auth()?.scan_prefix(prefix).map(|item| decode(&item?.1)).collect()
    }

    /// Every user, by name.
    pub fn users(&self) -> Result<Vec<User>, StoreError> {
        self.list(USER)
    }

    /// A user by name.
    pub fn user(&self, name: &str) -> Result<Option<User>, StoreError> {
        self.auth()?.get(key(USER, name))?.map(|v| decode(&v)).transpose()
    }

    /// Whether the first administrator was made (the setup token is spent).
    pub fn is_set_up(&self) -> Result<bool, StoreError> {
        Ok(self.auth()?.get(SET_UP)?.is_some())
    }

    /// Makes the first administrator, once: `false` if the router was set up already.
    pub fn create_first_admin(&self, user: &User) -> Result<bool, StoreError> {
        let tree = self.auth()?;
        let made = tree.transaction(|t| {
            if t.get(SET_UP)?.is_some() {
                return Ok(false);
            }
            t.insert(SET_UP, &[1])?;
            t.insert(key(USER, &user.name), encode(user))?;
            Ok::<_, ConflictableTransactionError<()>>(true)
        });
        let made = made.map_err(|e| match e {
            sled::transaction::TransactionError::Storage(e) => StoreError::Db(e),
            sled::transaction::TransactionError::Abort(()) => StoreError::Corrupt("abort".into()),
        })?;
        self.db.flush()?;
        Ok(made)
    }

    /// Adds or replaces a user.
    pub fn put_user(&self, user: &User) -> Result<(), StoreError> {
        self.auth()?.insert(key(USER, &user.name), encode(user))?;
        self.db.flush()?;
        Ok(())
    }

    /// Deletes a user and the tokens it made; `false` if there was none.
    pub fn delete_user(&self, name: &str) -> Result<bool, StoreError> {
        let tree = self.auth()?;
        let existed = tree.remove(key(USER, name))?.is_some();
        for t in self.tokens()?.into_iter().filter(|t| t.owner == name) {
            tree.remove(key(TOKEN, &t.hash))?;
        }
        self.db.flush()?;
        Ok(existed)
    }

    /// Every token.
    pub fn tokens(&self) -> Result<Vec<Token>, StoreError> {
        self.list(TOKEN)
    }

    /// The token whose secret hashes to `hash`.
    pub fn token_by_hash(&self, hash: &str) -> Result<Option<Token>, StoreError> {
        self.auth()?.get(key(TOKEN, hash))?.map(|v| decode(&v)).transpose()
    }

    /// Stores a new token.
    pub fn put_token(&self, token: &Token) -> Result<(), StoreError> {
        self.auth()?.insert(key(TOKEN, &token.hash), encode(token))?;
        self.db.flush()?;
        Ok(())
    }

    /// Revokes the token with this id; `false` if there was none.
    pub fn revoke_token(&self, id: &str) -> Result<bool, StoreError> {
        let Some(t) = self.tokens()?.into_iter().find(|t| t.id == id) else { return Ok(false) };
        self.auth()?.remove(key(TOKEN, &t.hash))?;
        self.db.flush()?;
        Ok(true)
    }

    /// Appends to the audit log (numbered and stamped here), dropping the oldest entry beyond
    /// [`AUDIT_KEEP`].
    pub fn audit(&self, mut entry: AuditEntry) -> Result<u64, StoreError> {
        let tree = self.auth()?;
        let seq = tree
            .update_and_fetch(AUDIT_NEXT, |old| {
                let n = old.and_then(|o| o.try_into().ok()).map_or(0, u64::from_be_bytes);
                Some((n + 1).to_be_bytes().to_vec())
            })?
            .and_then(|v| v.as_ref().try_into().ok())
            .map_or(1, u64::from_be_bytes);
        entry.seq = seq;
        entry.at_ms = now_ms();
        tree.insert(audit_key(seq), encode(&entry))?;
        if seq > AUDIT_KEEP {
            tree.remove(audit_key(seq - AUDIT_KEEP))?;
        }
        self.db.flush()?;
        Ok(seq)
    }

    /// The newest `limit` audit entries, newest first.
    pub fn audit_log(&self, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        self.auth()?.scan_prefix(AUDIT).rev().take(limit).map(|item| decode(&item?.1)).collect()
    }
}

impl Store {
    /// Keeps a plugin's component under its SHA-256 (hex, given by the caller, who checked it).
    pub fn put_wasm(&self, sha256: &str, wasm: &[u8]) -> Result<(), StoreError> {
        self.db.open_tree("wasm")?.insert(sha256.as_bytes(), wasm)?;
        self.db.flush()?;
        Ok(())
    }

    /// A component by its SHA-256.
    pub fn wasm(&self, sha256: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.open_tree("wasm")?.get(sha256.as_bytes())?.map(|v| v.to_vec()))
    }

    /// Deletes the components no revision refers to any more.
    pub fn collect_wasm(&self) -> Result<usize, StoreError> {
        let mut used = std::collections::BTreeSet::new();
        for (id, _, _) in self.history()? {
            used.extend(self.revision(id)?.config.plugins.into_values().map(|p| p.wasm_sha256));
        }
        used.extend(self.candidate()?.plugins.into_values().map(|p| p.wasm_sha256));
        let tree = self.db.open_tree("wasm")?;
        let mut removed = 0;
        for key in tree.iter().keys() {
            let key = key?;
            if !used.contains(std::str::from_utf8(&key).unwrap_or_default()) {
                tree.remove(key)?;
                removed += 1;
            }
        }
        self.db.flush()?;
        Ok(removed)
    }
}

fn audit_key(seq: u64) -> Vec<u8> {
    let mut k = AUDIT.as_bytes().to_vec();
    k.extend_from_slice(&seq.to_be_bytes());
    k
}
