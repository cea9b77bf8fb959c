//! Namespace tests of the mirror under load: a flood of route changes through a netlink socket
//! too small to hold them (overruns, resynchronisation) must leave the dataplane exactly equal to
//! the kernel's final state, and a table of 50,000 routes loaded at once must reach the dataplane
//! within seconds of the kernel holding it.
//!
//! The routes are fed to the router namespace's kernel with `ip -batch -`. The dataplane is
//! compared with the kernel as the FIB compiler maps one onto the other: every route of the main
//! table (the lowest metric per prefix; IPv6 link-local prefixes are not mirrored) with its
//! action and next hops; the router's own addresses and the local table's local, broadcast and
//! anycast routes as `local`; and host routes for neighbours on connected subnets, which are
//! allowed but not required (they follow the neighbour's state).
//!
//! Needs root and bpffs; without them a test says why and returns, except with `CI=true`, where it
//! fails. Run: `sudo -E cargo test -p sluice --release --test flood -- --nocapture` (the timings
//! are printed).

#[expect(dead_code, reason = "each test file uses a part of the shared helpers")]
mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    fs,
    net::IpAddr,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use common::{RouteJson, Topology, privileged};
use ipnet::IpNet;
use serde_json::Value;
use sluice_dataplane::PinDir;
use sluice_testbed::{lab::Subnet, netns::NetNs};

/// The receive buffer the flood test gives the daemon's event socket (the kernel doubles it):
/// a few dozen route events fill it.
const TINY_BUFFER: &str = "4096";
/// The message the daemon logs when it resynchronises after an overrun.
const RESYNC_LOG: &str = "netlink receive buffer overran: resynchronising";
/// Prefixes per family the flood works on, and its rounds.
const FLOOD_PREFIXES: u32 = 2500;
const FLOOD_ROUNDS: u32 = 4;
/// How long the dataplane may take to settle on the kernel's state after the flood.
const CONVERGE: Duration = Duration::from_secs(30);
/// The large table: IPv4 and IPv6 routes.
const LARGE_V4: u32 = 40_000;
const LARGE_V6: u32 = 10_000;
/// How long after the kernel holds the large table the dataplane may take to hold all of it.
const LARGE_LAG: Duration = Duration::from_secs(10);

/// The flood's address space: `100.64.0.0/10` and `fd10::/16`.
fn in_flood_space(p: &IpNet) -> bool {
    let space: [IpNet; 2] = ["100.64.0.0/10".parse().unwrap(), "fd10::/16".parse().unwrap()];
    space.iter().any(|s| s.contains(p))
}

/// IPv4 prefix `i` of the flood: `100.64.0.0/10` cut into /24s.
fn flood_v4(i: u32) -> String {
    format!("100.{}.{}.0/24", 64 + (i >> 8), i & 0xff)
}

/// IPv6 prefix `i` of the flood: `fd10::/16` cut into /64s.
fn flood_v6(i: u32) -> String {
    format!("fd10:{:x}:{:x}::/64", i >> 8, i & 0xff)
}

/// IPv4 prefix `i` of the large table: `100.64.0.0/10` cut into /26s.
fn large_v4(i: u32) -> String {
    format!("100.{}.{}.{}/26", 64 + (i >> 10), (i >> 2) & 0xff, (i & 3) * 64)
}

/// Feeds `lines` to `ip -batch -` in `ns`; panics with ip's complaint if a line fails. Returns
/// how long ip took: when it returns, the kernel holds the result.
fn ip_batch(ns: &NetNs, lines: &[String]) -> Duration {
    let start = Instant::now();
    ns.batch(&(lines.join("\n") + "\n"))
        .unwrap_or_else(|e| panic!("{} lines through ip -batch: {e:#}", lines.len()));
    start.elapsed()
}

/// What the dataplane should hold for a prefix: an action and, for `forward` and `ecmp`, the
/// next hops as `(interface, gateway)`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    action: String,
    nexthops: BTreeSet<(String, IpAddr)>,
}

