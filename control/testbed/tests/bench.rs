//! Namespace tests of `sluice-bench`'s traffic: the generator sends the frame sizes asked for
//! (64 bytes, any length up to 1514, or the IMIX), every forwarder carries them to the sink, and
//! the report counts frames and bytes. Small runs (a small table, few frames): the rates are not
//! asserted, only what was sent and counted.
//!
//! Needs root and bpffs; without them a test says why and returns, except with `CI=true`, where it
//! fails. Run: `sudo -E cargo test -p sluice-testbed --release --test bench -- --nocapture`.

use std::{path::PathBuf, process::Command};

use sluice_testbed::privileged;

/// The benchmark binary; it starts the `sluice` built beside it.
const SLUICE_BENCH: &str = env!("CARGO_BIN_EXE_sluice-bench");
use serde_json::Value;

/// Runs `sluice-bench` with small tables and few frames, plus `args`, and returns its JSON.
fn bench(name: &str, args: &[&str]) -> Value {
    bench_tables(name, "one", args)
}

/// [`bench`] with the tables `tables` (`one`, `full` or `both`).
fn bench_tables(name: &str, tables: &str, args: &[&str]) -> Value {
    let dir = std::env::temp_dir().join(format!("sluice-bench-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json: PathBuf = dir.join("bench.json");
    let out = Command::new(SLUICE_BENCH)
        .args([
            "--tables",
            tables,
            "--table-size",
            "2000",
            "--packets",
            "100000",
            "--rounds",
            "1",
            "--route-trials",
            "0",
            "--no-program-time",
            "--json",
        ])
        .arg(&json)
        .args(args)
        .output()
        .expect("run sluice-bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "sluice-bench {args:?} failed:\n{stderr}");
    let report: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("{stderr}");
    report
}

/// Every forwarder of every cell: (label, frames received, bytes received, Mpps, Gbit/s).
fn received(report: &Value) -> Vec<(String, u64, u64, f64, f64)> {
    let mut out = Vec::new();
    for cell in report["results"].as_array().expect("results") {
        for (name, m) in cell["forwarders"].as_object().expect("forwarders") {
            out.push((
                format!("{} {} {name}", cell["family"], cell["table"]),
                m["received"].as_u64().unwrap(),
                m["received_bytes"].as_u64().unwrap(),
                m["mpps"].as_f64().unwrap(),
                m["gbps"].as_f64().unwrap(),
            ));
        }
    }
    out
}

#[test]
fn fixed_size_frames_arrive_whole_through_every_forwarder() {
    if !privileged() {
        return;
    }
    let report = bench(
        "fixed",
        &[
            "--family",
            "both",
            "--frame-size",
            "1000",
            "--forwarders",
            "linux,ceiling,ceiling-read,sluice",
        ],
    );
    assert_eq!(report["frame_size"], "1000");
    assert_eq!(report["frame_len"], 1000);
    let cells = received(&report);
    assert_eq!(cells.len(), 8, "two families, four forwarders: {cells:?}");
    for cell in report["results"].as_array().unwrap() {
        let ratio = cell["ratios"]["sluice_ceiling_read"].as_f64();
        assert!(ratio.is_some_and(|r| r > 0.0), "Sluice over the reading ceiling: {cell}");
    }
    for (label, frames, bytes, mpps, gbps) in cells {
        assert!(frames > 0, "{label}: nothing reached the sink");
        assert_eq!(bytes, frames * 1000, "{label}: every frame 1000 bytes");
        assert!(
            (gbps - mpps * 8.0).abs() < 1e-6 * gbps.max(1.0),
            "{label}: {gbps} Gbit/s at {mpps} Mpps"
        );
    }
}

#[test]
fn imix_sends_seven_four_one() {
    if !privileged() {
        return;
    }
    let report = bench(
        "imix",
        &["--family", "both", "--frame-size", "imix", "--forwarders", "ceiling,sluice"],
    );
    assert_eq!(report["frame_size"], "imix");
    assert!(report.get("frame_len").is_none(), "no single frame length: {report}");
    let mean = report["mean_frame_len"].as_f64().unwrap();
    assert!((mean - 4322.0 / 12.0).abs() < 1e-9, "mean frame length {mean}");
    let cells = received(&report);
    assert_eq!(cells.len(), 4, "two families, two forwarders: {cells:?}");
    for (label, frames, bytes, _, _) in cells {
        assert!(frames > 1000, "{label}: only {frames} frames reached the sink");
        // Frames lost at the router's full input ring are lost whatever their size, so what
        // arrives keeps the mix: 64 bytes only would be 64, 1514 only 1514.
        let got = bytes as f64 / frames as f64;
        assert!((got - mean).abs() < 0.05 * mean, "{label}: frames of {got:.1} bytes on average");
    }
}

#[test]
fn the_load_lag_is_sampled_once_per_acknowledged_batch() {
    if !privileged() {
        return;
    }
    let report = bench_tables("lag", "full", &["--family", "both", "--forwarders", "sluice"]);
    let tables = report["tables"].as_array().expect("tables");
    assert_eq!(tables.len(), 2, "both families: {report}");
    for t in tables {
        let (family, routes) = (&t["family"], t["routes"].as_u64().unwrap());
        assert_eq!(routes, 2000, "{family}: the table size asked for");
        let lag = &t["load_lag"];
        let samples = lag["samples"].as_u64().unwrap_or_else(|| panic!("{family}: {t}"));
        // The writer's batches of 1024 routes, plus the end of the load: a route already in
        // the dataplane is not sampled again while the kernel takes the next batch.
        assert!((1..=3).contains(&samples), "{family}: {samples} samples of 2 batches: {lag}");
        let series = lag["series"].as_array().expect("series");
        assert_eq!(series.len() as u64, samples, "{family}: every sample kept");
        for point in series {
            let (at, ms) = (point[0].as_f64().unwrap(), point[1].as_f64().unwrap());
            assert!(at >= 0.0 && (0.0..10_000.0).contains(&ms), "{family}: sample {point}");
        }
        let max = lag["max_ms"].as_f64().unwrap();
        assert!(lag["median_ms"].as_f64().unwrap() <= max, "{family}: {lag}");
    }
}
