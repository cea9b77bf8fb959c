//! The plugin host: third-party WebAssembly components (the `sluice:plugin` contract in
//! `plugins/wit`) run sandboxed in wasmtime and return operations on the hook tables, which the
//! host validates and applies. A plugin never touches a map, a file or the network.
//!
//! - One engine for every plugin: Cranelift, the pooling allocator, epoch interruption (a
//!   ticker thread advances the epoch every [`TICK`]).
//! - A `Store` per plugin, its memory capped by `StoreLimits`, every call bounded by the
//!   manifest's deadline. WASI is linked only for what a component's standard library imports,
//!   with nothing granted: no directories, environment, arguments or network.
//! - What a plugin returns is checked before anything is applied: tables its manifest declares,
//!   at most its operations per call, prefixes that parse; then the hook tables' writer
//!   validates and applies the batch all or nothing.
//! - A trap, a timeout or invalid output quarantines the plugin with its reason; its failure
//!   policy decides whether its rules stay (fail-closed) or go (fail-open); it is restarted
//!   after a back-off that doubles with each failure.

use std::{
    collections::{BTreeMap, VecDeque},
    net::IpAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, StoreLimits,
    StoreLimitsBuilder, Strategy,
    component::{Component, Linker, ResourceTable},
};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use sluice_dataplane::hooks::{self, HookError, HookMaps, HookOp, HookTables};

mod error;
mod manifest;
mod queries;
mod util;

pub use error::PluginError;
pub use manifest::{FailurePolicy, Manifest, Table, Trust, public_key};
use manifest::{MAX_MEMORY, check_manifest};
pub use queries::{InterfaceInfo, Queries, RouteInfo, RouteLookup, pinned_queries};
pub use util::{hex, now_ms, sha256_hex, unhex};

/// The host side of the contract, generated from `plugins/wit`.
mod bindings {
    wasmtime::component::bindgen!({
        world: "plugin",
        path: "../plugins/wit",
    });
}

use bindings::{
    Plugin as Bindings, PluginPre as BindingsPre,
    sluice::plugin::{host as wit_host, types as wit},
};

/// How often the engine's epoch advances: the resolution of call deadlines.
pub const TICK: Duration = Duration::from_millis(2);
/// Log lines kept per plugin.
const LOG_LINES: usize = 1000;
/// The nice value of the plugin thread: that of a process started plainly, whatever priority the
/// daemon's own threads run at (`sluice daemon --nice`).
const PLUGIN_NICE: libc::c_int = 0;
/// Restarts back off from this, doubling, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_mins(5);
/// Plugins at most at once (pooling allocator slots).
const MAX_PLUGINS: u32 = 64;
/// One line of a plugin's log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LogLine {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// `debug`, `info`, `warn`, `error`, or `host` for what the host says about the plugin.
    pub level: &'static str,
    /// The message.
    pub message: String,
}

/// A plugin's log, shared with whoever shows it.
pub type Log = Arc<Mutex<VecDeque<LogLine>>>;

fn push_log(log: &Log, level: &'static str, message: String) {
    let mut l = log.lock().expect("log lock");
    if l.len() == LOG_LINES {
        l.pop_front();
    }
    l.push_back(LogLine { at_ms: now_ms(), level, message });
}

/// A plugin's key-value store: a sled tree of its own when the router has a state directory
/// (it outlives restarts and new versions; sled writes it out within half a second), else a map
/// in memory for the instance's life.
enum Kv {
    Memory(BTreeMap<String, Vec<u8>>),
    Sled(sled::Tree),
}

