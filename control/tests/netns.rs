//! Namespace tests: real traffic through `sluice daemon` in a router namespace whose kernel
//! forwarding is off (`net.ipv4.ip_forward=0`, `net.ipv6.conf.all.forwarding=0`), so a packet that
//! crosses was forwarded by XDP. Each test builds its own topology with unique names and its own
//! pin directory, so the tests run in parallel; each removes everything on drop, also on panic.
//!
//! Needs root and bpffs; without them a test says why and returns, except with `CI=true`, where it
//! fails. Run: `sudo -E cargo test -p sluice --test netns`.

#[allow(dead_code, reason = "shared by the namespace test crates, which use different parts")]
mod common;

use std::{net::SocketAddr, thread, time::Duration};

use common::{
    Topology, finish_ping, ip, mac_of, ping, ping_briefly, privileged, spawn_ping, wait_until,
};
use sluice_testbed::lab::{HOST_IF, Subnet};

/// Echo requests per measured ping run.
const PINGS: u32 = 20;

/// A MAC address no host has (locally administered).
const FAKE_MAC: &str = "02:00:5e:10:00:99";
/// UDP flows (distinct source ports) sent over the multipath route.
const FLOWS: usize = 128;
/// Echo requests at 10 ms intervals in the kill test: three seconds of traffic spanning the kill
/// and the restart of the daemon.
const COUNT: u32 = 300;
/// Echo requests that may be lost across the kill and the restart.
const HANDFUL: u64 = 5;

/// A server prefix that exists only on the servers' loopbacks, so only a route makes it
/// reachable from the router.
const SERVICE_V4: (&str, &str, &str) = ("10.99.0.0/24", "10.99.0.1", "10.99.0.1/32");
const SERVICE_V6: (&str, &str, &str) = ("fd00:99::/64", "fd00:99::1", "fd00:99::1/128");

/// Puts the service addresses on the loopback of each host named.
fn add_service_addresses(t: &Topology, roles: &[&str]) {
    for role in roles {
        ip(t.ns(role), &["addr", "add", SERVICE_V4.2, "dev", "lo"]);
        ip(t.ns(role), &["addr", "add", SERVICE_V6.2, "dev", "lo"]);
    }
}

