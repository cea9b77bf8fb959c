//! Per-step program times and A/B comparisons of XDP programs, interleaved round by round.
//!
//! The rates of one forwarder spread by tens of percent between rounds on a shared 2-core
//! machine; the CPU time of a program on the same frames and tables does not. With the daemon
//! forwarding on the full table (or one route) and idle, this module loads the daemon's own
//! object again, on the daemon's pinned maps, once per step of `sluice_common::steps` (each
//! variant the product cut short after that step), and times every variant, the two ceilings
//! and, with `--ab OBJECT`, the `sluice_xdp` of another build, by `BPF_PROG_TEST_RUN`: one run
//! per frame, over the generator's frames (one per destination), with the router's input as the
//! ingress device, so each run takes the path a forwarded frame takes. The kernel times each run
//! (two clock reads around it, the same for every program); no NAPI, no scheduler, no devmap
//! flush.
//!
//! Every round runs each program once over all frames, in an order rotated by one each round, so
//! a busy moment of the machine touches every program alike. A comparison is made within each
//! round (B's time over A's, or B's minus A's) and reported as the median of the rounds, with
//! the quartiles and the extremes: the spread says whether a difference is real.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, anyhow, ensure};
use aya::{
    Ebpf, EbpfLoader,
    programs::{TestRun as _, TestRunOptions, Xdp},
};
use serde::Serialize;
use sluice_common::{bench::names as bench_names, names, steps};
use sluice_dataplane::pin::PinDir;

use super::{programs::BenchPrograms, topology::in_netns};
use crate::netns::NetNs;

/// `XDP_PASS`, what a variant that stops early returns.
const XDP_PASS: u32 = 2;
/// `XDP_REDIRECT`, what a forwarded frame gets.
const XDP_REDIRECT: u32 = 4;

/// The name of the program built from `--ab`.
pub(super) const AB_NAME: &str = "sluice_b";
/// The product program, in the report.
const ALL_NAME: &str = "sluice";

/// A program the rounds time.
struct Variant {
    name: String,
    /// Its own object (a variant of the daemon's), or `None`: one of the benchmark's ceilings.
    ebpf: Option<Ebpf>,
    /// What it returns for a frame it forwards (`XDP_PASS` for a variant that stops early).
    verdict: u32,
}

/// Loads `object`'s `sluice_xdp` on the maps pinned under `pin`, stopping after `stop`.
fn load_variant(object: &[u8], pin: &PinDir, stop: u32) -> anyhow::Result<Ebpf> {
    let paths: Vec<(&str, PathBuf)> = names::ALL_MAPS.iter().map(|n| (*n, pin.map(n))).collect();
    for (name, path) in &paths {
        ensure!(path.exists(), "map {name} is not pinned at {}", path.display());
    }
    let mut loader = EbpfLoader::new();
    for (name, path) in &paths {
        loader.map_pin_path(name, path.as_path());
    }
    if stop != steps::ALL {
        loader.override_global(steps::GLOBAL, &stop, true);
    }
    let mut ebpf = loader.load(object).context("load the forwarding object")?;
    let prog: &mut Xdp = ebpf
        .program_mut(names::PROGRAM)
        .ok_or_else(|| anyhow!("no program {} in the object", names::PROGRAM))?
        .try_into()?;
    prog.load().with_context(|| format!("verify {} stopping after step {stop}", names::PROGRAM))?;
    Ok(ebpf)
}

/// What to measure: rounds, and the other build's object.
#[derive(Clone, Debug)]
pub(super) struct StepOptions {
    pub(super) rounds: u32,
    pub(super) ab: Option<PathBuf>,
}

/// Times the program variants on the daemon's maps (pinned under `pin`), `opts.rounds` rounds
/// over `frames`, each run as if received on `ifindex` in the router's namespace `router`.
pub(super) fn measure(
    bench: &BenchPrograms,
    router: &NetNs,
    pin: &Path,
    ifindex: u32,
    frames: &[Vec<u8>],
    opts: &StepOptions,
) -> anyhow::Result<ProgramSteps> {
    ensure!(!frames.is_empty(), "no frames");
    ensure!(opts.rounds > 0, "no rounds");
    let pin = PinDir::new(pin);
    let object = sluice_dataplane::EBPF_OBJECT;
    let mut variants = vec![
        Variant { name: bench_names::CEILING.into(), ebpf: None, verdict: XDP_REDIRECT },
        Variant { name: bench_names::CEILING_READ.into(), ebpf: None, verdict: XDP_REDIRECT },
    ];
    for (stop, name) in steps::STEPS {
        variants.push(Variant {
            name: format!("to_{name}"),
            ebpf: Some(load_variant(object, &pin, stop)?),
            verdict: if stop == steps::EGRESS_COUNT { XDP_REDIRECT } else { XDP_PASS },
        });
    }
    variants.push(Variant {
        name: ALL_NAME.into(),
        ebpf: Some(load_variant(object, &pin, steps::ALL)?),
        verdict: XDP_REDIRECT,
    });
    if let Some(path) = &opts.ab {
        let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
        variants.push(Variant {
            name: AB_NAME.into(),
            ebpf: Some(
                load_variant(&bytes, &pin, steps::ALL)
                    .with_context(|| format!("--ab {}", path.display()))?,
            ),
            verdict: XDP_REDIRECT,
        });
    }
    let progs: Vec<&Xdp> =
        variants.iter().map(|v| program(bench, v)).collect::<anyhow::Result<_>>()?;
    let n = variants.len();
    // ns per frame, by round and variant.
    let per_round: Vec<Vec<f64>> = in_netns(router, || {
        let mut rounds = Vec::new();
        // One unmeasured pass of each, so every program and table is as warm in the first
        // round as in the others.
        for (v, prog) in variants.iter().zip(&progs) {
            pass(prog, frames, ifindex, v.verdict).with_context(|| v.name.clone())?;
        }
        for round in 0..opts.rounds as usize {
            let mut times = vec![0.0; n];
            for k in 0..n {
                let i = (k + round) % n;
                times[i] = pass(progs[i], frames, ifindex, variants[i].verdict)
                    .with_context(|| variants[i].name.clone())?;
            }
            rounds.push(times);
        }
        Ok(rounds)
    })?;
    let names: Vec<String> = variants.iter().map(|v| v.name.clone()).collect();
    Ok(ProgramSteps::of(&names, &per_round, frames.len()))
}

