//! The model gateway: one small HTTP server per workspace, bound to the host side of that
//! workspace's private link, forwarding the model API calls agents make under
//! `/anthropic/...`, `/openai/...` and `/google/...` (`routes`) to the real APIs with the
//! real credentials added; under `/git/HOST/...`, git's fetches and pushes of the
//! workspace's repositories (`git`) with the host's token added.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::TryStreamExt;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::task::JoinHandle;

use crate::git::GitRefusal;
use crate::routes::{GatewayAudit, Provider, Refusal, RefusedRequest};

/// Port of the gateway on the host side of every workspace link (the guest agent is 7071).
pub const GATEWAY_PORT: u16 = kraal_core::GATEWAY_PORT;

/// How often a held request looks whether its cap was raised.
const HOLD_POLL: std::time::Duration = std::time::Duration::from_millis(500);

/// Largest request body forwarded to a model API.
const MAX_REQUEST: usize = 32 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("cannot listen on {addr} for workspace {workspace}")]
    Bind {
        workspace: String,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot build the HTTP client for the model gateway")]
    Client(#[source] reqwest::Error),
}

/// How requests to the Anthropic API are authenticated.
#[derive(Clone, PartialEq, Eq)]
pub enum AnthropicAuth {
    /// `x-api-key`.
    ApiKey(String),
    /// A Claude subscription OAuth token (`sk-ant-oat01-…`), sent as a bearer token.
    OauthToken(String),
}

impl std::fmt::Debug for AnthropicAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print a credential.
        match self {
            AnthropicAuth::ApiKey(_) => f.write_str("ApiKey(<redacted>)"),
            AnthropicAuth::OauthToken(_) => f.write_str("OauthToken(<redacted>)"),
        }
    }
}

/// The real credentials, as known on the host right now.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    pub anthropic: Option<AnthropicAuth>,
    pub openai: Option<String>,
    /// A Gemini API key (`x-goog-api-key`).
    pub google: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("anthropic", &self.anthropic)
            .field("openai", &self.openai.as_ref().map(|_| "<redacted>"))
            .field("google", &self.google.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Where real credentials come from; asked on every request, so a refreshed token is used
/// as soon as the source has it.
pub trait CredentialSource: Send + Sync + 'static {
    fn credentials(&self) -> Credentials;

    /// The value of stored secret `name` (a git token), read for `workspace`.
    fn secret(&self, _workspace: &str, _name: &str) -> Option<String> {
        None
    }
}

/// A git host whose requests the gateway authenticates, for the repositories listed.
#[derive(Clone, PartialEq, Eq)]
pub struct GitRoute {
    pub host: String,
    pub username: String,
    /// Name of the secret holding the token.
    pub secret: String,
    /// The repositories the token is sent for, in normal form
    /// (`kraal_core::normalize_repo`); fetches and pushes of any other are refused, and
    /// with none every request for the host is.
    pub repos: Vec<String>,
}

impl std::fmt::Debug for GitRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "GitRoute({}@{} <- secret {}, for {:?})",
            self.username, self.host, self.secret, self.repos
        )
    }
}

/// Fixed credentials (from the daemon's environment or configuration).
#[derive(Debug, Clone, Default)]
pub struct StaticCredentials(pub Credentials);

impl CredentialSource for StaticCredentials {
    fn credentials(&self) -> Credentials {
        self.0.clone()
    }
}

/// Base URLs of the real APIs, without a trailing slash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstreams {
    pub anthropic: String,
    pub openai: String,
    pub google: String,
    /// Where git hosts are reached (`https://HOST` unless listed), e.g. a mirror.
    pub git: HashMap<String, String>,
}

impl Default for Upstreams {
    fn default() -> Self {
        Upstreams {
            anthropic: "https://api.anthropic.com".into(),
            openai: "https://api.openai.com".into(),
            google: "https://generativelanguage.googleapis.com".into(),
            git: HashMap::new(),
        }
    }
}

/// The placeholder key agents in a workspace are given: derived from the workspace's secret,
/// worthless anywhere but at that workspace's gateway.
pub fn placeholder_key(workspace_secret: &str) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(workspace_secret.as_bytes()).expect("any key length");
    mac.update(b"kraal model gateway placeholder v1");
    format!(
        "sk-kraal-{}",
        hex::encode(&mac.finalize().into_bytes()[..16])
    )
}

