//! BIRD's configuration rendered from the store's `protocols`: the same configuration always
//! gives the same text. Every name and string written into it was validated by the store
//! ([`sluice_store::protocols`]), so none can break out of its quotes.

use std::{fmt::Write as _, path::Path};

use sluice_store::protocols::{Bgp, Filter, LimitAction, Ospf, Policy, PolicyWord, Protocols};

/// The protocols the router adds of its own (BGP names may not start with `sluice_`).
pub const DEVICE: &str = "sluice_device";
/// Connected networks, to announce them over BGP.
pub const DIRECT: &str = "sluice_direct";
/// BFD, when a neighbour uses it.
pub const BFD: &str = "sluice_bfd";
/// The kernel protocols: BIRD's best routes into the table Sluice mirrors.
pub const KERNEL4: &str = "sluice_kernel4";
/// See [`KERNEL4`].
pub const KERNEL6: &str = "sluice_kernel6";
/// `OSPFv2` (IPv4).
pub const OSPF4: &str = "sluice_ospf4";
/// `OSPFv3` (IPv6).
pub const OSPF6: &str = "sluice_ospf6";

/// BGP timers every session gets: a new session is tried soon after a failure, so a peer that
/// comes back is seen within seconds, not BIRD's default two minutes.
const BGP_TIMERS: &str = "connect delay time 1; connect retry time 5; error wait time 1, 30;";

/// Where BIRD's log goes, and the kernel table it writes.
#[derive(Clone, Debug)]
pub struct Settings<'a> {
    /// The kernel routing table Sluice mirrors (254 is main).
    pub table: u32,
    /// BIRD's log file (rotated at 4 MiB to `LOG.old`); none: syslog.
    pub log: Option<&'a Path>,
}

/// BIRD's configuration for `p`.
pub fn render(p: &Protocols, s: &Settings<'_>) -> String {
    let mut out = String::from(
        "# Written by Sluice from its configuration (protocols); edits here are overwritten.\n",
    );
    let mut line = |text: &str| {
        out.push_str(text);
        out.push('\n');
    };
    if let Some(log) = s.log {
        let log = log.display();
        // Warnings and errors on standard error too: the daemon logs them as they come.
        line("log stderr { warning, error, fatal, bug };");
        line(&format!(
            "log \"{log}\" 4194304 \"{log}.old\" {{ info, remote, warning, error, auth, fatal, bug }};"
        ));
    }
    if let Some(id) = p.router_id {
        line(&format!("router id {id};"));
    }
    line("timeformat protocol iso long;");
    line(&format!("protocol device {DEVICE} {{ scan time 10; }}"));
    let exports = p.bgp.values().any(|b| !b.export.is_none_word());
    if exports {
        line(&format!("protocol direct {DIRECT} {{ ipv4; ipv6; }}"));
    }
    let merge = match p.ecmp {
        Some(n) if n > 1 => format!(" merge paths yes limit {n};"),
        _ => String::new(),
    };
    for (name, family) in [(KERNEL4, "ipv4"), (KERNEL6, "ipv6")] {
        line(&format!(
            "protocol kernel {name} {{ kernel table {}; learn off;{merge} {family} {{ import none; \
             export filter {{ if source = RTS_DEVICE then reject; accept; }}; }}; }}",
            s.table
        ));
    }
    if p.bgp.values().any(|b| b.bfd) {
        line(&format!(
            "protocol bfd {BFD} {{ interface \"*\" {{ min rx interval 100 ms; min tx interval \
             100 ms; idle tx interval 1 s; multiplier 3; }}; multihop {{ min rx interval 100 ms; \
             min tx interval 100 ms; multiplier 3; }}; }}"
        ));
    }
    if let Some(o) = &p.ospf {
        ospf(&mut out, o, p.ecmp);
    }
    for (name, b) in &p.bgp {
        bgp(&mut out, name, b);
    }
    out
}