impl Kv {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        match self {
            Self::Memory(m) => Ok(m.get(key).cloned()),
            Self::Sled(t) => {
                t.get(key).map(|v| v.map(|v| v.to_vec())).map_err(|e| format!("store: {e}"))
            }
        }
    }

    /// Bytes of keys and values held, but for `except`'s.
    fn used_except(&self, except: &str) -> Result<usize, String> {
        match self {
            Self::Memory(m) => {
                Ok(m.iter().filter(|(k, _)| *k != except).map(|(k, v)| k.len() + v.len()).sum())
            }
            Self::Sled(t) => t.iter().try_fold(0, |n, item| {
                let (k, v) = item.map_err(|e| format!("store: {e}"))?;
                Ok(if &*k == except.as_bytes() { n } else { n + k.len() + v.len() })
            }),
        }
    }

    fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), String> {
        match self {
            Self::Memory(m) => {
                m.insert(key, value);
                Ok(())
            }
            Self::Sled(t) => t.insert(key, value).map(drop).map_err(|e| format!("store: {e}")),
        }
    }
}

/// The store's limits, recording the memory the plugin holds (its high-water mark).
struct Limits {
    inner: StoreLimits,
    memory_bytes: usize,
}

impl wasmtime::ResourceLimiter for Limits {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = self.inner.memory_growing(current, desired, maximum)?;
        if allowed {
            self.memory_bytes = self.memory_bytes.max(desired);
        }
        Ok(allowed)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.inner.table_growing(current, desired, maximum)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.inner.memory_grow_failed(error)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.inner.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.inner.instances()
    }

    fn tables(&self) -> usize {
        self.inner.tables()
    }

    fn memories(&self) -> usize {
        self.inner.memories()
    }
}

/// What a plugin has used: calls, time in them, memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// Calls of `init` and `handle`.
    pub calls: u64,
    /// Time spent in them, µs.
    pub busy_us: u64,
    /// The last call's time, µs.
    pub last_call_us: u64,
    /// The longest call's time, µs.
    pub max_call_us: u64,
    /// Linear memory the plugin grew to, bytes.
    pub memory_bytes: u64,
    /// Memory it may grow to (its manifest's `memory_mib`), bytes.
    pub memory_limit_bytes: u64,
}

/// What a plugin's store holds.
struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: Limits,
    log: Log,
    kv: Kv,
    kv_quota: usize,
    routes: Option<RouteLookup>,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl wit::Host for HostState {}

impl wit_host::Host for HostState {
    fn log(&mut self, level: wit_host::Level, message: String) {
        let level = match level {
            wit_host::Level::Debug => "debug",
            wit_host::Level::Info => "info",
            wit_host::Level::Warn => "warn",
            wit_host::Level::Error => "error",
        };
        let mut message = message;
        message.truncate(4096);
        push_log(&self.log, level, message);
    }

    fn now_ms(&mut self) -> u64 {
        now_ms()
    }

    fn lookup_route(&mut self, address: String) -> Option<wit_host::RouteInfo> {
        let addr: IpAddr = address.parse().ok()?;
        let r = self.routes.as_ref()?.route(addr)?;
        Some(wit_host::RouteInfo {
            action: r.action,
            next_hops: r.next_hops.iter().map(ToString::to_string).collect(),
        })
    }

    fn interfaces(&mut self) -> Vec<wit_host::InterfaceInfo> {
        let Some(q) = &self.routes else { return Vec::new() };
        q.interfaces()
            .into_iter()
            .map(|i| wit_host::InterfaceInfo {
                name: i.name,
                ifindex: i.ifindex,
                xdp_mode: i.xdp_mode,
                up: i.up,
                mtu: i.mtu,
            })
            .collect()
    }

    fn kv_get(&mut self, key: String) -> Option<Vec<u8>> {
        match self.kv.get(&key) {
            Ok(v) => v,
            Err(e) => {
                push_log(&self.log, "host", format!("kv-get {key:?}: {e}"));
                None
            }
        }
    }

    fn kv_set(&mut self, key: String, value: Vec<u8>) -> Result<(), String> {
        let used = self.kv.used_except(&key)?;
        if used + key.len() + value.len() > self.kv_quota {
            return Err(format!("over the quota of {} bytes", self.kv_quota));
        }
        self.kv.set(key, value)
    }
}

