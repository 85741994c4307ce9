//! Agent Client Protocol (JSON-RPC 2.0 over stdio, one message per line), the protocol of
//! Gemini CLI, Qwen Code, Goose and OpenCode.
//!
//! `initialize` → `session/new` (or `session/load` to resume) → one `session/prompt` per
//! turn; the turn ends when the prompt's response (with a `stopReason`) arrives. Progress
//! comes as `session/update` notifications; the agent asks for permission with
//! `session/request_permission`. ACP has no steering, so messages sent during a turn are
//! queued and sent together as the next prompt; `session/cancel` interrupts.

use std::collections::{HashMap, VecDeque};

use kraal_core::{
    AgentEvent, AgentKind, AgentSpec, Attachment, FileChangeKind, ModelGateway, PermissionMode,
    SessionInput, SessionState,
};
use serde_json::{Value, json};

use crate::{Adapter, CommandSpec, ParseError, Step, json_line};

/// The ACP protocol version this client speaks.
pub const PROTOCOL_VERSION: u64 = 1;

#[derive(Debug, Clone)]
enum Pending {
    Initialize,
    Authenticate,
    NewSession,
    LoadSession,
    Prompt,
}

#[derive(Debug, Clone)]
struct Permission {
    rpc_id: Value,
    allow_option: Option<String>,
    reject_option: Option<String>,
}

pub struct AcpAdapter {
    spec: AgentSpec,
    resume: Option<String>,
    next_id: u64,
    pending: HashMap<u64, Pending>,
    session: Option<String>,
    can_load: bool,
    /// `session/load` replays history as updates; those are already in the log.
    loading: bool,
    busy: bool,
    queued: VecDeque<(String, Vec<Attachment>)>,
    /// Whether the agent takes images in prompts (`promptCapabilities.image`).
    images: bool,
    text: String,
    thought: String,
    permissions: HashMap<String, Permission>,
    tools: HashMap<String, Tool>,
}

/// A tool call as reported so far. Agents announce a call before its input is known
/// (`pending`, empty `rawInput`); kraal reports it once the input is there.
#[derive(Debug, Clone, Default)]
struct Tool {
    name: String,
    kind: String,
    input: Value,
    locations: Vec<String>,
    announced: bool,
}

/// The command line that starts `kind` in ACP mode.
pub fn acp_command(kind: AgentKind, permissions: PermissionMode) -> CommandSpec {
    let bypass = permissions == PermissionMode::Bypass;
    let (argv, env): (Vec<&str>, Vec<(&str, &str)>) = match kind {
        AgentKind::Gemini => (
            if bypass {
                vec!["gemini", "--acp", "--yolo"]
            } else {
                vec!["gemini", "--acp"]
            },
            // The sandbox is the trust boundary; headless Gemini CLI refuses untrusted
            // folders otherwise.
            vec![("GEMINI_CLI_TRUST_WORKSPACE", "true")],
        ),
        AgentKind::Qwen => (
            if bypass {
                vec!["qwen", "--acp", "--yolo"]
            } else {
                vec!["qwen", "--acp"]
            },
            vec![],
        ),
        AgentKind::Goose => (
            vec!["goose", "acp"],
            vec![("GOOSE_MODE", if bypass { "auto" } else { "approve" })],
        ),
        AgentKind::Opencode => (vec!["opencode", "acp"], vec![]),
        // Claude and Codex have their own adapters; through ACP they need Zed's bridges.
        AgentKind::Claude => (vec!["claude-agent-acp"], vec![]),
        AgentKind::Codex => (vec!["codex-acp"], vec![]),
    };
    CommandSpec {
        argv: argv.into_iter().map(String::from).collect(),
        env: env
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
    }
}

/// The authentication method kraal picks for an agent, among those it offers: the one
/// that uses the API key kraal configures (the gateway's placeholder).
fn auth_method<'a>(kind: AgentKind, offered: &[&'a str]) -> Option<&'a str> {
    let wanted: &[&str] = match kind {
        AgentKind::Gemini => &["gemini-api-key"],
        AgentKind::Qwen => &["openai"],
        _ => &[],
    };
    offered.iter().copied().find(|m| wanted.contains(m))
}

