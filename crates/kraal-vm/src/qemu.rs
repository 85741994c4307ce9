//! The QEMU microVM backend. Each workspace is one `qemu-system-x86_64 -M microvm`
//! process (KVM when the host's bounded probe says it works, TCG otherwise):
//!
//! * boot: Debian's cloud kernel and an initramfs whose `/init` is the guest agent
//!   (`kraal_image::kernel`); the guest mounts everything itself;
//! * disks (virtio-blk, found by serial): the image's ext4 read-only and shared (`lower`),
//!   the workspace's writable root layer (`upper`, overlayfs in the guest, so installed
//!   packages survive `down`/`up`), the volume (`/workspace`), a small config disk with
//!   the guest's JSON boot config, and the agent CLIs as an ext4 when the image has none;
//! * network: a TAP device per workspace with a /30 from the shared pool and the same
//!   nftables rules as the gVisor backend's veth links; the guest agent listens on TCP
//!   on its side of that link;
//! * control: QMP on a Unix socket (status, pause/resume, snapshot to file, quit); QEMU
//!   daemonizes, so a daemon restart never stops a VM.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use kraal_core::{BackendKind, Capabilities, WorkspaceId};
use kraal_image::ImageStore;
use kraal_net::Link;
use kraal_sandbox::process::{Cmd, which};
use kraal_sandbox::{Backend, BackendError, GuestEndpoint, HostCheck, SandboxSpec, SandboxStatus};

use crate::VmConfig;
use crate::argv::{self, Accel, VmSpec};
use crate::host::{firmware, with_accel_params};
use crate::qmp::Qmp;
use crate::workspace::{Prepared, VOLUME, copy_disks, mark_persistent};
use kraal_sandbox::check_snapshot_name;

/// The QEMU backend. It also owns what every microVM backend shares — workspace disks,
/// images, kernel, TAP links, the config disk — which the Firecracker backend reuses.
pub struct QemuBackend {
    pub(crate) cfg: VmConfig,
}

const OP_TIMEOUT: Duration = Duration::from_secs(60);

impl QemuBackend {
    pub fn new(cfg: VmConfig) -> Self {
        QemuBackend { cfg }
    }

    pub(crate) fn ws_dir(&self, id: &WorkspaceId) -> PathBuf {
        self.cfg.state_dir.join(id.as_str())
    }

    pub(crate) fn link(&self, id: &WorkspaceId, slot: u32) -> Link {
        Link::new(id, self.cfg.pool, slot)
    }

    /// The QEMU process of a workspace, if it is alive (pid file + `/proc` check that the
    /// pid still belongs to this workspace's QEMU).
    fn pid(&self, id: &WorkspaceId) -> Option<i32> {
        let text = std::fs::read_to_string(self.ws_dir(id).join("qemu.pid")).ok()?;
        let pid: i32 = text.trim().parse().ok()?;
        // A zombie (killed, not yet reaped) has an empty command line.
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let want = format!("kraal-{}", id.as_str());
        String::from_utf8_lossy(&cmdline)
            .contains(&want)
            .then_some(pid)
    }

    async fn qmp(&self, id: &WorkspaceId) -> Result<Qmp, BackendError> {
        Qmp::connect(&self.ws_dir(id).join("qmp.sock"))
            .await
            .map_err(BackendError::chained(id, "QMP"))
    }

