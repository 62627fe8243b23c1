//! A cluster of three nodes on this machine through the embedding API: a pod on each,
//! every pod reaches every other by address and by name and is seen with its own address, the path
//! carries the overlay's MTU and not a byte more, a node that is removed is gone from
//! the others' tables, and nothing is left once the cluster drops. A Service and a
//! NetworkPolicy applied to the cluster span its nodes.

mod support;

use std::path::{Path, PathBuf};

use minipod_netstack::netns::Netns;
use minipod_netstack::{underlay, IfName};
use minipod_runtime::embed::{Cluster, Container, Pod, Ready};
use support::need_root;
use support::node::{sh, TestNode};
use support::pods::PodEnv;

/// An httpd on 8080 answering with the pod's hostname, and `/cgi-bin/ip` with the
/// client's address as it saw it.
const SERVE: &str = "mkdir -p /www/cgi-bin && hostname > /www/index.html \
    && printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\necho $REMOTE_ADDR\\n' > /www/cgi-bin/ip \
    && chmod +x /www/cgi-bin/ip && exec httpd -f -p 8080 -h /www";

async fn fetch(c: &Container, url: &str) -> Option<String> {
    let out = c.exec(["timeout", "5", "wget", "-q", "-O", "-", url]).await.ok()?;
    out.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_one_pod_network() {
    need_root();
    let env = PodEnv::new("cluster");
    let dir = env.h.base.join("clusters");
    let mut cluster = Cluster::builder().nodes(3).dir(&dir).image_dir(env.h.base.join("images")).open().await.unwrap();
    let mut pods: Vec<(Pod, Container, PathBuf)> = Vec::new();
    for node in cluster.nodes() {
        assert_eq!(node.pod_cidr().to_string(), format!("10.244.{}.0/24", node.index()));
        let pod = node.pod(&format!("web-{}", node.index())).label("app", "web").start().await.unwrap();
        let c = pod.container("httpd").rootfs(&env.rootfs).cmd(["sh", "-c", SERVE]).wait_for(Ready::port(8080)).start().await.unwrap();
        let netns = node.runtime().pods().network_namespace(pod.record()).unwrap().path().to_path_buf();
        pods.push((pod, c, netns));
    }
    for (a, ca, _) in &pods {
        for (b, _, _) in pods.iter().filter(|(b, _, _)| b.ip() != a.ip()) {
            let name = fetch(ca, &format!("http://{}:8080/", b.ip())).await;
            assert_eq!(name.as_deref(), Some(b.record().hostname.as_str()), "{} reaches {}", a.ip(), b.ip());
            // By name too: a name its node does not know is asked of the peers' DNS.
            let by_name = fetch(ca, &format!("http://{}:8080/", b.record().name)).await;
            assert_eq!(by_name.as_deref(), Some(b.record().hostname.as_str()), "{} finds {} by name", a.ip(), b.record().name);
            // Not masqueraded: the server saw the client pod's own address.
            let seen = fetch(ca, &format!("http://{}:8080/cgi-bin/ip", b.ip())).await.unwrap_or_default();
            assert_eq!(seen.trim_start_matches("[::ffff:").trim_end_matches(']'), a.ip().to_string());
        }
    }
    // One Service for the cluster: the same cluster IP on every node, endpoints on
    // every node, reached from a pod of any node, by name too; a replica that stops
    // leaves the endpoints of every node at once.
    let svc = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  type: NodePort\n  selector: {app: web}\n  \
        ports: [{port: 80, targetPort: 8080, nodePort: 30080}]\n";
    cluster.apply_yaml(svc).await.unwrap();
    // Node-local endpoints for the node ports but not the cluster IP (or the other way)
    // would need two sets of endpoints: refused, not ignored.
    for (policy, field) in
        [("externalTrafficPolicy", "spec.externalTrafficPolicy"), ("internalTrafficPolicy", "spec.internalTrafficPolicy")]
    {
        let local = svc.replace("type: NodePort\n", &format!("type: NodePort\n  {policy}: Local\n"));
        let refused = cluster.apply_yaml(&local).await.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(refused.contains(&format!("{field}: Local for only one")), "{refused}");
    }
    let mut vips = Vec::new();
    for node in cluster.nodes() {
        vips.push(node.runtime().get_service("default", "web").await.unwrap().ip().unwrap());
    }
    assert!(vips.iter().all(|v| *v == vips[0]), "one cluster IP: {vips:?}");
    let answers = |c: &Container, url: String, n: usize| {
        let c = c.clone();
        async move {
            let script = format!("for i in $(seq {n}); do timeout 5 wget -q -O - {url} || echo failed; done");
            let out = c.exec(["sh", "-c", script.as_str()]).await.unwrap();
            let mut seen: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect();
            seen.sort();
            seen.dedup();
            seen
        }
    };
    for (_, c, _) in &pods[..2] {
        let seen = answers(c, format!("http://{}/", vips[0]), 40).await;
        assert_eq!(seen, ["web-0", "web-1", "web-2"], "every replica of every node answers");
    }
    let by_name = answers(&pods[1].1, "http://web.default.svc.cluster.local/".into(), 10).await;
    assert!(by_name.iter().all(|n| n.starts_with("web-")), "{by_name:?}");
    pods[2].0.stop().await.unwrap();
    let seen = answers(&pods[0].1, format!("http://{}/", vips[0]), 30).await;
    assert_eq!(seen, ["web-0", "web-1"], "a stopped replica of another node leaves at once");
    // From outside the cluster (a host on its underlay), through node 0's NodePort:
    // a connection sent on to the replica of node 1 is masqueraded, so that its reply
    // comes back through node 0; every one is answered, by both replicas.
    let outside = TestNode::new("cluster-outside");
    let underlay = Netns::open(&cluster.dir().join("ns/underlay")).unwrap();
    let host = Netns::open(&outside.node_ns()).unwrap();
    let (port, uplink) = (IfName::new("nout").unwrap(), IfName::new("ul0").unwrap());
    underlay::plug(&underlay, &host, &port, &uplink, "192.0.2.200".parse().unwrap(), 24, 1500).await.unwrap();
    let url = format!("http://{}:30080/", cluster.node(0).unwrap().address());
    let mut seen: Vec<String> = (0..20).map(|_| TestNode::fetch(&outside.node_ns(), &url).unwrap_or_else(|| "failed".into())).collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen, ["web-0", "web-1"], "from outside, by node 0's NodePort");
    // Both policies Local: a pod reaches the replica of its own node only, and a client
    // outside only the replica of the node it came to, which sees its own address.
    let local = svc.replace("type: NodePort\n", "type: NodePort\n  externalTrafficPolicy: Local\n  internalTrafficPolicy: Local\n");
    cluster.apply_yaml(&local).await.unwrap();
    for (i, (_, c, _)) in pods[..2].iter().enumerate() {
        let seen = answers(c, format!("http://{}/", vips[0]), 20).await;
        assert_eq!(seen, [format!("web-{i}")], "internalTrafficPolicy Local: node {i}'s own replica");
    }
    for i in 0..2 {
        let node = cluster.node(i).unwrap().address();
        let mut seen: Vec<String> = (0..10)
            .map(|_| TestNode::fetch(&outside.node_ns(), &format!("http://{node}:30080/")).unwrap_or_else(|| "failed".into()))
            .collect();
        seen.dedup();
        assert_eq!(seen, [format!("web-{i}")], "externalTrafficPolicy Local: node {i}'s NodePort, its own replica");
        let client = TestNode::fetch(&outside.node_ns(), &format!("http://{node}:30080/cgi-bin/ip")).unwrap_or_default();
        assert_eq!(client.trim_start_matches("[::ffff:").trim_end_matches(']'), "192.0.2.200", "not masqueraded");
    }
    drop(outside);
    cluster.delete_yaml(svc).await.unwrap();

    // One NetworkPolicy for the cluster: the web pods take connections only from pods
    // labelled role=client, of any node. A pod of another node without the label is
    // refused; a client that starts on another node after the policy is let in.
    let policy = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web-clients}\nspec:\n  \
        podSelector: {matchLabels: {app: web}}\n  ingress: [{from: [{podSelector: {matchLabels: {role: client}}}], ports: [{port: 8080}]}]\n";
    cluster.apply_yaml(policy).await.unwrap();
    let web = |i: usize| format!("http://{}:8080/", pods[i].0.ip());
    assert_eq!(fetch(&pods[1].1, &web(0)).await, None, "a pod of another node that is no client is refused");
    assert_eq!(fetch(&pods[0].1, &web(1)).await, None, "and the other way");
    let client_pod = cluster.node(1).unwrap().pod("client").label("role", "client").start().await.unwrap();
    let client = client_pod.container("c").rootfs(&env.rootfs).cmd(["sleep", "300"]).start().await.unwrap();
    for i in [0, 1] {
        let name = fetch(&client, &web(i)).await;
        assert_eq!(name.as_deref(), Some(pods[i].0.record().hostname.as_str()), "a client started after the policy reaches web-{i}");
    }
    cluster.delete_yaml(policy).await.unwrap();
    drop(client);
    drop(client_pod);

    // The pods' links fit the tunnel: 1450 bytes pass unfragmented, 1451 do not.
    let ping = |size: u32| {
        TestNode::in_ns(&pods[1].2, &["ping", "-M", "do", "-c", "1", "-W", "5", "-s", &size.to_string(), &pods[0].0.ip().to_string()])
    };
    assert!(ping(1422).status.success(), "1450 bytes across nodes");
    assert!(!ping(1423).status.success(), "1451 bytes would need fragmenting");

    // Each node was told the others' uplinks: nothing on the underlay asked by ARP.
    for node in cluster.nodes() {
        let neigh = sh(node.netns(), "ip -4 neigh show dev ul0");
        for other in cluster.nodes().iter().filter(|o| o.index() != node.index()) {
            let o = other.address().octets();
            let entry = format!("{} lladdr 02:75:{:02x}:{:02x}:{:02x}:{:02x} PERMANENT", other.address(), o[0], o[1], o[2], o[3]);
            assert!(neigh.contains(&entry), "{entry} in {neigh}");
        }
        // The outside host above is no node: it was learnt, as any host on a LAN.
        let learnt = neigh.lines().filter(|l| !l.trim_end().ends_with("PERMANENT") && !l.starts_with("192.0.2.200 "));
        assert_eq!(learnt.count(), 0, "no node learnt by ARP: {neigh}");
    }

    // Node 2 goes: the others' routes, neighbours (the overlay's and the underlay's)
    // and forwarding entries no longer mention it, and they still reach each other.
    let gone = cluster.node(2).unwrap().address();
    let (pod2, c2, _) = pods.pop().unwrap();
    drop(c2);
    drop(pod2);
    cluster.remove_node(2).await.unwrap();
    assert!(cluster.node(2).is_none() && cluster.nodes().len() == 2);
    assert!(!cluster.dir().join("node-2").exists() && !cluster.dir().join("ns/node-2").exists(), "its state and namespace went");
    for node in cluster.nodes() {
        let tables = sh(node.netns(), "ip route; ip neigh show dev mpvx1; ip neigh show dev ul0; bridge fdb show dev mpvx1");
        assert!(!tables.contains("10.244.2.") && !tables.contains(&gone.to_string()), "{tables}");
    }
    assert!(fetch(&pods[1].1, &format!("http://{}:8080/", pods[0].0.ip())).await.is_some());
    drop(pods);
    drop(cluster);
    let left: Vec<_> = std::fs::read_dir(&dir).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "nothing of the cluster is left: {left:?}");
    env.assert_clean();
}

