//! Services and NetworkPolicy on the node's firewall: connection latency and rate from
//! one pod to another through a Service VIP against the pod IP directly, side by side
//! in one run, with no policy, with one service and the one policy that isolates the
//! server (letting the client in), and again with 1,000 services holding 10,000
//! endpoints and 1,000 policies; and the time to add or remove one endpoint, or one
//! policy, at 1, 10, 100 and 1,000 of them, from this process through libnftables
//! against an `nft` process per change (the baseline, measured by a second run of
//! this benchmark with MINIPOD_NFT_PROCESS set).
//!
//! Run as root: `cargo bench -p minipod-netstack --bench services`. Everything happens
//! inside a throwaway node namespace in a mount namespace of its own, as in the attach
//! benchmark. MINIPOD_SVCBENCH_CONNS sets the connections per side and size (default
//! 2,000, in rounds of 200 that alternate VIP and pod IP); MINIPOD_SVCBENCH_SVG where
//! the drawing goes (default target/services.svg).

#[path = "support/chart.rs"]
mod chart;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use minipod_netstack::netns::{create_pinned, remove_pinned};
use minipod_netstack::{
    AddrRange, AttachRequest, IfName, NetworkConfig, NetworkName, Node, NodePolicies, OwnerId, PolicyPort, PolicyRule, PolicyRules, Proto,
    ServicePort, VirtualService,
};

const SIZES: [usize; 4] = [1, 10, 100, 1000];
const ENDPOINTS_PER_SERVICE: usize = 10;
const ROUND: usize = 200;
const CHANGES: usize = 30;
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn percentiles(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1000.0;
    (at(0.5), at(0.99))
}

fn median_ms(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1000.0
}

/// The node namespace, entered by this thread (and so by every thread it starts).
fn enter_node(base: &Path) -> (Node, tokio::runtime::Runtime) {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).expect("a mount namespace for the benchmark");
    nix::mount::mount(None::<&str>, "/", None::<&str>, nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE, None::<&str>)
        .expect("making the mount namespace private");
    nix::mount::mount(Some("tmpfs"), base, Some("tmpfs"), nix::mount::MsFlags::empty(), Some("mode=0700"))
        .expect("tmpfs for the benchmark");
    let node_ns = create_pinned(&base.join("node")).expect("node namespace");
    nix::sched::setns(node_ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("entering the node namespace");
    let _ = Command::new("ip").args(["link", "set", "lo", "up"]).status();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio");
    (Node::new(base.join("state"), None).expect("node"), rt)
}

/// Service `i` of the filler: 10 endpoints that no packet goes to, in 10.121.0.0/16.
fn filler(i: usize) -> VirtualService {
    let endpoints = (0..ENDPOINTS_PER_SERVICE)
        .map(|e| SocketAddrV4::new(Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 121, 0, 1)) + (i * ENDPOINTS_PER_SERVICE + e) as u32), 8080))
        .collect();
    VirtualService {
        owner: format!("bench/filler-{i}"),
        ip: Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 100, 0, 1)) + i as u32),
        ports: vec![ServicePort { proto: Proto::Tcp, port: 80, name: None, endpoints, node_port: None }],
        dns: None,
        affinity: None,
    }
}

/// The service whose endpoints the benchmark measures and changes.
fn measured(endpoint: Ipv4Addr) -> VirtualService {
    VirtualService {
        owner: "bench/measured".into(),
        ip: VIP,
        ports: vec![ServicePort {
            proto: Proto::Tcp,
            port: 80,
            name: None,
            endpoints: vec![SocketAddrV4::new(endpoint, 8080)],
            node_port: None,
        }],
        dns: None,
        affinity: None,
    }
}

