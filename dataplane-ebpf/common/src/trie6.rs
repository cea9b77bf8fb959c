//! The IPv6 lookup structure: a multibit trie in one table (`TRIE_V6`), with a 16-bit first
//! level (65,536 entries indexed by the first two bytes of the address) and nodes of 16 entries
//! indexed by each following 4 bits. A lookup reads one entry per level: at most 29, and 9 for a
//! /48. Small nodes keep a full table (230,000 prefixes, mostly /48s under distinct /32s) in
//! tens of megabytes. Entries are encoded as in [`dir24`](crate::dir24): a route, or a pointer to
//! a node.
//!
//! Below a /32, most of a full table is a /32 with one to a few longer prefixes, which expanded
//! take a chain of four nodes per /48, four dependent reads in memory no other lookup shares. So
//! the entry of a /32 whose longer prefixes are at most [`COMPACT_PAIRS`], none longer than
//! [`COMPACT_MAX_LEN`], points to a compact node instead ([`COMPACT_BIT`] set in the pointer): the
//! same 16 words, one cache line, holding
//!
//! ```text
//! word 0            the number of prefixes, k
//! word 1            the answer for addresses none of them covers (what the /32 inherits)
//! words 2 + 2j      prefix j: address bits 32..56 << 8 | length - 32, longest first
//! words 3 + 2j      prefix j's entry
//! ```
//!
//! A /32 with eight to [`COMPACT_PAIRS`] such prefixes gets a compact node of two lines instead
//! ([`PAIR_BIT`] set in the pointer as well): the first line as above with its seven longest
//! prefixes, the next node (the next cache line, 128-byte aligned with the first) holding the
//! others in words `2j`, `2j + 1`. Both lines are known from the pointer, so they are read
//! together: one dependent read.
//!
//! A compact node is never changed once published: a change builds a new one (or the expanded
//! nodes) and swaps the /32's entry.
//!
//! A first-level entry may point to a wide node instead ([`WIDE_BIT`] set in the pointer): the
//! 65,536 entries of the /16's bits 16..32, one per /32, in [`WIDE_NODES`] consecutive nodes. A
//! lookup then reads the first level, the /32's entry, and its compact node: three dependent
//! cache lines for most of a full table, where the 4-bit nodes from bit 16 to 32 read six.

/// Entries of the first level.
pub const ROOT_ENTRIES: u32 = 1 << 16;
/// Bits of the address each level below the first consumes.
pub const STRIDE: u8 = 4;
/// Entries of a node.
pub const NODE_ENTRIES: u32 = 1 << STRIDE;
/// Nodes below the first level.
pub const MAX_NODES: u32 = 1 << 20;
/// All entries of the table.
pub const ENTRIES: u32 = ROOT_ENTRIES + MAX_NODES * NODE_ENTRIES + FORMAT_ENTRIES;
/// Entries after the nodes, unused: the map's size tells this layout (with wide nodes and
/// compact nodes of two lines) from the one before, which the XDP program of an older version
/// cannot read, so that a pin directory of that version is refused rather than adopted.
pub const FORMAT_ENTRIES: u32 = 16;

const _: () = assert!(ENTRIES.is_multiple_of(crate::dir24::CHUNK));
// A node is exactly one map value, and the nodes start at a value boundary.
const _: () = assert!(
    NODE_ENTRIES == crate::dir24::CHUNK && ROOT_ENTRIES.is_multiple_of(crate::dir24::CHUNK)
);

/// Set in a pointer to a compact node.
pub const COMPACT_BIT: u32 = 1 << 30;
/// Prefixes a compact node holds: seven in one line, up to fifteen in two.
pub const COMPACT_PAIRS: u32 = 15;
/// The longest prefix a compact node holds.
pub const COMPACT_MAX_LEN: u8 = 56;
/// The level whose entries may point to compact nodes: the entry of a /32.
pub const COMPACT_AT: u8 = 32;

/// Prefixes the first line of a compact node holds.
pub const LINE_PAIRS: u32 = 7;
/// Set, with [`COMPACT_BIT`], in a pointer to a compact node of two lines.
pub const PAIR_BIT: u32 = 1 << 28;
/// Set in a first-level pointer to a wide node.
pub const WIDE_BIT: u32 = 1 << 29;
/// Bits a wide node consumes: 16..32.
pub const WIDE_BITS: u8 = 16;
/// Nodes (of [`NODE_ENTRIES`]) a wide node takes: one entry per /32 of its /16.
pub const WIDE_NODES: u32 = (1 << WIDE_BITS) / NODE_ENTRIES;

// The pointer bits lie above a node's id, and below a route's action bits only where
// `is_group` is checked first.
const _: () = assert!(MAX_NODES <= 1 << 24 && PAIR_BIT >= 1 << 24);