/// The loaded program of a variant: its own object's, or one of the benchmark's ceilings.
fn program<'v>(bench: &'v BenchPrograms, v: &'v Variant) -> anyhow::Result<&'v Xdp> {
    match &v.ebpf {
        Some(e) => Ok(e
            .program(names::PROGRAM)
            .ok_or_else(|| anyhow!("no {}", names::PROGRAM))?
            .try_into()?),
        None => bench.program(&v.name),
    }
}

/// One run of `prog` per frame; the mean time per run in ns. Every run must return `verdict`:
/// a frame that takes another path (no route, an unresolved neighbour) is not what is timed.
fn pass(prog: &Xdp, frames: &[Vec<u8>], ifindex: u32, verdict: u32) -> anyhow::Result<f64> {
    let mut total_ns = 0u128;
    for (i, frame) in frames.iter().enumerate() {
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex.
        let md: [u32; 6] = [0, frame.len() as u32, 0, ifindex, 0, 0];
        let ctx: Vec<u8> = md.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let r = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                ctx_in: Some(&ctx),
                ..TestRunOptions::default()
            })
            .context("BPF_PROG_TEST_RUN")?;
        ensure!(
            r.return_value == verdict,
            "frame {i} returned {} where every frame should return {verdict}",
            r.return_value
        );
        total_ns += r.duration.as_nanos();
    }
    Ok(total_ns as f64 / frames.len() as f64)
}

/// The median, quartiles and extremes of some rounds' figures.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub(super) struct Spread {
    pub(super) median: f64,
    pub(super) q1: f64,
    pub(super) q3: f64,
    pub(super) min: f64,
    pub(super) max: f64,
}

impl Spread {
    /// Of `values` (at least one).
    #[expect(
        clippy::cast_sign_loss,
        clippy::cast_possible_truncation,
        reason = "ranks between 0 and the count of values"
    )]
    pub(super) fn of(values: &[f64]) -> Self {
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        // Linear interpolation between the closest ranks.
        let q = |p: f64| {
            let x = p * (v.len() - 1) as f64;
            let (lo, hi) = (x.floor() as usize, x.ceil() as usize);
            v[lo] + (v[hi] - v[lo]) * (x - lo as f64)
        };
        Self { median: q(0.5), q1: q(0.25), q3: q(0.75), min: v[0], max: v[v.len() - 1] }
    }
}

/// One program's time per frame over the rounds.
#[derive(Debug, Clone, Serialize)]
pub(super) struct VariantTime {
    pub(super) program: String,
    /// ns per frame.
    pub(super) ns: Spread,
    /// ns per frame in each round.
    pub(super) rounds: Vec<f64>,
}

/// B against A, round by round.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Comparison {
    pub(super) a: String,
    pub(super) b: String,
    /// B's time per frame over A's.
    pub(super) ratio: Spread,
    /// B's time per frame less A's, ns.
    pub(super) delta_ns: Spread,
}

/// The per-step program times and comparisons of one cell.
#[derive(Debug, Clone, Serialize)]
pub(super) struct ProgramSteps {
    pub(super) method: String,
    pub(super) rounds: usize,
    pub(super) frames: usize,
    pub(super) programs: Vec<VariantTime>,
    /// Each step against the one before it (the first against `sluice_ceiling_read`), the whole
    /// program against both ceilings, and `--ab`'s build against this one.
    pub(super) comparisons: Vec<Comparison>,
}

