//! The backend trait: pure-data specs in, live sandboxes out.

use std::net::SocketAddr;
use std::path::PathBuf;

use async_trait::async_trait;
use kraal_core::{BackendKind, Capabilities, Resources, Source, WorkspaceId, WorkspaceName};
use serde::{Deserialize, Serialize};

/// Everything a backend needs to create and start one workspace's sandbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxSpec {
    pub id: WorkspaceId,
    pub name: WorkspaceName,
    pub source: Source,
    pub resources: Resources,
    /// Secret the daemon uses to authenticate to the guest agent.
    pub guest_token: String,
    /// The image to create it from (`None`: the backend's default).
    pub image: Option<String>,
    /// A long-lived workspace (a control workspace): its network address is reserved for
    /// it, even while stopped.
    #[serde(default)]
    pub persistent: bool,
    /// Host directories to mount into the sandbox.
    #[serde(default)]
    pub mounts: Vec<kraal_core::Mount>,
    /// Hosts whose `https://` git URLs go through the git gateway on the workspace's link
    /// (which adds the credential on the host).
    #[serde(default)]
    pub git_hosts: Vec<String>,
}

/// How to reach a started sandbox's guest agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestEndpoint {
    pub addr: SocketAddr,
    /// The host's own address on the sandbox's private link, where host services for the
    /// sandbox (the model gateway) listen; `None` when the backend has no such link.
    pub host: Option<std::net::IpAddr>,
    /// TCP ports the workspace's image serves, for the daemon to forward to the host.
    #[serde(default)]
    pub ports: Vec<u16>,
    /// The sandbox has no private link to the host (a Kubernetes pod): `host` is a
    /// loopback address, the host services listen on it on the daemon's host and the
    /// guest listens on the same address inside the sandbox, relaying each connection to
    /// the daemon (`GuestClient::accept`).
    #[serde(default)]
    pub tunnel: bool,
}

/// What the backend sees of a sandbox right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SandboxStatus {
    /// Never created, or destroyed.
    Absent,
    /// Created (volume exists) but not running.
    Stopped,
    Running,
    Paused,
}

/// Typed backend failures; each names the workspace and the operation.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("{backend} backend does not support {op}")]
    Unsupported {
        backend: BackendKind,
        op: &'static str,
    },
    #[error("{backend} backend is not usable on this host: {reason}")]
    Unavailable {
        backend: BackendKind,
        reason: String,
    },
    #[error("cannot prepare the source of workspace {workspace}")]
    Source {
        workspace: String,
        #[source]
        source: crate::checkout::CheckoutError,
    },
    #[error("{op} of workspace {workspace} failed")]
    Runtime {
        workspace: String,
        op: &'static str,
        #[source]
        source: crate::process::ProcessError,
    },
    #[error("{op} of workspace {workspace} failed: {message}")]
    Failed {
        workspace: String,
        op: &'static str,
        message: String,
    },
    #[error("{op} of workspace {workspace} failed at {path}")]
    Io {
        workspace: String,
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("workspace {workspace} has no sandbox on this backend")]
    NotFound { workspace: String },
}

impl BackendError {
    /// `op` of workspace `id` failed: `message` says why.
    pub fn failed(id: &WorkspaceId, op: &'static str, message: impl Into<String>) -> Self {
        BackendError::Failed {
            workspace: id.to_string(),
            op,
            message: message.into(),
        }
    }

    /// For `map_err`: an I/O error at `path` during `op`.
    pub fn io(
        id: &WorkspaceId,
        op: &'static str,
        path: &std::path::Path,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let workspace = id.to_string();
        let path = path.to_owned();
        move |source| BackendError::Io {
            workspace,
            op,
            path,
            source,
        }
    }

    /// For `map_err`: a host command of `op` failed.
    pub fn runtime(
        id: &WorkspaceId,
        op: &'static str,
    ) -> impl FnOnce(crate::process::ProcessError) -> Self {
        let workspace = id.to_string();
        move |source| BackendError::Runtime {
            workspace,
            op,
            source,
        }
    }

    /// For `map_err`: a lower layer's error (image store, network, hypervisor API) as a
    /// failed `op`, keeping its whole cause chain in the message.
    pub fn chained<E: std::error::Error>(
        id: &WorkspaceId,
        op: &'static str,
    ) -> impl FnOnce(E) -> Self {
        let workspace = id.to_string();
        move |e| BackendError::Failed {
            workspace,
            op,
            message: crate::error_chain(&e),
        }
    }
}

