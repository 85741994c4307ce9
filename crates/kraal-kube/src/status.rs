//! Reading a workspace's state out of its Pod and volume claim, as pure functions: is it
//! running, stopped or gone, and if it cannot run, why (image pull errors, a claim no
//! storage can satisfy, an eviction, no node that fits).

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kraal_sandbox::SandboxStatus;

/// What the cluster shows of a workspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub status: SandboxStatus,
    /// Why it is not (or will not get) running, when the cluster says so.
    pub problem: Option<Problem>,
}

/// Something that keeps a workspace from running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The image cannot be pulled (`ErrImagePull`, `ImagePullBackOff`, `InvalidImageName`).
    Image(String),
    /// The volume claim is not bound (no storage class, no capacity…).
    ClaimPending(String),
    /// No node can take the pod (`Unschedulable`).
    Unschedulable(String),
    /// The node evicted the pod (memory or disk pressure).
    Evicted(String),
    /// A container keeps failing (`CrashLoopBackOff`, `CreateContainerConfigError`…).
    Container(String),
}

impl Problem {
    /// Problems that will not go away by waiting.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            Problem::Image(_) | Problem::Container(_) | Problem::Evicted(_)
        )
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::Image(m) => write!(f, "the workspace image cannot be pulled: {m}"),
            Problem::ClaimPending(m) => write!(f, "the workspace volume is not bound yet: {m}"),
            Problem::Unschedulable(m) => write!(f, "no node can run the workspace: {m}"),
            Problem::Evicted(m) => write!(f, "the node evicted the workspace: {m}"),
            Problem::Container(m) => write!(f, "the workspace container fails: {m}"),
        }
    }
}

fn claim_problem(claim: &PersistentVolumeClaim) -> Option<Problem> {
    let phase = claim.status.as_ref()?.phase.as_deref()?;
    (phase == "Pending").then(|| {
        let class = claim
            .spec
            .as_ref()
            .and_then(|s| s.storage_class_name.clone())
            .unwrap_or_else(|| "the default storage class".into());
        Problem::ClaimPending(format!(
            "claim {} waits for {class}",
            claim.metadata.name.as_deref().unwrap_or("?")
        ))
    })
}

fn waiting_problem(pod: &Pod) -> Option<Problem> {
    let st = pod.status.as_ref()?;
    let all = st
        .init_container_statuses
        .iter()
        .flatten()
        .chain(st.container_statuses.iter().flatten());
    for c in all {
        let Some(w) = c.state.as_ref().and_then(|s| s.waiting.as_ref()) else {
            continue;
        };
        let reason = w.reason.clone().unwrap_or_default();
        let msg = format!(
            "{} ({}): {}",
            reason,
            c.name,
            w.message.clone().unwrap_or_default()
        );
        match reason.as_str() {
            "ErrImagePull" | "ImagePullBackOff" | "InvalidImageName" | "ErrImageNeverPull" => {
                return Some(Problem::Image(msg));
            }
            "CrashLoopBackOff"
            | "CreateContainerConfigError"
            | "CreateContainerError"
            | "RunContainerError" => return Some(Problem::Container(msg)),
            _ => {}
        }
    }
    None
}

/// The state of a workspace from its claim and pod (either may be missing).
pub fn observe(claim: Option<&PersistentVolumeClaim>, pod: Option<&Pod>) -> Observed {
    let Some(claim) = claim else {
        return Observed {
            status: if pod.is_some() {
                SandboxStatus::Stopped
            } else {
                SandboxStatus::Absent
            },
            problem: None,
        };
    };
    let claim_problem = claim_problem(claim);
    let Some(pod) = pod.filter(|p| p.metadata.deletion_timestamp.is_none()) else {
        return Observed {
            status: SandboxStatus::Stopped,
            problem: claim_problem,
        };
    };
    let st = pod.status.as_ref();
    let phase = st.and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
    match phase {
        "Running" => {
            let ready = st
                .and_then(|s| s.container_statuses.as_ref())
                .is_some_and(|cs| !cs.is_empty() && cs.iter().all(|c| c.ready));
            Observed {
                status: if ready {
                    SandboxStatus::Running
                } else {
                    SandboxStatus::Stopped
                },
                problem: if ready { None } else { waiting_problem(pod) },
            }
        }
        "Failed" | "Succeeded" => {
            let reason = st.and_then(|s| s.reason.clone()).unwrap_or_default();
            let message = st.and_then(|s| s.message.clone()).unwrap_or_default();
            Observed {
                status: SandboxStatus::Stopped,
                problem: Some(if reason == "Evicted" {
                    Problem::Evicted(message)
                } else {
                    Problem::Container(format!("pod {phase}: {reason} {message}").trim().to_owned())
                }),
            }
        }
        // Pending (or Unknown): why, if the cluster says.
        _ => {
            let unschedulable = st
                .and_then(|s| s.conditions.as_ref())
                .into_iter()
                .flatten()
                .find(|c| c.type_ == "PodScheduled" && c.status == "False")
                .map(|c| {
                    Problem::Unschedulable(
                        c.message.clone().or(c.reason.clone()).unwrap_or_default(),
                    )
                });
            Observed {
                status: SandboxStatus::Stopped,
                problem: waiting_problem(pod).or(claim_problem).or(unschedulable),
            }
        }
    }
}
