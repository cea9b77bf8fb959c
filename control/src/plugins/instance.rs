//! One plugin's instance: its store (WASI with nothing granted, memory limits, its log and
//! key-value store, the host functions of the contract) and its calls, each under the
//! manifest's deadline, whose results are checked against the manifest before anything is
//! applied.

use std::{
    collections::VecDeque,
    net::IpAddr,
    panic::{self, AssertUnwindSafe},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use ipnet::IpNet;
use serde::Serialize;
use wasmtime::{Store, StoreLimits, component::ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use sluice_dataplane::hooks::{self, HookOp};
use sluice_store::kv::{KvError, KvStore};

use super::{
    Event, LastLog, Manifest, PluginError, RouteLookup, TICK, Table,
    error::MAX_REASON,
    host::bindings::{
        Plugin as Bindings,
        sluice::plugin::{host as wit_host, types as wit},
    },
    now_ms,
    util::{clip_marked, panic_message},
};

/// Log lines kept per plugin.
const LOG_LINES: usize = 1000;
/// Longest log message kept, bytes; a longer one is cut (at a character boundary) and marked.
pub(super) const MAX_LOG_MESSAGE: usize = 4096;
/// Longest piece of a plugin's text (a prefix, an address, a key) quoted in a message, bytes.
const MAX_QUOTED: usize = 256;

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
    // A panic elsewhere while the lock was held leaves the lines as they were: still a log.
    let mut l = log.lock().unwrap_or_else(PoisonError::into_inner);
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
    /// Why it may not be entered again: the host panicked in one of its calls.
    pub(super) broken: Option<String>,
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

    /// Its log's lines, oldest first.
    pub fn log_lines(&self) -> Vec<LogLine> {
        self.log.lock().unwrap_or_else(PoisonError::into_inner).iter().cloned().collect()
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
        self.call("init", |instance, store| instance.call_init(store, config))
    }

    /// Calls `handle` with a batch of events.
    pub fn handle(&mut self, events: &[Event]) -> Result<Vec<HookOp>, PluginError> {
        self.call("handle", |instance, store| instance.call_handle(store, events))
    }

    /// One call under the manifest's deadline, its result checked; a panic of the host while
    /// serving it (in wasmtime, a host function, the checking) is this plugin's failure only.
    fn call(
        &mut self,
        call: &'static str,
        enter: impl FnOnce(
            &Bindings,
            &mut Store<HostState>,
        ) -> wasmtime::Result<Result<Vec<wit::Op>, String>>,
    ) -> Result<Vec<HookOp>, PluginError> {
        if let Some(reason) = &self.broken {
            return Err(PluginError::Quarantined(reason.clone()));
        }
        start_deadline(&mut self.store, self.manifest.deadline_ms);
        self.store.data_mut().said.clear();
        let started = Instant::now();
        // Unwind safety: after a panic the store may be left mid-call, so the instance is
        // marked broken below and never entered again (the supervisor starts a fresh one);
        // the log's lock is taken poisoned or not; nothing else outlives the call.
        let result = panic::catch_unwind(AssertUnwindSafe(|| {
            let r = enter(&self.instance, &mut self.store);
            finish(&self.manifest, call, r)
        }));
        self.account(started);
        let said: Vec<String> = self.store.data_mut().said.drain(..).collect();
        match result {
            Ok(Ok(ops)) => Ok(ops),
            Ok(Err(e)) => Err(e.with_last_log(said)),
            Err(payload) => {
                let message = clip_marked(&panic_message(&*payload), MAX_REASON);
                let e = PluginError::Panic { call, message, last_log: LastLog::default() }
                    .with_last_log(said);
                self.broken = Some(e.to_string());
                Err(e)
            }
        }
    }
}

/// What a call returned, checked against the manifest: the guest's error, a trap, or its
/// operations as hook table operations.
fn finish(
    manifest: &Manifest,
    call: &'static str,
    r: wasmtime::Result<Result<Vec<wit::Op>, String>>,
) -> Result<Vec<HookOp>, PluginError> {
    let ops = match r {
        Ok(Ok(ops)) => ops,
        Ok(Err(message)) => {
            return Err(PluginError::Guest { call, message: clip_marked(&message, MAX_REASON) });
        }
        Err(e) => return Err(classify(&e, call, manifest.deadline_ms)),
    };
    check_ops(manifest, ops)
}

/// A plugin's operations as hook table operations: at most its manifest's number, each on a
/// table its manifest declares, every prefix and address parsed. What the tables hold against
/// them (host bits, bounds, another plugin's rules) is the tables' to say.
pub(super) fn check_ops(
    manifest: &Manifest,
    ops: Vec<wit::Op>,
) -> Result<Vec<HookOp>, PluginError> {
    if ops.len() > manifest.max_ops_per_call {
        return Err(PluginError::TooManyOps { count: ops.len(), max: manifest.max_ops_per_call });
    }
    ops.into_iter().enumerate().map(|(i, op)| convert(manifest, i, op)).collect()
}

/// A contract operation as a hook table operation, if its manifest allows its table.
fn convert(manifest: &Manifest, index: usize, op: wit::Op) -> Result<HookOp, PluginError> {
    // What the plugin wrote is quoted cut to size: a reason stays a sentence.
    let quoted = |s: &str| format!("{:?}", clip_marked(s, MAX_QUOTED));
    let prefix = |s: &str| -> Result<IpNet, PluginError> {
        s.parse().map_err(|_| PluginError::Invalid {
            index,
            message: format!("{} is not a prefix (like 192.0.2.0/24 or 2001:db8::/32)", quoted(s)),
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
        wit::Op::RemoveFilter((d, p)) => {
            (Table::Filter, HookOp::RemoveFilter { direction: direction(d), prefix: prefix(&p)? })
        }
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
                        message: format!("{} is not an IP address", quoted(&h.via)),
                    })?;
                    Ok(hooks::SteerHop { via, weight: h.weight })
                })
                .collect::<Result<_, PluginError>>()?;
            (Table::Steer, HookOp::SetSteer { prefix: prefix(&r.prefix)?, next_hops })
        }
        wit::Op::RemoveSteer(p) => (Table::Steer, HookOp::RemoveSteer { prefix: prefix(&p)? }),
    };
    if !manifest.tables.contains(&table) {
        return Err(PluginError::Undeclared { index, table });
    }
    Ok(op)
}

