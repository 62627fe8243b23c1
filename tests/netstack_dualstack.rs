//! Dual-stack networks: an IPv6 subnet beside the IPv4 one, in a throwaway node.

mod support;

use minipod_netstack::{AttachRequest, OwnerId, PortMapping, Proto};
use support::need_root;
use support::node::TestNode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_stack_pods_talk_over_ipv6_get_masqueraded_and_resolve_aaaa() {
    need_root();
    let t = TestNode::new("v6");
    let inet = t.internet();
    t.http_server(&inet, 80, "internet");
    let mut cfg = t.network("dual", "10.240.0.0/24");
    cfg.subnet6 = Some("fd00:240::/64".parse().unwrap());
    let net = t.node.create_network(cfg).await.unwrap();
    assert_eq!(net.gateway6().unwrap().to_string(), "fd00:240::1");
    t.node.serve_dns(minipod_netstack::DnsScope::AllNetworks).unwrap();
    let (a, b) = (t.pod("a"), t.pod("b"));
    let wa = t.node.attach(&net.name, t.request("pod-a", &a)).await.unwrap();
    let wb = t.node.attach(&net.name, t.request("pod-b", &b)).await.unwrap();
    let (a6, b6) = (wa.ip6.unwrap(), wb.ip6.unwrap());
    assert_eq!((a6.to_string().as_str(), b6.to_string().as_str()), ("fd00:240::2", "fd00:240::3"));

    let ping6 = TestNode::in_ns(&a, &["busybox", "ping", "-6", "-c", "1", "-w", "10", &b6.to_string()]);
    assert!(ping6.status.success(), "a -> b over IPv6: {}", String::from_utf8_lossy(&ping6.stdout));
    let route = String::from_utf8(TestNode::in_ns(&a, &["ip", "-6", "route"]).stdout).unwrap();
    assert!(route.contains("default via fd00:240::1 dev eth0"), "{route}");
    // Members' multicast stops at their host end (they are told every MAC they need):
    // nothing on the node answers all-nodes.
    // (The pod itself answers: it is one of them.)
    let all_nodes = TestNode::in_ns(&a, &["busybox", "ping", "-6", "-c", "2", "-W", "1", "-I", "eth0", "ff02::1"]);
    let replies = String::from_utf8_lossy(&all_nodes.stdout);
    let others = replies.lines().filter(|l| l.contains("bytes from") && !l.contains(&format!("from {a6}:"))).count();
    assert_eq!(others, 0, "{replies}");

    let seen = TestNode::fetch(&a, "http://[2001:db8:1::1]/cgi-bin/ip").unwrap_or_default();
    assert_eq!(seen.trim_start_matches('[').trim_end_matches(']'), "2001:db8:1::2", "IPv6 egress leaves with the node's address");

    let aaaa = TestNode::in_ns(&a, &["timeout", "5", "busybox", "nslookup", "-type=AAAA", "pod-b", &net.gateway().to_string()]);
    let out = String::from_utf8_lossy(&aaaa.stdout);
    assert!(out.contains("fd00:240::3"), "{out}");

    t.node.detach(&net.name, &OwnerId::new("pod-b").unwrap()).await.unwrap();
    let inside =
        String::from_utf8(TestNode::in_ns(&t.node_ns(), &["ls", t.base.join("state/networks/dual/ipam6/ips").to_str().unwrap()]).stdout)
            .unwrap();
    assert_eq!(inside.trim(), "fd00:240::2", "b's IPv6 address is free again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_published_port_answers_on_the_nodes_ipv6_addresses_too() {
    need_root();
    let t = TestNode::new("v6ports");
    let inet = t.internet();
    let mut cfg = t.network("dualp", "10.241.0.0/24");
    cfg.subnet6 = Some("fd00:241::/64".parse().unwrap());
    let net = t.node.create_network(cfg).await.unwrap();
    let (a, b) = (t.pod("a"), t.pod("b"));
    let ports = vec![PortMapping { proto: Proto::Tcp, host_port: 8087, host_ip: None, container_port: 80 }];
    t.node.attach(&net.name, AttachRequest { ports, ..t.request("pod-a", &a) }).await.unwrap();
    t.node.attach(&net.name, t.request("pod-b", &b)).await.unwrap();
    t.http_server(&a, 80, "hello-v6");

    let url6 = "http://[2001:db8:1::2]:8087/";
    assert_eq!(TestNode::fetch(&inet, url6).as_deref(), Some("hello-v6"), "from the internet over IPv6");
    assert_eq!(TestNode::fetch(&inet, "http://198.51.100.2:8087/").as_deref(), Some("hello-v6"), "and over IPv4");
    assert_eq!(TestNode::fetch(&b, url6).as_deref(), Some("hello-v6"), "from another pod through the node");
    assert_eq!(TestNode::fetch(&a, url6).as_deref(), Some("hello-v6"), "from the pod itself (hairpin)");
    assert_eq!(TestNode::fetch(&t.node_ns(), url6).as_deref(), Some("hello-v6"), "from the node itself");

    t.node.detach(&net.name, &OwnerId::new("pod-a").unwrap()).await.unwrap();
    let map = String::from_utf8(TestNode::in_ns(&t.node_ns(), &["nft", "list", "map", "inet", "minipod", "ports6"]).stdout).unwrap();
    assert!(!map.contains("8087"), "withdrawn on detach: {map}");
    assert_eq!(TestNode::fetch(&inet, url6), None);
}

/// The table as minipod made it before IPv6 published ports, when members were ports
/// of their network's bridge and the rules matched on bridge names.
const TABLE_BEFORE_IPV6_PORTS: &str = r#"
table inet minipod {
	set bridges { type ifname; }
	set internal_bridges { type ifname; }
	set bridge_pairs { type ifname . ifname; }
	set nets4 { type ipv4_addr; flags interval; }
	set masq_nets4 { type ipv4_addr; flags interval; }
	set nets6 { type ipv6_addr; flags interval; }
	set masq_nets6 { type ipv6_addr; flags interval; }
	map ports4 { type inet_proto . inet_service : ipv4_addr . inet_service; }
	map hostports4 { type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service; }
	chain forward {
		type filter hook forward priority filter; policy accept;
		ct state established,related accept
		iifname . oifname @bridge_pairs accept
		iifname @bridges oifname @bridges drop
		iifname @internal_bridges drop
		oifname @internal_bridges drop
		iifname @bridges accept
		oifname @bridges ct status dnat accept
		oifname @bridges drop
	}
	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		fib daddr type local dnat ip to ip daddr . meta l4proto . th dport map @hostports4
		fib daddr type local dnat ip to meta l4proto . th dport map @ports4
	}
	chain output {
		type nat hook output priority -100; policy accept;
		fib daddr type local dnat ip to ip daddr . meta l4proto . th dport map @hostports4
		fib daddr type local dnat ip to meta l4proto . th dport map @ports4
	}
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		ct status dnat ip saddr @nets4 oifname @bridges masquerade
		ct status dnat ip saddr 127.0.0.0/8 masquerade
		ip saddr @masq_nets4 oifname != @bridges masquerade
		ip6 saddr @masq_nets6 oifname != @bridges masquerade
	}
}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_from_an_older_minipod_is_rebuilt_with_the_recorded_networks_and_ports() {
    need_root();
    let t = TestNode::new("v6upgrade");
    let inet = t.internet();
    let mut cfg = t.network("dualu", "10.242.0.0/24");
    cfg.subnet6 = Some("fd00:242::/64".parse().unwrap());
    let net = t.node.create_network(cfg).await.unwrap();
    let a = t.pod("a");
    let ports = vec![PortMapping { proto: Proto::Tcp, host_port: 8088, host_ip: None, container_port: 80 }];
    let wa = t.node.attach(&net.name, AttachRequest { ports, ..t.request("pod-a", &a) }).await.unwrap();
    t.http_server(&a, 80, "hello-after-upgrade");
    // A member as an older minipod wired it: a port of the bridge, on-link with the
    // whole subnet.
    let c = t.pod("c");
    let old_member = format!(
        "ip link add mpoldmember0 type veth peer name eth0 netns {c} && ip link set mpoldmember0 master {br} up && \
         nsenter --net={c} sh -c 'ip link set lo up && ip addr add 10.242.0.50/24 dev eth0 && ip link set eth0 up && ip route add default via 10.242.0.1'",
        c = c.display(),
        br = net.bridge
    );
    assert!(TestNode::in_ns(&t.node_ns(), &["sh", "-c", &old_member]).status.success());
    // That minipod's table, which matched on bridge names, in place of ours.
    let old_table = format!("delete table inet minipod\n{TABLE_BEFORE_IPV6_PORTS}");
    let mut nft = std::process::Command::new("nsenter")
        .arg(format!("--net={}", t.node_ns().display()))
        .args(["nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut nft.stdin.take().unwrap(), old_table.as_bytes()).unwrap();
    assert!(nft.wait().unwrap().success());

    // And its bridge, in the default group and answering no ARP for others.
    let old_bridge = format!("ip link set {br} group default && echo 0 > /proc/sys/net/ipv4/conf/{br}/proxy_arp", br = net.bridge);
    assert!(TestNode::in_ns(&t.node_ns(), &["sh", "-c", &old_bridge]).status.success());

    // The next minipod on this state mends all that at its first attach (no ports,
    // no network created).
    let again = minipod_netstack::Node::new(t.base.join("state"), Some(&t.node_ns())).unwrap();
    let d = t.pod("d");
    let wd = again.attach(&net.name, t.request("pod-d", &d)).await.unwrap();
    let link = String::from_utf8(TestNode::in_ns(&t.node_ns(), &["ip", "link", "show", net.bridge.as_str()]).stdout).unwrap();
    assert!(link.contains(&format!("group {}", net.group())), "{link}");
    let table = String::from_utf8(TestNode::in_ns(&t.node_ns(), &["nft", "list", "table", "inet", "minipod"]).stdout).unwrap();
    assert!(table.contains("set groups") && !table.contains("set bridges"), "{table}");
    assert!(table.contains("tcp . 8088 : fd00:242::2 . 80"), "the recorded port is back: {table}");
    assert_eq!(table.matches("@ports6").count(), 1, "the rule is there once: {table}");
    assert_eq!(TestNode::fetch(&inet, "http://198.51.100.2:8088/").as_deref(), Some("hello-after-upgrade"));
    assert_eq!(TestNode::fetch(&inet, "http://[2001:db8:1::2]:8088/").as_deref(), Some("hello-after-upgrade"));
    // The old member and the routed one reach each other: the bridge answers ARP for
    // the routed one.
    assert!(TestNode::ping(&c, wa.ip), "old member -> routed member");
    assert!(TestNode::ping(&a, "10.242.0.50".parse().unwrap()), "routed member -> old member");
    assert!(TestNode::ping(&d, wa.ip) && TestNode::ping(&a, wd.ip), "the new member and the others reach each other");
    // Another state dir on the same node finds the table current and adds only its own.
    let other = minipod_netstack::Node::new(t.base.join("state2"), Some(&t.node_ns())).unwrap();
    other.create_network(t.network("other", "10.242.1.0/24")).await.unwrap();
    let table = String::from_utf8(TestNode::in_ns(&t.node_ns(), &["nft", "list", "table", "inet", "minipod"]).stdout).unwrap();
    assert!(table.contains("tcp . 8088 : fd00:242::2 . 80") && table.contains("10.242.1.0/24"), "{table}");
    other.remove_network(&minipod_netstack::NetworkName::new("other").unwrap()).await.unwrap();
}
