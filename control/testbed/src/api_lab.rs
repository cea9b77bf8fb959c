//! A daemon serving the API in a router namespace of its own, with a fresh state directory, for
//! `make bench-api` and the hostile-client tests; and a raw HTTPS client for them that chooses
//! its source address and writes exactly the bytes it is told (slowly, partly, or not at all).

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::{
    lab::{self, Subnet},
    netns::{self, NetNs},
};

/// Where the daemon's API listens, inside the router namespace.
pub const LISTEN: &str = "127.0.0.1:8443";

/// The administrator [`ApiLab::setup_admin`] makes.
pub const ADMIN: (&str, &str) = ("admin", "correct horse battery staple");

/// A daemon serving the API in a namespace of its own (one host linked to it), removed on drop.
#[derive(Debug)]
pub struct ApiLab {
    daemon: Child,
    /// The daemon's state directory.
    pub state: PathBuf,
    /// The namespace the daemon and the API live in.
    pub router: NetNs,
    _host: NetNs,
    pin: PathBuf,
    /// The daemon's options beside the lab's own.
    extra: Vec<String>,
}

impl Drop for ApiLab {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
        let _ = std::fs::remove_dir_all(&self.state);
        let _ = std::fs::remove_dir_all(&self.pin);
    }
}

impl ApiLab {
    /// Starts a daemon with `--listen LISTEN --state-dir` and `extra` daemon options; returns
    /// once its API has its certificate and setup token.
    pub fn start(prefix: &str, extra: &[&str]) -> anyhow::Result<Self> {
        let name = netns::unique_name(prefix);
        let router = lab::router_namespace(&format!("{name}r"))?;
        let host = lab::host_namespace(&format!("{name}h"))?;
        lab::connect(&router, "r-h", &host, Subnet(1))?;
        let state = std::env::temp_dir().join(format!("sluice-api-lab-{name}"));
        std::fs::create_dir_all(&state)?;
        let pin = PathBuf::from("/sys/fs/bpf").join(format!("sluice-api-lab-{name}"));
        let extra: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
        let daemon = spawn(&router, &pin, &state, &extra)?;
        let mut lab = Self { daemon, state, router, _host: host, pin, extra };
        let deadline = Instant::now() + Duration::from_secs(15);
        while !lab.state.join("tls/ca.pem").exists() || !lab.state.join("setup-token").exists() {
            if let Some(status) = lab.daemon.try_wait()? {
                bail!("the daemon exited ({status}): {}", lab.log_tail(20));
            }
            if Instant::now() > deadline {
                bail!("the daemon did not start its API: {}", lab.log_tail(20));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // The certificate is written before the listener binds.
        lab.wait_listening(deadline)?;
        Ok(lab)
    }

    /// Waits until the API accepts connections.
    fn wait_listening(&self, deadline: Instant) -> anyhow::Result<()> {
        in_namespace(self.router.name(), || {
            while TcpStream::connect(LISTEN).is_err() {
                if Instant::now() > deadline {
                    bail!("the API does not listen on {LISTEN}: {}", self.log_tail(20));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(())
        })
    }

    /// Stops the daemon (SIGTERM), lets `offline` work on its store while it is down, and starts
    /// it again with the same options; returns once its API listens.
    pub fn restart(&mut self, offline: impl FnOnce(&sluice_store::Store)) -> anyhow::Result<()> {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.pid())?);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.alive() {
            if Instant::now() > deadline {
                bail!("the daemon did not stop: {}", self.log_tail(20));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        offline(&sluice_store::Store::open(&self.state.join("db"))?);
        self.daemon = spawn(&self.router, &self.pin, &self.state, &self.extra)?;
        self.wait_listening(Instant::now() + Duration::from_secs(15))
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.daemon.id()
    }

    /// Whether the daemon still runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.daemon.try_wait(), Ok(None))
    }

    /// The daemon's resident memory, KiB (`VmRSS`): with the pages of the dataplane's maps it
    /// has touched (mapped, shared with the kernel).
    pub fn rss_kib(&self) -> u64 {
        self.status_kib("VmRSS:")
    }

    /// The daemon's own resident memory, KiB (`RssAnon`: heap, stacks; not the maps' pages,
    /// which grow as the dataplane's tables are first touched, whatever the API does).
    pub fn anon_kib(&self) -> u64 {
        self.status_kib("RssAnon:")
    }

    /// [`Self::anon_kib`] once the daemon's start-up is over: two reads half a second apart
    /// within 1 MiB of each other (5 s at most).
    pub fn settled_anon_kib(&self) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut last = self.anon_kib();
        loop {
            std::thread::sleep(Duration::from_millis(500));
            let now = self.anon_kib();
            if now.abs_diff(last) < 1024 || Instant::now() > deadline {
                return now;
            }
            last = now;
        }
    }

    fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()));
        status
            .ok()
            .and_then(|s| {
                let line = s.lines().find(|l| l.starts_with(field))?.to_owned();
                line.split_whitespace().nth(1)?.parse().ok()
            })
            .unwrap_or(0)
    }

    /// The daemon's open file descriptors.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid())).map_or(0, Iterator::count)
    }

    /// The last `lines` of the daemon's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(self.state.join("daemon.log")).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The router namespace's name (for [`in_namespace`]).
    pub fn ns(&self) -> &str {
        self.router.name()
    }

    /// An agent trusting the lab's certificate authority (use it inside the namespace).
    pub fn agent(&self) -> anyhow::Result<ureq::Agent> {
        let pem = std::fs::read(self.state.join("tls/ca.pem"))?;
        let cert = ureq::tls::Certificate::from_pem(&pem)?;
        let tls = ureq::tls::TlsConfig::builder()
            .root_certs(ureq::tls::RootCerts::Specific(Arc::new(vec![cert])))
            .build();
        let config =
            ureq::Agent::config_builder().tls_config(tls).http_status_as_error(false).build();
        Ok(ureq::Agent::new_with_config(config))
    }

    /// A raw client of the API (use it inside the namespace).
    pub fn raw(&self) -> anyhow::Result<RawClient> {
        RawClient::new(&std::fs::read(self.state.join("tls/ca.pem"))?)
    }

    /// Makes the first administrator ([`ADMIN`]) with the setup token and logs in: its session.
    /// Call it inside the namespace.
    pub fn setup_admin(&self) -> anyhow::Result<Session> {
        let setup = std::fs::read_to_string(self.state.join("setup-token"))?;
        let raw = self.raw()?;
        let body = json!({"token": setup.trim(), "username": ADMIN.0, "password": ADMIN.1});
        let a = raw.json(None, "POST", "/api/v1/setup", &[], Some(&body))?;
        if a.status != 201 {
            bail!("POST /setup: {} {}", a.status, a.text());
        }
        raw.login(None, ADMIN.0, ADMIN.1)
    }
}

