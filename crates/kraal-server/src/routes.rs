//! Route table and handlers.

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use kraal_api::*;
use kraal_core::{Source, WorkspaceState};
use kraal_engine::{CreateRequest, Pending, chain};
use kraal_store::WorkspaceRecord;
use serde::Deserialize;
use utoipa::OpenApi;

use crate::AppState;
use crate::error::HttpError;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "kraal daemon API",
        description = "Workspaces in sandboxes, driven by the kraal CLI and web UI."
    ),
    paths(
        status,
        host,
        list_workspaces,
        create_workspace,
        get_workspace,
        up_workspace,
        down_workspace,
        put_policy,
        create_snapshot,
        restore_snapshot,
        remove_workspace,
        logs,
        processes,
        stat_file,
        list_dir,
        read_file,
        write_file,
        remove_file,
        mkdir,
        crate::exec::exec_ws,
        crate::sessions::list_sessions,
        crate::sessions::create_session,
        crate::sessions::get_session,
        crate::sessions::send_input,
        crate::sessions::stop_session,
        crate::sessions::events,
        crate::sessions::stream,
        crate::tokens::create_token,
        crate::tokens::list_tokens,
        crate::tokens::revoke_token,
        crate::images::list_images,
        crate::images::build_image,
        crate::images::remove_image,
        crate::backups::create_backup,
        crate::backups::list_backups,
        crate::backups::delete_backup,
        crate::backups::restore_backup,
        crate::backups::export_workspace,
        crate::state::create_state_backup,
        crate::state::list_state_backups,
        crate::backups::import_workspace,
        crate::remote::ssh_ws,
        crate::remote::port_ws,
        crate::security::get_egress,
        crate::security::put_egress,
        crate::security::egress_log,
        crate::security::list_secrets,
        crate::security::put_secret,
        crate::security::delete_secret,
        crate::security::audit_log,
        crate::security::login_claude,
        crate::security::login_codex,
        crate::security::logins,
        crate::review::review,
        crate::review::list_comments,
        crate::review::add_comment,
        crate::review::update_comment,
        crate::review::delete_comment,
        crate::review::send_review,
        crate::review::ports,
        crate::review::attach,
        crate::push::key,
        crate::push::list,
        crate::push::create,
        crate::push::update,
        crate::push::remove,
        crate::push::test,
        crate::tasks::list_tasks,
        crate::tasks::create_task,
        crate::tasks::get_task,
        crate::tasks::attempts,
        crate::tasks::cancel_task,
        crate::tasks::retry_task,
        crate::tasks::done_task,
        crate::tasks::pick_task,
        crate::sources::list_sources,
        crate::sources::create_source,
        crate::sources::remove_source,
        crate::sources::fire_trigger,
        crate::spend::get_budget,
        crate::spend::set_budget,
        crate::spend::remove_budget,
        openapi_doc,
    ),
    components(schemas(ExecClientMsg, ExecServerMsg))
)]
pub struct ApiDoc;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/host", get(host))
        .route("/v1/openapi.json", get(openapi_doc))
        .route(
            "/v1/workspaces",
            get(list_workspaces).post(create_workspace),
        )
        .route(
            "/v1/workspaces/{ws}",
            get(get_workspace).delete(remove_workspace),
        )
        .route("/v1/workspaces/{ws}/up", axum::routing::post(up_workspace))
        .route(
            "/v1/workspaces/{ws}/down",
            axum::routing::post(down_workspace),
        )
        .route("/v1/workspaces/{ws}/policy", axum::routing::put(put_policy))
        .route(
            "/v1/workspaces/{ws}/snapshots",
            axum::routing::post(create_snapshot),
        )
        .route(
            "/v1/workspaces/{ws}/snapshots/{name}/restore",
            axum::routing::post(restore_snapshot),
        )
        .route("/v1/workspaces/{ws}/logs", get(logs))
        .route("/v1/workspaces/{ws}/processes", get(processes))
        .route("/v1/workspaces/{ws}/exec", get(crate::exec::exec_ws))
        .route("/v1/workspaces/{ws}/ssh", get(crate::remote::ssh_ws))
        .route(
            "/v1/workspaces/{ws}/backups",
            axum::routing::post(crate::backups::create_backup),
        )
        .route("/v1/backups", get(crate::backups::list_backups))
        .route(
            "/v1/state/backups",
            get(crate::state::list_state_backups).post(crate::state::create_state_backup),
        )
        .route(
            "/v1/workspaces/{ws}/export",
            get(crate::backups::export_workspace),
        )
        .route(
            "/v1/workspaces/import",
            axum::routing::post(crate::backups::import_workspace)
                .layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route(
            "/v1/backups/{id}",
            axum::routing::delete(crate::backups::delete_backup),
        )
        .route(
            "/v1/backups/{id}/restore",
            axum::routing::post(crate::backups::restore_backup),
        )
        .route(
            "/v1/workspaces/{ws}/ports/{port}",
            get(crate::remote::port_ws),
        )
        .route(
            "/v1/workspaces/{ws}/egress",
            get(crate::security::get_egress).put(crate::security::put_egress),
        )
        .route(
            "/v1/workspaces/{ws}/egress/log",
            get(crate::security::egress_log),
        )
        .route("/v1/secrets", get(crate::security::list_secrets))
        .route(
            "/v1/secrets/{name}",
            axum::routing::put(crate::security::put_secret).delete(crate::security::delete_secret),
        )
        .route("/v1/audit", get(crate::security::audit_log))
        .route("/v1/logins", get(crate::security::logins))
        .route(
            "/v1/logins/claude",
            axum::routing::put(crate::security::login_claude),
        )
        .route(
            "/v1/logins/codex",
            axum::routing::put(crate::security::login_codex),
        )
        .route("/v1/workspaces/{ws}/files/stat", get(stat_file))
        .route("/v1/workspaces/{ws}/files/list", get(list_dir))
        .route(
            "/v1/workspaces/{ws}/files/mkdir",
            axum::routing::post(mkdir),
        )
        .route(
            "/v1/workspaces/{ws}/files/content",
            get(read_file)
                .put(write_file)
                .delete(remove_file)
                .layer(DefaultBodyLimit::max(MAX_FILE as usize)),
        )
        .route(
            "/v1/workspaces/{ws}/sessions",
            axum::routing::post(crate::sessions::create_session),
        )
        .route("/v1/sessions", get(crate::sessions::list_sessions))
        .route("/v1/sessions/{id}", get(crate::sessions::get_session))
        .route(
            "/v1/sessions/{id}/input",
            axum::routing::post(crate::sessions::send_input),
        )
        .route(
            "/v1/sessions/{id}/stop",
            axum::routing::post(crate::sessions::stop_session),
        )
        .route("/v1/sessions/{id}/events", get(crate::sessions::events))
        .route("/v1/sessions/{id}/stream", get(crate::sessions::stream))
        .route(
            "/v1/tokens",
            get(crate::tokens::list_tokens).post(crate::tokens::create_token),
        )
        .route(
            "/v1/tokens/{token}",
            axum::routing::delete(crate::tokens::revoke_token),
        )
        .route("/v1/workspaces/{ws}/review", get(crate::review::review))
        .route(
            "/v1/workspaces/{ws}/review/send",
            axum::routing::post(crate::review::send_review),
        )
        .route(
            "/v1/workspaces/{ws}/comments",
            get(crate::review::list_comments).post(crate::review::add_comment),
        )
        .route(
            "/v1/workspaces/{ws}/comments/{id}",
            axum::routing::patch(crate::review::update_comment)
                .delete(crate::review::delete_comment),
        )
        .route("/v1/workspaces/{ws}/ports", get(crate::review::ports))
        .route(
            "/v1/sessions/{id}/attachments",
            axum::routing::post(crate::review::attach)
                .layer(DefaultBodyLimit::max(kraal_engine::MAX_ATTACHMENT + 1024)),
        )
        .route("/v1/push/key", get(crate::push::key))
        .route(
            "/v1/push/subscriptions",
            get(crate::push::list).post(crate::push::create),
        )
        .route(
            "/v1/push/subscriptions/{id}",
            axum::routing::put(crate::push::update).delete(crate::push::remove),
        )
        .route(
            "/v1/push/subscriptions/{id}/test",
            axum::routing::post(crate::push::test),
        )
        .route(
            "/v1/tasks",
            get(crate::tasks::list_tasks).post(crate::tasks::create_task),
        )
        .route("/v1/tasks/{id}", get(crate::tasks::get_task))
        .route("/v1/tasks/{id}/attempts", get(crate::tasks::attempts))
        .route(
            "/v1/tasks/{id}/cancel",
            axum::routing::post(crate::tasks::cancel_task),
        )
        .route(
            "/v1/tasks/{id}/retry",
            axum::routing::post(crate::tasks::retry_task),
        )
        .route(
            "/v1/tasks/{id}/done",
            axum::routing::post(crate::tasks::done_task),
        )
        .route(
            "/v1/tasks/{id}/pick",
            axum::routing::post(crate::tasks::pick_task),
        )
        .route(
            "/v1/task-sources",
            get(crate::sources::list_sources).post(crate::sources::create_source),
        )
        .route(
            "/v1/task-sources/{id}",
            axum::routing::delete(crate::sources::remove_source),
        )
        .route(
            "/v1/budget",
            get(crate::spend::get_budget)
                .put(crate::spend::set_budget)
                .delete(crate::spend::remove_budget),
        )
        .route("/v1/images", get(crate::images::list_images))
        .route(
            "/v1/images/build",
            axum::routing::post(crate::images::build_image),
        )
        .route(
            "/v1/images/{name}",
            axum::routing::delete(crate::images::remove_image),
        )
        .fallback(|| async { HttpError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
}

/// Largest file the API reads or writes in one request.
const MAX_FILE: u64 = 256 * 1024 * 1024;

pub fn to_api(engine: &std::sync::Arc<kraal_engine::Engine>, r: &WorkspaceRecord) -> Workspace {
    Workspace {
        ports: engine
            .ports(&r.id)
            .into_iter()
            .map(|f| kraal_api::ForwardedPort {
                port: f.port,
                address: f.host.to_string(),
            })
            .collect(),
        id: r.id.to_string(),
        name: r.name.to_string(),
        state: r.state,
        desired: r.desired,
        backend: r.backend,
        source: r.source.clone(),
        resources: r.resources,
        address: if r.state == WorkspaceState::Running {
            r.guest_addr.clone()
        } else {
            None
        },
        reason: r.reason.clone(),
        persistent: r.persistent,
        mounts: r.mounts.clone(),
        egress: r.egress.iter().map(ToString::to_string).collect(),
        git: r.git.clone(),
        created_at: r.created_at.clone(),
        updated_at: r.updated_at.clone(),
        image: r.image.clone(),
        policy: engine.effective_policy(r),
        own_policy: r.policy,
        idle_secs: engine.idle_for(r).map(|d| d.as_secs()),
        last_backup_at: r.last_backup_at.clone(),
        restoring: r.restoring.clone(),
    }
}

#[utoipa::path(put, path = "/v1/workspaces/{ws}/policy", request_body = kraal_core::Policy,
    params(("ws" = String, Path, description = "Workspace name or id")),
    responses((status = 200, body = Workspace), (status = 400, body = ApiError), (status = 404, body = ApiError)))]
