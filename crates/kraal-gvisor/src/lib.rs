//! The gVisor backend. Each workspace is an OCI bundle run by `runsc`:
//!
//! * root: a host overlayfs of the shared read-only image (lower) and a per-workspace
//!   writable layer (upper), so package installs survive `down`/`up` while the image is
//!   shared; runsc runs with `--overlay2=none` so writes reach that layer;
//! * `/workspace`: a bind mount of the workspace volume holding the checkout — a sparse
//!   ext4 file of `volume_mib` loop-mounted on the host, so a workspace that fills its
//!   disk fills only its own (0: a plain host directory without a limit);
//! * the guest agent and its config bind-mounted read-only under `/.kraal`;
//! * network: a per-workspace namespace (see `kraal-net`). In `host` mode runsc is
//!   started inside it with `--network=host`; in `sandbox` mode runsc's own netstack
//!   takes over the namespace's interface;
//! * limits: CPU quota, memory and pids through the spec's cgroup resources.

pub mod build;
mod freezer;
mod snapshot;
mod spec;
mod state;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use kraal_core::{BackendKind, Capabilities, WorkspaceId};
use kraal_image::{ImageStore, Output};
use kraal_net::{Link, Pool};
use kraal_sandbox::disk::is_mountpoint;
use kraal_sandbox::process::{Cmd, ProcessError, which};
use kraal_sandbox::{Backend, BackendError, GuestEndpoint, HostCheck, SandboxSpec, SandboxStatus};

pub use spec::{BundleSpec, NetworkMode};

/// How the backend is set up on this host.
#[derive(Debug, Clone)]
pub struct GvisorConfig {
    /// Per-workspace state lives in `<state_dir>/<id>/`.
    pub state_dir: PathBuf,
    /// runsc's own state (`--root`).
    pub runsc_root: PathBuf,
    pub runsc: PathBuf,
    pub network: NetworkMode,
    pub pool: Pool,
    /// The static guest agent binary mounted into every sandbox.
    pub guest_bin: PathBuf,
    pub images: ImageStore,
    /// The image of workspaces that do not name one: a built-in recipe (built on first use)
    /// or an image built with `kraal image build`.
    pub default_image: String,
    /// `systrap` (default) or `ptrace`/`kvm`.
    pub platform: Option<String>,
    /// A directory whose `node_modules` holds the agent CLIs and Node.js, mounted
    /// read-only at `/opt/kraal/agents` in every sandbox.
    pub agents_dir: Option<PathBuf>,
    /// TCP ports of host services (the model gateway) a sandbox may reach at the host's
    /// address on its own link.
    pub host_ports: Vec<u16>,
    /// Size of each new workspace's volume (a sparse ext4 file); 0: a host directory
    /// without a size limit.
    pub volume_mib: u64,
}

/// A size-limited volume's file system image, next to its mount point `volume`.
const VOLUME_IMAGE: &str = "volume.ext4";

pub struct GvisorBackend {
    cfg: GvisorConfig,
}

const OP_TIMEOUT: Duration = Duration::from_secs(60);

impl GvisorBackend {
    pub fn new(cfg: GvisorConfig) -> Self {
        GvisorBackend { cfg }
    }

    fn ws_dir(&self, id: &WorkspaceId) -> PathBuf {
        self.cfg.state_dir.join(id.as_str())
    }

    fn runsc(&self) -> Cmd {
        let mut c =
            Cmd::new(&self.cfg.runsc).arg(format!("--root={}", self.cfg.runsc_root.display()));
        if let Some(p) = &self.cfg.platform {
            c = c.arg(format!("--platform={p}"));
        }
        c.timeout(OP_TIMEOUT)
    }

