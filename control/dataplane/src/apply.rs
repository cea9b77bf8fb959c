//! Applies the configuration's static routes and interface settings to the kernel over
//! rtnetlink; the mirror then carries them into the dataplane like any other route. The kernel stays the one source of
//! forwarding truth.
//!
//! Sluice marks its routes with its own protocol number, [`RTPROT_SLUICE`] (`ip route show
//! proto 238`), so that reconciling touches only what it added: a route of the configuration is
//! added or replaced, a Sluice route the configuration no longer has is removed, and routes of
//! anyone else (the kernel, `ip route`, BIRD) are never touched.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use futures::TryStreamExt as _;
use ipnet::IpNet;
use netlink_packet_route::{
    address::{AddressAttribute, AddressMessage, AddressProtocol},
    route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol},
};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};
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
    /// Routes added or replaced (not those already in the kernel as they should be).
    pub set: Vec<String>,
    /// Sluice routes removed.
    pub removed: Vec<String>,
    /// Sluice routes the configuration does not have, kept because no revision the store holds
    /// has them ([`apply_routes_held`]).
    pub kept: Vec<String>,
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

/// Whether the kernel's route `m` already is `route` (through `oif`, when it names an
/// interface): the same gateway, and the same interface where the configuration names one.
/// Where it names none the kernel chose the interface that reaches the gateway, which is the
/// one it would choose again.
fn is_already(m: &RouteMessage, route: &StaticRoute, oif: Option<u32>) -> bool {
    let gateway = m.attributes.iter().find_map(|a| match a {
        RouteAttribute::Gateway(RouteAddress::Inet(a)) => Some(IpAddr::V4(*a)),
        RouteAttribute::Gateway(RouteAddress::Inet6(a)) => Some(IpAddr::V6(*a)),
        _ => None,
    });
    let kernel_oif = m
        .attributes
        .iter()
        .find_map(|a| if let RouteAttribute::Oif(i) = a { Some(*i) } else { None });
    gateway == route.via && (oif.is_none() || kernel_oif == oif)
}

/// Makes the kernel's Sluice routes exactly `routes`: adds or replaces each that is not there
/// as it should be, removes the Sluice routes that are not among them. Others' routes are left
/// alone. A configuration of many routes applied again costs one dump, not a request per route.
pub async fn apply_routes(handle: &Handle, routes: &[StaticRoute]) -> Result<Applied, ApplyError> {
    apply_routes_held(handle, routes, BTreeSet::new, true).await
}

/// [`apply_routes`], removing a Sluice route the configuration does not have only when its
/// prefix is among `held()` (the prefixes of the revisions the store holds, asked for only when
/// there is something to remove), or `any` is set. A store that lost its history then removes
/// nothing it cannot account for.
pub async fn apply_routes_held(
    handle: &Handle,
    routes: &[StaticRoute],
    held: impl FnOnce() -> BTreeSet<IpNet>,
    any: bool,
) -> Result<Applied, ApplyError> {
    let mut held = Some(held);
    let mut known: Option<BTreeSet<IpNet>> = None;
    let mut applied = Applied::default();
    let existing = ours(handle).await?;
    // By key: a configuration of many routes is not searched once per route of the kernel.
    let wanted: BTreeSet<(IpNet, u32)> =
        routes.iter().map(|r| (r.prefix, kernel_metric(r))).collect();
    for r in routes {
        let oif = match &r.dev {
            Some(dev) => Some(
                nix::net::if_::if_nametoindex(dev.as_str())
                    .map_err(|_| ApplyError::NoInterface { prefix: r.prefix, dev: dev.clone() })?,
            ),
            None => None,
        };
        if existing.get(&(r.prefix, kernel_metric(r))).is_some_and(|m| is_already(m, r, oif)) {
            continue;
        }
        handle.route().add(message(r, oif)).replace().execute().await.map_err(|source| {
            ApplyError::Netlink { what: format!("setting the route to {}", r.prefix), source }
        })?;
        applied.set.push(format!("{} metric {}", r.prefix, r.metric));
    }
    for ((prefix, metric), m) in existing {
        if wanted.contains(&(prefix, metric)) {
            continue;
        }
        if !any {
            let known = known.get_or_insert_with(|| held.take().map(|f| f()).unwrap_or_default());
            if !known.contains(&prefix) {
                applied.kept.push(format!("{prefix} metric {metric}"));
                continue;
            }
        }
        handle.route().del(m).execute().await.map_err(|source| ApplyError::Netlink {
            what: format!("removing the route to {prefix}"),
            source,
        })?;
        applied.removed.push(format!("{prefix} metric {metric}"));
    }
    Ok(applied)
}

