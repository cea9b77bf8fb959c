//! Egress accounting: the raw tracepoints `sluice_devmap_xmit` on `xdp:xdp_devmap_xmit` and
//! `sluice_redirect_err` on `xdp:xdp_redirect_err`.
//!
//! The kernel fires the first once per devmap bulk-queue flush (up to 16 frames, at the end of
//! each NAPI poll) and the second only for a redirect that failed, never for a forwarded packet,
//! so nothing here touches the forwarding fast path. Each event about a device of the daemon's is
//! added, per CPU, to that device's [`XmitStats`]. See `sluice_common::xmit` for why the namespace
//! and the device map are checked and where the offsets come from.
//!
//! It also holds the egress devices the control plane found unable to take redirected frames
//! (`EGRESS_HOLD`): the forwarding program asks [`egress_held`] before it redirects.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::bpf_probe_read_kernel,
    macros::{map, raw_tracepoint},
    maps::{Array, HashMap, PerCpuHashMap},
    programs::RawTracePointContext,
};
use sluice_common::xmit::{EgressHold, MAX_EGRESS_HOLDS, MAX_XMIT_DEVICES, XmitConfig, XmitStats};

#[map]
static XMIT_STATS: PerCpuHashMap<u32, XmitStats> =
    PerCpuHashMap::with_max_entries(MAX_XMIT_DEVICES, 0);
#[map]
static XMIT_CONFIG: Array<XmitConfig> = Array::with_max_entries(1, 0);
#[map]
static EGRESS_HOLD: HashMap<u32, EgressHold> = HashMap::with_max_entries(MAX_EGRESS_HOLDS, 0);
#[map]
static EGRESS_HOLDS: Array<u32> = Array::with_max_entries(1, 0);

/// Whether redirected frames cannot be delivered to `ifindex` (its frames go to the kernel).
/// While nothing is held, one array read: the hash is looked up only when some device is.
#[inline(always)]
pub fn egress_held(ifindex: u32) -> bool {
    match EGRESS_HOLDS.get(0) {
        Some(n) if *n != 0 => {}
        _ => return false,
    }
    // SAFETY: only the presence of the entry is read.
    unsafe { EGRESS_HOLD.get(&ifindex) }.is_some()
}

/// `xdp_devmap_xmit`: `TP_PROTO(const struct net_device *from_dev, const struct net_device
/// *to_dev, int sent, int drops, int err)`; the positions of the arguments used.
mod flush_arg {
    pub const TO_DEV: usize = 1;
    pub const SENT: usize = 2;
    pub const DROPS: usize = 3;
    pub const ERR: usize = 4;
}

/// `xdp_redirect_err`: `TP_PROTO(const struct net_device *dev, const struct bpf_prog *xdp,
/// const void *tgt, int err, enum bpf_map_type map_type, u32 map_id, u32 index)`; `tgt` is the
/// devmap entry for a devmap redirect.
mod redirect_arg {
    pub const TGT: usize = 2;
    pub const MAP_ID: usize = 5;
}

#[raw_tracepoint(tracepoint = "xdp_devmap_xmit")]
pub fn sluice_devmap_xmit(ctx: RawTracePointContext) -> u32 {
    let _ = count_flush(&ctx);
    0
}

#[raw_tracepoint(tracepoint = "xdp_redirect_err")]
pub fn sluice_redirect_err(ctx: RawTracePointContext) -> u32 {
    let _ = count_redirect_error(&ctx);
    0
}

#[inline(always)]
fn count_flush(ctx: &RawTracePointContext) -> Result<(), i32> {
    let Some(config) = XMIT_CONFIG.get(0) else { return Ok(()) };
    if config.netns_inum == 0 {
        return Ok(());
    }
    let dev: u64 = ctx.arg(flush_arg::TO_DEV);
    let ifindex: i32 = read_kernel(dev, config.ifindex_offset)?;
    let net: u64 = read_kernel(dev, config.net_offset)?;
    let inum: u32 = read_kernel(net, config.inum_offset)?;
    if inum != config.netns_inum {
        return Ok(());
    }
    let flush = XmitStats::flush(
        ctx.arg(flush_arg::SENT),
        ctx.arg(flush_arg::DROPS),
        ctx.arg(flush_arg::ERR),
    );
    add(ifindex.cast_unsigned(), &flush);
    Ok(())
}

#[inline(always)]
fn count_redirect_error(ctx: &RawTracePointContext) -> Result<(), i32> {
    let Some(config) = XMIT_CONFIG.get(0) else { return Ok(()) };
    let map_id: u32 = ctx.arg(redirect_arg::MAP_ID);
    let tgt: u64 = ctx.arg(redirect_arg::TGT);
    // Only redirects through the daemon's own device map; its ids are unique system-wide, so
    // no namespace check is needed. A broadcast redirect has no single target (tgt is NULL).
    if config.devmap_id == 0 || map_id != config.devmap_id || tgt == 0 {
        return Ok(());
    }
    let dev: u64 = read_kernel(tgt, config.dtab_dev_offset)?;
    let ifindex: i32 = read_kernel(dev, config.ifindex_offset)?;
    add(ifindex.cast_unsigned(), &XmitStats::redirect_error());
    Ok(())
}

/// Adds `stats` to this CPU's value for `ifindex`.
#[inline(always)]
fn add(ifindex: u32, stats: &XmitStats) {
    if let Some(total) = XMIT_STATS.get_ptr_mut(ifindex) {
        // SAFETY: a per-CPU value, so no other writer runs concurrently on this CPU.
        unsafe { (*total).add(stats) };
        return;
    }
    // The first event for this device: a per-CPU hash insert from a program sets this CPU's
    // value and zeroes the others. Another CPU may have inserted meanwhile (EEXIST): add to ours.
    if XMIT_STATS.insert(ifindex, stats, u64::from(BPF_NOEXIST)).is_err()
        && let Some(total) = XMIT_STATS.get_ptr_mut(ifindex)
    {
        // SAFETY: as above.
        unsafe { (*total).add(stats) };
    }
}

/// Reads a `T` at `base + offset` in kernel memory.
#[inline(always)]
fn read_kernel<T>(base: u64, offset: u32) -> Result<T, i32> {
    let addr = base.wrapping_add(u64::from(offset)) as *const T;
    // SAFETY: bpf_probe_read_kernel checks the address and fails rather than fault.
    unsafe { bpf_probe_read_kernel(addr) }
}
