//! The veth chain gen -> router -> sink in three namespaces, its address plan, where its stages
//! run (CPUs, threaded NAPI), and the router's kernel state: forwarding, neighbours, routes.

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    process::Command,
    thread,
};

use anyhow::{Context as _, anyhow, ensure};
use serde_json::Value;
use sluice_common::{FAMILY_V4, FAMILY_V6};

use super::interrupt::check_interrupted;
use crate::{
    netns::{self, NetNs},
    table::{self, Family, NextHops, RTPROT_BGP, RouteOp, Table},
};

/// First ifindex of the router's veths, offset by the process id so that parallel runs differ:
/// far above what any namespace numbers its own devices, so that the flush counter, which sees
/// every namespace's flushes, can tell this router's apart.
const IFINDEX_BASE: u32 = 1_000_000;

// The benchmark's address plan; `Family` itself belongs to the table generator.
impl Family {
    pub(super) fn code(self) -> u8 {
        match self {
            Self::V4 => FAMILY_V4,
            Self::V6 => FAMILY_V6,
        }
    }

    pub(super) fn ip_flag(self) -> &'static str {
        match self {
            Self::V4 => "-4",
            Self::V6 => "-6",
        }
    }

    /// Link prefix length and the addresses of gen, `rtr_in`, `rtr_out` and sink.
    pub(super) fn links(self) -> (u8, [IpAddr; 4]) {
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
    pub(super) fn gateway(self, i: u8) -> IpAddr {
        match self {
            Self::V4 => Ipv4Addr::new(10, 10, 2, 2 + i).into(),
            Self::V6 => Ipv6Addr::new(0xfd00, 0x10, 2, 0, 0, 0, 0, 2 + u16::from(i)).into(),
        }
    }

    /// A prefix outside every table route, added in latency trial `i`.
    pub(super) fn probe_route(self, i: u32) -> String {
        match self {
            Self::V4 => format!("10.251.{i}.0/24"),
            Self::V6 => format!("{}/64", Ipv6Addr::new(0xfd00, 0x251, i as u16, 0, 0, 0, 0, 0)),
        }
    }
}

/// Three namespaces chained by two veth pairs, IPv4 and IPv6 on every link, deleted (with their
/// veths and routes) on drop.
#[derive(Debug)]
pub(super) struct Topology {
    pub(super) source: NetNs,
    pub(super) router: NetNs,
    pub(super) sink: NetNs,
    pub(super) rtr_in: String,
    pub(super) rtr_out: String,
    pub(super) sink_if: String,
    pub(super) gen_ifindex: u32,
    pub(super) rtr_in_ifindex: u32,
    pub(super) rtr_out_ifindex: u32,
    pub(super) gen_mac: [u8; 6],
    pub(super) rtr_in_mac: [u8; 6],
    pub(super) rtr_out_mac: [u8; 6],
    pub(super) sink_mac: [u8; 6],
    /// Next hops of the full tables; one more, the probe gateway, carries the latency probes.
    pub(super) next_hops: u8,
    /// Where the chain's stages run.
    pub(super) cpus: CpuPlan,
}

/// Where the stages of the chain run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CpuPlan {
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
    pub(super) fn describe(self) -> String {
        match self {
            Self::Shared => "chain on one CPU (generator, router and sink share it)".to_owned(),
            Self::Split { router, other } => {
                format!("router and sink on CPU {router}, generator alone on CPU {other}")
            }
        }
    }
}

impl Topology {
    pub(super) fn build(next_hops: u8) -> anyhow::Result<Self> {
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
    pub(super) fn split_cpus(&self) -> anyhow::Result<CpuPlan> {
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
    pub(super) fn pin_napi(&self, plan: CpuPlan) -> anyhow::Result<()> {
        let CpuPlan::Split { router, .. } = plan else { return Ok(()) };
        let dev = &self.rtr_in;
        let threads = napi_threads(dev)?;
        ensure!(!threads.is_empty(), "no NAPI thread for {dev}");
        for pid in threads {
            pin_to(pid, router).with_context(|| format!("pin the NAPI thread of {dev}"))?;
        }
        Ok(())
    }

    /// Kernel forwarding in the router, both families.
    pub(super) fn set_forwarding(&self, on: bool) -> anyhow::Result<()> {
        let value = if on { "1" } else { "0" };
        self.router.sysctl("net.ipv4.ip_forward", value)?;
        self.router.sysctl("net.ipv6.conf.all.forwarding", value)
    }

    /// Adds or deletes a table's routes in the router's kernel.
    pub(super) fn write_table(&self, op: RouteOp, table: &Table) -> anyhow::Result<()> {
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
pub(super) fn pin_to(pid: nix::unistd::Pid, cpu: usize) -> anyhow::Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu)?;
    nix::sched::sched_setaffinity(pid, &set).with_context(|| format!("pin {pid} to CPU {cpu}"))
}

/// Runs `f` on a thread that has entered `ns` (network namespaces are per thread).
pub(super) fn in_netns<T: Send>(
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn macs_round_trip() {
        assert_eq!(parse_mac("02:00:0a:ff:00:01"), Some([2, 0, 10, 255, 0, 1]));
        assert_eq!(format_mac([2, 0, 10, 255, 0, 1]), "02:00:0a:ff:00:01");
        assert_eq!(parse_mac("02:00:0a:ff:00"), None);
    }
}
