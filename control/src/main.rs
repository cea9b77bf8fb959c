//! `sluice`: the daemon and the command line of the Sluice router.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use sluice::{daemon, listener::Limits, show};
use sluice_core::rib;
use sluice_dataplane::{self as dataplane, DEFAULT_PIN_DIR, ModeRequest, PinDir};

#[derive(Debug, Parser)]
#[command(name = "sluice", version, about = "Sluice: an XDP router appliance")]
struct Cli {
    /// Where the dataplane's maps and XDP links are pinned (on bpffs).
    #[arg(long, global = true, env = "SLUICE_PIN_DIR", default_value = DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Load the dataplane, attach it and mirror the kernel's routing state into it.
    Daemon {
        /// Interfaces to forward between (repeat or separate with commas); with `--state-dir`,
        /// the configuration's interfaces (`attach: true`) are routed ports too.
        #[arg(long, value_delimiter = ',', num_args = 1..)]
        attach: Vec<String>,
        /// XDP attach mode: native with fallback to generic (auto), or only one of them.
        #[arg(long, value_enum, default_value_t = ModeRequest::Auto)]
        xdp_mode: ModeRequest,
        /// The kernel routing table to mirror (254 is main).
        #[arg(long, default_value_t = rib::TABLE_MAIN)]
        table: u32,
        /// Receive buffer of the netlink event socket in bytes; an overrun costs a full resync.
        #[arg(long, value_name = "BYTES", default_value_t = dataplane::mirror::DEFAULT_RECV_BUFFER)]
        netlink_recv_buffer: usize,
        /// Run the plugins of this directory: NAME.json (manifest), NAME.wasm and, optionally,
        /// NAME.config.json for each.
        #[arg(long, value_name = "DIR")]
        plugins: Option<PathBuf>,
        /// Allow the plugin NAME of the plugin directory drop and rate-limit rules on `0.0.0.0/0`
        /// and `::/0` (they stop all transit; refused without it); repeat for more plugins. The
        /// configuration store's plugins take `plugins.NAME.allow_match_all` instead.
        #[arg(long, value_name = "NAME", requires = "plugins")]
        plugin_allow_match_all: Vec<String>,
        /// The plugin publishers trusted: a file of ed25519 public keys, hex, one a line.
        #[arg(long, value_name = "FILE")]
        trusted_keys: Option<PathBuf>,
        /// Run unsigned plugins too.
        #[arg(long)]
        allow_unsigned_plugins: bool,
        /// Where the configuration store lives; its static routes are applied to the kernel at
        /// start, and an unconfirmed commit is rolled back when its deadline passes.
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
        /// Serve the REST API over HTTPS here (needs --state-dir), e.g. 127.0.0.1:8443; repeat
        /// for more addresses. `ADDR:PORT%INTERFACE` answers only connections that arrive
        /// through that interface (e.g. `[::]:443%eth0`: every address of eth0).
        #[arg(long, value_name = "ADDR:PORT[%IF]", requires = "state_dir")]
        listen: Vec<sluice::listener::Listen>,
        /// Run BIRD 2 (this program, e.g. /usr/sbin/bird) as the routing daemon, configured from
        /// the configuration's `protocols` (needs --state-dir; its files go to STATE/bird).
        #[arg(long, value_name = "PROGRAM", requires = "state_dir")]
        bird: Option<PathBuf>,
        /// Connections to the API open at once, all sources together; beyond, closed at once.
        #[arg(long, value_name = "N", default_value_t = Limits::default().max_connections)]
        api_max_connections: usize,
        /// Connections to the API open at once from one source (an IPv4 address, an IPv6 /64).
        #[arg(long, value_name = "N", default_value_t = Limits::default().max_per_source)]
        api_max_connections_per_source: usize,
        /// Seconds a connection to the API has to complete its TLS handshake.
        #[arg(long, value_name = "SECS", default_value_t = Limits::default().handshake_timeout.as_secs_f64())]
        api_handshake_timeout: f64,
        /// Seconds a client has to send a request's head, from its first byte (HTTP/1).
        #[arg(long, value_name = "SECS", default_value_t = Limits::default().header_timeout.as_secs_f64())]
        api_header_timeout: f64,
        /// Seconds a connection to the API may stay without a byte either way.
        #[arg(long, value_name = "SECS", default_value_t = Limits::default().idle_timeout.as_secs_f64())]
        api_idle_timeout: f64,
        /// Concurrent streams of an HTTP/2 connection to the API.
        #[arg(long, value_name = "N", default_value_t = Limits::default().max_streams)]
        api_max_streams: u32,
        /// Nice value of the daemon's threads, -20 to 19. Below 0 the mirror keeps pace with a
        /// routing daemon loading a full table on the same cores (the route record's writer and
        /// the plugins run at their own, lower priorities); 0 leaves the daemon as started.
        #[arg(
            long,
            default_value_t = -10,
            allow_negative_numbers = true,
            value_parser = clap::value_parser!(i32).range(-20..=19)
        )]
        nice: i32,
    },
    /// Show the dataplane's counters per interface and reason, and what its lookup tables hold.
    Stats {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Refresh every SECS seconds with rates, until interrupted.
        #[arg(long, value_name = "SECS")]
        watch: Option<f64>,
    },
    /// Show the routes the dataplane holds, with their next hops.
    Routes {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check the lookup tables the XDP program reads against the routes the daemon compiled
    /// (`sluice routes`), entry by entry; exit 1 and name each difference when they disagree.
    Verify {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show the rules in the dataplane's hook tables (what plugins wrote), with their counters.
    Hooks {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Detach XDP from every interface and remove the pinned maps (refused while a daemon holds
    /// the pin directory; it waits a few seconds for one that is stopping).
    Detach {
        /// Detach even while a daemon holds the pin directory (it keeps running, forwarding
        /// nothing until it is restarted).
        #[arg(long)]
        force: bool,
    },
    /// The configuration: through a running daemon's API, or, with `--state-dir`, the store
    /// itself while no daemon holds it (backups, restores, first-boot provisioning).
    Config {
        /// Use the store in this state directory (`DIR/db`) directly, not the API.
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
        #[command(flatten)]
        api: sluice::client::ApiArgs,
        #[command(subcommand)]
        cmd: ConfigCmd,
    },
    /// Plugins: run one locally, sign one, or manage a router's through its API (the API's
    /// options go after the subcommand: `sluice plugin list --api URL`).
    Plugin {
        #[command(subcommand)]
        cmd: PluginCmd,
    },
    /// Routes of a router's configuration, through its API.
    Route {
        #[command(flatten)]
        api: sluice::client::ApiArgs,
        #[command(subcommand)]
        cmd: RouteTop,
    },
    /// The routing daemon's BGP sessions and OSPF instances (state, since, neighbour, routes),
    /// through a router's API.
    Protocols {
        #[command(flatten)]
        api: sluice::client::ApiArgs,
        /// Print JSON (as `GET /api/v1/protocols`).
        #[arg(long)]
        json: bool,
    },
    /// Users of a router's API and console, through its API.
    User {
        #[command(flatten)]
        api: sluice::client::ApiArgs,
        #[command(subcommand)]
        cmd: sluice::client::UserCmd,
    },
    /// Provision the appliance at boot: apply a cloud-init `NoCloud` seed (once per instance) to the state
    /// directory, and write the management interface's systemd-networkd unit.
    Provision {
        /// The state directory (the daemon's `--state-dir`; no daemon may be using it).
        #[arg(long, value_name = "DIR")]
        state_dir: PathBuf,
        /// The mounted seed: a directory with `meta-data` and `user-data`.
        #[arg(long, value_name = "DIR")]
        seed: Option<PathBuf>,
        /// Write the management interface's networkd unit here (e.g. /run/systemd/network).
        #[arg(long, value_name = "DIR")]
        network_dir: Option<PathBuf>,
        /// Check the seed only: print what is wrong, apply nothing.
        #[arg(long, requires = "seed")]
        check: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCmd {
    /// Print the running configuration (JSON), for a backup; secrets (BGP passwords) read
    /// `(redacted)` unless `--secrets` (an administrator's), and a redacted file imported
    /// again keeps the router's.
    Export {
        /// Include the secrets.
        #[arg(long)]
        secrets: bool,
    },
    /// Validate a configuration file (JSON, as exported) and commit it as a new revision.
    Import {
        /// The file.
        file: PathBuf,
        /// Commit message.
        #[arg(long, short, default_value = "imported")]
        message: String,
    },
    /// List the revisions.
    History,
    /// Confirm a commit that waits for its confirmation.
    Confirm,
    /// Commit an earlier revision again.
    Rollback {
        /// The revision.
        revision: u64,
        /// Commit message.
        #[arg(long, short, default_value = "rollback")]
        message: String,
    },
    /// Check the store against its record (needs --state-dir): exit 1 when the daemon would
    /// refuse it (emptied, truncated or replaced on disk).
    Verify,
    /// Make a refused store usable again (needs --state-dir, no daemon running): restore a
    /// backup as a new revision, or accept the store as it is.
    Repair {
        /// Restore this configuration file (a `config export`) as a new revision.
        #[arg(
            long,
            value_name = "FILE",
            conflicts_with = "accept",
            required_unless_present = "accept"
        )]
        from: Option<PathBuf>,
        /// Accept the store as it is (its record is rewritten to match it).
        #[arg(long)]
        accept: bool,
    },
}

#[derive(Debug, Subcommand)]
enum RouteTop {
    /// Static routes.
    Static {
        #[command(subcommand)]
        cmd: sluice::client::RouteCmd,
    },
}

#[derive(Debug, Subcommand)]
enum PluginCmd {
    /// Run a plugin locally (no router, no root): `init` with its configuration, then
    /// `handle` with scripted events; print the operations it returns, the rules they make and
    /// its log, as JSON.
    Run {
        /// The component (.wasm).
        wasm: PathBuf,
        /// Its manifest (JSON); without one, the plugin is named after the file, may write the
        /// filter, rate-limit and sample tables (not steer) and has the default limits.
        #[arg(long)]
        manifest: Option<PathBuf>,
        /// Its configuration: a file, or `-` for none (`{}`).
        #[arg(long, default_value = "-")]
        config: String,
        /// Events (JSON): an array of batches, each an array of events.
        #[arg(long)]
        events: Option<PathBuf>,
    },
    /// Make a publisher key: writes the secret seed (hex) to FILE, prints the public key.
    Keygen {
        /// Where the secret key goes (created, mode 0600).
        file: PathBuf,
    },
    /// Sign a manifest (in place) with a publisher's secret key.
    Sign {
        /// The secret key file `sluice plugin keygen` made.
        #[arg(long)]
        key: PathBuf,
        /// The manifest (JSON).
        manifest: PathBuf,
    },
    #[command(flatten)]
    Api(sluice::client::PluginApiCmd),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Daemon { .. }) {
        quiet_on_closed_pipe();
    }
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice: error: {e:#}");
            let permission = e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::PermissionDenied)
                    || c.to_string().contains("Operation not permitted")
            });
            if permission && !nix::unistd::geteuid().is_root() {
                eprintln!("sluice: hint: this needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN)");
            }
            std::process::ExitCode::FAILURE
        }
    }
}

