//! The IPv4 lookup structure of the dataplane: DIR-24-8, as in DPDK's `rte_lpm`. A table of 2^24
//! entries indexed by the top 24 bits of the destination holds the answer for every prefix of
//! length 24 or less; where longer prefixes exist under a /24, its entry points to a group of 256
//! entries indexed by the last byte. A lookup is one or two array reads whatever the table size.
//!
//! Each entry is a `u32` (see [`sluice_common::dir24`]) written with a single aligned store into
//! memory the XDP program reads (a `BPF_F_MMAPABLE` array mapped into this process), so a reader
//! sees the old entry or the new one, never half of each. A group is filled completely before the
//! entry that points to it is published, and a group that falls out of use is only handed out
//! again after [`GROUP_GRACE`], when no program run that could have read the old pointer is still
//! going (an XDP run lasts microseconds).
//!
//! Userspace keeps a shadow (which prefix length wrote each entry, the ≤ /24 answer under each
//! group, the prefixes themselves) so that every change writes only the entries it affects.

use std::{
    collections::HashMap,
    net::Ipv4Addr,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use ipnet::Ipv4Net;
use sluice_common::{
    Route,
    dir24::{
        GROUP_ENTRIES, MAX_GROUPS, RESULTS, SUMMARY_DESCEND, SUMMARY_OFFSET, SUMMARY8_OFFSET,
        TBL24_ENTRIES, TBL24_MAP_WORDS, TBL24_WORDS, decode, encode, group_entry, group_pointer,
        is_group, short_entry, short_group, short_group_pointer, short_is_group, with_short_entry,
    },
};

use crate::check::{Answer, Check};

/// How long a released group waits before it may be reused.
pub const GROUP_GRACE: Duration = Duration::from_millis(50);

/// Storage for entries: memory shared with the XDP program, or plain memory in tests.
#[expect(clippy::len_without_is_empty, reason = "a table of entries is never empty")]
pub trait Cells {
    /// Number of entries.
    fn len(&self) -> usize;
    /// Reads entry `i`.
    fn get(&self, i: usize) -> u32;
    /// Writes entry `i` with one atomic store, ordered after every earlier store.
    fn set(&self, i: usize, value: u32);
}

/// Plain memory, for tests and for building images.
#[derive(Debug)]
pub struct VecCells(Vec<AtomicU32>);

impl VecCells {
    /// `len` zeroed entries, from zeroed pages: entries never written cost no memory (an image
    /// of the IPv6 trie is 64 MiB, of which a table touches a fraction).
    #[expect(unsafe_code, reason = "a zeroed allocation is assumed initialised")]
    pub fn new(len: usize) -> Self {
        let cells = Box::<[AtomicU32]>::new_zeroed_slice(len);
        // SAFETY: `AtomicU32` has the size and bit validity of `u32`, for which all zero bytes
        // are a valid value.
        Self(unsafe { cells.assume_init() }.into_vec())
    }
}

impl Cells for VecCells {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn get(&self, i: usize) -> u32 {
        self.0[i].load(Ordering::Acquire)
    }
    fn set(&self, i: usize, value: u32) {
        self.0[i].store(value, Ordering::Release);
    }
}

/// Why a route could not be written.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Dir24Error {
    /// Every second-level group is in use.
    #[error("the lookup table is full: all its second-level groups or nodes are in use")]
    GroupsFull,
    /// The route's target does not fit an entry.
    #[error("route target {0} does not fit a DIR-24-8 entry")]
    Unencodable(u32),
    /// Every result the first level can name is taken (as many distinct next hops and groups).
    #[error("the lookup table is full: all {RESULTS} results of its first level are in use")]
    ResultsFull,
}

/// The first level as the rest of the structure sees it: one `u32` entry per /24, a route or a
/// group pointer. Stored as 16 bits per /24 (see [`sluice_common::dir24`]): a group pointer
/// directly, a route as the index of its result. A result, once named, keeps its index for the
/// life of the table (results are distinct routes, bounded by the next hops and groups in use),
/// so a reader that found an index always finds the route it stood for.
#[derive(Debug)]
struct Tbl24<C: Cells> {
    cells: C,
    /// Route entry -> its result's index.
    index: HashMap<u32, u32>,
    /// The next index to hand out.
    next: u32,
}

impl<C: Cells> Tbl24<C> {
    /// The first level over `cells`, taking over the results they already name.
    fn new(cells: C) -> Self {
        assert_eq!(cells.len(), TBL24_MAP_WORDS as usize);
        let mut index = HashMap::new();
        let mut next = 1;
        for i in 1..RESULTS {
            let value = cells.get((TBL24_WORDS + i) as usize);
            if value != 0 {
                index.entry(value).or_insert(i);
                next = i + 1;
            }
        }
        Self { cells, index, next }
    }

    /// The 16-bit entry of `slot`.
    fn get_short(&self, slot: usize) -> u32 {
        short_entry(self.cells.get(slot / 2), slot as u32)
    }

    fn get(&self, slot: usize) -> u32 {
        self.value(self.get_short(slot))
    }

    /// The entry a 16-bit entry stands for.
    fn value(&self, short: u32) -> u32 {
        if short_is_group(short) {
            group_pointer(short_group(short))
        } else if short == 0 {
            0
        } else {
            self.cells.get((TBL24_WORDS + short) as usize)
        }
    }

    /// The index of the result for route entry `value`, written to the results if new.
    fn intern(&mut self, value: u32) -> Result<u32, Dir24Error> {
        if value == 0 {
            return Ok(0);
        }
        if let Some(&i) = self.index.get(&value) {
            return Ok(i);
        }
        if self.next >= RESULTS {
            return Err(Dir24Error::ResultsFull);
        }
        let i = self.next;
        self.cells.set((TBL24_WORDS + i) as usize, value);
        self.index.insert(value, i);
        self.next += 1;
        Ok(i)
    }

    /// Writes the entry of `slot`: one store of the word it shares with its neighbour (this
    /// process is the only writer, so the neighbour's half is what it wrote last). A route's
    /// result is named when the route is set ([`Dir24::set`]), before any entry needs it.
    fn set(&mut self, slot: usize, value: u32) {
        let short = self.short(value);
        self.set_short(slot, short);
    }

    /// The 16-bit entry standing for `value` (a group pointer or a route already named).
    fn short(&mut self, value: u32) -> u32 {
        if is_group(value) {
            short_group_pointer(group_entry(value))
        } else {
            self.intern(value).expect("a route's result is named when the route is set")
        }
    }

