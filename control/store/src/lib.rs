//! Sluice's configuration store: the configuration as numbered revisions in sled.
//!
//! - A change is staged as the candidate, shown as a diff against the running revision, then
//!   committed as a new revision with who, when, from where and why.
//! - Commit-confirm: a commit that is not confirmed before its deadline is rolled back. The
//!   deadline is stored with the revision, so a daemon restarted (or a router rebooted) after it
//!   passed still rolls back ([`Store::rollback_expired`]).
//! - Rollback to any revision is a new revision with that revision's configuration; history is
//!   never rewritten.
//! - Export and import of the whole configuration as pretty JSON.
//! - Plugins' components stored with the revision that first names them, and collected once
//!   no kept revision names them (`components`).
//! - Nothing is acknowledged before it is on disk: every change is one sled transaction,
//!   flushed before the call returns.
//! - The store's schema is versioned; [`Store::open`] migrates older stores.
//! - The plugins' key-value stores, a file per plugin ([`kv`]).

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::Path,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use sled::{
    Transactional as _,
    transaction::{ConflictableTransactionError, TransactionError},
};

mod auth;
mod components;
pub mod kv;
pub mod protocols;
pub mod record;
pub use auth::{
    AUDIT_KEEP, AUDIT_MAX_AGE_MS, AuditEntry, AuditLog, FAILURES_KEEP, FAILURES_MAX_AGE_MS, Role,
    Token, User,
};
pub use components::{COMPONENT_REVISIONS, Collected};

/// The schema this version writes.
pub const SCHEMA_VERSION: u32 = 1;

const SCHEMA: &[u8] = b"meta/schema";
const RUNNING: &[u8] = b"meta/running";
const NEXT: &[u8] = b"meta/next";
const PENDING: &[u8] = b"meta/pending";
const CANDIDATE: &[u8] = b"candidate";
const IDENTITY: &[u8] = b"meta/identity";
const REV: &str = "rev/";

/// XDP attach mode of an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Native, falling back to generic.
    #[default]
    Auto,
    /// Native only.
    Native,
    /// Generic only.
    Generic,
}

/// An interface the router serves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Interface {
    /// A routed port: the daemon attaches XDP to it (in `xdp_mode`) while it is in the running
    /// configuration with `attach` true, and detaches it when it leaves or is set false.
    #[serde(default = "yes")]
    pub attach: bool,
    /// XDP attach mode.
    #[serde(default)]
    pub xdp_mode: XdpMode,
    /// Addresses with their prefix length.
    #[serde(default)]
    pub addresses: Vec<IpNet>,
    /// MTU, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Administratively up.
    #[serde(default = "yes")]
    pub up: bool,
}

pub(crate) const fn yes() -> bool {
    true
}

/// A static route.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticRoute {
    /// Destination (host bits zero).
    pub prefix: IpNet,
    /// Gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<IpAddr>,
    /// Output interface.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dev: Option<String>,
    /// Metric.
    #[serde(default)]
    pub metric: u32,
}

/// A plugin the router runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plugin {
    /// SHA-256 of its component (the component is stored by this hash: [`Store::wasm`]).
    pub wasm_sha256: String,
    /// Its manifest as the operator accepted it (JSON; the plugin host reads it).
    #[serde(default)]
    pub manifest: serde_json::Value,
    /// Its configuration.
    #[serde(default)]
    pub config: serde_json::Value,
    /// Running or not.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The operator allows it `drop` and rate-limit rules on `0.0.0.0/0` and `::/0` (which
    /// match every address); refused otherwise.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_match_all: bool,
}

/// The whole configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Interfaces by name.
    #[serde(default)]
    pub interfaces: BTreeMap<String, Interface>,
    /// Static routes.
    #[serde(default)]
    pub routes: Vec<StaticRoute>,
    /// Plugins by name.
    #[serde(default)]
    pub plugins: BTreeMap<String, Plugin>,
    /// Routing protocols (BGP, OSPF, ECMP), run by BIRD.
    #[serde(default, skip_serializing_if = "protocols::Protocols::is_unset")]
    pub protocols: protocols::Protocols,
}