    /// runsc set up to launch `id`'s sandbox (`run` or `restore` follows): detached in a
    /// session of its own, its console in `console`, in the workspace's network namespace.
    /// In `sandbox` mode runsc joins the namespace the spec names itself; runsc before
    /// 2024-08 then takes every namespace for the host's when `/proc/sys/net/core/rmem_default`
    /// exists in it (it does in all of them on current kernels) and refuses to start. kraal
    /// checks that the namespace is not the host's itself and hides `/proc/sys/net` from
    /// runsc's launcher, which reads nothing else there.
    #[allow(clippy::result_large_err)] // the backend error its callers return
    fn launch(&self, id: &WorkspaceId, console: &Path) -> Result<Cmd, BackendError> {
        let dir = self.ws_dir(id);
        let netns = kraal_net::netns_path(id);
        let mut cmd = match self.cfg.network {
            NetworkMode::Host => Cmd::new(&self.cfg.runsc).in_netns(&netns),
            NetworkMode::Sandbox => {
                let inode = |p: &Path| {
                    std::fs::metadata(p).map(|m| std::os::unix::fs::MetadataExt::ino(&m))
                };
                let own = inode(&netns).map_err(BackendError::io(id, "start", &netns))?;
                if inode(Path::new("/proc/self/ns/net")).ok() == Some(own) {
                    return Err(BackendError::failed(
                        id,
                        "start",
                        format!("{} is the host's own network namespace", netns.display()),
                    ));
                }
                Cmd::new(&self.cfg.runsc).masking("/proc/sys/net")
            }
        };
        cmd = cmd.args([
            format!("--root={}", self.cfg.runsc_root.display()),
            format!("--network={}", self.cfg.network.as_str()),
            "--overlay2=none".to_owned(),
            format!("--log={}", dir.join("runsc.log").display()),
        ]);
        if let Some(p) = &self.cfg.platform {
            cmd = cmd.arg(format!("--platform={p}"));
        }
        Ok(cmd.new_session().stdout_to(console).timeout(OP_TIMEOUT))
    }

    /// runsc's view of the container: `None` when it does not exist. Read from runsc's
    /// state file; `runsc state` only when the file is not one this reader understands.
    async fn runsc_state(&self, id: &WorkspaceId) -> Result<Option<String>, BackendError> {
        match state::read(&self.cfg.runsc_root, id.as_str()) {
            state::Read::Missing => return Ok(None),
            state::Read::Status(s) => return Ok(Some(s)),
            state::Read::Unknown => {}
        }
        match self.runsc().args(["state", id.as_str()]).run().await {
            Ok(out) => {
                let v: serde_json::Value =
                    serde_json::from_slice(&out.stdout).map_err(|e| BackendError::Failed {
                        workspace: id.to_string(),
                        op: "state",
                        message: format!("runsc state printed invalid JSON: {e}"),
                    })?;
                Ok(v.get("status").and_then(|s| s.as_str()).map(str::to_owned))
            }
            Err(ProcessError::Failed { stderr, .. })
                if stderr.contains("does not exist") || stderr.contains("not exist") =>
            {
                Ok(None)
            }
            Err(e) => Err(BackendError::runtime(id, "state")(e)),
        }
    }

    /// Freezes or thaws the cgroup of `id`'s sandbox. Nothing to do when the sandbox is
    /// gone or the host has no freezer (then a pause still stops the application).
    async fn set_frozen(&self, id: &WorkspaceId, frozen: bool) -> Result<(), BackendError> {
        let Some(pid) = state::sandbox_pid(&self.cfg.runsc_root, id.as_str()) else {
            return Ok(());
        };
        let Some(f) = freezer::of_pid(Path::new("/sys/fs/cgroup"), pid) else {
            if frozen {
                tracing::debug!(workspace = %id, "no cgroup freezer: the sentry keeps running while paused");
            }
            return Ok(());
        };
        let op = if frozen { "freeze" } else { "thaw" };
        tokio::task::spawn_blocking(move || f.set(frozen))
            .await
            .expect("the freezer task does not panic")
            .map_err(|e| BackendError::failed(id, op, format!("cgroup freezer: {e}")))
    }

    fn rootfs_mounted(&self, id: &WorkspaceId) -> bool {
        let target = self.ws_dir(id).join("rootfs");
        is_mountpoint(&target)
    }

    async fn mount_root(&self, id: &WorkspaceId) -> Result<(), BackendError> {
        let dir = self.ws_dir(id);
        if self.rootfs_mounted(id) {
            return Ok(());
        }
        let lower = std::fs::read_to_string(dir.join("image")).map_err(BackendError::io(
            id,
            "start",
            &dir.join("image"),
        ))?;
        let lower = lower.trim();
        if !Path::new(lower).is_dir() {
            return Err(BackendError::Failed {
                workspace: id.to_string(),
                op: "start",
                message: format!(
                    "image {lower} is missing; it was removed after the workspace was created"
                ),
            });
        }
        kraal_sandbox::disk::mount_overlay(
            Path::new(lower),
            &dir.join("upper"),
            &dir.join("work"),
            &dir.join("rootfs"),
        )
        .await
        .map_err(BackendError::runtime(id, "mount root"))?;
        Ok(())
    }

