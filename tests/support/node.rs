//! A throwaway node for network tests: a node namespace, its state dir, pods as plain
//! pinned namespaces, an optional simulated internet, and the processes started in
//! them. Drop kills the processes and unpins every namespace, which takes bridges,
//! veths and the node's nftables table with them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use minipod_netstack::netns::{create_pinned, remove_pinned};
use minipod_netstack::{AttachRequest, IfName, NetworkConfig, NetworkName, Node, OwnerId};

static N: AtomicUsize = AtomicUsize::new(0);

/// A node namespace, its state dir and its pods; Drop unpins every namespace, which
/// takes the bridges and veths with them, and removes the directory.
pub struct TestNode {
    pub base: PathBuf,
    pub node: Node,
    pods: Mutex<Vec<PathBuf>>,
    children: Mutex<Vec<Child>>,
    tag: String,
}

impl TestNode {
    pub fn new(name: &str) -> Self {
        let tag = format!("{}{}", std::process::id() % 100000, N.fetch_add(1, Ordering::SeqCst));
        let base = std::env::temp_dir().join(format!("minipod-test-net-{name}-{tag}"));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(base.join("ns")).unwrap();
        let ns = base.join("ns/node");
        create_pinned(&ns).expect("node namespace");
        // A host has lo up; a fresh namespace does not (127.0.0.1 ports need it).
        assert!(Self::in_ns(&ns, &["ip", "link", "set", "lo", "up"]).status.success());
        let node = Node::new(base.join("state"), Some(&ns)).unwrap();
        TestNode { base, node, pods: Default::default(), children: Default::default(), tag }
    }

    /// A network whose bridge name is unique to this test run.
    pub fn network(&self, name: &str, cidr: &str) -> NetworkConfig {
        let bridge = IfName::new(format!("b{}{}", &name[..name.len().min(3)], self.tag)).unwrap();
        NetworkConfig::new(NetworkName::new(name).unwrap(), bridge, cidr.parse().unwrap())
    }

    pub fn pod(&self, name: &str) -> PathBuf {
        let p = self.base.join("ns").join(name);
        create_pinned(&p).unwrap();
        self.pods.lock().unwrap().push(p.clone());
        p
    }

    pub fn request(&self, owner: &str, netns: &Path) -> AttachRequest {
        AttachRequest {
            owner: OwnerId::new(owner).unwrap(),
            netns: netns.to_path_buf(),
            ifname: IfName::eth0(),
            ip: None,
            ports: vec![],
            // Members resolve each other by owner name.
            dns_names: vec![owner.to_string()],
            default_route: true,
        }
    }

    /// Runs a command inside a namespace (`nsenter --net`).
    pub fn in_ns(ns: &Path, args: &[&str]) -> std::process::Output {
        Command::new("nsenter").arg(format!("--net={}", ns.display())).args(args).output().unwrap()
    }

    /// Whether `to` answers a ping from `from` within 10 s (a ping a second until one
    /// answers: one lost packet on a busy machine is no failure).
    pub fn ping(from: &Path, to: std::net::Ipv4Addr) -> bool {
        Self::in_ns(from, &["busybox", "ping", "-c", "1", "-w", "10", &to.to_string()]).status.success()
    }

    /// Whether `to` leaves two pings from `from`, over 2 s, unanswered: the negative
    /// of [`TestNode::ping`], for a test that has shown the sender reaches others.
    pub fn no_answer(from: &Path, to: std::net::Ipv4Addr) -> bool {
        !Self::in_ns(from, &["busybox", "ping", "-c", "2", "-w", "2", &to.to_string()]).status.success()
    }

    pub fn node_ns(&self) -> PathBuf {
        self.base.join("ns/node")
    }
}

impl TestNode {
    /// A process inside `ns`, which lets `ip` name the namespace by PID; returned only
    /// once it is provably inside (nsenter enters after spawn returns): a PID still in
    /// the test's own namespace would put an interface on the host.
    pub fn holder_in(&self, ns: &Path) -> u32 {
        let holder = self.spawn_in(ns, &["sleep", "600"]);
        let want = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(ns).unwrap());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::fs::metadata(format!("/proc/{holder}/ns/net")).map(|m| std::os::unix::fs::MetadataExt::ino(&m)).ok() != Some(want) {
            assert!(std::time::Instant::now() < deadline, "the holder never entered {}", ns.display());
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        holder
    }

    /// Starts a long-running command inside a namespace; killed on Drop.
    pub fn spawn_in(&self, ns: &Path, args: &[&str]) -> u32 {
        let child = Command::new("nsenter")
            .arg(format!("--net={}", ns.display()))
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        self.children.lock().unwrap().push(child);
        pid
    }

