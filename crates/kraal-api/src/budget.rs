//! API types for budgets: spend through the model gateway and the caps that hold a
//! workspace's model requests once reached.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Spend added up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Spend {
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// At list prices.
    pub usd: f64,
}

/// One cap and how much of it is spent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Budget {
    /// `day` (the whole daemon, per UTC day) or `workspace`.
    pub scope: String,
    /// The workspace's name (scope `workspace`).
    pub workspace: Option<String>,
    pub workspace_id: Option<String>,
    pub usd: Option<f64>,
    pub tokens: Option<u64>,
    pub spent: Spend,
    /// Reached: the scope's model requests wait.
    pub reached: bool,
    pub updated_at: String,
}

/// `PUT /v1/budget`: a cap on spend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SetBudget {
    /// `day` or `workspace`.
    pub scope: String,
    /// The workspace (name or id) for scope `workspace`.
    #[serde(default)]
    pub workspace: Option<String>,
    /// Or the task whose workspace it caps.
    #[serde(default)]
    pub task: Option<String>,
    #[serde(default)]
    pub usd: Option<f64>,
    #[serde(default)]
    pub tokens: Option<u64>,
}

/// `DELETE /v1/budget` parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BudgetScope {
    pub scope: String,
    #[serde(default)]
    pub workspace: Option<String>,
    #[serde(default)]
    pub task: Option<String>,
}

/// Spend of one workspace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WorkspaceSpend {
    pub workspace: String,
    pub workspace_id: String,
    pub spent: Spend,
}

/// `GET /v1/budget`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BudgetReport {
    /// The UTC day `today` counts.
    pub day: String,
    pub today: Spend,
    pub budgets: Vec<Budget>,
    pub workspaces: Vec<WorkspaceSpend>,
    /// The providers' rate-limit windows per credential, as their answers report them
    /// (what the gateway paces parallel sessions by).
    #[serde(default)]
    pub limits: Vec<RateLimitWindow>,
}

/// One credential's rate-limit windows (an API key, or the shared subscription login).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RateLimitWindow {
    pub provider: String,
    /// `api key …abcd` or `subscription`.
    pub credential: String,
    pub requests_limit: Option<u64>,
    pub requests_remaining: Option<u64>,
    /// RFC 3339.
    pub requests_reset: Option<String>,
    pub tokens_limit: Option<u64>,
    pub tokens_remaining: Option<u64>,
    pub tokens_reset: Option<String>,
    /// The subscription's state: `allowed`, `allowed_warning` or `rejected`.
    pub subscription_status: Option<String>,
    pub subscription_reset: Option<String>,
    /// Utilization of each subscription window (`5h`, `7d`), 0 to 1.
    #[serde(default)]
    pub subscription_windows: Vec<SubscriptionWindow>,
    /// Requests sent since the daemon started, those held first, and answers that were 429.
    pub requests: u64,
    pub paced: u64,
    pub limited: u64,
    /// Held now, and on their way now.
    pub waiting: u64,
    pub in_flight: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SubscriptionWindow {
    pub name: String,
    pub utilization: f64,
}