/// The engine every plugin runs in, and its epoch ticker.
pub struct PluginHost {
    trust: Trust,
    engine: Engine,
    linker: Arc<Linker<HostState>>,
    stop: Arc<AtomicBool>,
    kv: Option<sled::Db>,
}

impl PluginHost {
    /// Makes the engine (Cranelift, pooling allocator, epoch interruption) and starts the
    /// ticker. Only plugins `trust` accepts are loaded.
    pub fn new(trust: Trust) -> Result<Self, PluginError> {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(MAX_PLUGINS)
            .total_core_instances(MAX_PLUGINS * 4)
            .total_memories(MAX_PLUGINS * 2)
            .total_tables(MAX_PLUGINS * 4)
            .total_stacks(MAX_PLUGINS)
            .max_memory_size(MAX_MEMORY);
        let mut config = Config::new();
        config
            .strategy(Strategy::Cranelift)
            .wasm_component_model(true)
            .epoch_interruption(true)
            // Deep recursion ends in a trap, not in the host's stack.
            .max_wasm_stack(512 << 10)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(|e| PluginError::Load(format!("{e:#}")))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .map_err(|e| PluginError::Load(format!("{e:#}")))?;
        Bindings::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut linker, |s| s)
            .map_err(|e| PluginError::Load(format!("{e:#}")))?;
        let stop = Arc::new(AtomicBool::new(false));
        let (ticker_engine, ticker_stop) = (engine.weak(), Arc::clone(&stop));
        thread::Builder::new()
            .name("sluice-epoch".into())
            .spawn(move || {
                while !ticker_stop.load(Ordering::Relaxed) {
                    thread::sleep(TICK);
                    match ticker_engine.upgrade() {
                        Some(e) => e.increment_epoch(),
                        None => break,
                    }
                }
            })
            .map_err(|e| PluginError::Load(format!("epoch ticker: {e}")))?;
        Ok(Self { trust, engine, linker: Arc::new(linker), stop, kv: None })
    }

    /// Keeps the plugins' key-value stores in `db`, one tree per plugin name, instead of in
    /// memory.
    #[must_use]
    pub fn with_kv(mut self, db: sled::Db) -> Self {
        self.kv = Some(db);
        self
    }

    /// Deletes a plugin's key-value store (the plugin is removed for good).
    pub fn forget_kv(&self, name: &str) -> Result<(), PluginError> {
        if let Some(db) = &self.kv {
            db.drop_tree(kv_tree(name)).map_err(|e| PluginError::Load(format!("store: {e}")))?;
        }
        Ok(())
    }

    /// Loads a plugin: checks the manifest and the component's hash, compiles and instantiates
    /// it in a store of its own. `init` is not called yet.
    pub fn load(
        &self,
        manifest: Manifest,
        wasm: &[u8],
        routes: Option<RouteLookup>,
    ) -> Result<Plugin, PluginError> {
        let compiled = self.compile(manifest, wasm)?;
        self.instantiate(&compiled, routes)
    }

    /// Checks the manifest and the component's hash, and compiles it (the slow part: a
    /// restart or a second instance reuses it).
    pub fn compile(&self, manifest: Manifest, wasm: &[u8]) -> Result<Compiled, PluginError> {
        check_manifest(&manifest)?;
        self.trust.check(&manifest)?;
        let found = sha256_hex(wasm);
        if !found.eq_ignore_ascii_case(&manifest.sha256) {
            return Err(PluginError::Hash { expected: manifest.sha256.clone(), found });
        }
        let component =
            Component::new(&self.engine, wasm).map_err(|e| PluginError::Load(format!("{e:#}")))?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| PluginError::Load(format!("{e:#}")))?;
        let pre = BindingsPre::new(pre).map_err(|e| PluginError::Load(format!("{e:#}")))?;
        Ok(Compiled { manifest, pre })
    }

    /// A fresh instance of a compiled plugin, in a store of its own.
    pub fn instantiate(
        &self,
        compiled: &Compiled,
        routes: Option<RouteLookup>,
    ) -> Result<Plugin, PluginError> {
        let manifest = compiled.manifest.clone();
        let log: Log = Arc::new(Mutex::new(VecDeque::new()));
        let kv = match &self.kv {
            Some(db) => Kv::Sled(
                db.open_tree(kv_tree(&manifest.name))
                    .map_err(|e| PluginError::Load(format!("its key-value store: {e}")))?,
            ),
            None => Kv::Memory(BTreeMap::new()),
        };
        let state = HostState {
            // Nothing granted: no preopened directories, environment, arguments, network,
            // stdin; what the plugin prints is dropped (it has `log`).
            wasi: WasiCtx::builder()
                .allow_tcp(false)
                .allow_udp(false)
                .allow_ip_name_lookup(false)
                .build(),
            table: ResourceTable::new(),
            limits: Limits {
                inner: StoreLimitsBuilder::new()
                    .memory_size(manifest.memory_mib << 20)
                    .instances(16)
                    .tables(16)
                    .memories(4)
                    .trap_on_grow_failure(true)
                    .build(),
                memory_bytes: 0,
            },
            log: Arc::clone(&log),
            kv,
            kv_quota: manifest.kv_bytes,
            routes,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(deadline_ticks(manifest.deadline_ms));
        let instance = compiled
            .pre
            .instantiate(&mut store)
            .map_err(|e| classify(&e, "instantiate", manifest.deadline_ms))?;
        push_log(&log, "host", format!("loaded {} {}", manifest.name, manifest.version));
        Ok(Plugin { manifest, store, instance, log, usage: Usage::default() })
    }
}

