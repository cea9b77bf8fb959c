//! The kernel-state mirror: an rtnetlink socket subscribed to link, address, route and neighbour
//! events, a dump of each, and the translation of netlink messages into the [`Rib`].
//!
//! The socket subscribes before it dumps, so nothing that changes during the dump is missed: the
//! events queued meanwhile are applied after it (they are idempotent upserts and deletions, applied
//! in order). A dump the kernel marks interrupted (`NLM_F_DUMP_INTR`) is repeated; an overrun of
//! the socket's receive buffer is reported to the caller, which resyncs.

use std::{net::IpAddr, time::Duration};

use futures::StreamExt as _;
use futures::channel::mpsc::UnboundedReceiver;
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    address::{AddressAttribute, AddressMessage},
    link::{
        InfoData, InfoVlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage, LinkXdp, XdpAttached,
    },
    neighbour::{
        NeighbourAddress, NeighbourAttribute, NeighbourExtFlags, NeighbourMessage, NeighbourState,
    },
    route::{RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteType},
};
use rtnetlink::{
    Handle,
    packet_core::{
        NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REPLACE, NLM_F_REQUEST,
        NetlinkHeader, NetlinkMessage, NetlinkPayload,
    },
    sys::{AsyncSocket as _, SocketAddr},
};
use tracing::{debug, warn};

use sluice_core::rib::{
    self, Address, Dirty, Link, Neighbour, Rib, RouteKind, RouteNextHop, RoutesBuilder, TABLE_LOCAL,
};

/// How long a request (a managed neighbour) waits for the kernel's answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Receive buffer asked for the event socket by default: a full table loading must not overrun it.
pub const DEFAULT_RECV_BUFFER: usize = 32 << 20;
/// Attempts at a dump the kernel keeps interrupting before giving up for now.
const DUMP_ATTEMPTS: usize = 5;
/// Queued events [`Mirror::next_event`] takes after the one it waited for.
const EVENTS_PER_WAKE: usize = 256;

/// Errors of the mirror.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    /// The netlink socket could not be opened or configured.
    #[error("netlink socket: {0}")]
    Socket(#[from] std::io::Error),
    /// A request could not be sent.
    #[error("netlink request: {0}")]
    Request(#[from] rtnetlink::Error),
    /// The kernel answered a request with an error.
    #[error("kernel refused {what}: {message}")]
    Refused {
        /// What was asked.
        what: String,
        /// The kernel's error.
        message: String,
    },
    /// The socket's receive buffer overran during a dump (changes arrive faster than read).
    #[error("the receive buffer overran during {0}")]
    Overrun(String),
    /// A dump kept being interrupted by concurrent changes.
    #[error("dump interrupted {DUMP_ATTEMPTS} times in a row")]
    Interrupted,
}

/// What an event did.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    /// The RIB changed (or may have).
    Changed,
    /// Nothing that Sluice mirrors.
    Ignored,
    /// The socket overran: events were lost, resync.
    Overrun,
}

/// The netlink side of the mirror.
#[derive(Debug)]
pub struct Mirror {
    /// Requests (managed neighbours) go through a socket of their own, subscribed to nothing:
    /// the kernel drops an acknowledgement to a socket whose buffer a flood of events has
    /// filled, and a request waiting for it on the event socket would wait for ever.
    requests: Handle,
    /// The tasks driving the event socket and the request socket; aborted with the mirror, so
    /// that a replaced socket (after a resync) is closed at once instead of lingering
    /// subscribed.
    connection: tokio::task::JoinHandle<()>,
    request_connection: tokio::task::JoinHandle<()>,
    events: UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, SocketAddr)>,
    table: u32,
}