pub async fn put_policy(
    State(s): State<AppState>,
    actor: Option<axum::Extension<crate::security::Actor>>,
    Path(ws): Path<String>,
    body: Result<Json<kraal_core::Policy>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Workspace>, HttpError> {
    let Json(policy) = body.map_err(|e| HttpError::bad_request(e.body_text()))?;
    let r = s.engine.set_policy(&ws, policy)?;
    crate::security::audit(
        &s,
        &crate::security::actor_of(actor),
        "policy.set",
        r.name.as_str(),
        &serde_json::to_string(&policy).unwrap_or_default(),
    );
    Ok(Json(to_api(&s.engine, &r)))
}

/// The host of an `https://` or `http://` git URL (with its port when not the default).
fn git_url_host(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))?;
    let authority = rest.split('/').next()?;
    let hostport = authority.rsplit('@').next()?;
    (!hostport.is_empty()).then(|| hostport.to_owned())
}

/// Waits for an operation when asked to, turning its failure into an error response.
async fn settle(
    engine: &std::sync::Arc<kraal_engine::Engine>,
    p: Pending,
    wait: bool,
    ok: StatusCode,
) -> Result<(StatusCode, Json<Workspace>), HttpError> {
    if !wait {
        return Ok((StatusCode::ACCEPTED, Json(to_api(engine, &p.record))));
    }
    match p.done.await {
        Ok(Ok(rec)) => Ok((ok, Json(to_api(engine, &rec)))),
        Ok(Err(reason)) => Err(HttpError::new(
            StatusCode::BAD_GATEWAY,
            "backend_error",
            reason,
        )),
        Err(e) => Err(HttpError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("operation task: {e}"),
        )),
    }
}

