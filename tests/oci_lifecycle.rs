//! The runc lifecycle through the CLI: create, state, start, exec, kill, delete, list,
//! and that every step leaves the host as it found it.

mod support;

use std::process::Stdio;

use support::{cgroup_dirs, host_mounts_mention, need_root, Harness};

fn status_of(h: &Harness, id: &str) -> String {
    h.state(id)["status"].as_str().unwrap().to_string()
}

#[test]
fn full_cycle_create_start_kill_delete() {
    need_root();
    let h = Harness::new("cycle");
    let b = h.bundle(&["sleep", "300"]);
    let pid_file = h.base.join("pid");
    let id = h.id("cycle");
    let log = std::fs::File::create(h.base.join("create.err")).unwrap();
    let created = h
        .cmd(&["create", "--bundle", b.dir.to_str().unwrap(), "--pid-file", pid_file.to_str().unwrap(), &id])
        .stdout(Stdio::null())
        .stderr(log)
        .status()
        .unwrap();
    assert!(created.success());

    let st = h.state(&id);
    assert_eq!(st["status"], "created");
    assert_eq!(st["id"], id.as_str());
    assert_eq!(st["bundle"], b.dir.to_str().unwrap());
    let pid = st["pid"].as_i64().unwrap();
    assert_eq!(std::fs::read_to_string(&pid_file).unwrap(), pid.to_string());
    // Blocked before exec: the process is still the minipod helper, not sleep.
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
    assert_ne!(comm.trim(), "sleep");
    assert!(cgroup_dirs(&id).iter().all(|d| d.exists()), "cgroups exist while the container does");

    assert!(h.minipod(&["start", &id]).status.success());
    assert_eq!(status_of(&h, &id), "running");
    assert_eq!(std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap().trim(), "sleep");
    let again = h.minipod(&["start", &id]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("it is running: only a created container can be started"));

    let list = String::from_utf8(h.minipod(&["list"]).stdout).unwrap();
    assert!(list.lines().any(|l| l.starts_with(&id) && l.contains("running")), "{list}");
    let json: serde_json::Value = serde_json::from_slice(&h.minipod(&["list", "--format", "json"]).stdout).unwrap();
    assert_eq!(json[0]["id"], id.as_str());

    assert!(h.minipod(&["kill", &id, "SIGKILL"]).status.success());
    h.wait_for_status(&id, "stopped");
    assert_eq!(h.state(&id)["exitCode"], 137);
    assert!(h.state(&id).get("pid").is_none(), "a stopped container reports no pid");

    assert!(h.minipod(&["delete", &id]).status.success());
    assert!(!h.state_dir(&id).exists());
    assert!(cgroup_dirs(&id).iter().all(|d| !d.exists()), "delete removes the cgroups");
    assert!(!host_mounts_mention(&h.base));
}

#[test]
fn term_is_the_default_signal_and_numbers_work() {
    need_root();
    let h = Harness::new("term");
    // PID 1 ignores signals it has no handler for, so trap TERM explicitly, and say
    // when the trap is in place.
    let b = h.bundle(&["sh", "-c", "trap 'exit 42' TERM; touch /dev/shm/trapped; while true; do sleep 0.05; done"]);
    let id = h.create(&b, "term");
    assert!(h.minipod(&["start", &id]).status.success());
    h.wait_for_file_in(&id, "/dev/shm/trapped");
    assert!(h.minipod(&["kill", &id]).status.success());
    h.wait_for_status(&id, "stopped");
    assert_eq!(h.state(&id)["exitCode"], 42);
    assert!(h.minipod(&["delete", &id]).status.success());

    let id = h.create(&h.bundle(&["sleep", "300"]), "num");
    assert!(h.minipod(&["start", &id]).status.success());
    assert!(h.minipod(&["kill", "--all", &id, "9"]).status.success());
    h.wait_for_status(&id, "stopped");
    assert_eq!(h.state(&id)["exitCode"], 137);
    assert!(h.minipod(&["delete", &id]).status.success());
}

