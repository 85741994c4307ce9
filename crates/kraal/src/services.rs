//! The link services the daemon runs for every running workspace: the model and git
//! gateway and the egress proxy (`kraal-proxy`), with credentials taken from the
//! encrypted secret store (falling back to the daemon's environment), every egress
//! decision written to the database (and counted in the metrics) and the gateway's
//! refusals to the audit log.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use kraal_core::{EGRESS_PORT, ModelGateway};
use kraal_engine::LinkServices;
use kraal_proxy::{
    AnthropicAuth, CredentialSource, Credentials, EgressProxies, EgressRecord, EgressSettings,
    EgressSink, GATEWAY_PORT, GatewayAudit, Gateways, GitRoute, RefusedRequest, Upstreams,
    placeholder_key,
};
use kraal_store::{
    ANTHROPIC_KEY_SECRET, CLAUDE_TOKEN_SECRET, GEMINI_KEY_SECRET, OPENAI_KEY_SECRET, SecretKey,
    Store, WorkspaceRecord,
};

/// Credentials the daemon was started with: `ANTHROPIC_API_KEY` (preferred) or
/// `CLAUDE_CODE_OAUTH_TOKEN`, `OPENAI_API_KEY`, and `GEMINI_API_KEY` (or
/// `GOOGLE_API_KEY`). Empty values count as unset.
pub fn credentials_from_env() -> Credentials {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    Credentials {
        anthropic: var("ANTHROPIC_API_KEY")
            .map(AnthropicAuth::ApiKey)
            .or_else(|| var("CLAUDE_CODE_OAUTH_TOKEN").map(AnthropicAuth::OauthToken)),
        openai: var("OPENAI_API_KEY"),
        google: var("GEMINI_API_KEY").or_else(|| var("GOOGLE_API_KEY")),
    }
}

/// Real credentials on the host: stored secrets first (so `kraal secret set` and `kraal
/// login` take effect without a restart), then the daemon's environment.
pub struct HostCredentials {
    store: Store,
    key: SecretKey,
    env: Credentials,
    /// When each (workspace, secret) read was last audited.
    audited: Mutex<HashMap<(String, String), Instant>>,
}

impl HostCredentials {
    pub fn new(store: Store, key: SecretKey, env: Credentials) -> Self {
        HostCredentials {
            store,
            key,
            env,
            audited: Mutex::new(HashMap::new()),
        }
    }

    fn get(&self, name: &str) -> Option<String> {
        match self.store.get_secret(&self.key, name) {
            Ok(v) => v
                .and_then(|b| String::from_utf8(b).ok())
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty()),
            Err(e) => {
                tracing::warn!("secret {name}: {}", kraal_sandbox::error_chain(&e));
                None
            }
        }
    }
}

impl CredentialSource for HostCredentials {
    fn credentials(&self) -> Credentials {
        Credentials {
            // A shared subscription login (`kraal login claude`) first, then a
            // long-lived token, then an API key, then the daemon's environment.
            anthropic: self
                .store
                .claude_login(&self.key)
                .map(|l| AnthropicAuth::OauthToken(l.access_token))
                .or_else(|| self.get(CLAUDE_TOKEN_SECRET).map(AnthropicAuth::OauthToken))
                .or_else(|| self.get(ANTHROPIC_KEY_SECRET).map(AnthropicAuth::ApiKey))
                .or_else(|| self.env.anthropic.clone()),
            openai: self
                .get(OPENAI_KEY_SECRET)
                .or_else(|| self.env.openai.clone()),
            google: self
                .get(GEMINI_KEY_SECRET)
                .or_else(|| self.env.google.clone()),
        }
    }

    fn secret(&self, workspace: &str, name: &str) -> Option<String> {
        self.audited_read(
            &format!("gateway:{workspace}"),
            name,
            "used by the git gateway",
        )
    }
}

/// The task queue's calls to a git host's API (issues, pull requests, checks).
impl kraal_tasks::Secrets for HostCredentials {
    fn secret(&self, name: &str) -> Option<String> {
        self.audited_read("tasks", name, "used for the git host's API")
    }
}

impl HostCredentials {
    /// Reads secret `name`, with one audit line per reader and secret per minute (not one
    /// per request).
    fn audited_read(&self, actor: &str, name: &str, why: &str) -> Option<String> {
        let v = self.get(name);
        let now = Instant::now();
        let mut a = self.audited.lock().unwrap();
        let k = (actor.to_owned(), name.to_owned());
        if a.get(&k)
            .is_none_or(|t| now.duration_since(*t) > Duration::from_secs(60))
        {
            a.insert(k, now);
            let _ = self.store.audit(
                actor,
                "secret.read",
                name,
                if v.is_some() { why } else { "missing" },
            );
        }
        v
    }
}

