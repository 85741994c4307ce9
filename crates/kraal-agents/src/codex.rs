//! Codex through `codex app-server`: JSON-RPC 2.0 over stdio, one JSON object per line,
//! without the `"jsonrpc"` field.
//!
//! Lifecycle: `initialize` → `initialized` → `thread/start` (or `thread/resume`) → one
//! `turn/start` per user message. A message sent while a turn runs is steered into it with
//! `turn/steer`; `turn/interrupt` stops a turn. Approvals are server→client requests
//! (`item/commandExecution/requestApproval`, `item/fileChange/requestApproval`,
//! `item/permissions/requestApproval`) answered with a `decision`.

use std::collections::{HashMap, VecDeque};

use kraal_core::{
    AgentEvent, AgentSpec, Attachment, FileChangeKind, ModelGateway, PermissionMode, SessionInput,
    SessionState,
};
use serde_json::{Value, json};

use crate::{Adapter, CommandSpec, ParseError, Step, json_line};

/// What one of our requests was for, so its response can be handled.
#[derive(Debug, Clone)]
enum Pending {
    Initialize,
    Thread,
    TurnStart,
    /// A steer carries its text: if the turn ended meanwhile, it becomes a new turn.
    Steer(String, Vec<Attachment>),
    Interrupt,
}

/// An approval request the agent is waiting on.
#[derive(Debug, Clone)]
struct Approval {
    rpc_id: Value,
}

pub struct CodexAdapter {
    spec: AgentSpec,
    resume: Option<String>,
    next_id: u64,
    pending: HashMap<u64, Pending>,
    thread: Option<String>,
    turn: Option<String>,
    busy: bool,
    /// Messages sent before the thread existed, in order, with their attachments.
    queued: VecDeque<(String, Vec<Attachment>)>,
    approvals: HashMap<String, Approval>,
}

impl CodexAdapter {
    pub fn new(spec: &AgentSpec, resume: Option<String>) -> Self {
        CodexAdapter {
            spec: spec.clone(),
            resume,
            next_id: 1,
            pending: HashMap::new(),
            thread: None,
            turn: None,
            busy: false,
            queued: VecDeque::new(),
            approvals: HashMap::new(),
        }
    }

    fn request(&mut self, method: &str, params: Value, what: Pending) -> String {
        let id = self.next_id;
        self.next_id += 1;
        self.pending.insert(id, what);
        json_line(json!({"id": id, "method": method, "params": params}))
    }

    fn cwd(&self) -> String {
        self.spec.cwd.clone().unwrap_or_else(|| "/workspace".into())
    }

    fn turn_start(&mut self, text: &str, attachments: &[Attachment]) -> String {
        let thread = self.thread.clone().unwrap_or_default();
        self.busy = true;
        self.request(
            "turn/start",
            json!({"threadId": thread, "input": user_input(text, attachments)}),
            Pending::TurnStart,
        )
    }

    fn on_response(&mut self, id: u64, v: &Value) -> Step {
        let mut step = Step::default();
        let Some(what) = self.pending.remove(&id) else {
            return step;
        };
        if let Some(err) = v.get("error") {
            let message = err["message"]
                .as_str()
                .unwrap_or("request failed")
                .to_owned();
            match what {
                // The turn finished before the steer arrived: start a new one instead.
                Pending::Steer(text, attachments) => {
                    self.turn = None;
                    let line = self.turn_start(&text, &attachments);
                    return step.write(line);
                }
                Pending::Interrupt => return step,
                Pending::Initialize | Pending::Thread => {
                    step = step.event(AgentEvent::Error {
                        message: format!("codex app-server refused to start: {message}"),
                    });
                    return step.event(AgentEvent::State {
                        state: SessionState::Failed,
                        reason: Some(message),
                    });
                }
                Pending::TurnStart => {
                    self.busy = false;
                    step = step.event(AgentEvent::Error { message });
                    return step.event(AgentEvent::State {
                        state: SessionState::WaitingForInput,
                        reason: None,
                    });
                }
            }
        }
        let result = &v["result"];
        match what {
            Pending::Thread => {
                if let Some(tid) = result["thread"]["id"].as_str() {
                    self.thread = Some(tid.to_owned());
                    step = step.event(AgentEvent::AgentSession { id: tid.to_owned() });
                    if self.queued.is_empty() {
                        step = step.event(AgentEvent::State {
                            state: SessionState::WaitingForInput,
                            reason: None,
                        });
                    }
                    // Everything sent before the thread existed becomes one turn.
                    if !self.queued.is_empty() {
                        let (texts, files): (Vec<String>, Vec<Vec<Attachment>>) =
                            self.queued.drain(..).unzip();
                        let files: Vec<Attachment> = files.into_iter().flatten().collect();
                        let line = self.turn_start(&texts.join("\n\n"), &files);
                        step = step.write(line);
                    }
                }
            }
            Pending::TurnStart => {
                if let Some(t) = result["turn"]["id"].as_str() {
                    self.turn = Some(t.to_owned());
                }
            }
            _ => {}
        }
        step
    }

