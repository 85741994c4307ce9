//! What a workspace is made of in a cluster, as pure data: a PersistentVolumeClaim (its
//! volume, kept while it is stopped), a Secret (the guest agent's configuration with its
//! token), and a Pod (an init container that clones the repository into an empty volume,
//! then the guest agent as the main container). Everything carries the same labels, and
//! the Pod and Secret are owned by the claim, so deleting the claim takes them along.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, Pod, PodSpec, ResourceRequirements, Secret,
    SecretVolumeSource, Toleration, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kraal_core::{Source, WorkspaceId};
use kraal_sandbox::SandboxSpec;

/// The guest agent's port in the pod (reached only through the API's port-forward).
pub const GUEST_PORT: u16 = 7071;
/// Where the guest's configuration is mounted.
const CONFIG_DIR: &str = "/etc/kraal";
/// The guest agent in kraal images (their OCI entrypoint).
const GUEST_BIN: &str = "/.kraal/kraal-guest";

/// Label keys.
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const WORKSPACE: &str = "kraal.dev/workspace";
pub const NAME: &str = "kraal.dev/name";

/// How workspaces are laid out in the cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct KubeSettings {
    pub namespace: String,
    /// `runtimeClassName` of workspace pods (kata-fc, kata-qemu, gvisor…; `None`: the
    /// cluster's default runtime).
    pub runtime_class: Option<String>,
    /// Storage class of workspace volumes (`None`: the cluster's default).
    pub storage_class: Option<String>,
    /// The workspace image in a registry (kraal's OCI output, pushed).
    pub image: String,
    /// Size of each workspace volume, e.g. `32Gi`.
    pub volume_size: String,
    pub node_selector: BTreeMap<String, String>,
    pub tolerations: Vec<Toleration>,
    /// A `kubernetes.io/dockerconfigjson` Secret for pulling the image.
    pub image_pull_secret: Option<String>,
}

impl Default for KubeSettings {
    fn default() -> Self {
        KubeSettings {
            namespace: "kraal".into(),
            runtime_class: None,
            storage_class: None,
            image: String::new(),
            volume_size: "32Gi".into(),
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
            image_pull_secret: None,
        }
    }
}

/// Why a workspace cannot be laid out in a cluster.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ManifestError {
    #[error(
        "a local directory ({0}) cannot be a Kubernetes workspace's source: push it to a git host and use its URL"
    )]
    LocalSource(String),
    #[error("host directories cannot be mounted into Kubernetes workspaces ({0})")]
    Mounts(String),
    #[error("no workspace image is configured: kraal serve --kube-image REGISTRY/IMAGE:TAG")]
    NoImage,
    #[error(
        "toleration {0:?}: expected KEY[=VALUE]:EFFECT with EFFECT NoSchedule, PreferNoSchedule or NoExecute"
    )]
    Toleration(String),
    #[error("node selector {0:?}: expected KEY=VALUE")]
    NodeSelector(String),
    #[error("volume size {0:?} is not a Kubernetes quantity like 32Gi")]
    VolumeSize(String),
}

/// Object names of one workspace (workspace ids are lowercase letters, digits and '-').
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    pub pod: String,
    pub claim: String,
    pub secret: String,
}

pub fn names(id: &WorkspaceId) -> Names {
    let base = format!("kraal-{}", id.as_str());
    Names {
        pod: base.clone(),
        claim: format!("{base}-volume"),
        secret: format!("{base}-guest"),
    }
}

/// The labels every object of a workspace carries.
pub fn labels(spec: &SandboxSpec) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY.to_owned(), "kraal".to_owned()),
        (WORKSPACE.to_owned(), spec.id.as_str().to_owned()),
        (NAME.to_owned(), spec.name.as_str().to_owned()),
    ])
}

/// The label selector of one workspace's objects.
pub fn selector(id: &WorkspaceId) -> String {
    format!("{MANAGED_BY}=kraal,{WORKSPACE}={}", id.as_str())
}

