//! The Kubernetes backend: each workspace is a Pod running the guest agent, a
//! PersistentVolumeClaim holding `/workspace` and a Secret holding the guest's
//! configuration, in one namespace, created through the Kubernetes API (kube-rs). The
//! daemon reaches the guest through the API's port-forward — nothing is exposed as a
//! Service or NodePort. Stopping deletes the pod and keeps the claim; removing deletes all
//! three (the pod and secret are also owned by the claim).

pub mod manifests;
pub mod status;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret};
use kraal_core::{BackendKind, Capabilities, WorkspaceId};
use kraal_sandbox::{
    Backend, BackendError, GuestEndpoint, HostCheck, SandboxSpec, SandboxStatus, error_chain,
};
use kube::api::{Api, DeleteParams, ListParams, LogParams, PostParams};

pub use manifests::{KubeSettings, ManifestError, parse_node_selector, parse_toleration};
pub use status::{Observed, Problem, observe};

/// How long a start may wait for its pod to run (pulling a large image takes a while).
const START_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a start tolerates a claim that is not bound or a pod no node takes.
const PENDING_TIMEOUT: Duration = Duration::from_secs(180);

pub struct KubeBackend {
    client: kube::Client,
    settings: KubeSettings,
    /// Local listeners relaying to each running workspace's guest through port-forward.
    forwards: Mutex<HashMap<WorkspaceId, Forward>>,
    timeouts: Mutex<(Duration, Duration)>,
}

struct Forward {
    addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Forward {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The loopback address a workspace's host services use (on the daemon's host, and the
/// guest's relay inside the pod): `127.X.Y.Z` from its id, so workspaces never share one.
pub fn loopback_for(id: &WorkspaceId) -> std::net::IpAddr {
    // FNV-1a over the id.
    let mut h: u32 = 0x811c_9dc5;
    for b in id.as_str().bytes() {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    let [_, x, y, z] = h.to_be_bytes();
    // Not 127.0.0.x (the host's own services), not .0 or .255.
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, x.max(1), y, z.clamp(1, 254)))
}

fn kube_err(id: &WorkspaceId, op: &'static str) -> impl FnOnce(kube::Error) -> BackendError {
    let id = id.clone();
    move |e| BackendError::failed(&id, op, format!("Kubernetes API: {}", error_chain(&e)))
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

/// Creates `obj` unless an object of its name exists (also when another start created it
/// in between).
async fn create_missing<K>(
    api: &Api<K>,
    obj: &K,
    id: &WorkspaceId,
    op: &'static str,
) -> Result<(), BackendError>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    if api
        .get_opt(&name)
        .await
        .map_err(kube_err(id, op))?
        .is_some()
    {
        return Ok(());
    }
    match api.create(&PostParams::default(), obj).await {
        Ok(_) => Ok(()),
        Err(e) if is_status(&e, 409) => Ok(()),
        Err(e) => Err(kube_err(id, op)(e)),
    }
}

impl KubeBackend {
    /// A backend using `client` (its default namespace is ignored: `settings.namespace`).
    pub fn new(client: kube::Client, settings: KubeSettings) -> KubeBackend {
        KubeBackend {
            client,
            settings,
            forwards: Mutex::new(HashMap::new()),
            timeouts: Mutex::new((START_TIMEOUT, PENDING_TIMEOUT)),
        }
    }

    /// Connects with the kubeconfig (`KUBECONFIG` or `~/.kube/config`, or the in-cluster
    /// service account), optionally a given context.
    pub async fn connect(
        context: Option<String>,
        settings: KubeSettings,
    ) -> Result<KubeBackend, kube::Error> {
        let opts = kube::config::KubeConfigOptions {
            context,
            ..Default::default()
        };
        let config = match kube::Config::from_kubeconfig(&opts).await {
            Ok(c) => c,
            Err(kerr) => {
                kube::Config::incluster().map_err(|_| kube::Error::InferKubeconfig(kerr))?
            }
        };
        Ok(KubeBackend::new(kube::Client::try_from(config)?, settings))
    }

    /// Shorter waits (tests).
    pub fn set_timeouts(&self, start: Duration, pending: Duration) {
        *self.timeouts.lock().unwrap() = (start, pending);
    }

    pub fn settings(&self) -> &KubeSettings {
        &self.settings
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.settings.namespace)
    }

    fn claims(&self) -> Api<PersistentVolumeClaim> {
        Api::namespaced(self.client.clone(), &self.settings.namespace)
    }

    fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.settings.namespace)
    }

    /// What the cluster shows of a workspace now.
    pub async fn observe(&self, id: &WorkspaceId) -> Result<Observed, BackendError> {
        let n = manifests::names(id);
        let claim = self
            .claims()
            .get_opt(&n.claim)
            .await
            .map_err(kube_err(id, "status"))?;
        let pod = self
            .pods()
            .get_opt(&n.pod)
            .await
            .map_err(kube_err(id, "status"))?;
        Ok(observe(claim.as_ref(), pod.as_ref()))
    }

    /// The claim (created if missing) and the secret next to it.
    async fn ensure_claim(
        &self,
        spec: &SandboxSpec,
    ) -> Result<PersistentVolumeClaim, BackendError> {
        let id = &spec.id;
        let n = manifests::names(id);
        let claim = match self
            .claims()
            .get_opt(&n.claim)
            .await
            .map_err(kube_err(id, "create"))?
        {
            Some(c) => c,
            None => match self
                .claims()
                .create(
                    &PostParams::default(),
                    &manifests::claim(spec, &self.settings),
                )
                .await
            {
                Ok(c) => c,
                Err(e) if is_status(&e, 409) => self
                    .claims()
                    .get(&n.claim)
                    .await
                    .map_err(kube_err(id, "create"))?,
                Err(e) => return Err(kube_err(id, "create")(e)),
            },
        };
        let owner = manifests::owned_by_claim(&claim);
        create_missing(
            &self.secrets(),
            &manifests::secret(spec, &self.settings, owner.as_ref()),
            id,
            "create",
        )
        .await?;
        Ok(claim)
    }

    async fn delete_pod(&self, id: &WorkspaceId, op: &'static str) -> Result<(), BackendError> {
        let n = manifests::names(id);
        match self.pods().delete(&n.pod, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(e) if is_status(&e, 404) => return Ok(()),
            Err(e) => return Err(kube_err(id, op)(e)),
        }
        // Wait until it is gone, so a start right after gets a fresh pod on the claim.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            match self
                .pods()
                .get_opt(&n.pod)
                .await
                .map_err(kube_err(id, op))?
            {
                None => return Ok(()),
                Some(_) if tokio::time::Instant::now() > deadline => {
                    return Err(BackendError::failed(
                        id,
                        op,
                        format!("pod {} was not gone after 120 s", n.pod),
                    ));
                }
                Some(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }

    /// A local listener that relays each connection to the pod's guest port through the
    /// API's port-forward.
    async fn forward(&self, id: &WorkspaceId) -> Result<std::net::SocketAddr, BackendError> {
        if let Some(f) = self.forwards.lock().unwrap().get(id) {
            return Ok(f.addr);
        }
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(|e| BackendError::failed(id, "start", format!("local forward: {e}")))?;
        let addr = listener
            .local_addr()
            .map_err(|e| BackendError::failed(id, "start", format!("local forward: {e}")))?;
        let pods = self.pods();
        let pod = manifests::names(id).pod;
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    return;
                };
                let pods = pods.clone();
                let pod = pod.clone();
                tokio::spawn(async move {
                    let mut pf = match pods.portforward(&pod, &[manifests::GUEST_PORT]).await {
                        Ok(pf) => pf,
                        Err(e) => {
                            tracing::warn!(pod, "port-forward: {}", error_chain(&e));
                            return;
                        }
                    };
                    let Some(mut upstream) = pf.take_stream(manifests::GUEST_PORT) else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut conn, &mut upstream).await;
                    drop(upstream);
                    let _ = pf.join().await;
                });
            }
        });
        self.forwards
            .lock()
            .unwrap()
            .insert(id.clone(), Forward { addr, task });
        Ok(addr)
    }
}

