//! `/v1/tasks`: queue prompts to run in workspaces of their own, list the board, cancel,
//! retry, accept, and compare and pick among a best-of-N task's attempts.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use kraal_api::{
    ApiError, CheckResult, CreateTask, DiffStat, QueueInfo, SessionUsage, Task, TaskList, TaskQuery,
};
use kraal_core::{Source, TaskSpec, TaskState};
use kraal_store::TaskRecord;
use kraal_tasks::{NewTask, Scheduler, TaskError};

use crate::AppState;
use crate::error::{HttpError, status_for};
use crate::security::{Actor, actor_of, audit};

impl From<TaskError> for HttpError {
    fn from(e: TaskError) -> Self {
        match e {
            TaskError::Engine(e) => (*e).into(),
            TaskError::Store(e) => {
                tracing::error!("store: {}", kraal_engine::chain(&e));
                HttpError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error; see the daemon log",
                )
            }
            TaskError::Invalid(_) | TaskError::Ambiguous { .. } => {
                HttpError::bad_request(e.to_string())
            }
            other => {
                let code = other.code();
                HttpError::new(status_for(code), code, other.to_string())
            }
        }
    }
}

pub(crate) fn scheduler(s: &AppState) -> Result<&Arc<Scheduler>, HttpError> {
    s.tasks.as_ref().ok_or_else(|| {
        HttpError::new(
            StatusCode::CONFLICT,
            "unsupported",
            "this daemon runs no task queue",
        )
    })
}

/// Turns a request into what the scheduler stores, checking everything first (for a task
/// on a git host: asking the host for the repository's default branch).
pub(crate) async fn new_task(
    s: &AppState,
    req: CreateTask,
    actor: &str,
) -> Result<NewTask, HttpError> {
    let attempts = req.attempts.unwrap_or(1);
    let forge_ref = forge_ref(&req)?;
    let (mut workspace, mut session) = (req.workspace, req.session.unwrap_or_default());
    if let Some(name) = &req.template {
        let t = s
            .engine
            .store()
            .templates()
            .map_err(kraal_engine::EngineError::from)?
            .into_iter()
            .find(|t| t.id == *name || t.spec.name == *name)
            .ok_or_else(|| {
                HttpError::new(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    format!("no template {name}"),
                )
            })?;
        let source = t
            .spec
            .source()
            .map_err(|e| HttpError::bad_request(format!("template {name}: {e}")))?;
        let ws = workspace.get_or_insert_with(|| kraal_api::CreateWorkspace::of(Source::Empty));
        ws.source = source;
        ws.resources = ws.resources.or(Some(t.spec.resources));
        ws.image = ws
            .image
            .take()
            .or(t.spec.image.clone().filter(|i| !i.is_empty()));
        ws.policy = t.spec.policy;
        session.agent = session.agent.or(Some(t.spec.agent));
        session.model = session.model.or(t.spec.model.clone());
        session.system_prompt = session.system_prompt.or(t.spec.system_prompt.clone());
    }
    if forge_ref.is_some() {
        let ws = workspace.get_or_insert_with(|| kraal_api::CreateWorkspace::of(Source::Empty));
        if ws.source != Source::Empty && req.template.is_none() {
            return Err(HttpError::bad_request(
                "a task on a repository takes its checkout from the git host; leave out the workspace's source",
            ));
        }
        // The checkout is fetched in the sandbox, after the workspace starts.
        ws.source = Source::Empty;
    }
    let Some(mut workspace) = workspace else {
        return Err(HttpError::bad_request(
            "a task needs a `workspace` (its source), a `repo` or a `template`",
        ));
    };
    if workspace.persistent {
        return Err(HttpError::bad_request(
            "task workspaces cannot be persistent (each attempt gets its own)",
        ));
    }
    if !workspace.mounts.is_empty() {
        return Err(HttpError::bad_request(
            "task workspaces cannot mount host directories",
        ));
    }
    if let Source::Local { path } = &workspace.source
        && path.is_absolute()
        && !path.is_dir()
    {
        return Err(HttpError::bad_request(format!(
            "no directory {} on the daemon's host to check out",
            path.display()
        )));
    }
    workspace.name = None;
    let mut forge = None;
    if let Some((host, repo, issue)) = &forge_ref {
        let sched = scheduler(s)?;
        let creds = workspace.git.clone();
        let target = sched
            .forge_target(
                host,
                repo,
                &creds,
                req.base.clone(),
                req.pull_request.unwrap_or(req.from_issue.is_some()),
                req.max_rounds.unwrap_or(kraal_core::DEFAULT_PR_ROUNDS),
            )
            .await?;
        let target = kraal_core::ForgeTarget {
            issue: *issue,
            ..target
        };
        // The git gateway adds the host's token to the sandbox's fetches and pushes of the
        // task's repository.
        if !creds.iter().any(|g| g.host == target.host) {
            let h = sched.forges()?.host(&target.host)?;
            workspace.git.push(kraal_core::GitCredential {
                host: target.host.clone(),
                secret: kraal_tasks::Forges::secret_name(&creds, h),
                username: kraal_core::DEFAULT_GIT_USER.to_owned(),
                repos: Vec::new(),
            });
        }
        target.scope_git(&mut workspace.git);
        forge = Some(target);
    }
    let req_ws = crate::routes::workspace_request(workspace)?;
    let agent = crate::sessions::agent_spec(&session);
    kraal_engine::check_spec(&agent)?;
    Ok(NewTask {
        prompt: req.prompt,
        spec: TaskSpec {
            source: req_ws.source,
            resources: req_ws.resources,
            image: req_ws.image,
            egress: req_ws.egress,
            git: req_ws.git,
            policy: req_ws.policy,
            agent,
            check: req.check,
            budget_usd: req.budget_usd,
            checklist: None,
            forge,
        },
        origin: req.origin.unwrap_or_else(|| actor.to_owned()),
        attempts,
        agents: req.agents,
        source_key: None,
    })
}

