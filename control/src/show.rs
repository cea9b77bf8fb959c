//! `sluice stats` and `sluice routes`: what the pinned dataplane holds and counts, as text for
//! people and as JSON for scripts. Besides the per-reason counters of the XDP program, `stats`
//! shows what each egress device's transmit took and dropped (see [`sluice_dataplane::xmit`]).

use std::{collections::BTreeMap, fmt::Write as _, net::IpAddr, time::Duration};

use serde::Serialize;
use sluice_common::{
    Counter, FAMILY_V4, Iface, NextHop, Reason, Route, RouteAction, XdpAttachMode,
};

use sluice_core::fib::FibState;
use sluice_dataplane::{DataplaneError, Maps, PinDir, xmit};

/// Counters of one interface.
#[derive(Debug, Clone, Serialize)]
pub struct InterfaceStats {
    /// Interface name.
    pub name: String,
    /// ifindex of the logical interface.
    pub ifindex: u32,
    /// VLAN id for a VLAN sub-interface, else 0.
    pub vlan_id: u16,
    /// XDP mode in use ("native", "generic", "offload"; "none" for VLANs served via their parent).
    pub xdp_mode: &'static str,
    /// Up.
    pub up: bool,
    /// MTU.
    pub mtu: u32,
    /// Counters by reason name.
    pub counters: BTreeMap<&'static str, CounterJson>,
    /// What transmit on this device took and dropped. Absent for a VLAN sub-interface: XDP
    /// transmits through the parent device, where its frames are counted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub egress: Option<EgressJson>,
    /// Set while the port cannot take redirected frames: its frames go through the kernel
    /// (counted as `pass_egress_not_ready` where they came in); the cause and the remedy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub egress_not_ready: Option<sluice_dataplane::egress::NotReady>,
}

/// Transmit on one egress device: the devmap's bulk-queue flushes to it (`xdp:xdp_devmap_xmit`)
/// and the redirects to it the kernel refused (`xdp:xdp_redirect_err`).
#[derive(Debug, Clone, Copy, Serialize, Default, PartialEq)]
pub struct EgressJson {
    /// Whether egress is being counted. When false (a tracepoint could not be attached; the
    /// daemon's log says why) the numbers are whatever was counted before, and drops on the way
    /// out go unseen.
    pub counted: bool,
    /// Bulk-queue flushes, each handing 1 to 16 frames to the driver.
    pub tx_flushes: u64,
    /// Frames the driver took.
    pub tx_sent: u64,
    /// Frames the driver did not take, dropped at transmit (XDP has no qdisc to queue them).
    pub tx_dropped: u64,
    /// Flushes the driver refused as a whole with an error (their frames are in `tx_dropped`).
    pub tx_errors: u64,
    /// Frames XDP redirected here (and counted as `transmitted`) that the kernel refused to queue:
    /// the device takes no XDP frames (a veth whose peer has neither XDP nor GRO), is down, or
    /// the frame is too big. Dropped, and in none of the other fields.
    pub tx_redirect_errors: u64,
    /// Average frames per flush (sent and dropped); 0 without flushes.
    pub frames_per_flush: f64,
}

impl EgressJson {
    fn new(counted: bool, s: &sluice_common::xmit::XmitStats) -> Self {
        Self {
            counted,
            tx_flushes: s.flushes,
            tx_sent: s.sent,
            tx_dropped: s.dropped,
            tx_errors: s.errors,
            tx_redirect_errors: s.redirect_errors,
            frames_per_flush: xmit::frames_per_flush(s),
        }
    }
}

/// A counter.
#[derive(Debug, Clone, Copy, Serialize, Default, PartialEq, Eq)]
pub struct CounterJson {
    /// Packets.
    pub packets: u64,
    /// Bytes.
    pub bytes: u64,
}

/// Everything `sluice stats` shows.
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    /// Per interface.
    pub interfaces: Vec<InterfaceStats>,
    /// Traffic from interfaces the dataplane does not serve (slot 0).
    pub unknown: BTreeMap<&'static str, CounterJson>,
    /// What the lookup tables hold and the memory they use, when asked for
    /// ([`with_lookup_tables`]: a scan of the tables).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lookup_tables: Option<sluice_dataplane::LookupUsage>,
}

