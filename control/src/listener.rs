//! The API's accept loop: TCP connections admitted under a global and a per-source cap, TLS with
//! a handshake deadline, HTTP/1.1 and HTTP/2 with a header deadline and a stream limit, and an
//! idle deadline on every connection. Whatever a client does, a connection costs a bounded amount
//! of memory for a bounded time, and a flood from one source leaves room for the others.
//!
//! Refusals and timeouts are counted ([`STATS`], shown at `/metrics`) and summed up in the log
//! at most once per [`LOG_EVERY`], never one line per connection.

use std::{
    collections::HashMap,
    convert::Infallible,
    fmt, io,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    pin::Pin,
    str::FromStr,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use futures::future::BoxFuture;
use hyper::{Body, Request, Response, server::conn::Http};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpSocket, TcpStream},
};
use tokio_rustls::{TlsAcceptor, rustls::ServerConfig};
use tracing::{debug, info, warn};

/// How often refusals and timeouts are summed up in the log.
pub const LOG_EVERY: Duration = Duration::from_secs(10);
/// How long the accept loop pauses after an error such as "too many open files": the error
/// would come back at once, and the loop would spin.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// The listening sockets' backlog: connections the kernel completes before they are accepted.
const BACKLOG: u32 = 1024;
/// Largest HTTP/1 read buffer (a request head must fit in it); hyper's default is 400 KiB.
const HTTP1_BUFFER: usize = 64 << 10;
/// Largest HTTP/2 header list; hyper's default is 16 MiB.
const HTTP2_HEADER_LIST: u32 = 64 << 10;

/// What a connection may cost, and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once, all sources together.
    pub max_connections: usize,
    /// Connections open at once from one source (an IPv4 address, or an IPv6 /64).
    pub max_per_source: usize,
    /// From the connection's acceptance to the end of its TLS handshake.
    pub handshake_timeout: Duration,
    /// For a request's head, from its first byte (HTTP/1).
    pub header_timeout: Duration,
    /// With no byte either way, the connection is closed.
    pub idle_timeout: Duration,
    /// Concurrent streams of an HTTP/2 connection.
    pub max_streams: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 512,
            max_per_source: 64,
            handshake_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_mins(1),
            max_streams: 32,
        }
    }
}

/// Where the API listens: an address and port, and optionally the interface the socket is
/// bound to (`ADDR:PORT%INTERFACE`), which then answers only connections that arrive through
/// that interface, whatever addresses it has or gets later.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listen {
    /// The address and port.
    pub addr: SocketAddr,
    /// The interface (`SO_BINDTODEVICE`).
    pub device: Option<String>,
}

impl FromStr for Listen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, device) = match s.rsplit_once('%') {
            // A `%` inside brackets is an IPv6 scope, part of the address.
            Some((a, d)) if !d.contains(']') => (a, Some(d)),
            _ => (s, None),
        };
        let addr = addr.parse().map_err(|e| format!("{addr:?} is not ADDR:PORT: {e}"))?;
        let device = match device {
            Some(d) if d.is_empty() || d.len() > 15 || d.contains('/') => {
                return Err(format!("{d:?} is not an interface name"));
            }
            d => d.map(str::to_owned),
        };
        Ok(Self { addr, device })
    }
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.device {
            Some(d) => write!(f, "{}%{d}", self.addr),
            None => write!(f, "{}", self.addr),
        }
    }
}

/// Binds a listening socket; the error names the address (and interface) that failed.
pub fn bind(listen: &Listen) -> anyhow::Result<TcpListener> {
    let what = || format!("listening on {listen} for the API");
    let socket = if listen.addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }
        .with_context(what)?;
    socket.set_reuseaddr(true).with_context(what)?;
    if let Some(dev) = &listen.device {
        socket
            .bind_device(Some(dev.as_bytes()))
            .with_context(|| format!("binding the API's socket to interface {dev}"))?;
    }
    socket.bind(listen.addr).with_context(what)?;
    socket.listen(BACKLOG).with_context(what)
}