/// The git host repository a request names (`from_issue` or `repo`): host, `OWNER/NAME`
/// and the issue number.
fn forge_ref(req: &CreateTask) -> Result<Option<(String, String, Option<u64>)>, HttpError> {
    let bad = |e: kraal_forge::ForgeError| HttpError::bad_request(e.to_string());
    let (host, repo, issue) = match (&req.from_issue, &req.repo) {
        (Some(i), _) => {
            let (h, r, n) = kraal_forge::parse_issue_ref(i).map_err(bad)?;
            (h, r, Some(n))
        }
        (None, Some(r)) => {
            let (h, r) = kraal_forge::parse_repo_ref(r).map_err(bad)?;
            (h, r, None)
        }
        (None, None) => {
            if req.pull_request == Some(true) || req.base.is_some() {
                return Err(HttpError::bad_request(
                    "`pull_request` and `base` need a repository on a git host (`repo` or `from_issue`)",
                ));
            }
            return Ok(None);
        }
    };
    if req.max_rounds.is_some_and(|r| r > 50) {
        return Err(HttpError::bad_request("max_rounds is at most 50"));
    }
    Ok(Some((
        host.unwrap_or_else(|| "github.com".to_owned()),
        repo,
        issue,
    )))
}

/// Queues what a request asks for: one task (per attempt), one per checklist item, or the
/// task an issue becomes.
pub(crate) async fn queue(
    s: &AppState,
    req: CreateTask,
    actor: &str,
) -> Result<Vec<TaskRecord>, HttpError> {
    let sched = scheduler(s)?;
    let checklist = req.checklist.clone();
    // Combinations that cannot work are refused before the git host is asked anything.
    if checklist.is_some() && req.from_issue.is_some() {
        return Err(HttpError::bad_request(
            "a task comes from a checklist or from an issue, not both",
        ));
    }
    if checklist.is_some() && req.repo.is_some() {
        return Err(HttpError::bad_request(
            "checklists are read from a local checkout, not a git host repository",
        ));
    }
    // The prompt is checked when each task is queued (with a checklist: once the item's
    // text is in it).
    let new = new_task(s, req, actor).await?;
    let issue = new.spec.forge.as_ref().and_then(|f| f.issue);
    let tasks = match (checklist, issue) {
        (None, Some(n)) => sched.add_from_issue(new, n).await?,
        (None, None) => sched.add(new).await?,
        (Some(file), _) => {
            let items = crate::checklist::items(&new.spec.source, &file)?;
            if new.attempts > 1 {
                return Err(HttpError::bad_request(
                    "a checklist makes one task per item; it does not combine with attempts",
                ));
            }
            let extra = if new.prompt.trim().is_empty() {
                String::new()
            } else {
                format!("\n\n{}", new.prompt)
            };
            let mut all = Vec::new();
            for item in items {
                let mut one = new.clone();
                one.prompt = format!(
                    "Checklist item from {file} in this repository: {}{extra}\n\n(When you are done, kraal ticks its box in {file}.)",
                    item.text
                );
                one.spec.checklist = Some(item);
                all.extend(sched.add(one).await?);
            }
            all
        }
    };
    for t in &tasks {
        audit(s, actor, "task.add", &t.id, &t.title);
    }
    Ok(tasks)
}

