//! The pre-`main` entry point of helper processes.
//!
//! Container setup must not run in the caller's (possibly multi-threaded) process, so
//! minipod re-executes the current binary (`/proc/self/exe`) with a marker variable.
//! This constructor runs before `main` (or libtest) in every binary that links
//! minipod-runtime, sees the marker, does the helper's work single-threaded and exits
//! without ever returning into the host program.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::channel::Channel;
use super::messages::{HelperRequest, Report};

/// Set on the helper's command only; never inherited further (workloads get the spec env).
pub(crate) const MARKER: &str = "_MINIPOD_HELPER";
/// An argument no program accepts: if the hook is missing from a binary, the binary
/// refuses to start instead of running its own `main` (or a whole test suite) again.
pub(crate) const FAILSAFE_ARG: &str = "--minipod-internal-helper-do-not-use";

// After std's own argv setup (priority 99), before ordinary constructors.
#[used]
#[link_section = ".init_array.00150"]
static HOOK: extern "C" fn() = helper_hook;

extern "C" fn helper_hook() {
    if std::env::var_os(MARKER).is_none() {
        return;
    }
    // SAFETY: ends the process without running the host program's atexit handlers or main.
    unsafe { libc::_exit(run_helper(0)) }
}

/// Makes the linker keep the constructor: an object file nothing refers to would be dropped.
pub(crate) fn keep() {
    std::hint::black_box(&HOOK);
}

/// Whether this process has exactly one thread, so that a plain fork is safe.
pub(crate) fn single_threaded() -> bool {
    thread_count() == Some(1)
}

/// Entry of a re-executed helper: the channel is its stdin, the request comes over it.
pub(crate) fn run_helper(chan_fd: RawFd) -> i32 {
    std::panic::catch_unwind(|| {
        let Some(chan) = adopt_descriptors(chan_fd, &[]) else { return 125 };
        if let Some(threads) = thread_count().filter(|n| *n != 1) {
            let _ = chan.send(&Report::Failed(format!(
                "minipod helper started with {threads} threads; its hook must run before anything spawns threads"
            )));
            return 125;
        }
        match chan.recv_with_fds::<HelperRequest>() {
            Ok(Some((request, fds))) => serve(chan, &request, fds),
            Ok(None) => 0,
            Err(e) => {
                let _ = chan.send(&Report::Failed(super::chain(&e)));
                125
            }
        }
    })
    .unwrap_or(101)
}

/// Entry of a helper forked from a single-threaded caller: the request is already in
/// memory, so it is served without a round trip through the channel.
pub(crate) fn run_forked_helper(chan_fd: RawFd, request: &HelperRequest, fds: &[RawFd]) -> i32 {
    std::panic::catch_unwind(|| {
        let Some(chan) = adopt_descriptors(chan_fd, fds) else { return 125 };
        // SAFETY: adopt_descriptors placed the caller's descriptors at 4, 5, ...
        let fds = (0..fds.len()).map(|i| unsafe { OwnedFd::from_raw_fd(4 + i as RawFd) }).collect();
        serve(chan, request, fds)
    })
    .unwrap_or(101)
}

fn serve(chan: Channel, request: &HelperRequest, fds: Vec<OwnedFd>) -> i32 {
    match request {
        HelperRequest::Create(req) => super::monitor::run(chan, req, fds),
        HelperRequest::Exec(req) => super::exec::run(chan, req, fds),
        HelperRequest::PodInit => super::pod_init::run(chan),
    }
}

/// Puts the channel on 3 and `keep` on 4, 5, ..., closes every other descriptor and
/// points 0, 1, 2 at /dev/null. A caller's stray inheritable descriptors (cargo's
/// jobserver pipe, the CLI's stdout pipe) must not live on in a monitor that may
/// outlast the caller by days.
fn adopt_descriptors(chan_fd: RawFd, keep: &[RawFd]) -> Option<Channel> {
    let wanted: Vec<RawFd> = std::iter::once(chan_fd).chain(keep.iter().copied()).collect();
    // SAFETY: plain descriptor syscalls on numbers this process owns from here on.
    unsafe {
        // First out of the way (above every target slot), then down into place. The
        // base stays small: F_DUPFD fails with EINVAL at or above the soft fd limit.
        let above = 3 + wanted.len() as libc::c_int;
        let mut high = Vec::with_capacity(wanted.len());
        for fd in &wanted {
            let h = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, above);
            if h < 0 {
                return None;
            }
            high.push(h);
        }
        for (i, h) in high.iter().enumerate() {
            if libc::dup3(*h, 3 + i as RawFd, libc::O_CLOEXEC) < 0 {
                return None;
            }
        }
        libc::syscall(libc::SYS_close_range, 3 + wanted.len() as u32, u32::MAX, 0u32);
        if let Ok(null) = std::fs::File::options().read(true).write(true).open("/dev/null") {
            for fd in 0..3 {
                libc::dup2(null.as_raw_fd(), fd);
            }
        }
        Some(Channel::from_fd(OwnedFd::from_raw_fd(3)))
    }
}

fn thread_count() -> Option<usize> {
    Some(std::fs::read_dir("/proc/self/task").ok()?.count())
}
