//! The RIB: Sluice's in-memory copy of the kernel state it mirrors (links, addresses, routes of
//! the configured table and of the local table, neighbours). The mirror fills it from netlink; the
//! FIB compiler turns it into map contents.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
};

use ipnet::IpNet;

/// The kernel's main routing table.
pub const TABLE_MAIN: u32 = 254;
/// The kernel's local table (addresses of the router, broadcast addresses).
pub const TABLE_LOCAL: u32 = 255;

/// How XDP is attached to a link, as the kernel reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum XdpAttached {
    /// No XDP program.
    #[default]
    None,
    /// Native (driver) mode.
    Native,
    /// Generic (skb) mode.
    Generic,
    /// Offloaded.
    Offload,
}

/// A network interface.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Link {
    /// ifindex.
    pub index: u32,
    /// Name.
    pub name: String,
    /// MAC address, when the link has one of 6 bytes.
    pub mac: Option<[u8; 6]>,
    /// MTU.
    pub mtu: u32,
    /// Administratively up and with carrier (`IFF_UP` and `IFF_RUNNING` or `IFF_LOWER_UP`).
    pub up: bool,
    /// For an 802.1Q VLAN device: its parent's ifindex and its VLAN id.
    pub vlan: Option<(u32, u16)>,
    /// XDP attachment reported by the kernel.
    pub xdp: XdpAttached,
}

/// Kernel route types that matter to forwarding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RouteKind {
    /// A gateway or device route.
    Unicast,
    /// An address of this host, a broadcast address or an anycast address (local table).
    Local,
    /// Dropped silently.
    Blackhole,
    /// Rejected with ICMP (unreachable, prohibit).
    Unreachable,
    /// Anything else: handled by the kernel.
    Other,
}

/// One next hop of a route.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteNextHop {
    /// Output interface.
    pub ifindex: u32,
    /// The gateway; `None` for a device (on-link, connected) route.
    pub gateway: Option<IpAddr>,
    /// Weight, 1-based (Linux's `rtnh_hops` + 1).
    pub weight: u16,
}

/// The next hops of a route: one, held inline (a full table has a million routes, nearly all
/// with one next hop: an allocation each would cost a fifth of the RIB), or more on the heap.
pub type NextHops = smallvec::SmallVec<[RouteNextHop; 1]>;

/// A route as the kernel holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// Destination prefix (host bits clear).
    pub prefix: IpNet,
    /// Table id.
    pub table: u32,
    /// Priority (metric); lower wins.
    pub metric: u32,
    /// Type.
    pub kind: RouteKind,
    /// Next hops; more than one for a multipath route.
    pub nexthops: NextHops,
    /// The protocol that installed it (kernel, boot, static, bird, ...), for display.
    pub protocol: u8,
}

/// Identity of a route in the RIB: the kernel keys routes by table, prefix and metric (and TOS,
/// which Sluice does not forward by).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteKey {
    /// Table id.
    pub table: u32,
    /// Destination prefix.
    pub prefix: IpNet,
    /// Metric.
    pub metric: u32,
}

impl Route {
    /// The RIB key of this route.
    pub fn key(&self) -> RouteKey {
        RouteKey { table: self.table, prefix: self.prefix, metric: self.metric }
    }
}

/// A route of the RIB, borrowed: the fields of a [`Route`], its next hops shared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteRef<'a> {
    /// Destination prefix (host bits clear).
    pub prefix: IpNet,
    /// Table id.
    pub table: u32,
    /// Priority (metric); lower wins.
    pub metric: u32,
    /// Type.
    pub kind: RouteKind,
    /// Next hops.
    pub nexthops: &'a NextHops,
    /// The protocol that installed it.
    pub protocol: u8,
}

impl RouteRef<'_> {
    /// An owned copy.
    pub fn to_route(&self) -> Route {
        Route {
            prefix: self.prefix,
            table: self.table,
            metric: self.metric,
            kind: self.kind,
            nexthops: self.nexthops.clone(),
            protocol: self.protocol,
        }
    }
}

