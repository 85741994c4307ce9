//! Pulling from OCI registries: container images (unpacked layer by layer, whiteouts
//! applied) and dev container features (OCI artifacts holding one tar layer). Credentials
//! come from the Docker client's `config.json`; loopback registries and those listed in
//! `KRAAL_INSECURE_REGISTRIES` are spoken to over plain HTTP.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine as _;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::{OciDescriptor, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde::{Deserialize, Serialize};

use crate::ImageError;

/// Media type of a dev container feature's layer.
pub const FEATURE_LAYER: &str = "application/vnd.devcontainers.layer.v1+tar";
/// Media type of a dev container feature's (empty) config.
pub const FEATURE_CONFIG: &str = "application/vnd.devcontainers";

/// What an image's config says about running it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseConfig {
    pub env: BTreeMap<String, String>,
    pub user: Option<String>,
    pub workdir: Option<String>,
    pub ports: Vec<u16>,
}

impl BaseConfig {
    /// Reads the `config` object of an OCI/Docker image config.
    pub fn from_image_config(json: &serde_json::Value) -> BaseConfig {
        let c = &json["config"];
        let env = c["Env"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e.as_str()?.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let s = |k: &str| c[k].as_str().filter(|s| !s.is_empty()).map(str::to_owned);
        let ports = c["ExposedPorts"]
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(k, _)| k.split('/').next()?.parse().ok())
            .collect();
        BaseConfig {
            env,
            user: s("User"),
            workdir: s("WorkingDir"),
            ports,
        }
    }
}

fn err(reference: &str, message: impl Into<String>) -> ImageError {
    ImageError::Registry {
        reference: reference.to_owned(),
        message: message.into(),
    }
}

/// Whether `registry` (`host[:port]`) is spoken to over plain HTTP.
pub fn insecure(registry: &str) -> bool {
    let host = registry
        .rsplit_once(':')
        .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
        .map(|(h, _)| h)
        .unwrap_or(registry);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    loopback
        || std::env::var("KRAAL_INSECURE_REGISTRIES")
            .unwrap_or_default()
            .split(',')
            .any(|r| r.trim() == registry)
}

/// Credentials for `registry` from the Docker client configuration, if any.
fn auth_for(registry: &str) -> RegistryAuth {
    let path = std::env::var_os("DOCKER_CONFIG")
        .map(|d| Path::new(&d).join("config.json"))
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".docker/config.json")));
    let Some(text) = path.and_then(|p| std::fs::read(p).ok()) else {
        return RegistryAuth::Anonymous;
    };
    let Ok(cfg) = serde_json::from_slice::<serde_json::Value>(&text) else {
        return RegistryAuth::Anonymous;
    };
    let keys = [
        registry.to_owned(),
        format!("https://{registry}"),
        if registry == "docker.io" || registry == "index.docker.io" {
            "https://index.docker.io/v1/".to_owned()
        } else {
            String::new()
        },
    ];
    for k in keys.iter().filter(|k| !k.is_empty()) {
        if let Some(a) = cfg["auths"][k]["auth"].as_str()
            && let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(a)
            && let Ok(s) = String::from_utf8(raw)
            && let Some((u, p)) = s.split_once(':')
        {
            return RegistryAuth::Basic(u.to_owned(), p.to_owned());
        }
    }
    RegistryAuth::Anonymous
}

/// A client for the registry of `r`, with its credentials.
pub fn client(r: &Reference) -> (Client, RegistryAuth) {
    let registry = r.resolve_registry().to_owned();
    let protocol = if insecure(r.registry()) {
        ClientProtocol::Http
    } else {
        ClientProtocol::Https
    };
    let cfg = ClientConfig {
        protocol,
        connect_timeout: Some(std::time::Duration::from_secs(20)),
        read_timeout: Some(std::time::Duration::from_secs(120)),
        ..Default::default()
    };
    (Client::new(cfg), auth_for(&registry))
}

pub fn parse_reference(reference: &str) -> Result<Reference, ImageError> {
    reference
        .parse::<Reference>()
        .map_err(|e| err(reference, format!("not an image reference: {e}")))
}

/// A resolved image: its manifest digest, layers and config.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub reference: Reference,
    pub digest: String,
    pub manifest: OciImageManifest,
    pub config: BaseConfig,
}

/// Looks `reference` up (for the running platform when it is multi-platform).
pub async fn resolve(reference: &str) -> Result<Resolved, ImageError> {
    let r = parse_reference(reference)?;
    let (c, auth) = client(&r);
    let (manifest, digest, config) = c
        .pull_manifest_and_config(&r, &auth)
        .await
        .map_err(|e| err(reference, kraal_sandbox::error_chain(&e)))?;
    let config: serde_json::Value = serde_json::from_str(&config)
        .map_err(|e| err(reference, format!("image config is not JSON: {e}")))?;
    Ok(Resolved {
        reference: r,
        digest,
        config: BaseConfig::from_image_config(&config),
        manifest,
    })
}

