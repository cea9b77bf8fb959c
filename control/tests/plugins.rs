//! The plugin host against real components built for wasm32-wasip2 (`make plugins`, which
//! `make test` runs first): the `static-acl` example, and a hostile plugin that misbehaves in
//! the way its configuration names. Each misbehaviour is contained: the plugin is quarantined
//! with a clear reason, its failure policy decides what becomes of its rules, the host and the
//! other plugins go on. No root needed: the hook tables are in memory here (the packet tests
//! cover the real maps).

use std::{path::PathBuf, thread, time::Duration};

use sluice::plugins::{
    Event, FailurePolicy, Manager, Manifest, PluginError, PluginHost, RouteChange, Status, Table,
    Trust,
};
use sluice_dataplane::hooks::{Action, Direction, HookOp, HookTables, MemoryHookMaps};

/// A component built by `make plugins`.
fn component(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../plugins/target/wasm32-wasip2/release")
        .join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!("{}: {e}; build the plugins first with `make plugins`", path.display())
    })
}

fn manifest(name: &str, wasm: &[u8], tables: &[Table]) -> Manifest {
    Manifest {
        max_ops_per_call: 1000,
        memory_mib: 16,
        deadline_ms: 50,
        kv_bytes: 4096,
        ..Manifest::new(name, "0.1.0", tables, wasm)
    }
}

fn manager() -> Manager<HookTables<MemoryHookMaps>> {
    let host = PluginHost::new(Trust::unsigned_allowed()).expect("the engine starts");
    Manager::new(host, HookTables::new(MemoryHookMaps::default()), None)
}

fn rules_of(m: &Manager<HookTables<MemoryHookMaps>>, owner: &str) -> Vec<HookOp> {
    m.sink().rules(Some(owner)).expect("rules").into_iter().map(|r| r.rule).collect()
}

fn drop_src(prefix: &str) -> HookOp {
    HookOp::SetFilter {
        direction: Direction::Src,
        prefix: prefix.parse().expect("prefix"),
        action: Action::Drop,
    }
}

fn events() -> Vec<Event> {
    vec![Event::Route(RouteChange { prefix: "198.51.100.0/24".into(), added: true })]
}

#[test]
fn static_acl_writes_exactly_its_configuration() {
    let wasm = component("static_acl");
    let mut m = manager();
    let config = r#"{"rules": [
        {"direction": "src", "prefix": "192.0.2.0/24", "action": "drop"},
        {"direction": "dst", "prefix": "2001:db8:ff::/48", "action": "pass"}
    ]}"#;
    m.add(manifest("static-acl", &wasm, &[Table::Filter]), &wasm, config).expect("starts");
    let mut want = vec![
        drop_src("192.0.2.0/24"),
        HookOp::SetFilter {
            direction: Direction::Dst,
            prefix: "2001:db8:ff::/48".parse().expect("prefix"),
            action: Action::Pass,
        },
    ];
    want.sort_by_key(|o| format!("{o:?}"));
    let mut got = rules_of(&m, "static-acl");
    got.sort_by_key(|o| format!("{o:?}"));
    assert_eq!(got, want);
    let log = m.plugins()["static-acl"].plugin().log();
    assert!(log.lock().expect("log").iter().any(|l| l.message == "2 rules"), "its own log line");

    // A new configuration replaces the rules; a bad one is refused and changes nothing.
    let config =
        r#"{"rules": [{"direction": "src", "prefix": "198.51.100.0/24", "action": "count"}]}"#;
    m.add(manifest("static-acl", &wasm, &[Table::Filter]), &wasm, config).expect("restarts");
    assert_eq!(rules_of(&m, "static-acl").len(), 1);
    let err = m
        .add(
            manifest("static-acl", &wasm, &[Table::Filter]),
            &wasm,
            r#"{"rules": [{"direction": "up", "prefix": "10.0.0.0/8", "action": "drop"}]}"#,
        )
        .unwrap_err();
    assert!(err.to_string().contains("rules[0].direction"), "{err}");
    assert_eq!(rules_of(&m, "static-acl").len(), 1, "the running version is untouched");
}

