//! The Sluice XDP forwarding program.
//!
//! Parses Ethernet (with at most one 802.1Q tag), IPv4 and IPv6, looks the destination up by
//! longest-prefix match, picks an ECMP member by flow hash, decrements TTL / hop limit, rewrites the
//! Ethernet header and redirects through a `DEVMAP_HASH`, whose per-CPU bulk queue flushes up to 16
//! frames per device at the end of the NAPI poll. Everything a router must not do in the fast path
//! (RFC 1812: local delivery, expiring TTL, ICMP errors, options, unresolved neighbours, ...) goes
//! to the kernel with `XDP_PASS`; blackhole routes and malformed headers are dropped. Every packet is
//! counted once, per ingress interface and reason, in per-CPU counters.
#![no_std]
#![no_main]

mod common;
mod hooks;
mod xmit;

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, xdp_action},
    helpers::{
        bpf_ktime_get_ns,
        generated::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    },
    macros::{map, xdp},
    maps::{
        Array, DevMapHash, HashMap, LpmTrie, LruHashMap, LruPerCpuHashMap, PerCpuArray, RingBuf,
    },
    programs::XdpContext,
};
use common::ptr_at;
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    vlan::VlanHdr,
};
use sluice_common::{
    Counter, EcmpGroup, FAMILY_V4, FAMILY_V6, FLOW_HASH_SEED, IFACE_CACHE_ENTRIES, Iface,
    IfaceCacheEntry, IfaceKey, MAX_ECMP_GROUPS, MAX_IFACES, MAX_NEXTHOPS, MAX_ROUTES_V4,
    MAX_ROUTES_V6, MAX_SLOTS, NEIGH_PENDING_ENTRIES, NEIGH_REQUEST_INTERVAL_NS, NEIGH_RING_BYTES,
    NH_F_VLAN, NeighRequest, NextHop, REASON_SLOTS, Reason, Route, RouteAction, TALKER_ENTRIES,
    TalkerKey, TalkerScratch, csum_fold, csum_ttl_decrement, dir24, flow_hash, flow_words,
    iface_cache_index, iface_cache_tag, steps, talker_sampled, trie6,
};

// The record of IPv4 prefixes; the lookup itself goes through TBL24_V4 and DIR8_V4.
#[map]
static ROUTES_V4: LpmTrie<[u8; 4], Route> = LpmTrie::with_max_entries(MAX_ROUTES_V4, 0);
#[map]
static TRIE_V6: Array<dir24::Chunk> =
    Array::with_max_entries(trie6::ENTRIES / dir24::CHUNK, BPF_F_MMAPABLE);
#[map]
static TBL24_V4: Array<dir24::Chunk> =
    Array::with_max_entries(dir24::TBL24_MAP_WORDS / dir24::CHUNK, BPF_F_MMAPABLE);
#[map]
static DIR8_V4: Array<dir24::Chunk> = Array::with_max_entries(
    dir24::MAX_GROUPS * dir24::GROUP_ENTRIES / dir24::CHUNK,
    BPF_F_MMAPABLE,
);
#[map]
static ROUTES_V6: LpmTrie<[u8; 16], Route> = LpmTrie::with_max_entries(MAX_ROUTES_V6, 0);
#[map]
static NEXTHOPS: Array<NextHop> = Array::with_max_entries(MAX_NEXTHOPS, 0);
#[map]
static ECMP_GROUPS: Array<EcmpGroup> = Array::with_max_entries(MAX_ECMP_GROUPS, 0);
#[map]
static IFACES: HashMap<IfaceKey, Iface> = HashMap::with_max_entries(MAX_IFACES, 0);
#[map]
static IFACE_CACHE: Array<IfaceCacheEntry> = Array::with_max_entries(IFACE_CACHE_ENTRIES, 0);
#[map]
static DEVMAP: DevMapHash = DevMapHash::with_max_entries(MAX_IFACES, 0);
#[map]
static COUNTERS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(MAX_SLOTS * REASON_SLOTS, 0);
#[map]
static NEIGH_REQUESTS: RingBuf = RingBuf::with_byte_size(NEIGH_RING_BYTES, 0);
#[map]
static NEIGH_PENDING: LruHashMap<NeighRequest, u64> =
    LruHashMap::with_max_entries(NEIGH_PENDING_ENTRIES, 0);
#[map]
static TALKERS: LruPerCpuHashMap<TalkerKey, Counter> =
    LruPerCpuHashMap::with_max_entries(TALKER_ENTRIES, 0);
#[map]
static TALKER_SCRATCH: PerCpuArray<TalkerScratch> = PerCpuArray::with_max_entries(1, 0);

