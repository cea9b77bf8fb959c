//! First-boot provisioning of the appliance from a `NoCloud` seed (the `cidata` volume of
//! cloud-init): `meta-data` (`instance-id`, `local-hostname`) and `user-data` (`#cloud-config`
//! YAML), whose `sluice:` section holds the first administrator (password, argon2 hash, and/or an
//! API token), the management interface (DHCP or static addresses) and a Sluice configuration in
//! the form `sluice config export` writes (interfaces, addresses, static routes).
//!
//! A seed is applied once per `instance-id`, and wholly or not at all: everything is checked
//! before anything is written. The management settings are kept in the state directory, so an
//! upgraded system disk finds them; [`render_network`] turns them into a systemd-networkd unit
//! at every boot.

use std::{collections::BTreeMap, fmt::Write as _, net::IpAddr, path::Path};

use anyhow::{Context as _, bail};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use sluice_store::{Author, Config, Role, Store};

use crate::auth::{Password, password_problem, username_problem, write_private};

/// The management interface: the appliance's first NIC.
pub const DEFAULT_MANAGEMENT: &str = "eth0";
/// Where the management settings are kept, in the state directory.
pub const MANAGEMENT_FILE: &str = "management.json";
/// The instance whose seed was applied, in the state directory.
pub const INSTANCE_FILE: &str = "seed-instance";
/// The hostname of the seed, in the state directory.
pub const HOSTNAME_FILE: &str = "hostname";
/// The shortest API token a seed may set.
const MIN_TOKEN: usize = 32;

/// `meta-data`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct MetaData {
    instance_id: Option<String>,
    local_hostname: Option<String>,
}

/// `user-data`: the parts of a `#cloud-config` Sluice reads; other keys are reported as
/// ignored.
#[derive(Debug, Default, Deserialize)]
struct UserData {
    hostname: Option<String>,
    sluice: Option<SluiceSeed>,
    #[serde(flatten)]
    other: BTreeMap<String, yaml_serde::Value>,
}

/// The `sluice:` section.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SluiceSeed {
    /// The first administrator.
    pub admin: Option<AdminSeed>,
    /// The management interface's addresses.
    pub management: Option<Management>,
    /// The initial configuration (as `sluice config export` prints it).
    pub config: Option<Config>,
}

/// The first administrator of a seed.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSeed {
    /// Login name (`admin` if not given).
    #[serde(default = "admin")]
    pub username: String,
    /// Password in clear.
    pub password: Option<String>,
    /// Or its argon2 hash (PHC string, `$argon2id$...`), so the seed holds no secret.
    pub password_hash: Option<String>,
    /// An API token (admin scope) to create with this secret, for automation.
    pub api_token: Option<String>,
}

fn admin() -> String {
    "admin".into()
}

/// The management interface's settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Management {
    /// The interface (the first NIC, `eth0`, if not given).
    #[serde(default = "management_interface")]
    pub interface: String,
    /// DHCP (and IPv6 router advertisements); the default when no address is given.
    #[serde(default)]
    pub dhcp: Option<bool>,
    /// Static addresses with their prefix length.
    #[serde(default)]
    pub addresses: Vec<IpNet>,
    /// Default gateways (IPv4 and/or IPv6).
    #[serde(default)]
    pub gateways: Vec<IpAddr>,
    /// DNS servers.
    #[serde(default)]
    pub dns: Vec<IpAddr>,
}

fn management_interface() -> String {
    DEFAULT_MANAGEMENT.into()
}

impl Default for Management {
    fn default() -> Self {
        Self {
            interface: management_interface(),
            dhcp: None,
            addresses: Vec::new(),
            gateways: Vec::new(),
            dns: Vec::new(),
        }
    }
}

impl Management {
    fn dhcp(&self) -> bool {
        self.dhcp.unwrap_or(self.addresses.is_empty())
    }

    fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if let Some(why) = sluice_store::interface_name_problem(&self.interface) {
            p.push(format!("sluice.management.interface: {why}"));
        }
        if !self.dhcp() && self.addresses.is_empty() {
            p.push("sluice.management: no DHCP and no address".into());
        }
        for g in &self.gateways {
            if !self.dhcp() && !self.addresses.iter().any(|a| a.contains(g)) {
                p.push(format!("sluice.management.gateways: {g} is on none of the addresses"));
            }
        }
        p
    }

    /// The systemd-networkd unit for these settings.
    pub fn network_unit(&self) -> String {
        let mut s = format!(
            "# Written by `sluice provision` from {MANAGEMENT_FILE} of the state directory.\n\
             [Match]\nName={}\n\n[Network]\n",
            self.interface
        );
        if self.dhcp() {
            // The kernel forwards (the image's sysctl), which networkd takes as a reason to
            // ignore router advertisements: a management interface that configures itself
            // takes them all the same.
            s.push_str("DHCP=yes\nIPv6AcceptRA=yes\n");
        } else {
            s.push_str("DHCP=no\n");
        }
        for a in &self.addresses {
            let _ = writeln!(s, "Address={a}");
        }
        for g in &self.gateways {
            let _ = writeln!(s, "Gateway={g}");
        }
        for d in &self.dns {
            let _ = writeln!(s, "DNS={d}");
        }
        s
    }
}

