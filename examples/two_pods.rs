//! Two pods on one network: `web` serves HTTP with busybox httpd, `client` fetches it
//! by the pod's name through minipod's DNS.
//!
//! Run as root: `cargo run --example two_pods`. Everything it makes goes when it ends.

use minipod_runtime::embed::{Minipod, Ready};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A busybox root filesystem (Debian's busybox-static); an imported image works the
    // same way with `.image("name:tag")`.
    let rootfs = std::env::temp_dir().join(format!("minipod-example-rootfs-{}", std::process::id()));
    minipod_runtime::busybox::build_rootfs(&rootfs)?;

    // A node namespace of its own: nothing touches the host's interfaces or firewall.
    // Drop `.private_node()` to put the bridge on the host.
    let rt = Minipod::builder().private_node().open().await?;

    let web = rt.pod("web").start().await?;
    web.container("httpd")
        .rootfs(&rootfs)
        .cmd(["sh", "-c", "mkdir /www && echo hello from web > /www/index.html && exec httpd -f -p 80 -h /www"])
        .wait_for(Ready::port(80))
        .start()
        .await?;

    let client = rt.pod("client").start().await?;
    let shell = client.container("shell").rootfs(&rootfs).cmd(["sleep", "60"]).start().await?;
    let out = shell.exec(["wget", "-qO-", "http://web/"]).await?;
    println!("web is {}, client is {}", web.ip(), client.ip());
    print!("client fetched http://web/: {}", out.stdout_text());

    drop((web, client));
    rt.shutdown().await?;
    std::fs::remove_dir_all(&rootfs)?;
    Ok(())
}
