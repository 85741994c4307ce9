//! Session events as HTML: the history on the session page, and the live stream, where
//! every event arrives as a server-sent event whose `id:` is its sequence number (so a
//! reconnecting browser resumes with `Last-Event-ID`, without gap or duplicate) and whose
//! data is the event already rendered by the server. Agent output is escaped by maud; the
//! browser only inserts finished markup.

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

/// Where the reader's CSRF token goes in a frame rendered once for every reader: a
/// random value of this process, which no agent output can hold by chance or design.
fn csrf_slot() -> &'static str {
    static SLOT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SLOT.get_or_init(super::auth::random_token)
}

/// The web UI's frame of one event — `id:` its sequence number, data the rendered HTML
/// with what the page updates beside it — rendered and encoded once, by the first web
/// reader, and kept with the event in the session's ring for every other reader.
fn frame<'a>(w: &WebState, session: &SessionId, le: &'a kraal_engine::LiveEvent) -> &'a [u8] {
    le.rendered.get_or_init(|| {
        // Usage changes the session's cost shown in the page header.
        let cost = matches!(le.event.event, AgentEvent::Usage { .. })
            .then(|| w.app.engine.store().get_session(session).ok().flatten())
            .flatten()
            .map(|s| format!("${:.4}", s.cost_usd.max(0.0)));
        encode(&le.event, session.as_str(), cost)
    })
}

/// The frame of `e` with the CSRF slot where a reader's token goes.
fn encode(e: &SessionEvent, session: &str, cost: Option<String>) -> bytes::Bytes {
    let kind = serde_json::to_value(&e.event)
        .ok()
        .and_then(|v| v["type"].as_str().map(str::to_owned))
        .unwrap_or_default();
    let state = match &e.event {
        AgentEvent::State { state, .. } => Some(state.as_str()),
        _ => None,
    };
    let html = render(e, session, csrf_slot())
        .map(|m| m.into_string())
        .unwrap_or_default();
    let data =
        serde_json::json!({"seq": e.seq, "kind": kind, "html": html, "state": state, "cost": cost});
    format!("id: {}\ndata: {data}\n\n", e.seq).into()
}

/// Appends `le`'s frame for the reader whose CSRF token is `csrf`: the shared bytes as
/// they are, or — for an approval request, whose buttons post the token — with the
/// reader's token in its slot.
fn push_frame(out: &mut Vec<u8>, frame: &[u8], le: &kraal_engine::LiveEvent, csrf: &str) {
    if !matches!(le.event.event, AgentEvent::ApprovalRequest { .. }) {
        out.extend_from_slice(frame);
        return;
    }
    let slot = csrf_slot().as_bytes();
    let mut rest = frame;
    while let Some(i) = memchr::memmem::find(rest, slot) {
        out.extend_from_slice(&rest[..i]);
        out.extend_from_slice(csrf.as_bytes());
        rest = &rest[i + slot.len()..];
    }
    out.extend_from_slice(rest);
}

