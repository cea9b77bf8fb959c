//! Hostile-client tier, configuration integrity: a daemon serving its API in a namespace of its
//! own ([`ApiLab`]), fed uploads and configurations that must be refused whole.
//!
//! - Refused plugin uploads (a hash of another component, an untrusted or forged signature, an
//!   unsigned manifest, a configuration the plugin refuses) store nothing: the component store's
//!   bytes stay as they were.
//! - An enabled upload whose commit fails (a commit waits for its confirmation) never runs.
//! - Replaced components are collected once the newest revisions no longer name them.
//! - Imported or staged plugin entries are checked as uploads: a null manifest, a component not
//!   stored, a manifest of another component, an untrusted signature: 422 naming the field,
//!   nothing written.
//! - An entry an older version let in broken (written with the store API while the daemon was
//!   stopped) is removed with `DELETE /plugins/NAME`; a component left unreferenced is collected
//!   when the daemon starts.
//! - A large configuration is exported and imported back, timed, and reaches the kernel.
//!
//! Needs root, like the other namespace tests, and the test plugins (`make plugins`).

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use sluice::plugins::{Manifest, Table, public_key, sha256_hex};
use sluice_testbed::{
    api_lab::{ADMIN, ApiLab, RawAnswer, RawClient, Session, in_namespace},
    lab::Subnet,
    netns, privileged,
};

/// The publisher the daemon trusts, and one it does not.
const TRUSTED: [u8; 32] = [7; 32];
const STRANGER: [u8; 32] = [9; 32];

/// A file removed on drop.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The trusted publisher's key as `--trusted-keys` reads it.
fn trusted_keys() -> TempFile {
    let path = std::env::temp_dir().join(netns::unique_name("sluice-cfg-keys-"));
    std::fs::write(&path, format!("{}\n", public_key(&TRUSTED))).expect("the trusted keys file");
    TempFile(path)
}

/// The `static-acl` example component.
fn static_acl() -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../plugins/target/wasm32-wasip2/release/static_acl.wasm");
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!("{}: {e}; build the plugins first with `make plugins`", path.display())
    })
}

/// The component with a custom section appended: the same plugin, another component (hash).
fn variant(wasm: &[u8], n: u8) -> Vec<u8> {
    let name = b"sluice-test";
    let payload = [n; 16];
    let mut out = wasm.to_vec();
    // Custom section: id 0, its size, then its name (length-prefixed) and its bytes; sizes
    // below 128 are one LEB128 byte.
    out.push(0);
    out.push(u8::try_from(1 + name.len() + payload.len()).expect("a short section"));
    out.push(u8::try_from(name.len()).expect("a short name"));
    out.extend_from_slice(name);
    out.extend_from_slice(&payload);
    out
}

/// A manifest of `wasm` called `name`, signed by `publisher` (unsigned when `None`).
fn manifest(name: &str, wasm: &[u8], publisher: Option<&[u8; 32]>) -> Manifest {
    let mut m = Manifest::new(name, "0.1.0", &[Table::Filter], wasm);
    if let Some(seed) = publisher {
        m.sign(seed);
    }
    m
}

fn upload(m: &Manifest, wasm: &[u8], config: &Value, enabled: bool) -> Value {
    let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, wasm);
    json!({"manifest": m, "wasm_base64": b64, "config": config, "enabled": enabled})
}

/// The components the daemon's store holds: (count, bytes). Read from a copy of the database
/// (the daemon holds the original), opened with sled alone: the store's own open would collect
/// what it should not keep and hide it.
fn stored(state: &Path) -> (usize, u64) {
    let copy = std::env::temp_dir().join(netns::unique_name("sluice-cfg-db-"));
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(state.join("db"))
        .arg(&copy)
        .status()
        .expect("cp");
    assert!(status.success(), "copying the store");
    let out = {
        let db = sluice_store::open_db(&sled::Config::new().path(&copy)).expect("the copy opens");
        let tree = db.open_tree("wasm").expect("the components' tree");
        tree.iter()
            .values()
            .fold((0, 0), |(n, b), v| (n + 1, b + v.expect("a component").len() as u64))
    };
    let _ = std::fs::remove_dir_all(&copy);
    out
}