/// Starts `sluice daemon` in `router` with the lab's options and `extra`, its output appended to
/// `STATE/daemon.log`.
fn spawn(router: &NetNs, pin: &Path, state: &Path, extra: &[String]) -> anyhow::Result<Child> {
    let exe = crate::sluice_exe()?;
    let log =
        std::fs::OpenOptions::new().create(true).append(true).open(state.join("daemon.log"))?;
    router
        .command(exe.to_str().context("a UTF-8 path")?)
        .arg("--pin-dir")
        .arg(pin)
        .args(["daemon", "--attach", "r-h", "--listen", LISTEN, "--state-dir"])
        .arg(state)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting the daemon")
}

/// A logged-in session: its cookie (`name=value`) and CSRF token.
#[derive(Clone, Debug)]
pub struct Session {
    /// `sluice_session=...`, as a `Cookie` header's value.
    pub cookie: String,
    /// The session's CSRF token.
    pub csrf: String,
}

impl Session {
    /// The headers a state-changing request of this session sends.
    pub fn headers(&self) -> [(&str, &str); 2] {
        [("Cookie", self.cookie.as_str()), ("X-CSRF-Token", self.csrf.as_str())]
    }
}

/// An answer read by [`RawClient`].
#[derive(Clone, Debug)]
pub struct RawAnswer {
    /// The status code.
    pub status: u16,
    /// The headers, names lower-case.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl RawAnswer {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (`Null` when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// A blocking HTTPS/1.1 client that connects from a chosen source address, trusts only the lab's
/// certificate authority, and sends what it is given: for tests that must control every byte.
#[derive(Clone, Debug)]
pub struct RawClient {
    tls: Arc<rustls::ClientConfig>,
    /// How long a read or write may block.
    pub timeout: Duration,
}

/// A TLS connection to the API.
pub type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

impl RawClient {
    /// A client trusting the certificate authority `ca_pem`.
    pub fn new(ca_pem: &[u8]) -> anyhow::Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        for block in pem::parse_many(ca_pem)? {
            roots.add(rustls::pki_types::CertificateDer::from(block.into_contents()))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self { tls: Arc::new(tls), timeout: Duration::from_secs(10) })
    }

    /// A TCP connection to the API from `from` (any local address of the namespace: every
    /// 127.0.0.0/8 address is one), or from the default source.
    pub fn tcp(&self, from: Option<IpAddr>) -> anyhow::Result<TcpStream> {
        let to: SocketAddr = LISTEN.parse()?;
        let tcp = match from {
            None => TcpStream::connect_timeout(&to, self.timeout)?,
            Some(ip) => {
                let domain =
                    if ip.is_ipv4() { socket2::Domain::IPV4 } else { socket2::Domain::IPV6 };
                let s = socket2::Socket::new(domain, socket2::Type::STREAM, None)?;
                s.bind(&SocketAddr::new(ip, 0).into()).with_context(|| format!("binding {ip}"))?;
                s.connect_timeout(&to.into(), self.timeout)?;
                s.into()
            }
        };
        tcp.set_read_timeout(Some(self.timeout))?;
        tcp.set_write_timeout(Some(self.timeout))?;
        tcp.set_nodelay(true)?;
        Ok(tcp)
    }