/// The step after which a benchmark build stops (see `sluice_common::steps`); 0, the whole
/// program, in the object and in the daemon.
#[unsafe(no_mangle)]
static SLUICE_STOP_AFTER: u32 = steps::ALL;

const ETH_P_IPV4: u16 = 0x0800_u16.to_be();
const ETH_P_IPV6: u16 = 0x86dd_u16.to_be();
const ETH_P_8021Q: u16 = 0x8100_u16.to_be();
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_SCTP: u8 = 132;
const IPV6_HOP_BY_HOP: u8 = 0;

/// The outcome of one packet: the XDP verdict and the reason it is counted under.
struct Outcome {
    action: u32,
    reason: Reason,
}

impl Outcome {
    const fn pass(reason: Reason) -> Self {
        Self { action: xdp_action::XDP_PASS, reason }
    }
    const fn drop(reason: Reason) -> Self {
        Self { action: xdp_action::XDP_DROP, reason }
    }
}

/// The L2 facts the L3 handlers need to finish the frame.
#[derive(Clone, Copy)]
struct Frame {
    /// Offset of the L3 header: 14, or 18 behind an 802.1Q tag.
    l3: usize,
    /// Frame length as received.
    len: usize,
    /// The EtherType of the L3 payload (network order).
    ether_type: u16,
    /// The ingress device.
    ifindex: u32,
}

#[xdp]
pub fn sluice_xdp(ctx: XdpContext) -> u32 {
    let len = ctx.data_end() - ctx.data();
    let ifindex = ctx.ingress_ifindex() as u32;
    let (slot, outcome) = classify(&ctx, ifindex, len);
    if stop_after_any() {
        return outcome.action;
    }
    let _ = count(slot, outcome.reason, len as u64);
    outcome.action
}

/// Looks the ingress interface up and dispatches by EtherType. Returns the counter slot too.
#[inline(always)]
fn classify(ctx: &XdpContext, ifindex: u32, len: usize) -> (u32, Outcome) {
    let Ok(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        // Too short even for Ethernet: count it on the untagged interface if we serve it.
        let slot = lookup_iface(ifindex, 0).map_or(0, |i| i.slot);
        return (slot, Outcome::drop(Reason::DropMalformed));
    };
    // SAFETY: `ptr_at` checked the header lies inside the packet.
    let (mut ether_type, dst_mac) = unsafe { ((*eth).ether_type, (*eth).dst_addr) };
    let mut l3 = EthHdr::LEN;
    let mut vlan_id = 0;
    if ether_type == ETH_P_8021Q {
        let Ok(vlan) = ptr_at::<VlanHdr>(ctx, EthHdr::LEN) else {
            let slot = lookup_iface(ifindex, 0).map_or(0, |i| i.slot);
            return (slot, Outcome::drop(Reason::DropMalformed));
        };
        // SAFETY: bounds checked by `ptr_at`.
        let tci = unsafe { (*vlan).tci };
        vlan_id = u16::from_be_bytes(tci) & 0x0fff;
        // SAFETY: bounds checked by `ptr_at`.
        ether_type = unsafe { (*vlan).ether_type };
        l3 += VlanHdr::LEN;
    }
    let Some(iface) = lookup_iface(ifindex, vlan_id) else {
        return (0, Outcome::pass(Reason::PassUnknownIface));
    };
    let slot = iface.slot;
    if dst_mac[0] & 1 != 0 {
        let reason =
            if dst_mac == [0xff; 6] { Reason::PassBroadcast } else { Reason::PassMulticast };
        return (slot, Outcome::pass(reason));
    }
    if dst_mac != iface.mac {
        return (slot, Outcome::pass(Reason::PassOtherHost));
    }
    if stop_after(steps::IFACE) {
        return (slot, Outcome::pass(Reason::PassOther));
    }
    let frame = Frame { l3, len, ether_type, ifindex };
    let outcome = if ether_type == ETH_P_IPV4 {
        forward_v4(ctx, &frame)
    } else if ether_type == ETH_P_IPV6 {
        forward_v6(ctx, &frame)
    } else {
        Outcome::pass(Reason::PassNotIp)
    };
    (slot, outcome)
}

