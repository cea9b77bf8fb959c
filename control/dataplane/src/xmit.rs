//! Egress accounting: frames the devmap's bulk queues sent and dropped, and redirects the kernel
//! refused, per egress device.
//!
//! XDP has no qdisc, so an egress device slower than the ingress drops frames at transmit, and
//! nothing in the XDP program sees it. The kernel reports every bulk-queue flush through the
//! tracepoint `xdp:xdp_devmap_xmit` and every failed redirect through `xdp:xdp_redirect_err`; the
//! raw tracepoint programs `sluice_devmap_xmit` and `sluice_redirect_err` (in the same object as
//! `sluice_xdp`) count them per egress ifindex and CPU in `XMIT_STATS` (see
//! `sluice_common::xmit`).
//!
//! Like the forwarding state, the accounting outlives the daemon: its maps are pinned under
//! `PIN_DIR/maps/` and its links under `PIN_DIR/tracepoints/TRACEPOINT` (not under `links/`,
//! where every entry is taken for an interface's XDP link, which `detach_others` would remove). A
//! starting daemon adopts a pinned link that runs the same program on the same maps, and
//! otherwise replaces it: the new link is pinned beside the old one and renamed over it, so
//! counting never stops (an event in the instant both are attached may be counted twice).
//!
//! The programs need field offsets in kernel structures (`net_device.ifindex`,
//! `net_device.nd_net.net`, `net.ns.inum`, `bpf_dtab_netdev.dev`), read here from the kernel's
//! BTF, the daemon's network namespace and the id of its `DEVMAP`, so that they count only the
//! devices the daemon serves: ifindexes are only unique within a namespace, and the tracepoints
//! fire for all of them. Any failure to set this up is logged and leaves forwarding alone;
//! `sluice stats` then says egress is not counted.

use std::{
    collections::BTreeMap,
    fs, io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData, MapInfo, MapType, PerCpuHashMap},
    programs::{
        RawTracePoint,
        links::{FdLink, PinnedLink},
        loaded_programs,
    },
};
use sluice_common::xmit::{MAX_XMIT_DEVICES, XmitConfig, XmitStats, names};
use tracing::{info, warn};

use crate::{
    error::{DataplaneError, error_chain},
    pin::PinDir,
};

/// Where the kernel describes its own types.
const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";
/// The daemon's network namespace.
const OWN_NETNS: &str = "/proc/self/ns/net";

/// Where the link of `tracepoint` is pinned.
pub fn link_path(pin: &PinDir, tracepoint: &str) -> PathBuf {
    tracepoints_dir(pin).join(tracepoint)
}

fn tracepoints_dir(pin: &PinDir) -> PathBuf {
    pin.root().join("tracepoints")
}

/// Type, key size, value size and capacity of the egress maps, as this build defines them.
fn expected_layout(name: &str) -> Option<(MapType, u32, u32, u32)> {
    let size = |n: usize| n as u32;
    Some(match name {
        names::XMIT_STATS => {
            (MapType::PerCpuHash, 4, size(size_of::<XmitStats>()), MAX_XMIT_DEVICES)
        }
        names::XMIT_CONFIG => (MapType::Array, 4, size(size_of::<XmitConfig>()), 1),
        names::EGRESS_HOLD => (
            MapType::Hash,
            4,
            size(size_of::<sluice_common::xmit::EgressHold>()),
            sluice_common::xmit::MAX_EGRESS_HOLDS,
        ),
        names::EGRESS_HOLDS => (MapType::Array, 4, 4, 1),
        _ => return None,
    })
}

/// Tells the loader to reuse (or create and pin) the egress maps under `PIN_DIR/maps/`. A pinned
/// egress map whose layout differs from this build's is unpinned first, with a warning: it holds
/// only statistics, so starting them afresh is better than refusing to start the daemon.
pub fn configure_loader(loader: &mut EbpfLoader<'_>, pin: &PinDir) {
    for name in names::ALL_MAPS {
        let path = pin.map(name);
        if path.exists() {
            let found = MapInfo::from_pin(&path).ok().and_then(|i| {
                Some((i.map_type().ok()?, i.key_size(), i.value_size(), i.max_entries()))
            });
            let expected = expected_layout(name);
            if found != expected {
                warn!(
                    map = name,
                    ?found,
                    ?expected,
                    "pinned egress map has another layout: starting its statistics afresh"
                );
                if let Err(e) = fs::remove_file(&path) {
                    warn!(map = name, error = %e, "unpinning the stale egress map");
                }
            }
        }
        loader.map_pin_path(name, path);
    }
}

