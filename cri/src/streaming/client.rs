//! One streaming client, whatever it came over: SPDY streams or WebSocket channels
//! carry the same stdio (stdin, stdout, stderr, an error channel that ends with the
//! session's status, and a terminal's resizes), so exec and attach are written once,
//! against [`Client`].

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::http::Request;
use super::spdy::{SpdyError, Writer as SpdyWriter};
use super::spdy_streams::{self, Streams};
use super::websocket;

/// How long the client gets to read the status and hang up.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Why a session ended early.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error(transparent)]
    Spdy(#[from] SpdyError),
    #[error("the WebSocket connection failed")]
    WebSocket(#[from] tokio_tungstenite::tungstenite::Error),
    #[error("the session's worker failed")]
    Worker(#[source] tokio::task::JoinError),
}

/// Which stdio a session asked for.
#[derive(Clone, Copy)]
pub(super) struct Want {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// A terminal size, as the resize stream carries it.
#[derive(serde::Deserialize, Debug)]
#[serde(rename_all = "PascalCase")]
pub(super) struct Size {
    pub width: u16,
    pub height: u16,
}

/// What the client sends once the streams are open.
#[derive(Debug)]
pub(super) enum FromClient {
    Stdin(Vec<u8>),
    StdinClosed,
    Resize(Size),
}

/// Where the session writes.
#[derive(Clone, Copy, Debug)]
pub(super) enum Channel {
    Stdout,
    Stderr,
    Error,
}

/// The way back to the client.
#[derive(Clone)]
pub(super) enum Output {
    Spdy { writer: Arc<SpdyWriter<tokio::net::tcp::OwnedWriteHalf>>, streams: Streams },
    WebSocket(Arc<websocket::Writer>),
}

impl Output {
    /// Sends `data` on `channel`; a channel the client did not open takes nothing.
    pub(super) async fn send(&self, channel: Channel, data: &[u8]) -> Result<(), StreamError> {
        match self {
            Output::Spdy { writer, streams } => {
                let id = match channel {
                    Channel::Stdout => streams.stdout,
                    Channel::Stderr => streams.stderr,
                    Channel::Error => streams.error,
                };
                match id {
                    Some(id) => Ok(writer.data(id, data).await?),
                    None => Ok(()),
                }
            }
            Output::WebSocket(w) => Ok(w.send(channel, data).await?),
        }
    }

    /// Sends the session's status on the error channel, as the protocol writes it.
    pub(super) async fn status(&self, status: &Status) -> Result<(), StreamError> {
        match self {
            Output::Spdy { .. } => self.send(Channel::Error, status.json().as_bytes()).await,
            Output::WebSocket(w) => Ok(w.status(status).await?),
        }
    }

    /// Ends our side of every channel (a WebSocket closes): the client reads the
    /// status to its end.
    async fn end(&self) -> Result<(), StreamError> {
        match self {
            Output::Spdy { writer, streams } => {
                for id in [streams.stdout, streams.stderr, streams.error].into_iter().flatten() {
                    writer.fin(id).await?;
                }
            }
            Output::WebSocket(w) => w.close().await?,
        }
        Ok(())
    }

    /// Ends our side of every channel, and gives the client time to read and hang up.
    pub(super) async fn finish(&self, mut client: tokio::task::JoinHandle<()>) -> Result<(), StreamError> {
        self.end().await?;
        // A client that never hangs up must not keep its reader (and connection) forever.
        if tokio::time::timeout(CLOSE_GRACE, &mut client).await.is_err() {
            client.abort();
        }
        Ok(())
    }

    /// Closes the connection.
    pub(super) async fn shutdown(&self) {
        match self {
            Output::Spdy { writer, .. } => writer.shutdown().await,
            Output::WebSocket(w) => w.shutdown().await,
        }
    }
}

/// Ends a session whose client resized it without a terminal.
pub(super) async fn refuse_resize(output: &Output) {
    refuse(output, "a resize of a session without a terminal: only a session with a tty (-t) has a size to change").await
}

/// Ends a session whose client sent what it may not: the client is told `why` on the
/// error channel; the reader that calls this then returns, and with the client gone
/// the session ends (an exec's process is killed).
pub(super) async fn refuse(output: &Output, why: &str) {
    let _ = output.status(&Status::failure(why, "BadRequest")).await;
    let _ = output.end().await;
}

/// A client whose channels are open.
pub(super) struct Client {
    pub output: Output,
    /// Stdin and resizes, in order.
    pub input: mpsc::Receiver<FromClient>,
    /// Reads the client; its end means the client is gone.
    pub reader: tokio::task::JoinHandle<()>,
}

/// Serves an exec or attach (`what`, for the log): accepts its client for `want` and
/// runs `session` with it; the connection is closed after, however it ended.
pub(super) async fn serve<F, S>(conn: TcpStream, req: Request, want: Want, what: &str, session: F)
where
    F: FnOnce(Client) -> S,
    S: std::future::Future<Output = Result<(), StreamError>>,
{
    let client = match accept(conn, req, &STDIO_PROTOCOLS, want).await {
        Ok(Some(c)) => c,
        Ok(None) => return,
        Err(e) => return tracing::info!("{what}: {}", minipod_runtime::error_chain(&e)),
    };
    let output = client.output.clone();
    if let Err(e) = session(client).await {
        tracing::info!("{what}: {}", minipod_runtime::error_chain(&e));
    }
    output.shutdown().await;
}

/// Upgrades `conn` to SPDY/3.1 or to a WebSocket (whichever the client asked for),
/// with one of `protocols`, and waits until the client's channels for `want` are open.
/// None when the client was refused or left (it was told why, where it could be).
pub(super) async fn accept(conn: TcpStream, req: Request, protocols: &Protocols, want: Want) -> Result<Option<Client>, StreamError> {
    if req.is_websocket() {
        return Ok(websocket::accept(conn, req, protocols.websocket, want).await);
    }
    spdy_streams::accept(conn, req, protocols.spdy, want).await
}

/// The stream protocols a kind of session speaks, by transport.
pub(super) struct Protocols {
    pub spdy: &'static [&'static str],
    pub websocket: &'static [&'static str],
}

/// The stdio protocol of exec and attach: `v4.channel.k8s.io` over SPDY (client-go's
/// remotecommand); over WebSocket `v5` (which adds closing stdin), `v4` and the
/// kubelet's older dialects.
pub(super) const STDIO_PROTOCOLS: Protocols = Protocols { spdy: &["v4.channel.k8s.io"], websocket: websocket::CHANNEL_PROTOCOLS };

/// A session's outcome, a Kubernetes `Status` object, which the error channel carries.
pub(super) struct Status(serde_json::Value);

impl Status {
    pub(super) fn success() -> Self {
        Status(serde_json::json!({ "metadata": {}, "status": "Success" }))
    }

    pub(super) fn failure(message: &str, reason: &str) -> Self {
        Status(serde_json::json!({ "metadata": {}, "status": "Failure", "message": message, "reason": reason }))
    }

    /// A process that exited with `code` (not 0); clients (client-go) read the code
    /// from the cause.
    pub(super) fn exit_code(message: &str, code: i32) -> Self {
        Status(serde_json::json!({
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": "NonZeroExitCode",
            "details": { "causes": [{ "reason": "ExitCode", "message": code.to_string() }] },
        }))
    }

    pub(super) fn json(&self) -> String {
        self.0.to_string()
    }

    /// What protocols before v4 carry instead: a failure's message, nothing for a
    /// success.
    pub(super) fn message(&self) -> Option<&str> {
        match self.0["status"].as_str() {
            Some("Success") => None,
            _ => Some(self.0["message"].as_str().unwrap_or("the session failed")),
        }
    }
}
