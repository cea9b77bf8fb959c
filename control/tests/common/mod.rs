//! Shared pieces of the namespace tests: the privilege gate, a [`Topology`] of host namespaces
//! around a router namespace whose kernel forwarding is off, with `sluice daemon` serving the
//! router's links, and readers of `sluice stats --json` and `sluice routes --json`.
//!
//! Everything a topology made is removed when it is dropped, also when the test panics: the
//! daemon is stopped, `sluice detach` unpins the test's own pin directory, and the namespaces
//! (with their veths) are deleted. On a panic the tail of the daemon's log is printed.

use std::{
    collections::BTreeMap,
    fmt, fs,
    net::{SocketAddr, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use ipnet::IpNet;
use serde::Deserialize;
use sluice_testbed::{
    lab::{self, Subnet},
    netns::{self, NetNs},
};

/// The `sluice` binary under test.
pub const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

/// How long a change may take to reach the dataplane, or a neighbour to be resolved.
pub const SETTLE: Duration = Duration::from_secs(10);

pub use sluice_testbed::privileged;

/// Polls `f` every 50 ms until it returns `Some`, or panics after `timeout` naming `what`.
pub fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// One host of a topology: its role (`c1`, `s1`, ...), namespace and subnet.
#[derive(Debug)]
pub struct Host {
    /// Short role name; the router's interface towards the host is `r-ROLE`.
    pub role: String,
    /// The host's namespace.
    pub ns: NetNs,
    /// The subnet of the host's link to the router.
    pub subnet: Subnet,
}

/// A router namespace (kernel forwarding off) with hosts linked to it, a pin directory of its
/// own, and the daemon when started. Removed on drop.
#[derive(Debug)]
pub struct Topology {
    daemon: Option<Child>,
    /// The pin directory of this topology's dataplane.
    pub pin_dir: PathBuf,
    log: PathBuf,
    /// The router namespace.
    pub router: NetNs,
    /// The hosts, in the order given to [`Topology::new`].
    pub hosts: Vec<Host>,
}

impl Topology {
    /// Creates the router and one host per `(role, subnet)`, linked by veths `r-ROLE` <-> `eth0`.
    pub fn new(hosts: &[(&str, u8)]) -> Self {
        let name = netns::unique_name("slt");
        let router = lab::router_namespace(&format!("{name}r"))
            .unwrap_or_else(|e| panic!("create the router namespace: {e:#}"));
        let mut made = Vec::new();
        for &(role, subnet) in hosts {
            let ns = lab::host_namespace(&format!("{name}{role}"))
                .unwrap_or_else(|e| panic!("create host namespace {role}: {e:#}"));
            lab::connect(&router, &format!("r-{role}"), &ns, Subnet(subnet))
                .unwrap_or_else(|e| panic!("link {role} to the router: {e:#}"));
            made.push(Host { role: role.to_owned(), ns, subnet: Subnet(subnet) });
        }
        for key in ["net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"] {
            let value = router.run("sysctl", &["-n", key]).expect("read sysctl");
            assert_eq!(value.trim(), "0", "{key} must be 0 in the router: only XDP may forward");
        }
        Self {
            daemon: None,
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/sluice-test-{name}")),
            log: std::env::temp_dir().join(format!("sluice-test-{name}.log")),
            router,
            hosts: made,
        }
    }

    /// The host with this role.
    pub fn host(&self, role: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.role == role)
            .unwrap_or_else(|| panic!("no host {role} in the topology"))
    }

    /// The host namespace with this role.
    pub fn ns(&self, role: &str) -> &NetNs {
        &self.host(role).ns
    }

    /// Starts `sluice daemon` in the router namespace, attached to every router interface, and
    /// waits until every connected prefix is in the dataplane.
    pub fn start_daemon(&mut self) {
        self.start_daemon_with(&[]);
    }

    /// Like [`Topology::start_daemon`], with more arguments for `sluice daemon` (such as
    /// `--netlink-recv-buffer BYTES`).
    pub fn start_daemon_with(&mut self, extra: &[&str]) {
        assert!(self.daemon.is_none(), "the daemon is already running");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open the daemon log");
        let mut cmd = self.router.command(SLUICE);
        cmd.arg("--pin-dir").arg(&self.pin_dir).arg("daemon");
        for h in &self.hosts {
            cmd.arg("--attach").arg(format!("r-{}", h.role));
        }
        cmd.args(extra);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            .spawn()
            .expect("spawn sluice daemon");
        self.daemon = Some(child);
        let want: Vec<IpNet> = self
            .hosts
            .iter()
            .flat_map(|h| [h.subnet.v4_prefix(), h.subnet.v6_prefix()])
            .map(|p| p.parse().unwrap())
            .collect();
        let deadline = Instant::now() + SETTLE;
        loop {
            self.assert_daemon_alive();
            let routes = self.try_routes().unwrap_or_default();
            if want.iter().all(|p| routes.iter().any(|r| r.prefix == *p)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not put the connected prefixes {want:?} into the dataplane \
                 within {SETTLE:?}"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Panics (with the log) when the daemon has exited.
    pub fn assert_daemon_alive(&mut self) {
        let exited = self.daemon.as_mut().and_then(|c| c.try_wait().expect("wait for the daemon"));
        if let Some(status) = exited {
            self.daemon = None;
            panic!("the daemon exited ({status}); its log:\n{}", self.log_tail(40));
        }
    }

    /// The daemon's process id, while it runs.
    pub fn daemon_pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(Child::id)
    }

    /// Kills the daemon with SIGKILL (no chance to clean up) and reaps it.
    pub fn kill_daemon(&mut self) {
        let mut child = self.daemon.take().expect("the daemon is not running");
        child.kill().expect("SIGKILL the daemon");
        child.wait().expect("reap the daemon");
    }

    /// The last `lines` lines of the daemon's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Runs `sluice --pin-dir PIN ARGS...`, returning its output or `None` if it failed.
    fn try_sluice(&self, args: &[&str]) -> Option<String> {
        netns::run(Command::new(SLUICE).arg("--pin-dir").arg(&self.pin_dir).args(args)).ok()
    }

    /// Runs `sluice --pin-dir PIN ARGS...` and panics if it fails.
    pub fn sluice(&self, args: &[&str]) -> String {
        netns::run(Command::new(SLUICE).arg("--pin-dir").arg(&self.pin_dir).args(args))
            .unwrap_or_else(|e| panic!("sluice {}: {e:#}", args.join(" ")))
    }

    /// `sluice stats --json`.
    pub fn stats(&self) -> Stats {
        let text = self.sluice(&["stats", "--json"]);
        let parsed: StatsJson = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("parse `sluice stats --json`: {e}\n{text}"));
        Stats(
            parsed
                .interfaces
                .into_iter()
                .map(|i| {
                    let counters = i.counters.into_iter().map(|(k, v)| (k, v.packets)).collect();
                    (i.name, IfaceStats { up: i.up, counters })
                })
                .collect(),
        )
    }

    fn try_routes(&self) -> Option<Vec<RouteJson>> {
        let text = self.try_sluice(&["routes", "--json"])?;
        let parsed: RoutesJson = serde_json::from_str(&text).ok()?;
        Some(parsed.routes)
    }

    /// `sluice routes --json`.
    pub fn routes(&self) -> Vec<RouteJson> {
        let text = self.sluice(&["routes", "--json"]);
        serde_json::from_str::<RoutesJson>(&text)
            .unwrap_or_else(|e| panic!("parse `sluice routes --json`: {e}\n{text}"))
            .routes
    }

    /// The dataplane's route for exactly `prefix`, if any.
    pub fn route(&self, prefix: &str) -> Option<RouteJson> {
        let prefix: IpNet = prefix.parse().expect("prefix");
        self.routes().into_iter().find(|r| r.prefix == prefix)
    }

    /// Waits until the dataplane's route for `prefix` satisfies `ok` (`None`: absent).
    pub fn wait_route(&self, prefix: &str, what: &str, ok: impl Fn(Option<&RouteJson>) -> bool) {
        let deadline = Instant::now() + SETTLE;
        loop {
            let route = self.route(prefix);
            if ok(route.as_ref()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the dataplane's route for {prefix} did not become {what} within {SETTLE:?}; \
                 it is {route:#?}"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Pings `dst` from the host `role` until a reply comes (the first packets may go to the
    /// kernel while the router's neighbour is resolved), or panics after [`SETTLE`].
    pub fn wait_ping(&self, role: &str, dst: &str) {
        let deadline = Instant::now() + SETTLE;
        loop {
            if ping_briefly(self.ns(role), dst, 1).received == 1 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{role} got no reply from {dst} within {SETTLE:?}\nstats: {}\nroutes: {:#?}",
                self.stats(),
                self.routes()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends one UDP datagram from each of `flows` sockets (distinct source ports) in host
    /// `role` to `dst`, from a thread inside the host's namespace.
    pub fn send_udp_flows(&self, role: &str, dst: SocketAddr, flows: usize) {
        let ns = NetNs::existing(self.ns(role).name());
        thread::spawn(move || {
            ns.enter().expect("enter the client namespace");
            let bind: SocketAddr = if dst.is_ipv4() {
                "0.0.0.0:0".parse().unwrap()
            } else {
                "[::]:0".parse().unwrap()
            };
            // All sockets stay open until every one has sent, so each has its own port.
            let sockets: Vec<UdpSocket> =
                (0..flows).map(|_| UdpSocket::bind(bind).expect("bind a UDP socket")).collect();
            for (i, s) in sockets.iter().enumerate() {
                s.send_to(format!("flow {i}").as_bytes(), dst).expect("send a UDP datagram");
                if i % 32 == 31 {
                    // Keep well under the veth rings' 256 frames.
                    thread::sleep(Duration::from_millis(2));
                }
            }
        })
        .join()
        .expect("UDP sender thread");
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(3);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if thread::panicking() {
            eprintln!(
                "--- last lines of the daemon's log ({}) ---\n{}\n---",
                self.log.display(),
                self.log_tail(40)
            );
        }
        if self.pin_dir.exists() {
            if let Err(e) =
                netns::run(Command::new(SLUICE).arg("--pin-dir").arg(&self.pin_dir).arg("detach"))
            {
                eprintln!("sluice detach failed: {e:#}");
            }
            // Whatever detach left: unlinking pins on bpffs is what removes them.
            let _ = fs::remove_dir_all(&self.pin_dir);
        }
        if !thread::panicking() {
            let _ = fs::remove_file(&self.log);
        }
        // The namespaces, and with them the veths, go when the fields drop.
    }
}

/// What `ping` reported.
#[derive(Debug, Clone, Copy)]
pub struct PingResult {
    /// Echo requests sent.
    pub transmitted: u64,
    /// Echo replies received.
    pub received: u64,
}

/// Runs `ping -c COUNT -i INTERVAL DST` in `ns`, waiting up to a second for the last reply, and
/// returns its summary.
pub fn ping(ns: &NetNs, dst: &str, count: u32, interval: &str) -> PingResult {
    ping_waiting(ns, dst, count, interval, "1")
}

/// Like [`ping`], but waits only 0.3 s for a reply: for probes, and where none may come.
pub fn ping_briefly(ns: &NetNs, dst: &str, count: u32) -> PingResult {
    ping_waiting(ns, dst, count, "0.01", "0.3")
}

fn ping_waiting(ns: &NetNs, dst: &str, count: u32, interval: &str, wait: &str) -> PingResult {
    let out = ns
        .command("ping")
        .args(["-q", "-n", "-c", &count.to_string(), "-i", interval, "-W", wait, dst])
        .output()
        .expect("run ping");
    parse_ping(&String::from_utf8_lossy(&out.stdout))
}

/// Starts `ping` in the background; [`finish_ping`] collects its summary.
pub fn spawn_ping(ns: &NetNs, dst: &str, count: u32, interval: &str) -> Child {
    ns.command("ping")
        .args(["-q", "-n", "-c", &count.to_string(), "-i", interval, "-W", "1", dst])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ping")
}

/// Waits for a ping started by [`spawn_ping`] and returns its summary.
pub fn finish_ping(child: Child) -> PingResult {
    let out = child.wait_with_output().expect("wait for ping");
    parse_ping(&String::from_utf8_lossy(&out.stdout))
}

fn parse_ping(text: &str) -> PingResult {
    let number_before = |word: &str| -> u64 {
        text.find(word)
            .and_then(|at| text[..at].split_whitespace().last()?.parse().ok())
            .unwrap_or_else(|| panic!("no '{word}' in ping's output:\n{text}"))
    };
    PingResult {
        transmitted: number_before(" packets transmitted"),
        received: number_before(" received"),
    }
}

/// The MAC address of `dev` in `ns`.
pub fn mac_of(ns: &NetNs, dev: &str) -> String {
    let text = ns.ip(&["-j", "link", "show", "dev", dev]).expect("ip link show");
    let v: serde_json::Value = serde_json::from_str(&text).expect("ip -j link show");
    v[0]["address"].as_str().expect("a MAC address").to_owned()
}

/// `ip -n NS ...`, panicking with the error on failure.
pub fn ip(ns: &NetNs, args: &[&str]) {
    ns.ip(args).unwrap_or_else(|e| panic!("ip -n {} {}: {e:#}", ns.name(), args.join(" ")));
}

/// Counters (packets by reason name) and state of one interface.
#[derive(Debug, Clone, Default)]
pub struct IfaceStats {
    /// The dataplane sees the interface up.
    pub up: bool,
    /// Packets by reason name.
    pub counters: BTreeMap<String, u64>,
}

/// A snapshot of `sluice stats --json`, by interface name.
#[derive(Debug, Clone, Default)]
pub struct Stats(pub BTreeMap<String, IfaceStats>);

impl Stats {
    /// Packets counted on `iface` for `reason` (0 when either is absent).
    pub fn get(&self, iface: &str, reason: &str) -> u64 {
        self.0.get(iface).and_then(|i| i.counters.get(reason)).copied().unwrap_or(0)
    }

    /// How many more packets `self` counts than `earlier` on `iface` for `reason`.
    pub fn delta(&self, earlier: &Self, iface: &str, reason: &str) -> u64 {
        let (now, then) = (self.get(iface, reason), earlier.get(iface, reason));
        assert!(now >= then, "counter {iface}/{reason} went backwards: {then} -> {now}");
        now - then
    }

    /// The sum over every `pass_*` reason on `iface`.
    pub fn passed(&self, iface: &str) -> u64 {
        self.0.get(iface).map_or(0, |i| {
            i.counters.iter().filter(|(k, _)| k.starts_with("pass_")).map(|(_, v)| v).sum()
        })
    }

    /// Whether the dataplane sees `iface` up.
    pub fn up(&self, iface: &str) -> Option<bool> {
        self.0.get(iface).map(|i| i.up)
    }
}

impl fmt::Display for Stats {
    /// Only the counters that are not zero, one interface a line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, i) in &self.0 {
            write!(f, "\n  {name} (up {}):", i.up)?;
            for (k, v) in i.counters.iter().filter(|(_, v)| **v > 0) {
                write!(f, " {k}={v}")?;
            }
        }
        Ok(())
    }
}

#[derive(Debug, Deserialize)]
struct StatsJson {
    interfaces: Vec<IfaceJson>,
}

#[derive(Debug, Deserialize)]
struct IfaceJson {
    name: String,
    #[serde(default)]
    up: bool,
    counters: BTreeMap<String, CounterJson>,
}

#[derive(Debug, Deserialize)]
struct CounterJson {
    packets: u64,
}

#[derive(Debug, Deserialize)]
struct RoutesJson {
    routes: Vec<RouteJson>,
}

/// One route of `sluice routes --json`.
#[derive(Debug, Clone, Deserialize)]
pub struct RouteJson {
    /// The prefix.
    pub prefix: IpNet,
    /// `connected`, `forward`, `ecmp`, `local`, ...
    pub action: String,
    /// Its next hops.
    #[serde(default)]
    pub nexthops: Vec<NextHopJson>,
}

/// One next hop of a [`RouteJson`].
#[derive(Debug, Clone, Deserialize)]
pub struct NextHopJson {
    /// Egress interface.
    #[serde(default)]
    pub dev: String,
    /// Gateway.
    #[serde(default)]
    pub via: Option<String>,
    /// The neighbour's MAC.
    #[serde(default)]
    pub mac: Option<String>,
    /// Whether the neighbour is resolved.
    #[serde(default)]
    pub resolved: bool,
}

impl RouteJson {
    /// Whether some next hop goes via `gateway` (compared as addresses).
    pub fn via(&self, gateway: &str) -> Option<&NextHopJson> {
        let gateway: std::net::IpAddr = gateway.parse().expect("gateway address");
        self.nexthops
            .iter()
            .find(|n| n.via.as_deref().and_then(|v| v.parse().ok()) == Some(gateway))
    }
}

/// Whether `path` is the pin directory of a live dataplane (it holds pinned maps).
pub fn pinned(path: &Path) -> bool {
    fs::read_dir(path).is_ok_and(|mut d| d.next().is_some())
}
