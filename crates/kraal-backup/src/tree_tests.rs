//! Tree backups of a real directory: everything a workspace holds comes back (modes,
//! owners, times, xattrs, symlinks, hard links, FIFOs, names that are not UTF-8), an
//! unchanged file is not read again, a symlink never leads the walk out of the tree, old
//! chunks stay readable, random bytes are stored without zstd, and the tar form unpacks
//! with GNU tar to the same tree.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use futures::StreamExt;
use kraal_testkit::s3::noise;

use super::*;
use crate::tree::Kind;

fn key() -> RepoKey {
    RepoKey::from_bytes([7; 32])
}

/// A tree like a workspace's: sources, a big random file, a log, odd entries.
fn make_tree(root: &Path) {
    std::fs::create_dir_all(root.join("src/deep/er")).unwrap();
    std::fs::write(root.join("src/main.rs"), "fn main() {}\n").unwrap();
    std::fs::write(root.join("src/deep/er/notes.txt"), "x".repeat(5000)).unwrap();
    std::fs::write(root.join("big.bin"), noise(3, 9 << 20)).unwrap();
    std::fs::write(root.join("log.txt"), "a line of a log\n".repeat(200_000)).unwrap();
    std::fs::write(root.join("empty"), "").unwrap();
    for i in 0..300 {
        std::fs::write(root.join(format!("src/f{i:03}.txt")), format!("file {i}\n")).unwrap();
    }
    std::os::unix::fs::symlink("/etc/passwd", root.join("escape")).unwrap();
    std::os::unix::fs::symlink("/etc", root.join("etc-dir")).unwrap();
    std::fs::hard_link(root.join("src/main.rs"), root.join("main-link.rs")).unwrap();
    let odd = root.join(OsStr::from_bytes(b"caf\xe9"));
    std::fs::write(&odd, "latin-1 name").unwrap();
    std::fs::set_permissions(
        root.join("src/main.rs"),
        std::fs::Permissions::from_mode(0o751),
    )
    .unwrap();
    std::os::unix::fs::chown(root.join("log.txt"), Some(1234), Some(4321)).unwrap();
    let fifo = std::ffi::CString::new(root.join("pipe").as_os_str().as_bytes()).unwrap();
    assert_eq!(unsafe { libc_mkfifo(&fifo) }, 0);
    let f = std::fs::File::open(root.join("big.bin")).unwrap();
    rustix::fs::fsetxattr(&f, "user.kraal", b"tagged", rustix::fs::XattrFlags::empty()).unwrap();
}

unsafe fn libc_mkfifo(path: &std::ffi::CStr) -> i32 {
    match rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o640),
        0,
    ) {
        Ok(()) => 0,
        Err(_) => -1,
    }
}

/// Every entry under `root` as (path, kind, mode, uid, gid, size, mtime, link target,
/// xattrs, content digest), for comparing two trees.
fn listing(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    hostfs::walk(root, &mut |e, f| {
        let digest = match f {
            Some(f) => {
                use std::io::Read;
                let mut b = Vec::new();
                f.open(e.ino).unwrap().read_to_end(&mut b).unwrap();
                hex::encode(&sha2::Sha256::digest(&b)[..8])
            }
            None => String::new(),
        };
        out.push(format!(
            "{} {:?} {:o} {}:{} {} {} {:?} {:?} {digest}",
            e.path.lossy(),
            e.kind,
            e.mode,
            e.uid,
            e.gid,
            e.size,
            if e.kind == Kind::Symlink || e.path.0.is_empty() {
                0
            } else {
                e.mtime / 1_000_000_000
            },
            e.target.as_ref().map(|t| t.lossy()),
            e.xattrs
                .iter()
                .map(|x| (&x.name, &x.value))
                .collect::<Vec<_>>(),
        ));
        Ok(())
    })
    .unwrap();
    out
}

/// The two trees' listings are the same (only the lines that differ are shown).
fn same_tree(a: &Path, b: &Path) {
    let (la, lb) = (listing(a), listing(b));
    let only_a: Vec<_> = la.iter().filter(|l| !lb.contains(l)).collect();
    let only_b: Vec<_> = lb.iter().filter(|l| !la.contains(l)).collect();
    assert!(
        only_a.is_empty() && only_b.is_empty(),
        "differ:\n{only_a:#?}\n{only_b:#?}"
    );
}

