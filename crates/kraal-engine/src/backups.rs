//! Workspace backups: the volume (checkout, untracked files, `.git`, the agents' session
//! logs under `.kraal/`) streamed as a tar out of the running sandbox into a
//! [`kraal_backup::Repo`] with the workspace's settings as metadata; restore creates a new
//! workspace from those settings and streams the tar back in. The tar is spooled to a host
//! file on its way out, so a slow store never makes the guest drop output, and a restore
//! that fails removes the workspace it created.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kraal_backup::{Manifest, Repo};
use kraal_core::{Source, WorkspaceState};
use kraal_protocol::ExecRequest;
use kraal_sandbox::ExecEvent;
use kraal_store::WorkspaceRecord;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use crate::{CreateRequest, Engine, EngineError};

/// How a running backup or restore is doing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferProgress {
    /// Bytes of the volume's tar streamed so far.
    pub bytes: u64,
    /// The tar's size, when known (restores).
    pub total: Option<u64>,
    /// Chunks cut so far, and how many of them the store did not have yet (backups).
    pub chunks: u64,
    pub new_chunks: u64,
    /// Bytes written to the store (compressed and sealed).
    pub uploaded: u64,
}

/// What a backup records of its workspace, to recreate it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackupMeta {
    pub name: String,
    pub id: String,
    pub source: Source,
    pub resources: kraal_core::Resources,
    pub image: Option<String>,
    pub persistent: bool,
    pub mounts: Vec<kraal_core::Mount>,
    pub egress: Vec<kraal_core::EgressRule>,
    pub git: Vec<kraal_core::GitCredential>,
    pub backend: kraal_core::BackendKind,
    /// Idle stop and backup interval.
    #[serde(default)]
    pub policy: kraal_core::Policy,
    /// Taken by the schedule (and removed by it when newer ones replace it).
    #[serde(default)]
    pub scheduled: bool,
}

impl BackupMeta {
    pub fn of(m: &Manifest) -> Option<BackupMeta> {
        serde_json::from_value(m.meta["workspace"].clone()).ok()
    }
}

const TAR_OUT: &[&str] = &[
    "tar",
    "--create",
    "--file=-",
    "--directory=/workspace",
    "--sort=name",
    "--numeric-owner",
    "--xattrs",
    "--acls",
    ".",
];

const TAR_IN: &[&str] = &[
    "tar",
    "--extract",
    "--file=-",
    "--directory=/workspace",
    "--numeric-owner",
    "--same-permissions",
    "--same-owner",
    "--xattrs",
    "--acls",
];

fn backup_err(e: kraal_backup::BackupError) -> EngineError {
    EngineError::Backup(e)
}

/// Runs `tar` (`argv`) as root in the workspace.
async fn tar(
    client: &kraal_sandbox::GuestClient,
    rec: &WorkspaceRecord,
    argv: &[&str],
) -> Result<kraal_sandbox::ExecHandle, EngineError> {
    client
        .exec(ExecRequest {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: vec![],
            cwd: None,
            tty: None,
            as_root: true,
        })
        .await
        .map_err(EngineError::guest(rec.name.as_str()))
}

/// Waits for a lifecycle operation; its failure becomes the error.
async fn settle(p: crate::Pending) -> Result<WorkspaceRecord, EngineError> {
    match p.done.await {
        Ok(r) => r.map_err(EngineError::Invalid),
        Err(e) => Err(EngineError::Invalid(format!(
            "the operation ended abruptly: {e}"
        ))),
    }
}