impl Mirror {
    /// Opens the socket, subscribes to the groups and spawns the connection on the runtime.
    /// `recv_buffer` is the socket's receive buffer in bytes (the kernel doubles it).
    pub fn connect(table: u32, recv_buffer: usize) -> Result<Self, MirrorError> {
        use rtnetlink::constants::{
            RTMGRP_IPV4_IFADDR, RTMGRP_IPV4_ROUTE, RTMGRP_IPV6_IFADDR, RTMGRP_IPV6_ROUTE,
            RTMGRP_LINK, RTMGRP_NEIGH,
        };
        let (mut conn, _, events) = rtnetlink::new_connection()?;
        let (request_conn, requests, _) = rtnetlink::new_connection()?;
        let groups = RTMGRP_LINK
            | RTMGRP_NEIGH
            | RTMGRP_IPV4_IFADDR
            | RTMGRP_IPV6_IFADDR
            | RTMGRP_IPV4_ROUTE
            | RTMGRP_IPV6_ROUTE;
        let socket = conn.socket_mut().socket_mut();
        // SO_RCVBUFFORCE passes rmem_max (needs CAP_NET_ADMIN, which the daemon has).
        if let Err(e) = nix::sys::socket::setsockopt(
            &*socket,
            nix::sys::socket::sockopt::RcvBufForce,
            &recv_buffer,
        ) {
            warn!(error = %e, "could not enlarge the netlink receive buffer; overruns will resync");
            let _ = socket.set_rx_buf_sz(recv_buffer);
        }
        socket.bind(&SocketAddr::new(0, groups))?;
        let connection = tokio::spawn(conn);
        let request_connection = tokio::spawn(request_conn);
        Ok(Self { requests, connection, request_connection, events, table })
    }

    /// Dumps links, addresses, routes and neighbours into a fresh RIB.
    ///
    /// The dump is read from a socket of its own, subscribed to nothing: the kernel paces a
    /// dump to its reader, so it is whole even while the event socket overruns (a flood of
    /// changes). The events that came meanwhile are still on the event socket; when they overran
    /// it, the caller has a consistent dump to put into the dataplane before it tries again.
    pub async fn dump(&mut self) -> Result<Rib, MirrorError> {
        let (conn, mut handle, _) = rtnetlink::new_connection()?;
        let connection = tokio::spawn(conn);
        let dumped = self.dump_with(&mut handle).await;
        connection.abort();
        dumped
    }

