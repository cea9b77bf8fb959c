//! The store against its promises: revisions, diffs, commit-confirm across a reopen, rollback,
//! export and import, validation that writes nothing, and crash safety: a writer killed with
//! SIGKILL at random moments, again and again, never loses a change it acknowledged, and the
//! store always opens, also right after it was closed in the same process.

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant, SystemTime},
};

use sluice_store::{Config, Interface, StaticRoute, Store, StoreError, XdpMode};

mod common;

use common::{author, dir};

fn route(prefix: &str, via: &str) -> StaticRoute {
    StaticRoute {
        prefix: prefix.parse().unwrap(),
        via: Some(via.parse().unwrap()),
        dev: None,
        metric: 0,
    }
}

fn with_route(mut c: Config, prefix: &str) -> Config {
    c.routes.push(route(prefix, "192.0.2.254"));
    c
}

#[test]
fn stage_diff_commit_history_and_rollback() {
    let d = dir("revisions");
    let store = Store::open(&d.0).unwrap();
    assert_eq!(store.schema().unwrap(), sluice_store::SCHEMA_VERSION);
    assert!(store.running().unwrap().is_none());
    let mut c = Config::default();
    c.interfaces.insert(
        "eth1".into(),
        Interface {
            attach: true,
            xdp_mode: XdpMode::Native,
            addresses: vec!["192.0.2.1/24".parse().unwrap()],
            mtu: None,
            up: true,
        },
    );
    let c = with_route(c, "10.1.0.0/16");
    store.stage(&c).unwrap();
    let changes = store.diff().unwrap();
    let items: Vec<(&str, &str)> = changes.iter().map(|c| (c.kind, c.item.as_str())).collect();
    assert_eq!(items, [("added", "interfaces.eth1"), ("added", "routes.10.1.0.0/16 metric 0")]);
    let r1 = store.commit(&author("first")).unwrap();
    assert_eq!(r1.id, 1);
    assert!(store.diff().unwrap().is_empty(), "the candidate is the running configuration");
    store.stage(&with_route(c.clone(), "10.2.0.0/16")).unwrap();
    let r2 = store.commit(&author("second")).unwrap();
    assert_eq!(store.config().unwrap().routes.len(), 2);
    let r3 = store.rollback_to(r1.id, &author("back")).unwrap();
    assert_eq!((r2.id, r3.id), (2, 3));
    assert_eq!(store.config().unwrap(), c, "revision 1's configuration runs again");
    let history: Vec<(u64, String)> =
        store.history().unwrap().into_iter().map(|(id, _, a)| (id, a.message)).collect();
    assert_eq!(history, [(1, "first".into()), (2, "second".into()), (3, "back".into())]);
}

#[test]
fn invalid_configurations_are_refused_with_every_field_and_nothing_is_written() {
    let d = dir("invalid");
    let store = Store::open(&d.0).unwrap();
    let mut c = Config::default();
    c.routes.push(route("10.1.2.3/8", "192.0.2.254"));
    c.routes.push(StaticRoute {
        prefix: "10.9.0.0/16".parse().unwrap(),
        via: None,
        dev: None,
        metric: 0,
    });
    c.routes.push(route("2001:db8::/32", "192.0.2.254"));
    c.routes.push(route("10.8.0.0/16", "192.0.2.254"));
    c.routes.push(route("10.8.0.0/16", "192.0.2.253"));
    c.interfaces.insert(
        "this-name-is-too-long".into(),
        Interface {
            attach: true,
            xdp_mode: XdpMode::Auto,
            addresses: vec![],
            mtu: Some(20),
            up: true,
        },
    );
    let Err(StoreError::Invalid(errors)) = store.stage(&c) else { panic!("accepted") };
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "interfaces.this-name-is-too-long",
            "interfaces.this-name-is-too-long.mtu",
            "routes[0].prefix",
            "routes[1]",
            "routes[2].via",
            "routes[4].prefix"
        ]
    );
    assert!(errors[2].message.contains("host bits"), "{}", errors[2].message);
    assert_eq!(store.candidate().unwrap(), Config::default(), "nothing staged");
    let err =
        store.import("{\"routes\": [{\"prefix\": \"10.0.0.0/33\"}]}", &author("x")).unwrap_err();
    assert!(matches!(err, StoreError::Parse(_)), "{err}");
    let err = store.import("{\"colour\": \"blue\"}", &author("x")).unwrap_err();
    assert!(err.to_string().contains("unknown field `colour`"), "{err}");
    assert!(store.history().unwrap().is_empty());
}

#[test]
fn an_unconfirmed_commit_rolls_back_also_after_a_restart() {
    let d = dir("confirm");
    let base = with_route(Config::default(), "10.1.0.0/16");
    {
        let store = Store::open(&d.0).unwrap();
        store.stage(&base).unwrap();
        store.commit(&author("base")).unwrap();
        store.stage(&with_route(base.clone(), "10.66.0.0/16")).unwrap();
        let r = store.commit_confirmed(&author("risky"), Duration::from_millis(200)).unwrap();
        assert_eq!(store.pending_confirm().unwrap().unwrap().revision, r.id);
        assert!(store.rollback_expired(SystemTime::now()).unwrap().is_none(), "not yet");
        let err = store.commit(&author("another")).unwrap_err();
        assert!(matches!(err, StoreError::PendingConfirm(2)), "{err}");
    } // The daemon stops (or the router reboots) before the deadline.
    std::thread::sleep(Duration::from_millis(250));
    let store = Store::open(&d.0).unwrap();
    let back = store.rollback_expired(SystemTime::now()).unwrap().expect("rolled back");
    assert_eq!(back.config, base);
    assert_eq!(store.config().unwrap(), base);
    assert!(store.pending_confirm().unwrap().is_none());

    // Confirmed in time, it stays.
    store.stage(&with_route(base.clone(), "10.77.0.0/16")).unwrap();
    store.commit_confirmed(&author("fine"), Duration::from_millis(100)).unwrap();
    assert!(store.confirm().unwrap());
    std::thread::sleep(Duration::from_millis(150));
    assert!(store.rollback_expired(SystemTime::now()).unwrap().is_none());
    assert_eq!(store.config().unwrap().routes.len(), 2);
}

