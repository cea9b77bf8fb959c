//! The hook tables on the forwarding path (see `sluice_common::hooks`): 1-in-N sampling, the
//! prefix filter (sources, then destinations) and the per-source rate limiter, consulted after
//! the IP header is validated and before the route lookup; the steer tables, consulted after it
//! for a packet the routes forward. `HOOK_CONFIG` says which tables hold anything, so empty
//! tables cost one array read.

use aya_ebpf::{
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns},
    macros::map,
    maps::{Array, LpmTrie, LruHashMap, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::XdpContext,
};
use sluice_common::{
    Counter, FAMILY_V4, Reason,
    hooks::{
        Bucket, FilterAction, FilterRule, HookConfig, MAX_FILTER_RULES, MAX_RATE_RULES,
        MAX_RULE_IDS, MAX_STEER_RULES, RATE_STATE_ENTRIES, RateKey, RateRule, SAMPLE_RING_BYTES,
        Sample, SteerMember, SteerRule, Summary, summary, summary_covers, summary_index,
        take_token,
    },
};

use crate::common::ptr_at;

#[map]
static HOOK_CONFIG: Array<HookConfig> = Array::with_max_entries(1, 0);
#[map]
static HOOK_SUMMARY: Array<Summary> = Array::with_max_entries(summary::TABLES, 0);
#[map]
static FILTER_SRC_V4: LpmTrie<[u8; 4], FilterRule> = LpmTrie::with_max_entries(MAX_FILTER_RULES, 0);
#[map]
static FILTER_DST_V4: LpmTrie<[u8; 4], FilterRule> = LpmTrie::with_max_entries(MAX_FILTER_RULES, 0);
#[map]
static FILTER_SRC_V6: LpmTrie<[u8; 16], FilterRule> =
    LpmTrie::with_max_entries(MAX_FILTER_RULES, 0);
#[map]
static FILTER_DST_V6: LpmTrie<[u8; 16], FilterRule> =
    LpmTrie::with_max_entries(MAX_FILTER_RULES, 0);
#[map]
static RATE_V4: LpmTrie<[u8; 4], RateRule> = LpmTrie::with_max_entries(MAX_RATE_RULES, 0);
#[map]
static RATE_V6: LpmTrie<[u8; 16], RateRule> = LpmTrie::with_max_entries(MAX_RATE_RULES, 0);
#[map]
static STEER_V4: LpmTrie<[u8; 4], SteerRule> = LpmTrie::with_max_entries(MAX_STEER_RULES, 0);
#[map]
static STEER_V6: LpmTrie<[u8; 16], SteerRule> = LpmTrie::with_max_entries(MAX_STEER_RULES, 0);
#[map]
static RATE_STATE: LruHashMap<RateKey, Bucket> =
    LruHashMap::with_max_entries(RATE_STATE_ENTRIES, 0);
#[map]
static RULE_COUNTERS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(MAX_RULE_IDS, 0);
#[map]
static SAMPLES: RingBuf = RingBuf::with_byte_size(SAMPLE_RING_BYTES, 0);

/// What the hook tables decided for a packet.
pub enum Verdict {
    /// Forward as the routes say; `steer`: a steer table of the packet's family holds rules.
    Continue { steer: bool },
    /// Drop, counted under the reason.
    Drop(Reason),
    /// Hand to the kernel, counted under the reason.
    Pass(Reason),
}

/// The packet facts the hooks look at. Addresses are 16 bytes, IPv4 in the first 4.
pub struct Packet<'a> {
    pub ifindex: u32,
    pub family: u8,
    pub proto: u8,
    pub len: usize,
    pub src: &'a [u8; 16],
    pub dst: &'a [u8; 16],
}

/// What a sample reads past the IP header: the source and destination port (as in the packet)
/// and, for TCP, the flags byte; zeros when there are none.
#[derive(Clone, Copy, Default)]
pub struct L4 {
    pub ports: [u8; 4],
    pub tcp_flags: u8,
}

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_SCTP: u8 = 132;

