//! Plugins: added (component and manifest), enabled, disabled, configured and removed through
//! the configuration, started by the daemon's plugin thread.
//!
//! Every change goes in this order: the plugin is checked whole by the plugin thread without
//! being started (manifest, publisher signature, the component's hash, a trial `init` with its
//! configuration), and its refusal is the caller's 422, naming the field at fault; then the
//! configuration is committed, an upload's component in the same transaction (a refused upload
//! or commit leaves nothing stored); only then is the plugin started.

use std::{sync::Arc, time::Duration};

use serde_json::Value;
use sluice_store::Plugin;

use super::{
    Api, Problem,
    http::{Call, Reply, created, ok},
    models,
    session::Caller,
};
use crate::plugins::{Command, Manifest, PluginError, Wanted};

/// How long the API waits for the plugin thread (a compile and an `init`).
const PLUGIN_WAIT: Duration = Duration::from_secs(30);

impl Api {
    /// Asks the plugin thread something and waits for the answer.
    fn ask_plugins<T>(
        &self,
        make: impl FnOnce(std::sync::mpsc::Sender<T>) -> Command,
    ) -> Result<T, Problem> {
        let unavailable = |d: &str| Problem::unavailable("plugins-unavailable", d);
        let tx = self.plugins.as_ref().ok_or_else(|| unavailable("this daemon runs no plugins"))?;
        let (reply, answer) = std::sync::mpsc::channel();
        tx.send(make(reply)).map_err(|_| unavailable("the plugin host is not running"))?;
        answer.recv_timeout(PLUGIN_WAIT).map_err(|_| unavailable("the plugin host did not answer"))
    }

    /// Checks a plugin with the plugin thread, starting nothing: the refusal is the caller's
    /// 422, naming the field at fault as `at` calls it.
    pub(super) fn check_plugin(&self, w: Wanted, at: &Fields) -> Result<(), Problem> {
        self.ask_plugins(|reply| Command::Check(w, reply))?
            .map_err(|e| Problem::field(&at.of(&e), e.to_string()))
    }

    /// Stops a plugin whose removal (`forget`: its key-value store goes too) or disabling was
    /// committed, before the request is answered: its rules are gone when the client hears
    /// back. Should the plugin thread not answer, the next sync stops it (logged).
    fn stop_committed(&self, name: &str, forget: bool) {
        if self.plugins.is_none() {
            return;
        }
        let asked =
            self.ask_plugins(|reply| Command::Stop { name: name.to_owned(), forget, reply });
        let why = match asked {
            Ok(Ok(_)) => return,
            Ok(Err(e)) => e,
            Err(p) => p.detail,
        };
        tracing::warn!(plugin = name, reason = why, "the plugin is stopped at the next sync");
    }

    /// Starts (or restarts) a plugin whose configuration was committed. It was checked before
    /// the commit: a refusal now (the plugin directory took its name meanwhile, the hook tables
    /// refused its rules) is logged, and the plugin is listed as not started.
    fn start_committed(&self, w: Wanted) {
        let name = w.manifest.name.clone();
        let why = match self.ask_plugins(|reply| Command::Put(w, reply)) {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e,
            Err(p) => p.detail,
        };
        tracing::error!(plugin = name, error = why, "a committed plugin did not start");
    }

    /// The stored plugin `name`, ready to run with `config`.
    fn stored_plugin(
        &self,
        name: &str,
        config: Option<&Value>,
    ) -> Result<(Plugin, Wanted), Problem> {
        let p = self
            .store
            .config()?
            .plugins
            .remove(name)
            .ok_or_else(|| Problem::not_found("no-plugin", format!("no plugin {name:?}")))?;
        let manifest = serde_json::from_value(p.manifest.clone()).map_err(|e| {
            Problem::field("manifest", format!("the stored manifest: {e}; remove the plugin"))
        })?;
        let wasm = self
            .store
            .wasm(&p.wasm_sha256)?
            .ok_or_else(|| Problem::conflict("no-component", "the component is not stored"))?;
        let config = config.unwrap_or(&p.config).to_string();
        let allow_match_all = p.allow_match_all;
        Ok((p, Wanted { manifest, wasm: Arc::new(wasm), config, allow_match_all }))
    }