/// `(ip family flag, the host's address)` for both families of subnet `s`.
fn families(s: Subnet) -> [(&'static str, String); 2] {
    [("-4", s.host_v4()), ("-6", s.host_v6())]
}

#[test]
fn ipv4_and_ipv6_cross_the_router_through_xdp() {
    if !privileged() {
        return;
    }
    let mut t = Topology::new(&[("c1", 1), ("srv", 3)]);
    t.start_daemon();
    for (_, dst) in families(Subnet(3)) {
        t.wait_ping("c1", &dst);
        let before = t.stats();
        let p = ping(t.ns("c1"), &dst, PINGS, "0.01");
        let after = t.stats();
        assert_eq!(
            p.received,
            u64::from(PINGS),
            "c1 -> {dst}: {p:?}, expected every echo answered; stats:{after}"
        );
        let requests = after.delta(&before, "r-c1", "forwarded");
        let replies = after.delta(&before, "r-srv", "forwarded");
        let sent_to_srv = after.delta(&before, "r-srv", "transmitted");
        let sent_to_c1 = after.delta(&before, "r-c1", "transmitted");
        assert!(
            requests >= u64::from(PINGS),
            "{dst}: XDP forwarded {requests} packets arriving on r-c1, expected at least the \
             {PINGS} echo requests (kernel forwarding is off); stats:{after}"
        );
        assert!(
            replies >= u64::from(PINGS),
            "{dst}: XDP forwarded {replies} packets arriving on r-srv, expected at least the \
             {PINGS} echo replies; stats:{after}"
        );
        assert!(
            sent_to_srv >= u64::from(PINGS) && sent_to_c1 >= u64::from(PINGS),
            "{dst}: XDP transmitted {sent_to_srv} on r-srv and {sent_to_c1} on r-c1, expected at \
             least {PINGS} each; stats:{after}"
        );
    }
}

/// Bytes a TCP connection carries each way in the socket test.
const TCP_BYTES: usize = 256 << 10;
/// UDP datagrams (1,000 bytes each) the socket test sends.
const DATAGRAMS: usize = 200;

#[test]
fn tcp_and_udp_from_sockets_cross_the_router_both_families() {
    use std::io::{Read as _, Write as _};

    use sluice_testbed::api_lab::in_namespace;
    if !privileged() {
        return;
    }
    let mut t = Topology::new(&[("c1", 1), ("srv", 3)]);
    t.start_daemon();
    let (client_ns, server_ns) = (t.ns("c1").name().to_owned(), t.ns("srv").name().to_owned());
    for (port, (_, dst)) in (5201u16..).zip(families(Subnet(3))) {
        t.wait_ping("c1", &dst);
        let addr = SocketAddr::new(dst.parse().expect("an address"), port);
        let before = t.stats();
        // The server: echoes one TCP connection, then counts datagrams until told to stop.
        let (server_ns, client_ns) = (&server_ns, &client_ns);
        let (echoed, datagrams) = thread::scope(|s| {
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            let server = s.spawn(move || {
                in_namespace(server_ns, || {
                    let tcp = std::net::TcpListener::bind(addr)?;
                    let udp = std::net::UdpSocket::bind(addr)?;
                    udp.set_read_timeout(Some(Duration::from_millis(500)))?;
                    ready_tx.send(()).ok();
                    let (mut conn, _) = tcp.accept()?;
                    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
                    let mut data = vec![0u8; TCP_BYTES];
                    conn.read_exact(&mut data)?;
                    conn.write_all(&data)?;
                    let mut n = 0;
                    let mut buf = [0u8; 2048];
                    while let Ok(len) = udp.recv(&mut buf) {
                        if len == 1000 && buf[..len].iter().all(|b| *b == 0xa5) {
                            n += 1;
                        }
                    }
                    Ok(n)
                })
            });
            ready_rx.recv_timeout(Duration::from_secs(5)).expect("the server listens");
            let echoed = in_namespace(client_ns, || {
                let mut conn = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
                conn.set_read_timeout(Some(Duration::from_secs(10)))?;
                let sent: Vec<u8> = (0..TCP_BYTES).map(|i| (i * 7 % 251) as u8).collect();
                conn.write_all(&sent)?;
                let mut back = vec![0u8; TCP_BYTES];
                conn.read_exact(&mut back)?;
                let udp = std::net::UdpSocket::bind(SocketAddr::new(
                    if addr.is_ipv4() { "0.0.0.0" } else { "::" }.parse()?,
                    0,
                ))?;
                for _ in 0..DATAGRAMS {
                    udp.send_to(&[0xa5; 1000], addr)?;
                    thread::sleep(Duration::from_micros(500));
                }
                Ok(back == sent)
            })
            .expect("the client's TCP connection and datagrams");
            (echoed, server.join().expect("the server").expect("the server's sockets"))
        });
        let after = t.stats();
        let forwarded = after.delta(&before, "r-c1", "forwarded");
        println!(
            "{dst}: a TCP connection carried {TCP_BYTES} bytes each way (echoed whole: {echoed}); \
             {datagrams} of {DATAGRAMS} UDP datagrams arrived whole; XDP forwarded {forwarded} \
             packets from c1"
        );
        assert!(echoed, "{dst}: the TCP echo came back whole");
        assert_eq!(datagrams, DATAGRAMS, "{dst}: every datagram arrived with a good checksum");
        assert!(forwarded >= DATAGRAMS as u64, "{dst}: forwarded by XDP; stats:{after}");
    }
}

#[test]
fn route_add_replace_and_del_are_reflected_in_forwarding() {
    if !privileged() {
        return;
    }
    let mut t = Topology::new(&[("c1", 1), ("s1", 3), ("s2", 4)]);
    add_service_addresses(&t, &["s1", "s2"]);
    t.start_daemon();
    for ((family, gw1), ((_, gw2), (prefix, dst, _))) in families(Subnet(3))
        .into_iter()
        .zip(families(Subnet(4)).into_iter().zip([SERVICE_V4, SERVICE_V6]))
    {
        // No route yet: XDP must not forward, and nothing may reach either server.
        let before = t.stats();
        let p = ping_briefly(t.ns("c1"), dst, 3);
        let after = t.stats();
        assert_eq!(p.received, 0, "{dst} answered before any route to {prefix} existed");
        assert_eq!(
            after.delta(&before, "r-c1", "forwarded"),
            0,
            "XDP forwarded towards {dst} without a route; stats:{after}"
        );
        assert!(
            after.delta(&before, "r-c1", "pass_no_route") >= 3,
            "packets to {dst} without a route should count as pass_no_route on r-c1; stats:{after}"
        );

        // add: via s1; replace: via s2.
        for (verb, via, other, egress, idle) in
            [("add", &gw1, &gw2, "r-s1", "r-s2"), ("replace", &gw2, &gw1, "r-s2", "r-s1")]
        {
            ip(&t.router, &[family, "route", verb, prefix, "via", via]);
            t.wait_route(prefix, &format!("forward via {via} only"), |r| {
                r.is_some_and(|r| r.via(via).is_some() && r.via(other).is_none())
            });
            t.wait_ping("c1", dst);
            let before = t.stats();
            let p = ping(t.ns("c1"), dst, PINGS, "0.01");
            let after = t.stats();
            assert_eq!(p.received, u64::from(PINGS), "{dst} via {via}: {p:?}; stats:{after}");
            assert!(
                after.delta(&before, egress, "transmitted") >= u64::from(PINGS),
                "after `route {verb} {prefix} via {via}`, {egress} should transmit the {PINGS} \
                 echo requests; stats:{after}"
            );
            assert_eq!(
                after.delta(&before, idle, "transmitted"),
                0,
                "after `route {verb} {prefix} via {via}`, nothing should leave {idle}; \
                 stats:{after}"
            );
        }

        // del: unreachable again.
        ip(&t.router, &[family, "route", "del", prefix]);
        t.wait_route(prefix, "absent", |r| r.is_none());
        let before = t.stats();
        let p = ping_briefly(t.ns("c1"), dst, 3);
        let after = t.stats();
        assert_eq!(p.received, 0, "{dst} still answered after `route del {prefix}`");
        for egress in ["r-s1", "r-s2"] {
            assert_eq!(
                after.delta(&before, egress, "transmitted"),
                0,
                "after `route del {prefix}`, XDP still sent packets out of {egress}; stats:{after}"
            );
        }
        assert!(
            after.delta(&before, "r-c1", "pass_no_route") >= 3,
            "after `route del {prefix}`, packets to {dst} should count as pass_no_route; \
             stats:{after}"
        );
    }
}

#[test]
fn neighbour_changes_reach_the_next_hop() {
    if !privileged() {
        return;
    }
    let mut t = Topology::new(&[("c1", 1), ("srv", 3)]);
    add_service_addresses(&t, &["srv"]);
    let real_mac = mac_of(t.ns("srv"), HOST_IF);
    t.start_daemon();
    for ((family, gw), (prefix, dst, _)) in
        families(Subnet(3)).into_iter().zip([SERVICE_V4, SERVICE_V6])
    {
        ip(&t.router, &[family, "route", "add", prefix, "via", &gw]);
        t.wait_ping("c1", dst);
        t.wait_route(prefix, &format!("via {gw} resolved to {real_mac}"), |r| {
            r.and_then(|r| r.via(&gw))
                .is_some_and(|n| n.resolved && n.mac.as_deref() == Some(real_mac.as_str()))
        });

        // The router now believes the server has another MAC: XDP must send there (and the
        // server, seeing frames for another host, drops them).
        ip(
            &t.router,
            &[
                family,
                "neigh",
                "replace",
                &gw,
                "lladdr",
                FAKE_MAC,
                "dev",
                "r-srv",
                "nud",
                "permanent",
            ],
        );
        t.wait_route(prefix, &format!("via {gw} with MAC {FAKE_MAC}"), |r| {
            r.and_then(|r| r.via(&gw)).is_some_and(|n| n.mac.as_deref() == Some(FAKE_MAC))
        });
        let before = t.stats();
        let p = ping_briefly(t.ns("c1"), dst, 5);
        let after = t.stats();
        assert_eq!(p.received, 0, "{dst} answered although the router sends to {FAKE_MAC}");
        assert!(
            after.delta(&before, "r-srv", "transmitted") >= 5,
            "XDP should still transmit to the (wrong) MAC {FAKE_MAC} on r-srv; stats:{after}"
        );

        // The real MAC restored: traffic flows again.
        ip(
            &t.router,
            &[
                family,
                "neigh",
                "replace",
                &gw,
                "lladdr",
                &real_mac,
                "dev",
                "r-srv",
                "nud",
                "reachable",
            ],
        );
        t.wait_route(prefix, &format!("via {gw} with MAC {real_mac} again"), |r| {
            r.and_then(|r| r.via(&gw))
                .is_some_and(|n| n.resolved && n.mac.as_deref() == Some(real_mac.as_str()))
        });
        let before = t.stats();
        let p = ping(t.ns("c1"), dst, PINGS, "0.01");
        let after = t.stats();
        assert_eq!(
            p.received,
            u64::from(PINGS),
            "{dst} after restoring {gw}'s MAC {real_mac}: {p:?}; stats:{after}"
        );
        assert!(
            after.delta(&before, "r-c1", "forwarded") >= u64::from(PINGS),
            "XDP should forward the echo requests to {dst} again; stats:{after}"
        );
    }
}

#[test]
fn egress_link_down_stops_xdp_forwarding_and_up_resumes_it() {
    if !privileged() {
        return;
    }
    let mut t = Topology::new(&[("c1", 1), ("srv", 3)]);
    t.start_daemon();
    for (_, dst) in families(Subnet(3)) {
        t.wait_ping("c1", &dst);
    }

    ip(&t.router, &["link", "set", "r-srv", "down"]);
    wait_until("the dataplane to see r-srv down", common::SETTLE, || {
        (t.stats().up("r-srv") == Some(false)).then_some(())
    });
    for (_, dst) in families(Subnet(3)) {
        let before = t.stats();
        let p = ping_briefly(t.ns("c1"), &dst, 5);
        let after = t.stats();
        assert_eq!(p.received, 0, "{dst} answered while r-srv was down");
        assert_eq!(
            after.delta(&before, "r-c1", "forwarded"),
            0,
            "XDP forwarded packets to {dst} while the egress r-srv was down; stats:{after}"
        );
        assert_eq!(
            after.delta(&before, "r-srv", "transmitted"),
            0,
            "XDP transmitted on r-srv while it was down; stats:{after}"
        );
        assert!(
            after.passed("r-c1") >= before.passed("r-c1") + 5,
            "packets to {dst} should be passed to the kernel (a pass_* reason) while r-srv is \
             down; stats:{after}"
        );
    }

    ip(&t.router, &["link", "set", "r-srv", "up"]);
    wait_until("the dataplane to see r-srv up", common::SETTLE, || {
        (t.stats().up("r-srv") == Some(true)).then_some(())
    });
    for (_, dst) in families(Subnet(3)) {
        t.wait_ping("c1", &dst);
        let before = t.stats();
        let p = ping(t.ns("c1"), &dst, PINGS, "0.01");
        let after = t.stats();
        assert_eq!(p.received, u64::from(PINGS), "{dst} after r-srv came back up: {p:?}");
        assert!(
            after.delta(&before, "r-c1", "forwarded") >= u64::from(PINGS),
            "XDP should forward to {dst} again once r-srv is up; stats:{after}"
        );
    }
}

#[test]
fn multipath_route_spreads_flows_over_both_next_hops() {
    if !privileged() {
        return;
    }
    let mut t = Topology::new(&[("c1", 1), ("s1", 3), ("s2", 4)]);
    add_service_addresses(&t, &["s1", "s2"]);
    t.start_daemon();
    for ((family, gw1), ((_, gw2), (prefix, dst, _))) in families(Subnet(3))
        .into_iter()
        .zip(families(Subnet(4)).into_iter().zip([SERVICE_V4, SERVICE_V6]))
    {
        ip(
            &t.router,
            &[family, "route", "add", prefix, "nexthop", "via", &gw1, "nexthop", "via", &gw2],
        );
        t.wait_route(prefix, &format!("ecmp via {gw1} and {gw2}"), |r| {
            r.is_some_and(|r| {
                r.action == "ecmp"
                    && r.via(&gw1).is_some_and(|n| n.dev == "r-s1")
                    && r.via(&gw2).is_some_and(|n| n.dev == "r-s2")
            })
        });
        let dst = SocketAddr::new(dst.parse().unwrap(), 9);
        // The first datagrams may find the next hops unresolved (and go to the kernel, which
        // does not forward): send until both links have carried some.
        let start = t.stats();
        wait_until(&format!("UDP flows to {dst} on both r-s1 and r-s2"), common::SETTLE, || {
            t.send_udp_flows("c1", dst, 16);
            let now = t.stats();
            (now.delta(&start, "r-s1", "transmitted") > 0
                && now.delta(&start, "r-s2", "transmitted") > 0)
                .then_some(())
        });

        let before = t.stats();
        t.send_udp_flows("c1", dst, FLOWS);
        // Counters are read right after sending; give the last frames a moment to be counted.
        let flows = FLOWS as u64;
        let after = wait_until("the datagrams to be counted", Duration::from_secs(2), || {
            let s = t.stats();
            (s.delta(&before, "r-c1", "forwarded") >= flows).then_some(s)
        });
        let (on_s1, on_s2) = (
            after.delta(&before, "r-s1", "transmitted"),
            after.delta(&before, "r-s2", "transmitted"),
        );
        eprintln!("{FLOWS} flows to {dst}: {on_s1} on r-s1, {on_s2} on r-s2");
        assert!(
            on_s1 + on_s2 >= flows,
            "{FLOWS} datagrams to {dst}: {on_s1} left on r-s1 and {on_s2} on r-s2; stats:{after}"
        );
        // With 128 flows hashed over two members, one getting none has probability 2^-127.
        assert!(
            on_s1 > 0 && on_s2 > 0,
            "{FLOWS} flows to {dst} over a two-way multipath route all took one link \
             (r-s1 {on_s1}, r-s2 {on_s2}); stats:{after}"
        );
        // A flow takes one path: the spread should be far from all-but-one.
        assert!(
            on_s1.min(on_s2) >= flows / 8,
            "{FLOWS} flows to {dst} spread unevenly: r-s1 {on_s1}, r-s2 {on_s2}"
        );
    }
}

#[test]
fn daemon_killed_mid_traffic_keeps_forwarding_and_restart_adopts_state() {
    if !privileged() {
        return;
    }
    let mut t = Topology::new(&[("c1", 1), ("srv", 3)]);
    t.start_daemon();
    let srv = Subnet(3);
    for (_, dst) in families(srv) {
        t.wait_ping("c1", &dst);
    }

    let v4 = spawn_ping(t.ns("c1"), &srv.host_v4(), COUNT, "0.01");
    let v6 = spawn_ping(t.ns("c1"), &srv.host_v6(), COUNT, "0.01");
    thread::sleep(Duration::from_millis(500));
    let before_kill = t.stats();
    t.kill_daemon();
    assert!(common::pinned(&t.pin_dir), "the pin directory must survive kill -9 of the daemon");

    // Without a daemon, XDP keeps forwarding from the pinned state.
    let alive =
        wait_until("forwarding to continue without the daemon", Duration::from_secs(2), || {
            let s = t.stats();
            (s.delta(&before_kill, "r-c1", "forwarded") >= 20).then_some(s)
        });
    let routes = t.routes();
    assert!(
        routes.iter().any(|r| r.prefix == srv.v4_prefix().parse().unwrap()),
        "the routes must stay pinned while the daemon is dead: {routes:#?}"
    );

    thread::sleep(Duration::from_millis(500));
    let before_restart = t.stats();
    t.start_daemon();
    let after_restart = t.stats();
    for iface in ["r-c1", "r-srv"] {
        for reason in ["forwarded", "transmitted"] {
            assert!(
                after_restart.get(iface, reason) >= before_restart.get(iface, reason),
                "the restarted daemon reset counter {iface}/{reason}: {} -> {}",
                before_restart.get(iface, reason),
                after_restart.get(iface, reason)
            );
        }
    }
    assert!(
        alive.get("r-c1", "forwarded") > 0 && before_kill.get("r-c1", "forwarded") > 0,
        "forwarded counters should be non-zero before and during the outage"
    );

    for (child, dst) in [(v4, srv.host_v4()), (v6, srv.host_v6())] {
        let p = finish_ping(child);
        eprintln!("ping {dst} across kill -9 and restart: {p:?}");
        assert_eq!(p.transmitted, u64::from(COUNT), "ping to {dst} did not run to the end: {p:?}");
        assert!(
            p.received + HANDFUL >= p.transmitted,
            "ping to {dst} lost {} of {} echo requests across kill -9 and restart of the daemon \
             (at most {HANDFUL} allowed)",
            p.transmitted - p.received,
            p.transmitted
        );
    }

    // The restarted daemon adopted the pinned state and mirrors the kernel again.
    let routes = t.routes();
    for prefix in [srv.v4_prefix(), srv.v6_prefix(), Subnet(1).v4_prefix(), Subnet(1).v6_prefix()] {
        assert!(
            routes.iter().any(|r| r.prefix == prefix.parse().unwrap()),
            "route {prefix} missing after the restart: {routes:#?}"
        );
    }
    ip(&t.router, &["route", "add", "10.98.0.0/24", "via", &srv.host_v4()]);
    t.wait_route("10.98.0.0/24", "present (mirrored by the restarted daemon)", |r| {
        r.is_some_and(|r| r.via(&srv.host_v4()).is_some())
    });
    let before = t.stats();
    let p = ping(t.ns("c1"), &srv.host_v4(), PINGS, "0.01");
    let after = t.stats();
    assert_eq!(p.received, u64::from(PINGS), "after the restart: {p:?}");
    assert!(
        after.delta(&before, "r-c1", "forwarded") >= u64::from(PINGS),
        "XDP should forward after the restart; stats:{after}"
    );
    t.assert_daemon_alive();
}

/// The nice value and name of each thread of process `pid`.
fn thread_priorities(pid: u32) -> Vec<(String, i32)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("the daemon's threads") {
        let dir = task.unwrap().path();
        let (Ok(comm), Ok(stat)) =
            (std::fs::read_to_string(dir.join("comm")), std::fs::read_to_string(dir.join("stat")))
        else {
            continue; // ended meanwhile
        };
        // proc_pid_stat(5): after "pid (comm) ", state is field 3 and nice field 19.
        let rest = &stat[stat.rfind(')').expect("comm in parentheses") + 2..];
        let nice = rest.split_whitespace().nth(16).expect("field 19").parse().unwrap();
        out.push((comm.trim_end().to_owned(), nice));
    }
    out
}

