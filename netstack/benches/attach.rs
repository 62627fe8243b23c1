//! Attach and detach latency of a pod network namespace at the 1st, 100th and 1000th
//! pod of one network: minipod's netstack against the CNI chain a CRI runtime runs
//! (bridge with host-local IPAM and ipMasq, then portmap), side by side.
//!
//! Run as root: `cargo bench -p minipod-netstack --bench attach`. Everything happens
//! inside a throwaway node namespace that this process enters first, so the host's
//! interfaces and firewall are never touched. MINIPOD_NETBENCH_PROBES sets the probes
//! per position (default 30); MINIPOD_NETBENCH_POSITIONS the pod numbers to probe at
//! (default `1,100,1000`; the CNI side stops at 1000, as its bridge takes at most 1023
//! ports); MINIPOD_NETBENCH_RUNS how many times the minipod side is measured, each
//! time on a fresh network (default 3: this VM's run-to-run spread is ±15%, so one
//! run says little about a 10% bound; the table shows the median of the runs);
//! MINIPOD_NETBENCH_IPV6 set makes the networks dual-stack; MINIPOD_NETBENCH_NO_CNI
//! set (to anything) leaves out the CNI side.

use std::io::Write;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use minipod_netstack::netns::{create_pinned, remove_pinned};
use minipod_netstack::{AttachRequest, IfName, NetworkConfig, NetworkName, Node, OwnerId};

const POSITIONS: [usize; 3] = [1, 100, 1000];
/// A Linux bridge's port limit is 1023: CNI's bridge plugin cannot go further.
const CNI_MAX: usize = 1000;
const BATCH: usize = 20;
const CNI_PATH: &str = "/usr/lib/cni";

struct Pods {
    dir: PathBuf,
    made: Vec<PathBuf>,
}

impl Pods {
    fn make(&mut self, name: &str) -> PathBuf {
        let p = self.dir.join(name);
        create_pinned(&p).expect("pod namespace");
        self.made.push(p.clone());
        p
    }
}

impl Drop for Pods {
    fn drop(&mut self) {
        for p in &self.made {
            let _ = remove_pinned(p);
        }
    }
}

fn stats(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1000.0;
    (at(0.5), at(0.99))
}

trait Wiring {
    fn name(&self) -> &'static str;
    fn attach(&mut self, id: &str, netns: &Path);
    fn detach(&mut self, id: &str, netns: &Path);
}

struct Minipod {
    rt: tokio::runtime::Runtime,
    node: Node,
    net: NetworkName,
}

impl Wiring for Minipod {
    fn name(&self) -> &'static str {
        "minipod"
    }
    fn attach(&mut self, id: &str, netns: &Path) {
        let req = AttachRequest { dns_names: vec![id.to_string()], ..AttachRequest::new(OwnerId::new(id).expect("id"), netns) };
        self.rt.block_on(self.node.attach(&self.net, req)).expect("minipod attach");
    }
    /// The pod teardown path: forget the member, release its namespace; the kernel
    /// removes the veth in the background.
    fn detach(&mut self, id: &str, netns: &Path) {
        self.rt.block_on(self.node.detach_released(&self.net, &OwnerId::new(id).expect("id"))).expect("minipod detach");
        remove_pinned(netns).expect("releasing the namespace");
    }
}

struct Cni {
    data_dir: PathBuf,
}

impl Cni {
    fn bridge_conf(&self) -> serde_json::Value {
        serde_json::json!({
            "cniVersion": "1.0.0", "name": "cnibench", "type": "bridge", "bridge": "cnibench0",
            "isGateway": true, "ipMasq": true,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.91.0.0/16"}]], "dataDir": self.data_dir}
        })
    }

    fn plugin(&self, plugin: &str, command: &str, id: &str, netns: &Path, conf: &serde_json::Value) -> serde_json::Value {
        let mut child = Command::new(Path::new(CNI_PATH).join(plugin))
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", id)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", CNI_PATH)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running a CNI plugin");
        child.stdin.take().expect("stdin").write_all(conf.to_string().as_bytes()).expect("config");
        let out = child.wait_with_output().expect("CNI plugin");
        assert!(
            out.status.success(),
            "{plugin} {command}: {} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    }

    fn portmap_conf(prev: serde_json::Value) -> serde_json::Value {
        serde_json::json!({"cniVersion": "1.0.0", "name": "cnibench", "type": "portmap", "capabilities": {"portMappings": true}, "prevResult": prev})
    }
}

impl Wiring for Cni {
    fn name(&self) -> &'static str {
        "CNI bridge+host-local+portmap"
    }
    fn attach(&mut self, id: &str, netns: &Path) {
        let result = self.plugin("bridge", "ADD", id, netns, &self.bridge_conf());
        self.plugin("portmap", "ADD", id, netns, &Self::portmap_conf(result));
    }
    /// DEL of the chain, then the runtime releases the namespace, as containerd does.
    fn detach(&mut self, id: &str, netns: &Path) {
        self.plugin("portmap", "DEL", id, netns, &Self::portmap_conf(serde_json::Value::Null));
        self.plugin("bridge", "DEL", id, netns, &self.bridge_conf());
        remove_pinned(netns).expect("releasing the namespace");
    }
}

