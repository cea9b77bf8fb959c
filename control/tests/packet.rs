//! Packet tests of the XDP program through `BPF_PROG_TEST_RUN`: tables of
//! `{description, input frame, verdict, output frame, counters, neighbour requests}` run against
//! the real object (`sluice_dataplane::EBPF_OBJECT`) with its maps filled for the topology described in
//! `sluice_testbed::fixture`. Every row checks the verdict, the exact frame that comes back, that exactly
//! the expected counters grew (by one packet and the frame's length; all others unchanged), and
//! the neighbour requests in the ring buffer.
//!
//! Needs root (`CAP_BPF`, `CAP_NET_ADMIN`, `CAP_SYS_ADMIN`): outside CI a test prints a notice and
//! passes when they are missing; under `CI=true` it fails.
//!
//! Run: `cargo test -p sluice --test packet` as root (or `cargo nextest run -p sluice --test packet`).

use sluice_testbed::{fixture as lab, frame};

use std::time::{Duration, Instant};

use frame::{
    ETH_P_ARP, ETH_P_LLDP, Frame, IP_MF, IPPROTO_FRAGMENT, IPPROTO_HOPOPTS, IPPROTO_ICMP,
    IPPROTO_UDP, Ipv4, Ipv6, L4, Mac, ip4, ip6, refresh_ipv4_checksum,
};
use lab::{
    BROADCAST_MAC, Case, ECMP_MEMBERS, HOST_MAC, IN0, IN0_V100, Lab, OTHER_MAC, Port, ROUTER_MAC,
    SMALL_MTU, UNKNOWN, VLAN_IN, ecmp_group, group, nh, route, routed,
};
use sluice_common::{
    FAMILY_V4, FAMILY_V6, FLOW_HASH_SEED, Reason, RouteAction, flow_hash, flow_words,
};
use sluice_core::fib::Op;

/// The host behind `in0` that sends everything.
const SRC4: &str = "192.0.2.10";
const SRC6: &str = "2001:db8:a::10";

/// A UDP datagram from the host to `dst`, addressed to the router's MAC.
fn udp4(dst: &str) -> Frame {
    from4(SRC4, dst)
}

fn from4(src: &str, dst: &str) -> Frame {
    Frame::v4(ROUTER_MAC, HOST_MAC, Ipv4::new(ip4(src), ip4(dst), L4::udp(40000, 53)))
}

fn udp6(dst: &str) -> Frame {
    from6(SRC6, dst)
}

fn from6(src: &str, dst: &str) -> Frame {
    Frame::v6(ROUTER_MAC, HOST_MAC, Ipv6::new(ip6(src), ip6(dst), L4::udp(40000, 53)))
}

fn ttl4(dst: &str, ttl: u8) -> Frame {
    udp4(dst).map4(|ip| ip.ttl = ttl)
}

fn hops6(dst: &str, hop_limit: u8) -> Frame {
    udp6(dst).map6(|ip| ip.hop_limit = hop_limit)
}

/// The same frame sent to another Ethernet address.
fn to_mac(frame: Frame, dst: Mac) -> Frame {
    Frame { dst, ..frame }
}

/// A UDP datagram whose IP packet is `total` bytes long.
fn sized4(dst: &str, total: usize) -> Frame {
    let l4 = L4::Udp { sport: 1, dport: 2, payload: payload(total - 28) };
    Frame::v4(ROUTER_MAC, HOST_MAC, Ipv4::new(ip4(SRC4), ip4(dst), l4))
}

fn sized6(dst: &str, total: usize) -> Frame {
    let l4 = L4::Udp { sport: 1, dport: 2, payload: payload(total - 48) };
    Frame::v6(ROUTER_MAC, HOST_MAC, Ipv6::new(ip6(SRC6), ip6(dst), l4))
}

/// `n` bytes of payload.
fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| i as u8).collect()
}

/// The bytes of `frame` with its IPv4 header edited; `fix` recomputes the header checksum after.
fn mangle4(frame: &Frame, fix: bool, edit: impl FnOnce(&mut [u8])) -> Vec<u8> {
    let mut b = frame.bytes();
    let l3 = frame.l3();
    edit(&mut b[l3..]);
    if fix {
        refresh_ipv4_checksum(&mut b, l3);
    }
    b
}

/// Sets the big-endian u16 at `at`.
fn set16(h: &mut [u8], at: usize, value: u16) {
    h[at..at + 2].copy_from_slice(&value.to_be_bytes());
}

fn get16(h: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([h[at], h[at + 1]])
}

/// The IPv4 datagram to `dst` whose header checksum is `want` after the router decremented the
/// TTL (`after`) or as sent, found by trying identification values.
fn with_checksum(dst: &str, want: u16, after: bool) -> Frame {
    (0..=u16::MAX)
        .map(|ident| udp4(dst).map4(|ip| ip.ident = ident))
        .find(|f| {
            let bytes = if after { routed(f, nh::OUT1).bytes() } else { f.bytes() };
            get16(&bytes, 14 + 10) == want
        })
        .expect("some identification gives the checksum")
}

fn install_default_routes(lab: &mut Lab) {
    let r = route(RouteAction::Forward, nh::OUT4);
    for op in [
        Op::SetRouteV4("0.0.0.0/0".parse().expect("prefix"), r),
        Op::SetRouteV6("::/0".parse().expect("prefix"), r),
    ] {
        lab.maps.write(&op).expect("default route");
    }
}

