//! The Gemini API (`POST /v1beta/models/{model}:streamGenerateContent?alt=sse` and
//! `:generateContent`), as Gemini CLI uses it.

use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::{Block, Inner, delayed_sse, next_turn};

fn gemini_error(status: u16, kind: &str, message: &str) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        code,
        Json(json!({"error": {"code": status, "message": message, "status": kind}})),
    )
        .into_response()
}

fn parts(blocks: &[Block]) -> (Vec<Vec<Value>>, Vec<u64>, u64) {
    // Each element is one streamed chunk's parts, with its delay.
    let mut chunks = Vec::new();
    let mut delays = Vec::new();
    let mut tokens = 0;
    for b in blocks {
        match b {
            Block::Text {
                text,
                chunk,
                delay_ms,
            } => {
                let chars: Vec<char> = text.chars().collect();
                for piece in chars.chunks(chunk.unwrap_or(chars.len()).max(1)) {
                    chunks.push(vec![json!({"text": piece.iter().collect::<String>()})]);
                    delays.push(*delay_ms);
                }
                tokens += (chars.len() as u64).div_ceil(4);
            }
            Block::ToolUse { .. } | Block::CustomTool { .. } => {
                let (name, args) = b.as_function().expect("a tool block");
                chunks.push(vec![json!({"functionCall": {"name": name, "args": args}})]);
                delays.push(0);
                tokens += 20;
            }
        }
    }
    (chunks, delays, tokens)
}

fn usage(tokens: u64) -> Value {
    json!({"promptTokenCount": 100, "candidatesTokenCount": tokens, "totalTokenCount": 100 + tokens})
}

/// `{model}:streamGenerateContent` (server-sent events) or `{model}:generateContent`.
pub(crate) async fn generate(
    State(inner): State<Arc<Mutex<Inner>>>,
    Path(model_action): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let Some((model, action)) = model_action.rsplit_once(':') else {
        return gemini_error(404, "NOT_FOUND", "expected {model}:{action}");
    };
    if action == "countTokens" {
        return Json(json!({"totalTokens": 100})).into_response();
    }
    let (blocks, _) = match next_turn(&inner, &headers, &body, gemini_error, "INTERNAL") {
        Ok(t) => t,
        Err(response) => return *response,
    };
    let (chunks, delays, tokens) = parts(&blocks);
    let candidate = |parts: Vec<Value>, finish: Option<&str>| {
        let mut c = json!({"content": {"role": "model", "parts": parts}, "index": 0});
        if let Some(f) = finish {
            c["finishReason"] = json!(f);
        }
        c
    };
    match action {
        "generateContent" => {
            let all: Vec<Value> = chunks.into_iter().flatten().collect();
            Json(json!({"candidates": [candidate(all, Some("STOP"))], "usageMetadata": usage(tokens), "modelVersion": model}))
                .into_response()
        }
        "streamGenerateContent" => {
            let n = chunks.len();
            let mut events: Vec<(u64, Event)> = Vec::new();
            for (i, (p, d)) in chunks.into_iter().zip(delays).enumerate() {
                let last = i + 1 == n;
                let mut v = json!({"candidates": [candidate(p, last.then_some("STOP"))], "modelVersion": model});
                if last {
                    v["usageMetadata"] = usage(tokens);
                }
                events.push((d, Event::default().data(v.to_string())));
            }
            if events.is_empty() {
                let v = json!({"candidates": [candidate(vec![json!({"text": ""})], Some("STOP"))], "usageMetadata": usage(0)});
                events.push((0, Event::default().data(v.to_string())));
            }
            delayed_sse(events)
        }
        other => gemini_error(404, "NOT_FOUND", &format!("unknown action {other}")),
    }
}
