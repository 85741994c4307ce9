//! Pages, server-rendered with maud (which escapes everything it interpolates, so agent
//! output and file contents can never become markup).

use std::collections::HashMap;

use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use kraal_core::{AgentKind, PermissionMode, SessionState, WorkspaceState};
use kraal_store::{SessionRecord, TemplateRecord, WorkspaceRecord};
use maud::{DOCTYPE, Markup, html};
use serde::Deserialize;

use super::WebState;
use super::auth::Auth;
use super::events;
use crate::error::HttpError;

/// A rendered page with the security headers every page carries.
pub struct Page(pub StatusCode, pub Markup);

impl IntoResponse for Page {
    fn into_response(self) -> Response {
        (
            self.0,
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (
                    header::CONTENT_SECURITY_POLICY,
                    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
                ),
                (header::X_FRAME_OPTIONS, "DENY"),
                (header::REFERRER_POLICY, "same-origin"),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            self.1.into_string(),
        )
            .into_response()
    }
}

impl From<Markup> for Page {
    fn from(m: Markup) -> Page {
        Page(StatusCode::OK, m)
    }
}

fn head(title: &str, csrf: Option<&str>) -> Markup {
    html! {
        meta charset="utf-8";
        meta name="viewport" content="width=device-width, initial-scale=1, viewport-fit=cover";
        meta name="theme-color" content="#13171f";
        meta name="color-scheme" content="light dark";
        // Keep htmx within the content security policy.
        meta name="htmx-config" content=r#"{"includeIndicatorStyles":false,"allowEval":false,"allowScriptTags":false}"#;
        @if let Some(c) = csrf { meta name="csrf-token" content=(c); }
        title { (title) " · kraal" }
        link rel="manifest" href="/static/manifest.webmanifest";
        link rel="icon" href="/static/icon.svg" type="image/svg+xml";
        link rel="apple-touch-icon" href="/static/icon-192.png";
        link rel="stylesheet" href="/static/pico.min.css";
        link rel="stylesheet" href="/static/app.css";
        script src="/static/htmx.min.js" defer {}
        script src="/static/app.js" defer {}
    }
}

pub fn layout(title: &str, auth: &Auth, body: Markup) -> Page {
    let hx = serde_json::json!({ "X-CSRF-Token": auth.csrf }).to_string();
    html! {
        (DOCTYPE)
        html lang="en" {
            head { (head(title, Some(&auth.csrf))) }
            body hx-headers=(hx) {
                header.container.top {
                    nav {
                        ul { li { a.brand href="/" { img src="/static/icon.svg" alt="" width="24" height="24"; " kraal" } } }
                        ul {
                            li { a href="/" { "Dashboard" } }
                            li { a href="/tasks" { "Tasks" } }
                            li { a href="/budget" { "Spend" } }
                            li { a href="/templates" { "Templates" } }
                            li { a href="/logs" { "Logs" } }
                            li { a href="/settings/notifications" { "Notifications" } }
                            li {
                                form.inline method="post" action="/logout" {
                                    input type="hidden" name="csrf" value=(auth.csrf);
                                    button.secondary.outline.small type="submit" { "Log out" }
                                }
                            }
                        }
                    }
                }
                main.container { (body) }
                div #toast role="status" aria-live="polite" {}
            }
        }
    }
    .into()
}

pub fn login(next: &str, error: Option<&str>) -> Page {
    let status = if error.is_some() {
        StatusCode::UNAUTHORIZED
    } else {
        StatusCode::OK
    };
    Page(
        status,
        html! {
            (DOCTYPE)
            html lang="en" {
                head { (head("Log in", None)) }
                body {
                    main.container.login {
                        article {
                            header { h1 { img src="/static/icon.svg" alt="" width="32" height="32"; " kraal" } }
                            @if let Some(e) = error { p.error role="alert" { (e) } }
                            form method="post" action="/login" {
                                label for="token" { "Access token" }
                                input #token type="password" name="token" autocomplete="current-password" required placeholder="kraal_…";
                                input type="hidden" name="next" value=(next);
                                button type="submit" { "Log in" }
                            }
                            p.muted { "Create a token on the host with " code { "kraal token create" } "." }
                        }
                    }
                }
            }
        },
    )
}

