//! State changes from the web UI (every one CSRF-checked by the auth middleware). A plain
//! form post is answered with a redirect; an htmx request with `204` (or the error text,
//! which the page shows as a toast).

use std::time::Duration;

use axum::Extension;
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use kraal_core::{AgentKind, AgentSpec, PermissionMode, Resources, SessionInput, TemplateSpec};
use kraal_engine::NewSession;
use serde::Deserialize;

use super::WebState;
use super::auth::Auth;
use super::pages::error_page;
use crate::error::HttpError;

fn htmx(headers: &HeaderMap) -> bool {
    headers.contains_key("hx-request")
}

/// The answer to an action: back to `to` (or 204 for htmx), or the error.
pub(crate) fn done(headers: &HeaderMap, auth: &Auth, r: Result<String, HttpError>) -> Response {
    match (r, htmx(headers)) {
        (Ok(_), true) => StatusCode::NO_CONTENT.into_response(),
        (Ok(to), false) => Redirect::to(&to).into_response(),
        (Err(e), true) => (e.status, e.body.message).into_response(),
        (Err(e), false) => error_page(auth, e).into_response(),
    }
}

pub async fn up(
    State(w): State<WebState>,
    Extension(auth): Extension<Auth>,
    headers: HeaderMap,
    Path(ws): Path<String>,
) -> Response {
    let r = w
        .app
        .engine
        .up(&ws)
        .map(|_| format!("/w/{ws}"))
        .map_err(Into::into);
    done(&headers, &auth, r)
}

pub async fn down(
    State(w): State<WebState>,
    Extension(auth): Extension<Auth>,
    headers: HeaderMap,
    Path(ws): Path<String>,
) -> Response {
    let r = w
        .app
        .engine
        .down(&ws)
        .map(|_| format!("/w/{ws}"))
        .map_err(Into::into);
    done(&headers, &auth, r)
}

#[derive(Deserialize)]
pub struct CommitForm {
    message: String,
}

/// Runs git in the workspace; a failure carries git's own words.
async fn git(w: &WebState, ws: &str, args: &[&str]) -> Result<String, HttpError> {
    let mut argv = vec!["git", "-C", "/workspace"];
    argv.extend_from_slice(args);
    let c = w
        .app
        .engine
        .capture(ws, &argv, Duration::from_secs(300), 64 * 1024)
        .await?;
    if c.code != 0 {
        let why = format!("{}{}", c.stderr, c.stdout);
        return Err(HttpError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "git_failed",
            format!("git {} failed: {}", args[0], why.trim()),
        ));
    }
    Ok(c.stdout)
}

pub async fn commit(
    State(w): State<WebState>,
    Extension(auth): Extension<Auth>,
    headers: HeaderMap,
    Path(ws): Path<String>,
    Form(f): Form<CommitForm>,
) -> Response {
    let r = async {
        let msg = f.message.trim();
        if msg.is_empty() {
            return Err(HttpError::bad_request("the commit message is empty"));
        }
        git(&w, &ws, &["add", "-A"]).await?;
        // Use the checkout's identity when it has one, kraal's otherwise.
        let named = git(&w, &ws, &["config", "user.email"]).await.is_ok();
        let mut args = vec![];
        if !named {
            args.extend(["-c", "user.name=kraal", "-c", "user.email=kraal@localhost"]);
        }
        args.extend(["commit", "-q", "-m", msg]);
        git(&w, &ws, &args).await?;
        tracing::info!(workspace = %ws, token = %auth.token_name, "web: committed");
        Ok(format!("/w/{ws}"))
    }
    .await;
    done(&headers, &auth, r)
}

