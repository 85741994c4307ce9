//! The daemon's own state in the backup store, so a second machine can take over when
//! the first is gone: a consistent copy of the database (workspaces, sessions, secrets —
//! encrypted — tokens, templates, audit log) plus the key files next to it, as one backup
//! marked `daemon`. `kraal serve --take-over` puts it back into an empty data directory and
//! then restores every workspace from its newest backup.

use std::path::{Path, PathBuf};

use axum::Json;
use axum::extract::State;
use futures::TryStreamExt;
use kraal_api::*;
use kraal_backup::{Manifest, Repo};

use crate::AppState;
use crate::error::HttpError;
use crate::security::{Actor, actor_of, audit};

/// The database's name inside a state backup.
const DB_ENTRY: &str = "state.db";

/// What a state backup records besides its files.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct DaemonMeta {
    pub hostname: String,
    pub version: String,
    pub workspaces: Vec<String>,
    #[serde(default)]
    pub scheduled: bool,
}

impl DaemonMeta {
    pub fn of(m: &Manifest) -> Option<DaemonMeta> {
        serde_json::from_value(m.meta.get("daemon")?.clone()).ok()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Backup(#[from] kraal_backup::BackupError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] kraal_store::StoreError),
    #[error("{0}")]
    Invalid(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> StateError {
    let what = what.into();
    move |source| StateError::Io { what, source }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// Backs the daemon's state up into `repo`: the database (a consistent snapshot taken
/// with `VACUUM INTO`) and `files` (name → path; missing ones are skipped).
pub async fn backup_state(
    store: &kraal_store::Store,
    files: &[(String, PathBuf)],
    repo: &Repo,
    scheduled: bool,
) -> Result<Manifest, StateError> {
    repo.check().await?;
    let dir = tempfile::tempdir().map_err(io("a scratch directory"))?;
    let db = dir.path().join(DB_ENTRY);
    store.snapshot(&db)?;
    let mut tar = tar::Builder::new(Vec::new());
    tar.mode(tar::HeaderMode::Deterministic);
    tar.append_path_with_name(&db, DB_ENTRY)
        .map_err(io("packing the database"))?;
    for (name, path) in files {
        match std::fs::metadata(path) {
            Ok(_) => tar
                .append_path_with_name(path, name)
                .map_err(io(format!("packing {}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(format!("reading {}", path.display()))(e)),
        }
    }
    let data = tar.into_inner().map_err(io("packing the state"))?;
    let meta = DaemonMeta {
        hostname: hostname(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        workspaces: store
            .list()?
            .into_iter()
            .map(|w| w.name.to_string())
            .collect(),
        scheduled,
    };
    let mut w = repo.writer(serde_json::json!({ "daemon": meta })).await;
    w.write(&data).await?;
    Ok(w.finish().await?)
}

/// The state backups in `repo`, oldest first.
pub async fn state_backups(repo: &Repo) -> Result<Vec<Manifest>, StateError> {
    Ok(repo
        .list()
        .await?
        .into_iter()
        .filter(|m| DaemonMeta::of(m).is_some())
        .collect())
}

/// Deletes the schedule's state backups beyond the newest `keep`.
pub async fn prune_state(repo: &Repo, keep: usize) -> Result<u64, StateError> {
    let scheduled: Vec<Manifest> = state_backups(repo)
        .await?
        .into_iter()
        .filter(|m| DaemonMeta::of(m).is_some_and(|d| d.scheduled))
        .collect();
    let excess = scheduled.len().saturating_sub(keep.max(1));
    for m in &scheduled[..excess] {
        repo.delete(&m.id).await?;
    }
    if excess > 0 {
        repo.gc().await?;
    }
    Ok(excess as u64)
}

/// Writes state backup `which` (an id, or `latest`) into a data directory that has no
/// database yet: the database to `db`, the other files to where `files` says (each
/// owner-only). Returns the backup.
pub async fn restore_state(
    repo: &Repo,
    which: &str,
    db: &Path,
    files: &[(String, PathBuf)],
) -> Result<Manifest, StateError> {
    if db.exists() {
        return Err(StateError::Invalid(format!(
            "{} already exists: a takeover only fills an empty data directory (move the old one away first)",
            db.display()
        )));
    }
    let all = state_backups(repo).await?;
    let m = if which == "latest" {
        all.last().cloned().ok_or_else(|| {
            StateError::Invalid(format!(
                "{} holds no daemon state backup (`kraal state backup` makes one)",
                repo.url()
            ))
        })?
    } else {
        let m = repo.manifest(which).await?;
        if DaemonMeta::of(&m).is_none() {
            return Err(StateError::Invalid(format!(
                "backup {which} is a workspace backup, not a daemon state backup"
            )));
        }
        m
    };
    let parts: Vec<bytes::Bytes> = repo.read(&m).try_collect().await?;
    let data = parts.concat();
    let mut archive = tar::Archive::new(std::io::Cursor::new(data));
    let mut written = Vec::new();
    let result = (|| {
        for entry in archive.entries().map_err(io("reading the state backup"))? {
            let mut entry = entry.map_err(io("reading the state backup"))?;
            let name = entry
                .path()
                .map_err(io("reading the state backup"))?
                .to_string_lossy()
                .into_owned();
            let target = if name == DB_ENTRY {
                db.to_path_buf()
            } else if let Some((_, p)) = files.iter().find(|(n, _)| *n == name) {
                p.clone()
            } else {
                continue;
            };
            if let Some(dir) = target.parent() {
                std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
            }
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut buf)
                .map_err(io("reading the state backup"))?;
            write_private(&target, &buf)?;
            written.push(target);
        }
        if !db.exists() {
            return Err(StateError::Invalid(format!(
                "state backup {} has no database",
                m.id
            )));
        }
        Ok(())
    })();
    if let Err(e) = result {
        for p in written {
            let _ = std::fs::remove_file(p);
        }
        return Err(e);
    }
    Ok(m)
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), StateError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("restoring");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(format!("writing {}", tmp.display())))?;
    f.write_all(data)
        .and_then(|()| f.sync_all())
        .map_err(io(format!("writing {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(io(format!("writing {}", path.display())))
}

/// The newest backup of each of `workspaces` (matched by id, else by name).
pub fn newest_backups(
    workspaces: &[kraal_store::WorkspaceRecord],
    backups: &[Manifest],
) -> Vec<(kraal_store::WorkspaceRecord, Option<Manifest>)> {
    workspaces
        .iter()
        .map(|w| {
            let newest = backups
                .iter()
                .filter(|m| kraal_engine::BackupMeta::of(m).is_some_and(|b| b.id == w.id.as_str()))
                .max_by(|a, b| (&a.created_at, &a.id).cmp(&(&b.created_at, &b.id)))
                .cloned();
            (w.clone(), newest)
        })
        .collect()
}

fn state_info(m: &Manifest) -> StateBackupInfo {
    let d = DaemonMeta::of(m);
    StateBackupInfo {
        id: m.id.clone(),
        created_at: m.created_at.clone(),
        hostname: d.as_ref().map(|d| d.hostname.clone()).unwrap_or_default(),
        workspaces: d.as_ref().map(|d| d.workspaces.clone()).unwrap_or_default(),
        scheduled: d.is_some_and(|d| d.scheduled),
        size: m.size,
    }
}

fn err(e: StateError) -> HttpError {
    match e {
        StateError::Backup(b) => kraal_engine::EngineError::Backup(b).into(),
        StateError::Store(s) => kraal_engine::EngineError::Store(s).into(),
        e => HttpError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "state_backup_failed",
            kraal_engine::chain(&e),
        ),
    }
}

#[utoipa::path(post, path = "/v1/state/backups",
    responses((status = 200, body = StateBackupInfo), (status = 409, body = ApiError), (status = 502, body = ApiError)))]
pub async fn create_state_backup(
    State(s): State<AppState>,
    actor: Option<axum::Extension<Actor>>,
) -> Result<Json<StateBackupInfo>, HttpError> {
    let repo = crate::backups::repo(&s)?;
    let m = backup_state(s.engine.store(), &s.state_files, &repo, false)
        .await
        .map_err(err)?;
    audit(&s, &actor_of(actor), "state.backup", &m.id, "");
    Ok(Json(state_info(&m)))
}

#[utoipa::path(get, path = "/v1/state/backups",
    responses((status = 200, body = Vec<StateBackupInfo>), (status = 409, body = ApiError)))]
pub async fn list_state_backups(
    State(s): State<AppState>,
) -> Result<Json<Vec<StateBackupInfo>>, HttpError> {
    let repo = crate::backups::repo(&s)?;
    let l = state_backups(&repo).await.map_err(err)?;
    Ok(Json(l.iter().map(state_info).collect()))
}
