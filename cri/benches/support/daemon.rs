//! What the CRI benchmarks share: a throwaway node namespace with `minipod serve` on
//! it and the busybox image imported, a gRPC client over its socket, and percentiles.
//! Everything goes on drop, also when a step panics. Each benchmark uses a part.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Runs a command that must succeed; returns its trimmed stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The `q` quantile (0..=1) of `v`, sorted, in ms.
pub fn quantile(v: &[Duration], q: f64) -> f64 {
    v[((v.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1e3
}

/// Prints the median and p99; returns the median in ms.
pub fn stats(label: &str, mut v: Vec<Duration>) -> f64 {
    v.sort();
    println!("{label:<44} n={:<4} median {:>7.2} ms   p99 {:>7.2} ms", v.len(), quantile(&v, 0.5), quantile(&v, 0.99));
    quantile(&v, 0.5)
}

pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| std::env::split_paths(&p).map(|d| d.join(name)).find(|p| p.is_file()))
}

/// A node namespace of its own under a directory of its own, with `image` imported
/// into an image store there and `minipod serve` running on it. Dropped: the daemon
/// stops, every pod it left is removed, the namespace and the directory go.
pub struct Bench {
    pub base: PathBuf,
    pub node: PathBuf,
    pub sock: PathBuf,
    pub daemon: Option<Daemon>,
    _cleanup: Cleanup,
}

impl Bench {
    pub fn start(name: &str, image: &str) -> Self {
        let minipod = PathBuf::from(env!("CARGO_BIN_EXE_minipod"));
        let base = std::env::temp_dir().join(format!("minipod-bench-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&base).unwrap_or_else(|e| panic!("{}: {e}", base.display()));
        let node = base.join("node");
        minipod_runtime::netstack::netns::create_pinned(&node).unwrap_or_else(|e| panic!("node namespace: {e}"));
        let cleanup = Cleanup { node: node.clone(), base: base.clone() };
        run(Command::new("nsenter").arg(format!("--net={}", node.display())).args(["ip", "link", "set", "lo", "up"]));
        let (root, images, sock) = (base.join("state"), base.join("images"), base.join("cri.sock"));
        let layout = base.join("layout");
        minipod_runtime::busybox::write_oci_layout(&layout, image).unwrap_or_else(|e| panic!("image: {e}"));
        run(Command::new(&minipod).arg("--root").arg(&root).args(["image", "--images"]).arg(&images).arg("import").arg(&layout));
        let child = Command::new(&minipod)
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
        let daemon = Daemon { child, minipod, root, images, node: node.clone() };
        while std::os::unix::net::UnixStream::connect(&sock).is_err() {
            std::thread::sleep(Duration::from_millis(10));
        }
        Bench { base, node, sock, daemon: Some(daemon), _cleanup: cleanup }
    }

    /// The daemon's PID.
    pub fn pid(&self) -> u32 {
        self.daemon.as_ref().map_or(0, |d| d.child.id())
    }
}

pub type Client = k8s_cri::v1::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel>;

/// A CRI client over one connection to `sock`.
pub async fn connect(sock: &Path) -> Client {
    let path = sock.to_path_buf();
    let channel = tonic::transport::Endpoint::from_static("http://[::]:0")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
        }))
        .await
        .unwrap_or_else(|e| panic!("connecting to {}: {e}", sock.display()));
    k8s_cri::v1::runtime_service_client::RuntimeServiceClient::new(channel)
}

/// RunPodSandbox of pod `name` (its uid too) in `namespace`; returns its id and config.
pub async fn run_pod(client: &mut Client, name: &str, namespace: &str) -> (String, k8s_cri::v1::PodSandboxConfig) {
    use k8s_cri::v1 as cri;
    let config = cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata { name: name.into(), namespace: namespace.into(), uid: name.into(), attempt: 0 }),
        ..Default::default()
    };
    let id = client
        .run_pod_sandbox(cri::RunPodSandboxRequest { config: Some(config.clone()), runtime_handler: String::new() })
        .await
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}"))
        .into_inner()
        .pod_sandbox_id;
    (id, config)
}

/// CreateContainer + StartContainer of `ctr` in pod `pod`; returns the container's id.
pub async fn start_container(
    client: &mut Client,
    pod: &str,
    config: k8s_cri::v1::PodSandboxConfig,
    ctr: k8s_cri::v1::ContainerConfig,
) -> String {
    use k8s_cri::v1 as cri;
    let c = client
        .create_container(cri::CreateContainerRequest { pod_sandbox_id: pod.into(), config: Some(ctr), sandbox_config: Some(config) })
        .await
        .unwrap_or_else(|e| panic!("CreateContainer: {e}"))
        .into_inner()
        .container_id;
    client.start_container(cri::StartContainerRequest { container_id: c.clone() }).await.unwrap_or_else(|e| panic!("StartContainer: {e}"));
    c
}

/// `minipod serve`; stopped when dropped, and whatever pods a failed step left removed.
pub struct Daemon {
    child: std::process::Child,
    minipod: PathBuf,
    root: PathBuf,
    images: PathBuf,
    node: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        let minipod = |args: &[&str]| {
            // On the benchmark's node: never the host's network.
            Command::new(&self.minipod)
                .arg("--root")
                .arg(&self.root)
                .args(["pod", "--netns"])
                .arg(&self.node)
                .arg("--images")
                .arg(&self.images)
                .args(args)
                .output()
        };
        let listed = minipod(&["ls", "-o", "json"]).map(|o| o.stdout).unwrap_or_default();
        let pods: Vec<serde_json::Value> = serde_json::from_slice(&listed).unwrap_or_default();
        for id in pods.iter().filter_map(|p| p["id"].as_str()) {
            let _ = minipod(&["rm", "--force", id]);
        }
    }
}

/// Releases the node namespace and removes the benchmark's directory.
struct Cleanup {
    node: PathBuf,
    base: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = minipod_runtime::netstack::netns::remove_pinned(&self.node);
        let _ = std::fs::remove_dir_all(&self.base);
    }
}
