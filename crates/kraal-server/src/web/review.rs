//! Reviewing a workspace's changes from a phone: the diff as numbered lines, each one a
//! tap target for a comment (the form is added by `app.js`), comments shown under their
//! lines as resolved or open, and a form that sends the open ones to a session (new or
//! existing) as one message quoting file, line and code. Every action answers with the
//! whole diff fragment again, so the page shows exactly what is stored.

use axum::Extension;
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use kraal_core::{AgentKind, AgentSpec, SessionState};
use kraal_engine::{DiffFile, LineKind, NewComment, ReviewTarget, Side};
use kraal_store::CommentRecord;
use maud::{Markup, html};
use serde::Deserialize;

use super::WebState;
use super::auth::Auth;
use super::pages::Page;
use crate::error::HttpError;

fn fragment_error(e: HttpError) -> Response {
    Page(
        e.status,
        html! { div #diff { p.error { (e.body.message) } } },
    )
    .into_response()
}

fn comment_card(ws: &str, c: &CommentRecord) -> Markup {
    let resolved = c.resolved_at.is_some();
    html! {
        div.comment.resolved[resolved] data-comment=(c.id) {
            div.comment-head {
                strong { (c.author) }
                span.muted { " · " (super::pages::short_time(&c.created_at)) }
                @if resolved { " " span.badge data-state="done" { "resolved" } }
                @else { " " span.badge data-state="needs_approval" { "open" } }
                @if let Some(s) = &c.sent_to { " " a.muted href={ "/s/" (s) } { "sent to " (s) } }
            }
            div.text { (c.body) }
            div.comment-actions {
                button.secondary.outline.small type="button"
                    hx-post={ "/w/" (ws) "/comments/" (c.id) "/resolve" } hx-vals=(if resolved { r#"{"resolved":"0"}"# } else { r#"{"resolved":"1"}"# })
                    hx-target="#diff" hx-swap="outerHTML" {
                    @if resolved { "Reopen" } @else { "Resolve" }
                }
                button.secondary.outline.small type="button"
                    hx-post={ "/w/" (ws) "/comments/" (c.id) "/delete" } hx-target="#diff" hx-swap="outerHTML" { "Delete" }
            }
        }
    }
}

/// Where a comment sits in the diff: (path, side, line).
fn anchor(c: &CommentRecord) -> (String, String, u32) {
    (c.path.clone(), c.side.clone(), c.line)
}

fn file_block(ws: &str, f: &DiffFile, comments: &[CommentRecord]) -> Markup {
    let status = f.status;
    html! {
        details.diff-file open data-path=(f.path) {
            summary { code { (f.path) } " " span.badge { (status) }
                @if let Some(o) = &f.old_path { span.muted { " from " (o) } } }
            @if f.binary { p.muted { "Binary file." } }
            @else if f.hunks.is_empty() { p.muted { "No text changes." } }
            @else {
                table.review-diff {
                    @for h in &f.hunks {
                        tr.hunk { td.ln {} td.ln {} td.code { (h.header) } }
                        @for l in &h.lines {
                            @let (side, line) = match l.kind {
                                LineKind::Removed => ("old", l.old.unwrap_or(0)),
                                _ => ("new", l.new.unwrap_or(0)),
                            };
                            @let class = match l.kind { LineKind::Added => "add", LineKind::Removed => "del", LineKind::Context => "ctx" };
                            tr.line.(class) data-path=(f.path) data-side=(side) data-line=(line) tabindex="0"
                                aria-label={ "Comment on " (f.path) " line " (line) } {
                                td.ln { @if let Some(o) = l.old { (o) } }
                                td.ln { @if let Some(n) = l.new { (n) } }
                                td.code { span.sign { @match l.kind { LineKind::Added => "+", LineKind::Removed => "-", LineKind::Context => " " } } (l.text) }
                            }
                            @for c in comments.iter().filter(|c| anchor(c) == (f.path.clone(), side.to_owned(), line)) {
                                tr.comments { td colspan="3" { (comment_card(ws, c)) } }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The diff with its comments and the send form (the `#diff` fragment).
pub async fn fragment(w: &WebState, ws: &str) -> Response {
    let e = &w.app.engine;
    let rec = match e.resolve(ws) {
        Ok(r) => r,
        Err(x) => return fragment_error(x.into()),
    };
    let name = rec.name.to_string();
    let diff = match e.review_diff(&name).await {
        Ok(d) => d,
        Err(x) => return fragment_error(x.into()),
    };
    let comments = e.comments(&name).unwrap_or_default();
    let sessions = e.sessions(Some(&name)).unwrap_or_default();
    let open: Vec<&CommentRecord> = comments
        .iter()
        .filter(|c| c.resolved_at.is_none() && c.sent_at.is_none())
        .collect();
    let body = match &diff {
        Err(why) => html! { p.muted { "No git history to compare with: " (why) } },
        Ok(files) => html! {
            @if files.is_empty() { p.muted { "No uncommitted changes." } }
            @for f in files { (file_block(&name, f, &comments)) }
        },
    };
    // Comments whose line is not in the diff any more (the file changed since).
    let shown = |c: &CommentRecord| {
        diff.as_ref().is_ok_and(|files| {
            files.iter().filter(|f| f.path == c.path).any(|f| {
                f.hunks.iter().flat_map(|h| &h.lines).any(|l| match l.kind {
                    LineKind::Removed => c.side == "old" && l.old == Some(c.line),
                    _ => c.side == "new" && l.new == Some(c.line),
                })
            })
        })
    };
    let elsewhere: Vec<&CommentRecord> = comments.iter().filter(|c| !shown(c)).collect();
    Page(
        StatusCode::OK,
        html! {
            div #diff data-ws=(name) {
                @if !open.is_empty() {
                    form.review-send hx-post={ "/w/" (name) "/review/send" } hx-swap="none" {
                        label { "Send " strong { (open.len()) " open comment" @if open.len() != 1 { "s" } } " to"
                            select name="target" {
                                @for s in sessions.iter().filter(|s| s.state != SessionState::Failed) {
                                    option value=(s.id) { (s.title) " (" (s.agent) ", " (s.state.as_str().replace('_', " ")) ")" }
                                }
                                @for a in [AgentKind::Claude, AgentKind::Codex, AgentKind::Gemini] {
                                    option value={ "new:" (a.as_str()) } { "a new " (a) " session" }
                                }
                            }
                        }
                        button type="submit" { "Send to the agent" }
                    }
                }
                p.muted.hint { "Tap a line to comment on it." }
                (body)
                @if !elsewhere.is_empty() {
                    h4 { "Comments on lines not in the diff now" }
                    @for c in elsewhere {
                        div.muted { code { (c.path) ":" (c.line) @if c.side == "old" { " (HEAD)" } } }
                        pre.excerpt { (c.excerpt) }
                        (comment_card(&name, c))
                    }
                }
            }
        },
    )
    .into_response()
}

/// `GET /w/{ws}/diff`.
pub async fn diff(State(w): State<WebState>, Path(ws): Path<String>) -> Response {
    fragment(&w, &ws).await
}

#[derive(Deserialize)]
pub struct CommentForm {
    path: String,
    line: u32,
    #[serde(default)]
    side: String,
    body: String,
}

/// `POST /w/{ws}/comments`: answers with the diff fragment, or the error (422/400) as text.
pub async fn add(
    State(w): State<WebState>,
    Extension(auth): Extension<Auth>,
    Path(ws): Path<String>,
    Form(f): Form<CommentForm>,
) -> Response {
    let r = async {
        let side = Side::parse(&f.side)?;
        w.app
            .engine
            .add_comment(
                &ws,
                NewComment {
                    path: f.path,
                    line: f.line,
                    side,
                    body: f.body,
                },
                &auth.token_name,
            )
            .await
    }
    .await;
    match r {
        Ok(_) => fragment(&w, &ws).await,
        Err(e) => {
            let e: HttpError = e.into();
            (e.status, e.body.message).into_response()
        }
    }
}

#[derive(Deserialize)]
pub struct ResolveForm {
    resolved: String,
}

pub async fn resolve(
    State(w): State<WebState>,
    Path((ws, id)): Path<(String, String)>,
    Form(f): Form<ResolveForm>,
) -> Response {
    match w.app.engine.resolve_comment(&ws, &id, f.resolved == "1") {
        Ok(_) => fragment(&w, &ws).await,
        Err(e) => {
            let e: HttpError = e.into();
            (e.status, e.body.message).into_response()
        }
    }
}

pub async fn delete(State(w): State<WebState>, Path((ws, id)): Path<(String, String)>) -> Response {
    match w.app.engine.delete_comment(&ws, &id) {
        Ok(()) => fragment(&w, &ws).await,
        Err(e) => {
            let e: HttpError = e.into();
            (e.status, e.body.message).into_response()
        }
    }
}

#[derive(Deserialize)]
pub struct SendForm {
    target: String,
}

/// `POST /w/{ws}/review/send`: the open comments to a session; the browser goes there.
pub async fn send(
    State(w): State<WebState>,
    Path(ws): Path<String>,
    headers: HeaderMap,
    Form(f): Form<SendForm>,
) -> Response {
    let target = match f.target.strip_prefix("new:") {
        Some(agent) => match AgentKind::parse(agent) {
            Ok(a) => ReviewTarget::New(AgentSpec::new(a)),
            Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
        },
        None => ReviewTarget::Session(f.target),
    };
    match w.app.engine.send_review(&ws, &[], target).await {
        Ok((s, _)) => {
            let to = format!("/s/{}", s.id);
            if headers.contains_key("hx-request") {
                let mut r = StatusCode::NO_CONTENT.into_response();
                if let Ok(v) = HeaderValue::from_str(&to) {
                    r.headers_mut().insert("hx-redirect", v);
                }
                r
            } else {
                Redirect::to(&to).into_response()
            }
        }
        Err(e) => {
            let e: HttpError = e.into();
            (e.status, e.body.message).into_response()
        }
    }
}
