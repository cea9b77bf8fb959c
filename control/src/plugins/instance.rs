//! One plugin's instance: its store (WASI with nothing granted, memory limits, its log and
//! key-value store, the host functions of the contract) and its calls, each under the
//! manifest's deadline, whose results are checked against the manifest before anything is
//! applied.

use std::{
    collections::{BTreeMap, VecDeque},
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Instant,
};

use ipnet::IpNet;
use serde::Serialize;
use wasmtime::{Store, StoreLimits, component::ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use sluice_dataplane::hooks::{self, HookOp};

use super::{
    Event, Manifest, PluginError, RouteLookup, TICK, Table,
    host::bindings::{
        Plugin as Bindings,
        sluice::plugin::{host as wit_host, types as wit},
    },
    now_ms,
};

/// Log lines kept per plugin.
const LOG_LINES: usize = 1000;

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

pub(super) fn push_log(log: &Log, level: &'static str, message: String) {
    let mut l = log.lock().expect("log lock");
    if l.len() == LOG_LINES {
        l.pop_front();
    }
    l.push_back(LogLine { at_ms: now_ms(), level, message });
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

/// A loaded plugin.
pub struct Plugin {
    pub(super) manifest: Manifest,
    pub(super) store: Store<HostState>,
    pub(super) instance: Bindings,
    pub(super) log: Log,
    pub(super) usage: Usage,
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

pub(super) fn deadline_ticks(ms: u64) -> u64 {
    (ms.saturating_mul(1000) / TICK.as_micros() as u64).max(1) + 1
}

/// A trap as the error it is: a deadline (epoch interruption) or anything else.
pub(super) fn classify(e: &wasmtime::Error, call: &'static str, deadline_ms: u64) -> PluginError {
    if matches!(e.downcast_ref::<wasmtime::Trap>(), Some(wasmtime::Trap::Interrupt)) {
        return PluginError::Timeout { call, deadline_ms };
    }
    let message = match e.downcast_ref::<wasmtime::Trap>() {
        Some(t) => t.to_string(),
        None => format!("{e:#}"),
    };
    PluginError::Trap { call, message }
}

/// What a plugin's store holds.
pub(super) struct HostState {
    pub(super) wasi: WasiCtx,
    pub(super) table: ResourceTable,
    pub(super) limits: Limits,
    pub(super) log: Log,
    pub(super) kv: Kv,
    pub(super) kv_quota: usize,
    pub(super) routes: Option<RouteLookup>,
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

/// A plugin's key-value store: a sled tree of its own when the router has a state directory
/// (it outlives restarts and new versions; sled writes it out within half a second), else a map
/// in memory for the instance's life.
pub(super) enum Kv {
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
pub(super) struct Limits {
    pub(super) inner: StoreLimits,
    pub(super) memory_bytes: usize,
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
