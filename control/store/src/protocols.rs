//! The routing protocols of the configuration (`protocols`): BGP neighbours, OSPF areas and
//! ECMP, which the daemon renders into BIRD's configuration. Validation here refuses whatever
//! BIRD could not take or that could escape the rendered file (a password or name breaking out
//! of its quotes); BIRD's own `configure check` runs on top of it at commit time.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::FieldError;

/// What a redacted secret reads as in exports and answers. Staging or importing a
/// configuration whose secret reads so keeps the secret the running configuration has.
pub const REDACTED: &str = "(redacted)";

/// Longest TCP MD5 key (RFC 2385 keys are at most 80 bytes in Linux).
pub const PASSWORD_MAX: usize = 80;
/// Most BGP neighbours.
pub const NEIGHBOURS_MAX: usize = 256;
/// Most prefix entries of one policy.
pub const POLICY_PREFIXES_MAX: usize = 10_000;
/// Largest ECMP width.
pub const ECMP_MAX: u32 = 64;

/// The routing protocols.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Protocols {
    /// The router ID (an IPv4 address); BIRD picks one of the router's addresses when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router_id: Option<Ipv4Addr>,
    /// BGP neighbours by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub bgp: BTreeMap<String, Bgp>,
    /// OSPF, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ospf: Option<Ospf>,
    /// Most equal-cost paths one route is installed with (1 or unset: one path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ecmp: Option<u32>,
}

impl Protocols {
    /// Whether nothing is set (the section is left out of exports).
    pub fn is_unset(&self) -> bool {
        *self == Self::default()
    }

    /// Whether there is nothing to run.
    pub fn is_empty(&self) -> bool {
        self.bgp.is_empty() && self.ospf.is_none()
    }
}

/// A BGP neighbour.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bgp {
    /// The neighbour's address.
    pub neighbor: IpAddr,
    /// Its AS.
    pub remote_as: u32,
    /// The router's AS on this session.
    pub local_as: u32,
    /// The router's address the session is made from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<IpAddr>,
    /// TCP MD5 signature key (RFC 2385).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Hops to the neighbour when it is not directly connected (eBGP multihop).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multihop: Option<u8>,
    /// Seconds without a message from the neighbour before the session is dropped (BIRD's
    /// default, 240, when unset); keepalives go every third of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_time: Option<u16>,
    /// Bidirectional forwarding detection on the session.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub bfd: bool,
    /// Waits for the neighbour to connect.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub passive: bool,
    /// Whether the session runs.
    #[serde(default = "crate::yes")]
    pub enabled: bool,
    /// What is accepted from the neighbour.
    #[serde(default)]
    pub import: Policy,
    /// What is announced to it.
    #[serde(default)]
    pub export: Policy,
}

/// What a policy lets through: `"all"`, `"none"` (the default, as RFC 8212 asks of eBGP) or
/// the prefixes listed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Policy {
    /// `"all"` or `"none"`.
    Word(PolicyWord),
    /// Prefixes, and a limit.
    Filter(Filter),
}

impl Policy {
    /// Whether it is the word `"none"` (the default).
    pub fn is_none_word(&self) -> bool {
        *self == Self::Word(PolicyWord::None)
    }
}

impl Default for Policy {
    fn default() -> Self {
        Self::Word(PolicyWord::None)
    }
}

impl<'de> Deserialize<'de> for Policy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        const SHAPE: &str =
            r#"a policy is "all", "none" or {"prefixes": [...], "max_prefixes": N}"#;
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(s) if s == "all" => Ok(Self::Word(PolicyWord::All)),
            serde_json::Value::String(s) if s == "none" => Ok(Self::Word(PolicyWord::None)),
            v @ serde_json::Value::Object(_) => serde_json::from_value(v)
                .map(Self::Filter)
                .map_err(|e| D::Error::custom(format!("{e} ({SHAPE})"))),
            _ => Err(D::Error::custom(SHAPE)),
        }
    }
}

/// `"all"` or `"none"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyWord {
    /// Everything.
    All,
    /// Nothing.
    None,
}

