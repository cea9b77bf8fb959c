//! The FIB compiler: turns the [`Rib`] into the contents of the dataplane's maps ([`FibState`]),
//! and the difference between two states into an ordered list of map writes ([`diff`]).
//!
//! Next hops are identified by the neighbour they send to, `(interface, address)`: a gateway, or a
//! host on a connected subnet (each usable neighbour on a connected subnet becomes a host route,
//! so the dataplane never needs the kernel's neighbour table). Ids of next hops, ECMP groups and
//! counter slots are stable across compilations, and an id that falls out of use is only handed
//! out again after the state that referenced it has been replaced, so a reader never follows a
//! route to a next hop that was reused for another neighbour.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use sluice_common::{
    EcmpGroup, FAMILY_V4, FAMILY_V6, IF_F_UP, Iface, IfaceKey, MAX_ECMP_GROUPS, MAX_ECMP_MEMBERS,
    MAX_NEXTHOPS, MAX_SLOTS, NH_F_RESOLVED, NH_F_VLAN, NextHop, Route, RouteAction, XdpAttachMode,
};

use crate::rib::{Rib, RouteKind, TABLE_LOCAL};

/// Everything the dataplane's maps hold, as plain values.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FibState {
    /// `ROUTES_V4`.
    pub routes_v4: BTreeMap<Ipv4Net, Route>,
    /// `ROUTES_V6`.
    pub routes_v6: BTreeMap<Ipv6Net, Route>,
    /// `NEXTHOPS`, non-empty entries only.
    pub nexthops: BTreeMap<u32, NextHop>,
    /// `ECMP_GROUPS`, non-empty entries only.
    pub groups: BTreeMap<u32, EcmpGroup>,
    /// `IFACES`.
    pub ifaces: BTreeMap<IfaceKey, Iface>,
    /// `DEVMAP` keys (each maps to itself).
    pub devmap: BTreeSet<u32>,
}

impl FibState {
    /// The route a destination matches by longest prefix, as the dataplane would find it.
    pub fn lookup(&self, addr: IpAddr) -> Option<(IpNet, Route)> {
        match addr {
            IpAddr::V4(a) => (0..=32).rev().find_map(|len| {
                let net = Ipv4Net::new(a, len).ok()?.trunc();
                self.routes_v4.get(&net).map(|r| (IpNet::V4(net), *r))
            }),
            IpAddr::V6(a) => (0..=128).rev().find_map(|len| {
                let net = Ipv6Net::new(a, len).ok()?.trunc();
                self.routes_v6.get(&net).map(|r| (IpNet::V6(net), *r))
            }),
        }
    }

    /// The longest route strictly shorter than `len` that covers `addr`.
    pub fn lookup_shorter(&self, addr: IpAddr, len: u8) -> Option<(IpNet, Route)> {
        (0..len).rev().find_map(|l| {
            let net = IpNet::new(addr, l).ok()?.trunc();
            match net {
                IpNet::V4(n) => self.routes_v4.get(&n).map(|r| (net, *r)),
                IpNet::V6(n) => self.routes_v6.get(&n).map(|r| (net, *r)),
            }
        })
    }

    fn insert_route(&mut self, prefix: IpNet, route: Route) {
        self.replace_route(prefix, Some(route));
    }

    /// Sets (`Some`) or removes (`None`) the route of `prefix`; returns the one it replaced.
    fn replace_route(&mut self, prefix: IpNet, route: Option<Route>) -> Option<Route> {
        match (prefix, route) {
            (IpNet::V4(p), Some(r)) => self.routes_v4.insert(p.trunc(), r),
            (IpNet::V6(p), Some(r)) => self.routes_v6.insert(p.trunc(), r),
            (IpNet::V4(p), None) => self.routes_v4.remove(&p.trunc()),
            (IpNet::V6(p), None) => self.routes_v6.remove(&p.trunc()),
        }
    }

    fn has_route(&self, prefix: IpNet) -> bool {
        match prefix {
            IpNet::V4(p) => self.routes_v4.contains_key(&p),
            IpNet::V6(p) => self.routes_v6.contains_key(&p),
        }
    }
}

