//! The half every microVM backend shares, kept on [`QemuBackend`] and reused by the
//! Firecracker backend: a workspace's state directory markers, its image, the agent CLIs
//! disk, snapshot names and disk copies, and [`QemuBackend::prepare`], which readies
//! everything a boot needs except the hypervisor (kernel, TAP link, config disk, disks).

use std::path::{Path, PathBuf};
use std::time::Duration;

use kraal_core::WorkspaceId;
use kraal_image::{ImageStore, Output};
use kraal_net::Link;
use kraal_sandbox::process::Cmd;
use kraal_sandbox::{BackendError, SandboxSpec};

use crate::argv::Disk;
use crate::host::{config_disk, kernel_cmdline};
use crate::qemu::QemuBackend;

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

/// Marks a finished volume; an interrupted create leaves none and is redone.
pub(crate) const VOLUME: &str = "volume.ext4";

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

impl QemuBackend {
    /// The image a new workspace runs on, with its ext4 output.
    pub(crate) async fn resolve_image(
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

    pub(crate) fn image(&self, id: &WorkspaceId) -> Option<kraal_image::Image> {
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
}
