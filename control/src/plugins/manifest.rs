//! What a plugin declares about itself, and whom the operator trusts to vouch for it: the
//! manifest (tables, quotas, failure policy, the component's hash), its checks, and the
//! publisher signatures an operator may require before anything is compiled.

use serde::{Deserialize, Serialize};

use super::{
    PluginError,
    util::{hex, sha256_hex, unhex},
};

/// Largest memory any plugin may ask for.
pub(super) const MAX_MEMORY: usize = 256 << 20;
/// Largest key-value quota a manifest may ask for: what one plugin may keep on the router's disk.
pub const MAX_KV_BYTES: usize = 64 << 20;

/// A hook table a plugin may write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Table {
    /// The prefix filter.
    Filter,
    /// The per-source rate limiter.
    RateLimit,
    /// Header sampling.
    Sample,
    /// Next-hop overrides by destination.
    Steer,
}

impl Table {
    /// Its name in manifests (and in what a publisher signs).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Filter => "filter",
            Self::RateLimit => "rate-limit",
            Self::Sample => "sample",
            Self::Steer => "steer",
        }
    }
}

/// Most rules a plugin may hold in each table (the manifest's `max_rules`); a batch that would
/// hold more fails for that plugin alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct MaxRules {
    /// Filter rules (source and destination, IPv4 and IPv6 together).
    #[serde(default = "default_max_filter")]
    pub filter: usize,
    /// Rate rules.
    #[serde(default = "default_max_rate")]
    pub rate_limit: usize,
    /// Steer rules.
    #[serde(default = "default_max_steer")]
    pub steer: usize,
}

impl Default for MaxRules {
    fn default() -> Self {
        Self {
            filter: default_max_filter(),
            rate_limit: default_max_rate(),
            steer: default_max_steer(),
        }
    }
}

/// The largest `max_rules` per table: what the dataplane's table holds.
pub const MAX_RULES: MaxRules = MaxRules {
    filter: sluice_common::hooks::MAX_FILTER_RULES as usize,
    rate_limit: sluice_common::hooks::MAX_RATE_RULES as usize,
    steer: sluice_common::hooks::MAX_STEER_RULES as usize,
};

const fn default_max_filter() -> usize {
    4096
}
const fn default_max_rate() -> usize {
    1024
}
const fn default_max_steer() -> usize {
    256
}

/// What happens to a plugin's rules when it is quarantined.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum FailurePolicy {
    /// Its rules are removed: traffic flows as if it were not there.
    #[default]
    FailOpen,
    /// Its rules stay: what it blocked stays blocked.
    FailClosed,
}

/// What a plugin declares about itself; the operator accepts it when adding the plugin.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Name, unique on the router: `[a-z0-9-]`, 1 to 64 characters.
    pub name: String,
    /// The plugin's version.
    pub version: String,
    /// The tables it may write.
    pub tables: Vec<Table>,
    /// Most operations one call may return.
    #[serde(default = "default_max_ops")]
    pub max_ops_per_call: usize,
    /// Memory cap, MiB.
    #[serde(default = "default_memory_mib")]
    pub memory_mib: usize,
    /// Longest a call may run, milliseconds.
    #[serde(default = "default_deadline_ms")]
    pub deadline_ms: u64,
    /// Quota of its key-value store, bytes.
    #[serde(default = "default_kv_bytes")]
    pub kv_bytes: usize,
    /// Most rules it may hold per table.
    #[serde(default)]
    pub max_rules: MaxRules,
    /// What happens to its rules when it fails.
    #[serde(default)]
    pub failure_policy: FailurePolicy,
    /// SHA-256 of the component, hex: the component must match it.
    pub sha256: String,
    /// The publisher's ed25519 public key, hex (32 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publisher: Option<String>,
    /// The publisher's signature of [`Manifest::signed_message`], hex (64 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

impl Manifest {
    /// A manifest with the default quotas, fail-open, unsigned.
    pub fn new(name: &str, version: &str, tables: &[Table], wasm: &[u8]) -> Self {
        Self {
            name: name.to_owned(),
            version: version.to_owned(),
            tables: tables.to_vec(),
            max_ops_per_call: default_max_ops(),
            memory_mib: default_memory_mib(),
            deadline_ms: default_deadline_ms(),
            kv_bytes: default_kv_bytes(),
            max_rules: MaxRules::default(),
            failure_policy: FailurePolicy::FailOpen,
            sha256: sha256_hex(wasm),
            publisher: None,
            signature: None,
        }
    }

    /// What a publisher signs: the plugin's name, version, component hash and the tables it
    /// may write (the quotas are the operator's to set).
    pub fn signed_message(&self) -> Vec<u8> {
        let mut tables: Vec<&str> = self.tables.iter().map(|t| t.name()).collect();
        tables.sort_unstable();
        format!(
            "sluice-plugin/1\n{}\n{}\n{}\n{}\n",
            self.name,
            self.version,
            self.sha256.to_ascii_lowercase(),
            tables.join(",")
        )
        .into_bytes()
    }

