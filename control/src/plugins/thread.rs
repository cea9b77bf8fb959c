//! The daemon's plugin thread: the plugins of a directory and of the configuration store,
//! the commands of the daemon and the API, and once an interval the events gathered from the
//! dataplane (route changes, counters, samples, the timer) handed to each plugin's worker
//! ([`Pool`]). It never waits for a plugin: starts and checks run on threads of their own and
//! answer when they end. A plugin's failure, a panic of the host while serving it included, is
//! its worker's to contain; should this thread die anyway, its owner starts it again after a
//! back-off ([`PluginThread::watch`]).

use std::{
    collections::BTreeSet,
    path::PathBuf,
    sync::{
        Arc, Mutex, PoisonError,
        mpsc::{Receiver, RecvTimeoutError},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use sluice_dataplane::hooks::{self, HookTables};

use super::{
    CounterEvent, Event, FlowSample, LogLine, Manager, Manifest, PluginError, PluginHost, Pool,
    RouteChange, Status, Table, Trust, Usage, now_ms, pinned_queries, util::panic_message,
};

/// How often the plugin thread looks whether a plugin's start ended, while one is under way.
const START_POLL: Duration = Duration::from_millis(10);

/// How often running plugins get a timer event and the samples gathered since the last one.
pub const EVENT_INTERVAL: Duration = Duration::from_secs(1);
/// Counter snapshots go to plugins every this many timer events.
pub const COUNTERS_EVERY: u32 = 5;
/// Route changes per recompile passed on to plugins (a table loading is a million).
pub const MAX_ROUTE_EVENTS: usize = 10_000;

/// Where the plugins' events come from.
pub struct Feed {
    /// The sampled headers.
    pub samples: aya::maps::RingBuf<aya::maps::MapData>,
    /// Route changes from the daemon's recompiles.
    pub routes: Receiver<Vec<RouteChange>>,
    /// The pinned dataplane, for counter snapshots.
    pub pin: sluice_dataplane::PinDir,
    /// The dataplane's next hops by gateway, which steer rules are resolved through.
    pub gateways: hooks::Gateways,
    /// Where the plugins' key-value stores are kept (none: in memory).
    pub kv: Option<sluice_store::kv::KvDir>,
}

impl std::fmt::Debug for Feed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feed").field("pin", &self.pin).finish_non_exhaustive()
    }
}

/// The events of one round: the route changes and samples gathered since the last, a counter
/// snapshot every `COUNTERS_EVERY` rounds, and the timer.
fn gather_events(feed: &mut Feed, ticks: u32) -> Vec<Event> {
    let mut events: Vec<Event> = Vec::new();
    while let Ok(changes) = feed.routes.try_recv() {
        let room = MAX_ROUTE_EVENTS.saturating_sub(events.len());
        events.extend(changes.into_iter().take(room).map(Event::Route));
    }
    if ticks.is_multiple_of(COUNTERS_EVERY)
        && let Some(c) = counter_snapshot(&feed.pin)
    {
        events.push(c);
    }
    while events.len() < 100_000
        && let Some(item) = feed.samples.next()
    {
        if let Some(s) = hooks::SampledPacket::from_record(&item) {
            events.push(Event::Sample(FlowSample {
                ifindex: s.ifindex,
                len: s.len,
                proto: s.proto,
                src: s.src.to_string(),
                dst: s.dst.to_string(),
                sport: s.sport,
                dport: s.dport,
                tcp_flags: s.tcp_flags,
                every: s.every,
            }));
        }
    }
    events.push(Event::Timer(now_ms()));
    events
}

/// The dataplane's counters as events: every non-zero (interface, reason).
fn counter_snapshot(pin: &sluice_dataplane::PinDir) -> Option<Event> {
    let stats = crate::show::stats(pin).ok()?;
    let counters = stats
        .interfaces
        .iter()
        .flat_map(|i| {
            i.counters.iter().filter(|(_, c)| c.packets > 0).map(|(reason, c)| CounterEvent {
                interface: i.name.clone(),
                reason: (*reason).to_owned(),
                packets: c.packets,
                bytes: c.bytes,
            })
        })
        .collect();
    Some(Event::Counters(counters))
}