impl Entry {
    fn of(r: &RouteJson) -> Self {
        Self {
            action: r.action.clone(),
            nexthops: r
                .nexthops
                .iter()
                .filter_map(|n| Some((n.dev.clone(), n.via.as_deref()?.parse().ok()?)))
                .collect(),
        }
    }
}

/// The kernel's state, as far as the dataplane mirrors it.
#[derive(Debug, Default)]
struct KernelView {
    /// The best route of the main table per prefix.
    main: BTreeMap<IpNet, Entry>,
    /// Prefixes the dataplane must hold as `local`: the router's addresses and the local table's
    /// local, broadcast and anycast routes.
    local: BTreeSet<IpNet>,
    /// Addresses of the router's neighbours (host routes for them are allowed).
    neighbours: BTreeSet<IpAddr>,
}

fn ip_json(ns: &NetNs, args: &[&str]) -> Vec<Value> {
    let text = ns.ip(args).unwrap_or_else(|e| panic!("ip {}: {e:#}", args.join(" ")));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse ip {}: {e}", args.join(" ")))
}

/// `dst` of `ip -j route` as a prefix: `default`, an address (a host route) or a prefix.
fn parse_dst(dst: &str, v6: bool) -> IpNet {
    match dst {
        "default" if v6 => "::/0".parse().unwrap(),
        "default" => "0.0.0.0/0".parse().unwrap(),
        d if d.contains('/') => d.parse::<IpNet>().expect("a prefix").trunc(),
        d => IpNet::from(d.parse::<IpAddr>().expect("an address")),
    }
}

/// The IPv6 link-local prefixes the mirror leaves out.
fn link_local(p: &IpNet) -> bool {
    matches!(p, IpNet::V6(n) if n.prefix_len() >= 10 && n.addr().segments()[0] & 0xffc0 == 0xfe80)
}

/// What the FIB compiler makes of one route of the main table (`ip -j route` object).
fn entry_of(r: &Value) -> Entry {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let hop = |h: &Value| Some((text(&h["dev"]), h["gateway"].as_str()?.parse().ok()?));
    let kind = r["type"].as_str().unwrap_or("unicast");
    let (action, nexthops) = match kind {
        "unicast" => {
            let hops: BTreeSet<_> = match r["nexthops"].as_array() {
                Some(hops) => hops.iter().filter_map(hop).collect(),
                None => hop(r).into_iter().collect(),
            };
            let action = match hops.len() {
                0 if text(&r["dev"]).starts_with("r-") => "connected",
                0 => "pass",
                1 => "forward",
                _ => "ecmp",
            };
            (action, hops)
        }
        "blackhole" => ("blackhole", BTreeSet::new()),
        "unreachable" | "prohibit" => ("unreachable", BTreeSet::new()),
        "local" | "broadcast" | "anycast" => ("local", BTreeSet::new()),
        _ => ("pass", BTreeSet::new()),
    };
    Entry { action: action.to_owned(), nexthops }
}

impl KernelView {
    fn read(router: &NetNs) -> Self {
        let mut view = Self::default();
        for (family, v6) in [("-4", false), ("-6", true)] {
            let mut best: BTreeMap<IpNet, (u64, Entry)> = BTreeMap::new();
            for r in ip_json(router, &["-j", family, "route", "show", "table", "main"]) {
                let prefix = parse_dst(r["dst"].as_str().expect("dst"), v6);
                if link_local(&prefix) {
                    continue;
                }
                let metric = r["metric"].as_u64().unwrap_or(0);
                if best.get(&prefix).is_none_or(|(m, _)| metric < *m) {
                    best.insert(prefix, (metric, entry_of(&r)));
                }
            }
            view.main.extend(best.into_iter().map(|(p, (_, e))| (p, e)));
            for r in ip_json(router, &["-j", family, "route", "show", "table", "local"]) {
                let prefix = parse_dst(r["dst"].as_str().expect("dst"), v6);
                if matches!(r["type"].as_str(), Some("local" | "broadcast" | "anycast"))
                    && !link_local(&prefix)
                {
                    view.local.insert(prefix);
                }
            }
            for n in ip_json(router, &["-j", family, "neigh", "show"]) {
                if let Some(a) = n["dst"].as_str().and_then(|d| d.parse().ok()) {
                    view.neighbours.insert(a);
                }
            }
        }
        for link in ip_json(router, &["-j", "addr", "show"]) {
            for a in link["addr_info"].as_array().into_iter().flatten() {
                if let Some(addr) = a["local"].as_str().and_then(|l| l.parse::<IpAddr>().ok()) {
                    view.local.insert(IpNet::from(addr));
                }
            }
        }
        view
    }

