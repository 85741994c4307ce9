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

use axum::Router;
use axum::http::HeaderMap;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::post;

mod anthropic;
mod gemini;
mod openai;
mod ratelimit;
pub use ratelimit::RateLimitSpec;
pub mod s3;
use futures::stream::{self, StreamExt};
use serde::Deserialize;
use serde_json::Value;

/// A scripted conversation: each model request consumes the next turn, except the side
/// requests agents make on their own (titles, suggestions, memory), which `side` answers.
#[derive(Debug, Clone, Deserialize)]
pub struct Scenario {
    #[serde(default)]
    pub name: String,
    pub turns: Vec<Turn>,
    #[serde(default)]
    pub side: Vec<SideTurn>,
    /// Input tokens every response reports (default 100), to make usage add up fast.
    #[serde(default)]
    pub input_tokens: Option<u64>,
    /// A request limit per window, enforced with 429s and announced in headers.
    #[serde(default)]
    pub rate_limit: Option<RateLimitSpec>,
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

/// A reusable answer for every request whose JSON body contains `contains`; such requests
/// consume no turn and are not counted in [`ScriptedModel::requests`].
#[derive(Debug, Clone, Deserialize)]
pub struct SideTurn {
    pub contains: String,
    pub respond: Vec<Block>,
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

impl Block {
    /// A tool block as a function call: its name and JSON arguments (a custom tool's
    /// free-form input becomes `{"input": …}`); `None` for text.
    pub(crate) fn as_function(&self) -> Option<(String, Value)> {
        match self {
            Block::ToolUse { tool_use } => Some((tool_use.name.clone(), tool_use.input.clone())),
            Block::CustomTool { custom_tool } => Some((
                custom_tool.name.clone(),
                serde_json::json!({ "input": custom_tool.input }),
            )),
            Block::Text { .. } => None,
        }
    }
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
pub(crate) struct Inner {
    turns: VecDeque<Turn>,
    requests: Vec<Value>,
    side: Vec<SideTurn>,
    side_requests: usize,
    /// The bodies of the side requests, in order.
    side_bodies: Vec<Value>,
    pub(crate) input_tokens: u64,
    headers: Vec<std::collections::HashMap<String, String>>,
    next_tool: u64,
    rate_limit: Option<RateLimitSpec>,
    window: ratelimit::Window,
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
            side: scenario.side,
            input_tokens: scenario.input_tokens.unwrap_or(100),
            rate_limit: scenario.rate_limit,
            ..Default::default()
        }));
        let app = Router::new()
            .route("/v1/messages", post(anthropic::messages))
            .route("/v1/messages/count_tokens", post(anthropic::count_tokens))
            .route("/v1/responses", post(openai::responses))
            .route("/v1/chat/completions", post(openai::chat_completions))
            .route("/v1beta/models/{model_action}", post(gemini::generate))
            // The same APIs under the model gateway's prefixes, so the scripted server can
            // stand in for the gateway itself (`ModelGateway { url: base_url() }`).
            .route("/anthropic/v1/messages", post(anthropic::messages))
            .route(
                "/anthropic/v1/messages/count_tokens",
                post(anthropic::count_tokens),
            )
            .route("/openai/v1/responses", post(openai::responses))
            .route(
                "/openai/v1/chat/completions",
                post(openai::chat_completions),
            )
            .route(
                "/google/v1beta/models/{model_action}",
                post(gemini::generate),
            )
            .layer(axum::middleware::from_fn_with_state(
                inner.clone(),
                ratelimit::limit,
            ))
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

    /// How many side requests (answered from `side`) arrived.
    pub fn side_requests(&self) -> usize {
        self.inner.lock().unwrap().side_requests
    }

    /// The bodies of the side requests so far (what `side` answered), in order.
    pub fn side_request_bodies(&self) -> Vec<Value> {
        self.inner.lock().unwrap().side_bodies.clone()
    }

    /// Requests refused with a 429 by the scenario's `rate_limit`.
    pub fn rate_limited(&self) -> u64 {
        self.inner.lock().unwrap().window.limited
    }

    /// Turns not yet consumed.
    pub fn remaining(&self) -> usize {
        self.inner.lock().unwrap().turns.len()
    }
}

/// The model a request names (echoed back in responses), `scripted` when it names none.
pub(crate) fn model_of(body: &Value) -> String {
    body.get("model")
        .and_then(Value::as_str)
        .unwrap_or("scripted")
        .to_owned()
}

pub(crate) fn ev(name: &str, data: Value) -> Event {
    Event::default().event(name).data(data.to_string())
}

/// Records the request and takes the next turn: its content blocks and the number of
/// tool calls before it, or the error response to send, built by the API's own `error`
/// (`exhausted_kind` is that API's error type for "no turn left").
pub(crate) fn next_turn(
    inner: &Mutex<Inner>,
    headers: &HeaderMap,
    body: &Value,
    error: fn(u16, &str, &str) -> Response,
    exhausted_kind: &str,
) -> Result<(Vec<Block>, u64), Box<Response>> {
    let mut g = inner.lock().unwrap();
    let text = body.to_string();
    if let Some(side) = g.side.iter().find(|s| text.contains(&s.contains)).cloned() {
        g.side_requests += 1;
        g.side_bodies.push(body.clone());
        // Tool ids stay unique across the conversation (an agent keys results by id).
        let first = g.next_tool;
        g.next_tool += tool_count(&side.respond);
        return Ok((side.respond, first));
    }
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
    let first = g.next_tool;
    g.next_tool += tool_count(&blocks);
    Ok((blocks, first))
}

fn tool_count(blocks: &[Block]) -> u64 {
    blocks
        .iter()
        .filter(|b| matches!(b, Block::ToolUse { .. } | Block::CustomTool { .. }))
        .count() as u64
}

pub(crate) fn delayed_sse(events: Vec<(u64, Event)>) -> Response {
    let stream = stream::iter(events).then(|(delay, e)| async move {
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        Ok::<_, Infallible>(e)
    });
    Sse::new(stream).into_response()
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
        "{name} is not installed: run scripts/setup.sh (it installs agent-clis/) or set {env_var}"
    );
    p
}

#[cfg(test)]
mod tests;