/// How long an idle stream waits before it sends a comment.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// `GET /s/{id}/live?after=N`: rendered events as server-sent events. Every event that is
/// there when the reader wakes goes out in one chunk of frames rendered once per event.
pub async fn live(
    State(w): State<WebState>,
    axum::Extension(auth): axum::Extension<super::auth::Auth>,
    Path(id): Path<String>,
    Query(q): Query<EventsQuery>,
    headers: HeaderMap,
) -> Result<axum::response::Response, HttpError> {
    let rec = w.app.engine.session(&id)?;
    let after = resume_point(&q, &headers);
    // Subscribe before the first read, so nothing stored in between is missed.
    let changed = w.app.engine.watch_session(&rec.id);
    let live = Live {
        state: w,
        id: rec.id,
        csrf: auth.csrf,
        after,
        changed,
    };
    let stream = futures::stream::unfold(live, |mut t| async move {
        loop {
            let newest = *t.changed.borrow_and_update();
            t.state
                .app
                .engine
                .metrics()
                .subscriber_lag(newest.saturating_sub(t.after));
            match t.state.app.engine.live_events(&t.id, t.after, 500) {
                Ok(v) if !v.is_empty() => {
                    let mut chunk = Vec::new();
                    for le in &v {
                        let f = frame(&t.state, &t.id, le);
                        push_frame(&mut chunk, f, le, &t.csrf);
                    }
                    t.after = v.last().map_or(t.after, |e| e.seq());
                    t.state
                        .app
                        .engine
                        .metrics()
                        .events_delivered(Reader::Web, v.len() as u64);
                    return Some((Ok::<_, Infallible>(bytes::Bytes::from(chunk)), t));
                }
                Ok(_) => match tokio::time::timeout(KEEP_ALIVE, t.changed.changed()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return None,
                    // A comment now and then, so proxies keep an idle stream open.
                    Err(_) => return Some((Ok(bytes::Bytes::from_static(b":\n\n")), t)),
                },
                Err(e) => {
                    tracing::warn!(session = %t.id, "web event stream: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    });
    Ok(crate::sse::response(stream))
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

    /// What a reader receives for one event from a frame rendered once.
    fn received(e: SessionEvent, csrf: &str) -> (u64, serde_json::Value) {
        let le = kraal_engine::LiveEvent::new(e);
        let f = encode(&le.event, "se-000000000001", Some("$0.0100".into()));
        let mut out = Vec::new();
        push_frame(&mut out, &f, &le, csrf);
        let text = String::from_utf8(out).unwrap();
        let mut lines = text.strip_suffix("\n\n").expect("one whole frame").lines();
        let id = lines
            .next()
            .unwrap()
            .strip_prefix("id: ")
            .unwrap()
            .parse()
            .unwrap();
        let data = lines.next().unwrap().strip_prefix("data: ").unwrap();
        assert_eq!(lines.next(), None, "one data line");
        (id, serde_json::from_str(data).unwrap())
    }

    /// One rendering serves every reader: each reader's approval buttons post its own
    /// token, and the slot appears nowhere else — not even where agent output spells it.
    #[test]
    fn a_frame_rendered_once_carries_each_readers_own_token() {
        let ask = ev(AgentEvent::ApprovalRequest {
            request_id: "r1".into(),
            tool: "Bash".into(),
            input: serde_json::json!({"command": "ls"}),
            description: None,
        });
        let le = kraal_engine::LiveEvent::new(ask.clone());
        let f = encode(&le.event, "se-000000000001", None);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        push_frame(&mut a, &f, &le, "tokenofreadera");
        push_frame(&mut b, &f, &le, "tokenofreaderb");
        let (a, b) = (String::from_utf8(a).unwrap(), String::from_utf8(b).unwrap());
        assert!(a.contains(r#"value=\"tokenofreadera\""#), "{a}");
        assert!(
            b.contains(r#"value=\"tokenofreaderb\""#) && !b.contains("tokenofreadera"),
            "{b}"
        );
        assert!(!a.contains(csrf_slot()) && !b.contains(csrf_slot()));

        let (seq, data) = received(ask, "t");
        assert_eq!(seq, 7);
        assert_eq!(data["kind"], "approval_request");
        assert!(data["html"].as_str().unwrap().contains("Approve"));

        // Agent text is shown as it is, whatever it holds; no token goes into it.
        let (_, data) = received(
            ev(AgentEvent::AssistantText {
                text: format!("see {}", csrf_slot()),
            }),
            "secret",
        );
        let html = data["html"].as_str().unwrap();
        assert!(
            html.contains(csrf_slot()) && !html.contains("secret"),
            "{html}"
        );
    }

    #[test]
    fn frames_say_kind_state_and_cost_beside_the_html() {
        let (seq, data) = received(
            ev(AgentEvent::State {
                state: SessionState::WaitingForInput,
                reason: None,
            }),
            "t",
        );
        assert_eq!(seq, 7);
        assert_eq!(data["kind"], "state");
        assert_eq!(data["state"], "waiting_for_input");
        assert_eq!(data["cost"], "$0.0100");
        let (_, data) = received(
            ev(AgentEvent::CommandRun {
                command: "ls".into(),
                exit_code: None,
            }),
            "t",
        );
        assert_eq!(
            data["html"], "",
            "events with nothing to show still advance the page"
        );
    }
}
