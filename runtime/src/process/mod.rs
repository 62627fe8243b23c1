//! Processes minipod starts: a helper re-exec'd from the current binary that becomes a
//! container's monitor or runs an `exec`, the container's init, and the typed channel
//! they talk over.

pub(crate) mod channel;
pub(crate) mod exec;
pub(crate) mod hook;
pub(crate) mod init;
pub(crate) mod messages;
pub(crate) mod monitor;

use std::os::fd::{OwnedFd, RawFd};
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

/// Starts a helper and sends it `request` with `fds`; returns it and our channel end.
///
/// No `pre_exec` here: with one, std falls back from posix_spawn to fork, whose cost
/// grows with the caller's heap. The channel is the helper's stdin instead.
pub(crate) fn spawn_helper(
    request: &HelperRequest,
    fds: &[RawFd],
) -> Result<(Child, Channel), SpawnError> {
    hook::keep();
    let (ours, theirs) = Channel::pair()?;
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg(hook::FAILSAFE_ARG)
        .env(hook::MARKER, "1")
        .stdin(Stdio::from(OwnedFd::from(theirs.into_fd())))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = cmd.spawn().map_err(SpawnError::Exec)?;
    // Dropping the Command drops its copy of the helper's end, so EOF can reach us.
    drop(cmd);
    ours.send_with_fds(request, fds)?;
    Ok((child, ours))
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
