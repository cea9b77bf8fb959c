//! The FIB compiler's tests: RIB states in, map contents and differences out.

use super::*;
use crate::rib::{Address, Link, Neighbour, RouteNextHop, TABLE_MAIN, nud};

const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 0xa];
const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 0xb];
const GW1_MAC: [u8; 6] = [2, 0, 0, 0, 1, 1];
const GW2_MAC: [u8; 6] = [2, 0, 0, 0, 2, 2];

fn link(index: u32, name: &str, mac: [u8; 6]) -> Link {
    Link { index, name: name.into(), mac: Some(mac), mtu: 1500, up: true, ..Link::default() }
}

fn unicast(prefix: &str, hops: &[(u32, Option<&str>, u16)]) -> crate::rib::Route {
    crate::rib::Route {
        prefix: prefix.parse().unwrap(),
        table: TABLE_MAIN,
        metric: 0,
        kind: RouteKind::Unicast,
        nexthops: hops
            .iter()
            .map(|(i, g, w)| RouteNextHop {
                ifindex: *i,
                gateway: g.map(|g| g.parse().unwrap()),
                weight: *w,
            })
            .collect(),
        protocol: 4,
    }
}

fn neigh(ifindex: u32, addr: &str, mac: [u8; 6], state: u16) -> Neighbour {
    Neighbour { ifindex, addr: addr.parse().unwrap(), mac: Some(mac), state, managed: false }
}

/// Two attached interfaces: 2 (10.0.1.0/24) and 3 (10.0.2.0/24), gateways on both.
fn lab() -> (Rib, BTreeMap<u32, XdpAttachMode>) {
    let mut rib = Rib::default();
    rib.upsert_link(link(1, "lo", [0; 6]));
    rib.upsert_link(link(2, "eth0", MAC_A));
    rib.upsert_link(link(3, "eth1", MAC_B));
    rib.upsert_route(unicast("10.0.1.0/24", &[(2, None, 1)]));
    rib.upsert_route(unicast("10.0.2.0/24", &[(3, None, 1)]));
    rib.upsert_route(unicast("0.0.0.0/0", &[(2, Some("10.0.1.1"), 1)]));
    rib.upsert_neighbour(neigh(2, "10.0.1.1", GW1_MAC, nud::REACHABLE));
    rib.upsert_neighbour(neigh(3, "10.0.2.1", GW2_MAC, nud::STALE));
    rib.addresses.insert(Address { ifindex: 2, addr: "10.0.1.254/24".parse().unwrap() });
    let attached = BTreeMap::from([(2, XdpAttachMode::Native), (3, XdpAttachMode::Generic)]);
    (rib, attached)
}

fn route_of(fib: &FibState, addr: &str) -> Route {
    fib.lookup(addr.parse().unwrap()).expect("a route").1
}

#[test]
fn compiles_interfaces_devices_and_connected_routes() {
    let (rib, attached) = lab();
    let fib = Compiler::new(TABLE_MAIN).compile(&rib, &attached);
    assert_eq!(fib.devmap, BTreeSet::from([2, 3]));
    let eth1 = fib.ifaces[&IfaceKey { ifindex: 3, vlan_id: 0, _pad: 0 }];
    assert_eq!(eth1.mac, MAC_B);
    assert_eq!(eth1.xdp_mode, XdpAttachMode::Generic as u32);
    assert_eq!(&eth1.name[..5], b"eth1\0");
    assert_eq!(fib.ifaces.len(), 2, "lo is not attached");
    // A host without a neighbour entry matches the connected route.
    let r = route_of(&fib, "10.0.2.77");
    assert_eq!((r.action, r.target), (RouteAction::Connected as u32, 3));
    // A resolved neighbour on the subnet has its own host route to a resolved next hop.
    let r = route_of(&fib, "10.0.2.1");
    assert_eq!(r.action, RouteAction::Forward as u32);
    let nh = fib.nexthops[&r.target];
    assert_eq!((nh.ifindex, nh.dmac, nh.smac, nh.mtu), (3, GW2_MAC, MAC_B, 1500));
    assert!(nh.is_resolved());
    assert_eq!(nh.egress_slot, eth1.slot);
    // Own address.
    assert_eq!(route_of(&fib, "10.0.1.254").action, RouteAction::Local as u32);
}

