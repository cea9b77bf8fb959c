//! The hook tables that plugins fill and the XDP program enforces: a prefix `filter` on source
//! or destination (drop, pass to the kernel, count), a per-source token-bucket `rate-limit`,
//! `steer` rules that override the next hop of forwarded traffic by destination (weighted
//! between gateways, per flow), and 1-in-N header `sample`s into a ring buffer. Written by the control plane
//! (`control/src/hooks.rs`) on behalf of plugins, never by plugins themselves.
//!
//! Empty tables cost one array read per packet: [`HookConfig`] says which tables hold anything,
//! and the program consults only those. A table that holds rules is looked up only for addresses
//! whose first 16 bits its [`Summary`] marks: rules on a few prefixes cost the rest of the
//! traffic one bit test, not a walk of the kernel's LPM trie.

/// Rules per filter table (one table per family and direction).
pub const MAX_FILTER_RULES: u32 = 1 << 16;
/// Rules per rate-limit table (one per family).
pub const MAX_RATE_RULES: u32 = 1 << 14;
/// Sources tracked at once by the rate limiter; the least recently seen are forgotten.
pub const RATE_STATE_ENTRIES: u32 = 1 << 17;
/// Rule ids (counter slots). Id 0 is never used.
pub const MAX_RULE_IDS: u32 = 1 << 17;
/// Rules per steer table (one per family).
pub const MAX_STEER_RULES: u32 = 1 << 12;
/// Gateways one steer rule spreads traffic over.
pub const MAX_STEER_MEMBERS: usize = 8;
/// Slots of a steer rule: members repeat in proportion to their weights.
pub const STEER_SLOTS: usize = 32;
/// Bytes of the sample ring buffer.
pub const SAMPLE_RING_BYTES: u32 = 1 << 18;

/// Words of a [`Summary`]: one bit per value of an address's first 16 bits.
pub const SUMMARY_WORDS: usize = (1 << 16) / 64;
/// Value of `HOOK_SUMMARY`, one per table ([`summary`]): bit `i` set when a rule of the table
/// covers an address whose first 16 bits are `i` (a rule shorter than /16 marks every value it
/// covers). A clear bit means no rule can match, so the table is not looked up.
pub type Summary = [u64; SUMMARY_WORDS];

/// The tables' positions in `HOOK_SUMMARY`.
pub mod summary {
    pub const FILTER_SRC_V4: u32 = 0;
    pub const FILTER_DST_V4: u32 = 1;
    pub const FILTER_SRC_V6: u32 = 2;
    pub const FILTER_DST_V6: u32 = 3;
    pub const RATE_V4: u32 = 4;
    pub const RATE_V6: u32 = 5;
    pub const STEER_V4: u32 = 6;
    pub const STEER_V6: u32 = 7;
    /// Entries of `HOOK_SUMMARY`.
    pub const TABLES: u32 = 8;
}

/// The first 16 bits of an address (IPv4 or IPv6, network order), as a [`Summary`] index.
#[inline(always)]
pub const fn summary_index(addr: &[u8; 16]) -> u32 {
    (addr[0] as u32) << 8 | addr[1] as u32
}

/// Whether `summary` marks `index` (masked to 16 bits).
#[inline(always)]
pub const fn summary_covers(summary: &Summary, index: u32) -> bool {
    let index = index & 0xffff;
    summary[(index / 64) as usize] >> (index % 64) & 1 != 0
}

/// Marks in `summary` what a prefix of `len` bits whose first two bytes are `first` covers.
pub fn summary_mark(summary: &mut Summary, first: [u8; 2], len: u8) {
    let index = u32::from(u16::from_be_bytes(first));
    let span = if len >= 16 { 1 } else { 1u32 << (16 - len) };
    let start = index & !(span - 1);
    for i in start..start + span {
        summary[(i / 64) as usize] |= 1 << (i % 64);
    }
}

/// What a filter rule does with a matching packet.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FilterAction {
    /// Drop it (counted as `drop_filtered`).
    Drop = 1,
    /// Hand it to the kernel (counted as `pass_filtered`).
    Pass = 2,
    /// Count it on the rule and go on.
    Count = 3,
}

impl FilterAction {
    /// Decodes the `u32` stored in a map.
    pub const fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(Self::Drop),
            2 => Some(Self::Pass),
            3 => Some(Self::Count),
            _ => None,
        }
    }
}

/// Value of the filter tables.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FilterRule {
    /// A [`FilterAction`] (host order).
    pub action: u32,
    /// The rule's id: its slot in `RULE_COUNTERS` (host order).
    pub rule: u32,
}
const _: () = assert!(size_of::<FilterRule>() == 8);