/// A field of a configuration that is wrong, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    /// Path of the field (`routes[2].prefix`).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// Whether the kernel takes `name` as an interface name.
pub fn interface_name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("empty")
    } else if name.len() > 15 {
        Some("longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("\".\" and \"..\" are not interface names")
    } else if name.contains(['/', ':']) || name.chars().any(char::is_whitespace) {
        Some("contains '/', ':' or white space")
    } else {
        None
    }
}

impl Config {
    /// Every problem of the configuration, by field.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let mut err = |field: String, message: String| errors.push(FieldError { field, message });
        for (name, i) in &self.interfaces {
            if let Some(m) = interface_name_problem(name) {
                err(format!("interfaces.{name}"), format!("interface name: {m}"));
            }
            for (k, a) in i.addresses.iter().enumerate() {
                if a.addr() == a.network() && a.prefix_len() < a.max_prefix_len() {
                    err(
                        format!("interfaces.{name}.addresses[{k}]"),
                        format!("{a} is the network address, not an address of the router"),
                    );
                }
            }
            if let Some(mtu) = i.mtu
                && !(68..=65_535).contains(&mtu)
            {
                err(format!("interfaces.{name}.mtu"), format!("{mtu} is outside 68 to 65535"));
            }
        }
        let mut seen = BTreeMap::new();
        for (k, r) in self.routes.iter().enumerate() {
            if r.prefix.trunc() != r.prefix {
                err(
                    format!("routes[{k}].prefix"),
                    format!("{} has host bits set (did you mean {}?)", r.prefix, r.prefix.trunc()),
                );
            }
            if r.via.is_none() && r.dev.is_none() {
                err(format!("routes[{k}]"), "a route needs `via`, `dev` or both".into());
            }
            if let Some(via) = r.via
                && via.is_ipv4() != r.prefix.addr().is_ipv4()
            {
                err(format!("routes[{k}].via"), format!("{via} is not of the prefix's family"));
            }
            if let Some(dev) = &r.dev
                && let Some(m) = interface_name_problem(dev)
            {
                err(format!("routes[{k}].dev"), format!("interface name: {m}"));
            }
            if let Some(first) = seen.insert((r.prefix, r.metric), k) {
                err(
                    format!("routes[{k}].prefix"),
                    format!("{} metric {} is already routes[{first}]", r.prefix, r.metric),
                );
            }
        }
        for (name, p) in &self.plugins {
            if name.is_empty()
                || name.len() > 64
                || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
            {
                err(
                    format!("plugins.{name}"),
                    "a plugin name is 1 to 64 letters, digits, '-' or '_'".into(),
                );
            }
            if p.wasm_sha256.len() != 64 || !p.wasm_sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                err(format!("plugins.{name}.wasm_sha256"), "64 hexadecimal digits".into());
            }
        }
        self.protocols.validate(&mut errors);
        errors
    }

    /// The same configuration with its secrets (BGP passwords) replaced by
    /// [`protocols::REDACTED`]: what exports and answers show unless an administrator asks.
    #[must_use]
    pub fn redacted(&self) -> Self {
        Self { protocols: self.protocols.redacted(), ..self.clone() }
    }
}

/// One difference between two configurations.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Change {
    /// `added`, `removed` or `changed`.
    pub kind: &'static str,
    /// What (`interfaces.eth1`, `routes 10.0.0.0/8 metric 0`, `plugins.acl`).
    pub item: String,
    /// Before, as JSON.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<serde_json::Value>,
    /// After, as JSON.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<serde_json::Value>,
}

fn diff_maps<T: Serialize + PartialEq>(
    out: &mut Vec<Change>,
    what: &str,
    old: &BTreeMap<String, T>,
    new: &BTreeMap<String, T>,
) {
    let json = |v: &T| serde_json::to_value(v).ok();
    for (k, v) in old {
        match new.get(k) {
            None => out.push(Change {
                kind: "removed",
                item: format!("{what}.{k}"),
                before: json(v),
                after: None,
            }),
            Some(n) if n != v => out.push(Change {
                kind: "changed",
                item: format!("{what}.{k}"),
                before: json(v),
                after: json(n),
            }),
            Some(_) => {}
        }
    }
    for (k, v) in new {
        if !old.contains_key(k) {
            out.push(Change {
                kind: "added",
                item: format!("{what}.{k}"),
                before: None,
                after: json(v),
            });
        }
    }
}