/// Policy `i` of the filler: isolates one address of 10.123.0.0/16 that no packet
/// goes to, letting in TCP 8080 from ten addresses of 10.124.0.0/16 and a /24.
fn filler_policy(i: usize) -> (String, PolicyRules) {
    let at = |base: Ipv4Addr, off: usize| Ipv4Addr::from(u32::from(base) + off as u32);
    let mut peers: Vec<AddrRange> = (0..10).map(|p| AddrRange::one(at(Ipv4Addr::new(10, 124, 0, 0), i * 16 + p))).collect();
    peers.push(AddrRange::of(ipnetwork::Ipv4Network::new(at(Ipv4Addr::new(10, 125, 0, 0), (i % 256) * 256), 24).expect("a /24")));
    let rules = PolicyRules {
        selected: vec![at(Ipv4Addr::new(10, 123, 0, 1), i).into()],
        ingress: Some(vec![PolicyRule {
            peers: Some(AddrRange::merged(peers)),
            ports: vec![PolicyPort { proto: Proto::Tcp, ports: Some((8080, 8080)) }],
            members: None,
        }]),
        egress: None,
    };
    (format!("bench/filler-{i}"), rules)
}

/// The policy that isolates the server and lets the client in.
fn measured_policy(server: Ipv4Addr, client: Ipv4Addr) -> NodePolicies {
    let rules = PolicyRules {
        selected: vec![server.into()],
        ingress: Some(vec![PolicyRule {
            peers: Some(vec![AddrRange::one(client)]),
            ports: vec![PolicyPort { proto: Proto::Tcp, ports: Some((8080, 8080)) }],
            members: None,
        }]),
        egress: None,
    };
    NodePolicies([("bench/measured".to_string(), rules)].into())
}

/// Grows `all` from its policies to each of SIZES and at each times adding and
/// removing one more policy, and adding a peer to one: (size, add ms, remove ms, peer
/// ms). Leaves `all` at the largest.
fn policy_changes(node: &Node, all: &mut NodePolicies) -> Vec<(usize, f64, f64, f64)> {
    let mut rows = Vec::new();
    for size in SIZES {
        let mut i = 0;
        while all.0.len() < size {
            let (owner, rules) = filler_policy(i);
            all.0.insert(owner, rules);
            i += 1;
        }
        node.program_policies(all).expect("programming the policies");
        let mut more = all.clone();
        let (_, rules) = filler_policy(5000);
        more.0.insert("bench/one-more".into(), rules);
        // A pod that becomes a peer of the measured policy (one pod starting).
        let mut peer = all.clone();
        if let Some(rule) = peer.0.get_mut("bench/measured").and_then(|p| p.ingress.as_mut()).and_then(|r| r.first_mut()) {
            rule.peers.get_or_insert_with(Vec::new).push(AddrRange::one(Ipv4Addr::new(10, 126, 0, 1)));
        }
        let (mut add, mut remove, mut joined) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..CHANGES {
            let t = Instant::now();
            node.program_policies(&more).expect("adding a policy");
            add.push(t.elapsed());
            let t = Instant::now();
            node.program_policies(all).expect("removing a policy");
            remove.push(t.elapsed());
            let t = Instant::now();
            node.program_policies(&peer).expect("adding a peer");
            joined.push(t.elapsed());
            node.program_policies(all).expect("removing a peer");
        }
        rows.push((size, median_ms(add), median_ms(remove), median_ms(joined)));
    }
    rows
}

/// Grows the node from the one `base` service to each of SIZES services and at each
/// times adding and removing one endpoint of `base`: (size, add ms, remove ms).
fn changes(node: &Node, base: &VirtualService) -> Vec<(usize, f64, f64)> {
    let mut made = 1;
    let mut rows = Vec::new();
    for size in SIZES {
        while made < size {
            node.program_service(&filler(made)).expect("programming a service");
            made += 1;
        }
        let base = base.clone();
        let mut more = base.clone();
        more.ports[0].endpoints.push(SocketAddrV4::new(Ipv4Addr::new(10, 122, 0, 1), 8080));
        let (mut add, mut remove) = (Vec::new(), Vec::new());
        for _ in 0..CHANGES {
            let t = Instant::now();
            node.program_service(&more).expect("adding an endpoint");
            add.push(t.elapsed());
            let t = Instant::now();
            node.program_service(&base).expect("removing an endpoint");
            remove.push(t.elapsed());
        }
        rows.push((size, median_ms(add), median_ms(remove)));
    }
    rows
}

