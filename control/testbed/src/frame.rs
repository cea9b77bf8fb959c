//! Hand-written frame builders for the packet tests and the benchmark's generator: Ethernet with
//! an optional 802.1Q tag, IPv4 (options allowed), IPv6, UDP, TCP and ICMP echo. Every checksum is
//! computed from scratch over the whole header, so an expected frame never shares code with the
//! incremental update (`csum_ttl_decrement`) the dataplane uses.

pub type Mac = [u8; 6];

pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_LLDP: u16 = 0x88cc;

pub const IPPROTO_HOPOPTS: u8 = 0;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_FRAGMENT: u8 = 44;
pub const IPPROTO_ICMPV6: u8 = 58;

/// The IPv4 flags-and-fragment-offset word with only Don't Fragment set.
pub const IP_DF: u16 = 0x4000;
/// More Fragments.
pub const IP_MF: u16 = 0x2000;

/// Sum of the big-endian 16-bit words of `data` (an odd last byte is padded with zero), not folded.
pub fn ones_sum(data: &[u8]) -> u32 {
    data.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum()
}

/// Folds a 32-bit sum to 16 bits with end-around carry.
pub fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The Internet checksum (RFC 1071) of `data` plus an already summed pseudo-header.
pub fn checksum(pseudo: u32, data: &[u8]) -> u16 {
    !fold(pseudo + ones_sum(data))
}

/// The IPv4 header checksum of `header` as if its checksum field were zero.
pub fn ipv4_header_checksum(header: &[u8]) -> u16 {
    let mut h = header.to_vec();
    h[10] = 0;
    h[11] = 0;
    checksum(0, &h)
}

/// Recomputes the header checksum of the IPv4 header at `l3` in `frame` in place (after a test
/// mangled a field on purpose).
pub fn refresh_ipv4_checksum(frame: &mut [u8], l3: usize) {
    let ihl = usize::from(frame[l3] & 0x0f) * 4;
    let end = (l3 + ihl.max(20)).min(frame.len());
    let c = ipv4_header_checksum(&frame[l3..end]);
    frame[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
}

/// A transport payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum L4 {
    Udp {
        sport: u16,
        dport: u16,
        payload: Vec<u8>,
    },
    Tcp {
        sport: u16,
        dport: u16,
        seq: u32,
        flags: u8,
        payload: Vec<u8>,
    },
    /// ICMP or `ICMPv6` echo request.
    Echo {
        id: u16,
        seq: u16,
    },
    /// Anything else, bytes as given (fragments, extension headers, ...).
    Raw {
        proto: u8,
        bytes: Vec<u8>,
    },
}

impl L4 {
    pub fn udp(sport: u16, dport: u16) -> Self {
        Self::Udp { sport, dport, payload: b"sluice packet test".to_vec() }
    }

    pub fn tcp(sport: u16, dport: u16) -> Self {
        // SYN.
        Self::Tcp { sport, dport, seq: 0x0102_0304, flags: 0x02, payload: Vec::new() }
    }

    /// The protocol number for the IP header (`v6` picks `ICMPv6` for echo).
    pub fn proto(&self, v6: bool) -> u8 {
        match self {
            Self::Udp { .. } => IPPROTO_UDP,
            Self::Tcp { .. } => IPPROTO_TCP,
            Self::Echo { .. } if v6 => IPPROTO_ICMPV6,
            Self::Echo { .. } => IPPROTO_ICMP,
            Self::Raw { proto, .. } => *proto,
        }
    }

    /// The port word `sluice_common::flow_words` takes: the first four bytes of the TCP or UDP
    /// header as they lie in memory, 0 for protocols without ports.
    pub fn ports_word(&self) -> u32 {
        match self {
            Self::Udp { sport, dport, .. } | Self::Tcp { sport, dport, .. } => {
                let (s, d) = (sport.to_be_bytes(), dport.to_be_bytes());
                u32::from_ne_bytes([s[0], s[1], d[0], d[1]])
            }
            Self::Echo { .. } | Self::Raw { .. } => 0,
        }
    }

