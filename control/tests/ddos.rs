//! Plugins in the daemon, end to end (`--plugins DIR`) against the real dataplane: the
//! `ddos-guard` example blocks a client that floods a server while another client's traffic
//! keeps flowing, and lifts the block after its cool-down; a plugin hears of route changes and
//! counter snapshots. Needs root, like `netns.rs`; the plugins are built by `make plugins`.

#[allow(dead_code, reason = "shared by the namespace test crates, which use different parts")]
mod common;

use std::{
    net::{SocketAddr, UdpSocket},
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use common::{Topology, ip, ping, ping_briefly, privileged, wait_until};
use sluice::{
    lab::Subnet,
    netns,
    plugins::{Manifest, sha256_hex},
};

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
