//! The IPv6 lookup structure of the dataplane: a multibit trie in one shared table (see
//! [`sluice_common::trie6`]): 65,536 first-level entries for the first two bytes of an address,
//! then nodes of 16 entries, one level per 4 bits. Every entry holds the answer of the longest
//! prefix covering it (leaf pushing), so a lookup stops at the first entry that is not a pointer:
//! at most 29 reads, 9 for a /48, whatever the size of the table. A /32 whose longer prefixes are
//! few (at most seven, none longer than /56: most /32s of a full table) keeps them in one compact
//! node instead (see [`sluice_common::trie6`]): a /48 below it costs six reads, the last one in
//! a cache line of its own rather than four in nodes no other lookup shares.
//!
//! Updates follow [`crate::dir24`]: single atomic stores, a node filled before the entry that
//! points to it is published, and a node that falls out of use retired for [`GROUP_GRACE`] before
//! it is reused.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    net::Ipv6Addr,
    time::Instant,
};

use ipnet::Ipv6Net;
use sluice_common::{
    Route,
    dir24::{decode, encode, group_entry, group_pointer, is_group},
    trie6::{
        COMPACT_AT, COMPACT_BIT, COMPACT_MAX_LEN, COMPACT_PAIRS, ENTRIES, LINE_PAIRS, MAX_NODES,
        NODE_ENTRIES, PAIR_BIT, ROOT_ENTRIES, STRIDE, WIDE_BIT, WIDE_BITS, WIDE_NODES,
        compact_lookup, is_compact, is_pair, is_wide,
    },
};

use crate::{
    check::{Answer, Check},
    dir24::{Adoption, Cells, Dir24Error, GROUP_GRACE, VecCells},
};

/// Bits the first level consumes.
const ROOT_BITS: u8 = 16;
/// Nodes covering bits from here on are "deep" (see [`Trie6::alloc_node`]): a /24's subtree,
/// some 30 nodes (2 KiB) in a full table, is laid out in one run, so that a lookup below the
/// /24 stays within a page or two; the nodes above, which all lookups share, stay packed.
const DEEP_FROM: u8 = 24;
/// Wide nodes the trie gives /16s at most: half the table's nodes (32 MiB). The synthetic full
/// table's prefixes lie in 81 /16s (inside the registries' blocks); adoption gives wide nodes to
/// the /16s with the most prefixes, and later /16s get one while the budget lasts, 4-bit nodes
/// after.
pub const MAX_WIDE: u32 = 128;
const _: () = assert!(MAX_WIDE * WIDE_NODES <= MAX_NODES / 2);

/// Memory the trie uses, for reporting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    /// Prefixes held.
    pub prefixes: usize,
    /// Nodes in use, counted in cache lines of 16 entries: a wide node is [`WIDE_NODES`], a
    /// compact node of two lines 2.
    pub nodes: u32,
    /// Compact nodes (a /32's few longer prefixes in one or two lines).
    pub compact: u32,
    /// Wide nodes (a /16's bits 16..32 in one level).
    pub wide: u32,
    /// Nodes available.
    pub nodes_max: u32,
    /// Routes left out at adoption because the nodes were full.
    pub rejected: usize,
    /// Bytes of the shared table in use (first level plus the nodes in use).
    pub shared_bytes: u64,
}

/// What the IPv6 trie holds, as read from it ([`Trie6::scan`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Scanned {
    /// Nodes reachable from the first level, in cache lines (as [`Usage::nodes`]).
    pub nodes: u32,
    /// Compact nodes among them.
    pub compact: u32,
    /// Wide nodes among them.
    pub wide: u32,
    /// Nodes available.
    pub nodes_max: u32,
    /// Bytes in use: the first level and the nodes.
    pub bytes: u64,
}

/// Where [`Trie6::walk`] ended, and what it read.
struct Walk {
    /// The last entry read: a route, or a pointer the walk could not follow.
    entry: u32,
    dependent: u32,
    lines: u32,
}

/// What a lookup read ([`Trie6::lookup_reads`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reads {
    /// The answer.
    pub route: Option<Route>,
    /// Cache lines read one after the other, each at an address the one before gave.
    pub dependent: u32,
    /// Cache lines read in all (a node of two lines is read at once: one dependent read).
    pub lines: u32,
}

/// The trie over a cell array of [`ENTRIES`] entries.
#[derive(Debug)]
pub struct Trie6<C: Cells> {
    cells: C,
    /// Per entry: the length + 1 of the prefix that wrote it (0: none). For a pointer, the
    /// length + 1 of the prefix whose answer the node inherits.
    depth: Vec<u8>,
    /// Per pointer entry: the answer the node below inherits.
    inherited: HashMap<usize, u32>,
    prefixes: Vec<HashMap<u128, u32>>,
    /// Per /32, its longer prefixes: (address, length) -> entry.
    below32: HashMap<u128, BTreeMap<(u128, u8), u32>>,
    /// Nodes for the levels above bit [`DEEP_FROM`] are taken from the bottom of the table up,
    /// the others from the top down (see [`Trie6::alloc_node`]).
    next_upper: u32,
    next_deep: u32,
    free_upper: Vec<u32>,
    free_deep: Vec<u32>,
    /// Free runs of nodes by length: wide nodes and compact nodes of two lines.
    free_runs: HashMap<u32, Vec<u32>>,
    /// Released nodes (the first of a run, and its length) in the order they were released,
    /// waiting out the grace period.
    retired: VecDeque<(u32, u32, Instant)>,
    nodes_in_use: u32,
    compact: u32,
    wide: u32,
    /// Routes that did not fit when the trie was adopted.
    rejected: usize,
    /// What adoption found and rewrote.
    adoption: Adoption,
    /// While building an image to adopt: the /16s (first two bytes) that may get a wide node.
    wide_for: Option<std::collections::HashSet<u16>>,
    /// Wide nodes this trie may make: [`MAX_WIDE`] (fewer in tests).
    max_wide: u32,
}