/// The API view of tasks (workspace names and session usage looked up once).
pub(crate) fn to_api(s: &AppState, tasks: &[TaskRecord]) -> Vec<Task> {
    let names: HashMap<String, String> = s
        .engine
        .list()
        .unwrap_or_default()
        .into_iter()
        .map(|w| (w.id.to_string(), w.name.to_string()))
        .collect();
    tasks
        .iter()
        .map(|t| {
            let usage = t
                .session_id
                .as_deref()
                .and_then(|id| s.engine.session(id).ok())
                .map(|r| SessionUsage {
                    input_tokens: r.input_tokens,
                    output_tokens: r.output_tokens,
                    cost_usd: r.cost_usd,
                });
            Task {
                id: t.id.clone(),
                title: t.title.clone(),
                prompt: t.prompt.clone(),
                state: t.state,
                reason: t.reason.clone(),
                repo: t.repo.clone(),
                source: t.spec.source.clone(),
                agent: t.spec.agent.agent,
                origin: t.origin.clone(),
                group: t.group_id.clone(),
                attempt: t.attempt,
                tries: t.tries,
                workspace: t
                    .workspace_id
                    .as_ref()
                    .and_then(|id| names.get(id).cloned()),
                workspace_id: t.workspace_id.clone(),
                session_id: t.session_id.clone(),
                check: match (&t.spec.check, t.check_code) {
                    (Some(command), Some(code)) => Some(CheckResult {
                        command: command.clone(),
                        code,
                        passed: code == 0,
                        output: t.check_output.clone().unwrap_or_default(),
                    }),
                    _ => None,
                },
                diff: t.diff.map(|(files, added, removed)| DiffStat {
                    files,
                    added,
                    removed,
                }),
                usage,
                duration_secs: kraal_tasks::duration_secs(t),
                picked: t.picked,
                forge: t.spec.forge.clone(),
                pull: t.pr.clone(),
                created_at: t.created_at.clone(),
                started_at: t.started_at.clone(),
                finished_at: t.finished_at.clone(),
            }
        })
        .collect()
}

/// The states [`queue_info`] counts.
pub(crate) const LIVE: &[TaskState] = &[TaskState::Queued, TaskState::Running];

pub(crate) fn queue_info(sched: &Scheduler, all: &[TaskRecord]) -> QueueInfo {
    let l = sched.limits();
    QueueInfo {
        max_running: l.max_running,
        per_repo: l.per_repo,
        running: all.iter().filter(|t| t.state == TaskState::Running).count(),
        queued: all.iter().filter(|t| t.state == TaskState::Queued).count(),
    }
}

fn parse_states(q: Option<&str>) -> Result<Vec<TaskState>, HttpError> {
    let Some(q) = q.filter(|q| !q.trim().is_empty()) else {
        return Ok(Vec::new());
    };
    q.split(',')
        .map(|p| {
            TaskState::parse(p.trim()).ok_or_else(|| {
                HttpError::bad_request(format!(
                    "unknown task state {p:?}; one of queued, running, needs_review, done, failed, cancelled"
                ))
            })
        })
        .collect()
}

#[utoipa::path(get, path = "/v1/tasks", params(("state" = Option<String>, Query, description = "Comma-separated states")),
    responses((status = 200, body = TaskList), (status = 400, body = ApiError)))]
pub async fn list_tasks(
    State(s): State<AppState>,
    Query(q): Query<TaskQuery>,
) -> Result<Json<TaskList>, HttpError> {
    let sched = scheduler(&s)?;
    let states = parse_states(q.state.as_deref())?;
    let all = sched.list(&[])?;
    let queue = queue_info(sched, &all);
    let shown: Vec<TaskRecord> = all
        .into_iter()
        .filter(|t| states.is_empty() || states.contains(&t.state))
        .collect();
    Ok(Json(TaskList {
        tasks: to_api(&s, &shown),
        queue,
    }))
}

#[utoipa::path(post, path = "/v1/tasks", request_body = CreateTask,
    responses((status = 201, body = TaskList, description = "The queued task (one per attempt)"),
        (status = 400, body = ApiError), (status = 404, body = ApiError)))]