struct Shared {
    client: reqwest::Client,
    /// For git: redirects go back to git, never followed with the credential.
    git_client: reqwest::Client,
    upstreams: Upstreams,
    credentials: Arc<dyn CredentialSource>,
    /// Spend recording and budget caps, when the daemon keeps them.
    spending: std::sync::OnceLock<Arc<dyn crate::meter::Spending>>,
    /// Rate-limit windows per credential, shared by every workspace.
    pacer: Arc<crate::pacing::Pacer>,
    /// Where refused requests are reported, when the daemon keeps an audit log.
    audit: std::sync::OnceLock<Arc<dyn GatewayAudit>>,
    /// Where model requests are counted, when the daemon exports metrics.
    metrics: std::sync::OnceLock<Arc<kraal_metrics::Metrics>>,
}

/// One workspace's gateway.
struct Workspace {
    shared: Arc<Shared>,
    workspace: String,
    key: String,
    git: std::sync::RwLock<Vec<GitRoute>>,
}

struct Running {
    /// The address asked for (port 0 in tests) and the one actually bound.
    requested: SocketAddr,
    bound: SocketAddr,
    key: String,
    state: Arc<Workspace>,
    task: JoinHandle<()>,
}

/// The gateways of every workspace this daemon serves.
pub struct Gateways {
    shared: Arc<Shared>,
    running: Mutex<HashMap<String, Running>>,
}

impl Gateways {
    pub fn new(
        upstreams: Upstreams,
        credentials: Arc<dyn CredentialSource>,
    ) -> Result<Self, GatewayError> {
        let client = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(30))
            .build()
            .map_err(GatewayError::Client)?;
        let git_client = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(GatewayError::Client)?;
        Ok(Gateways {
            shared: Arc::new(Shared {
                client,
                git_client,
                upstreams,
                credentials,
                spending: std::sync::OnceLock::new(),
                pacer: crate::pacing::Pacer::new(),
                audit: std::sync::OnceLock::new(),
                metrics: std::sync::OnceLock::new(),
            }),
            running: Mutex::new(HashMap::new()),
        })
    }

    pub fn upstreams(&self) -> &Upstreams {
        &self.shared.upstreams
    }

    /// The rate-limit windows of the credentials in use (what pacing goes by).
    pub fn pacer(&self) -> Arc<crate::pacing::Pacer> {
        self.shared.pacer.clone()
    }

    /// Meters every answer from now on and holds requests while a cap is reached (set
    /// once; later calls are ignored).
    pub fn set_spending(&self, s: Arc<dyn crate::meter::Spending>) {
        let _ = self.shared.spending.set(s);
    }

    /// Reports every refused request from now on (set once; later calls are ignored).
    pub fn set_audit(&self, a: Arc<dyn GatewayAudit>) {
        let _ = self.shared.audit.set(a);
    }

    /// Counts the model requests of gateways started from now on (set once).
    pub fn set_metrics(&self, m: Arc<kraal_metrics::Metrics>) {
        let _ = self.shared.metrics.set(m);
    }

    /// Makes sure `workspace`'s gateway listens on `addr` and accepts `key`; returns the
    /// bound address. Idempotent: a gateway already serving that address and key is left
    /// alone.
    pub async fn ensure(
        &self,
        workspace: &str,
        addr: SocketAddr,
        key: &str,
        git: Vec<GitRoute>,
    ) -> Result<SocketAddr, GatewayError> {
        {
            let mut running = self.running.lock().unwrap();
            if let Some(r) = running.get(workspace) {
                if r.requested == addr && r.key == key && !r.task.is_finished() {
                    *r.state.git.write().unwrap() = git;
                    return Ok(r.bound);
                }
                r.task.abort();
                running.remove(workspace);
            }
        }
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| GatewayError::Bind {
                workspace: workspace.to_owned(),
                addr,
                source,
            })?;
        let bound = listener.local_addr().unwrap_or(addr);
        let state = Arc::new(Workspace {
            shared: self.shared.clone(),
            workspace: workspace.to_owned(),
            key: key.to_owned(),
            git: std::sync::RwLock::new(git),
        });
        let app = crate::meter::counted(Router::new().fallback(forward), self.shared.metrics.get())
            .with_state(state.clone());
        let ws = workspace.to_owned();
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::warn!(workspace = %ws, "model gateway stopped: {e}");
            }
        });
        tracing::debug!(workspace, %bound, "model gateway listening");
        self.running.lock().unwrap().insert(
            workspace.to_owned(),
            Running {
                requested: addr,
                bound,
                key: key.to_owned(),
                state,
                task,
            },
        );
        Ok(bound)
    }

    /// Replaces the git hosts of a running gateway.
    pub fn set_git(&self, workspace: &str, git: Vec<GitRoute>) {
        if let Some(r) = self.running.lock().unwrap().get(workspace) {
            *r.state.git.write().unwrap() = git;
        }
    }

    /// Stops `workspace`'s gateway (its link is going away).
    pub fn stop(&self, workspace: &str) {
        if let Some(r) = self.running.lock().unwrap().remove(workspace) {
            r.task.abort();
        }
    }

    /// Where `workspace`'s gateway listens, if it runs.
    pub fn addr(&self, workspace: &str) -> Option<SocketAddr> {
        self.running.lock().unwrap().get(workspace).map(|r| r.bound)
    }
}

