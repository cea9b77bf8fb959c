//! The hostile-plugin tier: a daemon forwarding between real namespaces runs, beside a plugin
//! that blocks one client, a plugin per misbehaviour (squatting the blocker's prefix, a more
//! specific `pass` under its drop, filling a table past its quota, a match-all drop, a
//! key-value rewrite loop, log lines of 1 MiB and not UTF-8, a guest panic, an endless loop to
//! its deadline, memory growth to its cap, a flood of operations). The daemon stays up and
//! bounded, the blocked client stays blocked, the other client's traffic flows, and the
//! key-value store stays within its bound on disk; the figures (RSS, disk, ping loss) are
//! printed. Needs root, like `netns.rs`; the plugins are built by `make plugins`.

#[allow(dead_code, reason = "shared by the namespace test crates, which use different parts")]
mod common;

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use common::{Topology, ping, ping_briefly, privileged, wait_until};
use sluice::plugins::sha256_hex;
use sluice_testbed::{lab::Subnet, netns};

/// How long the hostile plugins run beside the others.
const SOAK: Duration = Duration::from_secs(40);

/// How long the key-value rewrite through the API runs: `SLUICE_KV_SOAK_SECS` seconds (600 for
/// the ten-minute figure), 30 by default.
fn kv_soak() -> Duration {
    let secs = std::env::var("SLUICE_KV_SOAK_SECS").ok().and_then(|s| s.parse().ok());
    Duration::from_secs(secs.unwrap_or(30))
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp_dir(prefix: &str) -> TempDir {
    let dir = TempDir(std::env::temp_dir().join(netns::unique_name(prefix)));
    std::fs::create_dir_all(&dir.0).expect("directory");
    dir
}

/// Puts the hostile component into `dir` as plugin `name`, configured with `config`, with
/// these manifest fields beside the required ones.
fn add_plugin(dir: &Path, wasm: &[u8], name: &str, config: &str, extra: &serde_json::Value) {
    let mut manifest = serde_json::json!({
        "name": name,
        "version": "0.1.0",
        "tables": ["filter"],
        "sha256": sha256_hex(wasm),
    });
    if let (Some(m), Some(e)) = (manifest.as_object_mut(), extra.as_object()) {
        m.extend(e.clone());
    }
    std::fs::write(dir.join(format!("{name}.json")), manifest.to_string()).expect("manifest");
    std::fs::write(dir.join(format!("{name}.wasm")), wasm).expect("component");
    std::fs::write(dir.join(format!("{name}.config.json")), config).expect("configuration");
}

/// The hostile test plugin's component, as `make plugins` builds it.
fn hostile_wasm() -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../plugins/target/wasm32-wasip2/release/hostile.wasm");
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!("{}: {e}; build the plugins first with `make plugins`", path.display())
    })
}