pub async fn create_task(
    State(s): State<AppState>,
    actor: Option<axum::Extension<Actor>>,
    body: Result<Json<CreateTask>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<TaskList>), HttpError> {
    let Json(req) = body.map_err(|e| HttpError::bad_request(e.body_text()))?;
    let actor = actor_of(actor);
    let tasks = queue(&s, req, &actor).await?;
    let sched = scheduler(&s)?;
    let all = sched.list(LIVE)?;
    Ok((
        StatusCode::CREATED,
        Json(TaskList {
            tasks: to_api(&s, &tasks),
            queue: queue_info(sched, &all),
        }),
    ))
}

#[utoipa::path(get, path = "/v1/tasks/{id}", params(("id" = String, Path, description = "Task id or a unique prefix")),
    responses((status = 200, body = Task), (status = 404, body = ApiError)))]
pub async fn get_task(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Task>, HttpError> {
    let t = scheduler(&s)?.get(&id)?;
    Ok(Json(to_api(&s, &[t]).remove(0)))
}

#[utoipa::path(get, path = "/v1/tasks/{id}/attempts", params(("id" = String, Path, description = "Any attempt of the task")),
    responses((status = 200, body = TaskList, description = "Every attempt, side by side"), (status = 404, body = ApiError)))]
pub async fn attempts(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<TaskList>, HttpError> {
    let sched = scheduler(&s)?;
    let tasks = sched.attempts(&id)?;
    let all = sched.list(LIVE)?;
    Ok(Json(TaskList {
        tasks: to_api(&s, &tasks),
        queue: queue_info(sched, &all),
    }))
}

/// What a task action does.
#[derive(Clone, Copy)]
pub(crate) enum Op {
    Cancel,
    Retry,
    Done,
    Pick,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Cancel => "task.cancel",
            Op::Retry => "task.retry",
            Op::Done => "task.done",
            Op::Pick => "task.pick",
        }
    }
}

/// Runs an action on a task; returns the tasks it changed.
pub(crate) async fn act(
    s: &AppState,
    actor: &str,
    id: &str,
    op: Op,
) -> Result<Vec<TaskRecord>, HttpError> {
    let sched = scheduler(s)?;
    let changed = match op {
        Op::Cancel => vec![sched.cancel(id).await?],
        Op::Retry => vec![sched.retry(id).await?],
        Op::Done => vec![sched.done(id).await?],
        Op::Pick => sched.pick(id).await?,
    };
    audit(s, actor, op.name(), id, "");
    Ok(changed)
}

async fn action(
    s: AppState,
    actor: Option<axum::Extension<Actor>>,
    id: String,
    op: Op,
) -> Result<Json<TaskList>, HttpError> {
    let changed = act(&s, &actor_of(actor), &id, op).await?;
    let sched = scheduler(&s)?;
    let all = sched.list(LIVE)?;
    Ok(Json(TaskList {
        tasks: to_api(&s, &changed),
        queue: queue_info(sched, &all),
    }))
}

#[utoipa::path(post, path = "/v1/tasks/{id}/cancel", params(("id" = String, Path)),
    responses((status = 200, body = TaskList), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub async fn cancel_task(
    State(s): State<AppState>,
    actor: Option<axum::Extension<Actor>>,
    Path(id): Path<String>,
) -> Result<Json<TaskList>, HttpError> {
    action(s, actor, id, Op::Cancel).await
}

#[utoipa::path(post, path = "/v1/tasks/{id}/retry", params(("id" = String, Path)),
    responses((status = 200, body = TaskList), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub async fn retry_task(
    State(s): State<AppState>,
    actor: Option<axum::Extension<Actor>>,
    Path(id): Path<String>,
) -> Result<Json<TaskList>, HttpError> {
    action(s, actor, id, Op::Retry).await
}

#[utoipa::path(post, path = "/v1/tasks/{id}/done", params(("id" = String, Path)),
    responses((status = 200, body = TaskList), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub async fn done_task(
    State(s): State<AppState>,
    actor: Option<axum::Extension<Actor>>,
    Path(id): Path<String>,
) -> Result<Json<TaskList>, HttpError> {
    action(s, actor, id, Op::Done).await
}

#[utoipa::path(post, path = "/v1/tasks/{id}/pick", params(("id" = String, Path, description = "The attempt to keep")),
    responses((status = 200, body = TaskList, description = "Every attempt after the pick"), (status = 400, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub async fn pick_task(
    State(s): State<AppState>,
    actor: Option<axum::Extension<Actor>>,
    Path(id): Path<String>,
) -> Result<Json<TaskList>, HttpError> {
    action(s, actor, id, Op::Pick).await
}
