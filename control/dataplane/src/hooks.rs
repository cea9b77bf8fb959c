//! The hook maps of a loaded or pinned dataplane ([`AyaHookMaps`], the real [`HookMaps`]), the
//! rules the pinned tables hold, and the sampled packets of the ring buffer.

use std::{fmt, net::IpAddr};

use aya::{
    Ebpf,
    maps::{Array, LpmTrie, Map, MapData, MapError, PerCpuArray, RingBuf, lpm_trie::Key},
};
use ipnet::IpNet;
use serde::Serialize;
use sluice_common::{
    Counter, addr_of,
    hooks::{FilterRule, HookConfig, RateRule, Sample, SteerRule, Summary},
    names,
};

use crate::pin::{ignore_missing, key_v4, key_v6};

// The pure half of the hook tables, so that users of this crate find every hook type here.
pub use sluice_core::hooks::*;

/// The hook maps of a loaded or pinned dataplane.
pub struct AyaHookMaps {
    filter_src_v4: LpmTrie<MapData, [u8; 4], FilterRule>,
    filter_dst_v4: LpmTrie<MapData, [u8; 4], FilterRule>,
    filter_src_v6: LpmTrie<MapData, [u8; 16], FilterRule>,
    filter_dst_v6: LpmTrie<MapData, [u8; 16], FilterRule>,
    rate_v4: LpmTrie<MapData, [u8; 4], RateRule>,
    rate_v6: LpmTrie<MapData, [u8; 16], RateRule>,
    steer_v4: LpmTrie<MapData, [u8; 4], SteerRule>,
    steer_v6: LpmTrie<MapData, [u8; 16], SteerRule>,
    config: Array<MapData, HookConfig>,
    summary: Array<MapData, Summary>,
    counters: PerCpuArray<MapData, Counter>,
    gateways: Gateways,
}

impl fmt::Debug for AyaHookMaps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AyaHookMaps").finish_non_exhaustive()
    }
}

fn map_err(map: &'static str) -> impl Fn(MapError) -> HookError {
    move |source| HookError::Map { map, source: Box::new(source) }
}

impl AyaHookMaps {
    /// Takes the hook maps out of a loaded object (the daemon, the packet tests).
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, HookError> {
        Self::build(|name| {
            ebpf.take_map(name)
                .ok_or_else(|| map_err(name)(MapError::InvalidName { name: name.to_owned() }))
        })
    }

    /// Opens the hook maps pinned under `pin`.
    pub fn open(pin: &crate::pin::PinDir) -> Result<Self, HookError> {
        if !pin.map(names::HOOK_CONFIG).exists() {
            return Err(HookError::NotPinned(pin.root().to_owned()));
        }
        Self::build(|name| {
            let data = MapData::from_pin(pin.map(name)).map_err(map_err(name))?;
            Map::from_map_data(data).map_err(map_err(name))
        })
    }

    fn build(
        mut get: impl FnMut(&'static str) -> Result<Map, HookError>,
    ) -> Result<Self, HookError> {
        macro_rules! typed {
            ($name:expr) => {{
                let name = $name;
                get(name)?.try_into().map_err(map_err(name))?
            }};
        }
        Ok(Self {
            filter_src_v4: typed!(names::FILTER_SRC_V4),
            filter_dst_v4: typed!(names::FILTER_DST_V4),
            filter_src_v6: typed!(names::FILTER_SRC_V6),
            filter_dst_v6: typed!(names::FILTER_DST_V6),
            rate_v4: typed!(names::RATE_V4),
            rate_v6: typed!(names::RATE_V6),
            steer_v4: typed!(names::STEER_V4),
            steer_v6: typed!(names::STEER_V6),
            config: typed!(names::HOOK_CONFIG),
            summary: typed!(names::HOOK_SUMMARY),
            counters: typed!(names::RULE_COUNTERS),
            gateways: Gateways::default(),
        })
    }

    /// Resolves steer gateways through `gateways` (the daemon's next hops) from now on.
    pub fn set_gateways(&mut self, gateways: Gateways) {
        self.gateways = gateways;
    }
}

impl AyaHookMaps {
    /// Empties every hook table (a starting daemon: what its plugins wrote before is written
    /// again as they start, and nothing of a plugin that is gone may stay).
    pub fn clear(&mut self) -> Result<(), HookError> {
        fn clear<K: aya::Pod, V: aya::Pod>(
            map: &mut LpmTrie<MapData, K, V>,
            name: &'static str,
        ) -> Result<(), HookError> {
            let keys: Vec<Key<K>> = map.keys().collect::<Result<_, _>>().map_err(map_err(name))?;
            for k in keys {
                ignore_missing(map.remove(&k)).map_err(map_err(name))?;
            }
            Ok(())
        }
        self.set_config(HookConfig::default())?;
        clear(&mut self.filter_src_v4, names::FILTER_SRC_V4)?;
        clear(&mut self.filter_dst_v4, names::FILTER_DST_V4)?;
        clear(&mut self.filter_src_v6, names::FILTER_SRC_V6)?;
        clear(&mut self.filter_dst_v6, names::FILTER_DST_V6)?;
        clear(&mut self.rate_v4, names::RATE_V4)?;
        clear(&mut self.rate_v6, names::RATE_V6)?;
        clear(&mut self.steer_v4, names::STEER_V4)?;
        clear(&mut self.steer_v6, names::STEER_V6)
    }

