//! Test harness: a private state root, busybox bundles and unique ids per test, and a
//! Drop guard that force-deletes every container the test made, also on panic.

#![allow(dead_code)]

pub mod cli;
pub mod cri;
pub mod node;
pub mod pods;
pub mod terminal;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use serde_json::Value;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// The `minipod` binary next to this test binary (`cargo test --workspace` builds it).
pub fn minipod_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join("minipod");
    assert!(bin.exists(), "{} is missing: run `cargo build -p minipod-cri` or `cargo test --workspace`", bin.display());
    bin
}

/// Runs the ignored helper test `name` of this test binary in a child process with
/// `envs`, and returns it once it printed READY (a harness that is then SIGKILLed).
pub fn ready_child(name: &str, envs: &[(&str, &std::ffi::OsStr)]) -> std::process::Child {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", name, "--ignored", "--nocapture", "--test-threads", "1"]).stdout(Stdio::piped()).stderr(Stdio::null());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !line.contains("READY") {
        line.clear();
        if std::io::BufRead::read_line(&mut out, &mut line).unwrap() == 0 || std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the child {name} never got ready");
        }
    }
    child
}

/// Fails the test unless it runs as root: these tests need real namespaces, mounts,
/// cgroups and nftables, and a test that returned early would pass having checked
/// nothing.
pub fn need_root() {
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    assert!(root, "this test needs root (real namespaces, mounts, cgroups, nftables): run the suite as root, as the README's test command does (`bash scripts/test.sh`)");
}

/// True (the caller returns) on a cgroup v2 node for a test that checks cgroup v1
/// only; see [`skip`].
pub fn skip_on_cgroup_v2(test: &str, why: &str) -> bool {
    minipod_runtime::cgroups::is_unified() && skip(test, &format!("this is a cgroup v2 node and {why}"))
}

/// Records that `test` could not run here and why: said on stderr and written to
/// `$MINIPOD_TEST_SKIPS` (a directory, set by scripts/test.sh, which lists what it
/// holds at the end), so that a skip is never silent. Returns true, for the caller to
/// return.
pub fn skip(test: &str, why: &str) -> bool {
    let line = format!("{test}: not run: {why}");
    eprintln!("skipped: {line}");
    if let Some(dir) = std::env::var_os("MINIPOD_TEST_SKIPS") {
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::write(Path::new(&dir).join(test), line + "\n");
    }
    true
}

pub struct Harness {
    pub base: PathBuf,
    pub root: PathBuf,
    ids: Mutex<Vec<String>>,
}

/// One bundle: a busybox rootfs and a config.json the test can edit before use.
pub struct TestBundle {
    pub dir: PathBuf,
    pub config: Value,
}

impl TestBundle {
    /// Writes the (possibly edited) config.json.
    pub fn write(&self) -> &Path {
        std::fs::write(self.dir.join("config.json"), serde_json::to_vec_pretty(&self.config).unwrap()).unwrap();
        &self.dir
    }
}

