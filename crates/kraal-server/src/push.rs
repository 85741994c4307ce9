//! Web Push for the daemon: its VAPID identity and dispatcher, the subscription routes
//! (`/v1/push/…` for API clients; the web UI registers through the same functions with
//! its login), and the lock-screen actions: `POST /act/{session}/{request}/{approve|deny}?c=…`
//! answers one approval request with a single-use, short-lived capability that came in
//! the notification itself, no login needed (a phone's lock screen has no cookie).

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use kraal_api::{
    CreatePushSubscription, NotificationKind, PushKey, PushRules, PushSubscription,
    PushSubscriptionList,
};
use kraal_push::{Dispatcher, DispatcherConfig, Outcome, Sender, SubscriptionKeys, VapidKey};
use kraal_store::{ActionUse, PushSubscriptionRecord, Store};
use serde::Deserialize;

use crate::AppState;
use crate::error::HttpError;
use crate::security::{Actor, actor_of, audit};

/// How the daemon pushes.
#[derive(Debug, Clone)]
pub struct PushConfig {
    pub vapid: VapidKey,
    /// Contact for push services (`mailto:` or `https:`), in every VAPID token.
    pub subject: String,
    /// How long a notification's Approve / Deny buttons work.
    pub action_ttl: Duration,
}

/// The daemon's push machinery, shared by the routes and the notifier.
pub struct Push {
    pub config: PushConfig,
    pub(crate) dispatcher: Dispatcher<String>,
}

impl Push {
    /// Starts the dispatcher; subscriptions a push service says are gone are deleted.
    pub fn start(store: Store, config: PushConfig) -> Result<Arc<Push>, kraal_push::PushError> {
        let sender = Sender::new(
            config.vapid.clone(),
            &config.subject,
            Duration::from_secs(10),
        )?;
        let dispatcher = Dispatcher::start(
            sender,
            DispatcherConfig::default(),
            move |o: Outcome<String>| {
                let store = store.clone();
                // SQLite writes stay off the dispatcher's tasks.
                tokio::task::spawn_blocking(move || match o {
                    Outcome::Delivered { key } => {
                        let _ = store.push_delivered(&key, None);
                    }
                    Outcome::Gone { key } => {
                        tracing::info!(subscription = %key, "push service says the subscription is gone; removing it");
                        let _ = store.delete_push_subscription(&key);
                    }
                    Outcome::Failed { key, reason } => {
                        tracing::warn!(subscription = %key, "push delivery failed: {reason}");
                        let _ = store.push_delivered(&key, Some(&reason));
                    }
                });
            },
        );
        Ok(Arc::new(Push { config, dispatcher }))
    }

    pub fn stats(&self) -> &kraal_push::Stats {
        self.dispatcher.stats()
    }
}

fn push_of(s: &AppState) -> Result<&Arc<Push>, HttpError> {
    s.push.as_ref().ok_or_else(|| {
        HttpError::new(
            StatusCode::CONFLICT,
            "unsupported",
            "this daemon does not send push notifications",
        )
    })
}

fn store_err(e: kraal_store::StoreError) -> HttpError {
    kraal_engine::EngineError::from(e).into()
}

/// The kinds a subscription record lists.
pub(crate) fn kinds_of(r: &PushSubscriptionRecord) -> Vec<NotificationKind> {
    r.kinds
        .iter()
        .filter_map(|k| NotificationKind::parse(k))
        .collect()
}

/// Workspace names or ids → ids; an unknown one is an error naming it.
fn workspace_ids(s: &AppState, refs: &[String]) -> Result<Vec<String>, HttpError> {
    refs.iter()
        .map(|r| Ok(s.engine.resolve(r)?.id.to_string()))
        .collect()
}

pub(crate) fn to_api(s: &AppState, r: &PushSubscriptionRecord) -> PushSubscription {
    let names: Vec<String> = r
        .workspaces
        .iter()
        .map(|id| {
            s.engine
                .resolve(id)
                .map(|w| w.name.to_string())
                .unwrap_or_else(|_| id.clone())
        })
        .collect();
    let token = r.token_id.as_ref().map(|t| {
        s.engine
            .store()
            .tokens()
            .ok()
            .and_then(|all| all.into_iter().find(|x| &x.id == t).map(|x| x.name))
            .unwrap_or_else(|| t.clone())
    });
    PushSubscription {
        id: r.id.clone(),
        label: r.label.clone(),
        service: kraal_push::endpoint_origin(&r.endpoint).unwrap_or_default(),
        token,
        kinds: kinds_of(r),
        workspaces: names,
        created_at: r.created_at.clone(),
        last_sent_at: r.last_sent_at.clone(),
        last_error: r.last_error.clone(),
    }
}