/// Loads the egress accounting programs of a loaded object and attaches them to their
/// tracepoints (or adopts the pinned links that already run them). Failures are logged, never
/// returned: egress accounting is not worth a stopped dataplane.
pub fn attach(ebpf: &mut Ebpf, pin: &PinDir) {
    // Written before anything is attached, so the first event is already counted; an adopted
    // program reads the same pinned map, so this also refreshes its view.
    if let Err(e) = configure(ebpf, pin) {
        warn!(
            error = %error_chain(&e),
            "egress drops will not be counted (forwarding is not affected)"
        );
        return;
    }
    for (program, tracepoint) in names::PROGRAMS {
        match attach_one(ebpf, pin, program, tracepoint) {
            Ok(how) => info!(tracepoint, how, "egress accounting on"),
            Err(e) => warn!(
                tracepoint,
                error = %error_chain(&e),
                "egress drops will not be counted (forwarding is not affected)"
            ),
        }
    }
}

fn configure(ebpf: &mut Ebpf, pin: &PinDir) -> Result<(), DataplaneError> {
    let devmap = pin.map(sluice_common::names::DEVMAP);
    let devmap_id = MapInfo::from_pin(&devmap)
        .map_err(|e| DataplaneError::Map(sluice_common::names::DEVMAP, e))?
        .id();
    let config = kernel_config(devmap_id)?;
    let map =
        ebpf.map_mut(names::XMIT_CONFIG).ok_or(DataplaneError::Missing(names::XMIT_CONFIG))?;
    let mut config_map: Array<&mut MapData, XmitConfig> =
        Array::try_from(map).map_err(|e| DataplaneError::Map(names::XMIT_CONFIG, e))?;
    config_map.set(0, config, 0).map_err(|e| DataplaneError::Map(names::XMIT_CONFIG, e))
}

fn attach_one(
    ebpf: &mut Ebpf,
    pin: &PinDir,
    name: &'static str,
    tracepoint: &'static str,
) -> Result<&'static str, DataplaneError> {
    let program: &mut RawTracePoint = ebpf
        .program_mut(name)
        .ok_or(DataplaneError::Missing(name))?
        .try_into()
        .map_err(|e| DataplaneError::Program("program type".to_owned(), e))?;
    program.load().map_err(|e| DataplaneError::Program("verifying the program".to_owned(), e))?;

    let path = link_path(pin, tracepoint);
    if path.exists() {
        match same_program(program, &path) {
            Ok(true) => return Ok("adopted the pinned link"),
            Ok(false) => {}
            Err(e) => warn!(
                tracepoint,
                error = %error_chain(&e),
                "pinned egress link unusable: replacing it"
            ),
        }
    }
    let dir = tracepoints_dir(pin);
    fs::create_dir_all(&dir).map_err(|source| DataplaneError::Io {
        what: "creating",
        path: dir.clone(),
        source,
    })?;
    let id = program
        .attach(tracepoint)
        .map_err(|e| DataplaneError::Program("attaching".to_owned(), e))?;
    let link = FdLink::from(
        program
            .take_link(id)
            .map_err(|e| DataplaneError::Program("taking the link".to_owned(), e))?,
    );
    // Pinned under a temporary name and renamed over the old pin: the old link goes only once
    // the new one counts. (No dot in the name: bpffs reserves names with dots.)
    let fresh = dir.join(format!("{tracepoint}-new"));
    let _ = fs::remove_file(&fresh);
    link.pin(&fresh).map_err(|e| DataplaneError::Io {
        what: "pinning the link at",
        path: fresh.clone(),
        source: io::Error::other(e),
    })?;
    let replaced = path.exists();
    fs::rename(&fresh, &path).map_err(|source| {
        let _ = fs::remove_file(&fresh);
        DataplaneError::Io { what: "renaming the link to", path: path.clone(), source }
    })?;
    Ok(if replaced { "replaced the pinned link" } else { "attached" })
}

