//! Backups and restores of volumes the host can open itself (a gVisor workspace's ext4,
//! which the host kernel wrote for the sandbox's gofer): a backup reads the files on the
//! host as a tree ([`kraal_backup::Repo::backup_tree`], unchanged files skipped), with no
//! tar in the sandbox and without starting a stopped workspace; a restore writes the new
//! volume on the host between the sandbox's creation and its first start, so a restored
//! workspace starts once. Other backends keep the tar through the guest.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use kraal_backup::{Manifest, Repo};
use kraal_store::WorkspaceRecord;

use crate::backups::{BackupMeta, TransferProgress};
use crate::{Engine, EngineError, Pending};

/// Fills a new workspace's volume (a directory on the host) before its first start;
/// returns the bytes written.
pub(crate) type Prefill =
    Box<dyn FnOnce(PathBuf) -> BoxFuture<'static, Result<u64, EngineError>> + Send>;

/// A prefill that restores tree backup `m` from `repo`, counting bytes into `written`.
pub(crate) fn tree_prefill(repo: Repo, m: Manifest, written: Arc<AtomicU64>) -> Prefill {
    Box::new(move |dir| {
        Box::pin(async move {
            repo.restore_tree(&m, dir, |n| written.store(n, Ordering::Relaxed))
                .await
                .map_err(EngineError::Backup)
        })
    })
}

/// Waits for a lifecycle operation, calling `tick` a few times a second meanwhile.
pub(crate) async fn settle_watching(
    p: Pending,
    tick: impl Fn(),
) -> Result<WorkspaceRecord, EngineError> {
    let mut done = p.done;
    let mut every = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            r = &mut done => return crate::backups::outcome(r),
            _ = every.tick() => tick(),
        }
    }
}

impl Engine {
    /// Runs the prefill registered for a workspace just created when the backend offers
    /// its volume on the host; otherwise leaves it registered, for the restore to go
    /// through the guest once the sandbox runs.
    pub(crate) async fn prefill(&self, rec: &WorkspaceRecord) -> Result<(), EngineError> {
        let Some(fill) = self.prefills.lock().unwrap().remove(&rec.id) else {
            return Ok(());
        };
        match self.backend.host_volume(&rec.id).await? {
            Some(dir) => {
                let t0 = std::time::Instant::now();
                let n = fill(dir).await?;
                self.event(
                    &rec.id,
                    "info",
                    &format!(
                        "volume written on the host: {n} bytes in {} ms",
                        t0.elapsed().as_millis()
                    ),
                );
            }
            None => {
                self.prefills.lock().unwrap().insert(rec.id.clone(), fill);
            }
        }
        Ok(())
    }

    /// Whether a prefill registered for `id` is still waiting (the backend had no host
    /// volume for it); takes it out.
    pub(crate) fn unfilled(&self, id: &kraal_core::WorkspaceId) -> bool {
        self.prefills.lock().unwrap().remove(id).is_some()
    }

    /// The newest tree backup of workspace `id` in `repo`: its unchanged files are not
    /// read again.
    async fn previous_tree(&self, repo: &Repo, id: &kraal_core::WorkspaceId) -> Option<Manifest> {
        let all = repo.list().await.ok()?;
        all.into_iter()
            .rev()
            .find(|m| m.tree.is_some() && BackupMeta::of(m).is_some_and(|b| b.id == id.as_str()))
    }

    /// Backs `rec`'s volume up on the host; `None` when the backend does not offer it
    /// there.
    pub(crate) async fn backup_on_host(
        &self,
        rec: &WorkspaceRecord,
        repo: &Repo,
        meta: &BackupMeta,
        progress: &(impl Fn(&TransferProgress) + Send + Sync),
    ) -> Result<Option<Manifest>, EngineError> {
        let Some(dir) = self.backend.host_volume(&rec.id).await? else {
            return Ok(None);
        };
        let previous = self.previous_tree(repo, &rec.id).await;
        let m = repo
            .backup_tree(
                dir,
                serde_json::json!({ "workspace": meta }),
                previous.as_ref(),
                |p| progress(&p.into()),
            )
            .await
            .map_err(EngineError::Backup)?;
        Ok(Some(m))
    }
}
