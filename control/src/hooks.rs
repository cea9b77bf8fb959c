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
//! - A steer rule names gateways by address; they are turned into the dataplane's next-hop ids
//!   through [`Gateways`], the daemon's view of its next hops, and turned again when those change
//!   ([`HookTables::refresh_steering`]). A gateway that is not a next hop of any route is left
//!   out until it becomes one; with none left, the routes decide.
//!
//! Map access sits behind [`HookMaps`], so all of this is tested without root; [`AyaHookMaps`]
//! is the real one.

use std::{
    collections::BTreeMap,
    fmt,
    net::IpAddr,
    sync::{Arc, RwLock},
};

use aya::{
    Ebpf,
    maps::{Array, LpmTrie, Map, MapData, MapError, PerCpuArray, RingBuf, lpm_trie::Key},
};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use sluice_common::{
    Counter, NextHop, addr_of,
    hooks::{
        FilterAction, FilterRule, HookConfig, MAX_RULE_IDS, MAX_STEER_MEMBERS, RateRule,
        STEER_SLOTS, SUMMARY_WORDS, Sample, SteerMember, SteerRule, Summary, summary, summary_mark,
    },
    names,
};

/// Most packets per second a rate rule may allow.
pub const MAX_RATE_PPS: u32 = 100_000_000;
/// Largest bucket a rate rule may have.
pub const MAX_BURST: u32 = 10_000_000;
/// Sparsest sampling: one packet in this many.
pub const MAX_SAMPLE_EVERY: u32 = 1 << 24;
/// Heaviest weight of a steer gateway.
pub const MAX_STEER_WEIGHT: u16 = 1000;

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

/// A gateway of a steer rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SteerHop {
    /// The gateway: a neighbour that is the next hop of some route.
    pub via: IpAddr,
    /// Its share of the flows, 1 to [`MAX_STEER_WEIGHT`] (default 1).
    #[serde(default = "one")]
    pub weight: u16,
}