/// A policy's prefixes and limit.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// Routes whose prefix matches one of these pass (none listed: every prefix).
    #[serde(default)]
    pub prefixes: Vec<PrefixMatch>,
    /// Import only: at most this many routes are taken from the neighbour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_prefixes: Option<u32>,
    /// What happens when the neighbour sends more than `max_prefixes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_prefixes_action: Option<LimitAction>,
}

/// A prefix and the lengths of the routes within it that match.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrefixMatch {
    /// The prefix (host bits zero).
    pub prefix: IpNet,
    /// Shortest length that matches (default: the prefix's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ge: Option<u8>,
    /// Longest length that matches (default: `ge` when given, else the prefix's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub le: Option<u8>,
}

impl PrefixMatch {
    /// The lengths that match, shortest and longest.
    pub fn lengths(&self) -> (u8, u8) {
        let ge = self.ge.unwrap_or(self.prefix.prefix_len());
        let le =
            self.le.unwrap_or(if self.ge.is_some() { self.prefix.max_prefix_len() } else { ge });
        (ge, le)
    }
}

/// What a neighbour exceeding `max_prefixes` gets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LimitAction {
    /// A warning in the log; every route still taken.
    Warn,
    /// Routes beyond the limit are dropped; the session stays.
    Block,
    /// The session is restarted.
    Restart,
    /// The session is shut down until it is enabled again (the default).
    #[default]
    Disable,
}

/// OSPF: areas with their interfaces, for IPv4 (`OSPFv2`) and IPv6 (`OSPFv3`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ospf {
    /// Run `OSPFv2` for IPv4.
    #[serde(default = "crate::yes")]
    pub ipv4: bool,
    /// Run `OSPFv3` for IPv6.
    #[serde(default)]
    pub ipv6: bool,
    /// Areas by ID (`0`, or dotted like `0.0.0.1`).
    pub areas: BTreeMap<String, OspfArea>,
}

/// An OSPF area.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OspfArea {
    /// Interfaces by name.
    #[serde(default)]
    pub interfaces: BTreeMap<String, OspfInterface>,
}

/// An interface in an OSPF area.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OspfInterface {
    /// Output cost (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<u32>,
    /// Its networks are announced, but no adjacency is made on it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub passive: bool,
}

/// An area ID as a number (`0.0.0.1` and `1` are the same area).
pub fn area_id(id: &str) -> Option<u32> {
    id.parse::<u32>().ok().or_else(|| id.parse::<Ipv4Addr>().ok().map(u32::from))
}

/// Whether `name` can name a protocol in BIRD: a letter, then letters, digits or `_`, at most
/// 32 in all; names starting `sluice_` are the router's own.
fn protocol_name_problem(name: &str) -> Option<&'static str> {
    let mut bytes = name.bytes();
    if !bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        || !bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
        || name.len() > 32
    {
        Some("a name is a letter, then up to 31 letters, digits or '_'")
    } else if name.to_ascii_lowercase().starts_with("sluice_") {
        Some("names starting with sluice_ are the router's own")
    } else {
        None
    }
}

fn policy_problems(
    p: &Policy,
    import: bool,
    family_v4: bool,
    field: &str,
    err: &mut impl FnMut(String, String),
) {
    let Policy::Filter(f) = p else { return };
    if f.prefixes.len() > POLICY_PREFIXES_MAX {
        err(format!("{field}.prefixes"), format!("at most {POLICY_PREFIXES_MAX} entries"));
        return;
    }
    for (k, m) in f.prefixes.iter().enumerate() {
        let at = format!("{field}.prefixes[{k}]");
        if m.prefix.trunc() != m.prefix {
            err(
                format!("{at}.prefix"),
                format!("{} has host bits set (did you mean {}?)", m.prefix, m.prefix.trunc()),
            );
        }
        if m.prefix.addr().is_ipv4() != family_v4 {
            err(format!("{at}.prefix"), format!("{} is not of the neighbour's family", m.prefix));
        }
        let max = m.prefix.max_prefix_len();
        for (name, v) in [("ge", m.ge), ("le", m.le)] {
            if let Some(v) = v
                && !(m.prefix.prefix_len()..=max).contains(&v)
            {
                err(
                    format!("{at}.{name}"),
                    format!("{v} is outside {} to {max}", m.prefix.prefix_len()),
                );
            }
        }
        if let (Some(ge), Some(le)) = (m.ge, m.le)
            && ge > le
        {
            err(format!("{at}.le"), format!("le {le} is below ge {ge}"));
        }
    }
    if let Some(n) = f.max_prefixes {
        if !import {
            err(
                format!("{field}.max_prefixes"),
                "limits what is imported: set it on `import`".into(),
            );
        } else if n == 0 {
            err(format!("{field}.max_prefixes"), "at least 1".into());
        }
    }
    if f.max_prefixes_action.is_some() && f.max_prefixes.is_none() {
        err(format!("{field}.max_prefixes_action"), "needs max_prefixes".into());
    }
}