/// A seed, read and checked.
#[derive(Debug)]
pub struct Seed {
    /// Its instance: a seed is applied once per instance.
    pub instance_id: String,
    /// The hostname it sets.
    pub hostname: Option<String>,
    /// Its `sluice:` section.
    pub sluice: SluiceSeed,
    /// cloud-config keys Sluice does not act on.
    pub ignored: Vec<String>,
}

/// Reads `meta-data` and `user-data` from a seed directory and checks them whole.
pub fn read_seed(dir: &Path) -> anyhow::Result<Seed> {
    let meta_path = dir.join("meta-data");
    let meta_text = std::fs::read_to_string(&meta_path).unwrap_or_default();
    let meta: MetaData = if meta_text.trim().is_empty() {
        MetaData::default()
    } else {
        yaml_serde::from_str(&meta_text)
            .with_context(|| format!("{}: not valid YAML", meta_path.display()))?
    };
    let user_path = dir.join("user-data");
    let user_text = std::fs::read_to_string(&user_path).unwrap_or_default();
    let user: UserData = if user_text.trim().is_empty() {
        UserData::default()
    } else {
        if !user_text.starts_with("#cloud-config") {
            bail!("{}: Sluice reads `#cloud-config` user-data only", user_path.display());
        }
        yaml_serde::from_str(&user_text)
            .with_context(|| format!("{}: not a valid cloud-config", user_path.display()))?
    };
    let instance_id = meta.instance_id.unwrap_or_else(|| {
        let both = format!("{meta_text}\0{user_text}");
        format!("sha256:{}", crate::plugins::sha256_hex(both.as_bytes()))
    });
    let seed = Seed {
        instance_id,
        hostname: user.hostname.or(meta.local_hostname),
        sluice: user.sluice.unwrap_or_default(),
        ignored: user.other.into_keys().collect(),
    };
    let problems = seed.problems();
    if !problems.is_empty() {
        bail!("the seed is refused, nothing was applied:\n  {}", problems.join("\n  "));
    }
    Ok(seed)
}

fn hostname_problem(name: &str) -> Option<&'static str> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !name.starts_with('-');
    (!ok).then_some("1 to 63 letters, digits and '-', not starting with '-'")
}

impl Seed {
    /// Everything wrong with the seed, as `field: reason`.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if let Some(h) = &self.hostname
            && let Some(why) = hostname_problem(h)
        {
            p.push(format!("hostname: {why}"));
        }
        if let Some(a) = &self.sluice.admin {
            if let Some(why) = username_problem(&a.username) {
                p.push(format!("sluice.admin.username: {why}"));
            }
            match (&a.password, &a.password_hash) {
                (Some(_), Some(_)) => {
                    p.push("sluice.admin: give password or password_hash, not both".into());
                }
                (Some(pw), None) => {
                    if let Some(why) = password_problem(pw) {
                        p.push(format!("sluice.admin.password: {why}"));
                    }
                }
                (None, Some(h)) => {
                    if !crate::auth::is_password_hash(h) {
                        p.push("sluice.admin.password_hash: not an argon2 PHC string".into());
                    }
                }
                (None, None) if a.api_token.is_none() => {
                    p.push(
                        "sluice.admin: needs a password, a password_hash or an api_token".into(),
                    );
                }
                (None, None) => {}
            }
            if let Some(t) = &a.api_token
                && (t.len() < MIN_TOKEN || !t.bytes().all(|b| b.is_ascii_graphic()))
            {
                p.push(format!(
                    "sluice.admin.api_token: at least {MIN_TOKEN} printable characters, no spaces"
                ));
            }
        }
        if let Some(m) = &self.sluice.management {
            p.extend(m.problems());
        }
        if let Some(c) = &self.sluice.config {
            let management =
                self.sluice.management.as_ref().map_or(DEFAULT_MANAGEMENT, |m| &m.interface);
            if c.interfaces.contains_key(management) {
                p.push(format!(
                    "sluice.config.interfaces.{management}: the management interface is not routed"
                ));
            }
            p.extend(
                c.validate()
                    .into_iter()
                    .map(|e| format!("sluice.config.{}: {}", e.field, e.message)),
            );
        }
        p
    }
}

