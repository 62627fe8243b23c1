//! The streaming part of the crictl benchmark, run against each runtime in turn:
//! `crictl exec -s` of `true` (ExecSync), a streaming `crictl exec` of `cat` of a
//! 256 MiB file, 256 MiB of input the other way (`crictl exec -i` into `dd`), and the
//! same file fetched from a pod's busybox httpd through `crictl port-forward`; each
//! over SPDY and over WebSocket (`--transport websocket`). Beside them the raw kernel
//! path, with no runtime: the same `cat` in the container's mount namespace into a
//! pipe, and the same fetch on the pod's own loopback.
//!
//! Both ends are programs that copy in large pieces (Debian's busybox `cat` and httpd
//! use sendfile, `dd bs=1M iflag=fullblock` reads whole MiBs): busybox `head -c` and `nc`, which
//! an earlier version used, copy 4 KiB at a time and were the limit (about 200 and 370
//! MiB/s on their own).
//!
//! Each crictl runs where its runtime's streaming server listens: minipod's on the
//! host's loopback, the benchmark's containerd's on its node namespace's loopback.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{run, stats, Crictl};

const BYTES: u64 = 256 << 20;
/// Where the web container's file is, and what it serves it as.
const FILE: &str = "/srv/z";
const PORT: u16 = 9000;
/// The web container's command line, which also finds its process for the raw path.
const HTTPD: &str = "httpd -f -p 9000 -h /srv";
const TRANSPORTS: [&str; 2] = ["spdy", "websocket"];
/// The rows with no runtime in them: a ceiling, not a race.
const RAW: &str = "raw: ";