impl Drop for Gateways {
    fn drop(&mut self) {
        for (_, r) in self.running.lock().unwrap().drain() {
            r.task.abort();
        }
    }
}

/// An error in a shape both Anthropic and OpenAI clients understand well enough to show
/// the message.
fn gateway_error(status: StatusCode, message: String) -> Response {
    let body = format!(
        "{{\"type\":\"error\",\"error\":{{\"type\":\"kraal_gateway_error\",\"message\":{}}}}}",
        json_string(&format!("kraal gateway: {message}"))
    );
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Headers that describe one hop, never forwarded.
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
            | "content-length"
    )
}

/// The request headers to send upstream: all but the hop-by-hop ones and `drop`.
fn forwarded(from: &HeaderMap, drop: &[HeaderName]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in from {
        if !hop_by_hop(name) && !drop.contains(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    headers
}

/// The upstream answer, streamed back with all but the hop-by-hop headers and `drop`;
/// with `meter`, its usage is read on the way and recorded when it ends.
fn streamed_back(
    resp: reqwest::Response,
    drop: &[HeaderName],
    meter: Option<(Arc<dyn crate::meter::Spending>, crate::meter::Metered)>,
) -> Response {
    let mut out = Response::builder().status(resp.status());
    for (name, value) in resp.headers() {
        if !hop_by_hop(name) && !drop.contains(name) {
            out = out.header(name, value);
        }
    }
    let sse = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    let stream = resp.bytes_stream().map_err(std::io::Error::other);
    let body = match meter {
        Some((sp, m)) => Body::from_stream(crate::meter::Tap::new(stream, sse, sp, m)),
        None => Body::from_stream(stream),
    };
    out.body(body)
        .unwrap_or_else(|e| gateway_error(StatusCode::BAD_GATEWAY, e.to_string()))
}

/// The key a client presented: `x-api-key`, `x-goog-api-key`, or a bearer token.
fn presented_key(h: &HeaderMap) -> Option<&str> {
    for name in ["x-api-key", "x-goog-api-key"] {
        if let Some(k) = h.get(name).and_then(|v| v.to_str().ok()) {
            return Some(k.trim());
        }
    }
    h.get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

async fn forward(State(ws): State<Arc<Workspace>>, req: Request) -> Response {
    let t0 = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().map(str::to_owned);
    if let Some(rest) = path.strip_prefix("/git/") {
        let rest = rest.to_owned();
        return forward_git(ws, req, &rest, query, t0).await;
    }
    let (provider, rest) = if let Some(rest) = path.strip_prefix("/anthropic") {
        (Provider::Anthropic, rest)
    } else if let Some(rest) = path.strip_prefix("/openai") {
        (Provider::OpenAi, rest)
    } else if let Some(rest) = path.strip_prefix("/google") {
        (Provider::Google, rest)
    } else {
        return gateway_error(
            StatusCode::NOT_FOUND,
            format!("no route {path}; use /anthropic/…, /openai/… or /google/…"),
        );
    };
    if !(rest.is_empty() || rest.starts_with('/')) {
        return gateway_error(StatusCode::NOT_FOUND, format!("no route {path}"));
    }
    let ok = presented_key(req.headers()).is_some_and(|k| {
        use subtle::ConstantTimeEq;
        k.len() == ws.key.len() && bool::from(k.as_bytes().ct_eq(ws.key.as_bytes()))
    });
    if !ok {
        tracing::warn!(workspace = %ws.workspace, provider = provider.as_str(), %method, path = %path, "model gateway: refused a request without this workspace's key");
        return gateway_error(
            StatusCode::UNAUTHORIZED,
            "the API key is not this workspace's kraal key".into(),
        );
    }
    // Before any credential is looked up: a refused request never reaches the upstream.
    if let Err(why) = crate::routes::check(provider, method.as_str(), rest) {
        return refuse(&ws, method.as_str(), &path, why);
    }
    let base = match provider {
        Provider::Anthropic => &ws.shared.upstreams.anthropic,
        Provider::OpenAi => &ws.shared.upstreams.openai,
        Provider::Google => &ws.shared.upstreams.google,
    };
    let mut url = format!("{}{}", base.trim_end_matches('/'), rest);
    if let Some(q) = &query {
        url.push('?');
        url.push_str(q);
    }
    let creds = ws.shared.credentials.credentials();
    // The sandbox's own credentials go; the real ones are added below.
    let mut headers = forwarded(
        req.headers(),
        &[
            HeaderName::from_static("x-api-key"),
            HeaderName::from_static("x-goog-api-key"),
            header::AUTHORIZATION,
        ],
    );
    let (pace_key, pace_label) = match (provider, &creds) {
        (
            Provider::Anthropic,
            Credentials {
                anthropic: Some(AnthropicAuth::ApiKey(k)),
                ..
            },
        ) => crate::pacing::credential_key("anthropic", k, false),
        (
            Provider::Anthropic,
            Credentials {
                anthropic: Some(AnthropicAuth::OauthToken(t)),
                ..
            },
        ) => crate::pacing::credential_key("anthropic", t, true),
        (
            Provider::OpenAi,
            Credentials {
                openai: Some(k), ..
            },
        ) => crate::pacing::credential_key("openai", k, false),
        (
            Provider::Google,
            Credentials {
                google: Some(k), ..
            },
        ) => crate::pacing::credential_key("google", k, false),
        _ => (format!("{}:none", provider.as_str()), "none".to_owned()),
    };
    match provider {
        Provider::Anthropic => match &creds.anthropic {
            Some(AnthropicAuth::ApiKey(k)) => {
                if let Ok(v) = HeaderValue::from_str(k) {
                    headers.insert("x-api-key", v);
                }
            }
            Some(AnthropicAuth::OauthToken(t)) => {
                if let Ok(v) = HeaderValue::from_str(&format!("Bearer {t}")) {
                    headers.insert(header::AUTHORIZATION, v);
                }
                // Subscription tokens are accepted only with the OAuth beta flag.
                let beta = match headers.get("anthropic-beta").and_then(|v| v.to_str().ok()) {
                    Some(b) if b.contains("oauth-2025-04-20") => b.to_owned(),
                    Some(b) if !b.is_empty() => format!("{b},oauth-2025-04-20"),
                    _ => "oauth-2025-04-20".to_owned(),
                };
                if let Ok(v) = HeaderValue::from_str(&beta) {
                    headers.insert("anthropic-beta", v);
                }
            }
            None => {}
        },
        Provider::OpenAi => {
            if let Some(k) = &creds.openai
                && let Ok(v) = HeaderValue::from_str(&format!("Bearer {k}"))
            {
                headers.insert(header::AUTHORIZATION, v);
            }
        }
        Provider::Google => {
            if let Some(k) = &creds.google
                && let Ok(v) = HeaderValue::from_str(k)
            {
                headers.insert("x-goog-api-key", v);
            }
        }
    }
    let body = match axum::body::to_bytes(req.into_body(), MAX_REQUEST).await {
        Ok(b) => b,
        Err(e) => {
            return gateway_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body unreadable or over {MAX_REQUEST} bytes: {e}"),
            );
        }
    };
    let spending = ws.shared.spending.get().cloned();
    if let Some(sp) = &spending {
        // Over a cap: the request waits here (the agent waits; nothing fails) until the
        // cap is raised or removed.
        let mut announced = false;
        while let Some(reason) = sp.over_cap(&ws.workspace) {
            if !announced {
                tracing::info!(workspace = %ws.workspace, provider = provider.as_str(), %path, "model gateway: request held: {reason}");
                sp.held(&ws.workspace, &reason);
                announced = true;
            }
            tokio::time::sleep(HOLD_POLL).await;
        }
        if announced {
            tracing::info!(workspace = %ws.workspace, provider = provider.as_str(), %path, "model gateway: held request released");
        }
    }
    // Sessions sharing a credential take turns once its window runs out.
    let (permit, paced) = ws
        .shared
        .pacer
        .admit(&pace_key, provider.as_str(), &pace_label)
        .await;
    if paced >= std::time::Duration::from_millis(100) {
        tracing::info!(workspace = %ws.workspace, provider = provider.as_str(), %path, ms = paced.as_millis() as u64, "model gateway: paced by the rate limit of {pace_label}");
    }
    let model = crate::meter::model_of(&body, rest);
    let upstream = ws
        .shared
        .client
        .request(method.clone(), &url)
        .headers(headers)
        .body(body)
        .send()
        .await;
    let resp = match upstream {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(workspace = %ws.workspace, provider = provider.as_str(), %method, path = %path, "model gateway: upstream failed: {e}");
            return gateway_error(
                StatusCode::BAD_GATEWAY,
                format!("{} API unreachable: {e}", provider.as_str()),
            );
        }
    };
    let status = resp.status();
    ws.shared.pacer.observe(&pace_key, status, resp.headers());
    drop(permit);
    tracing::info!(
        workspace = %ws.workspace,
        provider = provider.as_str(),
        %method,
        path = %path,
        status = status.as_u16(),
        ms = t0.elapsed().as_millis() as u64,
        "model gateway"
    );
    let meter = spending.filter(|_| status.is_success()).map(|sp| {
        (
            sp,
            crate::meter::Metered {
                workspace: ws.workspace.clone(),
                provider: provider.as_str(),
                model,
                usage: crate::meter::Usage::default(),
                usd: 0.0,
            },
        )
    });
    streamed_back(resp, &[], meter)
}

/// A 403 for a call no agent makes, reported to the audit hook.
fn refuse(ws: &Workspace, method: &str, path: &str, why: Refusal) -> Response {
    let path: String = path.chars().take(200).collect();
    let reason = why.reason();
    tracing::warn!(workspace = %ws.workspace, %method, %path, "model gateway: refused: {reason}");
    if let Some(a) = ws.shared.audit.get() {
        a.refused(RefusedRequest {
            workspace: ws.workspace.clone(),
            method: method.to_owned(),
            path: path.clone(),
            reason: reason.clone(),
        });
    }
    gateway_error(
        StatusCode::FORBIDDEN,
        format!(
            "{method} {path} is not forwarded: the gateway only forwards the model API paths the agents need ({reason})"
        ),
    )
}

/// A 403 for a git request outside the workspace's repositories (or not git's at all),
/// reported to the audit hook; the upstream never sees it.
fn refuse_git(
    ws: &Workspace,
    route: &GitRoute,
    method: &str,
    path: &str,
    why: GitRefusal,
) -> Response {
    let host = &route.host;
    let shown: String = path.chars().take(200).collect();
    let full = format!("/git/{host}{shown}");
    let reason = why.reason();
    tracing::warn!(workspace = %ws.workspace, %host, %method, path = %full, "git gateway: refused: {reason}");
    if let Some(a) = ws.shared.audit.get() {
        a.refused(RefusedRequest {
            workspace: ws.workspace.clone(),
            method: method.to_owned(),
            path: full.clone(),
            reason: reason.clone(),
        });
    }
    let secret = &route.secret;
    let message = match why {
        GitRefusal::OutOfScope { repo, service } => {
            let mut allowed = route.repos.clone();
            allowed.push(repo.clone());
            format!(
                "kraal git gateway: {} of {host}/{repo} refused: workspace {} reaches only {} on {host}.\n\
                 To allow it, create the workspace with --git {host}={secret}:{}\n",
                service.as_str(),
                ws.workspace,
                route.repos.join(", "),
                allowed.join(","),
            )
        }
        GitRefusal::NoScope => format!(
            "kraal git gateway: {method} {full} refused: workspace {}'s credential for {host} reaches no repository \
             (the workspace was not cloned from one on {host}).\n\
             To allow one, create the workspace with --git {host}={secret}:OWNER/REPO\n",
            ws.workspace
        ),
        GitRefusal::NotNormal | GitRefusal::NotGit => format!(
            "kraal git gateway: {method} {full} is not forwarded: the gateway only forwards git fetches and pushes \
             of the workspace's repositories ({reason})\n"
        ),
    };
    (StatusCode::FORBIDDEN, message).into_response()
}

/// Git over HTTPS: `/git/HOST/PATH` goes to `https://HOST/PATH` (or the configured URL of
/// HOST) with the workspace's token for HOST added as basic auth. Only hosts given to this
/// workspace are served, and on them only git's fetches and pushes of the repositories
/// their route lists (`git`); redirects are handed back to git, never followed with the
/// token.
async fn forward_git(
    ws: Arc<Workspace>,
    req: Request,
    rest: &str,
    query: Option<String>,
    t0: Instant,
) -> Response {
    let method = req.method().clone();
    let (host, path) = match rest.split_once('/') {
        Some((h, p)) => (h.to_owned(), format!("/{p}")),
        None => (rest.to_owned(), "/".to_owned()),
    };
    let route = ws
        .git
        .read()
        .unwrap()
        .iter()
        .find(|g| g.host == host)
        .cloned();
    let Some(route) = route else {
        tracing::warn!(workspace = %ws.workspace, host = %host, "git gateway: host not configured");
        return (
            StatusCode::NOT_FOUND,
            format!(
                "kraal git gateway: workspace {} has no credential for {host}\n",
                ws.workspace
            ),
        )
            .into_response();
    };
    // Before the token is looked up: a refused request never reaches the host.
    let git = match crate::git::check(method.as_str(), &path, query.as_deref(), &route.repos) {
        Ok(g) => g,
        Err(why) => return refuse_git(&ws, &route, method.as_str(), &path, why),
    };
    let Some(token) = ws.shared.credentials.secret(&ws.workspace, &route.secret) else {
        return (
            StatusCode::BAD_GATEWAY,
            format!(
                "kraal git gateway: secret {} for {host} is not set (kraal secret set {})\n",
                route.secret, route.secret
            ),
        )
            .into_response();
    };
    let base = ws
        .shared
        .upstreams
        .git
        .get(&host)
        .cloned()
        .unwrap_or_else(|| format!("https://{host}"));
    let mut url = format!("{}{}", base.trim_end_matches('/'), path);
    if let Some(q) = &query {
        url.push('?');
        url.push_str(q);
    }
    let mut headers = forwarded(req.headers(), &[header::AUTHORIZATION, header::COOKIE]);
    use base64::Engine as _;
    let basic =
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{token}", route.username));
    if let Ok(v) = HeaderValue::from_str(&format!("Basic {basic}")) {
        headers.insert(header::AUTHORIZATION, v);
    }
    // Pushes can be large: stream the body through.
    let body = reqwest::Body::wrap_stream(req.into_body().into_data_stream());
    let resp = match ws
        .shared
        .git_client
        .request(method.clone(), &url)
        .headers(headers)
        .body(body)
        .send()
        .await
    {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(workspace = %ws.workspace, host = %host, "git gateway: upstream failed: {e}");
            return (
                StatusCode::BAD_GATEWAY,
                format!("kraal git gateway: {host} unreachable: {e}\n"),
            )
                .into_response();
        }
    };
    let status = resp.status();
    tracing::info!(workspace = %ws.workspace, host = %host, repo = %git.repo, service = git.service.as_str(),
        %method, path = %path, status = status.as_u16(), ms = t0.elapsed().as_millis() as u64, "git gateway");
    streamed_back(resp, &[header::SET_COOKIE], None)
}
