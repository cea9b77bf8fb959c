//! BIRD run and configured by Sluice (`sluice daemon --bird`): the router's BGP neighbours exist
//! only in Sluice's configuration, set through the REST API; peers in their own namespaces run
//! BIRDs configured by hand, announcing a thousand prefixes each. Kernel forwarding is off in
//! the router, so traffic that crosses was forwarded by XDP.
//!
//! One test walks the whole life of a session, printing its figures: up from a commit (time to
//! established, time to every prefix in the dataplane), traffic across, secrets redacted, a
//! configuration BIRD refuses (nothing applied, the session stays), a neighbour that never
//! answers, a peer over `max_prefixes`, BIRD killed (restarted, the routes kept meanwhile), and
//! the neighbour removed by a commit (time to withdraw every prefix).
//!
//! Needs root, bpffs and BIRD 2 (`bird2`, installed by `scripts/setup.sh`); without them the
//! test says why and returns, except with `CI=true`, where it fails. Run:
//! `cargo nextest run --release -p sluice --test bird_managed`.

#[expect(dead_code, reason = "each test file uses a part of the shared helpers")]
mod common;

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use common::{SETTLE, Topology, ip, ping, privileged, wait_until};
use serde_json::{Value, json};
use sluice_testbed::{
    api_lab::{RawAnswer, RawClient, Session, in_namespace},
    lab::Subnet,
    netns::{self, NetNs},
};

/// Prefixes each peer announces (`/26`s of `172.16+n.0.0/16`), besides the service prefix.
const PREFIXES: usize = 1000;
/// How long a session may take to come up, or a change to travel BIRD -> kernel -> dataplane.
const BGP_SETTLE: Duration = Duration::from_secs(30);
/// The router's AS; peer `n` is AS 65000 + n.
const ROUTER_AS: u32 = 65000;
/// The prefix whose first address sits on p1's loopback.
const SERVICE: (&str, &str) = ("10.99.0.0/24", "10.99.0.1");
/// The peers' BGP timers: a dead session is noticed in 3 s, a new one tried every second.
const TIMERS: &str = "hold time 3; startup hold time 3; keepalive time 1; \
                      connect delay time 1; connect retry time 1; error wait time 1, 2;";
/// Where the daemon's API listens in the router namespace.
const LISTEN: &str = "127.0.0.1:8443";

/// Whether the test can run here: root, bpffs, and BIRD 2.
fn bird_ready() -> bool {
    if !privileged() {
        return false;
    }
    let out = Command::new("bird").arg("--version").output();
    let text = out
        .map(|o| {
            format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
        })
        .unwrap_or_default();
    if text.trim().starts_with("BIRD version 2.") {
        return true;
    }
    sluice_testbed::cannot_run(
        "BIRD test",
        &format!(
            "BIRD 2 is needed (`bird --version` said {:?}); scripts/setup.sh installs bird2",
            text.trim()
        ),
    );
    false
}

/// A directory of the test's own; removed on drop unless the test panicked.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let path = std::env::temp_dir().join(format!("sluice-{}", netns::unique_name("birdm")));
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("the test's files are kept in {}", self.0.display());
        } else {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

/// A peer's BIRD, configured by hand; killed on drop (its log's tail printed on a panic).
struct PeerBird {
    child: Child,
    log: PathBuf,
}

impl PeerBird {
    /// BIRD in `ns` (peer number `n` on subnet `s`) announcing [`PREFIXES`] prefixes, and the
    /// service prefix when `service`, to the router over BGP.
    fn start(ns: &NetNs, dir: &Path, n: u8, s: Subnet, service: bool) -> Self {
        let file = |ext: &str| dir.join(format!("p{n}.{ext}"));
        let (conf, log) = (file("conf"), file("log"));
        let mut routes = String::new();
        for i in 0..PREFIXES {
            let _ =
                write!(routes, "route 172.{}.{}.{}/26 unreachable; ", 16 + n, i / 4, i % 4 * 64);
        }
        if service {
            let _ = write!(routes, "route {} unreachable; ", SERVICE.0);
        }
        let text = format!(
            "log \"{log}\" all;\nrouter id {h};\nprotocol device {{ scan time 1; }}\n\
             protocol static announce4 {{ ipv4; {routes} }}\n\
             protocol bgp to_router {{ local {h} as {peer_as}; neighbor {r} as {ROUTER_AS}; {TIMERS} \
             ipv4 {{ import none; export where proto = \"announce4\"; }}; }}\n",
            log = log.display(),
            h = s.host_v4(),
            r = s.router_v4(),
            peer_as = ROUTER_AS + u32::from(n),
        );
        fs::write(&conf, text).expect("write the peer's bird.conf");
        let stderr = file("stderr");
        let mut child = ns
            .command("bird")
            .arg("-f")
            .arg("-c")
            .arg(&conf)
            .arg("-s")
            .arg(file("ctl"))
            .arg("-P")
            .arg(file("pid"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&stderr).expect("the peer's stderr file"))
            .spawn()
            .expect("spawn the peer's bird");
        thread::sleep(Duration::from_millis(300));
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "the peer's BIRD exited ({status}): {}",
                fs::read_to_string(&stderr).unwrap_or_default()
            );
        }
        Self { child, log }
    }
}

impl Drop for PeerBird {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            let log = fs::read_to_string(&self.log).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "--- the peer's BIRD log ---\n{}",
                lines[lines.len().saturating_sub(20)..].join("\n")
            );
        }
    }
}

/// An administrator's session with the router's API.
struct Api {
    ns: String,
    raw: RawClient,
    session: Session,
    state: PathBuf,
}