/// Whether an entry points to a compact node (a route entry may have bit 30 set: its action).
#[inline(always)]
pub const fn is_compact(entry: u32) -> bool {
    crate::dir24::is_group(entry) && entry & COMPACT_BIT != 0
}

/// Whether an entry points to a compact node of two lines.
#[inline(always)]
pub const fn is_pair(entry: u32) -> bool {
    is_compact(entry) && entry & PAIR_BIT != 0
}

/// Whether a first-level entry points to a wide node.
#[inline(always)]
pub const fn is_wide(entry: u32) -> bool {
    crate::dir24::is_group(entry) && entry & WIDE_BIT != 0
}

/// The entry of a compact node's first `count` prefixes that matches the address bits 32..56
/// `bits` (the longest, as they are written longest first), the prefixes' words starting at
/// `first`.
#[inline(always)]
fn compact_match(line: &[u32; 16], first: usize, count: u32, bits: u32) -> Option<u32> {
    let mut j = 0;
    while j < 8 {
        if j as u32 >= count || first + 2 * j + 1 >= 16 {
            break;
        }
        let key = line[first + 2 * j];
        let rel = key & 0xff;
        // The prefix's bits of the address, as many as its length below the /32.
        let mask = (0x00ff_ffff_u32 << (24 - rel.min(24))) & 0x00ff_ffff;
        if (bits ^ (key >> 8)) & mask == 0 {
            return Some(line[first + 2 * j + 1]);
        }
        j += 1;
    }
    None
}

/// The answer of a compact node for the address bits 32..56 `bits`: its first line (16 words),
/// and its second line when the pointer has [`PAIR_BIT`] set (`None` otherwise).
#[inline(always)]
pub fn compact_lookup(node: &[u32; 16], second: Option<&[u32; 16]>, bits: u32) -> u32 {
    let k = node[0];
    if let Some(e) = compact_match(node, 2, k.min(LINE_PAIRS), bits) {
        return e;
    }
    if let Some(line) = second
        && k > LINE_PAIRS
        && let Some(e) = compact_match(line, 0, k - LINE_PAIRS, bits)
    {
        return e;
    }
    node[1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_compact_node_answers_with_its_longest_matching_prefix() {
        let mut node = [0u32; 16];
        // 2001:db8:aa00::/40 -> 11, 2001:db8:aabb::/48 -> 12 (longest first), inherited 10.
        node[0] = 2;
        node[1] = 10;
        node[2] = 0x00aa_bb00 << 8 | 16;
        node[3] = 12;
        node[4] = 0x00aa_0000 << 8 | 8;
        node[5] = 11;
        assert_eq!(compact_lookup(&node, None, 0x00aa_bb12), 12);
        assert_eq!(compact_lookup(&node, None, 0x00aa_bc00), 11);
        assert_eq!(compact_lookup(&node, None, 0x00ab_0000), 10);
        node[0] = 0;
        assert_eq!(
            compact_lookup(&node, None, 0x00aa_bb12),
            10,
            "no prefixes: the inherited answer"
        );
    }

    #[test]
    fn a_compact_node_of_two_lines_goes_on_in_the_second() {
        // Fifteen /48s 2001:db8:j::/48 -> 100 + j, longest first (all /48s), then a /40.
        let (mut first, mut second) = ([0u32; 16], [0u32; 16]);
        first[0] = 15;
        first[1] = 10;
        for j in 0..15u32 {
            let (line, at) = if j < 7 {
                (&mut first, 2 + 2 * j as usize)
            } else {
                (&mut second, 2 * (j as usize - 7))
            };
            line[at] = (j << 8) << 8 | 16;
            line[at + 1] = 100 + j;
        }
        assert_eq!(compact_lookup(&first, Some(&second), 0x00_0312), 103);
        assert_eq!(compact_lookup(&first, Some(&second), 0x00_0e00), 114, "the last prefix");
        assert_eq!(compact_lookup(&first, Some(&second), 0x00_1000), 10);
        assert_eq!(compact_lookup(&first, None, 0x00_0e00), 10, "without its second line");
    }

    #[test]
    fn only_pointers_are_compact() {
        use crate::{Route, RouteAction, dir24};
        let pointer = dir24::group_pointer(7) | COMPACT_BIT;
        assert!(is_compact(pointer));
        assert!(!is_compact(dir24::group_pointer(7)));
        assert!(
            is_pair(pointer | PAIR_BIT)
                && !is_pair(pointer)
                && !is_pair(dir24::group_pointer(7) | PAIR_BIT)
        );
        assert!(is_wide(dir24::group_pointer(7) | WIDE_BIT) && !is_wide(pointer));
        // A blackhole route's action (5) sets bit 30 of its entry.
        let route = Route { action: RouteAction::Blackhole as u32, target: 0 };
        let blackhole = dir24::encode(route).unwrap();
        assert!(blackhole & COMPACT_BIT != 0 && !is_compact(blackhole));
        assert!(!is_wide(blackhole) && !is_pair(blackhole));
    }
}
