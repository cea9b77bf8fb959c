//! The route record (`ROUTES_V4`, `ROUTES_V6`): written in batches, large ones in the background
//! at a lower priority than the lookup tables that forward.

use std::{io, os::fd::AsFd as _};

use aya::maps::lpm_trie::Key;
use ipnet::IpNet;
use sluice_common::{Route, names};
use sluice_core::fib::Op;
use tracing::{debug, warn};

use crate::{
    batch,
    error::{DataplaneError, Result, error_chain},
    pin::{key_v4, key_v6},
};

/// Batches at least this large are written to the record in the background.
pub(crate) const RECORD_IN_BACKGROUND: usize = 1024;

/// Writes record changes (`ROUTES_V4`, `ROUTES_V6`) in order: runs of one family and kind, each
/// in batches of up to [`batch::CHUNK`] per system call, made a batch at a time (a full table's
/// keys and values at once would be another 16 MB).
pub(crate) fn write_record(
    v4: std::os::fd::BorrowedFd<'_>,
    v6: std::os::fd::BorrowedFd<'_>,
    pending: impl IntoIterator<Item = (IpNet, Option<Route>)>,
) -> Result<()> {
    let run_kind = |(net, route): &(IpNet, Option<Route>)| (net.addr().is_ipv4(), route.is_some());
    let mut run: Vec<(IpNet, Option<Route>)> = Vec::new();
    for entry in pending {
        if run.len() == batch::CHUNK || run.first().is_some_and(|f| run_kind(f) != run_kind(&entry))
        {
            write_run(v4, v6, &run)?;
            run.clear();
        }
        run.push(entry);
    }
    if !run.is_empty() {
        write_run(v4, v6, &run)?;
    }
    Ok(())
}

/// Writes entries of one family and kind (all set, or all deleted).
fn write_run(
    v4: std::os::fd::BorrowedFd<'_>,
    v6: std::os::fd::BorrowedFd<'_>,
    run: &[(IpNet, Option<Route>)],
) -> Result<()> {
    let (is_v4, set) = (run[0].0.addr().is_ipv4(), run[0].1.is_some());
    let values: Vec<Route> = run.iter().filter_map(|(_, r)| *r).collect();
    let values = set.then_some(&values[..]);
    if is_v4 {
        let keys: Vec<Key<[u8; 4]>> = run
            .iter()
            .filter_map(|(n, _)| if let IpNet::V4(n) = n { Some(key_v4(*n)) } else { None })
            .collect();
        write_keys(v4, &keys, values, names::ROUTES_V4)
    } else {
        let keys: Vec<Key<[u8; 16]>> = run
            .iter()
            .filter_map(|(n, _)| if let IpNet::V6(n) = n { Some(key_v6(*n)) } else { None })
            .collect();
        write_keys(v6, &keys, values, names::ROUTES_V6)
    }
}

/// Sets `keys` to `values`, or deletes them (`None`), in record map `name`.
fn write_keys<K: Copy>(
    fd: std::os::fd::BorrowedFd<'_>,
    keys: &[K],
    values: Option<&[Route]>,
    name: &'static str,
) -> Result<()> {
    match values {
        Some(values) => batch::update(fd, keys, values),
        None => batch::delete(fd, keys),
    }
    .map_err(|e| DataplaneError::Record(name, e))
}

pub(crate) enum RecordMsg {
    Batch(Vec<(IpNet, Option<Route>)>),
    /// A batch of map writes whose route writes go to the record (the batch itself, not a copy
    /// of its routes).
    Ops(Vec<Op>),
    /// Answered once every batch sent before it is written.
    Wait(std::sync::mpsc::Sender<()>),
}

/// A thread that writes record batches in the order they are sent. Dropping it waits until
/// everything sent is written.
#[derive(Debug)]
pub(crate) struct RecordWriter {
    tx: Option<std::sync::mpsc::Sender<RecordMsg>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for RecordMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Batch(b) => write!(f, "Batch({})", b.len()),
            Self::Ops(b) => write!(f, "Ops({})", b.len()),
            Self::Wait(_) => f.write_str("Wait"),
        }
    }
}

impl RecordWriter {
    pub(crate) fn start(v4: std::os::fd::OwnedFd, v6: std::os::fd::OwnedFd) -> io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::channel::<RecordMsg>();
        let thread = std::thread::Builder::new().name("sluice-record".into()).spawn(move || {
            lower_priority();
            for msg in rx {
                match msg {
                    RecordMsg::Batch(batch) => {
                        if let Err(e) = write_record(v4.as_fd(), v6.as_fd(), batch) {
                            warn!(error = %error_chain(&e), "writing the route record failed");
                        }
                    }
                    RecordMsg::Ops(ops) => {
                        let entries = ops.iter().filter_map(Op::route_write);
                        if let Err(e) = write_record(v4.as_fd(), v6.as_fd(), entries) {
                            warn!(error = %error_chain(&e), "writing the route record failed");
                        }
                    }
                    RecordMsg::Wait(done) => {
                        let _ = done.send(());
                    }
                }
            }
        })?;
        Ok(Self { tx: Some(tx), thread: Some(thread) })
    }

    pub(crate) fn send(&self, batch: Vec<(IpNet, Option<Route>)>) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(RecordMsg::Batch(batch));
        }
    }

    /// Sends a batch of map writes, whose route writes the thread puts in the record.
    pub(crate) fn send_ops(&self, ops: Vec<Op>) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(RecordMsg::Ops(ops));
        }
    }

    /// Blocks until every batch sent so far is written.
    pub(crate) fn wait(&self) {
        let (done, written) = std::sync::mpsc::channel();
        if let Some(tx) = &self.tx
            && tx.send(RecordMsg::Wait(done)).is_ok()
        {
            let _ = written.recv();
        }
    }
}

/// The nice value of the record writer: while a table loads, the kernel's LPM-trie inserts
/// take about a third of the daemon's CPU time, and the lookup tables, which forward, must not
/// wait behind them for a core. The record trails a little further instead.
pub(crate) const RECORD_NICE: libc::c_int = 10;

/// Lowers the calling thread's scheduling priority to [`RECORD_NICE`] (best effort).
pub(crate) fn lower_priority() {
    if let Err(e) = set_thread_nice(RECORD_NICE) {
        debug!(error = %e, "could not lower the record writer's priority");
    }
}

/// Sets the nice value of the calling thread (on Linux each thread has its own); threads it
/// starts afterwards inherit it.
///
/// # Errors
/// The kernel's refusal, e.g. raising the priority without `CAP_SYS_NICE`.
#[expect(unsafe_code, reason = "setpriority(2) and gettid(2) are C functions")]
pub fn set_thread_nice(nice: libc::c_int) -> io::Result<()> {
    // SAFETY: gettid has no preconditions; setpriority on PRIO_PROCESS with a thread id changes
    // only that thread on Linux.
    let rc = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid.cast_unsigned(), nice)
    };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

impl Drop for RecordWriter {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
