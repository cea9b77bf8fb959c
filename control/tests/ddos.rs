//! Plugins in the daemon, end to end (`--plugins DIR`) against the real dataplane: the
//! `ddos-guard` example blocks a client that floods a server while another client's traffic
//! keeps flowing, and lifts the block after its cool-down; `ecmp-steer` moves and weights flows
//! between gateways against what the routes say, and lets the routes decide again when its
//! gateway is no longer a usable next hop; a plugin hears of route changes and counter snapshots. Needs root, like `netns.rs`; the plugins are built by `make plugins`.

#[allow(dead_code, reason = "shared by the namespace test crates, which use different parts")]
mod common;

use std::{
    net::{SocketAddr, UdpSocket},
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use common::{Stats, Topology, ip, ping, ping_briefly, privileged, wait_until};
use sluice::plugins::{Manifest, sha256_hex};
use sluice_testbed::{lab::Subnet, netns};

/// A directory with the plugin, its manifest and configuration; removed on drop.
struct PluginDir(PathBuf);

impl Drop for PluginDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A new plugin directory, and the component `name` that `make plugins` built.
fn plugin_dir(name: &str) -> (PluginDir, Vec<u8>) {
    let wasm_path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../plugins/target/wasm32-wasip2/release/{name}.wasm"));
    let wasm = std::fs::read(&wasm_path).unwrap_or_else(|e| {
        panic!("{}: {e}; build the plugins first with `make plugins`", wasm_path.display())
    });
    let dir = PluginDir(std::env::temp_dir().join(netns::unique_name("sluice-plugins-")));
    std::fs::create_dir_all(&dir.0).expect("plugin directory");
    (dir, wasm)
}

fn ddos_guard_dir() -> PluginDir {
    let (dir, wasm) = plugin_dir("ddos_guard");
    // Signed by a publisher the daemon is told to trust.
    let mut manifest: Manifest = serde_json::from_value(serde_json::json!({
        "name": "ddos-guard",
        "version": "0.1.0",
        "tables": ["filter", "sample"],
        "failure_policy": "fail-open",
        "sha256": sha256_hex(&wasm),
    }))
    .expect("manifest");
    manifest.sign(&[42; 32]);
    let publisher = manifest.publisher.clone().expect("signed");
    std::fs::write(dir.0.join("trusted-keys"), format!("{publisher}\n")).expect("keys");
    let manifest = serde_json::to_string(&manifest).expect("json");
    std::fs::write(dir.0.join("ddos-guard.json"), manifest).expect("manifest");
    std::fs::write(dir.0.join("ddos-guard.wasm"), &wasm).expect("component");
    std::fs::write(
        dir.0.join("ddos-guard.config.json"),
        r#"{"max_pps": 300, "sample_every": 1, "block_ms": 3000}"#,
    )
    .expect("configuration");
    dir
}

#[test]
fn ddos_guard_blocks_a_flooding_client_while_another_keeps_going_then_lifts_the_block() {
    if !privileged() {
        return;
    }
    let plugins = ddos_guard_dir();
    let mut t = Topology::new(&[("c1", 1), ("c2", 2), ("srv", 3)]);
    let keys = plugins.0.join("trusted-keys");
    t.start_daemon_with(&[
        "--plugins",
        plugins.0.to_str().expect("UTF-8 path"),
        "--trusted-keys",
        keys.to_str().expect("UTF-8 path"),
    ]);
    let server = Subnet(3).host_v4();
    t.wait_ping("c1", &server);
    t.wait_ping("c2", &server);

    // c1 floods the server with UDP for four seconds (far over 300 packets/s).
    let target: SocketAddr = format!("{server}:9").parse().expect("address");
    thread::scope(|s| {
        let c1 = t.ns("c1");
        s.spawn(move || {
            c1.enter().expect("enter c1");
            let socket = UdpSocket::bind("0.0.0.0:0").expect("socket");
            let end = Instant::now() + Duration::from_secs(4);
            while Instant::now() < end {
                let _ = socket.send_to(b"flood", target);
                thread::sleep(Duration::from_micros(200));
            }
        });
        wait_until("the flooding client is blocked", Duration::from_secs(10), || {
            (t.stats().get("r-c1", "drop_filtered") > 100).then_some(())
        });
        let p = ping(t.ns("c2"), &server, 10, "0.1");
        assert_eq!(p.received, 10, "the other client's traffic flows: {p:?}");
    });
    assert!(
        ping_briefly(t.ns("c1"), &server, 3).received == 0,
        "the flooding client stays blocked for its cool-down"
    );
    wait_until("the block is lifted", Duration::from_secs(15), || {
        (ping_briefly(t.ns("c1"), &server, 3).received == 3).then_some(())
    });
    let after = t.stats();
    assert!(after.get("r-c2", "drop_filtered") == 0, "c2 was never filtered");
}

/// A directory with the `ecmp-steer` example, unsigned, and its configuration.
fn ecmp_steer_dir(config: &serde_json::Value) -> PluginDir {
    let (dir, wasm) = plugin_dir("ecmp_steer");
    let manifest = serde_json::json!({
        "name": "ecmp-steer",
        "version": "0.1.0",
        "tables": ["steer"],
        "sha256": sha256_hex(&wasm),
    });
    std::fs::write(dir.0.join("ecmp-steer.json"), manifest.to_string()).expect("manifest");
    std::fs::write(dir.0.join("ecmp-steer.wasm"), &wasm).expect("component");
    std::fs::write(dir.0.join("ecmp-steer.config.json"), config.to_string()).expect("config");
    dir
}

/// Sends `FLOWS` one-datagram UDP flows from c1 to `dst` and returns how many frames left the
/// router on r-s1 and on r-s2.
fn spread(t: &Topology, dst: &str) -> (u64, u64) {
    const FLOWS: usize = 128;
    let before = t.stats();
    t.send_udp_flows("c1", format!("{dst}:9").parse().expect("address"), FLOWS);
    let after: Stats = wait_until("the datagrams to be counted", Duration::from_secs(3), || {
        let s = t.stats();
        (s.delta(&before, "r-c1", "forwarded") >= FLOWS as u64).then_some(s)
    });
    (after.delta(&before, "r-s1", "transmitted"), after.delta(&before, "r-s2", "transmitted"))
}

#[test]
fn ecmp_steer_moves_and_weights_flows_and_the_routes_decide_when_its_gateway_goes() {
    if !privileged() {
        return;
    }
    let (s1, s2) = (Subnet(3).host_v4(), Subnet(4).host_v4());
    let plugins = ecmp_steer_dir(&serde_json::json!({"rules": [
        {"prefix": "203.0.113.0/24", "next-hops": [{"via": s1, "weight": 3}, {"via": s2}]},
        // The name before the WIT's, still read.
        {"prefix": "192.0.2.0/24", "next_hops": [{"via": s2}]},
    ]}));
    let mut t = Topology::new(&[("c1", 1), ("s1", 3), ("s2", 4)]);
    // The routes send both prefixes to s1; s2 is the next hop of another route only.
    for prefix in ["203.0.113.0/24", "192.0.2.0/24"] {
        ip(&t.router, &["route", "add", prefix, "via", &s1]);
    }
    ip(&t.router, &["route", "add", "198.51.100.0/24", "via", &s2]);
    let dir = plugins.0.to_str().expect("UTF-8 path");
    t.start_daemon_with(&["--plugins", dir, "--allow-unsigned-plugins"]);
    t.wait_ping("c1", &s1);
    t.wait_ping("c1", &s2);
    wait_until("the steer rules", Duration::from_secs(10), || {
        has_rule(&t, "192.0.2.0/24").then_some(())
    });
    // The first datagrams may find a gateway unresolved: send until both links carried some.
    wait_until("steered flows on both links", Duration::from_secs(10), || {
        let (on_s1, on_s2) = spread(&t, "203.0.113.9");
        (on_s1 > 0 && on_s2 > 0).then_some(())
    });

    let (on_s1, on_s2) = spread(&t, "192.0.2.9");
    assert_eq!((on_s1, on_s2), (0, 128), "every flow to 192.0.2.0/24 is steered to s2");
    let (on_s1, on_s2) = spread(&t, "203.0.113.9");
    eprintln!("128 flows to 203.0.113.0/24 weighted 3:1: {on_s1} via s1, {on_s2} via s2");
    assert_eq!(on_s1 + on_s2, 128);
    // Binomial(128, 1/4) for s2: mean 32, standard deviation 4.9.
    assert!((8..=56).contains(&on_s2), "s2 should carry about a quarter: {on_s1} / {on_s2}");
    let v: serde_json::Value =
        serde_json::from_str(&t.sluice(&["hooks", "--json"])).expect("sluice hooks --json");
    let steered = v["rules"]
        .as_array()
        .and_then(|rules| rules.iter().find(|r| r["rule"]["prefix"] == "192.0.2.0/24"))
        .expect("the rule is listed");
    assert_eq!(steered["rule"]["op"], "set-steer");
    assert!(steered["packets"].as_u64() >= Some(128), "counted on the rule: {steered}");

    // s2's link goes down, and s2 with it as a next hop: its share goes back to the routes.
    ip(&t.router, &["link", "set", "r-s2", "down"]);
    wait_until("flows to 192.0.2.0/24 follow the route again", Duration::from_secs(10), || {
        (spread(&t, "192.0.2.9") == (128, 0)).then_some(())
    });
    let (on_s1, on_s2) = spread(&t, "203.0.113.9");
    assert_eq!((on_s1, on_s2), (128, 0), "s1 carries all of 203.0.113.0/24 without s2");
    t.assert_daemon_alive();
}

/// A directory with the hostile test plugin, unsigned, echoing the events it gets.
fn echo_dir() -> PluginDir {
    let (dir, wasm) = plugin_dir("hostile");
    let manifest = serde_json::json!({
        "name": "echo",
        "version": "0.1.0",
        "tables": ["filter"],
        "sha256": sha256_hex(&wasm),
    });
    std::fs::write(dir.0.join("echo.json"), manifest.to_string()).expect("manifest");
    std::fs::write(dir.0.join("echo.wasm"), &wasm).expect("component");
    std::fs::write(dir.0.join("echo.config.json"), "echo-events").expect("configuration");
    dir
}

/// Whether `sluice hooks --json` lists a filter rule on `prefix`.
fn has_rule(t: &Topology, prefix: &str) -> bool {
    let v: serde_json::Value =
        serde_json::from_str(&t.sluice(&["hooks", "--json"])).expect("sluice hooks --json");
    v["rules"].as_array().is_some_and(|rules| rules.iter().any(|r| r["rule"]["prefix"] == prefix))
}

#[test]
fn a_plugin_hears_of_route_changes_and_counter_snapshots() {
    if !privileged() {
        return;
    }
    let plugins = echo_dir();
    let mut t = Topology::new(&[("c1", 1), ("srv", 3)]);
    let dir = plugins.0.to_str().expect("UTF-8 path");
    t.start_daemon_with(&["--plugins", dir, "--allow-unsigned-plugins"]);
    let server = Subnet(3).host_v4();
    t.wait_ping("c1", &server);
    ip(&t.router, &["route", "add", "10.77.0.0/24", "via", &server]);
    wait_until("a rule for the new route", Duration::from_secs(10), || {
        has_rule(&t, "10.77.0.0/24").then_some(())
    });
    wait_until("the rule of a counter snapshot", Duration::from_secs(15), || {
        has_rule(&t, "198.18.255.255/32").then_some(())
    });
    ip(&t.router, &["route", "del", "10.77.0.0/24"]);
    wait_until("the route's rule gone with it", Duration::from_secs(10), || {
        (!has_rule(&t, "10.77.0.0/24")).then_some(())
    });
}

#[test]
fn a_plugin_asks_where_an_address_goes_and_which_interfaces_are_served() {
    if !privileged() {
        return;
    }
    let plugins = echo_dir();
    std::fs::write(plugins.0.join("echo.config.json"), "queries").expect("configuration");
    let mut t = Topology::new(&[("c1", 1), ("srv", 3)]);
    let server = Subnet(3).host_v4();
    ip(&t.router, &["route", "add", "10.77.0.0/24", "via", &server]);
    let dir = plugins.0.to_str().expect("UTF-8 path");
    t.start_daemon_with(&["--plugins", dir, "--allow-unsigned-plugins"]);
    // The route via the server is forwarded once its neighbour is known.
    t.wait_ping("c1", &server);
    wait_until("a rule on the gateway lookup-route names", Duration::from_secs(10), || {
        has_rule(&t, &format!("{server}/32")).then_some(())
    });
    wait_until("a rule counting the two interfaces", Duration::from_secs(10), || {
        has_rule(&t, "198.18.2.0/24").then_some(())
    });
}