/// A runtime's streaming figures: ExecSync in ms, then MiB/s by row (NaN where the
/// runtime failed; the reason is printed).
#[derive(Debug, Clone)]
pub struct Figures {
    pub exec_sync_ms: f64,
    pub rows: Vec<(String, f64)>,
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

/// Reads `r` to its end in 1 MiB pieces; the bytes read.
fn drain(mut r: impl Read) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 1 << 20];
    let mut got = 0u64;
    loop {
        match r.read(&mut buf) {
            Ok(0) => return Ok(got),
            Ok(n) => got += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// How long one timed command may take before it is killed (and fails).
const COMMAND_LIMIT: Duration = Duration::from_secs(120);

/// `cmd` under `timeout`, so that a stuck one fails instead of holding the run.
fn bounded(cmd: &Command, limit: Duration) -> Command {
    let mut c = Command::new("timeout");
    // KILL 10 s after the TERM, for a command that ignores it.
    c.args(["-k", "10"]).arg(format!("{}", limit.as_secs())).arg(cmd.get_program()).args(cmd.get_args());
    c
}

/// What a timed command must show besides its success.
enum Want {
    /// Exactly this many bytes on its stdout.
    Stdout(u64),
    /// This text in its stderr (dd's summary of what it took).
    Stderr(String),
}

/// Runs `cmd` (its stdin fed `input` bytes of zeros, else none), reading its stdout to
/// the end; the time, once it succeeded and showed `want`.
fn timed(cmd: Command, input: u64, want: Want) -> Result<Duration, String> {
    let name = cmd.get_program().to_string_lossy().into_owned();
    // stderr into a file: a pipe read only after stdout could fill and stop the child.
    let err = tempfile_in_tmp()?;
    let t = Instant::now();
    let mut child = bounded(&cmd, COMMAND_LIMIT)
        .stdin(if input > 0 { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(err.try_clone().map_err(|e| e.to_string())?)
        .spawn()
        .map_err(|e| format!("{name}: {e}"))?;
    let feeder = child.stdin.take().map(|mut stdin| {
        std::thread::spawn(move || {
            let zeros = vec![0u8; 1 << 20];
            for i in 0..(input >> 20) {
                stdin.write_all(&zeros).map_err(|e| format!("it stopped taking its input after {i} MiB ({e})"))?;
            }
            Ok::<(), String>(())
        })
    });
    let got = child.stdout.take().map(drain);
    let fed = feeder.map(|f| f.join().unwrap_or_else(|_| Err("the feeder panicked".to_string())));
    let status = child.wait().map_err(|e| e.to_string())?;
    let elapsed = t.elapsed();
    let stderr = read_back(err);
    if !status.success() {
        // timeout's own codes: 124 after its TERM, 137 after its KILL.
        if matches!(status.code(), Some(124 | 137)) {
            return Err(format!("{name} did not finish in {} s: {}", COMMAND_LIMIT.as_secs(), stderr.trim()));
        }
        return Err(format!("{name} failed ({status}): {}", stderr.trim()));
    }
    if let Some(Err(e)) = fed {
        return Err(format!("{name} exited with success, but {e}"));
    }
    let got = got.transpose().map_err(|e| format!("reading its output: {e}"))?;
    match want {
        Want::Stdout(w) if got != Some(w) => Err(format!("{got:?} bytes came out, not {w}")),
        Want::Stderr(text) if !stderr.contains(&text) => Err(format!("no {text:?} in what it printed: {}", stderr.trim())),
        Want::Stdout(_) | Want::Stderr(_) => Ok(elapsed),
    }
}

/// An unnamed file for a child's stderr.
fn tempfile_in_tmp() -> Result<std::fs::File, String> {
    let path = std::env::temp_dir().join(format!("minipod-bench-stderr-{}-{:?}", std::process::id(), std::thread::current().id()));
    // A new file only: never one (or a link) someone else put at that name.
    let f = std::fs::File::options().read(true).write(true).create_new(true).open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let _ = std::fs::remove_file(&path);
    Ok(f)
}

fn read_back(mut f: std::fs::File) -> String {
    use std::io::Seek;
    let mut s = String::new();
    let _ = f.rewind().and_then(|_| f.read_to_string(&mut s));
    s
}

/// GET of the web container's file from `port` on loopback, in `netns` (a path) if
/// given; the time it took once the whole file came with status 200. Retries while
/// the server (or the forward) refuses connections, for 20 s.
fn fetch(netns: Option<PathBuf>, port: u16) -> Result<Duration, String> {
    std::thread::spawn(move || {
        if let Some(ns) = netns {
            let f = std::fs::File::open(&ns).map_err(|e| format!("{}: {e}", ns.display()))?;
            nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| e.to_string())?;
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut conn = loop {
            match std::net::TcpStream::connect(("127.0.0.1", port)) {
                Ok(c) => break c,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(200))
                }
                Err(e) => return Err(format!("connecting to port {port}: {e}")),
            }
        };
        let t = Instant::now();
        conn.set_read_timeout(Some(Duration::from_secs(30))).map_err(|e| e.to_string())?;
        conn.write_all(format!("GET {} HTTP/1.0\r\n\r\n", FILE.trim_start_matches("/srv")).as_bytes()).map_err(|e| e.to_string())?;
        // The head, then the body counted.
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match conn.read(&mut b) {
                Ok(1) => head.push(b[0]),
                r => return Err(format!("the response ended in its head ({r:?}): {:?}", String::from_utf8_lossy(&head))),
            }
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
            return Err(format!("the server answered {:?}", head.lines().next().unwrap_or("")));
        }
        let body = drain(conn).map_err(|e| format!("reading the body: {e}"))?;
        if body != BYTES {
            return Err(format!("a body of {body} bytes, not {BYTES}"));
        }
        Ok(t.elapsed())
    })
    .join()
    .map_err(|_| "the fetcher panicked".to_string())?
}

/// `crictl port-forward` of the web pod's port over `transport`, killed when dropped;
/// its stderr goes to a file, shown when it fails.
struct Forward {
    child: Child,
    port: u16,
    stderr: PathBuf,
}

impl Forward {
    fn start(c: &Crictl, pod: &str, transport: &str, netns: Option<&Path>) -> Result<Self, String> {
        let stderr = c.dir.join(format!("port-forward-{transport}.err"));
        let err = std::fs::File::create(&stderr).map_err(|e| e.to_string())?;
        let cmd = in_netns(netns, c.cmd(&["port-forward", "--transport", transport, pod, &format!(":{PORT}")]));
        // Bounded, so that a crictl that prints nothing and never exits cannot hold the
        // run (its first line is read below without a timeout of its own).
        let child = Child(
            bounded(&cmd, Duration::from_secs(300))
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(err)
                .spawn()
                .map_err(|e| format!("crictl: {e}"))?,
        );
        let mut f = Forward { child, port: 0, stderr };
        let Some(mut out) = f.child.0.stdout.take() else { return Err("crictl port-forward has no stdout".into()) };
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while out.read(&mut b).is_ok_and(|n| n == 1) && b[0] != b'\n' {
            line.push(b[0]);
        }
        let line = String::from_utf8_lossy(&line).into_owned();
        f.port = line
            .split("127.0.0.1:")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| format!("crictl port-forward printed {line:?}: {}", f.why()))?;
        // Keep reading what it prints, so that it never blocks on a full pipe.
        std::thread::spawn(move || drain(out));
        Ok(f)
    }

    /// What crictl said, for a failure.
    fn why(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default().lines().last().unwrap_or("").to_string()
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
    let mib = (BYTES >> 20).to_string();
    let script = format!("mkdir -p /srv && dd if=/dev/zero of={FILE} bs=1M count={mib} 2>/dev/null && exec {HTTPD}");
    let web = ctr("web", &["sh", "-c", &script]);
    // The file is whole once httpd serves it: nothing is measured while it is written.
    let web_pid = wait_for_httpd(c, &web);

    let mut sync = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        run(&mut c.cmd(&["exec", "-s", &web, "true"]));
        sync.push(t.elapsed());
    }
    println!("{label}: streaming, driven by crictl");
    let exec_sync_ms = stats("crictl exec -s true (ExecSync)", sync);

    let mut rows = Vec::new();
    let mut row = |what: String, r: Result<Duration, String>| {
        let v = match r {
            Ok(d) => {
                println!("  {what:<52} {:>8.0} MiB/s", mibs(d));
                mibs(d)
            }
            Err(e) => {
                println!("  {what:<52} failed: {e}");
                f64::NAN
            }
        };
        rows.push((what, v));
    };
    for t in TRANSPORTS {
        let out = median3(|| timed(in_netns(netns, c.cmd(&["exec", "--transport", t, &web, "cat", FILE])), 0, Want::Stdout(BYTES)));
        row(format!("crictl exec cat of {mib} MiB, out ({t})"), out);
        // Whole blocks, so that its summary counts what it took.
        let cmd = || in_netns(netns, c.cmd(&["exec", "-i", "--transport", t, &web, "dd", "of=/dev/null", "bs=1M", "iflag=fullblock"]));
        let took = || Want::Stderr(format!("{mib}+0 records in"));
        row(format!("crictl exec -i, {mib} MiB in to dd ({t})"), median3(|| timed(cmd(), BYTES, took())));
        let forward = Forward::start(c, &pod, t, netns)
            .and_then(|f| median3(|| fetch(netns.map(PathBuf::from), f.port)).map_err(|e| format!("{e}; crictl: {}", f.why())));
        row(format!("crictl port-forward, GET of {mib} MiB ({t})"), forward);
    }
    match web_pid {
        Ok(pid) => {
            let cat = || {
                let mut cat = Command::new("nsenter");
                cat.args(["-t", &pid.to_string(), "-m", "cat", FILE]);
                cat
            };
            row(format!("{RAW}cat of {mib} MiB in the container's mounts, into a pipe"), median3(|| timed(cat(), 0, Want::Stdout(BYTES))));
            let ns = PathBuf::from(format!("/proc/{pid}/ns/net"));
            row(format!("{RAW}GET of {mib} MiB on the pod's loopback"), median3(|| fetch(Some(ns.clone()), PORT)));
        }
        Err(e) => println!("  raw paths: {e}"),
    }
    let _ = c.cmd(&["rmp", "-f", &pod]).stdout(Stdio::null()).stderr(Stdio::null()).status();
    Figures { exec_sync_ms, rows }
}