pub async fn not_found(Extension(auth): Extension<Auth>) -> Page {
    let mut p = layout(
        "Not found",
        &auth,
        html! { h2 { "Not found" } p { a href="/" { "Back to the dashboard" } } },
    );
    p.0 = StatusCode::NOT_FOUND;
    p
}

/// An error shown as a page (or as a toast fragment for htmx requests).
pub fn error_page(auth: &Auth, e: HttpError) -> Page {
    let status = e.status;
    let mut p = layout(
        "Error",
        auth,
        html! {
            h2 { "Something went wrong" }
            p.error { (e.body.message) }
            p { a href="/" { "Back to the dashboard" } }
        },
    );
    p.0 = status;
    p
}

pub fn state_badge(state: &str) -> Markup {
    html! { span.badge data-state=(state) { (state.replace('_', " ")) } }
}

fn money(usd: f64) -> String {
    // An empty sum is -0.0; nobody wants to read "$-0.0000".
    format!("${:.4}", usd.max(0.0))
}

/// `2026-11-23T20:24:36.943Z` → `2026-11-23 20:24:36`.
pub fn short_time(rfc3339: &str) -> String {
    rfc3339.replacen('T', " ", 1).chars().take(19).collect()
}

#[derive(Default)]
struct Counts {
    working: usize,
    waiting: usize,
    approval: usize,
    failed: usize,
    cost: f64,
}

fn counts(sessions: &[SessionRecord]) -> HashMap<String, Counts> {
    let mut m: HashMap<String, Counts> = HashMap::new();
    for s in sessions {
        let c = m.entry(s.workspace_id.to_string()).or_default();
        match s.state {
            SessionState::Working | SessionState::Starting => c.working += 1,
            SessionState::WaitingForInput => c.waiting += 1,
            SessionState::NeedsApproval => c.approval += 1,
            SessionState::Failed => c.failed += 1,
            SessionState::Done => {}
        }
        c.cost += s.cost_usd;
    }
    m
}

fn workspace_rows(ws: &[WorkspaceRecord], sessions: &[SessionRecord]) -> Markup {
    let counts = counts(sessions);
    let total: f64 = sessions.iter().map(|s| s.cost_usd).sum();
    let names: HashMap<&str, &str> = ws
        .iter()
        .map(|w| (w.id.as_str(), w.name.as_str()))
        .collect();
    // Live sessions first (needing approval, then working, then waiting), then failures.
    let mut attention: Vec<&SessionRecord> = sessions
        .iter()
        .filter(|s| s.state != SessionState::Done)
        .collect();
    attention.sort_by_key(|s| match s.state {
        SessionState::NeedsApproval => 0,
        SessionState::Working | SessionState::Starting => 1,
        SessionState::WaitingForInput => 2,
        _ => 3,
    });
    // The whole fragment (cards and the list of sessions) refreshes together, so the two never
    // disagree.
    html! {
        div #workspaces hx-get="/dashboard/workspaces" hx-trigger="every 5s" hx-swap="outerHTML" {
            @if ws.is_empty() {
                p.muted { "No workspaces yet. Create one with " code { "kraal up <dir|git URL>" } " or launch a template." }
            } @else {
                div.cards {
                    @for w in ws {
                        @let c = counts.get(w.id.as_str());
                        a.card href={ "/w/" (w.name) } {
                            div.card-head { strong { (w.name) } (state_badge(w.state.as_str())) }
                            div.card-body {
                                span.muted { (w.source.describe()) }
                                @if let Some(c) = c {
                                    div.chips {
                                        @if c.working > 0 { span.chip.working { (c.working) " working" } }
                                        @if c.approval > 0 { span.chip.approval { (c.approval) " needs approval" } }
                                        @if c.waiting > 0 { span.chip.waiting { (c.waiting) " waiting" } }
                                        @if c.failed > 0 { span.chip.failed { (c.failed) " failed" } }
                                        span.chip { (money(c.cost)) }
                                    }
                                }
                            }
                        }
                    }
                }
                p.muted.total { "Cost so far: " strong { (money(total)) } }
            }
            h3 { "Sessions to watch" }
            @if attention.is_empty() {
                p.muted { "Nothing is running or waiting for you." }
            } @else {
                ul.sessions {
                    @for s in attention {
                        li { (session_link(s, names.get(s.workspace_id.as_str()).copied())) }
                    }
                }
            }
        }
    }
}