/// Latencies at one fill level: (p50, p99) in ms for attach and for detach.
struct Row {
    pos: usize,
    attach: (f64, f64),
    detach: (f64, f64),
}

/// Fills the network up to each position and probes attach+detach there.
fn measure(w: &mut dyn Wiring, pods: &mut Pods, probes: usize, positions: &[usize], tag: &str) -> Vec<Row> {
    let mut rows = Vec::new();
    // A warm-up batch, not counted: the first attaches of a process pay for page
    // faults, thread pools and caches, which would land on the 1st pod only.
    for i in 0..BATCH {
        let (id, ns) = (format!("warmup-{i}"), pods.make(&format!("{tag}-warmup-{i}")));
        w.attach(&id, &ns);
        w.detach(&id, &ns);
    }
    std::thread::sleep(Duration::from_millis(300));
    let mut filled = 0;
    for &pos in positions {
        while filled < pos - 1 {
            let id = format!("{}-fill-{filled}", w.name().len());
            let ns = pods.make(&format!("{tag}-fill-{filled}"));
            w.attach(&id, &ns);
            filled += 1;
        }
        // Probe a settled network, as at the 1st pod: the last fill attaches leave
        // kernel work behind (link watch, neighbour timers) that would land on the probes.
        std::thread::sleep(Duration::from_millis(500));
        // Probes go in batches: attach a batch, then tear it all down, so that a
        // teardown's background work (the kernel deleting veths of released namespaces)
        // does not land on the next probe's attach, and a network never holds more than
        // pos + BATCH - 1 members (CNI's bridge takes at most 1023).
        let (mut attach, mut detach) = (Vec::new(), Vec::new());
        for batch in (0..probes).collect::<Vec<_>>().chunks(BATCH) {
            let mut attached = Vec::new();
            for i in batch {
                let id = format!("probe-{pos}-{i}");
                let ns = pods.make(&format!("{tag}-probe-{pos}-{i}"));
                let t = Instant::now();
                w.attach(&id, &ns);
                attach.push(t.elapsed());
                attached.push((id, ns));
            }
            for (id, ns) in attached {
                let t = Instant::now();
                w.detach(&id, &ns);
                detach.push(t.elapsed());
            }
            // Let the kernel finish deleting the released veths.
            std::thread::sleep(Duration::from_millis(300));
        }
        rows.push(Row { pos, attach: stats(attach), detach: stats(detach) });
    }
    rows
}

