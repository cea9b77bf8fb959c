//! The entries of the IPv4 DIR-24-8 tables (`DIR24_V4`, `DIR8_V4`), shared by the XDP program,
//! which reads them, and the control plane, which writes them.
//!
//! An entry is one `u32`, so it is read and written atomically:
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
}
