//! The read-only questions a plugin may ask about the dataplane (`lookup-route`,
//! `interfaces`), and their answers from the pinned maps.

use std::{
    net::IpAddr,
    sync::{Arc, Mutex},
};

use serde::Serialize;

/// What the dataplane does with packets to an address (`lookup-route`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RouteInfo {
    /// The route's action (`forward`, `ecmp`, `connected`...).
    pub action: String,
    /// Its gateways.
    pub next_hops: Vec<IpAddr>,
}

/// An interface the dataplane serves (`interfaces`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct InterfaceInfo {
    /// Name.
    pub name: String,
    /// ifindex.
    pub ifindex: u32,
    /// XDP mode in use.
    pub xdp_mode: String,
    /// Up.
    pub up: bool,
    /// MTU.
    pub mtu: u32,
}

/// The read-only questions a plugin may ask about the dataplane.
pub trait Queries: Send + Sync {
    /// The route the dataplane uses for `addr`.
    fn route(&self, addr: IpAddr) -> Option<RouteInfo>;
    /// The interfaces it serves.
    fn interfaces(&self) -> Vec<InterfaceInfo>;
}

/// Answers a plugin's queries (none: every query answers nothing).
pub type RouteLookup = Arc<dyn Queries>;

/// The pinned dataplane, asked directly: the lookup tables mapped read-only, the next hops and
/// interfaces read from their maps.
struct PinnedQueries {
    pin: sluice_dataplane::PinDir,
    view: Mutex<(sluice_dataplane::LookupView, sluice_dataplane::Maps)>,
}

impl Queries for PinnedQueries {
    fn route(&self, addr: IpAddr) -> Option<RouteInfo> {
        use sluice_common::RouteAction;
        let view = self.view.lock().ok()?;
        let (lookup, maps) = &*view;
        let route = lookup.lookup(addr)?;
        let action = RouteAction::from_u32(route.action)?;
        let ids: Vec<u32> = match action {
            RouteAction::Forward => vec![route.target],
            RouteAction::Ecmp => {
                let g = maps.group(route.target).ok()?;
                let mut m = g.members[..(g.count as usize).min(g.members.len())].to_vec();
                m.sort_unstable();
                m.dedup();
                m
            }
            _ => Vec::new(),
        };
        let next_hops = ids
            .into_iter()
            .filter_map(|id| {
                maps.nexthop(id).ok().and_then(|nh| sluice_core::fib::neighbour_of(&nh))
            })
            .collect();
        Some(RouteInfo { action: action.name().to_owned(), next_hops })
    }

    fn interfaces(&self) -> Vec<InterfaceInfo> {
        let Ok(stats) = crate::show::stats(&self.pin) else { return Vec::new() };
        stats
            .interfaces
            .into_iter()
            .map(|i| InterfaceInfo {
                name: i.name,
                ifindex: i.ifindex,
                xdp_mode: i.xdp_mode.to_owned(),
                up: i.up,
                mtu: i.mtu,
            })
            .collect()
    }
}

/// Queries answered from the dataplane pinned under `pin`.
pub fn pinned_queries(pin: &sluice_dataplane::PinDir) -> anyhow::Result<RouteLookup> {
    let view = sluice_dataplane::LookupView::open(pin)?;
    let maps = sluice_dataplane::Maps::open(pin)?;
    Ok(Arc::new(PinnedQueries { pin: pin.clone(), view: Mutex::new((view, maps)) }))
}
