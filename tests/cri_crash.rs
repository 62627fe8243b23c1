//! The daemon killed with SIGKILL in the middle of RunPodSandbox, CreateContainer,
//! StopPodSandbox, RemovePodSandbox, StopContainer and RemoveContainer (four requests
//! at once, at points a seeded schedule picks), then started again: every pod is listed
//! consistently (ready with a network that answers, or not ready without an IP), every
//! container is created, running or exited and can be removed, no name is blocked, and once
//! everything is removed nothing is left: no link, address, route, neighbour or nft
//! element in the node, no mount, cgroup, process, claim, address file or temporary
//! file of the state dir.
//!
//! `MINIPOD_CRASH_SEED` and `MINIPOD_CRASH_ROUNDS` replay or lengthen a schedule; a
//! failure names the seed, the round, the phase and the moment of the kill.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::cri::{ctr_json, pod_json, Daemon};
use support::node::TestNode;
use support::{host_mounts_mention, need_root, processes_mentioning, Harness};

/// The request kinds the kills land in, in turn.
#[derive(Debug, Clone, Copy)]
enum Phase {
    RunPod,
    CreateContainer,
    StopPod,
    RemovePod,
    StopContainer,
    RemoveContainer,
}

const PHASES: [Phase; 6] =
    [Phase::RunPod, Phase::CreateContainer, Phase::StopPod, Phase::RemovePod, Phase::StopContainer, Phase::RemoveContainer];
/// Requests in flight when the kill comes.
const CONCURRENT: usize = 4;

/// xorshift64*: the schedule must be the same on every machine for one seed.
struct Schedule(u64);