/// The plugin directory of `sluice daemon --plugins DIR`, and what its operator allows.
#[derive(Clone, Debug, Default)]
pub struct PluginDir {
    /// The directory: for each `NAME.json` manifest, `NAME.wasm` and the optional
    /// `NAME.config.json`.
    pub path: PathBuf,
    /// The plugins of it allowed drop and rate-limit rules on `0.0.0.0/0` and `::/0`
    /// (`--plugin-allow-match-all NAME`): the directory's counterpart of the store's
    /// `plugins.NAME.allow_match_all`.
    pub allow_match_all: BTreeSet<String>,
}

/// The plugins of a directory, by manifest name in order, each ready to run or why it cannot:
/// the manifest, component or configuration unreadable. A name of `dir.allow_match_all` that
/// no plugin has is logged.
pub fn wanted_from_dir(dir: &PluginDir) -> Vec<Result<Wanted, String>> {
    let mut manifests: Vec<PathBuf> = match std::fs::read_dir(&dir.path) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension().is_some_and(|x| x == "json")
                    && !p.to_string_lossy().ends_with(".config.json")
            })
            .collect(),
        Err(e) => {
            let dir = dir.path.display();
            tracing::error!(dir = %dir, error = %e, "cannot read the plugin directory");
            Vec::new()
        }
    };
    if manifests.is_empty() {
        tracing::warn!(dir = %dir.path.display(), "no plugin manifests (NAME.json) found");
    }
    manifests.sort();
    let wanted: Vec<Result<Wanted, String>> = manifests
        .iter()
        .map(|path| {
            let manifest: Manifest = serde_json::from_slice(
                &std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?,
            )
            .map_err(|e| format!("{}: {e}", path.display()))?;
            let wasm_path = path.with_extension("wasm");
            let wasm =
                std::fs::read(&wasm_path).map_err(|e| format!("{}: {e}", wasm_path.display()))?;
            let config_path = path.with_extension("config.json");
            let config = std::fs::read_to_string(&config_path).unwrap_or_else(|_| "{}".into());
            let allow_match_all = dir.allow_match_all.contains(&manifest.name);
            Ok(Wanted { manifest, wasm: Arc::new(wasm), config, allow_match_all })
        })
        .collect();
    for name in &dir.allow_match_all {
        let found = wanted.iter().flatten().any(|w| w.manifest.name == *name);
        if !found {
            tracing::warn!(
                plugin = name,
                dir = %dir.path.display(),
                "--plugin-allow-match-all names no plugin of the plugin directory"
            );
        }
    }
    wanted
}

/// Starts the plugins of a directory, each on its worker: none waits for another's `init`.
fn start_dir(pool: &mut Pool<hooks::AyaHookMaps>, dir: &PluginDir) {
    for wanted in wanted_from_dir(dir) {
        match wanted {
            Ok(w) => pool.start(w, "directory", None),
            Err(e) => tracing::error!(error = e, "plugin not started"),
        }
    }
}

/// A plugin to run as the configuration store keeps it.
#[derive(Clone, Debug)]
pub struct Wanted {
    /// Its manifest.
    pub manifest: Manifest,
    /// Its component.
    pub wasm: Arc<Vec<u8>>,
    /// Its configuration (JSON).
    pub config: String,
    /// The operator allows it drop and rate-limit rules on `0.0.0.0/0` and `::/0`.
    pub allow_match_all: bool,
}

impl Wanted {
    /// Whether `other` runs the same: component (by the manifest's hash), manifest,
    /// configuration and the operator's leave.
    #[must_use]
    pub fn runs_as(&self, other: &Self) -> bool {
        self.manifest == other.manifest
            && self.config == other.config
            && self.allow_match_all == other.allow_match_all
    }
}

