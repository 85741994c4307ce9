//! API types for tasks: queueing a prompt to run in a workspace of its own, the board of
//! tasks by state, and the side-by-side view of a best-of-N task's attempts.

use kraal_core::{AgentKind, Source, TaskState};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{CreateSession, CreateWorkspace, SessionUsage};

/// `POST /v1/tasks`: what to do and where.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CreateTask {
    /// The agent's first message.
    pub prompt: String,
    /// A template (name or id) to take the checkout, agent and resources from.
    #[serde(default)]
    pub template: Option<String>,
    /// The workspace to make (its `name` and `wait` are ignored: each attempt gets one
    /// named after it). Required unless `template` is given.
    #[serde(default)]
    pub workspace: Option<CreateWorkspace>,
    /// How to run the agent (its `message` is ignored: the prompt is the message).
    #[serde(default)]
    pub session: Option<CreateSession>,
    /// Best-of-N: run this many attempts from the same source (default 1).
    #[serde(default)]
    pub attempts: Option<u32>,
    /// Agents the attempts take in turn (e.g. `claude`, `codex`).
    #[serde(default)]
    pub agents: Vec<AgentKind>,
    /// The project's check command, run in each workspace when the agent's turn ends.
    #[serde(default)]
    pub check: Option<String>,
    /// A markdown checklist in the (local) checkout, relative to it: one task per
    /// unchecked item (`- [ ] …`), its box ticked by a commit in the task's checkout when
    /// the agent is done; `prompt` then adds instructions to every item (it may be empty).
    #[serde(default)]
    pub checklist: Option<String>,
    /// A cap in USD on each attempt's model spend (its requests wait once reached).
    #[serde(default)]
    pub budget_usd: Option<f64>,
    /// Who made it (shown on the board; default `api`).
    #[serde(default)]
    pub origin: Option<String>,
}

/// What an attempt changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DiffStat {
    pub files: u32,
    pub added: u32,
    pub removed: u32,
}

/// The outcome of the check command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CheckResult {
    pub command: String,
    /// Its exit code (`-1`: it could not run).
    pub code: i32,
    pub passed: bool,
    /// The end of its output.
    pub output: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Task {
    pub id: String,
    pub title: String,
    pub prompt: String,
    pub state: TaskState,
    pub reason: Option<String>,
    /// The checkout, as the per-repository limit counts it.
    pub repo: String,
    pub source: Source,
    pub agent: AgentKind,
    pub origin: String,
    /// Shared by the attempts of one best-of-N task.
    pub group: Option<String>,
    pub attempt: u32,
    /// Times it was started (a retry starts it again).
    pub tries: u32,
    /// Name of its workspace, once it has one.
    pub workspace: Option<String>,
    pub workspace_id: Option<String>,
    pub session_id: Option<String>,
    pub check: Option<CheckResult>,
    pub diff: Option<DiffStat>,
    /// Tokens and cost of its session.
    pub usage: Option<SessionUsage>,
    /// From start to the end of the turn (or to now while it runs).
    pub duration_secs: Option<f64>,
    /// The attempt picked from a best-of-N task.
    pub picked: bool,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
}

/// The queue's limits and how full it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct QueueInfo {
    pub max_running: usize,
    /// `0`: only the daemon's limit applies.
    pub per_repo: usize,
    pub running: usize,
    pub queued: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TaskList {
    pub tasks: Vec<Task>,
    pub queue: QueueInfo,
}

/// `GET /v1/tasks` filters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TaskQuery {
    /// Only tasks in these states (comma-separated: `queued,running`).
    #[serde(default)]
    pub state: Option<String>,
}