impl Api {
    /// Makes the first administrator with the setup token and logs in.
    fn setup(router: &NetNs, state: &Path) -> Self {
        wait_until("the API's certificate and setup token", SETTLE, || {
            (state.join("tls/ca.pem").exists() && state.join("setup-token").exists()).then_some(())
        });
        let raw = RawClient::new(&fs::read(state.join("tls/ca.pem")).unwrap()).unwrap();
        let token = fs::read_to_string(state.join("setup-token")).unwrap();
        let session = in_namespace(router.name(), || {
            let deadline = Instant::now() + SETTLE;
            while std::net::TcpStream::connect(LISTEN).is_err() {
                anyhow::ensure!(Instant::now() < deadline, "the API does not listen");
                thread::sleep(Duration::from_millis(50));
            }
            let body = json!({"token": token.trim(), "username": "admin", "password": "correct horse battery staple"});
            let a = raw.json(None, "POST", "/api/v1/setup", &[], Some(&body))?;
            anyhow::ensure!(a.status == 201, "setup: {} {}", a.status, a.text());
            raw.login(None, "admin", "correct horse battery staple")
        })
        .expect("set up the administrator");
        Self { ns: router.name().to_owned(), raw, session, state: state.to_owned() }
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> RawAnswer {
        in_namespace(&self.ns, || {
            self.raw.json(None, method, &format!("/api/v1{path}"), &self.session.headers(), body)
        })
        .unwrap_or_else(|e| panic!("{method} {path}: {e:#}"))
    }

    /// `GET path`, expecting 200.
    fn get(&self, path: &str) -> Value {
        let a = self.call("GET", path, None);
        assert_eq!(a.status, 200, "GET {path}: {}", a.text());
        a.json()
    }

    /// Stages `protocols` as the candidate's and commits: the commit's answer.
    fn commit_protocols(&self, protocols: &Value, message: &str) -> RawAnswer {
        let mut config = self.get("/config?secrets=true")["config"].clone();
        config["protocols"] = protocols.clone();
        let a = self.call("PUT", "/config/candidate", Some(&config));
        assert_eq!(a.status, 200, "stage: {}", a.text());
        self.call("POST", "/config/commit", Some(&json!({"message": message})))
    }

    /// The protocol `name` of `GET /protocols`, if listed.
    fn protocol(&self, name: &str) -> Option<Value> {
        let a = self.call("GET", "/protocols", None);
        if a.status != 200 {
            return None;
        }
        a.json()["protocols"].as_array()?.iter().find(|p| p["name"] == name).cloned()
    }

    /// Waits until protocol `name` satisfies `ok`; returns it and how long it took.
    fn wait_protocol(
        &self,
        name: &str,
        what: &str,
        ok: impl Fn(&Value) -> bool,
    ) -> (Value, Duration) {
        let start = Instant::now();
        loop {
            if let Some(p) = self.protocol(name).filter(|p| ok(p)) {
                return (p, start.elapsed());
            }
            assert!(
                start.elapsed() < BGP_SETTLE,
                "protocol {name} did not become {what} within {BGP_SETTLE:?}: {:?}\nBIRD's log:\n{}",
                self.protocol(name),
                fs::read_to_string(self.state.join("bird/bird.log")).unwrap_or_default()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }
}

/// How many of peer `n`'s announced prefixes the dataplane holds.
fn in_dataplane(t: &Topology, n: u8) -> usize {
    let within: ipnet::IpNet = format!("172.{}.0.0/16", 16 + n).parse().unwrap();
    t.routes().iter().filter(|r| r.prefix.prefix_len() == 26 && within.contains(&r.prefix)).count()
}

/// Waits until the dataplane holds `want` of peer `n`'s prefixes; how long it took.
fn wait_prefixes(t: &Topology, n: u8, want: usize, what: &str) -> Duration {
    let start = Instant::now();
    loop {
        let have = in_dataplane(t, n);
        if have == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < BGP_SETTLE,
            "the dataplane holds {have} of p{n}'s prefixes, not {want} ({what}) after {BGP_SETTLE:?}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// Pings the service address from c1: every echo answered, carried by XDP both ways.
fn assert_crosses(t: &Topology) {
    t.wait_ping("c1", SERVICE.1);
    let before = t.stats();
    let p = ping(t.ns("c1"), SERVICE.1, 20, "0.01");
    let after = t.stats();
    assert_eq!(p.received, 20, "c1 -> {}: {p:?}; stats:{after}", SERVICE.1);
    assert!(
        after.delta(&before, "r-c1", "forwarded") >= 20
            && after.delta(&before, "r-p1", "forwarded") >= 20,
        "XDP should carry the echoes and their replies (kernel forwarding is off); stats:{after}"
    );
}

#[test]
#[expect(clippy::too_many_lines, reason = "one session's life, step by step")]
fn bgp_configured_through_the_api_reaches_the_dataplane_and_survives_faults() {
    if !bird_ready() {
        return;
    }
    let started = Instant::now();
    let dir = TempDir::new();
    let state = dir.0.join("state");
    let (p1, p2) = (Subnet(3), Subnet(4));
    let mut t = Topology::new(&[("c1", 1), ("p1", 3), ("p2", 4)]);
    ip(t.ns("p1"), &["addr", "add", &format!("{}/32", SERVICE.1), "dev", "lo"]);
    let _peer1 = PeerBird::start(t.ns("p1"), &dir.0, 1, p1, true);
    let _peer2 = PeerBird::start(t.ns("p2"), &dir.0, 2, p2, false);
    let state_arg = state.to_str().unwrap().to_owned();
    t.start_daemon_with(&["--state-dir", &state_arg, "--listen", LISTEN, "--bird", "bird"]);
    let api = Api::setup(&t.router, &state);

    // No neighbour yet: BIRD runs with nothing to report.
    wait_until("GET /protocols to answer", SETTLE, || {
        let a = api.call("GET", "/protocols", None);
        (a.status == 200).then(|| assert_eq!(a.json()["protocols"], json!([]), "{}", a.text()))
    });

    // (a) p1 configured through the API alone.
    let p1_neighbour = json!({"neighbor": p1.host_v4(), "remote_as": ROUTER_AS + 1,
                              "local_as": ROUTER_AS, "hold_time": 3, "import": "all"});
    let mut protocols = json!({"router_id": p1.router_v4(), "bgp": {"p1": p1_neighbour}});
    let at = Instant::now();
    let a = api.commit_protocols(&protocols, "peer with p1");
    assert_eq!(a.status, 200, "commit: {}", a.text());
    let (p, up) = api.wait_protocol("p1", "established", |p| p["state"] == "up");
    assert_eq!(
        (p["kind"].as_str(), p["neighbor"].as_str()),
        (Some("bgp"), Some(p1.host_v4().as_str()))
    );
    assert_eq!(p["info"], "Established");
    let forwarded = up + wait_prefixes(&t, 1, PREFIXES, "after the session came up");
    let p = api
        .wait_protocol("p1", "with its routes counted", |p| {
            p["routes"]["imported"].as_u64() == Some(PREFIXES as u64 + 1)
        })
        .0;
    eprintln!(
        "commit -> session established in {up:?}; {PREFIXES} prefixes in the dataplane {forwarded:?} \
         after the commit; GET /protocols: {p}"
    );
    let _ = at;
    assert_crosses(&t);
    let kernel = t.router.ip(&["-j", "route", "show", "exact", SERVICE.0]).unwrap();
    assert!(
        kernel.contains("\"protocol\":\"bird\""),
        "the kernel's route should be BIRD's: {kernel}"
    );

    // The CLI shows the same (an admin token of the API).
    let token = api.call("POST", "/tokens", Some(&json!({"name": "cli", "scope": "read"}))).json()
        ["token"]
        .as_str()
        .expect("a token")
        .to_owned();
    let ca = state.join("tls/ca.pem");
    let cli = |json: bool| {
        let mut cmd = t.router.command(common::SLUICE);
        cmd.args(["protocols", "--api", &format!("https://{LISTEN}"), "--token", &token, "--ca"])
            .arg(&ca);
        if json {
            cmd.arg("--json");
        }
        netns::run(&mut cmd).expect("sluice protocols")
    };
    let text = cli(false);
    assert!(
        text.lines()
            .any(|l| l.starts_with("p1 ") && l.contains(" up ") && l.contains("Established")),
        "sluice protocols:\n{text}"
    );
    let v: Value = serde_json::from_str(&cli(true)).expect("sluice protocols --json");
    assert_eq!(v["protocols"][0]["name"], "p1");
    let bearer = format!("Bearer {token}");
    let metrics = in_namespace(&api.ns, || {
        api.raw.request(None, "GET", "/metrics", &[("Authorization", bearer.as_str())], b"")
    })
    .expect("GET /metrics");
    assert_eq!(metrics.status, 200, "{}", metrics.text());
    let metrics = metrics.text();
    let up = "sluice_routing_protocol_up{name=\"p1\",kind=\"bgp\",neighbor=\"10.3.0.2\"} 1";
    assert!(metrics.contains(up) && metrics.contains("sluice_routing_daemon_up 1"), "{metrics}");
    let routes = format!(
        "sluice_routing_protocol_routes{{name=\"p1\",kind=\"bgp\",routes=\"imported\"}} {}",
        PREFIXES + 1
    );
    assert!(metrics.contains(&routes), "{metrics}");

    // (b) A neighbour that never answers (nothing at its address), with a password: shown
    // redacted, kept when a redacted copy comes back, given to an administrator who asks.
    let silent = "10.3.0.77";
    protocols["bgp"]["silent"] = json!({"neighbor": silent, "remote_as": 65100, "local_as": ROUTER_AS,
                                        "password": "s3cret-md5"});
    let a = api.commit_protocols(&protocols, "a neighbour that never answers");
    assert_eq!(a.status, 200, "commit: {}", a.text());
    let shown = api.get("/config");
    assert_eq!(shown["config"]["protocols"]["bgp"]["silent"]["password"], "(redacted)", "{shown}");
    let export = api.call("GET", "/config/export", None).text();
    assert!(!export.contains("s3cret-md5") && export.contains("(redacted)"), "{export}");
    let a = api.call("PUT", "/config/candidate", Some(&shown["config"]));
    assert_eq!(a.status, 200, "a redacted copy staged again: {}", a.text());
    let full = api.call("GET", "/config/export?secrets=true", None).text();
    assert!(full.contains("s3cret-md5"), "an administrator asking gets the secret: {full}");
    let audit = api.get("/audit?limit=5").to_string();
    assert!(!audit.contains("s3cret-md5") && audit.contains("read secrets"), "{audit}");
    let _ = api.call("DELETE", "/config/candidate", None);
    let (p, _) = api.wait_protocol("silent", "listed", |_| true);
    thread::sleep(Duration::from_secs(3));
    let p = api.protocol("silent").unwrap_or(p);
    assert_ne!(p["state"], "up", "{p}");
    eprintln!("a neighbour that never answers: {p}");

    // (c) A configuration BIRD refuses (a keyword as a neighbour's name): 422 with BIRD's
    // message, nothing committed, the session stays up.
    let revision = api.get("/config")["revision"].clone();
    let mut refused = protocols.clone();
    refused["bgp"]["filter"] =
        json!({"neighbor": "10.3.0.78", "remote_as": 65101, "local_as": ROUTER_AS});
    let a = api.commit_protocols(&refused, "refused by BIRD");
    assert_eq!(a.status, 422, "BIRD should refuse it: {}", a.text());
    assert!(a.text().contains("BIRD") && a.text().contains("protocols"), "{}", a.text());
    assert!(
        a.text().contains("bird.conf:") && !a.text().contains(state.to_str().unwrap()),
        "BIRD's message names the line, not the state directory: {}",
        a.text()
    );
    eprintln!("refused: {}", a.json()["detail"]);
    assert_eq!(api.get("/config")["revision"], revision, "nothing committed");
    let _ = api.call("DELETE", "/config/candidate", None);
    assert_eq!(api.protocol("p1").unwrap()["state"], "up");
    assert!(api.protocol("filter").is_none());
    assert_eq!(in_dataplane(&t, 1), PREFIXES);

    // (d) p2 announces more than max_prefixes: its session is shut down and its routes go.
    protocols["bgp"]["p2"] = json!({"neighbor": p2.host_v4(), "remote_as": ROUTER_AS + 2,
                                    "local_as": ROUTER_AS,
                                    "import": {"max_prefixes": 100, "max_prefixes_action": "disable"}});
    let a = api.commit_protocols(&protocols, "p2 with a limit");
    assert_eq!(a.status, 200, "commit: {}", a.text());
    let (p, took) = api.wait_protocol("p2", "shut down over its limit", |p| {
        p["state"] == "down" && p["since"].is_string()
    });
    eprintln!("p2 over max_prefixes (100 of {PREFIXES}) in {took:?}: {p}");
    wait_prefixes(&t, 2, 0, "p2 over its limit");
    let log = fs::read_to_string(state.join("bird/bird.log")).unwrap_or_default();
    assert!(
        log.lines().any(|l| l.contains("p2") && l.contains("limit")),
        "BIRD's log should say p2 hit its limit:\n{log}"
    );

    // (e) BIRD killed: the routes it installed stay in the dataplane; it is started again and
    // the session comes back.
    let pid: i32 = fs::read_to_string(state.join("bird/bird.pid")).unwrap().trim().parse().unwrap();
    let killed = Instant::now();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL)
        .unwrap();
    assert_eq!(in_dataplane(&t, 1), PREFIXES, "the routes stay while BIRD is down");
    let (_, back) = api.wait_protocol("p1", "established again", |p| p["state"] == "up");
    wait_prefixes(&t, 1, PREFIXES, "after BIRD's restart");
    eprintln!(
        "BIRD killed: session up again {back:?} later, {:?} to every prefix",
        killed.elapsed()
    );
    let log = t.log_tail(200);
    assert!(log.contains("BIRD died"), "the daemon should log BIRD's death:\n{log}");
    assert_crosses(&t);

    // (f) p1 removed by a commit: its prefixes leave the kernel and the dataplane.
    protocols["bgp"].as_object_mut().unwrap().remove("p1");
    let at = Instant::now();
    let a = api.commit_protocols(&protocols, "p1 removed");
    assert_eq!(a.status, 200, "commit: {}", a.text());
    let withdrawn = wait_prefixes(&t, 1, 0, "after p1 was removed");
    assert!(api.protocol("p1").is_none());
    eprintln!(
        "p1 removed: {PREFIXES} prefixes withdrawn from the dataplane {:?} after the commit ({withdrawn:?})",
        at.elapsed()
    );
    t.assert_daemon_alive();
    drop(t);
    eprintln!("test took {:?}", started.elapsed());
}

/// Hostile `protocols`: fields that would break out of BIRD's configuration file, oversized
/// policies, too many neighbours, a name BIRD refuses, numbers out of range. Each is refused
/// whole (422 naming the field, or BIRD's refusal on `protocols`), nothing is committed and
/// BIRD's file is unchanged; then the largest configuration allowed is committed and read
/// back. The daemon stays up, its memory and each answer's time bounded (figures printed).
#[test]
#[expect(clippy::too_many_lines, reason = "the cases, then the largest configuration")]
fn hostile_protocols_are_refused_whole_and_birds_file_stays_as_it_was() {
    if !bird_ready() {
        return;
    }
    let mut lab =
        sluice_testbed::api_lab::ApiLab::start("birdh", &["--bird", "bird"]).expect("the lab");
    let session = in_namespace(lab.ns(), || lab.setup_admin()).expect("the administrator");
    let raw = lab.raw().expect("a client");
    let ns = lab.ns().to_owned();
    let call = |method: &str, path: &str, body: Option<&Value>| -> (RawAnswer, Duration) {
        let at = Instant::now();
        let a = in_namespace(&ns, || {
            raw.json(None, method, &format!("/api/v1{path}"), &session.headers(), body)
        })
        .unwrap_or_else(|e| panic!("{method} {path}: {e:#}"));
        (a, at.elapsed())
    };
    let conf = lab.state.join("bird/bird.conf");
    wait_until("BIRD's configuration to be written", SETTLE, || conf.exists().then_some(()));
    wait_until("BIRD to answer", SETTLE, || {
        (call("GET", "/protocols", None).0.status == 200).then_some(())
    });
    let before = fs::read_to_string(&conf).unwrap();
    let anon_before = lab.settled_anon_kib();
    let revision = call("GET", "/config", None).0.json()["revision"].clone();

    let neighbour = |extra: Value| {
        let mut n = json!({"neighbor": "10.1.0.2", "remote_as": 65001, "local_as": 65000});
        for (k, v) in extra.as_object().unwrap() {
            n[k] = v.clone();
        }
        n
    };
    let many_prefixes: Vec<Value> = (0..10_001)
        .map(|i| json!({"prefix": format!("10.{}.{}.0/24", i / 256 % 256, i % 256)}))
        .collect();
    let many_neighbours: serde_json::Map<String, Value> = (0..257)
        .map(|i| {
            (
                format!("n{i}"),
                neighbour(json!({"neighbor": format!("10.2.{}.{}", i / 200, i % 200 + 2)})),
            )
        })
        .collect();
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "a password breaking out of its quotes",
            json!({"bgp": {"n": neighbour(json!({"password":
                "x\"; } protocol static evil { ipv4; route 0.0.0.0/0 blackhole; } #"}))}}),
            "protocols.bgp.n.password",
        ),
        (
            "a newline in a password",
            json!({"bgp": {"n": neighbour(json!({"password": "a\nb"}))}}),
            "protocols.bgp.n.password",
        ),
        (
            "a password of 81 bytes",
            json!({"bgp": {"n": neighbour(json!({"password": "p".repeat(81)}))}}),
            "protocols.bgp.n.password",
        ),
        ("a brace in a name", json!({"bgp": {"a}b": neighbour(json!({}))}}), "protocols.bgp.a}b"),
        (
            "a name 33 long",
            json!({"bgp": {"a".repeat(33): neighbour(json!({}))}}),
            "protocols.bgp.aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        ),
        (
            "an interface name breaking out",
            json!({"ospf": {"areas": {"0": {"interfaces": {"e\"};x": {}}}}}}),
            "protocols.ospf.areas.0.interfaces.e\"};x",
        ),
        (
            "10,001 prefixes in one policy",
            json!({"bgp": {"n": neighbour(json!({"import": {"prefixes": many_prefixes}}))}}),
            "protocols.bgp.n.import.prefixes",
        ),
        ("257 neighbours", json!({"bgp": many_neighbours}), "protocols.bgp"),
        (
            "le past 32",
            json!({"bgp": {"n": neighbour(json!({"import": {"prefixes": [{"prefix": "10.0.0.0/8", "le": 200}]}}))}}),
            "protocols.bgp.n.import.prefixes[0].le",
        ),
        (
            "max_prefixes 0",
            json!({"bgp": {"n": neighbour(json!({"import": {"max_prefixes": 0}}))}}),
            "protocols.bgp.n.import.max_prefixes",
        ),
        (
            "an AS past 32 bits",
            json!({"bgp": {"n": neighbour(json!({"remote_as": 4_294_967_296_u64}))}}),
            "protocols.bgp.n.remote_as",
        ),
        (
            "an unknown field",
            json!({"bgp": {"n": neighbour(json!({"route_reflector": true}))}}),
            "protocols.bgp.n",
        ),
        (
            "a keyword as a name (BIRD refuses it)",
            json!({"bgp": {"filter": neighbour(json!({}))}}),
            "protocols",
        ),
    ];
    let mut slowest = Duration::ZERO;
    for (what, protocols, field) in &cases {
        let (staged, took) =
            call("PUT", "/config/candidate", Some(&json!({"protocols": protocols})));
        slowest = slowest.max(took);
        let answer = if staged.status == 200 {
            let (a, took) = call("POST", "/config/commit", Some(&json!({"message": what})));
            slowest = slowest.max(took);
            let _ = call("DELETE", "/config/candidate", None);
            a
        } else {
            staged
        };
        assert_eq!(answer.status, 422, "{what}: {}", answer.text());
        let fields: Vec<String> = answer.json()["errors"]
            .as_array()
            .map(|e| e.iter().filter_map(|e| e["field"].as_str().map(str::to_owned)).collect())
            .unwrap_or_default();
        let text = answer.text();
        assert!(
            fields.iter().any(|f| f.starts_with(field)) || text.contains(field),
            "{what}: the answer should name {field}: {text}"
        );
        assert!(lab.alive(), "the daemon died on {what}: {}", lab.log_tail(20));
    }
    assert_eq!(call("GET", "/config", None).0.json()["revision"], revision, "nothing committed");
    assert_eq!(fs::read_to_string(&conf).unwrap(), before, "BIRD's file is unchanged");
    assert!(!fs::read_to_string(&conf).unwrap().contains("evil"));

    // The largest configuration allowed: 256 neighbours (none answers), 100 prefixes each.
    let big: serde_json::Map<String, Value> = (0..256)
        .map(|i| {
            let prefixes: Vec<Value> =
                (0..100).map(|k| json!({"prefix": format!("10.{i}.{k}.0/24"), "le": 32})).collect();
            let n = neighbour(json!({"neighbor": format!("10.2.{}.{}", i / 200, i % 200 + 2),
                                     "remote_as": 65001 + i, "password": format!("key-{i}"),
                                     "import": {"prefixes": prefixes, "max_prefixes": 1000}}));
            (format!("n{i}"), n)
        })
        .collect();
    let body = json!({"protocols": {"router_id": "10.1.0.1", "bgp": big}});
    let (a, staged) = call("PUT", "/config/candidate", Some(&body));
    assert_eq!(a.status, 200, "{}", a.text());
    let (a, committed) =
        call("POST", "/config/commit", Some(&json!({"message": "256 neighbours"})));
    assert_eq!(a.status, 200, "{}", a.text());
    let start = Instant::now();
    wait_until("256 sessions listed", Duration::from_mins(1), || {
        let (a, _) = call("GET", "/protocols", None);
        (a.status == 200 && a.json()["protocols"].as_array().is_some_and(|p| p.len() == 256))
            .then_some(())
    });
    let (_, read) = call("GET", "/protocols", None);
    let anon_after = lab.settled_anon_kib();
    eprintln!(
        "{} hostile configurations refused, slowest answer {slowest:?}; 256 neighbours x 100 \
         prefixes ({} KiB): staged in {staged:?}, committed (BIRD's check included) in \
         {committed:?}, listed by BIRD {:?} later, GET /protocols in {read:?}; the daemon's own \
         memory {anon_before} -> {anon_after} KiB",
        cases.len(),
        body.to_string().len() >> 10,
        start.elapsed()
    );
    assert!(slowest < Duration::from_secs(10), "a refusal took {slowest:?}");
    assert!(committed < Duration::from_secs(30), "the large commit took {committed:?}");
    assert!(
        anon_after < anon_before + (128 << 10),
        "the daemon grew {anon_before} -> {anon_after} KiB"
    );
    assert!(lab.alive(), "{}", lab.log_tail(20));
}

/// A Sluice router of the failover test: its namespace, pin directory, daemon (with the API and
/// BIRD) and the administrator's session; stopped and unpinned on drop.
struct Router {
    daemon: Child,
    ns: NetNs,
    pin: PathBuf,
    log: PathBuf,
    api: Option<Api>,
}

impl Router {
    fn start(ns: NetNs, dir: &Path, name: &str) -> Self {
        let state = dir.join(format!("{name}-state"));
        let pin = PathBuf::from(format!("/sys/fs/bpf/sluice-test-{}", ns.name()));
        let log = dir.join(format!("{name}-daemon.log"));
        let out = fs::File::create(&log).expect("the daemon's log");
        let daemon = ns
            .command(common::SLUICE)
            .arg("--pin-dir")
            .arg(&pin)
            .args([
                "daemon",
                "--attach",
                "r-u,r-s",
                "--listen",
                LISTEN,
                "--bird",
                "bird",
                "--state-dir",
            ])
            .arg(&state)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("spawn the daemon");
        let mut r = Self { daemon, ns, pin, log, api: None };
        r.api = Some(Api::setup(&r.ns, &state));
        r
    }

    fn api(&self) -> &Api {
        self.api.as_ref().expect("the API")
    }

    /// Frames XDP transmitted out of `iface` so far.
    fn transmitted(&self, iface: &str) -> u64 {
        let text = netns::run(
            Command::new(common::SLUICE).arg("--pin-dir").arg(&self.pin).args(["stats", "--json"]),
        )
        .expect("sluice stats");
        let v: Value = serde_json::from_str(&text).expect("stats JSON");
        v["interfaces"]
            .as_array()
            .and_then(|a| a.iter().find(|i| i["name"] == iface))
            .and_then(|i| i["counters"]["transmitted"]["packets"].as_u64())
            .unwrap_or(0)
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.daemon.id()).unwrap_or(i32::MAX));
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(self.daemon.try_wait(), Ok(None)) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
        if thread::panicking() {
            let log = fs::read_to_string(&self.log).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "--- {} ---\n{}",
                self.log.display(),
                lines[lines.len().saturating_sub(30)..].join("\n")
            );
        }
        let _ =
            netns::run(Command::new(common::SLUICE).arg("--pin-dir").arg(&self.pin).arg("detach"));
        let _ = fs::remove_dir_all(&self.pin);
    }
}

