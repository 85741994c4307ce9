//! Reading and writing a tree on the host without trusting what is in it: the walk opens
//! every directory and file relative to its parent's descriptor with `openat2`
//! (`RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV`), so a
//! symlink or a rename planted by whoever writes the tree never leads the reader out of
//! it; only regular files are opened (checked again on the open descriptor), symlinks are
//! read as links, and sockets and device nodes are skipped. The writer fills an empty
//! directory from an index the same way, creating every name with `O_EXCL | O_NOFOLLOW`
//! under descriptors it made itself.

use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use base64::Engine as _;
use rustix::fs::{AtFlags, FileType, Gid, Mode, OFlags, ResolveFlags, Timespec, Timestamps, Uid};

use crate::tree::{Entry, Kind, PathBytes, Xattr};

/// A failed file system call on a path of the tree.
#[derive(Debug, thiserror::Error)]
#[error("{op} {path:?}: {source}")]
pub struct FsError {
    pub op: &'static str,
    pub path: String,
    #[source]
    pub source: std::io::Error,
}

fn fs_err<'a>(
    op: &'static str,
    path: &'a PathBytes,
) -> impl FnOnce(rustix::io::Errno) -> FsError + use<'a> {
    move |e| FsError {
        op,
        path: path.lossy(),
        source: e.into(),
    }
}

const RESOLVE: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS)
    .union(ResolveFlags::NO_XDEV);

fn cname(name: &[u8]) -> CString {
    CString::new(name).expect("names hold no NUL byte")
}

fn open_dir_at(dir: BorrowedFd<'_>, name: &CStr) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat2(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
        RESOLVE,
    )
}

fn nanos(sec: i64, nsec: i64) -> i64 {
    sec.saturating_mul(1_000_000_000).saturating_add(nsec)
}

fn entry_of(path: PathBytes, st: &rustix::fs::Stat, kind: Kind) -> Entry {
    Entry {
        path,
        kind,
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        size: if kind == Kind::File {
            st.st_size as u64
        } else {
            0
        },
        mtime: nanos(st.st_mtime, st.st_mtime_nsec as i64),
        ctime: nanos(st.st_ctime, st.st_ctime_nsec as i64),
        ino: st.st_ino,
        xattrs: Vec::new(),
        target: None,
        data: Vec::new(),
    }
}

/// The extended attributes on an open file or directory.
pub fn xattrs_of(fd: BorrowedFd<'_>) -> rustix::io::Result<Vec<Xattr>> {
    let mut names = vec![0u8; 4096];
    let n = match rustix::fs::flistxattr(fd, &mut names[..]) {
        Ok(n) => n,
        Err(rustix::io::Errno::RANGE) => {
            let need = rustix::fs::flistxattr(fd, &mut [0u8; 0][..])?;
            names.resize(need, 0);
            rustix::fs::flistxattr(fd, &mut names[..])?
        }
        Err(rustix::io::Errno::NOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    let mut value = vec![0u8; 65536];
    for name in names[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let c = cname(name);
        let len = match rustix::fs::fgetxattr(fd, c.as_c_str(), &mut value[..]) {
            Ok(len) => len,
            // Removed since the list was read.
            Err(rustix::io::Errno::NODATA) => continue,
            Err(e) => return Err(e),
        };
        out.push(Xattr {
            name: String::from_utf8_lossy(name).into_owned(),
            value: base64::engine::general_purpose::STANDARD.encode(&value[..len]),
        });
    }
    Ok(out)
}

/// A regular file met by the walk: stat'ed, not yet opened.
pub struct FileRef<'a> {
    dir: BorrowedFd<'a>,
    name: &'a CStr,
}

impl FileRef<'_> {
    /// Opens it for reading; an error if it is no longer the regular file `ino` (it was
    /// replaced after the walk looked at it).
    pub fn open(&self, ino: u64) -> std::io::Result<File> {
        let fd = rustix::fs::openat2(
            self.dir,
            self.name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
            RESOLVE,
        )?;
        let st = rustix::fs::fstat(&fd)?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile || st.st_ino != ino {
            return Err(std::io::Error::other(
                "replaced while the backup read the tree",
            ));
        }
        Ok(File::from(fd))
    }
}

/// What the walk calls for each entry.
pub type Visit<'v> = dyn FnMut(Entry, Option<FileRef<'_>>) -> Result<(), crate::BackupError> + 'v;

