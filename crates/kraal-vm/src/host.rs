//! Host-side helpers every microVM backend uses: the kernel command line, the firmware,
//! locating virtiofsd, the host's TSC frequency for TCG guests, the config disk's padding,
//! and the bounded probe boot that decides between KVM and TCG.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kraal_sandbox::process::{Cmd, ProcessError};

use crate::argv::Accel;

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
