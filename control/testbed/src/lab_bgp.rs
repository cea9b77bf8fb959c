//! The lab's BGP upstream: a peer namespace (`PREFIX-isp`) whose BIRD, configured by hand as an
//! ISP's would be, announces [`PREFIXES`] prefixes to the router. The router's side exists only
//! in Sluice's configuration: the lab commits its `protocols` section through the REST API, and
//! the lab's daemon runs BIRD (`--bird bird`) with what it renders from that.
//!
//! The lab makes the first administrator itself (its password in `STATE/lab-admin`) and a read
//! token for the CLI (`STATE/lab-token`), both kept with the lab's state.

use std::{
    fmt::Write as _,
    fs,
    io::Read as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::{
    api_lab::{RawClient, Session, in_namespace},
    lab::{MGMT_ROUTER_ADDR, RUN_DIR, STATE_DIR, Subnet},
    netns::{self, NetNs},
};

/// The peer's role (its namespace is PREFIX-isp, the router's port `r-isp`) and subnet.
pub const ROLE: &str = "isp";
/// The link between the router and the peer.
pub const SUBNET: Subnet = Subnet(4);
/// The router's AS.
pub const ROUTER_AS: u32 = 65000;
/// The peer's AS.
pub const PEER_AS: u32 = 65010;
/// The name of the router's BGP neighbour in its configuration (`protocols.bgp.isp`).
pub const NEIGHBOUR: &str = "isp";
/// What the peer announces: 172.16.0.0/12 cut into /24s.
pub const PREFIXES: usize = 4096;
/// An address inside the first announced prefix, on the peer's loopback: pinging it
/// from a client crosses the router by a route learnt over BGP.
pub const TARGET: &str = "172.16.0.1";
/// How long the session may take to come up, and the prefixes to reach the dataplane.
const SETTLE: Duration = Duration::from_mins(1);
/// The administrator the lab makes.
const ADMIN: &str = "admin";

fn peer_file(ext: &str) -> PathBuf {
    Path::new(RUN_DIR).join(format!("peer-bird.{ext}"))
}

/// The file holding the lab administrator's name and password (mode 0600).
pub fn admin_file() -> PathBuf {
    Path::new(STATE_DIR).join("lab-admin")
}

/// The file holding the lab's read token for the CLI (mode 0600).
pub fn token_file() -> PathBuf {
    Path::new(STATE_DIR).join("lab-token")
}

/// The peer's hand-written bird.conf: a static protocol holding [`PREFIXES`] /24s, exported
/// over BGP to the router; nothing imported, nothing written to the peer's kernel.
pub fn peer_config(log: &Path) -> String {
    let mut routes = String::new();
    for i in 0..PREFIXES {
        let _ = writeln!(routes, "    route 172.{}.{}.0/24 unreachable;", 16 + i / 256, i % 256);
    }
    format!(
        "# The lab's upstream (an ISP's router), configured by hand.\n\
         log \"{log}\" all;\n\
         router id {h};\n\
         protocol device {{ scan time 10; }}\n\
         protocol static announced {{\n    ipv4;\n{routes}}}\n\
         protocol bgp to_router {{\n    local {h} as {PEER_AS};\n    neighbor {r} as {ROUTER_AS};\n\
         \x20   hold time 9; keepalive time 3; connect retry time 2; error wait time 1, 10;\n\
         \x20   ipv4 {{ import none; export where proto = \"announced\"; }};\n}}\n",
        log = log.display(),
        h = SUBNET.host_v4(),
        r = SUBNET.router_v4(),
    )
}

/// Gives the peer namespace its announced address (on its loopback) and starts its BIRD (which
/// forks; its pid file is in [`RUN_DIR`]).
pub fn start_peer(peer: &NetNs) -> anyhow::Result<()> {
    fs::create_dir_all(RUN_DIR).with_context(|| format!("create {RUN_DIR}"))?;
    peer.batch(&format!("link set lo up\naddr add {TARGET}/32 dev lo\n"))?;
    let conf = peer_file("conf");
    fs::write(&conf, peer_config(&peer_file("log")))
        .with_context(|| format!("write {}", conf.display()))?;
    let _ = fs::remove_file(peer_file("pid"));
    netns::run(
        peer.command("bird")
            .arg("-c")
            .arg(&conf)
            .arg("-s")
            .arg(peer_file("ctl"))
            .arg("-P")
            .arg(peer_file("pid"))
            .stdin(Stdio::null()),
    )
    .context("start the peer's BIRD (scripts/setup.sh installs bird2)")?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !peer_file("pid").exists() {
        if Instant::now() > deadline {
            bail!("the peer's BIRD wrote no pid file; see {}", peer_file("log").display());
        }
        thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Stops the peer's BIRD, if it runs: true when there was one.
pub fn stop_peer() -> bool {
    let Some(pid) = fs::read_to_string(peer_file("pid")).ok().and_then(|s| s.trim().parse().ok())
    else {
        return false;
    };
    let _ = fs::remove_file(peer_file("pid"));
    let is_bird = |pid: i32| {
        fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| c.split(|&b| b == 0).next().is_some_and(|a| a.ends_with(b"bird")))
    };
    if !is_bird(pid) {
        return false;
    }
    let pid_t = nix::unistd::Pid::from_raw(pid);
    let _ = nix::sys::signal::kill(pid_t, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(5);
    while is_bird(pid) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    if is_bird(pid) {
        let _ = nix::sys::signal::kill(pid_t, nix::sys::signal::Signal::SIGKILL);
    }
    let _ = fs::remove_file(peer_file("ctl"));
    true
}

/// The router's BGP neighbour, as the lab commits it: `protocols` of the configuration.
pub fn router_protocols() -> Value {
    json!({
        "router_id": SUBNET.router_v4(),
        "bgp": {NEIGHBOUR: {
            "neighbor": SUBNET.host_v4(),
            "remote_as": PEER_AS,
            "local_as": ROUTER_AS,
            "hold_time": 9,
            "enabled": true,
            "import": {"prefixes": [{"prefix": "172.16.0.0/12", "le": 24}], "max_prefixes": 10000},
            "export": "none"
        }}
    })
}

/// An administrator's session with the lab daemon's API (inside the router namespace).
#[derive(Debug)]
pub struct Admin {
    ns: String,
    raw: RawClient,
    session: Session,
}

fn random_hex(bytes: usize) -> anyhow::Result<String> {
    let mut buf = vec![0u8; bytes];
    fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    }))
}