    /// Signs the manifest with a publisher's secret key (32-byte seed).
    pub fn sign(&mut self, seed: &[u8; 32]) {
        use ed25519_dalek::Signer as _;
        let key = ed25519_dalek::SigningKey::from_bytes(seed);
        self.publisher = Some(public_key(seed));
        self.signature = Some(hex(&key.sign(&self.signed_message()).to_bytes()));
    }
}

const fn default_max_ops() -> usize {
    10_000
}
const fn default_memory_mib() -> usize {
    32
}
const fn default_deadline_ms() -> u64 {
    100
}
const fn default_kv_bytes() -> usize {
    1 << 20
}

pub(super) fn check_manifest(m: &Manifest) -> Result<(), PluginError> {
    let bad = |s: String| Err(PluginError::Manifest(s));
    if m.name.is_empty()
        || m.name.len() > 64
        || !m.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return bad(format!("name {:?}: 1 to 64 of a-z, 0-9 and -", m.name));
    }
    // Compared in MiB: shifted into bytes, a huge value would lose its high bits and pass.
    if m.memory_mib == 0 || m.memory_mib > MAX_MEMORY >> 20 {
        return bad(format!("memory_mib {}: 1 to {}", m.memory_mib, MAX_MEMORY >> 20));
    }
    if m.deadline_ms == 0 || m.deadline_ms > 10_000 {
        return bad(format!("deadline_ms {}: 1 to 10000", m.deadline_ms));
    }
    if m.max_ops_per_call == 0 || m.max_ops_per_call > 100_000 {
        return bad(format!("max_ops_per_call {}: 1 to 100000", m.max_ops_per_call));
    }
    if m.kv_bytes > MAX_KV_BYTES {
        return bad(format!("kv_bytes {}: 0 to {MAX_KV_BYTES}", m.kv_bytes));
    }
    for (table, got, max) in [
        ("filter", m.max_rules.filter, MAX_RULES.filter),
        ("rate-limit", m.max_rules.rate_limit, MAX_RULES.rate_limit),
        ("steer", m.max_rules.steer, MAX_RULES.steer),
    ] {
        if got > max {
            return bad(format!("max_rules {table:?} {got}: 0 to {max}"));
        }
    }
    if m.sha256.len() != 64 || !m.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return bad("sha256: 64 hexadecimal digits".into());
    }
    Ok(())
}

/// The publishers an operator trusts, and whether unsigned plugins may run at all.
#[derive(Clone, Debug, Default)]
pub struct Trust {
    keys: Vec<ed25519_dalek::VerifyingKey>,
    allow_unsigned: bool,
}

impl Trust {
    /// Trusts these publisher keys (hex); `allow_unsigned` lets unsigned plugins run too.
    pub fn new(keys: &[String], allow_unsigned: bool) -> Result<Self, PluginError> {
        let keys = keys
            .iter()
            .map(|k| {
                let bytes: [u8; 32] =
                    unhex(k.trim()).and_then(|b| b.try_into().ok()).ok_or_else(|| {
                        PluginError::Signature(format!("{k:?} is not a 32-byte hex key"))
                    })?;
                ed25519_dalek::VerifyingKey::from_bytes(&bytes)
                    .map_err(|e| PluginError::Signature(format!("key {k}: {e}")))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { keys, allow_unsigned })
    }

    /// Unsigned plugins allowed, no publisher trusted (local development, the harness).
    pub fn unsigned_allowed() -> Self {
        Self { keys: Vec::new(), allow_unsigned: true }
    }

    /// Whether a manifest may run: signed by a trusted publisher, or unsigned where allowed.
    pub fn check(&self, m: &Manifest) -> Result<(), PluginError> {
        use ed25519_dalek::Verifier as _;
        let (Some(publisher), Some(signature)) = (&m.publisher, &m.signature) else {
            if m.publisher.is_some() || m.signature.is_some() {
                return Err(PluginError::Signature("a publisher key needs its signature".into()));
            }
            return if self.allow_unsigned {
                Ok(())
            } else {
                Err(PluginError::Signature(
                    "unsigned, and unsigned plugins are not allowed here".into(),
                ))
            };
        };
        let key = self
            .keys
            .iter()
            .find(|k| hex(k.as_bytes()).eq_ignore_ascii_case(publisher))
            .ok_or_else(|| {
                PluginError::Signature(format!("publisher {publisher} is not trusted"))
            })?;
        let sig: [u8; 64] = unhex(signature)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| PluginError::Signature("the signature is not 64 bytes of hex".into()))?;
        key.verify(&m.signed_message(), &ed25519_dalek::Signature::from_bytes(&sig))
            .map_err(|_| PluginError::Signature("the signature does not match the manifest".into()))
    }
}

/// The public key (hex) of a publisher's secret key (32-byte seed).
pub fn public_key(seed: &[u8; 32]) -> String {
    hex(ed25519_dalek::SigningKey::from_bytes(seed).verifying_key().as_bytes())
}
