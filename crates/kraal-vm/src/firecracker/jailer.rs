//! Firecracker's jailer: the command line that starts Firecracker in a chroot under an
//! unprivileged uid/gid with its own PID namespace and cgroup, and where the files the VM
//! needs must be placed inside that chroot.

use std::path::{Path, PathBuf};

/// How the jailer runs Firecracker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jailer {
    pub jailer: PathBuf,
    pub uid: u32,
    pub gid: u32,
    /// `--chroot-base-dir` (the jailer's default is /srv/jailer).
    pub chroot_base: PathBuf,
}

impl Jailer {
    /// The chroot of VM `id`: `<base>/<exec file name>/<id>/root`.
    pub fn root(&self, firecracker: &Path, id: &str) -> PathBuf {
        let exec = firecracker
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "firecracker".into());
        self.chroot_base.join(exec).join(id).join("root")
    }

    /// `jailer … -- <firecracker args>`; the API socket path is inside the chroot.
    pub fn argv(&self, firecracker: &Path, id: &str, cgroup_cpus: Option<f64>) -> Vec<String> {
        let mut a = vec![
            "--id".to_owned(),
            id.to_owned(),
            "--exec-file".into(),
            firecracker.display().to_string(),
            "--uid".into(),
            self.uid.to_string(),
            "--gid".into(),
            self.gid.to_string(),
            "--chroot-base-dir".into(),
            self.chroot_base.display().to_string(),
            "--cgroup-version".into(),
            "2".into(),
        ];
        if let Some(c) = cgroup_cpus {
            a.push("--cgroup".into());
            a.push(format!("cpu.max={} 100000", (c * 100_000.0).round() as u64));
        }
        a.extend(["--daemonize", "--", "--api-sock", "/api.sock", "--id", id].map(String::from));
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jailer_argv_golden() {
        let j = Jailer {
            jailer: "/usr/bin/jailer".into(),
            uid: 123,
            gid: 456,
            chroot_base: "/srv/jailer".into(),
        };
        let fc = Path::new("/usr/bin/firecracker");
        assert_eq!(
            j.argv(fc, "ws-0123456789", Some(1.5)).join(" "),
            "--id ws-0123456789 --exec-file /usr/bin/firecracker --uid 123 --gid 456 \
--chroot-base-dir /srv/jailer --cgroup-version 2 --cgroup cpu.max=150000 100000 \
--daemonize -- --api-sock /api.sock --id ws-0123456789"
        );
        assert_eq!(
            j.root(fc, "ws-0123456789"),
            PathBuf::from("/srv/jailer/firecracker/ws-0123456789/root")
        );
    }
}
