//! Sessions: one agent conversation each. Ids, which agent runs, how it is launched, and
//! what a user can send to it.

use std::fmt;

use rand::Rng;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Why a session id, agent name or launch setting was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("{id:?} is not a session id (expected 'se-' followed by 12 hex digits)")]
    BadId { id: String },
    #[error("unknown agent {name:?}; known agents: claude, codex, gemini, qwen, goose, opencode")]
    UnknownAgent { name: String },
    #[error("environment entry {entry:?} is not NAME=VALUE with a valid variable name")]
    BadEnv { entry: String },
}

/// Immutable random identifier of a session, `se-` followed by 12 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(try_from = "String", into = "String")]
#[schema(value_type = String, example = "se-0123456789ab")]
pub struct SessionId(String);

impl SessionId {
    pub const PREFIX: &'static str = "se-";

    pub fn random() -> Self {
        let n: u64 = rand::thread_rng().r#gen::<u64>() & 0xffff_ffff_ffff;
        SessionId(format!("{}{n:012x}", Self::PREFIX))
    }

    pub fn parse(s: &str) -> Result<Self, SessionError> {
        let ok = s.strip_prefix(Self::PREFIX).is_some_and(|hex| {
            hex.len() == 12
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        });
        if ok {
            Ok(SessionId(s.to_owned()))
        } else {
            Err(SessionError::BadId { id: s.to_owned() })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for SessionId {
    type Error = SessionError;
    fn try_from(s: String) -> Result<Self, SessionError> {
        SessionId::parse(&s)
    }
}

impl From<SessionId> for String {
    fn from(id: SessionId) -> String {
        id.0
    }
}

/// Which coding agent a session runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AgentKind {
    Claude,
    Codex,
    Gemini,
    Qwen,
    Goose,
    Opencode,
}

/// The wire protocol an agent is driven with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentProtocol {
    /// Claude Code `-p --input-format stream-json --output-format stream-json`.
    ClaudeStreamJson,
    /// `codex app-server` JSON-RPC.
    CodexAppServer,
    /// Agent Client Protocol (JSON-RPC over stdio).
    Acp,
}

impl AgentKind {
    pub const ALL: [AgentKind; 6] = [
        AgentKind::Claude,
        AgentKind::Codex,
        AgentKind::Gemini,
        AgentKind::Qwen,
        AgentKind::Goose,
        AgentKind::Opencode,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AgentKind::Claude => "claude",
            AgentKind::Codex => "codex",
            AgentKind::Gemini => "gemini",
            AgentKind::Qwen => "qwen",
            AgentKind::Goose => "goose",
            AgentKind::Opencode => "opencode",
        }
    }

    pub fn parse(s: &str) -> Result<Self, SessionError> {
        AgentKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| SessionError::UnknownAgent { name: s.to_owned() })
    }

    pub fn protocol(self) -> AgentProtocol {
        match self {
            AgentKind::Claude => AgentProtocol::ClaudeStreamJson,
            AgentKind::Codex => AgentProtocol::CodexAppServer,
            AgentKind::Gemini | AgentKind::Qwen | AgentKind::Goose | AgentKind::Opencode => {
                AgentProtocol::Acp
            }
        }
    }
}

impl fmt::Display for AgentKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How tool use is authorised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PermissionMode {
    /// Everything is allowed without asking; the sandbox is the boundary.
    #[default]
    Bypass,
    /// The agent asks before acting; the user answers with approve/deny.
    Ask,
}

/// Limits after which a stuck agent is declared failed instead of hanging forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Watchdog {
    /// A turn that prints nothing for this long is interrupted, then killed.
    pub turn_silence_secs: u64,
    /// Time an agent gets to exit after its input is closed, or to answer an interrupt.
    pub exit_grace_secs: u64,
    /// Time a write to the agent's standard input may block before the agent counts as hung.
    pub stdin_write_secs: u64,
}

impl Default for Watchdog {
    fn default() -> Self {
        Watchdog {
            turn_silence_secs: 600,
            exit_grace_secs: 10,
            stdin_write_secs: 30,
        }
    }
}

/// Everything needed to launch (or relaunch) an agent for a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AgentSpec {
    pub agent: AgentKind,
    /// Program to run instead of the agent's usual binary name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binary: Option<String>,
    /// Extra arguments, appended after the adapter's own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Extra environment, applied after the adapter's own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<(String, String)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Added to the agent's system prompt (Claude: `--append-system-prompt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_prompt: Option<String>,
    #[serde(default)]
    pub permissions: PermissionMode,
    /// Working directory inside the sandbox (default `/workspace`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    #[serde(default)]
    pub watchdog: Watchdog,
    /// Keep the agent's raw protocol traffic (`transcript.jsonl` in the session directory:
    /// every line read and written, every input and launch), to debug adapters and to
    /// capture test fixtures.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub transcript: bool,
}

