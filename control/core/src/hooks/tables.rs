//! The hook tables and who owns what in them: batches validated whole, applied all or nothing.

use std::{collections::BTreeMap, net::IpAddr};

use ipnet::IpNet;
use serde::Serialize;
use sluice_common::hooks::{
    FilterRule, HookConfig, MAX_RULE_IDS, MAX_STEER_MEMBERS, RateRule, STEER_SLOTS, SUMMARY_WORDS,
    SteerMember, SteerRule, Summary, summary, summary_mark,
};

use super::{
    Action, Direction, HookError, HookMaps, HookOp, MAX_BURST, MAX_RATE_PPS, MAX_SAMPLE_EVERY,
    MAX_STEER_WEIGHT, OpError, SteerHop,
};

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

    /// The sampling `owner` asked for (one packet in this many), if it samples.
    pub fn sampling(&self, owner: &str) -> Option<u32> {
        self.sampling.get(owner).copied()
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

/// What a rule is keyed by, in the words of the plugin interface (`source 10.0.0.0/8`).
trait RuleKey {
    fn describe(&self) -> String;
}

impl RuleKey for IpNet {
    fn describe(&self) -> String {
        self.to_string()
    }
}

impl RuleKey for (Direction, IpNet) {
    fn describe(&self) -> String {
        let side = match self.0 {
            Direction::Src => "source",
            Direction::Dst => "destination",
        };
        format!("{side} {}", self.1)
    }
}

/// Checks that `owner` may set (or remove) the rule on `key`, given who holds it in the tables
/// (`held`) and what the batch did to it so far (`batch`), and records the outcome in `batch`.
fn claim<K: Ord + RuleKey>(
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
            let key = key.describe();
            Some(("prefix", format!("the {what} on {key} is held by plugin {other:?}")))
        }
        None if !set => Some(("prefix", format!("no {what} on {}", key.describe()))),
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

/// What is wrong with a rule's prefix, if anything.
fn prefix_problem(prefix: IpNet) -> Option<String> {
    if prefix.trunc() != prefix {
        return Some(format!("{prefix} has host bits set (did you mean {}?)", prefix.trunc()));
    }
    None
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use sluice_common::hooks::summary_covers;

    use super::*;
    use sluice_common::{Counter, NextHop};

    use crate::hooks::{Gateways, MemoryHookMaps, steer_hops};

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
                    Err(HookError::Map { map: "test", source: "injected failure".into() })
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