fn bgp(out: &mut String, name: &str, b: &Bgp) {
    let family = if b.neighbor.is_ipv4() { "ipv4" } else { "ipv6" };
    let _ = writeln!(out, "protocol bgp {name} {{");
    match b.source {
        Some(src) => {
            let _ = writeln!(out, "\tlocal {src} as {};", b.local_as);
        }
        None => {
            let _ = writeln!(out, "\tlocal as {};", b.local_as);
        }
    }
    let _ = writeln!(out, "\tneighbor {} as {};", b.neighbor, b.remote_as);
    if let Some(p) = &b.password {
        let _ = writeln!(out, "\tpassword \"{p}\";");
    }
    if let Some(h) = b.multihop {
        let _ = writeln!(out, "\tmultihop {h};");
    }
    if let Some(h) = b.hold_time {
        let _ = writeln!(
            out,
            "\thold time {h}; startup hold time {h}; keepalive time {};",
            (h / 3).max(1)
        );
    }
    let _ = writeln!(out, "\t{BGP_TIMERS}");
    if b.bfd {
        out.push_str("\tbfd on;\n");
    }
    if b.passive {
        out.push_str("\tpassive on;\n");
    }
    if !b.enabled {
        out.push_str("\tdisabled;\n");
    }
    let _ = writeln!(out, "\t{family} {{");
    policy(out, "import", &b.import);
    policy(out, "export", &b.export);
    out.push_str("\t};\n}\n");
}

fn policy(out: &mut String, way: &str, p: &Policy) {
    let f = match p {
        Policy::Word(PolicyWord::All) => return writeln!(out, "\t\t{way} all;").unwrap_or(()),
        Policy::Word(PolicyWord::None) => return writeln!(out, "\t\t{way} none;").unwrap_or(()),
        Policy::Filter(f) => f,
    };
    if f.prefixes.is_empty() {
        let _ = writeln!(out, "\t\t{way} all;");
    } else {
        let set: Vec<String> = f
            .prefixes
            .iter()
            .map(|m| {
                let (ge, le) = m.lengths();
                if (ge, le) == (m.prefix.prefix_len(), m.prefix.prefix_len()) {
                    m.prefix.to_string()
                } else {
                    format!("{}{{{ge},{le}}}", m.prefix)
                }
            })
            .collect();
        let _ = writeln!(
            out,
            "\t\t{way} filter {{ if net ~ [ {} ] then accept; reject; }};",
            set.join(", ")
        );
    }
    limit(out, f);
}

fn limit(out: &mut String, f: &Filter) {
    if let Some(n) = f.max_prefixes {
        let action = match f.max_prefixes_action.unwrap_or_default() {
            LimitAction::Warn => "warn",
            LimitAction::Block => "block",
            LimitAction::Restart => "restart",
            LimitAction::Disable => "disable",
        };
        let _ = writeln!(out, "\t\timport limit {n} action {action};");
    }
}