/// The TLS configuration new connections get; replaced when the certificate is renewed, without
/// touching the connections already open.
#[derive(Debug)]
pub struct ServerTls(RwLock<Arc<ServerConfig>>);

impl ServerTls {
    /// Starts with `config`.
    pub fn new(config: ServerConfig) -> Self {
        Self(RwLock::new(Arc::new(config)))
    }

    /// The configuration for a new connection.
    pub fn current(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.0.read().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// Serves `config` to the connections that come next.
    pub fn replace(&self, config: ServerConfig) {
        *self.0.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(config);
    }
}

/// What answers a request.
pub type Handler = Arc<
    dyn Fn(Request<Body>) -> BoxFuture<'static, Result<Response<Body>, Infallible>> + Send + Sync,
>;

/// The connection's remote address, in each request's extensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer(pub SocketAddr);

/// The listener's counters since the process started.
#[derive(Debug)]
pub struct Stats {
    /// Connections open now (admitted, not yet closed).
    pub open: AtomicU64,
    /// Connections refused because [`Limits::max_connections`] were open.
    pub refused_total: AtomicU64,
    /// Connections refused because [`Limits::max_per_source`] were open from their source.
    pub refused_per_source: AtomicU64,
    /// Connections closed because their TLS handshake did not end in time.
    pub handshake_timeouts: AtomicU64,
    /// Connections closed after [`Limits::idle_timeout`] without a byte.
    pub idle_closed: AtomicU64,
    /// Errors accepting a connection (such as "too many open files").
    pub accept_errors: AtomicU64,
}

impl Stats {
    const fn new() -> Self {
        Self {
            open: AtomicU64::new(0),
            refused_total: AtomicU64::new(0),
            refused_per_source: AtomicU64::new(0),
            handshake_timeouts: AtomicU64::new(0),
            idle_closed: AtomicU64::new(0),
            accept_errors: AtomicU64::new(0),
        }
    }

    fn snapshot(&self) -> [u64; 5] {
        [
            self.refused_total.load(Ordering::Relaxed),
            self.refused_per_source.load(Ordering::Relaxed),
            self.handshake_timeouts.load(Ordering::Relaxed),
            self.idle_closed.load(Ordering::Relaxed),
            self.accept_errors.load(Ordering::Relaxed),
        ]
    }
}

/// The process's listener counters (one API per process).
pub static STATS: Stats = Stats::new();

/// Where a connection comes from, for the per-source cap: an IPv4 address, or an IPv6 /64 (a
/// single host commonly holds a whole /64, and picks addresses in it at will).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    /// An IPv4 address (also when it came as an IPv4-mapped IPv6 address).
    V4(Ipv4Addr),
    /// The upper 64 bits of an IPv6 address.
    V6(u64),
}

impl Source {
    /// The source `ip` counts against.
    pub fn of(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(a) => Self::V4(a),
            IpAddr::V6(a) => Self::V6((a.to_bits() >> 64) as u64),
        }
    }
}

/// Why a connection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The global cap was reached.
    Total,
    /// The per-source cap was reached.
    PerSource,
}

/// The connections open, in total and by source; the map holds only sources with connections
/// open, so it is never larger than the global cap.
#[derive(Debug)]
pub struct Connections {
    max_total: usize,
    max_per_source: usize,
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    by_source: HashMap<Source, usize>,
}

impl Connections {
    /// Empty, with these caps.
    pub fn new(max_total: usize, max_per_source: usize) -> Arc<Self> {
        Arc::new(Self { max_total, max_per_source, counts: Mutex::default() })
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A slot for a connection from `ip`, given back when the slot is dropped; or why not.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refused> {
        let source = Source::of(ip);
        let mut c = self.counts();
        if c.total >= self.max_total {
            return Err(Refused::Total);
        }
        let n = c.by_source.entry(source).or_insert(0);
        if *n >= self.max_per_source {
            return Err(Refused::PerSource);
        }
        *n += 1;
        c.total += 1;
        Ok(Slot { owner: Arc::clone(self), source })
    }

    /// Connections open, in total.
    pub fn open(&self) -> usize {
        self.counts().total
    }

    /// Sources with connections open.
    pub fn sources(&self) -> usize {
        self.counts().by_source.len()
    }
}

/// An admitted connection's place, held while it is open.
#[derive(Debug)]
pub struct Slot {
    owner: Arc<Connections>,
    source: Source,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.owner.counts();
        c.total -= 1;
        if let Some(n) = c.by_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                c.by_source.remove(&self.source);
            }
        }
    }
}

