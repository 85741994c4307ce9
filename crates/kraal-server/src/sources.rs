//! `/v1/task-sources`: labelled issues, schedules and triggers that queue tasks on their
//! own; and the two doors that sit outside the API token, each with its own proof: the
//! GitHub webhook (`POST /hooks/github/{id}`, HMAC-signed) and the HTTP trigger
//! (`POST /v1/triggers/{id}`, the trigger's own bearer token).

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use kraal_api::{ApiError, CreateTaskSource, FireTrigger, TaskList, TaskSource, TaskSourceList};
use kraal_tasks::{NewSource, NewSourceKind, SourceInfo, SourceKind};

use crate::AppState;
use crate::error::HttpError;
use crate::security::{Actor, actor_of, audit};
use crate::tasks::{LIVE, queue_info, scheduler, to_api};

/// Largest webhook delivery or trigger body read.
const MAX_HOOK_BODY: usize = 1024 * 1024;

/// The routes that carry their own proof instead of the API token.
pub fn public_routes() -> Router<AppState> {
    Router::new()
        .route(
            "/hooks/github/{id}",
            axum::routing::post(github_hook).layer(DefaultBodyLimit::max(MAX_HOOK_BODY)),
        )
        .route(
            "/v1/triggers/{id}",
            axum::routing::post(fire_trigger).layer(DefaultBodyLimit::max(MAX_HOOK_BODY)),
        )
}

fn to_api_source(s: &SourceInfo, token: Option<String>) -> TaskSource {
    let (detail, webhook_path) = match &s.kind {
        SourceKind::Issues {
            host,
            repo,
            label,
            webhook_secret,
        } => (
            format!(
                "open issues of {host}/{repo} labelled {label:?}{}",
                if webhook_secret.is_some() {
                    " (polled, and at once on a signed webhook)"
                } else {
                    " (polled)"
                }
            ),
            webhook_secret
                .is_some()
                .then(|| format!("/hooks/github/{}", s.id)),
        ),
        SourceKind::Schedule {
            every_secs: Some(n),
            ..
        } => (format!("every {}", every_words(*n)), None),
        SourceKind::Schedule { cron, .. } => (
            format!("cron {} (UTC)", cron.as_deref().unwrap_or("?")),
            None,
        ),
        SourceKind::Trigger { .. } => (format!("POST /v1/triggers/{} with its token", s.id), None),
    };
    TaskSource {
        id: s.id.clone(),
        kind: s.kind.name().to_owned(),
        detail,
        prompt: s.template.prompt.clone(),
        repo: s.template.spec.repo_key(),
        created_at: s.created_at.clone(),
        last_run: s.last_run.clone(),
        next_run: s.next_run.clone(),
        last_error: s.last_error.clone(),
        tasks_made: s.tasks_made,
        webhook_path,
        token,
    }
}

/// `86400` → `1d`, `5400` → `1h30m`.
fn every_words(secs: u64) -> String {
    let mut out = String::new();
    let mut left = secs;
    for (unit, n) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
        if left >= n {
            out.push_str(&format!("{}{unit}", left / n));
            left %= n;
        }
    }
    if out.is_empty() { "0s".into() } else { out }
}

#[utoipa::path(get, path = "/v1/task-sources",
    responses((status = 200, body = TaskSourceList)))]
pub async fn list_sources(State(s): State<AppState>) -> Result<Json<TaskSourceList>, HttpError> {
    let all = scheduler(&s)?.sources()?;
    Ok(Json(TaskSourceList {
        sources: all.iter().map(|x| to_api_source(x, None)).collect(),
    }))
}

#[utoipa::path(post, path = "/v1/task-sources", request_body = CreateTaskSource,
    responses((status = 201, body = TaskSource, description = "The source (a trigger's token only here)"),
        (status = 400, body = ApiError)))]
