//! The contract between the Sluice XDP program and its control plane: map names, map keys and
//! values, counter reasons, and the few pure functions (checksum update, flow hash) both sides must
//! compute identically.
//!
//! Every type here is `#[repr(C)]` and `Copy`, with explicit padding so that the kernel side and the
//! userspace side agree on every byte. Integers are host byte order unless the field says otherwise;
//! addresses are kept as they appear on the wire (network byte order) so that the XDP program can
//! copy them without swapping.
#![no_std]

pub mod bench;
pub mod dir24;
pub mod hooks;
pub mod steps;
pub mod trie6;
#[cfg(feature = "user")]
mod user;
pub mod xmit;

/// Names of the maps and of the program, as they appear in the eBPF object and under the pin
/// directory.
pub mod names {
    /// The XDP forwarding program.
    pub const PROGRAM: &str = "sluice_xdp";
    /// LPM trie of IPv4 routes: `Key<[u8; 4]>` -> [`Route`](super::Route). The record of the
    /// IPv4 prefixes (for `sluice routes` and adoption); the XDP program looks IPv4 up in
    /// `TBL24_V4` / `DIR8_V4`.
    pub const ROUTES_V4: &str = "ROUTES_V4";
    /// LPM trie of IPv6 routes: `Key<[u8; 16]>` -> [`Route`](super::Route). The record of the
    /// IPv6 prefixes; the XDP program looks IPv6 up in `TRIE_V6`.
    pub const ROUTES_V6: &str = "ROUTES_V6";
    /// Array of next hops indexed by next-hop id.
    pub const NEXTHOPS: &str = "NEXTHOPS";
    /// Array of ECMP groups indexed by group id.
    pub const ECMP_GROUPS: &str = "ECMP_GROUPS";
    /// Hash of the interfaces the program serves, keyed by [`IfaceKey`](super::IfaceKey).
    pub const IFACES: &str = "IFACES";
    /// `DEVMAP_HASH` of egress devices, keyed by ifindex.
    pub const DEVMAP: &str = "DEVMAP";
    /// Per-CPU counters, indexed by `slot * REASON_SLOTS + reason`.
    pub const COUNTERS: &str = "COUNTERS";
    /// Ring buffer of [`NeighRequest`](super::NeighRequest): destinations without a resolved neighbour.
    pub const NEIGH_REQUESTS: &str = "NEIGH_REQUESTS";
    /// LRU hash that rate-limits [`NeighRequest`](super::NeighRequest)s per destination.
    pub const NEIGH_PENDING: &str = "NEIGH_PENDING";
    /// IPv4 DIR-24-8 first level: one 16-bit entry per /24, then the results they name (see
    /// [`dir24`](super::dir24)).
    pub const TBL24_V4: &str = "TBL24_V4";
    /// IPv4 DIR-24-8 second level: groups of 256 entries.
    pub const DIR8_V4: &str = "DIR8_V4";
    /// IPv6 multibit trie (see [`trie6`](super::trie6)).
    pub const TRIE_V6: &str = "TRIE_V6";
    /// Direct-mapped array of [`IfaceCacheEntry`](super::IfaceCacheEntry): the fast path's copy
    /// of the `IFACES` entries it reads for every packet.
    pub const IFACE_CACHE: &str = "IFACE_CACHE";

