//! Host inspection and backend construction, shared by `kraal serve` and `kraal host check`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use kraal_api::{BackendCheck, HostReport, KvmReport};
use kraal_core::BackendKind;
use kraal_gvisor::{GvisorBackend, GvisorConfig, NetworkMode};
use kraal_image::ImageStore;
use kraal_sandbox::{Backend, ProbeStatus};
use kraal_vm::Accel;

pub struct BackendOptions {
    pub data_dir: PathBuf,
    pub runsc: PathBuf,
    pub guest_bin: Option<PathBuf>,
    pub agents_dir: Option<PathBuf>,
    pub network: NetworkMode,
    /// Image of workspaces that name none.
    pub default_image: String,
    /// `auto`, `gvisor` or `qemu`.
    pub backend: String,
    pub qemu: PathBuf,
    /// `auto`, `kvm` or `tcg`.
    pub qemu_accel: String,
    /// Size limit of new volumes (MiB); 0: gVisor volumes are plain directories.
    pub volume_mib: u64,
}

fn guest_bin(o: &BackendOptions) -> PathBuf {
    o.guest_bin
        .clone()
        .or_else(kraal_sandbox::locate_guest_bin)
        .unwrap_or_else(|| PathBuf::from("/usr/local/lib/kraal/kraal-guest"))
}

/// The daemon's image store; images carry the guest agent the daemon uses.
/// Build steps (Dockerfile `RUN`, dev container features) run in gVisor.
pub fn image_store(o: &BackendOptions) -> ImageStore {
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get()) as f64;
    let runner = kraal_gvisor::build::BuildRunner {
        runsc: o.runsc.clone(),
        runsc_root: o.data_dir.join("runsc-build"),
        network: o.network,
        pool: kraal_net::DEFAULT_POOL,
        platform: std::env::var("KRAAL_RUNSC_PLATFORM").ok(),
        resources: kraal_core::Resources {
            cpus,
            memory_mib: 8192,
            pids: 8192,
        },
        host_ports: vec![kraal_core::GATEWAY_PORT, kraal_core::EGRESS_PORT],
    };
    ImageStore::new(crate::paths::image_dir(&o.data_dir))
        .with_guest(Some(guest_bin(o)))
        .with_runner(std::sync::Arc::new(runner))
}

pub fn gvisor(o: &BackendOptions) -> GvisorBackend {
    GvisorBackend::new(GvisorConfig {
        state_dir: o.data_dir.join("workspaces"),
        runsc_root: o.data_dir.join("runsc"),
        runsc: o.runsc.clone(),
        network: o.network,
        pool: kraal_net::DEFAULT_POOL,
        guest_bin: guest_bin(o),
        images: image_store(o),
        default_image: o.default_image.clone(),
        platform: std::env::var("KRAAL_RUNSC_PLATFORM").ok(),
        agents_dir: o
            .agents_dir
            .clone()
            .or_else(kraal_sandbox::locate_agents_dir),
        host_ports: vec![kraal_core::GATEWAY_PORT, kraal_core::EGRESS_PORT],
        volume_mib: o.volume_mib,
    })
}

/// The QEMU accelerator: the one asked for, else KVM only when the quick probe passes
/// *and* the real guest kernel boots to its init under it within a few seconds (some
/// hosts run a toy guest under KVM but fail or hang a stock kernel), else TCG.
pub async fn choose_accel(o: &BackendOptions, kvm: &crate::kvm::KvmProbe) -> (Accel, String) {
    match o.qemu_accel.as_str() {
        "kvm" => return (Accel::Kvm, "accelerator kvm (asked for)".into()),
        "tcg" => return (Accel::Tcg, "accelerator tcg (asked for)".into()),
        _ => {}
    }
    if !kvm.usable {
        return (
            Accel::Tcg,
            format!("accelerator tcg: no usable KVM ({})", kvm.detail),
        );
    }
    let kernel = match image_store(o).ensure_kernel(&|_| {}).await {
        Ok(k) => k,
        Err(e) => {
            return (
                Accel::Tcg,
                format!(
                    "accelerator tcg: cannot get the guest kernel to confirm KVM: {}",
                    kraal_sandbox::error_chain(&e)
                ),
            );
        }
    };
    match kraal_vm::probe_boot(&o.qemu, Accel::Kvm, &kernel, KVM_BOOT_PROBE).await {
        Ok(t) => (
            Accel::Kvm,
            format!(
                "accelerator kvm: the guest kernel reached init in {} ms",
                t.as_millis()
            ),
        ),
        Err(e) => (
            Accel::Tcg,
            format!("accelerator tcg: KVM is unusable for real guests: {e}"),
        ),
    }
}