/// What [`apply_interfaces`] changed.
#[derive(Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct AppliedInterfaces {
    /// Links set up or down, or given an MTU (`name mtu 1400 up`).
    pub links: Vec<String>,
    /// Addresses added (`name 192.0.2.1/24`).
    pub added: Vec<String>,
    /// Sluice's addresses removed.
    pub removed: Vec<String>,
    /// Interfaces of the configuration the kernel does not have.
    pub missing: Vec<String>,
}

/// The address and prefix length of an address message, and whether Sluice added it.
fn address_of(m: &AddressMessage) -> Option<(IpNet, bool)> {
    let addr = m.attributes.iter().find_map(|a| match a {
        // IFA_LOCAL is the address on point-to-point links; IFA_ADDRESS otherwise.
        AddressAttribute::Local(a) | AddressAttribute::Address(a) => Some(*a),
        _ => None,
    })?;
    let ours = m
        .attributes
        .iter()
        .any(|a| matches!(a, AddressAttribute::Protocol(AddressProtocol::Other(RTPROT_SLUICE))));
    Some((IpNet::new(addr, m.header.prefix_len).ok()?, ours))
}

/// Applies the configuration's interface settings: each interface is set up or down and given
/// its MTU; its addresses are added, marked with Sluice's protocol number (`ip address show
/// proto 238`); Sluice's addresses the configuration no longer has are removed, on any link.
/// Addresses of anyone else are left alone. An interface the kernel lacks is reported, not an
/// error: the others are applied.
pub async fn apply_interfaces(
    handle: &Handle,
    interfaces: &BTreeMap<String, sluice_store::Interface>,
) -> Result<AppliedInterfaces, ApplyError> {
    let mut out = AppliedInterfaces::default();
    let mut wanted: BTreeMap<u32, Vec<IpNet>> = BTreeMap::new();
    for (name, i) in interfaces {
        let Ok(index) = nix::net::if_::if_nametoindex(name.as_str()) else {
            out.missing.push(name.clone());
            continue;
        };
        let mut link = LinkUnspec::new_with_index(index);
        link = if i.up { link.up() } else { link.down() };
        if let Some(mtu) = i.mtu {
            link = link.mtu(mtu);
        }
        handle.link().set(link.build()).execute().await.map_err(|source| ApplyError::Netlink {
            what: format!("setting {name} up/down and its MTU"),
            source,
        })?;
        let mtu = i.mtu.map(|m| format!(" mtu {m}")).unwrap_or_default();
        out.links.push(format!("{name}{mtu} {}", if i.up { "up" } else { "down" }));
        wanted.insert(index, i.addresses.clone());
    }
    // What the kernel has, on every link.
    let mut have: Vec<(u32, IpNet, bool, AddressMessage)> = Vec::new();
    let mut dump = handle.address().get().execute();
    while let Some(m) = dump.try_next().await.map_err(|source| ApplyError::Netlink {
        what: "dumping the kernel's addresses".into(),
        source,
    })? {
        if let Some((net, ours)) = address_of(&m) {
            have.push((m.header.index, net, ours, m));
        }
    }
    for (index, addrs) in &wanted {
        for net in addrs {
            if have.iter().any(|(i, n, _, _)| i == index && n == net) {
                continue;
            }
            let mut add = handle.address().add(*index, net.addr(), net.prefix_len());
            add.message_mut()
                .attributes
                .push(AddressAttribute::Protocol(AddressProtocol::Other(RTPROT_SLUICE)));
            add.execute().await.map_err(|source| ApplyError::Netlink {
                what: format!("adding {net} to interface {index}"),
                source,
            })?;
            out.added.push(format!("{index} {net}"));
        }
    }
    for (index, net, ours, m) in have {
        let keep = wanted.get(&index).is_some_and(|w| w.contains(&net));
        if !ours || keep {
            continue;
        }
        handle.address().del(m).execute().await.map_err(|source| ApplyError::Netlink {
            what: format!("removing {net} from interface {index}"),
            source,
        })?;
        out.removed.push(format!("{index} {net}"));
    }
    Ok(out)
}
