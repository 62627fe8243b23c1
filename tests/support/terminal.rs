//! A command on a pseudo-terminal that the test holds the master of, as a user at a
//! terminal emulator would: the command's session has it as controlling terminal, so
//! a resize of the window sends it SIGWINCH; what it prints is waited for with a
//! deadline, never a sleep.

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

pub struct Terminal {
    master: std::fs::File,
    child: Child,
    /// Everything printed so far; `expect` looks past `mark`.
    seen: String,
    mark: usize,
}

impl Terminal {
    /// Starts `cmd` as the leader of a session on a new terminal of `cols` x `rows`.
    pub fn spawn(cmd: &mut Command, cols: u16, rows: u16) -> Self {
        let ws = nix::pty::Winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
        let pty = nix::pty::openpty(Some(&ws), None).expect("openpty");
        let slave = pty.slave;
        cmd.stdin(slave.try_clone().unwrap()).stdout(slave.try_clone().unwrap()).stderr(slave);
        // SAFETY: setsid and an ioctl on stdin only, between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                nix::unistd::setsid().map_err(std::io::Error::from)?;
                if libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawning on a terminal");
        // Our copies of the slave are gone with `cmd`'s, so the master reads EIO once
        // the command's side is all closed.
        Self { master: std::fs::File::from(pty.master), child, seen: String::new(), mark: 0 }
    }

    pub fn type_in(&mut self, text: &str) {
        self.master.write_all(text.as_bytes()).expect("typing");
    }

    /// Sets the window's size: the terminal's foreground process gets SIGWINCH.
    pub fn resize(&self, cols: u16, rows: u16) {
        let ws = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: TIOCSWINSZ reads a winsize from the pointer, which lives across the call.
        assert_eq!(unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &ws) }, 0, "resizing the terminal");
    }

    /// Reads until `needle` shows up after the last thing expected; false when
    /// `within` passes first or the command's side closes.
    pub fn wait_for(&mut self, needle: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if let Some(at) = self.seen[self.mark..].find(needle) {
                self.mark += at + needle.len();
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !self.read_some(left) {
                return false;
            }
        }
    }

    /// Like `wait_for`, failing the test with what was printed.
    pub fn expect(&mut self, needle: &str, within: Duration) {
        assert!(self.wait_for(needle, within), "{needle:?} not printed within {within:?}; the terminal shows {:?}", self.seen);
    }

    /// What was printed so far.
    pub fn shown(&self) -> &str {
        &self.seen
    }

    /// Waits for the command's exit (within `within`, else kills it and fails) and
    /// reads the rest of what it printed; its exit code.
    pub fn exit_code(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for the command") {
                while self.read_some(Duration::from_millis(200)) {}
                return status.code();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "the command did not exit within {within:?}; the terminal shows {:?}", self.seen);
            self.read_some(left.min(Duration::from_millis(50)));
        }
    }

    /// One read, waiting at most `within`; false at the end of output or on timeout.
    fn read_some(&mut self, within: Duration) -> bool {
        let mut fds = [nix::poll::PollFd::new(self.master.as_fd(), nix::poll::PollFlags::POLLIN)];
        let ms = nix::poll::PollTimeout::try_from(within.as_millis().min(60_000) as i32).unwrap_or(nix::poll::PollTimeout::MAX);
        match nix::poll::poll(&mut fds, ms) {
            Ok(n) if n > 0 => {}
            _ => return false,
        }
        let mut buf = [0u8; 4096];
        match self.master.read(&mut buf) {
            Ok(n) if n > 0 => {
                self.seen.push_str(&String::from_utf8_lossy(&buf[..n]));
                true
            }
            // EIO: every holder of the command's side closed it.
            _ => false,
        }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The shell loop a resize test runs on its terminal: prints its size per line
/// typed, exits 6 on `q`.
pub const SIZE_PER_LINE: &str = "while read l; do stty size; [ \"$l\" = q ] && exit 6; done";

/// Drives [`SIZE_PER_LINE`] started on a 77 x 22 terminal: its first size is ours,
/// and after we resize to 99 x 33 a line typed within a few seconds shows the new one.
pub fn check_resizes_reach(term: &mut Terminal) {
    term.type_in("\n");
    term.expect("22 77", Duration::from_secs(30));
    term.resize(99, 33);
    // The resize travels as a signal, the typed line as input: not ordered, so the
    // line is typed again until the new size shows.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        term.type_in("\n");
        if term.wait_for("33 99", Duration::from_millis(500)) {
            break;
        }
        assert!(Instant::now() < deadline, "the resize never reached the process; the terminal shows {:?}", term.shown());
    }
    term.type_in("q\n");
    assert_eq!(term.exit_code(Duration::from_secs(30)), Some(6), "{:?}", term.shown());
}
