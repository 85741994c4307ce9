//! The notifications page: "notify this device" (the browser subscribes with the daemon's
//! VAPID key in `app.js` and registers here under the login's token), and per device
//! which kinds of notification and which workspaces it wants, a test, and removal.

use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Json};
use kraal_api::{CreatePushSubscription, NotificationKind, PushRules};
use maud::html;
use serde::Deserialize;

use super::WebState;
use super::auth::Auth;
use super::pages::{Page, error_page, layout, short_time};
use crate::error::HttpError;
use crate::security::audit;

/// The origin the browser used (for links in its notifications).
fn request_origin(headers: &HeaderMap) -> Option<String> {
    let host = headers.get(axum::http::header::HOST)?.to_str().ok()?;
    let https = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"));
    Some(format!("{}://{host}", if https { "https" } else { "http" }))
}

pub async fn page(
    State(w): State<WebState>,
    Extension(auth): Extension<Auth>,
) -> Result<Page, Page> {
    let store = w.app.engine.store();
    let subs: Vec<_> = store
        .push_subscriptions()
        .map_err(|e| error_page(&auth, kraal_engine::EngineError::from(e).into()))?
        .into_iter()
        .filter(|s| s.token_id.as_deref() == Some(auth.token_id.as_str()))
        .collect();
    let workspaces = w.app.engine.list().unwrap_or_default();
    let key = w.app.push.as_ref().map(|p| p.config.vapid.public_key());
    Ok(layout(
        "Notifications",
        &auth,
        html! {
            h2 { "Notifications" }
            @match &key {
                None => p.muted { "This daemon does not send push notifications." },
                Some(k) => {
                    p { "Get a notification on this device — also with the browser closed and the phone locked — when an agent finishes a turn, fails, needs an approval (answer it right from the notification), or a connection is refused." }
                    p.muted #push-status { "Checking this device…" }
                    button #push-toggle type="button" data-key=(k) disabled { "Notify this device" }
                }
            }
            h3 { "Devices of this login" }
            @if subs.is_empty() { p.muted { "None yet." } }
            @for s in &subs {
                article.device data-subscription=(s.id) {
                    header {
                        strong { (s.label) }
                        span.muted { " · " (kraal_push::endpoint_origin(&s.endpoint).unwrap_or_default()) }
                        span.this-device hidden { " " span.badge data-state="running" { "this device" } }
                    }
                    p.muted {
                        "Added " (short_time(&s.created_at))
                        @if let Some(t) = &s.last_sent_at { " · last notified " (short_time(t)) }
                        @if let Some(e) = &s.last_error { br; span.error { "Last delivery failed: " (e) } }
                    }
                    form method="post" action={ "/push/" (s.id) "/rules" } {
                        input type="hidden" name="csrf" value=(auth.csrf);
                        fieldset {
                            legend { "Notify about" }
                            @for k in NotificationKind::ALL {
                                label { input type="checkbox" name="kind" value=(k.as_str()) checked[s.kinds.iter().any(|x| x == k.as_str())]; " " (k.label()) }
                            }
                        }
                        fieldset {
                            legend { "In workspaces (none ticked: all)" }
                            @for ws in &workspaces {
                                label { input type="checkbox" name="workspace" value=(ws.id) checked[s.workspaces.iter().any(|x| x == ws.id.as_str())]; " " (ws.name) }
                            }
                        }
                        div.actions {
                            button.small type="submit" { "Save" }
                        }
                    }
                    div.actions {
                        form.inline method="post" action={ "/push/" (s.id) "/test" } {
                            input type="hidden" name="csrf" value=(auth.csrf);
                            button.secondary.outline.small type="submit" { "Send a test" }
                        }
                        form.inline method="post" action={ "/push/" (s.id) "/delete" } {
                            input type="hidden" name="csrf" value=(auth.csrf);
                            button.secondary.outline.small type="submit" { "Remove" }
                        }
                    }
                }
            }
        },
    ))
}