pub async fn dashboard(
    State(w): State<WebState>,
    Extension(auth): Extension<Auth>,
) -> Result<Page, Page> {
    let e = &w.app.engine;
    let ws = e.list().map_err(|x| error_page(&auth, x.into()))?;
    let sessions = e.sessions(None).map_err(|x| error_page(&auth, x.into()))?;
    Ok(layout(
        "Dashboard",
        &auth,
        html! {
            div.row-head {
                h2 { "Workspaces" }
                button.secondary.outline.small #enable-notifications type="button" hidden { "Enable notifications" }
            }
            (workspace_rows(&ws, &sessions))
        },
    ))
}

pub async fn dashboard_table(State(w): State<WebState>) -> Response {
    let e = &w.app.engine;
    match (e.list(), e.sessions(None)) {
        (Ok(ws), Ok(s)) => Page(StatusCode::OK, workspace_rows(&ws, &s)).into_response(),
        _ => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

fn session_link(s: &SessionRecord, ws: Option<&str>) -> Markup {
    html! {
        a.session href={ "/s/" (s.id) } {
            (state_badge(s.state.as_str()))
            " " strong { (s.title) }
            span.muted {
                " · " (s.agent)
                @if let Some(w) = ws { " · " (w) }
                " · " (money(s.cost_usd))
            }
        }
    }
}

pub async fn workspace(
    State(w): State<WebState>,
    Extension(auth): Extension<Auth>,
    Path(ws): Path<String>,
) -> Result<Page, Page> {
    let e = &w.app.engine;
    let rec = e.resolve(&ws).map_err(|x| error_page(&auth, x.into()))?;
    let sessions = e
        .sessions(Some(rec.id.as_str()))
        .map_err(|x| error_page(&auth, x.into()))?;
    let log = e.store().events(&rec.id, 15).unwrap_or_default();
    let running = rec.state == WorkspaceState::Running;
    let name = rec.name.to_string();
    Ok(layout(
        &name,
        &auth,
        html! {
            div.row-head {
                h2 { (name) " " (state_badge(rec.state.as_str())) }
                div.actions {
                    @if running {
                        a role="button" .small href={ "/w/" (name) "/terminal" } { "Terminal" }
                        a role="button" .small.secondary href={ "/w/" (name) "/files" } { "Files" }
                        (post_button(&auth, &format!("/w/{name}/down"), "Stop", "secondary outline small"))
                    } @else {
                        (post_button(&auth, &format!("/w/{name}/up"), "Start", "small"))
                    }
                }
            }
            p.muted { (rec.source.describe()) " · " (rec.backend) " · " (rec.resources.cpus) " CPU, " (rec.resources.memory_mib) " MiB"
                @if let Some(r) = &rec.reason { br; span.error { (r) } } }
            h3 { "Sessions" }
            @if sessions.is_empty() { p.muted { "No sessions yet." } }
            ul.sessions { @for s in &sessions { li { (session_link(s, None)) } } }
            @if running {
                details.new-session {
                    summary { "New session" }
                    form method="post" action={ "/w/" (name) "/sessions" } {
                        input type="hidden" name="csrf" value=(auth.csrf);
                        div.grid {
                            label { "Agent"
                                select name="agent" {
                                    @for a in AgentKind::ALL { option value=(a.as_str()) { (a) } }
                                }
                            }
                            label { "Model (optional)" input name="model" placeholder="agent default"; }
                        }
                        label { "Task" textarea name="message" rows="3" placeholder="What should the agent do?" {} }
                        label { input type="checkbox" name="ask" value="1"; " Ask before every tool use" }
                        button type="submit" { "Start" }
                    }
                }
                h3 { "Ports" }
                div #ports hx-get={ "/w/" (name) "/ports" } hx-trigger="load" hx-swap="outerHTML" { p.muted { "Looking for listening ports…" } }
                h3 { "Changes" }
                div #diff hx-get={ "/w/" (name) "/diff" } hx-trigger="load" hx-swap="outerHTML" { p.muted { "Loading the diff…" } }
                form.commit method="post" action={ "/w/" (name) "/commit" } {
                    input type="hidden" name="csrf" value=(auth.csrf);
                    div role="group" {
                        input name="message" placeholder="Commit message" required;
                        button type="submit" { "Commit all" }
                    }
                }
                (post_button(&auth, &format!("/w/{name}/push"), "Push", "secondary outline small"))
            }
            h3 { "Log" }
            ul.log { @for l in log.iter().rev() { li.{"lvl-" (l.level)} { span.muted { (short_time(&l.at)) } " " (l.message) } } }
        },
    ))
}

pub fn post_button(auth: &Auth, action: &str, label: &str, class: &str) -> Markup {
    html! {
        form.inline method="post" action=(action) {
            input type="hidden" name="csrf" value=(auth.csrf);
            button type="submit" class=(class) { (label) }
        }
    }
}

#[derive(Deserialize)]
pub struct FilesQuery {
    #[serde(default)]
    path: Option<String>,
}

/// Browse the workspace volume; a file shows its content.
pub async fn files(
    State(w): State<WebState>,
    Extension(auth): Extension<Auth>,
    Path(ws): Path<String>,
    Query(q): Query<FilesQuery>,
) -> Result<Page, Page> {
    let (rec, client) = w
        .app
        .engine
        .guest(&ws)
        .await
        .map_err(|x| error_page(&auth, x.into()))?;
    let path = q.path.unwrap_or_else(|| ".".into());
    let gerr = |x| error_page(&auth, crate::routes::guest_err(&rec, x));
    let info = client.stat(&path).await.map_err(gerr)?;
    let name = rec.name.to_string();
    let crumbs: Vec<(String, String)> = {
        let mut acc = String::new();
        let mut v = vec![(".".to_owned(), name.clone())];
        for part in info.path.split('/').filter(|p| !p.is_empty() && *p != ".") {
            if !acc.is_empty() {
                acc.push('/');
            }
            acc.push_str(part);
            v.push((acc.clone(), part.to_owned()));
        }
        v
    };
    let body = if info.file_type == kraal_protocol::FileType::Dir {
        let mut entries = client.list_dir(&path).await.map_err(gerr)?;
        entries.sort_by_key(|e| (e.file_type != kraal_protocol::FileType::Dir, e.name.clone()));
        html! {
            ul.files {
                @for e in &entries {
                    li {
                        a href={ "/w/" (name) "/files?path=" (super::auth::urlencode(&e.path)) } {
                            @if e.file_type == kraal_protocol::FileType::Dir { "📁 " } @else { "📄 " }
                            (e.name)
                        }
                        span.muted { " " (e.size) " B" }
                    }
                }
            }
        }
    } else {
        const LIMIT: u64 = 1024 * 1024;
        let data = client.read_file(&path, LIMIT).await.map_err(gerr)?;
        let text = std::str::from_utf8(&data)
            .ok()
            .filter(|t| !t.contains('\0'));
        html! {
            @match text {
                Some(t) => {
                    pre.file { code { (t) } }
                    @if info.size > LIMIT { p.muted { "Showing the first 1 MiB of " (info.size) " bytes." } }
                }
                None => p.muted { "Binary file, " (info.size) " bytes." },
            }
        }
    };
    Ok(layout(
        &format!("{} files", name),
        &auth,
        html! {
            nav aria-label="breadcrumb" {
                ul { @for (p, label) in &crumbs { li { a href={ "/w/" (name) "/files?path=" (super::auth::urlencode(p)) } { (label) } } } }
            }
            (body)
        },
    ))
}

pub async fn session(
    State(w): State<WebState>,
    Extension(auth): Extension<Auth>,
    Path(id): Path<String>,
) -> Result<Page, Page> {
    let e = &w.app.engine;
    let s = e.session(&id).map_err(|x| error_page(&auth, x.into()))?;
    let ws = e
        .store()
        .get(&s.workspace_id)
        .ok()
        .flatten()
        .map(|w| w.name.to_string())
        .unwrap_or_default();
    let history = e
        .session_events(&s.id, 0, usize::MAX >> 1)
        .map_err(|x| error_page(&auth, x.into()))?;
    let last = history.last().map(|e| e.seq).unwrap_or(0);
    let rendered = events::history(&history, s.id.as_str(), &auth.csrf);
    let sid = s.id.to_string();
    Ok(layout(
        &s.title,
        &auth,
        html! {
            div.row-head {
                div {
                    h2.title { (s.title) }
                    p.muted { (s.agent) " in " a href={ "/w/" (ws) } { (ws) } " · " span #cost { (money(s.cost_usd)) }
                        @if s.spec.permissions == PermissionMode::Ask { " · asks before tools" } }
                }
                span #state { (state_badge(s.state.as_str())) }
            }
            div #log.log-view data-session=(sid) data-last-seq=(last) aria-live="polite" { (rendered) }
            div #connection.muted hidden { "Reconnecting…" }
            form #composer method="post" action={ "/s/" (sid) "/send" } hx-post={ "/s/" (sid) "/send" } hx-swap="none" hx-encoding="multipart/form-data" {
                input type="hidden" name="csrf" value=(auth.csrf);
                textarea name="text" rows="2" placeholder="Message the agent (also while it works)" {}
                div #attached.muted hidden {}
                div.composer-actions {
                    button type="submit" { "Send" }
                    label.attach role="button" .secondary.outline title="Attach photos or files" {
                        "Attach"
                        input #attach type="file" name="files" multiple accept="image/*,*/*" hidden;
                    }
                    button.secondary.outline type="button" hx-post={ "/s/" (sid) "/interrupt" } hx-swap="none" { "Interrupt" }
                    button.secondary.outline type="button" hx-post={ "/s/" (sid) "/end" } hx-swap="none" hx-confirm="End this session? Its log is kept." { "End" }
                }
            }
        },
    ))
}

pub async fn templates(
    State(w): State<WebState>,
    Extension(auth): Extension<Auth>,
) -> Result<Page, Page> {
    let list = w
        .app
        .engine
        .store()
        .templates()
        .map_err(|x| error_page(&auth, kraal_engine::EngineError::from(x).into()))?;
    Ok(layout(
        "Templates",
        &auth,
        html! {
            div.row-head { h2 { "Templates" } a role="button" .small href="/templates/new" { "New template" } }
            @if list.is_empty() { p.muted { "No templates yet: a template is a named, versioned launch configuration." } }
            ul.templates {
                @for t in &list {
                    li {
                        a href={ "/templates/" (t.id) } { strong { (t.spec.name) } }
                        span.muted { " · " (t.spec.agent) " · v" (t.version) }
                        @if !t.spec.description.is_empty() { br; span { (t.spec.description) } }
                    }
                }
            }
        },
    ))
}

fn template_fields(t: Option<&TemplateRecord>) -> Markup {
    let s = t.map(|t| &t.spec);
    let res = s.map(|s| s.resources).unwrap_or_default();
    html! {
        label { "Name" input name="name" required maxlength="64" value=[s.map(|s| s.name.as_str())]; }
        label { "Description" input name="description" value=[s.map(|s| s.description.as_str())]; }
        label { "Repositories (one git URL or absolute path per line; the first is the checkout)"
            textarea name="repos" rows="2" { (s.map(|s| s.repos.join("\n")).unwrap_or_default()) } }
        div.grid {
            label { "Agent"
                select name="agent" {
                    @for a in AgentKind::ALL {
                        option value=(a.as_str()) selected[s.is_some_and(|s| s.agent == a)] { (a) }
                    }
                }
            }
            label { "Model" input name="model" placeholder="agent default" value=[s.and_then(|s| s.model.as_deref())]; }
        }
        label { "System prompt" textarea name="system_prompt" rows="4" { (s.and_then(|s| s.system_prompt.clone()).unwrap_or_default()) } }
        label { "First message" textarea name="first_message" rows="2" { (s.and_then(|s| s.first_message.clone()).unwrap_or_default()) } }
        div.grid {
            label { "CPUs" input name="cpus" type="number" step="0.1" min="0.1" value=(res.cpus); }
            label { "Memory (MiB)" input name="memory_mib" type="number" min="64" value=(res.memory_mib); }
            label { "Processes" input name="pids" type="number" min="16" value=(res.pids); }
        }
        div.grid {
            label { "Image" input name="image" placeholder="default" value=[s.and_then(|s| s.image.as_deref())]; }
            label { "Stop when idle for" input name="idle_stop" placeholder="daemon default (e.g. 30m, 2h, never)"
                value=[s.and_then(|s| s.policy.idle_stop_secs).map(|v| if v == 0 { "never".to_owned() } else { format!("{v}s") })]; }
        }
    }
}

pub async fn template_form(Extension(auth): Extension<Auth>) -> Page {
    layout(
        "New template",
        &auth,
        html! {
            h2 { "New template" }
            form method="post" action="/templates" {
                input type="hidden" name="csrf" value=(auth.csrf);
                (template_fields(None))
                button type="submit" { "Save" }
            }
        },
    )
}

#[derive(Deserialize)]
pub struct VersionQuery {
    #[serde(default)]
    version: Option<u32>,
}

pub async fn template_edit(
    State(w): State<WebState>,
    Extension(auth): Extension<Auth>,
    Path(id): Path<String>,
    Query(q): Query<VersionQuery>,
) -> Result<Page, Page> {
    let store = w.app.engine.store();
    let internal =
        |x: kraal_store::StoreError| error_page(&auth, kraal_engine::EngineError::from(x).into());
    let Some(t) = store.template(&id, q.version).map_err(internal)? else {
        return Err(error_page(
            &auth,
            HttpError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no template {id}"),
            ),
        ));
    };
    let versions = store.template_versions(&id).map_err(internal)?;
    Ok(layout(
        &t.spec.name,
        &auth,
        html! {
            div.row-head {
                h2 { (t.spec.name) " " span.muted { "v" (t.version) } }
                form.inline method="post" action={ "/templates/" (t.id) "/delete" } {
                    input type="hidden" name="csrf" value=(auth.csrf);
                    button.secondary.outline.small type="submit" { "Delete" }
                }
            }
            article {
                header { "Launch" }
                form method="post" action={ "/templates/" (t.id) "/launch" } {
                    input type="hidden" name="csrf" value=(auth.csrf);
                    input type="hidden" name="version" value=(t.version);
                    div role="group" {
                        input name="workspace" placeholder="workspace name (optional)";
                        button type="submit" { "Launch v" (t.version) }
                    }
                }
            }
            h3 { "Edit (saves a new version)" }
            form method="post" action={ "/templates/" (t.id) } {
                input type="hidden" name="csrf" value=(auth.csrf);
                (template_fields(Some(&t)))
                button type="submit" { "Save as v" (versions.first().map(|v| v.0 + 1).unwrap_or(1)) }
            }
            h3 { "Versions" }
            ul { @for (v, at) in &versions { li { a href={ "/templates/" (t.id) "?version=" (v) } { "v" (v) } span.muted { " · " (short_time(at)) } } } }
        },
    ))
}

pub async fn logs(
    State(w): State<WebState>,
    Extension(auth): Extension<Auth>,
) -> Result<Page, Page> {
    let events = w
        .app
        .engine
        .store()
        .all_events(300)
        .map_err(|x| error_page(&auth, kraal_engine::EngineError::from(x).into()))?;
    Ok(layout(
        "Logs",
        &auth,
        html! {
            h2 { "Logs" }
            p.muted { "Lifecycle events of every workspace, newest first." }
            table.striped {
                thead { tr { th { "Time" } th { "Workspace" } th { "Level" } th { "Event" } } }
                tbody {
                    @for (ws, e) in &events {
                        tr.{"lvl-" (e.level)} {
                            td.muted { (short_time(&e.at)) }
                            td { a href={ "/w/" (ws) } { (ws) } }
                            td { (e.level) }
                            td { (e.message) }
                        }
                    }
                }
            }
        },
    ))
}
