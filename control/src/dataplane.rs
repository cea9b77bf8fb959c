//! Loading, pinning, attaching and reading the XDP dataplane.
//!
//! Maps are pinned under `PIN_DIR/maps/NAME` and XDP links under `PIN_DIR/links/IFNAME`, so
//! forwarding goes on while the daemon is stopped, and a new daemon adopts the maps (loading the
//! program reuses pinned maps) and the links (it swaps its program into them with
//! `BPF_LINK_UPDATE`) without a moment of flushed state.

use std::{
    collections::BTreeMap,
    fs, io,
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::AsFd as _,
    path::{Path, PathBuf},
    time::Instant,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray, RingBuf, lpm_trie::Key,
        xdp::DevMapHash,
    },
    programs::{
        ProgramError, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
    },
};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use sluice_common::{
    Counter, EcmpGroup, Iface, IfaceCacheEntry, IfaceKey, MAX_SLOTS, NextHop, REASON_SLOTS, Reason,
    Route, RouteAction, XdpAttachMode, dir24, iface_cache_index, iface_cache_tag, names, trie6,
};
use tracing::{debug, info, warn};

use crate::{
    batch,
    dir24::{self as lookup, Dir24},
    fib::{FibState, Op},
    shared_mem::MappedArray,
    trie6::Trie6,
};

/// Where the daemon pins its maps and links unless told otherwise.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/sluice";