    async fn dump_with(&self, handle: &mut Handle) -> Result<Rib, MirrorError> {
        for attempt in 1..=DUMP_ATTEMPTS {
            let mut rib = Rib::default();
            // Routes are gathered, packed, and the map built once, sorted: a map grown one
            // insertion at a time keeps its nodes part empty, and a full table would cost a
            // third more.
            let mut routes = RoutesBuilder::default();
            let mut interrupted = false;
            let requests = [
                RouteNetlinkMessage::GetLink(LinkMessage::default()),
                RouteNetlinkMessage::GetAddress(AddressMessage::default()),
                RouteNetlinkMessage::GetRoute(route_dump(AddressFamily::Inet)),
                RouteNetlinkMessage::GetRoute(route_dump(AddressFamily::Inet6)),
                RouteNetlinkMessage::GetNeighbour(NeighbourMessage::default()),
            ];
            for request in requests {
                let what = match &request {
                    RouteNetlinkMessage::GetLink(_) => "the link dump",
                    RouteNetlinkMessage::GetAddress(_) => "the address dump",
                    RouteNetlinkMessage::GetRoute(_) => "the route dump",
                    _ => "the neighbour dump",
                }
                .to_owned();
                let mut msg = NetlinkMessage::new(
                    NetlinkHeader::default(),
                    NetlinkPayload::InnerMessage(request),
                );
                msg.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
                msg.finalize();
                let mut responses = handle.request(msg)?;
                while let Some(response) = responses.next().await {
                    if response.header.flags & NLM_F_DUMP_INTR != 0 {
                        interrupted = true;
                    }
                    match response.payload {
                        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(m)) => {
                            if let Some(r) = route_from(&m)
                                && (r.table == self.table || r.table == TABLE_LOCAL)
                            {
                                routes.push(r);
                            }
                        }
                        NetlinkPayload::InnerMessage(m) => {
                            apply(&mut rib, &m, self.table);
                        }
                        NetlinkPayload::Error(e) if e.code.is_some() => {
                            if e.to_io().raw_os_error() == Some(libc::ENOBUFS) {
                                return Err(MirrorError::Overrun(what));
                            }
                            return Err(MirrorError::Refused { what, message: e.to_string() });
                        }
                        _ => {}
                    }
                }
            }
            if !interrupted {
                rib.routes = routes.build();
                // Everything is new: the compiler looks at all of it anyway.
                rib.dirty = Dirty { all: true, ..Dirty::default() };
                return Ok(rib);
            }
            debug!(attempt, "dump interrupted by concurrent changes, repeating");
        }
        Err(MirrorError::Interrupted)
    }

    /// The next event from the kernel, applied to `rib`, with up to [`EVENTS_PER_WAKE`] more
    /// already queued behind it (one wake-up of the daemon's loop per event would cost more
    /// than the event while a table loads). `None` when the socket closed.
    pub async fn next_event(&mut self, rib: &mut Rib) -> Option<Applied> {
        let (msg, _) = self.events.next().await?;
        let first = self.apply_event(rib, msg);
        if first == Applied::Overrun {
            return Some(first);
        }
        Some(match self.drain_at_most(rib, EVENTS_PER_WAKE) {
            Applied::Ignored => first,
            more => more,
        })
    }

    /// Applies every event already queued, without waiting. Returns whether any changed the RIB,
    /// or `Overrun`.
    pub fn drain(&mut self, rib: &mut Rib) -> Applied {
        self.drain_at_most(rib, usize::MAX)
    }

    /// Like [`Mirror::drain`], but stops after `max` events: while a table loads, events come
    /// as fast as they are taken, and the changes already taken must reach the dataplane.
    pub fn drain_at_most(&mut self, rib: &mut Rib, max: usize) -> Applied {
        let mut result = Applied::Ignored;
        let mut taken = 0;
        while taken < max
            && let Ok((msg, _)) = self.events.try_recv()
        {
            taken += 1;
            match self.apply_event(rib, msg) {
                Applied::Overrun => return Applied::Overrun,
                Applied::Changed => result = Applied::Changed,
                Applied::Ignored => {}
            }
        }
        result
    }

    fn apply_event(&self, rib: &mut Rib, msg: NetlinkMessage<RouteNetlinkMessage>) -> Applied {
        match msg.payload {
            NetlinkPayload::Overrun(_) => Applied::Overrun,
            NetlinkPayload::InnerMessage(m) => {
                if apply(rib, &m, self.table) {
                    Applied::Changed
                } else {
                    Applied::Ignored
                }
            }
            _ => Applied::Ignored,
        }
    }

    /// Asks the kernel to keep the neighbour `addr` on `ifindex` resolved (`NTF_EXT_MANAGED`,
    /// Linux 5.16): it probes it on its own, with or without traffic through the kernel. A known
    /// link-layer address is kept while the entry is converted.
    pub async fn ensure_managed(
        &mut self,
        ifindex: u32,
        addr: IpAddr,
        existing: Option<&Neighbour>,
    ) -> Result<(), MirrorError> {
        if let Some(n) = existing
            && (n.managed || n.state & (rib::nud::PERMANENT | rib::nud::NOARP) != 0)
        {
            return Ok(());
        }
        let mut m = NeighbourMessage::default();
        m.header.family = family(addr);
        m.header.ifindex = ifindex;
        m.header.kind = RouteType::Unicast;
        m.attributes.push(NeighbourAttribute::Destination(match addr {
            IpAddr::V4(a) => NeighbourAddress::Inet(a),
            IpAddr::V6(a) => NeighbourAddress::Inet6(a),
        }));
        match existing.and_then(|n| n.mac.filter(|_| n.usable())) {
            Some(mac) => {
                m.header.state = NeighbourState::Stale;
                m.attributes.push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
            }
            None => m.header.state = NeighbourState::None,
        }
        m.attributes.push(NeighbourAttribute::ExtFlags(NeighbourExtFlags::Managed));
        let mut msg = NetlinkMessage::new(
            NetlinkHeader::default(),
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNeighbour(m)),
        );
        msg.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE;
        msg.finalize();
        let mut responses = self.requests.request(msg)?;
        let what = || format!("managed neighbour {addr} on ifindex {ifindex}");
        loop {
            let Ok(next) = tokio::time::timeout(REQUEST_TIMEOUT, responses.next()).await else {
                return Err(MirrorError::Refused {
                    what: what(),
                    message: format!("no answer within {REQUEST_TIMEOUT:?}"),
                });
            };
            let Some(response) = next else { break };
            if let NetlinkPayload::Error(e) = response.payload
                && e.code.is_some()
            {
                return Err(MirrorError::Refused { what: what(), message: e.to_string() });
            }
        }
        Ok(())
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        self.connection.abort();
        self.request_connection.abort();
    }
}

