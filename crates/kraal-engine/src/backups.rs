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

use crate::host_backups::settle_watching;
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

impl From<&kraal_backup::Progress> for TransferProgress {
    fn from(p: &kraal_backup::Progress) -> Self {
        TransferProgress {
            bytes: p.read,
            total: None,
            chunks: p.chunks,
            new_chunks: p.new_chunks,
            uploaded: p.uploaded,
        }
    }
}

/// Stops a workspace that was started only for a backup or an export, once dropped.
pub(crate) struct StopAfter {
    engine: Arc<Engine>,
    id: kraal_core::WorkspaceId,
}

impl Drop for StopAfter {
    fn drop(&mut self) {
        let engine = self.engine.clone();
        let id = self.id.clone();
        tokio::spawn(async move {
            if let Ok(p) = engine.down(id.as_str()) {
                let _ = p.done.await;
            }
        });
    }
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

    fn from_record(rec: &WorkspaceRecord, scheduled: bool) -> BackupMeta {
        BackupMeta {
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
        }
    }
}

/// The first entry of an export file: what the workspace was.
pub const EXPORT_ENTRY: &str = "kraal-export.json";
const EXPORT_FORMAT: u32 = 1;
/// The description entry is small; anything bigger is not an export.
const EXPORT_HEAD_MAX: u64 = 1 << 20;

#[derive(Debug, Serialize, Deserialize)]
struct ExportHead {
    format: u32,
    exported_at: String,
    workspace: BackupMeta,
}

/// The tar entry that starts an export (header, JSON, padding); the volume's own tar
/// follows it, so the whole file is one tar archive any `tar` can list.
fn export_head(meta: &BackupMeta) -> bytes::Bytes {
    let json = serde_json::to_vec_pretty(&ExportHead {
        format: EXPORT_FORMAT,
        exported_at: kraal_store::now(),
        workspace: meta.clone(),
    })
    .expect("serializes");
    let mut h = tar::Header::new_gnu();
    h.set_path(EXPORT_ENTRY).expect("short name");
    h.set_size(json.len() as u64);
    h.set_mode(0o600);
    h.set_mtime(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    );
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    let mut out = h.as_bytes().to_vec();
    out.extend_from_slice(&json);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out.into()
}

