//! `sluice bench`: the forwarding benchmark of the README. Several forwarders carry the same
//! traffic through the same veth chain in one run, with one route and with a full Internet table,
//! for IPv4 and IPv6, so that their ratios mean something even where absolute rates drift between
//! runs and machines.
//!
//! ```text
//!  gen ns                    router ns                                   sink ns
//!  sluice_gen --veth--> rtr_in [forwarder under test] rtr_out --veth--> sluice_sink
//! ```
//!
//! The forwarders, one after the other on the router:
//! - **linux**: the kernel's own forwarding (`ip_forward=1`, no XDP);
//! - **`fib_lookup`**: `sluice_fib_fwd`, the kernel's `xdp_fwd` sample: `bpf_fib_lookup` in the
//!   kernel's FIB, TTL decrement, MACs from the lookup, redirect through a devmap;
//! - **ceiling**: `sluice_ceiling`, which rewrites the MACs from a map and redirects through a
//!   devmap without looking at the packet: the best any XDP router can do on this chain;
//! - **`ceiling_read`**: `sluice_ceiling_read`, the ceiling after it reads the Ethernet type and the
//!   destination address, the least a router reads: the frame arrives cold, written on the
//!   generator's CPU, and this read waits for it where the ceiling's writes do not;
//! - **sluice**: the daemon (this binary, `sluice daemon`) with kernel forwarding off.
//!
//! The tables: **one route** (the default route via the sink) and a **full table**, a synthetic
//! copy of today's default-free zone ([`table`]: 1,000,000 IPv4 or 230,000 IPv6 prefixes by
//! default, spread over a few sink-side next hops), put into the router's kernel over rtnetlink.
//! Linux and `bpf_fib_lookup` read it there; the daemon mirrors it into its maps. Both tables are
//! measured with the same frames: destinations drawn at random from the full table's prefixes.
//! Each family's one-route cell runs first; the full tables come last, IPv6 before IPv4, so that
//! the large IPv4 table is installed once and never removed (the namespace takes it along).
//!
//! The generator is an XDP program run by `BPF_PROG_TEST_RUN` in live-frames mode from a thread
//! inside the gen namespace: each frame it writes is sent out of the gen-side veth. The sink, an
//! XDP program too, counts the generated frames per CPU and drops everything. The rate is frames
//! counted at the sink over the time the generator ran. The router gets permanent neighbours for
//! the sink-side next hops, so Linux never queues on resolution, and GRO on `rtr_in`, because
//! frames redirected into a veth are only taken when its peer runs NAPI (an XDP program or GRO).
//!
//! Everything runs to completion on the generator's CPU: each batch is received, forwarded and
//! sunk in the softirq work of the test run, so no frame is lost and the rate is the inverse of
//! the whole chain's cost per frame (generator and sink included, the same for every forwarder).
//! Moving the router's NAPI to a thread on the other CPU made the forwarders slower here, with
//! most frames dropped at the full veth ring. An XDP sink is also the cheapest one for Linux,
//! though veth copies each forwarded skb into a page to run XDP on it.
//!
//! Beside the rates: the frames per devmap flush of each XDP forwarder (counted at the
//! `xdp:xdp_devmap_xmit` tracepoint for the router's two veths, which get ifindexes no other
//! namespace is likely to use; the generator's own flushes there count the frames the router's
//! input ring had no room for), the time the daemon takes to carry the table into its maps when it
//! starts with the table already in the kernel and its resident memory then, the time to install
//! the table in the kernel, and the route-add latency: from `ip route add` in the router
//! namespace until the prefix is in the dataplane's route trie (and, with one route, until it
//! shows in `sluice routes --json`).
//!
//! And, steadier than rates on a shared machine, the time each XDP forwarder's program takes per
//! packet by the kernel's own accounting: after a forwarder's rate in the last round, while it is
//! still attached, BPF run-time statistics are turned on (`BPF_ENABLE_STATS`, off again when its
//! descriptor closes), a fixed number of frames is sent, and the added `run_time_ns` of the
//! program attached to `rtr_in` is divided by its added `run_cnt`. The statistics' own cost
//! (two clock reads per run) is part of the figure; `--no-program-time` skips it.
//!
//! Results: a table on stdout, everything as JSON (`--json`) and a bar chart as SVG (`--plot`,
//! by default beside the JSON).

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs::File,
    io::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail, ensure};
use aya::{
    Ebpf,
    maps::{Array, LpmTrie, Map, MapData, PerCpuArray, xdp::DevMapHash},
    programs::{TestRun as _, TestRunAttrs, TestRunOptions, TracePoint, Xdp, XdpMode},
};
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
use serde::Serialize;
use serde_json::Value;
use sluice_common::{
    FAMILY_V4, FAMILY_V6, Route,
    bench::{
        CeilingConfig, FIB_RESULT_SLOTS, FIB_SLOT_NO_DEVMAP, FIB_SLOT_NOT_FORWARDABLE,
        FIB_SLOT_OTHER_RESULT, FLUSH_SLOT_GENERATOR, FLUSH_SLOT_ROUTER, FlushConfig, FlushStats,
        GEN_PATTERN, GEN_SIZES, GenConfig, GenDest, MAX_FRAME_LEN, MAX_GEN_DESTS, SinkCount,
        TEMPLATE_LEN, UDP_PORT, flush_record, names, offsets,
    },
};

use self::table::{Family, NextHops, RTPROT_BGP, RouteOp, Table};
use sluice::plugins::hex;
use sluice_dataplane::PinDir;

use crate::{
    netns::{self, NetNs},
    table,
};

/// The benchmark's programs, built from `dataplane-ebpf/src/bench.rs` with the forwarding program
/// (see `build.rs`).
static BENCH_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("SLUICE_BENCH_XDP"));

/// Options of `sluice bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Frames the generator sends in each round of a measurement.
    #[arg(long, default_value_t = 2_000_000, conflicts_with = "duration")]
    pub packets: u64,
    /// Rounds over every forwarder in each cell (each forwarder measured once per round, in
    /// turn); a forwarder's rate is its median round.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=50))]
    pub rounds: u32,
    /// Send for this many seconds in each measurement instead of a fixed number of frames.
    #[arg(long, value_name = "SECONDS")]
    pub duration: Option<f64>,
    /// Distinct destination addresses, drawn at random from the full table's prefixes.
    #[arg(long, default_value_t = 4000, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_GEN_DESTS)))]
    pub destinations: u32,
    /// Size of the generated frames in bytes, Ethernet header to the end of the payload without
    /// the FCS (64 to 1514), or `imix`: in every 12 frames, 7 of 64 bytes, 4 of 590 and 1 of 1514
    /// (the simple IMIX of 40-, 576- and 1500-byte IP packets), 360 bytes on average.
    #[arg(long, value_name = "BYTES|imix", default_value = "64", value_parser = parse_frame_size)]
    pub frame_size: FrameSize,
    /// Address families to measure.
    #[arg(long, value_enum, default_value_t = FamilyChoice::Both)]
    pub family: FamilyChoice,
    /// Routing tables to measure: the default route alone, the synthetic full table, or both.
    #[arg(long, value_enum, default_value_t = TableChoice::Both)]
    pub tables: TableChoice,
    /// Forwarders to measure (comma-separated); they always run in the order linux, fib-lookup,
    /// ceiling, ceiling-read, sluice, sluice-hooks.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "linux,fib-lookup,ceiling,ceiling-read,sluice,sluice-hooks"
    )]
    pub forwarders: Vec<Forwarder>,
    /// Routes in the full table: one number for both families, or the IPv4 and the IPv6 size.
    #[arg(long, value_name = "SIZE[,SIZE_V6]", default_value = "1000000,230000", value_parser = parse_table_sizes)]
    pub table_size: TableSizes,
    /// Sink-side next hops the full table's routes are spread over.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(1..=16))]
    pub next_hops: u8,
    /// Seed of the synthetic table and of the destinations drawn from it.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Trials of the route-add latency measurement in each cell; 0 skips it.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(0..=250))]
    pub route_trials: u32,
    /// Also write the results as JSON to this file.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// Write the bar chart (SVG) here; by default beside the JSON, with the extension `.svg`.
    #[arg(long, value_name = "PATH")]
    pub plot: Option<PathBuf>,
    /// Keep the whole chain (generator, router, sink) on whichever CPU the kernel picks, as a
    /// single-CPU machine would, instead of giving the router's receive path a CPU of its own.
    #[arg(long)]
    pub shared_cpu: bool,
    /// The `sluice` executable that runs the daemon; this one by default.
    #[arg(long, value_name = "PATH")]
    pub sluice_bin: Option<PathBuf>,
    /// Skip the measurement of the XDP programs' time per packet from the kernel's BPF run-time
    /// statistics (a short extra phase for each XDP forwarder after its last round).
    #[arg(long)]
    pub no_program_time: bool,
}

/// `--family`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FamilyChoice {
    /// IPv4 only.
    Ipv4,
    /// IPv6 only.
    Ipv6,
    /// IPv4 and IPv6.
    Both,
}

/// `--tables`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TableChoice {
    /// The default route alone.
    One,
    /// The synthetic full table.
    Full,
    /// Both.
    Both,
}

/// A forwarder the benchmark measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum Forwarder {
    /// The kernel's forwarding.
    Linux,
    /// XDP with `bpf_fib_lookup`, as the kernel's `xdp_fwd` sample.
    #[value(alias = "fib")]
    FibLookup,
    /// XDP without any lookup: rewrite the MACs and redirect.
    Ceiling,
    /// The ceiling after reading the Ethernet type and the destination address, as any router must:
    /// what the first read of a frame costs.
    CeilingRead,
    /// The Sluice daemon and its dataplane.
    Sluice,
    /// Sluice with rules in its hook tables (filters on both addresses and a rate rule, none
    /// matching the traffic): what the tables cost once plugins use them.
    SluiceHooks,
}

impl Forwarder {
    /// Every forwarder, in the order of the measurements (and of the report).
    pub const ALL: [Self; 6] = [
        Self::Linux,
        Self::FibLookup,
        Self::Ceiling,
        Self::CeilingRead,
        Self::Sluice,
        Self::SluiceHooks,
    ];

    /// The name in the report and the JSON.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Linux => "linux",
            Self::FibLookup => "fib_lookup",
            Self::Ceiling => "ceiling",
            Self::CeilingRead => "ceiling_read",
            Self::Sluice => "sluice",
            Self::SluiceHooks => "sluice_hooks",
        }
    }
}

/// The simple IMIX in the order the generator sends it: 7 frames of 64 bytes (40-byte IP packets,
/// padded to the Ethernet minimum), 4 of 590 (576-byte IP packets) and 1 of 1514 (1500 bytes),
/// interleaved.
const IMIX: [u16; 12] = [64, 590, 64, 64, 590, 64, 1514, 64, 590, 64, 64, 590];

/// `--frame-size`: one size for every frame, or the IMIX.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameSize {
    /// Every frame this many bytes.
    Fixed(u16),
    /// [`IMIX`].
    Imix,
}

impl FrameSize {
    /// The frame length of each step of the generator's pattern.
    fn steps(self) -> Vec<u16> {
        match self {
            Self::Fixed(len) => vec![len],
            Self::Imix => IMIX.to_vec(),
        }
    }

    /// The distinct lengths (the generator's size slots, in order of first use) and, per step,
    /// its slot.
    fn slots(self) -> (Vec<u16>, Vec<u8>) {
        let mut lens: Vec<u16> = Vec::new();
        let pattern = self
            .steps()
            .into_iter()
            .map(|len| {
                let slot = lens.iter().position(|&l| l == len).unwrap_or_else(|| {
                    lens.push(len);
                    lens.len() - 1
                });
                slot as u8
            })
            .collect();
        (lens, pattern)
    }

    /// The mean frame length the generator sends.
    fn mean_len(self) -> f64 {
        let steps = self.steps();
        steps.iter().map(|&l| f64::from(l)).sum::<f64>() / steps.len() as f64
    }

    fn describe(self) -> String {
        match self {
            Self::Fixed(len) => format!("{len}-byte"),
            Self::Imix => "IMIX (7 x 64, 4 x 590, 1 x 1514 bytes)".into(),
        }
    }

    /// `--frame-size` as given.
    fn arg(self) -> String {
        match self {
            Self::Fixed(len) => len.to_string(),
            Self::Imix => "imix".into(),
        }
    }
}

fn parse_frame_size(s: &str) -> Result<FrameSize, String> {
    if s.eq_ignore_ascii_case("imix") {
        return Ok(FrameSize::Imix);
    }
    let len: usize =
        s.parse().map_err(|_| format!("{s:?} is neither a length in bytes nor imix"))?;
    if !(TEMPLATE_LEN..=MAX_FRAME_LEN).contains(&len) {
        return Err(format!(
            "frames are {TEMPLATE_LEN} to {MAX_FRAME_LEN} bytes (Ethernet header to the end of the payload, no FCS), not {len}"
        ));
    }
    Ok(FrameSize::Fixed(len as u16))
}

/// `--table-size`: the full table's routes per family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableSizes {
    /// IPv4 routes.
    pub v4: usize,
    /// IPv6 routes.
    pub v6: usize,
}

impl TableSizes {
    fn of(self, family: Family) -> usize {
        match family {
            Family::V4 => self.v4,
            Family::V6 => self.v6,
        }
    }
}

/// The most routes `--table-size` takes: what the dataplane's tries hold, less room for the
/// connected and local routes.
const MAX_TABLE_V4: usize = sluice_common::MAX_ROUTES_V4 as usize - 1024;
/// See [`MAX_TABLE_V4`].
const MAX_TABLE_V6: usize = sluice_common::MAX_ROUTES_V6 as usize - 1024;

fn parse_table_sizes(s: &str) -> Result<TableSizes, String> {
    let parse = |x: &str, max: usize| -> Result<usize, String> {
        let n: usize = x.trim().replace('_', "").parse().map_err(|e| format!("{x:?}: {e}"))?;
        if n == 0 || n > max {
            return Err(format!("{n} routes: the full table takes 1 to {max}"));
        }
        Ok(n)
    };
    match s.split_once(',') {
        Some((v4, v6)) => {
            Ok(TableSizes { v4: parse(v4, MAX_TABLE_V4)?, v6: parse(v6, MAX_TABLE_V6)? })
        }
        None => Ok(TableSizes { v4: parse(s, MAX_TABLE_V4)?, v6: parse(s, MAX_TABLE_V6)? }),
    }
}

