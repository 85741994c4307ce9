//! Claude Code in headless streaming mode:
//! `claude -p --input-format stream-json --output-format stream-json --verbose`.
//!
//! Input is one JSON object per line (user messages and control requests such as
//! `interrupt`); output is one JSON object per line (`system`, `assistant`, `user` tool
//! results, `stream_event` partial deltas, `result` at the end of each turn, and
//! `control_request` when the CLI asks for permission).

use std::collections::HashMap;

use kraal_core::{
    AgentEvent, AgentSpec, Attachment, FileChangeKind, ModelGateway, PermissionMode, SessionInput,
    SessionState,
};
use serde_json::{Value, json};

use crate::{Adapter, CommandSpec, ParseError, Step};

/// How tool permissions are handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Permissions {
    /// Everything is allowed (`--dangerously-skip-permissions`); safe because the agent
    /// runs in a sandbox.
    #[default]
    Bypass,
    /// The CLI asks over stdio (`--permission-prompt-tool stdio`) and waits for an answer.
    Ask,
}

/// What the user can configure about a Claude Code session.
#[derive(Debug, Clone, Default)]
pub struct ClaudeOptions {
    /// Program to run (default `claude`).
    pub binary: Option<String>,
    pub model: Option<String>,
    /// Appended to Claude Code's own system prompt.
    pub system_prompt: Option<String>,
    /// Resume this conversation (the agent's own session id).
    pub resume: Option<String>,
    pub permissions: Permissions,
    /// Extra arguments, appended last.
    pub extra_args: Vec<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
}

impl ClaudeOptions {
    pub fn command(&self) -> CommandSpec {
        let mut argv = vec![self.binary.clone().unwrap_or_else(|| "claude".into())];
        argv.extend(
            [
                "-p",
                "--input-format",
                "stream-json",
                "--output-format",
                "stream-json",
                "--verbose",
                "--include-partial-messages",
                // Echo each user message when a turn takes it in, so queued messages are
                // tracked until the agent really consumed them.
                "--replay-user-messages",
            ]
            .map(String::from),
        );
        match self.permissions {
            Permissions::Bypass => argv.push("--dangerously-skip-permissions".into()),
            Permissions::Ask => argv.extend(["--permission-prompt-tool".into(), "stdio".into()]),
        }
        if let Some(m) = &self.model {
            argv.push(format!("--model={m}"));
        }
        if let Some(p) = &self.system_prompt {
            argv.push("--append-system-prompt".into());
            argv.push(p.clone());
        }
        // The equals form stops an id that starts with '-' from being read as a flag.
        if let Some(id) = &self.resume {
            argv.push(format!("--resume={id}"));
        }
        argv.extend(self.extra_args.iter().cloned());
        let mut env = vec![
            // Root inside a sandbox is allowed to skip permissions only with this set.
            ("IS_SANDBOX".to_owned(), "1".to_owned()),
            ("CLAUDE_CODE_ENTRYPOINT".to_owned(), "sdk-kraal".to_owned()),
            // Sandboxes reach the model API only: no update checks, telemetry or reports.
            (
                "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC".to_owned(),
                "1".to_owned(),
            ),
            ("DISABLE_AUTOUPDATER".to_owned(), "1".to_owned()),
        ];
        env.extend(self.env.iter().cloned());
        CommandSpec { argv, env }
    }
}

fn line(v: Value) -> String {
    let mut s = v.to_string();
    s.push('\n');
    s
}

/// A user turn (also valid while a turn runs: the CLI queues it).
pub fn encode_user_message(text: &str) -> String {
    line(
        json!({"type": "user", "message": {"role": "user", "content": text}, "parent_tool_use_id": null}),
    )
}

/// A user turn with attachments: images whose bytes are at hand as base64 image content
/// blocks after the text (which names every other attachment by path).
pub fn encode_user_content(text: &str, attachments: &[Attachment]) -> String {
    let mut content = vec![json!({"type": "text", "text": text})];
    for a in attachments.iter().filter(|a| inline_image(a)) {
        let data = crate::base64_of(a.data.as_deref().unwrap_or_default());
        content.push(json!({"type": "image", "source": {"type": "base64", "media_type": a.media_type, "data": data}}));
    }
    line(
        json!({"type": "user", "message": {"role": "user", "content": content}, "parent_tool_use_id": null}),
    )
}

