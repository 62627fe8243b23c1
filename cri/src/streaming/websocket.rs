//! The WebSocket transport (RFC 6455), as the kubelet serves it and client-go speaks
//! it (`crictl --transport websocket`, `kubectl` since 1.30):
//!
//! - exec and attach speak the channel protocol, `v5.channel.k8s.io` or
//!   `v4.channel.k8s.io`: every binary message starts with a channel byte (0 stdin,
//!   1 stdout, 2 stderr, 3 error, 4 resize) and v5 adds `[255, channel]`, "this
//!   channel is closed", which is how a client ends its stdin. The kubelet's older
//!   dialects are spoken too: `v4.base64.channel.k8s.io` (text messages, the channel
//!   an ASCII digit and the data in base64, for clients that cannot send binary
//!   messages) and, from before v4, `channel.k8s.io` and `base64.channel.k8s.io`,
//!   whose error channel carries only a failure's message, not a `Status` object;
//! - port forwarding tunnels SPDY (`SPDY/3.1+portforward.k8s.io`): the binary messages
//!   carry the bytes of a SPDY session, which is then served as over plain SPDY.

use std::sync::Arc;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Mutex};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use base64::engine::{GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;

use super::client::{refuse, refuse_resize, Channel, Client, FromClient, Output, Status, Want};
use super::http::{self, Request};
use super::spdy::DATA_CHUNK;
use super::spdy_streams::take_sizes;

pub(super) const V5_CHANNEL: &str = "v5.channel.k8s.io";
pub(super) const V4_CHANNEL: &str = "v4.channel.k8s.io";
pub(super) const V4_BASE64_CHANNEL: &str = "v4.base64.channel.k8s.io";
pub(super) const V1_CHANNEL: &str = "channel.k8s.io";
pub(super) const V1_BASE64_CHANNEL: &str = "base64.channel.k8s.io";
/// The channel protocols of exec and attach.
pub(super) const CHANNEL_PROTOCOLS: &[&str] = &[V5_CHANNEL, V4_CHANNEL, V4_BASE64_CHANNEL, V1_CHANNEL, V1_BASE64_CHANNEL];
/// client-go's port forwarding over WebSocket: SPDY inside, and the prefix says so.
pub(super) const PORTFORWARD_TUNNEL: &str = "SPDY/3.1+portforward.k8s.io";

/// The largest message (and frame) we take: a SPDY frame of ours with room to spare,
/// far above the 32 KiB pieces client-go writes.
const MAX_MESSAGE: usize = 2 << 20;
/// What the tunnel holds between the WebSocket and the SPDY session in each direction.
const TUNNEL_BUFFER: usize = 1 << 20;

/// Channel bytes of the channel protocol.
const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
/// v5: `[CLOSE, channel]` closes `channel`.
const CLOSE: u8 = 255;

type Ws = WebSocketStream<TcpStream>;

/// Go's `base64.StdEncoding`, which the kubelet decodes with: padded, and taking
/// stray bits at the end.
const BASE64: GeneralPurpose =
    GeneralPurpose::new(&base64::alphabet::STANDARD, GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true));

/// How a channel protocol writes its messages.
#[derive(Clone, Copy, Debug)]
struct Dialect {
    /// Text messages: the channel as an ASCII digit, then the data in base64.
    base64: bool,
    /// v5: `[CLOSE, channel]` ends a channel.
    closes: bool,
    /// v4 and later: the error channel carries a `Status` object; before, only a
    /// failure's message.
    status_object: bool,
}

impl Dialect {
    fn of(protocol: &str) -> Self {
        Dialect {
            base64: protocol == V4_BASE64_CHANNEL || protocol == V1_BASE64_CHANNEL,
            closes: protocol == V5_CHANNEL,
            status_object: protocol != V1_CHANNEL && protocol != V1_BASE64_CHANNEL,
        }
    }

    fn message(self, channel: u8, data: &[u8]) -> Message {
        if self.base64 {
            let mut text = String::with_capacity(1 + data.len().div_ceil(3) * 4);
            text.push(char::from(b'0' + channel));
            BASE64.encode_string(data, &mut text);
            return Message::text(text);
        }
        let mut message = Vec::with_capacity(1 + data.len());
        message.push(channel);
        message.extend_from_slice(data);
        Message::binary(message)
    }

    /// A client's message as its channel and its payload as sent.
    fn split(self, message: &[u8]) -> Option<(u8, &[u8])> {
        let (&channel, payload) = message.split_first()?;
        Some((if self.base64 { channel.wrapping_sub(b'0') } else { channel }, payload))
    }

