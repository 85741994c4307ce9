//! The daemon's HTTP API vocabulary, shared by the server and the CLI. Every type here is
//! part of the public, OpenAPI-described contract.

use std::collections::BTreeMap;

mod budget;
mod supervision;
mod tasks;
pub use budget::*;
pub use supervision::*;
pub use tasks::*;

use kraal_core::{
    AgentKind, BackendKind, DesiredState, PermissionMode, Resources, SessionEvent, SessionState,
    Source, Watchdog, WorkspaceState,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// API version prefix of every route.
pub const PREFIX: &str = "/v1";

/// Every error response: a stable machine-readable `code` and a human message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ApiError {
    /// One of: `not_found`, `already_exists`, `invalid_argument`, `conflict`, `not_running`,
    /// `unauthorized`, `backend_unavailable`, `backend_error`, `guest_unreachable`,
    /// `guest_error`, `path_escape`, `internal`.
    pub code: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Workspace {
    pub id: String,
    pub name: String,
    pub state: WorkspaceState,
    pub desired: DesiredState,
    pub backend: BackendKind,
    pub source: Source,
    pub resources: Resources,
    /// Guest agent address on the workspace's private link, when running.
    pub address: Option<String>,
    /// Why the workspace is `failed`.
    pub reason: Option<String>,
    pub persistent: bool,
    /// Host directories mounted into it.
    #[serde(default)]
    pub mounts: Vec<kraal_core::Mount>,
    /// The egress allowlist.
    pub egress: Vec<String>,
    /// Git hosts with credentials added on the host.
    pub git: Vec<kraal_core::GitCredential>,
    pub created_at: String,
    pub updated_at: String,
    /// The image it was created from (absent: the daemon's default at the time).
    #[serde(default)]
    pub image: Option<String>,
    /// Ports of the workspace reachable on the daemon's host while it runs.
    #[serde(default)]
    pub ports: Vec<ForwardedPort>,
    /// Idle stop and backup interval in force (its own, or the daemon's defaults).
    #[serde(default)]
    pub policy: kraal_core::Policy,
    /// Its own settings (unset: the daemon's defaults apply).
    #[serde(default)]
    pub own_policy: kraal_core::Policy,
    /// How long it has been idle (running, with no agent turn, terminal or client).
    #[serde(default)]
    pub idle_secs: Option<u64>,
    /// When it was last backed up.
    #[serde(default)]
    pub last_backup_at: Option<String>,
    /// What it is being restored from, until the restore is complete.
    #[serde(default)]
    pub restoring: Option<String>,
}

/// A workspace port forwarded to the daemon's host loopback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ForwardedPort {
    /// The port inside the workspace.
    pub port: u16,
    /// `127.0.0.1:N` on the daemon's host.
    pub address: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CreateWorkspace {
    /// Defaults to a name derived from the source.
    #[serde(default)]
    pub name: Option<String>,
    pub source: Source,
    #[serde(default)]
    pub resources: Option<Resources>,
    /// Image to create it from (`kraal image ls`); the daemon's default when absent.
    #[serde(default)]
    pub image: Option<String>,
    /// Wait until the workspace is running (or failed) before answering.
    #[serde(default)]
    pub wait: bool,
    /// A long-lived control workspace: its address stays the same (reserved even while
    /// it is stopped) and removing it needs `force`.
    #[serde(default)]
    pub persistent: bool,
    /// Host directories mounted into the workspace (read-only unless `writable`).
    #[serde(default)]
    pub mounts: Vec<kraal_core::Mount>,
    /// The whole egress allowlist (`example.com`, `*.example.com`, `host:port`); absent:
    /// the default list (model APIs, git hosts, package registries).
    #[serde(default)]
    pub egress: Option<Vec<String>>,
    /// Rules added to the allowlist (to `egress`, or to the default list).
    #[serde(default)]
    pub allow: Vec<String>,
    /// Git hosts whose HTTPS requests get a stored secret added as credential on the host.
    #[serde(default)]
    pub git: Vec<kraal_core::GitCredential>,
    /// Idle stop and backup interval (unset fields: the daemon's defaults).
    #[serde(default)]
    pub policy: kraal_core::Policy,
}

impl CreateWorkspace {
    /// A workspace from `source` with the daemon's defaults for everything else.
    pub fn of(source: Source) -> Self {
        CreateWorkspace {
            name: None,
            source,
            resources: None,
            image: None,
            wait: false,
            persistent: false,
            mounts: vec![],
            egress: None,
            allow: vec![],
            git: vec![],
            policy: Default::default(),
        }
    }
}

/// A workspace's egress allowlist (`GET`/`PUT /v1/workspaces/{ws}/egress`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EgressPolicy {
    /// `example.com` (that host), `*.example.com` (its subdomains), `host:port`; without
    /// a port, 443 and 80.
    pub rules: Vec<String>,
}

