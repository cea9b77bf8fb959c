//! The API's state: the store, the dataplane's pins, sessions, and the daemon's channels (plugin
//! thread, route origins); and the audit log every change goes to.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize},
    },
};

use sluice_dataplane::PinDir;
use sluice_store::{AuditEntry, AuditLog, Store};
use tokio::sync::Notify;
use tracing::warn;

use super::{Problem, session::Sessions};
use crate::auth::{random_hex, write_private};

/// A question to the daemon: which protocol installed the routes of these prefixes.
pub type OriginQuery = (Vec<ipnet::IpNet>, std::sync::mpsc::Sender<Vec<Option<u8>>>);

/// The API's state.
pub struct Api {
    pub(super) store: Store,
    pub(super) pin: PinDir,
    pub(super) state_dir: PathBuf,
    pub(super) sessions: Sessions,
    /// The one-time setup token, until the first administrator exists.
    pub(super) setup_token: Mutex<Option<String>>,
    /// Told when a commit changed the running configuration: the daemon applies it.
    pub changed: Arc<Notify>,
    /// Requests answered, for `/metrics`.
    pub(super) requests: AtomicU64,
    pub(super) plugins: Option<std::sync::mpsc::Sender<crate::plugins::Command>>,
    /// What the plugin host reports (`/health`).
    pub(super) plugin_report: Option<crate::plugins::SharedReport>,
    /// The daemon's `--attach` ports: attached whatever the configuration says.
    pub(super) fixed_ports: Vec<String>,
    /// Asks the daemon which protocol installed routes (its RIB knows).
    pub(super) origins: Option<tokio::sync::mpsc::UnboundedSender<OriginQuery>>,
    /// The top talkers' reads, for their rates.
    pub(super) talkers: Mutex<crate::show::TalkerWindow>,
    /// Anonymous requests to public routes refused, by route and status: counted, not logged
    /// one by one (anyone can send them).
    pub(super) refused: Mutex<BTreeMap<(&'static str, &'static str, u16), u64>>,
    /// Large request bodies being read now ([`super::http::LARGE_BODIES`] at most).
    pub(super) large_bodies: AtomicUsize,
    /// The routing daemon, when the daemon runs one.
    pub(super) bird: Option<Arc<crate::bird::Bird>>,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api").field("state_dir", &self.state_dir).finish_non_exhaustive()
    }
}

impl Api {
    /// The API over a store; makes the setup token when no administrator exists yet.
    pub fn new(store: Store, pin: PinDir, state_dir: &Path) -> anyhow::Result<Self> {
        crate::auth::start_verifiers();
        let api = Self {
            store,
            pin,
            state_dir: state_dir.to_owned(),
            sessions: Sessions::default(),
            setup_token: Mutex::new(None),
            changed: Arc::new(Notify::new()),
            requests: AtomicU64::new(0),
            plugins: None,
            plugin_report: None,
            fixed_ports: Vec::new(),
            origins: None,
            talkers: Mutex::new(crate::show::TalkerWindow::default()),
            refused: Mutex::new(BTreeMap::new()),
            large_bodies: AtomicUsize::new(0),
            bird: None,
        };
        let path = api.state_dir.join("setup-token");
        if api.store.is_set_up()? {
            let _ = std::fs::remove_file(&path);
        } else {
            // A token already on disk and not spent is kept: the console and the log of an
            // earlier start showed it, and a restart (by systemd, after a failure) must not
            // make what the operator was shown wrong.
            let kept = std::fs::read_to_string(&path)
                .ok()
                .map(|t| t.trim().to_owned())
                .filter(|t| t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()));
            let token = if let Some(token) = kept {
                token
            } else {
                let token = random_hex(32);
                write_private(&path, token.as_bytes())?;
                token
            };
            warn!(
                token = %token,
                file = %path.display(),
                "no administrator yet: create one with this one-time setup token (POST /api/v1/setup or the console)"
            );
            eprintln!("sluice: one-time setup token: {token}");
            *api.setup_token.lock().expect("lock") = Some(token);
        }
        Ok(api)
    }

    /// Where plugin commands go (the daemon's plugin thread), and what the plugin host
    /// reports.
    #[must_use]
    pub fn with_plugins(
        mut self,
        tx: std::sync::mpsc::Sender<crate::plugins::Command>,
        report: crate::plugins::SharedReport,
    ) -> Self {
        self.plugins = Some(tx);
        self.plugin_report = Some(report);
        self
    }

    /// The routing daemon: commits changing `protocols` are checked by it, and
    /// `GET /protocols` reads it.
    #[must_use]
    pub fn with_bird(mut self, bird: Option<Arc<crate::bird::Bird>>) -> Self {
        self.bird = bird;
        self
    }

    /// Where to ask which protocol installed a route.
    #[must_use]
    pub fn with_origins(mut self, tx: tokio::sync::mpsc::UnboundedSender<OriginQuery>) -> Self {
        self.origins = Some(tx);
        self
    }

    /// The ports the daemon attaches by its `--attach` option (they cannot be detached here).
    #[must_use]
    pub fn with_fixed_ports(mut self, ports: Vec<String>) -> Self {
        self.fixed_ports = ports;
        self
    }

    /// Writes an attempt and its outcome (`ok`, or the problem's status and detail) to the
    /// audit log of changes.
    pub(super) fn audit(
        &self,
        who: &str,
        from: &str,
        action: String,
        outcome: Result<(), &Problem>,
    ) {
        self.audit_to(AuditLog::Changes, who, from, action, outcome);
    }

    /// Counts an anonymous request to a public route that was refused.
    pub(super) fn count_refused(&self, spec: &super::RouteSpec, status: u16) {
        let key = (spec.method, spec.path, status);
        *self.refused.lock().expect("lock").entry(key).or_default() += 1;
    }

    /// Writes an attempt and its outcome to one of the audit logs.
    pub(super) fn audit_to(
        &self,
        log: AuditLog,
        who: &str,
        from: &str,
        action: String,
        outcome: Result<(), &Problem>,
    ) {
        let outcome = match outcome {
            Ok(()) => "ok".to_owned(),
            Err(p) => format!("{} {}", p.status, p.detail),
        };
        let entry = AuditEntry {
            seq: 0,
            at_ms: 0,
            who: who.to_owned(),
            from: from.to_owned(),
            action,
            outcome,
        };
        if let Err(e) = self.store.audit_to(log, entry) {
            warn!(error = %e, "writing the audit log failed");
        }
    }
}
