//! Use tracking for idle stop: every request about a workspace (or one of its sessions)
//! holds the workspace in use until its response body is finished, so an open event
//! stream or live page keeps it running; WebSocket handlers take their own hold for the
//! life of the socket.

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use kraal_engine::{ActivityHold, Engine};

/// The workspace or session a request path is about: `/v1/workspaces/{ws}/…`, `/w/{ws}/…`
/// (a workspace name or id) or `/v1/sessions/{id}/…`, `/s/{id}/…` (a session).
fn subject(path: &str) -> Option<(bool, &str)> {
    let rest = path
        .strip_prefix("/v1/workspaces/")
        .map(|r| (true, r))
        .or_else(|| path.strip_prefix("/w/").map(|r| (true, r)))
        .or_else(|| path.strip_prefix("/v1/sessions/").map(|r| (false, r)))
        .or_else(|| path.strip_prefix("/s/").map(|r| (false, r)))
        .or_else(|| path.strip_prefix("/p/").map(|r| (true, r)))?;
    let first = rest.1.split('/').next().filter(|s| !s.is_empty())?;
    Some((rest.0, first))
}

/// The hold for the workspace `path` is about, if any.
pub fn hold_for(engine: &std::sync::Arc<Engine>, path: &str) -> Option<ActivityHold> {
    let (is_ws, reference) = subject(path)?;
    let reference = percent_decode(reference);
    let id = if is_ws {
        engine.resolve(&reference).ok()?.id
    } else {
        engine.session(&reference).ok()?.workspace_id
    };
    Some(engine.hold(&id))
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// Middleware: holds the request's workspace until the response body ends. Reading a
/// workspace's own record (`GET /v1/workspaces/{ws}`, what status polls do) is not use.
pub async fn track(
    State(engine): State<std::sync::Arc<Engine>>,
    req: Request,
    next: Next,
) -> Response {
    let path = req.uri().path();
    let status_read = req.method() == axum::http::Method::GET
        && path
            .strip_prefix("/v1/workspaces/")
            .is_some_and(|r| !r.trim_end_matches('/').contains('/'));
    let hold = if status_read {
        None
    } else {
        hold_for(&engine, path)
    };
    let res = next.run(req).await;
    match hold {
        None => res,
        Some(hold) => held(res, hold),
    }
}

/// `res` with `hold` kept until its body is finished.
pub(crate) fn held(res: Response, hold: ActivityHold) -> Response {
    res.map(|body| {
        Body::new(Held {
            inner: body,
            _hold: hold,
        })
    })
}

/// A response body that keeps a hold until it is dropped.
struct Held {
    inner: Body,
    _hold: ActivityHold,
}

impl http_body::Body for Held {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_name_their_workspace_or_session() {
        assert_eq!(subject("/v1/workspaces/demo/exec"), Some((true, "demo")));
        assert_eq!(subject("/v1/workspaces/demo"), Some((true, "demo")));
        assert_eq!(subject("/w/ws-1a2b/files"), Some((true, "ws-1a2b")));
        assert_eq!(
            subject("/v1/sessions/se-12ab/stream"),
            Some((false, "se-12ab"))
        );
        assert_eq!(subject("/s/se-12ab"), Some((false, "se-12ab")));
        assert_eq!(subject("/v1/workspaces"), None);
        assert_eq!(subject("/v1/workspaces/"), None);
        assert_eq!(subject("/v1/backups/bk-1"), None);
        assert_eq!(percent_decode("my%20ws"), "my ws");
        assert_eq!(percent_decode("bad%2"), "bad%2");
    }
}
