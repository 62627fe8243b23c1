//! Running a command in a container and collecting what it prints.

use super::*;

/// What an exec printed and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl ExecOutput {
    /// Whether the process exited with 0.
    pub fn success(&self) -> bool {
        self.status == ExitStatus::Code(0)
    }

    /// Stdout as text (lossy).
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Stderr as text (lossy).
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| io_err("creating a pipe for", Path::new("exec"))(io::Error::from(e)))
}

/// Reads both pipes until EOF; once `done` is set (the process exited), gives what
/// is left half a second, since a process it started in the background may hold
/// the pipes open forever.
fn collect(out: OwnedFd, err: OwnedFd, done: &std::sync::atomic::AtomicBool) -> (Vec<u8>, Vec<u8>) {
    use nix::poll::{PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let mut bufs = (Vec::new(), Vec::new());
    let mut open = [true, true];
    let mut deadline: Option<std::time::Instant> = None;
    let mut chunk = [0u8; 8192];
    while open.iter().any(|o| *o) {
        if deadline.is_none() && done.load(std::sync::atomic::Ordering::Acquire) {
            deadline = Some(std::time::Instant::now() + Duration::from_millis(500));
        }
        if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
            break;
        }
        let mut fds = vec![];
        let mut which = vec![];
        for (i, fd) in [&out, &err].into_iter().enumerate() {
            if open[i] {
                fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
                which.push(i);
            }
        }
        match nix::poll::poll(&mut fds, PollTimeout::from(100u8)) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => break,
            Ok(_) => {}
        }
        let ready: Vec<bool> = fds.iter().map(|f| f.revents().is_some_and(|r| !r.is_empty())).collect();
        drop(fds);
        for (k, i) in which.into_iter().enumerate() {
            if !ready[k] {
                continue;
            }
            let fd = if i == 0 { &out } else { &err };
            match nix::unistd::read(fd, &mut chunk) {
                Ok(0) | Err(_) => open[i] = false,
                Ok(n) => {
                    let buf = if i == 0 { &mut bufs.0 } else { &mut bufs.1 };
                    buf.extend_from_slice(&chunk[..n]);
                }
            }
        }
    }
    bufs
}

impl Pods {
    /// Connects to a running container's own stdio (its stdin only if it was made
    /// with [`ContainerConfig::stdin`]).
    pub fn attach(&self, c: &ContainerRecord, opts: crate::AttachOptions) -> Result<crate::Attached> {
        Ok(self.oci.attach(&c.id, opts)?)
    }

    /// Runs a process in a running container on the stdio of `opts` and waits for it:
    /// the way to stream an exec's input and output as it runs.
    pub fn exec_attached(&self, c: &ContainerRecord, opts: ExecOptions) -> Result<ExitStatus> {
        Ok(self.oci.exec(&c.id, opts)?)
    }

    /// Runs `args` in a running container and collects its output; killed after `timeout`.
    pub fn exec(&self, c: &ContainerRecord, args: Vec<String>, timeout: Option<Duration>) -> Result<ExecOutput> {
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let null = std::fs::File::open("/dev/null").map_err(io_err("opening", Path::new("/dev/null")))?;
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let done = done.clone();
            std::thread::spawn(move || collect(out_r, err_r, &done))
        };
        let opts = ExecOptions { args, stdio: Stdio::Fds(null.into(), out_w, err_w), timeout, ..Default::default() };
        let status = self.oci.exec(&c.id, opts);
        done.store(true, std::sync::atomic::Ordering::Release);
        let (stdout, stderr) = reader.join().unwrap_or_default();
        Ok(ExecOutput { status: status?, stdout, stderr })
    }
}