fn du(path: &Path) -> u64 {
    std::fs::read_dir(path).map_or(0, |d| {
        d.flatten()
            .map(|e| match e.metadata() {
                Ok(m) if m.is_dir() => du(&e.path()),
                Ok(m) => m.len(),
                Err(_) => 0,
            })
            .sum()
    })
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// The filter entries the dataplane holds (`sluice hooks --json`, the effective verdict of each
/// prefix): (prefix, action).
fn entries(t: &Topology) -> Vec<(String, String)> {
    let v: serde_json::Value =
        serde_json::from_str(&t.sluice(&["hooks", "--json"])).expect("sluice hooks --json");
    v["rules"]
        .as_array()
        .map(|rules| {
            rules
                .iter()
                .map(|r| {
                    let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
                    (s(&r["rule"]["prefix"]), s(&r["rule"]["action"]))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn hostile_plugins_hurt_neither_the_daemon_nor_the_other_plugins_nor_forwarding() {
    if !privileged() {
        return;
    }
    let wasm = hostile_wasm();
    let plugins = temp_dir("sluice-hostile-plugins-");
    let state = temp_dir("sluice-hostile-state-");
    let blocked = Subnet(1).v4_prefix();
    let c1 = Subnet(1).host_v4();
    let none = serde_json::json!({});
    // The plugin that blocks c1, and those that try to undo it.
    add_plugin(&plugins.0, &wasm, "guard", &format!("rules:drop {blocked}"), &none);
    add_plugin(&plugins.0, &wasm, "squatter", &format!("rules:count {blocked}"), &none);
    add_plugin(&plugins.0, &wasm, "specific", &format!("rules:pass {c1}/32"), &none);
    // One per misbehaviour.
    add_plugin(&plugins.0, &wasm, "filler", "fill-table", &none);
    add_plugin(&plugins.0, &wasm, "wide", "match-all-drop", &none);
    let kv = serde_json::json!({"kv_bytes": 1 << 20, "deadline_ms": 10_000});
    add_plugin(&plugins.0, &wasm, "kv", "kv-rewrite", &kv);
    add_plugin(&plugins.0, &wasm, "badlog", "log-invalid-utf8", &none);
    add_plugin(&plugins.0, &wasm, "loud", "log-flood", &serde_json::json!({"deadline_ms": 5000}));
    add_plugin(&plugins.0, &wasm, "panicker", "panic", &none);
    add_plugin(&plugins.0, &wasm, "spinner", "spin", &serde_json::json!({"deadline_ms": 2000}));
    add_plugin(&plugins.0, &wasm, "hog", "memory-bomb", &serde_json::json!({"memory_mib": 64}));
    add_plugin(&plugins.0, &wasm, "flood", "op-flood", &serde_json::json!({"deadline_ms": 5000}));

    let mut t = Topology::new(&[("c1", 1), ("c2", 2), ("srv", 3)]);
    t.start_daemon_with(&[
        "--plugins",
        plugins.0.to_str().expect("UTF-8 path"),
        "--allow-unsigned-plugins",
        "--state-dir",
        state.0.to_str().expect("UTF-8 path"),
    ]);
    let server = Subnet(3).host_v4();
    t.wait_ping("c2", &server);
    let pid = t.daemon_pid().expect("the daemon runs");
    wait_until("the blocker's rule", Duration::from_mins(1), || {
        entries(&t).iter().any(|(p, _)| *p == blocked).then_some(())
    });
    let rss_start = rss_kib(pid);

    // The soak: c2 pings the server all along; the disk and memory are sampled.
    let kv_dir = state.0.join("plugin-kv");
    let started = Instant::now();
    let (mut disk_max, mut rss_max, mut sent, mut received) = (0u64, 0u64, 0u64, 0u64);
    while started.elapsed() < SOAK {
        let p = ping(t.ns("c2"), &server, 5, "0.2");
        (sent, received) = (sent + 5, received + p.received);
        disk_max = disk_max.max(du(&kv_dir));
        rss_max = rss_max.max(rss_kib(pid));
        t.assert_daemon_alive();
    }
    let loss = (sent - received) as f64 / sent as f64 * 100.0;
    println!(
        "hostile plugins for {:?}: daemon RSS {} MiB at start, at most {} MiB; plugin-kv on \
         disk at most {:.1} MiB; c2's pings {received}/{sent} ({loss:.1}% lost)",
        started.elapsed(),
        rss_start >> 10,
        rss_max >> 10,
        disk_max as f64 / f64::from(1u32 << 20),
    );

    // Forwarding: c2 flows, c1 stays blocked (the squatter's count and the more specific pass
    // do not undo the guard's drop).
    assert!(received * 10 >= sent * 9, "c2's traffic flows: {received}/{sent}");
    let c1_drops = t.stats().get("r-c1", "drop_filtered");
    assert_eq!(ping_briefly(t.ns("c1"), &server, 3).received, 0, "c1 stays blocked");
    assert!(t.stats().get("r-c1", "drop_filtered") > c1_drops, "dropped by the filter");

    // The tables: the blocked /24 and the more specific /32 inside it both drop; nothing of the
    // filler (over its quota), no match-all drop.
    let held = entries(&t);
    let has = |prefix: &str, action: &str| held.iter().any(|(p, a)| p == prefix && a == action);
    assert!(has(&blocked, "drop"), "{held:?}");
    assert!(has(&format!("{c1}/32"), "drop"), "the pass under the drop is a drop: {held:?}");
    let filler = held.iter().filter(|(p, _)| p.starts_with("198.19.")).count();
    assert_eq!(filler, 0, "the filler wrote nothing over its quota");
    assert!(!held.iter().any(|(p, _)| p == "0.0.0.0/0"), "no match-all drop: {held:?}");

    // Memory and disk stayed bounded.
    assert!(rss_max < 1 << 20, "the daemon's RSS stays under 1 GiB: {} MiB", rss_max >> 10);
    assert!(disk_max <= 32 << 20, "plugin-kv stays under 32 MiB: {disk_max} bytes");
    assert!(
        std::fs::metadata(kv_dir.join("kv.kv")).is_ok_and(|m| m.len() >= 1000 << 10),
        "the rewriting plugin did write its value"
    );
    let log = t.log_tail(2000);
    for why in ["max_rules", "allow_match_all", "panicking as configured", "invalid utf-8"] {
        assert!(log.contains(why), "the daemon's log says why ({why}): {log}");
    }
    // The plugins sharing the blocked prefix were never quarantined for it.
    for name in ["guard", "squatter", "specific", "kv"] {
        let quarantined = format!("plugin quarantined plugin=\"{name}\"");
        assert!(!log.contains(&quarantined), "{name} runs on: {log}");
    }
    t.assert_daemon_alive();
}

#[test]
fn a_plugin_rewriting_its_store_added_through_the_api_keeps_within_its_bound_and_gives_the_disk_back()
 {
    use base64::Engine as _;
    use sluice_testbed::api_lab::{ApiLab, in_namespace};
    if !privileged() {
        return;
    }
    let wasm = hostile_wasm();
    let lab = ApiLab::start("kvsk", &["--allow-unsigned-plugins"]).expect("a daemon with its API");
    let kv_dir = lab.state.join("plugin-kv");
    let soak = kv_soak();
    let (before, disk_max, rss_start, rss_max, calls, after) = in_namespace(lab.ns(), || {
        let session = lab.setup_admin()?;
        let raw = lab.raw()?;
        let before = du(&kv_dir);
        let manifest = serde_json::json!({
            "name": "kv",
            "version": "0.1.0",
            "tables": ["filter"],
            "sha256": sha256_hex(&wasm),
            "kv_bytes": 1 << 20,
            "deadline_ms": 10_000,
        });
        let body = serde_json::json!({
            "manifest": manifest,
            "wasm_base64": base64::engine::general_purpose::STANDARD.encode(&wasm),
            "config": "kv-rewrite",
        });
        let a = raw.json(None, "POST", "/api/v1/plugins", &session.headers(), Some(&body))?;
        anyhow::ensure!(a.status == 201, "POST /api/v1/plugins: {} {}", a.status, a.text());
        let rss_start = lab.rss_kib();
        let started = Instant::now();
        let (mut disk_max, mut rss_max) = (0u64, 0u64);
        while started.elapsed() < soak {
            disk_max = disk_max.max(du(&kv_dir));
            rss_max = rss_max.max(lab.rss_kib());
            std::thread::sleep(Duration::from_millis(100));
        }
        let a = raw.json(None, "GET", "/api/v1/plugins", &session.headers(), None)?;
        let listed = a.json();
        let kv = listed.as_array().and_then(|l| l.iter().find(|p| p["name"] == "kv")).cloned();
        let kv = kv.ok_or_else(|| anyhow::anyhow!("the plugin is listed: {listed}"))?;
        anyhow::ensure!(kv["status"]["state"] == "running", "it still runs: {kv}");
        let calls = kv["usage"]["calls"].as_u64().unwrap_or(0);
        let a = raw.json(None, "DELETE", "/api/v1/plugins/kv", &session.headers(), None)?;
        anyhow::ensure!(a.status == 200, "DELETE /api/v1/plugins/kv: {} {}", a.status, a.text());
        Ok((before, disk_max, rss_start, rss_max, calls, du(&kv_dir)))
    })
    .expect("the plugin added, run and removed through the API");
    let mib = |b: u64| b as f64 / f64::from(1u32 << 20);
    println!(
        "a plugin rewriting a 1000 KiB value 20 times a call under a 1 MiB quota for {soak:?} \
         ({calls} calls, about {} MiB written): plugin-kv {:.1} MiB before, at most {:.1} MiB, \
         {:.1} MiB after `DELETE /api/v1/plugins/kv`; daemon RSS {} MiB at the start, at most \
         {} MiB",
        calls.saturating_sub(1) * 20 * 1000 / 1024,
        mib(before),
        mib(disk_max),
        mib(after),
        rss_start >> 10,
        rss_max >> 10,
    );
    assert!(calls >= 2, "the plugin was called while it ran: {calls}");
    assert!(disk_max >= 1000 << 10, "the plugin wrote its value: {disk_max} bytes at most");
    assert!(disk_max <= 32 << 20, "plugin-kv stays within 32 MiB: {disk_max} bytes");
    assert!(after <= before + (8 << 20), "the disk is given back: {after} bytes, {before} before");
    assert!(!kv_dir.join("kv.kv").exists(), "the removed plugin's store is gone");
    assert!(rss_max < 1 << 20, "the daemon's RSS stays under 1 GiB: {} MiB", rss_max >> 10);
}
