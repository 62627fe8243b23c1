//! What a pod's security context and limits ask for, applied or refused, as a kubelet
//! would send them: the real `crictl` against `minipod serve` on a node namespace the
//! test makes.

mod support;

use std::path::PathBuf;

use serde_json::{json, Value};
use support::cri::{ctr_json, pod_json, Daemon};
use support::node::TestNode;
use support::{need_root, Harness, NodeMount};

fn daemon(name: &str) -> (TestNode, Daemon) {
    let node = TestNode::new(name);
    let d = Daemon::start(Harness::new(name), &node.node_ns());
    d.import_busybox();
    (node, d)
}

/// A pod from `pod_json` with `linux` set; returns (id, config path).
fn run_pod(d: &Daemon, name: &str, linux: Value) -> (String, String) {
    let mut pod = pod_json(name, &d.h.base.join("logs"), json!([]));
    pod["linux"] = linux;
    let path = d.write(&format!("{name}-pod.json"), &pod);
    (d.ok(&["runp", &path]).trim().to_string(), path)
}

/// Creates and starts a container whose `linux` section is `linux`.
fn run_ctr(d: &Daemon, pod: &(String, String), name: &str, cmd: &[&str], linux: Value) -> String {
    let mut cfg = ctr_json(name, cmd);
    cfg["linux"] = linux;
    let path = d.write(&format!("{name}.json"), &cfg);
    let id = d.ok(&["create", &pod.0, &path, &pod.1]).trim().to_string();
    d.ok(&["start", &id]);
    id
}

/// `crictl exec -s` output, trimmed; panics when the command fails.
fn exec(d: &Daemon, id: &str, cmd: &[&str]) -> String {
    d.ok(&[&["exec", "-s", id][..], cmd].concat()).trim().to_string()
}

fn status_line(d: &Daemon, id: &str, field: &str) -> String {
    let status = exec(d, id, &["cat", "/proc/self/status"]);
    status.lines().find_map(|l| l.strip_prefix(field)).unwrap_or_default().trim().to_string()
}

#[test]
fn a_pod_run_as_user_1000_on_a_read_only_root_cannot_write_it() {
    need_root();
    let (_node, d) = daemon("crisec");
    let pod = run_pod(&d, "locked", json!({}));
    let locked = run_ctr(
        &d,
        &pod,
        "locked",
        &["sleep", "300"],
        json!({ "security_context": {
            "run_as_user": { "value": 1000 },
            "readonly_rootfs": true,
            "no_new_privs": true,
            "capabilities": { "drop_capabilities": ["ALL"] },
        }}),
    );
    assert_eq!(exec(&d, &locked, &["id", "-u"]), "1000");
    // The image's /etc/passwd gives user 1000 its group.
    assert_eq!(exec(&d, &locked, &["id", "-g"]), "1000");
    let write = d.crictl(&["exec", "-s", &locked, "touch", "/probe"]);
    assert!(!write.status.success(), "wrote to a read-only root");
    let said = String::from_utf8_lossy(&write.stderr).into_owned() + &String::from_utf8_lossy(&write.stdout);
    assert!(said.contains("Read-only file system"), "{said}");
    assert_eq!(status_line(&d, &locked, "CapEff:"), "0000000000000000");
    assert_eq!(status_line(&d, &locked, "NoNewPrivs:"), "1");

    // By name from the image, with supplementary groups; a root container keeps the
    // default capability set but for the dropped one and gains the added one.
    let named = run_ctr(
        &d,
        &pod,
        "named",
        &["sleep", "300"],
        json!({ "security_context": {
            "run_as_username": "nobody",
            "supplemental_groups": [1234, 5678],
        }}),
    );
    assert_eq!(exec(&d, &named, &["id", "-u"]), "65534");
    let groups: Vec<String> = exec(&d, &named, &["id", "-G"]).split_whitespace().map(String::from).collect();
    assert_eq!(groups, ["65534", "1234", "5678"]);
    let inspect: Value = serde_json::from_str(&d.ok(&["inspect", &named])).unwrap();
    assert_eq!(inspect["status"]["user"]["linux"]["uid"], "65534", "{inspect}");
    let root = run_ctr(
        &d,
        &pod,
        "root",
        &["sleep", "300"],
        json!({ "security_context": { "capabilities": { "drop_capabilities": ["CHOWN"], "add_capabilities": ["SYS_TIME"] } } }),
    );
    let caps = u64::from_str_radix(&status_line(&d, &root, "CapEff:"), 16).unwrap();
    let (chown, kill, sys_time, sys_admin) = (1 << 0, 1 << 5, 1 << 25, 1 << 21);
    assert_eq!(caps & (chown | kill | sys_time | sys_admin), kill | sys_time, "CapEff {caps:x}");
    assert_eq!(status_line(&d, &root, "NoNewPrivs:"), "0", "no_new_privs was not asked for");
    d.ok(&["rmp", "-f", &pod.0]);
}

