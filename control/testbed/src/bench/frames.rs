//! The generator's frames: per frame size, the template every destination shares, and per
//! destination the address and checksums the generator patches in.

use std::net::IpAddr;

use sluice_common::bench::{GenDest, MAX_FRAME_LEN, TEMPLATE_LEN, UDP_PORT, offsets};

use crate::table::Family;

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
            f[offsets::V4_UDP_CHECK..offsets::V4_UDP_CHECK + 2].copy_from_slice(&d.udp_check);
        }
        Family::V6 => {
            f[offsets::V6_DST..offsets::V6_DST + 16].copy_from_slice(&d.addr);
            f[offsets::V6_UDP_CHECK..offsets::V6_UDP_CHECK + 2].copy_from_slice(&d.udp_check);
        }
    }
    f
}

/// The Internet checksum (RFC 1071) of the concatenated parts, each of even length but the last.
fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum = 0u32;
    for part in parts {
        for pair in part.chunks(2) {
            sum += u32::from(u16::from_be_bytes([pair[0], pair.get(1).copied().unwrap_or(0)]));
        }
    }
    !sluice_common::csum_fold(sum)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::Table;

    const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 2];

    fn frame(family: Family, dst: IpAddr, len: usize) -> Vec<u8> {
        let template = frame_template(family.links().1[0], MAC_A, MAC_B, len);
        apply_dest(&template, family, &gen_dest(&template, dst))
    }

    #[test]
    fn ipv4_frames_carry_valid_checksums() {
        let table = Table::generate(Family::V4, 1000, 5, 2);
        for len in [64, 65, 590, 1514] {
            for dst in table.destinations(50, 5) {
                let f = frame(Family::V4, dst, len);
                assert_eq!(f.len(), len);
                assert_eq!(&f[0..6], &MAC_B, "destination MAC");
                assert_eq!(checksum(&[&f[14..34]]), 0, "IPv4 header checksum to {dst}");
                assert_eq!(u16::from_be_bytes([f[16], f[17]]) as usize, len - 14, "total length");
                let udp_len = ((len - 34) as u32).to_be_bytes();
                assert_eq!(u16::from_be_bytes([f[38], f[39]]) as usize, len - 34, "UDP length");
                assert_eq!(
                    checksum(&[&f[26..34], &[0, 17], &udp_len, &f[34..]]),
                    0,
                    "UDP checksum, {len} bytes"
                );
                assert_eq!(IpAddr::from(<[u8; 4]>::try_from(&f[30..34]).unwrap()), dst);
            }
        }
    }

    #[test]
    fn ipv6_frames_carry_valid_checksums() {
        let table = Table::generate(Family::V6, 1000, 5, 2);
        for len in [64, 65, 590, 1514] {
            for dst in table.destinations(50, 5) {
                let f = frame(Family::V6, dst, len);
                assert_eq!(f.len(), len);
                assert_eq!(u16::from_be_bytes([f[18], f[19]]) as usize, len - 54, "payload length");
                assert_eq!(u16::from_be_bytes([f[58], f[59]]) as usize, len - 54, "UDP length");
                let udp_len = ((len - 54) as u32).to_be_bytes();
                assert_eq!(
                    checksum(&[&f[22..54], &[0, 17], &udp_len, &f[54..]]),
                    0,
                    "UDP checksum, {len} bytes"
                );
                assert_eq!(IpAddr::from(<[u8; 16]>::try_from(&f[38..54]).unwrap()), dst);
            }
        }
    }

    /// The generator trims its one initial frame to every size and writes only the template:
    /// each size's frame must be the longest one's bytes past the template.
    #[test]
    fn shorter_frames_are_the_start_of_the_longest_past_the_template() {
        for family in [Family::V4, Family::V6] {
            let src = family.links().1[0];
            let longest = frame_template(src, MAC_A, MAC_B, MAX_FRAME_LEN);
            for len in [TEMPLATE_LEN, 590, 1000] {
                let f = frame_template(src, MAC_A, MAC_B, len);
                assert_eq!(f[TEMPLATE_LEN..], longest[TEMPLATE_LEN..len], "{family:?} {len}");
            }
        }
    }
}
