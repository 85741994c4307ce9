//! The Firecracker backend: the same workspace disks, kernel, initramfs, TAP link and
//! config disk as the QEMU backend (it reuses [`QemuBackend`]'s shared half), with
//! Firecracker as the hypervisor, configured through its HTTP API on a Unix socket
//! (`api`, `client`), optionally inside the jailer's chroot (`jailer`). Firecracker boots an
//! uncompressed `vmlinux` and finds virtio-mmio devices through ACPI (Firecracker 1.8+),
//! which the Debian cloud kernel supports.

pub mod api;
pub mod client;
pub mod jailer;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use kraal_core::{BackendKind, Capabilities, WorkspaceId};
use kraal_sandbox::process::Cmd;
use kraal_sandbox::{Backend, BackendError, GuestEndpoint, HostCheck, SandboxSpec, SandboxStatus};

use crate::{Prepared, QemuBackend};

/// Where Firecracker and (optionally) the jailer are.
#[derive(Debug, Clone)]
pub struct FirecrackerOptions {
    pub firecracker: PathBuf,
    pub jailer: Option<jailer::Jailer>,
}

pub struct FirecrackerBackend {
    vms: QemuBackend,
    opts: FirecrackerOptions,
}

impl FirecrackerBackend {
    /// `vms` supplies the shared half (its QEMU settings are not used).
    pub fn new(vms: QemuBackend, opts: FirecrackerOptions) -> Self {
        FirecrackerBackend { vms, opts }
    }

    fn ws_dir(&self, id: &WorkspaceId) -> PathBuf {
        self.vms.ws_dir(id)
    }

    /// The directory Firecracker sees as `/`: the jailer's chroot, else the host root.
    fn chroot(&self, id: &WorkspaceId) -> Option<PathBuf> {
        self.opts
            .jailer
            .as_ref()
            .map(|j| j.root(&self.opts.firecracker, id.as_str()))
    }

    fn api_socket(&self, id: &WorkspaceId) -> PathBuf {
        match self.chroot(id) {
            Some(root) => root.join("api.sock"),
            None => self.ws_dir(id).join("api.sock"),
        }
    }

