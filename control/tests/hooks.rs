//! Packet tests of the hook tables through `BPF_PROG_TEST_RUN`: the filter (sources and
//! destinations, drop, pass and count, longest prefix first), the per-source rate limiter, and
//! 1-in-N sampling into the ring buffer, written through the control plane's writer
//! (`sluice::hooks`) as a plugin host would. Same lab and requirements as `packet.rs`.

use sluice_testbed::{fixture as lab, frame};

use std::{
    net::IpAddr,
    thread,
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use frame::{Frame, Ipv4, Ipv6, L4, ip4, ip6};
use lab::{Case, HOST_MAC, IN0, Lab, ROUTER_MAC, nh, route, routed};
use sluice_common::{Reason, RouteAction, names};
use sluice_core::fib::Op;
use sluice_dataplane::hooks::{Action, AyaHookMaps, Direction, HookOp, HookTables, drain_samples};

fn from4(src: &str, dst: &str) -> Frame {
    Frame::v4(ROUTER_MAC, HOST_MAC, Ipv4::new(ip4(src), ip4(dst), L4::udp(40000, 53)))
}

fn from6(src: &str, dst: &str) -> Frame {
    Frame::v6(ROUTER_MAC, HOST_MAC, Ipv6::new(ip6(src), ip6(dst), L4::udp(40000, 53)))
}

/// The lab with default routes out of `out4`, and the hook tables' writer.
fn lab(test: &str) -> Option<(Lab, HookTables<AyaHookMaps>)> {
    let mut lab = Lab::new(test)?;
    let r = route(RouteAction::Forward, nh::OUT4);
    for op in [
        Op::SetRouteV4("0.0.0.0/0".parse().expect("prefix"), r),
        Op::SetRouteV6("::/0".parse().expect("prefix"), r),
    ] {
        lab.maps.write(&op).expect("default route");
    }
    let maps = AyaHookMaps::take(lab.ebpf_mut()).expect("the hook maps are in the object");
    Some((lab, HookTables::new(maps)))
}

fn forward(name: &str, input: &Frame) -> Case {
    Case::forward(name, IN0, input, &routed(input, nh::OUT4))
}

fn filter(direction: Direction, prefix: &str, action: Action) -> HookOp {
    HookOp::SetFilter { direction, prefix: prefix.parse().expect("prefix"), action }
}

#[test]
fn filters_drop_pass_and_count_by_source_and_destination() {
    let Some((mut lab, mut hooks)) = lab("filters") else { return };
    let acl = [
        filter(Direction::Src, "192.0.2.0/24", Action::Drop),
        filter(Direction::Src, "192.0.2.64/26", Action::Count),
        filter(Direction::Dst, "198.51.100.0/24", Action::Pass),
        filter(Direction::Dst, "198.51.100.128/25", Action::Count),
        filter(Direction::Src, "2001:db8:a::/48", Action::Drop),
        filter(Direction::Dst, "2001:db8:ff::/48", Action::Pass),
    ];
    let cases_before = [
        forward("no rules yet: forwarded", &from4("192.0.2.10", "203.0.113.9")),
        forward("no rules yet: IPv6 forwarded", &from6("2001:db8:a::10", "2001:db8:50::1")),
    ];
    lab.check_all(&cases_before);
    hooks.apply("acl", &acl).expect("valid rules");
    lab.check_all(&[
        Case::drop(
            "source in a drop rule",
            IN0,
            from4("192.0.2.10", "203.0.113.9").bytes(),
            Reason::DropFiltered,
        ),
        // The longer source prefix (count) wins over the /24 (drop): counted, then forwarded.
        forward("source in a longer count rule", &from4("192.0.2.70", "203.0.113.9")),
        Case::pass(
            "destination in a pass rule",
            IN0,
            from4("203.0.113.5", "198.51.100.5").bytes(),
            Reason::PassFiltered,
        ),
        forward("destination in a longer count rule", &from4("203.0.113.5", "198.51.100.200")),
        forward("no rule matches", &from4("203.0.113.5", "203.0.113.9")),
        Case::drop(
            "IPv6 source in a drop rule",
            IN0,
            from6("2001:db8:a::10", "2001:db8:50::1").bytes(),
            Reason::DropFiltered,
        ),
        Case::pass(
            "IPv6 destination in a pass rule",
            IN0,
            from6("2001:db8:b::10", "2001:db8:ff::1").bytes(),
            Reason::PassFiltered,
        ),
        forward("IPv6, no rule matches", &from6("2001:db8:b::10", "2001:db8:50::1")),
    ]);
    let counted: Vec<(String, u64)> = hooks
        .rules(Some("acl"))
        .expect("counters")
        .into_iter()
        .map(|r| (serde_json::to_string(&r.rule).expect("json"), r.packets))
        .filter(|(_, n)| *n > 0)
        .collect();
    assert_eq!(counted.len(), 6, "every rule matched exactly once: {counted:?}");
    assert!(counted.iter().all(|(_, n)| *n == 1), "{counted:?}");

    hooks.remove_owner("acl").expect("removal");
    lab.check_all(&cases_before);
}

#[test]
fn a_pass_does_not_undo_a_drop_or_a_rate_limit_of_a_later_table() {
    let Some((mut lab, mut hooks)) = lab("strictest") else { return };
    hooks
        .apply(
            "guard",
            &[
                filter(Direction::Dst, "198.51.100.0/24", Action::Drop),
                HookOp::SetRateLimit {
                    prefix: "203.0.113.0/24".parse().expect("prefix"),
                    rate_pps: 1,
                    burst: 1,
                },
            ],
        )
        .expect("valid rules");
    hooks
        .apply(
            "opener",
            &[
                filter(Direction::Src, "192.0.2.0/24", Action::Pass),
                filter(Direction::Src, "203.0.113.0/24", Action::Pass),
            ],
        )
        .expect("valid rules");
    let limited = from4("203.0.113.5", "192.0.2.1");
    lab.check_all(&[
        Case::drop(
            "a source pass, then a destination drop",
            IN0,
            from4("192.0.2.10", "198.51.100.5").bytes(),
            Reason::DropFiltered,
        ),
        Case::pass(
            "a source pass alone",
            IN0,
            from4("192.0.2.10", "203.0.113.9").bytes(),
            Reason::PassFiltered,
        ),
        Case::pass("a source pass within its rate", IN0, limited.bytes(), Reason::PassFiltered),
        Case::drop("a source pass over its rate", IN0, limited.bytes(), Reason::DropRateLimited),
    ]);
}

/// Packets the program hands to the kernel whatever the routes say (IPv4 options, an IPv6
/// hop-by-hop header, martian addresses) go through the hook tables first: with the kernel's
/// forwarding on, a filter must not be bypassed by adding an option.
#[test]
fn options_hop_by_hop_and_martians_do_not_bypass_the_filters() {
    let Some((mut lab, mut hooks)) = lab("options") else { return };
    let options =
        |src: &str| from4(src, "203.0.113.9").map4(|ip| ip.options = vec![0x94, 0x04, 0, 0]);
    let hop_by_hop = |src: &str| {
        let dst = ip6("2001:db8:50::1");
        let udp = Ipv6::new(ip6(src), dst, L4::udp(40000, 53)).bytes()[40..].to_vec();
        // Next header UDP (17), length 0 (8 bytes), PadN of 4 bytes.
        let mut ext = vec![17, 0, 0x01, 0x04, 0, 0, 0, 0];
        ext.extend_from_slice(&udp);
        Frame::v6(ROUTER_MAC, HOST_MAC, Ipv6::new(ip6(src), dst, L4::Raw { proto: 0, bytes: ext }))
    };
    hooks
        .apply(
            "acl",
            &[
                filter(Direction::Src, "192.0.2.0/24", Action::Drop),
                filter(Direction::Src, "2001:db8:a::/48", Action::Drop),
                filter(Direction::Src, "169.254.0.0/16", Action::Drop),
                filter(Direction::Src, "fe80::/10", Action::Drop),
            ],
        )
        .expect("valid rules");
    lab.check_all(&[
        Case::drop(
            "IPv4 martian source in a drop rule",
            IN0,
            from4("169.254.7.7", "203.0.113.9").bytes(),
            Reason::DropFiltered,
        ),
        Case::pass(
            "IPv4 martian source in no rule",
            IN0,
            from4("0.1.2.3", "203.0.113.9").bytes(),
            Reason::PassMartian,
        ),
        Case::drop(
            "IPv6 link-local source in a drop rule",
            IN0,
            from6("fe80::7", "2001:db8:50::1").bytes(),
            Reason::DropFiltered,
        ),
        Case::drop(
            "IPv4 options from a dropped source",
            IN0,
            options("192.0.2.10").bytes(),
            Reason::DropFiltered,
        ),
        Case::pass(
            "IPv4 options from another source",
            IN0,
            options("198.51.100.1").bytes(),
            Reason::PassOptions,
        ),
        Case::drop(
            "IPv6 hop-by-hop from a dropped source",
            IN0,
            hop_by_hop("2001:db8:a::10").bytes(),
            Reason::DropFiltered,
        ),
        Case::pass(
            "IPv6 hop-by-hop from another source",
            IN0,
            hop_by_hop("2001:db8:b::10").bytes(),
            Reason::PassOptions,
        ),
    ]);
}

#[test]
fn the_rate_limiter_lets_a_burst_through_then_drops_until_tokens_return() {
    let Some((mut lab, mut hooks)) = lab("rate limiter") else { return };
    hooks
        .apply(
            "guard",
            &[HookOp::SetRateLimit {
                prefix: "192.0.2.0/24".parse().expect("prefix"),
                rate_pps: 1,
                burst: 3,
            }],
        )
        .expect("valid rule");
    let flood = from4("192.0.2.10", "203.0.113.9");
    let limited = Case::drop("over the rate", IN0, flood.bytes(), Reason::DropRateLimited);
    lab.check_all(&[
        forward("1st of the burst", &flood),
        forward("2nd of the burst", &flood),
        forward("3rd of the burst", &flood),
        limited,
    ]);
    // The bucket is empty from here: one token a second comes back.
    let emptied = Instant::now();
    lab.check_all(&[
        forward("another source has a bucket of its own", &from4("192.0.2.11", "203.0.113.9")),
        forward("a source outside the rule is not limited", &from4("203.0.113.5", "203.0.113.9")),
    ]);
    thread::sleep(Duration::from_millis(1100));
    // Sent until one is dropped: as many pass as tokens came back in the time it took, which on a
    // loaded machine can be more than the 1.1 s slept.
    let first = emptied.elapsed();
    let mut passed = 0u32;
    let taken =
        Case::drop("the tokens back were taken", IN0, flood.bytes(), Reason::DropRateLimited);
    let last = loop {
        match lab.check(&taken) {
            Ok(()) => break emptied.elapsed(),
            Err(e) => {
                assert!(e.contains("got XDP_REDIRECT"), "forwarded while a token is left: {e}");
            }
        }
        passed += 1;
        assert!(passed <= 10, "the bucket refills faster than its rate");
    };
    println!("rate limiter: {passed} token(s) back between {first:?} and {last:?} after the burst");
    // At most the burst (3) is held; less than a token was left when the bucket emptied.
    let low = u32::try_from(first.as_secs()).unwrap_or(u32::MAX).clamp(1, 3);
    let high = u32::try_from(last.as_secs()).unwrap_or(u32::MAX - 1) + 1;
    assert!(
        (low..=high).contains(&passed),
        "one token a second: {passed} back between {first:?} and {last:?}"
    );
    let rules = hooks.rules(Some("guard")).expect("counters");
    assert_eq!(rules[0].packets, 2, "the rule counts what it dropped");
    hooks.remove_owner("guard").expect("removal");
    lab.check_all(&[forward("no limit any more", &flood)]);
}

#[test]
fn one_packet_in_n_is_sampled_with_its_headers() {
    let Some((mut lab, mut hooks)) = lab("sampling") else { return };
    let mut ring = RingBuf::try_from(lab.ebpf_mut().take_map(names::SAMPLES).expect("SAMPLES"))
        .expect("a ring buffer");
    let samples = |ring: &mut RingBuf<MapData>| drain_samples(ring);
    let packet = from4("192.0.2.10", "203.0.113.9");
    lab.check_all(&[forward("not sampled", &packet)]);
    assert_eq!(samples(&mut ring), [], "no sampling configured");

    hooks.apply("flows", &[HookOp::SetSampling { every: 1 }]).expect("valid");
    lab.check_all(&[
        forward("sampled", &packet),
        forward("sampled too", &from6("2001:db8:a::10", "2001:db8:50::1")),
    ]);
    let got = samples(&mut ring);
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0].src, "192.0.2.10".parse::<IpAddr>().expect("addr"));
    assert_eq!(got[0].dst, "203.0.113.9".parse::<IpAddr>().expect("addr"));
    assert_eq!((got[0].proto, got[0].sport, got[0].dport), (17, 40000, 53));
    assert_eq!((got[0].ifindex, got[0].len as usize), (IN0.ifindex, packet.bytes().len()));
    assert_eq!(got[1].src, "2001:db8:a::10".parse::<IpAddr>().expect("addr"));
    assert!(got.iter().all(|s| s.every == 1 && s.tcp_flags == 0), "UDP at 1 in 1: {got:?}");

    // TCP: the flags byte of its header, over both families.
    let syn = Frame::v4(
        ROUTER_MAC,
        HOST_MAC,
        Ipv4::new(ip4("192.0.2.10"), ip4("203.0.113.9"), L4::tcp(40001, 443)),
    );
    let ack = L4::Tcp { sport: 443, dport: 40001, seq: 1, flags: 0x10, payload: Vec::new() };
    let ack = Frame::v6(
        ROUTER_MAC,
        HOST_MAC,
        Ipv6::new(ip6("2001:db8:a::10"), ip6("2001:db8:50::1"), ack),
    );
    lab.check_all(&[forward("a SYN sampled", &syn), forward("an ACK sampled", &ack)]);
    let got = samples(&mut ring);
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!((got[0].proto, got[0].sport, got[0].dport, got[0].tcp_flags), (6, 40001, 443, 0x02));
    assert_eq!((got[1].proto, got[1].sport, got[1].dport, got[1].tcp_flags), (6, 443, 40001, 0x10));
    println!(
        "samples: a SYN says tcp_flags {:#04x}, an ACK {:#04x}",
        got[0].tcp_flags, got[1].tcp_flags
    );

    hooks.apply("flows", &[HookOp::SetSampling { every: 8 }]).expect("valid");
    for _ in 0..800 {
        lab.run(IN0.ifindex, &packet.bytes());
    }
    let got = samples(&mut ring);
    let n = got.len();
    // 1 in 8 of 800 is 100 on average (standard deviation 9.4).
    assert!((50..=150).contains(&n), "{n} samples of 800 packets at 1 in 8");
    assert!(got.iter().all(|s| s.every == 8), "each sample says its rate");
    hooks.remove_owner("flows").expect("removal");
    for _ in 0..100 {
        lab.run(IN0.ifindex, &packet.bytes());
    }
    assert_eq!(samples(&mut ring), [], "sampling stops with its owner");
}