/// One write to the dataplane's maps. A full table is a million of them at once: the few large
/// values (interfaces, next hops, ECMP groups of 68 bytes) are boxed, so that a route's write
/// costs 32 bytes, not 76.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Zero the counters of a slot an interface is given for the first time (it may have
    /// belonged to an interface that is gone).
    ResetCounters(u32),
    /// Add an egress device to `DEVMAP`.
    AddDevice(u32),
    /// Write an `IFACES` entry.
    SetIface(IfaceKey, Box<Iface>),
    /// Write a next hop.
    SetNextHop(u32, Box<NextHop>),
    /// Write an ECMP group.
    SetGroup(u32, Box<EcmpGroup>),
    /// Write an IPv4 route.
    SetRouteV4(Ipv4Net, Route),
    /// Write an IPv6 route.
    SetRouteV6(Ipv6Net, Route),
    /// Delete an IPv4 route.
    DelRouteV4(Ipv4Net),
    /// Delete an IPv6 route.
    DelRouteV6(Ipv6Net),
    /// Zero an ECMP group.
    ClearGroup(u32),
    /// Zero a next hop.
    ClearNextHop(u32),
    /// Delete an `IFACES` entry.
    DelIface(IfaceKey),
    /// Remove an egress device from `DEVMAP`.
    DelDevice(u32),
}

const _: () = assert!(size_of::<Op>() <= 32);

impl Op {
    /// The route this write sets (`Some` route) or deletes (`None`), if it writes a route.
    #[must_use]
    pub fn route_write(&self) -> Option<(IpNet, Option<Route>)> {
        Some(match *self {
            Self::SetRouteV4(net, r) => (IpNet::V4(net), Some(r)),
            Self::DelRouteV4(net) => (IpNet::V4(net), None),
            Self::SetRouteV6(net, r) => (IpNet::V6(net), Some(r)),
            Self::DelRouteV6(net) => (IpNet::V6(net), None),
            _ => return None,
        })
    }
}

/// The writes that turn `old` into `new`, ordered so that nothing is referenced before it is
/// written nor cleared while referenced: devices, interfaces, next hops, groups, routes; then the
/// deletions in the reverse order.
pub fn diff(old: &FibState, new: &FibState) -> Vec<Op> {
    let mut ops = Vec::new();
    let old_slots: BTreeSet<u32> = old.ifaces.values().map(|i| i.slot).collect();
    let new_slots: BTreeSet<u32> = new.ifaces.values().map(|i| i.slot).collect();
    ops.extend(new_slots.difference(&old_slots).map(|&s| Op::ResetCounters(s)));
    ops.extend(new.devmap.difference(&old.devmap).map(|&d| Op::AddDevice(d)));
    ops.extend(changed(&old.ifaces, &new.ifaces).map(|(k, v)| Op::SetIface(*k, Box::new(*v))));
    ops.extend(
        changed(&old.nexthops, &new.nexthops).map(|(k, v)| Op::SetNextHop(*k, Box::new(*v))),
    );
    ops.extend(changed(&old.groups, &new.groups).map(|(k, v)| Op::SetGroup(*k, Box::new(*v))));
    ops.extend(changed(&old.routes_v4, &new.routes_v4).map(|(k, v)| Op::SetRouteV4(*k, *v)));
    ops.extend(changed(&old.routes_v6, &new.routes_v6).map(|(k, v)| Op::SetRouteV6(*k, *v)));
    ops.extend(removed(&old.routes_v4, &new.routes_v4).map(|k| Op::DelRouteV4(*k)));
    ops.extend(removed(&old.routes_v6, &new.routes_v6).map(|k| Op::DelRouteV6(*k)));
    ops.extend(removed(&old.groups, &new.groups).map(|k| Op::ClearGroup(*k)));
    ops.extend(removed(&old.nexthops, &new.nexthops).map(|k| Op::ClearNextHop(*k)));
    ops.extend(removed(&old.ifaces, &new.ifaces).map(|k| Op::DelIface(*k)));
    ops.extend(old.devmap.difference(&new.devmap).map(|&d| Op::DelDevice(d)));
    ops
}

fn changed<'a, K: Ord, V: PartialEq>(
    old: &'a BTreeMap<K, V>,
    new: &'a BTreeMap<K, V>,
) -> impl Iterator<Item = (&'a K, &'a V)> {
    new.iter().filter(move |(k, v)| old.get(k) != Some(v))
}

