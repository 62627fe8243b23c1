//! Streaming through the daemon's streaming server, driven by the real `crictl` over
//! each transport it has (SPDY and WebSocket): `exec` with and without stdin or a
//! terminal, `attach` to a container reading its stdin, and `port-forward` to a pod's
//! web server and to a port nothing listens on.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use support::cri::{crictl_bin, ctr_json, pod_json, Daemon};
use support::node::TestNode;
use support::{need_root, Harness};

/// Whether process `pid` is the exec'd `sleep 7777` itself (not the crictl naming it).
fn is_the_sleep(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == b"sleep\x007777\x00")
}

/// A crictl child, killed on drop (a port-forward runs until told to stop).
struct Crictl(Child);

impl Drop for Crictl {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn crictl(d: &Daemon, args: &[&str]) -> Command {
    let ep = format!("unix://{}", d.sock.display());
    let mut c = Command::new(crictl_bin());
    c.args(["--runtime-endpoint", &ep, "--image-endpoint", &ep, "--timeout", "20s", "--config", "/dev/null"]).args(args);
    c
}

/// Runs crictl with `input` on its stdin; (exit code, stdout, stderr).
fn with_input(d: &Daemon, args: &[&str], input: &[u8]) -> (i32, String, String) {
    let mut child = crictl(d, args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input).unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// crictl's transports; each scenario runs over both.
const TRANSPORTS: [&str; 2] = ["spdy", "websocket"];

/// `crictl VERB --transport TRANSPORT REST...`
fn over<'a>(verb: &'a str, transport: &'a str, rest: &[&'a str]) -> Vec<&'a str> {
    [verb, "--transport", transport].into_iter().chain(rest.iter().copied()).collect()
}

/// Starts a pod with one container running `cmd`; (pod id, container id).
fn pod_with(d: &Daemon, name: &str, cmd: &[&str]) -> (String, String) {
    let logs = d.h.base.join("logs");
    let pod_cfg = d.write(&format!("{name}-pod.json"), &pod_json(name, &logs, json!([])));
    let pod = d.ok(&["runp", &pod_cfg]).trim().to_string();
    let ctr_cfg = d.write(&format!("{name}-ctr.json"), &ctr_json(name, cmd));
    let ctr = d.ok(&["create", &pod, &ctr_cfg, &pod_cfg]).trim().to_string();
    d.ok(&["start", &ctr]);
    (pod, ctr)
}