#[test]
fn a_container_over_its_memory_limit_is_oom_killed_and_reported_so() {
    need_root();
    let (_node, d) = daemon("crioom");
    let pod = run_pod(&d, "hungry", json!({}));
    let limit = 32 << 20;
    // A shell variable that grows to 200 MB: the shell itself outgrows the limit.
    let hungry = run_ctr(
        &d,
        &pod,
        "hungry",
        &["sh", "-c", "x=$(yes | head -c 200000000); echo survived"],
        json!({ "resources": { "memory_limit_in_bytes": limit, "memory_swap_limit_in_bytes": limit } }),
    );
    let status = d.wait_exited(&hungry);
    assert_eq!(status["status"]["state"], "CONTAINER_EXITED", "{status}");
    assert_eq!(status["status"]["reason"], "OOMKilled", "{status}");
    assert_eq!(status["status"]["exitCode"], 137, "{status}");
    assert!(!d.ok(&["logs", &hungry]).contains("survived"));

    // One that stays under its limit exits as it chose to.
    let frugal = run_ctr(
        &d,
        &pod,
        "frugal",
        &["sh", "-c", "x=$(yes | head -c 1000000); exit 3"],
        json!({ "resources": { "memory_limit_in_bytes": limit } }),
    );
    let status = d.wait_exited(&frugal);
    assert_eq!(status["status"]["reason"], "Error", "{status}");
    assert_eq!(status["status"]["exitCode"], 3, "{status}");
    d.ok(&["rmp", "-f", &pod.0]);
}

