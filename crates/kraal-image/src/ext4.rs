//! The ext4 output: a file-system image of the root file system for microVMs, made by
//! `mkfs.ext4 -d` from the directory (no loop mount, no root-only kernel feature), sized
//! from the tree with room to grow.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use kraal_sandbox::process::{Cmd, which};

use crate::{ImageError, io};

/// Bytes and inodes the tree needs on a 4 KiB-block file system.
pub fn measure(root: &Path) -> (u64, u64) {
    let mut bytes = 0u64;
    let mut inodes = 0u64;
    let mut seen = std::collections::HashSet::new();
    for e in walkdir::WalkDir::new(root).into_iter().flatten() {
        let Ok(m) = e.path().symlink_metadata() else {
            continue;
        };
        if m.nlink() > 1 && !m.is_dir() && !seen.insert(m.ino()) {
            continue;
        }
        inodes += 1;
        let len = if m.is_dir() { 4096 } else { m.len() };
        bytes += len.div_ceil(4096) * 4096;
    }
    (bytes, inodes)
}

/// Writes `out` (atomically) as an ext4 image holding `rootfs`, labelled `label`.
pub async fn build(rootfs: &Path, out: &Path, label: &str) -> Result<(), ImageError> {
    if which("mkfs.ext4").is_none() {
        return Err(ImageError::MissingTool {
            program: "mkfs.ext4".into(),
            hint: " or `apt-get install e2fsprogs`".into(),
        });
    }
    let r = rootfs.to_owned();
    let (bytes, inodes) = tokio::task::spawn_blocking(move || measure(&r))
        .await
        .expect("measure does not panic");
    // Metadata, journal and free space for the workspace's own writes on top: 25 % + 256 MiB,
    // rounded to MiB.
    let size = (bytes + bytes / 4 + (256 << 20)).div_ceil(1 << 20) << 20;
    let inodes = inodes + inodes / 3 + 4096;
    let tmp = out.with_extension("ext4.partial");
    let _ = std::fs::remove_file(&tmp);
    let f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    f.set_len(size).map_err(io(&tmp))?;
    drop(f);
    let label: String = label.chars().take(16).collect();
    let res = Cmd::new("mkfs.ext4")
        .args(["-q", "-F", "-m", "0", "-E", "root_owner=0:0", "-L", &label])
        .args(["-N", &inodes.to_string(), "-d"])
        .arg(rootfs)
        .arg(&tmp)
        .timeout(Duration::from_secs(30 * 60))
        .run()
        .await;
    if let Err(source) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(ImageError::Build {
            name: label,
            step: "mkfs.ext4",
            source,
        });
    }
    std::fs::rename(&tmp, out).map_err(io(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_tree_becomes_a_checkable_ext4_image_without_mounting() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        std::fs::create_dir_all(root.join("etc/deep/er")).unwrap();
        std::fs::write(root.join("etc/hello"), "hello from ext4\n").unwrap();
        std::fs::write(root.join("etc/deep/er/big"), vec![7u8; 300_000]).unwrap();
        std::fs::hard_link(root.join("etc/hello"), root.join("etc/hello2")).unwrap();
        std::os::unix::fs::symlink("hello", root.join("etc/link")).unwrap();
        let out = d.path().join("root.ext4");
        build(&root, &out, "a-label-longer-than-sixteen")
            .await
            .unwrap();
        assert!(!out.with_extension("ext4.partial").exists());
        Cmd::new("e2fsck")
            .args(["-fn"])
            .arg(&out)
            .run()
            .await
            .unwrap();
        let cat = Cmd::new("debugfs")
            .args(["-R", "cat /etc/hello"])
            .arg(&out)
            .run()
            .await
            .unwrap();
        assert_eq!(cat.stdout_str(), "hello from ext4\n");
        let stat = Cmd::new("debugfs")
            .args(["-R", "stat /etc/hello2"])
            .arg(&out)
            .run()
            .await
            .unwrap();
        assert!(
            stat.stdout_str().contains("Links: 2"),
            "{}",
            stat.stdout_str()
        );
        let (bytes, inodes) = measure(&root);
        assert!(bytes >= 300_000 && inodes == 7, "{bytes} {inodes}");
    }

    #[tokio::test]
    async fn a_missing_tree_is_an_error_and_leaves_nothing() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("x.ext4");
        let e = build(&d.path().join("nope"), &out, "x").await.unwrap_err();
        assert!(e.to_string().contains("mkfs.ext4"), "{e}");
        assert!(!out.exists() && !out.with_extension("ext4.partial").exists());
    }
}