#[test]
fn gateway_routes_follow_neighbour_state() {
    let (mut rib, attached) = lab();
    let mut c = Compiler::new(TABLE_MAIN);
    let fib = c.compile(&rib, &attached);
    let r = route_of(&fib, "198.51.100.1");
    assert_eq!(r.action, RouteAction::Forward as u32);
    assert_eq!(fib.nexthops[&r.target].dmac, GW1_MAC);
    rib.upsert_neighbour(neigh(2, "10.0.1.1", GW1_MAC, nud::FAILED));
    let fib2 = c.compile(&rib, &attached);
    let nh = fib2.nexthops[&route_of(&fib2, "198.51.100.1").target];
    assert!(!nh.is_resolved(), "a failed neighbour does not resolve");
    assert_eq!(route_of(&fib2, "198.51.100.1").target, r.target, "ids are stable");
    let ops = diff(&fib, &fib2);
    assert!(ops.iter().all(|op| matches!(op, Op::SetNextHop(..) | Op::DelRouteV4(_))), "{ops:?}");
}

#[test]
fn recompiling_the_same_rib_writes_nothing_and_adoption_keeps_ids() {
    let (rib, attached) = lab();
    let mut c = Compiler::new(TABLE_MAIN);
    let fib = c.compile(&rib, &attached);
    assert!(diff(&fib, &c.compile(&rib, &attached)).is_empty());
    // From nothing, the slots' counters are zeroed before the interfaces appear.
    let from_scratch = diff(&FibState::default(), &fib);
    assert!(matches!(from_scratch[..2], [Op::ResetCounters(_), Op::ResetCounters(_)]));
    // A new daemon adopting the maps compiles the same state.
    let mut fresh = Compiler::new(TABLE_MAIN);
    fresh.adopt(&fib);
    assert!(diff(&fib, &fresh.compile(&rib, &attached)).is_empty());
}

#[test]
fn multipath_becomes_an_ecmp_group_with_weights_and_skips_dead_links() {
    let (mut rib, attached) = lab();
    rib.upsert_route(unicast(
        "203.0.113.0/24",
        &[(2, Some("10.0.1.1"), 1), (3, Some("10.0.2.1"), 2)],
    ));
    let mut c = Compiler::new(TABLE_MAIN);
    let fib = c.compile(&rib, &attached);
    let r = route_of(&fib, "203.0.113.9");
    assert_eq!(r.action, RouteAction::Ecmp as u32);
    let g = fib.groups[&r.target];
    assert_eq!(g.count, 3);
    let via = |m: u32| fib.nexthops[&m].ifindex;
    let mut devs: Vec<_> = g.members[..3].iter().map(|m| via(*m)).collect();
    devs.sort_unstable();
    assert_eq!(devs, vec![2, 3, 3]);
    // eth1 goes down: the route uses the remaining member only.
    rib.links.get_mut(&3).unwrap().up = false;
    let fib2 = c.compile(&rib, &attached);
    let r2 = route_of(&fib2, "203.0.113.9");
    assert_eq!(r2.action, RouteAction::Forward as u32);
    assert_eq!(fib2.nexthops[&r2.target].ifindex, 2);
    // And the group is released without being reused in the same generation.
    assert!(fib2.groups.is_empty());
    assert!(diff(&fib, &fib2).contains(&Op::ClearGroup(r.target)));
}

