//! An exec over SPDY, stream protocol `v4.channel.k8s.io` (what client-go's
//! remotecommand speaks): the client opens an error stream and one stream per stdio it
//! asked for (stdout and stderr are one on a terminal, plus a resize stream), the
//! process runs in the container with those as its stdio, and its exit status comes
//! back as a Kubernetes `Status` on the error stream.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use minipod_runtime::{ExecOptions, ExitStatus, Pods, Stdio};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use super::http::Request;
use super::pty::Pty;
use super::spdy::{self, Frame, Reader, SpdyError, Writer};
use super::{ExecSession, STREAM_CREATION_TIMEOUT};

const PROTOCOLS: &[&str] = &["v4.channel.k8s.io"];
/// How long output may still come once the process exited: what it started in the
/// background may hold its stdout open for good.
const OUTPUT_GRACE: Duration = Duration::from_secs(1);
/// How long the client gets to read the status and hang up.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// How long a terminal exec waits for the client's first window size.
const FIRST_SIZE_WAIT: Duration = Duration::from_secs(1);

/// Which stdio a session asked for.
#[derive(Clone, Copy)]
pub(super) struct Want {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// The streams of one session, by the ids the client gave them.
#[derive(Default, Debug)]
pub(super) struct Streams {
    pub error: Option<u32>,
    pub stdin: Option<u32>,
    pub stdout: Option<u32>,
    pub stderr: Option<u32>,
    pub resize: Option<u32>,
}

impl Streams {
    fn complete(&self, s: &Want) -> bool {
        self.error.is_some()
            && (!s.stdin || self.stdin.is_some())
            && (!s.stdout || self.stdout.is_some())
            && (!s.stderr || s.tty || self.stderr.is_some())
            && (!s.tty || self.resize.is_some())
    }
}

/// A terminal size, as the resize stream carries it.
#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct Size {
    width: u16,
    height: u16,
}

/// What the client sends once the streams are open.
pub(super) enum FromClient {
    Stdin(Vec<u8>),
    StdinClosed,
    Resize(Size),
}

pub(super) async fn serve(conn: TcpStream, req: Request, s: ExecSession, pods: Arc<Pods>) {
    let Some((reader, writer)) = spdy::upgrade(conn, req, PROTOCOLS).await else { return };
    let what = format!("exec {:?} in {}", s.cmd, s.container.id);
    if let Err(e) = run(reader, writer.clone(), s, pods).await {
        tracing::info!("{what}: {}", minipod_runtime::error_chain(&e));
    }
    writer.shutdown().await;
}

/// Accepts the client's streams until every one the session needs is open; None when
/// it did not open them in time (the error stream, if open, says so). What the client
/// wrote to stdin meanwhile comes along.
pub(super) async fn open_streams<R, W>(
    reader: &mut Reader<R>,
    writer: &Writer<W>,
    want: Want,
) -> Result<Option<(Streams, Vec<u8>)>, SpdyError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut streams = Streams::default();
    let mut early_stdin = Vec::new();
    let opened = tokio::time::timeout(STREAM_CREATION_TIMEOUT, async {
        while !streams.complete(&want) {
            match reader.next().await? {
                Some(Frame::SynStream { stream, headers, .. }) => {
                    writer.reply(stream).await?;
                    let slot = match spdy::header(&headers, "streamtype") {
                        Some("error") => &mut streams.error,
                        Some("stdin") => &mut streams.stdin,
                        Some("stdout") => &mut streams.stdout,
                        Some("stderr") => &mut streams.stderr,
                        Some("resize") => &mut streams.resize,
                        other => {
                            return Err(SpdyError::Protocol(format!("a stream of type {other:?} (not one of an exec or attach)")));
                        }
                    };
                    *slot = Some(stream);
                }
                Some(Frame::Data { stream, data, .. }) if Some(stream) == streams.stdin => early_stdin.extend(data),
                Some(Frame::Ping(id)) => writer.pong(id).await?,
                Some(Frame::RstStream { .. } | Frame::GoAway) | None => {
                    return Err(SpdyError::Protocol("the client left before opening its streams".into()))
                }
                Some(_) => {}
            }
        }
        Ok(())
    })
    .await;
    match opened {
        Ok(r) => r?,
        Err(_) => {
            if let Some(e) = streams.error {
                let why = format!("the client did not open its streams within {} s", STREAM_CREATION_TIMEOUT.as_secs());
                writer.data(e, failure(&why, "Timeout").as_bytes()).await?;
                writer.fin(e).await?;
            }
            return Ok(None);
        }
    }
    Ok(Some((streams, early_stdin)))
}