/// What changes from `old` to `new`, item by item.
pub fn diff(old: &Config, new: &Config) -> Vec<Change> {
    let mut out = Vec::new();
    diff_maps(&mut out, "interfaces", &old.interfaces, &new.interfaces);
    let routes = |c: &Config| -> BTreeMap<String, StaticRoute> {
        c.routes.iter().map(|r| (format!("{} metric {}", r.prefix, r.metric), r.clone())).collect()
    };
    diff_maps(&mut out, "routes", &routes(old), &routes(new));
    diff_maps(&mut out, "plugins", &old.plugins, &new.plugins);
    let (old_p, new_p) = (old.protocols.redacted(), new.protocols.redacted());
    let single = |p: &protocols::Protocols| -> BTreeMap<String, serde_json::Value> {
        let mut m = BTreeMap::new();
        if let Some(id) = p.router_id {
            m.insert("router_id".to_owned(), serde_json::json!(id));
        }
        if let Some(o) = &p.ospf {
            m.insert("ospf".to_owned(), serde_json::json!(o));
        }
        if let Some(e) = p.ecmp {
            m.insert("ecmp".to_owned(), serde_json::json!(e));
        }
        m
    };
    diff_maps(&mut out, "protocols", &single(&old_p), &single(&new_p));
    // Passwords are redacted, so a changed password would not show: say it changed.
    for (name, b) in &new.protocols.bgp {
        if let Some(o) = old.protocols.bgp.get(name)
            && o.password != b.password
            && old_p.bgp.get(name) == new_p.bgp.get(name)
        {
            out.push(Change {
                kind: "changed",
                item: format!("protocols.bgp.{name}.password"),
                before: None,
                after: None,
            });
        }
    }
    diff_maps(&mut out, "protocols.bgp", &old_p.bgp, &new_p.bgp);
    out
}

/// Who made a change, from where, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Author {
    /// User name (or token name).
    pub who: String,
    /// Remote address, or `console`, `cli`.
    pub from: String,
    /// Commit message.
    pub message: String,
}

/// A committed revision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revision {
    /// Number, from 1.
    pub id: u64,
    /// When, ms since the Unix epoch.
    pub at_ms: u64,
    /// Who, from where, why.
    pub author: Author,
    /// The configuration.
    pub config: Config,
}

/// A commit waiting for its confirmation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// The revision to confirm.
    pub revision: u64,
    /// The revision it rolls back to.
    pub previous: Option<u64>,
    /// Deadline, ms since the Unix epoch.
    pub deadline_ms: u64,
}

/// How long [`open_db`] waits for a database's lock.
pub const LOCK_WAIT: Duration = Duration::from_secs(2);

/// Opens a sled database, waiting up to [`LOCK_WAIT`] for its lock.
///
/// sled locks the database's file while it is open, and a handle dropped in this process gives
/// the lock up only when sled's flushing thread has stopped, a moment later: opening the database
/// again right away would fail. A lock still held after the wait is another holder's (another
/// daemon on the same state directory), and the error says so.
///
/// The database holds password and token hashes: its directory is created 0700 (with any
/// missing parent, such as the state directory) and its files are made 0600 once open, whatever
/// the umask (sled creates them with the process's); a directory found wider is narrowed, with a
/// log line.
///
/// # Errors
/// sled's, or an [`std::io::ErrorKind::WouldBlock`] error naming the database that is in use.
pub fn open_db(config: &sled::Config) -> sled::Result<sled::Db> {
    use std::os::unix::fs::DirBuilderExt as _;
    /// Narrows `dir` to 0700 and what it holds to 0700 (directories) and 0600 (files).
    fn make_private(dir: &Path) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt as _;
        let mut pending = vec![dir.to_owned()];
        while let Some(d) = pending.pop() {
            for entry in std::fs::read_dir(&d)? {
                let entry = entry?;
                let kind = entry.file_type()?;
                let want = if kind.is_dir() {
                    pending.push(entry.path());
                    0o700
                } else if kind.is_file() {
                    0o600
                } else {
                    continue;
                };
                let mode = entry.metadata()?.permissions().mode() & 0o777;
                if mode & !want != 0 {
                    std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(want))?;
                }
            }
        }
        let mode = std::fs::metadata(dir)?.permissions().mode() & 0o777;
        if mode & !0o700 != 0 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
            tracing::warn!(db = %dir.display(), was = format!("{mode:o}"), "the database was open to others: narrowed to 0700, its files to 0600");
        }
        Ok(())
    }
    let dir = config.get_path();
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir)?;
    let db = open_waiting(config, LOCK_WAIT)?;
    make_private(&dir)?;
    Ok(db)
}

