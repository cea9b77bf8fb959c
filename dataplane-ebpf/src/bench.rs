//! The programs of `sluice bench`: the traffic generator, the sink, the two reference forwarders
//! Sluice is measured against, and a counter of devmap flushes.
//!
//! `sluice_gen` runs under `BPF_PROG_TEST_RUN` with `BPF_F_TEST_XDP_LIVE_FRAMES`: every run trims
//! the frame to the size of its step in the configured pattern (64 bytes, or IMIX), writes the
//! whole header from that size's template (the kernel recycles pages with what the receivers wrote
//! into them), patches in the next destination of a per-CPU round robin, and returns `XDP_TX`, which
//! live-frames mode turns into a redirect out of the test run's ingress interface (Linux 5.18, "bpf:
//! Add "live packet" mode for XDP in `BPF_PROG_RUN`"). `sluice_sink` sits on the far end of the
//! chain and counts the generated frames that arrive and their bytes, per CPU, before dropping
//! everything.
//!
//! The reference forwarders run on the router's ingress veth in place of Sluice:
//! - `sluice_ceiling` rewrites the Ethernet addresses from `CEILING_CONFIG` and redirects every
//!   frame through `BENCH_DEVMAP`. No parsing, no lookup: the most any XDP router can do on this
//!   chain.
//! - `sluice_ceiling_read` is the ceiling that first reads the Ethernet type and the destination
//!   address (passing the frame to the kernel if the address is unspecified): the least any
//!   router reads, and what a first read of a frame costs.
//! - `sluice_fib_fwd` is the kernel's `samples/bpf/xdp_fwd_kern.c` (and xdp-tools' xdp-forward)
//!   in Rust: `bpf_fib_lookup` in the kernel's own FIB and neighbour table, TTL or hop-limit
//!   decrement (with the IPv4 checksum update), the MACs from the lookup, a redirect through
//!   `BENCH_DEVMAP`; anything the lookup does not resolve goes to the kernel. It counts each
//!   outcome in a per-CPU array (`FIB_RESULTS`), as Sluice counts its own.
//!
//! `sluice_flush_tp` counts the `xdp:xdp_devmap_xmit` tracepoint, which the kernel fires once per
//! bulk-queue flush, for the router's ingress/egress pair (the frames per flush show whether the
//! forwarder under test keeps the devmap's batching) and for the generator's device (whose drops
//! are frames the router's input ring had no room for).
#![no_std]
#![no_main]

mod common;

use aya_ebpf::{
    EbpfContext as _,
    bindings::{BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup, xdp_action},
    helpers::generated::{bpf_fib_lookup as fib_lookup, bpf_xdp_adjust_tail},
    macros::{map, tracepoint, xdp},
    maps::{Array, DevMapHash, PerCpuArray},
    programs::{TracePointContext, XdpContext},
};
use common::ptr_at;
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};
use sluice_common::{
    FAMILY_V4, FAMILY_V6,
    bench::{
        CeilingConfig, FIB_RESULT_SLOTS, FIB_SLOT_NO_DEVMAP, FIB_SLOT_NOT_FORWARDABLE,
        FIB_SLOT_OTHER_RESULT, FLUSH_SLOT_GENERATOR, FLUSH_SLOT_ROUTER, FLUSH_SLOTS, FlushConfig,
        FlushStats, GEN_PATTERN, GEN_SIZES, GenConfig, GenDest, MAX_GEN_DESTS, SinkCount,
        TEMPLATE_LEN, UDP_PORT, flush_record, offsets,
    },
    csum_ttl_decrement,
};

const IPPROTO_UDP: u8 = 17;
const ETH_P_IPV4: u16 = 0x0800_u16.to_be();
const ETH_P_IPV6: u16 = 0x86dd_u16.to_be();
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
/// The flow label bits of the first word of an IPv6 header (network order), as `xdp_fwd` masks it.
const IPV6_FLOWINFO_MASK: u32 = 0x0fff_ffff_u32.to_be();

#[map]
static GEN_CONFIG: Array<GenConfig> = Array::with_max_entries(1, 0);
#[map]
static GEN_DESTS: Array<GenDest> = Array::with_max_entries(MAX_GEN_DESTS, 0);
#[map]
static GEN_CURSOR: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);
#[map]
static SINK_COUNT: PerCpuArray<SinkCount> = PerCpuArray::with_max_entries(1, 0);
#[map]
static CEILING_CONFIG: Array<CeilingConfig> = Array::with_max_entries(1, 0);
#[map]
static BENCH_DEVMAP: DevMapHash = DevMapHash::with_max_entries(8, 0);
#[map]
static FIB_RESULTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(FIB_RESULT_SLOTS, 0);
#[map]
static FLUSH_CONFIG: Array<FlushConfig> = Array::with_max_entries(1, 0);
#[map]
static FLUSH_STATS: PerCpuArray<FlushStats> = PerCpuArray::with_max_entries(FLUSH_SLOTS, 0);