fn write_secret(path: &Path, text: &str) -> anyhow::Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("write {}", path.display()))?;
    std::io::Write::write_all(&mut f, text.as_bytes())?;
    Ok(())
}

impl Admin {
    /// Logs in as the lab's administrator, making it first with the setup token when the lab's
    /// state has none yet.
    pub fn login(router: &NetNs) -> anyhow::Result<Self> {
        let state = Path::new(STATE_DIR);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !state.join("tls/ca.pem").exists() {
            if Instant::now() > deadline {
                bail!("the daemon made no certificate in {STATE_DIR}/tls within 30 s");
            }
            thread::sleep(Duration::from_millis(100));
        }
        let raw = RawClient::new(&fs::read(state.join("tls/ca.pem"))?)?;
        let ns = router.name().to_owned();
        let session = in_namespace(&ns, || {
            while std::net::TcpStream::connect(crate::api_lab::LISTEN).is_err() {
                if Instant::now() > deadline {
                    bail!("the lab's API does not listen within 30 s");
                }
                thread::sleep(Duration::from_millis(100));
            }
            if let Ok(token) = fs::read_to_string(state.join("setup-token")) {
                let password = random_hex(16)?;
                let body = json!({"token": token.trim(), "username": ADMIN, "password": password});
                let a = raw.json(None, "POST", "/api/v1/setup", &[], Some(&body))?;
                if a.status != 201 {
                    bail!("POST /api/v1/setup: {} {}", a.status, a.text());
                }
                write_secret(&admin_file(), &format!("{ADMIN}\n{password}\n"))?;
            }
            let saved = fs::read_to_string(admin_file()).with_context(|| {
                format!(
                    "the lab's state has an administrator the lab did not make (no {}): \
                     remove {STATE_DIR} to start afresh",
                    admin_file().display()
                )
            })?;
            let mut lines = saved.lines();
            let (user, password) = (lines.next().unwrap_or(""), lines.next().unwrap_or(""));
            raw.login(None, user, password)
        })?;
        Ok(Self { ns, raw, session })
    }

    /// `METHOD /api/v1PATH` with a JSON body: status and answer.
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<(u16, Value)> {
        let a = in_namespace(&self.ns, || {
            self.raw.json(None, method, &format!("/api/v1{path}"), &self.session.headers(), body)
        })
        .with_context(|| format!("{method} /api/v1{path}"))?;
        Ok((a.status, a.json()))
    }

    fn get(&self, path: &str) -> anyhow::Result<Value> {
        match self.call("GET", path, None)? {
            (200, v) => Ok(v),
            (status, v) => bail!("GET /api/v1{path}: {status} {v}"),
        }
    }

