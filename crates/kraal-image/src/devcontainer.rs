//! `devcontainer.json`: finds it in a project, parses it as JSON with comments, checks every
//! property against what kraal supports (anything else is an error that names it) and
//! resolves it into a [`DevContainer`] the image builder can act on.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ImageError;

/// Where the workspace's files are inside the sandbox (`${containerWorkspaceFolder}`).
pub const WORKSPACE_FOLDER: &str = "/workspace";

/// Properties kraal acts on.
const SUPPORTED: &[&str] = &[
    "name",
    "image",
    "build",
    "features",
    "overrideFeatureInstallOrder",
    "containerEnv",
    "remoteEnv",
    "remoteUser",
    "containerUser",
    "onCreateCommand",
    "updateContentCommand",
    "postCreateCommand",
    "postStartCommand",
    "forwardPorts",
    "workspaceFolder",
];

/// Properties that only concern other tools or have no meaning for a kraal sandbox; they
/// are accepted and have no effect.
const NO_EFFECT: &[&str] = &[
    "$schema",
    "customizations",
    "portsAttributes",
    "otherPortsAttributes",
    "updateRemoteUserUID",
    "userEnvProbe",
    "waitFor",
    "shutdownAction",
    "overrideCommand",
    "hostRequirements",
];

const BUILD_KEYS: &[&str] = &["dockerfile", "context", "args"];

/// A lifecycle command in one of the three forms of the spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Command {
    /// Run by `/bin/sh -c`.
    Shell(String),
    /// Run directly, no shell.
    Exec(Vec<String>),
    /// Named commands run in parallel.
    Parallel(BTreeMap<String, Command>),
}

impl Command {
    /// The argument vectors to run in parallel (one for the non-parallel forms).
    pub fn argvs(&self) -> Vec<Vec<String>> {
        match self {
            Command::Shell(s) => vec![vec!["/bin/sh".into(), "-c".into(), s.clone()]],
            Command::Exec(v) => vec![v.clone()],
            Command::Parallel(m) => m.values().flat_map(Command::argvs).collect(),
        }
    }

    fn validate(&self, what: &str) -> Result<(), String> {
        match self {
            Command::Shell(s) if s.trim().is_empty() => Err(format!("{what} is empty")),
            Command::Exec(v) if v.is_empty() || v[0].is_empty() => {
                Err(format!("{what} has no program"))
            }
            Command::Parallel(m) => m
                .iter()
                .try_for_each(|(k, c)| c.validate(&format!("{what}.{k}"))),
            _ => Ok(()),
        }
    }
}

/// Where the image starts from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Base {
    /// An image reference pulled from an OCI registry.
    Image(String),
    /// A Dockerfile whose steps kraal runs in a sandbox.
    Dockerfile {
        dockerfile: PathBuf,
        context: PathBuf,
        args: BTreeMap<String, String>,
    },
}

/// A resolved `devcontainer.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevContainer {
    /// The file it came from.
    pub path: PathBuf,
    pub name: Option<String>,
    pub base: Base,
    /// Feature reference → options, in the file's order.
    pub features: Vec<(String, BTreeMap<String, Value>)>,
    pub override_feature_install_order: Vec<String>,
    pub container_env: BTreeMap<String, String>,
    /// `null` values unset a variable.
    pub remote_env: BTreeMap<String, Option<String>>,
    pub remote_user: Option<String>,
    pub container_user: Option<String>,
    /// onCreate, updateContent and postCreate, in that order.
    pub create_commands: Vec<(String, Command)>,
    pub post_start: Option<Command>,
    pub forward_ports: Vec<u16>,
}

/// The file kraal uses in a project directory, if any: `.devcontainer/devcontainer.json`
/// or `.devcontainer.json`.
pub fn find(project: &Path) -> Option<PathBuf> {
    [
        project.join(".devcontainer/devcontainer.json"),
        project.join(".devcontainer.json"),
    ]
    .into_iter()
    .find(|p| p.is_file())
}

