//! `sluice-lab up|down`: a router lab in network namespaces on this machine. Two clients and a
//! server, each on its own subnet, sit behind a router namespace whose kernel forwarding is off
//! and whose interfaces `sluice daemon` serves, so every packet that crosses was forwarded by XDP.
//! A fourth namespace is an upstream whose BIRD announces a few thousand prefixes over BGP to the
//! router, whose side of the session is in Sluice's configuration ([`crate::lab_bgp`]).
//!
//! The building blocks (namespaces prepared for the lab, the addressing plan, a veth link between
//! the router and a host) are public: the namespace tests build their topologies with them.

use std::{
    fmt::Write as _,
    fs,
    io::{IsTerminal as _, Write as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use serde_json::Value;

use crate::{
    lab_bgp,
    netns::{self, NetNs},
};

/// Where the lab keeps its daemon's pid file and log.
pub const RUN_DIR: &str = "/run/sluice-lab";
/// The lab daemon's state directory (configuration store, certificate, setup token): kept
/// across `lab down` and `lab up`, like an appliance's.
pub const STATE_DIR: &str = "/var/lib/sluice-lab";
/// Where the lab daemon's API and console listen, inside the router namespace: on every address
/// there, so that this machine reaches them over the management link.
pub const API_LISTEN: &str = "0.0.0.0:8443";
/// The management link between this machine and the router namespace: this machine's end (its
/// name is PREFIX-mgmt) and the router's end, with their addresses (link-local, a /30).
pub const MGMT_HOST_ADDR: &str = "169.254.71.1/30";
/// The router's end of the management link: the console is at `https://169.254.71.2:8443/`.
pub const MGMT_ROUTER_ADDR: &str = "169.254.71.2";
/// The router's end of the management link (not a routed port: no XDP).
pub const MGMT_ROUTER_IF: &str = "mgmt0";
/// The name of a host's only interface, the far end of its link to the router.
pub const HOST_IF: &str = "eth0";

/// Options of `sluice-lab up` and `sluice-lab down`.
#[derive(Debug, Clone, clap::Args)]
pub struct LabOptions {
    /// Prefix of the namespaces' names: PREFIX-c1, PREFIX-c2, PREFIX-srv, PREFIX-isp (the BGP
    /// upstream) and PREFIX-router.
    #[arg(long, default_value = "sl", value_parser = parse_prefix)]
    pub prefix: String,
    /// Set the lab up and start the daemon, without the demonstration traffic.
    #[arg(long)]
    pub no_traffic: bool,
    /// Seconds of live counters to show after the pings (0: none).
    #[arg(long, default_value_t = 5, value_name = "SECS")]
    pub watch: u64,
}

impl Default for LabOptions {
    fn default() -> Self {
        Self { prefix: "sl".to_owned(), no_traffic: false, watch: 5 }
    }
}

fn parse_prefix(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > 20 {
        return Err("must be 1 to 20 characters".to_owned());
    }
    if !s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err("may only hold letters, digits, '-' and '_'".to_owned());
    }
    Ok(s.to_owned())
}

/// The lab's addressing plan: subnet `n` is `10.n.0.0/24` and `fd00:n::/64` (`n` in hex there),
/// the router is `.1` and `::1` on it, the host `.2` and `::2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet(pub u8);

impl Subnet {
    /// `10.n.0.0/24`.
    pub fn v4_prefix(self) -> String {
        format!("10.{}.0.0/24", self.0)
    }
    /// `fd00:n::/64`.
    pub fn v6_prefix(self) -> String {
        format!("fd00:{:x}::/64", self.0)
    }
    /// The router's IPv4 address, `10.n.0.1`.
    pub fn router_v4(self) -> String {
        format!("10.{}.0.1", self.0)
    }
    /// The host's IPv4 address, `10.n.0.2`.
    pub fn host_v4(self) -> String {
        format!("10.{}.0.2", self.0)
    }
    /// The router's IPv6 address, `fd00:n::1`.
    pub fn router_v6(self) -> String {
        format!("fd00:{:x}::1", self.0)
    }
    /// The host's IPv6 address, `fd00:n::2`.
    pub fn host_v6(self) -> String {
        format!("fd00:{:x}::2", self.0)
    }
}

/// Creates a router namespace: kernel forwarding off for both families (only XDP forwards), no
/// duplicate address detection, and IPv6 addresses kept while a link is down, as IPv4's are.
pub fn router_namespace(name: &str) -> anyhow::Result<NetNs> {
    let ns = NetNs::create(name)?;
    for (key, value) in [
        ("net.ipv4.ip_forward", "0"),
        ("net.ipv6.conf.all.forwarding", "0"),
        ("net.ipv6.conf.default.forwarding", "0"),
        ("net.ipv6.conf.all.accept_dad", "0"),
        ("net.ipv6.conf.default.accept_dad", "0"),
        ("net.ipv6.conf.all.keep_addr_on_down", "1"),
        ("net.ipv6.conf.default.keep_addr_on_down", "1"),
    ] {
        ns.sysctl(key, value)?;
    }
    Ok(ns)
}

/// Creates a host namespace, without duplicate address detection so addresses work at once.
pub fn host_namespace(name: &str) -> anyhow::Result<NetNs> {
    let ns = NetNs::create(name)?;
    ns.sysctl("net.ipv6.conf.all.accept_dad", "0")?;
    ns.sysctl("net.ipv6.conf.default.accept_dad", "0")?;
    Ok(ns)
}

/// Links `host` to `router` with a veth pair, `router_if` on the router and [`HOST_IF`] on the
/// host, addresses both ends from `subnet` and gives the host default routes via the router.
///
/// GRO is switched on at the host's end: frames the router's XDP program redirects into a veth
/// are only received by its peer when the peer runs an XDP program or has GRO on. The host's TX
/// checksum offload is switched off: a veth leaves a socket's checksum partial, to be finished
/// by a NIC; an XDP redirect hands the frame on as it is, and the receiver drops it as damaged.
pub fn connect(
    router: &NetNs,
    router_if: &str,
    host: &NetNs,
    subnet: Subnet,
) -> anyhow::Result<()> {
    router.ip(&[
        "link",
        "add",
        router_if,
        "type",
        "veth",
        "peer",
        "name",
        HOST_IF,
        "netns",
        host.name(),
    ])?;
    router.ip(&["link", "set", router_if, "up"])?;
    host.ip(&["link", "set", HOST_IF, "up"])?;
    router.ip(&["addr", "add", &format!("{}/24", subnet.router_v4()), "dev", router_if])?;
    router.ip(&[
        "addr",
        "add",
        &format!("{}/64", subnet.router_v6()),
        "dev",
        router_if,
        "nodad",
    ])?;
    host.ip(&["addr", "add", &format!("{}/24", subnet.host_v4()), "dev", HOST_IF])?;
    host.ip(&["addr", "add", &format!("{}/64", subnet.host_v6()), "dev", HOST_IF, "nodad"])?;
    host.ip(&["route", "replace", "default", "via", &subnet.router_v4()])?;
    host.ip(&["-6", "route", "replace", "default", "via", &subnet.router_v6()])?;
    host.run("ethtool", &["-K", HOST_IF, "gro", "on", "tx", "off"])
        .context("switch GRO on and TX checksum offload off (is ethtool installed?)")?;
    Ok(())
}

/// The lab's hosts: role (namespace suffix, and the router's interface is `r-ROLE`) and subnet;
/// the last is the BGP upstream.
const HOSTS: [(&str, Subnet); 4] =
    [("c1", Subnet(1)), ("c2", Subnet(2)), ("srv", Subnet(3)), (lab_bgp::ROLE, lab_bgp::SUBNET)];
const SERVER: Subnet = Subnet(3);

fn ns_name(opts: &LabOptions, role: &str) -> String {
    format!("{}-{role}", opts.prefix)
}

fn router_if(role: &str) -> String {
    format!("r-{role}")
}

fn pid_path() -> PathBuf {
    Path::new(RUN_DIR).join("daemon.pid")
}

fn log_path() -> PathBuf {
    Path::new(RUN_DIR).join("daemon.log")
}

/// Output with progress lines, bold where the terminal shows it.
struct Out {
    tty: bool,
}

impl Out {
    fn new() -> Self {
        Self { tty: std::io::stdout().is_terminal() }
    }

    fn step(&self, msg: &str) {
        if self.tty {
            println!("\x1b[1;34m==>\x1b[0m \x1b[1m{msg}\x1b[0m");
        } else {
            println!("==> {msg}");
        }
    }

    fn ok(&self, msg: &str) {
        if self.tty {
            println!("    \x1b[32m✓\x1b[0m {msg}");
        } else {
            println!("    ok: {msg}");
        }
    }

    fn warn(&self, msg: &str) {
        if self.tty {
            println!("    \x1b[33m!\x1b[0m {msg}");
        } else {
            println!("    warning: {msg}");
        }
    }
}

/// Sets the lab up (tearing an earlier one down first), starts the daemon in the router
/// namespace, waits for the routes to reach the dataplane, and shows traffic crossing it.
pub fn up(opts: &LabOptions) -> anyhow::Result<()> {
    let out = Out::new();
    preflight(&out)?;
    if lab_present(opts) {
        out.step("A lab is already up: taking it down first");
        down_quiet(opts, &out)?;
    } else {
        // The lab uses the default pin directory: never adopt (and so rewrite) a dataplane that
        // something else pinned there.
        let pin = default_pin_dir();
        if fs::read_dir(&pin).is_ok_and(|mut d| d.next().is_some()) {
            bail!(
                "{} holds a pinned dataplane that is not the lab's; remove it with `sluice detach` \
                 (or point SLUICE_PIN_DIR elsewhere) first",
                pin.display()
            );
        }
    }

    let router_name = ns_name(opts, "router");
    out.step(&format!(
        "Creating namespaces {router_name}, {}",
        HOSTS.map(|(role, _)| ns_name(opts, role)).join(", ")
    ));
    // The namespaces are kept only once everything is in place: an error half-way removes them.
    let router = router_namespace(&router_name)?;
    let mut hosts = Vec::new();
    for (role, subnet) in HOSTS {
        let host = host_namespace(&ns_name(opts, role))?;
        connect(&router, &router_if(role), &host, subnet)
            .with_context(|| format!("link {} to the router", host.name()))?;
        out.ok(&format!(
            "{:<10} {:<6} <-> {:<5} {} + {}",
            host.name(),
            HOST_IF,
            router_if(role),
            subnet.v4_prefix(),
            subnet.v6_prefix()
        ));
        hosts.push(host);
    }
    if let Err(e) = lab_bgp::start_peer(&hosts[3]) {
        lab_bgp::stop_peer();
        return Err(e.context("the BGP upstream"));
    }
    out.ok(&format!(
        "{}: BIRD (configured by hand, {}) announces {} prefixes of 172.16.0.0/12 from AS {}; \
         {} is on its loopback",
        hosts[3].name(),
        Path::new(RUN_DIR).join("peer-bird.conf").display(),
        lab_bgp::PREFIXES,
        lab_bgp::PEER_AS,
        lab_bgp::TARGET
    ));
    out.ok(&format!(
        "{router_name}: net.ipv4.ip_forward=0, net.ipv6.conf.all.forwarding=0 (only XDP forwards)"
    ));
    management_link(opts, &router).context("the management link")?;
    out.ok(&format!(
        "{} (this machine, {MGMT_HOST_ADDR}) <-> {MGMT_ROUTER_IF} ({MGMT_ROUTER_ADDR}): management, not routed",
        mgmt_if(opts)
    ));

    out.step(&format!("Starting `sluice daemon` in {router_name}"));
    let mut daemon = match start_daemon(&router) {
        Ok(d) => d,
        Err(e) => {
            lab_bgp::stop_peer();
            return Err(e);
        }
    };
    let router = router.keep();
    let hosts: Vec<NetNs> = hosts.into_iter().map(NetNs::keep).collect();
    out.ok(&format!("pid {}, log {}", daemon.id(), log_path().display()));
    wait_for_routes(&mut daemon)?;
    out.ok("the kernel's routes are in the dataplane");

    bgp(&out, &router, &mut daemon)?;
    out.step("The dataplane's routes (sluice routes)");
    print_routes()?;

    if !opts.no_traffic {
        show_traffic(opts, &out, &hosts, &mut daemon)?;
    }
    print_guide(opts, &router);
    Ok(())
}

/// Stops the lab's daemon, detaches the dataplane and deletes the lab's namespaces. Does nothing
/// (successfully) when no lab is up.
pub fn down(opts: &LabOptions) -> anyhow::Result<()> {
    let out = Out::new();
    if !lab_present(opts) {
        println!(
            "No lab is up (no {} and no namespace {}).",
            pid_path().display(),
            ns_name(opts, "router")
        );
        return Ok(());
    }
    out.step("Taking the lab down");
    down_quiet(opts, &out)?;
    out.ok("done");
    Ok(())
}

fn lab_present(opts: &LabOptions) -> bool {
    pid_path().exists()
        || Path::new(RUN_DIR).join("peer-bird.pid").exists()
        || std::iter::once("router")
            .chain(HOSTS.map(|(role, _)| role))
            .any(|role| Path::new("/run/netns").join(ns_name(opts, role)).exists())
}

fn down_quiet(opts: &LabOptions, out: &Out) -> anyhow::Result<()> {
    // Goes with the router namespace; removed here too in case the namespace went first.
    let _ = Command::new("ip").args(["link", "del", &mgmt_if(opts)]).output();
    if let Some(pid) = read_pid()? {
        stop_daemon(pid, out)?;
    }
    let _ = fs::remove_file(pid_path());
    if lab_bgp::stop_peer() {
        out.ok("the upstream's BIRD stopped");
    }
    // Unpins the links (which detaches the program) and the maps of the default pin directory.
    let detach =
        Command::new(crate::sluice_exe()?).arg("detach").output().context("run `sluice detach`")?;
    if detach.status.success() {
        out.ok("dataplane detached and unpinned");
    } else {
        out.warn(&format!(
            "`sluice detach` failed ({}): {}",
            detach.status,
            String::from_utf8_lossy(&detach.stderr).trim()
        ));
    }
    for role in std::iter::once("router").chain(HOSTS.map(|(role, _)| role)) {
        let name = ns_name(opts, role);
        if Path::new("/run/netns").join(&name).exists() {
            netns::run(Command::new("ip").args(["netns", "del", &name]))?;
            out.ok(&format!("namespace {name} deleted"));
        }
    }
    Ok(())
}

fn read_pid() -> anyhow::Result<Option<i32>> {
    match fs::read_to_string(pid_path()) {
        Ok(s) => Ok(Some(
            s.trim().parse().with_context(|| format!("bad pid file {}", pid_path().display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("read {}", pid_path().display())),
    }
}

/// Whether `pid` is still a live (not zombie) process running `sluice ... daemon`.
fn is_lab_daemon(pid: i32) -> bool {
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    let ours = args.iter().any(|a| a.ends_with(b"sluice")) && args.contains(&b"daemon".as_slice());
    let zombie = fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.starts_with('Z')))
        .unwrap_or(true);
    ours && !zombie
}

fn stop_daemon(pid: i32, out: &Out) -> anyhow::Result<()> {
    if !is_lab_daemon(pid) {
        out.ok(&format!("daemon (pid {pid}) is not running"));
        return Ok(());
    }
    kill(Pid::from_raw(pid), Signal::SIGTERM).with_context(|| format!("SIGTERM pid {pid}"))?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while is_lab_daemon(pid) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    if is_lab_daemon(pid) {
        out.warn(&format!("daemon (pid {pid}) ignored SIGTERM for 5 s: killing it"));
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    } else {
        out.ok(&format!("daemon (pid {pid}) stopped"));
    }
    Ok(())
}

/// The pin directory the lab's daemon and `sluice detach` use: the CLI's default.
fn default_pin_dir() -> PathBuf {
    std::env::var_os("SLUICE_PIN_DIR")
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from(sluice_dataplane::DEFAULT_PIN_DIR), PathBuf::from)
}

fn preflight(out: &Out) -> anyhow::Result<()> {
    if fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m)).ok() != Some(0) {
        bail!("the lab needs root (network namespaces, XDP, bpffs)");
    }
    let bpffs = nix::sys::statfs::statfs("/sys/fs/bpf")
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC);
    if !bpffs {
        out.step("Mounting bpffs on /sys/fs/bpf");
        netns::run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))?;
    }
    for tool in ["ip", "nsenter", "setsid", "ethtool", "ping", "bird"] {
        let found = std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()));
        if !found {
            bail!("`{tool}` is not installed (scripts/setup.sh installs what the lab needs)");
        }
    }
    Ok(())
}