#[inline(always)]
fn forward_v4(ctx: &XdpContext, frame: &Frame) -> Outcome {
    let Ok(ip) = ptr_at::<Ipv4Hdr>(ctx, frame.l3) else {
        return Outcome::drop(Reason::DropMalformed);
    };
    // SAFETY: `ptr_at` checked that the whole fixed header lies inside the packet.
    let hdr = unsafe { &mut *ip };
    let ihl = usize::from(hdr.vihl & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes(hdr.tot_len));
    if hdr.vihl >> 4 != 4 || ihl < Ipv4Hdr::LEN || total < ihl || frame.l3 + total > frame.len {
        return Outcome::drop(Reason::DropMalformed);
    }
    // A header with options goes to the kernel (which checks its checksum), but only after the
    // hook tables: with the kernel's forwarding on, a filter must not be bypassed by options.
    let options = ihl != Ipv4Hdr::LEN;
    if !options && !ipv4_checksum_ok(hdr) {
        return Outcome::drop(Reason::DropMalformed);
    }
    let (src, dst) = (hdr.src_addr, hdr.dst_addr);
    if dst[0] >= 224 {
        return Outcome::pass(if dst == [255; 4] {
            Reason::PassBroadcast
        } else if dst[0] < 240 {
            Reason::PassMulticast
        } else {
            Reason::PassMartian
        });
    }
    // RFC 1812 5.3.7 and RFC 3927 7: never forward these sources or destinations; the kernel
    // decides (after the hook tables, which its forwarding must not bypass).
    let martian = src[0] == 0
        || src[0] == 127
        || src[0] >= 224
        || (src[0] == 169 && src[1] == 254)
        || dst[0] == 0
        || dst[0] == 127
        || (dst[0] == 169 && dst[1] == 254);
    if stop_after(steps::PARSE) {
        return Outcome::pass(Reason::PassOther);
    }
    let (src16, dst16) = (widen(src), widen(dst));
    let (proto, frags) = (hdr.proto, hdr.frags);
    let first_fragment = u16::from_be_bytes(frags) & 0x1fff == 0;
    let packet = hooks::Packet {
        ifindex: frame.ifindex,
        family: FAMILY_V4,
        proto,
        len: frame.len,
        src: &src16,
        dst: &dst16,
    };
    let l4 = || {
        if first_fragment {
            hooks::read_l4(ctx, frame.l3 + ihl, proto)
        } else {
            hooks::L4::default()
        }
    };
    let steer = match hook_outcome(hooks::ingress(&packet, l4)) {
        Ok(steer) => steer,
        Err(outcome) => return outcome,
    };
    if options {
        return Outcome::pass(Reason::PassOptions);
    }
    if martian {
        return Outcome::pass(Reason::PassMartian);
    }
    if stop_after(steps::HOOKS) {
        return Outcome::pass(Reason::PassOther);
    }
    let Some(route) = lookup_v4(dst) else {
        return Outcome::pass(Reason::PassNoRoute);
    };
    if stop_after(steps::LOOKUP) {
        return Outcome::pass(Reason::PassOther);
    }
    // Read the ports and hash only for an ECMP route. Fragments hash on addresses and protocol
    // only, so all of a datagram takes one path.
    let hash = || {
        let fragment = u16::from_be_bytes(frags) & 0x3fff != 0;
        let ports = if fragment { 0 } else { read_ports(ctx, frame.l3 + ihl, proto) };
        flow_hash(&flow_words(&src16, &dst16, proto, ports), FLOW_HASH_SEED)
    };
    let nh = match resolve(&route, &dst16, hash, hdr.ttl, FAMILY_V4, steer.then_some(frame.len)) {
        Ok(nh) => nh,
        Err(outcome) => return outcome,
    };
    if total > nh.mtu as usize {
        return Outcome::pass(Reason::PassMtu);
    }
    if stop_after(steps::NEXTHOP) {
        return Outcome::pass(Reason::PassOther);
    }
    let action = match claim_egress(nh) {
        Ok(action) => action,
        Err(outcome) => return outcome,
    };
    if stop_after(steps::REDIRECT) {
        return Outcome::pass(Reason::PassOther);
    }
    let ttl_proto = u16::from_be_bytes([hdr.ttl, hdr.proto]);
    let check = csum_ttl_decrement(u16::from_be_bytes(hdr.check), ttl_proto);
    hdr.ttl -= 1;
    hdr.check = check.to_be_bytes();
    let Some(frame) = trim_to(ctx, frame, total) else {
        return Outcome::drop(Reason::DropMalformed);
    };
    rewrite_l2(ctx, &frame, nh, action, FAMILY_V4, &src16)
}

