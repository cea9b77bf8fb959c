//! Egress accounting: what became of the frames XDP redirected to each egress device.
//!
//! XDP has no qdisc. A redirected frame waits in a per-CPU bulk queue of its egress device until
//! the end of the NAPI poll (or until 16 are queued), and the queue is then handed to the
//! driver's `ndo_xdp_xmit` in one call; whatever the driver does not take (a full ring, a frame
//! larger than a veth peer's MTU, a device going down) is freed there, silently. The kernel reports
//! every such flush through the tracepoint `xdp:xdp_devmap_xmit` (sent, drops, err), and the
//! program `sluice_devmap_xmit` adds each report to [`XmitStats`] per egress ifindex and CPU, so
//! that overflow at transmit is counted like every other drop.
//!
//! A frame can also fail earlier, when `bpf_redirect_map`'s target is resolved after the XDP
//! program returned: the device cannot transmit XDP frames at all (with the `xdp_features` checks
//! of current kernels, a veth whose peer has neither an XDP program nor GRO), is down, or the
//! frame is too big for it. Such a frame never reaches a bulk queue; the kernel reports it through
//! `xdp:xdp_redirect_err`, once per frame, and `sluice_redirect_err` counts it under
//! [`XmitStats::redirect_errors`]. That tracepoint fires only on failure: successful redirects
//! cost nothing here.
//!
//! Both programs run as raw tracepoints: they receive the tracepoint's arguments, the kernel
//! pointers included, rather than the formatted record, and read the egress device's ifindex (and
//! for flushes its network namespace) through them. An ifindex alone is ambiguous, since every
//! namespace numbers its devices from 1 and the tracepoints fire for every namespace. The field
//! offsets come from the kernel's BTF, found by userspace and written into `XMIT_CONFIG` with the
//! daemon's namespace and device map (see [`XmitConfig`]).

/// Names of the egress accounting program and maps, as they appear in the eBPF object and under
/// the pin directory.
pub mod names {
    /// The raw tracepoint program that counts devmap flushes.
    pub const PROGRAM: &str = "sluice_devmap_xmit";
    /// The tracepoint it attaches to (category `xdp`).
    pub const TRACEPOINT: &str = "xdp_devmap_xmit";
    /// The raw tracepoint program that counts redirects the kernel refused.
    pub const REDIRECT_PROGRAM: &str = "sluice_redirect_err";
    /// The tracepoint it attaches to (category `xdp`).
    pub const REDIRECT_TRACEPOINT: &str = "xdp_redirect_err";
    /// Every program with its tracepoint; a link per tracepoint is pinned under its name.
    pub const PROGRAMS: [(&str, &str); 2] =
        [(PROGRAM, TRACEPOINT), (REDIRECT_PROGRAM, REDIRECT_TRACEPOINT)];
    /// Per-CPU hash: egress ifindex (`u32`, host order) -> [`XmitStats`](super::XmitStats).
    pub const XMIT_STATS: &str = "XMIT_STATS";
    /// Array of one [`XmitConfig`](super::XmitConfig).
    pub const XMIT_CONFIG: &str = "XMIT_CONFIG";

    /// Hash: egress ifindex (`u32`, host order) -> [`EgressHold`](super::EgressHold): the
    /// devices redirected frames cannot be delivered to, whose frames go to the kernel.
    pub const EGRESS_HOLD: &str = "EGRESS_HOLD";
    /// Array of one `u32`: how many entries `EGRESS_HOLD` has (0: the program skips it).
    pub const EGRESS_HOLDS: &str = "EGRESS_HOLDS";

    /// The maps of egress accounting, pinned beside the forwarding maps.
    pub const ALL_MAPS: [&str; 4] = [XMIT_STATS, XMIT_CONFIG, EGRESS_HOLD, EGRESS_HOLDS];
}

/// Egress devices counted; a device beyond that is not counted (the map is full).
pub const MAX_XMIT_DEVICES: u32 = 1024;

/// Value of `XMIT_STATS`: the flushes of one egress device on one CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct XmitStats {
    /// Bulk queue flushes (tracepoint hits), each of 1 to 16 frames.
    pub flushes: u64,
    /// Frames the driver accepted.
    pub sent: u64,
    /// Frames the driver did not accept, freed at transmit.
    pub dropped: u64,
    /// Flushes the driver refused as a whole with an error (every frame of those is in `dropped`).
    pub errors: u64,
    /// Frames redirected to the device that the kernel refused to queue for it (counted as
    /// `transmitted` by the XDP program, which cannot know): the device takes no XDP frames, is
    /// down, or the frame is too big. Not part of `flushes`, `sent` or `dropped`.
    pub redirect_errors: u64,
}
const _: () = assert!(size_of::<XmitStats>() == 40);

