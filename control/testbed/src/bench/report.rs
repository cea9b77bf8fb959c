//! Everything one run measured ([`Report`]): written as JSON (`--json`) and printed as tables.
//! The JSON's fields and the tables' layout are read by scripts and people: keep them stable.

use std::{
    collections::BTreeMap, fmt::Write as _, fs::File, io::Write as _, path::Path, time::Duration,
};

use anyhow::Context as _;
use serde::Serialize;
use sluice_common::bench::TEMPLATE_LEN;

use super::{
    args::Forwarder,
    daemon::DaemonLoad,
    latency::{LoadLag, RouteLatency},
    measurement::Measurement,
    program_time::{PROGRAM_TIME_FRAMES, ProgramTime, STATS_OVERHEAD},
    steps::ProgramSteps,
};
use crate::table::Table;

/// Routes sampled to estimate a table's share of more-specifics.
const MORE_SPECIFIC_SAMPLE: usize = 20_000;

/// The 1, 5 and 15 minute load averages.
pub(super) fn load_average() -> [f64; 3] {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut it = text.split_whitespace().map(|x| x.parse().unwrap_or(f64::NAN));
    [(); 3].map(|()| it.next().unwrap_or(f64::NAN))
}

pub(super) fn format_load(l: [f64; 3]) -> String {
    format!("{:.2} {:.2} {:.2}", l[0], l[1], l[2])
}

/// Sluice's rate over the others', in one cell.
#[derive(Debug, Serialize, Default)]
pub(super) struct Ratios {
    pub(super) sluice_linux: Option<f64>,
    pub(super) sluice_fib_lookup: Option<f64>,
    pub(super) sluice_ceiling: Option<f64>,
    /// Sluice over the ceiling that reads the destination address.
    pub(super) sluice_ceiling_read: Option<f64>,
    /// Sluice with the full table over Sluice with one route (full-table cells).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) sluice_full_over_one: Option<f64>,
    /// Sluice with hook rules over Sluice with empty hook tables.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) hooks_over_empty: Option<f64>,
}

/// One (family, table) cell.
#[derive(Debug, Serialize)]
pub(super) struct Cell {
    pub(super) family: &'static str,
    /// `one` or `full`.
    pub(super) table: &'static str,
    /// Routes of the table in the router's kernel (besides the connected ones).
    pub(super) routes: usize,
    /// By forwarder name.
    pub(super) forwarders: BTreeMap<&'static str, Measurement>,
    pub(super) ratios: Ratios,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) daemon: Option<DaemonLoad>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) route_add: Option<RouteLatency>,
    /// Per-step program times and A/B comparisons, interleaved rounds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) program_steps: Option<ProgramSteps>,
    /// Forwarders that could not be measured, with the error.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub(super) failures: BTreeMap<&'static str, String>,
}

/// A family's synthetic table.
#[derive(Debug, Serialize)]
pub(super) struct TableReport {
    pub(super) family: &'static str,
    pub(super) routes: usize,
    pub(super) next_hops: u8,
    pub(super) seed: u64,
    /// Routes per prefix length.
    histogram: BTreeMap<u8, usize>,
    pub(super) mean_prefix_len: f64,
    /// Share of routes covered by a shorter one (estimated from a sample).
    pub(super) more_specific_share: f64,
    generate_s: f64,
    /// How long adding it to the router's kernel over rtnetlink took.
    pub(super) kernel_install_s: Option<f64>,
    /// How long deleting it took (only when a later cell needed it gone).
    pub(super) kernel_remove_s: Option<f64>,
    /// How far the daemon's dataplane lagged behind the kernel while it took the table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) load_lag: Option<LoadLag>,
    /// The peak resident memory (`VmHWM`) of the daemon that ran while the kernel took the
    /// table, KiB: started before it, read when the kernel had it all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) load_peak_rss_kib: Option<u64>,
}