#[test]
fn exec_joins_the_running_container() {
    need_root();
    let h = Harness::new("exec");
    let b = h.bundle(&["sleep", "300"]);
    let id = h.create(&b, "exec");
    assert!(h.minipod(&["start", &id]).status.success());
    let out = h.minipod(&["exec", "--env", "GREETING=hi", &id, "--", "sh", "-c", "echo $GREETING $(hostname) $(cat /proc/1/comm); exit 7"]);
    assert_eq!(out.status.code(), Some(7), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "hi minipod sleep");
    let uid = h.minipod(&["exec", "--user", "1000:1000", &id, "--", "id", "-u"]);
    assert_eq!(String::from_utf8_lossy(&uid.stdout).trim(), "1000");
    let missing = h.minipod(&["exec", &id, "--", "no-such-command"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("not found"), "{}", String::from_utf8_lossy(&missing.stderr));

    assert!(h.minipod(&["kill", &id, "KILL"]).status.success());
    h.wait_for_status(&id, "stopped");
    let stopped = h.minipod(&["exec", &id, "--", "true"]);
    assert!(!stopped.status.success());
    assert!(String::from_utf8_lossy(&stopped.stderr).contains("it is stopped"), "{}", String::from_utf8_lossy(&stopped.stderr));
    assert!(h.minipod(&["delete", &id]).status.success());
}

#[test]
fn delete_of_a_created_container_needs_no_force_and_kills_it() {
    need_root();
    let h = Harness::new("delcreated");
    let id = h.create(&h.bundle(&["sleep", "300"]), "created");
    let pid = h.state(&id)["pid"].as_i64().unwrap();
    assert!(h.minipod(&["delete", &id]).status.success());
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    assert!(!h.state_dir(&id).exists());
}

#[test]
fn cpu_memory_and_pids_limits_land_in_the_cgroup_and_go_with_delete() {
    need_root();
    if support::skip_on_cgroup_v2("cpu_memory_and_pids_limits_land_in_the_cgroup_and_go_with_delete", "it reads cgroup v1 files") {
        return;
    }
    let h = Harness::new("limits");
    let mut b = h.bundle(&["sleep", "300"]);
    b.config["linux"]["resources"] = serde_json::json!({
        "cpu": {"shares": 512, "quota": 50000, "period": 100000},
        "memory": {"limit": 64 * 1024 * 1024},
        "pids": {"limit": 42},
        "devices": [{"allow": false, "access": "rwm"}]
    });
    let id = h.create(&b, "limits");
    let read =
        |ctrl: &str, file: &str| std::fs::read_to_string(format!("/sys/fs/cgroup/{ctrl}/minipod/{id}/{file}")).unwrap().trim().to_string();
    assert_eq!(read("cpu", "cpu.shares"), "512");
    assert_eq!(read("cpu", "cpu.cfs_quota_us"), "50000");
    assert_eq!(read("cpu", "cpu.cfs_period_us"), "100000");
    assert_eq!(read("memory", "memory.limit_in_bytes"), (64 * 1024 * 1024).to_string());
    assert_eq!(read("pids", "pids.max"), "42");
    let devices = read("devices", "devices.list");
    assert!(devices.contains("c 1:3 rwm") && !devices.contains("a *:* rwm"), "deny-all plus the default devices: {devices}");
    let pid = h.state(&id)["pid"].as_i64().unwrap();
    let tasks = read("memory", "tasks");
    assert!(tasks.lines().any(|t| t == pid.to_string()), "the workload is in its cgroup: {tasks}");
    assert!(h.minipod(&["delete", &id]).status.success());
    assert!(cgroup_dirs(&id).iter().all(|d| !d.exists()));
}

#[test]
fn a_long_id_under_a_deep_root_still_has_its_monitor_socket() {
    need_root();
    // The monitor's socket path is longer than a sockaddr_un can hold (108 bytes), as
    // a CRI container id under a kubelet-style root easily is.
    let h = Harness::new("long-id-under-a-root-deep-enough-to-overflow-sun-path");
    let id = h.id(&"x".repeat(100));
    assert!(h.state_dir(&id).join("monitor.sock").as_os_str().len() > 108);
    let b = h.bundle(&["sleep", "300"]);
    let created = h.cmd(&["create", "--bundle", b.dir.to_str().unwrap(), &id]).stdout(Stdio::null()).stderr(Stdio::null()).status();
    assert!(created.unwrap().success());
    assert!(h.minipod(&["start", &id]).status.success());
    assert_eq!(status_of(&h, &id), "running");
    assert!(h.minipod(&["kill", &id, "SIGKILL"]).status.success());
    h.wait_for_status(&id, "stopped");
    assert!(h.minipod(&["delete", &id]).status.success());
    assert!(!h.state_dir(&id).exists());
}