#[test]
fn crictl_exec_streams_output_input_and_the_exit_code() {
    need_root();
    let node = TestNode::new("stream-exec");
    let d = Daemon::start(Harness::new("stream-exec"), &node.node_ns());
    d.import_busybox();
    let (_, ctr) = pod_with(&d, "sleeper", &["sleep", "300"]);

    for t in TRANSPORTS {
        // Output on both streams, and the exit code comes back (crictl names it, and
        // exits with 1 for any failure).
        let (code, out, err) = with_input(&d, &over("exec", t, &[&ctr, "sh", "-c", "echo to-out; echo to-err >&2; exit 7"]), b"");
        assert_eq!(code, 1, "{t}: stdout {out:?}, stderr {err:?}");
        assert_eq!(out, "to-out\n", "{t}");
        assert!(err.contains("to-err") && err.contains("command terminated with exit code 7"), "{t}: {err:?}");
        let (code, out, _) = with_input(&d, &over("exec", t, &[&ctr, "true"]), b"");
        assert_eq!((code, out.as_str()), (0, ""), "{t}");

        // Input: what crictl reads is the process's stdin, its end is EOF.
        let big: Vec<u8> = (0..200_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        let (code, out, err) = with_input(&d, &over("exec", t, &["-i", &ctr, "wc", "-c"]), &big);
        assert_eq!(code, 0, "{t}: {err}");
        assert_eq!(out.trim(), "200000", "{t}");
        let (code, out, _) = with_input(&d, &over("exec", t, &["-i", &ctr, "cat"]), b"typed\nlines\n");
        assert_eq!((code, out.as_str()), (0, "typed\nlines\n"), "{t}");

        // A terminal: through script(1), crictl's stdin is one, and the process's too:
        // what is typed reaches the process, and the window size crictl finds on its
        // terminal is the process's.
        let ep = format!("unix://{}", d.sock.display());
        let line = format!(
            "stty cols 123 rows 45; {} --runtime-endpoint {ep} --timeout 20s --config /dev/null exec --transport {t} -it {ctr} sh -c 'tty >/dev/null && echo on-a-tty; stty size; read l; echo got-$l; exit 3'",
            crictl_bin().display()
        );
        let (text, err) = support::on_a_terminal(&line, b"typed-at-the-tty\n");
        assert!(text.contains("on-a-tty"), "{t}: {text:?} {err}");
        assert!(text.contains("exit code 3"), "{t}: {text:?}");
        assert!(text.contains("45 123"), "{t}: stty size in the container: {text:?}");
        assert!(text.contains("got-typed-at-the-tty"), "{t}: {text:?}");

        // A client that goes away takes its process with it.
        let abandoned = Crictl(
            crictl(&d, &over("exec", t, &[&ctr, "sleep", "7777"]))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while support::processes_mentioning("sleep\u{0}7777").iter().all(|p| !is_the_sleep(*p)) {
            assert!(Instant::now() < deadline, "{t}: the exec never started");
            std::thread::sleep(Duration::from_millis(50));
        }
        drop(abandoned);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !support::processes_mentioning("sleep\u{0}7777").iter().all(|p| !is_the_sleep(*p)) {
            assert!(Instant::now() < deadline, "{t}: the abandoned exec still runs");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    // An exec in a container that is gone is refused up front.
    let (_, stopped) = pod_with(&d, "stopped", &["true"]);
    d.wait_exited(&stopped);
    let (code, _, err) = with_input(&d, &["exec", &stopped, "true"], b"");
    assert_ne!(code, 0);
    assert!(err.contains("exited") || err.contains("stopped"), "{err}");
}

#[test]
fn crictl_port_forward_reaches_a_pods_loopback_and_reports_a_closed_port() {
    need_root();
    let node = TestNode::new("stream-pf");
    let d = Daemon::start(Harness::new("stream-pf"), &node.node_ns());
    d.import_busybox();
    // The server listens on the pod's loopback only: nothing but a forward reaches it.
    let serve = "mkdir /www && echo hello-forward > /www/index.html && exec httpd -f -p 127.0.0.1:8080 -h /www";
    let (pod, _) = pod_with(&d, "web", &["sh", "-c", serve]);

    let forward = |t: &str, remote: &str| -> (Crictl, u16) {
        let mut child = Crictl(
            crictl(&d, &over("port-forward", t, &[&pod, &format!(":{remote}")]))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        // "Forwarding from 127.0.0.1:PORT -> REMOTE"
        let mut lines = BufReader::new(child.0.stdout.take().unwrap()).lines();
        let line = lines.next().and_then(Result::ok).unwrap_or_default();
        let port = line.split("127.0.0.1:").nth(1).and_then(|r| r.split_whitespace().next()).and_then(|p| p.parse().ok());
        let port = port.unwrap_or_else(|| panic!("crictl port-forward printed {line:?}"));
        std::thread::spawn(move || lines.for_each(drop));
        (child, port)
    };
    let get = |port: u16| -> Option<String> {
        let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        c.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
        c.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
        let mut reply = String::new();
        c.read_to_string(&mut reply).ok()?;
        Some(reply)
    };

    for t in TRANSPORTS {
        let (_pf, port) = forward(t, "8080");
        // The server may still be starting: retry until it answers.
        let deadline = Instant::now() + Duration::from_secs(20);
        let reply = loop {
            match get(port) {
                Some(r) if r.contains("hello-forward") => break r,
                other => assert!(Instant::now() < deadline, "{t}: no answer through the forward: {other:?}"),
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        assert!(reply.starts_with("HTTP/1.1 200"), "{t}: {reply}");
        // Several connections at once over one session.
        let answers: Vec<_> = (0..4).map(|_| std::thread::spawn(move || get(port))).collect();
        for a in answers {
            assert!(a.join().unwrap().is_some_and(|r| r.contains("hello-forward")), "{t}");
        }

        // Nothing listens on 9: the connection is closed, promptly, rather than hanging.
        let (mut closed_pf, port) = forward(t, "9");
        let started = Instant::now();
        let reply = get(port);
        assert!(reply.as_deref().unwrap_or_default().is_empty(), "{t}: {port}: {reply:?}");
        assert!(started.elapsed() < Duration::from_secs(15), "{t}: a refused port hung for {:?}", started.elapsed());
        let _ = closed_pf.0.kill();
        let mut err = String::new();
        let _ = closed_pf.0.stderr.take().unwrap().read_to_string(&mut err);
        assert!(err.contains("error forwarding port 9"), "{t}: {err}");
    }
}

#[test]
fn crictl_attach_feeds_a_containers_stdin_and_shows_its_output() {
    need_root();
    let node = TestNode::new("stream-attach");
    let d = Daemon::start(Harness::new("stream-attach"), &node.node_ns());
    d.import_busybox();
    let logs = d.h.base.join("logs");
    let pod_cfg = d.write("shell-pod.json", &pod_json("shell", &logs, json!([])));
    let pod = d.ok(&["runp", &pod_cfg]).trim().to_string();
    for t in TRANSPORTS {
        // A shell reading commands from its stdin, which stays open until the first
        // attach lets go of it (stdin_once).
        let mut cfg = ctr_json(&format!("shell-{t}"), &["sh"]);
        cfg["stdin"] = json!(true);
        cfg["stdin_once"] = json!(true);
        let ctr_cfg = d.write(&format!("shell-{t}-ctr.json"), &cfg);
        let ctr = d.ok(&["create", &pod, &ctr_cfg, &pod_cfg]).trim().to_string();
        d.ok(&["start", &ctr]);
        // It waits for input rather than seeing EOF at once.
        std::thread::sleep(Duration::from_millis(500));
        assert!(d.ok(&["inspect", &ctr]).contains("CONTAINER_RUNNING"), "{t}");

        let (code, out, err) = with_input(&d, &over("attach", t, &["-i", &ctr]), b"echo attached-$((6*7))\necho to-err >&2\n");
        assert_eq!(code, 0, "{t}: {err}");
        assert_eq!(out, "attached-42\n", "{t}");
        assert!(err.contains("to-err"), "{t}: {err:?}");
        // The attach's end was the stdin's: the shell exited with it, and its log has all.
        let status = d.wait_exited(&ctr);
        assert_eq!(status["status"]["exitCode"], 0, "{t}: {status}");
        assert!(d.ok(&["logs", &ctr]).contains("attached-42"), "{t}");
    }

    // A container on a terminal of its own: attach -it types into it and sizes it;
    // its output is the terminal's, also in its log.
    let ep = format!("unix://{}", d.sock.display());
    for t in TRANSPORTS {
        let mut cfg = ctr_json(&format!("tty-{t}"), &["sh"]);
        cfg["stdin"] = json!(true);
        cfg["tty"] = json!(true);
        let ctr_cfg = d.write(&format!("tty-{t}-ctr.json"), &cfg);
        let ctr = d.ok(&["create", &pod, &ctr_cfg, &pod_cfg]).trim().to_string();
        d.ok(&["start", &ctr]);
        let line = format!(
            "stty cols 101 rows 33; {} --runtime-endpoint {ep} --timeout 20s --config /dev/null attach --transport {t} -it {ctr}",
            crictl_bin().display()
        );
        // The first size comes with the attach; the shell reads its lines after it.
        let (text, err) = support::on_a_terminal(&line, b"sleep 1; tty; stty size; echo typed-$((6*7)); exit 5\n");
        assert!(text.contains("/dev/pts/"), "{t}: the shell's stdin is a terminal: {text:?} {err}");
        assert!(text.contains("33 101"), "{t}: stty size in the container: {text:?}");
        assert!(text.contains("typed-42"), "{t}: {text:?}");
        let status = d.wait_exited(&ctr);
        assert_eq!(status["status"]["exitCode"], 5, "{t}: {status}");
        let logs = d.ok(&["logs", &ctr]);
        assert!(logs.contains("typed-42"), "{t}: the terminal's output is the log's: {logs:?}");
    }

    // A container made without stdin has none to attach to.
    let (_, sleeper) = pod_with(&d, "no-stdin", &["sleep", "300"]);
    let (code, _, err) = with_input(&d, &["attach", "-i", &sleeper], b"x\n");
    assert_ne!(code, 0);
    assert!(err.contains("no stdin"), "{err}");
    // Nor has it a terminal for attach -t.
    let line = format!("{} --runtime-endpoint {ep} --timeout 20s --config /dev/null attach -it {sleeper}", crictl_bin().display());
    let (text, _) = support::on_a_terminal(&line, b"");
    assert!(text.contains("has no terminal"), "{text:?}");
}