/// The plugins of the store's running configuration: those enabled, ready to run, and the
/// names of those disabled. One whose manifest or component is unusable is logged and left out.
pub fn wanted_from_store(
    store: &sluice_store::Store,
) -> Result<(Vec<Wanted>, Vec<String>), sluice_store::StoreError> {
    let mut wanted = Vec::new();
    let mut disabled = Vec::new();
    for (name, p) in store.config()?.plugins {
        if !p.enabled {
            disabled.push(name);
            continue;
        }
        let manifest: Manifest = match serde_json::from_value(p.manifest.clone()) {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(plugin = name, error = %e, "the stored manifest is unusable");
                continue;
            }
        };
        let Some(wasm) = store.wasm(&p.wasm_sha256)? else {
            tracing::error!(plugin = name, sha256 = p.wasm_sha256, "the component is not stored");
            continue;
        };
        let allow_match_all = p.allow_match_all;
        wanted.push(Wanted {
            manifest,
            wasm: Arc::new(wasm),
            config: p.config.to_string(),
            allow_match_all,
        });
    }
    Ok((wanted, disabled))
}

/// A plugin as the operator sees it (`GET /api/v1/plugins`, `sluice plugin list`).
#[derive(Clone, Debug, Serialize)]
pub struct PluginInfo {
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// The tables it may write.
    pub tables: Vec<Table>,
    /// SHA-256 of its component.
    pub sha256: String,
    /// The publisher key that signed it, if any.
    pub publisher: Option<String>,
    /// Where it comes from: `store` (the API) or `directory` (`--plugins DIR`).
    pub source: &'static str,
    /// Running or quarantined, and why.
    pub status: Status,
    /// Rules it holds in the hook tables.
    pub rules: usize,
    /// What its current instance has used.
    pub usage: Usage,
    /// Events it lost because it fell more than a few batches behind (its own slow calls).
    pub dropped_events: u64,
}

/// What `/api/v1/health` says of the plugin host: the thread's life (written by its owner's
/// [`PluginThread::watch`]) and its plugins (written by the thread after each round of events).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostReport {
    /// `running`; `restarting` after the thread died, until it runs again; `off` when the daemon
    /// runs no plugin host.
    pub state: String,
    /// Times the thread was started again.
    pub restarts: u32,
    /// Why it last died.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_death: Option<String>,
    /// Plugins running.
    pub running: usize,
    /// Plugins quarantined, and why.
    pub quarantined: Vec<QuarantinedPlugin>,
}

impl Default for HostReport {
    fn default() -> Self {
        Self {
            state: "off".into(),
            restarts: 0,
            last_death: None,
            running: 0,
            quarantined: Vec::new(),
        }
    }
}

impl HostReport {
    /// Whether all is well: the host runs (or there is none) and no plugin is quarantined.
    #[must_use]
    pub fn healthy(&self) -> bool {
        self.state != "restarting" && self.quarantined.is_empty()
    }

    /// Takes the plugins' states from their manager.
    pub fn update_plugins<S: super::TableSink>(&mut self, manager: &Manager<S>) {
        self.set_plugins(manager.plugins().iter().map(|(n, s)| (n.clone(), s.status())));
    }

    /// Takes the plugins' states.
    pub fn set_plugins(&mut self, plugins: impl IntoIterator<Item = (String, Status)>) {
        self.running = 0;
        self.quarantined.clear();
        for (name, status) in plugins {
            match status {
                Status::Running => self.running += 1,
                Status::Quarantined { reason, retry_in_ms, .. } => {
                    self.quarantined.push(QuarantinedPlugin { name, reason, retry_in_ms });
                }
            }
        }
    }
}

/// A quarantined plugin in a [`HostReport`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantinedPlugin {
    /// Its name.
    pub name: String,
    /// Why.
    pub reason: String,
    /// Until its next start.
    pub retry_in_ms: u64,
}

/// The report as the plugin thread, its owner and the API share it.
pub type SharedReport = Arc<Mutex<HostReport>>;