/// What the RIB keeps of a route besides its key: 8 bytes, its next hops interned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stored {
    hops: u32,
    kind: RouteKind,
    protocol: u8,
}

/// Sets of next hops, each kept once with a count of the routes using it. A full table has a
/// million routes and a handful of distinct next-hop sets (one per peer, or per ECMP group): a
/// route holds an id of 4 bytes instead of its own copy (40), which with the key held only once
/// brings a route from about 140 bytes of B-tree to about 50.
#[derive(Clone, Debug, Default)]
struct HopSets {
    sets: Vec<(NextHops, u32)>,
    ids: HashMap<NextHops, u32>,
    free: Vec<u32>,
}

impl HopSets {
    fn intern(&mut self, hops: NextHops) -> u32 {
        if let Some(&id) = self.ids.get(&hops) {
            self.sets[id as usize].1 += 1;
            return id;
        }
        let id = if let Some(id) = self.free.pop() {
            self.sets[id as usize] = (hops.clone(), 1);
            id
        } else {
            self.sets.push((hops.clone(), 1));
            u32::try_from(self.sets.len() - 1).expect("fewer than 2^32 next-hop sets")
        };
        self.ids.insert(hops, id);
        id
    }

    fn release(&mut self, id: u32) {
        let (hops, refs) = &mut self.sets[id as usize];
        *refs -= 1;
        if *refs == 0 {
            let hops = std::mem::take(hops);
            self.ids.remove(&hops);
            self.free.push(id);
        }
    }

    fn get(&self, id: u32) -> &NextHops {
        &self.sets[id as usize].0
    }
}

/// The key of an IPv4 route within its table: 12 bytes (a `RouteKey` is 28), ordered as
/// `RouteKey` orders IPv4 routes (address, length, metric).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct V4Key {
    addr: u32,
    len: u8,
    metric: u32,
}

/// The key of an IPv6 route within its table, ordered as `RouteKey` orders IPv6 routes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct V6Key {
    addr: [u8; 16],
    len: u8,
    metric: u32,
}

/// One table's routes: IPv4 and IPv6 apart, each with a packed key.
#[derive(Clone, Debug, Default)]
struct Table {
    v4: BTreeMap<V4Key, Stored>,
    v6: BTreeMap<V6Key, Stored>,
}

enum Packed {
    V4(V4Key),
    V6(V6Key),
}

fn pack(key: &RouteKey) -> Packed {
    match key.prefix {
        IpNet::V4(n) => {
            Packed::V4(V4Key { addr: n.addr().into(), len: n.prefix_len(), metric: key.metric })
        }
        IpNet::V6(n) => {
            Packed::V6(V6Key { addr: n.addr().octets(), len: n.prefix_len(), metric: key.metric })
        }
    }
}

fn unpack_v4(table: u32, k: &V4Key) -> RouteKey {
    let prefix = ipnet::Ipv4Net::new(k.addr.into(), k.len).expect("a stored length").into();
    RouteKey { table, prefix, metric: k.metric }
}

fn unpack_v6(table: u32, k: &V6Key) -> RouteKey {
    let prefix = ipnet::Ipv6Net::new(k.addr.into(), k.len).expect("a stored length").into();
    RouteKey { table, prefix, metric: k.metric }
}

/// The routes of the mirrored tables, by table, prefix and metric, held compactly: per table
/// and family, with keys of 12 (IPv4) or 24 bytes, and next hops interned ([`HopSets`]). A full
/// IPv4 table costs about 25 bytes a route here, against some 140 as a map of [`Route`]s.
#[derive(Clone, Debug, Default)]
pub struct Routes {
    tables: BTreeMap<u32, Table>,
    hops: HopSets,
    len: usize,
}

