//! Sluice's pure logic: what the control plane computes, with no kernel, no runtime and no I/O.
//!
//! - [`rib`]: the mirrored kernel state (links, addresses, routes, neighbours).
//! - [`fib`]: the FIB compiler, RIB -> the dataplane's map contents and the ordered difference
//!   between two states.
//! - [`dir24`] and [`trie6`]: the IPv4 (DIR-24-8) and IPv6 (multibit trie) lookup structures'
//!   writers, over the [`dir24::Cells`] trait so that they run against memory in tests and against
//!   shared BPF arrays in the dataplane crate.
//! - [`check`]: lookup tables compared with the routes they must hold (`sluice verify`).
//! - [`hooks`]: the hook tables' rules, validated and owned per plugin, over the
//!   [`hooks::HookMaps`] trait.
//!
//! The dataplane crate puts these onto BPF maps; nothing here needs root or the eBPF toolchain.

pub mod check;
pub mod dir24;
pub mod fib;
pub mod hooks;
pub mod rib;
pub mod trie6;
