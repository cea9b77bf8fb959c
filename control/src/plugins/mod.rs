//! The plugin host: third-party WebAssembly components (the `sluice:plugin` contract in
//! `plugins/wit`) run sandboxed in wasmtime and return operations on the hook tables, which the
//! host validates and applies. A plugin never touches a map, a file or the network.
//!
//! - One engine for every plugin: Cranelift, the pooling allocator, epoch interruption (a
//!   ticker thread keeps the epoch at the [`TICK`]s elapsed by the clock, and a call's end is
//!   checked against the clock when its epoch deadline comes, so a deadline fires on time on a
//!   loaded machine).
//! - A `Store` per plugin, its memory capped by `StoreLimits`, every call bounded by the
//!   manifest's deadline. WASI is linked only for what a component's standard library imports,
//!   with nothing granted: no directories, environment, arguments or network.
//! - What a plugin returns is checked before anything is applied: tables its manifest declares,
//!   at most its operations per call, prefixes that parse; then the hook tables' writer
//!   validates and applies the batch all or nothing.
//! - A trap, a timeout or invalid output quarantines the plugin with its reason (and the lines
//!   it logged last in that call: a Rust plugin's panic message); its failure policy decides
//!   whether its rules stay (fail-closed) or go (fail-open); it is restarted after a back-off
//!   that doubles with each failure.
//! - Nothing a plugin sends or returns can make the host panic: its text is cut at character
//!   boundaries and its numbers checked. Should the host panic anyway while serving one plugin
//!   (running it, answering its host calls, checking its output), that plugin alone is
//!   quarantined with the panic's message; should the plugin thread die, the daemon starts it
//!   again after a back-off.
//!
//! Its parts: [`Manifest`] and [`Trust`] (`manifest`) say what a plugin may do and who vouches
//! for it; the [`PluginHost`] (`host`) owns the engine and compiles components; a [`Plugin`]
//! (`instance`) is one instance in a store of its own, and its calls; the [`Manager`]
//! (`supervisor`) hands out events, quarantines and restarts; the [`Pool`] (`worker`) runs
//! each plugin on a thread of its own under a manager of its own, so that one plugin's long
//! call delays no other's events and no answer to the operator; [`harness()`] runs a plugin
//! without a router (`sluice plugin run`); [`run()`] (`thread`) starts the daemon's plugin
//! thread, which hands out events and commands to the pool and never waits for a plugin, and
//! which the daemon keeps running through its [`PluginThread`].

mod error;
mod harness;
mod host;
mod instance;
mod manifest;
mod queries;
mod supervisor;
mod thread;
mod util;
mod worker;

pub use error::{LastLog, PluginError};
pub use harness::{HarnessCall, HarnessRun, ScriptedCounter, ScriptedEvent, harness};
pub use host::{Compiled, CounterEvent, Event, FlowSample, PluginHost, RouteChange, TICK};
pub use instance::{Log, LogLine, Plugin, Usage};
pub use manifest::{FailurePolicy, MAX_RULES, Manifest, MaxRules, Table, Trust, public_key};
pub use queries::{InterfaceInfo, Queries, RouteInfo, RouteLookup, pinned_queries};
pub use supervisor::{Manager, Status, Supervised, TableSink};
pub use thread::{
    COUNTERS_EVERY, Command, EVENT_INTERVAL, Feed, HostReport, MAX_ROUTE_EVENTS, PluginDir,
    PluginInfo, PluginThread, QuarantinedPlugin, SharedReport, Wanted, run, wanted_from_dir,
    wanted_from_store,
};
pub use util::{hex, now_ms, sha256_hex, unhex};
pub use worker::{Pool, QUEUE_BATCHES};