/// What the daemon and the API ask of the plugin thread.
#[derive(Debug)]
pub enum Command {
    /// Checks a plugin as `Put` would take it, starting nothing ([`Manager::check`]): what the
    /// API asks before it commits a configuration naming the plugin.
    Check(Wanted, std::sync::mpsc::Sender<Result<(), PluginError>>),
    /// Starts a plugin of the store, or replaces it without a gap (unless it already runs
    /// with this component and configuration); answers why it could not.
    Put(Wanted, std::sync::mpsc::Sender<Result<(), String>>),
    /// Makes the store's plugins exactly `wanted` (started or replaced where the component or
    /// the configuration differs). Of the others, those named in `disabled` are stopped and
    /// keep their key-value store; the rest are gone from the configuration and lose it too.
    Sync {
        /// The enabled plugins of the running configuration.
        wanted: Vec<Wanted>,
        /// The disabled ones.
        disabled: Vec<String>,
    },
    /// Stops the store's plugin `name` (one of the plugin directory is left alone): its rules
    /// go at once, and its key-value store too when `forget` (a plugin removed, not disabled).
    /// Answers whether such a plugin ran. What the API asks after committing a removal, so
    /// that its answer comes once the plugin is gone, not at the next sync.
    Stop {
        /// The plugin.
        name: String,
        /// Whether its key-value store goes too.
        forget: bool,
        /// Whether it ran, or why stopping it failed.
        reply: std::sync::mpsc::Sender<Result<bool, String>>,
    },
    /// Every plugin.
    List(std::sync::mpsc::Sender<Vec<PluginInfo>>),
    /// A plugin's log, if there is such a plugin.
    Logs(String, std::sync::mpsc::Sender<Option<Vec<LogLine>>>),
}

/// The plugin thread's state: the plugins' workers.
struct Coordinator {
    pool: Pool<hooks::AyaHookMaps>,
}

impl Coordinator {
    /// Serves a command without waiting for any plugin: a start or a check runs on a thread of
    /// its own and answers when it ends.
    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Check(w, reply) => {
                if let Some(why) = self.name_taken(&w.manifest.name) {
                    let _ = reply.send(Err(PluginError::Manifest(why)));
                } else {
                    self.pool.check(w, reply);
                }
            }
            Command::Put(w, reply) => {
                if self.runs(&w) {
                    let _ = reply.send(Ok(()));
                } else {
                    self.put(w, Some(reply));
                }
            }
            Command::Sync { wanted, disabled } => self.sync(wanted, &disabled),
            Command::Stop { name, forget, reply } => {
                let _ = reply.send(self.stop(&name, forget));
            }
            Command::List(reply) => {
                let _ = reply.send(self.pool.list());
            }
            Command::Logs(name, reply) => {
                let _ = reply.send(self.pool.logs(&name));
            }
        }
    }

    /// Whether the store's plugin `w` already runs with its component and configuration. One
    /// only starting does not count: whoever asks waits for a start of its own (the later start
    /// wins, the earlier is refused when it ends).
    fn runs(&self, w: &Wanted) -> bool {
        self.pool
            .running(&w.manifest.name)
            .is_some_and(|(source, r)| source == "store" && r.runs_as(w))
    }

    /// Why a plugin of the store may not take the name `name`.
    fn name_taken(&self, name: &str) -> Option<String> {
        self.pool
            .running(name)
            .is_some_and(|(source, _)| source != "store")
            .then(|| format!("a plugin of the plugin directory is called {name:?}"))
    }

    fn put(&mut self, w: Wanted, reply: Option<std::sync::mpsc::Sender<Result<(), String>>>) {
        if let Some(why) = self.name_taken(&w.manifest.name) {
            if let Some(reply) = reply {
                let _ = reply.send(Err(why));
            }
            return;
        }
        self.pool.start(w, "store", reply);
    }

    fn stop(&mut self, name: &str, forget: bool) -> Result<bool, String> {
        if self.name_taken(name).is_some() {
            return Ok(false);
        }
        let result = if forget { self.pool.forget(name) } else { self.pool.remove(name) };
        match result {
            Ok(ran) => {
                if ran {
                    tracing::info!(plugin = name, "plugin stopped");
                }
                Ok(ran)
            }
            Err(e) => {
                tracing::error!(plugin = name, error = %e, "stopping the plugin failed");
                Err(e.to_string())
            }
        }
    }

    fn sync(&mut self, wanted: Vec<Wanted>, disabled: &[String]) {
        let names: BTreeSet<String> = wanted.iter().map(|w| w.manifest.name.clone()).collect();
        for w in wanted {
            // A start of exactly this under way (the API's, say) is not repeated: a second
            // would overtake it and have it reported as not started.
            if !self.runs(&w) && !self.pool.starting(&w) {
                self.put(w, None);
            }
        }
        let gone: Vec<String> = self
            .pool
            .list()
            .into_iter()
            .filter(|p| p.source == "store" && !names.contains(&p.name))
            .map(|p| p.name)
            .collect();
        for name in gone {
            let _ = self.stop(&name, !disabled.contains(&name));
        }
    }

    /// Finishes the starts that ended, and logs them.
    fn poll(&mut self) {
        for (name, outcome) in self.pool.poll() {
            match outcome {
                Ok(()) => tracing::info!(plugin = name, "plugin started"),
                Err(e) => tracing::error!(plugin = name, error = e, "plugin not started"),
            }
        }
    }
}

