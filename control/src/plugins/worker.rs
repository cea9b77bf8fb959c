//! One thread per plugin: a plugin's long call (up to its deadline) delays no other plugin's
//! events and none of the operator's questions.
//!
//! - Each plugin runs on a worker thread of its own, supervised by a [`Manager`] holding it
//!   alone: its `init`, its calls, its quarantine and its restarts after a back-off happen there.
//! - Events are handed out by the [`Pool`]: a copy of each batch goes to every worker's queue,
//!   which holds [`QUEUE_BATCHES`] batches; a plugin that falls further behind loses its oldest
//!   batch, counted in its `dropped_events`. Samples are thinned for each plugin to the rate it
//!   asked for ([`Pool::dispatch`]).
//! - The hook tables have one lock: a worker applies its batch under it, all or nothing, and
//!   only while it is its plugin's current worker. A new instance (a new configuration or
//!   component) starts on a worker of its own beside the old one; its first rules replace the
//!   old ones under the lock, in one step, and from then on the old worker's writes are ignored.
//! - What the operator sees (status, usage, log) each worker publishes after each call, so that
//!   [`Pool::list`] never waits for a plugin.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, mpsc::Sender},
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use sluice_dataplane::hooks::{HookError, HookMaps, HookOp, HookTables};

use super::{
    Event, Log, LogLine, Manager, PluginError, PluginHost, PluginInfo, RouteLookup, Status, Table,
    TableSink, Usage, Wanted, util::panic_message,
};

/// Batches of events a worker's queue holds; beyond them the oldest is dropped.
pub const QUEUE_BATCHES: usize = 8;
/// How often an idle worker looks whether its plugin's restart is due.
const RESTART_CHECK: Duration = Duration::from_millis(200);
/// The nice value of the plugins' threads: that of a process started plainly, whatever priority
/// the daemon's own threads run at (`sluice daemon --nice`).
const PLUGIN_NICE: libc::c_int = 0;
/// A worker thread that died (a bug of the host, never a plugin's own failure) is started
/// again after this.
const WORKER_RESTART: Duration = Duration::from_secs(5);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while the lock was held leaves whole what it guards: every change under these
    // locks is a single assignment or a hook tables' batch, which undoes itself.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The hook tables and, for each plugin, the generation of the worker that may write its rules.
struct Shared<M: HookMaps> {
    tables: HookTables<M>,
    current: BTreeMap<String, u64>,
    /// The pool is gone: no worker writes again (a new pool may own the tables' maps).
    closed: bool,
}

type Tables<M> = Arc<Mutex<Shared<M>>>;

/// A worker's way to the hook tables: its writes, under the tables' lock, count only while it is
/// its plugin's current worker; a worker of a newer generation takes over with its first
/// `replace_owner`.
struct WorkerSink<M: HookMaps> {
    tables: Tables<M>,
    generation: u64,
}

impl<M: HookMaps> TableSink for WorkerSink<M> {
    fn apply(&mut self, owner: &str, ops: &[HookOp]) -> Result<(), HookError> {
        let mut s = lock(&self.tables);
        if s.closed || s.current.get(owner) != Some(&self.generation) {
            return Ok(());
        }
        s.tables.apply(owner, ops)
    }

    fn replace_owner(&mut self, owner: &str, ops: &[HookOp]) -> Result<(), HookError> {
        let mut s = lock(&self.tables);
        if s.closed || s.current.get(owner).is_some_and(|g| *g > self.generation) {
            return Ok(());
        }
        s.tables.replace_owner(owner, ops)?;
        s.current.insert(owner.to_owned(), self.generation);
        Ok(())
    }

    fn remove_owner(&mut self, owner: &str) -> Result<(), HookError> {
        let mut s = lock(&self.tables);
        if s.closed || s.current.get(owner) != Some(&self.generation) {
            return Ok(());
        }
        s.tables.remove_owner(owner)
    }

    fn set_limits(&mut self, owner: &str, limits: sluice_core::hooks::OwnerLimits) {
        // Set just before the start's `replace_owner`, under the same rule: a newer worker's
        // limits are not overwritten by an older one's.
        let mut s = lock(&self.tables);
        if s.closed || s.current.get(owner).is_some_and(|g| *g > self.generation) {
            return;
        }
        s.tables.set_limits(owner, limits);
    }
}

/// A worker's queue of event batches, bounded, the oldest dropped first.
#[derive(Default)]
struct Queue {
    state: Mutex<QueueState>,
    ready: Condvar,
}

