//! A synthetic Internet routing table for `sluice-bench`, and a fast way to put one into a
//! kernel's FIB.
//!
//! No full BGP table ships in a Debian package that we know of, so the benchmark makes one: the
//! same table for the same seed, shaped like the default-free zone in the three ways that matter
//! to a lookup structure.
//!
//! - **Size and prefix lengths.** [`IPV4_HISTOGRAM`] and [`IPV6_HISTOGRAM`] give the share of each
//!   prefix length, in millionths. They are rounded from the prefix-length distributions of the
//!   public BGP table reports (Geoff Huston's bgp.potaroo.net "BGP Routing Table Analysis" for
//!   AS6447 / `RouteViews`, the shape the CIDR report and RIPE Labs' "Visibility of Prefix Lengths
//!   in IPv4 and IPv6" show too), and calibrated to the summary those reports give: in April 2025
//!   1,034,991 IPv4 prefixes with an average length of 22.93, about 60% of them /24s and none
//!   longer; in October 2024 226,415 IPv6 prefixes with an average length of 43.24, more than half
//!   of them /48s, then /32, /44, /40, /29 and /36. The shares here give an average of 22.90 and
//!   43.17. The size is the caller's (`--table-size`); the shares are kept exactly at any size
//!   (largest-remainder rounding).
//! - **Clustering.** Real prefixes are not spread uniformly: operators announce an allocation and
//!   parts of it, and allocations sit next to each other inside a registry's blocks. Prefixes are
//!   made shortest first, each one either a more-specific of a prefix already made (probability
//!   [`MORE_SPECIFIC`]), or a neighbour of one, inside the same /16 (IPv4) or /32 (IPv6)
//!   (probability [`NEIGHBOUR`]), or else a new allocation: a place not yet covered in a block a
//!   registry allocates from, an IPv4 /8 from 1/8 to 223/8 or one of the RIR IPv6 blocks
//!   `2400::/12`, `2600::/12`, `2800::/12`, `2a00::/12`, `2c00::/12` and `2001::/16`. The
//!   probabilities are tuned so that about half the prefixes are covered by another one, as the
//!   reports count ("more specifics": 58% of the IPv6 table): 53% of the default IPv4 table,
//!   58% of the IPv6 one. Nothing overlaps the special ranges of RFC 6890 (private, shared,
//!   loopback, link-local, documentation, benchmarking, multicast and reserved space), as in the
//!   real table.
//! - **Destinations.** [`Table::destinations`] draws addresses for the traffic: each one a random
//!   address inside a prefix drawn uniformly from the whole table, so that lookups land all over the
//!   structure (and over its memory) rather than in a few hot entries that caches would flatter, and
//!   every destination is routed.
//!
//! Every route points at one of a few next hops (the benchmark's sink-side gateways), chosen at
//! random per prefix. [`write_routes`] adds or deletes routes through one rtnetlink socket, a
//! thousand messages per `sendmsg` and one acknowledgement per batch, several times faster than
//! `ip -batch`, which waits for each route's acknowledgement.