/// Frames per live-frames batch: the NAPI weight, as a driver would deliver them.
const GEN_BATCH: u32 = 64;
/// Frames per `BPF_PROG_TEST_RUN` call; the syscall is cheap next to them.
const GEN_CHUNK: u64 = 1 << 20;
/// Frames of each warm-up round, sent until the sink sees nearly all of them.
const WARMUP_FRAMES: u64 = 100_000;
/// How long the forwarder under test may take to start delivering.
const WARMUP_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the daemon may take to attach and report its interfaces, plus [`READY_PER_ROUTE`]
/// for each route it has to take from the kernel first.
const DAEMON_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// See [`DAEMON_READY_TIMEOUT`].
const READY_PER_ROUTE: Duration = Duration::from_micros(200);
/// How long the route trie may stay short of the table once the daemon has logged that it is
/// ready (one count of a million routes takes a few seconds).
const READY_GRACE: Duration = Duration::from_secs(10);
/// How long a new route may take to show in the dataplane with one route, and with a full table
/// (where each change may cost the daemon a pass over the whole table).
const ROUTE_TIMEOUT: Duration = Duration::from_secs(2);
/// See [`ROUTE_TIMEOUT`].
const ROUTE_TIMEOUT_FULL: Duration = Duration::from_secs(30);
/// Interval between polls of `sluice routes --json`.
const ROUTE_POLL: Duration = Duration::from_millis(1);
/// Interval between reads of the lookup tables (route-add latency) or the pinned route trie.
const MAP_POLL: Duration = Duration::from_micros(100);
/// Routes sampled to estimate a table's share of more-specifics.
const MORE_SPECIFIC_SAMPLE: usize = 20_000;
/// Frames sent, with BPF run-time statistics on, to measure an XDP forwarder's time per packet.
const PROGRAM_TIME_FRAMES: u64 = 500_000;
/// What BPF run-time statistics add to each run of a program (not measured here: it is part of
/// every time per packet taken with them, the ceiling's included).
const STATS_OVERHEAD: &str = "two clock reads and a counter update per run";
/// First ifindex of the router's veths, offset by the process id so that parallel runs differ:
/// far above what any namespace numbers its own devices, so that the flush counter, which sees
/// every namespace's flushes, can tell this router's apart.
const IFINDEX_BASE: u32 = 1_000_000;

/// Runs the benchmark matrix and prints (and optionally writes) its results.
pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let _signals = SignalGuard::install()?;
    let budget = match args.duration {
        Some(s) if s.is_finite() && s > 0.0 && s <= 600.0 => {
            Budget::Time(Duration::from_secs_f64(s))
        }
        Some(s) => bail!("--duration must be between 0 and 600 seconds, not {s}"),
        None if args.packets > 0 => Budget::Frames(args.packets),
        None => bail!("--packets must be positive"),
    };
    let exe = match &args.sluice_bin {
        Some(p) => p.clone(),
        None => crate::sluice_exe()?,
    };
    let mut forwarders = args.forwarders.clone();
    forwarders.sort();
    forwarders.dedup();
    let (lens, _) = args.frame_size.slots();
    ensure!(
        args.destinations as usize * lens.len() <= MAX_GEN_DESTS as usize,
        "--destinations {} with {} frame sizes: at most {MAX_GEN_DESTS} destinations and sizes together",
        args.destinations,
        lens.len()
    );
    let phases = phases(args.family, args.tables);
    let load_start = load_average();
    eprintln!(
        "sluice bench: {} UDP frames to {} destinations, {}; {}; load average {}",
        args.frame_size.describe(),
        args.destinations,
        budget.describe(),
        phases.iter().map(|p| p.describe()).collect::<Vec<_>>().join(", "),
        format_load(load_start)
    );

    let mut tables = make_tables(args, &phases);
    let mut topo = Topology::build(args.next_hops).context("build the veth chain")?;
    topo.cpus = if args.shared_cpu { CpuPlan::Shared } else { topo.split_cpus()? };
    eprintln!("  {}", topo.cpus.describe());
    let mut bench = BenchPrograms::load(&topo, args.frame_size)?;
    if let Err(reason) = &bench.flush_counter {
        eprintln!("  devmap flushes not counted: {reason}");
    }
    let stats_on = bpf_stats_enabled();
    if stats_on {
        eprintln!(
            "  BPF run-time statistics are already on (kernel.bpf_stats_enabled = 1): the XDP forwarders' rates include their cost"
        );
    }
    let ctx = CellContext {
        exe: &exe,
        budget,
        forwarders: &forwarders,
        trials: args.route_trials,
        rounds: args.rounds,
        program_time: !args.no_program_time,
    };
    let cells = run_phases(&ctx, &mut bench, &topo, &phases, &mut tables)?;
    let report = Report {
        frame_size: args.frame_size.arg(),
        frame_len: match args.frame_size {
            FrameSize::Fixed(len) => Some(usize::from(len)),
            FrameSize::Imix => None,
        },
        mean_frame_len: args.frame_size.mean_len(),
        destinations: args.destinations,
        seed: args.seed,
        budget: budget.describe(),
        cpus: thread::available_parallelism().map_or(0, usize::from),
        cpu_plan: topo.cpus.describe(),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default(),
        load_average: LoadAverages { start: load_start, end: load_average() },
        flush_counter: match &bench.flush_counter {
            Ok(()) => "xdp:xdp_devmap_xmit".to_owned(),
            Err(reason) => format!("unavailable: {reason}"),
        },
        program_time: program_time_method(!args.no_program_time, stats_on),
        tables: tables.into_values().map(|t| t.info).collect(),
        results: cells,
    };
    drop(bench);
    drop(topo);
    print!("{}", report.text());
    report.write(args.json.as_deref(), args.plot.as_deref())?;
    let failed: Vec<String> = report
        .results
        .iter()
        .flat_map(|c| c.failures.keys().map(move |f| format!("{} {} {f}", c.family, c.table)))
        .collect();
    ensure!(failed.is_empty(), "{} measurements failed: {}", failed.len(), failed.join(", "));
    Ok(())
}

/// Makes the synthetic table of each family the phases need, and the destinations drawn from it.
fn make_tables(args: &BenchArgs, phases: &[Phase]) -> BTreeMap<Family, FamilyTable> {
    let mut tables: BTreeMap<Family, FamilyTable> = BTreeMap::new();
    for phase in phases {
        if !tables.contains_key(&phase.family) {
            let family = phase.family;
            let size = args.table_size.of(family);
            let start = Instant::now();
            let table = Table::generate(family, size, args.seed, args.next_hops);
            let destinations = table.destinations(args.destinations as usize, args.seed);
            let generated = start.elapsed();
            let info = TableReport::of(&table, args.next_hops, generated);
            eprintln!(
                "  {} table: {size} prefixes (mean length {:.2}, {:.0}% more-specifics) made in {:.1} s",
                family.name(),
                info.mean_prefix_len,
                info.more_specific_share * 100.0,
                generated.as_secs_f64()
            );
            tables.insert(family, FamilyTable { table, destinations, info });
        }
    }
    tables
}

/// Runs the cells in order: installs each full table before its cell, and removes it after when
/// a later cell follows.
fn run_phases(
    ctx: &CellContext<'_>,
    bench: &mut BenchPrograms,
    topo: &Topology,
    phases: &[Phase],
    tables: &mut BTreeMap<Family, FamilyTable>,
) -> anyhow::Result<Vec<Cell>> {
    let mut cells: Vec<Cell> = Vec::new();
    for (i, phase) in phases.iter().enumerate() {
        check_interrupted()?;
        let family = phase.family;
        let state = tables.get_mut(&family).expect("made above");
        bench.configure(family, topo, &state.destinations)?;
        let routes = match phase.table {
            TableKind::One => 1,
            TableKind::Full => {
                topo.router.ip(&[family.ip_flag(), "route", "del", "default"])?;
                // With Sluice measured, its daemon runs while the kernel takes the table, and
                // how far the dataplane lags behind the kernel is sampled.
                let daemon = if ctx.forwarders.contains(&Forwarder::Sluice) {
                    let ifaces = [topo.rtr_in.as_str(), topo.rtr_out.as_str()];
                    let mut d =
                        Daemon::start(ctx.exe, &topo.router, &ifaces, DAEMON_READY_TIMEOUT)?;
                    d.wait_forwarding(DAEMON_READY_TIMEOUT)?;
                    Some(d)
                } else {
                    None
                };
                let start = Instant::now();
                let lag = topo
                    .install_watching(&state.table, daemon.as_ref())
                    .with_context(|| format!("install the {} table", family.name()))?;
                state.info.kernel_install_s = Some(start.elapsed().as_secs_f64());
                if let Some(daemon) = daemon {
                    daemon.stop()?;
                }
                eprintln!(
                    "  {} full table: {} routes installed in the kernel in {:.1} s{}",
                    family.name(),
                    state.table.len(),
                    start.elapsed().as_secs_f64(),
                    lag.as_ref().map_or_else(String::new, |l| format!(
                        "; the dataplane behind it by {}",
                        l.describe()
                    ))
                );
                state.info.load_lag = lag;
                state.table.len()
            }
        };
        let mut cell = run_cell(ctx, bench, topo, *phase, routes)
            .with_context(|| format!("{} with {}", family.name(), phase.table.describe()))?;
        if phase.table == TableKind::Full
            && let Some(one) = cells.iter().find(|c| c.family == family.name() && c.table == "one")
        {
            cell.ratios.sluice_full_over_one =
                ratio(cell.forwarders.get("sluice"), one.forwarders.get("sluice"));
        }
        cells.push(cell);
        if phase.table == TableKind::Full && i + 1 < phases.len() {
            // Later cells must not run with this table in the kernel (nor the daemon load it).
            let start = Instant::now();
            topo.write_table(RouteOp::Delete, &state.table)
                .with_context(|| format!("remove the {} table", family.name()))?;
            state.info.kernel_remove_s = Some(start.elapsed().as_secs_f64());
        }
    }
    Ok(cells)
}

/// One (family, table) cell of the matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Phase {
    family: Family,
    table: TableKind,
}

impl Phase {
    fn describe(self) -> String {
        format!("{} {}", self.family.name(), self.table.describe())
    }
}

/// Which table a cell runs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TableKind {
    One,
    Full,
}

impl TableKind {
    const fn name(self) -> &'static str {
        match self {
            Self::One => "one",
            Self::Full => "full",
        }
    }

    const fn describe(self) -> &'static str {
        match self {
            Self::One => "one route",
            Self::Full => "full table",
        }
    }
}

/// The cells to run, in order: the one-route cells first, then the full tables, IPv6 before
/// IPv4, so that the largest table is the last and is never removed.
fn phases(family: FamilyChoice, tables: TableChoice) -> Vec<Phase> {
    let families: &[Family] = match family {
        FamilyChoice::Ipv4 => &[Family::V4],
        FamilyChoice::Ipv6 => &[Family::V6],
        FamilyChoice::Both => &[Family::V4, Family::V6],
    };
    let mut out = Vec::new();
    if tables != TableChoice::Full {
        out.extend(families.iter().map(|&family| Phase { family, table: TableKind::One }));
    }
    if tables != TableChoice::One {
        out.extend(families.iter().rev().map(|&family| Phase { family, table: TableKind::Full }));
    }
    out
}

/// A family's synthetic table, the destinations drawn from it and what is reported about it.
#[derive(Debug)]
struct FamilyTable {
    table: Table,
    destinations: Vec<IpAddr>,
    info: TableReport,
}

/// What does not change between the cells.
#[derive(Debug, Clone, Copy)]
struct CellContext<'a> {
    exe: &'a Path,
    budget: Budget,
    forwarders: &'a [Forwarder],
    trials: u32,
    /// Rounds over all forwarders; each forwarder's rate is its median round.
    rounds: u32,
    /// Whether the XDP forwarders' time per packet is measured (after the rate of the last
    /// round; inside a round, whether this is the last one and it is measured).
    program_time: bool,
}

/// Measures every forwarder with the table now in the router's kernel.
fn run_cell(
    ctx: &CellContext<'_>,
    bench: &mut BenchPrograms,
    topo: &Topology,
    phase: Phase,
    routes: usize,
) -> anyhow::Result<Cell> {
    let family = phase.family;
    eprintln!("  {} with {} ({routes} routes)", family.name(), phase.table.describe());
    let mut cell = Cell {
        family: family.name(),
        table: phase.table.name(),
        routes,
        forwarders: BTreeMap::new(),
        ratios: Ratios::default(),
        daemon: None,
        route_add: None,
        failures: BTreeMap::new(),
    };
    // Rounds over all forwarders, so that each is measured at several moments, interleaved
    // with the others: a moment when the machine is busy elsewhere then touches every
    // forwarder alike, and the medians keep it out of the ratios.
    let mut rounds: BTreeMap<&'static str, Vec<Measurement>> = BTreeMap::new();
    for round in 0..ctx.rounds.max(1) {
        // Route-add latency is measured in the first round only, the XDP programs' time per
        // packet in the last.
        let ctx = CellContext {
            trials: if round == 0 { ctx.trials } else { 0 },
            program_time: ctx.program_time && round + 1 == ctx.rounds.max(1),
            ..*ctx
        };
        for &forwarder in ctx.forwarders {
            check_interrupted()?;
            if cell.failures.contains_key(forwarder.name()) {
                continue;
            }
            match measure_forwarder(&ctx, bench, topo, phase, routes, forwarder, &mut cell) {
                Ok(m) => {
                    eprintln!("    {:<10} {}", forwarder.name(), m.describe());
                    rounds.entry(forwarder.name()).or_default().push(m);
                }
                // An interrupted run stops; a forwarder that fails leaves its cell without it.
                Err(e) if INTERRUPTED.load(Ordering::Relaxed) => return Err(e),
                Err(e) => {
                    eprintln!("    {:<10} failed: {e:#}", forwarder.name());
                    cell.failures.insert(forwarder.name(), format!("{e:#}"));
                    rounds.remove(forwarder.name());
                }
            }
        }
    }
    for (name, measured) in rounds {
        let m = Measurement::median_of(&measured);
        eprintln!("    {name:<10} {}", m.describe());
        cell.forwarders.insert(name, m);
    }
    let sluice = cell.forwarders.get("sluice");
    cell.ratios.sluice_linux = ratio(sluice, cell.forwarders.get("linux"));
    cell.ratios.sluice_fib_lookup = ratio(sluice, cell.forwarders.get("fib_lookup"));
    cell.ratios.sluice_ceiling = ratio(sluice, cell.forwarders.get("ceiling"));
    cell.ratios.sluice_ceiling_read = ratio(sluice, cell.forwarders.get("ceiling_read"));
    cell.ratios.hooks_over_empty = ratio(cell.forwarders.get("sluice_hooks"), sluice);
    Ok(cell)
}

