//! Operations on the root file system trees a layered build works on: looking up users in
//! a tree's `/etc/passwd` and `/etc/group`, merging a layer into a tree (overlayfs whiteouts
//! and opaque directories), and `COPY` into a step's layer with the parents it has in the
//! tree.

use std::path::{Path, PathBuf};

use crate::{ImageError, io, remove_any};

/// `uid`, `gid` and home of `spec` (`name`, `uid`, `name:group` or `uid:gid`) in the tree.
pub fn lookup_user(tree: &Path, spec: &str) -> Result<(u32, u32, String), String> {
    let passwd = std::fs::read_to_string(tree.join("etc/passwd")).unwrap_or_default();
    let group = std::fs::read_to_string(tree.join("etc/group")).unwrap_or_default();
    let (u, g) = spec
        .split_once(':')
        .map(|(u, g)| (u, Some(g)))
        .unwrap_or((spec, None));
    let entry = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() >= 7 && (f[0] == u || f[2] == u));
    let (uid, mut gid, home) = match entry {
        Some(f) => (
            f[2].parse()
                .map_err(|_| format!("bad passwd entry for {u}"))?,
            f[3].parse()
                .map_err(|_| format!("bad passwd entry for {u}"))?,
            f[5].to_owned(),
        ),
        None => match u.parse::<u32>() {
            Ok(n) => (n, n, "/".to_owned()),
            Err(_) => return Err(format!("user {u:?} does not exist in the image")),
        },
    };
    if let Some(g) = g {
        gid = match group
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.len() >= 3 && f[0] == g)
        {
            Some(f) => f[2]
                .parse()
                .map_err(|_| format!("bad group entry for {g}"))?,
            None => g
                .parse()
                .map_err(|_| format!("group {g:?} does not exist in the image"))?,
        };
    }
    Ok((uid, gid, home))
}

/// Applies one layer to `tree`: overlayfs whiteouts (character devices 0/0) delete what
/// they name, opaque directories hide what was below, then the layer's files are
/// hard-linked in.
pub async fn merge_layer(layer: &Path, tree: &Path) -> Result<(), ImageError> {
    let (l, t) = (layer.to_owned(), tree.to_owned());
    let marks = tokio::task::spawn_blocking(move || -> Result<Vec<(PathBuf, bool)>, ImageError> {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let mut marks = Vec::new();
        for e in walkdir::WalkDir::new(&l).min_depth(1) {
            let e = e.map_err(|e| io(&l)(e.into()))?;
            let md = e.path().symlink_metadata().map_err(io(e.path()))?;
            let rel = e
                .path()
                .strip_prefix(&l)
                .expect("under the layer")
                .to_owned();
            let d = t.join(&rel);
            if md.is_dir() && d.symlink_metadata().is_ok_and(|m| !m.is_dir()) {
                // The layer has a directory here, so the merged tree has one: whatever the
                // tree holds in its place (a link the previous step made, `/evil -> /etc`)
                // goes first, so neither the clearing below nor the copy after it ever
                // goes through a link. Parents come first in the walk, so every path
                // under `t` touched here has real directories above it.
                remove_any(&d);
            }
            if md.file_type().is_char_device() && md.rdev() == 0 {
                remove_any(&d);
                marks.push((rel, false));
            } else if md.is_dir() && is_opaque(e.path()) {
                for c in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                    remove_any(&c.path());
                }
                marks.push((rel, true));
            }
        }
        Ok(marks)
    })
    .await
    .expect("the layer scan does not panic")?;
    kraal_sandbox::process::Cmd::new("cp")
        .args([
            "-a",
            "--link",
            "--remove-destination",
            "--no-target-directory",
        ])
        .arg(layer)
        .arg(tree)
        .timeout(std::time::Duration::from_secs(600))
        .run()
        .await
        .map_err(|e| ImageError::Step {
            name: tree.display().to_string(),
            step: "merging layers".into(),
            message: kraal_sandbox::error_chain(&e),
        })?;
    for (rel, opaque) in marks {
        let p = tree.join(rel);
        if opaque {
            clear_opaque(&p);
        } else {
            let _ = std::fs::remove_file(&p);
        }
    }
    Ok(())
}