use std::{
    collections::{BTreeMap, HashSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use anyhow::{Context as _, bail};
use rtnetlink::sys::{Socket, protocols::NETLINK_ROUTE};

/// Share of each IPv4 prefix length in the table, in millionths (see the module documentation).
pub const IPV4_HISTOGRAM: [(u8, u32); 17] = [
    (8, 15),
    (9, 12),
    (10, 35),
    (11, 100),
    (12, 300),
    (13, 600),
    (14, 1_100),
    (15, 1_900),
    (16, 13_000),
    (17, 8_000),
    (18, 13_500),
    (19, 24_000),
    (20, 43_000),
    (21, 55_000),
    (22, 125_000),
    (23, 110_000),
    (24, 604_438),
];

/// Share of each IPv6 prefix length in the table, in millionths (see the module documentation).
pub const IPV6_HISTOGRAM: [(u8, u32); 29] = [
    (19, 20),
    (20, 150),
    (22, 100),
    (23, 50),
    (24, 400),
    (25, 100),
    (26, 150),
    (27, 200),
    (28, 3_000),
    (29, 38_000),
    (30, 5_000),
    (31, 3_500),
    (32, 121_000),
    (33, 12_000),
    (34, 8_000),
    (35, 5_000),
    (36, 30_000),
    (37, 3_000),
    (38, 9_000),
    (39, 4_000),
    (40, 65_000),
    (41, 4_000),
    (42, 10_000),
    (43, 3_000),
    (44, 90_000),
    (45, 7_000),
    (46, 18_000),
    (47, 20_000),
    (48, 540_330),
];

/// Probability that a prefix is made a more-specific of a shorter prefix already in the table.
pub const MORE_SPECIFIC: f64 = 0.30;
/// Probability that a prefix is placed next to a prefix already in the table.
pub const NEIGHBOUR: f64 = 0.40;

/// The full-table size of each family by default: about today's default-free zone.
pub const DEFAULT_SIZE_V4: usize = 1_000_000;
/// See [`DEFAULT_SIZE_V4`].
pub const DEFAULT_SIZE_V6: usize = 230_000;

/// Address family of a table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// `ipv4` or `ipv6`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::V4 => "ipv4",
            Self::V6 => "ipv6",
        }
    }

    /// Address width in bits.
    pub const fn bits(self) -> u8 {
        match self {
            Self::V4 => 32,
            Self::V6 => 128,
        }
    }

    /// The prefix-length shares of this family's table.
    pub const fn histogram(self) -> &'static [(u8, u32)] {
        match self {
            Self::V4 => &IPV4_HISTOGRAM,
            Self::V6 => &IPV6_HISTOGRAM,
        }
    }

    /// The average prefix length the published reports give (see the module documentation).
    pub const fn published_mean_len(self) -> f64 {
        match self {
            Self::V4 => 22.93,
            Self::V6 => 43.24,
        }
    }

    /// The default full-table size.
    pub const fn default_size(self) -> usize {
        match self {
            Self::V4 => DEFAULT_SIZE_V4,
            Self::V6 => DEFAULT_SIZE_V6,
        }
    }

    /// Length of the blocks neighbours are placed in, for a prefix of length `len`.
    const fn neighbourhood(self, len: u8) -> u8 {
        let (block, shortest) = match self {
            Self::V4 => (16, 8),
            Self::V6 => (32, 12),
        };
        if len > block {
            block
        } else if len >= shortest + 4 {
            len - 4
        } else {
            shortest
        }
    }

    /// Blocks new prefixes are placed in when they are neither more-specifics nor neighbours.
    fn registry_blocks(self) -> Vec<Prefix> {
        match self {
            Self::V4 => (1..=223u8)
                .filter(|a| *a != 10 && *a != 127)
                .map(|a| Prefix::v4(Ipv4Addr::new(a, 0, 0, 0), 8))
                .collect(),
            Self::V6 => [0x2400, 0x2600, 0x2800, 0x2a00, 0x2c00]
                .map(|s| Prefix::v6(Ipv6Addr::new(s, 0, 0, 0, 0, 0, 0, 0), 12))
                .into_iter()
                .chain([Prefix::v6(Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 16)])
                .collect(),
        }
    }

    /// Ranges no route of the table may overlap (RFC 6890 special-purpose space, and the ranges
    /// the benchmark's own links use).
    fn special(self) -> Vec<Prefix> {
        let v4 = |a: [u8; 4], l| Prefix::v4(Ipv4Addr::from(a), l);
        let v6 = |s: [u16; 8], l| Prefix::v6(Ipv6Addr::from(s), l);
        match self {
            Self::V4 => vec![
                v4([0, 0, 0, 0], 8),
                v4([10, 0, 0, 0], 8),
                v4([100, 64, 0, 0], 10),
                v4([127, 0, 0, 0], 8),
                v4([169, 254, 0, 0], 16),
                v4([172, 16, 0, 0], 12),
                v4([192, 0, 0, 0], 24),
                v4([192, 0, 2, 0], 24),
                v4([192, 88, 99, 0], 24),
                v4([192, 168, 0, 0], 16),
                v4([198, 18, 0, 0], 15),
                v4([198, 51, 100, 0], 24),
                v4([203, 0, 113, 0], 24),
                v4([224, 0, 0, 0], 3),
            ],
            Self::V6 => vec![
                v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 23),
                v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32),
                v6([0x2002, 0, 0, 0, 0, 0, 0, 0], 16),
                v6([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20),
            ],
        }
    }
}

