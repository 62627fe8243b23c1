//! The streaming server: where the URLs that Exec, Attach and PortForward answer with
//! lead. A client (crictl, the kubelet's proxy, critest) connects over HTTP and
//! upgrades, to SPDY/3.1 (crictl's and the kubelet's default) or to a WebSocket
//! (`crictl --transport websocket`, kubectl since 1.30), and speaks the Kubernetes
//! protocols over it: stdin, stdout, stderr, error and resize for an exec or attach
//! (SPDY streams, or the channels of `v5.channel.k8s.io`, `v4` and the kubelet's older
//! dialects); a data and an error stream per connection for a port forward (SPDY, also
//! tunnelled in a WebSocket as `SPDY/3.1+portforward.k8s.io`).
//!
//! It listens on loopback (a port chosen at start, or given), as containerd's does. It
//! serves only URLs it issued: each carries a random single-use token that expires a
//! minute after it was issued. A session that the client abandons takes its process
//! (killed, with its process group) and its connections with it.

mod attach;
mod client;
mod dictionary;
mod exec;
mod http;
mod portforward;
mod pty;
mod spdy;
mod spdy_streams;
mod websocket;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use minipod_runtime::netstack::netns::Netns;
use minipod_runtime::pod::ContainerRecord;
use minipod_runtime::Pods;
use tokio::net::{TcpListener, TcpStream};

/// How long an issued URL stays usable (containerd's streaming cache keeps them a minute).
const TOKEN_TTL: Duration = Duration::from_secs(60);
/// How long a client gets to open the streams it announced (the kubelet's default
/// stream creation timeout).
const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);

/// An exec into a running container, as its ExecRequest asked.
pub struct ExecSession {
    pub container: ContainerRecord,
    pub cmd: Vec<String>,
    pub tty: bool,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

/// An attach to a running container's own stdio.
pub struct AttachSession {
    pub container: ContainerRecord,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    /// The client drives the container's terminal (its output is one stream, and the
    /// client resizes it); only for a container that has one.
    pub tty: bool,
}

/// Port forwarding into a pod's network namespace.
pub struct PortForwardSession {
    pub netns: Netns,
    /// The pod, for messages.
    pub pod: String,
}

/// What a URL was issued for.
pub enum Session {
    Exec(Box<ExecSession>),
    Attach(Box<AttachSession>),
    PortForward(PortForwardSession),
}

impl Session {
    fn path(&self) -> &'static str {
        match self {
            Session::Exec(_) => "exec",
            Session::Attach(_) => "attach",
            Session::PortForward(_) => "portforward",
        }
    }
}

/// Issued URLs not yet used, by token.
struct Tokens<S> {
    pending: Mutex<HashMap<String, (S, &'static str, Instant)>>,
    ttl: Duration,
}

impl<S> Tokens<S> {
    fn new(ttl: Duration) -> Self {
        Self { pending: Mutex::new(HashMap::new()), ttl }
    }

    /// A token for `what` at path kind `kind`; expired ones are dropped meanwhile.
    fn issue(&self, what: S, kind: &'static str) -> std::io::Result<String> {
        let token = token()?;
        let mut pending = self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        pending.retain(|_, (_, _, at)| at.elapsed() < self.ttl);
        pending.insert(token.clone(), (what, kind, Instant::now()));
        Ok(token)
    }

    /// What `/KIND/TOKEN` was issued for: once, in time, and at its own kind of path.
    fn redeem(&self, path: &str) -> Option<S> {
        let (kind, token) = path.strip_prefix('/')?.split_once('/')?;
        let mut pending = self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (what, issued_for, at) = pending.remove(token)?;
        (at.elapsed() < self.ttl && issued_for == kind).then_some(what)
    }
}

/// The streaming server of one daemon.
pub struct StreamServer {
    addr: SocketAddr,
    pods: Arc<Pods>,
    tokens: Tokens<Session>,
}

impl StreamServer {
    /// Listens on `addr` (port 0: one the kernel picks) and serves until the runtime stops.
    pub async fn start(addr: SocketAddr, pods: Arc<Pods>) -> std::io::Result<Arc<Self>> {
        let listener = TcpListener::bind(addr).await?;
        let server = Arc::new(Self { addr: listener.local_addr()?, pods, tokens: Tokens::new(TOKEN_TTL) });
        let accepting = server.clone();
        tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((conn, _)) => {
                        let server = accepting.clone();
                        tokio::spawn(async move { server.serve(conn).await });
                    }
                    Err(e) => {
                        // Out of descriptors and the like: wait rather than spin.
                        tracing::warn!("streaming server: accepting a connection: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        Ok(server)
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A URL for `session`, usable once within [`TOKEN_TTL`].
    pub fn issue(&self, session: Session) -> std::io::Result<String> {
        let kind = session.path();
        let token = self.tokens.issue(session, kind)?;
        Ok(format!("http://{}/{kind}/{token}", self.addr))
    }

    async fn serve(&self, mut conn: TcpStream) {
        let _ = conn.set_nodelay(true);
        let request = match tokio::time::timeout(STREAM_CREATION_TIMEOUT, http::read_request(&mut conn)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return http::refuse(&mut conn, 400, &e.to_string()).await,
            Err(_) => return http::refuse(&mut conn, 408, "the request head did not arrive in time").await,
        };
        let Some(session) = self.tokens.redeem(&request.path) else {
            return http::refuse(
                &mut conn,
                404,
                "unknown, used or expired streaming URL: ask the runtime for a new one (they are single-use and expire after a minute)",
            )
            .await;
        };
        if !request.is_spdy() && !request.is_websocket() {
            let why = "this URL is served over SPDY/3.1 or a WebSocket: upgrade the connection (Connection: Upgrade, Upgrade: SPDY/3.1 or websocket)";
            return http::refuse(&mut conn, 400, why).await;
        }
        match session {
            Session::Exec(s) => exec::serve(conn, request, *s, self.pods.clone()).await,
            Session::Attach(s) => attach::serve(conn, request, *s, self.pods.clone()).await,
            Session::PortForward(s) => portforward::serve(conn, request, s).await,
        }
    }
}

/// 16 random bytes, hex: not guessable, and safe in a URL path.
fn token() -> std::io::Result<String> {
    let mut bytes = [0u8; 16];
    loop {
        // SAFETY: fills a local buffer of the given length.
        let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
        if n == bytes.len() as isize {
            return Ok(bytes.iter().map(|b| format!("{b:02x}")).collect());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_single_use_expire_and_serve_only_their_own_kind() {
        let tokens = Tokens::new(Duration::from_secs(60));
        let a = tokens.issue(1, "exec").unwrap();
        let b = tokens.issue(2, "exec").unwrap();
        assert_ne!(a, b);
        assert!(a.len() == 32 && a.bytes().all(|c| c.is_ascii_hexdigit()), "{a}");
        assert_eq!(tokens.redeem(&format!("/exec/{a}")), Some(1));
        assert_eq!(tokens.redeem(&format!("/exec/{a}")), None, "a URL is used once");
        // An exec URL at the port-forward path is not a port forward (and is spent).
        assert_eq!(tokens.redeem(&format!("/portforward/{b}")), None);
        assert_eq!(tokens.redeem(&format!("/exec/{b}")), None);
        assert_eq!(tokens.redeem("/exec/"), None);
        assert_eq!(tokens.redeem("exec"), None);

        let expired = Tokens::new(Duration::ZERO);
        let c = expired.issue(3, "exec").unwrap();
        assert_eq!(expired.redeem(&format!("/exec/{c}")), None, "an expired URL serves nothing");
    }
}
