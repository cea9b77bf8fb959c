//! The dataplane layer's one error type.

use std::{io, path::PathBuf};

use aya::{maps::MapError, programs::ProgramError};
use sluice_core::dir24 as lookup;

/// Errors of the dataplane layer.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// The pin directory is not on a BPF filesystem.
    #[error(
        "{0} is not on a BPF filesystem; mount one with `mount -t bpf bpf /sys/fs/bpf` (or run scripts/setup.sh)"
    )]
    NoBpffs(PathBuf),
    /// Nothing is pinned where the dataplane was expected.
    #[error(
        "no Sluice dataplane is pinned at {0} (is the daemon started, with the same --pin-dir?)"
    )]
    NotPinned(PathBuf),
    /// A filesystem operation failed.
    #[error("{what} {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Loading the eBPF object failed (verifier, map creation, ...).
    #[error("loading the XDP program")]
    Load(#[source] Box<aya::EbpfError>),
    /// A program operation failed.
    #[error("{0}")]
    Program(String, #[source] ProgramError),
    /// A map operation failed.
    #[error("map {0}")]
    Map(&'static str, #[source] MapError),
    /// The kernel's BTF could not be read or lacks a field a program needs.
    #[error("kernel BTF: {0}")]
    Btf(String),
    /// The eBPF object lacks a program or a map this build expects.
    #[error("the eBPF object has no {0}")]
    Missing(&'static str),
    /// Reading a pinned link failed.
    #[error("{0}")]
    Link(&'static str, #[source] aya::programs::links::LinkError),
    /// A batched write to the route record failed.
    #[error("batched write to map {0}")]
    Record(&'static str, #[source] io::Error),
    /// Maps pinned by another version of Sluice have a different layout.
    #[error(
        "the map {map} pinned under {pin} has key/value/entries {found:?}, this version needs {expected:?}; \
         it was pinned by an incompatible version: `sluice detach` (forwarding stops) and start again"
    )]
    Incompatible {
        /// Map name.
        map: &'static str,
        /// Pin directory.
        pin: PathBuf,
        /// Key size, value size and capacity found.
        found: (u32, u32, u32),
        /// What this build needs.
        expected: (u32, u32, u32),
    },
    /// The IPv4 lookup tables could not take the routes.
    #[error("lookup tables")]
    Lookup(#[source] lookup::Dir24Error),
    /// The interface does not exist.
    #[error("no interface named {0:?}")]
    NoSuchInterface(String),
    /// Another process (a daemon, or a `detach`) holds the pin directory.
    #[error(
        "{pin} is held by another Sluice process{}: two daemons on one pin directory would \
         overwrite each other's tables; stop it first, or give this one another --pin-dir",
        holder.map(|pid| format!(" (pid {pid})")).unwrap_or_default()
    )]
    InUse {
        /// The pin directory.
        pin: PathBuf,
        /// The holder's process id, when the kernel tells it.
        holder: Option<u32>,
    },
    /// Attaching XDP failed in every allowed mode.
    #[error("attaching XDP to {iface} failed: {reason}")]
    Attach {
        /// Interface.
        iface: String,
        /// Why.
        reason: String,
    },
}

pub(crate) type Result<T, E = DataplaneError> = std::result::Result<T, E>;

/// Formats an error with its chain of sources.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
