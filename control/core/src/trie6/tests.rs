use std::collections::BTreeMap;

use sluice_common::RouteAction;

use super::*;
use crate::dir24::tests::Rng;

fn route(target: u32) -> Route {
    Route { action: RouteAction::Forward as u32, target }
}

fn trie() -> Trie6<VecCells> {
    Trie6::new(VecCells::new(ENTRIES as usize))
}

/// A trie that makes no wide nodes: 4-bit nodes from bit 16 on, as for the /16s beyond
/// [`MAX_WIDE`].
fn narrow() -> Trie6<VecCells> {
    Trie6 { max_wide: 0, ..trie() }
}

fn reference(table: &BTreeMap<Ipv6Net, Route>, a: Ipv6Addr) -> Option<Route> {
    table
        .iter()
        .filter(|(n, _)| n.contains(&a))
        .max_by_key(|(n, _)| n.prefix_len())
        .map(|(_, r)| *r)
}

/// /32s with a few (0 to 20) longer prefixes each, under /16s some of which have wide
/// nodes (a budget of two), changed at random: compact nodes of one and two lines, expanded
/// /32s, wide and 4-bit nodes above them, and the trie adopted again half-way (a restart)
/// answer like a reference throughout, and give every node back at the end.
#[test]
fn compact_pairs_and_wide_nodes_match_a_reference_through_random_changes() {
    let mut rng = Rng(0x1357_9bdf_2468_ace0);
    let mut t = Trie6 { max_wide: 2, ..trie() };
    let mut table: BTreeMap<Ipv6Net, Route> = BTreeMap::new();
    let slash32s: Vec<u128> =
        (0..12u128).map(|i| (0x2001_0000 + (i % 4) * 0x0100_0000 + (i / 4) * 7) << 96).collect();
    let lens = [20u8, 29, 32, 36, 40, 44, 46, 48, 48, 48, 52, 56, 64];
    let mut seen = std::collections::BTreeSet::new();
    for step in 0..4000u32 {
        let base = slash32s[rng.below(slash32s.len() as u64) as usize];
        let len = lens[rng.below(lens.len() as u64) as usize];
        let a = base | u128::from(rng.next()) << 64 & (u128::MAX >> 32);
        let net = Ipv6Net::new(Ipv6Addr::from(a), len).unwrap().trunc();
        let near: Vec<Ipv6Net> =
            table.keys().filter(|n| u128::from(n.network()) >> 96 == base >> 96).copied().collect();
        if near.len() > 20 || (rng.below(5) < 2 && !near.is_empty()) {
            let victim = near[rng.below(near.len() as u64) as usize];
            t.remove(victim);
            table.remove(&victim);
        } else {
            t.set(net, route(1 + step % 50)).unwrap();
            table.insert(net, route(1 + step % 50));
        }
        if step == 2000 {
            t = Trie6::adopt_with(t.cells, table.iter().map(|(n, r)| (*n, *r)), 2).unwrap();
        }
        if step % 100 == 0 {
            let (scanned, usage) = (t.scan(), t.usage());
            assert_eq!(
                (scanned.nodes, scanned.compact, scanned.wide),
                (usage.nodes, usage.compact, usage.wide),
                "step {step}"
            );
            for net in table.keys() {
                for a in [net.network(), net.broadcast()] {
                    assert_eq!(t.lookup(a), reference(&table, a), "step {step}: {net} at {a}");
                }
            }
            for _ in 0..200 {
                let b = slash32s[rng.below(slash32s.len() as u64) as usize];
                let a = Ipv6Addr::from(b | u128::from(rng.next()) << 64);
                assert_eq!(t.lookup(a), reference(&table, a), "step {step}: {a}");
            }
            let check = t.check(table.iter().map(|(n, r)| (*n, *r)));
            assert!(check.is_clean(), "step {step}: {check:?}");
            for net in table.keys() {
                let r = t.lookup_reads(net.network());
                seen.insert((r.dependent, r.lines - r.dependent));
            }
        }
    }
    // Lookups through a wide node and a compact node of one line, of two, through 4-bit
    // nodes and a compact node, and through expanded nodes below a wide one.
    for kind in [(3, 0), (3, 1), (6, 0), (4, 0)] {
        assert!(seen.contains(&kind), "no lookup read {kind:?}: {seen:?}");
    }
    for net in table.keys().copied().collect::<Vec<_>>() {
        t.remove(net);
    }
    assert_eq!((t.usage().nodes, t.usage().wide, t.usage().compact), (0, 0, 0));
}

