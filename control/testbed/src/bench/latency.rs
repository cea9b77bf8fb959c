//! How fast route changes reach the dataplane: the route-add latency of a running daemon, and
//! the lag of its lookup tables behind the kernel while the kernel takes a full table.

use std::{
    fmt::Write as _,
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail, ensure};
use serde::Serialize;
use serde_json::Value;
use sluice_common::Route;
use sluice_dataplane::PinDir;

use super::{
    daemon::{DAEMON_READY_TIMEOUT, Daemon},
    interrupt::check_interrupted,
    matrix::{Phase, TableKind},
    topology::{Topology, in_netns},
};
use crate::table::{self, NextHops, RTPROT_BGP, RouteOp, Table};

/// How long a new route may take to show in the dataplane with one route, and with a full table
/// (where each change may cost the daemon a pass over the whole table).
const ROUTE_TIMEOUT: Duration = Duration::from_secs(2);
/// See [`ROUTE_TIMEOUT`].
const ROUTE_TIMEOUT_FULL: Duration = Duration::from_secs(30);
/// Interval between polls of `sluice routes --json`.
const ROUTE_POLL: Duration = Duration::from_millis(1);
/// Interval between reads of the lookup tables (route-add latency) or the pinned route trie.
const MAP_POLL: Duration = Duration::from_micros(100);

/// Priority of the thread sampling the dataplane's lag: above the daemon's default (-10).
const SAMPLER_NICE: libc::c_int = -20;

/// Times `ip route add` in the router namespace until the daemon's lookup tables, which forward
/// (mapped here, polled every [`MAP_POLL`]), answer for the prefix with its route and, with one
/// route, until it shows in
/// `sluice routes --json` (polled every [`ROUTE_POLL`]; each call has its own cost, reported
/// beside; it reads the route record, which a background writer keeps after a large load).
/// With a full table that listing is too large to poll. The probe routes point at a next hop of
/// their own, so the tables' answer for them changes even where the default route already
/// covered them. Each probe is deleted, and its deletion awaited, before the next.
pub(super) fn route_add_latency(
    daemon: &Daemon<'_>,
    topo: &Topology,
    phase: Phase,
    trials: u32,
) -> anyhow::Result<RouteLatency> {
    let family = phase.family;
    let gateway = family.gateway(topo.next_hops).to_string();
    let tables = sluice_dataplane::LookupView::open(&PinDir::new(&daemon.pin_dir))?;
    let with_cli = phase.table == TableKind::One;
    let timeout = if with_cli { ROUTE_TIMEOUT } else { ROUTE_TIMEOUT_FULL };
    let (mut in_map, mut in_cli, mut ip_calls, mut calls) = (vec![], vec![], vec![], vec![]);
    for i in 0..trials {
        check_interrupted()?;
        let prefix = family.probe_route(i);
        let net: ipnet::IpNet = prefix.parse()?;
        let baseline = tables.lookup(net.addr());
        let start = Instant::now();
        topo.router.ip(&["route", "add", &prefix, "via", &gateway, "dev", &topo.rtr_out])?;
        ip_calls.push(start.elapsed());
        let probe = Probe { daemon, tables: &tables, net, baseline, start, timeout };
        let outcome = probe.await_added(with_cli, &mut calls);
        topo.router.ip(&["route", "del", &prefix])?;
        let gone = probe.await_removed();
        match outcome? {
            Ok((map, cli)) => {
                in_map.push(map);
                in_cli.extend(cli);
            }
            Err(reason) => return Ok(RouteLatency::NotMeasured { reason }),
        }
        if let Err(reason) = gone? {
            return Ok(RouteLatency::NotMeasured { reason });
        }
    }
    Ok(RouteLatency::Measured {
        trials,
        dataplane: Percentiles::of(in_map),
        cli: (!in_cli.is_empty()).then(|| Percentiles::of(in_cli)),
        cli_call_median_ms: (!calls.is_empty()).then(|| Percentiles::of(calls).median_ms),
        ip_call_median_ms: Percentiles::of(ip_calls).median_ms,
    })
}

