//! BIRD 2 as the router's routing daemon: run by the daemon (`--bird`), configured only from
//! the store's `protocols`, and read through its control socket.
//!
//! - [`render`]: the configuration, rendered deterministically from `protocols` (a pure
//!   function). BIRD's kernel protocols write its best routes into the table Sluice mirrors,
//!   so routes learnt over BGP or OSPF reach the dataplane like any other kernel route.
//! - [`socket`]: a client of BIRD's control socket and its reply codes.
//! - [`status`]: the state of the BGP sessions and OSPF instances (`GET /protocols`).
//! - [`Bird`]: the files under `STATE/bird/` (configuration, candidate, socket, log), the
//!   check a commit runs (`configure check` on the candidate), the reconfiguration once it is
//!   committed, and [`Bird::supervise`], which runs `bird -f` and starts it again, after a
//!   back-off and with the reason logged, when it dies. Routes BIRD installed stay in the
//!   kernel (and so in the dataplane) while it is down; the BIRD started again replaces them.

pub mod render;
pub mod socket;
pub mod status;

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use sluice_store::protocols::Protocols;
use tokio::io::AsyncBufReadExt as _;
use tracing::{error, info, warn};

pub use socket::SocketError;
pub use status::{ProtocolStatus, RouteCounts};

/// The first wait before BIRD is started again; doubled after each quick death.
const RESTART_FIRST: Duration = Duration::from_secs(1);
/// The longest wait.
const RESTART_MAX: Duration = Duration::from_secs(30);
/// A BIRD that ran this long before dying is started again after [`RESTART_FIRST`].
const RAN_WELL: Duration = Duration::from_mins(1);
/// BIRD's last lines of standard error kept for the reason of its death.
const STDERR_KEPT: usize = 8;

/// Why BIRD did not take a configuration, or could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum BirdError {
    /// BIRD refused the configuration (its message).
    #[error("BIRD refused the configuration: {0}")]
    Refused(String),
    /// A file of BIRD's could not be written.
    #[error("writing {path}")]
    Write {
        /// The file.
        path: String,
        /// What failed.
        source: std::io::Error,
    },
    /// The control socket failed (BIRD not running, or broken).
    #[error(transparent)]
    Socket(#[from] SocketError),
    /// BIRD's parse-only run could not start.
    #[error("running {binary}")]
    Spawn {
        /// The program.
        binary: String,
        /// What failed.
        source: std::io::Error,
    },
}

/// BIRD run by the daemon: its program, its files under `STATE/bird/`, and the table its
/// kernel protocols write.
#[derive(Debug)]
pub struct Bird {
    binary: PathBuf,
    dir: PathBuf,
    table: u32,
    /// Held while a configuration file is written and given to BIRD.
    lock: Mutex<()>,
    /// Times BIRD was started again after it died.
    pub restarts: AtomicU64,
    /// Why BIRD last died, when it did.
    pub last_exit: Mutex<Option<String>>,
}

impl Bird {
    /// BIRD run from `binary`, with its files in `STATE/bird` (made 0700: the configuration
    /// holds the BGP passwords).
    pub fn new(binary: &Path, state_dir: &Path, table: u32) -> std::io::Result<Self> {
        use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
        let dir = state_dir.join("bird");
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        Ok(Self {
            binary: binary.to_owned(),
            dir,
            table,
            lock: Mutex::new(()),
            restarts: AtomicU64::new(0),
            last_exit: Mutex::new(None),
        })
    }

    /// The configuration BIRD runs with.
    pub fn config_file(&self) -> PathBuf {
        self.dir.join("bird.conf")
    }

    /// The candidate a commit checks.
    fn candidate_file(&self) -> PathBuf {
        self.dir.join("candidate.conf")
    }

