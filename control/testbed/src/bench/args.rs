//! The options of `sluice-bench` ([`BenchArgs`]) and the values they take: families, tables,
//! forwarders, frame sizes and table sizes.

use std::path::PathBuf;

use sluice_common::bench::{MAX_FRAME_LEN, MAX_GEN_DESTS, TEMPLATE_LEN};

use crate::table::Family;

/// Options of `sluice-bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Frames the generator sends in each round of a measurement.
    #[arg(long, default_value_t = 2_000_000, conflicts_with = "duration")]
    pub packets: u64,
    /// Rounds over every forwarder in each cell (each forwarder measured once per round, in
    /// turn); a forwarder's rate is its median round.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=50))]
    pub rounds: u32,
    /// Send for this many seconds in each measurement instead of a fixed number of frames.
    #[arg(long, value_name = "SECONDS")]
    pub duration: Option<f64>,
    /// Distinct destination addresses, drawn at random from the full table's prefixes.
    #[arg(long, default_value_t = 4000, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_GEN_DESTS)))]
    pub destinations: u32,
    /// Size of the generated frames in bytes, Ethernet header to the end of the payload without
    /// the FCS (64 to 1514), or `imix`: in every 12 frames, 7 of 64 bytes, 4 of 590 and 1 of 1514
    /// (the simple IMIX of 40-, 576- and 1500-byte IP packets), 360 bytes on average.
    #[arg(long, value_name = "BYTES|imix", default_value = "64", value_parser = parse_frame_size)]
    pub frame_size: FrameSize,
    /// Address families to measure.
    #[arg(long, value_enum, default_value_t = FamilyChoice::Both)]
    pub family: FamilyChoice,
    /// Routing tables to measure: the default route alone, the synthetic full table, or both.
    #[arg(long, value_enum, default_value_t = TableChoice::Both)]
    pub tables: TableChoice,
    /// Forwarders to measure (comma-separated); they always run in the order linux, fib-lookup,
    /// ceiling, ceiling-read, sluice, sluice-hooks.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "linux,fib-lookup,ceiling,ceiling-read,sluice,sluice-hooks"
    )]
    pub forwarders: Vec<Forwarder>,
    /// Routes in the full table: one number for both families, or the IPv4 and the IPv6 size.
    #[arg(long, value_name = "SIZE[,SIZE_V6]", default_value = "1000000,230000", value_parser = parse_table_sizes)]
    pub table_size: TableSizes,
    /// Sink-side next hops the full table's routes are spread over.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(1..=16))]
    pub next_hops: u8,
    /// Seed of the synthetic table and of the destinations drawn from it.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Trials of the route-add latency measurement in each cell; 0 skips it.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(0..=250))]
    pub route_trials: u32,
    /// Also write the results as JSON to this file.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// Write the bar chart (SVG) here; by default beside the JSON, with the extension `.svg`.
    #[arg(long, value_name = "PATH")]
    pub plot: Option<PathBuf>,
    /// Keep the whole chain (generator, router, sink) on whichever CPU the kernel picks, as a
    /// single-CPU machine would, instead of giving the router's receive path a CPU of its own.
    #[arg(long)]
    pub shared_cpu: bool,
    /// The `sluice` executable that runs the daemon; by default `SLUICE_BIN`, else the one built
    /// beside `sluice-bench`.
    #[arg(long, value_name = "PATH")]
    pub sluice_bin: Option<PathBuf>,
    /// Skip the measurement of the XDP programs' time per packet from the kernel's BPF run-time
    /// statistics (a short extra phase for each XDP forwarder after its last round).
    #[arg(long)]
    pub no_program_time: bool,
    /// Interleaved rounds of the per-step program times (`BPF_PROG_TEST_RUN` of the forwarding
    /// program cut short after each step, the ceilings and `--ab`, on the daemon's maps), after
    /// Sluice's last round in each cell; 0 skips them.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub step_rounds: u32,
    /// Another build's forwarding object (`sluice-xdp`, e.g. from `OUT_DIR` of
    /// `sluice-dataplane`), timed in the same interleaved rounds as this build's on the same
    /// maps (`sluice_b` in the report): the two must share the maps' layout.
    #[arg(long, value_name = "OBJECT")]
    pub ab: Option<PathBuf>,
}

