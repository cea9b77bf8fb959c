//! The IPv6 lookup structure: a multibit trie in one table (`TRIE_V6`), with a 16-bit first
//! level (65,536 entries indexed by the first two bytes of the address) and nodes of 256 entries
//! indexed by each following byte. A lookup reads one entry per level: at most 15, and 5 for a
//! /48. Entries are encoded as in [`dir24`](crate::dir24): a route, or a pointer to a node.

/// Entries of the first level.
pub const ROOT_ENTRIES: u32 = 1 << 16;
/// Entries of a node.
pub const NODE_ENTRIES: u32 = 256;
/// Nodes below the first level.
pub const MAX_NODES: u32 = 1 << 15;
/// All entries of the table.
pub const ENTRIES: u32 = ROOT_ENTRIES + MAX_NODES * NODE_ENTRIES;

const _: () = assert!(ENTRIES % crate::dir24::CHUNK == 0);
