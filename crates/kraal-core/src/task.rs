//! Tasks: a prompt plus where to run it (a checkout, an agent, resources), and where it is
//! in the queue. The task layer sits on top of workspaces and sessions; nothing below it
//! knows tasks exist.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{AgentSpec, EgressRule, ForgeTarget, GitCredential, Policy, Resources, Source};

/// Longest prompt a task may carry.
pub const MAX_TASK_PROMPT: usize = 256 * 1024;
/// Most attempts of one best-of-N task.
pub const MAX_ATTEMPTS: u32 = 8;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskError {
    #[error("task prompt is empty")]
    EmptyPrompt,
    #[error("task prompt is {len} bytes; the limit is {MAX_TASK_PROMPT}")]
    PromptTooLong { len: usize },
    #[error("attempts must be between 1 and {MAX_ATTEMPTS} (got {got})")]
    Attempts { got: u32 },
    #[error("check command is empty or contains NUL")]
    Check,
    #[error("a task budget cannot be below zero or not a number (got {got} USD)")]
    Budget { got: String },
    #[error("task id {id:?} is not a task id (tk- and 12 hex digits, or a unique prefix)")]
    BadId { id: String },
}

/// Where a task is in its life.
///
/// `queued → running → needs_review → done`, or `failed` / `cancelled` on the way; a
/// failed or cancelled task can be retried (queued again).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Waiting for a free slot.
    Queued,
    /// Its workspace and session exist; the agent works on it.
    Running,
    /// The agent's turn ended; its workspace is stopped and kept for review.
    NeedsReview,
    /// Reviewed and accepted.
    Done,
    Failed,
    Cancelled,
}

impl TaskState {
    pub const ALL: [TaskState; 6] = [
        TaskState::Queued,
        TaskState::Running,
        TaskState::NeedsReview,
        TaskState::Done,
        TaskState::Failed,
        TaskState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Queued => "queued",
            TaskState::Running => "running",
            TaskState::NeedsReview => "needs_review",
            TaskState::Done => "done",
            TaskState::Failed => "failed",
            TaskState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str() == s || t.as_str().replace('_', "-") == s)
    }

    /// No more work happens on it unless it is retried.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            TaskState::Done | TaskState::Failed | TaskState::Cancelled
        )
    }

    /// It holds a slot of the queue's limits.
    pub fn holds_slot(self) -> bool {
        self == TaskState::Running
    }
}

impl std::fmt::Display for TaskState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything needed to run a task: the workspace to make and the session to start in it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    pub source: Source,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The workspace's egress allowlist (`None`: the default one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Vec<EgressRule>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub git: Vec<GitCredential>,
    #[serde(default)]
    pub policy: Policy,
    pub agent: AgentSpec,
    /// The project's check command, run in the workspace when the agent's turn ends
    /// (`sh -c`, in `/workspace`); its outcome is shown when attempts are compared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<String>,
    /// A cap in USD on what the task's workspace may spend on models (the gateway holds
    /// its requests once reached).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_usd: Option<f64>,
    /// The checklist item the task came from; its box is ticked (and committed) in the
    /// task's checkout when the agent's turn ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checklist: Option<ChecklistItem>,
    /// A repository on a git host kraal speaks the API of: fetched inside the sandbox,
    /// and with a pull request opened and followed when asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forge: Option<ForgeTarget>,
}

/// One unchecked item of a markdown checklist in a repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChecklistItem {
    /// The file, relative to the checkout.
    pub file: String,
    /// The item's whole line as it is in the file (`- [ ] text`).
    pub line: String,
    /// The item's text.
    pub text: String,
}

impl ChecklistItem {
    /// The line with its box ticked.
    pub fn ticked(&self) -> String {
        self.line.replacen("[ ]", "[x]", 1)
    }
}

/// The unchecked items (`- [ ] …`, `* [ ] …`, `+ [ ] …`, `1. [ ] …`, indented or not) of a
/// markdown file, outside fenced code blocks, in order; duplicates of an earlier line are
/// left out (ticking one could not tell them apart).
pub fn unchecked_items(file: &str, markdown: &str) -> Vec<ChecklistItem> {
    let mut out: Vec<ChecklistItem> = Vec::new();
    let mut fence: Option<&str> = None;
    for line in markdown.lines() {
        let t = line.trim_start();
        if let Some(f) = fence {
            if t.starts_with(f) {
                fence = None;
            }
            continue;
        }
        if t.starts_with("```") {
            fence = Some("```");
            continue;
        }
        if t.starts_with("~~~") {
            fence = Some("~~~");
            continue;
        }
        let rest = if let Some(r) = t.strip_prefix(['-', '*', '+']) {
            r
        } else {
            let digits = t.chars().take_while(char::is_ascii_digit).count();
            match t[digits..].strip_prefix(['.', ')']) {
                Some(r) if digits > 0 => r,
                _ => continue,
            }
        };
        let Some(text) = rest.strip_prefix(" [ ] ") else {
            continue;
        };
        let text = text.trim();
        if text.is_empty() || out.iter().any(|i| i.line == line) {
            continue;
        }
        out.push(ChecklistItem {
            file: file.to_owned(),
            line: line.to_owned(),
            text: text.to_owned(),
        });
    }
    out
}

