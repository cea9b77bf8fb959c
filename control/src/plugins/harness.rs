//! The local harness: a plugin run without a router (`sluice plugin run`), its events read
//! from a file and its operations applied to hook tables in memory, so that an author sees
//! what it would do.

use serde::{Deserialize, Serialize};

use sluice_dataplane::hooks::{self, HookOp, HookTables};

use super::{
    CounterEvent, Event, FlowSample, LogLine, Manifest, PluginError, PluginHost, RouteChange, Trust,
};

/// An event as the local harness reads it from a JSON file (`sluice plugin run --events`):
/// `{"route": {"prefix": "192.0.2.0/24", "added": true}}`, `{"timer": 1700000000000}`,
/// `{"sample": {"ifindex": 2, "len": 64, "proto": 17, "src": "192.0.2.1", "dst": "198.51.100.1",
/// "sport": 1234, "dport": 53, "tcp-flags": 0, "every": 1}}` (the last two may be left out;
/// `tcp_flags`, the name before 2026-12-07, is read too),
/// `{"counters": [{"interface": "eth1", "reason": "forwarded",
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
        /// TCP's flags byte (SYN 2, ACK 16...); 0 when left out. `tcp-flags`, as the contract
        /// names it.
        #[serde(default, rename = "tcp-flags", alias = "tcp_flags")]
        tcp_flags: u8,
        /// One sample stands for this many packets; 1 when left out.
        #[serde(default = "one")]
        every: u32,
    },
    /// A counter snapshot.
    Counters(Vec<ScriptedCounter>),
}

const fn one() -> u32 {
    1
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
            ScriptedEvent::Sample {
                ifindex,
                len,
                proto,
                src,
                dst,
                sport,
                dport,
                tcp_flags,
                every,
            } => Self::Sample(FlowSample {
                ifindex,
                len,
                proto,
                src,
                dst,
                sport,
                dport,
                tcp_flags,
                every,
            }),
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
/// it on a router). A signed manifest's signature is checked against the publisher key it names;
/// whether a router trusts that key is the router's question.
pub fn harness(
    manifest: Manifest,
    wasm: &[u8],
    config: &str,
    batches: &[Vec<Event>],
) -> Result<HarnessRun, PluginError> {
    let publisher: Vec<String> = manifest.publisher.iter().cloned().collect();
    let host = PluginHost::new(Trust::new(&publisher, true)?)?;
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
    let log = plugin.log_lines();
    Ok(HarnessRun { calls, rules, log })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_files_use_the_contracts_names_and_still_read_the_old_ones() {
        let sample = |flags: &str| {
            format!(
                r#"{{"sample": {{"ifindex": 2, "len": 60, "proto": 6, "src": "192.0.2.7",
                "dst": "198.51.100.1", "sport": 40000, "dport": 443, {flags}"every": 64}}}}"#
            )
        };
        for flags in [r#""tcp-flags": 2, "#, r#""tcp_flags": 2, "#] {
            let e: ScriptedEvent = serde_json::from_str(&sample(flags)).expect(flags);
            let Event::Sample(s) = Event::from(e) else { panic!("a sample") };
            assert_eq!((s.tcp_flags, s.every), (2, 64), "{flags}");
        }
        let e: ScriptedEvent = serde_json::from_str(&sample("")).expect("without flags");
        let Event::Sample(s) = Event::from(e) else { panic!("a sample") };
        assert_eq!(s.tcp_flags, 0, "left out: 0");
    }
}