impl Routes {
    fn view(&self, key: RouteKey, s: Stored) -> RouteRef<'_> {
        RouteRef {
            prefix: key.prefix,
            table: key.table,
            metric: key.metric,
            kind: s.kind,
            nexthops: self.hops.get(s.hops),
            protocol: s.protocol,
        }
    }

    /// Adds or replaces a route.
    pub fn insert(&mut self, route: Route) {
        let key = route.key();
        let stored = Stored {
            hops: self.hops.intern(route.nexthops),
            kind: route.kind,
            protocol: route.protocol,
        };
        let table = self.tables.entry(key.table).or_default();
        let old = match pack(&key) {
            Packed::V4(k) => table.v4.insert(k, stored),
            Packed::V6(k) => table.v6.insert(k, stored),
        };
        match old {
            Some(old) => self.hops.release(old.hops),
            None => self.len += 1,
        }
    }

    /// Removes a route; whether it was there.
    pub fn remove(&mut self, key: &RouteKey) -> bool {
        let Some(table) = self.tables.get_mut(&key.table) else { return false };
        let old = match pack(key) {
            Packed::V4(k) => table.v4.remove(&k),
            Packed::V6(k) => table.v6.remove(&k),
        };
        if table.v4.is_empty() && table.v6.is_empty() {
            self.tables.remove(&key.table);
        }
        let Some(old) = old else { return false };
        self.hops.release(old.hops);
        self.len -= 1;
        true
    }

    /// Replaces every route (a resynchronisation). The maps are built from sorted keys in one
    /// go, their nodes full (inserting one by one leaves them part empty).
    pub fn replace_all(&mut self, routes: impl IntoIterator<Item = Route>) {
        let mut builder = RoutesBuilder::default();
        for r in routes {
            builder.push(r);
        }
        *self = builder.build();
    }

    /// Keeps the routes `keep` says yes to.
    pub fn retain(&mut self, mut keep: impl FnMut(RouteRef<'_>) -> bool) {
        let gone: Vec<RouteKey> = self
            .iter()
            .filter(|r| !keep(*r))
            .map(|r| RouteKey { table: r.table, prefix: r.prefix, metric: r.metric })
            .collect();
        for k in gone {
            self.remove(&k);
        }
    }

    /// The route with this key.
    pub fn get(&self, key: &RouteKey) -> Option<RouteRef<'_>> {
        let table = self.tables.get(&key.table)?;
        let stored = match pack(key) {
            Packed::V4(k) => table.v4.get(&k),
            Packed::V6(k) => table.v6.get(&k),
        }?;
        Some(self.view(*key, *stored))
    }

    /// Every route, in key order (table, then IPv4 before IPv6, prefix, metric).
    pub fn iter(&self) -> impl Iterator<Item = RouteRef<'_>> {
        self.tables.iter().flat_map(move |(&id, t)| {
            let v4 = t.v4.iter().map(move |(k, s)| self.view(unpack_v4(id, k), *s));
            let v6 = t.v6.iter().map(move |(k, s)| self.view(unpack_v6(id, k), *s));
            v4.chain(v6)
        })
    }

    /// The routes of one table for one prefix, by metric. The range is open-ended and stops at
    /// the first other prefix: its one bound is searched for where a closed range searches for
    /// two (the compiler asks for the first of these for every route of a full table's load).
    pub fn of_prefix(&self, table: u32, prefix: IpNet) -> impl Iterator<Item = RouteRef<'_>> {
        let t = self.tables.get(&table);
        let (v4, v6) = match prefix {
            IpNet::V4(n) => {
                let (addr, len) = (u32::from(n.addr()), n.prefix_len());
                let from = V4Key { addr, len, metric: 0 };
                let same = move |(k, _): &(&V4Key, _)| k.addr == addr && k.len == len;
                (t.map(|t| t.v4.range(from..).take_while(same)), None)
            }
            IpNet::V6(n) => {
                let (addr, len) = (n.addr().octets(), n.prefix_len());
                let from = V6Key { addr, len, metric: 0 };
                let same = move |(k, _): &(&V6Key, _)| k.addr == addr && k.len == len;
                (None, t.map(|t| t.v6.range(from..).take_while(same)))
            }
        };
        let v4 = v4.into_iter().flatten().map(move |(k, s)| self.view(unpack_v4(table, k), *s));
        let v6 = v6.into_iter().flatten().map(move |(k, s)| self.view(unpack_v6(table, k), *s));
        v4.chain(v6)
    }

    /// How many routes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many distinct next-hop sets the routes use.
    pub fn nexthop_sets(&self) -> usize {
        self.hops.ids.len()
    }
}