/// Lets a closed standard output end the command the way it ends `cat` (`sluice routes | head`):
/// by `SIGPIPE`, instead of a panic in `println!`. Not for the daemon, whose sockets must see
/// `EPIPE` as an error rather than die of it.
fn quiet_on_closed_pipe() {
    #[expect(unsafe_code, reason = "signal(2) is a C function")]
    // SAFETY: restores the default disposition before any thread starts; no handler runs.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

#[expect(clippy::too_many_lines, reason = "one arm a subcommand")]
fn run(cli: Cli) -> anyhow::Result<()> {
    sluice::init_logging();
    let pin = PinDir::new(&cli.pin_dir);
    match cli.command {
        Command::Daemon {
            attach,
            xdp_mode,
            table,
            netlink_recv_buffer,
            plugins,
            plugin_allow_match_all,
            trusted_keys,
            allow_unsigned_plugins,
            state_dir,
            listen,
            bird,
            api_max_connections,
            api_max_connections_per_source,
            api_handshake_timeout,
            api_header_timeout,
            api_idle_timeout,
            api_max_streams,
            nice,
        } => {
            let secs = |name: &str, s: f64| {
                Duration::try_from_secs_f64(s)
                    .ok()
                    .filter(|d| !d.is_zero())
                    .with_context(|| format!("--{name} {s}: a positive number of seconds"))
            };
            let api_limits = Limits {
                max_connections: api_max_connections.max(1),
                max_per_source: api_max_connections_per_source.max(1),
                handshake_timeout: secs("api-handshake-timeout", api_handshake_timeout)?,
                header_timeout: secs("api-header-timeout", api_header_timeout)?,
                idle_timeout: secs("api-idle-timeout", api_idle_timeout)?,
                max_streams: api_max_streams.max(1),
            };
            let keys: Vec<String> = match &trusted_keys {
                Some(p) => std::fs::read_to_string(p)
                    .with_context(|| format!("reading {}", p.display()))?
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(str::to_owned)
                    .collect(),
                None => Vec::new(),
            };
            let trust = sluice::plugins::Trust::new(&keys, allow_unsigned_plugins)?;
            if attach.is_empty() && state_dir.is_none() {
                anyhow::bail!(
                    "nothing to forward between: name interfaces with --attach, or give a \
                     --state-dir whose configuration has routed ports"
                );
            }
            // Before the runtime's threads start, so that they inherit it.
            if nice != 0
                && let Err(e) = dataplane::set_thread_nice(nice)
            {
                tracing::warn!(nice, error = %e, "could not set the daemon's priority");
            }
            // Two workers: the netlink socket is read and decoded on one while the other takes
            // the changes into the dataplane (a full table arriving is a million messages).
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            runtime.block_on(daemon::run(daemon::Options {
                pin,
                attach,
                mode: xdp_mode,
                table,
                netlink_recv_buffer,
                plugins: plugins.map(|path| sluice::plugins::PluginDir {
                    path,
                    allow_match_all: plugin_allow_match_all.into_iter().collect(),
                }),
                trust,
                state_dir,
                listen,
                api_limits,
                bird,
            }))
        }
        Command::Stats { json, watch } => stats(&pin, json, watch),
        Command::Routes { json } => {
            let routes = show::routes(&pin)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&routes)?);
            } else {
                print!("{}", show::routes_text(&routes));
            }
            Ok(())
        }
        Command::Hooks { json } => hooks(&pin, json),
        Command::Verify { json } => verify(&pin, json),
        Command::Provision { state_dir, seed, network_dir, check } => {
            if check {
                let dir = seed.expect("clap requires --seed with --check");
                let s = sluice::provision::read_seed(&dir)?;
                println!("seed {}: valid", s.instance_id);
                return Ok(());
            }
            let outcome =
                sluice::provision::provision(&state_dir, seed.as_deref(), network_dir.as_deref())?;
            for line in &outcome.done {
                println!("{line}");
            }
            Ok(())
        }
        Command::Config { state_dir: Some(dir), api: _, cmd } => config(&dir, cmd),
        Command::Config { state_dir: None, api, cmd } => {
            use sluice::client::ConfigAction as A;
            let action = match &cmd {
                ConfigCmd::Export { secrets } => A::Export(*secrets),
                ConfigCmd::Import { file, message } => A::Import(file, message),
                ConfigCmd::History => A::History,
                ConfigCmd::Confirm => A::Confirm,
                ConfigCmd::Rollback { revision, message } => A::Rollback(*revision, message),
                ConfigCmd::Verify | ConfigCmd::Repair { .. } => {
                    anyhow::bail!(
                        "`config verify` and `config repair` work on the store: give --state-dir"
                    )
                }
            };
            sluice::client::config(&api, action)
        }
        Command::Route { api, cmd: RouteTop::Static { cmd } } => sluice::client::route(&api, cmd),
        Command::User { api, cmd } => sluice::client::user(&api, cmd),
        Command::Protocols { api, json } => sluice::client::protocols(&api, json),
        Command::Plugin { cmd: PluginCmd::Api(cmd) } => sluice::client::plugin(cmd),
        Command::Detach { force } => {
            let links = dataplane::detach_all(&pin, force)?;
            if links.is_empty() {
                println!(
                    "nothing attached; removed anything pinned under {}",
                    pin.root().display()
                );
            } else {
                println!("detached from {}; removed {}", links.join(", "), pin.root().display());
            }
            Ok(())
        }
        Command::Plugin { cmd: PluginCmd::Run { wasm, manifest, config, events } } => {
            plugin_run(&wasm, manifest.as_deref(), &config, events.as_deref())
        }
        Command::Plugin { cmd: PluginCmd::Keygen { file } } => plugin_keygen(&file),
        Command::Plugin { cmd: PluginCmd::Sign { key, manifest } } => plugin_sign(&key, &manifest),
    }
}