/// Reads the description entry off the front of an export; returns it and the bytes
/// after it that were already read (the start of the volume's tar).
pub async fn read_export_head<E: std::fmt::Display>(
    stream: &mut (impl futures::Stream<Item = Result<bytes::Bytes, E>> + Unpin),
) -> Result<(BackupMeta, bytes::Bytes), EngineError> {
    let bad = |why: String| EngineError::Invalid(format!("not a kraal export: {why}"));
    let mut buf = Vec::new();
    let mut need = 512usize;
    let mut size = None;
    loop {
        while buf.len() < need {
            match stream.next().await {
                Some(Ok(b)) => buf.extend_from_slice(&b),
                Some(Err(e)) => return Err(bad(e.to_string())),
                None => return Err(bad("it ends before its description".into())),
            }
        }
        if size.is_some() {
            break;
        }
        let h = tar::Header::from_byte_slice(&buf[..512]);
        let path = h.path().map_err(|e| bad(e.to_string()))?;
        if path.to_str() != Some(EXPORT_ENTRY) {
            return Err(bad(format!(
                "it starts with {:?}, not {EXPORT_ENTRY}",
                path.display().to_string()
            )));
        }
        let n = h.entry_size().map_err(|e| bad(e.to_string()))?;
        if n > EXPORT_HEAD_MAX {
            return Err(bad(format!("its description is {n} bytes")));
        }
        size = Some(n as usize);
        need = 512 + (n as usize).div_ceil(512) * 512;
    }
    let n = size.expect("read");
    let head: ExportHead = serde_json::from_slice(&buf[512..512 + n])
        .map_err(|e| bad(format!("{EXPORT_ENTRY}: {e}")))?;
    if head.format != EXPORT_FORMAT {
        return Err(bad(format!(
            "format {} (this kraal reads format {EXPORT_FORMAT})",
            head.format
        )));
    }
    Ok((head.workspace, bytes::Bytes::from(buf).slice(need..)))
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
async fn run_tar(
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

/// The volume's tar as `run_tar(TAR_OUT)` streams it out of the sandbox; `what` (backup,
/// export) names the job in errors. GNU tar exits 1 when files changed while it read
/// them, which is not a failure. The guest client, and the guard that stops a workspace
/// started for the job, live as long as the stream.
fn volume_tar(
    h: kraal_sandbox::ExecHandle,
    client: kraal_sandbox::GuestClient,
    stop_after: Option<StopAfter>,
    name: String,
    what: &'static str,
) -> impl futures::Stream<Item = Result<bytes::Bytes, EngineError>> + Send + 'static {
    struct St {
        h: kraal_sandbox::ExecHandle,
        _client: kraal_sandbox::GuestClient,
        _stop_after: Option<StopAfter>,
        stderr: Vec<u8>,
        name: String,
    }
    futures::stream::unfold(
        Some(St {
            h,
            _client: client,
            _stop_after: stop_after,
            stderr: Vec::new(),
            name,
        }),
        move |st| async move {
            let mut st = st?;
            loop {
                let ev = match st.h.next().await {
                    Ok(ev) => ev,
                    Err(e) => return Some((Err(EngineError::guest(&st.name)(e)), None)),
                };
                match ev {
                    ExecEvent::Stdout { data, .. } => return Some((Ok(data), Some(st))),
                    ExecEvent::Stderr { data, .. } => {
                        st.stderr.extend_from_slice(&data[..data.len().min(4096)]);
                    }
                    ExecEvent::Truncated { .. } => {
                        let e = EngineError::Invalid(format!(
                            "{what} of {}: the workspace dropped part of the stream",
                            st.name
                        ));
                        return Some((Err(e), None));
                    }
                    ExecEvent::Exit { code, signal } => {
                        if code.is_some_and(|c| c > 1) || signal.is_some() {
                            let e = EngineError::Invalid(format!(
                                "{what} of {}: tar failed ({}): {}",
                                st.name,
                                code.map(|c| format!("exit {c}"))
                                    .unwrap_or_else(|| format!("signal {}", signal.unwrap_or(0))),
                                String::from_utf8_lossy(&st.stderr).trim()
                            ));
                            return Some((Err(e), None));
                        }
                        return None;
                    }
                }
            }
        },
    )
}

/// What a restore fills the new volume from.
enum Payload<'a> {
    /// A tar of the volume (`total` bytes, if known), unpacked by tar in the sandbox.
    Tar {
        stream: std::pin::Pin<
            Box<dyn futures::Stream<Item = Result<bytes::Bytes, EngineError>> + Send + 'a>,
        >,
        total: Option<u64>,
    },
    /// A tree backup: written on the host, or as a tar through the guest where the host
    /// cannot open the volume.
    Tree { repo: Repo, manifest: Box<Manifest> },
}

/// Waits for a lifecycle operation; its failure becomes the error.
async fn settle(p: crate::Pending) -> Result<WorkspaceRecord, EngineError> {
    outcome(p.done.await)
}

