//! Namespace tests with a real routing daemon: BIRD 2 in peer namespaces announces prefixes over
//! BGP to a BIRD in the router namespace, which installs them into the router's kernel (its
//! kernel protocol merges equal paths into multipath routes); Sluice mirrors them into the
//! dataplane. Kernel forwarding is off in the router, so traffic that crosses was forwarded by
//! XDP. Announcement, withdrawal, session loss (the peer's BIRD killed, a link taken down) and
//! ECMP over two peers, IPv4 and IPv6.
//!
//! Each BIRD runs in its namespace (through `nsenter`) with its own configuration, control socket
//! and pid file in a directory of the test's own, and is killed when the test ends, also on panic;
//! on a panic the tail of each BIRD's log is printed. BGP runs with short timers (hold time 3 s,
//! connect delay and retry 1 s) so sessions come up and fail over within seconds.
//!
//! Needs root, bpffs and BIRD 2 (`bird2`, installed by `scripts/setup.sh`); without them a test
//! says why and returns, except with `CI=true`, where it fails. Run:
//! `sudo -E cargo test -p sluice --release --test bird`.

#[expect(dead_code, reason = "each test file uses a part of the shared helpers")]
mod common;

use std::{
    fmt::Write as _,
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use common::{RouteJson, SETTLE, Topology, ip, ping, ping_briefly, privileged, wait_until};
use sluice_testbed::{
    lab::{HOST_IF, Subnet},
    netns::{self, NetNs},
};

/// Echo requests per measured ping run.
const PINGS: u32 = 20;
/// UDP flows (distinct source ports) sent over the multipath route.
const FLOWS: usize = 128;
/// How long a BGP session may take to come up, or a change to travel BIRD -> kernel -> dataplane.
const BGP_SETTLE: Duration = Duration::from_secs(20);
/// The router's AS; peer `n` is AS 65000 + n.
const ROUTER_AS: u32 = 65000;

/// The prefix whose first address sits on each peer's loopback, so that only a route makes it
/// reachable from the router: `(prefix, address on lo, address with its length)`.
const SERVICE_V4: (&str, &str, &str) = ("10.99.0.0/24", "10.99.0.1", "10.99.0.1/32");
const SERVICE_V6: (&str, &str, &str) = ("fd00:99::/64", "fd00:99::1", "fd00:99::1/128");
/// More prefixes a peer announces besides the service prefix, of other lengths.
const MORE_V4: [&str; 2] = ["10.97.0.0/16", "10.96.4.0/22"];
const MORE_V6: [&str; 2] = ["fd00:97::/48", "fd00:96:0:4::/62"];

/// Whether the BIRD tests can run here: [`privileged`], and BIRD 2 (or later) installed. Without
/// BIRD a test says so and returns, except with `CI=true`, where it fails.
fn bird_ready() -> bool {
    if !privileged() {
        return false;
    }
    let problem = match Command::new("bird").arg("--version").output() {
        Ok(out) => {
            // BIRD prints its version on stderr.
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let major = text
                .trim()
                .strip_prefix("BIRD version ")
                .and_then(|v| v.split('.').next()?.parse::<u32>().ok());
            match major {
                Some(2..) if Command::new("birdc").arg("--help").output().is_ok() => return true,
                Some(2..) => "birdc is missing (package bird2)".to_owned(),
                _ => format!("`bird --version` said {:?}; BIRD 2 is needed", text.trim()),
            }
        }
        Err(e) => format!("BIRD is not installed (`bird`: {e}); scripts/setup.sh installs bird2"),
    };
    sluice_testbed::cannot_run("BIRD test", &problem);
    false
}

/// A directory of the test's own for BIRD's files; removed on drop unless the test panicked
/// with files in it.
#[derive(Debug)]
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let path = std::env::temp_dir().join(format!("sluice-{}", netns::unique_name("bird")));
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let empty = fs::read_dir(&self.0).map_or(true, |mut d| d.next().is_none());
        if thread::panicking() && !empty {
            eprintln!("BIRD's files are kept in {}", self.0.display());
        } else {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

/// One BIRD process in a namespace, with its configuration, control socket, pid file and log in
/// a test directory. Killed on drop.
#[derive(Debug)]
struct Bird {
    name: String,
    child: Option<Child>,
    socket: PathBuf,
    log: PathBuf,
}

impl Bird {
    /// Writes `config` (after a `log` line) to `DIR/NAME.conf` and starts `bird -f` with it in
    /// `ns`, waiting until its control socket answers.
    fn start(ns: &NetNs, dir: &Path, name: &str, config: &str) -> Self {
        let file = |ext: &str| dir.join(format!("{name}.{ext}"));
        let (conf, socket, pid, log, stderr) =
            (file("conf"), file("ctl"), file("pid"), file("log"), file("stderr"));
        fs::write(&conf, format!("log \"{}\" all;\n{config}", log.display()))
            .unwrap_or_else(|e| panic!("write {}: {e}", conf.display()));
        let child = ns
            .command("bird")
            .arg("-f")
            .arg("-c")
            .arg(&conf)
            .arg("-s")
            .arg(&socket)
            .arg("-P")
            .arg(&pid)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&stderr).expect("create BIRD's stderr file"))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn bird for {name}: {e}"));
        let mut bird = Self { name: name.to_owned(), child: Some(child), socket, log };
        wait_until(&format!("BIRD {name} to answer on its control socket"), SETTLE, || {
            if let Some(status) = bird.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bird.child = None;
                panic!(
                    "bird for {name} exited ({status}): {}\nconfiguration:\n{}",
                    fs::read_to_string(&stderr).unwrap_or_default(),
                    fs::read_to_string(&conf).unwrap_or_default()
                );
            }
            bird.try_birdc(&["show", "status"]).filter(|s| s.contains("Daemon is up")).map(drop)
        });
        bird
    }

    /// `birdc -s SOCKET ARGS...` (the control socket is a path, reachable from any namespace).
    fn try_birdc(&self, args: &[&str]) -> Option<String> {
        netns::run(Command::new("birdc").arg("-s").arg(&self.socket).args(args)).ok()
    }

    /// Like [`Bird::try_birdc`], panicking when birdc fails.
    fn birdc(&self, args: &[&str]) -> String {
        netns::run(Command::new("birdc").arg("-s").arg(&self.socket).args(args))
            .unwrap_or_else(|e| panic!("birdc {} for {}: {e:#}", args.join(" "), self.name))
    }

    /// Waits until each BGP protocol named is `Established`.
    fn wait_established(&self, protocols: &[&str]) {
        let deadline = Instant::now() + BGP_SETTLE;
        loop {
            let table = self.birdc(&["show", "protocols"]);
            let up = |p: &str| {
                table
                    .lines()
                    .any(|l| l.split_whitespace().next() == Some(p) && l.contains("Established"))
            };
            if protocols.iter().all(|p| up(p)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "BGP sessions {protocols:?} of {} not established within {BGP_SETTLE:?}:\n{}",
                self.name,
                self.birdc(&["show", "protocols", "all"])
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills the process with SIGKILL: its sessions drop without a NOTIFICATION.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        self.kill();
        if thread::panicking() {
            let log = fs::read_to_string(&self.log).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "--- last lines of BIRD {}'s log ({}) ---\n{}\n---",
                self.name,
                self.log.display(),
                lines[lines.len().saturating_sub(30)..].join("\n")
            );
        }
    }
}

