//! The bottom of the dataplane layer: the pin directory's layout, the pinned maps' expected
//! layouts, opening pinned maps, and the key conversions every map writer shares.

use std::{
    fs, io,
    net::{Ipv4Addr, Ipv6Addr},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use aya::maps::{Map, MapData, MapError, lpm_trie::Key};
use ipnet::{Ipv4Net, Ipv6Net};
use nix::{
    errno::Errno,
    fcntl::{Flock, FlockArg},
};
use sluice_common::{
    Counter, EcmpGroup, Iface, IfaceCacheEntry, IfaceKey, MAX_SLOTS, NextHop, REASON_SLOTS, Route,
    dir24, names, trie6,
};

use crate::{
    error::{DataplaneError, Result},
    shared_mem::MappedArray,
};

/// Where the daemon pins its maps and links unless told otherwise.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/sluice";

/// The layout of a pin directory.
#[derive(Clone, Debug)]
pub struct PinDir {
    root: PathBuf,
}

impl PinDir {
    /// A pin directory rooted at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where map `name` is pinned.
    pub fn map(&self, name: &str) -> PathBuf {
        self.root.join("maps").join(name)
    }

    /// Where the XDP link of `iface` is pinned.
    pub fn link(&self, iface: &str) -> PathBuf {
        self.links_dir().join(iface)
    }

    fn links_dir(&self) -> PathBuf {
        self.root.join("links")
    }

    /// Interfaces with a pinned XDP link.
    pub fn pinned_links(&self) -> Vec<String> {
        fs::read_dir(self.links_dir())
            .map(|d| d.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect())
            .unwrap_or_default()
    }

    /// Creates the directories, checking they are on bpffs.
    pub(crate) fn create(&self) -> Result<()> {
        for dir in [self.root.join("maps"), self.links_dir()] {
            fs::create_dir_all(&dir).map_err(|source| DataplaneError::Io {
                what: "creating",
                path: dir.clone(),
                source,
            })?;
        }
        let stat = nix::sys::statfs::statfs(&self.root).map_err(|e| DataplaneError::Io {
            what: "statfs",
            path: self.root.clone(),
            source: e.into(),
        })?;
        if stat.filesystem_type() != nix::sys::statfs::BPF_FS_MAGIC {
            return Err(DataplaneError::NoBpffs(self.root.clone()));
        }
        Ok(())
    }
}

/// A pin directory held by one process: an exclusive `flock(2)` on the directory itself, released
/// when this is dropped or the process ends (also by `SIGKILL`, so a killed daemon never leaves
/// it held). Two daemons on one pin directory would each rewrite the lookup tables from their own
/// view and misforward; the second is refused instead.
#[derive(Debug)]
pub struct PinLock {
    _dir: Flock<fs::File>,
}

impl PinDir {
    /// Takes the pin directory for this process, creating its root if missing, or fails at once
    /// with [`DataplaneError::InUse`] naming the holder.
    pub fn lock(&self) -> Result<PinLock> {
        self.lock_waiting(Duration::ZERO)
    }

    /// Like [`PinDir::lock`], retrying for up to `wait` while another process holds it (one
    /// that is stopping releases it when it exits).
    pub fn lock_waiting(&self, wait: Duration) -> Result<PinLock> {
        let io_err = |what, source| DataplaneError::Io { what, path: self.root.clone(), source };
        fs::create_dir_all(&self.root).map_err(|e| io_err("creating", e))?;
        let mut dir = fs::File::open(&self.root).map_err(|e| io_err("opening", e))?;
        let deadline = Instant::now() + wait;
        loop {
            match Flock::lock(dir, FlockArg::LockExclusiveNonblock) {
                Ok(held) => return Ok(PinLock { _dir: held }),
                Err((file, Errno::EWOULDBLOCK)) if Instant::now() < deadline => {
                    dir = file;
                    thread::sleep(Duration::from_millis(20));
                }
                Err((file, Errno::EWOULDBLOCK)) => {
                    let holder = file.metadata().ok().and_then(|m| lock_holder(&m));
                    return Err(DataplaneError::InUse { pin: self.root.clone(), holder });
                }
                Err((_, e)) => return Err(io_err("locking", io::Error::from(e))),
            }
        }
    }
}

/// What a pin directory held before a start: the files and directories under it, so that a start
/// that fails can remove what it pinned ([`PinDir::undo_since`]) and leave the system as it found
/// it.
#[derive(Debug, Clone, Default)]
pub struct PinSnapshot {
    existed: bool,
    paths: std::collections::BTreeSet<PathBuf>,
}

impl PinDir {
    /// Checks, before anything is loaded or pinned, that the (locked) pin directory can take
    /// the dataplane: on bpffs, and holding only maps of this build's layouts.
    pub fn check_usable(&self) -> Result<()> {
        let stat = nix::sys::statfs::statfs(&self.root).map_err(|e| DataplaneError::Io {
            what: "statfs",
            path: self.root.clone(),
            source: e.into(),
        })?;
        if stat.filesystem_type() != nix::sys::statfs::BPF_FS_MAGIC {
            return Err(DataplaneError::NoBpffs(self.root.clone()));
        }
        check_pinned_layout(self)
    }

    /// What is under the pin directory now (nothing when it does not exist).
    pub fn snapshot(&self) -> PinSnapshot {
        let mut paths = std::collections::BTreeSet::new();
        let mut pending = vec![self.root.clone()];
        while let Some(dir) = pending.pop() {
            let Ok(entries) = fs::read_dir(&dir) else { continue };
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    pending.push(entry.path());
                }
                paths.insert(entry.path());
            }
        }
        PinSnapshot { existed: self.root.exists(), paths }
    }

    /// Removes what was pinned under the directory since `before`: links are detached first
    /// (`BPF_LINK_DETACH`, so no program stays attached), then maps and directories go, and the
    /// directory itself when it did not exist. Call after the dataplane that pinned them is
    /// dropped. Returns what was removed.
    pub fn undo_since(&self, before: &PinSnapshot) -> Vec<PathBuf> {
        let now = self.snapshot();
        let mut new: Vec<PathBuf> = now.paths.difference(&before.paths).cloned().collect();
        // Deepest first: files before the directories that hold them.
        new.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        let links = self.links_dir();
        let mut removed = Vec::new();
        for path in new {
            let gone = if path.is_dir() {
                fs::remove_dir(&path)
            } else if path.starts_with(&links) {
                crate::link::detach_pinned(&path)
            } else {
                fs::remove_file(&path)
            };
            if gone.is_ok() {
                removed.push(path);
            }
        }
        if !before.existed && fs::remove_dir(&self.root).is_ok() {
            removed.push(self.root.clone());
        }
        removed
    }
}

