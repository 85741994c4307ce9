//! The engine's one error type, with a stable code per variant for the HTTP layer.

use kraal_core::NameError;
use kraal_sandbox::{BackendError, GuestClientError};
use kraal_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("no workspace named {reference}")]
    NotFound { reference: String },
    #[error("no session {reference}")]
    NoSession { reference: String },
    #[error("workspace {workspace} has no review comment {id}")]
    NoComment { id: String, workspace: String },
    #[error("a workspace named {name} already exists")]
    NameTaken { name: String },
    #[error(transparent)]
    InvalidName(#[from] NameError),
    #[error("{0}")]
    Invalid(String),
    #[error("workspace {workspace} is {state}; cannot {op} it now")]
    Conflict {
        workspace: String,
        state: &'static str,
        op: &'static str,
    },
    #[error(
        "workspace {workspace} is not running (it is {state}); start it with `kraal up {workspace}`"
    )]
    NotRunning {
        workspace: String,
        state: &'static str,
    },
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(
        "workspace {workspace}: the guest agent did not answer within {secs} s ({cause}); the sandbox was stopped and `kraal up {workspace}` tries again{console}"
    )]
    NoBoot {
        workspace: String,
        secs: u64,
        cause: String,
        /// The end of the sandbox's console, prefixed with a newline, or a note that it is empty.
        console: String,
    },
    #[error(
        "workspace {workspace} is persistent (a control workspace); remove it with `kraal rm {workspace} --force`"
    )]
    Persistent { workspace: String },
    #[error("workspace {workspace}: guest agent unreachable")]
    Guest {
        workspace: String,
        #[source]
        source: GuestClientError,
    },
    #[error("{0}")]
    TooLarge(String),
    #[error("nothing listens on port {port} in workspace {workspace}")]
    NotListening { workspace: String, port: u16 },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Backup(#[from] kraal_backup::BackupError),
}

impl EngineError {
    /// Wraps an error talking to `workspace`'s guest agent (for `map_err`).
    pub(crate) fn guest(workspace: &str) -> impl Fn(GuestClientError) -> EngineError + Copy + '_ {
        move |source| EngineError::Guest {
            workspace: workspace.to_owned(),
            source,
        }
    }

    /// Stable code for the HTTP layer.
    pub fn code(&self) -> &'static str {
        match self {
            EngineError::NotFound { .. }
            | EngineError::NoSession { .. }
            | EngineError::NoComment { .. } => "not_found",
            EngineError::NameTaken { .. } => "already_exists",
            EngineError::InvalidName(_) | EngineError::Invalid(_) => "invalid_argument",
            EngineError::Conflict { .. } | EngineError::Persistent { .. } => "conflict",
            EngineError::NotRunning { .. } => "not_running",
            EngineError::NotListening { .. } => "not_listening",
            EngineError::TooLarge(_) => "too_large",
            EngineError::Backend(BackendError::Unavailable { .. }) => "backend_unavailable",
            // What the backend cannot do at all is the request's problem, not the server's.
            EngineError::Backend(BackendError::Unsupported { .. }) => "unsupported",
            EngineError::Backend(_) => "backend_error",
            EngineError::Guest {
                source: GuestClientError::Guest(g),
                ..
            } => match g.code {
                kraal_protocol::ErrorCode::PathEscape => "path_escape",
                kraal_protocol::ErrorCode::NotFound
                | kraal_protocol::ErrorCode::UnknownProcess
                | kraal_protocol::ErrorCode::UnknownSession => "not_found",
                kraal_protocol::ErrorCode::InvalidRequest
                | kraal_protocol::ErrorCode::NotADirectory
                | kraal_protocol::ErrorCode::IsADirectory => "invalid_argument",
                kraal_protocol::ErrorCode::AlreadyExists => "already_exists",
                kraal_protocol::ErrorCode::DirectoryNotEmpty => "conflict",
                kraal_protocol::ErrorCode::PermissionDenied => "permission_denied",
                kraal_protocol::ErrorCode::NoSpace => "no_space",
                _ => "guest_error",
            },
            EngineError::Guest { .. } | EngineError::NoBoot { .. } => "guest_unreachable",
            EngineError::Store(_) => "internal",
            EngineError::Backup(kraal_backup::BackupError::NotFound { .. }) => "not_found",
            EngineError::Backup(
                kraal_backup::BackupError::Config { .. } | kraal_backup::BackupError::Key { .. },
            ) => "invalid_argument",
            EngineError::Backup(kraal_backup::BackupError::Store { .. }) => "backup_store",
            EngineError::Backup(kraal_backup::BackupError::Denied { .. }) => "backup_denied",
            EngineError::Backup(_) => "backup_damaged",
        }
    }
}