#[test]
fn lowest_metric_wins_and_other_types_map_to_actions() {
    let (mut rib, attached) = lab();
    let mut worse = unicast("192.0.2.0/24", &[(3, Some("10.0.2.1"), 1)]);
    worse.metric = 200;
    rib.upsert_route(worse);
    let mut better = unicast("192.0.2.0/24", &[(2, Some("10.0.1.1"), 1)]);
    better.metric = 100;
    rib.upsert_route(better);
    for (prefix, kind) in [
        ("192.0.3.0/24", RouteKind::Blackhole),
        ("192.0.4.0/24", RouteKind::Unreachable),
        ("192.0.5.0/24", RouteKind::Other),
    ] {
        let mut r = unicast(prefix, &[]);
        r.kind = kind;
        rib.upsert_route(r);
    }
    let mut other_table = unicast("192.0.6.0/24", &[(2, Some("10.0.1.1"), 1)]);
    other_table.table = 100;
    rib.upsert_route(other_table);
    let fib = Compiler::new(TABLE_MAIN).compile(&rib, &attached);
    let r = route_of(&fib, "192.0.2.1");
    assert_eq!(fib.nexthops[&r.target].ifindex, 2);
    assert_eq!(route_of(&fib, "192.0.3.1").action, RouteAction::Blackhole as u32);
    assert_eq!(route_of(&fib, "192.0.4.1").action, RouteAction::Unreachable as u32);
    assert_eq!(route_of(&fib, "192.0.5.1").action, RouteAction::Pass as u32);
    // 192.0.6.0/24 is only in table 100: the default route matches.
    assert_eq!(route_of(&fib, "192.0.6.1").target, r.target);
    let mut c100 = Compiler::new(100);
    let fib100 = c100.compile(&rib, &attached);
    assert_eq!(fib100.routes_v4.len(), 2, "the route of table 100 and the local address");
}

#[test]
fn vlan_subinterfaces_are_served_through_their_parent() {
    let (mut rib, attached) = lab();
    let mut vlan = link(10, "eth1.42", [2, 0, 0, 0, 0, 0x42]);
    vlan.vlan = Some((3, 42));
    rib.upsert_link(vlan);
    rib.upsert_route(unicast("10.42.0.0/24", &[(10, None, 1)]));
    rib.upsert_neighbour(neigh(10, "10.42.0.5", GW1_MAC, nud::REACHABLE));
    let fib = Compiler::new(TABLE_MAIN).compile(&rib, &attached);
    let key = IfaceKey { ifindex: 3, vlan_id: 42, _pad: 0 };
    assert_eq!(fib.ifaces[&key].logical_ifindex, 10);
    assert!(!fib.devmap.contains(&10), "VLAN devices are not in the devmap");
    let nh = fib.nexthops[&route_of(&fib, "10.42.0.5").target];
    assert_eq!((nh.ifindex, nh.vlan_tci, nh.flags & NH_F_VLAN), (3, 42, NH_F_VLAN));
    assert_eq!(nh.smac, [2, 0, 0, 0, 0, 0x42]);
}

#[test]
fn routes_out_of_unserved_or_down_interfaces_go_to_the_kernel() {
    let (mut rib, attached) = lab();
    rib.upsert_link(link(4, "tun0", [0; 6]));
    rib.upsert_route(unicast("172.16.0.0/12", &[(4, None, 1)]));
    rib.upsert_route(unicast("172.32.0.0/16", &[(4, Some("10.9.9.9"), 1)]));
    rib.links.get_mut(&2).unwrap().up = false;
    let fib = Compiler::new(TABLE_MAIN).compile(&rib, &attached);
    assert_eq!(route_of(&fib, "172.16.0.1").action, RouteAction::Pass as u32);
    assert_eq!(fib.nexthops[&route_of(&fib, "172.32.0.1").target].ifindex, 0);
    // eth0 is down: its next hops have no egress device, so the dataplane passes.
    assert_eq!(fib.nexthops[&route_of(&fib, "198.51.100.1").target].ifindex, 0);
}

#[test]
fn ipv6_routes_and_neighbours() {
    let (mut rib, attached) = lab();
    rib.upsert_route(unicast("2001:db8:1::/64", &[(2, None, 1)]));
    rib.upsert_route(unicast("::/0", &[(3, Some("fe80::1"), 1)]));
    rib.upsert_neighbour(neigh(3, "fe80::1", GW2_MAC, nud::REACHABLE));
    rib.upsert_neighbour(neigh(2, "2001:db8:1::5", GW1_MAC, nud::DELAY));
    let fib = Compiler::new(TABLE_MAIN).compile(&rib, &attached);
    let nh = fib.nexthops[&route_of(&fib, "2001:db8:ffff::1").target];
    assert_eq!((nh.family, nh.dmac), (FAMILY_V6, GW2_MAC));
    assert_eq!(route_of(&fib, "2001:db8:1::5").action, RouteAction::Forward as u32);
    assert_eq!(route_of(&fib, "2001:db8:1::6").action, RouteAction::Connected as u32);
}

