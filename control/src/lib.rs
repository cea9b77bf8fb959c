//! Sluice, the product: the daemon, the `sluice` CLI, the REST API and console, the plugin host
//! and first-boot provisioning. It stands on `sluice-dataplane` (the kernel adapters) and
//! `sluice-core` (the pure logic), and keeps its configuration in `sluice-store`.

pub mod api;
pub mod auth;
pub mod bird;
pub mod client;
pub mod console;
pub mod daemon;
pub mod listener;
pub mod plugins;
pub mod provision;
pub mod show;
pub mod state_dir;

/// Logs to standard error at the level `SLUICE_LOG` sets (an `EnvFilter`, `info` by default),
/// in colour only on a terminal: the daemon, the CLI and the testbed's binaries alike.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
