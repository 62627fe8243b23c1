//! One pod, two containers: an app listening on 127.0.0.1 only, and a sidecar that
//! reaches it over the pod's shared localhost. Both see the same IP and hostname.
//!
//! Run as root: `cargo run --example sidecar`.

use minipod_runtime::embed::{Minipod, Ready};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rootfs = std::env::temp_dir().join(format!("minipod-example-rootfs-{}", std::process::id()));
    minipod_runtime::busybox::build_rootfs(&rootfs)?;
    let rt = Minipod::builder().private_node().open().await?;

    let pod = rt.pod("app").start().await?;
    pod.container("app")
        .rootfs(&rootfs)
        .cmd(["sh", "-c", "mkdir /www && echo private > /www/index.html && exec httpd -f -p 127.0.0.1:9000 -h /www"])
        .wait_for(Ready::port(9000))
        .start()
        .await?;
    let sidecar = pod.container("sidecar").rootfs(&rootfs).cmd(["sleep", "60"]).start().await?;

    let out = sidecar.exec(["wget", "-qO-", "http://127.0.0.1:9000/"]).await?;
    print!("sidecar -> 127.0.0.1:9000: {}", out.stdout_text());
    let who = sidecar.exec(["sh", "-c", "hostname; ip -4 -o addr show eth0"]).await?;
    print!("the sidecar's view of the pod:\n{}", who.stdout_text());

    drop(pod);
    rt.shutdown().await?;
    std::fs::remove_dir_all(&rootfs)?;
    Ok(())
}
