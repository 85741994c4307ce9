//! Idle pause: a workspace idle for its policy's `idle_pause` has its sandbox paused
//! (every process frozen, no CPU used), and the next use resumes it first — a guest
//! request, a connection to a forwarded port, any lifecycle operation. It comes before
//! the idle stop, never applies to persistent workspaces, and only to backends that can
//! pause. After a daemon restart a sandbox found paused is taken over the same way.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kraal_core::WorkspaceId;
use kraal_sandbox::Backend;

use crate::housekeeping::human;
use crate::{Engine, WorkspaceLocks};

/// The workspaces paused for being idle, and how each is paused or resumed: one at a
/// time per workspace, so a use arriving while it is being paused waits and resumes it.
pub(crate) struct Freezer {
    backend: Arc<dyn Backend>,
    frozen: Mutex<HashSet<WorkspaceId>>,
    /// Workspaces whose backend refused to pause them (not tried again).
    refused: Mutex<HashSet<WorkspaceId>>,
    locks: WorkspaceLocks,
}

/// What a resume did, for the workspace's log.
pub(crate) enum Thawed {
    /// It was not paused.
    No,
    Yes(Duration),
    Failed(String),
}

impl Freezer {
    pub fn new(backend: Arc<dyn Backend>) -> Arc<Freezer> {
        Arc::new(Freezer {
            backend,
            frozen: Mutex::default(),
            refused: Mutex::default(),
            locks: WorkspaceLocks::default(),
        })
    }

    pub fn is_frozen(&self, id: &WorkspaceId) -> bool {
        self.frozen.lock().unwrap().contains(id)
    }

    /// Resumes `id` if idle pause paused it; waits for a pause under way first.
    pub async fn thaw(&self, id: &WorkspaceId) -> Thawed {
        let lock = self.locks.of(id);
        let _one = lock.lock().await;
        if !self.is_frozen(id) {
            return Thawed::No;
        }
        let t = Instant::now();
        match self.backend.resume(id).await {
            Ok(()) => {
                self.frozen.lock().unwrap().remove(id);
                Thawed::Yes(t.elapsed())
            }
            Err(e) => {
                // Gone or stopped meanwhile: nothing is paused any more.
                if self.backend.status(id).await.ok() != Some(kraal_sandbox::SandboxStatus::Paused)
                {
                    self.frozen.lock().unwrap().remove(id);
                }
                Thawed::Failed(crate::chain(&e))
            }
        }
    }

    /// Forgets a workspace (removed).
    pub fn forget(&self, id: &WorkspaceId) {
        self.frozen.lock().unwrap().remove(id);
        self.refused.lock().unwrap().remove(id);
        self.locks.forget(id);
    }
}

impl Engine {
    /// Whether workspace `id` is paused for being idle.
    pub fn is_paused_idle(&self, id: &WorkspaceId) -> bool {
        self.freezer.is_frozen(id)
    }

    /// Resumes workspace `id` if idle pause paused it (every use calls this first), and
    /// counts that as a use.
    pub async fn thaw(&self, id: &WorkspaceId) {
        match self.freezer.thaw(id).await {
            Thawed::No => {}
            Thawed::Yes(took) => {
                self.touch(id);
                self.event(
                    id,
                    "info",
                    &format!("resumed from idle pause in {} ms", took.as_millis()),
                );
            }
            Thawed::Failed(why) => {
                self.event(id, "warn", &format!("resuming from idle pause: {why}"));
            }
        }
    }

    /// Pauses `id` when it has been idle for `limit` and nothing resumed it meanwhile.
    pub(crate) async fn freeze_if_idle(self: &Arc<Self>, id: &WorkspaceId, limit: Duration) {
        let f = &self.freezer;
        if f.refused.lock().unwrap().contains(id) {
            return;
        }
        // An operation or a reconcile pass holding the workspace is using it (and may be
        // talking to its guest, which a pause would leave without an answer): not now.
        let op = self.lock_for(id);
        let Ok(_op) = op.try_lock() else {
            return;
        };
        let lock = f.locks.of(id);
        let _one = lock.lock().await;
        if f.is_frozen(id) {
            return;
        }
        // Checked under the lock: a use that came in since the pass looked is seen here.
        let Some(rec) = self.store.get(id).ok().flatten() else {
            return;
        };
        if self.idle_for(&rec).is_none_or(|d| d < limit) {
            return;
        }
        match self.backend.pause(id).await {
            Ok(()) => {
                f.frozen.lock().unwrap().insert(id.clone());
                self.event(
                    id,
                    "info",
                    &format!(
                        "idle for {} (no agent turn, terminal or client); paused, resumes on the next use",
                        human(limit)
                    ),
                );
            }
            Err(e) => {
                f.refused.lock().unwrap().insert(id.clone());
                self.event(
                    id,
                    "warn",
                    &format!("idle pause: {}; not tried again", crate::chain(&e)),
                );
            }
        }
    }

    /// A sandbox the backend reports paused that this process did not pause (it paused it
    /// before a restart): taken over, so the next use resumes it.
    pub(crate) fn adopt_paused(&self, id: &WorkspaceId) {
        if self.freezer.frozen.lock().unwrap().insert(id.clone()) {
            self.event(id, "info", "found paused; resumes on the next use");
        }
    }
}