#[test]
fn runtime_default_seccomp_refuses_what_unconfined_allows() {
    need_root();
    let (_node, d) = daemon("criseccomp");
    let pod = run_pod(&d, "filtered", json!({}));
    // profile_type 0 is RuntimeDefault, 1 Unconfined.
    let filtered = run_ctr(&d, &pod, "filtered", &["sleep", "300"], json!({ "security_context": { "seccomp": { "profile_type": 0 } } }));
    let open = run_ctr(&d, &pod, "open", &["sleep", "300"], json!({ "security_context": { "seccomp": { "profile_type": 1 } } }));
    assert_eq!(status_line(&d, &filtered, "Seccomp:"), "2", "filter mode");
    assert_eq!(status_line(&d, &open, "Seccomp:"), "0");
    // A user namespace needs no capability, so only the filter stands in the way:
    // containerd's and Docker's default profile allow unshare only with CAP_SYS_ADMIN.
    assert_eq!(exec(&d, &open, &["unshare", "-U", "echo", "in-userns"]), "in-userns");
    let refused = d.crictl(&["exec", "-s", &filtered, "unshare", "-U", "echo", "in-userns"]);
    let said = String::from_utf8_lossy(&refused.stderr).into_owned() + &String::from_utf8_lossy(&refused.stdout);
    assert!(!refused.status.success() && said.contains("Operation not permitted"), "{said}");

    // A profile from the node, as Localhost: this one makes mkdir fail with EPERM.
    let profile = d.h.base.join("no-mkdir.json");
    let rules = json!({ "defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{ "names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO" }] });
    std::fs::write(&profile, serde_json::to_vec(&rules).unwrap()).unwrap();
    let local = run_ctr(
        &d,
        &pod,
        "local",
        &["sleep", "300"],
        json!({ "security_context": { "seccomp": { "profile_type": 2, "localhost_ref": profile.display().to_string() } } }),
    );
    let mkdir = d.crictl(&["exec", "-s", &local, "mkdir", "/tmp/d"]);
    assert!(!mkdir.status.success(), "mkdir passed the node's profile");
    assert_eq!(exec(&d, &local, &["touch", "/tmp/f"]), "");
    d.ok(&["rmp", "-f", &pod.0]);
}

#[test]
fn fields_that_cannot_be_honoured_are_refused_by_name_and_leave_nothing() {
    need_root();
    let (_node, d) = daemon("crirefuse");
    let mut userns = pod_json("userns", &d.h.base.join("logs"), json!([]));
    // A user namespace of the pod's own (mode POD).
    userns["linux"] = json!({ "security_context": { "namespace_options": { "userns_options": { "mode": 0 } } } });
    let err = d.fails(&["runp", &d.write("userns-pod.json", &userns)]);
    assert!(err.contains("FailedPrecondition") && err.contains("userns_options"), "{err}");
    let mut selinux = pod_json("selinux", &d.h.base.join("logs"), json!([]));
    selinux["linux"] = json!({ "security_context": { "selinux_options": { "type": "spc_t" } } });
    let err = d.fails(&["runp", &d.write("selinux-pod.json", &selinux)]);
    assert!(err.contains("FailedPrecondition") && err.contains("selinux_options"), "{err}");
    let mut hostnet = pod_json("hostnet-ports", &d.h.base.join("logs"), json!([{ "container_port": 80, "host_port": 8080 }]));
    hostnet["linux"] = json!({ "security_context": { "namespace_options": { "network": 2 } } });
    let err = d.fails(&["runp", &d.write("hostnet-pod.json", &hostnet)]);
    assert!(err.contains("InvalidArgument") && err.contains("host port must equal"), "{err}");
    let mut systemd = pod_json("slice", &d.h.base.join("logs"), json!([]));
    systemd["linux"] = json!({ "cgroup_parent": "kubepods.slice" });
    let err = d.fails(&["runp", &d.write("slice-pod.json", &systemd)]);
    assert!(err.contains("cgroup_parent"), "{err}");
    assert_eq!(d.ok(&["pods", "-q"]).trim(), "", "a refused pod was left");

    let pod = run_pod(&d, "strict", json!({}));
    let create = |name: &str, linux: Value, extra: Value| {
        let mut cfg = ctr_json(name, &["sleep", "300"]);
        cfg["linux"] = linux;
        if let (Some(cfg), Some(extra)) = (cfg.as_object_mut(), extra.as_object()) {
            cfg.extend(extra.clone());
        }
        d.fails(&["create", &pod.0, &d.write(&format!("{name}.json"), &cfg), &pod.1])
    };
    let cases = [
        ("group", json!({ "security_context": { "run_as_group": { "value": 5 } } }), json!({}), "InvalidArgument", "run_as_group"),
        (
            "cap",
            json!({ "security_context": { "capabilities": { "add_capabilities": ["NOT_A_CAP"] } } }),
            json!({}),
            "InvalidArgument",
            "NOT_A_CAP",
        ),
        ("priv", json!({ "security_context": { "privileged": true } }), json!({}), "privileged", "sandbox"),
        ("dev", json!({}), json!({ "CDI_devices": [{ "name": "vendor.com/gpu=0" }] }), "FailedPrecondition", "CDI devices"),
        ("user", json!({ "security_context": { "run_as_username": "nosuchuser" } }), json!({}), "nosuchuser", "passwd"),
        (
            "seccomp",
            json!({ "security_context": { "seccomp": { "profile_type": 2, "localhost_ref": "/nonexistent/profile.json" } } }),
            json!({}),
            "/nonexistent/profile.json",
            "seccomp",
        ),
        ("huge", json!({ "resources": { "hugepage_limits": [{ "page_size": "2MB", "limit": 2097152 }] } }), json!({}), "hugetlb", ""),
    ];
    for (name, linux, extra, want, also) in cases {
        // hugetlb is refused only where the host has no hugetlb controller.
        if name == "huge" && std::path::Path::new("/sys/fs/cgroup/hugetlb").exists() {
            continue;
        }
        let err = create(name, linux, extra);
        assert!(err.contains(want) && err.contains(also), "{name}: {err}");
    }
    assert_eq!(d.ok(&["ps", "-a", "-q"]).trim(), "", "a refused container was left");
    d.ok(&["rmp", "-f", &pod.0]);
}

/// Cgroup directories a test made under a kubelet-style parent; removed on drop,
/// deepest first, in every hierarchy.
struct CgroupParent(String);

impl Drop for CgroupParent {
    fn drop(&mut self) {
        let top = self.0.split('/').next().unwrap_or_default().to_string();
        for hierarchy in std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten() {
            let mut dirs: Vec<PathBuf> = Vec::new();
            let mut stack = vec![hierarchy.path().join(&top)];
            while let Some(p) = stack.pop() {
                if p.is_dir() {
                    stack.extend(std::fs::read_dir(&p).into_iter().flatten().flatten().map(|e| e.path()).filter(|p| p.is_dir()));
                    dirs.push(p);
                }
            }
            for dir in dirs.iter().rev() {
                let _ = std::fs::remove_dir(dir);
            }
        }
    }
}

#[test]
fn limits_land_in_the_pods_cgroup_and_change_on_update() {
    need_root();
    let (_node, d) = daemon("crilimits");
    let parent = CgroupParent(format!("minipod-test-kubepods-{}/pod-a", std::process::id()));
    let pod = run_pod(&d, "limited", json!({ "cgroup_parent": parent.0 }));
    let c = run_ctr(
        &d,
        &pod,
        "limited",
        &["sleep", "300"],
        json!({ "resources": { "cpu_period": 100000, "cpu_quota": 50000, "cpu_shares": 512, "memory_limit_in_bytes": 64 << 20, "pids_limit": 50 } }),
    );
    let cgroup = |controller: &str, file: &str| {
        let p = PathBuf::from("/sys/fs/cgroup").join(controller).join(&parent.0).join(&c).join(file);
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).trim().to_string()
    };
    assert_eq!(cgroup("memory", "memory.limit_in_bytes"), (64u64 << 20).to_string());
    assert_eq!(cgroup("cpu", "cpu.cfs_quota_us"), "50000");
    assert_eq!(cgroup("cpu", "cpu.shares"), "512");
    assert_ne!(cgroup("memory", "cgroup.procs"), "", "the container's process is in its cgroup");

    d.ok(&["update", "--memory", &(128u64 << 20).to_string(), &c]);
    assert_eq!(cgroup("memory", "memory.limit_in_bytes"), (128u64 << 20).to_string());
    assert_eq!(cgroup("cpu", "cpu.cfs_quota_us"), "50000", "settings not given stay");
    let inspect: Value = serde_json::from_str(&d.ok(&["inspect", &c])).unwrap();
    let linux = &inspect["status"]["resources"]["linux"];
    assert_eq!(linux["memoryLimitInBytes"], (128u64 << 20).to_string(), "{inspect}");
    assert_eq!(linux["cpuQuota"], "50000", "{inspect}");

    // What the kubelet's eviction manager and image GC read.
    let fs: Value = serde_json::from_str(&d.ok(&["imagefsinfo", "-o", "json"])).unwrap();
    let images = &fs["status"]["imageFilesystems"][0];
    let used = images["usedBytes"]["value"].as_str().unwrap_or("0").parse::<u64>().unwrap_or(0);
    assert!(used > 100_000, "the busybox image takes space: {fs}");
    assert!(images["fsId"]["mountpoint"].as_str().is_some_and(|m| m.ends_with("images")), "{fs}");
    exec(&d, &c, &["dd", "if=/dev/zero", "of=/written", "bs=1024", "count=512"]);
    let stats: Value = serde_json::from_str(&d.ok(&["stats", "-o", "json", &c])).unwrap();
    let layer = stats["stats"][0]["writableLayer"]["usedBytes"]["value"].as_str().unwrap_or("0").parse::<u64>().unwrap_or(0);
    assert!(layer >= 512 * 1024, "{stats}");
    let info: Value = serde_json::from_str(&d.ok(&["info", "-o", "json"])).unwrap();
    let conditions = info["status"]["conditions"].as_array().cloned().unwrap_or_default();
    assert!(conditions.iter().all(|c| c["status"] == true), "{info}");

    d.ok(&["rmp", "-f", &pod.0]);
    drop(parent);
}

#[test]
fn host_pod_and_container_pid_namespaces() {
    need_root();
    let (_node, d) = daemon("cripid");
    // NamespaceMode: POD 0, CONTAINER 1, NODE 2.
    let host = run_pod(&d, "hostpid", json!({ "security_context": { "namespace_options": { "pid": 2 } } }));
    // A kubelet repeats the pod's namespace modes in each container's config.
    let c = run_ctr(&d, &host, "sees-host", &["sleep", "300"], json!({ "security_context": { "namespace_options": { "pid": 2 } } }));
    let me = std::process::id().to_string();
    assert_eq!(exec(&d, &c, &["sh", "-c", &format!("test -d /proc/{me} && echo visible")]), "visible", "the node's processes are visible");
    d.ok(&["rmp", "-f", &host.0]);

    let shared = run_pod(&d, "podpid", json!({ "security_context": { "namespace_options": { "pid": 0 } } }));
    let a = run_ctr(&d, &shared, "a", &["sleep", "301"], json!({}));
    let b = run_ctr(&d, &shared, "b", &["sleep", "302"], json!({}));
    assert!(exec(&d, &b, &["ps"]).contains("sleep 301"), "b sees a's process");
    let own = run_pod(&d, "ctrpid", json!({ "security_context": { "namespace_options": { "pid": 1 } } }));
    let lonely = run_ctr(&d, &own, "lonely", &["sleep", "303"], json!({}));
    assert_eq!(exec(&d, &lonely, &["sh", "-c", "cat /proc/1/cmdline | tr '\\0' ' '"]), "sleep 303");
    let _ = a;
    d.ok(&["rmp", "-f", &shared.0]);
    d.ok(&["rmp", "-f", &own.0]);
}

#[test]
fn volumes_mounted_just_before_create_and_after_start_reach_the_container() {
    need_root();
    let (_node, d) = daemon("crivol");
    let pod = run_pod(&d, "vol", json!({}));
    let vol = d.h.base.join("volume");
    std::fs::create_dir_all(&vol).unwrap();
    let mount = |host: &std::path::Path, propagation: i32| json!([{ "container_path": "/vol", "host_path": host.display().to_string(), "propagation": propagation }]);
    let with_mounts = |name: &str, mounts: Value| {
        let mut cfg = ctr_json(name, &["sleep", "300"]);
        cfg["mounts"] = mounts;
        let id = d.ok(&["create", &pod.0, &d.write(&format!("{name}.json"), &cfg), &pod.1]).trim().to_string();
        d.ok(&["start", &id]);
        id
    };
    // The first container makes the runtime's mount template; a volume the node mounts
    // right after must still be in the next container.
    with_mounts("first", mount(&vol, 0));
    let _tmpfs = NodeMount::tmpfs(&vol.join("disk"));
    std::fs::write(vol.join("disk/flag"), "mounted").unwrap();
    let second = with_mounts("second", mount(&vol, 0));
    assert_eq!(exec(&d, &second, &["cat", "/vol/disk/flag"]), "mounted");

    // HostToContainer (rslave): what the node mounts later shows in the container.
    let shared = d.h.base.join("shared");
    let _shared = NodeMount::shared(&shared);
    let slave = with_mounts("slave", mount(&shared, 1));
    let _later = NodeMount::tmpfs(&shared.join("later"));
    std::fs::write(shared.join("later/flag"), "propagated").unwrap();
    assert_eq!(exec(&d, &slave, &["cat", "/vol/later/flag"]), "propagated");
    let inspect: Value = serde_json::from_str(&d.ok(&["inspect", &slave])).unwrap();
    assert_eq!(inspect["status"]["mounts"][0]["propagation"], "PROPAGATION_HOST_TO_CONTAINER", "{inspect}");
    // Bidirectional (rshared): what the container mounts shows on the node, and its
    // own root and system mounts do not.
    let privileged = run_pod(&d, "volpriv", json!({ "security_context": { "privileged": true } }));
    let mut cfg = ctr_json("both", &["sleep", "300"]);
    cfg["mounts"] = mount(&shared, 2);
    cfg["linux"] = json!({ "security_context": { "privileged": true } });
    let both = d.ok(&["create", &privileged.0, &d.write("both.json", &cfg), &privileged.1]).trim().to_string();
    d.ok(&["start", &both]);
    exec(&d, &both, &["sh", "-c", "mkdir -p /vol/made && mount -t tmpfs made /vol/made && echo from-the-container > /vol/made/f"]);
    assert_eq!(std::fs::read_to_string(shared.join("made/f")).unwrap().trim(), "from-the-container");
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let leaked: Vec<&str> = table
        .lines()
        .filter(|l| {
            l.split(" - ").nth(1).is_some_and(|t| ["overlay ", "proc ", "devpts ", "mqueue ", "sysfs "].iter().any(|f| t.starts_with(f)))
        })
        .filter(|l| l.contains(d.h.base.to_str().unwrap()))
        .collect();
    assert!(leaked.is_empty(), "the container's own mounts reached the node: {leaked:?}");
    let inspect: Value = serde_json::from_str(&d.ok(&["inspect", &both])).unwrap();
    assert_eq!(inspect["status"]["mounts"][0]["propagation"], "PROPAGATION_BIDIRECTIONAL", "{inspect}");
    // From a private mount it could not reach the node: refused, saying how to fix it.
    let private = d.h.base.join("private");
    std::fs::create_dir_all(&private).unwrap();
    let _private = NodeMount::tmpfs(&private);
    assert!(std::process::Command::new("mount").arg("--make-private").arg(&private).status().unwrap().success());
    cfg["mounts"] = mount(&private, 2);
    cfg["metadata"]["name"] = json!("lonely");
    let err = d.fails(&["create", &privileged.0, &d.write("private.json", &cfg), &privileged.1]);
    assert!(err.contains("needs its source") && err.contains("mount --make-rshared"), "{err}");
    d.ok(&["rmp", "-f", &privileged.0]);
    d.ok(&["rmp", "-f", &pod.0]);
}

#[test]
fn a_host_network_pod_serves_on_the_nodes_own_addresses() {
    need_root();
    let (node, d) = daemon("crihostnet");
    // NamespaceMode NODE for the network, as a kubelet sends hostNetwork: true.
    let hostnet = json!({ "security_context": { "namespace_options": { "network": 2 } } });
    let mut pod = pod_json("hostweb", &d.h.base.join("logs"), json!([{ "container_port": 18090, "host_port": 18090 }]));
    pod["linux"] = hostnet.clone();
    let path = d.write("hostweb-pod.json", &pod);
    let id = d.ok(&["runp", &path]).trim().to_string();
    let serve = "mkdir /www && echo hello-host > /www/index.html && exec httpd -f -p 18090 -h /www";
    let web = run_ctr(
        &d,
        &(id.clone(), path),
        "web",
        &["sh", "-c", serve],
        json!({ "security_context": { "namespace_options": { "network": 2 } } }),
    );
    // The node namespace's loopback is the pod's: no DNAT, no address of its own.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let body = loop {
        match TestNode::fetch(&node.node_ns(), "http://127.0.0.1:18090/") {
            Some(b) => break b,
            None if std::time::Instant::now() < deadline => std::thread::sleep(std::time::Duration::from_millis(100)),
            None => panic!("the host-network pod never answered on the node's 127.0.0.1:18090"),
        }
    };
    assert_eq!(body, "hello-host");
    let links = exec(&d, &web, &["ip", "-o", "link"]);
    assert!(links.contains("lo:") && !links.contains("eth0"), "the node namespace's links, not a pod's: {links}");
    let inspect: Value = serde_json::from_str(&d.ok(&["inspectp", &id])).unwrap();
    assert_eq!(inspect["status"]["network"]["ip"], "", "{inspect}");
    d.ok(&["rmp", "-f", &id]);
    // The node namespace is untouched by the removal.
    assert!(TestNode::in_ns(&node.node_ns(), &["ip", "link", "show", "lo"]).status.success());
}