#[test]
fn forwarding() {
    let Some(mut lab) = Lab::new("forwarding") else { return };
    install_default_routes(&mut lab);

    // Written out by hand (checksums computed outside Rust), so the builders are checked too.
    #[rustfmt::skip]
    let golden_in: Vec<u8> = vec![
        0x02, 0x00, 0x00, 0x00, 0x00, 0x0a, 0x02, 0x00, 0x00, 0x00, 0xaa, 0x01, 0x08, 0x00,
        0x45, 0x00, 0x00, 0x24, 0x1c, 0x46, 0x40, 0x00, 0x40, 0x11, 0x4f, 0x75,
        0xc0, 0x00, 0x02, 0x0a, 0x0a, 0x01, 0x03, 0x03,
        0x30, 0x39, 0x00, 0x35, 0x00, 0x10, 0x92, 0xf5, b's', b'l', b'u', b'i', b'c', b'e', b'!', b'!',
    ];
    #[rustfmt::skip]
    let golden_out: Vec<u8> = vec![
        // dst: out1's neighbour, src: out1.
        0x02, 0x00, 0x00, 0x00, 0x0b, 0x01, 0x02, 0x00, 0x00, 0x00, 0x00, 0x0b, 0x08, 0x00,
        // TTL 0x40 -> 0x3f, checksum 0x4f75 -> 0x5075.
        0x45, 0x00, 0x00, 0x24, 0x1c, 0x46, 0x40, 0x00, 0x3f, 0x11, 0x50, 0x75,
        0xc0, 0x00, 0x02, 0x0a, 0x0a, 0x01, 0x03, 0x03,
        0x30, 0x39, 0x00, 0x35, 0x00, 0x10, 0x92, 0xf5, b's', b'l', b'u', b'i', b'c', b'e', b'!', b'!',
    ];
    let golden_l4 = L4::Udp { sport: 12345, dport: 53, payload: b"sluice!!".to_vec() };
    let golden = Frame::v4(ROUTER_MAC, HOST_MAC, Ipv4::new(ip4(SRC4), ip4("10.1.3.3"), golden_l4));
    assert_eq!(golden.bytes(), golden_in, "the frame builder disagrees with the golden frame");
    assert_eq!(routed(&golden, nh::OUT1).bytes(), golden_out, "builder vs golden output");

    let with_l4 = |l4| Frame::v4(ROUTER_MAC, HOST_MAC, Ipv4::new(ip4(SRC4), ip4("10.1.3.3"), l4));
    let tcp4 = with_l4(L4::tcp(40000, 443));
    let echo4 = with_l4(L4::Echo { id: 7, seq: 1 });
    let fragment = with_l4(L4::Raw { proto: IPPROTO_UDP, bytes: payload(64) })
        .map4(|ip| ip.frag = IP_MF | 0x000a);
    let padded = with_l4(L4::Udp { sport: 1, dport: 2, payload: vec![1, 2] }).padded(16);
    let padded6 = udp6("2001:db8:1:1::5").padded(9);
    // DSCP EF and ECN ECT(1), traffic class and flow label: untouched by forwarding.
    let tos = udp4("10.1.3.3").map4(|ip| ip.tos = 0xb9);
    let flow6 = udp6("2001:db8:1:1::5").map6(|ip| {
        ip.traffic_class = 0xb8;
        ip.flow_label = 0xf_ffff;
    });
    let tcp6 = Frame::v6(
        ROUTER_MAC,
        HOST_MAC,
        Ipv6::new(ip6(SRC6), ip6("2001:db8:1:1::5"), L4::tcp(40000, 443)),
    );
    // Packets whose last header ends the frame exactly: nothing after it to read.
    let bare4 = with_l4(L4::Raw { proto: 253, bytes: Vec::new() });
    let bare6 = Frame::v6(
        ROUTER_MAC,
        HOST_MAC,
        Ipv6::new(ip6(SRC6), ip6("2001:db8:1:1::5"), L4::Raw { proto: 59, bytes: Vec::new() }),
    );
    let small = SMALL_MTU as usize;

    let fwd =
        |name: &str, input: Frame, id: u32| Case::forward(name, IN0, &input, &routed(&input, id));
    // What Linux does too: the frame leaves as long as its IP packet.
    let cut = |name: &str, input: Frame, id: u32| {
        let unpadded = input.clone().padded(0);
        let sent = unpadded.bytes().len() as u64;
        Case::forward(name, IN0, &input, &routed(&unpadded, id)).transmitting(sent)
    };
    #[rustfmt::skip]
    let cases = vec![
        Case::forward_bytes("IPv4 UDP, golden bytes: MACs, TTL 64 -> 63, checksum", IN0, golden_in, golden_out, 3),
        fwd("IPv4 UDP", udp4("10.1.3.3"), nh::OUT1),
        fwd("IPv4 TCP", tcp4, nh::OUT1),
        fwd("IPv4 ICMP echo", echo4, nh::OUT1),
        fwd("IPv4 DSCP and ECN bits are kept", tos, nh::OUT1),
        fwd("IPv4 TTL 2 -> 1 is still forwarded", ttl4("10.1.3.3", 2), nh::OUT1),
        fwd("IPv4 TTL 255", ttl4("10.1.3.3", 255), nh::OUT1),
        fwd("IPv4 checksum becomes 0x0000 after the decrement", with_checksum("10.1.3.3", 0, true), nh::OUT1),
        fwd("IPv4 checksum was 0x0000 before the decrement", with_checksum("10.1.3.3", 0, false), nh::OUT1),
        fwd("IPv4 fragment (MF, offset 80) is forwarded", fragment, nh::OUT1),
        cut("IPv4 with Ethernet padding: cut to the IP length", padded, nh::OUT1),
        cut("IPv6 with Ethernet padding: cut to the IP length", padded6, nh::OUT1),
        fwd("IPv4 header only (20 bytes, protocol 253): ends the frame", bare4, nh::OUT1),
        fwd("IPv6 header only (next header 59): ends the frame", bare6, nh::OUT1),
        fwd("IPv4 1500 bytes at MTU 1500", sized4("10.1.3.3", 1500), nh::OUT1),
        fwd("IPv4 exactly the next hop's MTU (576)", sized4("10.9.0.1", small), nh::SMALL_MTU),
        fwd("IPv6 UDP: hop limit 64 -> 63", udp6("2001:db8:1:1::5"), nh::OUT1),
        fwd("IPv6 TCP", tcp6, nh::OUT1),
        fwd("IPv6 traffic class and flow label are kept", flow6, nh::OUT1),
        fwd("IPv6 hop limit 2 -> 1 is still forwarded", hops6("2001:db8:1:1::5", 2), nh::OUT1),
        fwd("IPv6 exactly the next hop's MTU (576)", sized6("2001:db8:9::1", small), nh::SMALL_MTU),
        fwd("longest prefix: 10.1.3.3 takes 10.1/16", udp4("10.1.3.3"), nh::OUT1),
        fwd("longest prefix: 10.1.2.3 takes 10.1.2/24 over 10.1/16", udp4("10.1.2.3"), nh::OUT2),
        fwd("longest prefix: 10.1.2.7 takes 10.1.2.7/32 over 10.1.2/24", udp4("10.1.2.7"), nh::OUT3),
        fwd("longest prefix: 2001:db8:1:2::9 takes the /64 over the /48", udp6("2001:db8:1:2::9"), nh::OUT2),
        fwd("longest prefix: 2001:db8:1:3::9 takes the /48", udp6("2001:db8:1:3::9"), nh::OUT1),
        fwd("default route 0.0.0.0/0", udp4("198.51.100.7"), nh::OUT4),
        fwd("default route ::/0", udp6("2001:db9::1"), nh::OUT4),
        // Just outside the martian ranges: fe80::/10 ends at febf::, loopback is ::1 only.
        fwd("IPv6 fec0::1 is not link-local: default route", udp6("fec0::1"), nh::OUT4),
        fwd("IPv6 ::2 is neither loopback nor unspecified: default route", udp6("::2"), nh::OUT4),
        fwd("IPv6 ::100 (a byte before the last set): default route", udp6("::100"), nh::OUT4),
        fwd("IPv6 fe40::1 (fe00::/9, not fe80::/10): default route", udp6("fe40::1"), nh::OUT4),
    ];
    lab.check_all(&cases);
}