fn removed<'a, K: Ord, V>(
    old: &'a BTreeMap<K, V>,
    new: &'a BTreeMap<K, V>,
) -> impl Iterator<Item = &'a K> {
    old.keys().filter(move |k| !new.contains_key(k))
}

/// Hands out small integer ids for keys, keeping them stable while the key is in use, and
/// recycling a released id only one generation later.
#[derive(Debug)]
struct Ids<K> {
    by_key: HashMap<K, u32>,
    by_id: HashMap<u32, K>,
    first: u32,
    limit: u32,
    next: u32,
    /// Released in an earlier generation: safe to reuse now.
    free: Vec<u32>,
    /// Released in the generation being compiled.
    released: Vec<u32>,
    used: BTreeSet<u32>,
}

impl<K: std::hash::Hash + Eq + Clone> Ids<K> {
    fn new(first: u32, limit: u32) -> Self {
        Self {
            by_key: HashMap::new(),
            by_id: HashMap::new(),
            first,
            limit,
            next: first,
            free: Vec::new(),
            released: Vec::new(),
            used: BTreeSet::new(),
        }
    }

    /// Records an id already in the maps (adoption at start-up).
    fn adopt(&mut self, key: K, id: u32) {
        if id < self.first || id >= self.limit || self.by_key.contains_key(&key) {
            return;
        }
        self.by_id.insert(id, key.clone());
        self.by_key.insert(key, id);
        self.next = self.next.max(id + 1);
    }

    fn get(&mut self, key: &K) -> Option<u32> {
        if let Some(&id) = self.by_key.get(key) {
            self.used.insert(id);
            return Some(id);
        }
        let id = match self.free.pop() {
            Some(id) => id,
            None if self.next < self.limit => {
                self.next += 1;
                self.next - 1
            }
            None => return None,
        };
        self.by_key.insert(key.clone(), id);
        self.by_id.insert(id, key.clone());
        self.used.insert(id);
        Some(id)
    }

    /// The id of a key, if it has one, without marking it used.
    fn peek(&self, key: &K) -> Option<u32> {
        self.by_key.get(key).copied()
    }

    /// Releases one id now (incremental compilation); it is reusable after the next
    /// [`Ids::rotate`].
    fn release(&mut self, id: u32) {
        if let Some(key) = self.by_id.remove(&id) {
            self.by_key.remove(&key);
            self.released.push(id);
        }
    }

    /// Starts an incremental generation: ids released before it become reusable.
    fn rotate(&mut self) {
        self.used.clear();
        self.free.append(&mut self.released);
    }

    /// Ends a generation: ids not used in it are released.
    fn finish(&mut self) {
        let used = std::mem::take(&mut self.used);
        let mut released = Vec::new();
        self.by_key.retain(|_, id| {
            let keep = used.contains(id);
            if !keep {
                released.push(*id);
            }
            keep
        });
        for id in &released {
            self.by_id.remove(id);
        }
        self.free.append(&mut self.released);
        self.released = released;
    }
}

/// Compiles [`Rib`]s into [`FibState`]s for one routing table.
#[derive(Debug)]
pub struct Compiler {
    table: u32,
    nexthop_ids: Ids<(u32, IpAddr)>,
    group_ids: Ids<Vec<u32>>,
    slots: Ids<u32>,
    /// Next hops or members that did not fit, reported once per compilation.
    pub overflow: usize,
    /// References to each next hop (routes and the groups it is a member of).
    nh_refs: HashMap<u32, u32>,
    /// References to each group (routes).
    group_refs: HashMap<u32, u32>,
    /// Next hops and groups first written by the update in progress.
    created_nh: Vec<u32>,
    created_groups: Vec<u32>,
}

impl Compiler {
    /// A compiler for the routes of `table` (254 is the kernel's main table).
    pub fn new(table: u32) -> Self {
        Self {
            table,
            nexthop_ids: Ids::new(1, MAX_NEXTHOPS),
            group_ids: Ids::new(1, MAX_ECMP_GROUPS),
            slots: Ids::new(1, MAX_SLOTS),
            overflow: 0,
            nh_refs: HashMap::new(),
            group_refs: HashMap::new(),
            created_nh: Vec::new(),
            created_groups: Vec::new(),
        }
    }

    /// The table compiled.
    pub fn table(&self) -> u32 {
        self.table
    }

