//! The one HTTP error type: status, stable code, message. Internal causes are logged,
//! not sent.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use kraal_api::ApiError;
use kraal_engine::{EngineError, chain};

#[derive(Debug)]
pub struct HttpError {
    pub status: StatusCode,
    pub body: ApiError,
}

impl HttpError {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        HttpError {
            status,
            body: ApiError {
                code: code.to_owned(),
                message: message.into(),
            },
        }
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong bearer token",
        )
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_argument", message)
    }
}

pub fn status_for(code: &str) -> StatusCode {
    match code {
        "not_found" | "not_listening" => StatusCode::NOT_FOUND,
        "already_exists" | "conflict" | "not_running" | "unsupported" => StatusCode::CONFLICT,
        "permission_denied" => StatusCode::FORBIDDEN,
        "no_space" => StatusCode::INSUFFICIENT_STORAGE,
        "too_large" => StatusCode::PAYLOAD_TOO_LARGE,
        "invalid_argument" | "path_escape" => StatusCode::BAD_REQUEST,
        "unauthorized" => StatusCode::UNAUTHORIZED,
        "backend_unavailable" => StatusCode::SERVICE_UNAVAILABLE,
        "guest_unreachable" | "guest_error" | "backend_error" | "backup_store"
        | "backup_denied" => StatusCode::BAD_GATEWAY,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<EngineError> for HttpError {
    fn from(e: EngineError) -> Self {
        let code = e.code();
        let message = match &e {
            // Guest errors already name the path and what went wrong.
            EngineError::Guest {
                source: kraal_sandbox::GuestClientError::Guest(g),
                ..
            } => g.message.clone(),
            EngineError::Store(_) => {
                tracing::error!("store: {}", chain(&e));
                "internal error; see the daemon log".to_owned()
            }
            _ => chain(&e),
        };
        HttpError::new(status_for(code), code, message)
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}