/// What the plugin thread works with, kept by its owner's [`PluginThread`] across the thread's
/// restarts (a thread that panics loses what it owns).
struct Resources {
    dir: Option<PluginDir>,
    trust: Trust,
    /// The hook maps the daemon took out of its dataplane, for the first start; a restart
    /// opens the pinned ones.
    maps: Option<hooks::AyaHookMaps>,
    feed: Feed,
    /// None once every sender is gone.
    commands: Option<Receiver<Command>>,
    report: SharedReport,
}

/// Starts the plugin thread: the plugins of `dir` (for each `NAME.json` manifest, `NAME.wasm`
/// and the optional `NAME.config.json`; [`wanted_from_dir`]), then whatever [`Command`]s bring (the store's plugins).
/// The hook tables are emptied first (a plugin rewrites its rules as it starts). A plugin that
/// cannot start is logged and left out; the others run, each on a thread of its own, none
/// waiting for another's `init`. Every [`EVENT_INTERVAL`] each plugin gets the round's events
/// (samples at its own rate) and a timer. The owner keeps the returned [`PluginThread`] and
/// calls [`PluginThread::watch`] now and then, which starts the thread again if it died.
pub fn run(
    dir: Option<PluginDir>,
    trust: Trust,
    maps: hooks::AyaHookMaps,
    feed: Feed,
    commands: Receiver<Command>,
    report: SharedReport,
) -> PluginThread {
    report.lock().unwrap_or_else(PoisonError::into_inner).state = "running".into();
    let resources = Arc::new(Mutex::new(Resources {
        dir,
        trust,
        maps: Some(maps),
        feed,
        commands: Some(commands),
        report: Arc::clone(&report),
    }));
    let thread = Restarting::start(
        "sluice-plugins",
        Arc::new(move || {
            // A predecessor that panicked poisoned the lock; what it guards is whole: the
            // feed's queues and the command channel, which a panic does not leave half-done.
            let mut r = resources.lock().unwrap_or_else(PoisonError::into_inner);
            serve(&mut r);
        }),
        THREAD_BACKOFF,
    );
    PluginThread { thread, report }
}

/// The plugin thread as its owner (the daemon) holds it.
#[derive(Debug)]
pub struct PluginThread {
    thread: Restarting,
    report: SharedReport,
}