/// A prefix, its address left-aligned in 128 bits whatever the family, so that the arithmetic is
/// the same for both: an IPv4 address takes the top 32 bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    /// The network address, left-aligned, host bits zero.
    pub addr: u128,
    /// The prefix length.
    pub len: u8,
}

impl Prefix {
    /// An IPv4 prefix (host bits are cleared).
    pub fn v4(addr: Ipv4Addr, len: u8) -> Self {
        Self::new(u128::from(u32::from(addr)) << 96, len)
    }

    /// An IPv6 prefix (host bits are cleared).
    pub fn v6(addr: Ipv6Addr, len: u8) -> Self {
        Self::new(u128::from(addr), len)
    }

    fn new(addr: u128, len: u8) -> Self {
        Self { addr: addr & mask(len), len }
    }

    /// Whether `other` lies inside this prefix (or is it).
    pub const fn contains(&self, other: &Self) -> bool {
        other.len >= self.len && other.addr & mask(self.len) == self.addr
    }

    /// Whether the two prefixes share any address.
    pub const fn overlaps(&self, other: &Self) -> bool {
        self.contains(other) || other.contains(self)
    }

    /// The prefix of length `len` (at most this one's) that contains this one.
    #[must_use]
    pub const fn ancestor(&self, len: u8) -> Self {
        Self { addr: self.addr & mask(len), len }
    }

    /// The network address in `family`.
    pub fn address(&self, family: Family) -> IpAddr {
        to_ip(self.addr, family)
    }

    /// The prefix as an [`ipnet::IpNet`].
    pub fn net(&self, family: Family) -> ipnet::IpNet {
        ipnet::IpNet::new(self.address(family), self.len).expect("lengths stay within the family")
    }
}

/// The top `len` bits set.
const fn mask(len: u8) -> u128 {
    if len == 0 { 0 } else { u128::MAX << (128 - len as u32) }
}

fn to_ip(addr: u128, family: Family) -> IpAddr {
    match family {
        Family::V4 => Ipv4Addr::from((addr >> 96) as u32).into(),
        Family::V6 => Ipv6Addr::from(addr).into(),
    }
}

/// One route of a table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Route {
    /// The destination.
    pub prefix: Prefix,
    /// Which of the table's next hops it points at, `0..next_hops`.
    pub next_hop: u8,
}

/// A synthetic full table.
#[derive(Clone, Debug)]
pub struct Table {
    /// Its family.
    pub family: Family,
    /// The seed it was made from.
    pub seed: u64,
    /// The routes, shortest prefixes first.
    pub routes: Vec<Route>,
}

/// How many prefixes of each length a table of `size` routes has: `histogram` scaled, rounded by
/// largest remainder so that the counts add up to `size` exactly.
pub fn target_counts(histogram: &[(u8, u32)], size: usize) -> Vec<(u8, usize)> {
    let total: u64 = histogram.iter().map(|(_, w)| u64::from(*w)).sum();
    let size = size as u64;
    let mut counts: Vec<(u8, u64, u64)> = histogram
        .iter()
        .map(|&(len, w)| {
            let exact = u128::from(size) * u128::from(w);
            let t = u128::from(total);
            (len, (exact / t) as u64, (exact % t) as u64)
        })
        .collect();
    let assigned: u64 = counts.iter().map(|c| c.1).sum();
    let mut order: Vec<usize> = (0..counts.len()).collect();
    order.sort_by(|&a, &b| counts[b].2.cmp(&counts[a].2).then(a.cmp(&b)));
    for &i in order.iter().take((size - assigned) as usize) {
        counts[i].1 += 1;
    }
    counts.into_iter().map(|(len, n, _)| (len, n as usize)).collect()
}

