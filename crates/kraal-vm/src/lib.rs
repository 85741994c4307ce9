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

pub mod argv;
pub mod firecracker;
pub mod qmp;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use kraal_core::{BackendKind, Capabilities, WorkspaceId};
use kraal_image::{ImageStore, Output};
use kraal_net::{Link, Pool};
use kraal_sandbox::process::{Cmd, ProcessError, which};
use kraal_sandbox::{Backend, BackendError, GuestEndpoint, HostCheck, SandboxSpec, SandboxStatus};

pub use argv::{Accel, Disk, VmSpec};
use qmp::Qmp;

/// How the backend is set up on this host.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Per-workspace state lives in `<state_dir>/<id>/`.
    pub state_dir: PathBuf,
    pub qemu: PathBuf,
    pub accel: Accel,
    pub pool: Pool,
    /// Builds images (with their ext4 output) and the kernel + initramfs; must carry the
    /// guest agent binary.
    pub images: ImageStore,
    pub default_image: String,
    /// Agent CLIs for images without their own, attached as a read-only ext4 disk.
    pub agents_dir: Option<PathBuf>,
    /// TCP ports of host services (the model gateway) a VM may reach at the host's
    /// address on its own link.
    pub host_ports: Vec<u16>,
    /// Size of each workspace's volume (sparse).
    pub volume_mib: u64,
    /// Size of each workspace's writable root layer (sparse).
    pub root_mib: u64,
    /// virtiofsd, which serves host directories mounted into VMs (`None`: mounts are refused).
    pub virtiofsd: Option<PathBuf>,
}

impl VmConfig {
    pub const DEFAULT_VOLUME_MIB: u64 = 32 * 1024;
    pub const DEFAULT_ROOT_MIB: u64 = 16 * 1024;
}

/// What [`QemuBackend::prepare`] readied for one boot.
pub(crate) struct Prepared {
    pub kernel: kraal_image::kernel::Kernel,
    pub link: Link,
    pub disks: Vec<Disk>,
    pub cmdline: String,
    pub ports: Vec<u16>,
    /// Host directories to serve with virtio-fs: (tag, mount).
    pub shares: Vec<(String, kraal_core::Mount)>,
}

/// The QEMU backend. It also owns what every microVM backend shares — workspace disks,
/// images, kernel, TAP links, the config disk — which the Firecracker backend reuses.
pub struct QemuBackend {
    cfg: VmConfig,
}

const OP_TIMEOUT: Duration = Duration::from_secs(60);
/// Marks a finished volume; an interrupted create leaves none and is redone.
const VOLUME: &str = "volume.ext4";

/// A persistent workspace keeps its network address even while stopped (`kraal-net`
/// reads this marker).
pub(crate) fn mark_persistent(dir: &Path, persistent: bool) -> std::io::Result<()> {
    let marker = dir.join("persistent");
    if persistent {
        std::fs::write(marker, b"")
    } else {
        match std::fs::remove_file(marker) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// Snapshot names become directory names: letters, digits, `-` and `_` only.
pub(crate) async fn check_snapshot_name(id: &WorkspaceId, name: &str) -> Result<(), BackendError> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(BackendError::failed(
            id,
            "snapshot",
            format!("invalid snapshot name {name:?}: use up to 64 letters, digits, - and _"),
        ));
    }
    Ok(())
}

/// Copies the workspace's writable disks (root layer and volume) from `from` to `to`,
/// sparse (and reflinked where the file system can).
pub(crate) async fn copy_disks(
    id: &WorkspaceId,
    from: &Path,
    to: &Path,
    op: &'static str,
) -> Result<(), BackendError> {
    for f in ["root.ext4", VOLUME] {
        Cmd::new("cp")
            .args(["--sparse=always", "--reflink=auto"])
            .arg(from.join(f))
            .arg(to.join(f))
            .timeout(Duration::from_secs(1800))
            .run()
            .await
            .map_err(BackendError::runtime(id, op))?;
    }
    Ok(())
}

/// The kernel command line: serial console, reset on panic (QEMU then exits), and the
/// disk order for hypervisors without disk serials.
pub fn kernel_cmdline(roles: &[&str]) -> String {
    format!(
        "console=ttyS0 quiet panic=-1 reboot=t 8250.nr_uarts=1 kraal.disks={}",
        roles.join(",")
    )
}