/// Value of the rate-limit tables: every source address inside the rule's prefix gets a bucket
/// of `burst` packets refilled at `rate_pps`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct RateRule {
    /// Packets per second (host order), at least 1.
    pub rate_pps: u32,
    /// Bucket size in packets (host order), at least 1.
    pub burst: u32,
    /// The rule's id: its slot in `RULE_COUNTERS`, which counts the packets it dropped.
    pub rule: u32,
    /// Explicit padding.
    pub _pad: u32,
}
const _: () = assert!(size_of::<RateRule>() == 16);

/// Key of `RATE_STATE`: a source address (IPv4 in the first 4 bytes) and its rule.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct RateKey {
    /// The rule that owns the bucket, so a replaced rule starts afresh (host order).
    pub rule: u32,
    /// 4 or 6.
    pub family: u8,
    /// Explicit padding.
    pub _pad: [u8; 3],
    /// The source address (network order).
    pub addr: [u8; 16],
}
const _: () = assert!(size_of::<RateKey>() == 24);

/// Value of `RATE_STATE`. Updated without atomics: two CPUs refilling one bucket at the same
/// instant may let a packet more through; the limiter is a guard, not an accountant.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Bucket {
    /// Tokens, in thousandths of a packet (host order).
    pub milli_tokens: u64,
    /// When it was last refilled (`bpf_ktime_get_ns`).
    pub last_ns: u64,
}
const _: () = assert!(size_of::<Bucket>() == 16);

/// Tokens a bucket gains over `elapsed_ns` at `rate_pps`, in thousandths of a packet, capped at
/// `burst` packets in all with the `milli_tokens` it holds; then takes one packet if it can.
/// Returns the new token count and whether the packet may go.
#[inline(always)]
pub const fn take_token(
    milli_tokens: u64,
    elapsed_ns: u64,
    rate_pps: u32,
    burst: u32,
) -> (u64, bool) {
    // Ten seconds refill any bucket that matters; capping keeps the product below 2^64.
    let elapsed = if elapsed_ns > 10_000_000_000 { 10_000_000_000 } else { elapsed_ns };
    let gained = elapsed * rate_pps as u64 / 1_000_000;
    let cap = burst as u64 * 1000;
    let mut tokens = milli_tokens + gained;
    if tokens > cap {
        tokens = cap;
    }
    if tokens >= 1000 { (tokens - 1000, true) } else { (tokens, false) }
}

/// Value of `HOOK_CONFIG` (one entry): how many rules each table holds, so that the program
/// skips empty tables, and the sampling rate.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct HookConfig {
    /// Non-zero when any table below holds anything or sampling is on: the one word the
    /// program reads when every table is empty (host order).
    pub active: u32,
    /// Rules in `FILTER_SRC_V4` (host order).
    pub filter_src_v4: u32,
    /// Rules in `FILTER_DST_V4`.
    pub filter_dst_v4: u32,
    /// Rules in `FILTER_SRC_V6`.
    pub filter_src_v6: u32,
    /// Rules in `FILTER_DST_V6`.
    pub filter_dst_v6: u32,
    /// Rules in `RATE_V4`.
    pub rate_v4: u32,
    /// Rules in `RATE_V6`.
    pub rate_v6: u32,
    /// Sample one packet in this many (0: no sampling).
    pub sample_every: u32,
    /// Rules in `STEER_V4`.
    pub steer_v4: u32,
    /// Rules in `STEER_V6`.
    pub steer_v6: u32,
}
const _: () = assert!(size_of::<HookConfig>() == 40);

/// A gateway of a steer rule: the next hop the control plane found for it, and the gateway's
/// address, which the program checks against that next hop before using it (a next-hop id freed
/// and reused since the rule was written must not send traffic elsewhere).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SteerMember {
    /// Id in `NEXTHOPS` (host order).
    pub nexthop: u32,
    /// The gateway (network order; IPv4 in the first four bytes).
    pub gateway: [u8; 16],
}
const _: () = assert!(size_of::<SteerMember>() == 20);

/// Value of the steer tables: the destinations inside the rule's prefix that have a forwarding
/// route go to one of `members` instead, chosen per flow through `slot`, which repeats members in
/// proportion to their weights. `slots == 0` (no gateway of the rule is a known next hop): the
/// route decides.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SteerRule {
    /// The rule's id: its slot in `RULE_COUNTERS`, which counts the packets it steered.
    pub rule: u32,
    /// Slots in use, 0..=[`STEER_SLOTS`] (host order).
    pub slots: u32,
    /// Index into `members` of each slot.
    pub slot: [u8; STEER_SLOTS],
    /// The gateways.
    pub members: [SteerMember; MAX_STEER_MEMBERS],
}
const _: () = assert!(size_of::<SteerRule>() == 8 + STEER_SLOTS + 20 * MAX_STEER_MEMBERS);

impl Default for SteerRule {
    fn default() -> Self {
        Self {
            rule: 0,
            slots: 0,
            slot: [0; STEER_SLOTS],
            members: [SteerMember::default(); MAX_STEER_MEMBERS],
        }
    }
}

