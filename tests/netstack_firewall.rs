//! The nftables side of networks, inside a throwaway node namespace: isolation,
//! masquerade towards a simulated internet (198.51.100.0/24, reachable only through
//! a route the test adds), internal networks, and published ports.

mod support;

use minipod_netstack::{AttachRequest, OwnerId, PortMapping, Proto};
use support::need_root;
use support::node::TestNode;

fn tcp(host_port: u16, container_port: u16) -> PortMapping {
    PortMapping { proto: Proto::Tcp, host_port, host_ip: None, container_port }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_networks_are_isolated_from_each_other() {
    need_root();
    let t = TestNode::new("iso");
    let red = t.node.create_network(t.network("red", "10.210.0.0/24")).await.unwrap();
    let blue = t.node.create_network(t.network("blue", "10.211.0.0/24")).await.unwrap();
    let (r1, r2, b1) = (t.pod("r1"), t.pod("r2"), t.pod("b1"));
    let wr1 = t.node.attach(&red.name, t.request("r1", &r1)).await.unwrap();
    let wr2 = t.node.attach(&red.name, t.request("r2", &r2)).await.unwrap();
    let wb1 = t.node.attach(&blue.name, t.request("b1", &b1)).await.unwrap();
    assert!(TestNode::ping(&r1, wr2.ip), "same network talks");
    assert!(TestNode::no_answer(&r1, wb1.ip), "red cannot reach blue");
    assert!(TestNode::no_answer(&b1, wr1.ip), "blue cannot reach red");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_is_masqueraded_and_internal_networks_have_none() {
    need_root();
    let t = TestNode::new("masq");
    let inet = t.internet();
    t.http_server(&inet, 80, "internet");
    let net = t.node.create_network(t.network("out", "10.212.0.0/24")).await.unwrap();
    let mut internal = t.network("inner", "10.213.0.0/24");
    internal.internal = true;
    let internal = t.node.create_network(internal).await.unwrap();
    let (p, q) = (t.pod("p"), t.pod("q"));
    t.node.attach(&net.name, t.request("p", &p)).await.unwrap();
    t.node.attach(&internal.name, t.request("q", &q)).await.unwrap();
    // httpd listens dual-stack and reports the v4-mapped form.
    let seen = TestNode::fetch(&p, "http://198.51.100.1/cgi-bin/ip").unwrap_or_default();
    assert_eq!(seen.trim_start_matches("[::ffff:").trim_end_matches(']'), "198.51.100.2", "the internet sees the node's address");
    assert_eq!(TestNode::fetch(&q, "http://198.51.100.1/"), None, "an internal network has no way out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_published_port_is_reachable_from_outside_from_pods_and_from_node_localhost() {
    need_root();
    let t = TestNode::new("ports");
    let inet = t.internet();
    let net = t.node.create_network(t.network("web", "10.214.0.0/24")).await.unwrap();
    let (server, client) = (t.pod("server"), t.pod("client"));
    let req = AttachRequest { ports: vec![tcp(8080, 80)], ..t.request("server", &server) };
    let ws = t.node.attach(&net.name, req).await.unwrap();
    t.node.attach(&net.name, t.request("client", &client)).await.unwrap();
    t.http_server(&server, 80, "served-by-pod");

    assert_eq!(TestNode::fetch(&inet, "http://198.51.100.2:8080/").as_deref(), Some("served-by-pod"), "from another host");
    assert_eq!(TestNode::fetch(&client, "http://198.51.100.2:8080/").as_deref(), Some("served-by-pod"), "from a pod (hairpin)");
    assert_eq!(TestNode::fetch(&server, "http://198.51.100.2:8080/").as_deref(), Some("served-by-pod"), "from the pod itself");
    assert_eq!(TestNode::fetch(&t.node_ns(), "http://127.0.0.1:8080/").as_deref(), Some("served-by-pod"), "from the node's localhost");
    // Outside routes the pod subnet to the node, as a router upstream could: a pod's
    // own port is still not reachable from there, only the published one.
    let route = TestNode::in_ns(&inet, &["ip", "route", "add", "10.214.0.0/24", "via", "198.51.100.2"]);
    assert!(route.status.success(), "{}", String::from_utf8_lossy(&route.stderr));
    assert_eq!(TestNode::fetch(&inet, "http://198.51.100.2:8080/").as_deref(), Some("served-by-pod"), "the published port, again");
    assert_eq!(TestNode::fetch(&inet, &format!("http://{}:80/", ws.ip)), None, "pods are not reachable directly from outside");

    // A second owner cannot take the same host port; nothing is left of its attempt.
    let other = t.pod("other");
    let err = t.node.attach(&net.name, AttachRequest { ports: vec![tcp(8080, 81)], ..t.request("other", &other) }).await.unwrap_err();
    assert!(err.to_string().contains("host port tcp/8080 is already published by server"), "{err}");
    assert_eq!(t.node.members(&net.name).unwrap().len(), 2);

    t.node.detach(&net.name, &OwnerId::new("server").unwrap()).await.unwrap();
    assert_eq!(TestNode::fetch(&inet, "http://198.51.100.2:8080/"), None, "unpublished with the detach");
    let again = t.node.attach(&net.name, AttachRequest { ports: vec![tcp(8080, 80)], ..t.request("other", &other) }).await;
    assert!(again.is_ok(), "the port is free again: {:?}", again.err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_firewalls_forward_drop_policy_is_reported_with_the_fix() {
    need_root();
    let t = TestNode::new("fwdrop");
    let net = t.node.create_network(t.network("blocked", "10.215.0.0/24")).await.unwrap();
    assert!(t.node.problems(&net.name).unwrap().is_empty());
    // What Docker does to iptables' FORWARD chain, in this node namespace only.
    let docker_like = "nft add table ip filter && nft 'add chain ip filter FORWARD { type filter hook forward priority 0; policy drop; }'";
    assert!(TestNode::in_ns(&t.node_ns(), &["sh", "-c", docker_like]).status.success());
    let problems = t.node.problems(&net.name).unwrap();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("ip filter FORWARD has a forward policy of drop"), "{}", problems[0]);
    let fix = format!("iptables -I FORWARD -m devgroup --src-group {:#x} -j ACCEPT", net.group());
    assert!(problems[0].contains(&fix), "{}", problems[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_can_neither_reach_the_nodes_localhost_nor_pose_as_another_pod() {
    need_root();
    let t = TestNode::new("guard");
    let net = t.node.create_network(t.network("guarded", "10.216.0.0/24")).await.unwrap();
    let (a, b) = (t.pod("a"), t.pod("b"));
    let wa = t.node.attach(&net.name, t.request("a", &a)).await.unwrap();
    let wb = t.node.attach(&net.name, t.request("b", &b)).await.unwrap();

    // A service on the node's loopback only.
    let www = t.base.join("www-local");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("index.html"), "node-local").unwrap();
    t.spawn_in(&t.node_ns(), &["busybox", "httpd", "-f", "-p", "127.0.0.1:9097", "-h", www.to_str().unwrap()]);
    let up = (0..100).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(20));
        TestNode::fetch(&t.node_ns(), "http://127.0.0.1:9097/").is_some()
    });
    assert!(up, "the node reaches its own localhost service");
    // Pod a, root in its namespace (as a container with NET_ADMIN, or any with
    // NET_RAW crafting frames), sends to 127.0.0.1 through the gateway. The host end
    // lets 127/8 through for the node's own 127.0.0.1:hostPort; the guard must not.
    let hostile = format!(
        "ip addr flush dev lo && ip route add 127.0.0.0/8 via {gw} dev eth0 onlink && echo 1 > /proc/sys/net/ipv4/conf/eth0/route_localnet",
        gw = net.gateway()
    );
    assert!(TestNode::in_ns(&a, &["sh", "-c", &hostile]).status.success());
    assert_eq!(TestNode::fetch(&a, "http://127.0.0.1:9097/"), None, "a pod reached the node's localhost");

    // Pod a takes b's address and pings the gateway from it: the packet must be
    // dropped before conntrack sees it; a's own ping (the control) is seen.
    // The spoofed ping is shown to leave a: its interface sent a packet more.
    let sent_by_a = || {
        let out = TestNode::in_ns(&a, &["sh", "-c", "grep eth0: /proc/net/dev"]);
        let line = String::from_utf8_lossy(&out.stdout).into_owned();
        let fields: Vec<u64> = line.split(':').nth(1).unwrap_or("").split_whitespace().filter_map(|f| f.parse().ok()).collect();
        assert!(fields.len() > 9, "a's counters: {line:?}");
        fields[9]
    };
    let take = format!("ip addr add {}/32 dev eth0", wb.ip);
    assert!(TestNode::in_ns(&a, &["sh", "-c", &take]).status.success(), "a takes b's address");
    let before = sent_by_a();
    let spoof = TestNode::in_ns(&a, &["busybox", "ping", "-c", "1", "-W", "1", "-I", &wb.ip.to_string(), &net.gateway().to_string()]);
    assert!(!spoof.status.success(), "the spoofed ping is answered by nobody");
    assert!(sent_by_a() > before, "the spoofed ping was sent");
    assert!(TestNode::ping(&a, net.gateway()), "a's own address works");
    let flows = |src: std::net::Ipv4Addr| {
        let out = TestNode::in_ns(&t.node_ns(), &["conntrack", "-L", "-p", "icmp", "-s", &src.to_string()]);
        String::from_utf8_lossy(&out.stdout).lines().count()
    };
    assert_eq!(flows(wa.ip), 1, "conntrack sees a's ping");
    assert_eq!(flows(wb.ip), 0, "a posed as b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_port_record_blocks_neither_detach_nor_other_ports() {
    need_root();
    let t = TestNode::new("badrec");
    let net = t.node.create_network(t.network("rec", "10.217.0.0/24")).await.unwrap();
    let (a, b) = (t.pod("a"), t.pod("b"));
    t.node.attach(&net.name, AttachRequest { ports: vec![tcp(8094, 80)], ..t.request("a", &a) }).await.unwrap();
    let record = t.base.join("state/firewall/ports/a.json");
    std::fs::write(&record, "{ not json").unwrap();
    // While it is there, nobody can tell which ports it holds: publishing is refused,
    // with what to do.
    let err = t.node.attach(&net.name, AttachRequest { ports: vec![tcp(8095, 80)], ..t.request("b", &b) }).await.unwrap_err();
    assert!(err.to_string().contains("a.json cannot be read: restore it, or remove it"), "{err}");
    // Its owner's detach goes through and keeps the record aside.
    t.node.detach(&net.name, &OwnerId::new("a").unwrap()).await.unwrap();
    assert!(!record.exists() && record.with_extension("json.unreadable").exists());
    t.node.attach(&net.name, AttachRequest { ports: vec![tcp(8095, 80)], ..t.request("b", &b) }).await.unwrap();
}

/// A virtual IP in front of endpoints (the firewall half of a Service): connections are
/// spread over every endpoint, also one on another network; a reprogrammed service
/// reaches only its new endpoints; an endpoint reaches the service that has only
/// itself (hairpin); one without endpoints is refused at once; a removed one is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_virtual_ip_spreads_connections_over_its_endpoints_and_follows_them() {
    use minipod_netstack::{ServicePort, VirtualService};
    need_root();
    let t = TestNode::new("svc");
    let web = t.node.create_network(t.network("sw", "10.216.0.0/24")).await.unwrap();
    let other = t.node.create_network(t.network("so", "10.217.0.0/24")).await.unwrap();
    let (a, b, client) = (t.pod("a"), t.pod("b"), t.pod("client"));
    let wa = t.node.attach(&web.name, t.request("a", &a)).await.unwrap();
    let wb = t.node.attach(&other.name, t.request("b", &b)).await.unwrap();
    t.node.attach(&web.name, t.request("client", &client)).await.unwrap();
    t.http_server(&a, 8080, "from-a");
    t.http_server(&b, 8080, "from-b");
    let vip: std::net::Ipv4Addr = "10.96.7.7".parse().unwrap();
    let svc = |eps: &[std::net::Ipv4Addr]| VirtualService {
        owner: "default/web".into(),
        ip: vip,
        ports: vec![ServicePort {
            proto: Proto::Tcp,
            port: 80,
            name: None,
            endpoints: eps.iter().map(|ip| std::net::SocketAddrV4::new(*ip, 8080)).collect(),
            node_port: None,
        }],
        dns: None,
        affinity: None,
    };
    let bodies = |from: &std::path::Path, n: usize| {
        let mut seen = std::collections::BTreeMap::<String, usize>::new();
        for _ in 0..n {
            *seen.entry(TestNode::fetch(from, "http://10.96.7.7/").unwrap_or_else(|| "no answer".into())).or_default() += 1;
        }
        seen
    };
    assert!(t.node.program_service(&svc(&[wa.ip, wb.ip])).unwrap(), "a new service changes the firewall");
    assert!(!t.node.program_service(&svc(&[wa.ip, wb.ip])).unwrap(), "the same service again changes nothing");
    let seen = bodies(&client, 30);
    assert!(seen.get("from-a").is_some_and(|n| *n > 0) && seen.get("from-b").is_some_and(|n| *n > 0), "both endpoints serve: {seen:?}");
    assert_eq!(seen.values().sum::<usize>(), seen["from-a"] + seen["from-b"], "every connection is served: {seen:?}");

    t.node.program_service(&svc(&[wa.ip])).unwrap();
    assert_eq!(bodies(&client, 10).into_iter().collect::<Vec<_>>(), vec![("from-a".to_string(), 10)], "only the endpoint left serves");
    assert_eq!(TestNode::fetch(&a, "http://10.96.7.7/").as_deref(), Some("from-a"), "an endpoint reaches its own service");

    t.node.program_service(&svc(&[])).unwrap();
    let out = TestNode::in_ns(&client, &["timeout", "3", "busybox", "wget", "-q", "-O", "-", "http://10.96.7.7/"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("refused"), "a service without endpoints refuses at once: {err}");
    // The control: the same client still reaches the endpoint directly.
    assert_eq!(TestNode::fetch(&client, &format!("http://{}:8080/", wa.ip)).as_deref(), Some("from-a"));

    t.node.remove_service(vip).unwrap();
    t.node.remove_service(vip).unwrap();
    let table = TestNode::in_ns(&t.node_ns(), &["nft", "list", "table", "inet", "minipod"]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("map services4") && !table.contains("10.96.7.7") && !table.contains("svc_"), "nothing of it is left: {table}");
}