    /// The bytes a payload carries; Err when a base64 one does not decode. Only the
    /// channels the session reads are decoded (as the kubelet does).
    fn data(self, channel: u8, payload: &[u8]) -> Result<Vec<u8>, String> {
        if !self.base64 {
            return Ok(payload.to_vec());
        }
        BASE64.decode(payload).map_err(|e| format!("a message on channel {channel} is not base64, as the protocol has it: {e}"))
    }
}

/// Completes the WebSocket handshake with one of `ours` (the first the client offers);
/// None when refused (the client was told why) or the client left.
async fn upgrade(mut conn: TcpStream, req: Request, ours: &[&'static str]) -> Option<(Ws, &'static str)> {
    let Some(key) = req.websocket_key.as_deref() else {
        http::refuse(&mut conn, 400, "a WebSocket upgrade needs a Sec-WebSocket-Key header").await;
        return None;
    };
    if req.websocket_version.as_deref() != Some("13") {
        let why = format!("WebSocket version {:?} is not served: minipod speaks version 13 (RFC 6455)", req.websocket_version);
        http::refuse(&mut conn, 400, &why).await;
        return None;
    }
    // A client that offers no protocol speaks the first one, binary `channel.k8s.io`,
    // as the kubelet has it; the answer then names none (RFC 6455).
    let (protocol, named) = if req.websocket_protocols.is_empty() && ours.contains(&V1_CHANNEL) {
        (V1_CHANNEL, String::new())
    } else {
        let p = http::negotiate(&mut conn, &req.websocket_protocols, ours).await?;
        (p, format!("Sec-WebSocket-Protocol: {p}\r\n"))
    };
    let reply = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n{named}\r\n",
        derive_accept_key(key.as_bytes())
    );
    conn.write_all(reply.as_bytes()).await.ok()?;
    let config = WebSocketConfig::default().max_message_size(Some(MAX_MESSAGE)).max_frame_size(Some(MAX_MESSAGE));
    Some((WebSocketStream::from_partially_read(conn, req.rest, Role::Server, Some(config)).await, protocol))
}

/// Our half of a channel-protocol connection, shared by the session's outputs.
pub(super) struct Writer {
    sink: Mutex<SplitSink<Ws, Message>>,
    /// The channels the session asked for; the others take nothing, as an unopened
    /// SPDY stream does.
    want: Want,
    dialect: Dialect,
}

impl Writer {
    /// Sends `data` on `channel`, in messages of at most [`DATA_CHUNK`] bytes; empty
    /// data is one empty message.
    pub(super) async fn send(&self, channel: Channel, data: &[u8]) -> Result<(), WsError> {
        let (id, open) = match channel {
            Channel::Stdout => (STDOUT, self.want.stdout),
            Channel::Stderr => (STDERR, self.want.stderr && !self.want.tty),
            Channel::Error => (ERROR, true),
        };
        if !open {
            return Ok(());
        }
        let mut sink = self.sink.lock().await;
        let mut chunks = data.chunks(DATA_CHUNK);
        let first = chunks.next().unwrap_or_default();
        for chunk in std::iter::once(first).chain(chunks) {
            sink.feed(self.dialect.message(id, chunk)).await?;
        }
        sink.flush().await
    }

    /// Sends the session's status on the error channel, as the dialect has it.
    pub(super) async fn status(&self, status: &Status) -> Result<(), WsError> {
        if self.dialect.status_object {
            return self.send(Channel::Error, status.json().as_bytes()).await;
        }
        match status.message() {
            Some(message) => self.send(Channel::Error, message.as_bytes()).await,
            None => Ok(()),
        }
    }

    /// Closes the connection normally: the client reads the error channel to its end,
    /// and that end is this.
    pub(super) async fn close(&self) -> Result<(), WsError> {
        let mut sink = self.sink.lock().await;
        match sink.send(normal_close()).await {
            // The client was first: nothing is left to say.
            Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => Ok(()),
            r => r,
        }
    }

    /// Ends the connection, closed or not.
    pub(super) async fn shutdown(&self) {
        let _ = self.sink.lock().await.close().await;
    }
}

fn normal_close() -> Message {
    Message::Close(Some(CloseFrame { code: CloseCode::Normal, reason: "".into() }))
}