impl TableReport {
    pub(super) fn of(table: &Table, next_hops: u8, generated: Duration) -> Self {
        Self {
            family: table.family.name(),
            routes: table.len(),
            next_hops,
            seed: table.seed,
            histogram: table.histogram(),
            mean_prefix_len: table.mean_len(),
            more_specific_share: table.more_specific_share(MORE_SPECIFIC_SAMPLE),
            generate_s: generated.as_secs_f64(),
            kernel_install_s: None,
            kernel_remove_s: None,
            load_lag: None,
            load_peak_rss_kib: None,
        }
    }
}

/// The 1, 5 and 15 minute load averages when the run started and when it ended.
#[derive(Debug, Serialize)]
pub(super) struct LoadAverages {
    pub(super) start: [f64; 3],
    pub(super) end: [f64; 3],
}

/// Everything one run measured.
#[derive(Debug, Serialize)]
pub(super) struct Report {
    /// `--frame-size` as given: a length in bytes or `imix`.
    pub(super) frame_size: String,
    /// The length of every frame, when all are the same size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) frame_len: Option<usize>,
    /// The mean length of the frames sent.
    pub(super) mean_frame_len: f64,
    pub(super) destinations: u32,
    pub(super) seed: u64,
    pub(super) budget: String,
    pub(super) cpus: usize,
    /// Where the chain's stages ran.
    pub(super) cpu_plan: String,
    pub(super) kernel: String,
    pub(super) load_average: LoadAverages,
    /// The tracepoint devmap flushes were counted at, or why they were not.
    pub(super) flush_counter: String,
    /// How the XDP programs' time per packet (`program_time` of each XDP forwarder) was
    /// measured, or that it was not.
    pub(super) program_time: String,
    pub(super) tables: Vec<TableReport>,
    pub(super) results: Vec<Cell>,
}

impl Report {
    /// Writes the JSON to `json` and the chart to `plot`, or beside the JSON.
    pub(super) fn write(&self, json: Option<&Path>, plot: Option<&Path>) -> anyhow::Result<()> {
        if let Some(path) = json {
            let mut f = File::create(path).with_context(|| format!("create {}", path.display()))?;
            serde_json::to_writer_pretty(&mut f, self)?;
            writeln!(f)?;
        }
        let plot = plot.map(Path::to_owned).or_else(|| json.map(|j| j.with_extension("svg")));
        if let Some(path) = plot {
            std::fs::write(&path, self.svg())
                .with_context(|| format!("write {}", path.display()))?;
        }
        Ok(())
    }

    /// One line per cell: each forwarder's rate and Sluice's ratios.
    fn rate_table(&self, out: &mut String) {
        const COLUMNS: [Forwarder; 5] = [
            Forwarder::Linux,
            Forwarder::FibLookup,
            Forwarder::Ceiling,
            Forwarder::CeilingRead,
            Forwarder::Sluice,
        ];
        let ratios = |r: &Ratios| {
            [
                ("sluice/linux", r.sluice_linux),
                ("/fib_lookup", r.sluice_fib_lookup),
                ("/ceiling", r.sluice_ceiling),
                ("/ceiling_read", r.sluice_ceiling_read),
                ("full/one", r.sluice_full_over_one),
            ]
        };
        let _ = write!(out, "{:<24}", "Mpps");
        push_columns(out, COLUMNS.map(|f| (f.name(), f.name().to_owned())));
        out.push_str("  ");
        push_columns(out, ratios(&Ratios::default()).map(|(h, _)| (h, h.to_owned())));
        out.push('\n');
        for c in &self.results {
            let _ = write!(out, "{:<24}", cell_label(c));
            push_columns(
                out,
                COLUMNS.map(|f| {
                    let mpps = c.forwarders.get(f.name()).map(|m| format!("{:.2}", m.mpps));
                    (f.name(), mpps.unwrap_or_else(|| "-".into()))
                }),
            );
            out.push_str("  ");
            push_columns(
                out,
                ratios(&c.ratios)
                    .map(|(h, r)| (h, r.map_or_else(|| "-".into(), |r| format!("{r:.2}x")))),
            );
            out.push('\n');
        }
    }

