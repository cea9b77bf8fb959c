//! The CLI's side of the REST API: `sluice plugin add|list|...`, `sluice route static ...`,
//! `sluice user ...` and `sluice config ...` (without `--state-dir`) talk to a running daemon
//! over HTTPS with an API token, checking its certificate against the router's authority
//! (`STATE/tls/ca.pem`). Request bodies are the server's own models ([`crate::api::models`]),
//! and so are the answers read here, problems included.

use std::{
    fmt::Write as _,
    io::Read as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{Context as _, bail};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;
use sluice_store::Role;

use crate::api::{Problem, models};

/// Where the API is and how to reach it.
#[derive(Debug, Clone, clap::Args)]
pub struct ApiArgs {
    /// The daemon's API.
    #[arg(long, env = "SLUICE_API", default_value = "https://127.0.0.1:8443", global = true)]
    pub api: String,
    /// An API token (`POST /api/v1/tokens`, or the console).
    #[arg(long, env = "SLUICE_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// The certificate authority the API's certificate must chain to: the router's
    /// `STATE/tls/ca.pem` (the default's `/var/lib/sluice/tls/ca.pem` when it exists), or the
    /// certificate itself (`STATE/tls/cert.pem`).
    #[arg(long, env = "SLUICE_CA", value_name = "FILE", global = true)]
    pub ca: Option<PathBuf>,
    /// Do not check the API's certificate (a lab on a trusted host only).
    #[arg(long, global = true)]
    pub insecure: bool,
}

/// The default state directory's authority.
const DEFAULT_CA: &str = "/var/lib/sluice/tls/ca.pem";

/// A client of one daemon's API.
#[derive(Debug)]
pub struct Client {
    agent: ureq::Agent,
    base: String,
    token: String,
}

impl Client {
    /// A client for `args`: a token is needed; so is a way to check the certificate.
    pub fn new(args: &ApiArgs) -> anyhow::Result<Self> {
        let token = args
            .token
            .clone()
            .context("an API token is needed: --token or SLUICE_TOKEN (make one in the console)")?;
        let mut tls = ureq::tls::TlsConfig::builder();
        if args.insecure {
            tls = tls.disable_verification(true);
        } else {
            let ca = match &args.ca {
                Some(p) => p.clone(),
                None if Path::new(DEFAULT_CA).exists() => PathBuf::from(DEFAULT_CA),
                None => bail!(
                    "pass --ca STATE/tls/ca.pem (the router's certificate authority) or --insecure"
                ),
            };
            let pem = std::fs::read(&ca).with_context(|| format!("reading {}", ca.display()))?;
            // Every certificate of the file is trusted: `ca.pem`, or `cert.pem` (the API's
            // certificate and the authority that signed it, or one an operator put there).
            let mut certs = Vec::new();
            for item in ureq::tls::parse_pem(&pem) {
                if let ureq::tls::PemItem::Certificate(c) =
                    item.with_context(|| format!("{}: bad PEM", ca.display()))?
                {
                    certs.push(c);
                }
            }
            if certs.is_empty() {
                bail!("{}: no PEM certificate", ca.display());
            }
            tls = tls.root_certs(ureq::tls::RootCerts::Specific(Arc::new(certs)));
        }
        let config = ureq::Agent::config_builder()
            .tls_config(tls.build())
            .http_status_as_error(false)
            .build();
        Ok(Self {
            agent: ureq::Agent::new_with_config(config),
            base: format!("{}/api/v1", args.api.trim_end_matches('/')),
            token,
        })
    }

    /// Calls `method path` without a body; the answer as `T` (`Value` for any JSON), or the
    /// problem it reports as an error (with every field at fault).
    pub fn call<T: DeserializeOwned>(&self, method: &str, path: &str) -> anyhow::Result<T> {
        self.run(method, path, String::new())
    }

    /// Calls `method path` with a JSON body (a model of [`crate::api::models`]); as [`Self::call`].
    pub fn send<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: &impl Serialize,
    ) -> anyhow::Result<T> {
        let body = serde_json::to_string(body).context("encoding the request")?;
        self.run(method, path, body)
    }

    fn run<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: String,
    ) -> anyhow::Result<T> {
        let url = format!("{}{path}", self.base);
        let auth = format!("Bearer {}", self.token);
        let request = ureq::http::Request::builder()
            .method(method)
            .uri(&url)
            .header("Authorization", auth)
            .header("Content-Type", "application/json");
        let request = request.body(body).context("building the request")?;
        let mut response = self.agent.run(request).with_context(|| format!("{method} {url}"))?;
        let status = response.status();
        let text = response
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_string()
            .with_context(|| format!("reading the answer to {method} {url}"))?;
        if status.is_success() {
            let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
            return serde_json::from_value(value)
                .with_context(|| format!("the answer to {method} {url}"));
        }
        let problem = serde_json::from_str::<Problem>(&text).ok();
        let detail = problem
            .as_ref()
            .map_or_else(|| status.canonical_reason().unwrap_or(""), |p| p.detail.as_str());
        let mut message = format!("{method} {path}: {} {detail}", status.as_u16());
        for e in problem.iter().flat_map(|p| &p.errors) {
            let _ = write!(message, "\n  {}: {}", e.field, e.message);
        }
        bail!(message)
    }
}

