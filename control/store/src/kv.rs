//! The plugins' key-value stores on disk: one append-only file per plugin
//! (`DIR/NAME.kv`), compacted when it grows past twice what it holds, deleted when the plugin
//! is removed for good.
//!
//! - A write appends one record (`kv_set` costs the size of the write) and keeps a running
//!   total of the bytes the plugin holds, so the quota check costs nothing more.
//! - Once the file is over twice its live records (plus [`COMPACT_SLACK`]), it is rewritten
//!   with the live records only: a new file written whole, synced, then renamed over the old
//!   one. A plugin's file so stays under `2 × (quota + RECORD_OVERHEAD × keys) + COMPACT_SLACK`
//!   plus one record, whatever it writes (ADR 0046).
//! - A record is checked when the file is read: a torn or corrupt tail (a crash mid-write) is
//!   cut off, and what was before it is kept.
//! - Two instances of one plugin (a new version starting while the old one still runs) share
//!   one open store.
//! - A store directory of an older version (one sled database, a tree `kv/NAME` per plugin)
//!   is moved into files when opened.

use std::{
    collections::{BTreeMap, HashMap},
    fs::{self, File, OpenOptions},
    io::{self, Read as _, Write as _},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError, Weak},
};

/// Bytes a record takes besides its key and value: lengths and checksum.
pub const RECORD_OVERHEAD: usize = 12;
/// A file is compacted once it is over twice its live records plus this.
pub const COMPACT_SLACK: u64 = 64 << 10;
const MAGIC: &[u8; 8] = b"SLKV\x00\x00\x00\x01";
const SUFFIX: &str = "kv";

/// Why a key-value store could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// The write would take the plugin over its quota; nothing was written.
    #[error("over the quota of {quota} bytes")]
    Quota {
        /// The quota, bytes of keys and values.
        quota: usize,
    },
    /// Not a name a plugin can have.
    #[error("{0:?} is not a plugin name")]
    Name(String),
    /// The file system failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The older store could not be read.
    #[error("moving the older store: {0}")]
    Migrate(String),
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> KvError + 'a {
    move |source| KvError::Io { what, path: path.to_owned(), source }
}

/// The directory of the plugins' stores; clones share the open stores.
#[derive(Clone, Debug)]
pub struct KvDir {
    path: PathBuf,
    open: Arc<Mutex<HashMap<String, Weak<Mutex<KvStore>>>>>,
}

impl KvDir {
    /// Opens (creating it if need be) the directory, moving an older sled store into files.
    pub fn open(path: &Path) -> Result<Self, KvError> {
        fs::create_dir_all(path).map_err(io_err("creating", path))?;
        migrate_sled(path)?;
        Ok(Self { path: path.to_owned(), open: Arc::default() })
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn file_of(&self, name: &str) -> Result<PathBuf, KvError> {
        if name.is_empty()
            || name.len() > 64
            || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(KvError::Name(name.to_owned()));
        }
        Ok(self.path.join(format!("{name}.{SUFFIX}")))
    }

    /// The store of plugin `name`, opened (read whole) unless it is open already.
    pub fn store(&self, name: &str) -> Result<Arc<Mutex<KvStore>>, KvError> {
        let path = self.file_of(name)?;
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(s) = open.get(name).and_then(Weak::upgrade) {
            return Ok(s);
        }
        let s = Arc::new(Mutex::new(KvStore::open_file(&path)?));
        open.retain(|_, w| w.strong_count() > 0);
        open.insert(name.to_owned(), Arc::downgrade(&s));
        Ok(s)
    }

    /// Deletes plugin `name`'s store (an instance still holding it finds it empty).
    pub fn remove(&self, name: &str) -> Result<(), KvError> {
        let path = self.file_of(name)?;
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(s) = open.get(name).and_then(Weak::upgrade) {
            let mut s = s.lock().unwrap_or_else(PoisonError::into_inner);
            s.map.clear();
            s.live = 0;
            s.file = None;
        }
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("removing", &path)(e)),
        }
    }

    /// Bytes of all the stores' files.
    pub fn disk_bytes(&self) -> u64 {
        fs::read_dir(&self.path)
            .map_or(0, |d| d.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum())
    }
}