const fn one() -> u16 {
    1
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
    /// Adds or replaces the steer rule for the destinations in `prefix`: the flows the routes
    /// forward there go to these gateways instead, in proportion to their weights.
    SetSteer {
        /// Destination prefix (host bits zero).
        prefix: IpNet,
        /// 1 to [`MAX_STEER_MEMBERS`] gateways of the prefix's family, each once.
        next_hops: Vec<SteerHop>,
    },
    /// Removes a steer rule.
    RemoveSteer {
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
    /// Writes a steer rule.
    fn set_steer(&mut self, prefix: IpNet, rule: &SteerRule) -> Result<(), HookError>;
    /// Deletes a steer rule.
    fn del_steer(&mut self, prefix: IpNet) -> Result<(), HookError>;
    /// The next-hop id whose neighbour is `via`, if the dataplane has one.
    fn nexthop_of(&self, via: IpAddr) -> Option<u32>;
    /// Writes the table summary the program reads first.
    fn set_config(&mut self, config: HookConfig) -> Result<(), HookError>;
    /// Writes which first 16 bits of an address the rules of `table` ([`summary`]) cover.
    /// Maps without summaries (in memory) need not keep them.
    fn set_summary(&mut self, table: u32, value: &Summary) -> Result<(), HookError> {
        let _ = (table, value);
        Ok(())
    }
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
    steers: BTreeMap<IpNet, Owned<Vec<SteerHop>>>,
    sampling: BTreeMap<String, u32>,
    next_rule: u32,
    free_rules: Vec<u32>,
    /// The summaries last written, by table (`None`: not written yet).
    summaries: Option<Vec<Summary>>,
}

/// One write, and what undoes it.
enum Undo {
    Filter(Direction, IpNet, Option<Owned<Action>>),
    Rate(IpNet, Option<Owned<(u32, u32)>>),
    Steer(IpNet, Option<Owned<Vec<SteerHop>>>),
    Sampling(String, Option<u32>),
}

impl<M: HookMaps> HookTables<M> {
    /// Empty tables over `maps` (which must be empty too).
    pub fn new(maps: M) -> Self {
        Self {
            maps,
            filters: BTreeMap::new(),
            rates: BTreeMap::new(),
            steers: BTreeMap::new(),
            sampling: BTreeMap::new(),
            next_rule: 1,
            free_rules: Vec::new(),
            summaries: None,
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
        let keeps_steer = |p: IpNet| {
            ops.iter().any(|o| matches!(o, HookOp::SetSteer { prefix, .. } if *prefix == p))
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
        for (prefix, _) in self.steers.iter().filter(|(_, o)| o.owner == owner) {
            if !keeps_steer(*prefix) {
                batch.push(HookOp::RemoveSteer { prefix: *prefix });
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
        for (prefix, o) in self.steers.iter().filter(|(_, o)| mine(&o.owner)) {
            let c = self.maps.counter(o.rule)?;
            out.push(RuleStatus {
                owner: o.owner.clone(),
                rule: HookOp::SetSteer { prefix: *prefix, next_hops: o.value.clone() },
                packets: c.packets,
                bytes: c.bytes,
            });
        }
        Ok(out)
    }

    /// Turns every steer rule's gateways into next-hop ids again and rewrites the rules: after
    /// the dataplane's next hops changed ([`Gateways::version`]).
    pub fn refresh_steering(&mut self) -> Result<(), HookError> {
        let rules: Vec<(IpNet, SteerRule)> =
            self.steers.iter().map(|(p, o)| (*p, self.steer_value(&o.value, o.rule))).collect();
        for (prefix, rule) in rules {
            self.maps.set_steer(prefix, &rule)?;
        }
        Ok(())
    }

    /// The value a steer rule is written as: its gateways that are next hops now, repeated over
    /// the slots by weight.
    fn steer_value(&self, hops: &[SteerHop], rule: u32) -> SteerRule {
        let mut value = SteerRule { rule, ..SteerRule::default() };
        let mut live = Vec::new();
        for hop in hops.iter().take(MAX_STEER_MEMBERS) {
            if let Some(id) = self.maps.nexthop_of(hop.via) {
                let gateway = match hop.via {
                    IpAddr::V4(a) => {
                        let mut g = [0; 16];
                        g[..4].copy_from_slice(&a.octets());
                        g
                    }
                    IpAddr::V6(a) => a.octets(),
                };
                value.members[live.len()] = SteerMember { nexthop: id, gateway };
                live.push((live.len() as u8, hop.weight));
            }
        }
        let slots = crate::fib::expand_weights(&live, STEER_SLOTS);
        value.slot[..slots.len()].copy_from_slice(&slots);
        value.slots = slots.len() as u32;
        value
    }

    /// Checks a batch against the tables as they would be after each of its operations.
    fn validate(&self, owner: &str, ops: &[HookOp]) -> Vec<OpError> {
        let mut errors = Vec::new();
        // Ownership as the batch goes: key -> owner after the ops so far (None: removed).
        let mut filters = BTreeMap::new();
        let mut rates = BTreeMap::new();
        let mut steers = BTreeMap::new();
        for (index, op) in ops.iter().enumerate() {
            let problem = match op {
                HookOp::SetFilter { direction, prefix, .. } => {
                    prefix_problem(*prefix).map(|m| ("prefix", m)).or_else(|| {
                        let held = self.filters.get(&(*direction, *prefix)).map(|o| &o.owner);
                        let key = (*direction, *prefix);
                        claim(&mut filters, key, held, owner, true, "filter rule")
                    })
                }
                HookOp::RemoveFilter { direction, prefix } => {
                    let held = self.filters.get(&(*direction, *prefix)).map(|o| &o.owner);
                    claim(&mut filters, (*direction, *prefix), held, owner, false, "filter rule")
                }
                HookOp::SetRateLimit { prefix, rate_pps, burst } => prefix_problem(*prefix)
                    .map(|m| ("prefix", m))
                    .or_else(|| {
                        (!(1..=MAX_RATE_PPS).contains(rate_pps)).then(|| {
                            ("rate_pps", format!("{rate_pps} is outside 1 to {MAX_RATE_PPS}"))
                        })
                    })
                    .or_else(|| {
                        (!(1..=MAX_BURST).contains(burst))
                            .then(|| ("burst", format!("{burst} is outside 1 to {MAX_BURST}")))
                    })
                    .or_else(|| {
                        let held = self.rates.get(prefix).map(|o| &o.owner);
                        claim(&mut rates, *prefix, held, owner, true, "rate rule")
                    }),
                HookOp::RemoveRateLimit { prefix } => {
                    let held = self.rates.get(prefix).map(|o| &o.owner);
                    claim(&mut rates, *prefix, held, owner, false, "rate rule")
                }
                HookOp::SetSteer { prefix, next_hops } => prefix_problem(*prefix)
                    .map(|m| ("prefix", m))
                    .or_else(|| steer_problem(*prefix, next_hops))
                    .or_else(|| {
                        let held = self.steers.get(prefix).map(|o| &o.owner);
                        claim(&mut steers, *prefix, held, owner, true, "steer rule")
                    }),
                HookOp::RemoveSteer { prefix } => {
                    let held = self.steers.get(prefix).map(|o| &o.owner);
                    claim(&mut steers, *prefix, held, owner, false, "steer rule")
                }
                HookOp::SetSampling { every } => (*every > MAX_SAMPLE_EVERY)
                    .then(|| ("every", format!("{every} is over {MAX_SAMPLE_EVERY}"))),
            };
            if let Some((field, message)) = problem {
                errors.push(OpError { index, field, message });
            }
        }
        errors
    }

    /// The id of a rule being written: `kept` (the id of the rule it replaces, carrying its
    /// counts over), or a new one with a zeroed counter.
    fn rule_id(&mut self, kept: Option<u32>) -> Result<u32, HookError> {
        if let Some(r) = kept {
            return Ok(r);
        }
        let r = self.alloc_rule()?;
        self.maps.reset_counter(r)?;
        Ok(r)
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
                let rule =
                    self.rule_id(old.as_ref().filter(|o| o.value == action).map(|o| o.rule))?;
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
                let kept = old.as_ref().filter(|o| o.value == (rate_pps, burst)).map(|o| o.rule);
                let rule = self.rule_id(kept)?;
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
            HookOp::SetSteer { prefix, ref next_hops } => {
                let old = self.steers.get(&prefix).cloned();
                let rule = self.rule_id(old.as_ref().map(|o| o.rule))?;
                let value = self.steer_value(next_hops, rule);
                if let Err(e) = self.maps.set_steer(prefix, &value) {
                    if old.is_none() {
                        self.free_rules.push(rule);
                    }
                    return Err(e);
                }
                self.steers.insert(
                    prefix,
                    Owned { owner: owner.to_owned(), value: next_hops.clone(), rule },
                );
                undo.push(Undo::Steer(prefix, old));
            }
            HookOp::RemoveSteer { prefix } => {
                self.maps.del_steer(prefix)?;
                let old = self.steers.remove(&prefix);
                if let Some(o) = &old {
                    self.free_rules.push(o.rule);
                }
                undo.push(Undo::Steer(prefix, old));
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
                Undo::Steer(prefix, old) => {
                    if let Some(cur) = self.steers.remove(&prefix) {
                        self.free_rules.push(cur.rule);
                    }
                    match old {
                        Some(o) => {
                            self.free_rules.retain(|r| *r != o.rule);
                            let value = self.steer_value(&o.value, o.rule);
                            let _ = self.maps.set_steer(prefix, &value);
                            self.steers.insert(prefix, o);
                        }
                        None => {
                            let _ = self.maps.del_steer(prefix);
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

    /// Which first 16 bits of an address each table's rules cover (see [`Summary`]).
    fn summaries(&self) -> Vec<Summary> {
        let mut out = vec![[0u64; SUMMARY_WORDS]; summary::TABLES as usize];
        let mut mark = |table: u32, prefix: &IpNet| {
            let first = match prefix.addr() {
                IpAddr::V4(a) => [a.octets()[0], a.octets()[1]],
                IpAddr::V6(a) => [a.octets()[0], a.octets()[1]],
            };
            summary_mark(&mut out[table as usize], first, prefix.prefix_len());
        };
        for (dir, prefix) in self.filters.keys() {
            let table = match (dir, prefix) {
                (Direction::Src, IpNet::V4(_)) => summary::FILTER_SRC_V4,
                (Direction::Dst, IpNet::V4(_)) => summary::FILTER_DST_V4,
                (Direction::Src, IpNet::V6(_)) => summary::FILTER_SRC_V6,
                (Direction::Dst, IpNet::V6(_)) => summary::FILTER_DST_V6,
            };
            mark(table, prefix);
        }
        for prefix in self.rates.keys() {
            let v4 = matches!(prefix, IpNet::V4(_));
            mark(if v4 { summary::RATE_V4 } else { summary::RATE_V6 }, prefix);
        }
        for prefix in self.steers.keys() {
            let v4 = matches!(prefix, IpNet::V4(_));
            mark(if v4 { summary::STEER_V4 } else { summary::STEER_V6 }, prefix);
        }
        out
    }

    /// The summary the program reads: rules per table, the densest sampling asked for, and
    /// (written first, the tables that changed only) which addresses each table's rules cover.
    fn write_config(&mut self) -> Result<(), HookError> {
        let summaries = self.summaries();
        for (table, value) in summaries.iter().enumerate() {
            if self.summaries.as_ref().is_none_or(|old| old[table] != *value)
                && let Err(e) = self.maps.set_summary(table as u32, value)
            {
                self.summaries = None;
                return Err(e);
            }
        }
        self.summaries = Some(summaries);
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
            steer_v4: self.steers.keys().filter(|p| matches!(p, IpNet::V4(_))).count() as u32,
            steer_v6: self.steers.keys().filter(|p| matches!(p, IpNet::V6(_))).count() as u32,
        };
        config.active = u32::from(
            !self.filters.is_empty()
                || !self.rates.is_empty()
                || !self.steers.is_empty()
                || config.sample_every != 0,
        );
        self.maps.set_config(config)
    }
}

/// Checks that `owner` may set (or remove) the rule on `key`, given who holds it in the tables
/// (`held`) and what the batch did to it so far (`batch`), and records the outcome in `batch`.
fn claim<K: Ord + fmt::Debug>(
    batch: &mut BTreeMap<K, Option<String>>,
    key: K,
    held: Option<&String>,
    owner: &str,
    set: bool,
    what: &str,
) -> Option<(&'static str, String)> {
    let current = match batch.get(&key) {
        Some(after_batch) => after_batch.clone(),
        None => held.cloned(),
    };
    match current {
        Some(other) if other != owner => {
            Some(("prefix", format!("the {what} on {key:?} is held by plugin {other:?}")))
        }
        None if !set => Some(("prefix", format!("no {what} on {key:?}"))),
        _ => {
            batch.insert(key, set.then(|| owner.to_owned()));
            None
        }
    }
}

/// What is wrong with a steer rule's gateways, if anything: the field and why.
fn steer_problem(prefix: IpNet, hops: &[SteerHop]) -> Option<(&'static str, String)> {
    if hops.is_empty() || hops.len() > MAX_STEER_MEMBERS {
        return Some((
            "next_hops",
            format!("{} gateways: a steer rule has 1 to {MAX_STEER_MEMBERS}", hops.len()),
        ));
    }
    for (i, hop) in hops.iter().enumerate() {
        if hop.via.is_ipv4() != matches!(prefix, IpNet::V4(_)) {
            return Some(("via", format!("{} is not of the family of {prefix}", hop.via)));
        }
        if hop.via.is_unspecified() || hop.via.is_loopback() || hop.via.is_multicast() {
            return Some(("via", format!("{} cannot be a gateway", hop.via)));
        }
        if !(1..=MAX_STEER_WEIGHT).contains(&hop.weight) {
            return Some(("weight", format!("{} is outside 1 to {MAX_STEER_WEIGHT}", hop.weight)));
        }
        if hops[..i].iter().any(|h| h.via == hop.via) {
            return Some(("via", format!("{} is listed twice", hop.via)));
        }
    }
    None
}

/// The dataplane's next hops by gateway, kept by the daemon as it writes them, so that steer
/// rules can name gateways by address. Cloned handles share one view.
#[derive(Clone, Debug, Default)]
pub struct Gateways(Arc<RwLock<GatewayView>>);

#[derive(Debug, Default)]
struct GatewayView {
    version: u64,
    by_addr: BTreeMap<IpAddr, u32>,
}

impl Gateways {
    /// Takes the next hops the dataplane now holds (their gateways: the lowest id wins when
    /// one gateway is reached through several interfaces); the version moves on when that
    /// changes anything.
    pub fn update(&self, nexthops: &BTreeMap<u32, NextHop>) {
        let mut by_addr = BTreeMap::new();
        for (id, nh) in nexthops {
            if let Some(addr) = crate::fib::neighbour_of(nh) {
                by_addr.entry(addr).or_insert(*id);
            }
        }
        let mut view = self.0.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if view.by_addr != by_addr {
            view.by_addr = by_addr;
            view.version += 1;
        }
    }

    /// Moves on whenever the gateways change.
    pub fn version(&self) -> u64 {
        self.0.read().unwrap_or_else(std::sync::PoisonError::into_inner).version
    }

    /// The next-hop id of a gateway.
    pub fn get(&self, via: IpAddr) -> Option<u32> {
        self.0.read().unwrap_or_else(std::sync::PoisonError::into_inner).by_addr.get(&via).copied()
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

    fn set_steer(&mut self, prefix: IpNet, rule: &SteerRule) -> Result<(), HookError> {
        match prefix {
            IpNet::V4(p) => {
                self.steer_v4.insert(&v4_key(p), rule, 0).map_err(map_err(names::STEER_V4))
            }
            IpNet::V6(p) => {
                self.steer_v6.insert(&v6_key(p), rule, 0).map_err(map_err(names::STEER_V6))
            }
        }
    }

    fn del_steer(&mut self, prefix: IpNet) -> Result<(), HookError> {
        match prefix {
            IpNet::V4(p) => {
                ignore_missing(self.steer_v4.remove(&v4_key(p))).map_err(map_err(names::STEER_V4))
            }
            IpNet::V6(p) => {
                ignore_missing(self.steer_v6.remove(&v6_key(p))).map_err(map_err(names::STEER_V6))
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
        Ok(crate::dataplane::sum_counters(per_cpu.iter()))
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
    /// Steer rules.
    pub steers: BTreeMap<IpNet, SteerRule>,
    /// Next-hop ids by gateway, as the daemon would know them.
    pub gateways: BTreeMap<IpAddr, u32>,
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
    fn set_steer(&mut self, prefix: IpNet, rule: &SteerRule) -> Result<(), HookError> {
        self.steers.insert(prefix, *rule);
        Ok(())
    }
    fn del_steer(&mut self, prefix: IpNet) -> Result<(), HookError> {
        self.steers.remove(&prefix);
        Ok(())
    }
    fn nexthop_of(&self, via: IpAddr) -> Option<u32> {
        self.gateways.get(&via).copied()
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

/// The gateways a written steer rule holds (those that were next hops when it was written),
/// each weighted by its slots.
fn steer_hops(r: &SteerRule, prefix: IpNet) -> Vec<SteerHop> {
    let mut weights = [0u16; MAX_STEER_MEMBERS];
    for m in &r.slot[..(r.slots as usize).min(STEER_SLOTS)] {
        if let Some(w) = weights.get_mut(usize::from(*m)) {
            *w += 1;
        }
    }
    let family =
        if prefix.addr().is_ipv4() { sluice_common::FAMILY_V4 } else { sluice_common::FAMILY_V6 };
    r.members
        .iter()
        .zip(weights)
        .filter(|(_, w)| *w > 0)
        .map(|(m, weight)| SteerHop { via: addr_of(family, &m.gateway), weight })
        .collect()
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

    use sluice_common::hooks::summary_covers;

    use super::*;

    /// Maps in memory, with a switch that makes one write fail.
    #[derive(Debug, Default)]
    struct Memory {
        maps: MemoryHookMaps,
        fail_at: Option<usize>,
        writes: usize,
        /// Summaries written, by table, and how many writes.
        summaries: BTreeMap<u32, Summary>,
        summary_writes: usize,
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
        fn set_steer(&mut self, p: IpNet, r: &SteerRule) -> Result<(), HookError> {
            self.write()?.set_steer(p, r)
        }
        fn del_steer(&mut self, p: IpNet) -> Result<(), HookError> {
            self.write()?.del_steer(p)
        }
        fn nexthop_of(&self, via: IpAddr) -> Option<u32> {
            self.maps.nexthop_of(via)
        }
        fn set_config(&mut self, config: HookConfig) -> Result<(), HookError> {
            self.maps.set_config(config)
        }
        fn set_summary(&mut self, table: u32, value: &Summary) -> Result<(), HookError> {
            self.summary_writes += 1;
            self.summaries.insert(table, *value);
            Ok(())
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
    fn summaries_mark_what_each_tables_rules_cover_and_only_changes_are_written() {
        let marked = |t: &HookTables<Memory>, table: u32| {
            (0..1u32 << 16)
                .filter(|&i| summary_covers(&t.maps.summaries[&table], i))
                .collect::<Vec<_>>()
        };
        let mut t = HookTables::new(Memory::default());
        t.apply(
            "a",
            &[
                drop_src("198.51.100.0/24"),
                HookOp::SetRateLimit { prefix: net("2001:db8::/32"), rate_pps: 10, burst: 20 },
            ],
        )
        .unwrap();
        assert_eq!(t.maps.summary_writes, summary::TABLES as usize, "all tables, the first time");
        assert_eq!(marked(&t, summary::FILTER_SRC_V4), [0xc633]);
        assert_eq!(marked(&t, summary::RATE_V6), [0x2001]);
        for table in [summary::FILTER_DST_V4, summary::FILTER_SRC_V6, summary::STEER_V4] {
            assert!(marked(&t, table).is_empty(), "table {table}");
        }
        let dst = HookOp::SetFilter {
            direction: Direction::Dst,
            prefix: net("10.0.0.0/8"),
            action: Action::Count,
        };
        t.apply("a", &[dst]).unwrap();
        assert_eq!(t.maps.summary_writes, summary::TABLES as usize + 1, "only the table changed");
        assert_eq!(marked(&t, summary::FILTER_DST_V4), (0x0a00..0x0b00).collect::<Vec<_>>());
        t.apply(
            "a",
            &[HookOp::RemoveFilter { direction: Direction::Src, prefix: net("198.51.100.0/24") }],
        )
        .unwrap();
        assert!(marked(&t, summary::FILTER_SRC_V4).is_empty(), "a removed rule leaves no mark");
        assert_eq!(marked(&t, summary::RATE_V6), [0x2001]);
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

    fn steer(prefix: &str, hops: &[(&str, u16)]) -> HookOp {
        HookOp::SetSteer {
            prefix: net(prefix),
            next_hops: hops
                .iter()
                .map(|(via, weight)| SteerHop { via: via.parse().unwrap(), weight: *weight })
                .collect(),
        }
    }

    #[test]
    fn steer_rules_are_validated_resolved_through_the_next_hops_and_refreshed() {
        let mut t = HookTables::new(Memory::default());
        let err = t
            .apply(
                "lb",
                &[
                    steer("203.0.113.0/24", &[]),
                    steer("203.0.113.0/24", &[("2001:db8::1", 1)]),
                    steer("203.0.113.0/24", &[("10.0.1.2", 0)]),
                    steer("203.0.113.0/24", &[("10.0.1.2", 1), ("10.0.1.2", 2)]),
                    steer("203.0.113.0/24", &[("0.0.0.0", 1)]),
                    HookOp::RemoveSteer { prefix: net("198.51.100.0/24") },
                ],
            )
            .unwrap_err();
        let HookError::Invalid(errors) = err else { panic!("{err}") };
        let got: Vec<(usize, &str)> = errors.iter().map(|e| (e.index, e.field)).collect();
        assert_eq!(
            got,
            [(0, "next_hops"), (1, "via"), (2, "weight"), (3, "via"), (4, "via"), (5, "prefix")]
        );
        assert!(t.maps.steers.is_empty());

        // 10.0.1.2 is next hop 7; 10.0.2.2 is no next hop yet: it is left out.
        t.maps.maps.gateways.insert("10.0.1.2".parse().unwrap(), 7);
        t.apply("lb", &[steer("203.0.113.0/24", &[("10.0.1.2", 3), ("10.0.2.2", 1)])]).unwrap();
        let r = t.maps.steers[&net("203.0.113.0/24")];
        assert_eq!((r.slots, r.members[0].nexthop), (3, 7));
        assert_eq!(&r.members[0].gateway[..4], &[10, 0, 1, 2]);
        assert_eq!(&r.slot[..3], &[0, 0, 0]);
        assert_eq!(t.maps.config.steer_v4, 1);
        assert_eq!(t.maps.config.active, 1);
        let err = t.apply("other", &[steer("203.0.113.0/24", &[("10.0.1.2", 1)])]).unwrap_err();
        assert!(err.to_string().contains("held by plugin \"lb\""), "{err}");

        // Once it is a next hop, a refresh spreads the slots 3:1.
        t.maps.maps.gateways.insert("10.0.2.2".parse().unwrap(), 9);
        t.refresh_steering().unwrap();
        let r = t.maps.steers[&net("203.0.113.0/24")];
        assert_eq!(r.slots, 4);
        assert_eq!(&r.slot[..4], &[0, 0, 0, 1]);
        assert_eq!(r.members[1].nexthop, 9);
        // Listed as it was written.
        let listed = t.rules(Some("lb")).unwrap();
        assert_eq!(listed[0].rule, steer("203.0.113.0/24", &[("10.0.1.2", 3), ("10.0.2.2", 1)]));
        assert_eq!(
            steer_hops(&r, net("203.0.113.0/24")),
            [
                SteerHop { via: "10.0.1.2".parse().unwrap(), weight: 3 },
                SteerHop { via: "10.0.2.2".parse().unwrap(), weight: 1 }
            ]
        );

        t.remove_owner("lb").unwrap();
        assert!(t.maps.steers.is_empty());
        assert_eq!(t.maps.config, HookConfig::default());
    }

    #[test]
    fn gateways_change_version_only_when_the_next_hops_gateways_change() {
        let g = Gateways::default();
        let nh = |last: u8| NextHop {
            family: sluice_common::FAMILY_V4,
            gateway: [10, 0, 0, last, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            ..NextHop::default()
        };
        let mut hops = BTreeMap::from([(3, nh(1)), (4, nh(2)), (5, nh(1))]);
        g.update(&hops);
        assert_eq!(g.version(), 1);
        assert_eq!(g.get("10.0.0.1".parse().unwrap()), Some(3), "the lowest id wins");
        assert_eq!(g.get("10.0.0.2".parse().unwrap()), Some(4));
        hops.get_mut(&4).unwrap().flags |= sluice_common::NH_F_RESOLVED;
        g.update(&hops);
        assert_eq!(g.version(), 1, "a MAC learnt changes no gateway");
        hops.remove(&4);
        g.update(&hops);
        assert_eq!((g.version(), g.get("10.0.0.2".parse().unwrap())), (2, None));
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
