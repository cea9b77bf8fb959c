//! Typed handles to the dataplane's maps and their writers: the FIB's operations onto next hops,
//! ECMP groups, interfaces, the lookup tables and the route record.

use std::{collections::BTreeMap, os::fd::AsFd as _};

use aya::{
    Ebpf,
    maps::{Array, HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray, xdp::DevMapHash},
};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use sluice_common::{
    Counter, EcmpGroup, Iface, IfaceCacheEntry, IfaceKey, MAX_SLOTS, NextHop, REASON_SLOTS, Reason,
    Route, RouteAction, iface_cache_index, iface_cache_tag, names,
};
use sluice_core::{
    dir24::{self as lookup, Dir24},
    fib::{FibState, Op},
    trie6::Trie6,
};

use crate::{
    error::{DataplaneError, Result},
    pin::{
        PinDir, READ_ONLY, ignore_missing, map_lookup_tables, net_v4, net_v6, open_pinned,
        sum_counters, take_map, typed,
    },
    record::{RECORD_IN_BACKGROUND, RecordWriter, write_record},
    shared_mem::MappedArray,
};

/// Typed handles to the maps the control plane reads and writes: taken from a loaded object by
/// the daemon, or opened from their pins by `sluice stats`, `sluice routes` and the tests.
#[expect(missing_debug_implementations, reason = "aya's map handles are not Debug")]
pub struct Maps {
    pub(crate) routes_v4: LpmTrie<MapData, [u8; 4], Route>,
    pub(crate) routes_v6: LpmTrie<MapData, [u8; 16], Route>,
    pub(crate) nexthops: Array<MapData, NextHop>,
    pub(crate) groups: Array<MapData, EcmpGroup>,
    pub(crate) ifaces: HashMap<MapData, IfaceKey, Iface>,
    pub(crate) iface_cache: Array<MapData, IfaceCacheEntry>,
    pub(crate) devmap: DevMapHash<MapData>,
    pub(crate) counters: PerCpuArray<MapData, Counter>,
    /// The IPv4 lookup tables, mapped for writing; `None` for read-only access.
    pub(crate) dir24: Option<Dir24<MappedArray>>,
    /// The IPv6 lookup trie, mapped for writing; `None` for read-only access.
    pub(crate) trie6: Option<Trie6<MappedArray>>,
    /// The tables mapped but not adopted yet: adoption waits for the routes they must hold.
    pub(crate) lookup_cells: Option<(MappedArray, MappedArray, MappedArray)>,
    /// Record writes deferred to the end of a batch, after the forwarding tables.
    pub(crate) pending_record: Vec<(IpNet, Option<Route>)>,
    /// Writes large record batches in the background, once one came.
    pub(crate) record_writer: Option<RecordWriter>,
    /// Route writes are not put in `pending_record`: the batch itself goes to the record's
    /// writer after it ([`Maps::send_record_ops`]).
    pub(crate) record_from_ops: bool,
}