/// One connection the egress proxy allowed or refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EgressLogEntry {
    pub at: String,
    /// `CONNECT`, or the method of a plain-HTTP request.
    pub method: String,
    pub host: String,
    pub port: u16,
    /// The address connected to.
    pub addr: Option<String>,
    pub allowed: bool,
    pub reason: Option<String>,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub ms: u64,
}

/// Query of `GET /v1/workspaces/{ws}/egress/log` and `GET /v1/audit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema, Default)]
pub struct LogQuery {
    /// Newest entries to return (default 100, at most 10 000).
    #[serde(default)]
    pub limit: Option<u32>,
    /// Only this action (audit log).
    #[serde(default)]
    pub action: Option<String>,
}

/// A stored secret (never its value).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SecretInfo {
    pub name: String,
    /// `stdin`, `file`, `command`, `login:claude`…
    pub source: String,
    pub created_at: String,
    pub updated_at: String,
}

/// Body of `PUT /v1/secrets/{name}`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PutSecret {
    pub value: String,
    /// Where the value came from (shown by `kraal secret ls`).
    #[serde(default)]
    pub source: Option<String>,
}

impl std::fmt::Debug for PutSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PutSecret")
            .field("value", &"<redacted>")
            .field("source", &self.source)
            .finish()
    }
}

/// Body of `PUT /v1/logins/claude`: a subscription login as `claude /login` stores it
/// (all of `access_token`, `refresh_token`, `expires_at`), or a long-lived `token` from
/// `claude setup-token`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema, Default)]
pub struct ClaudeLoginRequest {
    #[serde(default)]
    pub access_token: Option<String>,
    #[serde(default)]
    pub refresh_token: Option<String>,
    /// Unix milliseconds.
    #[serde(default)]
    pub expires_at: Option<i64>,
    #[serde(default)]
    pub token: Option<String>,
}

impl std::fmt::Debug for ClaudeLoginRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ClaudeLoginRequest(<redacted>, expires_at {:?})",
            self.expires_at
        )
    }
}

/// Body of `PUT /v1/logins/codex`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CodexLoginRequest {
    pub api_key: String,
}

impl std::fmt::Debug for CodexLoginRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CodexLoginRequest(<redacted>)")
    }
}

/// How an agent's model requests are authenticated on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LoginStatus {
    /// `claude` or `codex`.
    pub agent: String,
    /// `subscription` (refreshed by the daemon), `token`, `api-key`, or `none` (the
    /// daemon's environment, if anything).
    pub method: String,
    /// When the current access token expires (Unix milliseconds), for subscriptions.
    pub expires_at: Option<i64>,
    pub updated_at: Option<String>,
}

/// A workspace backup in the backup store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BackupInfo {
    pub id: String,
    /// The workspace's name and id when it was backed up.
    pub workspace: String,
    pub workspace_id: String,
    pub created_at: String,
    /// Bytes of the volume's tar, or of its files for a backup read on the host.
    pub size: u64,
    pub chunks: u64,
    /// A backup read on the host as a tree of files: how many entries (files,
    /// directories, links) its index holds. `None`: a tar stream made in the sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<u64>,
    /// Taken by the backup schedule (which removes the older ones beyond its limit).
    #[serde(default)]
    pub scheduled: bool,
    /// A backup of the daemon's own state rather than of a workspace.
    #[serde(default)]
    pub daemon: bool,
}

/// A backup of the daemon's own state (`kraal state backup`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StateBackupInfo {
    pub id: String,
    pub created_at: String,
    /// The machine it was taken on.
    pub hostname: String,
    /// The workspaces the daemon had.
    pub workspaces: Vec<String>,
    /// Taken by the backup schedule.
    pub scheduled: bool,
    pub size: u64,
}

/// One line of the NDJSON answer of a backup or restore.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TransferLine {
    Progress {
        bytes: u64,
        /// Known for restores.
        total: Option<u64>,
        chunks: u64,
        new_chunks: u64,
        /// Bytes written to the store (compressed and encrypted).
        uploaded: u64,
    },
    /// The last line of a successful backup.
    Backup(BackupInfo),
    /// The last line of a successful restore.
    Workspace(Box<Workspace>),
    /// The last line of a failed one.
    Error(ApiError),
}

