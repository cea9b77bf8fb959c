//! `plugin-template`: a plugin to start from. It drops the sources its configuration names,
//! counts the traffic to the configured prefixes while the router has a route to them, and
//! logs what it sees.
//!
//! Configuration (both optional):
//! `{"drop": ["192.0.2.0/24"], "count": ["198.51.100.0/24"]}`.

use std::{cell::RefCell, collections::BTreeSet};

use serde::Deserialize;
use sluice_plugin_sdk::{Action, Direction, Event, Guest, Level, Op, filter, log};

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Config {
    /// Sources dropped for as long as the plugin runs.
    drop: Vec<String>,
    /// Destinations counted while a route to them exists.
    count: Vec<String>,
}

/// What the plugin keeps between calls. An instance lives until it fails or gets a new
/// configuration; then a fresh one starts with `init` (use `host::kv_set` for what must last).
#[derive(Default)]
struct State {
    config: Config,
    /// The `count` rules it holds: removing a rule it does not hold would fail the whole call.
    counting: BTreeSet<String>,
    /// Packets dropped by filters, at the last counter snapshot.
    dropped: u64,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
}

struct Template;

impl Guest for Template {
    fn init(config: String) -> Result<Vec<Op>, String> {
        // An error here refuses the plugin (or the new configuration) with this message.
        let config: Config =
            serde_json::from_str(&config).map_err(|e| format!("configuration: {e}"))?;
        let ops: Vec<Op> =
            config.drop.iter().map(|p| filter(Direction::Src, p, Action::Drop)).collect();
        log(Level::Info, &format!("dropping {} source prefixes", ops.len()));
        STATE.with_borrow_mut(|s| *s = State { config, ..State::default() });
        Ok(ops)
    }

    fn handle(events: Vec<Event>) -> Result<Vec<Op>, String> {
        STATE.with_borrow_mut(|s| {
            let mut ops = Vec::new();
            for event in events {
                match event {
                    Event::Route(r) if s.config.count.contains(&r.prefix) => {
                        if r.added && s.counting.insert(r.prefix.clone()) {
                            log(Level::Info, &format!("route to {} added: counting", r.prefix));
                            ops.push(filter(Direction::Dst, &r.prefix, Action::Count));
                        } else if !r.added && s.counting.remove(&r.prefix) {
                            log(Level::Info, &format!("route to {} removed", r.prefix));
                            ops.push(Op::RemoveFilter((Direction::Dst, r.prefix)));
                        }
                    }
                    Event::Counters(counters) => {
                        let dropped: u64 = counters
                            .iter()
                            .filter(|c| c.reason == "drop_filtered")
                            .map(|c| c.packets)
                            .sum();
                        if dropped != s.dropped {
                            log(Level::Info, &format!("{dropped} packets dropped by filters"));
                            s.dropped = dropped;
                        }
                    }
                    Event::Route(_) | Event::Sample(_) | Event::Timer(_) => {}
                }
            }
            Ok(ops)
        })
    }
}

sluice_plugin_sdk::export!(Template);
