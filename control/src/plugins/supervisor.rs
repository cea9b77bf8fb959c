//! The supervisor: the plugins of a router, each event batch handed to every running one and
//! what it returns applied to the hook tables; a plugin that fails is quarantined, its rules
//! kept or removed as its failure policy says, and restarted after a back-off that doubles.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::{Duration, Instant},
};

use serde::Serialize;

use sluice_dataplane::hooks::{HookError, HookMaps, HookOp, HookTables, OwnerLimits};

use super::{
    Compiled, Event, FailurePolicy, Manifest, Plugin, PluginError, PluginHost, RouteLookup,
    instance::push_log, sha256_hex,
};

/// Restarts back off from this, doubling, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_mins(5);

/// Where a plugin's operations go: the hook tables.
pub trait TableSink {
    /// Applies one plugin's batch, all or nothing.
    fn apply(&mut self, owner: &str, ops: &[HookOp]) -> Result<(), HookError>;
    /// Moves a plugin to exactly these rules, without a gap.
    fn replace_owner(&mut self, owner: &str, ops: &[HookOp]) -> Result<(), HookError>;
    /// Removes everything a plugin wrote.
    fn remove_owner(&mut self, owner: &str) -> Result<(), HookError>;
    /// Sets what a plugin may hold (its manifest's `max_rules`, the operator's
    /// `allow_match_all`).
    fn set_limits(&mut self, owner: &str, limits: OwnerLimits);
}

impl<M: HookMaps> TableSink for HookTables<M> {
    fn apply(&mut self, owner: &str, ops: &[HookOp]) -> Result<(), HookError> {
        Self::apply(self, owner, ops)
    }
    fn replace_owner(&mut self, owner: &str, ops: &[HookOp]) -> Result<(), HookError> {
        Self::replace_owner(self, owner, ops)
    }
    fn remove_owner(&mut self, owner: &str) -> Result<(), HookError> {
        Self::remove_owner(self, owner)
    }
    fn set_limits(&mut self, owner: &str, limits: OwnerLimits) {
        Self::set_limits(self, owner, limits);
    }
}

/// A plugin's state, as the operator sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum Status {
    /// Running.
    Running,
    /// Stopped after a failure; restarted when `retry_in_ms` has passed.
    Quarantined {
        /// Why.
        reason: String,
        /// Failures in a row.
        failures: u32,
        /// Until the next restart.
        retry_in_ms: u64,
    },
}

/// One plugin under supervision: its component, configuration and state.
#[derive(Debug)]
pub struct Supervised {
    plugin: Plugin,
    pub(super) compiled: Compiled,
    pub(super) config: String,
    /// Why it is quarantined and until when.
    quarantine: Option<(String, Instant)>,
    /// Failures since it last handled events successfully: the back-off doubles with them.
    failures: u32,
}

impl Supervised {
    /// Its state.
    pub fn status(&self) -> Status {
        match &self.quarantine {
            None => Status::Running,
            Some((reason, until)) => Status::Quarantined {
                reason: reason.clone(),
                failures: self.failures,
                retry_in_ms: until.saturating_duration_since(Instant::now()).as_millis() as u64,
            },
        }
    }

    /// The plugin.
    pub fn plugin(&self) -> &Plugin {
        &self.plugin
    }
}

/// The plugins of a router, applying what they return to `sink`.
pub struct Manager<S: TableSink> {
    host: PluginHost,
    sink: S,
    plugins: BTreeMap<String, Supervised>,
    routes: Option<RouteLookup>,
    /// The plugin [`Manager::check`] compiled last, for the [`Manager::add`] that follows.
    checked: Option<Compiled>,
    /// The plugins the operator allows match-all drops and rate limits.
    match_all: BTreeSet<String>,
}

impl<S: TableSink> std::fmt::Debug for Manager<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager").field("plugins", &self.plugins.keys()).finish_non_exhaustive()
    }
}

impl<S: TableSink> Manager<S> {
    /// A manager with no plugins.
    pub fn new(host: PluginHost, sink: S, routes: Option<RouteLookup>) -> Self {
        Self {
            host,
            sink,
            plugins: BTreeMap::new(),
            routes,
            checked: None,
            match_all: BTreeSet::new(),
        }
    }

    /// The tables, for reading.
    pub fn sink(&self) -> &S {
        &self.sink
    }

    /// The tables, for maintenance outside plugin calls.
    pub fn sink_mut(&mut self) -> &mut S {
        &mut self.sink
    }

    /// Allows (or not) plugin `name` drop and rate-limit rules on `0.0.0.0/0` and `::/0`
    /// (the operator's `allow_match_all`), from its next [`Manager::add`] on.
    pub fn allow_match_all(&mut self, name: &str, allow: bool) {
        if allow {
            self.match_all.insert(name.to_owned());
        } else {
            self.match_all.remove(name);
        }
    }

    /// Whether plugin `name` may drop or rate-limit everything.
    pub fn allows_match_all(&self, name: &str) -> bool {
        self.match_all.contains(name)
    }

    /// Plugins by name.
    pub fn plugins(&self) -> &BTreeMap<String, Supervised> {
        &self.plugins
    }