/// Body of `POST /v1/backups/{id}/restore`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema, Default)]
pub struct RestoreBackup {
    /// Name of the new workspace (default: the backed-up one's).
    #[serde(default)]
    pub name: Option<String>,
}

/// One audit log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditEntry {
    pub id: i64,
    pub at: String,
    /// Who: `local` (the Unix socket), `token:NAME`, `web:NAME`, `daemon`.
    pub actor: String,
    /// `login`, `login.failed`, `token.create`, `token.revoke`, `secret.set`, `secret.read`,
    /// `secret.delete`, `exec`, `ssh`, `forward`, `egress.set`…
    pub action: String,
    pub target: String,
    pub detail: String,
}

/// Body of `POST /v1/workspaces/{ws}/snapshots`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CreateSnapshot {
    /// Letters, digits, `-` and `_`; an existing snapshot of that name is replaced.
    pub name: String,
}

/// Query of `DELETE /v1/workspaces/{ws}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, Default)]
pub struct RemoveParams {
    #[serde(default)]
    pub wait: bool,
    /// Needed to remove a persistent workspace.
    #[serde(default)]
    pub force: bool,
    /// Also delete the workspace's backups (they are kept otherwise).
    #[serde(default)]
    pub purge: bool,
    /// Skip the final backup a workspace that uses backups (it has one, or a schedule
    /// applies to it) gets before it is removed.
    #[serde(default)]
    pub no_backup: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, Default)]