/// Routing outcomes other than forwarding: TTL, local, no route, neighbours, MTU, route types.
#[test]
fn exceptions_routing() {
    use Reason::{
        DropBlackhole, PassLocal, PassMtu, PassNeighbour, PassNoEgress, PassNoRoute, PassOptions,
        PassOther, PassTtl, PassUnreachable,
    };
    let Some(mut lab) = Lab::new("exceptions_routing") else { return };
    // Router Alert (RFC 2113): IHL 6.
    let options = udp4("10.1.3.3").map4(|ip| ip.options = vec![0x94, 0x04, 0x00, 0x00]);
    let hop_by_hop = {
        let dst = ip6("2001:db8:1:1::5");
        let udp = Ipv6::new(ip6(SRC6), dst, L4::udp(1, 2)).bytes()[40..].to_vec();
        // Next header UDP, length 0 (8 bytes), PadN of 4 bytes.
        let mut ext = vec![IPPROTO_UDP, 0, 0x01, 0x04, 0, 0, 0, 0];
        ext.extend_from_slice(&udp);
        let l4 = L4::Raw { proto: IPPROTO_HOPOPTS, bytes: ext };
        Frame::v6(ROUTER_MAC, HOST_MAC, Ipv6::new(ip6(SRC6), dst, l4))
    };
    let small = SMALL_MTU as usize;
    let pass = |name: &str, frame: Frame, reason| Case::pass(name, IN0, frame, reason);
    let drop = |name: &str, frame: Frame, reason| Case::drop(name, IN0, frame, reason);
    #[rustfmt::skip]
    let cases = vec![
        pass("IPv4 TTL 1", ttl4("10.1.3.3", 1), PassTtl),
        pass("IPv4 TTL 0", ttl4("10.1.3.3", 0), PassTtl),
        pass("IPv6 hop limit 1", hops6("2001:db8:1:1::5", 1), PassTtl),
        pass("IPv6 hop limit 0", hops6("2001:db8:1:1::5", 0), PassTtl),
        pass("IPv4 TTL 1 to an ECMP route", ttl4("10.2.0.1", 1), PassTtl),
        pass("IPv4 TTL 1 to an unresolved neighbour: TTL first, no request", ttl4("10.4.0.2", 1), PassTtl),
        pass("IPv4 TTL 1 to a connected subnet: TTL first, no request", ttl4("10.5.0.9", 1), PassTtl),
        pass("IPv4 TTL 1 to a local address is delivered", ttl4("10.6.0.1", 1), PassLocal),
        pass("IPv4 to a local address", udp4("10.6.0.1"), PassLocal),
        pass("IPv6 to a local address", udp6("2001:db8:6::1"), PassLocal),
        pass("IPv4 no route (no default)", udp4("198.51.100.7"), PassNoRoute),
        pass("IPv6 no route (no default)", udp6("2001:db9::1"), PassNoRoute),
        pass("IPv4 unresolved neighbour: reports the gateway", udp4("10.4.0.33"), PassNeighbour)
            .with_neigh(12, FAMILY_V4, &ip4("10.4.0.1")),
        pass("IPv6 unresolved neighbour: reports the gateway", udp6("2001:db8:4::33"), PassNeighbour)
            .with_neigh(12, FAMILY_V6, &ip6("2001:db8:4::1")),
        pass("IPv4 connected route, no host entry: reports the destination", udp4("10.5.0.9"), PassNeighbour)
            .with_neigh(12, FAMILY_V4, &ip4("10.5.0.9")),
        pass("IPv6 connected route, no host entry: reports the destination", udp6("2001:db8:5::9"), PassNeighbour)
            .with_neigh(12, FAMILY_V6, &ip6("2001:db8:5::9")),
        pass("IPv4 options (IHL 6, router alert)", options, PassOptions),
        pass("IPv6 hop-by-hop options header", hop_by_hop, PassOptions),
        pass("IPv4 one byte over the next hop's MTU", sized4("10.9.0.1", small + 1), PassMtu),
        pass("IPv6 one byte over the next hop's MTU", sized6("2001:db8:9::1", small + 1), PassMtu),
        drop("IPv4 blackhole route", udp4("10.7.0.1"), DropBlackhole),
        drop("IPv6 blackhole route", udp6("2001:db8:7::1"), DropBlackhole),
        drop("IPv4 blackhole route, TTL 1", ttl4("10.7.0.1", 1), DropBlackhole),
        pass("IPv4 unreachable route", udp4("10.8.0.1"), PassUnreachable),
        pass("IPv6 unreachable route", udp6("2001:db8:8::1"), PassUnreachable),
        pass("IPv4 pass route (a type XDP does not forward)", udp4("10.12.0.1"), PassOther),
        pass("IPv4 ECMP route to a group with no members", udp4("10.13.0.1"), PassOther),
        pass("next hop with egress ifindex 0", udp4("10.10.0.1"), PassNoEgress),
    ];
    lab.check_all(&cases);

    // A second packet to the same destination within NEIGH_REQUEST_INTERVAL_NS (500 ms) is
    // passed again but not reported again. Should this machine stall between the two runs for
    // longer than the interval, the second request is legitimate and not checked.
    let first =
        Case::pass("connected, first packet: reported", IN0, udp4("10.5.0.77"), PassNeighbour)
            .with_neigh(12, FAMILY_V4, &ip4("10.5.0.77"));
    lab.check(&first).unwrap_or_else(|e| panic!("{}: {e}", first.name));
    let started = Instant::now();
    let again = Case::pass("connected, again: rate-limited", IN0, udp4("10.5.0.77"), PassNeighbour);
    let result = lab.check(&again);
    if started.elapsed() < Duration::from_millis(400) {
        result.unwrap_or_else(|e| panic!("{}: {e}", again.name));
    }
}