#[test]
fn node_devices_reach_the_container_with_the_permissions_asked_for() {
    need_root();
    // /dev/net/tun is in no default allow-list and opens without capabilities: a write
    // open the device cgroup refuses fails with EPERM, one it allows gets past it.
    if !std::path::Path::new("/dev/net/tun").exists()
        && support::skip("node_devices_reach_the_container_with_the_permissions_asked_for", "this node has no /dev/net/tun")
    {
        return;
    }
    let (_node, d) = daemon("cridev");
    let pod = run_pod(&d, "dev", json!({}));
    let with_devices = |name: &str, devices: Value| {
        let mut cfg = ctr_json(name, &["sleep", "300"]);
        cfg["devices"] = devices;
        d.write(&format!("{name}.json"), &cfg)
    };
    let tun = |path: &str, perms: &str| json!({ "container_path": path, "host_path": "/dev/net/tun", "permissions": perms });
    // The device cgroup knows devices by number, not path: one container each.
    let start = |name: &str, devices: Value| {
        let id = d.ok(&["create", &pod.0, &with_devices(name, devices), &pod.1]).trim().to_string();
        d.ok(&["start", &id]);
        id
    };
    let write = |id: &str, path: &str| exec(&d, id, &["sh", "-c", &format!("exec 2>&1; echo x > {path}; true")]);
    let rw = start("rw", json!([tun("/dev/tun-rw", "rw")]));
    let allowed = write(&rw, "/dev/tun-rw");
    assert!(allowed.contains("File descriptor in bad state"), "rw: the write open must reach the device: {allowed}");
    let r = start("r", json!([tun("/dev/net/tun-r", "r")]));
    let denied = write(&r, "/dev/net/tun-r");
    assert!(denied.contains("Operation not permitted"), "r only, yet: {denied}");
    assert_eq!(exec(&d, &r, &["stat", "-c", "%t:%T", "/dev/net/tun-r"]), "a:c8", "10:200 in hex");

    // What cannot be a device, or a permission that does not exist, is refused by name.
    for (devices, needle) in [
        (json!([{ "container_path": "/dev/x", "host_path": "/etc/hostname", "permissions": "rw" }]), "is not a character or block device"),
        (json!([tun("/dev/x", "rwx")]), "use some of r, w and m"),
        (json!([{ "container_path": "/dev/x", "host_path": "/dev/no-such-device", "permissions": "r" }]), "not found on the node"),
    ] {
        let err = d.fails(&["create", &pod.0, &with_devices("bad", devices), &pod.1]);
        assert!(err.contains(needle), "{err}");
    }
    d.ok(&["rmp", "-f", &pod.0]);
}