/// What a walk met that it did not keep.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// Sockets and device nodes.
    pub special: u64,
    /// Names that vanished or changed type while the walk looked at them.
    pub raced: u64,
}

/// The tree's root directory (not a symlink), and its entry.
fn open_root(root: &Path) -> Result<(OwnedFd, Entry), FsError> {
    let top = PathBytes(Vec::new());
    let fd = rustix::fs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(fs_err(
        "open",
        &PathBytes(root.as_os_str().as_bytes().to_vec()),
    ))?;
    let st = rustix::fs::fstat(&fd).map_err(fs_err("stat", &top))?;
    Ok((fd, entry_of(top, &st, Kind::Dir)))
}

/// Walks the tree under `root` in index order, calling `visit` for every entry (for a
/// regular file with the means to open it). Hard links after the first name of a file
/// come as [`Kind::Hardlink`] entries naming it.
pub fn walk(root: &Path, visit: &mut Visit<'_>) -> Result<Skipped, crate::BackupError> {
    let top = PathBytes(Vec::new());
    let (fd, mut e) = open_root(root)?;
    e.xattrs = xattrs_of(fd.as_fd()).map_err(fs_err("read the xattrs of", &top))?;
    visit(e, None)?;
    let mut skipped = Skipped::default();
    let mut links = std::collections::HashMap::new();
    walk_dir(fd.as_fd(), &top, visit, &mut skipped, &mut links)?;
    Ok(skipped)
}

fn walk_dir(
    dir: BorrowedFd<'_>,
    path: &PathBytes,
    visit: &mut Visit<'_>,
    skipped: &mut Skipped,
    links: &mut std::collections::HashMap<u64, PathBytes>,
) -> Result<(), crate::BackupError> {
    let mut names: Vec<CString> = Vec::new();
    for d in rustix::fs::Dir::read_from(dir).map_err(fs_err("list", path))? {
        let d = d.map_err(fs_err("list", path))?;
        let n = d.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(d.file_name().to_owned());
        }
    }
    names.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    for name in &names {
        let p = path.join(name.as_bytes());
        let st = match rustix::fs::statat(dir, name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(rustix::io::Errno::NOENT) => {
                skipped.raced += 1;
                continue;
            }
            Err(e) => return Err(fs_err("stat", &p)(e).into()),
        };
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Directory => {
                let sub = match open_dir_at(dir, name) {
                    Ok(fd) => fd,
                    // Renamed, removed or replaced by a symlink since the stat.
                    Err(
                        rustix::io::Errno::NOENT
                        | rustix::io::Errno::LOOP
                        | rustix::io::Errno::NOTDIR
                        | rustix::io::Errno::XDEV,
                    ) => {
                        skipped.raced += 1;
                        continue;
                    }
                    Err(e) => return Err(fs_err("open", &p)(e).into()),
                };
                let st = rustix::fs::fstat(&sub).map_err(fs_err("stat", &p))?;
                let mut e = entry_of(p.clone(), &st, Kind::Dir);
                e.xattrs = xattrs_of(sub.as_fd()).map_err(fs_err("read the xattrs of", &p))?;
                visit(e, None)?;
                walk_dir(sub.as_fd(), &p, visit, skipped, links)?;
            }
            FileType::RegularFile => {
                if st.st_nlink > 1 {
                    if let Some(first) = links.get(&st.st_ino) {
                        let mut e = entry_of(p, &st, Kind::Hardlink);
                        e.target = Some(first.clone());
                        visit(e, None)?;
                        continue;
                    }
                    links.insert(st.st_ino, p.clone());
                }
                let e = entry_of(p, &st, Kind::File);
                visit(e, Some(FileRef { dir, name }))?;
            }
            FileType::Symlink => {
                let target = match rustix::fs::readlinkat(dir, name.as_c_str(), Vec::new()) {
                    Ok(t) => t,
                    Err(rustix::io::Errno::NOENT | rustix::io::Errno::INVAL) => {
                        skipped.raced += 1;
                        continue;
                    }
                    Err(e) => return Err(fs_err("read the link", &p)(e).into()),
                };
                let mut e = entry_of(p, &st, Kind::Symlink);
                e.target = Some(PathBytes(target.into_bytes()));
                visit(e, None)?;
            }
            FileType::Fifo => visit(entry_of(p, &st, Kind::Fifo), None)?,
            _ => skipped.special += 1,
        }
    }
    Ok(())
}