/// Cells two tries share: the writer's and a reader's, as the daemon and the XDP program
/// share the mapped table.
struct Shared(std::sync::Arc<VecCells>);

impl Cells for Shared {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn get(&self, i: usize) -> u32 {
        self.0.get(i)
    }
    fn set(&self, i: usize, value: u32) {
        self.0.set(i, value);
    }
}

/// A reader racing the writer sees an old or a new answer, never none: a /16's wide node
/// made and returned, a /32 going from nothing to a compact node of one line, of two, to
/// expanded nodes and back, the covering /12 changing meanwhile.
#[test]
fn a_reader_racing_the_writer_sees_an_old_or_a_new_answer() {
    let cells = std::sync::Arc::new(VecCells::new(ENTRIES as usize));
    let mut t = Trie6::new(Shared(cells.clone()));
    let covering: Ipv6Net = "2a00::/12".parse().unwrap();
    t.set(covering, route(1)).unwrap();
    let (inside, beside): (Ipv6Addr, Ipv6Addr) =
        ("2a01:db8:5::9".parse().unwrap(), "2a01:db8:ff::9".parse().unwrap());
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let reader = scope.spawn(|| {
            let view = Trie6::new(Shared(cells.clone()));
            let mut lookups = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (a, b) = (view.lookup(inside), view.lookup(beside));
                assert!(matches!(a.map(|r| r.target), Some(1..=3)), "{inside}: {a:?}");
                assert!(matches!(b.map(|r| r.target), Some(1 | 2)), "{beside}: {b:?}");
                lookups += 1;
            }
            lookups
        });
        for round in 0..300u32 {
            let nets: Vec<Ipv6Net> = (0..20u32)
                .map(|i| format!("2a01:db8:{:x}::/48", 0x10 + i).parse().unwrap())
                .collect();
            let mine: Ipv6Net = "2a01:db8:5::/48".parse().unwrap();
            t.set(mine, route(3)).unwrap();
            for (i, net) in nets.iter().enumerate() {
                t.set(*net, route(4)).unwrap();
                if i == 10 {
                    t.set(covering, route(1 + round % 2)).unwrap();
                }
            }
            for net in &nets {
                t.remove(*net);
            }
            t.remove(mine);
            t.set(covering, route(2 - round % 2)).unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let lookups = reader.join().unwrap();
        assert!(lookups > 0);
    });
    assert_eq!(t.usage().nodes, 0, "the wide node came and went");
}

#[test]
fn matches_a_reference_lpm_through_random_adds_replaces_and_deletes() {
    let mut rng = Rng(0x6e6e_1234_5678_9abc);
    let mut t = trie();
    let mut table: BTreeMap<Ipv6Net, Route> = BTreeMap::new();
    let default: Ipv6Net = "::/0".parse().unwrap();
    t.set(default, route(7000)).unwrap();
    table.insert(default, route(7000));
    let bases: Vec<u128> =
        (0..5).map(|_| u128::from(rng.next()) << 96 | 0x2001_0000_0000_0000 << 64).collect();
    let lens = [3u8, 12, 16, 20, 24, 29, 32, 36, 40, 44, 48, 48, 56, 64, 96, 127, 128];
    for step in 0..3000u32 {
        let base = bases[(rng.next() % bases.len() as u64) as usize];
        let a = base ^ (u128::from(rng.next()) << 48) ^ u128::from(rng.next());
        let len = lens[(rng.next() % lens.len() as u64) as usize];
        let net = Ipv6Net::new(Ipv6Addr::from(a), len).unwrap().trunc();
        if rng.next().is_multiple_of(3) && table.len() > 1 {
            let victim =
                *table.keys().nth(1 + (rng.next() % (table.len() as u64 - 1)) as usize).unwrap();
            t.remove(victim);
            table.remove(&victim);
        } else {
            t.set(net, route(1 + step % 1000)).unwrap();
            table.insert(net, route(1 + step % 1000));
        }
        if step % 50 == 0 {
            let (scanned, usage) = (t.scan(), t.usage());
            assert_eq!((scanned.nodes, scanned.compact), (usage.nodes, usage.compact));
            assert_eq!(scanned.bytes, usage.shared_bytes, "step {step}");
            for net in table.keys() {
                for a in [net.network(), net.broadcast()] {
                    assert_eq!(t.lookup(a), reference(&table, a), "step {step}: {net} at {a}");
                }
            }
            for _ in 0..100 {
                let b = bases[(rng.next() % bases.len() as u64) as usize];
                let a = Ipv6Addr::from(b ^ u128::from(rng.next()) << 40);
                assert_eq!(t.lookup(a), reference(&table, a), "step {step}: {a}");
            }
        }
    }
    for net in table.keys().copied().collect::<Vec<_>>() {
        t.remove(net);
    }
    assert_eq!(t.usage().nodes, 0, "every node returns when its prefixes go");
    assert_eq!(t.usage().prefixes, 0);
}

