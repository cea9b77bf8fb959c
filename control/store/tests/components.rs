//! Plugin entries and their components: a component is stored only with the revision that first
//! names it, collected once no kept revision names it, and a plugin entry brought by a
//! candidate or an import names a stored component and a manifest that matches it. And a
//! configuration of 10,000 static routes exported and imported back.

use std::time::{Duration, Instant};

use serde_json::json;
use sluice_store::{
    COMPONENT_REVISIONS, Config, Plugin, StaticRoute, Store, StoreError, parse_config,
};

mod common;

use common::{author, dir};

/// A stand-in component of `len` bytes and its (made-up but well-formed) hash.
fn component(n: u8, len: usize) -> (String, Vec<u8>) {
    (format!("{n:02x}").repeat(32), vec![n; len])
}

fn plugin(name: &str, sha: &str) -> Plugin {
    Plugin {
        wasm_sha256: sha.to_owned(),
        manifest: json!({"name": name, "version": "1", "tables": [], "sha256": sha}),
        config: json!({}),
        enabled: true,
        allow_match_all: false,
    }
}

fn with_plugin(mut c: Config, name: &str, sha: &str) -> Config {
    c.plugins.insert(name.into(), plugin(name, sha));
    c
}

fn stored_bytes(store: &Store) -> u64 {
    store.components().unwrap().values().sum()
}

fn route(k: u32) -> StaticRoute {
    StaticRoute {
        prefix: format!("10.{}.{}.0/24", k >> 8, k & 0xff).parse().unwrap(),
        via: Some("192.0.2.254".parse().unwrap()),
        dev: None,
        metric: 0,
    }
}

#[test]
fn a_component_is_stored_with_its_commit_and_collected_once_no_kept_revision_names_it() {
    let d = dir("components");
    let store = Store::open(&d.0).unwrap();
    let (sha1, wasm1) = component(1, 100_000);
    let config = with_plugin(Config::default(), "acl", &sha1);
    store.commit_with_component(&config, &author("add acl"), &sha1, &wasm1).unwrap();
    assert_eq!(stored_bytes(&store), 100_000);

    // A commit refused (one waits for its confirmation) stores nothing.
    let mut routed = config.clone();
    routed.routes.push(route(1));
    store.commit_change(&routed, &author("to confirm"), Some(Duration::from_mins(1))).unwrap();
    let (sha2, wasm2) = component(2, 50_000);
    let replaced = with_plugin(routed.clone(), "acl", &sha2);
    let refused = store.commit_with_component(&replaced, &author("acl 2"), &sha2, &wasm2);
    assert!(matches!(refused, Err(StoreError::PendingConfirm(_))), "{refused:?}");
    assert!(!store.has_component(&sha2).unwrap(), "a refused commit stores nothing");
    assert!(store.confirm().unwrap());

    // Replaced N times: the replaced ones are kept while the newest revisions name them, then
    // collected; the running one always stays.
    let mut replaced_bytes = 0;
    for n in 2..12u8 {
        let (sha, wasm) = component(n, 50_000);
        let c = with_plugin(routed.clone(), "acl", &sha);
        store.commit_with_component(&c, &author("replace acl"), &sha, &wasm).unwrap();
        replaced_bytes += 50_000;
    }
    let before = stored_bytes(&store);
    for k in 2..=COMPONENT_REVISIONS as u32 + 1 {
        let mut c = store.config().unwrap();
        c.routes.push(route(k));
        store.commit_change(&c, &author("a route"), None).unwrap();
    }
    let after = stored_bytes(&store);
    eprintln!(
        "components: 1 added, 10 replacements ({replaced_bytes} bytes) and 1 refused: {before} \
         bytes stored; after {COMPONENT_REVISIONS} more commits: {after} bytes"
    );
    assert_eq!(after, 50_000, "only the running component is left");
    assert_eq!(store.components().unwrap().len(), 1);

    // A rollback to a revision whose component was collected is refused, naming it; one
    // within the kept revisions is not.
    let first = store.history().unwrap()[0].0;
    match store.rollback_to(first, &author("back")) {
        Err(StoreError::Invalid(e)) => {
            assert_eq!(e[0].field, "plugins.acl.wasm_sha256", "{e:?}");
        }
        other => panic!("a rollback to a collected component: {other:?}"),
    }
    let last = store.history().unwrap().last().unwrap().0;
    store.rollback_to(last - 1, &author("one back")).unwrap();
}