fn ospf(out: &mut String, o: &Ospf, ecmp: Option<u32>) {
    let ecmp = match ecmp {
        Some(n) if n > 1 => format!("ecmp yes limit {n};"),
        _ => "ecmp no;".to_owned(),
    };
    for (on, version, name, family) in
        [(o.ipv4, "v2", OSPF4, "ipv4"), (o.ipv6, "v3", OSPF6, "ipv6")]
    {
        if !on {
            continue;
        }
        let _ = writeln!(out, "protocol ospf {version} {name} {{");
        let _ = writeln!(out, "\t{ecmp}");
        let _ = writeln!(out, "\t{family} {{ import all; export none; }};");
        for (id, area) in &o.areas {
            let id = sluice_store::protocols::area_id(id).unwrap_or_default();
            let _ = writeln!(out, "\tarea {id} {{");
            for (iface, i) in &area.interfaces {
                let mut opts = String::new();
                if let Some(c) = i.cost {
                    let _ = write!(opts, " cost {c};");
                }
                if i.passive {
                    opts.push_str(" stub yes;");
                }
                let _ = writeln!(out, "\t\tinterface \"{iface}\" {{{opts} }};");
            }
            out.push_str("\t};\n");
        }
        out.push_str("}\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn protocols(json: serde_json::Value) -> Protocols {
        let p: Protocols = serde_json::from_value(json).expect("protocols");
        let mut errors = Vec::new();
        p.validate(&mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        p
    }

    const PLAIN: Settings<'static> = Settings { table: 254, log: None };

    #[test]
    fn nothing_configured_still_runs_the_kernel_and_device_protocols() {
        assert_eq!(
            render(&Protocols::default(), &PLAIN),
            "# Written by Sluice from its configuration (protocols); edits here are overwritten.\n\
             timeformat protocol iso long;\n\
             protocol device sluice_device { scan time 10; }\n\
             protocol kernel sluice_kernel4 { kernel table 254; learn off; ipv4 { import none; \
             export filter { if source = RTS_DEVICE then reject; accept; }; }; }\n\
             protocol kernel sluice_kernel6 { kernel table 254; learn off; ipv6 { import none; \
             export filter { if source = RTS_DEVICE then reject; accept; }; }; }\n"
        );
    }

    #[test]
    fn a_bgp_neighbour_with_everything_set() {
        let p = protocols(serde_json::json!({
            "router_id": "192.0.2.1",
            "ecmp": 4,
            "bgp": {
                "up1": {"neighbor": "10.0.0.2", "remote_as": 65001, "local_as": 65000,
                        "source": "10.0.0.1", "password": "s3cret", "multihop": 2, "bfd": true,
                        "passive": true, "enabled": false, "hold_time": 9,
                        "import": {"prefixes": [{"prefix": "10.0.0.0/8", "le": 24},
                                                {"prefix": "192.0.2.0/24"},
                                                {"prefix": "198.51.100.0/24", "ge": 25, "le": 26}],
                                   "max_prefixes": 1000, "max_prefixes_action": "block"},
                        "export": "all"},
                "v6": {"neighbor": "fd00::2", "remote_as": 65002, "local_as": 65000,
                       "import": "all"}
            }
        }));
        let log = Path::new("/var/lib/sluice/bird/bird.log");
        let text = render(&p, &Settings { table: 100, log: Some(log) });
        let want = "\
# Written by Sluice from its configuration (protocols); edits here are overwritten.
log stderr { warning, error, fatal, bug };
log \"/var/lib/sluice/bird/bird.log\" 4194304 \"/var/lib/sluice/bird/bird.log.old\" { info, remote, warning, error, auth, fatal, bug };
router id 192.0.2.1;
timeformat protocol iso long;
protocol device sluice_device { scan time 10; }
protocol direct sluice_direct { ipv4; ipv6; }
protocol kernel sluice_kernel4 { kernel table 100; learn off; merge paths yes limit 4; ipv4 { import none; export filter { if source = RTS_DEVICE then reject; accept; }; }; }
protocol kernel sluice_kernel6 { kernel table 100; learn off; merge paths yes limit 4; ipv6 { import none; export filter { if source = RTS_DEVICE then reject; accept; }; }; }
protocol bfd sluice_bfd { interface \"*\" { min rx interval 100 ms; min tx interval 100 ms; idle tx interval 1 s; multiplier 3; }; multihop { min rx interval 100 ms; min tx interval 100 ms; multiplier 3; }; }
protocol bgp up1 {
\tlocal 10.0.0.1 as 65000;
\tneighbor 10.0.0.2 as 65001;
\tpassword \"s3cret\";
\tmultihop 2;
\thold time 9; startup hold time 9; keepalive time 3;
\tconnect delay time 1; connect retry time 5; error wait time 1, 30;
\tbfd on;
\tpassive on;
\tdisabled;
\tipv4 {
\t\timport filter { if net ~ [ 10.0.0.0/8{8,24}, 192.0.2.0/24, 198.51.100.0/24{25,26} ] then accept; reject; };
\t\timport limit 1000 action block;
\t\texport all;
\t};
}
protocol bgp v6 {
\tlocal as 65000;
\tneighbor fd00::2 as 65002;
\tconnect delay time 1; connect retry time 5; error wait time 1, 30;
\tipv6 {
\t\timport all;
\t\texport none;
\t};
}
";
        assert_eq!(text, want, "got:\n{text}");
        // The same configuration renders the same text.
        assert_eq!(render(&p, &Settings { table: 100, log: Some(log) }), text);
    }

    #[test]
    fn ospf_areas_for_both_families_with_ecmp() {
        let p = protocols(serde_json::json!({
            "ecmp": 2,
            "ospf": {"ipv4": true, "ipv6": true, "areas": {
                "0": {"interfaces": {"eth1": {"cost": 5}, "lo": {"passive": true}}},
                "0.0.0.1": {"interfaces": {"eth2": {}}}}}
        }));
        let text = render(&p, &PLAIN);
        let want = "\
protocol ospf v2 sluice_ospf4 {
\tecmp yes limit 2;
\tipv4 { import all; export none; };
\tarea 0 {
\t\tinterface \"eth1\" { cost 5; };
\t\tinterface \"lo\" { stub yes; };
\t};
\tarea 1 {
\t\tinterface \"eth2\" { };
\t};
}
protocol ospf v3 sluice_ospf6 {
\tecmp yes limit 2;
\tipv6 { import all; export none; };
\tarea 0 {
\t\tinterface \"eth1\" { cost 5; };
\t\tinterface \"lo\" { stub yes; };
\t};
\tarea 1 {
\t\tinterface \"eth2\" { };
\t};
}
";
        assert!(text.ends_with(want), "got:\n{text}");
    }
}