fn main() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        println!("attach benchmark skipped: it needs root (network namespaces)");
        return;
    }
    let probes: usize = std::env::var("MINIPOD_NETBENCH_PROBES").ok().and_then(|v| v.parse().ok()).unwrap_or(30);
    let mut positions: Vec<usize> = match std::env::var("MINIPOD_NETBENCH_POSITIONS") {
        Ok(v) => v.split(',').map(|p| p.trim().parse().expect("MINIPOD_NETBENCH_POSITIONS: pod numbers, like 1,100,1000")).collect(),
        Err(_) => POSITIONS.to_vec(),
    };
    positions.retain(|p| *p > 0);
    positions.sort();
    positions.dedup();
    assert!(!positions.is_empty(), "MINIPOD_NETBENCH_POSITIONS: give at least one pod number");
    let base = PathBuf::from(format!("/run/minipod-netbench-{}", std::process::id()));
    std::fs::create_dir_all(&base).expect("bench dir");
    let _host_dir = RemoveDir(base.clone());
    // A mount namespace of our own, with the state on a tmpfs as DESIGN.md has it (on
    // a disk filesystem, inode allocation for the state files took ~15% of the CPU)
    // and the namespace pins visible to this process only: when it exits, panicking or
    // not, the kernel frees every namespace it made.
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).expect("a mount namespace for the benchmark");
    nix::mount::mount(None::<&str>, "/", None::<&str>, nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE, None::<&str>)
        .expect("making the mount namespace private");
    nix::mount::mount(Some("tmpfs"), &base, Some("tmpfs"), nix::mount::MsFlags::empty(), Some("mode=0700"))
        .expect("tmpfs for the benchmark");
    std::fs::create_dir_all(base.join("pods")).expect("bench dir");
    let node_path = base.join("node");
    let node_ns = create_pinned(&node_path).expect("node namespace");
    // From here on this thread, the threads it starts and the plugins it runs all live
    // in the node namespace.
    nix::sched::setns(node_ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("entering the node namespace");
    let _ = Command::new("ip").args(["link", "set", "lo", "up"]).status();

    let runs: usize = std::env::var("MINIPOD_NETBENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(3).clamp(1, 20);
    let dual_stack = std::env::var_os("MINIPOD_NETBENCH_IPV6").is_some();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio");
    let node = Node::new(base.join("state"), None).expect("node");
    let mut m = Minipod { rt, node, net: NetworkName::new("bench0").expect("name") };

    println!(
        "attach + detach of a pod netns at the Nth pod of one network ({probes} probes per position, minipod: {runs} runs{}), \
         inside a throwaway node namespace",
        if dual_stack { ", dual-stack" } else { "" }
    );
    let mut minipod_runs = Vec::new();
    for run in 0..runs {
        let mut cfg = NetworkConfig::new(
            NetworkName::new(format!("bench{run}")).expect("name"),
            IfName::new(format!("mpbench{run}")).expect("bridge"),
            format!("10.{}.0.0/16", 100 + run).parse().expect("cidr"),
        );
        if dual_stack {
            cfg.subnet6 = Some(format!("fd00:{}::/64", 100 + run).parse().expect("cidr"));
        }
        m.net = m.rt.block_on(m.node.create_network(cfg)).expect("network").name;
        let mut pods = Pods { dir: base.join("pods"), made: vec![] };
        minipod_runs.push(measure(&mut m, &mut pods, probes, &positions, &format!("m{run}")));
        drop(pods);
        // The kernel deletes the released pods' veths in the background: let it finish
        // before the next run.
        wait_for_no_veths(Duration::from_secs(120));
    }
    let mut results = vec![(m.name(), median_rows(&minipod_runs))];
    if std::env::var_os("MINIPOD_NETBENCH_NO_CNI").is_some() {
        println!("skipping CNI: MINIPOD_NETBENCH_NO_CNI is set");
    } else if Path::new(CNI_PATH).join("bridge").exists() && which("iptables") {
        let mut pods = Pods { dir: base.join("pods"), made: vec![] };
        let mut c = Cni { data_dir: base.join("cni-ipam") };
        let cni_positions: Vec<usize> = positions.iter().copied().filter(|p| *p <= CNI_MAX).collect();
        results.push((c.name(), measure(&mut c, &mut pods, probes, &cni_positions, "cni")));
    } else {
        println!("skipping CNI: install containernetworking-plugins and iptables");
    }

    println!("{:<32} {:>6} {:>12} {:>10} {:>12} {:>10}", "", "pod #", "attach p50", "p99", "detach p50", "p99");
    for (name, rows) in &results {
        for Row { pos, attach: (a50, a99), detach: (d50, d99) } in rows {
            println!("{name:<32} {pos:>6} {a50:>10.2}ms {a99:>8.2}ms {d50:>10.2}ms {d99:>8.2}ms");
        }
    }
    if let [(_, ours), (_, cni)] = &results[..] {
        for (m, c) in ours.iter().zip(cni) {
            println!("pod #{}: CNI / minipod = {:.1}x attach, {:.1}x detach", m.pos, c.attach.0 / m.attach.0, c.detach.0 / m.detach.0);
        }
    }
    let growth: Vec<f64> = minipod_runs
        .iter()
        .filter_map(|rows| match &rows[..] {
            [first, .., last] => Some((last.attach.0 / first.attach.0 - 1.0) * 100.0),
            _ => None,
        })
        .collect();
    if let (Some(first), Some(last)) = (positions.first(), positions.last()) {
        if !growth.is_empty() {
            let each: Vec<String> = growth.iter().map(|g| format!("{g:+.0}%")).collect();
            println!(
                "minipod attach p50, pod #{last} vs pod #{first}, per run: {} (median {:+.0}%)",
                each.join(", "),
                median(growth.clone())
            );
        }
    }
    drop(node_ns);
    let _ = remove_pinned(&node_path);
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Each position's figures, the median over the runs.
fn median_rows(runs: &[Vec<Row>]) -> Vec<Row> {
    let pick = |i: usize, f: &dyn Fn(&Row) -> f64| median(runs.iter().map(|r| f(&r[i])).collect());
    (0..runs[0].len())
        .map(|i| Row {
            pos: runs[0][i].pos,
            attach: (pick(i, &|r| r.attach.0), pick(i, &|r| r.attach.1)),
            detach: (pick(i, &|r| r.detach.0), pick(i, &|r| r.detach.1)),
        })
        .collect()
}

fn wait_for_no_veths(limit: Duration) {
    let start = Instant::now();
    while start.elapsed() < limit {
        let out = Command::new("ip").args(["-o", "link", "show", "type", "veth"]).output();
        if out.map(|o| o.stdout.is_empty()).unwrap_or(true) {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Removes the benchmark's directory on the host, also when the benchmark panics.
struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn which(name: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
}
