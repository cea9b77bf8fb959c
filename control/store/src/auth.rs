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
const FAILURES: &str = "failures/";
const FAILURES_NEXT: &[u8] = b"meta/failures-next";
/// Set once the first administrator exists: the setup token is spent.
const SET_UP: &[u8] = b"meta/set-up";
/// Entries of the audit log of changes and logins kept; older ones are dropped as new ones come.
pub const AUDIT_KEEP: u64 = 100_000;
/// Longest an entry of the audit log is kept, ms (two years).
pub const AUDIT_MAX_AGE_MS: u64 = 730 * 86_400_000;
/// Entries of the log of failed authentications kept: a log of its own, so that failures
/// (which anyone on the network can cause) never push out the changes and logins.
pub const FAILURES_KEEP: u64 = 20_000;
/// Longest an entry of the log of failed authentications is kept, ms (90 days).
pub const FAILURES_MAX_AGE_MS: u64 = 90 * 86_400_000;

/// The two audit logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuditLog {
    /// Changes (made or refused) by authenticated callers, logins, logouts, the setup: what
    /// known people did. [`AUDIT_KEEP`] entries, [`AUDIT_MAX_AGE_MS`].
    Changes,
    /// Failed logins and forged requests: what anyone may cause. [`FAILURES_KEEP`] entries,
    /// [`FAILURES_MAX_AGE_MS`].
    Failures,
}

impl AuditLog {
    const fn layout(self) -> (&'static str, &'static [u8], u64, u64) {
        match self {
            Self::Changes => (AUDIT, AUDIT_NEXT, AUDIT_KEEP, AUDIT_MAX_AGE_MS),
            Self::Failures => (FAILURES, FAILURES_NEXT, FAILURES_KEEP, FAILURES_MAX_AGE_MS),
        }
    }
}

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
    /// When it stops working, ms since the Unix epoch (`None`: when revoked).
    #[serde(default)]
    pub expires_ms: Option<u64>,
    /// The id of the token that made it: it ends with that one.
    #[serde(default)]
    pub parent: Option<String>,
}

impl Token {
    /// Whether it has expired at `now_ms`.
    #[must_use]
    pub fn expired(&self, now_ms: u64) -> bool {
        self.expires_ms.is_some_and(|e| e <= now_ms)
    }
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

    /// Revokes the token with this id and every token made with it (and so on); `false` if
    /// there was none.
    pub fn revoke_token(&self, id: &str) -> Result<bool, StoreError> {
        let tokens = self.tokens()?;
        if !tokens.iter().any(|t| t.id == id) {
            return Ok(false);
        }
        let tree = self.auth()?;
        let mut ending = vec![id.to_owned()];
        while let Some(id) = ending.pop() {
            for t in &tokens {
                if t.id == id {
                    tree.remove(key(TOKEN, &t.hash))?;
                } else if t.parent.as_deref() == Some(id.as_str()) {
                    ending.push(t.id.clone());
                }
            }
        }
        self.db.flush()?;
        Ok(true)
    }

    /// Appends to the audit log of changes (numbered and stamped here).
    pub fn audit(&self, entry: AuditEntry) -> Result<u64, StoreError> {
        self.audit_to(AuditLog::Changes, entry)
    }

    /// Appends to one of the audit logs (numbered and stamped here), dropping the oldest
    /// entries beyond its size and age.
    pub fn audit_to(&self, log: AuditLog, mut entry: AuditEntry) -> Result<u64, StoreError> {
        let (prefix, next, keep, max_age) = log.layout();
        let tree = self.auth()?;
        let seq = tree
            .update_and_fetch(next, |old| {
                let n = old.and_then(|o| o.try_into().ok()).map_or(0, u64::from_be_bytes);
                Some((n + 1).to_be_bytes().to_vec())
            })?
            .and_then(|v| v.as_ref().try_into().ok())
            .map_or(1, u64::from_be_bytes);
        entry.seq = seq;
        entry.at_ms = now_ms();
        tree.insert(audit_key(prefix, seq), encode(&entry))?;
        if seq > keep {
            tree.remove(audit_key(prefix, seq - keep))?;
        }
        // The oldest entries past their age, a few at a time (each append moves on).
        let cutoff = entry.at_ms.saturating_sub(max_age);
        for item in tree.scan_prefix(prefix).take(8) {
            let (k, v) = item?;
            if decode::<AuditEntry>(&v).is_ok_and(|e| e.at_ms >= cutoff) {
                break;
            }
            tree.remove(k)?;
        }
        self.db.flush()?;
        Ok(seq)
    }

    /// The newest `limit` entries of the audit log of changes, newest first.
    pub fn audit_log(&self, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        self.audit_entries(AuditLog::Changes, limit)
    }

    /// The newest `limit` entries of an audit log, newest first.
    pub fn audit_entries(
        &self,
        log: AuditLog,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let prefix = log.layout().0;
        self.auth()?.scan_prefix(prefix).rev().take(limit).map(|item| decode(&item?.1)).collect()
    }
}

fn audit_key(prefix: &str, seq: u64) -> Vec<u8> {
    let mut k = prefix.as_bytes().to_vec();
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (Store, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("sluice-store-auth-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        (Store::open(&dir).unwrap(), dir)
    }

    fn entry(who: &str) -> AuditEntry {
        let (from, action, outcome) = ("192.0.2.1".into(), "POST /x".into(), "ok".into());
        AuditEntry { seq: 0, at_ms: 0, who: who.into(), from, action, outcome }
    }

    fn token(id: &str, parent: Option<&str>) -> Token {
        Token {
            id: id.into(),
            name: id.into(),
            scope: Role::Admin,
            owner: "ops".into(),
            hash: format!("hash-{id}"),
            created_ms: 1,
            expires_ms: None,
            parent: parent.map(str::to_owned),
        }
    }

    #[test]
    fn failures_fill_their_own_log_and_revoking_a_token_ends_its_descendants() {
        let (s, dir) = store();
        s.audit(entry("admin")).unwrap();
        for _ in 0..50 {
            s.audit_to(AuditLog::Failures, entry("anonymous")).unwrap();
        }
        assert_eq!(s.audit_log(10).unwrap()[0].who, "admin");
        assert_eq!(s.audit_entries(AuditLog::Failures, 100).unwrap().len(), 50);
        // Entries past their age go as new ones come.
        let old = AuditEntry { at_ms: 1, ..entry("ancient") };
        s.auth().unwrap().insert(audit_key(FAILURES, 0), encode(&old)).unwrap();
        s.audit_to(AuditLog::Failures, entry("anonymous")).unwrap();
        assert!(
            s.audit_entries(AuditLog::Failures, 100).unwrap().iter().all(|e| e.who != "ancient")
        );

        for t in [token("a", None), token("b", Some("a")), token("c", Some("b")), token("d", None)]
        {
            s.put_token(&t).unwrap();
        }
        assert!(s.revoke_token("a").unwrap());
        let left: Vec<String> = s.tokens().unwrap().into_iter().map(|t| t.id).collect();
        assert_eq!(left, ["d"]);
        assert!(!s.revoke_token("a").unwrap());
        assert!(token("e", None).expires_ms.is_none() && !token("e", None).expired(u64::MAX));
        drop(s);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