/// `--family`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FamilyChoice {
    /// IPv4 only.
    Ipv4,
    /// IPv6 only.
    Ipv6,
    /// IPv4 and IPv6.
    Both,
}

/// `--tables`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TableChoice {
    /// The default route alone.
    One,
    /// The synthetic full table.
    Full,
    /// Both.
    Both,
}

/// A forwarder the benchmark measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum Forwarder {
    /// The kernel's forwarding.
    Linux,
    /// XDP with `bpf_fib_lookup`, as the kernel's `xdp_fwd` sample.
    #[value(alias = "fib")]
    FibLookup,
    /// XDP without any lookup: rewrite the MACs and redirect.
    Ceiling,
    /// The ceiling after reading the Ethernet type and the destination address, as any router must:
    /// what the first read of a frame costs.
    CeilingRead,
    /// The Sluice daemon and its dataplane.
    Sluice,
    /// Sluice with rules in its hook tables (filters on both addresses and a rate rule, none
    /// matching the traffic): what the tables cost once plugins use them.
    SluiceHooks,
}

impl Forwarder {
    /// Every forwarder, in the order of the measurements (and of the report).
    pub const ALL: [Self; 6] = [
        Self::Linux,
        Self::FibLookup,
        Self::Ceiling,
        Self::CeilingRead,
        Self::Sluice,
        Self::SluiceHooks,
    ];

    /// The name in the report and the JSON.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Linux => "linux",
            Self::FibLookup => "fib_lookup",
            Self::Ceiling => "ceiling",
            Self::CeilingRead => "ceiling_read",
            Self::Sluice => "sluice",
            Self::SluiceHooks => "sluice_hooks",
        }
    }
}

/// The simple IMIX in the order the generator sends it: 7 frames of 64 bytes (40-byte IP packets,
/// padded to the Ethernet minimum), 4 of 590 (576-byte IP packets) and 1 of 1514 (1500 bytes),
/// interleaved.
pub(super) const IMIX: [u16; 12] = [64, 590, 64, 64, 590, 64, 1514, 64, 590, 64, 64, 590];

/// `--frame-size`: one size for every frame, or the IMIX.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameSize {
    /// Every frame this many bytes.
    Fixed(u16),
    /// [`IMIX`].
    Imix,
}

impl FrameSize {
    /// The frame length of each step of the generator's pattern.
    pub(super) fn steps(self) -> Vec<u16> {
        match self {
            Self::Fixed(len) => vec![len],
            Self::Imix => IMIX.to_vec(),
        }
    }

    /// The distinct lengths (the generator's size slots, in order of first use) and, per step,
    /// its slot.
    pub(super) fn slots(self) -> (Vec<u16>, Vec<u8>) {
        let mut lens: Vec<u16> = Vec::new();
        let pattern = self
            .steps()
            .into_iter()
            .map(|len| {
                let slot = lens.iter().position(|&l| l == len).unwrap_or_else(|| {
                    lens.push(len);
                    lens.len() - 1
                });
                slot as u8
            })
            .collect();
        (lens, pattern)
    }

    /// The mean frame length the generator sends.
    pub(super) fn mean_len(self) -> f64 {
        let steps = self.steps();
        steps.iter().map(|&l| f64::from(l)).sum::<f64>() / steps.len() as f64
    }

    pub(super) fn describe(self) -> String {
        match self {
            Self::Fixed(len) => format!("{len}-byte"),
            Self::Imix => "IMIX (7 x 64, 4 x 590, 1 x 1514 bytes)".into(),
        }
    }

    /// `--frame-size` as given.
    pub(super) fn arg(self) -> String {
        match self {
            Self::Fixed(len) => len.to_string(),
            Self::Imix => "imix".into(),
        }
    }
}

