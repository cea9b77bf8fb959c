//! Sluice's kernel adapters: the layer between the pure logic of `sluice-core` and the kernel.
//!
//! It loads the XDP program (built from `dataplane-ebpf/` by this crate's `build.rs` and embedded
//! as [`EBPF_OBJECT`]), pins and adopts its maps and links, writes what the FIB compiler computes
//! into the maps, reads them back, accounts for egress drops, mirrors the kernel's routing state
//! over rtnetlink and applies the configuration's static routes to the kernel.
//!
//! From the bottom up: [`error`] and [`pin`] (the pin directory, key conversions, opening pinned
//! maps), the system-call wrappers (`sys`, [`batch`], [`link`], [`shared_mem`]), then [`xmit`],
//! [`hooks`], [`maps`] and [`record`], then [`loader`]. [`mirror`] and [`apply`] speak rtnetlink.

pub mod apply;
pub mod batch;
pub mod egress;
pub mod error;
pub mod heap;
pub mod hooks;
pub mod link;
pub mod loader;
pub mod lookup;
pub mod maps;
pub mod mirror;
pub mod pin;
pub mod record;
pub mod shared_mem;
pub(crate) mod sys;
pub mod xmit;

pub use error::{DataplaneError, error_chain};
pub use loader::{Dataplane, ModeRequest, detach_all};
pub use lookup::{LookupUsage, LookupView};
pub use maps::Maps;
pub use pin::{DEFAULT_PIN_DIR, PinDir, PinLock, PinSnapshot, open_per_cpu_hash, sum_counters};
pub use record::set_thread_nice;

/// The XDP forwarding program, built by `build.rs` from `dataplane-ebpf/`.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sluice-xdp"));