/// Claude takes PNG, JPEG, GIF and WebP images inline.
fn inline_image(a: &Attachment) -> bool {
    a.is_image() && a.data.is_some()
}

/// Stops the current turn.
pub fn encode_interrupt(request_id: &str) -> String {
    line(
        json!({"type": "control_request", "request_id": request_id, "request": {"subtype": "interrupt"}}),
    )
}

/// Answers a `can_use_tool` permission request.
pub fn encode_permission(
    request_id: &str,
    allow: bool,
    input: &Value,
    message: Option<&str>,
) -> String {
    let response = if allow {
        json!({"behavior": "allow", "updatedInput": input})
    } else {
        json!({"behavior": "deny", "message": message.unwrap_or("denied by the user")})
    };
    line(
        json!({"type": "control_response", "response": {"subtype": "success", "request_id": request_id, "response": response}}),
    )
}

/// Turns Claude Code's output lines into events. Keeps the tool calls it has seen so
/// that results can be tied back to them (file changes are reported once the edit
/// succeeded, not when it was attempted).
#[derive(Debug, Default)]
pub struct ClaudeParser {
    tools: HashMap<String, (String, Value)>,
    /// `total_cost_usd` of the last `result`: Claude Code reports the cost of the whole
    /// process run so far, the event model wants each turn's own cost.
    cost_so_far: f64,
}

/// What Claude Code writes as a user message when a turn is interrupted.
const INTERRUPTED_MARKER: &str = "[Request interrupted by user";

const EDIT_TOOLS: [&str; 4] = ["Write", "Edit", "MultiEdit", "NotebookEdit"];