#[test]
fn a_slash_32s_few_longer_prefixes_share_one_compact_node() {
    let mut t = narrow();
    t.set("2001:db8:1::/48".parse().unwrap(), route(1)).unwrap();
    let u = t.usage();
    assert_eq!((u.nodes, u.compact), (5, 1), "four nodes from bit 16 to 32, then one compact");
    t.set("2001:db8:2::/48".parse().unwrap(), route(2)).unwrap();
    let u = t.usage();
    assert_eq!((u.nodes, u.compact), (5, 1), "a sibling /48 joins the /32's compact node");
    t.set("2001:db9:1::/48".parse().unwrap(), route(3)).unwrap();
    let u = t.usage();
    assert_eq!((u.nodes, u.compact), (6, 2), "another /32 shares the nodes above bit 32");
    assert_eq!(t.lookup("2001:db8:2::9".parse().unwrap()), Some(route(2)));
    assert_eq!(t.lookup("2001:db8:3::9".parse().unwrap()), None);
    assert_eq!(t.lookup_reads("2001:db8:2::9".parse().unwrap()).dependent, 6);
}

#[test]
fn a_wide_node_takes_a_slash_16s_bits_16_to_32_in_one_read() {
    let mut t = trie();
    t.set("2001:db8:1::/48".parse().unwrap(), route(1)).unwrap();
    t.set("2001:db9:1::/48".parse().unwrap(), route(3)).unwrap();
    t.set("2001:dba::/32".parse().unwrap(), route(4)).unwrap();
    let u = t.usage();
    assert_eq!((u.nodes, u.compact, u.wide), (WIDE_NODES + 2, 2, 1), "{u:?}");
    let reads = |a: &str| {
        let r = t.lookup_reads(a.parse().unwrap());
        (r.route.map(|r| r.target), r.dependent)
    };
    assert_eq!(reads("2001:db8:1::9"), (Some(1), 3), "the /16, the /32, its compact node");
    assert_eq!(reads("2001:dba:1::9"), (Some(4), 2), "the /32 answers");
    assert_eq!(reads("2001:dbb:1::9"), (None, 2));
    assert_eq!(reads("2002::1"), (None, 1));
    let scanned = t.scan();
    assert_eq!((scanned.nodes, scanned.compact, scanned.wide), (u.nodes, u.compact, u.wide));
    for net in ["2001:db8:1::/48", "2001:db9:1::/48", "2001:dba::/32"] {
        t.remove(net.parse().unwrap());
    }
    assert_eq!((t.usage().nodes, t.usage().wide), (0, 0), "the wide node returns");
}

