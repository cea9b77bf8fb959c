//! The engine every plugin runs in: Cranelift with the pooling allocator and epoch
//! interruption, a ticker thread advancing the epoch, the linker with the contract's bindings
//! (generated from `plugins/wit`) and WASI, and the compiling and instantiating of components.

use std::{
    collections::VecDeque,
    panic::{self, AssertUnwindSafe},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use sluice_store::kv::{KvDir, KvStore};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, StoreLimitsBuilder,
    Strategy,
    component::{Component, Linker, ResourceTable},
};
use wasmtime_wasi::WasiCtx;

use super::{
    LastLog, Log, Manifest, Plugin, PluginError, RouteLookup, Trust, Usage,
    error::MAX_REASON,
    instance::{HostState, Limits, classify, on_epoch_deadline, push_log, start_deadline},
    manifest::{MAX_MEMORY, check_manifest},
    sha256_hex,
    util::{clip_marked, panic_message},
};

/// The host side of the contract, generated from `plugins/wit`.
pub(super) mod bindings {
    wasmtime::component::bindgen!({
        world: "plugin",
        path: "../plugins/wit",
    });
}

use bindings::{Plugin as Bindings, PluginPre as BindingsPre};

pub use bindings::sluice::plugin::types::{
    Counter as CounterEvent, Event, FlowSample, RouteChange,
};

/// How often the engine's epoch advances, by the clock: the resolution of call deadlines.
pub const TICK: Duration = Duration::from_millis(2);

/// Plugins at most at once (pooling allocator slots).
const MAX_PLUGINS: u32 = 64;

/// The engine every plugin runs in, and its epoch ticker. Clones share the engine: each
/// plugin's worker thread holds one; the ticker stops with the last of them and their stores.
#[derive(Clone)]
pub struct PluginHost {
    trust: Trust,
    engine: Engine,
    linker: Arc<Linker<HostState>>,
    kv: Option<KvDir>,
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
        let ticker_engine = engine.weak();
        thread::Builder::new()
            .name("sluice-epoch".into())
            .spawn(move || tick(&ticker_engine))
            .map_err(|e| PluginError::Load(format!("epoch ticker: {e}")))?;
        Ok(Self { trust, engine, linker: Arc::new(linker), kv: None })
    }

    /// Keeps the plugins' key-value stores in `dir`, a file per plugin name, instead of in
    /// memory.
    #[must_use]
    pub fn with_kv(mut self, dir: KvDir) -> Self {
        self.kv = Some(dir);
        self
    }

    /// Deletes a plugin's key-value store (the plugin is removed for good).
    pub fn forget_kv(&self, name: &str) -> Result<(), PluginError> {
        if let Some(dir) = &self.kv {
            dir.remove(name).map_err(|e| PluginError::Load(format!("store: {e}")))?;
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
        // Unwind safety: the engine is shared between threads by design, and what a panic
        // leaves half-built is dropped here.
        guarded("compile", || self.compile_unguarded(manifest, wasm))
    }

    fn compile_unguarded(&self, manifest: Manifest, wasm: &[u8]) -> Result<Compiled, PluginError> {
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
        // Unwind safety: the store is new, and dropped with whatever a panic left in it.
        guarded("instantiate", || self.instantiate_unguarded(compiled, routes, true))
    }

    /// Tries a compiled plugin with `config` without running it: a fresh instance whose
    /// key-value store is in memory (what its `init` writes there is thrown away, and the
    /// running instance's is not touched) calls `init`; what it returns is checked against its
    /// manifest and dropped.
    pub fn trial(
        &self,
        compiled: &Compiled,
        config: &str,
        routes: Option<RouteLookup>,
    ) -> Result<(), PluginError> {
        let mut plugin =
            guarded("instantiate", || self.instantiate_unguarded(compiled, routes, false))?;
        plugin.init(config).map(drop)
    }

    fn instantiate_unguarded(
        &self,
        compiled: &Compiled,
        routes: Option<RouteLookup>,
        keep_kv: bool,
    ) -> Result<Plugin, PluginError> {
        let manifest = compiled.manifest.clone();
        let log: Log = Arc::new(Mutex::new(VecDeque::new()));
        let kv = match &self.kv {
            Some(dir) if keep_kv => dir
                .store(&manifest.name)
                .map_err(|e| PluginError::Load(format!("its key-value store: {e}")))?,
            _ => Arc::new(Mutex::new(KvStore::memory())),
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
            said: VecDeque::new(),
            kv,
            kv_quota: manifest.kv_bytes,
            routes,
            deadline: None,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        store.epoch_deadline_callback(on_epoch_deadline);
        start_deadline(&mut store, manifest.deadline_ms);
        let instance = compiled
            .pre
            .instantiate(&mut store)
            .map_err(|e| classify(&e, "instantiate", manifest.deadline_ms))?;
        push_log(&log, "host", format!("loaded {} {}", manifest.name, manifest.version));
        Ok(Plugin { manifest, store, instance, log, usage: Usage::default(), broken: None })
    }
}

/// The epoch ticker: keeps the engine's epoch at the number of [`TICK`]s elapsed since it
/// started, by the clock, until the engine is gone. A sleep that overshoots (a loaded machine
/// wakes a sleeper late, by up to milliseconds each time) is caught up at the next wake-up
/// rather than added to every deadline: counting wake-ups instead let a 10 s deadline fire after
/// 10.5 to 15 s. A deadline so fires at most one late wake-up after its time.
fn tick(engine: &wasmtime::EngineWeak) {
    let started = Instant::now();
    let due = || started.elapsed().as_micros() / TICK.as_micros();
    let mut ticks: u128 = 0;
    loop {
        // Until the next tick's time, wherever this wake-up fell.
        let next_us = (due() + 1) * TICK.as_micros();
        let next = started + Duration::from_micros(u64::try_from(next_us).unwrap_or(u64::MAX));
        thread::sleep(next.saturating_duration_since(Instant::now()));
        let Some(e) = engine.upgrade() else { break };
        let now = due();
        while ticks < now {
            e.increment_epoch();
            ticks += 1;
        }
    }
}

/// `f`, where a panic is a failure of this plugin's `call` rather than the host's end.
fn guarded<T>(
    call: &'static str,
    f: impl FnOnce() -> Result<T, PluginError>,
) -> Result<T, PluginError> {
    panic::catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|payload| {
        let message = clip_marked(&panic_message(&*payload), MAX_REASON);
        Err(PluginError::Panic { call, message, last_log: LastLog::default() })
    })
}

impl std::fmt::Debug for PluginHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginHost").finish_non_exhaustive()
    }
}

/// A plugin compiled and linked, ready to be instantiated again and again.
#[derive(Clone)]
pub struct Compiled {
    pub(super) manifest: Manifest,
    pre: BindingsPre<HostState>,
}

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compiled").field("manifest", &self.manifest).finish_non_exhaustive()
    }
}