#[test]
fn refused_before_running_a_wrong_hash_an_undeclared_table_and_a_slow_init() {
    let wasm = component("hostile");
    let mut m = manager();
    let mut wrong = manifest("hostile", &wasm, &[Table::Filter]);
    wrong.sha256 = "00".repeat(32);
    assert!(matches!(m.add(wrong, &wasm, "behave"), Err(PluginError::Hash { .. })));
    // Its first rule is a filter rule: a manifest without `filter` refuses it.
    let err = m.add(manifest("hostile", &wasm, &[Table::Sample]), &wasm, "behave").unwrap_err();
    assert!(matches!(err, PluginError::Undeclared { table: Table::Filter, .. }), "{err}");
    let err = m.add(manifest("hostile", &wasm, &[Table::Filter]), &wasm, "slow-init").unwrap_err();
    assert!(matches!(err, PluginError::Timeout { call: "init", .. }), "{err}");
    assert!(m.plugins().is_empty() && rules_of(&m, "hostile").is_empty(), "nothing written");
}

/// Runs one misbehaviour beside a well-behaved plugin and returns the error it was
/// quarantined with.
fn contained(mode: &str, policy: FailurePolicy) -> (PluginError, Vec<HookOp>) {
    let wasm = component("hostile");
    let mut m = manager();
    let tables = [Table::Filter];
    let mut bad = manifest("bad", &wasm, &tables);
    bad.failure_policy = policy;
    m.add(bad, &wasm, mode).expect("init works in every mode but slow-init");
    // The same component under another name wants the same prefix: refused, it is `bad`'s.
    let err = m.add(manifest("copy", &wasm, &tables), &wasm, "behave").unwrap_err();
    assert!(err.to_string().contains("held by plugin \"bad\""), "{err}");
    let static_acl = component("static_acl");
    m.add(
        manifest("acl", &static_acl, &tables),
        &static_acl,
        r#"{"rules": [{"direction": "dst", "prefix": "192.0.2.0/24", "action": "count"}]}"#,
    )
    .expect("a second plugin");

    let failed = m.dispatch(&events());
    assert_eq!(failed.len(), 1, "only the hostile plugin fails: {failed:?}");
    let (name, err) = failed.into_iter().next().expect("one");
    assert_eq!(name, "bad");
    match m.plugins()["bad"].status() {
        Status::Quarantined { reason, failures: 1, .. } => assert_eq!(reason, err.to_string()),
        other => panic!("{other:?}"),
    }
    assert_eq!(m.plugins()["acl"].status(), Status::Running);
    assert_eq!(rules_of(&m, "acl").len(), 1, "the other plugin's rules stay");
    assert!(m.dispatch(&events()).is_empty(), "the others keep working");
    (err, rules_of(&m, "bad"))
}

#[test]
fn an_endless_loop_times_out() {
    let (err, rules) = contained("spin", FailurePolicy::FailOpen);
    assert!(matches!(err, PluginError::Timeout { call: "handle", deadline_ms: 50, .. }), "{err}");
    assert!(rules.is_empty(), "fail-open: its rules are gone");
}

#[test]
fn a_trap_quarantines_and_fail_closed_keeps_the_rules() {
    let (err, rules) = contained("trap", FailurePolicy::FailClosed);
    assert!(matches!(err, PluginError::Trap { call: "handle", .. }), "{err}");
    assert_eq!(rules, [drop_src("203.0.113.0/24")], "fail-closed: its rules stay");
}

#[test]
fn a_memory_bomb_hits_its_cap() {
    let (err, _) = contained("memory-bomb", FailurePolicy::FailOpen);
    assert!(matches!(err, PluginError::Trap { .. }), "{err}");
}

#[test]
fn deep_recursion_exhausts_its_own_stack() {
    let (err, _) = contained("recursion", FailurePolicy::FailOpen);
    assert!(matches!(err, PluginError::Trap { .. }), "{err}");
}

#[test]
fn a_huge_result_cannot_be_built_within_the_memory_cap() {
    let (err, _) = contained("huge-result", FailurePolicy::FailOpen);
    assert!(matches!(err, PluginError::Trap { .. } | PluginError::TooManyOps { .. }), "{err}");
}

#[test]
fn invalid_prefixes_and_undeclared_tables_are_refused() {
    let (err, _) = contained("bad-prefix", FailurePolicy::FailOpen);
    assert!(err.to_string().contains("host bits"), "{err}");
    let (err, _) = contained("undeclared-table", FailurePolicy::FailOpen);
    assert!(matches!(err, PluginError::Undeclared { table: Table::RateLimit, .. }), "{err}");
}