#[test]
fn export_and_import_restore_the_same_configuration() {
    let (a, b) = (dir("export-a"), dir("export-b"));
    let one = Store::open(&a.0).unwrap();
    let mut c = with_route(Config::default(), "2001:db8:1::/48");
    c.routes[0].via = Some("2001:db8::1".parse().unwrap());
    one.stage(&c).unwrap();
    one.commit(&author("x")).unwrap();
    let text = one.export(true).unwrap();
    assert!(text.contains("\"2001:db8:1::/48\""), "readable: {text}");
    let two = Store::open(&b.0).unwrap();
    two.import(&text, &author("restore")).unwrap();
    assert_eq!(two.config().unwrap(), c);
}

/// The writer the crash test kills: commits revisions one after the other and prints each id
/// once `commit` returned. The crash test runs itself again in this role.
fn crash_writer(dir: &std::ffi::OsStr) -> ! {
    let store = Store::open(std::path::Path::new(dir)).unwrap();
    let mut i = store.config().unwrap().routes.len();
    loop {
        let c =
            with_route(store.config().unwrap(), &format!("10.{}.{}.0/24", i / 256 % 256, i % 256));
        store.stage(&c).unwrap();
        let r = store.commit(&author(&format!("{i}"))).unwrap();
        println!("acked {}", r.id);
        i += 1;
    }
}

#[test]
fn crash_safety_under_repeated_sigkill() {
    if let Some(dir) = std::env::var_os("SLUICE_STORE_CRASH_DIR") {
        crash_writer(&dir);
    }
    let d = dir("crash");
    let exe = std::env::current_exe().unwrap();
    let mut acked = 0u64;
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for round in 0..50 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let mut child = Command::new(&exe)
            .args(["crash_safety_under_repeated_sigkill", "--exact", "--nocapture"])
            .env("SLUICE_STORE_CRASH_DIR", &d.0)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // Let it write for a while: after 1 to 20 acknowledgements, kill it mid-write.
        let want = 1 + seed % 20;
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut read = 0;
        while read < want && Instant::now() < deadline {
            match lines.next() {
                Some(Ok(l)) if l.starts_with("acked ") => {
                    acked = acked.max(l[6..].parse().unwrap());
                    read += 1;
                }
                Some(_) => {}
                None => break,
            }
        }
        nix_kill(child.id());
        let _ = child.wait();
        // Whatever was read after the kill is acknowledged too.
        for l in lines.map_while(Result::ok) {
            if let Some(id) = l.strip_prefix("acked ") {
                acked = acked.max(id.parse().unwrap());
            }
        }
        let store = Store::open(&d.0)
            .unwrap_or_else(|e| panic!("round {round}: the store does not open: {e}"));
        let running = store.running().unwrap().map_or(0, |r| r.id);
        assert!(
            running >= acked,
            "round {round}: revision {acked} was acknowledged, {running} runs"
        );
        for id in 1..=acked {
            store.revision(id).unwrap_or_else(|e| panic!("round {round}: revision {id}: {e}"));
        }
    }
    assert!(acked >= 50, "the writer made progress: {acked} revisions");
}

fn nix_kill(pid: u32) {
    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
}

#[test]
fn an_older_store_is_migrated_and_a_newer_one_refused() {
    let d = dir("schema");
    {
        // A store of before schema versions: the tree, no version record.
        let db = sled::open(&d.0).unwrap();
        db.open_tree("config").unwrap().insert(b"candidate", b"{}".to_vec()).unwrap();
        db.flush().unwrap();
    }
    let store = Store::open(&d.0).unwrap();
    assert_eq!(store.schema().unwrap(), sluice_store::SCHEMA_VERSION);
    assert_eq!(store.candidate().unwrap(), Config::default());
    drop(store);
    {
        let db = sled::open(&d.0).unwrap();
        db.open_tree("config").unwrap().insert(b"meta/schema", &99u32.to_be_bytes()).unwrap();
        db.flush().unwrap();
    }
    let err = Store::open(&d.0).unwrap_err();
    assert!(matches!(err, StoreError::TooNew { found: 99 }), "{err}");
}

#[test]
fn a_store_reopens_at_once_after_it_is_closed_and_one_in_use_is_refused_with_a_reason() {
    let d = dir("reopen");
    // sled gives its lock up only when its flushing thread has written what was left and
    // stopped, a moment after the last handle is dropped; a reopen right away (a daemon's part
    // restarted in place) waits for it instead of failing, and finds everything written.
    let config = sled::Config::new().path(&d.0);
    for i in 0..40u32 {
        let db = sluice_store::open_db(&config).unwrap_or_else(|e| panic!("reopen {i}: {e:?}"));
        assert_eq!(db.len(), i as usize);
        db.insert(i.to_be_bytes(), b"unflushed").unwrap();
    }
    let held = Store::open(&d.0).unwrap();
    let start = Instant::now();
    let err = Store::open(&d.0).unwrap_err();
    let waited = start.elapsed();
    assert!(format!("{err:?}").contains("in use by another process"), "{err:?}");
    assert!(waited >= sluice_store::LOCK_WAIT, "gave up after {waited:?}");
    drop(held);
}