/// The process holding a `flock` on the file `meta` describes, from `/proc/locks` (whose lines
/// name the device as `MAJOR:MINOR` in hex and the inode in decimal).
fn lock_holder(meta: &fs::Metadata) -> Option<u32> {
    let dev = meta.dev();
    let id = format!("{:02x}:{:02x}:{}", libc::major(dev), libc::minor(dev), meta.ino());
    let locks = fs::read_to_string("/proc/locks").ok()?;
    locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().filter(|f| *f != "->").collect();
        (fields.get(1) == Some(&"FLOCK") && fields.get(5) == Some(&id.as_str()))
            .then(|| fields.get(4)?.parse().ok())
            .flatten()
    })
}

/// Key size, value size and capacity of every map, as this build defines them. The kernel does
/// not check a pinned map against the object that reuses it, so a map pinned by a build with
/// other types would be read and written with the wrong layout.
pub(crate) fn expected_layout(name: &str) -> Option<(u32, u32, u32)> {
    use sluice_common::{
        Counter, MAX_ECMP_GROUPS, MAX_IFACES, MAX_NEXTHOPS, MAX_ROUTES_V4, MAX_ROUTES_V6,
        NEIGH_PENDING_ENTRIES, NEIGH_RING_BYTES, NeighRequest, hooks,
    };
    let size = |n: usize| n as u32;
    Some(match name {
        names::ROUTES_V4 => (size(4 + 4), size(size_of::<Route>()), MAX_ROUTES_V4),
        names::ROUTES_V6 => (size(4 + 16), size(size_of::<Route>()), MAX_ROUTES_V6),
        names::NEXTHOPS => (4, size(size_of::<NextHop>()), MAX_NEXTHOPS),
        names::ECMP_GROUPS => (4, size(size_of::<EcmpGroup>()), MAX_ECMP_GROUPS),
        names::IFACES => (size(size_of::<IfaceKey>()), size(size_of::<Iface>()), MAX_IFACES),
        names::FILTER_SRC_V4 | names::FILTER_DST_V4 => {
            (size(4 + 4), size(size_of::<hooks::FilterRule>()), hooks::MAX_FILTER_RULES)
        }
        names::FILTER_SRC_V6 | names::FILTER_DST_V6 => {
            (size(4 + 16), size(size_of::<hooks::FilterRule>()), hooks::MAX_FILTER_RULES)
        }
        names::RATE_V4 => (size(4 + 4), size(size_of::<hooks::RateRule>()), hooks::MAX_RATE_RULES),
        names::RATE_V6 => (size(4 + 16), size(size_of::<hooks::RateRule>()), hooks::MAX_RATE_RULES),
        names::STEER_V4 => {
            (size(4 + 4), size(size_of::<hooks::SteerRule>()), hooks::MAX_STEER_RULES)
        }
        names::STEER_V6 => {
            (size(4 + 16), size(size_of::<hooks::SteerRule>()), hooks::MAX_STEER_RULES)
        }
        names::RATE_STATE => (
            size(size_of::<hooks::RateKey>()),
            size(size_of::<hooks::Bucket>()),
            hooks::RATE_STATE_ENTRIES,
        ),
        names::RULE_COUNTERS => (4, size(size_of::<Counter>()), hooks::MAX_RULE_IDS),
        names::HOOK_CONFIG => (4, size(size_of::<hooks::HookConfig>()), 1),
        names::HOOK_SUMMARY => (4, size(size_of::<hooks::Summary>()), hooks::summary::TABLES),
        names::SAMPLES => (0, 0, hooks::SAMPLE_RING_BYTES),
        names::TALKERS => (
            size(size_of::<sluice_common::TalkerKey>()),
            size(size_of::<Counter>()),
            sluice_common::TALKER_ENTRIES,
        ),
        names::IFACE_CACHE => {
            (4, size(size_of::<IfaceCacheEntry>()), sluice_common::IFACE_CACHE_ENTRIES)
        }
        names::COUNTERS => (4, size(size_of::<Counter>()), MAX_SLOTS * REASON_SLOTS),
        names::NEIGH_REQUESTS => (0, 0, NEIGH_RING_BYTES),
        names::NEIGH_PENDING => (size(size_of::<NeighRequest>()), 8, NEIGH_PENDING_ENTRIES),
        names::TRIE_V6 => (4, size(size_of::<dir24::Chunk>()), trie6::ENTRIES / dir24::CHUNK),
        names::TBL24_V4 => {
            (4, size(size_of::<dir24::Chunk>()), dir24::TBL24_MAP_WORDS / dir24::CHUNK)
        }
        names::DIR8_V4 => (
            4,
            size(size_of::<dir24::Chunk>()),
            dir24::MAX_GROUPS * dir24::GROUP_ENTRIES / dir24::CHUNK,
        ),
        _ => return None,
    })
}