/// Adds the lookup tables' use to `stats` (left out, with a warning, when they cannot be read).
pub fn with_lookup_tables(mut stats: Stats, pin: &PinDir) -> Stats {
    match sluice_dataplane::LookupView::open(pin) {
        Ok(view) => stats.lookup_tables = Some(view.usage()),
        Err(e) => tracing::warn!(error = %e, "the lookup tables could not be read"),
    }
    stats
}

fn counters_json(c: &BTreeMap<Reason, Counter>) -> BTreeMap<&'static str, CounterJson> {
    c.iter().map(|(r, c)| (r.name(), CounterJson { packets: c.packets, bytes: c.bytes })).collect()
}

/// The interface's name as stored in the map.
pub fn iface_name(i: &Iface) -> String {
    let end = i.name.iter().position(|b| *b == 0).unwrap_or(i.name.len());
    String::from_utf8_lossy(&i.name[..end]).into_owned()
}

/// Reads the counters of every interface.
pub fn stats(pin: &PinDir) -> Result<Stats, DataplaneError> {
    let p = Maps::open(pin)?;
    let egress = xmit::read(pin)?;
    let holds = sluice_dataplane::egress::read(pin)?;
    let mut interfaces = Vec::new();
    for (key, iface) in &p.ifaces()? {
        let tx = egress.devices.get(&key.ifindex).copied().unwrap_or_default();
        interfaces.push(InterfaceStats {
            name: iface_name(iface),
            ifindex: iface.logical_ifindex,
            vlan_id: key.vlan_id,
            xdp_mode: XdpAttachMode::from_u32(iface.xdp_mode).name(),
            up: iface.flags & sluice_common::IF_F_UP != 0,
            mtu: iface.mtu,
            counters: counters_json(&p.counters(iface.slot)?),
            egress: (key.vlan_id == 0).then(|| EgressJson::new(egress.counting, &tx)),
            egress_not_ready: holds
                .get(&key.ifindex)
                .map(|h| sluice_dataplane::egress::describe(&iface_name(iface), h)),
        });
    }
    interfaces.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Stats { interfaces, unknown: counters_json(&p.counters(0)?), lookup_tables: None })
}

/// What the top-talker samples of one source add up to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Talker {
    /// The source address.
    pub addr: IpAddr,
    /// Packets and bytes sampled (1 in [`sluice_common::TALKER_SAMPLE_EVERY`] forwarded).
    pub sampled: Counter,
}

/// The forwarded packets sampled by source (`TALKERS`), every CPU's summed; empty when the
/// pinned dataplane predates the map.
pub fn talkers(pin: &PinDir) -> Result<Vec<Talker>, DataplaneError> {
    use sluice_common::{TalkerKey, names};
    let path = pin.map(names::TALKERS);
    if !path.exists() {
        if !pin.map(names::COUNTERS).exists() {
            return Err(DataplaneError::NotPinned(pin.root().to_owned()));
        }
        return Ok(Vec::new());
    }
    let map: aya::maps::PerCpuHashMap<_, TalkerKey, Counter> =
        sluice_dataplane::open_per_cpu_hash(pin, names::TALKERS)?;
    let mut out = Vec::new();
    for item in &map {
        // An entry evicted while the map is walked ends the walk early: what was read stands.
        let Ok((key, per_cpu)) = item else { break };
        let sampled = sluice_dataplane::sum_counters(per_cpu.iter());
        out.push(Talker { addr: sluice_common::addr_of(key.family, &key.addr), sampled });
    }
    Ok(out)
}

/// How far back the top talkers' rates reach, at least (see [`TalkerWindow`]).
pub const TALKER_WINDOW: Duration = Duration::from_secs(5);

/// One source's traffic over the window, estimated from its samples.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct TalkerRate {
    /// The source address.
    pub address: IpAddr,
    /// Forwarded packets a second.
    pub packets_per_s: f64,
    /// Forwarded bits a second (frames as received, Ethernet header included).
    pub bits_per_s: f64,
    /// Forwarded packets since the dataplane first sampled it.
    pub packets: u64,
    /// Forwarded bytes since then.
    pub bytes: u64,
}