/// The sled tree of a plugin's key-value store.
fn kv_tree(name: &str) -> String {
    format!("kv/{name}")
}

impl std::fmt::Debug for PluginHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginHost").finish_non_exhaustive()
    }
}

impl Drop for PluginHost {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn deadline_ticks(ms: u64) -> u64 {
    (ms.saturating_mul(1000) / TICK.as_micros() as u64).max(1) + 1
}

/// A trap as the error it is: a deadline (epoch interruption) or anything else.
fn classify(e: &wasmtime::Error, call: &'static str, deadline_ms: u64) -> PluginError {
    if matches!(e.downcast_ref::<wasmtime::Trap>(), Some(wasmtime::Trap::Interrupt)) {
        return PluginError::Timeout { call, deadline_ms };
    }
    let message = match e.downcast_ref::<wasmtime::Trap>() {
        Some(t) => t.to_string(),
        None => format!("{e:#}"),
    };
    PluginError::Trap { call, message }
}

/// A plugin compiled and linked, ready to be instantiated again and again.
#[derive(Clone)]
pub struct Compiled {
    manifest: Manifest,
    pre: BindingsPre<HostState>,
}

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compiled").field("manifest", &self.manifest).finish_non_exhaustive()
    }
}

/// A loaded plugin.
pub struct Plugin {
    manifest: Manifest,
    store: Store<HostState>,
    instance: Bindings,
    log: Log,
    usage: Usage,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin").field("manifest", &self.manifest).finish_non_exhaustive()
    }
}

impl Plugin {
    /// Its manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Its log.
    pub fn log(&self) -> Log {
        Arc::clone(&self.log)
    }

    /// What it has used so far.
    pub fn usage(&self) -> Usage {
        Usage {
            memory_bytes: self.store.data().limits.memory_bytes as u64,
            memory_limit_bytes: (self.manifest.memory_mib as u64) << 20,
            ..self.usage
        }
    }

    fn account(&mut self, started: Instant) {
        let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.usage.calls += 1;
        self.usage.busy_us = self.usage.busy_us.saturating_add(us);
        self.usage.last_call_us = us;
        self.usage.max_call_us = self.usage.max_call_us.max(us);
    }

    /// Calls `init` with the plugin's configuration; returns its operations, checked against
    /// its manifest.
    pub fn init(&mut self, config: &str) -> Result<Vec<HookOp>, PluginError> {
        self.store.set_epoch_deadline(deadline_ticks(self.manifest.deadline_ms));
        let started = Instant::now();
        let r = self.instance.call_init(&mut self.store, config);
        self.account(started);
        self.finish("init", r)
    }

