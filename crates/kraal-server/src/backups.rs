//! Backup routes: back a workspace up, list and delete backups, restore one as a new
//! workspace. Backups and restores answer with NDJSON progress lines and go on when the
//! client disconnects.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use kraal_api::*;

use crate::AppState;
use crate::error::HttpError;
use crate::security::{Actor, actor_of, audit};

pub(crate) fn repo(s: &AppState) -> Result<kraal_backup::Repo, HttpError> {
    s.backups.clone().ok_or_else(|| {
        HttpError::new(
            StatusCode::CONFLICT,
            "no_backup_store",
            "this daemon has no backup store (kraal serve --backup-url)",
        )
    })
}

pub fn info(m: &kraal_backup::Manifest) -> BackupInfo {
    let meta = kraal_engine::BackupMeta::of(m);
    BackupInfo {
        id: m.id.clone(),
        workspace: meta.as_ref().map(|w| w.name.clone()).unwrap_or_default(),
        workspace_id: meta.as_ref().map(|w| w.id.clone()).unwrap_or_default(),
        scheduled: meta.is_some_and(|w| w.scheduled)
            || crate::state::DaemonMeta::of(m).is_some_and(|d| d.scheduled),
        daemon: crate::state::DaemonMeta::of(m).is_some(),
        created_at: m.created_at.clone(),
        size: m.size,
        chunks: m.chunks.len() as u64,
        files: m.tree.as_ref().map(|t| t.entries),
    }
}

fn progress_line(p: &kraal_engine::TransferProgress) -> TransferLine {
    TransferLine::Progress {
        bytes: p.bytes,
        total: p.total,
        chunks: p.chunks,
        new_chunks: p.new_chunks,
        uploaded: p.uploaded,
    }
}

/// Runs `job` in its own task and streams its progress and outcome as NDJSON.
fn stream<F, Fut>(job: F) -> Response
where
    F: FnOnce(Box<dyn Fn(&kraal_engine::TransferProgress) + Send + Sync>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = TransferLine> + Send,
{
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<TransferLine>();
    tokio::spawn(async move {
        let ptx = tx.clone();
        // At most a few progress lines a second.
        let last =
            std::sync::Mutex::new(std::time::Instant::now() - std::time::Duration::from_secs(1));
        let progress: Box<dyn Fn(&kraal_engine::TransferProgress) + Send + Sync> =
            Box::new(move |p| {
                let mut l = last.lock().unwrap();
                if l.elapsed() >= std::time::Duration::from_millis(200) {
                    *l = std::time::Instant::now();
                    let _ = ptx.send(progress_line(p));
                }
            });
        let end = job(progress).await;
        let _ = tx.send(end);
    });
    crate::ndjson(rx)
}

fn failed(e: kraal_engine::EngineError) -> TransferLine {
    TransferLine::Error(HttpError::from(e).body)
}

#[utoipa::path(post, path = "/v1/workspaces/{ws}/backups", params(("ws" = String, Path, description = "Workspace name or id")),
    responses((status = 200, description = "NDJSON lines of TransferLine: progress, then backup or error", body = TransferLine),
        (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub async fn create_backup(
    State(s): State<AppState>,
    actor: Option<axum::Extension<Actor>>,
    Path(ws): Path<String>,
) -> Result<Response, HttpError> {
    let repo = repo(&s)?;
    let rec = s.engine.resolve(&ws)?;
    let actor = actor_of(actor);
    Ok(stream(move |progress| async move {
        match s
            .engine
            .backup(rec.id.as_str(), &repo, false, progress)
            .await
        {
            Ok(m) => {
                audit(&s, &actor, "backup", rec.name.as_str(), &m.id);
                TransferLine::Backup(info(&m))
            }
            Err(e) => {
                tracing::warn!(workspace = %rec.name, "backup failed: {}", kraal_engine::chain(&e));
                failed(e)
            }
        }
    }))
}

#[utoipa::path(get, path = "/v1/backups", responses((status = 200, body = Vec<BackupInfo>), (status = 409, body = ApiError)))]
pub async fn list_backups(State(s): State<AppState>) -> Result<Json<Vec<BackupInfo>>, HttpError> {
    let repo = repo(&s)?;
    let l = repo
        .list()
        .await
        .map_err(|e| HttpError::from(kraal_engine::EngineError::Backup(e)))?;
    Ok(Json(l.iter().map(info).collect()))
}

#[utoipa::path(delete, path = "/v1/backups/{id}", params(("id" = String, Path, description = "Backup id")),
    responses((status = 204), (status = 404, body = ApiError)))]
pub async fn delete_backup(
    State(s): State<AppState>,
    actor: Option<axum::Extension<Actor>>,
    Path(id): Path<String>,
) -> Result<StatusCode, HttpError> {
    let repo = repo(&s)?;
    let err = |e| HttpError::from(kraal_engine::EngineError::Backup(e));
    repo.delete(&id).await.map_err(err)?;
    repo.gc().await.map_err(err)?;
    audit(&s, &actor_of(actor), "backup.delete", &id, "");
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/backups/{id}/restore", request_body = RestoreBackup,
    params(("id" = String, Path, description = "Backup id")),
    responses((status = 200, description = "NDJSON lines of TransferLine: progress, then workspace or error", body = TransferLine),
        (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub async fn restore_backup(
    State(s): State<AppState>,
    actor: Option<axum::Extension<Actor>>,
    Path(id): Path<String>,
    body: Result<Json<RestoreBackup>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, HttpError> {
    let Json(req) = body.map_err(|e| HttpError::bad_request(e.body_text()))?;
    let repo = repo(&s)?;
    // Unknown backups and taken names are answered before the stream starts.
    let m = repo
        .manifest(&id)
        .await
        .map_err(|e| HttpError::from(kraal_engine::EngineError::Backup(e)))?;
    if let Some(n) = &req.name {
        kraal_core::WorkspaceName::parse(n)
            .map_err(|e| HttpError::from(kraal_engine::EngineError::from(e)))?;
    }
    let actor = actor_of(actor);
    Ok(stream(move |progress| async move {
        match s
            .engine
            .restore_backup(&repo, &m, req.name.as_deref(), progress)
            .await
        {
            Ok(rec) => {
                audit(&s, &actor, "restore", rec.name.as_str(), &m.id);
                TransferLine::Workspace(Box::new(crate::routes::to_api(&s.engine, &rec)))
            }
            Err(e) => {
                tracing::warn!(backup = %m.id, "restore failed: {}", kraal_engine::chain(&e));
                failed(e)
            }
        }
    }))
}

#[utoipa::path(get, path = "/v1/workspaces/{ws}/export", params(("ws" = String, Path, description = "Workspace name or id")),
    responses((status = 200, description = "The workspace as a zstd-compressed tar: kraal-export.json (its settings), then its volume", content_type = "application/zstd"),
        (status = 404, body = ApiError), (status = 400, body = ApiError)))]
pub async fn export_workspace(
    State(s): State<AppState>,
    actor: Option<axum::Extension<Actor>>,
    Path(ws): Path<String>,
) -> Result<Response, HttpError> {
    let (meta, stream) = s.engine.export(&ws).await?;
    audit(&s, &actor_of(actor), "export", &meta.name, "");
    let body = axum::body::Body::from_stream(kraal_backup::zst::compress(stream));
    Ok(axum::response::IntoResponse::into_response((
        [
            (
                axum::http::header::CONTENT_TYPE,
                "application/zstd".to_owned(),
            ),
            (
                axum::http::header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{}.tar.zst\"", meta.name),
            ),
        ],
        body,
    )))
}

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
pub struct ImportQuery {
    /// The new workspace's name (default: the exported one's).
    pub name: Option<String>,
}

#[utoipa::path(post, path = "/v1/workspaces/import", params(ImportQuery),
    request_body(content = Vec<u8>, description = "An export file (zstd-compressed tar from GET /v1/workspaces/{ws}/export)", content_type = "application/zstd"),
    responses((status = 200, description = "NDJSON lines of TransferLine: progress, then workspace or error", body = TransferLine),
        (status = 400, body = ApiError)))]
