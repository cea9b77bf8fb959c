//! Egress readiness: whether each routed port can take the frames XDP redirects to it.
//!
//! A device takes redirected frames only if its driver implements `ndo_xdp_xmit`; the kernel
//! says so in the device's `xdp_features` (`NETDEV_XDP_ACT_NDO_XMIT`, read over the `netdev`
//! generic netlink family, Linux 6.3+) and refuses a redirect to a device without it
//! (`xdp:xdp_redirect_err`): the frame is freed. A veth advertises it only while its peer has an
//! XDP program or GRO on (`veth_set_xdp_features`), so a router port facing a container is often
//! such a device. Redirects can also keep failing for other reasons (a driver refusing whole
//! batches); the egress accounting counts them (see [`crate::xmit`]).
//!
//! [`EgressWatch::check`] looks at every routed port, writes the ports that cannot take frames
//! into `EGRESS_HOLD`, and the XDP program passes their frames to the kernel (counted as
//! `pass_egress_not_ready`), which forwards them through the ordinary transmit path. A port held
//! for repeated errors is tried again after [`RETRY_AFTER`]; a port held for its features is
//! released as soon as it advertises them. [`describe`] words the cause and the remedy for the
//! log, `sluice stats`, the API and the console.

#![expect(unsafe_code, reason = "netlink sockets through libc")]

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use aya::maps::{Array, HashMap, MapData};
use serde::{Deserialize, Serialize};
use sluice_common::xmit::{EgressHold, XmitStats, hold_cause, names};

use crate::{
    error::{DataplaneError, Result},
    pin::{PinDir, ignore_missing},
};

/// A port held for redirect errors is tried again after this long.
pub const RETRY_AFTER: Duration = Duration::from_secs(30);
/// Redirect errors on one port between two checks that make it held.
pub const ERROR_THRESHOLD: u64 = 32;

/// `NETDEV_XDP_ACT_NDO_XMIT` in `enum netdev_xdp_act`.
const XDP_ACT_NDO_XMIT: u64 = 1 << 2;

/// What the kernel says of one port.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortFacts {
    /// Whether it advertises `NDO_XMIT`; `None` when the kernel cannot say (no `netdev`
    /// family): then only redirect errors hold it.
    pub xdp_xmit: Option<bool>,
    /// Its peer, for a veth.
    pub peer: Option<Peer>,
}

/// A veth's peer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Peer {
    /// Its ifindex, in its own namespace.
    pub ifindex: u32,
    /// Its name, when it could be looked up.
    pub name: Option<String>,
    /// Whether it lives in another network namespace.
    pub elsewhere: bool,
    /// Whether an XDP program is attached to it.
    pub xdp: bool,
}

/// A port that cannot take redirected frames, as the API and `sluice stats` show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotReady {
    /// `no_xdp_xmit` or `redirect_errors`.
    pub cause: String,
    /// For a veth: its peer's name (or `ifindex N`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// Whether the kernel forwards what XDP passes to it (IPv4 and IPv6 forwarding on). When
    /// not, the kernel drops the port's frames and the message says so.
    pub kernel_forwarding: bool,
    /// The cause and the remedy, in words.
    pub message: String,
}

/// Whether this namespace's kernel forwards both families (`net.ipv4.ip_forward` and
/// `net.ipv6.conf.all.forwarding`).
pub fn kernel_forwarding() -> bool {
    ["/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding"]
        .iter()
        .all(|p| std::fs::read_to_string(p).is_ok_and(|v| v.trim() == "1"))
}

fn peer_label(hold: &EgressHold) -> Option<String> {
    if hold.peer_ifindex == 0 {
        return None;
    }
    let end = hold.peer_name.iter().position(|b| *b == 0).unwrap_or(hold.peer_name.len());
    Some(if end == 0 {
        format!("ifindex {}", hold.peer_ifindex)
    } else {
        printable(&hold.peer_name[..end])
    })
}