    /// Takes over the ids of a state already in the maps, so that recompiling the same RIB
    /// rewrites nothing (start-up after a restart adopts the pinned maps this way).
    pub fn adopt(&mut self, current: &FibState) {
        for (id, nh) in &current.nexthops {
            if let Some(addr) = neighbour_of(nh) {
                self.nexthop_ids.adopt((nh.logical_ifindex, addr), *id);
            }
        }
        for (id, g) in &current.groups {
            let n = (g.count as usize).min(MAX_ECMP_MEMBERS);
            self.group_ids.adopt(g.members[..n].to_vec(), *id);
        }
        for iface in current.ifaces.values() {
            self.slots.adopt(iface.logical_ifindex, iface.slot);
        }
    }

    /// Compiles the RIB. `attached` holds the interfaces XDP is attached to, with their mode.
    pub fn compile(&mut self, rib: &Rib, attached: &BTreeMap<u32, XdpAttachMode>) -> FibState {
        self.overflow = 0;
        let mut fib = FibState::default();
        self.compile_ifaces(rib, attached, &mut fib);
        let egress = Egress { rib, attached };

        // Best route per prefix in the table: the lowest metric, as the kernel chooses. The RIB
        // is ordered by table, prefix and metric, so the best is the first of each prefix, and
        // the prefixes come sorted: the maps are built in one go, their nodes full (a map grown
        // one insertion at a time keeps them part empty: a third more memory on a full table).
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        let mut last: Option<IpNet> = None;
        let table = self.table;
        for r in rib.routes.iter().filter(|r| r.table == table) {
            if last == Some(r.prefix) {
                continue;
            }
            last = Some(r.prefix);
            let route = self.compile_route(&r, &egress, &mut fib);
            match r.prefix {
                IpNet::V4(p) => v4.push((p.trunc(), route)),
                IpNet::V6(p) => v6.push((p.trunc(), route)),
            }
        }
        fib.routes_v4 = v4.into_iter().collect();
        fib.routes_v6 = v6.into_iter().collect();

        // Usable neighbours on connected subnets become host routes.
        for n in rib.neighbours.values().filter(|n| n.usable()) {
            let prefix = IpNet::from(n.addr);
            if fib.has_route(prefix) {
                continue;
            }
            let Some((_, r)) = fib.lookup(n.addr) else { continue };
            if r.action != RouteAction::Connected as u32 || r.target != n.ifindex {
                continue;
            }
            if let Some(id) = self.nexthop(n.ifindex, n.addr, &egress, &mut fib) {
                fib.insert_route(prefix, Route { action: RouteAction::Forward as u32, target: id });
            }
        }

        // The router's own addresses, and local and broadcast routes of the local table.
        let local = Route { action: RouteAction::Local as u32, target: 0 };
        for r in rib.routes.iter().filter(|r| r.table == TABLE_LOCAL && r.kind == RouteKind::Local)
        {
            fib.insert_route(r.prefix, local);
        }
        for a in &rib.addresses {
            fib.insert_route(IpNet::from(a.addr.addr()), local);
        }

        self.nexthop_ids.finish();
        self.group_ids.finish();
        self.slots.finish();
        fib
    }