impl AgentSpec {
    pub fn new(agent: AgentKind) -> Self {
        AgentSpec {
            agent,
            binary: None,
            args: Vec::new(),
            env: Vec::new(),
            model: None,
            system_prompt: None,
            permissions: PermissionMode::default(),
            cwd: None,
            watchdog: Watchdog::default(),
            transcript: false,
        }
    }
}

/// Parses `NAME=VALUE`; the name must be a portable environment variable name.
pub fn parse_env_entry(entry: &str) -> Result<(String, String), SessionError> {
    let bad = || SessionError::BadEnv {
        entry: entry.to_owned(),
    };
    let (k, v) = entry.split_once('=').ok_or_else(bad)?;
    let valid = !k.is_empty()
        && !k.as_bytes()[0].is_ascii_digit()
        && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if valid {
        Ok((k.to_owned(), v.to_owned()))
    } else {
        Err(bad())
    }
}

/// Where an agent reaches the model APIs from inside its sandbox: the host's model
/// gateway on the workspace link, and the placeholder key that gateway accepts. The real
/// credentials stay on the host; this is handed to the agent at every launch (the address
/// can change across restarts) and never written to disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ModelGateway {
    /// Origin of the gateway, e.g. `http://10.213.0.1:7072`; the Anthropic API is under
    /// `/anthropic`, the OpenAI API under `/openai/v1`.
    pub url: String,
    pub key: String,
}

impl ModelGateway {
    pub fn anthropic_base_url(&self) -> String {
        format!("{}/anthropic", self.url.trim_end_matches('/'))
    }

    pub fn openai_base_url(&self) -> String {
        format!("{}/openai/v1", self.url.trim_end_matches('/'))
    }
}

/// A file sent with a message (a photo from the phone, a log, a PDF). It is stored in the
/// workspace under `.kraal/attachments/` first; agents get it in their own protocol
/// (an image content block where they take one, its path otherwise).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Attachment {
    /// Where it is in the workspace, relative to `/workspace` (under `.kraal/attachments/`).
    pub path: String,
    /// Its media type, e.g. `image/png`.
    pub media_type: String,
    /// The name it was uploaded with.
    pub name: String,
    pub size: u64,
    /// The bytes, filled in by the guest agent next to the agent for adapters that send
    /// content inline; never serialized.
    #[serde(skip)]
    pub data: Option<Vec<u8>>,
}

/// Where attachments are kept in a workspace.
pub const ATTACHMENT_DIR: &str = ".kraal/attachments";
/// Largest single attachment.
pub const MAX_ATTACHMENT: usize = 20 * 1024 * 1024;
/// Largest total of one message's attachments.
pub const MAX_ATTACHMENTS_TOTAL: usize = 50 * 1024 * 1024;
/// Most attachments on one message.
pub const MAX_ATTACHMENT_COUNT: usize = 10;

impl Attachment {
    /// Whether agents that take images get it as one.
    pub fn is_image(&self) -> bool {
        matches!(
            self.media_type.as_str(),
            "image/png" | "image/jpeg" | "image/gif" | "image/webp"
        )
    }

    /// The path must be a plain relative path inside the attachment directory.
    pub fn validate(&self) -> Result<(), String> {
        let rest = self
            .path
            .strip_prefix(ATTACHMENT_DIR)
            .and_then(|r| r.strip_prefix('/'))
            .ok_or_else(|| format!("attachment {:?} is not under {ATTACHMENT_DIR}/", self.path))?;
        if rest.is_empty() || rest.contains('/') || rest.starts_with('.') || rest.contains('\0') {
            return Err(format!(
                "attachment path {:?} is not a plain file name",
                self.path
            ));
        }
        if self.media_type.is_empty() || self.media_type.chars().any(|c| c.is_control()) {
            return Err(format!(
                "attachment {:?} has no valid media type",
                self.path
            ));
        }
        Ok(())
    }

    /// The same attachment without its bytes (what event logs keep).
    pub fn without_data(&self) -> Attachment {
        Attachment {
            data: None,
            ..self.clone()
        }
    }
}

/// Something a user sends to a running session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SessionInput {
    /// A message; queued or steered into the current turn if the agent is busy.
    Message {
        text: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        attachments: Vec<Attachment>,
    },
    /// Stop the current turn.
    Interrupt,
    /// Answer an approval request.
    Approval {
        request_id: String,
        allow: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
    },
}

impl SessionInput {
    /// A message without attachments.
    pub fn message(text: impl Into<String>) -> Self {
        SessionInput::Message {
            text: text.into(),
            attachments: Vec::new(),
        }
    }
}