/// The top talkers: sources by forwarded bits a second, highest first.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TopTalkers {
    /// One forwarded packet in this many is sampled; the numbers are estimates.
    pub sample_every: u64,
    /// Seconds the rates are measured over; 0 at the first read, which has nothing to compare.
    pub window_s: f64,
    /// Sources that sent anything in the window.
    pub talkers: Vec<TalkerRate>,
}

type TalkerRead = (std::time::Instant, BTreeMap<IpAddr, Counter>);

/// Turns successive reads of `TALKERS` into rates: each read is compared with a base read at
/// least [`TALKER_WINDOW`] older when there is one (so several readers polling do not shrink
/// the window), which then moves up to the latest read. Reads closer than half a second to the
/// previous answer get that answer again.
#[derive(Debug, Default)]
pub struct TalkerWindow {
    base: Option<TalkerRead>,
    latest: Option<TalkerRead>,
    answer: Option<(std::time::Instant, TopTalkers)>,
}

impl TalkerWindow {
    /// The top talkers with a read `talkers` taken at `now`.
    pub fn update(&mut self, now: std::time::Instant, talkers: &[Talker]) -> TopTalkers {
        let every = sluice_common::TALKER_SAMPLE_EVERY;
        if let Some((at, answer)) = &self.answer
            && now.duration_since(*at) < Duration::from_millis(500)
        {
            return answer.clone();
        }
        let read: BTreeMap<IpAddr, Counter> = talkers.iter().map(|t| (t.addr, t.sampled)).collect();
        let Some((base_at, base)) = &self.base else {
            self.base = Some((now, read));
            return TopTalkers { sample_every: every, window_s: 0.0, talkers: Vec::new() };
        };
        let window = now.duration_since(*base_at).as_secs_f64();
        let mut rates: Vec<TalkerRate> = read
            .iter()
            .filter_map(|(addr, c)| {
                // A source evicted and sampled again since the base counts from zero.
                let before = base.get(addr).filter(|b| b.packets <= c.packets).copied();
                let before = before.unwrap_or_default();
                let packets = c.packets - before.packets;
                let bytes = c.bytes.saturating_sub(before.bytes);
                (packets > 0).then(|| TalkerRate {
                    address: *addr,
                    packets_per_s: (packets * every) as f64 / window,
                    bits_per_s: (bytes * every * 8) as f64 / window,
                    packets: c.packets * every,
                    bytes: c.bytes * every,
                })
            })
            .collect();
        rates.sort_by(|a, b| b.bits_per_s.total_cmp(&a.bits_per_s).then(a.address.cmp(&b.address)));
        let answer = TopTalkers { sample_every: every, window_s: window, talkers: rates };
        if let Some((latest_at, _)) = &self.latest
            && latest_at.duration_since(*base_at) >= TALKER_WINDOW
        {
            self.base = self.latest.take();
        }
        self.latest = Some((now, read));
        self.answer = Some((now, answer.clone()));
        answer
    }
}

/// Renders stats as a table of the non-zero counters.
pub fn stats_text(s: &Stats) -> String {
    let mut out = String::new();
    for i in &s.interfaces {
        let _ = writeln!(
            out,
            "{} (ifindex {}{}, xdp {}, mtu {}, {})",
            i.name,
            i.ifindex,
            if i.vlan_id != 0 { format!(", vlan {}", i.vlan_id) } else { String::new() },
            i.xdp_mode,
            i.mtu,
            if i.up { "up" } else { "down" }
        );
        write_counters(&mut out, &i.counters);
        if let Some(e) = &i.egress {
            write_egress(&mut out, e);
        }
        if let Some(n) = &i.egress_not_ready {
            let _ = writeln!(out, "  egress not ready     {}", n.message);
        }
    }
    if s.unknown.values().any(|c| c.packets > 0) {
        let _ = writeln!(out, "(interfaces not served)");
        write_counters(&mut out, &s.unknown);
    }
    if s.interfaces.is_empty() {
        out.push_str("no interfaces attached\n");
    }
    if let Some(t) = &s.lookup_tables {
        let mib = |b: u64| b as f64 / f64::from(1 << 20);
        let (v4, v6) = (&t.ipv4, &t.ipv6);
        let _ = writeln!(
            out,
            "lookup tables: IPv4 {:.1} MiB ({} of {} groups, {} of {} results), \
             IPv6 {:.1} MiB ({} of {} nodes, {} compact, {} wide)",
            mib(v4.bytes),
            v4.groups,
            v4.groups_max,
            v4.results,
            v4.results_max,
            mib(v6.bytes),
            v6.nodes,
            v6.nodes_max,
            v6.compact,
            v6.wide
        );
    }
    out
}