/// `KEY[=VALUE]:EFFECT` (`Exists` without a value).
pub fn parse_toleration(s: &str) -> Result<Toleration, ManifestError> {
    let bad = || ManifestError::Toleration(s.to_owned());
    let (kv, effect) = s.rsplit_once(':').ok_or_else(bad)?;
    if !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
        return Err(bad());
    }
    let (key, value) = match kv.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => (kv, None),
    };
    if key.is_empty() || value.is_some_and(str::is_empty) {
        return Err(bad());
    }
    Ok(Toleration {
        key: Some(key.to_owned()),
        operator: Some(if value.is_some() { "Equal" } else { "Exists" }.to_owned()),
        value: value.map(str::to_owned),
        effect: Some(effect.to_owned()),
        ..Default::default()
    })
}

/// `KEY=VALUE`.
pub fn parse_node_selector(s: &str) -> Result<(String, String), ManifestError> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() && !v.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(ManifestError::NodeSelector(s.to_owned())),
    }
}

/// Whether `q` looks like a Kubernetes quantity (`32Gi`, `500M`, `1e9`).
fn is_quantity(q: &str) -> bool {
    let digits = q.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let suffix = &q[digits.len()..];
    !digits.is_empty()
        && digits.chars().all(|c| c.is_ascii_digit() || c == '.')
        && matches!(
            suffix,
            "" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei" | "k" | "M" | "G" | "T" | "P" | "E"
        )
}

/// Checks what a cluster cannot do before anything is created.
pub fn validate(spec: &SandboxSpec, s: &KubeSettings) -> Result<(), ManifestError> {
    if let Source::Local { path } = &spec.source {
        return Err(ManifestError::LocalSource(path.display().to_string()));
    }
    if !spec.mounts.is_empty() {
        let list: Vec<String> = spec.mounts.iter().map(|m| m.path.clone()).collect();
        return Err(ManifestError::Mounts(list.join(", ")));
    }
    if s.image.is_empty() {
        return Err(ManifestError::NoImage);
    }
    if !is_quantity(&s.volume_size) {
        return Err(ManifestError::VolumeSize(s.volume_size.clone()));
    }
    Ok(())
}

fn meta(
    name: &str,
    spec: &SandboxSpec,
    s: &KubeSettings,
    owner: Option<&OwnerReference>,
) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(s.namespace.clone()),
        labels: Some(labels(spec)),
        owner_references: owner.map(|o| vec![o.clone()]),
        ..Default::default()
    }
}

/// The owner reference objects of a workspace point to: its volume claim.
pub fn owned_by_claim(claim: &PersistentVolumeClaim) -> Option<OwnerReference> {
    Some(OwnerReference {
        api_version: "v1".into(),
        kind: "PersistentVolumeClaim".into(),
        name: claim.metadata.name.clone()?,
        uid: claim.metadata.uid.clone()?,
        block_owner_deletion: Some(true),
        controller: Some(true),
    })
}

pub fn claim(spec: &SandboxSpec, s: &KubeSettings) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: meta(&names(&spec.id).claim, spec, s, None),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: s.storage_class.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_owned(),
                    Quantity(s.volume_size.clone()),
                )])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The guest agent's configuration (with its token): a Secret, since it is one.
pub fn secret(spec: &SandboxSpec, s: &KubeSettings, owner: Option<&OwnerReference>) -> Secret {
    let config = serde_json::json!({
        "listen": format!("0.0.0.0:{GUEST_PORT}"),
        "token": spec.guest_token,
        "files_root": "/workspace",
        "hostname": spec.name.as_str(),
    });
    Secret {
        metadata: meta(&names(&spec.id).secret, spec, s, owner),
        type_: Some("Opaque".into()),
        string_data: Some(BTreeMap::from([(
            "guest.json".to_owned(),
            serde_json::to_string_pretty(&config).expect("serializes"),
        )])),
        ..Default::default()
    }
}

