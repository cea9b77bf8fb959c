//! Differential test against Linux forwarding: the same crafted frames go from a sender through a
//! router to a receiver twice, once with the router's kernel forwarding alone and once with Sluice
//! attached (kernel forwarding on too, as on the appliance: what XDP passes, the kernel handles).
//! For each frame the test captures what reaches the receiver (an `AF_PACKET` socket on its
//! interface) and what comes back to the sender (ICMP, replies), and compares:
//! the same decision (forwarded or not), the same bytes forwarded apart from the TTL / hop limit,
//! the header checksum and the MAC addresses, the same ICMP type and code back.
//!
//! A difference fails the test unless [`EXPECTED`] lists it with the reason Sluice differs on
//! purpose. The table of every case and both outcomes is printed.
//!
//! Needs root and bpffs; without them the test says why and returns, except with `CI=true`, where
//! it fails. Run: `cargo nextest run --release -p sluice --test parity`.

#[expect(dead_code, reason = "shared with tests/netns.rs; this binary uses a part of it")]
mod common;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    time::{Duration, Instant},
};

use common::{Topology, ip, mac_of, privileged};
use sluice_testbed::{
    frame::{
        ETH_P_IPV4, ETH_P_IPV6, Frame, IP_MF, IPPROTO_FRAGMENT, IPPROTO_HOPOPTS, IPPROTO_UDP, Ipv4,
        Ipv6, L4, ip4, ip6, refresh_ipv4_checksum,
    },
    lab::{HOST_IF, Subnet},
    wire::Wire,
};

/// The sender's subnet.
const SND: Subnet = Subnet(1);
/// The receiver's subnet.
const RCV: Subnet = Subnet(2);
/// The MTU of the router's link to the receiver (both ends): smaller than the sender's.
const RCV_MTU: usize = 1400;
/// How long a case waits for the last frame it caused.
const QUIET: Duration = Duration::from_millis(300);

/// Differences Sluice has on purpose with the kernel's forwarding on: case name and why. Empty
/// while Sluice decides as Linux does in every case.
const EXPECTED: &[(&str, &str)] = &[];

/// Differences with the kernel's forwarding off (the lab's router; the image turns it on): XDP
/// hands these to the kernel so that it forwards them or answers with ICMP, and a kernel that does
/// not forward drops them without a word (IPv4: `ip_error` sends nothing while forwarding is off; IPv6:
/// `ip6_forward` is not reached). Not a choice of the program: the configuration's.
const EXPECTED_WITHOUT_KERNEL_FORWARDING: &[(&str, &str)] = &[
    ("v4 ttl 1", "TTL expiry goes to the kernel for ICMP time exceeded; it drops it instead"),
    ("v4 ttl 0", "as TTL 1"),
    ("v6 hop limit 1", "hop-limit expiry goes to the kernel for ICMPv6 time exceeded"),
    ("v6 hop limit 0", "as hop limit 1"),
    (
        "v4 too big with DF",
        "too big for the egress MTU: the kernel would send fragmentation needed",
    ),
    ("v4 too big without DF", "too big: the kernel would fragment it"),
    ("v6 too big", "too big: the kernel would send packet too big"),
    ("v4 options (NOPs)", "IPv4 options are left to the kernel, which would forward them"),
    ("v4 options (record route)", "as NOPs"),
    ("v6 hop-by-hop header", "a hop-by-hop header is left to the kernel, which would forward it"),
    ("v4 no route", "no route: the kernel would send net unreachable"),
    ("v4 dst 0/8", "a martian destination goes to the kernel, which would send unreachable"),
    ("v4 dst link-local", "as 0/8"),
    ("v4 dst class E", "as 0/8"),
    ("v4 src 0/8", "passed as martian; Linux forwards 0/8 sources since 5.3"),
    ("v4 src link-local", "passed as martian; Linux forwards 169.254/16 sources"),
];

type Mac = [u8; 6];

/// What a frame needs from the topology it is sent into.
struct Ends {
    router_mac: Mac,
    sender_mac: Mac,
}

fn mac(text: &str) -> Mac {
    let mut m = [0u8; 6];
    for (i, part) in text.split(':').enumerate() {
        m[i] = u8::from_str_radix(part, 16).expect("a MAC address");
    }
    m
}

fn udp(tag: u16) -> L4 {
    L4::Udp { sport: 40000 + tag, dport: 9, payload: format!("parity case {tag}").into_bytes() }
}

