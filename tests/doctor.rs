//! `minipod doctor` on two overlay nodes made for the test: a healthy node passes every
//! check, and each thing broken on purpose (forwarding, masquerade, a forward-drop
//! table, the overlay's MTU, a peer's forwarding entry, a pod's route) is named with
//! its fix; pods and Services are looked up in DNS as pods' resolvers would, and a
//! policy blocking a pod's lookups is named; `doctor flow` probes the path MTU across
//! nodes, names the policy that denies a flow and the isolation of two networks; each
//! pod's resolv.conf is read and checked against the server it should name.

mod support;

use std::net::{Ipv4Addr, SocketAddrV4};

use minipod_netstack::overlay::OverlayPeer;
use minipod_netstack::{
    AddrRange, DnsScope, IfName, Namespace, NodePolicies, PolicyPort, PolicyRule, PolicyRules, Proto, ServiceDns, ServiceName, ServicePort,
    VirtualService,
};
use support::node::{sh, TestNode, Underlay};
use support::{minipod_bin, need_root};

/// `minipod doctor ARGS` on node `t`: exit code, and the findings as JSON.
fn doctor(t: &TestNode, args: &[&str]) -> (i32, Vec<serde_json::Value>) {
    let out = std::process::Command::new(minipod_bin())
        .arg("--root")
        .arg(t.base.join("state"))
        .args(["doctor", "--netns"])
        .arg(t.node_ns())
        .args(["-o", "json"])
        .args(args)
        .output()
        .unwrap();
    let findings = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code().unwrap_or(-1), findings)
}

