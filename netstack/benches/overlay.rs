//! The VXLAN overlay between nodes: TCP throughput and round-trip latency from a pod to
//! a pod of another node, to a pod of its own node, and raw VXLAN between the two node
//! namespaces (their tunnel addresses: the overlay without the pods' links), side by
//! side in alternating rounds; the attach time of a pod on a node of a 3-node overlay
//! against a node in none; and the time for a node to join clusters of 2 to 50 nodes,
//! and to join one of 50 nodes with pods on them.
//!
//! Run as root: `cargo bench -p minipod-netstack --bench overlay`. Everything happens
//! in namespaces of its own (the underlay is a bridge in one, nodes at 192.0.2.x),
//! under a tmpfs in a mount namespace of its own. MINIPOD_OVBENCH_SECS sets the seconds
//! of each throughput measurement (default 2); MINIPOD_OVBENCH_SVG where the drawing
//! goes (default target/overlay.svg).

#[path = "support/chart.rs"]
mod chart;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use minipod_netstack::netns::{create_pinned, remove_pinned, Netns};
use minipod_netstack::overlay::OverlayPeer;
use minipod_netstack::{underlay, AttachRequest, IfName, NetworkConfig, NetworkName, Node, OwnerId};

const VNI: u32 = 7;
const ROUNDS: usize = 3;
const ROUND_TRIPS: usize = 5000;
const ATTACHES: usize = 30;
const JOIN_SIZES: [usize; 4] = [2, 10, 25, 50];
const PORT: u16 = 5201;

struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn lo_up(ns: &Path) {
    let _ = Command::new("nsenter").arg(format!("--net={}", ns.display())).args(["ip", "link", "set", "lo", "up"]).status();
}

struct BenchNode {
    node: Node,
    netns: PathBuf,
    net: NetworkName,
    peer: OverlayPeer,
}

/// How a node is made.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// In the overlay, on 10.244.i.0/24.
    Joined,
    /// On 10.244.i.0/24, its join still to come (to time it).
    ToJoin,
    /// In none, on 10.245.i.0/24.
    Alone,
}

/// Node `i`: a namespace wired to the underlay at 192.0.2.(10 + i), a network with
/// the tunnel's MTU, and its place in the overlay as `kind` says.
fn make_node(rt: &tokio::runtime::Runtime, base: &Path, ul: &Netns, i: usize, kind: Kind) -> BenchNode {
    let netns = base.join(format!("node-{i}"));
    let ns = create_pinned(&netns).expect("node namespace");
    lo_up(&netns);
    let address = Ipv4Addr::new(192, 0, 2, 10 + i as u8);
    let port = IfName::new(format!("n{i}")).expect("port name");
    let uplink = IfName::new("ul0").expect("uplink name");
    rt.block_on(underlay::plug(ul, &ns, &port, &uplink, address, 24, 1500)).expect("plugging into the underlay");
    let node = Node::new(base.join(format!("state-{i}")), Some(&netns)).expect("node");
    let second = if kind == Kind::Alone { 245 } else { 244 };
    let subnet = format!("10.{second}.{i}.0/24").parse().expect("subnet");
    let mut cfg = NetworkConfig::new(NetworkName::new("pods").expect("name"), IfName::new(format!("mpov{i}")).expect("bridge"), subnet);
    cfg.mtu = Some(1450);
    let net = rt.block_on(node.create_network(cfg)).expect("network").name;
    if kind == Kind::Joined {
        rt.block_on(node.join_overlay(&net, VNI, &uplink, address)).expect("joining the overlay");
    }
    BenchNode { node, netns, net, peer: OverlayPeer { underlay: address, subnet } }
}

