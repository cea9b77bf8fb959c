//! `sluice bench`: the forwarding benchmark of the README. Linux and Sluice forward the same
//! traffic through the same veth chain in one run, so their ratio means something even where
//! absolute rates drift between runs and machines.
//!
//! ```text
//!  gen ns                    router ns                        sink ns
//!  sluice_gen --veth--> rtr_in [linux | sluice_xdp] rtr_out --veth--> sluice_sink
//! ```
//!
//! The generator is an XDP program run by `BPF_PROG_TEST_RUN` in live-frames mode from a thread
//! inside the gen namespace: each frame it writes is sent out of the gen-side veth. The sink, an
//! XDP program too, counts the generated frames per CPU and drops everything. The rate is frames
//! counted at the sink over the time the generator ran. The router gets a permanent neighbour for
//! the sink, so Linux never queues on resolution, and GRO on `rtr_in`, because frames redirected
//! into a veth are only taken when its peer runs NAPI (an XDP program or GRO).
//!
//! Everything runs to completion on the generator's CPU: each batch is received, forwarded and
//! sunk in the softirq work of the test run, so no frame is lost and the rate is the inverse of
//! the whole chain's cost per frame (generator and sink included, the same for both forwarders).
//! Moving the router's NAPI to a thread on the other CPU made both forwarders slower here, with
//! most frames dropped at the full veth ring. An XDP sink is also the cheapest one for Linux,
//! though veth copies each forwarded skb into a page to run XDP on it: a sink in the sink
//! namespace's stack, counted from the interface statistics, made Linux a third slower still.
//!
//! Last, with the daemon still running, the route-add latency: the time from `ip route add` in the
//! router namespace until the prefix is in the dataplane's route trie, and until it shows in
//! `sluice routes --json`.

use std::{
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
    maps::{Array, LpmTrie, Map, MapData, PerCpuArray},
    programs::{TestRun as _, TestRunAttrs, TestRunOptions, Xdp, XdpMode},
};
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
use serde::Serialize;
use serde_json::Value;
use sluice_common::{
    FAMILY_V4, FAMILY_V6, Route,
    bench::{FRAME_LEN, GenConfig, GenDest, MAX_GEN_DESTS, UDP_PORT, names, offsets},
};

use crate::{
    dataplane::PinDir,
    netns::{self, NetNs},
};

/// The generator and the sink, built by `build.rs` from `dataplane-ebpf/src/bench.rs`.
static BENCH_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sluice-bench-xdp"));

/// Options of `sluice bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Frames the generator sends in each measurement.
    #[arg(long, default_value_t = 5_000_000, conflicts_with = "duration")]
    pub packets: u64,
    /// Send for this many seconds in each measurement instead of a fixed number of frames.
    #[arg(long, value_name = "SECONDS")]
    pub duration: Option<f64>,
    /// Distinct destination addresses, covered by one route per 256 of them.
    #[arg(long, default_value_t = 4000, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_GEN_DESTS)))]
    pub destinations: u32,
    /// IPv6 frames and routes instead of IPv4.
    #[arg(long)]
    pub ipv6: bool,
    /// Trials of the route-add latency measurement; 0 skips it.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(0..=250))]
    pub route_trials: u32,
    /// Also write the results as JSON to this file.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// The `sluice` executable that runs the daemon; this one by default.
    #[arg(long, value_name = "PATH")]
    pub sluice_bin: Option<PathBuf>,
}

/// Frames per live-frames batch: the NAPI weight, as a driver would deliver them.
const GEN_BATCH: u32 = 64;
/// Frames per `BPF_PROG_TEST_RUN` call; the syscall is cheap next to them.
const GEN_CHUNK: u64 = 1 << 20;
/// Frames of each warm-up round, sent until the sink sees nearly all of them.
const WARMUP_FRAMES: u64 = 100_000;
/// How long the forwarder under test may take to start delivering.
const WARMUP_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the daemon may take to attach and report its interfaces.
const DAEMON_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a new route may take to show in `sluice routes --json`.
const ROUTE_TIMEOUT: Duration = Duration::from_secs(2);
/// Interval between polls of `sluice routes --json`.
const ROUTE_POLL: Duration = Duration::from_millis(1);
/// Interval between reads of the pinned route trie.
const MAP_POLL: Duration = Duration::from_micros(100);

