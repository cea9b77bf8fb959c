//! `sluice-bench-plugins`: the plugin host's costs, measured with the components `make plugins`
//! builds: compile, instantiate, `init`, and events to applied table operations.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use serde::Serialize;
use sluice::plugins::{
    Event, Manager, Manifest, PluginError, PluginHost, RouteChange, Table, Trust,
};
use sluice_dataplane::hooks::{HookTables, MemoryHookMaps};

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
        )
    }
}

/// Measures the plugin host with the components built by `make plugins` in `dir`:
/// `static_acl.wasm` and `hostile.wasm` (well behaved: it returns one rule per call).
pub fn bench(dir: &Path, rounds: usize) -> Result<BenchReport, PluginError> {
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
    let percentiles = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        let at = |p: usize| v[(v.len() * p / 100).min(v.len() - 1)];
        (at(50), at(99))
    };
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
    Ok(BenchReport {
        compile_ms,
        instantiate_us: percentiles(instantiate),
        init_us: percentiles(init),
        event_to_tables_us: percentiles(handle),
        rounds,
    })
}