    fn on_server_request(&mut self, method: &str, v: &Value) -> Step {
        let p = &v["params"];
        let tool = match method {
            "item/commandExecution/requestApproval" => "command",
            "item/fileChange/requestApproval" => "file_change",
            "item/permissions/requestApproval" | "applyPatchApproval" | "execCommandApproval" => {
                "permissions"
            }
            _ => {
                // Questions kraal cannot answer get a JSON-RPC error rather than silence, so
                // the agent does not wait forever.
                return Step::default()
                    .event(AgentEvent::Error {
                        message: format!("codex asked {method:?}, which kraal does not answer"),
                    })
                    .write(json_line(json!({
                        "id": v["id"],
                        "error": {"code": -32601, "message": format!("{method} is not supported by this client")},
                    })));
            }
        };
        let request_id = match &v["id"] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        self.approvals.insert(
            request_id.clone(),
            Approval {
                rpc_id: v["id"].clone(),
            },
        );
        let mut input = json!({});
        for k in ["command", "cwd", "changes", "permissions", "grantRoot"] {
            if !p[k].is_null() {
                input[k] = p[k].clone();
            }
        }
        Step::default()
            .event(AgentEvent::ApprovalRequest {
                request_id,
                tool: tool.to_owned(),
                input,
                description: p["reason"].as_str().map(str::to_owned),
            })
            .event(AgentEvent::State {
                state: SessionState::NeedsApproval,
                reason: None,
            })
    }

    fn on_notification(&mut self, method: &str, p: &Value) -> Step {
        let mut step = Step::default();
        match method {
            "turn/started" => {
                if let Some(t) = p["turn"]["id"].as_str() {
                    self.turn = Some(t.to_owned());
                }
                self.busy = true;
            }
            "item/agentMessage/delta" => {
                if let Some(d) = p["delta"].as_str() {
                    step = step.event(AgentEvent::AssistantDelta { text: d.to_owned() });
                }
            }
            "item/started" => {
                let item = &p["item"];
                match item["type"].as_str() {
                    Some("commandExecution") => {
                        step = step.event(AgentEvent::ToolCall {
                            id: item["id"].as_str().unwrap_or_default().to_owned(),
                            name: "command".into(),
                            input: json!({"command": item["command"], "cwd": item["cwd"]}),
                        });
                    }
                    Some("mcpToolCall") | Some("dynamicToolCall") => {
                        step = step.event(AgentEvent::ToolCall {
                            id: item["id"].as_str().unwrap_or_default().to_owned(),
                            name: item["tool"].as_str().unwrap_or_default().to_owned(),
                            input: item["arguments"].clone(),
                        });
                    }
                    _ => {}
                }
            }
            "item/completed" => step = self.item_completed(&p["item"]),
            "thread/tokenUsage/updated" => {
                let last = &p["tokenUsage"]["last"];
                let n = |k: &str| last[k].as_u64().unwrap_or(0);
                step = step.event(AgentEvent::Usage {
                    input_tokens: n("inputTokens"),
                    output_tokens: n("outputTokens"),
                    cache_read_tokens: n("cachedInputTokens"),
                    cache_write_tokens: n("cacheWriteInputTokens"),
                    cost_usd: None,
                });
            }
            "turn/completed" => {
                self.turn = None;
                self.busy = false;
                let turn = &p["turn"];
                let reason = match turn["status"].as_str() {
                    Some("interrupted") => Some("interrupted by the user".to_owned()),
                    Some("failed") => {
                        let msg = turn["error"]["message"]
                            .as_str()
                            .unwrap_or("turn failed")
                            .to_owned();
                        step = step.event(AgentEvent::Error {
                            message: msg.clone(),
                        });
                        None
                    }
                    _ => None,
                };
                step = step.event(AgentEvent::State {
                    state: SessionState::WaitingForInput,
                    reason,
                });
            }
            "error" => {
                let msg = p["error"]["message"]
                    .as_str()
                    .or_else(|| p["message"].as_str())
                    .unwrap_or("codex reported an error");
                // Retries announce themselves as errors too; only report the final one.
                if !p["willRetry"].as_bool().unwrap_or(false) {
                    step = step.event(AgentEvent::Error {
                        message: msg.to_owned(),
                    });
                }
            }
            // Status, rate limits, warnings, plans and diffs carry nothing the event model
            // needs beyond what items already report.
            _ => {}
        }
        step
    }