    /// Starts a virtiofsd serving `m.host` on `socket` (detached: it lives as long as the
    /// VM that connects to it) and waits for the socket.
    async fn serve_dir(
        &self,
        id: &WorkspaceId,
        m: &kraal_core::Mount,
        socket: &Path,
    ) -> Result<(), BackendError> {
        let Some(bin) = &self.cfg.virtiofsd else {
            return Err(BackendError::failed(
                id,
                "start",
                "host directory mounts need virtiofsd (scripts/setup.sh installs it; or set KRAAL_VIRTIOFSD)",
            ));
        };
        if !m.host.is_dir() {
            return Err(BackendError::failed(
                id,
                "start",
                format!("mount {}: not a directory on this host", m.host.display()),
            ));
        }
        let _ = std::fs::remove_file(socket);
        let mut c = Cmd::new("setsid")
            .arg("-f")
            .arg(bin)
            .arg(format!("--socket-path={}", socket.display()))
            .arg(format!("--shared-dir={}", m.host.display()))
            .args(["--cache=auto", "--sandbox=chroot", "--log-level=error"]);
        if !m.writable {
            c = c.arg("--readonly");
        }
        c.new_session()
            .stdout_to(self.ws_dir(id).join("virtiofsd.log"))
            .timeout(Duration::from_secs(10))
            .run()
            .await
            .map_err(BackendError::runtime(id, "start virtiofsd"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            if Instant::now() > deadline {
                return Err(BackendError::failed(
                    id,
                    "start",
                    format!(
                        "virtiofsd for {} did not open {} within 10 s: {}",
                        m.host.display(),
                        socket.display(),
                        kraal_sandbox::tail_file(&self.ws_dir(id).join("virtiofsd.log"), 500)
                            .trim()
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// Ends the VM: asks QEMU to quit, then kills it; releases the TAP device.
    async fn halt(&self, id: &WorkspaceId) -> Result<(), BackendError> {
        self.halt_vm(id, false).await
    }

    /// Ends the VM. `for_restore`: a snapshot is about to replace it, so its state does not
    /// matter (no waiting for the guest to power off) and its TAP device (and so its
    /// address) stays in place, as the snapshot's guest still has that address configured.
    async fn halt_vm(&self, id: &WorkspaceId, for_restore: bool) -> Result<(), BackendError> {
        if let Some(pid) = self.pid(id) {
            // On a stop the engine has asked the guest to flush and power off; give it a
            // moment.
            if !for_restore {
                let deadline = Instant::now() + Duration::from_secs(5);
                while Instant::now() < deadline && self.pid(id).is_some() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            if self.pid(id).is_some() {
                if let Ok(mut q) = self.qmp(id).await {
                    let _ = q.execute("quit", None).await;
                }
                let deadline = Instant::now() + Duration::from_secs(5);
                while Instant::now() < deadline && self.pid(id).is_some() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            if self.pid(id).is_some() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                let deadline = Instant::now() + Duration::from_secs(5);
                while Instant::now() < deadline && self.pid(id).is_some() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        if !for_restore {
            kraal_net::teardown_tap(&self.link(id, 0)).await;
        }
        let dir = self.ws_dir(id);
        kill_virtiofsd(&dir);
        let _ = std::fs::remove_file(dir.join("qemu.pid"));
        let _ = std::fs::remove_file(dir.join("qmp.sock"));
        Ok(())
    }

    /// Boots the VM; `incoming` restores a snapshot's memory from that file.
    async fn boot(
        &self,
        spec: &SandboxSpec,
        incoming: Option<&Path>,
    ) -> Result<GuestEndpoint, BackendError> {
        let id = &spec.id;
        let dir = self.ws_dir(id);
        let Prepared {
            kernel,
            link,
            disks,
            cmdline,
            ports,
            shares,
        } = self.prepare(spec).await?;
        let mut fs = Vec::new();
        for (i, (tag, m)) in shares.iter().enumerate() {
            let socket = dir.join(format!("fs{i}.sock"));
            if let Err(e) = self.serve_dir(id, m, &socket).await {
                let _ = self.halt(id).await;
                return Err(e);
            }
            fs.push(argv::FsShare {
                tag: tag.clone(),
                socket,
            });
        }
        let console = dir.join("console.log");
        // A fresh console per boot, the previous one kept for post-mortems.
        let _ = std::fs::rename(&console, dir.join("console.prev.log"));
        let vm = VmSpec {
            name: id.to_string(),
            accel: self.cfg.accel,
            bios: firmware(),
            cpus: spec.resources.cpus.ceil().max(1.0) as u32,
            memory_mib: spec.resources.memory_mib.max(256),
            kernel: kernel.vmlinuz.clone(),
            initrd: kernel.initramfs.clone(),
            cmdline: with_accel_params(cmdline, self.cfg.accel),
            disks,
            tap: link.host_if.clone(),
            mac: argv::mac_for(id.as_str()),
            shares: fs,
            qmp: dir.join("qmp.sock"),
            console: console.clone(),
            pidfile: dir.join("qemu.pid"),
            incoming: incoming.is_some(),
        };
        let _ = std::fs::remove_file(&vm.qmp);
        let run = Cmd::new(&self.cfg.qemu)
            .args(vm.argv())
            .new_session()
            .timeout(OP_TIMEOUT)
            .run()
            .await;
        if let Err(e) = run {
            let _ = self.halt(id).await;
            return Err(BackendError::runtime(id, "start")(e));
        }
        if let Some(file) = incoming {
            let restored = async {
                let mut q = self.qmp(id).await?;
                q.execute(
                    "migrate-incoming",
                    Some(serde_json::json!({ "uri": format!("file:{}", file.display()) })),
                )
                .await
                .map_err(BackendError::chained(id, "restore"))?;
                let deadline = Instant::now() + Duration::from_secs(300);
                loop {
                    let st = q
                        .status()
                        .await
                        .map_err(BackendError::chained(id, "restore"))?;
                    if st == "paused" || st == "postmigrate" || st == "running" {
                        break;
                    }
                    if Instant::now() > deadline {
                        return Err(BackendError::failed(
                            id,
                            "restore",
                            format!("still {st} after 300 s"),
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                q.execute("cont", None)
                    .await
                    .map_err(BackendError::chained(id, "restore"))?;
                Ok(())
            }
            .await;
            if let Err(e) = restored {
                let _ = self.halt(id).await;
                return Err(e);
            }
        }
        Ok(GuestEndpoint {
            addr: SocketAddr::from((link.guest_ip, kraal_protocol::DEFAULT_GUEST_PORT)),
            host: Some(link.host_ip.into()),
            ports,
            tunnel: false,
        })
    }

    fn snapshot_dir(&self, id: &WorkspaceId, name: &str) -> PathBuf {
        self.ws_dir(id).join("snapshots").join(name)
    }

    /// Saves the running VM — memory, devices and both writable disks — under `name`,
    /// pausing it meanwhile; it keeps running afterwards.
    pub async fn take_snapshot(
        &self,
        id: &WorkspaceId,
        name: &str,
    ) -> Result<PathBuf, BackendError> {
        check_snapshot_name(id, name)?;
        if self.pid(id).is_none() {
            return Err(BackendError::failed(
                id,
                "snapshot",
                "the VM is not running",
            ));
        }
        let dir = self.ws_dir(id);
        let snap = self.snapshot_dir(id, name);
        let tmp = snap.with_extension("partial");
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(BackendError::io(id, "snapshot", &tmp))?;
        let mut q = self.qmp(id).await?;
        let was_running = q
            .status()
            .await
            .map_err(BackendError::chained(id, "snapshot"))?
            == "running";
        q.execute("stop", None)
            .await
            .map_err(BackendError::chained(id, "snapshot"))?;
        let r = async {
            let mem = tmp.join("memory");
            q.execute(
                "migrate",
                Some(serde_json::json!({ "uri": format!("file:{}", mem.display()) })),
            )
            .await
            .map_err(BackendError::chained(id, "snapshot"))?;
            let deadline = Instant::now() + Duration::from_secs(600);
            loop {
                let info = q
                    .execute("query-migrate", None)
                    .await
                    .map_err(BackendError::chained(id, "snapshot"))?;
                match info["status"].as_str().unwrap_or_default() {
                    "completed" => break,
                    "failed" | "cancelled" => {
                        return Err(BackendError::failed(
                            id,
                            "snapshot",
                            format!(
                                "saving memory failed: {}",
                                info["error-desc"].as_str().unwrap_or("unknown error")
                            ),
                        ));
                    }
                    _ if Instant::now() > deadline => {
                        return Err(BackendError::failed(
                            id,
                            "snapshot",
                            "saving memory took over 600 s",
                        ));
                    }
                    _ => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
            // The disks as they are at this instant (the VM is stopped).
            copy_disks(id, &dir, &tmp, "snapshot").await
        }
        .await;
        if was_running {
            let _ = q.execute("cont", None).await;
        }
        if let Err(e) = r {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        let _ = std::fs::remove_dir_all(&snap);
        std::fs::rename(&tmp, &snap).map_err(BackendError::io(id, "snapshot", &snap))?;
        Ok(snap)
    }

    /// Replaces the VM with the snapshot `name`: its disks are copied back and its memory
    /// restored, so processes continue where they were when it was taken.
    pub async fn restore_snapshot(
        &self,
        spec: &SandboxSpec,
        name: &str,
    ) -> Result<GuestEndpoint, BackendError> {
        let id = &spec.id;
        let snap = self.snapshot_dir(id, name);
        if !snap.join("memory").is_file() {
            return Err(BackendError::failed(
                id,
                "restore",
                format!("no snapshot named {name:?}"),
            ));
        }
        self.halt_vm(id, true).await?;
        copy_disks(id, &snap, &self.ws_dir(id), "restore").await?;
        self.boot(spec, Some(&snap.join("memory"))).await
    }
}

/// Kills virtiofsd processes serving sockets in `dir` (they normally exit with their VM;
/// this catches those whose VM never connected).
fn kill_virtiofsd(dir: &Path) {
    let want = format!("--socket-path={}/fs", dir.display());
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        if cmd
            .split(|&b| b == 0)
            .any(|a| a.starts_with(want.as_bytes()))
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

#[async_trait]
impl Backend for QemuBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Qemu
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            checkpoint: true,
            hardware_isolation: self.cfg.accel == Accel::Kvm,
            resource_limits: true,
            private_network: true,
            persistent_volume: true,
        }
    }

    async fn check(&self) -> HostCheck {
        let mut details = Vec::new();
        let mut ok = true;
        match Cmd::new(&self.cfg.qemu).version_line().await {
            Ok(v) => details.push(format!("{v} at {}", self.cfg.qemu.display())),
            Err(e) => {
                ok = false;
                details.push(format!(
                    "{}: {e}; install it with scripts/setup.sh (Debian package qemu-system-x86)",
                    self.cfg.qemu.display()
                ));
            }
        }
        details.push(match &self.cfg.virtiofsd {
            Some(v) => format!("host directory mounts with {}", v.display()),
            None => {
                "no virtiofsd: host directory mounts are refused (scripts/setup.sh installs it)"
                    .into()
            }
        });
        for tool in ["ip", "nft", "mkfs.ext4", "apt-get", "dpkg-deb"] {
            if which(tool).is_none() {
                ok = false;
                details.push(format!("{tool} is missing"));
            }
        }
        if !nix::unistd::geteuid().is_root() {
            ok = false;
            details.push("the QEMU backend needs root (TAP devices, nftables)".into());
        }
        HostCheck::new(BackendKind::Qemu, ok, details)
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<(), BackendError> {
        let id = &spec.id;
        let dir = self.ws_dir(id);
        std::fs::create_dir_all(&dir).map_err(BackendError::io(id, "create", &dir))?;
        let volume = dir.join(VOLUME);
        if !volume.is_file() {
            // The checkout goes into a scratch directory, becomes the volume's content,
            // and is deleted; the volume appears under its name only when complete.
            let scratch = dir.join("checkout.partial");
            let _ = std::fs::remove_dir_all(&scratch);
            if let Err(e) = kraal_sandbox::checkout::materialize(&spec.source, &scratch).await {
                let _ = std::fs::remove_dir_all(&scratch);
                return Err(BackendError::Source {
                    workspace: id.to_string(),
                    source: e,
                });
            }
            let r = async {
                if !dir.join("image").is_file() {
                    let image = self.resolve_image(spec, &scratch).await?;
                    ImageStore::add_user(&image.rootfs, id.as_str(), &dir)
                        .map_err(BackendError::chained(id, "create"))?;
                    if let Some(user) = &image.config.user {
                        let (uid, gid, _) = kraal_image::devbuild::lookup_user(&image.rootfs, user)
                            .map_err(|m| {
                                BackendError::failed(id, "create", format!("remoteUser: {m}"))
                            })?;
                        Cmd::new("chown")
                            .args(["-R", "--no-dereference", &format!("{uid}:{gid}")])
                            .arg(&scratch)
                            .timeout(Duration::from_secs(600))
                            .run()
                            .await
                            .map_err(BackendError::runtime(id, "chown"))?;
                    }
                    let f = dir.join("image");
                    std::fs::write(&f, image.rootfs.to_string_lossy().as_bytes())
                        .map_err(BackendError::io(id, "create", &f))?;
                }
                let partial = dir.join("volume.partial");
                kraal_sandbox::disk::make_ext4(
                    &partial,
                    self.cfg.volume_mib,
                    "workspace",
                    Some(&scratch),
                )
                .await
                .map_err(BackendError::runtime(id, "make volume"))?;
                std::fs::rename(&partial, &volume).map_err(BackendError::io(id, "create", &volume))
            }
            .await;
            let _ = std::fs::remove_dir_all(&scratch);
            let _ = std::fs::remove_file(dir.join("volume.partial"));
            r?;
        }
        mark_persistent(&dir, spec.persistent).map_err(BackendError::io(id, "create", &dir))?;
        let root = dir.join("root.ext4");
        if !root.is_file() {
            let partial = dir.join("root.partial");
            kraal_sandbox::disk::make_ext4(&partial, self.cfg.root_mib, "kraal-root", None)
                .await
                .map_err(BackendError::runtime(id, "make root layer"))?;
            std::fs::rename(&partial, &root).map_err(BackendError::io(id, "create", &root))?;
        }
        Ok(())
    }

    async fn start(&self, spec: &SandboxSpec) -> Result<GuestEndpoint, BackendError> {
        let id = &spec.id;
        if self.pid(id).is_some() {
            let mut q = self.qmp(id).await?;
            if q.status()
                .await
                .map_err(BackendError::chained(id, "start"))?
                == "paused"
            {
                q.execute("cont", None)
                    .await
                    .map_err(BackendError::chained(id, "resume"))?;
            }
            return self.endpoint(id).await;
        }
        let dir = self.ws_dir(id);
        if !dir.join(VOLUME).is_file() {
            return Err(BackendError::NotFound {
                workspace: id.to_string(),
            });
        }
        // Leftovers of a VM that died (killed, crashed) are cleared first.
        self.halt(id).await?;
        self.boot(spec, None).await
    }

    async fn stop(&self, id: &WorkspaceId) -> Result<(), BackendError> {
        self.halt(id).await
    }

    async fn destroy(&self, id: &WorkspaceId) -> Result<(), BackendError> {
        self.halt(id).await?;
        let dir = self.ws_dir(id);
        if let Ok(rootfs) = std::fs::read_to_string(dir.join("image")) {
            ImageStore::remove_user(Path::new(rootfs.trim()), id.as_str());
        }
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(BackendError::io(id, "destroy", &dir))?;
        }
        Ok(())
    }

    async fn status(&self, id: &WorkspaceId) -> Result<SandboxStatus, BackendError> {
        if self.pid(id).is_some() {
            if let Ok(mut q) = self.qmp(id).await
                && let Ok(st) = q.status().await
            {
                return Ok(match st.as_str() {
                    "paused" | "suspended" => SandboxStatus::Paused,
                    "shutdown" | "guest-panicked" | "internal-error" => SandboxStatus::Stopped,
                    _ => SandboxStatus::Running,
                });
            }
            return Ok(SandboxStatus::Running);
        }
        Ok(if self.ws_dir(id).join(VOLUME).is_file() {
            SandboxStatus::Stopped
        } else {
            SandboxStatus::Absent
        })
    }

    async fn endpoint(&self, id: &WorkspaceId) -> Result<GuestEndpoint, BackendError> {
        let ip: Ipv4Addr = kraal_net::tap_guest_ip(id).await.ok_or_else(|| {
            BackendError::failed(id, "endpoint", "the workspace's TAP device is gone")
        })?;
        Ok(GuestEndpoint {
            addr: SocketAddr::from((ip, kraal_protocol::DEFAULT_GUEST_PORT)),
            host: Some(kraal_net::host_ip_for(ip).into()),
            ports: self.image(id).map(|i| i.config.ports).unwrap_or_default(),
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

    async fn pause(&self, id: &WorkspaceId) -> Result<(), BackendError> {
        self.qmp(id)
            .await?
            .execute("stop", None)
            .await
            .map_err(BackendError::chained(id, "pause"))?;
        Ok(())
    }

    async fn snapshot(&self, id: &WorkspaceId, name: &str) -> Result<(), BackendError> {
        self.take_snapshot(id, name).await.map(|_| ())
    }

    async fn restore(&self, spec: &SandboxSpec, name: &str) -> Result<GuestEndpoint, BackendError> {
        self.restore_snapshot(spec, name).await
    }

    async fn resume(&self, id: &WorkspaceId) -> Result<(), BackendError> {
        self.qmp(id)
            .await?
            .execute("cont", None)
            .await
            .map_err(BackendError::chained(id, "resume"))?;
        Ok(())
    }
}