impl ClaudeParser {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn parse_line(&mut self, raw: &str) -> Result<Vec<AgentEvent>, ParseError> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Ok(vec![]);
        }
        let v: Value = serde_json::from_str(raw).map_err(|e| ParseError::new("claude", raw, e))?;
        let Some(kind) = v.get("type").and_then(Value::as_str) else {
            return Err(ParseError::new("claude", raw, "no \"type\" field"));
        };
        let mut out = Vec::new();
        match kind {
            "system" if v["subtype"] == "init" => {
                if let Some(id) = v["session_id"].as_str() {
                    out.push(AgentEvent::AgentSession { id: id.to_owned() });
                }
                out.push(AgentEvent::State {
                    state: SessionState::Working,
                    reason: None,
                });
            }
            "stream_event" => {
                let e = &v["event"];
                if e["type"] == "content_block_delta"
                    && e["delta"]["type"] == "text_delta"
                    && let Some(t) = e["delta"]["text"].as_str()
                {
                    out.push(AgentEvent::AssistantDelta { text: t.to_owned() });
                }
            }
            "assistant" => {
                for block in v["message"]["content"].as_array().into_iter().flatten() {
                    match block["type"].as_str() {
                        Some("text") => {
                            let text = block["text"].as_str().unwrap_or_default();
                            if !text.is_empty() {
                                out.push(AgentEvent::AssistantText {
                                    text: text.to_owned(),
                                });
                            }
                        }
                        Some("thinking") => {
                            let text = block["thinking"].as_str().unwrap_or_default();
                            if !text.is_empty() {
                                out.push(AgentEvent::Thinking {
                                    text: text.to_owned(),
                                });
                            }
                        }
                        Some("tool_use") => {
                            let id = block["id"].as_str().unwrap_or_default().to_owned();
                            let name = block["name"].as_str().unwrap_or_default().to_owned();
                            let input = block["input"].clone();
                            if name == "Bash"
                                && let Some(c) = input["command"].as_str()
                            {
                                out.push(AgentEvent::CommandRun {
                                    command: c.to_owned(),
                                    exit_code: None,
                                });
                            }
                            self.tools.insert(id.clone(), (name.clone(), input.clone()));
                            out.push(AgentEvent::ToolCall { id, name, input });
                        }
                        _ => {}
                    }
                }
            }
            "user" => {
                let content = &v["message"]["content"];
                if let Some(text) = content.as_str() {
                    out.push(AgentEvent::user(text.to_owned()));
                }
                for block in content.as_array().into_iter().flatten() {
                    match block["type"].as_str() {
                        Some("tool_result") => {
                            let id = block["tool_use_id"].as_str().unwrap_or_default().to_owned();
                            let output = tool_output(&block["content"]);
                            let is_error = block["is_error"].as_bool().unwrap_or(false);
                            if !is_error && let Some(change) = self.file_change(&id, &output) {
                                out.push(AgentEvent::ToolResult {
                                    id: id.clone(),
                                    output,
                                    is_error,
                                });
                                out.push(change);
                                continue;
                            }
                            out.push(AgentEvent::ToolResult {
                                id,
                                output,
                                is_error,
                            });
                        }
                        Some("text") if !v["isSynthetic"].as_bool().unwrap_or(false) => {
                            let text = block["text"].as_str().unwrap_or_default();
                            // An interrupted turn ends with this marker and no `result` line.
                            if text.starts_with(INTERRUPTED_MARKER) {
                                out.push(AgentEvent::State {
                                    state: SessionState::WaitingForInput,
                                    reason: Some("interrupted by the user".into()),
                                });
                            } else {
                                out.push(AgentEvent::user(text.to_owned()));
                            }
                        }
                        _ => {}
                    }
                }
            }
            "result" => {
                let u = &v["usage"];
                let n = |k: &str| u[k].as_u64().unwrap_or(0);
                out.push(AgentEvent::Usage {
                    input_tokens: n("input_tokens"),
                    output_tokens: n("output_tokens"),
                    cache_read_tokens: n("cache_read_input_tokens"),
                    cache_write_tokens: n("cache_creation_input_tokens"),
                    cost_usd: v["total_cost_usd"].as_f64().map(|total| {
                        let turn = (total - self.cost_so_far).max(0.0);
                        self.cost_so_far = total;
                        // Cost is in dollars; keep it free of float noise.
                        (turn * 1e9).round() / 1e9
                    }),
                });
                let aborted = v["terminal_reason"]
                    .as_str()
                    .is_some_and(|r| r.starts_with("aborted"));
                if aborted {
                    // An interrupted turn: not an error, the user asked for it.
                    out.push(AgentEvent::State {
                        state: SessionState::WaitingForInput,
                        reason: Some("interrupted by the user".into()),
                    });
                } else {
                    if v["is_error"].as_bool().unwrap_or(false) {
                        let msg = v["result"].as_str().map(str::to_owned).unwrap_or_else(|| {
                            format!("turn failed ({})", v["subtype"].as_str().unwrap_or("error"))
                        });
                        out.push(AgentEvent::Error { message: msg });
                    }
                    out.push(AgentEvent::State {
                        state: SessionState::WaitingForInput,
                        reason: None,
                    });
                }
            }
            "control_request" => {
                let req = &v["request"];
                if req["subtype"] == "can_use_tool" {
                    let request_id = v["request_id"].as_str().unwrap_or_default().to_owned();
                    let tool = req["tool_name"].as_str().unwrap_or_default().to_owned();
                    let description = req["description"].as_str().map(str::to_owned);
                    out.push(AgentEvent::ApprovalRequest {
                        request_id,
                        tool,
                        input: req["input"].clone(),
                        description,
                    });
                    out.push(AgentEvent::State {
                        state: SessionState::NeedsApproval,
                        reason: None,
                    });
                }
            }
            // Acknowledgements, rate-limit notices and future message types carry nothing
            // a user needs to see.
            _ => {}
        }
        Ok(out)
    }

    /// The file change a successful edit tool made.
    fn file_change(&self, tool_id: &str, output: &str) -> Option<AgentEvent> {
        let (name, input) = self.tools.get(tool_id)?;
        if !EDIT_TOOLS.contains(&name.as_str()) {
            return None;
        }
        let path = input["file_path"]
            .as_str()
            .or_else(|| input["notebook_path"].as_str())?
            .to_owned();
        let kind = if name == "Write" && output.contains("created") {
            FileChangeKind::Created
        } else {
            FileChangeKind::Modified
        };
        let diff = match name.as_str() {
            "Edit" => Some(simple_diff(
                input["old_string"].as_str().unwrap_or(""),
                input["new_string"].as_str().unwrap_or(""),
            )),
            "Write" => Some(simple_diff("", input["content"].as_str().unwrap_or(""))),
            _ => None,
        };
        Some(AgentEvent::FileChange { path, kind, diff })
    }
}

