//! The embedded DNS server inside a throwaway node: members resolve each other by
//! name, alias and address; other networks' names stay hidden; everything else goes
//! to a fake upstream in the simulated internet (never the machine's resolver).

mod support;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{rdata, RData, Record};
use minipod_netstack::netns::Netns;
use minipod_netstack::AttachRequest;
use support::need_root;
use support::node::TestNode;

/// A fake upstream on 198.51.100.1:53 in the internet namespace: `example.test` is
/// 203.0.113.7, every other name does not exist. Stops when the flag drops.
fn fake_upstream(inet: &Path, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    let sock = Netns::open(inet).unwrap().run(|| UdpSocket::bind("198.51.100.1:53")).unwrap().unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_millis(100))).unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while !stop.load(Ordering::Relaxed) {
            let Ok((len, from)) = sock.recv_from(&mut buf) else { continue };
            let Ok(q) = Message::from_vec(&buf[..len]) else { continue };
            let mut r = Message::response(q.metadata.id, q.metadata.op_code);
            r.queries = q.queries.clone();
            let name = q.queries[0].name().to_ascii();
            if name == "example.test." && q.queries[0].query_type() == hickory_proto::rr::RecordType::A {
                r.answers.push(Record::from_rdata(q.queries[0].name().clone(), 60, RData::A(rdata::A(Ipv4Addr::new(203, 0, 113, 7)))));
            } else if name != "example.test." {
                r.metadata.response_code = ResponseCode::NXDomain;
            }
            let _ = sock.send_to(&r.to_vec().unwrap(), from);
        }
    })
}