/// `n` connections from inside `ns` to `to`, one after another: each connects, sends
/// a byte and reads the answer to its end.
fn connections(ns: &Path, to: SocketAddr, n: usize) -> Vec<Duration> {
    let ns = minipod_netstack::netns::Netns::open(ns).expect("client namespace");
    ns.run(move || {
        (0..n)
            .map(|_| {
                let t = Instant::now();
                let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5)).expect("connecting");
                s.write_all(b"x").expect("sending");
                let mut buf = Vec::new();
                s.read_to_end(&mut buf).expect("reading");
                t.elapsed()
            })
            .collect()
    })
    .expect("running in the client namespace")
}

struct Side {
    p50: f64,
    p99: f64,
    rate: f64,
}

/// VIP and pod IP in alternating rounds, so that both see the same machine.
fn compare(client: &Path, pod: SocketAddr, conns: usize) -> (Side, Side) {
    let (mut vip, mut direct) = (Vec::new(), Vec::new());
    let (mut vip_time, mut direct_time) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..conns.div_ceil(ROUND) {
        let t = Instant::now();
        vip.extend(connections(client, SocketAddr::new(VIP.into(), 80), ROUND));
        vip_time += t.elapsed();
        let t = Instant::now();
        direct.extend(connections(client, pod, ROUND));
        direct_time += t.elapsed();
    }
    let side = |v: Vec<Duration>, time: Duration| {
        let n = v.len() as f64;
        let (p50, p99) = percentiles(v);
        Side { p50, p99, rate: n / time.as_secs_f64() }
    };
    (side(vip, vip_time), side(direct, direct_time))
}