    /// Hook table `filter`, IPv4 sources: LPM trie `Key<[u8; 4]>` ->
    /// [`FilterRule`](super::hooks::FilterRule).
    pub const FILTER_SRC_V4: &str = "FILTER_SRC_V4";
    /// Hook table `filter`, IPv4 destinations.
    pub const FILTER_DST_V4: &str = "FILTER_DST_V4";
    /// Hook table `filter`, IPv6 sources: LPM trie `Key<[u8; 16]>`.
    pub const FILTER_SRC_V6: &str = "FILTER_SRC_V6";
    /// Hook table `filter`, IPv6 destinations.
    pub const FILTER_DST_V6: &str = "FILTER_DST_V6";
    /// Hook table `rate-limit`, IPv4 source prefixes: LPM trie ->
    /// [`RateRule`](super::hooks::RateRule).
    pub const RATE_V4: &str = "RATE_V4";
    /// Hook table `rate-limit`, IPv6 source prefixes.
    pub const RATE_V6: &str = "RATE_V6";
    /// Hook table `steer`, IPv4 destinations: LPM trie `Key<[u8; 4]>` ->
    /// [`SteerRule`](super::hooks::SteerRule).
    pub const STEER_V4: &str = "STEER_V4";
    /// Hook table `steer`, IPv6 destinations.
    pub const STEER_V6: &str = "STEER_V6";
    /// LRU hash of token buckets, one per source address a rate rule covers.
    pub const RATE_STATE: &str = "RATE_STATE";
    /// Per-CPU packet and byte counters of the hook rules, indexed by rule id.
    pub const RULE_COUNTERS: &str = "RULE_COUNTERS";
    /// One [`HookConfig`](super::hooks::HookConfig): which hook tables hold anything.
    pub const HOOK_CONFIG: &str = "HOOK_CONFIG";
    /// Array of [`Summary`](super::hooks::Summary), one per hook table
    /// ([`summary`](super::hooks::summary)): which first 16 bits of an address its rules cover.
    pub const HOOK_SUMMARY: &str = "HOOK_SUMMARY";
    /// Ring buffer of [`Sample`](super::hooks::Sample)s: 1 in N packet headers.
    pub const SAMPLES: &str = "SAMPLES";
    /// Per-CPU LRU hash [`TalkerKey`](super::TalkerKey) -> [`Counter`](super::Counter):
    /// forwarded packets sampled 1 in [`TALKER_SAMPLE_EVERY`](super::TALKER_SAMPLE_EVERY), by
    /// source address (the top talkers).
    pub const TALKERS: &str = "TALKERS";
    /// Per-CPU array of one [`TalkerScratch`](super::TalkerScratch), not pinned.
    pub const TALKER_SCRATCH: &str = "TALKER_SCRATCH";

    /// Every map, in the order they are pinned.
    pub const ALL_MAPS: [&str; 27] = [
        ROUTES_V4,
        ROUTES_V6,
        NEXTHOPS,
        ECMP_GROUPS,
        IFACES,
        DEVMAP,
        COUNTERS,
        NEIGH_REQUESTS,
        NEIGH_PENDING,
        TBL24_V4,
        DIR8_V4,
        TRIE_V6,
        IFACE_CACHE,
        FILTER_SRC_V4,
        FILTER_DST_V4,
        FILTER_SRC_V6,
        FILTER_DST_V6,
        RATE_V4,
        RATE_V6,
        STEER_V4,
        STEER_V6,
        RATE_STATE,
        RULE_COUNTERS,
        HOOK_CONFIG,
        HOOK_SUMMARY,
        SAMPLES,
        TALKERS,
    ];
}

/// Capacity of the IPv4 route trie.
pub const MAX_ROUTES_V4: u32 = 1 << 21;
/// Capacity of the IPv6 route trie.
pub const MAX_ROUTES_V6: u32 = 1 << 19;
/// Capacity of the next-hop array. Id 0 is never used, so a zeroed route is never a valid one.
pub const MAX_NEXTHOPS: u32 = 1 << 16;
/// Capacity of the ECMP group array. Id 0 is never used.
pub const MAX_ECMP_GROUPS: u32 = 1 << 14;
/// Most members in one ECMP group (Linux allows more; extra members are ignored and reported).
pub const MAX_ECMP_MEMBERS: usize = 16;
/// Interfaces (and VLAN sub-interfaces) the program can serve.
pub const MAX_IFACES: u32 = 1024;
/// Counter slots per interface. Slot 0 counts traffic from interfaces the program does not know.
pub const MAX_SLOTS: u32 = 256;
/// Counters reserved per slot; `Reason::COUNT` of them are in use.
pub const REASON_SLOTS: u32 = 32;
/// Size in bytes of the neighbour request ring buffer.
pub const NEIGH_RING_BYTES: u32 = 64 * 1024;
/// Destinations remembered to rate-limit neighbour requests.
pub const NEIGH_PENDING_ENTRIES: u32 = 4096;
/// A destination is reported again after this long without a resolved neighbour.
pub const NEIGH_REQUEST_INTERVAL_NS: u64 = 500_000_000;

