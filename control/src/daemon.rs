//! The daemon: loads (or adopts) the dataplane, attaches it, and keeps its maps equal to the
//! kernel's state until it is told to stop, leaving the pinned dataplane forwarding behind it.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use sluice_common::{IfaceKey, XdpAttachMode};
use tokio::{io::unix::AsyncFd, signal::unix::SignalKind};
use tracing::{debug, error, info, warn};

use sluice_core::{
    fib::{Compiler, FibState, Op, neighbour_of},
    rib::Rib,
};
use sluice_dataplane::{
    Dataplane, ModeRequest, PinDir, error_chain,
    mirror::{Applied, Mirror},
};

/// How long after one recompile of the FIB the next one waits, gathering changes: bursts (a link
/// going down takes its routes and neighbours with it, a table loading) become few updates. A
/// change that comes later than that is compiled at once, with whatever else is queued.
const SETTLE: Duration = Duration::from_millis(2);
/// Events taken at most before a recompile: bounds the dataplane's lag while a table loads.
const DRAIN_MAX: usize = 8192;
/// A recompile at least this large is logged with its timings and followed by returning freed
/// heap to the kernel.
const LARGE_BATCH: usize = 10_000;
/// How often a neighbour the daemon asked the kernel to manage may be asked for again.
const NEIGH_RETRY: Duration = Duration::from_secs(5);
/// How often the routed ports' egress readiness is checked (a netlink request or two a port).
const EGRESS_CHECK: Duration = Duration::from_secs(1);

/// What the daemon serves.
#[derive(Debug, Clone)]
pub struct Options {
    /// Pin directory.
    pub pin: PinDir,
    /// Interfaces to attach to.
    pub attach: Vec<String>,
    /// Attach mode.
    pub mode: ModeRequest,
    /// Routing table mirrored.
    pub table: u32,
    /// Receive buffer of the netlink event socket, in bytes.
    pub netlink_recv_buffer: usize,
    /// A directory of plugins to run, and those of it allowed match-all drops.
    pub plugins: Option<crate::plugins::PluginDir>,
    /// The plugin publishers trusted, and whether unsigned plugins may run.
    pub trust: crate::plugins::Trust,
    /// Where the configuration store lives (`DIR/db`); none: no stored configuration.
    pub state_dir: Option<std::path::PathBuf>,
    /// Where the REST API listens (needs `state_dir`); none: no API.
    pub listen: Vec<crate::listener::Listen>,
    /// What a connection to the API may cost, and for how long.
    pub api_limits: crate::listener::Limits,
    /// Run this BIRD 2 program as the routing daemon, configured from the store's `protocols`
    /// (needs `state_dir`); none: no routing daemon.
    pub bird: Option<std::path::PathBuf>,
}

/// The configuration store and the netlink handle its static routes are applied with.
struct Config {
    store: sluice_store::Store,
    handle: rtnetlink::Handle,
    /// The routing daemon, when one runs.
    bird: Option<std::sync::Arc<crate::bird::Bird>>,
}

impl Config {
    /// The routed ports of the running configuration, with their XDP mode.
    fn ports(&self) -> BTreeMap<String, ModeRequest> {
        let config = match self.store.config() {
            Ok(c) => c,
            Err(e) => {
                error!(error = %error_chain(&e), "reading the configuration failed");
                return BTreeMap::new();
            }
        };
        config
            .interfaces
            .into_iter()
            .filter(|(_, i)| i.attach)
            .map(|(name, i)| {
                let mode = match i.xdp_mode {
                    sluice_store::XdpMode::Auto => ModeRequest::Auto,
                    sluice_store::XdpMode::Native => ModeRequest::Native,
                    sluice_store::XdpMode::Generic => ModeRequest::Generic,
                };
                (name, mode)
            })
            .collect()
    }

    fn open(dir: &std::path::Path, opts: &Options) -> anyhow::Result<Self> {
        crate::state_dir::ensure(dir)?;
        let store = sluice_store::Store::open_recorded(&dir.join("db"))
            .with_context(|| format!("opening the configuration store in {}", dir.display()))?;
        let (conn, handle, _) = rtnetlink::new_connection().context("rtnetlink")?;
        tokio::spawn(conn);
        let bird = opts
            .bird
            .as_deref()
            .map(|b| crate::bird::Bird::new(b, dir, opts.table).map(std::sync::Arc::new))
            .transpose()
            .context("BIRD's directory")?;
        Ok(Self { store, handle, bird })
    }

