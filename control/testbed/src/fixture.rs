//! The fixture of the packet tests: a fresh network namespace with a few devices, the XDP program
//! loaded (unpinned) with its maps filled for a small fixed topology, and a runner that feeds
//! table rows through `BPF_PROG_TEST_RUN` and checks verdict, output frame, counters and
//! neighbour requests.
//!
//! Topology (ifindexes are fixed: the namespace is new, so they are free). The devices are veth
//! pairs (peers `in0p`, `out1p`, ... at ifindex + 100); the VLAN interfaces are only IFACES keys
//! and logical ifindexes, since the test kernel has no 802.1Q module and the program never needs
//! the VLAN devices themselves.
//!
//! | device     | ifindex | slot | role                                      |
//! |------------|---------|------|-------------------------------------------|
//! | `lo`       | 1       | 0    | not served: "unknown interface"           |
//! | `in0`      | 10      | 1    | ingress, untagged                         |
//! | `in0.100`  | (100)   | 2    | ingress, VLAN 100 on `in0`                |
//! | `out1`     | 11      | 3    | egress                                    |
//! | `out2`     | 12      | 4    | egress                                    |
//! | `out3`     | 13      | 5    | egress                                    |
//! | `out4`     | 14      | 6    | egress                                    |
//! | `out1.200` | (200)   | 7    | egress, VLAN 200 on `out1`                |

use std::{fs::File, process::Command};

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, RingBuf},
    programs::{ProgramError, TestRun as _, TestRunOptions, Xdp},
};
use ipnet::{Ipv4Net, Ipv6Net};
use sluice_common::{
    EcmpGroup, FAMILY_V4, FAMILY_V6, IF_F_UP, Iface, IfaceKey, MAX_ECMP_MEMBERS, MAX_SLOTS,
    NH_F_RESOLVED, NH_F_VLAN, NeighRequest, NextHop, Reason, Route, RouteAction, XdpAttachMode,
    names,
};
use sluice_core::fib::Op;
use sluice_dataplane::Maps;

use crate::{
    frame::{Frame, Mac, diff, hex, ip6},
    netns::{NetNs, unique_name},
};

pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

pub fn verdict_name(v: u32) -> String {
    match v {
        XDP_ABORTED => "XDP_ABORTED".into(),
        XDP_DROP => "XDP_DROP".into(),
        XDP_PASS => "XDP_PASS".into(),
        XDP_TX => "XDP_TX".into(),
        XDP_REDIRECT => "XDP_REDIRECT".into(),
        other => format!("verdict {other}"),
    }
}

/// The router's MAC on `in0` and `in0.100` (a VLAN device shares its parent's address).
pub const ROUTER_MAC: Mac = [0x02, 0, 0, 0, 0, 0x0a];
/// A host on `in0` that sends through the router.
pub const HOST_MAC: Mac = [0x02, 0, 0, 0, 0xaa, 0x01];
/// Some other host's unicast address.
pub const OTHER_MAC: Mac = [0x02, 0, 0, 0, 0xbb, 0x01];
pub const BROADCAST_MAC: Mac = [0xff; 6];

/// A device and the counter slot a frame arriving on it (with its tag, if any) is counted in.
#[derive(Clone, Copy, Debug)]
pub struct Port {
    pub ifindex: u32,
    pub slot: u32,
}

/// Untagged frames on `in0`.
pub const IN0: Port = Port { ifindex: 10, slot: 1 };
/// Frames tagged with VLAN 100 on `in0`.
pub const IN0_V100: Port = Port { ifindex: 10, slot: 2 };
/// `lo`: a device the program does not serve.
pub const UNKNOWN: Port = Port { ifindex: 1, slot: 0 };
pub const VLAN_IN: u16 = 100;
pub const VLAN_OUT: u16 = 200;

/// Next-hop ids.
pub mod nh {
    pub const OUT1: u32 = 1;
    pub const OUT2: u32 = 2;
    pub const OUT3: u32 = 3;
    pub const OUT4: u32 = 4;
    /// `out1.200`: tagged with VLAN 200, priority 5.
    pub const VLAN200: u32 = 5;
    /// On `out2`, neighbour 10.4.0.1 not resolved.
    pub const UNRESOLVED_V4: u32 = 6;
    /// On `out3`, MTU 576.
    pub const SMALL_MTU: u32 = 7;
    /// Egress ifindex 0.
    pub const NO_EGRESS: u32 = 8;
    /// Egress ifindex 99, not in the DEVMAP.
    pub const NOT_IN_DEVMAP: u32 = 9;
    /// On `out2`, neighbour `2001:db8:4::1` not resolved.
    pub const UNRESOLVED_V6: u32 = 10;
}