/// Errors of the dataplane layer.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// The pin directory is not on a BPF filesystem.
    #[error(
        "{0} is not on a BPF filesystem; mount one with `mount -t bpf bpf /sys/fs/bpf` (or run scripts/setup.sh)"
    )]
    NoBpffs(PathBuf),
    /// Nothing is pinned where the dataplane was expected.
    #[error(
        "no Sluice dataplane is pinned at {0} (is the daemon started, with the same --pin-dir?)"
    )]
    NotPinned(PathBuf),
    /// A filesystem operation failed.
    #[error("{what} {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Loading the eBPF object failed (verifier, map creation, ...).
    #[error("loading the XDP program")]
    Load(#[source] Box<aya::EbpfError>),
    /// A program operation failed.
    #[error("{0}")]
    Program(String, #[source] ProgramError),
    /// A map operation failed.
    #[error("map {0}")]
    Map(&'static str, #[source] MapError),
    /// A batched write to the route record failed.
    #[error("batched write to map {0}")]
    Record(&'static str, #[source] io::Error),
    /// Maps pinned by another version of Sluice have a different layout.
    #[error(
        "the map {map} pinned under {pin} has key/value/entries {found:?}, this version needs {expected:?}; \
         it was pinned by an incompatible version: `sluice detach` (forwarding stops) and start again"
    )]
    Incompatible {
        /// Map name.
        map: &'static str,
        /// Pin directory.
        pin: PathBuf,
        /// Key size, value size and capacity found.
        found: (u32, u32, u32),
        /// What this build needs.
        expected: (u32, u32, u32),
    },
    /// The IPv4 lookup tables could not take the routes.
    #[error("lookup tables")]
    Lookup(#[source] lookup::Dir24Error),
    /// The interface does not exist.
    #[error("no interface named {0:?}")]
    NoSuchInterface(String),
    /// Attaching XDP failed in every allowed mode.
    #[error("attaching XDP to {iface} failed: {reason}")]
    Attach {
        /// Interface.
        iface: String,
        /// Why.
        reason: String,
    },
}

type Result<T, E = DataplaneError> = std::result::Result<T, E>;

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
    fn create(&self) -> Result<()> {
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

/// How to attach XDP to an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ModeRequest {
    /// Native mode, falling back to generic where the driver lacks it.
    #[default]
    Auto,
    /// Native (driver) mode only.
    Native,
    /// Generic (skb) mode only.
    Generic,
}

/// The loaded dataplane: the program and typed handles to its maps.
#[expect(missing_debug_implementations, reason = "aya's map handles are not Debug")]
pub struct Dataplane {
    ebpf: Ebpf,
    pin: PinDir,
    maps: Maps,
    neigh_requests: Option<RingBuf<MapData>>,
    forwarding_written: Option<Instant>,
}

/// Typed handles to the maps the control plane reads and writes: taken from a loaded object by
/// the daemon, or opened from their pins by `sluice stats`, `sluice routes` and the tests.
#[expect(missing_debug_implementations, reason = "aya's map handles are not Debug")]
pub struct Maps {
    routes_v4: LpmTrie<MapData, [u8; 4], Route>,
    routes_v6: LpmTrie<MapData, [u8; 16], Route>,
    nexthops: Array<MapData, NextHop>,
    groups: Array<MapData, EcmpGroup>,
    ifaces: HashMap<MapData, IfaceKey, Iface>,
    iface_cache: Array<MapData, IfaceCacheEntry>,
    devmap: DevMapHash<MapData>,
    counters: PerCpuArray<MapData, Counter>,
    /// The IPv4 lookup tables, mapped for writing; `None` for read-only access.
    dir24: Option<Dir24<MappedArray>>,
    /// The IPv6 lookup trie, mapped for writing; `None` for read-only access.
    trie6: Option<Trie6<MappedArray>>,
    /// The tables mapped but not adopted yet: adoption waits for the routes they must hold.
    lookup_cells: Option<(MappedArray, MappedArray, MappedArray)>,
    /// Record writes deferred to the end of a batch, after the forwarding tables.
    pending_record: Vec<(IpNet, Option<Route>)>,
    /// Writes large record batches in the background, once one came.
    record_writer: Option<RecordWriter>,
}

fn typed<T: TryFrom<Map, Error = MapError>>(
    get: &mut impl FnMut(&'static str) -> Result<Map>,
    name: &'static str,
) -> Result<T> {
    T::try_from(get(name)?).map_err(|e| DataplaneError::Map(name, e))
}

fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<Map> {
    ebpf.take_map(name)
        .ok_or(DataplaneError::Map(name, MapError::InvalidName { name: name.to_owned() }))
}

impl Dataplane {
    /// Loads the program, reusing the maps pinned under `pin` or creating and pinning them.
    pub fn load(pin: &PinDir) -> Result<Self> {
        pin.create()?;
        check_pinned_layout(pin)?;
        let paths: Vec<(&str, PathBuf)> =
            names::ALL_MAPS.iter().map(|n| (*n, pin.map(n))).collect();
        let mut loader = EbpfLoader::new();
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        crate::xmit::configure_loader(&mut loader, pin);
        let mut ebpf =
            loader.load(crate::EBPF_OBJECT).map_err(|e| DataplaneError::Load(Box::new(e)))?;
        let program: &mut Xdp = ebpf
            .program_mut(names::PROGRAM)
            .expect("the object defines the XDP program")
            .try_into()
            .map_err(|e| DataplaneError::Program("program type".into(), e))?;
        program
            .load()
            .map_err(|e| DataplaneError::Program("verifying the XDP program".into(), e))?;
        crate::xmit::attach(&mut ebpf, pin);
        let maps = Maps::take(&mut ebpf)?;
        let neigh_requests = RingBuf::try_from(take_map(&mut ebpf, names::NEIGH_REQUESTS)?)
            .map_err(|e| DataplaneError::Map(names::NEIGH_REQUESTS, e))?;
        Ok(Self {
            ebpf,
            pin: pin.clone(),
            maps,
            neigh_requests: Some(neigh_requests),
            forwarding_written: None,
        })
    }

    fn program(&mut self) -> &mut Xdp {
        self.ebpf
            .program_mut(names::PROGRAM)
            .and_then(|p| p.try_into().ok())
            .expect("loaded in Dataplane::load")
    }

    /// Attaches the program to `iface` (or, when a link is pinned for it, swaps this program into
    /// that link atomically) and pins the link. Returns the mode in use.
    pub fn attach(
        &mut self,
        iface: &str,
        request: ModeRequest,
        previous: Option<XdpAttachMode>,
    ) -> Result<XdpAttachMode> {
        let path = self.pin.link(iface);
        if path.exists() {
            match self.adopt_link(&path) {
                Ok(()) => {
                    let mode = previous.unwrap_or(XdpAttachMode::Native);
                    info!(iface, mode = mode.name(), "adopted pinned XDP link");
                    return Ok(mode);
                }
                Err(e) => {
                    warn!(iface, error = %e, "pinned XDP link unusable, attaching afresh");
                    let _ = fs::remove_file(&path);
                }
            }
        }
        let modes: &[(XdpMode, XdpAttachMode)] = match request {
            ModeRequest::Auto => {
                &[(XdpMode::Driver, XdpAttachMode::Native), (XdpMode::Skb, XdpAttachMode::Generic)]
            }
            ModeRequest::Native => &[(XdpMode::Driver, XdpAttachMode::Native)],
            ModeRequest::Generic => &[(XdpMode::Skb, XdpAttachMode::Generic)],
        };
        let mut failures = Vec::new();
        for (mode, attach_mode) in modes {
            let program = self.program();
            let id = match program.attach(iface, *mode) {
                Ok(id) => id,
                Err(ProgramError::UnknownInterface { .. }) => {
                    return Err(DataplaneError::NoSuchInterface(iface.to_owned()));
                }
                Err(e) => {
                    failures.push(format!("{}: {}", attach_mode.name(), error_chain(&e)));
                    continue;
                }
            };
            let link = program
                .take_link(id)
                .map_err(|e| DataplaneError::Program("take link".into(), e))?;
            let fd_link = FdLink::try_from(link).map_err(|e| DataplaneError::Attach {
                iface: iface.to_owned(),
                reason: format!(
                    "the kernel attached through netlink, which cannot be pinned ({e})"
                ),
            })?;
            fd_link.pin(&path).map_err(|e| DataplaneError::Attach {
                iface: iface.to_owned(),
                reason: format!("pinning the link at {}: {e}", path.display()),
            })?;
            info!(iface, mode = attach_mode.name(), "attached XDP");
            return Ok(*attach_mode);
        }
        Err(DataplaneError::Attach { iface: iface.to_owned(), reason: failures.join("; ") })
    }

    fn adopt_link(&mut self, path: &Path) -> Result<(), String> {
        let pinned = PinnedLink::from_pin(path).map_err(|e| e.to_string())?;
        let link = XdpLink::try_from(FdLink::from(pinned)).map_err(|e| e.to_string())?;
        let program = self.program();
        let id = program.attach_to_link(link).map_err(|e| error_chain(&e))?;
        // The pin keeps the link; this process's handle may go.
        let link = program.take_link(id).map_err(|e| e.to_string())?;
        drop(link);
        Ok(())
    }

    /// Detaches XDP from one interface (its pinned link is the only reference this daemon
    /// keeps).
    pub fn detach(&self, iface: &str) -> Result<()> {
        let path = self.pin.link(iface);
        match crate::link::detach_pinned(&path) {
            Ok(()) => {
                info!(iface, "detached XDP");
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(DataplaneError::Io { what: "detaching", path, source }),
        }
    }

    /// Detaches interfaces pinned earlier that are no longer wanted.
    pub fn detach_others(&self, keep: &[String]) {
        for iface in self.pin.pinned_links().into_iter().filter(|i| !keep.contains(i)) {
            info!(iface, "neither in --attach nor in the configuration");
            if let Err(e) = self.detach(&iface) {
                warn!(iface, error = %e, "unpinning link");
            }
        }
    }

    /// The ring buffer of neighbour requests, once.
    pub fn take_neigh_requests(&mut self) -> Option<RingBuf<MapData>> {
        self.neigh_requests.take()
    }

    /// The hook tables' maps and the sample ring buffer, for the plugin host (once).
    pub fn take_hooks(
        &mut self,
    ) -> std::result::Result<(crate::hooks::AyaHookMaps, RingBuf<MapData>), crate::hooks::HookError>
    {
        let maps = crate::hooks::AyaHookMaps::take(&mut self.ebpf)?;
        let ring = self.ebpf.take_map(names::SAMPLES).ok_or(crate::hooks::HookError::Map {
            map: names::SAMPLES,
            source: MapError::InvalidName { name: names::SAMPLES.to_owned() },
        })?;
        let ring = RingBuf::try_from(ring)
            .map_err(|source| crate::hooks::HookError::Map { map: names::SAMPLES, source })?;
        Ok((maps, ring))
    }

    /// Memory used by the IPv4 lookup tables.
    pub fn lookup_usage(&self) -> Option<lookup::Usage> {
        self.maps.lookup_usage()
    }

    /// Reads everything the maps hold.
    pub fn read_state(&self) -> Result<FibState> {
        self.maps.state()
    }

    /// Applies map writes in order. Returns how many failed (each is logged). `desired`, on the
    /// first call, is the complete state the writes lead to: the IPv4 lookup tables are adopted
    /// for its routes once the next hops and groups before them are written.
    pub fn apply(&mut self, ops: &[Op], desired: Option<&FibState>) -> usize {
        let mut failures = 0;
        let mut adopt = desired.filter(|_| !self.maps.lookup_adopted());
        for op in ops {
            let routes_from_here = matches!(
                op,
                Op::SetRouteV4(..) | Op::DelRouteV4(_) | Op::SetRouteV6(..) | Op::DelRouteV6(_)
            );
            if routes_from_here && let Some(state) = adopt.take() {
                self.adopt(state, &mut failures);
            }
            if let Err(e) = self.maps.apply(op) {
                failures += 1;
                warn!(?op, error = %error_chain(e.as_ref()), "map write failed");
            }
        }
        if let Some(state) = adopt {
            self.adopt(state, &mut failures);
        }
        self.forwarding_written = Some(Instant::now());
        if let Err(e) = self.maps.flush_record() {
            failures += 1;
            warn!(error = %error_chain(e.as_ref()), "writing the IPv4 route record failed");
        }
        debug!(ops = ops.len(), failures, "applied");
        failures
    }

    /// When the forwarding tables of the last batch were complete (the IPv4 route record, for
    /// `sluice routes` and restarts, is written after them).
    pub fn forwarding_written(&self) -> Option<Instant> {
        self.forwarding_written
    }

    fn adopt(&mut self, state: &FibState, failures: &mut usize) {
        if let Err(e) = self.maps.adopt_lookup(&state.routes_v4, &state.routes_v6) {
            *failures += 1;
            warn!(error = %error_chain(&e), "adopting the lookup tables failed");
        }
    }

    /// Memory used by the IPv6 lookup trie.
    pub fn lookup_usage_v6(&self) -> Option<crate::trie6::Usage> {
        self.maps.trie6.as_ref().map(Trie6::usage)
    }
}

/// Key size, value size and capacity of every map, as this build defines them. The kernel does
/// not check a pinned map against the object that reuses it, so a map pinned by a build with
/// other types would be read and written with the wrong layout.
fn expected_layout(name: &str) -> Option<(u32, u32, u32)> {
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

fn check_pinned_layout(pin: &PinDir) -> Result<()> {
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

const READ_ONLY: &str = "maps opened read-only";

pub(crate) fn ignore_missing(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

fn key_v4(net: Ipv4Net) -> Key<[u8; 4]> {
    Key::new(u32::from(net.prefix_len()), net.network().octets())
}

fn key_v6(net: Ipv6Net) -> Key<[u8; 16]> {
    Key::new(u32::from(net.prefix_len()), net.network().octets())
}

#[expect(clippy::trivially_copy_pass_by_ref, reason = "matches net_v6 and the iterator items")]
pub(crate) fn net_v4(k: &Key<[u8; 4]>) -> Ipv4Net {
    // The kernel's LPM trie rejects prefix lengths over the key size, so this cannot fail.
    Ipv4Net::new(Ipv4Addr::from(k.data()), k.prefix_len().min(32) as u8).unwrap_or_default()
}

pub(crate) fn net_v6(k: &Key<[u8; 16]>) -> Ipv6Net {
    Ipv6Net::new(Ipv6Addr::from(k.data()), k.prefix_len().min(128) as u8).unwrap_or_default()
}

/// Formats an error with its chain of sources.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Maps a `BPF_F_MMAPABLE` array of `u32` for writing.
fn map_shared(map: Map, name: &'static str, entries: u32) -> Result<MappedArray> {
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
fn map_lookup_tables(
    get: &mut impl FnMut(&'static str) -> Result<Map>,
) -> Result<(MappedArray, MappedArray, MappedArray)> {
    let tbl24 = map_shared(get(names::TBL24_V4)?, names::TBL24_V4, dir24::TBL24_MAP_WORDS)?;
    let tbl8 =
        map_shared(get(names::DIR8_V4)?, names::DIR8_V4, dir24::MAX_GROUPS * dir24::GROUP_ENTRIES)?;
    let trie = map_shared(get(names::TRIE_V6)?, names::TRIE_V6, trie6::ENTRIES)?;
    Ok((tbl24, tbl8, trie))
}

fn open_pinned(pin: &PinDir, name: &'static str) -> Result<Map> {
    let path = pin.map(name);
    if !path.exists() {
        return Err(DataplaneError::NotPinned(pin.root().to_owned()));
    }
    let data = MapData::from_pin(&path).map_err(|e| DataplaneError::Map(name, e))?;
    Map::from_map_data(data).map_err(|e| DataplaneError::Map(name, e))
}

impl Maps {
    fn build(mut get: impl FnMut(&'static str) -> Result<Map>, writable: bool) -> Result<Self> {
        let mut maps = Self {
            routes_v4: typed(&mut get, names::ROUTES_V4)?,
            routes_v6: typed(&mut get, names::ROUTES_V6)?,
            nexthops: typed(&mut get, names::NEXTHOPS)?,
            groups: typed(&mut get, names::ECMP_GROUPS)?,
            ifaces: typed(&mut get, names::IFACES)?,
            iface_cache: typed(&mut get, names::IFACE_CACHE)?,
            devmap: typed(&mut get, names::DEVMAP)?,
            counters: typed(&mut get, names::COUNTERS)?,
            dir24: None,
            trie6: None,
            lookup_cells: None,
            pending_record: Vec::new(),
            record_writer: None,
        };
        if writable {
            maps.lookup_cells = Some(map_lookup_tables(&mut get)?);
            // Interfaces adopted from a version without the cache are cached now.
            for (key, iface) in maps.ifaces()? {
                maps.cache_iface(key, Some(&iface))
                    .map_err(|e| DataplaneError::Map(names::IFACE_CACHE, e))?;
            }
        }
        Ok(maps)
    }

    /// Takes over the lookup tables for the routes they must hold, writing only the entries that
    /// differ from what they hold now (nothing, after a clean restart with the same routes).
    /// Done once; later changes go through [`Maps::write`].
    pub fn adopt_lookup(
        &mut self,
        v4: &BTreeMap<Ipv4Net, Route>,
        v6: &BTreeMap<Ipv6Net, Route>,
    ) -> Result<()> {
        if let Some((tbl24, tbl8, trie)) = self.lookup_cells.take() {
            let routes = v4.iter().map(|(n, r)| (*n, *r));
            self.dir24 = Some(Dir24::adopt(tbl24, tbl8, routes).map_err(DataplaneError::Lookup)?);
            let routes = v6.iter().map(|(n, r)| (*n, *r));
            self.trie6 = Some(Trie6::adopt(trie, routes).map_err(DataplaneError::Lookup)?);
        }
        Ok(())
    }

    /// Whether the lookup tables were adopted.
    pub fn lookup_adopted(&self) -> bool {
        self.dir24.is_some()
    }

    /// Adopts the lookup tables for the record of prefixes when nobody said what they must hold
    /// (tools and tests that write the maps directly).
    fn ensure_adopted(&mut self) -> Result<(), Box<dyn std::error::Error>> {
        if self.lookup_cells.is_some() {
            let state = self.ifaces_and_routes()?;
            self.adopt_lookup(&state.routes_v4, &state.routes_v6)?;
        }
        Ok(())
    }

    /// Mirrors an `IFACES` change into `IFACE_CACHE` when the key's entry there is free or
    /// its own (otherwise the key stays looked up in `IFACES`): zeroed first, then written
    /// whole, so that readers never trust a half-written entry.
    fn cache_iface(&mut self, key: IfaceKey, iface: Option<&Iface>) -> Result<(), MapError> {
        let index = iface_cache_index(key.ifindex, key.vlan_id);
        let tag = iface_cache_tag(key.ifindex, key.vlan_id);
        let current = self.iface_cache.get(&index, 0)?;
        let entry = iface.map(|i| IfaceCacheEntry {
            head: tag,
            slot: i.slot,
            mac: i.mac,
            _pad: [0; 6],
            tail: tag,
        });
        if current.head != 0 && current.head != tag || entry.as_ref() == Some(&current) {
            return Ok(());
        }
        if current.head != 0 {
            self.iface_cache.set(index, IfaceCacheEntry::default(), 0)?;
        }
        if let Some(entry) = entry {
            self.iface_cache.set(index, entry, 0)?;
        }
        Ok(())
    }

    /// Writes the deferred record changes, in order. A large batch (a table being loaded) goes
    /// to a writer thread, and from then on every batch, so that their order holds: the kernel
    /// inserts into an LPM trie at about 2 us an entry, and the daemon must not wait for that
    /// before it takes the next changes into the lookup tables. The record is then behind the
    /// lookup tables by up to one batch; readers of the record wait for it
    /// ([`Maps::ifaces_and_routes`]).
    fn flush_record(&mut self) -> Result<(), Box<dyn std::error::Error>> {
        let pending = std::mem::take(&mut self.pending_record);
        if pending.is_empty() {
            return Ok(());
        }
        let v4 = aya::maps::IterableMap::map(&self.routes_v4).fd().as_fd();
        let v6 = aya::maps::IterableMap::map(&self.routes_v6).fd().as_fd();
        if self.record_writer.is_none() && pending.len() >= RECORD_IN_BACKGROUND {
            self.record_writer = Some(
                RecordWriter::start(v4.try_clone_to_owned()?, v6.try_clone_to_owned()?)
                    .map_err(|e| DataplaneError::Record("record writer", e))?,
            );
        }
        match &self.record_writer {
            Some(writer) => writer.send(pending),
            None => write_record(v4, v6, &pending)?,
        }
        Ok(())
    }

    /// Opens the maps pinned under `pin`, read-only.
    pub fn open(pin: &PinDir) -> Result<Self> {
        Self::build(|name| open_pinned(pin, name), false)
    }

    /// Takes the maps of a loaded object for writing (the daemon, and tests that load the
    /// object themselves).
    pub fn take(ebpf: &mut Ebpf) -> Result<Self> {
        Self::build(|name| take_map(ebpf, name), true)
    }

    /// Memory used by the IPv4 lookup tables, when mapped for writing.
    pub fn lookup_usage(&self) -> Option<lookup::Usage> {
        self.dir24.as_ref().map(Dir24::usage)
    }

    /// Writes one change.
    pub fn write(&mut self, op: &Op) -> Result<(), Box<dyn std::error::Error>> {
        self.apply(op)?;
        self.flush_record()
    }

    /// The interfaces and routes, without next hops and groups.
    fn ifaces_and_routes(&self) -> Result<FibState> {
        if let Some(writer) = &self.record_writer {
            writer.wait();
        }
        let mut s = FibState { ifaces: self.ifaces()?, ..FibState::default() };
        for item in &self.routes_v4 {
            let (k, v) = item.map_err(|e| DataplaneError::Map(names::ROUTES_V4, e))?;
            s.routes_v4.insert(net_v4(&k), v);
        }
        for item in &self.routes_v6 {
            let (k, v) = item.map_err(|e| DataplaneError::Map(names::ROUTES_V6, e))?;
            s.routes_v6.insert(net_v6(&k), v);
        }
        Ok(s)
    }

    /// Everything the maps hold.
    pub fn state(&self) -> Result<FibState> {
        let mut s = self.ifaces_and_routes()?;
        for (id, nh) in self.nexthops.iter().enumerate() {
            let nh = nh.map_err(|e| DataplaneError::Map(names::NEXTHOPS, e))?;
            if nh != NextHop::default() {
                s.nexthops.insert(id as u32, nh);
            }
        }
        for (id, g) in self.groups.iter().enumerate() {
            let g = g.map_err(|e| DataplaneError::Map(names::ECMP_GROUPS, e))?;
            if g != EcmpGroup::default() {
                s.groups.insert(id as u32, g);
            }
        }
        for k in self.devmap.keys() {
            s.devmap.insert(k.map_err(|e| DataplaneError::Map(names::DEVMAP, e))?);
        }
        Ok(s)
    }

    fn apply(&mut self, op: &Op) -> Result<(), Box<dyn std::error::Error>> {
        match *op {
            Op::ResetCounters(slot) => {
                let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
                for reason in Reason::ALL {
                    let zero = vec![Counter::default(); cpus].try_into()?;
                    self.counters.set(reason.index(slot), zero, 0)?;
                }
            }
            Op::AddDevice(d) => self.devmap.insert(d, d, None, 0)?,
            Op::DelDevice(d) => ignore_missing(self.devmap.remove(d))?,
            Op::SetIface(k, v) => {
                self.ifaces.insert(k, v, 0)?;
                self.cache_iface(k, Some(&v))?;
            }
            Op::DelIface(k) => {
                self.cache_iface(k, None)?;
                ignore_missing(self.ifaces.remove(&k))?;
            }
            Op::SetNextHop(id, nh) => self.nexthops.set(id, nh, 0)?,
            Op::ClearNextHop(id) => self.nexthops.set(id, NextHop::default(), 0)?,
            Op::SetGroup(id, g) => self.groups.set(id, g, 0)?,
            Op::ClearGroup(id) => self.groups.set(id, EcmpGroup::default(), 0)?,
            // The forwarding tables now; the record (one system call each) after the batch.
            Op::SetRouteV4(net, r) => {
                self.ensure_adopted()?;
                self.dir24.as_mut().ok_or(READ_ONLY)?.set(net, r)?;
                self.pending_record.push((IpNet::V4(net), Some(r)));
            }
            Op::DelRouteV4(net) => {
                self.ensure_adopted()?;
                self.dir24.as_mut().ok_or(READ_ONLY)?.remove(net);
                self.pending_record.push((IpNet::V4(net), None));
            }
            Op::SetRouteV6(net, r) => {
                self.ensure_adopted()?;
                self.trie6.as_mut().ok_or(READ_ONLY)?.set(net, r)?;
                self.pending_record.push((IpNet::V6(net), Some(r)));
            }
            Op::DelRouteV6(net) => {
                self.ensure_adopted()?;
                self.trie6.as_mut().ok_or(READ_ONLY)?.remove(net);
                self.pending_record.push((IpNet::V6(net), None));
            }
        }
        Ok(())
    }

    /// A next hop.
    pub fn nexthop(&self, id: u32) -> Result<NextHop> {
        self.nexthops.get(&id, 0).map_err(|e| DataplaneError::Map(names::NEXTHOPS, e))
    }

    /// An ECMP group.
    pub fn group(&self, id: u32) -> Result<EcmpGroup> {
        self.groups.get(&id, 0).map_err(|e| DataplaneError::Map(names::ECMP_GROUPS, e))
    }

    /// The interfaces the dataplane serves.
    pub fn ifaces(&self) -> Result<BTreeMap<IfaceKey, Iface>> {
        let mut out = BTreeMap::new();
        for item in &self.ifaces {
            let (k, v) = item.map_err(|e| DataplaneError::Map(names::IFACES, e))?;
            out.insert(k, v);
        }
        Ok(out)
    }

    /// The routes with only the next hops and groups they use (reading the whole arrays would
    /// take one system call per slot).
    pub fn routes(&self) -> Result<FibState> {
        let mut s = self.ifaces_and_routes()?;
        let mut nexthop_ids = std::collections::BTreeSet::new();
        for r in s.routes_v4.values().chain(s.routes_v6.values()) {
            match RouteAction::from_u32(r.action) {
                Some(RouteAction::Forward) => {
                    nexthop_ids.insert(r.target);
                }
                Some(RouteAction::Ecmp) if !s.groups.contains_key(&r.target) => {
                    let g = self
                        .groups
                        .get(&r.target, 0)
                        .map_err(|e| DataplaneError::Map(names::ECMP_GROUPS, e))?;
                    nexthop_ids.extend(g.members.iter().take(g.count as usize));
                    s.groups.insert(r.target, g);
                }
                _ => {}
            }
        }
        for id in nexthop_ids {
            let nh =
                self.nexthops.get(&id, 0).map_err(|e| DataplaneError::Map(names::NEXTHOPS, e))?;
            s.nexthops.insert(id, nh);
        }
        Ok(s)
    }

    /// Counters of one slot, summed over CPUs, by reason.
    pub fn counters(&self, slot: u32) -> Result<BTreeMap<Reason, Counter>> {
        let mut out = BTreeMap::new();
        if slot >= MAX_SLOTS {
            return Ok(out);
        }
        for reason in Reason::ALL {
            let values = self
                .counters
                .get(&(slot * REASON_SLOTS + reason as u32), 0)
                .map_err(|e| DataplaneError::Map(names::COUNTERS, e))?;
            out.insert(reason, sum_counters(values.iter()));
        }
        Ok(out)
    }
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

/// Removes everything pinned under `pin`: links first (detaching XDP before it returns), then
/// maps.
pub fn detach_all(pin: &PinDir) -> Result<Vec<String>> {
    crate::xmit::detach(pin)?;
    let links = pin.pinned_links();
    for iface in &links {
        let path = pin.link(iface);
        crate::link::detach_pinned(&path).map_err(|source| DataplaneError::Io {
            what: "detaching",
            path,
            source,
        })?;
    }
    for name in names::ALL_MAPS {
        let path = pin.map(name);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(DataplaneError::Io { what: "removing", path, source }),
        }
    }
    for dir in [pin.root().join("links"), pin.root().join("maps"), pin.root().to_owned()] {
        match fs::remove_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(DataplaneError::Io { what: "removing", path: dir, source }),
        }
    }
    Ok(links)
}

/// Batches at least this large are written to the record in the background.
const RECORD_IN_BACKGROUND: usize = 1024;

/// Writes record changes (`ROUTES_V4`, `ROUTES_V6`) in order: runs of one family and kind, each
/// in batches of thousands per system call.
fn write_record(
    v4: std::os::fd::BorrowedFd<'_>,
    v6: std::os::fd::BorrowedFd<'_>,
    pending: &[(IpNet, Option<Route>)],
) -> Result<()> {
    let run_kind = |(net, route): &(IpNet, Option<Route>)| (net.addr().is_ipv4(), route.is_some());
    for run in pending.chunk_by(|a, b| run_kind(a) == run_kind(b)) {
        let (is_v4, set) = run_kind(&run[0]);
        let values: Vec<Route> = run.iter().filter_map(|(_, r)| *r).collect();
        if is_v4 {
            let keys: Vec<Key<[u8; 4]>> = run
                .iter()
                .filter_map(|(n, _)| if let IpNet::V4(n) = n { Some(key_v4(*n)) } else { None })
                .collect();
            if set { batch::update(v4, &keys, &values) } else { batch::delete(v4, &keys) }
                .map_err(|e| DataplaneError::Record(names::ROUTES_V4, e))?;
        } else {
            let keys: Vec<Key<[u8; 16]>> = run
                .iter()
                .filter_map(|(n, _)| if let IpNet::V6(n) = n { Some(key_v6(*n)) } else { None })
                .collect();
            if set { batch::update(v6, &keys, &values) } else { batch::delete(v6, &keys) }
                .map_err(|e| DataplaneError::Record(names::ROUTES_V6, e))?;
        }
    }
    Ok(())
}

enum RecordMsg {
    Batch(Vec<(IpNet, Option<Route>)>),
    /// Answered once every batch sent before it is written.
    Wait(std::sync::mpsc::Sender<()>),
}

/// A thread that writes record batches in the order they are sent. Dropping it waits until
/// everything sent is written.
#[derive(Debug)]
struct RecordWriter {
    tx: Option<std::sync::mpsc::Sender<RecordMsg>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for RecordMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Batch(b) => write!(f, "Batch({})", b.len()),
            Self::Wait(_) => f.write_str("Wait"),
        }
    }
}

impl RecordWriter {
    fn start(v4: std::os::fd::OwnedFd, v6: std::os::fd::OwnedFd) -> io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::channel::<RecordMsg>();
        let thread = std::thread::Builder::new().name("sluice-record".into()).spawn(move || {
            lower_priority();
            for msg in rx {
                match msg {
                    RecordMsg::Batch(batch) => {
                        if let Err(e) = write_record(v4.as_fd(), v6.as_fd(), &batch) {
                            warn!(error = %error_chain(&e), "writing the route record failed");
                        }
                    }
                    RecordMsg::Wait(done) => {
                        let _ = done.send(());
                    }
                }
            }
        })?;
        Ok(Self { tx: Some(tx), thread: Some(thread) })
    }

    fn send(&self, batch: Vec<(IpNet, Option<Route>)>) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(RecordMsg::Batch(batch));
        }
    }

    /// Blocks until every batch sent so far is written.
    fn wait(&self) {
        let (done, written) = std::sync::mpsc::channel();
        if let Some(tx) = &self.tx
            && tx.send(RecordMsg::Wait(done)).is_ok()
        {
            let _ = written.recv();
        }
    }
}

/// The nice value of the record writer: while a table loads, the kernel's LPM-trie inserts
/// take about a third of the daemon's CPU time, and the lookup tables, which forward, must not
/// wait behind them for a core. The record trails a little further instead.
const RECORD_NICE: libc::c_int = 10;

/// Lowers the calling thread's scheduling priority to [`RECORD_NICE`] (best effort).
fn lower_priority() {
    if let Err(e) = set_thread_nice(RECORD_NICE) {
        debug!(error = %e, "could not lower the record writer's priority");
    }
}

/// Sets the nice value of the calling thread (on Linux each thread has its own); threads it
/// starts afterwards inherit it.
///
/// # Errors
/// The kernel's refusal, e.g. raising the priority without `CAP_SYS_NICE`.
#[expect(unsafe_code, reason = "setpriority(2) and gettid(2) are C functions")]
pub fn set_thread_nice(nice: libc::c_int) -> io::Result<()> {
    // SAFETY: gettid has no preconditions; setpriority on PRIO_PROCESS with a thread id changes
    // only that thread on Linux.
    let rc = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid.cast_unsigned(), nice)
    };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

impl Drop for RecordWriter {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What the lookup tables hold and the memory they use ([`LookupView::usage`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct LookupUsage {
    /// The IPv4 DIR-24-8.
    pub ipv4: crate::dir24::Scanned,
    /// The IPv6 trie.
    pub ipv6: crate::trie6::Scanned,
}

/// The pinned lookup tables, mapped for reading: what the XDP program finds for an address, and
/// what the tables hold. For tools that check the dataplane from outside (the benchmark,
/// `sluice stats`).
#[derive(Debug)]
pub struct LookupView {
    v4: Dir24<MappedArray>,
    v6: Trie6<MappedArray>,
}

impl LookupView {
    /// Maps the lookup tables pinned under `pin`.
    pub fn open(pin: &PinDir) -> Result<Self> {
        let (tbl24, tbl8, trie) = map_lookup_tables(&mut |name| open_pinned(pin, name))?;
        Ok(Self { v4: Dir24::new(tbl24, tbl8), v6: Trie6::new(trie) })
    }

    /// What the tables hold, read from them (a scan of the IPv4 first level and a walk of the
    /// IPv6 trie: tens of milliseconds).
    pub fn usage(&self) -> LookupUsage {
        LookupUsage { ipv4: self.v4.scan(), ipv6: self.v6.scan() }
    }

    /// The route the XDP program would find for `addr`.
    pub fn lookup(&self, addr: std::net::IpAddr) -> Option<Route> {
        match addr {
            std::net::IpAddr::V4(a) => self.v4.lookup(a),
            std::net::IpAddr::V6(a) => self.v6.lookup(a),
        }
    }
}