#[test]
fn a_container_whose_create_has_not_returned_is_not_listed() {
    need_root();
    let (_node, d) = daemon("criinflight");
    let pod = run_pod(&d, "inflight", json!({}));
    let real = run_ctr(&d, &pod, "real", &["sleep", "300"], json!({}));
    // What a CreateContainer still running has made: the record, not yet the runtime
    // container. A kubelet that saw it listed asked for its status and got NotFound.
    let containers = d.h.root.join("pods").join(&pod.0).join("containers");
    let record = std::fs::read_dir(&containers)
        .unwrap()
        .flatten()
        .map(|e| e.path().join("container.json"))
        .find(|p| std::fs::read_to_string(p).is_ok_and(|t| t.contains(&real)))
        .expect("the real container's record");
    let mut ghost: Value = serde_json::from_str(&std::fs::read_to_string(&record).unwrap()).unwrap();
    let name = ghost["name"].as_str().unwrap().replace("real", "ghost");
    let ghost_id = ghost["id"].as_str().unwrap().replace("real", "ghost");
    ghost["name"] = json!(name);
    ghost["id"] = json!(ghost_id);
    let dir = containers.join(&name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("container.json"), ghost.to_string()).unwrap();

    let listed = d.ok(&["ps", "-a", "-q"]);
    assert!(listed.contains(&real), "{listed}");
    assert!(!listed.contains(&ghost_id), "a container whose create has not returned was listed: {listed}");
    assert!(d.fails(&["inspect", &ghost_id]).contains("NotFound"));
    d.ok(&["rmp", "-f", &pod.0]);
}