/// ECMP group ids.
pub mod group {
    /// `OUT1`, `OUT2`, `OUT3`.
    pub const THREE: u32 = 1;
    /// A group with no members.
    pub const EMPTY: u32 = 2;
}

pub const SMALL_MTU: u32 = 576;
/// The TCI the `VLAN200` next hop writes: priority 5, VLAN 200.
pub const TCI_OUT: u16 = 5 << 13 | VLAN_OUT;

/// MAC of egress device `ifindex` (11..=14): `02:00:00:00:00:IF`.
pub const fn dev_mac(ifindex: u32) -> Mac {
    [0x02, 0, 0, 0, 0, ifindex as u8]
}

/// MAC of the neighbour behind egress device `ifindex`: `02:00:00:00:IF:01`.
pub const fn neigh_mac(ifindex: u32) -> Mac {
    [0x02, 0, 0, 0, ifindex as u8, 0x01]
}

fn gateway_v4(a: [u8; 4]) -> [u8; 16] {
    let mut g = [0; 16];
    g[..4].copy_from_slice(&a);
    g
}

/// The next hops the lab installs, by id.
pub fn nexthop(id: u32) -> NextHop {
    let resolved = |ifindex: u32, slot: u32| NextHop {
        ifindex,
        mtu: 1500,
        flags: NH_F_RESOLVED,
        egress_slot: slot,
        smac: dev_mac(ifindex),
        dmac: neigh_mac(ifindex),
        family: FAMILY_V4,
        gateway: gateway_v4([10, 0, ifindex as u8, 1]),
        logical_ifindex: ifindex,
        ..NextHop::default()
    };
    match id {
        nh::OUT1 => resolved(11, 3),
        nh::OUT2 => resolved(12, 4),
        nh::OUT3 => resolved(13, 5),
        nh::OUT4 => resolved(14, 6),
        nh::VLAN200 => NextHop {
            flags: NH_F_RESOLVED | NH_F_VLAN,
            vlan_tci: TCI_OUT,
            egress_slot: 7,
            dmac: [0x02, 0, 0, 0, 0xc8, 0x01],
            logical_ifindex: 200,
            ..resolved(11, 7)
        },
        nh::UNRESOLVED_V4 => NextHop {
            flags: 0,
            dmac: [0; 6],
            gateway: gateway_v4([10, 4, 0, 1]),
            ..resolved(12, 4)
        },
        nh::SMALL_MTU => NextHop { mtu: SMALL_MTU, ..resolved(13, 5) },
        nh::NO_EGRESS => NextHop { ifindex: 0, ..resolved(11, 3) },
        nh::NOT_IN_DEVMAP => NextHop { ifindex: 99, ..resolved(11, 3) },
        nh::UNRESOLVED_V6 => NextHop {
            flags: 0,
            dmac: [0; 6],
            family: FAMILY_V6,
            gateway: ip6("2001:db8:4::1"),
            ..resolved(12, 4)
        },
        _ => panic!("no next hop {id}"),
    }
}

const NEXTHOP_IDS: [u32; 10] = [
    nh::OUT1,
    nh::OUT2,
    nh::OUT3,
    nh::OUT4,
    nh::VLAN200,
    nh::UNRESOLVED_V4,
    nh::SMALL_MTU,
    nh::NO_EGRESS,
    nh::NOT_IN_DEVMAP,
    nh::UNRESOLVED_V6,
];

/// The members of ECMP group [`group::THREE`].
pub const ECMP_MEMBERS: [u32; 3] = [nh::OUT1, nh::OUT2, nh::OUT3];

pub fn ecmp_group(id: u32) -> EcmpGroup {
    let mut g = EcmpGroup::default();
    if id == group::THREE {
        g.count = ECMP_MEMBERS.len() as u32;
        g.members[..ECMP_MEMBERS.len()].copy_from_slice(&ECMP_MEMBERS);
    }
    assert!(g.count as usize <= MAX_ECMP_MEMBERS);
    g
}