impl Harness {
    pub fn new(name: &str) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let base = std::env::temp_dir().join(format!("minipod-test-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        let root = base.join("state");
        Harness { base, root, ids: Mutex::new(Vec::new()) }
    }

    /// A fresh id, unique across tests and across concurrent runs of the suite.
    pub fn id(&self, name: &str) -> String {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let id = format!("{name}-{}-{n}", std::process::id());
        self.ids.lock().unwrap().push(id.clone());
        id
    }

    /// A busybox bundle running `args` with the default spec of `minipod spec`.
    pub fn bundle(&self, args: &[&str]) -> TestBundle {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir = self.base.join(format!("bundle-{n}"));
        let rootfs = dir.join("rootfs");
        std::fs::create_dir_all(&rootfs).unwrap();
        minipod_runtime::busybox::build_rootfs(&rootfs).expect("busybox rootfs (apt-get install busybox-static)");
        let mut config: Value = serde_json::from_str(&minipod_runtime::spec::default_spec_json()).unwrap();
        config["process"]["args"] = args.iter().map(|a| Value::from(*a)).collect();
        let b = TestBundle { dir, config };
        b.write();
        b
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(minipod_bin());
        c.arg("--root").arg(&self.root).args(args);
        c.stdin(Stdio::null());
        c
    }

    /// Runs minipod and returns its output (stdout and stderr captured).
    pub fn minipod(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("spawn minipod")
    }

    /// `minipod run` of a bundle under a fresh id; returns (exit code, stdout, stderr).
    pub fn run(&self, bundle: &TestBundle, name: &str) -> (i32, String, String) {
        self.run_dir(bundle.write(), name)
    }

    /// `minipod run` of a bundle directory whose config.json is already written.
    pub fn run_dir(&self, dir: &Path, name: &str) -> (i32, String, String) {
        let id = self.id(name);
        let dir = dir.to_str().unwrap();
        let out = self.minipod(&["run", "--bundle", dir, &id]);
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `minipod create`, with the container's stdio on /dev/null so output() returns.
    pub fn create(&self, bundle: &TestBundle, name: &str) -> String {
        let id = self.id(name);
        let dir = bundle.write().to_str().unwrap().to_string();
        // The container inherits create's stdio (as with runc): a pipe would stay open
        // as long as it runs, so stderr goes to a file.
        let log = self.base.join(format!("{id}.create.err"));
        let err = std::fs::File::create(&log).unwrap();
        let status = self.cmd(&["create", "--bundle", &dir, &id]).stdout(Stdio::null()).stderr(err).status().unwrap();
        assert!(status.success(), "create {id}: {}", std::fs::read_to_string(&log).unwrap_or_default());
        id
    }

    pub fn state(&self, id: &str) -> Value {
        let out = self.minipod(&["state", id]);
        assert!(out.status.success(), "state {id}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Polls `minipod state` until the container reports `status` (5 s at most).
    pub fn wait_for_status(&self, id: &str, status: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let out = self.minipod(&["state", id]);
            let now: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
            if now["status"] == status {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "{id} never became {status}: {now}");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// Waits (5 s at most) until the running container `id` has created `path`, seen
    /// from the host through its root: a workload saying it is ready.
    pub fn wait_for_file_in(&self, id: &str, path: &str) {
        let pid = self.state(id)["pid"].as_i64().expect("a running container has a pid");
        let marker = format!("/proc/{pid}/root{path}");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !Path::new(&marker).exists() {
            assert!(std::time::Instant::now() < deadline, "{id} never created {path}");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    pub fn state_dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        for id in self.ids.lock().map(|v| v.clone()).unwrap_or_default() {
            if self.root.join(&id).exists() {
                let _ = self.cmd(&["delete", "--force", &id]).stdout(Stdio::null()).stderr(Stdio::null()).status();
            }
        }
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

/// Host cgroup directories of container `id` under the default cgroups path.
pub fn cgroup_dirs(id: &str) -> Vec<PathBuf> {
    ["memory", "pids", "cpu", "freezer"].iter().map(|c| PathBuf::from(format!("/sys/fs/cgroup/{c}/minipod/{id}"))).collect()
}

/// Whether any mount on the host mentions `needle` (a test's base dir).
pub fn host_mounts_mention(needle: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo").unwrap().contains(needle.to_str().unwrap())
}

/// PIDs of processes whose command line mentions `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<i32> {
    let mut out = vec![];
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            if String::from_utf8_lossy(&cmd).contains(needle) {
                out.push(pid);
            }
        }
    }
    out
}

/// A mount the test made on the node; unmounted (lazily) on drop.
pub struct NodeMount(pub PathBuf);

impl NodeMount {
    pub fn tmpfs(at: &std::path::Path) -> Self {
        std::fs::create_dir_all(at).unwrap();
        assert!(std::process::Command::new("mount").args(["-t", "tmpfs", "tmpfs"]).arg(at).status().unwrap().success());
        NodeMount(at.to_path_buf())
    }

    /// `at` bound onto itself and made a shared mount, as a kubelet's volume dirs are.
    pub fn shared(at: &std::path::Path) -> Self {
        std::fs::create_dir_all(at).unwrap();
        assert!(std::process::Command::new("mount").args(["--bind"]).arg(at).arg(at).status().unwrap().success());
        let guard = NodeMount(at.to_path_buf());
        assert!(std::process::Command::new("mount").args(["--make-rshared"]).arg(at).status().unwrap().success());
        guard
    }
}

impl Drop for NodeMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-R").arg("-l").arg(&self.0).status();
    }
}

/// Runs the shell command `line` on a pseudo-terminal of script(1)'s, which types
/// `typed` on it (its stdin stays open until the command ends); (its output, its
/// stderr).
pub fn on_a_terminal(line: &str, typed: &[u8]) -> (String, String) {
    use std::io::{Read, Write};
    let mut script = Command::new("script")
        .args(["-qec", line, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut typing = script.stdin.take().unwrap();
    typing.write_all(typed).unwrap();
    let mut stdout = Vec::new();
    script.stdout.take().unwrap().read_to_end(&mut stdout).unwrap();
    let out = script.wait_with_output().unwrap();
    drop(typing);
    (String::from_utf8_lossy(&stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}