pub async fn push(
    State(w): State<WebState>,
    Extension(auth): Extension<Auth>,
    headers: HeaderMap,
    Path(ws): Path<String>,
) -> Response {
    let r = async {
        // A branch without an upstream is pushed to `origin` under its own name and tracks it.
        if git(&w, &ws, &["rev-parse", "--abbrev-ref", "@{upstream}"])
            .await
            .is_ok()
        {
            git(&w, &ws, &["push"]).await?;
        } else {
            if git(&w, &ws, &["remote", "get-url", "origin"])
                .await
                .is_err()
            {
                return Err(HttpError::bad_request(
                    "the checkout has no upstream branch and no remote named origin to push to",
                ));
            }
            git(&w, &ws, &["push", "-u", "origin", "HEAD"]).await?;
        }
        tracing::info!(workspace = %ws, token = %auth.token_name, "web: pushed");
        Ok(format!("/w/{ws}"))
    }
    .await;
    done(&headers, &auth, r)
}

#[derive(Deserialize)]
pub struct NewSessionForm {
    agent: String,
    #[serde(default)]
    model: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    ask: Option<String>,
}

pub async fn new_session(
    State(w): State<WebState>,
    Extension(auth): Extension<Auth>,
    Path(ws): Path<String>,
    Form(f): Form<NewSessionForm>,
) -> Response {
    let r = async {
        let agent =
            AgentKind::parse(&f.agent).map_err(|e| HttpError::bad_request(e.to_string()))?;
        let mut spec = AgentSpec::new(agent);
        spec.model = Some(f.model.trim().to_owned()).filter(|m| !m.is_empty());
        if f.ask.is_some() {
            spec.permissions = PermissionMode::Ask;
        }
        let message = Some(f.message.trim().to_owned()).filter(|m| !m.is_empty());
        // Start on demand: a stopped workspace starts and the session waits for it.
        w.app.engine.start_if_stopped(&ws)?;
        let s = w
            .app
            .engine
            .create_session(&ws, NewSession { spec, message })
            .await?;
        Ok(format!("/s/{}", s.id))
    }
    .await;
    // A new session is always a page change, even from htmx.
    match r {
        Ok(to) => Redirect::to(&to).into_response(),
        Err(e) => error_page(&auth, e).into_response(),
    }
}

/// Hands `input` to session `id`; answers with the session page to go back to.
async fn to_session(w: &WebState, id: &str, input: SessionInput) -> Result<String, HttpError> {
    // A message to a session whose workspace idle stop stopped starts it again.
    if matches!(input, SessionInput::Message { .. }) {
        let s = w.app.engine.session(id)?;
        w.app.engine.start_if_stopped(s.workspace_id.as_str())?;
    }
    let s = w.app.engine.send_input(id, input).await?;
    Ok(format!("/s/{}", s.id))
}

pub async fn interrupt(
    State(w): State<WebState>,
    Extension(auth): Extension<Auth>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let r = to_session(&w, &id, SessionInput::Interrupt).await;
    done(&headers, &auth, r)
}

#[derive(Deserialize)]
pub struct DecideForm {
    request: String,
    allow: String,
    #[serde(default)]
    message: Option<String>,
}

pub async fn decide(
    State(w): State<WebState>,
    Extension(auth): Extension<Auth>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(f): Form<DecideForm>,
) -> Response {
    let input = SessionInput::Approval {
        request_id: f.request,
        allow: f.allow == "1",
        message: f.message.filter(|m| !m.trim().is_empty()),
    };
    let r = to_session(&w, &id, input).await;
    done(&headers, &auth, r)
}

pub async fn end(
    State(w): State<WebState>,
    Extension(auth): Extension<Auth>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let r = w
        .app
        .engine
        .stop_session(&id)
        .await
        .map(|s| format!("/s/{}", s.id))
        .map_err(Into::into);
    done(&headers, &auth, r)
}

#[derive(Deserialize)]
pub struct TemplateForm {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    repos: String,
    agent: String,
    #[serde(default)]
    model: String,
    #[serde(default)]
    system_prompt: String,
    #[serde(default)]
    first_message: String,
    cpus: f64,
    memory_mib: u64,
    pids: u64,
    #[serde(default)]
    image: String,
    #[serde(default)]
    idle_stop: String,
}

