//! The streaming part of the crictl benchmark, run against each runtime in turn:
//! `crictl exec -s` of `true` (ExecSync), a streaming `crictl exec` whose 256 MiB of
//! output goes to /dev/null (and 256 MiB of input the other way), and 256 MiB read
//! through `crictl port-forward` from a pod's `nc` serving /dev/zero.
//!
//! Each crictl runs where its runtime's streaming server listens: minipod's on the
//! host's loopback, the benchmark's containerd's on its node namespace's loopback.

use std::io::Read;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{run, stats, Crictl};

const BYTES: u64 = 256 << 20;

/// A runtime's streaming figures.
#[derive(Debug, Clone, Copy)]
pub struct Figures {
    pub exec_sync_ms: f64,
    /// NaN where the runtime failed (the reason is printed).
    pub exec_out_mibs: f64,
    pub exec_in_mibs: f64,
    pub forward_mibs: f64,
}

fn in_netns(netns: Option<&Path>, mut c: Command) -> Command {
    match netns {
        None => c,
        Some(ns) => {
            let mut n = Command::new("nsenter");
            n.arg(format!("--net={}", ns.display())).arg(c.get_program()).args(c.get_args());
            c = n;
            c
        }
    }
}

fn mibs(d: Duration) -> f64 {
    (BYTES as f64 / (1 << 20) as f64) / d.as_secs_f64()
}

/// Median of three timed runs of `f`; the first failure instead, if any.
fn median3(mut f: impl FnMut() -> Result<Duration, String>) -> Result<Duration, String> {
    let mut v: Vec<Duration> = (0..3).map(|_| f()).collect::<Result<_, _>>()?;
    v.sort();
    Ok(v[1])
}

/// Waits for a crictl child; its stderr when it failed.
fn finished(child: std::process::Child) -> Result<(), String> {
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("crictl failed: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

pub fn measure(c: &Crictl, label: &str, image: &str, n: usize, netns: Option<&Path>) -> Figures {
    let pod_cfg = c.write(
        "stream-pod.json",
        serde_json::json!({ "metadata": { "name": "stream", "namespace": "bench", "uid": "stream" }, "linux": {} }),
    );
    let pod = run(&mut c.cmd(&["runp", &pod_cfg]));
    let ctr = |name: &str, cmd: &[&str]| {
        let cfg = c.write(
            &format!("stream-{name}.json"),
            serde_json::json!({ "metadata": { "name": name }, "image": { "image": image }, "command": cmd, "linux": {} }),
        );
        let id = run(&mut c.cmd(&["create", &pod, &cfg, &pod_cfg]));
        run(&mut c.cmd(&["start", &id]));
        id
    };
    let sleeper = ctr("sleeper", &["sleep", "3600"]);
    // A fresh nc for each connection, each sending zeros until the reader hangs up.
    let _server = ctr("zeros", &["sh", "-c", "while true; do nc -l -p 9000 < /dev/zero; done"]);

    let mut sync = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        run(&mut c.cmd(&["exec", "-s", &sleeper, "true"]));
        sync.push(t.elapsed());
    }
    println!("{label}: streaming, driven by crictl");
    let exec_sync_ms = stats("crictl exec -s true (ExecSync)", sync);

    let count = BYTES.to_string();
    let exec_out = median3(|| {
        let t = Instant::now();
        let mut cmd = in_netns(netns, c.cmd(&["exec", &sleeper, "head", "-c", &count, "/dev/zero"]));
        let child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().map_err(|e| e.to_string())?;
        finished(child)?;
        Ok(t.elapsed())
    });
    let exec_in = median3(|| {
        let mut cmd = in_netns(netns, c.cmd(&["exec", "-i", &sleeper, "sh", "-c", "cat > /dev/null"]));
        let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().map_err(|e| e.to_string())?;
        let mut stdin = child.stdin.take().ok_or("no stdin")?;
        let t = Instant::now();
        let zeros = vec![0u8; 1 << 20];
        let mut wrote = Ok(());
        for _ in 0..(BYTES >> 20) {
            wrote = std::io::Write::write_all(&mut stdin, &zeros);
            if wrote.is_err() {
                break;
            }
        }
        drop(stdin);
        finished(child)?;
        wrote.map_err(|e| format!("writing to crictl: {e}"))?;
        Ok(t.elapsed())
    });

    let forward = {
        let mut pf = in_netns(netns, c.cmd(&["port-forward", &pod, ":9000"]));
        let mut child =
            Child(pf.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap_or_else(|e| panic!("crictl: {e}")));
        let Some(mut out) = child.0.stdout.take() else { panic!("crictl port-forward has no stdout") };
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while out.read(&mut b).is_ok_and(|n| n == 1) && b[0] != b'\n' {
            line.push(b[0]);
        }
        let line = String::from_utf8_lossy(&line).into_owned();
        let port: u16 = line
            .split("127.0.0.1:")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("{label}: crictl port-forward printed {line:?}"));
        let ns = netns.map(PathBuf::from);
        median3(|| {
            let ns = ns.clone();
            std::thread::spawn(move || {
                if let Some(ns) = ns {
                    let f = std::fs::File::open(&ns).map_err(|e| e.to_string())?;
                    nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| e.to_string())?;
                }
                // nc may still be starting: retry until bytes flow.
                let deadline = Instant::now() + Duration::from_secs(20);
                loop {
                    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
                    let mut buf = vec![0u8; 1 << 20];
                    let t = Instant::now();
                    let mut got = 0u64;
                    while got < BYTES {
                        match conn.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => got += n as u64,
                        }
                    }
                    if got >= BYTES {
                        return Ok(t.elapsed());
                    }
                    if Instant::now() > deadline {
                        return Err(format!("the forward on port {port} gave {got} bytes"));
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            })
            .join()
            .map_err(|_| "the port-forward reader panicked".to_string())?
        })
    };
    let rate = |what: &str, r: Result<Duration, String>| match r {
        Ok(d) => {
            println!("  {what:<42} {:>8.0} MiB/s", mibs(d));
            mibs(d)
        }
        Err(e) => {
            println!("  {what:<42} failed: {e}");
            f64::NAN
        }
    };
    let f = Figures {
        exec_sync_ms,
        exec_out_mibs: rate("crictl exec, 256 MiB out to /dev/null", exec_out),
        exec_in_mibs: rate("crictl exec -i, 256 MiB in", exec_in),
        forward_mibs: rate("crictl port-forward, 256 MiB from the pod", forward),
    };
    let _ = c.cmd(&["rmp", "-f", &pod]).stdout(Stdio::null()).stderr(Stdio::null()).status();
    f
}

/// A child killed when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Both runtimes' figures, side by side.
pub fn compare(ours: &Figures, theirs: &Figures) {
    println!("streaming                        minipod   containerd   containerd/minipod");
    println!(
        "ExecSync true (ms, lower better)  {:>7.2}   {:>10.2}   {:>6.2}x",
        ours.exec_sync_ms,
        theirs.exec_sync_ms,
        theirs.exec_sync_ms / ours.exec_sync_ms
    );
    for (what, a, b) in [
        ("exec out (MiB/s, higher better)", ours.exec_out_mibs, theirs.exec_out_mibs),
        ("exec in (MiB/s, higher better) ", ours.exec_in_mibs, theirs.exec_in_mibs),
        ("port-forward (MiB/s, higher)   ", ours.forward_mibs, theirs.forward_mibs),
    ] {
        println!("{what}   {a:>7.0}   {b:>10.0}   {:>6.2}x", b / a);
    }
}
