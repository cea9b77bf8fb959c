//! The store's record: a store emptied, truncated or replaced on disk is refused, not taken for
//! one that never had a configuration; `repair` restores a backup or accepts the store.

mod common;

use common::{author, dir};
use sluice_store::{Config, Store, StoreError, record};

fn with_route(prefix: &str) -> Config {
    sluice_store::parse_config(&format!(
        r#"{{"routes": [{{"prefix": "{prefix}", "via": "192.0.2.1"}}]}}"#
    ))
    .unwrap()
}

/// The state directory `d` with the database in `d/db`, as the daemon keeps them.
fn db_of(d: &common::Dir) -> std::path::PathBuf {
    std::fs::create_dir_all(&d.0).unwrap();
    d.0.join("db")
}

#[test]
fn each_commit_is_recorded_and_a_reopen_is_vouched_for() {
    let d = dir("record-commits");
    let db = db_of(&d);
    let store = Store::open_recorded(&db).unwrap();
    let check = store.check_record().unwrap();
    assert_eq!((check.latest, check.problem.as_deref()), (0, None));
    assert_eq!(check.record.as_ref().map(|r| r.revision), Some(0), "a new store is recorded");
    for i in 1..=3 {
        store.commit_change(&with_route(&format!("10.{i}.0.0/16")), &author("c"), None).unwrap();
        let r = record::read(&record::path_of(&db)).unwrap().unwrap();
        assert_eq!(r.revision, i, "the record follows each commit");
    }
    drop(store);
    let store = Store::open_recorded(&db).unwrap();
    assert_eq!(store.config().unwrap().routes.len(), 1);
    assert_eq!(store.routes_held().unwrap().len(), 3, "every revision's routes");
}

#[test]
fn a_store_removed_or_replaced_on_disk_is_refused_and_repaired_from_a_backup() {
    let d = dir("record-removed");
    let db = db_of(&d);
    let store = Store::open_recorded(&db).unwrap();
    store.commit_change(&with_route("10.1.0.0/16"), &author("c"), None).unwrap();
    store.commit_change(&with_route("10.2.0.0/16"), &author("c"), None).unwrap();
    let backup = store.export(true).unwrap();
    drop(store);
    std::thread::sleep(std::time::Duration::from_millis(100));
    std::fs::remove_dir_all(&db).unwrap();
    let err = Store::open_recorded(&db).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, StoreError::Unvouched { .. }), "{text}");
    assert!(text.contains("config repair") && text.contains("replaced or made afresh"), "{text}");
    // Refused again: the failed open made nothing it would then accept.
    assert!(Store::open_recorded(&db).is_err());
    let store = Store::open_for_repair(&db).unwrap();
    assert!(store.check_record().unwrap().problem.is_some());
    store.import(&backup, &author("restored")).unwrap();
    assert_eq!(store.check_record().unwrap().problem, None, "the import wrote the record");
    drop(store);
    std::thread::sleep(std::time::Duration::from_millis(100));
    let store = Store::open_recorded(&db).unwrap();
    assert_eq!(store.config().unwrap().routes[0].prefix.to_string(), "10.2.0.0/16");
}

#[test]
fn a_store_that_lost_revisions_is_refused_until_accepted() {
    let d = dir("record-behind");
    let db = db_of(&d);
    let store = Store::open_recorded(&db).unwrap();
    store.commit_change(&with_route("10.1.0.0/16"), &author("c"), None).unwrap();
    let r = record::read(&record::path_of(&db)).unwrap().unwrap();
    // The record says a later revision was committed than the database holds (as after the
    // database's newest writes were lost).
    let ahead = record::Record { revision: r.revision + 5, ..r };
    record::write(&record::path_of(&db), &ahead).unwrap();
    drop(store);
    std::thread::sleep(std::time::Duration::from_millis(100));
    let err = Store::open_recorded(&db).unwrap_err().to_string();
    assert!(err.contains("holds revisions up to 1, but revision 6"), "{err}");
    let store = Store::open_for_repair(&db).unwrap();
    store.write_record().unwrap();
    drop(store);
    std::thread::sleep(std::time::Duration::from_millis(100));
    Store::open_recorded(&db).expect("accepted");
    // A record that is not one is an error, not a reason to accept anything.
    std::fs::write(record::path_of(&db), "garbage").unwrap();
    let err = Store::open_recorded(&db).unwrap_err().to_string();
    assert!(err.contains("not a store record"), "{err}");
}