#[inline(always)]
fn forward_v6(ctx: &XdpContext, frame: &Frame) -> Outcome {
    let Ok(ip) = ptr_at::<Ipv6Hdr>(ctx, frame.l3) else {
        return Outcome::drop(Reason::DropMalformed);
    };
    // SAFETY: `ptr_at` checked that the fixed header lies inside the packet.
    let hdr = unsafe { &mut *ip };
    let total = Ipv6Hdr::LEN + usize::from(u16::from_be_bytes(hdr.payload_len));
    if hdr.vcf[0] >> 4 != 6 || frame.l3 + total > frame.len {
        return Outcome::drop(Reason::DropMalformed);
    }
    let (src_words, dst_words) = (addr_words(&hdr.src_addr), addr_words(&hdr.dst_addr));
    // The first byte of an address is the low byte of its first word.
    if dst_words[0] as u8 == 0xff {
        return Outcome::pass(Reason::PassMulticast);
    }
    // The kernel decides for these, after the hook tables.
    let martian =
        src_words[0] as u8 == 0xff || is_v6_special(src_words) || is_v6_special(dst_words);
    let (src, dst) = (addr_bytes(src_words), addr_bytes(dst_words));
    // A hop-by-hop header goes to the kernel, after the hook tables (as IPv4 options do).
    let hop_by_hop = hdr.next_hdr == IPV6_HOP_BY_HOP;
    if stop_after(steps::PARSE) {
        return Outcome::pass(Reason::PassOther);
    }
    let packet = hooks::Packet {
        ifindex: frame.ifindex,
        family: FAMILY_V6,
        proto: hdr.next_hdr,
        len: frame.len,
        src: &src,
        dst: &dst,
    };
    let l4 = || hooks::read_l4(ctx, frame.l3 + Ipv6Hdr::LEN, packet.proto);
    let steer = match hook_outcome(hooks::ingress(&packet, l4)) {
        Ok(steer) => steer,
        Err(outcome) => return outcome,
    };
    if hop_by_hop {
        return Outcome::pass(Reason::PassOptions);
    }
    if martian {
        return Outcome::pass(Reason::PassMartian);
    }
    if stop_after(steps::HOOKS) {
        return Outcome::pass(Reason::PassOther);
    }
    let Some(route) = lookup_v6(&dst) else {
        return Outcome::pass(Reason::PassNoRoute);
    };
    if stop_after(steps::LOOKUP) {
        return Outcome::pass(Reason::PassOther);
    }
    let next_hdr = hdr.next_hdr;
    let hash = || {
        let ports = read_ports(ctx, frame.l3 + Ipv6Hdr::LEN, next_hdr);
        flow_hash(&flow_words(&src, &dst, next_hdr, ports), FLOW_HASH_SEED)
    };
    let nh = match resolve(&route, &dst, hash, hdr.hop_limit, FAMILY_V6, steer.then_some(frame.len))
    {
        Ok(nh) => nh,
        Err(outcome) => return outcome,
    };
    if total > nh.mtu as usize {
        return Outcome::pass(Reason::PassMtu);
    }
    if stop_after(steps::NEXTHOP) {
        return Outcome::pass(Reason::PassOther);
    }
    let action = match claim_egress(nh) {
        Ok(action) => action,
        Err(outcome) => return outcome,
    };
    if stop_after(steps::REDIRECT) {
        return Outcome::pass(Reason::PassOther);
    }
    hdr.hop_limit -= 1;
    let Some(frame) = trim_to(ctx, frame, total) else {
        return Outcome::drop(Reason::DropMalformed);
    };
    rewrite_l2(ctx, &frame, nh, action, FAMILY_V6, &src)
}

/// The frame cut to its IP packet's length (`total`), as Linux trims a packet to its IP length
/// before forwarding it: Ethernet padding, or bytes a lying length left out, are not sent on.
/// `None` if the cut failed (the frame is already rewritten and cannot go on).
#[inline(always)]
fn trim_to(ctx: &XdpContext, frame: &Frame, total: usize) -> Option<Frame> {
    let excess = frame.len - (frame.l3 + total);
    if excess != 0 {
        // SAFETY: a helper call on the live context; the packet pointers are re-read afterwards.
        if unsafe { bpf_xdp_adjust_tail(ctx.ctx, -(excess as i32)) } != 0 {
            return None;
        }
    }
    Some(Frame { len: frame.len - excess, ..*frame })
}

/// The outcome the hook tables decided, or whether steer rules may apply to the packet.
#[inline(always)]
fn hook_outcome(v: hooks::Verdict) -> Result<bool, Outcome> {
    match v {
        hooks::Verdict::Continue { steer } => Ok(steer),
        hooks::Verdict::Drop(reason) => Err(Outcome::drop(reason)),
        hooks::Verdict::Pass(reason) => Err(Outcome::pass(reason)),
    }
}

