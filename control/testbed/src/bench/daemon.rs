//! The Sluice daemon under test: started in the router namespace with a pin directory of its
//! own, timed while it carries the kernel's table into its maps, and stopped, detached and
//! unpinned afterwards, also when the benchmark fails.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail, ensure};
use aya::maps::{LpmTrie, Map, MapData};
use nix::sys::signal::Signal;
use serde::Serialize;
use serde_json::Value;
use sluice_common::Route;
use sluice_dataplane::PinDir;

use super::{interrupt::check_interrupted, latency::ms};
use crate::{
    netns::{self, NetNs},
    table::Family,
};

/// How long the daemon may take to settle (see [`Daemon::wait_idle`]) before it is measured anyway.
pub(super) const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// The window over which the daemon's CPU use is taken to decide it is idle.
const IDLE_WINDOW: Duration = Duration::from_millis(500);
/// The daemon is idle when all its threads together used less than this share of one CPU over
/// [`IDLE_WINDOW`].
const IDLE_SHARE: f64 = 0.02;

/// How long the daemon took to settle, and which of its threads used the CPU meanwhile.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Settled {
    /// From the call until a window with less than [`IDLE_SHARE`] of a CPU.
    pub(super) waited_s: f64,
    /// Whether it got there within [`IDLE_TIMEOUT`].
    pub(super) idle: bool,
    /// CPU seconds per thread name while waiting (busiest first).
    pub(super) busy: Vec<(String, f64)>,
}

impl Settled {
    pub(super) fn describe(&self) -> String {
        let busy: Vec<String> = self
            .busy
            .iter()
            .filter(|(_, s)| *s > 0.0)
            .map(|(n, s)| format!("{n} {:.0} ms", s * 1e3))
            .collect();
        format!(
            "{} after {:.1} s{}",
            if self.idle { "idle" } else { "still busy" },
            self.waited_s,
            if busy.is_empty() {
                String::new()
            } else {
                format!(" (CPU meanwhile: {})", busy.join(", "))
            }
        )
    }
}

/// CPU time of each thread of `pid` (the scheduler's own account, `schedstat`), by thread id:
/// (name, seconds).
fn thread_cpu(pid: u32) -> std::collections::BTreeMap<u32, (String, f64)> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return out };
    for t in tasks.filter_map(Result::ok) {
        let Some(tid) = t.file_name().to_str().and_then(|s| s.parse().ok()) else { continue };
        let Ok(schedstat) = std::fs::read_to_string(t.path().join("schedstat")) else { continue };
        let name = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        // Time on a CPU (ns), time waiting for one, time slices.
        let ns: u64 = schedstat.split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(0);
        out.insert(tid, (name.trim().to_owned(), ns as f64 / 1e9));
    }
    out
}

/// How long the daemon may take to attach and report its interfaces, plus [`READY_PER_ROUTE`]
/// for each route it has to take from the kernel first.
pub(super) const DAEMON_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// See [`DAEMON_READY_TIMEOUT`].
pub(super) const READY_PER_ROUTE: Duration = Duration::from_micros(200);
/// How long the route trie may stay short of the table, without growing, once the daemon has
/// logged that it is ready (one count of a million routes takes a few seconds).
const READY_GRACE: Duration = Duration::from_secs(10);

/// `sluice daemon` running in the router namespace with its own pin directory. Stopped, detached
/// and its pins removed on drop, also when the benchmark fails.
#[derive(Debug)]
pub(super) struct Daemon<'a> {
    child: Option<Child>,
    exe: PathBuf,
    pub(super) pin_dir: PathBuf,
    router: &'a NetNs,
    log: PathBuf,
    /// When it was spawned.
    started: Instant,
    /// When `sluice stats` first showed every interface.
    attached: Duration,
}

