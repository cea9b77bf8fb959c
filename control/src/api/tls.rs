//! HTTPS: the API's certificate, made at first start and signed by a certificate authority of
//! the router's own, renewed before it expires, and served by the [`crate::listener`] accept
//! loop.
//!
//! The certificate is valid 397 days at most (the CA/Browser Forum's ceiling, which browsers
//! enforce); the authority ten years. The authority's key is kept (`STATE/tls/ca-key.pem`, 0600)
//! so that a renewed certificate is still trusted by clients that trust `ca.pem`.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail};
use sha2::{Digest as _, Sha256};
use tokio_rustls::rustls::{
    ServerConfig,
    pki_types::{
        CertificateDer, PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer, PrivateSec1KeyDer,
    },
};
use tracing::{error, info, warn};

use super::{Api, filter};
use crate::{
    auth::{write_private, write_whole},
    listener::{self, Limits, Listen, ServerTls},
};

/// Days a certificate the router makes is valid, at most.
pub const CERT_DAYS: i64 = 397;
/// Days the router's certificate authority is valid.
pub const CA_DAYS: i64 = 3650;
/// A certificate that expires within this many days is renewed (or, if an operator put it
/// there, warned about).
pub const RENEW_DAYS: i64 = 30;
/// How often the certificate is checked after the start.
const CHECK_EVERY: Duration = Duration::from_hours(24);
const DAY_S: i64 = 86_400;

/// The files of `STATE/tls`.
struct Files {
    dir: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
    ca_key: PathBuf,
}

impl Files {
    fn of(state_dir: &Path) -> Self {
        let dir = state_dir.join("tls");
        Self {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            ca: dir.join("ca.pem"),
            ca_key: dir.join("ca-key.pem"),
            dir,
        }
    }
}

/// The certificate and key the API serves (`STATE/tls/cert.pem`, `key.pem`), made at first
/// start and signed by a certificate authority of the router's own (`STATE/tls/ca.pem`, its key
/// in `ca-key.pem`): clients that trust `ca.pem` (`sluice ... --ca`) check the API's identity.
/// A certificate the router made is renewed when it expires within [`RENEW_DAYS`]; an operator
/// may put other files there, which are left alone. Returns the certificate's and key's paths.
pub fn ensure_certificate(state_dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let f = Files::of(state_dir);
    if !f.cert.exists() || !f.key.exists() {
        std::fs::create_dir_all(&f.dir).with_context(|| format!("creating {}", f.dir.display()))?;
        make_all(&f, unix_now())?;
        info!(cert = %f.cert.display(), ca = %f.ca.display(), "made the API's certificate (replace it at will)");
    } else {
        check(&f, unix_now())?;
    }
    let pem = std::fs::read_to_string(&f.cert).with_context(|| format!("{}", f.cert.display()))?;
    if let Some(der) = pem_der(&pem) {
        info!(sha256 = %crate::plugins::hex(&Sha256::digest(&der)), "API certificate");
    }
    Ok((f.cert, f.key))
}

/// What [`check`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Checked {
    /// Nothing was due.
    Kept,
    /// A new certificate, signed by the same authority.
    Renewed,
    /// A new authority and certificate: clients must trust the new `ca.pem`.
    Remade,
}

