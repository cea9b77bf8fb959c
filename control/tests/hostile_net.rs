//! The API's connection hygiene against hostile clients, on a real daemon in a namespace
//! (`sluice_testbed::api_lab`): a thousand idle connections from one source, three hundred that
//! finish TLS and then say nothing, a connection that never starts TLS, one that sends half a
//! request head, the 65th connection of one source, and the HTTP/2 stream limit. Prints what it
//! measured. Needs root, like the other namespace tests; bounded to well under a minute.

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{IpAddr, TcpStream},
    sync::Arc,
    time::{Duration, Instant},
};

use serde_json::json;
use sluice_testbed::api_lab::{ApiLab, LISTEN, RawClient, Tls, in_namespace};

/// The daemon's deadlines in this test, shorter than the defaults so that it ends soon.
const HANDSHAKE_S: u64 = 2;
const HEADER_S: u64 = 2;
/// The default caps, which the test relies on.
const PER_SOURCE: usize = 64;
const GLOBAL: usize = 512;
/// The figure to reach: `/health` from another source answers within this while one source
/// holds a thousand connections.
const HEALTH_WITHIN: Duration = Duration::from_secs(2);

/// A source address, as the raw client takes it.
#[expect(clippy::unnecessary_wraps, reason = "the raw client takes an optional source")]
fn ip(s: &str) -> Option<IpAddr> {
    Some(s.parse().expect("an address"))
}

/// `/health` from `from`: its status and how long it took.
fn health(raw: &RawClient, from: &str) -> (u16, Duration) {
    let t = Instant::now();
    let a = raw.request(ip(from), "GET", "/api/v1/health", &[], b"");
    (a.map_or(0, |a| a.status), t.elapsed())
}

/// Whether the server closed (or reset) `tcp`, without waiting.
fn closed(tcp: &TcpStream) -> bool {
    tcp.set_nonblocking(true).expect("non-blocking");
    let mut b = [0u8; 1];
    let r = (&*tcp).read(&mut b);
    tcp.set_nonblocking(false).expect("blocking");
    match r {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != ErrorKind::WouldBlock,
    }
}

/// How long until the server closes a connection that reads nothing more (bounded by `max`).
fn time_to_close(
    read: &mut dyn FnMut(&mut [u8]) -> std::io::Result<usize>,
    max: Duration,
) -> Duration {
    let t = Instant::now();
    let mut b = [0u8; 4096];
    while t.elapsed() < max {
        match read(&mut b) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    t.elapsed()
}

/// The test process holds more than a thousand sockets at once.
fn raise_fd_limit() {
    let (soft, hard) = rlimit_nofile();
    if soft < 4096 {
        set_rlimit_nofile(4096.min(hard), hard);
    }
}

fn rlimit_nofile() -> (u64, u64) {
    let limits = std::fs::read_to_string("/proc/self/limits").expect("/proc/self/limits");
    let line = limits.lines().find(|l| l.starts_with("Max open files")).expect("a limit");
    let mut n = line.split_whitespace().skip(3).map(|v| v.parse().unwrap_or(u64::MAX));
    (n.next().unwrap_or(1024), n.next().unwrap_or(1024))
}

#[expect(unsafe_code, reason = "setrlimit has no safe wrapper among this crate's dependencies")]
fn set_rlimit_nofile(soft: u64, hard: u64) {
    let l = libc::rlimit { rlim_cur: soft, rlim_max: hard };
    // SAFETY: a plain system call on a value that lives through it.
    let r = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const l) };
    assert_eq!(r, 0, "raising this process's open-file limit to {soft}");
}

/// A TLS connection that finished its handshake and then says nothing.
fn tls_idle(raw: &RawClient, from: &str) -> Tls {
    raw.connect(ip(from)).unwrap_or_else(|e| panic!("TLS from {from}: {e:#}"))
}