/// This machine's end of the management link.
fn mgmt_if(opts: &LabOptions) -> String {
    format!("{}-mgmt", opts.prefix)
}

/// A veth pair from this machine into the router namespace, so that a browser here reaches the
/// console. Deleting the router namespace deletes it.
fn management_link(opts: &LabOptions, router: &NetNs) -> anyhow::Result<()> {
    let host_if = mgmt_if(opts);
    // A link left by a lab that was not taken down.
    let _ = Command::new("ip").args(["link", "del", &host_if]).output();
    netns::run(Command::new("ip").args([
        "link",
        "add",
        &host_if,
        "type",
        "veth",
        "peer",
        "name",
        MGMT_ROUTER_IF,
        "netns",
        router.name(),
    ]))?;
    netns::run(Command::new("ip").args(["addr", "add", MGMT_HOST_ADDR, "dev", &host_if]))?;
    netns::run(Command::new("ip").args(["link", "set", &host_if, "up"]))?;
    router.batch(&format!(
        "addr add {MGMT_ROUTER_ADDR}/30 dev {MGMT_ROUTER_IF}\nlink set {MGMT_ROUTER_IF} up\n"
    ))?;
    Ok(())
}

fn start_daemon(router: &NetNs) -> anyhow::Result<Child> {
    fs::create_dir_all(RUN_DIR).with_context(|| format!("create {RUN_DIR}"))?;
    let log =
        fs::File::create(log_path()).with_context(|| format!("create {}", log_path().display()))?;
    // nsenter (not `ip netns exec`, which hides bpffs) execs setsid, which execs the daemon in a
    // session of its own, so the pid stays the daemon's and the terminal's signals miss it.
    let mut cmd = router.command("setsid");
    cmd.arg(crate::sluice_exe()?).arg("daemon");
    for (role, _) in HOSTS {
        cmd.arg("--attach").arg(router_if(role));
    }
    fs::create_dir_all(STATE_DIR).with_context(|| format!("create {STATE_DIR}"))?;
    cmd.args(["--state-dir", STATE_DIR, "--listen", API_LISTEN, "--bird", "bird"]);
    let child = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("start `sluice daemon`")?;
    fs::write(pid_path(), format!("{}\n", child.id()))
        .with_context(|| format!("write {}", pid_path().display()))?;
    Ok(child)
}