/// Starts a call's deadline, `ms` from now: the time is kept in the store, and the epoch
/// deadline set to reach it ([`on_epoch_deadline`] checks it against the clock).
pub(super) fn start_deadline(store: &mut Store<HostState>, ms: u64) {
    store.data_mut().deadline = Some(Instant::now() + Duration::from_millis(ms));
    store.set_epoch_deadline(ticks_for(Duration::from_millis(ms)));
}

/// Ticks of [`TICK`] that cover `d`, at least one.
fn ticks_for(d: Duration) -> u64 {
    u64::try_from(d.as_micros().div_ceil(TICK.as_micros())).unwrap_or(u64::MAX).max(1)
}

/// When a call's epoch deadline comes: the call ends (a trap, [`wasmtime::Trap::Interrupt`])
/// if its deadline has passed by the clock, else it goes on until the ticks left. The epoch
/// follows the clock ([`super::host`]'s ticker), but a call that began while the ticker was
/// late would otherwise end early by that much.
#[expect(
    clippy::needless_pass_by_value,
    clippy::unnecessary_wraps,
    reason = "the signature of wasmtime's `Store::epoch_deadline_callback`"
)]
pub(super) fn on_epoch_deadline(
    store: wasmtime::StoreContextMut<'_, HostState>,
) -> wasmtime::Result<wasmtime::UpdateDeadline> {
    let left = store
        .data()
        .deadline
        .map_or(Duration::ZERO, |at| at.saturating_duration_since(Instant::now()));
    Ok(if left.is_zero() {
        wasmtime::UpdateDeadline::Interrupt
    } else {
        wasmtime::UpdateDeadline::Continue(ticks_for(left))
    })
}

/// A trap as the error it is: a deadline (epoch interruption) or anything else.
pub(super) fn classify(e: &wasmtime::Error, call: &'static str, deadline_ms: u64) -> PluginError {
    if matches!(e.downcast_ref::<wasmtime::Trap>(), Some(wasmtime::Trap::Interrupt)) {
        return PluginError::Timeout { call, deadline_ms, last_log: LastLog::default() };
    }
    let message = match e.downcast_ref::<wasmtime::Trap>() {
        Some(t) => t.to_string(),
        None => clip_marked(&format!("{e:#}"), MAX_REASON),
    };
    PluginError::Trap { call, message, last_log: LastLog::default() }
}

/// What a plugin's store holds.
pub(super) struct HostState {
    pub(super) wasi: WasiCtx,
    pub(super) table: ResourceTable,
    pub(super) limits: Limits,
    pub(super) log: Log,
    /// What the plugin logged in the current call, its last [`LastLog::LINES`] lines: quoted
    /// if the call fails.
    pub(super) said: VecDeque<String>,
    pub(super) kv: Kv,
    pub(super) kv_quota: usize,
    pub(super) routes: Option<RouteLookup>,
    /// When the current call must have ended, by the clock.
    pub(super) deadline: Option<Instant>,
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
        if self.said.len() == LastLog::LINES {
            self.said.pop_front();
        }
        self.said.push_back(clip_marked(&message, MAX_REASON));
        push_log(&self.log, level, clip_marked(&message, MAX_LOG_MESSAGE));
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
        self.kv.lock().unwrap_or_else(PoisonError::into_inner).get(&key).map(<[u8]>::to_vec)
    }

    fn kv_set(&mut self, key: String, value: Vec<u8>) -> Result<(), String> {
        let mut kv = self.kv.lock().unwrap_or_else(PoisonError::into_inner);
        kv.set(key, value, self.kv_quota).map_err(|e| {
            if !matches!(e, KvError::Quota { .. }) {
                push_log(&self.log, "host", format!("kv-set: {e}"));
            }
            e.to_string()
        })
    }
}

