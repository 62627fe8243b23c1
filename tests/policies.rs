//! NetworkPolicy as the Kubernetes documentation shows it, through the CLI (and the
//! embedding API) on a node namespace of the test's own: the frontend/backend example
//! applied unchanged beside its Service, default-deny until an allow rule is added,
//! ports (by number and by name), namespaces, ipBlocks, egress with DNS, and bad
//! policies refused whole.

mod support;

use support::cli::{Cli, SERVE};
use support::need_root;
use support::node::TestNode;
use support::pods::PodEnv;

/// The two documented examples of the issue, unchanged.
const EXAMPLES: &str = "apiVersion: v1
kind: Service
metadata: {name: my-service}
spec:
  selector: {app: my-app}
  ports: [{protocol: TCP, port: 80, targetPort: 8080}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-frontend-to-backend}
spec:
  podSelector: {matchLabels: {role: backend}}
  ingress: [{from: [{podSelector: {matchLabels: {role: frontend}}}]}]
";

fn write(env: &PodEnv, name: &str, text: &str) -> String {
    let path = env.h.base.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn frontend_reaches_backend_and_everyone_else_is_blocked_directly_and_through_the_service() {
    need_root();
    let env = PodEnv::new("pol-fb");
    let node = TestNode::new("polfb");
    let cli = Cli::new(&env, &node);
    let backend = cli.web("backend", "default", &["role=backend", "app=my-app"]);
    cli.idle("frontend", "default", &["role=frontend"]);
    cli.idle("other", "default", &["role=other"]);
    cli.idle("frontend-prod", "prod", &["role=frontend"]);
    let direct = format!("http://{backend}:8080/");
    assert!(cli.reaches("other", "c", &direct), "no policy selects the backend yet: it is open");

    let file = write(&env, "examples.yaml", EXAMPLES);
    let applied = cli.ok(&["apply", "-f", &file]);
    assert_eq!(applied, "service/my-service created\nnetworkpolicy.networking.k8s.io/allow-frontend-to-backend created\n");
    let via_service = format!("http://{}/", cli.service_ip("my-service"));
    assert!(cli.reaches("frontend", "c", &direct), "role=frontend reaches role=backend");
    assert!(cli.reaches("frontend", "c", &via_service), "and through the service (the policy sees the endpoint)");
    assert!(!cli.reaches("other", "c", &direct), "role=other is blocked");
    assert!(!cli.reaches("other", "c", &via_service), "through the service too");
    assert!(!cli.reaches("frontend-prod", "c", &direct), "a podSelector alone means the policy's own namespace");
    assert!(TestNode::fetch(&node.node_ns(), &direct).is_some(), "the pod's node always reaches it");
    // Not isolated for egress: the backend still opens connections to anyone.
    assert!(cli.reaches("backend", "httpd", &direct), "a pod reaches itself");

    // Peers follow the pods: a frontend made after the policy is let in at once, a
    // pod relabelled away from it (made anew) is not.
    cli.idle("frontend-2", "default", &["role=frontend"]);
    assert!(cli.reaches("frontend-2", "c", &direct));
    cli.ok(&["pod", "rm", "--force", "frontend"]);
    cli.idle("frontend", "default", &["role=former-frontend"]);
    assert!(!cli.reaches("frontend", "c", &direct));

    let ls = cli.ok(&["policy", "ls"]);
    let row = ls.lines().find(|l| l.contains("allow-frontend-to-backend")).unwrap_or_else(|| panic!("{ls}"));
    assert!(row.contains("role=backend") && row.contains("1 rules") && row.ends_with('1'), "one pod selected: {ls}");
    let v: serde_json::Value = serde_json::from_str(&cli.ok(&["policy", "inspect", "allow-frontend-to-backend"])).unwrap();
    assert_eq!(v["selected"][0]["name"], "backend", "{v}");
    assert_eq!(
        cli.ok(&["apply", "-f", &file]),
        "service/my-service unchanged\nnetworkpolicy.networking.k8s.io/allow-frontend-to-backend unchanged\n"
    );

    // A table someone flushed is rebuilt by the next minipod with the policies in it.
    let flushed = TestNode::in_ns(&node.node_ns(), &["nft", "delete", "table", "inet", "minipod"]);
    assert!(flushed.status.success());
    assert!(cli.reaches("other", "c", &direct), "no table, no isolation (and no port or service either)");
    cli.idle("late", "default", &["role=late"]);
    assert!(!cli.reaches("other", "c", &direct), "the rebuilt table isolates the backend again");
    assert!(cli.reaches("frontend-2", "c", &direct));

    // Deleted, the backend is open again.
    assert!(cli.ok(&["delete", "-f", &file]).contains("networkpolicy.networking.k8s.io/allow-frontend-to-backend deleted"));
    assert!(cli.reaches("other", "c", &direct));
    assert!(cli.ok(&["policy", "ls"]).lines().count() == 1, "only the header is left");
}

#[test]
fn default_deny_blocks_until_an_allow_rule_is_added_with_ports_namespaces_and_ip_blocks() {
    need_root();
    let env = PodEnv::new("pol-deny");
    let node = TestNode::new("poldeny");
    let cli = Cli::new(&env, &node);
    let web = cli.web("web", "shop", &["app=web"]);
    cli.idle("client", "shop", &["role=client"]);
    cli.idle("stranger", "default", &[]);
    let url = format!("http://{web}:8080/");
    let deny = write(
        &env,
        "deny.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: default-deny-ingress, namespace: shop}\nspec:\n  podSelector: {}\n  policyTypes: [Ingress]\n",
    );
    assert!(cli.ok(&["apply", "-f", &deny]).contains("networkpolicy.networking.k8s.io/shop/default-deny-ingress created"));
    assert!(!cli.reaches("client", "c", &url), "default deny: nobody gets in");
    // An allow rule on another port lets nothing in; on the server's port, the client.
    let allow = |port: &str| {
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: allow-client, namespace: shop}}\nspec:\n  podSelector: {{matchLabels: {{app: web}}}}\n  ingress:\n  - from: [{{podSelector: {{matchLabels: {{role: client}}}}}}]\n    ports: [{port}]\n"
        )
    };
    let allow_file = write(&env, "allow.yaml", &allow("{port: 9090}"));
    cli.ok(&["apply", "-f", &allow_file]);
    assert!(!cli.reaches("client", "c", &url), "a rule for port 9090 does not open 8080");
    let allow_file = write(&env, "allow.yaml", &allow("{protocol: TCP, port: 8000, endPort: 8100}"));
    assert!(cli.ok(&["apply", "-f", &allow_file]).contains("allow-client configured"));
    assert!(cli.reaches("client", "c", &url), "rules add up: the allow rule lets the client in through default deny");
    assert!(!cli.reaches("stranger", "c", &url), "a pod of another namespace is still blocked");

    // namespaceSelector: every pod of the namespaces it selects.
    let from_default = write(
        &env,
        "ns.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: from-default, namespace: shop}\nspec:\n  podSelector: {matchLabels: {app: web}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: default}}}]}]\n",
    );
    cli.ok(&["apply", "-f", &from_default]);
    assert!(cli.reaches("stranger", "c", &url), "namespaceSelector lets the default namespace in");
    cli.ok(&["delete", "-f", &from_default]);
    assert!(!cli.reaches("stranger", "c", &url));

    // ipBlock with except, for clients outside the node through a NodePort (their
    // source address is kept).
    let outside = node.internet();
    let np = write(
        &env,
        "np.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec:\n  type: NodePort\n  selector: {app: web}\n  ports: [{port: 80, targetPort: 8080, nodePort: 30480}]\n",
    );
    cli.ok(&["apply", "-f", &np]);
    let node_url = "http://198.51.100.2:30480/";
    assert!(TestNode::fetch(&outside, node_url).is_none(), "the outside client is not let in by any rule");
    let block = |except: &str| {
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: from-outside, namespace: shop}}\nspec:\n  podSelector: {{}}\n  ingress: [{{from: [{{ipBlock: {{cidr: 198.51.100.0/24{except}}}}}]}}]\n"
        )
    };
    cli.ok(&["apply", "-f", &write(&env, "block.yaml", &block(", except: [198.51.100.0/31]"))]);
    assert!(TestNode::fetch(&outside, node_url).is_none(), "198.51.100.1 is in the except");
    cli.ok(&["apply", "-f", &write(&env, "block.yaml", &block(""))]);
    assert!(TestNode::fetch(&outside, node_url).is_some_and(|b| b == "web"), "the ipBlock lets the outside client in");
    cli.ok(&["delete", "-f", &write(&env, "block.yaml", &block(""))]);
    cli.ok(&["delete", "-f", &np]);
    cli.ok(&["delete", "-f", &allow_file]);
    cli.ok(&["delete", "-f", &deny]);
    assert!(cli.reaches("stranger", "c", &url), "every policy deleted: open again");
}

