//! Sluice's test bench, not shipped: what the integration tests, the lab and the benchmarks
//! share. Nothing in the product depends on it.
//!
//! - [`netns`]: named network namespaces, removed on drop.
//! - [`lab`]: the demo topology of `make lab` (`sluice-lab`), and the subnets and namespaces the
//!   integration tests build their topologies from.
//! - [`fixture`]: the packet tests' namespace with the XDP program loaded and its maps filled,
//!   and the runner of their tables through `BPF_PROG_TEST_RUN`.
//! - [`frame`]: Ethernet, IPv4 and IPv6 frames built and checked byte by byte, for the packet
//!   tests and the benchmark's generator.
//! - [`table`]: synthetic Internet-like routing tables, installed over rtnetlink.
//! - [`api_lab`]: a daemon serving the API in a namespace of its own, and a raw HTTPS client
//!   that controls every byte it sends, for `make bench-api` and the hostile-client tests.
//! - [`bench`], [`bench_api`], [`bench_plugins`]: `make bench` (`sluice-bench`), `make bench-api`
//!   (`sluice-bench-api`) and `make bench-plugins` (`sluice-bench-plugins`).

use std::{io::Write as _, path::PathBuf};

use anyhow::Context as _;

pub mod api_lab;
pub mod bench;
pub mod bench_api;
pub mod bench_plugins;
pub mod fixture;
pub mod frame;
pub mod lab;
pub mod lab_bgp;
pub mod netns;
pub mod table;
pub mod wire;

/// Whether this process runs under CI (`CI` set, and not to `false` or `0`), where a privileged
/// test that cannot run fails instead of skipping.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// A test that cannot run here: fails under CI, else says why on stderr (past the harness's
/// capture, so the notice is seen) and lets the test return.
pub fn cannot_run(what: &str, why: &str) {
    assert!(!in_ci(), "{what} cannot run: {why}; under CI it must");
    let _ = writeln!(std::io::stderr().lock(), "NOTICE: {what} not run: {why}");
}

/// Whether the namespace tests can run here: root and a mounted bpffs. Where they cannot, a test
/// returns early after saying why, except under CI, where it fails.
pub fn privileged() -> bool {
    let problem =
        if std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m)).ok()
            != Some(0)
        {
            Some("not running as root (network namespaces, XDP and bpffs need it)")
        } else if !nix::sys::statfs::statfs("/sys/fs/bpf")
            .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC)
        {
            Some("bpffs is not mounted on /sys/fs/bpf (mount -t bpf bpf /sys/fs/bpf)")
        } else {
            None
        };
    let Some(p) = problem else { return true };
    cannot_run("namespace test", p);
    false
}

/// The `sluice` executable the lab and the benchmarks start: `SLUICE_BIN` if set, else the one
/// built beside the running program (`target/release/sluice` for `target/release/sluice-lab`,
/// and for a test in `target/release/deps/`).
pub fn sluice_exe() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("SLUICE_BIN") {
        return Ok(PathBuf::from(path));
    }
    let me = std::env::current_exe().context("locate the running executable")?;
    let dir = me.parent().context("the running executable has no directory")?;
    let candidates = [dir.join("sluice"), dir.parent().unwrap_or(dir).join("sluice")];
    candidates.iter().find(|p| p.is_file()).cloned().with_context(|| {
        format!(
            "no sluice executable beside {} (build it with `make build`, or set SLUICE_BIN)",
            me.display()
        )
    })
}

/// The testbed binaries' `main`: logs to stderr (`SLUICE_LOG`, default `info`), runs `body`, and
/// turns an error into a message (with a hint when it lacks root) and exit status 1.
pub fn main_of(name: &str, body: impl FnOnce() -> anyhow::Result<()>) -> std::process::ExitCode {
    sluice::init_logging();
    match body() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: error: {e:#}");
            if !nix::unistd::geteuid().is_root() {
                eprintln!("{name}: hint: the lab and the benchmarks need root");
            }
            std::process::ExitCode::FAILURE
        }
    }
}
