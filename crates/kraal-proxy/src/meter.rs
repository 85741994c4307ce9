//! Metering in the model gateway: the token usage each answer reports (read from the
//! stream as it passes, never delaying it), its price from a table of list prices, and the
//! [`Spending`] hook the daemon implements to record spend and to hold requests while a
//! budget cap is reached; and the daemon's metrics of the gateway (requests, body bytes
//! and errors per provider, `counted`).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use futures::{Stream, TryStreamExt};
use kraal_metrics::Metrics;
use serde_json::Value;

use crate::routes::Provider;

/// Tokens one answer used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
}

/// One metered model request.
#[derive(Debug, Clone, PartialEq)]
pub struct Metered {
    pub workspace: String,
    pub provider: &'static str,
    pub model: String,
    pub usage: Usage,
    /// At list price ([`price_usd`]).
    pub usd: f64,
}

/// What the daemon does with spend: records it, and says whether a workspace's next
/// request must wait (a cap is reached), with the reason shown to the user.
pub trait Spending: Send + Sync {
    fn record(&self, m: Metered);
    /// `Some(reason)` while `workspace` is over one of its caps.
    fn over_cap(&self, workspace: &str) -> Option<String>;
    /// A request of `workspace` started waiting for `reason` (once per request).
    fn held(&self, workspace: &str, reason: &str);
}

/// List prices in USD per million tokens (input, output), by model family; unknown models
/// are priced like the dearest common one of their provider, so a budget errs on the safe
/// side.
pub fn price_per_mtok(provider: &str, model: &str) -> (f64, f64) {
    let m = model.to_ascii_lowercase();
    let table: &[(&str, (f64, f64))] = &[
        ("opus", (15.0, 75.0)),
        ("sonnet", (3.0, 15.0)),
        ("haiku", (1.0, 5.0)),
        ("gpt-5-mini", (0.25, 2.0)),
        ("gpt-5-nano", (0.05, 0.4)),
        ("gpt-5", (1.25, 10.0)),
        ("gpt-4.1-mini", (0.4, 1.6)),
        ("gpt-4.1", (2.0, 8.0)),
        ("o4-mini", (1.1, 4.4)),
        ("o3", (2.0, 8.0)),
        ("gemini-2.5-flash", (0.3, 2.5)),
        ("gemini-2.5-pro", (1.25, 10.0)),
    ];
    if let Some((_, p)) = table.iter().find(|(k, _)| m.contains(k)) {
        return *p;
    }
    match provider {
        "anthropic" => (15.0, 75.0),
        "google" => (1.25, 10.0),
        _ => (2.0, 10.0),
    }
}

pub fn price_usd(provider: &str, model: &str, u: Usage) -> f64 {
    let (i, o) = price_per_mtok(provider, model);
    (u.input_tokens as f64 * i + u.output_tokens as f64 * o) / 1e6
}

/// The model a request names (`"model"` in its JSON body; Gemini puts it in the path).
pub fn model_of(body: &[u8], path: &str) -> String {
    if let Ok(v) = serde_json::from_slice::<Value>(body)
        && let Some(m) = v["model"].as_str()
    {
        return m.to_owned();
    }
    path.split("/models/")
        .nth(1)
        .and_then(|r| r.split([':', '/']).next())
        .unwrap_or("unknown")
        .to_owned()
}