#[xdp]
pub fn sluice_gen(ctx: XdpContext) -> u32 {
    match try_gen(&ctx) {
        Ok(()) => xdp_action::XDP_TX,
        Err(()) => xdp_action::XDP_DROP,
    }
}

#[inline(always)]
fn try_gen(ctx: &XdpContext) -> Result<(), ()> {
    let config = GEN_CONFIG.get(0).ok_or(())?;
    let n = config.destinations;
    let steps = u32::from(config.pattern_len);
    let sizes = u32::from(config.sizes);
    if n == 0 || n > MAX_GEN_DESTS || steps == 0 || steps > GEN_PATTERN as u32 || sizes == 0 {
        return Err(());
    }
    let cursor = GEN_CURSOR.get_ptr_mut(0).ok_or(())?;
    // SAFETY: a per-CPU value, so no other writer runs concurrently on this CPU.
    let run = unsafe {
        let c = *cursor;
        *cursor = c.wrapping_add(1);
        c
    };
    // The verifier loses the bounds of a remainder, and the compiler drops a mask it knows to
    // be redundant: the remainder is made opaque to it so that the mask (the count is a power
    // of two) bounds the index where the verifier looks.
    let step = core::hint::black_box(run % steps) as usize & (GEN_PATTERN - 1);
    let slot = usize::from(config.pattern[step]);
    if slot >= sizes as usize {
        return Err(());
    }
    let slot = slot & (GEN_SIZES - 1);
    let len = i64::from(config.lens[slot]);
    let have = (ctx.data_end() - ctx.data()) as i64;
    // Live frames start every run at the initial frame's length: trim to this step's size.
    // SAFETY: the helper only moves the end of the frame within its buffer.
    if len != have && unsafe { bpf_xdp_adjust_tail(ctx.ctx, (len - have) as i32) } != 0 {
        return Err(());
    }
    let dest = GEN_DESTS.get((run % n) * sizes + slot as u32).ok_or(())?;
    let words = ptr_at::<[u64; TEMPLATE_LEN / 8]>(ctx, 0)?;
    // SAFETY: `ptr_at` checked that the template's bytes lie inside the packet. Live-frames mode
    // puts packet data 8-aligned in its pages (`struct xdp_page_head` plus XDP_PACKET_HEADROOM),
    // and `GenConfig` is 8-aligned with the templates first, each a multiple of 8 bytes, so the
    // copy is eight 64-bit moves rather than sixty-four byte moves.
    let frame = unsafe {
        core::ptr::copy_nonoverlapping((&raw const config.frames[slot]).cast(), words, 1);
        &mut *words.cast::<[u8; TEMPLATE_LEN]>()
    };
    if config.family == FAMILY_V4 {
        frame[offsets::V4_CHECK..offsets::V4_CHECK + 2].copy_from_slice(&dest.ip_check);
        frame[offsets::V4_DST..offsets::V4_DST + 4].copy_from_slice(&dest.addr[..4]);
        frame[offsets::V4_UDP_CHECK..offsets::V4_UDP_CHECK + 2].copy_from_slice(&dest.udp_check);
    } else if config.family == FAMILY_V6 {
        frame[offsets::V6_DST..offsets::V6_DST + 16].copy_from_slice(&dest.addr);
        frame[offsets::V6_UDP_CHECK..offsets::V6_UDP_CHECK + 2].copy_from_slice(&dest.udp_check);
    } else {
        return Err(());
    }
    Ok(())
}

#[xdp]
pub fn sluice_sink(ctx: XdpContext) -> u32 {
    if is_generated(&ctx)
        && let Some(count) = SINK_COUNT.get_ptr_mut(0)
    {
        // SAFETY: a per-CPU value, so no other writer runs concurrently on this CPU.
        unsafe {
            (*count).frames += 1;
            (*count).bytes += (ctx.data_end() - ctx.data()) as u64;
        }
    }
    xdp_action::XDP_DROP
}

/// Whether a frame is one of the generator's (UDP to [`UDP_PORT`]), not the neighbour
/// discovery or MLD traffic the namespaces send of their own accord.
#[inline(always)]
fn is_generated(ctx: &XdpContext) -> bool {
    let Ok(frame) = ptr_at::<[u8; offsets::V6_UDP_DPORT + 2]>(ctx, 0) else {
        return false;
    };
    // SAFETY: `ptr_at` checked that the bytes lie inside the packet.
    let f = unsafe { &*frame };
    let port = UDP_PORT.to_be_bytes();
    match [f[offsets::ETHER_TYPE], f[offsets::ETHER_TYPE + 1]] {
        [0x08, 0x00] => {
            f[offsets::V4_PROTO] == IPPROTO_UDP
                && f[offsets::V4_UDP_DPORT..offsets::V4_UDP_DPORT + 2] == port
        }
        [0x86, 0xdd] => {
            f[offsets::V6_NEXT] == IPPROTO_UDP
                && f[offsets::V6_UDP_DPORT..offsets::V6_UDP_DPORT + 2] == port
        }
        _ => false,
    }
}

