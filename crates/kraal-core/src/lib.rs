//! Domain vocabulary shared by every kraal crate: workspace ids and names, sources, resources,
//! lifecycle states and backend kinds. Pure data and validation; this crate performs no IO.

mod egress;
mod event;
mod git;
mod mounts;
mod names;
mod policy;
mod pull;
mod resources;
mod session;
mod source;
mod state;
mod task;
mod template;

pub use egress::{
    DEFAULT_ALLOWLIST, DEFAULT_GIT_USER, EGRESS_PORT, EgressRule, EgressRuleError, GATEWAY_PORT,
    GitCredential, allowed, default_rules, is_secret_name, link_env, normalize_host, parse_rules,
};
pub use event::{AgentEvent, FileChangeKind, SessionEvent, SessionState};
pub use git::{MAX_GIT_REPOS, git_url_repo, normalize_repo, origin_url};
pub use mounts::{Mount, MountError};
pub use names::{NameError, WorkspaceId, WorkspaceName, derive_name, is_image_name};
pub use policy::{MIN_BACKUP_EVERY_SECS, MIN_IDLE_SECS, Policy, PolicyError, parse_duration_secs};
pub use pull::{DEFAULT_PR_ROUNDS, ForgeTarget, PullState, PullStatus};
pub use resources::{Resources, ResourcesError, parse_memory_mib};
pub use session::{
    ATTACHMENT_DIR, AgentKind, AgentProtocol, AgentSpec, Attachment, MAX_ATTACHMENT,
    MAX_ATTACHMENT_COUNT, MAX_ATTACHMENTS_TOTAL, ModelGateway, PermissionMode, SessionError,
    SessionId, SessionInput, Watchdog, parse_env_entry,
};
pub use source::{Source, SourceError};
pub use state::{BackendKind, Capabilities, DesiredState, WorkspaceState};
pub use task::{
    ChecklistItem, MAX_ATTEMPTS, MAX_TASK_PROMPT, TaskError, TaskSpec, TaskState, new_task_id,
    task_title, unchecked_items, validate_task,
};
pub use template::{TemplateError, TemplateSpec};

#[cfg(test)]
mod tests;