    async fn unmount_root(&self, id: &WorkspaceId) {
        let target = self.ws_dir(id).join("rootfs");
        if let Err(e) = kraal_sandbox::disk::unmount(&target).await {
            tracing::warn!(workspace = %id, "unmount root: {e}");
        }
    }

    /// The image a new workspace runs on (see [`ImageStore::for_workspace`]).
    async fn resolve_image(
        &self,
        spec: &SandboxSpec,
        volume: &Path,
    ) -> Result<kraal_image::Image, BackendError> {
        self.cfg
            .images
            .for_sandbox(spec, volume, &self.cfg.default_image, &[Output::Rootfs])
            .await
            .map_err(BackendError::chained(&spec.id, "create"))
    }

    /// The configuration of the image a workspace runs on (default when unknown).
    fn image_config(&self, id: &WorkspaceId) -> kraal_image::ImageConfig {
        std::fs::read_to_string(self.ws_dir(id).join("image"))
            .ok()
            .and_then(|p| ImageStore::image_of(Path::new(p.trim())))
            .map(|i| i.config)
            .unwrap_or_default()
    }

    /// The network slot `id` was last given (see `kraal_net::allocate_for`).
    fn recorded_slot(&self, id: &WorkspaceId) -> Option<u32> {
        kraal_net::recorded_slot(&self.cfg.state_dir, id)
    }

    /// Allocates `id` a slot and makes its namespace and link (the firewall installed).
    /// With `expect`, a slot other than that one is an error, before anything is made.
    async fn make_link(&self, id: &WorkspaceId, expect: Option<u32>) -> Result<Link, BackendError> {
        let (slot, guard) = kraal_net::allocate_for(self.cfg.pool, &self.cfg.state_dir, id)
            .await
            .map_err(BackendError::chained(id, "allocate network"))?;
        if let Some(want) = expect.filter(|w| *w != slot) {
            return Err(BackendError::failed(
                id,
                "restore",
                format!(
                    "the workspace's network address (slot {want}) is in use by another \
                     workspace; the snapshot's processes expect it"
                ),
            ));
        }
        let link = self.link(id, slot);
        kraal_net::install_firewall(self.cfg.pool, &self.cfg.host_ports)
            .await
            .map_err(BackendError::chained(id, "firewall"))?;
        kraal_net::setup(id, &link)
            .await
            .map_err(BackendError::chained(id, "network setup"))?;
        drop(guard);
        Ok(link)
    }

    fn link(&self, id: &WorkspaceId, slot: u32) -> Link {
        Link::new(id, self.cfg.pool, slot)
    }

