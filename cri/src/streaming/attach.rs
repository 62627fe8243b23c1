//! An attach over SPDY (`v4.channel.k8s.io`, the streams of an exec without the
//! process): the client's stdin goes into the container's own stdin, which its
//! monitor holds open, and the container's output from now on comes back. It ends when
//! the container exits (the output ends) or the client hangs up.

use std::sync::Arc;

use minipod_runtime::{AttachOptions, Pods};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::exec::{failure, finish, listen, open_streams, Ours, Want};
use super::http::Request;
use super::spdy::{self, Reader, SpdyError, Writer};
use super::AttachSession;

const PROTOCOLS: &[&str] = &["v4.channel.k8s.io"];

pub(super) async fn serve(conn: TcpStream, req: Request, s: AttachSession, pods: Arc<Pods>) {
    let Some((reader, writer)) = spdy::upgrade(conn, req, PROTOCOLS).await else { return };
    let id = s.container.id.clone();
    if let Err(e) = run(reader, writer.clone(), s, pods).await {
        tracing::info!("attach to {id}: {}", minipod_runtime::error_chain(&e));
    }
    writer.shutdown().await;
}

async fn run<R, W>(mut reader: Reader<R>, writer: Arc<Writer<W>>, s: AttachSession, pods: Arc<Pods>) -> Result<(), SpdyError>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let want = Want { stdin: s.stdin, stdout: s.stdout, stderr: s.stderr, tty: false };
    let Some((streams, early_stdin)) = open_streams(&mut reader, &writer, want).await? else { return Ok(()) };
    let (client, mut from_client) = listen(reader, writer.clone(), &streams, early_stdin);
    let opts = AttachOptions { stdin: s.stdin, stdout: s.stdout, stderr: s.stderr };
    let container = s.container.clone();
    let attached = match tokio::task::spawn_blocking(move || pods.attach(&container, opts)).await {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => {
            let error = streams.error.unwrap_or_default();
            writer.data(error, failure(&minipod_runtime::error_chain(&e), "BadRequest").as_bytes()).await?;
            return finish(&writer, &streams, client).await;
        }
        Err(e) => {
            client.abort();
            return Err(SpdyError::Io(std::io::Error::other(e)));
        }
    };
    let ours = Ours::Pipes { stdin: attached.stdin, stdout: attached.stdout, stderr: attached.stderr };
    let pumps = ours.pump(&writer, &streams, vec![], &mut from_client);
    let mut client = client;
    tokio::select! {
        // The output ended: the container exited.
        _ = pumps => {}
        // Gone: dropping our ends detaches (and, for stdin_once, ends its stdin).
        _ = &mut client => return Ok(()),
    }
    finish(&writer, &streams, client).await
}