impl Schedule {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % below
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[test]
fn a_daemon_killed_in_the_middle_of_pod_requests_comes_back_consistent_and_leaves_nothing() {
    need_root();
    let seed = env_u64("MINIPOD_CRASH_SEED", 0x6d_696e_6970_6f64);
    let rounds = env_u64("MINIPOD_CRASH_ROUNDS", 18);
    let mut schedule = Schedule(seed | 1);
    let node = TestNode::new("crash");
    let mut d = Daemon::start(Harness::new("crash"), &node.node_ns());
    d.import_busybox();
    let logs = d.h.base.join("logs");
    // The node as a pod's coming and going leaves it (the firewall's table stays).
    let warm = d.write("warm.json", &pod_json("warm", &logs, json!([])));
    let warm = d.ok(&["runp", &warm]).trim().to_string();
    d.ok(&["rmp", "-f", &warm]);
    let before = NodeView::take(&node.node_ns());
    let mut seen_pods = BTreeSet::new();
    for round in 0..rounds {
        let phase = PHASES[round as usize % PHASES.len()];
        // From before the first request reaches the daemon to after the last is done.
        let delay = Duration::from_millis(5 + schedule.next(150));
        let names: Vec<String> = (0..CONCURRENT).map(|i| format!("r{round}-p{i}")).collect();
        let configs: Vec<String> = names.iter().map(|n| d.write(&format!("{n}.json"), &pod_json(n, &logs, json!([])))).collect();
        let sleeper = d.write("sleeper.json", &ctr_json("sleeper", &["sleep", "300"]));
        // What the killed requests work on.
        let (ready, ctrs): (Vec<String>, Vec<String>) = match phase {
            Phase::RunPod => (vec![], vec![]),
            Phase::CreateContainer => (configs.iter().take(2).map(|c| d.ok(&["runp", c]).trim().to_string()).collect(), vec![]),
            Phase::StopPod | Phase::RemovePod | Phase::StopContainer | Phase::RemoveContainer => configs
                .iter()
                .map(|c| {
                    let pod = d.ok(&["runp", c]).trim().to_string();
                    let ctr = d.ok(&["create", &pod, &sleeper, c]).trim().to_string();
                    d.ok(&["start", &ctr]);
                    (pod, ctr)
                })
                .unzip(),
        };
        let context = format!("seed {seed:#x}, round {round}, {phase:?}, killed after {delay:?}");
        let requests: Vec<Vec<String>> = (0..CONCURRENT)
            .map(|i| {
                let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
                match phase {
                    Phase::RunPod => s(&["runp", &configs[i]]),
                    Phase::CreateContainer => {
                        let ctr = d.write(&format!("c{round}-{i}.json"), &ctr_json(&format!("c{i}"), &["sleep", "300"]));
                        s(&["create", &ready[i % ready.len()], &ctr, &configs[i % ready.len()]])
                    }
                    Phase::StopPod => s(&["stopp", &ready[i]]),
                    Phase::RemovePod => s(&["rmp", "-f", &ready[i]]),
                    Phase::StopContainer => s(&["stop", "-t", "1", &ctrs[i]]),
                    Phase::RemoveContainer => s(&["rm", "-f", &ctrs[i]]),
                }
            })
            .collect();
        let daemon = d.child.as_ref().map(|c| c.id() as i32).expect("the daemon runs");
        std::thread::scope(|s| {
            for args in &requests {
                let d = &d;
                // Fails or not, as the kill decides; what it left is checked below.
                s.spawn(move || d.crictl(&args.iter().map(String::as_str).collect::<Vec<_>>()));
            }
            std::thread::sleep(delay);
            // SAFETY: signalling our own child, reaped below.
            unsafe { libc::kill(daemon, libc::SIGKILL) };
        });
        d.kill(libc::SIGKILL);
        d.spawn();
        let pods = check_consistent(&d, &node, &context);
        seen_pods.extend(pods.iter().cloned());
        // A container the killed requests worked on can still be removed.
        let listed = d.ok(&["ps", "-a", "-q"]);
        for c in ctrs.iter().filter(|c| listed.contains(c.as_str())) {
            let out = d.crictl(&["rm", "-f", c]);
            assert!(out.status.success(), "{context}: container {c} cannot be removed: {}", String::from_utf8_lossy(&out.stderr));
        }
        // No name is blocked: each one no pod carries can be run again.
        if matches!(phase, Phase::RunPod) {
            let listed: Vec<String> =
                pods.iter().map(|id| inspectp(&d, id)["status"]["metadata"]["name"].as_str().unwrap_or_default().to_string()).collect();
            for (name, cfg) in names.iter().zip(&configs) {
                if !listed.contains(name) {
                    let out = d.crictl(&["runp", cfg]);
                    assert!(out.status.success(), "{context}: pod name {name} is blocked: {}", String::from_utf8_lossy(&out.stderr));
                    seen_pods.insert(String::from_utf8_lossy(&out.stdout).trim().to_string());
                }
            }
        }
        for id in d.ok(&["pods", "-q"]).split_whitespace() {
            d.ok(&["stopp", id]);
            d.ok(&["rmp", id]);
        }
        check_nothing_left(&d, &node, &before, &seen_pods, &context);
    }
}

/// A second daemon on a socket that one serves is refused, and the first still serves
/// on its own socket; of two started at once, one serves and the other is refused (a
/// look at the socket alone lets both through when both look before either binds).
#[test]
fn a_second_daemon_on_a_served_socket_is_refused_also_when_both_start_at_once() {
    use std::os::unix::fs::MetadataExt;
    use std::process::Stdio;
    need_root();
    let node = TestNode::new("twodaemons");
    let mut d = Daemon::start(Harness::new("cri-two"), &node.node_ns());
    let socket_inode = |d: &Daemon| std::fs::metadata(&d.sock).map(|m| m.ino()).unwrap();
    let first = socket_inode(&d);
    let second = d.serve_command().stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let out = wait_within(second, Duration::from_secs(60), "the second daemon");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && said.contains("another daemon already serves"), "the second daemon: {:?} {said}", out.status);
    assert_eq!(socket_inode(&d), first, "the second daemon replaced the first's socket");
    d.ok(&["version"]);
    d.kill(libc::SIGTERM);
    for round in 0..3 {
        let logs: Vec<PathBuf> = (0..2).map(|i| d.h.base.join(format!("race-{round}-{i}.log"))).collect();
        // Each in the guard as soon as it runs, so that a failure starting the second stops the first.
        let mut both = Stopped(Vec::new());
        for log in &logs {
            let log = std::fs::File::create(log).unwrap();
            both.0.push(d.serve_command().stdin(Stdio::null()).stdout(Stdio::null()).stderr(log).spawn().unwrap());
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        let refused = loop {
            if let Some(i) = both.0.iter_mut().position(|c| c.try_wait().unwrap().is_some()) {
                break i;
            }
            assert!(Instant::now() < deadline, "round {round}: both daemons still run after 60 s");
            std::thread::sleep(Duration::from_millis(20));
        };
        let said = std::fs::read_to_string(&logs[refused]).unwrap();
        assert!(said.contains("another daemon already serves"), "round {round}: a daemon ended, but not refused: {said}");
        let serving = &mut both.0[1 - refused];
        while std::os::unix::net::UnixStream::connect(&d.sock).is_err() {
            assert!(
                serving.try_wait().unwrap().is_none(),
                "round {round}: neither daemon serves: {}",
                std::fs::read_to_string(&logs[1 - refused]).unwrap()
            );
            assert!(Instant::now() < deadline, "round {round}: the other daemon never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
        d.ok(&["version"]);
    }
}

/// Daemons a test started itself: stopped (SIGTERM) and reaped however it ends.
struct Stopped(Vec<std::process::Child>);

impl Drop for Stopped {
    fn drop(&mut self) {
        for child in &mut self.0 {
            if matches!(child.try_wait(), Ok(None)) {
                // SAFETY: signalling our own child, not yet reaped.
                unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            }
            let _ = child.wait();
        }
    }
}

/// The output of `child` once it ends; killed, and the test failed, after `bound`.
fn wait_within(mut child: std::process::Child, bound: Duration, what: &str) -> std::process::Output {
    let deadline = Instant::now() + bound;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} still ran after {bound:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn inspectp(d: &Daemon, id: &str) -> Value {
    serde_json::from_str(&d.ok(&["inspectp", id])).unwrap_or(Value::Null)
}

/// Every listed pod inspects; a ready one has an IP that answers from the node, a not
/// ready one reports none; every container belongs to a listed pod. Returns the pods.
fn check_consistent(d: &Daemon, node: &TestNode, context: &str) -> Vec<String> {
    let pods: Vec<String> = d.ok(&["pods", "-q"]).split_whitespace().map(str::to_string).collect();
    for id in &pods {
        let p = inspectp(d, id);
        let ip = p["status"]["network"]["ip"].as_str().unwrap_or_default();
        match p["status"]["state"].as_str() {
            Some("SANDBOX_READY") => {
                let ip = ip.parse().unwrap_or_else(|_| panic!("{context}: ready pod {id} has no IP: {p}"));
                assert!(TestNode::ping(&node.node_ns(), ip), "{context}: ready pod {id} does not answer at {ip}: {p}");
            }
            Some("SANDBOX_NOTREADY") => assert!(ip.is_empty(), "{context}: pod {id} is not ready but reports {ip}"),
            other => panic!("{context}: pod {id} in state {other:?}"),
        }
    }
    let ps: Value = serde_json::from_str(&d.ok(&["ps", "-a", "-o", "json"])).unwrap_or(Value::Null);
    for c in ps["containers"].as_array().into_iter().flatten() {
        let state = c["state"].as_str().unwrap_or_default();
        assert!(
            ["CONTAINER_CREATED", "CONTAINER_RUNNING", "CONTAINER_EXITED"].contains(&state),
            "{context}: container {} is {state}",
            c["id"]
        );
        let pod = c["podSandboxId"].as_str().unwrap_or_default();
        assert!(pods.iter().any(|p| p == pod), "{context}: container {} of pod {pod}, which is not listed", c["id"]);
    }
    pods
}

/// What of the node namespace a pod can leave behind.
struct NodeView(BTreeSet<String>);

impl NodeView {
    fn take(ns: &Path) -> Self {
        let mut lines = BTreeSet::new();
        for (kind, args) in [
            ("link", &["ip", "-o", "link", "show"][..]),
            ("address", &["ip", "-o", "addr", "show"]),
            ("route", &["ip", "route", "show", "table", "all"]),
            ("neighbour", &["ip", "neigh", "show", "nud", "permanent"]),
            ("nft", &["nft", "list", "ruleset"]),
        ] {
            let out = TestNode::in_ns(ns, args);
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                // Counters and link state change on their own.
                let line = line.split(" state ").next().unwrap_or(line).split(" counter ").next().unwrap_or(line).trim();
                if !line.is_empty() {
                    lines.insert(format!("{kind}: {line}"));
                }
            }
        }
        NodeView(lines)
    }
}

fn check_nothing_left(d: &Daemon, node: &TestNode, before: &NodeView, pods: &BTreeSet<String>, context: &str) {
    assert_eq!(d.ok(&["pods", "-q"]).trim(), "", "{context}: pods left after removing all");
    let mut files = vec![];
    walk(&d.h.root, &mut files);
    let left: Vec<&PathBuf> = files
        .iter()
        .filter(|p| {
            let s = p.to_string_lossy();
            let rel = p.strip_prefix(&d.h.root).map(|r| r.to_string_lossy().into_owned()).unwrap_or_default();
            s.contains(".tmp.")
                || (rel.starts_with("pods/") && !rel.starts_with("pods/.names"))
                || (rel.starts_with("pods/.names/") && rel.matches('/').count() >= 3 && !rel.ends_with("/lock"))
                || rel.contains("/members/")
                || rel.contains("/ipam/ips/")
                || rel.contains("/ipam/owners/")
        })
        .collect();
    assert!(left.is_empty(), "{context}: left in the state dir: {left:#?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    // The kernel deletes a removed namespace's veth in the background.
    let added = loop {
        let now = NodeView::take(&node.node_ns());
        let added: Vec<&String> = now.0.difference(&before.0).collect();
        if added.is_empty() || Instant::now() > deadline {
            break added.into_iter().cloned().collect::<Vec<_>>();
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(added.is_empty(), "{context}: left in the node: {added:#?}\nstate dir: {files:#?}");
    assert!(!host_mounts_mention(&d.h.root), "{context}: mounts of the state dir are left");
    let cgroups: Vec<String> = std::process::Command::new("find")
        .args(["/sys/fs/cgroup", "-type", "d", "-path", "*minipod*"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().map(str::to_string).collect())
        .unwrap_or_default();
    let stale: Vec<&String> = cgroups.iter().filter(|c| pods.iter().any(|p| c.contains(p.as_str()))).collect();
    assert!(stale.is_empty(), "{context}: cgroups left: {stale:#?}");
    let daemon = d.child.as_ref().map(|c| c.id() as i32);
    let procs: Vec<i32> = processes_mentioning(&d.h.root.to_string_lossy())
        .into_iter()
        .filter(|p| Some(*p) != daemon && *p != std::process::id() as i32)
        .collect();
    assert!(procs.is_empty(), "{context}: processes left: {procs:?}");
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            walk(&p, out);
        } else {
            out.push(p);
        }
    }
}