    /// "64-byte" or "IMIX (...)", as `--frame-size` reads in prose.
    pub(super) fn frames(&self) -> String {
        match self.frame_len {
            Some(len) => format!("{len}-byte"),
            None => format!("{} ({:.0} bytes on average)", self.frame_size, self.mean_frame_len),
        }
    }

    /// One line per cell: each forwarder's rate in Gbit/s of frames.
    fn gbps_table(&self, out: &mut String) {
        let _ = write!(out, "{:<24}", "Gbit/s");
        push_columns(out, Forwarder::ALL.map(|f| (f.name(), f.name().to_owned())));
        out.push_str("   (Gbit/s of frames, no FCS, preamble or gap)\n");
        for c in &self.results {
            let _ = write!(out, "{:<24}", cell_label(c));
            push_columns(
                out,
                Forwarder::ALL.map(|f| {
                    let gbps = c.forwarders.get(f.name()).map(|m| format!("{:.2}", m.gbps));
                    (f.name(), gbps.unwrap_or_else(|| "-".into()))
                }),
            );
            out.push('\n');
        }
    }

    /// One line per cell with each XDP forwarder's program time per packet, when any was
    /// measured, and why any was not.
    fn program_time_table(&self, out: &mut String) {
        const COLUMNS: [Forwarder; 5] = [
            Forwarder::FibLookup,
            Forwarder::Ceiling,
            Forwarder::CeilingRead,
            Forwarder::Sluice,
            Forwarder::SluiceHooks,
        ];
        fn time(c: &Cell, f: Forwarder) -> Option<&ProgramTime> {
            c.forwarders.get(f.name())?.program_time.as_ref()
        }
        if !self.results.iter().any(|c| COLUMNS.iter().any(|&f| time(c, f).is_some())) {
            return;
        }
        let _ = writeln!(
            out,
            "XDP program time per packet (ns), from the kernel's BPF run-time statistics over {PROGRAM_TIME_FRAMES} frames; their own cost ({STATS_OVERHEAD}) included:"
        );
        let _ = write!(out, "{:<24}", "ns/pkt");
        push_columns(out, COLUMNS.map(|f| (f.name(), f.name().to_owned())));
        out.push('\n');
        for c in &self.results {
            let _ = write!(out, "{:<24}", cell_label(c));
            push_columns(
                out,
                COLUMNS.map(|f| {
                    let text = match time(c, f) {
                        Some(t) => t
                            .ns_per_packet()
                            .map_or_else(|| "failed".into(), |ns| format!("{ns:.1}")),
                        None => "-".into(),
                    };
                    (f.name(), text)
                }),
            );
            out.push('\n');
        }
        for c in &self.results {
            for f in COLUMNS {
                if let Some(ProgramTime::NotMeasured { reason }) = time(c, f) {
                    let _ = writeln!(
                        out,
                        "  {} {} {}: program time not measured: {reason}",
                        c.family,
                        c.table,
                        f.name()
                    );
                }
            }
        }
    }

    /// What each family's synthetic table is, and how the kernel and the dataplane took it.
    fn table_lines(&self, out: &mut String) {
        for t in &self.tables {
            let secs = |v: Option<f64>| v.map_or_else(|| "-".into(), |v| format!("{v:.1} s"));
            let _ = writeln!(
                out,
                "{} table: {} prefixes over {} next hops (seed {}, mean length {:.2}, {:.0}% more-specifics), kernel install {}, removal {}",
                t.family,
                t.routes,
                t.next_hops,
                t.seed,
                t.mean_prefix_len,
                t.more_specific_share * 100.0,
                secs(t.kernel_install_s),
                secs(t.kernel_remove_s)
            );
            if let Some(lag) = &t.load_lag {
                let _ = writeln!(
                    out,
                    "{} table: while the kernel took it, the dataplane lagged behind: {}{}",
                    t.family,
                    lag.describe(),
                    t.load_peak_rss_kib.map_or_else(String::new, |k| format!(
                        "; the daemon's peak RSS {:.0} MiB",
                        k as f64 / 1024.0
                    ))
                );
            }
        }
    }