    fn set_short(&self, slot: usize, short: u32) {
        let word = self.cells.get(slot / 2);
        self.cells.set(slot / 2, with_short_entry(word, slot as u32, short));
    }

    /// The summary entry of the /16 `sixteen`.
    fn get_summary(&self, sixteen: usize) -> u32 {
        short_entry(self.cells.get(SUMMARY_OFFSET as usize + sixteen / 2), sixteen as u32)
    }

    /// The /8 summary's entry of the /8 `eight`.
    fn get_summary8(&self, eight: usize) -> u32 {
        short_entry(self.cells.get(SUMMARY8_OFFSET as usize + eight / 2), eight as u32)
    }

    /// Brings the summary entries of the /16s holding slots `first..=last`, then those of their
    /// /8s, in line with the level below, which is already written: a /16 whose /24s (a /8 whose
    /// /16s) all have one result gets it, any other [`SUMMARY_DESCEND`]. Until then a reader
    /// follows a summary's old entry, which gives an old answer (a result) or sends it down a
    /// level (old or new there).
    fn summarize(&self, first: usize, last: usize) {
        for sixteen in first >> 8..=last >> 8 {
            let want = self.uniform(sixteen * 128);
            if self.get_summary(sixteen) != want {
                let at = SUMMARY_OFFSET as usize + sixteen / 2;
                self.cells.set(at, with_short_entry(self.cells.get(at), sixteen as u32, want));
            }
        }
        for eight in first >> 16..=last >> 16 {
            let want = self.uniform(SUMMARY_OFFSET as usize + eight * 128);
            if self.get_summary8(eight) != want {
                let at = SUMMARY8_OFFSET as usize + eight / 2;
                self.cells.set(at, with_short_entry(self.cells.get(at), eight as u32, want));
            }
        }
    }

    /// The one result the 256 16-bit entries in the 128 words from `start` share, or
    /// [`SUMMARY_DESCEND`] when they differ or one is a group pointer (or itself descends).
    fn uniform(&self, start: usize) -> u32 {
        let w0 = self.cells.get(start);
        let e0 = w0 & 0xffff;
        let uniform = !short_is_group(e0)
            && w0 == e0 * 0x1_0001
            && (start..start + 128).all(|w| self.cells.get(w) == w0);
        if uniform { e0 } else { SUMMARY_DESCEND }
    }

    /// Results named.
    fn results(&self) -> usize {
        self.index.len()
    }
}

/// Memory the structure uses, for reporting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    /// Prefixes held.
    pub prefixes: usize,
    /// Second-level groups in use.
    pub groups: u32,
    /// Second-level groups available.
    pub groups_max: u32,
    /// Distinct routes the first level names.
    pub results: usize,
    /// Routes left out at adoption because the groups were full.
    pub rejected: usize,
    /// Bytes of the shared tables (first level plus the groups in use).
    pub shared_bytes: u64,
}

/// What the IPv4 lookup tables hold, as read from them ([`Dir24::scan`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Scanned {
    /// Second-level groups the first level points to (a /24 holding longer prefixes each).
    pub groups: u32,
    /// Second-level groups available.
    pub groups_max: u32,
    /// Distinct routes the first level names.
    pub results: u32,
    /// Distinct routes it can name.
    pub results_max: u32,
    /// Bytes in use: the first level with its results, and the groups.
    pub bytes: u64,
}

/// DIR-24-8 over two cell arrays (`tbl24`: [`TBL24_MAP_WORDS`], `tbl8`: `MAX_GROUPS` × 256).
#[derive(Debug)]
pub struct Dir24<C: Cells> {
    tbl24: Tbl24<C>,
    tbl8: C,
    /// Per first-level slot: the encoded answer of the ≤ /24 prefixes, and its length + 1 (0: none).
    /// Per first-level slot holding a group: the answer of the ≤ /24 prefixes (elsewhere it is
    /// the slot's entry itself).
    group_base: HashMap<usize, u32>,
    base_depth: Vec<u8>,
    /// Per group entry: the length + 1 of the prefix that wrote it (0: none).
    group_depth: Vec<u8>,
    /// The prefixes, by length, as encoded entries.
    prefixes: Vec<HashMap<u32, u32>>,
    /// Group ids never used yet start here.
    next_group: u32,
    free_groups: Vec<u32>,
    retired: Vec<(u32, Instant)>,
    groups_in_use: u32,
    /// Routes that did not fit when the tables were adopted.
    rejected: usize,
    /// What adoption found and rewrote.
    adoption: Adoption,
}

/// What adopting live tables found in them ([`Dir24::adoption`], [`crate::trie6::Trie6::adoption`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Adoption {
    /// Entries rewritten because they differed from the table the routes make (0 after a clean
    /// restart with the same routes).
    pub rewritten: u64,
    /// Pointers to second-level groups (IPv6: nodes) not trusted: a group or node that more than
    /// one entry points to, or one outside the table. Their entries were given fresh groups or
    /// nodes instead of being kept.
    pub untrusted: u64,
}

/// Bytes of the shared tables with `groups` groups in use: the first level with its results,
/// and the groups.
fn shared_bytes(groups: u32) -> u64 {
    u64::from(TBL24_MAP_WORDS) * 4 + u64::from(groups) * u64::from(GROUP_ENTRIES) * 4
}

fn mask(addr: u32, len: u8) -> u32 {
    if len == 0 { 0 } else { addr & (u32::MAX << (32 - u32::from(len))) }
}

impl<C: Cells> Dir24<C> {
    /// A structure over zeroed cells.
    pub fn new(tbl24: C, tbl8: C) -> Self {
        Self::over(Tbl24::new(tbl24), tbl8)
    }

    /// A structure over a first level already taken over.
    fn over(tbl24: Tbl24<C>, tbl8: C) -> Self {
        assert_eq!(tbl8.len(), (MAX_GROUPS * GROUP_ENTRIES) as usize);
        Self {
            group_base: HashMap::new(),
            base_depth: vec![0; TBL24_ENTRIES as usize],
            group_depth: vec![0; tbl8.len()],
            tbl24,
            tbl8,
            prefixes: vec![HashMap::new(); 33],
            next_group: 0,
            free_groups: Vec::new(),
            retired: Vec::new(),
            groups_in_use: 0,
            rejected: 0,
            adoption: Adoption::default(),
        }
    }

