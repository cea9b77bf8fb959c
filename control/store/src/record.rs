//! The store's record: a small file beside the database (`DIR.record` for the database `DIR`)
//! naming the store (a random identity made when it was created) and the latest revision
//! committed to it. It is written after every commit, atomically (a temporary file, fsync,
//! rename, fsync of the directory), and kept apart from sled, so that a database emptied,
//! truncated or replaced on disk is told apart from a store that never had a configuration:
//! [`Store::open`](crate::Store::open) refuses a store its record does not vouch for, and nothing
//! (no static route, no address) is applied from it until the operator decides
//! (`sluice config repair`).

use std::{
    io::Write as _,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::StoreError;

/// What the record says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The store's identity (hex), made when the store was created.
    pub store: String,
    /// The latest revision committed to it (0: none yet).
    pub revision: u64,
    /// When the record was written, ms since the Unix epoch.
    pub written_ms: u64,
}

/// How a store and its record agree ([`Store::check_record`](crate::Store::check_record)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecordCheck {
    /// Where the record is.
    pub path: PathBuf,
    /// The store's identity.
    pub store: String,
    /// The latest revision the store holds (0: none).
    pub latest: u64,
    /// The running revision, when one is.
    pub running: Option<u64>,
    /// What the record says, when there is one.
    pub record: Option<Record>,
    /// What is wrong, in words; none when the two agree.
    pub problem: Option<String>,
}

/// Where the record of the database in `db` is kept.
pub fn path_of(db: &Path) -> PathBuf {
    let mut name = db.file_name().map(std::ffi::OsStr::to_os_string).unwrap_or_default();
    name.push(".record");
    db.with_file_name(name)
}

/// Reads the record; `None` when there is none.
pub fn read(path: &Path) -> Result<Option<Record>, StoreError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            StoreError::Record(format!("{} is not a store record: {e}", path.display()))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::Record(format!("reading {}: {e}", path.display()))),
    }
}

/// Writes the record atomically: a reader (or a crash) finds the old one or the new one whole.
pub fn write(path: &Path, record: &Record) -> Result<(), StoreError> {
    let failed = |what: &str, e: std::io::Error| {
        StoreError::Record(format!("{what} {}: {e}", path.display()))
    };
    let tmp = path.with_extension(format!("record.tmp.{}", std::process::id()));
    let mut bytes = serde_json::to_vec_pretty(record).expect("a record serialises");
    bytes.push(b'\n');
    let written = std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(&bytes).and_then(|()| f.sync_all()));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(failed("writing", e));
    }
    std::fs::rename(&tmp, path).map_err(|e| failed("replacing", e))?;
    // The rename itself is on disk only once the directory is.
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| failed("syncing the directory of", e))?;
    }
    Ok(())
}

/// A new store identity: 128 random bits, hex.
pub fn new_identity() -> Result<String, StoreError> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .map_err(|e| StoreError::Record(format!("making the store's identity: {e}")))?;
    Ok(bytes.iter().fold(String::with_capacity(32), |mut s, b| {
        use std::fmt::Write as _;
        let _ = write!(s, "{b:02x}");
        s
    }))
}

/// What is wrong when a store (`store`, holding revisions up to `latest`) meets its record;
/// `None` when the record vouches for it.
pub fn disagreement(store: &str, latest: u64, record: &Record) -> Option<String> {
    if record.store != store {
        return Some(format!(
            "the database is not the store its record names (store {}, its record says {}): \
             it was replaced or made afresh",
            short(store),
            short(&record.store)
        ));
    }
    if latest < record.revision {
        return Some(format!(
            "the database holds revisions up to {latest}, but revision {} was committed to it: \
             it lost revisions (emptied or truncated on disk)",
            record.revision
        ));
    }
    None
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}