/// Peers `new` with every node of `others` in both directions, each told the other's
/// uplink first (as `Cluster` does: no ARP, see underlay::know).
fn peer_all(rt: &tokio::runtime::Runtime, new: &BenchNode, others: &[BenchNode]) {
    let uplink = IfName::new("ul0").expect("uplink name");
    let ns = Netns::open(&new.netns).expect("node namespace");
    for o in others {
        rt.block_on(underlay::know(&ns, &uplink, o.peer.underlay)).expect("knowing a peer");
        rt.block_on(underlay::know(&Netns::open(&o.netns).expect("node namespace"), &uplink, new.peer.underlay)).expect("being known");
    }
    for o in others {
        rt.block_on(new.node.add_overlay_peer(o.peer)).expect("adding a peer");
        rt.block_on(o.node.add_overlay_peer(new.peer)).expect("being added as a peer");
    }
}

fn attach(rt: &tokio::runtime::Runtime, n: &BenchNode, base: &Path, name: &str) -> (PathBuf, Ipv4Addr) {
    let path = base.join(format!("pod-{name}"));
    create_pinned(&path).expect("pod namespace");
    let req = AttachRequest::new(OwnerId::new(name).expect("owner"), &path);
    (path.clone(), rt.block_on(n.node.attach(&n.net, req)).expect("attach").ip)
}

/// A server in `ns` on `addr`: `sink` reads each connection to its end and sends back
/// how many bytes it got; otherwise it echoes every byte.
fn serve(ns: &Path, addr: SocketAddr, sink: bool) {
    let listener =
        Netns::open(ns).expect("server namespace").run(move || TcpListener::bind(addr)).expect("in the namespace").expect("listening");
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let _ = s.set_nodelay(true);
                let mut buf = vec![0u8; 1 << 17];
                let mut total: u64 = 0;
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) if sink => total += n as u64,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    }
                }
                if sink {
                    let _ = s.write_all(&total.to_be_bytes());
                }
            });
        }
    });
}

/// Gbit/s from `ns` to `to` for `secs`: bytes the server counted over the time until
/// it said so.
fn throughput(ns: &Path, to: SocketAddr, secs: f64) -> f64 {
    Netns::open(ns)
        .expect("client namespace")
        .run(move || {
            let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5)).expect("connecting");
            let buf = vec![0x5au8; 1 << 17];
            let t = Instant::now();
            while t.elapsed().as_secs_f64() < secs {
                s.write_all(&buf).expect("sending");
            }
            s.shutdown(std::net::Shutdown::Write).expect("ending");
            let mut got = [0u8; 8];
            s.read_exact(&mut got).expect("the count");
            u64::from_be_bytes(got) as f64 * 8.0 / t.elapsed().as_secs_f64() / 1e9
        })
        .expect("running in the client namespace")
}