/// Run by `a_sigkilled_harness_cluster_is_swept_by_the_next_open` in a child process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "helper: runs only in the child process of the SIGKILL test"]
async fn sigkill_cluster_child() {
    let Ok(dir) = std::env::var("MINIPOD_TEST_CLUSTERS") else { return };
    let rootfs = std::env::var("MINIPOD_TEST_ROOTFS").unwrap();
    let images = std::env::var("MINIPOD_TEST_IMAGES").unwrap();
    let cluster = Cluster::builder().nodes(2).dir(&dir).image_dir(&images).open().await.unwrap();
    let mut keep = vec![];
    for node in cluster.nodes() {
        let pod = node.pod("orphan").start().await.unwrap();
        pod.container("c").rootfs(&rootfs).cmd(["sleep", "300"]).start().await.unwrap();
        keep.push(pod);
    }
    println!("READY");
    tokio::time::sleep(std::time::Duration::from_secs(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_harness_cluster_is_swept_by_the_next_open() {
    need_root();
    let env = PodEnv::new("cluster-kill");
    let dir = env.h.base.join("clusters");
    let images = env.h.base.join("images");
    let mut child = support::ready_child(
        "sigkill_cluster_child",
        &[
            ("MINIPOD_TEST_CLUSTERS", dir.as_os_str()),
            ("MINIPOD_TEST_ROOTFS", env.rootfs.as_os_str()),
            ("MINIPOD_TEST_IMAGES", images.as_os_str()),
        ],
    );
    let left = std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.path()).collect::<Vec<_>>();
    assert_eq!(left.len(), 1, "{left:?}");
    let killed = left[0].clone();
    let pids: Vec<i32> = (0..2)
        .flat_map(|i| minipod_runtime::Runtime::new(killed.join(format!("node-{i}"))).unwrap().list().unwrap())
        .filter_map(|c| c.pid)
        .collect();
    assert_eq!(pids.len(), 2, "a workload per node");
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(pids.iter().all(|p| Path::new(&format!("/proc/{p}")).exists()), "workloads outlive the harness");
    // The next open sweeps the dead harness's cluster: workloads, namespaces, state.
    let cluster = Cluster::builder().nodes(1).dir(&dir).image_dir(&images).open().await.unwrap();
    assert!(pids.iter().all(|p| minipod_runtime::state::process_start_time(*p).is_none()), "workloads still run");
    assert!(!killed.exists(), "the killed harness's cluster is gone");
    drop(cluster);
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_clusters_are_refused() {
    need_root();
    let env = PodEnv::new("cluster-bad");
    let dir = env.h.base.join("clusters");
    let e = Cluster::builder().nodes(0).dir(&dir).open().await.err().unwrap().to_string();
    assert!(e.contains("0 nodes: give 1 to 200"), "{e}");
    let e = Cluster::builder().nodes(3).cluster_cidr("10.244.0.0/23").dir(&dir).open().await.err().unwrap().to_string();
    assert!(e.contains("3 nodes: give 1 to 2 (one /24 of 10.244.0.0/23 each"), "{e}");
    let e = Cluster::builder().cluster_cidr("10.244.0.0/33").dir(&dir).open().await.err().unwrap().to_string();
    assert!(e.contains("cluster CIDR \"10.244.0.0/33\""), "{e}");
    let e = Cluster::builder().vni(1 << 24).dir(&dir).image_dir(env.h.base.join("images")).open().await.err().unwrap().to_string();
    assert!(e.contains("VNI 16777216 is not 1 to 16777215"), "{e}");
    let left: Vec<_> = std::fs::read_dir(&dir).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "a cluster that fails to open leaves nothing: {left:?}");
}

/// `minipod cluster create` keeps a cluster after the command ends; pods made by the
/// pod commands on two of its nodes reach each other across the overlay; `cluster
/// apply` gives a Service endpoints on both nodes and a NetworkPolicy peers on both,
/// followed by later pod commands on either node's root; `cluster rm` removes the pods,
/// nodes and underlay.
#[test]
fn the_cli_makes_a_cluster_that_outlives_it() {
    need_root();
    let env = PodEnv::new("cluster-cli");
    let dir = env.h.base.join("clusters");
    let images = env.h.base.join("images");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(support::minipod_bin()).args(args).output().unwrap();
        assert!(out.status.success(), "minipod {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let (d, i) = (dir.to_str().unwrap(), images.to_str().unwrap());
    let made = run(&["cluster", "--dir", d, "create", "--nodes", "2", "--images", i]);
    let path = made.lines().last().unwrap().trim().to_string();
    assert!(made.contains("10.244.1.0/24") && Path::new(&path).join("ns/node-1").exists(), "{made}");
    assert_eq!(run(&["cluster", "--dir", d, "ls"]).trim(), path);
    let rootfs = env.rootfs.to_str().unwrap();
    let mut ips = Vec::new();
    for n in 0..2 {
        let root = format!("{path}/node-{n}");
        let netns = format!("{path}/ns/node-{n}");
        let pod = format!("p{n}");
        run(&["--root", &root, "pod", "--netns", &netns, "--images", i, "run", &pod, "--network", "cluster", "-l", "app=web"]);
        run(&["--root", &root, "ctr", "--netns", &netns, "--images", i, "run", &pod, "c", "--rootfs", rootfs, "--", "sh", "-c", SERVE]);
        let v: serde_json::Value =
            serde_json::from_str(&run(&["--root", &root, "pod", "--netns", &netns, "--images", i, "inspect", &pod])).unwrap();
        ips.push(v["pod"]["networks"][0]["ip"].as_str().unwrap().to_string());
    }
    assert!(ips[0].starts_with("10.244.0.") && ips[1].starts_with("10.244.1."), "{ips:?}");
    let root0 = format!("{path}/node-0");
    let ns0 = format!("{path}/ns/node-0");
    run(&["--root", &root0, "ctr", "--netns", &ns0, "--images", i, "exec", "p0", "c", "--", "ping", "-c", "1", "-W", "5", &ips[1]]);

    // Applied to the whole cluster: one Service with an endpoint on each node, and a
    // policy that lets only role=client pods of any node reach the web pods.
    let (root1, ns1) = (format!("{path}/node-1"), format!("{path}/ns/node-1"));
    let on = |n: usize| if n == 0 { (root0.as_str(), ns0.as_str()) } else { (root1.as_str(), ns1.as_str()) };
    let on_node = |n: usize, args: &[&str]| {
        let (root, ns) = on(n);
        let mut full = vec!["--root", root, args[0], "--netns", ns, "--images", i];
        full.extend_from_slice(&args[1..]);
        std::process::Command::new(support::minipod_bin()).args(&full).output().unwrap()
    };
    let fetches = |n: usize, pod: &str, url: &str| {
        on_node(n, &["ctr", "exec", "--timeout", "20", pod, "c", "--", "timeout", "5", "wget", "-q", "-O", "-", url]).status.success()
    };
    let objects = env.h.base.join("cluster-objects.yaml");
    std::fs::write(
        &objects,
        "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  selector: {app: web}\n  ports: [{port: 80, targetPort: 8080}]\n\
         ---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: clients}\nspec:\n  \
         podSelector: {matchLabels: {app: web}}\n  ingress: [{from: [{podSelector: {matchLabels: {role: client}}}]}]\n",
    )
    .unwrap();
    let objects = objects.to_str().unwrap();
    let applied = run(&["cluster", "--dir", d, "apply", &path, "-f", objects]);
    assert_eq!(applied, "service/web created\nnetworkpolicy.networking.k8s.io/clients created\n");
    let mut vips = Vec::new();
    for n in 0..2 {
        let out = on_node(n, &["svc", "inspect", "web"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let mut endpoints: Vec<String> = v["endpoints"].as_array().unwrap().iter().map(|e| e.as_str().unwrap().to_string()).collect();
        endpoints.sort();
        assert_eq!(endpoints, ips, "node {n}'s service has the web pods of both nodes");
        vips.push(v["service"]["cluster_ip"].as_str().unwrap().to_string());
    }
    assert_eq!(vips[0], vips[1], "one cluster IP");
    assert!(!fetches(1, "p1", &format!("http://{}:8080/", ips[0])), "a web pod of node 1 is no client of node 0's");
    // A client made later by the pod commands on node 1's root: node 0's policy lets it in.
    let (root1s, ns1s) = on(1);
    run(&["--root", root1s, "pod", "--netns", ns1s, "--images", i, "run", "client", "--network", "cluster", "-l", "role=client"]);
    run(&["--root", root1s, "ctr", "--netns", ns1s, "--images", i, "run", "client", "c", "--rootfs", rootfs, "--", "sleep", "300"]);
    for ip in &ips {
        assert!(fetches(1, "client", &format!("http://{ip}:8080/")), "the client reaches {ip}");
    }
    assert!(fetches(1, "client", &format!("http://{}/", vips[0])), "and the service");
    let deleted = run(&["cluster", "--dir", d, "delete", &path, "-f", objects]);
    assert_eq!(deleted.lines().count(), 2, "{deleted}");
    assert!(fetches(1, "p1", &format!("http://{}:8080/", ips[0])), "no policy: open again");
    run(&["cluster", "--dir", d, "rm", &path]);
    assert!(!Path::new(&path).exists(), "the cluster is gone");
    assert!(run(&["cluster", "--dir", d, "ls"]).trim().is_empty());
    env.assert_clean();
}

/// A cluster larger than this machine's ARP table could hold if its nodes learnt each
/// other's underlay addresses (n·(n-1) entries; the table is one for all namespaces,
/// `net.ipv4.neigh.default.gc_thresh3`): its nodes are told each other's instead, and
/// the last node's pod reaches the first's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_larger_than_the_arp_table_holds_learnt_entries_for() {
    need_root();
    let env = PodEnv::new("cluster-big");
    let dir = env.h.base.join("clusters");
    let thresh: usize = std::fs::read_to_string("/proc/sys/net/ipv4/neigh/default/gc_thresh3").unwrap().trim().parse().unwrap();
    let nodes = (2..).find(|n: &usize| n * (n - 1) > thresh).unwrap();
    if nodes > 64 {
        support::skip(
            "a_cluster_larger_than_the_arp_table_holds_learnt_entries_for",
            &format!("gc_thresh3 is {thresh}: a cluster past it would need {nodes} nodes"),
        );
        return;
    }
    let cluster = Cluster::builder().nodes(nodes).dir(&dir).image_dir(env.h.base.join("images")).open().await.unwrap();
    let (first, last) = (cluster.node(0).unwrap(), cluster.node(nodes - 1).unwrap());
    let web = first.pod("web").start().await.unwrap();
    let _httpd = web.container("httpd").rootfs(&env.rootfs).cmd(["sh", "-c", SERVE]).wait_for(Ready::port(8080)).start().await.unwrap();
    let client = last.pod("client").start().await.unwrap();
    let c = client.container("c").rootfs(&env.rootfs).cmd(["sleep", "300"]).start().await.unwrap();
    let name = fetch(&c, &format!("http://{}:8080/", web.ip())).await;
    assert_eq!(name.as_deref(), Some(web.record().hostname.as_str()), "node {} reaches node 0 in a cluster of {nodes}", nodes - 1);
    let neigh = sh(last.netns(), "ip -4 neigh show dev ul0");
    assert_eq!(neigh.lines().filter(|l| l.trim_end().ends_with("PERMANENT")).count(), nodes - 1, "{neigh}");
    drop((c, client, _httpd, web));
    drop(cluster);
    env.assert_clean();
}
