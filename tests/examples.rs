//! The embedding examples, run as their docs tell users to run them (as root), each
//! checked for what its docs say it shows. `cargo test` builds them beside the test
//! binaries; they use the default state root, each on a private node of its own.

mod support;

use std::path::Path;
use std::process::Command;

use support::need_root;

/// What the default state root and image store keep once everything in them has gone:
/// their directories, and the name index's lock file.
const SKELETON: [&str; 9] = [
    "/run/minipod/instances",
    "/run/minipod/nodes",
    "/run/minipod/pods",
    "/run/minipod/pods/.names",
    "/run/minipod/pods/.names/.lock",
    "/var/lib/minipod/images",
    "/var/lib/minipod/images/images",
    "/var/lib/minipod/images/layers",
    "/var/lib/minipod/images/tmp",
];

/// Runs the built example `name` (bounded by `timeout`) on a fresh /run and /var/lib
/// of its own (tmpfs in a mount namespace of its own, so that neither the test's other
/// runs nor the machine's own directories are touched), and fails unless it succeeded
/// and left nothing in the default state root and image store but their directories;
/// its stdout.
fn example(name: &str) -> String {
    let exe = std::env::current_exe().expect("current_exe");
    let bin = exe.parent().and_then(Path::parent).expect("target dir").join("examples").join(name);
    assert!(bin.exists(), "{} is missing: `cargo test --workspace` builds the examples (or `cargo build --examples`)", bin.display());
    let script = "mount -t tmpfs minipod-example /run && mount -t tmpfs minipod-example /var/lib && timeout -k 10 120 \"$0\"; code=$?; echo '--- left:' >&2; find /run/minipod /var/lib/minipod -mindepth 1 2>/dev/null | sort >&2; exit $code";
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", script])
        .arg(&bin)
        .output()
        .expect("running unshare");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    assert!(out.status.success(), "example {name} failed ({}):\n{stdout}\n{stderr}", out.status);
    let (_, left) = stderr.rsplit_once("--- left:\n").unwrap_or_default();
    let left: Vec<&str> = left.lines().filter(|l| !SKELETON.contains(l)).collect();
    assert!(left.is_empty(), "example {name} left in its state root or image store: {left:?}");
    stdout
}

#[test]
fn run_busybox_prints_what_its_container_printed_and_how_it_exited() {
    need_root();
    let out = example("run_busybox");
    assert!(out.contains("hello from ") && out.contains(", I am PID 1\n"), "{out}");
    assert!(out.ends_with("the container exited with code 0\n"), "{out}");
}

#[test]
fn sidecar_reaches_the_app_over_the_pods_localhost() {
    need_root();
    let out = example("sidecar");
    assert!(out.contains("sidecar -> 127.0.0.1:9000: private\n"), "{out}");
    assert!(out.contains("the sidecar's view of the pod:\napp\n") && out.contains("eth0"), "{out}");
}

#[test]
fn test_harness_talks_to_a_published_port_from_the_test_process() {
    need_root();
    let out = example("test_harness");
    assert!(out.starts_with("127.0.0.1:8080 -> pod ") && out.contains(" port 80 answered: HTTP/1."), "{out}");
}

#[test]
fn two_pods_reach_each_other_by_name() {
    need_root();
    let out = example("two_pods");
    assert!(out.contains("client fetched http://web/: hello from web\n"), "{out}");
}