#[test]
fn a_quarantined_plugin_restarts_after_a_back_off_that_doubles() {
    let wasm = component("hostile");
    let mut m = manager();
    m.add(manifest("spinner", &wasm, &[Table::Filter]), &wasm, "spin").expect("starts");
    assert_eq!(m.dispatch(&events()).len(), 1);
    assert!(m.restart_due().is_empty(), "not before its back-off");
    assert!(rules_of(&m, "spinner").is_empty());
    thread::sleep(Duration::from_millis(1100));
    assert_eq!(m.restart_due(), ["spinner"]);
    assert_eq!(m.plugins()["spinner"].status(), Status::Running);
    assert_eq!(rules_of(&m, "spinner"), [drop_src("203.0.113.0/24")], "init ran again");
    assert_eq!(m.dispatch(&events()).len(), 1);
    match m.plugins()["spinner"].status() {
        Status::Quarantined { failures: 2, retry_in_ms, .. } => {
            assert!(retry_in_ms > 1500, "second back-off about 2 s, not {retry_in_ms} ms");
        }
        other => panic!("{other:?}"),
    }
    assert!(m.remove("spinner").expect("removal"));
    assert!(m.plugins().is_empty());
}

#[test]
fn the_local_harness_shows_each_calls_operations_and_stops_at_a_failure() {
    let wasm = component("hostile");
    let events: Vec<Vec<Event>> = serde_json::from_str::<Vec<Vec<sluice::plugins::ScriptedEvent>>>(
        r#"[[{"route": {"prefix": "198.51.100.0/24", "added": true}}], [{"timer": 5}]]"#,
    )
    .expect("scripted events")
    .into_iter()
    .map(|b| b.into_iter().map(Into::into).collect())
    .collect();
    let run = sluice::plugins::harness(
        manifest("hostile", &wasm, &[Table::Filter]),
        &wasm,
        "behave",
        &events,
    )
    .expect("runs");
    let calls: Vec<(&str, usize, bool)> =
        run.calls.iter().map(|c| (c.call, c.ops.len(), c.error.is_some())).collect();
    assert_eq!(calls, [("init", 1, false), ("handle", 1, false), ("handle", 1, false)]);
    assert_eq!(run.rules.len(), 2, "its init rule and the one it sets on each event");

    let run = sluice::plugins::harness(
        manifest("hostile", &wasm, &[Table::Filter]),
        &wasm,
        "bad-prefix",
        &events,
    )
    .expect("runs");
    assert_eq!(run.calls.len(), 2, "stops at the failing call");
    let error = run.calls[1].error.as_deref().expect("an error");
    assert!(error.contains("host bits"), "{error}");
}

#[test]
fn ddos_guard_blocks_a_flooding_source_and_lifts_the_block_after_its_cool_down() {
    let wasm = component("ddos_guard");
    let sample = |src: &str| {
        Event::Sample(sluice::plugins::FlowSample {
            ifindex: 2,
            len: 64,
            proto: 17,
            src: src.into(),
            dst: "198.51.100.1".into(),
            sport: 1234,
            dport: 53,
        })
    };
    // One second between timers at 1 in 10: the flooder's 200 samples are about 2000 packets/s,
    // the other host's 5 about 50.
    let mut flood: Vec<Event> = vec![Event::Timer(1_000)];
    flood.extend((0..200).map(|_| sample("192.0.2.66")));
    flood.extend((0..5).map(|_| sample("192.0.2.7")));
    flood.push(Event::Timer(2_000));
    let batches = vec![flood, vec![Event::Timer(4_000)], vec![Event::Timer(7_500)]];
    let run = sluice::plugins::harness(
        manifest("ddos-guard", &wasm, &[Table::Filter, Table::Sample]),
        &wasm,
        r#"{"max_pps": 1000, "sample_every": 10, "block_ms": 5000}"#,
        &batches,
    )
    .expect("runs");
    let ops: Vec<Vec<HookOp>> = run.calls.iter().map(|c| c.ops.clone()).collect();
    let block = drop_src("192.0.2.66/32");
    assert_eq!(ops[0], [HookOp::SetSampling { every: 10 }], "init asks for samples");
    assert_eq!(ops[1], [block], "the flooder, not the other host");
    assert_eq!(ops[2], [], "still within the cool-down");
    assert_eq!(
        ops[3],
        [HookOp::RemoveFilter {
            direction: Direction::Src,
            prefix: "192.0.2.66/32".parse().expect("prefix")
        }],
        "lifted 5 s after"
    );
    assert!(run.calls.iter().all(|c| c.error.is_none()));
    assert!(run.log.iter().any(|l| l.message.starts_with("blocking 192.0.2.66")), "{:?}", run.log);
}

