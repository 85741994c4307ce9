//! `GET /metrics`: the daemon's Prometheus metrics (`kraal-metrics`) in the OpenMetrics
//! text format. What the store knows — workspaces and sessions by state — is counted from
//! it at each scrape; everything else is recorded where it happens. On TCP the route needs
//! the API token like every `/v1` one.

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use kraal_core::{SessionState, WorkspaceState};
use kraal_engine::EngineError;

use crate::AppState;
use crate::error::HttpError;

/// The content type of the OpenMetrics text format, which Prometheus scrapes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// This route's part of the OpenAPI document (merged into [`crate::ApiDoc`]'s).
#[derive(utoipa::OpenApi)]
#[openapi(paths(crate::metrics::metrics))]
pub struct MetricsDoc;

pub fn routes() -> Router<AppState> {
    Router::new().route("/metrics", get(metrics))
}

#[utoipa::path(get, path = "/metrics",
    responses((status = 200, body = String, content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8",
        description = "The daemon's metrics: workspaces and sessions by state, create and start times, session events mirrored and delivered, live readers' lag, model gateway requests, bytes and errors per provider, egress connections, backups, reconciler passes")))]
async fn metrics(State(s): State<AppState>) -> Result<Response, HttpError> {
    let m = s.engine.metrics();
    let store = s.engine.store();
    let ws = store.workspace_counts().map_err(EngineError::from)?;
    m.set_workspaces(
        WorkspaceState::ALL.map(|st| (st.as_str(), ws.get(st.as_str()).copied().unwrap_or(0))),
    );
    let sessions = store.session_counts().map_err(EngineError::from)?;
    m.set_sessions(
        SessionState::ALL.map(|st| (st.as_str(), sessions.get(st.as_str()).copied().unwrap_or(0))),
    );
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, m.registry()).map_err(|e| {
        HttpError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("encoding the metrics: {e}"),
        )
    })?;
    Ok(([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response())
}