/// Routes gathered one at a time (a dump of the kernel's tables) into the [`Routes`] they make,
/// packed as they come: a full table is held as some 20 bytes a route until it is built, not
/// as a list of [`Route`]s (some 80).
#[derive(Debug, Default)]
pub struct RoutesBuilder {
    hops: HopSets,
    v4: BTreeMap<u32, Vec<(V4Key, Stored)>>,
    v6: BTreeMap<u32, Vec<(V6Key, Stored)>>,
}

impl RoutesBuilder {
    /// Adds a route; of two with the same key, the one pushed last wins.
    pub fn push(&mut self, r: Route) {
        let key = r.key();
        let stored =
            Stored { hops: self.hops.intern(r.nexthops), kind: r.kind, protocol: r.protocol };
        match pack(&key) {
            Packed::V4(k) => self.v4.entry(key.table).or_default().push((k, stored)),
            Packed::V6(k) => self.v6.entry(key.table).or_default().push((k, stored)),
        }
    }

    /// The routes pushed, each table's maps built in one go.
    pub fn build(self) -> Routes {
        let Self { mut hops, v4, v6 } = self;
        let mut tables: BTreeMap<u32, Table> = BTreeMap::new();
        let mut len = 0;
        for (id, list) in v4 {
            let map = sorted_map(list, &mut hops);
            len += map.len();
            tables.entry(id).or_default().v4 = map;
        }
        for (id, list) in v6 {
            let map = sorted_map(list, &mut hops);
            len += map.len();
            tables.entry(id).or_default().v6 = map;
        }
        Routes { tables, hops, len }
    }
}

/// A map from keys in any order, the last of equal keys winning (as inserts one after the other
/// would); the losers' next-hop references are released.
fn sorted_map<K: Ord + Copy>(
    mut list: Vec<(K, Stored)>,
    hops: &mut HopSets,
) -> BTreeMap<K, Stored> {
    // Stable: of equal keys, the one pushed last stays last.
    list.sort_by_key(|e| e.0);
    // In place, the last of equal keys wins.
    list.dedup_by(|later, kept| {
        if later.0 != kept.0 {
            return false;
        }
        hops.release(kept.1.hops);
        kept.1 = later.1;
        true
    });
    // Collected in place (the map's own sort finds it sorted) and built in one go: the list
    // and the map are the only copies.
    list.into_iter().collect()
}

impl PartialEq for Routes {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for Routes {}

/// Neighbour (ARP / NDP) states, the kernel's `NUD_*` bits.
pub mod nud {
    /// Still being resolved.
    pub const INCOMPLETE: u16 = 0x01;
    /// Confirmed recently.
    pub const REACHABLE: u16 = 0x02;
    /// Valid but unconfirmed.
    pub const STALE: u16 = 0x04;
    /// Waiting before probing.
    pub const DELAY: u16 = 0x08;
    /// Being probed.
    pub const PROBE: u16 = 0x10;
    /// Resolution failed.
    pub const FAILED: u16 = 0x20;
    /// No ARP needed (point-to-point).
    pub const NOARP: u16 = 0x40;
    /// Set by the administrator.
    pub const PERMANENT: u16 = 0x80;
    /// States whose link-layer address may be used to forward.
    pub const USABLE: u16 = REACHABLE | STALE | DELAY | PROBE | PERMANENT | NOARP;
}

/// A neighbour entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Neighbour {
    /// Interface.
    pub ifindex: u32,
    /// Protocol address.
    pub addr: IpAddr,
    /// Link-layer address, if known.
    pub mac: Option<[u8; 6]>,
    /// `NUD_*` state bits.
    pub state: u16,
    /// Managed by the kernel (`NTF_EXT_MANAGED`): kept resolved without traffic.
    pub managed: bool,
}