/// A topology whose router and peers run BIRD. Fields drop in order: the BIRDs are killed
/// before their directory and the namespaces go.
struct BgpLab {
    router_bird: Bird,
    peer_birds: Vec<Bird>,
    _dir: TempDir,
    t: Topology,
}

/// The BGP timers both ends use: a dead session is noticed in 3 s, a new one is tried every
/// second.
const TIMERS: &str = "hold time 3; startup hold time 3; keepalive time 1; \
                      connect delay time 1; connect retry time 1; error wait time 1, 2;";

impl BgpLab {
    /// A client `c1` (subnet 1) and one peer per `(role, subnet)`, each announcing the service
    /// prefixes (the service addresses on its loopback) and [`MORE_V4`] / [`MORE_V6`]; BIRD in
    /// the router with an IPv4 and an IPv6 session to each peer; the daemon running. Returns once
    /// every session is established.
    fn new(peers: &[(&str, u8)]) -> Self {
        let mut hosts = vec![("c1", 1)];
        hosts.extend_from_slice(peers);
        let mut t = Topology::new(&hosts);
        t.start_daemon();
        let dir = TempDir::new();

        let mut router_conf = format!(
            "router id {};\n\
             protocol device {{ scan time 1; }}\n\
             protocol kernel kernel4 {{ ipv4 {{ import none; export all; }}; merge paths on; }}\n\
             protocol kernel kernel6 {{ ipv6 {{ import none; export all; }}; merge paths on; }}\n",
            Subnet(1).router_v4()
        );
        let mut peer_birds = Vec::new();
        for (n, &(role, subnet)) in (1..).zip(peers) {
            let s = Subnet(subnet);
            let peer_as = ROUTER_AS + n;
            let _ = write!(
                router_conf,
                "protocol bgp {role}v4 {{ local {} as {ROUTER_AS}; neighbor {} as {peer_as}; \
                 {TIMERS} ipv4 {{ import all; export none; }}; }}\n\
                 protocol bgp {role}v6 {{ local {} as {ROUTER_AS}; neighbor {} as {peer_as}; \
                 {TIMERS} ipv6 {{ import all; export none; }}; }}\n",
                s.router_v4(),
                s.host_v4(),
                s.router_v6(),
                s.host_v6(),
            );
            let ns = t.ns(role);
            ip(ns, &["addr", "add", SERVICE_V4.2, "dev", "lo"]);
            ip(ns, &["addr", "add", SERVICE_V6.2, "dev", "lo"]);
            let routes = |prefixes: &[&str]| {
                prefixes.iter().fold(String::new(), |mut out, p| {
                    let _ = write!(out, "route {p} unreachable; ");
                    out
                })
            };
            let peer_conf = format!(
                "router id {h4};\n\
                 protocol device {{ scan time 1; }}\n\
                 protocol static announce4 {{ ipv4; {r4} }}\n\
                 protocol static announce6 {{ ipv6; {r6} }}\n\
                 protocol bgp routerv4 {{ local {h4} as {peer_as}; neighbor {rt4} as {ROUTER_AS}; \
                 {TIMERS} ipv4 {{ import none; export where proto = \"announce4\"; }}; }}\n\
                 protocol bgp routerv6 {{ local {h6} as {peer_as}; neighbor {rt6} as {ROUTER_AS}; \
                 {TIMERS} ipv6 {{ import none; export where proto = \"announce6\"; }}; }}\n",
                h4 = s.host_v4(),
                h6 = s.host_v6(),
                rt4 = s.router_v4(),
                rt6 = s.router_v6(),
                r4 = routes(&[&[SERVICE_V4.0][..], &MORE_V4].concat()),
                r6 = routes(&[&[SERVICE_V6.0][..], &MORE_V6].concat()),
            );
            peer_birds.push(Bird::start(ns, &dir.0, role, &peer_conf));
        }
        let router_bird = Bird::start(&t.router, &dir.0, "router", &router_conf);
        let sessions: Vec<String> =
            peers.iter().flat_map(|(role, _)| [format!("{role}v4"), format!("{role}v6")]).collect();
        router_bird.wait_established(&sessions.iter().map(String::as_str).collect::<Vec<_>>());
        Self { router_bird, peer_birds, _dir: dir, t }
    }