    /// Calls `handle` with a batch of events.
    pub fn handle(&mut self, events: &[Event]) -> Result<Vec<HookOp>, PluginError> {
        self.store.set_epoch_deadline(deadline_ticks(self.manifest.deadline_ms));
        let started = Instant::now();
        let r = self.instance.call_handle(&mut self.store, events);
        self.account(started);
        self.finish("handle", r)
    }

    fn finish(
        &mut self,
        call: &'static str,
        r: wasmtime::Result<Result<Vec<wit::Op>, String>>,
    ) -> Result<Vec<HookOp>, PluginError> {
        let ops = match r {
            Ok(Ok(ops)) => ops,
            Ok(Err(message)) => return Err(PluginError::Guest { call, message }),
            Err(e) => return Err(classify(&e, call, self.manifest.deadline_ms)),
        };
        if ops.len() > self.manifest.max_ops_per_call {
            return Err(PluginError::TooManyOps {
                count: ops.len(),
                max: self.manifest.max_ops_per_call,
            });
        }
        ops.into_iter().enumerate().map(|(i, op)| self.convert(i, op)).collect()
    }

    /// A contract operation as a hook table operation, if its manifest allows its table.
    fn convert(&self, index: usize, op: wit::Op) -> Result<HookOp, PluginError> {
        let prefix = |s: &str| -> Result<IpNet, PluginError> {
            s.parse().map_err(|_| PluginError::Invalid {
                index,
                message: format!("{s:?} is not a prefix (like 192.0.2.0/24 or 2001:db8::/32)"),
            })
        };
        let direction = |d: wit::Direction| match d {
            wit::Direction::Src => hooks::Direction::Src,
            wit::Direction::Dst => hooks::Direction::Dst,
        };
        let (table, op) = match op {
            wit::Op::SetFilter(r) => (
                Table::Filter,
                HookOp::SetFilter {
                    direction: direction(r.direction),
                    prefix: prefix(&r.prefix)?,
                    action: match r.action {
                        wit::Action::Drop => hooks::Action::Drop,
                        wit::Action::Pass => hooks::Action::Pass,
                        wit::Action::Count => hooks::Action::Count,
                    },
                },
            ),
            wit::Op::RemoveFilter((d, p)) => (
                Table::Filter,
                HookOp::RemoveFilter { direction: direction(d), prefix: prefix(&p)? },
            ),
            wit::Op::SetRateLimit(r) => (
                Table::RateLimit,
                HookOp::SetRateLimit {
                    prefix: prefix(&r.prefix)?,
                    rate_pps: r.rate_pps,
                    burst: r.burst,
                },
            ),
            wit::Op::RemoveRateLimit(p) => {
                (Table::RateLimit, HookOp::RemoveRateLimit { prefix: prefix(&p)? })
            }
            wit::Op::SetSampling(every) => (Table::Sample, HookOp::SetSampling { every }),
            wit::Op::SetSteer(r) => {
                let next_hops = r
                    .next_hops
                    .iter()
                    .map(|h| {
                        let via = h.via.parse().map_err(|_| PluginError::Invalid {
                            index,
                            message: format!("{:?} is not an IP address", h.via),
                        })?;
                        Ok(hooks::SteerHop { via, weight: h.weight })
                    })
                    .collect::<Result<_, PluginError>>()?;
                (Table::Steer, HookOp::SetSteer { prefix: prefix(&r.prefix)?, next_hops })
            }
            wit::Op::RemoveSteer(p) => (Table::Steer, HookOp::RemoveSteer { prefix: prefix(&p)? }),
        };
        if !self.manifest.tables.contains(&table) {
            return Err(PluginError::Undeclared { index, table });
        }
        Ok(op)
    }
}