pub struct WaitParam {
    #[serde(default)]
    pub wait: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WorkspaceList {
    pub workspaces: Vec<Workspace>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LogEvent {
    pub at: String,
    pub level: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Logs {
    /// Lifecycle events recorded by the daemon, oldest first.
    pub events: Vec<LogEvent>,
    /// Tail of what the sandbox runtime and guest agent printed.
    pub console: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BackendCheck {
    pub backend: BackendKind,
    pub usable: bool,
    pub details: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HostReport {
    /// The backend new workspaces use.
    pub selected: BackendKind,
    pub backends: Vec<BackendCheck>,
    pub kvm: KvmReport,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct KvmReport {
    pub usable: bool,
    pub detail: String,
    pub probe_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Status {
    pub version: String,
    pub backend: BackendKind,
    pub data_dir: String,
    /// The web UI's address, when the daemon serves it.
    #[serde(default)]
    pub web_url: Option<String>,
    pub uptime_secs: u64,
    pub workspaces: u64,
    pub running: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    Other,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FileEntry {
    pub path: String,
    pub name: String,
    pub kind: FileKind,
    pub size: u64,
    pub mode: u32,
    pub modified: i64,
    pub symlink_target: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DirListing {
    pub path: String,
    pub entries: Vec<FileEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FilePath {
    /// Relative to `/workspace`, or absolute under it.
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Written {
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Process {
    pub proc: u64,
    pub pid: i32,
    pub argv: Vec<String>,
    pub tty: bool,
    pub running: bool,
    pub exit_code: Option<i32>,
    pub exit_signal: Option<i32>,
    pub started_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ProcessList {
    pub processes: Vec<Process>,
}

/// Terminal size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TermSize {
    pub rows: u16,
    pub cols: u16,
}

/// Client → daemon text messages on the exec WebSocket. Binary messages are stdin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ExecClientMsg {
    /// First message: start a process.
    Start {
        argv: Vec<String>,
        #[serde(default)]
        env: Vec<(String, String)>,
        #[serde(default)]
        cwd: Option<String>,
        #[serde(default)]
        tty: Option<TermSize>,
    },
    /// First message: reattach to a process, replaying output after sequence `after`.
    Attach {
        proc: u64,
        after: u64,
    },
    Resize(TermSize),
    Signal {
        signal: i32,
    },
    /// No more standard input.
    Eof,
}

/// Daemon → client text messages on the exec WebSocket. Binary messages are output:
/// one byte stream id (1 stdout, 2 stderr), 8 bytes big-endian sequence, then data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ExecServerMsg {
    Started {
        proc: u64,
        pid: i32,
    },
    Exit {
        code: Option<i32>,
        signal: Option<i32>,
    },
    Truncated {
        first_available: u64,
    },
    Error(ApiError),
}

pub const STREAM_STDOUT: u8 = 1;
pub const STREAM_STDERR: u8 = 2;

/// One agent conversation in a workspace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Session {
    pub id: String,
    /// Name of the workspace the session runs in.
    pub workspace: String,
    pub workspace_id: String,
    pub agent: AgentKind,
    /// The first line of the first message.
    pub title: String,
    pub state: SessionState,
    /// Why the session is in its state (failures, interruptions).
    pub reason: Option<String>,
    /// The agent's own conversation id (used to resume it).
    pub agent_session: Option<String>,
    /// Sequence number of the newest event.
    pub last_seq: u64,
    pub model: Option<String>,
    pub permissions: PermissionMode,
    pub usage: SessionUsage,
    pub created_at: String,
    pub updated_at: String,
}

/// Tokens and cost of a session so far.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SessionUsage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SessionList {
    pub sessions: Vec<Session>,
}

/// Start an agent session in a running workspace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema, Default)]
pub struct CreateSession {
    /// Which agent (default `claude`).
    #[serde(default)]
    pub agent: Option<AgentKind>,
    /// The first message (the task).
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
    /// Appended to the agent's system prompt.
    #[serde(default)]
    pub system_prompt: Option<String>,
    /// `bypass` (default: the sandbox is the boundary) or `ask` (approvals).
    #[serde(default)]
    pub permissions: Option<PermissionMode>,
    /// Program to run instead of the agent's usual one.
    #[serde(default)]
    pub binary: Option<String>,
    /// Extra arguments for the agent.
    #[serde(default)]
    pub args: Vec<String>,
    /// Extra environment for the agent (stored with the session: not for secrets, which
    /// stay on the host behind the model gateway).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory inside the workspace (default `/workspace`).
    #[serde(default)]
    pub cwd: Option<String>,
    #[serde(default)]
    pub watchdog: Option<Watchdog>,
    /// Keep the agent's raw protocol traffic in the session directory (debugging).
    #[serde(default)]
    pub transcript: bool,
}

/// A page of a session's event log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EventPage {
    pub events: Vec<SessionEvent>,
    /// The newest sequence number stored (more may follow on the stream).
    pub last_seq: u64,
    pub state: SessionState,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, Default, utoipa::IntoParams,
)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Only events with a larger sequence number.
    #[serde(default)]
    pub after: u64,
    /// At most this many (default and maximum 1000).
    #[serde(default)]
    pub limit: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema, Default)]
pub struct SessionsQuery {
    /// Only the sessions of this workspace (name or id).
    #[serde(default)]
    pub workspace: Option<String>,
}

/// Create an access token for the web UI (and remote clients).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CreateToken {
    /// A unique label, e.g. `phone`.
    pub name: String,
}

/// A new token: the only time its secret is shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NewToken {
    pub id: String,
    pub name: String,
    pub token: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Token {
    pub id: String,
    pub name: String,
    pub created_at: String,
    pub last_used_at: Option<String>,
    pub revoked_at: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TokenList {
    pub tokens: Vec<Token>,
}

/// A built image (`GET /v1/images`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ImageInfo {
    pub name: String,
    /// Content hash of everything that went into it.
    pub hash: String,
    pub description: String,
    pub built_at: String,
    /// The content-addressed layers, bottom first: `os-<hash>`, `agents-<hash>`, `guest-<hash>`.
    pub layers: Vec<String>,
    /// Agent CLIs inside.
    pub agents: Vec<String>,
    pub packages: usize,
    /// Outputs with their path and size in bytes.
    pub outputs: Vec<ImageOutput>,
    /// Workspaces running on it (ids).
    pub users: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ImageOutput {
    /// `rootfs`, `ext4` or `oci`.
    pub format: String,
    pub path: String,
    pub bytes: u64,
}

/// A recipe the daemon can build by name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RecipeInfo {
    pub name: String,
    pub description: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ImageList {
    pub images: Vec<ImageInfo>,
    /// Built-in recipes.
    pub recipes: Vec<RecipeInfo>,
}

/// `POST /v1/images/build`: a built-in recipe by `name`, or a recipe file's TOML text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BuildImage {
    #[serde(default)]
    pub name: Option<String>,
    /// TOML text of a recipe (what `kraal image build --file` sends).
    #[serde(default)]
    pub recipe: Option<String>,
    /// `rootfs`, `ext4`, `oci` (default: all three).
    #[serde(default)]
    pub outputs: Vec<String>,
    /// A project directory on the daemon's host whose `devcontainer.json` to build
    /// (instead of a recipe); the image is named `dc-<directory>` unless `name` is given.
    #[serde(default)]
    pub devcontainer: Option<String>,
}

/// One line of the newline-delimited JSON a build answers with: progress lines, then
/// the image or an error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BuildLine {
    Progress {
        step: u32,
        steps: u32,
        title: String,
        detail: String,
        done: bool,
    },
    Image(ImageInfo),
    Error(ApiError),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RemovedImages {
    /// `name-hash` of each build removed.
    pub removed: Vec<String>,
}