/// The [`MAX_WIDE`] /16s holding the most of `routes` longer than /16: those that get wide
/// nodes when a table is adopted.
fn densest_16s(routes: &[(Ipv6Net, Route)], max_wide: u32) -> std::collections::HashSet<u16> {
    let mut count: HashMap<u16, usize> = HashMap::new();
    for (net, _) in routes.iter().filter(|(n, _)| n.prefix_len() > ROOT_BITS) {
        *count.entry(net.network().segments()[0]).or_default() += 1;
    }
    let mut by_count: Vec<(u16, usize)> = count.into_iter().collect();
    by_count.sort_unstable_by_key(|&(s, n)| (std::cmp::Reverse(n), s));
    by_count.into_iter().take(max_wide as usize).map(|(s, _)| s).collect()
}

/// Bytes of the shared table with `nodes` nodes in use: the first level and the nodes.
fn shared_bytes(nodes: u32) -> u64 {
    (u64::from(ROOT_ENTRIES) + u64::from(nodes) * u64::from(NODE_ENTRIES)) * 4
}

fn mask(a: u128, len: u8) -> u128 {
    if len == 0 { 0 } else { a & (u128::MAX << (128 - u32::from(len))) }
}

/// The index, within a level covering bits `start..end`, of address `a`.
fn index(a: u128, start: u8, end: u8) -> usize {
    ((a >> (128 - u32::from(end))) & ((1u128 << (end - start)) - 1)) as usize
}

/// A pointer to the compact node `node`, of two lines when `pair`.
fn compact_pointer(node: u32, pair: bool) -> u32 {
    group_pointer(node) | COMPACT_BIT | if pair { PAIR_BIT } else { 0 }
}

/// A pointer to the wide node `node`.
fn wide_pointer(node: u32) -> u32 {
    group_pointer(node) | WIDE_BIT
}

/// The nodes a pointer's node takes, one after the other.
fn run_len(e: u32) -> u32 {
    if is_wide(e) {
        WIDE_NODES
    } else if is_pair(e) {
        2
    } else {
        1
    }
}

/// Bits the node a pointer points to consumes (not for compact nodes).
fn child_bits(e: u32) -> u8 {
    if is_wide(e) { WIDE_BITS } else { STRIDE }
}

/// Entries of the node a pointer points to (not for compact nodes).
fn child_entries(e: u32) -> usize {
    1 << child_bits(e)
}

/// Whether a /32's longer prefixes fit a compact node.
fn compactable(list: &BTreeMap<(u128, u8), u32>) -> bool {
    !list.is_empty()
        && list.len() <= COMPACT_PAIRS as usize
        && list.keys().all(|&(_, len)| len <= COMPACT_MAX_LEN)
}

fn node_base(node: u32) -> usize {
    (ROOT_ENTRIES + node * NODE_ENTRIES) as usize
}

impl<C: Cells> Trie6<C> {
    /// A trie over zeroed cells.
    pub fn new(cells: C) -> Self {
        assert_eq!(cells.len(), ENTRIES as usize);
        Self {
            depth: vec![0; cells.len()],
            cells,
            inherited: HashMap::new(),
            prefixes: vec![HashMap::new(); 129],
            below32: HashMap::new(),
            next_upper: 0,
            next_deep: MAX_NODES,
            free_upper: Vec::new(),
            free_deep: Vec::new(),
            free_runs: HashMap::new(),
            retired: VecDeque::new(),
            nodes_in_use: 0,
            compact: 0,
            wide: 0,
            rejected: 0,
            adoption: Adoption::default(),
            wide_for: None,
            max_wide: MAX_WIDE,
        }
    }

    /// What adoption found in the live trie (zeros for a trie made afresh).
    pub fn adoption(&self) -> Adoption {
        self.adoption
    }

    /// Takes over cells that already hold a trie: builds the trie `routes` make, reusing the
    /// live node at each place where the new trie has a node, and writes only what differs.
    pub fn adopt(
        cells: C,
        routes: impl IntoIterator<Item = (Ipv6Net, Route)>,
    ) -> Result<Self, Dir24Error> {
        Self::adopt_with(cells, routes, MAX_WIDE)
    }

    /// [`Trie6::adopt`] with at most `max_wide` wide nodes.
    fn adopt_with(
        cells: C,
        routes: impl IntoIterator<Item = (Ipv6Net, Route)>,
        max_wide: u32,
    ) -> Result<Self, Dir24Error> {
        let routes: Vec<(Ipv6Net, Route)> = routes.into_iter().collect();
        let mut image = Trie6::new(VecCells::new(cells.len()));
        image.max_wide = max_wide;
        image.wide_for = Some(densest_16s(&routes, max_wide));
        for (net, route) in routes {
            // What does not fit is left out (and logged by the caller through `usage`), so
            // that everything else still forwards.
            if image.set(net, route).is_err() {
                image.rejected += 1;
            }
        }
        let live = LiveNodes::walk(&cells);
        let mut placed = Self::new(cells);
        placed.max_wide = max_wide;
        placed.prefixes = std::mem::take(&mut image.prefixes);
        placed.below32 = std::mem::take(&mut image.below32);
        placed.rejected = image.rejected;
        placed.adoption.untrusted = live.untrusted;
        placed.make_room_around(&live.nodes);
        let mut reused = std::collections::HashSet::new();
        let mut at = Place { trusted: &live.trusted, reused: &mut reused, live: true };
        placed.place(&image, 0, 0, ROOT_ENTRIES as usize, ROOT_BITS, &mut at)?;
        let now = Instant::now();
        for (n, len) in live.nodes.into_iter().filter(|(n, _)| !reused.contains(n)) {
            placed.retired.push_back((n, len, now));
        }
        Ok(placed)
    }