/// Where a plugin's operations go: the hook tables.
pub trait TableSink {
    /// Applies one plugin's batch, all or nothing.
    fn apply(&mut self, owner: &str, ops: &[HookOp]) -> Result<(), HookError>;
    /// Moves a plugin to exactly these rules, without a gap.
    fn replace_owner(&mut self, owner: &str, ops: &[HookOp]) -> Result<(), HookError>;
    /// Removes everything a plugin wrote.
    fn remove_owner(&mut self, owner: &str) -> Result<(), HookError>;
}

impl<M: HookMaps> TableSink for HookTables<M> {
    fn apply(&mut self, owner: &str, ops: &[HookOp]) -> Result<(), HookError> {
        Self::apply(self, owner, ops)
    }
    fn replace_owner(&mut self, owner: &str, ops: &[HookOp]) -> Result<(), HookError> {
        Self::replace_owner(self, owner, ops)
    }
    fn remove_owner(&mut self, owner: &str) -> Result<(), HookError> {
        Self::remove_owner(self, owner)
    }
}

/// A plugin's state, as the operator sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum Status {
    /// Running.
    Running,
    /// Stopped after a failure; restarted when `retry_in_ms` has passed.
    Quarantined {
        /// Why.
        reason: String,
        /// Failures in a row.
        failures: u32,
        /// Until the next restart.
        retry_in_ms: u64,
    },
}

/// One plugin under supervision: its component, configuration and state.
#[derive(Debug)]
pub struct Supervised {
    plugin: Plugin,
    compiled: Compiled,
    config: String,
    /// Why it is quarantined and until when.
    quarantine: Option<(String, Instant)>,
    /// Failures since it last handled events successfully: the back-off doubles with them.
    failures: u32,
}

impl Supervised {
    /// Its state.
    pub fn status(&self) -> Status {
        match &self.quarantine {
            None => Status::Running,
            Some((reason, until)) => Status::Quarantined {
                reason: reason.clone(),
                failures: self.failures,
                retry_in_ms: until.saturating_duration_since(Instant::now()).as_millis() as u64,
            },
        }
    }

    /// The plugin.
    pub fn plugin(&self) -> &Plugin {
        &self.plugin
    }
}

/// The plugins of a router, applying what they return to `sink`.
pub struct Manager<S: TableSink> {
    host: PluginHost,
    sink: S,
    plugins: BTreeMap<String, Supervised>,
    routes: Option<RouteLookup>,
}

impl<S: TableSink> std::fmt::Debug for Manager<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager").field("plugins", &self.plugins.keys()).finish_non_exhaustive()
    }
}

impl<S: TableSink> Manager<S> {
    /// A manager with no plugins.
    pub fn new(host: PluginHost, sink: S, routes: Option<RouteLookup>) -> Self {
        Self { host, sink, plugins: BTreeMap::new(), routes }
    }

    /// The tables, for reading.
    pub fn sink(&self) -> &S {
        &self.sink
    }

    /// The tables, for maintenance outside plugin calls.
    pub fn sink_mut(&mut self) -> &mut S {
        &mut self.sink
    }

    /// Plugins by name.
    pub fn plugins(&self) -> &BTreeMap<String, Supervised> {
        &self.plugins
    }

    /// Adds a plugin, or replaces the one of the same name without a gap in its rules. A
    /// plugin that cannot be loaded or whose `init` fails is refused and nothing changes.
    pub fn add(
        &mut self,
        manifest: Manifest,
        wasm: &[u8],
        config: &str,
    ) -> Result<(), PluginError> {
        let name = manifest.name.clone();
        let compiled = self.host.compile(manifest, wasm)?;
        let mut plugin = self.host.instantiate(&compiled, self.routes.clone())?;
        let ops = plugin.init(config)?;
        self.sink.replace_owner(&name, &ops)?;
        push_log(&plugin.log, "host", format!("started with {} operations", ops.len()));
        self.plugins.insert(
            name,
            Supervised {
                plugin,
                compiled,
                config: config.to_owned(),
                quarantine: None,
                failures: 0,
            },
        );
        Ok(())
    }