impl Protocols {
    /// Every problem, with field paths under `protocols`.
    #[expect(clippy::too_many_lines, reason = "one check after another, each with its field")]
    pub fn validate(&self, errors: &mut Vec<FieldError>) {
        let mut err = |field: String, message: String| {
            errors.push(FieldError { field: format!("protocols.{field}"), message });
        };
        if let Some(id) = self.router_id
            && (id.is_unspecified() || id.is_broadcast())
        {
            err("router_id".into(), format!("{id} cannot be a router ID"));
        }
        if let Some(n) = self.ecmp
            && !(1..=ECMP_MAX).contains(&n)
        {
            err("ecmp".into(), format!("{n} is outside 1 to {ECMP_MAX}"));
        }
        if self.bgp.len() > NEIGHBOURS_MAX {
            err("bgp".into(), format!("at most {NEIGHBOURS_MAX} neighbours"));
        }
        let mut seen = BTreeMap::new();
        for (name, b) in &self.bgp {
            let at = format!("bgp.{name}");
            if let Some(m) = protocol_name_problem(name) {
                err(at.clone(), m.into());
            }
            if let Some(first) = seen.insert(b.neighbor, name) {
                err(format!("{at}.neighbor"), format!("{} is already bgp.{first}'s", b.neighbor));
            }
            let n = b.neighbor;
            if n.is_unspecified() || n.is_multicast() || n.is_loopback() {
                err(format!("{at}.neighbor"), format!("{n} cannot be a neighbour"));
            }
            if let IpAddr::V6(v6) = n
                && v6.is_unicast_link_local()
            {
                err(
                    format!("{at}.neighbor"),
                    "link-local neighbours are not supported: use a global address".into(),
                );
            }
            for (field, asn) in [("remote_as", b.remote_as), ("local_as", b.local_as)] {
                if asn == 0 || asn == 23_456 {
                    err(format!("{at}.{field}"), format!("{asn} is not a usable AS number"));
                }
            }
            if let Some(s) = b.source
                && s.is_ipv4() != n.is_ipv4()
            {
                err(format!("{at}.source"), format!("{s} is not of the neighbour's family"));
            }
            if let Some(p) = &b.password {
                if p.is_empty() || p.len() > PASSWORD_MAX {
                    err(format!("{at}.password"), format!("1 to {PASSWORD_MAX} bytes"));
                } else if !p.bytes().all(|c| (0x20..0x7f).contains(&c) && c != b'"' && c != b'\\') {
                    err(format!("{at}.password"), "printable ASCII without '\"' or '\\'".into());
                }
            }
            if let Some(h) = b.hold_time
                && h < 3
            {
                err(format!("{at}.hold_time"), "3 to 65535 seconds".into());
            }
            if b.multihop == Some(0) {
                err(format!("{at}.multihop"), "1 to 255 hops".into());
            }
            if b.multihop.is_some() && b.remote_as == b.local_as {
                err(format!("{at}.multihop"), "iBGP sessions are multihop already".into());
            }
            policy_problems(&b.import, true, n.is_ipv4(), &format!("{at}.import"), &mut err);
            policy_problems(&b.export, false, n.is_ipv4(), &format!("{at}.export"), &mut err);
        }
        if let Some(o) = &self.ospf {
            if !o.ipv4 && !o.ipv6 {
                err("ospf".into(), "ipv4, ipv6 or both".into());
            }
            if o.areas.is_empty() {
                err("ospf.areas".into(), "at least one area".into());
            }
            let mut ids = BTreeMap::new();
            let mut ifaces = BTreeMap::new();
            for (id, area) in &o.areas {
                let at = format!("ospf.areas.{id}");
                match area_id(id) {
                    None => err(at.clone(), "an area ID is a number or dotted like 0.0.0.1".into()),
                    Some(n) => {
                        if let Some(first) = ids.insert(n, id) {
                            err(at.clone(), format!("the same area as ospf.areas.{first}"));
                        }
                    }
                }
                for (name, i) in &area.interfaces {
                    if let Some(m) = crate::interface_name_problem(name) {
                        err(format!("{at}.interfaces.{name}"), format!("interface name: {m}"));
                    } else if name.contains(['"', '\\', '*', '?', '[', ']']) {
                        err(
                            format!("{at}.interfaces.{name}"),
                            "interface name: no '\"', '\\', '*', '?', '[' or ']'".into(),
                        );
                    }
                    if let Some(first) = ifaces.insert(name.clone(), id) {
                        err(format!("{at}.interfaces.{name}"), format!("already in area {first}"));
                    }
                    if let Some(c) = i.cost
                        && !(1..=65_535).contains(&c)
                    {
                        err(
                            format!("{at}.interfaces.{name}.cost"),
                            format!("{c} is outside 1 to 65535"),
                        );
                    }
                }
            }
        }
    }

