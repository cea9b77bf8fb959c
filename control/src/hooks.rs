//! The writer of the hook tables (`sluice_common::hooks`): typed rules, validated, each owned by
//! one plugin, applied all or nothing. Plugins never touch a map: the plugin host turns what a
//! plugin returns into [`HookOp`]s and hands them here under the plugin's name.
//!
//! - A batch ([`HookTables::apply`]) is validated whole before anything is written; a map write
//!   that fails mid-way is undone, so the tables hold all of a batch or none of it.
//! - A prefix belongs to the plugin that wrote it: another plugin's rule on the same prefix is
//!   refused, and [`HookTables::remove_owner`] removes exactly what one plugin wrote.
//! - [`HookTables::replace_owner`] moves a plugin to a new set of rules without a gap: the new
//!   rules are written first, then the old ones that are gone are deleted.
//!
//! Map access sits behind [`HookMaps`], so all of this is tested without root; [`AyaHookMaps`]
//! is the real one.

use std::{collections::BTreeMap, fmt, net::IpAddr};

use aya::{
    Ebpf,
    maps::{Array, LpmTrie, Map, MapData, MapError, PerCpuArray, RingBuf, lpm_trie::Key},
};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use sluice_common::{
    Counter, addr_of,
    hooks::{FilterAction, FilterRule, HookConfig, MAX_RULE_IDS, RateRule, Sample},
    names,
};

/// Most packets per second a rate rule may allow.
pub const MAX_RATE_PPS: u32 = 100_000_000;
/// Largest bucket a rate rule may have.
pub const MAX_BURST: u32 = 10_000_000;
/// Sparsest sampling: one packet in this many.
pub const MAX_SAMPLE_EVERY: u32 = 1 << 24;

/// Which address of a packet a filter rule matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// The source address.
    Src,
    /// The destination address.
    Dst,
}

/// What a filter rule does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Drop the packet.
    Drop,
    /// Hand it to the kernel.
    Pass,
    /// Count it and forward it as usual.
    Count,
}

impl Action {
    const fn code(self) -> FilterAction {
        match self {
            Self::Drop => FilterAction::Drop,
            Self::Pass => FilterAction::Pass,
            Self::Count => FilterAction::Count,
        }
    }

    /// The action of a rule read back from a map (the writer never stores another code).
    fn from_code(code: u32) -> Self {
        match FilterAction::from_u32(code) {
            Some(FilterAction::Pass) => Self::Pass,
            Some(FilterAction::Count) => Self::Count,
            _ => Self::Drop,
        }
    }
}

/// One operation on the hook tables.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub enum HookOp {
    /// Adds or replaces the filter rule for `prefix` in `direction`.
    SetFilter {
        /// Source or destination.
        direction: Direction,
        /// The prefix matched (host bits zero).
        prefix: IpNet,
        /// What to do with a matching packet.
        action: Action,
    },
    /// Removes a filter rule.
    RemoveFilter {
        /// Source or destination.
        direction: Direction,
        /// The rule's prefix.
        prefix: IpNet,
    },
    /// Adds or replaces the rate rule for the sources in `prefix`: each source address gets a
    /// bucket of `burst` packets refilled at `rate_pps`.
    SetRateLimit {
        /// Source prefix (host bits zero).
        prefix: IpNet,
        /// Packets per second per source, 1 to [`MAX_RATE_PPS`].
        rate_pps: u32,
        /// Bucket size in packets, 1 to [`MAX_BURST`].
        burst: u32,
    },
    /// Removes a rate rule.
    RemoveRateLimit {
        /// The rule's prefix.
        prefix: IpNet,
    },
    /// Samples one packet in `every` (0: this owner stops sampling). With several owners, the
    /// densest sampling wins.
    SetSampling {
        /// 0, or 1 to [`MAX_SAMPLE_EVERY`].
        every: u32,
    },
}

/// Why an operation of a batch was refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OpError {
    /// Position of the operation in its batch.
    pub index: usize,
    /// The field at fault.
    pub field: &'static str,
    /// What is wrong, for people.
    pub message: String,
}

impl fmt::Display for OpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "operation {}: {}: {}", self.index, self.field, self.message)
    }
}

