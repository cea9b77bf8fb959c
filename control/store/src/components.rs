//! The plugins' components (tree `wasm`, by SHA-256 in lower-case hex) as the revisions that
//! name them keep them.
//!
//! A component is written in the same transaction as the first revision that names it
//! ([`Store::commit_with_component`]): an upload refused, or whose commit fails, leaves nothing.
//! Components are collected at each commit and at each open; those kept
//! ([`Store::kept_components`]) are the ones named by the running configuration, the
//! candidate, the revision a commit waiting for its confirmation rolls back to, and the newest
//! [`COMPONENT_REVISIONS`] revisions. A rollback further back finds the components of its
//! plugins gone and is refused, naming them: the plugin is uploaded again.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use crate::{CANDIDATE, Config, FieldError, REV, Store, StoreError, decode};

/// The newest revisions whose components are kept, beside those of the running configuration,
/// the candidate and a pending confirmation's fallback.
pub const COMPONENT_REVISIONS: usize = 10;

pub(crate) const WASM_TREE: &str = "wasm";

/// Only the plugins' component hashes of a stored configuration: reading them skips the rest,
/// which for a configuration of many routes is most of the record.
#[derive(Deserialize, Default)]
struct ConfigRefs {
    #[serde(default)]
    plugins: BTreeMap<String, PluginRef>,
}

#[derive(Deserialize)]
struct PluginRef {
    wasm_sha256: String,
}

#[derive(Deserialize)]
struct RevisionRefs {
    config: ConfigRefs,
}

impl ConfigRefs {
    fn hashes(self) -> impl Iterator<Item = String> {
        self.plugins.into_values().map(|p| p.wasm_sha256.to_ascii_lowercase())
    }
}

/// What a collection found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Collected {
    /// Components deleted.
    pub removed: usize,
    /// Their bytes.
    pub removed_bytes: u64,
    /// Components kept.
    pub kept: usize,
    /// Their bytes.
    pub kept_bytes: u64,
}

impl Store {
    /// Keeps a plugin's component under its SHA-256 (hex, given by the caller, who checked it):
    /// for components a commit names, [`Store::commit_with_component`] does this in the same
    /// transaction.
    pub fn put_wasm(&self, sha256: &str, wasm: &[u8]) -> Result<(), StoreError> {
        self.wasm_tree()?.insert(sha256.as_bytes(), wasm)?;
        self.db.flush()?;
        Ok(())
    }