const OPAQUE: &std::ffi::CStr = c"trusted.overlay.opaque";

fn is_opaque(p: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_bytes()) else {
        return false;
    };
    let mut buf = [0u8; 4];
    // SAFETY: both strings are NUL-terminated and the buffer's length is passed.
    let n = unsafe {
        libc::lgetxattr(
            c.as_ptr(),
            OPAQUE.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    n == 1 && buf[0] == b'y'
}

fn clear_opaque(p: &Path) {
    use std::os::unix::ffi::OsStrExt;
    if let Ok(c) = std::ffi::CString::new(p.as_os_str().as_bytes()) {
        // SAFETY: both strings are NUL-terminated.
        unsafe { libc::lremovexattr(c.as_ptr(), OPAQUE.as_ptr()) };
    }
}

/// `rel` with every link in it that exists in `tree` resolved as if `tree` were `/` (as
/// a chroot would: an absolute target starts again at the tree's root, `..` stops there),
/// so a `COPY` or `WORKDIR` under `/bin -> usr/bin` lands in `usr/bin` and nothing on the
/// host is ever looked at. Components that do not exist yet are kept as given.
pub(crate) fn resolve_in(tree: &Path, rel: &str) -> std::io::Result<String> {
    let mut done: Vec<String> = Vec::new();
    let mut todo: std::collections::VecDeque<String> = rel
        .split('/')
        .filter(|c| !c.is_empty())
        .map(str::to_owned)
        .collect();
    let mut hops = 0;
    while let Some(c) = todo.pop_front() {
        match c.as_str() {
            "." => continue,
            ".." => {
                done.pop();
                continue;
            }
            _ => {}
        }
        // `done` holds no links, so this looks only inside the tree.
        let here = tree.join(done.join("/")).join(&c);
        match here.symlink_metadata() {
            Ok(m) if m.file_type().is_symlink() => {
                hops += 1;
                if hops > 40 {
                    return Err(std::io::Error::other(format!(
                        "too many levels of symbolic links in /{rel}"
                    )));
                }
                let target = std::fs::read_link(&here)?.to_string_lossy().into_owned();
                if target.starts_with('/') {
                    done.clear();
                }
                for p in target.split('/').rev().filter(|p| !p.is_empty()) {
                    todo.push_front(p.to_owned());
                }
            }
            _ => done.push(c),
        }
    }
    Ok(done.join("/"))
}

/// Creates `rel`'s missing parent directories in `out`, with the owner and mode they have
/// in `tree` (as an overlay copy-up would), so merging never changes them.
pub(crate) fn make_parents(tree: &Path, out: &Path, rel: &str) -> std::io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mut cur = PathBuf::new();
    let comps: Vec<&str> = rel.split('/').filter(|c| !c.is_empty()).collect();
    for c in comps.iter().take(comps.len().saturating_sub(1)) {
        cur.push(c);
        let o = out.join(&cur);
        no_links_on_the_way(out, &o)?;
        if o.is_dir() {
            continue;
        }
        std::fs::create_dir(&o)?;
        // The tree's own directory, never what a link there points to on the host.
        if let Ok(md) = std::fs::symlink_metadata(tree.join(&cur))
            && md.is_dir()
        {
            std::fs::set_permissions(&o, std::fs::Permissions::from_mode(md.mode() & 0o7777))?;
            std::os::unix::fs::chown(&o, Some(md.uid()), Some(md.gid()))?;
        }
    }
    Ok(())
}

