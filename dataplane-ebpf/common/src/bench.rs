//! The contract between the benchmark's programs (`sluice-bench-xdp`) and `sluice bench`: program
//! and map names, the frame template and the destination table of the generator, the
//! configuration of the two reference forwarders (the ceiling and the `bpf_fib_lookup` forwarder)
//! and the devmap flush counters.
//!
//! The generator runs under `BPF_PROG_TEST_RUN` with `BPF_F_TEST_XDP_LIVE_FRAMES`. The kernel
//! recycles its page-pool pages with whatever the receivers wrote into them (the router rewrites
//! MACs and TTL), so the generator writes the whole header from a template of [`GenConfig`] on
//! every run and then patches in one destination from `GEN_DESTS`, whose checksums userspace
//! precomputed. Frames of several sizes (IMIX) come from one initial frame of the largest size:
//! the generator trims each run's frame to the size its place in [`GenConfig::pattern`] gives,
//! and the bytes past the template are the payload of that initial frame, the same in every
//! size, so the precomputed checksums hold.

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
    /// Per-CPU [`SinkCount`](super::SinkCount): generated frames (UDP to
    /// [`UDP_PORT`](super::UDP_PORT)) the sink received, and their bytes.
    pub const SINK_COUNT: &str = "SINK_COUNT";
    /// XDP program on the router's ingress: rewrites the MACs from `CEILING_CONFIG` and redirects
    /// through `BENCH_DEVMAP`, with no lookup at all.
    pub const CEILING: &str = "sluice_ceiling";
    /// XDP program on the router's ingress: [`CEILING`] after reading the Ethernet type and the
    /// destination address.
    pub const CEILING_READ: &str = "sluice_ceiling_read";
    /// XDP program on the router's ingress: `bpf_fib_lookup`, TTL / hop limit decrement, MAC
    /// rewrite from the lookup and redirect through `BENCH_DEVMAP` (the kernel's `xdp_fwd` sample).
    pub const FIB_FORWARDER: &str = "sluice_fib_fwd";
    /// Tracepoint program on `xdp:xdp_devmap_xmit`: counts the flushes of one device pair.
    pub const FLUSH_COUNTER: &str = "sluice_flush_tp";
    /// Category and name of the tracepoint [`FLUSH_COUNTER`] attaches to.
    pub const FLUSH_TRACEPOINT: (&str, &str) = ("xdp", "xdp_devmap_xmit");
    /// Array with one [`CeilingConfig`](super::CeilingConfig).
    pub const CEILING_CONFIG: &str = "CEILING_CONFIG";
    /// `DEVMAP_HASH` of the router's egress devices for the two reference forwarders, keyed by
    /// ifindex.
    pub const BENCH_DEVMAP: &str = "BENCH_DEVMAP";
    /// Per-CPU `u64` array of [`FIB_RESULT_SLOTS`](super::FIB_RESULT_SLOTS): what the
    /// `bpf_fib_lookup` forwarder did with each frame.
    pub const FIB_RESULTS: &str = "FIB_RESULTS";
    /// Array with one [`FlushConfig`](super::FlushConfig).
    pub const FLUSH_CONFIG: &str = "FLUSH_CONFIG";
    /// Per-CPU array of [`FlushStats`](super::FlushStats), one per
    /// [`FLUSH_SLOTS`](super::FLUSH_SLOTS).
    pub const FLUSH_STATS: &str = "FLUSH_STATS";
}

/// Bytes of a frame the generator writes from its template on every run: the headers and the
/// start of the payload. Also the shortest frame it sends (the minimum Ethernet frame without its
/// FCS).
pub const TEMPLATE_LEN: usize = 64;
/// The longest frame the generator sends: 1500 bytes of IP in an Ethernet frame without its FCS.
pub const MAX_FRAME_LEN: usize = 1514;
/// Frame sizes the generator can mix ([`GenConfig::lens`]).
pub const GEN_SIZES: usize = 4;
/// Steps of the generator's size pattern ([`GenConfig::pattern`]).
pub const GEN_PATTERN: usize = 16;
const _: () = assert!(GEN_SIZES.is_power_of_two() && GEN_PATTERN.is_power_of_two());
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
const _: () = assert!(offsets::V6_UDP_CHECK + 2 <= TEMPLATE_LEN);