/// Whether the link pinned at `path` runs the same instructions as `program` on the same maps.
fn same_program(program: &RawTracePoint, path: &Path) -> Result<bool, DataplaneError> {
    let link = FdLink::from(
        PinnedLink::from_pin(path)
            .map_err(|e| DataplaneError::Link("opening the pinned link", e))?,
    );
    let pinned_id =
        link.info().map_err(|e| DataplaneError::Link("reading the pinned link", e))?.program_id();
    let ours =
        program.info().map_err(|e| DataplaneError::Program("reading the program".to_owned(), e))?;
    let Some(pinned) = loaded_programs().filter_map(Result::ok).find(|p| p.id() == pinned_id)
    else {
        return Ok(false);
    };
    let maps = |p: &aya::programs::ProgramInfo| {
        p.map_ids().ok().flatten().map(|mut v| {
            v.sort_unstable();
            v
        })
    };
    Ok(pinned.tag() == ours.tag() && maps(&pinned).is_some() && maps(&pinned) == maps(&ours))
}

/// Removes the tracepoint directory with the egress link in it (which detaches the program), then
/// the egress maps, from under `pin`. Missing pins are not an error.
pub fn detach(pin: &PinDir) -> Result<(), DataplaneError> {
    let dir = tracepoints_dir(pin);
    match fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => return Err(DataplaneError::Io { what: "removing", path: dir, source }),
    }
    for path in names::ALL_MAPS.iter().map(|n| pin.map(n)) {
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(DataplaneError::Io { what: "removing", path, source }),
        }
    }
    Ok(())
}

/// What the egress accounting holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Egress {
    /// Whether both tracepoints are attached (their links are pinned). When not, `devices` holds
    /// what was counted before, if anything, and some egress drops go uncounted.
    pub counting: bool,
    /// Per egress ifindex (the device XDP transmits on), summed over CPUs.
    pub devices: BTreeMap<u32, XmitStats>,
}

/// Reads the pinned egress statistics. No pinned map (a dataplane from a build without egress
/// accounting) reads as nothing counted.
pub fn read(pin: &PinDir) -> Result<Egress, DataplaneError> {
    let counting = names::PROGRAMS.iter().all(|(_, tp)| link_path(pin, tp).exists());
    let path = pin.map(names::XMIT_STATS);
    if !path.exists() {
        return Ok(Egress { counting: false, devices: BTreeMap::new() });
    }
    let map: PerCpuHashMap<MapData, u32, XmitStats> =
        crate::pin::open_per_cpu_hash(pin, names::XMIT_STATS)?;
    let mut devices = BTreeMap::new();
    for item in &map {
        let (ifindex, per_cpu) = item.map_err(|e| DataplaneError::Map(names::XMIT_STATS, e))?;
        devices.insert(ifindex, sum_cpus(per_cpu.iter()));
    }
    Ok(Egress { counting, devices })
}

/// Sums the per-CPU values of one device.
pub fn sum_cpus<'a>(values: impl IntoIterator<Item = &'a XmitStats>) -> XmitStats {
    values.into_iter().fold(XmitStats::default(), |mut total, v| {
        total.add(v);
        total
    })
}

/// Average frames handed to the driver per flush (sent and dropped), 0 without flushes.
pub fn frames_per_flush(s: &XmitStats) -> f64 {
    if s.flushes == 0 {
        return 0.0;
    }
    s.sent.saturating_add(s.dropped) as f64 / s.flushes as f64
}

/// The configuration the programs need on this kernel, for the daemon's namespace and device map.
fn kernel_config(devmap_id: u32) -> Result<XmitConfig, DataplaneError> {
    let netns = fs::metadata(OWN_NETNS).map_err(|source| DataplaneError::Io {
        what: "stat",
        path: OWN_NETNS.into(),
        source,
    })?;
    // The kernel keeps it as an `unsigned int`.
    let netns_inum = u32::try_from(netns.ino()).map_err(|e| DataplaneError::Io {
        what: "a 32-bit inode number for",
        path: OWN_NETNS.into(),
        source: io::Error::other(e),
    })?;
    let data = fs::read(VMLINUX_BTF).map_err(|source| DataplaneError::Io {
        what: "reading",
        path: VMLINUX_BTF.into(),
        source,
    })?;
    let btf = Btf::parse(&data).map_err(DataplaneError::Btf)?;
    let offset = |strukt: &str, path: &[&str]| {
        btf.offset_of(strukt, path).map_err(|e| DataplaneError::Btf(format!("{strukt}: {e}")))
    };
    Ok(XmitConfig {
        netns_inum,
        ifindex_offset: offset("net_device", &["ifindex"])?,
        net_offset: offset("net_device", &["nd_net", "net"])?,
        inum_offset: offset("net", &["ns", "inum"])?,
        devmap_id,
        dtab_dev_offset: offset("bpf_dtab_netdev", &["dev"])?,
    })
}

