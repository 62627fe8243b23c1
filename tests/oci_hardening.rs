//! Regressions for hostile or unusual bundles and environments: nothing a bundle says
//! may reach the host, and low descriptor limits or leftover processes must not break
//! the lifecycle.

mod support;

use serde_json::json;
use support::{cgroup_dirs, need_root, Harness};

#[test]
fn works_under_the_usual_soft_fd_limit_of_1024() {
    need_root();
    let h = Harness::new("nofile");
    let b = h.bundle(&["sh", "-c", "exit 4"]);
    let id = h.id("nofile");
    let script = format!(
        "ulimit -n 1024 && exec {} --root {} run --bundle {} {id}",
        support::minipod_bin().display(),
        h.root.display(),
        b.dir.display()
    );
    let out = std::process::Command::new("sh").args(["-c", &script]).output().unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn an_image_dev_symlink_cannot_make_device_nodes_on_the_host() {
    need_root();
    let h = Harness::new("devlink");
    let host_dir = h.base.join("host-side");
    std::fs::create_dir_all(&host_dir).unwrap();
    let mut b = h.bundle(&["true"]);
    let rootfs = b.dir.join("rootfs");
    std::fs::remove_dir_all(rootfs.join("dev")).unwrap();
    std::os::unix::fs::symlink(&host_dir, rootfs.join("dev")).unwrap();
    // No /dev tmpfs, so devices are created in the image's own /dev.
    b.config["mounts"].as_array_mut().unwrap().retain(|m| !m["destination"].as_str().unwrap().starts_with("/dev"));
    let _ = h.run(&b, "devlink");
    assert_eq!(std::fs::read_dir(&host_dir).unwrap().count(), 0, "nothing may appear in the host directory the symlink names");
}

#[test]
fn host_wide_sysctls_unbindable_roots_and_joined_mount_namespaces_are_refused() {
    need_root();
    let h = Harness::new("refuse");
    let mut b = h.bundle(&["true"]);
    b.config["linux"]["sysctl"] = json!({"kernel.core_pattern": "|/tmp/x"});
    let (code, _, err) = h.run(&b, "sysctl");
    assert_ne!(code, 0);
    assert!(err.contains("kernel.core_pattern is not namespaced"), "{err}");

    let mut b = h.bundle(&["true"]);
    b.config["linux"]["rootfsPropagation"] = json!("runbindable");
    let (code, _, err) = h.run(&b, "unbindable");
    assert_ne!(code, 0);
    assert!(err.contains("\"runbindable\" cannot hold a container root"), "{err}");

    let mut b = h.bundle(&["true"]);
    for ns in b.config["linux"]["namespaces"].as_array_mut().unwrap() {
        if ns["type"] == "mount" {
            ns["path"] = json!("/proc/1/ns/mnt");
        }
    }
    let (code, _, err) = h.run(&b, "mntjoin");
    assert_ne!(code, 0);
    assert!(err.contains("joining an existing mount namespace is not supported"), "{err}");
}

#[test]
fn the_container_sees_its_own_cgroup_hierarchies_with_its_limits() {
    need_root();
    if support::skip_on_cgroup_v2(
        "the_container_sees_its_own_cgroup_hierarchies_with_its_limits",
        "it reads the container's cgroup v1 hierarchies",
    ) {
        return;
    }
    let h = Harness::new("cgview");
    let mut b =
        h.bundle(&["sh", "-c", "ls /sys/fs/cgroup; cat /sys/fs/cgroup/memory/memory.limit_in_bytes; cat /proc/self/cgroup | grep memory"]);
    b.config["linux"]["resources"] = json!({"memory": {"limit": 48 * 1024 * 1024}});
    let (code, out, err) = h.run(&b, "cgview");
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines.contains(&"memory") && lines.contains(&"pids"), "{out}");
    assert!(lines.contains(&(48 * 1024 * 1024).to_string().as_str()), "{out}");
    assert!(out.contains(":memory:/\n"), "the cgroup namespace makes the container's cgroup its root: {out}");
}