/// Measures one forwarder in the cell (for Sluice, also the daemon's start and the route-add
/// latency, stored in `cell`). Whatever it changed on the router is put back, also on failure.
fn measure_forwarder(
    ctx: &CellContext<'_>,
    bench: &mut BenchPrograms,
    topo: &Topology,
    phase: Phase,
    routes: usize,
    forwarder: Forwarder,
    cell: &mut Cell,
) -> anyhow::Result<Measurement> {
    Ok(match forwarder {
        Forwarder::Linux => {
            topo.set_forwarding(true)?;
            let m = bench
                .warm_up(topo, || topo.router.ip(&["-s", "link"]))
                .and_then(|()| bench.measure(topo, ctx.budget, false));
            topo.set_forwarding(false)?;
            m?
        }
        Forwarder::FibLookup => {
            // bpf_fib_lookup answers BPF_FIB_LKUP_RET_FWD_DISABLED unless the ingress
            // device forwards.
            topo.set_forwarding(true)?;
            let m = bench.with_attached(topo, names::FIB_FORWARDER, |b| {
                b.warm_up(topo, || b.fib_results().map(|r| format!("{r:?}")))?;
                let before = b.fib_results()?;
                let mut m = b.measure(topo, ctx.budget, true)?;
                let after = b.fib_results()?;
                m.program_time = b.program_time(ctx, topo)?;
                m.fib_results = Some(
                    after
                        .iter()
                        .filter_map(|(k, v)| {
                            let d = v - before.get(k).copied().unwrap_or(0);
                            (d > 0).then(|| (k.clone(), d))
                        })
                        .collect(),
                );
                Ok(m)
            });
            topo.set_forwarding(false)?;
            m?
        }
        Forwarder::Ceiling | Forwarder::CeilingRead => {
            let program =
                if forwarder == Forwarder::Ceiling { names::CEILING } else { names::CEILING_READ };
            bench.with_attached(topo, program, |b| {
                b.warm_up(topo, || {
                    Ok(format!("no state: {program} redirects every frame it can route"))
                })?;
                let mut m = b.measure(topo, ctx.budget, true)?;
                m.program_time = b.program_time(ctx, topo)?;
                Ok(m)
            })?
        }
        Forwarder::SluiceHooks => measure_sluice(ctx, bench, topo, phase, routes, true)?.0,
        Forwarder::Sluice => {
            let (m, daemon, route_add) = measure_sluice(ctx, bench, topo, phase, routes, false)?;
            // The first round's start and route changes are the ones reported.
            cell.daemon.get_or_insert(daemon);
            if route_add.is_some() {
                cell.route_add = route_add;
            }
            m
        }
    })
}

/// Starts the daemon with the cell's table in the kernel, times how long it takes to carry the
/// table into its maps, measures its forwarding and the route-add latency, and stops it.
fn measure_sluice(
    ctx: &CellContext<'_>,
    bench: &BenchPrograms,
    topo: &Topology,
    phase: Phase,
    routes: usize,
    with_hooks: bool,
) -> anyhow::Result<(Measurement, DaemonLoad, Option<RouteLatency>)> {
    let ready_timeout = DAEMON_READY_TIMEOUT + READY_PER_ROUTE * routes as u32;
    let mut daemon =
        Daemon::start(ctx.exe, &topo.router, &[&topo.rtr_in, &topo.rtr_out], ready_timeout)?;
    let load = daemon.await_table(phase.family, routes, ready_timeout)?;
    eprintln!("    {:<10} {}", "daemon", load.describe());
    if with_hooks {
        install_idle_hook_rules(&daemon, phase.family)?;
    }
    bench.warm_up(topo, || daemon.stats().map(|s| s.to_string())).context("sluice forwarding")?;
    let before = daemon.stats()?;
    let mut m = bench.measure(topo, ctx.budget, true)?;
    let after = daemon.stats()?;
    let forwarded =
        |s: &Value| iface_field(s, &topo.rtr_in, &["counters", "forwarded", "packets"])?.as_u64();
    m.xdp_forwarded = forwarded(&after).zip(forwarded(&before)).map(|(a, b)| a.saturating_sub(b));
    m.xdp_mode = iface_field(&after, &topo.rtr_in, &["xdp_mode"])
        .and_then(|v| v.as_str().map(str::to_owned));
    m.program_time = bench.program_time(ctx, topo)?;
    let route_add = (ctx.trials > 0 && !with_hooks)
        .then(|| route_add_latency(&daemon, topo, phase, ctx.trials))
        .transpose()?;
    daemon.stop()?;
    Ok((m, load, route_add))
}

/// Puts rules in the daemon's hook tables that match none of the traffic: each packet then goes
/// through the source and destination filter lookups and the rate limiter's.
fn install_idle_hook_rules(daemon: &Daemon<'_>, family: Family) -> anyhow::Result<()> {
    use sluice_dataplane::hooks::{Action, AyaHookMaps, Direction, HookOp, HookTables};
    // Documentation prefixes: neither the generator nor the table's destinations use them.
    let (a, b): (ipnet::IpNet, ipnet::IpNet) = match family {
        Family::V4 => ("198.51.100.0/24".parse()?, "203.0.113.0/24".parse()?),
        Family::V6 => ("2001:db8:dead::/48".parse()?, "2001:db8:beef::/48".parse()?),
    };
    let mut tables = HookTables::new(AyaHookMaps::open(&PinDir::new(&daemon.pin_dir))?);
    tables.apply(
        "bench",
        &[
            HookOp::SetFilter { direction: Direction::Src, prefix: a, action: Action::Drop },
            HookOp::SetFilter { direction: Direction::Dst, prefix: b, action: Action::Drop },
            HookOp::SetRateLimit { prefix: a, rate_pps: 1, burst: 1 },
        ],
    )?;
    Ok(())
}

/// `a.mpps / b.mpps`, when both were measured.
fn ratio(a: Option<&Measurement>, b: Option<&Measurement>) -> Option<f64> {
    let (a, b) = (a?, b?);
    (b.mpps > 0.0).then(|| a.mpps / b.mpps)
}

/// The 1, 5 and 15 minute load averages.
fn load_average() -> [f64; 3] {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut it = text.split_whitespace().map(|x| x.parse().unwrap_or(f64::NAN));
    [(); 3].map(|()| it.next().unwrap_or(f64::NAN))
}

fn format_load(l: [f64; 3]) -> String {
    format!("{:.2} {:.2} {:.2}", l[0], l[1], l[2])
}

/// How much each measurement sends.
#[derive(Clone, Copy, Debug)]
enum Budget {
    Frames(u64),
    Time(Duration),
}

impl Budget {
    fn describe(self) -> String {
        match self {
            Self::Frames(n) => format!("{n} frames per measurement"),
            Self::Time(d) => format!("{:.1} s per measurement", d.as_secs_f64()),
        }
    }
}

// The benchmark's address plan; `Family` itself belongs to the table generator.
impl Family {
    fn code(self) -> u8 {
        match self {
            Self::V4 => FAMILY_V4,
            Self::V6 => FAMILY_V6,
        }
    }

    fn ip_flag(self) -> &'static str {
        match self {
            Self::V4 => "-4",
            Self::V6 => "-6",
        }
    }

    /// Link prefix length and the addresses of gen, `rtr_in`, `rtr_out` and sink.
    fn links(self) -> (u8, [IpAddr; 4]) {
        match self {
            Self::V4 => (
                24,
                [[10, 10, 1, 1], [10, 10, 1, 2], [10, 10, 2, 1], [10, 10, 2, 2]]
                    .map(|a| Ipv4Addr::from(a).into()),
            ),
            Self::V6 => (
                64,
                [[1, 1], [1, 2], [2, 1], [2, 2]]
                    .map(|[net, host]| Ipv6Addr::new(0xfd00, 0x10, net, 0, 0, 0, 0, host).into()),
            ),
        }
    }

    /// Sink-side next hop `i`: the sink's own address for 0, then the addresses after it. They
    /// all resolve (permanently) to the sink's MAC.
    fn gateway(self, i: u8) -> IpAddr {
        match self {
            Self::V4 => Ipv4Addr::new(10, 10, 2, 2 + i).into(),
            Self::V6 => Ipv6Addr::new(0xfd00, 0x10, 2, 0, 0, 0, 0, 2 + u16::from(i)).into(),
        }
    }

    /// A prefix outside every table route, added in latency trial `i`.
    fn probe_route(self, i: u32) -> String {
        match self {
            Self::V4 => format!("10.251.{i}.0/24"),
            Self::V6 => format!("{}/64", Ipv6Addr::new(0xfd00, 0x251, i as u16, 0, 0, 0, 0, 0)),
        }
    }
}

/// Three namespaces chained by two veth pairs, IPv4 and IPv6 on every link, deleted (with their
/// veths and routes) on drop.
#[derive(Debug)]
struct Topology {
    source: NetNs,
    router: NetNs,
    sink: NetNs,
    rtr_in: String,
    rtr_out: String,
    sink_if: String,
    gen_ifindex: u32,
    rtr_in_ifindex: u32,
    rtr_out_ifindex: u32,
    gen_mac: [u8; 6],
    rtr_in_mac: [u8; 6],
    rtr_out_mac: [u8; 6],
    sink_mac: [u8; 6],
    /// Next hops of the full tables; one more, the probe gateway, carries the latency probes.
    next_hops: u8,
    /// Where the chain's stages run.
    cpus: CpuPlan,
}

/// Where the stages of the chain run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CpuPlan {
    /// Wherever the kernel schedules them: with veth, the whole chain runs in the softirq of the
    /// generator's CPU, so every rate includes the generator's and the sink's cost.
    Shared,
    /// The router's receive NAPI runs as a kernel thread on `router`, where the sink's NAPI
    /// follows it (the router's transmit schedules it there); the generator runs alone on
    /// `other`. The rate is then the router's (with the sink's small cost), as long as the
    /// generator offers more than the router takes: the report shows both. (A sink beside the
    /// generator starves: the generator's test run does not yield the CPU.)
    Split { router: usize, other: usize },
}

impl CpuPlan {
    fn describe(self) -> String {
        match self {
            Self::Shared => "chain on one CPU (generator, router and sink share it)".to_owned(),
            Self::Split { router, other } => {
                format!("router and sink on CPU {router}, generator alone on CPU {other}")
            }
        }
    }
}

impl Topology {
    fn build(next_hops: u8) -> anyhow::Result<Self> {
        let source = NetNs::create(&netns::unique_name("sbg"))?;
        let router = NetNs::create(&netns::unique_name("sbr"))?;
        let sink = NetNs::create(&netns::unique_name("sbs"))?;
        let [gen_if, rtr_in, rtr_out, sink_if] =
            ["sbg", "sbi", "sbo", "sbs"].map(netns::unique_name);
        let base = IFINDEX_BASE + (std::process::id() % 250_000) * 4;
        let [gen_index, in_index, out_index, sink_index] =
            [0, 1, 2, 3].map(|i| (base + i).to_string());
        for (ns, a, a_index, b, b_index, peer_ns) in [
            (&source, &gen_if, &gen_index, &rtr_in, &in_index, &router),
            (&router, &rtr_out, &out_index, &sink_if, &sink_index, &sink),
        ] {
            ns.ip(&[
                "link",
                "add",
                a,
                "index",
                a_index,
                "type",
                "veth",
                "peer",
                "name",
                b,
                "index",
                b_index,
                "netns",
                peer_ns.name(),
            ])?;
        }
        for family in [Family::V4, Family::V6] {
            let (plen, [gen_addr, in_addr, out_addr, sink_addr]) = family.links();
            for (ns, dev, addr) in [
                (&source, &gen_if, gen_addr),
                (&router, &rtr_in, in_addr),
                (&router, &rtr_out, out_addr),
                (&sink, &sink_if, sink_addr),
            ] {
                let cidr = format!("{addr}/{plen}");
                let mut cmd = vec!["addr", "add", &cidr, "dev", dev.as_str()];
                if family == Family::V6 {
                    cmd.push("nodad");
                }
                ns.ip(&cmd)?;
            }
        }
        for (ns, dev) in
            [(&source, &gen_if), (&router, &rtr_in), (&router, &rtr_out), (&sink, &sink_if)]
        {
            ns.ip(&["link", "set", dev, "up"])?;
        }
        for key in ["net.ipv4.conf.all.rp_filter", "net.ipv4.conf.default.rp_filter"] {
            router.sysctl(key, "0")?;
        }
        // Frames the generator sends into gen_if are only taken by a peer that runs NAPI.
        router.run("ethtool", &["-K", &rtr_in, "gro", "on"])?;
        let (_, sink_mac) = link_info(&sink, &sink_if)?;
        let (gen_ifindex, gen_mac) = link_info(&source, &gen_if)?;
        let (rtr_in_ifindex, rtr_in_mac) = link_info(&router, &rtr_in)?;
        let (rtr_out_ifindex, rtr_out_mac) = link_info(&router, &rtr_out)?;
        let topo = Self {
            source,
            router,
            sink,
            rtr_in,
            rtr_out,
            sink_if,
            gen_ifindex,
            rtr_in_ifindex,
            rtr_out_ifindex,
            gen_mac,
            rtr_in_mac,
            rtr_out_mac,
            sink_mac,
            next_hops,
            cpus: CpuPlan::Shared,
        };
        let mut batch = String::new();
        for family in [Family::V4, Family::V6] {
            for i in 0..=next_hops {
                writeln!(
                    batch,
                    "neigh replace {} lladdr {} dev {} nud permanent",
                    family.gateway(i),
                    format_mac(sink_mac),
                    topo.rtr_out
                )?;
            }
            writeln!(batch, "route add default via {} dev {}", family.gateway(0), topo.rtr_out)?;
        }
        topo.router.batch(&batch)?;
        topo.set_forwarding(false)?;
        Ok(topo)
    }

