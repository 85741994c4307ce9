//! The daemon's HTTP API. Handlers only parse requests into engine calls and map results
//! to responses; every error leaves as `{"code", "message"}` with a stable code.

mod activity;
mod backups;
mod checklist;
mod error;
mod exec;
mod images;
mod metrics;
pub mod notifier;
pub mod preview;
pub mod push;
mod remote;
mod review;
mod routes;
pub mod security;
mod sessions;
mod sources;
mod spend;
mod sse;
pub mod state;
mod tasks;
mod tokens;
pub mod web;

use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::http::header::AUTHORIZATION;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use kraal_api::HostReport;
use kraal_engine::Engine;

pub use error::HttpError;
pub use routes::ApiDoc;

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    pub engine: Arc<Engine>,
    /// Where images are built and kept.
    pub images: kraal_image::ImageStore,
    pub host: Arc<HostReport>,
    pub data_dir: String,
    /// Where the web UI listens (`http://…`), when it does.
    pub web_url: Option<String>,
    /// The key secrets are encrypted with at rest.
    pub secret_key: kraal_store::SecretKey,
    /// Where workspace backups go, if configured.
    pub backups: Option<kraal_backup::Repo>,
    /// Files a daemon state backup holds besides the database (name, path): the key
    /// secrets are encrypted with, the API token.
    pub state_files: Vec<(String, std::path::PathBuf)>,
    /// Web Push (VAPID key, dispatcher), when the daemon sends notifications.
    pub push: Option<Arc<push::Push>>,
    /// With `serve --preview-domain D`, every workspace port also gets its own origin,
    /// `<port>--<workspace>.D`.
    pub preview_domain: Option<String>,
    /// The task queue, when the daemon runs one.
    pub tasks: Option<Arc<kraal_tasks::Scheduler>>,
    /// The model providers' rate-limit windows the gateway paces by, when it does.
    pub rate_limits: Option<Arc<dyn Fn() -> Vec<kraal_api::RateLimitWindow> + Send + Sync>>,
}

/// The API router (`/v1/…` and `/metrics`). With `token`, every request must carry
/// `Authorization: Bearer <token>` (used for TCP listeners; the Unix socket is protected by
/// file permissions).
pub fn router(state: AppState, token: Option<String>) -> Router {
    let engine = state.engine.clone();
    let public = sources::public_routes().with_state(state.clone());
    let app = routes::routes()
        .merge(metrics::routes())
        .with_state(state)
        .layer(middleware::from_fn_with_state(engine, activity::track));
    let app = match token {
        Some(t) => {
            let t = Arc::new(t);
            app.layer(middleware::from_fn(move |req: Request, next: Next| {
                let t = t.clone();
                async move { require_token(&t, req, next).await }
            }))
        }
        None => app.layer(middleware::from_fn(
            |mut req: Request, next: Next| async move {
                req.extensions_mut().insert(security::Actor("local".into()));
                next.run(req).await
            },
        )),
    };
    // Webhooks and triggers carry their own proof (a signature, the trigger's token).
    public.merge(app)
}

async fn require_token(token: &str, mut req: Request, next: Next) -> Response {
    use subtle::ConstantTimeEq;
    let given = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if given.len() == token.len() && bool::from(given.as_bytes().ct_eq(token.as_bytes())) {
        req.extensions_mut()
            .insert(security::Actor("api-token".into()));
        next.run(req).await
    } else {
        HttpError::unauthorized().into_response()
    }
}

/// A response streaming what `rx` receives, one JSON document per line, until the sender
/// is gone (long operations: image builds, backups, restores).
pub(crate) fn ndjson<T: serde::Serialize + Send + 'static>(
    rx: tokio::sync::mpsc::UnboundedReceiver<T>,
) -> Response {
    let lines = futures::stream::unfold(rx, |mut rx| async move {
        let line = rx.recv().await?;
        let text = serde_json::to_string(&line).expect("serializes") + "\n";
        Some((Ok::<_, std::convert::Infallible>(text), rx))
    });
    (
        [(axum::http::header::CONTENT_TYPE, "application/x-ndjson")],
        axum::body::Body::from_stream(lines),
    )
        .into_response()
}

/// The OpenAPI document as pretty JSON (what `docs/openapi.json` holds).
pub fn openapi_json() -> String {
    use utoipa::OpenApi;
    let mut doc = ApiDoc::openapi();
    doc.merge(metrics::MetricsDoc::openapi());
    doc.to_pretty_json().expect("openapi serializes") + "\n"
}