fn v4(e: &Ends, tag: u16, edit: impl FnOnce(&mut Ipv4)) -> Frame {
    let mut ip = Ipv4::new(ip4(&SND.host_v4()), ip4(&RCV.host_v4()), udp(tag));
    ip.ident = tag;
    edit(&mut ip);
    Frame::v4(e.router_mac, e.sender_mac, ip)
}

fn v6(e: &Ends, tag: u16, edit: impl FnOnce(&mut Ipv6)) -> Frame {
    let mut ip = Ipv6::new(ip6(&SND.host_v6()), ip6(&RCV.host_v6()), udp(tag));
    ip.flow_label = u32::from(tag);
    edit(&mut ip);
    Frame::v6(e.router_mac, e.sender_mac, ip)
}

/// Edits the bytes of a built frame (for damage the builder cannot express).
fn bytes(f: &Frame, edit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut b = f.bytes();
    edit(&mut b);
    b
}

/// A UDP header and payload after an extension header, as raw bytes (checksum left 0, which
/// UDP over IPv6 forbids: the receiver drops it, routers do not look).
fn udp_raw(tag: u16) -> Vec<u8> {
    let payload = format!("parity case {tag}").into_bytes();
    let mut b = Vec::new();
    b.extend_from_slice(&(40000 + tag).to_be_bytes());
    b.extend_from_slice(&9u16.to_be_bytes());
    b.extend_from_slice(&u16::try_from(8 + payload.len()).unwrap().to_be_bytes());
    b.extend_from_slice(&[0, 0]);
    b.extend_from_slice(&payload);
    b
}

