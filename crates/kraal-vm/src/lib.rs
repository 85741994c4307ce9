//! MicroVM backends: [`QemuBackend`] (`qemu`) and [`firecracker::FirecrackerBackend`], which
//! reuses the QEMU backend's shared half (`workspace`: a workspace's disks, image, kernel,
//! TAP link and config disk) and the host helpers (`host`: kernel command line, firmware,
//! virtiofsd, TSC frequency, the bounded probe boot). This file is the crate root: the
//! backend's configuration and the re-exports that make up the crate's API.

pub mod argv;
pub mod firecracker;
mod host;
mod qemu;
pub mod qmp;
mod workspace;

use std::path::PathBuf;

use kraal_image::ImageStore;
use kraal_net::Pool;

pub use argv::{Accel, Disk, VmSpec};
pub use host::{
    PROBE_OK, config_disk, firmware, host_tsc_khz, kernel_cmdline, locate_virtiofsd, probe_boot,
    with_accel_params,
};
pub use qemu::QemuBackend;
pub(crate) use workspace::{Prepared, copy_disks};

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
