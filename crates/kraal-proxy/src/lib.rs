//! Host-side services that sandboxes reach over their private link: the egress proxy
//! (the only way out, per-workspace allowlist) and the model gateway, a reverse proxy in
//! front of the model APIs (Anthropic, OpenAI, Gemini) for the calls agents make (`routes`)
//! and of git hosts for fetches and pushes of the workspace's repositories (`git`).
//! Agents inside a sandbox are given the gateway as their API base URL and a per-workspace
//! placeholder key; the gateway checks the placeholder, swaps it for the real credential
//! held on the host and streams the answer back. Real keys and OAuth tokens never enter a
//! sandbox.

mod egress;
mod gateway;
mod git;
mod meter;
mod pacing;
mod routes;

pub use egress::{
    EgressError, EgressProxies, EgressRecord, EgressSettings, EgressSink, NoSink, refused,
};

pub use gateway::{
    AnthropicAuth, CredentialSource, Credentials, GATEWAY_PORT, GatewayError, Gateways, GitRoute,
    StaticCredentials, Upstreams, placeholder_key,
};
pub use meter::{Metered, Spending, Usage, price_per_mtok, price_usd};
pub use pacing::{Pacer, RateWindow, credential_key};
pub use routes::{GatewayAudit, RefusedRequest};

#[cfg(test)]
mod tests;