/// Renews the router's own certificate when it is due; warns about an operator's that nears
/// its end.
fn check(f: &Files, now: i64) -> anyhow::Result<Checked> {
    let pem = std::fs::read_to_string(&f.cert).with_context(|| format!("{}", f.cert.display()))?;
    let blocks = pem::parse_many(&pem).with_context(|| format!("{}", f.cert.display()))?;
    let Some((not_before, not_after)) = blocks.first().and_then(|b| validity(b.contents())) else {
        warn!(cert = %f.cert.display(), "cannot read the API certificate's validity");
        return Ok(Checked::Kept);
    };
    let days_left = (not_after - now).div_euclid(DAY_S);
    let ca_der = std::fs::read_to_string(&f.ca).ok().and_then(|p| pem_der(&p));
    // The router's own: its chain is the certificate, then `ca.pem`.
    let ours = ca_der.is_some() && blocks.get(1).map(pem::Pem::contents) == ca_der.as_deref();
    if !ours {
        if days_left < RENEW_DAYS {
            warn!(
                cert = %f.cert.display(),
                days_left,
                "the API's certificate (not made by the router) expires soon: replace it"
            );
        }
        return Ok(Checked::Kept);
    }
    let due = days_left < RENEW_DAYS || not_after - not_before > CERT_DAYS * DAY_S;
    let ca_left = ca_der.as_deref().and_then(validity).map_or(0, |(_, end)| end - now);
    let ca_key = std::fs::read_to_string(&f.ca_key).ok();
    match ca_key {
        Some(ca_key) if ca_left >= RENEW_DAYS * DAY_S => {
            if !due {
                return Ok(Checked::Kept);
            }
            let ca_der = ca_der.unwrap_or_default();
            let name = subject_common_name(&ca_der).context("the authority's name in ca.pem")?;
            let ca_key = rcgen::KeyPair::from_pem(&ca_key).context("ca-key.pem")?;
            let ca_end = validity(&ca_der).map_or(now, |(_, end)| end);
            let ca = ca_params(name, now, ca_end)?.self_signed(&ca_key)?;
            let (leaf, key) = make_leaf(&ca, &ca_key, now, ca_end)?;
            let ca_pem = std::fs::read_to_string(&f.ca)?;
            write_pair(f, &format!("{leaf}{ca_pem}"), &key)?;
            info!(cert = %f.cert.display(), days_left, valid_days = CERT_DAYS, "renewed the API's certificate (same authority)");
            Ok(Checked::Renewed)
        }
        // No key to sign with (kept only since certificates expire), or an authority at its
        // end: a new authority, which clients must be told to trust.
        _ if due || ca_left < RENEW_DAYS * DAY_S => {
            make_all(f, now)?;
            warn!(
                ca = %f.ca.display(),
                "made a new certificate authority and certificate for the API: clients must \
                 trust the new ca.pem"
            );
            Ok(Checked::Remade)
        }
        _ => Ok(Checked::Kept),
    }
}

/// Writes a new authority (`ca.pem`, `ca-key.pem`) and a certificate it signs.
fn make_all(f: &Files, now: i64) -> anyhow::Result<()> {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map_or_else(|_| "sluice".into(), |h| h.trim().to_owned());
    let ca_key = rcgen::KeyPair::generate()?;
    let ca_end = now + CA_DAYS * DAY_S;
    let ca = ca_params(format!("Sluice {host} certificate authority"), now, ca_end)?
        .self_signed(&ca_key)?;
    let (leaf, key) = make_leaf(&ca, &ca_key, now, ca_end).context("making a certificate")?;
    write_private(&f.ca_key, ca_key.serialize_pem().as_bytes())?;
    write_pair(f, &format!("{leaf}{}", ca.pem()), &key)?;
    write_whole(&f.ca, ca.pem().as_bytes(), 0o644)
}

/// Replaces the certificate and its key, each by a rename, so that a reader sees a whole file.
fn write_pair(f: &Files, cert_pem: &str, key_pem: &str) -> anyhow::Result<()> {
    write_private(&f.key, key_pem.as_bytes())?;
    write_whole(&f.cert, cert_pem.as_bytes(), 0o644)
}

/// The router's authority, named `name`, valid from a day before `now` to `end`.
fn ca_params(name: String, now: i64, end: i64) -> Result<rcgen::CertificateParams, rcgen::Error> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyUsagePurpose as Usage};
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![Usage::KeyCertSign, Usage::CrlSign];
    ca.distinguished_name.push(DnType::CommonName, name);
    ca.not_before = date(now - DAY_S);
    ca.not_after = date(end);
    Ok(ca)
}

