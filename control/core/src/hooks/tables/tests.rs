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
    /// Counters zeroed, and counters read.
    resets: usize,
    reads: std::cell::Cell<usize>,
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
        self.reads.set(self.reads.get() + 1);
        self.maps.counter(rule)
    }
    fn reset_counter(&mut self, rule: u32) -> Result<(), HookError> {
        self.resets += 1;
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
    assert_eq!(got, [(1, "prefix"), (2, "rate-pps"), (3, "burst"), (4, "prefix"), (5, "every")]);
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
            &[HookOp::RemoveFilter { direction: Direction::Src, prefix: net("203.0.113.0/24") }],
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
    let rate = |p: &str, rate_pps, burst| HookOp::SetRateLimit { prefix: net(p), rate_pps, burst };
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
    let mut swap =
        vec![HookOp::RemoveFilter { direction: Direction::Src, prefix: net("198.51.100.1/32") }];
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
    let err =
        serde_json::from_str::<HookOp>(r#"{"op":"set-sampling","every":1,"extra":2}"#).unwrap_err();
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

/// Counts `packets` of 100 bytes on the filter entry in force for `p`, as the dataplane would.
fn hit_filter(t: &mut HookTables<Memory>, p: &str, packets: u64) {
    let rule = t.maps.filters[&(Direction::Src, net(p))].rule;
    t.maps.maps.count(rule, packets, 100 * packets);
}

/// Counts `packets` of 100 bytes dropped by the rate entry in force for `p`.
fn hit_rate(t: &mut HookTables<Memory>, p: &str, packets: u64) {
    let rule = t.maps.rates[&net(p)].rule;
    t.maps.maps.count(rule, packets, 100 * packets);
}

/// `owner`'s counts (packets, bytes) on its rule on `p`.
fn counts_of(t: &HookTables<Memory>, owner: &str, p: &str) -> (u64, u64) {
    let rules = t.rules(Some(owner)).unwrap();
    let r = rules
        .iter()
        .find(|r| match &r.rule {
            HookOp::SetFilter { prefix, .. } | HookOp::SetRateLimit { prefix, .. } => {
                *prefix == net(p)
            }
            _ => false,
        })
        .unwrap_or_else(|| panic!("{owner} holds no rule on {p}"));
    (r.packets, r.bytes)
}

fn rate(p: &str, rate_pps: u32, burst: u32) -> HookOp {
    HookOp::SetRateLimit { prefix: net(p), rate_pps, burst }
}

#[test]
fn a_rules_counts_go_on_while_another_plugins_drop_comes_and_goes() {
    let mut t = HookTables::new(Memory::default());
    t.apply("a", &[filter(Direction::Src, "192.0.2.0/24", Action::Count)]).unwrap();
    hit_filter(&mut t, "192.0.2.0/24", 10);
    assert_eq!(counts_of(&t, "a", "192.0.2.0/24"), (10, 1000));
    // b's drop on the /16 around it, then on the very prefix: a's /24 entry now drops, and
    // what it drops its prefix saw: a's rule counts it.
    t.apply("b", &[drop_src("192.0.0.0/16")]).unwrap();
    assert_eq!(written(&t, Direction::Src, "192.0.2.0/24"), Some(Action::Drop));
    assert_eq!(counts_of(&t, "a", "192.0.2.0/24"), (10, 1000), "not from zero");
    hit_filter(&mut t, "192.0.2.0/24", 5);
    t.apply("b", &[drop_src("192.0.2.0/24")]).unwrap();
    hit_filter(&mut t, "192.0.2.0/24", 1);
    assert_eq!(counts_of(&t, "a", "192.0.2.0/24"), (16, 1600));
    assert_eq!(counts_of(&t, "b", "192.0.2.0/24"), (16, 1600), "the entry's, shared");
    // b's drops leave: a's count is in force again, its counts still all there.
    t.remove_owner("b").unwrap();
    assert_eq!(written(&t, Direction::Src, "192.0.2.0/24"), Some(Action::Count));
    assert_eq!(counts_of(&t, "a", "192.0.2.0/24"), (16, 1600));
    hit_filter(&mut t, "192.0.2.0/24", 4);
    assert_eq!(counts_of(&t, "a", "192.0.2.0/24"), (20, 2000));
    // A prefix nobody holds any more leaves; written anew, it counts from zero.
    t.remove_owner("a").unwrap();
    t.apply("a", &[filter(Direction::Src, "192.0.2.0/24", Action::Pass)]).unwrap();
    assert_eq!(counts_of(&t, "a", "192.0.2.0/24"), (0, 0));
}

#[test]
fn a_rate_rules_counts_go_on_across_a_new_limit_under_a_new_id() {
    let mut t = HookTables::new(Memory::default());
    t.apply("a", &[rate("198.51.100.0/24", 1000, 100)]).unwrap();
    let first = t.maps.rates[&net("198.51.100.0/24")].rule;
    hit_rate(&mut t, "198.51.100.0/24", 7);
    // b's stricter limit around it: a new id (the sources' buckets start anew), same counts.
    t.apply("b", &[rate("198.51.0.0/16", 10, 5)]).unwrap();
    let r = t.maps.rates[&net("198.51.100.0/24")];
    assert_eq!((r.rate_pps, r.burst), (10, 5));
    assert_ne!(r.rule, first, "a new limit, new buckets");
    assert_eq!(counts_of(&t, "a", "198.51.100.0/24"), (7, 700));
    hit_rate(&mut t, "198.51.100.0/24", 3);
    t.remove_owner("b").unwrap();
    assert_eq!(t.maps.rates[&net("198.51.100.0/24")].rate_pps, 1000);
    assert_eq!(counts_of(&t, "a", "198.51.100.0/24"), (10, 1000));
    hit_rate(&mut t, "198.51.100.0/24", 1);
    assert_eq!(counts_of(&t, "a", "198.51.100.0/24"), (11, 1100));
}

#[test]
fn an_undone_batch_leaves_the_counts_where_they_were() {
    let mut t = HookTables::new(Memory::default());
    t.apply(
        "a",
        &[
            filter(Direction::Src, "192.0.2.0/24", Action::Count),
            rate("198.51.100.0/24", 1000, 100),
        ],
    )
    .unwrap();
    hit_filter(&mut t, "192.0.2.0/24", 10);
    hit_rate(&mut t, "198.51.100.0/24", 7);
    // b's limit in force for a while, counting.
    t.apply("b", &[rate("198.51.0.0/16", 10, 5)]).unwrap();
    hit_rate(&mut t, "198.51.100.0/24", 3);
    let ids = (t.maps.filters.clone(), t.maps.rates.clone());
    // A batch that changes both entries' verdicts, then fails on its last write.
    let batch = [
        drop_src("192.0.0.0/16"),
        HookOp::RemoveRateLimit { prefix: net("198.51.0.0/16") },
        drop_src("203.0.113.0/24"),
    ];
    // Writes: the /16 and the /24 in it, the /16 rate deleted and the /24's rewritten, then
    // the failing one.
    t.maps.fail_at = Some(t.maps.writes + 5);
    assert!(t.apply("b", &batch).is_err());
    assert_eq!((t.maps.filters.clone(), t.maps.rates.clone()), ids, "the same entries and ids");
    assert_eq!(counts_of(&t, "a", "192.0.2.0/24"), (10, 1000));
    assert_eq!(counts_of(&t, "a", "198.51.100.0/24"), (10, 1000));
    t.maps.fail_at = None;
    t.apply("b", &batch).unwrap();
    assert_eq!(counts_of(&t, "a", "198.51.100.0/24"), (10, 1000));

    // A rule removed and the batch undone after its id could have been reused: the id is
    // reused only once the batch is over, so its counter is there to put back.
    let swap = [
        HookOp::RemoveFilter { direction: Direction::Src, prefix: net("192.0.2.0/24") },
        filter(Direction::Src, "10.1.0.0/16", Action::Count),
        filter(Direction::Src, "10.2.0.0/16", Action::Count),
    ];
    t.remove_owner("b").unwrap();
    t.maps.fail_at = Some(t.maps.writes + 3);
    assert!(t.apply("a", &swap).is_err());
    assert_eq!(counts_of(&t, "a", "192.0.2.0/24"), (10, 1000));
    assert_eq!(written(&t, Direction::Src, "192.0.2.0/24"), Some(Action::Count));
}

/// Map operations a call made: writes (entries set or deleted), counters zeroed, counters read.
fn ops_of(t: &mut HookTables<Memory>, f: impl FnOnce(&mut HookTables<Memory>)) -> [usize; 3] {
    let before = [t.maps.writes, t.maps.resets, t.maps.reads.get()];
    f(t);
    [t.maps.writes - before[0], t.maps.resets - before[1], t.maps.reads.get() - before[2]]
}

#[test]
fn a_drop_over_a_slash_8_of_65535_rules_is_linear_in_map_writes_and_fast() {
    // 65,535 /24 counts inside 10.0.0.0/8, and the /8: the table's 65,536 entries. Plugin a
    // holds them all, b every fourth again (entries held by two).
    let n = 65_535u32;
    let mut t = HookTables::new(Memory::default());
    let all: Vec<HookOp> = (0..n)
        .map(|i| filter(Direction::Src, &format!("10.{}.{}.0/24", i >> 8, i & 0xff), Action::Count))
        .collect();
    let fourth: Vec<HookOp> = all.iter().step_by(4).cloned().collect();
    let started = std::time::Instant::now();
    t.replace_owner("a", &all).unwrap();
    t.replace_owner("b", &fourth).unwrap();
    let load = started.elapsed();
    let started = std::time::Instant::now();
    let again = ops_of(&mut t, |t| t.replace_owner("a", &all).unwrap());
    let resubmit = started.elapsed();
    let drop8 = [drop_src("10.0.0.0/8")];
    let timed = |t: &mut HookTables<Memory>, ops: &[HookOp]| {
        let started = std::time::Instant::now();
        let made = ops_of(t, |t| t.apply("guard", ops).unwrap());
        (started.elapsed(), made)
    };
    let (add, added) = timed(&mut t, &drop8);
    assert_eq!(written(&t, Direction::Src, "10.200.1.0/24"), Some(Action::Drop));
    let (remove, removed) = timed(
        &mut t,
        &[HookOp::RemoveFilter { direction: Direction::Src, prefix: net("10.0.0.0/8") }],
    );
    assert_eq!(written(&t, Direction::Src, "10.200.1.0/24"), Some(Action::Count));
    // The same drop, its last write failing: every entry is written back.
    t.maps.fail_at = Some(t.maps.writes + n as usize + 1);
    let started = std::time::Instant::now();
    assert!(t.apply("guard", &drop8).is_err());
    let undone = started.elapsed();
    // Plugin a removed, the last of the deletions (the entries it holds alone) failing.
    t.maps.fail_at = Some(t.maps.writes + all.len() - fourth.len());
    let started = std::time::Instant::now();
    assert!(t.remove_owner("a").is_err());
    let unremoved = started.elapsed();
    t.maps.fail_at = None;
    assert_eq!(written(&t, Direction::Src, "10.200.1.0/24"), Some(Action::Count));
    let listed = std::time::Instant::now();
    assert_eq!(t.rules(None).unwrap().len(), all.len() + fourth.len());
    let listed = listed.elapsed();
    println!(
        "{n} /24 rules (a: all, b: {}) loaded in {load:?}; a's set again in {resubmit:?} \
         ([writes, counters zeroed, counters read] {again:?}); a drop on 10.0.0.0/8 added in \
         {add:?} ({added:?}), removed in {remove:?} ({removed:?}), undone after its last \
         write failed in {undone:?}; a removed and undone in {unremoved:?}; rules() listed in \
         {listed:?}",
        fourth.len()
    );
    // Generous bounds for a loaded 2-core machine (and ten times that unoptimised).
    let bound = std::time::Duration::from_secs(if cfg!(debug_assertions) { 20 } else { 2 });
    for (what, took) in [
        ("add", add),
        ("remove", remove),
        ("resubmit", resubmit),
        ("undo", undone),
        ("removal undone", unremoved),
    ] {
        assert!(took < bound, "{what}: {took:?}");
    }
    // Each entry inside the /8 is written once per change, and the /8 itself once.
    let entries = n as usize + 1;
    assert!(added[0] <= entries && removed[0] <= entries, "{added:?} {removed:?}");
    assert!(added[1] + added[2] <= 2 * entries && removed[1] + removed[2] <= 2 * entries);
    assert_eq!(again, [0, 0, 0], "rules set again unchanged are not written");
}
