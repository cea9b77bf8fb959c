//! The entries of the IPv4 DIR-24-8 tables (`TBL24_V4`, `DIR8_V4`), shared by the XDP program,
//! which reads them, and the control plane, which writes them.
//!
//! The first level keeps one 16-bit entry per /24, two to a word, so that its 2^24 entries take
//! 32 MiB rather than 64 and lookups all over it touch half as many pages. A 16-bit entry is
//! - 0: no route;
//! - bit 15 set: a pointer to the group of second-level entries whose id is in the low 15 bits;
//! - otherwise: the index of a result, a full entry (below) kept after the first level in the same
//!   map. Tables name few distinct results (one per next hop or ECMP group in use), so the
//!   results stay in a few cache lines.
//!
//! Before the first level, a summary of it keeps one 16-bit entry per /16 (128 KiB, after the
//! results in the same map): the /16's one result when all its /24s have the same one (as a
//! first-level entry: 0 or a result's index), else [`SUMMARY_DESCEND`]. A lookup reads the
//! summary first and the first level only below it, so a table with few long prefixes (one
//! route, or the parts of the space a full table leaves to a short prefix) is answered from the
//! summary's few pages instead of a line of the 32 MiB level each. A second summary, one entry per
//! /8 (512 bytes, after the first), does the same for the /16 summary: a /8 whose /16s all have
//! the same one result is answered from it alone.
//!
//! A full entry (a result, or a second-level entry) is one `u32`, so it is read and written
//! atomically:
//! - 0: no route;
//! - bit 31 set: a pointer to a group of [`GROUP_ENTRIES`] second-level entries (the group id in
//!   the low 24 bits), for a /24 that holds longer prefixes;
//! - otherwise: a route, its [`RouteAction`] in bits 28..31 and its target in bits 0..28.

use crate::{Route, RouteAction};

/// First-level entries: one per /24.
pub const TBL24_ENTRIES: u32 = 1 << 24;
/// Entries in a second-level group: one per address of a /24.
pub const GROUP_ENTRIES: u32 = 256;
/// Second-level groups: /24s that can hold prefixes longer than /24 at the same time.
pub const MAX_GROUPS: u32 = 1 << 14;
/// Words of the first level's 16-bit entries.
pub const TBL24_WORDS: u32 = TBL24_ENTRIES / 2;
/// Results the first level can name; index 0 stands for "no route".
pub const RESULTS: u32 = 1 << 15;
/// Summary entries: one per /16.
pub const SUMMARY_ENTRIES: u32 = 1 << 16;
/// Where the summary's words start in the `TBL24_V4` map.
pub const SUMMARY_OFFSET: u32 = TBL24_WORDS + RESULTS;
/// Words of the summary's 16-bit entries.
pub const SUMMARY_WORDS: u32 = SUMMARY_ENTRIES / 2;
/// Entries of the /8 summary.
pub const SUMMARY8_ENTRIES: u32 = 1 << 8;
/// Where the /8 summary's words start in the `TBL24_V4` map.
pub const SUMMARY8_OFFSET: u32 = SUMMARY_OFFSET + SUMMARY_WORDS;
/// Words of the /8 summary's 16-bit entries.
pub const SUMMARY8_WORDS: u32 = SUMMARY8_ENTRIES / 2;
/// Words of the `TBL24_V4` map: the first level, the results, then the /16 and the /8 summary.
pub const TBL24_MAP_WORDS: u32 = TBL24_WORDS + RESULTS + SUMMARY_WORDS + SUMMARY8_WORDS;

const SHORT_GROUP_BIT: u32 = 1 << 15;
/// A summary entry for a /16 whose /24s differ: look the address up in the first level.
pub const SUMMARY_DESCEND: u32 = SHORT_GROUP_BIT;
const _: () = assert!(MAX_GROUPS <= SHORT_GROUP_BIT);
/// Entries per map value. A BPF array stores each value in a slot rounded up to 8 bytes, so the
/// tables keep 16 entries (one cache line) per value; mapped into userspace they are one flat
/// array of `u32`.
pub const CHUNK: u32 = 16;
/// A map value: [`CHUNK`] consecutive entries.
pub type Chunk = [u32; CHUNK as usize];

