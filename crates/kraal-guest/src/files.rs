//! The file API, confined to one root directory (the workspace volume).
//!
//! Paths from the host are relative to the root, or absolute under it. They are normalized
//! lexically (a `..` that climbs above the root is refused), then the deepest existing
//! ancestor is canonicalized so that symlinks pointing outside the root are refused too.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use kraal_protocol::{ErrorCode, FileInfo, FileType, GuestError};

/// Resolves `user` inside `root` (which must already be canonical).
///
/// With `follow_last` false the final component is not followed if it is a symlink, so
/// `stat` and `remove` act on the link itself.
pub fn resolve(root: &Path, user: &str, follow_last: bool) -> Result<PathBuf, GuestError> {
    if user.contains('\0') {
        return Err(GuestError::new(
            ErrorCode::InvalidRequest,
            "path contains a NUL byte",
        ));
    }
    let p = Path::new(user);
    let rel = if p.is_absolute() {
        p.strip_prefix(root)
            .map_err(|_| escape(user))?
            .to_path_buf()
    } else {
        p.to_path_buf()
    };
    let mut parts: Vec<&std::ffi::OsStr> = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(s) => parts.push(s),
            Component::CurDir => {}
            Component::ParentDir => {
                if parts.pop().is_none() {
                    return Err(escape(user));
                }
            }
            Component::RootDir | Component::Prefix(_) => return Err(escape(user)),
        }
    }
    let lexical: PathBuf = parts.iter().fold(root.to_path_buf(), |acc, s| acc.join(s));
    // Canonicalize the deepest existing ancestor (or the whole path when following).
    let (check_upto, tail) = if follow_last || parts.is_empty() {
        (lexical.clone(), None)
    } else {
        (
            lexical
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| root.to_path_buf()),
            parts.last().copied(),
        )
    };
    let mut existing = check_upto.clone();
    let mut missing: Vec<std::ffi::OsString> = Vec::new();
    let canonical = loop {
        match existing.canonicalize() {
            Ok(c) => break c,
            Err(_) => {
                let Some(name) = existing.file_name() else {
                    return Err(escape(user));
                };
                missing.push(name.to_owned());
                if !existing.pop() {
                    return Err(escape(user));
                }
            }
        }
    };
    if !canonical.starts_with(root) {
        return Err(escape(user));
    }
    let mut out = canonical;
    for m in missing.iter().rev() {
        out.push(m);
    }
    if let Some(t) = tail {
        out.push(t);
    }
    Ok(out)
}

fn escape(user: &str) -> GuestError {
    GuestError::new(
        ErrorCode::PathEscape,
        format!("{user}: path is outside the workspace"),
    )
}

/// The path relative to `root`, `.` for the root itself.
pub fn relative(root: &Path, p: &Path) -> String {
    match p.strip_prefix(root) {
        Ok(r) if r.as_os_str().is_empty() => ".".to_owned(),
        Ok(r) => r.to_string_lossy().into_owned(),
        Err(_) => p.to_string_lossy().into_owned(),
    }
}

pub fn info(root: &Path, p: &Path) -> Result<FileInfo, GuestError> {
    let rel = relative(root, p);
    let md = std::fs::symlink_metadata(p).map_err(|e| GuestError::io(&e, &rel))?;
    let ft = md.file_type();
    let file_type = if ft.is_symlink() {
        FileType::Symlink
    } else if ft.is_dir() {
        FileType::Dir
    } else if ft.is_file() {
        FileType::File
    } else {
        FileType::Other
    };
    let symlink_target = ft
        .is_symlink()
        .then(|| {
            std::fs::read_link(p)
                .ok()
                .map(|t| t.to_string_lossy().into_owned())
        })
        .flatten();
    Ok(FileInfo {
        name: p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| ".".to_owned()),
        path: rel,
        file_type,
        size: md.len(),
        mode: md.permissions().mode() & 0o7777,
        modified: md.mtime(),
        symlink_target,
    })
}

pub fn list(root: &Path, dir: &Path) -> Result<Vec<FileInfo>, GuestError> {
    let rel = relative(root, dir);
    let rd = std::fs::read_dir(dir).map_err(|e| GuestError::io(&e, &rel))?;
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| GuestError::io(&e, &rel))?;
        out.push(info(root, &entry.path())?);
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

pub fn mkdir(root: &Path, p: &Path, parents: bool) -> Result<(), GuestError> {
    let r = if parents {
        std::fs::create_dir_all(p)
    } else {
        std::fs::create_dir(p)
    };
    r.map_err(|e| GuestError::io(&e, &relative(root, p)))
}

