//! Dual-stack networks: an IPv6 subnet beside the IPv4 one, in a throwaway node.

mod common;

use common::node::TestNode;
use common::not_root;
use minipod_netstack::OwnerId;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_stack_pods_talk_over_ipv6_get_masqueraded_and_resolve_aaaa() {
    if not_root() {
        return;
    }
    let t = TestNode::new("v6");
    let inet = t.internet();
    t.http_server(&inet, 80, "internet");
    let mut cfg = t.network("dual", "10.240.0.0/24");
    cfg.subnet6 = Some("fd00:240::/64".parse().unwrap());
    let net = t.node.create_network(cfg).await.unwrap();
    assert_eq!(net.gateway6().unwrap().to_string(), "fd00:240::1");
    t.node.serve_dns().unwrap();
    let (a, b) = (t.pod("a"), t.pod("b"));
    let wa = t.node.attach(&net.name, t.request("pod-a", &a)).await.unwrap();
    let wb = t.node.attach(&net.name, t.request("pod-b", &b)).await.unwrap();
    let (a6, b6) = (wa.ip6.unwrap(), wb.ip6.unwrap());
    assert_eq!((a6.to_string().as_str(), b6.to_string().as_str()), ("fd00:240::2", "fd00:240::3"));

    let ping6 = TestNode::in_ns(&a, &["busybox", "ping", "-6", "-c", "1", "-W", "2", &b6.to_string()]);
    assert!(ping6.status.success(), "a -> b over IPv6: {}", String::from_utf8_lossy(&ping6.stdout));
    let route = String::from_utf8(TestNode::in_ns(&a, &["ip", "-6", "route"]).stdout).unwrap();
    assert!(route.contains("default via fd00:240::1 dev eth0"), "{route}");

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
