//! `minipod net` against a throwaway node namespace (never the host's).

mod support;

use minipod_netstack::netns::remove_pinned;
use support::node::TestNode;
use support::{minipod_bin, need_root};

fn net(t: &TestNode, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(minipod_bin())
        .arg("--root")
        .arg(t.base.join("state"))
        .arg("net")
        .arg("--netns")
        .arg(t.node_ns())
        .args(args)
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_ls_inspect_gc_and_rm_a_network() {
    need_root();
    let t = TestNode::new("cli");
    let bridge = t.network("web", "10.220.0.0/24").bridge;
    let (ok, _, err) = net(&t, &["create", "web", "--subnet", "10.220.0.0/24", "--bridge", bridge.as_str(), "--mtu", "1400"]);
    assert!(ok, "{err}");
    let (ok, _, err) = net(&t, &["create", "other", "--subnet", "10.220.0.128/25", "--bridge", "bother0"]);
    assert!(!ok && err.contains("overlaps 10.220.0.0/24 of network web"), "{err}");
    let (ok, _, err) = net(&t, &["create", "bad", "--subnet", "10.220.0.0"]);
    assert!(!ok && err.contains("is not a CIDR"), "{err}");

    let (_, ls, _) = net(&t, &["ls"]);
    assert!(ls.lines().any(|l| l.starts_with("web") && l.contains("10.220.0.0/24") && l.contains("10.220.0.1")), "{ls}");

    let pod = t.pod("p");
    let net_name = minipod_netstack::NetworkName::new("web").unwrap();
    let w = t.node.attach(&net_name, t.request("pod-p", &pod)).await.unwrap();
    let (_, inspect, _) = net(&t, &["inspect", "web"]);
    let v: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(v["network"]["mtu"], 1400);
    assert_eq!(v["members"][0]["ip"], w.ip.to_string());

    let (ok, _, err) = net(&t, &["rm", "web"]);
    assert!(!ok && err.contains("still has 1 member(s)"), "{err}");
    // The pod's namespace goes away without a detach: gc notices.
    remove_pinned(&pod).unwrap();
    let (ok, out, err) = net(&t, &["gc"]);
    assert!(ok && out.contains("detached pod-p from web"), "{out} {err}");
    let (ok, _, err) = net(&t, &["rm", "web"]);
    assert!(ok, "{err}");
    let (_, ls, _) = net(&t, &["ls", "--output", "json"]);
    assert_eq!(ls.trim(), "[]");
}