/// Runs `ip -n NS ARGS`, panicking with the error.
fn ipn(ns: &NetNs, args: &[&str]) {
    ns.ip(args).unwrap_or_else(|e| panic!("ip -n {} {}: {e:#}", ns.name(), args.join(" ")));
}

/// UDP datagrams to the service address from 64 source ports, `rate` a second for `secs`
/// seconds, each carrying its sequence number; the sequence numbers received at the server,
/// with the send time of each datagram (from the start).
fn flow(
    upstream: &NetNs,
    server: &NetNs,
    rate: u32,
    secs: u32,
    during: impl FnOnce(Instant),
) -> (Vec<Duration>, Vec<bool>) {
    use std::net::UdpSocket;
    let total = rate as usize * secs as usize;
    let (srv_ns, up_ns) = (NetNs::existing(server.name()), NetNs::existing(upstream.name()));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let receiver = thread::spawn(move || {
        srv_ns.enter().expect("enter the server");
        let s = UdpSocket::bind(format!("{}:9", SERVICE.1)).expect("bind the receiver");
        s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        ready_tx.send(()).unwrap();
        let mut got = vec![false; total];
        let mut buf = [0u8; 64];
        let mut quiet_since = Instant::now();
        loop {
            match s.recv(&mut buf) {
                Ok(n) if n >= 8 => {
                    let seq = u64::from_be_bytes(buf[..8].try_into().unwrap()) as usize;
                    if seq < total {
                        got[seq] = true;
                    }
                    quiet_since = Instant::now();
                }
                _ => {
                    if quiet_since.elapsed() > Duration::from_secs(2) {
                        return got;
                    }
                }
            }
        }
    });
    ready_rx.recv().expect("the receiver");
    let start = Instant::now();
    let sender = thread::spawn(move || {
        up_ns.enter().expect("enter the upstream");
        let sockets: Vec<UdpSocket> =
            (0..64).map(|_| UdpSocket::bind("0.0.0.0:0").unwrap()).collect();
        let dst = format!("{}:9", SERVICE.1);
        let mut sent_at = Vec::with_capacity(total);
        let gap = Duration::from_secs(1) / rate;
        for seq in 0..total {
            let due = start + gap * u32::try_from(seq).unwrap();
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                thread::sleep(wait);
            }
            sent_at.push(start.elapsed());
            let _ = sockets[seq % 64].send_to(&(seq as u64).to_be_bytes(), &dst);
        }
        sent_at
    });
    during(start);
    let sent_at = sender.join().expect("the sender");
    (sent_at, receiver.join().expect("the receiver"))
}

