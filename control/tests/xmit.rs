//! Namespace tests of egress accounting: frames XDP redirects to a device that cannot take them
//! are dropped on the way out (XDP has no qdisc), and `sluice stats` must show those drops on that
//! device, while a healthy device's transmit matches what XDP handed it.
//!
//! Two kinds of failing device, both veths, both deterministic:
//! - `narrow`: the host's end has a smaller MTU than the router's end. XDP forwards a large frame
//!   (the router's MTU allows it), the devmap queues it, and at the flush `veth_xdp_xmit` refuses
//!   it, as it refuses frames when the peer's ring is full: a drop at transmit
//!   (`xdp:xdp_devmap_xmit`, `tx_dropped`).
//! - `dead`: the host's end has neither an XDP program nor GRO, so the veth does not advertise
//!   that it can transmit XDP frames and the kernel would refuse each redirect to it before any
//!   queue (`xdp:xdp_redirect_err`, `tx_redirect_errors`). The daemon sees that and holds the
//!   port (its frames go to the kernel instead): `tests/egress.rs` tests that, and that no
//!   redirect to it fails.
//!
//! Each test builds its own topology (kernel forwarding off in the router) and pin directory, so
//! the tests run in parallel with each other and with `tests/netns.rs`; the counting is confined
//! to the router's namespace and device map, which keeps another test's devices with the same
//! ifindex out of these numbers.
//!
//! Needs root and bpffs; without them a test says why and returns, except with `CI=true`, where it
//! fails. Run: `sudo -E cargo test -p sluice --test xmit`.

#[expect(dead_code, reason = "shared with tests/netns.rs; this binary uses a part of it")]
mod common;

use std::{
    collections::BTreeMap,
    fs,
    net::{SocketAddr, UdpSocket},
    thread,
    time::{Duration, Instant},
};

use common::{SETTLE, Topology, ip, ping, privileged};
use sluice_testbed::{
    lab::{HOST_IF, Subnet},
    netns::NetNs,
};

/// Echo requests across a healthy path.
const PINGS: u32 = 20;
/// UDP datagrams sent towards a failing device.
const DATAGRAMS: usize = 96;
/// The healthy server's subnet.
const SRV: Subnet = Subnet(3);
/// The host whose end of the link has a smaller MTU than the router's.
const NARROW: Subnet = Subnet(4);
/// Its MTU: the router's end keeps 1500.
const NARROW_MTU: &str = "1000";
/// A UDP payload that fits the router's MTU but not the narrow host's.
const LARGE: usize = 1200;

/// One interface of `sluice stats --json`: XDP's own `transmitted` counter and the `egress`
/// object.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Tx {
    transmitted: u64,
    counted: bool,
    flushes: u64,
    sent: u64,
    dropped: u64,
    errors: u64,
    redirect_errors: u64,
}