/// The value of `GEN_CONFIG[0]`. 8-aligned so that the generator copies a template in 64-bit
/// words.
///
/// Run `c` of the generator (a per-CPU count) sends a frame of size slot
/// `s = pattern[c % pattern_len]`: `lens[s]` bytes, the first [`TEMPLATE_LEN`] of them
/// `frames[s]`, carrying the destination of `GEN_DESTS[(c % destinations) * sizes + s]`.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GenConfig {
    /// Per size slot, the start of the frame (Ethernet, IPv4 or IPv6, UDP, payload) with the
    /// destination address and the checksums zero; wire order.
    pub frames: [[u8; TEMPLATE_LEN]; GEN_SIZES],
    /// Destinations in `GEN_DESTS`, each with an entry per size slot in use: 1..=[`MAX_GEN_DESTS`]
    /// entries in all (host order). 0 stops the generator: it drops every frame.
    pub destinations: u32,
    /// [`FAMILY_V4`](crate::FAMILY_V4) or [`FAMILY_V6`](crate::FAMILY_V6): which fields to patch.
    pub family: u8,
    /// Steps of `pattern` in use, 1..=[`GEN_PATTERN`].
    pub pattern_len: u8,
    /// Size slots in use, 1..=[`GEN_SIZES`]: the entries of `GEN_DESTS` per destination.
    pub sizes: u8,
    /// Explicit padding.
    pub _pad: u8,
    /// Per size slot, the frame length in bytes, [`TEMPLATE_LEN`]..=[`MAX_FRAME_LEN`] (host
    /// order), no longer than the frame the test run starts from.
    pub lens: [u16; GEN_SIZES],
    /// The size slot of each step, each below [`GEN_SIZES`].
    pub pattern: [u8; GEN_PATTERN],
}
const _: () = assert!(size_of::<GenConfig>() == TEMPLATE_LEN * GEN_SIZES + 8 + 8 + GEN_PATTERN);
const _: () = assert!(TEMPLATE_LEN.is_multiple_of(8) && align_of::<GenConfig>() == 8);

impl Default for GenConfig {
    fn default() -> Self {
        Self {
            frames: [[0; TEMPLATE_LEN]; GEN_SIZES],
            destinations: 0,
            family: 0,
            pattern_len: 0,
            sizes: 0,
            _pad: 0,
            lens: [0; GEN_SIZES],
            pattern: [0; GEN_PATTERN],
        }
    }
}

/// The value of `SINK_COUNT[0]` on one CPU: one lookup per frame counts both.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SinkCount {
    /// Generated frames received.
    pub frames: u64,
    /// Their bytes, Ethernet header to the end of the payload.
    pub bytes: u64,
}
const _: () = assert!(size_of::<SinkCount>() == 16);

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

/// The value of `CEILING_CONFIG[0]`: where the ceiling program sends every frame.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct CeilingConfig {
    /// The egress device, a key of `BENCH_DEVMAP` (host order). 0: pass everything up.
    pub ifindex: u32,
    /// The destination MAC written into every frame.
    pub dst_mac: [u8; 6],
    /// The source MAC written into every frame.
    pub src_mac: [u8; 6],
}
const _: () = assert!(size_of::<CeilingConfig>() == 16);