/// The next hop a steer rule picks for this flow, if a rule covers `dst` and the next hop it
/// names is still its gateway's and resolved; counted on the rule. Otherwise the route decides
/// (an unresolved gateway is asked for first).
#[inline(always)]
fn steered(family: u8, dst: &[u8; 16], len: usize, hash: u32) -> Option<&'static NextHop> {
    let (rule, member) = hooks::steer(family, dst, hash)?;
    let nh = NEXTHOPS.get(member.nexthop)?;
    if nh.family != family || nh.gateway != member.gateway || nh.ifindex == 0 {
        return None;
    }
    if !nh.is_resolved() {
        request_neighbour(nh.logical_ifindex, nh.family, &nh.gateway);
        return None;
    }
    hooks::count_rule(rule, len);
    Some(nh)
}

/// Longest-prefix match in DIR-24-8: the /8's and the /16's summary entries, and unless one
/// names the one result of its whole range, the /24's 16-bit entry; then its result (a few hot
/// cache lines) or, for a /24 holding longer prefixes, its second-level entry.
#[inline(always)]
fn lookup_v4(dst: [u8; 4]) -> Option<Route> {
    let addr = u32::from_be_bytes(dst);
    let slot = addr >> 8;
    let (eight, sixteen) = (addr >> 24, addr >> 16);
    let mut short =
        dir24::short_entry(entry_at(&TBL24_V4, dir24::SUMMARY8_OFFSET + eight / 2)?, eight);
    if short == dir24::SUMMARY_DESCEND {
        short =
            dir24::short_entry(entry_at(&TBL24_V4, dir24::SUMMARY_OFFSET + sixteen / 2)?, sixteen);
    }
    if short == dir24::SUMMARY_DESCEND {
        short = dir24::short_entry(entry_at(&TBL24_V4, slot / 2)?, slot);
    }
    let entry = if dir24::short_is_group(short) {
        entry_at(&DIR8_V4, dir24::short_group(short) * dir24::GROUP_ENTRIES + (addr & 0xff))?
    } else {
        entry_at(&TBL24_V4, dir24::TBL24_WORDS + short)?
    };
    dir24::decode(entry)
}

/// Longest-prefix match in the multibit trie: the first-level entry of the first two bytes; the
/// /32's entry in the /16's wide node when it has one; then one read per 4 bits of the address,
/// until an entry is not a pointer to a node, or points to a /32's compact node (one line, or
/// two read together), whose prefixes are matched against the address's bits 32..56.
#[inline(always)]
fn lookup_v6(dst: &[u8; 16]) -> Option<Route> {
    let [w0, w1] = addr_words(dst);
    // The address as two big-endian words, so each nibble is a shift away.
    let (hi, lo) = (u64::from_be(w0), u64::from_be(w1));
    let mut entry = entry_at(&TRIE_V6, (hi >> 48) as u32)?;
    // One nibble per level after the first two bytes; a node is one map value.
    let mut i = 4u32;
    if trie6::is_wide(entry) {
        // Bits 16..32 in one read: the wide node's entry for the /32.
        let slot = ((hi >> 32) & 0xffff) as u32;
        let nodes = trie6::ROOT_ENTRIES / dir24::CHUNK + dir24::group_entry(entry);
        entry = TRIE_V6.get(nodes + slot / dir24::CHUNK)?[(slot % dir24::CHUNK) as usize];
        i = 8;
    }
    while i < 32 {
        if !dir24::is_group(entry) {
            break;
        }
        let at = trie6::ROOT_ENTRIES / dir24::CHUNK + dir24::group_entry(entry);
        let node = TRIE_V6.get(at)?;
        if trie6::is_compact(entry) {
            // A /32's longer prefixes in one cache line, or two: address bits 32..56.
            let second = if trie6::is_pair(entry) { Some(TRIE_V6.get(at + 1)?) } else { None };
            entry = trie6::compact_lookup(node, second, ((hi >> 8) & 0x00ff_ffff) as u32);
            break;
        }
        let word = if i < 16 { hi } else { lo };
        let nibble = ((word >> (60 - 4 * (i & 15))) & 0xf) as usize;
        entry = node[nibble];
        i += 1;
    }
    dir24::decode(entry)
}

/// Entry `index` of a table stored as chunks.
#[inline(always)]
fn entry_at(table: &Array<dir24::Chunk>, index: u32) -> Option<u32> {
    let chunk = table.get(index / dir24::CHUNK)?;
    Some(chunk[(index % dir24::CHUNK) as usize])
}

/// An IPv4 address in the first 4 bytes of 16, the rest zero: two 8-byte words, where a byte
/// array filled by `copy_from_slice` costs a call to a byte-at-a-time `memset`.
#[inline(always)]
fn widen(a: [u8; 4]) -> [u8; 16] {
    // Little-endian words: the low bytes of the first come first in memory.
    addr_bytes([u64::from(u32::from_le_bytes(a)), 0])
}