impl Maps {
    pub(crate) fn build(
        mut get: impl FnMut(&'static str) -> Result<Map>,
        writable: bool,
    ) -> Result<Self> {
        let mut maps = Self {
            routes_v4: typed(&mut get, names::ROUTES_V4)?,
            routes_v6: typed(&mut get, names::ROUTES_V6)?,
            nexthops: typed(&mut get, names::NEXTHOPS)?,
            groups: typed(&mut get, names::ECMP_GROUPS)?,
            ifaces: typed(&mut get, names::IFACES)?,
            iface_cache: typed(&mut get, names::IFACE_CACHE)?,
            devmap: typed(&mut get, names::DEVMAP)?,
            counters: typed(&mut get, names::COUNTERS)?,
            dir24: None,
            trie6: None,
            lookup_cells: None,
            pending_record: Vec::new(),
            record_writer: None,
            record_from_ops: false,
        };
        if writable {
            maps.lookup_cells = Some(map_lookup_tables(&mut get)?);
            // Interfaces adopted from a version without the cache are cached now.
            for (key, iface) in maps.ifaces()? {
                maps.cache_iface(key, Some(&iface))
                    .map_err(|e| DataplaneError::Map(names::IFACE_CACHE, e))?;
            }
        }
        Ok(maps)
    }

    /// Takes over the lookup tables for the routes they must hold, writing only the entries that
    /// differ from what they hold now (nothing, after a clean restart with the same routes).
    /// Done once; later changes go through [`Maps::write`].
    pub fn adopt_lookup(
        &mut self,
        v4: &BTreeMap<Ipv4Net, Route>,
        v6: &BTreeMap<Ipv6Net, Route>,
    ) -> Result<()> {
        if let Some((tbl24, tbl8, trie)) = self.lookup_cells.take() {
            let routes = v4.iter().map(|(n, r)| (*n, *r));
            self.dir24 = Some(Dir24::adopt(tbl24, tbl8, routes).map_err(DataplaneError::Lookup)?);
            let routes = v6.iter().map(|(n, r)| (*n, *r));
            self.trie6 = Some(Trie6::adopt(trie, routes).map_err(DataplaneError::Lookup)?);
        }
        Ok(())
    }

    /// Whether the lookup tables were adopted.
    pub fn lookup_adopted(&self) -> bool {
        self.dir24.is_some()
    }

    /// Adopts the lookup tables for the record of prefixes when nobody said what they must hold
    /// (tools and tests that write the maps directly).
    pub(crate) fn ensure_adopted(&mut self) -> Result<(), Box<dyn std::error::Error>> {
        if self.lookup_cells.is_some() {
            let state = self.ifaces_and_routes()?;
            self.adopt_lookup(&state.routes_v4, &state.routes_v6)?;
        }
        Ok(())
    }

    /// Mirrors an `IFACES` change into `IFACE_CACHE` when the key's entry there is free or
    /// its own (otherwise the key stays looked up in `IFACES`): zeroed first, then written
    /// whole, so that readers never trust a half-written entry.
    pub(crate) fn cache_iface(
        &mut self,
        key: IfaceKey,
        iface: Option<&Iface>,
    ) -> Result<(), MapError> {
        let index = iface_cache_index(key.ifindex, key.vlan_id);
        let tag = iface_cache_tag(key.ifindex, key.vlan_id);
        let current = self.iface_cache.get(&index, 0)?;
        let entry = iface.map(|i| IfaceCacheEntry {
            head: tag,
            slot: i.slot,
            mac: i.mac,
            _pad: [0; 6],
            tail: tag,
        });
        if current.head != 0 && current.head != tag || entry.as_ref() == Some(&current) {
            return Ok(());
        }
        if current.head != 0 {
            self.iface_cache.set(index, IfaceCacheEntry::default(), 0)?;
        }
        if let Some(entry) = entry {
            self.iface_cache.set(index, entry, 0)?;
        }
        Ok(())
    }

    /// Writes the deferred record changes, in order. A large batch (a table being loaded) goes
    /// to a writer thread, and from then on every batch, so that their order holds: the kernel
    /// inserts into an LPM trie at about 2 us an entry, and the daemon must not wait for that
    /// before it takes the next changes into the lookup tables. The record is then behind the
    /// lookup tables by up to one batch; readers of the record wait for it
    /// ([`Maps::ifaces_and_routes`]).
    pub(crate) fn flush_record(&mut self) -> Result<(), Box<dyn std::error::Error>> {
        let pending = std::mem::take(&mut self.pending_record);
        if pending.is_empty() {
            return Ok(());
        }
        if self.record_writer.is_none() && pending.len() < RECORD_IN_BACKGROUND {
            let v4 = aya::maps::IterableMap::map(&self.routes_v4).fd().as_fd();
            let v6 = aya::maps::IterableMap::map(&self.routes_v6).fd().as_fd();
            return Ok(write_record(v4, v6, pending)?);
        }
        self.record_writer()?.send(pending);
        Ok(())
    }

    /// The record's writer thread, started at its first use.
    fn record_writer(&mut self) -> Result<&RecordWriter, Box<dyn std::error::Error>> {
        if self.record_writer.is_none() {
            let v4 = aya::maps::IterableMap::map(&self.routes_v4).fd().as_fd();
            let v6 = aya::maps::IterableMap::map(&self.routes_v6).fd().as_fd();
            self.record_writer = Some(
                RecordWriter::start(v4.try_clone_to_owned()?, v6.try_clone_to_owned()?)
                    .map_err(|e| DataplaneError::Record("record writer", e))?,
            );
        }
        Ok(self.record_writer.as_ref().expect("started above"))
    }

    /// Hands a batch of map writes (already written to the forwarding tables) to the record's
    /// writer thread, which writes its route writes to the record, after every batch sent
    /// before it: the batch is not copied (a full table's route list would be another 32 MB).
    pub(crate) fn send_record_ops(
        &mut self,
        ops: Vec<Op>,
    ) -> Result<(), Box<dyn std::error::Error>> {
        self.flush_record()?;
        self.record_writer()?.send_ops(ops);
        Ok(())
    }

    /// Opens the maps pinned under `pin`, read-only.
    pub fn open(pin: &PinDir) -> Result<Self> {
        Self::build(|name| open_pinned(pin, name), false)
    }

    /// Takes the maps of a loaded object for writing (the daemon, and tests that load the
    /// object themselves).
    pub fn take(ebpf: &mut Ebpf) -> Result<Self> {
        Self::build(|name| take_map(ebpf, name), true)
    }

    /// Memory used by the IPv4 lookup tables, when mapped for writing.
    pub fn lookup_usage(&self) -> Option<lookup::Usage> {
        self.dir24.as_ref().map(Dir24::usage)
    }

    /// Writes one change.
    pub fn write(&mut self, op: &Op) -> Result<(), Box<dyn std::error::Error>> {
        self.apply(op)?;
        self.flush_record()
    }

    /// The interfaces and routes, without next hops and groups.
    pub(crate) fn ifaces_and_routes(&self) -> Result<FibState> {
        if let Some(writer) = &self.record_writer {
            writer.wait();
        }
        let mut s = FibState { ifaces: self.ifaces()?, ..FibState::default() };
        for item in &self.routes_v4 {
            let (k, v) = item.map_err(|e| DataplaneError::Map(names::ROUTES_V4, e))?;
            s.routes_v4.insert(net_v4(&k), v);
        }
        for item in &self.routes_v6 {
            let (k, v) = item.map_err(|e| DataplaneError::Map(names::ROUTES_V6, e))?;
            s.routes_v6.insert(net_v6(&k), v);
        }
        Ok(s)
    }

    /// Everything the maps hold.
    pub fn state(&self) -> Result<FibState> {
        let mut s = self.ifaces_and_routes()?;
        for (id, nh) in self.nexthops.iter().enumerate() {
            let nh = nh.map_err(|e| DataplaneError::Map(names::NEXTHOPS, e))?;
            if nh != NextHop::default() {
                s.nexthops.insert(id as u32, nh);
            }
        }
        for (id, g) in self.groups.iter().enumerate() {
            let g = g.map_err(|e| DataplaneError::Map(names::ECMP_GROUPS, e))?;
            if g != EcmpGroup::default() {
                s.groups.insert(id as u32, g);
            }
        }
        for k in self.devmap.keys() {
            s.devmap.insert(k.map_err(|e| DataplaneError::Map(names::DEVMAP, e))?);
        }
        Ok(s)
    }

    pub(crate) fn apply(&mut self, op: &Op) -> Result<(), Box<dyn std::error::Error>> {
        match *op {
            Op::ResetCounters(slot) => {
                let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
                for reason in Reason::ALL {
                    let zero = vec![Counter::default(); cpus].try_into()?;
                    self.counters.set(reason.index(slot), zero, 0)?;
                }
            }
            Op::AddDevice(d) => self.devmap.insert(d, d, None, 0)?,
            Op::DelDevice(d) => ignore_missing(self.devmap.remove(d))?,
            Op::SetIface(k, ref v) => {
                self.ifaces.insert(k, **v, 0)?;
                self.cache_iface(k, Some(&**v))?;
            }
            Op::DelIface(k) => {
                self.cache_iface(k, None)?;
                ignore_missing(self.ifaces.remove(&k))?;
            }
            Op::SetNextHop(id, ref nh) => self.nexthops.set(id, **nh, 0)?,
            Op::ClearNextHop(id) => self.nexthops.set(id, NextHop::default(), 0)?,
            Op::SetGroup(id, ref g) => self.groups.set(id, **g, 0)?,
            Op::ClearGroup(id) => self.groups.set(id, EcmpGroup::default(), 0)?,
            // The forwarding tables now; the record (one system call each) after the batch.
            Op::SetRouteV4(net, r) => {
                self.ensure_adopted()?;
                self.dir24.as_mut().ok_or(READ_ONLY)?.set(net, r)?;
            }
            Op::DelRouteV4(net) => {
                self.ensure_adopted()?;
                self.dir24.as_mut().ok_or(READ_ONLY)?.remove(net);
            }
            Op::SetRouteV6(net, r) => {
                self.ensure_adopted()?;
                self.trie6.as_mut().ok_or(READ_ONLY)?.set(net, r)?;
            }
            Op::DelRouteV6(net) => {
                self.ensure_adopted()?;
                self.trie6.as_mut().ok_or(READ_ONLY)?.remove(net);
            }
        }
        if !self.record_from_ops
            && let Some(entry) = op.route_write()
        {
            self.pending_record.push(entry);
        }
        Ok(())
    }

    /// A next hop.
    pub fn nexthop(&self, id: u32) -> Result<NextHop> {
        self.nexthops.get(&id, 0).map_err(|e| DataplaneError::Map(names::NEXTHOPS, e))
    }

    /// An ECMP group.
    pub fn group(&self, id: u32) -> Result<EcmpGroup> {
        self.groups.get(&id, 0).map_err(|e| DataplaneError::Map(names::ECMP_GROUPS, e))
    }

    /// The interfaces the dataplane serves.
    pub fn ifaces(&self) -> Result<BTreeMap<IfaceKey, Iface>> {
        let mut out = BTreeMap::new();
        for item in &self.ifaces {
            let (k, v) = item.map_err(|e| DataplaneError::Map(names::IFACES, e))?;
            out.insert(k, v);
        }
        Ok(out)
    }

    /// The routes with only the next hops and groups they use (reading the whole arrays would
    /// take one system call per slot).
    pub fn routes(&self) -> Result<FibState> {
        let mut s = self.ifaces_and_routes()?;
        let mut nexthop_ids = std::collections::BTreeSet::new();
        for r in s.routes_v4.values().chain(s.routes_v6.values()) {
            match RouteAction::from_u32(r.action) {
                Some(RouteAction::Forward) => {
                    nexthop_ids.insert(r.target);
                }
                Some(RouteAction::Ecmp) if !s.groups.contains_key(&r.target) => {
                    let g = self
                        .groups
                        .get(&r.target, 0)
                        .map_err(|e| DataplaneError::Map(names::ECMP_GROUPS, e))?;
                    nexthop_ids.extend(g.members.iter().take(g.count as usize));
                    s.groups.insert(r.target, g);
                }
                _ => {}
            }
        }
        for id in nexthop_ids {
            let nh =
                self.nexthops.get(&id, 0).map_err(|e| DataplaneError::Map(names::NEXTHOPS, e))?;
            s.nexthops.insert(id, nh);
        }
        Ok(s)
    }

    /// Counters of one slot, summed over CPUs, by reason.
    pub fn counters(&self, slot: u32) -> Result<BTreeMap<Reason, Counter>> {
        let mut out = BTreeMap::new();
        if slot >= MAX_SLOTS {
            return Ok(out);
        }
        for reason in Reason::ALL {
            let values = self
                .counters
                .get(&(slot * REASON_SLOTS + reason as u32), 0)
                .map_err(|e| DataplaneError::Map(names::COUNTERS, e))?;
            out.insert(reason, sum_counters(values.iter()));
        }
        Ok(out)
    }
}