/// When a connection last moved a byte, either way.
#[derive(Debug)]
struct Activity {
    start: Instant,
    /// Milliseconds after `start`.
    last: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self { start: Instant::now(), last: AtomicU64::new(0) }
    }

    fn stamp(&self) {
        self.last.store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last.load(Ordering::Relaxed))
    }
}

/// A TCP stream that stamps its [`Activity`] on every byte read or written, under TLS: the
/// handshake, alerts and keep-alive traffic count as much as requests do.
struct Stamped {
    io: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Stamped {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.stamp();
        }
        r
    }
}

impl AsyncWrite for Stamped {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.stamp();
        }
        r
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// What every connection task shares.
struct Shared {
    limits: Limits,
    tls: Arc<ServerTls>,
    http: Http,
    handler: Handler,
    connections: Arc<Connections>,
}

/// Serves `handler` on `listeners` (bound with [`bind`]) until the process ends.
pub fn spawn(listeners: Vec<TcpListener>, limits: Limits, tls: Arc<ServerTls>, handler: Handler) {
    let mut http = Http::new();
    http.http1_header_read_timeout(limits.header_timeout)
        .max_buf_size(HTTP1_BUFFER)
        .http2_max_concurrent_streams(limits.max_streams)
        .http2_max_header_list_size(HTTP2_HEADER_LIST);
    let shared = Arc::new(Shared {
        limits,
        tls,
        http,
        handler,
        connections: Connections::new(limits.max_connections, limits.max_per_source),
    });
    for listener in listeners {
        tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
    }
    tokio::spawn(summaries());
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut last_error_log: Option<Instant> = None;
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                STATS.accept_errors.fetch_add(1, Ordering::Relaxed);
                if last_error_log.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
                    last_error_log = Some(Instant::now());
                    warn!(error = %e, "accepting an API connection failed (logged once per 10 s)");
                }
                tokio::time::sleep(ACCEPT_PAUSE).await;
                continue;
            }
        };
        match shared.connections.admit(peer.ip()) {
            Ok(slot) => {
                STATS.open.fetch_add(1, Ordering::Relaxed);
                let shared = Arc::clone(&shared);
                tokio::spawn(async move {
                    connection(tcp, peer, &shared).await;
                    drop(slot);
                    STATS.open.fetch_sub(1, Ordering::Relaxed);
                });
            }
            Err(why) => {
                let counter = match why {
                    Refused::Total => &STATS.refused_total,
                    Refused::PerSource => &STATS.refused_per_source,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                // A reset frees the socket at once, where a close would keep it in FIN_WAIT.
                let _ = tcp.set_zero_linger();
                drop(tcp);
            }
        }
    }
}