impl<'a> Daemon<'a> {
    pub(super) fn start(
        exe: &Path,
        router: &'a NetNs,
        ifaces: &[&str],
        ready_timeout: Duration,
    ) -> anyhow::Result<Self> {
        let name = netns::unique_name("sluice-bench-");
        let pin_dir = PathBuf::from("/sys/fs/bpf").join(&name);
        let log = std::env::temp_dir().join(format!("{name}.log"));
        let out = File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let mut cmd = router
            .command(exe.to_str().ok_or_else(|| anyhow!("non-UTF-8 path {}", exe.display()))?);
        cmd.arg("--pin-dir").arg(&pin_dir).arg("daemon").arg("--attach").args(ifaces);
        cmd.stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out);
        die_with_parent(&mut cmd);
        let started = Instant::now();
        let child = cmd.spawn().with_context(|| format!("spawn {cmd:?}"))?;
        let mut daemon = Self {
            child: Some(child),
            exe: exe.to_owned(),
            pin_dir,
            router,
            log,
            started,
            attached: Duration::ZERO,
        };
        daemon.wait_ready(ifaces, ready_timeout)?;
        daemon.attached = started.elapsed();
        Ok(daemon)
    }

    pub(super) fn sluice(&self, args: &[&str]) -> Command {
        let mut cmd = self.router.command(self.exe.to_str().unwrap_or_default());
        cmd.arg("--pin-dir").arg(&self.pin_dir).args(args);
        cmd
    }

    pub(super) fn stats(&self) -> anyhow::Result<Value> {
        let out = netns::run(&mut self.sluice(&["stats", "--json"]))?;
        serde_json::from_str(&out).context("parse `sluice stats --json`")
    }

    /// Fails if the daemon has exited.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) =
            self.child.as_mut().and_then(|c| c.try_wait().transpose()).transpose()?
        {
            bail!("sluice daemon exited ({status}):\n{}", self.log_tail());
        }
        Ok(())
    }

    /// Like [`Self::check_alive`], through a shared reference: whether the process still runs
    /// (neither gone nor a zombie), from /proc.
    pub(super) fn check_alive_shared(&self) -> anyhow::Result<()> {
        let pid = self.child.as_ref().map_or(0, Child::id);
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // The state follows the command name, which is in parentheses.
        let state = stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next());
        if matches!(state, None | Some('Z' | 'X')) {
            bail!("sluice daemon exited:\n{}", self.log_tail());
        }
        Ok(())
    }

    /// Waits until the daemon's threads together use less than [`IDLE_SHARE`] of a CPU over
    /// [`IDLE_WINDOW`]: nothing of its own (the route record's writer, a resync) runs beside
    /// forwarding. Gives up (and says so) after `timeout`.
    pub(super) fn wait_idle(&self, timeout: Duration) -> anyhow::Result<Settled> {
        let pid = self.child.as_ref().map_or(0, Child::id);
        let start = Instant::now();
        let first = thread_cpu(pid);
        let mut last = first.clone();
        let idle = loop {
            check_interrupted()?;
            self.check_alive_shared()?;
            thread::sleep(IDLE_WINDOW);
            let now = thread_cpu(pid);
            let used: f64 =
                now.iter().map(|(tid, (_, s))| s - last.get(tid).map_or(0.0, |(_, b)| *b)).sum();
            last = now;
            if used < IDLE_SHARE * IDLE_WINDOW.as_secs_f64() {
                break true;
            }
            if start.elapsed() > timeout {
                break false;
            }
        };
        let mut by_name: std::collections::BTreeMap<String, f64> =
            std::collections::BTreeMap::new();
        for (tid, (name, s)) in &last {
            *by_name.entry(name.clone()).or_default() +=
                s - first.get(tid).map_or(0.0, |(_, b)| *b);
        }
        let mut busy: Vec<(String, f64)> = by_name.into_iter().collect();
        busy.sort_by(|a, b| b.1.total_cmp(&a.1));
        Ok(Settled { waited_s: start.elapsed().as_secs_f64(), idle, busy })
    }

    fn wait_ready(&mut self, ifaces: &[&str], timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            check_interrupted()?;
            self.check_alive().context("before it was ready")?;
            let last = match self.stats() {
                Ok(stats) if ifaces.iter().all(|i| iface(&stats, i).is_some()) => return Ok(()),
                Ok(stats) => format!("stats: {stats}"),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() > deadline {
                bail!(
                    "sluice daemon not ready after {timeout:?} (last: {last}):\n{}",
                    self.log_tail()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// The line the daemon logged when its first sync was written ("ready: forwarding"), if it
    /// has.
    fn ready_line(&self) -> Option<String> {
        let log = std::fs::read_to_string(&self.log).ok()?;
        log.lines().find(|l| l.contains("ready: forwarding")).map(str::to_owned)
    }

    /// Waits until the daemon has logged that it forwards with the kernel's state written: what
    /// follows (a table loading) is then mirrored by the running daemon, not by its start.
    pub(super) fn wait_forwarding(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = self.started + timeout;
        while self.ready_line().is_none() {
            check_interrupted()?;
            self.check_alive().context("before it logged ready")?;
            ensure!(
                Instant::now() < deadline,
                "sluice daemon did not log ready in {timeout:?}:\n{}",
                self.log_tail()
            );
            thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// Waits until the daemon has carried the kernel's table into the dataplane: its pinned route
    /// trie of `family` holds at least `routes` entries (polled by counting them), and it has
    /// logged that it is ready. Then reads its resident memory.
    pub(super) fn await_table(
        &mut self,
        family: Family,
        routes: usize,
        timeout: Duration,
    ) -> anyhow::Result<DaemonLoad> {
        let trie = RouteTrie::open(&self.pin_dir, family);
        let deadline = self.started + timeout;
        let mut last_count = None;
        let (mut loaded, mut entries, mut logged) = (None, None, None);
        let mut ready_routes: Option<usize> = None;
        // When the count of the route trie last grew.
        let mut grew = Duration::ZERO;
        loop {
            check_interrupted()?;
            self.check_alive()?;
            if logged.is_none()
                && let Some(line) = self.ready_line()
            {
                logged = Some(self.started.elapsed());
                let field = match family {
                    Family::V4 => "routes_v4=",
                    Family::V6 => "routes_v6=",
                };
                ready_routes =
                    line.split_whitespace().find_map(|w| w.strip_prefix(field)?.parse().ok());
            }
            if loaded.is_none()
                && let Ok(trie) = &trie
            {
                let poll = Instant::now();
                let n = trie.len()?;
                last_count = Some(poll.elapsed());
                if entries.is_none_or(|e| n > e) {
                    // The route record's writer is still making progress.
                    grew = self.started.elapsed();
                }
                entries = Some(n);
                if n >= routes {
                    loaded = Some(self.started.elapsed());
                }
            }
            if logged.is_some() && (loaded.is_some() || trie.is_err()) {
                break;
            }
            // Ready, yet short of routes for a while: it will not get there.
            // (The record's writer runs at a low priority: on a busy machine it trails the
            // lookup tables by tens of seconds, but its count keeps growing.)
            let stuck =
                logged.is_some_and(|at| self.started.elapsed() > at.max(grew) + READY_GRACE);
            if Instant::now() > deadline || stuck {
                bail!(
                    "the daemon did not take the table ({} of {routes} routes in its trie {}):\n{}",
                    entries.map_or_else(|| "?".into(), |n| n.to_string()),
                    match logged {
                        Some(at) => format!(
                            "{:.1} s after it logged that it was ready",
                            self.started.elapsed().saturating_sub(at).as_secs_f64()
                        ),
                        None => format!("after {timeout:?}"),
                    },
                    self.log_tail()
                );
            }
            thread::sleep(Duration::from_millis(5));
        }
        let memory = self.memory();
        Ok(DaemonLoad {
            routes,
            attached_s: self.attached.as_secs_f64(),
            table_loaded_s: loaded.map(|d| d.as_secs_f64()),
            ready_logged_s: logged.map(|d| d.as_secs_f64()),
            ready_routes,
            all_written_s: logged
                .filter(|_| ready_routes.is_some_and(|n| n >= routes))
                .map(|d| d.as_secs_f64()),
            trie_entries: entries,
            trie: match trie {
                Ok(_) => "counted".into(),
                Err(e) => format!("not counted: {e:#}"),
            },
            last_count_ms: last_count.map(ms),
            rss_kib: memory.now,
            peak_rss_kib: memory.peak,
            anon_rss_kib: memory.anon,
            mapped_rss_kib: memory.mapped,
        })
    }

    /// The daemon's resident memory now, and its peak so far, from `/proc/PID/status`.
    pub(super) fn memory(&self) -> Memory {
        let pid = self.child.as_ref().map_or(0, Child::id);
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let kib = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key)?.trim().strip_suffix("kB")?.trim().parse().ok())
        };
        Memory {
            now: kib("VmRSS:"),
            peak: kib("VmHWM:"),
            anon: kib("RssAnon:"),
            mapped: kib("RssFile:"),
        }
    }

    /// The daemon's first warnings or errors (often the cause) and its last lines.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines.len().saturating_sub(12);
        let first: Vec<&str> = lines[..tail]
            .iter()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .take(3)
            .copied()
            .collect();
        let mut out = first.join("\n");
        if !first.is_empty() {
            out.push_str("\n...\n");
        }
        out + &lines[tail..].join("\n")
    }

    /// Stops the daemon (SIGTERM, SIGKILL after 10 s), runs `sluice detach` and removes the pins.
    pub(super) fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else { return Ok(()) };
        let stopped = terminate(&mut child);
        let detached = netns::run(&mut self.sluice(&["detach"])).map(drop);
        let removed = if self.pin_dir.exists() {
            std::fs::remove_dir_all(&self.pin_dir)
                .with_context(|| format!("remove {}", self.pin_dir.display()))
        } else {
            Ok(())
        };
        let log = self.log_tail();
        if std::env::var_os("SLUICE_BENCH_KEEP_LOGS").is_some() {
            eprintln!("  daemon log kept: {}", self.log.display());
        } else {
            let _ = std::fs::remove_file(&self.log);
        }
        stopped.and(detached).and(removed).with_context(|| format!("daemon log:\n{log}"))
    }
}