#[derive(Default)]
struct QueueState {
    batches: VecDeque<Vec<Event>>,
    stop: bool,
    /// Events dropped because the plugin fell behind.
    dropped: u64,
}

enum Popped {
    Batch(Vec<Event>),
    Idle,
    Stop,
}

impl Queue {
    fn push(&self, batch: Vec<Event>) {
        let mut q = lock(&self.state);
        if q.batches.len() >= QUEUE_BATCHES
            && let Some(old) = q.batches.pop_front()
        {
            q.dropped = q.dropped.saturating_add(old.len() as u64);
        }
        q.batches.push_back(batch);
        self.ready.notify_one();
    }

    fn pop(&self, wait: Duration) -> Popped {
        let q = lock(&self.state);
        let (mut q, _) = self
            .ready
            .wait_timeout_while(q, wait, |q| q.batches.is_empty() && !q.stop)
            .unwrap_or_else(PoisonError::into_inner);
        if q.stop {
            return Popped::Stop;
        }
        q.batches.pop_front().map_or(Popped::Idle, Popped::Batch)
    }

    fn stop(&self) {
        lock(&self.state).stop = true;
        self.ready.notify_one();
    }

    fn dropped(&self) -> u64 {
        lock(&self.state).dropped
    }
}

/// What a worker publishes of its plugin after each call.
#[derive(Default)]
struct Published {
    /// Its start: `None` while `init` runs.
    started: Option<Result<(), String>>,
    status: Option<Status>,
    usage: Usage,
    log: Option<Log>,
}

/// A plugin's worker, as the pool holds it.
struct Slot {
    wanted: Wanted,
    /// `store` or `directory`.
    source: &'static str,
    /// Later starts have higher ones.
    generation: u64,
    queue: Arc<Queue>,
    published: Arc<Mutex<Published>>,
    thread: Option<JoinHandle<()>>,
    /// For thinning samples: xorshift64 state.
    rng: u64,
}

impl Slot {
    fn started(&self) -> Option<Result<(), String>> {
        lock(&self.published).started.clone()
    }

    fn retire(&mut self) {
        self.queue.stop();
        // A worker in a long call ends after it; nobody waits for it.
        drop(self.thread.take());
    }

    fn next_random(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }
}

/// A start under way, and who waits for its outcome.
struct Starting {
    slot: Slot,
    reply: Option<Sender<Result<(), String>>>,
}

/// The plugins of a router, each on a worker thread of its own, writing to `tables`.
pub struct Pool<M: HookMaps + Send + 'static> {
    host: PluginHost,
    tables: Tables<M>,
    routes: Option<RouteLookup>,
    generation: u64,
    running: BTreeMap<String, Slot>,
    starting: Vec<Starting>,
    /// Workers that died, and when to start them again.
    dead: Vec<(Wanted, &'static str, Instant)>,
}

impl<M: HookMaps + Send + 'static> std::fmt::Debug for Pool<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("running", &self.running.keys()).finish_non_exhaustive()
    }
}