/// How each ACP agent is pointed at the model gateway and told its model: extra
/// arguments and environment.
pub fn agent_setup(
    kind: AgentKind,
    gateway: Option<&ModelGateway>,
    model: Option<&str>,
) -> (Vec<String>, Vec<(String, String)>) {
    let mut args: Vec<String> = Vec::new();
    let mut env: Vec<(&str, String)> = Vec::new();
    match kind {
        AgentKind::Gemini => {
            if let Some(g) = gateway {
                env.push((
                    "GOOGLE_GEMINI_BASE_URL",
                    format!("{}/google", g.url.trim_end_matches('/')),
                ));
                env.push(("GEMINI_API_KEY", g.key.clone()));
            }
            if let Some(m) = model {
                args.extend(["--model".into(), m.into()]);
            }
        }
        AgentKind::Qwen => {
            if let Some(g) = gateway {
                env.push(("OPENAI_BASE_URL", g.openai_base_url()));
                env.push(("OPENAI_API_KEY", g.key.clone()));
                args.push("--auth-type=openai".into());
            }
            if let Some(m) = model {
                args.extend(["--model".into(), m.into()]);
            }
        }
        AgentKind::Goose => {
            if let Some(g) = gateway {
                env.push(("GOOSE_PROVIDER", "openai".into()));
                env.push(("OPENAI_HOST", g.url.trim_end_matches('/').to_owned()));
                env.push(("OPENAI_BASE_PATH", "openai/v1/chat/completions".into()));
                env.push(("OPENAI_API_KEY", g.key.clone()));
            }
            if let Some(m) = model {
                env.push(("GOOSE_MODEL", m.into()));
            }
        }
        AgentKind::Opencode => {
            let mut config = json!({});
            if let Some(g) = gateway {
                config["provider"] = json!({"openai": {"options": {"baseURL": g.openai_base_url(), "apiKey": g.key}}});
                env.push(("OPENAI_API_KEY", g.key.clone()));
            }
            if let Some(m) = model {
                config["model"] = json!(if m.contains('/') {
                    m.to_owned()
                } else {
                    format!("openai/{m}")
                });
            }
            if config.as_object().is_some_and(|o| !o.is_empty()) {
                env.push(("OPENCODE_CONFIG_CONTENT", config.to_string()));
            }
        }
        AgentKind::Claude => {
            if let Some(g) = gateway {
                env.push(("ANTHROPIC_BASE_URL", g.anthropic_base_url()));
                env.push(("ANTHROPIC_API_KEY", g.key.clone()));
            }
            if let Some(m) = model {
                env.push(("ANTHROPIC_MODEL", m.into()));
            }
        }
        AgentKind::Codex => {
            if let Some(g) = gateway {
                env.push(("OPENAI_BASE_URL", g.openai_base_url()));
                env.push(("OPENAI_API_KEY", g.key.clone()));
            }
        }
    }
    (
        args,
        env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
    )
}

impl AcpAdapter {
    pub fn new(spec: &AgentSpec, resume: Option<String>) -> Self {
        AcpAdapter {
            spec: spec.clone(),
            resume,
            next_id: 1,
            pending: HashMap::new(),
            session: None,
            can_load: false,
            loading: false,
            busy: false,
            queued: VecDeque::new(),
            images: false,
            text: String::new(),
            thought: String::new(),
            permissions: HashMap::new(),
            tools: HashMap::new(),
        }
    }