pub(crate) fn check_pinned_layout(pin: &PinDir) -> Result<()> {
    for name in names::ALL_MAPS {
        let path = pin.map(name);
        let (Some(expected), true) = (expected_layout(name), path.exists()) else { continue };
        let info = aya::maps::MapInfo::from_pin(&path).map_err(|e| DataplaneError::Map(name, e))?;
        let found = (info.key_size(), info.value_size(), info.max_entries());
        if found != expected {
            return Err(DataplaneError::Incompatible {
                map: name,
                pin: pin.root().to_owned(),
                found,
                expected,
            });
        }
    }
    Ok(())
}

pub(crate) const READ_ONLY: &str = "maps opened read-only";

pub fn ignore_missing(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

pub(crate) fn key_v4(net: Ipv4Net) -> Key<[u8; 4]> {
    Key::new(u32::from(net.prefix_len()), net.network().octets())
}

pub(crate) fn key_v6(net: Ipv6Net) -> Key<[u8; 16]> {
    Key::new(u32::from(net.prefix_len()), net.network().octets())
}

pub fn net_v4(k: &Key<[u8; 4]>) -> Ipv4Net {
    // The kernel's LPM trie rejects prefix lengths over the key size, so this cannot fail.
    Ipv4Net::new(Ipv4Addr::from(k.data()), k.prefix_len().min(32) as u8).unwrap_or_default()
}

pub fn net_v6(k: &Key<[u8; 16]>) -> Ipv6Net {
    Ipv6Net::new(Ipv6Addr::from(k.data()), k.prefix_len().min(128) as u8).unwrap_or_default()
}

/// Maps a `BPF_F_MMAPABLE` array of `u32` for writing.
pub(crate) fn map_shared(map: Map, name: &'static str, entries: u32) -> Result<MappedArray> {
    let Map::Array(data) = map else {
        return Err(DataplaneError::Map(name, MapError::InvalidName { name: name.to_owned() }));
    };
    MappedArray::map(data.fd(), entries as usize).map_err(|source| DataplaneError::Io {
        what: "mapping",
        path: PathBuf::from(name),
        source,
    })
}

/// The lookup tables (IPv4 first and second level, IPv6 trie), mapped.
pub(crate) fn map_lookup_tables(
    get: &mut impl FnMut(&'static str) -> Result<Map>,
) -> Result<(MappedArray, MappedArray, MappedArray)> {
    let tbl24 = map_shared(get(names::TBL24_V4)?, names::TBL24_V4, dir24::TBL24_MAP_WORDS)?;
    let tbl8 =
        map_shared(get(names::DIR8_V4)?, names::DIR8_V4, dir24::MAX_GROUPS * dir24::GROUP_ENTRIES)?;
    let trie = map_shared(get(names::TRIE_V6)?, names::TRIE_V6, trie6::ENTRIES)?;
    Ok((tbl24, tbl8, trie))
}

pub(crate) fn open_pinned(pin: &PinDir, name: &'static str) -> Result<Map> {
    let path = pin.map(name);
    if !path.exists() {
        return Err(DataplaneError::NotPinned(pin.root().to_owned()));
    }
    let data = MapData::from_pin(&path).map_err(|e| DataplaneError::Map(name, e))?;
    Map::from_map_data(data).map_err(|e| DataplaneError::Map(name, e))
}

/// The per-CPU values of a counter, added up.
pub fn sum_counters<'a>(values: impl IntoIterator<Item = &'a Counter>) -> Counter {
    values.into_iter().fold(Counter::default(), |mut t, c| {
        t.packets += c.packets;
        t.bytes += c.bytes;
        t
    })
}

/// A pinned per-CPU hash map of the dataplane (`name` in `pin`), opened for reading.
pub fn open_per_cpu_hash<K: aya::Pod, V: aya::Pod>(
    pin: &PinDir,
    name: &'static str,
) -> Result<aya::maps::PerCpuHashMap<MapData, K, V>> {
    let map_err = |e| DataplaneError::Map(name, e);
    let data = MapData::from_pin(pin.map(name)).map_err(map_err)?;
    aya::maps::PerCpuHashMap::try_from(Map::from_map_data(data).map_err(map_err)?).map_err(map_err)
}

/// Takes map `name` from `get` as its typed handle.
pub(crate) fn typed<T: TryFrom<Map, Error = MapError>>(
    get: &mut impl FnMut(&'static str) -> Result<Map>,
    name: &'static str,
) -> Result<T> {
    T::try_from(get(name)?).map_err(|e| DataplaneError::Map(name, e))
}

/// Takes map `name` out of a loaded object.
pub(crate) fn take_map(ebpf: &mut aya::Ebpf, name: &'static str) -> Result<Map> {
    ebpf.take_map(name)
        .ok_or(DataplaneError::Map(name, MapError::InvalidName { name: name.to_owned() }))
}