/// Runs the benchmark and prints (and optionally writes) its results.
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
        None => std::env::current_exe().context("locate the sluice executable")?,
    };
    let family = if args.ipv6 { Family::V6 } else { Family::V4 };
    let routes = args.destinations.div_ceil(256);
    eprintln!(
        "sluice bench: {}, {FRAME_LEN}-byte UDP frames to {} destinations over {routes} routes, {}",
        family.name(),
        args.destinations,
        budget.describe()
    );

    let topo = Topology::build(family, routes).context("build the veth chain")?;
    let mut bench = BenchPrograms::load(&topo.sink, &topo.sink_if)?;
    bench.configure(family, &topo, args.destinations)?;

    topo.router.sysctl(family.forwarding_sysctl(), "1")?;
    bench.warm_up(&topo, || topo.router.ip(&["-s", "link"])).context("linux forwarding")?;
    let linux = bench.measure(&topo, budget)?;
    eprintln!("  linux   {}", linux.describe());

    topo.router.sysctl(family.forwarding_sysctl(), "0")?;
    let daemon = Daemon::start(&exe, &topo.router, &[&topo.rtr_in, &topo.rtr_out])?;
    bench.warm_up(&topo, || daemon.stats().map(|s| s.to_string())).context("sluice forwarding")?;
    let before = daemon.stats()?;
    let mut sluice = bench.measure(&topo, budget)?;
    let after = daemon.stats()?;
    let xdp_mode = iface_field(&after, &topo.rtr_in, &["xdp_mode"])
        .and_then(|v| v.as_str().map(str::to_owned));
    let forwarded =
        |s: &Value| iface_field(s, &topo.rtr_in, &["counters", "forwarded", "packets"])?.as_u64();
    sluice.xdp_forwarded =
        forwarded(&after).zip(forwarded(&before)).map(|(a, b)| a.saturating_sub(b));
    sluice.xdp_mode = xdp_mode;
    eprintln!("  sluice  {}", sluice.describe());

    let route_add = if args.route_trials == 0 {
        RouteLatency::NotMeasured { reason: "skipped (--route-trials 0)".into() }
    } else {
        route_add_latency(&daemon, &topo, args.route_trials)?
    };
    daemon.stop()?;

    let report = Report {
        family: family.name(),
        frame_len: FRAME_LEN,
        destinations: args.destinations,
        routes,
        cpus: thread::available_parallelism().map_or(0, usize::from),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default(),
        ratio: sluice.mpps / linux.mpps,
        linux,
        sluice,
        route_add,
    };
    report.print();
    if let Some(path) = &args.json {
        let mut f = File::create(path).with_context(|| format!("create {}", path.display()))?;
        serde_json::to_writer_pretty(&mut f, &report)?;
        writeln!(f)?;
    }
    Ok(())
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
            Self::Frames(n) => format!("{n} frames per run"),
            Self::Time(d) => format!("{:.1} s per run", d.as_secs_f64()),
        }
    }
}