    /// Makes the router's receive NAPI threaded (a kernel thread instead of the softirq of the
    /// generator's CPU) and pins it away from the generator, when there are two CPUs or more.
    fn split_cpus(&self) -> anyhow::Result<CpuPlan> {
        let cpus = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))?;
        let allowed: Vec<usize> =
            (0..nix::sched::CpuSet::count()).filter(|&c| cpus.is_set(c).unwrap_or(false)).collect();
        let (Some(&other), Some(&router)) = (allowed.first(), allowed.last()) else {
            return Ok(CpuPlan::Shared);
        };
        if router == other {
            return Ok(CpuPlan::Shared);
        }
        // `ip netns exec` mounts the namespace's own sysfs.
        let dev = &self.rtr_in;
        netns::run(
            Command::new("ip")
                .args(["netns", "exec", self.router.name(), "sh", "-c"])
                .arg(format!("echo 1 > /sys/class/net/{dev}/threaded")),
        )
        .with_context(|| format!("threaded NAPI on {dev}"))?;
        let plan = CpuPlan::Split { router, other };
        self.pin_napi(plan)?;
        Ok(plan)
    }

    /// Pins the router's NAPI threads (again before each run: the kernel makes new ones when
    /// a device's NAPI is rebuilt).
    fn pin_napi(&self, plan: CpuPlan) -> anyhow::Result<()> {
        let CpuPlan::Split { router, .. } = plan else { return Ok(()) };
        let dev = &self.rtr_in;
        let threads = napi_threads(dev)?;
        ensure!(!threads.is_empty(), "no NAPI thread for {dev}");
        for pid in threads {
            pin_to(pid, router).with_context(|| format!("pin the NAPI thread of {dev}"))?;
        }
        Ok(())
    }

    /// Adds `table` to the router's kernel; with `daemon`, samples how far the daemon's
    /// dataplane lags behind meanwhile (see [`LoadLag`]).
    fn install_watching(
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

    /// Kernel forwarding in the router, both families.
    fn set_forwarding(&self, on: bool) -> anyhow::Result<()> {
        let value = if on { "1" } else { "0" };
        self.router.sysctl("net.ipv4.ip_forward", value)?;
        self.router.sysctl("net.ipv6.conf.all.forwarding", value)
    }

    /// Adds or deletes a table's routes in the router's kernel.
    fn write_table(&self, op: RouteOp, table: &Table) -> anyhow::Result<()> {
        let hops = NextHops {
            oif: self.rtr_out_ifindex,
            gateways: (0..self.next_hops).map(|i| table.family.gateway(i)).collect(),
            protocol: RTPROT_BGP,
        };
        in_netns(&self.router, || {
            table::write_routes(op, table.family, &table.routes, &hops, check_interrupted)
        })
    }
}

/// The benchmark's programs, loaded; the sink attached to the sink's veth, the flush counter to
/// its tracepoint (when it can be).
#[derive(Debug)]
struct BenchPrograms {
    ebpf: Ebpf,
    /// The sizes of the frames the generator sends.
    frame_size: FrameSize,
    /// The longest frame, to destination 0, given to the test run as its initial packet: the
    /// generator trims it to each step's size.
    first_frame: Vec<u8>,
    /// Whether devmap flushes are counted, or why not.
    flush_counter: Result<(), String>,
}