/// Why a batch was not applied.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// Operations failed validation; nothing was written.
    #[error("{} invalid operation(s), nothing written: {}", .0.len(), .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<OpError>),
    /// A map operation failed (in a batch, what it had written was undone).
    #[error("map {map}")]
    Map {
        /// The map.
        map: &'static str,
        /// The cause.
        #[source]
        source: MapError,
    },
    /// No dataplane is pinned there.
    #[error(
        "no Sluice dataplane is pinned at {0} (is the daemon started, with the same --pin-dir?)"
    )]
    NotPinned(std::path::PathBuf),
    /// No rule ids are left.
    #[error("all {MAX_RULE_IDS} hook rule ids are in use")]
    RulesFull,
}

/// Access to the hook maps.
pub trait HookMaps {
    /// Writes a filter rule.
    fn set_filter(
        &mut self,
        dir: Direction,
        prefix: IpNet,
        rule: FilterRule,
    ) -> Result<(), HookError>;
    /// Deletes a filter rule.
    fn del_filter(&mut self, dir: Direction, prefix: IpNet) -> Result<(), HookError>;
    /// Writes a rate rule.
    fn set_rate(&mut self, prefix: IpNet, rule: RateRule) -> Result<(), HookError>;
    /// Deletes a rate rule.
    fn del_rate(&mut self, prefix: IpNet) -> Result<(), HookError>;
    /// Writes the table summary the program reads first.
    fn set_config(&mut self, config: HookConfig) -> Result<(), HookError>;
    /// A rule's counter, summed over the CPUs.
    fn counter(&self, rule: u32) -> Result<Counter, HookError>;
    /// Zeroes a rule's counter (a new rule must not inherit an old one's counts).
    fn reset_counter(&mut self, rule: u32) -> Result<(), HookError>;
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Owned<T> {
    owner: String,
    value: T,
    rule: u32,
}

/// A rule as [`HookTables::rules`] lists it, with its counter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RuleStatus {
    /// The plugin that wrote it.
    pub owner: String,
    /// The operation that would write it again.
    pub rule: HookOp,
    /// Packets it matched (for a rate rule: packets it dropped).
    pub packets: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// The hook tables and who owns what in them.
#[derive(Debug)]
pub struct HookTables<M: HookMaps> {
    maps: M,
    filters: BTreeMap<(Direction, IpNet), Owned<Action>>,
    rates: BTreeMap<IpNet, Owned<(u32, u32)>>,
    sampling: BTreeMap<String, u32>,
    next_rule: u32,
    free_rules: Vec<u32>,
}

/// One write, and what undoes it.
enum Undo {
    Filter(Direction, IpNet, Option<Owned<Action>>),
    Rate(IpNet, Option<Owned<(u32, u32)>>),
    Sampling(String, Option<u32>),
}

impl<M: HookMaps> HookTables<M> {
    /// Empty tables over `maps` (which must be empty too).
    pub fn new(maps: M) -> Self {
        Self {
            maps,
            filters: BTreeMap::new(),
            rates: BTreeMap::new(),
            sampling: BTreeMap::new(),
            next_rule: 1,
            free_rules: Vec::new(),
        }
    }

    /// Validates `ops` as one batch of `owner`'s, then applies all of them or none.
    pub fn apply(&mut self, owner: &str, ops: &[HookOp]) -> Result<(), HookError> {
        let errors = self.validate(owner, ops);
        if !errors.is_empty() {
            return Err(HookError::Invalid(errors));
        }
        let mut undo = Vec::new();
        for op in ops {
            if let Err(e) = self.write(owner, op, &mut undo) {
                self.rollback(undo);
                return Err(e);
            }
        }
        if let Err(e) = self.write_config() {
            self.rollback(undo);
            return Err(e);
        }
        Ok(())
    }

    /// Moves `owner` to exactly the rules `ops` set (`Set*` operations), without a gap: they
    /// are written first, then the owner's other rules are removed; all or nothing.
    pub fn replace_owner(&mut self, owner: &str, ops: &[HookOp]) -> Result<(), HookError> {
        let mut batch = ops.to_vec();
        let keeps_filter = |d: Direction, p: IpNet| {
            ops.iter().any(|o| matches!(o, HookOp::SetFilter { direction, prefix, .. } if *direction == d && *prefix == p))
        };
        let keeps_rate = |p: IpNet| {
            ops.iter().any(|o| matches!(o, HookOp::SetRateLimit { prefix, .. } if *prefix == p))
        };
        for ((direction, prefix), _) in self.filters.iter().filter(|(_, o)| o.owner == owner) {
            if !keeps_filter(*direction, *prefix) {
                batch.push(HookOp::RemoveFilter { direction: *direction, prefix: *prefix });
            }
        }
        for (prefix, _) in self.rates.iter().filter(|(_, o)| o.owner == owner) {
            if !keeps_rate(*prefix) {
                batch.push(HookOp::RemoveRateLimit { prefix: *prefix });
            }
        }
        if self.sampling.contains_key(owner)
            && !ops.iter().any(|o| matches!(o, HookOp::SetSampling { .. }))
        {
            batch.push(HookOp::SetSampling { every: 0 });
        }
        self.apply(owner, &batch)
    }