#[utoipa::path(get, path = "/v1/status", responses((status = 200, body = Status)))]
async fn status(State(s): State<AppState>) -> Result<Json<Status>, HttpError> {
    let all = s.engine.list()?;
    Ok(Json(Status {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        backend: s.engine.backend_kind(),
        data_dir: s.data_dir.clone(),
        web_url: s.web_url.clone(),
        uptime_secs: s.engine.uptime().as_secs(),
        workspaces: all.len() as u64,
        running: all
            .iter()
            .filter(|w| w.state == WorkspaceState::Running)
            .count() as u64,
    }))
}

#[utoipa::path(get, path = "/v1/host", responses((status = 200, body = HostReport)))]
async fn host(State(s): State<AppState>) -> Json<HostReport> {
    Json((*s.host).clone())
}

#[utoipa::path(get, path = "/v1/openapi.json", responses((status = 200, description = "This document")))]
async fn openapi_doc() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        crate::openapi_json(),
    )
        .into_response()
}

#[utoipa::path(get, path = "/v1/workspaces", responses((status = 200, body = WorkspaceList)))]
async fn list_workspaces(State(s): State<AppState>) -> Result<Json<WorkspaceList>, HttpError> {
    Ok(Json(WorkspaceList {
        workspaces: s
            .engine
            .list()?
            .iter()
            .map(|r| to_api(&s.engine, r))
            .collect(),
    }))
}