/// `sluice plugin` commands that go through the API.
#[derive(Debug, clap::Subcommand)]
pub enum PluginApiCmd {
    /// Add a plugin to the router (or a new version of one), running it at once.
    Add {
        #[command(flatten)]
        api: ApiArgs,
        /// The component (.wasm).
        wasm: PathBuf,
        /// Its manifest (JSON), signed by its publisher unless the router allows unsigned ones.
        #[arg(long)]
        manifest: PathBuf,
        /// Its configuration (a JSON file, `-` for standard input); `{}` without one.
        #[arg(long)]
        config: Option<String>,
        /// Store it without running it.
        #[arg(long)]
        disabled: bool,
    },
    /// List the router's plugins: version, tables, state, rules.
    List {
        #[command(flatten)]
        api: ApiArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a plugin: its rules go, and its key-value store.
    Remove {
        #[command(flatten)]
        api: ApiArgs,
        /// The plugin.
        name: String,
    },
    /// Give a plugin a new configuration (JSON file, `-` for standard input); a configuration
    /// the plugin refuses changes nothing.
    Config {
        #[command(flatten)]
        api: ApiArgs,
        /// The plugin.
        name: String,
        /// The configuration.
        file: String,
    },
    /// Run a stored plugin again.
    Enable {
        #[command(flatten)]
        api: ApiArgs,
        /// The plugin.
        name: String,
    },
    /// Stop a plugin, keeping it and its store.
    Disable {
        #[command(flatten)]
        api: ApiArgs,
        /// The plugin.
        name: String,
    },
    /// Print a plugin's log.
    Logs {
        #[command(flatten)]
        api: ApiArgs,
        /// The plugin.
        name: String,
    },
}

/// `sluice route static ...`.
#[derive(Debug, clap::Subcommand)]
pub enum RouteCmd {
    /// The static routes of the running configuration.
    List,
    /// Add a static route (committed at once).
    Add {
        /// Destination prefix.
        prefix: ipnet::IpNet,
        /// Gateway.
        #[arg(long)]
        via: Option<std::net::IpAddr>,
        /// Output interface.
        #[arg(long)]
        dev: Option<String>,
        /// Metric.
        #[arg(long, default_value_t = 0)]
        metric: u32,
        /// Roll the change back unless `sluice config confirm` comes within SECONDS.
        #[arg(long, value_name = "SECONDS")]
        confirm: Option<u64>,
    },
    /// Remove a static route.
    Remove {
        /// Destination prefix.
        prefix: ipnet::IpNet,
        /// Only the route with this metric.
        #[arg(long)]
        metric: Option<u32>,
    },
}

/// `sluice user ...`.
#[derive(Debug, clap::Subcommand)]
pub enum UserCmd {
    /// The users.
    List,
    /// Add a user; the password is read from `SLUICE_PASSWORD` or the first line of standard input.
    Add {
        /// Login name.
        name: String,
        /// `admin` or `viewer`.
        #[arg(long, default_value = "viewer", value_parser = role)]
        role: Role,
    },
    /// Remove a user and its tokens.
    Remove {
        /// Login name.
        name: String,
    },
}

/// `sluice config ...` through the API (without `--state-dir`).
#[derive(Debug, Clone, Copy)]
pub enum ConfigAction<'a> {
    /// The running configuration, as a file; with its secrets when `true` (administrators).
    Export(bool),
    /// Commit a configuration file.
    Import(&'a Path, &'a str),
    /// The revisions.
    History,
    /// Confirm a commit that waits for it.
    Confirm,
    /// Commit revision N again.
    Rollback(u64, &'a str),
}

fn read_json(source: &str) -> anyhow::Result<Value> {
    let text = if source == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).context("reading standard input")?;
        s
    } else {
        std::fs::read_to_string(source).with_context(|| format!("reading {source}"))?
    };
    serde_json::from_str(&text).with_context(|| format!("{source}: not JSON"))
}

