//! The web UI: server-rendered pages (maud) made live with a little JavaScript and htmx,
//! for supervising agents from a phone. Everything but the login page and the static
//! assets needs a login (see [`auth`]); every asset is embedded in the binary.

mod actions;
mod assets;
mod auth;
mod budget;
mod composer;
mod events;
mod notifications;
mod pages;
mod ports;
mod review;
mod tasks;
mod terminal;

use std::sync::Arc;

use axum::Router;
use axum::extract::FromRef;
use axum::middleware;
use axum::routing::{get, post};

pub use auth::Limiter;
pub(crate) use auth::{Auth, random_token, session_of, urlencode};
pub(crate) use events::tool_summary;

use crate::AppState;

/// Largest form body accepted (messages to agents, file edits are not uploaded here).
pub const MAX_FORM: usize = 2 * 1024 * 1024;

#[derive(Clone)]
pub struct WebState {
    pub app: AppState,
    pub limiter: Arc<Limiter>,
}

impl FromRef<WebState> for AppState {
    fn from_ref(w: &WebState) -> AppState {
        w.app.clone()
    }
}

/// The web UI router (serve it with `into_make_service_with_connect_info::<SocketAddr>()`
/// so login rate limits see client addresses).
pub fn router(app: AppState) -> Router {
    let state = WebState {
        app,
        limiter: Arc::new(Limiter::default()),
    };
    Router::new()
        .route("/login", get(auth::login_page).post(auth::login))
        .route("/logout", post(auth::logout))
        .route("/static/{file}", get(assets::serve))
        .route("/", get(pages::dashboard))
        .route("/dashboard/workspaces", get(pages::dashboard_table))
        .route("/w/{ws}", get(pages::workspace))
        .route("/w/{ws}/files", get(pages::files))
        .route("/w/{ws}/diff", get(review::diff))
        .route("/w/{ws}/comments", post(review::add))
        .route("/w/{ws}/comments/{id}/resolve", post(review::resolve))
        .route("/w/{ws}/comments/{id}/delete", post(review::delete))
        .route("/w/{ws}/review/send", post(review::send))
        .route("/w/{ws}/ports", get(ports::fragment))
        .route("/w/{ws}/open/{port}", get(crate::preview::open))
        .route(
            "/p/{ws}/{port}",
            axum::routing::any(crate::preview::by_path),
        )
        .route(
            "/p/{ws}/{port}/",
            axum::routing::any(crate::preview::by_path),
        )
        .route(
            "/p/{ws}/{port}/{*rest}",
            axum::routing::any(crate::preview::by_path),
        )
        .route(
            "/act/{session}/{request}/{decision}",
            post(crate::push::act),
        )
        .route("/settings/notifications", get(notifications::page))
        .route("/push/subscribe", post(notifications::subscribe))
        .route("/push/unsubscribe", post(notifications::unsubscribe))
        .route("/push/{id}/rules", post(notifications::rules))
        .route("/push/{id}/test", post(notifications::test))
        .route("/push/{id}/delete", post(notifications::delete))
        .route("/w/{ws}/terminal", get(terminal::page))
        .route("/w/{ws}/exec", get(crate::exec::exec_ws))
        .route("/w/{ws}/up", post(actions::up))
        .route("/w/{ws}/down", post(actions::down))
        .route("/w/{ws}/commit", post(actions::commit))
        .route("/w/{ws}/push", post(actions::push))
        .route("/w/{ws}/sessions", post(actions::new_session))
        .route("/s/{id}", get(pages::session))
        .route("/s/{id}/live", get(events::live))
        .route("/s/{id}/attachment", get(composer::attachment))
        .route(
            "/s/{id}/send",
            post(composer::send).layer(axum::extract::DefaultBodyLimit::max(composer::MAX_UPLOAD)),
        )
        .route("/s/{id}/interrupt", post(actions::interrupt))
        .route("/s/{id}/decide", post(actions::decide))
        .route("/s/{id}/end", post(actions::end))
        .route(
            "/templates",
            get(pages::templates).post(actions::save_template),
        )
        .route("/templates/new", get(pages::template_form))
        .route(
            "/templates/{id}",
            get(pages::template_edit).post(actions::save_template_version),
        )
        .route("/templates/{id}/delete", post(actions::delete_template))
        .route("/templates/{id}/launch", post(actions::launch_template))
        .route("/budget", get(budget::page).post(budget::set))
        .route("/tasks", get(tasks::page).post(tasks::add))
        .route("/tasks/board", get(tasks::fragment))
        .route("/tasks/{id}/compare", get(tasks::compare))
        .route("/tasks/{id}/cancel", post(tasks::cancel))
        .route("/tasks/{id}/retry", post(tasks::retry))
        .route("/tasks/{id}/done", post(tasks::mark_done))
        .route("/tasks/{id}/pick", post(tasks::pick))
        .route("/logs", get(pages::logs))
        .route("/notify", get(events::notify))
        .fallback(pages::not_found)
        .layer(middleware::from_fn_with_state(
            state.app.engine.clone(),
            crate::activity::track,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), auth::require))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_FORM))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            crate::preview::by_host,
        ))
        .with_state(state)
}