#[utoipa::path(post, path = "/v1/workspaces", request_body = CreateWorkspace,
    responses((status = 201, body = Workspace), (status = 202, body = Workspace, description = "Accepted; poll for the state"),
        (status = 400, body = ApiError), (status = 409, body = ApiError)))]
async fn create_workspace(
    State(s): State<AppState>,
    body: Result<Json<CreateWorkspace>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<Workspace>), HttpError> {
    let Json(req) = body.map_err(|e| HttpError::bad_request(e.body_text()))?;
    let wait = req.wait;
    let p = s.engine.create(workspace_request(req)?)?;
    settle(&s.engine, p, wait, StatusCode::CREATED).await
}

/// Checks a workspace request and turns it into the engine's: the source's transport, and
/// the allowlist (the one given or the default, plus `allow`, plus the source's own git
/// host: a workspace can always fetch and push its repository).
pub(crate) fn workspace_request(req: CreateWorkspace) -> Result<CreateRequest, HttpError> {
    let source = match req.source {
        Source::Git { url, branch } => {
            Source::git(&url, branch).map_err(|e| HttpError::bad_request(e.to_string()))?
        }
        Source::Local { path } => {
            Source::local(path).map_err(|e| HttpError::bad_request(e.to_string()))?
        }
        Source::Empty => Source::Empty,
    };
    let mut rules = match &req.egress {
        Some(list) => list.clone(),
        None => kraal_core::DEFAULT_ALLOWLIST
            .iter()
            .map(|s| s.to_string())
            .collect(),
    };
    rules.extend(req.allow.iter().cloned());
    if let Source::Git { url, .. } = &source
        && let Some(host) = git_url_host(url)
    {
        rules.push(host);
    }
    let egress =
        Some(kraal_core::parse_rules(&rules).map_err(|e| HttpError::bad_request(e.to_string()))?);
    Ok(CreateRequest {
        name: req.name,
        source,
        resources: req.resources,
        image: req.image,
        persistent: req.persistent,
        mounts: req.mounts,
        egress,
        git: req.git,
        restoring: None,
        policy: req.policy,
    })
}

