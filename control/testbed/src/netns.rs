//! Named network namespaces (`/run/netns/NAME`), made and removed with iproute2, for the lab,
//! the benchmarks and the tests. A [`NetNs`] deletes its namespace when dropped, also on panic.

use std::{
    fs::File,
    io::Write as _,
    path::PathBuf,
    process::{Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context as _, bail};

/// A named network namespace, deleted on drop unless [`NetNs::keep`] was called.
#[derive(Debug)]
pub struct NetNs {
    name: String,
    keep: bool,
}

impl NetNs {
    /// Creates the namespace (replacing a stale one of the same name) with `lo` up.
    pub fn create(name: &str) -> anyhow::Result<Self> {
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        run(Command::new("ip").args(["netns", "add", name]))?;
        let ns = Self { name: name.to_owned(), keep: false };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Adopts an existing namespace without taking ownership of its lifetime.
    pub fn existing(name: &str) -> Self {
        Self { name: name.to_owned(), keep: true }
    }

    /// Leaves the namespace in place when this value is dropped.
    #[must_use]
    pub fn keep(mut self) -> Self {
        self.keep = true;
        self
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/NAME`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Runs `ip -n NAME ARGS...` and returns its standard output.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// A command that runs inside the namespace through `nsenter --net`, which (unlike
    /// `ip netns exec`) leaves /sys, and so the pinned BPF objects, visible.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path().display())).arg("--").arg(program);
        c
    }

    /// Runs a command inside the namespace, failing with its output if it fails.
    pub fn run(&self, program: &str, args: &[&str]) -> anyhow::Result<String> {
        run(self.command(program).args(args))
    }

    /// Feeds `commands` (one per line) to `ip -n NAME -batch -`. ip stops at the first line that
    /// fails, and the error says which.
    pub fn batch(&self, commands: &str) -> anyhow::Result<()> {
        let mut child = Command::new("ip")
            .args(["-n", &self.name, "-batch", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawn ip -batch")?;
        // ip closes its input when a line fails: the reason is in its output, not in this write.
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(commands.as_bytes());
        }
        let out = child.wait_with_output().context("wait for ip -batch")?;
        if !out.status.success() {
            bail!(
                "ip -n {} -batch - failed: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// Sets a sysctl inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> anyhow::Result<()> {
        self.run("sysctl", &["-qw", &format!("{key}={value}")]).map(drop)
    }

    /// Moves the calling thread into the namespace (only this thread: `setns` is per thread).
    pub fn enter(&self) -> anyhow::Result<()> {
        let f =
            File::open(self.path()).with_context(|| format!("open {}", self.path().display()))?;
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("setns into {}", self.name))
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if !self.keep {
            let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
        }
    }
}

/// A name unique to this process and call, `PREFIX-PID-N`, short enough for interface names
/// when `prefix` has at most 4 characters.
pub fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}x{n}", std::process::id() % 100_000)
}

/// Runs a command and returns its standard output, or an error with what it printed.
pub fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let Output { status, stdout, stderr } =
        cmd.output().with_context(|| format!("spawn {cmd:?}"))?;
    if !status.success() {
        bail!(
            "{cmd:?} failed ({status}): {}{}",
            String::from_utf8_lossy(&stderr).trim(),
            String::from_utf8_lossy(&stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&stdout).into_owned())
}
