//! What a `#[tokio::test]` looks like with minipod as its harness: start a pod, publish
//! a port, talk to it from the test process, and let Drop clean up (also on panic).
//!
//! Run as root: `cargo run --example test_harness`. In a test crate, the body of
//! `service_answers` is the test; `main` only stands in for the test runner here.

use minipod_runtime::embed::{Minipod, Ready};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn service_answers(rootfs: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    let rt = Minipod::builder().private_node().open().await?;
    let pod = rt.pod("api").publish(8080, 80).start().await?;
    pod.container("server")
        .rootfs(rootfs)
        .cmd(["sh", "-c", "mkdir /www && echo pong > /www/ping && exec httpd -f -p 80 -h /www"])
        .wait_for(Ready::http(80, "/ping"))
        .start()
        .await?;

    // The published port on the node's 127.0.0.1, from this process. (On the host node,
    // a plain `TcpStream::connect("127.0.0.1:8080")` does the same.)
    let mut conn = rt.connect("127.0.0.1:8080".parse()?).await?;
    conn.write_all(b"GET /ping HTTP/1.0\r\n\r\n").await?;
    let mut answer = String::new();
    conn.read_to_string(&mut answer).await?;
    assert!(answer.starts_with("HTTP/1.") && answer.contains(" 200 "), "{answer}");
    assert!(answer.ends_with("pong\n"));
    println!("127.0.0.1:8080 -> pod {} port 80 answered: {}", pod.ip(), answer.lines().next().unwrap_or_default());
    // No teardown code: dropping `pod` and `rt` removes the pod, its container, its
    // address, its port and the node.
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rootfs = std::env::temp_dir().join(format!("minipod-example-rootfs-{}", std::process::id()));
    minipod_runtime::busybox::build_rootfs(&rootfs)?;
    let result = service_answers(&rootfs).await;
    std::fs::remove_dir_all(&rootfs)?;
    result
}