    /// The results as a table for people.
    pub(super) fn text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "forwarding {} UDP frames to {} destinations on one veth chain ({}), {} CPUs ({}), Linux {}; load average {} at the start, {} at the end",
            self.frames(),
            self.destinations,
            self.budget,
            self.cpus,
            self.cpu_plan,
            self.kernel,
            format_load(self.load_average.start),
            format_load(self.load_average.end)
        );
        self.rate_table(&mut out);
        if self.frame_len != Some(TEMPLATE_LEN) {
            self.gbps_table(&mut out);
        }
        self.program_time_table(&mut out);
        for c in &self.results {
            if let Some(s) = &c.program_steps {
                out.push_str(&s.text(&format!("{} {}", c.family, c.table)));
            }
        }
        for c in &self.results {
            if let (Some(h), Some(r)) =
                (c.forwarders.get(Forwarder::SluiceHooks.name()), c.ratios.hooks_over_empty)
            {
                let _ = writeln!(
                    out,
                    "{} {}: Sluice with hook rules (matching none of the traffic) {:.2} Mpps, {r:.2}x Sluice with empty hook tables",
                    c.family, c.table, h.mpps
                );
            }
        }
        let short: Vec<String> = self
            .results
            .iter()
            .flat_map(|c| {
                c.forwarders.iter().filter(|(_, m)| m.received < m.sent).map(move |(f, m)| {
                    let entry = m.entry_drops.map_or_else(String::new, |d| {
                        format!(" ({d} dropped entering the router, its input ring full)")
                    });
                    format!("{} {} {f}: {} of {}{entry}", c.family, c.table, m.received, m.sent)
                })
            })
            .collect();
        for c in &self.results {
            for (f, e) in &c.failures {
                let first = e.lines().next().unwrap_or_default();
                let _ = writeln!(out, "FAILED {} {} {f}: {first}", c.family, c.table);
            }
        }
        if short.is_empty() {
            let _ =
                writeln!(out, "delivered: every frame sent reached the sink in every measurement");
        } else {
            let _ = writeln!(out, "delivered less than sent: {}", short.join("; "));
        }
        let _ = writeln!(
            out,
            "frames per devmap flush (frames dropped at transmit), {}:",
            self.flush_counter
        );
        for c in &self.results {
            let flushes: Vec<String> = c
                .forwarders
                .iter()
                .filter_map(|(f, m)| {
                    m.devmap.map(|d| format!("{f} {:.1} ({})", d.frames_per_flush, d.drops))
                })
                .collect();
            if !flushes.is_empty() {
                let _ = writeln!(out, "  {} {}: {}", c.family, c.table, flushes.join(", "));
            }
        }
        self.table_lines(&mut out);
        for c in &self.results {
            if let Some(d) = &c.daemon {
                let _ = writeln!(out, "daemon start, {} {}: {}", c.family, c.table, d.describe());
            }
        }
        for c in &self.results {
            if let Some(r) = &c.route_add {
                let _ = writeln!(out, "route add, {} {}: {}", c.family, c.table, r.describe());
            }
        }
        out
    }
}