/// Egress decisions go to the database, written in batches off the request path (a
/// connection never waits for SQLite), and into the metrics.
struct StoreSink(
    tokio::sync::mpsc::UnboundedSender<EgressRecord>,
    NoticeSlot,
    Arc<kraal_metrics::Metrics>,
);

impl StoreSink {
    fn new(store: Store, notices: NoticeSlot, metrics: Arc<kraal_metrics::Metrics>) -> StoreSink {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<EgressRecord>();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                while let Ok(r) = rx.try_recv() {
                    batch.push(r);
                    if batch.len() >= 512 {
                        break;
                    }
                }
                let rows: Vec<kraal_store::EgressLogRecord> = batch
                    .into_iter()
                    .map(|r| kraal_store::EgressLogRecord {
                        id: 0,
                        workspace: r.workspace,
                        at: kraal_store::now(),
                        method: r.method,
                        host: r.host,
                        port: r.port,
                        addr: r.addr.map(|a| a.to_string()),
                        allowed: r.allowed,
                        reason: r.reason,
                        bytes_up: r.bytes_up,
                        bytes_down: r.bytes_down,
                        ms: r.ms,
                    })
                    .collect();
                let store = store.clone();
                let res = tokio::task::spawn_blocking(move || store.log_egress_batch(&rows)).await;
                if let Ok(Err(e)) = res {
                    tracing::warn!("cannot record egress decisions: {e}");
                }
            }
        });
        StoreSink(tx, notices, metrics)
    }
}

impl EgressSink for StoreSink {
    fn record(&self, r: EgressRecord) {
        self.2.egress_connection(r.allowed);
        if !r.allowed
            && let Some(tx) = self.1.get()
            && let Ok(ws) = kraal_core::WorkspaceId::parse(&r.workspace)
        {
            let _ = tx.send(kraal_engine::Notice::EgressRefused {
                workspace: ws,
                host: r.host.clone(),
                port: r.port,
                reason: r.reason.clone().unwrap_or_else(|| "refused".into()),
            });
        }
        let _ = self.0.send(r);
    }
}

/// The model gateway's refusals in the audit log (actor `gateway:WORKSPACE`), written off
/// the request path: each request line once a minute per workspace, and at most
/// [`AUDIT_PER_MINUTE`] lines a minute per workspace, so a looping agent cannot flood it.
struct StoreAudit {
    store: Store,
    /// When each (workspace, request line) was last written, for the last minute.
    written: Mutex<HashMap<(String, String), Instant>>,
}

const AUDIT_PER_MINUTE: usize = 60;

impl GatewayAudit for StoreAudit {
    fn refused(&self, r: RefusedRequest) {
        let now = Instant::now();
        let line = format!("{} {}", r.method, r.path);
        {
            let mut w = self.written.lock().unwrap();
            w.retain(|_, t| now.duration_since(*t) < Duration::from_secs(60));
            let key = (r.workspace.clone(), line.clone());
            if w.contains_key(&key)
                || w.keys().filter(|(ws, _)| *ws == r.workspace).count() >= AUDIT_PER_MINUTE
            {
                return;
            }
            w.insert(key, now);
        }
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            let actor = format!("gateway:{}", r.workspace);
            if let Err(e) = store.audit(&actor, "gateway.refused", &line, &r.reason) {
                tracing::warn!(workspace = %r.workspace, "cannot audit a refused model request: {e}");
            }
        });
    }
}

/// Where egress refusals are announced (set once the engine exists).
pub(crate) type NoticeSlot =
    Arc<std::sync::OnceLock<tokio::sync::broadcast::Sender<kraal_engine::Notice>>>;

pub struct HostServices {
    gateways: Gateways,
    egress: EgressProxies,
    notices: NoticeSlot,
}

/// The workspace's git credentials as gateway routes, each scoped to the repositories it
/// lists and the workspace's source repository on its host. A credential stored by an
/// older version lists none: it reaches the source repository only, or nothing.
fn git_routes(ws: &WorkspaceRecord) -> Vec<GitRoute> {
    ws.git
        .iter()
        .map(|g| {
            let repos = g.scope(&ws.source);
            if repos.is_empty() {
                tracing::warn!(workspace = %ws.id, host = %g.host, "git credential reaches no repository: the git gateway refuses every request for the host");
            }
            GitRoute {
                host: g.host.clone(),
                username: g.username.clone(),
                secret: g.secret.clone(),
                repos,
            }
        })
        .collect()
}