/// What a route does with a packet. Stored as `u32` in [`Route::action`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RouteAction {
    /// Forward to the next hop [`Route::target`].
    Forward = 1,
    /// Forward to a member of ECMP group [`Route::target`], chosen by flow hash.
    Ecmp = 2,
    /// A directly connected subnet on interface [`Route::target`] whose destination has no host
    /// entry yet: the neighbour is unknown, so the packet goes to the kernel and is reported.
    Connected = 3,
    /// An address of the router itself (or a broadcast address): to the kernel.
    Local = 4,
    /// Blackhole route: dropped in XDP.
    Blackhole = 5,
    /// Unreachable or prohibit route: to the kernel, which answers with ICMP.
    Unreachable = 6,
    /// Anything else the kernel must handle itself (throw, multicast, nat, ...).
    Pass = 7,
}

impl RouteAction {
    /// Decodes the `u32` stored in a map.
    pub const fn from_u32(value: u32) -> Option<Self> {
        Some(match value {
            1 => Self::Forward,
            2 => Self::Ecmp,
            3 => Self::Connected,
            4 => Self::Local,
            5 => Self::Blackhole,
            6 => Self::Unreachable,
            7 => Self::Pass,
            _ => return None,
        })
    }

    /// A short lowercase name, used by the CLI and in JSON.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Forward => "forward",
            Self::Ecmp => "ecmp",
            Self::Connected => "connected",
            Self::Local => "local",
            Self::Blackhole => "blackhole",
            Self::Unreachable => "unreachable",
            Self::Pass => "pass",
        }
    }
}

/// The value of a route in `ROUTES_V4` / `ROUTES_V6`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Route {
    /// A [`RouteAction`] (host order).
    pub action: u32,
    /// Next-hop id for `Forward`, group id for `Ecmp`, ifindex for `Connected`, else 0 (host order).
    pub target: u32,
}
const _: () = assert!(size_of::<Route>() == 8);

/// [`NextHop::flags`]: the neighbour is resolved and `dmac` is valid.
pub const NH_F_RESOLVED: u32 = 1 << 0;
/// [`NextHop::flags`]: push or rewrite an 802.1Q tag with `vlan_tci` on egress.
pub const NH_F_VLAN: u32 = 1 << 1;

/// Address family values used in [`NextHop::family`] and [`NeighRequest::family`].
pub const FAMILY_V4: u8 = 4;
/// See [`FAMILY_V4`].
pub const FAMILY_V6: u8 = 6;

/// A resolved (or unresolved) next hop: where to send and how to rewrite the Ethernet header.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct NextHop {
    /// Egress device for `bpf_redirect_map` (the parent device for a VLAN), host order.
    pub ifindex: u32,
    /// L3 MTU of the egress interface, host order.
    pub mtu: u32,
    /// `NH_F_*` bits, host order.
    pub flags: u32,
    /// Counter slot of the egress (logical) interface, host order.
    pub egress_slot: u32,
    /// 802.1Q tag control information (priority and VLAN id), host order; valid with `NH_F_VLAN`.
    pub vlan_tci: u16,
    /// Source MAC: the egress interface's address.
    pub smac: [u8; 6],
    /// Destination MAC: the neighbour's address; valid with `NH_F_RESOLVED`.
    pub dmac: [u8; 6],
    /// [`FAMILY_V4`] or [`FAMILY_V6`]: the family of `gateway`.
    pub family: u8,
    /// Explicit padding.
    pub _pad: u8,
    /// The neighbour's address (network order; IPv4 in the first four bytes). Reported when the
    /// neighbour is unresolved.
    pub gateway: [u8; 16],
    /// ifindex of the logical egress interface (the VLAN device itself), for neighbour requests.
    pub logical_ifindex: u32,
}
const _: () = assert!(size_of::<NextHop>() == 52);

