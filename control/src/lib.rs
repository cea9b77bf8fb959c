//! Sluice's control plane: loads and pins the XDP dataplane, mirrors the kernel's links,
//! addresses, routes and neighbours into its maps, and offers the operations the `sluice` CLI and
//! daemon are made of.

pub mod api;
pub mod apply;
pub mod batch;
pub mod bench;
pub mod bench_api;
pub mod client;
pub mod console;
pub mod daemon;
pub mod dataplane;
pub mod dir24;
pub mod fib;
pub mod heap;
pub mod hooks;
pub mod lab;
pub mod link;
pub mod mirror;
pub mod netns;
pub mod plugins;
pub mod provision;
pub mod rib;
pub mod shared_mem;
pub mod show;
pub(crate) mod sys;
pub mod table;
pub mod trie6;
pub mod xmit;

/// The XDP forwarding program, built by `build.rs` from `dataplane-ebpf/`.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sluice-xdp"));
