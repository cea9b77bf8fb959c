//! Where a benchmark build of `sluice_xdp` stops: the per-step program times of `sluice-bench`.
//!
//! The forwarding program reads the read-only global [`GLOBAL`] (0 in the object, which is what
//! the daemon loads). The benchmark loads the same object again with the global set to a step
//! ([`EbpfLoader::set_global`](https://docs.rs/aya)): the program then stops right after that
//! step, counts nothing and returns `XDP_PASS`. The kernel freezes the global's map, so the
//! verifier knows its value and removes the branches it rules out: the product's program keeps
//! only the global's loads, and each variant is the product cut short, not a copy of it.
//!
//! The steps, in the order a forwarded packet takes them (each variant does every step up to
//! its own).

/// The name of the global in the object.
pub const GLOBAL: &str = "SLUICE_STOP_AFTER";

/// The whole program: the product.
pub const ALL: u32 = 0;
/// Ethernet (and 802.1Q) header read, the ingress interface found (interface cache), its MAC
/// compared.
pub const IFACE: u32 = 1;
/// The IP header read and checked (version, lengths, IPv4 checksum, martians).
pub const PARSE: u32 = 2;
/// The hook tables consulted (their summary, and the rules when there are any).
pub const HOOKS: u32 = 3;
/// The longest-prefix match.
pub const LOOKUP: u32 = 4;
/// The route turned into a next hop (the next hop read, an ECMP group's member picked).
pub const NEXTHOP: u32 = 5;
/// The egress claimed: the devmap redirect.
pub const REDIRECT: u32 = 6;
/// TTL or hop limit decremented (with the IPv4 checksum), the frame cut to its IP length and
/// its Ethernet header rewritten.
pub const REWRITE: u32 = 7;
/// Counted on its egress, and 1 in `TALKER_SAMPLE_EVERY` sampled for the top talkers: all but
/// the ingress counter, which only [`ALL`] updates.
pub const EGRESS_COUNT: u32 = 8;

/// Every step a variant stops after, in order, with its name in the benchmark's report.
pub const STEPS: [(u32, &str); 8] = [
    (IFACE, "iface"),
    (PARSE, "parse"),
    (HOOKS, "hooks"),
    (LOOKUP, "lookup"),
    (NEXTHOP, "nexthop"),
    (REDIRECT, "redirect"),
    (REWRITE, "rewrite"),
    (EGRESS_COUNT, "egress_count"),
];
