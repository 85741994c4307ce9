//! The task board of the web UI: tasks in columns by state (stacked on a phone), a form to
//! queue one, the actions on each card, and a best-of-N task's attempts side by side with
//! a button to pick one.

use axum::Extension;
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use kraal_api::{CreateSession, CreateTask, CreateWorkspace, Task};
use kraal_core::{AgentKind, PullStatus, Source, TaskState};
use maud::{Markup, html};
use serde::Deserialize;

use super::WebState;
use super::actions::done;
use super::auth::Auth;
use super::pages::{Page, error_page, layout, post_button, state_badge};
use crate::error::HttpError;
use crate::tasks::{Op, act, queue, queue_info, scheduler, to_api};

/// Columns of the board, in the order work moves through them.
const COLUMNS: [(&str, &[TaskState]); 4] = [
    ("Queued", &[TaskState::Queued]),
    ("Running", &[TaskState::Running]),
    ("Needs review", &[TaskState::NeedsReview]),
    (
        "Finished",
        &[TaskState::Done, TaskState::Failed, TaskState::Cancelled],
    ),
];

fn actor(auth: &Auth) -> String {
    format!("web:{}", auth.token_name)
}

fn board(w: &WebState, auth: &Auth) -> Result<Markup, HttpError> {
    let sched = scheduler(&w.app)?;
    let all = sched.list(&[])?;
    let q = queue_info(sched, &all);
    let tasks = to_api(&w.app, &all);
    Ok(html! {
        div #board hx-get="/tasks/board" hx-trigger="every 3s" hx-swap="outerHTML" {
            p.muted { (q.running) " running of at most " (q.max_running)
                @if q.per_repo > 0 { " (" (q.per_repo) " per repository)" }
                " · " (q.queued) " queued" }
            div.board {
                @for (title, states) in COLUMNS {
                    @let col: Vec<&Task> = tasks.iter().rev().filter(|t| states.contains(&t.state)).collect();
                    section.column data-column=(title) {
                        h3 { (title) " " span.muted { (col.len()) } }
                        @if col.is_empty() { p.muted { "Nothing here." } }
                        @for t in col { (card(auth, t)) }
                    }
                }
            }
        }
    })
}

fn duration(t: &Task) -> String {
    t.duration_secs
        .map(|s| format!("{:.0} s", s))
        .unwrap_or_default()
}

fn card(auth: &Auth, t: &Task) -> Markup {
    html! {
        article.task data-task=(t.id) data-state=(t.state.as_str()) {
            header {
                (state_badge(t.state.as_str()))
                " " strong { (t.title) }
            }
            p.muted {
                (t.agent)
                @if let Some(g) = &t.group { " · attempt " (t.attempt) " of " a href={ "/tasks/" (t.id) "/compare" } { "group " (&g[3..9]) } }
                @if let Some(w) = &t.workspace { " · " a href={ "/w/" (w) } { (w) } }
                @if let Some(s) = &t.session_id { " · " a href={ "/s/" (s) } { "session" } }
                @let d = duration(t);
                @if !d.is_empty() { " · " (d) }
                @if let Some(u) = &t.usage { " · $" (format!("{:.4}", u.cost_usd.max(0.0))) }
            }
            @if let Some(p) = &t.pull {
                p.small.pull {
                    a href=(p.url) rel="noopener" { "PR #" (p.number) }
                    " · " span class=(match p.status { PullStatus::Green | PullStatus::Merged => "ok", PullStatus::Failing => "error", _ => "muted" }) { (p.status.as_str()) }
                    @if p.rounds > 0 { " · " (p.rounds) " feedback round" @if p.rounds > 1 { "s" } }
                }
            } @else if let Some(f) = &t.forge { p.small.muted { (f.key()) @if let Some(n) = f.issue { "#" (n) } } }
            @if let Some(d) = &t.diff { p.small { (d.files) " files, " span.ok { "+" (d.added) } " " span.error { "−" (d.removed) } } }
            @if let Some(c) = &t.check {
                p.small { "check " @if c.passed { span.ok { "passed" } } @else { span.error { "failed (" (c.code) ")" } } }
            }
            @if let Some(r) = &t.reason { @if matches!(t.state, TaskState::Failed) { p.error.small { (r) } } }
            div.actions {
                @match t.state {
                    TaskState::Queued | TaskState::Running => (post_button(auth, &format!("/tasks/{}/cancel", t.id), "Cancel", "secondary outline small")),
                    TaskState::Failed | TaskState::Cancelled => (post_button(auth, &format!("/tasks/{}/retry", t.id), "Retry", "secondary small")),
                    TaskState::NeedsReview => {
                        @if let Some(w) = &t.workspace { a role="button" .small.secondary href={ "/w/" (w) } { "Review" } }
                        @if t.group.is_some() {
                            (post_button(auth, &format!("/tasks/{}/pick", t.id), "Pick this one", "small"))
                        } @else {
                            (post_button(auth, &format!("/tasks/{}/done", t.id), "Done", "small"))
                        }
                    },
                    TaskState::Done => {},
                }
            }
        }
    }
}

