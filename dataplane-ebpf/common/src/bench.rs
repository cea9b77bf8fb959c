//! The contract between the benchmark's traffic generator and sink (`sluice-bench-xdp`) and
//! `sluice bench`: program and map names, the frame template and the destination table.
//!
//! The generator runs under `BPF_PROG_TEST_RUN` with `BPF_F_TEST_XDP_LIVE_FRAMES`. The kernel
//! recycles its page-pool pages with whatever the receivers wrote into them (the router rewrites
//! MACs and TTL), so the generator writes the whole frame from [`GenConfig::frame`] on every run and
//! then patches in one destination from `GEN_DESTS`, whose checksums userspace precomputed.

/// Names of the benchmark's programs and maps, as they appear in the eBPF object.
pub mod names {
    /// XDP program run by `BPF_PROG_TEST_RUN` in live-frames mode: writes a frame, returns `XDP_TX`.
    pub const GENERATOR: &str = "sluice_gen";
    /// XDP program on the sink's interface: counts and drops.
    pub const SINK: &str = "sluice_sink";
    /// Array with one [`GenConfig`](super::GenConfig).
    pub const GEN_CONFIG: &str = "GEN_CONFIG";
    /// Array of [`GenDest`](super::GenDest), [`GenConfig::destinations`](super::GenConfig) in use.
    pub const GEN_DESTS: &str = "GEN_DESTS";
    /// Per-CPU `u32`: the generator's running destination index.
    pub const GEN_CURSOR: &str = "GEN_CURSOR";
    /// Per-CPU `u64`: generated frames (UDP to [`UDP_PORT`](super::UDP_PORT)) the sink received.
    pub const SINK_COUNT: &str = "SINK_COUNT";
}

/// Length of every generated frame: the minimum Ethernet frame without its FCS.
pub const FRAME_LEN: usize = 64;
/// UDP source and destination port of generated frames (discard); the sink counts only these.
pub const UDP_PORT: u16 = 9;
/// Capacity of `GEN_DESTS`.
pub const MAX_GEN_DESTS: u32 = 1 << 16;

/// Offsets of the destination-dependent fields in a frame (Ethernet header of 14 bytes).
pub mod offsets {
    /// IPv4 header checksum.
    pub const V4_CHECK: usize = 14 + 10;
    /// IPv4 destination address (4 bytes).
    pub const V4_DST: usize = 14 + 16;
    /// The Ethernet type field.
    pub const ETHER_TYPE: usize = 12;
    /// IPv4 protocol.
    pub const V4_PROTO: usize = 14 + 9;
    /// UDP destination port behind an IPv4 header.
    pub const V4_UDP_DPORT: usize = 14 + 20 + 2;
    /// UDP checksum behind an IPv4 header.
    pub const V4_UDP_CHECK: usize = 14 + 20 + 6;
    /// IPv6 next header.
    pub const V6_NEXT: usize = 14 + 6;
    /// IPv6 destination address (16 bytes).
    pub const V6_DST: usize = 14 + 24;
    /// UDP destination port behind an IPv6 header.
    pub const V6_UDP_DPORT: usize = 14 + 40 + 2;
    /// UDP checksum behind an IPv6 header.
    pub const V6_UDP_CHECK: usize = 14 + 40 + 6;
}
const _: () = assert!(offsets::V6_UDP_CHECK + 2 <= FRAME_LEN);

/// The value of `GEN_CONFIG[0]`. 8-aligned so that the generator copies the frame in 64-bit words.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GenConfig {
    /// The whole frame (Ethernet, IPv4 or IPv6, UDP, payload) with the destination address and
    /// the checksums zero; wire order.
    pub frame: [u8; FRAME_LEN],
    /// Entries of `GEN_DESTS` in use, 1..=[`MAX_GEN_DESTS`] (host order). 0 stops the generator:
    /// it drops every frame.
    pub destinations: u32,
    /// [`FAMILY_V4`](crate::FAMILY_V4) or [`FAMILY_V6`](crate::FAMILY_V6): which fields to patch.
    pub family: u8,
    /// Explicit padding.
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<GenConfig>() == FRAME_LEN + 8);
const _: () = assert!(FRAME_LEN.is_multiple_of(8) && align_of::<GenConfig>() == 8);

impl Default for GenConfig {
    fn default() -> Self {
        Self { frame: [0; FRAME_LEN], destinations: 0, family: 0, _pad: [0; 3] }
    }
}

/// One destination of the generator: the address and the checksums of the frame that carries it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct GenDest {
    /// The destination address (network order; IPv4 in the first four bytes).
    pub addr: [u8; 16],
    /// The IPv4 header checksum (network order); unused for IPv6.
    pub ip_check: [u8; 2],
    /// The UDP checksum (network order); 0 (none) is allowed for IPv4 only.
    pub udp_check: [u8; 2],
}
const _: () = assert!(size_of::<GenDest>() == 20);

#[cfg(feature = "user")]
#[expect(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]
mod pod {
    use super::{GenConfig, GenDest};

    // SAFETY: `#[repr(C)]`, `Copy`, only integers and byte arrays with explicit padding (the size
    // asserts above hold that), so every bit pattern is valid.
    unsafe impl aya::Pod for GenConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for GenDest {}
}
