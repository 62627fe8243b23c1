//! A process's standard descriptors: what a container's init and an exec'd process
//! get as 0, 1 and 2 (given descriptors, a terminal, or /dev/null).

use std::os::fd::{AsRawFd, OwnedFd};

use nix::errno::Errno;

/// Descriptors could not be put in place.
#[derive(Debug, thiserror::Error)]
#[error("{what}")]
pub struct StdioError {
    what: &'static str,
    #[source]
    source: Errno,
}

fn err(what: &'static str) -> impl FnOnce(Errno) -> StdioError {
    move |source| StdioError { what, source }
}

/// Puts the given descriptors on 0, 1, 2, or /dev/null where none were given.
pub(crate) fn set_stdio(stdio: Vec<OwnedFd>) -> Result<(), StdioError> {
    let fds: Vec<OwnedFd> = if stdio.len() == 3 {
        stdio
    } else {
        let null = std::fs::File::options()
            .read(true)
            .write(true)
            .open("/dev/null")
            .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
            .map_err(err("opening /dev/null"))?;
        let null = OwnedFd::from(null);
        vec![
            null.try_clone().map_err(|_| Errno::EMFILE).map_err(err("dup"))?,
            null.try_clone().map_err(|_| Errno::EMFILE).map_err(err("dup"))?,
            null,
        ]
    };
    for (target, fd) in fds.iter().enumerate() {
        if fd.as_raw_fd() != target as i32 {
            // SAFETY: dup2 onto a standard descriptor number.
            Errno::result(unsafe { libc::dup2(fd.as_raw_fd(), target as i32) }).map_err(err("setting up stdio"))?;
        }
    }
    // The originals stay open only where they already sat on 0..2.
    for fd in fds {
        if fd.as_raw_fd() > 2 {
            drop(fd);
        } else {
            std::mem::forget(fd);
        }
    }
    Ok(())
}
