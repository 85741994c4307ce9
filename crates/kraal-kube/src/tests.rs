//! The backend against an in-memory Kubernetes API: a small model of the API server's REST
//! surface for pods, claims, secrets, namespaces and runtime classes (create, get, list by
//! label, delete with owner-reference garbage collection, pod logs), plus a "kubelet" the
//! test steers — healthy, image pull errors, unbound claims, no node, evictions. kube-rs
//! itself encodes every request, so paths, verbs and bodies are the real ones.
//! (No kube-apiserver is available from the registries this project may use; etcd alone
//! is not an API server. A real cluster runs the suite in `crates/kraal/tests/it/kubernetes.rs`
//! when `KRAAL_TEST_KUBECONFIG` is set.)

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use kraal_core::{Resources, Source, WorkspaceId, WorkspaceName};
use serde_json::{Value, json};

use super::*;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kubelet {
    Healthy,
    ImagePull,
    ClaimPending,
    NoNode,
}

struct Model {
    objects: BTreeMap<(String, String), Value>,
    kubelet: Kubelet,
    uid: u64,
    requests: Vec<String>,
    runtime_classes: Vec<String>,
}

#[derive(Clone)]
struct Fake(Arc<Mutex<Model>>);

fn status(code: u16, reason: &str, message: &str) -> (u16, Value) {
    (
        code,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": if code < 300 { "Success" } else { "Failure" },
               "message": message, "reason": reason, "code": code}),
    )
}

fn labels_match(obj: &Value, selector: &str) -> bool {
    selector.split(',').filter(|s| !s.is_empty()).all(|kv| {
        let (k, v) = kv.split_once('=').unwrap();
        obj["metadata"]["labels"][k] == v
    })
}

impl Fake {
    fn new(kubelet: Kubelet) -> Fake {
        Fake(Arc::new(Mutex::new(Model {
            objects: BTreeMap::new(),
            kubelet,
            uid: 0,
            requests: Vec::new(),
            runtime_classes: vec!["gvisor".into()],
        })))
    }

    fn get(&self, kind: &str, name: &str) -> Option<Value> {
        self.0
            .lock()
            .unwrap()
            .objects
            .get(&(kind.to_owned(), name.to_owned()))
            .cloned()
    }

    fn set_kubelet(&self, k: Kubelet) {
        self.0.lock().unwrap().kubelet = k;
    }

    fn evict(&self, pod: &str) {
        let mut m = self.0.lock().unwrap();
        let p = m
            .objects
            .get_mut(&("pods".to_owned(), pod.to_owned()))
            .unwrap();
        p["status"] = json!({"phase": "Failed", "reason": "Evicted",
            "message": "The node was low on resource: memory. Container guest was using 7Gi."});
    }

    fn requests(&self) -> Vec<String> {
        self.0.lock().unwrap().requests.clone()
    }

