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
    /// The plugin trapped (a Rust plugin's panic ends so: its SDK logs the panic's message
    /// first, which `last_log` then carries).
    #[error("trapped in {call}: {message}{last_log}")]
    Trap {
        /// `init` or `handle`.
        call: &'static str,
        /// The trap.
        message: String,
        /// What the plugin logged last in that call.
        last_log: LastLog,
    },
    /// The plugin ran past its deadline.
    #[error("ran past its deadline of {deadline_ms} ms in {call}{last_log}")]
    Timeout {
        /// `init` or `handle`.
        call: &'static str,
        /// The manifest's deadline.
        deadline_ms: u64,
        /// What the plugin logged last in that call.
        last_log: LastLog,
    },
    /// The host panicked while serving the plugin (running it, answering its host calls,
    /// checking what it returned): a bug of the host, which stops this plugin only.
    #[error("the host failed serving its {call}: {message}{last_log}")]
    Panic {
        /// `init`, `handle`, `compile` or `instantiate`.
        call: &'static str,
        /// The panic's message.
        message: String,
        /// What the plugin logged last in that call.
        last_log: LastLog,
    },
    /// The plugin returned an error of its own (cut to [`MAX_REASON`] bytes).
    #[error("{call} returned an error: {message}")]
    Guest {
        /// `init` or `handle`.
        call: &'static str,
        /// Its message.
        message: String,
    },
    /// The plugin returned more operations than its manifest allows.
    #[error("returned {count} operations, its manifest allows {max} (max_ops_per_call)")]
    TooManyOps {
        /// Returned.
        count: usize,
        /// Allowed.
        max: usize,
    },
    /// An operation writes a table the manifest does not declare.
    #[error(
        "operation {index} writes table {}, which its manifest does not declare",
        .table.name()
    )]
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

/// The longest text of a plugin's that a reason quotes (its error, a prefix it returned), bytes.
pub(super) const MAX_REASON: usize = 1024;

/// The lines a plugin logged last in a failed call (at most [`LastLog::LINES`], each cut to
/// [`MAX_REASON`] bytes), quoted after the reason: a Rust plugin's panic message is there.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LastLog(pub Vec<String>);

impl LastLog {
    /// Lines kept.
    pub const LINES: usize = 3;
}

impl std::fmt::Display for LastLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, line) in self.0.iter().enumerate() {
            // Quoted as Rust does: a newline or a control character in a line stays visible.
            f.write_str(if i == 0 { "; it last logged " } else { ", " })?;
            write!(f, "{line:?}")?;
        }
        Ok(())
    }
}

impl PluginError {
    /// The error with what the plugin logged last, where it is one the plugin's log explains.
    #[must_use]
    pub(super) fn with_last_log(mut self, lines: Vec<String>) -> Self {
        if let Self::Trap { last_log, .. }
        | Self::Timeout { last_log, .. }
        | Self::Panic { last_log, .. } = &mut self
        {
            last_log.0 = lines;
        }
        self
    }
}