    /// Stops the container and releases its network and root mount; keeps the volume
    /// and writable layer.
    async fn halt(&self, id: &WorkspaceId) -> Result<(), BackendError> {
        if let Some(state) = self.runsc_state(id).await? {
            // A frozen sandbox neither answers runsc nor dies of SIGKILL (cgroup v1).
            if let Err(e) = self.set_frozen(id, false).await {
                tracing::warn!(workspace = %id, "thaw before stopping: {e}");
            }
            if state == "running" || state == "paused" {
                if state == "paused" {
                    let _ = self.runsc().args(["resume", id.as_str()]).run().await;
                }
                // The guest handles SIGTERM by stopping its processes and syncing disks.
                let _ = self.runsc().args(["kill", id.as_str(), "TERM"]).run().await;
                let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
                while tokio::time::Instant::now() < deadline {
                    if self.runsc_state(id).await?.as_deref() != Some("running") {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            self.runsc()
                .args(["delete", "--force", id.as_str()])
                .run()
                .await
                .map_err(BackendError::runtime(id, "delete"))?;
        }
        // Slot numbers do not matter for teardown: names derive from the id.
        kraal_net::teardown(id, &self.link(id, 0)).await;
        self.unmount_root(id).await;
        // A size-limited volume (a plain directory is no mount point: nothing to do).
        let volume = self.ws_dir(id).join("volume");
        if let Err(e) = kraal_sandbox::disk::unmount(&volume).await {
            tracing::warn!(workspace = %id, "unmount volume: {e}");
        }
        Ok(())
    }

    /// A size-limited volume holding the checkout: a new ext4 image from the template,
    /// mounted at `partial`, the source copied into it once, unmounted, then named
    /// `volume.ext4` beside an empty mount point `volume`.
    async fn fill_volume_image(
        &self,
        spec: &SandboxSpec,
        partial: &Path,
    ) -> Result<(), BackendError> {
        let id = &spec.id;
        let dir = self.ws_dir(id);
        let image = dir.join(VOLUME_IMAGE);
        let image_partial = dir.join("volume.ext4.partial");
        kraal_sandbox::template::new_volume(
            &kraal_sandbox::template::templates_dir(&self.cfg.state_dir),
            &image_partial,
            self.cfg.volume_mib,
            "workspace",
        )
        .await
        .map_err(BackendError::runtime(id, "make volume"))?;
        std::fs::create_dir(partial).map_err(BackendError::io(id, "create", partial))?;
        let filled = async {
            kraal_sandbox::disk::mount_ext4(&image_partial, partial)
                .await
                .map_err(BackendError::runtime(id, "mount volume"))?;
            // A clone needs an empty directory; fsck makes lost+found again if needed.
            let _ = std::fs::remove_dir(partial.join("lost+found"));
            let copied = kraal_sandbox::checkout::materialize(&spec.source, partial)
                .await
                .map_err(|e| BackendError::Source {
                    workspace: id.to_string(),
                    source: e,
                });
            let unmounted = kraal_sandbox::disk::unmount(partial)
                .await
                .map_err(BackendError::runtime(id, "unmount volume"));
            copied.and(unmounted)
        }
        .await;
        let _ = std::fs::remove_dir(partial);
        if let Err(e) = filled {
            let _ = std::fs::remove_file(&image_partial);
            return Err(e);
        }
        std::fs::rename(&image_partial, &image).map_err(BackendError::io(id, "create", &image))?;
        std::fs::create_dir(dir.join("volume")).map_err(BackendError::io(
            id,
            "create",
            &dir.join("volume"),
        ))?;
        Ok(())
    }

    /// Mounts a size-limited volume on its mount point (a no-op for a volume that is a
    /// plain directory, or one already mounted).
    async fn mount_volume(&self, id: &WorkspaceId) -> Result<(), BackendError> {
        let dir = self.ws_dir(id);
        let image = dir.join(VOLUME_IMAGE);
        if !image.is_file() {
            return Ok(());
        }
        kraal_sandbox::disk::mount_ext4(&image, &dir.join("volume"))
            .await
            .map_err(BackendError::runtime(id, "mount volume"))
    }
}

#[async_trait]
impl Backend for GvisorBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Gvisor
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            // runsc cannot save a sandbox whose sockets are the host's (`host` mode).
            checkpoint: self.cfg.network == NetworkMode::Sandbox,
            hardware_isolation: false,
            resource_limits: true,
            private_network: true,
            persistent_volume: true,
        }
    }

