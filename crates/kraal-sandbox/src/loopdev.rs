//! Loop devices set up with ioctls (what `losetup`/`mount -o loop` do): a free device
//! from `/dev/loop-control`, configured in one `LOOP_CONFIGURE` with autoclear, so it
//! detaches itself when its last user (the mounted file system) lets go.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
const LOOP_MAJOR: u64 = 7;

/// `struct loop_info64` of `<linux/loop.h>`.
#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// `struct loop_config` of `<linux/loop.h>` (Linux 5.8 and later).
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

fn ctx(what: String) -> impl FnOnce(io::Error) -> io::Error {
    move |e| io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// Attaches `image` to a free loop device: the open device (keep it until the device
/// has another user) and its path.
pub(crate) fn attach(image: &Path) -> io::Result<(File, PathBuf)> {
    let backing = OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)
        .map_err(ctx(format!("opening {}", image.display())))?;
    let control = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/loop-control")
        .map_err(ctx("opening /dev/loop-control".into()))?;
    // Another process may take the free device between asking and configuring it.
    for _ in 0..32 {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number.
        let n = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE) };
        if n < 0 {
            return Err(ctx("LOOP_CTL_GET_FREE".into())(io::Error::last_os_error()));
        }
        let path = PathBuf::from(format!("/dev/loop{n}"));
        ensure_node(&path, n as u64)?;
        let dev = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(ctx(format!("opening {}", path.display())))?;
        // SAFETY: both structs are plain old data; all zeroes is a valid value.
        let mut cfg: LoopConfig = unsafe { std::mem::zeroed() };
        cfg.fd = backing.as_raw_fd() as u32;
        cfg.info.lo_flags = LO_FLAGS_AUTOCLEAR;
        let name = image.as_os_str().as_encoded_bytes();
        let keep = name.len().min(cfg.info.lo_file_name.len() - 1);
        cfg.info.lo_file_name[..keep].copy_from_slice(&name[..keep]);
        // SAFETY: LOOP_CONFIGURE reads one loop_config, which lives across the call.
        if unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CONFIGURE, &cfg) } == 0 {
            return Ok((dev, path));
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EBUSY) {
            return Err(ctx(format!(
                "LOOP_CONFIGURE {} with {}",
                path.display(),
                image.display()
            ))(e));
        }
    }
    Err(io::Error::new(
        io::ErrorKind::ResourceBusy,
        "every free loop device was taken by someone else first (32 tries)",
    ))
}

/// Makes the device node of loop device `n` when `/dev` is no devtmpfs that has it.
fn ensure_node(path: &Path, n: u64) -> io::Result<()> {
    match std::fs::metadata(path) {
        Ok(m) if m.file_type().is_block_device() => Ok(()),
        Ok(_) => Err(io::Error::other(format!(
            "{} exists and is no block device",
            path.display()
        ))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let made = nix::sys::stat::mknod(
                path,
                nix::sys::stat::SFlag::S_IFBLK,
                nix::sys::stat::Mode::from_bits_truncate(0o660),
                nix::sys::stat::makedev(LOOP_MAJOR, n),
            );
            match made {
                Ok(()) | Err(nix::Error::EEXIST) => Ok(()),
                Err(e) => Err(ctx(format!("mknod {}", path.display()))(e.into())),
            }
        }
        Err(e) => Err(ctx(format!("reading {}", path.display()))(e)),
    }
}
