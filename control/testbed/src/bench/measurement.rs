//! One forwarder's result in a cell: frames sent and received, the rate of each round and their
//! median, and what was counted beside (devmap flushes, drops at the router's input).

use std::{collections::BTreeMap, fmt::Write as _};

use serde::Serialize;
use sluice_common::bench::FlushStats;

use super::program_time::ProgramTime;

#[expect(clippy::cast_precision_loss, reason = "packet counts stay far below 2^52")]
pub(super) fn per_second(count: u64, seconds: f64) -> f64 {
    count as f64 / seconds
}

/// One forwarder's result.
#[derive(Debug, Serialize)]
pub(super) struct Measurement {
    /// Frames the generator sent.
    pub(super) sent: u64,
    /// Frames the sink counted.
    pub(super) received: u64,
    /// Their bytes, Ethernet header to the end of the payload.
    pub(super) received_bytes: u64,
    /// How long the generator ran.
    pub(super) seconds: f64,
    /// The median round's `received / seconds`, in millions.
    pub(super) mpps: f64,
    /// `mpps` in Gbit/s of frames (Ethernet header to the end of the payload; no preamble,
    /// FCS or gap): at the mean size of the frames received.
    pub(super) gbps: f64,
    /// Every round's rate, in the order measured.
    pub(super) round_mpps: Vec<f64>,
    /// `sent / seconds`, in millions.
    pub(super) offered_mpps: f64,
    /// For the XDP forwarders: the devmap flushes from `rtr_in` to `rtr_out` during the run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) devmap: Option<FlushDelta>,
    /// Frames the generator's veth could not hand to the router (its input ring was full), from
    /// the generator's own devmap flushes: sent, but never offered to the forwarder.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) entry_drops: Option<u64>,
    /// For Sluice: frames the XDP program forwarded on `rtr_in` during the run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) xdp_forwarded: Option<u64>,
    /// For Sluice: the attach mode `sluice stats` reports for `rtr_in`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) xdp_mode: Option<String>,
    /// For the `bpf_fib_lookup` forwarder: its outcomes during the run, by name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) fib_results: Option<BTreeMap<String, u64>>,
    /// For the XDP forwarders: the time their program on `rtr_in` takes per packet, from the
    /// kernel's BPF run-time statistics, in a short phase after the last round.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) program_time: Option<ProgramTime>,
}

impl Measurement {
    /// One measurement of several rounds: their totals, and the median round's rate.
    pub(super) fn median_of(rounds: &[Self]) -> Self {
        let mut rates: Vec<f64> =
            rounds.iter().flat_map(|m| m.round_mpps.iter().copied()).collect();
        let round_mpps = rates.clone();
        rates.sort_by(f64::total_cmp);
        let sum = |f: &dyn Fn(&Self) -> Option<u64>| -> Option<u64> {
            rounds.iter().map(f).sum::<Option<u64>>()
        };
        let (sent, received): (u64, u64) =
            (rounds.iter().map(|m| m.sent).sum(), rounds.iter().map(|m| m.received).sum());
        let received_bytes: u64 = rounds.iter().map(|m| m.received_bytes).sum();
        let mpps = rates.get(rates.len() / 2).copied().unwrap_or(0.0);
        let seconds: f64 = rounds.iter().map(|m| m.seconds).sum();
        let devmap = rounds.iter().map(|m| m.devmap).collect::<Option<Vec<_>>>().map(|d| {
            let flushes = d.iter().map(|f| f.flushes).sum::<u64>();
            let sent = d.iter().map(|f| f.sent).sum::<u64>();
            FlushDelta {
                flushes,
                sent,
                drops: d.iter().map(|f| f.drops).sum(),
                errors: d.iter().map(|f| f.errors).sum(),
                frames_per_flush: if flushes == 0 { 0.0 } else { sent as f64 / flushes as f64 },
            }
        });
        let fib_results =
            rounds.iter().map(|m| m.fib_results.clone()).collect::<Option<Vec<_>>>().map(|all| {
                let mut total: BTreeMap<String, u64> = BTreeMap::new();
                for r in all {
                    for (k, v) in r {
                        *total.entry(k).or_default() += v;
                    }
                }
                total
            });
        Self {
            sent,
            received,
            received_bytes,
            seconds,
            mpps,
            gbps: gbps(mpps, received, received_bytes),
            round_mpps,
            offered_mpps: per_second(sent, seconds) / 1e6,
            devmap,
            entry_drops: sum(&|m| m.entry_drops),
            xdp_forwarded: sum(&|m| m.xdp_forwarded),
            xdp_mode: rounds.first().and_then(|m| m.xdp_mode.clone()),
            fib_results,
            program_time: rounds.iter().find_map(|m| m.program_time.clone()),
        }
    }