fn route_dump(family: AddressFamily) -> RouteMessage {
    let mut m = RouteMessage::default();
    m.header.address_family = family;
    m
}

fn family(addr: IpAddr) -> AddressFamily {
    match addr {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

/// Applies one netlink message to the RIB. Returns whether it concerned the RIB.
pub fn apply(rib: &mut Rib, msg: &RouteNetlinkMessage, table: u32) -> bool {
    match msg {
        RouteNetlinkMessage::NewLink(m) => rib.upsert_link(link_from(m)),
        RouteNetlinkMessage::DelLink(m) => rib.remove_link(m.header.index),
        RouteNetlinkMessage::NewAddress(m) => match address_from(m) {
            Some(a) => {
                rib.add_address(a);
            }
            None => return false,
        },
        RouteNetlinkMessage::DelAddress(m) => match address_from(m) {
            Some(a) => {
                rib.remove_address(&a);
            }
            None => return false,
        },
        RouteNetlinkMessage::NewRoute(m) => match route_from(m) {
            Some(r) if r.table == table || r.table == TABLE_LOCAL => rib.upsert_route(r),
            _ => return false,
        },
        RouteNetlinkMessage::DelRoute(m) => match route_from(m) {
            Some(r) if r.table == table || r.table == TABLE_LOCAL => rib.remove_route(&r.key()),
            _ => return false,
        },
        RouteNetlinkMessage::NewNeighbour(m) => match neighbour_from(m) {
            Some(n) => rib.upsert_neighbour(n),
            None => return false,
        },
        RouteNetlinkMessage::DelNeighbour(m) => match neighbour_from(m) {
            Some(n) => rib.remove_neighbour(n.ifindex, n.addr),
            None => return false,
        },
        _ => return false,
    }
    true
}

/// A link message as a [`Link`].
pub fn link_from(m: &LinkMessage) -> Link {
    let mut link = Link {
        index: m.header.index,
        up: m.header.flags.contains(LinkFlags::Up)
            && (m.header.flags.contains(LinkFlags::LowerUp)
                || m.header.flags.contains(LinkFlags::Running)),
        ..Link::default()
    };
    let mut parent = None;
    for attr in &m.attributes {
        match attr {
            LinkAttribute::IfName(n) => link.name.clone_from(n),
            LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
            LinkAttribute::Address(a) if a.len() == 6 && a.iter().any(|b| *b != 0) => {
                link.mac = Some([a[0], a[1], a[2], a[3], a[4], a[5]]);
            }
            LinkAttribute::Link(p) => parent = Some(*p),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    if let LinkInfo::Data(InfoData::Vlan(vlan)) = info {
                        for v in vlan {
                            if let InfoVlan::Id(id) = v {
                                link.vlan = Some((0, *id));
                            }
                        }
                    }
                }
            }
            LinkAttribute::Xdp(xdp) => {
                for x in xdp {
                    if let LinkXdp::Attached(a) = x {
                        link.xdp = match a {
                            XdpAttached::Driver => rib::XdpAttached::Native,
                            XdpAttached::SocketBuffer => rib::XdpAttached::Generic,
                            XdpAttached::Hardware => rib::XdpAttached::Offload,
                            _ => rib::XdpAttached::None,
                        };
                    }
                }
            }
            _ => {}
        }
    }
    if let (Some((_, id)), Some(p)) = (link.vlan, parent) {
        link.vlan = Some((p, id));
    } else {
        link.vlan = None;
    }
    link
}

/// An address message as an [`Address`].
pub fn address_from(m: &AddressMessage) -> Option<Address> {
    // IFA_LOCAL is the local address on point-to-point links; IFA_ADDRESS otherwise.
    let mut addr = None;
    for attr in &m.attributes {
        match attr {
            AddressAttribute::Local(a) => addr = Some(*a),
            AddressAttribute::Address(a) if addr.is_none() => addr = Some(*a),
            _ => {}
        }
    }
    let net = ipnet::IpNet::new(addr?, m.header.prefix_len).ok()?;
    Some(Address { ifindex: m.header.index, addr: net })
}