fn stats(pin: &PinDir, json: bool, watch: Option<f64>) -> anyhow::Result<()> {
    let Some(secs) = watch else {
        let s = show::with_lookup_tables(show::stats(pin)?, pin);
        if json {
            println!("{}", serde_json::to_string_pretty(&s)?);
        } else {
            print!("{}", show::stats_text(&s));
        }
        return Ok(());
    };
    let interval =
        Duration::try_from_secs_f64(secs).context("--watch takes a positive number of seconds")?;
    let mut before = show::stats(pin)?;
    let mut at = Instant::now();
    loop {
        std::thread::sleep(interval);
        let after = show::stats(pin)?;
        let now = Instant::now();
        if json {
            println!("{}", serde_json::to_string(&after)?);
        } else {
            print!(
                "\x1b[2J\x1b[H{}\n{}",
                show::rates_text(&before, &after, now - at),
                show::stats_text(&after)
            );
        }
        before = after;
        at = now;
    }
}

fn plugin_run(
    wasm: &std::path::Path,
    manifest: Option<&std::path::Path>,
    config: &str,
    events: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    use sluice::plugins::{self, Manifest, ScriptedEvent, Table};
    let read =
        |p: &std::path::Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    let bytes = read(wasm)?;
    let manifest: Manifest = match manifest {
        Some(p) => serde_json::from_slice(&read(p)?)
            .with_context(|| format!("manifest {}", p.display()))?,
        None => Manifest::new(
            &wasm
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("plugin")
                .to_lowercase()
                .replace('_', "-"),
            "local",
            &[Table::Filter, Table::RateLimit, Table::Sample],
            &bytes,
        ),
    };
    let config = if config == "-" {
        "{}".to_owned()
    } else {
        String::from_utf8(read(std::path::Path::new(config))?).context("configuration")?
    };
    let batches: Vec<Vec<ScriptedEvent>> = match events {
        Some(p) => {
            serde_json::from_slice(&read(p)?).with_context(|| format!("events {}", p.display()))?
        }
        None => Vec::new(),
    };
    let batches: Vec<Vec<plugins::Event>> =
        batches.into_iter().map(|b| b.into_iter().map(Into::into).collect()).collect();
    let run = plugins::harness(manifest, &bytes, &config, &batches)?;
    println!("{}", serde_json::to_string_pretty(&run)?);
    if let Some(failed) = run.calls.iter().find(|c| c.error.is_some()) {
        if failed.call == "init" {
            anyhow::bail!(
                "the plugin's init failed (see \"error\" above): a router would refuse to add it \
                 (422) and store nothing"
            );
        }
        anyhow::bail!(
            "the plugin failed in {} (see \"error\" above): on a router it would be quarantined",
            failed.call
        );
    }
    Ok(())
}