/// Just enough of a BTF reader to find the byte offset of a field in a kernel structure
/// (`Documentation/bpf/btf.rst`): aya parses BTF but keeps its type table private.
struct Btf<'a> {
    strings: &'a [u8],
    /// Per type id (index 0 is `void`): kind, `size_or_type`, and the members of a struct or union
    /// as (name offset, type id, bit offset).
    types: Vec<BtfType>,
}

#[derive(Debug, Default)]
struct BtfType {
    kind: u32,
    name_off: u32,
    /// The referenced type, for typedefs and qualifiers.
    type_id: u32,
    members: Vec<(u32, u32, u32)>,
}

const BTF_MAGIC: u16 = 0xeb9f;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_TYPE_TAG: u32 = 18;

impl<'a> Btf<'a> {
    fn parse(data: &'a [u8]) -> Result<Self, String> {
        let u32_at = |off: usize| -> Result<u32, String> {
            data.get(off..off + 4)
                .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                .ok_or_else(|| format!("truncated at byte {off}"))
        };
        if data.len() < 24 || u16::from_ne_bytes([data[0], data[1]]) != BTF_MAGIC {
            return Err("not BTF in this machine's byte order".into());
        }
        let hdr_len = u32_at(4)? as usize;
        let (type_off, type_len) = (u32_at(8)? as usize, u32_at(12)? as usize);
        let (str_off, str_len) = (u32_at(16)? as usize, u32_at(20)? as usize);
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or("string section out of bounds")?;
        let mut types = vec![BtfType::default()];
        let (mut at, end) = (hdr_len + type_off, hdr_len + type_off + type_len);
        while at < end {
            let (name_off, info, size_or_type) = (u32_at(at)?, u32_at(at + 4)?, u32_at(at + 8)?);
            at += 12;
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let mut t = BtfType { kind, name_off, type_id: size_or_type, members: Vec::new() };
            at += match kind {
                KIND_STRUCT | KIND_UNION => {
                    let bitfields = info >> 31 == 1;
                    for i in 0..vlen {
                        let m = at + 12 * i;
                        let offset = u32_at(m + 8)?;
                        let bits = if bitfields { offset & 0x00ff_ffff } else { offset };
                        t.members.push((u32_at(m)?, u32_at(m + 4)?, bits));
                    }
                    12 * vlen
                }
                // INT, VAR, DECL_TAG; ARRAY.
                1 | 14 | 17 => 4,
                3 => 12,
                // ENUM, FUNC_PROTO; DATASEC, ENUM64.
                6 | 13 => 8 * vlen,
                15 | 19 => 12 * vlen,
                // PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG.
                2 | 7..=12 | 16 | 18 => 0,
                other => return Err(format!("unknown BTF kind {other}")),
            };
            types.push(t);
        }
        Ok(Self { strings, types })
    }

    fn name(&self, off: u32) -> &[u8] {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        &rest[..rest.iter().position(|b| *b == 0).unwrap_or(rest.len())]
    }

