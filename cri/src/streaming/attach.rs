//! An attach (the channels of an exec without the process): the client's stdin goes
//! into the container's own stdin, which its monitor holds open (for a container on a
//! terminal, the terminal's master, which the client also resizes), and the
//! container's output from now on comes back. It ends when the container exits (the output ends)
//! or the client hangs up.

use std::sync::Arc;

use minipod_runtime::{AttachOptions, Pods};
use tokio::net::TcpStream;

use super::client::{self, Client, Status, StreamError, Want};
use super::exec::Ours;
use super::http::Request;
use super::AttachSession;

pub(super) async fn serve(conn: TcpStream, req: Request, s: AttachSession, pods: Arc<Pods>) {
    let what = format!("attach to {}", s.container.id);
    let want = Want { stdin: s.stdin, stdout: s.stdout, stderr: s.stderr, tty: s.tty };
    client::serve(conn, req, want, &what, |client| run(client, s, pods)).await
}

async fn run(client: Client, s: AttachSession, pods: Arc<Pods>) -> Result<(), StreamError> {
    let Client { output, input: mut from_client, reader: mut client } = client;
    let opts = AttachOptions { stdin: s.stdin, stdout: s.stdout, stderr: s.stderr };
    let container = s.container.clone();
    let attached = match tokio::task::spawn_blocking(move || pods.attach(&container, opts)).await {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => {
            output.status(&Status::failure(&minipod_runtime::error_chain(&e), "BadRequest")).await?;
            return output.finish(client).await;
        }
        Err(e) => {
            client.abort();
            return Err(StreamError::Worker(e));
        }
    };
    // A terminal's stdin is its master, which also takes the resizes.
    let ours = if s.container.tty {
        Ours::Attached { master: attached.stdin, stdout: attached.stdout }
    } else {
        Ours::Pipes { stdin: attached.stdin, stdout: attached.stdout, stderr: attached.stderr }
    };
    let pumps = ours.pump(&output, vec![], &mut from_client);
    tokio::select! {
        // The output ended: the container exited.
        _ = pumps => {}
        // Gone: dropping our ends detaches (and, for stdin_once, ends its stdin).
        _ = &mut client => return Ok(()),
    }
    output.finish(client).await
}