    #[expect(clippy::too_many_lines, reason = "one pass over what changed, in order")]
    /// Brings `fib` (what the maps hold) up to date with the RIB's changes since the last call,
    /// and returns the map writes that do the same to the maps. Only what the changed prefixes
    /// and neighbours affect is recomputed; links and addresses changing, or a first call,
    /// recompile everything.
    pub fn update(
        &mut self,
        rib: &mut Rib,
        attached: &BTreeMap<u32, XdpAttachMode>,
        fib: &mut FibState,
    ) -> Vec<Op> {
        let dirty = rib.take_dirty();
        if dirty.all || (fib.ifaces.is_empty() && !attached.is_empty()) {
            let new = self.compile(rib, attached);
            let ops = diff(fib, &new);
            *fib = new;
            self.rebuild_refs(fib);
            self.created_nh.clear();
            self.created_groups.clear();
            return ops;
        }
        if dirty.is_empty() {
            return Vec::new();
        }
        self.overflow = 0;
        self.nexthop_ids.rotate();
        self.group_ids.rotate();
        self.created_nh.clear();
        self.created_groups.clear();
        let egress = Egress { rib, attached };
        let mut pre = BTreeSet::new();
        let mut route_ops = Vec::new();
        let mut cleared_nh = Vec::new();
        let mut cleared_groups = Vec::new();

        // Neighbours: the next hop towards each, and its host route.
        let mut prefixes: BTreeSet<IpNet> = dirty.prefixes;
        for (ifindex, addr) in dirty.neighbours {
            if let Some(id) = self.nexthop_ids.peek(&(ifindex, addr)) {
                let nh = self.make_nexthop(ifindex, addr, &egress);
                if fib.nexthops.get(&id).is_some_and(|old| *old != nh) {
                    fib.nexthops.insert(id, nh);
                    pre.insert(id);
                }
            }
            prefixes.insert(IpNet::from(addr));
        }

        // Prefixes, shortest first, so that host routes are judged against their covering
        // route's new state; a change to a shorter prefix re-judges the host routes under it.
        let mut neighbours: Vec<IpAddr> =
            rib.neighbours.values().filter(|n| n.usable()).map(|n| n.addr).collect();
        neighbours.sort_unstable();
        let mut queue: Vec<IpNet> = prefixes.into_iter().collect();
        queue.sort_by_key(|p| (p.prefix_len(), *p));
        // The prefixes queued, made when a host route is first queued (the queue's own prefixes
        // are distinct): most batches have none, and a table's load queues a million prefixes.
        let mut seen: Option<BTreeSet<IpNet>> = None;
        let mut i = 0;
        while i < queue.len() {
            let p = queue[i];
            i += 1;
            let new = self.desired(rib, &egress, fib, p);
            // Written at once (one search of the map instead of a read and a write): setting
            // the route it holds, or removing one it does not, changes nothing.
            let old = fib.replace_route(p, new);
            if new == old {
                continue;
            }
            if let Some(r) = new {
                self.add_ref(r, fib);
                route_ops.push(match p {
                    IpNet::V4(n) => Op::SetRouteV4(n, r),
                    IpNet::V6(n) => Op::SetRouteV6(n, r),
                });
            } else {
                route_ops.push(match p {
                    IpNet::V4(n) => Op::DelRouteV4(n),
                    IpNet::V6(n) => Op::DelRouteV6(n),
                });
            }
            if let Some(r) = old {
                self.drop_ref(r, fib, &mut cleared_nh, &mut cleared_groups);
            }
            if p.prefix_len() < p.max_prefix_len() {
                let from = neighbours.partition_point(|a| *a < p.network());
                for a in neighbours[from..].iter().take_while(|a| p.contains(*a)) {
                    let host = IpNet::from(*a);
                    let seen = seen.get_or_insert_with(|| queue.iter().copied().collect());
                    if seen.insert(host) {
                        queue.push(host);
                    }
                }
            }
        }
        // Next hops or groups made on the way but not used in the end.
        for id in std::mem::take(&mut self.created_groups) {
            if self.group_refs.get(&id).copied().unwrap_or(0) == 0 && fib.groups.contains_key(&id) {
                self.clear_group(id, fib, &mut cleared_nh, &mut cleared_groups);
            } else {
                self.created_groups.push(id);
            }
        }
        for id in std::mem::take(&mut self.created_nh) {
            if self.nh_refs.get(&id).copied().unwrap_or(0) == 0 && fib.nexthops.contains_key(&id) {
                fib.nexthops.remove(&id);
                self.nexthop_ids.release(id);
                cleared_nh.push(id);
            } else {
                pre.insert(id);
            }
        }

        let mut ops = Vec::new();
        ops.extend(
            pre.iter()
                .filter_map(|id| fib.nexthops.get(id).map(|nh| Op::SetNextHop(*id, Box::new(*nh)))),
        );
        ops.extend(
            self.created_groups
                .iter()
                .filter_map(|id| fib.groups.get(id).map(|g| Op::SetGroup(*id, Box::new(*g)))),
        );
        ops.extend(route_ops);
        ops.extend(
            cleared_groups.into_iter().filter(|g| !fib.groups.contains_key(g)).map(Op::ClearGroup),
        );
        ops.extend(
            cleared_nh.into_iter().filter(|n| !fib.nexthops.contains_key(n)).map(Op::ClearNextHop),
        );
        ops
    }