/// A name as it may be shown on a terminal or in a log: the peer's end of a veth is named by
/// whoever owns its namespace (a container), and a name may hold any byte but `/`, `:`, NUL and
/// white space; anything but printable ASCII is shown as `\xNN`.
pub fn printable(name: &[u8]) -> String {
    let mut out = String::with_capacity(name.len());
    for &b in name {
        if b.is_ascii_graphic() && b != b'\\' {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

/// The cause and remedy of a hold on port `port`.
pub fn describe(port: &str, hold: &EgressHold) -> NotReady {
    let kernel_forwarding = hold.kernel_forwarding != 0;
    let peer = peer_label(hold);
    let (cause, message) = match (hold.cause, &peer) {
        (hold_cause::NO_XDP_XMIT, Some(p)) => {
            let where_ = if hold.peer_elsewhere != 0 { " (in its own namespace)" } else { "" };
            let what = if hold.peer_xdp != 0 {
                "has an XDP program but its queues do not match"
            } else {
                "has no XDP program and GRO off"
            };
            (
                "no_xdp_xmit",
                format!(
                    "{port}: veth peer {p}{where_} {what}: frames go through the kernel; enable \
                     GRO on the peer (`ethtool -K {p} gro on`) or attach an XDP program there"
                ),
            )
        }
        (hold_cause::NO_XDP_XMIT, None) => (
            "no_xdp_xmit",
            format!(
                "{port}: the driver cannot transmit redirected frames (no ndo_xdp_xmit): frames \
                 go through the kernel; use a NIC whose driver supports XDP redirect"
            ),
        ),
        _ => (
            "redirect_errors",
            format!(
                "{port}: redirects to it kept failing: frames go through the kernel, XDP is \
                 tried again within {}s; see tx_redirect_errors and the kernel log",
                RETRY_AFTER.as_secs()
            ),
        ),
    };
    let mut message = message;
    if !kernel_forwarding {
        message.push_str(
            "; but the kernel's forwarding is off, so it drops them: switch it on \
             (`sysctl -w net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1`)",
        );
    }
    NotReady { cause: cause.to_owned(), peer, kernel_forwarding, message }
}

/// A change [`EgressWatch::check`] made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// The port is held now.
    Held(String, EgressHold),
    /// The port takes redirected frames again.
    Ready(String),
}

/// The decisions, apart from the kernel: which ports to hold, given their facts and errors.
#[derive(Debug, Default)]
pub struct Readiness {
    held: BTreeMap<u32, (EgressHold, Option<Instant>)>,
    errors: BTreeMap<u32, u64>,
}

impl Readiness {
    /// Takes one look at the ports (ifindex -> name, facts, redirect errors so far); returns what
    /// changed. A port held for errors is released at its retry time.
    pub fn update(
        &mut self,
        now: Instant,
        ports: &BTreeMap<u32, (String, PortFacts, u64)>,
        kernel_forwarding: bool,
    ) -> Vec<(u32, Change)> {
        let mut changes = Vec::new();
        let gone: Vec<u32> = self.held.keys().filter(|i| !ports.contains_key(i)).copied().collect();
        for ifindex in gone {
            self.held.remove(&ifindex);
            changes.push((ifindex, Change::Ready(String::new())));
        }
        self.errors.retain(|i, _| ports.contains_key(i));
        for (&ifindex, (name, facts, errors)) in ports {
            let before = self.errors.insert(ifindex, *errors);
            let new_errors = before.map_or(0, |b| errors.saturating_sub(b));
            let mut hold = EgressHold {
                kernel_forwarding: u32::from(kernel_forwarding),
                ..EgressHold::default()
            };
            if let Some(p) = &facts.peer {
                hold.peer_ifindex = p.ifindex;
                hold.peer_elsewhere = u32::from(p.elsewhere);
                hold.peer_xdp = u32::from(p.xdp);
                if let Some(n) = &p.name {
                    let len = n.len().min(15);
                    hold.peer_name[..len].copy_from_slice(&n.as_bytes()[..len]);
                }
            }
            let want = if facts.xdp_xmit == Some(false) {
                Some((EgressHold { cause: hold_cause::NO_XDP_XMIT, ..hold }, None))
            } else if new_errors >= ERROR_THRESHOLD {
                Some((
                    EgressHold { cause: hold_cause::REDIRECT_ERRORS, ..hold },
                    Some(now + RETRY_AFTER),
                ))
            } else {
                match self.held.get(&ifindex) {
                    Some((h, Some(until)))
                        if h.cause == hold_cause::REDIRECT_ERRORS && now < *until =>
                    {
                        Some((EgressHold { cause: h.cause, ..hold }, Some(*until)))
                    }
                    _ => None,
                }
            };
            match want {
                Some((h, until)) => {
                    let old = self.held.insert(ifindex, (h, until));
                    if old.map(|o| o.0) != Some(h) {
                        changes.push((ifindex, Change::Held(name.clone(), h)));
                    }
                }
                None => {
                    if self.held.remove(&ifindex).is_some() {
                        changes.push((ifindex, Change::Ready(name.clone())));
                    }
                }
            }
        }
        changes
    }

    /// The ports held now.
    pub fn held(&self) -> impl Iterator<Item = (u32, &EgressHold)> {
        self.held.iter().map(|(i, (h, _))| (*i, h))
    }
}

/// Errors that count against a port: refused redirects and flushes the driver refused.
pub fn error_count(s: &XmitStats) -> u64 {
    s.redirect_errors.saturating_add(s.errors)
}

/// Checks the routed ports and keeps `EGRESS_HOLD` in step (the daemon, about once a second).
#[expect(missing_debug_implementations, reason = "aya's map handles are not Debug")]
pub struct EgressWatch {
    hold: HashMap<MapData, u32, EgressHold>,
    count: Array<MapData, u32>,
    readiness: Readiness,
    netdev_family: Option<u16>,
    pin: PinDir,
    /// The ports of the last check.
    checked: Vec<u32>,
}

impl EgressWatch {
    /// Opens the pinned hold maps for writing and empties them (this daemon decides afresh).
    pub fn open(pin: &PinDir) -> Result<Self> {
        let open = |name: &'static str| {
            aya::maps::Map::from_map_data(
                MapData::from_pin(pin.map(name)).map_err(|e| DataplaneError::Map(name, e))?,
            )
            .map_err(|e| DataplaneError::Map(name, e))
        };
        let mut hold: HashMap<MapData, u32, EgressHold> = open(names::EGRESS_HOLD)?
            .try_into()
            .map_err(|e| DataplaneError::Map(names::EGRESS_HOLD, e))?;
        let mut count: Array<MapData, u32> = open(names::EGRESS_HOLDS)?
            .try_into()
            .map_err(|e| DataplaneError::Map(names::EGRESS_HOLDS, e))?;
        let keys: Vec<u32> = hold.keys().filter_map(std::result::Result::ok).collect();
        for k in keys {
            ignore_missing(hold.remove(&k))
                .map_err(|e| DataplaneError::Map(names::EGRESS_HOLD, e))?;
        }
        count.set(0, 0, 0).map_err(|e| DataplaneError::Map(names::EGRESS_HOLDS, e))?;
        let netdev_family = genl_family_id("netdev").ok();
        Ok(Self {
            hold,
            count,
            readiness: Readiness::default(),
            netdev_family,
            pin: pin.clone(),
            checked: Vec::new(),
        })
    }

    /// Whether the routed ports are others than at the last check (a new port is checked before
    /// routes through it are written).
    pub fn ports_changed(&self, ports: impl Iterator<Item = u32>) -> bool {
        !ports.eq(self.checked.iter().copied())
    }

    /// Looks at `ports` (ifindex -> name) with the egress errors counted so far; writes the holds
    /// and returns what changed.
    pub fn check(&mut self, ports: &BTreeMap<u32, String>) -> Result<Vec<Change>> {
        self.checked = ports.keys().copied().collect();
        let xmit = crate::xmit::read(&self.pin).map(|e| e.devices).unwrap_or_default();
        let mut looked = BTreeMap::new();
        for (&ifindex, name) in ports {
            let facts = port_facts(self.netdev_family, ifindex);
            let errors = xmit.get(&ifindex).map_or(0, error_count);
            looked.insert(ifindex, (name.clone(), facts, errors));
        }
        let changes = self.readiness.update(Instant::now(), &looked, kernel_forwarding());
        let map_err = |e| DataplaneError::Map(names::EGRESS_HOLD, e);
        for (ifindex, change) in &changes {
            match change {
                Change::Held(_, h) => {
                    self.hold.insert(ifindex, h, 0).map_err(map_err)?;
                }
                Change::Ready(_) => ignore_missing(self.hold.remove(ifindex)).map_err(map_err)?,
            }
        }
        let n = u32::try_from(self.readiness.held().count()).unwrap_or(u32::MAX);
        self.count.set(0, n, 0).map_err(|e| DataplaneError::Map(names::EGRESS_HOLDS, e))?;
        Ok(changes
            .into_iter()
            .map(|(_, c)| c)
            .filter(|c| !matches!(c, Change::Ready(n) if n.is_empty()))
            .collect())
    }
}

/// The holds pinned under `pin` (ifindex -> hold); nothing when the map is not pinned (a
/// dataplane from a build without it).
pub fn read(pin: &PinDir) -> Result<BTreeMap<u32, EgressHold>> {
    let path = pin.map(names::EGRESS_HOLD);
    if !path.exists() {
        return Ok(BTreeMap::new());
    }
    let map = aya::maps::Map::from_map_data(
        MapData::from_pin(&path).map_err(|e| DataplaneError::Map(names::EGRESS_HOLD, e))?,
    )
    .map_err(|e| DataplaneError::Map(names::EGRESS_HOLD, e))?;
    let hold: HashMap<MapData, u32, EgressHold> =
        map.try_into().map_err(|e| DataplaneError::Map(names::EGRESS_HOLD, e))?;
    let mut out = BTreeMap::new();
    for item in &hold {
        let (k, v) = item.map_err(|e| DataplaneError::Map(names::EGRESS_HOLD, e))?;
        out.insert(k, v);
    }
    Ok(out)
}

/// What the kernel says of `ifindex`; what cannot be read stays unknown.
pub fn port_facts(netdev_family: Option<u16>, ifindex: u32) -> PortFacts {
    let xdp_xmit = netdev_family
        .and_then(|f| xdp_features(f, ifindex).ok())
        .map(|x| x & XDP_ACT_NDO_XMIT != 0);
    let peer = veth_peer(ifindex).ok().flatten();
    PortFacts { xdp_xmit, peer }
}

// Raw netlink: a request and its replies, attributes as type-length-value.

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
const NETDEV_CMD_DEV_GET: u8 = 1;
const NETDEV_A_DEV_IFINDEX: u16 = 1;
const NETDEV_A_DEV_XDP_FEATURES: u16 = 3;
const RTM_GETLINK: u16 = 18;
const IFLA_IFNAME: u16 = 3;
const IFLA_LINK: u16 = 5;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_LINK_NETNSID: u16 = 37;
const IFLA_XDP: u16 = 43;
const IFLA_XDP_ATTACHED: u16 = 2;
const IFLA_TARGET_NETNSID: u16 = 46;

fn attr(out: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(payload);
    out.resize(out.len().next_multiple_of(4), 0);
}

/// The attributes in `data`, by type (nested flag cleared); later ones win.
fn attrs(mut data: &[u8]) -> BTreeMap<u16, &[u8]> {
    let mut out = BTreeMap::new();
    while data.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([data[0], data[1]]));
        let kind = u16::from_ne_bytes([data[2], data[3]]) & 0x3fff;
        if len < 4 || len > data.len() {
            break;
        }
        out.insert(kind, &data[4..len]);
        data = &data[len.next_multiple_of(4).min(data.len())..];
    }
    out
}