    fn agent_name(&self) -> &'static str {
        self.spec.agent.as_str()
    }

    fn request(&mut self, method: &str, params: Value, what: Pending) -> String {
        let id = self.next_id;
        self.next_id += 1;
        self.pending.insert(id, what);
        json_line(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
    }

    fn cwd(&self) -> String {
        self.spec.cwd.clone().unwrap_or_else(|| "/workspace".into())
    }

    fn prompt(&mut self, text: &str, attachments: &[Attachment]) -> String {
        self.busy = true;
        let sid = self.session.clone().unwrap_or_default();
        let prompt = self.prompt_blocks(text, attachments);
        self.request(
            "session/prompt",
            json!({"sessionId": sid, "prompt": prompt}),
            Pending::Prompt,
        )
    }

    /// The prompt's content blocks: the text, then each attachment as an image block when
    /// the agent takes images and its bytes are at hand, as a resource link (which every
    /// ACP agent accepts) otherwise.
    fn prompt_blocks(&self, text: &str, attachments: &[Attachment]) -> Value {
        let mut blocks = vec![json!({"type": "text", "text": text})];
        for a in attachments {
            if self.images
                && a.is_image()
                && let Some(data) = &a.data
            {
                blocks.push(json!({"type": "image", "mimeType": a.media_type, "data": crate::base64_of(data)}));
            } else {
                blocks.push(json!({"type": "resource_link", "uri": format!("file://{}", crate::attachment_path(a)), "name": a.name, "mimeType": a.media_type, "size": a.size}));
            }
        }
        Value::Array(blocks)
    }

    /// Turns buffered chunks into complete text and thinking events.
    fn flush(&mut self, step: &mut Step) {
        if !self.thought.is_empty() {
            step.events.push(AgentEvent::Thinking {
                text: std::mem::take(&mut self.thought),
            });
        }
        if !self.text.is_empty() {
            step.events.push(AgentEvent::AssistantText {
                text: std::mem::take(&mut self.text),
            });
        }
    }

    /// Sends what was queued during the last turn as the next prompt.
    fn next_prompt(&mut self, step: &mut Step) -> bool {
        if self.queued.is_empty() || self.session.is_none() {
            return false;
        }
        let (texts, files): (Vec<String>, Vec<Vec<Attachment>>) = self.queued.drain(..).unzip();
        let files: Vec<Attachment> = files.into_iter().flatten().collect();
        let line = self.prompt(&texts.join("\n\n"), &files);
        step.writes.push(line);
        true
    }

    /// After the handshake: load the conversation to resume, or start a new one.
    fn begin(&mut self) -> String {
        match self.resume.clone() {
            Some(sid) if self.can_load => {
                self.loading = true;
                self.session = Some(sid.clone());
                let params = json!({"sessionId": sid, "cwd": self.cwd(), "mcpServers": []});
                self.request("session/load", params, Pending::LoadSession)
            }
            _ => self.new_session(),
        }
    }

    fn new_session(&mut self) -> String {
        let params = json!({"cwd": self.cwd(), "mcpServers": []});
        self.request("session/new", params, Pending::NewSession)
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
                // Not fatal: the agent may be logged in another way; session/new tells.
                Pending::Authenticate => {
                    let line = self.begin();
                    return step.write(line);
                }
                // The agent cannot load the old session: start a fresh one and say so.
                Pending::LoadSession => {
                    self.loading = false;
                    step.events.push(AgentEvent::Error {
                        message: format!("cannot resume the previous conversation: {message}"),
                    });
                    let line = self.new_session();
                    return step.write(line);
                }
                Pending::Initialize | Pending::NewSession => {
                    step.events.push(AgentEvent::Error {
                        message: format!("{} refused to start: {message}", self.agent_name()),
                    });
                    return step.event(AgentEvent::State {
                        state: SessionState::Failed,
                        reason: Some(message),
                    });
                }
                Pending::Prompt => {
                    self.busy = false;
                    self.flush(&mut step);
                    step.events.push(AgentEvent::Error { message });
                    if !self.next_prompt(&mut step) {
                        step.events.push(AgentEvent::State {
                            state: SessionState::WaitingForInput,
                            reason: None,
                        });
                    }
                    return step;
                }
            }
        }
        let result = &v["result"];
        match what {
            Pending::Initialize => {
                self.can_load = result["agentCapabilities"]["loadSession"]
                    .as_bool()
                    .unwrap_or(false);
                self.images = result["agentCapabilities"]["promptCapabilities"]["image"]
                    .as_bool()
                    .unwrap_or(false);
                let offered: Vec<&str> = result["authMethods"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|m| m["id"].as_str())
                    .collect();
                let line = match auth_method(self.spec.agent, &offered) {
                    Some(method) => self.request(
                        "authenticate",
                        json!({"methodId": method}),
                        Pending::Authenticate,
                    ),
                    None => self.begin(),
                };
                step = step.write(line);
            }
            // Whether or not it worked (the agent may already be logged in), go on.
            Pending::Authenticate => {
                let line = self.begin();
                step = step.write(line);
            }
            Pending::NewSession | Pending::LoadSession => {
                self.loading = false;
                if let Some(sid) = result["sessionId"].as_str() {
                    self.session = Some(sid.to_owned());
                }
                if let Some(sid) = self.session.clone() {
                    step.events.push(AgentEvent::AgentSession { id: sid });
                }
                if !self.next_prompt(&mut step) {
                    step.events.push(AgentEvent::State {
                        state: SessionState::WaitingForInput,
                        reason: None,
                    });
                }
            }
            Pending::Prompt => {
                self.busy = false;
                self.flush(&mut step);
                let reason = match result["stopReason"].as_str() {
                    Some("cancelled") => Some("interrupted by the user".to_owned()),
                    Some("refusal") => Some("the agent refused".to_owned()),
                    Some("max_tokens") => Some("output token limit reached".to_owned()),
                    Some("max_turn_requests") => Some("turn request limit reached".to_owned()),
                    _ => None,
                };
                if let Some(u) = result.get("usage").filter(|u| u.is_object()) {
                    let n = |k: &str| u[k].as_u64().unwrap_or(0);
                    step.events.push(AgentEvent::Usage {
                        input_tokens: n("inputTokens"),
                        output_tokens: n("outputTokens"),
                        cache_read_tokens: n("cachedReadTokens"),
                        cache_write_tokens: n("cachedWriteTokens"),
                        cost_usd: None,
                    });
                }
                if !self.next_prompt(&mut step) {
                    step.events.push(AgentEvent::State {
                        state: SessionState::WaitingForInput,
                        reason,
                    });
                }
            }
        }
        step
    }

    fn on_update(&mut self, u: &Value) -> Step {
        let mut step = Step::default();
        if self.loading {
            return step;
        }
        let text_of = |c: &Value| c["text"].as_str().unwrap_or_default().to_owned();
        match u["sessionUpdate"].as_str() {
            Some("agent_message_chunk") => {
                let t = text_of(&u["content"]);
                if !t.is_empty() {
                    self.text.push_str(&t);
                    step.events.push(AgentEvent::AssistantDelta { text: t });
                }
            }
            Some("agent_thought_chunk") => self.thought.push_str(&text_of(&u["content"])),
            Some("tool_call") => {
                self.flush(&mut step);
                self.tool_update(u, &mut step);
            }
            Some("tool_call_update") => self.tool_update(u, &mut step),
            // Plans, mode changes, command lists and echoed user chunks are not events.
            _ => {}
        }
        step
    }

    /// Folds a `tool_call` or `tool_call_update` into what is known of the call; reports
    /// the call once its input is known (or it started), and its result and file changes
    /// once it finished.
    fn tool_update(&mut self, u: &Value, step: &mut Step) {
        let status = u["status"].as_str();
        let id = u["toolCallId"].as_str().unwrap_or_default().to_owned();
        let t = self.tools.entry(id.clone()).or_default();
        if let Some(n) = u["_meta"]["toolName"].as_str() {
            t.name = n.to_owned();
        } else if t.name.is_empty()
            && let Some(n) = u["title"].as_str().or_else(|| u["kind"].as_str())
        {
            t.name = n.to_owned();
        }
        if let Some(k) = u["kind"].as_str() {
            t.kind = k.to_owned();
        }
        let raw = &u["rawInput"];
        if raw.as_object().is_some_and(|o| !o.is_empty()) {
            t.input = raw.clone();
        }
        for l in u["locations"].as_array().into_iter().flatten() {
            if let Some(p) = l["path"].as_str()
                && !t.locations.iter().any(|x| x == p)
            {
                t.locations.push(p.to_owned());
            }
        }
        let started = !matches!(status, None | Some("pending"));
        let known = t.input.as_object().is_some_and(|o| !o.is_empty());
        if !t.announced && (known || started) {
            t.announced = true;
            let name = if t.name.is_empty() {
                "tool".to_owned()
            } else {
                t.name.clone()
            };
            let input = if known {
                t.input.clone()
            } else {
                json!({"kind": t.kind, "locations": t.locations})
            };
            if t.kind == "execute"
                && let Some(c) = input["command"].as_str()
            {
                step.events.push(AgentEvent::CommandRun {
                    command: c.to_owned(),
                    exit_code: None,
                });
            }
            step.events.push(AgentEvent::ToolCall {
                id: id.clone(),
                name,
                input,
            });
        }
        if !matches!(status, Some("completed") | Some("failed")) {
            return;
        }
        let (kind, locations) = (t.kind.clone(), t.locations.clone());
        let mut output = Vec::new();
        let mut changes = Vec::new();
        for c in u["content"].as_array().into_iter().flatten() {
            match c["type"].as_str() {
                Some("content") => {
                    if let Some(t) = c["content"]["text"].as_str() {
                        output.push(t.to_owned());
                    }
                }
                Some("diff") => {
                    let path = c["path"].as_str().unwrap_or_default().to_owned();
                    let old = c["oldText"].as_str();
                    let new = c["newText"].as_str().unwrap_or_default();
                    let kind = if old.is_none_or(str::is_empty) {
                        FileChangeKind::Created
                    } else {
                        FileChangeKind::Modified
                    };
                    let mut diff = String::new();
                    for l in old.unwrap_or_default().lines() {
                        diff.push_str(&format!("-{l}\n"));
                    }
                    for l in new.lines() {
                        diff.push_str(&format!("+{l}\n"));
                    }
                    changes.push(AgentEvent::FileChange {
                        path,
                        kind,
                        diff: Some(diff),
                    });
                }
                _ => {}
            }
        }
        if output.is_empty()
            && let Some(raw) = u.get("rawOutput").filter(|r| !r.is_null())
        {
            output.push(match raw {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            });
        }
        // An edit that reported no diff still changed the files it named.
        if changes.is_empty() && kind == "edit" {
            for path in locations {
                changes.push(AgentEvent::FileChange {
                    path,
                    kind: FileChangeKind::Modified,
                    diff: None,
                });
            }
        }
        let failed = status == Some("failed");
        step.events.push(AgentEvent::ToolResult {
            id,
            output: output.join("\n"),
            is_error: failed,
        });
        if !failed {
            step.events.extend(changes);
        }
    }

    fn on_request(&mut self, method: &str, v: &Value) -> Step {
        let p = &v["params"];
        if method != "session/request_permission" {
            // We announced no fs or terminal capability; refuse anything else explicitly.
            return Step::default().write(json_line(json!({
                "jsonrpc": "2.0",
                "id": v["id"],
                "error": {"code": -32601, "message": format!("{method} is not supported by this client")},
            })));
        }
        let options = p["options"].as_array().cloned().unwrap_or_default();
        let pick = |kinds: &[&str]| {
            kinds.iter().find_map(|k| {
                options
                    .iter()
                    .find(|o| o["kind"] == *k)
                    .and_then(|o| o["optionId"].as_str().map(str::to_owned))
            })
        };
        let perm = Permission {
            rpc_id: v["id"].clone(),
            allow_option: pick(&["allow_once", "allow_always"]),
            reject_option: pick(&["reject_once", "reject_always"]),
        };
        let request_id = match &v["id"] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let tc = &p["toolCall"];
        let tool = tc["title"]
            .as_str()
            .or_else(|| tc["kind"].as_str())
            .unwrap_or("tool")
            .to_owned();
        let input = if tc["rawInput"].is_null() {
            tc.clone()
        } else {
            tc["rawInput"].clone()
        };
        let mut step = Step::default().event(AgentEvent::ApprovalRequest {
            request_id: request_id.clone(),
            tool,
            input,
            description: tc["title"].as_str().map(str::to_owned),
        });
        if self.spec.permissions == PermissionMode::Bypass {
            // Bypass means bypass, even for agents that ask anyway.
            step.events.push(AgentEvent::ApprovalDecision {
                request_id,
                allow: true,
                message: Some("allowed automatically (permissions: bypass)".into()),
            });
            step.writes.push(permission_response(&perm, true));
            return step;
        }
        self.permissions.insert(request_id, perm);
        step.event(AgentEvent::State {
            state: SessionState::NeedsApproval,
            reason: None,
        })
    }
}