    /// The route the dataplane should hold for exactly `p`, as the full compilation decides it:
    /// the router's own addresses first, then the table's best route, then a host route to a
    /// usable neighbour on the connected subnet that covers it.
    fn desired(
        &mut self,
        rib: &Rib,
        egress: &Egress<'_>,
        fib: &mut FibState,
        p: IpNet,
    ) -> Option<Route> {
        let local = Route { action: RouteAction::Local as u32, target: 0 };
        let host = p.prefix_len() == p.max_prefix_len();
        if host && rib.addresses.iter().any(|a| a.addr.addr() == p.addr()) {
            return Some(local);
        }
        if rib.routes.of_prefix(TABLE_LOCAL, p).any(|r| r.kind == RouteKind::Local) {
            return Some(local);
        }
        if let Some(r) = rib.best_route(self.table, p) {
            return Some(self.compile_route(&r, egress, fib));
        }
        if !host {
            return None;
        }
        let (_, covering) = fib.lookup_shorter(p.addr(), p.prefix_len())?;
        if covering.action != RouteAction::Connected as u32 {
            return None;
        }
        let ifindex = covering.target;
        rib.neighbour(ifindex, p.addr()).filter(|n| n.usable())?;
        let id = self.nexthop(ifindex, p.addr(), egress, fib)?;
        Some(Route { action: RouteAction::Forward as u32, target: id })
    }

    fn add_ref(&mut self, r: Route, fib: &FibState) {
        match RouteAction::from_u32(r.action) {
            Some(RouteAction::Forward) => *self.nh_refs.entry(r.target).or_default() += 1,
            Some(RouteAction::Ecmp) => {
                let refs = self.group_refs.entry(r.target).or_default();
                *refs += 1;
                if *refs == 1 {
                    for m in distinct_members(fib.groups.get(&r.target)) {
                        *self.nh_refs.entry(m).or_default() += 1;
                    }
                }
            }
            _ => {}
        }
    }

    fn drop_ref(
        &mut self,
        r: Route,
        fib: &mut FibState,
        cleared_nh: &mut Vec<u32>,
        cleared_groups: &mut Vec<u32>,
    ) {
        match RouteAction::from_u32(r.action) {
            Some(RouteAction::Forward) => self.unref_nexthop(r.target, fib, cleared_nh),
            Some(RouteAction::Ecmp) => {
                let refs = self.group_refs.entry(r.target).or_default();
                *refs = refs.saturating_sub(1);
                if *refs == 0 {
                    self.clear_group(r.target, fib, cleared_nh, cleared_groups);
                }
            }
            _ => {}
        }
    }

    fn clear_group(
        &mut self,
        id: u32,
        fib: &mut FibState,
        cleared_nh: &mut Vec<u32>,
        cleared_groups: &mut Vec<u32>,
    ) {
        self.group_refs.remove(&id);
        let members = distinct_members(fib.groups.remove(&id).as_ref());
        self.group_ids.release(id);
        cleared_groups.push(id);
        for m in members {
            self.unref_nexthop(m, fib, cleared_nh);
        }
    }

    fn unref_nexthop(&mut self, id: u32, fib: &mut FibState, cleared_nh: &mut Vec<u32>) {
        let refs = self.nh_refs.entry(id).or_default();
        *refs = refs.saturating_sub(1);
        if *refs == 0 {
            self.nh_refs.remove(&id);
            fib.nexthops.remove(&id);
            self.nexthop_ids.release(id);
            cleared_nh.push(id);
        }
    }

    /// Counts the references in a complete state (after a full compilation).
    fn rebuild_refs(&mut self, fib: &FibState) {
        self.nh_refs.clear();
        self.group_refs.clear();
        for r in fib.routes_v4.values().chain(fib.routes_v6.values()) {
            match RouteAction::from_u32(r.action) {
                Some(RouteAction::Forward) => *self.nh_refs.entry(r.target).or_default() += 1,
                Some(RouteAction::Ecmp) => *self.group_refs.entry(r.target).or_default() += 1,
                _ => {}
            }
        }
        for g in fib.groups.values() {
            for m in distinct_members(Some(g)) {
                *self.nh_refs.entry(m).or_default() += 1;
            }
        }
    }

