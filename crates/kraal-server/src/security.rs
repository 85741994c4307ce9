//! Security routes: a workspace's egress allowlist and connection log, secrets (values go
//! in, never out), and the audit log; plus [`Actor`], who a request comes from, and
//! [`audit`], which every security-relevant handler calls.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use kraal_api::*;

use crate::AppState;
use crate::error::HttpError;

/// Who sent a request: `local` (the owner-only Unix socket), `api-token` (the TCP
/// listener's bearer token) or `web:<token name>` (a web UI login).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor(pub String);

/// Appends to the audit log; a failure to record is logged, never fatal to the action.
pub fn audit(s: &AppState, actor: &str, action: &str, target: &str, detail: &str) {
    tracing::info!(target: "kraal::audit", actor, action, target, detail, "audit");
    if let Err(e) = s.engine.store().audit(actor, action, target, detail) {
        tracing::warn!("cannot write the audit log: {e}");
    }
}

/// The actor of a request, `local` when no middleware said otherwise.
pub fn actor_of(ext: Option<axum::Extension<Actor>>) -> String {
    ext.map(|e| e.0.0).unwrap_or_else(|| "local".into())
}

fn limit(q: &LogQuery) -> u32 {
    q.limit.unwrap_or(100).clamp(1, 10_000)
}

fn parse_rules(rules: &[String]) -> Result<Vec<kraal_core::EgressRule>, HttpError> {
    kraal_core::parse_rules(rules).map_err(|e| HttpError::bad_request(e.to_string()))
}

#[utoipa::path(get, path = "/v1/workspaces/{ws}/egress", params(("ws" = String, Path, description = "Workspace name or id")),
    responses((status = 200, body = EgressPolicy), (status = 404, body = ApiError)))]
pub async fn get_egress(
    State(s): State<AppState>,
    Path(ws): Path<String>,
) -> Result<Json<EgressPolicy>, HttpError> {
    let r = s.engine.resolve(&ws)?;
    Ok(Json(EgressPolicy {
        rules: r.egress.iter().map(ToString::to_string).collect(),
    }))
}

#[utoipa::path(put, path = "/v1/workspaces/{ws}/egress", request_body = EgressPolicy,
    params(("ws" = String, Path, description = "Workspace name or id")),
    responses((status = 200, body = EgressPolicy), (status = 400, body = ApiError), (status = 404, body = ApiError)))]
pub async fn put_egress(
    State(s): State<AppState>,
    actor: Option<axum::Extension<Actor>>,
    Path(ws): Path<String>,
    body: Result<Json<EgressPolicy>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<EgressPolicy>, HttpError> {
    let Json(req) = body.map_err(|e| HttpError::bad_request(e.body_text()))?;
    let rules = parse_rules(&req.rules)?;
    let r = s.engine.set_egress(&ws, rules)?;
    let rules: Vec<String> = r.egress.iter().map(ToString::to_string).collect();
    audit(
        &s,
        &actor_of(actor),
        "egress.set",
        r.name.as_str(),
        &rules.join(" "),
    );
    Ok(Json(EgressPolicy { rules }))
}

#[utoipa::path(get, path = "/v1/workspaces/{ws}/egress/log",
    params(("ws" = String, Path, description = "Workspace name or id"), ("limit" = Option<u32>, Query, description = "Newest entries (default 100)")),
    responses((status = 200, body = Vec<EgressLogEntry>), (status = 404, body = ApiError)))]
pub async fn egress_log(
    State(s): State<AppState>,
    Path(ws): Path<String>,
    Query(q): Query<LogQuery>,
) -> Result<Json<Vec<EgressLogEntry>>, HttpError> {
    let rows = s.engine.egress_log(&ws, limit(&q))?;
    Ok(Json(
        rows.into_iter()
            .map(|r| EgressLogEntry {
                at: r.at,
                method: r.method,
                host: r.host,
                port: r.port,
                addr: r.addr,
                allowed: r.allowed,
                reason: r.reason,
                bytes_up: r.bytes_up,
                bytes_down: r.bytes_down,
                ms: r.ms,
            })
            .collect(),
    ))
}

fn secret_info(i: kraal_store::SecretInfo) -> SecretInfo {
    SecretInfo {
        name: i.name,
        source: i.source,
        created_at: i.created_at,
        updated_at: i.updated_at,
    }
}

#[utoipa::path(get, path = "/v1/secrets", responses((status = 200, body = Vec<SecretInfo>)))]
pub async fn list_secrets(State(s): State<AppState>) -> Result<Json<Vec<SecretInfo>>, HttpError> {
    let l = s
        .engine
        .store()
        .list_secrets()
        .map_err(kraal_engine::EngineError::from)?;
    Ok(Json(l.into_iter().map(secret_info).collect()))
}

