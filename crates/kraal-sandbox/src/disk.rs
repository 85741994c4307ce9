//! Disk images shared by the backends: sparse ext4 files (a microVM's disks, a gVisor
//! workspace's size-limited volume) and their loop mounts on the host.

use std::path::Path;
use std::time::Duration;

use nix::mount::{MntFlags, MsFlags};

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
    make_ext4_with(path, mib, label, from, &[]).await
}

/// [`make_ext4`] with extra file system `features` (`mkfs.ext4 -O`).
pub async fn make_ext4_with(
    path: &Path,
    mib: u64,
    label: &str,
    from: Option<&Path>,
    features: &[&str],
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
    if !features.is_empty() {
        c = c.arg("-O").arg(features.join(","));
    }
    c.arg(path)
        .arg(format!("{mib}M"))
        .timeout(Duration::from_secs(1800))
        .run()
        .await
        .map(|_| ())
}

/// A failed system call standing where a command used to: `command` says what it did.
pub(crate) fn syscall_failed(command: String, e: impl std::fmt::Display) -> ProcessError {
    ProcessError::Failed {
        command,
        status: "system call failed".into(),
        stderr: e.to_string(),
    }
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

/// Mounts the ext4 image `image` on `target` through a loop device (no-op when
/// mounted): the device is set up with ioctls and the file system mounted with
/// `mount(2)`, as `mount -o loop` would, without its process. The loop device clears
/// itself when the file system is unmounted.
pub async fn mount_ext4(image: &Path, target: &Path) -> Result<(), ProcessError> {
    if is_mountpoint(target) {
        return Ok(());
    }
    let (image, target) = (image.to_owned(), target.to_owned());
    let shown = format!("mount {} on {}", image.display(), target.display());
    tokio::task::spawn_blocking(move || {
        let (dev, path) = crate::loopdev::attach(&image)?;
        let mounted = nix::mount::mount(
            Some(path.as_path()),
            &target,
            Some("ext4"),
            // The daemon reads and writes it on the host (backups, restores): no device
            // node or setuid bit in it means anything here.
            MsFlags::MS_NOATIME | MsFlags::MS_NODEV | MsFlags::MS_NOSUID,
            None::<&str>,
        );
        // The mount holds the device now; closing ours lets autoclear detach it later
        // (or at once, when the mount failed).
        drop(dev);
        mounted.map_err(|e| {
            std::io::Error::new(
                std::io::Error::from(e).kind(),
                format!(
                    "mount(2) of {} (ext4 on {}): {e}",
                    target.display(),
                    path.display()
                ),
            )
        })
    })
    .await
    .expect("mount task does not panic")
    .map_err(|e| syscall_failed(shown, e))
}

/// Mounts an overlay of `lower` (read-only) and `upper` (writes, with `work` its work
/// directory) on `target` with `mount(2)`.
pub async fn mount_overlay(
    lower: &Path,
    upper: &Path,
    work: &Path,
    target: &Path,
) -> Result<(), ProcessError> {
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    let target = target.to_owned();
    let shown = format!("mount -t overlay overlay -o {opts} {}", target.display());
    tokio::task::spawn_blocking(move || {
        nix::mount::mount(
            Some("overlay"),
            &target,
            Some("overlay"),
            MsFlags::empty(),
            Some(opts.as_str()),
        )
    })
    .await
    .expect("mount task does not panic")
    .map_err(|e| syscall_failed(shown, e))
}

/// Unmounts `target` when mounted (`umount2(2)`); detaches lazily when it is busy.
pub async fn unmount(target: &Path) -> Result<(), ProcessError> {
    if !is_mountpoint(target) {
        return Ok(());
    }
    let target = target.to_owned();
    let shown = format!("umount {}", target.display());
    tokio::task::spawn_blocking(
        move || match nix::mount::umount2(&target, MntFlags::empty()) {
            Ok(()) | Err(nix::Error::EINVAL) => Ok(()),
            Err(e) => {
                tracing::warn!("unmount {}: {e}; detaching lazily", target.display());
                match nix::mount::umount2(&target, MntFlags::MNT_DETACH) {
                    Ok(()) | Err(nix::Error::EINVAL) => Ok(()),
                    Err(e) => Err(e),
                }
            }
        },
    )
    .await
    .expect("unmount task does not panic")
    .map_err(|e| syscall_failed(shown, e))
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

    /// Loop devices backed by `img`.
    fn loops_of(img: &Path) -> usize {
        let want = img.canonicalize().unwrap();
        std::fs::read_dir("/sys/block")
            .unwrap()
            .flatten()
            .filter(|e| {
                std::fs::read_to_string(e.path().join("loop/backing_file"))
                    .is_ok_and(|b| Path::new(b.trim()) == want)
            })
            .count()
    }

    /// Loop devices still backed by `img` once the kernel has had up to 5 s to clear
    /// them (it does when their last user goes, which may lag a little).
    async fn loops_left(img: &Path) -> usize {
        let t = std::time::Instant::now();
        while loops_of(img) > 0 && t.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        loops_of(img)
    }

    /// An ext4 image mounted through its own loop device and an overlay on top, both
    /// with `mount(2)`: files written through the mount land in the image, and after
    /// unmounting the loop device is gone again (autoclear).
    #[tokio::test]
    async fn images_and_overlays_mount_and_unmount_without_mount_processes() {
        assert!(nix::unistd::geteuid().is_root(), "needs root (mount)");
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("v.ext4");
        make_ext4(&img, 64, "t", None).await.unwrap();
        let target = dir.path().join("mnt");
        std::fs::create_dir(&target).unwrap();
        mount_ext4(&img, &target).await.unwrap();
        assert!(is_mountpoint(&target));
        assert_eq!(loops_of(&img), 1);
        // Mounted already: nothing more happens.
        mount_ext4(&img, &target).await.unwrap();
        assert_eq!(loops_of(&img), 1);
        std::fs::write(target.join("f.txt"), "on the volume\n").unwrap();

        let (upper, work, merged) = (
            dir.path().join("upper"),
            dir.path().join("work"),
            dir.path().join("merged"),
        );
        for d in [&upper, &work, &merged] {
            std::fs::create_dir(d).unwrap();
        }
        mount_overlay(&target, &upper, &work, &merged)
            .await
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(merged.join("f.txt")).unwrap(),
            "on the volume\n"
        );
        std::fs::write(merged.join("g.txt"), "upper\n").unwrap();
        assert!(upper.join("g.txt").is_file() && !target.join("g.txt").exists());
        unmount(&merged).await.unwrap();
        assert!(!is_mountpoint(&merged));

        unmount(&target).await.unwrap();
        assert!(!is_mountpoint(&target));
        assert_eq!(loops_left(&img).await, 0, "the loop device clears itself");
        unmount(&target).await.unwrap();
        let cat = Cmd::new("debugfs")
            .args(["-R", "cat /f.txt"])
            .arg(&img)
            .run()
            .await
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&cat.stdout), "on the volume\n");
        // A file that is no ext4 image: a clear error, no mount, no device left.
        let junk = dir.path().join("junk");
        std::fs::write(&junk, vec![0u8; 1 << 20]).unwrap();
        let e = mount_ext4(&junk, &target).await.unwrap_err().to_string();
        assert!(e.contains("ext4"), "{e}");
        assert!(!is_mountpoint(&target));
        assert_eq!(loops_left(&junk).await, 0);
    }
}
