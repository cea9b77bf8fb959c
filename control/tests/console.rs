//! The web console in a real browser: headless Chromium driven by Playwright
//! (`web-ui/tests/console.mjs`) against a daemon in a namespace lab. The script sets the router
//! up, logs in, sees live counters and c1 (pinging the server) among the top talkers, gets a
//! bad prefix's error beside the field, adds a static
//! route, leaves a commit-confirm unconfirmed, uploads the `ddos-guard` plugin, stages a
//! candidate and sees its diff, gets a bad candidate's error, restores a backup and walks the
//! Routing page (the daemon runs BIRD: a neighbour it refuses, one added, disabled, removed); this side
//! checks that the route made traffic flow between the lab's hosts, that the unconfirmed one
//! left the kernel, that the restored backup's route reached it, and that the plugin blocks a
//! client that floods. Screenshots of each
//! page are written to `artifacts/console/`. Needs root, Node.js, `npm ci` in `web-ui/tests`
//! and Debian's chromium (`make test` installs them).

#[allow(dead_code, reason = "shared by the namespace test crates, which use different parts")]
mod common;

use std::{path::PathBuf, time::Duration};

use common::{Topology, finish_ping, ip, ping, privileged, spawn_ping, wait_until};
use sluice::plugins::sha256_hex;
use sluice_testbed::{lab::Subnet, netns};

/// A directory removed on drop.
struct Remove(PathBuf);

impl Drop for Remove {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn the_console_sets_up_logs_in_adds_a_route_that_carries_traffic_and_a_commit_rolls_back() {
    if !privileged() {
        return;
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let script = root.join("web-ui/tests/console.mjs");
    assert!(
        root.join("web-ui/tests/node_modules/playwright-core").exists(),
        "run `npm ci` in web-ui/tests first (make test does)"
    );
    let artifacts = root.join("artifacts/console");
    std::fs::create_dir_all(&artifacts).expect("artifacts directory");
    let state = Remove(std::env::temp_dir().join(netns::unique_name("sluice-console-")));
    std::fs::create_dir_all(&state.0).expect("state directory");

    // The plugin the console uploads, and its (unsigned) manifest.
    let wasm = root.join("plugins/target/wasm32-wasip2/release/ddos_guard.wasm");
    let bytes =
        std::fs::read(&wasm).unwrap_or_else(|e| panic!("{}: {e}; make plugins", wasm.display()));
    let manifest = state.0.join("ddos-guard.json");
    let m = serde_json::json!({"name": "ddos-guard", "version": "0.1.0",
                               "tables": ["filter", "sample"], "sha256": sha256_hex(&bytes)});
    std::fs::write(&manifest, m.to_string()).expect("manifest");

    let mut t = Topology::new(&[("c1", 1), ("srv", 3)]);
    // The service exists only on the server's loopback: only the console's route reaches it.
    ip(t.ns("srv"), &["addr", "add", "10.99.0.1/32", "dev", "lo"]);
    let dir = state.0.to_str().expect("UTF-8 path").to_owned();
    t.start_daemon_with(&[
        "--state-dir",
        &dir,
        "--listen",
        "127.0.0.1:8443",
        "--allow-unsigned-plugins",
        "--bird",
        "bird",
    ]);
    let token_file = state.0.join("setup-token");
    let token = wait_until("the setup token", Duration::from_secs(10), || {
        std::fs::read_to_string(&token_file).ok()
    });
    assert_eq!(ping(t.ns("c1"), "10.99.0.1", 2, "0.2").received, 0, "no route yet");
    // A spare port the console attaches and detaches.
    let spare = netns::unique_name("slx");
    t.router
        .ip(&["link", "add", &spare, "type", "veth", "peer", "name", &format!("{spare}p")])
        .expect("a spare veth");

    // Traffic for the dashboard's top talkers: c1 pings the server 200 times a second for 10 s.
    let pinger = spawn_ping(t.ns("c1"), &Subnet(3).host_v4(), 2000, "0.005");
    let out = t
        .router
        .command("node")
        .arg(&script)
        .env("BASE", "https://127.0.0.1:8443")
        .env("SETUP_TOKEN", token.trim())
        .env("ARTIFACTS", &artifacts)
        .env("GATEWAY", Subnet(3).host_v4())
        .env("CLIENT", Subnet(1).host_v4())
        .env("SERVICE", "10.99.0.0/24")
        .env("TRIAL", "10.98.0.0/24")
        .env("RESTORED", "10.97.0.0/24")
        .env("SPARE", &spare)
        .env("PLUGIN_WASM", &wasm)
        .env("PLUGIN_MANIFEST", &manifest)
        .output()
        .expect("run node");
    finish_ping(pinger);
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the console script failed:\n{text}\n{}", t.log_tail(20));

    wait_until("traffic to the route added in the console", Duration::from_secs(10), || {
        (ping(t.ns("c1"), "10.99.0.1", 3, "0.2").received > 0).then_some(())
    });
    let kernel = t.router.run("ip", &["route", "show", "proto", "238"]).expect("ip route");
    assert!(kernel.contains("10.99.0.0/24") && !kernel.contains("10.98.0.0/24"), "{kernel}");
    assert!(kernel.contains("10.97.0.0/24"), "the route of the restored backup: {kernel}");
    the_plugin_blocks_a_client_that_floods(&t);
    for page in [
        "setup",
        "login",
        "dashboard",
        "routes-bad-prefix",
        "routes",
        "config-countdown",
        "config",
        "plugins",
        "interfaces",
        "users",
        "audit",
        "diagnostics",
        "config-diff",
        "config-bad-candidate",
        "config-restored",
        "interfaces-attached",
        "routing",
    ] {
        assert!(artifacts.join(format!("{page}.png")).exists(), "a screenshot of {page}");
    }
}

/// The plugin uploaded in the console blocks c1 when it floods the server.
fn the_plugin_blocks_a_client_that_floods(t: &Topology) {
    let target: std::net::SocketAddr =
        format!("{}:9", Subnet(3).host_v4()).parse().expect("address");
    std::thread::scope(|s| {
        let c1 = t.ns("c1");
        s.spawn(move || {
            c1.enter().expect("enter c1");
            let socket = std::net::UdpSocket::bind("0.0.0.0:0").expect("socket");
            let end = std::time::Instant::now() + Duration::from_secs(4);
            while std::time::Instant::now() < end {
                let _ = socket.send_to(b"flood", target);
                std::thread::sleep(Duration::from_micros(200));
            }
        });
        wait_until("the flooding client is blocked", Duration::from_secs(10), || {
            (t.stats().get("r-c1", "drop_filtered") > 100).then_some(())
        });
    });
}