    /// Rolls back an unconfirmed commit whose deadline passed, and applies the running
    /// configuration's static routes to the kernel (at start, and after a rollback). Whether it
    /// looked at the running configuration (asked to, or after a rollback).
    async fn reconcile(&self, always: bool) -> bool {
        let rolled = match self.store.rollback_expired(std::time::SystemTime::now()) {
            Ok(r) => r,
            Err(e) => {
                error!(error = %error_chain(&e), "checking the pending confirmation failed");
                None
            }
        };
        if let Some(r) = &rolled {
            warn!(revision = r.id, "an unconfirmed commit was rolled back");
        }
        if !always && rolled.is_none() {
            return false;
        }
        let c = match self.store.config() {
            Ok(c) => c,
            Err(e) => {
                error!(error = %error_chain(&e), "reading the configuration failed");
                return true;
            }
        };
        // Interfaces first: a static route may need an address they bring.
        match sluice_dataplane::apply::apply_interfaces(&self.handle, &c.interfaces).await {
            Ok(a) => {
                if !a.missing.is_empty() {
                    warn!(missing = ?a.missing, "interfaces of the configuration are not there");
                }
                info!(added = ?a.added, removed = ?a.removed, "interface settings applied");
            }
            Err(e) => error!(error = %error_chain(&e), "applying the interface settings failed"),
        }
        let held = || {
            self.store.routes_held().unwrap_or_else(|e| {
                error!(error = %error_chain(&e), "reading the revisions' routes failed: removing none");
                BTreeSet::new()
            })
        };
        match sluice_dataplane::apply::apply_routes_held(&self.handle, &c.routes, held, false).await
        {
            Ok(a) => {
                info!(set = a.set.len(), removed = a.removed.len(), "static routes applied");
                if !a.kept.is_empty() {
                    warn!(
                        kept = ?a.kept,
                        "Sluice routes in the kernel that no revision of the store has: left alone"
                    );
                }
            }
            Err(e) => error!(error = %error_chain(&e), "applying the static routes failed"),
        }
        if let Some(bird) = &self.bird {
            let bird = std::sync::Arc::clone(bird);
            let protocols = c.protocols;
            match tokio::task::spawn_blocking(move || bird.apply(&protocols)).await {
                Ok(Ok(())) => info!("routing protocols applied (BIRD reconfigured)"),
                Ok(Err(e)) => warn!(
                    error = %error_chain(&e),
                    "BIRD did not take the routing protocols now; it starts with them"
                ),
                Err(e) => error!(error = %e, "applying the routing protocols failed"),
            }
        }
        true
    }
}