    /// Copies one level of `image` (at `from`) onto this trie (at `to`), children first.
    fn place(
        &mut self,
        image: &Trie6<VecCells>,
        from: usize,
        to: usize,
        count: usize,
        child_start: u8,
        at: &mut Place<'_>,
    ) -> Result<(), Dir24Error> {
        for i in 0..count {
            let (src, dst) = (from + i, to + i);
            let want = image.cells.get(src);
            self.depth[dst] = image.depth[src];
            if is_compact(want) {
                self.place_compact(image, src, dst, at)?;
            } else if is_group(want) {
                let live = self.cells.get(dst);
                // A live compact node is never rewritten as an expanded one in place, nor a
                // wide node as a narrow one; a node is kept only where the live trie reaches
                // it, from this entry alone.
                let reusable = is_group(live)
                    && !is_compact(live)
                    && is_wide(live) == is_wide(want)
                    && at.keeps(group_entry(live));
                let node = if reusable {
                    group_entry(live)
                } else if is_wide(want) {
                    self.alloc_run(WIDE_NODES, false)?
                } else {
                    self.alloc_node(child_start >= DEEP_FROM)?
                };
                at.reused.insert(node);
                self.nodes_in_use += run_len(want);
                if is_wide(want) {
                    self.wide += 1;
                }
                self.inherited.insert(dst, image.inherited.get(&src).copied().unwrap_or(0));
                let child_from = node_base(group_entry(want));
                // Below a fresh node, whatever its entries hold is not the live trie's.
                let was_live = at.live;
                at.live = was_live && reusable;
                let (count, bits) = (child_entries(want), child_bits(want));
                self.place(image, child_from, node_base(node), count, child_start + bits, at)?;
                at.live = was_live;
                let pointer = if is_wide(want) { wide_pointer(node) } else { group_pointer(node) };
                if live != pointer {
                    self.cells.set(dst, pointer);
                    self.adoption.rewritten += 1;
                }
            } else if self.cells.get(dst) != want {
                self.cells.set(dst, want);
                self.adoption.rewritten += 1;
            }
        }
        Ok(())
    }

    /// Copies the compact node of `image`'s entry `src` to entry `dst`: the live compact node
    /// there is kept when it holds the same words, as a compact node is never rewritten.
    fn place_compact(
        &mut self,
        image: &Trie6<VecCells>,
        src: usize,
        dst: usize,
        at: &mut Place<'_>,
    ) -> Result<(), Dir24Error> {
        let pointer = image.cells.get(src);
        let want = node_base(group_entry(pointer));
        let words = (NODE_ENTRIES * run_len(pointer)) as usize;
        let live = self.cells.get(dst);
        let same = is_compact(live)
            && is_pair(live) == is_pair(pointer)
            && at.keeps(group_entry(live))
            && (0..words).all(|i| {
                self.cells.get(node_base(group_entry(live)) + i) == image.cells.get(want + i)
            });
        let node = if same { group_entry(live) } else { self.alloc_run(run_len(pointer), true)? };
        if !same {
            for i in 0..words {
                self.cells.set(node_base(node) + i, image.cells.get(want + i));
            }
            self.adoption.rewritten += words as u64;
        }
        at.reused.insert(node);
        self.nodes_in_use += run_len(pointer);
        self.compact += 1;
        self.inherited.insert(dst, image.inherited.get(&src).copied().unwrap_or(0));
        let new = compact_pointer(node, is_pair(pointer));
        if live != new {
            self.cells.set(dst, new);
            self.adoption.rewritten += 1;
        }
        Ok(())
    }

    /// Moves the released nodes whose grace period is over to the free lists.
    fn reclaim(&mut self) {
        let now = Instant::now();
        while let Some(&(n, len, at)) = self.retired.front() {
            if now.duration_since(at) < GROUP_GRACE {
                break;
            }
            self.retired.pop_front();
            if len > 1 {
                self.free_runs.entry(len).or_default().push(n);
            } else if n < self.next_upper {
                self.free_upper.push(n);
            } else {
                self.free_deep.push(n);
            }
        }
    }

    /// A free node. Nodes of the levels above bit [`DEEP_FROM`] come from the bottom of the
    /// table, the deeper ones from the top: the few upper nodes every lookup crosses stay packed
    /// (in the caches and the TLB), and the deep nodes of one prefix, made together, lie side by
    /// side, as do a /24's whole subtree when a table is adopted (depth first). With 4,000
    /// destinations over a full table the cost of a lookup is memory latency, mostly TLB misses
    /// (4 KiB pages), not instructions: each page fewer per lookup counts.
    fn alloc_node(&mut self, deep: bool) -> Result<u32, Dir24Error> {
        self.reclaim();
        let own = if deep { self.free_deep.pop() } else { self.free_upper.pop() };
        if let Some(n) = own {
            return Ok(n);
        }
        if self.next_upper < self.next_deep {
            if deep {
                self.next_deep -= 1;
                return Ok(self.next_deep);
            }
            self.next_upper += 1;
            return Ok(self.next_upper - 1);
        }
        let other = if deep { self.free_upper.pop() } else { self.free_deep.pop() };
        other.ok_or(Dir24Error::GroupsFull)
    }

    /// `len` free nodes one after the other (a wide node, or a compact node of two lines), the
    /// first returned: a released run of that length, else from the top of the table (`deep`) or
    /// its bottom. A run of two starts at an even node: 128 bytes aligned, the pair of lines
    /// the processor's adjacent-line prefetch fetches together.
    fn alloc_run(&mut self, len: u32, deep: bool) -> Result<u32, Dir24Error> {
        if len == 1 {
            return self.alloc_node(deep);
        }
        self.reclaim();
        if let Some(n) = self.free_runs.get_mut(&len).and_then(Vec::pop) {
            return Ok(n);
        }
        if deep {
            let first = self.next_deep.checked_sub(len).map(|n| n & !1);
            let Some(first) = first.filter(|&n| n >= self.next_upper) else {
                return Err(Dir24Error::GroupsFull);
            };
            self.free_deep.extend(first + len..self.next_deep);
            self.next_deep = first;
            Ok(first)
        } else {
            if self.next_deep - self.next_upper < len {
                return Err(Dir24Error::GroupsFull);
            }
            self.next_upper += len;
            Ok(self.next_upper - len)
        }
    }