    /// Everything that differs between this view and the dataplane's routes, one line each.
    fn differences(&self, dataplane: &[RouteJson]) -> Vec<String> {
        let actual: BTreeMap<IpNet, Entry> =
            dataplane.iter().map(|r| (r.prefix, Entry::of(r))).collect();
        let mut out = Vec::new();
        for prefix in &self.local {
            match actual.get(prefix) {
                Some(e) if e.action == "local" => {}
                other => out.push(format!("{prefix}: expected local, dataplane has {other:?}")),
            }
        }
        for (prefix, want) in self.main.iter().filter(|(p, _)| !self.local.contains(p)) {
            let got = actual.get(prefix);
            if got != Some(want) {
                out.push(format!("{prefix}: kernel has {want:?}, dataplane has {got:?}"));
            }
        }
        for (prefix, got) in &actual {
            if self.main.contains_key(prefix) || self.local.contains(prefix) {
                continue;
            }
            let neighbour = (prefix.prefix_len() == prefix.max_prefix_len()
                && self.neighbours.contains(&prefix.addr()))
            .then_some(());
            if neighbour.is_none() || got.action != "forward" {
                out.push(format!("{prefix}: not in the kernel, dataplane has {got:?}"));
            }
        }
        out
    }
}

/// Waits until the dataplane equals the kernel's state; returns how long that took, or panics
/// after `timeout` with the differences.
fn wait_converged(t: &mut Topology, timeout: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let kernel = KernelView::read(&t.router);
        let diff = kernel.differences(&t.routes());
        if diff.is_empty() {
            // The kernel may have been read while a change was under way: confirm once more.
            let again = KernelView::read(&t.router);
            if again.differences(&t.routes()).is_empty() {
                return start.elapsed();
            }
        }
        t.assert_daemon_alive();
        if start.elapsed() > timeout {
            let mut text = String::new();
            for line in diff.iter().take(40) {
                let _ = writeln!(text, "  {line}");
            }
            panic!(
                "the dataplane did not match the kernel within {timeout:?}: {} differences, \
                 the first:\n{text}",
                diff.len()
            );
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// How many of the dataplane's routes lie in the flood's address space, read straight from the
/// pinned maps (cheaper than `sluice routes --json` for large tables).
fn dataplane_flood_routes(pin: &Path) -> usize {
    sluice::show::routes(&PinDir::new(pin))
        .map_or(0, |r| r.routes.iter().filter(|r| in_flood_space(&r.prefix)).count())
}

/// The pid of the `sluice daemon` serving `pin`, found through /proc.
fn daemon_pid(pin: &Path) -> Option<u32> {
    let pin = pin.to_string_lossy();
    fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = fs::read(e.path().join("cmdline")).ok()?;
        let args: Vec<String> =
            cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        (args.iter().any(|a| a == "daemon") && args.iter().any(|a| *a == pin)).then_some(pid)
    })
}

/// The rtnetlink sockets of process `pid` subscribed to multicast groups, one line each from
/// `/proc/PID/net/netlink` (`sk Eth Pid Groups Rmem Wmem Dump Locks Drops Inode`).
fn subscribed_netlink_sockets(pid: u32) -> Vec<String> {
    let inodes: BTreeSet<String> = fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let target = fs::read_link(e.path()).ok()?;
            let t = target.to_str()?;
            Some(t.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let table = fs::read_to_string(format!("/proc/{pid}/net/netlink")).unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() >= 10 && f[1] == "0" && f[3] != "00000000" && inodes.contains(f[9])
        })
        .map(str::to_owned)
        .collect()
}