    /// Checks a plugin as [`Manager::add`] would take it, changing nothing: its manifest, the
    /// publisher's signature, the component's hash, and a trial instance's `init` with
    /// `config` ([`PluginHost::trial`]). The compiled component is kept for the `add` that
    /// usually follows (once the configuration naming it is committed).
    pub fn check(
        &mut self,
        manifest: Manifest,
        wasm: &[u8],
        config: &str,
    ) -> Result<(), PluginError> {
        let compiled = self.host.compile(manifest, wasm)?;
        self.host.trial(&compiled, config, self.routes.clone())?;
        self.checked = Some(compiled);
        Ok(())
    }

    /// Adds a plugin, or replaces the one of the same name without a gap in its rules. A
    /// plugin that cannot be loaded or whose `init` fails is refused and nothing changes.
    pub fn add(
        &mut self,
        manifest: Manifest,
        wasm: &[u8],
        config: &str,
    ) -> Result<(), PluginError> {
        let name = manifest.name.clone();
        // The hash, checked when it was compiled, ties the manifest to these bytes.
        let compiled = match self.checked.take() {
            Some(c)
                if c.manifest == manifest
                    && sha256_hex(wasm).eq_ignore_ascii_case(&c.manifest.sha256) =>
            {
                c
            }
            _ => self.host.compile(manifest, wasm)?,
        };
        let mut plugin = self.host.instantiate(&compiled, self.routes.clone())?;
        let ops = plugin.init(config)?;
        let max = compiled.manifest.max_rules;
        self.sink.set_limits(
            &name,
            OwnerLimits {
                filter: max.filter,
                rate_limit: max.rate_limit,
                steer: max.steer,
                allow_match_all: self.match_all.contains(&name),
            },
        );
        self.sink.replace_owner(&name, &ops)?;
        push_log(&plugin.log, "host", format!("started with {} operations", ops.len()));
        self.plugins.insert(
            name,
            Supervised {
                plugin,
                compiled,
                config: config.to_owned(),
                quarantine: None,
                failures: 0,
            },
        );
        Ok(())
    }

    /// Removes a plugin and everything it wrote.
    pub fn remove(&mut self, name: &str) -> Result<bool, PluginError> {
        if self.plugins.remove(name).is_none() {
            return Ok(false);
        }
        self.sink.remove_owner(name)?;
        Ok(true)
    }

    /// Removes a plugin for good: everything it wrote, and its key-value store.
    pub fn forget(&mut self, name: &str) -> Result<bool, PluginError> {
        let removed = self.remove(name)?;
        self.host.forget_kv(name)?;
        Ok(removed)
    }

    /// Hands a batch of events to every running plugin and applies what each returns. A
    /// plugin that fails is quarantined; the others go on. Returns the failures.
    pub fn dispatch(&mut self, events: &[Event]) -> Vec<(String, PluginError)> {
        let mut failed = Vec::new();
        for (name, s) in &mut self.plugins {
            if s.quarantine.is_some() {
                continue;
            }
            let result = s
                .plugin
                .handle(events)
                .and_then(|ops| self.sink.apply(name, &ops).map_err(PluginError::from));
            match result {
                Ok(()) => s.failures = 0,
                Err(e) => {
                    quarantine(&mut self.sink, name, s, &e);
                    failed.push((name.clone(), e));
                }
            }
        }
        failed
    }

    /// Restarts the quarantined plugins whose back-off has passed: a fresh instance, `init`
    /// again. Returns the names restarted.
    pub fn restart_due(&mut self) -> Vec<String> {
        let now = Instant::now();
        let mut restarted = Vec::new();
        for (name, s) in &mut self.plugins {
            let Some((_, until)) = &s.quarantine else { continue };
            if now < *until {
                continue;
            }
            let failures = s.failures;
            let attempt =
                self.host.instantiate(&s.compiled, self.routes.clone()).and_then(|mut p| {
                    let ops = p.init(&s.config)?;
                    self.sink.replace_owner(name, &ops)?;
                    Ok(p)
                });
            match attempt {
                Ok(p) => {
                    // The log goes on across instances.
                    let log = Arc::clone(&s.plugin.log);
                    s.plugin = Plugin { log, ..p };
                    push_log(&s.plugin.log, "host", format!("restarted after {failures} failures"));
                    s.quarantine = None;
                    restarted.push(name.clone());
                }
                Err(e) => {
                    quarantine(&mut self.sink, name, s, &e);
                }
            }
        }
        restarted
    }
}

/// Stops a failed plugin: quarantined with its reason, its rules removed or kept as its policy
/// says, its restart pushed back.
fn quarantine<S: TableSink>(sink: &mut S, name: &str, s: &mut Supervised, e: &PluginError) {
    s.failures = s.failures.saturating_add(1);
    let backoff = FIRST_BACKOFF.saturating_mul(1 << (s.failures - 1).min(16)).min(MAX_BACKOFF);
    push_log(
        &s.plugin.log,
        "host",
        format!("quarantined ({e}); restart in {} s", backoff.as_secs()),
    );
    if s.plugin.manifest.failure_policy == FailurePolicy::FailOpen
        && let Err(err) = sink.remove_owner(name)
    {
        push_log(&s.plugin.log, "host", format!("removing its rules failed: {err}"));
    }
    s.quarantine = Some((e.to_string(), Instant::now() + backoff));
}
