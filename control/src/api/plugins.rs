//! Plugins: added (component and manifest), enabled, disabled, configured and removed through
//! the configuration, started by the daemon's plugin thread, whose refusal is the caller's 422.

use std::{sync::Arc, time::Duration};

use serde_json::Value;
use sluice_store::Plugin;

use super::{
    Api, Problem,
    http::{Call, Reply, created, ok},
    models,
    session::Caller,
};
use crate::plugins::{Command, Wanted};

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

    /// Starts (or restarts) a plugin with the plugin thread: the refusal is the caller's 422.
    fn start_plugin(&self, w: Wanted) -> Result<(), Problem> {
        self.ask_plugins(|reply| Command::Put(w, reply))?.map_err(|m| Problem::field("plugin", m))
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
        let manifest = serde_json::from_value(p.manifest.clone())
            .map_err(|e| Problem::field("manifest", format!("the stored manifest: {e}")))?;
        let wasm = self
            .store
            .wasm(&p.wasm_sha256)?
            .ok_or_else(|| Problem::conflict("no-component", "the component is not stored"))?;
        let config = config.unwrap_or(&p.config).to_string();
        Ok((p, Wanted { manifest, wasm: Arc::new(wasm), config }))
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
            config: Some(p.config.clone()),
        });
    }
    ok(out)
}

/// `POST /plugins`: a component and its manifest (which must name the component's SHA-256),
/// stored and, unless disabled, started; committed once the plugin thread took it.
pub(super) fn add(api: &Api, call: &Call<'_>) -> Reply {
    let b: models::NewPlugin = call.body()?;
    let wasm = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &b.wasm_base64)
        .map_err(|e| Problem::field("wasm_base64", format!("not base64: {e}")))?;
    let manifest: crate::plugins::Manifest = serde_json::from_value(b.manifest.clone())
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
    let wasm = Arc::new(wasm);
    if b.enabled {
        let w = Wanted { manifest, wasm: Arc::clone(&wasm), config: config.to_string() };
        api.start_plugin(w)?;
    }
    api.store.put_wasm(&sha, &wasm)?;
    let p = Plugin { wasm_sha256: sha, manifest: b.manifest, config, enabled: b.enabled };
    let added = models::PluginAdded { name, sha256: p.wasm_sha256.clone(), enabled: p.enabled };
    api.commit_plugin(&added.name, Some(p), call.caller(), format!("add plugin {}", added.name))?;
    created(added)
}

/// `PATCH /plugins/{name}`: enabled (started) or disabled.
pub(super) fn enable(api: &Api, call: &Call<'_>) -> Reply {
    let name = call.param();
    let b: models::PluginPatch = call.body()?;
    let (mut p, w) = api.stored_plugin(name, None)?;
    if b.enabled && !p.enabled {
        api.start_plugin(w)?;
    }
    p.enabled = b.enabled;
    let verb = if b.enabled { "enable" } else { "disable" };
    api.commit_plugin(name, Some(p), call.caller(), format!("{verb} plugin {name}"))?;
    ok(models::PluginEnabled { name: name.to_owned(), enabled: b.enabled })
}

/// `DELETE /plugins/{name}`: its rules and its store go too.
pub(super) fn remove(api: &Api, call: &Call<'_>) -> Reply {
    let name = call.param();
    api.stored_plugin(name, None)?;
    api.commit_plugin(name, None, call.caller(), format!("remove plugin {name}"))?;
    ok(models::Removed { removed: name.to_owned() })
}

/// `PUT /plugins/{name}/config`: a running plugin restarts with it; one it refuses changes
/// nothing.
pub(super) fn configure(api: &Api, call: &Call<'_>) -> Reply {
    let name = call.param();
    let config: Value = call.body()?;
    let (mut p, w) = api.stored_plugin(name, Some(&config))?;
    if p.enabled {
        api.start_plugin(w)?;
    }
    p.config = config;
    api.commit_plugin(name, Some(p), call.caller(), format!("configure plugin {name}"))?;
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