/// How long a stopping daemon may take: it finishes writing the route record first, which after
/// a full table loaded while the machine is busy takes tens of seconds at the writer's low
/// priority.
const STOP_GRACE: Duration = Duration::from_secs(90);

/// SIGTERM, then SIGKILL if the process has not exited after [`STOP_GRACE`].
fn terminate(child: &mut Child) -> anyhow::Result<()> {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id())?);
    let _ = nix::sys::signal::kill(pid, Signal::SIGTERM);
    let deadline = Instant::now() + STOP_GRACE;
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            child.kill()?;
            child.wait()?;
            bail!("sluice daemon ignored SIGTERM for {STOP_GRACE:?}; killed");
        }
        thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

impl Drop for Daemon<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            eprintln!("sluice-bench: cleaning up the daemon: {e:#}");
        }
    }
}

/// Asks the kernel to SIGTERM the daemon when the benchmark dies without unwinding (a signal),
/// so that no daemon outlives it.
#[expect(unsafe_code, reason = "Command::pre_exec is unsafe; prctl is async-signal-safe")]
fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: the closure only calls prctl(2), which is async-signal-safe, between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(std::io::Error::from)
        });
    }
}

/// The daemon's pinned route trie of one family, read directly.
enum RouteTrie {
    V4(LpmTrie<MapData, [u8; 4], Route>),
    V6(LpmTrie<MapData, [u8; 16], Route>),
}

