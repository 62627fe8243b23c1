//! Three node namespaces joined by a VXLAN overlay over an underlay of their own (a
//! bridge in a namespace, addresses from 192.0.2.0/24): every pod reaches every other
//! by its address and sees the sender's own address, the path carries the overlay's
//! MTU and not a byte more, a node that leaves is gone from its peers' tables, and bad
//! input (a silent peer too) is refused.

mod support;

use std::net::Ipv4Addr;
use std::path::PathBuf;

use minipod_netstack::overlay::{OverlayError, OverlayPeer};
use minipod_netstack::{IfName, NetworkError};
use support::need_root;
use support::node::{sh, TestNode, Underlay};

const VNI: u32 = 4242;

struct Member {
    t: TestNode,
    underlay: Ipv4Addr,
    /// How the others see it.
    peer: OverlayPeer,
    pod: PathBuf,
    ip: Ipv4Addr,
}

async fn member(ul: &Underlay, i: u8) -> Member {
    let t = TestNode::new(&format!("ov{i}"));
    let underlay = ul.plug(&t, 10 + i, 1500);
    let peer = OverlayPeer { underlay, subnet: format!("10.244.{i}.0/24").parse().unwrap() };
    let mut cfg = t.network("pods", &peer.subnet.to_string());
    cfg.mtu = Some(1450);
    let net = t.node.create_network(cfg).await.unwrap();
    let rec = t.node.join_overlay(&net.name, VNI, &IfName::new("ul0").unwrap(), underlay).await.unwrap();
    assert_eq!(rec.mtu, 1450, "the uplink's 1500 less 50 bytes of VXLAN");
    let pod = t.pod(&format!("pod{i}"));
    let ip = t.node.attach(&net.name, t.request(&format!("pod-{i}"), &pod)).await.unwrap().ip;
    Member { t, underlay, peer, pod, ip }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_of_three_nodes_reach_each_other_over_the_overlay_with_their_own_addresses() {
    need_root();
    let ul = Underlay::new();
    let mut nodes = Vec::new();
    for i in 1..=3 {
        nodes.push(member(&ul, i).await);
    }
    // Before any peer: no route to another node's pods (the control for what follows).
    assert!(TestNode::no_answer(&nodes[0].pod, nodes[1].ip), "no overlay peers yet, no path");
    for a in &nodes {
        for b in nodes.iter().filter(|b| b.underlay != a.underlay) {
            a.t.node.add_overlay_peer(b.peer).await.unwrap();
        }
    }
    for a in &nodes {
        for b in nodes.iter().filter(|b| b.underlay != a.underlay) {
            assert!(TestNode::ping(&a.pod, b.ip), "{} reaches {}", a.ip, b.ip);
        }
    }
    // Not masqueraded: a server on node 1 sees each client's own pod address.
    nodes[0].t.http_server(&nodes[0].pod, 8080, "one");
    for b in &nodes[1..] {
        // httpd listens dual-stack and reports the v4-mapped form.
        let seen = TestNode::fetch(&b.pod, &format!("http://{}:8080/cgi-bin/ip", nodes[0].ip)).unwrap_or_default();
        assert_eq!(seen.trim_start_matches("[::ffff:").trim_end_matches(']'), b.ip.to_string(), "the source address the server saw");
    }
    // The path carries 1450 bytes unfragmented (1422 of ICMP data + 28 of headers)
    // and not one more: the pods' links were made to fit the tunnel.
    let ping = |size: u32| {
        TestNode::in_ns(&nodes[1].pod, &["ping", "-M", "do", "-c", "1", "-W", "5", "-s", &size.to_string(), &nodes[0].ip.to_string()])
    };
    let fits = ping(1422);
    assert!(fits.status.success(), "1450 bytes pass: {}", String::from_utf8_lossy(&fits.stdout));
    let over = ping(1423);
    assert!(!over.status.success(), "1451 bytes need fragmenting and may not: {}", String::from_utf8_lossy(&over.stdout));

    // Node 3 leaves: its peers' route, neighbour and forwarding entries for it go.
    let gone = nodes.pop().unwrap();
    gone.t.node.leave_overlay().await.unwrap();
    for n in &nodes {
        n.t.node.remove_overlay_peer(gone.underlay).await.unwrap();
        let tables = sh(&n.t.node_ns(), &format!("ip route; ip neigh show dev mpvx{VNI}; bridge fdb show dev mpvx{VNI}"));
        assert!(!tables.contains("10.244.3.") && !tables.contains(&gone.underlay.to_string()), "node 3 is gone: {tables}");
        assert!(tables.contains("10.244."), "the other peer stays: {tables}");
        assert_eq!(n.t.node.overlay().unwrap().unwrap().peers.len(), 1);
    }
    assert!(!sh(&gone.t.node_ns(), "ip link").contains("mpvx"), "the device went with the node's leaving");
    assert!(TestNode::ping(&nodes[0].pod, nodes[1].ip), "the others still reach each other");
    // Leaving twice, removing a peer twice: fine.
    gone.t.node.leave_overlay().await.unwrap();
    nodes[0].t.node.remove_overlay_peer(gone.underlay).await.unwrap();
}

/// Peers added at once through two handles of one node (as the CLI and a daemon's
/// retry do) are all recorded: each change is read and written under the node's
/// overlay lock, so that none is lost to another's write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_added_at_once_are_all_recorded() {
    need_root();
    let ul = Underlay::new();
    let a = member(&ul, 6).await;
    let other = minipod_netstack::Node::new(a.t.base.join("state"), Some(&a.t.node_ns())).unwrap();
    let answering: Vec<TestNode> = (0..4).map(|i| TestNode::new(&format!("ovat{i}"))).collect();
    let peers: Vec<OverlayPeer> = answering
        .iter()
        .zip(60u8..)
        .map(|(t, n)| OverlayPeer { underlay: ul.plug(t, n, 1500), subnet: format!("10.244.{n}.0/24").parse().unwrap() })
        .collect();
    let (r0, r1, r2, r3) = tokio::join!(
        a.t.node.add_overlay_peer(peers[0]),
        other.add_overlay_peer(peers[1]),
        a.t.node.add_overlay_peer(peers[2]),
        other.add_overlay_peer(peers[3])
    );
    for r in [r0, r1, r2, r3] {
        r.unwrap();
    }
    let recorded: Vec<Ipv4Addr> = a.t.node.overlay().unwrap().unwrap().peers.iter().map(|p| p.underlay).collect();
    let mut added: Vec<Ipv4Addr> = peers.iter().map(|p| p.underlay).collect();
    added.sort();
    assert_eq!(recorded, added, "a peer's record was lost to another's write");
    let routes = sh(&a.t.node_ns(), "ip route");
    assert!(peers.iter().all(|p| routes.contains(&p.subnet.to_string())), "{routes}");
    // Taken away at once the same way: none is left behind in the record.
    let (r0, r1) = tokio::join!(a.t.node.remove_overlay_peer(peers[0].underlay), other.remove_overlay_peer(peers[1].underlay));
    r0.unwrap();
    r1.unwrap();
    let left: Vec<Ipv4Addr> = a.t.node.overlay().unwrap().unwrap().peers.iter().map(|p| p.underlay).collect();
    assert_eq!(left, added[2..], "peers taken away at once");
    a.t.node.leave_overlay().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_overlays_are_refused_and_leave_nothing() {
    need_root();
    let ul = Underlay::new();
    let t = TestNode::new("ovbad");
    let local = ul.plug(&t, 30, 1500);
    let uplink = IfName::new("ul0").unwrap();
    // A network whose links are larger than the tunnel carries.
    let big = t.node.create_network(t.network("big", "10.244.30.0/24")).await.unwrap();
    let e = t.node.join_overlay(&big.name, VNI, &uplink, local).await.unwrap_err();
    assert!(matches!(e, NetworkError::Overlay(OverlayError::NetworkMtu { overlay: 1450, .. })), "{e}");
    assert!(e.to_string().contains("at most 1450"), "{e}");
    assert!(!sh(&t.node_ns(), "ip link").contains("mpvx"), "nothing half-made");
    // An uplink too small for an overlay.
    let small = TestNode::new("ovsmall");
    let small_local = ul.plug(&small, 31, 1300);
    let mut cfg = small.network("pods", "10.244.31.0/24");
    cfg.mtu = Some(1200);
    let net = small.node.create_network(cfg).await.unwrap();
    let e = small.node.join_overlay(&net.name, VNI, &uplink, small_local).await.unwrap_err();
    assert!(e.to_string().contains("uplink ul0 has MTU 1300") && e.to_string().contains("at least 1330"), "{e}");
    // A VNI clash with a device there, a peer overlapping this node or another peer,
    // oneself as a peer.
    let mut cfg = t.network("pods", "10.244.32.0/24");
    cfg.mtu = Some(1450);
    let pods = t.node.create_network(cfg).await.unwrap();
    sh(&t.node_ns(), &format!("ip link add mpvx{} type vxlan id 7 dstport 4789 dev ul0", VNI + 1));
    let e = t.node.join_overlay(&pods.name, VNI + 1, &uplink, local).await.unwrap_err();
    assert!(e.to_string().contains(&format!("mpvx{} exists with VNI 7", VNI + 1)), "{e}");
    assert!(t.node.overlay().unwrap().is_none(), "nothing recorded");
    t.node.join_overlay(&pods.name, VNI, &uplink, local).await.unwrap();
    let e =
        t.node.add_overlay_peer(OverlayPeer { underlay: Ipv4Addr::new(192, 0, 2, 40), subnet: "10.244.32.128/25".parse().unwrap() }).await;
    assert!(e.unwrap_err().to_string().contains("overlaps 10.244.32.0/24 (of this node)"));
    // A peer that does not answer on the underlay, and then one that does.
    let peer41 = OverlayPeer { underlay: Ipv4Addr::new(192, 0, 2, 41), subnet: "10.244.41.0/24".parse().unwrap() };
    let e = t.node.add_overlay_peer(peer41).await.unwrap_err().to_string();
    assert!(e.contains("peer 192.0.2.41 does not answer on the underlay"), "{e}");
    assert!(t.node.overlay().unwrap().unwrap().peers.is_empty(), "a silent peer is not added");
    let up = TestNode::new("ovpeer");
    ul.plug(&up, 41, 1500);
    t.node.add_overlay_peer(peer41).await.unwrap();
    let e =
        t.node.add_overlay_peer(OverlayPeer { underlay: Ipv4Addr::new(192, 0, 2, 42), subnet: "10.244.41.0/24".parse().unwrap() }).await;
    assert!(e.unwrap_err().to_string().contains("overlaps 10.244.41.0/24 (of peer 192.0.2.41)"));
    let e = t.node.add_overlay_peer(OverlayPeer { underlay: local, subnet: "10.244.43.0/24".parse().unwrap() }).await;
    assert!(e.unwrap_err().to_string().contains("this node's own underlay address"));
    let routes = sh(&t.node_ns(), "ip route");
    assert!(routes.contains("10.244.41.0/24") && !routes.contains("10.244.43.") && !routes.contains("10.244.32.128"), "{routes}");
    t.node.leave_overlay().await.unwrap();
    let _ = (big, net);
}

/// Two nodes set up as on real hosts, with the CLI only: a network per node on its own
/// /24 with the tunnel's MTU, `minipod net overlay join`, `add-peer`, `show`, `rm-peer`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_joins_two_nodes() {
    need_root();
    let ul = Underlay::new();
    let cli = |t: &TestNode, args: &[&str]| {
        let out = std::process::Command::new(support::minipod_bin())
            .arg("--root")
            .arg(t.base.join("state"))
            .args(["net", "--netns"])
            .arg(t.node_ns())
            .args(args)
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let mut nodes = Vec::new();
    for i in [51u8, 52] {
        let t = TestNode::new(&format!("ovcli{i}"));
        let addr = ul.plug(&t, i, 1500);
        let bridge = t.network("pods", "10.0.0.0/24").bridge;
        let subnet = format!("10.244.{i}.0/24");
        let (ok, _, err) = cli(&t, &["create", "pods", "--subnet", &subnet, "--bridge", bridge.as_str(), "--mtu", "1450"]);
        assert!(ok, "{err}");
        let (ok, out, err) = cli(&t, &["overlay", "join", "pods", "--uplink", "ul0", "--address", &addr.to_string(), "--vni", "77"]);
        assert!(ok && out.trim() == "mpvx77 (VNI 77, MTU 1450)", "{out} {err}");
        nodes.push((t, addr, subnet));
    }
    let (ok, _, err) = cli(&nodes[0].0, &["overlay", "add-peer", "192.0.2.52", "--pod-cidr", "10.244.51.128/25"]);
    assert!(!ok && err.contains("overlaps 10.244.51.0/24 (of this node)"), "{err}");
    for (a, b) in [(0, 1), (1, 0)] {
        let (ok, _, err) = cli(&nodes[a].0, &["overlay", "add-peer", &nodes[b].1.to_string(), "--pod-cidr", &nodes[b].2]);
        assert!(ok, "{err}");
    }
    let (_, show, _) = cli(&nodes[0].0, &["overlay", "show"]);
    let v: serde_json::Value = serde_json::from_str(&show).unwrap();
    assert_eq!(v["peers"][0]["underlay"], "192.0.2.52", "{show}");
    let (pa, pb) = (nodes[0].0.pod("a"), nodes[1].0.pod("b"));
    let net = minipod_netstack::NetworkName::new("pods").unwrap();
    let wa = nodes[0].0.node.attach(&net, nodes[0].0.request("pod-a", &pa)).await.unwrap();
    let wb = nodes[1].0.node.attach(&net, nodes[1].0.request("pod-b", &pb)).await.unwrap();
    assert!(TestNode::ping(&pa, wb.ip) && TestNode::ping(&pb, wa.ip), "pods of the two nodes reach each other");
    let (ok, _, err) = cli(&nodes[0].0, &["overlay", "rm-peer", "192.0.2.52"]);
    assert!(ok, "{err}");
    assert!(TestNode::no_answer(&pa, wb.ip), "a removed peer is not reached");
    for (t, _, _) in &nodes {
        let (ok, _, err) = cli(t, &["overlay", "leave"]);
        assert!(ok, "{err}");
    }
    assert_eq!(cli(&nodes[0].0, &["overlay", "show"]).1.trim(), "null");
}