/// One plugin's keys and values: in memory, and in its file when it has one.
#[derive(Debug, Default)]
pub struct KvStore {
    map: BTreeMap<String, Vec<u8>>,
    /// Bytes of keys and values held (what the quota counts).
    live: usize,
    file: Option<LogFile>,
}

#[derive(Debug)]
struct LogFile {
    path: PathBuf,
    file: File,
    len: u64,
}

impl KvStore {
    /// A store in memory only, for an instance's life.
    pub fn memory() -> Self {
        Self::default()
    }

    fn open_file(path: &Path) -> Result<Self, KvError> {
        let mut s = Self::default();
        let mut bytes = Vec::new();
        match File::open(path) {
            Ok(mut f) => {
                f.read_to_end(&mut bytes).map_err(io_err("reading", path))?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("opening", path)(e)),
        }
        let mut at = MAGIC.len();
        if bytes.len() >= at && bytes[..at] == *MAGIC {
            while let Some((key, value, next)) = read_record(&bytes, at) {
                s.put(key, value);
                at = next;
            }
        } else {
            at = 0;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io_err("opening", path))?;
        s.file = Some(LogFile { path: path.to_owned(), file, len: 0 });
        if at == 0 || at < bytes.len() {
            // New, of another kind, or with a torn tail: keep what was read, written anew.
            s.compact()?;
        } else if let Some(f) = &mut s.file {
            f.len = at as u64;
        }
        Ok(s)
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&[u8]> {
        self.map.get(key).map(Vec::as_slice)
    }

    /// Bytes of keys and values held.
    pub fn used(&self) -> usize {
        self.live
    }

    /// Bytes of its file (0 in memory).
    pub fn disk_bytes(&self) -> u64 {
        self.file.as_ref().map_or(0, |f| f.len)
    }

    /// Sets `key` to `value` unless that would hold more than `quota` bytes of keys and
    /// values; costs the size of the write (and now and then a compaction, of at most twice
    /// the live records).
    pub fn set(&mut self, key: String, value: Vec<u8>, quota: usize) -> Result<(), KvError> {
        let old = self.map.get(&key).map_or(0, |v| key.len() + v.len());
        let after = (self.live - old).saturating_add(key.len()).saturating_add(value.len());
        if after > quota {
            return Err(KvError::Quota { quota });
        }
        if let Some(f) = &mut self.file {
            let record = encode_record(&key, &value);
            f.file.write_all(&record).map_err(io_err("writing", &f.path))?;
            f.len += record.len() as u64;
        }
        self.put(key, value);
        let live_disk = self.live_disk();
        if self.file.as_ref().is_some_and(|f| f.len > 2 * live_disk + COMPACT_SLACK) {
            self.compact()?;
        }
        Ok(())
    }

    fn put(&mut self, key: String, value: Vec<u8>) {
        let (klen, vlen) = (key.len(), value.len());
        match self.map.insert(key, value) {
            Some(old) => self.live = self.live - old.len() + vlen,
            None => self.live += klen + vlen,
        }
    }

    /// Bytes the live records take in a file.
    fn live_disk(&self) -> u64 {
        (MAGIC.len() + self.live + RECORD_OVERHEAD * self.map.len()) as u64
    }

    /// Writes the live records to a new file, synced, and renames it over the old one.
    fn compact(&mut self) -> Result<(), KvError> {
        if self.file.is_none() {
            return Ok(());
        }
        let mut out = Vec::with_capacity(self.live_disk() as usize);
        out.extend_from_slice(MAGIC);
        for (k, v) in &self.map {
            out.extend_from_slice(&encode_record(k, v));
        }
        let Some(f) = &mut self.file else { return Ok(()) };
        let tmp = f.path.with_extension("kv.new");
        let mut new = File::create(&tmp).map_err(io_err("creating", &tmp))?;
        new.write_all(&out).and_then(|()| new.sync_all()).map_err(io_err("writing", &tmp))?;
        fs::rename(&tmp, &f.path).map_err(io_err("renaming", &tmp))?;
        if let Some(dir) = f.path.parent()
            && let Ok(d) = File::open(dir)
        {
            let _ = d.sync_all();
        }
        let file =
            OpenOptions::new().append(true).open(&f.path).map_err(io_err("opening", &f.path))?;
        f.file = file;
        f.len = out.len() as u64;
        Ok(())
    }
}

/// A record: key length and value length (u32, little-endian), key, value, and a checksum
/// (FNV-1a, 32 bits, little-endian) of all that.
fn encode_record(key: &str, value: &[u8]) -> Vec<u8> {
    let mut r = Vec::with_capacity(RECORD_OVERHEAD + key.len() + value.len());
    r.extend_from_slice(&(key.len() as u32).to_le_bytes());
    r.extend_from_slice(&(value.len() as u32).to_le_bytes());
    r.extend_from_slice(key.as_bytes());
    r.extend_from_slice(value);
    let sum = fnv1a(&r);
    r.extend_from_slice(&sum.to_le_bytes());
    r
}

/// The record at `at`, and where the next begins; `None` at the end or at a torn or corrupt
/// record.
fn read_record(bytes: &[u8], at: usize) -> Option<(String, Vec<u8>, usize)> {
    let word = |i: usize| -> Option<usize> {
        let b: [u8; 4] = bytes.get(i..i + 4)?.try_into().ok()?;
        Some(u32::from_le_bytes(b) as usize)
    };
    let (klen, vlen) = (word(at)?, word(at + 4)?);
    let body_end = (at + 8).checked_add(klen)?.checked_add(vlen)?;
    let sum = word(body_end)?;
    if fnv1a(bytes.get(at..body_end)?) as usize != sum {
        return None;
    }
    let key = std::str::from_utf8(&bytes[at + 8..at + 8 + klen]).ok()?.to_owned();
    Some((key, bytes[at + 8 + klen..body_end].to_vec(), body_end + 4))
}

fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5, |h, b| (h ^ u32::from(*b)).wrapping_mul(0x0100_0193))
}

