//! Static routes of the configuration reach the kernel (`sluice::apply`), marked with Sluice's
//! protocol number, and reconciling removes only Sluice's own routes. In a network namespace of
//! the test's own; needs root like the other namespace tests.

#[allow(dead_code, reason = "shared by the namespace test crates, which use different parts")]
mod common;

use sluice_dataplane::apply::{RTPROT_SLUICE, apply_interfaces, apply_routes};
use sluice_store::StaticRoute;
use sluice_testbed::netns::{self, NetNs};

fn route(prefix: &str, via: Option<&str>, dev: Option<&str>, metric: u32) -> StaticRoute {
    StaticRoute {
        prefix: prefix.parse().expect("prefix"),
        via: via.map(|v| v.parse().expect("address")),
        dev: dev.map(str::to_owned),
        metric,
    }
}

/// Runs `f` with an rtnetlink handle of `ns` (netlink sockets belong to the namespace that
/// opens them).
fn in_ns<T: Send, F: Future<Output = T>>(
    ns: &NetNs,
    f: impl FnOnce(rtnetlink::Handle) -> F + Send,
) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            ns.enter().expect("enter the namespace");
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let (conn, handle, _) = rtnetlink::new_connection().expect("rtnetlink");
                tokio::spawn(conn);
                f(handle).await
            })
        })
        .join()
        .expect("the applying thread")
    })
}

/// Applies `routes` in `ns`.
fn apply(ns: &NetNs, routes: &[StaticRoute]) -> sluice_dataplane::apply::Applied {
    in_ns(ns, |h| async move { apply_routes(&h, routes).await.expect("applied") })
}

fn ours(ns: &NetNs, family: &str) -> String {
    ns.ip(&[family, "route", "show", "proto", &RTPROT_SLUICE.to_string()]).expect("ip route")
}

#[test]
fn static_routes_reach_the_kernel_and_only_sluice_routes_are_reconciled() {
    if !common::privileged() {
        return;
    }
    let ns = NetNs::create(&netns::unique_name("sla")).expect("namespace");
    for cmd in [
        "link add name va type veth peer name vb",
        "link set va up",
        "link set vb up",
        "addr add 192.0.2.1/24 dev va",
        "addr add 2001:db8:a::1/64 dev va nodad",
        // Someone else's route, which Sluice must leave alone.
        "route add 10.99.0.0/16 via 192.0.2.200 proto static",
    ] {
        ns.ip(&cmd.split(' ').collect::<Vec<_>>()).unwrap_or_else(|e| panic!("{cmd}: {e:#}"));
    }
    let first = [
        route("10.77.0.0/16", Some("192.0.2.254"), None, 0),
        route("2001:db8:77::/48", Some("2001:db8:a::fe"), None, 0),
    ];
    let done = apply(&ns, &first);
    assert_eq!(done.set.len(), 2);
    assert!(ours(&ns, "-4").contains("10.77.0.0/16 via 192.0.2.254"), "{}", ours(&ns, "-4"));
    assert!(ours(&ns, "-6").contains("2001:db8:77::/48 via 2001:db8:a::fe"), "{}", ours(&ns, "-6"));

    // Applying again changes nothing (and sends nothing); a new gateway is set; a new set
    // replaces the old one.
    let again = apply(&ns, &first);
    assert!(again.removed.is_empty() && again.set.is_empty(), "{again:?}");
    let moved = [route("10.77.0.0/16", Some("192.0.2.253"), None, 0), first[1].clone()];
    assert_eq!(apply(&ns, &moved).set, ["10.77.0.0/16 metric 0"]);
    assert!(ours(&ns, "-4").contains("10.77.0.0/16 via 192.0.2.253"), "{}", ours(&ns, "-4"));
    let second = [route("10.78.0.0/16", None, Some("va"), 5)];
    let done = apply(&ns, &second);
    assert_eq!(done.removed.len(), 2, "{done:?}");
    let v4 = ours(&ns, "-4");
    assert!(v4.contains("10.78.0.0/16 dev va") && v4.contains("metric 5"), "{v4}");
    assert!(!v4.contains("10.77.0.0/16") && ours(&ns, "-6").trim().is_empty(), "{v4}");

    apply(&ns, &[]);
    assert!(ours(&ns, "-4").trim().is_empty());
    let all = ns.ip(&["-4", "route", "show"]).expect("ip route");
    assert!(all.contains("10.99.0.0/16 via 192.0.2.200"), "others' routes stay: {all}");

    // A route through an interface that does not exist is refused, naming it.
    let bad = [route("10.79.0.0/16", None, Some("nope0"), 0)];
    let err = in_ns(&ns, |h| async move { apply_routes(&h, &bad).await }).unwrap_err();
    assert!(err.to_string().contains("no interface named \"nope0\""), "{err}");
}