/// A certificate for this host signed by `ca`, valid [`CERT_DAYS`] from a day before `now` (a
/// client whose clock is a little behind still accepts it), and no longer than the authority:
/// (certificate, key), PEM.
fn make_leaf(
    ca: &rcgen::Certificate,
    ca_key: &rcgen::KeyPair,
    now: i64,
    ca_end: i64,
) -> Result<(String, String), rcgen::Error> {
    use rcgen::{CertificateParams, DnType, KeyPair};
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map_or_else(|_| "sluice".into(), |h| h.trim().to_owned());
    let key = KeyPair::generate()?;
    // The names a client may use: the hostname, loopback, and the router's addresses now (a
    // client that checks the certificate compares the address it dialled).
    let mut names = vec![host.clone(), "localhost".into(), "127.0.0.1".into(), "::1".into()];
    for a in nix::ifaddrs::getifaddrs().into_iter().flatten() {
        let ip = a.address.as_ref().and_then(|s| {
            s.as_sockaddr_in()
                .map(|v4| std::net::IpAddr::V4(v4.ip()))
                .or_else(|| s.as_sockaddr_in6().map(|v6| std::net::IpAddr::V6(v6.ip())))
        });
        if let Some(ip) = ip
            && !ip.is_loopback()
            && !matches!(ip, std::net::IpAddr::V6(v6) if v6.is_unicast_link_local())
            && !names.contains(&ip.to_string())
        {
            names.push(ip.to_string());
        }
    }
    let mut leaf = CertificateParams::new(names)?;
    leaf.distinguished_name.push(DnType::CommonName, host);
    let start = now - DAY_S;
    leaf.not_before = date(start);
    leaf.not_after = date((start + CERT_DAYS * DAY_S).min(ca_end));
    let leaf = leaf.signed_by(&key, ca, ca_key)?;
    Ok((leaf.pem(), key.serialize_pem()))
}