    /// A busybox httpd in `ns` on `port` serving `index.html` = `body` and a CGI
    /// `/cgi-bin/ip` that answers the client's address as the server saw it.
    pub fn http_server(&self, ns: &Path, port: u16, body: &str) -> u32 {
        let n = N.fetch_add(1, Ordering::SeqCst);
        let root = self.base.join(format!("www-{n}"));
        std::fs::create_dir_all(root.join("cgi-bin")).unwrap();
        std::fs::write(root.join("index.html"), body).unwrap();
        let cgi = root.join("cgi-bin/ip");
        std::fs::write(&cgi, "#!/bin/sh\necho Content-Type: text/plain\necho\necho $REMOTE_ADDR\n").unwrap();
        std::fs::set_permissions(&cgi, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let pid = self.spawn_in(ns, &["busybox", "httpd", "-f", "-p", &port.to_string(), "-h", root.to_str().unwrap()]);
        // Wait until it listens (its socket shows in the namespace's table; an IPv6
        // socket, which takes IPv4 too, only in tcp6).
        let hex = format!(":{port:04X} ");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let tcp = String::from_utf8(Self::in_ns(ns, &["cat", "/proc/net/tcp", "/proc/net/tcp6"]).stdout).unwrap_or_default();
            if tcp.lines().any(|l| l.contains(&hex) && l.split_whitespace().nth(3) == Some("0A")) {
                return pid;
            }
            assert!(std::time::Instant::now() < deadline, "httpd in {} never listened on port {port}", ns.display());
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// `wget` from inside `ns`; None if it failed or took over 3 s. (busybox 1.35's
    /// own `wget -T` segfaults, hence coreutils `timeout`.)
    pub fn fetch(ns: &Path, url: &str) -> Option<String> {
        let out = Self::in_ns(ns, &["timeout", "3", "busybox", "wget", "-q", "-O", "-", url]);
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// A simulated internet: a namespace at 198.51.100.1 behind the node's uplink
    /// (198.51.100.2), with the node's default route through it. Returns its path.
    pub fn internet(&self) -> PathBuf {
        let inet = self.pod("internet");
        let node = self.node_ns();
        let holder = self.holder_in(&inet);
        let run = |ns: &Path, cmd: &str| {
            let out = Self::in_ns(ns, &["sh", "-c", cmd]);
            assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
        };
        run(&node, &format!("ip link add up0 type veth peer name mpinet0 netns {holder}"));
        run(&node, "ip addr add 198.51.100.2/24 dev up0 && ip link set up0 up && ip route add default via 198.51.100.1");
        run(&inet, "ip link set lo up && ip addr add 198.51.100.1/24 dev mpinet0 && ip link set mpinet0 up");
        // IPv6 too, from the documentation range 2001:db8::/32.
        run(&node, "ip -6 addr add 2001:db8:1::2/64 dev up0 nodad && ip -6 route add default via 2001:db8:1::1");
        run(&inet, "ip -6 addr add 2001:db8:1::1/64 dev mpinet0 nodad");
        inet
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        for mut c in self.children.lock().map(|mut v| std::mem::take(&mut *v)).unwrap_or_default() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for p in self.pods.lock().map(|v| v.clone()).unwrap_or_default() {
            let _ = remove_pinned(&p);
        }
        let _ = remove_pinned(&self.node_ns());
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

/// The veths in `ns`, by name (a node's host ends, or a pod's eth0).
pub fn veths(ns: &Path) -> Vec<String> {
    sh(ns, "ip -o link show type veth | cut -d: -f2 | cut -d@ -f1").split_whitespace().map(str::to_string).collect()
}

/// `cmd` run by `sh -c` in `ns`, which must succeed; its output.
pub fn sh(ns: &Path, cmd: &str) -> String {
    let out = TestNode::in_ns(ns, &["sh", "-c", cmd]);
    assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An underlay for overlay tests: a namespace with a bridge, and a veth from it to
/// each node's `ul0`, addressed from 192.0.2.0/24.
pub struct Underlay {
    pub node: TestNode,
    holder: u32,
}

impl Underlay {
    pub fn new() -> Self {
        let node = TestNode::new("underlay");
        let ns = node.node_ns();
        sh(&ns, "ip link add ulbr type bridge && ip link set ulbr up");
        let holder = node.holder_in(&ns);
        Underlay { node, holder }
    }

    /// Wires `node` to the underlay as 192.0.2.`host` on its `ul0`, MTU `mtu`.
    pub fn plug(&self, node: &TestNode, host: u8, mtu: u32) -> std::net::Ipv4Addr {
        let port = format!("ul{host}");
        sh(&node.node_ns(), &format!("ip link add ul0 mtu {mtu} type veth peer name {port} netns {}", self.holder));
        sh(&self.node.node_ns(), &format!("ip link set {port} mtu {mtu} master ulbr up"));
        sh(&node.node_ns(), &format!("ip addr add 192.0.2.{host}/24 dev ul0 && ip link set ul0 up"));
        std::net::Ipv4Addr::new(192, 0, 2, host)
    }
}