/// A role by its name in the API (`admin`, `viewer`).
fn role(name: &str) -> Result<Role, String> {
    serde_json::from_value(Value::String(name.to_owned()))
        .map_err(|_| format!("{name:?} is not admin or viewer"))
}

fn print(v: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

impl PluginApiCmd {
    /// The API it goes to.
    pub fn api(&self) -> &ApiArgs {
        match self {
            Self::Add { api, .. }
            | Self::List { api, .. }
            | Self::Remove { api, .. }
            | Self::Config { api, .. }
            | Self::Enable { api, .. }
            | Self::Disable { api, .. }
            | Self::Logs { api, .. } => api,
        }
    }
}

/// Runs a `sluice plugin` command through the API.
pub fn plugin(cmd: PluginApiCmd) -> anyhow::Result<()> {
    let c = Client::new(cmd.api())?;
    match cmd {
        PluginApiCmd::Add { wasm, manifest, config, disabled, .. } => {
            let bytes =
                std::fs::read(&wasm).with_context(|| format!("reading {}", wasm.display()))?;
            let manifest: Value = serde_json::from_slice(
                &std::fs::read(&manifest)
                    .with_context(|| format!("reading {}", manifest.display()))?,
            )
            .with_context(|| format!("{}: not JSON", manifest.display()))?;
            let body = models::NewPlugin {
                manifest,
                wasm_base64: base64::Engine::encode(
                    &base64::engine::general_purpose::STANDARD,
                    bytes,
                ),
                config: config.as_deref().map(read_json).transpose()?,
                enabled: !disabled,
            };
            print(&c.send("POST", "/plugins", &body)?)
        }
        PluginApiCmd::List { json, .. } => {
            if json {
                return print(&c.call("GET", "/plugins")?);
            }
            let list: Vec<models::PluginEntry> = c.call("GET", "/plugins")?;
            for p in list {
                let tables: Vec<&str> =
                    p.tables.as_array().into_iter().flatten().filter_map(Value::as_str).collect();
                let reason = p.status["reason"].as_str().map(|r| format!(" ({r})"));
                println!(
                    "{:<20} {:<10} {:<12}{} tables {} rules {} from {}",
                    p.name,
                    p.version.as_str().unwrap_or("?"),
                    p.status["state"].as_str().unwrap_or("?"),
                    reason.unwrap_or_default(),
                    tables.join(","),
                    p.rules,
                    p.source,
                );
            }
            Ok(())
        }
        PluginApiCmd::Remove { name, .. } => print(&c.call("DELETE", &format!("/plugins/{name}"))?),
        PluginApiCmd::Config { name, file, .. } => {
            let config = read_json(&file)?;
            print(&c.send("PUT", &format!("/plugins/{name}/config"), &config)?)
        }
        PluginApiCmd::Enable { name, .. } => {
            let body = models::PluginPatch { enabled: true };
            print(&c.send("PATCH", &format!("/plugins/{name}"), &body)?)
        }
        PluginApiCmd::Disable { name, .. } => {
            let body = models::PluginPatch { enabled: false };
            print(&c.send("PATCH", &format!("/plugins/{name}"), &body)?)
        }
        PluginApiCmd::Logs { name, .. } => {
            let log: Vec<models::PluginLogLine> =
                c.call("GET", &format!("/plugins/{name}/logs"))?;
            for l in log {
                println!("{} {:<5} {}", l.at_ms, l.level, l.message);
            }
            Ok(())
        }
    }
}

/// Runs a `sluice route static` command through the API.
pub fn route(args: &ApiArgs, cmd: RouteCmd) -> anyhow::Result<()> {
    let c = Client::new(args)?;
    match cmd {
        RouteCmd::List => print(&c.call("GET", "/routes/static")?),
        RouteCmd::Add { prefix, via, dev, metric, confirm } => {
            let body = models::StaticRoute { prefix, via, dev, metric };
            let path = match confirm {
                Some(s) => format!("/routes/static?confirm_seconds={s}"),
                None => "/routes/static".to_owned(),
            };
            print(&c.send("POST", &path, &body)?)
        }
        RouteCmd::Remove { prefix, metric } => {
            let body = models::RouteKey { prefix, metric };
            print(&c.send("DELETE", "/routes/static", &body)?)
        }
    }
}

/// Runs a `sluice user` command through the API.
pub fn user(args: &ApiArgs, cmd: UserCmd) -> anyhow::Result<()> {
    let c = Client::new(args)?;
    match cmd {
        UserCmd::List => print(&c.call("GET", "/users")?),
        UserCmd::Add { name, role } => {
            let password = if let Ok(p) = std::env::var("SLUICE_PASSWORD") {
                p
            } else {
                let mut line = String::new();
                std::io::stdin().read_line(&mut line).context("reading the password")?;
                line.trim_end_matches(['\r', '\n']).to_owned()
            };
            let body = models::NewUser { name, password, role };
            print(&c.send("POST", "/users", &body)?)
        }
        UserCmd::Remove { name } => print(&c.call("DELETE", &format!("/users/{name}"))?),
    }
}

/// Runs a `sluice config` command through the API.
pub fn config(args: &ApiArgs, action: ConfigAction<'_>) -> anyhow::Result<()> {
    let c = Client::new(args)?;
    match action {
        ConfigAction::Export(secrets) => {
            let path = if secrets { "/config/export?secrets=true" } else { "/config/export" };
            print(&c.call("GET", path)?)
        }
        ConfigAction::Import(file, message) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("reading {}", file.display()))?;
            let path = format!("/config/import?message={}", urlencode(message));
            // The file as `sluice config export` writes it: the server reads it whole.
            let file_body: Value = serde_json::from_str(&text)
                .with_context(|| format!("{}: not JSON", file.display()))?;
            print(&c.send("POST", &path, &file_body)?)
        }
        ConfigAction::History => {
            let history: Vec<models::RevisionInfo> = c.call("GET", "/config/revisions")?;
            for r in history {
                let a = r.author;
                println!("{}  {}  {}@{}  {}", r.id, r.at_ms, a.who, a.from, a.message);
            }
            Ok(())
        }
        ConfigAction::Confirm => print(&c.call("POST", "/config/confirm")?),
        ConfigAction::Rollback(revision, message) => {
            let body = models::Rollback { revision, message: message.to_owned() };
            print(&c.send("POST", "/config/rollback", &body)?)
        }
    }
}

