//! The time each XDP forwarder's program takes per packet, by the kernel's own accounting: BPF
//! run-time statistics (`BPF_ENABLE_STATS`) over a fixed number of frames after its last round.

use anyhow::{Context as _, anyhow};
use serde::Serialize;
use serde_json::Value;

use super::{
    interrupt::interrupted,
    matrix::CellContext,
    programs::{BenchPrograms, Budget},
    topology::Topology,
};

/// Frames sent, with BPF run-time statistics on, to measure an XDP forwarder's time per packet.
pub(super) const PROGRAM_TIME_FRAMES: u64 = 500_000;
/// What BPF run-time statistics add to each run of a program (not measured here: it is part of
/// every time per packet taken with them, the ceiling's included).
pub(super) const STATS_OVERHEAD: &str = "two clock reads and a counter update per run";

impl BenchPrograms {
    /// With `ctx.program_time`, the time per packet of the XDP program on the router's input
    /// (see [`Self::measure_program_time`]); a failure is reported in the result, not returned,
    /// unless the run was interrupted.
    pub(super) fn program_time(
        &self,
        ctx: &CellContext<'_>,
        topo: &Topology,
    ) -> anyhow::Result<Option<ProgramTime>> {
        if !ctx.program_time {
            return Ok(None);
        }
        match self.measure_program_time(topo) {
            Ok(t) => Ok(Some(t)),
            Err(e) if interrupted() => Err(e),
            Err(e) => Ok(Some(ProgramTime::NotMeasured { reason: format!("{e:#}") })),
        }
    }

    /// The kernel's own accounting of the XDP program attached to the router's input: turns
    /// BPF run-time statistics on (`BPF_ENABLE_STATS`), sends [`PROGRAM_TIME_FRAMES`] frames
    /// and divides the program's added run time by its added runs. The statistics are off
    /// again when this returns, also on failure (closing the descriptor turns them off).
    fn measure_program_time(&self, topo: &Topology) -> anyhow::Result<ProgramTime> {
        let link: Value =
            serde_json::from_str(&topo.router.ip(&["-j", "link", "show", "dev", &topo.rtr_in])?)?;
        let id = xdp_prog_id(&link[0])
            .ok_or_else(|| anyhow!("no XDP program attached to {}: {link}", topo.rtr_in))?;
        let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
            .context("turn BPF run-time statistics on (BPF_ENABLE_STATS)")?;
        self.settled_count()?;
        let (name, before) = program_run_stats(id)?;
        let (sent, _) = self.send(topo, Budget::Frames(PROGRAM_TIME_FRAMES))?;
        self.settled_count()?;
        let (_, after) = program_run_stats(id)?;
        drop(stats);
        Ok(ProgramTime::between(name, id, sent, before, after))
    }
}

/// The id of the XDP program attached to a device in native (driver) mode, or of its only XDP
/// program, from its entry in `ip -j link show`.
fn xdp_prog_id(link: &Value) -> Option<u32> {
    // XDP_ATTACHED_DRV
    const DRIVER: u64 = 1;
    let xdp = link.get("xdp")?;
    let id = |v: &Value| v["prog"]["id"].as_u64().and_then(|i| u32::try_from(i).ok());
    let attached = xdp["attached"].as_array().map_or(&[][..], Vec::as_slice);
    attached
        .iter()
        .find(|a| a["mode"].as_u64() == Some(DRIVER))
        .and_then(id)
        .or_else(|| id(xdp))
        .or_else(|| match attached {
            [only] => id(only),
            _ => None,
        })
}

/// A loaded program's name and run-time statistics, by id.
fn program_run_stats(id: u32) -> anyhow::Result<(String, RunStats)> {
    let info = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == id)
        .ok_or_else(|| anyhow!("program {id} is not loaded"))?;
    let name = info.name_as_str().unwrap_or_default().to_owned();
    let stats = RunStats {
        run_time_ns: u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX),
        runs: info.run_count(),
    };
    Ok((name, stats))
}

/// Whether BPF run-time statistics are on (`kernel.bpf_stats_enabled`, which also shows them on
/// while any `BPF_ENABLE_STATS` descriptor is open).
pub(super) fn bpf_stats_enabled() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").is_ok_and(|s| s.trim() == "1")
}

/// How the XDP programs' time per packet was measured, for the report.
pub(super) fn program_time_method(measured: bool, stats_already_on: bool) -> String {
    if !measured {
        return "not measured (--no-program-time)".to_owned();
    }
    let mut s = format!(
        "BPF run-time statistics (BPF_ENABLE_STATS, run_time_ns / run_cnt of the program on the router's input) over {PROGRAM_TIME_FRAMES} frames after each XDP forwarder's last round, turned on for that phase only; includes the statistics' own cost, {STATS_OVERHEAD}"
    );
    if stats_already_on {
        s.push_str("; kernel.bpf_stats_enabled was already 1, so the rates include that cost too");
    }
    s
}