    /// After adoption: the widest run of node ids no live node uses becomes the room between
    /// the two ends; the other unused ids are free.
    fn make_room_around(&mut self, live: &[(u32, u32)]) {
        let mut used = vec![false; MAX_NODES as usize];
        for &(n, len) in live {
            for id in n..(n + len).min(MAX_NODES) {
                used[id as usize] = true;
            }
        }
        let (mut best, mut run_start) = ((0u32, 0u32), 0u32);
        for id in 0..=MAX_NODES {
            if id == MAX_NODES || used[id as usize] {
                if id - run_start > best.1 - best.0 {
                    best = (run_start, id);
                }
                run_start = id + 1;
            }
        }
        (self.next_upper, self.next_deep) = best;
        self.free_upper = (0..best.0).filter(|&n| !used[n as usize]).collect();
        self.free_deep = (best.1..MAX_NODES).filter(|&n| !used[n as usize]).collect();
    }

    /// Looks an address up the way the XDP program does.
    pub fn lookup(&self, addr: Ipv6Addr) -> Option<Route> {
        decode(self.walk(u128::from(addr)).entry)
    }

    /// Looks an address up as [`Trie6::lookup`] does, and counts the cache lines it reads: the
    /// first-level entry, then each node's line (16 entries of 4 bytes, one aligned cache line;
    /// a wide node's entry; both lines of a compact node of two). Each read but the first
    /// depends on the one before (its address is in it): `dependent` is the lookup's chain of
    /// memory latencies.
    pub fn lookup_reads(&self, addr: Ipv6Addr) -> Reads {
        let walk = self.walk(u128::from(addr));
        Reads { route: decode(walk.entry), dependent: walk.dependent, lines: walk.lines }
    }

    /// Walks `a` down the trie as the XDP program does: a wide node only below the first level,
    /// then one 4-bit node per level until an entry is not a pointer or points to a compact
    /// node. Stops at a pointer outside the table (`entry` is that pointer).
    fn walk(&self, a: u128) -> Walk {
        let mut e = self.cells.get(index(a, 0, ROOT_BITS));
        let (mut start, mut dependent, mut lines) = (ROOT_BITS, 1, 1);
        while is_group(e) && start < 128 {
            let node = group_entry(e);
            let wide = start == ROOT_BITS && is_wide(e);
            let len = if wide || is_compact(e) { run_len(e) } else { 1 };
            if node + len > MAX_NODES {
                break;
            }
            let base = node_base(node);
            dependent += 1;
            lines += 1;
            if is_compact(e) {
                let first: [u32; 16] = std::array::from_fn(|i| self.cells.get(base + i));
                let second: Option<[u32; 16]> = is_pair(e).then(|| {
                    lines += 1;
                    std::array::from_fn(|i| self.cells.get(base + NODE_ENTRIES as usize + i))
                });
                let bits = index(a, COMPACT_AT, COMPACT_MAX_LEN) as u32;
                e = compact_lookup(&first, second.as_ref(), bits);
                break;
            }
            let bits = if wide { WIDE_BITS } else { STRIDE };
            e = self.cells.get(base + index(a, start, start + bits));
            start += bits;
        }
        Walk { entry: e, dependent, lines }
    }

    /// What the trie uses, read from the cells alone (in a process other than its writer, which
    /// knows it without a walk: [`Trie6::usage`]): the nodes reachable from the first level.
    /// The walk stops at [`MAX_NODES`] nodes, however the table changes under it.
    pub fn scan(&self) -> Scanned {
        let (mut nodes, mut compact, mut wide) = (0u32, 0u32, 0u32);
        // (first entry, entries, whether the first level)
        let mut stack = vec![(0usize, ROOT_ENTRIES as usize, true)];
        while let Some((base, count, root)) = stack.pop() {
            for i in base..base + count {
                let e = self.cells.get(i);
                if !is_group(e) || nodes >= MAX_NODES {
                    continue;
                }
                let is_wide_here = root && is_wide(e);
                let len = if is_compact(e) || is_wide_here { run_len(e) } else { 1 };
                if group_entry(e) + len > MAX_NODES {
                    continue;
                }
                nodes += len;
                if is_compact(e) {
                    compact += 1;
                } else if is_wide_here {
                    wide += 1;
                    stack.push((node_base(group_entry(e)), 1 << WIDE_BITS, false));
                } else {
                    stack.push((node_base(group_entry(e)), NODE_ENTRIES as usize, false));
                }
            }
        }
        Scanned { nodes, compact, wide, nodes_max: MAX_NODES, bytes: shared_bytes(nodes) }
    }

    /// Compares what the trie answers with what `routes` make, and reports what is wrong with
    /// its structure (nodes two entries point to, pointers outside the table). Both answer with
    /// a constant between the places where an entry's range, a compact node's prefix or one of
    /// `routes` begins or ends: the two are compared at every such address, so every range that
    /// differs is found. Reads the trie only: for a process other than its writer.
    pub fn check(&self, routes: impl IntoIterator<Item = (Ipv6Net, Route)>) -> Check {
        let mut check = Check::default();
        let mut image = Trie6::new(VecCells::new(self.cells.len()));
        let mut probes: Vec<u128> = Vec::new();
        for (net, route) in routes {
            if let Err(e) = image.set(net, route) {
                check.problem(|| format!("route {net} does not fit the trie: {e}"));
            }
            let first = u128::from(net.network());
            probes.push(first);
            if let Some(after) = u128::from(net.broadcast()).checked_add(1) {
                probes.push(after);
            }
        }
        self.probes(&mut probes, &mut check);
        probes.sort_unstable();
        probes.dedup();
        for a in probes {
            let at = || Ipv6Addr::from(a).to_string();
            check.compare(at, self.lookup_checked(a), image.lookup_checked(a));
        }
        check
    }