#[test]
fn interface_settings_reach_the_kernel_and_only_sluice_addresses_are_reconciled() {
    if !common::privileged() {
        return;
    }
    let ns = NetNs::create(&netns::unique_name("sli")).expect("namespace");
    for cmd in [
        "link add name va type veth peer name vb",
        // Someone else's address, which Sluice must leave alone.
        "addr add 198.51.100.1/24 dev va",
    ] {
        ns.ip(&cmd.split(' ').collect::<Vec<_>>()).unwrap_or_else(|e| panic!("{cmd}: {e:#}"));
    }
    let iface = |addrs: &[&str], mtu: Option<u32>, up: bool| sluice_store::Interface {
        attach: false,
        xdp_mode: sluice_store::XdpMode::Auto,
        addresses: addrs.iter().map(|a| a.parse().expect("address")).collect(),
        mtu,
        up,
    };
    let first = std::collections::BTreeMap::from([
        ("va".to_owned(), iface(&["192.0.2.1/24", "2001:db8:5::1/64"], Some(1400), true)),
        ("nope0".to_owned(), iface(&[], None, true)),
    ]);
    let done = in_ns(&ns, |h| async move { apply_interfaces(&h, &first).await.expect("applied") });
    assert_eq!(done.missing, ["nope0"]);
    assert_eq!(done.added.len(), 2, "{done:?}");
    let link = ns.ip(&["link", "show", "va"]).expect("ip link");
    assert!(link.contains("mtu 1400") && link.contains(",UP"), "{link}");
    let all = ns.ip(&["address", "show", "dev", "va"]).expect("ip address");
    assert!(all.contains("192.0.2.1/24") && all.contains("2001:db8:5::1/64"), "{all}");

    // The IPv6 address leaves the configuration: only Sluice's goes.
    let second =
        std::collections::BTreeMap::from([("va".to_owned(), iface(&["192.0.2.1/24"], None, true))]);
    let done = in_ns(&ns, |h| async move { apply_interfaces(&h, &second).await.expect("applied") });
    assert_eq!(done.removed.len(), 1, "{done:?}");
    let all = ns.ip(&["address", "show", "dev", "va"]).expect("ip address");
    assert!(!all.contains("2001:db8:5::1"), "{all}");
    assert!(all.contains("192.0.2.1/24") && all.contains("198.51.100.1/24"), "others' stay: {all}");
    let down = std::collections::BTreeMap::from([(
        "va".to_owned(),
        iface(&["192.0.2.1/24"], None, false),
    )]);
    in_ns(&ns, |h| async move { apply_interfaces(&h, &down).await.expect("applied") });
    assert!(!ns.ip(&["link", "show", "va"]).expect("ip link").contains(",UP"), "down");

    // Without interfaces in the configuration, Sluice's addresses go; others' stay.
    let none = std::collections::BTreeMap::new();
    in_ns(&ns, |h| async move { apply_interfaces(&h, &none).await.expect("applied") });
    let all = ns.ip(&["address", "show", "dev", "va"]).expect("ip address");
    assert!(!all.contains("192.0.2.1/24") && all.contains("198.51.100.1/24"), "{all}");
}

/// A directory removed on drop.
struct Remove(std::path::PathBuf);