/// A port given by name is the port each destination pod declares by it: on ingress
/// the selected pod's, on egress the peer's, a different number on each; a pod that
/// declares no such port is not opened by it, nor is another pod's number.
#[test]
fn ports_by_name_open_the_port_each_pod_declares() {
    need_root();
    let env = PodEnv::new("pol-named");
    let node = TestNode::new("polnamed");
    let cli = Cli::new(&env, &node);
    let a = cli.web_on("web-a", "np", &["app=web"], 8080, &["--named-port", "http=8080"]);
    let b = cli.web_on("web-b", "np", &["app=web"], 9090, &["--named-port", "http=9090"]);
    let c = cli.web("web-c", "np", &["app=web"]);
    // web-a also serves 9090, which is web-b's number for http, not its own.
    let rootfs = env.rootfs.to_str().unwrap();
    cli.ok(&[
        "ctr",
        "run",
        "web-a",
        "other",
        "--rootfs",
        rootfs,
        "--",
        "sh",
        "-c",
        &SERVE.replace("8080", "9090").replace("/www", "/www2"),
    ]);
    cli.idle("client", "np", &["role=client"]);
    let (a_http, b_http, c_any, a_other) =
        (format!("http://{a}:8080/"), format!("http://{b}:9090/"), format!("http://{c}:8080/"), format!("http://{a}:9090/"));
    for url in [&a_http, &b_http, &c_any, &a_other] {
        assert!(cli.reaches("client", "c", url), "open before any policy: {url}");
    }
    let ingress = write(
        &env,
        "ingress.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: http-in, namespace: np}\nspec:\n  podSelector: {matchLabels: {app: web}}\n  ingress: [{from: [{podSelector: {matchLabels: {role: client}}}], ports: [{port: http}]}]\n",
    );
    cli.ok(&["apply", "-f", &ingress]);
    assert!(cli.reaches("client", "c", &a_http) && cli.reaches("client", "c", &b_http), "each pod's own http port is open");
    assert!(!cli.reaches("client", "c", &c_any), "a pod that declares no http port is not opened");
    assert!(!cli.reaches("client", "c", &a_other), "another pod's number for http is not this pod's");
    cli.ok(&["delete", "-f", &ingress]);

    let egress = write(
        &env,
        "egress.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: http-out, namespace: np}\nspec:\n  podSelector: {matchLabels: {role: client}}\n  policyTypes: [Egress]\n  egress: [{ports: [{port: http}]}]\n",
    );
    cli.ok(&["apply", "-f", &egress]);
    assert!(cli.reaches("client", "c", &a_http) && cli.reaches("client", "c", &b_http), "out to each peer's http port");
    assert!(!cli.reaches("client", "c", &c_any), "not to a peer that declares no http port");
    assert!(!cli.reaches("client", "c", &a_other), "not to another number on a peer");
    cli.ok(&["delete", "-f", &egress]);
    assert!(cli.reaches("client", "c", &c_any), "open again");
    for p in ["web-a", "web-b", "web-c", "client"] {
        cli.ok(&["pod", "rm", "--force", p]);
    }
}