fn write_counters(out: &mut String, c: &BTreeMap<&'static str, CounterJson>) {
    let mut any = false;
    for r in Reason::ALL {
        let v = c.get(r.name()).copied().unwrap_or_default();
        if v.packets > 0 {
            any = true;
            let _ =
                writeln!(out, "  {:<20} {:>14} pkts {:>16} bytes", r.name(), v.packets, v.bytes);
        }
    }
    if !any {
        out.push_str("  (no packets yet)\n");
    }
}

fn write_egress(out: &mut String, e: &EgressJson) {
    if !e.counted && e.tx_flushes == 0 && e.tx_redirect_errors == 0 {
        out.push_str("  egress               not counted (see the daemon's log)\n");
        return;
    }
    let _ = write!(
        out,
        "  egress               tx_flushes {}  tx_sent {}  tx_dropped {}",
        e.tx_flushes, e.tx_sent, e.tx_dropped
    );
    if e.tx_errors > 0 {
        let _ = write!(out, "  tx_errors {}", e.tx_errors);
    }
    if e.tx_redirect_errors > 0 {
        let _ = write!(out, "  tx_redirect_errors {}", e.tx_redirect_errors);
    }
    if e.tx_flushes > 0 {
        let _ = write!(out, "  ({:.1} frames per flush)", e.frames_per_flush);
    }
    if !e.counted {
        out.push_str("  (no longer counted: see the daemon's log)");
    }
    out.push('\n');
}

/// Renders the rates between two samples taken `elapsed` apart.
pub fn rates_text(before: &Stats, after: &Stats, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64().max(1e-3);
    let mut out = format!(
        "{:<16} {:>12} {:>12} {:>12} {:>12} {:>10} {:>12}\n",
        "interface", "fwd pps", "tx pps", "pass pps", "drop pps", "tx Mbit/s", "txdrop pps"
    );
    for a in &after.interfaces {
        let Some(b) = before.interfaces.iter().find(|b| b.name == a.name && b.vlan_id == a.vlan_id)
        else {
            continue;
        };
        let delta = |pred: &dyn Fn(&str) -> bool, bytes: bool| -> f64 {
            let sum = |s: &InterfaceStats| -> u64 {
                s.counters
                    .iter()
                    .filter(|(k, _)| pred(k))
                    .map(|(_, c)| if bytes { c.bytes } else { c.packets })
                    .sum()
            };
            sum(a).saturating_sub(sum(b)) as f64 / secs
        };
        let tx_dropped =
            |s: &InterfaceStats| s.egress.map_or(0, |e| e.tx_dropped + e.tx_redirect_errors);
        let _ = writeln!(
            out,
            "{:<16} {:>12.0} {:>12.0} {:>12.0} {:>12.0} {:>10.2} {:>12.0}",
            a.name,
            delta(&|k| k == "forwarded", false),
            delta(&|k| k == "transmitted", false),
            delta(&|k| k.starts_with("pass_"), false),
            delta(&|k| k.starts_with("drop_"), false),
            delta(&|k| k == "transmitted", true) * 8.0 / 1e6,
            tx_dropped(a).saturating_sub(tx_dropped(b)) as f64 / secs,
        );
    }
    out
}