/// The result of probing whether a backend can run here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostCheck {
    pub backend: BackendKind,
    pub status: ProbeStatus,
    /// One line per finding, e.g. "runsc 0.0~20240729.0 at /usr/bin/runsc".
    pub details: Vec<String>,
}

impl HostCheck {
    /// Usable when no finding made `ok` false.
    pub fn new(backend: BackendKind, ok: bool, details: Vec<String>) -> Self {
        HostCheck {
            backend,
            status: if ok {
                ProbeStatus::Usable
            } else {
                ProbeStatus::Unusable
            },
            details,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeStatus {
    Usable,
    Unusable,
}

/// A place where workspaces run. Implementations are stateless beyond the host resources
/// they manage: the daemon's database is the source of truth for what should exist, and
/// every method must be idempotent so the reconciler can retry it.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    fn kind(&self) -> BackendKind;
    fn capabilities(&self) -> Capabilities;

    /// Checks prerequisites without side effects; bounded in time.
    async fn check(&self) -> HostCheck;

    /// Allocates the sandbox's durable resources (volume with the checkout, network)
    /// without starting it. Calling it again for an existing sandbox is a no-op.
    async fn create(&self, spec: &SandboxSpec) -> Result<(), BackendError>;

    /// Starts (or restarts) the sandbox; returns where its guest agent listens.
    async fn start(&self, spec: &SandboxSpec) -> Result<GuestEndpoint, BackendError>;

    /// Stops the sandbox, keeping its volume.
    async fn stop(&self, id: &WorkspaceId) -> Result<(), BackendError>;

    /// Removes everything, volume included.
    async fn destroy(&self, id: &WorkspaceId) -> Result<(), BackendError>;

    async fn status(&self, id: &WorkspaceId) -> Result<SandboxStatus, BackendError>;

    /// The guest endpoint of a running sandbox, for reconnecting after a daemon restart.
    async fn endpoint(&self, id: &WorkspaceId) -> Result<GuestEndpoint, BackendError>;

    /// Text the sandbox runtime and the guest agent printed (console), newest last.
    async fn console_log(&self, id: &WorkspaceId, max_bytes: usize)
    -> Result<String, BackendError>;

    /// The workspace's volume as a directory on this host (mounted if need be), for
    /// backups read and restores written on the host; `None` when the host must not open
    /// it (a microVM's guest-written disk, a pod's volume): it is reached through the
    /// guest instead.
    async fn host_volume(&self, _id: &WorkspaceId) -> Result<Option<PathBuf>, BackendError> {
        Ok(None)
    }

    /// Undoes what [`Backend::host_volume`] mounted for a sandbox that is not running.
    async fn release_host_volume(&self, _id: &WorkspaceId) -> Result<(), BackendError> {
        Ok(())
    }

    async fn pause(&self, _id: &WorkspaceId) -> Result<(), BackendError> {
        Err(BackendError::Unsupported {
            backend: self.kind(),
            op: "pause",
        })
    }

    async fn resume(&self, _id: &WorkspaceId) -> Result<(), BackendError> {
        Err(BackendError::Unsupported {
            backend: self.kind(),
            op: "resume",
        })
    }

    /// Saves the running sandbox — memory, devices and writable disks — as `name`; it
    /// keeps running.
    async fn snapshot(&self, _id: &WorkspaceId, _name: &str) -> Result<(), BackendError> {
        Err(BackendError::Unsupported {
            backend: self.kind(),
            op: "snapshots",
        })
    }

    /// Replaces the sandbox with snapshot `name`: files and running processes come back as
    /// they were when it was taken.
    async fn restore(
        &self,
        _spec: &SandboxSpec,
        _name: &str,
    ) -> Result<GuestEndpoint, BackendError> {
        Err(BackendError::Unsupported {
            backend: self.kind(),
            op: "snapshots",
        })
    }
}

/// Snapshot names become directory names: letters, digits, `-` and `_` only.
// The backends' own error, returned as their callers return it.
#[allow(clippy::result_large_err)]
pub fn check_snapshot_name(id: &WorkspaceId, name: &str) -> Result<(), BackendError> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(BackendError::failed(
            id,
            "snapshot",
            format!("invalid snapshot name {name:?}: use up to 64 letters, digits, - and _"),
        ));
    }
    Ok(())
}
