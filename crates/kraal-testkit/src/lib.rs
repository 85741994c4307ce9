//! A scripted model server for tests: real agent CLIs are pointed at it through their
//! base-URL setting and get streamed answers from a [`Scenario`] instead of a real model.
//! It speaks the Anthropic Messages API (`POST /v1/messages`, Claude Code) and the OpenAI
//! Responses API (`POST /v1/responses`, Codex), both with server-sent events. Every request is recorded so tests can assert what the agent sent
//! (tool results, the conversation so far, the model asked for).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures::stream::{self, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};

/// A scripted conversation: each model request consumes the next turn.
#[derive(Debug, Clone, Deserialize)]
pub struct Scenario {
    #[serde(default)]
    pub name: String,
    pub turns: Vec<Turn>,
}

/// The answer to one model request.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Turn {
    /// Fail the request with an API error.
    Error { error: ApiErrorSpec },
    /// Stream these content blocks.
    Respond { respond: Vec<Block> },
}

#[derive(Debug, Clone, Deserialize)]
pub struct ApiErrorSpec {
    pub status: u16,
    #[serde(default = "default_error_type", rename = "type")]
    pub kind: String,
    pub message: String,
}

fn default_error_type() -> String {
    "api_error".into()
}

/// One content block of a response.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Block {
    Text {
        text: String,
        /// Characters per streamed delta (default: the whole text at once).
        #[serde(default)]
        chunk: Option<usize>,
        /// Pause before each delta, for slow-stream scenarios.
        #[serde(default)]
        delay_ms: u64,
    },
    ToolUse {
        tool_use: ToolUseSpec,
    },
    /// A free-form ("custom") tool call of the Responses API, e.g. Codex's `exec` tool that
    /// takes JavaScript. The Messages API sends it as a tool use with `{"input": …}`.
    CustomTool {
        custom_tool: CustomToolSpec,
    },
}

#[derive(Debug, Clone, Deserialize)]
pub struct CustomToolSpec {
    pub name: String,
    pub input: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ToolUseSpec {
    pub name: String,
    pub input: Value,
}

impl Scenario {
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }
}

#[derive(Default)]
struct Inner {
    turns: VecDeque<Turn>,
    requests: Vec<Value>,
    headers: Vec<std::collections::HashMap<String, String>>,
    next_tool: u64,
}

/// A running scripted server. It runs on its own thread and runtime, so tests may block
/// while an agent talks to it. Dropping it stops the server.
pub struct ScriptedModel {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for ScriptedModel {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

impl ScriptedModel {
    /// Serves `scenario` on 127.0.0.1 with an ephemeral port.
    pub fn start(scenario: Scenario) -> std::io::Result<Self> {
        Self::start_on("127.0.0.1:0".parse().expect("valid address"), scenario)
    }

    pub fn start_on(addr: SocketAddr, scenario: Scenario) -> std::io::Result<Self> {
        let inner = Arc::new(Mutex::new(Inner {
            turns: scenario.turns.into(),
            ..Default::default()
        }));
        let app = Router::new()
            .route("/v1/messages", post(messages))
            .route("/v1/messages/count_tokens", post(count_tokens))
            .route("/v1/responses", post(responses))
            .with_state(inner.clone());
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("scripted-model".into())
            .spawn(move || {
                rt.block_on(async move {
                    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                        return;
                    };
                    let _ = axum::serve(listener, app)
                        .with_graceful_shutdown(async move {
                            let _ = stop_rx.await;
                        })
                        .await;
                });
            })?;
        Ok(ScriptedModel {
            addr,
            inner,
            stop: Some(stop_tx),
        })
    }

    /// Base URL for `OPENAI_BASE_URL` (the Responses API lives under `/v1`).
    pub fn openai_base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Base URL for `ANTHROPIC_BASE_URL`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every `/v1/messages` request body received so far.
    pub fn requests(&self) -> Vec<Value> {
        self.inner.lock().unwrap().requests.clone()
    }

    /// The headers of every model request so far (lowercase names), in order; tests use
    /// them to check which credential reached the model.
    pub fn request_headers(&self) -> Vec<std::collections::HashMap<String, String>> {
        self.inner.lock().unwrap().headers.clone()
    }

    /// Turns not yet consumed.
    pub fn remaining(&self) -> usize {
        self.inner.lock().unwrap().turns.len()
    }
}

async fn count_tokens() -> Json<Value> {
    Json(json!({ "input_tokens": 100 }))
}

fn api_error(status: u16, kind: &str, message: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        Json(json!({ "type": "error", "error": { "type": kind, "message": message } })),
    )
        .into_response()
}

fn ev(name: &str, data: Value) -> Event {
    Event::default().event(name).data(data.to_string())
}