    /// What the kubelet and the volume controller make of a new object.
    fn admit(m: &mut Model, kind: &str, obj: &mut Value) {
        m.uid += 1;
        obj["metadata"]["uid"] = json!(format!("uid-{}", m.uid));
        obj["metadata"]["resourceVersion"] = json!(m.uid.to_string());
        obj["metadata"]["creationTimestamp"] = json!("2026-11-24T05:00:00Z");
        match kind {
            "persistentvolumeclaims" => {
                obj["status"] = json!({"phase": if m.kubelet == Kubelet::ClaimPending { "Pending" } else { "Bound" }});
            }
            "secrets" => {
                // The API server turns stringData into data.
                if let Some(sd) = obj.get("stringData").cloned() {
                    obj["data"] = json!({});
                    for (k, v) in sd.as_object().unwrap() {
                        obj["data"][k] = json!(base64(v.as_str().unwrap().as_bytes()));
                    }
                    obj.as_object_mut().unwrap().remove("stringData");
                }
            }
            "pods" => {
                let cs = |ready: bool, waiting: Option<(&str, &str)>| {
                    json!([{"name": "guest", "ready": ready, "restartCount": 0, "image": "img", "imageID": "",
                    "state": match waiting {
                        Some((r, msg)) => json!({"waiting": {"reason": r, "message": msg}}),
                        None => json!({"running": {"startedAt": "2026-11-24T05:00:01Z"}}),
                    }}])
                };
                obj["status"] = match m.kubelet {
                    Kubelet::Healthy => {
                        json!({"phase": "Running", "containerStatuses": cs(true, None)})
                    }
                    Kubelet::ImagePull => {
                        json!({"phase": "Pending", "containerStatuses": cs(false, Some((
                            "ImagePullBackOff",
                            "Back-off pulling image \"registry.example/kraal/default:1\"",
                        )))})
                    }
                    Kubelet::ClaimPending => {
                        json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
                        "reason": "Unschedulable", "message": "pod has unbound immediate PersistentVolumeClaims"}]})
                    }
                    Kubelet::NoNode => {
                        json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
                        "reason": "Unschedulable", "message": "0/3 nodes are available: 3 Insufficient memory."}]})
                    }
                };
            }
            _ => {}
        }
    }

    fn handle(&self, method: &str, path: &str, query: &str, body: &[u8]) -> (u16, Value) {
        let mut m = self.0.lock().unwrap();
        m.requests.push(format!("{method} {path}"));
        if path == "/version" {
            return (
                200,
                json!({"major": "1", "minor": "33", "gitVersion": "v1.33.1-fake", "gitCommit": "",
                "gitTreeState": "", "buildDate": "", "goVersion": "", "compiler": "", "platform": "linux/amd64"}),
            );
        }
        if let Some(name) = path.strip_prefix("/apis/node.k8s.io/v1/runtimeclasses/") {
            return if m.runtime_classes.iter().any(|r| r == name) {
                (
                    200,
                    json!({"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass", "metadata": {"name": name}, "handler": "runsc"}),
                )
            } else {
                status(
                    404,
                    "NotFound",
                    &format!("runtimeclasses.node.k8s.io \"{name}\" not found"),
                )
            };
        }
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match parts.as_slice() {
            ["api", "v1", "namespaces", ns] => {
                if *ns == "kraal" {
                    (
                        200,
                        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
                    )
                } else {
                    status(404, "NotFound", &format!("namespaces \"{ns}\" not found"))
                }
            }
            ["api", "v1", "namespaces", "kraal", kind] => match method {
                "POST" => {
                    let mut obj: Value = serde_json::from_slice(body).unwrap();
                    let name = obj["metadata"]["name"].as_str().unwrap().to_owned();
                    let key = (kind.to_string(), name.clone());
                    if m.objects.contains_key(&key) {
                        return status(
                            409,
                            "AlreadyExists",
                            &format!("{kind} \"{name}\" already exists"),
                        );
                    }
                    Fake::admit(&mut m, kind, &mut obj);
                    m.objects.insert(key, obj.clone());
                    (201, obj)
                }
                "GET" => {
                    let selector = query
                        .split('&')
                        .find_map(|kv| kv.strip_prefix("labelSelector="))
                        .map(|s| {
                            s.replace("%3D", "=")
                                .replace("%2C", ",")
                                .replace("%2F", "/")
                        })
                        .unwrap_or_default();
                    let items: Vec<Value> = m
                        .objects
                        .iter()
                        .filter(|((k, _), o)| k == kind && labels_match(o, &selector))
                        .map(|(_, o)| o.clone())
                        .collect();
                    let list_kind = match *kind {
                        "pods" => "PodList",
                        "secrets" => "SecretList",
                        _ => "PersistentVolumeClaimList",
                    };
                    (
                        200,
                        json!({"apiVersion": "v1", "kind": list_kind, "metadata": {"resourceVersion": "1"}, "items": items}),
                    )
                }
                _ => status(405, "MethodNotAllowed", method),
            },
            ["api", "v1", "namespaces", "kraal", kind, name, "log"] if *kind == "pods" => {
                if m.objects.contains_key(&("pods".into(), name.to_string())) {
                    (
                        200,
                        json!(format!(
                            "kraal-guest 0.1.0 listening on 0.0.0.0:7071 ({name})\n"
                        )),
                    )
                } else {
                    status(404, "NotFound", &format!("pods \"{name}\" not found"))
                }
            }
            ["api", "v1", "namespaces", "kraal", kind, name] => {
                let key = (kind.to_string(), name.to_string());
                match method {
                    "GET" => match m.objects.get(&key) {
                        Some(o) => (200, o.clone()),
                        None => status(404, "NotFound", &format!("{kind} \"{name}\" not found")),
                    },
                    "DELETE" => match m.objects.remove(&key) {
                        Some(o) => {
                            // Garbage collection of what the deleted object owned.
                            let uid = o["metadata"]["uid"].clone();
                            m.objects.retain(|_, v| {
                                !v["metadata"]["ownerReferences"]
                                    .as_array()
                                    .is_some_and(|rs| rs.iter().any(|r| r["uid"] == uid))
                            });
                            status(200, "", "deleted")
                        }
                        None => status(404, "NotFound", &format!("{kind} \"{name}\" not found")),
                    },
                    _ => status(405, "MethodNotAllowed", method),
                }
            }
            _ => status(404, "NotFound", &format!("no route {path}")),
        }
    }

    fn client(&self) -> kube::Client {
        let fake = self.clone();
        let svc = tower::service_fn(move |req: http::Request<kube::client::Body>| {
            let fake = fake.clone();
            async move {
                let method = req.method().to_string();
                let path = req.uri().path().to_owned();
                let query = req.uri().query().unwrap_or("").to_owned();
                let body = req.into_body().collect().await?.to_bytes();
                let (code, v) = fake.handle(&method, &path, &query, &body);
                let text = match &v {
                    Value::String(s) if path.ends_with("/log") => s.clone(),
                    v => v.to_string(),
                };
                Ok::<_, kube::Error>(
                    http::Response::builder()
                        .status(code)
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from(text)))
                        .unwrap(),
                )
            }
        });
        kube::Client::new(svc, "default")
    }
}