    /// Commits the running configuration with plugin `name` set (or removed).
    fn commit_plugin(
        &self,
        name: &str,
        plugin: Option<Plugin>,
        c: &Caller,
        message: String,
    ) -> Result<(), Problem> {
        let mut config = self.store.config()?;
        match plugin {
            Some(p) => config.plugins.insert(name.to_owned(), p),
            None => config.plugins.remove(name),
        };
        self.store.commit_change(&config, &c.author(message), None)?;
        self.changed.notify_one();
        Ok(())
    }
}

/// How the fields of a plugin are named in a request: `POST /plugins` names its own, a
/// configuration names those of its entry `plugins.NAME`.
pub(super) enum Fields {
    /// `POST /plugins`, `PATCH` and `PUT /plugins/NAME/config`.
    Upload,
    /// The entry of this name in a configuration.
    Entry(String),
}

impl Fields {
    /// The field a plugin host's refusal is about.
    fn of(&self, e: &PluginError) -> String {
        let (upload, entry) = match e {
            PluginError::Manifest(_) => ("manifest", "manifest"),
            PluginError::Signature(_) => ("manifest.signature", "manifest.signature"),
            PluginError::Hash { .. } => ("manifest.sha256", "manifest.sha256"),
            PluginError::Load(_) => ("wasm_base64", "wasm_sha256"),
            // What is left is the trial `init`'s refusal of the configuration.
            _ => ("config", "config"),
        };
        match self {
            Self::Upload => upload.to_owned(),
            Self::Entry(name) => format!("plugins.{name}.{entry}"),
        }
    }
}

/// The manifest of a plugin entry, as the plugin host reads it.
pub(super) fn manifest_of(name: &str, p: &Plugin) -> Result<Manifest, Problem> {
    serde_json::from_value(p.manifest.clone())
        .map_err(|e| Problem::field(&format!("plugins.{name}.manifest"), e.to_string()))
}

/// What the plugin host reports, as JSON.
fn value_of(v: impl serde::Serialize) -> Value {
    serde_json::to_value(v).unwrap_or_default()
}

/// `GET /plugins`: those running (as the plugin host reports them), then those only stored.
pub(super) fn list(api: &Api, _: &Call<'_>) -> Reply {
    let running = api.ask_plugins(Command::List).unwrap_or_default();
    let stored = api.store.config()?.plugins;
    let mut out: Vec<models::PluginEntry> = Vec::new();
    for p in &running {
        out.push(models::PluginEntry {
            name: p.name.clone(),
            version: Value::String(p.version.clone()),
            tables: value_of(&p.tables),
            sha256: p.sha256.clone(),
            publisher: Some(p.publisher.clone()),
            source: p.source.to_owned(),
            status: value_of(&p.status),
            rules: p.rules,
            enabled: true,
            usage: Some(value_of(p.usage)),
            dropped_events: Some(p.dropped_events),
            config: stored.get(&p.name).map(|s| s.config.clone()),
        });
    }
    for (name, p) in stored.iter().filter(|(n, _)| !running.iter().any(|r| r.name == **n)) {
        let state = if p.enabled { "not-started" } else { "disabled" };
        out.push(models::PluginEntry {
            name: name.clone(),
            version: p.manifest["version"].clone(),
            tables: p.manifest["tables"].clone(),
            sha256: p.wasm_sha256.clone(),
            publisher: None,
            source: "store".into(),
            status: serde_json::json!({ "state": state }),
            rules: 0,
            enabled: p.enabled,
            usage: None,
            dropped_events: None,
            config: Some(p.config.clone()),
        });
    }
    ok(out)
}