    /// Where the live trie's answers may change: the first address of every entry's range and
    /// of every compact node's prefix (and the one after it); in a wide node, of every run of
    /// equal answers. Walks each node once, bounded.
    fn probes(&self, out: &mut Vec<u128>, check: &mut Check) {
        let mut references: HashMap<u32, u32> = HashMap::new();
        // (first entry, entries, address of the first entry, the level's last bit)
        let mut stack = vec![(0usize, ROOT_ENTRIES as usize, 0u128, ROOT_BITS)];
        while let Some((base, count, prefix, end)) = stack.pop() {
            let step = 128 - u32::from(end);
            let mut previous = None;
            for i in 0..count {
                let a = prefix | ((i as u128) << step);
                let e = self.cells.get(base + i);
                let dense = end == ROOT_BITS || count == NODE_ENTRIES as usize;
                if dense || previous != Some(e) || is_group(e) {
                    out.push(a);
                }
                previous = Some(e);
                if !is_group(e) {
                    continue;
                }
                let node = group_entry(e);
                let wide = end == ROOT_BITS && is_wide(e);
                let len = if wide || is_compact(e) { run_len(e) } else { 1 };
                if node + len > MAX_NODES || end >= 128 {
                    check.problem(|| {
                        format!(
                            "the entry of {} points past the trie (node {node})",
                            Ipv6Addr::from(a)
                        )
                    });
                    continue;
                }
                let seen = references.entry(node).or_default();
                *seen += 1;
                if *seen > 1 {
                    continue;
                }
                if !is_compact(e) {
                    let (count, bits) = if wide {
                        (1 << WIDE_BITS, WIDE_BITS)
                    } else {
                        (NODE_ENTRIES as usize, STRIDE)
                    };
                    stack.push((node_base(node), count, a, end + bits));
                    continue;
                }
                if end != COMPACT_AT {
                    check.problem(|| {
                        format!("a compact node at {} is not under a /32", Ipv6Addr::from(a))
                    });
                }
                let words: Vec<u32> = (0..(len * NODE_ENTRIES) as usize)
                    .map(|w| self.cells.get(node_base(node) + w))
                    .collect();
                let k = words[0].min(if is_pair(e) { COMPACT_PAIRS } else { LINE_PAIRS });
                for j in 0..k as usize {
                    // The first line's pairs from word 2, the second's from word 16.
                    let key = if j < LINE_PAIRS as usize {
                        words[2 + 2 * j]
                    } else {
                        words[16 + 2 * (j - LINE_PAIRS as usize)]
                    };
                    let len = u32::from(COMPACT_AT) + (key & 0xff).min(24);
                    let start = mask(
                        mask(a, COMPACT_AT)
                            | (u128::from(key >> 8) << (128 - u32::from(COMPACT_MAX_LEN))),
                        len as u8,
                    );
                    out.push(start);
                    if let Some(after) = start.checked_add(1u128 << (128 - len)) {
                        out.push(after);
                    }
                }
            }
        }
        for (node, n) in references.into_iter().filter(|(_, n)| *n > 1) {
            check.problem(|| {
                format!("node {node} is pointed to by {n} entries (each needs its own)")
            });
        }
    }

    /// Looks `a` up as the XDP program does, but bounded: a pointer outside the table, or one
    /// left after the last bit, answers `Err`.
    fn lookup_checked(&self, a: u128) -> Answer {
        let e = self.walk(a).entry;
        if is_group(e) { Err(()) } else { Ok(decode(e)) }
    }

    /// Memory in use.
    pub fn usage(&self) -> Usage {
        Usage {
            prefixes: self.prefixes.iter().map(HashMap::len).sum(),
            nodes: self.nodes_in_use,
            compact: self.compact,
            wide: self.wide,
            nodes_max: MAX_NODES,
            rejected: self.rejected,
            shared_bytes: shared_bytes(self.nodes_in_use),
        }
    }

    /// Adds or replaces the route for `net`.
    pub fn set(&mut self, net: Ipv6Net, route: Route) -> Result<(), Dir24Error> {
        let value = encode(route).ok_or(Dir24Error::Unencodable(route.target))?;
        let (a, len) = (u128::from(net.network()), net.prefix_len());
        if self.prefixes[usize::from(len)].get(&a) == Some(&value) {
            // Already written (a route set again after adoption, or unchanged).
            return Ok(());
        }
        let (mut before, mut from) = (None, (0, 0, ROOT_BITS));
        if len > COMPACT_AT {
            // The path down to the /32 is walked once, here; the write below goes on from it.
            from = self.level_for(a, COMPACT_AT, true)?;
            let entry = from.0 + index(a, from.1, from.2);
            let n32 = mask(a, COMPACT_AT);
            before = self.below32.entry(n32).or_default().insert((a, len), value);
            if is_compact(self.cells.get(entry)) || compactable(&self.below32[&n32]) {
                if let Err(e) = self.sync32(entry, n32) {
                    self.restore_below32(a, len, before);
                    return Err(e);
                }
                self.prefixes[usize::from(len)].insert(a, value);
                return Ok(());
            }
        }
        let (base, start, end) = match self.level_from(from, a, len, true) {
            Ok(level) => level,
            Err(e) => {
                if len > COMPACT_AT {
                    self.restore_below32(a, len, before);
                }
                return Err(e);
            }
        };
        self.prefixes[usize::from(len)].insert(a, value);
        self.write(base, start, end, a, len, value, len + 1, &|d| d <= len + 1);
        Ok(())
    }

    /// Puts back what a /32's list held for a prefix longer than /32 (`None`: nothing) after a
    /// set that did not fit.
    fn restore_below32(&mut self, a: u128, len: u8, before: Option<u32>) {
        let n32 = mask(a, COMPACT_AT);
        let list = self.below32.entry(n32).or_default();
        match before {
            Some(v) => list.insert((a, len), v),
            None => list.remove(&(a, len)),
        };
        if list.is_empty() {
            self.below32.remove(&n32);
        }
    }