/// `sluice protocols`: the routing daemon's BGP sessions and OSPF instances.
pub fn protocols(args: &ApiArgs, json: bool) -> anyhow::Result<()> {
    let c = Client::new(args)?;
    let answer: models::Protocols = c.call("GET", "/protocols")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    } else {
        print!("{}", protocols_text(&answer));
    }
    Ok(())
}

/// The protocols as a table: name, kind, state, since, neighbour, routes, info.
pub fn protocols_text(p: &models::Protocols) -> String {
    use std::fmt::Write as _;
    let mut out = format!(
        "{:<16} {:<5} {:<6} {:<20} {:<26} {:>9} {:>9} {:>9}  {}\n",
        "NAME", "KIND", "STATE", "SINCE", "NEIGHBOR", "IMPORTED", "EXPORTED", "FILTERED", "INFO"
    );
    for s in &p.protocols {
        let info = match (&s.last_error, s.info.is_empty()) {
            (Some(e), _) if !s.info.contains(e.as_str()) => format!("{} (last error: {e})", s.info),
            _ => s.info.clone(),
        };
        let _ = writeln!(
            out,
            "{:<16} {:<5} {:<6} {:<20} {:<26} {:>9} {:>9} {:>9}  {}",
            s.name,
            s.kind,
            s.state,
            s.since,
            s.neighbor.as_deref().unwrap_or("-"),
            s.routes.imported,
            s.routes.exported,
            s.routes.filtered,
            info.trim()
        );
    }
    if p.protocols.is_empty() {
        out.push_str("no BGP or OSPF protocols configured (protocols in the configuration)\n");
    }
    out
}

/// Percent-encodes a query value.
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
