//! API types for tasks: queueing a prompt to run in a workspace of its own, the board of
//! tasks by state, and the side-by-side view of a best-of-N task's attempts.

use kraal_core::{AgentKind, Source, TaskState};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{CreateSession, CreateWorkspace, SessionUsage};

/// `POST /v1/tasks`: what to do and where.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
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
    /// A repository on a git host, `OWNER/NAME` or `HOST/OWNER/NAME` (host `github.com`
    /// unless named): the checkout is fetched inside the sandbox through the git gateway,
    /// with the token kept on the host. Replaces the workspace's source.
    #[serde(default)]
    pub repo: Option<String>,
    /// An issue to work on, `OWNER/NAME#N`, `HOST/OWNER/NAME#N` or its URL: its title and
    /// text become the prompt (`prompt` adds instructions) and `repo` is its repository.
    #[serde(default)]
    pub from_issue: Option<String>,
    /// Push the task's branch and open a pull request when the turn ends, then send
    /// failed checks and review comments back to the agent until it is green (default:
    /// on for `from_issue`).
    #[serde(default)]
    pub pull_request: Option<bool>,
    /// The branch to start from and target (default: the repository's default branch).
    #[serde(default)]
    pub base: Option<String>,
    /// Feedback rounds sent to the agent at most (default 5).
    #[serde(default)]
    pub max_rounds: Option<u32>,
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
    /// The git host repository it works on.
    #[serde(default)]
    pub forge: Option<kraal_core::ForgeTarget>,
    /// Its pull request, once opened.
    #[serde(default)]
    pub pull: Option<kraal_core::PullState>,
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

/// `POST /v1/task-sources`: where tasks come from on their own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CreateTaskSource {
    /// `issues` (open issues of `task.repo` with `label`), `schedule` (`every` or `cron`)
    /// or `trigger` (`POST /v1/triggers/{id}` with the token returned once).
    pub kind: String,
    /// The task each firing queues (for issues: `repo` is required and `prompt` adds
    /// instructions to each issue).
    pub task: CreateTask,
    /// Issues: the label that makes an issue a task.
    #[serde(default)]
    pub label: Option<String>,
    /// Issues: the stored secret GitHub signs webhook deliveries with; deliveries go to
    /// `POST /hooks/github/{id}` (polling runs either way).
    #[serde(default)]
    pub webhook_secret: Option<String>,
    /// Schedule: an interval, `90s`, `15m`, `6h`, `1d`, `1w`.
    #[serde(default)]
    pub every: Option<String>,
    /// Schedule: five cron fields (minute hour day-of-month month day-of-week), UTC.
    #[serde(default)]
    pub cron: Option<String>,
}

/// A task source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TaskSource {
    pub id: String,
    pub kind: String,
    /// What it watches or when it fires, in words.
    pub detail: String,
    /// The prompt (or instructions) each task gets.
    pub prompt: String,
    /// Where its tasks run (`HOST/OWNER/NAME` or the checkout).
    pub repo: String,
    pub created_at: String,
    pub last_run: Option<String>,
    pub next_run: Option<String>,
    /// Why its last run made nothing.
    pub last_error: Option<String>,
    pub tasks_made: u64,
    /// Where GitHub delivers its webhooks (a path on the daemon's TCP listener).
    #[serde(default)]
    pub webhook_path: Option<String>,
    /// A trigger's token: only in the answer to its creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TaskSourceList {
    pub sources: Vec<TaskSource>,
}

/// `POST /v1/triggers/{id}`: an optional text added to the trigger's prompt.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FireTrigger {
    #[serde(default)]
    pub text: Option<String>,
}
