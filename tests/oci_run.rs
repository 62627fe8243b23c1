//! `minipod run` of busybox bundles: what the workload sees inside its container.

mod support;

use serde_json::json;
use support::{need_root, Harness};

#[test]
fn exit_codes_propagate_from_the_workload() {
    need_root();
    let h = Harness::new("exit");
    let b = h.bundle(&["sh", "-c", "exit 0"]);
    assert_eq!(h.run(&b, "ok").0, 0);
    let b = h.bundle(&["sh", "-c", "exit 3"]);
    assert_eq!(h.run(&b, "three").0, 3);
}

#[test]
fn run_exits_137_when_the_workload_is_killed() {
    need_root();
    let h = Harness::new("kill137");
    let b = h.bundle(&["sleep", "300"]);
    let id = h.id("victim");
    let dir = b.write().to_str().unwrap().to_string();
    let mut run = h.cmd(&["run", "--bundle", &dir, &id]).stdout(std::process::Stdio::null()).spawn().unwrap();
    // Wait until the container is running, then kill it from outside.
    h.wait_for_status(&id, "running");
    assert!(h.minipod(&["kill", &id, "KILL"]).status.success());
    assert_eq!(run.wait().unwrap().code(), Some(137));
    assert!(!h.state_dir(&id).exists(), "run removes the container after it exits");
}

#[test]
fn workload_is_pid_1_with_the_spec_hostname() {
    need_root();
    let h = Harness::new("pid1");
    let mut b = h.bundle(&["sh", "-c", "echo pid=$$ host=$(hostname)"]);
    b.config["hostname"] = json!("box-under-test");
    let (code, out, err) = h.run(&b, "pid1");
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "pid=1 host=box-under-test");
}

#[test]
fn read_only_rootfs_refuses_writes_and_writable_one_accepts_them() {
    need_root();
    let h = Harness::new("ro");
    let b = h.bundle(&["touch", "/newfile"]);
    let (code, _, err) = h.run(&b, "ro");
    assert_ne!(code, 0);
    assert!(err.contains("Read-only file system"), "{err}");
    let mut b = h.bundle(&["touch", "/newfile"]);
    b.config["root"]["readonly"] = json!(false);
    let (code, _, err) = h.run(&b, "rw");
    assert_eq!(code, 0, "{err}");
    assert!(b.dir.join("rootfs/newfile").exists());
}

#[test]
fn user_1000_sees_uid_1000_and_its_groups() {
    need_root();
    let h = Harness::new("user");
    let mut b = h.bundle(&["sh", "-c", "echo $(id -u) $(id -g) $(id -G)"]);
    b.config["process"]["user"] = json!({"uid": 1000, "gid": 1000, "additionalGids": [1000, 5]});
    let (code, out, err) = h.run(&b, "user");
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "1000 1000 1000 5");
}

fn cap_line(status: &str, name: &str) -> u64 {
    let line = status.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{name} missing in {status}"));
    u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
}

#[test]
fn dropped_capabilities_show_in_proc_status() {
    need_root();
    let h = Harness::new("caps");
    let mut b = h.bundle(&["cat", "/proc/self/status"]);
    let only_kill = json!(["CAP_KILL"]);
    b.config["process"]["capabilities"] = json!({"bounding": only_kill, "effective": only_kill, "permitted": only_kill});
    let (code, out, err) = h.run(&b, "caps");
    assert_eq!(code, 0, "{err}");
    let kill = 1u64 << 5; // CAP_KILL
    assert_eq!(cap_line(&out, "CapEff:"), kill);
    assert_eq!(cap_line(&out, "CapPrm:"), kill);
    assert_eq!(cap_line(&out, "CapBnd:"), kill);
    assert_eq!(cap_line(&out, "CapInh:"), 0);
    assert_eq!(cap_line(&out, "NoNewPrivs:"), 1, "the default spec sets noNewPrivileges");
}

#[test]
fn memory_limit_oom_kills_an_allocation_beyond_it() {
    need_root();
    let h = Harness::new("oom");
    // dd fills a 64 MiB buffer from /dev/zero, touching every page.
    let mut b = h.bundle(&["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"]);
    let (code, _, err) = h.run(&b, "free");
    assert_eq!(code, 0, "without a limit dd succeeds: {err}");
    b.config["linux"]["resources"]["memory"] = json!({"limit": 16 * 1024 * 1024});
    let (code, _, _) = h.run(&b, "limited");
    assert_eq!(code, 137, "the OOM killer sends SIGKILL");
}

#[test]
fn pids_limit_stops_forks_beyond_it() {
    need_root();
    let h = Harness::new("pids");
    // The shell is one process: with a limit of 4, at most 3 sleeps can start.
    let mut b = h.bundle(&["sh", "-c", "for i in 1 2 3 4 5 6; do sleep 30 & done; echo done"]);
    let (code, out, err) = h.run(&b, "unlimited");
    assert_eq!((code, out.trim()), (0, "done"), "{err}");
    b.config["linux"]["resources"]["pids"] = json!({"limit": 4});
    let (code, out, err) = h.run(&b, "limited");
    assert_ne!(code, 0);
    assert!(out.is_empty() && err.contains("can't fork: Resource temporarily unavailable"), "out={out} err={err}");
}

