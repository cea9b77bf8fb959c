//! The writer of the hook tables (`sluice_common::hooks`): typed rules, validated, each owned by
//! one plugin, applied all or nothing. Plugins never touch a map: the plugin host turns what a
//! plugin returns into [`HookOp`]s and hands them here under the plugin's name.
//!
//! - A batch ([`HookTables::apply`]) is validated whole before anything is written; a map write
//!   that fails mid-way is undone, so the tables hold all of a batch or none of it.
//! - Each plugin holds its own filter and rate rules, also on prefixes another plugin holds; the
//!   entry the dataplane gets for a prefix carries, per plugin, its longest match, and across
//!   plugins the strictest of those (`drop` over `pass` over `count`; for rate rules the smaller
//!   rate and burst). A steer rule's prefix belongs to the plugin that wrote it: another
//!   plugin's steer rule on it is refused. [`HookTables::remove_owner`] removes exactly what
//!   one plugin wrote.
//! - Each plugin holds at most its [`OwnerLimits`] of rules per table, and no `drop` or
//!   rate-limit rule on a match-all prefix (`0.0.0.0/0`, `::/0`) unless the operator allowed it:
//!   a batch over them fails for that plugin alone.
//! - [`HookTables::replace_owner`] moves a plugin to a new set of rules without a gap: the new
//!   rules are written first, then the old ones that are gone are deleted.
//!
//! - A steer rule names gateways by address; they are turned into the dataplane's next-hop ids
//!   through [`Gateways`], the daemon's view of its next hops, and turned again when those change
//!   ([`HookTables::refresh_steering`]). A gateway that is not a next hop of any route is left
//!   out until it becomes one; with none left, the routes decide.
//!
//! Map access sits behind [`HookMaps`], so all of this is tested without root; the dataplane
//! crate's `AyaHookMaps` is the real one, [`MemoryHookMaps`] the one in memory.

use std::{
    collections::BTreeMap,
    fmt,
    net::IpAddr,
    sync::{Arc, RwLock},
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use sluice_common::{
    Counter, NextHop, addr_of,
    hooks::{
        FilterAction, FilterRule, HookConfig, MAX_FILTER_RULES, MAX_RATE_RULES, MAX_RULE_IDS,
        MAX_STEER_MEMBERS, MAX_STEER_RULES, RateRule, STEER_SLOTS, SteerRule, Summary,
    },
};

mod claims;
mod memory;
mod tables;

pub use memory::MemoryHookMaps;
pub use tables::{HookTables, RuleStatus};

/// Most packets per second a rate rule may allow.
pub const MAX_RATE_PPS: u32 = 100_000_000;
/// Largest bucket a rate rule may have.
pub const MAX_BURST: u32 = 10_000_000;
/// Sparsest sampling: one packet in this many.
pub const MAX_SAMPLE_EVERY: u32 = 1 << 24;
/// Heaviest weight of a steer gateway.
pub const MAX_STEER_WEIGHT: u16 = 1000;

/// What one plugin may hold in the hook tables: rules per table (its manifest's `max_rules`),
/// and whether it may drop or rate-limit a match-all prefix (the operator's `allow_match_all`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OwnerLimits {
    /// Filter rules, both directions and families.
    pub filter: usize,
    /// Rate rules.
    pub rate_limit: usize,
    /// Steer rules.
    pub steer: usize,
    /// `drop` and rate-limit rules on `0.0.0.0/0` or `::/0` allowed.
    pub allow_match_all: bool,
}

impl Default for OwnerLimits {
    /// As much as the tables hold; no match-all drops.
    fn default() -> Self {
        Self {
            filter: 4 * MAX_FILTER_RULES as usize,
            rate_limit: 2 * MAX_RATE_RULES as usize,
            steer: 2 * MAX_STEER_RULES as usize,
            allow_match_all: false,
        }
    }
}

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
    /// The code the dataplane stores for this action.
    pub const fn code(self) -> FilterAction {
        match self {
            Self::Drop => FilterAction::Drop,
            Self::Pass => FilterAction::Pass,
            Self::Count => FilterAction::Count,
        }
    }

    /// The action of a rule read back from a map (the writer never stores another code).
    pub fn from_code(code: u32) -> Self {
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

/// One operation on the hook tables. Its JSON (the local harness's output, `sluice hooks
/// --json`, the API) names the operations and fields as the plugin contract (`plugins/wit`)
/// does: `set-rate-limit` with `rate-pps`, `set-steer` with `next-hops`.
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
        /// Packets per second per source, 1 to [`MAX_RATE_PPS`]. In JSON `rate-pps`, as the
        /// contract names it (`rate_pps` is read too).
        #[serde(rename = "rate-pps", alias = "rate_pps")]
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
        /// 1 to [`MAX_STEER_MEMBERS`] gateways of the prefix's family, each once. In JSON
        /// `next-hops`, as the contract names it (`next_hops` is read too).
        #[serde(rename = "next-hops", alias = "next_hops")]
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
        source: Box<dyn std::error::Error + Send + Sync>,
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
    /// Writes which first 16 bits of an address the rules of `table` ([`sluice_common::hooks::summary`]) cover.
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

/// The gateways a written steer rule holds (those that were next hops when it was written),
/// each weighted by its slots.
pub fn steer_hops(r: &SteerRule, prefix: IpNet) -> Vec<SteerHop> {
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