#[test]
fn slash_16s_beyond_the_wide_budget_get_4_bit_nodes() {
    let mut t = Trie6 { max_wide: 2, ..trie() };
    for (i, top) in ["2001", "2400", "2600"].iter().enumerate() {
        t.set(format!("{top}:db8:1::/48").parse().unwrap(), route(i as u32 + 1)).unwrap();
    }
    let u = t.usage();
    assert_eq!((u.wide, u.nodes), (2, 2 * WIDE_NODES + 2 + 5), "{u:?}");
    for (i, (top, reads)) in [("2001", 3), ("2400", 3), ("2600", 6)].iter().enumerate() {
        let r = t.lookup_reads(format!("{top}:db8:1::1").parse().unwrap());
        assert_eq!((r.route, r.dependent), (Some(route(i as u32 + 1)), *reads), "{top}");
    }
    // Once a wide node returns (after its grace), the next /16 may have it.
    t.remove("2001:db8:1::/48".parse().unwrap());
    std::thread::sleep(GROUP_GRACE);
    t.set("2800:db8:1::/48".parse().unwrap(), route(9)).unwrap();
    assert_eq!(t.lookup_reads("2800:db8:1::1".parse().unwrap()).dependent, 3);
    assert_eq!(t.usage().wide, 2);
    // Adoption gives the wide nodes to the /16s with the most prefixes.
    let routes: Vec<(Ipv6Net, Route)> = ["2001:db8:1::/48", "2400:db8:1::/48", "2400:db8:2::/48"]
        .iter()
        .chain(["2600:db8:1::/48", "2600:db8:2::/48", "2600:db8:3::/48"].iter())
        .map(|n| (n.parse().unwrap(), route(1)))
        .collect();
    let adopted = Trie6::adopt_with(VecCells::new(ENTRIES as usize), routes, 2).unwrap();
    let depth = |a: &str| adopted.lookup_reads(a.parse().unwrap()).dependent;
    assert_eq!((depth("2001:db8:1::1"), depth("2400:db8:1::1"), depth("2600:db8:1::1")), (6, 3, 3));
}

/// A /32 goes from compact to expanded and back as its longer prefixes come and go, and
/// answers like a reference throughout; changes above it reach inside its compact node.
#[test]
fn a_slash_32_turns_compact_expanded_and_compact_again() {
    let mut t = trie();
    let mut table: BTreeMap<Ipv6Net, Route> = BTreeMap::new();
    let probes: Vec<Ipv6Addr> = [
        "2001:db8::",
        "2001:db8:1::5",
        "2001:db8:1:8000::1",
        "2001:db8:7::",
        "2001:db8:ff00::",
        "2001:db8:1:2:3::4",
        "2001:db9::1",
        "2001:db0::1",
    ]
    .iter()
    .map(|a| a.parse().unwrap())
    .collect();
    let check = |t: &Trie6<VecCells>, table: &BTreeMap<Ipv6Net, Route>, what: &str| {
        for &a in &probes {
            assert_eq!(t.lookup(a), reference(table, a), "{what}: {a}");
        }
    };
    let set = |t: &mut Trie6<VecCells>, table: &mut BTreeMap<Ipv6Net, Route>, n: &str, r| {
        let net: Ipv6Net = n.parse().unwrap();
        t.set(net, route(r)).unwrap();
        table.insert(net, route(r));
    };
    set(&mut t, &mut table, "2001:db8::/29", 9);
    for (i, n) in ["2001:db8:1::/48", "2001:db8::/40", "2001:db8:1:8000::/49"].iter().enumerate() {
        set(&mut t, &mut table, n, i as u32 + 1);
    }
    check(&t, &table, "compact");
    assert_eq!(t.usage().compact, 1);
    // A /64 does not fit a compact node: the /32 is expanded.
    set(&mut t, &mut table, "2001:db8:1:2::/64", 5);
    check(&t, &table, "expanded");
    assert_eq!(t.usage().compact, 0);
    // The /29 above changes: the expanded nodes inherit it; then, compact again, the
    // compact node does.
    set(&mut t, &mut table, "2001:db8::/29", 10);
    check(&t, &table, "expanded, new /29");
    t.remove("2001:db8:1:2::/64".parse().unwrap());
    table.remove(&"2001:db8:1:2::/64".parse().unwrap());
    check(&t, &table, "compact again");
    assert_eq!(t.usage().compact, 1);
    set(&mut t, &mut table, "2001:db8::/29", 11);
    check(&t, &table, "compact, new /29");
    // Eight prefixes take a compact node of two lines, read together.
    for i in 0..5 {
        set(&mut t, &mut table, &format!("2001:db8:{:x}::/48", 0x10 + i), 20 + i);
    }
    check(&t, &table, "eight prefixes");
    assert_eq!((t.usage().compact, t.usage().nodes), (1, WIDE_NODES + 2));
    let reads = t.lookup_reads("2001:db8:14::1".parse().unwrap());
    assert_eq!((reads.route, reads.dependent, reads.lines), (Some(route(24)), 3, 4));
    // Sixteen are one too many.
    for i in 5..13 {
        set(&mut t, &mut table, &format!("2001:db8:{:x}::/48", 0x10 + i), 20 + i);
    }
    check(&t, &table, "sixteen prefixes");
    assert_eq!(t.usage().compact, 0);
    t.remove("2001:db8:1c::/48".parse().unwrap());
    table.remove(&"2001:db8:1c::/48".parse().unwrap());
    check(&t, &table, "fifteen prefixes");
    assert_eq!(t.usage().compact, 1);
    for net in table.keys().copied().collect::<Vec<_>>() {
        t.remove(net);
        table.remove(&net);
        check(&t, &table, "removing");
    }
    assert_eq!((t.usage().nodes, t.usage().compact), (0, 0), "every node returns");
}