    fn item_completed(&mut self, item: &Value) -> Step {
        let mut step = Step::default();
        let id = item["id"].as_str().unwrap_or_default().to_owned();
        match item["type"].as_str() {
            Some("agentMessage") => {
                let text = item["text"].as_str().unwrap_or_default();
                if !text.is_empty() {
                    step = step.event(AgentEvent::AssistantText {
                        text: text.to_owned(),
                    });
                }
            }
            Some("reasoning") => {
                let parts: Vec<&str> = item["summary"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .chain(item["content"].as_array().into_iter().flatten())
                    .filter_map(Value::as_str)
                    .collect();
                if !parts.is_empty() {
                    step = step.event(AgentEvent::Thinking {
                        text: parts.join("\n"),
                    });
                }
            }
            Some("commandExecution") => {
                let exit_code = item["exitCode"].as_i64().map(|c| c as i32);
                step = step
                    .event(AgentEvent::CommandRun {
                        command: item["command"].as_str().unwrap_or_default().to_owned(),
                        exit_code,
                    })
                    .event(AgentEvent::ToolResult {
                        id,
                        output: item["aggregatedOutput"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned(),
                        is_error: item["status"] != "completed"
                            || exit_code.is_some_and(|c| c != 0),
                    });
            }
            Some("fileChange") if item["status"] == "completed" => {
                for c in item["changes"].as_array().into_iter().flatten() {
                    let kind = match c["kind"]["type"].as_str() {
                        Some("add") => FileChangeKind::Created,
                        Some("delete") => FileChangeKind::Deleted,
                        _ => FileChangeKind::Modified,
                    };
                    step = step.event(AgentEvent::FileChange {
                        path: c["path"].as_str().unwrap_or_default().to_owned(),
                        kind,
                        diff: c["diff"].as_str().map(str::to_owned),
                    });
                }
            }
            Some("mcpToolCall") | Some("dynamicToolCall") => {
                let output = if item["result"].is_null() {
                    item["contentItems"].to_string()
                } else {
                    item["result"].to_string()
                };
                step = step.event(AgentEvent::ToolResult {
                    id,
                    output,
                    is_error: item["status"] == "failed" || !item["error"].is_null(),
                });
            }
            _ => {}
        }
        step
    }
}

impl Adapter for CodexAdapter {
    fn command(&self, gateway: Option<&ModelGateway>) -> CommandSpec {
        let mut argv = vec!["codex".to_owned(), "app-server".to_owned()];
        let mut env = Vec::new();
        if let Some(m) = &self.spec.model {
            argv.push("-c".into());
            argv.push(format!("model={}", toml_string(m)));
        }
        // Codex's built-in provider ignores OPENAI_BASE_URL; a provider of our own points
        // it at the gateway, with the placeholder key read from the environment.
        if let Some(g) = gateway {
            argv.push("-c".into());
            argv.push(format!(
                "model_providers.kraal={{name=\"kraal\",base_url={},env_key=\"OPENAI_API_KEY\",wire_api=\"responses\"}}",
                toml_string(&g.openai_base_url())
            ));
            argv.push("-c".into());
            argv.push("model_provider=\"kraal\"".into());
            env.push(("OPENAI_API_KEY".to_owned(), g.key.clone()));
        }
        crate::apply_overrides(CommandSpec { argv, env }, &self.spec)
    }

    fn start(&mut self) -> Step {
        let init = self.request(
            "initialize",
            json!({"clientInfo": {"name": "kraal", "title": "kraal", "version": env!("CARGO_PKG_VERSION")}}),
            Pending::Initialize,
        );
        let approval = match self.spec.permissions {
            PermissionMode::Bypass => "never",
            PermissionMode::Ask => "untrusted",
        };
        let mut params = json!({
            "cwd": self.cwd(),
            "approvalPolicy": approval,
            // The kraal sandbox is the boundary; Codex's own sandbox cannot nest in it.
            "sandbox": "danger-full-access",
        });
        if let Some(m) = &self.spec.model {
            params["model"] = json!(m);
        }
        if let Some(p) = &self.spec.system_prompt {
            params["developerInstructions"] = json!(p);
        }
        let (method, params) = match &self.resume {
            Some(tid) => {
                params["threadId"] = json!(tid);
                ("thread/resume", params)
            }
            None => ("thread/start", params),
        };
        let thread = self.request(method, params, Pending::Thread);
        Step::default()
            .write(init)
            .write(json_line(json!({"method": "initialized"})))
            .write(thread)
    }

    fn on_line(&mut self, line: &str) -> Step {
        let raw = line.trim();
        if raw.is_empty() {
            return Step::default();
        }
        let v: Value = match serde_json::from_str(raw) {
            Ok(v @ Value::Object(_)) => v,
            Ok(_) => {
                let mut s = Step::default();
                s.problems
                    .push(ParseError::new("codex", raw, "not a JSON object"));
                return s;
            }
            Err(e) => {
                let mut s = Step::default();
                s.problems.push(ParseError::new("codex", raw, e));
                return s;
            }
        };
        match (v.get("method").and_then(Value::as_str), v.get("id")) {
            (Some(m), Some(_)) => self.on_server_request(m, &v),
            (Some(m), None) => self.on_notification(m, &v["params"]),
            (None, Some(id)) => match id.as_u64() {
                Some(id) => self.on_response(id, &v),
                None => Step::default(),
            },
            (None, None) => {
                let mut s = Step::default();
                s.problems.push(ParseError::new(
                    "codex",
                    raw,
                    "neither a request, a response nor a notification",
                ));
                s
            }
        }
    }

    fn on_input(&mut self, input: SessionInput) -> Step {
        match input {
            SessionInput::Message { text, attachments } => {
                let mut step = Step::default().event(AgentEvent::UserMessage {
                    text: text.clone(),
                    attachments: crate::logged(&attachments),
                });
                if self.thread.is_none() {
                    self.queued.push_back((text, attachments));
                    return step.event(AgentEvent::State {
                        state: SessionState::Working,
                        reason: None,
                    });
                }
                match self.turn.clone() {
                    Some(turn) => {
                        let thread = self.thread.clone().unwrap_or_default();
                        let line = self.request(
                            "turn/steer",
                            json!({"threadId": thread, "expectedTurnId": turn, "input": user_input(&text, &attachments)}),
                            Pending::Steer(text, attachments),
                        );
                        step.write(line)
                    }
                    None => {
                        let was_busy = self.busy;
                        let line = self.turn_start(&text, &attachments);
                        step = step.write(line);
                        if !was_busy {
                            step = step.event(AgentEvent::State {
                                state: SessionState::Working,
                                reason: None,
                            });
                        }
                        step
                    }
                }
            }
            SessionInput::Interrupt => match (self.thread.clone(), self.turn.clone()) {
                (Some(thread), Some(turn)) => {
                    let line = self.request(
                        "turn/interrupt",
                        json!({"threadId": thread, "turnId": turn}),
                        Pending::Interrupt,
                    );
                    Step::default().write(line)
                }
                _ => Step::default(),
            },
            SessionInput::Approval {
                request_id,
                allow,
                message,
            } => {
                let Some(a) = self.approvals.remove(&request_id) else {
                    return Step::default().event(AgentEvent::Error {
                        message: format!("no pending approval request {request_id:?}"),
                    });
                };
                let decision = if allow { "accept" } else { "decline" };
                Step::default()
                    .event(AgentEvent::ApprovalDecision {
                        request_id,
                        allow,
                        message,
                    })
                    .event(AgentEvent::State {
                        state: SessionState::Working,
                        reason: None,
                    })
                    .write(json_line(
                        json!({"id": a.rpc_id, "result": {"decision": decision}}),
                    ))
            }
        }
    }

    fn busy(&self) -> bool {
        self.busy
    }

    fn agent_session(&self) -> Option<String> {
        self.thread.clone().or_else(|| self.resume.clone())
    }
}

/// A TOML basic string (for `-c key=value` overrides).
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A user turn's input items: the text (naming attachments that are not images), then
/// each image as a `localImage` the CLI reads from the workspace itself.
fn user_input(text: &str, attachments: &[Attachment]) -> Value {
    let mut items = vec![
        json!({"type": "text", "text": crate::with_attachment_notes(text, attachments, Attachment::is_image)}),
    ];
    for a in attachments.iter().filter(|a| a.is_image()) {
        items.push(json!({"type": "localImage", "path": crate::attachment_path(a)}));
    }
    Value::Array(items)
}