pub fn remove(root: &Path, p: &Path, recursive: bool) -> Result<(), GuestError> {
    let rel = relative(root, p);
    if p == root {
        return Err(GuestError::new(
            ErrorCode::InvalidRequest,
            "refusing to remove the workspace root",
        ));
    }
    let md = std::fs::symlink_metadata(p).map_err(|e| GuestError::io(&e, &rel))?;
    let r = if md.is_dir() {
        if recursive {
            std::fs::remove_dir_all(p)
        } else {
            std::fs::remove_dir(p)
        }
    } else {
        std::fs::remove_file(p)
    };
    r.map_err(|e| GuestError::io(&e, &rel))
}

/// A file being written: data goes to a temporary sibling that is renamed into place
/// only when the host says the data is complete, so an interrupted upload never leaves a
/// half-written file behind.
pub struct PendingWrite {
    tmp: PathBuf,
    dest: PathBuf,
    file: std::fs::File,
    pub written: u64,
}

impl PendingWrite {
    pub fn begin(
        root: &Path,
        dest: &Path,
        mode: Option<u32>,
        create_parents: bool,
    ) -> Result<Self, GuestError> {
        let rel = relative(root, dest);
        if dest.is_dir() {
            return Err(GuestError::new(
                ErrorCode::IsADirectory,
                format!("{rel}: is a directory"),
            ));
        }
        let parent = dest
            .parent()
            .ok_or_else(|| GuestError::new(ErrorCode::InvalidRequest, "no parent"))?;
        if create_parents {
            std::fs::create_dir_all(parent).map_err(|e| GuestError::io(&e, &rel))?;
        }
        let name = dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = parent.join(format!(
            ".{name}.kraal-{}.tmp",
            std::process::id() ^ rand_u32()
        ));
        let file = std::fs::File::create(&tmp).map_err(|e| GuestError::io(&e, &rel))?;
        let mode = mode
            .or_else(|| std::fs::metadata(dest).ok().map(|m| m.permissions().mode()))
            .unwrap_or(0o644);
        file.set_permissions(std::fs::Permissions::from_mode(mode & 0o7777))
            .map_err(|e| GuestError::io(&e, &rel))?;
        Ok(PendingWrite {
            tmp,
            dest: dest.to_path_buf(),
            file,
            written: 0,
        })
    }

    pub fn write(&mut self, root: &Path, buf: &[u8]) -> Result<(), GuestError> {
        use std::io::Write;
        self.file
            .write_all(buf)
            .map_err(|e| GuestError::io(&e, &relative(root, &self.dest)))?;
        self.written += buf.len() as u64;
        Ok(())
    }

    pub fn commit(self, root: &Path) -> Result<u64, GuestError> {
        let rel = relative(root, &self.dest);
        self.file.sync_all().map_err(|e| GuestError::io(&e, &rel))?;
        std::fs::rename(&self.tmp, &self.dest).map_err(|e| GuestError::io(&e, &rel))?;
        let written = self.written;
        std::mem::forget(self);
        Ok(written)
    }
}

impl Drop for PendingWrite {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.tmp);
    }
}