/// A route message as a RIB [`rib::Route`]; `None` for routes Sluice does not mirror (cloned
/// cache entries, source-specific routes, non-IP families).
pub fn route_from(m: &RouteMessage) -> Option<rib::Route> {
    let h = &m.header;
    if h.flags.contains(RouteFlags::Cloned) || h.source_prefix_length != 0 {
        return None;
    }
    let mut table = u32::from(h.table);
    let mut dst = None;
    let mut metric = 0;
    let mut oif = None;
    let mut gateway = None;
    let mut multipath = None;
    for attr in &m.attributes {
        match attr {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(a) => dst = route_addr(a),
            RouteAttribute::Priority(p) => metric = *p,
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Gateway(a) => gateway = route_addr(a),
            RouteAttribute::MultiPath(hops) => multipath = Some(hops),
            _ => {}
        }
    }
    let dst = match (dst, h.address_family) {
        (Some(d), _) => d,
        (None, AddressFamily::Inet) => IpAddr::from([0u8; 4]),
        (None, AddressFamily::Inet6) => IpAddr::from([0u8; 16]),
        _ => return None,
    };
    let prefix = ipnet::IpNet::new(dst, h.destination_prefix_length).ok()?.trunc();
    // Link-local routes exist once per interface with the same prefix and metric; the dataplane
    // never forwards link-local destinations, so they are not mirrored at all.
    if let IpAddr::V6(a) = prefix.addr()
        && prefix.prefix_len() >= 10
        && a.segments()[0] & 0xffc0 == 0xfe80
    {
        return None;
    }
    let kind = match h.kind {
        RouteType::Unicast => RouteKind::Unicast,
        RouteType::Local | RouteType::Broadcast | RouteType::Anycast => RouteKind::Local,
        RouteType::BlackHole => RouteKind::Blackhole,
        RouteType::Unreachable | RouteType::Prohibit => RouteKind::Unreachable,
        _ => RouteKind::Other,
    };
    let nexthops = match multipath {
        Some(hops) => hops
            .iter()
            .map(|nh| RouteNextHop {
                ifindex: nh.interface_index,
                gateway: nh.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Gateway(g) => route_addr(g),
                    _ => None,
                }),
                weight: u16::from(nh.hops) + 1,
            })
            .collect(),
        None => {
            oif.map(|ifindex| RouteNextHop { ifindex, gateway, weight: 1 }).into_iter().collect()
        }
    };
    Some(rib::Route { prefix, table, metric, kind, nexthops, protocol: u8::from(h.protocol) })
}

fn route_addr(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(a) => Some(IpAddr::V4(*a)),
        RouteAddress::Inet6(a) => Some(IpAddr::V6(*a)),
        _ => None,
    }
}

/// A neighbour message as a [`Neighbour`]; `None` without an IP destination.
pub fn neighbour_from(m: &NeighbourMessage) -> Option<Neighbour> {
    let mut addr = None;
    let mut mac = None;
    let mut managed = false;
    for attr in &m.attributes {
        match attr {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => {
                addr = Some(IpAddr::V4(*a));
            }
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => {
                addr = Some(IpAddr::V6(*a));
            }
            NeighbourAttribute::LinkLayerAddress(l) if l.len() == 6 => {
                mac = Some([l[0], l[1], l[2], l[3], l[4], l[5]]);
            }
            NeighbourAttribute::ExtFlags(f) => managed = f.contains(NeighbourExtFlags::Managed),
            _ => {}
        }
    }
    Some(Neighbour {
        ifindex: m.header.ifindex,
        addr: addr?,
        mac,
        state: u16::from(m.header.state),
        managed,
    })
}

#[cfg(test)]
mod tests {
    use netlink_packet_route::route::{RouteHeader, RouteNextHop as NlNextHop, RouteProtocol};

    use super::*;
    use sluice_core::rib::TABLE_MAIN;

    fn route_msg(prefix: &str, attrs: Vec<RouteAttribute>, kind: RouteType) -> RouteMessage {
        let net: ipnet::IpNet = prefix.parse().unwrap();
        let mut m = RouteMessage::default();
        m.header = RouteHeader {
            address_family: family(net.addr()),
            destination_prefix_length: net.prefix_len(),
            table: RouteHeader::RT_TABLE_MAIN,
            protocol: RouteProtocol::Static,
            kind,
            ..RouteHeader::default()
        };
        if net.prefix_len() != 0 {
            m.attributes.push(RouteAttribute::Destination(net.addr().into()));
        }
        m.attributes.extend(attrs);
        m
    }

