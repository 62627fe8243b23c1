//! An exec: the process runs in the container with the client's channels as its
//! stdio (stdout and stderr are one on a terminal, which the client resizes), and its
//! exit status comes back as a Kubernetes `Status` on the error channel. The channels
//! come over SPDY or a WebSocket ([`super::client`]).

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use minipod_runtime::{ExecOptions, ExitStatus, Pods, Stdio};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use super::client::{self, Channel, Client, FromClient, Output, Status, StreamError, Want};
use super::http::Request;
use super::pty::Pty;
use super::spdy::DATA_CHUNK;
use super::ExecSession;

/// How long output may still come once the process exited: what it started in the
/// background may hold its stdout open for good.
const OUTPUT_GRACE: Duration = Duration::from_secs(1);
/// How long a terminal exec waits for the client's first window size.
const FIRST_SIZE_WAIT: Duration = Duration::from_secs(1);

pub(super) async fn serve(conn: TcpStream, req: Request, s: ExecSession, pods: Arc<Pods>) {
    let what = format!("exec {:?} in {}", s.cmd, s.container.id);
    let want = Want { stdin: s.stdin, stdout: s.stdout, stderr: s.stderr, tty: s.tty };
    client::serve(conn, req, want, &what, |client| run(client, s, pods)).await
}

async fn run(client: Client, s: ExecSession, pods: Arc<Pods>) -> Result<(), StreamError> {
    let Client { output, input: mut from_client, reader: mut client } = client;
    let (child_stdio, ours, terminal) = match Io::new(&s).and_then(Io::split) {
        Ok(io) => io,
        Err(e) => {
            output.status(&Status::failure(&format!("setting up the exec's stdio: {e}"), "InternalError")).await?;
            return output.finish(client).await;
        }
    };
    // A terminal's first size comes right after the channels (client-go sends it at
    // once): the process starts with it rather than with a resize a moment later.
    let mut pending = Vec::new();
    let mut window = None;
    if s.tty {
        let deadline = tokio::time::Instant::now() + FIRST_SIZE_WAIT;
        while let Ok(Some(m)) = tokio::time::timeout_at(deadline, from_client.recv()).await {
            if let FromClient::Resize(size) = &m {
                window = Some((size.width, size.height));
                break;
            }
            pending.push(m);
        }
    }
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let opts = ExecOptions {
        args: s.cmd.clone(),
        stdio: child_stdio,
        tty: s.tty,
        terminal,
        window,
        started: Some(started_tx),
        ..Default::default()
    };
    let container = s.container.clone();
    // A client that leaves while the exec waits for its turn starts nothing.
    let turn = tokio::select! {
        turn = crate::server::STREAM_EXEC.take() => turn,
        _ = &mut client => return Ok(()),
    };
    let exec = tokio::task::spawn_blocking(move || {
        let _turn = turn;
        pods.exec_attached(&container, opts)
    });

    let pumps = ours.pump(&output, pending, &mut from_client);
    tokio::pin!(exec);
    tokio::pin!(pumps);
    let mut pumps_done = false;
    let outcome = loop {
        tokio::select! {
            r = &mut exec => break r,
            _ = &mut pumps, if !pumps_done => pumps_done = true,
            _ = &mut client => {
                // Gone: what it started goes too (its whole process group). It may not
                // have reported its PID yet; an exec that fails before it starts drops
                // the sender, which ends the wait.
                let pid = tokio::task::spawn_blocking(move || started_rx.recv()).await;
                if let Ok(Ok(pid)) = pid {
                    let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
                }
                let _ = (&mut exec).await;
                return Ok(());
            }
        }
    };
    if !pumps_done {
        let _ = tokio::time::timeout(OUTPUT_GRACE, &mut pumps).await;
    }
    let status = match outcome {
        Ok(Ok(ExitStatus::Code(0))) => Status::success(),
        Ok(Ok(st)) => {
            let code = st.shell_code();
            let message = format!("command terminated with non-zero exit code: error executing command {:?}, exit code {code}", s.cmd);
            Status::exit_code(&message, code)
        }
        Ok(Err(e)) => Status::failure(&minipod_runtime::error_chain(&e), "InternalError"),
        Err(e) => Status::failure(&format!("the exec's worker failed: {e}"), "InternalError"),
    };
    output.status(&status).await?;
    output.finish(client).await
}

/// The exec's stdio: pipes, or a terminal the container opens.
enum Io {
    Pipes { stdin: Option<(OwnedFd, OwnedFd)>, stdout: Option<(OwnedFd, OwnedFd)>, stderr: Option<(OwnedFd, OwnedFd)> },
    Tty,
}

/// Our ends of the session's stdio; a terminal's master comes once the process runs.
pub(super) enum Ours {
    Pipes {
        stdin: Option<OwnedFd>,
        stdout: Option<OwnedFd>,
        stderr: Option<OwnedFd>,
    },
    Tty(oneshot::Receiver<OwnedFd>),
    /// An attach to a container's terminal: typing and resizes go into its master (when
    /// the attach has stdin), its output comes from the monitor's copy.
    Attached {
        master: Option<OwnedFd>,
        stdout: Option<OwnedFd>,
    },
}