/// How long the guest kernel may take to reach init under KVM before it counts as hung.
const KVM_BOOT_PROBE: std::time::Duration = std::time::Duration::from_secs(5);

pub fn qemu(o: &BackendOptions, accel: Accel) -> kraal_vm::QemuBackend {
    kraal_vm::QemuBackend::new(kraal_vm::VmConfig {
        state_dir: o.data_dir.join("vms"),
        qemu: o.qemu.clone(),
        accel,
        pool: kraal_net::DEFAULT_POOL,
        images: image_store(o),
        default_image: o.default_image.clone(),
        agents_dir: o
            .agents_dir
            .clone()
            .or_else(kraal_sandbox::locate_agents_dir),
        host_ports: vec![kraal_core::GATEWAY_PORT, kraal_core::EGRESS_PORT],
        volume_mib: if o.volume_mib == 0 {
            kraal_vm::VmConfig::DEFAULT_VOLUME_MIB
        } else {
            o.volume_mib
        },
        root_mib: kraal_vm::VmConfig::DEFAULT_ROOT_MIB,
        virtiofsd: kraal_vm::locate_virtiofsd(),
    })
}

/// The Firecracker backend when `KRAAL_FIRECRACKER_BIN` names its binary (with
/// `KRAAL_JAILER_BIN`, `KRAAL_JAILER_UID`/`_GID` it runs under the jailer).
pub fn firecracker(
    o: &BackendOptions,
    accel: Accel,
) -> Option<kraal_vm::firecracker::FirecrackerBackend> {
    let bin = std::env::var_os("KRAAL_FIRECRACKER_BIN")?;
    let num = |k: &str| std::env::var(k).ok().and_then(|v| v.parse().ok());
    let jailer =
        std::env::var_os("KRAAL_JAILER_BIN").map(|j| kraal_vm::firecracker::jailer::Jailer {
            jailer: j.into(),
            uid: num("KRAAL_JAILER_UID").unwrap_or(0),
            gid: num("KRAAL_JAILER_GID").unwrap_or(0),
            chroot_base: o.data_dir.join("jailer"),
        });
    Some(kraal_vm::firecracker::FirecrackerBackend::new(
        qemu(o, accel),
        kraal_vm::firecracker::FirecrackerOptions {
            firecracker: bin.into(),
            jailer,
        },
    ))
}

/// The Kubernetes backend from `kraal serve --kube-*`.
pub async fn kubernetes(a: &crate::cli::KubeArgs) -> anyhow::Result<kraal_kube::KubeBackend> {
    use anyhow::Context;
    let settings = kraal_kube::KubeSettings {
        namespace: a.kube_namespace.clone(),
        runtime_class: Some(a.kube_runtime_class.clone()).filter(|r| r != "none" && !r.is_empty()),
        storage_class: a.kube_storage_class.clone(),
        image: a.kube_image.clone(),
        volume_size: a.kube_volume_size.clone(),
        node_selector: a
            .kube_node_selector
            .iter()
            .map(|s| kraal_kube::parse_node_selector(s))
            .collect::<Result<_, _>>()?,
        tolerations: a
            .kube_toleration
            .iter()
            .map(|s| kraal_kube::parse_toleration(s))
            .collect::<Result<_, _>>()?,
        image_pull_secret: a.kube_pull_secret.clone(),
    };
    kraal_kube::KubeBackend::connect(a.kube_context.clone(), settings)
        .await
        .context("cannot reach the Kubernetes cluster (kubeconfig)")
}