/// Records the request and takes the next turn: its content blocks and the number of
/// tool calls before it, or the error response to send, built by the API's own `error`
/// (`exhausted_kind` is that API's error type for "no turn left").
fn next_turn(
    inner: &Mutex<Inner>,
    headers: &HeaderMap,
    body: &Value,
    error: fn(u16, &str, &str) -> Response,
    exhausted_kind: &str,
) -> Result<(Vec<Block>, u64), Box<Response>> {
    let mut g = inner.lock().unwrap();
    g.requests.push(body.clone());
    g.headers.push(
        headers
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect(),
    );
    let blocks = match g.turns.pop_front() {
        None => {
            return Err(Box::new(error(
                500,
                exhausted_kind,
                "scripted model: scenario exhausted (no turn left for this request)",
            )));
        }
        Some(Turn::Error { error: e }) => {
            return Err(Box::new(error(e.status, &e.kind, &e.message)));
        }
        Some(Turn::Respond { respond }) => respond,
    };
    let tools = blocks
        .iter()
        .filter(|b| matches!(b, Block::ToolUse { .. } | Block::CustomTool { .. }))
        .count() as u64;
    let first = g.next_tool;
    g.next_tool += tools;
    Ok((blocks, first))
}

fn delayed_sse(events: Vec<(u64, Event)>) -> Response {
    let stream = stream::iter(events).then(|(delay, e)| async move {
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        Ok::<_, Infallible>(e)
    });
    Sse::new(stream).into_response()
}

