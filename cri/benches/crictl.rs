//! `crictl runp` and `crictl create` + `start` latency against `minipod serve`, on a
//! node namespace of its own. `cargo bench -p minipod-cri --bench crictl` (root, with
//! crictl from scripts/setup.sh). Compares with containerd only where it is installed.
//!
//! The same requests are then made by a Rust gRPC client holding one connection: that
//! is minipod's share of each crictl number, without crictl's process start (a 40 MB Go
//! binary) and connection set-up.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn stats(label: &str, mut v: Vec<Duration>) {
    v.sort();
    let pick = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1e3;
    println!("{label:<34} n={:<4} median {:>7.2} ms   p99 {:>7.2} ms", v.len(), pick(0.5), pick(0.99));
}

fn crictl() -> Option<PathBuf> {
    ["/root/go/bin/crictl", "/usr/local/bin/crictl", "/usr/bin/crictl"].iter().map(PathBuf::from).find(|p| p.exists())
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn main() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("the crictl benchmark needs root");
        return;
    }
    let Some(crictl) = crictl() else {
        eprintln!("crictl is missing: run scripts/setup.sh");
        return;
    };
    let n: usize = std::env::var("MINIPOD_BENCH_PODS").ok().and_then(|v| v.parse().ok()).unwrap_or(50);
    let minipod = PathBuf::from(env!("CARGO_BIN_EXE_minipod"));
    let base = std::env::temp_dir().join(format!("minipod-bench-crictl-{}", std::process::id()));
    std::fs::create_dir_all(&base).unwrap_or_else(|e| panic!("{}: {e}", base.display()));
    let node = base.join("node");
    minipod_runtime::netstack::netns::create_pinned(&node).unwrap_or_else(|e| panic!("node namespace: {e}"));
    run(Command::new("nsenter").arg(format!("--net={}", node.display())).args(["ip", "link", "set", "lo", "up"]));
    let (root, images, sock) = (base.join("state"), base.join("images"), base.join("cri.sock"));
    let layout = base.join("layout");
    minipod_runtime::busybox::write_oci_layout(&layout, "bench/busybox:1").unwrap_or_else(|e| panic!("image: {e}"));
    run(Command::new(&minipod).arg("--root").arg(&root).args(["image", "--images"]).arg(&images).arg("import").arg(&layout));
    let mut daemon = Command::new(&minipod)
        .arg("--root")
        .arg(&root)
        .args(["serve", "--socket"])
        .arg(format!("unix://{}", sock.display()))
        .arg("--netns")
        .arg(&node)
        .arg("--images")
        .arg(&images)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("minipod serve: {e}"));
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        std::thread::sleep(Duration::from_millis(10));
    }
    let ep = format!("unix://{}", sock.display());
    let cri = |args: &[&str]| {
        let mut c = Command::new(&crictl);
        c.args(["--runtime-endpoint", &ep, "--image-endpoint", &ep, "--config", "/dev/null", "--timeout", "20s"]).args(args);
        c
    };
    let write = |name: &str, v: serde_json::Value| -> String {
        let p = base.join(name);
        std::fs::write(&p, v.to_string()).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        p.display().to_string()
    };
    let ctr = write(
        "ctr.json",
        serde_json::json!({ "metadata": { "name": "main" }, "image": { "image": "bench/busybox:1" }, "command": ["sleep", "3600"], "linux": {} }),
    );
    let (mut runp, mut start) = (Vec::new(), Vec::new());
    let mut pods = Vec::new();
    // crictl's own cost: a process start, a connection and one Version call.
    let mut bare = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        run(&mut cri(&["version"]));
        bare.push(t.elapsed());
    }
    for i in 0..n {
        let pod = write(
            &format!("pod-{i}.json"),
            serde_json::json!({ "metadata": { "name": format!("p{i}"), "namespace": "bench", "uid": format!("u{i}") }, "linux": {} }),
        );
        let t = Instant::now();
        let id = run(&mut cri(&["runp", &pod]));
        runp.push(t.elapsed());
        let t = Instant::now();
        let c = run(&mut cri(&["create", &id, &ctr, &pod]));
        run(&mut cri(&["start", &c]));
        start.push(t.elapsed());
        pods.push(id);
    }
    println!("minipod serve, driven by crictl ({}), {n} pods", crictl.display());
    stats("crictl version (crictl's own cost)", bare);
    stats("crictl runp", runp);
    stats("crictl create + start", start);
    for id in &pods {
        let _ = cri(&["rmp", "-f", id]).stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap_or_else(|e| panic!("tokio: {e}"));
    let (runp, start) = rt.block_on(direct(&sock, n));
    println!("the same over one gRPC connection (no crictl)");
    stats("RunPodSandbox", runp);
    stats("CreateContainer + StartContainer", start);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    let _ = daemon.wait();
    let _ = minipod_runtime::netstack::netns::remove_pinned(&node);
    let _ = std::fs::remove_dir_all(&base);
    if Path::new("/usr/bin/containerd").exists() || Path::new("/usr/local/bin/containerd").exists() {
        println!("containerd is installed, but this benchmark does not drive it yet");
    } else {
        println!("containerd + CNI: not installed on this machine (no packages here), so no side-by-side numbers");
    }
}

/// RunPodSandbox, then CreateContainer + StartContainer, `n` times over one connection;
/// removes what it made.
async fn direct(sock: &Path, n: usize) -> (Vec<Duration>, Vec<Duration>) {
    use k8s_cri::v1 as cri;
    let path = sock.to_path_buf();
    let channel = tonic::transport::Endpoint::from_static("http://[::]:0")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
        }))
        .await
        .unwrap_or_else(|e| panic!("connecting to {}: {e}", sock.display()));
    let mut client = cri::runtime_service_client::RuntimeServiceClient::new(channel);
    let (mut runp, mut start, mut made) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..n {
        let config = cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata { name: format!("g{i}"), namespace: "bench".into(), uid: format!("g{i}"), attempt: 0 }),
            ..Default::default()
        };
        let t = Instant::now();
        let id = client
            .run_pod_sandbox(cri::RunPodSandboxRequest { config: Some(config.clone()), runtime_handler: String::new() })
            .await
            .unwrap_or_else(|e| panic!("RunPodSandbox: {e}"))
            .into_inner()
            .pod_sandbox_id;
        runp.push(t.elapsed());
        let ctr = cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata { name: "main".into(), attempt: 0 }),
            image: Some(cri::ImageSpec { image: "bench/busybox:1".into(), ..Default::default() }),
            command: vec!["sleep".into(), "3600".into()],
            ..Default::default()
        };
        let t = Instant::now();
        let c = client
            .create_container(cri::CreateContainerRequest { pod_sandbox_id: id.clone(), config: Some(ctr), sandbox_config: Some(config) })
            .await
            .unwrap_or_else(|e| panic!("CreateContainer: {e}"))
            .into_inner()
            .container_id;
        client.start_container(cri::StartContainerRequest { container_id: c }).await.unwrap_or_else(|e| panic!("StartContainer: {e}"));
        start.push(t.elapsed());
        made.push(id);
    }
    for id in made {
        let _ = client.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: id.clone() }).await;
        let _ = client.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id }).await;
    }
    (runp, start)
}