    /// Follows typedefs and qualifiers.
    fn resolve(&self, mut id: u32) -> Option<&BtfType> {
        for _ in 0..32 {
            let t = self.types.get(id as usize)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.type_id;
                }
                _ => return Some(t),
            }
        }
        None
    }

    /// Bit offset of member `name` in a struct or union, looking into anonymous members; and the
    /// member's type id.
    fn member(&self, t: &BtfType, name: &str) -> Option<(u32, u32)> {
        for &(name_off, type_id, bits) in &t.members {
            if self.name(name_off) == name.as_bytes() {
                return Some((bits, type_id));
            }
            if name_off == 0 {
                let inner = self.resolve(type_id)?;
                if let Some((b, id)) = self.member(inner, name) {
                    return Some((bits + b, id));
                }
            }
        }
        None
    }

    /// Byte offset of the field reached through `path` (member names) from struct `strukt`.
    fn offset_of(&self, strukt: &str, path: &[&str]) -> Result<u32, String> {
        let mut t = self
            .types
            .iter()
            .find(|t| {
                t.kind == KIND_STRUCT
                    && !t.members.is_empty()
                    && self.name(t.name_off) == strukt.as_bytes()
            })
            .ok_or("no such struct")?;
        let mut bits = 0;
        for (i, field) in path.iter().enumerate() {
            let (b, type_id) = self.member(t, field).ok_or_else(|| format!("no field {field}"))?;
            bits += b;
            if i + 1 < path.len() {
                t = self
                    .resolve(type_id)
                    .filter(|t| matches!(t.kind, KIND_STRUCT | KIND_UNION))
                    .ok_or_else(|| format!("{field} is not a struct"))?;
            }
        }
        if bits % 8 != 0 {
            return Err(format!("{} is a bitfield", path.join(".")));
        }
        Ok(bits / 8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_cpu_values_are_summed() {
        let stats = |flushes, sent, dropped, errors, redirect_errors| XmitStats {
            flushes,
            sent,
            dropped,
            errors,
            redirect_errors,
        };
        let cpus = [
            stats(10, 150, 10, 0, 0),
            XmitStats::default(),
            stats(3, 0, 48, 3, 7),
            stats(1, 16, 0, 0, 0),
        ];
        let total = sum_cpus(&cpus);
        assert_eq!(total, stats(14, 166, 58, 3, 7));
        assert!((frames_per_flush(&total) - 224.0 / 14.0).abs() < 1e-9);
        assert_eq!(sum_cpus(&[]), XmitStats::default());
        assert!(frames_per_flush(&XmitStats::default()).abs() < f64::EPSILON);
    }

    /// A BTF blob in the kernel's layout: `struct inner { int a; int b; }` and
    /// `struct outer { long pad; union { struct inner in; }; }` behind a typedef.
    fn sample_btf() -> Vec<u8> {
        let strings = b"\0int\0a\0b\0inner\0outer\0pad\0in\0inner_t\0";
        let s = |name: &str| {
            let needle = format!("\0{name}\0");
            strings.windows(needle.len()).position(|w| w == needle.as_bytes()).unwrap() as u32 + 1
        };
        let mut types: Vec<u32> = Vec::new();
        let mut ty = |words: &[u32]| types.extend_from_slice(words);
        // 1: int (4 bytes, 32 bits).
        ty(&[s("int"), 1 << 24, 4, 32]);
        // 2: struct inner { int a @0; int b @32 }.
        ty(&[s("inner"), (KIND_STRUCT << 24) | 2, 8, s("a"), 1, 0, s("b"), 1, 32]);
        // 3: typedef inner_t -> 2.
        ty(&[s("inner_t"), KIND_TYPEDEF << 24, 2]);
        // 4: anonymous union { inner_t in @0 }.
        ty(&[0, (KIND_UNION << 24) | 1, 8, s("in"), 3, 0]);
        // 5: struct outer { int pad @0; <anonymous union> @64 }.
        ty(&[s("outer"), (KIND_STRUCT << 24) | 2, 16, s("pad"), 1, 0, 0, 4, 64]);
        let type_bytes: Vec<u8> = types.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let mut out = Vec::new();
        out.extend_from_slice(&BTF_MAGIC.to_ne_bytes());
        out.extend_from_slice(&[1, 0]);
        for w in [24, 0, type_bytes.len() as u32, type_bytes.len() as u32, strings.len() as u32] {
            out.extend_from_slice(&u32::to_ne_bytes(w));
        }
        out.extend_from_slice(&type_bytes);
        out.extend_from_slice(strings);
        out
    }

    #[test]
    fn btf_offsets_follow_typedefs_and_anonymous_members() {
        let data = sample_btf();
        let btf = Btf::parse(&data).expect("parse the sample BTF");
        assert_eq!(btf.offset_of("outer", &["pad"]), Ok(0));
        assert_eq!(btf.offset_of("outer", &["in", "b"]), Ok(12));
        assert_eq!(btf.offset_of("inner", &["b"]), Ok(4));
        assert!(btf.offset_of("outer", &["nope"]).is_err());
        assert!(btf.offset_of("missing", &["a"]).is_err());
        assert!(btf.offset_of("outer", &["pad", "a"]).is_err());
    }

    #[test]
    fn the_running_kernel_has_the_fields_the_program_reads() {
        if !Path::new(VMLINUX_BTF).exists() {
            eprintln!("NOTICE: {VMLINUX_BTF} absent: kernel BTF offsets not checked");
            return;
        }
        let config = kernel_config(1).expect("offsets from the kernel's BTF");
        assert_ne!(config.netns_inum, 0);
        assert!(config.ifindex_offset > 0 && config.net_offset > 0, "{config:?}");
    }
}