#[test]
fn components_no_revision_names_are_collected_at_open() {
    let d = dir("components-open");
    {
        let store = Store::open(&d.0).unwrap();
        let (sha, wasm) = component(1, 10_000);
        store
            .commit_with_component(
                &with_plugin(Config::default(), "a", &sha),
                &author("a"),
                &sha,
                &wasm,
            )
            .unwrap();
        // What an older version left: a component stored before its upload was refused.
        let (junk, bytes) = component(9, 30_000);
        store.put_wasm(&junk, &bytes).unwrap();
        assert_eq!(stored_bytes(&store), 40_000);
    }
    let store = Store::open(&d.0).unwrap();
    assert_eq!(stored_bytes(&store), 10_000, "the refused upload is collected at open");
}

#[test]
fn plugin_entries_staged_or_imported_name_a_stored_component_and_a_matching_manifest() {
    let d = dir("plugin-entries");
    let store = Store::open(&d.0).unwrap();
    let (sha, wasm) = component(1, 1000);
    let running = with_plugin(Config::default(), "acl", &sha);
    store.commit_with_component(&running, &author("add"), &sha, &wasm).unwrap();
    let revisions = store.history().unwrap().len();
    let (unknown, _) = component(7, 10);

    let mut null_manifest = plugin("other", &sha);
    null_manifest.manifest = serde_json::Value::Null;
    let mut wrong_hash = plugin("third", &sha);
    wrong_hash.manifest["sha256"] = json!(unknown);
    let mut wrong_name = plugin("fourth", &sha);
    wrong_name.manifest["name"] = json!("someone-else");
    let cases = [
        ("other", null_manifest, "plugins.other.manifest"),
        ("third", wrong_hash, "plugins.third.manifest.sha256"),
        ("fourth", wrong_name, "plugins.fourth.manifest.name"),
        ("fifth", plugin("fifth", &unknown), "plugins.fifth.wasm_sha256"),
    ];
    for (name, entry, field) in cases {
        let mut c = running.clone();
        c.plugins.insert(name.into(), entry);
        let named = |r: Result<_, StoreError>| match r {
            Err(StoreError::Invalid(e)) => e.iter().any(|e| e.field == field),
            _ => false,
        };
        assert!(named(store.stage(&c)), "staging {name}: {field} named");
        let text = serde_json::to_string_pretty(&c).unwrap();
        assert!(named(store.import(&text, &author("import")).map(|_| ())), "importing {name}");
    }
    assert_eq!(store.candidate().unwrap(), running, "nothing was staged");
    assert_eq!(store.history().unwrap().len(), revisions, "nothing was committed");

    // An entry an older version accepted broken is carried along unchanged, and removed.
    let mut broken = running.clone();
    broken.plugins.get_mut("acl").unwrap().manifest = serde_json::Value::Null;
    store.commit_change(&broken, &author("old data"), None).unwrap();
    let mut with_route = broken.clone();
    with_route.routes.push(route(1));
    store.stage(&with_route).unwrap();
    store.commit(&author("a route beside it")).unwrap();
    let mut removed = store.config().unwrap();
    removed.plugins.remove("acl");
    store.commit_change(&removed, &author("remove acl"), None).unwrap();
    assert!(store.config().unwrap().plugins.is_empty());
}

#[test]
fn ten_thousand_static_routes_are_exported_and_imported_back() {
    let d = dir("big-export");
    let store = Store::open(&d.0).unwrap();
    let c = Config { routes: (0..10_000).map(route).collect(), ..Config::default() };
    let t = Instant::now();
    store.commit_change(&c, &author("10,000 routes"), None).unwrap();
    let committed = t.elapsed();
    let t = Instant::now();
    let text = store.export(true).unwrap();
    let exported = t.elapsed();
    let t = Instant::now();
    store.stage(&parse_config(&text).unwrap()).unwrap();
    let diff = store.diff().unwrap();
    let staged = t.elapsed();
    assert!(diff.is_empty(), "the same configuration: {} changes", diff.len());
    store.discard().unwrap();
    let t = Instant::now();
    store.import(&text, &author("import")).unwrap();
    let imported = t.elapsed();
    assert_eq!(store.config().unwrap(), c);
    // And against an empty running configuration: 10,000 changes.
    store.commit_change(&Config::default(), &author("empty"), None).unwrap();
    let t = Instant::now();
    store.stage(&c).unwrap();
    assert_eq!(store.diff().unwrap().len(), 10_000);
    let diffed = t.elapsed();
    eprintln!(
        "10,000 routes: export {} bytes; commit {committed:?}, export {exported:?}, stage and diff \
         (same) {staged:?}, import {imported:?}, stage and diff (10,000 added) {diffed:?}",
        text.len()
    );
}