    /// Takes a prefix longer than /32 out of its /32's list.
    fn forget_below32(&mut self, a: u128, len: u8) {
        self.restore_below32(a, len, None);
    }

    /// Gives the /32 at `entry` the representation its longer prefixes call for: none (the
    /// entry answers itself), a compact node when they fit one, else expanded nodes. A compact
    /// node or expanded nodes replacing another form are written completely, then the entry is
    /// swapped and the old nodes retired. Leaves an expanded /32 that stays expanded to the
    /// caller, which changes it in place.
    fn sync32(&mut self, entry: usize, n32: u128) -> Result<(), Dir24Error> {
        let old = self.cells.get(entry);
        if is_group(old)
            && !is_compact(old)
            && self.below32.get(&n32).is_some_and(|l| !compactable(l))
        {
            return Ok(());
        }
        let inherited =
            if is_group(old) { self.inherited.get(&entry).copied().unwrap_or(0) } else { old };
        // Out of the map while the nodes are built from it, back in after.
        let list = self.below32.remove(&n32).unwrap_or_default();
        let new = if list.is_empty() {
            Ok(inherited)
        } else if compactable(&list) {
            // Two lines in a row may be missing where single nodes are not: expanded then.
            self.build_compact(&list, inherited).or_else(|_| {
                self.build_expanded(&list, inherited, self.depth[entry]).map(group_pointer)
            })
        } else {
            self.build_expanded(&list, inherited, self.depth[entry]).map(group_pointer)
        };
        if !list.is_empty() {
            self.below32.insert(n32, list);
        }
        let new = new?;
        self.cells.set(entry, new);
        if is_group(new) {
            self.inherited.insert(entry, inherited);
        } else {
            self.inherited.remove(&entry);
        }
        self.retire_below(old);
        Ok(())
    }

    /// Writes a compact node holding `list` (at most [`COMPACT_PAIRS`] prefixes under one /32)
    /// and returns its pointer (unlinked): one line for up to [`LINE_PAIRS`] prefixes, else two.
    fn build_compact(
        &mut self,
        list: &BTreeMap<(u128, u8), u32>,
        inherited: u32,
    ) -> Result<u32, Dir24Error> {
        let mut words = [0u32; 2 * NODE_ENTRIES as usize];
        words[0] = list.len() as u32;
        words[1] = inherited;
        let mut pairs: Vec<(u8, u128, u32)> = list.iter().map(|(&(a, l), &v)| (l, a, v)).collect();
        pairs.sort_by_key(|p| std::cmp::Reverse(p.0));
        for (j, (len, a, value)) in pairs.into_iter().enumerate() {
            let bits = index(a, COMPACT_AT, COMPACT_MAX_LEN) as u32;
            // The first line's pairs from word 2, the second's from word 16.
            let at = if j < LINE_PAIRS as usize { 2 + 2 * j } else { 16 + 2 * (j - 7) };
            words[at] = bits << 8 | u32::from(len - COMPACT_AT);
            words[at + 1] = value;
        }
        let pair = list.len() > LINE_PAIRS as usize;
        self.new_compact(&words, pair)
    }

    /// Writes a compact node's `words` (its first line, and its second when `pair`) into free
    /// nodes, counted as a compact node, and returns its pointer (unlinked).
    fn new_compact(
        &mut self,
        words: &[u32; 2 * NODE_ENTRIES as usize],
        pair: bool,
    ) -> Result<u32, Dir24Error> {
        let lines = if pair { 2 } else { 1 };
        let node = self.alloc_run(lines, true)?;
        let base = node_base(node);
        for (i, &w) in words.iter().take((lines * NODE_ENTRIES) as usize).enumerate() {
            self.cells.set(base + i, w);
        }
        self.nodes_in_use += lines;
        self.compact += 1;
        Ok(compact_pointer(node, pair))
    }

    /// Writes the expanded nodes of a /32's longer prefixes below a new node, not yet linked.
    fn build_expanded(
        &mut self,
        list: &BTreeMap<(u128, u8), u32>,
        inherited: u32,
        depth: u8,
    ) -> Result<u32, Dir24Error> {
        let node = self.filled_node(true, inherited, depth)?;
        let base = node_base(node);
        for (&(a, len), &value) in list {
            let (b, start, end) =
                self.level_from((base, COMPACT_AT, COMPACT_AT + STRIDE), a, len, true)?;
            self.write(b, start, end, a, len, value, len + 1, &|d| d <= len + 1);
        }
        Ok(node)
    }

    /// Retires what a replaced /32 entry pointed to: its compact node, or all its nodes.
    fn retire_below(&mut self, old: u32) {
        if !is_group(old) {
            return;
        }
        let node = group_entry(old);
        let now = Instant::now();
        if is_compact(old) {
            self.compact -= 1;
            self.retired.push_back((node, run_len(old), now));
            self.nodes_in_use -= run_len(old);
            return;
        }
        let mut nodes = vec![node];
        collect_nodes(&self.cells, node_base(node), NODE_ENTRIES as usize, &mut nodes);
        for n in nodes {
            for i in node_base(n)..node_base(n) + NODE_ENTRIES as usize {
                self.inherited.remove(&i);
            }
            self.retired.push_back((n, 1, now));
            self.nodes_in_use -= 1;
        }
    }