    fn compile_ifaces(
        &mut self,
        rib: &Rib,
        attached: &BTreeMap<u32, XdpAttachMode>,
        fib: &mut FibState,
    ) {
        for link in rib.links.values() {
            let (key, mode) = match link.vlan {
                None => match attached.get(&link.index) {
                    Some(mode) => (IfaceKey { ifindex: link.index, vlan_id: 0, _pad: 0 }, *mode),
                    None => continue,
                },
                Some((parent, vid)) if attached.contains_key(&parent) => {
                    (IfaceKey { ifindex: parent, vlan_id: vid, _pad: 0 }, XdpAttachMode::None)
                }
                Some(_) => continue,
            };
            let Some(mac) = link.mac else { continue };
            let Some(slot) = self.slots.get(&link.index) else {
                self.overflow += 1;
                continue;
            };
            if link.vlan.is_none() {
                fib.devmap.insert(link.index);
            }
            let mut name = [0u8; 16];
            let n = link.name.len().min(15);
            name[..n].copy_from_slice(&link.name.as_bytes()[..n]);
            fib.ifaces.insert(
                key,
                Iface {
                    slot,
                    flags: if link.up { IF_F_UP } else { 0 },
                    mtu: link.mtu,
                    xdp_mode: mode as u32,
                    logical_ifindex: link.index,
                    mac,
                    _pad: [0; 2],
                    name,
                },
            );
        }
    }

    fn compile_route(
        &mut self,
        r: &crate::rib::RouteRef<'_>,
        egress: &Egress<'_>,
        fib: &mut FibState,
    ) -> Route {
        let action = |a: RouteAction, target: u32| Route { action: a as u32, target };
        match r.kind {
            RouteKind::Local => return action(RouteAction::Local, 0),
            RouteKind::Blackhole => return action(RouteAction::Blackhole, 0),
            RouteKind::Unreachable => return action(RouteAction::Unreachable, 0),
            RouteKind::Other => return action(RouteAction::Pass, 0),
            RouteKind::Unicast => {}
        }
        let gateways: Vec<_> =
            r.nexthops.iter().filter_map(|nh| nh.gateway.map(|g| (nh, g))).collect();
        if gateways.is_empty() {
            // A device route: a connected subnet (hosts get their own routes) or on-link.
            return match r.nexthops.first() {
                Some(nh) if egress.served(nh.ifindex) => action(RouteAction::Connected, nh.ifindex),
                _ => action(RouteAction::Pass, 0),
            };
        }
        if gateways.len() == 1 {
            let (nh, gw) = gateways[0];
            return match self.nexthop(nh.ifindex, gw, egress, fib) {
                Some(id) => action(RouteAction::Forward, id),
                None => action(RouteAction::Pass, 0),
            };
        }
        // Multipath: members whose link is down are left out, as the kernel does; each member
        // appears in proportion to its weight, within the group's capacity.
        let live: Vec<_> =
            gateways.iter().filter(|(nh, _)| egress.up(nh.ifindex)).copied().collect();
        let members = if live.is_empty() { &gateways[..1] } else { &live[..] };
        let mut ids = Vec::new();
        for (nh, gw) in members {
            if let Some(id) = self.nexthop(nh.ifindex, *gw, egress, fib) {
                ids.push((id, nh.weight.max(1)));
            }
        }
        let expanded = expand_weights(&ids, MAX_ECMP_MEMBERS);
        if expanded.len() < ids.len() {
            self.overflow += ids.len() - expanded.len();
        }
        match expanded.len() {
            0 => action(RouteAction::Pass, 0),
            1 => action(RouteAction::Forward, expanded[0]),
            _ => {
                if let Some(gid) = self.group_ids.get(&expanded) {
                    let mut g = EcmpGroup { count: expanded.len() as u32, ..EcmpGroup::default() };
                    g.members[..expanded.len()].copy_from_slice(&expanded);
                    if fib.groups.insert(gid, g).is_none() {
                        self.created_groups.push(gid);
                    }
                    action(RouteAction::Ecmp, gid)
                } else {
                    self.overflow += 1;
                    action(RouteAction::Forward, expanded[0])
                }
            }
        }
    }

    /// The id of the next hop towards neighbour `addr` on `ifindex`, writing it into `fib`.
    fn nexthop(
        &mut self,
        ifindex: u32,
        addr: IpAddr,
        egress: &Egress<'_>,
        fib: &mut FibState,
    ) -> Option<u32> {
        let Some(id) = self.nexthop_ids.get(&(ifindex, addr)) else {
            self.overflow += 1;
            return None;
        };
        if fib.nexthops.contains_key(&id) {
            return Some(id);
        }
        let nh = self.make_nexthop(ifindex, addr, egress);
        fib.nexthops.insert(id, nh);
        self.created_nh.push(id);
        Some(id)
    }