#[utoipa::path(get, path = "/v1/workspaces/{ws}", params(("ws" = String, Path, description = "Workspace name or id")),
    responses((status = 200, body = Workspace), (status = 404, body = ApiError)))]
async fn get_workspace(
    State(s): State<AppState>,
    Path(ws): Path<String>,
) -> Result<Json<Workspace>, HttpError> {
    Ok(Json(to_api(&s.engine, &s.engine.resolve(&ws)?)))
}

#[utoipa::path(post, path = "/v1/workspaces/{ws}/up", params(("ws" = String, Path), ("wait" = Option<bool>, Query)),
    responses((status = 200, body = Workspace), (status = 202, body = Workspace), (status = 404, body = ApiError)))]
async fn up_workspace(
    State(s): State<AppState>,
    Path(ws): Path<String>,
    Query(q): Query<WaitParam>,
) -> Result<(StatusCode, Json<Workspace>), HttpError> {
    settle(&s.engine, s.engine.up(&ws)?, q.wait, StatusCode::OK).await
}

#[utoipa::path(post, path = "/v1/workspaces/{ws}/down", params(("ws" = String, Path), ("wait" = Option<bool>, Query)),
    responses((status = 200, body = Workspace), (status = 202, body = Workspace), (status = 404, body = ApiError)))]
async fn down_workspace(
    State(s): State<AppState>,
    Path(ws): Path<String>,
    Query(q): Query<WaitParam>,
) -> Result<(StatusCode, Json<Workspace>), HttpError> {
    settle(&s.engine, s.engine.down(&ws)?, q.wait, StatusCode::OK).await
}

#[utoipa::path(post, path = "/v1/workspaces/{ws}/snapshots", params(("ws" = String, Path)),
    request_body = kraal_api::CreateSnapshot,
    responses((status = 201, body = Workspace), (status = 404, body = ApiError), (status = 409, body = ApiError), (status = 503, body = ApiError)))]
async fn create_snapshot(
    State(s): State<AppState>,
    Path(ws): Path<String>,
    Json(req): Json<kraal_api::CreateSnapshot>,
) -> Result<(StatusCode, Json<Workspace>), HttpError> {
    s.engine.snapshot(&ws, &req.name).await?;
    let rec = s.engine.resolve(&ws)?;
    Ok((StatusCode::CREATED, Json(to_api(&s.engine, &rec))))
}

#[utoipa::path(post, path = "/v1/workspaces/{ws}/snapshots/{name}/restore", params(("ws" = String, Path), ("name" = String, Path)),
    responses((status = 200, body = Workspace), (status = 404, body = ApiError), (status = 503, body = ApiError)))]
async fn restore_snapshot(
    State(s): State<AppState>,
    Path((ws, name)): Path<(String, String)>,
) -> Result<Json<Workspace>, HttpError> {
    let rec = s.engine.restore(&ws, &name).await?;
    Ok(Json(to_api(&s.engine, &rec)))
}