/// The project directory a `devcontainer.json` belongs to: the parent of `.devcontainer/`,
/// or the directory of a `.devcontainer.json`.
fn root_of(path: &Path) -> PathBuf {
    let dir = path.parent().unwrap_or(Path::new("."));
    match dir.file_name() {
        Some(n) if n == ".devcontainer" => dir.parent().unwrap_or(dir).to_owned(),
        _ => dir.to_owned(),
    }
}

/// Whether `real` (already canonical) lies in `root` once its links are resolved.
fn inside(real: &Path, root: &Path) -> bool {
    root.canonicalize().is_ok_and(|r| real.starts_with(r))
}

fn err(path: &Path, message: impl Into<String>) -> ImageError {
    ImageError::DevContainer {
        path: path.to_owned(),
        message: message.into(),
    }
}

/// Parses JSON with comments and trailing commas (what VS Code and the devcontainer CLI
/// accept), reporting the line and column of a syntax error.
pub fn parse_jsonc(path: &Path, text: &str) -> Result<Value, ImageError> {
    let opts = jsonc_parser::ParseOptions {
        allow_comments: true,
        allow_loose_object_property_names: false,
        allow_trailing_commas: true,
        allow_missing_commas: false,
        allow_single_quoted_strings: false,
        allow_hexadecimal_numbers: false,
        allow_unary_plus_numbers: false,
        allow_bare_decimal_point_numbers: false,
        allow_non_finite_numbers: false,
        allow_extended_string_escapes: false,
    };
    match jsonc_parser::parse_to_serde_value(text, &opts) {
        Ok(Some(v)) => Ok(v),
        Ok(None) => Err(err(path, "the file is empty")),
        Err(e) => Err(err(
            path,
            format!(
                "invalid JSON at line {}, column {}: {}",
                e.line_display(),
                e.column_display(),
                e.kind()
            ),
        )),
    }
}

/// Replaces `${...}` variables in every string of `v`. `${localEnv:...}` is refused: the
/// daemon's environment holds credentials that must never reach a sandbox.
fn substitute(path: &Path, v: &mut Value, project: &Path) -> Result<(), ImageError> {
    match v {
        Value::String(s) => {
            *s = substitute_str(s, project).map_err(|m| err(path, m))?;
            Ok(())
        }
        Value::Array(a) => a.iter_mut().try_for_each(|x| substitute(path, x, project)),
        Value::Object(m) => m
            .values_mut()
            .try_for_each(|x| substitute(path, x, project)),
        _ => Ok(()),
    }
}