/// Largest secret value.
const MAX_SECRET: usize = 64 * 1024;

#[utoipa::path(put, path = "/v1/secrets/{name}", request_body = PutSecret,
    params(("name" = String, Path, description = "Secret name")),
    responses((status = 200, body = SecretInfo), (status = 400, body = ApiError)))]
pub async fn put_secret(
    State(s): State<AppState>,
    actor: Option<axum::Extension<Actor>>,
    Path(name): Path<String>,
    body: Result<Json<PutSecret>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<SecretInfo>, HttpError> {
    let Json(req) = body.map_err(|e| HttpError::bad_request(e.body_text()))?;
    if !kraal_core::is_secret_name(&name) {
        return Err(HttpError::bad_request(format!(
            "secret name {name:?} is invalid: use 1 to 64 of a-z, 0-9, '.', '_' and '-', starting with a letter or digit"
        )));
    }
    // A trailing newline (from `echo` or a file) is never part of a token.
    let value = req.value.trim_end_matches(['\n', '\r']);
    if value.is_empty() {
        return Err(HttpError::bad_request(format!(
            "secret {name}: the value is empty"
        )));
    }
    if value.len() > MAX_SECRET {
        return Err(HttpError::bad_request(format!(
            "secret {name}: the value is over {MAX_SECRET} bytes"
        )));
    }
    let source = req.source.unwrap_or_else(|| "api".into());
    if source.len() > 64 || source.chars().any(char::is_control) {
        return Err(HttpError::bad_request(
            "the secret's source label is invalid",
        ));
    }
    let store = s.engine.store();
    store
        .put_secret(&s.secret_key, &name, value.as_bytes(), &source)
        .map_err(kraal_engine::EngineError::from)?;
    audit(&s, &actor_of(actor), "secret.set", &name, &source);
    let info = store
        .list_secrets()
        .map_err(kraal_engine::EngineError::from)?
        .into_iter()
        .find(|i| i.name == name)
        .ok_or_else(|| {
            HttpError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the secret vanished",
            )
        })?;
    Ok(Json(secret_info(info)))
}

#[utoipa::path(delete, path = "/v1/secrets/{name}", params(("name" = String, Path, description = "Secret name")),
    responses((status = 204), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub async fn delete_secret(
    State(s): State<AppState>,
    actor: Option<axum::Extension<Actor>>,
    Path(name): Path<String>,
) -> Result<StatusCode, HttpError> {
    let users: Vec<String> = s
        .engine
        .list()?
        .into_iter()
        .filter(|w| w.git.iter().any(|g| g.secret == name))
        .map(|w| w.name.to_string())
        .collect();
    if !users.is_empty() {
        return Err(HttpError::new(
            StatusCode::CONFLICT,
            "in_use",
            format!(
                "secret {name} is the git credential of workspace(s) {}",
                users.join(", ")
            ),
        ));
    }
    let existed = s
        .engine
        .store()
        .delete_secret(&name)
        .map_err(kraal_engine::EngineError::from)?;
    if !existed {
        return Err(HttpError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no secret named {name}"),
        ));
    }
    audit(&s, &actor_of(actor), "secret.delete", &name, "");
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/audit",
    params(("limit" = Option<u32>, Query, description = "Newest entries (default 100)"), ("action" = Option<String>, Query, description = "Only this action")),
    responses((status = 200, body = Vec<AuditEntry>)))]
pub async fn audit_log(
    State(s): State<AppState>,
    Query(q): Query<LogQuery>,
) -> Result<Json<Vec<AuditEntry>>, HttpError> {
    let rows = s
        .engine
        .store()
        .audit_log(limit(&q), q.action.as_deref())
        .map_err(kraal_engine::EngineError::from)?;
    Ok(Json(
        rows.into_iter()
            .map(|r| AuditEntry {
                id: r.id,
                at: r.at,
                actor: r.actor,
                action: r.action,
                target: r.target,
                detail: r.detail,
            })
            .collect(),
    ))
}

fn token_ok(t: &str) -> bool {
    !t.is_empty() && t.len() <= 8192 && !t.chars().any(|c| c.is_whitespace() || c.is_control())
}

fn store_err(e: kraal_store::StoreError) -> HttpError {
    kraal_engine::EngineError::from(e).into()
}

#[utoipa::path(put, path = "/v1/logins/claude", request_body = ClaudeLoginRequest,
    responses((status = 200, body = LoginStatus), (status = 400, body = ApiError)))]