    /// Removes a plugin and everything it wrote.
    pub fn remove(&mut self, name: &str) -> Result<bool, PluginError> {
        if self.plugins.remove(name).is_none() {
            return Ok(false);
        }
        self.sink.remove_owner(name)?;
        Ok(true)
    }

    /// Removes a plugin for good: everything it wrote, and its key-value store.
    pub fn forget(&mut self, name: &str) -> Result<bool, PluginError> {
        let removed = self.remove(name)?;
        self.host.forget_kv(name)?;
        Ok(removed)
    }

    /// Hands a batch of events to every running plugin and applies what each returns. A
    /// plugin that fails is quarantined; the others go on. Returns the failures.
    pub fn dispatch(&mut self, events: &[Event]) -> Vec<(String, PluginError)> {
        let mut failed = Vec::new();
        for (name, s) in &mut self.plugins {
            if s.quarantine.is_some() {
                continue;
            }
            let result = s
                .plugin
                .handle(events)
                .and_then(|ops| self.sink.apply(name, &ops).map_err(PluginError::from));
            match result {
                Ok(()) => s.failures = 0,
                Err(e) => {
                    quarantine(&mut self.sink, name, s, &e);
                    failed.push((name.clone(), e));
                }
            }
        }
        failed
    }

    /// Restarts the quarantined plugins whose back-off has passed: a fresh instance, `init`
    /// again. Returns the names restarted.
    pub fn restart_due(&mut self) -> Vec<String> {
        let now = Instant::now();
        let mut restarted = Vec::new();
        for (name, s) in &mut self.plugins {
            let Some((_, until)) = &s.quarantine else { continue };
            if now < *until {
                continue;
            }
            let failures = s.failures;
            let attempt =
                self.host.instantiate(&s.compiled, self.routes.clone()).and_then(|mut p| {
                    let ops = p.init(&s.config)?;
                    self.sink.replace_owner(name, &ops)?;
                    Ok(p)
                });
            match attempt {
                Ok(p) => {
                    // The log goes on across instances.
                    let log = Arc::clone(&s.plugin.log);
                    s.plugin = Plugin { log, ..p };
                    push_log(&s.plugin.log, "host", format!("restarted after {failures} failures"));
                    s.quarantine = None;
                    restarted.push(name.clone());
                }
                Err(e) => {
                    quarantine(&mut self.sink, name, s, &e);
                }
            }
        }
        restarted
    }
}

/// Stops a failed plugin: quarantined with its reason, its rules removed or kept as its policy
/// says, its restart pushed back.
fn quarantine<S: TableSink>(sink: &mut S, name: &str, s: &mut Supervised, e: &PluginError) {
    s.failures += 1;
    let backoff = FIRST_BACKOFF.saturating_mul(1 << (s.failures - 1).min(16)).min(MAX_BACKOFF);
    push_log(
        &s.plugin.log,
        "host",
        format!("quarantined ({e}); restart in {} s", backoff.as_secs()),
    );
    if s.plugin.manifest.failure_policy == FailurePolicy::FailOpen
        && let Err(err) = sink.remove_owner(name)
    {
        push_log(&s.plugin.log, "host", format!("removing its rules failed: {err}"));
    }
    s.quarantine = Some((e.to_string(), Instant::now() + backoff));
}

pub use wit::{Counter as CounterEvent, Event, FlowSample, RouteChange};

/// An event as the local harness reads it from a JSON file (`sluice plugin run --events`):
/// `{"route": {"prefix": "192.0.2.0/24", "added": true}}`, `{"timer": 1700000000000}`,
/// `{"sample": {"ifindex": 2, "len": 64, "proto": 17, "src": "192.0.2.1", "dst": "198.51.100.1",
/// "sport": 1234, "dport": 53}}`, `{"counters": [{"interface": "eth1", "reason": "forwarded",
/// "packets": 10, "bytes": 640}]}`.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum ScriptedEvent {
    /// A route change.
    Route {
        /// The prefix.
        prefix: String,
        /// Added (or removed).
        added: bool,
    },
    /// A timer firing at this time, ms since the Unix epoch.
    Timer(u64),
    /// A sampled packet.
    Sample {
        /// Ingress ifindex.
        ifindex: u32,
        /// Frame length.
        len: u32,
        /// IP protocol.
        proto: u8,
        /// Source address.
        src: String,
        /// Destination address.
        dst: String,
        /// Source port.
        sport: u16,
        /// Destination port.
        dport: u16,
    },
    /// A counter snapshot.
    Counters(Vec<ScriptedCounter>),
}