/// Starts reading the client's frames in a task of its own (its end means the client
/// is gone); stdin and resizes come out of the receiver.
pub(super) fn listen<R, W>(
    reader: Reader<R>,
    writer: Arc<Writer<W>>,
    streams: &Streams,
    early_stdin: Vec<u8>,
) -> (tokio::task::JoinHandle<()>, mpsc::Receiver<FromClient>)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (to_session, from_client) = mpsc::channel::<FromClient>(16);
    if !early_stdin.is_empty() {
        // The channel is new and has room for one.
        let _ = to_session.try_send(FromClient::Stdin(early_stdin));
    }
    let task = tokio::spawn(read_client(reader, writer, streams.stdin, streams.resize, to_session));
    (task, from_client)
}

async fn run<R, W>(mut reader: Reader<R>, writer: Arc<Writer<W>>, s: ExecSession, pods: Arc<Pods>) -> Result<(), SpdyError>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let want = Want { stdin: s.stdin, stdout: s.stdout, stderr: s.stderr, tty: s.tty };
    let Some((streams, early_stdin)) = open_streams(&mut reader, &writer, want).await? else { return Ok(()) };
    let error_stream = streams.error.unwrap_or_default();

    let (client, mut from_client) = listen(reader, writer.clone(), &streams, early_stdin);
    let (child_stdio, ours, terminal) = match Io::new(&s).and_then(Io::split) {
        Ok(io) => io,
        Err(e) => {
            writer.data(error_stream, failure(&format!("setting up the exec's stdio: {e}"), "InternalError").as_bytes()).await?;
            return finish(&writer, &streams, client).await;
        }
    };
    // A terminal's first size comes right after the streams (client-go sends it at
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
    let exec = tokio::task::spawn_blocking(move || pods.exec_attached(&container, opts));

    let pumps = ours.pump(&writer, &streams, pending, &mut from_client);
    tokio::pin!(exec);
    tokio::pin!(pumps);
    let mut client = client;
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
        Ok(Ok(ExitStatus::Code(0))) => success(),
        Ok(Ok(st)) => {
            let code = st.shell_code();
            let message = format!("command terminated with non-zero exit code: error executing command {:?}, exit code {code}", s.cmd);
            serde_json::json!({
                "metadata": {},
                "status": "Failure",
                "message": message,
                "reason": "NonZeroExitCode",
                "details": { "causes": [{ "reason": "ExitCode", "message": code.to_string() }] },
            })
            .to_string()
        }
        Ok(Err(e)) => failure(&minipod_runtime::error_chain(&e), "InternalError"),
        Err(e) => failure(&format!("the exec's worker failed: {e}"), "InternalError"),
    };
    writer.data(error_stream, status.as_bytes()).await?;
    finish(&writer, &streams, client).await
}

/// Ends our side of every stream, and gives the client time to read and hang up.
pub(super) async fn finish<W: AsyncWrite + Unpin>(
    writer: &Writer<W>,
    streams: &Streams,
    mut client: tokio::task::JoinHandle<()>,
) -> Result<(), SpdyError> {
    for id in [streams.stdout, streams.stderr, streams.error].into_iter().flatten() {
        writer.fin(id).await?;
    }
    // A client that never hangs up must not keep its reader (and connection) forever.
    if tokio::time::timeout(CLOSE_GRACE, &mut client).await.is_err() {
        client.abort();
    }
    Ok(())
}

fn success() -> String {
    serde_json::json!({ "metadata": {}, "status": "Success" }).to_string()
}

pub(super) fn failure(message: &str, reason: &str) -> String {
    serde_json::json!({ "metadata": {}, "status": "Failure", "message": message, "reason": reason }).to_string()
}

