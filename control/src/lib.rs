//! Sluice, the product: the daemon, the `sluice` CLI, the REST API and console, the plugin host
//! and first-boot provisioning. It stands on `sluice-dataplane` (the kernel adapters) and
//! `sluice-core` (the pure logic), and keeps its configuration in `sluice-store`.

pub mod api;
pub mod auth;
pub mod client;
pub mod console;
pub mod daemon;
pub mod plugins;
pub mod provision;
pub mod show;
