//! The pre-`main` entry point of helper processes.
//!
//! Container setup must not run in the caller's (possibly multi-threaded) process, so
//! minipod re-executes the current binary (`/proc/self/exe`) with a marker variable.
//! This constructor runs before `main` (or libtest) in every binary that links
//! minipod-runtime, sees the marker, does the helper's work single-threaded and exits
//! without ever returning into the host program.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

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
    let code = std::panic::catch_unwind(helper_main).unwrap_or(101);
    // SAFETY: ends the process without running the host program's atexit handlers or main.
    unsafe { libc::_exit(code) }
}

/// Makes the linker keep the constructor: an object file nothing refers to would be dropped.
pub(crate) fn keep() {
    std::hint::black_box(&HOOK);
}

fn helper_main() -> i32 {
    // The channel is our stdin. Move it to 3 and close everything above: a caller's
    // stray inheritable descriptors (cargo's jobserver pipe, say) must not live on in
    // a monitor that may outlast the caller by days.
    // SAFETY: plain descriptor syscalls on numbers we own from here on.
    let chan = unsafe {
        if libc::dup3(0, 3, libc::O_CLOEXEC) != 3 {
            return 125;
        }
        libc::syscall(libc::SYS_close_range, 4u32, u32::MAX, 0u32);
        Channel::from_fd(OwnedFd::from_raw_fd(3))
    };
    // Keep 0 taken so no later socket or file lands on it by accident.
    if let Ok(null) = std::fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        // SAFETY: dup2 onto descriptor 0, which held our copy of the channel.
        unsafe { libc::dup2(null.as_raw_fd(), 0) };
    }
    if let Some(threads) = thread_count().filter(|n| *n != 1) {
        let _ = chan.send(&Report::Failed(format!(
            "minipod helper started with {threads} threads; its hook must run before anything spawns threads"
        )));
        return 125;
    }
    let (request, fds) = match chan.recv_with_fds::<HelperRequest>() {
        Ok(Some(r)) => r,
        Ok(None) => return 0,
        Err(e) => {
            let _ = chan.send(&Report::Failed(super::chain(&e)));
            return 125;
        }
    };
    match request {
        HelperRequest::Create(req) => super::monitor::run(chan, *req, fds),
        HelperRequest::Exec(req) => super::exec::run(chan, *req, fds),
    }
}

fn thread_count() -> Option<usize> {
    Some(std::fs::read_dir("/proc/self/task").ok()?.count())
}
