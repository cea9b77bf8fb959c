//! The run: the (family, table) cells in order, each full table installed before its cell, every
//! forwarder measured in rounds within a cell, and the report put together at the end.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use serde_json::Value;
use sluice_common::bench::{MAX_GEN_DESTS, names};
use sluice_dataplane::PinDir;

use super::{
    args::{BenchArgs, FamilyChoice, Forwarder, FrameSize, TableChoice},
    daemon::{
        DAEMON_READY_TIMEOUT, Daemon, DaemonLoad, IDLE_TIMEOUT, READY_PER_ROUTE, iface_field,
    },
    interrupt::{SignalGuard, check_interrupted, interrupted},
    latency::{RouteLatency, route_add_latency},
    measurement::Measurement,
    program_time::{bpf_stats_enabled, program_time_method},
    programs::{BenchPrograms, Budget},
    report::{Cell, LoadAverages, Ratios, Report, TableReport, format_load, load_average},
    steps::{self, ProgramSteps, StepOptions},
    topology::{CpuPlan, Topology},
};
use crate::table::{Family, RouteOp, Table};

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
        "sluice-bench: {} UDP frames to {} destinations, {}; {}; load average {}",
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
    let step_options = (args.step_rounds > 0)
        .then(|| StepOptions { rounds: args.step_rounds, ab: args.ab.clone() });
    let ctx = CellContext {
        exe: &exe,
        budget,
        forwarders: &forwarders,
        trials: args.route_trials,
        rounds: args.rounds,
        program_time: !args.no_program_time,
        steps: step_options.as_ref(),
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
                    state.info.load_peak_rss_kib = daemon.memory().peak;
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
                    )) + &state.info.load_peak_rss_kib.map_or_else(String::new, |k| format!(
                        "; the daemon's peak RSS {:.0} MiB",
                        k as f64 / 1024.0
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
pub(super) struct Phase {
    pub(super) family: Family,
    pub(super) table: TableKind,
}

impl Phase {
    pub(super) fn describe(self) -> String {
        format!("{} {}", self.family.name(), self.table.describe())
    }
}

/// Which table a cell runs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum TableKind {
    One,
    Full,
}

impl TableKind {
    pub(super) const fn name(self) -> &'static str {
        match self {
            Self::One => "one",
            Self::Full => "full",
        }
    }

    pub(super) const fn describe(self) -> &'static str {
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
    pub(super) table: Table,
    pub(super) destinations: Vec<IpAddr>,
    pub(super) info: TableReport,
}

/// What does not change between the cells.
#[derive(Debug, Clone, Copy)]
pub(super) struct CellContext<'a> {
    pub(super) exe: &'a Path,
    pub(super) budget: Budget,
    pub(super) forwarders: &'a [Forwarder],
    pub(super) trials: u32,
    /// Rounds over all forwarders; each forwarder's rate is its median round.
    pub(super) rounds: u32,
    /// Whether the XDP forwarders' time per packet is measured (after the rate of the last
    /// round; inside a round, whether this is the last one and it is measured).
    pub(super) program_time: bool,
    /// The per-step program times after Sluice's last round, unless skipped.
    pub(super) steps: Option<&'a StepOptions>,
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
        program_steps: None,
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
            steps: ctx.steps.filter(|_| round + 1 == ctx.rounds.max(1)),
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
                Err(e) if interrupted() => return Err(e),
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
            let (m, daemon, route_add, steps) =
                measure_sluice(ctx, bench, topo, phase, routes, false)?;
            if steps.is_some() {
                cell.program_steps = steps;
            }
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
) -> anyhow::Result<(Measurement, DaemonLoad, Option<RouteLatency>, Option<ProgramSteps>)> {
    let ready_timeout = DAEMON_READY_TIMEOUT + READY_PER_ROUTE * routes as u32;
    let mut daemon =
        Daemon::start(ctx.exe, &topo.router, &[&topo.rtr_in, &topo.rtr_out], ready_timeout)?;
    let load = daemon.await_table(phase.family, routes, ready_timeout)?;
    eprintln!("    {:<10} {}", "daemon", load.describe());
    // Steady state only: nothing of the daemon's (the route record's writer, above all) runs
    // beside forwarding while it is measured.
    let idle = daemon.wait_idle(IDLE_TIMEOUT)?;
    eprintln!("    {:<10} {}", "daemon", idle.describe());
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
    let steps = match (ctx.steps, with_hooks) {
        (Some(opts), false) => {
            daemon.wait_idle(IDLE_TIMEOUT)?;
            let s = steps::measure(
                bench,
                &topo.router,
                &daemon.pin_dir,
                topo.rtr_in_ifindex,
                &bench.step_frames,
                opts,
            )
            .context("per-step program times")?;
            eprint!("{}", s.text(&format!("    {} {}", phase.family.name(), phase.table.name())));
            Some(s)
        }
        _ => None,
    };
    daemon.stop()?;
    Ok((m, load, route_add, steps))
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