/// `POST /plugins`: a component and its manifest (which must name the component's SHA-256),
/// checked, committed with its component and, unless disabled, started.
pub(super) fn add(api: &Api, call: &Call<'_>) -> Reply {
    let b: models::NewPlugin = call.body()?;
    let wasm = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &b.wasm_base64)
        .map_err(|e| Problem::field("wasm_base64", format!("not base64: {e}")))?;
    let manifest: Manifest = serde_json::from_value(b.manifest.clone())
        .map_err(|e| Problem::field("manifest", e.to_string()))?;
    let name = manifest.name.clone();
    let sha = crate::plugins::sha256_hex(&wasm);
    if !sha.eq_ignore_ascii_case(&manifest.sha256) {
        return Err(Problem::field(
            "manifest.sha256",
            format!("the component's SHA-256 is {sha}, the manifest says {}", manifest.sha256),
        ));
    }
    let config = b.config.unwrap_or_else(|| Value::Object(serde_json::Map::new()));
    let mut running = api.store.config()?;
    // A new upload keeps what the operator allowed the plugin of that name.
    let allow_match_all = running.plugins.get(&name).is_some_and(|p| p.allow_match_all);
    let w = Wanted { manifest, wasm: Arc::new(wasm), config: config.to_string(), allow_match_all };
    api.check_plugin(w.clone(), &Fields::Upload)?;
    let p = Plugin {
        wasm_sha256: sha.clone(),
        manifest: b.manifest,
        config,
        enabled: b.enabled,
        allow_match_all,
    };
    running.plugins.insert(name.clone(), p);
    let author = call.caller().author(format!("add plugin {name}"));
    api.store.commit_with_component(&running, &author, &sha, &w.wasm)?;
    api.changed.notify_one();
    if b.enabled {
        api.start_committed(w);
    }
    created(models::PluginAdded { name, sha256: sha, enabled: b.enabled })
}

/// `PATCH /plugins/{name}`: enabled (started) or disabled.
pub(super) fn enable(api: &Api, call: &Call<'_>) -> Reply {
    let name = call.param();
    let b: models::PluginPatch = call.body()?;
    let (mut p, w) = api.stored_plugin(name, None)?;
    let start = b.enabled && !p.enabled;
    if start {
        api.check_plugin(w.clone(), &Fields::Upload)?;
    }
    p.enabled = b.enabled;
    let verb = if b.enabled { "enable" } else { "disable" };
    api.commit_plugin(name, Some(p), call.caller(), format!("{verb} plugin {name}"))?;
    if start {
        api.start_committed(w);
    } else if !b.enabled {
        api.stop_committed(name, false);
    }
    ok(models::PluginEnabled { name: name.to_owned(), enabled: b.enabled })
}

/// `DELETE /plugins/{name}`: its rules and its store go too. Any entry of the configuration
/// can be removed, one whose manifest or component is unusable (an older version's) included.
pub(super) fn remove(api: &Api, call: &Call<'_>) -> Reply {
    let name = call.param();
    if !api.store.config()?.plugins.contains_key(name) {
        return Err(Problem::not_found("no-plugin", format!("no plugin {name:?}")));
    }
    api.commit_plugin(name, None, call.caller(), format!("remove plugin {name}"))?;
    api.stop_committed(name, true);
    ok(models::Removed { removed: name.to_owned() })
}

/// `PUT /plugins/{name}/config`: a running plugin restarts with it; one it refuses changes
/// nothing.
pub(super) fn configure(api: &Api, call: &Call<'_>) -> Reply {
    let name = call.param();
    let config: Value = call.body()?;
    let (mut p, w) = api.stored_plugin(name, Some(&config))?;
    api.check_plugin(w.clone(), &Fields::Upload)?;
    p.config = config;
    let enabled = p.enabled;
    api.commit_plugin(name, Some(p), call.caller(), format!("configure plugin {name}"))?;
    if enabled {
        api.start_committed(w);
    }
    ok(models::PluginConfigured { name: name.to_owned(), configured: true })
}

/// `GET /plugins/{name}/logs`: a running plugin's log.
pub(super) fn logs(api: &Api, call: &Call<'_>) -> Reply {
    let name = call.param();
    let log = api.ask_plugins(|reply| Command::Logs(name.to_owned(), reply))?;
    let Some(lines) = log else {
        return Err(Problem::not_found("not-running", format!("no running plugin {name:?}")));
    };
    ok(lines
        .into_iter()
        .map(|l| models::PluginLogLine {
            at_ms: l.at_ms,
            level: l.level.to_owned(),
            message: l.message,
        })
        .collect::<Vec<_>>())
}