impl XmitStats {
    /// One flush as the tracepoint reports it: `sent` and `drops` frames, `err` the driver's
    /// error (0, or a negative errno when it refused the whole batch).
    #[inline(always)]
    pub fn flush(sent: i32, drops: i32, err: i32) -> Self {
        // The kernel never reports negative counts; clamp rather than wrap if one ever did.
        Self {
            flushes: 1,
            sent: u64::try_from(sent).unwrap_or(0),
            dropped: u64::try_from(drops).unwrap_or(0),
            errors: u64::from(err != 0),
            redirect_errors: 0,
        }
    }

    /// One frame whose redirect to the device failed.
    #[inline(always)]
    pub const fn redirect_error() -> Self {
        Self { flushes: 0, sent: 0, dropped: 0, errors: 0, redirect_errors: 1 }
    }

    /// Adds `other` to `self` (wrapping, as the kernel side does).
    #[inline(always)]
    pub const fn add(&mut self, other: &Self) {
        self.flushes = self.flushes.wrapping_add(other.flushes);
        self.sent = self.sent.wrapping_add(other.sent);
        self.dropped = self.dropped.wrapping_add(other.dropped);
        self.errors = self.errors.wrapping_add(other.errors);
        self.redirect_errors = self.redirect_errors.wrapping_add(other.redirect_errors);
    }
}

/// Value of `XMIT_CONFIG[0]`, written by the daemon before it attaches the programs. Offsets are
/// in bytes and come from the running kernel's BTF. While `netns_inum` is 0 no flush is counted,
/// while `devmap_id` is 0 no redirect error.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct XmitConfig {
    /// Inode number of the network namespace whose devices are counted (the daemon's: `stat -L
    /// /proc/self/ns/net`), host order.
    pub netns_inum: u32,
    /// Offset of `ifindex` (an `int`) in `struct net_device`.
    pub ifindex_offset: u32,
    /// Offset of the `struct net *` in `struct net_device` (`nd_net.net`).
    pub net_offset: u32,
    /// Offset of the namespace's inode number in `struct net` (`ns.inum`, an `unsigned int`).
    pub inum_offset: u32,
    /// Kernel id of the daemon's `DEVMAP`: redirect errors through other maps are not ours.
    pub devmap_id: u32,
    /// Offset of the `struct net_device *` in a devmap entry (`struct bpf_dtab_netdev`, the
    /// target a redirect error reports).
    pub dtab_dev_offset: u32,
}
const _: () = assert!(size_of::<XmitConfig>() == 24);

/// Why an egress device is held: [`EgressHold::cause`].
pub mod hold_cause {
    /// The device does not advertise `NETDEV_XDP_ACT_NDO_XMIT`: its driver has no
    /// `ndo_xdp_xmit`, or it is a veth whose peer has neither an XDP program nor GRO on.
    pub const NO_XDP_XMIT: u32 = 1;
    /// Redirects to the device kept failing (`xdp:xdp_redirect_err`, or flushes the driver
    /// refused); retried after a while.
    pub const REDIRECT_ERRORS: u32 = 2;
}

/// Value of `EGRESS_HOLD`: an egress device the XDP program does not redirect to (its frames go
/// to the kernel, counted as `pass_egress_not_ready`), and why, for `sluice stats` and the API.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct EgressHold {
    /// One of [`hold_cause`].
    pub cause: u32,
    /// For a veth: its peer's ifindex (in the peer's namespace), else 0.
    pub peer_ifindex: u32,
    /// For a veth: 1 when the peer lives in another network namespace.
    pub peer_elsewhere: u32,
    /// For a veth: 1 when the peer has an XDP program attached.
    pub peer_xdp: u32,
    /// 1 when the kernel forwards what the program passes to it (IPv4 and IPv6 forwarding on in
    /// the daemon's namespace); otherwise the kernel drops the device's frames.
    pub kernel_forwarding: u32,
    /// For a veth whose peer could be looked up: its name, NUL-padded.
    pub peer_name: [u8; 16],
}
const _: () = assert!(size_of::<EgressHold>() == 36);

/// Most egress devices held at once.
pub const MAX_EGRESS_HOLDS: u32 = 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flush_counts_once_with_its_frames() {
        let stats = |flushes, sent, dropped, errors, redirect_errors| XmitStats {
            flushes,
            sent,
            dropped,
            errors,
            redirect_errors,
        };
        assert_eq!(XmitStats::flush(16, 0, 0), stats(1, 16, 0, 0, 0));
        // A veth whose peer went away refuses the batch with -ENXIO.
        assert_eq!(XmitStats::flush(0, 5, -6), stats(1, 0, 5, 1, 0));
        assert_eq!(XmitStats::flush(-1, -1, 0).sent, 0);
        let mut total = XmitStats::flush(3, 1, 0);
        total.add(&XmitStats::flush(0, 4, -6));
        total.add(&XmitStats::redirect_error());
        assert_eq!(total, stats(2, 3, 5, 1, 1));
    }
}
