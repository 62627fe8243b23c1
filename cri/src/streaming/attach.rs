//! An attach (the channels of an exec without the process): the client's stdin goes
//! into the container's own stdin, which its monitor holds open, and the container's
//! output from now on comes back. It ends when the container exits (the output ends)
//! or the client hangs up.

use std::sync::Arc;

use minipod_runtime::{AttachOptions, Pods};
use tokio::net::TcpStream;

use super::client::{self, failure, Client, StreamError, Want, STDIO_PROTOCOLS};
use super::exec::Ours;
use super::http::Request;
use super::AttachSession;

pub(super) async fn serve(conn: TcpStream, req: Request, s: AttachSession, pods: Arc<Pods>) {
    let id = s.container.id.clone();
    let want = Want { stdin: s.stdin, stdout: s.stdout, stderr: s.stderr, tty: false };
    let client = match client::accept(conn, req, &STDIO_PROTOCOLS, want).await {
        Ok(Some(c)) => c,
        Ok(None) => return,
        Err(e) => return tracing::info!("attach to {id}: {}", minipod_runtime::error_chain(&e)),
    };
    let output = client.output.clone();
    if let Err(e) = run(client, s, pods).await {
        tracing::info!("attach to {id}: {}", minipod_runtime::error_chain(&e));
    }
    output.shutdown().await;
}

async fn run(client: Client, s: AttachSession, pods: Arc<Pods>) -> Result<(), StreamError> {
    let Client { output, input: mut from_client, reader: mut client } = client;
    let opts = AttachOptions { stdin: s.stdin, stdout: s.stdout, stderr: s.stderr };
    let container = s.container.clone();
    let attached = match tokio::task::spawn_blocking(move || pods.attach(&container, opts)).await {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => {
            output.status(&failure(&minipod_runtime::error_chain(&e), "BadRequest")).await?;
            return output.finish(client).await;
        }
        Err(e) => {
            client.abort();
            return Err(StreamError::Worker(e));
        }
    };
    let ours = Ours::Pipes { stdin: attached.stdin, stdout: attached.stdout, stderr: attached.stderr };
    let pumps = ours.pump(&output, vec![], &mut from_client);
    tokio::select! {
        // The output ended: the container exited.
        _ = pumps => {}
        // Gone: dropping our ends detaches (and, for stdin_once, ends its stdin).
        _ = &mut client => return Ok(()),
    }
    output.finish(client).await
}