/// Claude Code as an [`Adapter`]. Messages sent during a turn are written at once: the
/// CLI queues them and answers them after the current turn.
pub struct ClaudeAdapter {
    spec: AgentSpec,
    resume: Option<String>,
    parser: ClaudeParser,
    busy: bool,
    session: Option<String>,
    /// Inputs of pending permission requests, echoed back when allowed.
    pending: HashMap<String, Value>,
    interrupts: u64,
    /// Messages written to the CLI that no turn has taken in yet (Claude Code echoes what
    /// a turn consumed; several queued messages are consumed together, joined by `\n`).
    unconsumed: std::collections::VecDeque<String>,
    /// Whether this CLI echoes consumed messages at all; one that never did (an older
    /// version, a stand-in) gets no queue tracking.
    echoes: bool,
}

impl ClaudeAdapter {
    pub fn new(spec: &AgentSpec, resume: Option<String>) -> Self {
        ClaudeAdapter {
            spec: spec.clone(),
            session: resume.clone(),
            resume,
            parser: ClaudeParser::new(),
            busy: false,
            pending: HashMap::new(),
            interrupts: 0,
            unconsumed: std::collections::VecDeque::new(),
            echoes: false,
        }
    }
}

impl ClaudeAdapter {
    /// Drops the echoes of messages we sent (they are already in the log, from the moment
    /// they were sent) and marks them consumed. Echoes of messages we did not send stay.
    fn consume_echoes(&mut self, events: Vec<AgentEvent>) -> Vec<AgentEvent> {
        let mut out = Vec::with_capacity(events.len());
        for e in events {
            if let AgentEvent::UserMessage { text, .. } = &e {
                let mut rest = text.as_str();
                let mut matched = 0;
                while let Some(front) = self.unconsumed.front() {
                    let Some(after) = rest.strip_prefix(front.as_str()) else {
                        break;
                    };
                    if !(after.is_empty() || after.starts_with('\n')) {
                        break;
                    }
                    rest = after.strip_prefix('\n').unwrap_or(after);
                    self.unconsumed.pop_front();
                    matched += 1;
                }
                if matched > 0 {
                    self.echoes = true;
                    continue;
                }
            }
            out.push(e);
        }
        out
    }
}

impl Adapter for ClaudeAdapter {
    fn command(&self, gateway: Option<&ModelGateway>) -> CommandSpec {
        let opts = ClaudeOptions {
            binary: None,
            model: self.spec.model.clone(),
            system_prompt: self.spec.system_prompt.clone(),
            resume: self.resume.clone(),
            permissions: match self.spec.permissions {
                PermissionMode::Bypass => Permissions::Bypass,
                PermissionMode::Ask => Permissions::Ask,
            },
            extra_args: Vec::new(),
            env: gateway
                .map(|g| {
                    vec![
                        ("ANTHROPIC_BASE_URL".to_owned(), g.anthropic_base_url()),
                        ("ANTHROPIC_API_KEY".to_owned(), g.key.clone()),
                    ]
                })
                .unwrap_or_default(),
        };
        crate::apply_overrides(opts.command(), &self.spec)
    }

    fn start(&mut self) -> Step {
        Step::default()
    }