/// Every case: a name and the frame's bytes.
#[expect(clippy::too_many_lines, reason = "one table of cases")]
fn cases(e: &Ends) -> Vec<(&'static str, Vec<u8>)> {
    let big = |tag: u16| L4::Udp { sport: 40000 + tag, dport: 9, payload: vec![0x5a; RCV_MTU] };
    let other_mac = [0x02, 0, 0, 0, 0, 0x99];
    let mut c: Vec<(&'static str, Vec<u8>)> = vec![
        ("v4 udp", v4(e, 1, |_| {}).bytes()),
        ("v4 tcp syn", v4(e, 2, |ip| ip.l4 = L4::tcp(40002, 80)).bytes()),
        ("v4 icmp echo", v4(e, 3, |ip| ip.l4 = L4::Echo { id: 3, seq: 1 }).bytes()),
        ("v4 ttl 1", v4(e, 4, |ip| ip.ttl = 1).bytes()),
        ("v4 ttl 0", v4(e, 5, |ip| ip.ttl = 0).bytes()),
        ("v4 bad header checksum", bytes(&v4(e, 6, |_| {}), |b| b[24] ^= 0xff)),
        (
            "v4 version 5",
            bytes(&v4(e, 7, |_| {}), |b| {
                b[14] = 0x55;
                refresh_ipv4_checksum(b, 14);
            }),
        ),
        (
            "v4 ihl 4",
            bytes(&v4(e, 8, |_| {}), |b| {
                b[14] = 0x44;
                refresh_ipv4_checksum(b, 14);
            }),
        ),
        ("v4 truncated", bytes(&v4(e, 9, |_| {}), |b| b.truncate(b.len() - 6))),
        ("v4 padded (total length shorter than the frame)", v4(e, 10, |_| {}).padded(24).bytes()),
        (
            "v4 trailing bytes after the total length",
            bytes(&v4(e, 11, |_| {}), |b| b.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef])),
        ),
        (
            "v4 total length shorter than the header",
            bytes(&v4(e, 12, |_| {}), |b| {
                b[16..18].copy_from_slice(&16u16.to_be_bytes());
                refresh_ipv4_checksum(b, 14);
            }),
        ),
        ("v4 src 0/8", v4(e, 13, |ip| ip.src = ip4("0.1.2.3")).bytes()),
        ("v4 src 127/8", v4(e, 14, |ip| ip.src = ip4("127.0.0.1")).bytes()),
        ("v4 src multicast", v4(e, 15, |ip| ip.src = ip4("224.0.0.5")).bytes()),
        ("v4 src link-local", v4(e, 16, |ip| ip.src = ip4("169.254.1.1")).bytes()),
        ("v4 src limited broadcast", v4(e, 17, |ip| ip.src = ip4("255.255.255.255")).bytes()),
        ("v4 dst 0/8", v4(e, 18, |ip| ip.dst = ip4("0.0.0.1")).bytes()),
        ("v4 dst 127/8", v4(e, 19, |ip| ip.dst = ip4("127.0.0.1")).bytes()),
        ("v4 dst multicast", v4(e, 20, |ip| ip.dst = ip4("239.1.1.1")).bytes()),
        ("v4 dst link-local", v4(e, 21, |ip| ip.dst = ip4("169.254.1.1")).bytes()),
        ("v4 dst limited broadcast", v4(e, 22, |ip| ip.dst = ip4("255.255.255.255")).bytes()),
        ("v4 dst class E", v4(e, 23, |ip| ip.dst = ip4("240.0.0.1")).bytes()),
        ("v4 dst subnet broadcast", v4(e, 24, |ip| ip.dst = ip4("10.2.0.255")).bytes()),
        ("v4 no route", v4(e, 25, |ip| ip.dst = ip4("10.99.0.1")).bytes()),
        ("v4 not for us (other MAC)", {
            let mut f = v4(e, 26, |_| {});
            f.dst = other_mac;
            f.bytes()
        }),
        ("v4 broadcast MAC", {
            let mut f = v4(e, 27, |_| {});
            f.dst = [0xff; 6];
            f.bytes()
        }),
        ("v4 options (NOPs)", v4(e, 28, |ip| ip.options = vec![1, 1, 1, 0]).bytes()),
        (
            "v4 options (record route)",
            v4(e, 29, |ip| ip.options = vec![7, 7, 4, 0, 0, 0, 0, 0]).bytes(),
        ),
        ("v4 first fragment", v4(e, 30, |ip| ip.frag = IP_MF).bytes()),
        (
            "v4 later fragment",
            v4(e, 31, |ip| {
                ip.frag = 4;
                ip.l4 = L4::Raw { proto: IPPROTO_UDP, bytes: vec![0x33; 24] };
            })
            .bytes(),
        ),
        ("v4 too big with DF", v4(e, 32, |ip| ip.l4 = big(32)).bytes()),
        (
            "v4 too big without DF",
            v4(e, 33, |ip| {
                ip.l4 = big(33);
                ip.frag = 0;
            })
            .bytes(),
        ),
        ("v4 tagged (VLAN the router does not have)", v4(e, 34, |_| {}).tagged(100).bytes()),
        ("v6 udp", v6(e, 101, |_| {}).bytes()),
        ("v6 tcp syn", v6(e, 102, |ip| ip.l4 = L4::tcp(40102, 80)).bytes()),
        ("v6 icmp echo", v6(e, 103, |ip| ip.l4 = L4::Echo { id: 103, seq: 1 }).bytes()),
        ("v6 hop limit 1", v6(e, 104, |ip| ip.hop_limit = 1).bytes()),
        ("v6 hop limit 0", v6(e, 105, |ip| ip.hop_limit = 0).bytes()),
        ("v6 version 4", bytes(&v6(e, 106, |_| {}), |b| b[14] = 0x40 | (b[14] & 0x0f))),
        ("v6 truncated", bytes(&v6(e, 107, |_| {}), |b| b.truncate(b.len() - 6))),
        (
            "v6 padded (payload length shorter than the frame)",
            v6(e, 108, |_| {}).padded(24).bytes(),
        ),
        (
            "v6 payload length 0 (no jumbo option)",
            bytes(&v6(e, 109, |_| {}), |b| b[18..20].copy_from_slice(&[0, 0])),
        ),
        ("v6 src ::1", v6(e, 110, |ip| ip.src = ip6("::1")).bytes()),
        ("v6 src ::", v6(e, 111, |ip| ip.src = ip6("::")).bytes()),
        ("v6 dst ::1", v6(e, 112, |ip| ip.dst = ip6("::1")).bytes()),
        ("v6 src link-local", v6(e, 113, |ip| ip.src = ip6("fe80::1")).bytes()),
        ("v6 dst link-local", v6(e, 114, |ip| ip.dst = ip6("fe80::1")).bytes()),
        ("v6 src multicast", v6(e, 115, |ip| ip.src = ip6("ff02::1")).bytes()),
        ("v6 dst multicast", v6(e, 116, |ip| ip.dst = ip6("ff0e::1")).bytes()),
        ("v6 no route", v6(e, 117, |ip| ip.dst = ip6("fd00:99::1")).bytes()),
        ("v6 not for us (other MAC)", {
            let mut f = v6(e, 118, |_| {});
            f.dst = other_mac;
            f.bytes()
        }),
        (
            "v6 hop-by-hop header",
            v6(e, 119, |ip| {
                // Next header UDP, length 0 (8 bytes), PadN of 4.
                let mut b = vec![IPPROTO_UDP, 0, 1, 4, 0, 0, 0, 0];
                b.extend_from_slice(&udp_raw(119));
                ip.l4 = L4::Raw { proto: IPPROTO_HOPOPTS, bytes: b };
            })
            .bytes(),
        ),
        (
            "v6 routing header (type 0, segments left 0)",
            v6(e, 120, |ip| {
                let mut b = vec![IPPROTO_UDP, 0, 0, 0, 0, 0, 0, 0];
                b.extend_from_slice(&udp_raw(120));
                ip.l4 = L4::Raw { proto: 43, bytes: b };
            })
            .bytes(),
        ),
        (
            "v6 fragment header (first fragment)",
            v6(e, 121, |ip| {
                // Offset 0, M set, identification 121.
                let mut b = vec![IPPROTO_UDP, 0, 0, 1, 0, 0, 0, 121];
                b.extend_from_slice(&udp_raw(121));
                ip.l4 = L4::Raw { proto: IPPROTO_FRAGMENT, bytes: b };
            })
            .bytes(),
        ),
        ("v6 too big", v6(e, 122, |ip| ip.l4 = big(122)).bytes()),
    ];
    // An IPv4 header inside an IPv6 EtherType and the other way round.
    let inner4 = v4(e, 123, |_| {}).bytes();
    let mut swapped = inner4.clone();
    swapped[12..14].copy_from_slice(&ETH_P_IPV6.to_be_bytes());
    c.push(("v4 packet with the IPv6 EtherType", swapped));
    let mut swapped = v6(e, 124, |_| {}).bytes();
    swapped[12..14].copy_from_slice(&ETH_P_IPV4.to_be_bytes());
    c.push(("v6 packet with the IPv4 EtherType", swapped));
    c
}