    /// The BIRD of peer `role`.
    fn peer(&mut self, role: &str) -> &mut Bird {
        self.peer_birds
            .iter_mut()
            .find(|b| b.name == role)
            .unwrap_or_else(|| panic!("no BIRD for {role}"))
    }

    /// The kernel's routes for exactly `prefix` in the router's main table, as `ip -j` shows
    /// them.
    fn kernel_routes(&self, prefix: &str) -> Vec<serde_json::Value> {
        let family = if prefix.contains(':') { "-6" } else { "-4" };
        let text = self
            .t
            .router
            .ip(&["-j", family, "route", "show", "table", "main", "exact", prefix])
            .expect("ip route show");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse ip -j route: {e}\n{text}"))
    }

    /// Waits until the dataplane's route for `prefix` satisfies `ok`, for up to
    /// [`BGP_SETTLE`]; returns how long it took.
    fn wait_route(
        &self,
        prefix: &str,
        what: &str,
        ok: impl Fn(Option<&RouteJson>) -> bool,
    ) -> Duration {
        let start = Instant::now();
        loop {
            let route = self.t.route(prefix);
            if ok(route.as_ref()) {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < BGP_SETTLE,
                "the dataplane's route for {prefix} did not become {what} within \
                 {BGP_SETTLE:?}; it is {route:#?}\nthe kernel's: {:?}\nBIRD: {}",
                self.kernel_routes(prefix),
                self.router_bird.birdc(&["show", "route", "for", prefix, "all"])
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Every prefix a peer announces, IPv4 first.
fn announced() -> Vec<&'static str> {
    [&[SERVICE_V4.0][..], &MORE_V4, &[SERVICE_V6.0], &MORE_V6].concat()
}

/// Whether `r` forwards through a single next hop out of `dev` via the peer's address on it.
fn forwards_via(r: Option<&RouteJson>, dev: &str, subnet: Subnet) -> bool {
    r.is_some_and(|r| {
        let gw = if r.prefix.addr().is_ipv4() { subnet.host_v4() } else { subnet.host_v6() };
        r.action == "forward" && r.nexthops.len() == 1 && r.via(&gw).is_some_and(|n| n.dev == dev)
    })
}

/// Pings `dst` from c1 and checks that every echo was answered and that XDP carried the
/// requests out of `egress` and the replies back.
fn assert_crosses(t: &Topology, dst: &str, egress: &str) {
    t.wait_ping("c1", dst);
    let before = t.stats();
    let p = ping(t.ns("c1"), dst, PINGS, "0.01");
    let after = t.stats();
    let n = u64::from(PINGS);
    assert_eq!(p.received, n, "c1 -> {dst}: {p:?}, expected every echo answered; stats:{after}");
    assert!(
        after.delta(&before, "r-c1", "forwarded") >= n
            && after.delta(&before, egress, "transmitted") >= n,
        "{dst}: XDP should forward the {PINGS} echo requests from r-c1 out of {egress} (kernel \
         forwarding is off); stats:{after}"
    );
    assert!(
        after.delta(&before, egress, "forwarded") >= n
            && after.delta(&before, "r-c1", "transmitted") >= n,
        "{dst}: XDP should forward the {PINGS} echo replies from {egress} to r-c1; stats:{after}"
    );
}

/// Pings `dst` from c1 briefly and checks that nothing answered and XDP forwarded nothing.
fn assert_not_forwarded(t: &Topology, dst: &str, why: &str) {
    let before = t.stats();
    let p = ping_briefly(t.ns("c1"), dst, 3);
    let after = t.stats();
    assert_eq!(p.received, 0, "{dst} answered {why}");
    assert_eq!(
        after.delta(&before, "r-c1", "forwarded"),
        0,
        "XDP forwarded packets to {dst} {why}; stats:{after}"
    );
    assert!(
        after.delta(&before, "r-c1", "pass_no_route") >= 3,
        "packets to {dst} should count as pass_no_route on r-c1 {why}; stats:{after}"
    );
}

#[test]
fn bgp_announcement_withdrawal_and_session_loss_reach_the_dataplane() {
    if !bird_ready() {
        return;
    }
    let started = Instant::now();
    let mut lab = BgpLab::new(&[("p1", 3)]);
    let up = started.elapsed();
    let p1 = Subnet(3);

    // (a) Announced: every prefix reaches the dataplane via p1, and traffic crosses.
    let mut took = Duration::ZERO;
    for prefix in announced() {
        took = took.max(lab.wait_route(prefix, "forward via p1", |r| forwards_via(r, "r-p1", p1)));
        let kernel = lab.kernel_routes(prefix);
        assert!(
            kernel.len() == 1 && kernel[0]["protocol"] == "bird",
            "the router's kernel should hold {prefix} from BIRD: {kernel:?}"
        );
    }
    eprintln!("BGP up and announced prefixes in the dataplane {up:?} after start ({took:?})");
    for dst in [SERVICE_V4.1, SERVICE_V6.1] {
        assert_crosses(&lab.t, dst, "r-p1");
    }

    // (b) Withdrawn by disabling the static protocols that originate them.
    let at = Instant::now();
    for proto in ["announce4", "announce6"] {
        let out = lab.peer("p1").birdc(&["disable", proto]);
        assert!(out.contains("disabled"), "birdc disable {proto}: {out}");
    }
    for prefix in announced() {
        lab.wait_route(prefix, "absent after the withdrawal", |r| r.is_none());
        assert!(lab.kernel_routes(prefix).is_empty(), "{prefix} still in the router's kernel");
    }
    eprintln!("withdrawal reached the dataplane in {:?}", at.elapsed());
    for dst in [SERVICE_V4.1, SERVICE_V6.1] {
        assert_not_forwarded(&lab.t, dst, "after the peer withdrew its routes");
    }

    // Announced again: back in the dataplane, traffic crosses again.
    for proto in ["announce4", "announce6"] {
        let out = lab.peer("p1").birdc(&["enable", proto]);
        assert!(out.contains("enabled"), "birdc enable {proto}: {out}");
    }
    for prefix in announced() {
        lab.wait_route(prefix, "forward via p1 again", |r| forwards_via(r, "r-p1", p1));
    }
    for dst in [SERVICE_V4.1, SERVICE_V6.1] {
        assert_crosses(&lab.t, dst, "r-p1");
    }

    // (c) Session loss: the peer's BIRD dies; the router's BIRD drops its routes.
    let at = Instant::now();
    lab.peer("p1").kill();
    for prefix in announced() {
        lab.wait_route(prefix, "absent after the peer's BIRD died", |r| r.is_none());
    }
    eprintln!("session loss reached the dataplane in {:?}", at.elapsed());
    for dst in [SERVICE_V4.1, SERVICE_V6.1] {
        assert_not_forwarded(&lab.t, dst, "after the BGP session was lost");
    }
    lab.t.assert_daemon_alive();
    eprintln!("test took {:?}", started.elapsed());
}

#[test]
fn bgp_ecmp_over_two_peers_spreads_flows_and_collapses_when_one_goes() {
    if !bird_ready() {
        return;
    }
    let started = Instant::now();
    let mut lab = BgpLab::new(&[("p1", 3), ("p2", 4)]);
    let (p1, p2) = (Subnet(3), Subnet(4));

    for (prefix, dst) in [(SERVICE_V4.0, SERVICE_V4.1), (SERVICE_V6.0, SERVICE_V6.1)] {
        let v4 = !prefix.contains(':');
        let (gw1, gw2) =
            if v4 { (p1.host_v4(), p2.host_v4()) } else { (p1.host_v6(), p2.host_v6()) };
        lab.wait_route(prefix, &format!("ecmp via {gw1} and {gw2}"), |r| {
            r.is_some_and(|r| {
                r.action == "ecmp"
                    && r.via(&gw1).is_some_and(|n| n.dev == "r-p1")
                    && r.via(&gw2).is_some_and(|n| n.dev == "r-p2")
            })
        });
        let kernel = lab.kernel_routes(prefix);
        assert!(
            kernel.len() == 1 && kernel[0]["nexthops"].as_array().is_some_and(|n| n.len() == 2),
            "BIRD should have installed {prefix} as one multipath route: {kernel:?}"
        );
        let dst = SocketAddr::new(dst.parse().unwrap(), 9);
        // The first datagrams may find a next hop unresolved (and go to the kernel, which does
        // not forward): send until both links have carried some.
        let start = lab.t.stats();
        wait_until(&format!("UDP flows to {dst} on both r-p1 and r-p2"), SETTLE, || {
            lab.t.send_udp_flows("c1", dst, 16);
            let now = lab.t.stats();
            (now.delta(&start, "r-p1", "transmitted") > 0
                && now.delta(&start, "r-p2", "transmitted") > 0)
                .then_some(())
        });
        let (on_p1, on_p2) = send_flows(&lab.t, dst);
        eprintln!("{FLOWS} flows to {dst} over BGP ECMP: {on_p1} on r-p1, {on_p2} on r-p2");
        // With 128 flows hashed over two members, one getting none has probability 2^-127.
        assert!(
            on_p1.min(on_p2) >= FLOWS as u64 / 8,
            "{FLOWS} flows to {dst} over a two-way BGP multipath route spread unevenly: \
             r-p1 {on_p1}, r-p2 {on_p2}"
        );
    }

    // p2's link goes down: its sessions drop, BIRD withdraws its paths, and the multipath
    // routes collapse to p1.
    let at = Instant::now();
    ip(lab.t.ns("p2"), &["link", "set", HOST_IF, "down"]);
    for prefix in announced() {
        lab.wait_route(prefix, "forward via p1 only", |r| forwards_via(r, "r-p1", p1));
        wait_until(&format!("BIRD to withdraw p2's path to {prefix}"), BGP_SETTLE, || {
            let kernel = lab.kernel_routes(prefix);
            (kernel.len() == 1 && kernel[0]["nexthops"].is_null() && kernel[0]["dev"] == "r-p1")
                .then_some(())
        });
    }
    eprintln!("p2's loss reached the kernel and the dataplane in {:?}", at.elapsed());
    for dst in [SERVICE_V4.1, SERVICE_V6.1] {
        let dst = SocketAddr::new(dst.parse().unwrap(), 9);
        let (on_p1, on_p2) = send_flows(&lab.t, dst);
        assert!(
            on_p1 >= FLOWS as u64 && on_p2 == 0,
            "with p2 gone, all {FLOWS} flows to {dst} should leave r-p1: r-p1 {on_p1}, \
             r-p2 {on_p2}"
        );
    }
    lab.t.assert_daemon_alive();
    drop(lab);
    eprintln!("test took {:?}", started.elapsed());
}

/// Sends [`FLOWS`] UDP flows from c1 to `dst` and returns how many frames XDP transmitted on
/// r-p1 and on r-p2 meanwhile.
fn send_flows(t: &Topology, dst: SocketAddr) -> (u64, u64) {
    let before = t.stats();
    t.send_udp_flows("c1", dst, FLOWS);
    let flows = FLOWS as u64;
    // Counters are read right after sending; give the last frames a moment to be counted.
    let after = wait_until("the datagrams to be counted", Duration::from_secs(2), || {
        let s = t.stats();
        (s.delta(&before, "r-c1", "forwarded") >= flows).then_some(s)
    });
    (after.delta(&before, "r-p1", "transmitted"), after.delta(&before, "r-p2", "transmitted"))
}