/// What [`provision`] did.
#[derive(Debug, Default, Serialize)]
pub struct Outcome {
    /// The seed's instance.
    pub instance_id: Option<String>,
    /// Whether the seed was applied now (false: applied at an earlier boot, or no seed).
    pub applied: bool,
    /// What was done, for the console and the journal.
    pub done: Vec<String>,
}

/// Applies a seed to the state directory, once per instance; then writes the management
/// interface's networkd unit into `network_dir` (from the settings kept in the state directory,
/// DHCP on the first NIC if none), with or without a seed.
pub fn provision(
    state_dir: &Path,
    seed: Option<&Path>,
    network_dir: Option<&Path>,
) -> anyhow::Result<Outcome> {
    crate::state_dir::ensure(state_dir)?;
    let mut outcome = Outcome::default();
    if let Some(dir) = seed {
        let seed = read_seed(dir)?;
        outcome.instance_id = Some(seed.instance_id.clone());
        let instance_file = state_dir.join(INSTANCE_FILE);
        let applied = std::fs::read_to_string(&instance_file).unwrap_or_default();
        if applied.trim() == seed.instance_id {
            outcome.done.push(format!("seed {} was applied before: left alone", seed.instance_id));
        } else {
            apply(state_dir, &seed, &mut outcome)?;
            std::fs::write(&instance_file, format!("{}\n", seed.instance_id))
                .with_context(|| format!("writing {}", instance_file.display()))?;
            outcome.applied = true;
        }
    }
    if let Some(dir) = network_dir {
        let m = management(state_dir)?;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let unit = dir.join("10-sluice-management.network");
        std::fs::write(&unit, m.network_unit())
            .with_context(|| format!("writing {}", unit.display()))?;
        outcome.done.push(format!(
            "management interface {}: {}",
            m.interface,
            if m.dhcp() { "DHCP".to_owned() } else { addresses(&m.addresses) }
        ));
    }
    Ok(outcome)
}

