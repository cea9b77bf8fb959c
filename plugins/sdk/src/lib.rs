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
//!
//! A panic ends the call in a trap, which the router reports as "wasm `unreachable`
//! instruction executed"; [`export!`] first installs a panic hook that writes the panic's
//! message and place to the plugin's log, and the router quotes that line in the quarantine
//! reason.

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
pub use bindings::{Event, Guest, Op};

/// Exports a type implementing [`Guest`] as the plugin, with its panics logged
/// ([`log_panics`]) before they trap.
#[macro_export]
macro_rules! export {
    ($ty:ident) => {
        const _: () = {
            struct LoggingPanics;

            impl $crate::Guest for LoggingPanics {
                fn init(
                    config: ::std::string::String,
                ) -> ::std::result::Result<::std::vec::Vec<$crate::Op>, ::std::string::String>
                {
                    $crate::log_panics();
                    <$ty as $crate::Guest>::init(config)
                }

                fn handle(
                    events: ::std::vec::Vec<$crate::Event>,
                ) -> ::std::result::Result<::std::vec::Vec<$crate::Op>, ::std::string::String>
                {
                    $crate::log_panics();
                    <$ty as $crate::Guest>::handle(events)
                }
            }

            $crate::bindings::export! { LoggingPanics with_types_in $crate::bindings }
        };
    };
}

/// Writes a panic's message and place to the plugin's log (at `error`) before it traps:
/// without it the router sees only the trap. [`export!`] calls it; a plugin exporting through
/// [`bindings::export!`] itself may call it at the start of each call. Only the first call
/// installs the hook.
pub fn log_panics() {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            // "panicked at src/lib.rs:12:9:\nmessage", on one line.
            let line = info.to_string().replace('\n', " ");
            host::log(Level::Error, &line);
        }));
    });
}

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