    #[test]
    fn routes_translate_with_gateways_multipath_and_types() {
        let gw: IpAddr = "10.0.0.1".parse().unwrap();
        let m = route_msg(
            "192.0.2.0/24",
            vec![
                RouteAttribute::Oif(3),
                RouteAttribute::Gateway(gw.into()),
                RouteAttribute::Priority(20),
            ],
            RouteType::Unicast,
        );
        let r = route_from(&m).unwrap();
        assert_eq!((r.table, r.metric, r.kind), (TABLE_MAIN, 20, RouteKind::Unicast));
        assert_eq!(*r.nexthops, [RouteNextHop { ifindex: 3, gateway: Some(gw), weight: 1 }]);

        let hop = |i: u32, g: &str, hops: u8| {
            let mut nh = NlNextHop::default();
            nh.interface_index = i;
            nh.hops = hops;
            nh.attributes = vec![RouteAttribute::Gateway(g.parse::<IpAddr>().unwrap().into())];
            nh
        };
        let m = route_msg(
            "0.0.0.0/0",
            vec![RouteAttribute::MultiPath(vec![hop(3, "10.0.0.1", 0), hop(4, "10.0.1.1", 2)])],
            RouteType::Unicast,
        );
        let r = route_from(&m).unwrap();
        assert_eq!(r.prefix, "0.0.0.0/0".parse::<ipnet::IpNet>().unwrap());
        assert_eq!(r.nexthops.len(), 2);
        assert_eq!(r.nexthops[1].weight, 3);

        for (kind, expected) in [
            (RouteType::BlackHole, RouteKind::Blackhole),
            (RouteType::Prohibit, RouteKind::Unreachable),
            (RouteType::Local, RouteKind::Local),
            (RouteType::Multicast, RouteKind::Other),
        ] {
            assert_eq!(
                route_from(&route_msg("2001:db8::/32", vec![], kind)).unwrap().kind,
                expected
            );
        }
        assert!(
            route_from(&route_msg("fe80::/64", vec![RouteAttribute::Oif(3)], RouteType::Unicast))
                .is_none()
        );
        let mut big_table =
            route_msg("192.0.2.0/24", vec![RouteAttribute::Table(1000)], RouteType::Unicast);
        big_table.header.table = 252;
        assert_eq!(route_from(&big_table).unwrap().table, 1000, "RTA_TABLE wins over the header");
    }

    #[test]
    fn events_outside_the_table_are_ignored() {
        let mut rib = Rib::default();
        let mut m = route_msg("192.0.2.0/24", vec![RouteAttribute::Oif(3)], RouteType::Unicast);
        m.header.table = 100;
        assert!(!apply(&mut rib, &RouteNetlinkMessage::NewRoute(m.clone()), TABLE_MAIN));
        assert!(apply(&mut rib, &RouteNetlinkMessage::NewRoute(m.clone()), 100));
        assert_eq!(rib.routes.len(), 1);
        assert!(apply(&mut rib, &RouteNetlinkMessage::DelRoute(m), 100));
        assert!(rib.routes.is_empty());
    }

    #[test]
    fn neighbours_translate_state_mac_and_managed() {
        let mut m = NeighbourMessage::default();
        m.header.ifindex = 7;
        m.header.state = NeighbourState::Reachable;
        m.attributes = vec![
            NeighbourAttribute::Destination(NeighbourAddress::Inet("10.0.0.9".parse().unwrap())),
            NeighbourAttribute::LinkLayerAddress(vec![2, 0, 0, 0, 0, 9]),
            NeighbourAttribute::ExtFlags(NeighbourExtFlags::Managed),
        ];
        let n = neighbour_from(&m).unwrap();
        assert!(n.usable() && n.managed);
        assert_eq!(n.mac, Some([2, 0, 0, 0, 0, 9]));
        m.header.state = NeighbourState::Failed;
        assert!(!neighbour_from(&m).unwrap().usable());
    }
}