/// A counter in a [`ScriptedEvent::Counters`].
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptedCounter {
    /// Interface name.
    pub interface: String,
    /// Reason name.
    pub reason: String,
    /// Packets.
    pub packets: u64,
    /// Bytes.
    pub bytes: u64,
}

impl From<ScriptedEvent> for Event {
    fn from(e: ScriptedEvent) -> Self {
        match e {
            ScriptedEvent::Route { prefix, added } => Self::Route(RouteChange { prefix, added }),
            ScriptedEvent::Timer(at) => Self::Timer(at),
            ScriptedEvent::Sample { ifindex, len, proto, src, dst, sport, dport } => {
                Self::Sample(FlowSample { ifindex, len, proto, src, dst, sport, dport })
            }
            ScriptedEvent::Counters(c) => Self::Counters(
                c.into_iter()
                    .map(|c| CounterEvent {
                        interface: c.interface,
                        reason: c.reason,
                        packets: c.packets,
                        bytes: c.bytes,
                    })
                    .collect(),
            ),
        }
    }
}

/// What the local harness saw: each call's operations (or its failure), the tables after, and
/// the plugin's log.
#[derive(Debug, Serialize)]
pub struct HarnessRun {
    /// `init`, then one entry per batch of events.
    pub calls: Vec<HarnessCall>,
    /// The rules in the (in-memory) tables at the end.
    pub rules: Vec<hooks::RuleStatus>,
    /// The plugin's log.
    pub log: Vec<LogLine>,
}

/// One call of a harness run.
#[derive(Debug, Serialize)]
pub struct HarnessCall {
    /// `init` or `handle`.
    pub call: &'static str,
    /// The operations it returned and the tables accepted.
    pub ops: Vec<HookOp>,
    /// Why the call failed or the tables refused its operations, if they did.
    pub error: Option<String>,
}

/// Runs a plugin without a router: `init` with `config`, then `handle` with each batch, its
/// operations applied to tables in memory; stops at the first failure (which would quarantine
/// it on a router).
pub fn harness(
    manifest: Manifest,
    wasm: &[u8],
    config: &str,
    batches: &[Vec<Event>],
) -> Result<HarnessRun, PluginError> {
    let host = PluginHost::new(Trust::unsigned_allowed())?;
    let mut plugin = host.load(manifest, wasm, None)?;
    let name = plugin.manifest().name.clone();
    let mut tables = HookTables::new(hooks::MemoryHookMaps::default());
    let mut calls = Vec::new();
    let mut step = |call: &'static str, r: Result<Vec<HookOp>, PluginError>| {
        let (ops, error) = match r.and_then(|ops| {
            tables.apply(&name, &ops)?;
            Ok(ops)
        }) {
            Ok(ops) => (ops, None),
            Err(e) => (Vec::new(), Some(e.to_string())),
        };
        let failed = error.is_some();
        calls.push(HarnessCall { call, ops, error });
        !failed
    };
    let mut ok = step("init", plugin.init(config));
    for events in batches {
        if !ok {
            break;
        }
        ok = step("handle", plugin.handle(events));
    }
    let rules = tables.rules(None)?;
    let log = plugin.log().lock().expect("log lock").iter().cloned().collect();
    Ok(HarnessRun { calls, rules, log })
}

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
                let log =
                    self.manager.plugins().get(&name).map(|s| {
                        s.plugin().log().lock().expect("log lock").iter().cloned().collect()
                    });
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