/// An API client with its session.
struct Admin {
    raw: RawClient,
    session: Session,
}

impl Admin {
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> RawAnswer {
        self.raw
            .json(None, method, path, &self.session.headers(), body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e:#}"))
    }

    /// A request with a body of text (a configuration file).
    fn send(&self, method: &str, path: &str, text: &str) -> RawAnswer {
        self.try_send(method, path, text).unwrap_or_else(|e| panic!("{method} {path}: {e:#}"))
    }

    /// [`Admin::send`], whose sending may fail (a server that refuses a body too large may
    /// close the connection before it is all sent).
    fn try_send(&self, method: &str, path: &str, text: &str) -> anyhow::Result<RawAnswer> {
        let mut headers = vec![("Content-Type", "application/json")];
        headers.extend_from_slice(&self.session.headers());
        self.raw.request(None, method, path, &headers, text.as_bytes())
    }

    fn revisions(&self) -> usize {
        self.call("GET", "/api/v1/config/revisions", None).json().as_array().map_or(0, Vec::len)
    }

    fn plugins(&self) -> Value {
        self.call("GET", "/api/v1/plugins", None).json()
    }
}

/// Whether a problem answer names `field`.
fn names(a: &RawAnswer, field: &str) -> bool {
    a.json()["errors"].as_array().is_some_and(|e| e.iter().any(|e| e["field"] == field))
}

#[test]
fn refused_uploads_and_plugin_entries_store_nothing_and_replaced_components_are_collected() {
    if !privileged() {
        return;
    }
    let keys = trusted_keys();
    let keys_arg = keys.0.to_str().expect("a UTF-8 path").to_owned();
    let mut lab = ApiLab::start("hcfg", &["--trusted-keys", &keys_arg]).expect("the API lab");
    let ns = lab.ns().to_owned();
    let result = in_namespace(&ns, || {
        plugin_integrity(&mut lab);
        Ok(())
    });
    result.expect("the namespace");
}

#[expect(clippy::too_many_lines, reason = "one story, told in order, with its figures")]
fn plugin_integrity(lab: &mut ApiLab) {
    let admin =
        Admin { raw: lab.raw().expect("a client"), session: lab.setup_admin().expect("admin") };
    let wasm = static_acl();
    let c1 = Subnet(1).v4_prefix();
    let drop_c1 = json!({"rules": [{"direction": "src", "prefix": c1, "action": "drop"}]});
    let good = manifest("acl", &wasm, Some(&TRUSTED));
    let revisions = admin.revisions();

    // Refused uploads store nothing.
    let mut other_hash = good.clone();
    other_hash.sha256 = sha256_hex(&variant(&wasm, 1));
    let mut forged = good.clone();
    forged.version = "0.2.0".into();
    let bad_config = json!({"rules": [{"direction": "up", "prefix": c1, "action": "drop"}]});
    let refused = [
        (
            "a hash of another component",
            upload(&other_hash, &wasm, &drop_c1, true),
            "manifest.sha256",
        ),
        (
            "an untrusted publisher",
            upload(&manifest("acl", &wasm, Some(&STRANGER)), &wasm, &drop_c1, true),
            "manifest.signature",
        ),
        (
            "a signature of another manifest",
            upload(&forged, &wasm, &drop_c1, true),
            "manifest.signature",
        ),
        (
            "unsigned",
            upload(&manifest("acl", &wasm, None), &wasm, &drop_c1, true),
            "manifest.signature",
        ),
        ("a configuration it refuses", upload(&good, &wasm, &bad_config, true), "config"),
        (
            "a configuration it refuses, disabled",
            upload(&good, &wasm, &bad_config, false),
            "config",
        ),
    ];
    let before = stored(&lab.state);
    for (what, body, field) in &refused {
        let a = admin.call("POST", "/api/v1/plugins", Some(body));
        assert_eq!(a.status, 422, "{what}: {}", a.text());
        assert!(names(&a, field), "{what}: the problem names {field}: {}", a.text());
    }
    let after = stored(&lab.state);
    println!(
        "refused uploads: {} of {} bytes each; component store before {} components / {} bytes, \
         after {} / {}",
        refused.len(),
        wasm.len(),
        before.0,
        before.1,
        after.0,
        after.1
    );
    assert_eq!(after, before, "a refused upload stores nothing");
    assert_eq!(admin.revisions(), revisions, "and commits nothing");
    assert_eq!(admin.plugins(), json!([]), "and runs nothing");

    // An enabled upload whose commit fails never runs, and stores nothing.
    let a = admin.call("PUT", "/api/v1/config/candidate", Some(&json!({})));
    assert_eq!(a.status, 200, "{}", a.text());
    let a = admin.call(
        "POST",
        "/api/v1/config/commit",
        Some(&json!({"message": "to confirm", "confirm_seconds": 600})),
    );
    assert_eq!(a.status, 200, "{}", a.text());
    let a = admin.call("POST", "/api/v1/plugins", Some(&upload(&good, &wasm, &drop_c1, true)));
    assert_eq!(a.status, 409, "a commit waits for its confirmation: {}", a.text());
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(admin.plugins(), json!([]), "the refused commit's plugin never ran");
    assert!(!lab.log_tail(200).contains("plugin started"), "{}", lab.log_tail(30));
    assert_eq!(stored(&lab.state), before, "nor was its component stored");
    assert_eq!(admin.call("POST", "/api/v1/config/confirm", None).status, 200);

    // Accepted, then replaced: the replaced components are kept while the newest revisions
    // name them (a rollback can run them), then collected.
    let a = admin.call("POST", "/api/v1/plugins", Some(&upload(&good, &wasm, &drop_c1, true)));
    assert_eq!(a.status, 201, "{}", a.text());
    let list = admin.plugins();
    assert_eq!(
        (list[0]["status"]["state"].as_str(), list[0]["rules"].as_u64()),
        (Some("running"), Some(1)),
        "{list}"
    );
    let replacements = 4u8;
    let mut newest = wasm.clone();
    for n in 1..=replacements {
        newest = variant(&wasm, n);
        let m = manifest("acl", &newest, Some(&TRUSTED));
        let a = admin.call("POST", "/api/v1/plugins", Some(&upload(&m, &newest, &drop_c1, true)));
        assert_eq!(a.status, 201, "{}", a.text());
    }
    let replaced = stored(&lab.state);
    assert_eq!(replaced.0, usize::from(replacements) + 1, "the replaced ones are kept a while");
    let list = admin.plugins();
    assert_eq!(list[0]["sha256"].as_str(), Some(sha256_hex(&newest).as_str()), "{list}");
    assert_eq!(list[0]["status"]["state"], "running", "{list}");
    let gw = Subnet(1).host_v4();
    for k in 0..sluice_store::COMPONENT_REVISIONS {
        let route = json!({"prefix": format!("100.64.{k}.0/24"), "via": gw});
        let a = admin.call("POST", "/api/v1/routes/static", Some(&route));
        assert_eq!(a.status, 201, "{}", a.text());
    }
    let collected = stored(&lab.state);
    println!(
        "replaced components: {} uploads, {} components / {} bytes stored; after {} more \
         commits {} / {} (the running one)",
        usize::from(replacements) + 1,
        replaced.0,
        replaced.1,
        sluice_store::COMPONENT_REVISIONS,
        collected.0,
        collected.1
    );
    assert_eq!(collected, (1, newest.len() as u64), "only the running component is left");

    // Imported or staged plugin entries are checked as uploads; nothing is written.
    let running = admin.call("GET", "/api/v1/config", None).json()["config"].clone();
    let revisions = admin.revisions();
    let newest_sha = sha256_hex(&newest);
    let entry = |m: Value, sha: &str| json!({"wasm_sha256": sha, "manifest": m, "config": drop_c1, "enabled": true});
    let untrusted = manifest("stranger", &newest, Some(&STRANGER));
    let mut mismatched = manifest("mismatched", &newest, Some(&TRUSTED));
    mismatched.sha256 = sha256_hex(&wasm);
    let entries = [
        ("ghost", entry(Value::Null, &newest_sha), "plugins.ghost.manifest"),
        (
            "absent",
            entry(json!(manifest("absent", &wasm, Some(&TRUSTED))), &sha256_hex(&wasm)),
            "plugins.absent.wasm_sha256",
        ),
        ("mismatched", entry(json!(mismatched), &newest_sha), "plugins.mismatched.manifest.sha256"),
        ("stranger", entry(json!(untrusted), &newest_sha), "plugins.stranger.manifest.signature"),
    ];
    for (name, e, field) in &entries {
        let mut config = running.clone();
        config["plugins"][*name] = e.clone();
        let text = serde_json::to_string_pretty(&config).expect("JSON");
        let a = admin.send("POST", "/api/v1/config/import", &text);
        assert_eq!(a.status, 422, "import {name}: {}", a.text());
        assert!(names(&a, field), "import {name}: names {field}: {}", a.text());
        let a = admin.send("PUT", "/api/v1/config/candidate", &text);
        assert_eq!(a.status, 422, "stage {name}: {}", a.text());
        assert!(names(&a, field), "stage {name}: names {field}: {}", a.text());
    }
    assert_eq!(admin.revisions(), revisions, "no import committed");
    assert_eq!(admin.call("GET", "/api/v1/config/diff", None).json(), json!([]), "none staged");
    assert_eq!(admin.call("GET", "/api/v1/config", None).json()["config"], running);
    println!("plugin entries refused on import and staging: {}", entries.len());

    // Old data: an entry without a manifest, written with the store API while the daemon was
    // stopped, and a component nothing names. The daemon collects the component as it starts,
    // and the entry is removed through the API.
    let junk = variant(&wasm, 99);
    lab.restart(|store| {
        let mut c = store.config().expect("the configuration");
        c.plugins.insert(
            "ghost".into(),
            sluice_store::Plugin {
                wasm_sha256: newest_sha.clone(),
                manifest: Value::Null,
                config: json!({}),
                enabled: true,
                allow_match_all: false,
            },
        );
        let author = sluice_store::Author {
            who: "old".into(),
            from: "test".into(),
            message: "old data".into(),
        };
        store.commit_change(&c, &author, None).expect("an older version's entry");
        store.put_wasm(&sha256_hex(&junk), &junk).expect("an older version's leftover");
    })
    .expect("the daemon restarted");
    let raw = admin.raw;
    let session = raw.login(None, ADMIN.0, ADMIN.1).expect("a login after the restart");
    let admin = Admin { raw, session };
    let start = stored(&lab.state);
    println!(
        "after a restart with a {} byte leftover component: {} components / {} bytes",
        junk.len(),
        start.0,
        start.1
    );
    assert_eq!(start, (1, newest.len() as u64), "the leftover is collected at start");
    let list = admin.plugins();
    assert!(list.as_array().is_some_and(|l| l.iter().any(|p| p["name"] == "ghost")), "{list}");
    let a = admin.call("DELETE", "/api/v1/plugins/ghost", None);
    assert_eq!(a.status, 200, "a broken entry is removed: {}", a.text());
    let list = admin.plugins();
    assert!(list.as_array().is_some_and(|l| l.iter().all(|p| p["name"] != "ghost")), "{list}");
}

/// The static routes of the large configuration.
const BIG: usize = 10_000;

/// `n` static routes via the lab's host, as a configuration file.
fn routes_config(n: usize) -> Value {
    let gw = Subnet(1).host_v4();
    let routes: Vec<Value> = (0..n)
        .map(|k| {
            let prefix = format!("100.{}.{}.0/24", 64 + k / 256, k % 256);
            json!({"prefix": prefix, "via": gw, "metric": 0})
        })
        .collect();
    // As the export writes it (every field), so that its size is the export's.
    json!({"interfaces": {}, "routes": routes, "plugins": {}})
}

/// Sluice's routes in the router namespace's kernel.
fn kernel_routes(lab: &ApiLab) -> usize {
    let out = lab.router.run("ip", &["-4", "route", "show", "proto", "238"]).expect("ip route");
    out.lines().count()
}

#[test]
fn a_large_configuration_is_exported_and_imported_back() {
    if !privileged() {
        return;
    }
    let lab = ApiLab::start("hbig", &[]).expect("the API lab");
    let ns = lab.ns().to_owned();
    in_namespace(&ns, || {
        round_trip(&lab);
        Ok(())
    })
    .expect("the namespace");
}

fn round_trip(lab: &ApiLab) {
    let admin =
        Admin { raw: lab.raw().expect("a client"), session: lab.setup_admin().expect("admin") };
    // 10,000 routes; where this build still limits a configuration's body to 64 KiB, the most
    // that fit.
    let mut n = BIG;
    let mut text = serde_json::to_string_pretty(&routes_config(n)).expect("JSON");
    let t = Instant::now();
    let accepted = match admin.try_send("POST", "/api/v1/config/import", &text) {
        Ok(a) if a.status == 413 => None,
        Ok(a) => Some(a),
        // Refused from its Content-Length, the body cut short.
        Err(e) if e.to_string().contains("Broken pipe") || e.to_string().contains("reset") => None,
        Err(e) => panic!("the import of {n} routes: {e:#}"),
    };
    let (a, first) = if let Some(a) = accepted {
        (a, t.elapsed())
    } else {
        n = BIG;
        while text.len() > 60 << 10 {
            n = n * 9 / 10;
            text = serde_json::to_string_pretty(&routes_config(n)).expect("JSON");
        }
        println!(
            "NOTE: a {BIG}-route import ({} bytes) is refused with 413 by this build's body \
             limit; importing {n} routes ({} bytes) instead",
            serde_json::to_string_pretty(&routes_config(BIG)).map_or(0, |t| t.len()),
            text.len()
        );
        let t = Instant::now();
        (admin.send("POST", "/api/v1/config/import", &text), t.elapsed())
    };
    assert_eq!(a.status, 200, "import: {}", a.text());
    let t = Instant::now();
    let deadline = Duration::from_mins(1);
    while kernel_routes(lab) < n {
        assert!(
            t.elapsed() < deadline,
            "{n} routes did not reach the kernel: {}",
            lab.log_tail(20)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let applied = t.elapsed();

    let t = Instant::now();
    let exported = admin.call("GET", "/api/v1/config/export", None);
    let export_time = t.elapsed();
    assert_eq!(exported.status, 200);
    let back: Value = serde_json::from_slice(&exported.body).expect("the export is JSON");
    assert_eq!(back["routes"].as_array().map(Vec::len), Some(n), "every route exported");
    let revisions = admin.revisions();
    let t = Instant::now();
    let a = admin.send("POST", "/api/v1/config/import", &exported.text());
    let again = t.elapsed();
    assert_eq!(a.status, 200, "the export imports back: {}", a.text());
    assert_eq!(admin.revisions(), revisions + 1);
    let now = admin.call("GET", "/api/v1/config", None).json()["config"].clone();
    assert_eq!(now, back, "the same configuration");
    let t = Instant::now();
    let a = admin.send("PUT", "/api/v1/config/candidate", &exported.text());
    let staged = t.elapsed();
    assert_eq!((a.status, a.json()["diff"].clone()), (200, json!([])), "{}", a.text());
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(kernel_routes(lab), n, "the kernel keeps exactly the configuration's routes");
    println!(
        "{n} routes: import {first:?}, in the kernel {applied:?} later; export ({} bytes) \
         {export_time:?}; imported back {again:?}; staged against itself (no changes) {staged:?}",
        exported.body.len()
    );
    let bound = Duration::from_secs(10);
    assert!(first < bound && again < bound && staged < bound, "each call within {bound:?}");
}
