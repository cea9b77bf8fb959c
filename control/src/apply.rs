//! Applies the configuration's static routes to the kernel over rtnetlink; the mirror then
//! carries them into the dataplane like any other route. The kernel stays the one source of
//! forwarding truth.
//!
//! Sluice marks its routes with its own protocol number, [`RTPROT_SLUICE`] (`ip route show
//! proto 238`), so that reconciling touches only what it added: a route of the configuration is
//! added or replaced, a Sluice route the configuration no longer has is removed, and routes of
//! anyone else (the kernel, `ip route`, BIRD) are never touched.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use futures::TryStreamExt as _;
use ipnet::IpNet;
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol};
use rtnetlink::{Handle, RouteMessageBuilder};
use sluice_store::StaticRoute;

/// The protocol number of the routes Sluice adds (free in `/etc/iproute2/rt_protos`).
pub const RTPROT_SLUICE: u8 = 238;
/// The main routing table.
const TABLE_MAIN: u32 = 254;

/// Why applying failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The kernel refused a request.
    #[error("{what}")]
    Netlink {
        /// What was being done.
        what: String,
        /// The kernel's answer.
        #[source]
        source: rtnetlink::Error,
    },
    /// A route names an interface that does not exist.
    #[error("route {prefix}: no interface named {dev:?}")]
    NoInterface {
        /// The route.
        prefix: IpNet,
        /// The name.
        dev: String,
    },
}

/// What [`apply_routes`] changed.
#[derive(Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Applied {
    /// Routes added or replaced.
    pub set: Vec<String>,
    /// Sluice routes removed.
    pub removed: Vec<String>,
}

/// The metric the kernel gives a route: IPv6 routes without one get 1024.
fn kernel_metric(route: &StaticRoute) -> u32 {
    match (route.prefix, route.metric) {
        (IpNet::V6(_), 0) => 1024,
        (_, m) => m,
    }
}

fn message(route: &StaticRoute, oif: Option<u32>) -> RouteMessage {
    let mut m = match route.prefix {
        IpNet::V4(p) => {
            let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(p.network(), p.prefix_len());
            if let Some(IpAddr::V4(g)) = route.via {
                b = b.gateway(g);
            }
            b.build()
        }
        IpNet::V6(p) => {
            let mut b = RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(p.network(), p.prefix_len());
            if let Some(IpAddr::V6(g)) = route.via {
                b = b.gateway(g);
            }
            b.build()
        }
    };
    m.header.protocol = RouteProtocol::Other(RTPROT_SLUICE);
    if let Some(oif) = oif {
        m.attributes.push(RouteAttribute::Oif(oif));
    }
    if kernel_metric(route) != 0 {
        m.attributes.push(RouteAttribute::Priority(kernel_metric(route)));
    }
    m
}

/// The Sluice routes the kernel holds in the main table: (prefix, metric) -> the message.
async fn ours(handle: &Handle) -> Result<BTreeMap<(IpNet, u32), RouteMessage>, ApplyError> {
    let mut out = BTreeMap::new();
    for request in [
        RouteMessageBuilder::<Ipv4Addr>::new().build(),
        RouteMessageBuilder::<Ipv6Addr>::new().build(),
    ] {
        let mut routes = handle.route().get(request).execute();
        while let Some(m) = routes.try_next().await.map_err(|source| ApplyError::Netlink {
            what: "dumping the kernel's routes".into(),
            source,
        })? {
            if m.header.protocol != RouteProtocol::Other(RTPROT_SLUICE) {
                continue;
            }
            let table = m
                .attributes
                .iter()
                .find_map(|a| if let RouteAttribute::Table(t) = a { Some(*t) } else { None })
                .unwrap_or(u32::from(m.header.table));
            if table != TABLE_MAIN {
                continue;
            }
            let dst = m.attributes.iter().find_map(|a| match a {
                RouteAttribute::Destination(RouteAddress::Inet(a)) => Some(IpAddr::V4(*a)),
                RouteAttribute::Destination(RouteAddress::Inet6(a)) => Some(IpAddr::V6(*a)),
                _ => None,
            });
            let dst = dst.unwrap_or(match m.header.address_family {
                netlink_packet_route::AddressFamily::Inet6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                _ => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            });
            let Ok(prefix) = IpNet::new(dst, m.header.destination_prefix_length) else { continue };
            let metric = m
                .attributes
                .iter()
                .find_map(|a| if let RouteAttribute::Priority(p) = a { Some(*p) } else { None })
                .unwrap_or(0);
            out.insert((prefix, metric), m);
        }
    }
    Ok(out)
}

/// Makes the kernel's Sluice routes exactly `routes`: adds or replaces each, removes the Sluice
/// routes that are not among them. Others' routes are left alone.
pub async fn apply_routes(handle: &Handle, routes: &[StaticRoute]) -> Result<Applied, ApplyError> {
    let mut applied = Applied::default();
    let existing = ours(handle).await?;
    for r in routes {
        let oif = match &r.dev {
            Some(dev) => Some(
                nix::net::if_::if_nametoindex(dev.as_str())
                    .map_err(|_| ApplyError::NoInterface { prefix: r.prefix, dev: dev.clone() })?,
            ),
            None => None,
        };
        handle.route().add(message(r, oif)).replace().execute().await.map_err(|source| {
            ApplyError::Netlink { what: format!("setting the route to {}", r.prefix), source }
        })?;
        applied.set.push(format!("{} metric {}", r.prefix, r.metric));
    }
    for ((prefix, metric), m) in existing {
        if routes.iter().any(|r| r.prefix == prefix && kernel_metric(r) == metric) {
            continue;
        }
        handle.route().del(m).execute().await.map_err(|source| ApplyError::Netlink {
            what: format!("removing the route to {prefix}"),
            source,
        })?;
        applied.removed.push(format!("{prefix} metric {metric}"));
    }
    Ok(applied)
}