    /// The encoded segment; `pseudo` is the summed pseudo-header (ignored for ICMP and raw bytes).
    fn bytes(&self, pseudo: u32, v6: bool) -> Vec<u8> {
        let (mut b, csum_at, zero_is_ffff) = match self {
            Self::Udp { sport, dport, payload } => {
                let len = u16::try_from(8 + payload.len()).expect("udp length");
                let mut b = Vec::new();
                b.extend_from_slice(&sport.to_be_bytes());
                b.extend_from_slice(&dport.to_be_bytes());
                b.extend_from_slice(&len.to_be_bytes());
                b.extend_from_slice(&[0, 0]);
                b.extend_from_slice(payload);
                (b, Some(6), true)
            }
            Self::Tcp { sport, dport, seq, flags, payload } => {
                let mut b = Vec::new();
                b.extend_from_slice(&sport.to_be_bytes());
                b.extend_from_slice(&dport.to_be_bytes());
                b.extend_from_slice(&seq.to_be_bytes());
                b.extend_from_slice(&0u32.to_be_bytes());
                b.extend_from_slice(&[5 << 4, *flags, 0xff, 0xff, 0, 0, 0, 0]);
                b.extend_from_slice(payload);
                (b, Some(16), false)
            }
            Self::Echo { id, seq } => {
                let mut b = vec![if v6 { 128 } else { 8 }, 0, 0, 0];
                b.extend_from_slice(&id.to_be_bytes());
                b.extend_from_slice(&seq.to_be_bytes());
                b.extend_from_slice(b"ping");
                (b, Some(2), false)
            }
            Self::Raw { bytes, .. } => (bytes.clone(), None, false),
        };
        if let Some(at) = csum_at {
            let pseudo = if matches!(self, Self::Echo { .. }) && !v6 { 0 } else { pseudo };
            let mut c = checksum(pseudo, &b);
            // RFC 768: a computed UDP checksum of zero is sent as all ones.
            if c == 0 && zero_is_ffff {
                c = 0xffff;
            }
            b[at..at + 2].copy_from_slice(&c.to_be_bytes());
        }
        b
    }
}

/// An IPv4 packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ipv4 {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub tos: u8,
    pub ident: u16,
    /// Flags and fragment offset (in 8-byte units), host order.
    pub frag: u16,
    pub ttl: u8,
    /// Options, a multiple of 4 bytes long.
    pub options: Vec<u8>,
    pub l4: L4,
}

impl Ipv4 {
    pub fn new(src: [u8; 4], dst: [u8; 4], l4: L4) -> Self {
        Self { src, dst, tos: 0, ident: 0x1c46, frag: IP_DF, ttl: 64, options: Vec::new(), l4 }
    }

    pub fn bytes(&self) -> Vec<u8> {
        assert!(
            self.options.len().is_multiple_of(4) && self.options.len() <= 40,
            "bad options length"
        );
        let proto = self.l4.proto(false);
        let ihl = 20 + self.options.len();
        let l4_len = self.l4.bytes(0, false).len();
        let mut pseudo = ones_sum(&self.src) + ones_sum(&self.dst) + u32::from(proto);
        pseudo += u32::try_from(l4_len).expect("l4 length");
        let l4 = self.l4.bytes(pseudo, false);
        let total = u16::try_from(ihl + l4.len()).expect("ipv4 total length");
        let mut h = Vec::with_capacity(usize::from(total));
        h.push(0x40 | (ihl / 4) as u8);
        h.push(self.tos);
        h.extend_from_slice(&total.to_be_bytes());
        h.extend_from_slice(&self.ident.to_be_bytes());
        h.extend_from_slice(&self.frag.to_be_bytes());
        h.extend_from_slice(&[self.ttl, proto, 0, 0]);
        h.extend_from_slice(&self.src);
        h.extend_from_slice(&self.dst);
        h.extend_from_slice(&self.options);
        let c = ipv4_header_checksum(&h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        h.extend_from_slice(&l4);
        h
    }
}

/// An IPv6 packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ipv6 {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub traffic_class: u8,
    pub flow_label: u32,
    pub hop_limit: u8,
    pub l4: L4,
}

impl Ipv6 {
    pub fn new(src: [u8; 16], dst: [u8; 16], l4: L4) -> Self {
        Self { src, dst, traffic_class: 0, flow_label: 0x1_2345, hop_limit: 64, l4 }
    }

    pub fn bytes(&self) -> Vec<u8> {
        let next = self.l4.proto(true);
        let len = self.l4.bytes(0, true).len();
        let mut pseudo = ones_sum(&self.src) + ones_sum(&self.dst) + u32::from(next);
        pseudo += u32::try_from(len).expect("ipv6 payload length");
        let l4 = self.l4.bytes(pseudo, true);
        let vtf = 6 << 28 | u32::from(self.traffic_class) << 20 | (self.flow_label & 0xf_ffff);
        let mut h = Vec::with_capacity(40 + l4.len());
        h.extend_from_slice(&vtf.to_be_bytes());
        h.extend_from_slice(&u16::try_from(l4.len()).expect("payload length").to_be_bytes());
        h.extend_from_slice(&[next, self.hop_limit]);
        h.extend_from_slice(&self.src);
        h.extend_from_slice(&self.dst);
        h.extend_from_slice(&l4);
        h
    }
}

/// What an Ethernet frame carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    V4(Ipv4),
    V6(Ipv6),
    Other { ether_type: u16, bytes: Vec<u8> },
}