/// Frames that are not for forwarding: multicast, broadcast, martians, other hosts, not IP,
/// unknown interfaces.
#[test]
fn exceptions_addressing() {
    use Reason::{
        PassBroadcast, PassMartian, PassMulticast, PassNotIp, PassOtherHost, PassUnknownIface,
    };
    let Some(mut lab) = Lab::new("exceptions_addressing") else { return };
    let arp = |dst_mac| {
        // Who has 10.0.0.1? Tell 192.0.2.10.
        let mut b = vec![0, 1, 8, 0, 6, 4, 0, 1];
        b.extend_from_slice(&HOST_MAC);
        b.extend_from_slice(&ip4(SRC4));
        b.extend_from_slice(&[0; 6]);
        b.extend_from_slice(&ip4("10.0.0.1"));
        Frame::other(dst_mac, HOST_MAC, ETH_P_ARP, b)
    };
    let mcast4 = to_mac(udp4("224.0.0.5"), [0x01, 0x00, 0x5e, 0, 0, 5]);
    let mcast6 = to_mac(udp6("ff02::1"), [0x33, 0x33, 0, 0, 0, 1]);
    let lldp = Frame::other([0x01, 0x80, 0xc2, 0, 0, 0x0e], HOST_MAC, ETH_P_LLDP, payload(46));
    let out1 = Port { ifindex: 11, slot: 3 };
    let pass = |name: &str, frame: Frame, reason| Case::pass(name, IN0, frame, reason);
    #[rustfmt::skip]
    let cases = vec![
        pass("IPv4 multicast 224.0.0.5 to 01:00:5e:00:00:05", mcast4, PassMulticast),
        pass("IPv6 multicast ff02::1 to 33:33:00:00:00:01", mcast6, PassMulticast),
        pass("IPv4 multicast 239.1.1.1 to the router's MAC", udp4("239.1.1.1"), PassMulticast),
        pass("IPv6 multicast ff0e::1 to the router's MAC", udp6("ff0e::1"), PassMulticast),
        pass("LLDP to 01:80:c2:00:00:0e", lldp, PassMulticast),
        pass("IPv4 unicast address to ff:ff:ff:ff:ff:ff", to_mac(udp4("10.1.3.3"), BROADCAST_MAC), PassBroadcast),
        pass("IPv4 255.255.255.255 to ff:ff:ff:ff:ff:ff", to_mac(udp4("255.255.255.255"), BROADCAST_MAC), PassBroadcast),
        pass("IPv4 255.255.255.255 to the router's MAC", udp4("255.255.255.255"), PassBroadcast),
        pass("ARP request (broadcast)", arp(BROADCAST_MAC), PassBroadcast),
        pass("ARP reply to the router", arp(ROUTER_MAC), PassNotIp),
        pass("bare Ethernet header (14 bytes), EtherType LLDP", Frame::other(ROUTER_MAC, HOST_MAC, ETH_P_LLDP, Vec::new()), PassNotIp),
        pass("IPv4 martian source 127.0.0.1", from4("127.0.0.1", "10.1.3.3"), PassMartian),
        pass("IPv4 martian source 0.0.0.0", from4("0.0.0.0", "10.1.3.3"), PassMartian),
        pass("IPv4 martian source 169.254.1.1", from4("169.254.1.1", "10.1.3.3"), PassMartian),
        pass("IPv4 martian source 224.0.0.1", from4("224.0.0.1", "10.1.3.3"), PassMartian),
        pass("IPv4 martian source 255.255.255.255", from4("255.255.255.255", "10.1.3.3"), PassMartian),
        pass("IPv4 martian destination 127.0.0.1", udp4("127.0.0.1"), PassMartian),
        pass("IPv4 martian destination 0.1.2.3", udp4("0.1.2.3"), PassMartian),
        pass("IPv4 martian destination 169.254.0.9", udp4("169.254.0.9"), PassMartian),
        pass("IPv4 class E destination 240.0.0.1", udp4("240.0.0.1"), PassMartian),
        pass("IPv6 martian destination fe80::1", udp6("fe80::1"), PassMartian),
        pass("IPv6 martian destination febf::1 (still fe80::/10)", udp6("febf::1"), PassMartian),
        pass("IPv6 martian destination ::1", udp6("::1"), PassMartian),
        pass("IPv6 martian destination ::", udp6("::"), PassMartian),
        pass("IPv6 martian source ::1", from6("::1", "2001:db8:1:1::5"), PassMartian),
        pass("IPv6 martian source fe80::5", from6("fe80::5", "2001:db8:1:1::5"), PassMartian),
        pass("IPv6 martian source ff02::1", from6("ff02::1", "2001:db8:1:1::5"), PassMartian),
        pass("IPv4 unicast to another host's MAC", to_mac(udp4("10.1.3.3"), OTHER_MAC), PassOtherHost),
        pass("IPv6 unicast to another host's MAC", to_mac(udp6("2001:db8:1:1::5"), OTHER_MAC), PassOtherHost),
        Case::pass("IPv4 arriving on out1, to in0's MAC", out1, udp4("10.1.3.3"), PassOtherHost),
        Case::pass("IPv4 on an interface Sluice does not serve (lo)", UNKNOWN, udp4("10.1.3.3"), PassUnknownIface),
        Case::pass("ARP on an interface Sluice does not serve (lo)", UNKNOWN, arp(BROADCAST_MAC), PassUnknownIface),
    ];
    lab.check_all(&cases);
}