/// `POST /push/subscribe` (JSON, from `app.js`): records this browser's subscription.
pub async fn subscribe(
    State(w): State<WebState>,
    Extension(auth): Extension<Auth>,
    headers: HeaderMap,
    body: Result<Json<CreatePushSubscription>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<kraal_api::PushSubscription>, HttpError> {
    let Json(mut req) = body.map_err(|e| HttpError::bad_request(e.body_text()))?;
    // Links in notifications lead back where the browser subscribed from.
    req.origin = None;
    let r = crate::push::subscribe(
        &w.app,
        req,
        Some(auth.token_id.clone()),
        request_origin(&headers),
    )?;
    audit(
        &w.app,
        &format!("web:{}", auth.token_name),
        "push.subscribe",
        &r.id,
        &r.label,
    );
    Ok(Json(crate::push::to_api(&w.app, &r)))
}

#[derive(Deserialize)]
pub struct Unsubscribe {
    endpoint: String,
}

/// `POST /push/unsubscribe` (JSON): the browser turned notifications off.
pub async fn unsubscribe(
    State(w): State<WebState>,
    Extension(auth): Extension<Auth>,
    Json(u): Json<Unsubscribe>,
) -> StatusCode {
    let store = w.app.engine.store();
    if let Ok(Some(s)) = store.push_subscription_by_endpoint(&u.endpoint)
        && s.token_id.as_deref() == Some(auth.token_id.as_str())
    {
        let _ = store.delete_push_subscription(&s.id);
    }
    StatusCode::NO_CONTENT
}

/// The subscription `id`, if it belongs to this login.
fn own(
    w: &WebState,
    auth: &Auth,
    id: &str,
) -> Result<kraal_store::PushSubscriptionRecord, HttpError> {
    w.app
        .engine
        .store()
        .push_subscription(id)
        .ok()
        .flatten()
        .filter(|s| s.token_id.as_deref() == Some(auth.token_id.as_str()))
        .ok_or_else(|| {
            HttpError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no device {id} of this login"),
            )
        })
}

pub async fn rules(
    State(w): State<WebState>,
    Extension(auth): Extension<Auth>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let r = (|| {
        own(&w, &auth, &id)?;
        let mut kinds = Vec::new();
        let mut workspaces = Vec::new();
        for (k, v) in form_urlencoded::parse(&body) {
            match k.as_ref() {
                "kind" => kinds.push(NotificationKind::parse(&v).ok_or_else(|| {
                    HttpError::bad_request(format!("unknown notification kind {v:?}"))
                })?),
                "workspace" => workspaces.push(v.into_owned()),
                _ => {}
            }
        }
        crate::push::set_rules(&w.app, &id, PushRules { kinds, workspaces })
    })();
    match r {
        Ok(()) => Redirect::to("/settings/notifications").into_response(),
        Err(e) => error_page(&auth, e).into_response(),
    }
}

#[derive(Deserialize)]
pub struct Empty {}

pub async fn test(
    State(w): State<WebState>,
    Extension(auth): Extension<Auth>,
    Path(id): Path<String>,
    Form(_): Form<Empty>,
) -> Response {
    match own(&w, &auth, &id).and_then(|_| crate::push::send_test(&w.app, &id)) {
        Ok(()) => Redirect::to("/settings/notifications").into_response(),
        Err(e) => error_page(&auth, e).into_response(),
    }
}

pub async fn delete(
    State(w): State<WebState>,
    Extension(auth): Extension<Auth>,
    Path(id): Path<String>,
) -> Response {
    let r = own(&w, &auth, &id).map(|_| {
        let _ = w.app.engine.store().delete_push_subscription(&id);
    });
    match r {
        Ok(()) => Redirect::to("/settings/notifications").into_response(),
        Err(e) => error_page(&auth, e).into_response(),
    }
}