fn plugin_keygen(file: &std::path::Path) -> anyhow::Result<()> {
    use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};
    let mut seed = [0u8; 32];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut seed)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
        .with_context(|| format!("creating {}", file.display()))?;
    writeln!(f, "{}", sluice::plugins::hex(&seed))?;
    println!("{}", sluice::plugins::public_key(&seed));
    Ok(())
}

fn plugin_sign(key: &std::path::Path, manifest: &std::path::Path) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(key).with_context(|| format!("reading {}", key.display()))?;
    let seed: [u8; 32] =
        sluice::plugins::unhex(text.trim()).and_then(|b| b.try_into().ok()).with_context(|| {
            format!("{} is not a key made by `sluice plugin keygen`", key.display())
        })?;
    let mut m: sluice::plugins::Manifest = serde_json::from_slice(
        &std::fs::read(manifest).with_context(|| format!("reading {}", manifest.display()))?,
    )
    .with_context(|| format!("manifest {}", manifest.display()))?;
    m.sign(&seed);
    std::fs::write(manifest, serde_json::to_string_pretty(&m)? + "\n")?;
    println!("signed {} {} by {}", m.name, m.version, m.publisher.unwrap_or_default());
    Ok(())
}

fn hooks(pin: &PinDir, json: bool) -> anyhow::Result<()> {
    let (rules, every) = dataplane::hooks::pinned_rules(pin)?;
    if json {
        let v = serde_json::json!({ "rules": rules, "sample_every": every });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    for r in &rules {
        println!(
            "{}  rule {}  {} packets {} bytes",
            serde_json::to_string(&r.rule)?,
            r.id,
            r.packets,
            r.bytes
        );
    }
    let sampling = if every == 0 { "off".to_owned() } else { format!("1 in {every}") };
    println!("{} rules; sampling {sampling}", rules.len());
    Ok(())
}

fn verify(pin: &PinDir, json: bool) -> anyhow::Result<()> {
    let mut v = dataplane::lookup::verify(pin)?;
    if !v.is_clean() {
        // The route record trails the lookup tables by up to one batch while routes change:
        // what a second look a moment later still finds is a real difference.
        std::thread::sleep(Duration::from_millis(500));
        v = dataplane::lookup::verify(pin)?;
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", show::verification_text(&v));
    }
    if !v.is_clean() {
        anyhow::bail!(
            "{} difference(s) or problem(s) between the lookup tables and the routes",
            v.findings()
        );
    }
    Ok(())
}

fn config(state_dir: &std::path::Path, cmd: ConfigCmd) -> anyhow::Result<()> {
    sluice::state_dir::ensure(state_dir)?;
    let db = state_dir.join("db");
    match &cmd {
        ConfigCmd::Verify => return config_verify(&db),
        ConfigCmd::Repair { from, accept } => return config_repair(&db, from.as_deref(), *accept),
        _ => {}
    }
    let store = sluice_store::Store::open_recorded(&db)
        .with_context(|| format!("opening the store in {}", state_dir.display()))?;
    match cmd {
        ConfigCmd::Verify | ConfigCmd::Repair { .. } => unreachable!("handled above"),
        ConfigCmd::Export { secrets } => println!("{}", store.export(secrets)?),
        ConfigCmd::Import { file, message } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let who = std::env::var("USER").unwrap_or_else(|_| "cli".into());
            let r =
                store.import(&text, &sluice_store::Author { who, from: "cli".into(), message })?;
            println!("revision {} committed", r.id);
        }
        ConfigCmd::History => {
            for (id, at_ms, a) in store.history()? {
                println!("{id:>5}  {at_ms}  {}@{}  {}", a.who, a.from, a.message);
            }
        }
        ConfigCmd::Confirm => {
            if !store.confirm()? {
                anyhow::bail!("no commit waits for its confirmation");
            }
            println!("confirmed");
        }
        ConfigCmd::Rollback { revision, message } => {
            let who = std::env::var("USER").unwrap_or_else(|_| "cli".into());
            let author = sluice_store::Author { who, from: "cli".into(), message };
            println!("revision {} committed", store.rollback_to(revision, &author)?.id);
        }
    }
    Ok(())
}