/// Adds the usage objects found in one JSON document of an answer (an SSE `data:` line or
/// a whole JSON body) to `u`. Anthropic reports input in `message_start` and output in
/// `message_delta` (cumulative); OpenAI in `response.completed` or `usage` of a chat
/// completion; Gemini in `usageMetadata` (cumulative per chunk).
fn add_usage(v: &Value, u: &mut Usage) {
    let n = |x: &Value| x.as_u64().unwrap_or(0);
    // Anthropic, streamed.
    if v["type"] == "message_start" {
        let us = &v["message"]["usage"];
        u.input_tokens += n(&us["input_tokens"])
            + n(&us["cache_creation_input_tokens"])
            + n(&us["cache_read_input_tokens"]);
        return;
    }
    if v["type"] == "message_delta" {
        // Cumulative: the last one counts.
        u.output_tokens = n(&v["usage"]["output_tokens"]);
        return;
    }
    // OpenAI Responses, streamed.
    if v["type"] == "response.completed" {
        let us = &v["response"]["usage"];
        u.input_tokens += n(&us["input_tokens"]);
        u.output_tokens += n(&us["output_tokens"]);
        return;
    }
    // Gemini: cumulative in every chunk.
    if let Some(m) = v.get("usageMetadata") {
        u.input_tokens = n(&m["promptTokenCount"]);
        u.output_tokens = n(&m["candidatesTokenCount"]) + n(&m["thoughtsTokenCount"]);
        return;
    }
    // Whole bodies: Anthropic messages, OpenAI responses and chat completions.
    let us = &v["usage"];
    if us.is_object() {
        u.input_tokens += n(&us["input_tokens"]) + n(&us["prompt_tokens"]);
        u.output_tokens += n(&us["output_tokens"]) + n(&us["completion_tokens"]);
    }
}

/// Longest line (or whole JSON body) kept to look for usage; longer ones are skipped.
const MAX_LINE: usize = 1024 * 1024;

/// Passes an answer's bytes through unchanged while reading the usage out of them; when
/// the stream ends (or is dropped half-way) the usage is recorded once.
pub struct Tap<S> {
    inner: S,
    line: Vec<u8>,
    sse: bool,
    skipping: bool,
    usage: Usage,
    report: Option<(Arc<dyn Spending>, Metered)>,
}

impl<S> Tap<S> {
    pub fn new(inner: S, sse: bool, spending: Arc<dyn Spending>, m: Metered) -> Self {
        Tap {
            inner,
            line: Vec::new(),
            sse,
            skipping: false,
            usage: Usage::default(),
            report: Some((spending, m)),
        }
    }

    fn feed(&mut self, chunk: &[u8]) {
        if !self.sse {
            if self.line.len() + chunk.len() <= MAX_LINE {
                self.line.extend_from_slice(chunk);
            } else {
                self.skipping = true;
            }
            return;
        }
        for part in chunk.split_inclusive(|b| *b == b'\n') {
            let complete = part.ends_with(b"\n");
            if !self.skipping {
                if self.line.len() + part.len() > MAX_LINE {
                    self.skipping = true;
                    self.line.clear();
                } else {
                    self.line.extend_from_slice(part);
                }
            }
            if complete {
                if !self.skipping {
                    let line = std::mem::take(&mut self.line);
                    self.parse_line(&line);
                }
                self.skipping = false;
                self.line.clear();
            }
        }
    }

    fn parse_line(&mut self, line: &[u8]) {
        let Some(data) = line.strip_prefix(b"data:") else {
            return;
        };
        if let Ok(v) = serde_json::from_slice::<Value>(data.trim_ascii()) {
            add_usage(&v, &mut self.usage);
        }
    }

    fn finish(&mut self) {
        let Some((spending, mut m)) = self.report.take() else {
            return;
        };
        if !self.sse && !self.skipping {
            if let Ok(v) = serde_json::from_slice::<Value>(&self.line) {
                add_usage(&v, &mut self.usage);
            }
        } else if self.sse && !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.parse_line(&line);
        }
        if self.usage == Usage::default() {
            return;
        }
        m.usage = self.usage;
        m.usd = price_usd(m.provider, &m.model, self.usage);
        spending.record(m);
    }
}

impl<S> Drop for Tap<S> {
    fn drop(&mut self) {
        self.finish();
    }
}

