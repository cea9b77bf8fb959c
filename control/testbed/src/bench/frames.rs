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
        frame::{checksum, diff, ones_sum},
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

    /// Bytes from a hex dump.
    fn unhex(text: &str) -> Vec<u8> {
        text.split_whitespace().map(|b| u8::from_str_radix(b, 16).expect("hex")).collect()
    }

    /// The frames as the generator sent them before they were built with `crate::frame` (the
    /// bench's own builder made these bytes): a change here changes the traffic that earlier
    /// measurements were taken with.
    #[test]
    fn the_frames_are_those_measured_so_far() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let (v4, v6) =
            ((ip("10.10.1.1"), ip("198.18.7.9")), (ip("fd00:10:1::1"), ip("2001:db8:4:5::9")));
        for ((src, dst), want) in [
            (
                v4,
                "02 00 00 00 00 02 02 00 00 00 00 01 08 00 45 00
                 00 32 00 00 40 00 40 11 62 95 0a 0a 01 01 c6 12
                 07 09 00 09 00 09 00 1e 1f fa 73 6c 75 69 63 65
                 20 62 65 6e 63 68 73 6c 75 69 63 65 20 62 65 6e",
            ),
            (
                v6,
                "02 00 00 00 00 02 02 00 00 00 00 01 86 dd 60 00
                 00 00 00 0a 11 40 fd 00 00 10 00 01 00 00 00 00
                 00 00 00 00 00 01 20 01 0d b8 00 04 00 05 00 00
                 00 00 00 00 00 09 00 09 00 09 00 0a 61 7e 73 6c",
            ),
        ] {
            let (want, got) = (unhex(want), frame(src, dst, MAC_A, MAC_B, TEMPLATE_LEN));
            assert!(got == want, "{src} to {dst}: {}", diff(&want, &got));
        }
        // Longer frames: their UDP checksums cover the whole payload.
        for (family, (src, dst), len, ip_check, udp_check) in [
            (Family::V4, v4, 65, [0x62, 0x94], [0xbc, 0xf7]),
            (Family::V4, v4, 590, [0x60, 0x87], [0x51, 0x53]),
            (Family::V4, v4, 1514, [0x5c, 0xeb], [0x36, 0x27]),
            (Family::V6, v6, 65, [0, 0], [0xec, 0x7b]),
            (Family::V6, v6, 590, [0, 0], [0xa0, 0xd5]),
            (Family::V6, v6, 1514, [0, 0], [0x85, 0xa9]),
        ] {
            let d = gen_dest(&frame(src, dst, MAC_A, MAC_B, len), family);
            assert_eq!((d.ip_check, d.udp_check), (ip_check, udp_check), "{family:?} {len}");
        }
    }
}