/// What one frame caused: the packets the receiver got (from the IP header on, TTL / hop limit
/// and IPv4 header checksum zeroed) and what the sender got back (described).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Outcome {
    delivered: Vec<Vec<u8>>,
    returned: Vec<String>,
}

impl Outcome {
    fn summary(&self) -> String {
        let lens: Vec<String> = self.delivered.iter().map(|p| p.len().to_string()).collect();
        let got = if lens.is_empty() {
            "not forwarded".into()
        } else {
            format!("forwarded ({} B)", lens.join(", "))
        };
        if self.returned.is_empty() {
            got
        } else {
            format!("{got}; back: {}", self.returned.join(", "))
        }
    }
}

/// Neighbour discovery, router solicitations, MLD, IGMP and ARP: the namespaces' own chatter.
fn chatter(frame: &[u8]) -> bool {
    let ether_type = u16::from_be_bytes([frame[12], frame[13]]);
    match ether_type {
        ETH_P_IPV4 => frame.get(23) == Some(&2),
        ETH_P_IPV6 => {
            frame.get(20) == Some(&58) && frame.get(54).is_some_and(|t| (130..=143).contains(t))
                || frame.get(20) == Some(&0)
                    && frame.get(54) == Some(&58)
                    && frame.get(62).is_some_and(|t| (130..=143).contains(t))
        }
        _ => true,
    }
}

/// The IP packet of a frame the receiver got, with what a router changes zeroed.
fn normalised(frame: &[u8]) -> Vec<u8> {
    let mut p = frame[14..].to_vec();
    match u16::from_be_bytes([frame[12], frame[13]]) {
        ETH_P_IPV4 if p.len() >= 20 => {
            p[8] = 0;
            p[10] = 0;
            p[11] = 0;
        }
        ETH_P_IPV6 if p.len() >= 40 => p[7] = 0,
        _ => {}
    }
    p
}