impl NextHop {
    /// Whether the neighbour's MAC is known.
    pub const fn is_resolved(&self) -> bool {
        self.flags & NH_F_RESOLVED != 0
    }
}

/// An ECMP group: up to [`MAX_ECMP_MEMBERS`] next-hop ids. A member may repeat to carry weight.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct EcmpGroup {
    /// Members in use, 1..=`MAX_ECMP_MEMBERS` (host order).
    pub count: u32,
    /// Next-hop ids (host order).
    pub members: [u32; MAX_ECMP_MEMBERS],
}
const _: () = assert!(size_of::<EcmpGroup>() == 4 + 4 * MAX_ECMP_MEMBERS);

impl EcmpGroup {
    /// The member a flow with this hash goes to. Multiply-shift instead of modulo: no division on
    /// the packet path, and the same spread.
    pub const fn pick(&self, hash: u32) -> Option<u32> {
        let count = self.count as usize;
        if count == 0 || count > MAX_ECMP_MEMBERS {
            return None;
        }
        let index = ((hash as u64 * count as u64) >> 32) as usize;
        if index >= MAX_ECMP_MEMBERS {
            return None;
        }
        Some(self.members[index])
    }
}

/// Key of `IFACES`: a device, and the VLAN id for a tagged sub-interface (0 for untagged frames).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct IfaceKey {
    /// ifindex of the device the frame arrives on (host order).
    pub ifindex: u32,
    /// VLAN id of the 802.1Q tag, or 0 (host order).
    pub vlan_id: u16,
    /// Explicit padding.
    pub _pad: u16,
}
const _: () = assert!(size_of::<IfaceKey>() == 8);

/// Entries of `IFACE_CACHE`.
pub const IFACE_CACHE_ENTRIES: u32 = 1024;

/// An entry of `IFACE_CACHE`: what every packet needs of its ingress interface, found with an
/// array read instead of a hash lookup. `IFACES` stays the authority: a key whose cache entry
/// holds another interface (two keys on one index) or nothing is looked up there.
///
/// An array value is written by a plain copy, so a reader could see half of an update. The key's
/// tag is therefore written at both ends: the control plane first zeroes the entry, then writes
/// it whole (the kernel copies forward), and a reader trusts the fields only when both tags are
/// the key's.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct IfaceCacheEntry {
    /// [`iface_cache_tag`] of the key (host order); 0: empty.
    pub head: u64,
    /// [`Iface::slot`].
    pub slot: u32,
    /// [`Iface::mac`].
    pub mac: [u8; 6],
    /// Explicit padding.
    pub _pad: [u8; 6],
    /// The same tag as `head`.
    pub tail: u64,
}
const _: () = assert!(size_of::<IfaceCacheEntry>() == 32);

/// The `IFACE_CACHE` index of a key.
#[inline(always)]
pub const fn iface_cache_index(ifindex: u32, vlan_id: u16) -> u32 {
    (ifindex.wrapping_mul(0x9e37_79b1) ^ (vlan_id as u32).wrapping_mul(0x85eb_ca6b))
        % IFACE_CACHE_ENTRIES
}

/// The tag of a key in `IFACE_CACHE`: never 0.
#[inline(always)]
pub const fn iface_cache_tag(ifindex: u32, vlan_id: u16) -> u64 {
    1 << 63 | (ifindex as u64) << 16 | vlan_id as u64
}