    /// A TLS connection (handshake done) from `from`.
    pub fn connect(&self, from: Option<IpAddr>) -> anyhow::Result<Tls> {
        let tcp = self.tcp(from)?;
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1")?.to_owned();
        let conn = rustls::ClientConnection::new(Arc::clone(&self.tls), name)?;
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock).context("the TLS handshake")?;
        }
        Ok(tls)
    }

    /// One request on a new connection: `headers` beside `Host`, `Content-Length` and
    /// `Connection: close`.
    pub fn request(
        &self,
        from: Option<IpAddr>,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> anyhow::Result<RawAnswer> {
        let mut tls = self.connect(from)?;
        tls.write_all(&head(method, path, headers, body.len()))?;
        tls.write_all(body)?;
        tls.flush()?;
        read_answer(&mut tls)
    }

    /// A JSON request (`Content-Type: application/json`).
    pub fn json(
        &self,
        from: Option<IpAddr>,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> anyhow::Result<RawAnswer> {
        let mut all = vec![("Content-Type", "application/json")];
        all.extend_from_slice(headers);
        let body = body.map(Value::to_string).unwrap_or_default();
        self.request(from, method, path, &all, body.as_bytes())
    }

    /// Logs in from `from`: the session, or an error with the answer's status and body.
    pub fn login(
        &self,
        from: Option<IpAddr>,
        user: &str,
        password: &str,
    ) -> anyhow::Result<Session> {
        let body = json!({"username": user, "password": password});
        let a = self.json(from, "POST", "/api/v1/login", &[], Some(&body))?;
        if a.status != 200 {
            bail!("login as {user}: {} {}", a.status, a.text());
        }
        let cookie = a
            .header("set-cookie")
            .and_then(|c| c.split(';').next())
            .context("a session cookie")?
            .to_owned();
        let csrf = a.json()["csrf_token"].as_str().context("a CSRF token")?.to_owned();
        Ok(Session { cookie, csrf })
    }
}

/// A request's head: `Host`, `Content-Length`, `Connection: close`, and `headers`.
pub fn head(method: &str, path: &str, headers: &[(&str, &str)], length: usize) -> Vec<u8> {
    let mut h = format!(
        "{method} {path} HTTP/1.1\r\nHost: {LISTEN}\r\nContent-Length: {length}\r\nConnection: close\r\n"
    );
    for (k, v) in headers {
        h.push_str(k);
        h.push_str(": ");
        h.push_str(v);
        h.push_str("\r\n");
    }
    h.push_str("\r\n");
    h.into_bytes()
}

/// Reads an answer to its end (the server closes, or `Content-Length` is reached).
pub fn read_answer(tls: &mut Tls) -> anyhow::Result<RawAnswer> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 << 10];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = read_some(tls, &mut chunk)?;
        if n == 0 {
            bail!("the connection closed before an answer ({} bytes)", buf.len());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("a status line: {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = buf[end + 4..].to_vec();
    let length =
        headers.iter().find(|(k, _)| k == "content-length").and_then(|(_, v)| v.parse().ok());
    let chunked = headers.iter().any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    loop {
        if length.is_some_and(|l: usize| body.len() >= l) {
            break;
        }
        let n = read_some(tls, &mut chunk)?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    if chunked {
        body = dechunk(&body);
    }
    Ok(RawAnswer { status, headers, body })
}

/// Reads what is there; a peer that closes without `close_notify` ends the stream.
fn read_some(tls: &mut Tls, buf: &mut [u8]) -> anyhow::Result<usize> {
    match tls.read(buf) {
        Ok(n) => Ok(n),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(0),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(0),
        Err(e) => Err(e.into()),
    }
}

/// A chunked body's content.
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(i) = raw.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&raw[..i])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next()?.trim(), 16).ok())
            .unwrap_or(0);
        if size == 0 || raw.len() < i + 2 + size {
            break;
        }
        out.extend_from_slice(&raw[i + 2..i + 2 + size]);
        raw = raw.get(i + 4 + size..).unwrap_or_default();
    }
    out
}

/// Runs `f` on this thread inside network namespace `name`, then returns to where it was.
pub fn in_namespace<T>(name: &str, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    let here =
        std::fs::File::open("/proc/thread-self/ns/net").context("this thread's namespace")?;
    NetNs::existing(name).enter()?;
    let out = f();
    nix::sched::setns(&here, nix::sched::CloneFlags::CLONE_NEWNET)
        .context("returning to the original namespace")?;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_are_joined_and_heads_carry_their_length() {
        assert_eq!(dechunk(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"), b"abcde");
        let h = String::from_utf8(head("POST", "/x", &[("A", "b")], 7)).unwrap();
        assert!(h.starts_with("POST /x HTTP/1.1\r\n") && h.contains("Content-Length: 7\r\n"));
        assert!(h.ends_with("A: b\r\n\r\n"));
    }
}