/// An IPv6 address as two words in memory order (little-endian loads): read whole into
/// registers, where a copy of the byte array spills every byte to the stack.
#[inline(always)]
fn addr_words(a: &[u8; 16]) -> [u64; 2] {
    // SAFETY: 16 readable bytes; an unaligned read.
    unsafe { core::ptr::read_unaligned(a.as_ptr().cast::<[u64; 2]>()) }
}

/// The bytes of [`addr_words`]' words.
#[inline(always)]
fn addr_bytes(w: [u64; 2]) -> [u8; 16] {
    // SAFETY: two u64s are 16 plain bytes, in memory order.
    unsafe { core::mem::transmute::<[u64; 2], [u8; 16]>(w) }
}

/// Unspecified, loopback and link-local (fe80::/10) addresses (as [`addr_words`]) are never
/// forwarded.
#[inline(always)]
fn is_v6_special(w: [u64; 2]) -> bool {
    // fe80::/10: the first byte 0xfe, the top two bits of the second 0b10.
    if w[0] & 0xc0ff == 0x80fe {
        return true;
    }
    // :: and ::1: every byte zero but the last, which is 0 or 1 (the top byte of the second
    // word).
    w[0] == 0 && w[1] & !(1 << 56) == 0
}

/// Turns a route into the next hop to use (a steer rule's, when `steer_len` says the steer tables
/// hold rules and one covers `dst`), or the outcome when the packet is not forwarded.
#[inline(always)]
fn resolve(
    route: &Route,
    dst: &[u8; 16],
    flow_hash: impl Fn() -> u32,
    ttl: u8,
    family: u8,
    steer_len: Option<usize>,
) -> Result<&'static NextHop, Outcome> {
    let action = RouteAction::from_u32(route.action);
    // Steer rules override the next hop of what the routes forward, nothing else.
    if let Some(len) = steer_len
        && ttl > 1
        && matches!(action, Some(RouteAction::Forward | RouteAction::Ecmp))
        && let Some(nh) = steered(family, dst, len, flow_hash())
    {
        return Ok(nh);
    }
    let id = match action {
        Some(RouteAction::Forward) => route.target,
        Some(RouteAction::Ecmp) => {
            let Some(group) = ECMP_GROUPS.get(route.target) else {
                return Err(Outcome::pass(Reason::PassOther));
            };
            match group.pick(flow_hash()) {
                Some(id) => id,
                None => return Err(Outcome::pass(Reason::PassOther)),
            }
        }
        Some(RouteAction::Connected) => {
            if ttl <= 1 {
                return Err(Outcome::pass(Reason::PassTtl));
            }
            request_neighbour(route.target, family, dst);
            return Err(Outcome::pass(Reason::PassNeighbour));
        }
        Some(RouteAction::Local) => return Err(Outcome::pass(Reason::PassLocal)),
        Some(RouteAction::Blackhole) => return Err(Outcome::drop(Reason::DropBlackhole)),
        Some(RouteAction::Unreachable) => return Err(Outcome::pass(Reason::PassUnreachable)),
        Some(RouteAction::Pass) | None => return Err(Outcome::pass(Reason::PassOther)),
    };
    // RFC 1812 5.3.1: a packet whose TTL would reach zero is not forwarded.
    if ttl <= 1 {
        return Err(Outcome::pass(Reason::PassTtl));
    }
    let Some(nh) = NEXTHOPS.get(id) else {
        return Err(Outcome::pass(Reason::PassOther));
    };
    if nh.ifindex == 0 {
        return Err(Outcome::pass(Reason::PassNoEgress));
    }
    if !nh.is_resolved() {
        request_neighbour(nh.logical_ifindex, nh.family, &nh.gateway);
        return Err(Outcome::pass(Reason::PassNeighbour));
    }
    Ok(nh)
}

/// Reads the 4 bytes of source and destination port for TCP, UDP and SCTP; 0 otherwise.
#[inline(always)]
fn read_ports(ctx: &XdpContext, offset: usize, proto: u8) -> u32 {
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP && proto != IPPROTO_SCTP {
        return 0;
    }
    match ptr_at::<[u8; 4]>(ctx, offset) {
        // SAFETY: bounds checked by `ptr_at`.
        Ok(p) => u32::from_ne_bytes(unsafe { *p }),
        Err(()) => 0,
    }
}

