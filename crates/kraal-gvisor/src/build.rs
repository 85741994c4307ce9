//! Image build steps in gVisor: the root is a host overlayfs of the image so far (lower)
//! and an empty directory (upper) that collects the step's writes and becomes its layer.
//! The step gets its own network namespace, like a workspace, so package installs can
//! reach the network through the same NAT and firewall.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kraal_core::{Resources, WorkspaceId};
use kraal_image::devbuild::{StepJob, StepRunner};
use kraal_net::{Link, Pool};
use kraal_sandbox::process::Cmd;
use serde_json::json;

use crate::NetworkMode;

/// How long one build step may run.
const STEP_TIMEOUT: Duration = Duration::from_secs(60 * 60);

/// Runs image build steps with runsc.
#[derive(Debug, Clone)]
pub struct BuildRunner {
    pub runsc: PathBuf,
    /// runsc state for build containers (kept apart from workspaces').
    pub runsc_root: PathBuf,
    pub network: NetworkMode,
    pub pool: Pool,
    pub platform: Option<String>,
    pub resources: Resources,
    /// The host service ports of the shared firewall (the same list the backend installs:
    /// the table is shared, so a build must not drop workspaces' rules).
    pub host_ports: Vec<u16>,
}

impl BuildRunner {
    fn config(
        &self,
        job: &StepJob,
        root: &Path,
        etc: &Path,
        netns: &Path,
        id: &str,
    ) -> serde_json::Value {
        let caps = crate::spec::CAPS;
        let mut mounts = crate::spec::system_mounts();
        mounts.extend([
            json!({ "destination": "/etc/resolv.conf", "type": "bind", "source": etc.join("resolv.conf"), "options": ["rbind", "ro"] }),
            json!({ "destination": "/etc/hosts", "type": "bind", "source": etc.join("hosts"), "options": ["rbind", "ro"] }),
        ]);
        for (src, dst) in &job.binds {
            mounts.push(json!({ "destination": dst, "type": "bind", "source": src, "options": ["rbind", "rw"] }));
        }
        let namespaces = crate::spec::namespaces(self.network, netns);
        let quota = (self.resources.cpus * 100_000.0).round() as i64;
        json!({
            "ociVersion": "1.0.2",
            "root": { "path": root, "readonly": false },
            "hostname": "kraal-build",
            "process": {
                "terminal": false,
                "user": { "uid": job.uid, "gid": job.gid },
                "args": job.argv,
                "env": job.env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
                "cwd": job.cwd,
                "capabilities": { "bounding": caps, "effective": caps, "permitted": caps, "inheritable": caps, "ambient": [] },
                "rlimits": [{ "type": "RLIMIT_NOFILE", "hard": 1048576, "soft": 1048576 }],
                "noNewPrivileges": false,
            },
            "mounts": mounts,
            "linux": {
                "namespaces": namespaces,
                "cgroupsPath": format!("/kraal/{id}"),
                "resources": {
                    "memory": { "limit": self.resources.memory_mib * 1024 * 1024 },
                    "cpu": { "quota": quota, "period": 100000 },
                    "pids": { "limit": self.resources.pids },
                },
            },
        })
    }
}

fn tail(lines: &[String]) -> String {
    let start = lines.len().saturating_sub(15);
    lines[start..].join("\n")
}

