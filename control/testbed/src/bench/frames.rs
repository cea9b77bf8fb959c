//! The generator's frames. Each is built whole with [`crate::frame`], every checksum computed
//! from scratch; the generator takes them in two parts: per frame size, the template every
//! destination shares (the frame with its destination-dependent fields zero), and per
//! destination those fields ([`GenDest`]), which it writes into the template on every run.

use std::net::IpAddr;

use sluice_common::bench::{GenDest, MAX_FRAME_LEN, TEMPLATE_LEN, UDP_PORT, offsets};

use crate::{
    frame::{Frame, IP_DF, Ipv4, Ipv6, L4, Mac},
    table::Family,
};

/// The payload of every frame, repeated to its end.
const PAYLOAD: &[u8] = b"sluice bench";

/// The frame of `len` bytes from `src` to `dst`: Ethernet, IPv4 or IPv6, UDP to the discard
/// port and a recognisable payload. The payload's bytes depend only on their place in the frame,
/// so a shorter frame's payload is the start of a longer one's (the generator trims one initial
/// frame to every size).
pub(super) fn frame(src: IpAddr, dst: IpAddr, src_mac: Mac, dst_mac: Mac, len: usize) -> Vec<u8> {
    assert!((TEMPLATE_LEN..=MAX_FRAME_LEN).contains(&len), "frame length {len}");
    let udp = |headers: usize| L4::Udp {
        sport: UDP_PORT,
        dport: UDP_PORT,
        payload: PAYLOAD.iter().copied().cycle().take(len - headers - 8).collect(),
    };
    match (src, dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => Frame::v4(
            dst_mac,
            src_mac,
            Ipv4 {
                src: src.octets(),
                dst: dst.octets(),
                tos: 0,
                ident: 0,
                frag: IP_DF,
                ttl: 64,
                options: Vec::new(),
                l4: udp(14 + 20),
            },
        ),
        (IpAddr::V6(src), IpAddr::V6(dst)) => Frame::v6(
            dst_mac,
            src_mac,
            Ipv6 {
                src: src.octets(),
                dst: dst.octets(),
                traffic_class: 0,
                flow_label: 0,
                hop_limit: 64,
                l4: udp(14 + 40),
            },
        ),
        _ => panic!("{src} and {dst} are not of one family"),
    }
    .bytes()
}

/// The template of `frame`, the same for every destination: the frame with its destination
/// address and checksums zero.
pub(super) fn template(frame: &[u8], family: Family) -> Vec<u8> {
    let mut t = frame.to_vec();
    patch(&mut t, family, &GenDest::default());
    t
}

/// The generator's entry for `frame`: its destination address and checksums.
pub(super) fn gen_dest(frame: &[u8], family: Family) -> GenDest {
    let mut d = GenDest::default();
    match family {
        Family::V4 => {
            d.addr[..4].copy_from_slice(&frame[offsets::V4_DST..offsets::V4_DST + 4]);
            d.ip_check.copy_from_slice(&frame[offsets::V4_CHECK..offsets::V4_CHECK + 2]);
            d.udp_check.copy_from_slice(&frame[offsets::V4_UDP_CHECK..offsets::V4_UDP_CHECK + 2]);
        }
        Family::V6 => {
            d.addr.copy_from_slice(&frame[offsets::V6_DST..offsets::V6_DST + 16]);
            d.udp_check.copy_from_slice(&frame[offsets::V6_UDP_CHECK..offsets::V6_UDP_CHECK + 2]);
        }
    }
    d
}