fn new_form(auth: &Auth) -> Markup {
    html! {
        details.new-task {
            summary { "New task" }
            form method="post" action="/tasks" {
                input type="hidden" name="csrf" value=(auth.csrf);
                label { "Repository or issue" input name="source" required placeholder="https://git.example.com/me/app.git, /srv/app or owner/repo#12"; }
                label { "Prompt" textarea name="prompt" rows="4" placeholder="What should the agent do? (For an issue: extra instructions.)" {} }
                div.grid {
                    label { "Agent" select name="agent" {
                        @for k in ["claude", "codex", "gemini", "qwen", "goose", "opencode"] { option value=(k) { (k) } }
                    } }
                    label { "Attempts" input type="number" name="attempts" min="1" max="8" value="1"; }
                }
                label { "Check command (optional)" input name="check" placeholder="cargo test"; }
                button type="submit" { "Queue" }
            }
        }
    }
}

pub async fn page(
    State(w): State<WebState>,
    Extension(auth): Extension<Auth>,
) -> Result<Page, Page> {
    let b = board(&w, &auth).map_err(|e| error_page(&auth, e))?;
    Ok(layout(
        "Tasks",
        &auth,
        html! {
            div.row-head { h2 { "Tasks" } }
            (new_form(&auth))
            (b)
        },
    ))
}

pub async fn fragment(State(w): State<WebState>, Extension(auth): Extension<Auth>) -> Response {
    match board(&w, &auth) {
        Ok(m) => Page(StatusCode::OK, m).into_response(),
        Err(e) => (e.status, e.body.message).into_response(),
    }
}

#[derive(Deserialize)]
pub struct NewTaskForm {
    source: String,
    prompt: String,
    #[serde(default)]
    agent: Option<String>,
    #[serde(default)]
    attempts: Option<String>,
    #[serde(default)]
    check: Option<String>,
}

pub async fn add(
    State(w): State<WebState>,
    Extension(auth): Extension<Auth>,
    headers: HeaderMap,
    Form(f): Form<NewTaskForm>,
) -> Response {
    let r = async {
        let src = f.source.trim();
        // `OWNER/REPO#N` (or an issue's URL): the issue becomes the task, with a pull request.
        let from_issue = (src.contains('#') || src.contains("/issues/"))
            .then(|| src.to_owned())
            .filter(|s| kraal_forge::parse_issue_ref(s).is_ok());
        let source = if from_issue.is_some() {
            Ok(Source::Empty)
        } else if Source::looks_like_git_url(src) {
            Source::git(src, None)
        } else {
            Source::local(src.into())
        }
        .map_err(|e| HttpError::bad_request(e.to_string()))?;
        let agent = match f.agent.as_deref().filter(|a| !a.is_empty()) {
            Some(a) => {
                Some(AgentKind::parse(a).map_err(|e| HttpError::bad_request(e.to_string()))?)
            }
            None => None,
        };
        let attempts = match f
            .attempts
            .as_deref()
            .map(str::trim)
            .filter(|a| !a.is_empty())
        {
            Some(a) => Some(a.parse::<u32>().map_err(|_| {
                HttpError::bad_request(format!("attempts {a:?} is not a whole number"))
            })?),
            None => None,
        };
        let req = CreateTask {
            prompt: f.prompt,
            template: None,
            from_issue,
            workspace: Some(CreateWorkspace::of(source)),
            session: Some(CreateSession {
                agent,
                ..Default::default()
            }),
            attempts,
            agents: vec![],
            check: f.check.filter(|c| !c.trim().is_empty()),
            budget_usd: None,
            checklist: None,
            origin: Some("web".into()),
            ..Default::default()
        };
        queue(&w.app, req, &actor(&auth)).await?;
        Ok("/tasks".to_owned())
    }
    .await;
    done(&headers, &auth, r)
}

