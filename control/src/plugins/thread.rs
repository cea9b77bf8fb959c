//! The daemon's plugin thread: the plugins of a directory and of the configuration store,
//! the commands of the daemon and the API, and once an interval the events gathered from the
//! dataplane (route changes, counters, samples, the timer) handed to the supervisor.

use std::{
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use serde::Serialize;

use sluice_dataplane::hooks::{self, HookTables};

use super::{
    CounterEvent, Event, FlowSample, LogLine, Manager, Manifest, PluginHost, RouteChange, Status,
    Table, Trust, Usage, now_ms, pinned_queries,
};

/// The nice value of the plugin thread: that of a process started plainly, whatever priority the
/// daemon's own threads run at (`sluice daemon --nice`).
const PLUGIN_NICE: libc::c_int = 0;

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
    pub routes: std::sync::mpsc::Receiver<Vec<RouteChange>>,
    /// The pinned dataplane, for counter snapshots.
    pub pin: sluice_dataplane::PinDir,
    /// The dataplane's next hops by gateway, which steer rules are resolved through.
    pub gateways: hooks::Gateways,
    /// Where the plugins' key-value stores are kept (none: in memory).
    pub kv: Option<sled::Db>,
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

/// Starts the plugins of a directory.
fn start_dir(manager: &mut Manager<HookTables<hooks::AyaHookMaps>>, dir: &std::path::Path) {
    let mut manifests: Vec<std::path::PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension().is_some_and(|x| x == "json")
                    && !p.to_string_lossy().ends_with(".config.json")
            })
            .collect(),
        Err(e) => {
            tracing::error!(dir = %dir.display(), error = %e, "cannot read the plugin directory");
            Vec::new()
        }
    };
    if manifests.is_empty() {
        tracing::warn!(dir = %dir.display(), "no plugin manifests (NAME.json) found");
    }
    manifests.sort();
    for path in manifests {
        let started = (|| -> Result<String, String> {
            let manifest: Manifest = serde_json::from_slice(
                &std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?,
            )
            .map_err(|e| format!("{}: {e}", path.display()))?;
            let wasm_path = path.with_extension("wasm");
            let wasm =
                std::fs::read(&wasm_path).map_err(|e| format!("{}: {e}", wasm_path.display()))?;
            let config_path = path.with_extension("config.json");
            let config = std::fs::read_to_string(&config_path).unwrap_or_else(|_| "{}".into());
            let name = manifest.name.clone();
            manager.add(manifest, &wasm, &config).map_err(|e| format!("{name}: {e}"))?;
            Ok(name)
        })();
        match started {
            Ok(name) => tracing::info!(plugin = name, "plugin started"),
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
        wanted.push(Wanted { manifest, wasm: Arc::new(wasm), config: p.config.to_string() });
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
}

/// What the daemon and the API ask of the plugin thread.
#[derive(Debug)]
pub enum Command {
    /// Starts a plugin of the store, or replaces it without a gap; answers why it could not.
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
    /// Every plugin.
    List(std::sync::mpsc::Sender<Vec<PluginInfo>>),
    /// A plugin's log, if there is such a plugin.
    Logs(String, std::sync::mpsc::Sender<Option<Vec<LogLine>>>),
}

/// The plugin thread's state beside its manager.
struct PluginThread {
    manager: Manager<HookTables<hooks::AyaHookMaps>>,
    /// The plugins started from the store (the others come from the directory).
    from_store: std::collections::BTreeSet<String>,
}

impl PluginThread {
    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Put(w, reply) => {
                let _ = reply.send(self.put(w));
            }
            Command::Sync { wanted, disabled } => self.sync(wanted, &disabled),
            Command::List(reply) => {
                let _ = reply.send(self.list());
            }
            Command::Logs(name, reply) => {
                let log = self.manager.plugins().get(&name).map(|s| s.plugin().log_lines());
                let _ = reply.send(log);
            }
        }
    }

    fn put(&mut self, w: Wanted) -> Result<(), String> {
        let name = w.manifest.name.clone();
        if self.manager.plugins().contains_key(&name) && !self.from_store.contains(&name) {
            return Err(format!("a plugin of the plugin directory is called {name:?}"));
        }
        self.manager.add(w.manifest, &w.wasm, &w.config).map_err(|e| e.to_string())?;
        self.from_store.insert(name.clone());
        tracing::info!(plugin = name, "plugin started");
        Ok(())
    }

    fn sync(&mut self, wanted: Vec<Wanted>, disabled: &[String]) {
        let names: std::collections::BTreeSet<String> =
            wanted.iter().map(|w| w.manifest.name.clone()).collect();
        for w in wanted {
            let same = self.manager.plugins().get(&w.manifest.name).is_some_and(|s| {
                s.compiled.manifest.sha256 == w.manifest.sha256 && s.config == w.config
            });
            if same && self.from_store.contains(&w.manifest.name) {
                continue;
            }
            let name = w.manifest.name.clone();
            if let Err(e) = self.put(w) {
                tracing::error!(plugin = name, error = e, "plugin not started");
            }
        }
        let gone: Vec<String> =
            self.from_store.iter().filter(|n| !names.contains(*n)).cloned().collect();
        for name in gone {
            self.from_store.remove(&name);
            let result = if disabled.contains(&name) {
                self.manager.remove(&name)
            } else {
                self.manager.forget(&name)
            };
            match result {
                Ok(_) => tracing::info!(plugin = name, "plugin stopped"),
                Err(e) => tracing::error!(plugin = name, error = %e, "stopping the plugin failed"),
            }
        }
    }

    fn list(&self) -> Vec<PluginInfo> {
        let rules = self.manager.sink().rules(None).unwrap_or_default();
        self.manager
            .plugins()
            .iter()
            .map(|(name, s)| {
                let m = &s.compiled.manifest;
                PluginInfo {
                    name: name.clone(),
                    version: m.version.clone(),
                    tables: m.tables.clone(),
                    sha256: m.sha256.clone(),
                    publisher: m.publisher.clone(),
                    source: if self.from_store.contains(name) { "store" } else { "directory" },
                    status: s.status(),
                    rules: rules.iter().filter(|r| r.owner == *name).count(),
                    usage: s.plugin().usage(),
                }
            })
            .collect()
    }
}