#[test]
fn delete_kills_what_the_workload_left_behind_without_a_pid_namespace() {
    need_root();
    let h = Harness::new("leftover");
    let mut b = h.bundle(&["sh", "-c", "sleep 300 & exit 0"]);
    b.config["linux"]["namespaces"].as_array_mut().unwrap().retain(|n| n["type"] != "pid");
    let id = h.create(&b, "leftover");
    assert!(h.minipod(&["start", &id]).status.success());
    h.wait_for_status(&id, "stopped");
    let tasks = std::fs::read_to_string(format!("/sys/fs/cgroup/pids/minipod/{id}/cgroup.procs")).unwrap_or_default();
    let orphans: Vec<i32> = tasks.lines().filter_map(|l| l.trim().parse().ok()).collect();
    assert_eq!(orphans.len(), 1, "the background sleep outlived its parent: {tasks}");
    let out = h.minipod(&["delete", &id]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Killed: gone, or a zombie waiting for the host's init to reap it.
    let state = std::fs::read_to_string(format!("/proc/{}/stat", orphans[0])).unwrap_or_default();
    assert!(state.is_empty() || state.contains(") Z "), "the leftover was killed: {state}");
    assert!(cgroup_dirs(&id).iter().all(|d| !d.exists()));
}

#[test]
fn the_same_id_under_two_roots_cannot_share_a_cgroup() {
    need_root();
    let first = Harness::new("root-a");
    let second = Harness::new("root-b");
    let b = first.bundle(&["sleep", "300"]);
    let id = first.create(&b, "shared-id");
    let out = second.minipod(&["create", "--bundle", b.dir.to_str().unwrap(), &id]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!second.state_dir(&id).exists());
    assert_eq!(first.state(&id)["status"], "created", "the first container is untouched");
    assert!(first.minipod(&["delete", &id]).status.success());
}

#[test]
fn settings_the_host_cannot_honour_are_refused_by_name_and_seccomp_is_applied() {
    need_root();
    let h = Harness::new("unhonoured");
    let refused = |name: &str, key: &str, value: serde_json::Value, needle: &str| {
        let mut b = h.bundle(&["true"]);
        b.config["linux"]["resources"] = json!({ key: value });
        let (code, _, err) = h.run(&b, name);
        assert_ne!(code, 0, "{name} ran");
        assert!(err.contains(needle), "{name}: {err}");
    };
    refused("netcls", "network", json!({"classID": 1048577}), "linux.resources.network");
    refused("blkdev", "blockIO", json!({"weightDevice": [{"major": 8, "minor": 0, "weight": 100}]}), "blockIO");
    refused("kmem", "memory", json!({"kernel": 1048576}), "kernel memory");
    if !std::path::Path::new("/sys/fs/cgroup/hugetlb").exists() && !minipod_runtime::cgroups::is_unified() {
        refused("huge", "hugepageLimits", json!([{"pageSize": "2MB", "limit": 2097152}]), "hugetlb");
    }

    // cpuset applies: the container may use CPU 0 only.
    let mut b = h.bundle(&["sh", "-c", "grep Cpus_allowed_list /proc/self/status"]);
    b.config["linux"]["resources"] = json!({"cpu": {"cpus": "0"}});
    let (code, out, err) = h.run(&b, "cpuset");
    assert_eq!(code, 0, "{err}");
    assert!(out.trim().ends_with("\t0"), "{out}");

    // A seccomp filter from the bundle: mkdir fails, the rest works.
    let mut b = h.bundle(&["sh", "-c", "touch /tmp/f && mkdir /tmp/d; echo $?"]);
    b.config["linux"]["seccomp"] = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
    });
    let (code, out, err) = h.run(&b, "seccomp");
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "1", "mkdir must fail under the filter: {out} {err}");
}

