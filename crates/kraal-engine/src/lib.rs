//! Workspace use cases: the engine's state and its small accessors here; `lifecycle`
//! (create, up, down, snapshot, restore, remove), `guests` (reaching the guest agent,
//! running commands), `reconcile` (desired vs observed state) and the other modules.
//!
//! Every state-changing operation runs as a spawned task holding the workspace's operation
//! lock, so a client that disconnects never leaves an operation half-done, and two
//! operations on one workspace never interleave. The reconciler periodically compares the
//! database's desired state with what the backend reports and repairs the difference,
//! which is also how the daemon picks up running sandboxes after a restart.

// Errors carry their full context (backend, guest, store causes) and only travel on
// cold paths, so their size does not matter.
#![allow(clippy::result_large_err)]

mod attachments;
mod backups;
mod error;
mod feed;
mod freeze;
mod guests;
mod host_backups;
mod housekeeping;
mod lifecycle;
mod notices;
mod ports;
mod reconcile;
mod review;
mod sessions;
mod templates;
pub use kraal_store::SessionRecord;
pub use sessions::{LinkServices, MAX_MESSAGE, NewSession, check_spec};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kraal_core::{BackendKind, ModelGateway, Resources, SessionId, Source, WorkspaceId};
use kraal_sandbox::{Backend, GuestClient, SandboxSpec};
use kraal_store::{Store, WorkspaceRecord};
use tokio::task::JoinHandle;

pub use attachments::{MAX_ATTACHMENT, MAX_ATTACHMENTS_TOTAL, Upload, check_uploads, media_type};
pub use backups::{BackupMeta, TransferProgress};
pub use error::EngineError;
pub use feed::LiveEvent;
pub use housekeeping::{ActivityHold, Housekeeping};
/// The whole chain of an error on one line.
pub use kraal_sandbox::error_chain as chain;
pub use notices::Notice;
pub use ports::{Forward, LivePort, PortStream};
pub use review::{DiffFile, DiffLine, Hunk, LineKind, NewComment, ReviewTarget, Side};

/// What a client asks for when creating a workspace.
#[derive(Debug, Clone)]
pub struct CreateRequest {
    pub name: Option<String>,
    pub source: Source,
    pub resources: Option<Resources>,
    /// Image name (`None`: the backend's default).
    pub image: Option<String>,
    /// A long-lived control workspace: fixed address, `rm` only with `force`.
    pub persistent: bool,
    /// Host directories to mount (read-only unless `writable`).
    pub mounts: Vec<kraal_core::Mount>,
    /// Egress allowlist (`None`: the default one).
    pub egress: Option<Vec<kraal_core::EgressRule>>,
    /// Git hosts whose HTTPS requests get a stored token added on the host.
    pub git: Vec<kraal_core::GitCredential>,
    /// The backup the workspace is being restored from (removed if the restore never
    /// completes).
    pub restoring: Option<String>,
    /// Idle stop and backup interval (unset: the daemon's defaults).
    pub policy: kraal_core::Policy,
}

/// The result of an operation that may still be running.
pub struct Pending {
    pub record: WorkspaceRecord,
    pub done: JoinHandle<Result<WorkspaceRecord, String>>,
}

pub struct Engine {
    store: Store,
    backend: Arc<dyn Backend>,
    services: Option<Arc<dyn LinkServices>>,
    guests: Mutex<HashMap<WorkspaceId, GuestClient>>,
    locks: WorkspaceLocks,
    /// Model gateways of running workspaces, as their link services reported them.
    gateways: Mutex<HashMap<WorkspaceId, ModelGateway>>,
    /// One mirror task per session being followed.
    followers: Mutex<HashMap<SessionId, JoinHandle<()>>>,
    /// Per session the newest mirrored events in memory and a watch of the newest
    /// sequence number, for live readers.
    feeds: feed::Feeds,
    /// The one writer of mirrored events (group commit).
    writer: feed::Writer,
    /// Session state changes of every session, for notifications.
    changes: tokio::sync::broadcast::Sender<SessionChange>,
    /// Everything worth notifying someone about ([`Notice`]).
    notices: tokio::sync::broadcast::Sender<Notice>,
    /// Workspaces this process is restoring from a backup right now.
    restores: Mutex<std::collections::HashSet<WorkspaceId>>,
    /// Restores that write a new workspace's volume on the host before its first start.
    prefills: Mutex<HashMap<WorkspaceId, host_backups::Prefill>>,
    /// Ports of running workspaces forwarded to the host.
    forwards: Mutex<HashMap<WorkspaceId, Vec<ports::Active>>>,
    /// Relays of host services into sandboxes without a private link (aborted on drop).
    tunnels: Mutex<HashMap<WorkspaceId, ports::Tunnels>>,
    /// Idle-stop and backup-schedule settings, and what each workspace was last used for.
    housekeeping: housekeeping::State,
    /// Workspaces paused for being idle.
    freezer: Arc<freeze::Freezer>,
    started: Instant,
    /// What `GET /metrics` exports; the engine records lifecycle, mirror, backup and
    /// reconciler numbers into it.
    metrics: Arc<kraal_metrics::Metrics>,
    /// How long a started sandbox may take to answer, in milliseconds.
    boot_timeout_ms: std::sync::atomic::AtomicU64,
}