/// (p50, p99) µs of one-byte round trips over one connection from `ns` to `to`.
fn round_trips(ns: &Path, to: SocketAddr) -> (f64, f64) {
    Netns::open(ns)
        .expect("client namespace")
        .run(move || {
            let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5)).expect("connecting");
            s.set_nodelay(true).expect("nodelay");
            let mut b = [0u8; 1];
            let mut v: Vec<Duration> = (0..ROUND_TRIPS)
                .map(|_| {
                    let t = Instant::now();
                    s.write_all(b"x").expect("sending");
                    s.read_exact(&mut b).expect("the echo");
                    t.elapsed()
                })
                .collect();
            v.sort();
            let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1e6;
            (at(0.5), at(0.99))
        })
        .expect("running in the client namespace")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        println!("overlay benchmark skipped: it needs root (network namespaces)");
        return;
    }
    let secs: f64 = std::env::var("MINIPOD_OVBENCH_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(2.0);
    let base = PathBuf::from(format!("/run/minipod-ovbench-{}", std::process::id()));
    std::fs::create_dir_all(&base).expect("bench dir");
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).expect("a mount namespace for the benchmark");
    nix::mount::mount(None::<&str>, "/", None::<&str>, nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE, None::<&str>)
        .expect("making the mount namespace private");
    nix::mount::mount(Some("tmpfs"), &base, Some("tmpfs"), nix::mount::MsFlags::empty(), Some("mode=0700")).expect("tmpfs");
    let _dir = RemoveDir(base.clone());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio");
    let ul_path = base.join("underlay");
    let ul = create_pinned(&ul_path).expect("underlay namespace");
    rt.block_on(underlay::make(&ul)).expect("the underlay");

    // Three nodes in an overlay, a standalone one, pods on two of them.
    let mut nodes: Vec<BenchNode> = Vec::new();
    for i in 1..=3 {
        let n = make_node(&rt, &base, &ul, i, Kind::Joined);
        peer_all(&rt, &n, &nodes);
        nodes.push(n);
    }
    let alone = make_node(&rt, &base, &ul, 4, Kind::Alone);
    let (a1, _) = attach(&rt, &nodes[0], &base, "a1");
    let (a2, a2_ip) = attach(&rt, &nodes[0], &base, "a2");
    let (b1, b1_ip) = attach(&rt, &nodes[1], &base, "b1");
    let vtep1 = nodes[1].peer.subnet.network();
    let paths: [(&str, PathBuf, SocketAddr); 3] = [
        ("pod to pod, across nodes", a1.clone(), SocketAddr::new(b1_ip.into(), PORT)),
        ("pod to pod, within a node", a1.clone(), SocketAddr::new(a2_ip.into(), PORT)),
        ("raw VXLAN, node to node", nodes[0].netns.clone(), SocketAddr::new(vtep1.into(), PORT)),
    ];
    let servers = [(&b1, b1_ip), (&a2, a2_ip), (&nodes[1].netns, vtep1)];
    for (ns, ip) in servers {
        serve(ns, SocketAddr::new(ip.into(), PORT), true);
        serve(ns, SocketAddr::new(ip.into(), PORT + 1), false);
    }
    for (_, from, to) in &paths {
        throughput(from, *to, 0.2); // warm: ARP, conntrack, routes
    }
    let mut gbps: Vec<Vec<f64>> = vec![vec![]; 3];
    let mut rtt: Vec<Vec<(f64, f64)>> = vec![vec![]; 3];
    for _ in 0..ROUNDS {
        for (i, (_, from, to)) in paths.iter().enumerate() {
            gbps[i].push(throughput(from, *to, secs));
            rtt[i].push(round_trips(from, SocketAddr::new(to.ip(), PORT + 1)));
        }
    }
    println!(
        "TCP from one namespace to another, {ROUNDS} alternating rounds ({secs} s of 128 KiB writes; {ROUND_TRIPS} one-byte round trips)"
    );
    println!("{:<28} {:>12} {:>12} {:>12}", "", "Gbit/s", "RTT p50 µs", "RTT p99 µs");
    let row =
        |i: usize| (median(gbps[i].clone()), median(rtt[i].iter().map(|r| r.0).collect()), median(rtt[i].iter().map(|r| r.1).collect()));
    for (i, (label, _, _)) in paths.iter().enumerate() {
        let (g, p50, p99) = row(i);
        println!("{label:<28} {g:>12.2} {p50:>12.1} {p99:>12.1}");
    }
    let (across, raw) = (row(0), row(2));
    println!(
        "across nodes / raw VXLAN: throughput {:.0}% (goal: at least 90%), RTT p50 {:.2}x",
        across.0 / raw.0 * 100.0,
        across.1 / raw.1
    );

    // Attach on an overlay node against a standalone one, alternating.
    let (mut on, mut off) = (Vec::new(), Vec::new());
    for i in 0..ATTACHES {
        for (n, times) in [(&nodes[2], &mut on), (&alone, &mut off)] {
            let t = Instant::now();
            attach(&rt, n, &base, &format!("t{}-{i}", n.peer.underlay.octets()[3]));
            times.push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    let (on, off) = (median(on), median(off));
    println!();
    println!("attaching a pod (median of {ATTACHES}): on a node of a 3-node overlay {on:.2} ms, on a node in none {off:.2} ms ({:.2}x; goal: the same)", on / off);

    // Joining: a node's join (device, peers both ways) as the cluster grows.
    let mut joins: Vec<(usize, f64)> = Vec::new();
    let mut next = 5;
    let mut cluster: Vec<BenchNode> = Vec::new();
    for &size in &JOIN_SIZES {
        while cluster.len() + 1 < size {
            let n = make_node(&rt, &base, &ul, next, Kind::Joined);
            peer_all(&rt, &n, &cluster);
            cluster.push(n);
            next += 1;
        }
        let n = make_node(&rt, &base, &ul, next, Kind::ToJoin);
        let t = Instant::now();
        rt.block_on(n.node.join_overlay(&n.net, VNI, &IfName::new("ul0").expect("uplink"), n.peer.underlay)).expect("joining");
        peer_all(&rt, &n, &cluster);
        joins.push((size, t.elapsed().as_secs_f64() * 1000.0));
        cluster.push(n);
        next += 1;
    }
    // The same join at 50 nodes, with two pods on each of them.
    for (i, n) in cluster.iter().enumerate() {
        for p in 0..2 {
            attach(&rt, n, &base, &format!("j{i}-{p}"));
        }
    }
    let pods = cluster.len() * 2;
    let n = make_node(&rt, &base, &ul, next, Kind::ToJoin);
    let t = Instant::now();
    rt.block_on(n.node.join_overlay(&n.net, VNI, &IfName::new("ul0").expect("uplink"), n.peer.underlay)).expect("joining");
    peer_all(&rt, &n, &cluster);
    let with_pods = t.elapsed().as_secs_f64() * 1000.0;
    println!();
    println!("a node joining a cluster (its VXLAN device, and each peer both ways)");
    println!("{:>8} {:>10}", "nodes", "join ms");
    for (size, ms) in &joins {
        println!("{size:>8} {ms:>10.1}");
    }
    let (last_size, last) = joins.last().copied().unwrap_or((0, f64::NAN));
    println!(
        "{:>8} {with_pods:>10.1}   (with {pods} pods on the other nodes: {:.2}x the join without; goal: flat in the pods)",
        last_size + 1,
        with_pods / last
    );

    let svg = std::env::var("MINIPOD_OVBENCH_SVG").unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../target/overlay.svg").into());
    let rounds = |i: usize| gbps[i].iter().enumerate().map(|(r, g)| (r as f64 + 1.0, *g)).collect::<Vec<_>>();
    let panels = [
        chart::Panel {
            title: "TCP Gbit/s by round",
            x_max: ROUNDS as f64 + 0.5,
            ticks: (1..=ROUNDS).map(|r| (r as f64, format!("round {r}"))).collect(),
            series: vec![
                ("across nodes", "#c0392b", rounds(0)),
                ("within a node", "#2980b9", rounds(1)),
                ("raw VXLAN", "#27ae60", rounds(2)),
            ],
        },
        chart::Panel {
            title: "join ms by nodes in the cluster",
            x_max: 55.0,
            ticks: JOIN_SIZES.iter().map(|s| (*s as f64, s.to_string())).collect(),
            series: vec![
                ("no pods", "#2980b9", joins.iter().map(|(s, ms)| (*s as f64, *ms)).collect()),
                ("2 pods per node", "#c0392b", vec![(last_size as f64 + 1.0, with_pods)]),
            ],
        },
    ];
    match std::fs::write(&svg, chart::draw(&panels)) {
        Ok(()) => println!("drawn: {svg}"),
        Err(e) => eprintln!("drawing {svg}: {e}"),
    }
    drop((nodes, alone, cluster, n));
    for entry in std::fs::read_dir(&base).map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>()).unwrap_or_default() {
        if entry.file_name().is_some_and(|f| f.to_string_lossy().starts_with("pod-") || f.to_string_lossy().starts_with("node-")) {
            let _ = remove_pinned(&entry);
        }
    }
    let _ = remove_pinned(&ul_path);
}