#[test]
fn oci_hooks_run_in_order_with_the_state_and_a_failing_one_leaves_nothing() {
    need_root();
    let h = Harness::new("hooks");
    let log = h.base.join("hooks.log");
    let log_s = log.to_str().unwrap().to_string();
    // Each runtime-side hook appends its name, its mount namespace and the state it read.
    let logging = |name: &str| {
        json!({"path": "/bin/sh", "args": ["sh", "-c",
            format!("printf '%s %s ' {name} $(readlink /proc/self/ns/mnt) >> {log_s}; cat >> {log_s}; echo >> {log_s}")]})
    };
    let mut b = h.bundle(&["sh", "-c", "cat /start-state; echo; readlink /proc/self/ns/mnt"]);
    b.config["root"]["readonly"] = json!(false);
    b.config["hooks"] = json!({
        "prestart": [logging("prestart")],
        "createRuntime": [logging("createRuntime")],
        "createContainer": [logging("createContainer")],
        // Resolved and run in the container, after pivot_root: it writes into its root.
        "startContainer": [{"path": "/bin/sh", "args": ["sh", "-c", "cat > /start-state"]}],
        "poststart": [logging("poststart"), {"path": "/bin/false"}],
        "poststop": [{"path": "/bin/false"}, logging("poststop")],
    });
    let (code, out, err) = h.run(&b, "all");
    assert_eq!(code, 0, "a failing poststart or poststop hook is a warning only: {err}");
    let (start_state, container_mnt) = out.trim().split_once('\n').unwrap();
    let start_state: serde_json::Value = serde_json::from_str(start_state).unwrap();
    assert_eq!(start_state["status"], "created", "{start_state}");
    let host_mnt = std::fs::read_link("/proc/self/ns/mnt").unwrap().display().to_string();

    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<(&str, &str, serde_json::Value)> = text
        .lines()
        .map(|l| {
            let mut parts = l.splitn(3, ' ');
            let (name, mnt) = (parts.next().unwrap(), parts.next().unwrap());
            (name, mnt, serde_json::from_str(parts.next().unwrap()).unwrap())
        })
        .collect();
    let names: Vec<&str> = lines.iter().map(|l| l.0).collect();
    assert_eq!(names, ["prestart", "createRuntime", "createContainer", "poststart", "poststop"], "{text}");
    let pid = lines[0].2["pid"].as_i64().unwrap();
    assert!(pid > 1, "{text}");
    for (name, mnt, state) in &lines {
        assert_eq!(state["id"], start_state["id"], "{name}: {state}");
        assert_eq!(state["bundle"], b.dir.to_str().unwrap(), "{name}: {state}");
        let (want_status, want_mnt) = match *name {
            "prestart" | "createRuntime" => ("creating", host_mnt.as_str()),
            "createContainer" => ("creating", container_mnt),
            "poststart" => ("running", host_mnt.as_str()),
            _ => ("stopped", host_mnt.as_str()),
        };
        assert_eq!(state["status"], want_status, "{name}: {state}");
        assert_eq!(*mnt, want_mnt, "{name} ran in the wrong mount namespace");
        if *name != "poststop" {
            assert_eq!(state["pid"].as_i64(), Some(pid), "{name}: {state}");
        }
    }

    // A hook that fails or overruns its timeout before the workload runs fails the
    // container, says which hook and why, and leaves no state or cgroup behind.
    let failing = [
        ("prestart", json!({"path": "/bin/sh", "args": ["sh", "-c", "echo no network for you >&2; exit 3"]}), "no network for you"),
        ("createRuntime", json!({"path": "/bin/sleep", "args": ["sleep", "30"], "timeout": 1}), "timeout of 1 s"),
        ("createContainer", json!({"path": "/nonexistent/hook"}), "could not be started"),
        ("startContainer", json!({"path": "/bin/sh", "args": ["sh", "-c", "exit 4"]}), "exit status: 4"),
    ];
    for (point, hook, needle) in failing {
        let mut b = h.bundle(&["true"]);
        // Once a hook has run, the lifecycle goes on to delete and its poststop hooks.
        let undone = h.base.join(format!("{point}.undone"));
        b.config["hooks"] = json!({ point: [hook], "poststop": [{"path": "/bin/touch", "args": ["touch", undone.display().to_string()]}] });
        let id = h.id(point);
        let out = h.minipod(&["run", "--bundle", b.write().to_str().unwrap(), &id]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{point}: a failing hook must fail the container");
        assert!(err.contains(&format!("{point} hook")) && err.contains(needle), "{point}: {err}");
        assert!(!h.state_dir(&id).exists(), "{point}: state left behind");
        assert!(!cgroup_dirs(&id).iter().any(|d| d.exists()), "{point}: cgroup left behind");
        assert!(undone.exists(), "{point}: poststop did not run");
    }
}

#[test]
fn on_cgroup_v2_the_container_lives_and_is_limited_in_the_unified_hierarchy() {
    need_root();
    let h = Harness::new("cgv2");
    let mnt = h.base.join("cgroup2");
    std::fs::create_dir_all(&mnt).unwrap();
    let mnt_s = mnt.to_str().unwrap().to_string();
    // The node's cgroup2 hierarchy (on a v1 node it holds the controllers no v1
    // hierarchy has bound), mounted in a mount namespace of the test's own: minipod
    // sees a v2 node at MINIPOD_CGROUP_ROOT and the node's mounts do not change.
    // On a v2 node that hierarchy is the node's own, shared with the other tests and
    // the node's services: its delegation is left alone and only our cgroup checked.
    let node_v2 = minipod_runtime::cgroups::is_unified();
    let restore = if node_v2 {
        String::new()
    } else {
        format!(
            "# Put back the delegation minipod turned on, as it was (a cgroup left\n\
             # behind keeps it on and fails the test).\n\
             for c in $(cat {mnt_s}/cgroup.subtree_control); do case \" $before \" in *\" $c \"*) ;; *) echo -$c > {mnt_s}/cgroup.subtree_control || true;; esac; done"
        )
    };
    let in_v2 = |script: &str| -> (String, String) {
        let out = std::process::Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-euc"])
            .arg(format!("mount -t cgroup2 none {mnt_s}\nbefore=$(cat {mnt_s}/cgroup.subtree_control)\n{script}\n{restore}"))
            .env("MINIPOD_CGROUP_ROOT", &mnt)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (controllers, err) = in_v2(&format!("cat {mnt_s}/cgroup.controllers"));
    assert!(err.is_empty(), "{err}");
    let has = |c: &str| controllers.split_whitespace().any(|x| x == c);
    let minipod = support::minipod_bin().display().to_string();
    let root = h.root.display().to_string();
    let run = |b: &support::TestBundle, name: &str| {
        let id = h.id(name);
        let dir = b.write().display().to_string();
        let left = if node_v2 { format!("{mnt_s}/minipod/{id}") } else { format!("{mnt_s}/minipod") };
        in_v2(&format!("rc=0; {minipod} --root {root} run --bundle {dir} {id} || rc=$?; echo rc=$rc; test -e {left} && echo LEFT || true"))
    };

    // The container's /sys/fs/cgroup is its own cgroup2 (not v1 hierarchies), and
    // a limit of a controller the hierarchy has is applied there.
    let (file, value, resources) = if has("memory") {
        ("memory.max", "67108864", json!({"memory": {"limit": 67108864}}))
    } else if has("pids") {
        ("pids.max", "42", json!({"pids": {"limit": 42}}))
    } else if has("hugetlb") && std::path::Path::new("/sys/kernel/mm/hugepages/hugepages-2048kB").exists() {
        ("hugetlb.2MB.max", "4194304", json!({"hugepageLimits": [{"pageSize": "2MB", "limit": 4194304}]}))
    } else {
        ("cgroup.max.depth", "max", json!({}))
    };
    let mut b = h.bundle(&["sh", "-c", &format!("grep ^0:: /proc/self/cgroup; cat /sys/fs/cgroup/{file}")]);
    b.config["linux"]["resources"] = resources;
    let (out, err) = run(&b, "limited");
    assert!(out.contains("rc=0"), "{out} {err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "0::/", "a cgroup namespace rooted at the container's cgroup: {out}");
    assert_eq!(lines[1], value, "{file}: {out}");
    assert!(!out.contains("LEFT"), "the cgroup outlived the container: {out}");

    // A controller this v2 hierarchy lacks is refused by name, leaving nothing.
    if !has("memory") {
        let mut b = h.bundle(&["true"]);
        b.config["linux"]["resources"] = json!({"memory": {"limit": 67108864}});
        let (out, err) = run(&b, "nomem");
        assert!(!out.contains("rc=0") && !out.contains("LEFT"), "{out} {err}");
        assert!(err.contains("memory.max"), "{err}");
    }
}

#[test]
fn a_shared_root_carries_a_containers_mounts_to_the_node_and_nothing_else() {
    need_root();
    let h = Harness::new("rshared");
    let vol = h.base.join("vol");
    let _guard = support::NodeMount::shared(&vol);

    let mut b = h.bundle(&["sh", "-c", "mkdir -p /vol/made && mount -t tmpfs made /vol/made && echo from-the-container > /vol/made/f"]);
    b.config["linux"]["rootfsPropagation"] = json!("rshared");
    b.config["mounts"].as_array_mut().unwrap().push(json!({
        "destination": "/vol", "type": "bind", "source": vol.display().to_string(), "options": ["rbind", "rshared", "rw"]
    }));
    for set in ["bounding", "effective", "permitted"] {
        b.config["process"]["capabilities"][set].as_array_mut().unwrap().push(json!("CAP_SYS_ADMIN"));
    }
    let (code, _, err) = h.run(&b, "both");
    assert_eq!(code, 0, "{err}");
    // The container's mount reached the node through the shared volume...
    assert_eq!(std::fs::read_to_string(vol.join("made/f")).unwrap().trim(), "from-the-container");
    // ...and its rootfs, /proc, /dev and the rest did not.
    let rootfs = b.dir.join("rootfs");
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!table.contains(rootfs.to_str().unwrap()), "the container's own mounts reached the node:\n{table}");

    // A shared bind from the mount that holds the rootfs would silently stay private.
    let plain = h.base.join("plain");
    std::fs::create_dir_all(&plain).unwrap();
    b.config["mounts"].as_array_mut().unwrap().last_mut().unwrap()["source"] = json!(plain.display().to_string());
    let (code, _, err) = h.run(&b, "same");
    assert_ne!(code, 0);
    assert!(err.contains("holds the container's rootfs"), "{err}");
}