#[xdp]
pub fn sluice_ceiling(ctx: XdpContext) -> u32 {
    let Ok(eth) = ptr_at::<EthHdr>(&ctx, 0) else { return xdp_action::XDP_PASS };
    ceiling_send(eth)
}

/// The ceiling's whole work on a frame whose Ethernet header is at `eth`: the MACs from
/// `CEILING_CONFIG`, written without reading the frame, and the redirect.
#[inline(always)]
fn ceiling_send(eth: *mut EthHdr) -> u32 {
    let Some(config) = CEILING_CONFIG.get(0) else { return xdp_action::XDP_PASS };
    // SAFETY: the caller's `ptr_at` checked that the header lies inside the packet.
    unsafe {
        (*eth).dst_addr = config.dst_mac;
        (*eth).src_addr = config.src_mac;
    }
    BENCH_DEVMAP.redirect(config.ifindex, u64::from(xdp_action::XDP_PASS)).unwrap_or_else(|a| a)
}

/// The ceiling, but it first reads what any router must: the Ethernet type and the destination
/// address. A frame arrives cold (its bytes were written on another CPU, or by a NIC), and this
/// read is the first that waits for them; the plain ceiling only writes to the frame.
#[xdp]
pub fn sluice_ceiling_read(ctx: XdpContext) -> u32 {
    let Ok(eth) = ptr_at::<EthHdr>(&ctx, 0) else { return xdp_action::XDP_PASS };
    // SAFETY: `ptr_at` checked that the header lies inside the packet.
    let ether_type = unsafe { (*eth).ether_type };
    // An unspecified or unknown destination goes to the kernel: the branch needs the address.
    let routable = if ether_type == ETH_P_IPV4 {
        // SAFETY (both arms): `ptr_at` checks that the header lies inside the packet.
        ptr_at::<Ipv4Hdr>(&ctx, EthHdr::LEN).is_ok_and(|ip| unsafe { (*ip).dst_addr } != [0; 4])
    } else if ether_type == ETH_P_IPV6 {
        ptr_at::<Ipv6Hdr>(&ctx, EthHdr::LEN).is_ok_and(|ip| {
            // As two words: a byte array compared whole becomes a call the verifier refuses.
            let w =
                unsafe { core::ptr::read_unaligned((*ip).dst_addr.as_ptr().cast::<[u64; 2]>()) };
            w != [0; 2]
        })
    } else {
        false
    };
    if !routable {
        return xdp_action::XDP_PASS;
    }
    ceiling_send(eth)
}

#[xdp]
pub fn sluice_fib_fwd(ctx: XdpContext) -> u32 {
    let (slot, action) =
        try_fib_forward(&ctx).unwrap_or((FIB_SLOT_NOT_FORWARDABLE, xdp_action::XDP_PASS));
    if let Some(count) = FIB_RESULTS.get_ptr_mut(slot) {
        // SAFETY: a per-CPU value, so no other writer runs concurrently on this CPU.
        unsafe { *count += 1 };
    }
    action
}