impl<S, E> Stream for Tap<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
{
    type Item = Result<Bytes, E>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let r = Pin::new(&mut self.inner).poll_next(cx);
        match &r {
            Poll::Ready(Some(Ok(b))) => {
                let b = b.clone();
                self.feed(&b);
            }
            Poll::Ready(None) => self.finish(),
            _ => {}
        }
        r
    }
}

/// `router` with every model request it serves counted into `metrics`: the request, its
/// body bytes both ways, and whether it got no successful answer (refused, upstream
/// unreachable, a non-2xx status, an answer cut off), per provider. Git's requests are
/// not model requests and pass uncounted.
pub(crate) fn counted<S: Clone + Send + Sync + 'static>(
    router: axum::Router<S>,
    metrics: Option<&Arc<Metrics>>,
) -> axum::Router<S> {
    match metrics {
        Some(m) => router.layer(axum::middleware::from_fn_with_state(m.clone(), count)),
        None => router,
    }
}

async fn count(State(m): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let provider = [Provider::Anthropic, Provider::OpenAi, Provider::Google]
        .into_iter()
        .map(Provider::as_str)
        .find(|p| {
            path.strip_prefix('/')
                .and_then(|r| r.strip_prefix(p))
                .is_some_and(|r| r.is_empty() || r.starts_with('/'))
        });
    let Some(provider) = provider else {
        return next.run(req).await;
    };
    m.gateway_request(provider);
    let up = m.clone();
    let req = req.map(|b| {
        Body::from_stream(
            b.into_data_stream()
                .inspect_ok(move |c| up.gateway_request_bytes(provider, c.len() as u64)),
        )
    });
    let resp = next.run(req).await;
    let ok = resp.status().is_success();
    if !ok {
        m.gateway_error(provider);
    }
    resp.map(|b| {
        let down = m.clone();
        Body::from_stream(
            b.into_data_stream()
                .inspect_ok(move |c| down.gateway_response_bytes(provider, c.len() as u64))
                .inspect_err(move |_| {
                    if ok {
                        m.gateway_error(provider);
                    }
                }),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Rec(Mutex<Vec<Metered>>);
    impl Spending for Rec {
        fn record(&self, m: Metered) {
            self.0.lock().unwrap().push(m);
        }
        fn over_cap(&self, _: &str) -> Option<String> {
            None
        }
        fn held(&self, _: &str, _: &str) {}
    }

    fn metered(provider: &'static str, model: &str) -> Metered {
        Metered {
            workspace: "w".into(),
            provider,
            model: model.into(),
            usage: Usage::default(),
            usd: 0.0,
        }
    }

    fn run(chunks: &[&str], sse: bool, provider: &'static str, model: &str) -> Vec<Metered> {
        let rec = Arc::new(Rec::default());
        let items: Vec<Result<Bytes, std::io::Error>> = chunks
            .iter()
            .map(|c| Ok(Bytes::from(c.to_string())))
            .collect();
        let mut tap = Tap::new(
            futures::stream::iter(items),
            sse,
            rec.clone(),
            metered(provider, model),
        );
        let mut out = Vec::new();
        futures::executor::block_on(async {
            use futures::StreamExt;
            while let Some(b) = tap.next().await {
                out.extend_from_slice(&b.unwrap());
            }
        });
        assert_eq!(
            String::from_utf8(out).unwrap(),
            chunks.concat(),
            "bytes pass unchanged"
        );
        drop(tap);
        rec.0.lock().unwrap().clone()
    }

    #[test]
    fn anthropic_streams_are_metered_across_chunk_boundaries_once() {
        let s = [
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":5000,\"cache_read_input_tokens\":1000,\"output_tokens\":1}}}\n\n",
            "event: message_delta\ndata: {\"type\":\"message_de",
            "lta\",\"usage\":{\"output_tokens\":200}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
        ];
        let m = run(&s, true, "anthropic", "claude-sonnet-4-5");
        assert_eq!(m.len(), 1);
        assert_eq!(
            m[0].usage,
            Usage {
                input_tokens: 6000,
                output_tokens: 200
            }
        );
        assert!((m[0].usd - (6000.0 * 3.0 + 200.0 * 15.0) / 1e6).abs() < 1e-12);
    }

    #[test]
    fn openai_responses_and_whole_bodies_are_metered() {
        let s = [
            "data: {\"type\":\"response.completed\",\"response\":{\"usage\":{\"input_tokens\":100,\"output_tokens\":50}}}\n\n",
        ];
        let m = run(&s, true, "openai", "gpt-5");
        assert_eq!(m[0].usage.output_tokens, 50);
        let body = [
            r#"{"id":"x","usage":{"prompt_tokens":7,"#,
            r#""completion_tokens":3}}"#,
        ];
        let m = run(&body, false, "openai", "gpt-4.1");
        assert_eq!(
            m[0].usage,
            Usage {
                input_tokens: 7,
                output_tokens: 3
            }
        );
        // Nothing to meter: nothing recorded.
        assert!(run(&["{\"error\":{}}"], false, "openai", "gpt-5").is_empty());
    }

    #[test]
    fn unknown_models_are_priced_high_and_the_model_is_read_from_body_or_path() {
        assert_eq!(price_per_mtok("anthropic", "claude-mystery"), (15.0, 75.0));
        assert_eq!(price_per_mtok("openai", "gpt-5-mini-2025"), (0.25, 2.0));
        assert_eq!(
            model_of(br#"{"model":"claude-opus-4"}"#, "/v1/messages"),
            "claude-opus-4"
        );
        assert_eq!(
            model_of(b"", "/v1beta/models/gemini-2.5-pro:streamGenerateContent"),
            "gemini-2.5-pro"
        );
    }

    #[tokio::test]
    async fn the_layer_counts_model_requests_bytes_and_errors_per_provider_but_not_git() {
        use axum::http::StatusCode;
        use axum::response::IntoResponse;
        let m = Arc::new(Metrics::new());
        let app = counted(
            // Reads the request as the gateway does, then answers or refuses.
            axum::Router::new().fallback(|req: Request| async move {
                let refused = req.uri().path().ends_with("/refused");
                axum::body::to_bytes(req.into_body(), 1024).await.unwrap();
                if refused {
                    (StatusCode::FORBIDDEN, "no").into_response()
                } else {
                    "answer".into_response()
                }
            }),
            Some(&m),
        );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(l, app).await });
        let c = reqwest::Client::new();
        for (path, body) in [
            ("/anthropic/v1/messages", "hello"),
            ("/anthropic/v1/refused", ""),
            ("/openai/v1/responses", "x"),
            ("/git/github.com/o/r.git/info/refs", "not a model request"),
            ("/anthropicx/v1/messages", "nor this"),
        ] {
            let r = c.post(format!("http://{addr}{path}")).body(body).send();
            r.await.unwrap().text().await.unwrap();
        }
        let mut t = String::new();
        prometheus_client::encoding::text::encode(&mut t, m.registry()).unwrap();
        for line in [
            "kraal_gateway_requests_total{provider=\"anthropic\"} 2",
            "kraal_gateway_requests_total{provider=\"openai\"} 1",
            "kraal_gateway_errors_total{provider=\"anthropic\"} 1",
            "kraal_gateway_bytes_total{provider=\"anthropic\",direction=\"request\"} 5",
            // "answer" and "no".
            "kraal_gateway_bytes_total{provider=\"anthropic\",direction=\"response\"} 8",
            "kraal_gateway_bytes_total{provider=\"openai\",direction=\"request\"} 1",
        ] {
            assert!(t.lines().any(|l| l == line), "no {line:?} in\n{t}");
        }
        assert!(!t.contains("errors_total{provider=\"openai\"}"), "{t}");
        assert_eq!(t.matches("kraal_gateway_requests_total{").count(), 2, "{t}");
    }
}
