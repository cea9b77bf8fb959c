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
            let _ = write!(routes, "route 172.{}.{}.{}/26 unreachable; ", 16 + n, i / 4, i % 4 * 64);
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
            panic!("the peer's BIRD exited ({status}): {}", fs::read_to_string(&stderr).unwrap_or_default());
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
    t.routes()
        .iter()
        .filter(|r| r.prefix.prefix_len() == 26 && within.contains(&r.prefix))
        .count()
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
    let listed = wait_until("256 sessions listed", Duration::from_secs(60), || {
        let (a, _) = call("GET", "/protocols", None);
        (a.status == 200 && a.json()["protocols"].as_array().is_some_and(|p| p.len() == 256))
            .then_some(())
    });
    let _ = listed;
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
        anon_after < anon_before + (64 << 10),
        "the daemon grew {anon_before} -> {anon_after} KiB"
    );
    assert!(lab.alive(), "{}", lab.log_tail(20));
}