/// `POST /v1/responses` with `stream: true`: the OpenAI Responses API event sequence.
async fn responses(
    State(inner): State<Arc<Mutex<Inner>>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let (blocks, first_tool) =
        match next_turn(&inner, &headers, &body, openai_error, "server_error") {
            Ok(t) => t,
            Err(response) => return *response,
        };
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("scripted")
        .to_owned();
    let mut seq = 0u64;
    let mut events: Vec<(u64, Event)> = Vec::new();
    let mut push = |delay: u64, mut data: Value| {
        data["sequence_number"] = json!(seq);
        seq += 1;
        let name = data["type"].as_str().unwrap_or_default().to_owned();
        events.push((delay, ev(&name, data)));
    };
    let response = |status: &str, output: &Value| json!({"id": "resp_scripted", "object": "response", "created_at": 0, "status": status, "model": model, "output": output});
    push(
        0,
        json!({"type": "response.created", "response": response("in_progress", &json!([]))}),
    );
    push(
        0,
        json!({"type": "response.in_progress", "response": response("in_progress", &json!([]))}),
    );
    let mut output = Vec::new();
    let mut tool_n = first_tool;
    let mut output_tokens = 0u64;
    for (i, block) in blocks.iter().enumerate() {
        match block {
            Block::Text {
                text,
                chunk,
                delay_ms,
            } => {
                let id = format!("msg_scripted_{i}");
                push(
                    0,
                    json!({"type": "response.output_item.added", "output_index": i,
                    "item": {"id": id, "type": "message", "role": "assistant", "status": "in_progress", "content": []}}),
                );
                push(
                    0,
                    json!({"type": "response.content_part.added", "item_id": id, "output_index": i, "content_index": 0,
                    "part": {"type": "output_text", "text": "", "annotations": []}}),
                );
                let chars: Vec<char> = text.chars().collect();
                for piece in chars.chunks(chunk.unwrap_or(chars.len()).max(1)) {
                    let piece: String = piece.iter().collect();
                    push(
                        *delay_ms,
                        json!({"type": "response.output_text.delta", "item_id": id, "output_index": i, "content_index": 0, "delta": piece}),
                    );
                }
                push(
                    0,
                    json!({"type": "response.output_text.done", "item_id": id, "output_index": i, "content_index": 0, "text": text}),
                );
                let part = json!({"type": "output_text", "text": text, "annotations": []});
                push(
                    0,
                    json!({"type": "response.content_part.done", "item_id": id, "output_index": i, "content_index": 0, "part": part}),
                );
                let item = json!({"id": id, "type": "message", "role": "assistant", "status": "completed", "content": [part]});
                push(
                    0,
                    json!({"type": "response.output_item.done", "output_index": i, "item": item}),
                );
                output.push(item);
                output_tokens += (chars.len() as u64).div_ceil(4);
            }
            Block::ToolUse { tool_use } => {
                tool_n += 1;
                let (id, call_id) = (
                    format!("fc_scripted_{tool_n:04}"),
                    format!("call_scripted_{tool_n:04}"),
                );
                let args = tool_use.input.to_string();
                push(
                    0,
                    json!({"type": "response.output_item.added", "output_index": i,
                    "item": {"id": id, "type": "function_call", "status": "in_progress", "call_id": call_id, "name": tool_use.name, "arguments": ""}}),
                );
                push(
                    0,
                    json!({"type": "response.function_call_arguments.delta", "item_id": id, "output_index": i, "delta": args}),
                );
                push(
                    0,
                    json!({"type": "response.function_call_arguments.done", "item_id": id, "output_index": i, "arguments": args}),
                );
                let item = json!({"id": id, "type": "function_call", "status": "completed", "call_id": call_id, "name": tool_use.name, "arguments": args});
                push(
                    0,
                    json!({"type": "response.output_item.done", "output_index": i, "item": item}),
                );
                output.push(item);
                output_tokens += 20;
            }
            Block::CustomTool { custom_tool } => {
                tool_n += 1;
                let (id, call_id) = (
                    format!("ctc_scripted_{tool_n:04}"),
                    format!("call_scripted_{tool_n:04}"),
                );
                push(
                    0,
                    json!({"type": "response.output_item.added", "output_index": i,
                    "item": {"id": id, "type": "custom_tool_call", "status": "in_progress", "call_id": call_id, "name": custom_tool.name, "input": ""}}),
                );
                push(
                    0,
                    json!({"type": "response.custom_tool_call_input.delta", "item_id": id, "output_index": i, "delta": custom_tool.input}),
                );
                push(
                    0,
                    json!({"type": "response.custom_tool_call_input.done", "item_id": id, "output_index": i, "input": custom_tool.input}),
                );
                let item = json!({"id": id, "type": "custom_tool_call", "status": "completed", "call_id": call_id, "name": custom_tool.name, "input": custom_tool.input});
                push(
                    0,
                    json!({"type": "response.output_item.done", "output_index": i, "item": item}),
                );
                output.push(item);
                output_tokens += 20;
            }
        }
    }
    let mut done = response("completed", &Value::Array(output));
    done["usage"] = json!({"input_tokens": 100, "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output_tokens, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 100 + output_tokens});
    push(0, json!({"type": "response.completed", "response": done}));
    delayed_sse(events)
}

fn openai_error(status: u16, kind: &str, message: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        Json(json!({ "error": { "type": kind, "code": kind, "message": message, "param": null } })),
    )
        .into_response()
}

async fn messages(
    State(inner): State<Arc<Mutex<Inner>>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let (blocks, first_tool) = match next_turn(&inner, &headers, &body, api_error, "api_error") {
        Ok(t) => t,
        Err(response) => return *response,
    };
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("scripted")
        .to_owned();
    let has_tool = blocks
        .iter()
        .any(|b| matches!(b, Block::ToolUse { .. } | Block::CustomTool { .. }));
    let mut events: Vec<(u64, Event)> = vec![(
        0,
        ev(
            "message_start",
            json!({"type": "message_start", "message": {"id": "msg_scripted", "type": "message", "role": "assistant",
                "model": model, "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": 100, "output_tokens": 1}}}),
        ),
    )];
    let mut output_tokens = 0u64;
    let mut tool_n = first_tool;
    for (index, block) in blocks.iter().enumerate() {
        match block {
            Block::Text {
                text,
                chunk,
                delay_ms,
            } => {
                events.push((0, ev("content_block_start", json!({"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}}))));
                let chars: Vec<char> = text.chars().collect();
                let size = chunk.unwrap_or(chars.len()).max(1);
                for piece in chars.chunks(size) {
                    let piece: String = piece.iter().collect();
                    events.push((*delay_ms, ev("content_block_delta", json!({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": piece}}))));
                }
                output_tokens += (chars.len() as u64).div_ceil(4);
            }
            Block::ToolUse { .. } | Block::CustomTool { .. } => {
                let (name, input) = match block {
                    Block::ToolUse { tool_use } => (tool_use.name.clone(), tool_use.input.clone()),
                    Block::CustomTool { custom_tool } => (
                        custom_tool.name.clone(),
                        json!({ "input": custom_tool.input }),
                    ),
                    Block::Text { .. } => unreachable!("matched above"),
                };
                tool_n += 1;
                let id = format!("toolu_scripted_{tool_n:04}");
                events.push((0, ev("content_block_start", json!({"type": "content_block_start", "index": index, "content_block": {"type": "tool_use", "id": id, "name": name, "input": {}}}))));
                events.push((0, ev("content_block_delta", json!({"type": "content_block_delta", "index": index, "delta": {"type": "input_json_delta", "partial_json": input.to_string()}}))));
                output_tokens += 20;
            }
        }
        events.push((
            0,
            ev(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": index}),
            ),
        ));
    }
    let stop = if has_tool { "tool_use" } else { "end_turn" };
    events.push((0, ev("message_delta", json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null}, "usage": {"output_tokens": output_tokens}}))));
    events.push((0, ev("message_stop", json!({"type": "message_stop"}))));
    delayed_sse(events)
}

/// Path of an agent CLI for live tests: `$env_var` if set, else the copy the project
/// installs in `agent-clis/node_modules/.bin/` (`scripts/setup.sh`). Panics with the fix
/// when it is missing, so a machine without it fails loudly instead of skipping.
pub fn agent_cli(name: &str, env_var: &str) -> std::path::PathBuf {
    if let Some(p) = std::env::var_os(env_var) {
        return p.into();
    }
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../agent-clis/node_modules/.bin")
        .join(name);
    assert!(
        p.exists(),
        "{name} is not installed: run scripts/setup.sh (npm ci --prefix agent-clis) or set {env_var}"
    );
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn post(addr: SocketAddr, body: Value) -> (u16, String) {
        post_to(addr, "/v1/messages", body).await
    }

    async fn post_to(addr: SocketAddr, path: &str, body: Value) -> (u16, String) {
        use http_body_util::BodyExt;
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Full<bytes::Bytes>>();
        let req = hyper::Request::post(format!("http://{addr}{path}"))
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(
                body.to_string(),
            )))
            .unwrap();
        let resp = client.request(req).await.unwrap();
        let status = resp.status().as_u16();
        (
            status,
            String::from_utf8(
                resp.into_body()
                    .collect()
                    .await
                    .unwrap()
                    .to_bytes()
                    .to_vec(),
            )
            .unwrap(),
        )
    }

    #[tokio::test]
    async fn turns_stream_in_order_then_run_out() {
        let s = Scenario::from_json(
            r#"{"turns": [
                {"respond": [{"text": "Hello world", "chunk": 5}, {"tool_use": {"name": "Bash", "input": {"command": "ls"}}}]},
                {"error": {"status": 529, "type": "overloaded_error", "message": "busy"}}
            ]}"#,
        )
        .unwrap();
        let m = ScriptedModel::start(s).unwrap();
        let (st, body) = post(m.addr, json!({"model": "m1", "messages": []})).await;
        assert_eq!(st, 200);
        let deltas: Vec<&str> = body.lines().filter(|l| l.contains("text_delta")).collect();
        assert_eq!(deltas.len(), 3, "Hello world in 5-char chunks: {body}");
        assert!(body.contains(r#""stop_reason":"tool_use""#));
        assert!(
            body.contains(r#""partial_json":"{\"command\":\"ls\"}""#),
            "{body}"
        );
        assert!(body.contains("toolu_scripted_0001"));
        let (st, body) = post(m.addr, json!({"model": "m1"})).await;
        assert_eq!(st, 529);
        assert!(body.contains("overloaded_error"));
        let (st, body) = post(m.addr, json!({})).await;
        assert_eq!(st, 500);
        assert!(body.contains("scenario exhausted"));
        assert_eq!(m.requests().len(), 3);
        assert_eq!(m.remaining(), 0);
    }

    #[tokio::test]
    async fn responses_api_streams_text_and_function_calls() {
        let s = Scenario::from_json(
            r#"{"turns": [
                {"respond": [{"text": "Running it.", "chunk": 4}, {"tool_use": {"name": "shell", "input": {"command": ["ls"]}}}]},
                {"error": {"status": 400, "type": "invalid_request_error", "message": "bad"}}
            ]}"#,
        )
        .unwrap();
        let m = ScriptedModel::start(s).unwrap();
        let (st, body) = post_to(
            m.addr,
            "/v1/responses",
            json!({"model": "gpt", "stream": true, "input": []}),
        )
        .await;
        assert_eq!(st, 200);
        let names: Vec<&str> = body
            .lines()
            .filter_map(|l| l.strip_prefix("event: "))
            .collect();
        assert_eq!(names.first(), Some(&"response.created"));
        assert_eq!(names.last(), Some(&"response.completed"));
        assert_eq!(
            names
                .iter()
                .filter(|n| **n == "response.output_text.delta")
                .count(),
            3
        );
        assert!(names.contains(&"response.function_call_arguments.done"));
        assert!(
            body.contains(r#""arguments":"{\"command\":[\"ls\"]}""#),
            "{body}"
        );
        let seqs: Vec<u64> = body
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .map(|d| {
                serde_json::from_str::<Value>(d).unwrap()["sequence_number"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(
            seqs,
            (0..seqs.len() as u64).collect::<Vec<_>>(),
            "sequence numbers have no gaps"
        );
        let (st, body) = post_to(m.addr, "/v1/responses", json!({})).await;
        assert_eq!(st, 400);
        assert!(body.contains("invalid_request_error"));
    }
}