impl TaskSpec {
    /// The key per-repository limits count by: the checkout's URL or path.
    pub fn repo_key(&self) -> String {
        if let Some(f) = &self.forge {
            return f.key();
        }
        match &self.source {
            Source::Git { url, .. } => url.trim_end_matches('/').trim_end_matches(".git").into(),
            other => other.describe(),
        }
    }
}

/// Checks a prompt, an attempt count and a check command before anything is stored.
pub fn validate_task(prompt: &str, attempts: u32, check: Option<&str>) -> Result<(), TaskError> {
    if prompt.trim().is_empty() {
        return Err(TaskError::EmptyPrompt);
    }
    if prompt.len() > MAX_TASK_PROMPT {
        return Err(TaskError::PromptTooLong { len: prompt.len() });
    }
    if attempts == 0 || attempts > MAX_ATTEMPTS {
        return Err(TaskError::Attempts { got: attempts });
    }
    if let Some(c) = check
        && (c.trim().is_empty() || c.contains('\0'))
    {
        return Err(TaskError::Check);
    }
    Ok(())
}

/// A new task id: `tk-` and 12 hex digits.
pub fn new_task_id() -> String {
    use rand::Rng;
    let n: u64 = rand::thread_rng().r#gen::<u64>() & 0xffff_ffff_ffff;
    format!("tk-{n:012x}")
}

/// The first line of a prompt, shortened, as the task's title.
pub fn task_title(prompt: &str) -> String {
    let first = prompt
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    let mut t: String = first.chars().take(80).collect();
    if first.chars().count() > 80 {
        t.push('…');
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_parse_in_both_spellings_and_only_running_holds_a_slot() {
        for s in TaskState::ALL {
            assert_eq!(TaskState::parse(s.as_str()), Some(s));
        }
        assert_eq!(
            TaskState::parse("needs-review"),
            Some(TaskState::NeedsReview)
        );
        assert_eq!(TaskState::parse("sleeping"), None);
        let holding: Vec<_> = TaskState::ALL
            .into_iter()
            .filter(|s| s.holds_slot())
            .collect();
        assert_eq!(holding, [TaskState::Running]);
        assert!(TaskState::Done.is_final() && !TaskState::NeedsReview.is_final());
    }

    #[test]
    fn unchecked_items_skip_ticked_ones_code_blocks_and_duplicates() {
        let md = "# Todo\n- [ ] add a --json flag\n- [x] done already\n  * [ ] nested item \n\
                  1. [ ] numbered\n```\n- [ ] in a code block\n```\n- [ ] add a --json flag\n\
                  -[ ] no space\n- [ ]\n+ [ ] plus";
        let items = unchecked_items("TODO.md", md);
        let texts: Vec<&str> = items.iter().map(|i| i.text.as_str()).collect();
        assert_eq!(
            texts,
            ["add a --json flag", "nested item", "numbered", "plus"]
        );
        assert_eq!(items[1].line, "  * [ ] nested item ");
        assert_eq!(items[1].ticked(), "  * [x] nested item ");
        assert_eq!(items[0].file, "TODO.md");
    }

    #[test]
    fn bad_prompts_attempts_and_checks_are_named() {
        assert_eq!(validate_task(" \n", 1, None), Err(TaskError::EmptyPrompt));
        let long = "x".repeat(MAX_TASK_PROMPT + 1);
        assert!(matches!(
            validate_task(&long, 1, None),
            Err(TaskError::PromptTooLong { .. })
        ));
        assert_eq!(
            validate_task("do", 0, None),
            Err(TaskError::Attempts { got: 0 })
        );
        assert_eq!(
            validate_task("do", 9, None),
            Err(TaskError::Attempts { got: 9 })
        );
        assert_eq!(validate_task("do", 2, Some(" ")), Err(TaskError::Check));
        assert_eq!(validate_task("do", 8, Some("cargo test")), Ok(()));
        let t = task_title(&format!("\n  {}", "y".repeat(100)));
        assert_eq!(t.chars().count(), 81);
        assert!(new_task_id().starts_with("tk-") && new_task_id().len() == 15);
    }
}