/// One route-add latency trial.
struct Probe<'a> {
    pub(super) daemon: &'a Daemon<'a>,
    pub(super) tables: &'a sluice_dataplane::LookupView,
    pub(super) net: ipnet::IpNet,
    /// What the lookup tables answered for the prefix before it was added.
    baseline: Option<Route>,
    pub(super) start: Instant,
    pub(super) timeout: Duration,
}

impl Probe<'_> {
    /// Waits until the lookup tables' answer for the prefix changes, then (`with_cli`) until
    /// `sluice routes --json` shows it, and returns both delays since the start, or why one did
    /// not come within the timeout. Records the duration of every CLI call in `calls`.
    fn await_added(
        &self,
        with_cli: bool,
        calls: &mut Vec<Duration>,
    ) -> anyhow::Result<Result<(Duration, Option<Duration>), String>> {
        let net = self.net;
        while self.tables.lookup(net.addr()) == self.baseline {
            check_interrupted()?;
            if self.start.elapsed() > self.timeout {
                return Ok(Err(format!(
                    "{net} did not reach the dataplane within {:?}",
                    self.timeout
                )));
            }
            thread::sleep(MAP_POLL);
        }
        let in_map = self.start.elapsed();
        if !with_cli {
            return Ok(Ok((in_map, None)));
        }
        loop {
            check_interrupted()?;
            let call = Instant::now();
            let out = self
                .daemon
                .sluice(&["routes", "--json"])
                .output()
                .context("spawn sluice routes")?;
            calls.push(call.elapsed());
            if !out.status.success() {
                let stderr = String::from_utf8_lossy(&out.stderr);
                return Ok(Err(format!(
                    "`sluice routes --json` failed ({}): {}",
                    out.status,
                    stderr.trim()
                )));
            }
            let routes: Value =
                serde_json::from_slice(&out.stdout).context("parse `sluice routes --json`")?;
            if contains_prefix(&routes, net) {
                return Ok(Ok((in_map, Some(self.start.elapsed()))));
            }
            if self.start.elapsed() > self.timeout {
                return Ok(Err(format!(
                    "{net} did not show in `sluice routes --json` within {:?}",
                    self.timeout
                )));
            }
            thread::sleep(ROUTE_POLL.saturating_sub(call.elapsed()));
        }
    }

    /// Waits until the lookup tables answer for the prefix as they did before it was added.
    fn await_removed(&self) -> anyhow::Result<Result<(), String>> {
        let since = Instant::now();
        while self.tables.lookup(self.net.addr()) != self.baseline {
            check_interrupted()?;
            if since.elapsed() > self.timeout {
                return Ok(Err(format!(
                    "{} was not removed from the dataplane within {:?}",
                    self.net, self.timeout
                )));
            }
            thread::sleep(MAP_POLL);
        }
        Ok(Ok(()))
    }
}

/// Median, 99th percentile (nearest rank) and maximum of some latencies.
#[derive(Debug, Serialize)]
#[expect(clippy::struct_field_names, reason = "the unit belongs in the JSON keys")]
pub(super) struct Percentiles {
    median_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

impl Percentiles {
    pub(super) fn of(mut samples: Vec<Duration>) -> Self {
        samples.sort();
        Self {
            median_ms: ms(percentile(&samples, 50)),
            p99_ms: ms(percentile(&samples, 99)),
            max_ms: ms(percentile(&samples, 100)),
        }
    }
}

/// Nearest-rank percentile of sorted, non-empty samples.
fn percentile(sorted: &[Duration], p: usize) -> Duration {
    let rank = (sorted.len() * p).div_ceil(100).max(1);
    sorted[rank - 1]
}

pub(super) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The route-add latency, or why it was not measured.
#[derive(Debug, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub(super) enum RouteLatency {
    Measured {
        trials: u32,
        /// Until the lookup tables, which forward, answer for the prefix with its route.
        dataplane: Percentiles,
        /// Until the prefix shows in `sluice routes --json` (one-route cells only).
        #[serde(skip_serializing_if = "Option::is_none")]
        cli: Option<Percentiles>,
        /// What one `sluice routes --json` call takes: the resolution of `cli`.
        #[serde(skip_serializing_if = "Option::is_none")]
        cli_call_median_ms: Option<f64>,
        /// What `ip route add` itself takes (spawned, so it is part of both delays).
        ip_call_median_ms: f64,
    },
    NotMeasured {
        reason: String,
    },
}

