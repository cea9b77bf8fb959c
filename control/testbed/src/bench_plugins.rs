//! `sluice-bench-plugins`: the plugin host's costs, measured with the components `make plugins`
//! builds: compile, instantiate, `init`, and events to applied table operations, for one plugin
//! called in place ([`Manager`]) and for several plugins each on its worker thread ([`Pool`], the
//! daemon's path), one of them slow.

use std::{
    collections::HashMap,
    net::IpAddr,
    path::Path,
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use ipnet::IpNet;
use serde::Serialize;
use sluice::plugins::{
    Event, Manager, Manifest, PluginError, PluginHost, Pool, RouteChange, Table, Trust, Wanted,
};
use sluice_common::{
    Counter,
    hooks::{FilterRule, HookConfig, RateRule, SteerRule, Summary},
};
use sluice_dataplane::hooks::{Direction, HookError, HookMaps, HookTables, MemoryHookMaps};

/// What `sluice-bench-plugins` measured.
#[derive(Debug, Serialize)]
pub struct BenchReport {
    /// Compiling `static-acl` once, ms.
    pub compile_ms: f64,
    /// Instantiating a compiled plugin in a fresh store (pooling allocator): p50, p99, µs.
    pub instantiate_us: (f64, f64),
    /// `init` of `static-acl` with 10 rules, applied to the tables: p50, p99, µs.
    pub init_us: (f64, f64),
    /// A batch of 10 events handed to a plugin and its operations applied to the (in-memory)
    /// tables: p50, p99, µs.
    pub event_to_tables_us: (f64, f64),
    /// Rounds of each measurement.
    pub rounds: usize,
    /// Events to the hook maps through the plugin pool, each plugin on its worker thread.
    pub pool: Vec<PoolReport>,
}

/// One configuration of the plugin pool: a batch of events handed out ([`Pool::dispatch`], as
/// the daemon's plugin thread does each round) to when each fast plugin's rule for it is
/// written into the hook maps (in memory).
#[derive(Debug, Serialize)]
pub struct PoolReport {
    /// Plugins loaded, the slow one included.
    pub plugins: usize,
    /// Whether one of them spends [`SLOW_MS`] of CPU in each call (it falls behind and loses
    /// batches, as designed).
    pub slow: bool,
    /// Batches handed out.
    pub rounds: usize,
    /// Event to the fast plugins' map writes, over every fast plugin and round: p50, p99, µs.
    pub event_to_map_us: (f64, f64),
    /// The slowest of them, µs.
    pub max_us: f64,
    /// Rounds in which some fast plugin's write did not come within a second.
    pub missed: usize,
    /// Events the slow plugin lost while behind (its `dropped_events`).
    pub slow_dropped_events: u64,
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "plugin host, {} rounds: compile {:.1} ms; instantiate p50 {:.1} us, p99 {:.1} us; \
             init (10 rules, applied) p50 {:.1} us, p99 {:.1} us; \
             10 events -> operations applied p50 {:.1} us, p99 {:.1} us",
            self.rounds,
            self.compile_ms,
            self.instantiate_us.0,
            self.instantiate_us.1,
            self.init_us.0,
            self.init_us.1,
            self.event_to_tables_us.0,
            self.event_to_tables_us.1
        )?;
        for p in &self.pool {
            write!(
                f,
                "\npool, {} plugin(s){}, {} rounds: event -> map update p50 {:.1} us, \
                 p99 {:.1} us, max {:.1} us; {} missed",
                p.plugins,
                if p.slow {
                    let dropped = p.slow_dropped_events;
                    format!(" (one spending {SLOW_MS} ms a call: {dropped} of its events dropped)")
                } else {
                    String::new()
                },
                p.rounds,
                p.event_to_map_us.0,
                p.event_to_map_us.1,
                p.max_us,
                p.missed
            )?;
        }
        Ok(())
    }
}

/// What the slow plugin of the pool's measurement spends in each call, ms.
pub const SLOW_MS: u64 = 100;
/// How often the pool's measurement hands out a batch (the daemon: once a second).
const POOL_INTERVAL: Duration = Duration::from_millis(10);