/// Egress, with the pods of an embedded runtime, whose process serves the node's DNS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_rules_govern_dns_and_connections_out() {
    use minipod_runtime::embed::{Container, Minipod, Ready};
    need_root();
    let env = PodEnv::new("pol-egress");
    let node = TestNode::new("polegr");
    let cli = Cli::new(&env, &node);
    let rt =
        Minipod::builder().state_dir(&env.h.root).image_dir(env.h.base.join("images")).node_netns(node.node_ns()).open().await.unwrap();
    let mut servers = Vec::new();
    for app in ["web", "db"] {
        let pod = rt.pod(app).label("app", app).start().await.unwrap();
        pod.container("httpd").rootfs(&env.rootfs).cmd(["sh", "-c", SERVE]).wait_for(Ready::port(8080)).start().await.unwrap();
        servers.push(pod);
    }
    let db_url = format!("http://{}:8080/", servers[1].ip());
    let pod = rt.pod("client").label("role", "client").start().await.unwrap();
    let client = pod.container("c").rootfs(&env.rootfs).cmd(["sleep", "600"]).start().await.unwrap();
    let pod = rt.pod("bystander").start().await.unwrap();
    let bystander = pod.container("c").rootfs(&env.rootfs).cmd(["sleep", "600"]).start().await.unwrap();
    let run = |c: &Container, args: Vec<String>| {
        let c = c.clone();
        async move { c.exec(args).await.is_ok_and(|o| o.success()) }
    };
    let fetch = |c: &Container, url: &str| run(c, ["timeout", "3", "wget", "-q", "-O", "-", url].map(String::from).to_vec());
    // A full name (busybox nslookup walks the search path without the trailing dot).
    let lookup = |c: &Container| run(c, ["timeout", "3", "nslookup", "web.default.svc.cluster.local."].map(String::from).to_vec());
    let svc = write(
        &env,
        "svc.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  selector: {app: web}\n  ports: [{port: 80, targetPort: 8080}]\n",
    );
    cli.ok(&["apply", "-f", &svc]);
    let by_name = "http://web.default.svc.cluster.local/";
    // The DNS server here learns of a service another process applied within 100 ms.
    let mut tries = 0;
    while !lookup(&client).await {
        tries += 1;
        assert!(tries < 50, "the service's name never resolved");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(fetch(&client, by_name).await, "open: the service answers by name");
    assert!(fetch(&client, &db_url).await);

    let egress = |rules: &str| {
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: client-out}}\nspec:\n  podSelector: {{matchLabels: {{role: client}}}}\n  policyTypes: [Egress]\n  egress: {rules}\n"
        )
    };
    let file = write(&env, "egress.yaml", &egress("[]"));
    cli.ok(&["apply", "-f", &file]);
    assert!(!lookup(&client).await, "default deny egress blocks DNS to the node's resolver too");
    assert!(!fetch(&client, &format!("http://{}/", cli.service_ip("web"))).await);
    assert!(lookup(&bystander).await && fetch(&bystander, &db_url).await, "a pod the policy does not select is not isolated");
    // DNS, and the web pods (by the endpoint a service connection goes to), not the db.
    let rules = "\n  - ports: [{protocol: UDP, port: 53}, {protocol: TCP, port: 53}]\n  - to: [{podSelector: {matchLabels: {app: web}}}]\n    ports: [{port: 8080}]";
    cli.ok(&["apply", "-f", &write(&env, "egress.yaml", &egress(rules))]);
    assert!(lookup(&client).await, "DNS is allowed by the rule for port 53");
    assert!(fetch(&client, by_name).await, "the service's endpoint is allowed");
    assert!(!fetch(&client, &db_url).await, "the db is not in any egress rule");
    cli.ok(&["delete", "-f", &file]);
    assert!(fetch(&client, &db_url).await, "deleted: open again");
}

