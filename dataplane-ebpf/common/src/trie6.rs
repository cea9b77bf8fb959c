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
//! A compact node is never changed once published: a change builds a new one (or the expanded
//! nodes) and swaps the /32's entry.

/// Entries of the first level.
pub const ROOT_ENTRIES: u32 = 1 << 16;
/// Bits of the address each level below the first consumes.
pub const STRIDE: u8 = 4;
/// Entries of a node.
pub const NODE_ENTRIES: u32 = 1 << STRIDE;
/// Nodes below the first level.
pub const MAX_NODES: u32 = 1 << 20;
/// All entries of the table.
pub const ENTRIES: u32 = ROOT_ENTRIES + MAX_NODES * NODE_ENTRIES;

const _: () = assert!(ENTRIES.is_multiple_of(crate::dir24::CHUNK));
// A node is exactly one map value, and the nodes start at a value boundary.
const _: () = assert!(
    NODE_ENTRIES == crate::dir24::CHUNK && ROOT_ENTRIES.is_multiple_of(crate::dir24::CHUNK)
);

/// Set in a pointer to a compact node.
pub const COMPACT_BIT: u32 = 1 << 30;
/// Prefixes a compact node holds.
pub const COMPACT_PAIRS: u32 = 7;
/// The longest prefix a compact node holds.
pub const COMPACT_MAX_LEN: u8 = 56;
/// The level whose entries may point to compact nodes: the entry of a /32.
pub const COMPACT_AT: u8 = 32;

/// Whether an entry points to a compact node (a route entry may have bit 30 set: its action).
#[inline(always)]
pub const fn is_compact(entry: u32) -> bool {
    crate::dir24::is_group(entry) && entry & COMPACT_BIT != 0
}

/// The answer of a compact node (its 16 words) for the address bits 32..56 `bits`.
#[inline(always)]
pub fn compact_lookup(node: &[u32; 16], bits: u32) -> u32 {
    let k = node[0];
    let mut j = 0;
    while j < COMPACT_PAIRS as usize {
        if j as u32 >= k {
            break;
        }
        let key = node[2 + 2 * j];
        let rel = key & 0xff;
        // The prefix's bits of the address, as many as its length below the /32.
        let mask = (0x00ff_ffff_u32 << (24 - rel.min(24))) & 0x00ff_ffff;
        if (bits ^ (key >> 8)) & mask == 0 {
            return node[3 + 2 * j];
        }
        j += 1;
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
        assert_eq!(compact_lookup(&node, 0x00aa_bb12), 12);
        assert_eq!(compact_lookup(&node, 0x00aa_bc00), 11);
        assert_eq!(compact_lookup(&node, 0x00ab_0000), 10);
        node[0] = 0;
        assert_eq!(compact_lookup(&node, 0x00aa_bb12), 10, "no prefixes: the inherited answer");
    }

    #[test]
    fn only_pointers_are_compact() {
        use crate::{Route, RouteAction, dir24};
        let pointer = dir24::group_pointer(7) | COMPACT_BIT;
        assert!(is_compact(pointer));
        assert!(!is_compact(dir24::group_pointer(7)));
        // A blackhole route's action (5) sets bit 30 of its entry.
        let route = Route { action: RouteAction::Blackhole as u32, target: 0 };
        let blackhole = dir24::encode(route).unwrap();
        assert!(blackhole & COMPACT_BIT != 0 && !is_compact(blackhole));
    }
}