/// The one failing check of `findings`, which must name `check`.
fn the_failure<'a>(findings: &'a [serde_json::Value], check: &str) -> &'a serde_json::Value {
    let failed: Vec<&serde_json::Value> = findings.iter().filter(|f| f["verdict"] == "fail").collect();
    assert!(
        failed.len() == 1 && failed[0]["check"].as_str().is_some_and(|c| c.contains(check)),
        "want only {check} failing: {findings:#?}"
    );
    failed[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_doctor_names_each_broken_thing_and_its_fix() {
    need_root();
    let ul = Underlay::new();
    let mut nodes = Vec::new();
    for i in [71u8, 72] {
        let t = TestNode::new(&format!("doc{i}"));
        let addr = ul.plug(&t, i, 1500);
        let mut cfg = t.network("pods", &format!("10.244.{i}.0/24"));
        cfg.mtu = Some(1450);
        cfg.dns = false;
        let net = t.node.create_network(cfg).await.unwrap();
        t.node.join_overlay(&net.name, 1, &IfName::new("ul0").unwrap(), addr).await.unwrap();
        nodes.push((t, net, addr));
    }
    let peer = |i: usize| OverlayPeer { underlay: nodes[i].2, subnet: nodes[i].1.subnet };
    nodes[0].0.node.add_overlay_peer(peer(1)).await.unwrap();
    nodes[1].0.node.add_overlay_peer(peer(0)).await.unwrap();
    let (t, net) = (&nodes[0].0, &nodes[0].1);
    let (pa, pa2) = (t.pod("a"), t.pod("a2"));
    let a = t.node.attach(&net.name, t.request("pod-a", &pa)).await.unwrap();
    let a2 = t.node.attach(&net.name, t.request("pod-a2", &pa2)).await.unwrap();

    let (code, healthy) = doctor(t, &[]);
    assert!(code == 0 && !healthy.iter().any(|f| f["verdict"] == "fail"), "a healthy node: {healthy:#?}");
    for check in ["IPv4 forwarding", "masquerade rule", "network pods: bridge", "overlay mpvx1", "overlay peer 192.0.2.72", "pod pod-a"] {
        let found = healthy.iter().any(|f| f["check"].as_str().is_some_and(|c| c.starts_with(check)) && f["verdict"] == "pass");
        assert!(found, "{check}: {healthy:#?}");
    }
    let ns = t.node_ns();
    let broken = [
        ("sysctl -qw net.ipv4.ip_forward=0", "sysctl -qw net.ipv4.ip_forward=1", "IPv4 forwarding", "ip_forward=1"),
        (
            "nft delete element inet minipod masq_nets4 { 10.244.71.0/24 }",
            "nft add element inet minipod masq_nets4 { 10.244.71.0/24 }",
            "network pods: masquerade",
            "nft add element inet minipod masq_nets4 { 10.244.71.0/24 }",
        ),
        (
            "nft add table ip other && nft add chain ip other forwarding '{ type filter hook forward priority 0; policy drop; }'",
            "nft delete table ip other",
            "other tables' forward policy",
            "nft insert rule ip other forwarding meta iifgroup",
        ),
        ("ip link set mpvx1 mtu 1400", "ip link set mpvx1 mtu 1450", "overlay mpvx1", "ip link set mpvx1 mtu 1450"),
        (
            "bridge fdb del 02:76:c0:00:02:48 dev mpvx1 dst 192.0.2.72 self",
            "bridge fdb replace 02:76:c0:00:02:48 dev mpvx1 dst 192.0.2.72 self permanent",
            "overlay peer 192.0.2.72",
            "minipod net overlay add-peer 192.0.2.72 --pod-cidr 10.244.72.0/24",
        ),
        (
            &format!("ip route del {}/32", a.ip),
            &format!("ip route add {}/32 dev {} scope link src {}", a.ip, a.host_ifname, a.gateway),
            "pod pod-a",
            &format!("ip route replace {}/32 dev {}", a.ip, a.host_ifname),
        ),
    ];
    for (breaking, mending, check, fix) in broken {
        sh(&ns, breaking);
        let (code, findings) = doctor(t, &[]);
        let failure = the_failure(&findings, check);
        assert!(code == 1 && failure["fix"].as_str().is_some_and(|f| f.contains(fix)), "{breaking}: {failure:#}");
        sh(&ns, mending);
        let (code, findings) = doctor(t, &[]);
        assert!(code == 0, "mended ({mending}): {findings:#?}");
    }

    // DNS: a network whose server runs (here, in this process), a pod on it found by
    // its name and a Service by its full name; a policy isolating the pod for egress
    // blocks its lookups, and the doctor says which check fails.
    let mut named = t.network("named", "10.232.0.0/24");
    named.dns = true;
    let named = t.node.create_network(named).await.unwrap();
    t.node.serve_dns(DnsScope::AllNetworks).unwrap();
    let pn = t.pod("n");
    let n = t.node.attach(&named.name, t.request("pod-n", &pn)).await.unwrap();
    let vip = Ipv4Addr::new(10, 96, 0, 50);
    let svc = VirtualService {
        owner: "shop/web".into(),
        ip: vip,
        ports: vec![ServicePort {
            proto: Proto::Tcp,
            port: 80,
            name: None,
            endpoints: vec![SocketAddrV4::new(a.ip, 8080)],
            node_port: None,
        }],
        dns: Some(ServiceDns { namespace: Namespace::new("shop").unwrap(), name: ServiceName::new("web").unwrap() }),
        affinity: None,
    };
    t.node.program_service(&svc).unwrap();
    let (code, findings) = doctor(t, &[]);
    assert_eq!(code, 0, "{findings:#?}");
    for check in ["pod pod-n: DNS lookup of its name", "network named: DNS lookup of service web.shop.svc.cluster.local"] {
        assert!(findings.iter().any(|f| f["check"] == check && f["verdict"] == "pass"), "{check}: {findings:#?}");
    }
    t.node.remove_service(vip).unwrap();
    let deny_egress = NodePolicies(
        [("shop/no-egress".to_string(), PolicyRules { selected: vec![n.ip.into()], ingress: None, egress: Some(vec![]) })].into(),
    );
    t.node.program_policies(&deny_egress).unwrap();
    let (code, findings) = doctor(t, &[]);
    let failure = the_failure(&findings, "pod pod-n: DNS lookup of its name");
    assert!(code == 1 && failure["fix"].as_str().is_some_and(|f| f.contains("policy blocks the pod's UDP 53")), "{failure:#}");
    t.node.program_policies(&NodePolicies::default()).unwrap();

    // The path MTU across nodes: it carries 1450 bytes, until the uplink cannot.
    let pb = nodes[1].0.pod("b");
    let b = nodes[1].0.node.attach(&nodes[1].1.name, nodes[1].0.request("pod-b", &pb)).await.unwrap();
    let (code, findings) = doctor(t, &["flow", &a.ip.to_string(), &format!("{}:80", b.ip)]);
    assert!(code == 0 && findings.iter().any(|f| f["check"] == "path MTU" && f["verdict"] == "pass"), "{findings:#?}");
    sh(&ns, "ip link set ul0 mtu 1400");
    let (code, findings) = doctor(t, &["flow", &a.ip.to_string(), &format!("{}:80", b.ip)]);
    let failure = the_failure(&findings, "path MTU");
    assert!(code == 1 && failure["found"].as_str().is_some_and(|f| f.contains("1450-byte packet")), "{failure:#}");
    let (_, findings) = doctor(t, &[]);
    let failure = the_failure(&findings, "overlay uplink ul0");
    assert!(failure["fix"].as_str().is_some_and(|f| f.contains("ip link set ul0 mtu 1500")), "{failure:#}");
    sh(&ns, "ip link set ul0 mtu 1500");

    // One flow: a policy isolating pod-a2 that allows only port 9090 denies 8080, by name.
    let policies = NodePolicies(
        [(
            "shop/only-9090".to_string(),
            PolicyRules {
                selected: vec![a2.ip.into()],
                ingress: Some(vec![PolicyRule {
                    peers: Some(vec![AddrRange::one(a.ip)]),
                    ports: vec![PolicyPort { proto: Proto::Tcp, ports: Some((9090, 9090)) }],
                    members: None,
                }]),
                egress: None,
            },
        )]
        .into(),
    );
    t.node.program_policies(&policies).unwrap();
    let (code, findings) = doctor(t, &["flow", &a.ip.to_string(), &format!("{}:8080", a2.ip)]);
    let failure = the_failure(&findings, &format!("ingress of {}", a2.ip));
    assert!(code == 1 && failure["found"].as_str().is_some_and(|f| f.contains("isolated for ingress by shop/only-9090")), "{failure:#}");
    let (code, findings) = doctor(t, &["flow", &a.ip.to_string(), &format!("{}:9090", a2.ip)]);
    assert!(
        code == 0 && findings.iter().any(|f| f["found"].as_str().is_some_and(|s| s.contains("allowed by shop/only-9090"))),
        "{findings:#?}"
    );
    // To a pod of the peer node over the overlay: one network, routed.
    let (code, findings) = doctor(t, &["flow", &a.ip.to_string(), "10.244.72.5:80"]);
    assert!(
        code == 0 && findings.iter().any(|f| f["found"].as_str().is_some_and(|s| s.contains("pod of an overlay peer"))),
        "{findings:#?}"
    );
    // Two networks are isolated from each other.
    let other = t.node.create_network(t.network("other", "10.231.0.0/24")).await.unwrap();
    let pc = t.pod("c");
    let c = t.node.attach(&other.name, t.request("pod-c", &pc)).await.unwrap();
    let (code, findings) = doctor(t, &["flow", &a.ip.to_string(), &format!("{}:80", c.ip)]);
    let failure = the_failure(&findings, "same network");
    assert!(code == 1 && failure["found"].as_str().is_some_and(|f| f.contains("networks are isolated")), "{failure:#}");
}

/// The doctor reads each pod's resolv.conf, the file its containers see: a pod made by
/// the CLI names its network's DNS server; one whose file was changed, or is gone, is
/// named with the line to put back.
#[test]
fn the_doctor_reads_each_pods_resolv_conf() {
    need_root();
    let env = support::pods::PodEnv::new("doctor-resolv");
    let node = TestNode::new("docres");
    let cli = support::cli::Cli::new(&env, &node);
    cli.ok(&["pod", "run", "asker"]);
    let inspect: serde_json::Value = serde_json::from_str(&cli.ok(&["pod", "inspect", "asker"])).unwrap();
    let id = inspect["pod"]["id"].as_str().unwrap().to_string();
    let ns = node.node_ns();
    let findings = || {
        let out = env.h.minipod(&["doctor", "--netns", ns.to_str().unwrap(), "-o", "json"]);
        let all: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        all.into_iter().find(|f| f["check"] == "pod asker: resolv.conf").unwrap_or_else(|| panic!("no resolv.conf check"))
    };
    let healthy = findings();
    assert_eq!(healthy["verdict"], "pass", "{healthy:#}");
    let gateway = healthy["found"].as_str().unwrap().split_whitespace().nth(1).unwrap().to_string();
    assert!(gateway.parse::<Ipv4Addr>().is_ok(), "{healthy:#}");
    let file = env.h.root.join("pods").join(&id).join("etc/resolv.conf");
    std::fs::write(&file, "nameserver 192.0.2.99\n").unwrap();
    let changed = findings();
    assert_eq!(changed["verdict"], "fail", "{changed:#}");
    assert!(changed["found"].as_str().unwrap().contains("nameserver 192.0.2.99, not"), "{changed:#}");
    assert!(changed["fix"].as_str().unwrap().contains(&format!("nameserver {gateway}")), "{changed:#}");
    std::fs::remove_file(&file).unwrap();
    let gone = findings();
    assert!(gone["verdict"] == "fail" && gone["found"].as_str().unwrap().contains("cannot read"), "{gone:#}");
    cli.ok(&["pod", "rm", "--force", "asker"]);
    env.assert_clean();
}
