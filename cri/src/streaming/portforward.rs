//! Port forwarding over SPDY, stream protocol `portforward.k8s.io` (on its own, or
//! tunnelled in a WebSocket as client-go's `SPDY/3.1+portforward.k8s.io`): for each
//! connection the client opens a pair of streams, error and data, that carry the same
//! `requestid` and `port`. The data stream is joined to a TCP connection to that port
//! on the pod's loopback (127.0.0.1, else [::1]), inside its network namespace; a port
//! that cannot be reached is reported on the error stream.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use minipod_runtime::netstack::netns::Netns;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::http::Request;
use super::spdy::{self, Frame, Reader, SpdyError, Writer};
use super::{websocket, PortForwardSession};

const PROTOCOLS: &[&str] = &["portforward.k8s.io"];

/// One connection's streams, as they arrive.
#[derive(Default)]
struct Pair {
    port: Option<u16>,
    error: Option<u32>,
    data: Option<(u32, mpsc::Receiver<Option<Vec<u8>>>)>,
}

pub(super) async fn serve(conn: TcpStream, req: Request, s: PortForwardSession) {
    if req.is_websocket() {
        let Some(tunnel) = websocket::tunnel(conn, req).await else { return };
        let (r, w) = tokio::io::split(tunnel);
        return session(Reader::new(r), Writer::new(w), s).await;
    }
    let Some((reader, writer)) = spdy::upgrade(conn, req, PROTOCOLS).await else { return };
    session(reader, writer, s).await
}

async fn session<R, W>(reader: Reader<R>, writer: Arc<Writer<W>>, s: PortForwardSession)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + Sync + 'static,
{
    let pod = s.pod.clone();
    if let Err(e) = run(reader, writer.clone(), s).await {
        tracing::info!("port forward to pod {pod}: {}", minipod_runtime::error_chain(&e));
    }
    writer.shutdown().await;
}

async fn run<R, W>(mut reader: Reader<R>, writer: Arc<Writer<W>>, s: PortForwardSession) -> Result<(), SpdyError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + Sync + 'static,
{
    let netns = Arc::new(s.netns);
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    // Where each data stream's bytes go; None is the client's FIN.
    let mut data_in: HashMap<u32, mpsc::Sender<Option<Vec<u8>>>> = HashMap::new();
    // Forwards end with the session: aborted when this set is dropped.
    let mut forwards = tokio::task::JoinSet::new();
    loop {
        let frame = match reader.next().await {
            Ok(Some(f)) => f,
            Ok(None) => return Ok(()),
            Err(e) => return Err(e),
        };
        match frame {
            Frame::SynStream { stream, headers, .. } => {
                writer.reply(stream).await?;
                let kind = spdy::header(&headers, "streamtype").unwrap_or_default().to_string();
                // Old clients send no request id: the data stream follows its error stream.
                let request = match spdy::header(&headers, "requestid") {
                    Some(id) => id.to_string(),
                    None if kind == "data" => stream.saturating_sub(2).to_string(),
                    None => stream.to_string(),
                };
                let port = spdy::header(&headers, "port").and_then(|p| p.parse::<u16>().ok()).filter(|p| *p != 0);
                let pair = pairs.entry(request.clone()).or_default();
                pair.port = pair.port.or(port);
                match kind.as_str() {
                    "error" => pair.error = Some(stream),
                    "data" => {
                        // Bounded: a slow pod connection holds the client back over TCP.
                        let (tx, rx) = mpsc::channel(16);
                        data_in.insert(stream, tx);
                        pair.data = Some((stream, rx));
                    }
                    _ => {
                        writer.reset(stream, spdy::RST_PROTOCOL_ERROR).await?;
                        continue;
                    }
                }
                if pair.error.is_some() && pair.data.is_some() {
                    let Some(Pair { port, error: Some(error), data: Some((data, rx)) }) = pairs.remove(&request) else { continue };
                    let (writer, netns, pod) = (writer.clone(), netns.clone(), s.pod.clone());
                    forwards.spawn(async move {
                        if let Err(e) = forward(port, error, data, rx, &writer, netns, &pod).await {
                            tracing::debug!("port forward to pod {pod}: {}", minipod_runtime::error_chain(&e));
                        }
                    });
                }
            }
            Frame::Data { stream, fin, data } => {
                if let Some(tx) = data_in.get(&stream) {
                    if !data.is_empty() {
                        let _ = tx.send(Some(data)).await;
                    }
                    if fin {
                        let _ = tx.send(None).await;
                        data_in.remove(&stream);
                    }
                }
            }
            Frame::RstStream { stream } => {
                // The forward sees its input end.
                data_in.remove(&stream);
            }
            Frame::Ping(id) => writer.pong(id).await?,
            Frame::GoAway => return Ok(()),
            Frame::Ignored => {}
        }
        // Finished forwards are reaped as we go.
        while forwards.try_join_next().is_some() {}
    }
}

/// Joins data stream `data` to a connection to `port` in the pod.
async fn forward<W: AsyncWrite + Unpin>(
    port: Option<u16>,
    error: u32,
    data: u32,
    mut from_client: mpsc::Receiver<Option<Vec<u8>>>,
    writer: &Writer<W>,
    netns: Arc<Netns>,
    pod: &str,
) -> Result<(), SpdyError> {
    let Some(port) = port else {
        writer.data(error, b"a port forward stream needs a port header of 1 to 65535").await?;
        writer.fin(error).await?;
        return writer.fin(data).await;
    };
    let conn = match connect(netns, port).await {
        Ok(c) => c,
        Err(e) => {
            let why = format!("error forwarding port {port} to pod {pod}: {e}");
            writer.data(error, why.as_bytes()).await?;
            writer.fin(error).await?;
            return writer.fin(data).await;
        }
    };
    let (mut from_pod, mut to_pod) = conn.into_split();
    let upstream = async {
        while let Some(Some(bytes)) = from_client.recv().await {
            if to_pod.write_all(&bytes).await.is_err() {
                break;
            }
        }
        // The client is done sending: so are we, toward the pod.
        let _ = to_pod.shutdown().await;
        // Nothing more to do here; the other direction ends the forward.
        std::future::pending::<()>().await
    };
    let downstream = async {
        let mut buf = vec![0u8; spdy::DATA_CHUNK];
        loop {
            match from_pod.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => writer.data(data, &buf[..n]).await?,
            }
        }
        Ok::<(), SpdyError>(())
    };
    let result = tokio::select! {
        _ = upstream => Ok(()),
        r = downstream => r,
    };
    writer.fin(data).await?;
    writer.fin(error).await?;
    result
}

/// A connection to `port` on the pod's loopback, IPv4 first.
async fn connect(netns: Arc<Netns>, port: u16) -> std::io::Result<TcpStream> {
    let connected = tokio::task::spawn_blocking(move || {
        netns.run(move || {
            let v4 = std::net::TcpStream::connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
            match v4 {
                Ok(c) => Ok(c),
                // A server on [::1] only; its error is the less telling one.
                Err(e) => std::net::TcpStream::connect(SocketAddr::from((Ipv6Addr::LOCALHOST, port))).map_err(|_| e),
            }
        })
    })
    .await
    .map_err(std::io::Error::other)?
    .map_err(std::io::Error::other)??;
    connected.set_nonblocking(true)?;
    let _ = connected.set_nodelay(true);
    TcpStream::from_std(connected)
}
