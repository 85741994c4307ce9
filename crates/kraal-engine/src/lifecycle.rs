//! Workspace lifecycle: create, up, down, snapshot, restore and remove. Each runs as a
//! spawned task holding the workspace's operation lock, so a client that disconnects never
//! leaves an operation half-done and two operations on one workspace never interleave.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kraal_core::{DesiredState, Source, WorkspaceId, WorkspaceName, WorkspaceState, derive_name};
use kraal_sandbox::{GuestClientError, SandboxStatus};
use kraal_store::{StoreError, WorkspaceRecord};
use rand::RngCore;

use crate::{CreateRequest, Engine, EngineError, Pending, chain};

impl Engine {
    /// Validates and records a new workspace, then creates and starts it in the background.
    pub fn create(self: &Arc<Self>, req: CreateRequest) -> Result<Pending, EngineError> {
        self.create_with(req, None)
    }

    /// Like [`Engine::create`]; `prefill` fills the new volume on the host between the
    /// sandbox's creation and its first start (when the backend offers the volume there).
    pub(crate) fn create_with(
        self: &Arc<Self>,
        req: CreateRequest,
        prefill: Option<crate::host_backups::Prefill>,
    ) -> Result<Pending, EngineError> {
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
        if let Some(fill) = prefill {
            self.prefills.lock().unwrap().insert(rec.id.clone(), fill);
        }
        let me = self.clone();
        let id = rec.id.clone();
        let done = tokio::spawn(async move { me.run_op(&id, Op::Start).await });
        Ok(Pending { record: rec, done })
    }

    /// Git credentials must be valid, one per host, and name secrets that exist.
    pub(crate) fn check_git(&self, git: &[kraal_core::GitCredential]) -> Result<(), EngineError> {
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

    pub(crate) fn free_name(&self, base: &WorkspaceName) -> Result<WorkspaceName, EngineError> {
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
    pub async fn snapshot(
        self: &Arc<Self>,
        reference: &str,
        name: &str,
    ) -> Result<(), EngineError> {
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
        // Nothing of the daemon's stays connected into the sandbox while it is saved (a
        // gVisor netstack refuses to save open TCP connections): the guest link, the link
        // services and forwarded ports go, and come back afterwards, taken or not.
        if let Some(c) = self.guests.lock().unwrap().remove(&rec.id) {
            c.close();
        }
        self.detach_link(&rec.id);
        self.unforward_ports(&rec.id);
        let taken = self.backend.snapshot(&rec.id, name).await;
        let back = async {
            // A sandbox a failed save took down is started again by the reconciler.
            if self.backend.status(&rec.id).await? != SandboxStatus::Running {
                return Ok(());
            }
            let ep = self.backend.endpoint(&rec.id).await?;
            let client = self
                .connect_with_retry(&rec, ep.addr, self.boot_timeout())
                .await?;
            self.attach_link(&rec, &ep).await;
            self.forward_ports(&rec, &ep).await;
            self.sync_sessions(&rec, &client).await;
            Ok::<_, EngineError>(())
        }
        .await;
        taken?;
        back?;
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
            let sandbox = t0.elapsed();
            self.store
                .set_guest_addr(&rec.id, Some(&ep.addr.to_string()))?;
            let client = self
                .connect_with_retry(&rec, ep.addr, self.boot_timeout())
                .await?;
            let guest = t0.elapsed();
            self.attach_link(&rec, &ep).await;
            self.forward_ports(&rec, &ep).await;
            Ok::<_, EngineError>((client, sandbox, guest))
        }
        .await;
        match restored {
            Ok((client, sandbox, guest)) => {
                self.store
                    .set_state(&rec.id, WorkspaceState::Running, None)?;
                self.event(
                    &rec.id,
                    "info",
                    &format!(
                        "restored snapshot {name} in {} ms (sandbox back at {} ms, guest at {} ms)",
                        t0.elapsed().as_millis(),
                        sandbox.as_millis(),
                        guest.as_millis()
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
    pub(crate) fn schedule(
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

    pub(crate) async fn run_op(
        self: &Arc<Self>,
        id: &WorkspaceId,
        op: Op,
    ) -> Result<WorkspaceRecord, String> {
        let lock = self.lock_for(id);
        let _guard = lock.lock().await;
        // A workspace paused for being idle is resumed before anything is done to it.
        self.thaw(id).await;
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
            Ok(()) if op == Op::Remove => {
                self.freezer.forget(id);
                Ok(rec)
            }
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

    pub(crate) async fn do_start(
        self: &Arc<Self>,
        rec: &WorkspaceRecord,
    ) -> Result<(), EngineError> {
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
            self.prefill(rec).await?;
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

    pub(crate) async fn do_stop(&self, rec: &WorkspaceRecord) -> Result<(), EngineError> {
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

    pub(crate) async fn do_remove(&self, rec: &WorkspaceRecord) -> Result<(), EngineError> {
        self.store
            .set_state(&rec.id, WorkspaceState::Deleting, None)?;
        self.guests.lock().unwrap().remove(&rec.id);
        self.detach_link(&rec.id);
        self.unforward_ports(&rec.id);
        self.backend.destroy(&rec.id).await?;
        self.store.delete(&rec.id)?;
        self.locks.forget(&rec.id);
        tracing::info!(workspace = %rec.id, name = %rec.name, "removed");
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
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
