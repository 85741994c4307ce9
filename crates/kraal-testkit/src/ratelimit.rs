//! A fixed-window request limit for the scripted model, the way providers enforce one:
//! every answer carries the window's limit, what is left and when it resets (Anthropic's
//! `anthropic-ratelimit-requests-*` on the Messages API, OpenAI's `x-ratelimit-*`
//! elsewhere), and a request over the limit gets a 429 with `retry-after`. Tests count the
//! 429s to show whether a client paced itself.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::extract::{Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use crate::Inner;

/// `"rate_limit": {"requests": 2, "window_ms": 3000}` in a scenario.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct RateLimitSpec {
    pub requests: u64,
    pub window_ms: u64,
}

/// The window now.
#[derive(Debug, Default)]
pub(crate) struct Window {
    start: Option<(Instant, SystemTime)>,
    used: u64,
    pub(crate) limited: u64,
}

fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

pub(crate) async fn limit(
    State(inner): State<Arc<Mutex<Inner>>>,
    req: Request,
    next: Next,
) -> Response {
    let anthropic = req.uri().path().contains("/v1/messages");
    let decided = decide(&inner);
    let Some(decided) = decided else {
        return next.run(req).await;
    };
    finish(decided, anthropic, req, next).await
}

type Decision = (bool, u64, u64, SystemTime, Duration);

fn decide(inner: &Mutex<Inner>) -> Option<Decision> {
    {
        let mut g = inner.lock().unwrap();
        let spec = g.rate_limit?;
        let window = Duration::from_millis(spec.window_ms.max(1));
        let now = Instant::now();
        let w = &mut g.window;
        if w.start.is_none_or(|(s, _)| now >= s + window) {
            w.start = Some((now, SystemTime::now()));
            w.used = 0;
        }
        let (start, wall) = w.start.expect("set above");
        let reset_in = (start + window).saturating_duration_since(now);
        let over = w.used >= spec.requests;
        if over {
            w.limited += 1;
        } else {
            w.used += 1;
        }
        Some((
            over,
            spec.requests,
            spec.requests - w.used.min(spec.requests),
            wall + window,
            reset_in,
        ))
    }
}

async fn finish(d: Decision, anthropic: bool, req: Request, next: Next) -> Response {
    let (over, lim, left, reset_at, reset_in) = d;
    let mut resp = if over {
        let retry = reset_in.as_secs() + u64::from(reset_in.subsec_nanos() > 0);
        let body = if anthropic {
            json!({"type": "error", "error": {"type": "rate_limit_error", "message": "scripted model: request limit reached"}})
        } else {
            json!({"error": {"type": "requests", "code": "rate_limit_exceeded", "message": "scripted model: request limit reached"}})
        };
        let mut r = (axum::http::StatusCode::TOO_MANY_REQUESTS, axum::Json(body)).into_response();
        r.headers_mut()
            .insert("retry-after", HeaderValue::from(retry.max(1)));
        r
    } else {
        next.run(req).await
    };
    let h = resp.headers_mut();
    let set = |h: &mut axum::http::HeaderMap, k: &'static str, v: String| {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(k, v);
        }
    };
    if anthropic {
        set(h, "anthropic-ratelimit-requests-limit", lim.to_string());
        set(
            h,
            "anthropic-ratelimit-requests-remaining",
            left.to_string(),
        );
        set(h, "anthropic-ratelimit-requests-reset", rfc3339(reset_at));
    } else {
        set(h, "x-ratelimit-limit-requests", lim.to_string());
        set(h, "x-ratelimit-remaining-requests", left.to_string());
        set(
            h,
            "x-ratelimit-reset-requests",
            format!("{}ms", reset_in.as_millis().max(1)),
        );
    }
    resp
}

#[cfg(test)]
mod tests {
    #[test]
    fn times_are_rfc3339() {
        let t =
            std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_800_000_000_250);
        assert_eq!(super::rfc3339(t), "2027-01-15T08:00:00.25Z");
    }
}