    /// Removes everything `owner` wrote.
    pub fn remove_owner(&mut self, owner: &str) -> Result<(), HookError> {
        self.replace_owner(owner, &[])
    }

    /// Every rule with its owner and counter, optionally of one owner only.
    pub fn rules(&self, owner: Option<&str>) -> Result<Vec<RuleStatus>, HookError> {
        let mine = |o: &str| owner.is_none_or(|want| want == o);
        let mut out = Vec::new();
        for ((direction, prefix), o) in self.filters.iter().filter(|(_, o)| mine(&o.owner)) {
            let c = self.maps.counter(o.rule)?;
            out.push(RuleStatus {
                owner: o.owner.clone(),
                rule: HookOp::SetFilter { direction: *direction, prefix: *prefix, action: o.value },
                packets: c.packets,
                bytes: c.bytes,
            });
        }
        for (prefix, o) in self.rates.iter().filter(|(_, o)| mine(&o.owner)) {
            let c = self.maps.counter(o.rule)?;
            out.push(RuleStatus {
                owner: o.owner.clone(),
                rule: HookOp::SetRateLimit {
                    prefix: *prefix,
                    rate_pps: o.value.0,
                    burst: o.value.1,
                },
                packets: c.packets,
                bytes: c.bytes,
            });
        }
        Ok(out)
    }

    /// Checks a batch against the tables as they would be after each of its operations.
    fn validate(&self, owner: &str, ops: &[HookOp]) -> Vec<OpError> {
        let mut errors = Vec::new();
        // Ownership as the batch goes: key -> owner after the ops so far (None: removed).
        let mut filters: BTreeMap<(Direction, IpNet), Option<String>> = BTreeMap::new();
        let mut rates: BTreeMap<IpNet, Option<String>> = BTreeMap::new();
        let filter_owner =
            |k: &(Direction, IpNet), f: &BTreeMap<(Direction, IpNet), Option<String>>| {
                f.get(k).cloned().unwrap_or_else(|| self.filters.get(k).map(|o| o.owner.clone()))
            };
        let rate_owner = |k: &IpNet, r: &BTreeMap<IpNet, Option<String>>| {
            r.get(k).cloned().unwrap_or_else(|| self.rates.get(k).map(|o| o.owner.clone()))
        };
        for (index, op) in ops.iter().enumerate() {
            let mut err = |field: &'static str, message: String| {
                errors.push(OpError { index, field, message });
            };
            match op {
                HookOp::SetFilter { direction, prefix, .. } => {
                    if let Some(m) = prefix_problem(*prefix) {
                        err("prefix", m);
                        continue;
                    }
                    match filter_owner(&(*direction, *prefix), &filters) {
                        Some(other) if other != owner => err(
                            "prefix",
                            format!("{prefix} ({direction:?}) is held by plugin {other:?}"),
                        ),
                        _ => {
                            filters.insert((*direction, *prefix), Some(owner.to_owned()));
                        }
                    }
                }
                HookOp::RemoveFilter { direction, prefix } => {
                    match filter_owner(&(*direction, *prefix), &filters) {
                        Some(o) if o == owner => {
                            filters.insert((*direction, *prefix), None);
                        }
                        Some(other) => {
                            err("prefix", format!("{prefix} is held by plugin {other:?}"));
                        }
                        None => err("prefix", format!("no {direction:?} filter rule for {prefix}")),
                    }
                }
                HookOp::SetRateLimit { prefix, rate_pps, burst } => {
                    if let Some(m) = prefix_problem(*prefix) {
                        err("prefix", m);
                    } else if !(1..=MAX_RATE_PPS).contains(rate_pps) {
                        err("rate_pps", format!("{rate_pps} is outside 1 to {MAX_RATE_PPS}"));
                    } else if !(1..=MAX_BURST).contains(burst) {
                        err("burst", format!("{burst} is outside 1 to {MAX_BURST}"));
                    } else {
                        match rate_owner(prefix, &rates) {
                            Some(other) if other != owner => {
                                err("prefix", format!("{prefix} is held by plugin {other:?}"));
                            }
                            _ => {
                                rates.insert(*prefix, Some(owner.to_owned()));
                            }
                        }
                    }
                }
                HookOp::RemoveRateLimit { prefix } => match rate_owner(prefix, &rates) {
                    Some(o) if o == owner => {
                        rates.insert(*prefix, None);
                    }
                    Some(other) => err("prefix", format!("{prefix} is held by plugin {other:?}")),
                    None => err("prefix", format!("no rate rule for {prefix}")),
                },
                HookOp::SetSampling { every } => {
                    if *every > MAX_SAMPLE_EVERY {
                        err("every", format!("{every} is over {MAX_SAMPLE_EVERY}"));
                    }
                }
            }
        }
        errors
    }