impl PluginThread {
    /// If the thread died (a panic outside any one plugin's work, which a plugin's own failure
    /// never is), logs why and, once its back-off has passed, starts it again: its plugins
    /// start afresh, those of the plugin directory included. Returns whether it started it
    /// again: the owner then sends the store's plugins again ([`Command::Sync`]). The report
    /// says which.
    pub fn watch(&mut self) -> bool {
        let restarted = self.thread.watch();
        let mut report = self.report.lock().unwrap_or_else(PoisonError::into_inner);
        report.state = if self.thread.thread.is_some() { "running" } else { "restarting" }.into();
        report.restarts = self.thread.restarts;
        report.last_death.clone_from(&self.thread.last_death);
        restarted
    }
}

/// Back-off before the plugin thread is started again, doubling with each death in a row, and
/// its cap.
const THREAD_BACKOFF: (Duration, Duration) = (Duration::from_secs(1), Duration::from_mins(1));
/// A thread that ran this long before it died starts its back-off afresh.
const THREAD_STABLE: Duration = Duration::from_mins(5);

/// A thread meant to run for the process's life, started again after a back-off whenever it
/// ends.
struct Restarting {
    name: &'static str,
    body: Arc<dyn Fn() + Send + Sync>,
    thread: Option<JoinHandle<()>>,
    started: Instant,
    /// Deaths in a row (the back-off doubles with them).
    deaths: u32,
    restarts: u32,
    /// Why it last died.
    last_death: Option<String>,
    /// When to start it again, while it is dead.
    retry_at: Option<Instant>,
    backoff: (Duration, Duration),
}

impl std::fmt::Debug for Restarting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Restarting")
            .field("name", &self.name)
            .field("deaths", &self.deaths)
            .field("restarts", &self.restarts)
            .finish_non_exhaustive()
    }
}