/// Truncated and inconsistent headers: dropped.
#[test]
fn exceptions_malformed() {
    use Reason::DropMalformed;
    let Some(mut lab) = Lab::new("exceptions_malformed") else { return };
    let good = udp4("10.1.3.3");
    let good6 = udp6("2001:db8:1:1::5");
    let cut = |f: &Frame, n: usize| f.bytes()[..n].to_vec();
    let mangle6 = |edit: fn(&mut [u8])| {
        let mut b = good6.bytes();
        edit(&mut b[14..]);
        b
    };
    let drop = |name: &str, frame: Vec<u8>| Case::drop(name, IN0, frame, DropMalformed);
    #[rustfmt::skip]
    let cases = vec![
        // The kernel takes no packet shorter than ETH_HLEN; Lab::run passes shorter ones as a
        // linear part of that length followed by a fragment the program cannot see.
        drop("truncated Ethernet header (10 bytes)", cut(&good, 10)),
        drop("truncated Ethernet header (13 bytes)", cut(&good, 13)),
        drop("empty frame", Vec::new()),
        drop("Ethernet header only, EtherType IPv4", cut(&good, 14)),
        drop("truncated IPv4 header (10 of 20 bytes)", cut(&good, 14 + 10)),
        drop("truncated IPv4 header (19 of 20 bytes)", cut(&good, 14 + 19)),
        drop("truncated IPv6 header (30 of 40 bytes)", cut(&good6, 14 + 30)),
        drop("truncated IPv6 header (39 of 40 bytes)", cut(&good6, 14 + 39)),
        drop("IPv4 IHL 4", mangle4(&good, true, |h| h[0] = 0x44)),
        drop("IPv4 IHL 0", mangle4(&good, true, |h| h[0] = 0x40)),
        drop("IPv4 IHL 15, beyond the total length", mangle4(&good, true, |h| h[0] = 0x4f)),
        drop("IPv4 version 6 behind EtherType IPv4", mangle4(&good, true, |h| h[0] = 0x65)),
        drop("IPv4 total length one beyond the frame", mangle4(&good, true, |h| set16(h, 2, get16(h, 2) + 1))),
        drop("IPv4 total length shorter than the header", mangle4(&good, true, |h| set16(h, 2, 19))),
        drop("IPv4 bad header checksum", mangle4(&good, false, |h| h[11] ^= 0x01)),
        drop("IPv4 bad header checksum (TTL changed, checksum not)", mangle4(&good, false, |h| h[8] = 63)),
        drop("IPv4 bad header checksum 0xffff", mangle4(&good, false, |h| set16(h, 10, 0xffff))),
        drop("IPv6 payload length one beyond the frame", mangle6(|h| set16(h, 4, get16(h, 4) + 1))),
        drop("IPv6 version 4 behind EtherType IPv6", mangle6(|h| h[0] = 0x40)),
    ];
    lab.check_all(&cases);
}

#[test]
fn vlan() {
    use Reason::{
        DropBlackhole, DropMalformed, PassBroadcast, PassLocal, PassMtu, PassNotIp, PassOtherHost,
        PassTtl, PassUnknownIface,
    };
    let Some(mut lab) = Lab::new("vlan") else { return };
    let tag = |f: Frame| f.tagged(VLAN_IN);
    let fwd =
        |name: &str, input: Frame, id: u32| Case::forward(name, IN0, &input, &routed(&input, id));
    let fwd100 = |name: &str, input: Frame, id: u32| {
        Case::forward(name, IN0_V100, &input, &routed(&input, id))
    };
    let pass100 = |name: &str, frame: Frame, reason| Case::pass(name, IN0_V100, frame, reason);
    let arp = Frame::other(ROUTER_MAC, HOST_MAC, ETH_P_ARP, payload(28));
    let tagged = tag(udp4("10.1.3.3"));
    let small = SMALL_MTU as usize;
    #[rustfmt::skip]
    let cases = vec![
        fwd100("tagged (100) in -> untagged out, IPv4", tag(udp4("10.1.3.3")), nh::OUT1),
        fwd100("tagged (100) in -> untagged out, IPv6", tag(udp6("2001:db8:1:1::5")), nh::OUT1),
        fwd100("tagged (100, priority 3) in -> untagged out", udp4("10.1.3.3").tagged(3 << 13 | VLAN_IN), nh::OUT1),
        fwd("untagged in -> tagged (200, priority 5) out, IPv4", udp4("10.3.0.5"), nh::VLAN200),
        fwd("untagged in -> tagged out, IPv6", udp6("2001:db8:3::5"), nh::VLAN200),
        fwd100("tagged (100) in -> tagged (200) out: tag rewritten, IPv4", tag(udp4("10.3.0.5")), nh::VLAN200),
        fwd100("tagged (100) in -> tagged (200) out: tag rewritten, IPv6", tag(udp6("2001:db8:3::5")), nh::VLAN200),
        fwd("priority-tagged (VLAN 0) in: the untagged interface, tag removed", udp4("10.1.3.3").tagged(2 << 13), nh::OUT1),
        fwd("priority-tagged (VLAN 0) in -> tagged out", udp4("10.3.0.5").tagged(0), nh::VLAN200),
        Case::pass("tagged with a VLAN Sluice does not serve (300)", UNKNOWN, udp4("10.1.3.3").tagged(300), PassUnknownIface),
        pass100("tagged TTL 1", tag(ttl4("10.1.3.3", 1)), PassTtl),
        pass100("tagged ARP", tag(arp), PassNotIp),
        pass100("tagged to another host's MAC", to_mac(tagged.clone(), OTHER_MAC), PassOtherHost),
        pass100("tagged broadcast", to_mac(tagged.clone(), BROADCAST_MAC), PassBroadcast),
        pass100("tagged to a local address", tag(udp4("10.6.0.1")), PassLocal),
        pass100("tagged, one byte over the MTU", tag(sized4("10.9.0.1", small + 1)), PassMtu),
        Case::drop("tagged, blackhole", IN0_V100, tag(udp4("10.7.0.1")), DropBlackhole),
        Case::drop("truncated 802.1Q tag: counted on the untagged interface", IN0, tagged.bytes()[..16].to_vec(), DropMalformed),
        Case::drop("tagged, truncated IPv4 header", IN0_V100, tagged.bytes()[..18 + 12].to_vec(), DropMalformed),
        Case::drop("tagged, bad IPv4 checksum", IN0_V100, mangle4(&tagged, false, |h| h[10] ^= 0x80), DropMalformed),
    ];
    lab.check_all(&cases);
}

/// The ECMP member the XDP program must choose, from the shared hash and group functions.
fn expected_member(src: &[u8], dst: &[u8], proto: u8, ports: u32) -> u32 {
    let (mut s, mut d) = ([0u8; 16], [0u8; 16]);
    s[..src.len()].copy_from_slice(src);
    d[..dst.len()].copy_from_slice(dst);
    let hash = flow_hash(&flow_words(&s, &d, proto, ports), FLOW_HASH_SEED);
    ecmp_group(group::THREE).pick(hash).expect("the group has members")
}

