//! The file-aware index of a tree backup: one JSON line per file, directory, symlink,
//! hard link or FIFO (path, mode, owner, times, inode, xattrs, and for a regular file the
//! pieces of chunks that hold its bytes), and the rule that says when a file is unchanged
//! since the last backup so its bytes need not be read again.

use std::collections::HashMap;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// A path inside the tree, relative to its root (`""` is the root; components joined by
/// `/`), as raw bytes: file names need not be UTF-8.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PathBytes(pub Vec<u8>);

/// Non-UTF-8 names are written as `"\0"` + base64 (no path holds a NUL byte).
impl Serialize for PathBytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(&self.0) {
            Ok(t) => s.serialize_str(t),
            Err(_) => s.serialize_str(&format!(
                "\0{}",
                base64::engine::general_purpose::STANDARD.encode(&self.0)
            )),
        }
    }
}

impl<'de> Deserialize<'de> for PathBytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let t = String::deserialize(d)?;
        match t.strip_prefix('\0') {
            Some(b) => base64::engine::general_purpose::STANDARD
                .decode(b)
                .map(PathBytes)
                .map_err(serde::de::Error::custom),
            None => Ok(PathBytes(t.into_bytes())),
        }
    }
}

impl PathBytes {
    /// The path's components; each is checked to be one plain name.
    pub fn components(&self) -> Result<Vec<&[u8]>, String> {
        if self.0.is_empty() {
            return Ok(Vec::new());
        }
        self.0
            .split(|&b| b == b'/')
            .map(|c| {
                if c.is_empty() || c == b"." || c == b".." || c.contains(&0) {
                    Err(format!(
                        "the path {:?} has a component that is not a plain name",
                        String::from_utf8_lossy(&self.0)
                    ))
                } else {
                    Ok(c)
                }
            })
            .collect()
    }

    pub fn join(&self, name: &[u8]) -> PathBytes {
        let mut p = self.0.clone();
        if !p.is_empty() {
            p.push(b'/');
        }
        p.extend_from_slice(name);
        PathBytes(p)
    }

    pub fn lossy(&self) -> String {
        String::from_utf8_lossy(&self.0).into_owned()
    }
}

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Dir,
    File,
    Symlink,
    /// A further name of a regular file already in the index (`target`).
    Hardlink,
    Fifo,
}

/// Bytes `off..off + len` of chunk `chunk` (an index into the manifest's chunk table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Piece {
    #[serde(rename = "c")]
    pub chunk: u32,
    #[serde(rename = "o", default)]
    pub off: u32,
    #[serde(rename = "n")]
    pub len: u32,
}

/// One extended attribute (ACLs are two of them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Xattr {
    pub name: String,
    /// Base64.
    pub value: String,
}

/// One entry of the tree, in the order of the walk (a directory before what it holds,
/// names sorted bytewise).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub path: PathBytes,
    pub kind: Kind,
    /// Permission bits (with setuid, setgid, sticky).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    #[serde(default)]
    pub size: u64,
    /// Nanoseconds since the epoch.
    pub mtime: i64,
    pub ctime: i64,
    #[serde(default)]
    pub ino: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub xattrs: Vec<Xattr>,
    /// A symlink's target, or the first name of a hard-linked file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<PathBytes>,
    /// A regular file's bytes, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub data: Vec<Piece>,
}

/// How much earlier than the last scan's start a file's change time must be for the file
/// to count as unchanged: file systems stamp changes with a coarse clock, so a write in
/// the same tick as the scan (git's "racy clean" case) must not look old.
const RACY_NS: i64 = 2_000_000_000;

impl Entry {
    /// Whether `now` (just stat'ed) is the same file as `self` (from the previous index,
    /// whose scan started at `scan_started`) with the same bytes, without reading it: same
    /// inode, size, owner, mode and times, and a change time well before that scan.
    pub fn unchanged(&self, now: &Entry, scan_started: i64) -> bool {
        self.kind == Kind::File
            && now.kind == Kind::File
            && self.ino == now.ino
            && self.size == now.size
            && self.mtime == now.mtime
            && self.ctime == now.ctime
            && self.mode == now.mode
            && self.uid == now.uid
            && self.gid == now.gid
            && now.ctime < scan_started.saturating_sub(RACY_NS)
            && self.data.iter().map(|p| p.len as u64).sum::<u64>() == self.size
    }
}

/// The previous backup's regular files by path, with their chunks' names, for the
/// unchanged-file rule.
pub struct Previous {
    pub scan_started: i64,
    pub files: HashMap<PathBytes, Entry>,
    pub chunks: Vec<crate::ChunkRef>,
}

/// The index as JSON lines.
pub fn encode(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * 160);
    for e in entries {
        serde_json::to_writer(&mut out, e).expect("serializes");
        out.push(b'\n');
    }
    out
}

pub fn decode(bytes: &[u8]) -> Result<Vec<Entry>, String> {
    bytes
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .enumerate()
        .map(|(i, l)| serde_json::from_slice(l).map_err(|e| format!("index line {}: {e}", i + 1)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_that_are_not_utf8_survive_the_index() {
        let e = Entry {
            path: PathBytes(b"dir/caf\xe9".to_vec()),
            kind: Kind::File,
            mode: 0o644,
            uid: 1000,
            gid: 1000,
            size: 3,
            mtime: 1,
            ctime: 2,
            ino: 9,
            xattrs: vec![],
            target: None,
            data: vec![Piece {
                chunk: 0,
                off: 5,
                len: 3,
            }],
        };
        let back = decode(&encode(std::slice::from_ref(&e))).unwrap();
        assert_eq!(back, vec![e]);
        assert_eq!(
            PathBytes(b"a/b".to_vec()).components().unwrap(),
            vec![&b"a"[..], b"b"]
        );
        for bad in [&b"a/../b"[..], b"/a", b"a//b", b"./a"] {
            assert!(PathBytes(bad.to_vec()).components().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_file_changed_in_the_scans_tick_is_not_unchanged() {
        let old = Entry {
            path: PathBytes(b"f".to_vec()),
            kind: Kind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: 4,
            mtime: 10_000_000_000,
            ctime: 10_000_000_000,
            ino: 7,
            xattrs: vec![],
            target: None,
            data: vec![Piece {
                chunk: 0,
                off: 0,
                len: 4,
            }],
        };
        let now = Entry {
            data: vec![],
            ..old.clone()
        };
        assert!(old.unchanged(&now, 20_000_000_000));
        // Changed within the racy window before the last scan started: read it again.
        assert!(!old.unchanged(&now, 11_000_000_000));
        let other_inode = Entry {
            ino: 8,
            ..now.clone()
        };
        assert!(!old.unchanged(&other_inode, 20_000_000_000));
        let bigger = Entry { size: 5, ..now };
        assert!(!old.unchanged(&bigger, 20_000_000_000));
    }
}