fn open_waiting(config: &sled::Config, wait: Duration) -> sled::Result<sled::Db> {
    let start = std::time::Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        match config.open() {
            // sled 0.34 reports a held lock as an `Other` error with this text.
            Err(sled::Error::Io(e)) if e.to_string().starts_with("could not acquire lock") => {
                if start.elapsed() >= wait {
                    return Err(sled::Error::Io(std::io::Error::new(
                        std::io::ErrorKind::WouldBlock,
                        format!(
                            "the database is in use by another process (waited {} ms for its \
                             lock; is another daemon running on the same directory?): {e}",
                            wait.as_millis()
                        ),
                    )));
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

/// Why the store refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled failed.
    #[error("the store's database")]
    Db(#[from] sled::Error),
    /// A stored record does not decode.
    #[error("a stored record is corrupt: {0}")]
    Corrupt(String),
    /// The configuration is invalid; nothing was written.
    #[error("{} invalid field(s): {}", .0.len(), .0.iter().map(|e| format!("{}: {}", e.field, e.message)).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<FieldError>),
    /// A text to import is not a configuration.
    #[error("not a configuration: {0}")]
    Parse(String),
    /// No such revision.
    #[error("no revision {0}")]
    NoRevision(u64),
    /// The store was written by a newer version.
    #[error("the store has schema {found}; this version reads up to {SCHEMA_VERSION}")]
    TooNew {
        /// Found.
        found: u32,
    },
    /// A commit is waiting for its confirmation.
    #[error("revision {0} waits for its confirmation; confirm it or let it roll back first")]
    PendingConfirm(u64),
    /// The store's record could not be read or written.
    #[error("the store's record: {0}")]
    Record(String),
    /// The store is not what its record says was committed to it (emptied, truncated,
    /// replaced): refused, so that nothing is applied from it.
    #[error(
        "the configuration store {} is refused: {problem}. Nothing was applied from it. \
         `sluice config verify --state-dir {state}` shows the details; restore a backup with \
         `sluice config repair --state-dir {state} --from FILE` (a `sluice config export`), or \
         accept the store as it is with `sluice config repair --state-dir {state} --accept`",
        db.display(),
        state = db.parent().unwrap_or(db).display()
    )]
    Unvouched {
        /// The database.
        db: std::path::PathBuf,
        /// What is wrong.
        problem: String,
    },
}

/// A configuration file ([`Store::export`]'s) read back.
pub fn parse_config(text: &str) -> Result<Config, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Parse(e.to_string()))
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn rev_key(id: u64) -> Vec<u8> {
    let mut k = REV.as_bytes().to_vec();
    k.extend_from_slice(&id.to_be_bytes());
    k
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("the store's records serialise")
}

fn u64_of(bytes: &[u8]) -> Result<u64, StoreError> {
    Ok(u64::from_be_bytes(bytes.try_into().map_err(|_| StoreError::Corrupt("counter".into()))?))
}

/// The configuration store.
#[derive(Debug, Clone)]
pub struct Store {
    db: sled::Db,
    tree: sled::Tree,
    /// The database's directory.
    dir: std::path::PathBuf,
    /// Where the store's record is kept, when it has one ([`Store::open_recorded`]).
    record: Option<std::path::PathBuf>,
}

impl Store {
    /// Opens (or creates) the store in `dir`, migrating an older schema. Without a record: for
    /// tools and tests; the router's store is opened with [`Store::open_recorded`].
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        // sled's default cache is 1 GiB, more than a small appliance has (and more than the
        // configuration needs): 64 MiB.
        let db = open_db(&sled::Config::new().path(dir).cache_capacity(64 << 20))?;
        let tree = db.open_tree("config")?;
        let store = Self { db, tree, dir: dir.to_owned(), record: None };
        store.migrate()?;
        if store.tree.get(IDENTITY)?.is_none() {
            store.tree.insert(IDENTITY, record::new_identity()?.as_bytes())?;
            store.db.flush()?;
        }
        Ok(store)
    }

    /// Opens the store in `dir` with its record ([`record`], `DIR.record`): refused with
    /// [`StoreError::Unvouched`] when the record says revisions were committed that the database
    /// does not hold, or names another store. A store without a record (a new one, or one from
    /// a version before records) gets one. Every commit then updates it.
    pub fn open_recorded(dir: &Path) -> Result<Self, StoreError> {
        let store = Self::open_for_repair(dir)?;
        let check = store.check_record()?;
        if let Some(problem) = check.problem {
            return Err(StoreError::Unvouched { db: dir.to_owned(), problem });
        }
        if check.record.is_none() {
            store.write_record()?;
        }
        Ok(store)
    }

    /// Opens the store in `dir` with its record, whatever the record says: for `sluice config
    /// verify` and `repair`, which decide about a store [`Store::open_recorded`] refuses.
    pub fn open_for_repair(dir: &Path) -> Result<Self, StoreError> {
        let mut store = Self::open(dir)?;
        store.record = Some(record::path_of(dir));
        Ok(store)
    }

    /// The store's identity.
    fn identity(&self) -> Result<String, StoreError> {
        let id =
            self.tree.get(IDENTITY)?.ok_or_else(|| StoreError::Corrupt("no identity".into()))?;
        String::from_utf8(id.to_vec()).map_err(|_| StoreError::Corrupt("identity".into()))
    }

    /// The latest revision committed (0: none).
    fn latest(&self) -> Result<u64, StoreError> {
        Ok(match self.tree.get(NEXT)? {
            Some(v) => u64_of(&v)?.saturating_sub(1),
            None => 0,
        })
    }

    /// How the store and its record agree: the record names this store, and the store holds
    /// the revision the record names, its own latest and its running revision, each decoding.
    pub fn check_record(&self) -> Result<record::RecordCheck, StoreError> {
        let path = self.record.clone().unwrap_or_else(|| record::path_of(&self.dir));
        let found = record::read(&path)?;
        let store = self.identity()?;
        let latest = self.latest()?;
        let running = match self.tree.get(RUNNING)? {
            Some(v) => Some(u64_of(&v)?),
            None => None,
        };
        let mut problem = found.as_ref().and_then(|r| record::disagreement(&store, latest, r));
        let mut needed: Vec<u64> = running.into_iter().collect();
        needed.extend(found.as_ref().map(|r| r.revision).filter(|&r| r > 0));
        if latest > 0 {
            needed.push(latest);
        }
        for id in needed {
            if problem.is_some() {
                break;
            }
            match self.revision(id) {
                Ok(_) => {}
                Err(StoreError::NoRevision(_)) => {
                    problem = Some(format!("revision {id} is missing from the database"));
                }
                Err(StoreError::Corrupt(e)) => {
                    problem = Some(format!("revision {id} does not decode: {e}"));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(record::RecordCheck { path, store, latest, running, record: found, problem })
    }

    /// Writes the record for the store as it is: after a commit, and to accept a store the
    /// record refused (`sluice config repair --accept`).
    pub fn write_record(&self) -> Result<(), StoreError> {
        let path = self.record.clone().unwrap_or_else(|| record::path_of(&self.dir));
        let r = record::Record {
            store: self.identity()?,
            revision: self.latest()?,
            written_ms: now_ms(),
        };
        record::write(&path, &r)
    }

    /// Every prefix of a static route some revision the store holds has (for removing, from
    /// the kernel, only routes the store knows it added).
    pub fn routes_held(&self) -> Result<std::collections::BTreeSet<IpNet>, StoreError> {
        /// A revision with only its routes' prefixes decoded.
        #[derive(Deserialize)]
        struct Routes {
            config: RoutesOnly,
        }
        #[derive(Deserialize)]
        struct RoutesOnly {
            #[serde(default)]
            routes: Vec<PrefixOnly>,
        }
        #[derive(Deserialize)]
        struct PrefixOnly {
            prefix: IpNet,
        }
        let mut out = std::collections::BTreeSet::new();
        for kv in self.tree.scan_prefix(REV.as_bytes()) {
            let (_, v) = kv?;
            let r: Routes = decode(&v)?;
            out.extend(r.config.routes.into_iter().map(|p| p.prefix));
        }
        Ok(out)
    }

    /// Brings the schema to [`SCHEMA_VERSION`]: version 0 is a store made before versions were
    /// recorded, whose records are those of version 1.
    fn migrate(&self) -> Result<(), StoreError> {
        let found = match self.tree.get(SCHEMA)? {
            Some(v) => u32::from_be_bytes(
                v.as_ref().try_into().map_err(|_| StoreError::Corrupt("schema".into()))?,
            ),
            None => 0,
        };
        if found > SCHEMA_VERSION {
            return Err(StoreError::TooNew { found });
        }
        if found < SCHEMA_VERSION {
            // 0 -> 1: nothing to convert, only the version to record.
            self.tree.insert(SCHEMA, &SCHEMA_VERSION.to_be_bytes())?;
            self.db.flush()?;
        }
        // Versions before components were collected stored refused uploads, and kept every
        // replaced component.
        self.collect_components()?;
        Ok(())
    }

    /// The schema version on disk.
    pub fn schema(&self) -> Result<u32, StoreError> {
        let v = self.tree.get(SCHEMA)?.ok_or_else(|| StoreError::Corrupt("no schema".into()))?;
        Ok(u32::from_be_bytes(
            v.as_ref().try_into().map_err(|_| StoreError::Corrupt("schema".into()))?,
        ))
    }

    /// The running revision, if any was committed.
    pub fn running(&self) -> Result<Option<Revision>, StoreError> {
        let Some(id) = self.tree.get(RUNNING)? else { return Ok(None) };
        self.revision(u64_of(&id)?).map(Some)
    }

    /// The running configuration (empty before the first commit).
    pub fn config(&self) -> Result<Config, StoreError> {
        Ok(self.running()?.map(|r| r.config).unwrap_or_default())
    }

    /// A revision.
    pub fn revision(&self, id: u64) -> Result<Revision, StoreError> {
        let bytes = self.tree.get(rev_key(id))?.ok_or(StoreError::NoRevision(id))?;
        decode(&bytes)
    }

    /// The candidate: what is staged, or the running configuration.
    pub fn candidate(&self) -> Result<Config, StoreError> {
        match self.tree.get(CANDIDATE)? {
            Some(bytes) => decode(&bytes),
            None => self.config(),
        }
    }

    /// Stages a candidate (validated, its new plugin entries included: [`Store::plugin_problems`];
    /// an invalid one is refused and nothing changes).
    pub fn stage(&self, candidate: &Config) -> Result<(), StoreError> {
        let mut candidate = candidate.clone();
        self.restore_secrets(&mut candidate, true)?;
        let candidate = &candidate;
        let mut errors = candidate.validate();
        if errors.is_empty() {
            errors = self.plugin_problems(candidate)?;
        }
        if !errors.is_empty() {
            return Err(StoreError::Invalid(errors));
        }
        self.tree.insert(CANDIDATE, encode(candidate))?;
        self.db.flush()?;
        Ok(())
    }

    /// Drops the candidate.
    pub fn discard(&self) -> Result<(), StoreError> {
        self.tree.remove(CANDIDATE)?;
        self.db.flush()?;
        Ok(())
    }

    /// The candidate's differences from the running configuration.
    pub fn diff(&self) -> Result<Vec<Change>, StoreError> {
        Ok(diff(&self.config()?, &self.candidate()?))
    }

    /// Commits the candidate as a new running revision.
    pub fn commit(&self, author: &Author) -> Result<Revision, StoreError> {
        self.commit_config(&self.candidate()?, author, None, None)
    }

    /// Commits the candidate; unless [`Store::confirm`] is called within `timeout`,
    /// [`Store::rollback_expired`] returns to the revision running before.
    pub fn commit_confirmed(
        &self,
        author: &Author,
        timeout: Duration,
    ) -> Result<Revision, StoreError> {
        self.commit_config(&self.candidate()?, author, Some(timeout), None)
    }

    /// Commits `config` directly (the candidate is left as it is), optionally to be confirmed
    /// within `confirm_within`: for changes made whole by the API (`POST /routes/static`).
    pub fn commit_change(
        &self,
        config: &Config,
        author: &Author,
        confirm_within: Option<Duration>,
    ) -> Result<Revision, StoreError> {
        self.commit_config(config, author, confirm_within, None)
    }

    /// Commits `config`, which names the plugin component `wasm` (of SHA-256 `sha256`, hex,
    /// checked by the caller), and stores the component in the same transaction: a commit
    /// refused stores nothing, and no component is stored that no revision names.
    pub fn commit_with_component(
        &self,
        config: &Config,
        author: &Author,
        sha256: &str,
        wasm: &[u8],
    ) -> Result<Revision, StoreError> {
        self.commit_config(config, author, None, Some((sha256, wasm)))
    }

    /// Makes `config` the running configuration as a new revision, with `component` when one
    /// comes with it, in one flushed transaction; then collects the components no longer kept.
    fn commit_config(
        &self,
        config: &Config,
        author: &Author,
        confirm_within: Option<Duration>,
        component: Option<(&str, &[u8])>,
    ) -> Result<Revision, StoreError> {
        let errors = config.validate();
        if !errors.is_empty() {
            return Err(StoreError::Invalid(errors));
        }
        if let Some(p) = self.pending_confirm()? {
            return Err(StoreError::PendingConfirm(p.revision));
        }
        let at_ms = now_ms();
        let component = component.map(|(sha, wasm)| (sha.to_ascii_lowercase(), wasm));
        let wasm_tree = self.db.open_tree(components::WASM_TREE)?;
        let result = (&self.tree, &wasm_tree).transaction(|(t, w)| {
            let id = match t.get(NEXT)? {
                Some(v) => u64::from_be_bytes(v.as_ref().try_into().map_err(|_| {
                    ConflictableTransactionError::Abort(StoreError::Corrupt("counter".into()))
                })?),
                None => 1,
            };
            let previous = match t.get(RUNNING)? {
                Some(v) => Some(u64::from_be_bytes(v.as_ref().try_into().map_err(|_| {
                    ConflictableTransactionError::Abort(StoreError::Corrupt("running".into()))
                })?)),
                None => None,
            };
            let rev = Revision { id, at_ms, author: author.clone(), config: config.clone() };
            t.insert(rev_key(id), encode(&rev))?;
            t.insert(NEXT, &(id + 1).to_be_bytes())?;
            t.insert(RUNNING, &id.to_be_bytes())?;
            t.remove(CANDIDATE)?;
            if let Some(timeout) = confirm_within {
                let pending = Pending {
                    revision: id,
                    previous,
                    deadline_ms: at_ms + timeout.as_millis() as u64,
                };
                t.insert(PENDING, encode(&pending))?;
            }
            if let Some((sha, wasm)) = &component {
                w.insert(sha.as_bytes(), *wasm)?;
            }
            Ok(rev)
        });
        let rev = result.map_err(|e| match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => StoreError::Db(e),
        })?;
        self.db.flush()?;
        // The record follows the flushed commit, never precedes it; one that fails to follow
        // stays at an older revision, which the store still holds.
        if self.record.is_some()
            && let Err(e) = self.write_record()
        {
            tracing::warn!(error = %e, revision = rev.id, "the store's record was not updated");
        }
        // The commit stands whatever the collection meets: what it leaves is collected at the
        // next commit or open.
        let _ = self.collect_components_after(Some(config));
        Ok(rev)
    }

    /// The commit waiting for its confirmation, if any.
    pub fn pending_confirm(&self) -> Result<Option<Pending>, StoreError> {
        self.tree.get(PENDING)?.map(|b| decode(&b)).transpose()
    }

    /// Confirms the pending commit; `false` when there was none.
    pub fn confirm(&self) -> Result<bool, StoreError> {
        let had = self.tree.remove(PENDING)?.is_some();
        self.db.flush()?;
        Ok(had)
    }

    /// When the pending commit's deadline has passed (at `now`), rolls back to the revision
    /// before it, as a new revision; returns it. Call at start and periodically.
    pub fn rollback_expired(&self, now: SystemTime) -> Result<Option<Revision>, StoreError> {
        let Some(p) = self.pending_confirm()? else { return Ok(None) };
        let now_ms = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        if now_ms < p.deadline_ms {
            return Ok(None);
        }
        let config = match p.previous {
            Some(id) => self.revision(id)?.config,
            None => Config::default(),
        };
        self.tree.remove(PENDING)?;
        let author = Author {
            who: "sluice".into(),
            from: "commit-confirm".into(),
            message: format!("revision {} was not confirmed in time", p.revision),
        };
        self.commit_config(&config, &author, None, None).map(Some)
    }

    /// Makes revision `id`'s configuration running again, as a new revision. Refused, naming
    /// them, when components of its plugins were collected since
    /// ([`COMPONENT_REVISIONS`]).
    pub fn rollback_to(&self, id: u64, author: &Author) -> Result<Revision, StoreError> {
        let config = self.revision(id)?.config;
        let mut gone = Vec::new();
        for (name, p) in &config.plugins {
            if !self.has_component(&p.wasm_sha256)? {
                gone.push(FieldError {
                    field: format!("plugins.{name}.wasm_sha256"),
                    message: format!(
                        "revision {id}'s component {} is no longer stored (the newest \
                         {COMPONENT_REVISIONS} revisions keep theirs): add the plugin again",
                        p.wasm_sha256
                    ),
                });
            }
        }
        if !gone.is_empty() {
            return Err(StoreError::Invalid(gone));
        }
        self.commit_config(&config, author, None, None)
    }

    /// Every revision, oldest first, without their configurations.
    pub fn history(&self) -> Result<Vec<(u64, u64, Author)>, StoreError> {
        /// A revision without its configuration, which decoding skips (most of the record when
        /// the configuration has many routes).
        #[derive(Deserialize)]
        struct Head {
            id: u64,
            at_ms: u64,
            author: Author,
        }
        self.tree
            .scan_prefix(REV.as_bytes())
            .map(|kv| {
                let (_, v) = kv?;
                let r: Head = decode(&v)?;
                Ok((r.id, r.at_ms, r.author))
            })
            .collect()
    }

    /// The running configuration as readable JSON (a backup); its secrets redacted
    /// ([`Config::redacted`]) unless `secrets`.
    pub fn export(&self, secrets: bool) -> Result<String, StoreError> {
        let config = self.config()?;
        let config = if secrets { config } else { config.redacted() };
        Ok(serde_json::to_string_pretty(&config).expect("a configuration serialises"))
    }

    /// Puts back into `config` the secrets a redacted copy stands for
    /// ([`protocols::Protocols::restore_secrets`]), from the candidate (`from_candidate`) or the
    /// running configuration; refused, naming the fields, when one has nothing to come from.
    pub fn restore_secrets(
        &self,
        config: &mut Config,
        from_candidate: bool,
    ) -> Result<(), StoreError> {
        let from = if from_candidate { self.candidate()? } else { self.config()? };
        let errors = config.protocols.restore_secrets(&from.protocols);
        if errors.is_empty() { Ok(()) } else { Err(StoreError::Invalid(errors)) }
    }

    /// Restores a configuration exported before: validated whole (its new plugin entries
    /// included: [`Store::plugin_problems`]), committed as a new revision.
    pub fn import(&self, text: &str, author: &Author) -> Result<Revision, StoreError> {
        self.import_config(&parse_config(text)?, author)
    }

    /// [`Store::import`] of a configuration file already read ([`parse_config`]).
    pub fn import_config(&self, config: &Config, author: &Author) -> Result<Revision, StoreError> {
        let mut config = config.clone();
        self.restore_secrets(&mut config, false)?;
        let config = &config;
        let errors = self.plugin_problems(config)?;
        if !errors.is_empty() {
            return Err(StoreError::Invalid(errors));
        }
        self.commit_config(config, author, None, None)
    }
}