/// An address as the maps and ring buffers carry it: 16 bytes, IPv4 in the first 4 when
/// `family` is [`FAMILY_V4`].
pub fn addr_of(family: u8, a: &[u8; 16]) -> core::net::IpAddr {
    if family == FAMILY_V4 {
        core::net::IpAddr::V4(core::net::Ipv4Addr::new(a[0], a[1], a[2], a[3]))
    } else {
        core::net::IpAddr::V6(core::net::Ipv6Addr::from(*a))
    }
}

/// [`Iface::flags`]: the interface is administratively and operationally up.
pub const IF_F_UP: u32 = 1 << 0;

/// XDP attach modes, stored in [`Iface::xdp_mode`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum XdpAttachMode {
    /// Not attached here (a VLAN sub-interface served through its parent).
    None = 0,
    /// Native (driver) mode.
    Native = 1,
    /// Generic (skb) mode.
    Generic = 2,
    /// Offloaded to the NIC.
    Offload = 3,
}

impl XdpAttachMode {
    /// Decodes the `u32` stored in a map.
    pub const fn from_u32(value: u32) -> Self {
        match value {
            1 => Self::Native,
            2 => Self::Generic,
            3 => Self::Offload,
            _ => Self::None,
        }
    }

    /// A short lowercase name.
    pub const fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Native => "native",
            Self::Generic => "generic",
            Self::Offload => "offload",
        }
    }
}

/// Value of `IFACES`: what the program needs to know about an ingress interface.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Iface {
    /// Counter slot, 1..`MAX_SLOTS` (host order).
    pub slot: u32,
    /// `IF_F_*` bits (host order).
    pub flags: u32,
    /// L3 MTU (host order).
    pub mtu: u32,
    /// An [`XdpAttachMode`] (host order).
    pub xdp_mode: u32,
    /// ifindex of the logical interface (the VLAN device for a tagged key), host order.
    pub logical_ifindex: u32,
    /// The interface's MAC address: unicast frames to any other address are not ours.
    pub mac: [u8; 6],
    /// Explicit padding.
    pub _pad: [u8; 2],
    /// The logical interface's name, NUL-padded, so that counters can be shown without netlink.
    pub name: [u8; 16],
}
const _: () = assert!(size_of::<Iface>() == 44);

/// Why a packet got the verdict it got. One counter per (interface slot, reason).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// Forwarded by XDP (counted on the ingress interface).
    Forwarded = 0,
    /// Sent out by XDP (counted on the egress interface).
    Transmitted = 1,
    /// Not IPv4 or IPv6 (ARP, LLDP, ...): to the kernel.
    PassNotIp = 2,
    /// Unicast to another host's MAC address: to the kernel, which discards it.
    PassOtherHost = 3,
    /// Addressed to the router itself: to the kernel.
    PassLocal = 4,
    /// Multicast: to the kernel.
    PassMulticast = 5,
    /// Broadcast: to the kernel.
    PassBroadcast = 6,
    /// TTL or hop limit would expire: to the kernel, which sends ICMP time exceeded.
    PassTtl = 7,
    /// No route: to the kernel, which sends ICMP unreachable.
    PassNoRoute = 8,
    /// Unreachable or prohibit route: to the kernel, which sends ICMP unreachable.
    PassUnreachable = 9,
    /// The next hop's neighbour is not resolved: to the kernel, and reported for resolution.
    PassNeighbour = 10,
    /// IPv4 options or an IPv6 hop-by-hop header: to the kernel.
    PassOptions = 11,
    /// Larger than the egress MTU: to the kernel (fragmentation needed / packet too big).
    PassMtu = 12,
    /// The egress device is not in the device map: to the kernel.
    PassNoEgress = 13,
    /// A source or destination that must never be forwarded (loopback, link-local, ...).
    PassMartian = 14,
    /// Arrived on an interface (or VLAN) Sluice does not serve: to the kernel.
    PassUnknownIface = 15,
    /// Any other case the kernel handles itself (a route of a type XDP does not forward).
    PassOther = 16,
    /// Blackhole route: dropped.
    DropBlackhole = 17,
    /// Truncated or inconsistent headers, bad IPv4 header checksum: dropped.
    DropMalformed = 18,
    /// Dropped by a rule of the `filter` hook table.
    DropFiltered = 19,
    /// Sent to the kernel by a rule of the `filter` hook table.
    PassFiltered = 20,
    /// Dropped by the `rate-limit` hook table: its source sent more than its rule allows.
    DropRateLimited = 21,
    /// The egress device cannot take redirected frames (see `xmit::EgressHold`): to the kernel,
    /// which forwards it.
    PassEgressNotReady = 22,
}