    pub(super) fn describe(&self) -> String {
        let (lo, hi) = self
            .round_mpps
            .iter()
            .fold((f64::INFINITY, 0.0_f64), |(lo, hi), &r| (lo.min(r), hi.max(r)));
        let mut s = format!(
            "{:6.2} Mpps  (median of {} rounds, {lo:.2} to {hi:.2}; {} of {} frames delivered in {:.3} s, offered {:.2} Mpps",
            self.mpps,
            self.round_mpps.len(),
            self.received,
            self.sent,
            self.seconds,
            self.offered_mpps
        );
        if let Some(f) = &self.devmap {
            let _ = write!(
                s,
                ", {:.1} frames per devmap flush, {} dropped",
                f.frames_per_flush, f.drops
            );
        }
        if let Some(d) = self.entry_drops.filter(|d| *d > 0) {
            let _ = write!(s, ", {d} dropped entering the router");
        }
        if let Some(f) = self.xdp_forwarded {
            let _ = write!(s, ", {f} forwarded by XDP");
        }
        if let Some(m) = &self.xdp_mode {
            let _ = write!(s, ", {m} mode");
        }
        if let Some(r) = &self.fib_results {
            let _ = write!(s, ", lookups {r:?}");
        }
        if let Some(t) = &self.program_time {
            let _ = write!(s, "; {}", t.describe());
        }
        s + ")"
    }
}

/// `mpps` in Gbit/s at the mean size of `frames` frames of `bytes` bytes in all.
pub(super) fn gbps(mpps: f64, frames: u64, bytes: u64) -> f64 {
    if frames == 0 { 0.0 } else { mpps * (bytes as f64 / frames as f64) * 8.0 / 1e3 }
}

/// The devmap flushes of one measurement, from the `xdp:xdp_devmap_xmit` tracepoint.
#[derive(Debug, Serialize, Clone, Copy, PartialEq)]
pub(super) struct FlushDelta {
    /// Flushes (calls of the egress driver's `ndo_xdp_xmit`).
    pub(super) flushes: u64,
    /// Frames the driver took.
    pub(super) sent: u64,
    /// Frames the driver did not take: dropped at transmit.
    pub(super) drops: u64,
    /// Flushes that failed with an error.
    pub(super) errors: u64,
    /// `sent / flushes`: how well the bulk queue batches (16 at most).
    pub(super) frames_per_flush: f64,
}

impl FlushDelta {
    #[expect(clippy::cast_precision_loss, reason = "frame counts stay far below 2^52")]
    pub(super) fn between(before: &FlushStats, after: &FlushStats) -> Self {
        let flushes = after.flushes.saturating_sub(before.flushes);
        let sent = after.sent.saturating_sub(before.sent);
        Self {
            flushes,
            sent,
            drops: after.drops.saturating_sub(before.drops),
            errors: after.errors.saturating_sub(before.errors),
            frames_per_flush: if flushes == 0 { 0.0 } else { sent as f64 / flushes as f64 },
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::bench::program_time::RunStats;

    #[test]
    fn flush_deltas() {
        let b = FlushStats { flushes: 10, sent: 100, drops: 1, errors: 0 };
        let a = FlushStats { flushes: 30, sent: 420, drops: 1, errors: 2 };
        let d = FlushDelta::between(&b, &a);
        assert_eq!((d.flushes, d.sent, d.drops, d.errors), (20, 320, 0, 2));
        assert!((d.frames_per_flush - 16.0).abs() < 1e-9);
        assert!(FlushDelta::between(&a, &a).frames_per_flush.abs() < f64::EPSILON);
    }

    #[test]
    fn the_median_keeps_the_program_time() {
        let t = ProgramTime::between(
            "p".into(),
            1,
            10,
            RunStats::default(),
            RunStats { run_time_ns: 500, runs: 10 },
        );
        let rounds = [measurement(1.0, None), measurement(3.0, None), measurement(2.0, Some(t))];
        let m = Measurement::median_of(&rounds);
        assert!((m.mpps - 2.0).abs() < 1e-9, "the median round");
        assert_eq!(m.program_time.and_then(|t| t.ns_per_packet()), Some(50.0));
    }

    /// One round of 100 64-byte frames at `mpps`, for the tests of the report.
    pub(in crate::bench) fn measurement(
        mpps: f64,
        program_time: Option<ProgramTime>,
    ) -> Measurement {
        Measurement {
            sent: 100,
            received: 100,
            received_bytes: 6400,
            seconds: 1.0,
            mpps,
            gbps: mpps * 64.0 * 8.0 / 1e3,
            round_mpps: vec![mpps],
            offered_mpps: mpps,
            devmap: None,
            entry_drops: None,
            xdp_forwarded: None,
            xdp_mode: None,
            fib_results: None,
            program_time,
        }
    }
}