/// The clone step: an empty volume gets the repository; a volume with files is left alone
/// (a restarted workspace keeps its work).
fn clone_container(spec: &SandboxSpec, s: &KubeSettings) -> Option<Container> {
    let Source::Git { url, branch } = &spec.source else {
        return None;
    };
    let script = "set -eu\n\
        if [ -n \"$(ls -A /workspace 2>/dev/null)\" ]; then echo 'volume has files; not cloning'; exit 0; fi\n\
        if [ -n \"${KRAAL_BRANCH:-}\" ]; then git clone --branch \"$KRAAL_BRANCH\" -- \"$KRAAL_REPO\" /workspace; \
        else git clone -- \"$KRAAL_REPO\" /workspace; fi\n";
    let mut env = vec![EnvVar {
        name: "KRAAL_REPO".into(),
        value: Some(url.clone()),
        ..Default::default()
    }];
    if let Some(b) = branch {
        env.push(EnvVar {
            name: "KRAAL_BRANCH".into(),
            value: Some(b.clone()),
            ..Default::default()
        });
    }
    Some(Container {
        name: "clone".into(),
        image: Some(s.image.clone()),
        command: Some(vec!["sh".into(), "-c".into(), script.into()]),
        env: Some(env),
        volume_mounts: Some(vec![VolumeMount {
            name: "workspace".into(),
            mount_path: "/workspace".into(),
            ..Default::default()
        }]),
        ..Default::default()
    })
}

fn resources(spec: &SandboxSpec) -> ResourceRequirements {
    let r = &spec.resources;
    let q = BTreeMap::from([
        (
            "cpu".to_owned(),
            Quantity(format!("{}m", (r.cpus * 1000.0).round() as u64)),
        ),
        ("memory".to_owned(), Quantity(format!("{}Mi", r.memory_mib))),
    ]);
    ResourceRequirements {
        requests: Some(q.clone()),
        limits: Some(q),
        ..Default::default()
    }
}

pub fn pod(spec: &SandboxSpec, s: &KubeSettings, owner: Option<&OwnerReference>) -> Pod {
    let n = names(&spec.id);
    Pod {
        metadata: meta(&n.pod, spec, s, owner),
        spec: Some(PodSpec {
            runtime_class_name: s.runtime_class.clone(),
            hostname: Some(spec.name.as_str().to_owned()),
            restart_policy: Some("Always".into()),
            // The guest agent syncs and stops its processes on SIGTERM.
            termination_grace_period_seconds: Some(15),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            node_selector: (!s.node_selector.is_empty()).then(|| s.node_selector.clone()),
            tolerations: (!s.tolerations.is_empty()).then(|| s.tolerations.clone()),
            image_pull_secrets: s.image_pull_secret.as_ref().map(|name| {
                vec![k8s_openapi::api::core::v1::LocalObjectReference { name: name.clone() }]
            }),
            init_containers: clone_container(spec, s).map(|c| vec![c]),
            containers: vec![Container {
                name: "guest".into(),
                image: Some(s.image.clone()),
                command: Some(vec![
                    GUEST_BIN.into(),
                    "--config".into(),
                    format!("{CONFIG_DIR}/guest.json"),
                ]),
                ports: Some(vec![ContainerPort {
                    container_port: GUEST_PORT as i32,
                    name: Some("guest".into()),
                    protocol: Some("TCP".into()),
                    ..Default::default()
                }]),
                resources: Some(resources(spec)),
                volume_mounts: Some(vec![
                    VolumeMount {
                        name: "workspace".into(),
                        mount_path: "/workspace".into(),
                        ..Default::default()
                    },
                    VolumeMount {
                        name: "guest-config".into(),
                        mount_path: CONFIG_DIR.into(),
                        read_only: Some(true),
                        ..Default::default()
                    },
                ]),
                working_dir: Some("/workspace".into()),
                ..Default::default()
            }],
            volumes: Some(vec![
                Volume {
                    name: "workspace".into(),
                    persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                        claim_name: n.claim.clone(),
                        read_only: Some(false),
                    }),
                    ..Default::default()
                },
                Volume {
                    name: "guest-config".into(),
                    secret: Some(SecretVolumeSource {
                        secret_name: Some(n.secret.clone()),
                        default_mode: Some(0o400),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        }),
        ..Default::default()
    }
}