/// `COPY`: files land at `dest` (a directory when it ends in `/` or a source is one; a
/// directory source's contents are copied, not the directory), owned by `uid:gid`.
pub(crate) fn copy_into(
    sources: &[PathBuf],
    dest: &str,
    tree: &Path,
    out: &Path,
    uid: u32,
    gid: u32,
) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let rel = resolve_in(tree, dest)?;
    let rel = rel.as_str();
    let into_dir = dest.ends_with('/')
        || sources.len() > 1
        || sources.iter().any(|s| s.is_dir())
        || tree.join(rel).is_dir();
    make_parents(tree, out, &format!("{rel}/x"))?;
    for src in sources {
        let target = if into_dir && !src.is_dir() {
            out.join(rel).join(src.file_name().unwrap_or_default())
        } else {
            out.join(rel)
        };
        for e in walkdir::WalkDir::new(src) {
            let e = e.map_err(std::io::Error::other)?;
            let sub = e.path().strip_prefix(src).unwrap_or(Path::new(""));
            let dst = if sub.as_os_str().is_empty() {
                target.clone()
            } else {
                target.join(sub)
            };
            let md = e.path().symlink_metadata()?;
            // A link an earlier source put in the layer is never written through.
            if let Some(parent) = dst.parent() {
                no_links_on_the_way(out, parent)?;
                std::fs::create_dir_all(parent)?;
            }
            let existing = dst.symlink_metadata().ok();
            if md.is_dir() {
                if existing.is_some_and(|m| !m.is_dir()) {
                    std::fs::remove_file(&dst)?;
                }
                std::fs::create_dir_all(&dst)?;
            } else {
                match existing {
                    Some(m) if m.is_dir() => std::fs::remove_dir_all(&dst)?,
                    Some(_) => std::fs::remove_file(&dst)?,
                    None => {}
                }
                if md.file_type().is_symlink() {
                    std::os::unix::fs::symlink(std::fs::read_link(e.path())?, &dst)?;
                } else {
                    // A new file (O_EXCL: never through a link), then the bytes.
                    let mut from = std::fs::File::open(e.path())?;
                    let mut to = std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .open(&dst)?;
                    std::io::copy(&mut from, &mut to)?;
                    to.set_permissions(std::fs::Permissions::from_mode(md.permissions().mode()))?;
                }
            }
            std::os::unix::fs::lchown(&dst, Some(uid), Some(gid))?;
        }
    }
    Ok(())
}

