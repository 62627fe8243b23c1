//! A `minipod serve` daemon driven by the real `crictl` (installed by
//! scripts/setup.sh) over its Unix socket, and the pod and container configs the CRI
//! tests start from.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{minipod_bin, Harness};

pub fn crictl_bin() -> PathBuf {
    let candidates = ["/root/go/bin/crictl", "/usr/local/bin/crictl", "/usr/bin/crictl"];
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("crictl is missing: run scripts/setup.sh (go install sigs.k8s.io/cri-tools/cmd/crictl@v1.37.0)")
}

/// A daemon on a test root and node; Drop stops it and removes every pod it made.
pub struct Daemon {
    pub h: Harness,
    pub sock: PathBuf,
    pub images: PathBuf,
    node: PathBuf,
    args: Vec<String>,
    pub child: Option<Child>,
}

impl Daemon {
    pub fn start(h: Harness, node: &Path) -> Self {
        Self::start_with(h, node, &[])
    }

    /// With further `minipod serve` arguments.
    pub fn start_with(h: Harness, node: &Path, args: &[String]) -> Self {
        let sock = h.base.join("cri.sock");
        let images = h.base.join("images");
        let mut d = Daemon { h, sock, images, node: node.to_path_buf(), args: args.to_vec(), child: None };
        d.spawn();
        d
    }

    /// `minipod serve` as this daemon runs it: its root, socket, node and arguments.
    pub fn serve_command(&self) -> Command {
        let mut cmd = Command::new(minipod_bin());
        cmd.arg("--root")
            .arg(&self.h.root)
            .arg("serve")
            .arg("--socket")
            .arg(format!("unix://{}", self.sock.display()))
            .arg("--netns")
            .arg(&self.node)
            .arg("--images")
            .arg(&self.images)
            .args(&self.args);
        cmd
    }

    pub fn spawn(&mut self) {
        let log = std::fs::File::create(self.h.base.join("daemon.log")).unwrap();
        let child = self.serve_command().stdin(Stdio::null()).stdout(Stdio::null()).stderr(log).spawn().unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::os::unix::net::UnixStream::connect(&self.sock).is_err() {
            assert!(
                Instant::now() < deadline,
                "the daemon never listened: {}",
                std::fs::read_to_string(self.h.base.join("daemon.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill(&mut self, signal: i32) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as i32, signal) };
            let _ = c.wait();
        }
    }

    pub fn crictl(&self, args: &[&str]) -> Output {
        self.crictl_within(None, args)
    }

    /// crictl, ended by `timeout` after `bound` seconds if given: its `--timeout` bounds
    /// the connection, not every call (a pull runs as long as the daemon takes).
    pub fn crictl_within(&self, bound: Option<u32>, args: &[&str]) -> Output {
        let ep = format!("unix://{}", self.sock.display());
        let mut cmd = match bound {
            Some(secs) => {
                let mut c = Command::new("timeout");
                c.args(["-k", "5", &secs.to_string()]).arg(crictl_bin());
                c
            }
            None => Command::new(crictl_bin()),
        };
        cmd.args(["--runtime-endpoint", &ep, "--image-endpoint", &ep, "--timeout", "20s", "--config", "/dev/null"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Runs crictl and returns its stdout; fails the test with its stderr otherwise.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.crictl(args);
        assert!(out.status.success(), "crictl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn write(&self, name: &str, v: &Value) -> String {
        let p = self.h.base.join(name);
        std::fs::write(&p, serde_json::to_vec_pretty(v).unwrap()).unwrap();
        p.display().to_string()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill(libc::SIGTERM);
        let out = self.h.minipod(&["pod", "--images", self.images.to_str().unwrap_or_default(), "ls", "-o", "json"]);
        let pods: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
        for p in pods {
            if let Some(id) = p["id"].as_str() {
                let _ = self.h.minipod(&["pod", "--images", self.images.to_str().unwrap_or_default(), "rm", "--force", id]);
            }
        }
    }
}

pub fn pod_json(name: &str, logs: &Path, ports: Value) -> Value {
    json!({
        "metadata": { "name": name, "namespace": "default", "uid": format!("{name}-uid"), "attempt": 0 },
        "log_directory": logs.join(name).display().to_string(),
        "port_mappings": ports,
        "labels": { "app": name },
        "linux": {}
    })
}

pub fn ctr_json(name: &str, cmd: &[&str]) -> Value {
    json!({
        "metadata": { "name": name, "attempt": 0 },
        "image": { "image": "minipod.test/busybox:1" },
        "command": cmd,
        "log_path": format!("{name}.log"),
        "linux": {}
    })
}

impl Daemon {
    /// A gRPC call below crictl, with curl over the socket: `payload` (a protobuf
    /// message, or no body at all) to `path`; the response headers and trailers, and
    /// curl's own complaint, lowercased.
    pub fn raw_grpc(&self, path: &str, payload: Option<&[u8]>) -> String {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--http2-prior-knowledge", "-D", "-", "-o", "/dev/null", "--unix-socket"]).arg(&self.sock).args([
            "-X",
            "POST",
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
        ]);
        if let Some(payload) = payload {
            let mut frame = vec![0u8];
            frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
            frame.extend_from_slice(payload);
            let body = self.h.base.join(format!("grpc-body-{}", payload.len()));
            std::fs::write(&body, &frame).unwrap();
            cmd.arg("--data-binary").arg(format!("@{}", body.display()));
        }
        let out = cmd.arg(format!("http://localhost{path}")).output().unwrap();
        format!("{}{}", String::from_utf8_lossy(&out.stdout).to_lowercase(), String::from_utf8_lossy(&out.stderr))
    }

    /// Runs crictl, expecting it to fail; returns its stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.crictl(args);
        assert!(!out.status.success(), "crictl {args:?} succeeded: {}", String::from_utf8_lossy(&out.stdout));
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// `crictl inspect` of a container, once it has exited (or after 30 s).
    pub fn wait_exited(&self, id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let s: Value = serde_json::from_str(&self.ok(&["inspect", id])).unwrap();
            if s["status"]["state"] == "CONTAINER_EXITED" || Instant::now() > deadline {
                return s;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Imports the test busybox image as `minipod.test/busybox:1`.
    pub fn import_busybox(&self) {
        let layout = self.h.base.join("layout");
        minipod_runtime::busybox::write_oci_layout(&layout, "minipod.test/busybox:1").unwrap();
        let imported = self.h.minipod(&["image", "--images", self.images.to_str().unwrap(), "import", layout.to_str().unwrap()]);
        assert!(imported.status.success(), "{}", String::from_utf8_lossy(&imported.stderr));
    }
}