fn permission_response(p: &Permission, allow: bool) -> String {
    let option = if allow {
        p.allow_option.as_ref()
    } else {
        p.reject_option.as_ref()
    };
    let outcome = match option {
        Some(id) => json!({"outcome": "selected", "optionId": id}),
        None => json!({"outcome": "cancelled"}),
    };
    json_line(json!({"jsonrpc": "2.0", "id": p.rpc_id, "result": {"outcome": outcome}}))
}

impl Adapter for AcpAdapter {
    fn command(&self, gateway: Option<&ModelGateway>) -> CommandSpec {
        let mut cmd = acp_command(self.spec.agent, self.spec.permissions);
        let (args, env) = agent_setup(self.spec.agent, gateway, self.spec.model.as_deref());
        cmd.argv.extend(args);
        cmd.env.extend(env);
        crate::apply_overrides(cmd, &self.spec)
    }

    fn start(&mut self) -> Step {
        let line = self.request(
            "initialize",
            json!({
                "protocolVersion": PROTOCOL_VERSION,
                "clientCapabilities": {"fs": {"readTextFile": false, "writeTextFile": false}, "terminal": false},
                "clientInfo": {"name": "kraal", "version": env!("CARGO_PKG_VERSION")},
            }),
            Pending::Initialize,
        );
        Step::default().write(line)
    }