/// `sluice stats --json`, by interface name.
fn tx_stats(t: &Topology) -> BTreeMap<String, Tx> {
    let text = t.sluice(&["stats", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("parse `sluice stats --json`: {e}\n{text}"));
    let n = |v: &serde_json::Value| v.as_u64().unwrap_or_else(|| panic!("a number: {v}\n{text}"));
    v["interfaces"]
        .as_array()
        .expect("interfaces")
        .iter()
        .map(|i| {
            let e = &i["egress"];
            assert!(e.is_object(), "no egress object for an untagged interface:\n{text}");
            let tx = Tx {
                transmitted: n(&i["counters"]["transmitted"]["packets"]),
                counted: e["counted"].as_bool().expect("egress.counted"),
                flushes: n(&e["tx_flushes"]),
                sent: n(&e["tx_sent"]),
                dropped: n(&e["tx_dropped"]),
                errors: n(&e["tx_errors"]),
                redirect_errors: n(&e["tx_redirect_errors"]),
            };
            (i["name"].as_str().expect("name").to_owned(), tx)
        })
        .collect()
}

/// What changed on `iface` between two snapshots.
fn delta(after: &BTreeMap<String, Tx>, before: &BTreeMap<String, Tx>, iface: &str) -> Tx {
    let (a, b) = (after[iface], before[iface]);
    let d = |x: u64, y: u64| {
        assert!(x >= y, "{iface}: a counter went backwards ({y} -> {x}): {before:?} -> {after:?}");
        x - y
    };
    Tx {
        transmitted: d(a.transmitted, b.transmitted),
        counted: a.counted,
        flushes: d(a.flushes, b.flushes),
        sent: d(a.sent, b.sent),
        dropped: d(a.dropped, b.dropped),
        errors: d(a.errors, b.errors),
        redirect_errors: d(a.redirect_errors, b.redirect_errors),
    }
}

/// Waits until every frame XDP handed to each of `ifaces` since `before` has been flushed (the
/// flush runs at the end of the router's NAPI poll, a moment after the sender returns), and
/// returns the snapshot.
fn settled(t: &Topology, before: &BTreeMap<String, Tx>, ifaces: &[&str]) -> BTreeMap<String, Tx> {
    let deadline = Instant::now() + SETTLE;
    loop {
        let s = tx_stats(t);
        let accounted = |i: &&str| {
            let d = delta(&s, before, i);
            d.sent + d.dropped + d.redirect_errors == d.transmitted
        };
        if ifaces.iter().all(accounted) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "transmit on {ifaces:?} did not account for every frame XDP transmitted within \
             {SETTLE:?}; before: {before:#?}\nafter: {s:#?}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `n` UDP datagrams of `size` bytes from host `role` to `dst`, from a thread inside the
/// host's namespace.
fn send_datagrams(t: &Topology, role: &str, dst: &str, n: usize, size: usize) {
    let ns = NetNs::existing(t.ns(role).name());
    let dst: SocketAddr = format!("{dst}:9").parse().expect("destination");
    thread::spawn(move || {
        ns.enter().expect("enter the host's namespace");
        let socket = UdpSocket::bind("0.0.0.0:0").expect("bind a UDP socket");
        let payload = vec![0x5a; size];
        for i in 0..n {
            socket.send_to(&payload, dst).expect("send a UDP datagram");
            if i % 32 == 31 {
                // Keep well under the veth rings' 256 frames: only the MTU may drop.
                thread::sleep(Duration::from_millis(2));
            }
        }
    })
    .join()
    .expect("UDP sender thread");
}

/// The block of `sluice stats` text about `iface`: its heading and its indented lines.
fn text_block(text: &str, iface: &str) -> String {
    let heading = format!("{iface} (");
    let lines: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with(&heading))
        .enumerate()
        .take_while(|(i, l)| *i == 0 || l.starts_with(' '))
        .map(|(_, l)| l)
        .collect();
    assert!(!lines.is_empty(), "no {iface} in `sluice stats`:\n{text}");
    lines.join("\n")
}

/// A router with a client `c1` and the hosts named, the narrow host's MTU lowered, the daemon
/// started, and every path ready: the narrow host answers (small) pings.
fn topology(hosts: &[(&str, u8)]) -> Topology {
    let mut t = Topology::new(hosts);
    if hosts.iter().any(|h| h.0 == "narrow") {
        ip(t.ns("narrow"), &["link", "set", HOST_IF, "mtu", NARROW_MTU]);
    }
    t.start_daemon();
    for (role, subnet) in hosts {
        if *role != "c1" {
            t.wait_ping("c1", &Subnet(*subnet).host_v4());
        }
    }
    t
}

#[test]
fn drops_at_transmit_are_counted_on_the_device_that_drops() {
    if !privileged() {
        return;
    }
    let t = topology(&[("c1", 1), ("srv", SRV.0), ("narrow", NARROW.0)]);
    let before = tx_stats(&t);
    let p = ping(t.ns("c1"), &SRV.host_v4(), PINGS, "0.01");
    assert_eq!(p.received, u64::from(PINGS), "c1 -> srv: {p:?}");
    send_datagrams(&t, "c1", &NARROW.host_v4(), DATAGRAMS, LARGE);
    let after = settled(&t, &before, &["r-c1", "r-srv", "r-narrow"]);

    let narrow = delta(&after, &before, "r-narrow");
    assert!(narrow.counted, "egress should be counted: {after:#?}");
    assert!(
        narrow.transmitted >= DATAGRAMS as u64,
        "XDP should have forwarded the {DATAGRAMS} datagrams to r-narrow: {narrow:?}"
    );
    assert!(
        narrow.dropped >= DATAGRAMS as u64 && narrow.flushes > 0 && narrow.redirect_errors == 0,
        "every datagram larger than the narrow host's MTU is dropped at transmit and must be \
         counted on r-narrow: {narrow:?}"
    );
    for iface in ["r-srv", "r-c1"] {
        let d = delta(&after, &before, iface);
        assert!(
            d.transmitted >= u64::from(PINGS),
            "{iface}: XDP transmitted {} frames, expected at least the {PINGS} echoes",
            d.transmitted
        );
        assert_eq!(
            (d.sent, d.dropped, d.errors, d.redirect_errors),
            (d.transmitted, 0, 0, 0),
            "{iface} is healthy: transmit must take what XDP sent it: {d:?}"
        );
        assert!(d.flushes > 0 && d.flushes <= d.sent, "{iface}: 1 to 16 frames a flush: {d:?}");
    }

    let text = t.sluice(&["stats"]);
    let block = text_block(&text, "r-narrow");
    assert!(
        block.contains(&format!("tx_dropped {}", after["r-narrow"].dropped)),
        "`sluice stats` should show r-narrow's tx_dropped:\n{text}"
    );
}

#[test]
fn egress_is_counted_while_the_daemon_is_stopped_and_adopted_on_restart() {
    if !privileged() {
        return;
    }
    let mut t = topology(&[("c1", 1), ("narrow", NARROW.0)]);
    let step = |t: &Topology, what: &str| {
        let before = tx_stats(t);
        send_datagrams(t, "c1", &NARROW.host_v4(), 32, LARGE);
        let after = settled(t, &before, &["r-narrow"]);
        let d = delta(&after, &before, "r-narrow");
        assert!(d.counted && d.dropped >= 32, "{what}: drops on r-narrow not counted: {d:?}");
        after["r-narrow"]
    };
    let first = step(&t, "daemon running");
    t.kill_daemon();
    let stopped = step(&t, "daemon stopped (SIGKILL)");
    t.start_daemon();
    let restarted = tx_stats(&t)["r-narrow"];
    assert!(
        restarted.dropped >= stopped.dropped && stopped.dropped > first.dropped,
        "a restart must keep the counts: {first:?} -> {stopped:?} -> {restarted:?}"
    );
    wait_for_links(&t, "adopted the pinned link");
    step(&t, "daemon restarted");

    // Statistics pinned by another build are discarded, and the links running the old program on
    // them replaced (renamed over), leaving one link per tracepoint.
    t.kill_daemon();
    fs::remove_file(t.pin_dir.join("maps").join("XMIT_STATS")).expect("unpin XMIT_STATS");
    t.start_daemon();
    wait_for_links(&t, "replaced the pinned link");
    step(&t, "links replaced");
    let mut pinned: Vec<String> = fs::read_dir(t.pin_dir.join("tracepoints"))
        .expect("the tracepoints directory")
        .map(|e| e.expect("an entry").file_name().to_string_lossy().into_owned())
        .collect();
    pinned.sort();
    assert_eq!(pinned, ["xdp_devmap_xmit", "xdp_redirect_err"], "one link per tracepoint");
}

/// Waits until the daemon's log says, for both tracepoints, `how` it took them over.
/// (`start_daemon` returns once the routes are in the adopted maps, which may be before the new
/// daemon has looked at the links.)
fn wait_for_links(t: &Topology, how: &str) {
    let deadline = Instant::now() + SETTLE;
    loop {
        let log = t.log_tail(200);
        let restarts = log.lines().filter(|l| l.contains("egress accounting on"));
        let last_two: Vec<&str> = restarts.collect::<Vec<_>>().into_iter().rev().take(2).collect();
        if last_two.len() == 2 && last_two.iter().all(|l| l.contains(how)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the restarted daemon should have {how} for both tracepoints; its log:\n{log}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn forwarding_goes_on_when_egress_cannot_be_counted() {
    if !privileged() {
        return;
    }
    let mut t = Topology::new(&[("c1", 1), ("srv", SRV.0)]);
    // A directory where the daemon pins a new link makes pinning fail.
    let blocker = t.pin_dir.join("tracepoints").join("xdp_devmap_xmit-new");
    fs::create_dir_all(&blocker).expect("create a directory on bpffs");
    t.start_daemon();
    t.wait_ping("c1", &SRV.host_v4());
    let p = ping(t.ns("c1"), &SRV.host_v4(), PINGS, "0.01");
    assert_eq!(p.received, u64::from(PINGS), "forwarding must not depend on egress accounting");
    let stats = tx_stats(&t);
    assert!(stats.values().all(|s| !s.counted), "egress must read as not counted: {stats:#?}");
    let text = t.sluice(&["stats"]);
    assert!(text.contains("not counted"), "`sluice stats` should say so:\n{text}");
    let log = t.log_tail(200);
    assert!(log.contains("egress drops will not be counted"), "a warning expected:\n{log}");
}