#[tokio::test]
async fn a_tree_round_trips_with_everything_it_holds() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    make_tree(&src);
    let repo = Repo::open(dir.path().join("store").to_str().unwrap(), &key()).unwrap();
    let m = repo
        .backup_tree(
            src.clone(),
            serde_json::json!({"workspace": "t"}),
            None,
            |_| {},
        )
        .await
        .unwrap();
    assert_eq!(m.format, 2);
    let entries = repo.read_index(&m).await.unwrap();
    // The symlinks are links, never followed: nothing of /etc is in the backup.
    assert!(
        entries
            .iter()
            .all(|e| !e.path.lossy().starts_with("etc-dir/"))
    );
    let escape = entries.iter().find(|e| e.path.0 == b"escape").unwrap();
    assert_eq!((escape.kind, escape.size), (Kind::Symlink, 0));
    // The walk meets main-link.rs first (names sort bytewise), so src/main.rs links to it.
    let second = entries.iter().find(|e| e.path.0 == b"src/main.rs").unwrap();
    assert_eq!(second.kind, Kind::Hardlink);
    assert_eq!(second.target.as_ref().unwrap().0, b"main-link.rs");
    // 300 small files share a few packed chunks.
    assert!(m.chunks.len() < 30, "{} chunks", m.chunks.len());

    let dst = dir.path().join("dst");
    std::fs::create_dir(&dst).unwrap();
    let n = repo.restore_tree(&m, dst.clone(), |_| {}).await.unwrap();
    assert_eq!(n, m.size);
    same_tree(&dst, &src);
    let a = std::fs::metadata(dst.join("src/main.rs")).unwrap();
    let b = std::fs::metadata(dst.join("main-link.rs")).unwrap();
    assert_eq!(a.ino(), b.ino(), "the hard link is a hard link again");
    assert_eq!(
        std::fs::read_link(dst.join("escape")).unwrap(),
        Path::new("/etc/passwd")
    );
    let f = std::fs::File::open(dst.join("big.bin")).unwrap();
    let mut v = [0u8; 64];
    let n = rustix::fs::fgetxattr(&f, "user.kraal", &mut v[..]).unwrap();
    assert_eq!(&v[..n], b"tagged");
}

#[tokio::test]
async fn an_unchanged_file_is_not_read_again_and_a_changed_one_is() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    make_tree(&src);
    // Out of the coarse-clock window: these files count as settled.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let repo = Repo::open(dir.path().join("store").to_str().unwrap(), &key()).unwrap();
    let m1 = repo
        .backup_tree(src.clone(), serde_json::json!({}), None, |_| {})
        .await
        .unwrap();
    std::fs::write(src.join("src/f007.txt"), "changed\n").unwrap();
    let last = std::sync::Mutex::new(Progress::default());
    let m2 = repo
        .backup_tree(src.clone(), serde_json::json!({}), Some(&m1), |p| {
            *last.lock().unwrap() = p.clone()
        })
        .await
        .unwrap();
    let p = last.into_inner().unwrap();
    assert_eq!(
        m2.size,
        m1.size - "file 7\n".len() as u64 + "changed\n".len() as u64
    );
    assert_eq!(p.unchanged, m2.size - "changed\n".len() as u64, "{p:?}");
    // Only the pack with the changed file (and the index) is new.
    assert!(p.new_chunks <= 1, "{p:?}");
    let dst = dir.path().join("dst");
    std::fs::create_dir(&dst).unwrap();
    repo.restore_tree(&m2, dst.clone(), |_| {}).await.unwrap();
    same_tree(&dst, &src);

    // A file rewritten during the racy window of a scan is read by the next one.
    std::fs::write(src.join("log.txt"), "rewritten\n").unwrap();
    let m3 = repo
        .backup_tree(src.clone(), serde_json::json!({}), Some(&m2), |_| {})
        .await
        .unwrap();
    std::fs::write(src.join("log.txt"), "rewritten again, same second\n").unwrap();
    let m4 = repo
        .backup_tree(src.clone(), serde_json::json!({}), Some(&m3), |_| {})
        .await
        .unwrap();
    let dst = dir.path().join("dst4");
    std::fs::create_dir(&dst).unwrap();
    repo.restore_tree(&m4, dst.clone(), |_| {}).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(dst.join("log.txt")).unwrap(),
        "rewritten again, same second\n"
    );

    // Garbage collection keeps what the tree backups use, and only that.
    assert_eq!(repo.gc().await.unwrap(), 0);
    for m in [&m1, &m2, &m3] {
        repo.delete(&m.id).await.unwrap();
    }
    repo.gc().await.unwrap();
    let dst = dir.path().join("dst5");
    std::fs::create_dir(&dst).unwrap();
    repo.restore_tree(&m4, dst.clone(), |_| {}).await.unwrap();
    same_tree(&dst, &src);
}