#[test]
fn ecmp() {
    let Some(mut lab) = Lab::new("ecmp") else { return };
    let mut cases = Vec::new();
    let mut hits = [0usize; ECMP_MEMBERS.len()];
    let mut flow = |name: String, input: Frame, member: u32| {
        let i = ECMP_MEMBERS.iter().position(|&m| m == member).expect("a member");
        hits[i] += 1;
        let output = routed(&input, member);
        cases.push(Case::forward(format!("{name} -> next hop {member}"), IN0, &input, &output));
    };
    // Same addresses, different ports (UDP and TCP): the flows spread over every member.
    for sport in 20000..20096u16 {
        let l4 = if sport % 2 == 0 { L4::udp(sport, 53) } else { L4::tcp(sport, 443) };
        let ip = Ipv4::new(ip4(SRC4), ip4("10.2.0.1"), l4);
        let member = expected_member(&ip.src, &ip.dst, ip.l4.proto(false), ip.l4.ports_word());
        flow(format!("IPv4 flow sport {sport}"), Frame::v4(ROUTER_MAC, HOST_MAC, ip), member);
    }
    for sport in 30000..30048u16 {
        let ip = Ipv6::new(ip6(SRC6), ip6("2001:db8:2::1"), L4::udp(sport, 443));
        let member = expected_member(&ip.src, &ip.dst, ip.l4.proto(true), ip.l4.ports_word());
        flow(format!("IPv6 flow sport {sport}"), Frame::v6(ROUTER_MAC, HOST_MAC, ip), member);
    }
    // ICMP carries no ports: it hashes with ports 0.
    let echo = Ipv4::new(ip4(SRC4), ip4("10.2.0.1"), L4::Echo { id: 0x4242, seq: 9 });
    let member = expected_member(&echo.src, &echo.dst, IPPROTO_ICMP, 0);
    flow("IPv4 ICMP echo".into(), Frame::v4(ROUTER_MAC, HOST_MAC, echo), member);

    // The fragments of one datagram: only the first carries the UDP header, so all of them hash
    // with ports 0. The datagram is one whose ports would pick another member, so the test tells
    // "ports ignored for fragments" from "ports hashed when present".
    let (src, dst) = (ip4(SRC4), ip4("10.2.0.9"));
    let sport = (1024..u16::MAX)
        .find(|&s| {
            let ports = L4::udp(s, 5001).ports_word();
            expected_member(&src, &dst, IPPROTO_UDP, ports)
                != expected_member(&src, &dst, IPPROTO_UDP, 0)
        })
        .expect("some source port hashes to another member");
    let datagram = Ipv4::new(src, dst, L4::Udp { sport, dport: 5001, payload: payload(64) })
        .bytes()[20..]
        .to_vec();
    assert_eq!(datagram.len(), 72);
    let member = expected_member(&src, &dst, IPPROTO_UDP, 0);
    for (name, frag, part) in [
        ("IPv4 first fragment (MF, offset 0, UDP header)", IP_MF, &datagram[..40]),
        ("IPv4 middle fragment (MF, offset 40)", IP_MF | 5, &datagram[40..56]),
        ("IPv4 last fragment (offset 56)", 7, &datagram[56..]),
    ] {
        let mut ip = Ipv4::new(src, dst, L4::Raw { proto: IPPROTO_UDP, bytes: part.to_vec() });
        ip.frag = frag;
        ip.ident = 0xbeef;
        flow(name.into(), Frame::v4(ROUTER_MAC, HOST_MAC, ip), member);
    }
    // An IPv6 fragment hashes on the Fragment header's protocol (44), without ports.
    let dst6 = ip6("2001:db8:2::9");
    let mut ext = vec![IPPROTO_UDP, 0, 0, 1, 0, 0, 0xbe, 0xef];
    ext.extend_from_slice(&datagram[..40]);
    let ip = Ipv6::new(ip6(SRC6), dst6, L4::Raw { proto: IPPROTO_FRAGMENT, bytes: ext });
    let member = expected_member(&ip.src, &dst6, IPPROTO_FRAGMENT, 0);
    flow("IPv6 first fragment".into(), Frame::v6(ROUTER_MAC, HOST_MAC, ip), member);

    assert!(hits.iter().all(|&h| h >= 20), "the flows must reach every member, got {hits:?}");
    lab.check_all(&cases);
}

/// A next hop whose ifindex is missing from DEVMAP (a race with the control plane) goes to the
/// kernel unchanged: the egress is claimed before anything in the frame is rewritten.
#[test]
fn egress_not_in_devmap_goes_to_the_kernel() {
    let Some(mut lab) = Lab::new("egress_not_in_devmap_goes_to_the_kernel") else { return };
    lab.check_all(&[Case::pass(
        "next hop ifindex 99, not in DEVMAP",
        IN0,
        udp4("10.11.0.1"),
        Reason::PassNoEgress,
    )]);
}

#[test]
fn a_held_egress_goes_to_the_kernel_untouched() {
    use aya::maps::{Array, HashMap};
    use sluice_common::xmit::{EgressHold, hold_cause, names};
    let Some(mut lab) = Lab::new("a_held_egress_goes_to_the_kernel_untouched") else { return };
    let frame = udp4("10.1.3.3");
    let hold = EgressHold { cause: hold_cause::NO_XDP_XMIT, ..EgressHold::default() };
    let set = |lab: &mut Lab, held: Option<u32>, count: u32| {
        let mut map: HashMap<_, u32, EgressHold> =
            HashMap::try_from(lab.ebpf_mut().map_mut(names::EGRESS_HOLD).expect("EGRESS_HOLD"))
                .expect("a hash");
        match held {
            Some(ifindex) => map.insert(ifindex, hold, 0).expect("hold"),
            None => map.remove(&11).expect("release"),
        }
        let mut n: Array<_, u32> =
            Array::try_from(lab.ebpf_mut().map_mut(names::EGRESS_HOLDS).expect("EGRESS_HOLDS"))
                .expect("an array");
        n.set(0, count, 0).expect("count");
    };
    // out1 (ifindex 11) held: the frame goes to the kernel as it came.
    set(&mut lab, Some(11), 1);
    lab.check_all(&[Case::pass(
        "IPv4 UDP to a held egress",
        IN0,
        frame.clone(),
        Reason::PassEgressNotReady,
    )]);
    // Another device held: out1's frames are forwarded.
    set(&mut lab, None, 0);
    set(&mut lab, Some(12), 1);
    lab.check_all(&[Case::forward(
        "IPv4 UDP, another egress held",
        IN0,
        &frame,
        &routed(&frame, nh::OUT1),
    )]);
    // The count says nothing is held: the hash is not read.
    set(&mut lab, Some(11), 0);
    lab.check_all(&[Case::forward(
        "IPv4 UDP, hold count 0",
        IN0,
        &frame,
        &routed(&frame, nh::OUT1),
    )]);
}

