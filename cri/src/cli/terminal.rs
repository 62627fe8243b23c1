//! A process on a terminal of the container's own, joined to the caller's terminal
//! (raw while it runs, restored after, also on error): `minipod ctr exec -it`, and
//! `minipod run` of a bundle with `process.terminal`. A resize of the caller's
//! terminal is passed on to the process's as it happens.

use std::os::fd::{AsFd, BorrowedFd, IntoRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, Ordering};

use minipod_runtime::pod::ContainerRecord;
use minipod_runtime::{ExecOptions, ExitStatus, Pods};
use nix::sys::termios::{self, SetArg, Termios};

/// Puts the caller's terminal back as it was when dropped.
struct Raw {
    saved: Termios,
}

impl Raw {
    fn enter(fd: BorrowedFd<'_>) -> anyhow::Result<Self> {
        let saved = termios::tcgetattr(fd).map_err(|e| anyhow::anyhow!("reading the terminal's settings: {e}"))?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(fd, SetArg::TCSANOW, &raw).map_err(|e| anyhow::anyhow!("making the terminal raw: {e}"))?;
        Ok(Self { saved })
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, &self.saved);
    }
}

/// Copies `from` to `to` until either side ends.
fn copy(from: BorrowedFd<'_>, to: BorrowedFd<'_>) {
    let mut buf = [0u8; 16 << 10];
    loop {
        match nix::unistd::read(from, &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let mut rest = &buf[..n];
                while !rest.is_empty() {
                    match nix::unistd::write(to, rest) {
                        Ok(w) => rest = &rest[w..],
                        Err(nix::errno::Errno::EINTR) => {}
                        Err(_) => return,
                    }
                }
            }
        }
    }
}

/// The write end of the pipe [`on_window_change`] wakes the resize relay through; set
/// once, and never closed while this process lives (a handler may run at any time).
static WINDOW_CHANGED: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_window_change(_: libc::c_int) {
    let fd = WINDOW_CHANGED.load(Ordering::Relaxed);
    if fd >= 0 {
        // write(2) on a nonblocking pipe is async-signal-safe; a full pipe already
        // holds a wake-up, so a lost byte loses nothing.
        // SAFETY: one byte from a static buffer.
        let _ = unsafe { libc::write(fd, [0u8].as_ptr().cast(), 1) };
    }
}

/// On every SIGWINCH, our terminal's size is set on `master`: the kernel then sends the
/// process its own SIGWINCH, as on a terminal of its own. The relay, like the typed
/// input, ends with this command.
fn relay_resizes(master: OwnedFd) -> anyhow::Result<()> {
    if WINDOW_CHANGED.load(Ordering::Relaxed) >= 0 {
        anyhow::bail!("a terminal is already joined in this process");
    }
    let (wake, woken) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| anyhow::anyhow!("a pipe for window changes: {e}"))?;
    // Only the handler's end must never block.
    nix::fcntl::fcntl(&woken, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK))
        .map_err(|e| anyhow::anyhow!("a pipe for window changes: {e}"))?;
    WINDOW_CHANGED.store(woken.into_raw_fd(), Ordering::Relaxed);
    std::thread::spawn(move || {
        let mut byte = [0u8; 64];
        loop {
            match nix::unistd::read(wake.as_fd(), &mut byte) {
                Ok(0) => return,
                Ok(_) => {
                    if let Some((cols, rows)) = crate::winsize::get(std::io::stdin().as_fd()) {
                        let _ = crate::winsize::set(master.as_fd(), cols, rows);
                    }
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(_) => return,
            }
        }
    });
    super::signals::catch(libc::SIGWINCH, on_window_change).map_err(|e| anyhow::anyhow!("catching window changes: {e}"))?;
    // A resize between the size the process started with and now is not lost.
    on_window_change(libc::SIGWINCH);
    Ok(())
}

/// Our terminal joined to a process's: raw (when ours is a terminal), what is typed
/// copied into its master, its output copied out on a thread of its own.
pub struct Joined {
    raw: Option<Raw>,
    output: Option<std::thread::JoinHandle<()>>,
}

impl Joined {
    pub fn start(master: &OwnedFd) -> anyhow::Result<Self> {
        let stdin = std::io::stdin();
        let raw = if nix::unistd::isatty(stdin.as_fd()).unwrap_or(false) { Some(Raw::enter(stdin.as_fd())?) } else { None };
        // Typed input, on a thread of its own: it waits on our stdin, which outlives
        // the process, so it is left to end with this command.
        let input = master.try_clone()?;
        std::thread::spawn(move || copy(std::io::stdin().as_fd(), input.as_fd()));
        // Output until the terminal's last holder in the container closes it.
        let out = master.try_clone()?;
        let output = std::thread::spawn(move || copy(out.as_fd(), std::io::stdout().as_fd()));
        if raw.is_some() {
            relay_resizes(master.try_clone()?)?;
        }
        Ok(Self { raw, output: Some(output) })
    }

    /// Waits for the output's end (every holder of the terminal closed it) and
    /// restores our terminal.
    pub fn finish(&mut self) {
        if let Some(output) = self.output.take() {
            let _ = output.join();
        }
        self.raw = None;
    }
}

/// Runs `args` in `c` on a terminal joined to ours; its exit status.
pub fn exec(pods: &Pods, c: &ContainerRecord, args: Vec<String>, timeout: Option<std::time::Duration>) -> anyhow::Result<ExitStatus> {
    let stdin = std::io::stdin();
    let ours = stdin.as_fd();
    if !nix::unistd::isatty(ours).unwrap_or(false) {
        anyhow::bail!("-t needs a terminal on stdin: run it from one, or leave -t out (-i alone streams stdin)");
    }
    let (tx, rx) = tokio::sync::oneshot::channel::<OwnedFd>();
    let opts = ExecOptions { args, tty: true, terminal: Some(tx), window: crate::winsize::get(ours), timeout, ..Default::default() };
    std::thread::scope(|scope| {
        let running = scope.spawn(|| pods.exec_attached(c, opts));
        let Ok(master) = rx.blocking_recv() else {
            // No terminal came: the process did not start, and its result says why.
            return running.join().map_err(|_| anyhow::anyhow!("the exec's thread panicked"))?.map_err(Into::into);
        };
        Joined::start(&master)?.finish();
        running.join().map_err(|_| anyhow::anyhow!("the exec's thread panicked"))?.map_err(Into::into)
    })
}