fn ts(ns: i64) -> Timespec {
    Timespec {
        tv_sec: ns.div_euclid(1_000_000_000),
        tv_nsec: ns.rem_euclid(1_000_000_000) as _,
    }
}

fn times(e: &Entry) -> Timestamps {
    Timestamps {
        last_access: ts(e.mtime),
        last_modification: ts(e.mtime),
    }
}

/// Owner, extended attributes, mode (after the owner: a change of owner clears setuid)
/// and times of an open file or directory.
fn apply(fd: BorrowedFd<'_>, e: &Entry) -> Result<(), FsError> {
    rustix::fs::fchown(fd, Some(Uid::from_raw(e.uid)), Some(Gid::from_raw(e.gid)))
        .map_err(fs_err("chown", &e.path))?;
    for x in &e.xattrs {
        let value = base64::engine::general_purpose::STANDARD
            .decode(&x.value)
            .map_err(|_| FsError {
                op: "decode an xattr of",
                path: e.path.lossy(),
                source: std::io::Error::other(format!("xattr {} is not base64", x.name)),
            })?;
        let name = CString::new(x.name.as_bytes()).map_err(|_| FsError {
            op: "set an xattr of",
            path: e.path.lossy(),
            source: std::io::Error::other("an xattr name holds a NUL byte"),
        })?;
        match rustix::fs::fsetxattr(fd, name.as_c_str(), &value, rustix::fs::XattrFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOTSUP) => {}
            Err(err) => return Err(fs_err("set an xattr of", &e.path)(err)),
        }
    }
    rustix::fs::fchmod(fd, Mode::from_raw_mode(e.mode)).map_err(fs_err("chmod", &e.path))?;
    rustix::fs::futimens(fd, &times(e)).map_err(fs_err("set the times of", &e.path))
}

/// Fills an empty directory from index entries given in index order.
pub struct TreeWriter {
    /// The directories from the root down to the last one entered, with their entries
    /// (whose owner, mode and times are set when they are left: their contents change
    /// their times).
    stack: Vec<(OwnedFd, Entry)>,
}

impl TreeWriter {
    pub fn new(root: &Path) -> Result<TreeWriter, FsError> {
        let (fd, mut root_entry) = open_root(root)?;
        root_entry.mode = 0o755;
        Ok(TreeWriter {
            stack: vec![(fd, root_entry)],
        })
    }