#[tokio::test]
#[allow(clippy::disallowed_methods)] // GNU tar is the other side under test.
async fn the_tar_form_unpacks_with_gnu_tar_to_the_same_tree() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    make_tree(&src);
    let repo = Repo::open(dir.path().join("store").to_str().unwrap(), &key()).unwrap();
    let m = repo
        .backup_tree(src.clone(), serde_json::json!({}), None, |_| {})
        .await
        .unwrap();
    let tar_file = dir.path().join("t.tar");
    let mut out = Vec::new();
    let mut s = Box::pin(repo.tree_tar(m));
    while let Some(b) = s.next().await {
        out.extend_from_slice(&b.unwrap());
    }
    std::fs::write(&tar_file, out).unwrap();
    let dst = dir.path().join("dst");
    std::fs::create_dir(&dst).unwrap();
    let st = Command::new("tar")
        .args([
            "--extract",
            "--numeric-owner",
            "--same-permissions",
            "--same-owner",
            "--xattrs",
            "--xattrs-include=*",
            "--file",
        ])
        .arg(&tar_file)
        .arg("--directory")
        .arg(&dst)
        .status()
        .unwrap();
    assert!(st.success());
    same_tree(&dst, &src);
}

#[test]
fn random_bytes_are_sealed_raw_and_text_compressed_and_old_chunks_still_open() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repo::open(dir.path().to_str().unwrap(), &key()).unwrap();
    let random = noise(5, 1 << 20);
    let sealed = repo.seal(&random, "r");
    assert_eq!(sealed.len(), random.len() + 1 + 24 + 16);
    assert_eq!(repo.open_sealed(&sealed, "r", 2 << 20).unwrap(), random);
    let text = "the same line again\n".repeat(50_000).into_bytes();
    let sealed = repo.seal(&text, "t");
    assert!(sealed.len() < text.len() / 20, "{}", sealed.len());
    assert_eq!(repo.open_sealed(&sealed, "t", 2 << 20).unwrap(), text);
    assert!(repo.open_sealed(&sealed, "another name", 2 << 20).is_err());

    // A chunk as kraal wrote them before: zstd always, the bare name as associated data.
    let packed = zstd::bulk::compress(&text, 3).unwrap();
    let nonce = [9u8; 24];
    let ct = repo
        .seal
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: &packed,
                aad: b"old",
            },
        )
        .unwrap();
    let old = [nonce.to_vec(), ct].concat();
    assert_eq!(repo.open_sealed(&old, "old", 2 << 20).unwrap(), text);
}

/// What a sandbox could do while the host reads its volume: swap a file for a symlink to
/// a host file after the walk looked at it, or move a directory away and put a symlink
/// in its place. Neither leads the reader out of the tree.
#[test]
fn a_file_or_directory_swapped_for_a_symlink_mid_walk_leads_nowhere() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tree");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::write(root.join("a.txt"), "inside").unwrap();
    std::fs::write(root.join("sub/x.txt"), "inside too").unwrap();
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("x.txt"), "a host secret").unwrap();
    std::fs::write(dir.path().join("secret.txt"), "a host secret").unwrap();
    let mut seen = Vec::new();
    hostfs::walk(&root, &mut |e, f| {
        let Some(f) = f else {
            return Ok(());
        };
        let path = e.path.lossy();
        if path == "a.txt" {
            std::fs::remove_file(root.join("a.txt")).unwrap();
            std::os::unix::fs::symlink(dir.path().join("secret.txt"), root.join("a.txt")).unwrap();
            let err = f.open(e.ino).unwrap_err();
            assert_eq!(
                err.raw_os_error(),
                Some(40),
                "ELOOP, not the host file: {err}"
            );
        } else if path == "sub/x.txt" {
            std::fs::rename(root.join("sub"), root.join("moved")).unwrap();
            std::os::unix::fs::symlink(&outside, root.join("sub")).unwrap();
            // Opened beneath the directory the walk holds: the real file, moved or not.
            let mut text = String::new();
            f.open(e.ino).unwrap().read_to_string(&mut text).unwrap();
            assert_eq!(text, "inside too");
        }
        seen.push(path);
        Ok(())
    })
    .unwrap();
    assert_eq!(seen, ["a.txt", "sub/x.txt"]);
}
