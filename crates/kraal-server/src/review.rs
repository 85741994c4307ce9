//! API routes for reviewing a workspace's changes (the diff, line comments, sending them
//! to an agent), its live ports, and uploading attachments for a message.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use kraal_api::*;
use kraal_core::{AgentKind, AgentSpec, Attachment};
use kraal_engine::{DiffFile, LineKind, NewComment, ReviewTarget, Side, Upload};
use kraal_store::CommentRecord;
use serde::Deserialize;

use crate::AppState;
use crate::error::HttpError;
use crate::security::{Actor, actor_of};

pub fn comment_to_api(c: &CommentRecord) -> ReviewComment {
    ReviewComment {
        id: c.id.clone(),
        path: c.path.clone(),
        line: c.line,
        side: c.side.clone(),
        body: c.body.clone(),
        excerpt: c.excerpt.clone(),
        author: c.author.clone(),
        created_at: c.created_at.clone(),
        resolved: c.resolved_at.is_some(),
        sent_to: c.sent_to.clone(),
        sent_at: c.sent_at.clone(),
    }
}

fn file_to_api(f: DiffFile) -> ReviewFile {
    ReviewFile {
        path: f.path,
        old_path: f.old_path,
        status: f.status.to_owned(),
        binary: f.binary,
        hunks: f
            .hunks
            .into_iter()
            .map(|h| ReviewHunk {
                header: h.header,
                lines: h
                    .lines
                    .into_iter()
                    .map(|l| ReviewLine {
                        kind: match l.kind {
                            LineKind::Added => "added",
                            LineKind::Removed => "removed",
                            LineKind::Context => "context",
                        }
                        .to_owned(),
                        old: l.old,
                        new: l.new,
                        text: l.text,
                    })
                    .collect(),
            })
            .collect(),
    }
}

#[utoipa::path(get, path = "/v1/workspaces/{ws}/review", params(("ws" = String, Path)),
    responses((status = 200, body = Review), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub async fn review(
    State(s): State<AppState>,
    Path(ws): Path<String>,
) -> Result<Json<Review>, HttpError> {
    let rec = s.engine.resolve(&ws)?;
    let diff = s.engine.review_diff(rec.id.as_str()).await?;
    let comments = s.engine.comments(rec.id.as_str())?;
    let (files, error) = match diff {
        Ok(f) => (f.into_iter().map(file_to_api).collect(), None),
        Err(why) => (Vec::new(), Some(why)),
    };
    Ok(Json(Review {
        workspace: rec.name.to_string(),
        files,
        comments: comments.iter().map(comment_to_api).collect(),
        error,
    }))
}

#[utoipa::path(get, path = "/v1/workspaces/{ws}/comments", params(("ws" = String, Path)),
    responses((status = 200, body = CommentList), (status = 404, body = ApiError)))]
pub async fn list_comments(
    State(s): State<AppState>,
    Path(ws): Path<String>,
) -> Result<Json<CommentList>, HttpError> {
    Ok(Json(CommentList {
        comments: s.engine.comments(&ws)?.iter().map(comment_to_api).collect(),
    }))
}

#[utoipa::path(post, path = "/v1/workspaces/{ws}/comments", params(("ws" = String, Path)), request_body = CreateComment,
    responses((status = 201, body = ReviewComment), (status = 400, body = ApiError), (status = 404, body = ApiError)))]
pub async fn add_comment(
    State(s): State<AppState>,
    actor: Option<axum::Extension<Actor>>,
    Path(ws): Path<String>,
    body: Result<Json<CreateComment>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<ReviewComment>), HttpError> {
    let Json(c) = body.map_err(|e| HttpError::bad_request(e.body_text()))?;
    let side = Side::parse(c.side.as_deref().unwrap_or("new"))?;
    let r = s
        .engine
        .add_comment(
            &ws,
            NewComment {
                path: c.path,
                line: c.line,
                side,
                body: c.body,
            },
            &actor_of(actor),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(comment_to_api(&r))))
}

