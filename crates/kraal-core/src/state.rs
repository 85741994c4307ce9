//! Workspace lifecycle states, backend kinds and backend capabilities.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Observed lifecycle state of a workspace.
///
/// `creating → running ⇄ stopped → (deleted)`; `failed` carries a reason and can be
/// brought back with `up`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WorkspaceState {
    Creating,
    Starting,
    Running,
    Stopping,
    Stopped,
    Failed,
    Deleting,
}

impl WorkspaceState {
    pub const ALL: [WorkspaceState; 7] = [
        WorkspaceState::Creating,
        WorkspaceState::Starting,
        WorkspaceState::Running,
        WorkspaceState::Stopping,
        WorkspaceState::Stopped,
        WorkspaceState::Failed,
        WorkspaceState::Deleting,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WorkspaceState::Creating => "creating",
            WorkspaceState::Starting => "starting",
            WorkspaceState::Running => "running",
            WorkspaceState::Stopping => "stopping",
            WorkspaceState::Stopped => "stopped",
            WorkspaceState::Failed => "failed",
            WorkspaceState::Deleting => "deleting",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "creating" => WorkspaceState::Creating,
            "starting" => WorkspaceState::Starting,
            "running" => WorkspaceState::Running,
            "stopping" => WorkspaceState::Stopping,
            "stopped" => WorkspaceState::Stopped,
            "failed" => WorkspaceState::Failed,
            "deleting" => WorkspaceState::Deleting,
            _ => return None,
        })
    }

    /// States in which an operation is still in flight.
    pub fn is_transitional(self) -> bool {
        matches!(
            self,
            WorkspaceState::Creating
                | WorkspaceState::Starting
                | WorkspaceState::Stopping
                | WorkspaceState::Deleting
        )
    }
}

/// What the user asked for; the reconciler drives the observed state toward it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DesiredState {
    Running,
    Stopped,
}

impl DesiredState {
    pub fn as_str(self) -> &'static str {
        match self {
            DesiredState::Running => "running",
            DesiredState::Stopped => "stopped",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "running" => Some(DesiredState::Running),
            "stopped" => Some(DesiredState::Stopped),
            _ => None,
        }
    }
}

/// Where workspaces run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    Gvisor,
    Qemu,
    Firecracker,
    Kubernetes,
}

impl BackendKind {
    pub const ALL: [BackendKind; 4] = [
        BackendKind::Gvisor,
        BackendKind::Qemu,
        BackendKind::Firecracker,
        BackendKind::Kubernetes,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Gvisor => "gvisor",
            BackendKind::Qemu => "qemu",
            BackendKind::Firecracker => "firecracker",
            BackendKind::Kubernetes => "kubernetes",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        BackendKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Optional operations a backend supports; the rest return a typed `Unsupported` error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
pub struct Capabilities {
    /// Memory checkpoint and restore (pause/resume).
    pub checkpoint: bool,
    /// Hardware-virtualized isolation (a separate guest kernel on KVM).
    pub hardware_isolation: bool,
    /// CPU, memory and pid limits are enforced.
    pub resource_limits: bool,
    /// Each workspace gets its own network namespace.
    pub private_network: bool,
    /// The workspace volume survives stop/start.
    pub persistent_volume: bool,
}