fn rand_u32() -> u32 {
    let mut b = [0u8; 4];
    // getrandom cannot fail for 4 bytes on Linux ≥ 3.17; zero is a fine fallback.
    let _ = nix::errno::Errno::result(unsafe {
        // SAFETY: the buffer is valid for 4 bytes and getrandom writes at most that many.
        libc::getrandom(b.as_mut_ptr().cast(), 4, 0)
    });
    u32::from_ne_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("ws");
        std::fs::create_dir_all(root.join("src")).unwrap();
        std::fs::write(root.join("src/a.txt"), "a").unwrap();
        std::fs::write(d.path().join("secret"), "s").unwrap();
        std::os::unix::fs::symlink(d.path().join("secret"), root.join("out")).unwrap();
        std::os::unix::fs::symlink("src", root.join("in")).unwrap();
        let root = root.canonicalize().unwrap();
        (d, root)
    }

    #[test]
    fn relative_and_absolute_paths_resolve_inside() {
        let (_d, root) = setup();
        assert_eq!(
            resolve(&root, "src/a.txt", true).unwrap(),
            root.join("src/a.txt")
        );
        assert_eq!(
            resolve(&root, "./src/../src/a.txt", true).unwrap(),
            root.join("src/a.txt")
        );
        let abs = root.join("src/a.txt");
        assert_eq!(resolve(&root, abs.to_str().unwrap(), true).unwrap(), abs);
        assert_eq!(resolve(&root, "", true).unwrap(), root);
        assert_eq!(
            resolve(&root, "new/dir/file", true).unwrap(),
            root.join("new/dir/file")
        );
        assert_eq!(
            resolve(&root, "in/a.txt", true).unwrap(),
            root.join("src/a.txt")
        );
    }

    #[test]
    fn escapes_are_refused() {
        let (_d, root) = setup();
        for bad in [
            "..",
            "../secret",
            "src/../../secret",
            "/etc/passwd",
            "out",
            "out/x",
            "a\0b",
        ] {
            let e = resolve(&root, bad, true).unwrap_err();
            assert!(
                matches!(e.code, ErrorCode::PathEscape | ErrorCode::InvalidRequest),
                "{bad:?}: {e:?}"
            );
        }
        // Not following the last component lets stat/remove see the link itself.
        assert_eq!(resolve(&root, "out", false).unwrap(), root.join("out"));
    }

    #[test]
    fn pending_writes_are_atomic() {
        let (_d, root) = setup();
        let dest = root.join("src/a.txt");
        let mut w = PendingWrite::begin(&root, &dest, None, false).unwrap();
        w.write(&root, b"partial").unwrap();
        drop(w);
        assert_eq!(
            std::fs::read_to_string(&dest).unwrap(),
            "a",
            "aborted write must not touch the file"
        );
        let names: Vec<_> = std::fs::read_dir(root.join("src"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "temporary file left behind: {names:?}");
        let mut w = PendingWrite::begin(&root, &dest, None, false).unwrap();
        w.write(&root, b"new").unwrap();
        assert_eq!(w.commit(&root).unwrap(), 3);
        assert_eq!(std::fs::read_to_string(&dest).unwrap(), "new");
    }

    mod traversal {
        use std::path::{Path, PathBuf};

        use proptest::prelude::*;

        use super::super::resolve;

        /// A workspace with directories, a file, a symlink inside and symlinks that point
        /// out (absolute, relative, through a chain).
        fn tree() -> (tempfile::TempDir, PathBuf) {
            let outer = tempfile::tempdir().unwrap();
            let root = outer.path().join("ws").canonicalize().unwrap_or_else(|_| {
                std::fs::create_dir(outer.path().join("ws")).unwrap();
                outer.path().join("ws").canonicalize().unwrap()
            });
            std::fs::create_dir_all(root.join("a/b")).unwrap();
            std::fs::write(root.join("a/f"), "x").unwrap();
            std::fs::create_dir(outer.path().join("secret")).unwrap();
            let ln =
                |target: &str, at: &str| std::os::unix::fs::symlink(target, root.join(at)).unwrap();
            ln("a", "in");
            ln("/etc", "abs_out");
            ln("../secret", "rel_out");
            ln("a/../../secret", "sneaky");
            ln("rel_out", "chain");
            ln("b/../..", "a/up");
            (outer, root)
        }

        fn segment() -> impl Strategy<Value = &'static str> {
            prop_oneof![
                Just(".."),
                Just("."),
                Just("a"),
                Just("b"),
                Just("f"),
                Just("in"),
                Just("abs_out"),
                Just("rel_out"),
                Just("sneaky"),
                Just("chain"),
                Just("up"),
                Just("new"),
                Just(""),
            ]
        }

        /// Where `p` really leads: its deepest existing ancestor, with links resolved.
        fn real(p: &Path) -> PathBuf {
            let mut q = p.to_path_buf();
            loop {
                if let Ok(c) = q.canonicalize() {
                    return c;
                }
                if !q.pop() {
                    return PathBuf::from("/");
                }
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            /// Whatever the path, a resolved one never leads outside the workspace.
            #[test]
            fn no_path_resolves_outside_the_workspace(
                segs in proptest::collection::vec(segment(), 0..8),
                absolute in any::<bool>(),
                follow in any::<bool>(),
            ) {
                let (_outer, root) = tree();
                let rel = segs.join("/");
                let user = if absolute { format!("{}/{rel}", root.display()) } else { rel.clone() };
                if let Ok(out) = resolve(&root, &user, follow) {
                    let checked = if follow || out == root { out.clone() } else { out.parent().unwrap_or(&root).to_path_buf() };
                    let r = real(&checked);
                    prop_assert!(r.starts_with(&root), "{user:?} resolved to {out:?}, which leads to {r:?}");
                    prop_assert!(out.starts_with(&root), "{user:?} resolved to {out:?}");
                }
            }

            /// Plain names inside the workspace always resolve, to where they say.
            #[test]
            fn plain_paths_resolve(segs in proptest::collection::vec(prop_oneof![Just("a"), Just("b"), Just("new"), Just(".")], 1..6)) {
                let (_outer, root) = tree();
                let user = segs.join("/");
                let out = resolve(&root, &user, true);
                prop_assert!(out.is_ok(), "{user:?}: {out:?}");
                let expect = segs.iter().filter(|s| **s != ".").fold(root.clone(), |p, s| p.join(s));
                prop_assert_eq!(out.unwrap(), expect);
            }
        }
    }
}