impl RouteLatency {
    pub(super) fn describe(&self) -> String {
        match self {
            Self::Measured { trials, dataplane, cli, cli_call_median_ms, ip_call_median_ms } => {
                let mut s = format!(
                    "-> lookup tables median {:.2} ms, p99 {:.2} ms ({trials} trials, `ip route add` takes {ip_call_median_ms:.1} ms of it)",
                    dataplane.median_ms, dataplane.p99_ms
                );
                if let (Some(cli), Some(call)) = (cli, cli_call_median_ms) {
                    let _ = write!(
                        s,
                        "; -> `sluice routes` median {:.1} ms, p99 {:.1} ms (one call takes {call:.1} ms)",
                        cli.median_ms, cli.p99_ms
                    );
                }
                s
            }
            Self::NotMeasured { reason } => format!("not measured: {reason}"),
        }
    }
}

/// The dataplane's lag behind the kernel while the kernel takes a full table: for the newest
/// route the kernel had acknowledged (one no other route of the table covers), how long until
/// the daemon's lookup tables (mapped by the benchmark) answered for it, sampled once per
/// acknowledged batch of 1024 routes (the newest batch when sampling one took longer). The
/// kernel's acknowledgement time is known to a batch: the lag is understated by at most that
/// batch's time (a few milliseconds).
#[derive(Debug, Serialize)]
pub(super) struct LoadLag {
    samples: usize,
    median_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    /// When the kernel had acknowledged the route of the longest lag, in seconds from the start
    /// of the load.
    max_at_s: f64,
    /// For the table's last route: after the kernel had all of it.
    last_ms: f64,
    /// Every sample: [seconds from the start of the load to the kernel's acknowledgement,
    /// lag in ms].
    pub(super) series: Vec<[f64; 2]>,
}

impl LoadLag {
    pub(super) fn describe(&self) -> String {
        format!(
            "median {:.0} ms, p99 {:.0} ms, max {:.0} ms ({:.1} s into the load) over {} samples; complete {:.0} ms after the kernel",
            self.median_ms, self.p99_ms, self.max_ms, self.max_at_s, self.samples, self.last_ms
        )
    }
}