/// Sends one request (`header` after the netlink header, then `body`) and returns the payloads
/// (after the netlink header) of the replies.
fn request(protocol: i32, kind: u16, header: &[u8], body: &[u8]) -> io::Result<Vec<Vec<u8>>> {
    // SAFETY: plain socket creation; the descriptor is owned at once.
    let raw =
        unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, protocol) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let timeout = libc::timeval { tv_sec: 1, tv_usec: 0 };
    // SAFETY: a valid option value of the right size.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const timeout).cast(),
            size_of::<libc::timeval>() as u32,
        );
    }
    let mut msg = Vec::with_capacity(16 + header.len() + body.len());
    let len = (16 + header.len() + body.len()) as u32;
    msg.extend_from_slice(&len.to_ne_bytes());
    msg.extend_from_slice(&kind.to_ne_bytes());
    msg.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(header);
    msg.extend_from_slice(body);
    // SAFETY: the buffer is valid for its length.
    if unsafe { libc::send(fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut replies = Vec::new();
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        // SAFETY: the buffer is valid for its length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut data = &buf[..n.cast_unsigned()];
        while data.len() >= 16 {
            let len = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]) as usize;
            let kind = u16::from_ne_bytes([data[4], data[5]]);
            if len < 16 || len > data.len() {
                return Err(io::Error::other("truncated netlink reply"));
            }
            let payload = &data[16..len];
            match kind {
                NLMSG_ERROR => {
                    let code = payload
                        .get(..4)
                        .map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                    if code != 0 {
                        return Err(io::Error::from_raw_os_error(-code));
                    }
                    return Ok(replies);
                }
                NLMSG_DONE => return Ok(replies),
                _ => replies.push(payload.to_vec()),
            }
            data = &data[len.next_multiple_of(4).min(data.len())..];
        }
    }
}