    /// Stages the running configuration with `protocols` replaced and commits it; false when the
    /// running configuration has those protocols already.
    pub fn commit_protocols(&self, protocols: &Value) -> anyhow::Result<bool> {
        let mut config = self.get("/config?secrets=true")?["config"].clone();
        if config["protocols"] == *protocols {
            return Ok(false);
        }
        config["protocols"] = protocols.clone();
        let (status, v) = self.call("PUT", "/config/candidate", Some(&config))?;
        if status != 200 {
            bail!("PUT /api/v1/config/candidate: {status} {v}");
        }
        let message = json!({"message": "lab: BGP neighbour isp (the upstream)"});
        let (status, v) = self.call("POST", "/config/commit", Some(&message))?;
        if status != 200 {
            bail!("POST /api/v1/config/commit: {status} {v}");
        }
        Ok(true)
    }

    /// A read token for the CLI: the saved one while the API takes it, else a new one (saved).
    pub fn cli_token(&self) -> anyhow::Result<String> {
        if let Ok(token) = fs::read_to_string(token_file()) {
            let token = token.trim().to_owned();
            let bearer = format!("Bearer {token}");
            let a = in_namespace(&self.ns, || {
                self.raw.request(
                    None,
                    "GET",
                    "/api/v1/protocols",
                    &[("Authorization", &bearer)],
                    b"",
                )
            })?;
            if a.status == 200 {
                return Ok(token);
            }
        }
        let body = json!({"name": "lab-cli", "scope": "read"});
        let (status, v) = self.call("POST", "/tokens", Some(&body))?;
        let token = v["token"].as_str().filter(|_| status == 201 || status == 200);
        let token = token.with_context(|| format!("POST /api/v1/tokens: {status} {v}"))?;
        write_secret(&token_file(), &format!("{token}\n"))?;
        Ok(token.to_owned())
    }

    /// The neighbour's entry of `GET /protocols`, if listed.
    pub fn protocol(&self) -> Option<Value> {
        let v = self.get("/protocols").ok()?;
        v["protocols"].as_array()?.iter().find(|p| p["name"] == NEIGHBOUR).cloned()
    }

    /// Waits until the session is established and its prefixes are imported: the time taken.
    pub fn wait_established(&self) -> anyhow::Result<Duration> {
        let start = Instant::now();
        loop {
            let p = self.protocol();
            let done = p.as_ref().is_some_and(|p| {
                p["info"] == "Established"
                    && p["routes"]["imported"].as_u64() == Some(PREFIXES as u64)
            });
            if done {
                return Ok(start.elapsed());
            }
            if start.elapsed() > SETTLE {
                bail!(
                    "the BGP session with the peer is not established with its {PREFIXES} prefixes \
                     after {SETTLE:?}: {p:?}; see {STATE_DIR}/bird/bird.log and {}",
                    peer_file("log").display()
                );
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// How many routes of `GET /routes` within the announced block have origin `bird`, and how
    /// many there are in all.
    pub fn bird_routes(&self) -> anyhow::Result<(usize, usize)> {
        let v = self.get("/routes?q=172.&limit=10000")?;
        let block: ipnet::IpNet = "172.16.0.0/12".parse().expect("a prefix");
        let within: Vec<&Value> = v["routes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| {
                r["prefix"]
                    .as_str()
                    .and_then(|p| p.parse::<ipnet::IpNet>().ok())
                    .is_some_and(|p| p.prefix_len() == 24 && block.contains(&p))
            })
            .collect();
        Ok((within.iter().filter(|r| r["origin"] == "bird").count(), within.len()))
    }
}

/// The shell line that points the CLI's API commands (`sluice protocols`, `sluice config`...) at
/// the lab, with its read token.
pub fn cli_environment() -> String {
    format!(
        "export SLUICE_API=https://{MGMT_ROUTER_ADDR}:8443 SLUICE_CA={STATE_DIR}/tls/ca.pem SLUICE_TOKEN=$(cat {})",
        token_file().display()
    )
}

/// Runs `sluice protocols` against the lab from this machine (over the management link).
pub fn run_protocols_cli(token: &str) -> anyhow::Result<String> {
    netns::run(
        Command::new(crate::sluice_exe()?)
            .args(["protocols", "--api", &format!("https://{MGMT_ROUTER_ADDR}:8443"), "--ca"])
            .arg(Path::new(STATE_DIR).join("tls/ca.pem"))
            .env("SLUICE_TOKEN", token),
    )
}