impl BenchPrograms {
    fn load(topo: &Topology, frame_size: FrameSize) -> anyhow::Result<Self> {
        let mut ebpf = Ebpf::load(BENCH_OBJECT).context("load the benchmark programs")?;
        for name in [
            names::GENERATOR,
            names::SINK,
            names::CEILING,
            names::CEILING_READ,
            names::FIB_FORWARDER,
        ] {
            let prog: &mut Xdp = ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("program {name} missing from the object"))?
                .try_into()?;
            prog.load().with_context(|| format!("load {name}"))?;
        }
        let sink: &mut Xdp = ebpf.program_mut(names::SINK).expect("loaded above").try_into()?;
        let sink_if = &topo.sink_if;
        in_netns(&topo.sink, || {
            sink.attach(sink_if, XdpMode::Driver)
                .with_context(|| format!("attach {} to {sink_if}", names::SINK))
        })?;
        // The kernel resolves a devmap's ifindex in the writer's namespace.
        let devmap: &mut Map = ebpf
            .map_mut(names::BENCH_DEVMAP)
            .ok_or_else(|| anyhow!("map {} missing", names::BENCH_DEVMAP))?;
        let out = topo.rtr_out_ifindex;
        in_netns(&topo.router, || {
            let mut devmap: DevMapHash<_> = DevMapHash::try_from(devmap)?;
            devmap.insert(out, out, None, 0).context("add the router's egress to the devmap")
        })?;
        let ceiling =
            CeilingConfig { ifindex: out, dst_mac: topo.sink_mac, src_mac: topo.rtr_out_mac };
        let map =
            ebpf.map_mut(names::CEILING_CONFIG).ok_or_else(|| anyhow!("no ceiling config"))?;
        Array::<_, CeilingConfig>::try_from(map)?.set(0, ceiling, 0)?;
        let flush_counter = attach_flush_counter(&mut ebpf, topo).map_err(|e| format!("{e:#}"));
        Ok(Self { ebpf, frame_size, first_frame: Vec::new(), flush_counter })
    }

    /// Fills the templates and the destination map for `family`, and checks the frame generated
    /// for each size against the frame built here.
    fn configure(
        &mut self,
        family: Family,
        topo: &Topology,
        destinations: &[IpAddr],
    ) -> anyhow::Result<()> {
        ensure!(!destinations.is_empty(), "no destinations");
        let gen_addr = family.links().1[0];
        let (lens, pattern) = self.frame_size.slots();
        ensure!(lens.len() <= GEN_SIZES && pattern.len() <= GEN_PATTERN, "too many frame sizes");
        let mut config = GenConfig {
            destinations: 1,
            family: family.code(),
            sizes: lens.len() as u8,
            ..GenConfig::default()
        };
        // Per size, the frame to destination 0.
        let mut expected = Vec::new();
        let mut table: Array<_, GenDest> = Array::try_from(self.map_mut(names::GEN_DESTS)?)?;
        for (slot, &len) in lens.iter().enumerate() {
            let template = frame_template(gen_addr, topo.gen_mac, topo.rtr_in_mac, len.into());
            config.frames[slot].copy_from_slice(&template[..TEMPLATE_LEN]);
            config.lens[slot] = len;
            for (i, d) in destinations.iter().enumerate() {
                let dest = gen_dest(&template, *d);
                if i == 0 {
                    expected.push(apply_dest(&template, family, &dest));
                }
                table.set((i * lens.len() + slot) as u32, dest, 0)?;
            }
        }
        self.first_frame =
            expected.iter().max_by_key(|f| f.len()).cloned().expect("at least one size");

        // One plain (not live) run per size with a single destination, from the initial frame
        // with its template bytes zeroed: the program must trim it and write exactly the frame
        // userspace expects.
        let mut data_in = self.first_frame.clone();
        data_in[..TEMPLATE_LEN].fill(0);
        config.pattern_len = 1;
        for (slot, want) in expected.iter().enumerate() {
            config.pattern[0] = slot as u8;
            let mut cfg: Array<_, GenConfig> = Array::try_from(self.map_mut(names::GEN_CONFIG)?)?;
            cfg.set(0, config, 0)?;
            let mut out = vec![0u8; data_in.len()];
            let result = self.program(names::GENERATOR)?.test_run(TestRunOptions {
                data_in: Some(&data_in),
                data_out: Some(&mut out),
                ..TestRunOptions::default()
            })?;
            ensure!(
                result.return_value == 3,
                "{} returned {} instead of XDP_TX",
                names::GENERATOR,
                result.return_value
            );
            out.truncate(result.data_size_out as usize);
            ensure!(
                out == *want,
                "{} wrote a {}-byte frame\n  {}\ninstead of a {}-byte\n  {}",
                names::GENERATOR,
                out.len(),
                hex(&out[..TEMPLATE_LEN.min(out.len())]),
                want.len(),
                hex(&want[..TEMPLATE_LEN])
            );
        }

        config.destinations = destinations.len() as u32;
        config.pattern_len = pattern.len() as u8;
        config.pattern[..pattern.len()].copy_from_slice(&pattern);
        let mut cfg: Array<_, GenConfig> = Array::try_from(self.map_mut(names::GEN_CONFIG)?)?;
        cfg.set(0, config, 0)?;
        Ok(())
    }

    fn map_mut(&mut self, name: &str) -> anyhow::Result<&mut Map> {
        self.ebpf.map_mut(name).ok_or_else(|| anyhow!("map {name} missing from the object"))
    }

    fn map(&self, name: &str) -> anyhow::Result<&Map> {
        self.ebpf.map(name).ok_or_else(|| anyhow!("map {name} missing from the object"))
    }

    fn program(&self, name: &str) -> anyhow::Result<&Xdp> {
        let prog = self.ebpf.program(name).ok_or_else(|| anyhow!("no program {name}"))?;
        Ok(prog.try_into()?)
    }

    /// Runs `f` with the XDP program `name` attached to the router's ingress, and detaches it.
    fn with_attached<T>(
        &mut self,
        topo: &Topology,
        name: &str,
        f: impl FnOnce(&Self) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let rtr_in = &topo.rtr_in;
        let prog = self.program_mut(name)?;
        let link = in_netns(&topo.router, || {
            prog.attach(rtr_in, XdpMode::Driver)
                .with_context(|| format!("attach {name} to {rtr_in} in native mode"))
        })?;
        let result = f(self);
        self.program_mut(name)?.detach(link).with_context(|| format!("detach {name}"))?;
        result
    }

    fn program_mut(&mut self, name: &str) -> anyhow::Result<&mut Xdp> {
        let prog = self.ebpf.program_mut(name).ok_or_else(|| anyhow!("no program {name}"))?;
        Ok(prog.try_into()?)
    }

    /// Frames and bytes the sink has counted, all CPUs together.
    fn sink_count(&self) -> anyhow::Result<(u64, u64)> {
        let counts: PerCpuArray<_, SinkCount> =
            PerCpuArray::try_from(self.map(names::SINK_COUNT)?)?;
        Ok(counts.get(&0, 0)?.iter().fold((0, 0), |(f, b), c| (f + c.frames, b + c.bytes)))
    }

    /// The devmap flushes of `slot` counted so far, all CPUs together; `None` without the
    /// counter.
    fn flush_stats(&self, slot: u32) -> anyhow::Result<Option<FlushStats>> {
        if self.flush_counter.is_err() {
            return Ok(None);
        }
        let stats: PerCpuArray<_, FlushStats> =
            PerCpuArray::try_from(self.map(names::FLUSH_STATS)?)?;
        let mut total = FlushStats::default();
        for s in stats.get(&slot, 0)?.iter() {
            total.flushes += s.flushes;
            total.sent += s.sent;
            total.drops += s.drops;
            total.errors += s.errors;
        }
        Ok(Some(total))
    }

    /// What the `bpf_fib_lookup` forwarder did with frames so far, by outcome.
    fn fib_results(&self) -> anyhow::Result<BTreeMap<String, u64>> {
        let counts: PerCpuArray<_, u64> = PerCpuArray::try_from(self.map(names::FIB_RESULTS)?)?;
        let mut out = BTreeMap::new();
        for slot in 0..FIB_RESULT_SLOTS {
            let n: u64 = counts.get(&slot, 0)?.iter().sum();
            if n > 0 {
                out.insert(fib_slot_name(slot), n);
            }
        }
        Ok(out)
    }

    /// Sends `budget` frames from the gen namespace; returns the frames sent and the time taken.
    fn send(&self, topo: &Topology, budget: Budget) -> anyhow::Result<(u64, Duration)> {
        let prog = self.program(names::GENERATOR)?;
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex.
        // The kernel resolves ingress_ifindex in the caller's network namespace.
        let ctx: Vec<u8> = [0, self.first_frame.len() as u32, 0, topo.gen_ifindex, 0, 0]
            .iter()
            .flat_map(|w| w.to_ne_bytes())
            .collect();
        let frame = &self.first_frame;
        topo.pin_napi(topo.cpus)?;
        in_netns(&topo.source, || {
            if let CpuPlan::Split { other, .. } = topo.cpus {
                pin_to(nix::unistd::Pid::from_raw(0), other)?;
            }
            let mut sent = 0u64;
            let start = Instant::now();
            loop {
                check_interrupted()?;
                let chunk = match budget {
                    Budget::Frames(n) if sent >= n => break,
                    Budget::Frames(n) => (n - sent).min(GEN_CHUNK),
                    Budget::Time(d) if start.elapsed() >= d => break,
                    Budget::Time(_) => GEN_CHUNK / 4,
                };
                prog.test_run(TestRunOptions {
                    data_in: Some(frame),
                    ctx_in: Some(&ctx),
                    repeat: chunk as u32,
                    attrs: TestRunAttrs::new().xdp_live_frames(GEN_BATCH),
                    ..TestRunOptions::default()
                })
                .context("BPF_PROG_TEST_RUN with live frames")?;
                sent += chunk;
            }
            Ok((sent, start.elapsed()))
        })
    }

    /// Waits until the sink count stops moving (frames still queued in the chain) and returns it:
    /// frames and bytes.
    fn settled_count(&self) -> anyhow::Result<(u64, u64)> {
        let mut last = self.sink_count()?;
        for _ in 0..50 {
            check_interrupted()?;
            thread::sleep(Duration::from_millis(20));
            let now = self.sink_count()?;
            if now == last {
                break;
            }
            last = now;
        }
        Ok(last)
    }

    /// Sends rounds of frames until the sink sees at least 99% of one: the forwarder has its
    /// routes and neighbours and the page pools are warm. `diagnose` describes the forwarder's
    /// state when that does not happen in time.
    fn warm_up(
        &self,
        topo: &Topology,
        diagnose: impl Fn() -> anyhow::Result<String>,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + WARMUP_TIMEOUT;
        loop {
            let (before, _) = self.settled_count()?;
            let gen_before = self.flush_stats(FLUSH_SLOT_GENERATOR)?;
            let (sent, _) = self.send(topo, Budget::Frames(WARMUP_FRAMES))?;
            let received = self.settled_count()?.0 - before;
            // With the router on a CPU of its own, the generator offers more than it takes and
            // the surplus is dropped at the router's input, as at a NIC's full ring: what the
            // router accepted must come out.
            let refused = match (gen_before, self.flush_stats(FLUSH_SLOT_GENERATOR)?) {
                (Some(b), Some(a)) => a.drops.saturating_sub(b.drops),
                _ => 0,
            };
            let accepted = sent.saturating_sub(refused);
            if received > 0 && received * 100 >= accepted * 99 {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the sink saw only {received} of {sent} warm-up frames after {} s; forwarder state: {}",
                    WARMUP_TIMEOUT.as_secs(),
                    diagnose().unwrap_or_else(|e| format!("unavailable: {e:#}"))
                );
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// Sends `budget` and counts what reaches the sink (and the devmap flushes, with `flushes`):
    /// one round of a measurement (see [`Measurement::median_of`]).
    fn measure(
        &self,
        topo: &Topology,
        budget: Budget,
        flushes: bool,
    ) -> anyhow::Result<Measurement> {
        let (before, bytes_before) = self.settled_count()?;
        let router_before = if flushes { self.flush_stats(FLUSH_SLOT_ROUTER)? } else { None };
        let gen_before = self.flush_stats(FLUSH_SLOT_GENERATOR)?;
        let (sent, elapsed) = self.send(topo, budget)?;
        let (after, bytes_after) = self.settled_count()?;
        let (received, received_bytes) = (after - before, bytes_after - bytes_before);
        let router_after = if flushes { self.flush_stats(FLUSH_SLOT_ROUTER)? } else { None };
        let gen_after = self.flush_stats(FLUSH_SLOT_GENERATOR)?;
        let seconds = elapsed.as_secs_f64();
        let mpps = per_second(received, seconds) / 1e6;
        Ok(Measurement {
            sent,
            received,
            received_bytes,
            seconds,
            mpps,
            gbps: gbps(mpps, received, received_bytes),
            round_mpps: vec![mpps],
            offered_mpps: per_second(sent, seconds) / 1e6,
            devmap: router_before.zip(router_after).map(|(b, a)| FlushDelta::between(&b, &a)),
            entry_drops: gen_before.zip(gen_after).map(|(b, a)| a.drops.saturating_sub(b.drops)),
            xdp_forwarded: None,
            xdp_mode: None,
            fib_results: None,
            program_time: None,
        })
    }

    /// With `ctx.program_time`, the time per packet of the XDP program on the router's input
    /// (see [`Self::measure_program_time`]); a failure is reported in the result, not returned,
    /// unless the run was interrupted.
    fn program_time(
        &self,
        ctx: &CellContext<'_>,
        topo: &Topology,
    ) -> anyhow::Result<Option<ProgramTime>> {
        if !ctx.program_time {
            return Ok(None);
        }
        match self.measure_program_time(topo) {
            Ok(t) => Ok(Some(t)),
            Err(e) if INTERRUPTED.load(Ordering::Relaxed) => Err(e),
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
fn bpf_stats_enabled() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").is_ok_and(|s| s.trim() == "1")
}

/// How the XDP programs' time per packet was measured, for the report.
fn program_time_method(measured: bool, stats_already_on: bool) -> String {
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

/// A name for a `FIB_RESULTS` slot: `bpf_fib_lookup`'s return code, or what the forwarder did.
fn fib_slot_name(slot: u32) -> String {
    match slot {
        0 => "success".into(),
        1 => "blackhole".into(),
        2 => "unreachable".into(),
        3 => "prohibit".into(),
        4 => "not_forwarded".into(),
        5 => "forwarding_disabled".into(),
        6 => "unsupported_lwt".into(),
        7 => "no_neighbour".into(),
        8 => "fragmentation_needed".into(),
        9 => "no_source_address".into(),
        FIB_SLOT_OTHER_RESULT => "other_result".into(),
        FIB_SLOT_NOT_FORWARDABLE => "passed_before_lookup".into(),
        FIB_SLOT_NO_DEVMAP => "egress_not_in_devmap".into(),
        n => format!("result_{n}"),
    }
}

/// Attaches `sluice_flush_tp` to `xdp:xdp_devmap_xmit` for the router's veth pair, after checking
/// that the tracepoint's record has the layout the program reads.
fn attach_flush_counter(ebpf: &mut Ebpf, topo: &Topology) -> anyhow::Result<()> {
    let (category, name) = names::FLUSH_TRACEPOINT;
    let tracefs = Path::new("/sys/kernel/tracing");
    let format_path = tracefs.join("events").join(category).join(name).join("format");
    if !format_path.exists() && !tracefs.join("events").exists() {
        netns::run(Command::new("mount").args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"]))
            .context("mount tracefs")?;
    }
    let format = std::fs::read_to_string(&format_path)
        .with_context(|| format!("read {}", format_path.display()))?;
    for (field, offset) in [
        ("from_ifindex", flush_record::FROM_IFINDEX),
        ("to_ifindex", flush_record::TO_IFINDEX),
        ("drops", flush_record::DROPS),
        ("sent", flush_record::SENT),
        ("err", flush_record::ERR),
    ] {
        ensure!(
            tracepoint_field(&format, field) == Some((offset, 4)),
            "{category}:{name} has no 4-byte field {field} at offset {offset}"
        );
    }
    let config = FlushConfig {
        from_ifindex: i32::try_from(topo.rtr_in_ifindex)?,
        to_ifindex: i32::try_from(topo.rtr_out_ifindex)?,
        gen_ifindex: i32::try_from(topo.gen_ifindex)?,
        _pad: 0,
    };
    let map = ebpf.map_mut(names::FLUSH_CONFIG).ok_or_else(|| anyhow!("no flush config"))?;
    Array::<_, FlushConfig>::try_from(map)?.set(0, config, 0)?;
    let prog: &mut TracePoint = ebpf
        .program_mut(names::FLUSH_COUNTER)
        .ok_or_else(|| anyhow!("program {} missing", names::FLUSH_COUNTER))?
        .try_into()?;
    prog.load().with_context(|| format!("load {}", names::FLUSH_COUNTER))?;
    prog.attach(category, name).with_context(|| format!("attach to {category}:{name}"))?;
    Ok(())
}

/// Offset and size of `field` in a tracepoint's `format` file.
fn tracepoint_field(format: &str, field: &str) -> Option<(usize, usize)> {
    format.lines().find_map(|line| {
        let mut parts = line.trim().split(';').map(str::trim);
        let decl = parts.next()?.strip_prefix("field:")?;
        if decl.rsplit(' ').next()? != field {
            return None;
        }
        let mut offset = None;
        let mut size = None;
        for p in parts {
            if let Some(v) = p.strip_prefix("offset:") {
                offset = v.parse().ok();
            } else if let Some(v) = p.strip_prefix("size:") {
                size = v.parse().ok();
            }
        }
        offset.zip(size)
    })
}

/// `sluice daemon` running in the router namespace with its own pin directory. Stopped, detached
/// and its pins removed on drop, also when the benchmark fails.
#[derive(Debug)]
struct Daemon<'a> {
    child: Option<Child>,
    exe: PathBuf,
    pin_dir: PathBuf,
    router: &'a NetNs,
    log: PathBuf,
    /// When it was spawned.
    started: Instant,
    /// When `sluice stats` first showed every interface.
    attached: Duration,
}

impl<'a> Daemon<'a> {
    fn start(
        exe: &Path,
        router: &'a NetNs,
        ifaces: &[&str],
        ready_timeout: Duration,
    ) -> anyhow::Result<Self> {
        let name = netns::unique_name("sluice-bench-");
        let pin_dir = PathBuf::from("/sys/fs/bpf").join(&name);
        let log = std::env::temp_dir().join(format!("{name}.log"));
        let out = File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let mut cmd = router
            .command(exe.to_str().ok_or_else(|| anyhow!("non-UTF-8 path {}", exe.display()))?);
        cmd.arg("--pin-dir").arg(&pin_dir).arg("daemon").arg("--attach").args(ifaces);
        cmd.stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out);
        die_with_parent(&mut cmd);
        let started = Instant::now();
        let child = cmd.spawn().with_context(|| format!("spawn {cmd:?}"))?;
        let mut daemon = Self {
            child: Some(child),
            exe: exe.to_owned(),
            pin_dir,
            router,
            log,
            started,
            attached: Duration::ZERO,
        };
        daemon.wait_ready(ifaces, ready_timeout)?;
        daemon.attached = started.elapsed();
        Ok(daemon)
    }

    fn sluice(&self, args: &[&str]) -> Command {
        let mut cmd = self.router.command(self.exe.to_str().unwrap_or_default());
        cmd.arg("--pin-dir").arg(&self.pin_dir).args(args);
        cmd
    }

    fn stats(&self) -> anyhow::Result<Value> {
        let out = netns::run(&mut self.sluice(&["stats", "--json"]))?;
        serde_json::from_str(&out).context("parse `sluice stats --json`")
    }

    /// Fails if the daemon has exited.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) =
            self.child.as_mut().and_then(|c| c.try_wait().transpose()).transpose()?
        {
            bail!("sluice daemon exited ({status}):\n{}", self.log_tail());
        }
        Ok(())
    }

    /// Like [`Self::check_alive`], through a shared reference: whether the process still runs
    /// (neither gone nor a zombie), from /proc.
    fn check_alive_shared(&self) -> anyhow::Result<()> {
        let pid = self.child.as_ref().map_or(0, Child::id);
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // The state follows the command name, which is in parentheses.
        let state = stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next());
        if matches!(state, None | Some('Z' | 'X')) {
            bail!("sluice daemon exited:\n{}", self.log_tail());
        }
        Ok(())
    }

    fn wait_ready(&mut self, ifaces: &[&str], timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            check_interrupted()?;
            self.check_alive().context("before it was ready")?;
            let last = match self.stats() {
                Ok(stats) if ifaces.iter().all(|i| iface(&stats, i).is_some()) => return Ok(()),
                Ok(stats) => format!("stats: {stats}"),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() > deadline {
                bail!(
                    "sluice daemon not ready after {timeout:?} (last: {last}):\n{}",
                    self.log_tail()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// The line the daemon logged when its first sync was written ("ready: forwarding"), if it
    /// has.
    fn ready_line(&self) -> Option<String> {
        let log = std::fs::read_to_string(&self.log).ok()?;
        log.lines().find(|l| l.contains("ready: forwarding")).map(str::to_owned)
    }

    /// Waits until the daemon has logged that it forwards with the kernel's state written: what
    /// follows (a table loading) is then mirrored by the running daemon, not by its start.
    fn wait_forwarding(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = self.started + timeout;
        while self.ready_line().is_none() {
            check_interrupted()?;
            self.check_alive().context("before it logged ready")?;
            ensure!(
                Instant::now() < deadline,
                "sluice daemon did not log ready in {timeout:?}:\n{}",
                self.log_tail()
            );
            thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// Waits until the daemon has carried the kernel's table into the dataplane: its pinned route
    /// trie of `family` holds at least `routes` entries (polled by counting them), and it has
    /// logged that it is ready. Then reads its resident memory.
    fn await_table(
        &mut self,
        family: Family,
        routes: usize,
        timeout: Duration,
    ) -> anyhow::Result<DaemonLoad> {
        let trie = RouteTrie::open(&self.pin_dir, family);
        let deadline = self.started + timeout;
        let mut last_count = None;
        let (mut loaded, mut entries, mut logged) = (None, None, None);
        let mut ready_routes: Option<usize> = None;
        loop {
            check_interrupted()?;
            self.check_alive()?;
            if logged.is_none()
                && let Some(line) = self.ready_line()
            {
                logged = Some(self.started.elapsed());
                let field = match family {
                    Family::V4 => "routes_v4=",
                    Family::V6 => "routes_v6=",
                };
                ready_routes =
                    line.split_whitespace().find_map(|w| w.strip_prefix(field)?.parse().ok());
            }
            if loaded.is_none()
                && let Ok(trie) = &trie
            {
                let poll = Instant::now();
                let n = trie.len()?;
                last_count = Some(poll.elapsed());
                entries = Some(n);
                if n >= routes {
                    loaded = Some(self.started.elapsed());
                }
            }
            if logged.is_some() && (loaded.is_some() || trie.is_err()) {
                break;
            }
            // Ready, yet short of routes for a while: it will not get there.
            let stuck = logged.is_some_and(|at| self.started.elapsed() > at + READY_GRACE);
            if Instant::now() > deadline || stuck {
                bail!(
                    "the daemon did not take the table ({} of {routes} routes in its trie {}):\n{}",
                    entries.map_or_else(|| "?".into(), |n| n.to_string()),
                    match logged {
                        Some(at) => format!(
                            "{:.1} s after it logged that it was ready",
                            self.started.elapsed().saturating_sub(at).as_secs_f64()
                        ),
                        None => format!("after {timeout:?}"),
                    },
                    self.log_tail()
                );
            }
            thread::sleep(Duration::from_millis(5));
        }
        let pid = self.child.as_ref().map_or(0, Child::id);
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let kib = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key)?.trim().strip_suffix("kB")?.trim().parse().ok())
        };
        Ok(DaemonLoad {
            routes,
            attached_s: self.attached.as_secs_f64(),
            table_loaded_s: loaded.map(|d| d.as_secs_f64()),
            ready_logged_s: logged.map(|d| d.as_secs_f64()),
            ready_routes,
            all_written_s: logged
                .filter(|_| ready_routes.is_some_and(|n| n >= routes))
                .map(|d| d.as_secs_f64()),
            trie_entries: entries,
            trie: match trie {
                Ok(_) => "counted".into(),
                Err(e) => format!("not counted: {e:#}"),
            },
            last_count_ms: last_count.map(ms),
            rss_kib: kib("VmRSS:"),
            peak_rss_kib: kib("VmHWM:"),
            anon_rss_kib: kib("RssAnon:"),
            mapped_rss_kib: kib("RssFile:"),
        })
    }

    /// The daemon's first warnings or errors (often the cause) and its last lines.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines.len().saturating_sub(12);
        let first: Vec<&str> = lines[..tail]
            .iter()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .take(3)
            .copied()
            .collect();
        let mut out = first.join("\n");
        if !first.is_empty() {
            out.push_str("\n...\n");
        }
        out + &lines[tail..].join("\n")
    }

    /// Stops the daemon (SIGTERM, SIGKILL after 10 s), runs `sluice detach` and removes the pins.
    fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else { return Ok(()) };
        let stopped = terminate(&mut child);
        let detached = netns::run(&mut self.sluice(&["detach"])).map(drop);
        let removed = if self.pin_dir.exists() {
            std::fs::remove_dir_all(&self.pin_dir)
                .with_context(|| format!("remove {}", self.pin_dir.display()))
        } else {
            Ok(())
        };
        let log = self.log_tail();
        if std::env::var_os("SLUICE_BENCH_KEEP_LOGS").is_some() {
            eprintln!("  daemon log kept: {}", self.log.display());
        } else {
            let _ = std::fs::remove_file(&self.log);
        }
        stopped.and(detached).and(removed).with_context(|| format!("daemon log:\n{log}"))
    }
}

/// SIGTERM, then SIGKILL if the process has not exited after 10 s.
fn terminate(child: &mut Child) -> anyhow::Result<()> {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id())?);
    let _ = nix::sys::signal::kill(pid, Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            child.kill()?;
            child.wait()?;
            bail!("sluice daemon ignored SIGTERM for 10 s; killed");
        }
        thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

impl Drop for Daemon<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            eprintln!("sluice bench: cleaning up the daemon: {e:#}");
        }
    }
}

