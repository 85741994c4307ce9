//! Non-blocking file descriptors (PTY masters and pipes) driven by tokio's reactor.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use kraal_protocol::TtySize;
use tokio::io::unix::AsyncFd;

/// A non-blocking fd usable for async reads and writes.
pub struct AsyncFdIo {
    fd: AsyncFd<OwnedFd>,
}

impl AsyncFdIo {
    pub fn new(fd: OwnedFd) -> io::Result<Self> {
        set_nonblocking(&fd)?;
        // SAFETY: `OwnedFd` owns an open descriptor that stays open and unchanged for as long
        // as the `AsyncFd` holds it.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)?;
        Ok(AsyncFdIo { fd })
    }

    /// Reads into `buf`; `Ok(0)` means end of file. A PTY master reports EIO once every
    /// slave is closed, which is the terminal's end of file.
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|inner| {
                let n =
                    nix::unistd::read(inner.get_ref().as_raw_fd(), buf).map_err(io::Error::from)?;
                Ok(n)
            }) {
                Ok(Ok(n)) => return Ok(n),
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(0),
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }

    pub async fn write_all(&self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            let mut guard = self.fd.writable().await?;
            match guard
                .try_io(|inner| nix::unistd::write(inner.get_ref(), buf).map_err(io::Error::from))
            {
                Ok(Ok(n)) => buf = &buf[n..],
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }

    pub fn raw(&self) -> i32 {
        self.fd.get_ref().as_raw_fd()
    }
}

fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = OFlag::from_bits_truncate(fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL)?);
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

pub fn winsize(size: TtySize) -> nix::pty::Winsize {
    nix::pty::Winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

/// Sets the terminal size of a PTY master; the kernel sends SIGWINCH to its foreground group.
pub fn resize(master_fd: i32, size: TtySize) -> io::Result<()> {
    let ws = winsize(size);
    // SAFETY: TIOCSWINSZ reads one `struct winsize` from the pointer, which is valid for
    // the duration of the call; the fd is a PTY master owned by the caller.
    let r = unsafe { libc::ioctl(master_fd, libc::TIOCSWINSZ, &ws as *const nix::pty::Winsize) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
