//! `exec`: a helper (a direct child of the caller) joins a running container's cgroup
//! and namespaces, forks the new process inside them, and reports its exit.

use std::os::fd::{AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sched::CloneFlags;
use nix::sys::wait::waitpid;
use nix::unistd::ForkResult;

use super::chain;
use super::channel::Channel;
use super::init::{self, InitError};
use super::messages::{ExecRequest, Report};
use crate::capabilities;
use crate::cgroups::Cgroup;
use crate::state::{self, ExitStatus};

/// Namespaces joined, in order: mnt last, since setns into it changes root and cwd.
const NAMESPACES: &[(&str, CloneFlags)] = &[
    ("cgroup", CloneFlags::CLONE_NEWCGROUP),
    ("ipc", CloneFlags::CLONE_NEWIPC),
    ("uts", CloneFlags::CLONE_NEWUTS),
    ("net", CloneFlags::CLONE_NEWNET),
    ("pid", CloneFlags::CLONE_NEWPID),
    ("mnt", CloneFlags::CLONE_NEWNS),
];

pub(super) fn run(chan: Channel, req: &ExecRequest, stdio: Vec<OwnedFd>) -> i32 {
    match join_and_fork(&chan, req, stdio) {
        Ok(Some(status)) => {
            let _ = chan.send(&Report::Exited(status));
            0
        }
        Ok(None) => {
            let _ = chan.send(&Report::TimedOut);
            0
        }
        Err(e) => {
            let _ = chan.send(&Report::Failed(chain(&e)));
            1
        }
    }
}

/// The process's exit status, or None when it ran past the timeout and was killed.
fn join_and_fork(chan: &Channel, req: &ExecRequest, stdio: Vec<OwnedFd>) -> Result<Option<ExitStatus>, InitError> {
    let sys = |what: &str| {
        let what = what.to_string();
        move |source| InitError::Sys { what, source }
    };
    // A non-dumpable process's /proc/PID/exe cannot be opened by the container, which
    // closes the runc CVE-2019-5736 path of overwriting this binary from inside.
    // SAFETY: prctl with integer arguments.
    Errno::result(unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) }).map_err(sys("making the exec helper non-dumpable"))?;
    let mut files = Vec::new();
    for (name, flag) in NAMESPACES {
        let theirs = format!("/proc/{}/ns/{name}", req.pid);
        if std::fs::read_link(&theirs).ok() == std::fs::read_link(format!("/proc/self/ns/{name}")).ok() {
            continue;
        }
        let f = std::fs::File::open(&theirs).map_err(|e| InitError::Sys {
            what: format!("opening {theirs}"),
            source: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
        })?;
        files.push((name, *flag, f));
    }
    // The PID may have been reused between the caller's check and our opens.
    if state::process_start_time(req.pid) != Some(req.pid_start_time) {
        return Err(InitError::Sys { what: "the container's workload exited".into(), source: Errno::ESRCH });
    }
    Cgroup::from_paths(req.cgroup_paths.clone()).join_self()?;
    for (name, flag, f) in &files {
        nix::sched::setns(f, *flag).map_err(|source| InitError::Join { typ: name.to_string(), source })?;
    }
    drop(files);
    let (report, child_end) = Channel::pair()?;
    // SAFETY: this helper is single-threaded.
    match unsafe { nix::unistd::fork() }.map_err(sys("forking the exec'd process"))? {
        ForkResult::Child => {
            drop(report);
            let code = match child(chan, &req.process, req.seccomp.as_ref(), stdio, req.own_group) {
                Ok(prepared) => {
                    let err = init::exec(&prepared);
                    let _ = child_end.send(&Report::Failed(err));
                    127
                }
                Err(e) => {
                    let _ = child_end.send(&Report::Failed(chain(&e)));
                    126
                }
            };
            // SAFETY: leave the forked copy without unwinding.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child: pid } => {
            drop(child_end);
            drop(stdio);
            if req.own_group {
                // Not yet reaped (only this process waits for it), so the PID is its.
                let _ = chan.send(&Report::Started { pid: pid.as_raw() });
            }
            let started = std::time::Instant::now();
            let failure = report.recv::<Report>().ok().flatten();
            let mut timed_out = false;
            if let Some(limit) = req.timeout {
                timed_out = match wait_exit(pid, limit.saturating_sub(started.elapsed())) {
                    Ok(exited) => !exited,
                    Err(e) => {
                        // Unwatchable: do not leave it running past a limit we cannot enforce.
                        let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
                        let _ = waitpid(pid, None);
                        return Err(e);
                    }
                };
                if timed_out {
                    // The whole group: a shell's children would keep running otherwise.
                    let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
                    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                }
            }
            let status = loop {
                match waitpid(pid, None) {
                    Err(Errno::EINTR) => continue,
                    Err(e) => return Err(InitError::Sys { what: "waiting for the exec'd process".into(), source: e }),
                    Ok(s) => {
                        if let Some(st) = ExitStatus::from_wait(s) {
                            break st;
                        }
                    }
                }
            };
            match failure {
                Some(Report::Failed(msg)) => Err(InitError::Sys { what: msg, source: Errno::ENOEXEC }),
                _ if timed_out => Ok(None),
                _ => Ok(Some(status)),
            }
        }
    }
}

