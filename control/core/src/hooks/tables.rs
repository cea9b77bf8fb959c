//! The hook tables and who owns what in them: batches validated whole, applied all or nothing.

use std::{collections::BTreeMap, net::IpAddr};

use super::claims::Claims;

use ipnet::IpNet;
use serde::Serialize;
use sluice_common::hooks::{
    FilterRule, HookConfig, MAX_RULE_IDS, MAX_STEER_MEMBERS, RateRule, STEER_SLOTS, SUMMARY_WORDS,
    SteerMember, SteerRule, Summary, summary, summary_mark,
};

use super::{
    Action, Direction, HookError, HookMaps, HookOp, MAX_BURST, MAX_RATE_PPS, MAX_SAMPLE_EVERY,
    MAX_STEER_WEIGHT, OpError, OwnerLimits, SteerHop,
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
    filters: Claims<(Direction, IpNet), Action>,
    rates: Claims<IpNet, (u32, u32)>,
    steers: BTreeMap<IpNet, Owned<Vec<SteerHop>>>,
    /// What each plugin may hold; one not listed, [`OwnerLimits::default`].
    limits: BTreeMap<String, OwnerLimits>,
    sampling: BTreeMap<String, u32>,
    next_rule: u32,
    free_rules: Vec<u32>,
    /// The summaries last written, by table (`None`: not written yet).
    summaries: Option<Vec<Summary>>,
}

/// One write, and what undoes it.
enum Undo {
    /// A plugin's filter rule, as it was.
    Filter((Direction, IpNet), String, Option<Action>),
    /// A filter entry written, as it was.
    FilterEntry((Direction, IpNet), Option<(Action, u32)>),
    /// A plugin's rate rule, as it was.
    Rate(IpNet, String, Option<(u32, u32)>),
    /// A rate entry written, as it was.
    RateEntry(IpNet, Option<((u32, u32), u32)>),
    Steer(IpNet, Option<Owned<Vec<SteerHop>>>),
    Sampling(String, Option<u32>),
}

impl<M: HookMaps> HookTables<M> {
    /// Empty tables over `maps` (which must be empty too).
    pub fn new(maps: M) -> Self {
        Self {
            maps,
            filters: Claims::new(),
            rates: Claims::new(),
            steers: BTreeMap::new(),
            limits: BTreeMap::new(),
            sampling: BTreeMap::new(),
            next_rule: 1,
            free_rules: Vec::new(),
            summaries: None,
        }
    }