    /// What adoption found in the live tables (zeros for tables made afresh).
    pub fn adoption(&self) -> Adoption {
        self.adoption
    }

    /// Takes over cells that already hold a table (a restarted daemon adopting the pinned maps):
    /// computes the table `routes` make, reusing the groups the cells already use for the same
    /// /24s, and writes only the entries that differ. Readers see old or new entries throughout.
    pub fn adopt(
        tbl24: C,
        tbl8: C,
        routes: impl IntoIterator<Item = (Ipv4Net, Route)>,
    ) -> Result<Self, Dir24Error> {
        let tbl24 = Tbl24::new(tbl24);
        // A live group is kept for its /24 only when that /24 alone points to it and it lies in
        // the table: two /24s sharing one group (a table written by two processes at once) or a
        // pointer past the groups would otherwise be trusted, and one /24's routes written over
        // the other's. Such /24s get fresh groups below, filled before they are published.
        let mut pointers = Vec::new();
        let mut references: HashMap<u32, u32> = HashMap::new();
        let mut empty = true;
        for slot in 0..TBL24_ENTRIES as usize {
            let e = tbl24.get_short(slot);
            empty &= e == 0;
            if short_is_group(e) {
                pointers.push((slot as u32, short_group(e)));
                *references.entry(short_group(e)).or_default() += 1;
            }
        }
        if empty {
            return Ok(Self::fill_empty(tbl24, tbl8, routes));
        }
        let mut live_groups = HashMap::new();
        let mut untrusted = 0u64;
        for (slot, g) in pointers {
            if g < MAX_GROUPS && references[&g] == 1 {
                live_groups.insert(slot, g);
            } else {
                untrusted += 1;
            }
        }
        // Every group a live slot points to stays out of the free ones until the slots that point
        // to it are rewritten, and then waits out the grace period.
        let pointed_to: Vec<u32> = references.into_keys().filter(|&g| g < MAX_GROUPS).collect();
        // Build the image in plain memory, then copy it over what differs.
        let mut image =
            Dir24::new(VecCells::new(TBL24_MAP_WORDS as usize), VecCells::new(tbl8.len()));
        for (net, route) in routes {
            // What does not fit is left out (and logged by the caller through `usage`), so
            // that everything else still forwards.
            if image.set(net, route).is_err() {
                image.rejected += 1;
            }
        }
        let mut placed = Self::over(tbl24, tbl8);
        // Every route the image names gets its result first, so writing entries cannot fail;
        // `translate` turns the image's 16-bit entries into the live table's.
        let mut translate = vec![0u32; RESULTS as usize];
        for (&value, &i) in &image.tbl24.index {
            translate[i as usize] = placed.tbl24.intern(value)?;
        }
        placed.prefixes = std::mem::take(&mut image.prefixes);
        placed.rejected = image.rejected;
        placed.group_base = std::mem::take(&mut image.group_base);
        placed.base_depth = std::mem::take(&mut image.base_depth);
        placed.reserve_groups(pointed_to.iter().copied());
        placed.adoption.untrusted = untrusted;
        // Each group of the image goes to the id the live table already uses for that /24, so
        // the first level does not change for it; new ones get ids no live slot points to.
        let mut slot_group = HashMap::new();
        for slot in 0..TBL24_ENTRIES as usize {
            let e = image.tbl24.get_short(slot);
            if !short_is_group(e) {
                continue;
            }
            let from = short_group(e) as usize * 256;
            let to = match live_groups.get(&(slot as u32)) {
                Some(&g) => g,
                None => placed.alloc_group()?,
            };
            let to_start = to as usize * 256;
            for i in 0..GROUP_ENTRIES as usize {
                placed.group_depth[to_start + i] = image.group_depth[from + i];
                let v = image.tbl8.get(from + i);
                if placed.tbl8.get(to_start + i) != v {
                    placed.tbl8.set(to_start + i, v);
                    placed.adoption.rewritten += 1;
                }
            }
            slot_group.insert(slot, to);
            placed.groups_in_use += 1;
        }
        for slot in 0..TBL24_ENTRIES as usize {
            let e = image.tbl24.get_short(slot);
            let want = if short_is_group(e) {
                short_group_pointer(slot_group[&slot])
            } else {
                translate[e as usize]
            };
            if placed.tbl24.get_short(slot) != want {
                placed.tbl24.set_short(slot, want);
                placed.adoption.rewritten += 1;
            }
        }
        placed.tbl24.summarize(0, TBL24_ENTRIES as usize - 1);
        // Live groups no slot points to any more wait out the grace period.
        let in_use: std::collections::HashSet<u32> = slot_group.values().copied().collect();
        let now = Instant::now();
        for g in pointed_to.into_iter().filter(|g| !in_use.contains(g)) {
            placed.retired.push((g, now));
        }
        Ok(placed)
    }

    /// [`Dir24::adopt`] of a first level that answers nothing (a new pin directory, or one a
    /// table was removed from): nothing there to keep, so the routes are written straight into
    /// the live table, one at a time as later changes are (each entry whole, a group filled
    /// before it is published), without an image of the whole table beside it (48 MiB, a
    /// sixth of the daemon's peak when a full table loads at its start). Readers see the table
    /// fill up, as while a table loads into a running daemon.
    fn fill_empty(
        tbl24: Tbl24<C>,
        tbl8: C,
        routes: impl IntoIterator<Item = (Ipv4Net, Route)>,
    ) -> Self {
        let mut placed = Self::over(tbl24, tbl8);
        for (net, route) in routes {
            // What does not fit is left out (and logged by the caller through `usage`).
            if placed.set(net, route).is_err() {
                placed.rejected += 1;
            }
        }
        // Summaries left by an earlier table, where no route came, are made right.
        placed.tbl24.summarize(0, TBL24_ENTRIES as usize - 1);
        // Every entry that answers now was written.
        let mut written = 0u64;
        for slot in 0..TBL24_ENTRIES as usize {
            let e = placed.tbl24.get_short(slot);
            written += u64::from(e != 0);
            if short_is_group(e) {
                let g = short_group(e) as usize * GROUP_ENTRIES as usize;
                written += (g..g + GROUP_ENTRIES as usize)
                    .filter(|&i| placed.tbl8.get(i) != 0)
                    .count() as u64;
            }
        }
        placed.adoption.rewritten = written;
        placed
    }

