//! Services as the Kubernetes documentation shows them, through the CLI on a node
//! namespace of the test's own: `minipod apply -f` of the documented example, its
//! replicas all served and followed as they stop, a pod reaching its own service, a
//! service with no endpoints refusing at once, bad manifests refused whole, named
//! target ports and endpoints given by hand.

mod support;

use std::collections::BTreeMap;

use support::cli::{Cli, SERVE};
use support::need_root;
use support::node::TestNode;
use support::pods::PodEnv;

#[test]
fn three_replicas_behind_a_service_all_receive_traffic_and_a_stopped_one_none() {
    need_root();
    let env = PodEnv::new("svc-replicas");
    let node = TestNode::new("svcrep");
    let cli = Cli::new(&env, &node);
    let web0 = cli.web("web-0", "default", &["app=my-app", "tier=web"]);
    for i in 1..3 {
        cli.web(&format!("web-{i}"), "default", &["app=my-app", "tier=web"]);
    }
    // The same labels in another namespace: not the service's.
    cli.web("web-prod", "prod", &["app=my-app"]);
    cli.ok(&["pod", "run", "client"]);
    cli.ok(&["ctr", "run", "client", "c", "--rootfs", env.rootfs.to_str().unwrap(), "--", "sleep", "600"]);

    // The documented example, unchanged.
    let file = env.h.base.join("service.yaml");
    std::fs::write(
        &file,
        "apiVersion: v1\nkind: Service\nmetadata: {name: my-service}\nspec:\n  selector: {app: my-app}\n  ports: [{protocol: TCP, port: 80, targetPort: 8080}]\n",
    )
    .unwrap();
    let file = file.to_str().unwrap();
    assert_eq!(cli.ok(&["apply", "-f", file]).trim(), "service/my-service created");
    assert_eq!(cli.ok(&["apply", "-f", file]).trim(), "service/my-service unchanged");
    let vip = cli.service_ip("my-service");
    assert!(vip.starts_with("10.") && vip.parse::<std::net::Ipv4Addr>().is_ok(), "{vip}");
    let ls = cli.ok(&["svc", "ls"]);
    let row = ls.lines().find(|l| l.contains("my-service")).unwrap_or_else(|| panic!("{ls}"));
    assert!(row.contains(&vip) && row.contains("80/TCP") && row.split_whitespace().nth(4) == Some("3"), "3 endpoints: {ls}");

    let url = format!("http://{vip}/");
    let seen = cli.answers("client", "c", &url, 60);
    let want: Vec<&str> = vec!["web-0", "web-1", "web-2"];
    assert_eq!(seen.keys().map(String::as_str).collect::<Vec<_>>(), want, "every replica and only they answer: {seen:?}");
    // The same replicas with sessionAffinity: ClientIP: one client, one replica (the
    // 60 requests above, from the same client, reached all three).
    let sticky = env.h.base.join("sticky.yaml");
    std::fs::write(
        &sticky,
        "apiVersion: v1\nkind: Service\nmetadata: {name: sticky}\nspec:\n  selector: {app: my-app}\n  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 600}}\n  ports: [{port: 80, targetPort: 8080}]\n",
    )
    .unwrap();
    let sticky = sticky.to_str().unwrap();
    cli.ok(&["apply", "-f", sticky]);
    let sticky_url = format!("http://{}/", cli.service_ip("sticky"));
    let pinned = cli.answers("client", "c", &sticky_url, 30);
    assert!(pinned.len() == 1 && pinned.keys().all(|k| k.starts_with("web-")), "one client stays with one replica: {pinned:?}");
    // From the node itself too (nat output), once it has a default route as a host has
    // (a connect needs a route before the firewall sees the packet), and from a replica to
    // its own service (hairpin).
    let outside = node.internet();
    assert!(TestNode::fetch(&node.node_ns(), &url).is_some_and(|b| b.starts_with("web-")));
    let own = cli.answers("web-0", "httpd", &url, 40);
    assert!(own.contains_key("web-0") && !own.contains_key("failed"), "a replica reaches itself through the service: {own:?}");

    // The same replicas as a NodePort: from outside the node on its address, and from
    // a pod on the node's address too.
    let np_file = env.h.base.join("nodeport.yaml");
    std::fs::write(
        &np_file,
        "apiVersion: v1\nkind: Service\nmetadata: {name: np}\nspec:\n  type: NodePort\n  selector: {app: my-app}\n  ports: [{port: 80, targetPort: 8080}]\n",
    )
    .unwrap();
    let np_file = np_file.to_str().unwrap();
    cli.ok(&["apply", "-f", np_file]);
    let v: serde_json::Value = serde_json::from_str(&cli.ok(&["svc", "inspect", "np"])).unwrap();
    let node_port = v["service"]["ports"][0]["node_port"].as_u64().unwrap_or_else(|| panic!("a node port is picked: {v}"));
    assert!((30000..=32767).contains(&node_port), "{node_port}");
    assert!(cli.ok(&["svc", "ls"]).contains(&format!("80:{node_port}/TCP")));
    let node_url = format!("http://198.51.100.2:{node_port}/");
    let mut from_outside = BTreeMap::new();
    for _ in 0..30 {
        let body = TestNode::fetch(&outside, &node_url).unwrap_or_else(|| "failed".into());
        *from_outside.entry(body.trim().to_string()).or_insert(0) += 1;
    }
    assert!(from_outside.keys().all(|k| k.starts_with("web-")) && from_outside.len() >= 2, "{from_outside:?}");
    let from_pod = cli.answers("client", "c", &node_url, 10);
    assert!(from_pod.keys().all(|k| k.starts_with("web-")), "{from_pod:?}");
    // From a pod of another network, which may not reach the replicas directly.
    let net = |args: &[&str]| {
        let out = env.h.minipod(&[&["net", "--netns", &cli.ns], args].concat());
        assert!(out.status.success(), "minipod net {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    net(&["create", "other", "--subnet", "10.77.3.0/24"]);
    cli.ok(&["pod", "run", "elsewhere", "--network", "other"]);
    cli.ok(&["ctr", "run", "elsewhere", "c", "--rootfs", env.rootfs.to_str().unwrap(), "--", "sleep", "600"]);
    assert!(
        !cli.reaches("elsewhere", "c", &format!("http://{web0}:8080/")),
        "networks are isolated: the replicas cannot be reached directly"
    );
    let across = cli.answers("elsewhere", "c", &node_url, 10);
    assert!(across.keys().all(|k| k.starts_with("web-")), "a node port is reached from every network: {across:?}");
    cli.ok(&["pod", "rm", "--force", "elsewhere"]);
    net(&["rm", "other"]);
    assert_eq!(cli.ok(&["delete", "-f", np_file]).trim(), "service/np deleted");
    assert!(TestNode::fetch(&outside, &node_url).is_none(), "a deleted node port answers no more");

    // A stopped replica leaves at once, with nobody telling the service.
    cli.ok(&["pod", "stop", "web-1", "--timeout", "1"]);
    let seen = cli.answers("client", "c", &url, 40);
    assert_eq!(seen.keys().map(String::as_str).collect::<Vec<_>>(), vec!["web-0", "web-2"], "{seen:?}");
    // A pinned client whose replica goes is pinned anew, to one that is there.
    let repinned = cli.answers("client", "c", &sticky_url, 20);
    assert!(repinned.len() == 1 && !repinned.contains_key("web-1") && !repinned.contains_key("failed"), "{repinned:?}");
    assert_eq!(cli.ok(&["delete", "-f", sticky]).trim(), "service/sticky deleted");
    // A new replica joins, and a removed one leaves.
    cli.web("web-3", "default", &["app=my-app"]);
    cli.ok(&["pod", "rm", "--force", "web-0"]);
    let seen = cli.answers("client", "c", &url, 40);
    assert_eq!(seen.keys().map(String::as_str).collect::<Vec<_>>(), vec!["web-2", "web-3"], "{seen:?}");

    cli.ok(&["pod", "rm", "--force", "web-2"]);
    cli.ok(&["pod", "rm", "--force", "web-3"]);
    let (_, _, err) = cli.run(&["ctr", "exec", "--timeout", "10", "client", "c", "--", "wget", "-q", "-O", "-", &url]);
    assert!(err.contains("refused"), "a service without endpoints refuses at once: {err}");

    assert_eq!(cli.ok(&["delete", "-f", file]).trim(), "service/my-service deleted");
    assert_eq!(cli.ok(&["svc", "ls", "-A", "-o", "json"]).trim(), "[]");
    let table = TestNode::in_ns(&node.node_ns(), &["nft", "list", "table", "inet", "minipod"]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(!table.contains(&vip) && !table.contains("svc_"), "nothing of the service is left: {table}");
}

/// A `targetPort` by name goes to the port each pod declares by it, a different number
/// on each; a pod that declares no such port is no endpoint; a name no selected pod
/// declares is refused. A service without a selector gets its endpoints from
/// EndpointSlices given by hand (the documentation's "Services without selectors"),
/// ready ones only, following each slice applied, changed and deleted.
#[test]
fn named_target_ports_and_endpoints_given_by_hand() {
    need_root();
    let env = PodEnv::new("svc-named");
    let node = TestNode::new("svcnamed");
    let cli = Cli::new(&env, &node);
    let a = cli.web_on("web-a", "default", &["app=named"], 8080, &["--named-port", "http=8080"]);
    cli.web_on("web-b", "default", &["app=named"], 9090, &["--named-port", "http=9090", "--named-port", "dns=53/udp"]);
    // Selected, serving on 8080, but declaring no port named http: no endpoint of it.
    let c = cli.web("web-c", "default", &["app=named"]);
    cli.idle("client", "default", &[]);
    let write = |name: &str, text: &str| {
        let p = env.h.base.join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    let named = |target: &str| {
        format!("apiVersion: v1\nkind: Service\nmetadata: {{name: named}}\nspec:\n  selector: {{app: named}}\n  ports: [{{port: 80, targetPort: {target}}}]\n")
    };
    let (ok, _, err) = cli.run(&["apply", "-f", &write("typo.yaml", &named("htp"))]);
    assert!(
        !ok && err.contains(
            "document 1 (Service default/named): spec.ports[0].targetPort: no pod the service selects declares a tcp port named htp"
        ) && err.contains("dns=53/udp, http=8080/tcp, http=9090/tcp"),
        "{err}"
    );
    cli.ok(&["apply", "-f", &write("named.yaml", &named("http"))]);
    let v: serde_json::Value = serde_json::from_str(&cli.ok(&["svc", "inspect", "named"])).unwrap();
    let mut to: Vec<&str> = v["ports"][0]["endpoints"].as_array().unwrap().iter().map(|e| e.as_str().unwrap()).collect();
    to.sort();
    assert!(to.len() == 2 && to.iter().any(|e| e.ends_with(":8080")) && to.iter().any(|e| e.ends_with(":9090")), "{v}");
    let url = format!("http://{}/", cli.service_ip("named"));
    let seen = cli.answers("client", "c", &url, 40);
    assert_eq!(seen.keys().map(String::as_str).collect::<Vec<_>>(), vec!["web-a", "web-b"], "each on its own port: {seen:?}");

    // Endpoints by hand: a slice before its service in one file, served as one.
    let slice = |name: &str, endpoints: &str| {
        format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  labels: {{kubernetes.io/service-name: by-hand}}\naddressType: IPv4\nports: [{{name: web, protocol: TCP, port: 8080}}]\nendpoints: [{endpoints}]\n"
        )
    };
    let by_hand = "apiVersion: v1\nkind: Service\nmetadata: {name: by-hand}\nspec:\n  ports: [{name: web, port: 80}]\n";
    let both =
        write("by-hand.yaml", &format!("{}---\n{by_hand}", slice("by-hand-1", &format!("{{addresses: [{a}]}}, {{addresses: [{c}]}}"))));
    let out = cli.ok(&["apply", "-f", &both]);
    assert_eq!(out.trim(), "endpointslice.discovery.k8s.io/by-hand-1 created\nservice/by-hand created", "{out}");
    let ls = cli.ok(&["svc", "ls"]);
    let row = ls.lines().find(|l| l.contains("by-hand")).unwrap_or_else(|| panic!("{ls}"));
    assert!(row.split_whitespace().nth(4) == Some("2") && row.ends_with("<none>"), "2 endpoints, no selector: {ls}");
    let hand_url = format!("http://{}/", cli.service_ip("by-hand"));
    let seen = cli.answers("client", "c", &hand_url, 40);
    assert_eq!(seen.keys().map(String::as_str).collect::<Vec<_>>(), vec!["web-a", "web-c"], "{seen:?}");
    // An endpoint that is not ready leaves; a second slice adds to the first.
    let not_ready = format!("{{addresses: [{a}]}}, {{addresses: [{c}], conditions: {{ready: false}}}}");
    assert_eq!(
        cli.ok(&["apply", "-f", &write("s1.yaml", &slice("by-hand-1", &not_ready))]).trim(),
        "endpointslice.discovery.k8s.io/by-hand-1 configured"
    );
    let seen = cli.answers("client", "c", &hand_url, 20);
    assert_eq!(seen.keys().map(String::as_str).collect::<Vec<_>>(), vec!["web-a"], "{seen:?}");
    let second = write("s2.yaml", &slice("by-hand-2", &format!("{{addresses: [{c}]}}")));
    cli.ok(&["apply", "-f", &second]);
    let seen = cli.answers("client", "c", &hand_url, 40);
    assert_eq!(seen.keys().map(String::as_str).collect::<Vec<_>>(), vec!["web-a", "web-c"], "{seen:?}");

    // A node-local service takes only the endpoints on its node, those in its pod
    // networks: not a documentation address a slice gives.
    let local =
        "apiVersion: v1\nkind: Service\nmetadata: {name: local}\nspec:\n  internalTrafficPolicy: Local\n  ports: [{name: web, port: 80}]\n";
    let local_slice = slice("local-1", &format!("{{addresses: [{a}]}}, {{addresses: [192.0.2.10]}}"))
        .replace("service-name: by-hand", "service-name: local");
    let local_file = write("local.yaml", &format!("{local_slice}---\n{local}"));
    cli.ok(&["apply", "-f", &local_file]);
    let v: serde_json::Value = serde_json::from_str(&cli.ok(&["svc", "inspect", "local"])).unwrap();
    assert_eq!(v["ports"][0]["endpoints"], serde_json::json!([format!("{a}:8080")]), "{v}");
    cli.ok(&["delete", "-f", &local_file]);

    // Bad slices, refused whole: nothing of the file is applied.
    let cases = [
        (slice("bad", "{addresses: [127.0.0.1]}"), "endpoints[0].addresses: 127.0.0.1 cannot be an endpoint"),
        (slice("bad", "{addresses: [10.96.0.10]}"), "endpoint 10.96.0.10 is in the service CIDR 10.96.0.0/12"),
        (
            slice("bad", "{addresses: [10.1.2.3]}").replace("kubernetes.io/service-name: by-hand", "app: x"),
            "kubernetes.io/service-name is required",
        ),
        (
            format!("{}---\n{}", slice("by-hand-2", "{addresses: [10.1.2.3]}"), named("htp")),
            "targetPort: no pod the service selects declares",
        ),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let (ok, _, err) = cli.run(&["apply", "-f", &write(&format!("bad{i}.yaml"), text)]);
        assert!(!ok && err.contains(want), "want {want:?} in {err}");
    }
    let v: serde_json::Value = serde_json::from_str(&cli.ok(&["svc", "inspect", "by-hand"])).unwrap();
    assert_eq!(v["ports"][0]["endpoints"].as_array().map(Vec::len), Some(2), "the failed file changed nothing: {v}");
    assert_eq!(v["endpoint_slices"], serde_json::json!(["by-hand-1", "by-hand-2"]), "{v}");

    // Deleting the slices takes their endpoints: the service refuses at once.
    assert_eq!(cli.ok(&["delete", "-f", &second]).trim(), "endpointslice.discovery.k8s.io/by-hand-2 deleted");
    let (ok, _, err) = cli.run(&["delete", "-f", &second]);
    assert!(!ok && err.contains("no endpoint slice default/by-hand-2"), "{err}");
    cli.ok(&["delete", "-f", &write("s1.yaml", &slice("by-hand-1", &not_ready))]);
    let (_, _, err) = cli.run(&["ctr", "exec", "--timeout", "10", "client", "c", "--", "wget", "-q", "-O", "-", &hand_url]);
    assert!(err.contains("refused"), "no endpoints left: {err}");
    cli.ok(&["delete", "-f", &write("svc.yaml", by_hand)]);
    cli.ok(&["delete", "-f", &write("named.yaml", &named("http"))]);
    for p in ["web-a", "web-b", "web-c", "client"] {
        cli.ok(&["pod", "rm", "--force", p]);
    }
    let table = TestNode::in_ns(&node.node_ns(), &["nft", "list", "table", "inet", "minipod"]);
    assert!(!String::from_utf8_lossy(&table.stdout).contains("svc_"), "nothing of the services is left");
}

/// The node namespace goes first (as when a test's guard drops it, or a VM's node is
/// torn down): the pods a service selects and the service are still removed.
#[test]
fn pods_and_services_of_a_node_that_is_gone_are_still_removed() {
    need_root();
    let env = PodEnv::new("svc-gone");
    let node = TestNode::new("svcgone");
    let cli = Cli::new(&env, &node);
    cli.web("web-0", "default", &["app=my-app"]);
    let file = env.h.base.join("service.yaml");
    std::fs::write(
        &file,
        "apiVersion: v1\nkind: Service\nmetadata: {name: my-service}\nspec:\n  selector: {app: my-app}\n  ports: [{port: 80}]\n",
    )
    .unwrap();
    let file = file.to_str().unwrap();
    cli.ok(&["apply", "-f", file]);
    drop(node);
    let here = |args: &[&str]| {
        let out = env.h.minipod(args);
        assert!(out.status.success(), "minipod {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    here(&["pod", "--images", &cli.images, "rm", "--force", "web-0"]);
    assert_eq!(here(&["delete", "--images", &cli.images, "-f", file]).trim(), "service/my-service deleted");
    env.assert_clean();
}

#[test]
fn bad_manifests_are_refused_whole_with_the_document_and_field() {
    need_root();
    let env = PodEnv::new("svc-bad");
    let node = TestNode::new("svcbad");
    let cli = Cli::new(&env, &node);
    let good = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec:\n  selector: {app: a}\n  ports: [{port: 80}]\n";
    let write = |name: &str, text: &str| {
        let p = env.h.base.join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    let cases = [
        (
            format!("{good}---\n{}", good.replace("name: a", "name: b").replace("ports:", "type: LoadBalancer\n  ports:")),
            "document 2 (Service default/b): spec.type: type LoadBalancer is not built in minipod yet",
        ),
        (
            format!("{good}---\n{}", good.replace("name: a", "name: b").replace("port: 80", "port: 80, targetPort: 70000")),
            "document 2 (Service default/b): spec.ports[0].targetPort: 70000 is not 1 to 65535",
        ),
        (
            format!("{good}---\n{}", good.replace("name: a", "name: b").replace("ports:", "clusterIP: 192.0.2.1\n  ports:")),
            "document 2 (Service default/b): spec.clusterIP 192.0.2.1 is not in the service CIDR 10.96.0.0/12",
        ),
        (format!("{good}---\n{good}"), "document 2: Service default/a is in the file twice"),
        (
            format!("{good}---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: d}}\n"),
            "document 2: Deployment of apiVersion apps/v1 is not something minipod applies",
        ),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let (ok, _, err) = cli.run(&["apply", "-f", &write(&format!("bad{i}.yaml"), text)]);
        assert!(!ok && err.contains(want), "want {want:?} in {err}");
    }
    assert_eq!(cli.ok(&["svc", "ls", "-A", "-o", "json"]).trim(), "[]", "nothing half-applied");

    // A taken cluster IP, and one that may not change.
    let fixed = write("fixed.yaml", &good.replace("ports:", "clusterIP: 10.96.5.5\n  ports:"));
    cli.ok(&["apply", "-f", &fixed]);
    let (ok, _, err) = cli.run(&[
        "apply",
        "-f",
        &write("taken.yaml", &good.replace("name: a", "name: b").replace("ports:", "clusterIP: 10.96.5.5\n  ports:")),
    ]);
    assert!(!ok && err.contains("spec.clusterIP 10.96.5.5 is taken by service default/a"), "{err}");
    let (ok, _, err) = cli.run(&["apply", "-f", &write("moved.yaml", &good.replace("ports:", "clusterIP: 10.96.5.6\n  ports:"))]);
    assert!(!ok && err.contains("spec.clusterIP cannot change (10.96.5.5 to 10.96.5.6)"), "{err}");
    // Node ports: one given is kept, one taken is refused with its holder.
    let np = |name: &str, port: u16| {
        good.replace("name: a", &format!("name: {name}"))
            .replace("ports: [{port: 80}]", &format!("type: NodePort\n  ports: [{{port: 80, nodePort: {port}}}]"))
    };
    cli.ok(&["apply", "-f", &write("np1.yaml", &np("np1", 30111))]);
    let (ok, _, err) = cli.run(&["apply", "-f", &write("np2.yaml", &np("np2", 30111))]);
    assert!(!ok && err.contains("node port tcp/30111 is taken by service default/np1"), "{err}");
    // A node port and a pod's host port are the same DNAT on the node's addresses:
    // whichever comes second is refused, naming the first.
    let (ok, _, err) = cli.run(&["pod", "run", "hostport", "--publish", "30111:8080"]);
    assert!(!ok && err.contains("host port tcp/30111 is already published by NodePort service default/np1"), "{err}");
    cli.ok(&["pod", "run", "hostport", "--publish", "30222:8080"]);
    let (ok, _, err) = cli.run(&["apply", "-f", &write("np3.yaml", &np("np3", 30222))]);
    assert!(!ok && err.contains("node port tcp/30222 is published by pod hostport as a host port"), "{err}");
    cli.ok(&["pod", "rm", "--force", "hostport"]);
    cli.ok(&["apply", "-f", &write("np3.yaml", &np("np3", 30222))]);
    cli.ok(&["delete", "-f", &write("np3.yaml", &np("np3", 30222))]);
    assert_eq!(cli.ok(&["delete", "-f", &write("np1.yaml", &np("np1", 30111))]).trim(), "service/np1 deleted");
    let (ok, _, err) = cli.run(&["delete", "-f", &write("gone.yaml", &good.replace("name: a", "name: gone"))]);
    assert!(!ok && err.contains("no service default/gone"), "{err}");
    assert_eq!(cli.ok(&["delete", "-f", &fixed]).trim(), "service/a deleted");
}

/// A service applied by another process sharing the state root (the CLI), found by
/// the DNS of a runtime embedded here: by its short name from its own namespace, by
/// `NAME.NAMESPACE` and its full name from another, SRV for its named port, PTR for
/// its cluster IP; and gone from DNS once deleted. Made and deleted in code too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_are_found_by_name_from_pods_of_every_namespace() {
    use minipod_runtime::embed::{Minipod, Ready};
    need_root();
    let env = PodEnv::new("svc-dns");
    let node = TestNode::new("svcdns");
    let cli = Cli::new(&env, &node);
    let rt =
        Minipod::builder().state_dir(&env.h.root).image_dir(env.h.base.join("images")).node_netns(node.node_ns()).open().await.unwrap();
    let web = rt.pod("web-0").label("app", "my-app").start().await.unwrap();
    web.container("httpd").rootfs(&env.rootfs).cmd(["sh", "-c", SERVE]).wait_for(Ready::port(8080)).start().await.unwrap();
    let here = rt.pod("client").start().await.unwrap();
    let here = here.container("c").rootfs(&env.rootfs).cmd(["sleep", "600"]).start().await.unwrap();
    let prod = rt.pod("prod-client").namespace("prod").start().await.unwrap();
    let prod = prod.container("c").rootfs(&env.rootfs).cmd(["sleep", "600"]).start().await.unwrap();
    let sh = |c: &minipod_runtime::embed::Container, script: String| {
        let c = c.clone();
        async move { c.exec(["sh", "-c", &script]).await.unwrap() }
    };
    let resolv = sh(&here, "cat /etc/resolv.conf".into()).await.stdout_text();
    assert!(resolv.contains("search default.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5"), "{resolv}");
    let resolv = sh(&prod, "cat /etc/resolv.conf".into()).await.stdout_text();
    assert!(resolv.contains("search prod.svc.cluster.local svc.cluster.local"), "{resolv}");

    let file = env.h.base.join("service.yaml");
    std::fs::write(
        &file,
        "apiVersion: v1\nkind: Service\nmetadata: {name: my-service}\nspec:\n  selector: {app: my-app}\n  ports: [{name: http, protocol: TCP, port: 80, targetPort: 8080}]\n",
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let applied = std::time::Instant::now();
    cli.ok(&["apply", "-f", file]);
    let vip = cli.service_ip("my-service");
    // The DNS server here learns of it from the state dir, with nobody telling it.
    let full = "my-service.default.svc.cluster.local";
    let mut found = None;
    for _ in 0..100 {
        let out = sh(&here, format!("nslookup {full}")).await;
        if out.stdout_text().contains(&vip) {
            found = Some(applied.elapsed());
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let found = found.unwrap_or_else(|| panic!("{full} never resolved to {vip}"));
    eprintln!("a service applied by another process resolved {found:?} after apply began");

    for (c, name) in [(&here, "my-service"), (&here, full), (&prod, "my-service.default"), (&prod, full)] {
        let out = sh(c, format!("wget -q -O - http://{name}/")).await;
        assert_eq!(out.stdout_text(), "web-0\n", "{name}: {out:?}");
    }
    // Short names are of the asker's namespace: prod has no my-service. Its pods do
    // resolve names (the same lookup path finds the pod web-0).
    let out = sh(&prod, "wget -q -O - http://web-0:8080/".into()).await;
    assert_eq!(out.stdout_text(), "web-0\n", "{out:?}");
    let out = sh(&prod, "wget -q -O - http://my-service/".into()).await;
    assert!(!out.success() && out.stderr_text().contains("bad address"), "{out:?}");

    let srv = sh(&here, format!("nslookup -type=SRV _http._tcp.{full}")).await.stdout_text();
    assert!(srv.contains(&format!(" 80 {full}")), "{srv}");
    let ptr = sh(&here, format!("nslookup {vip}")).await.stdout_text();
    assert!(ptr.contains(full), "{ptr}");

    // Made in code: the same rules, the same DNS, deleted on drop.
    let dropped = {
        let web2 = rt.service("web2").selector("app", "my-app").named_port("http", 81, 8080).apply().await.unwrap();
        assert_eq!(web2.endpoints().await.unwrap(), vec![web.ip()]);
        assert_eq!(web2.dns_name(), "web2.default.svc.cluster.local");
        let out = sh(&here, "wget -q -O - http://web2:81/".into()).await;
        assert_eq!(out.stdout_text(), "web-0\n", "{out:?}");
        web2.ip().expect("a cluster IP")
    };
    let err = rt.service("bad").selector("app", "x").port(0, 80).apply().await.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("spec.ports[0].port"), "a builder's service is checked as a manifest is: {err}");
    let ls = cli.ok(&["svc", "ls", "-A"]);
    assert!(!ls.contains(&dropped.to_string()) && !ls.contains("web2"), "a dropped service is deleted: {ls}");

    // Headless: no cluster IP, and its name answers with the pods' own addresses.
    let headless = env.h.base.join("headless.yaml");
    std::fs::write(
        &headless,
        "apiVersion: v1\nkind: Service\nmetadata: {name: direct}\nspec:\n  clusterIP: None\n  selector: {app: my-app}\n  ports: [{name: http, port: 80, targetPort: 8080}]\n",
    )
    .unwrap();
    let headless = headless.to_str().unwrap();
    cli.ok(&["apply", "-f", headless]);
    assert!(cli.ok(&["svc", "ls"]).lines().any(|l| l.contains("direct") && l.contains("None")), "no cluster IP");
    // Applied by another process: seen at the DNS server's next look at the state dir.
    let mut a = String::new();
    for _ in 0..100 {
        a = sh(&here, "nslookup direct.default.svc.cluster.local".into()).await.stdout_text();
        if a.contains(&web.ip().to_string()) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(a.contains(&web.ip().to_string()) && !a.contains("10.96."), "the pod's address, no VIP: {a}");
    let out = sh(&prod, "wget -q -O - http://direct.default:8080/".into()).await;
    assert_eq!(out.stdout_text(), "web-0\n", "{out:?}");
    let srv = sh(&here, "nslookup -type=SRV _http._tcp.direct.default.svc.cluster.local".into()).await.stdout_text();
    assert!(srv.contains(" 8080 direct.default.svc.cluster.local"), "SRV with the pods' port: {srv}");
    assert_eq!(cli.ok(&["delete", "-f", headless]).trim(), "service/direct deleted");
    let built = rt.service("direct2").selector("app", "my-app").headless().port(80, 8080).apply().await.unwrap();
    assert_eq!((built.ip(), built.endpoints().await.unwrap()), (None, vec![web.ip()]));
    drop(built);

    assert_eq!(cli.ok(&["delete", "-f", file]).trim(), "service/my-service deleted");
    let mut gone = false;
    for _ in 0..100 {
        let out = sh(&here, format!("nslookup {full}")).await;
        if out.stdout_text().contains("NXDOMAIN") || out.stderr_text().contains("NXDOMAIN") {
            gone = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(gone, "{full} still resolves after delete");
    drop((web, here, prod));
    rt.shutdown().await.unwrap();
    assert_eq!(cli.ok(&["svc", "ls", "-A", "-o", "json"]).trim(), "[]");
    env.assert_clean();
}

/// A readiness probe gates a pod's place among a Service's endpoints, as in Kubernetes:
/// unready from its create until the check first passes, ready while it does, unready
/// after three failures in a row (connections through the service then go to the other
/// replica only), ready again when it passes, and gating nothing once removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_readiness_probe_takes_a_pod_out_of_its_services_endpoints_and_back() {
    use minipod_runtime::embed::Ready;
    need_root();
    let env = PodEnv::new("svc-readiness");
    let rt = env.open().await;
    let svc = rt.service("web").selector("app", "web").port(80, 8080).apply().await.unwrap();
    let steady = rt.pod("steady").label("app", "web").start().await.unwrap();
    steady.container("httpd").rootfs(&env.rootfs).cmd(["sh", "-c", SERVE]).wait_for(Ready::port(8080)).start().await.unwrap();
    let gated = rt.pod("gated").label("app", "web").start().await.unwrap();
    let probe = Ready::exec(["test", "-f", "/tmp/ready"]).period(std::time::Duration::from_millis(200));
    let httpd = gated.container("httpd").rootfs(&env.rootfs).cmd(["sh", "-c", SERVE]).readiness(probe).start().await.unwrap();
    let endpoints = || async { svc.endpoints().await.unwrap() };
    // Polls until the endpoints are `want` (a probe round is 200 ms; 15 s is plenty on
    // a loaded machine).
    let settle = |want: Vec<std::net::Ipv4Addr>, why: &'static str| {
        let endpoints = &endpoints;
        async move {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
            loop {
                let mut now = endpoints().await;
                now.sort();
                if now == want || std::time::Instant::now() > deadline {
                    assert_eq!(now, want, "{why}");
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(endpoints().await, [steady.ip()], "unready from its create: only the steady replica");
    let mut both = vec![steady.ip(), gated.ip()];
    both.sort();
    httpd.exec(["touch", "/tmp/ready"]).await.unwrap();
    settle(both.clone(), "ready once the probe passes").await;
    httpd.exec(["rm", "/tmp/ready"]).await.unwrap();
    settle(vec![steady.ip()], "unready after three failures in a row").await;
    let client = rt.pod("client").start().await.unwrap();
    let c = client.container("c").rootfs(&env.rootfs).cmd(["sleep", "300"]).start().await.unwrap();
    let script = format!("for i in $(seq 20); do timeout 5 wget -q -O - http://{}/ || echo failed; done", svc.ip().unwrap());
    let out = c.exec(["sh", "-c", script.as_str()]).await.unwrap();
    let mut seen: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen, [steady.record().hostname.to_string()], "connections go to the ready replica only");
    httpd.exec(["touch", "/tmp/ready"]).await.unwrap();
    settle(both.clone(), "ready again").await;
    httpd.exec(["rm", "/tmp/ready"]).await.unwrap();
    settle(vec![steady.ip()], "unready again").await;
    httpd.remove().await.unwrap();
    settle(both, "a removed container gates nothing").await;
}

/// `minipod ctr run --readiness`: a process of its own probes the CLI's container after
/// the command returned. The pod is out of the service's endpoints until the check
/// passes, out again after the failures in a row, and the prober ends with the
/// container; a check written wrong is refused before anything is made.
#[test]
fn a_cli_containers_readiness_probe_outlives_the_command() {
    need_root();
    let env = PodEnv::new("svc-cli-ready");
    let node = TestNode::new("svcready");
    let cli = Cli::new(&env, &node);
    let steady = cli.web("steady", "default", &["app=web"]);
    let file = env.h.base.join("service.yaml");
    std::fs::write(
        &file,
        "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  selector: {app: web}\n  ports: [{port: 80, targetPort: 8080}]\n",
    )
    .unwrap();
    cli.ok(&["apply", "-f", file.to_str().unwrap()]);
    cli.pod("gated", "default", &["app=web"]);
    let rootfs = env.rootfs.to_str().unwrap();
    for (check, want) in [("udp:53", "write a check as tcp:PORT"), ("tcp:0", "is no port")] {
        let (ok, _, err) = cli.run(&["ctr", "run", "gated", "httpd", "--rootfs", rootfs, "--readiness", check, "--", "sleep", "1"]);
        assert!(!ok && err.contains(want), "{check}: {err}");
    }
    assert!(cli.ok(&["ctr", "ls", "--pod", "gated", "-o", "json"]).trim() == "[]", "a refused check made nothing");
    let run = ["ctr", "run", "gated", "httpd", "--rootfs", rootfs, "--readiness", "exec:test -f /tmp/ready", "--readiness-period", "1"];
    cli.ok(&[&run[..], &["--readiness-failures", "2", "--", "sh", "-c", SERVE]].concat());
    let inspect: serde_json::Value = serde_json::from_str(&cli.ok(&["pod", "inspect", "gated"])).unwrap();
    let gated = inspect["pod"]["networks"][0]["ip"].as_str().unwrap().to_string();
    let endpoints = || {
        let v: serde_json::Value = serde_json::from_str(&cli.ok(&["svc", "inspect", "web"])).unwrap();
        let mut now: Vec<String> = v["ports"][0]["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_str().unwrap().split(':').next().unwrap().to_string())
            .collect();
        now.sort();
        now
    };
    let settle = |mut want: Vec<&str>, why: &str| {
        want.sort();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let now = endpoints();
            if now == want || std::time::Instant::now() > deadline {
                assert_eq!(now, want, "{why}");
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    };
    assert_eq!(endpoints(), [steady.as_str()], "unready from its create");
    let probers = || {
        let root = env.h.root.to_str().unwrap().to_string();
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .filter(|c| c.contains(&root) && c.contains(" probe "))
            .count()
    };
    assert_eq!(probers(), 1, "one prober runs after the command returned");
    cli.ok(&["ctr", "exec", "gated", "httpd", "--", "touch", "/tmp/ready"]);
    settle(vec![&steady, &gated], "ready once the probe passes");
    cli.ok(&["ctr", "exec", "gated", "httpd", "--", "rm", "/tmp/ready"]);
    settle(vec![&steady], "unready after two failures in a row");
    cli.ok(&["ctr", "exec", "gated", "httpd", "--", "touch", "/tmp/ready"]);
    settle(vec![&steady, &gated], "ready again");
    cli.ok(&["ctr", "stop", "gated", "httpd", "--timeout", "1"]);
    settle(vec![&steady], "a stopped container is unready");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while probers() > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(probers(), 0, "the prober ended with its container");
    cli.ok(&["ctr", "rm", "gated", "httpd"]);
    settle(vec![&steady, &gated], "a removed container gates nothing");
    // Removed and made again at once, while its prober sleeps: the successor, with no
    // probe of its own, is not the old prober's to judge (which would find no
    // /tmp/ready in it and, after one failure, take the pod out).
    let run = ["ctr", "run", "gated", "httpd", "--rootfs", rootfs, "--readiness", "exec:test -f /tmp/ready", "--readiness-period", "2"];
    cli.ok(&[&run[..], &["--readiness-failures", "1", "--", "sh", "-c", SERVE]].concat());
    cli.ok(&["ctr", "exec", "gated", "httpd", "--", "touch", "/tmp/ready"]);
    settle(vec![&steady, &gated], "ready once the probe passes");
    cli.ok(&["ctr", "rm", "--force", "gated", "httpd"]);
    cli.ok(&["ctr", "run", "gated", "httpd", "--rootfs", rootfs, "--", "sh", "-c", SERVE]);
    settle(vec![&steady, &gated], "its successor has no probe: ready");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while probers() > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(probers(), 0, "the old prober ended when it found a successor");
    let mut both = vec![steady.clone(), gated.clone()];
    both.sort();
    assert_eq!(endpoints(), both, "the old prober left the successor ready");
    // What closes the race of a check that ran across the removal: a probe's finding is
    // recorded only for the container it probed, checked under the pod's lock.
    let pods = minipod_runtime::Pods::open(minipod_runtime::PodsOptions {
        root: env.h.root.clone(),
        images: cli.images.clone().into(),
        node_netns: Some(cli.ns.clone().into()),
        keep_pods: true,
        ..Default::default()
    })
    .unwrap();
    let successor = pods.container("gated", "httpd").unwrap();
    let mut former = successor.clone();
    former.created = "2020-01-01T00:00:00Z".parse().unwrap();
    assert!(!pods.set_probed_ready(&former, false).unwrap(), "a former container's probe records nothing");
    assert!(pods.pod("gated").unwrap().unready.is_empty());
    assert_eq!(endpoints(), both);
    assert!(pods.set_probed_ready(&successor, false).unwrap(), "the container's own probe is recorded");
    settle(vec![&steady], "its own probe takes it out");
    assert!(pods.set_probed_ready(&successor, true).unwrap());
    settle(vec![&steady, &gated], "and back");
    cli.ok(&["delete", "-f", file.to_str().unwrap()]);
    for p in ["gated", "steady"] {
        cli.ok(&["pod", "rm", "--force", p]);
    }
}