/// A finished lifecycle operation's result; its failure becomes the error.
pub(crate) fn outcome(
    r: Result<Result<WorkspaceRecord, String>, tokio::task::JoinError>,
) -> Result<WorkspaceRecord, EngineError> {
    match r {
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
        let t0 = std::time::Instant::now();
        repo.check().await.map_err(backup_err)?;
        // A stopped workspace whose volume the host can read is backed up without
        // starting it (holding its operation lock, so nothing starts or removes it
        // meanwhile).
        let rec = self.resolve(reference)?;
        if rec.state == WorkspaceState::Stopped {
            let lock = self.lock_for(&rec.id);
            let _held = lock.lock().await;
            let rec = self.resolve(reference)?;
            if rec.state == WorkspaceState::Stopped {
                let meta = BackupMeta::from_record(&rec, scheduled);
                let r = self.backup_on_host(&rec, repo, &meta, &progress).await;
                if let Err(e) = self.backend.release_host_volume(&rec.id).await {
                    tracing::warn!(workspace = %rec.id, "after the backup: {e}");
                }
                if let Some(m) = r? {
                    return self.backed_up(&rec, m, scheduled, t0);
                }
            }
        }
        let _stop_after = self.running_for(reference, "back it up").await?;
        let rec = self.resolve(reference)?;
        let meta = BackupMeta::from_record(&rec, scheduled);
        if let Some(m) = self.backup_on_host(&rec, repo, &meta, &progress).await? {
            return self.backed_up(&rec, m, scheduled, t0);
        }
        let (rec, client) = self.guest(reference).await?;
        let h = run_tar(&client, &rec, TAR_OUT).await?;
        let mut tar = Box::pin(volume_tar(h, client, None, rec.name.to_string(), "backup"));
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
        let producer = async move {
            let mut n = 0u64;
            while let Some(data) = tar.next().await {
                let data = data?;
                out.write_all(&data)
                    .await
                    .map_err(|e| EngineError::Invalid(format!("spool file: {e}")))?;
                n += data.len() as u64;
                let _ = written_tx.send((n, false));
            }
            out.flush()
                .await
                .map_err(|e| EngineError::Invalid(format!("spool file: {e}")))?;
            let _ = written_tx.send((n, true));
            Ok::<u64, EngineError>(n)
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
                    progress(&writer.progress().into());
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
        self.backed_up(&rec, m, scheduled, t0)
    }

    /// Records a finished backup.
    fn backed_up(
        &self,
        rec: &WorkspaceRecord,
        m: Manifest,
        scheduled: bool,
        t0: std::time::Instant,
    ) -> Result<Manifest, EngineError> {
        self.metrics.backup(m.size, t0.elapsed());
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

    /// Makes sure the workspace runs: a stopped (or stopping) one is started for the job
    /// and stopped again when the returned guard is dropped; a starting one is waited
    /// for. A failed or deleting one is an error.
    async fn running_for(
        self: &Arc<Self>,
        reference: &str,
        what: &str,
    ) -> Result<Option<StopAfter>, EngineError> {
        let rec = self.resolve(reference)?;
        match rec.state {
            WorkspaceState::Running => Ok(None),
            // Starting: wait for it (the start holds the workspace's lock).
            WorkspaceState::Creating | WorkspaceState::Starting => {
                settle(self.up(rec.id.as_str())?).await?;
                Ok(None)
            }
            WorkspaceState::Stopped | WorkspaceState::Stopping => {
                self.event(&rec.id, "info", &format!("starting it to {what}"));
                settle(self.up(rec.id.as_str())?).await?;
                Ok(Some(StopAfter {
                    engine: self.clone(),
                    id: rec.id.clone(),
                }))
            }
            s => Err(EngineError::Invalid(format!(
                "workspace {} is {}; wait until it is running or stopped to {what}",
                rec.name,
                s.as_str(),
            ))),
        }
    }

    /// A running workspace as an export: one tar archive (uncompressed) whose first entry
    /// describes the workspace ([`EXPORT_ENTRY`]) and whose other entries are its volume.
    /// A failure part-way ends the stream with an error.
    pub async fn export(
        self: &Arc<Self>,
        reference: &str,
    ) -> Result<
        (
            BackupMeta,
            impl futures::Stream<Item = Result<bytes::Bytes, EngineError>> + Send + 'static,
        ),
        EngineError,
    > {
        let stop_after = self.running_for(reference, "export it").await?;
        let (rec, client) = self.guest(reference).await?;
        let meta = BackupMeta::from_record(&rec, false);
        let h = run_tar(&client, &rec, TAR_OUT).await?;
        let head = export_head(&meta);
        self.event(&rec.id, "info", "export started");
        let volume = volume_tar(h, client, stop_after, rec.name.to_string(), "export");
        Ok((
            meta,
            futures::stream::once(async move { Ok(head) }).chain(volume),
        ))
    }

    /// Creates a workspace from an export (`stream`: the uncompressed archive
    /// [`Engine::export`] made), named `name` or as it was. A failed import removes the
    /// workspace it created.
    pub async fn import<E: std::fmt::Display + Send + 'static>(
        self: &Arc<Self>,
        stream: impl futures::Stream<Item = Result<bytes::Bytes, E>> + Send + Unpin + 'static,
        name: Option<&str>,
        progress: impl Fn(&TransferProgress) + Send + Sync,
    ) -> Result<WorkspaceRecord, EngineError> {
        let mut stream = stream;
        let (meta, first) = read_export_head(&mut stream).await?;
        let rest = futures::stream::once(async move { Ok::<_, EngineError>(first) }).chain(
            stream.map(|r| r.map_err(|e| EngineError::Invalid(format!("reading the export: {e}")))),
        );
        self.restore_volume(
            meta,
            "an export file",
            name,
            Payload::Tar {
                stream: Box::pin(rest),
                total: None,
            },
            progress,
        )
        .await
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
        let meta = BackupMeta::of(m).ok_or_else(|| {
            EngineError::Invalid(format!("backup {} does not describe a workspace", m.id))
        })?;
        let payload = if m.tree.is_some() {
            Payload::Tree {
                repo: repo.clone(),
                manifest: Box::new(m.clone()),
            }
        } else {
            Payload::Tar {
                stream: Box::pin(repo.read(m).map(|r| r.map_err(backup_err))),
                total: Some(m.size),
            }
        };
        self.restore_volume(meta, &format!("backup {}", m.id), name, payload, progress)
            .await
    }

    /// Creates a workspace with `meta`'s settings and fills its volume from `payload`;
    /// `from` says where it came from.
    async fn restore_volume(
        self: &Arc<Self>,
        meta: BackupMeta,
        from: &str,
        name: Option<&str>,
        payload: Payload<'_>,
        progress: impl Fn(&TransferProgress) + Send + Sync,
    ) -> Result<WorkspaceRecord, EngineError> {
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
        // A tree is written on the host before the first start when the backend offers
        // the volume there.
        let written = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let prefill = match &payload {
            Payload::Tree { repo, manifest } => Some(crate::host_backups::tree_prefill(
                repo.clone(),
                (**manifest).clone(),
                written.clone(),
            )),
            Payload::Tar { .. } => None,
        };
        let pending = self.create_with(
            CreateRequest {
                name: Some(name.clone()),
                source: Source::Empty,
                resources: Some(meta.resources),
                image: meta.image.clone(),
                persistent: meta.persistent,
                mounts,
                egress: Some(meta.egress.clone()),
                git,
                restoring: Some(from.to_owned()),
                policy: meta.policy,
            },
            prefill,
        )?;
        let created = pending.record.clone();
        let result = async {
            let total = match &payload {
                Payload::Tree { manifest, .. } => Some(manifest.size),
                Payload::Tar { total, .. } => *total,
            };
            settle_watching(pending, || {
                progress(&TransferProgress {
                    bytes: written.load(std::sync::atomic::Ordering::Relaxed),
                    total,
                    ..Default::default()
                })
            })
            .await?;
            let mut stream = match payload {
                Payload::Tar { stream, .. } => stream,
                Payload::Tree { repo, manifest } => {
                    if !self.unfilled(&created.id) {
                        // Written on the host: the first start already saw the files.
                        let rec = self.resolve(created.id.as_str())?;
                        self.store.set_restoring(&rec.id, None)?;
                        self.event(&rec.id, "info", &format!("restored from {from}"));
                        return Ok(rec);
                    }
                    Box::pin(repo.tree_tar(*manifest).map(|r| r.map_err(backup_err)))
                }
            };
            let (rec, client) = self.guest(created.id.as_str()).await?;
            let guest_err = EngineError::guest(rec.name.as_str());
            let mut h = run_tar(&client, &rec, TAR_IN).await?;
            let input = h.sender();
            let mut sent = 0u64;
            while let Some(part) = stream.next().await {
                let part = part?;
                sent += part.len() as u64;
                input.stdin(part).await.map_err(guest_err)?;
                progress(&TransferProgress {
                    bytes: sent,
                    total,
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
                        let how = match (code, signal) {
                            (Some(c), _) => format!("tar exited with {c}"),
                            (None, Some(s)) => format!("tar was killed by signal {s}"),
                            (None, None) => "tar stopped".to_owned(),
                        };
                        return Err(EngineError::Invalid(format!(
                            "unpacking {from} failed ({how}): {}",
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
            self.event(&rec.id, "info", &format!("restored from {from}"));
            Ok(rec)
        }
        .await;
        self.unfilled(&created.id);
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