/// A plugin's key-value store: its file when the router has a state directory (it outlives
/// restarts and new versions; [`sluice_store::kv`]), else in memory for the instance's life.
pub(super) type Kv = Arc<Mutex<KvStore>>;

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

#[cfg(test)]
mod tests {
    //! The host-call boundary fed what a hostile plugin could send: text with multi-byte
    //! characters across every limit, huge lengths, bytes that are not UTF-8 made into text,
    //! prefixes and addresses that almost parse, numbers at their extremes. Nothing may panic.

    use std::{net::IpAddr, sync::Arc};

    use sluice_dataplane::hooks::{HookTables, MemoryHookMaps};
    use wasmtime::StoreLimitsBuilder;
    use wit_host::Host as _;

    use super::*;
    use crate::plugins::{InterfaceInfo, Queries, RouteInfo};

    /// A dataplane that answers every query.
    struct Answers;

    impl Queries for Answers {
        fn route(&self, addr: IpAddr) -> Option<RouteInfo> {
            Some(RouteInfo { action: "forward".into(), next_hops: vec![addr] })
        }
        fn interfaces(&self) -> Vec<InterfaceInfo> {
            vec![InterfaceInfo {
                name: "eth1".into(),
                ifindex: 2,
                xdp_mode: "native".into(),
                up: true,
                mtu: 1500,
            }]
        }
    }

    fn host_state(routes: Option<RouteLookup>) -> HostState {
        HostState {
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
            limits: Limits { inner: StoreLimitsBuilder::new().build(), memory_bytes: 0 },
            log: Arc::new(Mutex::new(VecDeque::new())),
            said: VecDeque::new(),
            kv: Arc::new(Mutex::new(KvStore::memory())),
            kv_quota: 1 << 20,
            routes,
            deadline: None,
        }
    }

    /// xorshift64*: the same inputs on every run, so that a failure can be replayed.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Characters of every UTF-8 length, and those prefixes and addresses are made of.
    const PIECES: &[&str] = &[
        "a",
        "0",
        "1",
        "9",
        "25",
        "255",
        "256",
        "/",
        "//",
        ".",
        ":",
        "::",
        "%",
        "-",
        "+",
        " ",
        "é",
        "€",
        "𝄞",
        "\u{0}",
        "\n",
        "\u{7f}",
        "\u{feff}",
        "\u{202e}",
        "٣",
        "０",
        "x",
        "/33",
        "/129",
        "/-1",
        "/99999999999999999999",
        "192.0.2.0/24",
        "2001:db8::/32",
        "::ffff:",
        "fe80::1%eth0",
        "0x10",
        "[::1]",
        "1.2.3.4",
        "ffff:",
    ];

    /// The texts fed to every host call.
    fn texts() -> Vec<String> {
        let mut rng = Rng(0x5eed_0f51_u64);
        let mut out: Vec<String> = Vec::new();
        // A multi-byte character across every byte around the log's limit and the reasons'.
        for limit in [MAX_LOG_MESSAGE, MAX_REASON, MAX_QUOTED] {
            for ch in ['é', '€', '𝄞'] {
                for at in limit - 4..=limit + 1 {
                    out.push(format!("{}{ch}{}", "a".repeat(at), "b".repeat(5000 - at)));
                }
            }
        }
        // Huge.
        out.push("€".repeat(1 << 20));
        out.push(format!("{}/8", "1".repeat(1 << 20)));
        out.push(format!("10.0.0.0/{}", "9".repeat(1 << 16)));
        out.push("\u{0}".repeat(1 << 16));
        out.push(String::new());
        // Bytes that are not UTF-8, as text (the component model lets only UTF-8 through).
        for _ in 0..500 {
            let bytes: Vec<u8> = (0..rng.below(64)).map(|_| rng.next() as u8).collect();
            out.push(String::from_utf8_lossy(&bytes).into_owned());
        }
        // Almost prefixes and addresses.
        for _ in 0..20_000 {
            out.push((0..rng.below(12)).map(|_| PIECES[rng.below(PIECES.len())]).collect());
        }
        out
    }