impl Table {
    /// Makes a table of `size` routes over `next_hops` next hops (at least 1) from `seed`.
    ///
    /// # Panics
    /// When `size` is more than the family's address space can hold at these prefix lengths (far
    /// beyond any real table).
    pub fn generate(family: Family, size: usize, seed: u64, next_hops: u8) -> Self {
        let mut rng = Rng::new(seed ^ u64::from(family.bits()).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let blocks = family.registry_blocks();
        let special = family.special();
        let mut taken: HashSet<Prefix> = HashSet::with_capacity(size);
        let mut routes: Vec<Route> = Vec::with_capacity(size);
        let usable = |p: &Prefix, taken: &HashSet<Prefix>| {
            !taken.contains(p) && !special.iter().any(|s| s.overlaps(p))
        };
        let lens: Vec<u8> = family.histogram().iter().map(|(l, _)| *l).collect();
        let covered = |p: &Prefix, taken: &HashSet<Prefix>| {
            lens.iter().take_while(|&&l| l < p.len).any(|&l| taken.contains(&p.ancestor(l)))
        };
        for (len, count) in target_counts(family.histogram(), size) {
            let shorter = routes.len();
            let fitting: Vec<Prefix> = blocks.iter().copied().filter(|b| b.len <= len).collect();
            assert!(!fitting.is_empty() || count == 0, "no registry block holds a /{len}");
            for _ in 0..count {
                let roll = rng.unit();
                let chosen = if roll < MORE_SPECIFIC && shorter > 0 {
                    Placement::MoreSpecific
                } else if roll < MORE_SPECIFIC + NEIGHBOUR && !routes.is_empty() {
                    Placement::Neighbour
                } else {
                    Placement::Fresh
                };
                let mut prefix = None;
                for attempt in 0..100_000u32 {
                    // A parent or a neighbourhood may be full: after a few misses, place the
                    // prefix anywhere, and after a few more, in covered space too.
                    let placement = if attempt < 16 { chosen } else { Placement::Fresh };
                    let candidate = match placement {
                        Placement::MoreSpecific => {
                            let parent = routes[rng.below(shorter)].prefix;
                            rng.inside(parent, len)
                        }
                        Placement::Neighbour => {
                            let anchor = routes[rng.below(routes.len())].prefix;
                            let block = anchor.ancestor(family.neighbourhood(len).min(anchor.len));
                            rng.inside(block, len)
                        }
                        Placement::Fresh => {
                            let block = fitting[rng.below(fitting.len())];
                            rng.inside(block, len)
                        }
                    };
                    if usable(&candidate, &taken)
                        && (placement != Placement::Fresh
                            || attempt >= 48
                            || !covered(&candidate, &taken))
                    {
                        prefix = Some(candidate);
                        break;
                    }
                }
                let prefix = prefix.unwrap_or_else(|| {
                    panic!("no room for another /{len} in a {} table of {size}", family.name())
                });
                taken.insert(prefix);
                let next_hop = rng.below(usize::from(next_hops.max(1))) as u8;
                routes.push(Route { prefix, next_hop });
            }
        }
        Self { family, seed, routes }
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether the table has no routes.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// `n` destination addresses, each inside a prefix drawn uniformly from the table; the same
    /// ones for the same table and seed.
    pub fn destinations(&self, n: usize, seed: u64) -> Vec<IpAddr> {
        assert!(!self.routes.is_empty(), "destinations of an empty table");
        let mut rng = Rng::new(seed ^ 0xd1b5_4a32_d192_ed03);
        let width = mask(self.family.bits());
        (0..n)
            .map(|_| {
                let p = self.routes[rng.below(self.routes.len())].prefix;
                to_ip(p.addr | (rng.bits() & !mask(p.len) & width), self.family)
            })
            .collect()
    }

    /// Routes per prefix length.
    pub fn histogram(&self) -> BTreeMap<u8, usize> {
        let mut h = BTreeMap::new();
        for r in &self.routes {
            *h.entry(r.prefix.len).or_insert(0) += 1;
        }
        h
    }

    /// The average prefix length.
    pub fn mean_len(&self) -> f64 {
        let sum: u64 = self.routes.iter().map(|r| u64::from(r.prefix.len)).sum();
        sum as f64 / self.routes.len().max(1) as f64
    }

    /// The share of routes covered by a shorter route of the table ("more specifics"), estimated
    /// from `sample` routes spread evenly over the table (all of them if the table is smaller).
    pub fn more_specific_share(&self, sample: usize) -> f64 {
        let set: HashSet<Prefix> = self.routes.iter().map(|r| r.prefix).collect();
        let lens: Vec<u8> = self.histogram().into_keys().collect();
        let step = (self.routes.len() / sample.max(1)).max(1);
        let picked: Vec<&Route> = self.routes.iter().step_by(step).collect();
        let covered = picked
            .iter()
            .filter(|r| {
                lens.iter()
                    .take_while(|&&l| l < r.prefix.len)
                    .any(|&l| set.contains(&r.prefix.ancestor(l)))
            })
            .count();
        covered as f64 / picked.len().max(1) as f64
    }

    /// The longest prefix of the table containing `addr`, by a linear scan (for tests and checks).
    pub fn longest_match(&self, addr: IpAddr) -> Option<Prefix> {
        let host = match addr {
            IpAddr::V4(a) => Prefix::v4(a, 32),
            IpAddr::V6(a) => Prefix::v6(a, 128),
        };
        self.routes.iter().map(|r| r.prefix).filter(|p| p.contains(&host)).max_by_key(|p| p.len)
    }
}

/// Where [`Table::generate`] puts a new prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Placement {
    /// Inside a shorter prefix of the table.
    MoreSpecific,
    /// Inside the neighbourhood (/16, /32) of a prefix of the table.
    Neighbour,
    /// Anywhere in a registry block, outside the prefixes already there: a new allocation.
    Fresh,
}

/// `SplitMix64` (Steele, Lea and Flood, 2014): small, fast, and the same sequence everywhere, which
/// is all a reproducible table needs.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (multiply-shift; the bias is below 2^-32 for the sizes used here).
    fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next()) * n as u128) >> 64) as usize
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn bits(&mut self) -> u128 {
        (u128::from(self.next()) << 64) | u128::from(self.next())
    }

    /// A random prefix of length `len` inside `parent` (`parent.len <= len`).
    fn inside(&mut self, parent: Prefix, len: u8) -> Prefix {
        debug_assert!(parent.len <= len);
        Prefix { addr: parent.addr | (self.bits() & mask(len) & !mask(parent.len)), len }
    }
}