fn addresses(a: &[IpNet]) -> String {
    a.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

/// The management settings kept in the state directory (DHCP on the first NIC if none).
pub fn management(state_dir: &Path) -> anyhow::Result<Management> {
    let path = state_dir.join(MANAGEMENT_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Management::default()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn apply(state_dir: &Path, seed: &Seed, outcome: &mut Outcome) -> anyhow::Result<()> {
    let store = Store::open(&state_dir.join("db"))
        .with_context(|| format!("opening the store in {}", state_dir.display()))?;
    let author = Author {
        who: "cloud-init".into(),
        from: "seed".into(),
        message: format!("NoCloud seed {}", seed.instance_id),
    };
    if let Some(config) = &seed.sluice.config {
        store.stage(config)?;
        let r = store.commit(&author)?;
        outcome.done.push(format!(
            "configuration committed as revision {} ({} interfaces, {} static routes)",
            r.id,
            config.interfaces.len(),
            config.routes.len()
        ));
    }
    if let Some(a) = &seed.sluice.admin {
        let password = match (&a.password, &a.password_hash) {
            (Some(pw), _) => Password::Clear(pw),
            (None, Some(h)) => Password::Hash(h),
            // Token only: a password nobody knows; the token's holder can set one.
            (None, None) => Password::Unknown,
        };
        if crate::auth::create_first_admin(&store, &a.username, password)? {
            outcome.done.push(format!("administrator {} created: no setup token", a.username));
        } else {
            outcome.done.push(format!(
                "the router has an administrator already: {} not created",
                a.username
            ));
        }
        if let Some(secret) = &a.api_token {
            crate::auth::add_token(&store, &a.username, "cloud-init", Role::Admin, secret)?;
            outcome.done.push(format!("API token cloud-init added for {}", a.username));
        }
    }
    store.audit(sluice_store::AuditEntry {
        seq: 0,
        at_ms: 0,
        who: author.who.clone(),
        from: author.from.clone(),
        action: format!("provision {}", seed.instance_id),
        outcome: "ok".into(),
    })?;
    if let Some(m) = &seed.sluice.management {
        write_private(
            &state_dir.join(MANAGEMENT_FILE),
            serde_json::to_string_pretty(m)?.as_bytes(),
        )?;
        outcome.done.push("management settings kept".into());
    }
    if let Some(h) = &seed.hostname {
        std::fs::write(state_dir.join(HOSTNAME_FILE), format!("{h}\n"))?;
        outcome.done.push(format!("hostname {h}"));
    }
    if !seed.ignored.is_empty() {
        outcome.done.push(format!("cloud-config keys not acted on: {}", seed.ignored.join(", ")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::{
        path::PathBuf,
        sync::atomic::{AtomicU32, Ordering},
    };

    use super::*;

    /// A name no other test of this run uses.
    fn unique_name(prefix: &str) -> String {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        format!("{prefix}{}x{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
    }

    fn seed_dir(meta: &str, user: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(unique_name("sluice-seed-"));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("meta-data"), meta).expect("meta-data");
        std::fs::write(dir.join("user-data"), user).expect("user-data");
        dir
    }

    const GOOD: &str = "#cloud-config
hostname: edge1
package_update: false
sluice:
  admin:
    username: ops
    password: correct horse battery
    api_token: sluice_0123456789abcdef0123456789abcdef
  management:
    addresses: [192.0.2.10/24]
    gateways: [192.0.2.1]
    dns: [192.0.2.53]
  config:
    interfaces:
      eth1: {addresses: [10.71.1.1/24]}
      eth2: {addresses: [10.71.2.1/24], mtu: 1500}
    routes:
      - {prefix: 10.9.0.0/16, via: 10.71.2.2}
";

    #[test]
    fn a_seed_is_applied_once_and_keeps_the_management_settings() {
        let seed = seed_dir("instance-id: i-1\nlocal-hostname: ignored\n", GOOD);
        let state = std::env::temp_dir().join(unique_name("sluice-state-"));
        let net = state.join("network");
        let first = provision(&state, Some(&seed), Some(&net)).expect("applied");
        assert!(first.applied, "{first:?}");
        assert!(first.done.iter().any(|d| d.contains("package_update")), "{first:?}");
        {
            let store = Store::open(&state.join("db")).expect("store");
            assert!(store.is_set_up().expect("set up"));
            let c = store.config().expect("config");
            assert_eq!(c.routes.len(), 1);
            assert_eq!(c.interfaces["eth1"].addresses[0].to_string(), "10.71.1.1/24");
            let t = store
                .token_by_hash(&crate::auth::token_hash("sluice_0123456789abcdef0123456789abcdef"));
            assert_eq!(t.expect("lookup").expect("the token").owner, "ops");
        }
        let unit = std::fs::read_to_string(net.join("10-sluice-management.network")).expect("unit");
        assert!(unit.contains("Name=eth0") && unit.contains("DHCP=no"), "{unit}");
        assert!(unit.contains("Address=192.0.2.10/24") && unit.contains("Gateway=192.0.2.1"));
        assert_eq!(
            std::fs::read_to_string(state.join(HOSTNAME_FILE)).expect("hostname"),
            "edge1\n"
        );
        // The same instance again: nothing applied, the unit still written.
        std::fs::remove_file(net.join("10-sluice-management.network")).expect("rm");
        let again = provision(&state, Some(&seed), Some(&net)).expect("again");
        assert!(!again.applied, "{again:?}");
        assert!(net.join("10-sluice-management.network").exists());
        {
            let store = Store::open(&state.join("db")).expect("store");
            assert_eq!(store.history().expect("history").len(), 1, "one revision only");
        }
        // Without a seed (an upgraded system disk): the kept settings are used.
        let later = provision(&state, None, Some(&net)).expect("no seed");
        assert!(later.done.iter().any(|d| d.contains("192.0.2.10/24")), "{later:?}");
        let _ = std::fs::remove_dir_all(&state);
        let _ = std::fs::remove_dir_all(&seed);
    }

    #[test]
    fn a_bad_seed_is_refused_whole_with_every_reason() {
        let bad = "#cloud-config
sluice:
  admin: {username: 'bad name', password: short}
  management: {dhcp: false}
  config:
    interfaces:
      eth0: {addresses: [10.0.0.1/24]}
    routes:
      - {prefix: 10.9.0.1/16, via: 10.71.2.2}
";
        let seed = seed_dir("instance-id: i-2\n", bad);
        let state = std::env::temp_dir().join(unique_name("sluice-state-"));
        let err = provision(&state, Some(&seed), None).expect_err("refused").to_string();
        for needle in [
            "sluice.admin.username",
            "sluice.admin.password: at least",
            "no DHCP and no address",
            "management interface is not routed",
            "sluice.config.routes",
        ] {
            assert!(err.contains(needle), "{needle} in {err}");
        }
        assert!(!state.join("db").exists(), "nothing written");
        assert!(!state.join(INSTANCE_FILE).exists());
        let unknown = seed_dir("instance-id: i-3\n", "#cloud-config\nsluice:\n  admn: {}\n");
        let err = provision(&state, Some(&unknown), None).expect_err("refused");
        assert!(format!("{err:#}").contains("admn"), "{err:#}");
        let _ = std::fs::remove_dir_all(&state);
        let _ = std::fs::remove_dir_all(&seed);
        let _ = std::fs::remove_dir_all(&unknown);
    }

    #[test]
    fn no_settings_means_dhcp_on_the_first_nic() {
        let unit = Management::default().network_unit();
        assert!(unit.contains("Name=eth0") && unit.contains("DHCP=yes"), "{unit}");
        assert!(
            unit.contains("IPv6AcceptRA=yes"),
            "router advertisements with forwarding on: {unit}"
        );
    }
}