    fn alloc_rule(&mut self) -> Result<u32, HookError> {
        if let Some(r) = self.free_rules.pop() {
            return Ok(r);
        }
        if self.next_rule < MAX_RULE_IDS {
            self.next_rule += 1;
            return Ok(self.next_rule - 1);
        }
        Err(HookError::RulesFull)
    }

    /// Writes one validated operation, recording how to undo it.
    fn write(&mut self, owner: &str, op: &HookOp, undo: &mut Vec<Undo>) -> Result<(), HookError> {
        match *op {
            HookOp::SetFilter { direction, prefix, action } => {
                let old = self.filters.get(&(direction, prefix)).cloned();
                // A replaced rule keeps its id (and its counts) when its action stays.
                let rule = match &old {
                    Some(o) if o.value == action => o.rule,
                    _ => {
                        let r = self.alloc_rule()?;
                        self.maps.reset_counter(r)?;
                        r
                    }
                };
                self.maps.set_filter(
                    direction,
                    prefix,
                    FilterRule { action: action.code() as u32, rule },
                )?;
                self.filters.insert(
                    (direction, prefix),
                    Owned { owner: owner.to_owned(), value: action, rule },
                );
                if let Some(o) = &old
                    && o.rule != rule
                {
                    self.free_rules.push(o.rule);
                }
                undo.push(Undo::Filter(direction, prefix, old));
            }
            HookOp::RemoveFilter { direction, prefix } => {
                self.maps.del_filter(direction, prefix)?;
                let old = self.filters.remove(&(direction, prefix));
                if let Some(o) = &old {
                    self.free_rules.push(o.rule);
                }
                undo.push(Undo::Filter(direction, prefix, old));
            }
            HookOp::SetRateLimit { prefix, rate_pps, burst } => {
                let old = self.rates.get(&prefix).cloned();
                let rule = match &old {
                    Some(o) if o.value == (rate_pps, burst) => o.rule,
                    _ => {
                        let r = self.alloc_rule()?;
                        self.maps.reset_counter(r)?;
                        r
                    }
                };
                self.maps.set_rate(prefix, RateRule { rate_pps, burst, rule, _pad: 0 })?;
                self.rates.insert(
                    prefix,
                    Owned { owner: owner.to_owned(), value: (rate_pps, burst), rule },
                );
                if let Some(o) = &old
                    && o.rule != rule
                {
                    self.free_rules.push(o.rule);
                }
                undo.push(Undo::Rate(prefix, old));
            }
            HookOp::RemoveRateLimit { prefix } => {
                self.maps.del_rate(prefix)?;
                let old = self.rates.remove(&prefix);
                if let Some(o) = &old {
                    self.free_rules.push(o.rule);
                }
                undo.push(Undo::Rate(prefix, old));
            }
            HookOp::SetSampling { every } => {
                let old = if every == 0 {
                    self.sampling.remove(owner)
                } else {
                    self.sampling.insert(owner.to_owned(), every)
                };
                undo.push(Undo::Sampling(owner.to_owned(), old));
            }
        }
        Ok(())
    }