    async fn check(&self) -> HostCheck {
        let mut details = Vec::new();
        let mut ok = true;
        match self.runsc().version_line().await {
            Ok(v) => details.push(format!("{v} at {}", self.cfg.runsc.display())),
            Err(e) => {
                ok = false;
                details.push(format!("runsc: {e}; install it with scripts/setup.sh (Debian package runsc from bookworm-backports)"));
            }
        }
        for tool in ["nft", "debootstrap"] {
            if which(tool).is_none() {
                ok = false;
                details.push(format!("{tool} is missing"));
            }
        }
        if !self.cfg.guest_bin.is_file() {
            ok = false;
            details.push(format!(
                "guest agent {} is missing; build it with `cargo build --release -p kraal-guest --target x86_64-unknown-linux-musl`",
                self.cfg.guest_bin.display()
            ));
        } else {
            details.push(format!("guest agent {}", self.cfg.guest_bin.display()));
        }
        if !nix::unistd::geteuid().is_root() {
            ok = false;
            details.push(
                "the gVisor backend needs root (network namespaces, overlay mounts, cgroups)"
                    .into(),
            );
        }
        match &self.cfg.agents_dir {
            Some(dir) => {
                let bin = dir.join("node_modules/.bin");
                let found: Vec<&str> = ["claude", "codex", "gemini", "qwen", "opencode", "goose"]
                    .into_iter()
                    .filter(|c| bin.join(c).exists())
                    .collect();
                details.push(format!(
                    "agent CLIs from {} ({})",
                    dir.display(),
                    if found.is_empty() {
                        "none".to_owned()
                    } else {
                        found.join(", ")
                    }
                ));
            }
            None => details.push(
                "no agent CLIs to mount: sessions need them in the image (scripts/setup.sh installs them)"
                    .into(),
            ),
        }
        details.push(format!("network mode {}", self.cfg.network.as_str()));
        HostCheck::new(BackendKind::Gvisor, ok, details)
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<(), BackendError> {
        let id = &spec.id;
        let dir = self.ws_dir(id);
        for sub in ["upper", "work", "rootfs"] {
            let p = dir.join(sub);
            std::fs::create_dir_all(&p).map_err(BackendError::io(id, "create", &p))?;
        }
        let volume = dir.join("volume");
        if !volume.is_dir() && dir.join(VOLUME_IMAGE).is_file() {
            // Interrupted after the volume's image was complete: only its mount point is
            // missing.
            std::fs::create_dir(&volume).map_err(BackendError::io(id, "create", &volume))?;
        }
        if !volume.is_dir() {
            // Fill a scratch volume and give it its name only when complete: a failed or
            // interrupted checkout never leaves a half-filled volume that later looks
            // complete. An interrupted attempt may have left its scratch one mounted.
            let partial = dir.join("volume.partial");
            kraal_sandbox::disk::unmount(&partial)
                .await
                .map_err(BackendError::runtime(id, "create"))?;
            let _ = std::fs::remove_dir_all(&partial);
            if self.cfg.volume_mib > 0 {
                self.fill_volume_image(spec, &partial).await?;
            } else {
                if let Err(e) = kraal_sandbox::checkout::materialize(&spec.source, &partial).await {
                    let _ = std::fs::remove_dir_all(&partial);
                    return Err(BackendError::Source {
                        workspace: id.to_string(),
                        source: e,
                    });
                }
                std::fs::rename(&partial, &volume)
                    .map_err(BackendError::io(id, "create", &volume))?;
            }
        }
        self.mount_volume(id).await?;
        // A persistent workspace keeps its network address even while stopped.
        let marker = dir.join("persistent");
        if spec.persistent {
            std::fs::write(&marker, b"").map_err(BackendError::io(id, "create", &marker))?;
        } else {
            let _ = std::fs::remove_file(&marker);
        }
        let image_file = dir.join("image");
        if !image_file.is_file() {
            let image = self.resolve_image(spec, &volume).await?;
            ImageStore::add_user(&image.rootfs, id.as_str(), &dir)
                .map_err(BackendError::chained(id, "create"))?;
            // The image's user owns the workspace's files.
            if let Some(user) = &image.config.user {
                let (uid, gid, _) = kraal_image::devbuild::lookup_user(&image.rootfs, user)
                    .map_err(|message| BackendError::Failed {
                        workspace: id.to_string(),
                        op: "create",
                        message: format!("remoteUser: {message}"),
                    })?;
                Cmd::new("chown")
                    .args(["-R", "--no-dereference", &format!("{uid}:{gid}")])
                    .arg(&volume)
                    .timeout(Duration::from_secs(600))
                    .run()
                    .await
                    .map_err(BackendError::runtime(id, "chown"))?;
            }
            std::fs::write(&image_file, image.rootfs.to_string_lossy().as_bytes())
                .map_err(BackendError::io(id, "create", &image_file))?;
        }
        Ok(())
    }

    async fn start(&self, spec: &SandboxSpec) -> Result<GuestEndpoint, BackendError> {
        let id = &spec.id;
        match self.runsc_state(id).await?.as_deref() {
            Some("running") => return self.endpoint(id).await,
            Some("paused") => {
                self.resume(id).await?;
                return self.endpoint(id).await;
            }
            Some(_) => {
                self.runsc()
                    .args(["delete", "--force", id.as_str()])
                    .run()
                    .await
                    .map_err(BackendError::runtime(id, "delete"))?;
            }
            None => {}
        }
        let dir = self.ws_dir(id);
        if !dir.join("volume").is_dir() {
            return Err(BackendError::NotFound {
                workspace: id.to_string(),
            });
        }
        if !self.cfg.guest_bin.is_file() {
            return Err(BackendError::Failed {
                workspace: id.to_string(),
                op: "start",
                message: format!("guest agent {} is missing", self.cfg.guest_bin.display()),
            });
        }
        self.mount_volume(id).await?;
        self.mount_root(id).await?;

        let link = self.make_link(id, None).await?;

        let guest_dir = dir.join("guest");
        std::fs::create_dir_all(&guest_dir).map_err(BackendError::io(id, "start", &guest_dir))?;
        // The image's environment, services and whether it carries the agent CLIs.
        let image_cfg = self.image_config(id);
        let guest_cfg = serde_json::json!({
            "listen": format!("0.0.0.0:{}", kraal_protocol::DEFAULT_GUEST_PORT),
            "token": spec.guest_token,
            "files_root": "/workspace",
            "hostname": spec.name.as_str(),
            "env": image_cfg.env.iter().map(|(k, v)| (k.clone(), v.clone()))
                .chain(kraal_core::link_env(link.host_ip.into(), &spec.git_hosts))
                .collect::<Vec<_>>(),
            "start": image_cfg.start,
            "user": image_cfg.user,
            "on_create": image_cfg.on_create,
            "on_start": image_cfg.on_start,
        });
        let cfg_path = guest_dir.join("guest.json");
        kraal_sandbox::write_private(&cfg_path, guest_cfg.to_string().as_bytes())
            .map_err(BackendError::io(id, "start", &cfg_path))?;
        let resolv = guest_dir.join("resolv.conf");
        std::fs::write(
            &resolv,
            kraal_sandbox::resolv_conf(
                &std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
            ),
        )
        .map_err(BackendError::io(id, "start", &resolv))?;
        let hosts = guest_dir.join("hosts");
        std::fs::write(
            &hosts,
            format!(
                "127.0.0.1\tlocalhost\n::1\tlocalhost\n127.0.1.1\t{}\n",
                spec.name
            ),
        )
        .map_err(BackendError::io(id, "start", &hosts))?;

        let bundle = BundleSpec {
            rootfs: dir.join("rootfs"),
            volume: dir.join("volume"),
            guest_bin: self.cfg.guest_bin.clone(),
            guest_config: cfg_path,
            resolv_conf: resolv,
            hosts,
            hostname: spec.name.to_string(),
            cgroup: format!("/kraal/{}", id),
            resources: spec.resources,
            // An image with its own agent CLIs keeps them; others get the host's.
            agents: if image_cfg.has_agents {
                None
            } else {
                self.cfg.agents_dir.clone()
            },
            network: self.cfg.network,
            netns: kraal_net::netns_path(id),
            mounts: spec.mounts.clone(),
        };
        let bundle_dir = dir.join("bundle");
        std::fs::create_dir_all(&bundle_dir).map_err(BackendError::io(id, "start", &bundle_dir))?;
        let cfg_json = bundle_dir.join("config.json");
        std::fs::write(
            &cfg_json,
            serde_json::to_vec_pretty(&bundle.oci_config()).expect("serializes"),
        )
        .map_err(BackendError::io(id, "start", &cfg_json))?;

        let console = dir.join("console.log");
        let run = self
            .launch(id, &console)?
            .args(["run", "--detach", "--bundle"])
            .arg(&bundle_dir)
            .arg(id.as_str())
            .run()
            .await;
        if let Err(e) = run {
            let tail = kraal_sandbox::tail_file(&console, 2000);
            let _ = self.halt(id).await;
            let mut msg = kraal_sandbox::error_chain(&e);
            if !tail.trim().is_empty() {
                msg.push_str(&format!("\nconsole:\n{}", tail.trim()));
            }
            return Err(BackendError::Failed {
                workspace: id.to_string(),
                op: "start",
                message: msg,
            });
        }
        Ok(GuestEndpoint {
            addr: SocketAddr::from((link.guest_ip, kraal_protocol::DEFAULT_GUEST_PORT)),
            host: Some(link.host_ip.into()),
            ports: image_cfg.ports,
            tunnel: false,
        })
    }

    async fn stop(&self, id: &WorkspaceId) -> Result<(), BackendError> {
        self.halt(id).await
    }

    /// The volume's directory, with its image mounted (`nodev`, `nosuid`: nothing in it
    /// acts on the host). The host kernel's own ext4 holds what the sandbox wrote through
    /// the gofer, so reading it on the host trusts no guest-made file system structure.
    async fn host_volume(&self, id: &WorkspaceId) -> Result<Option<PathBuf>, BackendError> {
        let volume = self.ws_dir(id).join("volume");
        if !volume.is_dir() {
            return Err(BackendError::NotFound {
                workspace: id.to_string(),
            });
        }
        self.mount_volume(id).await?;
        Ok(Some(volume))
    }

    async fn release_host_volume(&self, id: &WorkspaceId) -> Result<(), BackendError> {
        if self.status(id).await? != SandboxStatus::Running {
            let volume = self.ws_dir(id).join("volume");
            kraal_sandbox::disk::unmount(&volume)
                .await
                .map_err(BackendError::runtime(id, "unmount volume"))?;
        }
        Ok(())
    }

    async fn destroy(&self, id: &WorkspaceId) -> Result<(), BackendError> {
        self.halt(id).await?;
        let dir = self.ws_dir(id);
        for mounted in [dir.join("rootfs"), dir.join("volume")] {
            if is_mountpoint(&mounted) {
                return Err(BackendError::Failed {
                    workspace: id.to_string(),
                    op: "destroy",
                    message: format!(
                        "{} is still mounted; refusing to delete under it",
                        mounted.display()
                    ),
                });
            }
        }
        if let Ok(rootfs) = std::fs::read_to_string(dir.join("image")) {
            ImageStore::remove_user(Path::new(rootfs.trim()), id.as_str());
        }
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(BackendError::io(id, "destroy", &dir))?;
        }
        Ok(())
    }