#[test]
fn only_plugins_signed_by_a_trusted_publisher_run_unless_unsigned_ones_are_allowed() {
    let wasm = component("static_acl");
    let config = r#"{"rules": []}"#;
    let seed = [7u8; 32];
    let mut signed = manifest("static-acl", &wasm, &[Table::Filter]);
    signed.sign(&seed);
    let publisher = signed.publisher.clone().expect("signed");
    let strict = |keys: &[String]| {
        let host = PluginHost::new(Trust::new(keys, false).expect("keys")).expect("engine");
        Manager::new(host, HookTables::new(MemoryHookMaps::default()), None)
    };

    strict(std::slice::from_ref(&publisher)).add(signed.clone(), &wasm, config).expect("trusted");
    let err = strict(&[]).add(signed.clone(), &wasm, config).unwrap_err();
    assert!(err.to_string().contains("is not trusted"), "{err}");
    let err = strict(std::slice::from_ref(&publisher))
        .add(manifest("static-acl", &wasm, &[Table::Filter]), &wasm, config)
        .unwrap_err();
    assert!(err.to_string().contains("unsigned"), "{err}");
    // A manifest changed after signing (one more table) does not verify.
    let mut tampered = signed.clone();
    tampered.tables.push(Table::RateLimit);
    let err = strict(&[publisher]).add(tampered, &wasm, config).unwrap_err();
    assert!(err.to_string().contains("does not match"), "{err}");
    // Allowed explicitly, unsigned plugins run.
    manager().add(manifest("static-acl", &wasm, &[Table::Filter]), &wasm, config).expect("allowed");
}

#[test]
fn a_plugins_key_value_store_outlives_its_instances_and_the_host_within_its_quota() {
    let wasm = component("hostile");
    let dir = std::env::temp_dir().join(format!("sluice-kv-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let count_rule = |m: &Manager<HookTables<MemoryHookMaps>>| -> Vec<HookOp> {
        rules_of(m, "kv")
            .into_iter()
            .filter(|r| matches!(r, HookOp::SetFilter { prefix, .. } if prefix.to_string().starts_with("198.18.0.")))
            .collect()
    };
    let counted = |n: u8| HookOp::SetFilter {
        direction: Direction::Src,
        prefix: format!("198.18.0.{n}/32").parse().expect("prefix"),
        action: Action::Count,
    };
    let host_with_kv = || {
        // As the daemon opens it: a restarted host finds the lock its predecessor just gave up.
        let db = sluice_store::open_db(&sled::Config::new().path(&dir))
            .expect("the key-value database opens");
        PluginHost::new(Trust::unsigned_allowed()).expect("the engine starts").with_kv(db)
    };
    {
        let mut m = Manager::new(host_with_kv(), HookTables::new(MemoryHookMaps::default()), None);
        m.add(manifest("kv", &wasm, &[Table::Filter]), &wasm, "kv-count").expect("starts");
        assert!(m.dispatch(&events()).is_empty());
        assert!(m.dispatch(&events()).is_empty(), "a value over the quota is refused");
        assert!(count_rule(&m).contains(&counted(2)));
        // A new instance (a new version, a restart) finds the count.
        assert!(m.remove("kv").expect("removed"));
        m.add(manifest("kv", &wasm, &[Table::Filter]), &wasm, "kv-count").expect("starts");
        assert!(m.dispatch(&events()).is_empty());
        assert_eq!(count_rule(&m), [counted(3)]);
    }
    // So does a new host on the same database (a daemon restarted).
    let mut m = Manager::new(host_with_kv(), HookTables::new(MemoryHookMaps::default()), None);
    m.add(manifest("kv", &wasm, &[Table::Filter]), &wasm, "kv-count").expect("starts");
    assert!(m.dispatch(&events()).is_empty());
    assert_eq!(count_rule(&m), [counted(4)]);
    // Forgotten for good, it starts again from nothing.
    assert!(m.forget("kv").expect("forgotten"));
    m.add(manifest("kv", &wasm, &[Table::Filter]), &wasm, "kv-count").expect("starts");
    assert!(m.dispatch(&events()).is_empty());
    assert_eq!(count_rule(&m), [counted(1)]);
    drop(m);
    let _ = std::fs::remove_dir_all(&dir);
}
