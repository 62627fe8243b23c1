//! Pods through the embedding API: namespaces shared by a pod's containers, pods
//! reaching each other by name, published ports, logs and exit codes, readiness waits,
//! errors, and cleanup on drop, on panic and after SIGKILL.

mod support;

use std::time::{Duration, Instant};

use minipod_runtime::embed::{Minipod, Ready};
use minipod_runtime::{ExitStatus, PodError};
use support::need_root;
use support::pods::PodEnv;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SERVE: &str = "mkdir -p /www && echo hello from $(hostname) > /www/index.html && exec httpd -f -p 80 -h /www";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pods_on_one_network_reach_each_other_by_name() {
    need_root();
    let env = PodEnv::new("pods-byname");
    let rt = env.open().await;
    let web = rt.pod("web").start().await.unwrap();
    web.container("httpd").rootfs(&env.rootfs).cmd(["sh", "-c", SERVE]).wait_for(Ready::port(80)).start().await.unwrap();
    let client = rt.pod("client").start().await.unwrap();
    let c = client.container("curl").rootfs(&env.rootfs).cmd(["sleep", "300"]).start().await.unwrap();
    assert_ne!(web.ip(), client.ip());
    let out = c.exec(["wget", "-qO-", "http://web/"]).await.unwrap();
    assert!(out.success(), "{out:?}");
    assert_eq!(out.stdout_text(), "hello from web\n");
    // By IP too, and the pod's own name resolves from inside itself.
    let out = c.exec(["wget", "-qO-", &format!("http://{}/", web.ip())]).await.unwrap();
    assert_eq!(out.stdout_text(), "hello from web\n");
    // Absolute: busybox's nslookup applet, unlike the C library's resolver, does not
    // try a bare name after the cluster search path.
    let me = c.exec(["nslookup", "client."]).await.unwrap();
    assert!(me.stdout_text().contains(&client.ip().to_string()), "{me:?}");
    drop((web, client));
    rt.shutdown().await.unwrap();
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_published_port_answers_the_test_process() {
    need_root();
    let env = PodEnv::new("pods-publish");
    let rt = env.open().await;
    let pod = rt.pod("api").publish(18080, 80).start().await.unwrap();
    pod.container("httpd").rootfs(&env.rootfs).cmd(["sh", "-c", SERVE]).wait_for(Ready::http(80, "/")).start().await.unwrap();
    let mut conn = rt.connect("127.0.0.1:18080".parse().unwrap()).await.unwrap();
    conn.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.") && answer.contains(" 200 "), "{answer}");
    assert!(answer.ends_with("hello from api\n"), "{answer}");
    // The pod IP directly, from the node.
    let (code, body) = pod.http_get(80, "/").await.unwrap();
    assert_eq!((code, body.as_str()), (200, "hello from api\n"));
    drop(pod);
    rt.shutdown().await.unwrap();
    env.assert_clean();
}

#[tokio::test(flavor = "current_thread")]
async fn containers_of_a_pod_share_ip_hostname_and_localhost() {
    need_root();
    let env = PodEnv::new("pods-share");
    let rt = env.open().await;
    let pod = rt.pod("duo").hostname("duo-host").start().await.unwrap();
    let server = pod
        .container("server")
        .rootfs(&env.rootfs)
        .cmd(["sh", "-c", "mkdir /www && echo local > /www/index.html && exec httpd -f -p 127.0.0.1:8080 -h /www"])
        .wait_for(Ready::port(8080))
        .start()
        .await
        .unwrap();
    let side = pod.container("sidecar").rootfs(&env.rootfs).cmd(["sleep", "300"]).start().await.unwrap();
    // Monitors live in the host's mount namespace, not in the lean copy containers are
    // made from (which would keep every host mount of its moment busy).
    let monitor = side.state().await.unwrap().monitor_pid;
    let ns = |pid: String| std::fs::read_link(format!("/proc/{pid}/ns/mnt")).unwrap();
    assert_eq!(ns(monitor.to_string()), ns("self".into()));
    let out = side.exec(["wget", "-qO-", "http://127.0.0.1:8080/"]).await.unwrap();
    assert_eq!(out.stdout_text(), "local\n", "{out:?}");
    let ip_of = |o: minipod_runtime::pod::ExecOutput| o.stdout_text();
    let a = ip_of(server.exec(["sh", "-c", "ip -4 -o addr show eth0 | awk '{print $4}'; hostname"]).await.unwrap());
    let b = ip_of(side.exec(["sh", "-c", "ip -4 -o addr show eth0 | awk '{print $4}'; hostname"]).await.unwrap());
    assert_eq!(a, b);
    assert_eq!(a, format!("{}/24\nduo-host\n", pod.ip()));
    // Each container has its own filesystem and PID namespace.
    side.exec(["touch", "/only-here"]).await.unwrap();
    assert!(!server.exec(["test", "-e", "/only-here"]).await.unwrap().success());
    assert_eq!(side.exec(["cat", "/proc/1/comm"]).await.unwrap().stdout_text(), "sleep\n");
    // The pod's /etc files.
    let hosts = side.exec(["cat", "/etc/hosts"]).await.unwrap().stdout_text();
    assert!(hosts.contains(&format!("{}\tduo-host", pod.ip())), "{hosts}");
    let resolv = side.exec(["cat", "/etc/resolv.conf"]).await.unwrap().stdout_text();
    assert!(resolv.starts_with("nameserver 10.89."), "{resolv}");
    drop(pod);
    rt.shutdown().await.unwrap();
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_logs_and_sigkill() {
    need_root();
    let env = PodEnv::new("pods-exit");
    let rt = env.open().await;
    let pod = rt.pod("jobs").start().await.unwrap();
    let job = pod
        .container("job")
        .rootfs(&env.rootfs)
        .cmd(["sh", "-c", "echo out-line; echo err-line >&2; printf no-newline; exit 3"])
        .start()
        .await
        .unwrap();
    assert_eq!(job.wait().await.unwrap(), ExitStatus::Code(3));
    let logs = job.logs().await.unwrap();
    let texts: Vec<(&str, minipod_runtime::logs::Stream)> = logs.iter().map(|l| (l.text.as_str(), l.stream)).collect();
    use minipod_runtime::logs::Stream::{Stderr, Stdout};
    assert!(
        texts.contains(&("out-line", Stdout)) && texts.contains(&("err-line", Stderr)) && texts.contains(&("no-newline", Stdout)),
        "{logs:?}"
    );
    // The raw file is in the CRI format.
    let raw = std::fs::read_to_string(&job.record().log_path).unwrap();
    assert!(raw.lines().all(|l| l.split(' ').nth(1).is_some_and(|s| s == "stdout" || s == "stderr")), "{raw}");
    let sleeper = pod.container("sleeper").rootfs(&env.rootfs).cmd(["sleep", "300"]).start().await.unwrap();
    // A timed-out exec is killed with everything it started.
    let t = Instant::now();
    let err = sleeper.exec_timeout(["sh", "-c", "sleep 77 & sleep 78"], Duration::from_millis(500)).await.unwrap_err();
    assert!(err.to_string().contains("longer than 0.5 s"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(5));
    let ps = sleeper.exec(["ps", "-o", "args"]).await.unwrap().stdout_text();
    assert!(!ps.contains("sleep 77") && !ps.contains("sleep 78"), "{ps}");
    sleeper.kill(minipod_runtime::Signal::from_number(9).unwrap()).await.unwrap();
    assert_eq!(sleeper.wait().await.unwrap(), ExitStatus::Signal(9));
    assert_eq!(sleeper.wait().await.unwrap().shell_code(), 137);
    let err = sleeper.exec(["true"]).await.unwrap_err();
    assert!(err.to_string().contains("stopped"), "{err}");
    drop(pod);
    rt.shutdown().await.unwrap();
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exits_and_logs_are_read_back_by_a_later_process() {
    need_root();
    let env = PodEnv::new("pods-later");
    let node = support::node::TestNode::new("later");
    let ns = node.node_ns();
    let images = env.h.base.join("images");
    let cli = |args: &[&str]| {
        let mut full = vec!["pod", "--images", images.to_str().unwrap()];
        full.extend_from_slice(args);
        let out = env.h.minipod(&full);
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, _, err) = cli(&["run", "--netns", ns.to_str().unwrap(), "batch"]);
    assert_eq!(code, Some(0), "{err}");
    let out = env.h.minipod(&[
        "ctr",
        "run",
        "--images",
        images.to_str().unwrap(),
        "--rootfs",
        env.rootfs.to_str().unwrap(),
        "batch",
        "job",
        "--",
        "sh",
        "-c",
        "echo done; exit 7",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The CLI has exited; a library runtime on the same root sees the container.
    let rt = minipod_runtime::Pods::open(minipod_runtime::PodsOptions {
        root: env.root().to_path_buf(),
        images: images.clone(),
        node_netns: Some(ns.clone()),
        keep_pods: true,
        ..Default::default()
    })
    .unwrap();
    let c = rt.container("batch", "job").unwrap();
    assert_eq!(rt.wait_container(&c).unwrap(), ExitStatus::Code(7));
    assert_eq!(rt.logs(&c).unwrap().iter().map(|l| l.text.as_str()).collect::<Vec<_>>(), vec!["done"]);
    let logs = env.h.minipod(&["ctr", "--images", images.to_str().unwrap(), "logs", "batch", "job"]);
    assert_eq!(String::from_utf8_lossy(&logs.stdout), "done\n");
    let ls = env.h.minipod(&["ctr", "--images", images.to_str().unwrap(), "ls"]);
    let ls = String::from_utf8_lossy(&ls.stdout);
    assert!(ls.contains("job") && ls.contains("stopped") && ls.contains("7"), "{ls}");

    // `ctr exec -i` streams stdin in and output out; `-t` gives a terminal of the
    // container's own, sized as ours (script(1) makes one for the command).
    let img = images.to_str().unwrap();
    let run =
        env.h.minipod(&["ctr", "run", "--images", img, "--rootfs", env.rootfs.to_str().unwrap(), "batch", "sleeper", "--", "sleep", "300"]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let mut cat = env.h.cmd(&["ctr", "--images", img, "exec", "-i", "batch", "sleeper", "--", "sh", "-c", "cat; exit 5"]);
    let mut cat = cat.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).spawn().unwrap();
    std::io::Write::write_all(&mut cat.stdin.take().unwrap(), b"piped\n").unwrap();
    let out = cat.wait_with_output().unwrap();
    assert_eq!((out.status.code(), String::from_utf8_lossy(&out.stdout).as_ref()), (Some(5), "piped\n"));
    let line = format!(
        "stty cols 77 rows 22; {} --root {} ctr --images {img} exec -it batch sleeper -- sh -c 'tty; stty size; exit 4'",
        support::minipod_bin().display(),
        env.root().display()
    );
    let out = std::process::Command::new("script").args(["-qec", &line, "/dev/null"]).stdin(std::process::Stdio::null()).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("/dev/pts/") && text.contains("22 77"), "{text:?} {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(4), "{text:?}");
    // A resize of our window while it runs reaches the process's terminal.
    let mut resized =
        env.h.cmd(&["ctr", "--images", img, "exec", "-it", "batch", "sleeper", "--", "sh", "-c", support::terminal::SIZE_PER_LINE]);
    support::terminal::check_resizes_reach(&mut support::terminal::Terminal::spawn(&mut resized, 77, 22));
    let stop = env.h.minipod(&["ctr", "--images", img, "stop", "--timeout", "0", "batch", "sleeper"]);
    assert!(stop.status.success(), "{}", String::from_utf8_lossy(&stop.stderr));
    drop(rt);
    let (code, _, err) = cli(&["rm", "batch"]);
    assert_eq!(code, Some(0), "{err}");
    let (code, _, err) = cli(&["rm", "batch"]);
    assert_eq!(code, Some(0), "removing twice is fine: {err}");
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_pods_get_distinct_ips_and_reach_each_other_by_name() {
    need_root();
    let env = PodEnv::new("pods-fifty");
    let rt = env.open().await;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..50 {
        let (rt, rootfs) = (rt.clone(), env.rootfs.clone());
        tasks.push(tokio::spawn(async move {
            let pod = rt.pod(&format!("p{i}")).start().await?;
            let c = pod.container("main").rootfs(rootfs).cmd(["sleep", "300"]).start().await?;
            Ok::<_, PodError>((pod, c))
        }));
    }
    let mut pods = Vec::new();
    for t in tasks {
        pods.push(t.await.unwrap().unwrap());
    }
    eprintln!("50 pods with a container each in {:?}", started.elapsed());
    let mut ips: Vec<_> = pods.iter().map(|(p, _)| p.ip()).collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 50);
    // Every pod pings every pod by name, all at once: 2450 pairs. Members are routed
    // and told the gateway's MAC, so this needs no entry in the kernel's neighbour
    // table, which all namespaces share (gc_thresh3, 1024 here): over a bridge it
    // overflowed, and packets were lost.
    let script = (0..50).map(|i| format!("ping -c1 -w10 p{i} >/dev/null || echo p{i}")).collect::<Vec<_>>().join("; ");
    let mut checks = Vec::new();
    for (p, c) in &pods {
        let (c, script, name) = (c.clone(), script.clone(), p.name().to_string());
        checks.push(tokio::spawn(async move { (name, c.exec_timeout(["sh", "-c", &script], Duration::from_secs(120)).await) }));
    }
    for t in checks {
        let (name, out) = t.await.unwrap();
        let out = out.unwrap();
        assert!(out.success() && out.stdout.is_empty(), "{name} could not reach: {}", out.stdout_text());
    }
    drop(pods);
    rt.shutdown().await.unwrap();
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_waits_succeed_late_and_time_out_clearly() {
    need_root();
    let env = PodEnv::new("pods-ready");
    let rt = env.open().await;
    let pod = rt.pod("slow").start().await.unwrap();
    let slow = format!("sleep 1; echo server up; {SERVE}");
    let started = Instant::now();
    let c = pod.container("web").rootfs(&env.rootfs).cmd(["sh", "-c", &slow]).start().await.unwrap();
    c.wait_for(Ready::port(80)).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(900));
    c.wait_for(Ready::log_line("server up")).await.unwrap();
    c.wait_for(Ready::exec(["wget", "-qO-", "http://127.0.0.1/"])).await.unwrap();
    pod.wait_for(Ready::http(80, "/")).await.unwrap();

    let never = rt.pod("never").start().await.unwrap();
    let n = never.container("idle").rootfs(&env.rootfs).cmd(["sleep", "300"]).start().await.unwrap();
    let short = Duration::from_millis(600);
    for (ready, expect) in [
        (Ready::port(81).timeout(short), "TCP port 81 listening"),
        (Ready::log_line("never printed").timeout(short), "a log line containing \"never printed\""),
        (Ready::exec(["false"]).timeout(short), "`false` exiting 0"),
    ] {
        let t = Instant::now();
        let err = n.wait_for(ready).await.unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, PodError::NotReady { .. }) && text.contains(expect), "{text}");
        assert!(t.elapsed() < Duration::from_secs(5), "{text}");
    }
    let err = never.wait_for(Ready::http(80, "/").timeout(short)).await.unwrap_err();
    assert!(err.to_string().contains("HTTP 200 from port 80"), "{err}");
    // A workload that exits is reported at once, not after the timeout.
    let t = Instant::now();
    let err = never.container("quits").rootfs(&env.rootfs).cmd(["true"]).wait_for(Ready::port(80)).start().await.unwrap_err();
    assert!(err.to_string().contains("exited"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(5));
    drop((pod, never));
    rt.shutdown().await.unwrap();
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_errors_and_leave_nothing() {
    need_root();
    let env = PodEnv::new("pods-errors");
    let rt = env.open().await;
    let pod = rt.pod("taken").publish(18081, 80).start().await.unwrap();
    let err = rt.pod("taken").start().await.unwrap_err();
    assert!(matches!(err, PodError::PodExists { .. }), "{err}");
    let err = rt.pod("other").publish(18081, 80).start().await.unwrap_err();
    assert!(err.to_string().contains("18081") && err.to_string().contains("already published"), "{err}");
    // Half-way: its namespace is made and its network attached (a veth on the node, an
    // address) when its second port turns out taken; all of it goes back, and the
    // other port is free for the next pod.
    let node_ns = pod.record().node.netns.clone().expect("a private node has a namespace");
    let veths = || support::node::veths(&node_ns);
    let before = veths();
    assert_eq!(before.len(), 1, "taken's veth: {before:?}");
    let err = rt.pod("half").publish(18083, 80).publish(18081, 81).start().await.unwrap_err();
    assert!(err.to_string().contains("18081") && err.to_string().contains("already published"), "{err}");
    assert_eq!(veths(), before, "the half-made pod's veth was left on the node");
    let heir = rt.pod("heir").publish(18083, 80).start().await.expect("the half-made pod's other port is free");
    drop(heir);
    let err = rt.pod("lost").network("no-such-net").start().await.unwrap_err();
    assert!(err.to_string().contains("no-such-net") && err.to_string().contains("does not exist"), "{err}");
    let err = rt.pod("Bad_Name").start().await.unwrap_err();
    assert!(err.to_string().contains("Bad_Name"), "{err}");
    let err = pod.container("x").image("no-such-image:1").start().await.unwrap_err();
    assert!(err.to_string().contains("no-such-image"), "{err}");
    let err = pod.container("x").rootfs(env.h.base.join("missing")).cmd(["true"]).start().await.unwrap_err();
    assert!(matches!(err, PodError::NoRootfs(_)), "{err}");
    let err = pod.container("x").rootfs(&env.rootfs).cmd(["/no/such/binary"]).start().await.unwrap_err();
    assert!(err.to_string().contains("/no/such/binary"), "{err}");
    let run = pod.container("run").rootfs(&env.rootfs).cmd(["sleep", "300"]).start().await.unwrap();
    let err = pod.container("run").rootfs(&env.rootfs).cmd(["true"]).start().await.unwrap_err();
    assert!(matches!(err, PodError::ContainerExists { .. }), "{err}");
    let err = rt.pods().remove_pod("taken", false).unwrap_err();
    assert!(matches!(err, PodError::PodBusy { .. }) && err.to_string().contains("run"), "{err}");
    run.stop(Duration::from_secs(2)).await.unwrap();
    let err = run.exec(["true"]).await.unwrap_err();
    assert!(err.to_string().contains("stopped"), "{err}");
    // Nothing of the failed pods or containers is left: only `taken` and `run`.
    assert_eq!(rt.pods().pods().unwrap().len(), 1);
    assert_eq!(rt.pods().containers(None).unwrap().len(), 1);
    rt.pods().remove_pod("taken", false).unwrap();
    // Removing it again (the handle's drop does) is fine.
    rt.pods().remove_pod("taken", false).unwrap();
    let err = pod.keep().await.unwrap_err();
    assert!(err.to_string().contains("private node"), "{err}");
    rt.shutdown().await.unwrap();
    env.assert_clean();
}

/// A plain #[test], no tokio: the handles still clean up on drop, also when the test
/// body panics half-way.
#[test]
fn a_panicking_test_leaves_nothing_behind() {
    need_root();
    let env = PodEnv::new("pods-panic");
    let (root, images, rootfs) = (env.root().to_path_buf(), env.h.base.join("images"), env.rootfs.clone());
    let outcome = std::thread::spawn(move || {
        let tokio = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (rt, pod, _c) = tokio.block_on(async {
            let rt = Minipod::builder().state_dir(root).image_dir(images).private_node().open().await.unwrap();
            let pod = rt.pod("doomed").publish(18082, 80).start().await.unwrap();
            let c = pod.container("c").rootfs(rootfs).cmd(["sleep", "300"]).start().await.unwrap();
            (rt, pod, c)
        });
        let _keep = (rt, pod);
        panic!("the test fails half-way");
    })
    .join();
    assert!(outcome.is_err());
    env.assert_clean();
}

/// Run by `a_sigkilled_owner_is_swept_by_the_next_runtime` in a child process.
#[tokio::test]
#[ignore = "helper: runs only in the child process of the SIGKILL test"]
async fn sigkill_child() {
    let Ok(root) = std::env::var("MINIPOD_TEST_ROOT") else { return };
    let rootfs = std::env::var("MINIPOD_TEST_ROOTFS").unwrap();
    let builder = Minipod::builder().state_dir(&root).image_dir(format!("{root}-images"));
    // On the node it is given (shared with a live owner), else on a private one.
    let builder = match std::env::var_os("MINIPOD_TEST_NODE") {
        Some(node) => builder.node_netns(node),
        None => builder.private_node(),
    };
    let rt = builder.open().await.unwrap();
    let mut keep = vec![];
    for i in 0..3 {
        let pod = rt.pod(&format!("orphan{i}")).publish(18090 + i, 80).start().await.unwrap();
        pod.container("c").rootfs(&rootfs).cmd(["sleep", "300"]).start().await.unwrap();
        keep.push(pod);
    }
    println!("READY");
    tokio::time::sleep(Duration::from_secs(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_owner_is_swept_by_the_next_runtime() {
    need_root();
    let env = PodEnv::new("pods-sigkill");
    let mut child = support::ready_child(
        "sigkill_child",
        &[("MINIPOD_TEST_ROOT", env.root().as_os_str()), ("MINIPOD_TEST_ROOTFS", env.rootfs.as_os_str())],
    );
    let pods =
        std::fs::read_dir(env.root().join("pods")).unwrap().flatten().filter(|e| !e.file_name().to_string_lossy().starts_with('.')).count();
    assert_eq!(pods, 3);
    let pids: Vec<i32> = minipod_runtime::Runtime::new(env.root()).unwrap().list().unwrap().iter().filter_map(|c| c.pid).collect();
    assert_eq!(pids.len(), 3);
    child.kill().unwrap();
    child.wait().unwrap();
    // Its containers outlive it (each has its own monitor) until the next runtime opens.
    assert!(pids.iter().all(|p| std::path::Path::new(&format!("/proc/{p}")).exists()));
    let rt = env.open().await;
    assert!(pids.iter().all(|p| minipod_runtime::state::process_start_time(*p).is_none()), "workloads still run");
    assert!(rt.pods().pods().unwrap().is_empty());
    rt.shutdown().await.unwrap();
    env.assert_clean();
}

/// The host ends of the veths on `node`, and its nftables ruleset.
fn node_links_and_rules(node: &support::node::TestNode) -> (Vec<String>, String) {
    (support::node::veths(&node.node_ns()), support::node::sh(&node.node_ns(), "nft list ruleset"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_shared_node_the_sweep_takes_a_dead_owners_pods_and_leaves_a_live_owners() {
    need_root();
    let env = PodEnv::new("pods-sweep-shared");
    let node = support::node::TestNode::new("sweep");
    let shared = || Minipod::builder().state_dir(env.root()).image_dir(env.h.base.join("images")).node_netns(node.node_ns());
    let live = shared().open().await.unwrap();
    let web = live.pod("web").publish(18099, 80).start().await.unwrap();
    let serve = "mkdir /www && echo live > /www/index.html && exec httpd -f -p 80 -h /www";
    let httpd = web.container("s").rootfs(&env.rootfs).cmd(["sh", "-c", serve]).wait_for(Ready::port(80)).start().await.unwrap();
    let (web_links, _) = node_links_and_rules(&node);
    assert_eq!(web_links.len(), 1, "{web_links:?}");
    let mut child = support::ready_child(
        "sigkill_child",
        &[
            ("MINIPOD_TEST_ROOT", env.root().as_os_str()),
            ("MINIPOD_TEST_ROOTFS", env.rootfs.as_os_str()),
            ("MINIPOD_TEST_NODE", node.node_ns().as_os_str()),
        ],
    );
    let (links, rules) = node_links_and_rules(&node);
    let dead_links: Vec<&String> = links.iter().filter(|l| !web_links.contains(l)).collect();
    assert_eq!(dead_links.len(), 3, "the dead owner's three pods have their links on the node: {links:?}");
    for port in ["18090", "18091", "18092", "18099"] {
        assert!(rules.contains(port), "port {port} is published on the node: {rules}");
    }
    let states = minipod_runtime::Runtime::new(env.root()).unwrap().list().unwrap();
    let httpd_pid = states.iter().find(|c| c.id.as_str() == httpd.id()).and_then(|c| c.pid);
    let orphans: Vec<i32> = states.iter().filter(|c| c.id.as_str() != httpd.id()).filter_map(|c| c.pid).collect();
    assert!(httpd_pid.is_some() && orphans.len() == 3, "three orphans and the live httpd: {states:?}");
    child.kill().unwrap();
    child.wait().unwrap();

    // The next runtime on the node sweeps: the dead owner's pods, links, ports and
    // processes go; the live owner's pod keeps all of its own and still serves.
    let next = shared().open().await.unwrap();
    let left: Vec<String> = next.pods().pods().unwrap().iter().map(|p| p.name.to_string()).collect();
    assert_eq!(left, ["web"], "only the live owner's pod is left");
    let (links, rules) = node_links_and_rules(&node);
    assert_eq!(links, web_links, "only the live pod's link is left");
    for port in ["18090", "18091", "18092"] {
        assert!(!rules.contains(port), "port {port} of a swept pod is still published: {rules}");
    }
    assert!(rules.contains("18099"), "the live pod's port went: {rules}");
    for p in &orphans {
        assert!(minipod_runtime::state::process_start_time(*p).is_none(), "a swept workload {p} still runs");
    }
    assert!(httpd_pid.and_then(minipod_runtime::state::process_start_time).is_some(), "the live httpd was killed");
    assert_eq!(web.http_get(80, "/").await.unwrap(), (200, "live\n".to_string()));
    assert_eq!(
        support::node::TestNode::fetch(&node.node_ns(), "http://127.0.0.1:18099/").as_deref(),
        Some("live"),
        "the live pod's published port answers"
    );
    next.shutdown().await.unwrap();
    drop(httpd);
    drop(web);
    live.shutdown().await.unwrap();
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_run_from_an_imported_image_with_their_own_upper_layer() {
    need_root();
    let env = PodEnv::new("pods-image");
    let layout = env.h.base.join("layout");
    minipod_runtime::busybox::write_oci_layout(&layout, "minipod.test/busybox:1").unwrap();
    let rt = env.open().await;
    let img = rt.import_image(&layout, None).await.unwrap();
    assert_eq!(img.repo_tags, vec!["minipod.test/busybox:1"]);
    let pod = rt.pod("img").start().await.unwrap();
    let a = pod.container("a").image("minipod.test/busybox:1").cmd(["sleep", "300"]).start().await.unwrap();
    let b = pod.container("b").image(&img.id).cmd(["sleep", "300"]).start().await.unwrap();
    // The second layer's whiteouts hide what the first one had.
    let seen = a.exec(["sh", "-c", "cat /etc/image-release; ls /opt/gone; test -e /etc/motd || echo no-motd"]).await.unwrap();
    assert_eq!(seen.stdout_text(), "minipod test image\nnew\nno-motd\n", "{seen:?}");
    // Writes land in each container's own upper dir, never in the shared layers.
    a.exec(["sh", "-c", "echo mine > /etc/image-release"]).await.unwrap();
    assert_eq!(b.exec(["cat", "/etc/image-release"]).await.unwrap().stdout_text(), "minipod test image\n");
    // The image's default command runs when none is given (sh exits at once on /dev/null).
    let dflt = pod.container("dflt").image("minipod.test/busybox:1").start().await.unwrap();
    assert_eq!(dflt.wait().await.unwrap(), ExitStatus::Code(0));
    drop(pod);
    rt.shutdown().await.unwrap();
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runtimes_on_one_node_and_root_never_collide() {
    need_root();
    let env = PodEnv::new("pods-two");
    let node = support::node::TestNode::new("two");
    let open = || Minipod::builder().state_dir(env.root()).image_dir(env.h.base.join("images")).node_netns(node.node_ns()).open();
    let (a, b) = (open().await.unwrap(), open().await.unwrap());
    let serve = |who: &str| format!("mkdir /www && echo {who} > /www/index.html && exec httpd -f -p 80 -h /www");
    let wa = a.pod("web").start().await.unwrap();
    wa.container("s").rootfs(&env.rootfs).cmd(["sh", "-c", &serve("a")]).wait_for(Ready::port(80)).start().await.unwrap();
    // Same pod name in the other runtime: its own scope, network, subnet and DNS.
    let wb = b.pod("web").start().await.unwrap();
    wb.container("s").rootfs(&env.rootfs).cmd(["sh", "-c", &serve("b")]).wait_for(Ready::port(80)).start().await.unwrap();
    assert_ne!(wa.record().networks[0].network, wb.record().networks[0].network);
    assert_ne!(wa.ip().octets()[..3], wb.ip().octets()[..3], "{} and {}", wa.ip(), wb.ip());
    for (rt, want) in [(&a, "a\n"), (&b, "b\n")] {
        let client = rt.pod("client").start().await.unwrap();
        let c = client.container("c").rootfs(&env.rootfs).cmd(["sleep", "60"]).start().await.unwrap();
        assert_eq!(c.exec(["wget", "-qO-", "http://web/"]).await.unwrap().stdout_text(), want);
    }
    // Closing one leaves the other working.
    drop(wa);
    a.shutdown().await.unwrap();
    assert_eq!(wb.http_get(80, "/").await.unwrap(), (200, "b\n".to_string()));
    drop(wb);
    b.shutdown().await.unwrap();
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_of_a_pod_can_share_one_pid_namespace() {
    need_root();
    let env = PodEnv::new("pods-sharepid");
    let rt = env.open().await;
    let pod = rt.pod("shared").share_pid().start().await.unwrap();
    let holder = pod.record().pid_holder.expect("a PID 1 holds the shared namespace");
    let a = pod.container("a").rootfs(&env.rootfs).cmd(["sleep", "301"]).start().await.unwrap();
    let b = pod.container("b").rootfs(&env.rootfs).cmd(["sleep", "302"]).start().await.unwrap();
    let ps = b.exec(["ps", "-o", "pid,args"]).await.unwrap().stdout_text();
    assert!(ps.contains("sleep 301") && ps.contains("sleep 302"), "{ps}");
    assert_eq!(b.exec(["cat", "/proc/1/comm"]).await.unwrap().stdout_text(), "minipod-pid1\n");
    // One container ending does not take the namespace, or the other, with it.
    a.kill(minipod_runtime::Signal::from_number(9).unwrap()).await.unwrap();
    a.wait().await.unwrap();
    assert!(b.exec(["true"]).await.unwrap().success());
    pod.container("c").rootfs(&env.rootfs).cmd(["true"]).start().await.unwrap();
    drop(pod);
    assert!(minipod_runtime::state::process_start_time(holder.pid) != Some(holder.start_time), "the PID 1 holder outlived its pod");
    rt.shutdown().await.unwrap();
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_container_is_removed_only_by_force_and_a_gone_one_without_error() {
    need_root();
    let env = PodEnv::new("pods-rmpolicy");
    let rt = env.open().await;
    let pod = rt.pod("rm").start().await.unwrap();
    pod.container("c").rootfs(&env.rootfs).cmd(["sleep", "300"]).start().await.unwrap();
    let pods = rt.pods();
    let refused = pods.remove_container("rm", "c", false).unwrap_err();
    assert!(matches!(refused, PodError::ContainerRunning { .. }), "{refused}");
    assert!(pods.container("rm", "c").is_ok(), "a refused removal leaves the container");
    pods.remove_container("rm", "c", true).unwrap();
    assert!(matches!(pods.container("rm", "c"), Err(PodError::NoSuchContainer { .. })));
    pods.remove_container("rm", "c", false).unwrap();
    pods.remove_container("no-such-pod", "c", false).unwrap();
    drop(pod);
    rt.shutdown().await.unwrap();
    env.assert_clean();
}

/// What a process killed mid-way leaves, made by hand: a stop and a removal begun and
/// not finished, a name claim without its pod, a pod directory without a record, a
/// staging directory, a temporary member record and a half-written address file of a
/// writer that is gone; and a ready pod whose link someone deleted. `minipod gc` finishes or removes each and says so; then the
/// name is free, and a second gc finds nothing.
#[test]
fn gc_finishes_what_a_crash_cut_short_and_removes_half_written_state() {
    need_root();
    let env = PodEnv::new("pods-gc");
    let node = support::node::TestNode::new("gc");
    let ns = node.node_ns();
    let images = env.h.base.join("images");
    let (img, nsarg) = (images.to_str().unwrap(), ns.to_str().unwrap());
    let run = |args: &[&str]| {
        let out = env.h.minipod(args);
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let root = env.root().to_path_buf();
    let mut ids = vec![];
    // The keeper keeps the default network (and the files planted in it) alive.
    for name in ["half-stopped", "half-removed", "keeper", "lost-link"] {
        let (code, out, err) = run(&["pod", "--images", img, "--netns", nsarg, "run", name]);
        assert_eq!(code, Some(0), "{err}");
        ids.push(out.trim().to_string());
    }
    let edit = |id: &str, change: &dyn Fn(&mut serde_json::Value)| {
        let path = root.join("pods").join(id).join("pod.json");
        let mut pod: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        change(&mut pod);
        std::fs::write(&path, serde_json::to_vec(&pod).unwrap()).unwrap();
    };
    edit(&ids[0], &|p| p["status"] = "stopping".into());
    edit(&ids[1], &|p| p["removing"] = true.into());
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    std::fs::write(root.join("pods/.names/default/ghost"), "0123456789ab").unwrap();
    std::fs::create_dir_all(root.join("pods/fedcba987654/ns")).unwrap();
    std::fs::create_dir_all(root.join(format!("pods/.abcdef012345.tmp.{dead}.0/containers"))).unwrap();
    let net = root.join("networks/minipod0");
    std::fs::write(net.join(format!("members/.abcdef012345.json.tmp.{dead}.3")), b"").unwrap();
    std::fs::write(net.join("ipam/ips/10.88.255.200"), b"").unwrap();
    // Someone deletes a ready pod's link: the pod must not stay ready.
    let member: serde_json::Value = serde_json::from_slice(&std::fs::read(net.join(format!("members/{}.json", ids[3]))).unwrap()).unwrap();
    let veth = member["host_ifname"].as_str().unwrap();
    assert!(support::node::TestNode::in_ns(&ns, &["ip", "link", "del", veth]).status.success());

    let (code, out, err) = run(&["gc", "--images", img, "--netns", nsarg]);
    assert_eq!(code, Some(0), "{out}{err}");
    for line in [
        format!("finished: stop of pod half-stopped ({})", ids[0]),
        format!("finished: removal of pod half-removed ({})", ids[1]),
        "removed: name claim default/ghost without a pod".to_string(),
        format!("removed: pod directory {} without a record", root.join("pods/fedcba987654").display()),
        format!("removed: temporary {}", root.join(format!("pods/.abcdef012345.tmp.{dead}.0")).display()),
        format!("cleaned network: temporary file {}", net.join(format!("members/.abcdef012345.json.tmp.{dead}.3")).display()),
        "cleaned network: address 10.88.255.200 of minipod0".to_string(),
        format!("finished: stop of pod lost-link ({}), whose link on minipod0 was gone", ids[3]),
    ] {
        assert!(out.lines().any(|l| l == line), "no {line:?} in:\n{out}");
    }
    let (_, inspect, _) = run(&["pod", "--images", img, "inspect", &ids[0]]);
    let inspect: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(inspect["pod"]["status"], "stopped", "{inspect}");
    assert!(!net.join(format!("members/{}.json", ids[0])).exists(), "the stop did not detach the pod");
    assert!(!root.join("pods").join(&ids[1]).exists());
    let (_, inspect, _) = run(&["pod", "--images", img, "inspect", &ids[3]]);
    let inspect: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(inspect["pod"]["status"], "stopped", "{inspect}");
    let (code, out, err) = run(&["pod", "--images", img, "--netns", nsarg, "run", "ghost"]);
    assert_eq!(code, Some(0), "the name stays blocked: {out}{err}");
    let (code, out, err) = run(&["gc", "--images", img, "--netns", nsarg]);
    assert_eq!((code, out.trim()), (Some(0), "nothing to clean"), "{err}");
}