/// Asks the kernel to SIGTERM the daemon when the benchmark dies without unwinding (a signal),
/// so that no daemon outlives it.
#[expect(unsafe_code, reason = "Command::pre_exec is unsafe; prctl is async-signal-safe")]
fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: the closure only calls prctl(2), which is async-signal-safe, between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(std::io::Error::from)
        });
    }
}

/// Set by SIGINT or SIGTERM while the benchmark runs. Checked between steps, so that an
/// interrupted run unwinds through its guards (daemon, pins, namespaces) instead of dying with
/// them in place.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

fn check_interrupted() -> anyhow::Result<()> {
    ensure!(!INTERRUPTED.load(Ordering::Relaxed), "interrupted");
    Ok(())
}

/// Catches SIGINT and SIGTERM for the length of the run and restores the previous actions on drop.
#[derive(Debug)]
struct SignalGuard(Vec<(Signal, SigAction)>);

impl SignalGuard {
    #[expect(unsafe_code, reason = "sigaction(2) is unsafe; the handler only stores to an atomic")]
    fn install() -> anyhow::Result<Self> {
        INTERRUPTED.store(false, Ordering::Relaxed);
        // No SA_RESTART: a blocking BPF_PROG_TEST_RUN returns EINTR at once.
        let action =
            SigAction::new(SigHandler::Handler(on_signal), SaFlags::empty(), SigSet::empty());
        let mut previous = Vec::new();
        for signal in [Signal::SIGINT, Signal::SIGTERM] {
            // SAFETY: the handler is async-signal-safe (one atomic store).
            previous.push((signal, unsafe { sigaction(signal, &action) }?));
        }
        Ok(Self(previous))
    }
}

impl Drop for SignalGuard {
    #[expect(unsafe_code, reason = "sigaction(2) is unsafe")]
    fn drop(&mut self) {
        for (signal, action) in &self.0 {
            // SAFETY: puts back the action that was installed before the run.
            let _ = unsafe { sigaction(*signal, action) };
        }
    }
}