    /// A component by its SHA-256.
    pub fn wasm(&self, sha256: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.wasm_tree()?.get(sha256.as_bytes())?.map(|v| v.to_vec()))
    }

    fn wasm_tree(&self) -> Result<sled::Tree, StoreError> {
        Ok(self.db.open_tree(WASM_TREE)?)
    }

    /// The stored components: SHA-256 (hex) -> size in bytes.
    pub fn components(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        self.wasm_tree()?
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                Ok((String::from_utf8_lossy(&k).into_owned(), v.len() as u64))
            })
            .collect()
    }

    /// Whether the component of this SHA-256 (hex, either case) is stored.
    pub fn has_component(&self, sha256: &str) -> Result<bool, StoreError> {
        Ok(self.wasm_tree()?.contains_key(sha256.to_ascii_lowercase().as_bytes())?)
    }

    /// The components [`Store::collect_components`] keeps: those of the running configuration,
    /// the candidate, the revision a pending confirmation falls back to, and the newest
    /// [`COMPONENT_REVISIONS`] revisions.
    pub fn kept_components(&self) -> Result<BTreeSet<String>, StoreError> {
        let mut kept = BTreeSet::new();
        let revisions = self.tree.scan_prefix(REV.as_bytes()).values().rev();
        for v in revisions.take(COMPONENT_REVISIONS) {
            kept.extend(decode::<RevisionRefs>(&v?)?.config.hashes());
        }
        if let Some(id) = self.running()?.map(|r| r.id) {
            kept.extend(self.revision_refs(id)?);
        }
        if let Some(previous) = self.pending_confirm()?.and_then(|p| p.previous) {
            kept.extend(self.revision_refs(previous)?);
        }
        if let Some(c) = self.tree.get(CANDIDATE)? {
            kept.extend(decode::<ConfigRefs>(&c)?.hashes());
        }
        Ok(kept)
    }

    fn revision_refs(&self, id: u64) -> Result<impl Iterator<Item = String>, StoreError> {
        let bytes = self.tree.get(crate::rev_key(id))?.ok_or(StoreError::NoRevision(id))?;
        Ok(decode::<RevisionRefs>(&bytes)?.config.hashes())
    }

    /// Deletes the components [`Store::kept_components`] does not keep. Runs at each commit and
    /// each open; `running` (the configuration just committed, if the caller has it) spares
    /// reading any revision when it names every stored component, the usual case.
    pub(crate) fn collect_components_after(
        &self,
        running: Option<&Config>,
    ) -> Result<Collected, StoreError> {
        let tree = self.wasm_tree()?;
        let stored = self.components()?;
        if let Some(c) = running
            && stored
                .keys()
                .all(|k| c.plugins.values().any(|p| p.wasm_sha256.eq_ignore_ascii_case(k)))
        {
            return Ok(Collected {
                kept: stored.len(),
                kept_bytes: stored.values().sum(),
                ..Collected::default()
            });
        }
        let kept = self.kept_components()?;
        let mut out = Collected::default();
        for (sha, len) in stored {
            if kept.contains(&sha) {
                out.kept += 1;
                out.kept_bytes += len;
            } else {
                tree.remove(sha.as_bytes())?;
                out.removed += 1;
                out.removed_bytes += len;
            }
        }
        if out.removed > 0 {
            self.db.flush()?;
        }
        Ok(out)
    }

    /// Deletes the components no kept revision names ([`Store::kept_components`]).
    pub fn collect_components(&self) -> Result<Collected, StoreError> {
        self.collect_components_after(None)
    }

    /// What is wrong with the plugin entries of `config` that are new or changed against the
    /// running configuration, as far as the store can tell: each names a stored component, and
    /// has a manifest (an object) naming the entry and that component. The plugin host's own
    /// checks (the manifest's fields, the publisher's signature, the configuration) are its
    /// caller's. Entries unchanged since they were committed are not judged again, so that an
    /// entry an older version accepted can still be carried along, disabled or removed.
    pub fn plugin_problems(&self, config: &Config) -> Result<Vec<FieldError>, StoreError> {
        let running = self.config()?;
        let mut errors = Vec::new();
        for (name, p) in &config.plugins {
            if running.plugins.get(name) == Some(p) {
                continue;
            }
            let mut err = |field: &str, message: String| {
                errors.push(FieldError { field: format!("plugins.{name}{field}"), message });
            };
            if !self.has_component(&p.wasm_sha256)? {
                err(
                    ".wasm_sha256",
                    format!(
                        "no component {} is stored: add the plugin with its component \
                         (POST /plugins) first",
                        p.wasm_sha256
                    ),
                );
            }
            let Some(m) = p.manifest.as_object() else {
                err(
                    ".manifest",
                    "missing: a plugin needs the manifest it was accepted with".into(),
                );
                continue;
            };
            match m.get("name").and_then(|n| n.as_str()) {
                Some(n) if n == name => {}
                Some(n) => err(".manifest.name", format!("{n:?}, but the entry is {name:?}")),
                None => err(".manifest.name", "missing".into()),
            }
            match m.get("sha256").and_then(|n| n.as_str()) {
                Some(h) if h.eq_ignore_ascii_case(&p.wasm_sha256) => {}
                Some(h) => err(
                    ".manifest.sha256",
                    format!("{h}, but the entry's component is {}", p.wasm_sha256),
                ),
                None => err(".manifest.sha256", "missing".into()),
            }
        }
        Ok(errors)
    }
}