/// Runs `frame` through the program while a thread keeps writing `changes(i)` for i = 0, 1, ...
/// (after `setup`), and checks every run forwarded to next hop `OUT1` or `OUT2`.
fn assert_races_forward_to_old_or_new<I: IntoIterator<Item = Op>>(
    test: &str,
    setup: &Op,
    frame: &Frame,
    changes: impl Fn(u32) -> I + Sync,
) {
    let Some(mut lab) = Lab::new(test) else { return };
    lab.maps.write(setup).expect("covering route");
    let via1 = routed(frame, nh::OUT1).bytes();
    let via2 = routed(frame, nh::OUT2).bytes();
    let deadline = Instant::now() + Duration::from_secs(3);
    let runs = lab.run_while(IN0.ifindex, &frame.bytes(), |maps| {
        let mut i = 0u32;
        while Instant::now() < deadline && i < 20_000 {
            for op in changes(i) {
                maps.write(&op).expect("route change");
            }
            i += 1;
        }
    });
    assert!(runs.len() > 100, "only {} lookups ran during the updates", runs.len());
    for (n, run) in runs.iter().enumerate() {
        assert_eq!(run.verdict, lab::XDP_REDIRECT, "run {n} of {}: not forwarded", runs.len());
        assert!(
            run.output == via1 || run.output == via2,
            "run {n} of {}: forwarded to neither the old nor the new next hop",
            runs.len()
        );
    }
}

fn forward(id: u32) -> sluice_common::Route {
    route(RouteAction::Forward, id)
}

fn old_or_new(i: u32) -> u32 {
    if i.is_multiple_of(2) { nh::OUT2 } else { nh::OUT1 }
}

/// Lookups racing with route changes see the old route or the new one, never a missing or torn
/// entry: the writer keeps replacing the covering /16 and, next to the address looked up, adds and
/// removes a /25, which makes its /24 go through second-level group creation (filled before it is
/// published) and collapse (the group is retired, not reused at once) again and again.
#[test]
fn lookups_racing_updates_see_the_old_or_the_new_route() {
    let covering: ipnet::Ipv4Net = "10.20.0.0/16".parse().expect("prefix");
    let neighbour: ipnet::Ipv4Net = "10.20.5.128/25".parse().expect("prefix");
    assert_races_forward_to_old_or_new(
        "lookups_racing_updates_see_the_old_or_the_new_route",
        &Op::SetRouteV4(covering, forward(nh::OUT1)),
        &udp4("10.20.5.9"),
        |i| {
            [
                Op::SetRouteV4(neighbour, forward(nh::OUT3)),
                Op::SetRouteV4(covering, forward(old_or_new(i))),
                Op::DelRouteV4(neighbour),
            ]
        },
    );
}

/// IPv4 lookups through the summaries before the first level: a /8 with one route everywhere is
/// answered by its /8 entry, a /8 with a /16 route under it by its /16 entries, a /16 with a /24
/// and a /25 under it by the first level and a group; and each is answered from higher up again
/// once the more-specifics under it are gone.
#[test]
fn ipv4_lookups_through_the_summaries() {
    let Some(mut lab) = Lab::new("ipv4_lookups_through_the_summaries") else { return };
    let write = |lab: &mut Lab, op: Op| lab.maps.write(&op).expect("route change");
    let net = |s: &str| -> ipnet::Ipv4Net { s.parse().expect("prefix") };
    for (prefix, id) in [
        ("44.0.0.0/8", nh::OUT1),
        ("45.0.0.0/8", nh::OUT1),
        ("45.7.0.0/16", nh::OUT2),
        ("45.7.9.0/24", nh::OUT3),
        ("45.7.9.128/25", nh::OUT4),
    ] {
        write(&mut lab, Op::SetRouteV4(net(prefix), forward(id)));
    }
    let case = |dst: &str, id: u32| {
        Case::forward(format!("{dst} via next hop {id}"), IN0, &udp4(dst), &routed(&udp4(dst), id))
    };
    lab.check_all(&[
        case("44.200.1.1", nh::OUT1),
        case("45.1.1.1", nh::OUT1),
        case("45.7.1.1", nh::OUT2),
        case("45.7.9.1", nh::OUT3),
        case("45.7.9.200", nh::OUT4),
    ]);
    write(&mut lab, Op::DelRouteV4(net("45.7.9.128/25")));
    write(&mut lab, Op::DelRouteV4(net("45.7.9.0/24")));
    lab.check_all(&[case("45.7.9.200", nh::OUT2), case("45.7.9.1", nh::OUT2)]);
    write(&mut lab, Op::DelRouteV4(net("45.7.0.0/16")));
    lab.check_all(&[case("45.7.9.200", nh::OUT1), case("45.1.1.1", nh::OUT1)]);
}

/// The same race for IPv6: the /32 above goes from a compact node (the /48 alone) to expanded
/// nodes (with the /65, too long for a compact node) and back again and again while lookups run.
#[test]
fn ipv6_lookups_racing_updates_see_the_old_or_the_new_route() {
    let covering: ipnet::Ipv6Net = "2001:db8:20::/48".parse().expect("prefix");
    let neighbour: ipnet::Ipv6Net = "2001:db8:20:5:8000::/65".parse().expect("prefix");
    assert_races_forward_to_old_or_new(
        "ipv6_lookups_racing_updates_see_the_old_or_the_new_route",
        &Op::SetRouteV6(covering, forward(nh::OUT1)),
        &udp6("2001:db8:20:5::9"),
        |i| {
            [
                Op::SetRouteV6(neighbour, forward(nh::OUT3)),
                Op::SetRouteV6(covering, forward(old_or_new(i))),
                Op::DelRouteV6(neighbour),
            ]
        },
    );
}