/// The id of the generic netlink family `name`.
pub fn genl_family_id(name: &str) -> io::Result<u16> {
    let mut body = Vec::new();
    let mut cname = name.as_bytes().to_vec();
    cname.push(0);
    attr(&mut body, CTRL_ATTR_FAMILY_NAME, &cname);
    let replies =
        request(libc::NETLINK_GENERIC, GENL_ID_CTRL, &[CTRL_CMD_GETFAMILY, 1, 0, 0], &body)?;
    replies
        .iter()
        .find_map(|r| {
            attrs(r.get(4..)?)
                .get(&CTRL_ATTR_FAMILY_ID)
                .and_then(|v| v.get(..2))
                .map(|v| u16::from_ne_bytes([v[0], v[1]]))
        })
        .ok_or_else(|| io::Error::other("no family id in the reply"))
}

/// The `xdp_features` of `ifindex` (`enum netdev_xdp_act` bits).
pub fn xdp_features(family: u16, ifindex: u32) -> io::Result<u64> {
    let mut body = Vec::new();
    attr(&mut body, NETDEV_A_DEV_IFINDEX, &ifindex.to_ne_bytes());
    let replies = request(libc::NETLINK_GENERIC, family, &[NETDEV_CMD_DEV_GET, 1, 0, 0], &body)?;
    replies
        .iter()
        .find_map(|r| {
            let v = *attrs(r.get(4..)?).get(&NETDEV_A_DEV_XDP_FEATURES)?;
            Some(u64::from_ne_bytes(v.get(..8)?.try_into().ok()?))
        })
        .ok_or_else(|| io::Error::other("no xdp-features in the reply"))
}