/// Cells of a report table after its label column, each right-aligned in a column one wider
/// than its header and at least 8 wide: `(header, text)`, the header line passing the header as
/// its text. Every column ends where its header does.
fn push_columns(out: &mut String, cells: impl IntoIterator<Item = (&'static str, String)>) {
    for (header, text) in cells {
        let width = (header.len() + 1).max(8);
        let _ = write!(out, " {text:>width$}");
    }
}

/// A cell's label in the tables: `ipv4 one route (1)`, `ipv6 full (230000)`.
fn cell_label(c: &Cell) -> String {
    format!("{} {} ({})", c.family, if c.table == "one" { "one route" } else { "full" }, c.routes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::{
        measurement::tests::measurement,
        program_time::{RunStats, program_time_method},
        programs::Budget,
        topology::CpuPlan,
    };

    #[test]
    fn program_times_are_reported() {
        let measured = |ns: u64| {
            ProgramTime::between(
                "p".into(),
                1,
                500_000,
                RunStats::default(),
                RunStats { run_time_ns: ns * 1000, runs: 1000 },
            )
        };
        let failed = ProgramTime::NotMeasured { reason: "no BPF_ENABLE_STATS".into() };
        let r = report(vec![cell(BTreeMap::from([
            ("linux", measurement(0.8, None)),
            ("ceiling", measurement(3.5, Some(measured(22)))),
            ("ceiling_read", measurement(3.2, Some(measured(64)))),
            ("sluice", measurement(2.7, Some(measured(81)))),
            ("sluice_hooks", measurement(2.5, Some(failed))),
        ]))]);
        let text = r.text();
        let lines: Vec<&str> = text.lines().collect();
        let at =
            lines.iter().position(|l| l.starts_with("XDP program time per packet (ns)")).unwrap();
        assert!(lines[at].contains("own cost"), "the statistics' overhead is mentioned");
        let header: Vec<&str> = lines[at + 1].split_whitespace().collect();
        assert_eq!(
            header,
            ["ns/pkt", "fib_lookup", "ceiling", "ceiling_read", "sluice", "sluice_hooks"]
        );
        let row: Vec<&str> = lines[at + 2].split_whitespace().collect();
        assert_eq!(row, ["ipv4", "one", "route", "(1)", "-", "22.0", "64.0", "81.0", "failed"]);
        assert_eq!(
            lines[at + 3],
            "  ipv4 one sluice_hooks: program time not measured: no BPF_ENABLE_STATS"
        );
        // Each column ends where its header does.
        for (name, value) in [
            ("ceiling", "22.0"),
            ("ceiling_read", "64.0"),
            ("sluice", "81.0"),
            ("sluice_hooks", "failed"),
        ] {
            let end = |l: &str, w: &str| l.find(&format!(" {w}")).unwrap() + 1 + w.len();
            assert_eq!(end(lines[at + 1], name), end(lines[at + 2], value), "{name}");
        }
        // The JSON keeps the figure beside the rate; without it, the field is left out.
        let json = serde_json::to_value(&r).unwrap();
        let sluice = &json["results"][0]["forwarders"]["sluice"];
        assert_eq!(sluice["program_time"]["ns_per_packet"], 81.0);
        assert_eq!(sluice["program_time"]["status"], "measured");
        assert_eq!(sluice["mpps"], 2.7);
        assert!(json["results"][0]["forwarders"]["linux"].get("program_time").is_none());
        assert!(json["program_time"].as_str().unwrap().contains("BPF_ENABLE_STATS"));

        // Without any program time (--no-program-time), no table.
        let r = report(vec![cell(BTreeMap::from([("sluice", measurement(2.7, None))]))]);
        assert!(!r.text().contains("XDP program time"));
        assert!(program_time_method(false, false).contains("--no-program-time"));
    }

    fn report(results: Vec<Cell>) -> Report {
        Report {
            frame_size: "64".into(),
            frame_len: Some(64),
            mean_frame_len: 64.0,
            destinations: 4000,
            seed: 1,
            budget: Budget::Frames(100).describe(),
            cpus: 2,
            cpu_plan: CpuPlan::Shared.describe(),
            kernel: "6.18".into(),
            load_average: LoadAverages { start: [0.0; 3], end: [0.0; 3] },
            flush_counter: "xdp:xdp_devmap_xmit".into(),
            program_time: program_time_method(true, false),
            tables: vec![],
            results,
        }
    }

    fn cell(forwarders: BTreeMap<&'static str, Measurement>) -> Cell {
        Cell {
            family: "ipv4",
            table: "one",
            routes: 1,
            forwarders,
            ratios: Ratios::default(),
            daemon: None,
            route_add: None,
            program_steps: None,
            failures: BTreeMap::new(),
        }
    }
}
