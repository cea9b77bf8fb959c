//! The API driven through its warp filter, without a socket or a dataplane.

use std::{collections::HashMap, path::PathBuf, sync::Arc};

use serde_json::{Value, json};
use sluice_dataplane::PinDir;
use sluice_store::Store;
use warp::{
    http::{Method, header},
    hyper::body::Bytes,
};

use super::{
    Api, BODY_LIMIT, PLUGIN_BODY_LIMIT, ROUTES, RouteSpec, filter,
    http::{Answer, Request},
};
use crate::auth::random_hex;

/// An API over a store in a fresh directory, with no dataplane; removed on drop.
struct Scratch {
    dir: PathBuf,
    api: Arc<Api>,
}

impl Scratch {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "sluice-api-unit-{}-{}",
            std::process::id(),
            random_hex(6)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let store = Store::open(&dir.join("db")).unwrap();
        let api = Api::new(store, PinDir::new(dir.join("no-pins")), &dir).unwrap();
        Self { dir, api: Arc::new(api) }
    }

    /// Sets up the first administrator and logs in: (cookie, CSRF token).
    async fn admin(&self) -> (String, String) {
        let f = filter(&self.api);
        let token = std::fs::read_to_string(self.dir.join("setup-token")).unwrap();
        let setup = json!({"token": token, "username": "root",
                           "password": "a long enough one"});
        let res =
            warp::test::request().method("POST").path("/api/v1/setup").json(&setup).reply(&f).await;
        assert_eq!(res.status(), 201, "{:?}", res.body());
        let res = warp::test::request()
            .method("POST")
            .path("/api/v1/login")
            .json(&json!({"username": "root", "password": "a long enough one"}))
            .reply(&f)
            .await;
        assert_eq!(res.status(), 200, "{:?}", res.body());
        let cookie = res.headers()[header::SET_COOKIE].to_str().unwrap();
        let cookie = cookie.split(';').next().unwrap().to_owned();
        let body: Value = serde_json::from_slice(res.body()).unwrap();
        (cookie, body["csrf_token"].as_str().unwrap().to_owned())
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The type of a problem answer, `None` for a success.
fn problem_type(res: &warp::http::Response<Bytes>) -> Option<String> {
    if res.status().is_success() {
        return None;
    }
    assert_eq!(res.headers()[header::CONTENT_TYPE], "application/problem+json");
    let p: Value = serde_json::from_slice(res.body()).unwrap();
    assert_eq!(p["status"], res.status().as_u16(), "{p}");
    Some(p["type"].as_str().unwrap().to_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn every_listed_route_is_served_and_no_other() {
    let s = Scratch::new();
    let (cookie, csrf) = s.admin().await;
    let f = filter(&s.api);
    // Logout last: it ends the session the others use.
    let mut specs: Vec<&RouteSpec> = ROUTES.iter().collect();
    specs.sort_by_key(|r| r.path == "/logout");
    for spec in specs {
        let path = format!("/api/v1{}", spec.path).replace("{name}", "nobody").replace("{id}", "1");
        if spec.path == "/counters/stream" {
            // An endless body: the handler's answer is the stream.
            let req = Request {
                method: Method::GET,
                path: spec.path.to_owned(),
                query: HashMap::new(),
                bearer: None,
                cookie: Some(cookie.split_once('=').unwrap().1.to_owned()),
                csrf: None,
                from: "test".into(),
                body: Bytes::new(),
            };
            assert!(matches!(s.api.handle(&req), Ok(Answer::Stream)));
            continue;
        }
        let res = warp::test::request()
            .method(spec.method)
            .path(&path)
            .header("cookie", &cookie)
            .header("x-csrf-token", &csrf)
            .header("content-type", "application/json")
            .body("{}")
            .reply(&f)
            .await;
        // Handlers may refuse `{}` or a missing name, but the router knows the route.
        let kind = problem_type(&res);
        assert!(
            !matches!(
                kind.as_deref(),
                Some(
                    "urn:sluice:problem:not-found"
                        | "urn:sluice:problem:method"
                        | "urn:sluice:problem:not-implemented"
                        | "urn:sluice:problem:unauthenticated"
                        | "urn:sluice:problem:csrf"
                        | "urn:sluice:problem:forbidden"
                )
            ),
            "{} {path}: {kind:?} {:?}",
            spec.method,
            res.body()
        );
    }
    for (method, path, kind) in [
        ("GET", "/api/v1/nothing", "not-found"),
        ("GET", "/api/v2/health", "not-found"),
        ("PUT", "/api/v1/health", "method"),
        ("GET", "/api/v1/users/root/more", "not-found"),
    ] {
        let res = warp::test::request().method(method).path(path).reply(&f).await;
        let want = format!("urn:sluice:problem:{kind}");
        assert_eq!(problem_type(&res).as_deref(), Some(want.as_str()), "{method} {path}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sessions_need_their_csrf_token_and_bodies_their_limit() {
    let s = Scratch::new();
    let (cookie, csrf) = s.admin().await;
    let f = filter(&s.api);
    let user = json!({"name": "vera", "password": "long enough too", "role": "viewer"});
    let post = |csrf: Option<&str>, body: Vec<u8>| {
        let mut r = warp::test::request()
            .method("POST")
            .path("/api/v1/users")
            .header("cookie", &cookie)
            .header("content-type", "application/json")
            .body(body);
        if let Some(c) = csrf {
            r = r.header("x-csrf-token", c);
        }
        r
    };
    let body = serde_json::to_vec(&user).unwrap();
    let res = post(None, body.clone()).reply(&f).await;
    assert_eq!(problem_type(&res).as_deref(), Some("urn:sluice:problem:csrf"));
    let res = post(Some(&csrf[1..]), body.clone()).reply(&f).await;
    assert_eq!(problem_type(&res).as_deref(), Some("urn:sluice:problem:csrf"));
    let res = post(Some(&csrf), vec![b' '; BODY_LIMIT + 1]).reply(&f).await;
    assert_eq!(res.status(), 413);
    assert!(s.api.store.user("vera").unwrap().is_none(), "nothing written");
    let res = post(Some(&csrf), body.clone()).reply(&f).await;
    assert_eq!(res.status(), 201, "{:?}", res.body());
    let res = post(Some(&csrf), body).reply(&f).await;
    assert_eq!(problem_type(&res).as_deref(), Some("urn:sluice:problem:exists"));
    // A viewer may not make users.
    let res = warp::test::request()
        .method("POST")
        .path("/api/v1/login")
        .json(&json!({"username": "vera", "password": "long enough too"}))
        .reply(&f)
        .await;
    let vera = res.headers()[header::SET_COOKIE].to_str().unwrap().split(';').next().unwrap();
    let vera_csrf = serde_json::from_slice::<Value>(res.body()).unwrap()["csrf_token"].clone();
    let other = json!({"name": "walt", "password": "long enough three", "role": "admin"});
    let res = warp::test::request()
        .method("POST")
        .path("/api/v1/users")
        .header("cookie", vera)
        .header("x-csrf-token", vera_csrf.as_str().unwrap())
        .json(&other)
        .reply(&f)
        .await;
    assert_eq!(problem_type(&res).as_deref(), Some("urn:sluice:problem:forbidden"));
    assert!(s.api.store.user("walt").unwrap().is_none());
    // Every attempt at a change is audited with its outcome (but for the body refused
    // before anyone was known), newest first.
    let log = s.api.store.audit_log(20).unwrap();
    let users: Vec<(&str, &str)> = log
        .iter()
        .filter(|e| e.action == "POST /api/v1/users")
        .map(|e| (e.who.as_str(), e.outcome.get(..3).unwrap_or(&e.outcome)))
        .collect();
    let want = [("vera", "403"), ("root", "409"), ("root", "ok"), ("root", "403"), ("root", "403")];
    assert_eq!(users, want, "{log:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bodies_are_json_and_checked_before_they_are_read_and_nothing_is_cached() {
    let s = Scratch::new();
    let (cookie, csrf) = s.admin().await;
    let f = filter(&s.api);
    // A login from a form (text/plain: a cross-site form may send it) is refused.
    let res = warp::test::request()
        .method("POST")
        .path("/api/v1/login")
        .header("content-type", "text/plain")
        .body(r#"{"username": "root", "password": "correct horse battery"}"#)
        .reply(&f)
        .await;
    assert_eq!(res.status(), 415, "{:?}", res.body());
    // An anonymous upload is refused for who sends it, not for its size; an administrator's
    // too large one from its declared length.
    let big = vec![b' '; PLUGIN_BODY_LIMIT + 1];
    let res = warp::test::request()
        .method("POST")
        .path("/api/v1/plugins")
        .header("content-type", "application/json")
        .body(big.clone())
        .reply(&f)
        .await;
    assert_eq!(res.status(), 401);
    let res = warp::test::request()
        .method("POST")
        .path("/api/v1/plugins")
        .header("cookie", &cookie)
        .header("x-csrf-token", &csrf)
        .header("content-type", "application/json")
        .body(big)
        .reply(&f)
        .await;
    assert_eq!(res.status(), 413);
    assert_eq!(res.headers()[header::CACHE_CONTROL], "no-store");
    // The bearer scheme in any case.
    let body = json!({"name": "ci", "scope": "read"});
    let res = warp::test::request()
        .method("POST")
        .path("/api/v1/tokens")
        .header("cookie", &cookie)
        .header("x-csrf-token", &csrf)
        .json(&body)
        .reply(&f)
        .await;
    assert_eq!(res.status(), 201);
    let token = serde_json::from_slice::<Value>(res.body()).unwrap()["token"].clone();
    let res = warp::test::request()
        .path("/api/v1/me")
        .header("authorization", format!("bEaReR  {}", token.as_str().unwrap()))
        .reply(&f)
        .await;
    assert_eq!(res.status(), 200, "{:?}", res.body());
    // Anonymous refusals are counted, not logged.
    let refused = s.api.refused.lock().unwrap().clone();
    assert_eq!(refused.get(&("POST", "/plugins", 401)), Some(&1), "{refused:?}");
}

#[test]
fn a_restart_before_set_up_keeps_the_setup_token_the_operator_was_shown() {
    let first = Scratch::new();
    let shown = std::fs::read_to_string(first.dir.join("setup-token")).unwrap();
    let dir = first.dir.clone();
    // The daemon restarts (the store reopened, a new API over the same state directory).
    let Scratch { api, .. } = &first;
    let store = api.store.clone();
    let again = Api::new(store, PinDir::new(dir.join("no-pins")), &dir).unwrap();
    let kept = again.setup_token.lock().unwrap().clone();
    assert_eq!(kept.as_deref(), Some(shown.as_str()), "the token shown before the restart");
    // A damaged token file is replaced by a fresh token.
    std::fs::write(dir.join("setup-token"), "not a token").unwrap();
    let fresh = Api::new(again.store.clone(), PinDir::new(dir.join("no-pins")), &dir).unwrap();
    let token = fresh.setup_token.lock().unwrap().clone().unwrap();
    assert_ne!(token, shown);
    assert_eq!(std::fs::read_to_string(dir.join("setup-token")).unwrap(), token);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_plugin_entry_of_an_older_store_is_removed_and_an_import_of_one_refused() {
    let s = Scratch::new();
    let (cookie, csrf) = s.admin().await;
    let f = filter(&s.api);
    // What an older version let in: an imported entry without a manifest.
    let sha = "ab".repeat(32);
    let mut old = sluice_store::Config::default();
    old.plugins.insert(
        "ghost".into(),
        sluice_store::Plugin {
            wasm_sha256: sha.clone(),
            manifest: Value::Null,
            config: json!({}),
            enabled: true,
            allow_match_all: false,
        },
    );
    let author = sluice_store::Author::default();
    s.api.store.commit_change(&old, &author, None).unwrap();
    let send = |method: &str, path: &str, body: String| {
        warp::test::request()
            .method(method)
            .path(path)
            .header("cookie", &cookie)
            .header("x-csrf-token", &csrf)
            .header("content-type", "application/json")
            .body(body)
    };

    // Imported again (as a new entry, over an empty configuration), it is refused whole.
    s.api.store.commit_change(&sluice_store::Config::default(), &author, None).unwrap();
    let revisions = s.api.store.history().unwrap().len();
    let text = serde_json::to_string_pretty(&old).unwrap();
    let res = send("POST", "/api/v1/config/import", text.clone()).reply(&f).await;
    assert_eq!(res.status(), 422, "{:?}", res.body());
    let p: Value = serde_json::from_slice(res.body()).unwrap();
    let fields: Vec<&str> =
        p["errors"].as_array().unwrap().iter().filter_map(|e| e["field"].as_str()).collect();
    assert!(fields.contains(&"plugins.ghost.manifest"), "{p}");
    assert!(fields.contains(&"plugins.ghost.wasm_sha256"), "{p}");
    let res = send("PUT", "/api/v1/config/candidate", text).reply(&f).await;
    assert_eq!(res.status(), 422, "{:?}", res.body());
    assert_eq!(s.api.store.history().unwrap().len(), revisions, "nothing committed");
    assert!(s.api.store.candidate().unwrap().plugins.is_empty(), "nothing staged");

    // Already in the running configuration, it is listed and removed.
    s.api.store.commit_change(&old, &author, None).unwrap();
    let res = send("GET", "/api/v1/plugins", String::new()).reply(&f).await;
    let list: Value = serde_json::from_slice(res.body()).unwrap();
    assert_eq!(list[0]["name"], "ghost", "{list}");
    let res = send("DELETE", "/api/v1/plugins/ghost", String::new()).reply(&f).await;
    assert_eq!(res.status(), 200, "{:?}", res.body());
    assert!(s.api.store.config().unwrap().plugins.is_empty());
    let res = send("DELETE", "/api/v1/plugins/ghost", String::new()).reply(&f).await;
    assert_eq!(res.status(), 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn bgp_passwords_are_shown_redacted_and_only_to_an_administrator_who_asks() {
    let s = Scratch::new();
    let (cookie, csrf) = s.admin().await;
    let f = filter(&s.api);
    let protocols = serde_json::from_value(json!({"bgp": {"up1": {
        "neighbor": "10.0.0.2", "remote_as": 65001, "local_as": 65000, "password": "s3cret"}}}))
    .unwrap();
    let config = sluice_store::Config { protocols, ..Default::default() };
    s.api.store.commit_change(&config, &sluice_store::Author::default(), None).unwrap();
    let res = warp::test::request()
        .method("POST")
        .path("/api/v1/tokens")
        .header("cookie", &cookie)
        .header("x-csrf-token", &csrf)
        .json(&json!({"name": "viewer", "scope": "read"}))
        .reply(&f)
        .await;
    assert_eq!(res.status(), 201);
    let token = serde_json::from_slice::<Value>(res.body()).unwrap()["token"].clone();
    let viewer = format!("Bearer {}", token.as_str().unwrap());
    let get = |path: &str, auth: Option<&str>| {
        let r = warp::test::request().path(path);
        match auth {
            Some(a) => r.header("authorization", a),
            None => r.header("cookie", &cookie),
        }
    };
    for path in ["/api/v1/config", "/api/v1/config/export", "/api/v1/config/candidate"] {
        for auth in [None, Some(viewer.as_str())] {
            let res = get(path, auth).reply(&f).await;
            let text = String::from_utf8_lossy(res.body()).into_owned();
            assert_eq!(res.status(), 200, "{path}: {text}");
            assert!(!text.contains("s3cret") && text.contains("(redacted)"), "{path}: {text}");
        }
        let res = get(&format!("{path}?secrets=true"), Some(&viewer)).reply(&f).await;
        assert_eq!(res.status(), 403, "{path}?secrets=true for a viewer");
        let res = get(&format!("{path}?secrets=true"), None).reply(&f).await;
        assert!(String::from_utf8_lossy(res.body()).contains("s3cret"), "{path} for an admin");
    }
    let audit = s.api.store.audit_log(50).unwrap();
    let text = serde_json::to_string(&audit).unwrap();
    assert!(text.contains("read secrets") && !text.contains("s3cret"), "{text}");
}
