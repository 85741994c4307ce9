//! Access tokens: created, listed and revoked over the local API (the Unix socket is
//! owner-only, so whoever runs `kraal token create` already controls the daemon).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use kraal_api::*;
use rand::RngCore;

use crate::AppState;
use crate::error::HttpError;

fn store_err(e: kraal_store::StoreError) -> HttpError {
    match e {
        kraal_store::StoreError::TokenNameTaken { name } => HttpError::new(
            StatusCode::CONFLICT,
            "already_exists",
            format!("a token named {name} already exists"),
        ),
        e => kraal_engine::EngineError::from(e).into(),
    }
}

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

#[utoipa::path(post, path = "/v1/tokens", request_body = CreateToken,
    responses((status = 201, body = NewToken), (status = 400, body = ApiError), (status = 409, body = ApiError)))]
pub async fn create_token(
    State(s): State<AppState>,
    actor: Option<axum::Extension<crate::security::Actor>>,
    body: Result<Json<CreateToken>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<NewToken>), HttpError> {
    let Json(req) = body.map_err(|e| HttpError::bad_request(e.body_text()))?;
    let name = req.name.trim();
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !valid {
        return Err(HttpError::bad_request(format!(
            "token name {:?} is invalid: use 1 to 64 letters, digits, '-', '_' or '.'",
            req.name
        )));
    }
    let id = format!("tk-{}", random_hex(5));
    let token = format!("kraal_{}", random_hex(32));
    s.engine
        .store()
        .insert_token(&id, name, &token)
        .map_err(store_err)?;
    tracing::info!(token = %id, name, "access token created");
    crate::security::audit(
        &s,
        &crate::security::actor_of(actor),
        "token.create",
        &id,
        name,
    );
    Ok((
        StatusCode::CREATED,
        Json(NewToken {
            id,
            name: name.to_owned(),
            token,
        }),
    ))
}

#[utoipa::path(get, path = "/v1/tokens", responses((status = 200, body = TokenList)))]
pub async fn list_tokens(State(s): State<AppState>) -> Result<Json<TokenList>, HttpError> {
    let tokens = s
        .engine
        .store()
        .tokens()
        .map_err(store_err)?
        .into_iter()
        .map(|t| Token {
            id: t.id,
            name: t.name,
            created_at: t.created_at,
            last_used_at: t.last_used_at,
            revoked_at: t.revoked_at,
        })
        .collect();
    Ok(Json(TokenList { tokens }))
}

#[utoipa::path(delete, path = "/v1/tokens/{token}", params(("token" = String, Path, description = "Token id or name")),
    responses((status = 204), (status = 404, body = ApiError)))]
pub async fn revoke_token(
    State(s): State<AppState>,
    actor: Option<axum::Extension<crate::security::Actor>>,
    Path(token): Path<String>,
) -> Result<StatusCode, HttpError> {
    if s.engine.store().revoke_token(&token).map_err(store_err)? {
        tracing::info!(token = %token, "access token revoked");
        crate::security::audit(
            &s,
            &crate::security::actor_of(actor),
            "token.revoke",
            &token,
            "",
        );
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(HttpError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no live token {token}"),
        ))
    }
}
