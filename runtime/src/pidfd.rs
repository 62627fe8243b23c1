//! Signalling and waiting on processes through pidfds, so that a PID recycled by an
//! unrelated process is never signalled: a pidfd names one process for good, and the
//! start time read after opening it proves it is the one we recorded.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use nix::errno::Errno;

use crate::state::process_start_time;

/// Opens a pidfd for `pid` if it is still the process that started at `start`.
pub fn open(pid: i32, start: u64) -> Result<Option<OwnedFd>, Errno> {
    // SAFETY: pidfd_open takes integers and returns a new descriptor or -1.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if raw < 0 {
        return match Errno::last() {
            Errno::ESRCH => Ok(None),
            e => Err(e),
        };
    }
    // SAFETY: a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw as RawFd) };
    // Checked after opening: from here on the fd cannot start naming another process.
    Ok((process_start_time(pid) == Some(start)).then_some(fd))
}

/// Sends `signal` through a pidfd. Async-signal-safe.
pub fn send(fd: RawFd, signal: i32) -> Result<(), Errno> {
    // SAFETY: pidfd_send_signal with a null siginfo.
    Errno::result(unsafe { libc::syscall(libc::SYS_pidfd_send_signal, fd, signal, std::ptr::null::<libc::siginfo_t>(), 0) }).map(drop)
}

/// Signals `pid` only if it is still the process that started at `start`; returns
/// whether it was signalled.
pub fn signal(pid: i32, start: u64, signal: i32) -> Result<bool, Errno> {
    match open(pid, start)? {
        Some(fd) => match send(fd.as_raw_fd(), signal) {
            Ok(()) => Ok(true),
            Err(Errno::ESRCH) => Ok(false),
            Err(e) => Err(e),
        },
        None => Ok(false),
    }
}

/// Waits until process `pid` (started at `start`) has exited; false on timeout.
pub fn wait_gone(pid: i32, start: u64, timeout: Duration) -> bool {
    let Ok(Some(fd)) = open(pid, start) else {
        return true;
    };
    let mut fds = [nix::poll::PollFd::new(fd.as_fd(), nix::poll::PollFlags::POLLIN)];
    let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
    let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms));
    process_start_time(pid) != Some(start)
}