fn base64(b: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn settings() -> KubeSettings {
    KubeSettings {
        namespace: "kraal".into(),
        runtime_class: Some("gvisor".into()),
        storage_class: Some("fast-ssd".into()),
        image: "registry.example/kraal/default:1".into(),
        volume_size: "20Gi".into(),
        node_selector: BTreeMap::from([("kraal.dev/pool".to_owned(), "agents".to_owned())]),
        tolerations: vec![parse_toleration("dedicated=agents:NoSchedule").unwrap()],
        image_pull_secret: Some("registry-login".into()),
    }
}

fn spec(source: Source) -> SandboxSpec {
    SandboxSpec {
        id: WorkspaceId::random(),
        name: WorkspaceName::parse("api-work").unwrap(),
        source,
        resources: Resources {
            cpus: 1.5,
            memory_mib: 2048,
            pids: 4096,
        },
        guest_token: "guest-token-0123".into(),
        image: None,
        persistent: false,
        mounts: vec![],
        git_hosts: vec![],
    }
}

fn git() -> Source {
    Source::Git {
        url: "https://git.example/team/app.git".into(),
        branch: Some("main".into()),
    }
}

fn backend(fake: &Fake) -> KubeBackend {
    let b = KubeBackend::new(fake.client(), settings());
    b.set_timeouts(Duration::from_secs(5), Duration::from_secs(1));
    b
}

#[tokio::test]
async fn create_start_stop_start_and_remove_a_workspace() {
    let fake = Fake::new(Kubelet::Healthy);
    let b = backend(&fake);
    let s = spec(git());
    let n = manifests::names(&s.id);
    assert_eq!(b.status(&s.id).await.unwrap(), SandboxStatus::Absent);

    b.create(&s).await.unwrap();
    let claim = fake.get("persistentvolumeclaims", &n.claim).unwrap();
    assert_eq!(claim["spec"]["storageClassName"], "fast-ssd");
    assert_eq!(claim["spec"]["resources"]["requests"]["storage"], "20Gi");
    assert_eq!(
        claim["metadata"]["labels"]["kraal.dev/workspace"],
        s.id.as_str()
    );
    let secret = fake.get("secrets", &n.secret).unwrap();
    assert_eq!(
        secret["metadata"]["ownerReferences"][0]["uid"],
        claim["metadata"]["uid"]
    );
    assert_eq!(
        secret["metadata"]["ownerReferences"][0]["kind"],
        "PersistentVolumeClaim"
    );
    assert!(secret["data"]["guest.json"].is_string(), "{secret}");
    assert_eq!(b.status(&s.id).await.unwrap(), SandboxStatus::Stopped);

    let ep = b.start(&s).await.unwrap();
    assert!(
        ep.addr.ip().is_loopback(),
        "the guest is reached through a local port-forward"
    );
    // Host services are relayed into the pod through the guest, on a loopback address
    // of the workspace's own.
    assert!(ep.tunnel);
    let host = ep.host.unwrap();
    assert!(
        host.is_loopback() && host != std::net::IpAddr::from([127, 0, 0, 1]),
        "{host}"
    );
    assert_eq!(host, loopback_for(&s.id));
    assert_ne!(loopback_for(&s.id), loopback_for(&WorkspaceId::random()));
    let pod = fake.get("pods", &n.pod).unwrap();
    let ps = &pod["spec"];
    assert_eq!(ps["runtimeClassName"], "gvisor");
    assert_eq!(ps["nodeSelector"]["kraal.dev/pool"], "agents");
    assert_eq!(ps["tolerations"][0]["key"], "dedicated");
    assert_eq!(ps["imagePullSecrets"][0]["name"], "registry-login");
    assert_eq!(ps["automountServiceAccountToken"], false);
    assert_eq!(ps["initContainers"][0]["name"], "clone");
    assert!(
        ps["initContainers"][0]["env"]
            .as_array()
            .unwrap()
            .contains(&json!({"name": "KRAAL_REPO", "value": "https://git.example/team/app.git"}))
    );
    let guest = &ps["containers"][0];
    assert_eq!(
        guest["command"],
        json!(["/.kraal/kraal-guest", "--config", "/etc/kraal/guest.json"])
    );
    assert_eq!(
        guest["resources"]["limits"],
        json!({"cpu": "1500m", "memory": "2048Mi"})
    );
    assert_eq!(guest["resources"]["requests"], guest["resources"]["limits"]);
    assert_eq!(
        ps["volumes"][0]["persistentVolumeClaim"]["claimName"],
        n.claim
    );
    assert_eq!(
        pod["metadata"]["ownerReferences"][0]["uid"],
        claim["metadata"]["uid"]
    );
    assert_eq!(b.status(&s.id).await.unwrap(), SandboxStatus::Running);
    assert_eq!(b.endpoint(&s.id).await.unwrap().addr, ep.addr);
    let log = b.console_log(&s.id, 4096).await.unwrap();
    assert!(log.contains("listening on 0.0.0.0:7071"), "{log}");

    // Stop: the pod goes, the volume and the secret stay.
    b.stop(&s.id).await.unwrap();
    assert!(fake.get("pods", &n.pod).is_none());
    assert!(fake.get("persistentvolumeclaims", &n.claim).is_some());
    assert!(fake.get("secrets", &n.secret).is_some());
    assert_eq!(b.status(&s.id).await.unwrap(), SandboxStatus::Stopped);
    assert!(b.endpoint(&s.id).await.is_err());
    b.stop(&s.id).await.unwrap();

    // Start again on the same claim; then remove everything.
    b.start(&s).await.unwrap();
    assert_eq!(b.status(&s.id).await.unwrap(), SandboxStatus::Running);
    b.destroy(&s.id).await.unwrap();
    assert!(fake.get("pods", &n.pod).is_none());
    assert!(fake.get("persistentvolumeclaims", &n.claim).is_none());
    assert!(fake.get("secrets", &n.secret).is_none());
    assert_eq!(b.status(&s.id).await.unwrap(), SandboxStatus::Absent);
    b.destroy(&s.id).await.unwrap();
    // Nothing but the API: every request went to the API server's REST paths.
    assert!(
        fake.requests()
            .iter()
            .all(|r| r.contains(" /api/v1/namespaces/kraal/")),
        "{:?}",
        fake.requests()
    );
}

#[tokio::test]
async fn image_pull_errors_unbound_claims_and_no_node_fail_the_start_with_the_reason() {
    // An image that cannot be pulled fails at once; the pod goes, the volume stays.
    let fake = Fake::new(Kubelet::ImagePull);
    let b = backend(&fake);
    let s = spec(git());
    let n = manifests::names(&s.id);
    let e = b.start(&s).await.unwrap_err().to_string();
    assert!(
        e.contains("the workspace image cannot be pulled: ImagePullBackOff (guest): Back-off pulling image \"registry.example/kraal/default:1\""),
        "{e}"
    );
    assert!(fake.get("pods", &n.pod).is_none());
    assert!(fake.get("persistentvolumeclaims", &n.claim).is_some());
    // Once the registry works, the next start succeeds.
    fake.set_kubelet(Kubelet::Healthy);
    b.start(&s).await.unwrap();
    assert_eq!(b.status(&s.id).await.unwrap(), SandboxStatus::Running);

    // A claim no storage binds: the start gives up after the pending limit, naming it.
    let fake = Fake::new(Kubelet::ClaimPending);
    let b = backend(&fake);
    let s = spec(Source::Empty);
    let t0 = std::time::Instant::now();
    let e = b.start(&s).await.unwrap_err().to_string();
    assert!(
        e.contains("the workspace volume is not bound yet: claim kraal-")
            && e.contains("waits for fast-ssd (after 1 s)"),
        "{e}"
    );
    assert!(t0.elapsed() < Duration::from_secs(5));
    let o = b.observe(&s.id).await.unwrap();
    assert_eq!(o.status, SandboxStatus::Stopped);
    assert!(matches!(o.problem, Some(Problem::ClaimPending(_))), "{o:?}");
    // An empty source has no clone step.
    assert!(
        fake.requests()
            .iter()
            .any(|r| r.starts_with("POST") && r.ends_with("/pods"))
    );

    // No node with room.
    let fake = Fake::new(Kubelet::NoNode);
    let b = backend(&fake);
    let e = b.start(&spec(git())).await.unwrap_err().to_string();
    assert!(
        e.contains(
            "no node can run the workspace: 0/3 nodes are available: 3 Insufficient memory."
        ),
        "{e}"
    );
}

#[tokio::test]
async fn an_evicted_pod_shows_as_stopped_with_the_reason_and_a_start_replaces_it() {
    let fake = Fake::new(Kubelet::Healthy);
    let b = backend(&fake);
    let s = spec(git());
    let n = manifests::names(&s.id);
    b.start(&s).await.unwrap();
    let first_uid = fake.get("pods", &n.pod).unwrap()["metadata"]["uid"].clone();
    fake.evict(&n.pod);
    let o = b.observe(&s.id).await.unwrap();
    assert_eq!(o.status, SandboxStatus::Stopped);
    assert_eq!(
        o.problem.map(|p| p.to_string()).unwrap_or_default(),
        "the node evicted the workspace: The node was low on resource: memory. Container guest was using 7Gi."
    );
    // The reconciler sees it stopped and starts it: a new pod on the same volume.
    b.start(&s).await.unwrap();
    let pod = fake.get("pods", &n.pod).unwrap();
    assert_ne!(pod["metadata"]["uid"], first_uid);
    assert_eq!(b.status(&s.id).await.unwrap(), SandboxStatus::Running);
}

#[tokio::test]
async fn what_a_cluster_cannot_do_is_refused_before_anything_is_created() {
    let fake = Fake::new(Kubelet::Healthy);
    let b = backend(&fake);
    let local = spec(Source::Local {
        path: "/home/me/app".into(),
    });
    let e = b.create(&local).await.unwrap_err().to_string();
    assert!(
        e.contains("a local directory (/home/me/app) cannot be a Kubernetes workspace's source"),
        "{e}"
    );
    let mut mounted = spec(git());
    mounted.mounts = vec![kraal_core::Mount::parse("/srv/data:/data").unwrap()];
    let e = b.create(&mounted).await.unwrap_err().to_string();
    assert!(e.contains("host directories cannot be mounted"), "{e}");
    assert!(fake.requests().is_empty(), "{:?}", fake.requests());

    let mut no_image = settings();
    no_image.image.clear();
    let b2 = KubeBackend::new(fake.client(), no_image);
    assert!(
        b2.create(&spec(git()))
            .await
            .unwrap_err()
            .to_string()
            .contains("--kube-image")
    );

    for bad in [
        "dedicated=agents",
        "=x:NoSchedule",
        "k=:NoExecute",
        "k:Sometimes",
    ] {
        assert!(parse_toleration(bad).is_err(), "{bad}");
    }
    assert_eq!(
        parse_toleration("gpu:NoSchedule")
            .unwrap()
            .operator
            .as_deref(),
        Some("Exists")
    );
    assert!(parse_node_selector("pool").is_err());

    // The host check: API version, namespace, runtime class.
    let c = b.check().await;
    assert_eq!(c.status, kraal_sandbox::ProbeStatus::Usable, "{c:?}");
    assert!(
        c.details.iter().any(|d| d.contains("v1.33.1-fake")),
        "{c:?}"
    );
    let mut missing = settings();
    missing.runtime_class = Some("kata-fc".into());
    missing.namespace = "kraal".into();
    let c = KubeBackend::new(fake.client(), missing).check().await;
    assert_eq!(c.status, kraal_sandbox::ProbeStatus::Unusable);
    assert!(
        c.details
            .iter()
            .any(|d| d == "runtime class kata-fc does not exist in the cluster"),
        "{c:?}"
    );
}

/// Every manifest kraal sends, checked against the JSON schemas of Kubernetes 1.33 (the
/// version k8s-openapi is built for) with `kubernetes-validate --strict` (unknown fields
/// are errors), pinned in `scripts/setup.sh`.
#[test]
fn manifests_validate_against_the_kubernetes_schema() {
    let tool = "/opt/kraal-test/venv/bin/kubernetes-validate";
    assert!(
        std::path::Path::new(tool).exists(),
        "{tool} is missing: run scripts/setup.sh with KRAAL_SETUP_TEST_DEPS=1"
    );
    let dir = tempfile::tempdir().unwrap();
    let s = settings();
    let mut files = Vec::new();
    for (i, source) in [git(), Source::Empty].into_iter().enumerate() {
        let sp = spec(source);
        let owner = k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            api_version: "v1".into(),
            kind: "PersistentVolumeClaim".into(),
            name: manifests::names(&sp.id).claim,
            uid: "0f5c1e7a-2a59-4c2e-9d4a-1b2c3d4e5f60".into(),
            block_owner_deletion: Some(true),
            controller: Some(true),
        };
        let docs = [
            (
                "claim",
                serde_json::to_value(manifests::claim(&sp, &s)).unwrap(),
                "PersistentVolumeClaim",
            ),
            (
                "secret",
                serde_json::to_value(manifests::secret(&sp, &s, Some(&owner))).unwrap(),
                "Secret",
            ),
            (
                "pod",
                serde_json::to_value(manifests::pod(&sp, &s, Some(&owner))).unwrap(),
                "Pod",
            ),
        ];
        for (name, mut v, kind) in docs {
            // What kube-rs adds when it sends them.
            v["apiVersion"] = json!("v1");
            v["kind"] = json!(kind);
            let f = dir.path().join(format!("{name}-{i}.json"));
            std::fs::write(&f, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
            files.push(f);
        }
    }
    #[allow(clippy::disallowed_methods)] // test: the schema validator
    let out = std::process::Command::new(tool)
        .args(["-k", "1.33.0", "--strict"])
        .args(&files)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert_eq!(text.matches(" passed for resource ").count(), 6, "{text}");

    // And the validator does catch a bad manifest (so the check above means something).
    let bad = dir.path().join("bad.json");
    let mut v = serde_json::to_value(manifests::pod(&spec(git()), &s, None)).unwrap();
    v["apiVersion"] = json!("v1");
    v["kind"] = json!("Pod");
    v["spec"]["containers"][0]["resources"]["limits"]["cpu"] = json!({"cores": 2});
    v["spec"]["runtimeClass"] = json!("gvisor");
    std::fs::write(&bad, serde_json::to_vec(&v).unwrap()).unwrap();
    #[allow(clippy::disallowed_methods)] // test: the schema validator
    let out = std::process::Command::new(tool)
        .args(["-k", "1.33.0", "--strict"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
}
