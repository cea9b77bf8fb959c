//! How far the dataplane lags behind the kernel while a flood of route changes keeps overrunning
//! the daemon's netlink socket, so that its resyncs keep failing: marker routes added one at a
//! time during the flood are timed from `ip route add` returning to the lookup tables (what the
//! XDP program reads) answering for them.
//!
//! Namespace tier: needs root and bpffs. Run: `cargo nextest run --release -p sluice --test
//! flood_lag --no-capture` (the lags are printed).

#[allow(dead_code, reason = "shared by the namespace test crates, which use different parts")]
mod common;

use std::{
    fmt::Write as _,
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use common::{Topology, privileged};
use sluice_dataplane::{LookupView, PinDir};
use sluice_testbed::{lab::Subnet, netns::NetNs};

/// Prefixes the flood replaces, round after round, and the daemon's tiny receive buffer.
const FLOOD_PREFIXES: u32 = 2000;
const TINY_BUFFER: &str = "4096";
/// Marker routes timed during the flood.
const MARKERS: u32 = 40;
/// The goal, and the bound the test holds on a loaded machine.
const GOAL: Duration = Duration::from_secs(1);
const BOUND: Duration = Duration::from_secs(5);

#[test]
fn the_dataplane_follows_the_kernel_while_resyncs_keep_failing() {
    if !privileged() {
        return;
    }
    let mut t = Topology::new(&[("c1", 1), ("srv", 3)]);
    t.start_daemon_with(&["--netlink-recv-buffer", TINY_BUFFER]);
    let gateways = [Subnet(1).host_v4(), Subnet(3).host_v4()];

    // The flood: every route of 100.64.0.0/16 replaced through the other gateway, round after
    // round, as fast as `ip -batch` goes.
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(std::sync::Mutex::new(Vec::new()));
    let flood = {
        let (stop, rounds, failed) = (Arc::clone(&stop), Arc::clone(&rounds), Arc::clone(&failed));
        let ns = NetNs::existing(t.router.name());
        let gateways = gateways.clone();
        thread::spawn(move || {
            let mut round = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let gw = &gateways[round % 2];
                let mut batch = String::new();
                for i in 0..FLOOD_PREFIXES {
                    let _ = writeln!(
                        batch,
                        "route replace 100.64.{}.{}/30 via {gw}",
                        i >> 6,
                        (i & 63) * 4
                    );
                }
                // A round the kernel refused part of (under this load `ip` may see ENOBUFS
                // itself) is counted and reported, not fatal: the flood goes on.
                if let Err(e) = ns.batch(&batch) {
                    failed.lock().unwrap().push(format!("{e:#}"));
                }
                round += 1;
                rounds.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    thread::sleep(Duration::from_millis(500));

    let view = LookupView::open(&PinDir::new(&t.pin_dir)).expect("map the lookup tables");
    let mut lags = Vec::new();
    for i in 0..MARKERS {
        let prefix = format!("198.18.{i}.0/24");
        let probe: IpAddr = format!("198.18.{i}.1").parse().unwrap();
        assert!(view.lookup(probe).is_none(), "nothing covers {probe} before its marker");
        // Timed from before `ip` starts: the lag includes ip's own start and exit.
        let added = Instant::now();
        common::ip(&t.router, &["route", "add", &prefix, "via", &gateways[0]]);
        while view.lookup(probe).is_none() {
            assert!(
                added.elapsed() < BOUND * 4,
                "{prefix} not in the lookup tables {:?} after the kernel had it",
                added.elapsed()
            );
            thread::sleep(Duration::from_millis(1));
        }
        lags.push(added.elapsed());
        thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    flood.join().expect("the flood thread");
    t.assert_daemon_alive();

    let log = t.log_tail(100_000);
    let overruns = log.matches("netlink receive buffer overran").count();
    let outran = log.matches("changes outran reading them").count();
    let interrupted = log.matches("interrupted").count();
    lags.sort();
    let (median, max) = (lags[lags.len() / 2], *lags.last().unwrap());
    let failed = failed.lock().unwrap();
    if let Some(first) = failed.first() {
        println!("{} flood rounds partly refused by the kernel; the first: {first}", failed.len());
    }
    println!(
        "figure: {MARKERS} marker routes during {} flood rounds of {FLOOD_PREFIXES} replaced \
         routes (netlink buffer {TINY_BUFFER} bytes; {overruns} overruns, {outran} resyncs outrun \
         by changes, {interrupted} interrupted dumps logged): lag to the lookup tables median \
         {median:?}, max {max:?} (goal {GOAL:?}: {})",
        rounds.load(Ordering::Relaxed),
        if max <= GOAL { "met" } else { "missed" }
    );
    assert!(overruns > 0, "the flood must overrun the daemon's socket:\n{}", t.log_tail(40));
    assert!(max <= BOUND, "the dataplane lagged {max:?} behind the kernel (bound {BOUND:?})");
}
