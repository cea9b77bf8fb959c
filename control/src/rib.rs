//! The RIB: Sluice's in-memory copy of the kernel state it mirrors (links, addresses, routes of
//! the configured table and of the local table, neighbours). The mirror fills it from netlink; the
//! FIB compiler turns it into map contents.

use std::{
    collections::{BTreeMap, BTreeSet},
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
    pub routes: BTreeMap<RouteKey, Route>,
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
        self.routes.retain(|_, r| r.nexthops.iter().all(|nh| nh.ifindex != index));
    }

    /// Adds or replaces a route.
    pub fn upsert_route(&mut self, route: Route) {
        self.dirty.prefixes.insert(route.prefix);
        self.routes.insert(route.key(), route);
    }

    /// Removes a route.
    pub fn remove_route(&mut self, key: &RouteKey) {
        if self.routes.remove(key).is_some() {
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
    pub fn best_route(&self, table: u32, prefix: IpNet) -> Option<&Route> {
        let from = RouteKey { table, prefix, metric: 0 };
        let to = RouteKey { table, prefix, metric: u32::MAX };
        self.routes.range(from..=to).next().map(|(_, r)| r)
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
}
