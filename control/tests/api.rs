//! The REST API of a real daemon (`--listen`, `--state-dir`) in a namespace lab, over HTTPS with
//! curl from inside the router namespace: every route refuses the unauthenticated, viewers
//! where an administrator is needed and a bad CSRF token; bad input gets a 4xx problem naming
//! the field and writes nothing; the setup token works once; logins are throttled; tokens are
//! scoped and revocable; static routes reach the kernel, and an unconfirmed commit rolls back;
//! the top talkers name the source that forwards the most.
//! Needs root, like the other namespace tests.

#[allow(dead_code, reason = "shared by the namespace test crates, which use different parts")]
mod common;

use std::{
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use common::{SLUICE, Topology, ping_briefly, privileged, wait_until};
use serde_json::{Value, json};
use sluice::plugins::{Manifest, Table};
use sluice_testbed::{lab::Subnet, netns};

const BASE: &str = "https://127.0.0.1:8443";

/// A state directory, removed on drop.
struct StateDir(PathBuf);

impl Drop for StateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// How a request authenticates.
#[derive(Clone, Copy)]
enum Auth<'a> {
    None,
    Bearer(&'a str),
    /// The cookie jar of a login, and the CSRF token sent (which may be wrong).
    Session(&'a Path, &'a str),
}

struct Lab {
    t: Topology,
    state: StateDir,
}

struct Answer {
    status: u16,
    body: Value,
    headers: String,
}

impl Lab {
    fn new() -> Self {
        let state = StateDir(std::env::temp_dir().join(netns::unique_name("sluice-api-")));
        std::fs::create_dir_all(&state.0).expect("state directory");
        // The publisher key of the plugins these tests sign.
        let publisher = signed(&json!({"name": "x", "version": "0", "tables": [], "sha256": "0"}));
        let key = publisher["publisher"].as_str().expect("a publisher key");
        std::fs::write(state.0.join("trusted-keys"), format!("{key}\n")).expect("trusted keys");
        let t = Topology::new(&[("c1", 1), ("srv", 3)]);
        let mut lab = Self { t, state };
        lab.start();
        lab
    }

    fn start(&mut self) {
        let dir = self.state.0.to_str().expect("UTF-8 path").to_owned();
        let keys = format!("{dir}/trusted-keys");
        let args = ["--state-dir", &dir, "--listen", "127.0.0.1:8443", "--trusted-keys", &keys];
        self.t.start_daemon_with(&args);
        wait_until("the API answers", Duration::from_secs(10), || {
            (self.call("GET", "/api/v1/health", Auth::None, None).status == 200).then_some(())
        });
    }

    /// One request with curl in the router namespace.
    fn call(&self, method: &str, path: &str, auth: Auth<'_>, body: Option<&str>) -> Answer {
        let url = format!("{BASE}{path}");
        let dump = self.state.0.join(netns::unique_name("headers-"));
        let dump_path = dump.to_str().expect("UTF-8").to_owned();
        let mut args: Vec<String> = ["-sk", "-X", method, "-D", &dump_path, "-w", "\n%{http_code}"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        match auth {
            Auth::None => {}
            Auth::Bearer(t) => args.extend(["-H".into(), format!("Authorization: Bearer {t}")]),
            Auth::Session(jar, csrf) => {
                let jar = jar.to_str().expect("UTF-8").to_owned();
                args.extend(["-b".into(), jar.clone(), "-c".into(), jar]);
                args.extend(["-H".into(), format!("X-CSRF-Token: {csrf}")]);
            }
        }
        if let Some(b) = body {
            // From a file: a plugin upload is larger than one argument may be (128 KiB).
            let file = self.state.0.join(netns::unique_name("body-"));
            std::fs::write(&file, b).expect("write the request body");
            args.extend(["-H".into(), "Content-Type: application/json".into()]);
            args.extend(["--data-binary".into(), format!("@{}", file.display())]);
        }
        args.push(url);
        let curl_args: Vec<&str> = args.iter().map(String::as_str).collect();
        // curl fails (status 0 here) while nothing listens yet.
        let Ok(out) = self.t.router.run("curl", &curl_args) else {
            return Answer { status: 0, body: Value::Null, headers: String::new() };
        };
        let (text, code) = out.rsplit_once('\n').expect("a status line");
        let headers = std::fs::read_to_string(&dump).unwrap_or_default();
        Answer {
            status: code.trim().parse().expect("a status"),
            body: serde_json::from_str(text).unwrap_or(Value::String(text.to_owned())),
            headers,
        }
    }

    fn setup_token(&self) -> String {
        std::fs::read_to_string(self.state.0.join("setup-token")).expect("the setup token file")
    }

    /// A lab with its first administrator's session (cookie jar, CSRF token); `None` where the
    /// namespace tests cannot run.
    fn with_admin() -> Option<(Self, PathBuf, String)> {
        if !privileged() {
            return None;
        }
        let lab = Self::new();
        let (jar, csrf) = lab.admin_session();
        Some((lab, jar, csrf))
    }

    /// Sets up the first administrator and returns a session (cookie jar, CSRF token).
    fn admin_session(&self) -> (PathBuf, String) {
        let body = json!({"token": self.setup_token(), "username": "admin",
                          "password": "correct horse battery"});
        let a = self.call("POST", "/api/v1/setup", Auth::None, Some(&body.to_string()));
        assert_eq!(a.status, 201, "{}", a.body);
        self.login("admin", "correct horse battery")
    }

    fn login(&self, user: &str, password: &str) -> (PathBuf, String) {
        let jar = self.state.0.join(netns::unique_name("jar-"));
        let body = json!({"username": user, "password": password}).to_string();
        let a = self.call("POST", "/api/v1/login", Auth::Session(&jar, ""), Some(&body));
        assert_eq!(a.status, 200, "login as {user}: {}", a.body);
        let cookie = a.headers.to_ascii_lowercase();
        assert!(
            cookie.contains("httponly")
                && cookie.contains("secure")
                && cookie.contains("samesite=strict"),
            "the session cookie: {}",
            a.headers
        );
        (jar, a.body["csrf_token"].as_str().expect("a CSRF token").to_owned())
    }

    fn token(&self, admin: Auth<'_>, scope: &str) -> String {
        let body = json!({"name": format!("{scope} token"), "scope": scope}).to_string();
        let a = self.call("POST", "/api/v1/tokens", admin, Some(&body));
        assert_eq!(a.status, 201, "{}", a.body);
        a.body["token"].as_str().expect("the token").to_owned()
    }

    fn running(&self, auth: Auth<'_>) -> Value {
        self.call("GET", "/api/v1/config", auth, None).body
    }

    /// `sluice ARGS` in the router namespace, against the API with `token`, checking the
    /// certificate against the router's authority: (success, stdout and stderr).
    fn cli(&self, token: &str, args: &[&str]) -> (bool, String) {
        self.cli_env(token, args, &[])
    }

    /// As `cli`, with environment variables.
    fn cli_env(&self, token: &str, args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
        let ca = self.state.0.join("tls/ca.pem");
        let out = self
            .t
            .router
            .command(SLUICE)
            .args(args)
            .envs(env.iter().copied())
            .args(["--api", BASE, "--token", token, "--ca", ca.to_str().expect("UTF-8")])
            .output()
            .expect("run sluice");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    fn kernel_routes(&self) -> String {
        self.t.router.run("ip", &["route", "show", "proto", "238"]).expect("ip route")
    }
}

/// Every route of the `OpenAPI` document, its parameters filled in.
fn documented(lab: &Lab, auth: Auth<'_>) -> Vec<(String, String, String)> {
    let doc = lab.call("GET", "/api/v1/openapi.json", auth, None).body;
    let mut out = Vec::new();
    for (path, methods) in doc["paths"].as_object().expect("paths") {
        for (method, op) in methods.as_object().expect("methods") {
            let role = op["x-sluice-role"].as_str().expect("a role").to_owned();
            let path = path.replace("{name}", "nobody").replace("{id}", "1");
            out.push((method.to_uppercase(), path, role));
        }
    }
    assert!(out.len() > 20, "the document lists the routes: {out:?}");
    out
}

#[test]
fn every_route_refuses_the_unauthenticated_viewers_where_admin_is_needed_and_bad_csrf() {
    let Some((lab, jar, csrf)) = Lab::with_admin() else { return };
    let admin = Auth::Session(&jar, &csrf);
    let routes = documented(&lab, admin);
    let viewer = lab.token(admin, "read");
    let body = Some("{}");
    for (method, path, role) in &routes {
        if role == "anyone" {
            continue;
        }
        let a = lab.call(method, path, Auth::None, body);
        assert_eq!(a.status, 401, "{method} {path} without credentials: {}", a.body);
        assert_eq!(a.body["status"], 401, "a problem: {}", a.body);
        if role == "admin" {
            let a = lab.call(method, path, Auth::Bearer(&viewer), body);
            assert_eq!(a.status, 403, "{method} {path} as a viewer: {}", a.body);
        }
        if method != "GET" {
            let a = lab.call(method, path, Auth::Session(&jar, "not-the-token"), body);
            assert_eq!(a.status, 403, "{method} {path} with a bad CSRF token: {}", a.body);
            assert_eq!(a.body["type"], "urn:sluice:problem:csrf", "{}", a.body);
        }
    }
    // A revoked token is refused; /metrics needs a token.
    let tokens = lab.call("GET", "/api/v1/tokens", admin, None).body;
    let id = tokens[0]["id"].as_str().expect("an id").to_owned();
    assert_eq!(lab.call("DELETE", &format!("/api/v1/tokens/{id}"), admin, None).status, 200);
    assert_eq!(lab.call("GET", "/api/v1/me", Auth::Bearer(&viewer), None).status, 401);
    assert_eq!(lab.call("GET", "/metrics", Auth::None, None).status, 401);
    let reader = lab.token(admin, "read");
    let m = lab.call("GET", "/metrics", Auth::Bearer(&reader), None);
    assert_eq!(m.status, 200);
    assert!(m.body.as_str().is_some_and(|t| t.contains("sluice_packets_total")), "{}", m.body);
}

#[test]
fn bad_input_gets_a_problem_naming_the_field_and_writes_nothing() {
    let Some((lab, jar, csrf)) = Lab::with_admin() else { return };
    let admin = Auth::Session(&jar, &csrf);
    let gw = Subnet(3).host_v4();
    let good = json!({"prefix": "10.20.0.0/16", "via": gw}).to_string();
    assert_eq!(lab.call("POST", "/api/v1/routes/static", admin, Some(&good)).status, 201);
    let before = lab.running(admin);
    let revisions = lab.call("GET", "/api/v1/config/revisions", admin, None).body;
    let big = format!("{{\"prefix\": \"{}\"}}", "1".repeat(70_000));
    let cases: Vec<(String, u16, &str)> = vec![
        ("{\"prefix\": ".into(), 400, "body"),
        (json!({"prefix": "10.1.0.0/16", "via": gw, "colour": "red"}).to_string(), 422, "colour"),
        (json!({"prefix": "10.1.0.300/16", "via": gw}).to_string(), 422, "prefix"),
        (json!({"prefix": "10.1.2.3/16", "via": gw}).to_string(), 422, "prefix"),
        (json!({"prefix": "10.1.0.0/33", "via": gw}).to_string(), 422, "prefix"),
        (json!({"prefix": "2001:db8::/129", "dev": "r-srv"}).to_string(), 422, "prefix"),
        (json!({"prefix": "10.1.0.0/16", "dev": "nosuch0"}).to_string(), 422, "dev"),
        (json!({"prefix": "10.1.0.0/16", "dev": "bad/name"}).to_string(), 422, "dev"),
        (json!({"prefix": "10.1.0.0/16", "dev": "a-name-far-too-long"}).to_string(), 422, "dev"),
        (good.clone(), 409, ""),
        (big, 413, "body"),
    ];
    for (body, status, field) in cases {
        let a = lab.call("POST", "/api/v1/routes/static", admin, Some(&body));
        let shown = body.chars().take(80).collect::<String>();
        assert_eq!(a.status, status, "{shown}: {}", a.body);
        assert!(a.headers.contains("application/problem+json"), "{shown}: {}", a.headers);
        if !field.is_empty() {
            let named =
                a.body["errors"].as_array().is_some_and(|e| e.iter().any(|e| e["field"] == field));
            assert!(named, "{shown}: the problem names {field}: {}", a.body);
        }
    }
    assert_eq!(lab.running(admin), before, "nothing was written");
    assert_eq!(lab.call("GET", "/api/v1/config/revisions", admin, None).body, revisions);
    // A candidate with a bad field is refused whole too.
    let bad = json!({"routes": [{"prefix": "10.9.0.1/16", "via": gw}]}).to_string();
    let a = lab.call("PUT", "/api/v1/config/candidate", admin, Some(&bad));
    assert_eq!((a.status, a.body["errors"][0]["field"].as_str()), (422, Some("routes[0].prefix")));
    assert_eq!(lab.call("GET", "/api/v1/config/diff", admin, None).body, json!([]));
}

#[test]
fn setup_works_once_logins_are_throttled_and_changes_are_audited() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    let token = lab.setup_token();
    let wrong =
        json!({"token": "0".repeat(64), "username": "admin", "password": "correct horse battery"});
    assert_eq!(lab.call("POST", "/api/v1/setup", Auth::None, Some(&wrong.to_string())).status, 403);
    let (jar, csrf) = lab.admin_session();
    let admin = Auth::Session(&jar, &csrf);
    let again = json!({"token": token, "username": "eve", "password": "correct horse battery"});
    assert_eq!(lab.call("POST", "/api/v1/setup", Auth::None, Some(&again.to_string())).status, 409);
    assert!(!lab.state.0.join("setup-token").exists(), "the spent token's file is gone");

    let viewer = json!({"name": "olga", "password": "another long one", "role": "viewer"});
    assert_eq!(lab.call("POST", "/api/v1/users", admin, Some(&viewer.to_string())).status, 201);
    let short = json!({"name": "pat", "password": "short", "role": "viewer"});
    let a = lab.call("POST", "/api/v1/users", admin, Some(&short.to_string()));
    assert_eq!((a.status, a.body["errors"][0]["field"].as_str()), (422, Some("password")));
    let (vjar, vcsrf) = lab.login("olga", "another long one");
    let a = lab.call(
        "POST",
        "/api/v1/tokens",
        Auth::Session(&vjar, &vcsrf),
        Some(r#"{"name": "x", "scope": "admin"}"#),
    );
    assert_eq!(a.status, 422, "a viewer makes no admin token: {}", a.body);

    let bad = json!({"username": "olga", "password": "wrong password!"}).to_string();
    let jar2 = lab.state.0.join("jar-throttle");
    let login =
        |body: &str| lab.call("POST", "/api/v1/login", Auth::Session(&jar2, ""), Some(body));
    let statuses: Vec<u16> = (0..5).map(|_| login(&bad).status).collect();
    assert_eq!(&statuses[..], &[401; 5], "five failures are free: {statuses:?}");
    // Each failure past the free ones doubles the lockout (1, 2, 4, then 8 s). Requests inside a
    // lockout are refused unchecked; one after it is checked (and fails again). Waiting out
    // each lockout makes the last one 8 s long, so that the checks below fall inside it even on
    // a loaded machine, where a request can take longer than the first lockout.
    let mut refused = 0;
    let started = Instant::now();
    for _ in 0..3 {
        loop {
            let a = login(&bad);
            if a.status == 401 {
                break;
            }
            assert_eq!(a.status, 429, "inside a lockout: {}", a.body);
            refused += 1;
            let wait = retry_after(&a.headers).expect("a 429 says when to retry");
            assert!((1..=8).contains(&wait), "Retry-After {wait}");
            thread::sleep(Duration::from_secs(wait));
            assert!(started.elapsed() < Duration::from_mins(1), "the lockouts do not end");
        }
    }
    assert!(refused >= 3, "each lockout refused at least one request: {refused}");
    let a = login(&bad);
    assert_eq!(a.status, 429, "throttled after eight failures: {}", a.body);
    let good = json!({"username": "olga", "password": "another long one"}).to_string();
    let a = login(&good);
    assert_eq!(a.status, 429, "even the right password waits: {}", a.body);
    assert!(retry_after(&a.headers).is_some(), "{}", a.headers);

    let audit = lab.call("GET", "/api/v1/audit", admin, None).body;
    let actions: Vec<&str> =
        audit.as_array().expect("entries").iter().filter_map(|e| e["action"].as_str()).collect();
    assert!(actions.contains(&"POST /api/v1/users"), "{actions:?}");
    assert!(actions.contains(&"POST /api/v1/setup"), "{actions:?}");
    assert!(audit[0]["from"] == "127.0.0.1", "{}", audit[0]);
}

#[test]
fn static_routes_reach_the_kernel_and_an_unconfirmed_commit_rolls_back() {
    let Some((lab, jar, csrf)) = Lab::with_admin() else { return };
    let admin = Auth::Session(&jar, &csrf);
    let gw = Subnet(3).host_v4();
    let route = json!({"prefix": "10.30.0.0/16", "via": gw}).to_string();
    assert_eq!(lab.call("POST", "/api/v1/routes/static", admin, Some(&route)).status, 201);
    let first = lab.running(admin)["revision"].as_u64().expect("a running revision");
    wait_until("10.30.0.0/16 in the kernel", Duration::from_secs(5), || {
        lab.kernel_routes().contains("10.30.0.0/16").then_some(())
    });
    wait_until("and in the dataplane", Duration::from_secs(5), || lab.t.route("10.30.0.0/16"));
    let routes = lab.call("GET", "/api/v1/routes", admin, None).body;
    assert!(routes.to_string().contains("10.30.0.0/16"), "GET /routes: {routes}");

    // Commit-confirm through the candidate, left unconfirmed: it rolls back.
    let mut config = lab.running(admin)["config"].clone();
    config["routes"]
        .as_array_mut()
        .expect("routes")
        .push(json!({"prefix": "10.31.0.0/16", "via": gw}));
    assert_eq!(
        lab.call("PUT", "/api/v1/config/candidate", admin, Some(&config.to_string())).status,
        200
    );
    let a = lab.call(
        "POST",
        "/api/v1/config/commit",
        admin,
        Some(r#"{"message": "try", "confirm_seconds": 10}"#),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    wait_until("10.31.0.0/16 in the kernel", Duration::from_secs(5), || {
        lab.kernel_routes().contains("10.31.0.0/16").then_some(())
    });
    wait_until("the unconfirmed commit rolled back", Duration::from_secs(20), || {
        (!lab.kernel_routes().contains("10.31.0.0/16")).then_some(())
    });
    assert!(lab.kernel_routes().contains("10.30.0.0/16"), "the confirmed route stays");

    cli_routes_and_users(&lab, admin, &gw);

    // A route removed by the query; a bad one named.
    let a = lab.call("DELETE", "/api/v1/routes/static?prefix=10.30.0.0/33", admin, None);
    assert_eq!((a.status, a.body["errors"][0]["field"].as_str()), (422, Some("prefix")));
    let a = lab.call("DELETE", "/api/v1/routes/static?prefix=10.30.0.0/16", admin, None);
    assert_eq!(a.status, 200, "{}", a.body);
    wait_until("10.30.0.0/16 gone from the kernel", Duration::from_secs(5), || {
        (!lab.kernel_routes().contains("10.30.0.0/16")).then_some(())
    });
    let del = json!({"prefix": "10.32.0.0/16"}).to_string();
    assert_eq!(lab.call("DELETE", "/api/v1/routes/static", admin, Some(&del)).status, 200);
    wait_until("10.32.0.0/16 gone from the kernel", Duration::from_secs(5), || {
        (!lab.kernel_routes().contains("10.32.0.0/16")).then_some(())
    });

    // Rolling back to the first revision puts its route back in the kernel.
    let back = json!({"revision": first, "message": "back to the first"}).to_string();
    let a = lab.call("POST", "/api/v1/config/rollback", admin, Some(&back));
    assert_eq!(a.status, 200, "{}", a.body);
    wait_until("10.30.0.0/16 back in the kernel", Duration::from_secs(5), || {
        lab.kernel_routes().contains("10.30.0.0/16").then_some(())
    });
    assert!(!lab.kernel_routes().contains("10.32.0.0/16"), "{}", lab.kernel_routes());
    let audit = lab.call("GET", "/api/v1/audit?limit=1", admin, None).body;
    assert_eq!(audit.as_array().map(Vec::len), Some(1), "{audit}");
    assert_eq!(audit[0]["action"], "POST /api/v1/config/rollback", "newest first: {audit}");
}

/// The CLI speaks to the same API, checking the router's certificate: it adds 10.32.0.0/16
/// through `gw`, and adds and removes a user.
fn cli_routes_and_users(lab: &Lab, admin: Auth<'_>, gw: &str) {
    let token = lab.token(admin, "admin");
    let (ok, out) = lab.cli(&token, &["route", "static", "add", "10.32.0.0/16", "--via", gw]);
    assert!(ok, "{out}");
    let (ok, out) = lab.cli(&token, &["route", "static", "list"]);
    assert!(ok && out.contains("10.32.0.0/16"), "{out}");
    wait_until("10.32.0.0/16 in the kernel", Duration::from_secs(5), || {
        lab.kernel_routes().contains("10.32.0.0/16").then_some(())
    });
    let (ok, out) = lab.cli(&token, &["route", "static", "add", "10.33.1.0/16", "--via", gw]);
    assert!(
        !ok && out.contains("422") && out.contains("prefix: 10.33.1.0/16 has host bits"),
        "{out}"
    );
    let (ok, out) = lab.cli(&token, &["config", "history"]);
    assert!(ok && out.contains("add route 10.32.0.0/16"), "{out}");
    let (ok, out) = lab.cli("sluice_not_a_token", &["route", "static", "list"]);
    assert!(!ok && out.contains("401"), "{out}");
    // Without a way to check the certificate, the CLI refuses to talk.
    let plain =
        lab.t.router.command(SLUICE).args(["route", "static", "list", "--token", &token]).output();
    let plain = plain.expect("run sluice");
    assert!(!plain.status.success(), "no --ca, no --insecure: refused");
    // The certificate itself may be pinned instead of the authority; other authorities fail.
    let with_ca = |ca: &str| {
        let out = lab
            .t
            .router
            .command(SLUICE)
            .args(["route", "static", "list", "--api", BASE, "--token", &token, "--ca", ca])
            .output()
            .expect("run sluice");
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let cert = lab.state.0.join("tls/cert.pem");
    let (ok, err) = with_ca(cert.to_str().expect("UTF-8"));
    assert!(ok, "pinned cert.pem: {err}");
    let (ok, err) = with_ca("/etc/ssl/certs/ca-certificates.crt");
    assert!(!ok, "the public authorities do not vouch for the router: {err}");

    // Users through the CLI (the password from the environment).
    let pw = [("SLUICE_PASSWORD", "a viewer's long password")];
    let (ok, out) = lab.cli_env(&token, &["user", "add", "vic", "--role", "viewer"], &pw);
    assert!(ok, "{out}");
    let (ok, out) = lab.cli(&token, &["user", "list"]);
    assert!(ok && out.contains("vic") && out.contains("viewer"), "{out}");
    lab.login("vic", "a viewer's long password");
    let (ok, out) = lab.cli(&token, &["user", "remove", "vic"]);
    assert!(ok, "{out}");
    let (ok, out) = lab.cli(&token, &["user", "list"]);
    assert!(ok && !out.contains("vic"), "{out}");
}

#[test]
fn counters_stream_every_second_and_interfaces_show_the_xdp_mode() {
    let Some((lab, jar, csrf)) = Lab::with_admin() else { return };
    let reader = lab.token(Auth::Session(&jar, &csrf), "read");
    let ifaces = lab.call("GET", "/api/v1/interfaces", Auth::Bearer(&reader), None).body;
    let attached: Vec<&Value> =
        ifaces.as_array().expect("a list").iter().filter(|i| i["xdp_mode"].is_string()).collect();
    assert!(!attached.is_empty(), "attached interfaces show their XDP mode: {ifaces}");
    let counters = lab.call("GET", "/api/v1/counters", Auth::Bearer(&reader), None);
    assert_eq!(counters.status, 200, "{}", counters.body);
    let tables = lab.call("GET", "/api/v1/lookup-tables", Auth::Bearer(&reader), None);
    assert_eq!(tables.status, 200, "{}", tables.body);
    assert_eq!(tables.body["ipv4"]["groups_max"], 16_384, "{}", tables.body);
    assert!(tables.body["ipv6"]["bytes"].as_u64().is_some_and(|b| b > 0), "{}", tables.body);
    // curl ends the endless stream after 3.5 s (exit status 28): at least three events.
    let out = lab
        .t
        .router
        .command("curl")
        .args(["-skN", "--max-time", "3.5", "-H", &format!("Authorization: Bearer {reader}")])
        .arg(format!("{BASE}/api/v1/counters/stream"))
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout);
    let events = text.lines().filter(|l| l.starts_with("event:") && l.contains("counters")).count();
    assert!(events >= 3, "{events} events in 3.5 s: {text}");
    let data = text.lines().find_map(|l| l.strip_prefix("data:")).expect("a data line");
    let snapshot: Value = serde_json::from_str(data.trim()).expect("JSON counters");
    assert!(snapshot["interfaces"].is_array(), "{snapshot}");
}

#[test]
fn top_talkers_rank_the_sources_forwarding_the_most() {
    let Some((lab, jar, csrf)) = Lab::with_admin() else { return };
    let reader = lab.token(Auth::Session(&jar, &csrf), "read");
    let top = |query: &str| {
        lab.call("GET", &format!("/api/v1/top-talkers{query}"), Auth::Bearer(&reader), None)
    };
    let first = top("");
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(
        (first.body["sample_every"].as_u64(), first.body["window_s"].as_f64()),
        (Some(64), Some(0.0))
    );
    let server = Subnet(3).host_v4();
    wait_until("c1 reaches the server", Duration::from_secs(10), || {
        (ping_briefly(lab.t.ns("c1"), &server, 2).received > 0).then_some(())
    });
    // 3,000 datagrams from c1 (about 47 sampled), a few echo replies from the server.
    let target = format!("{server}:9").parse().expect("an address");
    for _ in 0..6 {
        lab.t.send_udp_flows("c1", target, 500);
    }
    thread::sleep(Duration::from_millis(600));
    let a = top("?limit=1");
    assert_eq!(a.status, 200, "{}", a.body);
    let talkers = a.body["talkers"].as_array().expect("talkers");
    assert_eq!(talkers.len(), 1, "?limit=1: {}", a.body);
    assert_eq!(talkers[0]["address"], Subnet(1).host_v4(), "c1 forwards the most: {}", a.body);
    let pps = talkers[0]["packets_per_s"].as_f64().expect("a rate");
    let bps = talkers[0]["bits_per_s"].as_f64().expect("a rate");
    assert!(pps > 0.0 && bps >= pps * 8.0 * 42.0, "frames of 42 bytes or more: {}", a.body);
    assert!(a.body["window_s"].as_f64().is_some_and(|w| w > 0.5), "{}", a.body);
    let a = top("?limit=0");
    assert_eq!((a.status, a.body["errors"][0]["field"].as_str()), (422, Some("limit")));
}

#[test]
fn ports_attached_and_detached_through_the_api_are_routed_and_kept_in_the_configuration() {
    let Some((lab, jar, csrf)) = Lab::with_admin() else { return };
    let admin = Auth::Session(&jar, &csrf);
    // A spare port in the router namespace: one end of a veth pair, not in --attach.
    let spare = netns::unique_name("slx");
    let peer = format!("{spare}p");
    lab.t.router.ip(&["link", "add", &spare, "type", "veth", "peer", "name", &peer]).expect("veth");
    let port = |name: &str| {
        let list = lab.call("GET", "/api/v1/interfaces", admin, None).body;
        let found = list.as_array().expect("a list").iter().find(|i| i["name"] == name).cloned();
        found.unwrap_or_else(|| panic!("{name} in {list}"))
    };
    assert_eq!(port(&spare)["xdp_mode"], Value::Null);
    assert_eq!(port("r-c1")["routed"], "fixed");

    let path = |name: &str, what: &str| format!("/api/v1/interfaces/{name}/{what}");
    let a = lab.call("POST", &path(&spare, "attach"), admin, Some(r#"{"xdp_mode": "native"}"#));
    assert_eq!(a.status, 200, "{}", a.body);
    wait_until("XDP on the spare port", Duration::from_secs(10), || {
        (port(&spare)["xdp_mode"] == "native").then_some(())
    });
    assert_eq!(port(&spare)["routed"], "configured");
    let link = lab.t.router.ip(&["-d", "link", "show", "dev", &spare]).expect("ip link");
    assert!(link.contains("prog/xdp"), "the kernel shows the program: {link}");
    let config = lab.call("GET", "/api/v1/config", admin, None).body;
    assert_eq!(config["config"]["interfaces"][&spare]["attach"], true, "{config}");

    // What cannot be done says why.
    let fixed = lab.call("POST", &path("r-c1", "detach"), admin, None);
    assert_eq!(fixed.status, 409, "{}", fixed.body);
    assert_eq!(fixed.body["type"], "urn:sluice:problem:fixed-port", "{}", fixed.body);
    let none = lab.call("POST", &path("nosuch0", "attach"), admin, None);
    assert_eq!(none.status, 404, "{}", none.body);
    let bad = lab.call("POST", &path(&spare, "attach"), admin, Some(r#"{"xdp_mode": "turbo"}"#));
    assert_eq!(bad.status, 422, "{}", bad.body);
    assert_eq!(bad.body["errors"][0]["field"], "xdp_mode", "{}", bad.body);

    let d = lab.call("POST", &path(&spare, "detach"), admin, None);
    assert_eq!(d.status, 200, "{}", d.body);
    wait_until("XDP off the spare port", Duration::from_secs(10), || {
        port(&spare)["xdp_mode"].is_null().then_some(())
    });
    let link = lab.t.router.ip(&["-d", "link", "show", "dev", &spare]).expect("ip link");
    assert!(!link.contains("prog/xdp"), "the kernel has no program on it: {link}");
    assert_eq!(lab.call("POST", &path(&spare, "detach"), admin, None).status, 404);
    let audit = lab.call("GET", "/api/v1/audit", admin, None).body.to_string();
    assert!(audit.contains(&format!("POST /api/v1/interfaces/{spare}/attach")), "{audit}");
    let history = lab.call("GET", "/api/v1/config/revisions", admin, None).body.to_string();
    assert!(
        history.contains(&format!("attach {spare}"))
            && history.contains(&format!("detach {spare}")),
        "both changes are revisions: {history}"
    );
}

#[test]
fn routes_are_searched_and_cut_on_the_router_and_say_where_they_came_from() {
    let Some((lab, jar, csrf)) = Lab::with_admin() else { return };
    let admin = Auth::Session(&jar, &csrf);
    let gw = Subnet(3).host_v4();
    // A routing daemon's route (BIRD's protocol number) and one of the configuration.
    lab.t.router.ip(&["route", "add", "10.77.0.0/24", "via", &gw, "proto", "bird"]).expect("route");
    let body = json!({"prefix": "10.78.0.0/24", "via": gw}).to_string();
    assert_eq!(lab.call("POST", "/api/v1/routes/static", admin, Some(&body)).status, 201);
    let find = |q: &str| {
        wait_until(&format!("{q} in the dataplane"), Duration::from_secs(10), || {
            let a = lab.call("GET", &format!("/api/v1/routes?q={q}&limit=5"), admin, None);
            (a.status == 200 && a.body["matched"] == 1).then_some(a.body)
        })
    };
    let bird = find("10.77.0.0");
    assert_eq!(bird["routes"][0]["origin"], "bird", "{bird}");
    assert_eq!(bird["routes"][0]["protocol"], 12, "{bird}");
    let configured = find("10.78.0.0");
    assert_eq!(configured["routes"][0]["origin"], "static", "{configured}");
    let all = lab.call("GET", "/api/v1/routes?limit=2", admin, None).body;
    assert_eq!(all["routes"].as_array().map(Vec::len), Some(2), "{all}");
    assert!(all["total"].as_u64() > Some(2) && all["matched"] == all["total"], "{all}");
    let connected = lab.call("GET", "/api/v1/routes?q=connected", admin, None).body;
    let origins: Vec<&Value> =
        connected["routes"].as_array().expect("routes").iter().map(|r| &r["origin"]).collect();
    assert!(!origins.is_empty() && origins.iter().all(|o| *o == "kernel"), "{connected}");
    let bad = lab.call("GET", "/api/v1/routes?limit=0", admin, None);
    assert_eq!(bad.status, 422, "{}", bad.body);
}

#[test]
fn the_certificate_checks_out_for_the_routers_addresses() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    let ca = lab.state.0.join("tls/ca.pem");
    let ca = ca.to_str().expect("UTF-8");
    // Dialled as one of the router's addresses (curl connects to the listening loopback but
    // checks the certificate against the address asked for).
    let address = lab.t.host("c1").subnet.router_v4();
    let dialled = |host: &str| {
        lab.t.router.run(
            "curl",
            &[
                "-sS",
                "--cacert",
                ca,
                "--connect-to",
                &format!("{host}:8443:127.0.0.1:8443"),
                &format!("https://{host}:8443/api/v1/health"),
            ],
        )
    };
    let health = dialled(&address).expect("the certificate names the router's address");
    assert!(health.contains("\"status\":\"ok\""), "{health}");
    assert!(dialled("192.0.2.77").is_err(), "an address the router does not have is refused");
}

/// A manifest signed with the tests' publisher key.
fn signed(manifest: &Value) -> Value {
    let mut m: Manifest = serde_json::from_value(manifest.clone()).expect("a manifest");
    m.sign(&[7; 32]);
    serde_json::to_value(m).expect("JSON")
}

/// The `static-acl` example as `POST /api/v1/plugins` takes it.
fn static_acl(config: &Value, sign: bool) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../plugins/target/wasm32-wasip2/release/static_acl.wasm");
    let wasm = std::fs::read(&path).unwrap_or_else(|e| {
        panic!("{}: {e}; build the plugins first with `make plugins`", path.display())
    });
    let manifest =
        serde_json::to_value(Manifest::new("acl", "0.1.0", &[Table::Filter], &wasm)).expect("JSON");
    let manifest = if sign { signed(&manifest) } else { manifest };
    let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &wasm);
    json!({"manifest": manifest, "wasm_base64": b64, "config": config}).to_string()
}

#[test]
fn plugins_added_configured_disabled_and_removed_through_the_api_persist_across_restarts() {
    if !privileged() {
        return;
    }
    let mut lab = Lab::new();
    let (jar, csrf) = lab.admin_session();
    let admin = Auth::Session(&jar, &csrf);
    let server = Subnet(3).host_v4();
    let c1 = Subnet(1).v4_prefix();
    let drop_c1 = json!({"rules": [{"direction": "src", "prefix": c1, "action": "drop"}]});
    let reachable = |lab: &Lab| ping_briefly(lab.t.ns("c1"), &server, 2).received > 0;
    wait_until("c1 reaches the server", Duration::from_secs(10), || reachable(&lab).then_some(()));

    let a = lab.call("POST", "/api/v1/plugins", admin, Some(&static_acl(&drop_c1, false)));
    assert_eq!(a.status, 422, "an unsigned plugin is refused: {}", a.body);
    assert!(a.body["detail"].as_str().is_some_and(|d| d.contains("sign")), "{}", a.body);
    let a = lab.call("POST", "/api/v1/plugins", admin, Some(&static_acl(&drop_c1, true)));
    assert_eq!(a.status, 201, "{}", a.body);
    assert!(!reachable(&lab), "static-acl drops c1's traffic");
    let list = lab.call("GET", "/api/v1/plugins", admin, None).body;
    assert_eq!((list[0]["name"].as_str(), list[0]["rules"].as_u64()), (Some("acl"), Some(1)));
    assert_eq!(list[0]["status"]["state"], "running", "{list}");
    // Its resource use: the init call so far, memory within its manifest's limit.
    let usage = &list[0]["usage"];
    assert!(usage["calls"].as_u64() >= Some(1), "{list}");
    let (memory, limit) = (usage["memory_bytes"].as_u64(), usage["memory_limit_bytes"].as_u64());
    assert!(memory > Some(0) && memory <= limit, "{list}");
    let reader = lab.token(admin, "read");
    let (ok, out) = lab.cli(&reader, &["plugin", "list"]);
    assert!(ok && out.contains("acl") && out.contains("running"), "{out}");
    let (ok, out) = lab.cli(&reader, &["plugin", "disable", "acl"]);
    assert!(!ok && out.contains("403"), "a read token changes nothing: {out}");

    // A configuration the plugin refuses changes nothing.
    let bad = json!({"rules": [{"direction": "up", "prefix": c1, "action": "drop"}]});
    let a = lab.call("PUT", "/api/v1/plugins/acl/config", admin, Some(&bad.to_string()));
    assert_eq!(a.status, 422, "{}", a.body);
    assert!(!reachable(&lab), "the old configuration still applies");
    let logs = lab.call("GET", "/api/v1/plugins/acl/logs", admin, None).body;
    assert!(logs.as_array().is_some_and(|l| !l.is_empty()), "{logs}");

    let off = lab.call("PATCH", "/api/v1/plugins/acl", admin, Some(r#"{"enabled": false}"#));
    assert_eq!(off.status, 200, "{}", off.body);
    // The answer comes once the plugin is stopped and its rules are gone.
    assert!(reachable(&lab), "disabled: c1 gets through at once");
    let on = lab.call("PATCH", "/api/v1/plugins/acl", admin, Some(r#"{"enabled": true}"#));
    assert_eq!(on.status, 200, "{}", on.body);
    assert!(!reachable(&lab), "enabled again: dropped again");

    // The plugin and its configuration are in the store: a restarted daemon runs it again.
    lab.t.kill_daemon();
    lab.start();
    let (jar, csrf) = lab.login("admin", "correct horse battery");
    let admin = Auth::Session(&jar, &csrf);
    wait_until("the stored plugin runs after a restart", Duration::from_secs(10), || {
        let list = lab.call("GET", "/api/v1/plugins", admin, None).body;
        (list[0]["status"]["state"] == "running").then_some(())
    });
    assert!(!reachable(&lab), "and drops c1's traffic");

    assert_eq!(lab.call("DELETE", "/api/v1/plugins/acl", admin, None).status, 200);
    assert_eq!(lab.call("GET", "/api/v1/plugins", admin, None).body, json!([]), "gone at once");
    assert!(reachable(&lab), "removed: c1 gets through at once");
    let history = lab.call("GET", "/api/v1/config/revisions", admin, None).body;
    assert!(history.as_array().is_some_and(|h| h.len() >= 4), "each change a revision: {history}");
}

#[test]
fn every_acknowledged_change_survives_the_daemon_killed_50_times_mid_stream() {
    if !privileged() {
        return;
    }
    let mut lab = Lab::new();
    let (jar, csrf) = lab.admin_session();
    let token = lab.token(Auth::Session(&jar, &csrf), "admin");
    let gw = Subnet(3).host_v4();
    let mut acknowledged: Vec<String> = Vec::new();
    let mut seed: u64 = std::process::id().into();
    for round in 0..50u32 {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        let kill_after = Duration::from_millis(50 + (seed >> 33) % 350);
        let pid = lab.t.daemon_pid().expect("the daemon runs");
        let stop = std::sync::atomic::AtomicBool::new(false);
        let acked = thread::scope(|s| {
            let writer = s.spawn(|| {
                let mut acked = Vec::new();
                for i in 0..=255u32 {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    let prefix = format!("10.{}.{i}.0/24", 100 + round);
                    let body = json!({"prefix": prefix, "via": gw}).to_string();
                    let a = lab.call(
                        "POST",
                        "/api/v1/routes/static",
                        Auth::Bearer(&token),
                        Some(&body),
                    );
                    if a.status == 201 {
                        acked.push(prefix);
                    }
                }
                acked
            });
            thread::sleep(kill_after);
            let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).expect("a pid"));
            nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).expect("SIGKILL");
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            writer.join().expect("the writer")
        });
        lab.t.kill_daemon();
        acknowledged.extend(acked);
        lab.start();
        let stored = lab.call("GET", "/api/v1/routes/static", Auth::Bearer(&token), None).body;
        let stored: Vec<&str> = stored
            .as_array()
            .expect("routes")
            .iter()
            .filter_map(|r| r["prefix"].as_str())
            .collect();
        let lost: Vec<&String> =
            acknowledged.iter().filter(|p| !stored.contains(&p.as_str())).collect();
        assert!(lost.is_empty(), "round {round}: acknowledged but lost: {lost:?}");
    }
    assert!(
        acknowledged.len() > 50,
        "changes were acknowledged between kills: {}",
        acknowledged.len()
    );

    // A commit to confirm, then the daemon killed: restarted after the deadline, it rolls back.
    let body = json!({"prefix": "10.250.0.0/16", "via": gw}).to_string();
    let a = lab.call(
        "POST",
        "/api/v1/routes/static?confirm_seconds=10",
        Auth::Bearer(&token),
        Some(&body),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    lab.t.kill_daemon();
    thread::sleep(Duration::from_secs(11));
    lab.start();
    wait_until(
        "the unconfirmed route rolled back after the restart",
        Duration::from_secs(10),
        || {
            let stored = lab.call("GET", "/api/v1/routes/static", Auth::Bearer(&token), None).body;
            let gone = !stored.to_string().contains("10.250.0.0/16");
            (gone && !lab.kernel_routes().contains("10.250.0.0/16")).then_some(())
        },
    );
}

/// The seconds of a response's `Retry-After` header.
fn retry_after(headers: &str) -> Option<u64> {
    headers.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim().eq_ignore_ascii_case("retry-after").then(|| value.trim().parse().ok())?
    })
}