#[test]
fn upper_nodes_are_packed_low_and_a_prefixes_deep_nodes_lie_together() {
    let mut t = narrow();
    for i in 0..50u128 {
        // Each under a /32 of its own, sharing the nodes above bit 24 and some above bit 32.
        // /64s: longer than a compact node holds, so expanded below the /32.
        let a = 0x2001u128 << 112 | (0x0db8 + i) << 96 | 0x11 << 80;
        t.set(Ipv6Net::new(Ipv6Addr::from(a), 64).unwrap(), route(1)).unwrap();
    }
    let mut upper = Vec::new();
    collect_nodes(&t.cells, 0, ROOT_ENTRIES as usize, &mut upper);
    let (shallow, deep): (Vec<u32>, Vec<u32>) = upper.iter().partition(|&&n| n < MAX_NODES / 2);
    assert!(shallow.iter().all(|&n| n < 100), "upper nodes from the bottom: {shallow:?}");
    assert!(deep.iter().all(|&n| n >= MAX_NODES - 500), "deep nodes from the top: {deep:?}");
    // The eight deep nodes of the last /64 were made together: consecutive ids.
    let a: Ipv6Addr = "2001:de9:11::".parse().unwrap();
    let (mut e, mut start, mut path) =
        (t.cells.get(index(u128::from(a), 0, ROOT_BITS)), ROOT_BITS, Vec::new());
    while is_group(e) {
        path.push(group_entry(e));
        e = t.cells.get(node_base(group_entry(e)) + index(u128::from(a), start, start + STRIDE));
        start += STRIDE;
    }
    let deep_path: Vec<u32> = path[4..].to_vec();
    assert_eq!(deep_path.len(), 8);
    assert!(deep_path.windows(2).all(|w| w[0].abs_diff(w[1]) == 1), "{deep_path:?}");
    // Adopted again, the live nodes keep their places and new ones go between the ends.
    let routes: Vec<(Ipv6Net, Route)> = vec![("2001:de9:11::/64".parse().unwrap(), route(2))];
    let mut adopted = Trie6::adopt_with(t.cells, routes, 0).unwrap();
    assert!(adopted.next_upper <= adopted.next_deep);
    let n = adopted.alloc_node(true).unwrap();
    assert!(!deep_path.contains(&n) && !path.contains(&n), "a live node handed out again");
}

#[test]
fn an_adopted_slash_24s_subtree_lies_in_one_run_of_nodes() {
    // /32s and /48s under two /24s, given interleaved.
    let mut routes = Vec::new();
    for i in 0..40u128 {
        let top: u128 = if i % 2 == 0 { 0x2001_0d00 } else { 0x2a00_1400 };
        let a = Ipv6Addr::from((top | i) << 96 | (0x11 + i) << 80);
        routes.push((Ipv6Net::new(a, 48).unwrap(), route(1)));
        routes.push((Ipv6Net::new(a, 32).unwrap().trunc(), route(2)));
    }
    let t = Trie6::adopt_with(VecCells::new(ENTRIES as usize), routes, 0).unwrap();
    for top in ["2001:d00::", "2a00:1400::"] {
        let a = u128::from(top.parse::<Ipv6Addr>().unwrap());
        let (mut e, mut start) = (t.cells.get(index(a, 0, ROOT_BITS)), ROOT_BITS);
        while start < DEEP_FROM {
            e = t.cells.get(node_base(group_entry(e)) + index(a, start, start + STRIDE));
            start += STRIDE;
        }
        assert!(is_group(e), "{top}: the /24 has a node");
        let mut nodes = vec![group_entry(e)];
        collect_nodes(&t.cells, node_base(group_entry(e)), NODE_ENTRIES as usize, &mut nodes);
        let (lo, hi) = (*nodes.iter().min().unwrap(), *nodes.iter().max().unwrap());
        assert_eq!(hi - lo + 1, nodes.len() as u32, "{top}: one run of ids: {nodes:?}");
        assert!(lo >= MAX_NODES / 2, "{top}: deep nodes from the top: {nodes:?}");
    }
}

