//! Why a plugin failed or was refused: one error for the whole host, so that what the
//! supervisor records as a quarantine reason is a sentence an operator can read.

use sluice_dataplane::hooks::HookError;

use super::Table;

/// Why a plugin failed, or was refused.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The manifest is unusable.
    #[error("manifest: {0}")]
    Manifest(String),
    /// The manifest's signature is missing where it must be, or wrong, or from an untrusted
    /// publisher.
    #[error("signature: {0}")]
    Signature(String),
    /// The component is not the one the manifest names.
    #[error("the component's SHA-256 is {found}, the manifest says {expected}")]
    Hash {
        /// From the manifest.
        expected: String,
        /// Of the bytes given.
        found: String,
    },
    /// wasmtime refused the component (not a component, not of this contract, ...).
    #[error("loading the component: {0}")]
    Load(String),
    /// The plugin trapped.
    #[error("trapped in {call}: {message}")]
    Trap {
        /// `init` or `handle`.
        call: &'static str,
        /// The trap.
        message: String,
    },
    /// The plugin ran past its deadline.
    #[error("ran past its deadline of {deadline_ms} ms in {call}")]
    Timeout {
        /// `init` or `handle`.
        call: &'static str,
        /// The manifest's deadline.
        deadline_ms: u64,
    },
    /// The plugin returned an error of its own.
    #[error("{call} returned an error: {message}")]
    Guest {
        /// `init` or `handle`.
        call: &'static str,
        /// Its message.
        message: String,
    },
    /// The plugin returned more operations than its manifest allows.
    #[error("returned {count} operations, its manifest allows {max}")]
    TooManyOps {
        /// Returned.
        count: usize,
        /// Allowed.
        max: usize,
    },
    /// An operation writes a table the manifest does not declare.
    #[error("operation {index} writes table {table:?}, which its manifest does not declare")]
    Undeclared {
        /// Position in the result.
        index: usize,
        /// The table.
        table: Table,
    },
    /// An operation's prefix or address does not parse.
    #[error("operation {index}: {message}")]
    Invalid {
        /// Position in the result.
        index: usize,
        /// What is wrong.
        message: String,
    },
    /// The hook tables refused the batch (conflicts, host bits, bounds...).
    #[error("the hook tables refused its operations: {0}")]
    Tables(#[from] HookError),
    /// The plugin is quarantined.
    #[error("quarantined: {0}")]
    Quarantined(String),
}