/// A next hop as `sluice routes` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct NextHopJson {
    /// Next-hop id.
    pub id: u32,
    /// Egress interface name.
    pub dev: String,
    /// Egress ifindex (the logical interface).
    pub ifindex: u32,
    /// The neighbour.
    pub via: Option<IpAddr>,
    /// Its MAC, when resolved.
    pub mac: Option<String>,
    /// Whether the neighbour is resolved.
    pub resolved: bool,
    /// VLAN tag pushed on egress, if any.
    pub vlan: Option<u16>,
    /// MTU.
    pub mtu: u32,
}

/// A route as `sluice routes` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RouteJson {
    /// Prefix.
    pub prefix: ipnet::IpNet,
    /// Action name.
    pub action: &'static str,
    /// Next hops (ECMP members, in group order; repeated members carry weight).
    pub nexthops: Vec<NextHopJson>,
    /// For connected routes: the interface.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dev: Option<String>,
}

/// Everything `sluice routes` shows.
#[derive(Debug, Clone, Serialize)]
pub struct Routes {
    /// The routes, IPv4 first.
    pub routes: Vec<RouteJson>,
}

fn mac_string(m: [u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// Reads the routes the dataplane holds.
pub fn routes(pin: &PinDir) -> Result<Routes, DataplaneError> {
    let state = Maps::open(pin)?.routes()?;
    Ok(routes_of(&state))
}

/// The routes of a state, resolved to next hops and names.
pub fn routes_of(state: &FibState) -> Routes {
    let names: BTreeMap<u32, String> =
        state.ifaces.values().map(|i| (i.logical_ifindex, iface_name(i))).collect();
    let name =
        |ifindex: u32| names.get(&ifindex).cloned().unwrap_or_else(|| format!("if{ifindex}"));
    let nh_json = |id: u32, nh: &NextHop| NextHopJson {
        id,
        dev: name(nh.logical_ifindex),
        ifindex: nh.logical_ifindex,
        via: match nh.family {
            FAMILY_V4 => {
                Some(IpAddr::from([nh.gateway[0], nh.gateway[1], nh.gateway[2], nh.gateway[3]]))
            }
            sluice_common::FAMILY_V6 => Some(IpAddr::from(nh.gateway)),
            _ => None,
        },
        mac: nh.is_resolved().then(|| mac_string(nh.dmac)),
        resolved: nh.is_resolved(),
        vlan: (nh.flags & sluice_common::NH_F_VLAN != 0).then_some(nh.vlan_tci & 0x0fff),
        mtu: nh.mtu,
    };
    let route_json = |prefix: ipnet::IpNet, r: &Route| {
        let action = RouteAction::from_u32(r.action);
        let members: Vec<u32> = match action {
            Some(RouteAction::Forward) => vec![r.target],
            Some(RouteAction::Ecmp) => state
                .groups
                .get(&r.target)
                .map(|g| g.members[..(g.count as usize).min(g.members.len())].to_vec())
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        RouteJson {
            prefix,
            action: action.map_or("invalid", RouteAction::name),
            nexthops: members
                .iter()
                .filter_map(|id| state.nexthops.get(id).map(|nh| nh_json(*id, nh)))
                .collect(),
            dev: (action == Some(RouteAction::Connected)).then(|| name(r.target)),
        }
    };
    let mut routes: Vec<RouteJson> =
        state.routes_v4.iter().map(|(p, r)| route_json(ipnet::IpNet::V4(*p), r)).collect();
    routes.extend(state.routes_v6.iter().map(|(p, r)| route_json(ipnet::IpNet::V6(*p), r)));
    Routes { routes }
}

/// Renders routes as text, one line each.
pub fn routes_text(r: &Routes) -> String {
    let mut out = String::new();
    for route in &r.routes {
        let _ = write!(out, "{:<43} {:<11}", route.prefix.to_string(), route.action);
        if let Some(dev) = &route.dev {
            let _ = write!(out, " dev {dev}");
        }
        for nh in &route.nexthops {
            let via = nh.via.map(|v| v.to_string()).unwrap_or_default();
            let _ = write!(
                out,
                " via {via} dev {} {}",
                nh.dev,
                nh.mac.as_deref().unwrap_or("(unresolved)")
            );
            if let Some(v) = nh.vlan {
                let _ = write!(out, " vlan {v}");
            }
        }
        out.push('\n');
    }
    if r.routes.is_empty() {
        out.push_str("no routes in the dataplane\n");
    }
    out
}

/// Renders `sluice verify`'s result: per family what was compared and what differs.
pub fn verification_text(v: &sluice_dataplane::lookup::Verification) -> String {
    let mut out = String::new();
    for (family, routes, what, check) in
        [("IPv4", v.routes_v4, "entries", &v.ipv4), ("IPv6", v.routes_v6, "ranges", &v.ipv6)]
    {
        let _ = writeln!(
            out,
            "{family}: {routes} routes; {} {what} of the lookup tables compared: {} differences, {} problems",
            check.compared, check.differences, check.problems
        );
        for m in &check.examples {
            let _ =
                writeln!(out, "  {}: the tables say {}, the routes {}", m.at, m.tables, m.routes);
        }
        for p in &check.problem_examples {
            let _ = writeln!(out, "  problem: {p}");
        }
        if check.differences > check.examples.len() as u64 {
            let _ =
                writeln!(out, "  ... and {} more", check.differences - check.examples.len() as u64);
        }
    }
    for d in &v.dangling {
        let _ = writeln!(out, "route {d}");
    }
    if v.is_clean() {
        out.push_str("ok: the lookup tables answer as the routes say\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    fn read(counts: &[(&str, u64)]) -> Vec<Talker> {
        counts
            .iter()
            .map(|(a, n)| Talker {
                addr: a.parse().unwrap(),
                sampled: Counter { packets: *n, bytes: n * 100 },
            })
            .collect()
    }

    #[test]
    fn top_talkers_are_rates_over_a_window_highest_first() {
        let every = sluice_common::TALKER_SAMPLE_EVERY;
        let mut w = TalkerWindow::default();
        let t0 = Instant::now();
        let first = w.update(t0, &read(&[("10.0.0.1", 5)]));
        assert!(
            first.window_s.to_bits() == 0 && first.talkers.is_empty(),
            "nothing to compare yet"
        );
        let s = |secs: u64| t0 + Duration::from_secs(secs);
        let top = w.update(s(2), &read(&[("10.0.0.1", 7), ("10.0.0.2", 10), ("fd00::9", 0)]));
        assert_eq!(top.window_s.to_bits(), 2.0f64.to_bits());
        let got: Vec<(String, f64, f64)> = top
            .talkers
            .iter()
            .map(|t| (t.address.to_string(), t.packets_per_s, t.bits_per_s))
            .collect();
        let pps = |n: u64| (n * every) as f64 / 2.0;
        assert_eq!(
            got,
            [
                ("10.0.0.2".into(), pps(10), pps(10) * 800.0),
                ("10.0.0.1".into(), pps(2), pps(2) * 800.0)
            ],
            "the silent source is left out"
        );
        assert_eq!(top.talkers[1].packets, 7 * every, "totals are estimates too");
        // A read soon after gets the same answer; later ones compare with a base that moves up
        // once the window has passed.
        assert_eq!(w.update(s(2) + Duration::from_millis(100), &read(&[])), top);
        w.update(s(6), &read(&[("10.0.0.1", 9)]));
        let top = w.update(s(8), &read(&[("10.0.0.1", 10)]));
        assert_eq!(top.window_s.to_bits(), 8.0f64.to_bits());
        let top = w.update(s(10), &read(&[("10.0.0.1", 12)]));
        assert_eq!(top.window_s.to_bits(), 4.0f64.to_bits());
        assert_eq!(top.talkers[0].packets_per_s.to_bits(), ((3 * every) as f64 / 4.0).to_bits());
        // A source evicted and sampled again counts from zero.
        let top = w.update(s(12), &read(&[("10.0.0.1", 1)]));
        assert_eq!(top.talkers[0].packets_per_s.to_bits(), (every as f64 / 6.0).to_bits());
    }
}