#[test]
fn masked_and_read_only_proc_paths_protect_the_host() {
    need_root();
    let h = Harness::new("mask");
    let b = h.bundle(&[
        "sh",
        "-c",
        "wc -c < /proc/keys; ls /proc/acpi 2>/dev/null | wc -l; echo 1 > /proc/sys/kernel/ns_last_pid && echo writable || echo refused",
    ]);
    let (code, out, err) = h.run(&b, "mask");
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    assert_eq!(lines, ["0", "0", "refused"], "keys masked, acpi empty, /proc/sys read-only; stderr: {err}");
}

#[test]
fn rlimits_sysctls_and_mounts_from_the_spec_apply() {
    need_root();
    let h = Harness::new("spec");
    let shared = h.base.join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::write(shared.join("hello"), "from the host").unwrap();
    let mut b = h.bundle(&["sh", "-c", "ulimit -n; cat /proc/sys/net/ipv4/ip_forward; cat /data/hello; echo; touch /data/x 2>&1 | grep -c Read-only; mount | grep ' /scratch ' | grep -c noexec"]);
    b.config["process"]["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "soft": 321, "hard": 321}]);
    b.config["linux"]["sysctl"] = json!({"net.ipv4.ip_forward": "1"});
    let mounts = b.config["mounts"].as_array_mut().unwrap();
    mounts.push(json!({"destination": "/data", "type": "bind", "source": shared, "options": ["rbind", "ro"]}));
    mounts.push(json!({"destination": "/scratch", "type": "tmpfs", "source": "tmpfs", "options": ["noexec", "size=1m"]}));
    let (code, out, err) = h.run(&b, "spec");
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    assert_eq!(lines, ["321", "1", "from the host", "1", "1"], "stderr: {err}");
    assert!(!shared.join("x").exists());
}

#[test]
fn a_hard_rlimit_above_the_host_limit_degrades_with_a_warning() {
    need_root();
    let h = Harness::new("rlimit");
    let mut b = h.bundle(&["sh", "-c", "ulimit -Hn"]);
    let mut cur = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: valid pointer.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut cur) };
    let above = cur.rlim_max + 1;
    b.config["process"]["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "soft": 1024, "hard": above}]);
    let (code, out, err) = h.run(&b, "rlimit");
    assert_eq!(code, 0, "{err}");
    let hard: u64 = out.trim().parse().unwrap();
    // Root with CAP_SYS_RESOURCE gets the raise; without it (these machines) a warning.
    assert!(hard == above || (hard == cur.rlim_max && err.contains("warning") && err.contains("RlimitNofile")), "hard={hard} stderr={err}");
}

#[test]
fn a_container_joins_another_containers_network_namespace_by_path() {
    need_root();
    let h = Harness::new("join");
    let first = h.create(&h.bundle(&["sleep", "300"]), "owner");
    let pid = h.state(&first)["pid"].as_i64().unwrap();
    let mut b = h.bundle(&["readlink", "/proc/self/ns/net"]);
    for ns in b.config["linux"]["namespaces"].as_array_mut().unwrap() {
        if ns["type"] == "network" {
            ns["path"] = json!(format!("/proc/{pid}/ns/net"));
        }
    }
    let (code, out, err) = h.run(&b, "joiner");
    assert_eq!(code, 0, "{err}");
    let owners = std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
    assert_eq!(out.trim(), owners.to_str().unwrap());
    assert!(h.minipod(&["delete", "--force", &first]).status.success());
}

#[test]
fn eight_containers_run_concurrently_without_colliding() {
    need_root();
    let h = Harness::new("parallel");
    let b = h.bundle(&["sh", "-c", "echo $(hostname)"]);
    let dir = b.write();
    std::thread::scope(|s| {
        let runs: Vec<_> = (0..8).map(|_| s.spawn(|| h.run_dir(dir, "par"))).collect();
        for r in runs {
            let (code, out, err) = r.join().unwrap();
            assert_eq!((code, out.trim()), (0, "minipod"), "{err}");
        }
    });
}