/// `RTM_GETLINK` for one ifindex (in the namespace `netnsid` names, if any): its attributes.
fn get_link(ifindex: u32, netnsid: Option<i32>) -> io::Result<Vec<u8>> {
    let mut header = vec![0u8; 16];
    header[4..8].copy_from_slice(&ifindex.cast_signed().to_ne_bytes());
    let mut body = Vec::new();
    if let Some(id) = netnsid {
        attr(&mut body, IFLA_TARGET_NETNSID, &id.to_ne_bytes());
    }
    let replies = request(libc::NETLINK_ROUTE, RTM_GETLINK, &header, &body)?;
    let first =
        replies.into_iter().next().ok_or_else(|| io::Error::other("no link in the reply"))?;
    Ok(first.get(16..).map(<[u8]>::to_vec).unwrap_or_default())
}

fn u32_of(v: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(v.get(..4)?.try_into().ok()?))
}

fn name_of(v: &[u8]) -> String {
    let end = v.iter().position(|b| *b == 0).unwrap_or(v.len());
    String::from_utf8_lossy(&v[..end]).into_owned()
}

/// The peer of `ifindex` if it is a veth: its index, and its name and XDP attachment when the
/// kernel tells them (also across namespaces, by the peer's namespace id).
pub fn veth_peer(ifindex: u32) -> io::Result<Option<Peer>> {
    let link = get_link(ifindex, None)?;
    let a = attrs(&link);
    let kind =
        a.get(&IFLA_LINKINFO).and_then(|i| attrs(i).get(&IFLA_INFO_KIND).map(|k| name_of(k)));
    if kind.as_deref() != Some("veth") {
        return Ok(None);
    }
    let Some(peer_index) = a.get(&IFLA_LINK).and_then(|v| u32_of(v)) else { return Ok(None) };
    let netnsid = a.get(&IFLA_LINK_NETNSID).and_then(|v| u32_of(v)).map(u32::cast_signed);
    let mut peer = Peer { ifindex: peer_index, elsewhere: netnsid.is_some(), ..Peer::default() };
    if let Ok(p) = get_link(peer_index, netnsid) {
        let pa = attrs(&p);
        peer.name = pa.get(&IFLA_IFNAME).map(|n| name_of(n));
        peer.xdp = pa
            .get(&IFLA_XDP)
            .and_then(|x| attrs(x).get(&IFLA_XDP_ATTACHED).and_then(|v| v.first().copied()))
            .is_some_and(|m| m != 0);
    }
    Ok(Some(peer))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(name: &str, xmit: Option<bool>, errors: u64) -> (String, PortFacts, u64) {
        let peer = Some(Peer { ifindex: 7, name: Some("vh1".into()), elsewhere: true, xdp: false });
        (name.into(), PortFacts { xdp_xmit: xmit, peer }, errors)
    }

    #[test]
    fn a_port_without_ndo_xmit_is_held_until_it_has_it() {
        let mut readiness = Readiness::default();
        let now = Instant::now();
        let ports =
            BTreeMap::from([(3, port("v1", Some(false), 0)), (4, port("v2", Some(true), 0))]);
        let changes = readiness.update(now, &ports, true);
        assert_eq!(changes.len(), 1);
        assert!(
            matches!(&changes[0], (3, Change::Held(n, h)) if n == "v1" && h.cause == hold_cause::NO_XDP_XMIT)
        );
        assert!(readiness.update(now, &ports, true).is_empty(), "no change, nothing reported");
        let ports =
            BTreeMap::from([(3, port("v1", Some(true), 0)), (4, port("v2", Some(true), 0))]);
        assert_eq!(readiness.update(now, &ports, true), vec![(3, Change::Ready("v1".into()))]);
        assert_eq!(readiness.held().count(), 0);
    }

    #[test]
    fn repeated_errors_hold_a_port_until_the_retry() {
        let mut readiness = Readiness::default();
        let now = Instant::now();
        let at = |e| BTreeMap::from([(3, port("v1", None, e))]);
        assert!(
            readiness.update(now, &at(1000), true).is_empty(),
            "errors from before the first look do not count"
        );
        assert!(readiness.update(now, &at(1000 + ERROR_THRESHOLD - 1), true).is_empty());
        let changes = readiness.update(now, &at(1000 + 3 * ERROR_THRESHOLD), true);
        assert!(
            matches!(&changes[0], (3, Change::Held(_, h)) if h.cause == hold_cause::REDIRECT_ERRORS)
        );
        assert!(
            readiness
                .update(now + Duration::from_secs(1), &at(1000 + 3 * ERROR_THRESHOLD), true)
                .is_empty()
        );
        let changes = readiness.update(now + RETRY_AFTER, &at(1000 + 3 * ERROR_THRESHOLD), true);
        assert_eq!(changes, vec![(3, Change::Ready("v1".into()))]);
    }

    #[test]
    fn a_port_no_longer_routed_is_released() {
        let mut readiness = Readiness::default();
        let now = Instant::now();
        readiness.update(now, &BTreeMap::from([(3, port("v1", Some(false), 0))]), true);
        assert_eq!(
            readiness.update(now, &BTreeMap::new(), true),
            vec![(3, Change::Ready(String::new()))]
        );
    }

    #[test]
    fn the_message_names_the_peer_and_the_remedy() {
        let mut h = EgressHold {
            cause: hold_cause::NO_XDP_XMIT,
            peer_ifindex: 7,
            kernel_forwarding: 1,
            ..EgressHold::default()
        };
        h.peer_name[..3].copy_from_slice(b"vh1");
        let d = describe("v1", &h);
        assert_eq!(d.cause, "no_xdp_xmit");
        assert_eq!(d.peer.as_deref(), Some("vh1"));
        assert!(
            d.message.contains("veth peer vh1 has no XDP program and GRO off"),
            "{}",
            d.message
        );
        assert!(d.message.contains("`ethtool -K vh1 gro on`"), "{}", d.message);
        assert!(!d.message.contains("forwarding is off"), "{}", d.message);
        let d = describe(
            "eth1",
            &EgressHold { cause: hold_cause::NO_XDP_XMIT, ..EgressHold::default() },
        );
        assert!(d.message.contains("ndo_xdp_xmit"), "{}", d.message);
        assert!(d.message.contains("net.ipv4.ip_forward=1"), "{}", d.message);
        let d = describe(
            "eth1",
            &EgressHold { cause: hold_cause::REDIRECT_ERRORS, ..EgressHold::default() },
        );
        assert_eq!(d.cause, "redirect_errors");
    }

    #[test]
    fn a_hostile_peer_name_is_shown_escaped() {
        let mut h = EgressHold {
            cause: hold_cause::NO_XDP_XMIT,
            peer_ifindex: 7,
            kernel_forwarding: 1,
            ..EgressHold::default()
        };
        let name = b"\x1b[2Jx\\\xff\x07`rm`";
        h.peer_name[..name.len()].copy_from_slice(name);
        let d = describe("v1", &h);
        let peer = d.peer.expect("a peer");
        assert_eq!(peer, "\\x1b[2Jx\\x5c\\xff\\x07`rm`");
        assert!(d.message.bytes().all(|b| b.is_ascii() && !b.is_ascii_control()), "{}", d.message);
    }

    #[test]
    fn hostile_netlink_bytes_are_parsed_in_bounded_time() {
        // The attribute parser on every length field and truncation, and on pseudo-random
        // buffers: it must neither panic nor loop.
        let started = Instant::now();
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut parsed = 0usize;
        for round in 0..200_000u32 {
            let len = (round % 97) as usize;
            let mut buf = vec![0u8; len];
            for b in &mut buf {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                *b = seed as u8;
            }
            if len >= 2 && round % 3 == 0 {
                // Lengths that point past the end, or are 0 to 3.
                buf[0] = (round % 5) as u8;
                buf[1] = 0;
            }
            parsed += attrs(&buf).len();
        }
        let elapsed = started.elapsed();
        println!("200000 hostile attribute buffers parsed in {elapsed:?} ({parsed} attributes)");
        assert!(elapsed < Duration::from_secs(20), "{elapsed:?}");
    }

    #[test]
    fn attributes_round_trip() {
        let mut b = Vec::new();
        attr(&mut b, 3, b"abc\0");
        attr(&mut b, 0x8000 | 5, &7u32.to_ne_bytes());
        let a = attrs(&b);
        assert_eq!(a.get(&3).copied(), Some(&b"abc\0"[..]));
        assert_eq!(a.get(&5).and_then(|v| u32_of(v)), Some(7));
        assert!(attrs(&[9, 0, 1]).is_empty(), "a short attribute is ignored");
    }
}