impl Engine {
    /// Backs a running workspace up into `repo` (`scheduled`: by the backup schedule);
    /// `progress` hears how it goes.
    pub async fn backup(
        self: &Arc<Self>,
        reference: &str,
        repo: &Repo,
        scheduled: bool,
        progress: impl Fn(&TransferProgress) + Send + Sync,
    ) -> Result<Manifest, EngineError> {
        let rec = self.resolve(reference)?;
        if rec.state != WorkspaceState::Running {
            return Err(EngineError::Invalid(format!(
                "workspace {} is {}; start it with `kraal up {}` to back it up",
                rec.name,
                rec.state.as_str(),
                rec.name
            )));
        }
        repo.check().await.map_err(backup_err)?;
        let (rec, client) = self.guest(reference).await?;
        let meta = BackupMeta {
            name: rec.name.to_string(),
            id: rec.id.to_string(),
            source: rec.source.clone(),
            resources: rec.resources,
            image: rec.image.clone(),
            persistent: rec.persistent,
            mounts: rec.mounts.clone(),
            egress: rec.egress.clone(),
            git: rec.git.clone(),
            backend: rec.backend,
            policy: rec.policy,
            scheduled,
        };
        let mut h = tar(&client, &rec, TAR_OUT).await?;
        // The tar goes to a spool file as fast as the guest sends it; the store takes it
        // from there at its own pace.
        let spool_dir = self.spool_dir();
        std::fs::create_dir_all(&spool_dir).map_err(|e| {
            EngineError::Invalid(format!("cannot create {}: {e}", spool_dir.display()))
        })?;
        let spool = tempfile::NamedTempFile::new_in(&spool_dir)
            .map_err(|e| EngineError::Invalid(format!("cannot create a spool file: {e}")))?;
        let (written_tx, mut written_rx) = tokio::sync::watch::channel((0u64, false));
        let mut out = tokio::fs::File::from_std(
            spool
                .reopen()
                .map_err(|e| EngineError::Invalid(format!("spool file: {e}")))?,
        );
        let name = rec.name.to_string();
        let producer = async move {
            let mut n = 0u64;
            let mut stderr = Vec::new();
            loop {
                match h.next().await.map_err(EngineError::guest(&name))? {
                    ExecEvent::Stdout { data, .. } => {
                        out.write_all(&data)
                            .await
                            .map_err(|e| EngineError::Invalid(format!("spool file: {e}")))?;
                        n += data.len() as u64;
                        let _ = written_tx.send((n, false));
                    }
                    ExecEvent::Stderr { data, .. } => {
                        stderr.extend_from_slice(&data[..data.len().min(4096)]);
                    }
                    ExecEvent::Truncated { .. } => {
                        return Err(EngineError::Invalid(format!(
                            "backup of {name}: the workspace dropped part of the stream"
                        )));
                    }
                    ExecEvent::Exit { code, signal } => {
                        // GNU tar exits 1 when files changed while it read them.
                        if code.is_some_and(|c| c > 1) || signal.is_some() {
                            return Err(EngineError::Invalid(format!(
                                "backup of {name}: tar failed ({}): {}",
                                code.map(|c| format!("exit {c}"))
                                    .unwrap_or_else(|| format!("signal {}", signal.unwrap_or(0))),
                                String::from_utf8_lossy(&stderr).trim()
                            )));
                        }
                        out.flush()
                            .await
                            .map_err(|e| EngineError::Invalid(format!("spool file: {e}")))?;
                        let _ = written_tx.send((n, true));
                        return Ok::<u64, EngineError>(n);
                    }
                }
            }
        };
        let mut writer = repo.writer(serde_json::json!({ "workspace": meta })).await;
        let mut input = tokio::fs::File::from_std(
            spool
                .reopen()
                .map_err(|e| EngineError::Invalid(format!("spool file: {e}")))?,
        );
        // Both ends are open: the name goes now, so nothing is left behind even if the
        // daemon is killed mid-backup.
        drop(spool);
        let consumer = async {
            let mut pos = 0u64;
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let (avail, done) = *written_rx.borrow_and_update();
                if pos < avail {
                    input
                        .seek(std::io::SeekFrom::Start(pos))
                        .await
                        .map_err(|e| EngineError::Invalid(format!("spool file: {e}")))?;
                    let want = ((avail - pos) as usize).min(buf.len());
                    let n = input
                        .read(&mut buf[..want])
                        .await
                        .map_err(|e| EngineError::Invalid(format!("spool file: {e}")))?;
                    writer.write(&buf[..n]).await.map_err(backup_err)?;
                    pos += n as u64;
                    let p = writer.progress();
                    progress(&TransferProgress {
                        bytes: p.read,
                        total: None,
                        chunks: p.chunks,
                        new_chunks: p.new_chunks,
                        uploaded: p.uploaded,
                    });
                    continue;
                }
                if done {
                    return Ok::<_, EngineError>(writer);
                }
                if written_rx.changed().await.is_err() {
                    // The producer ended (with an error, reported by it).
                    return Ok(writer);
                }
            }
        };
        let (produced, consumed) = tokio::join!(producer, consumer);
        let total = produced?;
        let writer = consumed?;
        if writer.progress().read != total {
            return Err(EngineError::Invalid(format!(
                "backup of {}: {} of {total} bytes stored",
                rec.name,
                writer.progress().read
            )));
        }
        let m = writer.finish().await.map_err(backup_err)?;
        self.store.set_last_backup(&rec.id, &kraal_store::now())?;
        self.event(
            &rec.id,
            "info",
            &format!(
                "{} as {} ({} bytes, {} chunks)",
                if scheduled {
                    "scheduled backup"
                } else {
                    "backed up"
                },
                m.id,
                m.size,
                m.chunks.len()
            ),
        );
        Ok(m)
    }

    fn spool_dir(&self) -> std::path::PathBuf {
        std::env::temp_dir().join("kraal-backup-spool")
    }

    /// Creates a workspace from backup `m` (named `name`, or as it was) and streams the
    /// volume back in. A restore that fails removes the workspace it created.
    pub async fn restore_backup(
        self: &Arc<Self>,
        repo: &Repo,
        m: &Manifest,
        name: Option<&str>,
        progress: impl Fn(&TransferProgress) + Send + Sync,
    ) -> Result<WorkspaceRecord, EngineError> {
        let id = m.id.as_str();
        let meta = BackupMeta::of(m).ok_or_else(|| {
            EngineError::Invalid(format!("backup {id} does not describe a workspace"))
        })?;
        let name = name.unwrap_or(&meta.name).to_owned();
        if self.store.get_by_name(&name)?.is_some() {
            return Err(EngineError::NameTaken { name });
        }
        // Settings that only mean something on the machine the backup came from are
        // kept only when they still hold here.
        let mounts: Vec<_> = meta
            .mounts
            .iter()
            .filter(|m| m.host.is_dir())
            .cloned()
            .collect();
        let secrets: std::collections::HashSet<String> = self
            .store
            .list_secrets()?
            .into_iter()
            .map(|s| s.name)
            .collect();
        let git: Vec<_> = meta
            .git
            .iter()
            .filter(|g| secrets.contains(&g.secret))
            .cloned()
            .collect();
        let pending = self.create(CreateRequest {
            name: Some(name.clone()),
            source: Source::Empty,
            resources: Some(meta.resources),
            image: meta.image.clone(),
            persistent: meta.persistent,
            mounts,
            egress: Some(meta.egress.clone()),
            git,
            restoring: Some(m.id.clone()),
            policy: meta.policy,
        })?;
        let created = pending.record.clone();
        let result = async {
            settle(pending).await?;
            let (rec, client) = self.guest(created.id.as_str()).await?;
            let guest_err = EngineError::guest(rec.name.as_str());
            let mut h = tar(&client, &rec, TAR_IN).await?;
            let input = h.sender();
            let mut stream = Box::pin(repo.read(m));
            let mut sent = 0u64;
            while let Some(part) = stream.next().await {
                let part = part.map_err(backup_err)?;
                sent += part.len() as u64;
                input.stdin(part).await.map_err(guest_err)?;
                progress(&TransferProgress {
                    bytes: sent,
                    total: Some(m.size),
                    ..Default::default()
                });
            }
            input.eof().await.map_err(guest_err)?;
            let mut stderr = Vec::new();
            loop {
                match tokio::time::timeout(Duration::from_secs(600), h.next())
                    .await
                    .map_err(|_| EngineError::Invalid("tar did not finish in 10 minutes".into()))?
                    .map_err(guest_err)?
                {
                    ExecEvent::Stderr { data, .. } => stderr.extend_from_slice(&data),
                    ExecEvent::Exit { code: Some(0), .. } => break,
                    ExecEvent::Exit { code, signal } => {
                        return Err(EngineError::Invalid(format!(
                            "unpacking the backup failed ({code:?}, {signal:?}): {}",
                            String::from_utf8_lossy(&stderr).trim()
                        )));
                    }
                    _ => {}
                }
            }
            // Start again on the restored volume, so the guest picks up the agents' session
            // logs (and the image's start-up hooks see the restored files).
            drop(client);
            settle(self.down(rec.id.as_str())?).await?;
            let rec = settle(self.up(rec.id.as_str())?).await?;
            if let Ok((rec, client)) = self.guest(rec.id.as_str()).await {
                self.sync_sessions(&rec, &client).await;
            }
            self.store.set_restoring(&rec.id, None)?;
            self.event(&rec.id, "info", &format!("restored from backup {id}"));
            Ok(rec)
        }
        .await;
        if result.is_err()
            && let Ok(p) = self.remove_forced(created.id.as_str(), true)
        {
            let _ = p.done.await;
        }
        self.restores.lock().unwrap().remove(&created.id);
        result.map(|mut r| {
            r.restoring = None;
            r
        })
    }
}