const LAYER_TYPES: &[&str] = &[
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.diff.tar",
];

/// Downloads `layer` into `file`, checking its digest.
async fn fetch_blob(
    c: &Client,
    r: &Reference,
    layer: &OciDescriptor,
    file: &Path,
) -> Result<(), ImageError> {
    let out = tokio::fs::File::create(file)
        .await
        .map_err(crate::io(file))?;
    c.pull_blob(r, layer, out).await.map_err(|e| {
        err(
            &r.whole(),
            format!("layer {}: {}", layer.digest, kraal_sandbox::error_chain(&e)),
        )
    })
}

/// Unpacks the image's layers in order into `dest` (applying whiteouts). `line` hears
/// about each layer.
pub async fn unpack(
    img: &Resolved,
    dest: &Path,
    scratch: &Path,
    line: &(dyn Fn(String) + Send + Sync),
) -> Result<(), ImageError> {
    let reference = img.reference.whole();
    for l in &img.manifest.layers {
        if !LAYER_TYPES.contains(&l.media_type.as_str()) {
            return Err(err(
                &reference,
                format!(
                    "layer {} has media type {}, which kraal cannot unpack (gzip or plain tar only)",
                    l.digest, l.media_type
                ),
            ));
        }
    }
    let (c, auth) = client(&img.reference);
    c.store_auth_if_needed(img.reference.resolve_registry(), &auth)
        .await;
    let n = img.manifest.layers.len();
    for (i, l) in img.manifest.layers.iter().enumerate() {
        line(format!(
            "layer {}/{n}: {} ({:.1} MB)",
            i + 1,
            &l.digest,
            l.size as f64 / 1e6
        ));
        let blob = scratch.join(format!("blob-{i}"));
        fetch_blob(&c, &img.reference, l, &blob).await?;
        let (b, d) = (blob.clone(), dest.to_owned());
        tokio::task::spawn_blocking(move || {
            let f = std::fs::File::open(&b)?;
            crate::oci::unpack_layer(f, &d)
        })
        .await
        .expect("unpacking does not panic")
        .map_err(|e| {
            err(
                &reference,
                format!(
                    "unpacking layer {}: {}",
                    l.digest,
                    kraal_sandbox::error_chain(&e)
                ),
            )
        })?;
        let _ = std::fs::remove_file(&blob);
    }
    Ok(())
}

/// Pulls a dev container feature and unpacks it into `dest`; returns its manifest digest.
pub async fn pull_feature(reference: &str, dest: &Path) -> Result<String, ImageError> {
    let r = parse_reference(reference)?;
    let (c, auth) = client(&r);
    let (manifest, digest) = c
        .pull_image_manifest(&r, &auth)
        .await
        .map_err(|e| err(reference, kraal_sandbox::error_chain(&e)))?;
    let layer = match manifest.layers.as_slice() {
        [l] if l.media_type == FEATURE_LAYER => l.clone(),
        _ => {
            return Err(err(
                reference,
                format!("not a dev container feature: expected one layer of type {FEATURE_LAYER}"),
            ));
        }
    };
    std::fs::create_dir_all(dest).map_err(crate::io(dest))?;
    let blob = dest.with_extension("tar");
    fetch_blob(&c, &r, &layer, &blob).await?;
    let (b, d) = (blob.clone(), dest.to_owned());
    let res = tokio::task::spawn_blocking(move || {
        let f = std::fs::File::open(&b)?;
        crate::oci::unpack_layer(f, &d)
    })
    .await
    .expect("unpacking does not panic");
    let _ = std::fs::remove_file(&blob);
    res.map_err(|e| {
        err(
            reference,
            format!("unpacking the feature: {}", kraal_sandbox::error_chain(&e)),
        )
    })?;
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_registries_use_http() {
        assert!(insecure("127.0.0.1:5000"));
        assert!(insecure("localhost:5000"));
        assert!(insecure("[::1]:5000"));
        assert!(!insecure("ghcr.io"));
        assert!(!insecure("registry.example:5000"));
    }

    #[test]
    fn image_config_fields() {
        let c = BaseConfig::from_image_config(&serde_json::json!({
            "config": { "Env": ["PATH=/usr/bin", "A=b=c"], "User": "dev", "WorkingDir": "/app",
                        "ExposedPorts": { "8080/tcp": {} } }
        }));
        assert_eq!(c.env["A"], "b=c");
        assert_eq!(c.user.as_deref(), Some("dev"));
        assert_eq!(c.workdir.as_deref(), Some("/app"));
        assert_eq!(c.ports, vec![8080]);
    }
}