/// Selects the egress device before anything in the frame changes: `bpf_redirect_map` only
/// records the target (the frame is sent after the program returns), so a device missing from
/// the map leaves the packet untouched for the kernel, and so does a device the control plane
/// holds because it cannot take redirected frames (the kernel delivers them instead).
#[inline(always)]
fn claim_egress(nh: &NextHop) -> Result<u32, Outcome> {
    if xmit::egress_held(nh.ifindex) {
        return Err(Outcome::pass(Reason::PassEgressNotReady));
    }
    DEVMAP.redirect(nh.ifindex, 0).map_err(|_| Outcome::pass(Reason::PassNoEgress))
}

/// Rewrites the Ethernet header (adding, removing or rewriting the 802.1Q tag as the next hop
/// needs) of a frame whose egress is claimed, and counts it on its egress, where 1 in
/// `TALKER_SAMPLE_EVERY` is sampled for the top talkers by its source `src` of `family`.
#[inline(always)]
fn rewrite_l2(
    ctx: &XdpContext,
    frame: &Frame,
    nh: &NextHop,
    action: u32,
    family: u8,
    src: &[u8; 16],
) -> Outcome {
    let tagged_in = frame.l3 != EthHdr::LEN;
    let tagged_out = nh.flags & NH_F_VLAN != 0;
    let ok = match (tagged_in, tagged_out) {
        (false, false) => write_eth(ctx, 0, nh).is_ok(),
        (true, true) => write_eth(ctx, 0, nh).is_ok() && write_tci(ctx, nh).is_ok(),
        (true, false) => {
            // Move the addresses over the tag; the inner EtherType is already in place.
            write_eth(ctx, VlanHdr::LEN, nh).is_ok() && adjust_head(ctx, VlanHdr::LEN as i32)
        }
        (false, true) => {
            adjust_head(ctx, -(VlanHdr::LEN as i32))
                && write_eth(ctx, 0, nh).is_ok()
                && write_tag(ctx, nh, frame.ether_type).is_ok()
        }
    };
    if !ok {
        // No headroom for a tag: the frame is half rewritten and cannot go anywhere.
        return Outcome::drop(Reason::DropMalformed);
    }
    if stop_after(steps::REWRITE) {
        return Outcome::pass(Reason::PassOther);
    }
    let sent = count(nh.egress_slot, Reason::Transmitted, frame.len as u64);
    if sent != 0 && talker_sampled(sent) {
        sample_talker(family, src, frame.len as u64);
    }
    Outcome { action, reason: Reason::Forwarded }
}

/// Counts a sampled packet on its source in `TALKERS` (this CPU's value: no atomics).
#[inline(always)]
fn sample_talker(family: u8, src: &[u8; 16], bytes: u64) {
    let Some(scratch) = TALKER_SCRATCH.get_ptr_mut(0) else { return };
    // SAFETY: this CPU's scratch entry, used only here and with preemption off.
    let scratch = unsafe { &mut *scratch };
    scratch.key.family = family;
    scratch.key.addr = *src;
    if let Some(c) = TALKERS.get_ptr_mut(&scratch.key) {
        // SAFETY: per-CPU value, so no other writer runs concurrently on this CPU.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
        }
    } else {
        scratch.value = Counter { packets: 1, bytes };
        let _ = TALKERS.insert(&scratch.key, &scratch.value, 0);
    }
}

#[inline(always)]
fn write_eth(ctx: &XdpContext, offset: usize, nh: &NextHop) -> Result<(), ()> {
    let p = ptr_at::<[u8; 12]>(ctx, offset)?;
    // Byte by byte from the map value into the frame: a local array in between costs two more
    // copies of each byte.
    let mut i = 0;
    while i < 6 {
        // SAFETY: bounds checked by `ptr_at`.
        unsafe {
            (*p)[i] = nh.dmac[i];
            (*p)[6 + i] = nh.smac[i];
        }
        i += 1;
    }
    Ok(())
}

#[inline(always)]
fn write_tci(ctx: &XdpContext, nh: &NextHop) -> Result<(), ()> {
    let p = ptr_at::<[u8; 2]>(ctx, EthHdr::LEN)?;
    // SAFETY: bounds checked by `ptr_at`.
    unsafe { *p = nh.vlan_tci.to_be_bytes() };
    Ok(())
}

#[inline(always)]
fn write_tag(ctx: &XdpContext, nh: &NextHop, ether_type: u16) -> Result<(), ()> {
    let p = ptr_at::<[u8; 6]>(ctx, 12)?;
    let tci = nh.vlan_tci.to_be_bytes();
    let et = ether_type.to_ne_bytes();
    // SAFETY: bounds checked by `ptr_at`.
    unsafe { *p = [0x81, 0x00, tci[0], tci[1], et[0], et[1]] };
    Ok(())
}