/// Adding or deleting routes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteOp {
    /// `RTM_NEWROUTE` with `NLM_F_CREATE | NLM_F_EXCL`: fails if the route exists.
    Add,
    /// `RTM_DELROUTE`.
    Delete,
}

/// Where [`write_routes`] points routes: out of `oif`, via a gateway per next-hop index.
#[derive(Clone, Debug)]
pub struct NextHops {
    /// ifindex of the egress interface.
    pub oif: u32,
    /// Gateway of next hop `i`, all of the table's family.
    pub gateways: Vec<IpAddr>,
    /// The routes' protocol (`RTPROT_*`), so that they are recognisable in `ip route`.
    pub protocol: u8,
}

/// `RTPROT_BGP`: what the routes of a full table normally say.
pub const RTPROT_BGP: u8 = 186;

const NLMSG_ERROR: u16 = 2;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RT_TABLE_MAIN: u8 = 254;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RT_SCOPE_NOWHERE: u8 = 255;
const RTN_UNICAST: u8 = 1;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
/// Messages per `sendmsg`: well inside the default socket buffers (about 80 KB of IPv6 routes).
pub const BATCH: usize = 1024;

/// Adds or deletes `routes` (of `family`) in the main table of the calling thread's network
/// namespace through one rtnetlink socket: [`BATCH`] messages per `sendmsg`, only the last one
/// asking for an acknowledgement, errors collected as they come. `check` runs between batches and
/// stops the work when it fails (an interrupted benchmark).
pub fn write_routes(
    op: RouteOp,
    family: Family,
    routes: &[Route],
    next_hops: &NextHops,
    mut check: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut socket = Socket::new(NETLINK_ROUTE).context("open an rtnetlink socket")?;
    socket.bind_auto().context("bind the rtnetlink socket")?;
    socket.set_rx_buf_sz(4 << 20).context("size the rtnetlink receive buffer")?;
    let mut out = Vec::with_capacity(BATCH * 80);
    let mut reply = Vec::with_capacity(1 << 16);
    let mut failures: Vec<(usize, i32)> = Vec::new();
    for (b, chunk) in routes.chunks(BATCH).enumerate() {
        check()?;
        out.clear();
        let first = b * BATCH;
        for (i, route) in chunk.iter().enumerate() {
            let seq = (first + i + 1) as u32;
            let last = i + 1 == chunk.len();
            encode_route(&mut out, op, family, route, next_hops, seq, last)?;
        }
        socket.send(&out, 0).context("send routes over rtnetlink")?;
        let last_seq = (first + chunk.len()) as u32;
        'acked: loop {
            reply.clear();
            socket.recv(&mut reply, 0).context("read rtnetlink acknowledgements")?;
            for (seq, error) in errors_in(&reply) {
                if error != 0 {
                    failures.push((seq as usize - 1, error));
                }
                if seq == last_seq {
                    break 'acked;
                }
            }
        }
    }
    if let Some(&(index, error)) = failures.first() {
        let route = routes.get(index).map(|r| r.prefix.net(family).to_string());
        bail!(
            "{} of {} route {}s failed, the first ({}) with {}",
            failures.len(),
            routes.len(),
            match op {
                RouteOp::Add => "addition",
                RouteOp::Delete => "deletion",
            },
            route.unwrap_or_default(),
            std::io::Error::from_raw_os_error(-error)
        );
    }
    Ok(())
}