fn substitute_str(s: &str, project: &Path) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let Some(end) = after.find('}') else {
            return Err(format!("unterminated variable in {s:?}"));
        };
        let var = &after[..end];
        let base = |p: &Path| {
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        match var {
            "localWorkspaceFolder" => out.push_str(&project.to_string_lossy()),
            "localWorkspaceFolderBasename" => out.push_str(&base(project)),
            "containerWorkspaceFolder" => out.push_str(WORKSPACE_FOLDER),
            "containerWorkspaceFolderBasename" => out.push_str(&base(Path::new(WORKSPACE_FOLDER))),
            // Resolved when the image's environment is known (remoteEnv only).
            v if v.starts_with("containerEnv:") => {
                out.push_str("${");
                out.push_str(v);
                out.push('}');
            }
            v if v.starts_with("localEnv:") || v.starts_with("env:") => {
                return Err(format!(
                    "${{{v}}} is not supported: the daemon's environment holds credentials that must not reach a sandbox; write the value or use a kraal secret"
                ));
            }
            v => return Err(format!("unknown variable ${{{v}}} in {s:?}")),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Resolves `${containerEnv:NAME[:default]}` against the image's environment.
pub fn resolve_container_env(s: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("${containerEnv:") {
        out.push_str(&rest[..i]);
        let after = &rest[i + "${containerEnv:".len()..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[i..]);
            return out;
        };
        let spec = &after[..end];
        let (name, default) = spec.split_once(':').unwrap_or((spec, ""));
        out.push_str(env.get(name).map(String::as_str).unwrap_or(default));
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

fn env_map(
    path: &Path,
    key: &str,
    v: &Value,
) -> Result<BTreeMap<String, Option<String>>, ImageError> {
    let Value::Object(m) = v else {
        return Err(err(path, format!("{key} must be an object of strings")));
    };
    let mut out = BTreeMap::new();
    for (k, v) in m {
        crate::recipe::check_env_name(k).map_err(|m| err(path, format!("{key}: {m}")))?;
        let val = match v {
            Value::String(s) => Some(s.clone()),
            Value::Null => None,
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => return Err(err(path, format!("{key}.{k} must be a string"))),
        };
        out.insert(k.clone(), val);
    }
    Ok(out)
}

fn command(path: &Path, key: &str, v: &Value) -> Result<Command, ImageError> {
    let c: Command = serde_json::from_value(v.clone()).map_err(|_| {
        err(
            path,
            format!("{key} must be a string, an array of strings or an object of those"),
        )
    })?;
    c.validate(key).map_err(|m| err(path, m))?;
    Ok(c)
}

fn string(path: &Path, key: &str, v: &Value) -> Result<String, ImageError> {
    match v {
        Value::String(s) if !s.trim().is_empty() => Ok(s.clone()),
        _ => Err(err(path, format!("{key} must be a non-empty string"))),
    }
}

impl DevContainer {
    /// Reads and resolves `path`; `project` is the directory whose files the workspace gets.
    pub fn load(path: &Path, project: &Path) -> Result<DevContainer, ImageError> {
        // The checkout is the project's (an agent may have written it): the file, like
        // everything it names, must really be inside it, not a link out to the host.
        let real = path
            .canonicalize()
            .map_err(|e| err(path, format!("cannot read: {e}")))?;
        if !inside(&real, &root_of(path)) {
            return Err(err(path, "it is a link to a file outside the project"));
        }
        let text =
            std::fs::read_to_string(&real).map_err(|e| err(path, format!("cannot read: {e}")))?;
        Self::parse(path, project, &text)
    }

    pub fn parse(path: &Path, project: &Path, text: &str) -> Result<DevContainer, ImageError> {
        let mut v = parse_jsonc(path, text)?;
        substitute(path, &mut v, project)?;
        let Value::Object(obj) = v else {
            return Err(err(path, "the top level must be an object"));
        };
        let unsupported: Vec<&str> = obj
            .keys()
            .map(String::as_str)
            .filter(|k| !SUPPORTED.contains(k) && !NO_EFFECT.contains(k))
            .collect();
        if !unsupported.is_empty() {
            return Err(err(
                path,
                format!(
                    "unsupported propert{} {}; kraal supports {}",
                    if unsupported.len() == 1 { "y" } else { "ies" },
                    unsupported
                        .iter()
                        .map(|k| format!("{k:?}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    SUPPORTED.join(", ")
                ),
            ));
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        let base = match (obj.get("image"), obj.get("build")) {
            (Some(_), Some(_)) => return Err(err(path, "give either image or build, not both")),
            (None, None) => {
                return Err(err(path, "either image or build.dockerfile is required"));
            }
            (Some(i), None) => Base::Image(string(path, "image", i)?),
            (None, Some(Value::Object(b))) => {
                if let Some(k) = b.keys().find(|k| !BUILD_KEYS.contains(&k.as_str())) {
                    return Err(err(
                        path,
                        format!(
                            "unsupported property build.{k}; kraal supports build.{}",
                            BUILD_KEYS.join(", build.")
                        ),
                    ));
                }
                let df = b
                    .get("dockerfile")
                    .ok_or_else(|| err(path, "build.dockerfile is required"))?;
                let dockerfile = dir.join(string(path, "build.dockerfile", df)?);
                let context = match b.get("context") {
                    Some(c) => dir.join(string(path, "build.context", c)?),
                    None => dockerfile.parent().unwrap_or(dir).to_owned(),
                };
                let args = match b.get("args") {
                    Some(a) => env_map(path, "build.args", a)?
                        .into_iter()
                        .map(|(k, v)| (k, v.unwrap_or_default()))
                        .collect(),
                    None => BTreeMap::new(),
                };
                if !dockerfile.is_file() {
                    return Err(err(
                        path,
                        format!("build.dockerfile {} does not exist", dockerfile.display()),
                    ));
                }
                if !context.is_dir() {
                    return Err(err(
                        path,
                        format!("build.context {} is not a directory", context.display()),
                    ));
                }
                // The build reads only the project: neither the Dockerfile nor the context
                // (every COPY source) may lead out of it, by `..`, an absolute path or a link.
                // (`${localWorkspaceFolder}` names the project on the host, which is inside too.)
                let roots: Vec<PathBuf> = [root_of(path), project.to_owned()]
                    .iter()
                    .filter_map(|r| r.canonicalize().ok())
                    .collect();
                let confined = |key: &str, p: &Path| match p.canonicalize() {
                    Ok(real) if roots.iter().any(|r| real.starts_with(r)) => Ok(real),
                    _ => Err(err(
                        path,
                        format!("{key} {} is outside the project", p.display()),
                    )),
                };
                let dockerfile = confined("build.dockerfile", &dockerfile)?;
                let context = confined("build.context", &context)?;
                Base::Dockerfile {
                    dockerfile,
                    context,
                    args,
                }
            }
            (None, Some(_)) => return Err(err(path, "build must be an object")),
        };
        let mut features = Vec::new();
        match obj.get("features") {
            None => {}
            Some(Value::Object(m)) => {
                for (id, opts) in m {
                    let opts = match opts {
                        Value::Object(o) => o.clone().into_iter().collect(),
                        // The old short form: a version string, or `true`.
                        Value::String(s) => {
                            BTreeMap::from([("version".to_owned(), Value::String(s.clone()))])
                        }
                        Value::Bool(true) => BTreeMap::new(),
                        _ => {
                            return Err(err(
                                path,
                                format!("features.{id:?}: options must be an object"),
                            ));
                        }
                    };
                    features.push((id.clone(), opts));
                }
            }
            Some(_) => return Err(err(path, "features must be an object")),
        }
        let override_feature_install_order = match obj.get("overrideFeatureInstallOrder") {
            None => vec![],
            Some(v) => serde_json::from_value(v.clone()).map_err(|_| {
                err(
                    path,
                    "overrideFeatureInstallOrder must be an array of strings",
                )
            })?,
        };
        let container_env = match obj.get("containerEnv") {
            None => BTreeMap::new(),
            Some(v) => env_map(path, "containerEnv", v)?
                .into_iter()
                .map(|(k, v)| (k, v.unwrap_or_default()))
                .collect(),
        };
        let remote_env = match obj.get("remoteEnv") {
            None => BTreeMap::new(),
            Some(v) => env_map(path, "remoteEnv", v)?,
        };
        let user = |k: &str| -> Result<Option<String>, ImageError> {
            obj.get(k)
                .map(|v| string(path, k, v))
                .transpose()
                .and_then(|u| {
                    if let Some(u) = &u
                        && !u
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"._-:".contains(&b))
                    {
                        return Err(err(path, format!("{k} {u:?} is not a user name or uid")));
                    }
                    Ok(u)
                })
        };
        let remote_user = user("remoteUser")?;
        let container_user = user("containerUser")?;
        let mut create_commands = Vec::new();
        for k in [
            "onCreateCommand",
            "updateContentCommand",
            "postCreateCommand",
        ] {
            if let Some(v) = obj.get(k) {
                create_commands.push((k.to_owned(), command(path, k, v)?));
            }
        }
        let post_start = obj
            .get("postStartCommand")
            .map(|v| command(path, "postStartCommand", v))
            .transpose()?;
        let mut forward_ports = Vec::new();
        match obj.get("forwardPorts") {
            None => {}
            Some(Value::Array(a)) => {
                for p in a {
                    let port = match p {
                        Value::Number(n) => n.as_u64(),
                        Value::String(s) if !s.contains(':') => s.parse().ok(),
                        Value::String(s) => {
                            return Err(err(
                                path,
                                format!(
                                    "forwardPorts: {s:?} names another host; kraal forwards the workspace's own ports only"
                                ),
                            ));
                        }
                        _ => None,
                    };
                    match port {
                        Some(p @ 1..=65535) => forward_ports.push(p as u16),
                        _ => return Err(err(path, format!("forwardPorts: {p} is not a port"))),
                    }
                }
            }
            Some(_) => return Err(err(path, "forwardPorts must be an array")),
        }
        if let Some(f) = obj.get("workspaceFolder") {
            let f = string(path, "workspaceFolder", f)?;
            if f.trim_end_matches('/') != WORKSPACE_FOLDER {
                return Err(err(
                    path,
                    format!(
                        "workspaceFolder {f:?} is not supported: kraal workspaces are always at {WORKSPACE_FOLDER}"
                    ),
                ));
            }
        }
        let name = obj.get("name").and_then(Value::as_str).map(str::to_owned);
        Ok(DevContainer {
            path: path.to_owned(),
            name,
            base,
            features,
            override_feature_install_order,
            container_env,
            remote_env,
            remote_user,
            container_user,
            create_commands,
            post_start,
            forward_ports,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<DevContainer, String> {
        DevContainer::parse(
            Path::new("/p/.devcontainer/devcontainer.json"),
            Path::new("/p"),
            text,
        )
        .map_err(|e| e.to_string())
    }

    #[test]
    fn jsonc_with_comments_and_trailing_commas() {
        let d = parse(
            r#"// a dev container
            {
              "name": "demo", /* inline */
              "image": "registry.example/debian:12",
              "features": {
                "ghcr.io/devcontainers/features/node:1": { "version": "20", },
                "./local-feature": {},
              },
              "containerEnv": { "A": "1", "W": "${containerWorkspaceFolder}" },
              "remoteEnv": { "PATH": "${containerEnv:PATH}:/x", "GONE": null },
              "remoteUser": "dev",
              "onCreateCommand": ["touch", "/tmp/a"],
              "postCreateCommand": { "one": "echo 1", "two": ["echo", "2"] },
              "postStartCommand": "echo started",
              "forwardPorts": [3000, "8080"],
              "customizations": { "vscode": { "extensions": ["x"] } },
            }"#,
        )
        .unwrap();
        assert_eq!(d.name.as_deref(), Some("demo"));
        assert_eq!(d.base, Base::Image("registry.example/debian:12".into()));
        assert_eq!(d.features.len(), 2);
        let node = d.features.iter().find(|(r, _)| r.contains("node")).unwrap();
        assert_eq!(node.1["version"], "20");
        assert_eq!(d.container_env["W"], "/workspace");
        assert_eq!(d.remote_env["GONE"], None);
        assert_eq!(d.remote_user.as_deref(), Some("dev"));
        assert_eq!(d.create_commands.len(), 2);
        assert_eq!(d.create_commands[1].1.argvs().len(), 2);
        assert_eq!(
            d.post_start.unwrap().argvs(),
            vec![vec![
                "/bin/sh".to_owned(),
                "-c".into(),
                "echo started".into()
            ]]
        );
        assert_eq!(d.forward_ports, vec![3000, 8080]);
    }

    #[test]
    fn syntax_errors_name_line_and_column() {
        let e = parse("{\n  \"image\": \"x\"\n  \"remoteUser\": \"a\"\n}").unwrap_err();
        assert!(
            e.contains("devcontainer.json")
                && e.contains("line 2, column 15")
                && e.contains("comma"),
            "{e}"
        );
        assert!(parse("").unwrap_err().contains("empty"));
        assert!(parse("[1]").unwrap_err().contains("top level"));
    }

    /// A project (an agent may have written it) whose devcontainer.json points the build
    /// at the host: the Dockerfile or context out of the project by `..`, an absolute path or
    /// a link, or devcontainer.json itself a link out. Each is refused before anything is read.
    #[test]
    fn the_build_never_reads_outside_the_project() {
        let d = tempfile::tempdir().unwrap();
        let host = d.path().join("host");
        std::fs::create_dir_all(host.join("etc")).unwrap();
        std::fs::write(host.join("Dockerfile"), "FROM x\nCOPY etc /stolen\n").unwrap();
        std::fs::write(host.join("devcontainer.json"), r#"{"image": "x"}"#).unwrap();
        let project = d.path().join("project");
        let dc = project.join(".devcontainer");
        std::fs::create_dir_all(&dc).unwrap();
        std::fs::write(dc.join("Dockerfile"), "FROM x\n").unwrap();
        std::os::unix::fs::symlink(host.join("Dockerfile"), dc.join("Linked")).unwrap();
        std::os::unix::fs::symlink(&host, project.join("hostlink")).unwrap();
        let file = dc.join("devcontainer.json");
        let host_ctx = host.display().to_string();
        for (build, want) in [
            (
                format!(r#"{{"dockerfile": "Dockerfile", "context": "{host_ctx}"}}"#),
                "build.context",
            ),
            (
                r#"{"dockerfile": "Dockerfile", "context": "/"}"#.to_owned(),
                "build.context",
            ),
            (
                r#"{"dockerfile": "Dockerfile", "context": "../.."}"#.to_owned(),
                "build.context",
            ),
            (
                r#"{"dockerfile": "Dockerfile", "context": "../hostlink"}"#.to_owned(),
                "build.context",
            ),
            (
                r#"{"dockerfile": "../../host/Dockerfile"}"#.to_owned(),
                "build.dockerfile",
            ),
            (
                r#"{"dockerfile": "Linked", "context": ".."}"#.to_owned(),
                "build.dockerfile",
            ),
        ] {
            let text = format!(r#"{{"build": {build}}}"#);
            let e = DevContainer::parse(&file, &project, &text)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(want) && e.contains("outside the project"),
                "{build}: {e}"
            );
        }
        // Inside, by any spelling, is fine.
        let ok = DevContainer::parse(
            &file,
            &project,
            r#"{"build": {"dockerfile": "Dockerfile", "context": "../.devcontainer/.."}}"#,
        )
        .unwrap();
        assert!(matches!(ok.base, Base::Dockerfile { .. }));
        // devcontainer.json itself a link to a file on the host.
        let p2 = d.path().join("p2");
        std::fs::create_dir_all(&p2).unwrap();
        std::os::unix::fs::symlink(
            host.join("devcontainer.json"),
            p2.join(".devcontainer.json"),
        )
        .unwrap();
        let found = find(&p2).unwrap();
        let e = DevContainer::load(&found, &p2).unwrap_err().to_string();
        assert!(e.contains("outside the project"), "{e}");
    }

    #[test]
    fn unsupported_properties_are_named() {
        let e = parse(r#"{"image": "x", "runArgs": ["--privileged"], "mounts": []}"#).unwrap_err();
        assert!(e.contains("\"mounts\"") && e.contains("\"runArgs\""), "{e}");
        let e = parse(r#"{"build": {"dockerfile": "D", "target": "dev"}}"#).unwrap_err();
        assert!(e.contains("build.target"), "{e}");
        let e = parse(r#"{"image": "x", "workspaceFolder": "/src"}"#).unwrap_err();
        assert!(e.contains("workspaceFolder"), "{e}");
    }

    #[test]
    fn bad_values_are_clear() {
        for (text, want) in [
            (r#"{}"#, "either image or build"),
            (r#"{"image": "x", "build": {}}"#, "not both"),
            (r#"{"image": ""}"#, "image must be"),
            (
                r#"{"image": "x", "containerEnv": {"1A": "x"}}"#,
                "containerEnv",
            ),
            (r#"{"image": "x", "forwardPorts": [70000]}"#, "70000"),
            (
                r#"{"image": "x", "forwardPorts": ["db:5432"]}"#,
                "another host",
            ),
            (
                r#"{"image": "x", "postCreateCommand": 5}"#,
                "postCreateCommand",
            ),
            (r#"{"image": "x", "postCreateCommand": []}"#, "no program"),
            (r#"{"image": "x", "remoteUser": "a b"}"#, "remoteUser"),
            (
                r#"{"image": "x", "containerEnv": {"K": "${localEnv:HOME}"}}"#,
                "credentials",
            ),
            (
                r#"{"image": "x", "containerEnv": {"K": "${nope}"}}"#,
                "unknown variable",
            ),
            (r#"{"build": {"dockerfile": "Missing"}}"#, "does not exist"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn container_env_references_resolve() {
        let env = BTreeMap::from([("PATH".to_owned(), "/usr/bin".to_owned())]);
        assert_eq!(
            resolve_container_env("${containerEnv:PATH}:/x", &env),
            "/usr/bin:/x"
        );
        assert_eq!(resolve_container_env("${containerEnv:NOPE:d}", &env), "d");
    }
}