#[utoipa::path(delete, path = "/v1/workspaces/{ws}", params(("ws" = String, Path), ("wait" = Option<bool>, Query), ("force" = Option<bool>, Query, description = "Needed for a persistent workspace"),
        ("purge" = Option<bool>, Query, description = "Also delete its backups"),
        ("no_backup" = Option<bool>, Query, description = "Skip the final backup of a workspace that uses backups")),
    responses((status = 200, body = Workspace), (status = 202, body = Workspace), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn remove_workspace(
    State(s): State<AppState>,
    Path(ws): Path<String>,
    Query(q): Query<kraal_api::RemoveParams>,
) -> Result<(StatusCode, Json<Workspace>), HttpError> {
    let rec = s.engine.resolve(&ws)?;
    if q.purge {
        // The backups go first: if the store cannot be reached, nothing is removed.
        crate::backups::purge(&s, rec.id.as_str(), rec.name.as_str()).await?;
    } else if !q.no_backup
        && let Some(repo) = &s.backups
        && rec.restoring.is_none()
        && matches!(rec.state, WorkspaceState::Running | WorkspaceState::Stopped)
        && (rec.last_backup_at.is_some()
            || s.engine.effective_policy(&rec).backup_every().is_some())
    {
        // A workspace that uses backups keeps its last state as one.
        if let Err(e) = s.engine.backup(rec.id.as_str(), repo, false, |_| {}).await {
            return Err(HttpError::new(
                StatusCode::CONFLICT,
                "final_backup_failed",
                format!(
                    "workspace {} was not removed: its final backup failed: {}; remove it without one with `kraal rm --no-backup`",
                    rec.name,
                    chain(&e)
                ),
            ));
        }
    }
    settle(
        &s.engine,
        s.engine.remove_forced(&ws, q.force)?,
        q.wait,
        StatusCode::OK,
    )
    .await
}

#[utoipa::path(get, path = "/v1/workspaces/{ws}/logs", params(("ws" = String, Path)),
    responses((status = 200, body = Logs), (status = 404, body = ApiError)))]
async fn logs(State(s): State<AppState>, Path(ws): Path<String>) -> Result<Json<Logs>, HttpError> {
    let rec = s.engine.resolve(&ws)?;
    let events = s
        .engine
        .store()
        .events(&rec.id, 500)
        .map_err(kraal_engine::EngineError::from)?
        .into_iter()
        .map(|e| LogEvent {
            at: e.at,
            level: e.level,
            message: e.message,
        })
        .collect();
    let console = s
        .engine
        .backend()
        .console_log(&rec.id, 64 * 1024)
        .await
        .unwrap_or_else(|e| format!("(console unavailable: {})", chain(&e)));
    Ok(Json(Logs { events, console }))
}

#[utoipa::path(get, path = "/v1/workspaces/{ws}/processes", params(("ws" = String, Path)),
    responses((status = 200, body = ProcessList), (status = 409, body = ApiError)))]
async fn processes(
    State(s): State<AppState>,
    Path(ws): Path<String>,
) -> Result<Json<ProcessList>, HttpError> {
    let (rec, c) = s.engine.guest(&ws).await?;
    let list = c.processes().await.map_err(|e| guest_err(&rec, e))?;
    Ok(Json(ProcessList {
        processes: list
            .into_iter()
            .map(|p| Process {
                proc: p.proc,
                pid: p.pid,
                argv: p.argv,
                tty: p.tty,
                running: p.running,
                exit_code: p.exit_code,
                exit_signal: p.exit_signal,
                started_ms: p.started_ms,
            })
            .collect(),
    }))
}

pub fn guest_err(rec: &WorkspaceRecord, e: kraal_sandbox::GuestClientError) -> HttpError {
    kraal_engine::EngineError::Guest {
        workspace: rec.name.to_string(),
        source: e,
    }
    .into()
}

fn entry(i: kraal_protocol::FileInfo) -> FileEntry {
    FileEntry {
        path: i.path,
        name: i.name,
        kind: match i.file_type {
            kraal_protocol::FileType::File => FileKind::File,
            kraal_protocol::FileType::Dir => FileKind::Dir,
            kraal_protocol::FileType::Symlink => FileKind::Symlink,
            kraal_protocol::FileType::Other => FileKind::Other,
        },
        size: i.size,
        mode: i.mode,
        modified: i.modified,
        symlink_target: i.symlink_target,
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
struct PathQuery {
    /// Relative to /workspace, or absolute under it.
    path: String,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
struct WriteQuery {
    path: String,
    /// Octal permission bits, e.g. 644.
    #[serde(default)]
    mode: Option<String>,
    /// Create missing parent directories.
    #[serde(default)]
    parents: bool,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
struct RemoveQuery {
    path: String,
    #[serde(default)]
    recursive: bool,
}

#[utoipa::path(get, path = "/v1/workspaces/{ws}/files/stat", params(("ws" = String, Path), PathQuery),
    responses((status = 200, body = FileEntry), (status = 400, body = ApiError), (status = 404, body = ApiError)))]
async fn stat_file(
    State(s): State<AppState>,
    Path(ws): Path<String>,
    Query(q): Query<PathQuery>,
) -> Result<Json<FileEntry>, HttpError> {
    let (rec, c) = s.engine.guest(&ws).await?;
    Ok(Json(entry(
        c.stat(&q.path).await.map_err(|e| guest_err(&rec, e))?,
    )))
}

#[utoipa::path(get, path = "/v1/workspaces/{ws}/files/list", params(("ws" = String, Path), PathQuery),
    responses((status = 200, body = DirListing), (status = 400, body = ApiError), (status = 404, body = ApiError)))]