/// virtiofsd: `$KRAAL_VIRTIOFSD`, on `PATH`, Debian's locations, or `cargo install`'s.
pub fn locate_virtiofsd() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("KRAAL_VIRTIOFSD") {
        return Some(p.into());
    }
    let home = std::env::var_os("HOME").map(PathBuf::from);
    kraal_sandbox::process::which("virtiofsd")
        .into_iter()
        .chain(["/usr/libexec/virtiofsd", "/usr/lib/qemu/virtiofsd"].map(PathBuf::from))
        .chain(home.map(|h| h.join(".cargo/bin/virtiofsd")))
        .find(|p| p.is_file())
}

/// The host's TSC frequency in kHz, measured once against the wall clock (x86-64 only).
/// A TCG guest reads the host's TSC; when the host is busy the guest kernel's own
/// calibration against the emulated PIT fails and, without any other reference clock in a
/// microVM, its boot can hang. `tsc_early_khz` skips that calibration.
pub fn host_tsc_khz() -> Option<u64> {
    static KHZ: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    *KHZ.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            let measure = || {
                // SAFETY: rdtsc has no preconditions on x86-64.
                let (t0, c0) = (Instant::now(), unsafe { std::arch::x86_64::_rdtsc() });
                std::thread::sleep(Duration::from_millis(50));
                let (t1, c1) = (Instant::now(), unsafe { std::arch::x86_64::_rdtsc() });
                let ns = t1.duration_since(t0).as_nanos() as u64;
                (c1.wrapping_sub(c0))
                    .checked_mul(1_000_000)?
                    .checked_div(ns)
            };
            // The smaller of two measurements: a preemption only inflates the interval.
            let (a, b) = (measure()?, measure()?);
            let khz = a.min(b);
            (100_000..20_000_000).contains(&khz).then_some(khz)
        }
        #[cfg(not(target_arch = "x86_64"))]
        None
    })
}

/// The kernel command line for `accel`: under TCG the host's TSC frequency is given so the
/// guest kernel never has to calibrate it (see [`host_tsc_khz`]).
pub fn with_accel_params(cmdline: String, accel: Accel) -> String {
    match (accel, host_tsc_khz()) {
        (Accel::Tcg, Some(khz)) => format!("{cmdline} tsc_early_khz={khz}"),
        _ => cmdline,
    }
}