/// A routing daemon loading a full table competes with the mirror for the same cores: the
/// daemon's threads run at nice -10 by default (the route record's writer, started for large
/// batches, and the plugins at their own, lower priorities).
#[test]
fn the_mirror_runs_above_normal_priority() {
    if !privileged() {
        return;
    }
    let mut t = Topology::new(&[("c1", 1)]);
    t.start_daemon();
    let pid = t.daemon_pid().expect("started");
    let threads = wait_until("the runtime's two workers", Duration::from_secs(10), || {
        let threads = thread_priorities(pid);
        (threads.iter().filter(|(name, _)| name == "tokio-rt-worker").count() >= 2)
            .then_some(threads)
    });
    for (name, nice) in &threads {
        let want = match name.as_str() {
            "sluice-record" => 10,
            "sluice-plugins" => 0,
            _ => -10,
        };
        assert_eq!(*nice, want, "thread {name} of the daemon: {threads:?}");
    }
}

#[test]
fn detach_frees_the_interfaces_before_it_returns() {
    if !privileged() {
        return;
    }
    let mut t = Topology::new(&[("c1", 1), ("srv", 3)]);
    t.start_daemon();
    t.kill_daemon();
    let link = t.router.ip(&["-d", "link", "show", "dev", "r-c1"]).expect("ip link");
    assert!(link.contains("prog/xdp"), "the pinned link keeps XDP attached after kill -9: {link}");
    // Another XDP program, loaded beforehand, attached the moment detach returns: the kernel
    // refuses (EBUSY) while any link is on the interface, even one it is about to release.
    let attached = thread::scope(|s| {
        s.spawn(|| {
            t.router.enter().expect("enter the router namespace");
            let mut ebpf =
                aya::Ebpf::load(sluice_dataplane::EBPF_OBJECT).expect("load the dataplane object");
            let prog: &mut aya::programs::Xdp =
                ebpf.program_mut("sluice_xdp").expect("the program").try_into().expect("XDP");
            prog.load().expect("load sluice_xdp");
            let pin = sluice_dataplane::PinDir::new(&t.pin_dir);
            let detached = sluice_dataplane::detach_all(&pin, false).expect("detach");
            let id = prog.attach("r-c1", aya::programs::XdpMode::Driver);
            (detached, id.map(|id| prog.detach(id)).map_err(|e| format!("{e:#}")))
        })
        .join()
        .expect("the thread in the router namespace")
    });
    let (mut detached, result) = attached;
    detached.sort();
    assert_eq!(detached, ["r-c1", "r-srv"], "the interfaces detach reports");
    result.expect("attach right after detach").expect("detach the second program");
    assert!(!common::pinned(&t.pin_dir), "detach removes the pins");
}