pub async fn import_workspace(
    State(s): State<AppState>,
    actor: Option<axum::Extension<Actor>>,
    axum::extract::Query(q): axum::extract::Query<ImportQuery>,
    body: axum::body::Body,
) -> Result<Response, HttpError> {
    if let Some(n) = &q.name {
        kraal_core::WorkspaceName::parse(n)
            .map_err(|e| HttpError::from(kraal_engine::EngineError::from(e)))?;
        if s.engine.resolve(n).is_ok() {
            return Err(kraal_engine::EngineError::NameTaken { name: n.clone() }.into());
        }
    }
    let actor = actor_of(actor);
    let plain = Box::pin(kraal_backup::zst::decompress(body.into_data_stream()));
    Ok(stream(move |progress| async move {
        match s.engine.import(plain, q.name.as_deref(), progress).await {
            Ok(rec) => {
                audit(&s, &actor, "import", rec.name.as_str(), "");
                TransferLine::Workspace(Box::new(crate::routes::to_api(&s.engine, &rec)))
            }
            Err(e) => {
                tracing::warn!("import failed: {}", kraal_engine::chain(&e));
                failed(e)
            }
        }
    }))
}

/// Deletes every backup of workspace `id` or of one by its name (a restored workspace has
/// a new id), and the chunks only they used.
pub async fn purge(s: &AppState, id: &str, name: &str) -> Result<u64, HttpError> {
    let repo = repo(s)?;
    let err = |e| HttpError::from(kraal_engine::EngineError::Backup(e));
    let mut n = 0;
    for m in repo.list().await.map_err(err)? {
        if kraal_engine::BackupMeta::of(&m).is_some_and(|w| w.id == id || w.name == name) {
            repo.delete(&m.id).await.map_err(err)?;
            n += 1;
        }
    }
    if n > 0 {
        repo.gc().await.map_err(err)?;
    }
    audit(s, "daemon", "backup.purge", id, &format!("{n} backups"));
    Ok(n)
}