impl Reason {
    /// Number of reasons in use.
    pub const COUNT: u32 = 23;

    /// All reasons, by value.
    pub const ALL: [Self; Self::COUNT as usize] = [
        Self::Forwarded,
        Self::Transmitted,
        Self::PassNotIp,
        Self::PassOtherHost,
        Self::PassLocal,
        Self::PassMulticast,
        Self::PassBroadcast,
        Self::PassTtl,
        Self::PassNoRoute,
        Self::PassUnreachable,
        Self::PassNeighbour,
        Self::PassOptions,
        Self::PassMtu,
        Self::PassNoEgress,
        Self::PassMartian,
        Self::PassUnknownIface,
        Self::PassOther,
        Self::DropBlackhole,
        Self::DropMalformed,
        Self::DropFiltered,
        Self::PassFiltered,
        Self::DropRateLimited,
        Self::PassEgressNotReady,
    ];

    /// A stable snake-case name, used by the CLI, in JSON and as a metric label.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Forwarded => "forwarded",
            Self::Transmitted => "transmitted",
            Self::PassNotIp => "pass_not_ip",
            Self::PassOtherHost => "pass_other_host",
            Self::PassLocal => "pass_local",
            Self::PassMulticast => "pass_multicast",
            Self::PassBroadcast => "pass_broadcast",
            Self::PassTtl => "pass_ttl",
            Self::PassNoRoute => "pass_no_route",
            Self::PassUnreachable => "pass_unreachable",
            Self::PassNeighbour => "pass_neighbour",
            Self::PassOptions => "pass_options",
            Self::PassMtu => "pass_mtu",
            Self::PassNoEgress => "pass_no_egress",
            Self::PassMartian => "pass_martian",
            Self::PassUnknownIface => "pass_unknown_iface",
            Self::PassOther => "pass_other",
            Self::DropBlackhole => "drop_blackhole",
            Self::DropMalformed => "drop_malformed",
            Self::DropFiltered => "drop_filtered",
            Self::PassFiltered => "pass_filtered",
            Self::DropRateLimited => "drop_rate_limited",
            Self::PassEgressNotReady => "pass_egress_not_ready",
        }
    }

    /// Index of this reason's counter for a slot in `COUNTERS`.
    pub const fn index(self, slot: u32) -> u32 {
        slot * REASON_SLOTS + self as u32
    }
}
const _: () = assert!(Reason::COUNT <= REASON_SLOTS);
const _: () = assert!(Reason::ALL.len() == Reason::COUNT as usize);

/// A per-CPU counter.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Counter {
    /// Packets.
    pub packets: u64,
    /// Bytes of the frames as received (Ethernet header included).
    pub bytes: u64,
}
const _: () = assert!(size_of::<Counter>() == 16);

/// A destination whose neighbour the kernel should resolve, sent through `NEIGH_REQUESTS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct NeighRequest {
    /// ifindex of the interface the neighbour is on (host order).
    pub ifindex: u32,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// Explicit padding.
    pub _pad: [u8; 3],
    /// The address (network order; IPv4 in the first four bytes).
    pub addr: [u8; 16],
}
const _: () = assert!(size_of::<NeighRequest>() == 24);