    fn ops_on(text: &str, rng: &mut Rng) -> Vec<wit::Op> {
        let direction = if rng.next() & 1 == 0 { wit::Direction::Src } else { wit::Direction::Dst };
        let number = |rng: &mut Rng| match rng.below(4) {
            0 => 0,
            1 => u32::MAX,
            _ => rng.next() as u32,
        };
        let hops = (0..rng.below(20))
            .map(|i| wit::SteerHop {
                via: if i % 2 == 0 { text.to_owned() } else { format!("10.0.0.{i}") },
                weight: [0, 1, 1000, 1001, u16::MAX][rng.below(5)],
            })
            .collect();
        vec![
            wit::Op::SetFilter(wit::FilterRule {
                direction,
                prefix: text.to_owned(),
                action: wit::Action::Drop,
            }),
            wit::Op::RemoveFilter((direction, text.to_owned())),
            wit::Op::SetRateLimit(wit::RateLimit {
                prefix: text.to_owned(),
                rate_pps: number(rng),
                burst: number(rng),
            }),
            wit::Op::RemoveRateLimit(text.to_owned()),
            wit::Op::SetSampling(number(rng)),
            wit::Op::SetSteer(wit::SteerRule { prefix: text.to_owned(), next_hops: hops }),
            wit::Op::RemoveSteer(text.to_owned()),
        ]
    }

    #[test]
    fn nothing_a_plugin_sends_or_returns_makes_the_host_panic() {
        let manifest = Manifest {
            tables: vec![Table::Filter, Table::RateLimit, Table::Sample, Table::Steer],
            kv_bytes: 1 << 20,
            ..Manifest::new("fuzzed", "0.1.0", &[], b"")
        };
        let mut tables = HookTables::new(MemoryHookMaps::default());
        let mut rng = Rng(7);
        let texts = texts();
        let (mut accepted, mut refused) = (0usize, 0usize);
        for routes in [None, Some(Arc::new(Answers) as RouteLookup)] {
            let mut host = host_state(routes);
            for text in &texts {
                // Each input on its own, so that a panic names it.
                let fed = panic::catch_unwind(AssertUnwindSafe(|| {
                    host.log(wit_host::Level::Error, text.clone());
                    let _ = host.kv_set(text.clone(), text.as_bytes().to_vec());
                    let _ = host.kv_get(text.clone());
                    let _ = host.lookup_route(text.clone());
                    let _ = host.interfaces();
                    for op in ops_on(text, &mut rng) {
                        match check_ops(&manifest, vec![op]) {
                            Ok(ops) => match tables.apply("fuzzed", &ops) {
                                Ok(()) => accepted += 1,
                                Err(e) => {
                                    refused += 1;
                                    let _ = e.to_string();
                                }
                            },
                            Err(e) => {
                                refused += 1;
                                let reason = e.to_string();
                                // Quoted escaped: a control character is up to 6 bytes.
                                assert!(reason.len() < 7 * MAX_QUOTED, "a sentence: {reason}");
                            }
                        }
                    }
                }));
                let shown = clip_marked(text, 80);
                assert!(fed.is_ok(), "the host panicked on {shown:?} ({} bytes)", text.len());
            }
            let log = host.log.lock().expect("log");
            assert!(log.iter().all(|l| l.message.len() <= MAX_LOG_MESSAGE), "log lines cut");
            assert!(host.said.len() <= LastLog::LINES);
            assert!(host.said.iter().all(|l| l.len() <= MAX_REASON));
        }
        println!(
            "host-call boundary: {} texts, {} operations accepted and {} refused, no panic",
            texts.len(),
            accepted,
            refused
        );
    }

    #[test]
    fn a_multi_byte_character_across_the_log_limit_is_cut_before_it() {
        let mut host = host_state(None);
        for ch in ['é', '€', '𝄞'] {
            // The character starts at the last byte kept: the bug that stopped every plugin.
            let message = format!("{}{ch}{}", "a".repeat(4095), "b".repeat(900));
            host.log(wit_host::Level::Info, message.clone());
            let log = host.log.lock().expect("log");
            let line = &log.back().expect("a line").message;
            assert!(line.len() <= MAX_LOG_MESSAGE && line.ends_with('…'), "{}", line.len());
            assert!(message.starts_with(line.trim_end_matches('…')));
        }
    }

    #[test]
    fn a_quota_is_never_passed_whatever_the_sizes() {
        let mut host = host_state(None);
        host.kv_quota = 100;
        assert!(host.kv_set("k".into(), vec![0; 99]).is_ok());
        assert!(host.kv_set("k".into(), vec![0; 100]).is_err());
        assert!(host.kv_set("€".repeat(40), vec![0; 1]).is_err(), "keys count too");
        host.kv_quota = usize::MAX;
        assert!(host.kv_set("j".into(), vec![0; 10]).is_ok(), "no overflow at the top");
    }
}
