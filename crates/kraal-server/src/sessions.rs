//! Session routes: create, list, talk to, stop; the event log as pages and as a
//! server-sent-event stream that resumes from `Last-Event-ID` without gaps or duplicates.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use kraal_api::*;
use kraal_core::{AgentKind, AgentSpec, SessionEvent, SessionId, SessionInput};
use kraal_engine::NewSession;
use kraal_metrics::Reader;
use kraal_store::SessionRecord;

use crate::AppState;
use crate::error::HttpError;

/// Largest page of events.
const PAGE: u32 = 1000;

pub fn to_api(s: &SessionRecord, workspace: &str) -> Session {
    Session {
        id: s.id.to_string(),
        workspace: workspace.to_owned(),
        workspace_id: s.workspace_id.to_string(),
        agent: s.agent,
        title: s.title.clone(),
        state: s.state,
        reason: s.reason.clone(),
        agent_session: s.agent_session.clone(),
        last_seq: s.last_seq,
        model: s.spec.model.clone(),
        permissions: s.spec.permissions,
        usage: SessionUsage {
            input_tokens: s.input_tokens,
            output_tokens: s.output_tokens,
            cost_usd: s.cost_usd,
        },
        created_at: s.created_at.clone(),
        updated_at: s.updated_at.clone(),
    }
}

/// Workspace names by id, for labelling sessions.
fn names(s: &AppState) -> Result<HashMap<String, String>, HttpError> {
    Ok(s.engine
        .list()?
        .into_iter()
        .map(|w| (w.id.to_string(), w.name.to_string()))
        .collect())
}

fn one(s: &AppState, rec: &SessionRecord) -> Result<Session, HttpError> {
    let names = names(s)?;
    let ws = names
        .get(rec.workspace_id.as_str())
        .cloned()
        .unwrap_or_else(|| rec.workspace_id.to_string());
    Ok(to_api(rec, &ws))
}

#[utoipa::path(get, path = "/v1/sessions", params(("workspace" = Option<String>, Query, description = "Workspace name or id")),
    responses((status = 200, body = SessionList), (status = 404, body = ApiError)))]
pub async fn list_sessions(
    State(s): State<AppState>,
    Query(q): Query<SessionsQuery>,
) -> Result<Json<SessionList>, HttpError> {
    let names = names(&s)?;
    let sessions = s
        .engine
        .sessions(q.workspace.as_deref())?
        .iter()
        .map(|r| {
            let ws = names
                .get(r.workspace_id.as_str())
                .cloned()
                .unwrap_or_default();
            to_api(r, &ws)
        })
        .collect();
    Ok(Json(SessionList { sessions }))
}

#[utoipa::path(post, path = "/v1/workspaces/{ws}/sessions", params(("ws" = String, Path)), request_body = CreateSession,
    responses((status = 201, body = Session), (status = 400, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub async fn create_session(
    State(s): State<AppState>,
    Path(ws): Path<String>,
    body: Result<Json<CreateSession>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<Session>), HttpError> {
    let Json(req) = body.map_err(|e| HttpError::bad_request(e.body_text()))?;
    let spec = agent_spec(&req);
    let rec = s
        .engine
        .create_session(
            &ws,
            NewSession {
                spec,
                message: req.message,
            },
        )
        .await?;
    Ok((StatusCode::CREATED, Json(one(&s, &rec)?)))
}

/// The agent and how to run it, from a session request.
pub(crate) fn agent_spec(req: &CreateSession) -> AgentSpec {
    let mut spec = AgentSpec::new(req.agent.unwrap_or(AgentKind::Claude));
    spec.model = req.model.clone();
    spec.system_prompt = req.system_prompt.clone();
    if let Some(p) = req.permissions {
        spec.permissions = p;
    }
    spec.binary = req.binary.clone();
    spec.args = req.args.clone();
    spec.env = req.env.clone().into_iter().collect();
    spec.cwd = req.cwd.clone();
    if let Some(w) = req.watchdog {
        spec.watchdog = w;
    }
    spec.transcript = req.transcript;
    spec
}

#[utoipa::path(get, path = "/v1/sessions/{id}", params(("id" = String, Path, description = "Session id or a unique prefix")),
    responses((status = 200, body = Session), (status = 404, body = ApiError)))]