impl<M: HookMaps + Send + 'static> Pool<M> {
    /// A pool with no plugins, writing to `tables`.
    pub fn new(host: PluginHost, tables: HookTables<M>, routes: Option<RouteLookup>) -> Self {
        Self {
            host,
            tables: Arc::new(Mutex::new(Shared {
                tables,
                current: BTreeMap::new(),
                closed: false,
            })),
            routes,
            generation: 0,
            running: BTreeMap::new(),
            starting: Vec::new(),
            dead: Vec::new(),
        }
    }

    /// Works on the hook tables under their lock (between two plugins' batches).
    pub fn with_tables<R>(&self, f: impl FnOnce(&mut HookTables<M>) -> R) -> R {
        f(&mut lock(&self.tables).tables)
    }

    /// Whether a plugin of this name runs (or is quarantined).
    pub fn contains(&self, name: &str) -> bool {
        self.running.contains_key(name)
    }

    /// Where the running plugin `name` comes from, and what it runs.
    pub fn running(&self, name: &str) -> Option<(&'static str, &Wanted)> {
        self.running.get(name).map(|s| (s.source, &s.wanted))
    }

    /// Whether a start is under way for `name` with exactly this component and configuration.
    pub fn starting(&self, w: &Wanted) -> bool {
        self.starting.iter().any(|s| s.slot.wanted.runs_as(w))
    }

    /// Whether any start is under way ([`Pool::poll`] finishes them).
    pub fn busy(&self) -> bool {
        !self.starting.is_empty()
    }

    /// Starts a plugin on a worker of its own, or a new instance of a running one beside it
    /// (which goes on until the new one's `init` succeeded). Returns at once: [`Pool::poll`]
    /// finishes the start and sends its outcome to `reply`.
    pub fn start(
        &mut self,
        wanted: Wanted,
        source: &'static str,
        reply: Option<Sender<Result<(), String>>>,
    ) {
        self.generation += 1;
        let generation = self.generation;
        let queue = Arc::new(Queue::default());
        let published = Arc::new(Mutex::new(Published::default()));
        let sink = WorkerSink { tables: Arc::clone(&self.tables), generation };
        let manager = Manager::new(self.host.clone(), sink, self.routes.clone());
        let name = wanted.manifest.name.clone();
        let (w, q, p) = (wanted.clone(), Arc::clone(&queue), Arc::clone(&published));
        let spawned = thread::Builder::new()
            .name(format!("plugin-{}", super::util::clip(&name, 8)))
            .spawn(move || work(manager, &w, &q, &p));
        let thread = match spawned {
            Ok(t) => Some(t),
            Err(e) => {
                lock(&published).started = Some(Err(format!("no thread for it: {e}")));
                None
            }
        };
        let slot = Slot {
            wanted,
            source,
            generation,
            queue,
            published,
            thread,
            rng: 0x9e37_79b9_7f4a_7c15 ^ generation,
        };
        self.starting.push(Starting { slot, reply });
    }

    /// Finishes the starts whose `init` ended: a plugin started takes its name's place (the
    /// worker it replaces stops after its current call), one that failed is dropped; the outcome
    /// goes to whoever waits. Starts again, after [`WORKER_RESTART`], a worker that died.
    /// Returns the outcomes; a start a later one overtook is none (its waiter is told).
    pub fn poll(&mut self) -> Vec<(String, Result<(), String>)> {
        let mut done = Vec::new();
        let mut i = 0;
        while i < self.starting.len() {
            let outcome = self.starting[i].slot.started().or_else(|| {
                self.starting[i]
                    .slot
                    .thread
                    .as_ref()
                    .is_none_or(JoinHandle::is_finished)
                    .then(|| Err("its worker ended during its start".to_owned()))
            });
            let Some(outcome) = outcome else {
                i += 1;
                continue;
            };
            let Starting { mut slot, reply } = self.starting.remove(i);
            let name = slot.wanted.manifest.name.clone();
            // A later start that ended first won: this one's rules were never written. Its
            // waiter hears so; it is no outcome of the plugin's (the later instance runs).
            let overtaken = outcome.is_ok()
                && self.running.get(&name).is_some_and(|r| r.generation > slot.generation);
            let outcome = if overtaken {
                Err("a newer instance started meanwhile".to_owned())
            } else {
                outcome
            };
            if outcome.is_ok() {
                if let Some(mut old) = self.running.insert(name.clone(), slot) {
                    old.retire();
                }
            } else {
                slot.retire();
            }
            if let Some(reply) = reply {
                let _ = reply.send(outcome.clone());
            }
            if !overtaken {
                done.push((name, outcome));
            }
        }
        let died: Vec<String> = self
            .running
            .iter()
            .filter(|(_, s)| s.thread.as_ref().is_some_and(JoinHandle::is_finished))
            .map(|(n, _)| n.clone())
            .collect();
        for name in died {
            let Some(mut slot) = self.running.remove(&name) else { continue };
            let why = match slot.thread.take().map(JoinHandle::join) {
                Some(Err(payload)) => format!("it panicked: {}", panic_message(&*payload)),
                _ => "it ended".to_owned(),
            };
            tracing::error!(
                plugin = name,
                reason = why,
                "a plugin's worker died; starting it again"
            );
            self.dead.push((slot.wanted, slot.source, Instant::now() + WORKER_RESTART));
        }
        let now = Instant::now();
        let (due, later): (Vec<_>, Vec<_>) = self.dead.drain(..).partition(|(_, _, at)| *at <= now);
        self.dead = later;
        for (wanted, source, _) in due {
            self.start(wanted, source, None);
        }
        done
    }

    /// Starts a plugin and waits for its `init` (at most `timeout`): for tests and tools; the
    /// daemon's thread uses [`Pool::start`] and [`Pool::poll`] so as not to wait.
    pub fn start_and_wait(
        &mut self,
        wanted: Wanted,
        source: &'static str,
        timeout: Duration,
    ) -> Result<(), String> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.start(wanted, source, Some(tx));
        let until = Instant::now() + timeout;
        loop {
            self.poll();
            if let Ok(outcome) = rx.try_recv() {
                return outcome;
            }
            if Instant::now() >= until {
                return Err("its start did not end in time".into());
            }
            thread::sleep(Duration::from_millis(2));
        }
    }

    /// Checks a plugin as a start would take it, on a thread of its own, changing nothing: its
    /// manifest, signature, hash and a trial `init` ([`PluginHost::trial`]). The outcome goes
    /// to `reply`.
    pub fn check(&self, w: Wanted, reply: Sender<Result<(), PluginError>>) {
        let (host, routes) = (self.host.clone(), self.routes.clone());
        let spawned = thread::Builder::new().name("plugin-check".into()).spawn(move || {
            let outcome = host
                .compile(w.manifest, &w.wasm)
                .and_then(|compiled| host.trial(&compiled, &w.config, routes));
            let _ = reply.send(outcome);
        });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "no thread to check a plugin");
        }
    }

    /// Stops a plugin and removes everything it wrote (its worker ends after its current
    /// call; its writes from then on are ignored). A start under way for it is dropped too.
    pub fn remove(&mut self, name: &str) -> Result<bool, PluginError> {
        let mut found = false;
        self.starting.retain_mut(|s| {
            let keep = s.slot.wanted.manifest.name != name;
            if !keep {
                s.slot.retire();
                if let Some(reply) = s.reply.take() {
                    let _ = reply.send(Err("removed while it started".into()));
                }
            }
            keep
        });
        self.dead.retain(|(w, _, _)| w.manifest.name != name);
        if let Some(mut slot) = self.running.remove(name) {
            slot.retire();
            found = true;
        }
        // A generation no worker has: none of them writes again.
        self.generation += 1;
        let mut s = lock(&self.tables);
        s.current.insert(name.to_owned(), self.generation);
        s.tables.remove_owner(name)?;
        Ok(found)
    }

    /// Removes a plugin for good: everything it wrote, and its key-value store.
    pub fn forget(&mut self, name: &str) -> Result<bool, PluginError> {
        let removed = self.remove(name)?;
        self.host.forget_kv(name)?;
        Ok(removed)
    }

    /// Hands a batch of events to every plugin's queue and returns at once. Samples go only to
    /// plugins that declare the table `sample` and asked for a rate (`set-sampling`), thinned
    /// from the rate the dataplane took them at to theirs, each saying its rate.
    pub fn dispatch(&mut self, events: &[Event]) {
        let rates: BTreeMap<String, u32> = {
            let s = lock(&self.tables);
            self.running
                .keys()
                .filter_map(|n| s.tables.sampling(n).map(|every| (n.clone(), every)))
                .collect()
        };
        for (name, slot) in &mut self.running {
            let wants_samples = slot.wanted.manifest.tables.contains(&Table::Sample);
            let rate = rates.get(name).copied().filter(|every| wants_samples && *every > 0);
            let mut batch = Vec::with_capacity(events.len());
            for e in events {
                match e {
                    Event::Sample(s) => {
                        let Some(every) = rate else { continue };
                        if let Some(s) = thin(s, every, || slot.next_random()) {
                            batch.push(Event::Sample(s));
                        }
                    }
                    other => batch.push(other.clone()),
                }
            }
            slot.queue.push(batch);
        }
    }

    /// Every running or quarantined plugin, from what their workers last published.
    pub fn list(&self) -> Vec<PluginInfo> {
        let rules = lock(&self.tables).tables.rules(None).unwrap_or_default();
        self.running
            .iter()
            .map(|(name, slot)| {
                let m = &slot.wanted.manifest;
                let p = lock(&slot.published);
                PluginInfo {
                    name: name.clone(),
                    version: m.version.clone(),
                    tables: m.tables.clone(),
                    sha256: m.sha256.clone(),
                    publisher: m.publisher.clone(),
                    source: slot.source,
                    status: p.status.clone().unwrap_or(Status::Running),
                    rules: rules.iter().filter(|r| r.owner == *name).count(),
                    usage: p.usage,
                    dropped_events: slot.queue.dropped(),
                }
            })
            .collect()
    }

    /// A plugin's log, if there is such a plugin.
    pub fn logs(&self, name: &str) -> Option<Vec<LogLine>> {
        let slot = self.running.get(name)?;
        let log = lock(&slot.published).log.clone()?;
        Some(lock(&log).iter().cloned().collect())
    }

    /// The names and states of the plugins, for the host's report.
    pub fn statuses(&self) -> Vec<(String, Status)> {
        self.running
            .iter()
            .map(|(n, s)| (n.clone(), lock(&s.published).status.clone().unwrap_or(Status::Running)))
            .collect()
    }
}