/// Starts the plugin thread: the plugins of `dir` (for each `NAME.json` manifest, `NAME.wasm`
/// and the optional `NAME.config.json`), then whatever [`Command`]s bring (the store's plugins).
/// The hook tables are emptied first (a plugin rewrites its rules as it starts). A plugin that
/// cannot start is logged and left out; the others run. Every [`EVENT_INTERVAL`] each plugin
/// gets the sampled headers and a timer.
pub fn run(
    dir: Option<&std::path::Path>,
    trust: Trust,
    mut maps: hooks::AyaHookMaps,
    mut feed: Feed,
    commands: std::sync::mpsc::Receiver<Command>,
) {
    if let Err(e) = maps.clear() {
        tracing::error!(error = %e, "emptying the hook tables failed: no plugins");
        return;
    }
    let host = match PluginHost::new(trust) {
        Ok(h) => match feed.kv.take() {
            Some(db) => h.with_kv(db),
            None => h,
        },
        Err(e) => {
            tracing::error!(error = %e, "the plugin host did not start");
            return;
        }
    };
    maps.set_gateways(feed.gateways.clone());
    let queries = match pinned_queries(&feed.pin) {
        Ok(q) => Some(q),
        Err(e) => {
            tracing::warn!(error = %e, "plugins' route and interface queries will answer nothing");
            None
        }
    };
    let mut manager = Manager::new(host, HookTables::new(maps), queries);
    if let Some(dir) = dir {
        start_dir(&mut manager, dir);
    }
    let mut t = PluginThread { manager, from_store: std::collections::BTreeSet::new() };
    let spawned = thread::Builder::new().name("sluice-plugins".into()).spawn(move || {
        // Third-party code: not at the priority the daemon may have given its own threads.
        if let Err(e) = sluice_dataplane::set_thread_nice(PLUGIN_NICE) {
            tracing::debug!(error = %e, "could not set the plugin thread's priority");
        }
        let mut ticks = 0u32;
        let mut gateways_seen = feed.gateways.version();
        let mut commands = Some(commands);
        loop {
            // Commands are taken as they come; events once an interval.
            let due = Instant::now() + EVENT_INTERVAL;
            loop {
                let left = due.saturating_duration_since(Instant::now());
                let Some(rx) = &commands else {
                    thread::sleep(left);
                    break;
                };
                match rx.recv_timeout(left) {
                    Ok(cmd) => t.command(cmd),
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => break,
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => commands = None,
                }
            }
            ticks = ticks.wrapping_add(1);
            let version = feed.gateways.version();
            if version != gateways_seen {
                gateways_seen = version;
                if let Err(e) = t.manager.sink_mut().refresh_steering() {
                    tracing::error!(error = %e, "rewriting the steer rules failed");
                }
            }
            let events = gather_events(&mut feed, ticks);
            for (name, e) in t.manager.dispatch(&events) {
                tracing::warn!(plugin = name, error = %e, "plugin quarantined");
            }
            for name in t.manager.restart_due() {
                tracing::info!(plugin = name, "plugin restarted");
            }
        }
    });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "the plugin thread did not start");
    }
}