    /// Marks groups as taken (they hold live data) without writing them.
    fn reserve_groups(&mut self, groups: impl IntoIterator<Item = u32>) {
        for g in groups {
            self.next_group = self.next_group.max(g + 1);
        }
    }

    fn alloc_group(&mut self) -> Result<u32, Dir24Error> {
        let now = Instant::now();
        let mut i = 0;
        while i < self.retired.len() {
            if now.duration_since(self.retired[i].1) >= GROUP_GRACE {
                let (g, _) = self.retired.swap_remove(i);
                self.free_groups.push(g);
            } else {
                i += 1;
            }
        }
        if let Some(g) = self.free_groups.pop() {
            return Ok(g);
        }
        if self.next_group < MAX_GROUPS {
            self.next_group += 1;
            return Ok(self.next_group - 1);
        }
        Err(Dir24Error::GroupsFull)
    }

    /// The route for `net`, if held.
    pub fn get(&self, net: Ipv4Net) -> Option<Route> {
        let e = self.prefixes[usize::from(net.prefix_len())].get(&u32::from(net.network()))?;
        decode(*e)
    }

    /// Looks an address up the way the XDP program does.
    pub fn lookup(&self, addr: Ipv4Addr) -> Option<Route> {
        let a = u32::from(addr);
        let mut summary = self.tbl24.get_summary8((a >> 24) as usize);
        if summary == SUMMARY_DESCEND {
            summary = self.tbl24.get_summary((a >> 16) as usize);
        }
        let mut e = if summary == SUMMARY_DESCEND {
            self.tbl24.get((a >> 8) as usize)
        } else {
            self.tbl24.value(summary)
        };
        if is_group(e) {
            e = self.tbl8.get((group_entry(e) * GROUP_ENTRIES + (a & 0xff)) as usize);
        }
        decode(e)
    }

    /// What the tables use, read from the cells alone (in a process other than their writer,
    /// which knows it without a scan: [`Dir24::usage`]): the groups the first level points to and
    /// the results it names. Reads the whole first level (32 MiB).
    pub fn scan(&self) -> Scanned {
        let mut group = vec![false; MAX_GROUPS as usize];
        let mut result = vec![false; RESULTS as usize];
        for slot in 0..TBL24_ENTRIES as usize {
            let short = self.tbl24.get_short(slot);
            // 0 is no route; an index out of range (a torn or foreign table) is not counted.
            let seen = if short_is_group(short) {
                group.get_mut(short_group(short) as usize)
            } else {
                result.get_mut(short as usize).filter(|_| short != 0)
            };
            if let Some(seen) = seen {
                *seen = true;
            }
        }
        let groups = group.iter().filter(|&&g| g).count() as u32;
        Scanned {
            groups,
            groups_max: MAX_GROUPS,
            results: result.iter().filter(|&&r| r).count() as u32,
            results_max: RESULTS - 1,
            bytes: shared_bytes(groups),
        }
    }

    /// Compares what the tables answer with what `routes` make, entry by entry (the whole
    /// first level, and every group either side has for a /24), and reports what is wrong with
    /// the tables' structure. Reads the tables only: for a process other than their writer.
    pub fn check(&self, routes: impl IntoIterator<Item = (Ipv4Net, Route)>) -> Check {
        let mut check = Check::default();
        let mut image = Dir24::new(
            VecCells::new(TBL24_MAP_WORDS as usize),
            VecCells::new((MAX_GROUPS * GROUP_ENTRIES) as usize),
        );
        for (net, route) in routes {
            if let Err(e) = image.set(net, route) {
                check.problem(|| format!("route {net} does not fit the tables: {e}"));
            }
        }
        let mut references = vec![0u32; MAX_GROUPS as usize];
        for slot in 0..TBL24_ENTRIES as usize {
            let live = self.tbl24.get_short(slot);
            let want = image.tbl24.get_short(slot);
            let net24 = || format!("{}/24", Ipv4Addr::from((slot as u32) << 8));
            if short_is_group(live) {
                match references.get_mut(short_group(live) as usize) {
                    Some(n) => *n += 1,
                    None => check.problem(|| {
                        format!(
                            "{} points to group {}, past the {MAX_GROUPS} groups",
                            net24(),
                            short_group(live)
                        )
                    }),
                }
            }
            if !short_is_group(live) && !short_is_group(want) {
                check.compare(net24, self.first_level(live), image.first_level(want));
                continue;
            }
            for i in 0..GROUP_ENTRIES {
                let at = || format!("{}/32", Ipv4Addr::from(((slot as u32) << 8) | i));
                check.compare(at, self.entry(live, i), image.entry(want, i));
            }
        }
        for (g, n) in references.iter().enumerate().filter(|(_, n)| **n > 1) {
            check.problem(|| format!("group {g} is pointed to by {n} /24s (each needs its own)"));
        }
        check
    }

    /// What a first-level entry that is not a group pointer answers.
    fn first_level(&self, short: u32) -> Answer {
        if short == 0 {
            return Ok(None);
        }
        let word = self.tbl24.cells.get((TBL24_WORDS + short) as usize);
        if is_group(word) { Err(()) } else { Ok(decode(word)) }
    }

    /// What address `i` under a first-level entry answers.
    fn entry(&self, short: u32, i: u32) -> Answer {
        if !short_is_group(short) {
            return self.first_level(short);
        }
        let g = short_group(short);
        if g >= MAX_GROUPS {
            return Err(());
        }
        let value = self.tbl8.get((g * GROUP_ENTRIES + i) as usize);
        if is_group(value) { Err(()) } else { Ok(decode(value)) }
    }

    /// Memory in use.
    pub fn usage(&self) -> Usage {
        Usage {
            prefixes: self.prefixes.iter().map(HashMap::len).sum(),
            groups: self.groups_in_use,
            groups_max: MAX_GROUPS,
            results: self.tbl24.results(),
            rejected: self.rejected,
            shared_bytes: shared_bytes(self.groups_in_use),
        }
    }

    /// Adds or replaces the route for `net`.
    pub fn set(&mut self, net: Ipv4Net, route: Route) -> Result<(), Dir24Error> {
        let value = encode(route).ok_or(Dir24Error::Unencodable(route.target))?;
        let (addr, len) = (u32::from(net.network()), net.prefix_len());
        if self.prefixes[usize::from(len)].get(&addr) == Some(&value) {
            // Already written (a route set again after adoption, or unchanged).
            return Ok(());
        }
        if len <= 24 {
            // Only first-level entries name results: a longer prefix lives in its group.
            self.tbl24.intern(value)?;
        } else {
            let slot = (addr >> 8) as usize;
            self.ensure_group(slot)?;
        }
        self.prefixes[usize::from(len)].insert(addr, value);
        self.write_range(addr, len, value, len + 1, |d| d <= len + 1);
        Ok(())
    }

