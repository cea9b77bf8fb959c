//! The traffic generator and the sink of `sluice bench`.
//!
//! `sluice_gen` runs under `BPF_PROG_TEST_RUN` with `BPF_F_TEST_XDP_LIVE_FRAMES`: every run writes
//! the whole frame from the template (the kernel recycles pages with what the receivers wrote into
//! them), patches in the next destination of a per-CPU round robin, and returns `XDP_TX`, which
//! live-frames mode turns into a redirect out of the test run's ingress interface (Linux 5.18, "bpf:
//! Add "live packet" mode for XDP in `BPF_PROG_RUN`"). `sluice_sink` sits on the far end of the
//! chain and counts the generated frames that arrive, per CPU, before dropping everything.
#![no_std]
#![no_main]

mod common;

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};
use common::ptr_at;
use sluice_common::{
    FAMILY_V4, FAMILY_V6,
    bench::{FRAME_LEN, GenConfig, GenDest, MAX_GEN_DESTS, UDP_PORT, offsets},
};

const IPPROTO_UDP: u8 = 17;

#[map]
static GEN_CONFIG: Array<GenConfig> = Array::with_max_entries(1, 0);
#[map]
static GEN_DESTS: Array<GenDest> = Array::with_max_entries(MAX_GEN_DESTS, 0);
#[map]
static GEN_CURSOR: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);
#[map]
static SINK_COUNT: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

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
    if n == 0 || n > MAX_GEN_DESTS {
        return Err(());
    }
    let cursor = GEN_CURSOR.get_ptr_mut(0).ok_or(())?;
    // SAFETY: a per-CPU value, so no other writer runs concurrently on this CPU.
    let index = unsafe {
        let i = *cursor % n;
        *cursor = i + 1;
        i
    };
    let dest = GEN_DESTS.get(index).ok_or(())?;
    let words = ptr_at::<[u64; FRAME_LEN / 8]>(ctx, 0)?;
    // SAFETY: `ptr_at` checked that the frame lies inside the packet. Live-frames mode puts packet
    // data 8-aligned in its pages (`struct xdp_page_head` plus XDP_PACKET_HEADROOM), and
    // `GenConfig` is 8-aligned with the frame first, so the copy is eight 64-bit moves rather than
    // sixty-four byte moves.
    let frame = unsafe {
        core::ptr::copy_nonoverlapping((&raw const config.frame).cast(), words, 1);
        &mut *words.cast::<[u8; FRAME_LEN]>()
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
        unsafe { *count += 1 };
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
