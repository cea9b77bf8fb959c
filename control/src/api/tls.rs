//! HTTPS: the API's certificate, made at first start and signed by a certificate authority of
//! the router's own, and the listener that serves the API with it.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::Context as _;
use sha2::{Digest as _, Sha256};
use tracing::info;

use super::{Api, filter};
use crate::auth::write_private;

/// The certificate and key the API serves (`STATE/tls/cert.pem`, `key.pem`), made at first
/// start and signed by a certificate authority of the router's own (`STATE/tls/ca.pem`, whose
/// key is not kept): clients that trust `ca.pem` (`sluice ... --ca`) check the API's identity.
/// An operator may put other files there. Returns the certificate's and key's paths.
pub fn ensure_certificate(state_dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let dir = state_dir.join("tls");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    if !cert.exists() || !key.exists() {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let (ca_pem, leaf_pem, key_pem) = make_certificate().context("making a certificate")?;
        write_private(&key, key_pem.as_bytes())?;
        std::fs::write(&cert, format!("{leaf_pem}{ca_pem}"))
            .with_context(|| format!("writing {}", cert.display()))?;
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, ca_pem).with_context(|| format!("writing {}", ca.display()))?;
        info!(cert = %cert.display(), ca = %ca.display(), "made the API's certificate (replace it at will)");
    }
    let pem = std::fs::read_to_string(&cert).with_context(|| format!("{}", cert.display()))?;
    if let Some(der) = pem_der(&pem) {
        info!(sha256 = %crate::plugins::hex(&Sha256::digest(&der)), "API certificate");
    }
    Ok((cert, key))
}

/// A certificate authority and a certificate it signs for this host: (CA, certificate, key), PEM.
fn make_certificate() -> Result<(String, String, String), rcgen::Error> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose as Usage,
    };
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map_or_else(|_| "sluice".into(), |h| h.trim().to_owned());
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![Usage::KeyCertSign, Usage::CrlSign];
    ca.distinguished_name.push(DnType::CommonName, format!("Sluice {host} certificate authority"));
    let ca = ca.self_signed(&ca_key)?;
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
    let leaf = leaf.signed_by(&key, &ca, &ca_key)?;
    Ok((ca.pem(), leaf.pem(), key.serialize_pem()))
}

/// The DER bytes of the first PEM block.
fn pem_der(text: &str) -> Option<Vec<u8>> {
    pem::parse(text).ok().map(pem::Pem::into_contents)
}

/// Serves the API over HTTPS on `listen` until the process ends.
pub fn serve(api: &Arc<Api>, listen: SocketAddr, state_dir: &Path) -> anyhow::Result<()> {
    let (cert, key) = ensure_certificate(state_dir)?;
    // warp panics when it cannot bind: find out first, with a clear error.
    drop(
        std::net::TcpListener::bind(listen)
            .with_context(|| format!("listening on {listen} for the API"))?,
    );
    let server = warp::serve(filter(api)).tls().cert_path(&cert).key_path(&key);
    info!(%listen, "API listening (HTTPS)");
    tokio::spawn(server.bind(listen));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_certificate_is_signed_by_the_routers_own_authority() {
        let (ca, leaf, key) = make_certificate().unwrap();
        let ca = pem::parse(ca).unwrap();
        let leaf = pem::parse(leaf).unwrap();
        assert_eq!((ca.tag(), leaf.tag()), ("CERTIFICATE", "CERTIFICATE"));
        assert_ne!(ca.contents(), leaf.contents());
        assert!(key.contains("PRIVATE KEY"));
        assert_eq!(pem_der(&pem::encode(&leaf)).unwrap(), leaf.contents());
    }
}