    /// Removes the route for `net`; addresses it covered fall back to the next shorter prefix.
    pub fn remove(&mut self, net: Ipv6Net) {
        let (a, len) = (u128::from(net.network()), net.prefix_len());
        if self.prefixes[usize::from(len)].remove(&a).is_none() {
            return;
        }
        let mut from = (0, 0, ROOT_BITS);
        if len > COMPACT_AT {
            let n32 = mask(a, COMPACT_AT);
            self.forget_below32(a, len);
            let Ok(level) = self.level_for(a, COMPACT_AT, false) else { return };
            from = level;
            let entry = from.0 + index(a, from.1, from.2);
            let e = self.cells.get(entry);
            let list = self.below32.get(&n32);
            if is_compact(e) || list.is_none_or(compactable) {
                if let Err(error) = self.sync32(entry, n32) {
                    tracing::warn!(%error, "an IPv6 /32 could not be rewritten after a removal");
                }
                self.collapse_path(a, COMPACT_AT + 1);
                return;
            }
        }
        let (value, depth) = (0..len)
            .rev()
            .find_map(|l| self.prefixes[usize::from(l)].get(&mask(a, l)).map(|v| (*v, l + 1)))
            .unwrap_or((0, 0));
        let Ok((base, start, end)) = self.level_from(from, a, len, false) else { return };
        self.write(base, start, end, a, len, value, depth, &|d| d == len + 1);
        self.collapse_path(a, len);
    }

    /// The level a prefix of `len` is written at: its node's first entry and bit range. Creates
    /// the nodes on the way when `create`.
    fn level_for(&mut self, a: u128, len: u8, create: bool) -> Result<(usize, u8, u8), Dir24Error> {
        self.level_from((0, 0, ROOT_BITS), a, len, create)
    }

    /// [`Trie6::level_for`] from a level other than the root: (first entry, bit range).
    fn level_from(
        &mut self,
        from: (usize, u8, u8),
        a: u128,
        len: u8,
        create: bool,
    ) -> Result<(usize, u8, u8), Dir24Error> {
        let (mut base, mut start, mut end) = from;
        while len > end {
            let entry = base + index(a, start, end);
            let mut e = self.cells.get(entry);
            if !is_group(e) {
                if !create {
                    return Err(Dir24Error::GroupsFull);
                }
                e = self.add_node(entry, end, a)?;
            }
            base = node_base(group_entry(e));
            start = end;
            end += if end == ROOT_BITS { child_bits(e) } else { STRIDE };
        }
        Ok((base, start, end))
    }

    /// Gives the entry of a level ending at bit `end` (on the way to `a`) a node, filled with
    /// the entry's answer before it is published, and returns the pointer. A first-level entry
    /// gets a wide node while [`MAX_WIDE`] allows (and, when adopting, if its /16 is one of the
    /// densest), else a 4-bit node.
    fn add_node(&mut self, entry: usize, end: u8, a: u128) -> Result<u32, Dir24Error> {
        let value = self.cells.get(entry);
        let depth = self.depth[entry];
        let wanted = end == ROOT_BITS
            && self.wide < self.max_wide
            && self.wide_for.as_ref().is_none_or(|w| w.contains(&(index(a, 0, ROOT_BITS) as u16)));
        let wide =
            if wanted { self.filled_run(WIDE_NODES, false, value, depth).ok() } else { None };
        let pointer = match wide {
            Some(node) => {
                self.wide += 1;
                wide_pointer(node)
            }
            None => group_pointer(self.filled_node(end >= DEEP_FROM, value, depth)?),
        };
        self.inherited.insert(entry, value);
        self.cells.set(entry, pointer);
        Ok(pointer)
    }

    /// [`Trie6::filled_node`] for a run of `len` nodes.
    fn filled_run(
        &mut self,
        len: u32,
        deep: bool,
        value: u32,
        depth: u8,
    ) -> Result<u32, Dir24Error> {
        let node = self.alloc_run(len, deep)?;
        let base = node_base(node);
        for i in base..base + (len * NODE_ENTRIES) as usize {
            self.depth[i] = depth;
            self.cells.set(i, value);
        }
        self.nodes_in_use += len;
        Ok(node)
    }

    /// A free node whose entries all answer `value` (of `depth`), not linked yet.
    fn filled_node(&mut self, deep: bool, value: u32, depth: u8) -> Result<u32, Dir24Error> {
        self.filled_run(1, deep, value, depth)
    }

    /// Writes `value` of `depth` to the entries a prefix covers in its level's node, and below
    /// pointers to the entries that inherit it, where `replace` accepts the current depth.
    #[expect(clippy::too_many_arguments, reason = "the geometry of one write")]
    fn write(
        &mut self,
        base: usize,
        start: u8,
        end: u8,
        a: u128,
        len: u8,
        value: u32,
        depth: u8,
        replace: &dyn Fn(u8) -> bool,
    ) {
        let first = base + index(a, start, end);
        for entry in first..first + (1usize << (end - len)) {
            self.write_entry(entry, end, value, depth, replace);
        }
    }

    fn write_entry(
        &mut self,
        entry: usize,
        end: u8,
        value: u32,
        depth: u8,
        replace: &dyn Fn(u8) -> bool,
    ) {
        if !replace(self.depth[entry]) {
            return;
        }
        self.depth[entry] = depth;
        let e = self.cells.get(entry);
        if is_compact(e) {
            // A compact node is rewritten elsewhere with the new inherited answer.
            self.inherited.insert(entry, value);
            let old = node_base(group_entry(e));
            let lines = run_len(e) as usize;
            let mut words: [u32; 2 * NODE_ENTRIES as usize] = std::array::from_fn(|i| {
                if i < lines * NODE_ENTRIES as usize { self.cells.get(old + i) } else { 0 }
            });
            if words[1] == value {
                return;
            }
            words[1] = value;
            match self.new_compact(&words, is_pair(e)) {
                Ok(pointer) => {
                    self.cells.set(entry, pointer);
                    self.retire_below(e);
                }
                Err(error) => tracing::warn!(%error, "an IPv6 compact node could not be rewritten"),
            }
        } else if is_group(e) {
            // The node below inherits: its entries that came from above follow.
            self.inherited.insert(entry, value);
            let base = node_base(group_entry(e));
            let bits = if end == ROOT_BITS { child_bits(e) } else { STRIDE };
            for child in base..base + (1usize << bits) {
                if self.depth[child] <= end + 1 {
                    self.write_entry(child, end + bits, value, depth, replace);
                }
            }
        } else if e != value {
            self.cells.set(entry, value);
        }
    }