impl SteerRule {
    /// The member a flow with this hash goes to (multiply-shift, as [`EcmpGroup::pick`]).
    ///
    /// [`EcmpGroup::pick`]: crate::EcmpGroup::pick
    #[inline(always)]
    pub fn pick(&self, hash: u32) -> Option<&SteerMember> {
        let slots = self.slots as usize;
        if slots == 0 || slots > STEER_SLOTS {
            return None;
        }
        let index = ((u64::from(hash) * slots as u64) >> 32) as usize;
        let member = *self.slot.get(index)? as usize;
        self.members.get(member)
    }
}

/// A sampled packet's headers, as the XDP program saw them on arrival.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Sample {
    /// Ingress ifindex (host order).
    pub ifindex: u32,
    /// Frame length in bytes (host order).
    pub len: u32,
    /// 4 or 6.
    pub family: u8,
    /// IP protocol / next header.
    pub proto: u8,
    /// TCP/UDP/SCTP source port (network order), 0 otherwise.
    pub sport: [u8; 2],
    /// Destination port (network order), 0 otherwise.
    pub dport: [u8; 2],
    /// TCP: the flags byte of its header (FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08, ACK 0x10,
    /// URG 0x20, ECE 0x40, CWR 0x80); 0 otherwise.
    pub tcp_flags: u8,
    /// Explicit padding.
    pub _pad: u8,
    /// Source address, IPv4 in the first 4 bytes (network order).
    pub src: [u8; 16],
    /// Destination address (network order).
    pub dst: [u8; 16],
    /// The sampling it was taken at: one packet in this many (host order).
    pub every: u32,
}
const _: () = assert!(size_of::<Sample>() == 52);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_summary_marks_the_16_bit_values_a_prefix_covers() {
        let mut s = [0u64; SUMMARY_WORDS];
        summary_mark(&mut s, [198, 51], 24);
        let marked = |s: &Summary| (0..1u32 << 16).filter(|&i| summary_covers(s, i)).count();
        assert_eq!(marked(&s), 1);
        assert!(summary_covers(&s, 0xc633));
        summary_mark(&mut s, [10, 0], 8);
        assert_eq!(marked(&s), 257, "a /8 marks its 256 /16s");
        assert!(summary_covers(&s, 0x0a00) && summary_covers(&s, 0x0aff));
        assert!(!summary_covers(&s, 0x09ff) && !summary_covers(&s, 0x0b00));
        let mut v6 = [0u64; SUMMARY_WORDS];
        summary_mark(&mut v6, [0x20, 0x01], 32);
        summary_mark(&mut v6, [0xfc, 0x00], 7);
        let mut addr = [0u8; 16];
        addr[..2].copy_from_slice(&[0x20, 0x01]);
        assert!(summary_covers(&v6, summary_index(&addr)));
        addr[..2].copy_from_slice(&[0xfd, 0x12]);
        assert!(summary_covers(&v6, summary_index(&addr)), "fc00::/7 covers fd12::");
        addr[..2].copy_from_slice(&[0xfe, 0x00]);
        assert!(!summary_covers(&v6, summary_index(&addr)));
        let mut all = [0u64; SUMMARY_WORDS];
        summary_mark(&mut all, [0, 0], 0);
        assert!(all.iter().all(|w| *w == u64::MAX), "a default rule marks everything");
    }

    #[test]
    fn buckets_hold_a_burst_and_refill_at_the_rate() {
        // Full bucket of 3 at 10 pps: three packets go, the fourth waits 100 ms.
        let mut t = 3000;
        for _ in 0..3 {
            let (n, ok) = take_token(t, 0, 10, 3);
            assert!(ok);
            t = n;
        }
        assert_eq!(take_token(t, 0, 10, 3), (0, false));
        assert_eq!(take_token(t, 99_000_000, 10, 3), (990, false));
        assert_eq!(take_token(t, 100_000_000, 10, 3), (0, true));
        // Never more than the burst, however long the source was quiet.
        assert_eq!(take_token(0, u64::MAX, 1_000_000, 5), (4000, true));
    }

    #[test]
    fn a_steer_rule_picks_members_by_their_share_of_slots() {
        let mut r = SteerRule { slots: 4, ..SteerRule::default() };
        r.slot[..4].copy_from_slice(&[0, 0, 0, 1]);
        r.members[0].nexthop = 7;
        r.members[1].nexthop = 9;
        let mut hits = [0u32; 2];
        for i in 0..4096u32 {
            let m = r.pick(i.wrapping_mul(0x9e37_79b9)).unwrap();
            hits[usize::from(m.nexthop == 9)] += 1;
        }
        assert!((2900..3250).contains(&hits[0]), "{hits:?}");
        assert!((850..1200).contains(&hits[1]), "{hits:?}");
        assert!(SteerRule::default().pick(1).is_none());
        assert!(SteerRule { slots: 33, ..r }.pick(1).is_none());
    }
}
