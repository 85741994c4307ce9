//! Turns the engine's notices into Web Push messages for every subscription whose rules
//! want them: a turn finished, a session failed, an approval is needed (with Approve and
//! Deny buttons that carry single-use capabilities for that one request), an egress
//! request was refused. It runs on its own task and hands messages to the dispatcher
//! without waiting, so a slow or dead push service never touches the event path.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kraal_api::NotificationKind;
use kraal_core::{AgentEvent, SessionState};
use kraal_engine::Notice;
use kraal_push::{Job, SubscriptionKeys, Urgency};
use kraal_store::PushSubscriptionRecord;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use crate::AppState;
use crate::push::Push;

/// How long a push service keeps a message for a device that is offline.
const TTL_SECS: u32 = 24 * 3600;
/// An egress refusal of the same host in the same workspace is pushed at most this often.
const EGRESS_QUIET: Duration = Duration::from_secs(600);

/// Starts the notifier (nothing to do without push).
pub fn spawn(state: AppState) -> Option<JoinHandle<()>> {
    let push = state.push.clone()?;
    let mut rx = state.engine.subscribe_notices();
    Some(tokio::spawn(async move {
        let mut quiet: HashMap<(String, String), Instant> = HashMap::new();
        loop {
            match rx.recv().await {
                Ok(n) => handle(&state, &push, n, &mut quiet),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(k)) => {
                    tracing::warn!("notifier fell behind; {k} notices were not pushed");
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    }))
}

/// Hands one message for `sub` to the dispatcher (never waits).
pub(crate) fn enqueue(
    push: &Push,
    sub: &PushSubscriptionRecord,
    payload: Value,
    urgency: Urgency,
    topic: Option<String>,
) {
    let Ok(keys) = SubscriptionKeys::from_b64(&sub.p256dh, &sub.auth) else {
        tracing::warn!(subscription = %sub.id, "stored subscription keys are invalid; skipping");
        return;
    };
    let job = Job {
        key: sub.id.clone(),
        endpoint: sub.endpoint.clone(),
        keys,
        payload: fit(payload),
        ttl_secs: TTL_SECS,
        urgency,
        topic,
    };
    if !push.dispatcher.push(job) {
        tracing::warn!(subscription = %sub.id, "push queue full; a notification was dropped");
    }
}

/// The payload as bytes, its body shortened until it fits one push message.
fn fit(mut payload: Value) -> Vec<u8> {
    loop {
        let bytes = payload.to_string().into_bytes();
        if bytes.len() <= kraal_push::MAX_PLAINTEXT {
            return bytes;
        }
        let body = payload["body"].as_str().unwrap_or("").to_owned();
        if body.is_empty() {
            // Nothing left to cut: send only what the worker needs to show something.
            return json!({"kind": payload["kind"], "title": payload["title"], "url": payload["url"]})
                .to_string()
                .into_bytes();
        }
        let keep = body.chars().count() / 2;
        payload["body"] = Value::String(body.chars().take(keep).collect::<String>() + "…");
    }
}

fn short(text: &str, n: usize) -> String {
    let t = text.trim();
    if t.chars().count() <= n {
        t.to_owned()
    } else {
        t.chars().take(n).collect::<String>() + "…"
    }
}

/// Subscriptions that want `kind` for workspace `ws`.
fn wanting(state: &AppState, kind: NotificationKind, ws: &str) -> Vec<PushSubscriptionRecord> {
    state
        .engine
        .store()
        .push_subscriptions()
        .unwrap_or_default()
        .into_iter()
        .filter(|s| s.kinds.iter().any(|k| k == kind.as_str()))
        .filter(|s| s.workspaces.is_empty() || s.workspaces.iter().any(|w| w == ws))
        .collect()
}

fn workspace_name(state: &AppState, id: &kraal_core::WorkspaceId) -> String {
    state
        .engine
        .store()
        .get(id)
        .ok()
        .flatten()
        .map(|r| r.name.to_string())
        .unwrap_or_else(|| id.to_string())
}

/// The newest assistant text of a session (what a finished turn said).
fn last_words(state: &AppState, s: &kraal_store::SessionRecord) -> Option<String> {
    let from = s.last_seq.saturating_sub(40);
    let events = state.engine.session_events(&s.id, from, 40).ok()?;
    events.iter().rev().find_map(|e| match &e.event {
        AgentEvent::AssistantText { text } => Some(text.clone()),
        _ => None,
    })
}

fn handle(
    state: &AppState,
    push: &Arc<Push>,
    notice: Notice,
    quiet: &mut HashMap<(String, String), Instant>,
) {
    match notice {
        Notice::State(c) => {
            let kind = if c.state == SessionState::Failed {
                NotificationKind::Failed
            } else if c.turn_ended {
                NotificationKind::TurnDone
            } else {
                return;
            };
            let subs = wanting(state, kind, c.workspace.as_str());
            if subs.is_empty() {
                return;
            }
            let ws = workspace_name(state, &c.workspace);
            let session = state.engine.session(c.session.as_str()).ok();
            let title_of = session
                .as_ref()
                .map(|s| s.title.clone())
                .unwrap_or_default();
            let (title, body) = match kind {
                NotificationKind::Failed => (
                    format!("{ws}: session failed"),
                    format!(
                        "{}{}",
                        short(&title_of, 80),
                        c.reason
                            .map(|r| format!(" — {}", short(&r, 300)))
                            .unwrap_or_default()
                    ),
                ),
                _ => {
                    let said = session.as_ref().and_then(|s| last_words(state, s));
                    (
                        format!(
                            "{ws}: {}",
                            if c.state == SessionState::Done {
                                "session ended"
                            } else {
                                "turn finished"
                            }
                        ),
                        match said {
                            Some(t) => format!("{} — {}", short(&title_of, 80), short(&t, 400)),
                            None => short(&title_of, 200),
                        },
                    )
                }
            };
            for sub in subs {
                let payload = json!({
                    "kind": kind.as_str(),
                    "title": title,
                    "body": body,
                    "tag": c.session.as_str(),
                    "url": format!("{}/s/{}", sub.origin, c.session),
                    "session": c.session.as_str(),
                    "workspace": ws,
                    "state": c.state.as_str(),
                });
                enqueue(
                    push,
                    &sub,
                    payload,
                    Urgency::Normal,
                    Some(topic(c.session.as_str())),
                );
            }
        }
        Notice::Approval {
            session,
            workspace,
            request_id,
            tool,
            input,
            description,
        } => {
            let subs = wanting(state, NotificationKind::Approval, workspace.as_str());
            if subs.is_empty() {
                return;
            }
            let ws = workspace_name(state, &workspace);
            let what = crate::web::tool_summary(&tool, &input);
            let body = match &description {
                Some(d) if !what.contains(d.as_str()) => format!("{what}\n{d}"),
                _ => what,
            };
            let ttl = push.config.action_ttl.as_secs() as i64;
            for sub in subs {
                let cap = crate::web::random_token();
                if let Err(e) = state.engine.store().insert_push_action(
                    &cap,
                    session.as_str(),
                    &request_id,
                    Some(&sub.id),
                    ttl,
                ) {
                    tracing::warn!("cannot record a notification action: {e}");
                    continue;
                }
                let act = |decision: &str| {
                    format!(
                        "{}/act/{}/{}/{decision}?c={cap}",
                        sub.origin,
                        session,
                        crate::web::urlencode(&request_id)
                    )
                };
                let payload = json!({
                    "kind": "approval",
                    "title": format!("{ws}: {tool} needs approval"),
                    "body": short(&body, 600),
                    "tag": format!("{session}:{request_id}"),
                    "url": format!("{}/s/{}", sub.origin, session),
                    "session": session.as_str(),
                    "workspace": ws,
                    "request": request_id,
                    "tool": tool,
                    "expires_in": ttl,
                    "actions": [
                        {"action": "approve", "title": "Approve", "url": act("approve")},
                        {"action": "deny", "title": "Deny", "url": act("deny")},
                    ],
                });
                enqueue(push, &sub, payload, Urgency::High, None);
            }
        }
        Notice::Answered {
            session,
            request_id,
        } => {
            // Buttons on other devices stop working, and their notification goes away.
            let _ = state
                .engine
                .store()
                .spend_push_actions(session.as_str(), &request_id);
            let Ok(s) = state.engine.session(session.as_str()) else {
                return;
            };
            for sub in wanting(state, NotificationKind::Approval, s.workspace_id.as_str()) {
                let payload = json!({
                    "kind": "answered",
                    "tag": format!("{session}:{request_id}"),
                    "session": session.as_str(),
                    "request": request_id,
                });
                enqueue(push, &sub, payload, Urgency::Normal, None);
            }
        }
        Notice::EgressRefused {
            workspace,
            host,
            port,
            reason,
        } => {
            let key = (workspace.to_string(), host.clone());
            if quiet.get(&key).is_some_and(|t| t.elapsed() < EGRESS_QUIET) {
                return;
            }
            quiet.insert(key, Instant::now());
            quiet.retain(|_, t| t.elapsed() < EGRESS_QUIET);
            let subs = wanting(state, NotificationKind::Egress, workspace.as_str());
            if subs.is_empty() {
                return;
            }
            let ws = workspace_name(state, &workspace);
            for sub in subs {
                let payload = json!({
                    "kind": "egress",
                    "title": format!("{ws}: connection refused"),
                    "body": short(&format!("{host}:{port} — {reason}"), 500),
                    "tag": format!("egress:{ws}"),
                    "url": format!("{}/w/{}", sub.origin, ws),
                    "workspace": ws,
                    "host": host,
                    "port": port,
                });
                enqueue(push, &sub, payload, Urgency::Low, None);
            }
        }
        Notice::BudgetHeld { workspace, reason } => {
            let subs = wanting(state, NotificationKind::Budget, workspace.as_str());
            let ws = workspace_name(state, &workspace);
            for sub in subs {
                let payload = json!({
                    "kind": "budget",
                    "title": format!("{ws}: budget reached, the agent waits"),
                    "body": short(&reason, 500),
                    "tag": format!("budget:{ws}"),
                    "url": format!("{}/budget", sub.origin),
                    "workspace": ws,
                });
                enqueue(push, &sub, payload, Urgency::High, None);
            }
        }
    }
}

/// A push topic (at most 32 URL-safe characters) per session, so a newer message about
/// it replaces an undelivered older one.
fn topic(session: &str) -> String {
    session
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(32)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_cut_to_fit_one_push_message() {
        let big = json!({"kind": "approval", "title": "t", "body": "x".repeat(20_000), "url": "/"});
        let b = fit(big);
        assert!(b.len() <= kraal_push::MAX_PLAINTEXT, "{}", b.len());
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert!(v["body"].as_str().unwrap().ends_with('…'));
        assert_eq!(v["title"], "t");
        let small = json!({"kind": "x", "body": "short"});
        assert_eq!(fit(small.clone()), small.to_string().into_bytes());
    }

    #[test]
    fn topics_are_short_and_url_safe() {
        assert_eq!(topic("se-0123456789ab"), "se0123456789ab");
        assert!(topic(&"a-".repeat(40)).len() <= 32);
    }
}