    /// Sets what `owner` may hold (its manifest's `max_rules`, the operator's
    /// `allow_match_all`); checked from its next batch on.
    pub fn set_limits(&mut self, owner: &str, limits: OwnerLimits) {
        self.limits.insert(owner.to_owned(), limits);
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
        for ((direction, prefix), _) in self.filters.owned_by(owner) {
            if !keeps_filter(*direction, *prefix) {
                batch.push(HookOp::RemoveFilter { direction: *direction, prefix: *prefix });
            }
        }
        for (prefix, _) in self.rates.owned_by(owner) {
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

    /// Removes everything `owner` wrote (its limits stay, for when it starts again).
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
        // A rule's counts are those of the entry written for its prefix (shared by the plugins
        // that hold the prefix).
        let counts = |rule: Option<u32>| -> Result<(u64, u64), HookError> {
            Ok(match rule {
                Some(r) => {
                    let c = self.maps.counter(r)?;
                    (c.packets, c.bytes)
                }
                None => (0, 0),
            })
        };
        for ((direction, prefix), o, action) in self.filters.all().filter(|(_, o, _)| mine(o)) {
            let (packets, bytes) =
                counts(self.filters.written.get(&(*direction, *prefix)).map(|w| w.1))?;
            out.push(RuleStatus {
                owner: o.to_owned(),
                rule: HookOp::SetFilter { direction: *direction, prefix: *prefix, action: *action },
                packets,
                bytes,
            });
        }
        for (prefix, o, value) in self.rates.all().filter(|(_, o, _)| mine(o)) {
            let (packets, bytes) = counts(self.rates.written.get(prefix).map(|w| w.1))?;
            out.push(RuleStatus {
                owner: o.to_owned(),
                rule: HookOp::SetRateLimit { prefix: *prefix, rate_pps: value.0, burst: value.1 },
                packets,
                bytes,
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
        let limits = self.limits.get(owner).copied().unwrap_or_default();
        let mut errors = Vec::new();
        // What the owner holds as the batch goes (true: held after the ops so far).
        let mut filters = BTreeMap::new();
        let mut rates = BTreeMap::new();
        // Ownership of steer rules as the batch goes: key -> owner after the ops so far.
        let mut steers = BTreeMap::new();
        let held_steers = self.steers.values().filter(|o| o.owner == owner).count();
        let mut counts =
            Quota::new(&limits, [self.filters.count(owner), self.rates.count(owner), held_steers]);
        for (index, op) in ops.iter().enumerate() {
            let problem = match op {
                HookOp::SetFilter { direction, prefix, action } => prefix_problem(*prefix)
                    .map(|m| ("prefix", m))
                    .or_else(|| {
                        match_all_problem(*prefix, *action == Action::Drop, &limits, owner, "drop")
                    })
                    .or_else(|| {
                        let key = (*direction, *prefix);
                        let held = self.filters.get(&key, owner).is_some();
                        let was = filters.get(&key).copied().unwrap_or(held);
                        hold(&mut filters, key, held, true, "filter rule", owner)
                            .or_else(|| counts.step(0, was))
                    }),
                HookOp::RemoveFilter { direction, prefix } => {
                    let key = (*direction, *prefix);
                    let held = self.filters.get(&key, owner).is_some();
                    let was = filters.get(&key).copied().unwrap_or(held);
                    hold(&mut filters, key, held, false, "filter rule", owner)
                        .or_else(|| counts.release(0, was))
                }
                HookOp::SetRateLimit { prefix, rate_pps, burst } => prefix_problem(*prefix)
                    .map(|m| ("prefix", m))
                    .or_else(|| match_all_problem(*prefix, true, &limits, owner, "rate-limit"))
                    .or_else(|| {
                        (!(1..=MAX_RATE_PPS).contains(rate_pps)).then(|| {
                            ("rate-pps", format!("{rate_pps} is outside 1 to {MAX_RATE_PPS}"))
                        })
                    })
                    .or_else(|| {
                        (!(1..=MAX_BURST).contains(burst))
                            .then(|| ("burst", format!("{burst} is outside 1 to {MAX_BURST}")))
                    })
                    .or_else(|| {
                        let held = self.rates.get(prefix, owner).is_some();
                        let was = rates.get(prefix).copied().unwrap_or(held);
                        hold(&mut rates, *prefix, held, true, "rate rule", owner)
                            .or_else(|| counts.step(1, was))
                    }),
                HookOp::RemoveRateLimit { prefix } => {
                    let held = self.rates.get(prefix, owner).is_some();
                    let was = rates.get(prefix).copied().unwrap_or(held);
                    hold(&mut rates, *prefix, held, false, "rate rule", owner)
                        .or_else(|| counts.release(1, was))
                }
                HookOp::SetSteer { prefix, next_hops } => prefix_problem(*prefix)
                    .map(|m| ("prefix", m))
                    .or_else(|| steer_problem(*prefix, next_hops))
                    .or_else(|| {
                        let held = self.steers.get(prefix).map(|o| &o.owner);
                        let mine = steers
                            .get(prefix)
                            .map_or(held.is_some_and(|h| h == owner), |b: &Option<String>| {
                                b.as_deref() == Some(owner)
                            });
                        claim(&mut steers, *prefix, held, owner, true, "steer rule")
                            .or_else(|| counts.step(2, mine))
                    }),
                HookOp::RemoveSteer { prefix } => {
                    let held = self.steers.get(prefix).map(|o| &o.owner);
                    claim(&mut steers, *prefix, held, owner, false, "steer rule")
                        .or_else(|| counts.release(2, true))
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
                let old = self.filters.set((direction, prefix), owner, Some(action));
                undo.push(Undo::Filter((direction, prefix), owner.to_owned(), old));
                self.sync_filters((direction, prefix), undo)?;
            }
            HookOp::RemoveFilter { direction, prefix } => {
                let old = self.filters.set((direction, prefix), owner, None);
                undo.push(Undo::Filter((direction, prefix), owner.to_owned(), old));
                self.sync_filters((direction, prefix), undo)?;
            }
            HookOp::SetRateLimit { prefix, rate_pps, burst } => {
                let old = self.rates.set(prefix, owner, Some((rate_pps, burst)));
                undo.push(Undo::Rate(prefix, owner.to_owned(), old));
                self.sync_rates(prefix, undo)?;
            }
            HookOp::RemoveRateLimit { prefix } => {
                let old = self.rates.set(prefix, owner, None);
                undo.push(Undo::Rate(prefix, owner.to_owned(), old));
                self.sync_rates(prefix, undo)?;
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
                Undo::Filter(key, owner, old) => {
                    self.filters.set(key, &owner, old);
                }
                Undo::FilterEntry(k, was) => {
                    if let Some((_, cur)) = self.filters.written.remove(&k) {
                        self.free_rules.push(cur);
                    }
                    match was {
                        Some((v, rule)) => {
                            self.free_rules.retain(|r| *r != rule);
                            let value = FilterRule { action: v.code() as u32, rule };
                            let _ = self.maps.set_filter(k.0, k.1, value);
                            self.filters.written.insert(k, (v, rule));
                        }
                        None => {
                            let _ = self.maps.del_filter(k.0, k.1);
                        }
                    }
                }
                Undo::Rate(prefix, owner, old) => {
                    self.rates.set(prefix, &owner, old);
                }
                Undo::RateEntry(k, was) => {
                    if let Some((_, cur)) = self.rates.written.remove(&k) {
                        self.free_rules.push(cur);
                    }
                    match was {
                        Some(((rate_pps, burst), rule)) => {
                            self.free_rules.retain(|r| *r != rule);
                            let _ =
                                self.maps.set_rate(k, RateRule { rate_pps, burst, rule, _pad: 0 });
                            self.rates.written.insert(k, ((rate_pps, burst), rule));
                        }
                        None => {
                            let _ = self.maps.del_rate(k);
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

    /// Writes the filter entries a change on `key` may change: each gets the strictest of
    /// the plugins' verdicts for it ([`Claims::merged`]).
    fn sync_filters(
        &mut self,
        key: (Direction, IpNet),
        undo: &mut Vec<Undo>,
    ) -> Result<(), HookError> {
        for k in self.filters.inside(&key) {
            let want = self.filters.merged(&k);
            let have = self.filters.written.get(&k).copied();
            if want != have.map(|h| h.0) {
                undo.push(Undo::FilterEntry(k, have));
            }
            match (want, have) {
                (None, None) => {}
                (None, Some((_, rule))) => {
                    self.maps.del_filter(k.0, k.1)?;
                    self.filters.written.remove(&k);
                    self.free_rules.push(rule);
                }
                (Some(v), Some((h, _))) if v == h => {}
                (Some(v), have) => {
                    // A new verdict counts from zero under a new id.
                    let rule = self.rule_id(None)?;
                    if let Err(e) =
                        self.maps.set_filter(k.0, k.1, FilterRule { action: v.code() as u32, rule })
                    {
                        self.free_rules.push(rule);
                        return Err(e);
                    }
                    self.filters.written.insert(k, (v, rule));
                    if let Some((_, old)) = have {
                        self.free_rules.push(old);
                    }
                }
            }
        }
        Ok(())
    }

    /// Writes the rate entries a change on `prefix` may change, as [`Self::sync_filters`].
    fn sync_rates(&mut self, prefix: IpNet, undo: &mut Vec<Undo>) -> Result<(), HookError> {
        for k in self.rates.inside(&prefix) {
            let want = self.rates.merged(&k);
            let have = self.rates.written.get(&k).copied();
            if want != have.map(|h| h.0) {
                undo.push(Undo::RateEntry(k, have));
            }
            match (want, have) {
                (None, None) => {}
                (None, Some((_, rule))) => {
                    self.maps.del_rate(k)?;
                    self.rates.written.remove(&k);
                    self.free_rules.push(rule);
                }
                (Some(v), Some((h, _))) if v == h => {}
                (Some((rate_pps, burst)), have) => {
                    let rule = self.rule_id(None)?;
                    if let Err(e) =
                        self.maps.set_rate(k, RateRule { rate_pps, burst, rule, _pad: 0 })
                    {
                        self.free_rules.push(rule);
                        return Err(e);
                    }
                    self.rates.written.insert(k, ((rate_pps, burst), rule));
                    if let Some((_, old)) = have {
                        self.free_rules.push(old);
                    }
                }
            }
        }
        Ok(())
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
        for (dir, prefix) in self.filters.written.keys() {
            let table = match (dir, prefix) {
                (Direction::Src, IpNet::V4(_)) => summary::FILTER_SRC_V4,
                (Direction::Dst, IpNet::V4(_)) => summary::FILTER_DST_V4,
                (Direction::Src, IpNet::V6(_)) => summary::FILTER_SRC_V6,
                (Direction::Dst, IpNet::V6(_)) => summary::FILTER_DST_V6,
            };
            mark(table, prefix);
        }
        for prefix in self.rates.written.keys() {
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
                .written
                .keys()
                .filter(|(dir, p)| *dir == d && matches!(p, IpNet::V4(_)) == v4)
                .count() as u32
        };
        let rates = |v4: bool| {
            self.rates.written.keys().filter(|p| matches!(p, IpNet::V4(_)) == v4).count() as u32
        };
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
            !self.filters.written.is_empty()
                || !self.rates.written.is_empty()
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

/// Checks that `owner` may set (or remove) its own rule on `key`, given whether it holds one in
/// the tables (`held`) and what the batch did to it so far (`batch`), and records the outcome.
/// Other plugins' rules on the same key do not matter: each holds its own.
fn hold<K: Ord + Copy + RuleKey>(
    batch: &mut BTreeMap<K, bool>,
    key: K,
    held: bool,
    set: bool,
    what: &str,
    owner: &str,
) -> Option<(&'static str, String)> {
    let holds = batch.get(&key).copied().unwrap_or(held);
    if !set && !holds {
        return Some(("prefix", format!("plugin {owner:?} holds no {what} on {}", key.describe())));
    }
    batch.insert(key, set);
    None
}

/// A plugin's rules per table as a batch goes, against its `max_rules`.
struct Quota {
    max: [usize; 3],
    held: [usize; 3],
    said: [bool; 3],
}

impl Quota {
    const TABLES: [&'static str; 3] = ["filter", "rate-limit", "steer"];

    fn new(limits: &OwnerLimits, held: [usize; 3]) -> Self {
        Self { max: [limits.filter, limits.rate_limit, limits.steer], held, said: [false; 3] }
    }

    /// A rule set in table `t`: one more unless the owner held it already.
    fn step(&mut self, t: usize, held_before: bool) -> Option<(&'static str, String)> {
        if held_before {
            return None;
        }
        self.held[t] += 1;
        if self.held[t] > self.max[t] && !self.said[t] {
            self.said[t] = true;
            let (table, max) = (Self::TABLES[t], self.max[t]);
            return Some((
                "max_rules",
                format!(
                    "this would hold more than {max} {table} rules, its manifest's max_rules (\"{table}\": {max})"
                ),
            ));
        }
        None
    }

    /// A rule removed from table `t`.
    fn release(&mut self, t: usize, held_before: bool) -> Option<(&'static str, String)> {
        if held_before {
            self.held[t] = self.held[t].saturating_sub(1);
        }
        None
    }
}

/// A drop or rate-limit rule on a match-all prefix, refused unless the operator allowed it.
fn match_all_problem(
    prefix: IpNet,
    restricts: bool,
    limits: &OwnerLimits,
    owner: &str,
    what: &str,
) -> Option<(&'static str, String)> {
    (restricts && prefix.prefix_len() == 0 && !limits.allow_match_all).then(|| {
        (
            "prefix",
            format!(
                "{prefix} matches every address: a {what} rule on it is refused unless the \
                 operator allows it for plugin {owner:?} (allow_match_all in its configuration, \
                 or `sluice daemon --plugin-allow-match-all {owner}` for a plugin of the plugin \
                 directory)"
            ),
        )
    })
}

/// What is wrong with a steer rule's gateways, if anything: the field and why.
fn steer_problem(prefix: IpNet, hops: &[SteerHop]) -> Option<(&'static str, String)> {
    if hops.is_empty() || hops.len() > MAX_STEER_MEMBERS {
        return Some((
            "next-hops",
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
            [(1, "prefix"), (2, "rate-pps"), (3, "burst"), (4, "prefix"), (5, "every")]
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
        // The same prefix from two plugins: both hold it (one entry in the map).
        t.apply("b", &[drop_src("192.0.2.0/24")]).unwrap();
        let err = t
            .apply(
                "b",
                &[HookOp::RemoveFilter {
                    direction: Direction::Src,
                    prefix: net("203.0.113.0/24"),
                }],
            )
            .unwrap_err();
        assert!(err.to_string().contains("plugin \"b\" holds no filter rule"), "{err}");
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
        // Writes, in order: the new rule, then the deletion (the kept one is not written again).
        assert_eq!(t.maps.writes, 2);
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
        assert_eq!(t.filters.written.len(), 1, "and the writer's own view too");
        assert_eq!(t.filters.count("acl"), 1);
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
            [(0, "next-hops"), (1, "via"), (2, "weight"), (3, "via"), (4, "via"), (5, "prefix")]
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

    fn filter(d: Direction, p: &str, action: Action) -> HookOp {
        HookOp::SetFilter { direction: d, prefix: net(p), action }
    }

    fn written(t: &HookTables<Memory>, d: Direction, p: &str) -> Option<Action> {
        t.maps.filters.get(&(d, net(p))).map(|r| Action::from_code(r.action))
    }

    #[test]
    fn across_plugins_the_strictest_verdict_holds_within_one_the_longest_match() {
        let mut t = HookTables::new(Memory::default());
        t.apply("a", &[drop_src("10.91.1.0/24")]).unwrap();
        // b's more specific count and pass do not undo a's drop.
        t.apply(
            "b",
            &[
                filter(Direction::Src, "10.91.1.2/32", Action::Count),
                filter(Direction::Src, "10.91.1.128/25", Action::Pass),
            ],
        )
        .unwrap();
        assert_eq!(written(&t, Direction::Src, "10.91.1.2/32"), Some(Action::Drop));
        assert_eq!(written(&t, Direction::Src, "10.91.1.128/25"), Some(Action::Drop));
        // a's own more specific count does (within one plugin the longest match decides), but
        // b's pass on that /25 is then the strictest left.
        t.apply("a", &[filter(Direction::Src, "10.91.1.128/25", Action::Count)]).unwrap();
        assert_eq!(written(&t, Direction::Src, "10.91.1.128/25"), Some(Action::Pass));
        // A drop written after the rules inside it reaches them too.
        t.apply("c", &[drop_src("10.0.0.0/8")]).unwrap();
        assert_eq!(written(&t, Direction::Src, "10.91.1.128/25"), Some(Action::Drop));
        // Removing the drop gives the plugins' own verdicts back.
        t.remove_owner("c").unwrap();
        t.remove_owner("a").unwrap();
        assert_eq!(written(&t, Direction::Src, "10.91.1.2/32"), Some(Action::Count));
        assert_eq!(written(&t, Direction::Src, "10.91.1.128/25"), Some(Action::Pass));
        assert_eq!(written(&t, Direction::Src, "10.91.1.0/24"), None);
        assert_eq!(t.maps.config.filter_src_v4, 2);
        // Directions are separate tables.
        t.apply("a", &[filter(Direction::Dst, "10.91.1.0/24", Action::Drop)]).unwrap();
        assert_eq!(written(&t, Direction::Src, "10.91.1.2/32"), Some(Action::Count));
    }

    #[test]
    fn a_squatted_prefix_is_held_by_both_and_removing_one_leaves_the_other() {
        let mut t = HookTables::new(Memory::default());
        t.apply("squatter", &[filter(Direction::Src, "192.0.2.0/24", Action::Count)]).unwrap();
        t.apply("guard", &[drop_src("192.0.2.0/24")]).unwrap();
        assert_eq!(written(&t, Direction::Src, "192.0.2.0/24"), Some(Action::Drop));
        t.apply("squatter", &[filter(Direction::Src, "192.0.2.0/24", Action::Pass)]).unwrap();
        assert_eq!(written(&t, Direction::Src, "192.0.2.0/24"), Some(Action::Drop));
        t.remove_owner("squatter").unwrap();
        assert_eq!(written(&t, Direction::Src, "192.0.2.0/24"), Some(Action::Drop));
        assert_eq!(t.rules(None).unwrap().len(), 1);
        t.apply("squatter", &[filter(Direction::Src, "192.0.2.0/24", Action::Count)]).unwrap();
        t.apply(
            "guard",
            &[HookOp::RemoveFilter { direction: Direction::Src, prefix: net("192.0.2.0/24") }],
        )
        .unwrap();
        assert_eq!(written(&t, Direction::Src, "192.0.2.0/24"), Some(Action::Count));
        // Rate rules too: the smaller rate and burst.
        let rate =
            |p: &str, rate_pps, burst| HookOp::SetRateLimit { prefix: net(p), rate_pps, burst };
        t.apply("guard", &[rate("198.51.100.0/24", 100, 50)]).unwrap();
        t.apply("squatter", &[rate("198.51.100.0/24", 1_000_000, 10)]).unwrap();
        let r = t.maps.rates[&net("198.51.100.0/24")];
        assert_eq!((r.rate_pps, r.burst), (100, 10));
        t.remove_owner("guard").unwrap();
        let r = t.maps.rates[&net("198.51.100.0/24")];
        assert_eq!((r.rate_pps, r.burst), (1_000_000, 10));
    }

    #[test]
    fn a_plugin_over_its_quota_fails_alone_and_nothing_of_its_batch_is_written() {
        let mut t = HookTables::new(Memory::default());
        let small = OwnerLimits { filter: 3, rate_limit: 1, steer: 1, allow_match_all: false };
        t.set_limits("greedy", small);
        t.apply("other", &[drop_src("203.0.113.0/24")]).unwrap();
        let hosts = |from: u8, n: u8| -> Vec<HookOp> {
            (from..from + n).map(|i| drop_src(&format!("198.51.100.{i}/32"))).collect()
        };
        t.apply("greedy", &hosts(1, 3)).unwrap();
        // Setting a rule it holds again costs nothing; a fourth does.
        t.apply("greedy", &hosts(1, 3)).unwrap();
        let err = t.apply("greedy", &hosts(10, 2)).unwrap_err();
        let HookError::Invalid(errors) = &err else { panic!("{err}") };
        assert_eq!((errors.len(), errors[0].index, errors[0].field), (1, 0, "max_rules"));
        assert!(errors[0].message.contains("\"filter\": 3"), "{}", errors[0].message);
        assert_eq!(t.filters.count("greedy"), 3, "nothing of the batch");
        // Removing first makes room within the same batch.
        let mut swap = vec![HookOp::RemoveFilter {
            direction: Direction::Src,
            prefix: net("198.51.100.1/32"),
        }];
        swap.extend(hosts(10, 1));
        t.apply("greedy", &swap).unwrap();
        // The other plugin is untouched and may still write.
        t.apply("other", &hosts(100, 20)).unwrap();
        assert_eq!(t.filters.count("other"), 21);
        let err = t
            .apply(
                "greedy",
                &[
                    HookOp::SetRateLimit { prefix: net("192.0.2.0/24"), rate_pps: 1, burst: 1 },
                    HookOp::SetRateLimit { prefix: net("192.0.2.0/25"), rate_pps: 1, burst: 1 },
                ],
            )
            .unwrap_err();
        assert!(err.to_string().contains("\"rate-limit\": 1"), "{err}");
        // Its limits outlive a removal (a quarantine, a restart).
        t.remove_owner("greedy").unwrap();
        assert!(t.apply("greedy", &hosts(1, 5)).is_err());
    }

    #[test]
    fn match_all_drops_and_rate_limits_need_the_operators_leave() {
        let mut t = HookTables::new(Memory::default());
        let ops = [
            drop_src("0.0.0.0/0"),
            filter(Direction::Dst, "::/0", Action::Drop),
            HookOp::SetRateLimit { prefix: net("::/0"), rate_pps: 10, burst: 10 },
            filter(Direction::Src, "0.0.0.0/0", Action::Count),
        ];
        let err = t.apply("wide", &ops).unwrap_err();
        let HookError::Invalid(errors) = &err else { panic!("{err}") };
        let got: Vec<usize> = errors.iter().map(|e| e.index).collect();
        assert_eq!(got, [0, 1, 2], "a match-all count is harmless: {err}");
        assert!(errors[0].message.contains("allow_match_all"), "{}", errors[0].message);
        assert!(t.maps.filters.is_empty());
        t.apply("wide", &ops[3..]).unwrap();
        t.set_limits("wide", OwnerLimits { allow_match_all: true, ..OwnerLimits::default() });
        t.apply("wide", &ops[..3]).unwrap();
        assert_eq!(written(&t, Direction::Src, "0.0.0.0/0"), Some(Action::Drop));
    }

    #[test]
    fn operations_read_from_json_with_clear_errors() {
        let ops: Vec<HookOp> = serde_json::from_str(
            r#"[{"op":"set-filter","direction":"src","prefix":"192.0.2.0/24","action":"drop"},
                {"op":"set-rate-limit","prefix":"2001:db8::/32","rate-pps":100,"burst":10},
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

    #[test]
    fn operations_in_json_use_the_contracts_names_and_still_read_the_old_ones() {
        let rate = HookOp::SetRateLimit { prefix: net("192.0.2.0/24"), rate_pps: 100, burst: 10 };
        let steer = HookOp::SetSteer {
            prefix: net("203.0.113.0/24"),
            next_hops: vec![SteerHop { via: "10.0.1.2".parse().unwrap(), weight: 3 }],
        };
        let printed = serde_json::to_value([&rate, &steer]).unwrap();
        assert_eq!(
            printed,
            serde_json::json!([
                {"op": "set-rate-limit", "prefix": "192.0.2.0/24", "rate-pps": 100, "burst": 10},
                {"op": "set-steer", "prefix": "203.0.113.0/24",
                 "next-hops": [{"via": "10.0.1.2", "weight": 3}]}
            ]),
            "the WIT's names"
        );
        let read: Vec<HookOp> = serde_json::from_value(printed).unwrap();
        assert_eq!(read, [rate.clone(), steer.clone()], "read back");
        let old: Vec<HookOp> = serde_json::from_str(
            r#"[{"op":"set-rate-limit","prefix":"192.0.2.0/24","rate_pps":100,"burst":10},
                {"op":"set-steer","prefix":"203.0.113.0/24",
                 "next_hops":[{"via":"10.0.1.2","weight":3}]}]"#,
        )
        .unwrap();
        assert_eq!(old, [rate, steer], "the names of earlier versions are still read");
        let err = serde_json::from_str::<HookOp>(
            r#"{"op":"set-rate-limit","prefix":"192.0.2.0/24","rate-pps":1,"rate_pps":2,"burst":1}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("duplicate field"), "both names at once: {err}");
    }
}