fn lookup(ns: &Path, name: &str, server: Ipv4Addr) -> Option<String> {
    let out = TestNode::in_ns(ns, &["timeout", "5", "busybox", "nslookup", name, &server.to_string()]);
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_resolve_names_of_their_own_network_only_and_the_rest_is_forwarded() {
    need_root();
    let t = TestNode::new("dns");
    let inet = t.internet();
    let stop = Arc::new(AtomicBool::new(false));
    let upstream = fake_upstream(&inet, stop.clone());

    let mut cfg = t.network("dns", "10.230.0.0/24");
    cfg.dns_upstreams = vec![SocketAddr::from(([198, 51, 100, 1], 53))];
    let net = t.node.create_network(cfg).await.unwrap();
    let other = t.node.create_network(t.network("other", "10.231.0.0/24")).await.unwrap();
    t.node.serve_dns(minipod_netstack::DnsScope::AllNetworks).unwrap();
    let (a, b, c) = (t.pod("a"), t.pod("b"), t.pod("c"));
    let wa = t.node.attach(&net.name, t.request("pod-a", &a)).await.unwrap();
    let wb =
        t.node.attach(&net.name, AttachRequest { dns_names: vec!["pod-b".into(), "db".into()], ..t.request("pod-b", &b) }).await.unwrap();
    let wc = t.node.attach(&other.name, t.request("pod-c", &c)).await.unwrap();
    assert_eq!(wa.resolv_conf, "nameserver 10.230.0.1\n");

    let gw = net.gateway();
    let by_name = lookup(&a, "pod-b", gw).unwrap_or_default();
    assert!(by_name.contains(&format!("Address: {}", wb.ip)), "{by_name}");
    let by_alias = lookup(&a, "db", gw).unwrap_or_default();
    assert!(by_alias.contains(&format!("Address: {}", wb.ip)), "{by_alias}");
    let reverse = lookup(&a, &wb.ip.to_string(), gw).unwrap_or_default();
    assert!(reverse.contains("pod-b"), "{reverse}");
    assert!(lookup(&a, "pod-c", gw).is_none(), "pod-c is on another network");
    assert!(lookup(&c, "pod-a", gw).is_none(), "a pod of another network gets no answer from this one");
    let _ = wc;
    let forwarded = lookup(&a, "example.test", gw).unwrap_or_default();
    assert!(forwarded.contains("Address: 203.0.113.7"), "forwarded to the upstream: {forwarded}");

    // Detached members disappear from DNS.
    t.node.detach(&net.name, &minipod_netstack::OwnerId::new("pod-b").unwrap()).await.unwrap();
    assert!(lookup(&a, "pod-b", gw).is_none());

    stop.store(true, Ordering::Relaxed);
    upstream.join().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_network_can_come_back_while_dns_is_served() {
    need_root();
    let t = TestNode::new("dnsback");
    t.node.serve_dns(minipod_netstack::DnsScope::AllNetworks).unwrap();
    let name = minipod_netstack::NetworkConfig::default_network().name;
    let (a, b) = (t.pod("a"), t.pod("b"));
    t.node.attach(&name, t.request("pod-a", &a)).await.unwrap();
    t.node.detach(&name, &minipod_netstack::OwnerId::new("pod-a").unwrap()).await.unwrap();
    assert!(t.node.network(&name).unwrap().is_none(), "removed with its last member");
    // Recreated on the next attach: its DNS listener must bind again.
    t.node.attach(&name, t.request("pod-a2", &a)).await.unwrap();
    let wb = t.node.attach(&name, t.request("pod-b", &b)).await.unwrap();
    let found = lookup(&a, "pod-b", "10.88.0.1".parse().unwrap()).unwrap_or_default();
    assert!(found.contains(&format!("Address: {}", wb.ip)), "{found}");
}

/// DNS answers from a thread of its own: a member resolves a name while the node's
/// executor is held up (as a firewall change holds it while `nft` runs), and keeps
/// resolving while that executor publishes and withdraws ports 100 times.
#[test]
fn names_resolve_while_the_network_executor_is_held_up_and_publishing_ports() {
    use minipod_netstack::executor::Executor;
    use minipod_netstack::{BlockingNode, DnsScope, PortMapping, Proto};
    use std::sync::mpsc;
    use std::time::Duration;
    need_root();
    let t = TestNode::new("dnsbusy");
    let executor = Arc::new(Executor::start("test-net").unwrap());
    let node = BlockingNode::open(&t.base.join("state"), Some(&t.node_ns()), executor.clone()).unwrap();
    let net = node.create_network(t.network("busy", "10.232.0.0/24")).unwrap();
    node.node().serve_dns(DnsScope::AllNetworks).unwrap();
    let (a, b, c) = (t.pod("a"), t.pod("b"), t.pod("c"));
    node.attach(&net.name, t.request("pod-a", &a)).unwrap();
    let wb = node.attach(&net.name, t.request("pod-b", &b)).unwrap();
    let gw = net.gateway();
    let answered = |found: Option<String>| found.unwrap_or_default().contains(&format!("Address: {}", wb.ip));

    // The executor is held until the lookup has its answer (or a minute has passed):
    // a server sharing that executor could not answer before the lookup gives up.
    let (held, is_held) = mpsc::channel();
    let (release, released) = mpsc::channel::<()>();
    let holder = {
        let executor = executor.clone();
        std::thread::spawn(move || {
            executor.block(async move {
                let _ = held.send(());
                let _ = released.recv_timeout(Duration::from_secs(60));
            })
        })
    };
    is_held.recv().unwrap();
    let while_held = lookup(&a, "pod-b", gw);
    let _ = release.send(());
    holder.join().unwrap().unwrap();
    assert!(answered(while_held), "no answer while the network executor was held up");

    let publisher = {
        let (node, name, c) = (node.clone(), net.name.clone(), c.clone());
        let req = t.request("pod-c", &c);
        std::thread::spawn(move || {
            for i in 0..100u16 {
                let ports = vec![PortMapping { proto: Proto::Tcp, host_port: 20000 + i, host_ip: None, container_port: 80 }];
                node.attach(&name, minipod_netstack::AttachRequest { ports, ..req.clone() }).unwrap();
                node.detach(&name, &req.owner).unwrap();
            }
        })
    };
    let mut lookups = 0;
    while !publisher.is_finished() {
        assert!(answered(lookup(&a, "pod-b", gw)), "no answer during the port publishes (after {lookups})");
        lookups += 1;
    }
    publisher.join().unwrap();
    assert!(lookups > 0 || answered(lookup(&a, "pod-b", gw)));
}
