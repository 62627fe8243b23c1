//! Networks inside a throwaway node namespace, with plain network namespaces as
//! pods: reachability, MTU, clean detach, concurrent attaches, validation.

mod support;

use minipod_netstack::netns::remove_pinned;
use minipod_netstack::{AttachRequest, IfName, NetworkError, NetworkName, OwnerId};
use support::need_root;
use support::node::TestNode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pods_on_one_network_reach_each_other_and_the_gateway() {
    need_root();
    let t = TestNode::new("ping");
    let net = t.node.create_network(t.network("one", "10.201.0.0/24")).await.unwrap();
    let bridge = |args: &[&str]| {
        let mut cmd = vec!["ip"];
        cmd.extend_from_slice(args);
        String::from_utf8(TestNode::in_ns(&t.node_ns(), &cmd).stdout).unwrap()
    };
    let mac = |show: &str| show.split_whitespace().skip_while(|w| *w != "link/ether").nth(1).map(str::to_string);
    let mac_before = mac(&bridge(&["link", "show", net.bridge.as_str()]));
    assert!(mac_before.is_some(), "{}", bridge(&["link", "show", net.bridge.as_str()]));
    let (a, b) = (t.pod("a"), t.pod("b"));
    let wa = t.node.attach(&net.name, t.request("pod-a", &a)).await.unwrap();
    let wb = t.node.attach(&net.name, t.request("pod-b", &b)).await.unwrap();
    // The gateway's MAC does not follow the lowest port's, so pods' ARP entries for it
    // stay right as pods come and go; no multicast snooping (see bridge.rs).
    let details = bridge(&["-d", "link", "show", net.bridge.as_str()]);
    assert_eq!(mac(&details), mac_before, "{details}");
    assert!(details.contains("mcast_snooping 0"), "{details}");
    assert_eq!(wa.ip.to_string(), "10.201.0.2");
    assert_eq!(wb.ip.to_string(), "10.201.0.3");
    assert!(TestNode::ping(&a, wb.ip), "a -> b");
    assert!(TestNode::ping(&b, wa.ip), "b -> a");
    assert!(TestNode::ping(&a, net.gateway()), "a -> gateway");
    // Routed: everything, the pod's own subnet too, goes via the gateway, whose MAC
    // the pod is told (no ARP, no entry in the kernel's shared neighbour table).
    let route = String::from_utf8(TestNode::in_ns(&a, &["ip", "route"]).stdout).unwrap();
    assert_eq!(route.trim(), "default via 10.201.0.1 dev eth0 proto static onlink", "{route}");
    let neigh = String::from_utf8(TestNode::in_ns(&a, &["ip", "neigh"]).stdout).unwrap();
    assert_eq!(neigh.trim(), "10.201.0.1 dev eth0 lladdr ee:ee:ee:ee:ee:ee PERMANENT", "{neigh}");
    let addr = String::from_utf8(TestNode::in_ns(&a, &["ip", "-4", "-o", "addr", "show", "eth0"]).stdout).unwrap();
    assert!(addr.contains("10.201.0.2/24") && addr.contains("noprefixroute"), "{addr}");
    let node_neigh = String::from_utf8(TestNode::in_ns(&t.node_ns(), &["ip", "neigh", "show", "10.201.0.3"]).stdout).unwrap();
    assert!(node_neigh.contains(&format!("dev {} lladdr 02:6d:0a:c9:00:03 PERMANENT", wb.host_ifname)), "{node_neigh}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtu_is_honoured_on_the_bridge_and_both_veth_ends() {
    need_root();
    let t = TestNode::new("mtu");
    let mut cfg = t.network("mtu", "10.202.0.0/24");
    cfg.mtu = Some(1400);
    let net = t.node.create_network(cfg).await.unwrap();
    let p = t.pod("p");
    let w = t.node.attach(&net.name, t.request("pod-p", &p)).await.unwrap();
    let inside = String::from_utf8(TestNode::in_ns(&p, &["ip", "link", "show", "eth0"]).stdout).unwrap();
    assert!(inside.contains("mtu 1400"), "{inside}");
    let inside6 = String::from_utf8(TestNode::in_ns(&p, &["ip", "-6", "addr", "show", "dev", "eth0"]).stdout).unwrap();
    assert!(!inside6.contains("inet6"), "an IPv4-only pod interface has no IPv6 address: {inside6}");
    let host = String::from_utf8(TestNode::in_ns(&t.node_ns(), &["ip", "link", "show", &w.host_ifname]).stdout).unwrap();
    // A routed link in the network's group, which the firewall matches on; not a
    // bridge port.
    assert!(host.contains("mtu 1400") && host.contains(&format!("group {}", net.group())) && !host.contains("master"), "{host}");
    let v6 = String::from_utf8(TestNode::in_ns(&t.node_ns(), &["ip", "-6", "addr", "show", "dev", &w.host_ifname]).stdout).unwrap();
    assert!(!v6.contains("inet6"), "a host end has no IPv6 address of its own: {v6}");
    let off = TestNode::in_ns(&t.node_ns(), &["cat", &format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", w.host_ifname)]);
    assert_eq!(String::from_utf8_lossy(&off.stdout).trim(), "1", "nor IPv6 at all");
    // No MTU given and no default route in a fresh node namespace: 1500.
    let net2 = t.node.create_network(t.network("dflt", "10.202.1.0/24")).await.unwrap();
    assert_eq!(net2.mtu, Some(1500));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detach_leaves_no_veth_address_or_record_and_is_idempotent() {
    need_root();
    let t = TestNode::new("detach");
    let net = t.node.create_network(t.network("det", "10.203.0.0/24")).await.unwrap();
    let p = t.pod("p");
    let owner = OwnerId::new("pod-p").unwrap();
    let w = t.node.attach(&net.name, t.request("pod-p", &p)).await.unwrap();
    t.node.detach(&net.name, &owner).await.unwrap();
    let links = String::from_utf8(TestNode::in_ns(&t.node_ns(), &["ip", "-o", "link"]).stdout).unwrap();
    assert!(!links.contains(&w.host_ifname), "{links}");
    let inside = String::from_utf8(TestNode::in_ns(&p, &["ip", "-o", "addr"]).stdout).unwrap();
    assert!(!inside.contains("10.203.0."), "{inside}");
    assert!(t.node.members(&net.name).unwrap().is_empty());
    t.node.detach(&net.name, &owner).await.unwrap();
    // The address is free again (allocation moves on round-robin, so ask for it).
    let again = t.node.attach(&net.name, AttachRequest { ip: Some(w.ip), ..t.request("pod-q", &p) }).await.unwrap();
    assert_eq!(again.ip, w.ip);
    // Detach still works once the pod's namespace is gone.
    remove_pinned(&p).unwrap();
    t.node.detach(&net.name, &OwnerId::new("pod-q").unwrap()).await.unwrap();
    t.node.remove_network(&net.name).await.unwrap();
    let links = String::from_utf8(TestNode::in_ns(&t.node_ns(), &["ip", "-o", "link"]).stdout).unwrap();
    assert!(!links.contains(net.bridge.as_str()), "{links}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_concurrent_attaches_get_distinct_addresses() {
    need_root();
    let t = std::sync::Arc::new(TestNode::new("many"));
    let net = t.node.create_network(t.network("many", "10.204.0.0/22")).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let t = t.clone();
        let name = net.name.clone();
        let ns = t.pod(&format!("p{i}"));
        tasks.push(tokio::spawn(async move { t.node.attach(&name, t.request(&format!("pod-{i}"), &ns)).await.map(|w| w.ip) }));
    }
    let mut ips = std::collections::HashSet::new();
    for task in tasks {
        ips.insert(task.await.unwrap().unwrap());
    }
    assert_eq!(ips.len(), 200);
    assert_eq!(t.node.members(&net.name).unwrap().len(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configs_and_clashes_are_refused_with_nothing_made() {
    need_root();
    let t = TestNode::new("bad");
    let net = t.node.create_network(t.network("first", "10.205.0.0/16")).await.unwrap();
    let overlap = t.node.create_network(t.network("second", "10.205.3.0/24")).await.unwrap_err();
    assert!(matches!(overlap, NetworkError::Overlap { .. }), "{overlap}");
    assert!(overlap.to_string().contains("overlaps 10.205.0.0/16 of network first"));
    let mut same_bridge = t.network("third", "10.206.0.0/24");
    same_bridge.bridge = net.bridge.clone();
    assert!(matches!(t.node.create_network(same_bridge).await, Err(NetworkError::BridgeTaken { .. })));
    assert!(matches!(
        t.node.create_network(t.network("tiny", "10.207.0.0/31")).await,
        Err(NetworkError::Config(minipod_netstack::ConfigError::TooSmall { .. }))
    ));
    assert!(IfName::new("a-bridge-name-too-long").is_err());
    assert_eq!(t.node.networks().unwrap().len(), 1, "nothing recorded for refused networks");

    let p = t.pod("p");
    let w = t.node.attach(&net.name, t.request("pod-p", &p)).await.unwrap();
    let twice = t.node.attach(&net.name, t.request("pod-p", &p)).await.unwrap_err();
    assert!(twice.to_string().contains("already attached"), "{twice}");
    // eth0 exists in p already: the attach fails and rolls back its address and veth.
    let clash = t.node.attach(&net.name, t.request("pod-other", &p)).await.unwrap_err();
    assert!(clash.to_string().contains("eth0"), "{clash}");
    assert_eq!(t.node.members(&net.name).unwrap().len(), 1);
    let links = String::from_utf8(TestNode::in_ns(&t.node_ns(), &["ip", "-o", "link", "show", "type", "veth"]).stdout).unwrap();
    assert_eq!(links.lines().count(), 1, "only the first pod's veth: {links}");
    let rolled_back = std::net::Ipv4Addr::from(u32::from(w.ip) + 1);
    let next = t.node.attach(&net.name, AttachRequest { ip: Some(rolled_back), ..t.request("pod-r", &t.pod("r")) }).await.unwrap();
    assert_eq!(next.ip, rolled_back, "the rolled-back address was released");
    // The host end's name is taken by a link that is not ours: refused, and it stays.
    let taken = minipod_netstack::host_ifname(&net.name, &OwnerId::new("pod-s").unwrap());
    assert!(TestNode::in_ns(&t.node_ns(), &["ip", "link", "add", &taken, "type", "veth", "peer", "name", "x2"]).status.success());
    let clash = t.node.attach(&net.name, t.request("pod-s", &t.pod("s"))).await.unwrap_err();
    assert!(matches!(&clash, NetworkError::LinkClash(name) if *name == taken), "{clash}");
    assert!(TestNode::in_ns(&t.node_ns(), &["ip", "link", "show", &taken]).status.success(), "the other link is left alone");
    assert!(TestNode::in_ns(&t.node_ns(), &["ip", "link", "del", &taken]).status.success());
    let busy = t.node.remove_network(&net.name).await.unwrap_err();
    assert!(busy.to_string().contains("2 member(s)"), "{busy}");
    assert!(matches!(t.node.attach(&NetworkName::new("nope").unwrap(), t.request("x", &p)).await, Err(NetworkError::NoSuchNetwork(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_after_a_crash_removes_everything_of_dead_owners_and_nothing_else() {
    need_root();
    let t = TestNode::new("gc");
    let net = t.node.create_network(t.network("gc", "10.209.0.0/24")).await.unwrap();
    let ports = |p: u16| {
        vec![minipod_netstack::PortMapping { proto: minipod_netstack::Proto::Tcp, host_port: p, host_ip: None, container_port: 80 }]
    };
    let (a, b, c) = (t.pod("a"), t.pod("b"), t.pod("c"));
    let wa = t.node.attach(&net.name, AttachRequest { ports: ports(9001), ..t.request("alive", &a) }).await.unwrap();
    let wb = t.node.attach(&net.name, AttachRequest { ports: ports(9002), ..t.request("dead", &b) }).await.unwrap();
    // A crash between allocating an address and recording the member.
    let half =
        minipod_netstack::ipam::Ipam::new(t.base.join("state/networks/gc/ipam"), "10.209.0.0/24".parse().unwrap(), net.gateway().into());
    let orphan_ip = half.allocate(&OwnerId::new("crashed").unwrap(), None).unwrap();
    // A veth whose record was lost.
    TestNode::in_ns(&t.node_ns(), &["ip", "link", "add", "mp0123456789", "type", "veth", "peer", "name", "x0"]);
    drop(c);

    let live: std::collections::HashSet<OwnerId> = [OwnerId::new("alive").unwrap()].into();
    let report = t.node.gc(&live).await.unwrap();
    assert_eq!(report.members.len(), 1, "{report:?}");
    assert_eq!(report.addresses, vec![(net.name.clone(), orphan_ip)]);
    assert_eq!(report.links, vec!["mp0123456789".to_string()]);

    let links = String::from_utf8(TestNode::in_ns(&t.node_ns(), &["ip", "-o", "link"]).stdout).unwrap();
    assert!(links.contains(&wa.host_ifname) && !links.contains(&wb.host_ifname) && !links.contains("mp0123456789"), "{links}");
    let map = String::from_utf8(TestNode::in_ns(&t.node_ns(), &["nft", "list", "map", "inet", "minipod", "ports4"]).stdout).unwrap();
    assert!(map.contains("9001") && !map.contains("9002"), "{map}");
    assert_eq!(t.node.members(&net.name).unwrap().len(), 1);
    assert!(TestNode::ping(&a, net.gateway()), "the live member still works");
    assert!(t.node.gc(&live).await.unwrap().is_empty(), "a second gc finds nothing");

    // An unreadable member record is reported, and while it is there no veth counts as
    // stray (it could be that member's); the rest of gc still runs.
    let broken = t.base.join("state/networks/gc/members/broken.json");
    std::fs::write(&broken, b"{ not json").unwrap();
    TestNode::in_ns(&t.node_ns(), &["ip", "link", "add", "mp9876543210", "type", "veth", "peer", "name", "x1"]);
    let report = t.node.gc(&live).await.unwrap();
    assert!(report.failures.iter().any(|(what, _)| what.contains("members of gc")), "{report:?}");
    assert!(report.links.is_empty(), "{report:?}");
    std::fs::remove_file(&broken).unwrap();
    assert_eq!(t.node.gc(&live).await.unwrap().links, vec!["mp9876543210".to_string()]);
    let links = String::from_utf8(TestNode::in_ns(&t.node_ns(), &["ip", "-o", "link"]).stdout).unwrap();
    assert!(links.contains(&wa.host_ifname), "{links}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_network_comes_with_its_first_member_and_goes_with_its_last() {
    need_root();
    let t = TestNode::new("dflt");
    let name = minipod_netstack::NetworkConfig::default_network().name;
    let (p, q) = (t.pod("p"), t.pod("q"));
    let wp = t.node.attach(&name, t.request("pod-p", &p)).await.unwrap();
    assert_eq!(wp.ip.to_string(), "10.88.0.2");
    t.node.attach(&name, t.request("pod-q", &q)).await.unwrap();
    let links = String::from_utf8(TestNode::in_ns(&t.node_ns(), &["ip", "-o", "link", "show", "minipod0"]).stdout).unwrap();
    assert!(links.contains("minipod0"), "the bridge exists: {links}");

    t.node.detach(&name, &OwnerId::new("pod-p").unwrap()).await.unwrap();
    assert!(t.node.network(&name).unwrap().is_some(), "one member left");
    t.node.detach_released(&name, &OwnerId::new("pod-q").unwrap()).await.unwrap();
    assert!(t.node.network(&name).unwrap().is_none(), "gone with its last member");
    let links = TestNode::in_ns(&t.node_ns(), &["ip", "-o", "link", "show", "minipod0"]);
    assert!(!links.status.success(), "the bridge is gone too");
    // And comes back on the next attach.
    let again = t.node.attach(&name, t.request("pod-r", &t.pod("r"))).await.unwrap();
    assert_eq!(again.network, name);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_is_given_again_while_its_former_link_lingers() {
    need_root();
    let t = TestNode::new("reuse");
    let net = t.node.create_network(t.network("reuse", "10.207.0.0/24")).await.unwrap();
    let (old, new, peer) = (t.pod("old"), t.pod("new"), t.pod("peer"));
    let w = t.node.attach(&net.name, t.request("old", &old)).await.unwrap();
    // The pod teardown path frees the address and leaves the veth to the kernel,
    // which deletes it with the namespace: here something still holds it.
    t.node.detach_released(&net.name, &OwnerId::new("old").unwrap()).await.unwrap();
    let again = AttachRequest { ip: Some(w.ip), ..t.request("new", &new) };
    let w2 = t.node.attach(&net.name, again).await.unwrap();
    assert_eq!(w2.ip, w.ip);
    t.node.attach(&net.name, t.request("peer", &peer)).await.unwrap();
    assert!(TestNode::ping(&peer, w2.ip), "the address leads to its new holder");

    // A route to the next address that is not ours (another state dir handing out the
    // same subnet on this node): refused, said so, nothing left, the route untouched.
    let next = std::net::Ipv4Addr::from(u32::from(w2.ip) + 2);
    let foreign = format!("ip route add {next}/32 dev {}", net.bridge);
    assert!(TestNode::in_ns(&t.node_ns(), &["sh", "-c", &foreign]).status.success());
    let err = t.node.attach(&net.name, AttachRequest { ip: Some(next), ..t.request("clash", &t.pod("clash")) }).await.unwrap_err();
    assert!(matches!(err, NetworkError::AddressRouted { .. }) && err.to_string().contains("its own network and subnet"), "{err}");
    let links = String::from_utf8(TestNode::in_ns(&t.node_ns(), &["ip", "-o", "link", "show", "type", "veth"]).stdout).unwrap();
    assert_eq!(links.lines().count(), 3, "old, new and peer only: {links}");
    let route = String::from_utf8(TestNode::in_ns(&t.node_ns(), &["ip", "route", "show", &next.to_string()]).stdout).unwrap();
    assert!(route.contains(&format!("dev {}", net.bridge)), "{route}");
    assert!(t.node.members(&net.name).unwrap().iter().all(|m| m.ip != next));

    // Ports on a network that does not carry the default route could not answer.
    let ports =
        vec![minipod_netstack::PortMapping { proto: minipod_netstack::Proto::Tcp, host_port: 8093, host_ip: None, container_port: 80 }];
    let side = AttachRequest { ports, default_route: false, ..t.request("side", &t.pod("side")) };
    let err = t.node.attach(&net.name, side).await.unwrap_err();
    assert!(matches!(err, NetworkError::PortsOffDefaultRoute(_)), "{err}");
}

/// A workload's first packet is sent the moment its network is there: attach must
/// return with both ends of its link passing traffic (a veth end brought up before
/// its peer is only activated later by the kernel's link watch, and drops what it is
/// asked to send until then). Right after each new pod's attach, it sends one
/// datagram out (through its own end) and is sent one (through the node's end), once
/// each; every one must arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_packets_after_attach_arrive_both_ways() {
    use std::net::UdpSocket;
    use std::time::Duration;
    need_root();
    let in_pod = |ns: &std::path::Path, bind: std::net::SocketAddr| {
        let socket =
            minipod_netstack::netns::Netns::open(ns).unwrap().run(move || UdpSocket::bind(bind)).unwrap().expect("a UDP socket in a pod");
        socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        socket
    };
    let receive = |socket: &UdpSocket, i: u32| {
        let mut got = [0u8; 4];
        match socket.recv(&mut got) {
            Ok(4) => assert_eq!(u32::from_be_bytes(got), i, "a datagram of another pod"),
            Ok(n) => panic!("a datagram of {n} bytes"),
            Err(_) => return false,
        }
        true
    };
    let t = TestNode::new("first");
    let net = t.node.create_network(t.network("first", "10.207.8.0/22")).await.unwrap();
    let sink_ns = t.pod("sink");
    let sink_ip = t.node.attach(&net.name, t.request("sink", &sink_ns)).await.unwrap().ip;
    let sink = in_pod(&sink_ns, (sink_ip, 7000).into());
    let (mut lost_out, mut lost_in) = (Vec::new(), Vec::new());
    for i in 0..150u32 {
        let owner = format!("p{i}");
        let pod_ns = t.pod(&owner);
        // Bound before the pod has an address: nothing waits between attach and send.
        let pod = in_pod(&pod_ns, ([0, 0, 0, 0], 7001).into());
        let ip = t.node.attach(&net.name, t.request(&owner, &pod_ns)).await.unwrap().ip;
        assert_eq!(pod.send_to(&i.to_be_bytes(), (sink_ip, 7000)).expect("sending from the new pod"), 4);
        assert_eq!(sink.send_to(&i.to_be_bytes(), (ip, 7001)).expect("sending to the new pod"), 4);
        if !receive(&sink, i) {
            lost_out.push(i);
        }
        if !receive(&pod, i) {
            lost_in.push(i);
        }
        t.node.detach(&net.name, &OwnerId::new(&owner).unwrap()).await.unwrap();
    }
    assert!(lost_out.is_empty() && lost_in.is_empty(), "first datagrams lost, from new pods: {lost_out:?}, to them: {lost_in:?}");
}