impl RouteTrie {
    pub(super) fn open(pin_dir: &Path, family: Family) -> anyhow::Result<Self> {
        let name = match family {
            Family::V4 => sluice_common::names::ROUTES_V4,
            Family::V6 => sluice_common::names::ROUTES_V6,
        };
        let path = PinDir::new(pin_dir).map(name);
        let map = Map::from_map_data(
            MapData::from_pin(&path).with_context(|| format!("open {}", path.display()))?,
        )?;
        Ok(match family {
            Family::V4 => Self::V4(map.try_into()?),
            Family::V6 => Self::V6(map.try_into()?),
        })
    }

    /// Entries in the trie (one system call each).
    pub(super) fn len(&self) -> anyhow::Result<usize> {
        let mut n = 0;
        match self {
            Self::V4(t) => {
                for k in t.keys() {
                    k?;
                    n += 1;
                }
            }
            Self::V6(t) => {
                for k in t.keys() {
                    k?;
                    n += 1;
                }
            }
        }
        Ok(n)
    }
}

/// A process's resident memory in KiB: `VmRSS`, `VmHWM`, `RssAnon` and `RssFile` (see
/// [`DaemonLoad`]'s `*_rss_kib` fields).
#[derive(Debug, Clone, Copy)]
pub(super) struct Memory {
    pub(super) now: Option<u64>,
    pub(super) peak: Option<u64>,
    pub(super) anon: Option<u64>,
    pub(super) mapped: Option<u64>,
}

