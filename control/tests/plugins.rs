//! The plugin host against real components built for wasm32-wasip2 (`make plugins`, which
//! `make test` runs first): the `static-acl` example, and a hostile plugin that misbehaves in
//! the way its configuration names. Each misbehaviour is contained: the plugin is quarantined
//! with a clear reason, its failure policy decides what becomes of its rules, the host and the
//! other plugins go on; so is a panic of the host itself while it serves one plugin. No root needed: the hook tables are in memory here (the packet tests
//! cover the real maps).

use std::{
    net::IpAddr,
    path::PathBuf,
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use sluice::plugins::{
    Event, FailurePolicy, HostReport, InterfaceInfo, Manager, Manifest, PluginError, PluginHost,
    Queries, RouteChange, RouteInfo, RouteLookup, Status, Table, Trust,
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
    assert!(err.to_string().contains("writes table filter,"), "the manifest's word: {err}");
    // A key-value quota past what one plugin may keep on the router's disk.
    let mut greedy = manifest("hostile", &wasm, &[Table::Filter]);
    greedy.kv_bytes = (64 << 20) + 1;
    let err = m.add(greedy, &wasm, "behave").unwrap_err();
    assert!(err.to_string().contains("kv_bytes 67108865: 0 to 67108864"), "{err}");
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
    // The same component under another name sets the same prefix: both hold it.
    m.add(manifest("copy", &wasm, &tables), &wasm, "behave").expect("a prefix is shared");
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
    assert!(
        rules_of(&m, "copy").contains(&drop_src("203.0.113.0/24")),
        "so does the rule the other plugin shares with it"
    );
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
            tcp_flags: 0,
            every: 10,
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
        // As the daemon opens it.
        let kv = sluice_store::kv::KvDir::open(&dir).expect("the key-value directory opens");
        PluginHost::new(Trust::unsigned_allowed()).expect("the engine starts").with_kv(kv)
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
    assert!(!dir.join("kv.kv").exists(), "its file is deleted");
    m.add(manifest("kv", &wasm, &[Table::Filter]), &wasm, "kv-count").expect("starts");
    assert!(m.dispatch(&events()).is_empty());
    assert_eq!(count_rule(&m), [counted(1)]);
    drop(m);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The hostile plugin's message in its `panic` mode.
const GUEST_PANIC: &str = "hostile: panicking as configured";

/// Rounds of traffic in the tests where a hostile plugin runs beside a good one.
const ROUNDS: u8 = 50;

/// Round `n` of traffic: between two timers a second apart, 200 samples (1 in 10) from
/// 198.18.N.1, about 2000 packets/s, over `ddos-guard`'s limit.
fn flood_round(n: u8) -> Vec<Event> {
    let at = u64::from(n) * 2000;
    let sample = Event::Sample(sluice::plugins::FlowSample {
        ifindex: 2,
        len: 64,
        proto: 17,
        src: format!("198.18.{n}.1"),
        dst: "198.51.100.1".into(),
        sport: 1234,
        dport: 53,
        tcp_flags: 0,
        every: 10,
    });
    let mut batch = vec![Event::Timer(at)];
    batch.extend(std::iter::repeat_n(sample, 200));
    batch.push(Event::Timer(at + 1000));
    batch
}

/// What a hostile plugin did beside a good one.
struct Beside {
    m: Manager<HookTables<MemoryHookMaps>>,
    /// The round of its first failure, and how long its failing call and that round's
    /// dispatch took.
    first_failure: Option<(u8, PluginError, Duration, Duration)>,
    /// Events the good plugin was handed.
    good_events: usize,
}

/// Runs the hostile plugin as `bad` in `mode` beside `ddos-guard` as `good`, for [`ROUNDS`]
/// rounds of traffic. Whatever `bad` does, `good` takes every batch and blocks every flooding
/// source, and no other plugin fails.
fn beside_a_good_one(mode: &str, policy: FailurePolicy, queries: Option<RouteLookup>) -> Beside {
    let host = PluginHost::new(Trust::unsigned_allowed()).expect("the engine starts");
    let mut m = Manager::new(host, HookTables::new(MemoryHookMaps::default()), queries);
    let guard = component("ddos_guard");
    m.add(
        manifest("good", &guard, &[Table::Filter, Table::Sample]),
        &guard,
        r#"{"max_pps": 1000, "sample_every": 10, "block_ms": 3600000}"#,
    )
    .expect("the good one starts");
    let wasm = component("hostile");
    let mut bad = manifest("bad", &wasm, &[Table::Filter]);
    bad.failure_policy = policy;
    m.add(bad, &wasm, mode).expect("init works in this mode");

    let mut first_failure = None;
    let mut good_events = 0;
    for n in 0..ROUNDS {
        let batch = flood_round(n);
        let started = Instant::now();
        let failed = m.dispatch(&batch);
        let took = started.elapsed();
        if m.plugins()["good"].status() == Status::Running {
            good_events += batch.len();
        }
        for (name, err) in failed {
            assert_eq!(name, "bad", "round {n}: {err}");
            let call = Duration::from_micros(m.plugins()["bad"].plugin().usage().last_call_us);
            first_failure.get_or_insert((n, err, call, took));
        }
    }
    let good = &m.plugins()["good"];
    assert_eq!(good.status(), Status::Running);
    assert_eq!(good.plugin().usage().calls, u64::from(ROUNDS) + 1, "init and every batch");
    let blocks = rules_of(&m, "good");
    assert_eq!(blocks.len(), usize::from(ROUNDS), "every flooding source blocked: {blocks:?}");
    assert!(blocks.contains(&drop_src(&format!("198.18.{}.1/32", ROUNDS - 1))));
    Beside { m, first_failure, good_events }
}

#[test]
fn a_log_line_with_a_character_across_the_limit_is_cut_and_stops_no_one() {
    // 5000 bytes with a 3-byte character across byte 4096, logged in init and in each call:
    // once the end of every plugin on the router, again at each start as the plugin stayed
    // stored.
    let b = beside_a_good_one("log-multibyte", FailurePolicy::FailOpen, None);
    assert!(b.first_failure.is_none(), "a long line is no failure");
    assert_eq!(b.m.plugins()["bad"].status(), Status::Running);
    let lines = b.m.plugins()["bad"].plugin().log_lines();
    let long: Vec<&str> =
        lines.iter().filter(|l| l.level == "info").map(|l| l.message.as_str()).collect();
    assert_eq!(long.len(), usize::from(ROUNDS) + 1, "init's line and one a call");
    for line in &long {
        assert!(line.len() <= 4096 && line.ends_with('…'), "cut: {} bytes", line.len());
        assert!(line.trim_end_matches('…').bytes().all(|b| b == b'a'), "before the character");
    }
    println!(
        "log-multibyte beside ddos-guard: no failure; its {} lines of 5000 bytes kept as {} \
         bytes; the good plugin took {} events in {ROUNDS} batches and blocked {} sources",
        long.len(),
        long[0].len(),
        b.good_events,
        rules_of(&b.m, "good").len()
    );
}

#[test]
fn a_guest_panic_quarantines_it_with_the_panic_message() {
    let b = beside_a_good_one("panic", FailurePolicy::FailClosed, None);
    let (round, err, call, took) = b.first_failure.expect("it failed");
    assert_eq!(round, 0, "on its first call");
    assert!(matches!(err, PluginError::Trap { call: "handle", .. }), "{err}");
    let reason = match b.m.plugins()["bad"].status() {
        Status::Quarantined { reason, failures: 1, .. } => reason,
        other => panic!("{other:?}"),
    };
    assert!(reason.starts_with("trapped in handle: wasm trap: wasm `unreachable`"), "{reason}");
    assert!(reason.contains("it last logged \"panicked at"), "{reason}");
    assert!(reason.contains(GUEST_PANIC), "{reason}");
    assert_eq!(rules_of(&b.m, "bad"), [drop_src("203.0.113.0/24")], "fail-closed keeps");
    // What `/api/v1/health` reports: degraded, naming the plugin and why.
    let mut report = HostReport { state: "running".into(), ..HostReport::default() };
    report.update_plugins(&b.m);
    assert!(!report.healthy());
    assert_eq!((report.running, report.quarantined.len()), (1, 1));
    assert_eq!(
        (report.quarantined[0].name.as_str(), &report.quarantined[0].reason),
        ("bad", &reason)
    );
    println!(
        "guest panic beside ddos-guard: quarantined after a call of {:.2} ms (the round's \
         dispatch, both plugins: {:.2} ms) with reason {reason:?}; the good plugin took {} \
         events in {ROUNDS} batches and blocked {} sources",
        call.as_secs_f64() * 1e3,
        took.as_secs_f64() * 1e3,
        b.good_events,
        rules_of(&b.m, "good").len()
    );
}

/// A dataplane whose route lookup has a bug: it panics on 10.77.0.9 (what `queries` asks).
struct PanickingQueries;

impl Queries for PanickingQueries {
    fn route(&self, addr: IpAddr) -> Option<RouteInfo> {
        assert_ne!(addr.to_string(), "10.77.0.9", "a bug of the route lookup");
        None
    }
    fn interfaces(&self) -> Vec<InterfaceInfo> {
        Vec::new()
    }
}

#[test]
fn a_panic_of_the_host_serving_one_plugin_quarantines_that_plugin_only() {
    let mut b =
        beside_a_good_one("queries", FailurePolicy::FailOpen, Some(Arc::new(PanickingQueries)));
    let (round, err, call, took) = b.first_failure.expect("it failed");
    assert_eq!(round, 0);
    assert!(matches!(err, PluginError::Panic { call: "handle", .. }), "{err}");
    let Status::Quarantined { reason, .. } = b.m.plugins()["bad"].status() else {
        panic!("not quarantined")
    };
    assert!(reason.contains("a bug of the route lookup"), "the panic's message: {reason}");
    assert!(rules_of(&b.m, "bad").is_empty(), "fail-open");

    // After its back-off a fresh instance replaces the one the panic left mid-call.
    thread::sleep(Duration::from_millis(1100));
    assert_eq!(b.m.restart_due(), ["bad"]);
    let failed = b.m.dispatch(&flood_round(ROUNDS));
    assert_eq!(failed.len(), 1, "the bug is still there: {failed:?}");
    assert!(matches!(b.m.plugins()["bad"].status(), Status::Quarantined { failures: 2, .. }));
    assert_eq!(rules_of(&b.m, "good").len(), usize::from(ROUNDS) + 1, "the good one goes on");
    println!(
        "host panic serving one plugin: quarantined after a call of {:.2} ms (the round's \
         dispatch, both plugins: {:.2} ms) with reason {reason:?}; the good plugin took {} \
         events in {ROUNDS} batches",
        call.as_secs_f64() * 1e3,
        took.as_secs_f64() * 1e3,
        b.good_events
    );
}

#[test]
fn the_local_harness_reports_what_stopped_the_host_before() {
    let wasm = component("hostile");
    let batches = vec![flood_round(0)];
    let run = |mode: &str| {
        sluice::plugins::harness(
            manifest("hostile", &wasm, &[Table::Filter]),
            &wasm,
            mode,
            &batches,
        )
        .expect("runs")
    };
    let multibyte = run("log-multibyte");
    assert!(multibyte.calls.iter().all(|c| c.error.is_none()), "{:?}", multibyte.calls);
    assert!(multibyte.log.iter().any(|l| l.message.len() <= 4096 && l.message.ends_with('…')));
    let panicked = run("panic");
    let error = panicked.calls[1].error.as_deref().expect("handle failed");
    assert!(error.contains(GUEST_PANIC), "{error}");
}
