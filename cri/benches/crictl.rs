//! `crictl runp` and `crictl create` + `start` latency against `minipod serve`, on a
//! node namespace of its own. `cargo bench -p minipod-cri --bench crictl` (root, with
//! crictl from scripts/setup.sh). Then the same against containerd with the CNI
//! bridge, host-local and portmap plugins where containerd is installed
//! (`apt-get install containerd`): a containerd of its own, on private directories and
//! a socket of its own, inside the same throwaway node namespace.
//!
//! The same requests are then made by a Rust gRPC client holding one connection: that
//! is minipod's share of each crictl number, without crictl's process start (a 40 MB Go
//! binary) and connection set-up. That client also creates containers with each part of
//! the hardened security context on its own, interleaved with plain ones, and prints
//! what each part adds.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[path = "support/daemon.rs"]
mod daemon;
use daemon::{connect, run, run_pod, start_container, stats, which, Bench};

fn crictl() -> Option<PathBuf> {
    ["/root/go/bin/crictl", "/usr/local/bin/crictl", "/usr/bin/crictl"].iter().map(PathBuf::from).find(|p| p.exists())
}

/// crictl against one runtime's socket.
struct Crictl {
    bin: PathBuf,
    endpoint: String,
    dir: PathBuf,
    last_start_median: std::cell::Cell<f64>,
}

/// A container as a hardened Kubernetes pod asks for it: a non-root user, a read-only
/// root, no capabilities, no privilege escalation, RuntimeDefault seccomp, memory and
/// CPU limits.
fn hardened() -> serde_json::Value {
    serde_json::json!({
        "security_context": {
            "run_as_user": { "value": 1000 },
            "readonly_rootfs": true,
            "no_new_privs": true,
            "capabilities": { "drop_capabilities": ["ALL"] },
            "seccomp": { "profile_type": 0 }
        },
        "resources": { "memory_limit_in_bytes": 67108864, "cpu_period": 100000, "cpu_quota": 50000, "cpu_shares": 512 }
    })
}

impl Crictl {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.args(["--runtime-endpoint", &self.endpoint, "--image-endpoint", &self.endpoint, "--config", "/dev/null", "--timeout", "60s"])
            .args(args);
        c
    }

    fn write(&self, name: &str, v: serde_json::Value) -> String {
        let p = self.dir.join(name);
        std::fs::write(&p, v.to_string()).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        p.display().to_string()
    }

    /// `crictl version` n times, then n pods each with a container running `image`,
    /// plain, then n more whose container has [`hardened`] security and limits; prints
    /// the latencies, removes the pods and returns the median `runp` in ms.
    fn measure(&self, label: &str, image: &str, n: usize) -> f64 {
        let runp = self.measure_pods(label, image, n, "plain", serde_json::json!({}));
        let plain = self.last_start_median.get();
        self.measure_pods(label, image, n, "hardened", hardened());
        let extra = self.last_start_median.get() - plain;
        println!("{label}: the hardened container costs {extra:+.2} ms more to create + start than the plain one");
        runp
    }

    fn measure_pods(&self, label: &str, image: &str, n: usize, kind: &str, linux: serde_json::Value) -> f64 {
        let ctr = self.write(
            &format!("ctr-{kind}.json"),
            serde_json::json!({ "metadata": { "name": "main" }, "image": { "image": image }, "command": ["sleep", "3600"], "linux": linux }),
        );
        // crictl's own cost: a process start, a connection and one Version call.
        let mut bare = Vec::new();
        for _ in 0..n {
            let t = Instant::now();
            run(&mut self.cmd(&["version"]));
            bare.push(t.elapsed());
        }
        let (mut runp, mut start, mut pods) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..n {
            let pod = self.write(
                &format!("pod-{kind}-{i}.json"),
                serde_json::json!({ "metadata": { "name": format!("{kind}{i}"), "namespace": "bench", "uid": format!("{kind}{i}") }, "linux": {} }),
            );
            let t = Instant::now();
            let id = run(&mut self.cmd(&["runp", &pod]));
            runp.push(t.elapsed());
            let t = Instant::now();
            let c = run(&mut self.cmd(&["create", &id, &ctr, &pod]));
            run(&mut self.cmd(&["start", &c]));
            start.push(t.elapsed());
            pods.push(id);
        }
        println!("{label}, driven by crictl ({}), {n} {kind} pods", self.bin.display());
        stats("crictl version (crictl's own cost)", bare);
        let runp_median = stats("crictl runp", runp);
        self.last_start_median.set(stats(&format!("crictl create + start ({kind})"), start));
        for id in &pods {
            let _ = self.cmd(&["rmp", "-f", id]).stdout(Stdio::null()).stderr(Stdio::null()).status();
        }
        runp_median
    }
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
    let mut bench = Bench::start("crictl", "bench/busybox:1");
    let (base, node, sock) = (bench.base.clone(), bench.node.clone(), bench.sock.clone());
    let c = Crictl {
        bin: crictl.clone(),
        endpoint: format!("unix://{}", sock.display()),
        dir: base.clone(),
        last_start_median: Default::default(),
    };
    let ours = c.measure("minipod serve", "bench/busybox:1", n);
    let our_streams = streaming::measure(&c, "minipod serve", "bench/busybox:1", n, None);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap_or_else(|e| panic!("tokio: {e}"));
    rt.block_on(direct(&sock, n));
    drop(rt);
    drop(bench.daemon.take());

    match which("containerd") {
        Some(containerd) => {
            let (theirs, their_streams) = containerd::measure(&containerd, &crictl, &base, &node, n);
            println!("crictl runp: containerd + CNI / minipod = {:.1}x", theirs / ours);
            streaming::compare(&our_streams, &their_streams);
        }
        None => println!("containerd + CNI: not installed (apt-get install containerd), so no side-by-side numbers"),
    }
}

