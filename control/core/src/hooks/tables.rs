//! The hook tables and who owns what in them: batches validated whole, applied all or nothing.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use super::claims::{Claims, Entry};

use ipnet::IpNet;
use serde::Serialize;
use sluice_common::{
    Counter,
    hooks::{
        FilterRule, HookConfig, MAX_RULE_IDS, MAX_STEER_MEMBERS, RateRule, STEER_SLOTS,
        SUMMARY_WORDS, SteerMember, SteerRule, Summary, summary, summary_mark,
    },
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
    /// Packets it matched (for a rate rule: packets it dropped), since it was written: the
    /// count never goes down while the rule is held, whatever other plugins' rules do to the
    /// entry in force on its prefix.
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
    /// Rule ids free for reuse.
    free_rules: BTreeSet<u32>,
    /// Rule ids the batch under way let go of: free once it is applied or undone, so that an
    /// undo finds the counters of the ids it restores as they were.
    retired: BTreeSet<u32>,
    /// The summaries last written, by table (`None`: not written yet).
    summaries: Option<Vec<Summary>>,
}

/// One write, and what undoes it.
enum Undo {
    /// A plugin's filter rule, as it was.
    Filter((Direction, IpNet), String, Option<Action>),
    /// A filter entry written, as it was.
    FilterEntry((Direction, IpNet), Option<Entry<Action>>),
    /// A plugin's rate rule, as it was.
    Rate(IpNet, String, Option<(u32, u32)>),
    /// A rate entry written, as it was.
    RateEntry(IpNet, Option<Entry<(u32, u32)>>),
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
            free_rules: BTreeSet::new(),
            retired: BTreeSet::new(),
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
        let mut result = ops.iter().try_for_each(|op| self.write(owner, op, &mut undo));
        if result.is_ok() {
            result = self.write_config();
        }
        if result.is_err() {
            self.rollback(undo);
        }
        self.free_rules.append(&mut self.retired);
        result
    }

    /// Moves `owner` to exactly the rules `ops` set (`Set*` operations), without a gap: they
    /// are written first, then the owner's other rules are removed; all or nothing.
    pub fn replace_owner(&mut self, owner: &str, ops: &[HookOp]) -> Result<(), HookError> {
        let mut batch = ops.to_vec();
        // The keys the new rules set, looked up once per rule held (a plugin may hold tens of
        // thousands).
        let (mut filters, mut rates, mut steers) =
            (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
        for op in ops {
            match *op {
                HookOp::SetFilter { direction, prefix, .. } => {
                    filters.insert((direction, prefix));
                }
                HookOp::SetRateLimit { prefix, .. } => {
                    rates.insert(prefix);
                }
                HookOp::SetSteer { prefix, .. } => {
                    steers.insert(prefix);
                }
                _ => {}
            }
        }
        for ((direction, prefix), _) in self.filters.owned_by(owner) {
            if !filters.contains(&(*direction, *prefix)) {
                batch.push(HookOp::RemoveFilter { direction: *direction, prefix: *prefix });
            }
        }
        for (prefix, _) in self.rates.owned_by(owner) {
            if !rates.contains(prefix) {
                batch.push(HookOp::RemoveRateLimit { prefix: *prefix });
            }
        }
        for (prefix, _) in self.steers.iter().filter(|(_, o)| o.owner == owner) {
            if !steers.contains(prefix) {
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
        // that hold the prefix), which exists as long as the rule does.
        let counts = |rule: Option<(Counter, u32)>| -> Result<(u64, u64), HookError> {
            Ok(match rule {
                Some((base, r)) => {
                    let c = self.maps.counter(r)?;
                    (base.packets.saturating_add(c.packets), base.bytes.saturating_add(c.bytes))
                }
                None => (0, 0),
            })
        };
        for ((direction, prefix), o, action) in self.filters.all().filter(|(_, o, _)| mine(o)) {
            let (packets, bytes) =
                counts(self.filters.written.get(&(*direction, *prefix)).map(|w| (w.base, w.rule)))?;
            out.push(RuleStatus {
                owner: o.to_owned(),
                rule: HookOp::SetFilter { direction: *direction, prefix: *prefix, action: *action },
                packets,
                bytes,
            });
        }
        for (prefix, o, value) in self.rates.all().filter(|(_, o, _)| mine(o)) {
            let (packets, bytes) =
                counts(self.rates.written.get(prefix).map(|w| (w.base, w.rule)))?;
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
        if let Err(e) = self.maps.reset_counter(r) {
            self.retire(r);
            return Err(e);
        }
        Ok(r)
    }

    /// A free rule id: one freed before, a new one, or (none left) one the batch under way
    /// let go of (an undo of this batch then finds that id's counter zeroed).
    fn alloc_rule(&mut self) -> Result<u32, HookError> {
        if let Some(r) = self.free_rules.pop_first() {
            return Ok(r);
        }
        if self.next_rule < MAX_RULE_IDS {
            self.next_rule += 1;
            return Ok(self.next_rule - 1);
        }
        self.retired.pop_first().ok_or(HookError::RulesFull)
    }

    /// Lets go of a rule id: free once the batch under way is over.
    fn retire(&mut self, rule: u32) {
        self.retired.insert(rule);
    }

    /// Takes back a rule id an undo restores.
    fn reclaim(&mut self, rule: u32) {
        self.retired.remove(&rule);
        self.free_rules.remove(&rule);
    }

    /// The entry an undo puts back for `was`, given the entry `cur` it replaces: the counts
    /// stand as they are (those of `cur`'s id carried into the base, less what `was`'s own id
    /// holds), so that an undone batch does not make them go down. Best effort on a read error.
    fn restored<V: Copy>(&self, cur: Option<Entry<V>>, was: Entry<V>) -> Entry<V> {
        let Some(cur) = cur else { return was };
        if cur.rule == was.rule {
            // The same id (a filter entry's verdict undone): its base as it stands.
            return Entry { base: cur.base, ..was };
        }
        let (Ok(now), Ok(own)) = (self.maps.counter(cur.rule), self.maps.counter(was.rule)) else {
            return was;
        };
        let total = cur.counts(now);
        let base = Counter {
            packets: total.packets.saturating_sub(own.packets),
            bytes: total.bytes.saturating_sub(own.bytes),
        };
        Entry { base, ..was }
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
                        self.retire(rule);
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
                    self.retire(o.rule);
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
                    let cur = self.filters.written.remove(&k);
                    if let Some(c) = cur {
                        self.retire(c.rule);
                    }
                    match was {
                        Some(was) => {
                            let entry = self.restored(cur, was);
                            self.reclaim(entry.rule);
                            let value =
                                FilterRule { action: entry.value.code() as u32, rule: entry.rule };
                            let _ = self.maps.set_filter(k.0, k.1, value);
                            self.filters.written.insert(k, entry);
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
                    let cur = self.rates.written.remove(&k);
                    if let Some(c) = cur {
                        self.retire(c.rule);
                    }
                    match was {
                        Some(was) => {
                            let entry = self.restored(cur, was);
                            self.reclaim(entry.rule);
                            let ((rate_pps, burst), rule) = (entry.value, entry.rule);
                            let _ =
                                self.maps.set_rate(k, RateRule { rate_pps, burst, rule, _pad: 0 });
                            self.rates.written.insert(k, entry);
                        }
                        None => {
                            let _ = self.maps.del_rate(k);
                        }
                    }
                }
                Undo::Steer(prefix, old) => {
                    if let Some(cur) = self.steers.remove(&prefix) {
                        self.retire(cur.rule);
                    }
                    match old {
                        Some(o) => {
                            self.reclaim(o.rule);
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
            if want != have.map(|h| h.value) {
                undo.push(Undo::FilterEntry(k, have));
            }
            match (want, have) {
                (None, None) => {}
                (None, Some(h)) => {
                    self.maps.del_filter(k.0, k.1)?;
                    self.filters.written.remove(&k);
                    self.retire(h.rule);
                }
                (Some(v), Some(h)) if v == h.value => {}
                (Some(value), have) => {
                    // A new verdict on a prefix keeps the entry's id, and so its counter: the
                    // counts of the rules held on the prefix go on (ADR 0054).
                    let entry = match have {
                        Some(h) => Entry { value, ..h },
                        None => {
                            Entry { value, rule: self.rule_id(None)?, base: Counter::default() }
                        }
                    };
                    let rule = FilterRule { action: value.code() as u32, rule: entry.rule };
                    if let Err(e) = self.maps.set_filter(k.0, k.1, rule) {
                        if have.is_none() {
                            self.retire(entry.rule);
                        }
                        return Err(e);
                    }
                    self.filters.written.insert(k, entry);
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
            if want != have.map(|h| h.value) {
                undo.push(Undo::RateEntry(k, have));
            }
            match (want, have) {
                (None, None) => {}
                (None, Some(h)) => {
                    self.maps.del_rate(k)?;
                    self.rates.written.remove(&k);
                    self.retire(h.rule);
                }
                (Some(v), Some(h)) if v == h.value => {}
                (Some(value), have) => {
                    // A new limit gets a new id, which keys the sources' buckets: they start
                    // full at the new burst. What the old id counted carries over into the
                    // entry's base, read once the new id is in force (ADR 0054).
                    let rule = self.rule_id(None)?;
                    let (rate_pps, burst) = value;
                    if let Err(e) =
                        self.maps.set_rate(k, RateRule { rate_pps, burst, rule, _pad: 0 })
                    {
                        self.retire(rule);
                        return Err(e);
                    }
                    let base = match have {
                        None => Counter::default(),
                        Some(h) => match self.maps.counter(h.rule) {
                            Ok(c) => h.counts(c),
                            Err(e) => {
                                // The undo puts the old entry back, base and all.
                                self.retire(rule);
                                return Err(e);
                            }
                        },
                    };
                    self.rates.written.insert(k, Entry { value, rule, base });
                    if let Some(h) = have {
                        self.retire(h.rule);
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
mod tests;