#[test]
fn bad_policies_are_refused_whole_naming_the_document_and_field() {
    need_root();
    let env = PodEnv::new("pol-bad");
    let node = TestNode::new("polbad");
    let cli = Cli::new(&env, &node);
    let bad = EXAMPLES.replace(
        "ingress: [{from: [{podSelector: {matchLabels: {role: frontend}}}]}]",
        "ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/33}}]}]",
    );
    let (ok, _, err) = cli.run(&["apply", "-f", &write(&env, "bad.yaml", &bad)]);
    assert!(!ok, "an invalid CIDR is refused");
    assert!(err.contains("document 2 (NetworkPolicy default/allow-frontend-to-backend): spec.ingress[0].from[0].ipBlock.cidr"), "{err}");
    assert_eq!(cli.ok(&["svc", "ls"]).lines().count(), 1, "and the service of document 1 was not applied either");
    let named = EXAMPLES.replace("}}}]}]", "}}}], ports: [{port: http--alt}]}]");
    let (ok, _, err) = cli.run(&["apply", "-f", &write(&env, "named.yaml", &named)]);
    assert!(!ok && err.contains("spec.ingress[0].ports[0].port: port name \"http--alt\" is not valid"), "{err}");
    let (ok, _, err) = cli.run(&["policy", "inspect", "nope"]);
    assert!(!ok && err.contains("no network policy default/nope"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_embedding_api_builds_policies_that_go_on_drop() {
    use minipod_runtime::embed::{Minipod, PolicyRule, Ready};
    need_root();
    let env = PodEnv::new("pol-embed");
    let node = TestNode::new("polemb");
    let rt =
        Minipod::builder().state_dir(&env.h.root).image_dir(env.h.base.join("images")).node_netns(node.node_ns()).open().await.unwrap();
    let web = rt.pod("web").label("app", "web").start().await.unwrap();
    web.container("httpd").rootfs(&env.rootfs).cmd(["sh", "-c", SERVE]).wait_for(Ready::port(8080)).start().await.unwrap();
    let url = format!("http://{}:8080/", web.ip());
    let client = rt.pod("client").label("role", "client").start().await.unwrap();
    let client = client.container("c").rootfs(&env.rootfs).cmd(["sleep", "600"]).start().await.unwrap();
    let fetch = |c: &minipod_runtime::embed::Container| {
        let (c, url) = (c.clone(), url.clone());
        async move { c.exec(["timeout", "3", "wget", "-q", "-O", "-", &url]).await.is_ok_and(|o| o.success()) }
    };
    assert!(fetch(&client).await);
    let policy = rt
        .network_policy("web-from-admins")
        .select("app", "web")
        .ingress(PolicyRule::new().pods(&[("role", "admin")]).tcp(8080))
        .apply()
        .await
        .unwrap();
    assert_eq!(policy.key().to_string(), "default/web-from-admins");
    assert!(!fetch(&client).await, "the client is no admin");
    let admin = rt.pod("admin").label("role", "admin").start().await.unwrap();
    let admin = admin.container("c").rootfs(&env.rootfs).cmd(["sleep", "600"]).start().await.unwrap();
    assert!(fetch(&admin).await);
    let err = rt.network_policy("bad").ingress(PolicyRule::new().cidr("10.0.0.0/8", &["192.168.0.0/16"])).apply().await.err();
    assert!(err.is_some_and(|e| e.to_string().contains("is not strictly inside the cidr 10.0.0.0/8")));
    drop(policy);
    assert!(fetch(&client).await, "the policy went with its handle");
}