#[test]
fn adoption_keeps_live_nodes_and_rewrites_only_differences() {
    let routes: Vec<(Ipv6Net, Route)> = vec![
        ("::/0".parse().unwrap(), route(9)),
        ("2001:db8::/32".parse().unwrap(), route(1)),
        ("2001:db8:5::/48".parse().unwrap(), route(2)),
        ("2001:db8:5::1/128".parse().unwrap(), route(3)),
    ];
    let mut first = trie();
    for (n, r) in &routes {
        first.set(*n, *r).unwrap();
    }
    let before: Vec<u32> = (0..ENTRIES as usize).map(|i| first.cells.get(i)).collect();
    let mut changed = routes.clone();
    changed[2].1 = route(4);
    let adopted = Trie6::adopt(first.cells, changed.clone()).unwrap();
    let differing = (0..ENTRIES as usize).filter(|i| adopted.cells.get(*i) != before[*i]).count();
    // The /48's entry points to the nodes down to the /128: in each of those twenty nodes, the
    // 15 entries that inherit the /48's answer change, and nothing else.
    assert_eq!(differing, 20 * 15, "only the entries that answer with the /48");
    let root = index(u128::from("2001:db8::".parse::<Ipv6Addr>().unwrap()), 0, ROOT_BITS);
    assert_eq!(adopted.cells.get(root), before[root], "the live path is kept");
    let table: BTreeMap<_, _> = changed.into_iter().collect();
    for a in ["2001:db8:5::1", "2001:db8:5::2", "2001:db8:6::", "2001:dead::1"] {
        let a: Ipv6Addr = a.parse().unwrap();
        assert_eq!(adopted.lookup(a), reference(&table, a), "{a}");
    }
    assert_eq!(adopted.adoption().untrusted, 0);
    assert_eq!(adopted.adoption().rewritten, 20 * 15);
}

fn filled(routes: &[(Ipv6Net, Route)]) -> Trie6<VecCells> {
    let mut t = trie();
    for (n, r) in routes {
        t.set(*n, *r).unwrap();
    }
    t
}

fn at(a: &str) -> usize {
    index(u128::from(a.parse::<Ipv6Addr>().unwrap()), 0, ROOT_BITS)
}

#[test]
fn a_check_finds_what_the_routes_make_and_a_changed_entry() {
    let routes: Vec<(Ipv6Net, Route)> = vec![
        ("::/0".parse().unwrap(), route(9)),
        ("2001:db8::/32".parse().unwrap(), route(1)),
        ("2001:db8:5::/48".parse().unwrap(), route(2)),
        ("2001:db8:6:7::/64".parse().unwrap(), route(5)),
        ("2001:db8:5::1/128".parse().unwrap(), route(3)),
        ("2001:db9:1::/48".parse().unwrap(), route(4)),
    ];
    let t = filled(&routes);
    let clean = t.check(routes.clone());
    assert!(clean.is_clean(), "{clean:?}");
    assert!(clean.compared >= u64::from(ROOT_ENTRIES), "{clean:?}");
    // The first-level entry of 2600::/16 now answers with the /32's next hop.
    t.cells.set(at("2600::"), encode(route(1)).unwrap());
    let found = t.check(routes);
    assert_eq!((found.differences, found.problems), (1, 0), "{found:?}");
    assert_eq!(found.examples[0].at, "2600::");
    assert_eq!(
        (found.examples[0].tables.as_str(), found.examples[0].routes.as_str()),
        ("forward 1", "forward 9")
    );
}

