//! The IPv6 lookup structure: a multibit trie in one table (`TRIE_V6`), with a 16-bit first
//! level (65,536 entries indexed by the first two bytes of the address) and nodes of 16 entries
//! indexed by each following 4 bits. A lookup reads one entry per level: at most 29, and 9 for a
//! /48. Small nodes keep a full table (230,000 prefixes, mostly /48s under distinct /32s) in
//! tens of megabytes. Entries are encoded as in [`dir24`](crate::dir24): a route, or a pointer to
//! a node.

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
