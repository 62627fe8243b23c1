//! A process's own terminal, as runc makes one: opened in the container's devpts (so
//! that `tty` names it and the container's /dev/pts shows it), in its mount namespace,
//! with the process as the leader of a session whose controlling terminal it is. The
//! master end goes to whoever drives the terminal (the caller of an exec, a
//! container's monitor, an OCI console socket).

use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};

use nix::errno::Errno;

use super::stdio::{set_stdio, StdioError};

/// The terminal could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TerminalError {
    #[error("{what}")]
    Sys {
        what: &'static str,
        #[source]
        source: Errno,
    },
    #[error("putting the terminal on stdio")]
    Stdio(#[from] StdioError),
}

/// Makes the calling process (not yet a group leader) the leader of a new session on
/// a new terminal of the container's devpts, sized `process.console_size` if given,
/// with that terminal as its stdin, stdout and stderr. Returns the master end.
pub(crate) fn take(process: &oci_spec::runtime::Process) -> Result<OwnedFd, TerminalError> {
    let sys = |what: &'static str| move |source| TerminalError::Sys { what, source };
    // Job control and ^C work, and the hangup when the master closes reaches it.
    nix::unistd::setsid().map_err(sys("starting a session for the terminal"))?;
    let flags = nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_NOCTTY | nix::fcntl::OFlag::O_CLOEXEC;
    let master = nix::pty::posix_openpt(flags).map_err(sys("opening /dev/ptmx in the container"))?;
    nix::pty::grantpt(&master).map_err(sys("granting the terminal"))?;
    nix::pty::unlockpt(&master).map_err(sys("unlocking the terminal"))?;
    // The peer by its master, not by a path the container could have replaced.
    // SAFETY: TIOCGPTPEER takes open flags and returns a new descriptor.
    let peer =
        Errno::result(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTPEER, libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) })
            .map_err(sys("opening the terminal's peer"))?;
    // SAFETY: the ioctl just returned this new descriptor.
    let peer = unsafe { OwnedFd::from_raw_fd(peer) };
    if let Some(size) = process.console_size() {
        // Before the process runs, so that its first look at the size is the right one.
        let ws = libc::winsize { ws_row: size.height() as u16, ws_col: size.width() as u16, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: TIOCSWINSZ reads a winsize from the pointer, which lives across the call.
        let _ = unsafe { libc::ioctl(peer.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    }
    let dup = |fd: &OwnedFd| fd.try_clone().map_err(|_| TerminalError::Sys { what: "duplicating the terminal", source: Errno::EMFILE });
    set_stdio(vec![dup(&peer)?, dup(&peer)?, peer])?;
    // SAFETY: an ioctl on stdin with an integer argument.
    Errno::result(unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) }).map_err(sys("making stdin the controlling terminal"))?;
    // SAFETY: the descriptor was just released by its only owner.
    Ok(unsafe { OwnedFd::from_raw_fd(master.into_raw_fd()) })
}