/// Forwarded packets are sampled for the top talkers 1 in this many (`1 << TALKER_SAMPLE_BITS`).
pub const TALKER_SAMPLE_EVERY: u64 = 1 << TALKER_SAMPLE_BITS;
/// log2 of [`TALKER_SAMPLE_EVERY`].
pub const TALKER_SAMPLE_BITS: u32 = 6;
/// Sources the top-talker table holds; the least recently sampled make room for new ones.
pub const TALKER_ENTRIES: u32 = 4096;

/// A source address in `TALKERS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct TalkerKey {
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// Explicit padding.
    pub _pad: [u8; 3],
    /// The source address (network order; IPv4 in the first four bytes, the rest zero).
    pub addr: [u8; 16],
}
const _: () = assert!(size_of::<TalkerKey>() == 20);

/// Where the XDP program builds a top-talker sample (`TALKER_SCRATCH`, one a CPU, not pinned):
/// the forwarding path leaves no room for it on the program's 512-byte stack.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TalkerScratch {
    /// The key.
    pub key: TalkerKey,
    /// Explicit padding.
    pub _pad: [u8; 4],
    /// A first sample's value.
    pub value: Counter,
}
const _: () = assert!(size_of::<TalkerScratch>() == 40);

/// Whether the `n`th packet an egress counter counts is sampled for the top talkers: 1 in
/// [`TALKER_SAMPLE_EVERY`]. The positions come from a multiplicative hash of `n` (Knuth's,
/// with 2^64 / golden ratio), not every Nth packet, which traffic of a fixed period (two flows
/// taking turns) would alias with. It costs the fast path a multiply and a compare: `n` is the
/// per-CPU counter it increments anyway.
#[inline(always)]
pub const fn talker_sampled(n: u64) -> bool {
    n.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - TALKER_SAMPLE_BITS) == 0
}

/// Folds a 32-bit one's-complement sum to 16 bits.
#[inline(always)]
pub const fn csum_fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// The IPv4 header checksum after the TTL is decremented by one, by RFC 1624 eqn. 3:
/// `HC' = ~(~HC + ~m + m')`, where `m` is the 16-bit word holding TTL and protocol.
/// `check` and `ttl_proto` are the big-endian words read as host integers.
#[inline(always)]
pub const fn csum_ttl_decrement(check: u16, ttl_proto: u16) -> u16 {
    let new_word = ttl_proto.wrapping_sub(0x0100);
    let sum = (!check) as u32 + (!ttl_proto) as u32 + new_word as u32;
    !csum_fold(sum)
}