/// qboot (Debian's qemu-system-data ships it) when present, else QEMU's default.
pub fn firmware() -> Option<PathBuf> {
    ["/usr/share/qemu/qboot.rom", "/usr/share/seabios/qboot.rom"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// What the guest prints when a probe boot reaches its init (`kraal-guest`'s `PROBE_OK`).
pub const PROBE_OK: &str = "kraal-guest: probe boot reached init";

/// Boots `kernel` with its initramfs and nothing else (`kraal.probe`: the guest prints
/// [`PROBE_OK`] and resets), bounded by `limit`. This is how the backend confirms that KVM
/// really runs its guest kernel (some hosts accept a toy guest but hang or fail a real
/// one), and the bare-boot baseline of the boot benchmark. Returns the boot time.
pub async fn probe_boot(
    qemu: &Path,
    accel: Accel,
    kernel: &kraal_image::kernel::Kernel,
    limit: Duration,
) -> Result<Duration, String> {
    let mut a = vec!["-machine".to_owned(), "microvm,isa-serial=on,rtc=on".into()];
    a.extend(
        match accel {
            Accel::Kvm => ["-accel", "kvm", "-cpu", "host"],
            Accel::Tcg => ["-accel", "tcg,thread=multi", "-cpu", "max"],
        }
        .map(String::from),
    );
    if let Some(b) = firmware() {
        a.extend(["-bios".to_owned(), b.display().to_string()]);
    }
    a.extend(
        [
            "-m",
            "256M",
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-no-reboot",
            "-serial",
            "stdio",
        ]
        .map(String::from),
    );
    a.extend(["-kernel".to_owned(), kernel.vmlinuz.display().to_string()]);
    a.extend(["-initrd".to_owned(), kernel.initramfs.display().to_string()]);
    a.extend([
        "-append".to_owned(),
        "console=ttyS0 quiet panic=-1 reboot=t 8250.nr_uarts=1 kraal.probe".into(),
    ]);
    let t0 = Instant::now();
    match Cmd::new(qemu).args(a).timeout(limit).run().await {
        Ok(out) if out.stdout_str().contains(PROBE_OK) => Ok(t0.elapsed()),
        Ok(out) => Err(format!(
            "the guest kernel did not reach init under {}: {}",
            accel.as_str(),
            out.stdout_str()
                .trim()
                .lines()
                .last()
                .unwrap_or("no console output")
        )),
        Err(ProcessError::Timeout { .. }) => Err(format!(
            "the guest kernel did not reach init under {} within {} s",
            accel.as_str(),
            limit.as_secs()
        )),
        Err(ProcessError::Failed { status, stderr, .. }) => Err(format!(
            "QEMU under {} ended with {status}: {}",
            accel.as_str(),
            stderr.trim().lines().next().unwrap_or_default()
        )),
        Err(e) => Err(kraal_sandbox::error_chain(&e)),
    }
}

/// `data` zero-padded to whole 4 KiB blocks: the config disk.
pub fn config_disk(data: &[u8]) -> Vec<u8> {
    let mut v = data.to_vec();
    v.resize((data.len() + 1).div_ceil(4096) * 4096, 0);
    v
}

impl QemuBackend {
    pub fn new(cfg: VmConfig) -> Self {
        QemuBackend { cfg }
    }

    fn ws_dir(&self, id: &WorkspaceId) -> PathBuf {
        self.cfg.state_dir.join(id.as_str())
    }

    fn link(&self, id: &WorkspaceId, slot: u32) -> Link {
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

    /// The image a new workspace runs on, with its ext4 output.
    async fn resolve_image(
        &self,
        spec: &SandboxSpec,
        volume: &Path,
    ) -> Result<kraal_image::Image, BackendError> {
        self.cfg
            .images
            .for_sandbox(
                spec,
                volume,
                &self.cfg.default_image,
                &[Output::Rootfs, Output::Ext4],
            )
            .await
            .map_err(BackendError::chained(&spec.id, "create"))
    }

    fn image(&self, id: &WorkspaceId) -> Option<kraal_image::Image> {
        let p = std::fs::read_to_string(self.ws_dir(id).join("image")).ok()?;
        ImageStore::image_of(Path::new(p.trim()))
    }

    /// The agent CLIs as an ext4 image, built once per content of the directory's npm
    /// lock file (kept in the image store, shared by every daemon using it).
    async fn agents_disk(&self, id: &WorkspaceId) -> Result<Option<PathBuf>, BackendError> {
        let Some(dir) = &self.cfg.agents_dir else {
            return Ok(None);
        };
        let lock = dir.join("node_modules/.package-lock.json");
        let key =
            std::fs::read(&lock).unwrap_or_else(|_| dir.to_string_lossy().as_bytes().to_vec());
        use sha2::Digest;
        let hash = hex::encode(&sha2::Sha256::digest(&key)[..8]);
        let store = self.cfg.images.dir().join("vm-agents");
        std::fs::create_dir_all(&store).map_err(BackendError::io(id, "agent CLIs disk", &store))?;
        let out = store.join(format!("agents-{hash}.ext4"));
        if out.is_file() {
            return Ok(Some(out));
        }
        let _guard = lock_file(&store.join(".lock"))
            .await
            .map_err(BackendError::io(id, "agent CLIs disk", &out))?;
        if !out.is_file() {
            kraal_image::ext4::build(dir, &out, "kraal-agents")
                .await
                .map_err(BackendError::chained(id, "agent CLIs disk"))?;
        }
        Ok(Some(out))
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
    /// Everything a VM of this workspace boots with, hypervisor aside: its image, the kernel
    /// and initramfs, a fresh TAP link, the config disk written, and the disks in order.
    pub(crate) async fn prepare(&self, spec: &SandboxSpec) -> Result<Prepared, BackendError> {
        let id = &spec.id;
        let dir = self.ws_dir(id);
        let image = self.image(id).ok_or_else(|| {
            BackendError::failed(
                id,
                "start",
                "its image is missing; it was removed after the workspace was created",
            )
        })?;
        let lower = image.ext4().ok_or_else(|| {
            BackendError::failed(
                id,
                "start",
                format!("image {} has no ext4 output", image.name),
            )
        })?;
        let log = |p: kraal_image::Progress| {
            if p.done {
                tracing::info!(workspace = %id, "{}: {}", p.title, p.detail);
            }
        };
        let kernel = self
            .cfg
            .images
            .ensure_kernel(&log)
            .await
            .map_err(BackendError::chained(id, "start"))?;
        let agents = if image.config.has_agents {
            None
        } else {
            self.agents_disk(id).await?
        };

        // The same address as last time when it is free (a restored snapshot's guest still
        // has it configured); a persistent workspace's is reserved for it.
        let (slot, guard) = kraal_net::allocate_for(self.cfg.pool, &self.cfg.state_dir, id)
            .await
            .map_err(BackendError::chained(id, "allocate network"))?;
        let link = self.link(id, slot);
        kraal_net::install_firewall(self.cfg.pool, &self.cfg.host_ports)
            .await
            .map_err(BackendError::chained(id, "firewall"))?;
        kraal_net::setup_tap(id, &link)
            .await
            .map_err(BackendError::chained(id, "network setup"))?;
        drop(guard);

        let shares: Vec<(String, kraal_core::Mount)> = spec
            .mounts
            .iter()
            .enumerate()
            .map(|(i, m)| (format!("kraal-fs{i}"), m.clone()))
            .collect();
        let c = &image.config;
        let boot = serde_json::json!({
            "guest": {
                "listen": format!("0.0.0.0:{}", kraal_protocol::DEFAULT_GUEST_PORT),
                "token": spec.guest_token,
                "files_root": "/workspace",
                "hostname": spec.name.as_str(),
                "env": c.env.iter().map(|(k, v)| (k.clone(), v.clone()))
                    .chain(kraal_core::link_env(link.host_ip.into(), &spec.git_hosts))
                    .collect::<Vec<_>>(),
                "start": c.start,
                "user": c.user,
                "on_create": c.on_create,
                "on_start": c.on_start,
            },
            "vm": {
                "ip": link.guest_ip, "prefix": 30, "gateway": link.host_ip,
                "hostname": spec.name.as_str(),
                "resolv_conf": kraal_sandbox::resolv_conf(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default()),
                "hosts": format!("127.0.0.1\tlocalhost\n::1\tlocalhost\n127.0.1.1\t{}\n", spec.name),
                "shares": shares.iter().map(|(tag, m)| serde_json::json!({
                    "tag": tag, "path": m.path, "readonly": !m.writable,
                })).collect::<Vec<_>>(),
            },
        });
        let config = dir.join("config.img");
        kraal_sandbox::write_private(&config, &config_disk(boot.to_string().as_bytes()))
            .map_err(BackendError::io(id, "start", &config))?;

        let mut disks = vec![
            Disk {
                role: "lower",
                path: lower,
                readonly: true,
            },
            Disk {
                role: "upper",
                path: dir.join("root.ext4"),
                readonly: false,
            },
            Disk {
                role: "volume",
                path: dir.join(VOLUME),
                readonly: false,
            },
            Disk {
                role: "config",
                path: config,
                readonly: true,
            },
        ];
        if let Some(a) = agents {
            disks.push(Disk {
                role: "agents",
                path: a,
                readonly: true,
            });
        }
        let cmdline = kernel_cmdline(&disks.iter().map(|d| d.role).collect::<Vec<_>>());
        Ok(Prepared {
            shares,
            ports: image.config.ports.clone(),
            kernel,
            link,
            disks,
            cmdline,
        })
    }

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
        check_snapshot_name(id, name).await?;
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

async fn lock_file(path: &Path) -> std::io::Result<nix::fcntl::Flock<std::fs::File>> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, e)| e.into())
    })
    .await
    .expect("lock task does not panic")
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
                    ImageStore::add_user(&image.rootfs, id.as_str())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_disk_is_padded_with_at_least_one_zero() {
        assert_eq!(config_disk(b"{}").len(), 4096);
        let full = vec![b'x'; 4096];
        let d = config_disk(&full);
        assert_eq!(d.len(), 8192);
        assert_eq!(d[4096], 0);
    }

    #[test]
    fn tcg_guests_get_the_host_tsc_frequency() {
        let khz = host_tsc_khz().expect("an x86-64 host has a TSC");
        assert!((100_000..20_000_000).contains(&khz), "{khz} kHz");
        let c = with_accel_params("console=ttyS0".into(), Accel::Tcg);
        assert_eq!(c, format!("console=ttyS0 tsc_early_khz={khz}"));
        assert_eq!(with_accel_params("x".into(), Accel::Kvm), "x");
    }

    #[test]
    fn cmdline_names_the_disk_order() {
        let c = kernel_cmdline(&["lower", "upper", "volume", "config"]);
        assert!(c.starts_with("console=ttyS0 "));
        assert!(c.contains("panic=-1"));
        assert!(c.ends_with("kraal.disks=lower,upper,volume,config"));
    }
}