    fn on_line(&mut self, line: &str) -> Step {
        let mut step = Step::default();
        match self.parser.parse_line(line) {
            Ok(events) => {
                let mut events = self.consume_echoes(events);
                for e in &mut events {
                    match e {
                        AgentEvent::AgentSession { id } => self.session = Some(id.clone()),
                        AgentEvent::ApprovalRequest {
                            request_id, input, ..
                        } => {
                            self.pending.insert(request_id.clone(), input.clone());
                        }
                        AgentEvent::State { state, reason } => {
                            // A turn ended without any echo so far: this CLI does not
                            // echo, so nothing can be tracked as queued.
                            if *state == SessionState::WaitingForInput && !self.echoes {
                                self.unconsumed.clear();
                            }
                            // A turn ended but messages wait: the agent goes straight on.
                            if *state == SessionState::WaitingForInput
                                && !self.unconsumed.is_empty()
                            {
                                *state = SessionState::Working;
                                *reason = Some(format!(
                                    "{} queued message(s) next",
                                    self.unconsumed.len()
                                ));
                            }
                            self.busy =
                                matches!(state, SessionState::Working | SessionState::NeedsApproval)
                        }
                        _ => {}
                    }
                }
                step.events = events;
            }
            Err(e) => step.problems.push(e),
        }
        step
    }

    fn on_input(&mut self, input: SessionInput) -> Step {
        match input {
            SessionInput::Message { text, attachments } => {
                let full = crate::with_attachment_notes(&text, &attachments, inline_image);
                self.unconsumed.push_back(full.clone());
                let line = if attachments.iter().any(inline_image) {
                    encode_user_content(&full, &attachments)
                } else {
                    encode_user_message(&full)
                };
                let mut step = Step::default()
                    .event(AgentEvent::UserMessage {
                        text,
                        attachments: crate::logged(&attachments),
                    })
                    .write(line);
                if !self.busy {
                    self.busy = true;
                    step = step.event(AgentEvent::State {
                        state: SessionState::Working,
                        reason: None,
                    });
                }
                step
            }
            SessionInput::Interrupt => {
                if !self.busy {
                    return Step::default();
                }
                self.interrupts += 1;
                Step::default().write(encode_interrupt(&format!("kraal-int-{}", self.interrupts)))
            }
            SessionInput::Approval {
                request_id,
                allow,
                message,
            } => {
                let Some(input) = self.pending.remove(&request_id) else {
                    return Step::default().event(AgentEvent::Error {
                        message: format!("no pending approval request {request_id:?}"),
                    });
                };
                Step::default()
                    .event(AgentEvent::ApprovalDecision {
                        request_id: request_id.clone(),
                        allow,
                        message: message.clone(),
                    })
                    .event(AgentEvent::State {
                        state: SessionState::Working,
                        reason: None,
                    })
                    .write(encode_permission(
                        &request_id,
                        allow,
                        &input,
                        message.as_deref(),
                    ))
            }
        }
    }

    fn busy(&self) -> bool {
        self.busy
    }

    fn agent_session(&self) -> Option<String> {
        self.session.clone()
    }
}