#[test]
fn weights_expand_within_capacity() {
    assert_eq!(expand_weights(&[(1, 1), (2, 3)], MAX_ECMP_MEMBERS), vec![1, 2, 2, 2]);
    let big = expand_weights(&[(1, 100), (2, 100), (3, 1)], MAX_ECMP_MEMBERS);
    assert!(big.len() <= MAX_ECMP_MEMBERS);
    assert!(big.contains(&3), "every member keeps a slot");
}

/// Replays map writes on a state, as the dataplane would apply them.
fn replay(state: &mut FibState, ops: &[Op]) {
    for op in ops {
        match *op {
            Op::ResetCounters(_) => {}
            Op::AddDevice(d) => {
                state.devmap.insert(d);
            }
            Op::DelDevice(d) => {
                state.devmap.remove(&d);
            }
            Op::SetIface(k, ref v) => {
                state.ifaces.insert(k, **v);
            }
            Op::DelIface(k) => {
                state.ifaces.remove(&k);
            }
            Op::SetNextHop(id, ref nh) => {
                state.nexthops.insert(id, **nh);
            }
            Op::ClearNextHop(id) => {
                state.nexthops.remove(&id);
            }
            Op::SetGroup(id, ref g) => {
                state.groups.insert(id, **g);
            }
            Op::ClearGroup(id) => {
                state.groups.remove(&id);
            }
            Op::SetRouteV4(n, r) => {
                state.routes_v4.insert(n, r);
            }
            Op::DelRouteV4(n) => {
                state.routes_v4.remove(&n);
            }
            Op::SetRouteV6(n, r) => {
                state.routes_v6.insert(n, r);
            }
            Op::DelRouteV6(n) => {
                state.routes_v6.remove(&n);
            }
        }
    }
}

/// A state with ids replaced by what they stand for, so that two compilations that chose
/// different ids compare equal when they mean the same.
fn meaning(fib: &FibState) -> BTreeMap<IpNet, (u32, u32, Vec<NextHop>)> {
    let routes = fib
        .routes_v4
        .iter()
        .map(|(p, r)| (IpNet::V4(*p), *r))
        .chain(fib.routes_v6.iter().map(|(p, r)| (IpNet::V6(*p), *r)));
    routes
        .map(|(p, r)| {
            let ids: Vec<u32> = match RouteAction::from_u32(r.action) {
                Some(RouteAction::Forward) => vec![r.target],
                Some(RouteAction::Ecmp) => {
                    let g = fib.groups.get(&r.target).expect("route to a missing group");
                    g.members[..g.count as usize].to_vec()
                }
                _ => Vec::new(),
            };
            let nhs = ids
                .iter()
                .map(|id| *fib.nexthops.get(id).expect("route to a missing next hop"))
                .collect();
            let target = if ids.is_empty() { r.target } else { 0 };
            (p, (r.action, target, nhs))
        })
        .collect()
}

/// Every next hop and group is referenced, and every reference resolves.
fn assert_no_orphans(fib: &FibState) {
    let mut nh_used = BTreeSet::new();
    let mut groups_used = BTreeSet::new();
    for r in fib.routes_v4.values().chain(fib.routes_v6.values()) {
        match RouteAction::from_u32(r.action) {
            Some(RouteAction::Forward) => {
                nh_used.insert(r.target);
            }
            Some(RouteAction::Ecmp) => {
                groups_used.insert(r.target);
            }
            _ => {}
        }
    }
    for g in &groups_used {
        nh_used.extend(distinct_members(fib.groups.get(g)));
    }
    assert_eq!(fib.groups.keys().copied().collect::<BTreeSet<_>>(), groups_used, "groups");
    assert_eq!(fib.nexthops.keys().copied().collect::<BTreeSet<_>>(), nh_used, "next hops");
}