#[path = "crictl/containerd.rs"]
mod containerd;
#[path = "crictl/streaming.rs"]
mod streaming;

/// The parts of [`hardened`], one at a time and all together, as CRI messages.
fn hardening_parts() -> Vec<(&'static str, k8s_cri::v1::LinuxContainerConfig)> {
    use k8s_cri::v1 as cri;
    let sc = |f: &dyn Fn(&mut cri::LinuxContainerSecurityContext)| {
        let mut c = cri::LinuxContainerSecurityContext::default();
        f(&mut c);
        cri::LinuxContainerConfig { security_context: Some(c), ..Default::default() }
    };
    let user = |c: &mut cri::LinuxContainerSecurityContext| c.run_as_user = Some(cri::Int64Value { value: 1000 });
    let ro = |c: &mut cri::LinuxContainerSecurityContext| c.readonly_rootfs = true;
    let caps = |c: &mut cri::LinuxContainerSecurityContext| {
        c.no_new_privs = true;
        c.capabilities = Some(cri::Capability { drop_capabilities: vec!["ALL".into()], ..Default::default() });
    };
    let seccomp = |c: &mut cri::LinuxContainerSecurityContext| {
        c.seccomp =
            Some(cri::SecurityProfile { profile_type: cri::security_profile::ProfileType::RuntimeDefault as i32, ..Default::default() })
    };
    let limits = cri::LinuxContainerResources {
        memory_limit_in_bytes: 64 << 20,
        cpu_period: 100_000,
        cpu_quota: 50_000,
        cpu_shares: 512,
        ..Default::default()
    };
    let mut all = sc(&|c| {
        user(c);
        ro(c);
        caps(c);
        seccomp(c);
    });
    all.resources = Some(limits.clone());
    vec![
        ("plain", cri::LinuxContainerConfig::default()),
        ("runAsUser 1000", sc(&user)),
        ("read-only root", sc(&ro)),
        ("drop ALL + no_new_privs", sc(&caps)),
        ("seccomp RuntimeDefault", sc(&seccomp)),
        ("memory + CPU limits", cri::LinuxContainerConfig { resources: Some(limits), ..Default::default() }),
        ("hardened (all of the above)", all),
    ]
}

/// RunPodSandbox, then CreateContainer + StartContainer for each of
/// [`hardening_parts`] in turn (interleaved, so that drift hits every kind alike),
/// over one connection; prints a line per kind and what it adds to the plain one.
async fn direct(sock: &Path, n: usize) {
    use k8s_cri::v1 as cri;
    let mut client = connect(sock).await;
    let parts = hardening_parts();
    let (mut runp, mut made) = (Vec::new(), Vec::new());
    let mut start: Vec<Vec<Duration>> = vec![Vec::new(); parts.len()];
    for i in 0..n {
        for (k, (_, linux)) in parts.iter().enumerate() {
            let t = Instant::now();
            let (id, config) = run_pod(&mut client, &format!("g{i}-{k}"), "bench").await;
            runp.push(t.elapsed());
            let ctr = cri::ContainerConfig {
                metadata: Some(cri::ContainerMetadata { name: "main".into(), attempt: 0 }),
                image: Some(cri::ImageSpec { image: "bench/busybox:1".into(), ..Default::default() }),
                command: vec!["sleep".into(), "3600".into()],
                linux: Some(linux.clone()),
                ..Default::default()
            };
            let t = Instant::now();
            start_container(&mut client, &id, config, ctr).await;
            start[k].push(t.elapsed());
            made.push(id);
        }
        // Keep the node as small as in the crictl runs: n pods at most.
        if made.len() >= n {
            for id in made.drain(..) {
                let _ = client.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: id.clone() }).await;
                let _ = client.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id }).await;
            }
        }
    }
    for id in made {
        let _ = client.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: id.clone() }).await;
        let _ = client.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id }).await;
    }
    println!("the same over one gRPC connection (no crictl)");
    stats("RunPodSandbox", runp);
    let mut plain = 0.0;
    for (k, ((label, _), v)) in parts.iter().zip(start).enumerate() {
        let median = stats(&format!("Create + Start: {label}"), v);
        if k == 0 {
            plain = median;
        } else {
            println!("{:<44} {:+.2} ms over plain", "", median - plain);
        }
    }
}