    /// BIRD's control socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("bird.ctl")
    }

    /// BIRD's log.
    pub fn log_file(&self) -> PathBuf {
        self.dir.join("bird.log")
    }

    /// The configuration text for `p`.
    pub fn render(&self, p: &Protocols) -> String {
        let log = self.log_file();
        render::render(p, &render::Settings { table: self.table, log: Some(&log) })
    }

    /// Writes `text` to `path` (0600) through a temporary file renamed over it.
    fn write(path: &Path, text: &str) -> Result<(), BirdError> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let err = |source| BirdError::Write { path: path.display().to_string(), source };
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(err)?;
        f.write_all(text.as_bytes()).map_err(err)?;
        f.sync_all().map_err(err)?;
        std::fs::rename(&tmp, path).map_err(err)
    }

    /// Whether BIRD takes `p`: `configure check` on the rendered candidate when BIRD runs, else
    /// BIRD's parse-only mode (`bird -p`). Nothing running changes.
    pub fn check(&self, p: &Protocols) -> Result<(), BirdError> {
        let _held = self.lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let file = self.candidate_file();
        Self::write(&file, &self.render(p))?;
        let outcome = match socket::Client::connect(&self.socket()) {
            Ok(mut c) => match c.check(&file) {
                Err(SocketError::Refused { message, .. }) => Err(BirdError::Refused(message)),
                other => other.map_err(Into::into),
            },
            Err(_) => self.parse_only(&file),
        };
        let _ = std::fs::remove_file(&file);
        // BIRD names the file by its path: the state directory stays out of answers.
        outcome.map_err(|e| match e {
            BirdError::Refused(m) => {
                BirdError::Refused(m.replace(&file.display().to_string(), "bird.conf"))
            }
            e => e,
        })
    }

    /// `bird -p -c FILE`: parses the file and exits.
    fn parse_only(&self, file: &Path) -> Result<(), BirdError> {
        let out = std::process::Command::new(&self.binary)
            .arg("-p")
            .arg("-c")
            .arg(file)
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|source| BirdError::Spawn {
                binary: self.binary.display().to_string(),
                source,
            })?;
        if out.status.success() {
            return Ok(());
        }
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        Err(BirdError::Refused(text.trim().to_owned()))
    }

    /// Writes `p`'s configuration as the one BIRD runs with and tells BIRD to take it
    /// (`configure`). When BIRD is not running, the file is what it starts with.
    pub fn apply(&self, p: &Protocols) -> Result<(), BirdError> {
        let _held = self.lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let file = self.config_file();
        Self::write(&file, &self.render(p))?;
        let mut c = socket::Client::connect(&self.socket())?;
        match c.configure(&file) {
            Err(SocketError::Refused { message, .. }) => Err(BirdError::Refused(message)),
            other => other.map_err(Into::into),
        }
    }

    /// The BGP sessions and OSPF instances, as BIRD reports them now.
    pub fn protocols(&self) -> Result<Vec<ProtocolStatus>, BirdError> {
        let mut c = socket::Client::connect(&self.socket())?;
        Ok(status::parse(&c.command("show protocols all")?))
    }

    /// Runs BIRD until `stop` is told, starting it again when it dies (after
    /// [`RESTART_FIRST`], doubling up to [`RESTART_MAX`] while it keeps dying quickly), each
    /// time with the running configuration `current` gives. Told to stop, BIRD gets SIGTERM
    /// (it withdraws its routes) and, after 5 s, SIGKILL.
    pub async fn supervise(
        self: Arc<Self>,
        current: impl Fn() -> Protocols + Send + 'static,
        stop: Arc<tokio::sync::Notify>,
    ) {
        let mut wait = RESTART_FIRST;
        loop {
            let protocols = current();
            let (bird, text) = (Arc::clone(&self), self.render(&protocols));
            let written = {
                let _held = bird.lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                Self::write(&bird.config_file(), &text)
            };
            if let Err(e) = written {
                error!(error = %sluice_dataplane::error_chain(&e), "writing BIRD's configuration failed");
            }
            let _ = std::fs::remove_file(self.socket());
            let started = Instant::now();
            let reason = match self.spawn() {
                Err(e) => format!("it could not be started: {e}"),
                Ok(mut child) => {
                    info!(pid = child.id(), config = %self.config_file().display(), "BIRD started");
                    let tail = Arc::new(Mutex::new(Vec::<String>::new()));
                    if let Some(err) = child.stderr.take() {
                        tokio::spawn(read_stderr(err, Arc::clone(&tail)));
                    }
                    tokio::select! {
                        status = child.wait() => {
                            // Let the last lines of standard error be read.
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            let tail = tail.lock().map(|t| t.join(" | ")).unwrap_or_default();
                            match status {
                                Ok(s) if tail.is_empty() => format!("it exited ({s})"),
                                Ok(s) => format!("it exited ({s}): {tail}"),
                                Err(e) => format!("waiting for it failed: {e}"),
                            }
                        }
                        () = stop.notified() => {
                            stop_child(&mut child).await;
                            return;
                        }
                    }
                }
            };
            if started.elapsed() >= RAN_WELL {
                wait = RESTART_FIRST;
            }
            self.restarts.fetch_add(1, Ordering::Relaxed);
            *self.last_exit.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
                Some(reason.clone());
            error!(
                %reason,
                ran = ?started.elapsed(),
                restart_in = ?wait,
                "BIRD died; starting it again (the routes it installed stay until then)"
            );
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = stop.notified() => return,
            }
            wait = (wait * 2).min(RESTART_MAX);
        }
    }

    /// `bird -f -c CONF -s SOCKET -P PIDFILE`, its standard error piped; it gets SIGTERM if
    /// the daemon dies.
    fn spawn(&self) -> std::io::Result<tokio::process::Child> {
        let mut cmd = tokio::process::Command::new(&self.binary);
        cmd.arg("-f")
            .arg("-c")
            .arg(self.config_file())
            .arg("-s")
            .arg(self.socket())
            .arg("-P")
            .arg(self.dir.join("bird.pid"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        die_with_parent(&mut cmd);
        cmd.spawn()
    }
}

/// Makes the child get SIGTERM when the thread that started it (a runtime worker, living as long
/// as the daemon) exits: a daemon killed leaves no BIRD behind.
#[expect(unsafe_code, reason = "pre_exec runs between fork and exec")]
fn die_with_parent(cmd: &mut tokio::process::Command) {
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)
                .map_err(std::io::Error::from)
        });
    }
}

/// SIGTERM, then SIGKILL after 5 s.
async fn stop_child(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    if tokio::time::timeout(Duration::from_secs(5), child.wait()).await.is_err() {
        warn!("BIRD did not stop within 5 s of SIGTERM: killed");
        let _ = child.kill().await;
    }
    info!("BIRD stopped");
}

/// Logs BIRD's standard error line by line, keeping the last few.
async fn read_stderr(err: tokio::process::ChildStderr, tail: Arc<Mutex<Vec<String>>>) {
    let mut lines = tokio::io::BufReader::new(err).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let line: String = line.chars().take(512).collect();
        warn!(target: "bird", "{line}");
        if let Ok(mut t) = tail.lock() {
            if t.len() == STDERR_KEPT {
                t.remove(0);
            }
            t.push(line);
        }
    }
}
