//! Disk images shared by the backends: sparse ext4 files (a microVM's disks, a gVisor
//! workspace's size-limited volume) and their loop mounts on the host.

use std::path::Path;
use std::time::Duration;

use crate::process::{Cmd, ProcessError};

/// An empty ext4 file system of `mib` MiB in a new sparse file, or one holding `from`.
///
/// The file is created afresh, so every block mkfs does not write reads as zeros: mkfs
/// is told so (`assume_storage_prezeroed`), which marks the inode tables as initialized
/// instead of leaving the kernel to zero them after the first mount — 512 MiB of writes
/// for a 32 GiB volume, which would also make the sparse file that much bigger.
pub async fn make_ext4(
    path: &Path,
    mib: u64,
    label: &str,
    from: Option<&Path>,
) -> Result<(), ProcessError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(ProcessError::Failed {
                command: format!("mkfs.ext4 {}", path.display()),
                status: "not started".into(),
                stderr: format!("cannot remove the old file first: {e}"),
            });
        }
        _ => {}
    }
    let mut c = Cmd::new("mkfs.ext4").args([
        "-q",
        "-F",
        "-m",
        "0",
        "-E",
        "root_owner=0:0,assume_storage_prezeroed=1",
        "-L",
        label,
    ]);
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    /// A 32 GiB volume costs a few MiB of disk, holds what it was made from, and passes a
    /// full fsck — its inode tables count as initialized without being written.
    #[tokio::test]
    async fn volumes_are_sparse_complete_and_clean() {
        let dir = tempfile::tempdir().unwrap();
        let from = dir.path().join("from");
        std::fs::create_dir(&from).unwrap();
        std::fs::write(from.join("hello.txt"), "hello\n").unwrap();
        let img = dir.path().join("v.ext4");
        std::fs::write(&img, b"stale bytes of an interrupted attempt").unwrap();
        make_ext4(&img, 32 * 1024, "workspace", Some(&from))
            .await
            .unwrap();
        let m = std::fs::metadata(&img).unwrap();
        assert_eq!(m.len(), 32 << 30);
        assert!(
            m.blocks() * 512 < 16 << 20,
            "{} bytes allocated",
            m.blocks() * 512
        );
        // e2fsck exits non-zero (an error here) on any inconsistency.
        Cmd::new("e2fsck")
            .arg("-fn")
            .arg(&img)
            .run()
            .await
            .expect("a clean file system");
        let cat = Cmd::new("debugfs")
            .args(["-R", "cat /hello.txt"])
            .arg(&img)
            .run()
            .await
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&cat.stdout), "hello\n");
        let features = Cmd::new("dumpe2fs")
            .arg("-h")
            .arg(&img)
            .run()
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&features.stdout);
        assert!(
            text.contains("Filesystem volume name:   workspace"),
            "{text}"
        );
    }
}