/// `xdp_fwd_flags(ctx, 0)` of the kernel sample. Returns the `FIB_RESULTS` slot and the verdict.
#[inline(always)]
fn try_fib_forward(ctx: &XdpContext) -> Result<(u32, u32), ()> {
    let eth = ptr_at::<EthHdr>(ctx, 0)?;
    // SAFETY: `ptr_at` checked that the header lies inside the packet.
    let ether_type = unsafe { (*eth).ether_type };
    // SAFETY: all-zero bytes are a valid `bpf_fib_lookup` (integers and unions of integers).
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    let mut v4: Option<*mut Ipv4Hdr> = None;
    let mut v6: Option<*mut Ipv6Hdr> = None;
    if ether_type == ETH_P_IPV4 {
        let ip = ptr_at::<Ipv4Hdr>(ctx, EthHdr::LEN)?;
        // SAFETY: `ptr_at` checked that the fixed header lies inside the packet.
        let hdr = unsafe { &*ip };
        if hdr.ttl <= 1 {
            return Err(());
        }
        params.family = AF_INET;
        params.__bindgen_anon_2.tos = hdr.tos;
        params.l4_protocol = hdr.proto;
        params.__bindgen_anon_1.tot_len = u16::from_be_bytes(hdr.tot_len);
        params.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(hdr.src_addr);
        params.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(hdr.dst_addr);
        v4 = Some(ip);
    } else if ether_type == ETH_P_IPV6 {
        let ip = ptr_at::<Ipv6Hdr>(ctx, EthHdr::LEN)?;
        // SAFETY: `ptr_at` checked that the fixed header lies inside the packet.
        let hdr = unsafe { &*ip };
        if hdr.dst_addr[0] == 0xff || hdr.hop_limit <= 1 {
            return Err(());
        }
        params.family = AF_INET6;
        params.__bindgen_anon_2.flowinfo = u32::from_ne_bytes(hdr.vcf) & IPV6_FLOWINFO_MASK;
        params.l4_protocol = hdr.next_hdr;
        params.__bindgen_anon_1.tot_len = u16::from_be_bytes(hdr.payload_len);
        params.__bindgen_anon_3.ipv6_src = words(&hdr.src_addr);
        params.__bindgen_anon_4.ipv6_dst = words(&hdr.dst_addr);
        v6 = Some(ip);
    } else {
        return Err(());
    }
    params.ifindex = ctx.ingress_ifindex() as u32;
    // SAFETY: `params` is a valid, fully initialised `bpf_fib_lookup` of the size passed.
    let rc =
        unsafe { fib_lookup(ctx.as_ptr(), &raw mut params, size_of::<bpf_fib_lookup>() as i32, 0) };
    if rc != i64::from(BPF_FIB_LKUP_RET_SUCCESS) {
        let slot =
            u32::try_from(rc).map_or(FIB_SLOT_OTHER_RESULT, |r| r.min(FIB_SLOT_OTHER_RESULT));
        return Ok((slot, xdp_action::XDP_PASS));
    }
    // As the sample: only egress devices in the devmap (`xdp_tx_ports`) are forwarded in XDP.
    if BENCH_DEVMAP.get_ifindex(params.ifindex).is_none() {
        return Ok((FIB_SLOT_NO_DEVMAP, xdp_action::XDP_PASS));
    }
    if let Some(ip) = v4 {
        // SAFETY: checked by `ptr_at` above; nothing moved the packet since.
        let hdr = unsafe { &mut *ip };
        let check = csum_ttl_decrement(
            u16::from_be_bytes(hdr.check),
            u16::from_be_bytes([hdr.ttl, hdr.proto]),
        );
        hdr.ttl -= 1;
        hdr.check = check.to_be_bytes();
    } else if let Some(ip) = v6 {
        // SAFETY: as above.
        unsafe { (*ip).hop_limit -= 1 };
    }
    // SAFETY: checked by `ptr_at` above.
    unsafe {
        (*eth).dst_addr = params.dmac;
        (*eth).src_addr = params.smac;
    }
    let action = BENCH_DEVMAP
        .redirect(params.ifindex, u64::from(xdp_action::XDP_PASS))
        .unwrap_or_else(|a| a);
    Ok((BPF_FIB_LKUP_RET_SUCCESS, action))
}

/// An IPv6 address as the four `__be32` words of `struct bpf_fib_lookup`.
#[inline(always)]
fn words(a: &[u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
        u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
        u32::from_ne_bytes([a[8], a[9], a[10], a[11]]),
        u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
    ]
}

#[tracepoint]
pub fn sluice_flush_tp(ctx: TracePointContext) -> u32 {
    let _ = try_count_flush(&ctx);
    0
}

#[inline(always)]
fn try_count_flush(ctx: &TracePointContext) -> Result<(), i32> {
    let Some(config) = FLUSH_CONFIG.get(0) else { return Ok(()) };
    // SAFETY: reads the tracepoint's record, whose layout userspace checked (`flush_record`).
    let record: [u8; flush_record::LEN] = unsafe { ctx.read_at(0)? };
    let field = |at: usize| {
        i32::from_ne_bytes([record[at], record[at + 1], record[at + 2], record[at + 3]])
    };
    let (from, to) = (field(flush_record::FROM_IFINDEX), field(flush_record::TO_IFINDEX));
    let slot = if from == config.from_ifindex && to == config.to_ifindex && to != 0 {
        FLUSH_SLOT_ROUTER
    } else if from == config.gen_ifindex && to == config.gen_ifindex && to != 0 {
        FLUSH_SLOT_GENERATOR
    } else {
        return Ok(());
    };
    let Some(stats) = FLUSH_STATS.get_ptr_mut(slot) else { return Ok(()) };
    // SAFETY: a per-CPU value, so no other writer runs concurrently on this CPU.
    unsafe {
        (*stats).flushes += 1;
        (*stats).sent += u64::try_from(field(flush_record::SENT)).unwrap_or(0);
        (*stats).drops += u64::try_from(field(flush_record::DROPS)).unwrap_or(0);
        (*stats).errors += u64::from(field(flush_record::ERR) != 0);
    }
    Ok(())
}