pub const fn route(action: RouteAction, target: u32) -> Route {
    Route { action: action as u32, target }
}

/// The IPv4 routes every lab has (no default route: tests that want one add it).
pub fn base_routes_v4() -> Vec<([u8; 4], u32, Route)> {
    use RouteAction::{Blackhole, Connected, Ecmp, Forward, Local, Pass, Unreachable};
    vec![
        ([10, 1, 0, 0], 16, route(Forward, nh::OUT1)),
        ([10, 1, 2, 0], 24, route(Forward, nh::OUT2)),
        ([10, 1, 2, 7], 32, route(Forward, nh::OUT3)),
        ([10, 2, 0, 0], 16, route(Ecmp, group::THREE)),
        ([10, 3, 0, 0], 24, route(Forward, nh::VLAN200)),
        ([10, 4, 0, 0], 24, route(Forward, nh::UNRESOLVED_V4)),
        ([10, 5, 0, 0], 24, route(Connected, 12)),
        ([10, 6, 0, 1], 32, route(Local, 0)),
        ([10, 7, 0, 0], 24, route(Blackhole, 0)),
        ([10, 8, 0, 0], 24, route(Unreachable, 0)),
        ([10, 9, 0, 0], 24, route(Forward, nh::SMALL_MTU)),
        ([10, 10, 0, 0], 24, route(Forward, nh::NO_EGRESS)),
        ([10, 11, 0, 0], 24, route(Forward, nh::NOT_IN_DEVMAP)),
        ([10, 12, 0, 0], 24, route(Pass, 0)),
        ([10, 13, 0, 0], 24, route(Ecmp, group::EMPTY)),
    ]
}

/// The IPv6 routes every lab has, under `2001:db8::/32`, numbered like the IPv4 ones.
pub fn base_routes_v6() -> Vec<([u8; 16], u32, Route)> {
    use RouteAction::{Blackhole, Connected, Ecmp, Forward, Local, Unreachable};
    vec![
        (ip6("2001:db8:1::"), 48, route(Forward, nh::OUT1)),
        (ip6("2001:db8:1:2::"), 64, route(Forward, nh::OUT2)),
        (ip6("2001:db8:2::"), 48, route(Ecmp, group::THREE)),
        (ip6("2001:db8:3::"), 48, route(Forward, nh::VLAN200)),
        (ip6("2001:db8:4::"), 48, route(Forward, nh::UNRESOLVED_V6)),
        (ip6("2001:db8:5::"), 64, route(Connected, 12)),
        (ip6("2001:db8:6::1"), 128, route(Local, 0)),
        (ip6("2001:db8:7::"), 48, route(Blackhole, 0)),
        (ip6("2001:db8:8::"), 48, route(Unreachable, 0)),
        (ip6("2001:db8:9::"), 48, route(Forward, nh::SMALL_MTU)),
    ]
}

/// One row of a table.
#[derive(Debug)]
pub struct Case {
    pub name: String,
    pub ingress: u32,
    pub input: Vec<u8>,
    pub verdict: u32,
    /// The exact frame expected back from the kernel.
    pub output: Vec<u8>,
    /// Counters expected to grow by one packet and `input.len()` bytes (`transmitted` bytes for
    /// the transmitted counter, when set); all others must not move.
    pub counters: Vec<(u32, Reason)>,
    /// Bytes the transmitted counter counts, when not the input's length: a frame cut to its
    /// IP length counts what is sent.
    pub transmitted: Option<u64>,
    /// Neighbour requests expected in `NEIGH_REQUESTS`, in order; none other may appear.
    pub neigh: Vec<NeighRequest>,
}

impl Case {
    /// A frame the router forwards: `XDP_REDIRECT`, counted forwarded on the ingress slot and
    /// transmitted on the next hop's slot.
    pub fn forward(name: impl Into<String>, port: Port, input: &Frame, output: &Frame) -> Self {
        Self::forward_bytes(name, port, input.bytes(), output.bytes(), egress_slot_of(output))
    }