/// Validates and records a subscription for `token_id` (`None`: the local API).
pub(crate) fn subscribe(
    s: &AppState,
    req: CreatePushSubscription,
    token_id: Option<String>,
    default_origin: Option<String>,
) -> Result<PushSubscriptionRecord, HttpError> {
    push_of(s)?;
    kraal_push::endpoint_origin(&req.endpoint)
        .map_err(|e| HttpError::bad_request(e.to_string()))?;
    SubscriptionKeys::from_b64(&req.keys.p256dh, &req.keys.auth)
        .map_err(|e| HttpError::bad_request(e.to_string()))?;
    let origin = match req.origin.or(default_origin).or_else(|| s.web_url.clone()) {
        Some(o) => {
            let u = o.trim_end_matches('/');
            if !(u.starts_with("http://") || u.starts_with("https://")) || u.len() > 300 {
                return Err(HttpError::bad_request(format!(
                    "origin {o:?} is not an http(s) origin"
                )));
            }
            u.to_owned()
        }
        None => {
            return Err(HttpError::bad_request(
                "give the web UI origin the notifications should link to (`origin`)",
            ));
        }
    };
    let label = req
        .label
        .map(|l| l.trim().chars().take(80).collect::<String>())
        .filter(|l| !l.is_empty())
        .unwrap_or_else(|| "browser".into());
    let kinds = req.kinds.unwrap_or_else(|| NotificationKind::ALL.to_vec());
    let rec = PushSubscriptionRecord {
        id: format!("ps-{}", &crate::web::random_token()[..12]),
        token_id,
        endpoint: req.endpoint,
        p256dh: req.keys.p256dh,
        auth: req.keys.auth,
        origin,
        label,
        kinds: kinds.iter().map(|k| k.as_str().to_owned()).collect(),
        workspaces: workspace_ids(s, &req.workspaces)?,
        created_at: kraal_store::now(),
        last_sent_at: None,
        last_error: None,
    };
    s.engine
        .store()
        .upsert_push_subscription(&rec)
        .map_err(store_err)
}

pub(crate) fn set_rules(s: &AppState, id: &str, rules: PushRules) -> Result<(), HttpError> {
    let kinds: Vec<String> = rules.kinds.iter().map(|k| k.as_str().to_owned()).collect();
    let ws = workspace_ids(s, &rules.workspaces)?;
    if !s
        .engine
        .store()
        .set_push_rules(id, &kinds, &ws)
        .map_err(store_err)?
    {
        return Err(no_subscription(id));
    }
    Ok(())
}

fn no_subscription(id: &str) -> HttpError {
    HttpError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no push subscription {id}"),
    )
}

/// Sends a test notification to one subscription.
pub(crate) fn send_test(s: &AppState, id: &str) -> Result<(), HttpError> {
    let push = push_of(s)?;
    let r = s
        .engine
        .store()
        .push_subscription(id)
        .map_err(store_err)?
        .ok_or_else(|| no_subscription(id))?;
    let payload = serde_json::json!({
        "kind": "test",
        "title": "kraal",
        "body": format!("Notifications reach {}.", r.label),
        "tag": "kraal-test",
        "url": "/",
    });
    crate::notifier::enqueue(push, &r, payload, kraal_push::Urgency::Normal, None);
    Ok(())
}

#[utoipa::path(get, path = "/v1/push/key", responses((status = 200, body = PushKey), (status = 409, body = kraal_api::ApiError)))]
pub async fn key(State(s): State<AppState>) -> Result<Json<PushKey>, HttpError> {
    Ok(Json(PushKey {
        key: push_of(&s)?.config.vapid.public_key(),
    }))
}

#[utoipa::path(get, path = "/v1/push/subscriptions", responses((status = 200, body = PushSubscriptionList)))]
pub async fn list(State(s): State<AppState>) -> Result<Json<PushSubscriptionList>, HttpError> {
    let subs = s.engine.store().push_subscriptions().map_err(store_err)?;
    Ok(Json(PushSubscriptionList {
        subscriptions: subs.iter().map(|r| to_api(&s, r)).collect(),
    }))
}