/// Routes the client's frames until it goes away.
async fn read_client<R, W>(
    mut reader: Reader<R>,
    writer: Arc<Writer<W>>,
    stdin: Option<u32>,
    resize: Option<u32>,
    to_exec: mpsc::Sender<FromClient>,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut sizes = Vec::new();
    let mut stdin_open = stdin.is_some();
    loop {
        match reader.next().await {
            Ok(Some(Frame::Data { stream, fin, data })) if Some(stream) == stdin => {
                if stdin_open && !data.is_empty() {
                    // A full channel holds the client back: TCP carries the pressure.
                    let _ = to_exec.send(FromClient::Stdin(data)).await;
                }
                if fin && stdin_open {
                    stdin_open = false;
                    let _ = to_exec.send(FromClient::StdinClosed).await;
                }
            }
            Ok(Some(Frame::Data { stream, data, .. })) if Some(stream) == resize => {
                sizes.extend(data);
                let mut it = serde_json::Deserializer::from_slice(&sizes).into_iter::<Size>();
                let mut used = 0;
                while let Some(Ok(size)) = it.next() {
                    used = it.byte_offset();
                    let _ = to_exec.send(FromClient::Resize(size)).await;
                }
                sizes.drain(..used);
            }
            Ok(Some(Frame::Ping(id))) => {
                if writer.pong(id).await.is_err() {
                    return;
                }
            }
            Ok(Some(Frame::SynStream { stream, .. })) => {
                // Streams come before the exec starts; a late one is refused.
                let _ = writer.reset(stream, spdy::RST_REFUSED_STREAM).await;
            }
            Ok(Some(Frame::RstStream { stream })) if Some(stream) == stdin => {
                if stdin_open {
                    stdin_open = false;
                    let _ = to_exec.send(FromClient::StdinClosed).await;
                }
            }
            Ok(Some(Frame::GoAway)) | Ok(None) | Err(_) => return,
            Ok(Some(_)) => {}
        }
    }
}

/// The exec's stdio: pipes, or a terminal the container opens.
enum Io {
    Pipes { stdin: Option<(OwnedFd, OwnedFd)>, stdout: Option<(OwnedFd, OwnedFd)>, stderr: Option<(OwnedFd, OwnedFd)> },
    Tty,
}

/// Our ends of the session's stdio; a terminal's master comes once the process runs.
pub(super) enum Ours {
    Pipes { stdin: Option<OwnedFd>, stdout: Option<OwnedFd>, stderr: Option<OwnedFd> },
    Tty(oneshot::Receiver<OwnedFd>),
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
    pub(super) async fn pump<W: AsyncWrite + Unpin>(
        self,
        writer: &Writer<W>,
        streams: &Streams,
        pending: Vec<FromClient>,
        from_client: &mut mpsc::Receiver<FromClient>,
    ) {
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
                let out = copy_out(stdout, streams.stdout, writer);
                let err = copy_out(stderr, streams.stderr, writer);
                tokio::select! {
                    _ = input => {}
                    // With no output, the session's end is someone else's to see.
                    _ = async { tokio::join!(out, err) }, if outputs => {}
                }
            }
            Ours::Tty(master) => {
                // No terminal: the process never started, and the exec's result says why.
                let Ok(Ok(pty)) = master.await.map(Pty::from_master) else { return };
                let input = async {
                    let mut pending = pending.into_iter();
                    while let Some(m) = next(&mut pending, from_client).await {
                        match m {
                            FromClient::Stdin(data) => {
                                if pty.write_all(&data).await.is_err() {
                                    break;
                                }
                            }
                            FromClient::StdinClosed => {}
                            FromClient::Resize(size) => pty.resize(size.width, size.height),
                        }
                    }
                    std::future::pending::<()>().await
                };
                let output = async {
                    let Some(id) = streams.stdout else { return };
                    let mut buf = vec![0u8; spdy::DATA_CHUNK];
                    while let Ok(n) = pty.read(&mut buf).await {
                        if n == 0 || writer.data(id, &buf[..n]).await.is_err() {
                            break;
                        }
                    }
                };
                tokio::select! {
                    _ = input => {}
                    _ = output => {}
                }
            }
        }
    }
}

/// What the client sent: first what was held back, then what comes.
async fn next(pending: &mut std::vec::IntoIter<FromClient>, rx: &mut mpsc::Receiver<FromClient>) -> Option<FromClient> {
    match pending.next() {
        Some(m) => Some(m),
        None => rx.recv().await,
    }
}

/// Copies one of the process's outputs to its stream until EOF.
async fn copy_out<W: AsyncWrite + Unpin>(fd: Option<OwnedFd>, stream: Option<u32>, writer: &Writer<W>) {
    let (Some(fd), Some(id)) = (fd, stream) else { return };
    let Ok(mut r) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) else { return };
    let mut buf = vec![0u8; spdy::DATA_CHUNK];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if writer.data(id, &buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
}