    /// The live Firecracker process of this workspace (`--id <workspace id>`).
    fn pid(&self, id: &WorkspaceId) -> Option<i32> {
        let want = id.as_str();
        std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            let args: Vec<&[u8]> = cmd.split(|&b| b == 0).collect();
            let is_fc = args
                .first()
                .is_some_and(|a| String::from_utf8_lossy(a).contains("firecracker"));
            let has_id = args
                .windows(2)
                .any(|w| w[0] == b"--id" && w[1] == want.as_bytes());
            (is_fc && has_id).then_some(pid)
        })
    }

    async fn call(
        &self,
        id: &WorkspaceId,
        op: &'static str,
        c: &api::Call,
    ) -> Result<(), BackendError> {
        client::send(&self.api_socket(id), c)
            .await
            .map(|_| ())
            .map_err(BackendError::chained(id, op))
    }

    /// Makes `path` visible inside the chroot as `/<name>` (hard link, else copy) and
    /// returns the path Firecracker should use.
    fn expose(&self, id: &WorkspaceId, path: &Path, name: &str) -> std::io::Result<String> {
        let Some(root) = self.chroot(id) else {
            return Ok(path.display().to_string());
        };
        let dst = root.join(name);
        let _ = std::fs::remove_file(&dst);
        if std::fs::hard_link(path, &dst).is_err() {
            std::fs::copy(path, &dst)?;
        }
        if let Some(j) = &self.opts.jailer {
            let _ = nix::unistd::chown(
                &dst,
                Some(nix::unistd::Uid::from_raw(j.uid)),
                Some(nix::unistd::Gid::from_raw(j.gid)),
            );
        }
        Ok(format!("/{name}"))
    }

    async fn halt(&self, id: &WorkspaceId) -> Result<(), BackendError> {
        self.halt_vm(id, false).await
    }

    /// Ends the VM. `for_restore`: a snapshot is about to replace it, so it is killed at
    /// once (its state does not matter) and its TAP device (and so its address) stays in
    /// place, as the snapshot's guest still has that address configured.
    async fn halt_vm(&self, id: &WorkspaceId, for_restore: bool) -> Result<(), BackendError> {
        if self.pid(id).is_some() {
            // On a stop the engine asked the guest to power off already; then
            // Ctrl-Alt-Del, then kill.
            if !for_restore {
                let deadline = Instant::now() + Duration::from_secs(5);
                while Instant::now() < deadline && self.pid(id).is_some() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            if !for_restore && self.pid(id).is_some() {
                let _ = self.call(id, "stop", &api::ctrl_alt_del()).await;
                let deadline = Instant::now() + Duration::from_secs(5);
                while Instant::now() < deadline && self.pid(id).is_some() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            if let Some(pid) = self.pid(id) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        if !for_restore {
            kraal_net::teardown_tap(&self.vms.link(id, 0)).await;
        }
        let _ = std::fs::remove_file(self.api_socket(id));
        if let Some(root) = self.chroot(id)
            && let Some(vm_dir) = root.parent()
        {
            let _ = std::fs::remove_dir_all(vm_dir);
        }
        Ok(())
    }

    /// Starts a Firecracker process for the workspace and waits for its API socket.
    async fn spawn(&self, id: &WorkspaceId, cpus: f64) -> Result<(), BackendError> {
        let sock = self.api_socket(id);
        let _ = std::fs::remove_file(&sock);
        let console = self.ws_dir(id).join("console.log");
        let _ = std::fs::rename(&console, self.ws_dir(id).join("console.prev.log"));
        let cmd = match &self.opts.jailer {
            Some(j) => {
                Cmd::new(&j.jailer).args(j.argv(&self.opts.firecracker, id.as_str(), Some(cpus)))
            }
            // `setsid -f`: its own session, detached, so a daemon restart leaves it running.
            None => Cmd::new("setsid")
                .arg("-f")
                .arg(&self.opts.firecracker)
                .arg("--api-sock")
                .arg(&sock)
                .args(["--id", id.as_str()]),
        };
        cmd.new_session()
            .stdout_to(&console)
            .timeout(Duration::from_secs(30))
            .run()
            .await
            .map_err(BackendError::runtime(id, "start"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sock.exists() {
            if Instant::now() > deadline {
                return Err(BackendError::failed(
                    id,
                    "start",
                    format!(
                        "Firecracker did not open its API socket {} within 10 s",
                        sock.display()
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    fn snapshot_dir(&self, id: &WorkspaceId, name: &str) -> PathBuf {
        self.ws_dir(id).join("snapshots").join(name)
    }

    /// Full snapshot (device state, memory, both writable disks) of the running VM.
    pub async fn take_snapshot(
        &self,
        id: &WorkspaceId,
        name: &str,
    ) -> Result<PathBuf, BackendError> {
        kraal_sandbox::check_snapshot_name(id, name)?;
        if self.pid(id).is_none() {
            return Err(BackendError::failed(
                id,
                "snapshot",
                "the VM is not running",
            ));
        }
        let snap = self.snapshot_dir(id, name);
        std::fs::create_dir_all(&snap).map_err(BackendError::io(id, "snapshot", &snap))?;
        self.call(id, "snapshot", &api::pause()).await?;
        let state = self
            .expose_out(id, "state")
            .map_err(BackendError::io(id, "snapshot", &snap))?;
        let mem = self
            .expose_out(id, "memory")
            .map_err(BackendError::io(id, "snapshot", &snap))?;
        let r = self
            .call(id, "snapshot", &api::snapshot_create(&state.0, &mem.0))
            .await;
        let copied = async {
            r?;
            for ((_, written), name) in [(state, "state"), (mem, "memory")] {
                let dst = snap.join(name);
                std::fs::rename(&written, &dst).map_err(BackendError::io(id, "snapshot", &dst))?;
            }
            crate::copy_disks(id, &self.ws_dir(id), &snap, "snapshot").await
        }
        .await;
        let _ = self.call(id, "resume", &api::resume()).await;
        copied.map(|()| snap)
    }

    /// Where Firecracker writes a snapshot file (inside the chroot when jailed) and where
    /// it belongs on the host.
    fn expose_out(&self, id: &WorkspaceId, name: &str) -> std::io::Result<(String, PathBuf)> {
        Ok(match self.chroot(id) {
            Some(root) => (format!("/{name}"), root.join(name)),
            None => {
                let dir = self.ws_dir(id).join("snapshots").join(".out");
                std::fs::create_dir_all(&dir)?;
                (dir.join(name).display().to_string(), dir.join(name))
            }
        })
    }
}

#[async_trait]
impl Backend for FirecrackerBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Firecracker
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            checkpoint: true,
            hardware_isolation: true,
            resource_limits: true,
            private_network: true,
            persistent_volume: true,
        }
    }

    async fn check(&self) -> HostCheck {
        let mut details = Vec::new();
        let mut ok = true;
        match Cmd::new(&self.opts.firecracker).version_line().await {
            Ok(v) => details.push(format!("{v} at {}", self.opts.firecracker.display())),
            Err(e) => {
                ok = false;
                details.push(format!(
                    "{}: {}",
                    self.opts.firecracker.display(),
                    kraal_sandbox::error_chain(&e)
                ));
            }
        }
        if let Some(j) = &self.opts.jailer {
            details.push(format!(
                "jailer {} (uid {}, gid {}, chroot under {})",
                j.jailer.display(),
                j.uid,
                j.gid,
                j.chroot_base.display()
            ));
        }
        HostCheck::new(BackendKind::Firecracker, ok, details)
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<(), BackendError> {
        self.vms.create(spec).await
    }

    async fn start(&self, spec: &SandboxSpec) -> Result<GuestEndpoint, BackendError> {
        let id = &spec.id;
        if self.pid(id).is_some() {
            return self.endpoint(id).await;
        }
        self.halt(id).await?;
        if !spec.mounts.is_empty() {
            return Err(BackendError::failed(
                id,
                "start",
                "Firecracker has no virtio-fs: host directory mounts need the QEMU or gVisor backend",
            ));
        }
        let Prepared {
            kernel,
            link,
            disks,
            cmdline,
            ports,
            ..
        } = self.vms.prepare(spec).await?;
        let vmlinux = kernel.vmlinux.clone().ok_or_else(|| {
            BackendError::failed(
                id,
                "start",
                "the kernel has no uncompressed vmlinux, which Firecracker needs",
            )
        })?;
        let r = async {
            if let Some(root) = self.chroot(id) {
                std::fs::create_dir_all(&root).map_err(BackendError::io(id, "start", &root))?;
            }
            let mut drives = Vec::new();
            for d in &disks {
                let p = self
                    .expose(id, &d.path, &format!("{}.img", d.role))
                    .map_err(BackendError::io(id, "start", &d.path))?;
                drives.push((d.role.to_owned(), p, d.readonly));
            }
            let vm = api::VmDescription {
                vcpus: spec.resources.cpus.ceil().max(1.0) as u32,
                memory_mib: spec.resources.memory_mib.max(256),
                kernel: self
                    .expose(id, &vmlinux, "vmlinux")
                    .map_err(BackendError::io(id, "start", &vmlinux))?,
                initrd: self
                    .expose(id, &kernel.initramfs, "initramfs.cpio")
                    .map_err(BackendError::io(id, "start", &kernel.initramfs))?,
                // Firecracker resets through the i8042 controller.
                cmdline: cmdline.replace("reboot=t", "reboot=k"),
                drives,
                tap: link.host_if.clone(),
                mac: crate::argv::mac_for(id.as_str()),
            };
            self.spawn(id, spec.resources.cpus).await?;
            for c in api::boot_calls(&vm) {
                self.call(id, "start", &c).await?;
            }
            Ok(())
        }
        .await;
        if let Err(e) = r {
            let _ = self.halt(id).await;
            return Err(e);
        }
        Ok(GuestEndpoint {
            addr: SocketAddr::from((link.guest_ip, kraal_protocol::DEFAULT_GUEST_PORT)),
            host: Some(link.host_ip.into()),
            ports,
            tunnel: false,
        })
    }

    async fn stop(&self, id: &WorkspaceId) -> Result<(), BackendError> {
        self.halt(id).await
    }

    async fn destroy(&self, id: &WorkspaceId) -> Result<(), BackendError> {
        self.halt(id).await?;
        self.vms.destroy(id).await
    }

    async fn status(&self, id: &WorkspaceId) -> Result<SandboxStatus, BackendError> {
        if self.pid(id).is_some() {
            return Ok(SandboxStatus::Running);
        }
        self.vms.status(id).await
    }

    async fn endpoint(&self, id: &WorkspaceId) -> Result<GuestEndpoint, BackendError> {
        self.vms.endpoint(id).await
    }

    async fn console_log(
        &self,
        id: &WorkspaceId,
        max_bytes: usize,
    ) -> Result<String, BackendError> {
        self.vms.console_log(id, max_bytes).await
    }

    async fn pause(&self, id: &WorkspaceId) -> Result<(), BackendError> {
        self.call(id, "pause", &api::pause()).await
    }

    async fn resume(&self, id: &WorkspaceId) -> Result<(), BackendError> {
        self.call(id, "resume", &api::resume()).await
    }

    async fn snapshot(&self, id: &WorkspaceId, name: &str) -> Result<(), BackendError> {
        self.take_snapshot(id, name).await.map(|_| ())
    }

    async fn restore(&self, spec: &SandboxSpec, name: &str) -> Result<GuestEndpoint, BackendError> {
        self.restore_snapshot(spec, name).await
    }
}

/// The restore half of snapshots: a fresh Firecracker loads the state and memory files.
impl FirecrackerBackend {
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
        crate::copy_disks(id, &snap, &self.ws_dir(id), "restore").await?;
        // The TAP device the snapshot's network interface names must exist again.
        let Prepared { link, ports, .. } = self.vms.prepare(spec).await?;
        if let Some(root) = self.chroot(id) {
            std::fs::create_dir_all(&root).map_err(BackendError::io(id, "restore", &root))?;
        }
        let state = self
            .expose(id, &snap.join("state"), "state")
            .map_err(BackendError::io(id, "restore", &snap))?;
        let mem = self
            .expose(id, &snap.join("memory"), "memory")
            .map_err(BackendError::io(id, "restore", &snap))?;
        self.spawn(id, spec.resources.cpus).await?;
        self.call(id, "restore", &api::snapshot_load(&state, &mem))
            .await?;
        Ok(GuestEndpoint {
            addr: SocketAddr::from((link.guest_ip, kraal_protocol::DEFAULT_GUEST_PORT)),
            host: Some(link.host_ip.into()),
            ports,
            tunnel: false,
        })
    }
}