/// Upgrades `conn` to a WebSocket speaking the channel protocol (one of `protocols`)
/// for an exec or attach that wants `want`.
pub(super) async fn accept(conn: TcpStream, req: Request, protocols: &[&'static str], want: Want) -> Option<Client> {
    let (ws, protocol) = upgrade(conn, req, protocols).await?;
    let (sink, stream) = ws.split();
    let dialect = Dialect::of(protocol);
    let writer = Arc::new(Writer { sink: Mutex::new(sink), want, dialect });
    // An empty message on the lowest channel we write tells the client that the
    // connection is established (the kubelet does the same).
    let first = if want.stdout {
        Channel::Stdout
    } else if want.stderr && !want.tty {
        Channel::Stderr
    } else {
        Channel::Error
    };
    if let Err(e) = writer.send(first, &[]).await {
        tracing::debug!("streaming over WebSocket: the client left at once: {e}");
        return None;
    }
    let (to_session, input) = mpsc::channel::<FromClient>(16);
    let output = Output::WebSocket(writer);
    let reader = tokio::spawn(read_client(stream, output.clone(), want, dialect, to_session));
    Some(Client { output, input, reader })
}

/// Routes the client's messages until it goes away. Stdin the session did not ask for
/// takes nothing; a resize of a session without a terminal ends it, and so does stdin
/// or a resize that does not decode in a base64 dialect (the client is told why).
async fn read_client(mut stream: SplitStream<Ws>, output: Output, want: Want, dialect: Dialect, to_session: mpsc::Sender<FromClient>) {
    let mut sizes = Vec::new();
    let mut stdin_open = want.stdin;
    // A close (or a ping) is answered by the next read, so the loop reads on until the
    // connection is over.
    while let Some(Ok(message)) = stream.next().await {
        let bytes = match &message {
            Message::Binary(data) => &data[..],
            Message::Text(text) => text.as_bytes(),
            _ => continue,
        };
        let Some((channel, payload)) = dialect.split(bytes) else { continue };
        match channel {
            STDIN if stdin_open && !payload.is_empty() => {
                let data = match dialect.data(channel, payload) {
                    Ok(d) => d,
                    Err(why) => return refuse(&output, &why).await,
                };
                // A full channel holds the client back: TCP carries the pressure.
                let _ = to_session.send(FromClient::Stdin(data)).await;
            }
            RESIZE if want.tty => {
                let data = match dialect.data(channel, payload) {
                    Ok(d) => d,
                    Err(why) => return refuse(&output, &why).await,
                };
                sizes.extend_from_slice(&data);
                for size in take_sizes(&mut sizes) {
                    let _ = to_session.send(FromClient::Resize(size)).await;
                }
            }
            CLOSE if dialect.closes && payload.first() == Some(&STDIN) && stdin_open => {
                stdin_open = false;
                let _ = to_session.send(FromClient::StdinClosed).await;
            }
            RESIZE => return refuse_resize(&output).await,
            _ => {}
        }
    }
}

/// Upgrades `conn` to a WebSocket that tunnels a port-forwarding SPDY session; the
/// session is served on the stream returned.
pub(super) async fn tunnel(conn: TcpStream, req: Request) -> Option<DuplexStream> {
    let (ws, _) = upgrade(conn, req, &[PORTFORWARD_TUNNEL]).await?;
    let (ours, theirs) = tokio::io::duplex(TUNNEL_BUFFER);
    tokio::spawn(carry(ws, theirs));
    Some(ours)
}

/// Carries bytes between the WebSocket and the SPDY session until either ends.
async fn carry(ws: Ws, spdy: DuplexStream) {
    let (mut sink, mut stream) = ws.split();
    let (mut from_spdy, mut to_spdy) = tokio::io::split(spdy);
    let inbound = async {
        while let Some(Ok(message)) = stream.next().await {
            if let Message::Binary(data) = message {
                if to_spdy.write_all(&data).await.is_err() {
                    break;
                }
            }
        }
        // The session sees the client's end.
        let _ = to_spdy.shutdown().await;
    };
    let outbound = async {
        let mut buf = vec![0u8; DATA_CHUNK];
        while let Ok(n @ 1..) = from_spdy.read(&mut buf).await {
            if sink.send(Message::binary(buf[..n].to_vec())).await.is_err() {
                return;
            }
        }
        // The session is over: so is the connection.
        let _ = sink.send(normal_close()).await;
    };
    tokio::select! {
        _ = inbound => {}
        _ = outbound => {}
    }
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpListener;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    use super::*;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
    }

    /// A server session for `want` and a client offering `offer` (None: no protocol
    /// header), connected over loopback; the server's side is None when it refused, and
    /// the client's comes with the protocol the answer names, if any.
    async fn handshake(offer: Option<&str>, want: Want) -> (Option<Client>, Result<(Ws, Option<String>), WsError>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let req = http::read_request(&mut conn).await.unwrap();
            accept(conn, req, CHANNEL_PROTOCOLS, want).await
        });
        let mut request = format!("ws://{addr}/exec/token").into_client_request().unwrap();
        if let Some(o) = offer {
            request.headers_mut().insert("Sec-WebSocket-Protocol", o.parse().unwrap());
        }
        let conn = TcpStream::connect(addr).await.unwrap();
        let ws = tokio_tungstenite::client_async(request, conn).await.map(|(ws, response)| {
            let named = response.headers().get("Sec-WebSocket-Protocol").map(|v| v.to_str().unwrap().to_string());
            (ws, named)
        });
        (server.await.unwrap(), ws)
    }

    /// [`handshake`] offering the one `protocol`, which the answer must name.
    async fn connect(protocol: &str, want: Want) -> (Option<Client>, Result<Ws, WsError>) {
        let (server, ws) = handshake(Some(protocol), want).await;
        let ws = ws.map(|(ws, named)| {
            assert_eq!(named.as_deref(), Some(protocol));
            ws
        });
        (server, ws)
    }

    #[test]
    fn channels_carry_the_stdio_and_v5_closes_stdin() {
        block_on(async {
            let want = Want { stdin: true, stdout: true, stderr: true, tty: false };
            let (server, ws) = connect(V5_CHANNEL, want).await;
            let (Client { output, mut input, reader }, mut ws) = (server.unwrap(), ws.unwrap());
            // The connection is announced by an empty message on the lowest output.
            assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(vec![STDOUT]));

            ws.send(Message::binary(b"\x00typed".to_vec())).await.unwrap();
            ws.send(Message::binary(vec![CLOSE, STDIN])).await.unwrap();
            // After its close, stdin takes nothing.
            ws.send(Message::binary(b"\x00late".to_vec())).await.unwrap();
            assert!(matches!(input.recv().await, Some(FromClient::Stdin(d)) if d == b"typed"));
            assert!(matches!(input.recv().await, Some(FromClient::StdinClosed)));

            output.send(Channel::Stderr, b"err").await.unwrap();
            output.status(&Status::success()).await.unwrap();
            let finished = tokio::spawn(async move { output.finish(reader).await });
            assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(b"\x02err".to_vec()));
            let status = ws.next().await.unwrap().unwrap().into_data();
            assert_eq!((status[0], &status[1..]), (ERROR, Status::success().json().as_bytes()));
            // The error channel ends with a normal close, which the client answers.
            assert!(matches!(ws.next().await.unwrap().unwrap(), Message::Close(Some(f)) if f.code == CloseCode::Normal));
            assert!(ws.next().await.is_none_or(|m| m.is_err()));
            finished.await.unwrap().unwrap();
            assert!(input.recv().await.is_none(), "nothing after the close, the late stdin neither");
        });
    }

    #[test]
    fn a_terminal_takes_resizes_and_v4_has_no_close() {
        block_on(async {
            let want = Want { stdin: true, stdout: true, stderr: false, tty: true };
            let (server, ws) = connect(V4_CHANNEL, want).await;
            let (Client { mut input, .. }, mut ws) = (server.unwrap(), ws.unwrap());
            assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(vec![STDOUT]));
            // A size cut in two messages is one resize.
            ws.send(Message::binary(b"\x04{\"Width\":1".to_vec())).await.unwrap();
            ws.send(Message::binary(b"\x0423,\"Height\":45}".to_vec())).await.unwrap();
            // v4 has no close: the bytes are not one, and stdin stays open.
            ws.send(Message::binary(vec![CLOSE, STDIN])).await.unwrap();
            ws.send(Message::binary(b"\x00still".to_vec())).await.unwrap();
            assert!(matches!(input.recv().await, Some(FromClient::Resize(s)) if (s.width, s.height) == (123, 45)));
            assert!(matches!(input.recv().await, Some(FromClient::Stdin(d)) if d == b"still"));
        });
    }

    #[test]
    fn a_resize_without_a_terminal_ends_the_session_with_an_error() {
        block_on(async {
            let want = Want { stdin: true, stdout: true, stderr: true, tty: false };
            let (server, ws) = connect(V5_CHANNEL, want).await;
            let (Client { mut input, reader, .. }, mut ws) = (server.unwrap(), ws.unwrap());
            assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(vec![STDOUT]));
            ws.send(Message::binary([&[RESIZE][..], br#"{"Width":80,"Height":24}"#].concat())).await.unwrap();
            let status = ws.next().await.unwrap().unwrap().into_data();
            assert_eq!(status[0], ERROR);
            let status: serde_json::Value = serde_json::from_slice(&status[1..]).unwrap();
            assert_eq!(status["status"], "Failure");
            assert!(status["message"].as_str().unwrap().contains("without a terminal"), "{status}");
            assert!(matches!(ws.next().await.unwrap().unwrap(), Message::Close(_)));
            // The reader is done: to the session, the client is gone.
            reader.await.unwrap();
            assert!(input.recv().await.is_none(), "no resize reached the session");
        });
    }

    fn b64(data: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(data)
    }

    #[test]
    fn base64_dialects_carry_text_and_a_bad_message_ends_the_session() {
        block_on(async {
            let want = Want { stdin: true, stdout: true, stderr: true, tty: false };
            let (server, ws) = connect(V4_BASE64_CHANNEL, want).await;
            let (Client { output, mut input, reader }, mut ws) = (server.unwrap(), ws.unwrap());
            assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("1"));
            ws.send(Message::text(format!("0{}", b64(b"typed\x00\xff")))).await.unwrap();
            assert!(matches!(input.recv().await, Some(FromClient::Stdin(d)) if d == b"typed\x00\xff"));
            output.send(Channel::Stderr, b"err").await.unwrap();
            assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(format!("2{}", b64(b"err"))));
            // Binary messages are read the same way, as the kubelet's server does.
            ws.send(Message::binary(format!("0{}", b64(b"bin")).into_bytes())).await.unwrap();
            assert!(matches!(input.recv().await, Some(FromClient::Stdin(d)) if d == b"bin"));

            ws.send(Message::text("0not base64!")).await.unwrap();
            let status = ws.next().await.unwrap().unwrap().into_text().unwrap();
            assert_eq!(&status[..1], "3");
            let status = base64::engine::general_purpose::STANDARD.decode(&status[1..]).unwrap();
            let status: serde_json::Value = serde_json::from_slice(&status).unwrap();
            assert_eq!(status["status"], "Failure");
            assert!(status["message"].as_str().unwrap().contains("not base64"), "{status}");
            assert!(matches!(ws.next().await.unwrap().unwrap(), Message::Close(_)));
            reader.await.unwrap();
        });
    }

    #[test]
    fn before_v4_the_error_channel_carries_only_a_failure_message() {
        block_on(async {
            let want = Want { stdin: false, stdout: true, stderr: true, tty: false };
            for (status, carried) in [(Status::success(), None), (Status::exit_code("exit code 3", 3), Some("exit code 3"))] {
                let (server, ws) = connect(V1_CHANNEL, want).await;
                let (Client { output, reader, .. }, mut ws) = (server.unwrap(), ws.unwrap());
                assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(vec![STDOUT]));
                output.status(&status).await.unwrap();
                let finished = tokio::spawn(async move { output.finish(reader).await });
                if let Some(message) = carried {
                    assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary([&[ERROR][..], message.as_bytes()].concat()));
                }
                assert!(matches!(ws.next().await.unwrap().unwrap(), Message::Close(_)), "nothing else on the error channel");
                assert!(ws.next().await.is_none_or(|m| m.is_err()));
                finished.await.unwrap().unwrap();
            }
        });
    }

    #[test]
    fn the_clients_order_picks_the_dialect_and_no_offer_is_binary_channel_k8s_io() {
        block_on(async {
            let want = Want { stdin: true, stdout: true, stderr: false, tty: false };
            // Both are ours: the client's first wins, as with the kubelet.
            let (server, ws) = handshake(Some("base64.channel.k8s.io, channel.k8s.io"), want).await;
            let (mut ws, named) = ws.unwrap();
            assert_eq!(named.as_deref(), Some(V1_BASE64_CHANNEL));
            assert!(server.is_some());
            assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("1"));

            let (server, ws) = handshake(None, want).await;
            let (mut ws, named) = ws.unwrap();
            assert_eq!(named, None, "no protocol offered, none named");
            let Client { output, mut input, reader } = server.unwrap();
            assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(vec![STDOUT]));
            ws.send(Message::binary(b"\x00plain".to_vec())).await.unwrap();
            assert!(matches!(input.recv().await, Some(FromClient::Stdin(d)) if d == b"plain"));
            output.status(&Status::failure("it broke", "InternalError")).await.unwrap();
            assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(b"\x03it broke".to_vec()), "a message, not a Status");
            drop(reader);
        });
    }

    #[test]
    fn a_protocol_we_do_not_speak_is_refused() {
        block_on(async {
            let want = Want { stdin: false, stdout: true, stderr: true, tty: false };
            let (server, ws) = connect("v3.channel.k8s.io", want).await;
            assert!(server.is_none());
            match ws {
                Err(WsError::Http(response)) => assert_eq!(response.status(), 403),
                other => panic!("{:?}", other.map(|_| ())),
            }
        });
    }
}