/// The flood: `FLOOD_ROUNDS` batches, each replacing every prefix (alternating the gateway),
/// then moving some to the other gateway and making others multipath, blackhole or unreachable
/// or giving them a second route of another metric, then deleting half of them.
fn flood_rounds() -> Vec<Vec<String>> {
    let (s1, s2) = (Subnet(3), Subnet(4));
    (0..FLOOD_ROUNDS)
        .map(|round| {
            let mut lines = Vec::new();
            for (prefix, gw, other) in [
                (flood_v4 as fn(u32) -> String, s1.host_v4(), s2.host_v4()),
                (flood_v6, s1.host_v6(), s2.host_v6()),
            ] {
                let (gw, other) = if round % 2 == 0 { (gw, other) } else { (other, gw) };
                for i in 0..FLOOD_PREFIXES {
                    lines.push(format!("route replace {} via {gw} proto static", prefix(i)));
                }
                for i in 0..FLOOD_PREFIXES {
                    let p = prefix(i);
                    let line = match i % 15 {
                        0 | 3 | 6 | 9 => format!("route replace {p} via {other} proto static"),
                        7 => format!("route replace {p} nexthop via {gw} nexthop via {other}"),
                        11 => format!("route replace blackhole {p}"),
                        13 => format!("route replace unreachable {p}"),
                        14 => format!("route replace {p} via {other} metric 50 proto static"),
                        _ => continue,
                    };
                    lines.push(line);
                }
                for i in (0..FLOOD_PREFIXES).filter(|i| (i + round) % 2 == 0) {
                    lines.push(format!("route del {}", prefix(i)));
                }
            }
            lines
        })
        .collect()
}

#[test]
fn netlink_overruns_resync_the_dataplane_to_the_kernels_exact_state() {
    if !privileged() {
        return;
    }
    let mut t = Topology::new(&[("c1", 1), ("s1", 3), ("s2", 4)]);
    t.start_daemon_with(&["--netlink-recv-buffer", TINY_BUFFER]);
    let (s1, s2) = (Subnet(3), Subnet(4));
    for dst in [s1.host_v4(), s2.host_v4(), s1.host_v6(), s2.host_v6()] {
        t.wait_ping("c1", &dst);
    }
    wait_converged(&mut t, CONVERGE);
    let pid = daemon_pid(&t.pin_dir).expect("the daemon's pid");

    let rounds = flood_rounds();
    let ops: usize = rounds.iter().map(Vec::len).sum();
    let start = Instant::now();
    for lines in &rounds {
        ip_batch(&t.router, lines);
    }
    let flooded = start.elapsed();
    let kernel = KernelView::read(&t.router);
    let left = kernel.main.keys().filter(|p| in_flood_space(p)).count();
    assert!(
        left >= FLOOD_PREFIXES as usize,
        "the flood should leave thousands of routes in the kernel, it left {left}"
    );
    let converged = wait_converged(&mut t, CONVERGE);
    t.assert_daemon_alive();
    let log = t.log_tail(usize::MAX);
    let resyncs = log.matches(RESYNC_LOG).count();
    eprintln!(
        "flood: {ops} route changes in {flooded:?}, {left} flood routes left; the dataplane \
         matched the kernel {converged:?} later, after {resyncs} resynchronisations"
    );
    assert!(
        resyncs > 0,
        "with a {TINY_BUFFER}-byte receive buffer the flood should have overrun the netlink \
         socket and the daemon should log {RESYNC_LOG:?}; its log:\n{}",
        t.log_tail(40)
    );
    // A resync replaces the event socket: the one it replaced must be closed, not left
    // subscribed with its receive buffer full (until some later event happens to wake it).
    let deadline = Instant::now() + Duration::from_secs(2);
    let sockets = loop {
        let sockets = subscribed_netlink_sockets(pid);
        if sockets.len() == 1 || Instant::now() > deadline {
            break sockets;
        }
        thread::sleep(Duration::from_millis(100));
    };
    assert!(
        sockets.len() == 1,
        "after {resyncs} resynchronisations the daemon should hold one rtnetlink socket \
         subscribed to events, it holds {} (sk Eth Pid Groups Rmem Wmem Dump Locks Drops \
         Inode):\n{}",
        sockets.len(),
        sockets.join("\n")
    );

    // The daemon still follows changes one by one, and still forwards.
    t.router.ip(&["route", "add", "10.98.0.0/24", "via", &s1.host_v4()]).expect("ip route add");
    t.wait_route("10.98.0.0/24", "present after the flood", |r| {
        r.is_some_and(|r| r.via(&s1.host_v4()).is_some())
    });
    t.wait_ping("c1", &s2.host_v4());
    t.wait_ping("c1", &s2.host_v6());
    t.assert_daemon_alive();
}

