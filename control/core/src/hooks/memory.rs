//! Hook maps in memory.

use std::{collections::BTreeMap, net::IpAddr};

use ipnet::IpNet;
use sluice_common::{
    Counter,
    hooks::{FilterRule, HookConfig, RateRule, SteerRule},
};

use super::{Direction, HookError, HookMaps};

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
    /// Rule counters by id (none: zero).
    pub counters: BTreeMap<u32, Counter>,
}

impl MemoryHookMaps {
    /// Counts packets on a rule, as the dataplane does when one matches.
    pub fn count(&mut self, rule: u32, packets: u64, bytes: u64) {
        let c = self.counters.entry(rule).or_default();
        c.packets += packets;
        c.bytes += bytes;
    }
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
    fn counter(&self, rule: u32) -> Result<Counter, HookError> {
        Ok(self.counters.get(&rule).copied().unwrap_or_default())
    }
    fn reset_counter(&mut self, rule: u32) -> Result<(), HookError> {
        self.counters.remove(&rule);
        Ok(())
    }
}