impl ProgramSteps {
    fn of(names: &[String], per_round: &[Vec<f64>], frames: usize) -> Self {
        let column = |i: usize| per_round.iter().map(|r| r[i]).collect::<Vec<f64>>();
        let programs = names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let rounds = column(i);
                VariantTime { program: name.clone(), ns: Spread::of(&rounds), rounds }
            })
            .collect();
        let index = |name: &str| names.iter().position(|n| n == name);
        let compare = |a: usize, b: usize| {
            let ratios: Vec<f64> = per_round.iter().map(|r| r[b] / r[a]).collect();
            let deltas: Vec<f64> = per_round.iter().map(|r| r[b] - r[a]).collect();
            Comparison {
                a: names[a].clone(),
                b: names[b].clone(),
                ratio: Spread::of(&ratios),
                delta_ns: Spread::of(&deltas),
            }
        };
        let mut comparisons = Vec::new();
        // The chain ceiling_read -> to_iface -> ... -> to_egress_count -> sluice.
        let chain: Vec<usize> = std::iter::once(bench_names::CEILING_READ.to_owned())
            .chain(steps::STEPS.iter().map(|(_, n)| format!("to_{n}")))
            .chain(std::iter::once(ALL_NAME.to_owned()))
            .filter_map(|n| index(&n))
            .collect();
        for w in chain.windows(2) {
            comparisons.push(compare(w[0], w[1]));
        }
        if let Some(all) = index(ALL_NAME) {
            for c in [bench_names::CEILING, bench_names::CEILING_READ] {
                if let Some(c) = index(c) {
                    comparisons.push(compare(c, all));
                }
            }
            if let Some(b) = index(AB_NAME) {
                comparisons.push(compare(all, b));
            }
        }
        Self {
            method: "BPF_PROG_TEST_RUN, one run per frame (the generator's frames, one per destination, as received on the router's input), every program once per round in an order rotated each round, on the daemon's maps once its CPU use settled; comparisons within each round, medians of the rounds".into(),
            rounds: per_round.len(),
            frames,
            programs,
            comparisons,
        }
    }

    /// The figures as lines for people.
    pub(super) fn text(&self, label: &str) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{label}: program time per frame by BPF_PROG_TEST_RUN, {} interleaved rounds over {} frames (median [q1, q3] ns):",
            self.rounds, self.frames
        );
        for p in &self.programs {
            let _ = writeln!(
                out,
                "  {:<22} {:>7.1} [{:.1}, {:.1}]",
                p.program, p.ns.median, p.ns.q1, p.ns.q3
            );
        }
        let _ = writeln!(
            out,
            "  per-round comparisons, B against A: B-A ns median [q1, q3]; B/A median [q1, q3] (min-max)"
        );
        for c in &self.comparisons {
            let _ = writeln!(
                out,
                "  {:>20} -> {:<16} {:>+6.1} [{:+.1}, {:+.1}] ns; {:.3}x [{:.3}, {:.3}] ({:.3}-{:.3})",
                c.a,
                c.b,
                c.delta_ns.median,
                c.delta_ns.q1,
                c.delta_ns.q3,
                c.ratio.median,
                c.ratio.q1,
                c.ratio.q3,
                c.ratio.min,
                c.ratio.max
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_interpolate_quartiles() {
        let s = Spread::of(&[5.0, 1.0, 3.0, 2.0, 4.0]);
        assert_eq!(s, Spread { median: 3.0, q1: 2.0, q3: 4.0, min: 1.0, max: 5.0 });
        let s = Spread::of(&[1.0, 2.0]);
        assert!((s.median - 1.5).abs() < 1e-12 && (s.q1 - 1.25).abs() < 1e-12, "{s:?}");
        assert!((Spread::of(&[7.0]).median - 7.0).abs() < 1e-12);
    }

    #[test]
    fn comparisons_are_made_within_rounds() {
        let names: Vec<String> =
            ["sluice_ceiling", "sluice_ceiling_read", "to_iface", "sluice", "sluice_b"]
                .map(String::from)
                .to_vec();
        // The machine slows down in the second round: every program takes twice as long, and
        // the per-round ratios do not move.
        let rounds =
            vec![vec![50.0, 90.0, 95.0, 120.0, 108.0], vec![100.0, 180.0, 190.0, 240.0, 216.0]];
        let s = ProgramSteps::of(&names, &rounds, 4000);
        let find = |a: &str, b: &str| {
            s.comparisons.iter().find(|c| c.a == a && c.b == b).unwrap_or_else(|| panic!("{a} {b}"))
        };
        let ab = find("sluice", "sluice_b");
        assert!(
            (ab.ratio.median - 0.9).abs() < 1e-12 && (ab.ratio.min - ab.ratio.max).abs() < 1e-12,
            "{ab:?}"
        );
        assert!((find("sluice_ceiling_read", "to_iface").ratio.median - 95.0 / 90.0).abs() < 1e-12);
        // Missing steps are skipped in the chain.
        assert!((find("to_iface", "sluice").delta_ns.median - 37.5).abs() < 1e-12);
        assert!((find("sluice_ceiling", "sluice").ratio.median - 2.4).abs() < 1e-12);
        assert!(s.text("ipv4 one").contains("sluice_b"));
    }
}