    /// After a removal, returns to their parent entry the nodes on the path to `a`/`len` that
    /// hold nothing of their own any more.
    fn collapse_path(&mut self, a: u128, len: u8) {
        let mut path = Vec::new();
        let (mut base, mut start, mut end) = (0usize, 0u8, ROOT_BITS);
        while len > end {
            let entry = base + index(a, start, end);
            let e = self.cells.get(entry);
            // A compact node holds what is below it: it is not a node of this path.
            if !is_group(e) || is_compact(e) {
                break;
            }
            path.push((entry, end));
            base = node_base(group_entry(e));
            start = end;
            end += if end == ROOT_BITS { child_bits(e) } else { STRIDE };
        }
        for (entry, node_start) in path.into_iter().rev() {
            let e = self.cells.get(entry);
            let node = group_entry(e);
            let wide = node_start == ROOT_BITS && is_wide(e);
            let base = node_base(node);
            let count = if wide { 1 << WIDE_BITS } else { NODE_ENTRIES as usize };
            let own = (base..base + count)
                .any(|i| self.depth[i] > node_start + 1 || is_group(self.cells.get(i)));
            if own {
                break;
            }
            self.cells.set(entry, self.inherited.remove(&entry).unwrap_or(0));
            let len = if wide { WIDE_NODES } else { 1 };
            self.retired.push_back((node, len, Instant::now()));
            self.nodes_in_use -= len;
            if wide {
                self.wide -= 1;
            }
        }
    }
}

/// Where [`Trie6::place`] is in the live trie while adopting it.
struct Place<'a> {
    /// Nodes of the live trie one entry alone points to, inside the table.
    trusted: &'a std::collections::HashSet<u32>,
    /// Nodes taken into the adopted trie so far.
    reused: &'a mut std::collections::HashSet<u32>,
    /// Whether the entries being placed are the live trie's (below the first level, only under
    /// kept nodes).
    live: bool,
}

impl Place<'_> {
    /// Whether the live node `node`, found at the entry being placed, may be kept there.
    fn keeps(&self, node: u32) -> bool {
        self.live && self.trusted.contains(&node) && !self.reused.contains(&node)
    }
}

/// The nodes a live trie reaches, walked with bounds: each node once (a node two entries point
/// to is not followed twice, so a cycle ends), none outside the table, no deeper than 128 bits.
struct LiveNodes {
    /// Every node reached, once: its first id and the ids it takes (a wide node, a compact node
    /// of two lines: more than one).
    nodes: Vec<(u32, u32)>,
    /// Those exactly one entry points to, sharing none of their ids with another node.
    trusted: std::collections::HashSet<u32>,
    /// Pointers to a node outside the table, or to a node another entry points to too, or
    /// that overlaps another.
    untrusted: u64,
}

impl LiveNodes {
    fn walk<C: Cells>(cells: &C) -> Self {
        // Per node: its length and the entries pointing to it; per id, the nodes covering it.
        let mut runs: HashMap<u32, (u32, u32)> = HashMap::new();
        let mut covering: HashMap<u32, u32> = HashMap::new();
        let mut outside = 0u64;
        let mut stack = vec![(0usize, ROOT_ENTRIES as usize, ROOT_BITS)];
        while let Some((base, count, end)) = stack.pop() {
            for i in base..base + count {
                let e = cells.get(i);
                if !is_group(e) || end >= 128 {
                    continue;
                }
                let node = group_entry(e);
                let wide = end == ROOT_BITS && is_wide(e);
                let len = if wide || is_compact(e) { run_len(e) } else { 1 };
                if node + len > MAX_NODES {
                    outside += 1;
                    continue;
                }
                let run = runs.entry(node).or_insert((len, 0));
                run.1 += 1;
                if run.1 > 1 {
                    continue;
                }
                run.0 = len;
                for id in node..node + len {
                    *covering.entry(id).or_default() += 1;
                }
                if wide {
                    stack.push((node_base(node), 1 << WIDE_BITS, end + WIDE_BITS));
                } else if !is_compact(e) {
                    stack.push((node_base(node), NODE_ENTRIES as usize, end + STRIDE));
                }
            }
        }
        let alone = |node: u32, (len, refs): (u32, u32)| {
            refs == 1 && (node..node + len).all(|id| covering[&id] == 1)
        };
        let trusted: std::collections::HashSet<u32> =
            runs.iter().filter(|&(&n, &r)| alone(n, r)).map(|(&n, _)| n).collect();
        let shared: u64 = runs
            .iter()
            .filter(|(n, _)| !trusted.contains(n))
            .map(|(_, &(_, refs))| u64::from(refs))
            .sum();
        // A node overlapping another is handed back id by id, so that no id is handed out
        // twice; the others as they are.
        let mut nodes: Vec<(u32, u32)> = Vec::new();
        let mut loose = std::collections::BTreeSet::new();
        for (&n, &(len, _)) in &runs {
            if trusted.contains(&n) || len == 1 && covering[&n] == 1 {
                nodes.push((n, len));
            } else {
                loose.extend(n..n + len);
            }
        }
        nodes.extend(loose.into_iter().map(|id| (id, 1)));
        Self { nodes, trusted, untrusted: outside + shared }
    }
}

/// The nodes reachable from a level (of a trie this process wrote: unbounded).
fn collect_nodes<C: Cells>(cells: &C, base: usize, count: usize, out: &mut Vec<u32>) {
    for i in base..base + count {
        let e = cells.get(i);
        if is_group(e) {
            let node = group_entry(e);
            out.push(node);
            if is_wide(e) && base == 0 {
                collect_nodes(cells, node_base(node), 1 << WIDE_BITS, out);
            } else if !is_compact(e) {
                collect_nodes(cells, node_base(node), NODE_ENTRIES as usize, out);
            }
        }
    }
}

#[cfg(test)]
mod tests;