/// Two Sluice routers (r1, r2), both configured through their APIs alone, learn the service
/// prefix from the server's BIRD and announce it to an upstream BIRD, which spreads it over
/// both by ECMP (one bridge to both routers). r2 dies silently (its link to the bridge goes
/// down: the upstream's own link stays up, so only BFD or the hold time tells). Delivered share
/// before, during and after, and the time to converge.
#[expect(clippy::too_many_lines, reason = "the topology, then the measurement")]
fn ecmp_failover(bfd: bool) {
    if !bird_ready() {
        return;
    }
    let started = Instant::now();
    let dir = TempDir::new();
    let name = netns::unique_name("bfo");
    let up = sluice_testbed::lab::host_namespace(&format!("{name}u")).expect("the upstream");
    let srv = sluice_testbed::lab::host_namespace(&format!("{name}s")).expect("the server");
    let r_ns: Vec<NetNs> = (1..=2)
        .map(|i| sluice_testbed::lab::router_namespace(&format!("{name}r{i}")).expect("a router"))
        .collect();
    // The upstream: a bridge to both routers (10.20.0.0/24), flows hashed by ports.
    ipn(&up, &["link", "add", "br0", "type", "bridge"]);
    ipn(&up, &["addr", "add", "10.20.0.1/24", "dev", "br0"]);
    ipn(&up, &["link", "set", "br0", "up"]);
    up.sysctl("net.ipv4.fib_multipath_hash_policy", "1").unwrap();
    ip(&srv, &["addr", "add", &format!("{}/32", SERVICE.1), "dev", "lo"]);
    ipn(&srv, &["link", "set", "lo", "up"]);
    for (i, r) in (1..=2u8).zip(&r_ns) {
        let port = format!("u-r{i}");
        ipn(r, &["link", "add", "r-u", "type", "veth", "peer", "name", &port, "netns", up.name()]);
        ipn(&up, &["link", "set", &port, "master", "br0", "up"]);
        ipn(r, &["addr", "add", &format!("10.20.0.1{i}/24"), "dev", "r-u"]);
        ipn(r, &["link", "set", "r-u", "up"]);
        let s_if = format!("s-r{i}");
        ipn(r, &["link", "add", "r-s", "type", "veth", "peer", "name", &s_if, "netns", srv.name()]);
        ipn(r, &["addr", "add", &format!("10.3{i}.0.1/24"), "dev", "r-s"]);
        ipn(r, &["link", "set", "r-s", "up"]);
        ipn(&srv, &["addr", "add", &format!("10.3{i}.0.2/24"), "dev", &s_if]);
        ipn(&srv, &["link", "set", &s_if, "up"]);
        srv.run("ethtool", &["-K", &s_if, "gro", "on", "tx", "off"]).expect("ethtool");
        up.run("ethtool", &["-K", &port, "tx", "off"]).expect("ethtool");
    }
    up.run("ethtool", &["-K", "br0", "tx", "off"]).expect("ethtool");
    // The server's BIRD announces the service prefix to both routers.
    let srv_conf = dir.0.join("srv.conf");
    fs::write(
        &srv_conf,
        format!(
            "log \"{}\" all;\nrouter id 10.31.0.2;\nprotocol device {{ scan time 1; }}\n\
             protocol static announce {{ ipv4; route {} unreachable; }}\n\
             protocol bgp r1 {{ local 10.31.0.2 as 65050; neighbor 10.31.0.1 as 65001; {TIMERS} \
             ipv4 {{ import none; export where proto = \"announce\"; }}; }}\n\
             protocol bgp r2 {{ local 10.32.0.2 as 65050; neighbor 10.32.0.1 as 65002; {TIMERS} \
             ipv4 {{ import none; export where proto = \"announce\"; }}; }}\n",
            dir.0.join("srv.log").display(),
            SERVICE.0
        ),
    )
    .unwrap();
    // The upstream's BIRD: both routers' paths merged into one multipath route, BFD if asked.
    let bfd_line = if bfd { "bfd on;" } else { "" };
    let up_conf = dir.0.join("up.conf");
    fs::write(
        &up_conf,
        format!(
            "log \"{}\" all;\nrouter id 10.20.0.1;\nprotocol device {{ scan time 1; }}\n\
             protocol kernel {{ ipv4 {{ import none; export all; }}; merge paths on; }}\n\
             protocol bfd {{ interface \"*\" {{ min rx interval 100 ms; min tx interval 100 ms; multiplier 3; }}; }}\n\
             protocol bgp r1 {{ local 10.20.0.1 as 65000; neighbor 10.20.0.11 as 65001; {TIMERS} {bfd_line} \
             ipv4 {{ import all; export none; }}; }}\n\
             protocol bgp r2 {{ local 10.20.0.1 as 65000; neighbor 10.20.0.12 as 65002; {TIMERS} {bfd_line} \
             ipv4 {{ import all; export none; }}; }}\n",
            dir.0.join("up.log").display()
        ),
    )
    .unwrap();
    let birds: Vec<PeerProcess> = [(&srv, &srv_conf, "srv"), (&up, &up_conf, "up")]
        .into_iter()
        .map(|(ns, conf, n)| PeerProcess::bird(ns, conf, &dir.0.join(format!("{n}.ctl"))))
        .collect();
    let routers: Vec<Router> = r_ns
        .into_iter()
        .zip(1..=2u32)
        .map(|(ns, i)| Router::start(ns, &dir.0, &format!("r{i}")))
        .collect();
    // Each router configured through its API alone.
    for (r, i) in routers.iter().zip(1..=2u32) {
        let protocols = json!({"router_id": format!("10.20.0.1{i}"), "bgp": {
            "server": {"neighbor": format!("10.3{i}.0.2"), "remote_as": 65050, "local_as": 65000 + i,
                       "hold_time": 3, "import": "all"},
            "upstream": {"neighbor": "10.20.0.1", "remote_as": 65000, "local_as": 65000 + i,
                         "hold_time": 3, "bfd": bfd,
                         "export": {"prefixes": [{"prefix": SERVICE.0}]}}}});
        let a = r.api().commit_protocols(&protocols, "server and upstream");
        assert_eq!(a.status, 200, "r{i}: {}", a.text());
    }
    for r in &routers {
        for n in ["server", "upstream"] {
            r.api().wait_protocol(n, "established", |p| p["state"] == "up");
        }
    }
    let took = wait_until("the upstream's multipath route over both routers", BGP_SETTLE, || {
        let text = up.ip(&["-j", "route", "show", "exact", SERVICE.0]).ok()?;
        (text.contains("10.20.0.11") && text.contains("10.20.0.12")).then_some(started.elapsed())
    });
    eprintln!(
        "bfd={bfd}: both routers up and the upstream's ECMP route in place {took:?} after start"
    );
    // Warm up: neighbours resolved on both paths.
    let _ = flow(&up, &srv, 500, 1, |_| {});

    let before_tx: Vec<u64> = routers.iter().map(|r| r.transmitted("r-s")).collect();
    let fail_at = Duration::from_secs(2);
    let rate = 1000;
    let (sent_at, got) = flow(&up, &srv, rate, 8, |start| {
        let wait = (start + fail_at).saturating_duration_since(Instant::now());
        thread::sleep(wait);
        // r2 dies silently: its end of the link to the bridge goes down.
        ipn(&routers[1].ns, &["link", "set", "r-u", "down"]);
    });
    let carried: Vec<u64> =
        routers.iter().zip(&before_tx).map(|(r, b)| r.transmitted("r-s") - b).collect();
    let share = |from: Duration, to: Duration| -> (usize, usize) {
        let idx: Vec<usize> =
            (0..sent_at.len()).filter(|&k| sent_at[k] >= from && sent_at[k] < to).collect();
        (idx.iter().filter(|&&k| got[k]).count(), idx.len())
    };
    let last_lost =
        (0..sent_at.len()).filter(|&k| !got[k] && sent_at[k] >= fail_at).map(|k| sent_at[k]).max();
    let converged = last_lost.map_or(Duration::ZERO, |t| t.saturating_sub(fail_at));
    let (b_ok, b_all) = share(Duration::ZERO, fail_at);
    let (d_ok, d_all) = share(fail_at, fail_at + converged + Duration::from_millis(1));
    let (a_ok, a_all) =
        share(fail_at + converged + Duration::from_millis(1), Duration::from_secs(8));
    let pct = |ok: usize, all: usize| if all == 0 { 100.0 } else { 100.0 * ok as f64 / all as f64 };
    eprintln!(
        "bfd={bfd}: {rate} datagrams/s in 64 flows; r1 carried {}, r2 {}; delivered before the \
         failure {b_ok}/{b_all} ({:.1}%), during {d_ok}/{d_all} ({:.1}%), after {a_ok}/{a_all} \
         ({:.1}%); converged {converged:?} after r2 died",
        carried[0],
        carried[1],
        pct(b_ok, b_all),
        pct(d_ok, d_all),
        pct(a_ok, a_all)
    );
    assert!(pct(b_ok, b_all) > 99.0, "before the failure nearly everything arrives");
    assert!(carried[0] > 100 && carried[1] > 100, "both routers carried flows before: {carried:?}");
    assert!(a_all > 0 && pct(a_ok, a_all) > 99.9, "after convergence everything arrives via r1");
    // BFD: 3 x 100 ms; the hold time: 3 s after the last keepalive (sent every second); both
    // with room for a loaded machine.
    let bound = if bfd { Duration::from_millis(1500) } else { Duration::from_secs(8) };
    assert!(converged < bound, "converged in {converged:?}, more than {bound:?}");
    drop(routers);
    drop(birds);
    eprintln!("test took {:?}", started.elapsed());
}

#[test]
fn ecmp_over_two_routers_fails_over_within_a_second_with_bfd() {
    ecmp_failover(true);
}

#[test]
fn ecmp_over_two_routers_fails_over_within_the_hold_time() {
    ecmp_failover(false);
}

/// A hand-configured BIRD (`bird -f`); killed on drop.
struct PeerProcess(Child);

impl PeerProcess {
    fn bird(ns: &NetNs, conf: &Path, socket: &Path) -> Self {
        let stderr = conf.with_extension("stderr");
        let mut child = ns
            .command("bird")
            .arg("-f")
            .arg("-c")
            .arg(conf)
            .arg("-s")
            .arg(socket)
            .arg("-P")
            .arg(conf.with_extension("pid"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("spawn bird");
        thread::sleep(Duration::from_millis(300));
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "BIRD ({}) exited ({status}): {}",
                conf.display(),
                fs::read_to_string(&stderr).unwrap_or_default()
            );
        }
        Self(child)
    }
}

impl Drop for PeerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