/// Appends one `RTM_NEWROUTE` / `RTM_DELROUTE` message.
fn encode_route(
    out: &mut Vec<u8>,
    op: RouteOp,
    family: Family,
    route: &Route,
    next_hops: &NextHops,
    seq: u32,
    ack: bool,
) -> anyhow::Result<()> {
    let start = out.len();
    let (kind, mut flags, scope, rtype, protocol) = match op {
        RouteOp::Add => (
            RTM_NEWROUTE,
            NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL,
            RT_SCOPE_UNIVERSE,
            RTN_UNICAST,
            next_hops.protocol,
        ),
        RouteOp::Delete => (RTM_DELROUTE, NLM_F_REQUEST, RT_SCOPE_NOWHERE, 0, 0),
    };
    if ack {
        flags |= NLM_F_ACK;
    }
    // struct nlmsghdr: length (patched below), type, flags, sequence, port id (0: the kernel).
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags.
    let af = match family {
        Family::V4 => AF_INET,
        Family::V6 => AF_INET6,
    };
    out.extend_from_slice(&[af, route.prefix.len, 0, 0, RT_TABLE_MAIN, protocol, scope, rtype]);
    out.extend_from_slice(&0u32.to_ne_bytes());
    if route.prefix.len > 0 {
        push_addr(out, RTA_DST, route.prefix.address(family));
    }
    if op == RouteOp::Add {
        let Some(gateway) = next_hops.gateways.get(usize::from(route.next_hop)) else {
            bail!("route to next hop {} of {}", route.next_hop, next_hops.gateways.len());
        };
        push_addr(out, RTA_GATEWAY, *gateway);
        push_attr(out, RTA_OIF, &next_hops.oif.to_ne_bytes());
    }
    let len = (out.len() - start) as u32;
    out[start..start + 4].copy_from_slice(&len.to_ne_bytes());
    Ok(())
}

fn push_addr(out: &mut Vec<u8>, kind: u16, addr: IpAddr) {
    match addr {
        IpAddr::V4(a) => push_attr(out, kind, &a.octets()),
        IpAddr::V6(a) => push_attr(out, kind, &a.octets()),
    }
}