const GROUP_BIT: u32 = 1 << 31;
const ACTION_SHIFT: u32 = 28;
const TARGET_MASK: u32 = (1 << ACTION_SHIFT) - 1;

/// Whether the entry points to a group.
#[inline(always)]
pub const fn is_group(entry: u32) -> bool {
    entry & GROUP_BIT != 0
}

/// The group an entry points to.
#[inline(always)]
pub const fn group_entry(entry: u32) -> u32 {
    entry & 0x00ff_ffff
}

/// An entry pointing to group `group`.
#[inline(always)]
pub const fn group_pointer(group: u32) -> u32 {
    GROUP_BIT | group
}

/// The 16-bit first-level entry of `slot`, from the word that holds it.
#[inline(always)]
pub const fn short_entry(word: u32, slot: u32) -> u32 {
    (word >> ((slot & 1) * 16)) & 0xffff
}

/// The word `word` with the 16-bit entry of `slot` replaced by `short`.
#[inline(always)]
pub const fn with_short_entry(word: u32, slot: u32, short: u32) -> u32 {
    let shift = (slot & 1) * 16;
    (word & !(0xffff << shift)) | (short << shift)
}

/// Whether a 16-bit first-level entry points to a group.
#[inline(always)]
pub const fn short_is_group(short: u32) -> bool {
    short & SHORT_GROUP_BIT != 0
}

/// The 16-bit first-level entry pointing to group `group`.
#[inline(always)]
pub const fn short_group_pointer(group: u32) -> u32 {
    SHORT_GROUP_BIT | group
}

/// The group a 16-bit first-level entry points to.
#[inline(always)]
pub const fn short_group(short: u32) -> u32 {
    short & !SHORT_GROUP_BIT
}

/// Encodes a route; `None` when its target does not fit 28 bits or its action is unknown.
#[inline(always)]
pub const fn encode(route: Route) -> Option<u32> {
    if RouteAction::from_u32(route.action).is_none() || route.target > TARGET_MASK {
        return None;
    }
    Some(route.action << ACTION_SHIFT | route.target)
}

/// Decodes a route entry; `None` for "no route" (and for group pointers).
#[inline(always)]
pub const fn decode(entry: u32) -> Option<Route> {
    if entry == 0 || is_group(entry) {
        return None;
    }
    Some(Route { action: entry >> ACTION_SHIFT, target: entry & TARGET_MASK })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_round_trip_and_groups_are_distinct() {
        for action in [RouteAction::Forward, RouteAction::Ecmp, RouteAction::Pass] {
            for target in [0, 1, 65_535, TARGET_MASK] {
                let r = Route { action: action as u32, target };
                let e = encode(r).unwrap();
                assert!(!is_group(e) && e != 0);
                assert_eq!(decode(e), Some(r));
            }
        }
        assert_eq!(encode(Route { action: 1, target: TARGET_MASK + 1 }), None);
        assert_eq!(encode(Route { action: 0, target: 1 }), None);
        let g = group_pointer(MAX_GROUPS - 1);
        assert!(is_group(g));
        assert_eq!(group_entry(g), MAX_GROUPS - 1);
        assert_eq!(decode(g), None);
        assert_eq!(decode(0), None);
    }

    #[test]
    fn short_entries_share_a_word_without_touching_each_other() {
        let word = with_short_entry(with_short_entry(0, 6, 0x1234), 7, short_group_pointer(5));
        assert_eq!(short_entry(word, 6), 0x1234);
        assert!(!short_is_group(short_entry(word, 6)));
        assert!(short_is_group(short_entry(word, 7)));
        assert_eq!(short_group(short_entry(word, 7)), 5);
        let word = with_short_entry(word, 6, 0x7fff);
        assert_eq!((short_entry(word, 6), short_group(short_entry(word, 7))), (0x7fff, 5));
        assert_eq!(short_group(short_group_pointer(MAX_GROUPS - 1)), MAX_GROUPS - 1);
    }
}