impl Drop for Remove {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn the_daemon_applies_the_stored_static_routes_and_the_dataplane_carries_them() {
    if !common::privileged() {
        return;
    }
    let state = std::env::temp_dir().join(netns::unique_name("sluice-state-"));
    let _cleanup = Remove(state.clone());
    let server = sluice_testbed::lab::Subnet(3).host_v4();
    {
        let store = sluice_store::Store::open(&state.join("db")).expect("store");
        let mut config = sluice_store::Config::default();
        config.routes.push(route("10.88.0.0/16", Some(&server), None, 0));
        store.stage(&config).expect("valid");
        let author = sluice_store::Author {
            who: "test".into(),
            from: "cli".into(),
            message: "stored".into(),
        };
        store.commit(&author).expect("committed");
    } // closed: the daemon opens it.
    let mut t = common::Topology::new(&[("c1", 1), ("srv", 3)]);
    t.start_daemon_with(&["--state-dir", state.to_str().expect("UTF-8 path")]);
    common::wait_until("the stored route in the kernel", common::SETTLE, || {
        ours(&t.router, "-4").contains("10.88.0.0/16").then_some(())
    });
    t.wait_route("10.88.0.0/16", "the stored route in the dataplane", |r| r.is_some());
}

/// A routed port of the configuration that appears after the start (a NIC hot-plugged, a veth
/// made later) is attached with XDP, given the configuration's address and forwards.
#[test]
fn a_configured_port_that_appears_later_is_attached_and_given_its_settings() {
    if !common::privileged() {
        return;
    }
    let state = std::env::temp_dir().join(netns::unique_name("sluice-state-"));
    let _cleanup = Remove(state.clone());
    {
        let store = sluice_store::Store::open(&state.join("db")).expect("store");
        let mut config = sluice_store::Config::default();
        let port = serde_json::json!({"addresses": ["10.77.99.1/24"]});
        config.interfaces.insert("r-hot".into(), serde_json::from_value(port).expect("interface"));
        store.stage(&config).expect("valid");
        let author = sluice_store::Author {
            who: "test".into(),
            from: "cli".into(),
            message: "a port that is not there yet".into(),
        };
        store.commit(&author).expect("committed");
    }
    let mut t = common::Topology::new(&[("c1", 1)]);
    t.start_daemon_with(&["--state-dir", state.to_str().expect("UTF-8 path")]);
    common::wait_until("the daemon reports the missing port", common::SETTLE, || {
        t.log_tail(200).contains("not there (yet)").then_some(())
    });

    // The port appears, with a host behind it.
    let host =
        sluice_testbed::lab::host_namespace(&netns::unique_name("slhot")).expect("host namespace");
    let subnet = sluice_testbed::lab::Subnet(5);
    let appeared = std::time::Instant::now();
    sluice_testbed::lab::connect(&t.router, "r-hot", &host, subnet).expect("link the host");
    common::wait_until("r-hot attached and given its address", common::SETTLE, || {
        let link = t.router.ip(&["link", "show", "r-hot"]).unwrap_or_default();
        let addrs = t.router.ip(&["-4", "addr", "show", "r-hot"]).unwrap_or_default();
        (link.contains("xdp") && addrs.contains("10.77.99.1/24")).then_some(())
    });
    let settled = appeared.elapsed();
    let c1 = t.host("c1").subnet.host_v4();
    common::wait_until("c1 through the new port", common::SETTLE, || {
        (common::ping(&host, &c1, 1, "0.2").received == 1).then_some(())
    });
    let before = t.stats();
    let pings = common::ping(&host, &c1, 100, "0.01");
    let forwarded = t.stats().delta(&before, "r-hot", "forwarded");
    println!(
        "hot-plugged port: attached with its address {settled:?} after it appeared; {}/{} pings, \
         {forwarded} forwarded by XDP from it",
        pings.received, pings.transmitted
    );
    assert!(pings.received >= 95, "{pings:?}");
    assert!(forwarded >= pings.received, "forwarded by XDP from r-hot: {forwarded}");
}