pub async fn login_claude(
    State(s): State<AppState>,
    actor: Option<axum::Extension<Actor>>,
    body: Result<Json<ClaudeLoginRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<LoginStatus>, HttpError> {
    let Json(req) = body.map_err(|e| HttpError::bad_request(e.body_text()))?;
    let store = s.engine.store();
    let method = match (
        &req.token,
        &req.access_token,
        &req.refresh_token,
        req.expires_at,
    ) {
        (Some(t), None, None, None) => {
            let t = t.trim();
            if !token_ok(t) {
                return Err(HttpError::bad_request("the token is empty or malformed"));
            }
            store
                .put_secret(
                    &s.secret_key,
                    kraal_store::CLAUDE_TOKEN_SECRET,
                    t.as_bytes(),
                    "login:claude",
                )
                .map_err(store_err)?;
            "token"
        }
        (None, Some(a), Some(r), Some(exp)) => {
            if !token_ok(a) || !token_ok(r) {
                return Err(HttpError::bad_request(
                    "the access or refresh token is empty or malformed",
                ));
            }
            store
                .put_claude_login(
                    &s.secret_key,
                    &kraal_store::ClaudeLogin {
                        access_token: a.clone(),
                        refresh_token: r.clone(),
                        expires_at: exp,
                    },
                    "login:claude",
                )
                .map_err(store_err)?;
            "subscription"
        }
        _ => {
            return Err(HttpError::bad_request(
                "give either token (from `claude setup-token`) or all of access_token, refresh_token and expires_at",
            ));
        }
    };
    audit(&s, &actor_of(actor), "login.agent", "claude", method);
    login_of(s, "claude").await
}

#[utoipa::path(put, path = "/v1/logins/codex", request_body = CodexLoginRequest,
    responses((status = 200, body = LoginStatus), (status = 400, body = ApiError)))]
pub async fn login_codex(
    State(s): State<AppState>,
    actor: Option<axum::Extension<Actor>>,
    body: Result<Json<CodexLoginRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<LoginStatus>, HttpError> {
    let Json(req) = body.map_err(|e| HttpError::bad_request(e.body_text()))?;
    let k = req.api_key.trim();
    if !token_ok(k) {
        return Err(HttpError::bad_request("the API key is empty or malformed"));
    }
    s.engine
        .store()
        .put_secret(
            &s.secret_key,
            kraal_store::OPENAI_KEY_SECRET,
            k.as_bytes(),
            "login:codex",
        )
        .map_err(store_err)?;
    audit(&s, &actor_of(actor), "login.agent", "codex", "api-key");
    login_of(s, "codex").await
}

/// The login status of one agent (after a change).
async fn login_of(s: AppState, agent: &str) -> Result<Json<LoginStatus>, HttpError> {
    logins(State(s))
        .await?
        .0
        .into_iter()
        .find(|l| l.agent == agent)
        .map(Json)
        .ok_or_else(|| {
            HttpError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("no login status for {agent}"),
            )
        })
}

#[utoipa::path(get, path = "/v1/logins", responses((status = 200, body = Vec<LoginStatus>)))]
pub async fn logins(State(s): State<AppState>) -> Result<Json<Vec<LoginStatus>>, HttpError> {
    let store = s.engine.store();
    let infos = store.list_secrets().map_err(store_err)?;
    let updated = |name: &str| {
        infos
            .iter()
            .find(|i| i.name == name)
            .map(|i| i.updated_at.clone())
    };
    let claude = if let Some(l) = store.claude_login(&s.secret_key) {
        LoginStatus {
            agent: "claude".into(),
            method: "subscription".into(),
            expires_at: Some(l.expires_at),
            updated_at: updated(kraal_store::CLAUDE_LOGIN_SECRET),
        }
    } else if updated(kraal_store::CLAUDE_TOKEN_SECRET).is_some() {
        LoginStatus {
            agent: "claude".into(),
            method: "token".into(),
            expires_at: None,
            updated_at: updated(kraal_store::CLAUDE_TOKEN_SECRET),
        }
    } else if updated(kraal_store::ANTHROPIC_KEY_SECRET).is_some() {
        LoginStatus {
            agent: "claude".into(),
            method: "api-key".into(),
            expires_at: None,
            updated_at: updated(kraal_store::ANTHROPIC_KEY_SECRET),
        }
    } else {
        LoginStatus {
            agent: "claude".into(),
            method: "none".into(),
            expires_at: None,
            updated_at: None,
        }
    };
    let codex = LoginStatus {
        agent: "codex".into(),
        method: if updated(kraal_store::OPENAI_KEY_SECRET).is_some() {
            "api-key"
        } else {
            "none"
        }
        .into(),
        expires_at: None,
        updated_at: updated(kraal_store::OPENAI_KEY_SECRET),
    };
    Ok(Json(vec![claude, codex]))
}