    /// The same protocols with every secret replaced by [`REDACTED`].
    #[must_use]
    pub fn redacted(&self) -> Self {
        let mut p = self.clone();
        for b in p.bgp.values_mut() {
            if b.password.is_some() {
                b.password = Some(REDACTED.into());
            }
        }
        p
    }

    /// Puts back the secrets a redacted copy stands for, taken from `from` (the running
    /// configuration): a neighbour whose password reads [`REDACTED`] keeps the one it has there.
    /// What cannot be restored (no such neighbour there, or none with a password) is returned
    /// as field errors.
    pub fn restore_secrets(&mut self, from: &Self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        for (name, b) in &mut self.bgp {
            if b.password.as_deref() == Some(REDACTED) {
                match from.bgp.get(name).and_then(|o| o.password.clone()) {
                    Some(p) => b.password = Some(p),
                    None => errors.push(FieldError {
                        field: format!("protocols.bgp.{name}.password"),
                        message: format!(
                            "reads {REDACTED} but the running configuration has no password \
                             for this neighbour: give the password"
                        ),
                    }),
                }
            }
        }
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;

    fn config(json: serde_json::Value) -> Config {
        serde_json::from_value(json).expect("a configuration")
    }

    fn fields(c: &Config) -> Vec<String> {
        c.validate().into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn a_neighbour_with_defaults_reads_and_writes_back_the_same() {
        let c = config(serde_json::json!({"protocols": {"router_id": "192.0.2.1", "bgp": {
            "up1": {"neighbor": "10.0.0.2", "remote_as": 65001, "local_as": 65000}}}}));
        let b = &c.protocols.bgp["up1"];
        assert!(b.enabled && !b.passive && !b.bfd);
        assert_eq!((&b.import, &b.export), (&Policy::default(), &Policy::default()));
        assert!(b.import.is_none_word());
        assert!(c.validate().is_empty(), "{:?}", c.validate());
        let again: Config = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(again, c);
        // A configuration without protocols writes none.
        assert!(!serde_json::to_string(&Config::default()).unwrap().contains("protocols"));
    }

    #[test]
    fn policies_are_words_or_filters_and_anything_else_is_refused_with_the_shape() {
        let p: Policy = serde_json::from_value(serde_json::json!("all")).unwrap();
        assert_eq!(p, Policy::Word(PolicyWord::All));
        let p: Policy = serde_json::from_value(serde_json::json!(
            {"prefixes": [{"prefix": "10.0.0.0/8", "le": 24}], "max_prefixes": 100}))
        .unwrap();
        let Policy::Filter(f) = p else { panic!("a filter") };
        assert_eq!(f.prefixes[0].lengths(), (8, 24));
        assert_eq!(f.max_prefixes, Some(100));
        for bad in
            [serde_json::json!("some"), serde_json::json!(3), serde_json::json!({"prefix": 1})]
        {
            let e = serde_json::from_value::<Policy>(bad.clone()).unwrap_err().to_string();
            assert!(e.contains("a policy is"), "{bad}: {e}");
        }
    }

    #[test]
    fn bad_protocols_are_refused_field_by_field() {
        let c = config(serde_json::json!({"protocols": {
            "router_id": "0.0.0.0",
            "ecmp": 0,
            "bgp": {
                "1bad": {"neighbor": "10.0.0.2", "remote_as": 1, "local_as": 2},
                "sluice_kernel4": {"neighbor": "10.0.0.3", "remote_as": 1, "local_as": 2},
                "dup": {"neighbor": "10.0.0.2", "remote_as": 0, "local_as": 2,
                        "source": "fd00::1", "multihop": 0},
                "inject": {"neighbor": "10.0.0.4", "remote_as": 1, "local_as": 2,
                           "password": "x\"; } protocol static evil { ipv4; route 0.0.0.0/0 blackhole; } #"},
                "pol": {"neighbor": "fd00::2", "remote_as": 1, "local_as": 2,
                        "import": {"prefixes": [{"prefix": "10.0.0.1/8"},
                                                {"prefix": "fd00::/16", "ge": 8, "le": 200},
                                                {"prefix": "fd00::/16", "ge": 48, "le": 32}]},
                        "export": {"max_prefixes": 3}},
            },
            "ospf": {"ipv4": true, "areas": {"x": {}, "0": {"interfaces": {
                "eth\"0": {}, "eth1": {"cost": 0}}}, "0.0.0.0": {"interfaces": {"eth1": {}}}}},
        }}));
        let got = fields(&c);
        for want in [
            "protocols.router_id",
            "protocols.ecmp",
            "protocols.bgp.1bad",
            "protocols.bgp.sluice_kernel4",
            "protocols.bgp.dup.neighbor",
            "protocols.bgp.dup.remote_as",
            "protocols.bgp.dup.source",
            "protocols.bgp.dup.multihop",
            "protocols.bgp.inject.password",
            "protocols.bgp.pol.import.prefixes[0].prefix",
            "protocols.bgp.pol.import.prefixes[0].prefix",
            "protocols.bgp.pol.import.prefixes[1].ge",
            "protocols.bgp.pol.import.prefixes[1].le",
            "protocols.bgp.pol.import.prefixes[2].le",
            "protocols.bgp.pol.export.max_prefixes",
            "protocols.ospf.areas.x",
            "protocols.ospf.areas.0.interfaces.eth\"0",
            "protocols.ospf.areas.0.interfaces.eth1.cost",
            "protocols.ospf.areas.0.0.0.0",
            "protocols.ospf.areas.0.0.0.0.interfaces.eth1",
        ] {
            assert!(got.iter().any(|g| g == want), "{want} should be refused; got {got:#?}");
        }
    }

    #[test]
    fn secrets_are_redacted_and_a_redacted_copy_keeps_the_running_secret() {
        let running = config(serde_json::json!({"protocols": {"bgp": {
            "up1": {"neighbor": "10.0.0.2", "remote_as": 65001, "local_as": 65000,
                    "password": "s3cret"}}}}));
        let shown = running.redacted();
        let text = serde_json::to_string(&shown).unwrap();
        assert!(!text.contains("s3cret") && text.contains(REDACTED), "{text}");
        let mut back = shown.clone();
        assert!(back.protocols.restore_secrets(&running.protocols).is_empty());
        assert_eq!(back, running);
        // Nothing to restore from: refused, naming the field.
        let mut orphan = shown;
        let errors = orphan.protocols.restore_secrets(&Protocols::default());
        assert_eq!(errors[0].field, "protocols.bgp.up1.password");
        // The diff shows a changed password without showing it.
        let mut changed = running.clone();
        changed.protocols.bgp.get_mut("up1").unwrap().password = Some("other".into());
        let d = crate::diff(&running, &changed);
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].item, "protocols.bgp.up1.password");
        assert!(!serde_json::to_string(&d).unwrap().contains("other"));
    }
}