async fn connection(tcp: TcpStream, peer: SocketAddr, shared: &Shared) {
    let _ = tcp.set_nodelay(true);
    let activity = Arc::new(Activity::new());
    let io = Stamped { io: tcp, activity: Arc::clone(&activity) };
    let acceptor = TlsAcceptor::from(shared.tls.current());
    let tls = match tokio::time::timeout(shared.limits.handshake_timeout, acceptor.accept(io)).await
    {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            STATS.handshake_timeouts.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let handler = Arc::clone(&shared.handler);
    let service = hyper::service::service_fn(move |mut req: Request<Body>| {
        req.extensions_mut().insert(Peer(peer));
        handler(req)
    });
    let conn = shared.http.serve_connection(tls, service);
    tokio::pin!(conn);
    let idle = shared.limits.idle_timeout;
    loop {
        let deadline = activity.last() + idle;
        tokio::select! {
            r = &mut conn => {
                if let Err(e) = r {
                    debug!(%peer, error = %e, "API connection ended");
                }
                return;
            }
            () = tokio::time::sleep_until(deadline.into()) => {
                if activity.last() + idle <= Instant::now() {
                    STATS.idle_closed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }
    }
}

/// Sums up refusals and timeouts in the log every [`LOG_EVERY`] in which there were some.
async fn summaries() {
    let mut tick = tokio::time::interval(LOG_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut before = STATS.snapshot();
    loop {
        tick.tick().await;
        let now = STATS.snapshot();
        let [total, per_source, handshake, idle, accept] =
            std::array::from_fn(|i| now[i] - before[i]);
        if total + per_source + handshake + accept > 0 {
            warn!(
                refused_at_global_cap = total,
                refused_at_source_cap = per_source,
                handshake_timeouts = handshake,
                accept_errors = accept,
                open = STATS.open.load(Ordering::Relaxed),
                "API connections refused or timed out in the last {} s",
                LOG_EVERY.as_secs()
            );
        } else if idle > 0 {
            debug!(idle_closed = idle, "idle API connections closed");
        }
        before = now;
    }
}

/// Logs where the API listens.
pub fn log_listening(listens: &[Listen], limits: &Limits) {
    for l in listens {
        info!(listen = %l, "API listening (HTTPS)");
    }
    info!(
        max_connections = limits.max_connections,
        per_source = limits.max_per_source,
        handshake_s = limits.handshake_timeout.as_secs_f64(),
        header_s = limits.header_timeout.as_secs_f64(),
        idle_s = limits.idle_timeout.as_secs_f64(),
        h2_streams = limits.max_streams,
        "API connection limits"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_sources_are_their_64_and_mapped_ipv4_is_ipv4() {
        let a = Source::of("2001:db8:1:2::1".parse().unwrap());
        let b = Source::of("2001:db8:1:2:ffff:ffff:ffff:ffff".parse().unwrap());
        let c = Source::of("2001:db8:1:3::1".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, c);
        let v4 = Source::of("192.0.2.7".parse().unwrap());
        assert_eq!(Source::of("::ffff:192.0.2.7".parse().unwrap()), v4);
        assert_ne!(Source::of("192.0.2.8".parse().unwrap()), v4);
    }

    #[test]
    fn caps_refuse_beyond_their_limits_and_slots_come_back_on_drop() {
        let conns = Connections::new(5, 3);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let mut held: Vec<Slot> = (0..3).map(|_| conns.admit(ip("10.0.0.1")).unwrap()).collect();
        assert_eq!(conns.admit(ip("10.0.0.1")).unwrap_err(), Refused::PerSource);
        // Another address of the same /64 is the same source.
        let v6 = (0..3).map(|i| conns.admit(ip(&format!("2001:db8::{i}"))));
        let v6: Vec<_> = v6.collect();
        assert!(v6[0].is_ok() && v6[1].is_ok());
        assert_eq!(v6[2].as_ref().unwrap_err(), &Refused::Total);
        assert_eq!(conns.admit(ip("10.0.0.2")).unwrap_err(), Refused::Total);
        assert_eq!(conns.open(), 5);
        drop(v6);
        assert_eq!((conns.open(), conns.sources()), (3, 1));
        held.pop();
        assert!(conns.admit(ip("10.0.0.1")).is_ok(), "a slot given back is free again");
        drop(held);
        assert_eq!((conns.open(), conns.sources()), (0, 0), "no empty source kept");
    }

    #[test]
    fn listen_addresses_may_name_an_interface() {
        let l: Listen = "[::]:443%eth0".parse().unwrap();
        assert_eq!(l.addr, "[::]:443".parse().unwrap());
        assert_eq!(l.device.as_deref(), Some("eth0"));
        assert_eq!(l.to_string(), "[::]:443%eth0");
        let l: Listen = "127.0.0.1:8443".parse().unwrap();
        assert_eq!((l.addr.port(), l.device), (8443, None));
        let scoped: Listen = "[fe80::1%2]:443".parse().unwrap();
        assert_eq!(scoped.device, None);
        assert!("[::]:443%".parse::<Listen>().is_err());
        assert!("10.0.0.1".parse::<Listen>().is_err());
    }
}