#[test]
fn incremental_updates_mean_what_a_full_compilation_means() {
    let (mut rib, attached) = lab();
    let mut c = Compiler::new(TABLE_MAIN);
    let mut fib = FibState::default();
    let mut maps = FibState::default();
    replay(&mut maps, &c.update(&mut rib, &attached, &mut fib));
    let mut seed = 0x1234_5678_9abc_def1_u64;
    let mut next = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let gateways = [(2, "10.0.1.1"), (2, "10.0.1.2"), (3, "10.0.2.1"), (3, "10.0.2.9")];
    let lladdrs = [GW1_MAC, GW2_MAC, [2, 0, 0, 0, 3, 3]];
    let nud_states = [nud::REACHABLE, nud::STALE, nud::FAILED, nud::INCOMPLETE];
    for step in 0..3000 {
        match next(10) {
            0..=3 => {
                // A route in a small space of nested prefixes.
                let len = [8, 16, 24, 24, 32][next(5) as usize];
                let addr = std::net::Ipv4Addr::from(
                    0x0a00_0000 | (next(4) as u32) << 16 | (next(3) as u32) << 8 | next(4) as u32,
                );
                let prefix = Ipv4Net::new(addr, len).unwrap().trunc().to_string();
                let (i1, g1) = gateways[next(4) as usize];
                let (i2, g2) = gateways[next(4) as usize];
                let mut r = match next(4) {
                    0 => unicast(&prefix, &[(i1, None, 1)]),
                    1 => unicast(&prefix, &[(i1, Some(g1), 1), (i2, Some(g2), 2)]),
                    _ => unicast(&prefix, &[(i1, Some(g1), 1)]),
                };
                r.metric = [0, 100][next(2) as usize];
                if next(3) == 0 {
                    rib.remove_route(&r.key());
                } else {
                    rib.upsert_route(r);
                }
            }
            4..=7 => {
                // A neighbour appears, changes or goes, on a gateway or on a connected host.
                let (ifindex, addr) = if next(2) == 0 {
                    let (i, g) = gateways[next(4) as usize];
                    (i, g.to_owned())
                } else {
                    (2 + next(2) as u32, format!("10.0.{}.{}", 1 + next(2), 10 + next(4)))
                };
                if next(4) == 0 {
                    rib.remove_neighbour(ifindex, addr.parse().unwrap());
                } else {
                    let state = nud_states[next(4) as usize];
                    rib.upsert_neighbour(neigh(ifindex, &addr, lladdrs[next(3) as usize], state));
                }
            }
            8 => {
                // Links and addresses recompile everything.
                rib.links.get_mut(&3).unwrap().up = next(2) == 0;
                rib.dirty.all = true;
            }
            _ => {
                let local = unicast(&format!("10.0.{}.77/32", 1 + next(2)), &[(2, None, 1)]);
                let mut local =
                    crate::rib::Route { table: TABLE_LOCAL, kind: RouteKind::Local, ..local };
                local.metric = 0;
                if next(2) == 0 {
                    rib.remove_route(&local.key());
                } else {
                    rib.upsert_route(local);
                }
            }
        }
        let ops = c.update(&mut rib, &attached, &mut fib);
        replay(&mut maps, &ops);
        assert_eq!(maps, fib, "step {step}: the writes do not produce the state");
        assert_no_orphans(&fib);
        let full = Compiler::new(TABLE_MAIN).compile(&rib, &attached);
        assert_eq!(meaning(&fib), meaning(&full), "step {step}: incremental differs from full");
    }
}

#[test]
fn a_route_change_writes_only_that_route() {
    let (mut rib, attached) = lab();
    let mut c = Compiler::new(TABLE_MAIN);
    let mut fib = FibState::default();
    c.update(&mut rib, &attached, &mut fib);
    for i in 0..1000u32 {
        let p = format!("172.{}.{}.0/24", 16 + i / 256, i % 256);
        rib.upsert_route(unicast(&p, &[(2, Some("10.0.1.1"), 1)]));
    }
    let ops = c.update(&mut rib, &attached, &mut fib);
    assert_eq!(ops.len(), 1000, "one write per new route, the next hop exists already");
    rib.upsert_route(unicast("172.16.0.0/24", &[(3, Some("10.0.2.1"), 1)]));
    let ops = c.update(&mut rib, &attached, &mut fib);
    assert!(matches!(ops[..], [Op::SetRouteV4(..)]), "{ops:?}");
}
