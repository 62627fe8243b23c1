//! The containerd side of the crictl benchmark: containerd's CRI plugin with the CNI
//! bridge, host-local and portmap plugins (what a kubelet node runs), started for the
//! benchmark alone: its own root, state, socket and CNI config, inside the benchmark's
//! node namespace, so the host's containerd (if any), interfaces and firewall are
//! never touched.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{run, Crictl};

const PAUSE: &str = "minipod.test/pause:1";
const IMAGE: &str = "minipod.test/busybox:1";

/// Where containerd 1.6 (shim sockets), libcni (its cache) and containerd's pod
/// namespaces go whatever the config says; each is removed after the run if the run
/// made it.
const HOST_DIRS: [&str; 3] = ["/run/containerd", "/var/lib/cni", "/var/run/netns"];

/// A containerd of our own; stopped, and what it left removed, when dropped.
struct Containerd {
    child: Child,
    dir: PathBuf,
    made: Vec<&'static str>,
    /// No `k8s.io` cgroup existed before: the one runc makes under each cgroup v1
    /// controller for containerd's namespace (it outlives the pods) is ours to remove.
    made_cgroups: bool,
    crictl: Crictl,
}

/// The `k8s.io` cgroup of every controller, whichever exist.
fn k8s_cgroups() -> Vec<PathBuf> {
    let controllers = std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten();
    controllers.map(|c| c.path().join("k8s.io")).filter(|d| d.is_dir()).collect()
}

/// Removes an empty cgroup and its empty children, deepest first.
fn remove_cgroup_tree(dir: &Path) {
    for child in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if child.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroup_tree(&child.path());
        }
    }
    let _ = std::fs::remove_dir(dir);
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Pods a failed step left: their shims, pause and workload processes outlive
        // containerd, and their namespaces are pinned on the host.
        let _ = self.crictl.cmd(&["rmp", "-fa"]).stdout(Stdio::null()).stderr(Stdio::null()).status();
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        // Whatever a failed run left mounted under our directories.
        if let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") {
            let mut ours: Vec<&str> =
                mounts.lines().filter_map(|l| l.split(' ').nth(1)).filter(|m| Path::new(m).starts_with(&self.dir)).collect();
            ours.sort_by_key(|m| std::cmp::Reverse(m.len()));
            for m in ours {
                let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
            }
        }
        for d in &self.made {
            // Pod namespaces of a failed run may still be pinned there: only if empty.
            let _ = if *d == "/var/run/netns" { std::fs::remove_dir(d) } else { std::fs::remove_dir_all(d) };
        }
        if self.made_cgroups {
            k8s_cgroups().iter().for_each(|d| remove_cgroup_tree(d));
        }
    }
}

/// Measures containerd + CNI as [`Crictl::measure`] does minipod; returns the median
/// `crictl runp` in ms and the streaming figures.
pub fn measure(containerd: &Path, crictl: &Path, base: &Path, node: &Path, n: usize) -> (f64, super::streaming::Figures) {
    let dir = base.join("containerd");
    let sock = dir.join("containerd.sock");
    let cni_conf = dir.join("cni");
    std::fs::create_dir_all(&cni_conf).unwrap_or_else(|e| panic!("{}: {e}", cni_conf.display()));
    let chain = serde_json::json!({
        "cniVersion": "1.0.0", "name": "crictlbench",
        "plugins": [
            { "type": "bridge", "bridge": "cnicri0", "isGateway": true, "ipMasq": true,
              "ipam": { "type": "host-local", "ranges": [[{ "subnet": "10.93.0.0/16" }]], "dataDir": dir.join("cni-ipam") } },
            { "type": "portmap", "capabilities": { "portMappings": true } }
        ]
    });
    std::fs::write(cni_conf.join("10-bench.conflist"), chain.to_string()).unwrap_or_else(|e| panic!("CNI config: {e}"));
    let config = format!(
        r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE}"
  # The sandbox's -998 needs CAP_SYS_RESOURCE, which this machine's root lacks.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni}"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = "{runc}"
"#,
        root = dir.join("root").display(),
        state = dir.join("state").display(),
        sock = sock.display(),
        cni = cni_conf.display(),
        runc = dir.join("runc").display(),
    );
    let config_path = dir.join("config.toml");
    std::fs::write(&config_path, config).unwrap_or_else(|e| panic!("containerd config: {e}"));
    let log = dir.join("containerd.log");
    let made = HOST_DIRS.into_iter().filter(|d| !Path::new(d).exists()).collect();
    let made_cgroups = k8s_cgroups().is_empty();
    let child = Command::new("nsenter")
        .arg(format!("--net={}", node.display()))
        .arg(containerd)
        .arg("--config")
        .arg(&config_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap_or_else(|e| panic!("{}: {e}", log.display())))
        .spawn()
        .unwrap_or_else(|e| panic!("starting containerd: {e}"));
    let crictl = Crictl {
        bin: crictl.to_path_buf(),
        endpoint: format!("unix://{}", sock.display()),
        dir: dir.clone(),
        last_start_median: Default::default(),
    };
    let containerd = Containerd { child, dir: dir.clone(), made, made_cgroups, crictl };
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(Instant::now() < deadline, "containerd never listened: {}", std::fs::read_to_string(&log).unwrap_or_default());
        std::thread::sleep(Duration::from_millis(50));
    }
    // No registry is reachable: the pause image (a busybox sleeping for ever) and the
    // workload image are imported as OCI archives.
    for (name, cmd) in [(PAUSE, &["sleep", "2147483647"][..]), (IMAGE, &["sh"][..])] {
        let layout = dir.join(format!("layout-{}", name.replace(['/', ':'], "-")));
        minipod_runtime::busybox::write_oci_layout_with_cmd(&layout, name, cmd).unwrap_or_else(|e| panic!("image {name}: {e}"));
        let archive = layout.with_extension("tar");
        run(Command::new("tar").arg("-C").arg(&layout).arg("-cf").arg(&archive).arg("."));
        run(Command::new("ctr")
            .arg("--address")
            .arg(&sock)
            .args(["-n", "k8s.io", "images", "import", "--base-name", name.split(':').next().unwrap_or(name)])
            .arg(&archive));
    }
    let label = "containerd + CNI (bridge, host-local, portmap)";
    let runp = containerd.crictl.measure(label, IMAGE, n);
    // Its streaming server listens on the node namespace's loopback.
    (runp, super::streaming::measure(&containerd.crictl, label, IMAGE, n, Some(node)))
}
