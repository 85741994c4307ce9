//! API types for supervising from a phone: Web Push subscriptions and their rules,
//! review comments on a workspace's diff, and the live ports that previews open.

use kraal_core::AgentKind;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What a device can be notified about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NotificationKind {
    /// An agent finished its turn (it waits for the next message) or its session ended.
    TurnDone,
    /// A session failed.
    Failed,
    /// An agent asks to use a tool (with Approve / Deny on the notification).
    Approval,
    /// The egress proxy refused a connection of a workspace.
    Egress,
    /// A budget cap is reached: the workspace's model requests wait.
    Budget,
}

impl NotificationKind {
    pub const ALL: [NotificationKind; 5] = [
        NotificationKind::TurnDone,
        NotificationKind::Failed,
        NotificationKind::Approval,
        NotificationKind::Egress,
        NotificationKind::Budget,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            NotificationKind::TurnDone => "turn_done",
            NotificationKind::Failed => "failed",
            NotificationKind::Approval => "approval",
            NotificationKind::Egress => "egress",
            NotificationKind::Budget => "budget",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    pub fn label(self) -> &'static str {
        match self {
            NotificationKind::TurnDone => "Turn finished",
            NotificationKind::Failed => "Session failed",
            NotificationKind::Approval => "Approval needed",
            NotificationKind::Egress => "Connection refused",
            NotificationKind::Budget => "Budget reached",
        }
    }
}

/// The daemon's VAPID public key (`applicationServerKey` for `pushManager.subscribe`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PushKey {
    /// Base64url of the uncompressed P-256 point.
    pub key: String,
}

/// The keys of a browser's push subscription, as `PushSubscription.toJSON()` gives them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PushSubscriptionKeys {
    pub p256dh: String,
    pub auth: String,
}

/// Register a browser for notifications.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CreatePushSubscription {
    /// The push service URL (`https://`; `http://` only to loopback).
    pub endpoint: String,
    pub keys: PushSubscriptionKeys,
    /// What to call the device (default: "browser").
    #[serde(default)]
    pub label: Option<String>,
    /// What it wants to hear about (default: everything).
    #[serde(default)]
    pub kinds: Option<Vec<NotificationKind>>,
    /// Workspaces (names or ids) it wants to hear about (default: all).
    #[serde(default)]
    pub workspaces: Vec<String>,
    /// The web UI origin its notifications link to (default: the daemon's web UI).
    #[serde(default)]
    pub origin: Option<String>,
}

/// Which notifications a device gets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PushRules {
    pub kinds: Vec<NotificationKind>,
    /// Workspace names or ids; empty: all.
    #[serde(default)]
    pub workspaces: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PushSubscription {
    pub id: String,
    pub label: String,
    /// The push service's origin (the full endpoint is a secret of the browser's).
    pub service: String,
    /// The login token that registered it (`None`: the local API).
    pub token: Option<String>,
    pub kinds: Vec<NotificationKind>,
    /// Workspace names; empty: all.
    pub workspaces: Vec<String>,
    pub created_at: String,
    pub last_sent_at: Option<String>,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PushSubscriptionList {
    pub subscriptions: Vec<PushSubscription>,
}

/// One line of a diff hunk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReviewLine {
    /// `context`, `added` or `removed`.
    pub kind: String,
    /// Its number in `HEAD` (context and removed lines).
    pub old: Option<u32>,
    /// Its number in the working tree (context and added lines).
    pub new: Option<u32>,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReviewHunk {
    pub header: String,
    pub lines: Vec<ReviewLine>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReviewFile {
    pub path: String,
    pub old_path: Option<String>,
    /// `modified`, `added`, `deleted`, `renamed` or `untracked`.
    pub status: String,
    pub binary: bool,
    pub hunks: Vec<ReviewHunk>,
}

/// A comment on one line of a workspace's changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReviewComment {
    pub id: String,
    pub path: String,
    pub line: u32,
    /// `new` (a line of the working tree) or `old` (a removed line, numbered as in HEAD).
    pub side: String,
    pub body: String,
    /// The code around the line when the comment was made, the line marked with `>`.
    pub excerpt: String,
    pub author: String,
    pub created_at: String,
    pub resolved: bool,
    /// The session it was sent to, and when.
    pub sent_to: Option<String>,
    pub sent_at: Option<String>,
}

/// A workspace's uncommitted changes and the comments on them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Review {
    pub workspace: String,
    pub files: Vec<ReviewFile>,
    pub comments: Vec<ReviewComment>,
    /// Why there is no diff (e.g. the checkout has no git history).
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CreateComment {
    pub path: String,
    pub line: u32,
    /// `new` (default) or `old`.
    #[serde(default)]
    pub side: Option<String>,
    pub body: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UpdateComment {
    pub resolved: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CommentList {
    pub comments: Vec<ReviewComment>,
}

/// Send comments to an agent as one message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema, Default)]
pub struct SendReview {
    /// Which comments (default: every unresolved one not sent yet).
    #[serde(default)]
    pub comments: Vec<String>,
    /// An existing session of the workspace; without it a new session starts.
    #[serde(default)]
    pub session: Option<String>,
    /// The agent of a new session (default `claude`).
    #[serde(default)]
    pub agent: Option<AgentKind>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SentReview {
    pub session: String,
    pub comments: Vec<ReviewComment>,
}

/// A TCP port of a running workspace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LivePortInfo {
    pub port: u16,
    /// Where it listens inside the workspace (empty: nothing does yet).
    pub addresses: Vec<String>,
    pub process: Option<String>,
    /// The image declares it (`forwardPorts`, `EXPOSE`).
    pub declared: bool,
    pub listening: bool,
    /// The web UI path that previews it (`/p/<ws>/<port>/`).
    pub preview_path: String,
    /// Its own origin (`http(s)://<port>--<ws>.<preview domain>/`), with `serve --preview-domain`.
    pub preview_origin: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LivePortList {
    pub ports: Vec<LivePortInfo>,
}