/// Mixes the fields of a flow into a 32-bit hash (the `MurmurHash3` finaliser over a running
/// combination). The same function runs in XDP and in tests, so ECMP choices can be predicted.
#[inline(always)]
pub const fn flow_hash(words: &[u32; 10], seed: u32) -> u32 {
    let mut h = seed ^ 0x9e37_79b9;
    let mut i = 0;
    while i < words.len() {
        h ^= words[i];
        h = h.wrapping_mul(0x85eb_ca6b);
        h ^= h >> 13;
        i += 1;
    }
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// The words [`flow_hash`] takes for a flow: source and destination address (IPv4 uses the first
/// word of each, the rest zero), protocol, and ports (zero when the packet is a fragment or
/// carries no ports, so every fragment of a datagram takes the same path).
#[inline(always)]
pub const fn flow_words(src: &[u8; 16], dst: &[u8; 16], proto: u8, ports: u32) -> [u32; 10] {
    [
        word(src, 0),
        word(src, 1),
        word(src, 2),
        word(src, 3),
        word(dst, 0),
        word(dst, 1),
        word(dst, 2),
        word(dst, 3),
        proto as u32,
        ports,
    ]
}

#[inline(always)]
const fn word(a: &[u8; 16], i: usize) -> u32 {
    u32::from_ne_bytes([a[4 * i], a[4 * i + 1], a[4 * i + 2], a[4 * i + 3]])
}

/// Seed of the ECMP flow hash.
pub const FLOW_HASH_SEED: u32 = 0x5e1c_e5ed;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn talkers_are_sampled_one_in_n_without_favouring_a_period() {
        let n = TALKER_SAMPLE_EVERY * 20_000;
        let sampled = (1..=n).filter(|&i| talker_sampled(i)).count() as u64;
        assert!(sampled.abs_diff(20_000) < 200, "{sampled} of {n}");
        // Two, then three flows taking turns are sampled alike.
        for period in [2, 3] {
            let mut per_flow = [0u64; 3];
            for i in (1..=n).filter(|&i| talker_sampled(i)) {
                per_flow[(i % period) as usize] += 1;
            }
            let each = sampled / period;
            for f in &per_flow[..period as usize] {
                assert!(f.abs_diff(each) * 20 < each, "period {period}: {per_flow:?}");
            }
        }
    }

    fn full_checksum(header: &[u8]) -> u16 {
        let mut sum = 0u32;
        for pair in header.chunks(2) {
            sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
        }
        !csum_fold(sum)
    }

    #[test]
    fn ttl_decrement_matches_full_recompute() {
        // Every TTL and a spread of other header contents, including the checksum edge cases.
        for ttl in 2..=255u8 {
            for (proto, id) in [(17u8, 0u16), (6, 0xffff), (1, 0x1234), (255, 0x0001)] {
                let mut h = [
                    0x45,
                    0,
                    0,
                    84,
                    (id >> 8) as u8,
                    id as u8,
                    0x40,
                    0,
                    ttl,
                    proto,
                    0,
                    0,
                    10,
                    0,
                    1,
                    2,
                    192,
                    0,
                    2,
                    7,
                ];
                let c = full_checksum(&h);
                h[10..12].copy_from_slice(&c.to_be_bytes());
                let updated = csum_ttl_decrement(c, u16::from_be_bytes([h[8], h[9]]));
                h[8] -= 1;
                h[10..12].copy_from_slice(&[0, 0]);
                let expected = full_checksum(&h);
                h[10..12].copy_from_slice(&updated.to_be_bytes());
                // RFC 1624: 0x0000 and 0xffff are both valid encodings of zero; verify the header.
                assert_eq!(full_checksum(&h), 0, "header with updated checksum must verify");
                if expected != 0 && expected != 0xffff {
                    assert_eq!(updated, expected, "ttl {ttl} proto {proto} id {id:#x}");
                }
            }
        }
    }

    #[test]
    fn ecmp_pick_spreads_and_stays_in_range() {
        let mut group = EcmpGroup { count: 3, members: [0; MAX_ECMP_MEMBERS] };
        group.members[..3].copy_from_slice(&[11, 22, 33]);
        let mut seen = [0u32; 3];
        for port in 0..3000u32 {
            let words = flow_words(&[10; 16], &[20; 16], 17, (port << 16) | 0x35);
            let m = group.pick(flow_hash(&words, FLOW_HASH_SEED)).unwrap();
            let i = [11, 22, 33].iter().position(|&x| x == m).unwrap();
            seen[i] += 1;
        }
        for n in seen {
            assert!((800..1200).contains(&n), "uneven spread {seen:?}");
        }
        assert_eq!(group.pick(u32::MAX), Some(33));
        assert_eq!(group.pick(0), Some(11));
        let empty = EcmpGroup::default();
        assert_eq!(empty.pick(7), None);
    }

    #[test]
    fn reason_table_is_consistent() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
        let mut names: [&str; Reason::COUNT as usize] = [""; Reason::COUNT as usize];
        for (i, r) in Reason::ALL.iter().enumerate() {
            names[i] = r.name();
        }
        for (i, a) in names.iter().enumerate() {
            for b in &names[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(Reason::DropMalformed.index(2), 2 * REASON_SLOTS + 18);
    }

    #[test]
    fn route_action_round_trips() {
        for v in 0..10 {
            if let Some(a) = RouteAction::from_u32(v) {
                assert_eq!(a as u32, v);
            }
        }
        assert_eq!(RouteAction::from_u32(0), None);
    }
}