    pub fn forward_bytes(
        name: impl Into<String>,
        port: Port,
        input: Vec<u8>,
        output: Vec<u8>,
        egress_slot: u32,
    ) -> Self {
        Self {
            name: name.into(),
            ingress: port.ifindex,
            input,
            verdict: XDP_REDIRECT,
            output,
            counters: vec![(port.slot, Reason::Forwarded), (egress_slot, Reason::Transmitted)],
            neigh: Vec::new(),
            transmitted: None,
        }
    }

    /// A frame handed to the kernel unchanged.
    pub fn pass(
        name: impl Into<String>,
        port: Port,
        input: impl Into<Vec<u8>>,
        reason: Reason,
    ) -> Self {
        Self::unchanged(name, port, input.into(), XDP_PASS, reason)
    }

    /// A frame dropped unchanged.
    pub fn drop(
        name: impl Into<String>,
        port: Port,
        input: impl Into<Vec<u8>>,
        reason: Reason,
    ) -> Self {
        Self::unchanged(name, port, input.into(), XDP_DROP, reason)
    }

    fn unchanged(
        name: impl Into<String>,
        port: Port,
        input: Vec<u8>,
        verdict: u32,
        reason: Reason,
    ) -> Self {
        Self {
            name: name.into(),
            ingress: port.ifindex,
            output: input.clone(),
            input,
            verdict,
            counters: vec![(port.slot, reason)],
            neigh: Vec::new(),
            transmitted: None,
        }
    }

    /// The transmitted counter counts `bytes`.
    #[must_use]
    pub const fn transmitting(mut self, bytes: u64) -> Self {
        self.transmitted = Some(bytes);
        self
    }

    /// Expects this neighbour request too.
    #[must_use]
    pub fn with_neigh(mut self, ifindex: u32, family: u8, addr: &[u8]) -> Self {
        let mut request = NeighRequest { ifindex, family, ..NeighRequest::default() };
        request.addr[..addr.len()].copy_from_slice(addr);
        self.neigh.push(request);
        self
    }
}

/// The egress slot of a routed frame, found from its source MAC (the egress device's).
fn egress_slot_of(output: &Frame) -> u32 {
    NEXTHOP_IDS
        .iter()
        .map(|&id| nexthop(id))
        .find(|n| n.is_resolved() && n.smac == output.src && n.dmac == output.dst)
        .map(|n| n.egress_slot)
        .expect("the expected frame's MACs match no resolved next hop")
}

/// The expected frame when `input` is routed through next hop `id`.
pub fn routed(input: &Frame, id: u32) -> Frame {
    let n = nexthop(id);
    let tci = (n.flags & NH_F_VLAN != 0).then_some(n.vlan_tci);
    input.routed(n.dmac, n.smac, tci)
}

const ETH_HLEN: usize = 14;

/// How a frame is laid out in `data_in` (see [`Lab::run`]).
#[derive(Clone, Copy, Debug)]
enum Layout {
    /// The frame, all of it linear.
    Whole,
    /// A short frame as the linear part, zeros after it in a fragment.
    Fragment,
    /// Zeros as XDP metadata, then a short frame.
    Metadata,
}

/// What one `BPF_PROG_TEST_RUN` returned.
#[derive(Debug)]
pub struct Run {
    pub verdict: u32,
    pub output: Vec<u8>,
}

/// The loaded program, its maps and the namespace they live in.
pub struct Lab {
    ebpf: Ebpf,
    /// The maps, written through the control plane's writer.
    pub maps: Maps,
    neigh: RingBuf<MapData>,
    /// The totals seen after the last run, so each run reads the counters once.
    snapshot: Vec<(u64, u64)>,
    /// The namespace this thread was in before, restored on drop.
    home: File,
    ns: NetNs,
}

impl std::fmt::Debug for Lab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lab").field("ns", &self.ns).finish_non_exhaustive()
    }
}

