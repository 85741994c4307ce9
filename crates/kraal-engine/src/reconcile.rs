//! The reconciler: compares each workspace's desired state with what the backend reports
//! and repairs the difference (which is also how the daemon picks up running sandboxes
//! after a restart), and the periodic task runner it and housekeeping use.

use std::sync::Arc;
use std::time::Duration;

use kraal_core::{DesiredState, WorkspaceState};
use kraal_sandbox::SandboxStatus;
use tokio::task::JoinHandle;

use crate::lifecycle::Op;
use crate::{Engine, chain};

impl Engine {
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
                // Paused before a restart of this process (idle pause): the next use
                // resumes it.
                (DesiredState::Running, SandboxStatus::Paused, WorkspaceState::Running) => {
                    self.adopt_paused(&rec.id);
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
