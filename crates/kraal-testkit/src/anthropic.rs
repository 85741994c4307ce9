//! The Anthropic Messages API (`POST /v1/messages`, streaming), as Claude Code uses it.

use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::{Block, Inner, delayed_sse, ev, model_of, next_turn};

pub(crate) async fn count_tokens() -> Json<Value> {
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

pub(crate) async fn messages(
    State(inner): State<Arc<Mutex<Inner>>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let (blocks, first_tool) = match next_turn(&inner, &headers, &body, api_error, "api_error") {
        Ok(t) => t,
        Err(response) => return *response,
    };
    let model = model_of(&body);
    let input_tokens = inner.lock().unwrap().input_tokens;
    let has_tool = blocks
        .iter()
        .any(|b| matches!(b, Block::ToolUse { .. } | Block::CustomTool { .. }));
    let mut events: Vec<(u64, Event)> = vec![(
        0,
        ev(
            "message_start",
            json!({"type": "message_start", "message": {"id": "msg_scripted", "type": "message", "role": "assistant",
                "model": model, "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": input_tokens, "output_tokens": 1}}}),
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
                let (name, input) = block.as_function().expect("a tool block");
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
