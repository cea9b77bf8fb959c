//! The web console in a real browser: headless Chromium driven by Playwright
//! (`web-ui/tests/console.mjs`) against a daemon in a namespace lab. The script sets the router
//! up, logs in, sees live counters, gets a bad prefix's error beside the field, adds a static
//! route and leaves a commit-confirm unconfirmed; this side checks that the route made traffic
//! flow between the lab's hosts and that the unconfirmed one left the kernel. Screenshots of each
//! page are written to `artifacts/console/`. Needs root, Node.js, `npm ci` in `web-ui/tests`
//! and Debian's chromium (`make test` installs them).

#[allow(dead_code, reason = "shared by the namespace test crates, which use different parts")]
mod common;

use std::{path::PathBuf, time::Duration};

use common::{Topology, ip, ping, privileged, wait_until};
use sluice::{lab::Subnet, netns};

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

    let mut t = Topology::new(&[("c1", 1), ("srv", 3)]);
    // The service exists only on the server's loopback: only the console's route reaches it.
    ip(t.ns("srv"), &["addr", "add", "10.99.0.1/32", "dev", "lo"]);
    let dir = state.0.to_str().expect("UTF-8 path").to_owned();
    t.start_daemon_with(&["--state-dir", &dir, "--listen", "127.0.0.1:8443"]);
    let token_file = state.0.join("setup-token");
    let token = wait_until("the setup token", Duration::from_secs(10), || {
        std::fs::read_to_string(&token_file).ok()
    });
    assert_eq!(ping(t.ns("c1"), "10.99.0.1", 2, "0.2").received, 0, "no route yet");

    let out = t
        .router
        .command("node")
        .arg(&script)
        .env("BASE", "https://127.0.0.1:8443")
        .env("SETUP_TOKEN", token.trim())
        .env("ARTIFACTS", &artifacts)
        .env("GATEWAY", Subnet(3).host_v4())
        .env("SERVICE", "10.99.0.0/24")
        .env("TRIAL", "10.98.0.0/24")
        .output()
        .expect("run node");
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the console script failed:\n{text}\n{}", t.log_tail(20));

    wait_until("traffic to the route added in the console", Duration::from_secs(10), || {
        (ping(t.ns("c1"), "10.99.0.1", 3, "0.2").received > 0).then_some(())
    });
    let kernel = t.router.run("ip", &["route", "show", "proto", "238"]).expect("ip route");
    assert!(kernel.contains("10.99.0.0/24") && !kernel.contains("10.98.0.0/24"), "{kernel}");
    for page in
        ["setup", "login", "dashboard", "routes-bad-prefix", "routes", "config-countdown", "config"]
    {
        assert!(artifacts.join(format!("{page}.png")).exists(), "a screenshot of {page}");
    }
}
