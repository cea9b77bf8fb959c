//! Loading the XDP object, pinning and adopting its maps and links, attaching it to interfaces.
//!
//! Maps are pinned under `PIN_DIR/maps/NAME` and XDP links under `PIN_DIR/links/IFNAME`, so
//! forwarding goes on while the daemon is stopped, and a new daemon adopts the maps (loading the
//! program reuses pinned maps) and the links (it swaps its program into them with
//! `BPF_LINK_UPDATE`) without a moment of flushed state.

use std::{
    fs, io,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, MapError, RingBuf},
    programs::{
        ProgramError, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
    },
};
use sluice_common::{XdpAttachMode, names};
use sluice_core::{
    dir24 as lookup,
    fib::{FibState, Op},
    trie6::Trie6,
};
use tracing::{debug, info, warn};

use crate::{
    error::{DataplaneError, Result, error_chain},
    maps::Maps,
    pin::{PinDir, PinLock, check_pinned_layout, take_map},
};

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
    /// This daemon's hold on the pin directory, for as long as the dataplane is loaded.
    _lock: PinLock,
}

impl Dataplane {
    /// Loads the program, reusing the maps pinned under `pin` or creating and pinning them.
    pub fn load(pin: &PinDir) -> Result<Self> {
        let lock = pin.lock()?;
        Self::load_locked(pin, lock)
    }

    /// [`Dataplane::load`] with the pin directory already taken ([`PinDir::lock`]): a start
    /// takes it, and checks everything else that could refuse it, before it pins anything.
    pub fn load_locked(pin: &PinDir, lock: PinLock) -> Result<Self> {
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
            _lock: lock,
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
    ) -> std::result::Result<
        (crate::hooks::AyaHookMaps, RingBuf<MapData>),
        sluice_core::hooks::HookError,
    > {
        let maps = crate::hooks::AyaHookMaps::take(&mut self.ebpf)?;
        let ring =
            self.ebpf.take_map(names::SAMPLES).ok_or(sluice_core::hooks::HookError::Map {
                map: names::SAMPLES,
                source: Box::new(MapError::InvalidName { name: names::SAMPLES.to_owned() }),
            })?;
        let ring = RingBuf::try_from(ring).map_err(|source| {
            sluice_core::hooks::HookError::Map { map: names::SAMPLES, source: Box::new(source) }
        })?;
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
        self.apply_failing(ops, desired, &mut Vec::new())
    }

    /// [`Dataplane::apply`], taking the writes: a large batch (a table loading) goes itself to
    /// the record's writer, without the routes it writes copied out of it, so that a full table
    /// is held once, not twice, while the record is written. What the lookup tables refused is
    /// left out of the record, as [`Dataplane::apply`] leaves it out.
    pub fn apply_owned(&mut self, ops: Vec<Op>, desired: Option<&FibState>) -> usize {
        if ops.len() < crate::record::RECORD_IN_BACKGROUND {
            return self.apply(&ops, desired);
        }
        let mut failed = Vec::new();
        self.maps.record_from_ops = true;
        let mut failures = self.apply_failing(&ops, desired, &mut failed);
        self.maps.record_from_ops = false;
        let ops = if failed.is_empty() {
            ops
        } else {
            ops.into_iter()
                .enumerate()
                .filter(|(i, _)| failed.binary_search(i).is_err())
                .map(|(_, op)| op)
                .collect()
        };
        if let Err(e) = self.maps.send_record_ops(ops) {
            failures += 1;
            warn!(error = %error_chain(e.as_ref()), "writing the route record failed");
        }
        failures
    }

    /// [`Dataplane::apply`], noting the index of each write that failed in `failed`.
    fn apply_failing(
        &mut self,
        ops: &[Op],
        desired: Option<&FibState>,
        failed: &mut Vec<usize>,
    ) -> usize {
        let mut failures = 0;
        let mut adopt = desired.filter(|_| !self.maps.lookup_adopted());
        for (i, op) in ops.iter().enumerate() {
            let routes_from_here = matches!(
                op,
                Op::SetRouteV4(..) | Op::DelRouteV4(_) | Op::SetRouteV6(..) | Op::DelRouteV6(_)
            );
            if routes_from_here && let Some(state) = adopt.take() {
                self.adopt(state, &mut failures);
            }
            if let Err(e) = self.maps.apply(op) {
                failures += 1;
                failed.push(i);
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
            return;
        }
        let v4 = self.maps.dir24.as_ref().map(lookup::Dir24::adoption).unwrap_or_default();
        let v6 = self.maps.trie6.as_ref().map(Trie6::adoption).unwrap_or_default();
        if v4.untrusted + v6.untrusted > 0 {
            warn!(
                ipv4_groups = v4.untrusted,
                ipv6_nodes = v6.untrusted,
                "the pinned lookup tables had groups or nodes shared between entries or outside \
                 the tables (two writers?): rebuilt them rather than trusting them"
            );
        }
        info!(
            ipv4_entries_rewritten = v4.rewritten,
            ipv6_entries_rewritten = v6.rewritten,
            "lookup tables adopted"
        );
    }

    /// Adopts the lookup tables for `state` now if they are not yet (a restart with nothing to
    /// change writes no route, and would otherwise adopt them only at the first change).
    /// Returns how many writes failed.
    pub fn adopt_lookup_tables(&mut self, state: &FibState) -> usize {
        if self.maps.lookup_adopted() {
            return 0;
        }
        let mut failures = 0;
        self.adopt(state, &mut failures);
        failures
    }

    /// Memory used by the IPv6 lookup trie.
    pub fn lookup_usage_v6(&self) -> Option<sluice_core::trie6::Usage> {
        self.maps.trie6.as_ref().map(Trie6::usage)
    }
}

/// How long `detach` waits for a daemon that holds the pin directory to exit.
pub const DETACH_WAIT: Duration = Duration::from_secs(3);

/// Removes everything pinned under `pin`: links first (detaching XDP before it returns), then
/// maps.
///
/// While a daemon holds the pin directory this waits up to [`DETACH_WAIT`] for it to go (one
/// that is stopping), then refuses with [`DataplaneError::InUse`]; `force` detaches regardless
/// (the daemon keeps running, without a dataplane).
pub fn detach_all(pin: &PinDir, force: bool) -> Result<Vec<String>> {
    if !pin.root().exists() {
        return Ok(Vec::new());
    }
    let _lock = match pin.lock_waiting(DETACH_WAIT) {
        Ok(lock) => Some(lock),
        Err(DataplaneError::InUse { .. }) if force => None,
        Err(e) => return Err(e),
    };
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