    fn on_line(&mut self, line: &str) -> Step {
        let raw = line.trim();
        if raw.is_empty() {
            return Step::default();
        }
        let name = self.agent_name();
        let v: Value = match serde_json::from_str(raw) {
            Ok(v @ Value::Object(_)) => v,
            Ok(_) => {
                let mut s = Step::default();
                s.problems
                    .push(ParseError::new(name, raw, "not a JSON object"));
                return s;
            }
            Err(e) => {
                let mut s = Step::default();
                s.problems.push(ParseError::new(name, raw, e));
                return s;
            }
        };
        match (v.get("method").and_then(Value::as_str), v.get("id")) {
            (Some("session/update"), None) => self.on_update(&v["params"]["update"]),
            (Some(_), None) => Step::default(),
            (Some(m), Some(_)) => self.on_request(m, &v),
            (None, Some(id)) => match id.as_u64() {
                Some(id) => self.on_response(id, &v),
                None => Step::default(),
            },
            (None, None) => {
                let mut s = Step::default();
                s.problems.push(ParseError::new(
                    name,
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
                if self.busy || self.session.is_none() {
                    self.queued.push_back((text, attachments));
                    if self.session.is_none() && !self.busy {
                        self.busy = true;
                        step.events.push(AgentEvent::State {
                            state: SessionState::Working,
                            reason: None,
                        });
                    }
                    return step;
                }
                let line = self.prompt(&text, &attachments);
                step.write(line).event(AgentEvent::State {
                    state: SessionState::Working,
                    reason: None,
                })
            }
            SessionInput::Interrupt => match (&self.session, self.busy) {
                (Some(sid), true) => {
                    // Queued messages are the user's too: they are sent after the cancel.
                    Step::default().write(json_line(json!({"jsonrpc": "2.0", "method": "session/cancel", "params": {"sessionId": sid}})))
                }
                _ => Step::default(),
            },
            SessionInput::Approval {
                request_id,
                allow,
                message,
            } => {
                let Some(p) = self.permissions.remove(&request_id) else {
                    return Step::default().event(AgentEvent::Error {
                        message: format!("no pending approval request {request_id:?}"),
                    });
                };
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
                    .write(permission_response(&p, allow))
            }
        }
    }

    fn busy(&self) -> bool {
        self.busy
    }

    fn agent_session(&self) -> Option<String> {
        self.session.clone().or_else(|| self.resume.clone())
    }
}