/// Seconds since the Unix epoch.
fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// `unix` seconds as rcgen takes them.
fn date(unix: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(unix).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// The DER bytes of the first PEM block.
fn pem_der(text: &str) -> Option<Vec<u8>> {
    pem::parse(text).ok().map(pem::Pem::into_contents)
}

/// A DER element: its tag, its contents, and what follows it.
fn der_element(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = b.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |l, &b| (l << 8) | usize::from(b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// The elements of a certificate's `TBSCertificate` (RFC 5280, 4.1), from its serial number
/// on (the optional version is skipped).
fn tbs_fields(cert: &[u8]) -> Option<Vec<(u8, &[u8])>> {
    let (_, cert, _) = der_element(cert)?;
    let (_, mut tbs, _) = der_element(cert)?;
    let mut out = Vec::new();
    while !tbs.is_empty() {
        let (tag, contents, rest) = der_element(tbs)?;
        if tag != 0xa0 {
            out.push((tag, contents));
        }
        tbs = rest;
    }
    Some(out)
}

/// A certificate's validity (`notBefore`, `notAfter`), seconds since the Unix epoch.
fn validity(cert: &[u8]) -> Option<(i64, i64)> {
    // serialNumber, signature, issuer, validity.
    let (_, validity) = *tbs_fields(cert)?.get(3)?;
    let (t1, before, rest) = der_element(validity)?;
    let (t2, after, _) = der_element(rest)?;
    Some((der_time(t1, before)?, der_time(t2, after)?))
}

/// An X.509 time: `UTCTime` (YYMMDDHHMMSSZ, years 1950-2049) or `GeneralizedTime`
/// (YYYYMMDDHHMMSSZ).
fn der_time(tag: u8, t: &[u8]) -> Option<i64> {
    let t = std::str::from_utf8(t).ok()?.strip_suffix('Z')?;
    let num = |s: &str| s.parse::<i32>().ok();
    let (year, rest) = match tag {
        0x17 if t.len() == 12 => {
            let yy = num(&t[..2])?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, &t[2..])
        }
        0x18 if t.len() == 14 => (num(&t[..4])?, &t[4..]),
        _ => return None,
    };
    let f = |i: usize| rest.get(i..i + 2).and_then(num).and_then(|v| u8::try_from(v).ok());
    let date = time::Date::from_calendar_date(year, time::Month::try_from(f(0)?).ok()?, f(2)?);
    let clock = time::Time::from_hms(f(4)?, f(6)?, f(8)?).ok()?;
    Some(time::PrimitiveDateTime::new(date.ok()?, clock).assume_utc().unix_timestamp())
}

/// The common name of a certificate's subject.
fn subject_common_name(cert: &[u8]) -> Option<String> {
    // serialNumber, signature, issuer, validity, subject.
    let (_, mut subject) = *tbs_fields(cert)?.get(4)?;
    while !subject.is_empty() {
        let (_, set, rest) = der_element(subject)?;
        let (_, attribute, _) = der_element(set)?;
        let (_, oid, value) = der_element(attribute)?;
        // 2.5.4.3, commonName.
        if oid == [0x55, 0x04, 0x03] {
            let (_, name, _) = der_element(value)?;
            return String::from_utf8(name.to_vec()).ok();
        }
        subject = rest;
    }
    None
}

/// The rustls configuration of the certificate and key in these files: TLS 1.2 and 1.3, ALPN
/// `h2` then `http/1.1`.
pub fn server_config(cert: &Path, key: &Path) -> anyhow::Result<ServerConfig> {
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    let chain: Vec<CertificateDer<'static>> = pem::parse_many(read(cert)?)?
        .into_iter()
        .filter(|b| b.tag() == "CERTIFICATE")
        .map(|b| CertificateDer::from(b.into_contents()))
        .collect();
    if chain.is_empty() {
        bail!("{} holds no certificate", cert.display());
    }
    let key_der = pem::parse_many(read(key)?)?
        .into_iter()
        .find_map(|b| match b.tag() {
            "PRIVATE KEY" => {
                Some(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(b.into_contents())))
            }
            "RSA PRIVATE KEY" => {
                Some(PrivateKeyDer::Pkcs1(PrivatePkcs1KeyDer::from(b.into_contents())))
            }
            "EC PRIVATE KEY" => {
                Some(PrivateKeyDer::Sec1(PrivateSec1KeyDer::from(b.into_contents())))
            }
            _ => None,
        })
        .with_context(|| format!("{} holds no private key", key.display()))?;
    let mut config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .with_context(|| format!("{} and {}", cert.display(), key.display()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Serves the API over HTTPS on every `listen` address until the process ends; checks the
/// certificate once a day, and serves a renewed (or replaced) one to new connections.
pub fn serve(
    api: &Arc<Api>,
    listen: &[Listen],
    limits: Limits,
    state_dir: &Path,
) -> anyhow::Result<()> {
    let (cert, key) = ensure_certificate(state_dir)?;
    let tls = Arc::new(ServerTls::new(server_config(&cert, &key)?));
    // Every address first: a daemon that cannot serve one of them says so and stops.
    let listeners = listen.iter().map(listener::bind).collect::<anyhow::Result<Vec<_>>>()?;
    let service = warp::service(filter(api));
    let handler: listener::Handler = Arc::new(move |req| {
        let mut service = service.clone();
        Box::pin(async move { hyper::service::Service::call(&mut service, req).await })
    });
    listener::spawn(listeners, limits, Arc::clone(&tls), handler);
    listener::log_listening(listen, &limits);
    let files = Files::of(state_dir);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(CHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            if let Err(e) = check(&files, unix_now()) {
                error!(error = %format!("{e:#}"), "checking the API's certificate failed");
            }
            // Also what an operator put there since.
            match server_config(&files.cert, &files.key) {
                Ok(config) => tls.replace(config),
                Err(e) => {
                    error!(error = %format!("{e:#}"), "the API's certificate does not load; serving the previous one");
                }
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use tokio_rustls::rustls::{
        RootCertStore,
        client::{WebPkiServerVerifier, danger::ServerCertVerifier as _},
        pki_types::{ServerName, UnixTime},
    };

    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn scratch(name: &str) -> (PathBuf, Files) {
        let dir = std::env::temp_dir().join(format!("sluice-tls-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("tls")).unwrap();
        let f = Files::of(&dir);
        (dir, f)
    }

    fn der_blocks(path: &Path) -> Vec<Vec<u8>> {
        let text = std::fs::read_to_string(path).unwrap();
        pem::parse_many(text).unwrap().into_iter().map(pem::Pem::into_contents).collect()
    }

    /// Whether `ca.pem` vouches for `cert.pem` as 127.0.0.1 at `at`.
    fn trusted(f: &Files, at: i64) -> bool {
        let mut roots = RootCertStore::empty();
        roots.add(CertificateDer::from(der_blocks(&f.ca).remove(0))).unwrap();
        let verifier = WebPkiServerVerifier::builder(Arc::new(roots)).build().unwrap();
        let chain = der_blocks(&f.cert);
        let leaf = CertificateDer::from(chain[0].clone());
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let at = UnixTime::since_unix_epoch(Duration::from_secs(at.unsigned_abs()));
        verifier.verify_server_cert(&leaf, &[], &name, &[], at).is_ok()
    }

    #[test]
    fn certificates_last_397_days_under_a_ten_year_authority() {
        let (dir, f) = scratch("window");
        let now = unix_now();
        make_all(&f, now).unwrap();
        let leaf = der_blocks(&f.cert).remove(0);
        let (start, end) = validity(&leaf).unwrap();
        assert_eq!(end - start, CERT_DAYS * DAY_S);
        assert!(start <= now && now - start <= DAY_S, "valid from a day ago: {start} {now}");
        let (_, ca_end) = validity(&der_blocks(&f.ca)[0]).unwrap();
        assert_eq!(ca_end - now, CA_DAYS * DAY_S);
        assert!(trusted(&f, now));
        assert!(!trusted(&f, end + 1), "expired after 397 days");
        let name = subject_common_name(&der_blocks(&f.ca)[0]).unwrap();
        assert!(name.starts_with("Sluice ") && name.ends_with(" certificate authority"), "{name}");
        assert_eq!(std::fs::metadata(&f.ca_key).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(server_config(&f.cert, &f.key).is_ok());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_certificate_near_its_end_is_renewed_under_the_same_authority() {
        let (dir, f) = scratch("renew");
        let made = unix_now();
        make_all(&f, made).unwrap();
        let ca_before = std::fs::read(&f.ca).unwrap();
        assert_eq!(check(&f, made + DAY_S).unwrap(), Checked::Kept);
        let later = made + (CERT_DAYS - 20) * DAY_S;
        assert_eq!(check(&f, later).unwrap(), Checked::Renewed);
        assert_eq!(std::fs::read(&f.ca).unwrap(), ca_before, "the authority stays");
        assert!(trusted(&f, later) && trusted(&f, later + 300 * DAY_S), "the old ca.pem trusts it");
        assert_eq!(check(&f, later).unwrap(), Checked::Kept);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn an_operators_certificate_is_left_alone_and_one_without_its_authoritys_key_remade() {
        let (dir, f) = scratch("operator");
        let made = unix_now();
        make_all(&f, made).unwrap();
        // Without the authority's key (as an older version left it), a certificate that is
        // due is made again with a new authority.
        std::fs::remove_file(&f.ca_key).unwrap();
        let ca_before = std::fs::read(&f.ca).unwrap();
        let late = made + (CERT_DAYS - 5) * DAY_S;
        assert_eq!(check(&f, late).unwrap(), Checked::Remade);
        assert_ne!(std::fs::read(&f.ca).unwrap(), ca_before);
        assert!(trusted(&f, late));
        // An operator's certificate (its chain does not end in ca.pem) is never replaced.
        let cert = der_blocks(&f.cert).remove(0);
        std::fs::write(&f.cert, pem::encode(&pem::Pem::new("CERTIFICATE", cert))).unwrap();
        let before = std::fs::read(&f.cert).unwrap();
        assert_eq!(check(&f, late + CERT_DAYS * DAY_S).unwrap(), Checked::Kept);
        assert_eq!(std::fs::read(&f.cert).unwrap(), before);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn der_times_of_both_kinds_read() {
        assert_eq!(der_time(0x17, b"700101000000Z"), Some(0));
        assert_eq!(der_time(0x17, b"491231235959Z"), Some(2_524_607_999));
        assert_eq!(der_time(0x18, b"40960101000000Z"), Some(67_090_118_400));
        assert_eq!(der_time(0x18, b"2024013"), None);
    }
}