fn percentiles(mut v: Vec<f64>) -> (f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    v.sort_by(f64::total_cmp);
    let at = |p: usize| v[(v.len() * p / 100).min(v.len() - 1)];
    (at(50), at(99))
}

/// Measures the plugin host with the components built by `make plugins` in `dir`:
/// `static_acl.wasm` and `hostile.wasm` (well behaved: it returns one rule per call; in the
/// pool, echoing routes and, for the slow plugin, spending [`SLOW_MS`] in each call).
/// The pool's measurement hands out `pool_rounds` batches to each configuration.
pub fn bench(dir: &Path, rounds: usize, pool_rounds: usize) -> Result<BenchReport, PluginError> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read(&path).map_err(|e| {
            PluginError::Load(format!(
                "{}: {e} (build the plugins with `make plugins`)",
                path.display()
            ))
        })
    };
    let (acl, behaving) = (read("static_acl.wasm")?, read("hostile.wasm")?);
    let manifest = |name: &str, wasm: &[u8]| Manifest::new(name, "0.1.0", &[Table::Filter], wasm);
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let host = PluginHost::new(Trust::unsigned_allowed())?;
    let started = Instant::now();
    let compiled = host.compile(manifest("static-acl", &acl), &acl)?;
    let compile_ms = started.elapsed().as_secs_f64() * 1e3;

    let config = serde_json::json!({
        "rules": (0..10).map(|i| serde_json::json!({
            "direction": "src", "prefix": format!("192.0.{i}.0/24"), "action": "drop"
        })).collect::<Vec<_>>()
    })
    .to_string();
    let mut tables = HookTables::new(MemoryHookMaps::default());
    let (mut instantiate, mut init) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let t = Instant::now();
        let mut p = host.instantiate(&compiled, None)?;
        instantiate.push(us(t.elapsed()));
        let t = Instant::now();
        let ops = p.init(&config)?;
        tables.replace_owner("static-acl", &ops)?;
        init.push(us(t.elapsed()));
    }

    let mut manager = Manager::new(host, tables, None);
    manager.add(manifest("behaving", &behaving), &behaving, "behave")?;
    let events: Vec<Event> = (0..10)
        .map(|i| Event::Route(RouteChange { prefix: format!("198.18.{i}.0/24"), added: true }))
        .collect();
    let mut handle = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        if let Some((_, e)) = manager.dispatch(&events).pop() {
            return Err(e);
        }
        handle.push(us(t.elapsed()));
    }
    let mut pool = Vec::new();
    for (plugins, slow) in [(1, false), (4, false), (4, true)] {
        pool.push(bench_pool(&behaving, plugins, slow, pool_rounds)?);
    }
    Ok(BenchReport {
        compile_ms,
        instantiate_us: percentiles(instantiate),
        init_us: percentiles(init),
        event_to_tables_us: percentiles(handle),
        rounds,
        pool,
    })
}

/// When each filter entry was last written: the hook maps in memory, stamped.
#[derive(Debug, Default)]
struct StampedMaps {
    maps: MemoryHookMaps,
    written: Arc<Mutex<HashMap<IpNet, Instant>>>,
}

impl HookMaps for StampedMaps {
    fn set_filter(
        &mut self,
        dir: Direction,
        prefix: IpNet,
        rule: FilterRule,
    ) -> Result<(), HookError> {
        self.maps.set_filter(dir, prefix, rule)?;
        let mut w = self.written.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        w.insert(prefix, Instant::now());
        Ok(())
    }
    fn del_filter(&mut self, dir: Direction, prefix: IpNet) -> Result<(), HookError> {
        self.maps.del_filter(dir, prefix)
    }
    fn set_rate(&mut self, prefix: IpNet, rule: RateRule) -> Result<(), HookError> {
        self.maps.set_rate(prefix, rule)
    }
    fn del_rate(&mut self, prefix: IpNet) -> Result<(), HookError> {
        self.maps.del_rate(prefix)
    }
    fn set_steer(&mut self, prefix: IpNet, rule: &SteerRule) -> Result<(), HookError> {
        self.maps.set_steer(prefix, rule)
    }
    fn del_steer(&mut self, prefix: IpNet) -> Result<(), HookError> {
        self.maps.del_steer(prefix)
    }
    fn nexthop_of(&self, via: IpAddr) -> Option<u32> {
        self.maps.nexthop_of(via)
    }
    fn set_config(&mut self, config: HookConfig) -> Result<(), HookError> {
        self.maps.set_config(config)
    }
    fn set_summary(&mut self, table: u32, value: &Summary) -> Result<(), HookError> {
        self.maps.set_summary(table, value)
    }
    fn counter(&self, rule: u32) -> Result<Counter, HookError> {
        self.maps.counter(rule)
    }
    fn reset_counter(&mut self, rule: u32) -> Result<(), HookError> {
        self.maps.reset_counter(rule)
    }
}

