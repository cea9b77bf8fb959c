//! The pinned lookup tables, mapped for reading.

use sluice_common::Route;
use sluice_core::{dir24::Dir24, trie6::Trie6};

use crate::{
    error::Result,
    pin::{PinDir, map_lookup_tables, open_pinned},
    shared_mem::MappedArray,
};

/// What the lookup tables hold and the memory they use ([`LookupView::usage`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct LookupUsage {
    /// The IPv4 DIR-24-8.
    pub ipv4: sluice_core::dir24::Scanned,
    /// The IPv6 trie.
    pub ipv6: sluice_core::trie6::Scanned,
}

/// The pinned lookup tables, mapped for reading: what the XDP program finds for an address, and
/// what the tables hold. For tools that check the dataplane from outside (the benchmark,
/// `sluice stats`).
#[derive(Debug)]
pub struct LookupView {
    v4: Dir24<MappedArray>,
    v6: Trie6<MappedArray>,
}

impl LookupView {
    /// Maps the lookup tables pinned under `pin`.
    pub fn open(pin: &PinDir) -> Result<Self> {
        let (tbl24, tbl8, trie) = map_lookup_tables(&mut |name| open_pinned(pin, name))?;
        Ok(Self { v4: Dir24::new(tbl24, tbl8), v6: Trie6::new(trie) })
    }

    /// What the tables hold, read from them (a scan of the IPv4 first level and a walk of the
    /// IPv6 trie: tens of milliseconds).
    pub fn usage(&self) -> LookupUsage {
        LookupUsage { ipv4: self.v4.scan(), ipv6: self.v6.scan() }
    }

    /// The route the XDP program would find for `addr`.
    pub fn lookup(&self, addr: std::net::IpAddr) -> Option<Route> {
        match addr {
            std::net::IpAddr::V4(a) => self.v4.lookup(a),
            std::net::IpAddr::V6(a) => self.v6.lookup(a),
        }
    }
}