fn main() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        println!("services benchmark skipped: it needs root (network namespaces)");
        return;
    }
    let baseline_run = std::env::var_os("MINIPOD_NFT_PROCESS").is_some();
    let base = PathBuf::from(format!("/run/minipod-svcbench-{}", std::process::id()));
    std::fs::create_dir_all(&base).expect("bench dir");
    let _dir = RemoveDir(base.clone());
    if baseline_run {
        // The baseline's half: change times with an `nft` process per change.
        let (node, _rt) = enter_node(&base);
        let svc = measured(Ipv4Addr::new(10, 120, 0, 2));
        node.program_service(&svc).expect("the measured service");
        for (size, add, remove) in changes(&node, &svc) {
            println!("CHANGE {size} {add} {remove}");
        }
        let mut policies = measured_policy(Ipv4Addr::new(10, 120, 0, 2), Ipv4Addr::new(10, 120, 0, 3));
        for (size, add, remove, peer) in policy_changes(&node, &mut policies) {
            println!("PCHANGE {size} {add} {remove} {peer}");
        }
        return;
    }
    let conns: usize = std::env::var("MINIPOD_SVCBENCH_CONNS").ok().and_then(|v| v.parse().ok()).unwrap_or(2000).max(ROUND);
    // First, on its own: the baseline's change times.
    let exe = std::env::current_exe().expect("own path");
    let out = Command::new(exe).env("MINIPOD_NFT_PROCESS", "1").output().expect("running the baseline");
    let text = String::from_utf8_lossy(&out.stdout);
    let rows = |prefix: &str| -> Vec<(usize, f64, f64)> {
        text.lines()
            .filter_map(|l| l.strip_prefix(prefix))
            .filter_map(|l| {
                let v: Vec<&str> = l.split_whitespace().collect();
                Some((v.first()?.parse().ok()?, v.get(1)?.parse().ok()?, v.get(2)?.parse().ok()?))
            })
            .collect()
    };
    let process = rows("CHANGE ");
    let policy_process: Vec<(usize, f64, f64, f64)> = text
        .lines()
        .filter_map(|l| l.strip_prefix("PCHANGE "))
        .filter_map(|l| {
            let v: Vec<f64> = l.split_whitespace().filter_map(|x| x.parse().ok()).collect();
            Some((*v.first()? as usize, *v.get(1)?, *v.get(2)?, *v.get(3)?))
        })
        .collect();
    if process.len() != SIZES.len() || policy_process.len() != SIZES.len() {
        eprintln!("the nft-process baseline failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    let (node, rt) = enter_node(&base);
    let cfg = NetworkConfig::new(
        NetworkName::new("svcbench").expect("name"),
        IfName::new("mpsvcbench0").expect("bridge"),
        "10.120.0.0/16".parse().expect("cidr"),
    );
    let net = rt.block_on(node.create_network(cfg)).expect("network").name;
    let pods = base.join("pods");
    std::fs::create_dir_all(&pods).expect("pods dir");
    let (server_ns, client_ns) = (pods.join("server"), pods.join("client"));
    let attach = |name: &str, path: &Path| {
        create_pinned(path).expect("pod namespace");
        let req = AttachRequest::new(OwnerId::new(name).expect("id"), path);
        rt.block_on(node.attach(&net, req)).expect("attach").ip
    };
    let server_ip = attach("server", &server_ns);
    let client_ip = attach("client", &client_ns);
    // The server: answers each connection with a byte and closes it.
    let listener = minipod_netstack::netns::Netns::open(&server_ns)
        .expect("server namespace")
        .run(|| TcpListener::bind("0.0.0.0:8080"))
        .expect("in the server namespace")
        .expect("listening");
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let mut b = [0u8; 1];
            let _ = s.read(&mut b);
            let _ = s.write_all(b"o");
        }
    });
    let pod = SocketAddr::new(server_ip.into(), 8080);
    let svc = measured(server_ip);
    node.program_service(&svc).expect("the measured service");
    // Warm both paths (ARP, conntrack tables).
    connections(&client_ns, pod, 50);
    connections(&client_ns, SocketAddr::new(VIP.into(), 80), 50);

    println!("connections from one pod to another: through a Service VIP and to the pod IP, {conns} each, alternating rounds of {ROUND}");
    let open = compare(&client_ns, pod, conns);
    let mut policies = measured_policy(server_ip, client_ip);
    node.program_policies(&policies).expect("the measured policy");
    let small = compare(&client_ns, pod, conns);
    let inproc = changes(&node, &svc);
    let policy_inproc = policy_changes(&node, &mut policies);
    let big = compare(&client_ns, pod, conns);
    println!("{:<34} {:>9} {:>9} {:>12}", "", "p50 ms", "p99 ms", "conns/s");
    let sizes = [
        ("1 service, no policy", &open),
        ("1 service, 1 policy isolating the server", &small),
        ("1,000 services, 10,000 endpoints, 1,000 policies", &big),
    ];
    for (label, (vip, direct)) in sizes {
        println!("{label}");
        println!("  {:<32} {:>9.3} {:>9.3} {:>12.0}", "pod IP", direct.p50, direct.p99, direct.rate);
        println!(
            "  {:<32} {:>9.3} {:>9.3} {:>12.0}   (VIP/pod p50 {:.2}x, rate {:.2}x)",
            "Service VIP",
            vip.p50,
            vip.p99,
            vip.rate,
            vip.p50 / direct.p50,
            vip.rate / direct.rate
        );
    }
    println!(
        "VIP p50 with 1,000 services and policies / with 1: {:.2}x (goal: no worse); VIP vs pod IP p50: {:.2}x and {:.2}x (goal: within 5%); pod IP p50 isolated / open: {:.2}x",
        big.0.p50 / small.0.p50,
        small.0.p50 / small.1.p50,
        big.0.p50 / big.1.p50,
        small.1.p50 / open.1.p50
    );
    println!();
    println!("adding or removing one endpoint of a service (median of {CHANGES} each), by services on the node");
    println!("{:>9} {:>14} {:>14} {:>16} {:>16}", "services", "add ms", "remove ms", "nft process add", "nft process rm");
    for (i, (size, add, remove)) in inproc.iter().enumerate() {
        let (padd, prm) = process.get(i).map_or((f64::NAN, f64::NAN), |p| (p.1, p.2));
        println!("{size:>9} {add:>14.3} {remove:>14.3} {padd:>16.3} {prm:>16.3}");
    }
    println!("(goal: under 1 ms at 1,000 services; the nft process columns start one process per change)");
    println!();
    println!("adding or removing one policy, and adding a peer to one (median of {CHANGES} each), by policies on the node");
    println!(
        "{:>9} {:>14} {:>14} {:>14} {:>16} {:>16} {:>16}",
        "policies", "add ms", "remove ms", "peer ms", "nft process add", "nft process rm", "nft process peer"
    );
    for (i, (size, add, remove, peer)) in policy_inproc.iter().enumerate() {
        let (padd, prm, ppeer) = policy_process.get(i).map_or((f64::NAN, f64::NAN, f64::NAN), |p| (p.1, p.2, p.3));
        println!("{size:>9} {add:>14.3} {remove:>14.3} {peer:>14.3} {padd:>16.3} {prm:>16.3} {ppeer:>16.3}");
    }
    println!("(goal: under 1 ms at 1,000 policies)");

    let svg =
        std::env::var("MINIPOD_SVCBENCH_SVG").unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../target/services.svg").into());
    let three = |r: &[(usize, f64, f64, f64)]| -> Rows { r.iter().map(|&(s, a, b, _)| (s, a, b)).collect() };
    let (pin, pproc) = (three(&policy_inproc), three(&policy_process));
    match std::fs::write(&svg, draw([(&inproc, &process), (&pin, &pproc)], &small, &big)) {
        Ok(()) => println!("drawn: {svg}"),
        Err(e) => eprintln!("drawing {svg}: {e}"),
    }
    drop(node);
    for p in [&server_ns, &client_ns] {
        let _ = remove_pinned(p);
    }
}