pub async fn get_session(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Session>, HttpError> {
    let rec = s.engine.session(&id)?;
    Ok(Json(one(&s, &rec)?))
}

#[utoipa::path(post, path = "/v1/sessions/{id}/input", params(("id" = String, Path)), request_body = SessionInput,
    responses((status = 202, body = Session, description = "Delivered to the agent (queued or steered in while it works)"),
        (status = 400, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub async fn send_input(
    State(s): State<AppState>,
    Path(id): Path<String>,
    body: Result<Json<SessionInput>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<Session>), HttpError> {
    let Json(input) = body.map_err(|e| HttpError::bad_request(e.body_text()))?;
    let rec = s.engine.send_input(&id, input).await?;
    Ok((StatusCode::ACCEPTED, Json(one(&s, &rec)?)))
}

#[utoipa::path(post, path = "/v1/sessions/{id}/stop", params(("id" = String, Path)),
    responses((status = 202, body = Session), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub async fn stop_session(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Session>), HttpError> {
    let rec = s.engine.stop_session(&id).await?;
    Ok((StatusCode::ACCEPTED, Json(one(&s, &rec)?)))
}

#[utoipa::path(get, path = "/v1/sessions/{id}/events", params(("id" = String, Path), EventsQuery),
    responses((status = 200, body = EventPage), (status = 404, body = ApiError)))]
pub async fn events(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<EventsQuery>,
) -> Result<Json<EventPage>, HttpError> {
    let rec = s.engine.session(&id)?;
    let limit = q.limit.unwrap_or(PAGE).clamp(1, PAGE) as usize;
    let events = s.engine.session_events(&rec.id, q.after, limit)?;
    Ok(Json(EventPage {
        events,
        last_seq: rec.last_seq,
        state: rec.state,
    }))
}

/// The resume point: the larger of `?after=` and the `Last-Event-ID` header a reconnecting
/// `EventSource` sends.
fn resume_point(q: &EventsQuery, headers: &HeaderMap) -> Result<u64, HttpError> {
    let header = match headers.get("last-event-id") {
        None => 0,
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or_else(|| {
                HttpError::bad_request("Last-Event-ID must be an event sequence number")
            })?,
    };
    Ok(q.after.max(header))
}

struct Tail {
    state: AppState,
    id: SessionId,
    after: u64,
    changed: tokio::sync::watch::Receiver<u64>,
}

/// How long an idle stream waits before it sends a comment.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

#[utoipa::path(get, path = "/v1/sessions/{id}/stream", params(("id" = String, Path), EventsQuery,
        ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this event")),
    responses((status = 200, description = "text/event-stream of SessionEvent JSON, each with `id:` its sequence number", body = SessionEvent),
        (status = 404, body = ApiError)))]
pub async fn stream(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<EventsQuery>,
    headers: HeaderMap,
) -> Result<axum::response::Response, HttpError> {
    let rec = s.engine.session(&id)?;
    let after = resume_point(&q, &headers)?;
    // Subscribe before the first read, so nothing stored in between is missed.
    let changed = s.engine.watch_session(&rec.id);
    let tail = Tail {
        state: s,
        id: rec.id,
        after,
        changed,
    };
    // Every event that is there when the reader wakes goes out in one chunk of frames
    // encoded once when it was mirrored: per subscriber, one write per wake-up.
    let stream = futures::stream::unfold(tail, |mut t| async move {
        loop {
            let newest = *t.changed.borrow_and_update();
            t.state
                .engine
                .metrics()
                .subscriber_lag(newest.saturating_sub(t.after));
            match t.state.engine.live_events(&t.id, t.after, PAGE as usize) {
                Ok(v) if !v.is_empty() => {
                    let mut chunk =
                        bytes::BytesMut::with_capacity(v.iter().map(|e| e.sse.len()).sum());
                    for e in &v {
                        chunk.extend_from_slice(&e.sse);
                    }
                    t.after = v.last().map_or(t.after, |e| e.seq());
                    t.state
                        .engine
                        .metrics()
                        .events_delivered(Reader::Api, v.len() as u64);
                    return Some((Ok::<_, Infallible>(chunk.freeze()), t));
                }
                Ok(_) => match tokio::time::timeout(KEEP_ALIVE, t.changed.changed()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return None,
                    // A comment now and then, so proxies keep an idle stream open.
                    Err(_) => return Some((Ok(bytes::Bytes::from_static(b":\n\n")), t)),
                },
                Err(e) => {
                    tracing::warn!(session = %t.id, "event stream: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    });
    Ok(crate::sse::response(stream))
}
