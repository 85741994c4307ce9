//! Agent adapters. Each one is pure: it builds the command line for an agent CLI, encodes
//! what the user sends into the CLI's input protocol, and parses the CLI's output into
//! [`kraal_core::AgentEvent`]s. Running the process is someone else's job (the guest
//! agent), so adapters are tested from transcripts without spawning anything.

pub mod acp;
pub mod claude;
pub mod codex;

use kraal_core::{AgentEvent, AgentProtocol, AgentSpec, Attachment, ModelGateway, SessionInput};

/// A command to start an agent: program, arguments and extra environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandSpec {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
}

/// A line of agent output that could not be understood. Callers log it and go on.
#[derive(Debug, thiserror::Error)]
#[error("unparseable {agent} output line ({reason}): {excerpt}")]
pub struct ParseError {
    pub agent: &'static str,
    pub reason: String,
    pub excerpt: String,
}

impl ParseError {
    fn new(agent: &'static str, line: &str, reason: impl ToString) -> Self {
        let excerpt: String = line.chars().take(200).collect();
        ParseError {
            agent,
            reason: reason.to_string(),
            excerpt,
        }
    }
}

/// What an adapter wants done after it saw a line or an input: events for the session log,
/// lines to write to the agent's standard input (each ending in `\n`), and output it could
/// not understand (to be logged, never fatal).
#[derive(Debug, Default)]
pub struct Step {
    pub events: Vec<AgentEvent>,
    pub writes: Vec<String>,
    pub problems: Vec<ParseError>,
}

impl Step {
    pub fn event(mut self, e: AgentEvent) -> Self {
        self.events.push(e);
        self
    }

    pub fn write(mut self, line: String) -> Self {
        self.writes.push(line);
        self
    }

    pub fn extend(&mut self, other: Step) {
        self.events.extend(other.events);
        self.writes.extend(other.writes);
        self.problems.extend(other.problems);
    }
}

/// One agent protocol, without IO. The runner spawns [`Adapter::command`], writes the
/// lines of [`Adapter::start`], then feeds every output line and every user input through
/// the adapter and does what the returned [`Step`]s say.
pub trait Adapter: Send {
    /// The command line; with a `gateway`, the agent is pointed at it (base URL and
    /// placeholder key in whatever form the agent reads them). The user's overrides in the
    /// spec come last and win.
    fn command(&self, gateway: Option<&ModelGateway>) -> CommandSpec;
    /// Lines to send right after the process started (handshakes).
    fn start(&mut self) -> Step;
    /// One line of the agent's standard output, without its newline.
    fn on_line(&mut self, line: &str) -> Step;
    /// Something the user sent.
    fn on_input(&mut self, input: SessionInput) -> Step;
    /// Whether a turn is running (used by watchdogs).
    fn busy(&self) -> bool;
    /// The agent's own conversation id, once known (used to resume after a restart).
    fn agent_session(&self) -> Option<String>;
}

/// The adapter for `spec`; `resume` is the agent's own conversation id from an earlier run.
pub fn adapter(spec: &AgentSpec, resume: Option<String>) -> Box<dyn Adapter> {
    match spec.agent.protocol() {
        AgentProtocol::ClaudeStreamJson => Box::new(claude::ClaudeAdapter::new(spec, resume)),
        AgentProtocol::CodexAppServer => Box::new(codex::CodexAdapter::new(spec, resume)),
        AgentProtocol::Acp => Box::new(acp::AcpAdapter::new(spec, resume)),
    }
}

/// Adds `spec`'s argument and environment overrides to an adapter's command.
fn apply_overrides(mut cmd: CommandSpec, spec: &AgentSpec) -> CommandSpec {
    if let Some(b) = &spec.binary {
        cmd.argv[0] = b.clone();
    }
    cmd.argv.extend(spec.args.iter().cloned());
    for (k, v) in &spec.env {
        cmd.env.retain(|(ek, _)| ek != k);
        cmd.env.push((k.clone(), v.clone()));
    }
    cmd
}

fn json_line(v: serde_json::Value) -> String {
    let mut s = v.to_string();
    s.push('\n');
    s
}

/// Where an attachment is for the agent (its path under `/workspace`).
pub fn attachment_path(a: &Attachment) -> String {
    format!("/workspace/{}", a.path)
}

/// `text` followed by a line naming each attachment the agent does not get inline
/// (`inline` says which it does), so it can open them with its own tools.
pub fn with_attachment_notes(
    text: &str,
    attachments: &[Attachment],
    inline: impl Fn(&Attachment) -> bool,
) -> String {
    let mut out = text.to_owned();
    for a in attachments.iter().filter(|a| !inline(a)) {
        out.push_str(&format!(
            "\n\n[Attached file: {} ({}, {}, {} bytes)]",
            attachment_path(a),
            a.name,
            a.media_type,
            a.size
        ));
    }
    out
}

/// The attachment's bytes as base64 (for protocols that take images inline).
fn base64_of(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// Attachments as event logs keep them: without their bytes.
fn logged(attachments: &[Attachment]) -> Vec<Attachment> {
    attachments.iter().map(Attachment::without_data).collect()
}