/// A frame that came back to the sender, in words: ICMP type and code, or the protocol.
fn described(frame: &[u8]) -> String {
    let p = &frame[14..];
    match u16::from_be_bytes([frame[12], frame[13]]) {
        ETH_P_IPV4 if p.len() >= 20 => {
            let ihl = usize::from(p[0] & 0x0f) * 4;
            match p[9] {
                1 if p.len() >= ihl + 2 => format!("icmp {}/{}", p[ihl], p[ihl + 1]),
                proto => format!("ipv4 proto {proto}"),
            }
        }
        ETH_P_IPV6 if p.len() >= 40 => match p[6] {
            58 if p.len() >= 42 => format!("icmp6 {}/{}", p[40], p[41]),
            next => format!("ipv6 next {next}"),
        },
        t => format!("ethertype {t:#06x}"),
    }
}

/// Sends each case's frame and collects what it caused.
fn run(t: &Topology, cases: &[(&'static str, Vec<u8>)]) -> BTreeMap<&'static str, Outcome> {
    let sender = Wire::open(t.ns("snd"), HOST_IF).expect("a packet socket on the sender");
    let receiver = Wire::open(t.ns("rcv"), HOST_IF).expect("a packet socket on the receiver");
    let mut out = BTreeMap::new();
    for (name, frame) in cases {
        sender.drain().expect("drain");
        receiver.drain().expect("drain");
        sender.send(frame).unwrap_or_else(|e| panic!("send {name}: {e}"));
        let mut o = Outcome::default();
        let mut last = Instant::now();
        while last.elapsed() < QUIET {
            let mut any = false;
            if let Some(f) = receiver.recv(Duration::from_millis(20)).expect("receive") {
                any = true;
                if !chatter(&f) {
                    o.delivered.push(normalised(&f));
                }
            }
            if let Some(f) = sender.recv(Duration::from_millis(20)).expect("receive") {
                any = true;
                if !chatter(&f) {
                    o.returned.push(described(&f));
                }
            }
            if any {
                last = Instant::now();
            }
        }
        o.returned.sort();
        out.insert(*name, o);
    }
    out
}

/// The sender, router and receiver; the router's kernel forwarding as `kernel_forwarding` says,
/// ICMP not rate-limited (the cases would otherwise see a different share of it), the
/// receiver's link narrower, every neighbour known so no resolution interleaves with the cases,
/// and the daemon running when `sluice`.
fn topology(sluice: bool, kernel_forwarding: bool) -> (Topology, Ends) {
    let mut t = Topology::new(&[("snd", SND.0), ("rcv", RCV.0)]);
    let on = if kernel_forwarding { "1" } else { "0" };
    for key in ["net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"] {
        t.router.sysctl(key, on).expect("kernel forwarding");
    }
    for ns in [&t.router, t.ns("snd"), t.ns("rcv")] {
        ns.sysctl("net.ipv4.icmp_ratelimit", "0").expect("sysctl");
        ns.sysctl("net.ipv4.icmp_msgs_per_sec", "100000").expect("sysctl");
        ns.sysctl("net.ipv6.icmp.ratelimit", "0").expect("sysctl");
    }
    let mtu = RCV_MTU.to_string();
    ip(&t.router, &["link", "set", "r-rcv", "mtu", &mtu]);
    ip(t.ns("rcv"), &["link", "set", HOST_IF, "mtu", &mtu]);
    for (role, subnet) in [("snd", SND), ("rcv", RCV)] {
        let host_mac = mac_of(t.ns(role), HOST_IF);
        let dev = format!("r-{role}");
        for addr in [subnet.host_v4(), subnet.host_v6()] {
            ip(
                &t.router,
                &["neigh", "replace", &addr, "lladdr", &host_mac, "dev", &dev, "nud", "permanent"],
            );
        }
        let router_mac = mac_of(&t.router, &dev);
        for addr in [subnet.router_v4(), subnet.router_v6()] {
            ip(
                t.ns(role),
                &[
                    "neigh",
                    "replace",
                    &addr,
                    "lladdr",
                    &router_mac,
                    "dev",
                    HOST_IF,
                    "nud",
                    "permanent",
                ],
            );
        }
    }
    if sluice {
        t.start_daemon();
        for host in [
            RCV.host_v4() + "/32",
            RCV.host_v6() + "/128",
            SND.host_v4() + "/32",
            SND.host_v6() + "/128",
        ] {
            t.wait_route(&host, "a resolved host route", |r| {
                r.is_some_and(|r| r.nexthops.iter().any(|n| n.resolved))
            });
        }
    }
    t.wait_ping("snd", &RCV.host_v4());
    let ends = Ends {
        router_mac: mac(&mac_of(&t.router, "r-snd")),
        sender_mac: mac(&mac_of(t.ns("snd"), HOST_IF)),
    };
    (t, ends)
}

/// Runs every case through a router of Linux alone (kernel forwarding on).
fn linux() -> (Vec<&'static str>, BTreeMap<&'static str, Outcome>) {
    let (t, e) = topology(false, true);
    let cases = cases(&e);
    let started = Instant::now();
    let out = run(&t, &cases);
    println!("linux: {} cases in {:?}", cases.len(), started.elapsed());
    (cases.iter().map(|(n, _)| *n).collect(), out)
}

/// Runs every case through Sluice (kernel forwarding on or off) and compares with Linux: a
/// difference fails unless `expected` lists it, and a listed difference must show.
fn compare(kernel_forwarding: bool, expected: &[(&str, &str)]) {
    let (names, linux) = linux();
    let (t, e) = topology(true, kernel_forwarding);
    let cases = cases(&e);
    let before = t.stats();
    let started = Instant::now();
    let sluice = run(&t, &cases);
    let label = if kernel_forwarding {
        "sluice, kernel forwarding on"
    } else {
        "sluice, kernel forwarding off"
    };
    println!("{label}: {} cases in {:?}", cases.len(), started.elapsed());
    let after = t.stats();
    let forwarded_by_xdp = after.delta(&before, "r-snd", "forwarded");

    // A difference nobody listed is sent again through both routers before it counts: a late
    // answer to an earlier frame can land in a case's window on a loaded machine.
    let unlisted: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| linux[n] != sluice[n] && !expected.iter().any(|(e, _)| e == n))
        .collect();
    let (mut linux, mut sluice) = (linux, sluice);
    if !unlisted.is_empty() {
        let pick = |all: Vec<(&'static str, Vec<u8>)>| -> Vec<(&'static str, Vec<u8>)> {
            all.into_iter().filter(|(n, _)| unlisted.contains(n)).collect()
        };
        let again_sluice = run(&t, &pick(cases.clone()));
        let (t_linux, e_linux) = topology(false, true);
        let again_linux = run(&t_linux, &pick(crate::cases(&e_linux)));
        drop(t_linux);
        let confirmed = unlisted.iter().filter(|n| again_linux[*n] != again_sluice[*n]).count();
        println!(
            "{label}: {} unlisted differences sent again: {confirmed} confirmed",
            unlisted.len()
        );
        linux.extend(again_linux);
        sluice.extend(again_sluice);
    }

    let mut table = String::new();
    let mut failures = Vec::new();
    let mut same = 0;
    for name in &names {
        let (l, s) = (&linux[name], &sluice[name]);
        let listed = expected.iter().find(|(n, _)| n == name);
        let verdict = match (l == s, listed) {
            (true, None) => {
                same += 1;
                "same"
            }
            (true, Some(_)) => {
                failures.push(format!("{name}: listed as a difference, but both agree: {l:?}"));
                "same (listed!)"
            }
            (false, Some(_)) => "differs (expected)",
            (false, None) => {
                failures.push(format!("{name}:\n  linux:  {l:?}\n  sluice: {s:?}"));
                "DIFFERS"
            }
        };
        let _ = writeln!(
            table,
            "{name:<50} {verdict:<18} linux: {:<36} sluice: {}",
            l.summary(),
            s.summary()
        );
    }
    println!("{label}:\n{table}");
    for (name, why) in expected {
        println!("expected difference: {name}: {why}");
    }
    println!(
        "{label}: {same} of {} cases the same, {} listed differences; XDP forwarded {forwarded_by_xdp} \
         frames from the sender",
        names.len(),
        expected.len()
    );
    assert!(
        forwarded_by_xdp >= 10,
        "XDP should have forwarded the valid cases itself (not the kernel): {forwarded_by_xdp}"
    );
    assert!(failures.is_empty(), "{label}: differs from Linux:\n{}", failures.join("\n"));
}

#[test]
fn with_kernel_forwarding_sluice_decides_as_linux() {
    if !privileged() {
        return;
    }
    compare(true, EXPECTED);
}

#[test]
fn without_kernel_forwarding_sluice_differs_only_where_listed() {
    if !privileged() {
        return;
    }
    compare(false, EXPECTED_WITHOUT_KERNEL_FORWARDING);
}