    /// Removes the route for `net`; addresses it covered fall back to the next shorter prefix.
    pub fn remove(&mut self, net: Ipv4Net) {
        let (addr, len) = (u32::from(net.network()), net.prefix_len());
        if self.prefixes[usize::from(len)].remove(&addr).is_none() {
            return;
        }
        let (parent_value, parent_depth) = self.parent(addr, len);
        self.write_range(addr, len, parent_value, parent_depth, |d| d == len + 1);
        if len > 24 {
            self.collapse_if_flat((addr >> 8) as usize);
        }
    }

    /// The longest held prefix strictly shorter than `len` covering `addr`: (entry, length + 1).
    fn parent(&self, addr: u32, len: u8) -> (u32, u8) {
        (0..len)
            .rev()
            .find_map(|l| self.prefixes[usize::from(l)].get(&mask(addr, l)).map(|v| (*v, l + 1)))
            .unwrap_or((0, 0))
    }

    /// Writes `value` (of depth `depth`) to every entry the prefix covers whose current depth
    /// satisfies `replace`.
    fn write_range(
        &mut self,
        addr: u32,
        len: u8,
        value: u32,
        depth: u8,
        replace: impl Fn(u8) -> bool,
    ) {
        if len <= 24 {
            let first = (addr >> 8) as usize;
            let count = 1usize << (24 - len);
            // Named once for all the slots (a short prefix covers thousands).
            let short = self.tbl24.short(value);
            for slot in first..first + count {
                if !replace(self.base_depth[slot]) {
                    continue;
                }
                self.base_depth[slot] = depth;
                let e = self.tbl24.get_short(slot);
                if short_is_group(e) {
                    self.group_base.insert(slot, value);
                    let g = short_group(e) as usize * 256;
                    for i in g..g + 256 {
                        if self.group_depth[i] <= 25 && replace(self.group_depth[i]) {
                            self.group_depth[i] = depth;
                            self.tbl8.set(i, value);
                        }
                    }
                } else if e != short {
                    self.tbl24.set_short(slot, short);
                }
            }
            self.tbl24.summarize(first, first + count - 1);
        } else {
            let e = self.tbl24.get((addr >> 8) as usize);
            debug_assert!(is_group(e));
            let g = group_entry(e) as usize * 256;
            let first = g + (addr & 0xff) as usize;
            for i in first..first + (1usize << (32 - len)) {
                if replace(self.group_depth[i]) {
                    self.group_depth[i] = depth;
                    self.tbl8.set(i, value);
                }
            }
            let slot = (addr >> 8) as usize;
            self.tbl24.summarize(slot, slot);
        }
    }

    /// Gives a first-level slot a group, filled with the slot's answer before it is published.
    fn ensure_group(&mut self, slot: usize) -> Result<(), Dir24Error> {
        if is_group(self.tbl24.get(slot)) {
            return Ok(());
        }
        let g = self.alloc_group()?;
        let base = self.tbl24.get(slot);
        self.group_base.insert(slot, base);
        let start = g as usize * 256;
        for i in start..start + 256 {
            self.group_depth[i] = self.base_depth[slot];
            self.tbl8.set(i, base);
        }
        self.tbl24.set(slot, group_pointer(g));
        self.groups_in_use += 1;
        Ok(())
    }

