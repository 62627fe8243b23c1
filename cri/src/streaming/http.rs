//! The HTTP/1.1 request that opens a stream, and the answers to it.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A request head this large is no streaming client's.
const MAX_HEAD: usize = 16 << 10;

/// A request head is not one we can serve.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("reading the request")]
    Io(#[from] std::io::Error),
    #[error("the request head is longer than {MAX_HEAD} bytes")]
    TooLong,
    #[error("the connection closed before the request head ended")]
    Cut,
    #[error("the request head is not HTTP/1.1: {0}")]
    Parse(#[from] httparse::Error),
}

/// What the server needs of a request.
#[derive(Debug)]
pub struct Request {
    pub path: String,
    /// The `Upgrade` protocols asked for.
    pub upgrade: Vec<String>,
    /// The `X-Stream-Protocol-Version` values offered (SPDY), in the client's order.
    pub protocols: Vec<String>,
    /// `Sec-WebSocket-Key`, `Sec-WebSocket-Version` and the `Sec-WebSocket-Protocol`
    /// values offered, of a WebSocket upgrade.
    pub websocket_key: Option<String>,
    pub websocket_version: Option<String>,
    pub websocket_protocols: Vec<String>,
    /// Bytes after the head (the client may write its first frames at once).
    pub rest: Vec<u8>,
}

impl Request {
    pub fn is_websocket(&self) -> bool {
        self.upgrade.iter().any(|u| u.eq_ignore_ascii_case("websocket"))
    }

    pub fn is_spdy(&self) -> bool {
        self.upgrade.iter().any(|u| u.eq_ignore_ascii_case("SPDY/3.1"))
    }
}

pub async fn read_request(conn: &mut TcpStream) -> Result<Request, RequestError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Err(RequestError::Cut);
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        if let httparse::Status::Complete(len) = req.parse(&buf)? {
            let values = |name: &str| -> Vec<String> {
                req.headers
                    .iter()
                    .filter(|h| h.name.eq_ignore_ascii_case(name))
                    .flat_map(|h| String::from_utf8_lossy(h.value).split(',').map(|v| v.trim().to_string()).collect::<Vec<_>>())
                    .filter(|v| !v.is_empty())
                    .collect()
            };
            let path = req.path.unwrap_or("/").split('?').next().unwrap_or("/").to_string();
            return Ok(Request {
                path,
                upgrade: values("upgrade"),
                protocols: values("x-stream-protocol-version"),
                websocket_key: values("sec-websocket-key").into_iter().next(),
                websocket_version: values("sec-websocket-version").into_iter().next(),
                websocket_protocols: values("sec-websocket-protocol"),
                rest: buf[len..].to_vec(),
            });
        }
        if buf.len() > MAX_HEAD {
            return Err(RequestError::TooLong);
        }
    }
}

/// Answers with an error and closes.
pub async fn refuse(conn: &mut TcpStream, code: u16, why: &str) {
    let reason = match code {
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        _ => "Error",
    };
    let body = format!("{why}\n");
    let reply = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = conn.write_all(reply.as_bytes()).await;
    let _ = conn.shutdown().await;
}

/// Picks the first protocol the client `offered` (in its order of preference, as the
/// kubelet does) that is one of `ours`, or refuses the request naming them.
pub async fn negotiate(conn: &mut TcpStream, offered: &[String], ours: &[&'static str]) -> Option<&'static str> {
    if let Some(p) = offered.iter().find_map(|o| ours.iter().find(|p| **p == o.as_str())) {
        return Some(p);
    }
    let why = format!("unable to negotiate a stream protocol: the client offers {offered:?}, minipod speaks {ours:?}");
    refuse(conn, 403, &why).await;
    None
}

/// Switches the connection to SPDY/3.1 with stream protocol `protocol`.
pub async fn switch(conn: &mut TcpStream, protocol: &str) -> std::io::Result<()> {
    let reply = format!(
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: {protocol}\r\n\r\n"
    );
    conn.write_all(reply.as_bytes()).await
}