impl Restarting {
    fn start(
        name: &'static str,
        body: Arc<dyn Fn() + Send + Sync>,
        backoff: (Duration, Duration),
    ) -> Self {
        let mut r = Self {
            name,
            body,
            thread: None,
            started: Instant::now(),
            deaths: 0,
            restarts: 0,
            last_death: None,
            retry_at: Some(Instant::now()),
            backoff,
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) -> bool {
        let body = Arc::clone(&self.body);
        match thread::Builder::new().name(self.name.into()).spawn(move || body()) {
            Ok(t) => {
                self.thread = Some(t);
                self.started = Instant::now();
                self.retry_at = None;
                true
            }
            Err(e) => {
                self.died(&format!("it could not be started: {e}"));
                false
            }
        }
    }

    /// Records a death and when to start again.
    fn died(&mut self, why: &str) {
        if self.started.elapsed() >= THREAD_STABLE {
            self.deaths = 0;
        }
        self.deaths = self.deaths.saturating_add(1);
        self.last_death = Some(why.to_owned());
        let (first, max) = self.backoff;
        let backoff = first.saturating_mul(1 << (self.deaths - 1).min(16)).min(max);
        tracing::error!(
            thread = self.name,
            reason = why,
            deaths = self.deaths,
            restart_in_ms = backoff.as_millis() as u64,
            "the plugin thread died; starting it again after a back-off"
        );
        self.retry_at = Some(Instant::now() + backoff);
    }

    fn watch(&mut self) -> bool {
        if let Some(t) = self.thread.take_if(|t| t.is_finished()) {
            let why = match t.join() {
                Ok(()) => "it ended".to_owned(),
                Err(payload) => format!("it panicked: {}", panic_message(&*payload)),
            };
            self.died(&why);
        }
        if self.thread.is_some() || self.retry_at.is_none_or(|at| Instant::now() < at) {
            return false;
        }
        if !self.spawn() {
            return false;
        }
        self.restarts += 1;
        tracing::info!(thread = self.name, restarts = self.restarts, "the plugin thread restarted");
        true
    }
}

/// The plugin thread's work, from emptying the hook tables on: returns only when it cannot
/// start.
fn serve(r: &mut Resources) {
    let maps = match r.maps.take() {
        Some(maps) => Ok(maps),
        None => hooks::AyaHookMaps::open(&r.feed.pin),
    };
    let mut maps = match maps {
        Ok(maps) => maps,
        Err(e) => {
            tracing::error!(error = %e, "the hook tables are unusable: no plugins");
            return;
        }
    };
    if let Err(e) = maps.clear() {
        tracing::error!(error = %e, "emptying the hook tables failed: no plugins");
        return;
    }
    let host = match PluginHost::new(r.trust.clone()) {
        Ok(h) => match r.feed.kv.clone() {
            Some(db) => h.with_kv(db),
            None => h,
        },
        Err(e) => {
            tracing::error!(error = %e, "the plugin host did not start");
            return;
        }
    };
    maps.set_gateways(r.feed.gateways.clone());
    let queries = match pinned_queries(&r.feed.pin) {
        Ok(q) => Some(q),
        Err(e) => {
            tracing::warn!(error = %e, "plugins' route and interface queries will answer nothing");
            None
        }
    };
    let mut pool = Pool::new(host, HookTables::new(maps), queries);
    if let Some(dir) = &r.dir {
        start_dir(&mut pool, dir);
    }
    let mut t = Coordinator { pool };
    let mut ticks = 0u32;
    let mut gateways_seen = r.feed.gateways.version();
    loop {
        // Commands are taken as they come; events once an interval; starts finished as they
        // end. Nothing here waits for a plugin.
        let due = Instant::now() + EVENT_INTERVAL;
        loop {
            t.poll();
            let left = due.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let wait = if t.pool.busy() { left.min(START_POLL) } else { left };
            let Some(rx) = &r.commands else {
                thread::sleep(wait);
                continue;
            };
            match rx.recv_timeout(wait) {
                Ok(cmd) => t.command(cmd),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => r.commands = None,
            }
        }
        ticks = ticks.wrapping_add(1);
        let version = r.feed.gateways.version();
        if version != gateways_seen {
            gateways_seen = version;
            if let Err(e) = t.pool.with_tables(HookTables::refresh_steering) {
                tracing::error!(error = %e, "rewriting the steer rules failed");
            }
        }
        let events = gather_events(&mut r.feed, ticks);
        t.pool.dispatch(&events);
        r.report.lock().unwrap_or_else(PoisonError::into_inner).set_plugins(t.pool.statuses());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[test]
    fn a_thread_that_dies_is_started_again_after_a_back_off_that_doubles() {
        let runs = Arc::new(AtomicU32::new(0));
        let body_runs = Arc::clone(&runs);
        // Panics in its first two runs, then lives.
        let body = Arc::new(move || {
            assert!(body_runs.fetch_add(1, Ordering::SeqCst) >= 2, "a bug of the plugin thread");
            thread::sleep(Duration::from_secs(5));
        });
        let backoff = (Duration::from_millis(50), Duration::from_millis(80));
        let started = Instant::now();
        let mut r = Restarting::start("restart-test", body, backoff);
        let mut restarted_at = Vec::new();
        while restarted_at.len() < 2 && started.elapsed() < Duration::from_secs(5) {
            if r.watch() {
                restarted_at.push(started.elapsed());
            }
            thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(r.restarts, 2, "started again twice: {r:?}");
        while runs.load(Ordering::SeqCst) < 3 && started.elapsed() < Duration::from_secs(5) {
            thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(runs.load(Ordering::SeqCst), 3, "the third run lives");
        assert!(restarted_at[0] >= backoff.0, "not before its first back-off: {restarted_at:?}");
        assert!(
            restarted_at[1].saturating_sub(restarted_at[0]) >= backoff.1,
            "the second back-off doubled (to its cap): {restarted_at:?}"
        );
        for _ in 0..20 {
            assert!(!r.watch(), "a living thread is left alone");
            thread::sleep(Duration::from_millis(5));
        }
        println!(
            "plugin thread: died twice, started again after {:?} and {:?}",
            restarted_at[0], restarted_at[1]
        );
    }
}