    async fn status(&self, id: &WorkspaceId) -> Result<SandboxStatus, BackendError> {
        Ok(match self.runsc_state(id).await?.as_deref() {
            Some("running") => SandboxStatus::Running,
            Some("paused") => SandboxStatus::Paused,
            _ if self.ws_dir(id).join("volume").is_dir() => SandboxStatus::Stopped,
            _ => SandboxStatus::Absent,
        })
    }

    async fn endpoint(&self, id: &WorkspaceId) -> Result<GuestEndpoint, BackendError> {
        let ip = match self.cfg.network {
            NetworkMode::Host => kraal_net::guest_ip(id).await,
            // runsc's netstack took the namespace's address over: it is the slot's.
            NetworkMode::Sandbox => kraal_net::netns_path(id)
                .exists()
                .then(|| self.recorded_slot(id))
                .flatten()
                .map(|slot| self.link(id, slot).guest_ip),
        }
        .ok_or_else(|| BackendError::Failed {
            workspace: id.to_string(),
            op: "endpoint",
            message: "the workspace network namespace is gone".into(),
        })?;
        Ok(GuestEndpoint {
            addr: SocketAddr::from((ip, kraal_protocol::DEFAULT_GUEST_PORT)),
            host: Some(kraal_net::host_ip_for(ip).into()),
            ports: self.image_config(id).ports,
            tunnel: false,
        })
    }