    /// Puts back what a failed batch changed, newest first. Best effort: the maps failed once.
    fn rollback(&mut self, undo: Vec<Undo>) {
        for u in undo.into_iter().rev() {
            match u {
                Undo::Filter(direction, prefix, old) => {
                    if let Some(cur) = self.filters.remove(&(direction, prefix)) {
                        self.free_rules.push(cur.rule);
                    }
                    match old {
                        Some(o) => {
                            self.free_rules.retain(|r| *r != o.rule);
                            let rule = FilterRule { action: o.value.code() as u32, rule: o.rule };
                            let _ = self.maps.set_filter(direction, prefix, rule);
                            self.filters.insert((direction, prefix), o);
                        }
                        None => {
                            let _ = self.maps.del_filter(direction, prefix);
                        }
                    }
                }
                Undo::Rate(prefix, old) => {
                    if let Some(cur) = self.rates.remove(&prefix) {
                        self.free_rules.push(cur.rule);
                    }
                    match old {
                        Some(o) => {
                            self.free_rules.retain(|r| *r != o.rule);
                            let (rate_pps, burst) = o.value;
                            let rule = RateRule { rate_pps, burst, rule: o.rule, _pad: 0 };
                            let _ = self.maps.set_rate(prefix, rule);
                            self.rates.insert(prefix, o);
                        }
                        None => {
                            let _ = self.maps.del_rate(prefix);
                        }
                    }
                }
                Undo::Sampling(owner, old) => match old {
                    Some(every) => {
                        self.sampling.insert(owner, every);
                    }
                    None => {
                        self.sampling.remove(&owner);
                    }
                },
            }
        }
        let _ = self.write_config();
    }

    /// The summary the program reads: rules per table, and the densest sampling asked for.
    fn write_config(&mut self) -> Result<(), HookError> {
        let count = |d: Direction, v4: bool| {
            self.filters
                .keys()
                .filter(|(dir, p)| *dir == d && matches!(p, IpNet::V4(_)) == v4)
                .count() as u32
        };
        let rates =
            |v4: bool| self.rates.keys().filter(|p| matches!(p, IpNet::V4(_)) == v4).count() as u32;
        let mut config = HookConfig {
            active: 0,
            filter_src_v4: count(Direction::Src, true),
            filter_dst_v4: count(Direction::Dst, true),
            filter_src_v6: count(Direction::Src, false),
            filter_dst_v6: count(Direction::Dst, false),
            rate_v4: rates(true),
            rate_v6: rates(false),
            sample_every: self.sampling.values().copied().min().unwrap_or(0),
        };
        config.active = u32::from(
            !self.filters.is_empty() || !self.rates.is_empty() || config.sample_every != 0,
        );
        self.maps.set_config(config)
    }
}

/// What is wrong with a rule's prefix, if anything.
fn prefix_problem(prefix: IpNet) -> Option<String> {
    if prefix.trunc() != prefix {
        return Some(format!("{prefix} has host bits set (did you mean {}?)", prefix.trunc()));
    }
    None
}

use crate::dataplane::ignore_missing;

/// The hook maps of a loaded or pinned dataplane.
pub struct AyaHookMaps {
    filter_src_v4: LpmTrie<MapData, [u8; 4], FilterRule>,
    filter_dst_v4: LpmTrie<MapData, [u8; 4], FilterRule>,
    filter_src_v6: LpmTrie<MapData, [u8; 16], FilterRule>,
    filter_dst_v6: LpmTrie<MapData, [u8; 16], FilterRule>,
    rate_v4: LpmTrie<MapData, [u8; 4], RateRule>,
    rate_v6: LpmTrie<MapData, [u8; 16], RateRule>,
    config: Array<MapData, HookConfig>,
    counters: PerCpuArray<MapData, Counter>,
}

impl fmt::Debug for AyaHookMaps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AyaHookMaps").finish_non_exhaustive()
    }
}

fn map_err(map: &'static str) -> impl Fn(MapError) -> HookError {
    move |source| HookError::Map { map, source }
}

impl AyaHookMaps {
    /// Takes the hook maps out of a loaded object (the daemon, the packet tests).
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, HookError> {
        Self::build(|name| {
            ebpf.take_map(name).ok_or(HookError::Map {
                map: name,
                source: MapError::InvalidName { name: name.to_owned() },
            })
        })
    }

    /// Opens the hook maps pinned under `pin`.
    pub fn open(pin: &crate::dataplane::PinDir) -> Result<Self, HookError> {
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
            config: typed!(names::HOOK_CONFIG),
            counters: typed!(names::RULE_COUNTERS),
        })
    }
}

fn v4_key(p: ipnet::Ipv4Net) -> Key<[u8; 4]> {
    Key::new(u32::from(p.prefix_len()), p.network().octets())
}