/// Waits up to `limit` for child `pid` to exit, without reaping it: true if it did.
fn wait_exit(pid: nix::unistd::Pid, limit: std::time::Duration) -> Result<bool, InitError> {
    // SAFETY: pidfd_open with a PID of our own unreaped child, which cannot be reused.
    let fd = Errno::result(unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) })
        .map_err(|source| InitError::Sys { what: "opening a pidfd for the exec'd process".into(), source })?;
    // SAFETY: a fresh descriptor we own.
    let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
    let deadline = std::time::Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let ms = nix::poll::PollTimeout::try_from(left.as_millis().min(i32::MAX as u128) as i32).unwrap_or(nix::poll::PollTimeout::MAX);
        let mut fds = [nix::poll::PollFd::new(std::os::fd::AsFd::as_fd(&fd), nix::poll::PollFlags::POLLIN)];
        match nix::poll::poll(&mut fds, ms) {
            Ok(0) => return Ok(false),
            Ok(_) => return Ok(true),
            Err(Errno::EINTR) => continue,
            Err(source) => return Err(InitError::Sys { what: "waiting for the exec'd process".into(), source }),
        }
    }
}

fn child(
    chan: &Channel,
    process: &oci_spec::runtime::Process,
    seccomp: Option<&crate::seccomp::Program>,
    stdio: Vec<OwnedFd>,
    own_group: bool,
) -> Result<init::Prepared, InitError> {
    if process.terminal() == Some(true) {
        let master = super::terminal::take(process)?;
        chan.send_with_fds(&Report::Terminal, &[master.as_raw_fd()])
            .map_err(|e| InitError::Sys { what: format!("handing over the terminal: {e}"), source: Errno::EPIPE })?;
    } else if own_group {
        // Its own process group, so that a kill reaches what it started too. Only
        // then: a group of its own would be a background job on the caller's terminal.
        nix::unistd::setpgid(nix::unistd::Pid::from_raw(0), nix::unistd::Pid::from_raw(0))
            .map_err(|source| InitError::Sys { what: "making the exec'd process a group leader".into(), source })?;
    }
    if process.terminal() != Some(true) {
        super::stdio::set_stdio(stdio)?;
    }
    // The container's limits, not the caller's.
    init::set_rlimits(process, &|_| {})?;
    if let Some(mask) = process.user().umask() {
        // SAFETY: umask cannot fail.
        unsafe { libc::umask(mask as libc::mode_t) };
    }
    let mut prepared = init::prepare_exec(process)?;
    let filter = seccomp.cloned();
    let nnp = process.no_new_privileges() == Some(true);
    if let (Some(f), false) = (&filter, nnp) {
        crate::seccomp::install(f)?;
    }
    let cwd = process.cwd().clone();
    let early = nix::unistd::chdir(&cwd);
    capabilities::apply(process, &|_| {})?;
    if let Err(e) = early {
        nix::unistd::chdir(&cwd).map_err(|_| InitError::Cwd(cwd.clone(), e))?;
    }
    if nnp {
        // SAFETY: prctl with integer arguments.
        Errno::result(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })
            .map_err(|source| InitError::Sys { what: "setting no_new_privs".into(), source })?;
        prepared.seccomp = filter;
    }
    init::reset_signals();
    Ok(prepared)
}