    fn filter_v4(
        &mut self,
        dir: Direction,
    ) -> (&mut LpmTrie<MapData, [u8; 4], FilterRule>, &'static str) {
        match dir {
            Direction::Src => (&mut self.filter_src_v4, names::FILTER_SRC_V4),
            Direction::Dst => (&mut self.filter_dst_v4, names::FILTER_DST_V4),
        }
    }

    fn filter_v6(
        &mut self,
        dir: Direction,
    ) -> (&mut LpmTrie<MapData, [u8; 16], FilterRule>, &'static str) {
        match dir {
            Direction::Src => (&mut self.filter_src_v6, names::FILTER_SRC_V6),
            Direction::Dst => (&mut self.filter_dst_v6, names::FILTER_DST_V6),
        }
    }
}

impl HookMaps for AyaHookMaps {
    fn set_filter(
        &mut self,
        dir: Direction,
        prefix: IpNet,
        rule: FilterRule,
    ) -> Result<(), HookError> {
        match prefix {
            IpNet::V4(p) => {
                let (map, name) = self.filter_v4(dir);
                map.insert(&key_v4(p), rule, 0).map_err(map_err(name))
            }
            IpNet::V6(p) => {
                let (map, name) = self.filter_v6(dir);
                map.insert(&key_v6(p), rule, 0).map_err(map_err(name))
            }
        }
    }

    fn del_filter(&mut self, dir: Direction, prefix: IpNet) -> Result<(), HookError> {
        match prefix {
            IpNet::V4(p) => {
                let (map, name) = self.filter_v4(dir);
                ignore_missing(map.remove(&key_v4(p))).map_err(map_err(name))
            }
            IpNet::V6(p) => {
                let (map, name) = self.filter_v6(dir);
                ignore_missing(map.remove(&key_v6(p))).map_err(map_err(name))
            }
        }
    }

    fn set_rate(&mut self, prefix: IpNet, rule: RateRule) -> Result<(), HookError> {
        match prefix {
            IpNet::V4(p) => {
                self.rate_v4.insert(&key_v4(p), rule, 0).map_err(map_err(names::RATE_V4))
            }
            IpNet::V6(p) => {
                self.rate_v6.insert(&key_v6(p), rule, 0).map_err(map_err(names::RATE_V6))
            }
        }
    }

    fn del_rate(&mut self, prefix: IpNet) -> Result<(), HookError> {
        match prefix {
            IpNet::V4(p) => {
                ignore_missing(self.rate_v4.remove(&key_v4(p))).map_err(map_err(names::RATE_V4))
            }
            IpNet::V6(p) => {
                ignore_missing(self.rate_v6.remove(&key_v6(p))).map_err(map_err(names::RATE_V6))
            }
        }
    }

    fn set_steer(&mut self, prefix: IpNet, rule: &SteerRule) -> Result<(), HookError> {
        match prefix {
            IpNet::V4(p) => {
                self.steer_v4.insert(&key_v4(p), rule, 0).map_err(map_err(names::STEER_V4))
            }
            IpNet::V6(p) => {
                self.steer_v6.insert(&key_v6(p), rule, 0).map_err(map_err(names::STEER_V6))
            }
        }
    }

    fn del_steer(&mut self, prefix: IpNet) -> Result<(), HookError> {
        match prefix {
            IpNet::V4(p) => {
                ignore_missing(self.steer_v4.remove(&key_v4(p))).map_err(map_err(names::STEER_V4))
            }
            IpNet::V6(p) => {
                ignore_missing(self.steer_v6.remove(&key_v6(p))).map_err(map_err(names::STEER_V6))
            }
        }
    }

    fn nexthop_of(&self, via: IpAddr) -> Option<u32> {
        self.gateways.get(via)
    }

    fn set_config(&mut self, config: HookConfig) -> Result<(), HookError> {
        self.config.set(0, config, 0).map_err(map_err(names::HOOK_CONFIG))
    }

    fn set_summary(&mut self, table: u32, value: &Summary) -> Result<(), HookError> {
        self.summary.set(table, *value, 0).map_err(map_err(names::HOOK_SUMMARY))
    }

    fn counter(&self, rule: u32) -> Result<Counter, HookError> {
        let per_cpu = self.counters.get(&rule, 0).map_err(map_err(names::RULE_COUNTERS))?;
        Ok(crate::pin::sum_counters(per_cpu.iter()))
    }