impl Neighbour {
    /// Whether the entry's MAC may be used to forward.
    pub fn usable(&self) -> bool {
        self.mac.is_some() && self.state & nud::USABLE != 0
    }
}

/// An address assigned to one of the router's interfaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address {
    /// Interface.
    pub ifindex: u32,
    /// The address and its prefix length.
    pub addr: IpNet,
}

/// What changed in the RIB since the FIB compiler last looked: the prefixes whose routes changed,
/// the neighbours that changed, or everything (links and addresses touch too much to track).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dirty {
    /// Recompile everything.
    pub all: bool,
    /// Prefixes with a route added, changed or removed.
    pub prefixes: BTreeSet<IpNet>,
    /// Neighbours added, changed or removed.
    pub neighbours: BTreeSet<(u32, IpAddr)>,
}

impl Dirty {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        !self.all && self.prefixes.is_empty() && self.neighbours.is_empty()
    }
}

/// The mirrored kernel state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rib {
    /// Links by ifindex.
    pub links: BTreeMap<u32, Link>,
    /// Addresses.
    pub addresses: BTreeSet<Address>,
    /// Routes of the mirrored tables.
    pub routes: Routes,
    /// Neighbours by (ifindex, address).
    pub neighbours: BTreeMap<(u32, IpAddr), Neighbour>,
    /// Changes not compiled yet.
    pub dirty: Dirty,
}

impl Rib {
    /// Adds or replaces a link.
    pub fn upsert_link(&mut self, link: Link) {
        if self.links.get(&link.index) != Some(&link) {
            self.dirty.all = true;
            self.links.insert(link.index, link);
        }
    }

    /// Removes a link and everything that hangs off it (the kernel does not always send the
    /// corresponding route and neighbour deletions).
    pub fn remove_link(&mut self, index: u32) {
        self.dirty.all = true;
        self.links.remove(&index);
        self.addresses.retain(|a| a.ifindex != index);
        self.neighbours.retain(|(i, _), _| *i != index);
        self.routes.retain(|r| r.nexthops.iter().all(|nh| nh.ifindex != index));
    }

    /// Adds or replaces a route.
    pub fn upsert_route(&mut self, route: Route) {
        self.dirty.prefixes.insert(route.prefix);
        self.routes.insert(route);
    }

    /// Removes a route.
    pub fn remove_route(&mut self, key: &RouteKey) {
        if self.routes.remove(key) {
            self.dirty.prefixes.insert(key.prefix);
        }
    }

    /// Adds or replaces a neighbour.
    pub fn upsert_neighbour(&mut self, n: Neighbour) {
        let key = (n.ifindex, n.addr);
        if self.neighbours.get(&key) != Some(&n) {
            self.dirty.neighbours.insert(key);
            self.neighbours.insert(key, n);
        }
    }

    /// Removes a neighbour.
    pub fn remove_neighbour(&mut self, ifindex: u32, addr: IpAddr) {
        if self.neighbours.remove(&(ifindex, addr)).is_some() {
            self.dirty.neighbours.insert((ifindex, addr));
        }
    }

    /// Adds an address of the router.
    pub fn add_address(&mut self, a: Address) {
        if self.addresses.insert(a) {
            self.dirty.all = true;
        }
    }