/// What the tests need from the machine: the capabilities to make namespaces, load XDP programs
/// and fill DEVMAPs, a kernel whose `BPF_PROG_TEST_RUN` takes an `xdp_md` with an ingress ifindex
/// (5.15, commit 47316f4a3053 "bpf: Support input `xdp_md` context in `BPF_PROG_TEST_RUN`"), and
/// iproute2.
fn missing_requirement() -> Option<String> {
    const CAP_NET_ADMIN: u32 = 12;
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_BPF: u32 = 39;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let caps = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    for (bit, name) in
        [(CAP_NET_ADMIN, "CAP_NET_ADMIN"), (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"), (CAP_BPF, "CAP_BPF")]
    {
        if caps & (1 << bit) == 0 {
            return Some(format!("{name} is missing (run the packet tests as root)"));
        }
    }
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release.trim().split(['.', '-']).map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if (major, minor) < (5, 15) {
        return Some(format!(
            "kernel {} is older than 5.15: BPF_PROG_TEST_RUN cannot take an XDP ingress ifindex",
            release.trim()
        ));
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Some("iproute2 (`ip`) is not installed".into());
    }
    None
}

impl Lab {
    /// The lab, or `None` (after a notice) when the machine cannot run these tests outside CI.
    /// Under CI (`CI=true`) a missing requirement fails the test instead.
    pub fn new(test: &str) -> Option<Self> {
        if let Some(why) = missing_requirement() {
            crate::cannot_run(&format!("{test} (XDP packet test)"), &why);
            return None;
        }
        Some(Self::build())
    }

    fn build() -> Self {
        let ns = NetNs::create(&unique_name("pt")).expect("create the test network namespace");
        // The kernel here has neither CONFIG_DUMMY nor CONFIG_VLAN_8021Q: veth pairs serve as
        // devices (down: test runs and DEVMAP entries need them to exist, not to be up), and
        // the VLAN interfaces exist only as IFACES keys and logical ifindexes.
        for (name, ifindex) in [("in0", 10), ("out1", 11), ("out2", 12), ("out3", 13), ("out4", 14)]
        {
            let cmd = format!(
                "link add {name} index {ifindex} address 02:00:00:00:00:{ifindex:02x} type veth \
                 peer name {name}p index {}",
                ifindex + 100
            );
            ns.ip(&cmd.split(' ').collect::<Vec<_>>())
                .unwrap_or_else(|e| panic!("create veth {name}: {e:#}"));
        }
        let home = File::open("/proc/thread-self/ns/net").expect("open this thread's netns");
        // DEVMAP entries and the ctx_in ingress ifindex are resolved in the caller's namespace.
        ns.enter().expect("enter the test network namespace");

        let mut ebpf =
            EbpfLoader::new().load(sluice_dataplane::EBPF_OBJECT).expect("load the eBPF object");
        let program: &mut Xdp = ebpf
            .program_mut(names::PROGRAM)
            .expect("program sluice_xdp")
            .try_into()
            .expect("sluice_xdp is an XDP program");
        program.load().expect("the verifier accepts sluice_xdp");

        // Everything is written through the control plane's own writer, as the daemon does.
        let mut maps = Maps::take(&mut ebpf).expect("take the maps");
        let mut write = |op: Op| maps.write(&op).unwrap_or_else(|e| panic!("{op:?}: {e}"));
        let iface = |slot: u32, logical: u32, mac: Mac, name: &str| {
            let mut n = [0u8; 16];
            n[..name.len()].copy_from_slice(name.as_bytes());
            Iface {
                slot,
                flags: IF_F_UP,
                mtu: 1500,
                xdp_mode: XdpAttachMode::Native as u32,
                logical_ifindex: logical,
                mac,
                _pad: [0; 2],
                name: n,
            }
        };
        let key = |ifindex: u32, vlan_id: u16| IfaceKey { ifindex, vlan_id, _pad: 0 };
        for (k, v) in [
            (key(10, 0), iface(1, 10, ROUTER_MAC, "in0")),
            (key(10, VLAN_IN), iface(2, 100, ROUTER_MAC, "in0.100")),
            (key(11, 0), iface(3, 11, dev_mac(11), "out1")),
            (key(12, 0), iface(4, 12, dev_mac(12), "out2")),
            (key(13, 0), iface(5, 13, dev_mac(13), "out3")),
            (key(14, 0), iface(6, 14, dev_mac(14), "out4")),
            (key(11, VLAN_OUT), iface(7, 200, dev_mac(11), "out1.200")),
        ] {
            write(Op::SetIface(k, Box::new(v)));
        }
        for ifindex in 11..=14 {
            write(Op::AddDevice(ifindex));
        }
        for id in NEXTHOP_IDS {
            write(Op::SetNextHop(id, Box::new(nexthop(id))));
        }
        for id in [group::THREE, group::EMPTY] {
            write(Op::SetGroup(id, Box::new(ecmp_group(id))));
        }
        for (prefix, len, r) in base_routes_v4() {
            write(Op::SetRouteV4(Ipv4Net::new(prefix.into(), len as u8).expect("prefix"), r));
        }
        for (prefix, len, r) in base_routes_v6() {
            write(Op::SetRouteV6(Ipv6Net::new(prefix.into(), len as u8).expect("prefix"), r));
        }
        let neigh = RingBuf::try_from(
            ebpf.take_map(names::NEIGH_REQUESTS).expect("map NEIGH_REQUESTS is in the object"),
        )
        .expect("NEIGH_REQUESTS");

        let mut lab = Self { ebpf, maps, neigh, snapshot: Vec::new(), home, ns };
        lab.snapshot = lab.read_counters();
        lab
    }

    /// The loaded object, for the maps a test writes itself (the hook tables).
    #[allow(dead_code, reason = "used by some of the test crates that include this file")]
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// Runs one frame through the program, arriving on device `ingress`.
    pub fn run(&self, ingress: u32, frame: &[u8]) -> Run {
        if frame.len() >= ETH_HLEN {
            return self.test_run(ingress, frame, Layout::Whole).unwrap_or_else(|e| {
                panic!("BPF_PROG_TEST_RUN on ifindex {ingress} with\n{}\n: {e:?}", hex(frame))
            });
        }
        // The kernel takes no packet shorter than an Ethernet header (EINVAL), but the program
        // can still be shown fewer bytes. Since fe9544ed1a2e ("bpf: Support specifying linear
        // xdp packet data size for BPF_PROG_TEST_RUN", in the 6.18 kernel these tests were
        // written on) `xdp_md.data_end` may end the linear part early, the rest of data_in
        // becoming a fragment that a program without BPF_F_XDP_HAS_FRAGS never sees. Older
        // kernels insist on data_end == data_size_in but count XDP metadata in front of the
        // packet towards the 14 bytes.
        self.test_run(ingress, frame, Layout::Fragment)
            .or_else(|_| self.test_run(ingress, frame, Layout::Metadata))
            .unwrap_or_else(|e| {
                panic!(
                    "BPF_PROG_TEST_RUN refuses a {}-byte packet both as a short linear part and \
                     behind metadata: {e:?}",
                    frame.len()
                )
            })
    }

    fn test_run(&self, ingress: u32, frame: &[u8], layout: Layout) -> Result<Run, ProgramError> {
        Self::test_run_on(&self.ebpf, ingress, frame, layout)
    }

    /// Runs `frame` through the program again and again while `writer` changes the maps on
    /// another thread (until it returns), and returns the verdict and output of every run.
    pub fn run_while(
        &mut self,
        ingress: u32,
        frame: &[u8],
        writer: impl FnOnce(&mut Maps) + Send,
    ) -> Vec<Run> {
        let Self { ebpf, maps, .. } = self;
        let done = std::sync::atomic::AtomicBool::new(false);
        let mut runs = Vec::new();
        std::thread::scope(|scope| {
            scope.spawn(|| {
                writer(maps);
                done.store(true, std::sync::atomic::Ordering::Release);
            });
            while !done.load(std::sync::atomic::Ordering::Acquire) {
                runs.push(
                    Self::test_run_on(ebpf, ingress, frame, Layout::Whole).expect("test run"),
                );
            }
        });
        runs
    }

    fn test_run_on(
        ebpf: &Ebpf,
        ingress: u32,
        frame: &[u8],
        layout: Layout,
    ) -> Result<Run, ProgramError> {
        let short = ETH_HLEN.saturating_sub(frame.len());
        let (meta, tail) = match layout {
            Layout::Whole => (0, 0),
            Layout::Fragment => (0, short),
            Layout::Metadata => (short.next_multiple_of(4), 0),
        };
        let mut data_in = vec![0u8; meta];
        data_in.extend_from_slice(frame);
        data_in.resize(data_in.len() + tail, 0);
        let word = |n: usize| u32::try_from(n).expect("frame length");
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex; offsets count from data_meta, which must be 0.
        let ctx: Vec<u8> = [word(meta), word(meta + frame.len()), 0, ingress, 0, 0]
            .iter()
            .flat_map(|w| w.to_ne_bytes())
            .collect();
        let mut out = vec![0u8; data_in.len() + 256];
        let program: &Xdp = ebpf
            .program(names::PROGRAM)
            .expect("program sluice_xdp")
            .try_into()
            .expect("sluice_xdp is an XDP program");
        let result = program.test_run(TestRunOptions {
            data_in: Some(&data_in),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            ..TestRunOptions::default()
        })?;
        // data_out is metadata, linear part, fragments: keep what the program saw.
        out.truncate(result.data_size_out as usize);
        let fragment = out.split_off(out.len().saturating_sub(tail));
        assert!(fragment.iter().all(|&b| b == 0), "the fragment came back changed");
        Ok(Run { verdict: result.return_value, output: out.split_off(meta.min(out.len())) })
    }

    /// Packets and bytes of every counter in use, summed over CPUs, by slot then reason.
    fn read_counters(&self) -> Vec<(u64, u64)> {
        (0..MAX_SLOTS)
            .flat_map(|slot| {
                let c = self.maps.counters(slot).expect("read COUNTERS");
                Reason::ALL.map(move |r| c.get(&r).map_or((0, 0), |c| (c.packets, c.bytes)))
            })
            .collect()
    }

    /// Every neighbour request waiting in the ring buffer.
    pub fn drain_neigh(&mut self) -> Vec<NeighRequest> {
        let mut out = Vec::new();
        while let Some(item) = self.neigh.next() {
            assert_eq!(item.len(), size_of::<NeighRequest>(), "NeighRequest record size");
            let mut r = NeighRequest {
                ifindex: u32::from_ne_bytes(item[0..4].try_into().expect("4 bytes")),
                family: item[4],
                ..NeighRequest::default()
            };
            r.addr.copy_from_slice(&item[8..24]);
            out.push(r);
        }
        out
    }

    /// Runs one case and describes every way it went wrong.
    pub fn check(&mut self, case: &Case) -> Result<(), String> {
        let run = self.run(case.ingress, &case.input);
        let after = self.read_counters();
        let mut errors = Vec::new();
        if run.verdict != case.verdict {
            errors.push(format!(
                "verdict: expected {}, got {}",
                verdict_name(case.verdict),
                verdict_name(run.verdict)
            ));
        }
        if run.output != case.output {
            errors.push(format!("output frame: {}", diff(&case.output, &run.output)));
        }
        let len = case.input.len() as u64;
        let every = (0..MAX_SLOTS).flat_map(|slot| Reason::ALL.map(|r| (slot, r)));
        for ((slot, reason), (now, before)) in every.zip(after.iter().zip(&self.snapshot)) {
            let delta = (now.0 - before.0, now.1 - before.1);
            let bytes = case.transmitted.filter(|_| reason == Reason::Transmitted).unwrap_or(len);
            let expected =
                if case.counters.contains(&(slot, reason)) { (1, bytes) } else { (0, 0) };
            if delta != expected {
                errors.push(format!(
                    "counter slot {slot} {}: expected +{} packets +{} bytes, got +{} +{}",
                    reason.name(),
                    expected.0,
                    expected.1,
                    delta.0,
                    delta.1
                ));
            }
        }
        self.snapshot = after;
        let requests = self.drain_neigh();
        if requests != case.neigh {
            errors.push(format!("neighbour requests: expected {:?}, got {requests:?}", case.neigh));
        }
        if errors.is_empty() { Ok(()) } else { Err(errors.join("\n  ")) }
    }

    /// Runs every case and fails with a report of all that went wrong.
    pub fn check_all(&mut self, cases: &[Case]) {
        let mut failures = Vec::new();
        for case in cases {
            match self.check(case) {
                Ok(()) => println!("ok    {}", case.name),
                Err(e) => {
                    println!("FAIL  {}", case.name);
                    failures.push(format!("{}:\n  {e}", case.name));
                }
            }
        }
        assert!(
            failures.is_empty(),
            "{} of {} cases failed:\n{}",
            failures.len(),
            cases.len(),
            failures.join("\n")
        );
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Leave the namespace before NetNs deletes it, so this thread does not keep it alive.
        let _ = nix::sched::setns(&self.home, nix::sched::CloneFlags::CLONE_NEWNET);
    }
}