/// How the daemon took the table in the kernel into its dataplane when it started.
#[derive(Debug, Serialize)]
pub(super) struct DaemonLoad {
    /// Routes of the table in the kernel.
    routes: usize,
    /// From the start until `sluice stats` shows both interfaces (the daemon has dumped and
    /// compiled the kernel's state and begun writing its maps).
    attached_s: f64,
    /// From the start until the pinned route trie holds at least `routes` entries.
    table_loaded_s: Option<f64>,
    /// From the start until the daemon logged that it is ready (every map written).
    ready_logged_s: Option<f64>,
    /// The routes of the family the daemon said it had written when it logged that it was ready
    /// (connected and local routes included).
    ready_routes: Option<usize>,
    /// `ready_logged_s` when the daemon had written the whole table by then: the daemon logs
    /// that it is ready once its first write of the kernel's state returned, so this is when
    /// the table was in the dataplane; `table_loaded_s` confirms it by counting the pinned trie,
    /// but only to the resolution of a count (seconds for a full table).
    all_written_s: Option<f64>,
    /// Entries in the trie when it was last counted (connected and local routes included).
    trie_entries: Option<usize>,
    /// Whether the trie could be counted, or why not.
    trie: String,
    /// What the last count of the trie took: the resolution of `table_loaded_s`.
    last_count_ms: Option<f64>,
    /// The daemon's resident memory with the table loaded (`VmRSS`), KiB.
    rss_kib: Option<u64>,
    /// Its peak resident memory so far (`VmHWM`), KiB.
    peak_rss_kib: Option<u64>,
    /// Of `rss_kib`, its own memory (`RssAnon`), KiB.
    anon_rss_kib: Option<u64>,
    /// Of `rss_kib`, mapped memory (`RssFile`): the executable and the dataplane's lookup
    /// tables, which are kernel memory mapped into the daemon to be written in place, KiB.
    mapped_rss_kib: Option<u64>,
}

impl DaemonLoad {
    pub(super) fn describe(&self) -> String {
        let s = |v: Option<f64>| v.map_or_else(|| "?".into(), |v| format!("{v:.2} s"));
        let mib = |v: Option<u64>| {
            v.map_or_else(|| "?".into(), |v| format!("{:.0} MiB", v as f64 / 1024.0))
        };
        format!(
            "{} in the dataplane after {} (written when it logged ready, {} routes; interfaces after {:.2} s; the count of its trie reached {} entries after {}, a count taking {}), RSS {} (peak {}; {} its own, {} mapped tables and executable)",
            if self.routes == 1 { "1 route".to_owned() } else { format!("{} routes", self.routes) },
            s(self.all_written_s),
            self.ready_routes.map_or_else(|| "?".into(), |n| n.to_string()),
            self.attached_s,
            self.trie_entries.map_or_else(|| "?".into(), |n| n.to_string()),
            s(self.table_loaded_s),
            self.last_count_ms.map_or_else(|| "?".into(), |v| format!("{v:.0} ms")),
            mib(self.rss_kib),
            mib(self.peak_rss_kib),
            mib(self.anon_rss_kib),
            mib(self.mapped_rss_kib)
        )
    }
}

/// The entry of `sluice stats --json` for interface `name`.
fn iface<'v>(stats: &'v Value, name: &str) -> Option<&'v Value> {
    stats["interfaces"].as_array()?.iter().find(|i| i["name"] == name)
}

pub(super) fn iface_field<'v>(stats: &'v Value, name: &str, path: &[&str]) -> Option<&'v Value> {
    path.iter().try_fold(iface(stats, name)?, |v, k| v.get(k))
}