#[utoipa::path(post, path = "/v1/push/subscriptions", request_body = CreatePushSubscription,
    responses((status = 201, body = PushSubscription), (status = 400, body = kraal_api::ApiError)))]
pub async fn create(
    State(s): State<AppState>,
    actor: Option<axum::Extension<Actor>>,
    body: Result<Json<CreatePushSubscription>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<PushSubscription>), HttpError> {
    let Json(req) = body.map_err(|e| HttpError::bad_request(e.body_text()))?;
    let r = subscribe(&s, req, None, None)?;
    audit(&s, &actor_of(actor), "push.subscribe", &r.id, &r.label);
    Ok((StatusCode::CREATED, Json(to_api(&s, &r))))
}

#[utoipa::path(put, path = "/v1/push/subscriptions/{id}", request_body = PushRules, params(("id" = String, Path)),
    responses((status = 200, body = PushSubscription), (status = 400, body = kraal_api::ApiError), (status = 404, body = kraal_api::ApiError)))]
pub async fn update(
    State(s): State<AppState>,
    Path(id): Path<String>,
    body: Result<Json<PushRules>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<PushSubscription>, HttpError> {
    let Json(rules) = body.map_err(|e| HttpError::bad_request(e.body_text()))?;
    set_rules(&s, &id, rules)?;
    let r = s
        .engine
        .store()
        .push_subscription(&id)
        .map_err(store_err)?
        .ok_or_else(|| no_subscription(&id))?;
    Ok(Json(to_api(&s, &r)))
}

#[utoipa::path(delete, path = "/v1/push/subscriptions/{id}", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = kraal_api::ApiError)))]
pub async fn remove(
    State(s): State<AppState>,
    actor: Option<axum::Extension<Actor>>,
    Path(id): Path<String>,
) -> Result<StatusCode, HttpError> {
    if !s
        .engine
        .store()
        .delete_push_subscription(&id)
        .map_err(store_err)?
    {
        return Err(no_subscription(&id));
    }
    audit(&s, &actor_of(actor), "push.unsubscribe", &id, "");
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/push/subscriptions/{id}/test", params(("id" = String, Path)),
    responses((status = 202), (status = 404, body = kraal_api::ApiError)))]
pub async fn test(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, HttpError> {
    send_test(&s, &id)?;
    Ok(StatusCode::ACCEPTED)
}

#[derive(Debug, Deserialize)]
pub struct ActionQuery {
    /// The capability from the notification.
    #[serde(default)]
    c: String,
}

/// `POST /act/{session}/{request}/{decision}?c=CAP`: a notification's Approve or Deny.
pub async fn act(
    State(s): State<AppState>,
    Path((session, request, decision)): Path<(String, String, String)>,
    Query(q): Query<ActionQuery>,
) -> Result<Json<serde_json::Value>, HttpError> {
    let allow = match decision.as_str() {
        "approve" => true,
        "deny" => false,
        other => {
            return Err(HttpError::bad_request(format!(
                "{other:?} is neither approve nor deny"
            )));
        }
    };
    let refused =
        |why: &str| HttpError::new(StatusCode::FORBIDDEN, "permission_denied", why.to_owned());
    if q.c.len() != 64 || !q.c.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(refused("this action link is not valid"));
    }
    let store = s.engine.store().clone();
    let (cap, sess, req) = (q.c.clone(), session.clone(), request.clone());
    let used = tokio::task::spawn_blocking(move || store.use_push_action(&cap, &sess, &req))
        .await
        .map_err(|e| HttpError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .map_err(store_err)?;
    let actor = format!("push:{session}");
    match used {
        ActionUse::Granted => {}
        ActionUse::Unknown => {
            return Err(refused("this action link is not valid for this request"));
        }
        ActionUse::Expired => {
            return Err(refused(
                "this action link has expired; answer the request in the web UI",
            ));
        }
        ActionUse::Used => return Err(refused("this request was already answered")),
    }
    let input = kraal_core::SessionInput::Approval {
        request_id: request.clone(),
        allow,
        message: (!allow).then(|| "denied from a notification".to_owned()),
    };
    s.engine.send_input(&session, input).await?;
    audit(
        &s,
        &actor,
        if allow { "push.approve" } else { "push.deny" },
        &session,
        &format!("request {request}"),
    );
    Ok(Json(serde_json::json!({"ok": true, "allow": allow})))
}