/// Times `ip route add` in the router namespace until the daemon's lookup tables, which forward
/// (mapped here, polled every [`MAP_POLL`]), answer for the prefix with its route and, with one
/// route, until it shows in
/// `sluice routes --json` (polled every [`ROUTE_POLL`]; each call has its own cost, reported
/// beside; it reads the route record, which a background writer keeps after a large load).
/// With a full table that listing is too large to poll. The probe routes point at a next hop of
/// their own, so the tables' answer for them changes even where the default route already
/// covered them. Each probe is deleted, and its deletion awaited, before the next.
fn route_add_latency(
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
    daemon: &'a Daemon<'a>,
    tables: &'a sluice_dataplane::LookupView,
    net: ipnet::IpNet,
    /// What the lookup tables answered for the prefix before it was added.
    baseline: Option<Route>,
    start: Instant,
    timeout: Duration,
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

/// The daemon's pinned route trie of one family, read directly.
enum RouteTrie {
    V4(LpmTrie<MapData, [u8; 4], Route>),
    V6(LpmTrie<MapData, [u8; 16], Route>),
}

impl RouteTrie {
    fn open(pin_dir: &Path, family: Family) -> anyhow::Result<Self> {
        let name = match family {
            Family::V4 => sluice_common::names::ROUTES_V4,
            Family::V6 => sluice_common::names::ROUTES_V6,
        };
        let path = PinDir::new(pin_dir).map(name);
        let map = Map::from_map_data(
            MapData::from_pin(&path).with_context(|| format!("open {}", path.display()))?,
        )?;
        Ok(match family {
            Family::V4 => Self::V4(map.try_into()?),
            Family::V6 => Self::V6(map.try_into()?),
        })
    }

    /// Entries in the trie (one system call each).
    fn len(&self) -> anyhow::Result<usize> {
        let mut n = 0;
        match self {
            Self::V4(t) => {
                for k in t.keys() {
                    k?;
                    n += 1;
                }
            }
            Self::V6(t) => {
                for k in t.keys() {
                    k?;
                    n += 1;
                }
            }
        }
        Ok(n)
    }
}

/// Median, 99th percentile (nearest rank) and maximum of some latencies.
#[derive(Debug, Serialize)]
#[expect(clippy::struct_field_names, reason = "the unit belongs in the JSON keys")]
struct Percentiles {
    median_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

impl Percentiles {
    fn of(mut samples: Vec<Duration>) -> Self {
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

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[expect(clippy::cast_precision_loss, reason = "packet counts stay far below 2^52")]
fn per_second(count: u64, seconds: f64) -> f64 {
    count as f64 / seconds
}

/// One forwarder's result.
#[derive(Debug, Serialize)]
struct Measurement {
    /// Frames the generator sent.
    sent: u64,
    /// Frames the sink counted.
    received: u64,
    /// Their bytes, Ethernet header to the end of the payload.
    received_bytes: u64,
    /// How long the generator ran.
    seconds: f64,
    /// The median round's `received / seconds`, in millions.
    mpps: f64,
    /// `mpps` in Gbit/s of frames (Ethernet header to the end of the payload; no preamble,
    /// FCS or gap): at the mean size of the frames received.
    gbps: f64,
    /// Every round's rate, in the order measured.
    round_mpps: Vec<f64>,
    /// `sent / seconds`, in millions.
    offered_mpps: f64,
    /// For the XDP forwarders: the devmap flushes from `rtr_in` to `rtr_out` during the run.
    #[serde(skip_serializing_if = "Option::is_none")]
    devmap: Option<FlushDelta>,
    /// Frames the generator's veth could not hand to the router (its input ring was full), from
    /// the generator's own devmap flushes: sent, but never offered to the forwarder.
    #[serde(skip_serializing_if = "Option::is_none")]
    entry_drops: Option<u64>,
    /// For Sluice: frames the XDP program forwarded on `rtr_in` during the run.
    #[serde(skip_serializing_if = "Option::is_none")]
    xdp_forwarded: Option<u64>,
    /// For Sluice: the attach mode `sluice stats` reports for `rtr_in`.
    #[serde(skip_serializing_if = "Option::is_none")]
    xdp_mode: Option<String>,
    /// For the `bpf_fib_lookup` forwarder: its outcomes during the run, by name.
    #[serde(skip_serializing_if = "Option::is_none")]
    fib_results: Option<BTreeMap<String, u64>>,
    /// For the XDP forwarders: the time their program on `rtr_in` takes per packet, from the
    /// kernel's BPF run-time statistics, in a short phase after the last round.
    #[serde(skip_serializing_if = "Option::is_none")]
    program_time: Option<ProgramTime>,
}

impl Measurement {
    /// One measurement of several rounds: their totals, and the median round's rate.
    fn median_of(rounds: &[Self]) -> Self {
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

    fn describe(&self) -> String {
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
fn gbps(mpps: f64, frames: u64, bytes: u64) -> f64 {
    if frames == 0 { 0.0 } else { mpps * (bytes as f64 / frames as f64) * 8.0 / 1e3 }
}

/// A program's run-time statistics (`bpf_prog_info`), counted while they are on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct RunStats {
    /// `run_time_ns`: time spent in the program, all CPUs together.
    run_time_ns: u64,
    /// `run_cnt`: runs of the program.
    runs: u64,
}

/// The time an XDP forwarder's program takes per packet, or why it was not measured.
#[derive(Debug, Serialize, Clone, PartialEq)]
#[serde(tag = "status", rename_all = "snake_case")]
enum ProgramTime {
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
    fn between(program: String, id: u32, frames: u64, before: RunStats, after: RunStats) -> Self {
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

    fn ns_per_packet(&self) -> Option<f64> {
        match self {
            Self::Measured { ns_per_packet, .. } => Some(*ns_per_packet),
            Self::NotMeasured { .. } => None,
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::Measured { program, runs, ns_per_packet, .. } => format!(
                "XDP program {ns_per_packet:.1} ns per packet over {runs} runs of {program}, statistics' own cost included"
            ),
            Self::NotMeasured { reason } => format!("XDP program time not measured: {reason}"),
        }
    }
}

/// The devmap flushes of one measurement, from the `xdp:xdp_devmap_xmit` tracepoint.
#[derive(Debug, Serialize, Clone, Copy, PartialEq)]
struct FlushDelta {
    /// Flushes (calls of the egress driver's `ndo_xdp_xmit`).
    flushes: u64,
    /// Frames the driver took.
    sent: u64,
    /// Frames the driver did not take: dropped at transmit.
    drops: u64,
    /// Flushes that failed with an error.
    errors: u64,
    /// `sent / flushes`: how well the bulk queue batches (16 at most).
    frames_per_flush: f64,
}

impl FlushDelta {
    #[expect(clippy::cast_precision_loss, reason = "frame counts stay far below 2^52")]
    fn between(before: &FlushStats, after: &FlushStats) -> Self {
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

/// The route-add latency, or why it was not measured.
#[derive(Debug, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
enum RouteLatency {
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
    fn describe(&self) -> String {
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

/// How the daemon took the table in the kernel into its dataplane when it started.
#[derive(Debug, Serialize)]
struct DaemonLoad {
    /// Routes of the table in the kernel.
    routes: usize,
    /// From the start until `sluice stats` shows both interfaces (the daemon has dumped and
    /// compiled the kernel's state and begun writing its maps).
    attached_s: f64,
    /// From the start until the pinned route trie holds at least `routes` entries.
    table_loaded_s: Option<f64>,
    /// From the start until the daemon logged that it is ready (every map written).
    ready_logged_s: Option<f64>,
    /// The routes of the family the daemon said it had written when it logged that it was ready
    /// (connected and local routes included).
    ready_routes: Option<usize>,
    /// `ready_logged_s` when the daemon had written the whole table by then: the daemon logs
    /// that it is ready once its first write of the kernel's state returned, so this is when
    /// the table was in the dataplane; `table_loaded_s` confirms it by counting the pinned trie,
    /// but only to the resolution of a count (seconds for a full table).
    all_written_s: Option<f64>,
    /// Entries in the trie when it was last counted (connected and local routes included).
    trie_entries: Option<usize>,
    /// Whether the trie could be counted, or why not.
    trie: String,
    /// What the last count of the trie took: the resolution of `table_loaded_s`.
    last_count_ms: Option<f64>,
    /// The daemon's resident memory with the table loaded (`VmRSS`), KiB.
    rss_kib: Option<u64>,
    /// Its peak resident memory so far (`VmHWM`), KiB.
    peak_rss_kib: Option<u64>,
    /// Of `rss_kib`, its own memory (`RssAnon`), KiB.
    anon_rss_kib: Option<u64>,
    /// Of `rss_kib`, mapped memory (`RssFile`): the executable and the dataplane's lookup
    /// tables, which are kernel memory mapped into the daemon to be written in place, KiB.
    mapped_rss_kib: Option<u64>,
}

impl DaemonLoad {
    fn describe(&self) -> String {
        let s = |v: Option<f64>| v.map_or_else(|| "?".into(), |v| format!("{v:.2} s"));
        let mib = |v: Option<u64>| {
            v.map_or_else(|| "?".into(), |v| format!("{:.0} MiB", v as f64 / 1024.0))
        };
        format!(
            "{} in the dataplane after {} (written when it logged ready, {} routes; interfaces after {:.2} s; the count of its trie reached {} entries after {}, a count taking {}), RSS {} (peak {}; {} its own, {} mapped tables and executable)",
            if self.routes == 1 { "1 route".to_owned() } else { format!("{} routes", self.routes) },
            s(self.all_written_s),
            self.ready_routes.map_or_else(|| "?".into(), |n| n.to_string()),
            self.attached_s,
            self.trie_entries.map_or_else(|| "?".into(), |n| n.to_string()),
            s(self.table_loaded_s),
            self.last_count_ms.map_or_else(|| "?".into(), |v| format!("{v:.0} ms")),
            mib(self.rss_kib),
            mib(self.peak_rss_kib),
            mib(self.anon_rss_kib),
            mib(self.mapped_rss_kib)
        )
    }
}

/// Sluice's rate over the others', in one cell.
#[derive(Debug, Serialize, Default)]
struct Ratios {
    sluice_linux: Option<f64>,
    sluice_fib_lookup: Option<f64>,
    sluice_ceiling: Option<f64>,
    /// Sluice over the ceiling that reads the destination address.
    sluice_ceiling_read: Option<f64>,
    /// Sluice with the full table over Sluice with one route (full-table cells).
    #[serde(skip_serializing_if = "Option::is_none")]
    sluice_full_over_one: Option<f64>,
    /// Sluice with hook rules over Sluice with empty hook tables.
    #[serde(skip_serializing_if = "Option::is_none")]
    hooks_over_empty: Option<f64>,
}

/// One (family, table) cell.
#[derive(Debug, Serialize)]
struct Cell {
    family: &'static str,
    /// `one` or `full`.
    table: &'static str,
    /// Routes of the table in the router's kernel (besides the connected ones).
    routes: usize,
    /// By forwarder name.
    forwarders: BTreeMap<&'static str, Measurement>,
    ratios: Ratios,
    #[serde(skip_serializing_if = "Option::is_none")]
    daemon: Option<DaemonLoad>,
    #[serde(skip_serializing_if = "Option::is_none")]
    route_add: Option<RouteLatency>,
    /// Forwarders that could not be measured, with the error.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    failures: BTreeMap<&'static str, String>,
}

/// A family's synthetic table.
#[derive(Debug, Serialize)]
struct TableReport {
    family: &'static str,
    routes: usize,
    next_hops: u8,
    seed: u64,
    /// Routes per prefix length.
    histogram: BTreeMap<u8, usize>,
    mean_prefix_len: f64,
    /// Share of routes covered by a shorter one (estimated from a sample).
    more_specific_share: f64,
    generate_s: f64,
    /// How long adding it to the router's kernel over rtnetlink took.
    kernel_install_s: Option<f64>,
    /// How long deleting it took (only when a later cell needed it gone).
    kernel_remove_s: Option<f64>,
    /// How far the daemon's dataplane lagged behind the kernel while it took the table.
    #[serde(skip_serializing_if = "Option::is_none")]
    load_lag: Option<LoadLag>,
}

/// Priority of the thread sampling the dataplane's lag: above the daemon's default (-10).
const SAMPLER_NICE: libc::c_int = -20;

/// The dataplane's lag behind the kernel while the kernel takes a full table: for the newest
/// route the kernel had acknowledged (one no other route of the table covers), how long until
/// the daemon's lookup tables (mapped by the benchmark) answered for it, sampled once per
/// acknowledged batch of 1024 routes (the newest batch when sampling one took longer). The
/// kernel's acknowledgement time is known to a batch: the lag is understated by at most that
/// batch's time (a few milliseconds).
#[derive(Debug, Serialize)]
struct LoadLag {
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
    series: Vec<[f64; 2]>,
}

impl LoadLag {
    fn describe(&self) -> String {
        format!(
            "median {:.0} ms, p99 {:.0} ms, max {:.0} ms ({:.1} s into the load) over {} samples; complete {:.0} ms after the kernel",
            self.median_ms, self.p99_ms, self.max_ms, self.max_at_s, self.samples, self.last_ms
        )
    }
}

impl TableReport {
    fn of(table: &Table, next_hops: u8, generated: Duration) -> Self {
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
        }
    }
}

/// The 1, 5 and 15 minute load averages when the run started and when it ended.
#[derive(Debug, Serialize)]
struct LoadAverages {
    start: [f64; 3],
    end: [f64; 3],
}

/// Everything one run measured.
#[derive(Debug, Serialize)]
struct Report {
    /// `--frame-size` as given: a length in bytes or `imix`.
    frame_size: String,
    /// The length of every frame, when all are the same size.
    #[serde(skip_serializing_if = "Option::is_none")]
    frame_len: Option<usize>,
    /// The mean length of the frames sent.
    mean_frame_len: f64,
    destinations: u32,
    seed: u64,
    budget: String,
    cpus: usize,
    /// Where the chain's stages ran.
    cpu_plan: String,
    kernel: String,
    load_average: LoadAverages,
    /// The tracepoint devmap flushes were counted at, or why they were not.
    flush_counter: String,
    /// How the XDP programs' time per packet (`program_time` of each XDP forwarder) was
    /// measured, or that it was not.
    program_time: String,
    tables: Vec<TableReport>,
    results: Vec<Cell>,
}

impl Report {
    /// Writes the JSON to `json` and the chart to `plot`, or beside the JSON.
    fn write(&self, json: Option<&Path>, plot: Option<&Path>) -> anyhow::Result<()> {
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
    fn frames(&self) -> String {
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
                    "{} table: while the kernel took it, the dataplane lagged behind: {}",
                    t.family,
                    lag.describe()
                );
            }
        }
    }

    /// The results as a table for people.
    fn text(&self) -> String {
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

    /// The rates as a bar chart.
    fn svg(&self) -> String {
        let series: Vec<(&str, &str)> =
            Forwarder::ALL.iter().map(|f| (f.name(), forwarder_colour(*f))).collect();
        let groups: Vec<(String, Vec<Bar>)> = self
            .results
            .iter()
            .map(|c| {
                let label = if c.table == "one" {
                    format!("{} one route", c.family)
                } else {
                    format!("{} full table ({})", c.family, thousands(c.routes))
                };
                let bars = Forwarder::ALL
                    .iter()
                    .map(|f| {
                        match (c.forwarders.get(f.name()), c.failures.contains_key(f.name())) {
                            (Some(m), _) => Bar::Value(m.mpps),
                            (None, true) => Bar::Failed,
                            (None, false) => Bar::Absent,
                        }
                    })
                    .collect();
                (label, bars)
            })
            .collect();
        bar_chart(
            &format!(
                "Forwarding rate, {} UDP, {} destinations (Mpps)",
                self.frames(),
                self.destinations
            ),
            &format!(
                "one veth chain, {} CPUs, Linux {}, load average {:.2} at the start",
                self.cpus, self.kernel, self.load_average.start[0]
            ),
            &series,
            &groups,
        )
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

fn forwarder_colour(f: Forwarder) -> &'static str {
    match f {
        Forwarder::Linux => "#9d9d9d",
        Forwarder::FibLookup => "#4c78a8",
        Forwarder::Ceiling => "#54a24b",
        Forwarder::CeilingRead => "#88d27a",
        Forwarder::Sluice => "#e45756",
        Forwarder::SluiceHooks => "#f58518",
    }
}

/// `1000000` as `1,000,000`.
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The top of a value axis for values up to `max`, and its tick interval: about five intervals
/// of 1, 2, 2.5 or 5 times a power of ten.
fn axis(max: f64) -> (f64, f64) {
    if !max.is_finite() || max <= 0.0 {
        return (1.0, 0.2);
    }
    let rough = max / 5.0;
    let magnitude = 10f64.powf(rough.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|v| *v >= rough * (1.0 - 1e-9))
        .unwrap_or(10.0 * magnitude);
    ((max / step - 1e-9).ceil().max(1.0) * step, step)
}

/// Escapes text for SVG.
fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// One bar of [`bar_chart`].
#[derive(Clone, Copy, Debug, PartialEq)]
enum Bar {
    /// Drawn to scale with its value above it.
    Value(f64),
    /// Not measured because the measurement failed: a note in its place.
    Failed,
    /// Not measured (not asked for): left out.
    Absent,
}

/// A grouped bar chart as a standalone SVG document: one group per entry of `groups`, one bar per
/// series (name and colour).
fn bar_chart(
    title: &str,
    subtitle: &str,
    series: &[(&str, &str)],
    groups: &[(String, Vec<Bar>)],
) -> String {
    const LEFT: f64 = 56.0;
    const RIGHT: f64 = 16.0;
    const TOP: f64 = 84.0;
    const PLOT: f64 = 300.0;
    const BOTTOM: f64 = 48.0;
    const BAR: f64 = 30.0;
    const GAP: f64 = 4.0;
    const PAD: f64 = 36.0;
    let bars = series.len().max(1) as f64;
    let group_width = bars * (BAR + GAP) - GAP + PAD;
    let width = (LEFT + PAD / 2.0 + group_width * groups.len().max(1) as f64 + RIGHT).max(560.0);
    let height = TOP + PLOT + BOTTOM;
    let max = groups
        .iter()
        .flat_map(|(_, v)| v.iter())
        .filter_map(|b| match b {
            Bar::Value(v) => Some(*v),
            _ => None,
        })
        .fold(0.0f64, f64::max);
    let (top, step) = axis(max);
    let y = |v: f64| TOP + PLOT - v / top * PLOT;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="22" font-size="15" font-weight="bold">{}</text>"#,
        xml_escape(title)
    );
    let _ = writeln!(s, r##"<text x="{LEFT}" y="40" fill="#555">{}</text>"##, xml_escape(subtitle));
    let mut lx = LEFT;
    for (name, colour) in series {
        let _ = writeln!(s, r#"<rect x="{lx:.1}" y="52" width="12" height="12" fill="{colour}"/>"#);
        let _ = writeln!(s, r#"<text x="{:.1}" y="62">{}</text>"#, lx + 16.0, xml_escape(name));
        lx += 16.0 + 8.0 * name.len() as f64 + 18.0;
    }
    for v in (0u32..).map(|i| step * f64::from(i)).take_while(|v| *v <= top + step / 2.0) {
        let _ = writeln!(
            s,
            r#"<line x1="{LEFT}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="{}"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            width - RIGHT,
            y(v),
            y(v),
            if v > 0.0 { "#e4e4e4" } else { "#333" },
            LEFT - 6.0,
            y(v) + 4.0,
            format_tick(v)
        );
    }
    for (g, (label, values)) in groups.iter().enumerate() {
        let x0 = LEFT + PAD / 2.0 + g as f64 * group_width;
        for (b, value) in values.iter().enumerate() {
            let (name, colour) = series.get(b).copied().unwrap_or(("", "#000"));
            let x = x0 + b as f64 * (BAR + GAP);
            let v = match value {
                Bar::Value(v) => v,
                Bar::Absent => continue,
                Bar::Failed => {
                    let _ = writeln!(
                        s,
                        r#"<text x="{:.1}" y="{:.1}" text-anchor="start" font-size="10" fill="{colour}" transform="rotate(-90 {:.1} {:.1})">{} failed</text>"#,
                        x + BAR / 2.0 + 4.0,
                        TOP + PLOT - 6.0,
                        x + BAR / 2.0 + 4.0,
                        TOP + PLOT - 6.0,
                        xml_escape(name)
                    );
                    continue;
                }
            };
            let _ = writeln!(
                s,
                r#"<rect class="bar" x="{x:.1}" y="{:.1}" width="{BAR}" height="{:.1}" fill="{colour}"><title>{}: {v:.3}</title></rect>"#,
                y(*v),
                TOP + PLOT - y(*v),
                xml_escape(name)
            );
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="10">{v:.2}</text>"#,
                x + BAR / 2.0,
                y(*v) - 4.0
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            x0 + (group_width - PAD) / 2.0,
            TOP + PLOT + 20.0,
            xml_escape(label)
        );
    }
    s.push_str("</svg>\n");
    s
}

fn format_tick(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// The frame of `len` bytes every destination shares: Ethernet, IPv4 or IPv6 (by `src`), UDP to
/// the discard port and a recognisable payload, with the destination address and the checksums
/// zero. The payload's bytes depend only on their place in the frame, so a shorter frame's payload
/// is the start of a longer one's (the generator trims one initial frame to every size).
fn frame_template(src: IpAddr, src_mac: [u8; 6], dst_mac: [u8; 6], len: usize) -> Vec<u8> {
    assert!((TEMPLATE_LEN..=MAX_FRAME_LEN).contains(&len), "frame length {len}");
    let mut f = vec![0u8; len];
    f[0..6].copy_from_slice(&dst_mac);
    f[6..12].copy_from_slice(&src_mac);
    let udp = match src {
        IpAddr::V4(src) => {
            f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
            let total = (len - 14) as u16;
            // Version 4, IHL 5; DSCP 0; total length; id 0; DF; TTL 64; UDP.
            f[14..24].copy_from_slice(&[
                0x45,
                0,
                (total >> 8) as u8,
                total as u8,
                0,
                0,
                0x40,
                0,
                64,
                17,
            ]);
            f[26..30].copy_from_slice(&src.octets());
            14 + 20
        }
        IpAddr::V6(src) => {
            f[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
            let payload = (len - 14 - 40) as u16;
            f[14] = 0x60;
            f[18..20].copy_from_slice(&payload.to_be_bytes());
            f[20] = 17;
            f[21] = 64;
            f[22..38].copy_from_slice(&src.octets());
            14 + 40
        }
    };
    let udp_len = (len - udp) as u16;
    f[udp..udp + 2].copy_from_slice(&UDP_PORT.to_be_bytes());
    f[udp + 2..udp + 4].copy_from_slice(&UDP_PORT.to_be_bytes());
    f[udp + 4..udp + 6].copy_from_slice(&udp_len.to_be_bytes());
    for (b, p) in f[udp + 8..].iter_mut().zip(b"sluice bench".iter().cycle()) {
        *b = *p;
    }
    f
}

/// The generator's entry for `dst`: the address and the checksums of the template carrying it.
fn gen_dest(template: &[u8], dst: IpAddr) -> GenDest {
    let mut d = GenDest::default();
    match dst {
        IpAddr::V4(a) => d.addr[..4].copy_from_slice(&a.octets()),
        IpAddr::V6(a) => d.addr = a.octets(),
    }
    let family = if dst.is_ipv4() { Family::V4 } else { Family::V6 };
    let f = apply_dest(template, family, &d);
    let udp = match family {
        Family::V4 => {
            d.ip_check = checksum(&[&f[14..34]]).to_be_bytes();
            34
        }
        Family::V6 => 54,
    };
    let (src, dst) = match family {
        Family::V4 => (&f[26..30], &f[30..34]),
        Family::V6 => (&f[22..38], &f[38..54]),
    };
    let udp_len = ((f.len() - udp) as u32).to_be_bytes();
    // RFC 768 / RFC 8200 8.1: the pseudo-header (addresses, protocol, UDP length) and the
    // datagram. A computed 0 is sent as 0xffff.
    let sum = checksum(&[src, dst, &[0, 17], &udp_len, &f[udp..]]);
    d.udp_check = (if sum == 0 { 0xffff } else { sum }).to_be_bytes();
    d
}

/// The frame the generator writes for destination `d`: what `sluice_gen` does, in userspace.
fn apply_dest(template: &[u8], family: Family, d: &GenDest) -> Vec<u8> {
    let mut f = template.to_vec();
    match family {
        Family::V4 => {
            f[offsets::V4_CHECK..offsets::V4_CHECK + 2].copy_from_slice(&d.ip_check);
            f[offsets::V4_DST..offsets::V4_DST + 4].copy_from_slice(&d.addr[..4]);
            f[offsets::V4_UDP_CHECK..offsets::V4_UDP_CHECK + 2].copy_from_slice(&d.udp_check);
        }
        Family::V6 => {
            f[offsets::V6_DST..offsets::V6_DST + 16].copy_from_slice(&d.addr);
            f[offsets::V6_UDP_CHECK..offsets::V6_UDP_CHECK + 2].copy_from_slice(&d.udp_check);
        }
    }
    f
}

/// The Internet checksum (RFC 1071) of the concatenated parts, each of even length but the last.
fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum = 0u32;
    for part in parts {
        for pair in part.chunks(2) {
            sum += u32::from(u16::from_be_bytes([pair[0], pair.get(1).copied().unwrap_or(0)]));
        }
    }
    !sluice_common::csum_fold(sum)
}

/// The kernel threads polling `dev`'s NAPI: named `napi/DEV-ID`, cut to 15 bytes.
fn napi_threads(dev: &str) -> anyhow::Result<Vec<nix::unistd::Pid>> {
    let mut want = format!("napi/{dev}-");
    want.truncate(15);
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let entry = entry?;
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        if std::fs::read_to_string(entry.path().join("comm"))
            .is_ok_and(|comm| comm.trim_end().starts_with(&want))
        {
            found.push(nix::unistd::Pid::from_raw(pid));
        }
    }
    Ok(found)
}

/// Restricts a thread (0: the calling one) to one CPU.
fn pin_to(pid: nix::unistd::Pid, cpu: usize) -> anyhow::Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu)?;
    nix::sched::sched_setaffinity(pid, &set).with_context(|| format!("pin {pid} to CPU {cpu}"))
}

/// Runs `f` on a thread that has entered `ns` (network namespaces are per thread).
fn in_netns<T: Send>(
    ns: &NetNs,
    f: impl FnOnce() -> anyhow::Result<T> + Send,
) -> anyhow::Result<T> {
    thread::scope(|s| {
        s.spawn(|| {
            ns.enter()?;
            f()
        })
        .join()
        .map_err(|_| anyhow!("thread in namespace {} panicked", ns.name()))?
    })
}

/// ifindex and MAC address of a device, from `ip -j link show`.
fn link_info(ns: &NetNs, dev: &str) -> anyhow::Result<(u32, [u8; 6])> {
    let out: Value = serde_json::from_str(&ns.ip(&["-j", "link", "show", "dev", dev])?)?;
    let link = &out[0];
    let ifindex = link["ifindex"].as_u64().and_then(|i| u32::try_from(i).ok());
    let mac = link["address"].as_str().and_then(parse_mac);
    ifindex.zip(mac).ok_or_else(|| anyhow!("unexpected `ip -j link show dev {dev}` output: {out}"))
}

/// Feeds `ip -n NS -batch -` the given commands.
fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

fn format_mac(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

/// The entry of `sluice stats --json` for interface `name`.
fn iface<'v>(stats: &'v Value, name: &str) -> Option<&'v Value> {
    stats["interfaces"].as_array()?.iter().find(|i| i["name"] == name)
}

fn iface_field<'v>(stats: &'v Value, name: &str, path: &[&str]) -> Option<&'v Value> {
    path.iter().try_fold(iface(stats, name)?, |v, k| v.get(k))
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

    const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 2];

    fn frame(family: Family, dst: IpAddr, len: usize) -> Vec<u8> {
        let template = frame_template(family.links().1[0], MAC_A, MAC_B, len);
        apply_dest(&template, family, &gen_dest(&template, dst))
    }

    #[test]
    fn ipv4_frames_carry_valid_checksums() {
        let table = Table::generate(Family::V4, 1000, 5, 2);
        for len in [64, 65, 590, 1514] {
            for dst in table.destinations(50, 5) {
                let f = frame(Family::V4, dst, len);
                assert_eq!(f.len(), len);
                assert_eq!(&f[0..6], &MAC_B, "destination MAC");
                assert_eq!(checksum(&[&f[14..34]]), 0, "IPv4 header checksum to {dst}");
                assert_eq!(u16::from_be_bytes([f[16], f[17]]) as usize, len - 14, "total length");
                let udp_len = ((len - 34) as u32).to_be_bytes();
                assert_eq!(u16::from_be_bytes([f[38], f[39]]) as usize, len - 34, "UDP length");
                assert_eq!(
                    checksum(&[&f[26..34], &[0, 17], &udp_len, &f[34..]]),
                    0,
                    "UDP checksum, {len} bytes"
                );
                assert_eq!(IpAddr::from(<[u8; 4]>::try_from(&f[30..34]).unwrap()), dst);
            }
        }
    }

    #[test]
    fn ipv6_frames_carry_valid_checksums() {
        let table = Table::generate(Family::V6, 1000, 5, 2);
        for len in [64, 65, 590, 1514] {
            for dst in table.destinations(50, 5) {
                let f = frame(Family::V6, dst, len);
                assert_eq!(f.len(), len);
                assert_eq!(u16::from_be_bytes([f[18], f[19]]) as usize, len - 54, "payload length");
                assert_eq!(u16::from_be_bytes([f[58], f[59]]) as usize, len - 54, "UDP length");
                let udp_len = ((len - 54) as u32).to_be_bytes();
                assert_eq!(
                    checksum(&[&f[22..54], &[0, 17], &udp_len, &f[54..]]),
                    0,
                    "UDP checksum, {len} bytes"
                );
                assert_eq!(IpAddr::from(<[u8; 16]>::try_from(&f[38..54]).unwrap()), dst);
            }
        }
    }

    /// The generator trims its one initial frame to every size and writes only the template:
    /// each size's frame must be the longest one's bytes past the template.
    #[test]
    fn shorter_frames_are_the_start_of_the_longest_past_the_template() {
        for family in [Family::V4, Family::V6] {
            let src = family.links().1[0];
            let longest = frame_template(src, MAC_A, MAC_B, MAX_FRAME_LEN);
            for len in [TEMPLATE_LEN, 590, 1000] {
                let f = frame_template(src, MAC_A, MAC_B, len);
                assert_eq!(f[TEMPLATE_LEN..], longest[TEMPLATE_LEN..len], "{family:?} {len}");
            }
        }
    }

    #[test]
    fn frame_sizes_parse() {
        assert_eq!(parse_frame_size("64"), Ok(FrameSize::Fixed(64)));
        assert_eq!(parse_frame_size("1514"), Ok(FrameSize::Fixed(1514)));
        assert_eq!(parse_frame_size("IMIX"), Ok(FrameSize::Imix));
        for bad in ["63", "1515", "0", "jumbo", ""] {
            assert!(parse_frame_size(bad).is_err(), "{bad:?}");
        }
        assert_eq!(FrameSize::Fixed(128).slots(), (vec![128], vec![0]));
        assert!((FrameSize::Fixed(128).mean_len() - 128.0).abs() < 1e-9);
    }

    /// The simple IMIX: 7, 4 and 1 of every 12 frames, about 360 bytes on average, within the
    /// generator's slots and pattern.
    #[test]
    fn imix_is_seven_four_one() {
        let (lens, pattern) = FrameSize::Imix.slots();
        assert_eq!(lens, [64, 590, 1514]);
        assert!(lens.len() <= GEN_SIZES && pattern.len() <= GEN_PATTERN);
        let mut counts = [0; 3];
        for &slot in &pattern {
            counts[usize::from(slot)] += 1;
        }
        assert_eq!(counts, [7, 4, 1]);
        assert!((FrameSize::Imix.mean_len() - 4322.0 / 12.0).abs() < 1e-9);
    }

    #[test]
    fn address_plan() {
        assert_eq!(Family::V4.gateway(0), Family::V4.links().1[3], "next hop 0 is the sink");
        assert_eq!(Family::V6.gateway(3), "fd00:10:2::5".parse::<IpAddr>().unwrap());
        assert_eq!(Family::V6.probe_route(17), "fd00:251:11::/64");
        assert_eq!(Family::V4.probe_route(3), "10.251.3.0/24");
        // The probes and the links lie outside every table route.
        for family in [Family::V4, Family::V6] {
            let t = Table::generate(family, 5000, 1, 4);
            for a in family.links().1.into_iter().chain([family
                .probe_route(0)
                .parse::<ipnet::IpNet>()
                .unwrap()
                .addr()])
            {
                assert_eq!(t.longest_match(a), None, "{a}");
            }
        }
    }

    #[test]
    fn phases_put_the_large_table_last() {
        let p = phases(FamilyChoice::Both, TableChoice::Both);
        let order: Vec<(Family, TableKind)> = p.iter().map(|p| (p.family, p.table)).collect();
        assert_eq!(
            order,
            [
                (Family::V4, TableKind::One),
                (Family::V6, TableKind::One),
                (Family::V6, TableKind::Full),
                (Family::V4, TableKind::Full)
            ]
        );
        assert_eq!(phases(FamilyChoice::Ipv6, TableChoice::Full).len(), 1);
    }

    #[test]
    fn table_sizes_parse() {
        assert_eq!(
            parse_table_sizes("1000000,230000"),
            Ok(TableSizes { v4: 1_000_000, v6: 230_000 })
        );
        assert_eq!(parse_table_sizes("20_000"), Ok(TableSizes { v4: 20_000, v6: 20_000 }));
        assert!(parse_table_sizes("0").is_err());
        assert!(parse_table_sizes("10,x").is_err());
        assert!(parse_table_sizes("100000000").is_err());
    }

    #[test]
    fn tracepoint_formats_parse() {
        let format = "name: xdp_devmap_xmit\nID: 578\nformat:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\n\tfield:int from_ifindex;\toffset:8;\tsize:4;\tsigned:1;\n\tfield:u32 act;\toffset:12;\tsize:4;\tsigned:0;\n\tfield:int to_ifindex;\toffset:16;\tsize:4;\tsigned:1;\n\tfield:int drops;\toffset:20;\tsize:4;\tsigned:1;\n\tfield:int sent;\toffset:24;\tsize:4;\tsigned:1;\n\tfield:int err;\toffset:28;\tsize:4;\tsigned:1;\n";
        assert_eq!(tracepoint_field(format, "from_ifindex"), Some((flush_record::FROM_IFINDEX, 4)));
        assert_eq!(tracepoint_field(format, "to_ifindex"), Some((flush_record::TO_IFINDEX, 4)));
        assert_eq!(tracepoint_field(format, "sent"), Some((flush_record::SENT, 4)));
        assert_eq!(tracepoint_field(format, "drops"), Some((flush_record::DROPS, 4)));
        assert_eq!(tracepoint_field(format, "err"), Some((flush_record::ERR, 4)));
        assert_eq!(tracepoint_field(format, "missing"), None);
    }

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
    fn axis_tops_are_round() {
        for (x, top, step) in [
            (0.0, 1.0, 0.2),
            (0.77, 0.8, 0.2),
            (2.39, 2.5, 0.5),
            (2.55, 3.0, 1.0),
            (3.1, 4.0, 1.0),
            (11.0, 12.5, 2.5),
            (2.0, 2.0, 0.5),
        ] {
            let (t, s) = axis(x);
            assert!((t - top).abs() < 1e-9 && (s - step).abs() < 1e-9, "{x} -> {t} by {s}");
        }
        assert_eq!(format_tick(2.5), "2.5");
        assert_eq!(format_tick(2.0), "2");
        assert_eq!(thousands(1_000_000), "1,000,000");
        assert_eq!(thousands(230), "230");
    }

    #[test]
    fn bar_chart_draws_every_value_to_scale() {
        let series = [("linux", "#111"), ("sluice <xdp>", "#222")];
        let groups = vec![
            ("ipv4 one route".to_owned(), vec![Bar::Value(1.0), Bar::Value(5.0)]),
            ("ipv6 & full".to_owned(), vec![Bar::Absent, Bar::Value(2.0)]),
            ("ipv6 one route".to_owned(), vec![Bar::Value(0.5), Bar::Failed]),
        ];
        let svg = bar_chart("Rates", "sub", &series, &groups);
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches(r#"<rect class="bar""#).count(), 4, "one bar per value");
        assert!(svg.contains("sluice &lt;xdp&gt; failed"), "a failed measurement is marked");
        let heights: Vec<f64> = svg
            .lines()
            .filter(|l| l.contains(r#"class="bar""#))
            .map(|l| {
                let h = l.split("height=\"").nth(1).unwrap();
                h[..h.find('"').unwrap()].parse().unwrap()
            })
            .collect();
        // The tallest value reaches the top of the axis (5 is a round top); the others scale.
        assert_eq!(heights.len(), 4);
        for (h, want) in heights.iter().zip([60.0, 300.0, 120.0, 30.0]) {
            assert!((h - want).abs() < 0.11, "{heights:?}");
        }
        assert!(svg.contains("sluice &lt;xdp&gt;") && svg.contains("ipv6 &amp; full"));
        assert!(!svg.contains("<xdp>") && !svg.contains(" & "));
        // Balanced elements.
        assert_eq!(svg.matches("<text").count(), svg.matches("</text>").count());
        assert_eq!(svg.matches("<title>").count(), 4);
    }

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

    fn measurement(mpps: f64, program_time: Option<ProgramTime>) -> Measurement {
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
            failures: BTreeMap::new(),
        }
    }

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

    #[test]
    fn macs_round_trip() {
        assert_eq!(parse_mac("02:00:0a:ff:00:01"), Some([2, 0, 10, 255, 0, 1]));
        assert_eq!(format_mac([2, 0, 10, 255, 0, 1]), "02:00:0a:ff:00:01");
        assert_eq!(parse_mac("02:00:0a:ff:00"), None);
    }
}
