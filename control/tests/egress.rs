//! Namespace test of egress readiness: a routed veth port whose peer has neither an XDP program
//! nor GRO cannot take redirected frames (the kernel refuses each redirect and frees the frame).
//! The daemon must see that, hold the port (its frames go to the kernel, counted as
//! `pass_egress_not_ready`), say why and what to do in `sluice stats` and its log, and let XDP
//! redirect to it again once GRO is on.
//!
//! The router's kernel forwarding is switched on here (the shared topology has it off so that only
//! XDP forwards): what XDP passes to the kernel is forwarded by it, as on the appliance.
//!
//! Needs root and bpffs; without them the test says why and returns, except with `CI=true`, where
//! it fails. Run: `cargo nextest run --release -p sluice --test egress`.

#[expect(dead_code, reason = "shared with tests/netns.rs; this binary uses a part of it")]
mod common;

use std::{
    net::{SocketAddr, UdpSocket},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use common::{SETTLE, Stats, Topology, ip, mac_of, privileged, wait_until};
use sluice_testbed::{
    lab::{HOST_IF, Subnet},
    netns::NetNs,
};

/// Datagrams sent each way and family.
const DATAGRAMS: usize = 400;
/// The client's subnet.
const CLIENT: Subnet = Subnet(1);
/// The host whose end of the link has neither XDP nor GRO.
const DEAD: Subnet = Subnet(5);
/// The UDP port the receiver listens on.
const PORT: u16 = 7050;

/// `r-dead`'s `egress_not_ready` object in `sluice stats --json`, if any.
fn not_ready(t: &Topology) -> Option<serde_json::Value> {
    let text = t.sluice(&["stats", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&text).expect("parse `sluice stats --json`");
    let iface = v["interfaces"].as_array()?.iter().find(|i| i["name"] == "r-dead")?.clone();
    let n = &iface["egress_not_ready"];
    n.is_object().then(|| n.clone())
}

/// `r-dead`'s egress numbers: XDP's `transmitted`, the driver's `tx_sent`, `tx_redirect_errors`.
fn dead_tx(t: &Topology) -> (u64, u64, u64) {
    let text = t.sluice(&["stats", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&text).expect("parse `sluice stats --json`");
    let i = v["interfaces"]
        .as_array()
        .and_then(|a| a.iter().find(|i| i["name"] == "r-dead"))
        .unwrap_or_else(|| panic!("no r-dead in `sluice stats --json`:\n{text}"));
    let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    (
        n(&i["counters"]["transmitted"]["packets"]),
        n(&i["egress"]["tx_sent"]),
        n(&i["egress"]["tx_redirect_errors"]),
    )
}

/// A UDP receiver in `ns` on `addr`: counts datagrams until `want` arrived or 2 s pass without
/// one; the count comes back on the channel.
fn receiver(ns: &NetNs, addr: SocketAddr, want: usize) -> mpsc::Receiver<usize> {
    let ns = NetNs::existing(ns.name());
    let (ready_tx, ready_rx) = mpsc::channel();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        ns.enter().expect("enter the receiver's namespace");
        let socket = UdpSocket::bind(addr).expect("bind the receiver");
        socket.set_read_timeout(Some(Duration::from_secs(2))).expect("a read timeout");
        let _ = ready_tx.send(());
        let mut got = 0;
        let mut buf = [0u8; 2048];
        while got < want && socket.recv_from(&mut buf).is_ok() {
            got += 1;
        }
        let _ = tx.send(got);
    });
    ready_rx.recv().expect("the receiver started");
    rx
}

/// Sends `n` datagrams from `ns` to `dst`, paced under the veth rings' 256 frames.
fn send(ns: &NetNs, dst: SocketAddr, n: usize) {
    let ns = NetNs::existing(ns.name());
    thread::spawn(move || {
        ns.enter().expect("enter the sender's namespace");
        let bind = if dst.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
        let socket = UdpSocket::bind(bind).expect("bind a UDP socket");
        for i in 0..n {
            socket.send_to(format!("datagram {i}").as_bytes(), dst).expect("send");
            if i % 32 == 31 {
                thread::sleep(Duration::from_millis(2));
            }
        }
    })
    .join()
    .expect("the sender");
}

/// Sends [`DATAGRAMS`] from the client to the dead host in both families; returns how many
/// arrived of each.
fn cross(t: &Topology) -> (usize, usize) {
    let mut got = Vec::new();
    for dst in [DEAD.host_v4(), DEAD.host_v6()] {
        let dst: SocketAddr = SocketAddr::new(dst.parse().expect("address"), PORT);
        let bind = SocketAddr::new(
            if dst.is_ipv4() { "0.0.0.0".parse().unwrap() } else { "::".parse().unwrap() },
            PORT,
        );
        let rx = receiver(t.ns("dead"), bind, DATAGRAMS);
        send(t.ns("c1"), dst, DATAGRAMS);
        got.push(rx.recv_timeout(Duration::from_secs(30)).expect("the receiver's count"));
    }
    (got[0], got[1])
}

/// Pings `dst` from `ns` with TTL (hop limit) 1; returns the lines that report time exceeded.
fn ttl_exceeded(ns: &NetNs, dst: &str, count: u32) -> usize {
    let out = ns
        .command("ping")
        .args(["-n", "-c", &count.to_string(), "-i", "0.05", "-W", "1", "-t", "1", dst])
        .output()
        .expect("run ping");
    let text = String::from_utf8_lossy(&out.stdout);
    let lines = text
        .lines()
        .filter(|l| l.contains("Time to live exceeded") || l.contains("Time exceeded"))
        .count();
    println!("ping -t 1 {dst}: {lines} time-exceeded replies of {count}");
    lines
}

#[test]
fn a_veth_port_without_gro_on_its_peer_goes_through_the_kernel_until_gro_is_on() {
    if !privileged() {
        return;
    }
    let mut t = Topology::new(&[("c1", CLIENT.0), ("dead", DEAD.0)]);
    for key in ["net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"] {
        t.router.sysctl(key, "1").expect("switch the router's kernel forwarding on");
    }
    t.ns("dead").run("ethtool", &["-K", HOST_IF, "gro", "off"]).expect("switch GRO off");
    let started = Instant::now();
    t.start_daemon();
    // The dead host sends nothing the router could learn its MAC from before XDP forwards.
    let mac = mac_of(t.ns("dead"), HOST_IF);
    for host in [DEAD.host_v4(), DEAD.host_v6()] {
        ip(
            &t.router,
            &["neigh", "replace", &host, "lladdr", &mac, "dev", "r-dead", "nud", "permanent"],
        );
    }

    // Held, with the cause and the remedy.
    let hold = wait_until("r-dead held as not ready", SETTLE, || not_ready(&t));
    println!("r-dead held {:?} after the daemon started: {hold}", started.elapsed());
    assert_eq!(hold["cause"], "no_xdp_xmit", "{hold}");
    assert_eq!(hold["peer"], HOST_IF, "the peer is named: {hold}");
    let message = hold["message"].as_str().expect("a message");
    assert!(
        message.contains(&format!("veth peer {HOST_IF}"))
            && message.contains("no XDP program and GRO off")
            && message.contains(&format!("ethtool -K {HOST_IF} gro on")),
        "the message names the peer, the cause and the remedy: {message}"
    );
    assert_eq!(hold["kernel_forwarding"], true, "{hold}");
    let text = t.sluice(&["stats"]);
    assert!(text.contains("egress not ready") && text.contains(message), "`sluice stats`:\n{text}");
    // With the kernel's forwarding off, the message says the kernel drops them, and how to fix it.
    t.router.sysctl("net.ipv4.ip_forward", "0").expect("kernel forwarding off");
    let off = wait_until("the hold to say the kernel does not forward", SETTLE, || {
        not_ready(&t).filter(|h| h["kernel_forwarding"] == false)
    });
    let off_message = off["message"].as_str().expect("a message");
    assert!(off_message.contains("net.ipv4.ip_forward=1"), "{off_message}");
    t.router.sysctl("net.ipv4.ip_forward", "1").expect("kernel forwarding on");
    wait_until("the hold to say the kernel forwards", SETTLE, || {
        not_ready(&t).filter(|h| h["kernel_forwarding"] == true)
    });
    assert!(t.log_tail(200).contains("egress not ready"), "the log says so:\n{}", t.log_tail(40));

    // Every datagram crosses, through the kernel; none is refused at transmit.
    let before: Stats = t.stats();
    let tx_before = dead_tx(&t);
    let (v4, v6) = cross(&t);
    let after = t.stats();
    let tx_after = dead_tx(&t);
    let passed = after.delta(&before, "r-c1", "pass_egress_not_ready");
    println!(
        "held: {v4}/{DATAGRAMS} IPv4 and {v6}/{DATAGRAMS} IPv6 datagrams arrived; \
         pass_egress_not_ready +{passed}; r-dead transmitted +{}, tx_redirect_errors +{}",
        tx_after.0 - tx_before.0,
        tx_after.2 - tx_before.2
    );
    assert_eq!((v4, v6), (DATAGRAMS, DATAGRAMS), "0 datagrams may be lost on a held port");
    assert!(passed >= 2 * DATAGRAMS as u64, "counted as passed to the kernel: +{passed}");
    assert_eq!(tx_after.2, tx_before.2, "no redirect to a held port may fail");
    assert_eq!(tx_after.0, tx_before.0, "XDP redirects nothing to a held port");

    // The kernel's ICMP errors go back out through the held port.
    let v4_icmp = ttl_exceeded(t.ns("dead"), &CLIENT.host_v4(), 5);
    let v6_icmp = ttl_exceeded(t.ns("dead"), &CLIENT.host_v6(), 5);
    assert_eq!((v4_icmp, v6_icmp), (5, 5), "ICMP time exceeded must reach the held port's host");

    // GRO on: released, and XDP takes the traffic again.
    t.ns("dead").run("ethtool", &["-K", HOST_IF, "gro", "on"]).expect("switch GRO on");
    let gro_on = Instant::now();
    wait_until("r-dead released", SETTLE, || not_ready(&t).is_none().then_some(()));
    println!("r-dead released {:?} after GRO went on", gro_on.elapsed());
    assert!(t.log_tail(200).contains("egress ready"), "the log says so:\n{}", t.log_tail(40));
    let before = t.stats();
    let tx_before = dead_tx(&t);
    let (v4, v6) = cross(&t);
    let after = t.stats();
    let tx_after = dead_tx(&t);
    let passed = after.delta(&before, "r-c1", "pass_egress_not_ready");
    let forwarded = after.delta(&before, "r-c1", "forwarded");
    println!(
        "released: {v4}/{DATAGRAMS} IPv4 and {v6}/{DATAGRAMS} IPv6 datagrams arrived; forwarded \
         +{forwarded}, pass_egress_not_ready +{passed}; r-dead transmitted +{}, tx_sent +{}",
        tx_after.0 - tx_before.0,
        tx_after.1 - tx_before.1
    );
    assert_eq!((v4, v6), (DATAGRAMS, DATAGRAMS), "every datagram arrives");
    assert_eq!(passed, 0, "nothing goes to the kernel for want of egress");
    assert!(forwarded >= 2 * DATAGRAMS as u64, "XDP forwards them again: +{forwarded}");
    assert!(tx_after.0 - tx_before.0 >= 2 * DATAGRAMS as u64, "XDP transmits on r-dead");
    assert_eq!(tx_after.2, tx_before.2, "and no redirect fails");
    assert_eq!(
        tx_after.2, 0,
        "no redirect to r-dead ever failed: no frame was dropped at transmit"
    );
    t.assert_daemon_alive();
}