/// Reads the [`L4`] facts of a transport header at `offset`: the flags are byte 13 of a TCP
/// header (RFC 9293, section 3.1).
#[inline(always)]
pub fn read_l4(ctx: &XdpContext, offset: usize, proto: u8) -> L4 {
    match proto {
        IPPROTO_TCP => match ptr_at::<[u8; 14]>(ctx, offset) {
            Ok(p) => {
                // SAFETY: bounds checked by `ptr_at`.
                let h = unsafe { *p };
                L4 { ports: [h[0], h[1], h[2], h[3]], tcp_flags: h[13] }
            }
            Err(()) => L4::default(),
        },
        IPPROTO_UDP | IPPROTO_SCTP => match ptr_at::<[u8; 4]>(ctx, offset) {
            // SAFETY: bounds checked by `ptr_at`.
            Ok(p) => L4 { ports: unsafe { *p }, tcp_flags: 0 },
            Err(()) => L4::default(),
        },
        _ => L4::default(),
    }
}

/// Runs the hook tables that hold anything. `l4` reads the ports and TCP flags
/// ([`read_l4`]), for a sample only.
#[inline(always)]
pub fn ingress(p: &Packet<'_>, l4: impl FnOnce() -> L4) -> Verdict {
    let Some(cfg) = HOOK_CONFIG.get(0) else { return Verdict::Continue { steer: false } };
    if cfg.active == 0 {
        return Verdict::Continue { steer: false };
    }
    if cfg.sample_every != 0 {
        sample(p, cfg.sample_every, l4);
    }
    let v4 = p.family == FAMILY_V4;
    let (src_rules, dst_rules, rate_rules, steer_rules) = if v4 {
        (cfg.filter_src_v4, cfg.filter_dst_v4, cfg.rate_v4, cfg.steer_v4)
    } else {
        (cfg.filter_src_v6, cfg.filter_dst_v6, cfg.rate_v6, cfg.steer_v6)
    };
    let (src_table, dst_table, rate_table) = if v4 {
        (summary::FILTER_SRC_V4, summary::FILTER_DST_V4, summary::RATE_V4)
    } else {
        (summary::FILTER_SRC_V6, summary::FILTER_DST_V6, summary::RATE_V6)
    };
    let (src_index, dst_index) = (summary_index(p.src), summary_index(p.dst));
    // The strictest verdict of the three tables holds: a drop (filter or rate) over a pass over
    // a count. A pass is kept until the later tables have had their say, so that one plugin's
    // source pass does not undo another's destination drop or rate limit.
    let mut passed = false;
    if src_rules != 0 && covered(src_table, src_index) {
        let rule =
            if v4 { lookup_v4(&FILTER_SRC_V4, p.src) } else { lookup_v6(&FILTER_SRC_V6, p.src) };
        match rule.and_then(|r| filter(r, p.len)) {
            Some(Verdict::Pass(_)) => passed = true,
            Some(v) => return v,
            None => {}
        }
    }
    if dst_rules != 0 && covered(dst_table, dst_index) {
        let rule =
            if v4 { lookup_v4(&FILTER_DST_V4, p.dst) } else { lookup_v6(&FILTER_DST_V6, p.dst) };
        match rule.and_then(|r| filter(r, p.len)) {
            Some(Verdict::Pass(_)) => passed = true,
            Some(v) => return v,
            None => {}
        }
    }
    if rate_rules != 0 && covered(rate_table, src_index) {
        let rule = if v4 { lookup_v4(&RATE_V4, p.src) } else { lookup_v6(&RATE_V6, p.src) };
        if let Some(rule) = rule
            && !admit(&rule, p)
        {
            count_rule(rule.rule, p.len);
            return Verdict::Drop(Reason::DropRateLimited);
        }
    }
    if passed {
        return Verdict::Pass(Reason::PassFiltered);
    }
    Verdict::Continue { steer: steer_rules != 0 }
}