impl Io {
    fn new(s: &ExecSession) -> std::io::Result<Self> {
        if s.tty {
            return Ok(Io::Tty);
        }
        let pipe = |want: bool| -> std::io::Result<Option<(OwnedFd, OwnedFd)>> {
            if !want {
                return Ok(None);
            }
            let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(std::io::Error::from)?;
            // 1 MiB instead of 64 KiB: a fast writer is read in large pieces, and frames
            // of those cost little. Past the unprivileged limit only: best effort.
            let _ = nix::fcntl::fcntl(&r, nix::fcntl::FcntlArg::F_SETPIPE_SZ(1 << 20));
            Ok(Some((r, w)))
        };
        Ok(Io::Pipes { stdin: pipe(s.stdin)?, stdout: pipe(s.stdout)?, stderr: pipe(s.stderr)? })
    }

    /// The process's stdio, ours, and where a terminal's master is to go.
    fn split(self) -> std::io::Result<(Stdio, Ours, Option<oneshot::Sender<OwnedFd>>)> {
        let null = || std::fs::File::open("/dev/null").map(OwnedFd::from);
        Ok(match self {
            Io::Pipes { stdin, stdout, stderr } => {
                let (in_r, in_w) = stdin.map_or((None, None), |(r, w)| (Some(r), Some(w)));
                let (out_r, out_w) = stdout.map_or((None, None), |(r, w)| (Some(r), Some(w)));
                let (err_r, err_w) = stderr.map_or((None, None), |(r, w)| (Some(r), Some(w)));
                let or_null = |fd: Option<OwnedFd>| fd.map_or_else(null, Ok);
                let stdio = Stdio::Fds(or_null(in_r)?, or_null(out_w)?, or_null(err_w)?);
                (stdio, Ours::Pipes { stdin: in_w, stdout: out_r, stderr: err_r }, None)
            }
            Io::Tty => {
                let (tx, rx) = oneshot::channel();
                (Stdio::Null, Ours::Tty(rx), Some(tx))
            }
        })
    }
}

impl Ours {
    /// Copies between the process and the client until the process's output ends.
    pub(super) async fn pump(self, output: &Output, pending: Vec<FromClient>, from_client: &mut mpsc::Receiver<FromClient>) {
        match self {
            Ours::Pipes { stdin, stdout, stderr } => {
                let mut stdin = stdin.and_then(|fd| tokio::net::unix::pipe::Sender::from_owned_fd(fd).ok());
                let input = async {
                    let mut pending = pending.into_iter();
                    while let Some(m) = next(&mut pending, from_client).await {
                        match m {
                            FromClient::Stdin(data) => {
                                let ok = match stdin.as_mut() {
                                    Some(w) => w.write_all(&data).await.is_ok(),
                                    None => false,
                                };
                                if !ok {
                                    stdin = None;
                                }
                            }
                            // The process sees EOF.
                            FromClient::StdinClosed => stdin = None,
                            FromClient::Resize(_) => {}
                        }
                    }
                    // Never done by itself: output decides when the exec is over.
                    std::future::pending::<()>().await
                };
                let outputs = stdout.is_some() || stderr.is_some();
                let out = copy_out(stdout, Channel::Stdout, output);
                let err = copy_out(stderr, Channel::Stderr, output);
                tokio::select! {
                    _ = input => {}
                    // With no output, the session's end is someone else's to see.
                    _ = async { tokio::join!(out, err) }, if outputs => {}
                }
            }
            Ours::Attached { master, stdout } => {
                let pty = master.and_then(|m| Pty::from_master(m).ok());
                let input = feed_terminal(pty.as_ref(), pending, from_client);
                let outputs = stdout.is_some();
                tokio::select! {
                    _ = input => {}
                    _ = copy_out(stdout, Channel::Stdout, output), if outputs => {}
                }
            }
            Ours::Tty(master) => {
                // No terminal: the process never started, and the exec's result says why.
                let Ok(Ok(pty)) = master.await.map(Pty::from_master) else { return };
                let input = feed_terminal(Some(&pty), pending, from_client);
                // Read also when the client did not ask for it: a full terminal would
                // hold the process back.
                let out = async {
                    let mut buf = vec![0u8; DATA_CHUNK];
                    while let Ok(n) = pty.read(&mut buf).await {
                        if n == 0 || output.send(Channel::Stdout, &buf[..n]).await.is_err() {
                            break;
                        }
                    }
                };
                tokio::select! {
                    _ = input => {}
                    _ = out => {}
                }
            }
        }
    }
}

/// Types what the client sends into the terminal `pty` and passes on its resizes
/// (with no terminal, takes it all); never done by itself.
async fn feed_terminal(pty: Option<&Pty>, pending: Vec<FromClient>, from_client: &mut mpsc::Receiver<FromClient>) {
    let mut pending = pending.into_iter();
    while let Some(m) = next(&mut pending, from_client).await {
        let Some(pty) = pty else { continue };
        match m {
            FromClient::Stdin(data) => {
                if pty.write_all(&data).await.is_err() {
                    break;
                }
            }
            // A terminal has no end of input of its own.
            FromClient::StdinClosed => {}
            FromClient::Resize(size) => pty.resize(size.width, size.height),
        }
    }
    std::future::pending::<()>().await
}

/// What the client sent: first what was held back, then what comes.
async fn next(pending: &mut std::vec::IntoIter<FromClient>, rx: &mut mpsc::Receiver<FromClient>) -> Option<FromClient> {
    match pending.next() {
        Some(m) => Some(m),
        None => rx.recv().await,
    }
}

/// Copies one of the process's outputs to its channel until EOF.
async fn copy_out(fd: Option<OwnedFd>, channel: Channel, output: &Output) {
    let Some(fd) = fd else { return };
    let Ok(mut r) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) else { return };
    let mut buf = vec![0u8; DATA_CHUNK];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if output.send(channel, &buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
}
