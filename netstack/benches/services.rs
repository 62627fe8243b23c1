//! Services on the node's firewall: connection latency and rate from one pod to
//! another through a Service VIP against the pod IP directly, side by side in one run,
//! with one service on the node and again with 1,000 services holding 10,000
//! endpoints; and the time to add or remove one endpoint at 1, 10, 100 and 1,000
//! services, from this process through libnftables against an `nft` process per
//! change (the baseline, measured by a second run of this benchmark with
//! MINIPOD_NFT_PROCESS set). NetworkPolicy is not built yet: no rows for it.
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
use minipod_netstack::{AttachRequest, IfName, NetworkConfig, NetworkName, Node, OwnerId, Proto, ServicePort, VirtualService};

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
        return;
    }
    let conns: usize = std::env::var("MINIPOD_SVCBENCH_CONNS").ok().and_then(|v| v.parse().ok()).unwrap_or(2000).max(ROUND);
    // First, on its own: the baseline's change times.
    let exe = std::env::current_exe().expect("own path");
    let out = Command::new(exe).env("MINIPOD_NFT_PROCESS", "1").output().expect("running the baseline");
    let text = String::from_utf8_lossy(&out.stdout);
    let process: Vec<(usize, f64, f64)> = text
        .lines()
        .filter_map(|l| l.strip_prefix("CHANGE "))
        .filter_map(|l| {
            let v: Vec<&str> = l.split_whitespace().collect();
            Some((v.first()?.parse().ok()?, v.get(1)?.parse().ok()?, v.get(2)?.parse().ok()?))
        })
        .collect();
    if process.len() != SIZES.len() {
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
    attach("client", &client_ns);
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
    let small = compare(&client_ns, pod, conns);
    let inproc = changes(&node, &svc);
    let big = compare(&client_ns, pod, conns);
    println!("{:<34} {:>9} {:>9} {:>12}", "", "p50 ms", "p99 ms", "conns/s");
    for (label, (vip, direct)) in [("1 service", &small), ("1,000 services, 10,000 endpoints", &big)] {
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
        "VIP p50 with 1,000 services / with 1: {:.2}x (goal: no worse); VIP vs pod IP p50: {:.2}x and {:.2}x (goal: within 5%)",
        big.0.p50 / small.0.p50,
        small.0.p50 / small.1.p50,
        big.0.p50 / big.1.p50
    );
    println!();
    println!("adding or removing one endpoint of a service (median of {CHANGES} each), by services on the node");
    println!("{:>9} {:>14} {:>14} {:>16} {:>16}", "services", "add ms", "remove ms", "nft process add", "nft process rm");
    for (i, (size, add, remove)) in inproc.iter().enumerate() {
        let (padd, prm) = process.get(i).map_or((f64::NAN, f64::NAN), |p| (p.1, p.2));
        println!("{size:>9} {add:>14.3} {remove:>14.3} {padd:>16.3} {prm:>16.3}");
    }
    println!("(goal: under 1 ms at 1,000 services; the nft process columns start one process per change)");
    println!("NetworkPolicy: not built yet, no rows.");

    let svg =
        std::env::var("MINIPOD_SVCBENCH_SVG").unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../target/services.svg").into());
    match std::fs::write(&svg, draw(&inproc, &process, &small, &big)) {
        Ok(()) => println!("drawn: {svg}"),
        Err(e) => eprintln!("drawing {svg}: {e}"),
    }
    drop(node);
    for p in [&server_ns, &client_ns] {
        let _ = remove_pinned(p);
    }
}

/// Two panels: change time against services (one slot per size), and connection
/// latency with 1 and 1,000 services.
fn draw(inproc: &[(usize, f64, f64)], process: &[(usize, f64, f64)], small: &(Side, Side), big: &(Side, Side)) -> String {
    use chart::Panel;
    let slots = |labels: Vec<String>| -> Vec<(f64, String)> { labels.into_iter().enumerate().map(|(i, l)| (i as f64 + 0.5, l)).collect() };
    let line = |rows: &[(usize, f64, f64)], pick: fn(&(usize, f64, f64)) -> f64| -> Vec<(f64, f64)> {
        rows.iter().enumerate().map(|(i, r)| (i as f64 + 0.5, pick(r))).collect()
    };
    let changes = Panel {
        title: "add / remove one endpoint (ms, median)",
        x_max: SIZES.len() as f64,
        ticks: slots(SIZES.iter().map(|s| if *s == 1 { "1 service".into() } else { format!("{s} services") }).collect()),
        series: vec![
            ("in process: add", "#2471a3", line(inproc, |r| r.1)),
            ("in process: remove", "#229954", line(inproc, |r| r.2)),
            ("nft process: add", "#c0392b", line(process, |r| r.1)),
            ("nft process: remove", "#e67e22", line(process, |r| r.2)),
        ],
    };
    let latency = Panel {
        title: "connection latency, pod to pod (ms)",
        x_max: 2.0,
        ticks: slots(vec!["1 service".into(), "1,000 services".into()]),
        series: vec![
            ("VIP p50", "#2471a3", vec![(0.5, small.0.p50), (1.5, big.0.p50)]),
            ("pod IP p50", "#229954", vec![(0.5, small.1.p50), (1.5, big.1.p50)]),
            ("VIP p99", "#c0392b", vec![(0.5, small.0.p99), (1.5, big.0.p99)]),
            ("pod IP p99", "#e67e22", vec![(0.5, small.1.p99), (1.5, big.1.p99)]),
        ],
    };
    chart::draw(&[changes, latency])
}