/// `plugins` plugins in a [`Pool`], each on its worker thread, the last one slow if `slow`:
/// each round hands out a route added (and the last round's removed) and a timer; each fast
/// plugin `k` writes a count rule on address `k` of the route's /24, and the time from the
/// hand-out to that write into the maps is taken.
fn bench_pool(
    wasm: &[u8],
    plugins: usize,
    slow: bool,
    rounds: usize,
) -> Result<PoolReport, PluginError> {
    let written = Arc::new(Mutex::new(HashMap::new()));
    let maps = StampedMaps { maps: MemoryHookMaps::default(), written: Arc::clone(&written) };
    let host = PluginHost::new(Trust::unsigned_allowed())?;
    let mut pool = Pool::new(host, HookTables::new(maps), None);
    let wasm = Arc::new(wasm.to_vec());
    let fast = if slow { plugins - 1 } else { plugins };
    for k in 0..plugins {
        let (name, config) = if k < fast {
            (format!("echo-{}", k + 1), format!("echo-host:{}", k + 1))
        } else {
            ("slow".to_owned(), format!("slow:{SLOW_MS}"))
        };
        let manifest = Manifest {
            deadline_ms: 10 * SLOW_MS,
            ..Manifest::new(&name, "0.1.0", &[Table::Filter], &wasm)
        };
        let w = Wanted { manifest, wasm: Arc::clone(&wasm), config, allow_match_all: false };
        pool.start_and_wait(w, "directory", Duration::from_mins(1))
            .map_err(|e| PluginError::Load(format!("{name}: {e}")))?;
    }
    let route = |i: usize, added: bool| {
        let prefix = format!("10.{}.{}.0/24", (i >> 8) & 255, i & 255);
        Event::Route(RouteChange { prefix, added })
    };
    let (mut latencies, mut missed) = (Vec::with_capacity(rounds * fast), 0);
    for i in 1..=rounds {
        let mut batch = vec![route(i, true)];
        if i > 1 {
            batch.push(route(i - 1, false));
        }
        batch.push(Event::Timer(i as u64));
        let expected: Vec<IpNet> = (1..=fast)
            .map(|k| format!("10.{}.{}.{k}/32", (i >> 8) & 255, i & 255).parse().expect("a prefix"))
            .collect();
        let sent = Instant::now();
        pool.dispatch(&batch);
        let mut got = Vec::new();
        while sent.elapsed() < Duration::from_secs(1) {
            {
                let w = written.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                got = expected.iter().filter_map(|p| w.get(p).copied()).collect();
            }
            if got.len() == expected.len() {
                break;
            }
            thread::sleep(Duration::from_micros(100));
        }
        if got.len() < expected.len() {
            missed += 1;
        }
        latencies
            .extend(got.iter().map(|at| at.saturating_duration_since(sent).as_secs_f64() * 1e6));
        thread::sleep(POOL_INTERVAL.saturating_sub(sent.elapsed()));
    }
    let slow_dropped_events =
        pool.list().into_iter().find(|p| p.name == "slow").map_or(0, |p| p.dropped_events);
    let max_us = latencies.iter().copied().fold(0.0, f64::max);
    Ok(PoolReport {
        plugins,
        slow,
        rounds,
        event_to_map_us: percentiles(latencies),
        max_us,
        missed,
        slow_dropped_events,
    })
}