/// The CRI socket is root's (0660, root's group) wherever `--socket` puts it: a
/// directory others may write to is refused before anything starts (they could put a
/// socket of their own in its place), and a setgid directory's group is not taken.
#[test]
fn the_socket_is_root_only_wherever_it_is_put() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    need_root();
    let node = TestNode::new("sock");
    let h = Harness::new("sock");
    let serve = |dir: &std::path::Path| {
        std::process::Command::new(support::minipod_bin())
            .arg("--root")
            .arg(&h.root)
            .arg("serve")
            .arg("--socket")
            .arg(format!("unix://{}", dir.join("cri.sock").display()))
            .arg("--netns")
            .arg(node.node_ns())
            .arg("--images")
            .arg(h.base.join("images"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };

    let open = h.base.join("open");
    std::fs::create_dir_all(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let refused = serve(&open).wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && err.contains("can be written by others (mode 1777)"), "{err}");
    assert!(!open.join("cri.sock").exists(), "no socket in a directory others can write");

    let shared = h.base.join("setgid");
    std::fs::create_dir_all(&shared).unwrap();
    std::os::unix::fs::chown(&shared, Some(0), Some(65534)).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o2755)).unwrap();
    let mut daemon = serve(&shared);
    let sock = shared.join("cri.sock");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(std::time::Instant::now() < deadline && daemon.try_wait().unwrap().is_none(), "the daemon never listened");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let meta = std::fs::metadata(&sock).unwrap();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    let _ = daemon.wait();
    assert_eq!((meta.mode() & 0o7777, meta.uid(), meta.gid()), (0o660, 0, 0), "the socket's mode, owner and group");
}