#[test]
fn adoption_distrusts_shared_and_outside_nodes_and_ends_on_a_cycle() {
    let routes: Vec<(Ipv6Net, Route)> = vec![
        ("2001:db8:5::/48".parse().unwrap(), route(2)),
        ("2001:db8:5:1::/64".parse().unwrap(), route(3)),
        ("2001:db9:5::/48".parse().unwrap(), route(4)),
        ("2001:db9:5:1::/64".parse().unwrap(), route(6)),
        ("3000::/20".parse().unwrap(), route(7)),
    ];
    let t = filled(&routes);
    let (a, b) = (at("2001:db8::"), at("2001:db9::"));
    // Both /16s under one first-level... no: 2001:db8 and 2001:db9 share the /16 2001::.
    assert_eq!(a, b);
    let top = t.cells.get(a);
    assert!(is_group(top));
    // 3000::/16's entry points to the node of 2001::/16 too (shared); 3001:: past the table;
    // 3002:: to a node whose first entry points back to itself (a cycle).
    let n = group_entry(top);
    t.cells.set(at("3000::"), group_pointer(n));
    t.cells.set(at("3001::"), group_pointer(MAX_NODES + 3));
    let spare = MAX_NODES / 3;
    t.cells.set(node_base(spare), group_pointer(spare));
    t.cells.set(at("3002::"), group_pointer(spare));
    let found = t.check(routes.clone());
    assert!(found.problems >= 2, "{found:?}");
    assert!(found.differences > 0, "{found:?}");
    let adopted = Trie6::adopt(t.cells, routes.clone()).unwrap();
    assert!(adopted.adoption().untrusted >= 3, "{:?}", adopted.adoption());
    let table: BTreeMap<_, _> = routes.iter().copied().collect();
    for addr in
        ["2001:db8:5::1", "2001:db8:5:1::1", "2001:db9:5:1::9", "3000::1", "3001::", "3002::5"]
    {
        let addr: Ipv6Addr = addr.parse().unwrap();
        assert_eq!(adopted.lookup(addr), reference(&table, addr), "{addr}");
    }
    let after = adopted.check(routes);
    assert!(after.is_clean(), "{after:?}");
}

/// The entry of the /32 holding `a` (its first-level or wide node entry, or its entry in a
/// 4-bit node), read without creating anything.
fn slash32_entry(t: &mut Trie6<VecCells>, a: u128) -> u32 {
    let (base, start, end) = t.level_for(a, COMPACT_AT, false).expect("the /32's level exists");
    t.cells.get(base + index(a, start, end))
}

/// Twelve prefixes longer than /32 under `2001:dba::/32`, nested and side by side: more than
/// one line of a compact node holds, few enough for two.
const TWELVE_BELOW_32: [&str; 12] = [
    "2001:dba:8000::/33",
    "2001:dba:1000::/36",
    "2001:dba:100::/40",
    "2001:dba:10::/44",
    "2001:dba:1::/48",
    "2001:dba:2::/48",
    "2001:dba:2:100::/56",
    "2001:dba:3:1000::/52",
    "2001:dba:3:1100::/56",
    "2001:dba:4::/47",
    "2001:dba:ff00::/40",
    "2001:dba:ffff:ff00::/56",
];