impl HostServices {
    pub fn new(
        upstreams: Upstreams,
        credentials: Arc<dyn CredentialSource>,
        egress: EgressSettings,
        store: Store,
        metrics: Arc<kraal_metrics::Metrics>,
    ) -> anyhow::Result<Arc<Self>> {
        let notices: NoticeSlot = Arc::default();
        let gateways = Gateways::new(upstreams, credentials)?;
        gateways.set_spending(Arc::new(crate::spending::StoreSpending {
            store: store.clone(),
            notices: notices.clone(),
        }));
        gateways.set_audit(Arc::new(StoreAudit {
            store: store.clone(),
            written: Mutex::default(),
        }));
        gateways.set_metrics(metrics.clone());
        Ok(Arc::new(HostServices {
            gateways,
            egress: EgressProxies::new(
                egress,
                Arc::new(StoreSink::new(store, notices.clone(), metrics)),
            ),
            notices,
        }))
    }

    /// Announces egress refusals on the engine's notice channel from now on.
    pub fn set_notices(&self, tx: tokio::sync::broadcast::Sender<kraal_engine::Notice>) {
        let _ = self.notices.set(tx);
    }
}

#[async_trait]
impl LinkServices for HostServices {
    async fn attach(&self, ws: &WorkspaceRecord, host: IpAddr) -> Result<ModelGateway, String> {
        let key = placeholder_key(&ws.guest_token);
        self.egress
            .ensure(
                ws.id.as_str(),
                SocketAddr::new(host, EGRESS_PORT),
                ws.egress.clone(),
            )
            .await
            .map_err(|e| kraal_sandbox::error_chain(&e))?;
        let addr = self
            .gateways
            .ensure(
                ws.id.as_str(),
                SocketAddr::new(host, GATEWAY_PORT),
                &key,
                git_routes(ws),
            )
            .await
            .map_err(|e| kraal_sandbox::error_chain(&e))?;
        Ok(ModelGateway {
            url: format!("http://{addr}"),
            key,
        })
    }

    fn update(&self, ws: &WorkspaceRecord) {
        self.egress.set_rules(ws.id.as_str(), ws.egress.clone());
        self.gateways.set_git(ws.id.as_str(), git_routes(ws));
    }

    fn detach(&self, ws: &kraal_core::WorkspaceId) {
        self.gateways.stop(ws.as_str());
        self.egress.stop(ws.as_str());
    }
}

/// `HOST=VALUE` pairs of a repeatable flag.
pub fn pairs(flag: &str, items: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    items
        .iter()
        .map(|i| {
            i.split_once('=')
                .map(|(h, v)| (kraal_core::normalize_host(h), v.trim().to_owned()))
                .filter(|(h, v)| !h.is_empty() && !v.is_empty())
                .ok_or_else(|| anyhow::anyhow!("--{flag} {i:?}: expected HOST=VALUE"))
        })
        .collect()
}

/// The gateway's rate-limit windows, as the API shows them.
pub fn rate_limits(
    services: &Arc<HostServices>,
) -> Arc<dyn Fn() -> Vec<kraal_api::RateLimitWindow> + Send + Sync> {
    let pacer = services.gateways.pacer();
    let at = |t: Option<std::time::SystemTime>| {
        t.map(|t| {
            time::OffsetDateTime::from(t)
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default()
        })
    };
    Arc::new(move || {
        pacer
            .windows()
            .into_iter()
            .map(|w| kraal_api::RateLimitWindow {
                provider: w.provider,
                credential: w.credential,
                requests_limit: w.requests_limit,
                requests_remaining: w.requests_remaining,
                requests_reset: at(w.requests_reset),
                tokens_limit: w.tokens_limit,
                tokens_remaining: w.tokens_remaining,
                tokens_reset: at(w.tokens_reset),
                subscription_status: w.unified_status,
                subscription_reset: at(w.unified_reset),
                subscription_windows: w
                    .unified_utilization
                    .into_iter()
                    .map(|(name, utilization)| kraal_api::SubscriptionWindow { name, utilization })
                    .collect(),
                requests: w.requests,
                paced: w.paced,
                limited: w.limited,
                waiting: w.waiting,
                in_flight: w.in_flight,
            })
            .collect()
    })
}
