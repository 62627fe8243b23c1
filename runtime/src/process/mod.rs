//! Processes minipod starts: a helper re-exec'd from the current binary that becomes a
//! container's monitor or runs an `exec`, the container's init, and the typed channel
//! they talk over.

pub(crate) mod channel;
pub(crate) mod exec;
pub(crate) mod hook;
pub(crate) mod init;
pub(crate) mod messages;
pub(crate) mod monitor;
pub(crate) mod pod_init;
pub(crate) mod stdio;
pub(crate) mod terminal;

use std::os::fd::RawFd;
use std::process::{Child, Command, Stdio};

use channel::{Channel, ChannelError};
use messages::HelperRequest;

/// Starting a helper failed.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("starting the minipod helper from /proc/self/exe")]
    Exec(#[source] std::io::Error),
    #[error("handing the request to the minipod helper")]
    Channel(#[from] ChannelError),
}

/// A running helper process, to be reaped once it has reported.
pub(crate) enum Helper {
    Spawned(Child),
    Forked(nix::unistd::Pid),
}

impl Helper {
    /// Reaps the helper (a monitor's helper exits as soon as the monitor is forked off).
    pub(crate) fn reap(self) {
        match self {
            Helper::Spawned(mut child) => drop(child.wait()),
            Helper::Forked(pid) => drop(nix::sys::wait::waitpid(pid, None)),
        }
    }
}

/// Starts the PID 1 of a new PID namespace (see [`pod_init`]); returns its host PID
/// and start time.
pub(crate) fn spawn_pod_init() -> Result<(i32, u64), String> {
    let (helper, chan) = spawn_helper(&HelperRequest::PodInit, &[]).map_err(|e| chain(&e))?;
    let outcome = match chan.recv::<messages::Report>() {
        Ok(Some(messages::Report::Started { pid })) => Ok(pid),
        Ok(Some(messages::Report::Failed(m))) => Err(m),
        Ok(_) => Err("the minipod helper exited without starting the pod's PID 1".to_string()),
        Err(e) => Err(chain(&e)),
    };
    helper.reap();
    let pid = outcome?;
    let start = crate::state::process_start_time(pid).ok_or_else(|| format!("the pod's PID 1 (pid {pid}) exited at once"))?;
    Ok((pid, start))
}

/// Starts a helper and sends it `request` with `fds`; returns it and our channel end.
///
/// A single-threaded caller (the `minipod` command) is itself a freshly exec'd
/// process, so it forks the helper directly. Any other caller re-executes
/// `/proc/self/exe`, where the pre-main hook takes over. No `pre_exec` on that path:
/// with one, std falls back from posix_spawn to fork, whose cost grows with the
/// caller's heap; the channel is the helper's stdin instead.
pub(crate) fn spawn_helper(request: &HelperRequest, fds: &[RawFd]) -> Result<(Helper, Channel), SpawnError> {
    hook::keep();
    let (ours, theirs) = Channel::pair()?;
    let helper = if hook::single_threaded() {
        // SAFETY: fork in a process that has just been seen to have one thread.
        match unsafe { nix::unistd::fork() }.map_err(|e| SpawnError::Exec(e.into()))? {
            nix::unistd::ForkResult::Child => {
                drop(ours);
                let fd = std::os::fd::IntoRawFd::into_raw_fd(theirs.into_fd());
                let code = hook::run_forked_helper(fd, request, fds);
                // SAFETY: leave the forked copy without running the caller's exit path.
                unsafe { libc::_exit(code) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                drop(theirs);
                return Ok((Helper::Forked(child), ours));
            }
        }
    } else {
        let mut cmd = Command::new("/proc/self/exe");
        cmd.arg(hook::FAILSAFE_ARG).env(hook::MARKER, "1").stdin(Stdio::from(theirs.into_fd())).stdout(Stdio::null()).stderr(Stdio::null());
        let child = cmd.spawn().map_err(SpawnError::Exec)?;
        // Dropping the Command drops its copy of the helper's end, so EOF can reach us.
        drop(cmd);
        Helper::Spawned(child)
    };
    ours.send_with_fds(request, fds)?;
    Ok((helper, ours))
}

/// An error and its causes on one line: `a: b: c`.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
