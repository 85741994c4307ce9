//! Workspace use cases (create, up, down, remove, exec plumbing) and the reconciler.
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
mod feed;
mod housekeeping;
mod notices;
mod ports;
mod review;
mod sessions;
mod templates;
pub use kraal_store::SessionRecord;
pub use sessions::{LinkServices, MAX_MESSAGE, NewSession, check_spec};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kraal_core::{
    BackendKind, DesiredState, ModelGateway, NameError, Resources, SessionId, Source, WorkspaceId,
    WorkspaceName, WorkspaceState, derive_name,
};
use kraal_sandbox::{
    Backend, BackendError, GuestClient, GuestClientError, SandboxSpec, SandboxStatus,
};
use kraal_store::{Store, StoreError, WorkspaceRecord};
use rand::RngCore;
use tokio::task::JoinHandle;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("no workspace named {reference}")]
    NotFound { reference: String },
    #[error("no session {reference}")]
    NoSession { reference: String },
    #[error("workspace {workspace} has no review comment {id}")]
    NoComment { id: String, workspace: String },
    #[error("a workspace named {name} already exists")]
    NameTaken { name: String },
    #[error(transparent)]
    InvalidName(#[from] NameError),
    #[error("{0}")]
    Invalid(String),
    #[error("workspace {workspace} is {state}; cannot {op} it now")]
    Conflict {
        workspace: String,
        state: &'static str,
        op: &'static str,
    },
    #[error(
        "workspace {workspace} is not running (it is {state}); start it with `kraal up {workspace}`"
    )]
    NotRunning {
        workspace: String,
        state: &'static str,
    },
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(
        "workspace {workspace}: the guest agent did not answer within {secs} s ({cause}); the sandbox was stopped and `kraal up {workspace}` tries again{console}"
    )]
    NoBoot {
        workspace: String,
        secs: u64,
        cause: String,
        /// The end of the sandbox's console, prefixed with a newline, or a note that it is empty.
        console: String,
    },
    #[error(
        "workspace {workspace} is persistent (a control workspace); remove it with `kraal rm {workspace} --force`"
    )]
    Persistent { workspace: String },
    #[error("workspace {workspace}: guest agent unreachable")]
    Guest {
        workspace: String,
        #[source]
        source: GuestClientError,
    },
    #[error("{0}")]
    TooLarge(String),
    #[error("nothing listens on port {port} in workspace {workspace}")]
    NotListening { workspace: String, port: u16 },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Backup(#[from] kraal_backup::BackupError),
}

impl EngineError {
    /// Wraps an error talking to `workspace`'s guest agent (for `map_err`).
    pub(crate) fn guest(workspace: &str) -> impl Fn(GuestClientError) -> EngineError + Copy + '_ {
        move |source| EngineError::Guest {
            workspace: workspace.to_owned(),
            source,
        }
    }

    /// Stable code for the HTTP layer.
    pub fn code(&self) -> &'static str {
        match self {
            EngineError::NotFound { .. }
            | EngineError::NoSession { .. }
            | EngineError::NoComment { .. } => "not_found",
            EngineError::NameTaken { .. } => "already_exists",
            EngineError::InvalidName(_) | EngineError::Invalid(_) => "invalid_argument",
            EngineError::Conflict { .. } | EngineError::Persistent { .. } => "conflict",
            EngineError::NotRunning { .. } => "not_running",
            EngineError::NotListening { .. } => "not_listening",
            EngineError::TooLarge(_) => "too_large",
            EngineError::Backend(BackendError::Unavailable { .. }) => "backend_unavailable",
            // What the backend cannot do at all is the request's problem, not the server's.
            EngineError::Backend(BackendError::Unsupported { .. }) => "unsupported",
            EngineError::Backend(_) => "backend_error",
            EngineError::Guest {
                source: GuestClientError::Guest(g),
                ..
            } => match g.code {
                kraal_protocol::ErrorCode::PathEscape => "path_escape",
                kraal_protocol::ErrorCode::NotFound
                | kraal_protocol::ErrorCode::UnknownProcess
                | kraal_protocol::ErrorCode::UnknownSession => "not_found",
                kraal_protocol::ErrorCode::InvalidRequest
                | kraal_protocol::ErrorCode::NotADirectory
                | kraal_protocol::ErrorCode::IsADirectory => "invalid_argument",
                kraal_protocol::ErrorCode::AlreadyExists => "already_exists",
                kraal_protocol::ErrorCode::DirectoryNotEmpty => "conflict",
                kraal_protocol::ErrorCode::PermissionDenied => "permission_denied",
                kraal_protocol::ErrorCode::NoSpace => "no_space",
                _ => "guest_error",
            },
            EngineError::Guest { .. } | EngineError::NoBoot { .. } => "guest_unreachable",
            EngineError::Store(_) => "internal",
            EngineError::Backup(kraal_backup::BackupError::NotFound { .. }) => "not_found",
            EngineError::Backup(
                kraal_backup::BackupError::Config { .. } | kraal_backup::BackupError::Key { .. },
            ) => "invalid_argument",
            EngineError::Backup(kraal_backup::BackupError::Store { .. }) => "backup_store",
            EngineError::Backup(kraal_backup::BackupError::Denied { .. }) => "backup_denied",
            EngineError::Backup(_) => "backup_damaged",
        }
    }
}

