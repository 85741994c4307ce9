//! New empty volumes from a template: `mkfs.ext4` runs once per size and host directory,
//! and each new volume is a sparse copy of that template (a reflink where the file
//! system has them) with a fresh file system UUID — no process on a workspace's create.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::process::ProcessError;

/// `FICLONE` of `<linux/fs.h>`: the whole file as a reflink.
const FICLONE: libc::c_ulong = 0x4004_9409;

const SB_OFFSET: u64 = 1024;
const SB_LEN: usize = 1024;
const SB_MAGIC_AT: usize = 0x38;
const SB_INCOMPAT_AT: usize = 0x60;
const SB_RO_COMPAT_AT: usize = 0x64;
const SB_UUID_AT: usize = 0x68;
const SB_CHECKSUM_AT: usize = 0x3FC;
const RO_COMPAT_METADATA_CSUM: u32 = 0x400;
const INCOMPAT_CSUM_SEED: u32 = 0x2000;

/// An empty ext4 file system of `mib` MiB labelled `label` in a new file at `path`, made
/// from the template `<templates>/volume-<mib>M-<label>.ext4` (created on first use).
/// Its checksums are seeded apart from its UUID (`metadata_csum_seed`), so each copy
/// gets a UUID of its own by rewriting the superblock alone.
pub async fn new_volume(
    templates: &Path,
    path: &Path,
    mib: u64,
    label: &str,
) -> Result<(), ProcessError> {
    let template = templates.join(format!("volume-{mib}M-{label}.ext4"));
    if !template.is_file() {
        // Made under a name of its own and renamed: concurrent creates never see half
        // of one (two may both make it; the last rename wins, both are complete).
        let partial = templates.join(format!(
            ".volume-{mib}M-{label}.{}.partial",
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(templates).map_err(|e| fail(templates, "creating", e))?;
        let made = crate::disk::make_ext4_with(&partial, mib, label, None, &["metadata_csum_seed"])
            .await
            .and_then(|()| {
                std::fs::rename(&partial, &template).map_err(|e| fail(&template, "naming", e))
            });
        if made.is_err() {
            let _ = std::fs::remove_file(&partial);
        }
        made?;
    }
    let (template, to) = (template.clone(), path.to_owned());
    tokio::task::spawn_blocking(move || copy_sparse(&template, &to).and_then(|()| fresh_uuid(&to)))
        .await
        .expect("copy task does not panic")
        .map_err(|e| {
            let _ = std::fs::remove_file(path);
            fail(path, "making", e)
        })
}

fn fail(path: &Path, what: &str, e: io::Error) -> ProcessError {
    crate::disk::syscall_failed(format!("{what} volume {}", path.display()), e)
}

/// Copies `from` to the new file `to`, keeping its holes: a reflink when the file
/// system can, else only the data extents (`SEEK_DATA`/`SEEK_HOLE`) with
/// `copy_file_range`.
fn copy_sparse(from: &Path, to: &Path) -> io::Result<()> {
    let src = File::open(from)?;
    let len = src.metadata()?.len();
    match std::fs::remove_file(to) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let dst = OpenOptions::new().write(true).create_new(true).open(to)?;
    // SAFETY: FICLONE takes the source descriptor as its argument.
    if unsafe { libc::ioctl(dst.as_raw_fd(), FICLONE, src.as_raw_fd()) } == 0 {
        return Ok(());
    }
    dst.set_len(len)?;
    let mut pos: i64 = 0;
    while (pos as u64) < len {
        let data = match nix::unistd::lseek(src.as_raw_fd(), pos, nix::unistd::Whence::SeekData) {
            Ok(d) => d,
            Err(nix::Error::ENXIO) => break, // only a hole is left
            Err(e) => return Err(e.into()),
        };
        let hole = nix::unistd::lseek(src.as_raw_fd(), data, nix::unistd::Whence::SeekHole)?;
        let (mut off_in, mut off_out) = (data, data);
        while off_in < hole {
            let left = (hole - off_in) as usize;
            let n = nix::fcntl::copy_file_range(
                &src,
                Some(&mut off_in),
                &dst,
                Some(&mut off_out),
                left,
            )?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{} shrank while being copied", from.display()),
                ));
            }
        }
        pos = hole;
    }
    Ok(())
}

/// Gives the ext4 file system in `path` a random UUID: the primary superblock's UUID
/// and checksum are rewritten. Refuses (leaving the file as it is) a file system whose
/// checksums derive from its UUID, or a superblock whose checksum does not verify.
fn fresh_uuid(path: &Path) -> io::Result<()> {
    let f = OpenOptions::new().read(true).write(true).open(path)?;
    let mut sb = [0u8; SB_LEN];
    f.read_exact_at(&mut sb, SB_OFFSET)?;
    let bad = |why: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {why}", path.display()),
        )
    };
    if u16::from_le_bytes([sb[SB_MAGIC_AT], sb[SB_MAGIC_AT + 1]]) != 0xEF53 {
        return Err(bad("no ext4 superblock"));
    }
    let word = |at: usize| u32::from_le_bytes(sb[at..at + 4].try_into().unwrap());
    let csum = word(SB_RO_COMPAT_AT) & RO_COMPAT_METADATA_CSUM != 0;
    if csum {
        if word(SB_INCOMPAT_AT) & INCOMPAT_CSUM_SEED == 0 {
            return Err(bad(
                "checksums are seeded from the UUID (no metadata_csum_seed)",
            ));
        }
        if superblock_checksum(&sb) != word(SB_CHECKSUM_AT) {
            return Err(bad("the superblock checksum does not verify"));
        }
    }
    let mut uuid: [u8; 16] = rand::random();
    uuid[6] = (uuid[6] & 0x0f) | 0x40; // version 4
    uuid[8] = (uuid[8] & 0x3f) | 0x80; // RFC 4122 variant
    sb[SB_UUID_AT..SB_UUID_AT + 16].copy_from_slice(&uuid);
    if csum {
        let c = superblock_checksum(&sb);
        sb[SB_CHECKSUM_AT..].copy_from_slice(&c.to_le_bytes());
    }
    f.write_all_at(&sb, SB_OFFSET)?;
    Ok(())
}