impl<M: HookMaps + Send + 'static> Drop for Pool<M> {
    fn drop(&mut self) {
        lock(&self.tables).closed = true;
        for slot in self.running.values_mut() {
            slot.retire();
        }
        for s in &mut self.starting {
            s.slot.retire();
        }
    }
}

/// A sample taken at one in `s.every` as one of a plugin sampling at one in `every`: kept with
/// the probability `s.every / every`, so that what the plugin keeps is one packet in `every`. A
/// plugin asking for a denser rate than the sample was taken at (its request not yet in the
/// dataplane) receives it as it is, saying the rate it was taken at.
fn thin(
    s: &super::FlowSample,
    every: u32,
    mut random: impl FnMut() -> u64,
) -> Option<super::FlowSample> {
    let taken = s.every.max(1);
    if every > taken && random() % u64::from(every) >= u64::from(taken) {
        return None;
    }
    Some(super::FlowSample { every: every.max(taken), ..s.clone() })
}

/// A worker's life: its plugin's start, then its batches of events until it is stopped.
fn work<S: TableSink>(
    mut manager: Manager<S>,
    wanted: &Wanted,
    queue: &Queue,
    published: &Mutex<Published>,
) {
    // Third-party code: not at the priority the daemon may have given its own threads.
    if let Err(e) = sluice_dataplane::set_thread_nice(PLUGIN_NICE) {
        tracing::debug!(error = %e, "could not set a plugin thread's priority");
    }
    let name = wanted.manifest.name.clone();
    manager.allow_match_all(&name, wanted.allow_match_all);
    let started = manager
        .add(wanted.manifest.clone(), &wanted.wasm, &wanted.config)
        .map_err(|e| e.to_string());
    publish(&manager, &name, published, Some(started.clone()));
    if started.is_err() {
        return;
    }
    loop {
        match queue.pop(RESTART_CHECK) {
            Popped::Stop => return,
            Popped::Batch(events) => {
                for (name, e) in manager.dispatch(&events) {
                    tracing::warn!(plugin = name, error = %e, "plugin quarantined");
                }
            }
            Popped::Idle => {}
        }
        for name in manager.restart_due() {
            tracing::info!(plugin = name, "plugin restarted");
        }
        publish(&manager, &name, published, None);
    }
}