fn opt(s: &str) -> Option<String> {
    Some(s.trim().to_owned()).filter(|s| !s.is_empty())
}

impl TemplateForm {
    fn spec(&self) -> Result<TemplateSpec, HttpError> {
        let spec = TemplateSpec {
            name: self.name.trim().to_owned(),
            description: self.description.trim().to_owned(),
            repos: self
                .repos
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect(),
            agent: AgentKind::parse(&self.agent)
                .map_err(|e| HttpError::bad_request(e.to_string()))?,
            model: opt(&self.model),
            system_prompt: opt(&self.system_prompt),
            first_message: opt(&self.first_message),
            resources: Resources {
                cpus: self.cpus,
                memory_mib: self.memory_mib,
                pids: self.pids,
            },
            image: opt(&self.image),
            policy: kraal_core::Policy {
                idle_stop_secs: opt(&self.idle_stop)
                    .map(|d| kraal_core::parse_duration_secs("idle stop", &d))
                    .transpose()
                    .map_err(|e| HttpError::bad_request(e.to_string()))?,
                backup_every_secs: None,
                idle_pause_secs: None,
            },
        };
        spec.validate()
            .map_err(|e| HttpError::bad_request(e.to_string()))?;
        Ok(spec)
    }
}

fn store_err(e: kraal_store::StoreError) -> HttpError {
    match e {
        kraal_store::StoreError::TemplateNameTaken { name } => HttpError::new(
            StatusCode::CONFLICT,
            "already_exists",
            format!("a template named {name} already exists"),
        ),
        e => kraal_engine::EngineError::from(e).into(),
    }
}

fn save(w: &WebState, id: &str, f: &TemplateForm) -> Result<String, HttpError> {
    let spec = f.spec()?;
    w.app
        .engine
        .store()
        .save_template(id, &spec)
        .map_err(store_err)?;
    Ok(format!("/templates/{id}"))
}

pub async fn save_template(
    State(w): State<WebState>,
    Extension(auth): Extension<Auth>,
    headers: HeaderMap,
    Form(f): Form<TemplateForm>,
) -> Response {
    let id = format!("tp-{}", &super::auth::random_token()[..10]);
    done(&headers, &auth, save(&w, &id, &f))
}

pub async fn save_template_version(
    State(w): State<WebState>,
    Extension(auth): Extension<Auth>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(f): Form<TemplateForm>,
) -> Response {
    let r = match w.app.engine.store().template(&id, None) {
        Ok(Some(_)) => save(&w, &id, &f),
        Ok(None) => Err(HttpError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no template {id}"),
        )),
        Err(e) => Err(store_err(e)),
    };
    done(&headers, &auth, r)
}

pub async fn delete_template(
    State(w): State<WebState>,
    Extension(auth): Extension<Auth>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let r = match w.app.engine.store().delete_template(&id) {
        Ok(true) => Ok("/templates".to_owned()),
        Ok(false) => Err(HttpError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no template {id}"),
        )),
        Err(e) => Err(store_err(e)),
    };
    done(&headers, &auth, r)
}

#[derive(Deserialize)]
pub struct LaunchForm {
    #[serde(default)]
    workspace: String,
    #[serde(default)]
    version: Option<u32>,
}

pub async fn launch_template(
    State(w): State<WebState>,
    Extension(auth): Extension<Auth>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(f): Form<LaunchForm>,
) -> Response {
    let r = async {
        let t = w
            .app
            .engine
            .store()
            .template(&id, f.version)
            .map_err(store_err)?
            .ok_or_else(|| HttpError::new(StatusCode::NOT_FOUND, "not_found", format!("no template {id}")))?;
        let rec = w.app.engine.launch_template(&t.spec, opt(&f.workspace))?;
        tracing::info!(template = %t.spec.name, workspace = %rec.name, token = %auth.token_name, "web: template launched");
        Ok(format!("/w/{}", rec.name))
    }
    .await;
    done(&headers, &auth, r)
}