/// The same race through a /32 whose compact node grows to two lines (nine /48s), then gives way
/// to expanded nodes (seventeen), and shrinks back to one line, below the /16's wide node, while
/// the /48 looked up changes its next hop.
#[test]
fn ipv6_lookups_racing_compact_nodes_of_two_lines_see_the_old_or_the_new_route() {
    let covering: ipnet::Ipv6Net = "2001:db8:20::/48".parse().expect("prefix");
    let others: Vec<ipnet::Ipv6Net> =
        (0..16).map(|j| format!("2001:db8:{:x}::/48", 0x30 + j).parse().expect("prefix")).collect();
    assert_races_forward_to_old_or_new(
        "ipv6_lookups_racing_compact_nodes_of_two_lines",
        &Op::SetRouteV6(covering, forward(nh::OUT1)),
        &udp6("2001:db8:20:5::9"),
        |i| {
            let mut ops: Vec<Op> =
                others[..8].iter().map(|n| Op::SetRouteV6(*n, forward(nh::OUT3))).collect();
            ops.push(Op::SetRouteV6(covering, forward(old_or_new(i))));
            ops.extend(others[8..].iter().map(|n| Op::SetRouteV6(*n, forward(nh::OUT3))));
            ops.extend(others.iter().map(|n| Op::DelRouteV6(*n)));
            ops
        },
    );
}

/// IPv6 lookups through each kind of node: a /16's wide node answering for a /32, a compact
/// node of one line and of two below it, expanded 4-bit nodes below it, and the 4-bit nodes from
/// bit 16 of the /16s that come after the wide nodes are all given out.
#[test]
fn ipv6_lookups_through_wide_compact_and_4_bit_nodes() {
    let Some(mut lab) = Lab::new("ipv6_lookups_through_wide_compact") else { return };
    let write = |lab: &mut Lab, op: Op| lab.maps.write(&op).expect("route change");
    let net = |s: &str| -> ipnet::Ipv6Net { s.parse().expect("prefix") };
    write(&mut lab, Op::SetRouteV6(net("2a00::/12"), forward(nh::OUT1)));
    write(&mut lab, Op::SetRouteV6(net("2a01:db8::/32"), forward(nh::OUT2)));
    for j in 0..10u32 {
        let id = if j % 2 == 0 { nh::OUT3 } else { nh::OUT4 };
        write(&mut lab, Op::SetRouteV6(net(&format!("2a01:db9:{j:x}::/48")), forward(id)));
    }
    write(&mut lab, Op::SetRouteV6(net("2a01:dba:1:2::/64"), forward(nh::OUT3)));
    // 2a01::/16 has the first wide node; 3000::/16 to 307e::/16 take the others, and the /16s
    // after them get 4-bit nodes.
    let wide = sluice_core::trie6::MAX_WIDE;
    for k in 0..wide + 2 {
        let prefix = net(&format!("{:x}:db8:1::/48", 0x3000 + k));
        write(&mut lab, Op::SetRouteV6(prefix, forward(nh::OUT4)));
    }
    let case = |dst: &str, id: u32| {
        Case::forward(format!("{dst} via next hop {id}"), IN0, &udp6(dst), &routed(&udp6(dst), id))
    };
    let last_wide = format!("{:x}:db8:1::5", 0x3000 + wide - 2);
    let narrow = format!("{:x}:db8:1::5", 0x3000 + wide + 1);
    lab.check_all(&[
        case("2a00:5::1", nh::OUT1),
        case("2a01:db8:5::1", nh::OUT2),
        case("2a01:db9:3::1", nh::OUT4),
        case("2a01:db9:8::1", nh::OUT3),
        case("2a01:db9:9:ffff::1", nh::OUT4),
        case("2a01:db9:ff::1", nh::OUT1),
        case("2a01:dba:1:2::5", nh::OUT3),
        case("2a01:dba:1:3::5", nh::OUT1),
        case(&last_wide, nh::OUT4),
        case(&narrow, nh::OUT4),
    ]);
    // Down to three /48s: a compact node of one line again.
    for j in 3..10u32 {
        write(&mut lab, Op::DelRouteV6(net(&format!("2a01:db9:{j:x}::/48"))));
    }
    lab.check_all(&[
        case("2a01:db9:2::1", nh::OUT3),
        case("2a01:db9:1::1", nh::OUT4),
        case("2a01:db9:9::1", nh::OUT1),
    ]);
}

/// Forwarded packets are sampled 1 in `TALKER_SAMPLE_EVERY` by source into `TALKERS`, with the
/// frames' bytes; packets the kernel gets are not.
#[test]
fn forwarded_packets_are_sampled_by_source_for_the_top_talkers() {
    use aya::maps::{MapData, PerCpuHashMap};
    use sluice_common::{Counter, TALKER_SAMPLE_EVERY, TalkerKey, names};

    let Some(mut lab) = Lab::new("forwarded_packets_are_sampled") else { return };
    install_default_routes(&mut lab);
    let rounds = 40;
    let runs = TALKER_SAMPLE_EVERY * rounds;
    let (v4, v6, local) = (udp4("10.1.3.3"), udp6("2001:db8:1:1::5"), ttl4("10.1.3.3", 1));
    for _ in 0..runs {
        for frame in [&v4, &v6, &local] {
            lab.run(IN0.ifindex, &frame.bytes());
        }
    }
    let map = lab.ebpf_mut().map(names::TALKERS).expect("map TALKERS is in the object");
    let map: PerCpuHashMap<&MapData, TalkerKey, Counter> =
        PerCpuHashMap::try_from(map).expect("TALKERS is a per-CPU hash");
    let mut sampled = Vec::new();
    for item in &map {
        let (key, per_cpu) = item.expect("read TALKERS");
        let packets: u64 = per_cpu.iter().map(|c| c.packets).sum();
        let bytes: u64 = per_cpu.iter().map(|c| c.bytes).sum();
        sampled.push((sluice_common::addr_of(key.family, &key.addr).to_string(), packets, bytes));
    }
    sampled.sort();
    assert_eq!(sampled.len(), 2, "one entry a forwarding source: {sampled:?}");
    for ((addr, packets, bytes), (want, frame)) in sampled.iter().zip([(SRC4, &v4), (SRC6, &v6)]) {
        assert_eq!(addr, want);
        // 1 in N on each CPU's counter: about `rounds` over all of them (this thread may move).
        assert!((rounds / 3..=rounds * 3).contains(packets), "{addr}: {packets} of {runs}");
        assert_eq!(*bytes, packets * frame.bytes().len() as u64, "{addr}: the frames' bytes");
    }
}
