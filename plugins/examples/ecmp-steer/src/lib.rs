//! `ecmp-steer`: spreads the flows to destination prefixes over gateways in proportions the
//! operator chooses, whatever the routes say (unequal-cost load balancing, draining a link,
//! moving traffic to a new upstream step by step). Each flow stays on one gateway.
//!
//! Configuration:
//! `{"rules": [{"prefix": "203.0.113.0/24", "next-hops": [{"via": "10.0.1.2", "weight": 3},
//! {"via": "10.0.2.2", "weight": 1}]}]}` (the WIT's name, `next-hops`; `next_hops` is read too)
//!
//! A gateway carries traffic while it is the next hop of some route of the router (the router
//! knows its interface and MAC then); until it is, its share goes to the others. The rules are
//! written once, from the configuration; the router rewrites them as its next hops change.

use serde::Deserialize;
use sluice_plugin_sdk::{Event, Guest, Level, Op, log, steer};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    rules: Vec<Rule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    prefix: String,
    #[serde(rename = "next-hops", alias = "next_hops")]
    next_hops: Vec<Hop>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Hop {
    via: String,
    #[serde(default = "one")]
    weight: u16,
}

const fn one() -> u16 {
    1
}

struct EcmpSteer;

impl Guest for EcmpSteer {
    fn init(config: String) -> Result<Vec<Op>, String> {
        let config: Config =
            serde_json::from_str(&config).map_err(|e| format!("configuration: {e}"))?;
        let mut ops = Vec::new();
        for (i, r) in config.rules.iter().enumerate() {
            if r.next_hops.is_empty() {
                return Err(format!("rules[{i}].next-hops: at least one gateway is needed"));
            }
            if let Some(j) = r.next_hops.iter().position(|h| h.weight == 0) {
                return Err(format!(
                    "rules[{i}].next-hops[{j}].weight: 0 (remove the gateway instead)"
                ));
            }
            let hops: Vec<(&str, u16)> =
                r.next_hops.iter().map(|h| (h.via.as_str(), h.weight)).collect();
            let shares: Vec<String> =
                r.next_hops.iter().map(|h| format!("{} x{}", h.via, h.weight)).collect();
            log(Level::Info, &format!("{}: {}", r.prefix, shares.join(", ")));
            ops.push(steer(&r.prefix, &hops));
        }
        Ok(ops)
    }

    fn handle(_events: Vec<Event>) -> Result<Vec<Op>, String> {
        Ok(Vec::new())
    }
}

sluice_plugin_sdk::export!(EcmpSteer);
