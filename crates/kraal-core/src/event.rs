//! The normalized event model: what every agent adapter turns its CLI's output into, what
//! session logs store, and what clients (CLI, web UI) render.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Where a session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    Starting,
    /// The agent is running a turn.
    Working,
    /// The turn ended; the agent waits for the next message.
    WaitingForInput,
    /// The agent asked for permission and waits for a decision.
    NeedsApproval,
    /// The session ended normally.
    Done,
    /// The session ended abnormally; the state event carries the reason.
    Failed,
}

impl SessionState {
    pub const ALL: [SessionState; 6] = [
        SessionState::Starting,
        SessionState::Working,
        SessionState::WaitingForInput,
        SessionState::NeedsApproval,
        SessionState::Done,
        SessionState::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Starting => "starting",
            SessionState::Working => "working",
            SessionState::WaitingForInput => "waiting_for_input",
            SessionState::NeedsApproval => "needs_approval",
            SessionState::Done => "done",
            SessionState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        SessionState::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The session ended; nothing more happens without a new message.
    pub fn is_final(self) -> bool {
        matches!(self, SessionState::Done | SessionState::Failed)
    }
}

impl std::fmt::Display for SessionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FileChangeKind {
    Created,
    Modified,
    Deleted,
}

impl AgentEvent {
    /// A user message without attachments.
    pub fn user(text: impl Into<String>) -> Self {
        AgentEvent::UserMessage {
            text: text.into(),
            attachments: Vec::new(),
        }
    }
}

/// One thing that happened in an agent conversation, independent of which agent it was.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentEvent {
    /// A message from the user (as sent, or as echoed by the agent).
    UserMessage {
        text: String,
        /// Files sent with it.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        attachments: Vec<crate::Attachment>,
    },
    /// A streamed fragment of assistant text; the full text follows as `AssistantText`.
    AssistantDelta {
        text: String,
    },
    /// A complete block of assistant text.
    AssistantText {
        text: String,
    },
    /// Reasoning the agent chose to show.
    Thinking {
        text: String,
    },
    /// The agent invoked a tool.
    ToolCall {
        id: String,
        name: String,
        #[schema(value_type = Object)]
        input: serde_json::Value,
    },
    /// What a tool returned.
    ToolResult {
        id: String,
        output: String,
        is_error: bool,
    },
    /// The agent changed a file (from an edit tool or the agent's own change report).
    FileChange {
        path: String,
        kind: FileChangeKind,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        diff: Option<String>,
    },
    /// The agent ran a shell command.
    CommandRun {
        command: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exit_code: Option<i32>,
    },
    /// The agent asks whether it may do something.
    ApprovalRequest {
        request_id: String,
        tool: String,
        #[schema(value_type = Object)]
        input: serde_json::Value,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        description: Option<String>,
    },
    /// The answer to an approval request.
    ApprovalDecision {
        request_id: String,
        allow: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
    },
    /// Token usage and cost of a turn.
    Usage {
        input_tokens: u64,
        output_tokens: u64,
        #[serde(default)]
        cache_read_tokens: u64,
        #[serde(default)]
        cache_write_tokens: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cost_usd: Option<f64>,
    },
    /// The agent's own conversation id, used to resume it.
    AgentSession {
        id: String,
    },
    Error {
        message: String,
    },
    State {
        state: SessionState,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
}

/// An event as stored in a session log: sequence numbers start at 1 and have no gaps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SessionEvent {
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    #[serde(flatten)]
    pub event: AgentEvent,
}