async fn run_op(w: WebState, auth: Auth, headers: HeaderMap, id: String, op: Op) -> Response {
    let r = act(&w.app, &actor(&auth), &id, op).await.map(|_| match op {
        Op::Pick => format!("/tasks/{id}/compare"),
        _ => "/tasks".to_owned(),
    });
    done(&headers, &auth, r)
}

pub async fn cancel(
    State(w): State<WebState>,
    Extension(auth): Extension<Auth>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    run_op(w, auth, headers, id, Op::Cancel).await
}

pub async fn retry(
    State(w): State<WebState>,
    Extension(auth): Extension<Auth>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    run_op(w, auth, headers, id, Op::Retry).await
}

pub async fn mark_done(
    State(w): State<WebState>,
    Extension(auth): Extension<Auth>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    run_op(w, auth, headers, id, Op::Done).await
}

pub async fn pick(
    State(w): State<WebState>,
    Extension(auth): Extension<Auth>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    run_op(w, auth, headers, id, Op::Pick).await
}

/// A best-of-N task's attempts side by side.
pub async fn compare(
    State(w): State<WebState>,
    Extension(auth): Extension<Auth>,
    Path(id): Path<String>,
) -> Result<Page, Page> {
    let err = |e: HttpError| error_page(&auth, e);
    let sched = scheduler(&w.app).map_err(err)?;
    let attempts = sched.attempts(&id).map_err(|e| err(e.into()))?;
    let tasks = to_api(&w.app, &attempts);
    let title = tasks.first().map(|t| t.title.clone()).unwrap_or_default();
    Ok(layout(
        "Compare attempts",
        &auth,
        html! {
            h2 { "Attempts" }
            p { (title) }
            div.compare {
                @for t in &tasks {
                    article.attempt data-task=(t.id) data-picked=(t.picked) {
                        header { strong { "Attempt " (t.attempt) } " " (state_badge(t.state.as_str())) @if t.picked { " ★ picked" } }
                        dl {
                            dt { "Agent" } dd { (t.agent) }
                            dt { "Changes" } dd { @if let Some(d) = &t.diff { (d.files) " files, +" (d.added) " −" (d.removed) } @else { "—" } }
                            dt { "Check" } dd.check {
                                @match &t.check {
                                    Some(c) if c.passed => span.ok { "passed" },
                                    Some(c) => span.error { "failed (" (c.code) ")" },
                                    None => "—",
                                }
                            }
                            dt { "Cost" } dd { @if let Some(u) = &t.usage { "$" (format!("{:.4}", u.cost_usd.max(0.0))) } @else { "—" } }
                            dt { "Time" } dd { (duration(t)) }
                        }
                        @if let Some(c) = &t.check { @if !c.output.is_empty() { details { summary { "Check output" } pre { (c.output) } } } }
                        div.actions {
                            @if let Some(ws) = &t.workspace { a role="button" .small.secondary href={ "/w/" (ws) } { "Review" } }
                            @if t.state == TaskState::NeedsReview { (post_button(&auth, &format!("/tasks/{}/pick", t.id), "Pick this one", "small")) }
                        }
                    }
                }
            }
            p { a href="/tasks" { "Back to the board" } }
        },
    ))
}