/// Writes destination `d` into a frame of `family`: what `sluice_gen` does on every run.
fn patch(frame: &mut [u8], family: Family, d: &GenDest) {
    match family {
        Family::V4 => {
            frame[offsets::V4_CHECK..offsets::V4_CHECK + 2].copy_from_slice(&d.ip_check);
            frame[offsets::V4_DST..offsets::V4_DST + 4].copy_from_slice(&d.addr[..4]);
            frame[offsets::V4_UDP_CHECK..offsets::V4_UDP_CHECK + 2].copy_from_slice(&d.udp_check);
        }
        Family::V6 => {
            frame[offsets::V6_DST..offsets::V6_DST + 16].copy_from_slice(&d.addr);
            frame[offsets::V6_UDP_CHECK..offsets::V6_UDP_CHECK + 2].copy_from_slice(&d.udp_check);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        frame::{checksum, ones_sum},
        table::Table,
    };

    const MAC_A: Mac = [2, 0, 0, 0, 0, 1];
    const MAC_B: Mac = [2, 0, 0, 0, 0, 2];

    fn to(family: Family, dst: IpAddr, len: usize) -> Vec<u8> {
        frame(family.links().1[0], dst, MAC_A, MAC_B, len)
    }

    #[test]
    fn ipv4_frames_carry_valid_checksums() {
        let table = Table::generate(Family::V4, 1000, 5, 2);
        for len in [64, 65, 590, 1514] {
            for dst in table.destinations(50, 5) {
                let f = to(Family::V4, dst, len);
                assert_eq!(f.len(), len);
                assert_eq!(&f[0..6], &MAC_B, "destination MAC");
                assert_eq!(checksum(0, &f[14..34]), 0, "IPv4 header checksum to {dst}");
                assert_eq!(u16::from_be_bytes([f[16], f[17]]) as usize, len - 14, "total length");
                assert_eq!(u16::from_be_bytes([f[38], f[39]]) as usize, len - 34, "UDP length");
                let pseudo = ones_sum(&f[26..34]) + 17 + (len - 34) as u32;
                assert_eq!(checksum(pseudo, &f[34..]), 0, "UDP checksum, {len} bytes");
                assert_eq!(IpAddr::from(<[u8; 4]>::try_from(&f[30..34]).unwrap()), dst);
            }
        }
    }

    #[test]
    fn ipv6_frames_carry_valid_checksums() {
        let table = Table::generate(Family::V6, 1000, 5, 2);
        for len in [64, 65, 590, 1514] {
            for dst in table.destinations(50, 5) {
                let f = to(Family::V6, dst, len);
                assert_eq!(f.len(), len);
                assert_eq!(u16::from_be_bytes([f[18], f[19]]) as usize, len - 54, "payload length");
                assert_eq!(u16::from_be_bytes([f[58], f[59]]) as usize, len - 54, "UDP length");
                let pseudo = ones_sum(&f[22..54]) + 17 + (len - 54) as u32;
                assert_eq!(checksum(pseudo, &f[54..]), 0, "UDP checksum, {len} bytes");
                assert_eq!(IpAddr::from(<[u8; 16]>::try_from(&f[38..54]).unwrap()), dst);
            }
        }
    }

    /// The generator trims its one initial frame to every size and writes only the template:
    /// each size's frame must be the longest one's bytes past the template.
    #[test]
    fn shorter_frames_are_the_start_of_the_longest_past_the_template() {
        for family in [Family::V4, Family::V6] {
            let dst = Table::generate(family, 100, 1, 1).destinations(1, 1)[0];
            let longest = to(family, dst, MAX_FRAME_LEN);
            for len in [TEMPLATE_LEN, 590, 1000] {
                let f = to(family, dst, len);
                assert_eq!(f[TEMPLATE_LEN..], longest[TEMPLATE_LEN..len], "{family:?} {len}");
            }
        }
    }

    /// The template with a destination's entry written in, as the generator does, is the frame
    /// to that destination; the template is the same for every destination.
    #[test]
    fn template_and_destination_make_the_frame() {
        for family in [Family::V4, Family::V6] {
            let table = Table::generate(family, 1000, 7, 2);
            for len in [64, 65, 590, 1514] {
                let dsts = table.destinations(20, 7);
                let first = template(&to(family, dsts[0], len), family);
                for dst in dsts {
                    let f = to(family, dst, len);
                    let mut t = template(&f, family);
                    assert_eq!(t, first, "{family:?} {len}: the template to {dst}");
                    patch(&mut t, family, &gen_dest(&f, family));
                    assert_eq!(t, f, "{family:?} {len} to {dst}");
                }
            }
        }
    }

    /// The builder the generator's frames came from before they were built with
    /// [`crate::frame`], kept to show that the frames did not change.
    mod previous {
        use super::*;

        /// The frame of `len` bytes every destination shares: Ethernet, IPv4 or IPv6 (by `src`), UDP to
        /// the discard port and a recognisable payload, with the destination address and the checksums
        /// zero. The payload's bytes depend only on their place in the frame, so a shorter frame's payload
        /// is the start of a longer one's (the generator trims one initial frame to every size).
        pub(super) fn frame_template(
            src: IpAddr,
            src_mac: [u8; 6],
            dst_mac: [u8; 6],
            len: usize,
        ) -> Vec<u8> {
            assert!((TEMPLATE_LEN..=MAX_FRAME_LEN).contains(&len), "frame length {len}");
            let mut f = vec![0u8; len];
            f[0..6].copy_from_slice(&dst_mac);
            f[6..12].copy_from_slice(&src_mac);
            let udp = match src {
                IpAddr::V4(src) => {
                    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
                    let total = (len - 14) as u16;
                    // Version 4, IHL 5; DSCP 0; total length; id 0; DF; TTL 64; UDP.
                    f[14..24].copy_from_slice(&[
                        0x45,
                        0,
                        (total >> 8) as u8,
                        total as u8,
                        0,
                        0,
                        0x40,
                        0,
                        64,
                        17,
                    ]);
                    f[26..30].copy_from_slice(&src.octets());
                    14 + 20
                }
                IpAddr::V6(src) => {
                    f[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
                    let payload = (len - 14 - 40) as u16;
                    f[14] = 0x60;
                    f[18..20].copy_from_slice(&payload.to_be_bytes());
                    f[20] = 17;
                    f[21] = 64;
                    f[22..38].copy_from_slice(&src.octets());
                    14 + 40
                }
            };
            let udp_len = (len - udp) as u16;
            f[udp..udp + 2].copy_from_slice(&UDP_PORT.to_be_bytes());
            f[udp + 2..udp + 4].copy_from_slice(&UDP_PORT.to_be_bytes());
            f[udp + 4..udp + 6].copy_from_slice(&udp_len.to_be_bytes());
            for (b, p) in f[udp + 8..].iter_mut().zip(b"sluice bench".iter().cycle()) {
                *b = *p;
            }
            f
        }

        /// The generator's entry for `dst`: the address and the checksums of the template carrying it.
        pub(super) fn gen_dest(template: &[u8], dst: IpAddr) -> GenDest {
            let mut d = GenDest::default();
            match dst {
                IpAddr::V4(a) => d.addr[..4].copy_from_slice(&a.octets()),
                IpAddr::V6(a) => d.addr = a.octets(),
            }
            let family = if dst.is_ipv4() { Family::V4 } else { Family::V6 };
            let f = apply_dest(template, family, &d);
            let udp = match family {
                Family::V4 => {
                    d.ip_check = checksum(&[&f[14..34]]).to_be_bytes();
                    34
                }
                Family::V6 => 54,
            };
            let (src, dst) = match family {
                Family::V4 => (&f[26..30], &f[30..34]),
                Family::V6 => (&f[22..38], &f[38..54]),
            };
            let udp_len = ((f.len() - udp) as u32).to_be_bytes();
            // RFC 768 / RFC 8200 8.1: the pseudo-header (addresses, protocol, UDP length) and the
            // datagram. A computed 0 is sent as 0xffff.
            let sum = checksum(&[src, dst, &[0, 17], &udp_len, &f[udp..]]);
            d.udp_check = (if sum == 0 { 0xffff } else { sum }).to_be_bytes();
            d
        }

        /// The frame the generator writes for destination `d`: what `sluice_gen` does, in userspace.
        pub(super) fn apply_dest(template: &[u8], family: Family, d: &GenDest) -> Vec<u8> {
            let mut f = template.to_vec();
            match family {
                Family::V4 => {
                    f[offsets::V4_CHECK..offsets::V4_CHECK + 2].copy_from_slice(&d.ip_check);
                    f[offsets::V4_DST..offsets::V4_DST + 4].copy_from_slice(&d.addr[..4]);
                    f[offsets::V4_UDP_CHECK..offsets::V4_UDP_CHECK + 2]
                        .copy_from_slice(&d.udp_check);
                }
                Family::V6 => {
                    f[offsets::V6_DST..offsets::V6_DST + 16].copy_from_slice(&d.addr);
                    f[offsets::V6_UDP_CHECK..offsets::V6_UDP_CHECK + 2]
                        .copy_from_slice(&d.udp_check);
                }
            }
            f
        }

        /// The Internet checksum (RFC 1071) of the concatenated parts, each of even length but the last.
        pub(super) fn checksum(parts: &[&[u8]]) -> u16 {
            let mut sum = 0u32;
            for part in parts {
                for pair in part.chunks(2) {
                    sum +=
                        u32::from(u16::from_be_bytes([pair[0], pair.get(1).copied().unwrap_or(0)]));
                }
            }
            !sluice_common::csum_fold(sum)
        }
    }

    /// Every length, both families, many destinations and two MAC pairs: the template, the
    /// destination entries and so the frames the generator sends are byte for byte those of the
    /// previous builder.
    #[test]
    fn the_frames_are_those_of_the_previous_builder() {
        for family in [Family::V4, Family::V6] {
            let src = family.links().1[0];
            let dsts = Table::generate(family, 5000, 3, 4).destinations(8, 3);
            for (src_mac, dst_mac) in
                [(MAC_A, MAC_B), ([0x0a, 0xbc, 0xde, 0xf0, 0x12, 0x34], [0xfe; 6])]
            {
                for len in TEMPLATE_LEN..=MAX_FRAME_LEN {
                    let old_template = previous::frame_template(src, src_mac, dst_mac, len);
                    for &dst in &dsts {
                        let new = frame(src, dst, src_mac, dst_mac, len);
                        let old_dest = previous::gen_dest(&old_template, dst);
                        assert_eq!(
                            template(&new, family),
                            old_template,
                            "{family:?} {len} to {dst}"
                        );
                        assert_eq!(gen_dest(&new, family), old_dest, "{family:?} {len} to {dst}");
                        let old = previous::apply_dest(&old_template, family, &old_dest);
                        assert_eq!(new, old, "{family:?} {len} to {dst}");
                    }
                }
            }
        }
    }
}