/// When no two adjacent nodes are free, a /32 whose longer prefixes call for a compact node of
/// two lines gets expanded (single) nodes instead, and answers like a reference; with room, the
/// same prefixes make a compact node of two lines.
#[test]
fn a_slash_32_falls_back_to_expanded_nodes_without_two_adjacent_free_ones() {
    let nets: Vec<Ipv6Net> = TWELVE_BELOW_32.iter().map(|n| n.parse().unwrap()).collect();
    let n32 = u128::from("2001:dba::".parse::<Ipv6Addr>().unwrap());
    assert!(nets.len() > LINE_PAIRS as usize && nets.len() <= COMPACT_PAIRS as usize);

    // With room: one compact node of two lines.
    let mut roomy = trie();
    for (i, net) in nets.iter().enumerate() {
        roomy.set(*net, route(100 + i as u32)).unwrap();
    }
    let e = slash32_entry(&mut roomy, n32);
    assert!(is_compact(e) && is_pair(e), "with room, a compact node of two lines: {e:#x}");

    // Some routes in first: a wide node, compact nodes, an expanded /32 elsewhere.
    let mut t = trie();
    let mut table: BTreeMap<Ipv6Net, Route> = BTreeMap::new();
    let mut before: Vec<Ipv6Net> = ["2001:db8:1::/48", "2001:db8:2::/48", "2001:db9::/32"]
        .iter()
        .map(|n| n.parse().unwrap())
        .collect();
    before.extend((0..20u16).map(|i| format!("2400:cafe:{i:x}::/48").parse::<Ipv6Net>().unwrap()));
    for (i, net) in before.iter().enumerate() {
        t.set(*net, route(1 + i as u32)).unwrap();
        table.insert(*net, route(1 + i as u32));
    }

    // The pool nearly full: every free node taken, then every other one given back (retired,
    // and reclaimed after the grace period), so that all free nodes stand alone.
    // Nodes the routes above gave back are free after their grace period: taken too.
    std::thread::sleep(GROUP_GRACE);
    t.reclaim();
    let mut taken: Vec<u32> = std::mem::take(&mut t.free_runs)
        .into_iter()
        .flat_map(|(len, runs)| runs.into_iter().flat_map(move |n| n..n + len))
        .collect();
    while let Ok(n) = t.alloc_node(true) {
        taken.push(n);
    }
    assert!(taken.len() > (MAX_NODES / 2) as usize, "the pool was mostly free: {}", taken.len());
    taken.sort_unstable();
    let now = Instant::now();
    for &n in taken.iter().step_by(2) {
        t.retired.push_back((n, 1, now));
    }
    std::thread::sleep(GROUP_GRACE);
    t.reclaim();
    let mut free: Vec<u32> = t.free_upper.iter().chain(&t.free_deep).copied().collect();
    free.extend(t.next_upper..t.next_deep);
    free.extend(
        t.free_runs.iter().flat_map(|(&len, runs)| runs.iter().flat_map(move |&n| n..n + len)),
    );
    free.sort_unstable();
    assert!(free.len() >= taken.len() / 2, "the given-back nodes are free: {}", free.len());
    assert!(
        free.windows(2).all(|w| w[1] > w[0] + 1),
        "no two adjacent free nodes (the premise of the test)"
    );
    let compact_before = t.usage().compact;

    // The twelve prefixes, one at a time: a compact node of one line up to seven, then the
    // fallback.
    for (i, net) in nets.iter().enumerate() {
        t.set(*net, route(100 + i as u32)).unwrap_or_else(|e| panic!("{net}: {e}"));
        table.insert(*net, route(100 + i as u32));
        let e = slash32_entry(&mut t, n32);
        if i < LINE_PAIRS as usize {
            assert!(is_compact(e) && !is_pair(e), "{} prefixes: one line, {e:#x}", i + 1);
        } else {
            assert!(
                is_group(e) && !is_compact(e),
                "{} prefixes and no two adjacent free nodes: expanded nodes, {e:#x}",
                i + 1
            );
        }
        for n in table.keys() {
            for a in [n.network(), n.broadcast()] {
                assert_eq!(t.lookup(a), reference(&table, a), "after {net}: {n} at {a}");
            }
        }
    }
    assert_eq!(t.usage().compact, compact_before, "the /32's compact node went, none came");
    let deep = t.lookup_reads("2001:dba:2:1ff::1".parse().unwrap());
    assert_eq!(deep.route, Some(route(106)));
    assert!(deep.dependent > 3, "below the wide node, 4-bit nodes: {deep:?}");
    for a in
        ["2001:dba::1", "2001:dba:7fff::1", "2001:dba:2:200::1", "2001:dbb::1", "2001:db8:1::1"]
    {
        let a: Ipv6Addr = a.parse().unwrap();
        assert_eq!(t.lookup(a), reference(&table, a), "{a}");
    }
    let check = t.check(table.iter().map(|(n, r)| (*n, *r)));
    assert!(check.is_clean(), "{check:?}");
    let (scanned, usage) = (t.scan(), t.usage());
    assert_eq!((scanned.nodes, scanned.compact), (usage.nodes, usage.compact));
}