/// The steer rule covering `dst`, if any, and the gateway it sends this flow to: the rule's id
/// and the member (its next-hop id, with the address that next hop must still have). `None`: no
/// rule covers `dst`, or none of its gateways is a known next hop.
#[inline(always)]
pub fn steer(family: u8, dst: &[u8; 16], hash: u32) -> Option<(u32, &'static SteerMember)> {
    let table = if family == FAMILY_V4 { summary::STEER_V4 } else { summary::STEER_V6 };
    if !covered(table, summary_index(dst)) {
        return None;
    }
    let rule = if family == FAMILY_V4 {
        STEER_V4.get(Key::new(32, [dst[0], dst[1], dst[2], dst[3]]))
    } else {
        STEER_V6.get(Key::new(128, *dst))
    }?;
    Some((rule.rule, rule.pick(hash)?))
}

/// Whether a rule of `table` may cover an address with these first 16 bits (see [`Summary`]).
/// Without the summary, every address may.
#[inline(always)]
fn covered(table: u32, index: u32) -> bool {
    HOOK_SUMMARY.get(table).is_none_or(|s| summary_covers(s, index))
}

#[inline(always)]
fn lookup_v4<V: Copy>(table: &LpmTrie<[u8; 4], V>, addr: &[u8; 16]) -> Option<V> {
    table.get(Key::new(32, [addr[0], addr[1], addr[2], addr[3]])).copied()
}

#[inline(always)]
fn lookup_v6<V: Copy>(table: &LpmTrie<[u8; 16], V>, addr: &[u8; 16]) -> Option<V> {
    table.get(Key::new(128, *addr)).copied()
}

/// A matching filter rule's verdict; `None` for a counting rule (the packet goes on).
#[inline(always)]
fn filter(rule: FilterRule, len: usize) -> Option<Verdict> {
    count_rule(rule.rule, len);
    match FilterAction::from_u32(rule.action) {
        Some(FilterAction::Drop) => Some(Verdict::Drop(Reason::DropFiltered)),
        Some(FilterAction::Pass) => Some(Verdict::Pass(Reason::PassFiltered)),
        Some(FilterAction::Count) | None => None,
    }
}

/// Whether the source's bucket has a token for this packet (taking it).
#[inline(always)]
fn admit(rule: &RateRule, p: &Packet<'_>) -> bool {
    let key = RateKey { rule: rule.rule, family: p.family, _pad: [0; 3], addr: *p.src };
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    match RATE_STATE.get_ptr_mut(&key) {
        Some(b) => {
            // SAFETY: a map value; concurrent updates from other CPUs may interleave (see
            // `Bucket`), which only blurs the count.
            let (tokens, last) = unsafe { ((*b).milli_tokens, (*b).last_ns) };
            let (left, ok) =
                take_token(tokens, now.saturating_sub(last), rule.rate_pps, rule.burst);
            // SAFETY: as above.
            unsafe {
                (*b).milli_tokens = left;
                (*b).last_ns = now;
            }
            ok
        }
        None => {
            // A new source starts with a full bucket, this packet taking one token.
            let full = u64::from(rule.burst) * 1000;
            let bucket = Bucket { milli_tokens: full.saturating_sub(1000), last_ns: now };
            let _ = RATE_STATE.insert(&key, &bucket, 0);
            true
        }
    }
}

/// Counts a packet on a rule.
#[inline(always)]
pub fn count_rule(rule: u32, len: usize) {
    if let Some(c) = RULE_COUNTERS.get_ptr_mut(rule) {
        // SAFETY: per-CPU value, so no other writer runs concurrently on this CPU.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += len as u64;
        }
    }
}

/// Writes one packet in `every` to the sample ring, chosen at random.
#[inline(always)]
fn sample(p: &Packet<'_>, every: u32, l4: impl FnOnce() -> L4) {
    // SAFETY: bpf_get_prandom_u32 has no preconditions.
    if unsafe { bpf_get_prandom_u32() } % every != 0 {
        return;
    }
    let L4 { ports, tcp_flags } = l4();
    let s = Sample {
        ifindex: p.ifindex,
        len: p.len as u32,
        family: p.family,
        proto: p.proto,
        sport: [ports[0], ports[1]],
        dport: [ports[2], ports[3]],
        tcp_flags,
        _pad: 0,
        src: *p.src,
        dst: *p.dst,
        every,
    };
    let _ = SAMPLES.output::<Sample>(&s, 0);
}