    fn reset_counter(&mut self, rule: u32) -> Result<(), HookError> {
        let failed =
            |e: std::io::Error| HookError::Map { map: names::RULE_COUNTERS, source: Box::new(e) };
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| failed(e))?;
        let zero =
            aya::maps::PerCpuValues::try_from(vec![Counter::default(); cpus]).map_err(failed)?;
        self.counters.set(rule, zero, 0).map_err(map_err(names::RULE_COUNTERS))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PinnedRule {
    /// The operation that writes it.
    pub rule: HookOp,
    /// Its id (counter slot).
    pub id: u32,
    /// Packets it matched (a rate rule: dropped).
    pub packets: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// The rules in the hook tables pinned under `pin`, with their counters, and the sampling rate.
pub fn pinned_rules(pin: &crate::pin::PinDir) -> Result<(Vec<PinnedRule>, u32), HookError> {
    let maps = AyaHookMaps::open(pin)?;
    let v4 = |k: &Key<[u8; 4]>| IpNet::V4(crate::pin::net_v4(k));
    let v6 = |k: &Key<[u8; 16]>| IpNet::V6(crate::pin::net_v6(k));
    let mut rules = Vec::new();
    for (direction, filters) in [
        (Direction::Src, entries(&maps.filter_src_v4, names::FILTER_SRC_V4, v4)?),
        (Direction::Dst, entries(&maps.filter_dst_v4, names::FILTER_DST_V4, v4)?),
        (Direction::Src, entries(&maps.filter_src_v6, names::FILTER_SRC_V6, v6)?),
        (Direction::Dst, entries(&maps.filter_dst_v6, names::FILTER_DST_V6, v6)?),
    ] {
        for (prefix, r) in filters {
            let action = Action::from_code(r.action);
            rules.push((HookOp::SetFilter { direction, prefix, action }, r.rule));
        }
    }
    let rates = entries(&maps.rate_v4, names::RATE_V4, v4)?.into_iter().chain(entries(
        &maps.rate_v6,
        names::RATE_V6,
        v6,
    )?);
    for (prefix, r) in rates {
        rules.push((HookOp::SetRateLimit { prefix, rate_pps: r.rate_pps, burst: r.burst }, r.rule));
    }
    let steers = entries(&maps.steer_v4, names::STEER_V4, v4)?.into_iter().chain(entries(
        &maps.steer_v6,
        names::STEER_V6,
        v6,
    )?);
    for (prefix, r) in steers {
        rules.push((HookOp::SetSteer { prefix, next_hops: steer_hops(&r, prefix) }, r.rule));
    }
    let out = rules
        .into_iter()
        .map(|(rule, id)| {
            let c = maps.counter(id)?;
            Ok(PinnedRule { rule, id, packets: c.packets, bytes: c.bytes })
        })
        .collect::<Result<_, HookError>>()?;
    let every = maps.config.get(&0, 0).map_err(map_err(names::HOOK_CONFIG))?.sample_every;
    Ok((out, every))
}

/// Every entry of a pinned LPM trie, its key as a prefix.
fn entries<K: aya::Pod, V: aya::Pod>(
    map: &LpmTrie<MapData, K, V>,
    name: &'static str,
    net: impl Fn(&Key<K>) -> IpNet,
) -> Result<Vec<(IpNet, V)>, HookError> {
    map.iter().map(|item| item.map(|(k, v)| (net(&k), v)).map_err(map_err(name))).collect()
}

/// A sampled packet, from the `SAMPLES` ring buffer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SampledPacket {
    /// Ingress ifindex.
    pub ifindex: u32,
    /// Frame length.
    pub len: u32,
    /// IP protocol.
    pub proto: u8,
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Source port (TCP, UDP, SCTP), else 0.
    pub sport: u16,
    /// Destination port, else 0.
    pub dport: u16,
    /// TCP's flags byte (SYN 0x02, ACK 0x10...), else 0.
    pub tcp_flags: u8,
    /// The sampling it was taken at: one packet in this many.
    pub every: u32,
}

impl SampledPacket {
    /// Decodes a ring buffer record: the program's `Sample`, byte for byte.
    pub fn from_record(b: &[u8]) -> Option<Self> {
        if b.len() < size_of::<Sample>() {
            return None;
        }
        let u32_at = |i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let addr = |i: usize| addr_of(b[8], b[i..i + 16].try_into().expect("16 bytes"));
        Some(Self {
            ifindex: u32_at(0),
            len: u32_at(4),
            proto: b[9],
            sport: u16::from_be_bytes([b[10], b[11]]),
            dport: u16::from_be_bytes([b[12], b[13]]),
            tcp_flags: b[14],
            src: addr(16),
            dst: addr(32),
            every: u32_at(48),
        })
    }
}

/// Drains the samples waiting in the ring buffer.
pub fn drain_samples(ring: &mut RingBuf<MapData>) -> Vec<SampledPacket> {
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        if let Some(s) = SampledPacket::from_record(&item) {
            out.push(s);
        }
    }
    out
}