/// Runs the daemon until SIGINT or SIGTERM.
#[expect(clippy::too_many_lines, reason = "start-up and the event loop read best in one piece")]
pub async fn run(opts: Options) -> anyhow::Result<()> {
    let checked = preflight(&opts)?;
    // Until the daemon is up, a failure removes what this start pinned and attached. Declared
    // before the dataplane, so dropped after it: the dataplane's descriptors are closed first.
    let mut undo = UndoStart { pin: opts.pin.clone(), before: Some(checked.before) };
    let config = checked.config;
    let mut dp =
        Dataplane::load_locked(&opts.pin, checked.lock).context("loading the dataplane")?;
    let mut fib = dp.read_state().context("reading the pinned maps")?;
    if !fib.routes_v4.is_empty() || !fib.ifaces.is_empty() {
        info!(
            routes_v4 = fib.routes_v4.len(),
            routes_v6 = fib.routes_v6.len(),
            nexthops = fib.nexthops.len(),
            "adopting pinned dataplane state"
        );
    }
    let mut compiler = Compiler::new(opts.table);
    compiler.adopt(&fib);

    let mut attached = BTreeMap::new();
    for name in &opts.attach {
        let index = nix::net::if_::if_nametoindex(name.as_str())
            .with_context(|| format!("no interface named {name:?}"))?;
        let previous = fib
            .ifaces
            .get(&IfaceKey { ifindex: index, vlan_id: 0, _pad: 0 })
            .map(|i| XdpAttachMode::from_u32(i.xdp_mode));
        let mode = dp.attach(name, opts.mode, previous)?;
        attached.insert(index, mode);
    }
    // The routing daemon, run until the daemon stops.
    let bird_stop = std::sync::Arc::new(tokio::sync::Notify::new());
    let bird_task = config.as_ref().and_then(|c| {
        let bird = std::sync::Arc::clone(c.bird.as_ref()?);
        let store = c.store.clone();
        let current = move || match store.config() {
            Ok(c) => c.protocols,
            Err(e) => {
                error!(error = %error_chain(&e), "reading the routing protocols failed");
                sluice_store::protocols::Protocols::default()
            }
        };
        Some(tokio::spawn(bird.supervise(current, std::sync::Arc::clone(&bird_stop))))
    });
    // The configuration's routed ports are attached below, with the others; their pinned links
    // stay meanwhile. Others are detached once the start cannot fail any more.
    let mut keep = opts.attach.clone();
    if let Some(c) = &config {
        keep.extend(c.ports().into_keys());
    }

    let ring =
        dp.take_neigh_requests().map(register).transpose().context("neighbour ring buffer")?;
    if let Some(c) = &config {
        c.reconcile(true).await;
    }
    // The API's questions on where routes came from, answered from the RIB in the loop.
    let (origin_tx, mut origin_rx) =
        tokio::sync::mpsc::unbounded_channel::<crate::api::OriginQuery>();
    // Told when the API commits a change: applied as at a start.
    let mut applied = std::sync::Arc::new(tokio::sync::Notify::new());
    let (plugin_tx, plugin_rx) = std::sync::mpsc::channel();
    // What the plugin host reports, for `/health`.
    let plugin_report = crate::plugins::SharedReport::default();
    if let (false, Some(c), Some(dir)) = (opts.listen.is_empty(), &config, &opts.state_dir) {
        let api = crate::api::Api::new(c.store.clone(), opts.pin.clone(), dir)?
            .with_plugins(plugin_tx.clone(), std::sync::Arc::clone(&plugin_report))
            .with_fixed_ports(opts.attach.clone())
            .with_origins(origin_tx.clone())
            .with_bird(c.bird.clone());
        applied = std::sync::Arc::clone(&api.changed);
        crate::api::serve(&std::sync::Arc::new(api), &opts.listen, opts.api_limits, dir)?;
    }
    let mut state = State {
        dp,
        compiler,
        fib: FibState::default(),
        attached,
        rib: Rib::default(),
        asked: HashMap::new(),
        route_events: None,
        gateways: sluice_dataplane::hooks::Gateways::default(),
        fixed: opts.attach.clone(),
        ports: BTreeMap::new(),
        missing: BTreeSet::new(),
        appeared: false,
        last_sync: None,
        // Whether each routed port can take redirected frames (sluice_dataplane::egress).
        egress: sluice_dataplane::egress::EgressWatch::open(&opts.pin)
            .inspect_err(|e| warn!(error = %error_chain(e), "egress readiness is not checked"))
            .ok(),
    };
    std::mem::swap(&mut state.fib, &mut fib);
    if let Some(c) = &config {
        state.ports = c.ports();
        state.reconcile_ports();
    }
    let mut mirror = connect_and_dump(&mut state, &opts, false).await;
    state.sync();
    let all = state.all_neighbours();
    state.ensure_managed(&mut mirror, all).await;
    info!(
        interfaces = state.attached.len(),
        routes_v4 = state.fib.routes_v4.len(),
        routes_v6 = state.fib.routes_v6.len(),
        nexthops = state.fib.nexthops.len(),
        "ready: forwarding"
    );
    if !sluice_dataplane::egress::kernel_forwarding() {
        warn!(
            "the kernel's forwarding is off: what XDP hands to it (TTL expiry, too big, options, \
             no route, ports held for egress) is dropped without ICMP; switch it on with \
             `sysctl -w net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1`"
        );
    }
    if let Some(u) = state.dp.lookup_usage() {
        info!(
            prefixes = u.prefixes,
            groups = u.groups,
            groups_max = u.groups_max,
            results = u.results,
            rejected = u.rejected,
            mib = u.shared_bytes >> 20,
            "IPv4 lookup tables (DIR-24-8)"
        );
    }
    if let Some(u) = state.dp.lookup_usage_v6() {
        info!(
            prefixes = u.prefixes,
            nodes = u.nodes,
            compact = u.compact,
            wide = u.wide,
            nodes_max = u.nodes_max,
            rejected = u.rejected,
            mib = u.shared_bytes >> 20,
            "IPv6 lookup trie"
        );
    }

    // Plugins run from the directory, and from the store (the API adds them there).
    let plugins_on = opts.plugins.is_some() || config.is_some();
    let mut plugin_thread = None;
    if plugins_on {
        match state.dp.take_hooks() {
            Ok((maps, samples)) => {
                let (tx, rx) = std::sync::mpsc::channel();
                state.route_events = Some(tx);
                state.gateways.update(&state.fib.nexthops);
                let kv = match &opts.state_dir {
                    Some(dir) => {
                        let path = dir.join("plugin-kv");
                        Some(sluice_store::kv::KvDir::open(&path).with_context(|| {
                            format!("opening the plugins' key-value stores in {}", path.display())
                        })?)
                    }
                    None => None,
                };
                let feed = crate::plugins::Feed {
                    samples,
                    routes: rx,
                    pin: opts.pin.clone(),
                    gateways: state.gateways.clone(),
                    kv,
                };
                plugin_thread = Some(crate::plugins::run(
                    opts.plugins.clone(),
                    opts.trust.clone(),
                    maps,
                    feed,
                    plugin_rx,
                    std::sync::Arc::clone(&plugin_report),
                ));
                if let Some(c) = &config {
                    sync_plugins(&c.store, &plugin_tx);
                }
            }
            Err(e) => error!(error = %error_chain(&e), "the hook tables are unusable: no plugins"),
        }
    }

    let mut term = tokio::signal::unix::signal(SignalKind::terminate())?;
    undo.before = None;
    state.dp.detach_others(&keep);
    let mut ring = ring;
    // When the FIB is next recompiled, if something changed.
    let mut compile_at: Option<Instant> = None;
    let mut sweep = tokio::time::interval(NEIGH_RETRY);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut confirm_check = tokio::time::interval(Duration::from_secs(1));
    confirm_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut plugin_watch = tokio::time::interval(Duration::from_secs(1));
    plugin_watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut egress_check = tokio::time::interval(EGRESS_CHECK);
    egress_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Checked against the clock here too: while events keep coming (a table loading), this
        // task never waits, so the runtime's timers do not advance and a sleep would not end.
        let settle = async {
            match compile_at {
                Some(t) if Instant::now() >= t => {}
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            event = mirror.next_event(&mut state.rib) => {
                let changed = match event {
                    Some(Applied::Changed) => true,
                    Some(Applied::Ignored) => false,
                    Some(Applied::Overrun) => {
                        warn!("netlink receive buffer overran: resynchronising");
                        mirror = connect_and_dump(&mut state, &opts, true).await;
                        true
                    }
                    None => {
                        warn!("netlink socket closed: reconnecting");
                        mirror = connect_and_dump(&mut state, &opts, true).await;
                        true
                    }
                };
                if changed {
                    let due = compile_deadline(Instant::now(), state.last_sync);
                    compile_at.get_or_insert(due);
                }
            }
            () = settle => {
                if mirror.drain_at_most(&mut state.rib, DRAIN_MAX) == Applied::Overrun {
                    warn!("netlink receive buffer overran: resynchronising");
                    mirror = connect_and_dump(&mut state, &opts, true).await;
                }
                compile_at = None;
                let written = state.sync();
                state.ensure_managed(&mut mirror, written).await;
            }
            requests = read_requests(ring.as_mut()) => {
                for (ifindex, addr) in requests {
                    state.ask(&mut mirror, ifindex, addr).await;
                }
            }
            Some((prefixes, reply)) = origin_rx.recv() => {
                let table = opts.table;
                let answer = prefixes
                    .iter()
                    .map(|p| state.rib.best_route(table, *p).map(|r| r.protocol))
                    .collect();
                let _ = reply.send(answer);
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = sweep.tick() => {
                let all = state.all_neighbours();
                state.ensure_managed(&mut mirror, all).await;
            }
            () = applied.notified(), if config.is_some() => {
                if let Some(c) = &config {
                    c.reconcile(true).await;
                    sync_plugins(&c.store, &plugin_tx);
                    state.ports = c.ports();
                    if state.reconcile_ports() {
                        let written = state.sync();
                        state.ensure_managed(&mut mirror, written).await;
                    }
                }
            }
            // The plugin thread, started again if it died; its store plugins told again.
            _ = plugin_watch.tick(), if plugin_thread.is_some() => {
                if plugin_thread.as_mut().is_some_and(crate::plugins::PluginThread::watch)
                    && let Some(c) = &config
                {
                    sync_plugins(&c.store, &plugin_tx);
                }
            }
            _ = egress_check.tick(), if state.egress.is_some() => state.check_egress(),
            _ = confirm_check.tick(), if config.is_some() => {
                if let Some(c) = &config {
                    if c.reconcile(false).await {
                        state.ports = c.ports();
                    }
                    // Also catches a configured port that appeared (no store read: the ports
                    // are read when the configuration changes).
                    if state.reconcile_ports() {
                        let written = state.sync();
                        state.ensure_managed(&mut mirror, written).await;
                    }
                    // Its addresses, MTU and the static routes through it, which could not be
                    // applied while it was not there.
                    if std::mem::take(&mut state.appeared) {
                        c.reconcile(true).await;
                    }
                }
            }
        }
    }
    if let Some(task) = bird_task {
        bird_stop.notify_one();
        let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    }
    info!("stopping; the pinned dataplane keeps forwarding");
    Ok(())
}

/// What a start holds once every check that could refuse it has passed.
struct Checked {
    /// The pin directory, taken.
    lock: sluice_dataplane::PinLock,
    /// What it held before this start.
    before: sluice_dataplane::PinSnapshot,
    /// The configuration store, opened and found whole.
    config: Option<Config>,
}

/// Every refusal a start can make, made before anything is loaded, pinned or attached: the
/// interfaces of `--attach` exist, the state directory is a writable directory, the pin
/// directory is free (its lock) and usable, the store opens and is the one its record names. A
/// start refused here leaves the system as it found it.
fn preflight(opts: &Options) -> anyhow::Result<Checked> {
    for name in &opts.attach {
        check_interface(name)?;
    }
    if let Some(dir) = &opts.state_dir {
        check_state_dir(dir)?;
    }
    let before = opts.pin.snapshot();
    let lock = opts.pin.lock().context("taking the pin directory")?;
    let rest = (|| {
        opts.pin.check_usable().context("checking the pin directory")?;
        opts.state_dir.as_deref().map(|d| Config::open(d, opts)).transpose()
    })();
    match rest {
        Ok(config) => Ok(Checked { lock, before, config }),
        Err(e) => {
            // The lock made the directory if it was missing.
            opts.pin.undo_since(&before);
            Err(e)
        }
    }
}

/// An interface named in `--attach` must exist. Whether it takes XDP only the kernel says, when
/// attaching; a refusal there is undone with the rest of the start ([`UndoStart`]).
fn check_interface(name: &str) -> anyhow::Result<()> {
    if nix::net::if_::if_nametoindex(name).is_err() {
        anyhow::bail!("--attach {name}: no interface named {name:?}: nothing was attached");
    }
    Ok(())
}

/// The state directory: a directory (made 0700 if missing) this process can write in.
fn check_state_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::io::Write as _;
    match std::fs::metadata(dir) {
        Ok(meta) if !meta.is_dir() => {
            anyhow::bail!("--state-dir {}: not a directory: nothing was attached", dir.display());
        }
        Ok(_) => {}
        Err(_) => crate::state_dir::ensure(dir).with_context(|| {
            format!("--state-dir {}: unusable: nothing was attached", dir.display())
        })?,
    }
    let probe = dir.join(format!(".write-check.{}", std::process::id()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .and_then(|mut f| f.write_all(b"sluice\n").and_then(|()| f.sync_all()));
    let _ = std::fs::remove_file(&probe);
    written.with_context(|| {
        format!("--state-dir {}: not writable: nothing was attached", dir.display())
    })?;
    crate::state_dir::ensure(dir)
        .with_context(|| format!("--state-dir {}: unusable: nothing was attached", dir.display()))
}

/// Removes what a failed start pinned and attached, when dropped before the start completed.
struct UndoStart {
    pin: PinDir,
    /// Cleared once the daemon is up.
    before: Option<sluice_dataplane::PinSnapshot>,
}

impl Drop for UndoStart {
    fn drop(&mut self) {
        if let Some(before) = self.before.take() {
            let removed = self.pin.undo_since(&before);
            warn!(
                removed = removed.len(),
                "the start failed: what it pinned and attached is removed again"
            );
        }
    }
}

/// Tells the plugin thread which of the store's plugins should run.
fn sync_plugins(
    store: &sluice_store::Store,
    tx: &std::sync::mpsc::Sender<crate::plugins::Command>,
) {
    match crate::plugins::wanted_from_store(store) {
        Ok((wanted, disabled)) => {
            let _ = tx.send(crate::plugins::Command::Sync { wanted, disabled });
        }
        Err(e) => error!(error = %e, "reading the plugins of the configuration failed"),
    }
}

struct State {
    dp: Dataplane,
    compiler: Compiler,
    fib: FibState,
    attached: BTreeMap<u32, XdpAttachMode>,
    rib: Rib,
    asked: HashMap<(u32, IpAddr), Instant>,
    /// Route changes for the plugins, when they run.
    route_events: Option<std::sync::mpsc::Sender<Vec<crate::plugins::RouteChange>>>,
    /// The next hops by gateway, for the plugins' steer rules.
    gateways: sluice_dataplane::hooks::Gateways,
    /// The ports of `--attach`: always attached, whatever the configuration says.
    fixed: Vec<String>,
    /// The routed ports of the running configuration, with their mode (read from the store
    /// when the configuration changes).
    ports: BTreeMap<String, ModeRequest>,
    /// Routed ports of the configuration that are not there (reported once).
    missing: BTreeSet<String>,
    /// A port of `missing` has appeared since the configuration was last applied: its settings
    /// (addresses, MTU, up) and the static routes through it are applied again.
    appeared: bool,
    /// When the FIB was last recompiled.
    last_sync: Option<Instant>,
    /// The routed ports' egress readiness, when it can be checked.
    egress: Option<sluice_dataplane::egress::EgressWatch>,
}

impl State {
    /// Holds the routed ports that cannot take redirected frames (their frames go to the
    /// kernel) and releases those that can again; says so in the log, with the remedy.
    fn check_egress(&mut self) {
        use sluice_dataplane::egress::{Change, describe};
        let Some(watch) = self.egress.as_mut() else { return };
        let ports: BTreeMap<u32, String> = self
            .attached
            .keys()
            .map(|i| {
                let name = self
                    .rib
                    .links
                    .get(i)
                    .map(|l| l.name.clone())
                    .or_else(|| nix::net::if_::if_indextoname(*i).ok()?.into_string().ok());
                (*i, name.unwrap_or_else(|| format!("ifindex {i}")))
            })
            .collect();
        match watch.check(&ports) {
            Ok(changes) => {
                for change in changes {
                    match change {
                        Change::Held(port, hold) => {
                            let d = describe(&port, &hold);
                            warn!(iface = %port, cause = %d.cause, "egress not ready: {}", d.message);
                        }
                        Change::Ready(port) => {
                            info!(iface = %port, "egress ready: XDP redirects to it again");
                        }
                    }
                }
            }
            Err(e) => warn!(error = %error_chain(&e), "checking egress readiness failed"),
        }
    }

    /// Attaches XDP to the configuration's routed ports and detaches it from ports that left
    /// it (never from `--attach` ones). Whether the set of attached ports changed.
    fn reconcile_ports(&mut self) -> bool {
        let mut changed = false;
        let wanted = std::mem::take(&mut self.ports);
        for (name, request) in &wanted {
            let Ok(index) = nix::net::if_::if_nametoindex(name.as_str()) else {
                if self.missing.insert(name.clone()) {
                    warn!(iface = %name, "a routed port of the configuration is not there (yet)");
                }
                continue;
            };
            if self.missing.remove(name) {
                info!(iface = %name, "a routed port of the configuration appeared");
                self.appeared = true;
            }
            if self.attached.contains_key(&index) {
                continue;
            }
            let previous = self
                .fib
                .ifaces
                .get(&IfaceKey { ifindex: index, vlan_id: 0, _pad: 0 })
                .map(|i| XdpAttachMode::from_u32(i.xdp_mode));
            match self.dp.attach(name, *request, previous) {
                Ok(mode) => {
                    self.attached.insert(index, mode);
                    changed = true;
                }
                Err(e) => {
                    error!(iface = %name, error = %error_chain(&e), "attaching XDP failed");
                }
            }
        }
        self.missing.retain(|n| wanted.contains_key(n));
        let gone: Vec<(u32, String)> = self
            .attached
            .keys()
            .filter_map(|&i| Some((i, nix::net::if_::if_indextoname(i).ok()?.into_string().ok()?)))
            .filter(|(_, n)| !wanted.contains_key(n) && !self.fixed.contains(n))
            .collect();
        for (index, name) in gone {
            match self.dp.detach(&name) {
                Ok(()) => {
                    self.attached.remove(&index);
                    changed = true;
                }
                Err(e) => error!(iface = %name, error = %error_chain(&e), "detaching XDP failed"),
            }
        }
        self.ports = wanted;
        if changed {
            self.rib.dirty.all = true;
        }
        changed
    }

    /// Compiles what changed in the RIB and writes it into the maps. Returns the neighbours of
    /// the next hops it wrote. When it ended is kept: the next changes wait [`SETTLE`] after it
    /// ([`compile_deadline`]).
    fn sync(&mut self) -> Vec<(u32, IpAddr)> {
        if self.egress.as_ref().is_some_and(|w| w.ports_changed(self.attached.keys().copied())) {
            self.check_egress();
        }
        let neighbours = self.recompile();
        self.last_sync = Some(Instant::now());
        neighbours
    }

    /// The work of [`State::sync`].
    fn recompile(&mut self) -> Vec<(u32, IpAddr)> {
        let started = Instant::now();
        let ops = self.compiler.update(&mut self.rib, &self.attached, &mut self.fib);
        if self.compiler.overflow > 0 {
            warn!(
                dropped = self.compiler.overflow,
                "dataplane tables full: some next hops or ECMP members left out"
            );
        }
        if ops.is_empty() {
            // Nothing to write (a restart with nothing changed): the lookup tables are still
            // checked and taken over now, not at the first route change.
            if self.dp.adopt_lookup_tables(&self.fib) > 0 {
                self.rib.dirty.all = true;
            }
            return Vec::new();
        }
        let compiled = started.elapsed();
        // What the plugins and the neighbour requests need of the batch is taken first: the
        // batch itself goes to the route record's writer.
        let changes = ops.len();
        let nexthops_changed =
            ops.iter().any(|op| matches!(op, Op::SetNextHop(..) | Op::ClearNextHop(_)));
        let route_changes: Vec<crate::plugins::RouteChange> = if self.route_events.is_some() {
            ops.iter()
                .filter_map(Op::route_write)
                .map(|(net, route)| crate::plugins::RouteChange {
                    prefix: net.to_string(),
                    added: route.is_some(),
                })
                .take(crate::plugins::MAX_ROUTE_EVENTS)
                .collect()
        } else {
            Vec::new()
        };
        let neighbours = ops
            .iter()
            .filter_map(|op| match op {
                Op::SetNextHop(_, nh) => neighbour_of(nh).map(|a| (nh.logical_ifindex, a)),
                _ => None,
            })
            .collect();
        let failures = self.dp.apply_owned(ops, Some(&self.fib));
        if changes > LARGE_BATCH {
            let forwarding = self.dp.forwarding_written().map(|t| t.duration_since(started));
            info!(
                changes,
                ?compiled,
                forwarding_tables = ?forwarding,
                with_record = ?started.elapsed(),
                peak_rss_mib = sluice_dataplane::heap::peak_rss_mib(),
                "dataplane written"
            );
        }
        if failures > 0 {
            // What was written is uncertain: take the maps' word for it and recompile it all
            // at the next sync.
            self.fib = self.dp.read_state().unwrap_or_default();
            self.rib.dirty.all = true;
        }
        debug!(ops = changes, failures, elapsed = ?started.elapsed(), "dataplane updated");
        if self.route_events.is_some() && nexthops_changed {
            self.gateways.update(&self.fib.nexthops);
        }
        if let Some(tx) = &self.route_events
            && !route_changes.is_empty()
        {
            let _ = tx.send(route_changes);
        }
        if changes > LARGE_BATCH {
            sluice_dataplane::heap::release_free_memory();
        }
        neighbours
    }

    /// Makes sure the neighbours of next hops are managed neighbour entries, so that the kernel
    /// keeps them resolved although XDP, not the kernel, carries the traffic.
    async fn ensure_managed(&mut self, mirror: &mut Mirror, neighbours: Vec<(u32, IpAddr)>) {
        for (ifindex, addr) in neighbours {
            if self.rib.neighbour(ifindex, addr).is_some_and(|n| n.managed) {
                continue;
            }
            self.ask(mirror, ifindex, addr).await;
        }
    }

    /// Every next hop's neighbour, for the periodic sweep.
    fn all_neighbours(&self) -> Vec<(u32, IpAddr)> {
        self.fib
            .nexthops
            .values()
            .filter_map(|nh| neighbour_of(nh).map(|a| (nh.logical_ifindex, a)))
            .collect()
    }

    async fn ask(&mut self, mirror: &mut Mirror, ifindex: u32, addr: IpAddr) {
        let now = Instant::now();
        if self.asked.get(&(ifindex, addr)).is_some_and(|t| now.duration_since(*t) < NEIGH_RETRY) {
            return;
        }
        if self.asked.len() > 4096 {
            self.asked.retain(|_, t| now.duration_since(*t) < NEIGH_RETRY);
        }
        self.asked.insert((ifindex, addr), now);
        if let Err(e) =
            mirror.ensure_managed(ifindex, addr, self.rib.neighbour(ifindex, addr)).await
        {
            warn!(%addr, ifindex, error = %error_chain(&e), "could not ask the kernel to resolve a neighbour");
        }
    }
}

/// Longest wait between two attempts to mirror the kernel.
const RESYNC_MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Connects the mirror and replaces the RIB with a fresh dump; retries until it works, since a
/// netlink error must never stop the daemon. A dump that was consistent but whose following
/// events overran (changes keep coming faster than they are read) is still newer than what the
/// dataplane holds: when `apply_between` (a resync, not the start), it is compiled into the
/// dataplane before the next attempt, so forwarding follows the kernel while the resync retries.
async fn connect_and_dump(state: &mut State, opts: &Options, apply_between: bool) -> Mirror {
    use sluice_dataplane::mirror::MirrorError;
    let mut delay = Duration::from_millis(100);
    loop {
        let started = Instant::now();
        let attempt = async {
            let mut mirror =
                Mirror::connect(opts.table, opts.netlink_recv_buffer).map_err(|e| (None, e))?;
            let mut rib = mirror.dump().await.map_err(|e| (None, e))?;
            info!(
                routes = rib.routes.len(),
                neighbours = rib.neighbours.len(),
                links = rib.links.len(),
                elapsed = ?started.elapsed(),
                peak_rss_mib = sluice_dataplane::heap::peak_rss_mib(),
                "kernel state dumped"
            );
            if mirror.drain(&mut rib) == Applied::Overrun {
                let e = MirrorError::Overrun("the events that came during the dump".into());
                return Err((Some(rib), e));
            }
            Ok::<_, (Option<Rib>, MirrorError)>((mirror, rib))
        };
        match attempt.await {
            Ok((mirror, rib)) => {
                state.rib = rib;
                return mirror;
            }
            Err((dumped, e)) => {
                match (&e, dumped) {
                    (MirrorError::Overrun(_), Some(rib)) if apply_between => {
                        state.rib = rib;
                        let _ = state.sync();
                        warn!(
                            error = %error_chain(&e),
                            "changes outran reading them: the dump is in the dataplane; dumping again"
                        );
                    }
                    (MirrorError::Overrun(_), _) => {
                        warn!(error = %error_chain(&e), "changes outran reading them; dumping again");
                    }
                    _ => error!(error = %error_chain(&e), "mirroring the kernel failed; retrying"),
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(RESYNC_MAX_BACKOFF);
            }
        }
    }
}

/// Registers the ring buffer with the runtime's reactor.
#[expect(unsafe_code, reason = "AsyncFd::register requires the fd to stay open while registered")]
fn register(ring: RingBuf<MapData>) -> std::io::Result<AsyncFd<RingBuf<MapData>>> {
    // SAFETY: the AsyncFd owns the ring buffer, and with it the fd, until it is dropped, which
    // deregisters it first.
    unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(Into::into)
}

/// Waits for neighbour requests from the dataplane and returns them.
async fn read_requests(ring: Option<&mut AsyncFd<RingBuf<MapData>>>) -> Vec<(u32, IpAddr)> {
    let Some(ring) = ring else { return std::future::pending().await };
    let Ok(mut guard) = ring.readable_mut().await else { return std::future::pending().await };
    let mut out = Vec::new();
    while let Some(item) = guard.get_inner_mut().next() {
        if let Some(r) = parse_request(&item) {
            out.push(r);
        }
    }
    guard.clear_ready();
    out
}

/// Decodes a `NeighRequest` record.
fn parse_request(b: &[u8]) -> Option<(u32, IpAddr)> {
    if b.len() < 24 {
        return None;
    }
    let ifindex = u32::from_ne_bytes(b[0..4].try_into().ok()?);
    let addr: [u8; 16] = b[8..24].try_into().ok()?;
    Some((ifindex, sluice_common::addr_of(b[4], &addr)))
}

/// When a change that came at `now` is compiled: at once if the last recompile was at least
/// [`SETTLE`] ago (a lone change: an operator's `ip route add`, a BGP update), else [`SETTLE`]
/// after it (changes that keep coming, compiled in batches).
fn compile_deadline(now: Instant, last_compile: Option<Instant>) -> Instant {
    last_compile.map_or(now, |t| now.max(t + SETTLE))
}

#[cfg(test)]
mod tests {
    use sluice_common::FAMILY_V4;

    use super::*;

    #[test]
    fn neighbour_requests_decode() {
        let mut b = vec![0u8; 24];
        b[0..4].copy_from_slice(&7u32.to_ne_bytes());
        b[4] = FAMILY_V4;
        b[8..12].copy_from_slice(&[10, 0, 0, 9]);
        assert_eq!(parse_request(&b), Some((7, "10.0.0.9".parse().unwrap())));
        b[4] = sluice_common::FAMILY_V6;
        assert_eq!(parse_request(&b), Some((7, "a00:9::".parse().unwrap())));
        assert_eq!(parse_request(&b[..10]), None);
    }

    #[test]
    fn a_lone_change_is_compiled_at_once_and_a_burst_is_gathered() {
        let compiled = Instant::now();
        // The first change, or one that comes the settling time or longer after the last
        // recompile: no wait.
        assert_eq!(compile_deadline(compiled, None), compiled);
        let later = compiled + SETTLE;
        assert_eq!(compile_deadline(later, Some(compiled)), later);
        let much_later = compiled + SETTLE * 5;
        assert_eq!(compile_deadline(much_later, Some(compiled)), much_later);
        // Changes right after a recompile (a burst, a table loading): gathered until the
        // settling time after it ends.
        assert_eq!(compile_deadline(compiled, Some(compiled)), compiled + SETTLE);
        assert_eq!(compile_deadline(compiled + SETTLE / 2, Some(compiled)), compiled + SETTLE);
    }
}