pub async fn create_source(
    State(s): State<AppState>,
    actor: Option<axum::Extension<Actor>>,
    body: Result<Json<CreateTaskSource>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<TaskSource>), HttpError> {
    let Json(mut req) = body.map_err(|e| HttpError::bad_request(e.body_text()))?;
    let actor = actor_of(actor);
    let sched = scheduler(&s)?;
    if req.kind == "issues" {
        // An issue's work goes back to it as a pull request unless asked otherwise.
        req.task.pull_request.get_or_insert(true);
    }
    if req.task.from_issue.is_some() {
        return Err(HttpError::bad_request(
            "a source makes its own tasks; `from_issue` is for one task (`kraal task add --from-issue`)",
        ));
    }
    if req.task.checklist.is_some() {
        return Err(HttpError::bad_request(
            "a source's task cannot read a checklist (queue the checklist once with `kraal task add --checklist`)",
        ));
    }
    let only = |field: &str, kinds: &str, set: bool| {
        if set {
            Err(HttpError::bad_request(format!(
                "`{field}` is for {kinds} sources"
            )))
        } else {
            Ok(())
        }
    };
    let kind = match req.kind.as_str() {
        "issues" => {
            only("every", "schedule", req.every.is_some())?;
            only("cron", "schedule", req.cron.is_some())?;
            if req.task.repo.is_none() {
                return Err(HttpError::bad_request(
                    "an issues source needs the task's `repo` (OWNER/REPO on a git host)",
                ));
            }
            let label = req
                .label
                .clone()
                .ok_or_else(|| HttpError::bad_request("an issues source needs a `label`"))?;
            NewSourceKind::Issues {
                label,
                webhook_secret: req.webhook_secret.clone(),
            }
        }
        "schedule" => {
            only("label", "issues", req.label.is_some())?;
            only("webhook_secret", "issues", req.webhook_secret.is_some())?;
            let every_secs = match &req.every {
                Some(e) => {
                    let n = kraal_core::parse_duration_secs("every", e)
                        .map_err(|err| HttpError::bad_request(err.to_string()))?;
                    if n == 0 {
                        return Err(HttpError::bad_request(format!(
                            "every {e:?} never fires; give an interval such as 1d or 6h"
                        )));
                    }
                    Some(n)
                }
                None => None,
            };
            NewSourceKind::Schedule {
                every_secs,
                cron: req.cron.clone(),
            }
        }
        "trigger" => {
            only("label", "issues", req.label.is_some())?;
            only("every", "schedule", req.every.is_some())?;
            only("cron", "schedule", req.cron.is_some())?;
            NewSourceKind::Trigger
        }
        other => {
            return Err(HttpError::bad_request(format!(
                "unknown source kind {other:?}; one of issues, schedule, trigger"
            )));
        }
    };
    let template = crate::tasks::new_task(&s, req.task, &actor).await?;
    let (info, token) = sched.add_source(NewSource { kind, template }).await?;
    audit(&s, &actor, "task-source.add", &info.id, info.kind.name());
    Ok((StatusCode::CREATED, Json(to_api_source(&info, token))))
}

#[utoipa::path(delete, path = "/v1/task-sources/{id}", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = ApiError)))]
pub async fn remove_source(
    State(s): State<AppState>,
    actor: Option<axum::Extension<Actor>>,
    Path(id): Path<String>,
) -> Result<StatusCode, HttpError> {
    scheduler(&s)?.remove_source(&id)?;
    audit(&s, &actor_of(actor), "task-source.remove", &id, "");
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/triggers/{id}", request_body = FireTrigger,
    params(("id" = String, Path, description = "The trigger source")),
    responses((status = 201, body = TaskList, description = "The tasks it queued"),
        (status = 401, body = ApiError, description = "No trigger with this id and token")))]
pub async fn fire_trigger(
    State(s): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<TaskList>), HttpError> {
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            HttpError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a trigger needs `Authorization: Bearer <its token>`",
            )
        })?;
    let req: FireTrigger = if body.iter().all(u8::is_ascii_whitespace) {
        FireTrigger::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            HttpError::bad_request(format!("the trigger's body is not {{\"text\": …}}: {e}"))
        })?
    };
    let sched = scheduler(&s)?;
    let fired = sched.fire_trigger(&id, token, req.text.as_deref()).await?;
    let actor = format!("trigger:{id}");
    for t in &fired.tasks {
        audit(&s, &actor, "task.add", &t.id, &t.title);
    }
    let all = sched.list(LIVE)?;
    Ok((
        StatusCode::CREATED,
        Json(TaskList {
            tasks: to_api(&s, &fired.tasks),
            queue: queue_info(sched, &all),
        }),
    ))
}

/// A GitHub webhook delivery for an issues source: checked against the source's secret
/// (`X-Hub-Signature-256`) before anything in it is read.
pub async fn github_hook(
    State(s): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<TaskList>), HttpError> {
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    let event = header("x-github-event").unwrap_or("");
    let signature = header("x-hub-signature-256");
    let sched = scheduler(&s)?;
    let made = match sched.webhook(&id, event, signature, &body).await {
        Ok(m) => m,
        Err(e) => {
            if matches!(
                e,
                kraal_tasks::TaskError::Denied | kraal_tasks::TaskError::BadSignature(_)
            ) {
                audit(
                    &s,
                    &format!("webhook:{id}"),
                    "webhook.refused",
                    &id,
                    &e.to_string(),
                );
            }
            return Err(e.into());
        }
    };
    for t in &made {
        audit(&s, &format!("webhook:{id}"), "task.add", &t.id, &t.title);
    }
    let all = sched.list(LIVE)?;
    let status = if made.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((
        status,
        Json(TaskList {
            tasks: to_api(&s, &made),
            queue: queue_info(sched, &all),
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::every_words;

    #[test]
    fn intervals_read_back_in_words() {
        assert_eq!(every_words(86_400), "1d");
        assert_eq!(every_words(5400), "1h30m");
        assert_eq!(every_words(90), "1m30s");
    }
}
