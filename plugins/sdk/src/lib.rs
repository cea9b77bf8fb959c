//! The Rust side of the `sluice:plugin` contract (`plugins/wit`), for plugin authors.
//!
//! A plugin implements [`Guest`] and exports it:
//!
//! ```ignore
//! use sluice_plugin_sdk::{Guest, Event, Op, filter, Direction, Action};
//! struct Mine;
//! impl Guest for Mine {
//!     fn init(config: String) -> Result<Vec<Op>, String> {
//!         Ok(vec![filter(Direction::Src, "192.0.2.0/24", Action::Drop)])
//!     }
//!     fn handle(_events: Vec<Event>) -> Result<Vec<Op>, String> { Ok(vec![]) }
//! }
//! sluice_plugin_sdk::export!(Mine);
//! ```
//! and is built with `cargo build --release --target wasm32-wasip2`.

/// The bindings `wit-bindgen` generates from the contract.
#[allow(missing_docs, reason = "generated code")]
pub mod bindings {
    wit_bindgen::generate!({
        world: "plugin",
        path: "../wit",
        pub_export_macro: true,
        default_bindings_module: "sluice_plugin_sdk::bindings",
    });
}

pub use bindings::sluice::plugin::host::{self, Level};
pub use bindings::sluice::plugin::types::{
    Action, Counter, Direction, FilterRule, FlowSample, RateLimit, RouteChange, SteerHop, SteerRule,
};
pub use bindings::{Event, Guest, Op, export};

/// A filter rule operation.
pub fn filter(direction: Direction, prefix: &str, action: Action) -> Op {
    Op::SetFilter(FilterRule { direction, prefix: prefix.to_owned(), action })
}

/// A rate rule operation.
pub fn rate_limit(prefix: &str, rate_pps: u32, burst: u32) -> Op {
    Op::SetRateLimit(RateLimit { prefix: prefix.to_owned(), rate_pps, burst })
}

/// A steer rule operation: the flows to `prefix` go to the gateways `(address, weight)`.
pub fn steer(prefix: &str, next_hops: &[(&str, u16)]) -> Op {
    Op::SetSteer(SteerRule {
        prefix: prefix.to_owned(),
        next_hops: next_hops
            .iter()
            .map(|(via, weight)| SteerHop { via: (*via).to_owned(), weight: *weight })
            .collect(),
    })
}

/// Writes to the plugin's log.
pub fn log(level: Level, message: &str) {
    host::log(level, message);
}
