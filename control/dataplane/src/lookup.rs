//! The pinned lookup tables, mapped for reading.

use sluice_common::{NextHop, Route, RouteAction};
use sluice_core::{check::Check, dir24::Dir24, trie6::Trie6};

use crate::{
    error::Result,
    maps::Maps,
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

/// The lookup tables compared with the route record (what the daemon compiled from the kernel's
/// routes): `sluice verify`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Verification {
    /// IPv4 routes in the record.
    pub routes_v4: usize,
    /// IPv6 routes in the record.
    pub routes_v6: usize,
    /// The IPv4 DIR-24-8 against the IPv4 routes.
    pub ipv4: Check,
    /// The IPv6 trie against the IPv6 routes.
    pub ipv6: Check,
    /// Routes of the record whose next hop or ECMP group is not in the dataplane.
    pub dangling: Vec<String>,
}

impl Verification {
    /// Whether the tables answer as the routes say, and every route's next hop is there.
    pub fn is_clean(&self) -> bool {
        self.ipv4.is_clean() && self.ipv6.is_clean() && self.dangling.is_empty()
    }

    /// Differences and problems found, all told.
    pub fn findings(&self) -> u64 {
        self.ipv4.differences
            + self.ipv4.problems
            + self.ipv6.differences
            + self.ipv6.problems
            + self.dangling.len() as u64
    }
}

/// Compares the lookup tables pinned under `pin` with the route record pinned beside them,
/// entry by entry, and checks that every route's next hop or group is there. Reads only.
pub fn verify(pin: &PinDir) -> Result<Verification> {
    let view = LookupView::open(pin)?;
    let maps = Maps::open(pin)?;
    let state = maps.routes()?;
    let mut dangling = Vec::new();
    for (net, r) in state
        .routes_v4
        .iter()
        .map(|(n, r)| (n.to_string(), r))
        .chain(state.routes_v6.iter().map(|(n, r)| (n.to_string(), r)))
    {
        let missing = match RouteAction::from_u32(r.action) {
            Some(RouteAction::Forward) => {
                state.nexthops.get(&r.target).is_none_or(|nh| *nh == NextHop::default())
            }
            Some(RouteAction::Ecmp) => state.groups.get(&r.target).is_none_or(|g| g.count == 0),
            _ => false,
        };
        if missing && dangling.len() < sluice_core::check::EXAMPLES {
            dangling.push(format!(
                "{net}: {} {} is not in the dataplane",
                action_name(*r),
                r.target
            ));
        }
    }
    Ok(Verification {
        routes_v4: state.routes_v4.len(),
        routes_v6: state.routes_v6.len(),
        ipv4: view.v4.check(state.routes_v4.iter().map(|(n, r)| (*n, *r))),
        ipv6: view.v6.check(state.routes_v6.iter().map(|(n, r)| (*n, *r))),
        dangling,
    })
}

fn action_name(r: Route) -> &'static str {
    match RouteAction::from_u32(r.action) {
        Some(RouteAction::Ecmp) => "ECMP group",
        _ => "next hop",
    }
}