/// The address plan of one family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn name(self) -> &'static str {
        match self {
            Self::V4 => "ipv4",
            Self::V6 => "ipv6",
        }
    }

    fn code(self) -> u8 {
        match self {
            Self::V4 => FAMILY_V4,
            Self::V6 => FAMILY_V6,
        }
    }

    fn forwarding_sysctl(self) -> &'static str {
        match self {
            Self::V4 => "net.ipv4.ip_forward",
            Self::V6 => "net.ipv6.conf.all.forwarding",
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

    /// Destination `i`: `10.200.0.0 + i`, or `fd00:200:: + i`.
    fn destination(self, i: u32) -> IpAddr {
        match self {
            Self::V4 => Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 200, 0, 0)) + i).into(),
            Self::V6 => Ipv6Addr::from(
                u128::from(Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, 0)) + u128::from(i),
            )
            .into(),
        }
    }

    /// The route covering destinations `256 * block ..= 256 * block + 255`.
    fn destination_route(self, block: u32) -> String {
        let first = self.destination(block * 256);
        match self {
            Self::V4 => format!("{first}/24"),
            Self::V6 => format!("{first}/120"),
        }
    }

    /// A prefix outside every destination route, added in latency trial `i`.
    fn probe_route(self, i: u32) -> String {
        match self {
            Self::V4 => format!("10.251.{i}.0/24"),
            Self::V6 => format!("{}/64", Ipv6Addr::new(0xfd00, 0x251, i as u16, 0, 0, 0, 0, 0)),
        }
    }
}

/// Three namespaces chained by two veth pairs, deleted (with their veths) on drop.
#[derive(Debug)]
struct Topology {
    source: NetNs,
    router: NetNs,
    sink: NetNs,
    rtr_in: String,
    rtr_out: String,
    sink_if: String,
    family: Family,
    gen_ifindex: u32,
    gen_mac: [u8; 6],
    rtr_in_mac: [u8; 6],
}

impl Topology {
    fn build(family: Family, route_count: u32) -> anyhow::Result<Self> {
        let source = NetNs::create(&netns::unique_name("sbg"))?;
        let router = NetNs::create(&netns::unique_name("sbr"))?;
        let sink = NetNs::create(&netns::unique_name("sbs"))?;
        let [gen_if, rtr_in, rtr_out, sink_if] =
            ["sbg", "sbi", "sbo", "sbs"].map(netns::unique_name);
        source.ip(&[
            "link",
            "add",
            &gen_if,
            "type",
            "veth",
            "peer",
            "name",
            &rtr_in,
            "netns",
            router.name(),
        ])?;
        router.ip(&[
            "link",
            "add",
            &rtr_out,
            "type",
            "veth",
            "peer",
            "name",
            &sink_if,
            "netns",
            sink.name(),
        ])?;

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
            ns.ip(&["link", "set", dev, "up"])?;
        }
        for key in ["net.ipv4.conf.all.rp_filter", "net.ipv4.conf.default.rp_filter"] {
            router.sysctl(key, "0")?;
        }
        // Frames the generator sends into gen_if are only taken by a peer that runs NAPI.
        router.run("ethtool", &["-K", &rtr_in, "gro", "on"])?;
        let (_, sink_mac) = link_info(&sink, &sink_if)?;
        router.ip(&[
            "neigh",
            "replace",
            &sink_addr.to_string(),
            "lladdr",
            &format_mac(sink_mac),
            "dev",
            &rtr_out,
            "nud",
            "permanent",
        ])?;
        let mut batch = String::new();
        for b in 0..route_count {
            let net = family.destination_route(b);
            writeln!(batch, "route add {net} via {sink_addr} dev {rtr_out}")?;
        }
        ip_batch(&router, &batch)?;

        let (gen_ifindex, gen_mac) = link_info(&source, &gen_if)?;
        let (_, rtr_in_mac) = link_info(&router, &rtr_in)?;
        Ok(Self {
            source,
            router,
            sink,
            rtr_in,
            rtr_out,
            sink_if,
            family,
            gen_ifindex,
            gen_mac,
            rtr_in_mac,
        })
    }

    fn sink_gateway(&self) -> IpAddr {
        self.family.links().1[3]
    }
}

/// The generator and the sink, loaded; the sink attached to the sink's veth.
#[derive(Debug)]
struct BenchPrograms {
    ebpf: Ebpf,
    /// The frame of destination 0, given to the test run as its initial packet.
    first_frame: [u8; FRAME_LEN],
}