#[utoipa::path(patch, path = "/v1/workspaces/{ws}/comments/{id}", params(("ws" = String, Path), ("id" = String, Path)),
    request_body = UpdateComment, responses((status = 200, body = ReviewComment), (status = 404, body = ApiError)))]
pub async fn update_comment(
    State(s): State<AppState>,
    Path((ws, id)): Path<(String, String)>,
    body: Result<Json<UpdateComment>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<ReviewComment>, HttpError> {
    let Json(u) = body.map_err(|e| HttpError::bad_request(e.body_text()))?;
    Ok(Json(comment_to_api(
        &s.engine.resolve_comment(&ws, &id, u.resolved)?,
    )))
}

#[utoipa::path(delete, path = "/v1/workspaces/{ws}/comments/{id}", params(("ws" = String, Path), ("id" = String, Path)),
    responses((status = 204), (status = 404, body = ApiError)))]
pub async fn delete_comment(
    State(s): State<AppState>,
    Path((ws, id)): Path<(String, String)>,
) -> Result<StatusCode, HttpError> {
    s.engine.delete_comment(&ws, &id)?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/workspaces/{ws}/review/send", params(("ws" = String, Path)), request_body = SendReview,
    responses((status = 200, body = SentReview), (status = 400, body = ApiError), (status = 404, body = ApiError)))]
pub async fn send_review(
    State(s): State<AppState>,
    Path(ws): Path<String>,
    body: Result<Json<SendReview>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<SentReview>, HttpError> {
    let Json(r) = body.map_err(|e| HttpError::bad_request(e.body_text()))?;
    let target = match r.session {
        Some(sid) => ReviewTarget::Session(sid),
        None => ReviewTarget::New(AgentSpec::new(r.agent.unwrap_or(AgentKind::Claude))),
    };
    let (session, sent) = s.engine.send_review(&ws, &r.comments, target).await?;
    Ok(Json(SentReview {
        session: session.id.to_string(),
        comments: sent.iter().map(comment_to_api).collect(),
    }))
}

#[utoipa::path(get, path = "/v1/workspaces/{ws}/ports", params(("ws" = String, Path)),
    responses((status = 200, body = LivePortList), (status = 409, body = ApiError)))]
pub async fn ports(
    State(s): State<AppState>,
    Path(ws): Path<String>,
    headers: HeaderMap,
) -> Result<Json<LivePortList>, HttpError> {
    let rec = s.engine.resolve(&ws)?;
    let live = s.engine.live_ports(rec.id.as_str()).await?;
    let name = rec.name.to_string();
    Ok(Json(LivePortList {
        ports: live
            .into_iter()
            .map(|p| LivePortInfo {
                preview_path: format!("/p/{name}/{}/", p.port),
                preview_origin: s
                    .preview_domain
                    .as_ref()
                    .map(|d| crate::preview::origin_url(&headers, p.port, &name, d) + "/"),
                port: p.port,
                addresses: p.addresses,
                process: p.process,
                declared: p.declared,
                listening: p.listening,
            })
            .collect(),
    }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct AttachQuery {
    /// The file's name.
    name: String,
}

#[utoipa::path(post, path = "/v1/sessions/{id}/attachments", params(("id" = String, Path), AttachQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 201, body = Attachment, description = "Stored in the workspace; send it with a message"),
        (status = 400, body = ApiError), (status = 413, body = ApiError)))]
pub async fn attach(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<AttachQuery>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<(StatusCode, Json<Attachment>), HttpError> {
    let body = body.map_err(|e| {
        HttpError::new(
            e.status(),
            "too_large",
            format!(
                "the attachment is larger than {} MiB ({})",
                kraal_engine::MAX_ATTACHMENT >> 20,
                e.body_text()
            ),
        )
    })?;
    let session = s.engine.session(&id)?;
    let media_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut stored = s
        .engine
        .store_attachments(
            session.workspace_id.as_str(),
            vec![Upload {
                name: q.name,
                media_type,
                data: body.to_vec(),
            }],
        )
        .await?;
    Ok((StatusCode::CREATED, Json(stored.remove(0))))
}