/// An Ethernet frame, optionally with one 802.1Q tag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub dst: Mac,
    pub src: Mac,
    /// The tag's TCI (priority and VLAN id), host order.
    pub tci: Option<u16>,
    pub body: Body,
    /// Zero bytes after the L3 packet (Ethernet minimum-size padding).
    pub padding: usize,
}

impl Frame {
    pub fn v4(dst: Mac, src: Mac, ip: Ipv4) -> Self {
        Self { dst, src, tci: None, body: Body::V4(ip), padding: 0 }
    }

    pub fn v6(dst: Mac, src: Mac, ip: Ipv6) -> Self {
        Self { dst, src, tci: None, body: Body::V6(ip), padding: 0 }
    }

    pub fn other(dst: Mac, src: Mac, ether_type: u16, bytes: Vec<u8>) -> Self {
        Self { dst, src, tci: None, body: Body::Other { ether_type, bytes }, padding: 0 }
    }

    #[must_use]
    pub fn tagged(mut self, tci: u16) -> Self {
        self.tci = Some(tci);
        self
    }

    #[must_use]
    pub fn padded(mut self, padding: usize) -> Self {
        self.padding = padding;
        self
    }

    /// Changes the IPv4 packet inside.
    #[must_use]
    pub fn map4(mut self, edit: impl FnOnce(&mut Ipv4)) -> Self {
        match &mut self.body {
            Body::V4(ip) => edit(ip),
            _ => panic!("not an IPv4 frame"),
        }
        self
    }

    /// Changes the IPv6 packet inside.
    #[must_use]
    pub fn map6(mut self, edit: impl FnOnce(&mut Ipv6)) -> Self {
        match &mut self.body {
            Body::V6(ip) => edit(ip),
            _ => panic!("not an IPv6 frame"),
        }
        self
    }

    /// Offset of the L3 header.
    pub fn l3(&self) -> usize {
        if self.tci.is_some() { 18 } else { 14 }
    }

    pub fn bytes(&self) -> Vec<u8> {
        let (ether_type, payload) = match &self.body {
            Body::V4(ip) => (ETH_P_IPV4, ip.bytes()),
            Body::V6(ip) => (ETH_P_IPV6, ip.bytes()),
            Body::Other { ether_type, bytes } => (*ether_type, bytes.clone()),
        };
        let mut f = Vec::with_capacity(18 + payload.len() + self.padding);
        f.extend_from_slice(&self.dst);
        f.extend_from_slice(&self.src);
        if let Some(tci) = self.tci {
            f.extend_from_slice(&ETH_P_8021Q.to_be_bytes());
            f.extend_from_slice(&tci.to_be_bytes());
        }
        f.extend_from_slice(&ether_type.to_be_bytes());
        f.extend_from_slice(&payload);
        f.resize(f.len() + self.padding, 0);
        f
    }

    /// The frame a router sends for this one: new addresses and tag, TTL or hop limit one less.
    #[must_use]
    pub fn routed(&self, dst: Mac, src: Mac, tci: Option<u16>) -> Self {
        let mut out = self.clone();
        out.dst = dst;
        out.src = src;
        out.tci = tci;
        match &mut out.body {
            Body::V4(ip) => ip.ttl -= 1,
            Body::V6(ip) => ip.hop_limit -= 1,
            Body::Other { .. } => panic!("only IP is routed"),
        }
        out
    }
}

impl From<Frame> for Vec<u8> {
    fn from(frame: Frame) -> Self {
        frame.bytes()
    }
}

impl From<&Frame> for Vec<u8> {
    fn from(frame: &Frame) -> Self {
        frame.bytes()
    }
}

/// An IPv4 address, from its text.
pub fn ip4(text: &str) -> [u8; 4] {
    text.parse::<std::net::Ipv4Addr>().expect("an IPv4 address").octets()
}

/// An IPv6 address, from its text.
pub fn ip6(text: &str) -> [u8; 16] {
    text.parse::<std::net::Ipv6Addr>().expect("an IPv6 address").octets()
}

/// A readable dump of a frame, 16 bytes a line, for failure messages.
pub fn hex(bytes: &[u8]) -> String {
    bytes
        .chunks(16)
        .enumerate()
        .map(|(i, line)| {
            let words: Vec<String> = line.iter().map(|b| format!("{b:02x}")).collect();
            format!("    {:04x}: {}", i * 16, words.join(" "))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Where two frames differ, for failure messages.
pub fn diff(expected: &[u8], got: &[u8]) -> String {
    let first = expected.iter().zip(got).position(|(a, b)| a != b);
    let at = match first {
        Some(i) => format!("first difference at byte {i}"),
        None => format!("lengths differ: expected {}, got {}", expected.len(), got.len()),
    };
    format!("{at}\n  expected:\n{}\n  got:\n{}", hex(expected), hex(got))
}