/// Slots of `FIB_RESULTS`. Slots 0 to [`FIB_SLOT_OTHER_RESULT`] - 1 count `bpf_fib_lookup`'s
/// return codes (`BPF_FIB_LKUP_RET_*`: 0 success, 5 forwarding disabled, 7 no neighbour, ...).
pub const FIB_RESULT_SLOTS: u32 = 16;
/// `FIB_RESULTS` slot of any larger return code.
pub const FIB_SLOT_OTHER_RESULT: u32 = 13;
/// `FIB_RESULTS` slot of frames passed up before any lookup: not IP, malformed, TTL or hop limit
/// 1 or less.
pub const FIB_SLOT_NOT_FORWARDABLE: u32 = 14;
/// `FIB_RESULTS` slot of frames whose egress device is not in `BENCH_DEVMAP`: passed up.
pub const FIB_SLOT_NO_DEVMAP: u32 = 15;

/// The value of `FLUSH_CONFIG[0]`: which flushes `sluice_flush_tp` counts. The tracepoint fires for
/// every namespace; the benchmark gives its veths ifindexes that no other namespace is likely to
/// use, so the ifindexes identify its flushes. All 0: count nothing.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlushConfig {
    /// `from_ifindex` of the router's flushes: the device the frames were received on (host
    /// order). Counted in `FLUSH_STATS[FLUSH_SLOT_ROUTER]`.
    pub from_ifindex: i32,
    /// `to_ifindex` of the router's flushes: the egress device (host order).
    pub to_ifindex: i32,
    /// The generator's device, the source and the target of its flushes (live frames send
    /// `XDP_TX` back out of the device they "arrived" on), host order. Counted in
    /// `FLUSH_STATS[FLUSH_SLOT_GENERATOR]`: its drops are frames the router's input ring had no
    /// room for.
    pub gen_ifindex: i32,
    /// Explicit padding.
    pub _pad: u32,
}
const _: () = assert!(size_of::<FlushConfig>() == 16);

/// `FLUSH_STATS` slot of the router's flushes (ingress to egress veth).
pub const FLUSH_SLOT_ROUTER: u32 = 0;
/// `FLUSH_STATS` slot of the generator's flushes (into the router's ingress veth).
pub const FLUSH_SLOT_GENERATOR: u32 = 1;
/// Slots of `FLUSH_STATS`.
pub const FLUSH_SLOTS: u32 = 2;

/// Offsets of the fields of the `xdp:xdp_devmap_xmit` record `sluice_flush_tp` reads (Linux 5.8
/// and later: `from_ifindex`, `act`, `to_ifindex`, `drops`, `sent`, `err`, all 4 bytes).
/// Userspace checks them against the tracepoint's `format` file before trusting the counts.
pub mod flush_record {
    /// `int from_ifindex`.
    pub const FROM_IFINDEX: usize = 8;
    /// `int to_ifindex`.
    pub const TO_IFINDEX: usize = 16;
    /// `int drops`: frames the driver did not take.
    pub const DROPS: usize = 20;
    /// `int sent`: frames the driver took.
    pub const SENT: usize = 24;
    /// `int err`: the driver's error for the whole bulk, or 0.
    pub const ERR: usize = 28;
    /// Bytes read from the record: every field above.
    pub const LEN: usize = 32;
}

/// A value of `FLUSH_STATS` on one CPU: the counted devmap flushes of one device pair.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlushStats {
    /// Flushes (tracepoint hits), each of 1 to 16 frames.
    pub flushes: u64,
    /// Frames the egress driver took.
    pub sent: u64,
    /// Frames the egress driver did not take (dropped at transmit).
    pub drops: u64,
    /// Flushes with an error.
    pub errors: u64,
}
const _: () = assert!(size_of::<FlushStats>() == 32);

#[cfg(feature = "user")]
#[expect(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]
mod pod {
    use super::{CeilingConfig, FlushConfig, FlushStats, GenConfig, GenDest, SinkCount};

    // SAFETY: `#[repr(C)]`, `Copy`, only integers and byte arrays with explicit padding (the size
    // asserts above hold that), so every bit pattern is valid.
    unsafe impl aya::Pod for GenConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for GenDest {}
    // SAFETY: as above.
    unsafe impl aya::Pod for CeilingConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FlushConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FlushStats {}
    // SAFETY: as above.
    unsafe impl aya::Pod for SinkCount {}
}