pub use attachments::{MAX_ATTACHMENT, MAX_ATTACHMENTS_TOTAL, Upload, check_uploads, media_type};
pub use backups::{BackupMeta, TransferProgress};
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
    locks: Mutex<HashMap<WorkspaceId, Arc<tokio::sync::Mutex<()>>>>,
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
    /// Ports of running workspaces forwarded to the host.
    forwards: Mutex<HashMap<WorkspaceId, Vec<ports::Active>>>,
    /// Relays of host services into sandboxes without a private link (aborted on drop).
    tunnels: Mutex<HashMap<WorkspaceId, ports::Tunnels>>,
    /// Idle-stop and backup-schedule settings, and what each workspace was last used for.
    housekeeping: housekeeping::State,
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
            backend,
            services,
            guests: Mutex::new(HashMap::new()),
            locks: Mutex::new(HashMap::new()),
            gateways: Mutex::new(HashMap::new()),
            followers: Mutex::new(HashMap::new()),
            feeds: feed::Feeds::default(),
            writer,
            changes: tokio::sync::broadcast::channel(256).0,
            notices: tokio::sync::broadcast::channel(1024).0,
            forwards: Mutex::new(HashMap::new()),
            tunnels: Mutex::new(HashMap::new()),
            restores: Mutex::new(std::collections::HashSet::new()),
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
        self.locks
            .lock()
            .unwrap()
            .entry(id.clone())
            .or_default()
            .clone()
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

    /// Validates and records a new workspace, then creates and starts it in the background.
    pub fn create(self: &Arc<Self>, req: CreateRequest) -> Result<Pending, EngineError> {
        if let Source::Local { path } = &req.source {
            let md = std::fs::metadata(path).map_err(|_| {
                EngineError::Invalid(format!(
                    "source directory {} does not exist",
                    path.display()
                ))
            })?;
            if !md.is_dir() {
                return Err(EngineError::Invalid(format!(
                    "source {} is not a directory",
                    path.display()
                )));
            }
        }
        let resources = req.resources.unwrap_or_default();
        resources
            .validate()
            .map_err(|e| EngineError::Invalid(e.to_string()))?;
        let name = match &req.name {
            Some(n) => WorkspaceName::parse(n)?,
            None => self.free_name(&derive_name(
                &req.source.basename().unwrap_or_else(|| "workspace".into()),
            ))?,
        };
        if let Some(image) = &req.image
            && !kraal_core::is_image_name(image)
        {
            return Err(EngineError::Invalid(format!(
                "image name {image:?} must be 1-40 characters of a-z, 0-9 and '-'"
            )));
        }
        let mut seen = std::collections::HashSet::new();
        for m in &req.mounts {
            m.validate()
                .map_err(|e| EngineError::Invalid(e.to_string()))?;
            if !m.host.is_dir() {
                return Err(EngineError::Invalid(format!(
                    "mount {}:{}: {} is not a directory on the daemon's host",
                    m.host.display(),
                    m.path,
                    m.host.display()
                )));
            }
            if !seen.insert(m.path.trim_end_matches('/')) {
                return Err(EngineError::Invalid(format!("{} is mounted twice", m.path)));
            }
        }
        self.check_git(&req.git)?;
        req.policy
            .validate()
            .map_err(|e| EngineError::Invalid(e.to_string()))?;
        let mut token = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut token);
        let now = kraal_store::now();
        let rec = WorkspaceRecord {
            id: WorkspaceId::random(),
            name,
            backend: self.backend.kind(),
            source: req.source,
            resources,
            state: WorkspaceState::Creating,
            desired: DesiredState::Running,
            reason: None,
            guest_token: hex::encode(token),
            guest_addr: None,
            persistent: req.persistent,
            created_at: now.clone(),
            updated_at: now,
            image: req.image,
            mounts: req.mounts,
            egress: req.egress.unwrap_or_else(kraal_core::default_rules),
            git: req.git,
            restoring: req.restoring,
            policy: req.policy,
            last_backup_at: None,
        };
        if rec.restoring.is_some() {
            self.restores.lock().unwrap().insert(rec.id.clone());
        }
        self.store.insert(&rec).map_err(|e| match e {
            StoreError::NameTaken { name } => EngineError::NameTaken { name },
            e => e.into(),
        })?;
        self.event(
            &rec.id,
            "info",
            &format!("created from {}", rec.source.describe()),
        );
        let me = self.clone();
        let id = rec.id.clone();
        let done = tokio::spawn(async move { me.run_op(&id, Op::Start).await });
        Ok(Pending { record: rec, done })
    }

    /// Git credentials must be valid, one per host, and name secrets that exist.
    fn check_git(&self, git: &[kraal_core::GitCredential]) -> Result<(), EngineError> {
        let known: std::collections::HashSet<String> = self
            .store
            .list_secrets()?
            .into_iter()
            .map(|s| s.name)
            .collect();
        let mut hosts = std::collections::HashSet::new();
        for g in git {
            g.validate()
                .map_err(|e| EngineError::Invalid(format!("git credential: {e}")))?;
            if !hosts.insert(g.host.as_str()) {
                return Err(EngineError::Invalid(format!(
                    "git host {} is given twice",
                    g.host
                )));
            }
            if !known.contains(&g.secret) {
                return Err(EngineError::Invalid(format!(
                    "git credential for {}: there is no secret named {} (create it with `kraal secret set {}`)",
                    g.host, g.secret, g.secret
                )));
            }
        }
        Ok(())
    }

    /// Replaces a workspace's egress allowlist; a running workspace's proxy applies it to
    /// new connections at once.
    pub fn set_egress(
        &self,
        reference: &str,
        rules: Vec<kraal_core::EgressRule>,
    ) -> Result<WorkspaceRecord, EngineError> {
        let mut rec = self.resolve(reference)?;
        self.store.set_egress(&rec.id, &rules)?;
        rec.egress = rules;
        if let Some(svc) = &self.services {
            svc.update(&rec);
        }
        self.event(
            &rec.id,
            "info",
            &format!("egress allowlist now has {} rules", rec.egress.len()),
        );
        Ok(rec)
    }

    /// Replaces a workspace's idle-stop and backup-interval settings (the next
    /// housekeeping pass applies them).
    pub fn set_policy(
        &self,
        reference: &str,
        policy: kraal_core::Policy,
    ) -> Result<WorkspaceRecord, EngineError> {
        policy
            .validate()
            .map_err(|e| EngineError::Invalid(e.to_string()))?;
        let mut rec = self.resolve(reference)?;
        self.store.set_policy(&rec.id, &policy)?;
        rec.policy = policy;
        self.event(
            &rec.id,
            "info",
            &format!(
                "policy now {}",
                serde_json::to_string(&policy).unwrap_or_default()
            ),
        );
        Ok(rec)
    }

    /// The newest `limit` connections the workspace's egress proxy allowed or refused.
    pub fn egress_log(
        &self,
        reference: &str,
        limit: u32,
    ) -> Result<Vec<kraal_store::EgressLogRecord>, EngineError> {
        let rec = self.resolve(reference)?;
        Ok(self.store.egress_log(&rec.id, limit)?)
    }

    fn free_name(&self, base: &WorkspaceName) -> Result<WorkspaceName, EngineError> {
        if self.store.get_by_name(base.as_str())?.is_none() {
            return Ok(base.clone());
        }
        for i in 2..1000 {
            let mut stem = base.as_str().to_owned();
            let suffix = format!("-{i}");
            stem.truncate(63 - suffix.len());
            let candidate =
                WorkspaceName::parse(&format!("{}{suffix}", stem.trim_end_matches('-')))?;
            if self.store.get_by_name(candidate.as_str())?.is_none() {
                return Ok(candidate);
            }
        }
        Err(EngineError::Invalid(format!(
            "no free name derived from {base}; pass --name"
        )))
    }

    /// Brings a workspace to running (start, or restart after a failure).
    pub fn up(self: &Arc<Self>, reference: &str) -> Result<Pending, EngineError> {
        self.schedule(reference, DesiredState::Running, Op::Start)
    }

    /// Stops a workspace, keeping its volume.
    pub fn down(self: &Arc<Self>, reference: &str) -> Result<Pending, EngineError> {
        self.schedule(reference, DesiredState::Stopped, Op::Stop)
    }

    /// Snapshots a running workspace as `name` (memory, devices, writable disks); it keeps
    /// running. Backends without snapshots say so.
    pub async fn snapshot(&self, reference: &str, name: &str) -> Result<(), EngineError> {
        let rec = self.resolve(reference)?;
        let lock = self.lock_for(&rec.id);
        let _guard = lock.lock().await;
        if rec.state != WorkspaceState::Running {
            return Err(EngineError::NotRunning {
                workspace: rec.name.to_string(),
                state: rec.state.as_str(),
            });
        }
        let t0 = Instant::now();
        self.backend.snapshot(&rec.id, name).await?;
        self.event(
            &rec.id,
            "info",
            &format!("snapshot {name} taken in {} ms", t0.elapsed().as_millis()),
        );
        Ok(())
    }

    /// Brings the workspace back to snapshot `name`: files and running processes as they
    /// were. Whatever ran since is gone.
    pub async fn restore(
        self: &Arc<Self>,
        reference: &str,
        name: &str,
    ) -> Result<WorkspaceRecord, EngineError> {
        let rec = self.resolve(reference)?;
        let lock = self.lock_for(&rec.id);
        let _guard = lock.lock().await;
        self.store.set_desired(&rec.id, DesiredState::Running)?;
        self.store
            .set_state(&rec.id, WorkspaceState::Starting, None)?;
        self.guests.lock().unwrap().remove(&rec.id);
        self.detach_link(&rec.id);
        self.unforward_ports(&rec.id);
        let t0 = Instant::now();
        let restored = async {
            let ep = self.backend.restore(&Self::spec(&rec), name).await?;
            self.store
                .set_guest_addr(&rec.id, Some(&ep.addr.to_string()))?;
            let client = self
                .connect_with_retry(&rec, ep.addr, self.boot_timeout())
                .await?;
            self.attach_link(&rec, &ep).await;
            self.forward_ports(&rec, &ep).await;
            Ok::<_, EngineError>(client)
        }
        .await;
        match restored {
            Ok(client) => {
                self.store
                    .set_state(&rec.id, WorkspaceState::Running, None)?;
                self.event(
                    &rec.id,
                    "info",
                    &format!(
                        "restored snapshot {name} in {} ms",
                        t0.elapsed().as_millis()
                    ),
                );
                self.sync_sessions(&rec, &client).await;
                Ok(self.resolve(rec.id.as_str())?)
            }
            Err(e) => {
                let reason = chain(&e);
                self.event(&rec.id, "error", &format!("restore failed: {reason}"));
                // Not restored: the sandbox is as the backend left it; let the
                // reconciler judge it (a stopped VM with desired running is started).
                let state = match self.backend.status(&rec.id).await {
                    Ok(SandboxStatus::Running) => WorkspaceState::Running,
                    _ => WorkspaceState::Failed,
                };
                let _ = self.store.set_state(&rec.id, state, Some(&reason));
                Err(e)
            }
        }
    }

    /// Removes a workspace and everything it owns.
    pub fn remove(self: &Arc<Self>, reference: &str) -> Result<Pending, EngineError> {
        self.remove_forced(reference, false)
    }

    /// Removes a workspace; a persistent one only with `force`.
    pub fn remove_forced(
        self: &Arc<Self>,
        reference: &str,
        force: bool,
    ) -> Result<Pending, EngineError> {
        let rec = self.resolve(reference)?;
        if rec.persistent && !force {
            return Err(EngineError::Persistent {
                workspace: rec.name.to_string(),
            });
        }
        self.schedule(reference, DesiredState::Stopped, Op::Remove)
    }

    /// Records the desired state and runs `op` in the background.
    fn schedule(
        self: &Arc<Self>,
        reference: &str,
        desired: DesiredState,
        op: Op,
    ) -> Result<Pending, EngineError> {
        let rec = self.resolve(reference)?;
        if rec.state == WorkspaceState::Deleting && op != Op::Remove {
            return Err(EngineError::Conflict {
                workspace: rec.name.to_string(),
                state: rec.state.as_str(),
                op: op.as_str(),
            });
        }
        self.store.set_desired(&rec.id, desired)?;
        let me = self.clone();
        let id = rec.id.clone();
        let done = tokio::spawn(async move { me.run_op(&id, op).await });
        Ok(Pending { record: rec, done })
    }

    async fn run_op(self: &Arc<Self>, id: &WorkspaceId, op: Op) -> Result<WorkspaceRecord, String> {
        let lock = self.lock_for(id);
        let _guard = lock.lock().await;
        let Some(rec) = self.store.get(id).map_err(|e| chain(&e))? else {
            return Err(format!("workspace {id} no longer exists"));
        };
        let result = match op {
            Op::Start => self.do_start(&rec).await,
            Op::Stop => self.do_stop(&rec).await,
            Op::Remove => self.do_remove(&rec).await,
        };
        if result.is_ok() && op == Op::Start {
            self.touch(id);
        }
        match result {
            Ok(()) if op == Op::Remove => Ok(rec),
            Ok(()) => self
                .store
                .get(id)
                .ok()
                .flatten()
                .ok_or_else(|| "workspace vanished".to_owned()),
            Err(e) => {
                let reason = chain(&e);
                self.event(id, "error", &format!("{} failed: {reason}", op.as_str()));
                let _ = self
                    .store
                    .set_state(id, WorkspaceState::Failed, Some(&reason));
                Err(reason)
            }
        }
    }

    async fn do_start(self: &Arc<Self>, rec: &WorkspaceRecord) -> Result<(), EngineError> {
        let spec = Self::spec(rec);
        if self.backend.status(&rec.id).await? == SandboxStatus::Running
            && let Ok(client) = self.connect(rec).await
        {
            self.store
                .set_state(&rec.id, WorkspaceState::Running, None)?;
            if let Ok(ep) = self.backend.endpoint(&rec.id).await {
                self.attach_link(rec, &ep).await;
                self.forward_ports(rec, &ep).await;
            }
            self.sync_sessions(rec, &client).await;
            return Ok(());
        }
        if rec.state == WorkspaceState::Creating
            || self.backend.status(&rec.id).await? == SandboxStatus::Absent
        {
            self.store
                .set_state(&rec.id, WorkspaceState::Creating, None)?;
            let t0 = Instant::now();
            self.backend.create(&spec).await?;
            self.metrics.workspace_created(t0.elapsed());
            self.event(
                &rec.id,
                "info",
                &format!("sandbox resources ready in {} ms", t0.elapsed().as_millis()),
            );
        }
        self.store
            .set_state(&rec.id, WorkspaceState::Starting, None)?;
        let t0 = Instant::now();
        let ep = self.backend.start(&spec).await?;
        self.store
            .set_guest_addr(&rec.id, Some(&ep.addr.to_string()))?;
        let limit = self.boot_timeout();
        let client = match self.connect_with_retry(rec, ep.addr, limit).await {
            Ok(c) => c,
            Err(EngineError::Guest {
                source:
                    e @ (GuestClientError::Connect { .. }
                    | GuestClientError::Timeout { .. }
                    | GuestClientError::Closed),
                ..
            }) => {
                // A sandbox that never answers is not left running: keep its console for
                // the error, stop it, and let `up` try again from scratch.
                let console = self
                    .backend
                    .console_log(&rec.id, 1500)
                    .await
                    .unwrap_or_default();
                if let Err(e) = self.backend.stop(&rec.id).await {
                    tracing::warn!(workspace = %rec.id, "stopping the unresponsive sandbox: {e}");
                }
                let console = console.trim();
                return Err(EngineError::NoBoot {
                    workspace: rec.name.to_string(),
                    secs: limit.as_secs(),
                    cause: kraal_sandbox::error_chain(&e),
                    console: if console.is_empty() {
                        "; its console is empty (it stopped before the kernel printed)".into()
                    } else {
                        format!("\nconsole (last lines):\n{console}")
                    },
                });
            }
            Err(e) => return Err(e),
        };
        self.metrics.workspace_started(t0.elapsed());
        self.attach_link(rec, &ep).await;
        self.forward_ports(rec, &ep).await;
        self.event(
            &rec.id,
            "info",
            &format!(
                "running on {} (guest {} at {}), ready in {} ms",
                self.backend.kind(),
                client.guest_version,
                ep.addr,
                t0.elapsed().as_millis()
            ),
        );
        self.store
            .set_state(&rec.id, WorkspaceState::Running, None)?;
        self.sync_sessions(rec, &client).await;
        Ok(())
    }

    async fn do_stop(&self, rec: &WorkspaceRecord) -> Result<(), EngineError> {
        self.store
            .set_state(&rec.id, WorkspaceState::Stopping, None)?;
        // Let the guest stop processes and flush before the runtime pulls the plug.
        if let Some(c) = self.cached_guest(&rec.id) {
            let _ =
                tokio::time::timeout(Duration::from_secs(10), c.shutdown(Duration::from_secs(5)))
                    .await;
        }
        self.guests.lock().unwrap().remove(&rec.id);
        self.detach_link(&rec.id);
        self.unforward_ports(&rec.id);
        self.backend.stop(&rec.id).await?;
        self.store.set_guest_addr(&rec.id, None)?;
        self.store
            .set_state(&rec.id, WorkspaceState::Stopped, None)?;
        self.event(&rec.id, "info", "stopped; volume kept");
        Ok(())
    }

    async fn do_remove(&self, rec: &WorkspaceRecord) -> Result<(), EngineError> {
        self.store
            .set_state(&rec.id, WorkspaceState::Deleting, None)?;
        self.guests.lock().unwrap().remove(&rec.id);
        self.detach_link(&rec.id);
        self.unforward_ports(&rec.id);
        self.backend.destroy(&rec.id).await?;
        self.store.delete(&rec.id)?;
        self.locks.lock().unwrap().remove(&rec.id);
        tracing::info!(workspace = %rec.id, name = %rec.name, "removed");
        Ok(())
    }

    fn cached_guest(&self, id: &WorkspaceId) -> Option<GuestClient> {
        self.guests
            .lock()
            .unwrap()
            .get(id)
            .filter(|c| !c.is_closed())
            .cloned()
    }

    async fn connect(&self, rec: &WorkspaceRecord) -> Result<GuestClient, EngineError> {
        if let Some(c) = self.cached_guest(&rec.id) {
            return Ok(c);
        }
        let ep = self.backend.endpoint(&rec.id).await?;
        let c = GuestClient::connect(ep.addr, &rec.guest_token)
            .await
            .map_err(EngineError::guest(rec.name.as_str()))?;
        self.guests
            .lock()
            .unwrap()
            .insert(rec.id.clone(), c.clone());
        Ok(c)
    }

    async fn connect_with_retry(
        &self,
        rec: &WorkspaceRecord,
        addr: std::net::SocketAddr,
        timeout: Duration,
    ) -> Result<GuestClient, EngineError> {
        let c = GuestClient::connect_retrying(addr, &rec.guest_token, timeout)
            .await
            .map_err(EngineError::guest(rec.name.as_str()))?;
        self.guests
            .lock()
            .unwrap()
            .insert(rec.id.clone(), c.clone());
        Ok(c)
    }

    /// A connected guest client for a running workspace.
    pub async fn guest(
        &self,
        reference: &str,
    ) -> Result<(WorkspaceRecord, GuestClient), EngineError> {
        // A workspace on its way up (creating or starting, desired running) is waited for,
        // so `up --detach` followed by `exec` just works.
        let mut rec = self.resolve(reference)?;
        let deadline = Instant::now() + GUEST_BOOT_TIMEOUT;
        // A stopped workspace whose desired state is running has a start scheduled that
        // has not begun yet (e.g. [`Engine::start_if_stopped`]).
        while matches!(
            rec.state,
            WorkspaceState::Creating | WorkspaceState::Starting | WorkspaceState::Stopped
        ) && rec.desired == DesiredState::Running
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
            rec = self.resolve(rec.id.as_str())?;
        }
        if rec.state != WorkspaceState::Running {
            return Err(EngineError::NotRunning {
                workspace: rec.name.to_string(),
                state: rec.state.as_str(),
            });
        }
        let c = self.connect(&rec).await?;
        Ok((rec, c))
    }

    /// The environment kraal gives a running workspace's processes for reaching outside:
    /// its egress proxy and git gateway (see [`kraal_core::link_env`]); empty when the
    /// backend has no host link.
    pub async fn link_env(&self, rec: &WorkspaceRecord) -> Vec<(String, String)> {
        let git: Vec<String> = rec.git.iter().map(|g| g.host.clone()).collect();
        match self.backend.endpoint(&rec.id).await {
            Ok(ep) => ep
                .host
                .map(|h| kraal_core::link_env(h, &git))
                .unwrap_or_default(),
            Err(_) => Vec::new(),
        }
    }

    /// Runs a command in a running workspace to completion (at most `timeout`), capturing
    /// up to `max` bytes of each output stream.
    pub async fn capture(
        &self,
        workspace: &str,
        argv: &[&str],
        timeout: Duration,
        max: usize,
    ) -> Result<Captured, EngineError> {
        self.capture_with(workspace, argv, timeout, max, false)
            .await
    }

    /// Like [`Engine::capture`], as root whatever user the image names.
    pub async fn capture_as_root(
        &self,
        workspace: &str,
        argv: &[&str],
        timeout: Duration,
        max: usize,
    ) -> Result<Captured, EngineError> {
        self.capture_with(workspace, argv, timeout, max, true).await
    }

    async fn capture_with(
        &self,
        workspace: &str,
        argv: &[&str],
        timeout: Duration,
        max: usize,
        as_root: bool,
    ) -> Result<Captured, EngineError> {
        let (rec, client) = self.guest(workspace).await?;
        let guest_err = EngineError::guest(rec.name.as_str());
        let mut h = client
            .exec(kraal_protocol::ExecRequest {
                argv: argv.iter().map(|a| a.to_string()).collect(),
                env: vec![],
                cwd: None,
                tty: None,
                as_root,
            })
            .await
            .map_err(guest_err)?;
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let run = async {
            loop {
                match h.next().await? {
                    kraal_sandbox::ExecEvent::Stdout { data, .. } => {
                        let room = max.saturating_sub(out.len());
                        out.extend_from_slice(&data[..data.len().min(room)]);
                    }
                    kraal_sandbox::ExecEvent::Stderr { data, .. } => {
                        let room = max.saturating_sub(err.len());
                        err.extend_from_slice(&data[..data.len().min(room)]);
                    }
                    kraal_sandbox::ExecEvent::Truncated { .. } => {}
                    kraal_sandbox::ExecEvent::Exit { code, signal } => {
                        return Ok(code.unwrap_or(128 + signal.unwrap_or(0)));
                    }
                }
            }
        };
        let code = tokio::time::timeout(timeout, run)
            .await
            .map_err(|_| {
                EngineError::Invalid(format!(
                    "{} did not finish within {} s",
                    argv.join(" "),
                    timeout.as_secs()
                ))
            })?
            .map_err(guest_err)?;
        Ok(Captured {
            code,
            stdout: String::from_utf8_lossy(&out).into_owned(),
            stderr: String::from_utf8_lossy(&err).into_owned(),
        })
    }

    /// Every session state change from now on.
    pub fn subscribe_changes(&self) -> tokio::sync::broadcast::Receiver<SessionChange> {
        self.changes.subscribe()
    }

    /// One reconciliation pass over every workspace not busy with an operation.
    pub async fn reconcile(self: &Arc<Self>) {
        let _pass = self.metrics.reconcile_pass();
        let Ok(all) = self.store.list() else { return };
        for rec in all {
            // A restore this process is not running was cut short (a daemon killed
            // mid-way): the half-restored workspace goes.
            if let Some(backup) = &rec.restoring
                && !self.restores.lock().unwrap().contains(&rec.id)
                && rec.state != WorkspaceState::Deleting
            {
                self.event(
                    &rec.id,
                    "warn",
                    &format!("restore from {backup} did not complete; removing the workspace"),
                );
                if let Ok(p) = self.remove_forced(rec.id.as_str(), true) {
                    let _ = p.done.await;
                }
                continue;
            }
            let lock = self.lock_for(&rec.id);
            let Ok(_guard) = lock.try_lock() else {
                continue;
            };
            let Some(rec) = self.store.get(&rec.id).ok().flatten() else {
                continue;
            };
            let observed = match self.backend.status(&rec.id).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(workspace = %rec.id, "status: {}", chain(&e));
                    continue;
                }
            };
            match (rec.desired, observed, rec.state) {
                (DesiredState::Running, SandboxStatus::Running, _) => {
                    match self.connect(&rec).await {
                        Err(e) => {
                            if rec.state == WorkspaceState::Running {
                                tracing::warn!(workspace = %rec.id, "guest check: {}", chain(&e));
                            }
                        }
                        Ok(client) => {
                            if rec.state != WorkspaceState::Running {
                                let _ =
                                    self.store.set_state(&rec.id, WorkspaceState::Running, None);
                                self.event(
                                    &rec.id,
                                    "info",
                                    "sandbox found running; guest reconnected",
                                );
                            }
                            // After a daemon restart: bring the link services back and resume
                            // mirroring every session where it stopped.
                            if !self.gateways.lock().unwrap().contains_key(&rec.id)
                                && let Ok(ep) = self.backend.endpoint(&rec.id).await
                            {
                                self.attach_link(&rec, &ep).await;
                                self.forward_ports(&rec, &ep).await;
                            }
                            self.sync_sessions(&rec, &client).await;
                        }
                    }
                }
                // A failed workspace waits for the user; an interrupted create or start
                // (daemon killed mid-way) is finished here.
                (DesiredState::Running, SandboxStatus::Stopped | SandboxStatus::Absent, state)
                    if state != WorkspaceState::Failed =>
                {
                    self.guests.lock().unwrap().remove(&rec.id);
                    // Record what is true now, before anyone reads the old `running`.
                    let _ = self
                        .store
                        .set_state(&rec.id, WorkspaceState::Starting, None);
                    let why = if state == WorkspaceState::Running {
                        "sandbox is not running"
                    } else {
                        "operation was interrupted"
                    };
                    self.event(&rec.id, "warn", &format!("{why}; starting it again"));
                    drop(_guard);
                    let me = self.clone();
                    let id = rec.id.clone();
                    tokio::spawn(async move { me.run_op(&id, Op::Start).await });
                }
                (DesiredState::Stopped, SandboxStatus::Running | SandboxStatus::Paused, _) => {
                    drop(_guard);
                    let me = self.clone();
                    let id = rec.id.clone();
                    tokio::spawn(async move { me.run_op(&id, Op::Stop).await });
                }
                (DesiredState::Stopped, SandboxStatus::Stopped | SandboxStatus::Absent, s)
                    if s != WorkspaceState::Stopped && s != WorkspaceState::Failed =>
                {
                    let _ = self.store.set_state(&rec.id, WorkspaceState::Stopped, None);
                }
                _ => {}
            }
        }
    }

    /// Runs [`Engine::reconcile`] now and then every `interval` until the task is dropped.
    pub fn spawn_reconciler(self: &Arc<Self>, interval: Duration) -> JoinHandle<()> {
        self.every(interval, |me| async move { me.reconcile().await })
    }

    /// A task running `pass` now and then every `interval` (a slow pass delays the next
    /// one instead of piling up), until it is aborted.
    pub(crate) fn every<F, Fut>(self: &Arc<Self>, interval: Duration, pass: F) -> JoinHandle<()>
    where
        F: Fn(Arc<Self>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                pass(me.clone()).await;
            }
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Start,
    Stop,
    Remove,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Start => "start",
            Op::Stop => "stop",
            Op::Remove => "remove",
        }
    }
}