    /// Leaves directories until the top one is `e`'s parent; returns `e`'s name.
    fn enter_parent<'e>(&mut self, e: &'e Entry) -> Result<&'e [u8], FsError> {
        let parts = e.path.components().map_err(|m| FsError {
            op: "restore",
            path: e.path.lossy(),
            source: std::io::Error::other(m),
        })?;
        let Some((name, dirs)) = parts.split_last() else {
            return Err(FsError {
                op: "restore",
                path: String::new(),
                source: std::io::Error::other("the root can only be the first entry"),
            });
        };
        let parent: Vec<u8> = dirs.join(&b'/');
        while self.stack.len() > 1 && self.stack.last().expect("non-empty").1.path.0 != parent {
            self.leave()?;
        }
        if self.stack.last().expect("the root stays").1.path.0 != parent {
            return Err(FsError {
                op: "restore",
                path: e.path.lossy(),
                source: std::io::Error::other("the index lists it before its directory"),
            });
        }
        Ok(name)
    }

    fn leave(&mut self) -> Result<(), FsError> {
        let (fd, e) = self.stack.pop().expect("non-empty");
        apply(fd.as_fd(), &e)
    }

    /// Restores one entry; for a regular file returns it open for its bytes, which the
    /// caller writes before [`TreeWriter::done_file`].
    pub fn entry(&mut self, e: &Entry) -> Result<Option<File>, FsError> {
        if e.path.0.is_empty() {
            if e.kind != Kind::Dir || self.stack.len() != 1 {
                return Err(FsError {
                    op: "restore",
                    path: String::new(),
                    source: std::io::Error::other("the root is not a directory first in the index"),
                });
            }
            self.stack[0].1 = e.clone();
            return Ok(None);
        }
        let c = cname(self.enter_parent(e)?);
        let dir = self.stack.last().expect("the root stays").0.as_fd();
        match e.kind {
            Kind::Dir => {
                match rustix::fs::mkdirat(dir, c.as_c_str(), Mode::from_raw_mode(0o700)) {
                    Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                    Err(err) => return Err(fs_err("mkdir", &e.path)(err)),
                }
                let fd = open_dir_at(dir, c.as_c_str()).map_err(fs_err("open", &e.path))?;
                self.stack.push((fd, e.clone()));
                Ok(None)
            }
            Kind::File => {
                let fd = rustix::fs::openat2(
                    dir,
                    c.as_c_str(),
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                    RESOLVE,
                )
                .map_err(fs_err("create", &e.path))?;
                Ok(Some(File::from(fd)))
            }
            Kind::Symlink => {
                let target = e.target.as_ref().map(|t| t.0.clone()).unwrap_or_default();
                rustix::fs::symlinkat(OsStr::from_bytes(&target), dir, c.as_c_str())
                    .map_err(fs_err("symlink", &e.path))?;
                rustix::fs::chownat(
                    dir,
                    c.as_c_str(),
                    Some(Uid::from_raw(e.uid)),
                    Some(Gid::from_raw(e.gid)),
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(fs_err("chown", &e.path))?;
                rustix::fs::utimensat(dir, c.as_c_str(), &times(e), AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(fs_err("set the times of", &e.path))?;
                Ok(None)
            }
            Kind::Hardlink => {
                let first = e.target.clone().unwrap_or(PathBytes(Vec::new()));
                let parts = first.components().map_err(|m| FsError {
                    op: "link",
                    path: e.path.lossy(),
                    source: std::io::Error::other(m),
                })?;
                let Some((first_name, first_dirs)) = parts.split_last() else {
                    return Err(fs_err("link", &e.path)(rustix::io::Errno::INVAL));
                };
                // The first name's directory, opened beneath the root like any other.
                let root = self.stack[0].0.as_fd();
                let from = if first_dirs.is_empty() {
                    None
                } else {
                    Some(
                        rustix::fs::openat2(
                            root,
                            OsStr::from_bytes(&first_dirs.join(&b'/')),
                            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                            Mode::empty(),
                            RESOLVE,
                        )
                        .map_err(fs_err("link", &e.path))?,
                    )
                };
                let from_dir = from.as_ref().map(|f| f.as_fd()).unwrap_or(root);
                rustix::fs::linkat(
                    from_dir,
                    cname(first_name).as_c_str(),
                    dir,
                    c.as_c_str(),
                    AtFlags::empty(),
                )
                .map_err(fs_err("link", &e.path))?;
                Ok(None)
            }
            Kind::Fifo => {
                rustix::fs::mknodat(
                    dir,
                    c.as_c_str(),
                    FileType::Fifo,
                    Mode::from_raw_mode(0o600),
                    0,
                )
                .map_err(fs_err("mkfifo", &e.path))?;
                let fd = rustix::fs::openat2(
                    dir,
                    c.as_c_str(),
                    OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                    RESOLVE,
                )
                .map_err(fs_err("open", &e.path))?;
                // O_PATH descriptors take chown and times through their /proc name.
                let proc = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd));
                rustix::fs::chownat(
                    rustix::fs::CWD,
                    proc.as_str(),
                    Some(Uid::from_raw(e.uid)),
                    Some(Gid::from_raw(e.gid)),
                    AtFlags::empty(),
                )
                .map_err(fs_err("chown", &e.path))?;
                rustix::fs::chmodat(
                    rustix::fs::CWD,
                    proc.as_str(),
                    Mode::from_raw_mode(e.mode),
                    AtFlags::empty(),
                )
                .map_err(fs_err("chmod", &e.path))?;
                rustix::fs::utimensat(rustix::fs::CWD, proc.as_str(), &times(e), AtFlags::empty())
                    .map_err(fs_err("set the times of", &e.path))?;
                Ok(None)
            }
        }
    }

    /// Sets a restored file's owner, mode and times once its bytes are written.
    pub fn done_file(&mut self, file: File, e: &Entry) -> Result<(), FsError> {
        apply(file.as_fd(), e)
    }

    /// Sets the remaining directories' owners, modes and times, the root's last.
    pub fn finish(mut self) -> Result<(), FsError> {
        while !self.stack.is_empty() {
            self.leave()?;
        }
        Ok(())
    }
}