#[test]
fn stats_say_what_the_lookup_tables_hold() {
    if !privileged() {
        return;
    }
    let mut t = Topology::new(&[("c1", 1), ("srv", 3)]);
    t.start_daemon();
    let tables = |t: &Topology| -> serde_json::Value {
        let text = t.sluice(&["stats", "--json"]);
        let stats: serde_json::Value = serde_json::from_str(&text).expect("stats JSON");
        stats["lookup_tables"].clone()
    };
    let count = |v: &serde_json::Value, path: [&str; 2]| {
        v[path[0]][path[1]].as_u64().unwrap_or_else(|| panic!("{path:?} in {v}"))
    };
    let before = tables(&t);
    assert_eq!(count(&before, ["ipv4", "groups_max"]), 16_384, "{before}");
    assert!(count(&before, ["ipv4", "bytes"]) >= 32 << 20, "the first level: {before}");
    // A /25 takes a second-level group of its own; a /48 and a /64 under one /32 take IPv6
    // nodes, the /64 too long for a compact node.
    let srv = Subnet(3);
    ip(&t.router, &["route", "add", "10.97.0.128/25", "via", &srv.host_v4()]);
    ip(&t.router, &["-6", "route", "add", "2001:db8:97::/48", "via", &srv.host_v6()]);
    ip(&t.router, &["-6", "route", "add", "2001:db8:97:1::/64", "via", &srv.host_v6()]);
    t.wait_route("2001:db8:97:1::/64", "present", |r| r.is_some());
    t.wait_route("10.97.0.128/25", "present", |r| r.is_some());
    let after = tables(&t);
    assert_eq!(
        count(&after, ["ipv4", "groups"]),
        count(&before, ["ipv4", "groups"]) + 1,
        "one group for the /25: {before} -> {after}"
    );
    assert_eq!(
        count(&after, ["ipv4", "bytes"]),
        count(&before, ["ipv4", "bytes"]) + 1024,
        "a group is 256 entries of 4 bytes: {before} -> {after}"
    );
    assert!(
        count(&after, ["ipv6", "nodes"]) > count(&before, ["ipv6", "nodes"]),
        "nodes for the /48 and the /64: {before} -> {after}"
    );
    let text = t.sluice(&["stats"]);
    assert!(text.contains("lookup tables: IPv4 "), "{text}");
    for prefix in ["10.97.0.128/25", "2001:db8:97:1::/64", "2001:db8:97::/48"] {
        ip(&t.router, &["route", "del", prefix]);
    }
    t.wait_route("2001:db8:97::/48", "absent", |r| r.is_none());
    t.wait_route("10.97.0.128/25", "absent", |r| r.is_none());
    // A group and nodes are released once no prefix needs them.
    let last = tables(&t);
    assert_eq!(last["ipv4"]["groups"], before["ipv4"]["groups"], "{last}");
    assert_eq!(last["ipv6"]["nodes"], before["ipv6"]["nodes"], "{last}");
}

