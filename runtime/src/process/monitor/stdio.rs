//! The workload's stdio as its monitor holds it: the output pipes copied into the CRI
//! log and to attached clients, and the stdin pipe kept open for them.

use std::os::fd::OwnedFd;
use std::path::Path;

use nix::errno::Errno;

use super::MonitorError;
use crate::logs::{LineSplitter, LogWriter, Stream};

/// The workload's stdout and stderr pipes and the CRI log they are copied into, the
/// attached clients they are also copied to, and the stdin pipe held for them.
pub(super) struct Log {
    pub(super) writer: LogWriter,
    /// Read ends (non-blocking) with their line assembly; removed at EOF.
    pub(super) streams: Vec<(OwnedFd, LineSplitter)>,
    /// The write end of the workload's stdin: held open so that it does not see EOF
    /// before someone attaches; None once handed to a stdin_once attach.
    stdin: Option<OwnedFd>,
    stdin_once: bool,
    /// Attached clients' pipes (non-blocking), by the stream they take.
    sinks: Vec<(Stream, OwnedFd)>,
}

impl Log {
    /// Pipes for the workload: its stdio (null, stdout, stderr) and our side.
    pub(super) fn open(path: &Path, stdin: Option<bool>) -> Result<(Self, Vec<OwnedFd>), MonitorError> {
        let writer = LogWriter::open(path).map_err(|source| MonitorError::Log { path: path.display().to_string(), source })?;
        let (input, held) = match stdin {
            Some(_) => {
                let (r, w) =
                    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| MonitorError::Setup("creating the stdin pipe", e))?;
                (r, Some(w))
            }
            None => {
                let null = std::fs::File::options()
                    .read(true)
                    .open("/dev/null")
                    .map_err(|e| MonitorError::Setup("opening /dev/null", Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))))?;
                (OwnedFd::from(null), None)
            }
        };
        let mut stdio = vec![input];
        let mut streams = Vec::new();
        for stream in [Stream::Stdout, Stream::Stderr] {
            let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
                .map_err(|e| MonitorError::Setup("creating a log pipe", e))?;
            // Only our end is non-blocking: a workload writing into a full pipe waits.
            nix::fcntl::fcntl(&w, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()))
                .map_err(|e| MonitorError::Setup("setting up a log pipe", e))?;
            stdio.push(w);
            streams.push((r, LineSplitter::new(stream)));
        }
        Ok((Self { writer, streams, stdin: held, stdin_once: stdin == Some(true), sinks: Vec::new() }, stdio))
    }

    /// The workload's terminal replaces its pipes: what it shows is its output (as
    /// stdout, the CRI's stream for a terminal), and typing into it is its stdin.
    pub(super) fn take_terminal(&mut self, master: OwnedFd) -> Result<(), MonitorError> {
        nix::fcntl::fcntl(&master, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK))
            .map_err(|e| MonitorError::Setup("setting up the terminal", e))?;
        if self.stdin.is_some() {
            self.stdin =
                Some(master.try_clone().map_err(|e| {
                    MonitorError::Setup("duplicating the terminal", Errno::from_raw(e.raw_os_error().unwrap_or(libc::EMFILE)))
                })?);
        }
        self.streams = vec![(master, LineSplitter::new(Stream::Stdout))];
        Ok(())
    }

    /// Adds an attached client's output pipes and hands over the stdin it asks for:
    /// a copy, or for stdin_once the only write end (its closing is the EOF).
    pub(super) fn attach(&mut self, want_stdin: bool, outputs: Vec<(Stream, OwnedFd)>) -> Result<Option<OwnedFd>, String> {
        let stdin = if want_stdin {
            let held = self
                .stdin
                .as_ref()
                .ok_or("the container has no stdin to attach to (create it with stdin, or it was stdin_once and taken)")?;
            Some(if self.stdin_once {
                self.stdin.take().ok_or("stdin taken")?
            } else {
                held.try_clone().map_err(|e| format!("duplicating the stdin pipe: {e}"))?
            })
        } else {
            None
        };
        for (stream, fd) in outputs {
            // A client that cannot keep up misses output; the workload never waits on it.
            let _ = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK));
            self.sinks.push((stream, fd));
        }
        Ok(stdin)
    }

    /// Copies what the pipes in `ready` hold into the log, at most `budget` bytes a
    /// pipe, so that a flood of output cannot keep the monitor from its other clients;
    /// drops a pipe at EOF. Returns without blocking.
    pub(super) fn pump(&mut self, ready: &[bool], budget: usize) {
        let mut buf = [0u8; 16 * 1024];
        let mut i = 0;
        let mut ready = ready.iter();
        while i < self.streams.len() {
            if !ready.next().copied().unwrap_or(true) {
                i += 1;
                continue;
            }
            let (fd, splitter) = &mut self.streams[i];
            let mut taken = 0;
            let eof = loop {
                if taken >= budget {
                    break false;
                }
                match nix::unistd::read(&*fd, &mut buf) {
                    Ok(0) => break true,
                    Ok(n) => {
                        taken += n;
                        // A record that cannot be written is lost, not retried: the
                        // workload must never block on a full disk.
                        let _ = splitter.feed(&buf[..n], &mut self.writer);
                        let stream = splitter.stream();
                        self.sinks.retain(|(s, sink)| {
                            *s != stream || !matches!(nix::unistd::write(sink, &buf[..n]), Err(e) if e != Errno::EAGAIN)
                        });
                    }
                    Err(Errno::EINTR) => continue,
                    Err(Errno::EAGAIN) => break false,
                    Err(_) => break true,
                }
            };
            if eof {
                let _ = splitter.finish(&mut self.writer);
                self.streams.remove(i);
            } else {
                i += 1;
            }
        }
    }

    /// After the workload exited: take what is left. A process it left behind may
    /// still hold a pipe open, so this reads what is there and does not wait for EOF.
    pub(super) fn drain(&mut self) {
        self.pump(&[], 4 << 20);
        for (_, splitter) in &mut self.streams {
            let _ = splitter.finish(&mut self.writer);
        }
    }
}