async fn list_dir(
    State(s): State<AppState>,
    Path(ws): Path<String>,
    Query(q): Query<PathQuery>,
) -> Result<Json<DirListing>, HttpError> {
    let (rec, c) = s.engine.guest(&ws).await?;
    let entries = c.list_dir(&q.path).await.map_err(|e| guest_err(&rec, e))?;
    Ok(Json(DirListing {
        path: q.path,
        entries: entries.into_iter().map(entry).collect(),
    }))
}

#[utoipa::path(get, path = "/v1/workspaces/{ws}/files/content", params(("ws" = String, Path), PathQuery),
    responses((status = 200, description = "File bytes", content_type = "application/octet-stream"), (status = 400, body = ApiError), (status = 404, body = ApiError)))]
async fn read_file(
    State(s): State<AppState>,
    Path(ws): Path<String>,
    Query(q): Query<PathQuery>,
) -> Result<Response, HttpError> {
    let (rec, c) = s.engine.guest(&ws).await?;
    let data = c
        .read_file(&q.path, MAX_FILE)
        .await
        .map_err(|e| guest_err(&rec, e))?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], data).into_response())
}

#[utoipa::path(put, path = "/v1/workspaces/{ws}/files/content", params(("ws" = String, Path), WriteQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 200, body = Written), (status = 400, body = ApiError)))]
async fn write_file(
    State(s): State<AppState>,
    Path(ws): Path<String>,
    Query(q): Query<WriteQuery>,
    body: Bytes,
) -> Result<Json<Written>, HttpError> {
    let mode = match &q.mode {
        Some(m) => Some(
            u32::from_str_radix(m, 8)
                .map_err(|_| HttpError::bad_request(format!("mode {m:?} is not octal")))?,
        ),
        None => None,
    };
    let (rec, c) = s.engine.guest(&ws).await?;
    let bytes = c
        .write_file(&q.path, &body, mode, q.parents)
        .await
        .map_err(|e| guest_err(&rec, e))?;
    Ok(Json(Written { bytes }))
}

#[utoipa::path(delete, path = "/v1/workspaces/{ws}/files/content", params(("ws" = String, Path), RemoveQuery),
    responses((status = 204), (status = 400, body = ApiError), (status = 404, body = ApiError)))]
async fn remove_file(
    State(s): State<AppState>,
    Path(ws): Path<String>,
    Query(q): Query<RemoveQuery>,
) -> Result<StatusCode, HttpError> {
    let (rec, c) = s.engine.guest(&ws).await?;
    c.remove(&q.path, q.recursive)
        .await
        .map_err(|e| guest_err(&rec, e))?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/workspaces/{ws}/files/mkdir", params(("ws" = String, Path)), request_body = FilePath,
    responses((status = 204), (status = 400, body = ApiError)))]
async fn mkdir(
    State(s): State<AppState>,
    Path(ws): Path<String>,
    body: Result<Json<FilePath>, axum::extract::rejection::JsonRejection>,
) -> Result<StatusCode, HttpError> {
    let Json(p) = body.map_err(|e| HttpError::bad_request(e.body_text()))?;
    let (rec, c) = s.engine.guest(&ws).await?;
    c.mkdir(&p.path, true)
        .await
        .map_err(|e| guest_err(&rec, e))?;
    Ok(StatusCode::NO_CONTENT)
}