#[test]
fn a_second_daemon_on_the_same_pin_directory_is_refused_and_the_first_keeps_forwarding() {
    if !privileged() {
        return;
    }
    let mut t = Topology::new(&[("c1", 1), ("srv", 3)]);
    t.start_daemon();
    let srv = t.host("srv").subnet.host_v4();
    t.wait_ping("c1", &srv);
    let first = t.daemon_pid().expect("the first daemon runs");

    // A second daemon on the same pin directory, attached to the same ports: refused before it
    // touches anything, naming the holder.
    let started = std::time::Instant::now();
    let out = t
        .router
        .command(common::SLUICE)
        .arg("--pin-dir")
        .arg(&t.pin_dir)
        .args(["daemon", "--attach", "r-c1", "--attach", "r-srv"])
        .output()
        .expect("run a second daemon");
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the second daemon must not run:\n{stderr}");
    assert!(stderr.contains(&format!("pid {first}")), "the refusal names the holder:\n{stderr}");
    assert!(took < Duration::from_secs(1), "refused in {took:?}, not at once");

    // `sluice detach` refuses too (after waiting for a daemon that would be stopping).
    let detach = t
        .router
        .command(common::SLUICE)
        .arg("--pin-dir")
        .arg(&t.pin_dir)
        .arg("detach")
        .output()
        .expect("run sluice detach");
    let detach_err = String::from_utf8_lossy(&detach.stderr);
    assert!(!detach.status.success(), "detach must refuse while the daemon runs:\n{detach_err}");
    assert!(detach_err.contains(&format!("pid {first}")), "{detach_err}");

    // The first daemon is untouched: alive, and its port still forwards every echo.
    t.assert_daemon_alive();
    let after = ping(t.ns("c1"), &srv, PINGS, "0.01");
    assert_eq!(after.received, u64::from(PINGS), "forwarding after the refused start: {after:?}");
    eprintln!(
        "second daemon refused in {} ms (holder pid {first}); detach refused; {}/{PINGS} echoes \
         crossed afterwards",
        took.as_millis(),
        after.received
    );
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    if !privileged() {
        return;
    }
    let mut t = Topology::new(&[("c1", 1)]);
    t.start_daemon();
    for args in [&["routes"][..], &["routes", "--json"], &["stats"], &["hooks"]] {
        // `sluice routes | head -0`: the reader is gone before the first line is written.
        let mut child = std::process::Command::new(common::SLUICE)
            .arg("--pin-dir")
            .arg(&t.pin_dir)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn sluice");
        drop(child.stdout.take());
        let out = child.wait_with_output().expect("wait for sluice");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let by_sigpipe =
            std::os::unix::process::ExitStatusExt::signal(&out.status) == Some(libc::SIGPIPE);
        assert!(
            out.status.success() || by_sigpipe,
            "sluice {args:?} into a closed pipe: {:?}\n{stderr}",
            out.status
        );
        assert!(!stderr.contains("panicked"), "sluice {args:?} panicked:\n{stderr}");
    }
}
