//! Egress accounting: the raw tracepoint `sluice_devmap_xmit` on `xdp:xdp_devmap_xmit`.
//!
//! The kernel fires the tracepoint once per devmap bulk-queue flush (up to 16 frames, at the end
//! of each NAPI poll), never per packet, so nothing here touches the forwarding fast path. Each
//! flush whose egress device lives in the daemon's network namespace is added, per CPU, to that
//! device's [`XmitStats`]: sent, dropped at transmit, refused with an error. See
//! `sluice_common::xmit` for why the namespace is checked and where the offsets come from.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::bpf_probe_read_kernel,
    macros::{map, raw_tracepoint},
    maps::{Array, PerCpuHashMap},
    programs::RawTracePointContext,
};
use sluice_common::xmit::{MAX_XMIT_DEVICES, XmitConfig, XmitStats};

#[map]
static XMIT_STATS: PerCpuHashMap<u32, XmitStats> =
    PerCpuHashMap::with_max_entries(MAX_XMIT_DEVICES, 0);
#[map]
static XMIT_CONFIG: Array<XmitConfig> = Array::with_max_entries(1, 0);

/// `TP_PROTO(const struct net_device *from_dev, const struct net_device *to_dev, int sent,
/// int drops, int err)`: the positions of the arguments used.
const ARG_TO_DEV: usize = 1;
const ARG_SENT: usize = 2;
const ARG_DROPS: usize = 3;
const ARG_ERR: usize = 4;

#[raw_tracepoint(tracepoint = "xdp_devmap_xmit")]
pub fn sluice_devmap_xmit(ctx: RawTracePointContext) -> u32 {
    let _ = try_count(&ctx);
    0
}

#[inline(always)]
fn try_count(ctx: &RawTracePointContext) -> Result<(), i32> {
    let Some(config) = XMIT_CONFIG.get(0) else { return Ok(()) };
    if config.netns_inum == 0 {
        return Ok(());
    }
    let dev: u64 = ctx.arg(ARG_TO_DEV);
    let ifindex: i32 = read_kernel(dev, config.ifindex_offset)?;
    let net: u64 = read_kernel(dev, config.net_offset)?;
    let inum: u32 = read_kernel(net, config.inum_offset)?;
    if inum != config.netns_inum {
        return Ok(());
    }
    let ifindex = ifindex.cast_unsigned();
    let flush = XmitStats::flush(ctx.arg(ARG_SENT), ctx.arg(ARG_DROPS), ctx.arg(ARG_ERR));
    if let Some(stats) = XMIT_STATS.get_ptr_mut(ifindex) {
        // SAFETY: a per-CPU value, so no other writer runs concurrently on this CPU.
        unsafe { (*stats).add(&flush) };
        return Ok(());
    }
    // The first flush to this device: a per-CPU hash insert from a program sets this CPU's value
    // and zeroes the others. Another CPU may have inserted meanwhile (EEXIST): add to ours then.
    if XMIT_STATS.insert(ifindex, flush, u64::from(BPF_NOEXIST)).is_err() {
        if let Some(stats) = XMIT_STATS.get_ptr_mut(ifindex) {
            // SAFETY: as above.
            unsafe { (*stats).add(&flush) };
        }
    }
    Ok(())
}

/// Reads a `T` at `base + offset` in kernel memory.
#[inline(always)]
fn read_kernel<T>(base: u64, offset: u32) -> Result<T, i32> {
    let addr = base.wrapping_add(u64::from(offset)) as *const T;
    // SAFETY: bpf_probe_read_kernel checks the address and fails rather than fault.
    unsafe { bpf_probe_read_kernel(addr) }
}
