//! `static-acl`: filter rules from the plugin's configuration, replaced whenever the
//! configuration changes (the host calls `init` again with the new one).
//!
//! Configuration: `{"rules": [{"direction": "src", "prefix": "192.0.2.0/24", "action": "drop"}]}`
//! with `direction` `src` or `dst` and `action` `drop`, `pass` or `count`.

use serde::Deserialize;
use sluice_plugin_sdk::{Action, Direction, Event, Guest, Level, Op, filter, log};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    rules: Vec<Rule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    direction: String,
    prefix: String,
    action: String,
}

struct StaticAcl;

impl Guest for StaticAcl {
    fn init(config: String) -> Result<Vec<Op>, String> {
        let config: Config =
            serde_json::from_str(&config).map_err(|e| format!("configuration: {e}"))?;
        let mut ops = Vec::new();
        for (i, r) in config.rules.iter().enumerate() {
            let direction = match r.direction.as_str() {
                "src" => Direction::Src,
                "dst" => Direction::Dst,
                other => return Err(format!("rules[{i}].direction: {other:?} is not src or dst")),
            };
            let action = match r.action.as_str() {
                "drop" => Action::Drop,
                "pass" => Action::Pass,
                "count" => Action::Count,
                other => {
                    return Err(format!("rules[{i}].action: {other:?} is not drop, pass or count"));
                }
            };
            ops.push(filter(direction, &r.prefix, action));
        }
        log(Level::Info, &format!("{} rules", ops.len()));
        Ok(ops)
    }

    fn handle(_events: Vec<Event>) -> Result<Vec<Op>, String> {
        Ok(Vec::new())
    }
}

sluice_plugin_sdk::export!(StaticAcl);