fn v6_key(p: ipnet::Ipv6Net) -> Key<[u8; 16]> {
    Key::new(u32::from(p.prefix_len()), p.network().octets())
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
        clear(&mut self.rate_v6, names::RATE_V6)
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
                map.insert(&v4_key(p), rule, 0).map_err(map_err(name))
            }
            IpNet::V6(p) => {
                let (map, name) = self.filter_v6(dir);
                map.insert(&v6_key(p), rule, 0).map_err(map_err(name))
            }
        }
    }

    fn del_filter(&mut self, dir: Direction, prefix: IpNet) -> Result<(), HookError> {
        match prefix {
            IpNet::V4(p) => {
                let (map, name) = self.filter_v4(dir);
                ignore_missing(map.remove(&v4_key(p))).map_err(map_err(name))
            }
            IpNet::V6(p) => {
                let (map, name) = self.filter_v6(dir);
                ignore_missing(map.remove(&v6_key(p))).map_err(map_err(name))
            }
        }
    }

    fn set_rate(&mut self, prefix: IpNet, rule: RateRule) -> Result<(), HookError> {
        match prefix {
            IpNet::V4(p) => {
                self.rate_v4.insert(&v4_key(p), rule, 0).map_err(map_err(names::RATE_V4))
            }
            IpNet::V6(p) => {
                self.rate_v6.insert(&v6_key(p), rule, 0).map_err(map_err(names::RATE_V6))
            }
        }
    }

    fn del_rate(&mut self, prefix: IpNet) -> Result<(), HookError> {
        match prefix {
            IpNet::V4(p) => {
                ignore_missing(self.rate_v4.remove(&v4_key(p))).map_err(map_err(names::RATE_V4))
            }
            IpNet::V6(p) => {
                ignore_missing(self.rate_v6.remove(&v6_key(p))).map_err(map_err(names::RATE_V6))
            }
        }
    }

    fn set_config(&mut self, config: HookConfig) -> Result<(), HookError> {
        self.config.set(0, config, 0).map_err(map_err(names::HOOK_CONFIG))
    }

    fn counter(&self, rule: u32) -> Result<Counter, HookError> {
        let per_cpu = self.counters.get(&rule, 0).map_err(map_err(names::RULE_COUNTERS))?;
        Ok(per_cpu.iter().fold(Counter::default(), |a, c| Counter {
            packets: a.packets + c.packets,
            bytes: a.bytes + c.bytes,
        }))
    }

    fn reset_counter(&mut self, rule: u32) -> Result<(), HookError> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| HookError::Map {
            map: names::RULE_COUNTERS,
            source: MapError::SyscallError(aya::sys::SyscallError { call: "nr_cpus", io_error: e }),
        })?;
        let zero =
            aya::maps::PerCpuValues::try_from(vec![Counter::default(); cpus]).map_err(|e| {
                HookError::Map {
                    map: names::RULE_COUNTERS,
                    source: MapError::SyscallError(aya::sys::SyscallError {
                        call: "per-CPU values",
                        io_error: e,
                    }),
                }
            })?;
        self.counters.set(rule, zero, 0).map_err(map_err(names::RULE_COUNTERS))
    }
}

/// Hook maps in memory: for tools and tests that run plugins without a dataplane (the local
/// harness), and to see what a batch would write.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MemoryHookMaps {
    /// Filter rules.
    pub filters: BTreeMap<(Direction, IpNet), FilterRule>,
    /// Rate rules.
    pub rates: BTreeMap<IpNet, RateRule>,
    /// The summary.
    pub config: HookConfig,
}

impl HookMaps for MemoryHookMaps {
    fn set_filter(
        &mut self,
        dir: Direction,
        prefix: IpNet,
        rule: FilterRule,
    ) -> Result<(), HookError> {
        self.filters.insert((dir, prefix), rule);
        Ok(())
    }
    fn del_filter(&mut self, dir: Direction, prefix: IpNet) -> Result<(), HookError> {
        self.filters.remove(&(dir, prefix));
        Ok(())
    }
    fn set_rate(&mut self, prefix: IpNet, rule: RateRule) -> Result<(), HookError> {
        self.rates.insert(prefix, rule);
        Ok(())
    }
    fn del_rate(&mut self, prefix: IpNet) -> Result<(), HookError> {
        self.rates.remove(&prefix);
        Ok(())
    }
    fn set_config(&mut self, config: HookConfig) -> Result<(), HookError> {
        self.config = config;
        Ok(())
    }
    fn counter(&self, _rule: u32) -> Result<Counter, HookError> {
        Ok(Counter::default())
    }
    fn reset_counter(&mut self, _rule: u32) -> Result<(), HookError> {
        Ok(())
    }
}

