//! The OpenAI Responses API (`POST /v1/responses`, streaming), as Codex uses it.

use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::{Block, Inner, delayed_sse, ev, model_of, next_turn};

/// `POST /v1/responses` with `stream: true`: the OpenAI Responses API event sequence.
pub(crate) async fn responses(
    State(inner): State<Arc<Mutex<Inner>>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let (blocks, first_tool) =
        match next_turn(&inner, &headers, &body, openai_error, "server_error") {
            Ok(t) => t,
            Err(response) => return *response,
        };
    let model = model_of(&body);
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

pub(crate) fn openai_error(status: u16, kind: &str, message: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        Json(json!({ "error": { "type": kind, "code": kind, "message": message, "param": null } })),
    )
        .into_response()
}

/// `POST /v1/chat/completions` with `stream: true`: Chat Completions chunks, as Qwen Code,
/// Goose and other OpenAI-compatible clients use them. Custom tools become function calls
/// with `{"input": …}` arguments.
pub(crate) async fn chat_completions(
    State(inner): State<Arc<Mutex<Inner>>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let (blocks, first_tool) =
        match next_turn(&inner, &headers, &body, openai_error, "server_error") {
            Ok(t) => t,
            Err(response) => return *response,
        };
    let model = model_of(&body);
    let chunk = |delta: Value, finish: Option<&str>| {
        json!({"id": "chatcmpl-scripted", "object": "chat.completion.chunk", "created": 0, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    let data = |v: Value| Event::default().data(v.to_string());
    let mut events: Vec<(u64, Event)> = vec![(
        0,
        data(chunk(json!({"role": "assistant", "content": ""}), None)),
    )];
    let mut tool_index = 0u64;
    let mut tool_n = first_tool;
    let mut output_tokens = 0u64;
    for block in &blocks {
        match block {
            Block::Text {
                text,
                chunk: size,
                delay_ms,
            } => {
                let chars: Vec<char> = text.chars().collect();
                for piece in chars.chunks(size.unwrap_or(chars.len()).max(1)) {
                    let piece: String = piece.iter().collect();
                    events.push((*delay_ms, data(chunk(json!({"content": piece}), None))));
                }
                output_tokens += (chars.len() as u64).div_ceil(4);
            }
            Block::ToolUse { .. } | Block::CustomTool { .. } => {
                let (name, args) = block.as_function().expect("a tool block");
                tool_n += 1;
                let call = json!({"index": tool_index, "id": format!("call_scripted_{tool_n:04}"), "type": "function",
                    "function": {"name": name, "arguments": ""}});
                events.push((0, data(chunk(json!({"tool_calls": [call]}), None))));
                let args =
                    json!({"index": tool_index, "function": {"arguments": args.to_string()}});
                events.push((0, data(chunk(json!({"tool_calls": [args]}), None))));
                tool_index += 1;
                output_tokens += 20;
            }
        }
    }
    let finish = if tool_index > 0 { "tool_calls" } else { "stop" };
    events.push((0, data(chunk(json!({}), Some(finish)))));
    events.push((
        0,
        data(json!({"id": "chatcmpl-scripted", "object": "chat.completion.chunk", "created": 0, "model": model, "choices": [],
            "usage": {"prompt_tokens": 100, "completion_tokens": output_tokens, "total_tokens": 100 + output_tokens}})),
    ));
    events.push((0, Event::default().data("[DONE]")));
    delayed_sse(events)
}