fn config_verify(db: &std::path::Path) -> anyhow::Result<()> {
    let store = sluice_store::Store::open_for_repair(db)
        .with_context(|| format!("opening the store in {}", db.display()))?;
    let c = store.check_record()?;
    println!("store {} ({})", db.display(), c.store);
    println!(
        "  revisions: up to {}; running: {}",
        c.latest,
        c.running.map_or_else(|| "none".to_owned(), |r| r.to_string())
    );
    match &c.record {
        Some(r) => println!(
            "  record {}: store {}, revision {}, written at {} ms",
            c.path.display(),
            r.store,
            r.revision,
            r.written_ms
        ),
        None => println!(
            "  record {}: none yet (written at the next start or commit)",
            c.path.display()
        ),
    }
    if let Some(problem) = c.problem {
        anyhow::bail!(
            "{problem}: a daemon refuses this store. Restore a backup with `sluice config repair \
             --state-dir DIR --from FILE`, or accept the store with `sluice config repair \
             --state-dir DIR --accept`"
        );
    }
    println!("ok: the store is the one its record names and holds every revision committed");
    Ok(())
}

fn config_repair(
    db: &std::path::Path,
    from: Option<&std::path::Path>,
    accept: bool,
) -> anyhow::Result<()> {
    let store = match sluice_store::Store::open_for_repair(db) {
        Ok(store) => store,
        Err(e @ (sluice_store::StoreError::Db(_) | sluice_store::StoreError::Corrupt(_))) => {
            // A database that does not open is kept, aside, and a new one made.
            let aside = db.with_file_name(format!(
                "{}.damaged.{}",
                db.file_name().and_then(|n| n.to_str()).unwrap_or("db"),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs())
            ));
            std::fs::rename(db, &aside)
                .with_context(|| format!("moving the damaged database {} aside", db.display()))?;
            println!("the database did not open ({e}): moved aside to {}", aside.display());
            sluice_store::Store::open_for_repair(db)
                .with_context(|| format!("making a new store in {}", db.display()))?
        }
        Err(e) => {
            return Err(e).with_context(|| format!("opening the store in {}", db.display()));
        }
    };
    let before = store.check_record()?;
    if let Some(file) = from {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let who = std::env::var("USER").unwrap_or_else(|_| "cli".into());
        let message = format!("restored from {} by config repair", file.display());
        let r = store.import(&text, &sluice_store::Author { who, from: "cli".into(), message })?;
        // The import wrote the record for this store and revision.
        println!("revision {} committed from {}", r.id, file.display());
    } else if accept {
        store.write_record()?;
    }
    let after = store.check_record()?;
    anyhow::ensure!(after.problem.is_none(), "still refused: {:?}", after.problem);
    match before.problem {
        Some(p) => println!("repaired ({p}); the record now names revision {}", after.latest),
        None => println!("nothing was wrong; the record names revision {}", after.latest),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    /// The long help of a subcommand, global options included.
    fn help(path: &[&str]) -> String {
        let mut cmd = Cli::command();
        cmd.build();
        let mut sub = &mut cmd;
        for name in path {
            sub = sub.find_subcommand_mut(name).expect("a subcommand");
        }
        sub.render_long_help().to_string()
    }

    #[test]
    fn the_api_options_show_only_where_they_apply() {
        for local in [["plugin", "run"], ["plugin", "keygen"], ["plugin", "sign"]] {
            let h = help(&local);
            for option in ["--api", "--token", "--ca", "--insecure"] {
                assert!(!h.contains(option), "`sluice {}` lists {option}:\n{h}", local.join(" "));
            }
        }
        for remote in [["plugin", "list"], ["plugin", "add"], ["plugin", "logs"]] {
            assert!(help(&remote).contains("--token"), "`sluice {}`", remote.join(" "));
        }
        Cli::try_parse_from([
            "sluice",
            "plugin",
            "list",
            "--api",
            "https://r:8443",
            "--token",
            "t",
        ])
        .expect("the API's options after an API subcommand");
        let err = Cli::try_parse_from(["sluice", "plugin", "keygen", "k", "--token", "t"])
            .expect_err("a local subcommand takes no API options");
        assert!(err.to_string().contains("--token"), "{err}");
    }
}