/// A session reached a new state (from its event log).
#[derive(Debug, Clone, PartialEq)]
pub struct SessionChange {
    pub session: SessionId,
    pub workspace: WorkspaceId,
    pub state: kraal_core::SessionState,
    pub reason: Option<String>,
    /// A turn ended with this change (it was working, and now waits or is done).
    pub turn_ended: bool,
}

/// One async lock per workspace, made on first use.
#[derive(Default)]
pub(crate) struct WorkspaceLocks(Mutex<HashMap<WorkspaceId, Arc<tokio::sync::Mutex<()>>>>);

impl WorkspaceLocks {
    pub(crate) fn of(&self, id: &WorkspaceId) -> Arc<tokio::sync::Mutex<()>> {
        self.0
            .lock()
            .unwrap()
            .entry(id.clone())
            .or_default()
            .clone()
    }

    pub(crate) fn forget(&self, id: &WorkspaceId) {
        self.0.lock().unwrap().remove(id);
    }
}

/// What a command run to completion printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Captured {
    /// The exit code (128+N when killed by signal N).
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// How long a freshly started sandbox gets to bring its guest agent up.
const GUEST_BOOT_TIMEOUT: Duration = Duration::from_secs(60);

impl Engine {
    /// An engine driving `backend`; `services` run on each running workspace's link;
    /// `metrics` is where it records what it does.
    pub fn new(
        store: Store,
        backend: Arc<dyn Backend>,
        services: Option<Arc<dyn LinkServices>>,
        metrics: Arc<kraal_metrics::Metrics>,
    ) -> Arc<Self> {
        let writer = feed::Writer::start(store.clone());
        Arc::new(Engine {
            store,
            freezer: freeze::Freezer::new(backend.clone()),
            backend,
            services,
            guests: Mutex::new(HashMap::new()),
            locks: WorkspaceLocks::default(),
            gateways: Mutex::new(HashMap::new()),
            followers: Mutex::new(HashMap::new()),
            feeds: feed::Feeds::default(),
            writer,
            changes: tokio::sync::broadcast::channel(256).0,
            notices: tokio::sync::broadcast::channel(1024).0,
            forwards: Mutex::new(HashMap::new()),
            tunnels: Mutex::new(HashMap::new()),
            restores: Mutex::new(std::collections::HashSet::new()),
            prefills: Mutex::new(HashMap::new()),
            housekeeping: housekeeping::State::default(),
            started: Instant::now(),
            metrics,
            boot_timeout_ms: (GUEST_BOOT_TIMEOUT.as_millis() as u64).into(),
        })
    }

    /// How long a started sandbox may take before its guest agent answers (default 60 s);
    /// after that the start fails with the sandbox's console and the sandbox is stopped.
    pub fn set_boot_timeout(&self, t: Duration) {
        self.boot_timeout_ms
            .store(t.as_millis() as u64, std::sync::atomic::Ordering::Relaxed);
    }

    fn boot_timeout(&self) -> Duration {
        Duration::from_millis(
            self.boot_timeout_ms
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    pub fn backend_kind(&self) -> BackendKind {
        self.backend.kind()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn metrics(&self) -> &Arc<kraal_metrics::Metrics> {
        &self.metrics
    }

    fn lock_for(&self, id: &WorkspaceId) -> Arc<tokio::sync::Mutex<()>> {
        self.locks.of(id)
    }

    fn event(&self, id: &WorkspaceId, level: &str, msg: &str) {
        match level {
            "error" => tracing::error!(workspace = %id, "{msg}"),
            "warn" => tracing::warn!(workspace = %id, "{msg}"),
            _ => tracing::info!(workspace = %id, "{msg}"),
        }
        let _ = self.store.add_event(id, level, msg);
    }

    pub fn resolve(&self, reference: &str) -> Result<WorkspaceRecord, EngineError> {
        self.store
            .resolve(reference)?
            .ok_or_else(|| EngineError::NotFound {
                reference: reference.to_owned(),
            })
    }

    pub fn list(&self) -> Result<Vec<WorkspaceRecord>, EngineError> {
        Ok(self.store.list()?)
    }

    fn spec(rec: &WorkspaceRecord) -> SandboxSpec {
        SandboxSpec {
            id: rec.id.clone(),
            name: rec.name.clone(),
            source: rec.source.clone(),
            resources: rec.resources,
            guest_token: rec.guest_token.clone(),
            image: rec.image.clone(),
            persistent: rec.persistent,
            mounts: rec.mounts.clone(),
            git_hosts: rec.git.iter().map(|g| g.host.clone()).collect(),
        }
    }

    /// Every session state change from now on.
    pub fn subscribe_changes(&self) -> tokio::sync::broadcast::Receiver<SessionChange> {
        self.changes.subscribe()
    }
}