impl BenchPrograms {
    fn load(sink_ns: &NetNs, sink_if: &str) -> anyhow::Result<Self> {
        let mut ebpf = Ebpf::load(BENCH_OBJECT).context("load the benchmark programs")?;
        for name in [names::GENERATOR, names::SINK] {
            let prog: &mut Xdp = ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("program {name} missing from the object"))?
                .try_into()?;
            prog.load().with_context(|| format!("load {name}"))?;
        }
        let sink: &mut Xdp = ebpf.program_mut(names::SINK).expect("loaded above").try_into()?;
        in_netns(sink_ns, || {
            sink.attach(sink_if, XdpMode::Driver)
                .with_context(|| format!("attach {} to {sink_if}", names::SINK))
        })?;
        Ok(Self { ebpf, first_frame: [0; FRAME_LEN] })
    }

    /// Fills the template and destination maps, and checks one generated frame against the
    /// frame built here.
    fn configure(
        &mut self,
        family: Family,
        topo: &Topology,
        destinations: u32,
    ) -> anyhow::Result<()> {
        let gen_addr = family.links().1[0];
        let template = frame_template(gen_addr, topo.gen_mac, topo.rtr_in_mac);
        let dests: Vec<GenDest> =
            (0..destinations).map(|i| gen_dest(&template, family.destination(i))).collect();
        let mut table: Array<_, GenDest> = Array::try_from(self.map_mut(names::GEN_DESTS)?)?;
        for (i, d) in (0u32..).zip(&dests) {
            table.set(i, d, 0)?;
        }
        let mut config = GenConfig {
            frame: template,
            destinations: 1,
            family: family.code(),
            ..GenConfig::default()
        };
        let mut cfg: Array<_, GenConfig> = Array::try_from(self.map_mut(names::GEN_CONFIG)?)?;
        cfg.set(0, config, 0)?;
        self.first_frame = apply_dest(&template, family, &dests[0]);

        // One plain (not live) run with a single destination: the program must write exactly
        // the frame userspace expects.
        let mut out = [0u8; FRAME_LEN];
        let result = self.generator()?.test_run(TestRunOptions {
            data_in: Some(&[0u8; FRAME_LEN]),
            data_out: Some(&mut out),
            ..TestRunOptions::default()
        })?;
        ensure!(
            result.return_value == 3,
            "{} returned {} instead of XDP_TX",
            names::GENERATOR,
            result.return_value
        );
        ensure!(
            out == self.first_frame,
            "{} wrote\n  {}\ninstead of\n  {}",
            names::GENERATOR,
            hex(&out),
            hex(&self.first_frame)
        );

        config.destinations = destinations;
        let mut cfg: Array<_, GenConfig> = Array::try_from(self.map_mut(names::GEN_CONFIG)?)?;
        cfg.set(0, config, 0)?;
        Ok(())
    }

    fn map_mut(&mut self, name: &str) -> anyhow::Result<&mut Map> {
        self.ebpf.map_mut(name).ok_or_else(|| anyhow!("map {name} missing from the object"))
    }

    fn generator(&self) -> anyhow::Result<&Xdp> {
        let prog = self
            .ebpf
            .program(names::GENERATOR)
            .ok_or_else(|| anyhow!("no {}", names::GENERATOR))?;
        Ok(prog.try_into()?)
    }

    /// Frames the sink has counted, all CPUs together.
    fn sink_count(&self) -> anyhow::Result<u64> {
        let map =
            self.ebpf.map(names::SINK_COUNT).ok_or_else(|| anyhow!("no {}", names::SINK_COUNT))?;
        let counts: PerCpuArray<_, u64> = PerCpuArray::try_from(map)?;
        Ok(counts.get(&0, 0)?.iter().sum())
    }

    /// Sends `budget` frames from the gen namespace; returns the frames sent and the time taken.
    fn send(&self, topo: &Topology, budget: Budget) -> anyhow::Result<(u64, Duration)> {
        let prog = self.generator()?;
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex.
        // The kernel resolves ingress_ifindex in the caller's network namespace.
        let ctx: Vec<u8> = [0, FRAME_LEN as u32, 0, topo.gen_ifindex, 0, 0]
            .iter()
            .flat_map(|w| w.to_ne_bytes())
            .collect();
        let frame = self.first_frame;
        in_netns(&topo.source, || {
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
                    data_in: Some(&frame),
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

    /// Waits until the sink count stops moving (frames still queued in the chain) and returns it.
    fn settled_count(&self) -> anyhow::Result<u64> {
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
            let before = self.settled_count()?;
            let (sent, _) = self.send(topo, Budget::Frames(WARMUP_FRAMES))?;
            let received = self.settled_count()? - before;
            if received * 100 >= sent * 99 {
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

    /// Sends `budget` and counts what reaches the sink.
    fn measure(&self, topo: &Topology, budget: Budget) -> anyhow::Result<Measurement> {
        let before = self.settled_count()?;
        let (sent, elapsed) = self.send(topo, budget)?;
        let received = self.settled_count()? - before;
        let seconds = elapsed.as_secs_f64();
        Ok(Measurement {
            sent,
            received,
            seconds,
            mpps: per_second(received, seconds) / 1e6,
            offered_mpps: per_second(sent, seconds) / 1e6,
            xdp_forwarded: None,
            xdp_mode: None,
        })
    }
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
}

impl<'a> Daemon<'a> {
    fn start(exe: &Path, router: &'a NetNs, ifaces: &[&str]) -> anyhow::Result<Self> {
        let name = netns::unique_name("sluice-bench-");
        let pin_dir = PathBuf::from("/sys/fs/bpf").join(&name);
        let log = std::env::temp_dir().join(format!("{name}.log"));
        let out = File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let mut cmd = router
            .command(exe.to_str().ok_or_else(|| anyhow!("non-UTF-8 path {}", exe.display()))?);
        cmd.arg("--pin-dir").arg(&pin_dir).arg("daemon").arg("--attach").args(ifaces);
        cmd.stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out);
        die_with_parent(&mut cmd);
        let child = cmd.spawn().with_context(|| format!("spawn {cmd:?}"))?;
        let mut daemon = Self { child: Some(child), exe: exe.to_owned(), pin_dir, router, log };
        daemon.wait_ready(ifaces)?;
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

    fn wait_ready(&mut self, ifaces: &[&str]) -> anyhow::Result<()> {
        let deadline = Instant::now() + DAEMON_READY_TIMEOUT;
        loop {
            check_interrupted()?;
            if let Some(status) =
                self.child.as_mut().and_then(|c| c.try_wait().transpose()).transpose()?
            {
                bail!("sluice daemon exited ({status}) before it was ready:\n{}", self.log_tail());
            }
            let last = match self.stats() {
                Ok(stats) if ifaces.iter().all(|i| iface(&stats, i).is_some()) => return Ok(()),
                Ok(stats) => format!("stats: {stats}"),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() > deadline {
                bail!(
                    "sluice daemon not ready after {DAEMON_READY_TIMEOUT:?} (last: {last}):\n{}",
                    self.log_tail()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
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
        let _ = std::fs::remove_file(&self.log);
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

/// Times `ip route add` in the router namespace until the prefix is in the pinned route trie
/// (read directly, polled every [`MAP_POLL`]) and until it shows in `sluice routes --json`
/// (polled every [`ROUTE_POLL`]; each call has its own cost, reported beside).
fn route_add_latency(
    daemon: &Daemon<'_>,
    topo: &Topology,
    trials: u32,
) -> anyhow::Result<RouteLatency> {
    let gateway = topo.sink_gateway().to_string();
    let trie = RouteTrie::open(&daemon.pin_dir, topo.family)?;
    let (mut in_map, mut in_cli, mut ip_calls, mut calls) = (vec![], vec![], vec![], vec![]);
    for i in 0..trials {
        check_interrupted()?;
        let prefix = topo.family.probe_route(i);
        let start = Instant::now();
        topo.router.ip(&["route", "add", &prefix, "via", &gateway, "dev", &topo.rtr_out])?;
        ip_calls.push(start.elapsed());
        let outcome = await_route(daemon, &trie, &prefix, start, &mut calls);
        topo.router.ip(&["route", "del", &prefix])?;
        match outcome? {
            Ok((map, cli)) => {
                in_map.push(map);
                in_cli.push(cli);
            }
            Err(reason) => return Ok(RouteLatency::NotMeasured { reason }),
        }
    }
    Ok(RouteLatency::Measured {
        trials,
        dataplane: Percentiles::of(in_map),
        cli: Percentiles::of(in_cli),
        cli_call_median_ms: Percentiles::of(calls).median_ms,
        ip_call_median_ms: Percentiles::of(ip_calls).median_ms,
    })
}

/// Waits until `prefix` is in the trie, then until `sluice routes --json` shows it, and returns
/// both delays since `start`, or why one did not come within [`ROUTE_TIMEOUT`]. Records the
/// duration of every CLI call in `calls`.
fn await_route(
    daemon: &Daemon<'_>,
    trie: &RouteTrie,
    prefix: &str,
    start: Instant,
    calls: &mut Vec<Duration>,
) -> anyhow::Result<Result<(Duration, Duration), String>> {
    let net: ipnet::IpNet = prefix.parse()?;
    while !trie.contains(net)? {
        check_interrupted()?;
        if start.elapsed() > ROUTE_TIMEOUT {
            return Ok(Err(format!(
                "{prefix} did not reach the dataplane within {ROUTE_TIMEOUT:?}"
            )));
        }
        thread::sleep(MAP_POLL);
    }
    let in_map = start.elapsed();
    loop {
        check_interrupted()?;
        let call = Instant::now();
        let out = daemon.sluice(&["routes", "--json"]).output().context("spawn sluice routes")?;
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
            return Ok(Ok((in_map, start.elapsed())));
        }
        if start.elapsed() > ROUTE_TIMEOUT {
            return Ok(Err(format!(
                "{prefix} did not show in `sluice routes --json` within {ROUTE_TIMEOUT:?}"
            )));
        }
        thread::sleep(ROUTE_POLL.saturating_sub(call.elapsed()));
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

    /// Whether the trie holds exactly `net` (a lookup would answer for a covering prefix too).
    fn contains(&self, net: ipnet::IpNet) -> anyhow::Result<bool> {
        let len = u32::from(net.prefix_len());
        Ok(match (self, net) {
            (Self::V4(t), ipnet::IpNet::V4(n)) => {
                let want = n.network().octets();
                t.keys().any(|k| k.is_ok_and(|k| k.prefix_len() == len && k.data() == want))
            }
            (Self::V6(t), ipnet::IpNet::V6(n)) => {
                let want = n.network().octets();
                t.keys().any(|k| k.is_ok_and(|k| k.prefix_len() == len && k.data() == want))
            }
            _ => bail!("{net} is not of the trie's family"),
        })
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
    /// How long the generator ran.
    seconds: f64,
    /// `received / seconds`, in millions.
    mpps: f64,
    /// `sent / seconds`, in millions.
    offered_mpps: f64,
    /// For Sluice: frames the XDP program forwarded on `rtr_in` during the run.
    #[serde(skip_serializing_if = "Option::is_none")]
    xdp_forwarded: Option<u64>,
    /// For Sluice: the attach mode `sluice stats` reports for `rtr_in`.
    #[serde(skip_serializing_if = "Option::is_none")]
    xdp_mode: Option<String>,
}

impl Measurement {
    fn describe(&self) -> String {
        let mut s = format!(
            "{:6.2} Mpps  ({} of {} frames delivered in {:.3} s, offered {:.2} Mpps",
            self.mpps, self.received, self.sent, self.seconds, self.offered_mpps
        );
        if let Some(f) = self.xdp_forwarded {
            let _ = write!(s, ", {f} forwarded by XDP");
        }
        if let Some(m) = &self.xdp_mode {
            let _ = write!(s, ", {m} mode");
        }
        s + ")"
    }
}

/// The route-add latency, or why it was not measured.
#[derive(Debug, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
enum RouteLatency {
    Measured {
        trials: u32,
        /// Until the prefix is in the pinned route trie.
        dataplane: Percentiles,
        /// Until the prefix shows in `sluice routes --json`.
        cli: Percentiles,
        /// What one `sluice routes --json` call takes: the resolution of `cli`.
        cli_call_median_ms: f64,
        /// What `ip route add` itself takes (spawned, so it is part of both delays).
        ip_call_median_ms: f64,
    },
    NotMeasured {
        reason: String,
    },
}

/// Everything one run measured.
#[derive(Debug, Serialize)]
struct Report {
    family: &'static str,
    frame_len: usize,
    destinations: u32,
    routes: u32,
    cpus: usize,
    kernel: String,
    linux: Measurement,
    sluice: Measurement,
    /// `sluice.mpps / linux.mpps`.
    ratio: f64,
    route_add: RouteLatency,
}

impl Report {
    fn print(&self) {
        println!(
            "forwarding, {} {}-byte frames, {} destinations, {} routes, one veth chain, {} CPUs, Linux {}",
            self.family, self.frame_len, self.destinations, self.routes, self.cpus, self.kernel
        );
        println!("  linux   {:6.2} Mpps", self.linux.mpps);
        println!("  sluice  {:6.2} Mpps", self.sluice.mpps);
        println!("  ratio   {:6.2} (sluice / linux)", self.ratio);
        match &self.route_add {
            RouteLatency::Measured {
                trials,
                dataplane,
                cli,
                cli_call_median_ms,
                ip_call_median_ms,
            } => {
                println!(
                    "route add -> dataplane trie:  median {:.2} ms, p99 {:.2} ms ({trials} trials, from the start of `ip route add`, which takes {ip_call_median_ms:.1} ms)",
                    dataplane.median_ms, dataplane.p99_ms
                );
                println!(
                    "route add -> sluice routes:   median {:.1} ms, p99 {:.1} ms (one call takes {cli_call_median_ms:.1} ms)",
                    cli.median_ms, cli.p99_ms
                );
            }
            RouteLatency::NotMeasured { reason } => {
                println!("route add -> sluice routes: not measured: {reason}");
            }
        }
    }
}

/// The frame every destination shares: Ethernet, IPv4 or IPv6 (by `src`), UDP to the discard port
/// and a recognisable payload, with the destination address and the checksums zero.
fn frame_template(src: IpAddr, src_mac: [u8; 6], dst_mac: [u8; 6]) -> [u8; FRAME_LEN] {
    let mut f = [0u8; FRAME_LEN];
    f[0..6].copy_from_slice(&dst_mac);
    f[6..12].copy_from_slice(&src_mac);
    let udp = match src {
        IpAddr::V4(src) => {
            f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
            let total = (FRAME_LEN - 14) as u16;
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
            let payload = (FRAME_LEN - 14 - 40) as u16;
            f[14] = 0x60;
            f[18..20].copy_from_slice(&payload.to_be_bytes());
            f[20] = 17;
            f[21] = 64;
            f[22..38].copy_from_slice(&src.octets());
            14 + 40
        }
    };
    let udp_len = (FRAME_LEN - udp) as u16;
    f[udp..udp + 2].copy_from_slice(&UDP_PORT.to_be_bytes());
    f[udp + 2..udp + 4].copy_from_slice(&UDP_PORT.to_be_bytes());
    f[udp + 4..udp + 6].copy_from_slice(&udp_len.to_be_bytes());
    for (b, p) in f[udp + 8..].iter_mut().zip(b"sluice bench".iter().cycle()) {
        *b = *p;
    }
    f
}

/// The generator's entry for `dst`: the address and the checksums of the template carrying it.
fn gen_dest(template: &[u8; FRAME_LEN], dst: IpAddr) -> GenDest {
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
    let udp_len = ((FRAME_LEN - udp) as u32).to_be_bytes();
    // RFC 768 / RFC 8200 8.1: the pseudo-header (addresses, protocol, UDP length) and the
    // datagram. A computed 0 is sent as 0xffff.
    let sum = checksum(&[src, dst, &[0, 17], &udp_len, &f[udp..]]);
    d.udp_check = (if sum == 0 { 0xffff } else { sum }).to_be_bytes();
    d
}

/// The frame the generator writes for destination `d`: what `sluice_gen` does, in userspace.
fn apply_dest(template: &[u8; FRAME_LEN], family: Family, d: &GenDest) -> [u8; FRAME_LEN] {
    let mut f = *template;
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
fn ip_batch(ns: &NetNs, commands: &str) -> anyhow::Result<()> {
    let mut child = Command::new("ip")
        .args(["-n", ns.name(), "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawn ip -batch")?;
    child.stdin.take().expect("piped").write_all(commands.as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "ip -batch failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
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

    fn frame(family: Family, i: u32) -> [u8; FRAME_LEN] {
        let template = frame_template(family.links().1[0], MAC_A, MAC_B);
        apply_dest(&template, family, &gen_dest(&template, family.destination(i)))
    }

    #[test]
    fn ipv4_frames_carry_valid_checksums() {
        for i in [0, 1, 255, 3999, 65535] {
            let f = frame(Family::V4, i);
            assert_eq!(&f[0..6], &MAC_B, "destination MAC");
            assert_eq!(checksum(&[&f[14..34]]), 0, "IPv4 header checksum of destination {i}");
            assert_eq!(u16::from_be_bytes([f[16], f[17]]) as usize, FRAME_LEN - 14, "total length");
            let udp_len = ((FRAME_LEN - 34) as u32).to_be_bytes();
            assert_eq!(checksum(&[&f[26..34], &[0, 17], &udp_len, &f[34..]]), 0, "UDP checksum");
            assert_eq!(
                IpAddr::from(<[u8; 4]>::try_from(&f[30..34]).unwrap()),
                Family::V4.destination(i)
            );
        }
    }

    #[test]
    fn ipv6_frames_carry_valid_checksums() {
        for i in [0, 1, 255, 3999, 65535] {
            let f = frame(Family::V6, i);
            assert_eq!(
                u16::from_be_bytes([f[18], f[19]]) as usize,
                FRAME_LEN - 54,
                "payload length"
            );
            let udp_len = ((FRAME_LEN - 54) as u32).to_be_bytes();
            assert_eq!(checksum(&[&f[22..54], &[0, 17], &udp_len, &f[54..]]), 0, "UDP checksum");
            assert_eq!(
                IpAddr::from(<[u8; 16]>::try_from(&f[38..54]).unwrap()),
                Family::V6.destination(i)
            );
        }
    }

    #[test]
    fn destination_routes_cover_their_blocks() {
        assert_eq!(Family::V4.destination(4000), "10.200.15.160".parse::<IpAddr>().unwrap());
        assert_eq!(Family::V4.destination_route(15), "10.200.15.0/24");
        assert_eq!(Family::V6.destination(4000), "fd00:200::fa0".parse::<IpAddr>().unwrap());
        assert_eq!(Family::V6.destination_route(15), "fd00:200::f00/120");
        assert_eq!(Family::V6.probe_route(17), "fd00:251:11::/64");
        assert_eq!(Family::V6.probe_route(0), "fd00:251::/64");
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
    fn macs_round_trip() {
        assert_eq!(parse_mac("02:00:0a:ff:00:01"), Some([2, 0, 10, 255, 0, 1]));
        assert_eq!(format_mac([2, 0, 10, 255, 0, 1]), "02:00:0a:ff:00:01");
        assert_eq!(parse_mac("02:00:0a:ff:00"), None);
    }
}