/// A program's run-time statistics (`bpf_prog_info`), counted while they are on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct RunStats {
    /// `run_time_ns`: time spent in the program, all CPUs together.
    pub(super) run_time_ns: u64,
    /// `run_cnt`: runs of the program.
    pub(super) runs: u64,
}

/// The time an XDP forwarder's program takes per packet, or why it was not measured.
#[derive(Debug, Serialize, Clone, PartialEq)]
#[serde(tag = "status", rename_all = "snake_case")]
pub(super) enum ProgramTime {
    Measured {
        /// The program's name, as the kernel knows it.
        program: String,
        /// Its id.
        id: u32,
        /// Frames the generator sent in the phase.
        frames: u64,
        /// Runs of the program in the phase (frames the router's input had no room for never
        /// reach it).
        runs: u64,
        /// Time spent in the program in the phase.
        run_time_ns: u64,
        /// `run_time_ns / runs`, the statistics' own cost included.
        ns_per_packet: f64,
    },
    NotMeasured {
        reason: String,
    },
}

impl ProgramTime {
    /// From the statistics before and after sending `frames`.
    #[expect(clippy::cast_precision_loss, reason = "counts and nanoseconds stay far below 2^52")]
    pub(super) fn between(
        program: String,
        id: u32,
        frames: u64,
        before: RunStats,
        after: RunStats,
    ) -> Self {
        let runs = after.runs.saturating_sub(before.runs);
        let run_time_ns = after.run_time_ns.saturating_sub(before.run_time_ns);
        if runs == 0 || run_time_ns == 0 {
            return Self::NotMeasured {
                reason: format!(
                    "{program} (id {id}) counted {runs} runs and {run_time_ns} ns over {frames} frames: the statistics did not count"
                ),
            };
        }
        Self::Measured {
            program,
            id,
            frames,
            runs,
            run_time_ns,
            ns_per_packet: run_time_ns as f64 / runs as f64,
        }
    }

    pub(super) fn ns_per_packet(&self) -> Option<f64> {
        match self {
            Self::Measured { ns_per_packet, .. } => Some(*ns_per_packet),
            Self::NotMeasured { .. } => None,
        }
    }

    pub(super) fn describe(&self) -> String {
        match self {
            Self::Measured { program, runs, ns_per_packet, .. } => format!(
                "XDP program {ns_per_packet:.1} ns per packet over {runs} runs of {program}, statistics' own cost included"
            ),
            Self::NotMeasured { reason } => format!("XDP program time not measured: {reason}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_time_is_run_time_over_runs() {
        let before = RunStats { run_time_ns: 1_000, runs: 10 };
        let after = RunStats { run_time_ns: 1_000 + 8_100_000, runs: 10 + 100_000 };
        let t = ProgramTime::between("sluice_xdp".into(), 7, 500_000, before, after);
        assert_eq!(t.ns_per_packet(), Some(81.0));
        let ProgramTime::Measured { program, id, frames, runs, run_time_ns, .. } = &t else {
            panic!("{t:?}")
        };
        assert_eq!(
            (program.as_str(), *id, *frames, *runs, *run_time_ns),
            ("sluice_xdp", 7, 500_000, 100_000, 8_100_000)
        );
        assert!(t.describe().contains("81.0 ns per packet"), "{}", t.describe());
        // Statistics that did not count (off, or the program never ran) give no figure.
        for after in [before, RunStats { run_time_ns: 5_000, runs: 10 }] {
            let t = ProgramTime::between("p".into(), 1, 500_000, before, after);
            assert!(matches!(t, ProgramTime::NotMeasured { .. }), "{t:?}");
            assert_eq!(t.ns_per_packet(), None);
            assert_eq!(serde_json::to_value(&t).unwrap()["status"], "not_measured");
        }
    }

    #[test]
    fn xdp_program_ids_from_ip_link() {
        let v: Value = serde_json::from_str(
            r#"[{"ifindex":5,"ifname":"sbi","xdp":{"mode":1,"prog":{"id":42,"name":"sluice_xdp","tag":"ab","jited":1},"attached":[{"mode":1,"prog":{"id":42,"name":"sluice_xdp","tag":"ab","jited":1}}]}}]"#,
        )
        .unwrap();
        assert_eq!(xdp_prog_id(&v[0]), Some(42));
        // Generic and native at once: the native one.
        let v: Value = serde_json::from_str(
            r#"{"xdp":{"mode":4,"attached":[{"mode":2,"prog":{"id":9}},{"mode":1,"prog":{"id":11}}]}}"#,
        )
        .unwrap();
        assert_eq!(xdp_prog_id(&v), Some(11));
        let v: Value =
            serde_json::from_str(r#"{"xdp":{"mode":2,"attached":[{"mode":2,"prog":{"id":9}}]}}"#)
                .unwrap();
        assert_eq!(xdp_prog_id(&v), Some(9));
        assert_eq!(xdp_prog_id(&serde_json::json!({"ifindex": 5, "ifname": "sbi"})), None);
    }
}
