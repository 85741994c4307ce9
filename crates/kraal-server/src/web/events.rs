//! Session events as HTML: the history on the session page, and the live stream, where
//! every event arrives as a server-sent event whose `id:` is its sequence number (so a
//! reconnecting browser resumes with `Last-Event-ID`, without gap or duplicate) and whose
//! data is the event already rendered by the server. Agent output is escaped by maud; the
//! browser only inserts finished markup.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use kraal_api::EventsQuery;
use kraal_core::{AgentEvent, FileChangeKind, SessionEvent, SessionId, SessionState};
use kraal_metrics::Reader;
use maud::{Markup, html};

use super::WebState;
use super::pages::state_badge;
use crate::error::HttpError;

/// Diff text with added and removed lines marked.
pub fn diff_block(diff: &str) -> Markup {
    html! {
        pre.diff {
            @for line in diff.lines() {
                @let class = if line.starts_with("+++") || line.starts_with("---") { "meta" }
                    else if line.starts_with('+') { "add" }
                    else if line.starts_with('-') { "del" }
                    else if line.starts_with("@@") { "hunk" }
                    else { "" };
                span class=(class) { (line) "\n" }
            }
        }
    }
}

fn pretty(v: &serde_json::Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

pub(crate) fn tool_summary(name: &str, input: &serde_json::Value) -> String {
    let detail = [
        "command",
        "file_path",
        "filePath",
        "path",
        "pattern",
        "url",
        "description",
    ]
    .iter()
    .find_map(|k| input.get(*k).and_then(|v| v.as_str()))
    .unwrap_or("");
    let detail: String = detail.chars().take(120).collect();
    if detail.is_empty() {
        name.to_owned()
    } else {
        format!("{name} {detail}")
    }
}

/// One event; `None` for events with nothing to show.
pub fn render(e: &SessionEvent, session: &str, csrf: &str) -> Option<Markup> {
    render_with(e, session, csrf, false)
}

/// One event; an approval request that was `answered` already shows no buttons.
fn render_with(e: &SessionEvent, session: &str, csrf: &str, answered: bool) -> Option<Markup> {
    let m = match &e.event {
        AgentEvent::UserMessage { text, attachments } => html! {
            div.ev.user data-seq=(e.seq) {
                div.who { "You" }
                div.text { (text) }
                @if !attachments.is_empty() {
                    div.attachments {
                        @for a in attachments {
                            @let href = format!("/s/{session}/attachment?path={}", super::auth::urlencode(&a.path));
                            @if a.is_image() {
                                a href=(href) target="_blank" rel="noopener" { img.thumb src=(href) alt=(a.name) loading="lazy"; }
                            } @else {
                                a.file href=(href) { "📄 " (a.name) }
                            }
                        }
                    }
                }
            }
        },
        AgentEvent::AssistantDelta { text } => html! { span.delta { (text) } },
        AgentEvent::AssistantText { text } => html! {
            div.ev.assistant data-seq=(e.seq) { div.text { (text) } }
        },
        AgentEvent::Thinking { text } => html! {
            details.ev.thinking data-seq=(e.seq) { summary { "Thinking" } div.text { (text) } }
        },
        AgentEvent::ToolCall { id, name, input } => html! {
            details.ev.tool data-seq=(e.seq) data-tool=(id) {
                summary { "⚙ " (tool_summary(name, input)) }
                pre { (pretty(input)) }
            }
        },
        AgentEvent::ToolResult {
            output, is_error, ..
        } => {
            let lines = output.lines().count();
            html! {
                details.ev.result.error[*is_error] data-seq=(e.seq) {
                    summary { "↳ " @if *is_error { "error, " } (lines) " line" @if lines != 1 { "s" } }
                    pre { (output) }
                }
            }
        }
        AgentEvent::FileChange { path, kind, diff } => {
            let verb = match kind {
                FileChangeKind::Created => "created",
                FileChangeKind::Modified => "modified",
                FileChangeKind::Deleted => "deleted",
            };
            html! {
                div.ev.file data-seq=(e.seq) {
                    div { "✎ " (verb) " " code { (path) } }
                    @if let Some(d) = diff { (diff_block(d)) }
                }
            }
        }
        AgentEvent::CommandRun { .. } | AgentEvent::AgentSession { .. } => return None,
        AgentEvent::ApprovalRequest {
            request_id,
            tool,
            input,
            description,
        } => html! {
            div.ev.approval data-seq=(e.seq) data-request=(request_id) {
                div { strong { (tool) } " asks for approval" }
                @if let Some(d) = description { div.text { (d) } }
                pre { (pretty(input)) }
                @if !answered { form.decide method="post" action={ "/s/" (session) "/decide" } hx-post={ "/s/" (session) "/decide" } hx-swap="none" {
                    input type="hidden" name="csrf" value=(csrf);
                    input type="hidden" name="request" value=(request_id);
                    button type="submit" name="allow" value="1" { "Approve" }
                    button.secondary type="submit" name="allow" value="0" { "Deny" }
                } }
            }
        },
        AgentEvent::ApprovalDecision {
            request_id,
            allow,
            message,
        } => html! {
            div.ev.decision.muted data-seq=(e.seq) data-request=(request_id) {
                @if *allow { "✔ approved" } @else { "✘ denied" }
                @if let Some(m) = message { ": " (m) }
            }
        },
        AgentEvent::Usage {
            input_tokens,
            output_tokens,
            cost_usd,
            ..
        } => html! {
            div.ev.usage.muted data-seq=(e.seq) {
                (input_tokens) " in / " (output_tokens) " out tokens"
                @if let Some(c) = cost_usd { " · $" (format!("{c:.4}")) }
            }
        },
        AgentEvent::Error { message } => html! {
            div.ev.error data-seq=(e.seq) { "✗ " (message) }
        },
        AgentEvent::State { state, reason } => {
            if matches!(state, SessionState::Starting | SessionState::Working) {
                return None;
            }
            html! {
                div.ev.state data-seq=(e.seq) {
                    (state_badge(state.as_str()))
                    @if let Some(r) = reason { " " span.muted { (r) } }
                }
            }
        }
    };
    Some(m)
}

/// The stored history, compactly: streamed fragments are left out in favour of the
/// complete text that follows them.
pub fn history(events: &[SessionEvent], session: &str, csrf: &str) -> Markup {
    // Requests answered later in the log (from the page, the CLI or a notification).
    let answered: std::collections::HashSet<&str> = events
        .iter()
        .filter_map(|e| match &e.event {
            AgentEvent::ApprovalDecision { request_id, .. } => Some(request_id.as_str()),
            _ => None,
        })
        .collect();
    html! {
        @for e in events {
            @if !matches!(e.event, AgentEvent::AssistantDelta { .. }) {
                @let done = matches!(&e.event, AgentEvent::ApprovalRequest { request_id, .. } if answered.contains(request_id.as_str()));
                @if let Some(m) = render_with(e, session, csrf, done) { (m) }
            }
        }
    }
}

struct Live {
    state: WebState,
    id: SessionId,
    csrf: String,
    after: u64,
    buf: VecDeque<std::sync::Arc<kraal_engine::LiveEvent>>,
    changed: tokio::sync::watch::Receiver<u64>,
}

fn resume_point(q: &EventsQuery, headers: &HeaderMap) -> u64 {
    let header = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    q.after.max(header)
}

/// `GET /s/{id}/live?after=N`: rendered events as server-sent events.
pub async fn live(
    State(w): State<WebState>,
    axum::Extension(auth): axum::Extension<super::auth::Auth>,
    Path(id): Path<String>,
    Query(q): Query<EventsQuery>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, HttpError> {
    let rec = w.app.engine.session(&id)?;
    let after = resume_point(&q, &headers);
    let changed = w.app.engine.watch_session(&rec.id);
    let live = Live {
        state: w,
        id: rec.id,
        csrf: auth.csrf,
        after,
        buf: VecDeque::new(),
        changed,
    };
    let stream = futures::stream::unfold(live, |mut t| async move {
        loop {
            if let Some(e) = t.buf.pop_front() {
                let e = &e.event;
                t.after = e.seq;
                let kind = serde_json::to_value(&e.event)
                    .ok()
                    .and_then(|v| v["type"].as_str().map(str::to_owned))
                    .unwrap_or_default();
                let state = match &e.event {
                    AgentEvent::State { state, .. } => Some(state.as_str()),
                    _ => None,
                };
                let html = render(e, t.id.as_str(), &t.csrf)
                    .map(|m| m.into_string())
                    .unwrap_or_default();
                // Usage changes the session's cost shown in the page header.
                let cost = matches!(e.event, AgentEvent::Usage { .. })
                    .then(|| t.state.app.engine.store().get_session(&t.id).ok().flatten())
                    .flatten()
                    .map(|s| format!("${:.4}", s.cost_usd.max(0.0)));
                let data = serde_json::json!({"seq": e.seq, "kind": kind, "html": html, "state": state, "cost": cost});
                let ev = Event::default()
                    .id(e.seq.to_string())
                    .data(data.to_string());
                t.state.app.engine.metrics().event_delivered(Reader::Web);
                return Some((Ok(ev), t));
            }
            let newest = *t.changed.borrow_and_update();
            let lag = newest.saturating_sub(t.after);
            t.state.app.engine.metrics().subscriber_lag(lag);
            match t.state.app.engine.live_events(&t.id, t.after, 500) {
                Ok(v) if !v.is_empty() => t.buf.extend(v),
                Ok(_) => {
                    if t.changed.changed().await.is_err() {
                        return None;
                    }
                }
                Err(e) => {
                    tracing::warn!(session = %t.id, "web event stream: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// `GET /notify`: every session's state changes, for browser notifications.
pub async fn notify(
    State(w): State<WebState>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let rx = w.app.engine.subscribe_changes();
    let stream = futures::stream::unfold((rx, w), |(mut rx, w)| async move {
        loop {
            match rx.recv().await {
                Ok(c) => {
                    let s = w.app.engine.session(c.session.as_str()).ok();
                    let ws = w
                        .app
                        .engine
                        .store()
                        .get(&c.workspace)
                        .ok()
                        .flatten()
                        .map(|r| r.name.to_string())
                        .unwrap_or_default();
                    let data = serde_json::json!({
                        "session": c.session.as_str(),
                        "workspace": ws,
                        "title": s.map(|s| s.title).unwrap_or_default(),
                        "state": c.state.as_str(),
                        "reason": c.reason,
                    });
                    return Some((Ok(Event::default().data(data.to_string())), (rx, w)));
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => return None,
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(event: AgentEvent) -> SessionEvent {
        SessionEvent {
            seq: 7,
            at_ms: 0,
            event,
        }
    }

    #[test]
    fn agent_output_is_escaped_everywhere() {
        let evil = "<script>alert(1)</script><img src=x onerror=alert(2)>";
        for e in [
            AgentEvent::AssistantText { text: evil.into() },
            AgentEvent::user(evil),
            AgentEvent::ToolResult {
                id: evil.into(),
                output: evil.into(),
                is_error: false,
            },
            AgentEvent::ToolCall {
                id: evil.into(),
                name: evil.into(),
                input: serde_json::json!({ "command": evil }),
            },
            AgentEvent::FileChange {
                path: evil.into(),
                kind: FileChangeKind::Created,
                diff: Some(format!("+{evil}")),
            },
            AgentEvent::ApprovalRequest {
                request_id: evil.into(),
                tool: evil.into(),
                input: serde_json::json!(evil),
                description: Some(evil.into()),
            },
            AgentEvent::Error {
                message: evil.into(),
            },
        ] {
            let html = render(&ev(e), "se-000000000001", "csrf")
                .unwrap()
                .into_string();
            assert!(
                !html.contains("<script>") && !html.contains("<img"),
                "{html}"
            );
            assert!(html.contains("&lt;script&gt;"), "{html}");
        }
    }

    #[test]
    fn answered_approvals_lose_their_buttons_in_the_history() {
        let ask = SessionEvent {
            seq: 1,
            at_ms: 0,
            event: AgentEvent::ApprovalRequest {
                request_id: "r1".into(),
                tool: "Bash".into(),
                input: serde_json::json!({"command": "ls"}),
                description: None,
            },
        };
        let open = history(std::slice::from_ref(&ask), "se-000000000001", "c").into_string();
        assert!(open.contains("Approve"), "{open}");
        let answer = SessionEvent {
            seq: 2,
            at_ms: 0,
            event: AgentEvent::ApprovalDecision {
                request_id: "r1".into(),
                allow: true,
                message: None,
            },
        };
        let done = history(&[ask, answer], "se-000000000001", "c").into_string();
        assert!(
            !done.contains("Approve") && done.contains("approved"),
            "{done}"
        );
    }

    #[test]
    fn diff_lines_are_marked() {
        let html = diff_block("--- a/x\n+++ b/x\n@@ -1 +1 @@\n-old\n+new\n").into_string();
        assert!(html.contains(r#"<span class="add">+new"#), "{html}");
        assert!(html.contains(r#"<span class="del">-old"#), "{html}");
        assert!(html.contains(r#"<span class="hunk">@@"#), "{html}");
    }
}
