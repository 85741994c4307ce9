//! Tasks on a git host's repository: where the task's branch goes and the pull request
//! kraal opened for it, followed until it is green, merged or closed. Pure data; the
//! calls to the host's API live in `kraal-forge`, driven by `kraal-tasks`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Feedback rounds (failed checks, review comments) sent back to the agent at most, by
/// default, before the task waits for its user.
pub const DEFAULT_PR_ROUNDS: u32 = 5;

fn default_rounds() -> u32 {
    DEFAULT_PR_ROUNDS
}

/// A task on `HOST/OWNER/REPO`: the checkout is fetched inside the sandbox through the git
/// gateway (the token stays on the host), and with `pull_request` the task's branch is
/// pushed and a pull request opened when the agent's turn ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ForgeTarget {
    /// The git host (`github.com`).
    pub host: String,
    /// `OWNER/NAME`.
    pub repo: String,
    /// The issue the task came from (its pull request closes it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issue: Option<u64>,
    /// The branch the work starts from and the pull request targets.
    pub base: String,
    #[serde(default)]
    pub pull_request: bool,
    /// Feedback rounds sent to the agent at most.
    #[serde(default = "default_rounds")]
    pub max_rounds: u32,
}

impl ForgeTarget {
    /// The clone URL (git's `https://HOST/` goes to the git gateway inside the sandbox).
    pub fn clone_url(&self) -> String {
        format!("https://{}/{}.git", self.host, self.repo)
    }

    /// `HOST/OWNER/NAME`, what the per-repository limit counts by.
    pub fn key(&self) -> String {
        format!("{}/{}", self.host, self.repo)
    }

    /// Makes the credential for this task's host in `git` reach the task's repository
    /// (the git gateway sends a token only for the repositories its credential lists).
    pub fn scope_git(&self, git: &mut [crate::GitCredential]) {
        let Ok(repo) = crate::normalize_repo(&self.repo) else {
            return;
        };
        for g in git.iter_mut().filter(|g| g.host == self.host) {
            if !g
                .repos
                .iter()
                .any(|r| crate::normalize_repo(r).as_ref() == Ok(&repo))
            {
                g.repos.push(repo.clone());
            }
        }
    }
}

/// Where a task's pull request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PullStatus {
    /// Checks are running (or none reported yet).
    Pending,
    /// Some check failed; the failures went (or go) to the agent.
    Failing,
    /// Every check passed.
    Green,
    Merged,
    Closed,
}

impl PullStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PullStatus::Pending => "pending",
            PullStatus::Failing => "failing",
            PullStatus::Green => "green",
            PullStatus::Merged => "merged",
            PullStatus::Closed => "closed",
        }
    }

    /// Merged or closed: nothing more to follow.
    pub fn is_final(self) -> bool {
        matches!(self, PullStatus::Merged | PullStatus::Closed)
    }
}

/// The pull request kraal opened for a task, and what of its feedback was handled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PullState {
    pub number: u64,
    pub url: String,
    /// The task's branch.
    pub branch: String,
    /// The commit kraal pushed last.
    pub head: String,
    pub status: PullStatus,
    /// Feedback rounds sent to the agent so far.
    pub rounds: u32,
    /// Pushes of the branch so far.
    pub pushes: u32,
    /// The newest comment already handled (comments are read by increasing id).
    pub seen_comment: u64,
    /// Heads whose failed checks were already sent.
    #[serde(default)]
    pub reported: Vec<String>,
    /// Feedback waiting to be delivered to the agent (its workspace was starting).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_message: Option<String>,
    /// The session's last event when the latest feedback was sent: the next turn ends
    /// after it.
    #[serde(default)]
    pub after_seq: u64,
}