#[async_trait]
impl Backend for KubeBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Kubernetes
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }

    async fn check(&self) -> HostCheck {
        let mut details = Vec::new();
        let mut ok = true;
        match self.client.apiserver_version().await {
            Ok(v) => details.push(format!(
                "Kubernetes API {}.{} ({})",
                v.major, v.minor, v.git_version
            )),
            Err(e) => {
                ok = false;
                details.push(format!(
                    "the Kubernetes API is unreachable: {}",
                    error_chain(&e)
                ));
            }
        }
        let ns: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(self.client.clone());
        if ok {
            match ns.get_opt(&self.settings.namespace).await {
                Ok(Some(_)) => details.push(format!("namespace {}", self.settings.namespace)),
                Ok(None) => {
                    ok = false;
                    details.push(format!(
                        "namespace {} does not exist (kubectl create namespace {})",
                        self.settings.namespace, self.settings.namespace
                    ));
                }
                Err(e) => details.push(format!("cannot read namespaces: {}", error_chain(&e))),
            }
        }
        if ok && let Some(rc) = &self.settings.runtime_class {
            let rcs: Api<k8s_openapi::api::node::v1::RuntimeClass> = Api::all(self.client.clone());
            match rcs.get_opt(rc).await {
                Ok(Some(r)) => details.push(format!("runtime class {rc} (handler {})", r.handler)),
                Ok(None) => {
                    ok = false;
                    details.push(format!("runtime class {rc} does not exist in the cluster"));
                }
                Err(e) => details.push(format!("cannot read runtime classes: {}", error_chain(&e))),
            }
        }
        if self.settings.image.is_empty() {
            ok = false;
            details.push("no workspace image: kraal serve --kube-image REGISTRY/IMAGE:TAG".into());
        }
        HostCheck::new(BackendKind::Kubernetes, ok, details)
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<(), BackendError> {
        manifests::validate(spec, &self.settings)
            .map_err(|e| BackendError::failed(&spec.id, "create", e.to_string()))?;
        self.ensure_claim(spec).await?;
        Ok(())
    }

    async fn start(&self, spec: &SandboxSpec) -> Result<GuestEndpoint, BackendError> {
        let id = &spec.id;
        manifests::validate(spec, &self.settings)
            .map_err(|e| BackendError::failed(id, "start", e.to_string()))?;
        let claim = self.ensure_claim(spec).await?;
        let n = manifests::names(id);
        let existing = self
            .pods()
            .get_opt(&n.pod)
            .await
            .map_err(kube_err(id, "start"))?;
        // A pod that ended (evicted, failed) is replaced.
        if existing.as_ref().is_some_and(|p| {
            observe(Some(&claim), Some(p))
                .problem
                .as_ref()
                .is_some_and(Problem::is_fatal)
        }) {
            self.delete_pod(id, "start").await?;
        }
        let owner = manifests::owned_by_claim(&claim);
        create_missing(
            &self.pods(),
            &manifests::pod(spec, &self.settings, owner.as_ref()),
            id,
            "start",
        )
        .await?;
        let (start_timeout, pending_timeout) = *self.timeouts.lock().unwrap();
        let t0 = tokio::time::Instant::now();
        loop {
            let o = self.observe(id).await?;
            if o.status == SandboxStatus::Running {
                break;
            }
            let waited = t0.elapsed();
            let give_up = match &o.problem {
                Some(p) if p.is_fatal() => Some(p.to_string()),
                Some(p) if waited > pending_timeout => {
                    Some(format!("{p} (after {} s)", waited.as_secs()))
                }
                _ if waited > start_timeout => Some(format!(
                    "pod {} did not become ready within {} s",
                    n.pod,
                    start_timeout.as_secs()
                )),
                _ => None,
            };
            if let Some(why) = give_up {
                // Leave the claim (the volume) and take the pod away, so nothing retries
                // in the background; the workspace shows as failed with this reason.
                let _ = self.delete_pod(id, "start").await;
                return Err(BackendError::failed(id, "start", why));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let addr = self.forward(id).await?;
        Ok(GuestEndpoint {
            addr,
            host: Some(loopback_for(id)),
            ports: Vec::new(),
            tunnel: true,
        })
    }

    async fn stop(&self, id: &WorkspaceId) -> Result<(), BackendError> {
        self.forwards.lock().unwrap().remove(id);
        self.delete_pod(id, "stop").await
    }

    async fn destroy(&self, id: &WorkspaceId) -> Result<(), BackendError> {
        self.forwards.lock().unwrap().remove(id);
        self.delete_pod(id, "remove").await?;
        let n = manifests::names(id);
        for r in [
            self.secrets()
                .delete(&n.secret, &DeleteParams::default())
                .await
                .map(|_| ()),
            self.claims()
                .delete(&n.claim, &DeleteParams::default())
                .await
                .map(|_| ()),
        ] {
            match r {
                Ok(()) => {}
                Err(e) if is_status(&e, 404) => {}
                Err(e) => return Err(kube_err(id, "remove")(e)),
            }
        }
        // Anything else carrying the workspace's labels (left by an older kraal).
        let lp = ListParams::default().labels(&manifests::selector(id));
        for s in self
            .secrets()
            .list(&lp)
            .await
            .map_err(kube_err(id, "remove"))?
        {
            if let Some(name) = s.metadata.name {
                let _ = self.secrets().delete(&name, &DeleteParams::default()).await;
            }
        }
        Ok(())
    }

    async fn status(&self, id: &WorkspaceId) -> Result<SandboxStatus, BackendError> {
        let o = self.observe(id).await?;
        if o.status != SandboxStatus::Running {
            self.forwards.lock().unwrap().remove(id);
        }
        Ok(o.status)
    }

    async fn endpoint(&self, id: &WorkspaceId) -> Result<GuestEndpoint, BackendError> {
        if self.observe(id).await?.status != SandboxStatus::Running {
            return Err(BackendError::failed(
                id,
                "connect",
                "the workspace pod is not running",
            ));
        }
        Ok(GuestEndpoint {
            addr: self.forward(id).await?,
            host: Some(loopback_for(id)),
            ports: Vec::new(),
            tunnel: true,
        })
    }

    async fn console_log(
        &self,
        id: &WorkspaceId,
        max_bytes: usize,
    ) -> Result<String, BackendError> {
        let n = manifests::names(id);
        let lp = LogParams {
            container: Some("guest".into()),
            limit_bytes: Some(max_bytes as i64),
            ..Default::default()
        };
        match self.pods().logs(&n.pod, &lp).await {
            Ok(s) => Ok(s),
            Err(e) if is_status(&e, 404) => Ok(String::new()),
            Err(e) => Err(kube_err(id, "logs")(e)),
        }
    }
}

#[cfg(test)]
mod tests;
