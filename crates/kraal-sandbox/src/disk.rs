//! Disk images shared by the backends: sparse ext4 files (a microVM's disks, a gVisor
//! workspace's size-limited volume) and their loop mounts on the host.

use std::path::Path;
use std::time::Duration;

use crate::process::{Cmd, ProcessError};

/// An empty ext4 file system of `mib` MiB in a sparse file, or one holding `from`.
pub async fn make_ext4(
    path: &Path,
    mib: u64,
    label: &str,
    from: Option<&Path>,
) -> Result<(), ProcessError> {
    let mut c =
        Cmd::new("mkfs.ext4").args(["-q", "-F", "-m", "0", "-E", "root_owner=0:0", "-L", label]);
    if let Some(d) = from {
        c = c.arg("-d").arg(d);
    }
    c.arg(path)
        .arg(format!("{mib}M"))
        .timeout(Duration::from_secs(1800))
        .run()
        .await
        .map(|_| ())
}

/// Whether `p` is a mount point (listed in this process's mount table).
pub fn is_mountpoint(p: &Path) -> bool {
    let Ok(canon) = p.canonicalize() else {
        return false;
    };
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = canon.to_string_lossy();
    info.lines()
        .any(|l| l.split_whitespace().nth(4) == Some(want.as_ref()))
}

/// Mounts the ext4 image `image` on `target` through a loop device (no-op when mounted).
pub async fn mount_ext4(image: &Path, target: &Path) -> Result<(), ProcessError> {
    if is_mountpoint(target) {
        return Ok(());
    }
    Cmd::new("mount")
        .args(["-t", "ext4", "-o", "loop,noatime"])
        .arg(image)
        .arg(target)
        .timeout(Duration::from_secs(60))
        .run()
        .await
        .map(|_| ())
}

/// Unmounts `target` when mounted; detaches lazily when it is busy.
pub async fn unmount(target: &Path) -> Result<(), ProcessError> {
    if !is_mountpoint(target) {
        return Ok(());
    }
    match Cmd::new("umount").arg(target).run().await {
        Ok(_) => Ok(()),
        Err(e) => {
            tracing::warn!("unmount {}: {e}; detaching lazily", target.display());
            Cmd::new("umount")
                .arg("-l")
                .arg(target)
                .run()
                .await
                .map(|_| ())
        }
    }
}