    async fn console_log(
        &self,
        id: &WorkspaceId,
        max_bytes: usize,
    ) -> Result<String, BackendError> {
        Ok(kraal_sandbox::tail_file(
            &self.ws_dir(id).join("console.log"),
            max_bytes,
        ))
    }

    async fn snapshot(&self, id: &WorkspaceId, name: &str) -> Result<(), BackendError> {
        self.take_snapshot(id, name).await
    }

    async fn restore(&self, spec: &SandboxSpec, name: &str) -> Result<GuestEndpoint, BackendError> {
        self.restore_snapshot(spec, name).await
    }

    /// `runsc pause` stops the application's tasks; freezing the sandbox's cgroup then
    /// stops the sentry and gofer as well, so a paused workspace uses no CPU.
    async fn pause(&self, id: &WorkspaceId) -> Result<(), BackendError> {
        self.runsc()
            .args(["pause", id.as_str()])
            .run()
            .await
            .map_err(BackendError::runtime(id, "pause"))?;
        self.set_frozen(id, true).await
    }

    async fn resume(&self, id: &WorkspaceId) -> Result<(), BackendError> {
        // runsc talks to the sentry: it must run again first.
        self.set_frozen(id, false).await?;
        self.runsc()
            .args(["resume", id.as_str()])
            .run()
            .await
            .map_err(BackendError::runtime(id, "resume"))?;
        Ok(())
    }
}