fn publish<S: TableSink>(
    manager: &Manager<S>,
    name: &str,
    published: &Mutex<Published>,
    started: Option<Result<(), String>>,
) {
    let mut p = lock(published);
    if let Some(started) = started {
        p.started = Some(started);
    }
    if let Some(s) = manager.plugins().get(name) {
        p.status = Some(s.status());
        p.usage = s.plugin().usage();
        p.log = Some(s.plugin().log());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(every: u32) -> super::super::FlowSample {
        super::super::FlowSample {
            ifindex: 2,
            len: 60,
            proto: 6,
            src: "192.0.2.1".into(),
            dst: "198.51.100.1".into(),
            sport: 1,
            dport: 2,
            tcp_flags: 0x02,
            every,
        }
    }

    #[test]
    fn thinning_keeps_one_in_the_ratio_and_says_the_plugins_rate() {
        let mut rng = 0x1234_5678_u64;
        let mut random = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let n = 640_000u32;
        let kept: Vec<_> = (0..n).filter_map(|_| thin(&sample(1), 64, &mut random)).collect();
        let expected = f64::from(n) / 64.0;
        let ratio = kept.len() as f64 / expected;
        println!("thinned 1-in-1 to 1-in-64: kept {} of {n} (expected {expected})", kept.len());
        assert!((0.95..1.05).contains(&ratio), "kept {} of {n}", kept.len());
        assert!(kept.iter().all(|s| s.every == 64 && s.tcp_flags == 0x02));
        let same: Vec<_> = (0..1000).filter_map(|_| thin(&sample(64), 64, &mut random)).collect();
        assert_eq!(same.len(), 1000, "the plugin's own rate: every sample");
        let denser = thin(&sample(64), 8, &mut random).expect("kept");
        assert_eq!(denser.every, 64, "a sample taken sparser says the rate it was taken at");
    }
}