fn parse_frame_size(s: &str) -> Result<FrameSize, String> {
    if s.eq_ignore_ascii_case("imix") {
        return Ok(FrameSize::Imix);
    }
    let len: usize =
        s.parse().map_err(|_| format!("{s:?} is neither a length in bytes nor imix"))?;
    if !(TEMPLATE_LEN..=MAX_FRAME_LEN).contains(&len) {
        return Err(format!(
            "frames are {TEMPLATE_LEN} to {MAX_FRAME_LEN} bytes (Ethernet header to the end of the payload, no FCS), not {len}"
        ));
    }
    Ok(FrameSize::Fixed(len as u16))
}

/// `--table-size`: the full table's routes per family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableSizes {
    /// IPv4 routes.
    pub v4: usize,
    /// IPv6 routes.
    pub v6: usize,
}

impl TableSizes {
    pub(super) fn of(self, family: Family) -> usize {
        match family {
            Family::V4 => self.v4,
            Family::V6 => self.v6,
        }
    }
}

/// The most routes `--table-size` takes: what the dataplane's tries hold, less room for the
/// connected and local routes.
const MAX_TABLE_V4: usize = sluice_common::MAX_ROUTES_V4 as usize - 1024;
/// See [`MAX_TABLE_V4`].
const MAX_TABLE_V6: usize = sluice_common::MAX_ROUTES_V6 as usize - 1024;

fn parse_table_sizes(s: &str) -> Result<TableSizes, String> {
    let parse = |x: &str, max: usize| -> Result<usize, String> {
        let n: usize = x.trim().replace('_', "").parse().map_err(|e| format!("{x:?}: {e}"))?;
        if n == 0 || n > max {
            return Err(format!("{n} routes: the full table takes 1 to {max}"));
        }
        Ok(n)
    };
    match s.split_once(',') {
        Some((v4, v6)) => {
            Ok(TableSizes { v4: parse(v4, MAX_TABLE_V4)?, v6: parse(v6, MAX_TABLE_V6)? })
        }
        None => Ok(TableSizes { v4: parse(s, MAX_TABLE_V4)?, v6: parse(s, MAX_TABLE_V6)? }),
    }
}

#[cfg(test)]
mod tests {
    use sluice_common::bench::{GEN_PATTERN, GEN_SIZES};

    use super::*;

    #[test]
    fn frame_sizes_parse() {
        assert_eq!(parse_frame_size("64"), Ok(FrameSize::Fixed(64)));
        assert_eq!(parse_frame_size("1514"), Ok(FrameSize::Fixed(1514)));
        assert_eq!(parse_frame_size("IMIX"), Ok(FrameSize::Imix));
        for bad in ["63", "1515", "0", "jumbo", ""] {
            assert!(parse_frame_size(bad).is_err(), "{bad:?}");
        }
        assert_eq!(FrameSize::Fixed(128).slots(), (vec![128], vec![0]));
        assert!((FrameSize::Fixed(128).mean_len() - 128.0).abs() < 1e-9);
    }

    /// The simple IMIX: 7, 4 and 1 of every 12 frames, about 360 bytes on average, within the
    /// generator's slots and pattern.
    #[test]
    fn imix_is_seven_four_one() {
        let (lens, pattern) = FrameSize::Imix.slots();
        assert_eq!(lens, [64, 590, 1514]);
        assert!(lens.len() <= GEN_SIZES && pattern.len() <= GEN_PATTERN);
        let mut counts = [0; 3];
        for &slot in &pattern {
            counts[usize::from(slot)] += 1;
        }
        assert_eq!(counts, [7, 4, 1]);
        assert!((FrameSize::Imix.mean_len() - 4322.0 / 12.0).abs() < 1e-9);
    }

    #[test]
    fn table_sizes_parse() {
        assert_eq!(
            parse_table_sizes("1000000,230000"),
            Ok(TableSizes { v4: 1_000_000, v6: 230_000 })
        );
        assert_eq!(parse_table_sizes("20_000"), Ok(TableSizes { v4: 20_000, v6: 20_000 }));
        assert!(parse_table_sizes("0").is_err());
        assert!(parse_table_sizes("10,x").is_err());
        assert!(parse_table_sizes("100000000").is_err());
    }
}