    /// Removes an address of the router.
    pub fn remove_address(&mut self, a: &Address) {
        if self.addresses.remove(a) {
            self.dirty.all = true;
        }
    }

    /// Takes the changes not compiled yet.
    pub fn take_dirty(&mut self) -> Dirty {
        std::mem::take(&mut self.dirty)
    }

    /// The route of `table` for exactly `prefix` that the kernel uses: the lowest metric.
    pub fn best_route(&self, table: u32, prefix: IpNet) -> Option<RouteRef<'_>> {
        self.routes.of_prefix(table, prefix).next()
    }

    /// Looks a neighbour up.
    pub fn neighbour(&self, ifindex: u32, addr: IpAddr) -> Option<&Neighbour> {
        self.neighbours.get(&(ifindex, addr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(prefix: &str, ifindex: u32, gw: Option<&str>) -> Route {
        Route {
            prefix: prefix.parse().unwrap(),
            table: TABLE_MAIN,
            metric: 0,
            kind: RouteKind::Unicast,
            nexthops: smallvec::smallvec![RouteNextHop {
                ifindex,
                gateway: gw.map(|g| g.parse().unwrap()),
                weight: 1,
            }],
            protocol: 4,
        }
    }

    #[test]
    fn routes_are_keyed_by_table_prefix_and_metric() {
        let mut rib = Rib::default();
        rib.upsert_route(route("10.0.0.0/8", 2, Some("192.0.2.1")));
        rib.upsert_route(route("10.0.0.0/8", 3, Some("192.0.2.9")));
        assert_eq!(rib.routes.len(), 1, "same key replaces");
        let mut r = route("10.0.0.0/8", 2, Some("192.0.2.1"));
        r.metric = 100;
        rib.upsert_route(r);
        assert_eq!(rib.routes.len(), 2, "another metric is another route");
        rib.remove_route(&RouteKey {
            table: TABLE_MAIN,
            prefix: "10.0.0.0/8".parse().unwrap(),
            metric: 0,
        });
        assert_eq!(rib.routes.len(), 1);
    }

    #[test]
    fn removing_a_link_removes_what_hangs_off_it() {
        let mut rib = Rib::default();
        rib.upsert_link(Link { index: 2, name: "a".into(), ..Link::default() });
        rib.upsert_link(Link { index: 3, name: "b".into(), ..Link::default() });
        rib.upsert_route(route("10.0.0.0/8", 2, Some("192.0.2.1")));
        rib.upsert_route(route("10.1.0.0/16", 3, None));
        rib.upsert_neighbour(Neighbour {
            ifindex: 2,
            addr: "192.0.2.1".parse().unwrap(),
            mac: Some([2, 0, 0, 0, 0, 1]),
            state: nud::REACHABLE,
            managed: false,
        });
        rib.addresses.insert(Address { ifindex: 2, addr: "192.0.2.2/24".parse().unwrap() });
        rib.remove_link(2);
        assert_eq!(rib.links.len(), 1);
        assert_eq!(rib.routes.len(), 1);
        assert!(rib.neighbours.is_empty());
        assert!(rib.addresses.is_empty());
    }

    #[test]
    fn only_usable_states_resolve() {
        let mut n = Neighbour {
            ifindex: 1,
            addr: "192.0.2.1".parse().unwrap(),
            mac: Some([2, 0, 0, 0, 0, 1]),
            state: nud::STALE,
            managed: false,
        };
        assert!(n.usable());
        for state in [nud::INCOMPLETE, nud::FAILED, 0] {
            n.state = state;
            assert!(!n.usable(), "state {state:#x}");
        }
        n.state = nud::REACHABLE;
        n.mac = None;
        assert!(!n.usable());
    }

    /// The compact store against a plain map of routes through random inserts, replacements and
    /// removals over both families and two tables: same routes, same order, same answers.
    #[test]
    fn compact_routes_match_a_plain_map() {
        let mut rng = crate::dir24::tests::Rng(0x5eed_1234_abcd);
        let mut routes = Routes::default();
        let mut reference: BTreeMap<RouteKey, Route> = BTreeMap::new();
        let gateways = ["10.0.0.1", "10.0.0.2", "fe80::1"];
        for step in 0..20_000 {
            let table = if rng.below(4) == 0 { TABLE_LOCAL } else { TABLE_MAIN };
            let prefix: IpNet = if rng.below(3) == 0 {
                let a = u128::from(rng.below(8)) << 120 | u128::from(rng.below(4)) << 64;
                ipnet::Ipv6Net::new(a.into(), [0, 8, 64, 128][rng.below(4) as usize])
                    .unwrap()
                    .trunc()
                    .into()
            } else {
                let a = (rng.below(16) as u32) << 24 | (rng.below(4) as u32) << 8;
                ipnet::Ipv4Net::new(a.into(), [0, 8, 24, 32][rng.below(4) as usize])
                    .unwrap()
                    .trunc()
                    .into()
            };
            let metric = [0, 100, u32::MAX][rng.below(3) as usize];
            let key = RouteKey { table, prefix, metric };
            if rng.below(3) == 0 {
                assert_eq!(routes.remove(&key), reference.remove(&key).is_some(), "step {step}");
            } else {
                let mut r = route(
                    "10.0.0.0/8",
                    1 + rng.below(3) as u32,
                    Some(gateways[rng.below(3) as usize]),
                );
                (r.prefix, r.table, r.metric) = (prefix, table, metric);
                if rng.below(5) == 0 {
                    r.nexthops.push(RouteNextHop { ifindex: 9, gateway: None, weight: 2 });
                }
                r.kind = if rng.below(6) == 0 { RouteKind::Blackhole } else { RouteKind::Unicast };
                routes.insert(r.clone());
                reference.insert(key, r);
            }
            let probe = RouteKey { table, prefix, metric: 0 };
            let best = reference.range(probe..=RouteKey { metric: u32::MAX, ..probe }).next();
            assert_eq!(
                routes.of_prefix(table, prefix).next().map(|r| r.to_route()).as_ref(),
                best.map(|(_, r)| r)
            );
            let all: Vec<Route> = routes.of_prefix(table, prefix).map(|r| r.to_route()).collect();
            let want: Vec<&Route> = reference
                .range(probe..=RouteKey { metric: u32::MAX, ..probe })
                .map(|(_, r)| r)
                .collect();
            assert_eq!(all.iter().collect::<Vec<_>>(), want, "every route of {prefix}, by metric");
            assert_eq!(routes.get(&key).map(|r| r.to_route()).as_ref(), reference.get(&key));
        }
        assert_eq!(routes.len(), reference.len());
        let ours: Vec<Route> = routes.iter().map(|r| r.to_route()).collect();
        let theirs: Vec<Route> = reference.values().cloned().collect();
        assert_eq!(ours, theirs, "same routes in the same order");
        // Rebuilt in one go from a shuffled list with duplicates (the last wins): the same.
        let mut list = theirs.clone();
        list.extend(theirs.iter().take(50).map(|r| Route { protocol: 99, ..r.clone() }));
        let mut rebuilt = Routes::default();
        rebuilt.replace_all(list);
        let changed: Vec<Route> =
            rebuilt.iter().filter(|r| r.protocol == 99).map(|r| r.to_route()).collect();
        assert_eq!(changed.len(), 50);
        assert_eq!(rebuilt.len(), reference.len());
        // Next-hop sets are shared and released: only the sets in use remain.
        let in_use: std::collections::HashSet<NextHops> =
            reference.values().map(|r| r.nexthops.clone()).collect();
        assert_eq!(routes.nexthop_sets(), in_use.len());
        routes.retain(|_| false);
        assert!(routes.is_empty());
        assert_eq!(routes.nexthop_sets(), 0);
    }
}