#[test]
fn run_forwards_its_signals_to_the_workload() {
    need_root();
    let h = Harness::new("forward");
    // Each signal run forwards (but INT) is noted as it is caught; INT ends the workload.
    let caught = ["HUP", "QUIT", "TERM", "USR1", "USR2"];
    let script = format!(
        "for s in {}; do trap \"echo $s >> /dev/shm/caught\" $s; done; trap 'exit 9' INT; touch /dev/shm/trapped; while true; do sleep 0.05; done",
        caught.join(" ")
    );
    let b = h.bundle(&["sh", "-c", &script]);
    let id = h.id("fwd");
    let dir = b.write().to_str().unwrap().to_string();
    let mut run = h.cmd(&["run", "--bundle", &dir, &id]).stdout(std::process::Stdio::null()).spawn().unwrap();
    h.wait_for_status(&id, "running");
    h.wait_for_file_in(&id, "/dev/shm/trapped");
    let pid = h.state(&id)["pid"].as_i64().expect("a running container has a pid");
    let notes = format!("/proc/{pid}/root/dev/shm/caught");
    for (n, (name, sig)) in caught.iter().zip([libc::SIGHUP, libc::SIGQUIT, libc::SIGTERM, libc::SIGUSR1, libc::SIGUSR2]).enumerate() {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(run.id() as i32, sig) };
        let want = caught[..=n].join("\n") + "\n";
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::fs::read_to_string(&notes).unwrap_or_default() != want {
            assert!(std::time::Instant::now() < deadline, "SIG{name} never reached the workload: {:?}", std::fs::read_to_string(&notes));
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(run.id() as i32, libc::SIGINT) };
    assert_eq!(run.wait().unwrap().code(), Some(9), "Ctrl-C on run reaches the container");
    assert!(!h.state_dir(&id).exists());
}

#[test]
fn a_bundle_with_a_terminal_runs_on_one_of_its_own_in_the_foreground_or_hands_it_to_a_console_socket() {
    use std::io::Read;
    use std::os::fd::{FromRawFd, OwnedFd};
    need_root();
    let h = Harness::new("terminal");
    let mut b = h.bundle(&["sh", "-c", "tty; stty size; read l; echo got-$l; exit 4"]);
    b.config["process"]["terminal"] = json!(true);
    let dir = b.write().display().to_string();

    // In the foreground: joined to ours, sized as ours, typed into, its exit code ours.
    let id = h.id("fg");
    let line = format!(
        "stty cols 77 rows 22; {} --root {} run --bundle {dir} {id}; echo run-exited-$?",
        support::minipod_bin().display(),
        h.root.display()
    );
    let (text, err) = support::on_a_terminal(&line, b"hello\n");
    assert!(text.contains("/dev/pts/0"), "the container's own devpts: {text:?} {err}");
    assert!(text.contains("22 77"), "{text:?}");
    assert!(text.contains("got-hello"), "{text:?}");
    assert!(text.contains("run-exited-4"), "{text:?}");

    // A resize of our window while it runs reaches the container's terminal.
    let mut b = h.bundle(&["sh", "-c", support::terminal::SIZE_PER_LINE]);
    b.config["process"]["terminal"] = json!(true);
    let resizing = b.write().display().to_string();
    let id = h.id("winch");
    let mut run = h.cmd(&["run", "--bundle", &resizing, &id]);
    support::terminal::check_resizes_reach(&mut support::terminal::Terminal::spawn(&mut run, 77, 22));

    // Detached, the terminal needs somewhere to go: refused, and nothing is left.
    let id = h.id("nosock");
    let out = h.minipod(&["create", "--bundle", &dir, &id]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--console-socket"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!h.state_dir(&id).exists(), "a refused create leaves no container");

    // With a console socket, its listener receives the master, as from runc.
    let sock = h.base.join("console.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let id = h.id("console");
    let created = h.cmd(&["create", "--bundle", &dir, "--console-socket", sock.to_str().unwrap(), &id]).output().unwrap();
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    let (conn, _) = listener.accept().unwrap();
    let mut name = [0u8; 64];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let mut iov = [std::io::IoSliceMut::new(&mut name)];
    let msg = nix::sys::socket::recvmsg::<()>(
        std::os::fd::AsRawFd::as_raw_fd(&conn),
        &mut iov,
        Some(&mut space),
        nix::sys::socket::MsgFlags::empty(),
    )
    .unwrap();
    let fd = msg
        .cmsgs()
        .unwrap()
        .find_map(|c| match c {
            nix::sys::socket::ControlMessageOwned::ScmRights(fds) => fds.first().copied(),
            _ => None,
        })
        .expect("the terminal's master came with the message");
    // SAFETY: the descriptor just arrived and is ours alone.
    let master = unsafe { OwnedFd::from_raw_fd(fd) };
    assert!(h.minipod(&["start", &id]).status.success());
    nix::unistd::write(&master, b"typed\n").unwrap();
    let mut seen = String::new();
    let mut master = std::fs::File::from(master);
    let mut buf = [0u8; 1024];
    // Until the process is done with its terminal (EIO once it exited).
    while let Ok(n @ 1..) = master.read(&mut buf) {
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(seen.contains("/dev/pts/0") && seen.contains("got-typed"), "{seen:?}");
    h.wait_for_status(&id, "stopped");
    assert_eq!(h.state(&id)["exitCode"], 4);
    assert!(h.minipod(&["delete", &id]).status.success());
}
