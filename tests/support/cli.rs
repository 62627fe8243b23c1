//! The `minipod` CLI on a node namespace of the test's own, for scenario tests of
//! Services and NetworkPolicies.

use std::collections::BTreeMap;

use super::node::TestNode;
use super::pods::PodEnv;

/// An httpd on 8080 answering with the pod's hostname.
pub const SERVE: &str = "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www";

pub struct Cli<'a> {
    pub env: &'a PodEnv,
    pub ns: String,
    pub images: String,
}

impl<'a> Cli<'a> {
    /// The CLI on the state root of `env`, driving the node namespace of `node`.
    pub fn new(env: &'a PodEnv, node: &TestNode) -> Self {
        Cli { env, ns: node.node_ns().to_str().unwrap().into(), images: env.h.base.join("images").to_str().unwrap().into() }
    }

    pub fn run(&self, args: &[&str]) -> (bool, String, String) {
        let mut full = vec!["--images", &self.images, "--netns", &self.ns];
        full.splice(0..0, args[..1].iter().copied());
        full.extend_from_slice(&args[1..]);
        let out = self.env.h.minipod(&full);
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.run(args);
        assert!(ok, "minipod {args:?}: {err}");
        out
    }

    /// A pod with labels, in a namespace, running the httpd; returns its address once it answers.
    pub fn web(&self, name: &str, namespace: &str, labels: &[&str]) -> String {
        self.web_on(name, namespace, labels, 8080, &[])
    }

    /// [`Cli::web`] with its httpd on `port` and more `pod run` arguments.
    pub fn web_on(&self, name: &str, namespace: &str, labels: &[&str], port: u16, run_args: &[&str]) -> String {
        self.pod_with(name, namespace, labels, run_args);
        let rootfs = self.env.rootfs.to_str().unwrap();
        let serve = SERVE.replace("8080", &port.to_string());
        self.ok(&["ctr", "run", name, "httpd", "--rootfs", rootfs, "--", "sh", "-c", &serve]);
        let inspect: serde_json::Value = serde_json::from_str(&self.ok(&["pod", "inspect", name])).unwrap();
        let ip = inspect["pod"]["networks"][0]["ip"].as_str().unwrap().to_string();
        let node = std::path::PathBuf::from(&self.ns);
        for _ in 0..300 {
            if TestNode::fetch(&node, &format!("http://{ip}:{port}/")).is_some() {
                return ip;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        panic!("the httpd of {name} never answered");
    }

    /// The cluster IP of service `name` of the default namespace.
    pub fn service_ip(&self, name: &str) -> String {
        let v: serde_json::Value = serde_json::from_str(&self.ok(&["svc", "inspect", name])).unwrap();
        v["service"]["cluster_ip"].as_str().unwrap().to_string()
    }

    /// Whether one request to `url` from the container `ctr` of `pod` is answered
    /// within 3 s (a dropped connection is not).
    pub fn reaches(&self, pod: &str, ctr: &str, url: &str) -> bool {
        self.run(&["ctr", "exec", "--timeout", "20", pod, ctr, "--", "timeout", "3", "wget", "-q", "-O", "-", url]).0
    }

    /// `minipod pod run` of a pod with labels, in a namespace.
    pub fn pod(&self, name: &str, namespace: &str, labels: &[&str]) {
        self.pod_with(name, namespace, labels, &[]);
    }

    fn pod_with(&self, name: &str, namespace: &str, labels: &[&str], more: &[&str]) {
        let mut args = vec!["pod", "run", name, "--namespace", namespace];
        for l in labels {
            args.extend(["--label", l]);
        }
        args.extend_from_slice(more);
        self.ok(&args);
    }

    /// A pod with labels, in a namespace, with a container `c` that only sleeps.
    pub fn idle(&self, name: &str, namespace: &str, labels: &[&str]) {
        self.pod(name, namespace, labels);
        self.ok(&["ctr", "run", name, "c", "--rootfs", self.env.rootfs.to_str().unwrap(), "--", "sleep", "600"]);
    }

    /// `n` requests to `url` from the container `ctr` of `pod`: who answered, how often.
    pub fn answers(&self, pod: &str, ctr: &str, url: &str, n: usize) -> BTreeMap<String, usize> {
        let script = format!("for i in $(seq {n}); do wget -q -O - {url} || echo failed; done");
        let out = self.ok(&["ctr", "exec", "--timeout", "120", pod, ctr, "--", "sh", "-c", &script]);
        let mut seen = BTreeMap::new();
        for line in out.lines() {
            *seen.entry(line.to_string()).or_default() += 1;
        }
        seen
    }
}