fn log_tail(lines: usize) -> String {
    let log = fs::read_to_string(log_path()).unwrap_or_default();
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn check_alive(daemon: &mut Child) -> anyhow::Result<()> {
    if let Some(status) = daemon.try_wait()? {
        let _ = fs::remove_file(pid_path());
        bail!(
            "the daemon exited ({status}); last lines of {}:\n{}\n(`sluice-lab down` removes the namespaces)",
            log_path().display(),
            log_tail(30)
        );
    }
    Ok(())
}

/// Runs `sluice ARGS...` (this executable) and returns its standard output.
fn sluice(args: &[&str]) -> anyhow::Result<String> {
    netns::run(Command::new(crate::sluice_exe()?).args(args))
}

fn sluice_json(args: &[&str]) -> anyhow::Result<Value> {
    let text = sluice(args)?;
    serde_json::from_str(&text)
        .with_context(|| format!("parse the JSON of `sluice {}`", args.join(" ")))
}

fn wait_for_routes(daemon: &mut Child) -> anyhow::Result<()> {
    let want: Vec<ipnet::IpNet> = HOSTS
        .iter()
        .flat_map(|(_, s)| [s.v4_prefix(), s.v6_prefix()])
        .map(|p| p.parse().expect("lab prefixes parse"))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        check_alive(daemon)?;
        if let Ok(routes) = sluice_json(&["routes", "--json"]) {
            let have: Vec<ipnet::IpNet> = routes["routes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| r["prefix"].as_str()?.parse().ok())
                .collect();
            if want.iter().all(|p| have.contains(p)) {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!(
                "the lab's routes did not reach the dataplane within 30 s; last lines of {}:\n{}",
                log_path().display(),
                log_tail(30)
            );
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// Commits the router's BGP neighbour through the API, waits for the session and its prefixes,
/// and shows them: `sluice protocols`, and the routes' origin.
fn bgp(out: &Out, router: &NetNs, daemon: &mut Child) -> anyhow::Result<()> {
    out.step(&format!(
        "Configuring BGP with {} (AS {}) through the API: protocols.bgp.{}",
        lab_bgp::SUBNET.host_v4(),
        lab_bgp::PEER_AS,
        lab_bgp::NEIGHBOUR
    ));
    check_alive(daemon)?;
    let admin = lab_bgp::Admin::login(router)?;
    out.ok(&format!("logged in as the lab's administrator ({})", lab_bgp::admin_file().display()));
    let protocols = lab_bgp::router_protocols();
    let changed = admin.commit_protocols(&protocols)?;
    out.ok(&if changed {
        format!("committed protocols = {protocols}")
    } else {
        "the running configuration has the neighbour already".to_owned()
    });
    let took = admin.wait_established()?;
    check_alive(daemon)?;
    out.ok(&format!(
        "session established, {} prefixes imported, {:.1} s after the {}",
        lab_bgp::PREFIXES,
        took.as_secs_f64(),
        if changed { "commit" } else { "check" }
    ));
    let start = Instant::now();
    let block: ipnet::IpNet = "172.16.0.0/12".parse().expect("a prefix");
    loop {
        let table = sluice_json(&["routes", "--json"])?;
        let have = table["routes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["prefix"].as_str()?.parse::<ipnet::IpNet>().ok())
            .filter(|p| p.prefix_len() == 24 && block.contains(p))
            .count();
        if have == lab_bgp::PREFIXES {
            break;
        }
        if start.elapsed() > Duration::from_mins(1) {
            bail!(
                "the dataplane holds {have} of the {} announced prefixes after 60 s",
                lab_bgp::PREFIXES
            );
        }
        thread::sleep(Duration::from_millis(200));
    }
    let (bird, all) = admin.bird_routes()?;
    out.ok(&format!(
        "{all} announced prefixes in `sluice routes` ({:.1} s after the session), {bird} with origin bird",
        start.elapsed().as_secs_f64()
    ));
    if bird != lab_bgp::PREFIXES {
        out.warn(&format!("GET /api/v1/routes names origin bird for {bird} of them only"));
    }
    let token = admin.cli_token()?;
    out.step("sluice protocols");
    for line in lab_bgp::run_protocols_cli(&token)?.lines() {
        println!("      {line}");
    }
    Ok(())
}

/// Prints the dataplane's routes other than the router's own addresses and, in one line, those
/// learnt from the BGP upstream.
fn print_routes() -> anyhow::Result<()> {
    let routes = sluice_json(&["routes", "--json"])?;
    let mut local = 0;
    let block: ipnet::IpNet = "172.16.0.0/12".parse().expect("a prefix");
    let mut announced = 0;
    for route in routes["routes"].as_array().into_iter().flatten() {
        let action = route["action"].as_str().unwrap_or("?");
        if action == "local" {
            local += 1;
            continue;
        }
        let learnt = route["prefix"]
            .as_str()
            .and_then(|p| p.parse::<ipnet::IpNet>().ok())
            .is_some_and(|p| p.prefix_len() == 24 && block.contains(&p));
        if learnt {
            announced += 1;
            if announced > 2 {
                continue;
            }
        }
        // A connected route names its device; the others list next hops.
        let mut hops: Vec<String> =
            route["dev"].as_str().map(|dev| format!("dev {dev}")).into_iter().collect();
        hops.extend(route["nexthops"].as_array().into_iter().flatten().map(|h| {
            match (h["via"].as_str(), h["dev"].as_str()) {
                (Some(via), Some(dev)) => format!("via {via} dev {dev}"),
                (None, Some(dev)) => format!("dev {dev}"),
                _ => String::new(),
            }
        }));
        println!(
            "      {:<16} {:<10} {}",
            route["prefix"].as_str().unwrap_or("?"),
            action,
            hops.join(", ")
        );
    }
    if announced > 2 {
        println!("      ... and {} more /24s of 172.16.0.0/12 (BGP)", announced - 2);
    }
    println!("      (and {local} local routes: the router's own addresses)");
    Ok(())
}

/// What one `ping` run reported.
struct PingSummary {
    transmitted: u64,
    received: u64,
    rtt_avg_ms: Option<f64>,
}

fn ping(host: &NetNs, dst: &str, count: u32, interval: &str) -> anyhow::Result<PingSummary> {
    let output = host
        .command("ping")
        .args(["-q", "-n", "-c", &count.to_string(), "-i", interval, "-W", "1", dst])
        .output()
        .context("run ping")?;
    let text = String::from_utf8_lossy(&output.stdout);
    let number_before = |word: &str| -> Option<u64> {
        let at = text.find(word)?;
        text[..at].split_whitespace().last()?.parse().ok()
    };
    let rtt_avg_ms = text
        .lines()
        .find(|l| l.starts_with("rtt"))
        .and_then(|l| l.split('=').nth(1)?.trim().split('/').nth(1)?.parse().ok());
    Ok(PingSummary {
        transmitted: number_before(" packets transmitted").unwrap_or(0),
        received: number_before(" received").unwrap_or(0),
        rtt_avg_ms,
    })
}

fn show_traffic(
    opts: &LabOptions,
    out: &Out,
    hosts: &[NetNs],
    daemon: &mut Child,
) -> anyhow::Result<()> {
    out.step(&format!(
        "Pinging the server {} / {} from each client, and {} (learnt over BGP) from {}",
        SERVER.host_v4(),
        SERVER.host_v6(),
        lab_bgp::TARGET,
        hosts[0].name()
    ));
    let before = Counters::read()?;
    let mut pings: Vec<(&NetNs, String)> = Vec::new();
    for client in &hosts[..2] {
        pings.extend([(client, SERVER.host_v4()), (client, SERVER.host_v6())]);
    }
    pings.push((&hosts[0], lab_bgp::TARGET.to_owned()));
    for (client, dst) in pings {
        // The first packets to an unresolved neighbour go to the kernel, which (forwarding
        // off) drops them while the daemon has the neighbour resolved: wait for that.
        let deadline = Instant::now() + Duration::from_secs(10);
        while ping(client, &dst, 1, "1")?.received == 0 && Instant::now() < deadline {
            check_alive(daemon)?;
        }
        let p = ping(client, &dst, 3, "0.2")?;
        let line = format!(
            "{:<10} -> {:<10} {}/{} replies{}",
            client.name(),
            dst,
            p.received,
            p.transmitted,
            p.rtt_avg_ms.map(|ms| format!(", rtt avg {ms:.3} ms")).unwrap_or_default()
        );
        if p.received > 0 && p.received == p.transmitted {
            out.ok(&line);
        } else {
            out.warn(&format!("{line} (see {})", log_path().display()));
        }
    }
    let after = Counters::read()?;
    let forwarded: u64 = after
        .rows
        .iter()
        .map(|r| r.forwarded.saturating_sub(before.get(&r.name).map_or(0, |b| b.forwarded)))
        .sum();
    out.ok(&format!(
        "XDP forwarded {forwarded} packets meanwhile; the router's kernel forwarding is off"
    ));

    if opts.watch > 0 {
        out.step(&format!(
            "Live counters for {} s (packets; pings running in the background)",
            opts.watch
        ));
        // Running a little longer than the view, so that its last second has traffic too.
        let seconds = (opts.watch + 1).to_string();
        let mut background = Vec::new();
        for (client, dst) in [(&hosts[0], SERVER.host_v4()), (&hosts[1], SERVER.host_v6())] {
            background.push(
                client
                    .command("ping")
                    .args(["-q", "-i", "0.05", "-w", &seconds, &dst])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .context("start background ping")?,
            );
        }
        let result = watch_counters(opts.watch, daemon);
        for mut p in background {
            let _ = p.kill();
            let _ = p.wait();
        }
        result?;
    }
    Ok(())
}

/// Per-interface totals of `sluice stats --json`.
struct Counters {
    rows: Vec<Row>,
}

struct Row {
    name: String,
    forwarded: u64,
    transmitted: u64,
    passed: u64,
    dropped: u64,
}

impl Counters {
    fn read() -> anyhow::Result<Self> {
        let stats = sluice_json(&["stats", "--json"])?;
        let mut rows = Vec::new();
        for iface in stats["interfaces"].as_array().into_iter().flatten() {
            let counters = iface["counters"].as_object();
            let packets = |pred: &dyn Fn(&str) -> bool| -> u64 {
                counters
                    .into_iter()
                    .flatten()
                    .filter(|(k, _)| pred(k))
                    .filter_map(|(_, v)| v["packets"].as_u64())
                    .sum()
            };
            rows.push(Row {
                name: iface["name"].as_str().unwrap_or("?").to_owned(),
                forwarded: packets(&|k| k == "forwarded"),
                transmitted: packets(&|k| k == "transmitted"),
                passed: packets(&|k| k.starts_with("pass_")),
                dropped: packets(&|k| k.starts_with("drop_")),
            });
        }
        rows.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Self { rows })
    }

    fn get(&self, name: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.name == name)
    }
}

fn watch_counters(seconds: u64, daemon: &mut Child) -> anyhow::Result<()> {
    let tty = std::io::stdout().is_terminal();
    let mut previous = Counters::read()?;
    let mut printed = 0;
    for _ in 0..seconds {
        thread::sleep(Duration::from_secs(1));
        check_alive(daemon)?;
        let now = Counters::read()?;
        let mut text = String::new();
        writeln!(
            text,
            "      {:<12} {:>22} {:>22} {:>10} {:>8}",
            "interface", "forwarded", "transmitted", "passed up", "dropped"
        )?;
        for row in &now.rows {
            let prev = previous.get(&row.name);
            let rate = |f: fn(&Row) -> u64| f(row).saturating_sub(prev.map_or(0, f));
            writeln!(
                text,
                "      {:<12} {:>22} {:>22} {:>10} {:>8}",
                row.name,
                format!("{} (+{}/s)", row.forwarded, rate(|r| r.forwarded)),
                format!("{} (+{}/s)", row.transmitted, rate(|r| r.transmitted)),
                row.passed,
                row.dropped
            )?;
        }
        if tty && printed > 0 {
            // Redraw in place.
            print!("\x1b[{printed}A");
        }
        print!("{text}");
        std::io::stdout().flush()?;
        printed = text.lines().count();
        previous = now;
    }
    Ok(())
}

fn print_guide(opts: &LabOptions, router: &NetNs) {
    let exe = crate::sluice_exe().map_or_else(|_| "sluice".to_owned(), |p| p.display().to_string());
    let c1 = format!("nsenter --net=/run/netns/{}", ns_name(opts, "c1"));
    let srv = ns_name(opts, "srv");
    let router = router.name();
    let look = [
        (format!("{exe} stats --watch 1"), "live counters per interface and reason".to_owned()),
        (format!("{exe} routes"), "the dataplane's routes and next hops".to_owned()),
        (
            format!("{exe} protocols"),
            "the BGP session with the upstream (with the export above)".to_owned(),
        ),
        (format!("{c1} ping {}", lab_bgp::TARGET), "traffic by a route learnt over BGP".to_owned()),
        (
            format!("birdc -s {RUN_DIR}/peer-bird.ctl show protocols"),
            "the upstream's side (its hand-written bird.conf beside)".to_owned(),
        ),
        (format!("{c1} ping {}", SERVER.host_v4()), "traffic from a client".to_owned()),
        (format!("{c1} ping {}", SERVER.host_v6()), "... over IPv6".to_owned()),
        (
            format!("ip -n {router} route"),
            "the kernel's routes, which the daemon mirrors".to_owned(),
        ),
        (
            format!("ip -n {router} route add 10.99.0.0/24 via {}", SERVER.host_v4()),
            format!("a route change (10.99.0.1 would go on lo in {srv})"),
        ),
        (format!("less {}", log_path().display()), "the daemon's log".to_owned()),
        (
            format!("https://{MGMT_ROUTER_ADDR}:8443/"),
            format!("the web console, from a browser here (its authority: {STATE_DIR}/tls/ca.pem)"),
        ),
        (
            format!(
                "curl --cacert {STATE_DIR}/tls/ca.pem https://{MGMT_ROUTER_ADDR}:8443/api/v1/health"
            ),
            "the REST API".to_owned(),
        ),
        (
            format!("cat {}", lab_bgp::admin_file().display()),
            "the console's administrator and password, made by the lab".to_owned(),
        ),
    ];
    let width = look.iter().map(|(c, _)| c.len()).max().unwrap_or(0);
    println!();
    println!("The lab is up; forwarding continues until it is taken down. Look around:");
    println!("  {}", lab_bgp::cli_environment());
    for (command, what) in &look {
        println!("  {command:<width$}   # {what}");
    }
    println!("Stop it:");
    let lab = std::env::current_exe()
        .map_or_else(|_| "sluice-lab".to_owned(), |p| p.display().to_string());
    println!("  {:<width$}   # or: {lab} down", "make lab-down");
}
