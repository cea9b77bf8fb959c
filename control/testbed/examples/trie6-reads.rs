//! The IPv6 trie's dependent cache-line reads per lookup, its memory and the writer's cost of a
//! route change, over the synthetic full table (`sluice-bench`'s: same size, seed and next hops).
//!
//! Lookups are drawn as the benchmark draws its destinations: a random address inside a prefix
//! drawn uniformly from the table. The trie is built by the writer alone, in process memory
//! (no kernel, no root).
//!
//! ```text
//! cargo run --release -p sluice-testbed --example trie6-reads [-- DESTINATIONS [SEED]]
//! ```

use std::{
    collections::BTreeMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use ipnet::Ipv6Net;
use sluice_common::{Route, RouteAction, trie6::ENTRIES};
use sluice_core::{dir24::VecCells, trie6::Trie6};
use sluice_testbed::table::{DEFAULT_SIZE_V6, Family, Table};

fn main() {
    let mut args = std::env::args().skip(1);
    let destinations: usize = args.next().map_or(100_000, |a| a.parse().expect("DESTINATIONS"));
    let seed: u64 = args.next().map_or(1, |a| a.parse().expect("SEED"));
    let table = Table::generate(Family::V6, DEFAULT_SIZE_V6, seed, 4);
    let routes: Vec<(Ipv6Net, Route)> = table
        .routes
        .iter()
        .map(|r| {
            let IpAddr::V6(a) = r.prefix.address(Family::V6) else { unreachable!("an IPv6 table") };
            let route =
                Route { action: RouteAction::Forward as u32, target: 1 + u32::from(r.next_hop) };
            (Ipv6Net::new(a, r.prefix.len).expect("a prefix length"), route)
        })
        .collect();
    let started = Instant::now();
    let mut trie = Trie6::adopt(VecCells::new(ENTRIES as usize), routes.iter().copied())
        .expect("the full table fits");
    println!(
        "{} IPv6 prefixes (seed {seed}) adopted in {:.1} s: {:?}",
        routes.len(),
        started.elapsed().as_secs_f64(),
        trie.usage()
    );

    let mut reads: BTreeMap<u32, usize> = BTreeMap::new();
    let mut lines: BTreeMap<u32, usize> = BTreeMap::new();
    for d in table.destinations(destinations, seed) {
        let IpAddr::V6(a) = d else { unreachable!("an IPv6 table") };
        let counted = trie.lookup_reads(a);
        assert_eq!(counted.route, trie.lookup(a), "{a}");
        *reads.entry(counted.dependent).or_default() += 1;
        *lines.entry(counted.lines).or_default() += 1;
    }
    print_distribution("dependent cache-line reads", &reads, destinations);
    print_distribution("cache lines read", &lines, destinations);

    // Route changes as BGP makes them: a prefix of the table gets another next hop, and back.
    let mut times: Vec<Duration> = Vec::new();
    let mut state = seed ^ 0x5eed;
    for i in 0..2_000u32 {
        // SplitMix64: a route of the table at random.
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        let (net, route) = routes[((z ^ (z >> 31)) % routes.len() as u64) as usize];
        let other = Route { target: 1 + (route.target + i) % 4, ..route };
        for r in [other, route] {
            let t = Instant::now();
            trie.set(net, r).expect("a change fits");
            times.push(t.elapsed());
        }
        // A withdrawal and the announcement again.
        let t = Instant::now();
        trie.remove(net);
        times.push(t.elapsed());
        let t = Instant::now();
        trie.set(net, route).expect("a change fits");
        times.push(t.elapsed());
    }
    times.sort_unstable();
    let at = |permille: usize| times[(times.len() - 1) * permille / 1000].as_secs_f64() * 1e6;
    println!(
        "route changes in the writer ({}): median {:.1} us, p99 {:.1} us, max {:.1} us",
        times.len(),
        at(500),
        at(990),
        at(1000)
    );
}

fn print_distribution(what: &str, counts: &BTreeMap<u32, usize>, total: usize) {
    println!("{what} per lookup ({total} lookups):");
    let mut cumulative = 0;
    for (n, c) in counts {
        cumulative += c;
        println!(
            "  {n:>2}: {c:>7} {:>6.2}%  (<= {n}: {:>6.2}%)",
            100.0 * *c as f64 / total as f64,
            100.0 * cumulative as f64 / total as f64
        );
    }
}
