//! The master end of an exec's terminal, read and written without blocking.

use std::os::fd::{AsFd, OwnedFd};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

pub(super) struct Pty {
    master: AsyncFd<OwnedFd>,
}

impl Pty {
    /// Our end of a terminal: its master, which the exec'd process's terminal end
    /// (opened in the container, so that it is one of its own /dev/pts) reads EOF on
    /// once every holder closed it.
    pub(super) fn from_master(master: OwnedFd) -> std::io::Result<Self> {
        let flags = nix::fcntl::fcntl(&master, nix::fcntl::FcntlArg::F_GETFL).map_err(std::io::Error::from)?;
        let flags = nix::fcntl::OFlag::from_bits_retain(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(&master, nix::fcntl::FcntlArg::F_SETFL(flags)).map_err(std::io::Error::from)?;
        // SAFETY: an OwnedFd stays open, and names the same descriptor, for as long as
        // the AsyncFd owns it.
        let master =
            unsafe { AsyncFd::register_with_interest(master, Interest::READABLE | Interest::WRITABLE) }.map_err(|e| e.into_parts().1)?;
        Ok(Self { master })
    }

    /// Reads output; 0 once every holder of the terminal side closed it.
    pub(super) async fn read(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let mut guard = self.master.readable().await?;
            match guard.try_io(|fd| nix::unistd::read(fd.get_ref(), buf).map_err(std::io::Error::from)) {
                Ok(Ok(n)) => return Ok(n),
                // EIO: the terminal side is closed by all.
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(0),
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }

    pub(super) async fn write_all(&self, mut data: &[u8]) -> std::io::Result<()> {
        while !data.is_empty() {
            let mut guard = self.master.writable().await?;
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(std::io::Error::from)) {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }

    /// Sets the window size (the process gets SIGWINCH).
    pub(super) fn resize(&self, cols: u16, rows: u16) {
        let _ = crate::winsize::set(self.master.get_ref().as_fd(), cols, rows);
    }
}