/// Refuses `path` if a symbolic link stands anywhere between `root` and it.
fn no_links_on_the_way(root: &Path, path: &Path) -> std::io::Result<()> {
    let Ok(rel) = path.strip_prefix(root) else {
        return Err(std::io::Error::other(format!(
            "{} is outside {}",
            path.display(),
            root.display()
        )));
    };
    let mut cur = root.to_owned();
    for c in rel.components() {
        cur.push(c);
        if cur
            .symlink_metadata()
            .is_ok_and(|m| m.file_type().is_symlink())
        {
            return Err(std::io::Error::other(format!(
                "the build would write through the symbolic link /{}",
                cur.strip_prefix(root).unwrap_or(&cur).display()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_resolve_from_the_tree() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("etc")).unwrap();
        std::fs::write(
            d.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\ndev:x:1000:1000::/home/dev:/bin/bash\n",
        )
        .unwrap();
        std::fs::write(d.path().join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
        assert_eq!(
            lookup_user(d.path(), "dev").unwrap(),
            (1000, 1000, "/home/dev".into())
        );
        assert_eq!(
            lookup_user(d.path(), "1000:staff").unwrap(),
            (1000, 50, "/home/dev".into())
        );
        assert_eq!(lookup_user(d.path(), "4242:4243").unwrap().0, 4242);
        assert!(
            lookup_user(d.path(), "nobody")
                .unwrap_err()
                .contains("does not exist")
        );
        assert!(
            lookup_user(d.path(), "dev:nogroup")
                .unwrap_err()
                .contains("group")
        );
    }

    #[tokio::test]
    async fn merging_applies_whiteouts_and_opaque_dirs() {
        let d = tempfile::tempdir().unwrap();
        let tree = d.path().join("tree");
        std::fs::create_dir_all(tree.join("etc/old")).unwrap();
        std::fs::write(tree.join("etc/old/a"), "a").unwrap();
        std::fs::write(tree.join("etc/gone"), "g").unwrap();
        std::fs::create_dir_all(tree.join("opt/d")).unwrap();
        std::fs::write(tree.join("opt/d/hidden"), "h").unwrap();
        let layer = d.path().join("layer");
        std::fs::create_dir_all(layer.join("etc")).unwrap();
        std::fs::create_dir_all(layer.join("opt/d")).unwrap();
        std::fs::write(layer.join("opt/d/new"), "n").unwrap();
        std::fs::write(layer.join("etc/added"), "x").unwrap();
        nix::sys::stat::mknod(
            &layer.join("etc/gone"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::empty(),
            0,
        )
        .unwrap();
        let c = std::ffi::CString::new(layer.join("opt/d").to_str().unwrap()).unwrap();
        assert_eq!(
            unsafe { libc::lsetxattr(c.as_ptr(), OPAQUE.as_ptr(), b"y".as_ptr().cast(), 1, 0) },
            0
        );
        merge_layer(&layer, &tree).await.unwrap();
        assert!(!tree.join("etc/gone").exists(), "whiteout deleted the file");
        assert!(tree.join("etc/old/a").is_file());
        assert!(tree.join("etc/added").is_file());
        assert!(
            !tree.join("opt/d/hidden").exists(),
            "opaque dir hides what was below"
        );
        assert!(tree.join("opt/d/new").is_file());
        assert!(
            !is_opaque(&tree.join("opt/d")),
            "the mark does not stay in the tree"
        );
    }

    fn mark_opaque(dir: &Path) {
        let c = std::ffi::CString::new(dir.to_str().unwrap()).unwrap();
        // SAFETY: NUL-terminated strings, the value's length is passed.
        let rc =
            unsafe { libc::lsetxattr(c.as_ptr(), OPAQUE.as_ptr(), b"y".as_ptr().cast(), 1, 0) };
        assert_eq!(rc, 0);
    }

    /// A step that makes `/evil -> <outside>` and the next that replaces it with a
    /// directory (`rm /evil && mkdir /evil && touch /evil/planted`, an opaque directory in
    /// its layer, a whiteout inside): merging touches nothing outside the tree.
    #[tokio::test]
    async fn merging_never_goes_through_a_link_the_tree_holds() {
        let d = tempfile::tempdir().unwrap();
        let outside = d.path().join("host-dir");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("precious"), "keep").unwrap();
        std::fs::write(outside.join("also"), "keep").unwrap();
        let tree = d.path().join("tree");
        std::fs::create_dir(&tree).unwrap();
        std::os::unix::fs::symlink(&outside, tree.join("evil")).unwrap();
        std::os::unix::fs::symlink(&outside, tree.join("plain")).unwrap();
        let layer = d.path().join("layer");
        std::fs::create_dir_all(layer.join("evil")).unwrap();
        std::fs::write(layer.join("evil/planted"), "x").unwrap();
        nix::sys::stat::mknod(
            &layer.join("evil/also"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::empty(),
            0,
        )
        .unwrap();
        mark_opaque(&layer.join("evil"));
        // Not opaque: a directory where the tree has a link is still the layer's own.
        std::fs::create_dir_all(layer.join("plain")).unwrap();
        std::fs::write(layer.join("plain/planted2"), "y").unwrap();
        merge_layer(&layer, &tree).await.unwrap();
        let mut left: Vec<String> = std::fs::read_dir(&outside)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["also", "precious"], "the host directory changed");
        for (dir, file) in [("evil", "planted"), ("plain", "planted2")] {
            let md = tree.join(dir).symlink_metadata().unwrap();
            assert!(md.is_dir(), "{dir} is a real directory in the tree now");
            assert!(tree.join(dir).join(file).is_file());
        }
    }

    /// `COPY a b /dst/` where `a/` holds `f -> <outside>/pwn` and `b/` holds `d/x` under a
    /// `d -> <outside>` of `a/`: the links are replaced, never written through, and a
    /// destination under a link is refused.
    #[test]
    fn copy_never_writes_through_a_link_an_earlier_source_made() {
        let d = tempfile::tempdir().unwrap();
        let outside = d.path().join("host-dir");
        std::fs::create_dir(&outside).unwrap();
        let ctx = d.path().join("ctx");
        std::fs::create_dir_all(ctx.join("a")).unwrap();
        std::os::unix::fs::symlink(outside.join("pwn"), ctx.join("a/f")).unwrap();
        std::os::unix::fs::symlink(&outside, ctx.join("a/d")).unwrap();
        std::fs::write(ctx.join("f"), "payload").unwrap();
        std::fs::create_dir_all(ctx.join("b/d")).unwrap();
        std::fs::write(ctx.join("b/d/x"), "payload").unwrap();
        let (tree, out) = (d.path().join("tree"), d.path().join("out"));
        std::fs::create_dir_all(&tree).unwrap();
        std::fs::create_dir_all(&out).unwrap();
        let (uid, gid) = (
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        );
        // A file over the link: the link is replaced, the file lands in the layer.
        copy_into(
            &[ctx.join("a"), ctx.join("f")],
            "/dst/",
            &tree,
            &out,
            uid,
            gid,
        )
        .unwrap();
        assert!(!outside.join("pwn").exists(), "written through the link");
        let f = out.join("dst/f").symlink_metadata().unwrap();
        assert!(f.is_file());
        assert_eq!(
            std::fs::read_to_string(out.join("dst/f")).unwrap(),
            "payload"
        );
        // A directory over the link: the link is replaced by the directory.
        let out2 = d.path().join("out2");
        std::fs::create_dir_all(&out2).unwrap();
        copy_into(
            &[ctx.join("a"), ctx.join("b")],
            "/dst/",
            &tree,
            &out2,
            uid,
            gid,
        )
        .unwrap();
        assert!(out2.join("dst/d").symlink_metadata().unwrap().is_dir());
        assert!(out2.join("dst/d/x").is_file());
        // A destination under a link the layer holds: refused, naming it.
        let out3 = d.path().join("out3");
        std::fs::create_dir_all(out3.join("dst")).unwrap();
        std::os::unix::fs::symlink(&outside, out3.join("dst/link")).unwrap();
        let e = copy_into(&[ctx.join("f")], "/dst/link/sub/", &tree, &out3, uid, gid).unwrap_err();
        assert!(e.to_string().contains("symbolic link /dst/link"), "{e}");
        assert_eq!(
            std::fs::read_dir(&outside).unwrap().count(),
            0,
            "the host directory changed"
        );
    }

    /// On a merged-/usr tree (`/bin -> usr/bin`), `COPY tool /bin/` lands in `usr/bin` and
    /// the merge keeps `/bin` the link it was; links out of the tree resolve inside it.
    #[tokio::test]
    async fn copy_resolves_links_in_the_tree_as_a_chroot_would() {
        let d = tempfile::tempdir().unwrap();
        let tree = d.path().join("tree");
        std::fs::create_dir_all(tree.join("usr/bin")).unwrap();
        std::fs::write(tree.join("usr/bin/sh"), "sh").unwrap();
        std::os::unix::fs::symlink("usr/bin", tree.join("bin")).unwrap();
        std::fs::create_dir_all(tree.join("run")).unwrap();
        std::fs::create_dir_all(tree.join("var")).unwrap();
        std::os::unix::fs::symlink("/run", tree.join("var/run")).unwrap();
        std::os::unix::fs::symlink("/etc", tree.join("hostish")).unwrap();
        std::os::unix::fs::symlink("loop", tree.join("loop")).unwrap();
        assert_eq!(resolve_in(&tree, "/bin/").unwrap(), "usr/bin");
        assert_eq!(resolve_in(&tree, "/var/run/app").unwrap(), "run/app");
        assert_eq!(resolve_in(&tree, "/hostish/passwd").unwrap(), "etc/passwd");
        assert_eq!(resolve_in(&tree, "/../../x/./y").unwrap(), "x/y");
        assert!(
            resolve_in(&tree, "/loop/x")
                .unwrap_err()
                .to_string()
                .contains("too many")
        );
        let ctx = d.path().join("ctx");
        std::fs::create_dir_all(&ctx).unwrap();
        std::fs::write(ctx.join("tool"), "tool").unwrap();
        let out = d.path().join("out");
        std::fs::create_dir_all(&out).unwrap();
        let (uid, gid) = (
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        );
        copy_into(&[ctx.join("tool")], "/bin/", &tree, &out, uid, gid).unwrap();
        assert!(out.join("usr/bin/tool").is_file());
        assert!(!out.join("bin").exists());
        merge_layer(&out, &tree).await.unwrap();
        assert!(
            tree.join("bin")
                .symlink_metadata()
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert!(tree.join("bin/sh").is_file() && tree.join("bin/tool").is_file());
    }
}