type Rows = Vec<(usize, f64, f64)>;

/// Three panels: change time against services and against policies (one slot per
/// size), and connection latency with 1 and 1,000 of each.
fn draw(changed: [(&Rows, &Rows); 2], small: &(Side, Side), big: &(Side, Side)) -> String {
    use chart::Panel;
    let slots = |labels: Vec<String>| -> Vec<(f64, String)> { labels.into_iter().enumerate().map(|(i, l)| (i as f64 + 0.5, l)).collect() };
    let line = |rows: &[(usize, f64, f64)], pick: fn(&(usize, f64, f64)) -> f64| -> Vec<(f64, f64)> {
        rows.iter().enumerate().map(|(i, r)| (i as f64 + 0.5, pick(r))).collect()
    };
    let [(inproc, process), (pinproc, pprocess)] = changed;
    let panel = |title, what: &str, inproc: &Rows, process: &Rows| Panel {
        title,
        x_max: SIZES.len() as f64,
        ticks: slots(SIZES.iter().map(|s| format!("{s} {what}")).collect()),
        series: vec![
            ("in process: add", "#2471a3", line(inproc, |r| r.1)),
            ("in process: remove", "#229954", line(inproc, |r| r.2)),
            ("nft process: add", "#c0392b", line(process, |r| r.1)),
            ("nft process: remove", "#e67e22", line(process, |r| r.2)),
        ],
    };
    let changes = panel("add / remove one endpoint (ms, median)", "services", inproc, process);
    let policy_changes = panel("add / remove one policy (ms, median)", "policies", pinproc, pprocess);
    let latency = Panel {
        title: "connection latency, pod to pod (ms)",
        x_max: 2.0,
        ticks: slots(vec!["1 service, 1 policy".into(), "1,000 of each".into()]),
        series: vec![
            ("VIP p50", "#2471a3", vec![(0.5, small.0.p50), (1.5, big.0.p50)]),
            ("pod IP p50", "#229954", vec![(0.5, small.1.p50), (1.5, big.1.p50)]),
            ("VIP p99", "#c0392b", vec![(0.5, small.0.p99), (1.5, big.0.p99)]),
            ("pod IP p99", "#e67e22", vec![(0.5, small.1.p99), (1.5, big.1.p99)]),
        ],
    };
    chart::draw(&[changes, policy_changes, latency])
}