/// Probes every backend and picks the one workspaces use: the one asked for, or with
/// `auto` QEMU when KVM works (hardware isolation), gVisor otherwise (TCG emulation is
/// much slower than gVisor).
pub async fn inspect(o: &BackendOptions) -> (HostReport, Arc<dyn Backend>) {
    let kvm = crate::kvm::probe().await;
    let g = gvisor(o);
    let gcheck = g.check().await;
    let mut backends = vec![BackendCheck {
        backend: BackendKind::Gvisor,
        usable: gcheck.status == ProbeStatus::Usable,
        details: gcheck.details,
    }];
    let (accel, accel_detail) = choose_accel(o, &kvm).await;
    let q = qemu(o, accel);
    let qcheck = q.check().await;
    let mut details = qcheck.details;
    details.push(accel_detail);
    backends.push(BackendCheck {
        backend: BackendKind::Qemu,
        usable: qcheck.status == ProbeStatus::Usable,
        details,
    });
    let fc = firecracker(o, accel);
    let fc_usable = match &fc {
        Some(f) if accel == Accel::Kvm => {
            let c = f.check().await;
            backends.push(BackendCheck {
                backend: BackendKind::Firecracker,
                usable: c.status == ProbeStatus::Usable,
                details: c.details,
            });
            c.status == ProbeStatus::Usable
        }
        _ => {
            backends.push(BackendCheck {
                backend: BackendKind::Firecracker,
                usable: false,
                details: vec![match (&fc, accel) {
                    (None, _) => "no firecracker binary: set KRAAL_FIRECRACKER_BIN (Firecracker 1.8 or later)".into(),
                    (Some(_), _) => "needs KVM that boots the guest kernel (see the QEMU accelerator above)".into(),
                }],
            });
            false
        }
    };
    backends.push(BackendCheck {
        backend: BackendKind::Kubernetes,
        usable: false,
        details: vec!["no cluster configured".into()],
    });
    let qemu_usable = backends[1].usable;
    let selected = match o.backend.as_str() {
        "qemu" => BackendKind::Qemu,
        "firecracker" => BackendKind::Firecracker,
        "gvisor" => BackendKind::Gvisor,
        _ if fc_usable => BackendKind::Firecracker,
        _ if accel == Accel::Kvm && qemu_usable => BackendKind::Qemu,
        _ => BackendKind::Gvisor,
    };
    let report = HostReport {
        selected,
        backends,
        kvm: KvmReport {
            usable: kvm.usable,
            detail: kvm.detail,
            probe_ms: kvm.elapsed.as_millis() as u64,
        },
    };
    let backend: Arc<dyn Backend> = match (selected, fc) {
        (BackendKind::Firecracker, Some(f)) => Arc::new(f),
        (BackendKind::Firecracker, None) => {
            Arc::new(kraal_vm::firecracker::FirecrackerBackend::new(
                qemu(o, accel),
                kraal_vm::firecracker::FirecrackerOptions {
                    firecracker: "firecracker".into(),
                    jailer: None,
                },
            ))
        }
        (BackendKind::Qemu, _) => Arc::new(q),
        _ => Arc::new(g),
    };
    (report, backend)
}

pub fn print_report(r: &HostReport) {
    println!(
        "KVM: {} ({}, probe took {} ms)",
        if r.kvm.usable { "usable" } else { "not usable" },
        r.kvm.detail,
        r.kvm.probe_ms
    );
    for b in &r.backends {
        println!(
            "{:<12} {}",
            b.backend.as_str(),
            if b.usable { "usable" } else { "not usable" }
        );
        for d in &b.details {
            println!("  {d}");
        }
    }
    println!("selected backend: {}", r.selected);
}

pub fn ensure_dir(p: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(p)?;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
}