    /// The next hop towards neighbour `addr` on `ifindex`, as the RIB describes it now.
    fn make_nexthop(&self, ifindex: u32, addr: IpAddr, egress: &Egress<'_>) -> NextHop {
        let mut nh = NextHop { logical_ifindex: ifindex, ..NextHop::default() };
        match addr {
            IpAddr::V4(a) => {
                nh.family = FAMILY_V4;
                nh.gateway[..4].copy_from_slice(&a.octets());
            }
            IpAddr::V6(a) => {
                nh.family = FAMILY_V6;
                nh.gateway = a.octets();
            }
        }
        if let Some(link) = egress.rib.links.get(&ifindex) {
            nh.mtu = link.mtu;
            nh.smac = link.mac.unwrap_or_default();
        }
        if let Some((device, vlan)) = egress.device(ifindex) {
            nh.ifindex = device;
            nh.egress_slot = self.slots.by_key.get(&ifindex).copied().unwrap_or(0);
            if let Some(vid) = vlan {
                nh.flags |= NH_F_VLAN;
                nh.vlan_tci = vid;
            }
        }
        if let Some(n) = egress.rib.neighbour(ifindex, addr).filter(|n| n.usable()) {
            nh.flags |= NH_F_RESOLVED;
            nh.dmac = n.mac.unwrap_or_default();
        }
        nh
    }
}

/// The distinct next hops of a group.
fn distinct_members(g: Option<&EcmpGroup>) -> BTreeSet<u32> {
    g.map(|g| g.members[..(g.count as usize).min(MAX_ECMP_MEMBERS)].iter().copied().collect())
        .unwrap_or_default()
}

/// Repeats each member in proportion to its weight, within `slots` slots; every member keeps at
/// least one slot while there is room.
pub(crate) fn expand_weights<T: Copy>(members: &[(T, u16)], slots: usize) -> Vec<T> {
    let members = &members[..members.len().min(slots)];
    let total: usize = members.iter().map(|(_, w)| usize::from(*w)).sum();
    if total <= slots {
        return members
            .iter()
            .flat_map(|(id, w)| std::iter::repeat_n(*id, usize::from(*w)))
            .collect();
    }
    members
        .iter()
        .flat_map(|(id, w)| {
            let n = (usize::from(*w) * slots / total).max(1);
            std::iter::repeat_n(*id, n)
        })
        .take(slots)
        .collect()
}

/// Where a logical interface sends frames: a device in the devmap, and a VLAN id to tag with.
struct Egress<'a> {
    rib: &'a Rib,
    attached: &'a BTreeMap<u32, XdpAttachMode>,
}

impl Egress<'_> {
    fn up(&self, ifindex: u32) -> bool {
        let Some(link) = self.rib.links.get(&ifindex) else { return false };
        link.up
            && link.vlan.is_none_or(|(parent, _)| self.rib.links.get(&parent).is_some_and(|p| p.up))
    }

    /// Whether XDP serves this logical interface (attached, or a VLAN of an attached device).
    fn served(&self, ifindex: u32) -> bool {
        self.rib.links.get(&ifindex).is_some_and(|l| match l.vlan {
            None => self.attached.contains_key(&ifindex),
            Some((parent, _)) => self.attached.contains_key(&parent),
        })
    }

    /// The devmap device and VLAN id for a logical interface that is served and up.
    fn device(&self, ifindex: u32) -> Option<(u32, Option<u16>)> {
        if !self.served(ifindex) || !self.up(ifindex) {
            return None;
        }
        let link = self.rib.links.get(&ifindex)?;
        link.mac?;
        Some(match link.vlan {
            None => (ifindex, None),
            Some((parent, vid)) => (parent, Some(vid)),
        })
    }
}

/// The neighbour address a next hop was compiled for.
pub fn neighbour_of(nh: &NextHop) -> Option<IpAddr> {
    match nh.family {
        FAMILY_V4 => {
            Some(IpAddr::from([nh.gateway[0], nh.gateway[1], nh.gateway[2], nh.gateway[3]]))
        }
        FAMILY_V6 => Some(IpAddr::from(nh.gateway)),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
