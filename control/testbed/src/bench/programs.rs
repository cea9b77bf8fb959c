//! The benchmark's XDP programs (generator, sink, the two ceilings, the `bpf_fib_lookup`
//! forwarder) and the devmap flush counter: loading and configuring them, sending the
//! generator's frames and counting what reaches the sink.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail, ensure};
use aya::{
    Ebpf,
    maps::{Array, Map, PerCpuArray, xdp::DevMapHash},
    programs::{TestRun as _, TestRunAttrs, TestRunOptions, TracePoint, Xdp, XdpMode},
};
use sluice::plugins::hex;
use sluice_common::bench::{
    CeilingConfig, FIB_RESULT_SLOTS, FIB_SLOT_NO_DEVMAP, FIB_SLOT_NOT_FORWARDABLE,
    FIB_SLOT_OTHER_RESULT, FLUSH_SLOT_GENERATOR, FLUSH_SLOT_ROUTER, FlushConfig, FlushStats,
    GEN_PATTERN, GEN_SIZES, GenConfig, GenDest, SinkCount, TEMPLATE_LEN, flush_record, names,
};

use super::{
    args::FrameSize,
    frames,
    interrupt::check_interrupted,
    measurement::{FlushDelta, Measurement, gbps, per_second},
    topology::{CpuPlan, Topology, in_netns, pin_to},
};
use crate::{netns, table::Family};

/// The benchmark's programs, built from `dataplane-ebpf/src/bench.rs` with the forwarding program
/// (see `build.rs`).
static BENCH_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("SLUICE_BENCH_XDP"));

/// Frames per live-frames batch: the NAPI weight, as a driver would deliver them.
const GEN_BATCH: u32 = 64;
/// Frames per `BPF_PROG_TEST_RUN` call; the syscall is cheap next to them.
const GEN_CHUNK: u64 = 1 << 20;
/// Frames of each warm-up round, sent until the sink sees nearly all of them.
const WARMUP_FRAMES: u64 = 100_000;
/// How long the forwarder under test may take to start delivering.
const WARMUP_TIMEOUT: Duration = Duration::from_secs(15);

/// How much each measurement sends.
#[derive(Clone, Copy, Debug)]
pub(super) enum Budget {
    Frames(u64),
    Time(Duration),
}

impl Budget {
    pub(super) fn describe(self) -> String {
        match self {
            Self::Frames(n) => format!("{n} frames per measurement"),
            Self::Time(d) => format!("{:.1} s per measurement", d.as_secs_f64()),
        }
    }
}

/// The benchmark's programs, loaded; the sink attached to the sink's veth, the flush counter to
/// its tracepoint (when it can be).
#[derive(Debug)]
pub(super) struct BenchPrograms {
    ebpf: Ebpf,
    /// The sizes of the frames the generator sends.
    pub(super) frame_size: FrameSize,
    /// The longest frame, to destination 0, given to the test run as its initial packet: the
    /// generator trims it to each step's size.
    first_frame: Vec<u8>,
    /// One frame of the first size per destination, as the generator sends them: what the
    /// per-step program times run on.
    pub(super) step_frames: Vec<Vec<u8>>,
    /// Whether devmap flushes are counted, or why not.
    pub(super) flush_counter: Result<(), String>,
}

impl BenchPrograms {
    pub(super) fn load(topo: &Topology, frame_size: FrameSize) -> anyhow::Result<Self> {
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
        Ok(Self {
            ebpf,
            frame_size,
            first_frame: Vec::new(),
            step_frames: Vec::new(),
            flush_counter,
        })
    }

    /// Fills the templates and the destination map for `family`, and checks the frame generated
    /// for each size against the frame built here.
    pub(super) fn configure(
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
        let mut step_frames = Vec::new();
        let mut table: Array<_, GenDest> = Array::try_from(self.map_mut(names::GEN_DESTS)?)?;
        for (slot, &len) in lens.iter().enumerate() {
            let to = |dst| frames::frame(gen_addr, dst, topo.gen_mac, topo.rtr_in_mac, len.into());
            let first = to(destinations[0]);
            config.frames[slot].copy_from_slice(&frames::template(&first, family)[..TEMPLATE_LEN]);
            config.lens[slot] = len;
            for (i, &d) in destinations.iter().enumerate() {
                let dest = frames::gen_dest(&to(d), family);
                table.set((i * lens.len() + slot) as u32, dest, 0)?;
            }
            if slot == 0 {
                step_frames = destinations.iter().map(|&d| to(d)).collect();
            }
            expected.push(first);
        }
        self.step_frames = step_frames;
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

    pub(super) fn map(&self, name: &str) -> anyhow::Result<&Map> {
        self.ebpf.map(name).ok_or_else(|| anyhow!("map {name} missing from the object"))
    }

    pub(super) fn program(&self, name: &str) -> anyhow::Result<&Xdp> {
        let prog = self.ebpf.program(name).ok_or_else(|| anyhow!("no program {name}"))?;
        Ok(prog.try_into()?)
    }

    /// Runs `f` with the XDP program `name` attached to the router's ingress, and detaches it.
    pub(super) fn with_attached<T>(
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
    pub(super) fn fib_results(&self) -> anyhow::Result<BTreeMap<String, u64>> {
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
    pub(super) fn send(&self, topo: &Topology, budget: Budget) -> anyhow::Result<(u64, Duration)> {
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
    pub(super) fn settled_count(&self) -> anyhow::Result<(u64, u64)> {
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
    pub(super) fn warm_up(
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
    pub(super) fn measure(
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
