//! Dev container features: fetching them (OCI artifacts or folders next to the
//! `devcontainer.json`), reading `devcontainer-feature.json`, turning options into the
//! environment `install.sh` sees, and the spec's install order (`dependsOn`,
//! `installsAfter`, `overrideFeatureInstallOrder`, rounds sorted for a stable result).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::devcontainer::{Command, DevContainer};
use crate::{ImageError, io};

fn err(feature: &str, message: impl Into<String>) -> ImageError {
    ImageError::Feature {
        feature: feature.to_owned(),
        message: message.into(),
    }
}

/// One option a feature declares.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OptionSpec {
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub default: Option<Value>,
    #[serde(rename = "enum", default)]
    pub allowed: Option<Vec<Value>>,
}

/// `devcontainer-feature.json`, the parts kraal acts on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FeatureMeta {
    pub id: String,
    pub version: Option<String>,
    pub options: BTreeMap<String, OptionSpec>,
    pub container_env: BTreeMap<String, String>,
    /// Reference → options.
    pub depends_on: BTreeMap<String, BTreeMap<String, Value>>,
    pub installs_after: Vec<String>,
    /// onCreate, updateContent, postCreate.
    pub create_commands: Vec<Command>,
    pub post_start: Option<Command>,
}

const META_KEYS: &[&str] = &[
    "id",
    "version",
    "name",
    "description",
    "documentationURL",
    "licenseURL",
    "keywords",
    "options",
    "containerEnv",
    "dependsOn",
    "installsAfter",
    "legacyIds",
    "deprecated",
    "customizations",
    "onCreateCommand",
    "updateContentCommand",
    "postCreateCommand",
    "postStartCommand",
    "$schema",
];

