//! `ddos-guard`: blocks the sources that send more than a packet rate, and lifts each block
//! after a cool-down.
//!
//! It asks for 1 in `sample_every` packets' headers, and adds up for each source between two
//! timer events the packets its samples stand for (each sample's `every`: the rate it was taken
//! at, which is `sample_every` once the request is in force); its rate is that sum over the
//! interval.
//! A source over `max_pps` gets a drop rule on its address (/32 or /128) until `block_ms` after
//! the timer that saw it; a source already blocked that is still over the rate when its block
//! ends is blocked again at the next timer.
//!
//! Configuration (all optional): `{"max_pps": 1000, "sample_every": 64, "block_ms": 60000}`.

use std::{cell::RefCell, collections::BTreeMap};

use serde::Deserialize;
use sluice_plugin_sdk::{Action, Direction, Event, Guest, Level, Op, filter, log};

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Config {
    max_pps: u64,
    sample_every: u32,
    block_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self { max_pps: 1000, sample_every: 64, block_ms: 60_000 }
    }
}

#[derive(Default)]
struct State {
    config: Option<Config>,
    /// Packets per source since the last timer, as its samples stand for them.
    seen: BTreeMap<String, u64>,
    /// When the last timer fired, ms.
    last_timer: Option<u64>,
    /// Blocked sources (as prefixes) and when their block ends, ms.
    blocked: BTreeMap<String, u64>,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
}

fn host_prefix(addr: &str) -> String {
    if addr.contains(':') { format!("{addr}/128") } else { format!("{addr}/32") }
}

struct DdosGuard;

impl Guest for DdosGuard {
    fn init(config: String) -> Result<Vec<Op>, String> {
        let config: Config = if config.trim().is_empty() {
            Config::default()
        } else {
            serde_json::from_str(&config).map_err(|e| format!("configuration: {e}"))?
        };
        if config.sample_every == 0 || config.max_pps == 0 {
            return Err("configuration: sample_every and max_pps must be positive".into());
        }
        let every = config.sample_every;
        STATE.with_borrow_mut(|s| {
            *s = State { config: Some(config), ..State::default() };
        });
        Ok(vec![Op::SetSampling(every)])
    }

    fn handle(events: Vec<Event>) -> Result<Vec<Op>, String> {
        STATE.with_borrow_mut(|s| {
            let mut ops = Vec::new();
            for event in events {
                match event {
                    Event::Sample(sample) => {
                        *s.seen.entry(sample.src).or_default() += u64::from(sample.every.max(1));
                    }
                    Event::Timer(now) => ops.extend(tick(s, now)),
                    Event::Route(_) | Event::Counters(_) => {}
                }
            }
            Ok(ops)
        })
    }
}

/// At a timer: blocks the sources over the rate since the last one, lifts the blocks that ended.
fn tick(s: &mut State, now: u64) -> Vec<Op> {
    let Some(config) = &s.config else { return Vec::new() };
    let mut ops = Vec::new();
    let ended: Vec<String> =
        s.blocked.iter().filter(|(_, until)| **until <= now).map(|(p, _)| p.clone()).collect();
    for prefix in ended {
        s.blocked.remove(&prefix);
        log(Level::Info, &format!("unblocking {prefix}"));
        ops.push(Op::RemoveFilter((Direction::Src, prefix)));
    }
    if let Some(last) = s.last_timer {
        let interval = now.saturating_sub(last).max(1);
        for (src, packets) in std::mem::take(&mut s.seen) {
            let pps = packets.saturating_mul(1000) / interval;
            let prefix = host_prefix(&src);
            if pps > config.max_pps && !s.blocked.contains_key(&prefix) {
                log(Level::Warn, &format!("blocking {src}: about {pps} packets/s"));
                ops.push(filter(Direction::Src, &prefix, Action::Drop));
                s.blocked.insert(prefix, now + config.block_ms);
            }
        }
    }
    s.seen.clear();
    s.last_timer = Some(now);
    ops
}

sluice_plugin_sdk::export!(DdosGuard);