/// Appends a `struct rtattr` with its payload, padded to 4 bytes.
fn push_attr(out: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = 4 + payload.len() as u16;
    out.extend_from_slice(&len.to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(payload);
    out.resize(out.len().next_multiple_of(4), 0);
}

/// The `(sequence, error)` of every `NLMSG_ERROR` message (error 0 is an acknowledgement) in a
/// buffer of netlink messages.
fn errors_in(buf: &[u8]) -> Vec<(u32, i32)> {
    let word = |at: usize| -> Option<u32> {
        Some(u32::from_ne_bytes(buf.get(at..at + 4)?.try_into().ok()?))
    };
    let mut found = Vec::new();
    let mut at = 0;
    while let (Some(len), Some(kind)) = (word(at), buf.get(at + 4..at + 6)) {
        let len = len as usize;
        if len < 16 {
            break;
        }
        // The payload of NLMSG_ERROR: the error, then the header of the request it answers.
        if u16::from_ne_bytes([kind[0], kind[1]]) == NLMSG_ERROR
            && let (Some(error), Some(seq)) = (word(at + 16), word(at + 20 + 8))
        {
            found.push((seq, error.cast_signed()));
        }
        at += len.next_multiple_of(4);
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_complete_and_match_the_published_means() {
        for family in [Family::V4, Family::V6] {
            let h = family.histogram();
            assert_eq!(h.iter().map(|(_, w)| w).sum::<u32>(), 1_000_000, "{}", family.name());
            let mean = h.iter().map(|&(l, w)| f64::from(l) * f64::from(w)).sum::<f64>() / 1e6;
            assert!(
                (mean - family.published_mean_len()).abs() < 0.1,
                "{}: mean prefix length {mean:.3}",
                family.name()
            );
            assert!(h.windows(2).all(|w| w[0].0 < w[1].0), "lengths ascend");
        }
    }

    #[test]
    fn counts_add_up_exactly() {
        for size in [0, 1, 7, 999, 12_345, 1_000_000] {
            for family in [Family::V4, Family::V6] {
                let counts = target_counts(family.histogram(), size);
                assert_eq!(counts.iter().map(|c| c.1).sum::<usize>(), size, "size {size}");
            }
        }
        let counts: BTreeMap<u8, usize> =
            target_counts(&IPV4_HISTOGRAM, 1_000_000).into_iter().collect();
        assert_eq!(counts[&24], 604_438);
        assert_eq!(counts[&8], 15);
    }

    #[test]
    fn tables_have_the_distribution_and_no_special_space() {
        for (family, size) in [(Family::V4, 100_000), (Family::V6, 50_000)] {
            let t = Table::generate(family, size, 7, 4);
            assert_eq!(t.len(), size);
            let want: BTreeMap<u8, usize> =
                target_counts(family.histogram(), size).into_iter().filter(|c| c.1 > 0).collect();
            assert_eq!(t.histogram(), want, "{}", family.name());
            assert!((t.mean_len() - family.published_mean_len()).abs() < 0.15);
            let unique: HashSet<Prefix> = t.routes.iter().map(|r| r.prefix).collect();
            assert_eq!(unique.len(), size, "no duplicates");
            let special = family.special();
            for r in &t.routes {
                assert!(!special.iter().any(|s| s.overlaps(&r.prefix)), "{:?}", r.prefix);
                assert_eq!(r.prefix.addr & !mask(r.prefix.len), 0, "host bits clear");
                assert!(r.next_hop < 4);
                if family == Family::V6 {
                    assert_eq!(r.prefix.addr >> 125, 1, "global unicast 2000::/3");
                }
            }
            // Clustered like the real table: about half the prefixes are more-specifics.
            let share = t.more_specific_share(usize::MAX);
            assert!(
                (0.40..0.70).contains(&share),
                "{}: more-specific share {share}",
                family.name()
            );
        }
    }

    #[test]
    fn tables_are_deterministic() {
        let a = Table::generate(Family::V4, 5_000, 42, 3);
        let b = Table::generate(Family::V4, 5_000, 42, 3);
        let c = Table::generate(Family::V4, 5_000, 43, 3);
        assert_eq!(a.routes, b.routes);
        assert_ne!(a.routes, c.routes);
        assert_eq!(a.destinations(100, 1), b.destinations(100, 1));
        assert_ne!(a.destinations(100, 1), a.destinations(100, 2));
    }

    #[test]
    fn destinations_are_routed_and_spread() {
        for (family, size) in [(Family::V4, 20_000), (Family::V6, 20_000)] {
            let t = Table::generate(family, size, 3, 2);
            let dests = t.destinations(4000, 9);
            let mut matched = HashSet::new();
            for d in &dests {
                assert_eq!(d.is_ipv4(), family == Family::V4);
                let m = t.longest_match(*d).unwrap_or_else(|| panic!("{d} is not routed"));
                matched.insert(m);
            }
            let distinct: HashSet<&IpAddr> = dests.iter().collect();
            assert!(distinct.len() > 3990, "{} distinct destinations", distinct.len());
            // Drawn over the whole table, not a corner of it: thousands of different routes.
            assert!(matched.len() > 3000, "{} distinct routes", matched.len());
        }
    }

    #[test]
    fn prefixes_convert() {
        let p = Prefix::v4(Ipv4Addr::new(192, 0, 2, 77), 24);
        assert_eq!(p.net(Family::V4).to_string(), "192.0.2.0/24");
        assert!(p.contains(&Prefix::v4(Ipv4Addr::new(192, 0, 2, 1), 32)));
        assert!(!p.contains(&Prefix::v4(Ipv4Addr::new(192, 0, 3, 1), 32)));
        let q = Prefix::v6("2001:db8:1::".parse().unwrap(), 32);
        assert_eq!(q.net(Family::V6).to_string(), "2001:db8::/32");
        assert_eq!(
            Prefix::v4(Ipv4Addr::new(1, 2, 3, 4), 0).net(Family::V4).to_string(),
            "0.0.0.0/0"
        );
    }

    #[test]
    fn route_messages_are_well_formed() {
        let hops =
            NextHops { oif: 7, gateways: vec!["10.10.2.2".parse().unwrap()], protocol: RTPROT_BGP };
        let route = Route { prefix: Prefix::v4(Ipv4Addr::new(1, 2, 3, 0), 24), next_hop: 0 };
        let mut out = Vec::new();
        encode_route(&mut out, RouteOp::Add, Family::V4, &route, &hops, 9, true).unwrap();
        assert_eq!(out.len(), 16 + 12 + 8 + 8 + 8);
        assert_eq!(u32::from_ne_bytes(out[0..4].try_into().unwrap()) as usize, out.len());
        assert_eq!(u16::from_ne_bytes([out[4], out[5]]), RTM_NEWROUTE);
        assert_eq!(
            u16::from_ne_bytes([out[6], out[7]]),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
        );
        assert_eq!(&out[16..24], &[AF_INET, 24, 0, 0, 254, RTPROT_BGP, 0, 1]);
        assert_eq!(&out[28..36], &[8, 0, 1, 0, 1, 2, 3, 0], "RTA_DST");
        let v6 = Route { prefix: Prefix::v6("2a00:1::".parse().unwrap(), 32), next_hop: 0 };
        let mut out = Vec::new();
        encode_route(&mut out, RouteOp::Delete, Family::V6, &v6, &hops, 1, false).unwrap();
        assert_eq!(out.len(), 16 + 12 + 20, "a deletion names only the destination");
        let bad = Route { next_hop: 1, ..route };
        assert!(encode_route(&mut out, RouteOp::Add, Family::V4, &bad, &hops, 1, false).is_err());
    }

    #[test]
    fn acknowledgements_parse() {
        // Two NLMSG_ERROR messages: an error for sequence 5, an acknowledgement for sequence 6.
        let mut buf = Vec::new();
        for (seq, error) in [(5u32, -17i32), (6, 0)] {
            buf.extend_from_slice(&36u32.to_ne_bytes());
            buf.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
            buf.extend_from_slice(&[0; 10]);
            buf.extend_from_slice(&error.to_ne_bytes());
            buf.extend_from_slice(&[0; 8]);
            buf.extend_from_slice(&seq.to_ne_bytes());
            buf.extend_from_slice(&[0; 4]);
        }
        assert_eq!(errors_in(&buf), vec![(5, -17), (6, 0)]);
        assert_eq!(errors_in(&buf[..20]), vec![]);
    }
}