/// Tool results are a string or a list of content blocks.
fn tool_output(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter_map(|b| b["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// Removed lines prefixed `-`, added lines prefixed `+`.
fn simple_diff(old: &str, new: &str) -> String {
    let mut d = String::new();
    for l in old.lines() {
        d.push('-');
        d.push_str(l);
        d.push('\n');
    }
    for l in new.lines() {
        d.push('+');
        d.push_str(l);
        d.push('\n');
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_and_overrides() {
        let o = ClaudeOptions {
            binary: Some("/opt/claude".into()),
            model: Some("opus".into()),
            system_prompt: Some("Be brief.".into()),
            resume: Some("-weird-id".into()),
            permissions: Permissions::Ask,
            extra_args: vec!["--max-turns".into(), "3".into()],
            env: vec![("ANTHROPIC_BASE_URL".into(), "http://proxy".into())],
        };
        let c = o.command();
        assert_eq!(c.argv[0], "/opt/claude");
        let joined = c.argv.join(" ");
        assert!(
            joined.contains("-p --input-format stream-json --output-format stream-json --verbose")
        );
        assert!(joined.contains("--permission-prompt-tool stdio"));
        assert!(!joined.contains("--dangerously-skip-permissions"));
        assert!(
            c.argv.contains(&"--resume=-weird-id".to_owned()),
            "equals form: {joined}"
        );
        assert!(c.argv.contains(&"--model=opus".to_owned()));
        assert!(joined.ends_with("--max-turns 3"));
        assert!(c.env.contains(&("IS_SANDBOX".into(), "1".into())));
        assert!(
            c.env
                .contains(&("ANTHROPIC_BASE_URL".into(), "http://proxy".into()))
        );
        assert!(
            ClaudeOptions::default()
                .command()
                .argv
                .contains(&"--dangerously-skip-permissions".to_owned())
        );
    }

    #[test]
    fn encoders_write_one_json_line() {
        let u = encode_user_message("fix \"it\"\nplease");
        assert!(u.ends_with('\n') && u.matches('\n').count() == 1);
        let v: Value = serde_json::from_str(&u).unwrap();
        assert_eq!(v["message"]["content"], "fix \"it\"\nplease");
        let i: Value = serde_json::from_str(&encode_interrupt("r1")).unwrap();
        assert_eq!(i["request"]["subtype"], "interrupt");
        let a: Value = serde_json::from_str(&encode_permission(
            "r2",
            true,
            &json!({"command": "ls"}),
            None,
        ))
        .unwrap();
        assert_eq!(a["response"]["response"]["behavior"], "allow");
        assert_eq!(a["response"]["response"]["updatedInput"]["command"], "ls");
        let d: Value =
            serde_json::from_str(&encode_permission("r3", false, &json!({}), Some("no"))).unwrap();
        assert_eq!(
            d["response"]["response"],
            json!({"behavior": "deny", "message": "no"})
        );
    }

    #[test]
    fn malformed_lines_are_errors_not_panics() {
        let mut p = ClaudeParser::new();
        for bad in ["{not json", "[1,2]", "{\"no_type\": 1}", "\u{0}\u{1}"] {
            let e = p.parse_line(bad).unwrap_err();
            assert!(
                e.to_string().starts_with("unparseable claude output line"),
                "{e}"
            );
        }
        assert!(p.parse_line("").unwrap().is_empty());
        assert!(
            p.parse_line(r#"{"type":"some_future_type","x":1}"#)
                .unwrap()
                .is_empty()
        );
        // Fields of the wrong shape degrade to nothing rather than crashing.
        assert!(
            p.parse_line(r#"{"type":"assistant","message":{"content":"oops"}}"#)
                .unwrap()
                .is_empty()
        );
        let ev = p
            .parse_line(r#"{"type":"result","usage":"x","is_error":true}"#)
            .unwrap();
        assert!(
            matches!(&ev[1], AgentEvent::Error { message } if message.contains("turn failed")),
            "{ev:?}"
        );
    }

    #[test]
    fn an_interrupted_turn_ends_without_a_result_line() {
        let mut p = ClaudeParser::new();
        let ev = p
            .parse_line(r#"{"type":"user","message":{"role":"user","content":[{"type":"text","text":"[Request interrupted by user]"}]}}"#)
            .unwrap();
        assert_eq!(
            ev,
            vec![AgentEvent::State {
                state: SessionState::WaitingForInput,
                reason: Some("interrupted by the user".into())
            }]
        );
    }

    #[test]
    fn permission_requests_become_approvals() {
        let mut p = ClaudeParser::new();
        let ev = p
            .parse_line(r#"{"type":"control_request","request_id":"req-1","request":{"subtype":"can_use_tool","tool_name":"Bash","input":{"command":"rm -rf build"},"description":"Delete build"}}"#)
            .unwrap();
        assert_eq!(
            ev,
            vec![
                AgentEvent::ApprovalRequest {
                    request_id: "req-1".into(),
                    tool: "Bash".into(),
                    input: json!({"command": "rm -rf build"}),
                    description: Some("Delete build".into())
                },
                AgentEvent::State {
                    state: SessionState::NeedsApproval,
                    reason: None
                },
            ]
        );
    }
}