/// A rule as the pinned hook tables hold it (`sluice hooks`).
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
pub fn pinned_rules(pin: &crate::dataplane::PinDir) -> Result<(Vec<PinnedRule>, u32), HookError> {
    let maps = AyaHookMaps::open(pin)?;
    let v4 = |k: &Key<[u8; 4]>| IpNet::V4(crate::dataplane::net_v4(k));
    let v6 = |k: &Key<[u8; 16]>| IpNet::V6(crate::dataplane::net_v6(k));
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
            src: addr(16),
            dst: addr(32),
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// Maps in memory, with a switch that makes one write fail.
    #[derive(Debug, Default)]
    struct Memory {
        maps: MemoryHookMaps,
        fail_at: Option<usize>,
        writes: usize,
    }

    impl Memory {
        fn write(&mut self) -> Result<&mut MemoryHookMaps, HookError> {
            self.writes += 1;
            match self.fail_at {
                Some(n) if self.writes == n => {
                    Err(HookError::Map { map: "test", source: MapError::KeyNotFound })
                }
                _ => Ok(&mut self.maps),
            }
        }
    }

    impl std::ops::Deref for Memory {
        type Target = MemoryHookMaps;
        fn deref(&self) -> &MemoryHookMaps {
            &self.maps
        }
    }

    impl HookMaps for Memory {
        fn set_filter(&mut self, d: Direction, p: IpNet, r: FilterRule) -> Result<(), HookError> {
            self.write()?.set_filter(d, p, r)
        }
        fn del_filter(&mut self, d: Direction, p: IpNet) -> Result<(), HookError> {
            self.write()?.del_filter(d, p)
        }
        fn set_rate(&mut self, p: IpNet, r: RateRule) -> Result<(), HookError> {
            self.write()?.set_rate(p, r)
        }
        fn del_rate(&mut self, p: IpNet) -> Result<(), HookError> {
            self.write()?.del_rate(p)
        }
        fn set_config(&mut self, config: HookConfig) -> Result<(), HookError> {
            self.maps.set_config(config)
        }
        fn counter(&self, rule: u32) -> Result<Counter, HookError> {
            self.maps.counter(rule)
        }
        fn reset_counter(&mut self, rule: u32) -> Result<(), HookError> {
            self.maps.reset_counter(rule)
        }
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn drop_src(p: &str) -> HookOp {
        HookOp::SetFilter { direction: Direction::Src, prefix: net(p), action: Action::Drop }
    }

    #[test]
    fn a_batch_is_validated_whole_and_nothing_is_written_when_one_op_is_bad() {
        let mut t = HookTables::new(Memory::default());
        let err = t
            .apply(
                "acl",
                &[
                    drop_src("192.0.2.0/24"),
                    drop_src("10.1.2.3/8"),
                    HookOp::SetRateLimit { prefix: net("2001:db8::/32"), rate_pps: 0, burst: 5 },
                    HookOp::SetRateLimit { prefix: net("2001:db8::/32"), rate_pps: 5, burst: 0 },
                    HookOp::RemoveFilter { direction: Direction::Dst, prefix: net("10.0.0.0/8") },
                    HookOp::SetSampling { every: MAX_SAMPLE_EVERY + 1 },
                ],
            )
            .unwrap_err();
        let HookError::Invalid(errors) = err else { panic!("{err}") };
        let got: Vec<(usize, &str)> = errors.iter().map(|e| (e.index, e.field)).collect();
        assert_eq!(
            got,
            [(1, "prefix"), (2, "rate_pps"), (3, "burst"), (4, "prefix"), (5, "every")]
        );
        assert!(errors[0].message.contains("host bits"), "{}", errors[0].message);
        assert!(t.maps.filters.is_empty(), "the valid first op was not written either");
        assert_eq!(t.maps.config, HookConfig::default());
    }

    #[test]
    fn prefixes_belong_to_their_plugin_and_removal_takes_exactly_its_rules() {
        let mut t = HookTables::new(Memory::default());
        t.apply("a", &[drop_src("192.0.2.0/24"), HookOp::SetSampling { every: 100 }]).unwrap();
        t.apply(
            "b",
            &[
                drop_src("198.51.100.0/24"),
                HookOp::SetRateLimit { prefix: net("2001:db8::/32"), rate_pps: 10, burst: 20 },
                HookOp::SetSampling { every: 10 },
            ],
        )
        .unwrap();
        let err = t.apply("b", &[drop_src("192.0.2.0/24")]).unwrap_err();
        assert!(err.to_string().contains("held by plugin \"a\""), "{err}");
        let err = t
            .apply(
                "b",
                &[HookOp::RemoveFilter { direction: Direction::Src, prefix: net("192.0.2.0/24") }],
            )
            .unwrap_err();
        assert!(matches!(err, HookError::Invalid(_)), "{err}");
        assert_eq!(t.maps.config.filter_src_v4, 2);
        assert_eq!(t.maps.config.rate_v6, 1);
        assert_eq!(t.maps.config.sample_every, 10, "the densest sampling wins");

        t.remove_owner("b").unwrap();
        let left: BTreeSet<IpNet> = t.maps.filters.keys().map(|(_, p)| *p).collect();
        assert_eq!(left, BTreeSet::from([net("192.0.2.0/24")]));
        assert!(t.maps.rates.is_empty());
        assert_eq!(t.maps.config.sample_every, 100);
        assert_eq!(t.rules(Some("b")).unwrap(), []);
        assert_eq!(t.rules(None).unwrap().len(), 1);
    }

    #[test]
    fn a_new_version_replaces_the_old_rules_without_a_gap() {
        let mut t = HookTables::new(Memory::default());
        t.apply("acl", &[drop_src("192.0.2.0/24"), drop_src("198.51.100.0/24")]).unwrap();
        let kept = t.maps.filters[&(Direction::Src, net("192.0.2.0/24"))];
        t.maps.writes = 0;
        t.replace_owner("acl", &[drop_src("192.0.2.0/24"), drop_src("203.0.113.0/24")]).unwrap();
        let now: BTreeSet<IpNet> = t.maps.filters.keys().map(|(_, p)| *p).collect();
        assert_eq!(now, BTreeSet::from([net("192.0.2.0/24"), net("203.0.113.0/24")]));
        // A rule that stays keeps its id, so its counter goes on.
        assert_eq!(t.maps.filters[&(Direction::Src, net("192.0.2.0/24"))], kept);
        // Writes, in order: the two sets, then the deletion.
        assert_eq!(t.maps.writes, 3);
    }

    #[test]
    fn a_failed_write_undoes_the_batch() {
        let mut t = HookTables::new(Memory::default());
        t.apply("acl", &[drop_src("192.0.2.0/24")]).unwrap();
        let before = (t.maps.filters.clone(), t.maps.config);
        // The third write of the batch fails: two were made, and must be undone.
        t.maps.fail_at = Some(t.maps.writes + 3);
        let err = t
            .apply(
                "acl",
                &[
                    HookOp::RemoveFilter { direction: Direction::Src, prefix: net("192.0.2.0/24") },
                    drop_src("198.51.100.0/24"),
                    drop_src("203.0.113.0/24"),
                ],
            )
            .unwrap_err();
        assert!(matches!(err, HookError::Map { .. }), "{err}");
        let after: BTreeSet<IpNet> = t.maps.filters.keys().map(|(_, p)| *p).collect();
        assert_eq!(after, BTreeSet::from([net("192.0.2.0/24")]), "maps as before the batch");
        assert_eq!(t.maps.filters, before.0);
        assert_eq!(t.maps.config, before.1);
        assert_eq!(t.filters.len(), 1, "and the writer's own view too");
    }

    #[test]
    fn operations_read_from_json_with_clear_errors() {
        let ops: Vec<HookOp> = serde_json::from_str(
            r#"[{"op":"set-filter","direction":"src","prefix":"192.0.2.0/24","action":"drop"},
                {"op":"set-rate-limit","prefix":"2001:db8::/32","rate_pps":100,"burst":10},
                {"op":"set-sampling","every":64}]"#,
        )
        .unwrap();
        assert_eq!(ops[0], drop_src("192.0.2.0/24"));
        let err = serde_json::from_str::<HookOp>(
            r#"{"op":"set-filter","direction":"up","prefix":"192.0.2.0/24","action":"drop"}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown variant `up`"), "{err}");
        let err = serde_json::from_str::<HookOp>(r#"{"op":"set-sampling","every":1,"extra":2}"#)
            .unwrap_err();
        assert!(err.to_string().contains("unknown field `extra`"), "{err}");
    }
}