#[async_trait::async_trait]
impl StepRunner for BuildRunner {
    async fn run(
        &self,
        job: &StepJob,
        line: &(dyn Fn(String) + Send + Sync),
    ) -> Result<(), String> {
        let e = |what: &str, err: &dyn std::fmt::Display| format!("{what}: {err}");
        let root = job.scratch.join("root");
        let ovl = job.scratch.join("ovl-work");
        let etc = job.scratch.join("etc");
        let bundle = job.scratch.join("bundle");
        for d in [&root, &ovl, &etc, &bundle] {
            std::fs::create_dir_all(d).map_err(|x| e(&d.display().to_string(), &x))?;
        }
        std::fs::write(
            etc.join("resolv.conf"),
            kraal_sandbox::resolv_conf(
                &std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
            ),
        )
        .map_err(|x| e("resolv.conf", &x))?;
        std::fs::write(
            etc.join("hosts"),
            "127.0.0.1\tlocalhost kraal-build\n::1\tlocalhost\n",
        )
        .map_err(|x| e("hosts", &x))?;
        kraal_sandbox::disk::mount_overlay(&job.lower, &job.upper, &ovl, &root)
            .await
            .map_err(|x| e("mounting the build root", &kraal_sandbox::error_chain(&x)))?;
        let id = WorkspaceId::random();
        let cid = format!("build-{}", id.as_str());
        let result = self
            .run_mounted(job, &root, &etc, &bundle, &id, &cid, line)
            .await;
        let _ = Cmd::new(&self.runsc)
            .arg(format!("--root={}", self.runsc_root.display()))
            .args(["delete", "--force", &cid])
            .timeout(Duration::from_secs(30))
            .run()
            .await;
        kraal_net::teardown(&id, &Link::for_build(&id, self.pool, 0)).await;
        if let Err(x) = kraal_sandbox::disk::unmount(&root).await {
            tracing::warn!("unmounting the build root: {x}");
        }
        // Mount points runsc had to create for the bind mounts are not the step's work.
        for (f, _) in [("etc/resolv.conf", ()), ("etc/hosts", ())] {
            let up = job.upper.join(f);
            if up.metadata().is_ok_and(|m| m.is_file() && m.len() == 0)
                && !job.lower.join(f).exists()
            {
                let _ = std::fs::remove_file(&up);
            }
        }
        result
    }
}

impl BuildRunner {
    #[allow(clippy::too_many_arguments)]
    async fn run_mounted(
        &self,
        job: &StepJob,
        root: &Path,
        etc: &Path,
        bundle: &Path,
        id: &WorkspaceId,
        cid: &str,
        line: &(dyn Fn(String) + Send + Sync),
    ) -> Result<(), String> {
        let (slot, guard) = kraal_net::allocate(self.pool)
            .await
            .map_err(|x| format!("network: {}", kraal_sandbox::error_chain(&x)))?;
        let link = Link::for_build(id, self.pool, slot);
        kraal_net::install_firewall(self.pool, &self.host_ports)
            .await
            .map_err(|x| format!("firewall: {}", kraal_sandbox::error_chain(&x)))?;
        kraal_net::setup(id, &link)
            .await
            .map_err(|x| format!("network: {}", kraal_sandbox::error_chain(&x)))?;
        drop(guard);
        let cfg = self.config(job, root, etc, &kraal_net::netns_path(id), cid);
        std::fs::write(bundle.join("config.json"), cfg.to_string())
            .map_err(|x| format!("bundle: {x}"))?;
        let mut cmd = match self.network {
            NetworkMode::Host => Cmd::new(&self.runsc).in_netns(kraal_net::netns_path(id)),
            NetworkMode::Sandbox => Cmd::new(&self.runsc),
        };
        cmd = cmd.args([
            format!("--root={}", self.runsc_root.display()),
            format!("--network={}", self.network.as_str()),
            "--overlay2=none".to_owned(),
        ]);
        if let Some(p) = &self.platform {
            cmd = cmd.arg(format!("--platform={p}"));
        }
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let run = cmd
            .args(["run", "--bundle"])
            .arg(bundle)
            .arg(cid)
            .new_session()
            .timeout(STEP_TIMEOUT)
            .lines_to(tx)
            .run();
        let mut seen = Vec::new();
        let relay = async {
            while let Some(l) = rx.recv().await {
                line(l.clone());
                seen.push(l);
            }
        };
        let (res, ()) = tokio::join!(run, relay);
        res.map(|_| ()).map_err(|x| {
            let head = match &x {
                kraal_sandbox::process::ProcessError::Failed { status, .. } => {
                    format!("exited with {status}")
                }
                other => kraal_sandbox::error_chain(other),
            };
            let out = tail(&seen);
            if out.is_empty() {
                head
            } else {
                format!("{head}; last output:\n{out}")
            }
        })
    }
}