/// Moves a store of an older version (a sled database in `dir`, a tree `kv/NAME` per plugin)
/// into files, then deletes the database.
fn migrate_sled(dir: &Path) -> Result<(), KvError> {
    if !dir.join("conf").exists() || !dir.join("db").exists() {
        return Ok(());
    }
    let db = sled::Config::new().path(dir).open().map_err(|e| KvError::Migrate(e.to_string()))?;
    for tree in db.tree_names() {
        let Some(name) = tree.strip_prefix(b"kv/") else { continue };
        let Ok(name) = std::str::from_utf8(name) else { continue };
        let tree = db.open_tree(&tree).map_err(|e| KvError::Migrate(e.to_string()))?;
        let kv = KvDir { path: dir.to_owned(), open: Arc::default() };
        let path = kv.file_of(name)?;
        let mut store = KvStore::open_file(&path)?;
        for item in &tree {
            let (k, v) = item.map_err(|e| KvError::Migrate(e.to_string()))?;
            if let Ok(k) = String::from_utf8(k.to_vec()) {
                store.put(k, v.to_vec());
            }
        }
        store.compact()?;
    }
    drop(db);
    for entry in fs::read_dir(dir).map_err(io_err("reading", dir))?.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let path = entry.path();
        if name == "conf" || name == "db" || name.starts_with("snap.") {
            fs::remove_file(&path).map_err(io_err("removing", &path))?;
        } else if name == "blobs" {
            fs::remove_dir_all(&path).map_err(io_err("removing", &path))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("sluice-kv-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        p
    }

    #[test]
    fn values_outlive_the_store_and_the_quota_counts_keys_and_values() {
        let dir = scratch("outlive");
        let kv = KvDir::open(&dir).unwrap();
        {
            let s = kv.store("a").unwrap();
            let mut s = s.lock().unwrap();
            s.set("k".into(), vec![1; 99], 100).unwrap();
            assert!(matches!(s.set("k".into(), vec![1; 100], 100), Err(KvError::Quota { .. })));
            assert_eq!(s.get("k"), Some(&[1u8; 99][..]), "a refused write changes nothing");
            s.set("k".into(), vec![2; 10], 100).unwrap();
            s.set("j".into(), vec![3; 5], 100).unwrap();
            assert_eq!(s.used(), 17);
        }
        let s = kv.store("a").unwrap();
        let s = s.lock().unwrap();
        assert_eq!(s.get("k"), Some(&[2u8; 10][..]));
        assert_eq!(s.get("j"), Some(&[3u8; 5][..]));
        assert_eq!(s.used(), 17);
        drop(s);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rewriting_one_value_keeps_the_file_bounded() {
        let dir = scratch("bounded");
        let kv = KvDir::open(&dir).unwrap();
        let s = kv.store("loop").unwrap();
        let mut s = s.lock().unwrap();
        let quota = 1 << 20;
        let mut largest = 0;
        for i in 0..1000u32 {
            s.set("v".into(), vec![i as u8; 1000 << 10], quota).unwrap();
            largest = largest.max(fs::metadata(dir.join("loop.kv")).unwrap().len());
        }
        let bound = 2 * (quota as u64 + 64) + COMPACT_SLACK + (1000 << 10) + 64;
        println!("1000 rewrites of 1000 KiB: largest file {largest} bytes (bound {bound})");
        assert!(largest <= bound, "{largest} > {bound}");
        drop(s);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_torn_tail_is_cut_and_the_rest_kept() {
        let dir = scratch("torn");
        let kv = KvDir::open(&dir).unwrap();
        {
            let s = kv.store("t").unwrap();
            let mut s = s.lock().unwrap();
            s.set("a".into(), b"one".to_vec(), 100).unwrap();
            s.set("b".into(), b"two".to_vec(), 100).unwrap();
        }
        let path = dir.join("t.kv");
        let len = fs::metadata(&path).unwrap().len();
        OpenOptions::new().write(true).open(&path).unwrap().set_len(len - 2).unwrap();
        let s = kv.store("t").unwrap();
        let mut s = s.lock().unwrap();
        assert_eq!(s.get("a"), Some(&b"one"[..]));
        assert_eq!(s.get("b"), None);
        s.set("c".into(), b"three".to_vec(), 100).unwrap();
        drop(s);
        let s = kv.store("t").unwrap();
        assert_eq!(s.lock().unwrap().get("c"), Some(&b"three"[..]), "written after the cut");
        drop(s);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn garbage_is_not_read_as_records() {
        let dir = scratch("garbage");
        fs::create_dir_all(&dir).unwrap();
        let mut junk = MAGIC.to_vec();
        junk.extend((0..10_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8));
        fs::write(dir.join("g.kv"), &junk).unwrap();
        let kv = KvDir::open(&dir).unwrap();
        let s = kv.store("g").unwrap();
        assert_eq!(s.lock().unwrap().used(), 0);
        drop(s);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn removing_deletes_the_file_and_empties_an_open_store() {
        let dir = scratch("remove");
        let kv = KvDir::open(&dir).unwrap();
        let s = kv.store("r").unwrap();
        s.lock().unwrap().set("k".into(), vec![0; 1000], 2000).unwrap();
        kv.remove("r").unwrap();
        assert!(!dir.join("r.kv").exists());
        assert_eq!(s.lock().unwrap().get("k"), None);
        assert!(matches!(kv.store("../x"), Err(KvError::Name(_))));
        drop(s);
        assert_eq!(kv.disk_bytes(), 0);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_older_sled_store_is_moved_into_files() {
        let dir = scratch("migrate");
        {
            let db = sled::Config::new().path(&dir).open().unwrap();
            db.open_tree("kv/old").unwrap().insert("k", &b"v"[..]).unwrap();
            db.flush().unwrap();
        }
        let kv = KvDir::open(&dir).unwrap();
        assert!(!dir.join("db").exists() && !dir.join("conf").exists());
        let s = kv.store("old").unwrap();
        assert_eq!(s.lock().unwrap().get("k"), Some(&b"v"[..]));
        drop(s);
        fs::remove_dir_all(&dir).unwrap();
    }
}
