//! Attaching to a running container's own stdio, which its monitor holds: output
//! copied to the caller from now on, and the stdin pipe handed over.

use super::*;

/// What [`Runtime::attach`] is to connect.
#[derive(Debug, Clone, Copy, Default)]
pub struct AttachOptions {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

/// The ends of an attach: write the workload's stdin, read its output from now on
/// (EOF once it exits). A reader too slow for the output misses some of it; the
/// workload never waits for one.
#[derive(Debug, Default)]
pub struct Attached {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

impl Runtime {
    /// Connects to a running container's stdio, which its monitor holds (a container
    /// created with [`Stdio::Log`], and [`CreateOptions::stdin`] for its stdin).
    pub fn attach(&self, id: &ContainerId, opts: AttachOptions) -> Result<Attached> {
        let st = self.state(id)?;
        let status = st.live_status();
        if status != Status::Running {
            return Err(ContainerError::WrongState { id: id.clone(), op: "attach to", status, hint: "" });
        }
        let chan = monitor::connect(&self.dir(id)).ok_or_else(|| ContainerError::WrongState {
            id: id.clone(),
            op: "attach to",
            status,
            hint: ": its monitor is gone",
        })?;
        let pipe = || {
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| ContainerError::Io {
                what: "creating a pipe to attach",
                path: self.dir(id),
                source: e.into(),
            })
        };
        let mut out = Attached::default();
        let mut theirs = Vec::new();
        if opts.stdout {
            let (r, w) = pipe()?;
            out.stdout = Some(r);
            theirs.push(w);
        }
        if opts.stderr {
            let (r, w) = pipe()?;
            out.stderr = Some(r);
            theirs.push(w);
        }
        let raw: Vec<RawFd> = theirs.iter().map(|f| f.as_raw_fd()).collect();
        chan.send_with_fds(&MonitorRequest::Attach { stdin: opts.stdin, stdout: opts.stdout, stderr: opts.stderr }, &raw)?;
        drop(theirs);
        loop {
            match chan.recv_with_fds::<Report>()? {
                Some((Report::Attached, fds)) => {
                    out.stdin = fds.into_iter().next();
                    if opts.stdin && out.stdin.is_none() {
                        return Err(ContainerError::Exec { id: id.clone(), message: "the monitor handed over no stdin".into() });
                    }
                    return Ok(out);
                }
                Some((Report::Failed(message), _)) => return Err(ContainerError::Exec { id: id.clone(), message }),
                Some(_) => continue,
                None => return Err(ContainerError::HelperVanished),
            }
        }
    }
}