// The load lag is sampled while the router's kernel takes a table: the topology's own install
// (`Topology::write_table`) with a sampler beside it.
impl Topology {
    /// Adds `table` to the router's kernel; with `daemon`, samples how far the daemon's
    /// dataplane lags behind meanwhile (see [`LoadLag`]).
    pub(super) fn install_watching(
        &self,
        table: &Table,
        daemon: Option<&Daemon<'_>>,
    ) -> anyhow::Result<Option<LoadLag>> {
        let Some(daemon) = daemon else {
            self.write_table(RouteOp::Add, table)?;
            return Ok(None);
        };
        let prefixes: std::collections::HashSet<table::Prefix> =
            table.routes.iter().map(|r| r.prefix).collect();
        let uncovered = |i: usize| {
            let p = table.routes[i].prefix;
            !(0..p.len).any(|l| prefixes.contains(&p.ancestor(l)))
        };
        // (routes the kernel acknowledged, when it was known)
        let load_start = Instant::now();
        let progress = std::sync::Mutex::new((0usize, load_start));
        let done = AtomicBool::new(false);
        let hops = NextHops {
            oif: self.rtr_out_ifindex,
            gateways: (0..self.next_hops).map(|i| table.family.gateway(i)).collect(),
            protocol: RTPROT_BGP,
        };
        let (written, lags) = thread::scope(|s| {
            let sampler = s.spawn(|| -> anyhow::Result<Vec<(Duration, Duration)>> {
                // The instrument must not wait for a core behind the daemon (nice -10) and the
                // writer: it sleeps between its polls, a few microseconds of work each.
                sluice_dataplane::set_thread_nice(SAMPLER_NICE)
                    .context("raise the lag sampler's priority")?;
                let view = sluice_dataplane::LookupView::open(&PinDir::new(&daemon.pin_dir))?;
                let mut lags = Vec::new();
                // Each acknowledgement is sampled once: sampled again while the writer waits
                // for the next one, a route long in the dataplane would count the kernel's time
                // for the next batch as the dataplane's lag.
                let mut sampled = None;
                loop {
                    let finished = done.load(Ordering::Acquire);
                    let (acked, at) = *progress.lock().expect("not poisoned");
                    let newest = (sampled != Some(acked))
                        .then(|| (acked.saturating_sub(4096)..acked).rev().find(|&i| uncovered(i)))
                        .flatten();
                    let Some(i) = newest else {
                        if finished {
                            break;
                        }
                        thread::sleep(Duration::from_millis(1));
                        continue;
                    };
                    sampled = Some(acked);
                    // No other route covers this one (and the default route is gone): its
                    // address finds a route in the lookup tables once it is there.
                    let addr = table.routes[i].prefix.address(table.family);
                    while view.lookup(addr).is_none() {
                        check_interrupted()?;
                        daemon.check_alive_shared()?;
                        ensure!(
                            at.elapsed() < DAEMON_READY_TIMEOUT,
                            "{addr} did not reach the dataplane in {DAEMON_READY_TIMEOUT:?}"
                        );
                        thread::sleep(Duration::from_millis(1));
                    }
                    lags.push((at.duration_since(load_start), at.elapsed()));
                    if finished {
                        break;
                    }
                }
                Ok(lags)
            });
            let written = in_netns(&self.router, || {
                let mut batches = 0;
                table::write_routes(RouteOp::Add, table.family, &table.routes, &hops, || {
                    check_interrupted()?;
                    // Called before each batch: the batches before it are acknowledged.
                    *progress.lock().expect("not poisoned") =
                        ((batches * table::BATCH).min(table.len()), Instant::now());
                    batches += 1;
                    Ok(())
                })
            });
            *progress.lock().expect("not poisoned") = (table.len(), Instant::now());
            done.store(true, Ordering::Release);
            (written, sampler.join().map_err(|_| anyhow!("the lag sampler panicked")))
        });
        written?;
        let lags = lags??;
        let Some(&(_, last)) = lags.last() else { bail!("no route of the table could be sampled") };
        let (max_at, max) = lags.iter().copied().max_by_key(|&(_, lag)| lag).expect("not empty");
        let mut sorted: Vec<Duration> = lags.iter().map(|&(_, lag)| lag).collect();
        sorted.sort_unstable();
        Ok(Some(LoadLag {
            samples: sorted.len(),
            median_ms: ms(percentile(&sorted, 50)),
            p99_ms: ms(percentile(&sorted, 99)),
            max_ms: ms(max),
            max_at_s: max_at.as_secs_f64(),
            last_ms: ms(last),
            series: lags.iter().map(|&(at, lag)| [at.as_secs_f64(), ms(lag)]).collect(),
        }))
    }
}

/// Whether any string in `v` is the prefix `net`, however it is written.
fn contains_prefix(v: &Value, net: ipnet::IpNet) -> bool {
    match v {
        Value::String(x) => x.parse() == Ok(net),
        Value::Array(a) => a.iter().any(|x| contains_prefix(x, net)),
        Value::Object(o) => o.values().any(|x| contains_prefix(x, net)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let samples: Vec<Duration> = (1..=20).map(Duration::from_millis).collect();
        assert_eq!(percentile(&samples, 50), Duration::from_millis(10));
        assert_eq!(percentile(&samples, 99), Duration::from_millis(20));
        assert_eq!(percentile(&samples[..1], 99), Duration::from_millis(1));
    }

    #[test]
    fn finds_prefixes_anywhere_in_json() {
        let v: Value = serde_json::from_str(
            r#"{"routes":[{"prefix":"10.251.3.0/24","via":["x"]},{"prefix":"fd00:251::/64"}]}"#,
        )
        .unwrap();
        assert!(contains_prefix(&v, "10.251.3.0/24".parse().unwrap()));
        assert!(!contains_prefix(&v, "10.251.3.0/25".parse().unwrap()));
        assert!(contains_prefix(&v, "fd00:251:0::/64".parse().unwrap()));
    }
}