/// ext4's superblock checksum: CRC32C from ~0 over the bytes before the checksum field,
/// without the final inversion.
fn superblock_checksum(sb: &[u8; SB_LEN]) -> u32 {
    !crc32c::crc32c(&sb[..SB_CHECKSUM_AT])
}

/// Where a backend whose workspaces live in `state_dir` keeps its volume templates:
/// beside that directory (`<data>/volume-templates` for `<data>/workspaces`), so the
/// workspace directory holds workspaces only.
pub fn templates_dir(state_dir: &Path) -> PathBuf {
    state_dir
        .parent()
        .unwrap_or(state_dir)
        .join("volume-templates")
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;
    use crate::process::Cmd;

    async fn dumpe2fs(p: &Path) -> String {
        Cmd::new("dumpe2fs")
            .arg("-h")
            .arg(p)
            .run()
            .await
            .unwrap()
            .stdout_str()
    }

    fn uuid_of(dump: &str) -> String {
        dump.lines()
            .find_map(|l| l.strip_prefix("Filesystem UUID:"))
            .unwrap()
            .trim()
            .to_owned()
    }

    /// Two volumes from one template: each sparse, clean under a full fsck, with the
    /// label and a UUID of its own; the template was made once.
    #[tokio::test]
    async fn volumes_from_a_template_are_sparse_clean_and_unique() {
        let d = tempfile::tempdir().unwrap();
        let t = d.path().join("t");
        let (a, b) = (d.path().join("a.ext4"), d.path().join("b.ext4"));
        new_volume(&t, &a, 32 * 1024, "workspace").await.unwrap();
        let template = t.join("volume-32768M-workspace.ext4");
        let made = std::fs::metadata(&template).unwrap().modified().unwrap();
        new_volume(&t, &b, 32 * 1024, "workspace").await.unwrap();
        assert_eq!(
            std::fs::metadata(&template).unwrap().modified().unwrap(),
            made
        );
        let mut uuids = vec![uuid_of(&dumpe2fs(&template).await)];
        for v in [&a, &b] {
            let m = std::fs::metadata(v).unwrap();
            assert_eq!(m.len(), 32 << 30);
            assert!(
                m.blocks() * 512 < 16 << 20,
                "{} bytes allocated",
                m.blocks() * 512
            );
            Cmd::new("e2fsck")
                .arg("-fn")
                .arg(v)
                .run()
                .await
                .unwrap_or_else(|e| panic!("{} is not clean: {e}", v.display()));
            let dump = dumpe2fs(v).await;
            assert!(
                dump.contains("Filesystem volume name:   workspace"),
                "{dump}"
            );
            assert!(dump.contains("metadata_csum_seed"), "{dump}");
            uuids.push(uuid_of(&dump));
        }
        uuids.sort();
        uuids.dedup();
        assert_eq!(
            uuids.len(),
            3,
            "every copy has a UUID of its own: {uuids:?}"
        );
    }

    /// A superblock whose checksum derives from the UUID, or does not verify, is left
    /// alone with an error naming why.
    #[tokio::test]
    async fn uuid_rewrites_refuse_what_they_cannot_do_safely() {
        let d = tempfile::tempdir().unwrap();
        let plain = d.path().join("plain.ext4");
        crate::disk::make_ext4(&plain, 64, "x", None).await.unwrap();
        let before = std::fs::read(&plain).unwrap();
        let e = fresh_uuid(&plain).unwrap_err().to_string();
        assert!(e.contains("metadata_csum_seed"), "{e}");
        assert_eq!(std::fs::read(&plain).unwrap(), before);

        let seeded = d.path().join("seeded.ext4");
        crate::disk::make_ext4_with(&seeded, 64, "x", None, &["metadata_csum_seed"])
            .await
            .unwrap();
        let f = OpenOptions::new().write(true).open(&seeded).unwrap();
        f.write_all_at(b"\x01", SB_OFFSET + 0x100).unwrap();
        let e = fresh_uuid(&seeded).unwrap_err().to_string();
        assert!(e.contains("does not verify"), "{e}");

        let junk = d.path().join("junk");
        std::fs::write(&junk, vec![0u8; 4096]).unwrap();
        assert!(
            fresh_uuid(&junk)
                .unwrap_err()
                .to_string()
                .contains("no ext4")
        );
    }
}