    /// Returns a group to the first level when no prefix longer than /24 is left in it.
    fn collapse_if_flat(&mut self, slot: usize) {
        let e = self.tbl24.get(slot);
        if !is_group(e) {
            return;
        }
        let g = group_entry(e);
        let start = g as usize * 256;
        if self.group_depth[start..start + 256].iter().any(|d| *d > 25) {
            return;
        }
        self.tbl24.set(slot, self.group_base.remove(&slot).unwrap_or(0));
        self.tbl24.summarize(slot, slot);
        self.retired.push((g, Instant::now()));
        self.groups_in_use -= 1;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use sluice_common::RouteAction;

    use super::*;

    fn route(target: u32) -> Route {
        Route { action: RouteAction::Forward as u32, target }
    }

    fn small() -> Dir24<VecCells> {
        Dir24::new(
            VecCells::new(TBL24_MAP_WORDS as usize),
            VecCells::new((MAX_GROUPS * GROUP_ENTRIES) as usize),
        )
    }

    /// A structure holding `routes`, set one by one.
    fn filled(routes: &[(Ipv4Net, Route)]) -> Dir24<VecCells> {
        let mut d = small();
        for (n, r) in routes {
            d.set(*n, *r).unwrap();
        }
        d
    }

    /// The reference: longest prefix match by brute force over the held prefixes.
    fn reference(table: &BTreeMap<Ipv4Net, Route>, addr: Ipv4Addr) -> Option<Route> {
        table
            .iter()
            .filter(|(n, _)| n.contains(&addr))
            .max_by_key(|(n, _)| n.prefix_len())
            .map(|(_, r)| *r)
    }

    /// A small deterministic generator (xorshift), so failures reproduce.
    pub(crate) struct Rng(pub(crate) u64);
    impl Rng {
        pub(crate) fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        pub(crate) fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// Every /16's summary entry is the one result of all its /24s, or [`SUMMARY_DESCEND`] when
    /// they differ or one holds a group.
    fn assert_summary_consistent(d: &Dir24<VecCells>) {
        for sixteen in 0..(1usize << 16) {
            let first = d.tbl24.get_short(sixteen << 8);
            let uniform = !short_is_group(first)
                && (sixteen << 8..(sixteen + 1) << 8).all(|s| d.tbl24.get_short(s) == first);
            let want = if uniform { first } else { SUMMARY_DESCEND };
            assert_eq!(d.tbl24.get_summary(sixteen), want, "/16 number {sixteen}");
        }
        for eight in 0..256usize {
            let first = d.tbl24.get_summary(eight << 8);
            let uniform = first != SUMMARY_DESCEND
                && (eight << 8..(eight + 1) << 8).all(|s| d.tbl24.get_summary(s) == first);
            let want = if uniform { first } else { SUMMARY_DESCEND };
            assert_eq!(d.tbl24.get_summary8(eight), want, "/8 number {eight}");
        }
    }

    #[test]
    fn the_summary_answers_uniform_sixteens_alone() {
        let mut d = small();
        assert_summary_consistent(&d);
        let default: Ipv4Net = "0.0.0.0/0".parse().unwrap();
        d.set(default, route(7)).unwrap();
        assert_summary_consistent(&d);
        let seven = d.tbl24.get_summary(0);
        assert!(seven != 0 && seven != SUMMARY_DESCEND, "{seven:#x}");
        assert!((0..1usize << 16).all(|s| d.tbl24.get_summary(s) == seven));
        // A /24 and a /25 under two /16s send those two, and only those, down to the first level.
        for (net, target) in [("10.1.2.0/24", 8), ("10.9.0.128/25", 9)] {
            d.set(net.parse().unwrap(), route(target)).unwrap();
        }
        assert_summary_consistent(&d);
        let descending: Vec<usize> =
            (0..1usize << 16).filter(|&s| d.tbl24.get_summary(s) == SUMMARY_DESCEND).collect();
        assert_eq!(descending, [0x0a01, 0x0a09]);
        let descending: Vec<usize> =
            (0..256).filter(|&s| d.tbl24.get_summary8(s) == SUMMARY_DESCEND).collect();
        assert_eq!(descending, [10]);
        assert_eq!(d.lookup("10.9.0.200".parse().unwrap()), Some(route(9)));
        assert_eq!(d.lookup("10.9.0.1".parse().unwrap()), Some(route(7)));
        assert_eq!(d.lookup("10.1.2.3".parse().unwrap()), Some(route(8)));
        // A /16 route over one of them, then the more-specifics gone: uniform again.
        d.set("10.1.0.0/16".parse().unwrap(), route(10)).unwrap();
        d.remove("10.1.2.0/24".parse().unwrap());
        d.remove("10.9.0.128/25".parse().unwrap());
        assert_summary_consistent(&d);
        assert!((0..1usize << 16).all(|s| d.tbl24.get_summary(s) != SUMMARY_DESCEND));
        assert_eq!(d.lookup("10.1.2.3".parse().unwrap()), Some(route(10)));
        d.remove(default);
        assert_summary_consistent(&d);
        assert_eq!(d.lookup("11.0.0.1".parse().unwrap()), None);
        assert_eq!(d.tbl24.get_summary(0x0b00), 0);
    }

    #[test]
    fn matches_a_reference_lpm_through_random_adds_replaces_and_deletes() {
        let mut rng = Rng(0x5eed_1234_abcd_0001);
        let mut d = small();
        let mut table: BTreeMap<Ipv4Net, Route> = BTreeMap::new();
        // Prefixes cluster in a few /16s so that they nest and share groups.
        let bases: Vec<u32> = (0..6).map(|_| (rng.next() as u32) & 0xffff_0000).collect();
        let lens = [8u8, 12, 16, 20, 22, 23, 24, 24, 25, 26, 28, 30, 31, 32, 32];
        // A default route under everything (each write of a /0 touches all 2^24 slots).
        let default: Ipv4Net = "0.0.0.0/0".parse().unwrap();
        d.set(default, route(5000)).unwrap();
        table.insert(default, route(5000));
        for step in 0..3000 {
            let base = bases[rng.below(bases.len() as u64) as usize];
            let len = lens[rng.below(lens.len() as u64) as usize];
            let addr = base | (rng.next() as u32 & 0x0000_ffff);
            let net = Ipv4Net::new(Ipv4Addr::from(addr), len).unwrap().trunc();
            if rng.below(3) == 0 && table.len() > 1 {
                let victim =
                    *table.keys().nth(1 + rng.below(table.len() as u64 - 1) as usize).unwrap();
                d.remove(victim);
                table.remove(&victim);
            } else {
                let r = route(1 + (step % 1000));
                d.set(net, r).unwrap();
                table.insert(net, r);
            }
            if step % 50 == 0 {
                for _ in 0..200 {
                    let base = bases[rng.below(bases.len() as u64) as usize];
                    let a = Ipv4Addr::from(base | (rng.next() as u32 & 0xffff));
                    assert_eq!(d.lookup(a), reference(&table, a), "step {step}, {a}");
                    // And anywhere: mostly /16s the summary answers alone.
                    let a = Ipv4Addr::from(rng.next() as u32);
                    assert_eq!(d.lookup(a), reference(&table, a), "step {step}, {a}");
                }
            }
            if step % 1000 == 999 {
                assert_summary_consistent(&d);
                // What another process reads from the tables is what the writer counts.
                let (scanned, usage) = (d.scan(), d.usage());
                assert_eq!(scanned.groups, usage.groups, "step {step}");
                assert_eq!(scanned.bytes, usage.shared_bytes, "step {step}");
                assert!(scanned.results as usize <= usage.results, "step {step}");
            }
        }
        // Every prefix's own addresses, first and last.
        for net in table.keys() {
            for a in [net.network(), net.broadcast()] {
                assert_eq!(d.lookup(a), reference(&table, a), "{net} at {a}");
            }
        }
        // Remove everything: no route anywhere, and every group is released.
        for net in table.keys().copied().collect::<Vec<_>>() {
            d.remove(net);
        }
        assert_eq!(d.usage().groups, 0);
        assert_eq!(d.usage().prefixes, 0);
        assert_eq!((d.scan().groups, d.scan().results), (0, 0), "nothing left to find");
        for _ in 0..1000 {
            assert_eq!(d.lookup(Ipv4Addr::from(rng.next() as u32)), None);
        }
    }

    #[test]
    fn groups_are_filled_before_publication_and_reused_only_after_grace() {
        let mut d = small();
        d.set("10.0.0.0/8".parse().unwrap(), route(1)).unwrap();
        d.set("10.1.2.128/25".parse().unwrap(), route(2)).unwrap();
        assert_eq!(d.usage().groups, 1);
        // The rest of the /24 still answers with the /8.
        assert_eq!(d.lookup("10.1.2.1".parse().unwrap()), Some(route(1)));
        assert_eq!(d.lookup("10.1.2.200".parse().unwrap()), Some(route(2)));
        let group = group_entry(d.tbl24.get(0x0a_0102));
        d.remove("10.1.2.128/25".parse().unwrap());
        assert_eq!(d.usage().groups, 0, "a group without long prefixes collapses");
        assert!(!is_group(d.tbl24.get(0x0a_0102)));
        assert_eq!(d.lookup("10.1.2.200".parse().unwrap()), Some(route(1)));
        // Immediately needed again: a fresh group, not the one a reader may still be in.
        d.set("10.9.9.0/25".parse().unwrap(), route(3)).unwrap();
        assert_ne!(group_entry(d.tbl24.get(0x0a_0909)), group);
        std::thread::sleep(GROUP_GRACE);
        d.set("10.9.8.0/25".parse().unwrap(), route(4)).unwrap();
        assert_eq!(group_entry(d.tbl24.get(0x0a_0908)), group, "reused after the grace period");
    }

    #[test]
    fn adoption_rewrites_nothing_for_the_same_table_and_keeps_live_groups() {
        let routes: Vec<(Ipv4Net, Route)> = vec![
            ("0.0.0.0/0".parse().unwrap(), route(9)),
            ("192.0.2.0/24".parse().unwrap(), route(1)),
            ("192.0.2.64/26".parse().unwrap(), route(2)),
            ("198.51.100.7/32".parse().unwrap(), route(3)),
        ];
        let first = filled(&routes);
        let g1 = group_entry(first.tbl24.get(0xc0_0002));
        let snapshot24: Vec<u32> =
            (0..TBL24_ENTRIES as usize).map(|i| first.tbl24.get(i)).collect();
        // A new process adopts the same cells and the same routes, plus one change.
        let Dir24 { tbl24, tbl8, .. } = first;
        let mut changed = routes.clone();
        changed[3].1 = route(4);
        let adopted = Dir24::adopt(tbl24.cells, tbl8, changed.clone()).unwrap();
        assert_eq!(group_entry(adopted.tbl24.get(0xc0_0002)), g1, "the live group keeps its id");
        let differing =
            (0..TBL24_ENTRIES as usize).filter(|i| adopted.tbl24.get(*i) != snapshot24[*i]).count();
        assert_eq!(differing, 0, "first level unchanged (the change is inside a group)");
        let table: BTreeMap<_, _> = changed.into_iter().collect();
        for a in ["192.0.2.1", "192.0.2.70", "198.51.100.7", "198.51.100.8", "8.8.8.8"] {
            let a: Ipv4Addr = a.parse().unwrap();
            assert_eq!(adopted.lookup(a), reference(&table, a), "{a}");
        }
        assert_eq!(adopted.usage().groups, 2);
    }

    /// Adopting a first level that answers nothing writes the routes in place: the same words
    /// as a table written route by route, the summaries right even where an earlier table left
    /// stale ones, and every entry that answers counted as rewritten.
    #[test]
    fn adopting_an_empty_table_writes_the_routes_in_place() {
        let mut rng = Rng(0x0ad0_9e11_7ab1_e000);
        let mut table: BTreeMap<Ipv4Net, Route> = BTreeMap::new();
        for _ in 0..3000 {
            let len = [8u8, 12, 16, 20, 22, 24, 24, 25, 28, 32][rng.below(10) as usize];
            let a = Ipv4Addr::from(0x0a00_0000 | (rng.next() as u32 & 0x00ff_ffff));
            table.insert(Ipv4Net::new(a, len).unwrap().trunc(), route(1 + rng.below(20) as u32));
        }
        let routes: Vec<(Ipv4Net, Route)> = table.iter().map(|(n, r)| (*n, *r)).collect();
        let one_by_one = filled(&routes);
        let cells = small();
        // A stale summary (an earlier table's) over a /16 no route of this one reaches.
        cells.tbl24.cells.set((SUMMARY_OFFSET + 0x0b00 / 2) as usize, 0x0005_0005);
        let Dir24 { tbl24, tbl8, .. } = cells;
        let adopted = Dir24::adopt(tbl24.cells, tbl8, routes.clone()).unwrap();
        for i in 0..TBL24_MAP_WORDS as usize {
            assert_eq!(adopted.tbl24.cells.get(i), one_by_one.tbl24.cells.get(i), "word {i}");
        }
        for i in 0..(MAX_GROUPS * GROUP_ENTRIES) as usize {
            assert_eq!(adopted.tbl8.get(i), one_by_one.tbl8.get(i), "group entry {i}");
        }
        assert_summary_consistent(&adopted);
        for _ in 0..2000 {
            let a = Ipv4Addr::from(0x0a00_0000 | (rng.next() as u32 & 0x00ff_ffff));
            assert_eq!(adopted.lookup(a), reference(&table, a), "{a}");
        }
        assert!(adopted.check(routes.iter().copied()).is_clean());
        let answering =
            (0..TBL24_ENTRIES as usize).filter(|&s| adopted.tbl24.get_short(s) != 0).count()
                + (0..(MAX_GROUPS * GROUP_ENTRIES) as usize)
                    .filter(|&i| adopted.tbl8.get(i) != 0)
                    .count();
        assert_eq!(adopted.adoption().rewritten, answering as u64);
        assert_eq!(adopted.usage(), one_by_one.usage());
    }

    #[test]
    fn adoption_gives_two_slash_24s_sharing_a_group_one_each() {
        let routes: Vec<(Ipv4Net, Route)> = vec![
            ("0.0.0.0/0".parse().unwrap(), route(9)),
            ("10.1.1.128/25".parse().unwrap(), route(1)),
            ("10.1.2.128/25".parse().unwrap(), route(2)),
        ];
        let first = filled(&routes);
        assert!(first.check(routes.clone()).is_clean(), "{:?}", first.check(routes.clone()));
        // A second writer pointed 10.1.2.0/24 to the group of 10.1.1.0/24.
        let shared = first.tbl24.get_short(0x0a_0101);
        first.tbl24.set_short(0x0a_0102, shared);
        let found = first.check(routes.clone());
        assert_eq!(found.problems, 1, "{found:?}");
        assert!(found.problem_examples[0].contains("pointed to by 2"), "{found:?}");
        assert_eq!(found.differences, 128, "10.1.2.128/25 answers with the other /25: {found:?}");
        assert_eq!(found.examples[0].at, "10.1.2.128/32");
        let Dir24 { tbl24, tbl8, .. } = first;
        let adopted = Dir24::adopt(tbl24.cells, tbl8, routes.clone()).unwrap();
        assert_eq!(adopted.adoption().untrusted, 2, "neither /24 keeps the shared group");
        let table: BTreeMap<_, _> = routes.iter().copied().collect();
        for a in ["10.1.1.1", "10.1.1.200", "10.1.2.1", "10.1.2.200", "10.1.3.1"] {
            let a: Ipv4Addr = a.parse().unwrap();
            assert_eq!(adopted.lookup(a), reference(&table, a), "{a}");
        }
        assert!(adopted.check(routes.clone()).is_clean(), "{:?}", adopted.check(routes));
        assert_ne!(adopted.tbl24.get_short(0x0a_0101), adopted.tbl24.get_short(0x0a_0102));
    }

    #[test]
    fn a_group_pointer_past_the_table_is_reported_and_replaced() {
        let routes: Vec<(Ipv4Net, Route)> = vec![("192.0.2.0/25".parse().unwrap(), route(3))];
        let first = filled(&routes);
        first.tbl24.set_short(0xc0_0002, short_group_pointer(MAX_GROUPS + 5));
        let found = first.check(routes.clone());
        assert_eq!(found.problems, 1, "{found:?}");
        assert_eq!(found.differences, 256, "every address of the /24: {found:?}");
        assert!(found.examples[0].tables.starts_with("invalid"), "{found:?}");
        let Dir24 { tbl24, tbl8, .. } = first;
        let adopted = Dir24::adopt(tbl24.cells, tbl8, routes.clone()).unwrap();
        assert_eq!(adopted.adoption().untrusted, 1);
        assert_eq!(adopted.lookup("192.0.2.1".parse().unwrap()), Some(route(3)));
        assert_eq!(adopted.lookup("192.0.2.200".parse().unwrap()), None);
        assert!(adopted.check(routes).is_clean());
    }

    #[test]
    fn a_changed_result_is_a_difference() {
        let routes: Vec<(Ipv4Net, Route)> = vec![
            ("10.0.0.0/8".parse().unwrap(), route(1)),
            ("10.9.0.0/16".parse().unwrap(), route(2)),
        ];
        let d = filled(&routes);
        // One /24 of the /16 now names the /8's result.
        let other = d.tbl24.get_short(0x0a_0000);
        d.tbl24.set_short(0x0a_0907, other);
        let found = d.check(routes);
        assert_eq!((found.differences, found.problems), (1, 0), "{found:?}");
        assert_eq!(
            found.examples[0],
            crate::check::Mismatch {
                at: "10.9.7.0/24".into(),
                tables: "forward 1".into(),
                routes: "forward 2".into()
            }
        );
        assert_eq!(found.compared, u64::from(TBL24_ENTRIES));
    }

    #[test]
    fn adopting_the_same_table_writes_no_word() {
        let routes: Vec<(Ipv4Net, Route)> = vec![
            ("0.0.0.0/0".parse().unwrap(), route(9)),
            ("10.0.0.0/8".parse().unwrap(), route(1)),
            ("10.1.2.0/24".parse().unwrap(), route(2)),
            ("10.1.2.64/26".parse().unwrap(), route(3)),
        ];
        let first = filled(&routes);
        let words = |d: &Dir24<VecCells>| -> Vec<u32> {
            (0..TBL24_MAP_WORDS as usize).map(|i| d.tbl24.cells.get(i)).collect()
        };
        let before = words(&first);
        let results = first.usage().results;
        let Dir24 { tbl24, tbl8, .. } = first;
        let adopted = Dir24::adopt(tbl24.cells, tbl8, routes.clone()).unwrap();
        let after = words(&adopted);
        let changed = (0..before.len()).filter(|&i| before[i] != after[i]).count();
        assert_eq!(changed, 0, "no first-level word or result rewritten");
        assert_eq!(
            adopted.adoption(),
            Adoption::default(),
            "nothing rewritten, nothing distrusted"
        );
        assert_eq!(adopted.usage().results, results, "the live table's results are taken over");
    }

    #[test]
    fn first_level_entries_name_shared_results() {
        let mut d = small();
        let net = |i: u32| Ipv4Net::new(Ipv4Addr::from(0x0a00_0000 + (i << 8)), 24).unwrap();
        for i in 0..1000 {
            d.set(net(i), route(1 + i % 3)).unwrap();
        }
        assert_eq!(d.usage().results, 3, "three distinct routes, three results");
        // A prefix longer than /24 lives in a group and names no result.
        d.set("10.0.0.128/25".parse().unwrap(), route(50)).unwrap();
        assert_eq!(d.usage().results, 3, "a /25's route is not a first-level result");
        assert_eq!(d.lookup("10.0.0.129".parse().unwrap()), Some(route(50)));
        for i in [0, 1, 2, 500, 999] {
            assert_eq!(d.lookup(net(i).network()), Some(route(1 + i % 3)), "{}", net(i));
        }
        // Neighbouring /24s share a word: changing one leaves the other.
        d.set(net(4), route(7)).unwrap();
        assert_eq!(d.lookup(net(4).network()), Some(route(7)));
        assert_eq!(d.lookup(net(5).network()), Some(route(3)));
        d.remove(net(5));
        assert_eq!(d.lookup(net(5).network()), None);
        assert_eq!(d.lookup(net(4).network()), Some(route(7)));
    }

    #[test]
    fn running_out_of_results_refuses_the_route_and_keeps_the_others() {
        let mut d = small();
        let net = |i: u32| Ipv4Net::new(Ipv4Addr::from(0x0b00_0000 + (i << 8)), 24).unwrap();
        for i in 1..RESULTS {
            d.set(net(i), route(i)).unwrap();
        }
        assert_eq!(d.set(net(0), route(RESULTS)), Err(Dir24Error::ResultsFull));
        assert_eq!(d.lookup(net(0).network()), None);
        assert_eq!(d.get(net(0)), None, "nothing half-written");
        assert_eq!(d.lookup(net(1).network()), Some(route(1)));
        // A route whose result exists still fits.
        d.set(net(0), route(5)).unwrap();
        assert_eq!(d.lookup(net(0).network()), Some(route(5)));
    }

    #[test]
    fn unencodable_targets_are_refused() {
        let mut d = small();
        let r = Route { action: RouteAction::Connected as u32, target: u32::MAX };
        assert_eq!(d.set("10.0.0.0/8".parse().unwrap(), r), Err(Dir24Error::Unencodable(u32::MAX)));
        assert_eq!(d.lookup("10.0.0.1".parse().unwrap()), None);
    }
}