#[test]
fn a_table_of_50000_routes_reaches_the_dataplane_within_seconds() {
    if !privileged() {
        return;
    }
    let mut t = Topology::new(&[("c1", 1), ("s1", 3), ("s2", 4)]);
    t.start_daemon();
    let (s1, s2) = (Subnet(3), Subnet(4));
    let mut lines = Vec::new();
    for i in 0..LARGE_V4 {
        let gw = if i % 2 == 0 { s1.host_v4() } else { s2.host_v4() };
        lines.push(format!("route add {} via {gw} proto static", large_v4(i)));
    }
    for i in 0..LARGE_V6 {
        let gw = if i % 2 == 0 { s1.host_v6() } else { s2.host_v6() };
        lines.push(format!("route add {} via {gw} proto static", flood_v6(i)));
    }
    let total = lines.len();

    let start = Instant::now();
    let kernel_took = ip_batch(&t.router, &lines);
    let mut polls = 0;
    let mut read_time = Duration::ZERO;
    let dataplane_took = loop {
        polls += 1;
        let read = Instant::now();
        let held = dataplane_flood_routes(&t.pin_dir);
        read_time = read_time.max(read.elapsed());
        if held == total {
            break start.elapsed();
        }
        t.assert_daemon_alive();
        assert!(
            start.elapsed() < kernel_took + LARGE_LAG,
            "{total} routes: the kernel held them after {kernel_took:?}, but the dataplane held \
             only {} of them {LARGE_LAG:?} later",
            dataplane_flood_routes(&t.pin_dir)
        );
        thread::sleep(Duration::from_millis(20));
    };
    let lag = dataplane_took.saturating_sub(kernel_took);
    let resyncs = t.log_tail(usize::MAX).matches(RESYNC_LOG).count();
    eprintln!(
        "{total} routes ({LARGE_V4} IPv4, {LARGE_V6} IPv6): the kernel held them after \
         {kernel_took:?}, the dataplane {dataplane_took:?} after the start ({lag:?} after the \
         kernel; {polls} reads of the maps, the longest {read_time:?}), with {resyncs} \
         resynchronisations"
    );
    let check = Instant::now();
    wait_converged(&mut t, CONVERGE);
    eprintln!("the full comparison with the kernel took {:?}", check.elapsed());

    // And all of them gone again.
    let start = Instant::now();
    for family in ["-4", "-6"] {
        t.router.ip(&[family, "route", "flush", "proto", "static"]).expect("ip route flush");
    }
    let kernel_took = start.elapsed();
    while dataplane_flood_routes(&t.pin_dir) != 0 {
        t.assert_daemon_alive();
        assert!(
            start.elapsed() < kernel_took + LARGE_LAG,
            "{total} routes flushed from the kernel in {kernel_took:?}; the dataplane still held \
             {} of them {LARGE_LAG:?} later",
            dataplane_flood_routes(&t.pin_dir)
        );
        thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "flushed: the kernel in {kernel_took:?}, the dataplane {:?} after the start",
        start.elapsed()
    );
    t.assert_daemon_alive();
}
