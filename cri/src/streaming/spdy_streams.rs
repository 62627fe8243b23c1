//! The stdio of an exec or attach over SPDY: the client opens an error stream and one
//! stream per stdio it asked for (stdout and stderr are one on a terminal, plus a
//! resize stream), each named by its `streamtype` header.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::client::{refuse_resize, Client, FromClient, Output, Size, Status, StreamError, Want};
use super::http::Request;
use super::spdy::{self, Frame, Reader, SpdyError, Writer};
use super::STREAM_CREATION_TIMEOUT;

/// The streams of one session, by the ids the client gave them.
#[derive(Default, Debug, Clone, Copy)]
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

/// Switches to SPDY with one of `protocols` and waits for the streams of `want`.
pub(super) async fn accept(conn: TcpStream, req: Request, protocols: &[&'static str], want: Want) -> Result<Option<Client>, StreamError> {
    let Some((mut reader, writer)) = spdy::upgrade(conn, req, protocols).await else { return Ok(None) };
    let opened = open_streams(&mut reader, &writer, want).await;
    let Ok(Some((streams, early_stdin))) = opened else {
        writer.shutdown().await;
        return opened.map(|_| None).map_err(StreamError::from);
    };
    let (to_session, input) = mpsc::channel::<FromClient>(16);
    if !early_stdin.is_empty() {
        // The channel is new and has room for one.
        let _ = to_session.try_send(FromClient::Stdin(early_stdin));
    }
    let output = Output::Spdy { writer: writer.clone(), streams };
    let reader = tokio::spawn(read_client(reader, writer, output.clone(), want.tty, to_session));
    Ok(Some(Client { output, input, reader }))
}

/// Accepts the client's streams until every one the session needs is open; None when
/// it did not open them in time (the error stream, if open, says so). What the client
/// wrote to stdin meanwhile comes along.
async fn open_streams<R, W>(reader: &mut Reader<R>, writer: &Writer<W>, want: Want) -> Result<Option<(Streams, Vec<u8>)>, SpdyError>
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
                writer.data(e, Status::failure(&why, "Timeout").json().as_bytes()).await?;
                writer.fin(e).await?;
            }
            return Ok(None);
        }
    }
    Ok(Some((streams, early_stdin)))
}

/// Routes the client's frames until it goes away.
async fn read_client<R, W>(mut reader: Reader<R>, writer: Arc<Writer<W>>, output: Output, tty: bool, to_session: mpsc::Sender<FromClient>)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let Output::Spdy { streams, .. } = &output else { return };
    let (stdin, resize) = (streams.stdin, streams.resize);
    let mut sizes = Vec::new();
    let mut stdin_open = stdin.is_some();
    loop {
        match reader.next().await {
            Ok(Some(Frame::Data { stream, fin, data })) if Some(stream) == stdin => {
                if stdin_open && !data.is_empty() {
                    // A full channel holds the client back: TCP carries the pressure.
                    let _ = to_session.send(FromClient::Stdin(data)).await;
                }
                if fin && stdin_open {
                    stdin_open = false;
                    let _ = to_session.send(FromClient::StdinClosed).await;
                }
            }
            Ok(Some(Frame::Data { stream, data, .. })) if Some(stream) == resize => {
                if !tty {
                    return refuse_resize(&output).await;
                }
                sizes.extend(data);
                for size in take_sizes(&mut sizes) {
                    let _ = to_session.send(FromClient::Resize(size)).await;
                }
            }
            Ok(Some(Frame::Ping(id))) => {
                if writer.pong(id).await.is_err() {
                    return;
                }
            }
            Ok(Some(Frame::SynStream { stream, .. })) => {
                // Streams come before the session starts; a late one is refused.
                let _ = writer.reset(stream, spdy::RST_REFUSED_STREAM).await;
            }
            Ok(Some(Frame::RstStream { stream })) if Some(stream) == stdin => {
                if stdin_open {
                    stdin_open = false;
                    let _ = to_session.send(FromClient::StdinClosed).await;
                }
            }
            Ok(Some(Frame::GoAway)) | Ok(None) | Err(_) => return,
            Ok(Some(_)) => {}
        }
    }
}

/// The whole sizes at the front of `buf` (JSON objects, one after another), taken out
/// of it; a size cut in two waits for its end.
pub(super) fn take_sizes(buf: &mut Vec<u8>) -> Vec<Size> {
    let mut it = serde_json::Deserializer::from_slice(buf).into_iter::<Size>();
    let mut sizes = Vec::new();
    let mut used = 0;
    while let Some(Ok(size)) = it.next() {
        used = it.byte_offset();
        sizes.push(size);
    }
    buf.drain(..used);
    sizes
}