impl FeatureMeta {
    pub fn parse(feature: &str, text: &str) -> Result<FeatureMeta, ImageError> {
        let v = crate::devcontainer::parse_jsonc(Path::new("devcontainer-feature.json"), text)
            .map_err(|e| err(feature, e.to_string()))?;
        let Value::Object(o) = v else {
            return Err(err(feature, "devcontainer-feature.json must be an object"));
        };
        let unsupported: Vec<&String> = o
            .keys()
            .filter(|k| !META_KEYS.contains(&k.as_str()))
            .collect();
        if !unsupported.is_empty() {
            return Err(err(
                feature,
                format!(
                    "needs {} which kraal sandboxes do not support",
                    unsupported
                        .iter()
                        .map(|k| format!("{k:?}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        let get = |k: &str| o.get(k).cloned().unwrap_or(Value::Null);
        let field = |k: &str, what: &str| {
            err(
                feature,
                format!("devcontainer-feature.json: {k} must be {what}"),
            )
        };
        let id = get("id")
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| field("id", "a string"))?;
        let options = match get("options") {
            Value::Null => BTreeMap::new(),
            v => serde_json::from_value(v)
                .map_err(|_| field("options", "an object of option specs"))?,
        };
        let container_env: BTreeMap<String, String> = match get("containerEnv") {
            Value::Null => BTreeMap::new(),
            v => serde_json::from_value(v)
                .map_err(|_| field("containerEnv", "an object of strings"))?,
        };
        for k in container_env.keys() {
            crate::recipe::check_env_name(k).map_err(|m| err(feature, m))?;
        }
        let depends_on = match get("dependsOn") {
            Value::Null => BTreeMap::new(),
            v => serde_json::from_value(v)
                .map_err(|_| field("dependsOn", "an object of option objects"))?,
        };
        let installs_after = match get("installsAfter") {
            Value::Null => vec![],
            v => serde_json::from_value(v)
                .map_err(|_| field("installsAfter", "an array of strings"))?,
        };
        let cmd = |k: &str| -> Result<Option<Command>, ImageError> {
            match get(k) {
                Value::Null => Ok(None),
                v => serde_json::from_value(v)
                    .map(Some)
                    .map_err(|_| field(k, "a command")),
            }
        };
        let mut create_commands = Vec::new();
        for k in [
            "onCreateCommand",
            "updateContentCommand",
            "postCreateCommand",
        ] {
            create_commands.extend(cmd(k)?);
        }
        Ok(FeatureMeta {
            id,
            version: get("version").as_str().map(str::to_owned),
            options,
            container_env,
            depends_on,
            installs_after,
            create_commands,
            post_start: cmd("postStartCommand")?,
        })
    }
}

/// A fetched feature with the options it is installed with.
#[derive(Debug, Clone)]
pub struct Feature {
    /// As written in `devcontainer.json` or a `dependsOn`.
    pub reference: String,
    /// The reference without its version: what `installsAfter` and
    /// `overrideFeatureInstallOrder` name.
    pub resource: String,
    /// The feature's files (`install.sh`, `devcontainer-feature.json`, ...).
    pub dir: PathBuf,
    /// Manifest digest or content hash: the cache key of what gets installed.
    pub content: String,
    pub meta: FeatureMeta,
    pub options: BTreeMap<String, Value>,
}

/// The reference without tag or digest (`ghcr.io/devcontainers/features/node`), or a
/// local feature's path.
pub fn resource_of(reference: &str) -> String {
    if reference.starts_with("./") || reference.starts_with("../") {
        return reference.trim_end_matches('/').to_owned();
    }
    let no_digest = reference.split('@').next().unwrap_or(reference);
    match no_digest.rsplit_once(':') {
        Some((head, tag)) if !tag.contains('/') => head.to_owned(),
        _ => no_digest.to_owned(),
    }
}

/// An option name as an environment variable (the spec's rule).
pub fn option_env_name(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let trimmed = s.trim_start_matches(|c: char| c.is_ascii_digit() || c == '_');
    let s = if trimmed.len() != s.len() {
        format!("_{trimmed}")
    } else {
        s
    };
    s.to_ascii_uppercase()
}

fn value_str(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        v => v.to_string(),
    }
}

impl Feature {
    /// The options as `install.sh` sees them: every declared option, from the user or its
    /// default. Unknown options and values outside an `enum` are errors.
    pub fn option_env(&self) -> Result<BTreeMap<String, String>, ImageError> {
        for k in self.options.keys() {
            if !self.meta.options.contains_key(k) {
                return Err(err(
                    &self.reference,
                    format!(
                        "has no option {k:?} (it has: {})",
                        self.meta
                            .options
                            .keys()
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
        }
        let mut env = BTreeMap::new();
        for (name, spec) in &self.meta.options {
            let v = self
                .options
                .get(name)
                .or(spec.default.as_ref())
                .cloned()
                .unwrap_or(Value::Null);
            if let Some(allowed) = &spec.allowed
                && !v.is_null()
                && !allowed.iter().any(|a| value_str(a) == value_str(&v))
            {
                return Err(err(
                    &self.reference,
                    format!(
                        "option {name} = {v} is not one of {}",
                        allowed.iter().map(value_str).collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
            if spec.kind.as_deref() == Some("boolean")
                && !matches!(&v, Value::Bool(_) | Value::Null)
                && !matches!(value_str(&v).as_str(), "true" | "false")
            {
                return Err(err(
                    &self.reference,
                    format!("option {name} must be true or false, not {v}"),
                ));
            }
            env.insert(option_env_name(name), value_str(&v));
        }
        Ok(env)
    }

    fn key(&self) -> (String, String) {
        (
            self.resource.clone(),
            serde_json::to_string(&self.options).unwrap_or_default(),
        )
    }
}

/// Hash of a directory tree's paths, modes and contents.
pub fn tree_hash(dir: &Path) -> Result<String, ImageError> {
    use sha2::{Digest, Sha256};
    use std::os::unix::fs::PermissionsExt;
    let mut h = Sha256::new();
    let mut entries: Vec<_> = walkdir::WalkDir::new(dir)
        .sort_by_file_name()
        .into_iter()
        .collect::<Result<_, _>>()
        .map_err(|e| io(dir)(e.into()))?;
    entries.retain(|e| e.depth() > 0);
    for e in entries {
        let rel = e.path().strip_prefix(dir).unwrap_or(e.path());
        let md = e.path().symlink_metadata().map_err(io(e.path()))?;
        h.update(rel.to_string_lossy().as_bytes());
        h.update(md.permissions().mode().to_le_bytes());
        if md.is_file() {
            h.update(std::fs::read(e.path()).map_err(io(e.path()))?);
        } else if md.file_type().is_symlink() {
            h.update(
                std::fs::read_link(e.path())
                    .map_err(io(e.path()))?
                    .to_string_lossy()
                    .as_bytes(),
            );
        }
        h.update([0]);
    }
    Ok(format!("sha256:{}", hex::encode(h.finalize())))
}

/// Fetches one feature into `dest`.
async fn fetch(
    dc: &DevContainer,
    reference: &str,
    options: BTreeMap<String, Value>,
    dest: &Path,
) -> Result<Feature, ImageError> {
    let (dir, content) = if reference.starts_with("./") || reference.starts_with("../") {
        // Local features live in the folder of devcontainer.json (the spec requires it).
        let base = dc.path.parent().unwrap_or(Path::new("."));
        let dir = base.join(reference);
        let real = dir.canonicalize().map_err(|_| {
            err(
                reference,
                format!("folder {} does not exist", dir.display()),
            )
        })?;
        let base_real = base.canonicalize().map_err(io(base))?;
        if !real.starts_with(&base_real) {
            return Err(err(
                reference,
                "a local feature must be inside the folder of devcontainer.json",
            ));
        }
        let content = tree_hash(&real)?;
        (real, content)
    } else if reference.contains("://") || reference.ends_with(".tgz") {
        return Err(err(
            reference,
            "features from tarball URLs are not supported; publish it to an OCI registry or put it next to devcontainer.json",
        ));
    } else if !reference.contains('/') {
        return Err(err(
            reference,
            "short feature names are deprecated and not supported; use the full OCI reference (e.g. ghcr.io/devcontainers/features/NAME:1)",
        ));
    } else {
        let digest = crate::registry::pull_feature(reference, dest).await?;
        (dest.to_owned(), digest)
    };
    let meta_path = dir.join("devcontainer-feature.json");
    let text = std::fs::read_to_string(&meta_path)
        .map_err(|_| err(reference, "has no devcontainer-feature.json"))?;
    let meta = FeatureMeta::parse(reference, &text)?;
    if !dir.join("install.sh").is_file() {
        return Err(err(reference, "has no install.sh"));
    }
    Ok(Feature {
        reference: reference.to_owned(),
        resource: resource_of(reference),
        dir,
        content,
        meta,
        options,
    })
}

/// Fetches the features of `dc` and everything they depend on into `scratch`, and
/// returns them in install order.
pub async fn resolve(dc: &DevContainer, scratch: &Path) -> Result<Vec<Feature>, ImageError> {
    let mut queue: Vec<(String, BTreeMap<String, Value>)> = dc.features.clone();
    queue.reverse();
    let mut seen = BTreeSet::new();
    let mut all = Vec::new();
    while let Some((reference, options)) = queue.pop() {
        let key = (
            resource_of(&reference),
            serde_json::to_string(&options).unwrap_or_default(),
        );
        if !seen.insert(key) {
            continue;
        }
        if all.len() >= 100 {
            return Err(err(
                &reference,
                "more than 100 features (a dependsOn loop?)",
            ));
        }
        let dest = scratch.join(format!("feature-{}", all.len()));
        let f = fetch(dc, &reference, options, &dest).await?;
        for (r, o) in &f.meta.depends_on {
            queue.push((r.clone(), o.clone()));
        }
        all.push(f);
    }
    order(all, &dc.override_feature_install_order)
}

/// The spec's install order: a feature comes after its `dependsOn` (hard) and after the
/// features it `installsAfter` that are present (soft). In each round, of the features
/// whose dependencies are installed, those ranked highest by
/// `overrideFeatureInstallOrder` go first; ties go by reference.
pub fn order(features: Vec<Feature>, overrides: &[String]) -> Result<Vec<Feature>, ImageError> {
    let n = features.len();
    let present: BTreeSet<String> = features.iter().map(|f| f.resource.clone()).collect();
    let deps: Vec<BTreeSet<usize>> = features
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let hard = f.meta.depends_on.keys().map(|r| resource_of(r));
            let soft = f
                .meta
                .installs_after
                .iter()
                .map(|r| resource_of(r))
                .filter(|r| present.contains(r));
            let wanted: BTreeSet<String> = hard.chain(soft).collect();
            features
                .iter()
                .enumerate()
                .filter(|(j, g)| *j != i && wanted.contains(&g.resource))
                .map(|(j, _)| j)
                .collect()
        })
        .collect();
    let over: Vec<String> = overrides.iter().map(|r| resource_of(r)).collect();
    for o in &over {
        if !present.contains(o) {
            return Err(err(
                o,
                "is named in overrideFeatureInstallOrder but not used",
            ));
        }
    }
    let priority = |f: &Feature| {
        over.iter()
            .position(|r| *r == f.resource)
            .map(|i| over.len() - i)
            .unwrap_or(0)
    };
    let mut done = vec![false; n];
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let ready: Vec<usize> = (0..n)
            .filter(|&i| !done[i] && deps[i].iter().all(|&d| done[d]))
            .collect();
        if ready.is_empty() {
            let stuck: Vec<&str> = (0..n)
                .filter(|&i| !done[i])
                .map(|i| features[i].reference.as_str())
                .collect();
            return Err(err(
                &stuck.join(", "),
                "depend on each other (a cycle in dependsOn/installsAfter)",
            ));
        }
        let top = ready
            .iter()
            .map(|&i| priority(&features[i]))
            .max()
            .unwrap_or(0);
        let mut round: Vec<usize> = ready
            .into_iter()
            .filter(|&i| priority(&features[i]) == top)
            .collect();
        round.sort_by_key(|&i| features[i].key());
        for i in round {
            done[i] = true;
            out.push(i);
        }
    }
    let mut slots: Vec<Option<Feature>> = features.into_iter().map(Some).collect();
    Ok(out
        .into_iter()
        .map(|i| slots[i].take().expect("each once"))
        .collect())
}

/// Writes the option and built-in environment files next to a staged copy of the feature
/// and returns the command that installs it.
pub fn stage(
    f: &Feature,
    staging: &Path,
    remote_user: &str,
    container_user: &str,
) -> Result<Vec<String>, ImageError> {
    copy_tree(&f.dir, staging)?;
    let quote = |v: &str| {
        format!(
            "\"{}\"",
            v.replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('$', "\\$")
                .replace('`', "\\`")
        )
    };
    let mut opts = String::new();
    for (k, v) in f.option_env()? {
        opts.push_str(&format!("{k}={}\n", quote(&v)));
    }
    let p = staging.join("devcontainer-features.env");
    std::fs::write(&p, opts).map_err(io(&p))?;
    let home = |u: &str| {
        if u == "root" {
            "/root".to_owned()
        } else {
            format!("/home/{u}")
        }
    };
    let builtin = format!(
        "_REMOTE_USER={}\n_REMOTE_USER_HOME={}\n_CONTAINER_USER={}\n_CONTAINER_USER_HOME={}\n",
        quote(remote_user),
        quote(&home(remote_user)),
        quote(container_user),
        quote(&home(container_user)),
    );
    let p = staging.join("devcontainer-features.builtin.env");
    std::fs::write(&p, builtin).map_err(io(&p))?;
    Ok(vec![
        "/bin/sh".into(),
        "-c".into(),
        format!(
            "set -e; cd {}; set -a; . ./devcontainer-features.builtin.env; . ./devcontainer-features.env; set +a; chmod +x ./install.sh; ./install.sh",
            crate::devbuild::FEATURE_MOUNT
        ),
    ])
}

/// Copies a directory tree (files, links, modes).
pub fn copy_tree(from: &Path, to: &Path) -> Result<(), ImageError> {
    use std::os::unix::fs::PermissionsExt;
    for e in walkdir::WalkDir::new(from) {
        let e = e.map_err(|e| io(from)(e.into()))?;
        let rel = e.path().strip_prefix(from).unwrap_or(e.path());
        let dst = to.join(rel);
        let md = e.path().symlink_metadata().map_err(io(e.path()))?;
        if md.is_dir() {
            std::fs::create_dir_all(&dst).map_err(io(&dst))?;
        } else if md.file_type().is_symlink() {
            let t = std::fs::read_link(e.path()).map_err(io(e.path()))?;
            std::os::unix::fs::symlink(t, &dst).map_err(io(&dst))?;
        } else if md.is_file() {
            std::fs::copy(e.path(), &dst).map_err(io(&dst))?;
            std::fs::set_permissions(
                &dst,
                std::fs::Permissions::from_mode(md.permissions().mode()),
            )
            .map_err(io(&dst))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feat(reference: &str, meta: serde_json::Value) -> Feature {
        let mut m = serde_json::json!({ "id": resource_of(reference).rsplit('/').next().unwrap() });
        m.as_object_mut()
            .unwrap()
            .extend(meta.as_object().unwrap().clone());
        Feature {
            reference: reference.into(),
            resource: resource_of(reference),
            dir: PathBuf::new(),
            content: String::new(),
            meta: FeatureMeta::parse(reference, &m.to_string()).unwrap(),
            options: BTreeMap::new(),
        }
    }

    fn refs(v: &[Feature]) -> Vec<&str> {
        v.iter()
            .map(|f| f.resource.rsplit('/').next().unwrap())
            .collect()
    }

    #[test]
    fn resources_drop_versions() {
        assert_eq!(
            resource_of("ghcr.io/devcontainers/features/node:1"),
            "ghcr.io/devcontainers/features/node"
        );
        assert_eq!(
            resource_of("localhost:5000/f/node@sha256:abc"),
            "localhost:5000/f/node"
        );
        assert_eq!(
            resource_of("localhost:5000/f/node"),
            "localhost:5000/f/node"
        );
        assert_eq!(resource_of("./local/"), "./local");
    }

    #[test]
    fn install_order_follows_the_spec() {
        // c depends on a; b installs after c; d has no constraints.
        let fs = vec![
            feat("r/b:1", serde_json::json!({ "installsAfter": ["r/c"] })),
            feat("r/d:1", serde_json::json!({})),
            feat("r/c:2", serde_json::json!({ "dependsOn": { "r/a:1": {} } })),
            feat("r/a:1", serde_json::json!({})),
        ];
        let o = order(fs.clone(), &[]).unwrap();
        // Round 1: a, d (sorted); round 2: c; round 3: b.
        assert_eq!(refs(&o), ["a", "d", "c", "b"]);
        // The override ranks d first and b before the rest in its round.
        let o = order(fs.clone(), &["r/d".into()]).unwrap();
        assert_eq!(refs(&o), ["d", "a", "c", "b"]);
        // installsAfter of a feature that is not present is ignored.
        let o = order(
            vec![feat(
                "r/x:1",
                serde_json::json!({ "installsAfter": ["r/nope"] }),
            )],
            &[],
        )
        .unwrap();
        assert_eq!(refs(&o), ["x"]);
        // Cycles are errors naming the features.
        let e = order(
            vec![
                feat("r/p:1", serde_json::json!({ "installsAfter": ["r/q"] })),
                feat("r/q:1", serde_json::json!({ "dependsOn": { "r/p": {} } })),
            ],
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("cycle") && e.contains("r/p:1"), "{e}");
        assert!(
            order(fs, &["r/zzz".into()])
                .unwrap_err()
                .to_string()
                .contains("not used")
        );
    }

    #[test]
    fn options_become_environment() {
        let mut f = feat(
            "r/tool:1",
            serde_json::json!({ "options": {
                "version": { "type": "string", "default": "lts", "enum": ["lts", "20", "22"] },
                "install-extras": { "type": "boolean", "default": false },
                "9lives": { "type": "string", "default": "x" },
            }}),
        );
        f.options.insert("version".into(), "22".into());
        let env = f.option_env().unwrap();
        assert_eq!(env["VERSION"], "22");
        assert_eq!(env["INSTALL_EXTRAS"], "false");
        assert_eq!(env["_LIVES"], "x");
        f.options.insert("version".into(), "18".into());
        assert!(
            f.option_env()
                .unwrap_err()
                .to_string()
                .contains("not one of")
        );
        f.options.clear();
        f.options.insert("colour".into(), "red".into());
        assert!(
            f.option_env()
                .unwrap_err()
                .to_string()
                .contains("no option \"colour\"")
        );
    }

    #[test]
    fn unsupported_feature_properties_are_named() {
        let e = FeatureMeta::parse(
            "r/dind:2",
            r#"{"id": "dind", "privileged": true, "entrypoint": "/x"}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("r/dind:2") && e.contains("\"privileged\"") && e.contains("\"entrypoint\""),
            "{e}"
        );
    }
}
