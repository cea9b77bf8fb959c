//! SIGINT and SIGTERM while the benchmark runs: noted, so that the run stops between steps and
//! unwinds through its guards.

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::ensure;
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};

/// Set by SIGINT or SIGTERM while the benchmark runs. Checked between steps, so that an
/// interrupted run unwinds through its guards (daemon, pins, namespaces) instead of dying with
/// them in place.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// Whether SIGINT or SIGTERM arrived during the run.
pub(super) fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

/// Fails once the run is interrupted.
pub(super) fn check_interrupted() -> anyhow::Result<()> {
    ensure!(!interrupted(), "interrupted");
    Ok(())
}

/// Catches SIGINT and SIGTERM for the length of the run and restores the previous actions on drop.
#[derive(Debug)]
pub(super) struct SignalGuard(Vec<(Signal, SigAction)>);

impl SignalGuard {
    #[expect(unsafe_code, reason = "sigaction(2) is unsafe; the handler only stores to an atomic")]
    pub(super) fn install() -> anyhow::Result<Self> {
        INTERRUPTED.store(false, Ordering::Relaxed);
        // No SA_RESTART: a blocking BPF_PROG_TEST_RUN returns EINTR at once.
        let action =
            SigAction::new(SigHandler::Handler(on_signal), SaFlags::empty(), SigSet::empty());
        let mut previous = Vec::new();
        for signal in [Signal::SIGINT, Signal::SIGTERM] {
            // SAFETY: the handler is async-signal-safe (one atomic store).
            previous.push((signal, unsafe { sigaction(signal, &action) }?));
        }
        Ok(Self(previous))
    }
}

impl Drop for SignalGuard {
    #[expect(unsafe_code, reason = "sigaction(2) is unsafe")]
    fn drop(&mut self) {
        for (signal, action) in &self.0 {
            // SAFETY: puts back the action that was installed before the run.
            let _ = unsafe { sigaction(*signal, action) };
        }
    }
}
