//! What goes into the layers of a recipe image: the Debian system (debootstrap, then made
//! fit to be a sandbox root), the agent CLIs (npm), the guest agent, and the mount points a
//! sandbox binds over.

use std::path::Path;
use std::time::Duration;

use kraal_sandbox::process::{Cmd, ProcessError, which};

use crate::{AGENTS_DIR, ImageError, ImageStore, Recipe, io, recipe, remove_any, write_json};

impl ImageStore {
    pub(crate) async fn build_os(
        &self,
        r: &Recipe,
        tmp: &Path,
        line: &(dyn Fn(String) + Send + Sync),
    ) -> Result<(), ImageError> {
        if which("debootstrap").is_none() {
            return Err(ImageError::MissingTool {
                program: "debootstrap".into(),
                hint: " or `apt-get install debootstrap`".into(),
            });
        }
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut cmd = Cmd::new("debootstrap").arg(format!("--variant={}", r.variant));
        if !r.packages.is_empty() {
            cmd = cmd.arg(format!("--include={}", r.packages.join(",")));
        }
        let run = cmd
            .arg(&r.suite)
            .arg(tmp)
            .arg(&self.mirror)
            .timeout(Duration::from_secs(45 * 60))
            .lines_to(tx)
            .run();
        let relay = async {
            while let Some(l) = rx.recv().await {
                // debootstrap's "I: Retrieving x" / "I: Unpacking x" lines.
                if let Some(rest) = l.strip_prefix("I: ") {
                    line(rest.to_owned());
                }
            }
        };
        let (res, ()) = tokio::join!(run, relay);
        res.map_err(|source| ImageError::Build {
            name: r.name.clone(),
            step: "debootstrap",
            source,
        })?;
        post_process_os(tmp)
    }
}

/// Creates in `out` the mount points a sandbox binds over (the workspace volume, the guest
/// agent and its config, the agent CLIs, DNS and hosts files) that `tree` lacks.
pub(crate) fn add_mount_points(tree: &Path, out: &Path) -> Result<(), ImageError> {
    for d in ["workspace", ".kraal", AGENTS_DIR, "etc", "tmp"] {
        if !tree.join(d).exists() {
            let p = out.join(d);
            std::fs::create_dir_all(&p).map_err(io(&p))?;
        }
    }
    for f in [
        ".kraal/kraal-guest",
        ".kraal/guest.json",
        "etc/resolv.conf",
        "etc/hosts",
    ] {
        if !tree.join(f).exists() {
            let p = out.join(f);
            std::fs::create_dir_all(p.parent().expect("has a parent")).map_err(io(&p))?;
            std::fs::write(&p, b"").map_err(io(&p))?;
        }
    }
    Ok(())
}

/// Makes a debootstrapped tree fit to be a sandbox root: mount points for the workspace
/// volume and the guest agent, no package caches, no SSH host keys (each workspace makes
/// its own).
fn post_process_os(rootfs: &Path) -> Result<(), ImageError> {
    add_mount_points(rootfs, rootfs)?;
    for dir in ["var/cache/apt/archives", "var/lib/apt/lists"] {
        for e in std::fs::read_dir(rootfs.join(dir))
            .into_iter()
            .flatten()
            .flatten()
        {
            if e.path().is_file() && e.file_name() != "lock" {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    for e in std::fs::read_dir(rootfs.join("etc/ssh"))
        .into_iter()
        .flatten()
        .flatten()
    {
        if e.file_name().to_string_lossy().starts_with("ssh_host_") {
            let _ = std::fs::remove_file(e.path());
        }
    }
    Ok(())
}

/// Installs the recipe's agent CLIs with npm into `<layer>/opt/kraal/agents`, pinned by
/// `agent-clis/package.json` and its lock, and links them (and `node`) into
/// `/usr/local/bin`.
pub(crate) async fn build_agents(
    r: &Recipe,
    tmp: &Path,
    line: &(dyn Fn(String) + Send + Sync),
) -> Result<(), ImageError> {
    if which("npm").is_none() {
        return Err(ImageError::MissingTool {
            program: "npm".into(),
            hint: " or `apt-get install npm`".into(),
        });
    }
    let dir = tmp.join(AGENTS_DIR);
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let pkgs = r.agent_packages();
    let deps: serde_json::Map<String, serde_json::Value> = pkgs
        .iter()
        .map(|(p, v)| (p.clone(), serde_json::Value::String(v.clone())))
        .collect();
    let manifest = serde_json::json!({
        "name": "kraal-image-agents", "private": true, "dependencies": deps,
    });
    write_json(&dir.join("package.json"), &manifest)?;
    std::fs::write(dir.join("package-lock.json"), recipe::AGENT_LOCK).map_err(io(&dir))?;
    line(format!(
        "npm install {}",
        pkgs.iter()
            .map(|(p, v)| format!("{p}@{v}"))
            .collect::<Vec<_>>()
            .join(" ")
    ));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut npm = Cmd::new("npm");
    if std::env::var_os("HOME").is_none() {
        // A daemon started by systemd has no HOME for npm's cache: keep it with the images.
        let cache = tmp
            .parent()
            .and_then(Path::parent)
            .unwrap_or(tmp)
            .join(".npm-cache");
        npm = npm.env("npm_config_cache", cache);
    }
    let run = npm
        .args([
            "install",
            "--no-save",
            "--no-audit",
            "--no-fund",
            "--prefer-offline",
            "--loglevel=http",
            "--prefix",
        ])
        .arg(&dir)
        .timeout(Duration::from_secs(30 * 60))
        .lines_to(tx)
        .run();
    let relay = async {
        while let Some(l) = rx.recv().await {
            if !l.trim().is_empty() {
                line(l);
            }
        }
    };
    let (res, ()) = tokio::join!(run, relay);
    res.map_err(|source| ImageError::Build {
        name: r.name.clone(),
        step: "npm install of the agent CLIs",
        source,
    })?;
    let bin = tmp.join("usr/local/bin");
    std::fs::create_dir_all(&bin).map_err(io(&bin))?;
    let nm_bin = dir.join("node_modules/.bin");
    for e in std::fs::read_dir(&nm_bin).map_err(io(&nm_bin))?.flatten() {
        let name = e.file_name();
        let target = Path::new("/")
            .join(AGENTS_DIR)
            .join("node_modules/.bin")
            .join(&name);
        let link = bin.join(&name);
        remove_any(&link);
        std::os::unix::fs::symlink(&target, &link).map_err(io(&link))?;
    }
    if !nm_bin.join("node").exists() {
        return Err(ImageError::Build {
            name: r.name.clone(),
            step: "npm install of the agent CLIs",
            source: ProcessError::Failed {
                command: "npm install".into(),
                status: "0".into(),
                stderr: format!(
                    "{} did not provide node_modules/.bin/node",
                    recipe::NODE_PACKAGE
                ),
            },
        });
    }
    Ok(())
}

/// The guest agent at `/.kraal/kraal-guest`.
pub(crate) fn build_guest(bin: &[u8], tmp: &Path) -> Result<(), ImageError> {
    use std::os::unix::fs::PermissionsExt;
    let d = tmp.join(".kraal");
    std::fs::create_dir_all(&d).map_err(io(&d))?;
    let p = d.join("kraal-guest");
    std::fs::write(&p, bin).map_err(io(&p))?;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).map_err(io(&p))?;
    Ok(())
}