#[test]
#[expect(clippy::too_many_lines, reason = "one daemon, the scenarios in turn, figures printed")]
fn connections_are_capped_per_source_and_timed_out_and_health_keeps_answering() {
    if !sluice_testbed::privileged() {
        return;
    }
    raise_fd_limit();
    let started = Instant::now();
    let (h, hd) = (HANDSHAKE_S.to_string(), HEADER_S.to_string());
    let lab = ApiLab::start("hn", &["--api-handshake-timeout", &h, "--api-header-timeout", &hd])
        .unwrap_or_else(|e| panic!("{e:#}"));
    let raw = lab.raw().expect("a client");
    let ns = lab.ns().to_owned();
    let base_fds = lab.open_fds();
    let token = in_namespace(&ns, || {
        let s = lab.setup_admin()?;
        let body = json!({"name": "metrics", "scope": "read"});
        let a = raw.json(None, "POST", "/api/v1/tokens", &s.headers(), Some(&body))?;
        Ok(a.json()["token"].as_str().unwrap_or_default().to_owned())
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    let mut report = Vec::new();

    // (a) A thousand connections from one source that never start TLS, then three hundred from
    // thirty others that finish TLS and say nothing: /health from elsewhere keeps answering.
    in_namespace(&ns, || {
        let t = Instant::now();
        // A connection the daemon resets at once may fail while it is being set up.
        let attempts: Vec<Option<TcpStream>> =
            (0..1000).map(|_| raw.tcp(ip("127.0.0.2")).ok()).collect();
        let opened = t.elapsed();
        let mut worst = Duration::ZERO;
        for _ in 0..5 {
            let (status, took) = health(&raw, "127.0.0.9");
            assert_eq!(status, 200, "/health while one source holds 1,000 connections");
            worst = worst.max(took);
        }
        std::thread::sleep(Duration::from_millis(300));
        let refused = attempts.iter().filter(|c| c.as_ref().is_none_or(closed)).count();
        let fds_a = lab.open_fds();
        report.push(format!(
            "1,000 TCP connections from one source opened in {opened:.2?}: {} held, {refused} \
             refused at once; /health from another source: worst {worst:.1?} of 5; daemon fds \
             {base_fds} -> {fds_a}",
            attempts.len() - refused
        ));
        assert_eq!(refused, 1000 - PER_SOURCE, "all but the per-source cap refused at once");
        assert!(worst < HEALTH_WITHIN, "/health took {worst:?}");

        let t = Instant::now();
        let quiet: Vec<Tls> =
            (0..300).map(|i| tls_idle(&raw, &format!("127.0.1.{}", 1 + i / 10))).collect();
        let handshakes = t.elapsed();
        let mut worst = Duration::ZERO;
        for _ in 0..5 {
            let (status, took) = health(&raw, "127.0.0.9");
            assert_eq!(status, 200, "/health while 300 TLS connections say nothing");
            worst = worst.max(took);
        }
        let fds_b = lab.open_fds();
        report.push(format!(
            "+300 TLS connections saying nothing (30 sources) in {handshakes:.2?}: /health worst \
             {worst:.1?} of 5; daemon fds {fds_b}"
        ));
        assert!(worst < HEALTH_WITHIN, "/health took {worst:?}");
        assert!(
            fds_a <= base_fds + PER_SOURCE + 16 && fds_b <= base_fds + GLOBAL + 16,
            "daemon fds bounded by the caps: {base_fds} -> {fds_a} -> {fds_b}"
        );
        drop((attempts, quiet));
        Ok(())
    })
    .unwrap_or_else(|e| panic!("{e:#}"));

    // (b) No TLS at all: closed by the handshake deadline. Half a request head: closed by the
    // header deadline.
    in_namespace(&ns, || {
        let mut tcp = raw.tcp(ip("127.0.0.5"))?;
        tcp.set_read_timeout(Some(Duration::from_millis(200)))?;
        let limit = Duration::from_secs(HANDSHAKE_S + 3);
        let silent = time_to_close(&mut |b| tcp.read(b), limit);
        let mut tls = tls_idle(&raw, "127.0.0.6");
        tls.write_all(b"GET /api/v1/health HTTP/1.1\r\nHost: ")?;
        tls.flush()?;
        tls.sock.set_read_timeout(Some(Duration::from_millis(200)))?;
        let limit = Duration::from_secs(HEADER_S + 3);
        let half = time_to_close(&mut |b| tls.read(b), limit);
        report.push(format!(
            "no TLS: closed after {silent:.1?} (deadline {HANDSHAKE_S} s); half a request head: \
             closed after {half:.1?} (deadline {HEADER_S} s)"
        ));
        let window = |d: Duration, s: u64| {
            d + Duration::from_millis(300) >= Duration::from_secs(s)
                && d < Duration::from_secs(s + 2)
        };
        assert!(window(silent, HANDSHAKE_S), "handshake deadline: closed after {silent:?}");
        assert!(window(half, HEADER_S), "header deadline: closed after {half:?}");
        Ok(())
    })
    .unwrap_or_else(|e| panic!("{e:#}"));

    // (c) The 65th connection of a source is refused at once; another source still gets in.
    in_namespace(&ns, || {
        let held: Vec<TcpStream> =
            (0..PER_SOURCE).map(|_| raw.tcp(ip("127.0.0.3"))).collect::<Result<_, _>>()?;
        let extra = raw.tcp(ip("127.0.0.3")).ok();
        std::thread::sleep(Duration::from_millis(300));
        let kept = held.iter().filter(|c| !closed(c)).count();
        let extra_closed = extra.as_ref().is_none_or(closed);
        let (status, took) = health(&raw, "127.0.0.4");
        report.push(format!(
            "per-source cap: {kept} of {PER_SOURCE} kept, the 65th refused: {extra_closed}; \
             another source: {status} in {took:.1?}"
        ));
        assert_eq!(kept, PER_SOURCE, "every connection up to the cap kept");
        assert!(extra_closed, "the 65th connection of one source refused");
        assert_eq!(status, 200, "another source gets in");
        Ok(())
    })
    .unwrap_or_else(|e| panic!("{e:#}"));

    // (d) HTTP/2 through ALPN, with the stream limit in the server's SETTINGS.
    let streams = in_namespace(&ns, || http2_max_streams(&lab)).unwrap_or_else(|e| panic!("{e:#}"));
    report.push(format!("HTTP/2: SETTINGS_MAX_CONCURRENT_STREAMS = {streams:?}"));
    assert_eq!(streams, Some(32), "the default HTTP/2 stream limit");

    let metrics = in_namespace(&ns, || {
        let auth = format!("Bearer {token}");
        let a = raw.request(None, "GET", "/metrics", &[("Authorization", &auth)], b"")?;
        Ok(a.text())
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    let counters: Vec<&str> =
        metrics.lines().filter(|l| l.starts_with("sluice_api_connections")).collect();
    report.push(format!("/metrics: {}", counters.join("; ")));
    assert!(
        counters.iter().any(|l| l.contains("source_cap") && !l.ends_with(" 0")),
        "refusals counted: {counters:?}"
    );
    // Summed up once per period, not once per connection.
    let summary = "API connections refused or timed out";
    let deadline = Instant::now() + Duration::from_secs(12);
    while !lab.log_tail(400).contains(summary) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = lab.log_tail(10_000);
    let summaries = log.lines().filter(|l| l.contains(summary)).count();
    report
        .push(format!("log: {summaries} summary line(s) for {} lines in all", log.lines().count()));
    assert!(summaries >= 1, "refusals summed up in the log");
    report.push(format!(
        "daemon RSS {} MiB; whole test {:.1?}",
        lab.rss_kib() >> 10,
        started.elapsed()
    ));
    for line in &report {
        println!("hostile_net: {line}");
    }
}

/// Opens an HTTP/2 connection (ALPN `h2`) and reads the server's first SETTINGS frame: its
/// `SETTINGS_MAX_CONCURRENT_STREAMS`, if it sent one.
fn http2_max_streams(lab: &ApiLab) -> anyhow::Result<Option<u32>> {
    use tokio_rustls::rustls::{self, pki_types::CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    let ca = std::fs::read_to_string(lab.state.join("tls/ca.pem"))?;
    for block in pem::parse_many(ca)? {
        roots.add(CertificateDer::from(block.into_contents()))?;
    }
    let mut config =
        rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1")?.to_owned();
    let conn = rustls::ClientConnection::new(Arc::new(config), name)?;
    let tcp = TcpStream::connect(LISTEN)?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    // The client preface and an empty SETTINGS frame (RFC 9113, 3.4).
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")?;
    tls.flush()?;
    anyhow::ensure!(tls.conn.alpn_protocol() == Some(b"h2"), "the server did not choose h2");
    let mut head = [0u8; 9];
    tls.read_exact(&mut head)?;
    let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
    anyhow::ensure!(head[3] == 4, "the first frame is not SETTINGS: type {}", head[3]);
    let mut payload = vec![0u8; len];
    tls.read_exact(&mut payload)?;
    Ok(payload
        .chunks_exact(6)
        .find(|s| u16::from_be_bytes([s[0], s[1]]) == 3)
        .map(|s| u32::from_be_bytes([s[2], s[3], s[4], s[5]])))
}