/// Waits until the web container's httpd runs (its file is written before), and finds
/// its process: the newest one with its command line.
fn wait_for_httpd(c: &Crictl, web: &str) -> Result<u32, String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let up = c.cmd(&["exec", "-s", web, "sh", "-c", "pidof httpd"]).stdout(Stdio::null()).stderr(Stdio::null()).status();
        if up.is_ok_and(|s| s.success()) {
            break;
        }
        if Instant::now() > deadline {
            return Err("the web container's httpd did not start in 60 s".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = Command::new("pgrep").args(["-n", "-f", HTTPD]).output().map_err(|e| format!("pgrep: {e}"))?;
    String::from_utf8_lossy(&out.stdout).trim().parse().map_err(|_| format!("no process runs {HTTPD:?}"))
}

/// A child killed when dropped.
/// A child under [`bounded`], killed with everything it started when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        // `timeout` leads a process group of its own: killing it alone would orphan the
        // command under it.
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(self.0.id() as i32), nix::sys::signal::Signal::SIGKILL);
        let _ = self.0.wait();
    }
}

/// Both runtimes' figures, side by side.
pub fn compare(ours: &Figures, theirs: &Figures) {
    // The last column: how many times faster minipod is.
    println!("{:<52} {:>8} {:>11} {:>20}", "streaming", "minipod", "containerd", "minipod is faster by");
    println!(
        "{:<52} {:>8.2} {:>11.2} {:>19.2}x",
        "ExecSync true (ms, lower is better)",
        ours.exec_sync_ms,
        theirs.exec_sync_ms,
        theirs.exec_sync_ms / ours.exec_sync_ms
    );
    for (what, a) in &ours.rows {
        let b = theirs.rows.iter().find(|(w, _)| w == what).map_or(f64::NAN, |(_, v)| *v);
        let what = format!("{what} (MiB/s)");
        if what.starts_with(RAW) {
            println!("{what:<52} {a:>8.0} {b:>11.0}");
        } else {
            println!("{what:<52} {a:>8.0} {b:>11.0} {:>19.2}x", a / b);
        }
    }
}
