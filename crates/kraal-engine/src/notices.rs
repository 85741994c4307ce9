//! What a person supervising agents wants to hear about, as it happens: a session's
//! state changes, an approval it waits for (with the tool and its input), an approval
//! answered, egress the proxy refused, and model requests held at a budget cap. Published on a broadcast channel that never
//! blocks its senders; notifiers (browser pages, Web Push) subscribe.

use kraal_core::{AgentEvent, SessionEvent, SessionId, WorkspaceId};

use crate::{Engine, SessionChange};

#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    /// A session reached a new state.
    State(SessionChange),
    /// A session's agent asks whether it may use a tool.
    Approval {
        session: SessionId,
        workspace: WorkspaceId,
        request_id: String,
        tool: String,
        input: serde_json::Value,
        description: Option<String>,
    },
    /// An approval request was answered (from anywhere).
    Answered {
        session: SessionId,
        request_id: String,
    },
    /// The egress proxy refused a connection of a workspace.
    EgressRefused {
        workspace: WorkspaceId,
        host: String,
        port: u16,
        reason: String,
    },
    /// The model gateway holds a workspace's request: a budget cap is reached.
    BudgetHeld {
        workspace: WorkspaceId,
        reason: String,
    },
}

impl Engine {
    /// Every notice from now on.
    pub fn subscribe_notices(&self) -> tokio::sync::broadcast::Receiver<Notice> {
        self.notices.subscribe()
    }

    /// Where host services publish notices (the egress proxy's refusals).
    pub fn notice_sender(&self) -> tokio::sync::broadcast::Sender<Notice> {
        self.notices.clone()
    }

    /// Publishes the approvals asked and answered in a batch of newly stored events.
    pub(crate) fn announce_approvals(
        &self,
        session: &SessionId,
        workspace: &WorkspaceId,
        batch: &[SessionEvent],
    ) {
        for e in batch {
            let n = match &e.event {
                AgentEvent::ApprovalRequest {
                    request_id,
                    tool,
                    input,
                    description,
                } => Notice::Approval {
                    session: session.clone(),
                    workspace: workspace.clone(),
                    request_id: request_id.clone(),
                    tool: tool.clone(),
                    input: input.clone(),
                    description: description.clone(),
                },
                AgentEvent::ApprovalDecision { request_id, .. } => Notice::Answered {
                    session: session.clone(),
                    request_id: request_id.clone(),
                },
                _ => continue,
            };
            let _ = self.notices.send(n);
        }
    }
}
