//! `sluice-bench-api`: the REST API's latency under a steady load. A daemon runs in a router
//! namespace of its own (one host linked to it), with a fresh state directory; the benchmark sets
//! it up through the API (setup token, login, a read token), then requests
//! `GET /api/v1/counters` at a fixed rate over keep-alive HTTPS connections and reports latency
//! percentiles. Latency is measured from when each request was due, not when it was sent, so a
//! stall counts for every request it delays (no coordinated omission). With `wrk` installed it
//! also runs wrk for the highest rate the API sustains.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::json;

use crate::{
    api_lab::{ApiLab, LISTEN, in_namespace},
    netns::NetNs,
};

/// Options of `sluice-bench-api`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchApiArgs {
    /// Requests per second, in all.
    #[arg(long, default_value_t = 1000)]
    pub rate: u32,
    /// Seconds of load.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Connections the requests are spread over.
    #[arg(long, default_value_t = 4)]
    pub connections: u32,
    /// Write the figures (JSON) here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// The figures of one run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ApiFigures {
    /// Requests asked per second.
    pub rate: u32,
    /// Requests answered 200.
    pub ok: u64,
    /// Requests that failed.
    pub failed: u64,
    /// Requests answered per second, measured.
    pub achieved_rate: f64,
    /// Latency percentiles in milliseconds: p50, p90, p99, p99.9, max.
    pub latency_ms: [f64; 5],
    /// wrk's figures at its highest rate, if wrk is installed: its summary lines.
    pub wrk: Option<String>,
}

/// Sets the lab's router up and returns a read token (inside its namespace).
fn read_token(lab: &ApiLab) -> anyhow::Result<String> {
    let session = lab.setup_admin()?;
    let body = json!({"name": "bench", "scope": "read"});
    let a = lab.raw()?.json(None, "POST", "/api/v1/tokens", &session.headers(), Some(&body))?;
    if a.status != 201 {
        bail!("POST /tokens: {} {}", a.status, a.text());
    }
    Ok(a.json()["token"].as_str().context("a token")?.to_owned())
}

/// The value at quantile `per_mille`/1000 of sorted samples.
fn quantile(sorted: &[f64], per_mille: usize) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) * per_mille / 1000).min(sorted.len() - 1)]
}

/// One connection's share of the load: `total` requests, one every `interval` from `start`.
/// Returns the latencies (ms, from when each was due) of those answered 200, and the failures.
fn load(
    lab: &ApiLab,
    token: &str,
    start: Instant,
    interval: Duration,
    total: u64,
) -> anyhow::Result<(Vec<f64>, u64)> {
    let agent = lab.agent()?;
    let url = format!("https://{LISTEN}/api/v1/counters");
    let auth = format!("Bearer {token}");
    let mut latencies = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    let mut failed = 0;
    for i in 0..total {
        let due = start + interval.mul_f64(i as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let ok = agent
            .get(&url)
            .header("Authorization", &auth)
            .call()
            .ok()
            .filter(|r| r.status() == 200)
            .and_then(|mut r| r.body_mut().read_to_vec().ok())
            .is_some();
        if ok {
            latencies.push(due.elapsed().as_secs_f64() * 1000.0);
        } else {
            failed += 1;
        }
    }
    Ok((latencies, failed))
}

/// Runs `sluice-bench-api`.
pub fn run(args: &BenchApiArgs) -> anyhow::Result<ApiFigures> {
    if args.rate == 0 || args.connections == 0 {
        bail!("--rate and --connections must be at least 1");
    }
    let lab = ApiLab::start("sba", &[])?;
    let ns_name = lab.router.name().to_owned();
    let token = in_namespace(&ns_name, || read_token(&lab))?;
    eprintln!(
        "bench-api: GET /api/v1/counters at {} requests/s over {} connections for {} s",
        args.rate, args.connections, args.seconds
    );
    let per_conn = f64::from(args.rate) / f64::from(args.connections);
    let interval = Duration::from_secs_f64(1.0 / per_conn);
    let total = u64::from(args.rate) * args.seconds / u64::from(args.connections);
    let start = Instant::now() + Duration::from_millis(200);
    let results: Vec<anyhow::Result<(Vec<f64>, u64)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..args.connections)
            .map(|c| {
                let (token, lab, ns_name) = (&token, &lab, &ns_name);
                // Connections start staggered across one interval.
                let first = start + interval.mul_f64(f64::from(c) / f64::from(args.connections));
                s.spawn(move || in_namespace(ns_name, || load(lab, token, first, interval, total)))
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("a load thread")).collect()
    });
    let elapsed = start.elapsed().as_secs_f64();
    let mut all = Vec::new();
    let mut failed = 0;
    for r in results {
        let (l, f) = r?;
        all.extend(l);
        failed += f;
    }
    all.sort_by(f64::total_cmp);
    let latency_ms = [
        quantile(&all, 500),
        quantile(&all, 900),
        quantile(&all, 990),
        quantile(&all, 999),
        all.last().copied().unwrap_or(f64::NAN),
    ];
    let wrk = which("wrk").map(|wrk| run_wrk(&wrk, &ns_name, &token)).transpose()?;
    let figures = ApiFigures {
        rate: args.rate,
        ok: all.len() as u64,
        failed,
        achieved_rate: all.len() as f64 / elapsed,
        latency_ms,
        wrk,
    };
    println!(
        "GET /api/v1/counters at {} req/s ({} connections, {} s): {} answered ({:.0}/s), {} failed; latency p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
        figures.rate,
        args.connections,
        args.seconds,
        figures.ok,
        figures.achieved_rate,
        figures.failed,
        latency_ms[0],
        latency_ms[1],
        latency_ms[2],
        latency_ms[3],
        latency_ms[4]
    );
    if let Some(w) = &figures.wrk {
        println!("wrk, as fast as it goes (2 threads, 8 connections, 5 s):\n{w}");
    } else {
        println!("(wrk is not installed: no maximum-rate figure)");
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&figures)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(figures)
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
}

/// wrk's latency summary at the highest rate it reaches (its lines from "Latency" on).
fn run_wrk(wrk: &Path, ns: &str, token: &str) -> anyhow::Result<String> {
    let out = NetNs::existing(ns)
        .command(wrk.to_str().context("a UTF-8 path")?)
        .args(["-t2", "-c8", "-d5s", "--latency", "-H"])
        .arg(format!("Authorization: Bearer {token}"))
        .arg(format!("https://{LISTEN}/api/v1/counters"))
        .output()
        .context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if let Some(errors) = text.lines().find(|l| l.contains("Socket errors"))
        && text.contains(" 0 requests in")
    {
        // Seen with Debian's wrk 4.1: no TLS handshake completes against rustls.
        return Ok(format!("wrk completed no request ({})", errors.trim()));
    }
    Ok(text.lines().skip_while(|l| !l.contains("Latency")).collect::<Vec<_>>().join("\n"))
}