#[inline(always)]
fn adjust_head(ctx: &XdpContext, delta: i32) -> bool {
    // SAFETY: a helper call on the live context; the packet pointers are re-read afterwards.
    unsafe { bpf_xdp_adjust_head(ctx.ctx, delta) == 0 }
}

/// Verifies the checksum of a 20-byte IPv4 header (RFC 1812 5.2.2). The ones' complement sum is
/// taken over 32-bit words in host order (RFC 1071: the sum is independent of byte order and
/// word size, once folded), and a correct header sums to 0xffff either way round.
#[inline(always)]
fn ipv4_checksum_ok(hdr: &Ipv4Hdr) -> bool {
    let p = core::ptr::from_ref(hdr).cast::<u8>();
    // SAFETY: Ipv4Hdr is 20 readable bytes; unaligned reads.
    let (head, tail) = unsafe {
        (
            core::ptr::read_unaligned(p.cast::<[u64; 2]>()),
            core::ptr::read_unaligned(p.add(16).cast::<u32>()),
        )
    };
    let mut sum = (head[0] & 0xffff_ffff)
        + (head[0] >> 32)
        + (head[1] & 0xffff_ffff)
        + (head[1] >> 32)
        + u64::from(tail);
    // Five 32-bit words: two end-around folds bring the sum into 32 bits.
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    csum_fold(sum as u32) == 0xffff
}

/// Asks the control plane to resolve a neighbour, at most once per interval per destination.
#[inline(always)]
fn request_neighbour(ifindex: u32, family: u8, addr: &[u8; 16]) {
    let mut request = NeighRequest { ifindex, family, _pad: [0; 3], addr: [0; 16] };
    if family == FAMILY_V4 {
        request.addr[..4].copy_from_slice(&addr[..4]);
    } else {
        request.addr = *addr;
    }
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: the value is a plain u64 read once.
    if let Some(last) = unsafe { NEIGH_PENDING.get(&request) } {
        if now.wrapping_sub(*last) < NEIGH_REQUEST_INTERVAL_NS {
            return;
        }
    }
    let _ = NEIGH_PENDING.insert(&request, &now, 0);
    let _ = NEIGH_REQUESTS.output::<NeighRequest>(&request, 0);
}

/// What the fast path needs of its ingress interface.
#[derive(Clone, Copy)]
struct Ingress {
    slot: u32,
    mac: [u8; 6],
}

/// The ingress interface: from `IFACE_CACHE` when its entry holds the key whole, else from
/// `IFACES`.
#[inline(always)]
fn lookup_iface(ifindex: u32, vlan_id: u16) -> Option<Ingress> {
    let tag = iface_cache_tag(ifindex, vlan_id);
    if let Some(e) = IFACE_CACHE.get(iface_cache_index(ifindex, vlan_id)) {
        // Head, fields, tail, in this order (see `IfaceCacheEntry`).
        // SAFETY: reads of plain integers inside a map value.
        let head = unsafe { core::ptr::read_volatile(&raw const e.head) };
        if head == tag {
            // SAFETY: as above.
            let found = unsafe {
                Ingress {
                    slot: core::ptr::read_volatile(&raw const e.slot),
                    mac: core::ptr::read_volatile(&raw const e.mac),
                }
            };
            // SAFETY: as above.
            if unsafe { core::ptr::read_volatile(&raw const e.tail) } == tag {
                return Some(found);
            }
        }
    }
    let key = IfaceKey { ifindex, vlan_id, _pad: 0 };
    // SAFETY: the fields are copied out at once.
    unsafe { IFACES.get(&key) }.map(|i: &Iface| Ingress { slot: i.slot, mac: i.mac })
}

/// Whether this is a benchmark build that stops after `step` (see `sluice_common::steps`). The
/// global is read-only and frozen, so the verifier knows it and drops the branch in the product.
#[inline(always)]
fn stop_after(step: u32) -> bool {
    // SAFETY: a plain read of a read-only global; volatile, so that the compiler leaves the
    // value to the loader.
    unsafe { core::ptr::read_volatile(&raw const SLUICE_STOP_AFTER) == step }
}

/// Whether this is a benchmark build that stops after some step: it counts nothing.
#[inline(always)]
fn stop_after_any() -> bool {
    !stop_after(steps::ALL)
}

/// Counts a packet; returns how many this CPU's counter holds now (0 without the counter).
#[inline(always)]
fn count(slot: u32, reason: Reason, bytes: u64) -> u64 {
    let Some(c) = COUNTERS.get_ptr_mut(reason.index(slot)) else { return 0 };
    // SAFETY: per-CPU value, so no other writer runs concurrently on this CPU.
    unsafe {
        (*c).packets += 1;
        (*c).bytes += bytes;
        (*c).packets
    }
}
