//! The process that holds a pod's shared PID namespace as its PID 1, for pods whose
//! containers share one (the only pods that get a process of their own).
//!
//! A PID namespace lives only as long as its first process: were a container's
//! workload PID 1, its exit would kill every other container of the pod. This one
//! only reaps: children that other containers' processes leave behind are re-parented
//! to it and must not stay zombies.

use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};

use super::channel::Channel;
use super::messages::Report;

/// Name shown as the namespace's PID 1 (`/proc/1/comm` in the pod's containers).
pub const COMM: &str = "minipod-pid1";

pub(super) fn run(chan: Channel) -> i32 {
    // Detached like a monitor: the caller reaps this helper at once, and the holder
    // outlives the caller.
    // SAFETY: the helper is single-threaded (checked by the hook).
    match unsafe { fork() } {
        Ok(ForkResult::Parent { .. }) => return 0,
        Ok(ForkResult::Child) => {}
        Err(e) => {
            let _ = chan.send(&Report::Failed(format!("forking the pod's PID 1 holder: {e}")));
            return 1;
        }
    }
    let _ = nix::unistd::setsid();
    let _ = std::env::set_current_dir("/");
    if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWPID) {
        let _ = chan.send(&Report::Failed(format!("creating the pod's PID namespace: {e}")));
        return 1;
    }
    // SAFETY: still single-threaded.
    match unsafe { fork() } {
        Ok(ForkResult::Parent { child }) => {
            let _ = chan.send(&Report::Started { pid: child.as_raw() });
            0
        }
        Ok(ForkResult::Child) => {
            drop(chan);
            reap_forever()
        }
        Err(e) => {
            let _ = chan.send(&Report::Failed(format!("starting the pod's PID 1: {e}")));
            1
        }
    }
}

fn reap_forever() -> ! {
    // SAFETY: prctl with a NUL-terminated name; close_range closes only descriptors.
    unsafe {
        let name = std::ffi::CString::new(COMM).unwrap_or_default();
        libc::prctl(libc::PR_SET_NAME, name.as_ptr(), 0, 0, 0);
        libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
    }
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    let _ = mask.thread_block();
    loop {
        let _ = mask.wait();
        while let Ok(status) = waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            if status == WaitStatus::StillAlive {
                break;
            }
        }
    }
}
