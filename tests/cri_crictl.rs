//! The CRI server driven by the real `crictl` (installed by scripts/setup.sh) over its
//! Unix socket, on a node namespace the test makes.

mod support;

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::cri::{ctr_json, pod_json, Daemon};
use support::node::TestNode;
use support::{need_root, Harness};

#[test]
fn crictl_drives_pods_containers_and_images() {
    need_root();
    let node = TestNode::new("cri");
    let h = Harness::new("cri");
    let layout = h.base.join("layout");
    minipod_runtime::busybox::write_oci_layout(&layout, "minipod.test/busybox:1").unwrap();
    let mut d = Daemon::start(h, &node.node_ns());
    let imported = d.h.minipod(&["image", "--images", d.images.to_str().unwrap(), "import", layout.to_str().unwrap()]);
    assert!(imported.status.success(), "{}", String::from_utf8_lossy(&imported.stderr));
    let logs = d.h.base.join("logs");

    assert!(d.ok(&["version"]).contains("RuntimeName:  minipod"));
    assert!(d.ok(&["info"]).contains("NetworkReady"));
    assert!(d.ok(&["images"]).contains("minipod.test/busybox"));

    // A web pod with a published port, and a client pod.
    let web_pod = d.write("web-pod.json", &pod_json("web", &logs, json!([{ "container_port": 80, "host_port": 18086 }])));
    let web = d.ok(&["runp", &web_pod]).trim().to_string();
    let serve = "mkdir /www && echo hello-cri > /www/index.html && echo started && exec httpd -f -p 80 -h /www";
    // Its port declared by name, as a kubelet passes a container's `ports`.
    let mut httpd_json = ctr_json("httpd", &["sh", "-c", serve]);
    httpd_json["annotations"] = json!({ "io.kubernetes.container.ports": r#"[{"name":"web","containerPort":80,"protocol":"TCP"}]"# });
    let httpd_cfg = d.write("httpd.json", &httpd_json);
    let httpd = d.ok(&["create", &web, &httpd_cfg, &web_pod]).trim().to_string();
    d.ok(&["start", &httpd]);
    let client_pod = d.write("client-pod.json", &pod_json("client", &logs, json!([])));
    let client = d.ok(&["runp", &client_pod]).trim().to_string();
    let sh_cfg = d.write("sh.json", &ctr_json("sh", &["sleep", "300"]));
    let sh = d.ok(&["create", &client, &sh_cfg, &client_pod]).trim().to_string();
    d.ok(&["start", &sh]);

    let pods = d.ok(&["pods"]);
    assert!(pods.contains("web") && pods.contains("client") && pods.contains("Ready"), "{pods}");
    let ps = d.ok(&["ps"]);
    assert!(ps.contains("httpd") && ps.contains("Running") && ps.contains(&httpd[..13]), "{ps}");
    let inspect: Value = serde_json::from_str(&d.ok(&["inspectp", &web])).unwrap();
    let web_ip = inspect["status"]["network"]["ip"].as_str().unwrap().to_string();
    assert!(web_ip.starts_with("10.88."), "{inspect}");

    // By IP, by name (the daemon serves DNS), and through the published port.
    let wait_http = |d: &Daemon, url: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = d.crictl(&["exec", "-s", &sh, "wget", "-qO-", url]);
            if out.status.success() {
                // crictl adds blank lines after the output.
                return String::from_utf8_lossy(&out.stdout).trim().to_string();
            }
            assert!(Instant::now() < deadline, "{url}: {}", String::from_utf8_lossy(&out.stderr));
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    assert_eq!(wait_http(&d, &format!("http://{web_ip}/")), "hello-cri");
    assert_eq!(wait_http(&d, "http://web/"), "hello-cri");
    // A Service applied through the CLI on the daemon's state root selects the CRI pod
    // by its labels and metadata namespace, reaches it on the port its container
    // declares by name, and the daemon's DNS names it.
    let svc = d.h.base.join("svc.yaml");
    std::fs::write(&svc, "apiVersion: v1\nkind: Service\nmetadata: {name: web-svc}\nspec:\n  selector: {app: web}\n  ports: [{port: 8080, targetPort: web}]\n")
        .unwrap();
    let cli = |verb: &str, file: &std::path::Path| {
        let out = d.h.minipod(&[
            verb,
            "--netns",
            node.node_ns().to_str().unwrap(),
            "--images",
            d.images.to_str().unwrap(),
            "-f",
            file.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "minipod {verb}: {}", String::from_utf8_lossy(&out.stderr));
    };
    cli("apply", &svc);
    assert_eq!(wait_http(&d, "http://web-svc:8080/"), "hello-cri");
    assert_eq!(wait_http(&d, "http://web-svc.default.svc.cluster.local:8080/"), "hello-cri");
    cli("delete", &svc);
    // A NetworkPolicy isolates the CRI pod by its labels: the client pod is blocked,
    // the node (here through the published port on its 127.0.0.1) is not.
    let policy = d.h.base.join("policy.yaml");
    std::fs::write(
        &policy,
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web-admins-only}\nspec:\n  podSelector: {matchLabels: {app: web}}\n  ingress: [{from: [{podSelector: {matchLabels: {role: admin}}}]}]\n",
    )
    .unwrap();
    cli("apply", &policy);
    let blocked = d.crictl(&["exec", "-s", &sh, "timeout", "3", "wget", "-qO-", &format!("http://{web_ip}/")]);
    assert!(!blocked.status.success(), "the policy blocks the client pod");
    assert_eq!(TestNode::fetch(&node.node_ns(), "http://127.0.0.1:18086/").as_deref(), Some("hello-cri"));
    cli("delete", &policy);
    assert_eq!(wait_http(&d, &format!("http://{web_ip}/")), "hello-cri");
    assert_eq!(TestNode::fetch(&node.node_ns(), "http://127.0.0.1:18086/").as_deref(), Some("hello-cri"));
    assert!(d.ok(&["logs", &httpd]).contains("started"));
    let stats = d.ok(&["stats", "-o", "json", &httpd]);
    let stats: Value = serde_json::from_str(&stats).unwrap();
    let s = &stats["stats"][0];
    assert!(s["memory"]["workingSetBytes"]["value"].as_str().unwrap_or("0").parse::<u64>().unwrap_or(0) > 0, "{stats}");
    assert!(s["cpu"]["usageCoreNanoSeconds"]["value"].as_str().unwrap_or("0").parse::<u64>().unwrap_or(0) > 0, "{stats}");
    // Pod stats: the containers', and the traffic the web pod has served.
    let podstats: Value = serde_json::from_str(&d.ok(&["statsp", "-o", "json", "--id", &web])).unwrap();
    let p = &podstats["stats"][0]["linux"];
    let num = |v: &Value| v["value"].as_str().unwrap_or("0").parse::<u64>().unwrap_or(0);
    assert_eq!(p["network"]["defaultInterface"]["name"], "eth0", "{podstats}");
    assert!(num(&p["network"]["defaultInterface"]["rxBytes"]) > 0 && num(&p["network"]["defaultInterface"]["txBytes"]) > 0, "{podstats}");
    assert!(num(&p["memory"]["workingSetBytes"]) > 0, "{podstats}");
    assert_eq!(p["containers"][0]["attributes"]["id"], httpd.as_str(), "{podstats}");

    // A container that exits while no daemon runs has its exit code found by the next
    // one (its monitor, not the daemon, saw it); pods, IPs and ports survive too.
    let job_cfg = d.write("job.json", &ctr_json("job", &["sh", "-c", "sleep 2; exit 3"]));
    let job = d.ok(&["create", &client, &job_cfg, &client_pod]).trim().to_string();
    d.ok(&["start", &job]);
    d.kill(libc::SIGKILL);
    let job_state = d.h.root.join(&job).join("state.json");
    let exit_recorded = || {
        let state: Value =
            serde_json::from_slice(&std::fs::read(&job_state).unwrap_or_else(|e| panic!("{}: {e}", job_state.display()))).unwrap();
        !state["exit"].is_null()
    };
    assert!(!exit_recorded(), "the job had exited before the daemon was killed");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !exit_recorded() {
        assert!(Instant::now() < deadline, "the job's exit was not recorded within 20 s of its 2 s sleep");
        std::thread::sleep(Duration::from_millis(50));
    }
    d.spawn();
    let again: Value = serde_json::from_str(&d.ok(&["inspectp", &web])).unwrap();
    assert_eq!(again["status"]["network"]["ip"], inspect["status"]["network"]["ip"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        let s: Value = serde_json::from_str(&d.ok(&["inspect", &job])).unwrap();
        if s["status"]["state"] == "CONTAINER_EXITED" || Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status["status"]["exitCode"], 3, "{status}");
    assert_eq!(TestNode::fetch(&node.node_ns(), "http://127.0.0.1:18086/").as_deref(), Some("hello-cri"));
    assert_eq!(wait_http(&d, "http://web/"), "hello-cri");
    // The restarted daemon knows whose the port is (not only the kernel's rules): another
    // pod may not take it while web holds it, and may once web has stopped (below).
    let heir_pod = d.write("heir-pod.json", &pod_json("heir", &logs, json!([{ "container_port": 80, "host_port": 18086 }])));
    let taken = d.crictl(&["runp", &heir_pod]);
    let taken = String::from_utf8_lossy(&taken.stderr);
    assert!(taken.contains("host port tcp/18086 is already published by"), "{taken}");

    // Malformed and unknown requests get the right codes, not a crash.
    let err = |args: &[&str]| String::from_utf8_lossy(&d.crictl(args).stderr).into_owned();
    assert!(err(&["inspectp", "0123456789ab"]).contains("NotFound"));
    assert!(err(&["inspect", "nosuchcontainer"]).contains("NotFound"));
    assert!(err(&["runp", &web_pod]).contains("AlreadyExists"));
    // A pod made again under its name (a new uid) need not wait for the old sandbox.
    let mut reborn = pod_json("web", &logs, json!([]));
    reborn["metadata"]["uid"] = json!("web-uid-2");
    let reborn = d.ok(&["runp", &d.write("web-reborn.json", &reborn)]).trim().to_string();
    assert_ne!(reborn, web);
    d.ok(&["rmp", "-f", &reborn]);
    // Oversized fields are refused by name and limit, and not sent back.
    let mut huge = pod_json("huge", &logs, json!([]));
    huge["annotations"] = json!({ "a": "x".repeat(300 * 1024) });
    let refused = err(&["runp", &d.write("huge.json", &huge)]);
    assert!(
        refused.contains("InvalidArgument") && refused.contains("annotations are 307201 bytes together; the limit is 262144"),
        "{refused}"
    );
    assert!(refused.len() < 1000, "{} bytes of error", refused.len());
    let bad = d.write("bad-pod.json", &json!({ "metadata": { "name": "x", "namespace": "" } }));
    assert!(!d.crictl(&["runp", &bad]).status.success());
    // Below crictl, with a client that knows no gRPC: an unknown method is named in its
    // Unimplemented answer, and a body that is no protobuf is answered (INTERNAL, as
    // grpc-go answers it) without harm to the daemon.
    // An unknown method is sent without a body: the daemon answers it without reading
    // one, and a body still on its way then makes hyper reset the stream (NO_ERROR, as
    // RFC 9113 allows), which curl 7.88 reports as a framing error one run in four.
    let grpc = |path: &str, payload: Option<&[u8]>| d.raw_grpc(path, payload);
    let unknown = grpc("/runtime.v1.RuntimeService/NoSuchMethod", None);
    assert!(unknown.contains("grpc-status: 12"), "{unknown}");
    assert!(unknown.contains("grpc-message: unknown method /runtime.v1.runtimeservice/nosuchmethod: minipod serves"), "{unknown}");
    let garbled = grpc("/runtime.v1.RuntimeService/Version", Some(&[0xff, 0xff, 0xff]));
    assert!(garbled.contains("grpc-status: 13") && garbled.contains("decode"), "{garbled}");
    assert!(d.ok(&["version"]).contains("minipod"));
    // Log files stay inside the pod's log directory; nothing is written elsewhere and
    // no container is left of the attempt.
    let outside = d.h.base.join("escaped.log");
    for log_path in ["../../../../../../../../tmp/escaped.log".to_string(), outside.display().to_string()] {
        let mut cfg = ctr_json("escaping", &["true"]);
        cfg["log_path"] = json!(log_path);
        let escaping = d.write("escaping.json", &cfg);
        let refused = err(&["create", &client, &escaping, &client_pod]);
        assert!(refused.contains("InvalidArgument") && refused.contains("inside the pod's log_directory"), "{refused}");
    }
    assert!(!outside.exists() && !Path::new("/tmp/escaped.log").exists());
    assert!(
        !d.ok(&["ps", "-a", "-q", "--name", "escaping"]).contains(|c: char| c.is_ascii_hexdigit()),
        "a refused create left a container"
    );
    // Names that one DNS label would merge are two containers.
    let twins: Vec<String> = ["twin.a", "twin_a"]
        .iter()
        .map(|name| {
            let cfg = d.write(&format!("{name}.json"), &ctr_json(name, &["true"]));
            d.ok(&["create", &client, &cfg, &client_pod]).trim().to_string()
        })
        .collect();
    assert_ne!(twins[0], twins[1]);
    for id in &twins {
        d.ok(&["rm", id]);
    }
    let mut cfg = pod_json("rel", &d.h.base, json!([]));
    cfg["log_directory"] = json!("logs");
    let relative = d.write("relative-logs.json", &cfg);
    assert!(err(&["runp", &relative]).contains("must be an absolute path"));

    // Stop and remove of one pod at once, from two clients: both succeed, quietly, and
    // the pod is gone.
    let racers: Vec<String> = (0..4)
        .map(|i| {
            let cfg = d.write(&format!("race-{i}.json"), &pod_json(&format!("race-{i}"), &d.h.base.join("logs"), json!([])));
            d.ok(&["runp", &cfg]).trim().to_string()
        })
        .collect();
    let client_of = &d;
    std::thread::scope(|s| {
        let runs: Vec<_> = racers
            .iter()
            .flat_map(|id| [vec!["stopp", id.as_str()], vec!["rmp", "-f", id.as_str()]])
            .map(|args| (args.join(" "), s.spawn(move || client_of.crictl(&args))))
            .collect();
        for (args, run) in runs {
            let out = run.join().unwrap();
            assert!(out.status.success(), "crictl {args} beside its twin: {}", String::from_utf8_lossy(&out.stderr));
        }
    });
    let left = d.ok(&["pods", "-q"]);
    assert!(racers.iter().all(|id| !left.contains(id.as_str())), "{left}");
    // The same for containers: stop and remove -f of one running container at once.
    let racing: Vec<String> = (0..4)
        .map(|i| {
            let cfg = d.write(&format!("race-ctr-{i}.json"), &ctr_json(&format!("race-{i}"), &["sleep", "300"]));
            let id = d.ok(&["create", &client, &cfg, &client_pod]).trim().to_string();
            d.ok(&["start", &id]);
            id
        })
        .collect();
    std::thread::scope(|s| {
        let runs: Vec<_> = racing
            .iter()
            .flat_map(|id| [vec!["stop", "-t", "1", id.as_str()], vec!["rm", "-f", id.as_str()]])
            .map(|args| (args.join(" "), s.spawn(move || client_of.crictl(&args))))
            .collect();
        for (args, run) in runs {
            let out = run.join().unwrap();
            assert!(out.status.success(), "crictl {args} beside its twin: {}", String::from_utf8_lossy(&out.stderr));
        }
    });
    let left = d.ok(&["ps", "-a", "-q"]);
    assert!(racing.iter().all(|id| !left.contains(id.as_str())), "{left}");

    // Teardown, idempotent.
    d.ok(&["stop", &httpd]);
    d.ok(&["rm", &httpd]);
    d.ok(&["stopp", &web]);
    d.ok(&["stopp", &web]);
    let heir = d.ok(&["runp", &heir_pod]).trim().to_string();
    d.ok(&["rmp", "-f", &heir]);
    // A stopped pod gave its address back: it reports none (a new pod may hold it).
    let stopped: Value = serde_json::from_str(&d.ok(&["inspectp", &web])).unwrap();
    assert_eq!(stopped["status"]["state"], "SANDBOX_NOTREADY", "{stopped}");
    assert!(inspect["status"]["network"]["ip"].as_str().is_some_and(|ip| !ip.is_empty()), "it had one while ready");
    assert_eq!(stopped["status"]["network"]["ip"].as_str().unwrap_or_default(), "", "{stopped}");
    d.ok(&["rmp", &web]);
    d.ok(&["rmp", "-f", &client]);
    assert!(!d.ok(&["pods", "-q"]).contains(&web));
    d.ok(&["rmi", "minipod.test/busybox:1"]);
    assert!(!d.ok(&["images"]).contains("minipod.test/busybox"));

    // SIGTERM stops the daemon although a client (as a kubelet does) keeps an idle
    // HTTP/2 connection open: a graceful stop alone would wait for it forever.
    let mut idle = std::os::unix::net::UnixStream::connect(&d.sock).unwrap();
    idle.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0").unwrap();
    let mut child = d.child.take().unwrap();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(30);
    let exited = loop {
        match child.try_wait().unwrap() {
            Some(status) => break Some(status),
            None if Instant::now() > deadline => break None,
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    if exited.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    assert!(exited.is_some_and(|s| s.success()), "the daemon did not stop on SIGTERM: {exited:?}");
    drop(idle);
}

/// One HTTP/1.1 exchange on a fresh connection: (status, headers, body).
fn http(addr: &str, method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, Vec<(String, String)>, Vec<u8>) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(raw.len());
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|c| c.parse().ok()).unwrap_or(0);
    let headers = lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string())).collect();
    (status, headers, raw.get(split + 4..).unwrap_or_default().to_vec())
}

/// The image of an OCI layout as a registry serves it: its manifest and every blob.
struct LayoutImage {
    manifest_digest: String,
    manifest: Vec<u8>,
    config: String,
    layers: Vec<String>,
    blobs: std::collections::BTreeMap<String, Vec<u8>>,
}

impl LayoutImage {
    fn read(layout: &Path) -> Self {
        let blob = |digest: &str| std::fs::read(layout.join("blobs/sha256").join(digest.trim_start_matches("sha256:"))).unwrap();
        let index: Value = serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
        let manifest_digest = index["manifests"][0]["digest"].as_str().unwrap().to_string();
        let manifest = blob(&manifest_digest);
        let parsed: Value = serde_json::from_slice(&manifest).unwrap();
        let config = parsed["config"]["digest"].as_str().unwrap().to_string();
        let layers: Vec<String> = parsed["layers"].as_array().unwrap().iter().map(|l| l["digest"].as_str().unwrap().to_string()).collect();
        let blobs = std::iter::once(&config).chain(&layers).map(|d| (d.clone(), blob(d))).collect();
        LayoutImage { manifest_digest, manifest, config, layers, blobs }
    }
}

/// Pushes the image of an OCI layout to `repo:tag` on a registry, blob by blob, with
/// `extra` headers (credentials) on every request.
fn push_layout(addr: &str, layout: &Path, repo: &str, tag: &str, extra: &[(&str, &str)]) {
    let image = LayoutImage::read(layout);
    let manifest_bytes = image.manifest.clone();
    for (d, blob) in &image.blobs {
        let (code, headers, _) = http(addr, "POST", &format!("/v2/{repo}/blobs/uploads/"), extra, b"");
        assert_eq!(code, 202, "starting an upload of {d}");
        let location = headers.iter().find(|(k, _)| k == "location").map(|(_, v)| v.clone()).unwrap();
        let target = location.split_once(addr).map(|(_, t)| t.to_string()).unwrap_or(location);
        let sep = if target.contains('?') { '&' } else { '?' };
        let (code, _, body) = http(
            addr,
            "PUT",
            &format!("{target}{sep}digest={d}"),
            &[extra, &[("Content-Type", "application/octet-stream")]].concat(),
            blob,
        );
        assert_eq!(code, 201, "uploading {d}: {}", String::from_utf8_lossy(&body));
    }
    let (code, _, body) = http(
        addr,
        "PUT",
        &format!("/v2/{repo}/manifests/{tag}"),
        &[extra, &[("Content-Type", "application/vnd.oci.image.manifest.v1+json")]].concat(),
        &manifest_bytes,
    );
    assert_eq!(code, 201, "pushing the manifest: {}", String::from_utf8_lossy(&body));
}

/// Debian's docker-registry on a loopback port, storing under the test's dir.
struct Registry(Child, String);

/// The test registry's one user, and the bcrypt hash of its password for htpasswd.
const REGISTRY_USER: &str = "minipod";
const REGISTRY_PASSWORD: &str = "s3cret-test";
const REGISTRY_HTPASSWD: &str = "minipod:$2b$05$ddf2GR.tjD.hQ3g9jLrU1OVOKrsdpX7J1j4gVjGKTPy.wMKpmnNhG";

impl Registry {
    /// With `auth`, only [`REGISTRY_USER`] may pull or push (HTTP basic).
    fn start(dir: &Path, auth: bool) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        Self::start_in(dir, auth, None, format!("127.0.0.1:{port}"))
    }

    /// On `addr` inside the network namespace `ns` (the test's own when None).
    fn start_in(dir: &Path, auth: bool, ns: Option<&Path>, addr: String) -> Self {
        let bin = Path::new("/opt/minipod-test/docker-registry/usr/bin/docker-registry");
        assert!(bin.exists(), "{} is missing: run scripts/setup.sh", bin.display());
        let cfg = dir.join("registry.yml");
        let mut yaml = format!(
            "version: 0.1\nlog: {{level: error}}\nstorage: {{filesystem: {{rootdirectory: {}}}}}\nhttp: {{addr: {addr}, secret: minipod-test}}\n",
            dir.join("registry").display()
        );
        if auth {
            let htpasswd = dir.join("htpasswd");
            std::fs::write(&htpasswd, format!("{REGISTRY_HTPASSWD}\n")).unwrap();
            yaml.push_str(&format!("auth: {{htpasswd: {{realm: minipod-test, path: {}}}}}\n", htpasswd.display()));
        }
        std::fs::write(&cfg, yaml).unwrap();
        // nsenter execs the registry: the child is the registry itself.
        let mut cmd = match ns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", ns.display())).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let child = cmd.arg("serve").arg(&cfg).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        let r = Registry(child, addr);
        let deadline = Instant::now() + Duration::from_secs(15);
        // 401 is an answer too: the registry asks for credentials.
        while in_netns(ns, || std::net::TcpStream::connect(&r.1).is_err() || ![200, 401].contains(&http(&r.1, "GET", "/v2/", &[], b"").0)) {
            assert!(Instant::now() < deadline, "the registry never answered on {}", r.1);
            std::thread::sleep(Duration::from_millis(50));
        }
        r
    }
}

/// `f` on a thread inside the network namespace `ns` (the test's own when None).
fn in_netns<T: Send>(ns: Option<&Path>, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            if let Some(ns) = ns {
                let file = std::fs::File::open(ns).unwrap();
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            }
            f()
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn crictl_pulls_from_a_registry_on_loopback() {
    need_root();
    let node = TestNode::new("cripull");
    let h = Harness::new("cri-pull");
    let layout = h.base.join("layout");
    minipod_runtime::busybox::write_oci_layout(&layout, "minipod.test/busybox:1").unwrap();
    let registry = Registry::start(&h.base, false);
    push_layout(&registry.1, &layout, "test/busybox", "1", &[]);
    // A registry that exists only through its mirrors: the first mirror refuses
    // connections, the second is the test's registry. 127.0.0.2:1 itself refuses too,
    // so a pull that wrongly skipped the mirrors fails instead of leaving the machine.
    let mirrored = "127.0.0.2:1";
    let d = Daemon::start_with(h, &node.node_ns(), &["--registry-mirror".into(), format!("{mirrored}=127.0.0.1:1,{}", registry.1)]);
    let reference = format!("{}/test/busybox:1", registry.1);
    let pulled = d.ok(&["pull", &reference]);
    assert!(pulled.contains("Image is up to date for sha256:"), "{pulled}");
    let images = d.ok(&["images"]);
    assert!(images.contains(&format!("{}/test/busybox", registry.1)), "{images}");
    // Pulling again is cheap and gives the same image.
    assert_eq!(d.ok(&["pull", &reference]), pulled);
    assert!(!d.crictl(&["pull", &format!("{}/test/nosuch:1", registry.1)]).status.success());
    // Through the mirrors: the same image, under the name it was asked by.
    assert_eq!(d.ok(&["pull", &format!("{mirrored}/test/busybox:1")]), pulled);
    assert!(d.ok(&["images"]).contains(&format!("{mirrored}/test/busybox")));
    let err = d.crictl(&["pull", &format!("{mirrored}/test/nosuch:1")]);
    let err = String::from_utf8_lossy(&err.stderr);
    assert!(err.contains("127.0.0.1:1") && err.contains(&registry.1) && err.contains(mirrored), "every source is named: {err}");

    let logs = d.h.base.join("logs");
    let pod = d.write("pod.json", &pod_json("pulled", &logs, json!([])));
    let id = d.ok(&["runp", &pod]).trim().to_string();
    let mut cfg = ctr_json("main", &["sleep", "300"]);
    cfg["image"]["image"] = json!(reference);
    let cfg = d.write("ctr.json", &cfg);
    let c = d.ok(&["create", &id, &cfg, &pod]).trim().to_string();
    d.ok(&["start", &c]);
    assert_eq!(d.ok(&["exec", "-s", &c, "cat", "/etc/image-release"]).trim(), "minipod test image");
    d.ok(&["rmp", "-f", &id]);
}

/// A registry that takes only [`REGISTRY_USER`], holding the test image as
/// `private/busybox:1`; with the image's layout and the user's HTTP basic credentials.
fn private_registry(h: &Harness) -> (Registry, std::path::PathBuf, String) {
    use base64::Engine;
    let layout = h.base.join("layout");
    minipod_runtime::busybox::write_oci_layout(&layout, "minipod.test/busybox:1").unwrap();
    let registry = Registry::start(&h.base, true);
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{REGISTRY_USER}:{REGISTRY_PASSWORD}"));
    push_layout(&registry.1, &layout, "private/busybox", "1", &[("Authorization", &format!("Basic {basic}"))]);
    (registry, layout, basic)
}

/// A registry on loopback that serves one image, keeps every request it is sent, and
/// may lack one of its blobs. Without a token it serves anyone, though its `/v2/`
/// invites HTTP basic credentials (as a pull-through mirror in front of a private
/// registry may); with one it serves only requests that carry it as a bearer token.
struct ImageServer {
    addr: String,
    seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl ImageServer {
    fn start(image: LayoutImage, repo: &str, tag: &str, lacking: Option<&str>, token: Option<&str>) -> Self {
        use std::io::{BufRead, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (seen, stop) =
            (std::sync::Arc::<std::sync::Mutex<Vec<String>>>::default(), std::sync::Arc::<std::sync::atomic::AtomicBool>::default());
        let (log, stopped) = (seen.clone(), stop.clone());
        let (manifests, blobs, lacking) = (format!("/v2/{repo}/manifests/"), format!("/v2/{repo}/blobs/"), lacking.map(str::to_string));
        let tag = tag.to_string();
        let (bearer, challenge) = match token {
            Some(t) => (Some(format!("authorization: bearer {}", t.to_ascii_lowercase())), format!("Bearer realm=\"http://{addr}/token\"")),
            None => (None, "Basic realm=\"mirror\"".to_string()),
        };
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                if stopped.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                let mut head = String::new();
                let mut reader = std::io::BufReader::new(&conn);
                while reader.read_line(&mut head).is_ok_and(|n| n > 0) && !head.ends_with("\r\n\r\n") {}
                log.lock().unwrap().push(head.clone());
                let mut words = head.split_whitespace();
                let (method, path) =
                    (words.next().unwrap_or_default(), words.next().unwrap_or_default().split('?').next().unwrap_or_default());
                let unknown =
                    (404, "application/json", br#"{"errors":[{"code":"BLOB_UNKNOWN","message":"not on this mirror"}]}"#.to_vec(), None);
                let unauthorized = bearer.as_ref().is_some_and(|b| !head.to_ascii_lowercase().lines().any(|l| l.trim() == b));
                let (code, kind, body, digest) = if path == "/v2/" || unauthorized {
                    (401, "application/json", b"{}".to_vec(), None)
                } else if let Some(r) = path.strip_prefix(&manifests) {
                    if r == tag || r == image.manifest_digest {
                        (200, "application/vnd.oci.image.manifest.v1+json", image.manifest.clone(), Some(image.manifest_digest.clone()))
                    } else {
                        unknown
                    }
                } else {
                    match path.strip_prefix(&blobs).and_then(|d| image.blobs.get(d).map(|b| (d, b))) {
                        Some((d, b)) if lacking.as_deref() != Some(d) => (200, "application/octet-stream", b.clone(), Some(d.to_string())),
                        _ => unknown,
                    }
                };
                let mut reply = format!(
                    "HTTP/1.1 {code} X\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nDocker-Distribution-API-Version: registry/2.0\r\nConnection: close\r\n",
                    body.len()
                );
                if code == 401 {
                    reply.push_str(&format!("WWW-Authenticate: {challenge}\r\n"));
                }
                if let Some(d) = digest {
                    reply.push_str(&format!("Docker-Content-Digest: {d}\r\n"));
                }
                reply.push_str("\r\n");
                let _ = conn.write_all(reply.as_bytes());
                if method != "HEAD" {
                    let _ = conn.write_all(&body);
                }
            }
        });
        ImageServer { addr, seen, stop }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for ImageServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        // Wakes the accept so that the thread sees the flag and ends.
        let _ = std::net::TcpStream::connect(&self.addr);
    }
}

/// A loopback port that never completes a connection: its listen queue (of one) is
/// full, so the kernel drops every SYN, as a mirror behind a silent firewall does.
struct SilentPort {
    addr: String,
    _listener: std::net::TcpListener,
    _filler: std::net::TcpStream,
}

impl SilentPort {
    fn new() -> Self {
        use std::os::fd::FromRawFd;
        // SAFETY: a new socket, owned by the listener from here on.
        let listener = unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
            std::net::TcpListener::from_raw_fd(fd)
        };
        let fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes([127, 0, 0, 1]) },
            sin_zero: [0; 8],
        };
        // SAFETY: `sa` is a valid sockaddr_in of the size given.
        let bound = unsafe { libc::bind(fd, (&sa as *const libc::sockaddr_in).cast(), std::mem::size_of::<libc::sockaddr_in>() as u32) };
        assert_eq!(bound, 0, "bind: {}", std::io::Error::last_os_error());
        // SAFETY: listening on our own bound socket.
        assert_eq!(unsafe { libc::listen(fd, 0) }, 0, "listen: {}", std::io::Error::last_os_error());
        let at = listener.local_addr().unwrap();
        let filler = std::net::TcpStream::connect(at).unwrap();
        // The control: a further connection does not complete.
        assert!(std::net::TcpStream::connect_timeout(&at, Duration::from_millis(1500)).is_err(), "{at} still completes connections");
        SilentPort { addr: at.to_string(), _listener: listener, _filler: filler }
    }
}

/// A pull through mirrors: no mirror sees the credentials, though one asks for them;
/// a layer the serving mirror lacks comes from the next source; a source that never
/// completes a connection is given up after 10 s, once a pull (its later requests skip
/// it). Each pull is given 25 s, room for a loaded machine over the 10 s wait; TCP on
/// its own would try one connect for two minutes.
#[test]
fn mirrors_never_see_credentials_and_a_pull_goes_past_a_lacking_or_silent_one() {
    need_root();
    let node = TestNode::new("crimirror");
    let h = Harness::new("cri-mirror");
    let (registry, layout, basic) = private_registry(&h);
    let image = LayoutImage::read(&layout);
    assert_eq!(image.layers.len(), 2, "the test image has two layers");
    let (served, lacking) = (image.layers[0].clone(), image.layers[1].clone());
    let config = image.config.clone();
    let mirror = ImageServer::start(image, "private/busybox", "1", Some(&lacking), None);
    let silent = SilentPort::new();
    let mirrors = format!("{}={},{}", registry.1, mirror.addr, silent.addr);
    let d = Daemon::start_with(h, &node.node_ns(), &["--registry-mirror".into(), mirrors]);
    let reference = format!("{}/private/busybox:1", registry.1);
    let creds = format!("{REGISTRY_USER}:{REGISTRY_PASSWORD}");
    let pull = |reference: &str| {
        let out = d.crictl_within(Some(25), &["pull", "--creds", &creds, reference]);
        assert_ne!(out.status.code(), Some(124), "the pull of {reference} was still going after 25 s");
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
    };
    let (ok, pulled) = pull(&reference);
    assert!(ok && pulled.contains("Image is up to date for sha256:"), "{pulled}");
    assert!(d.ok(&["images"]).contains("private/busybox"));
    // What the mirror was asked: the manifest, the config and the first layer, which it
    // served, and the second, which it lacks; never with credentials.
    let seen = mirror.seen();
    let asked = |what: &str| seen.iter().any(|r| r.lines().next().is_some_and(|l| l.starts_with("GET ") && l.contains(what)));
    assert!(asked("/v2/private/busybox/manifests/1 "), "the mirror was not asked for the manifest: {seen:?}");
    for blob in [&config, &served, &lacking] {
        assert!(asked(&format!("/v2/private/busybox/blobs/{blob} ")), "the mirror was not asked for {blob}: {seen:?}");
    }
    for r in &seen {
        assert!(
            !r.to_ascii_lowercase().contains("authorization:") && !r.contains(REGISTRY_PASSWORD) && !r.contains(&basic),
            "the mirror saw credentials: {r}"
        );
    }
    // What no source has: the pull ends, and names every source and what each said.
    let (ok, err) = pull(&format!("{}/private/nosuch:1", registry.1));
    assert!(!ok, "pulled what no source has: {err}");
    for source in [&mirror.addr, &silent.addr, &registry.1] {
        assert!(err.contains(source.as_str()), "{source} is not named: {err}");
    }
}

/// A registry off loopback speaks plain HTTP only when `--insecure-registry` names it;
/// without, the pull asks it for HTTPS and fails. Both in a namespace of the test's,
/// the registry on a documentation address there.
#[test]
fn an_insecure_registry_is_spoken_to_over_plain_http_and_only_when_named() {
    need_root();
    let node = TestNode::new("insecure");
    let ns = node.node_ns();
    support::node::sh(&ns, "ip addr add 192.0.2.80/32 dev lo");
    let h = Harness::new("insecure");
    let layout = h.base.join("layout");
    minipod_runtime::busybox::write_oci_layout(&layout, "minipod.test/busybox:1").unwrap();
    let registry = Registry::start_in(&h.base, false, Some(&ns), "192.0.2.80:5000".into());
    in_netns(Some(&ns), || push_layout(&registry.1, &layout, "test/busybox", "1", &[]));
    let reference = format!("{}/test/busybox:1", registry.1);
    let images = h.base.join("images");
    let pull = |extra: &[&str]| {
        let bin = support::minipod_bin();
        let args = [
            &[bin.to_str().unwrap(), "--root", h.root.to_str().unwrap(), "image", "--images", images.to_str().unwrap(), "pull"],
            extra,
            &[&reference],
        ]
        .concat();
        let out = TestNode::in_ns(&ns, &args);
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
    };
    let (ok, said) = pull(&[]);
    assert!(!ok && said.contains("https://192.0.2.80:5000/"), "without the flag the pull must ask for HTTPS and fail: {said}");
    let (ok, said) = pull(&["--insecure-registry", "192.0.2.80:5000"]);
    assert!(ok, "{said}");
    let listed = h.minipod(&["image", "--images", images.to_str().unwrap(), "ls"]);
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains("192.0.2.80:5000/test/busybox"),
        "{}",
        String::from_utf8_lossy(&listed.stdout)
    );
}

/// Execs hold a bounded share of the daemon's threads: 100 ExecSyncs at once take it
/// no further than its 80 blocking threads and one output reader for each of the 32
/// ExecSyncs that may run at once (the daemon's BLOCKING_THREADS and EXEC_SYNC); the
/// rest wait their turn and all succeed, and pod work gets threads meanwhile. One
/// whose timeout passes while it waits fails, and is not started.
#[test]
fn execs_wait_their_turn_on_a_bounded_share_of_threads_and_pod_work_still_runs() {
    need_root();
    let node = TestNode::new("criexecs");
    let d = Daemon::start(Harness::new("cri-execs"), &node.node_ns());
    d.import_busybox();
    let logs = d.h.base.join("logs");
    let pod_cfg = d.write("pod.json", &pod_json("execs", &logs, json!([])));
    let pod = d.ok(&["runp", &pod_cfg]).trim().to_string();
    let ctr = d.ok(&["create", &pod, &d.write("sleeper.json", &ctr_json("sleeper", &["sleep", "600"])), &pod_cfg]).trim().to_string();
    d.ok(&["start", &ctr]);
    let status = format!("/proc/{}/status", d.child.as_ref().map(Child::id).unwrap_or_default());
    let threads = || -> usize {
        let s = std::fs::read_to_string(&status).unwrap_or_else(|e| panic!("{status}: {e}"));
        s.lines()
            .find_map(|l| l.strip_prefix("Threads:"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no Threads in {status}"))
    };
    // Whatever else runs: the main thread, the two async workers, the blocking threads
    // the setup left (they linger for 10 s and are reused).
    let before = threads();
    const EXECS: usize = 100;
    const EXEC_SYNC: usize = 32;
    let done = std::sync::atomic::AtomicUsize::new(0);
    let (peak, outcomes) = std::thread::scope(|scope| {
        let execs: Vec<_> = (0..EXECS)
            .map(|_| {
                let (d, ctr, done) = (&d, &ctr, &done);
                scope.spawn(move || {
                    let out = d.crictl_within(Some(120), &["--timeout", "90s", "exec", "-s", "--timeout", "60", ctr, "sleep", "4"]);
                    done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    out
                })
            })
            .collect();
        // The control: the execs' share fills (each running exec is a pool thread and
        // its output's reader).
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut peak = threads();
        while peak < before + EXEC_SYNC {
            assert!(Instant::now() < deadline, "the execs never ran 32 at once: {peak} threads, {before} before");
            std::thread::sleep(Duration::from_millis(20));
            peak = peak.max(threads());
        }
        // Pod work while the execs' share is full.
        let other = d.write("other.json", &pod_json("other", &logs, json!([])));
        let other = d.ok(&["runp", &other]).trim().to_string();
        d.ok(&["stopp", &other]);
        d.ok(&["rmp", &other]);
        while done.load(std::sync::atomic::Ordering::Relaxed) < EXECS {
            peak = peak.max(threads());
            std::thread::sleep(Duration::from_millis(20));
        }
        (peak, execs.into_iter().map(|e| e.join().unwrap()).collect::<Vec<_>>())
    });
    for out in &outcomes {
        assert!(out.status.success(), "an exec failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    assert!(peak <= before + 80 + EXEC_SYNC, "{peak} threads at the peak, {before} before: the execs were not bounded");
    // The share held by 32 long execs, and one more whose timeout passes while it waits
    // for a turn: the wait is part of its timeout, so it fails unstarted while the 32
    // still run, rather than when a turn frees (or run late).
    let tag = format!("held-{}", std::process::id());
    // The execs' shells in the container (not the crictl clients that name them too).
    let shells = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter(|p| {
                std::fs::read(p.path().join("cmdline"))
                    .is_ok_and(|c| c.starts_with(b"sh\0-c\0") && String::from_utf8_lossy(&c).contains(&tag))
            })
            .map(|p| p.path())
            .collect()
    };
    let holding = || shells().len();
    // Each holds its turn until the test lets it go (a file in the container), however
    // long the 32 take to start on a loaded machine.
    let go = format!("/tmp/go-{tag}");
    let script = format!("i=0; until [ -e {go} ] || [ $i -ge 100 ]; do sleep 1; i=$((i+1)); done; echo {tag}");
    std::thread::scope(|scope| {
        let holders: Vec<_> = (0..EXEC_SYNC)
            .map(|_| scope.spawn(|| d.crictl_within(Some(120), &["--timeout", "90s", "exec", "-s", &ctr, "sh", "-c", &script])))
            .collect();
        let deadline = Instant::now() + Duration::from_secs(60);
        while holding() < EXEC_SYNC {
            assert!(Instant::now() < deadline, "the 32 long execs never all ran: {} did", holding());
            std::thread::sleep(Duration::from_millis(50));
        }
        let late = d.crictl_within(Some(60), &["--timeout", "30s", "exec", "-s", "--timeout", "2", &ctr, "echo", "ran-late"]);
        let still = holding();
        let (out, err) = (String::from_utf8_lossy(&late.stdout), String::from_utf8_lossy(&late.stderr));
        assert!(
            !late.status.success() && err.contains("timeout of 2s passed while it waited for a turn") && !out.contains("ran-late"),
            "{out}{err}"
        );
        assert_eq!(still, EXEC_SYNC, "the late exec was answered only once a turn had freed");
        // Through a holder's view of the container's root: every exec turn is taken.
        let holder = shells().into_iter().next().unwrap();
        std::fs::write(holder.join("root").join(go.trim_start_matches('/')), "").unwrap();
        for h in holders {
            let out = h.join().unwrap();
            assert!(out.status.success(), "a long exec failed: {}", String::from_utf8_lossy(&out.stderr));
        }
    });
}

/// A protobuf length-delimited field: what a PullImageRequest is made of.
fn proto_field(number: u8, bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![(number << 3) | 2];
    let mut len = bytes.len();
    while len >= 0x80 {
        out.push((len as u8 & 0x7f) | 0x80);
        len >>= 7;
    }
    out.push(len as u8);
    out.extend_from_slice(bytes);
    out
}

/// PullImage's `auth.registry_token` (which crictl has no flag for) reaches the
/// registry as a bearer token, and only the right one pulls.
#[test]
fn a_registry_token_is_sent_as_the_bearer_token() {
    need_root();
    let node = TestNode::new("critoken");
    let h = Harness::new("cri-token");
    let layout = h.base.join("layout");
    minipod_runtime::busybox::write_oci_layout(&layout, "minipod.test/busybox:1").unwrap();
    let registry = ImageServer::start(LayoutImage::read(&layout), "private/busybox", "1", None, Some("tok-3141"));
    let d = Daemon::start(h, &node.node_ns());
    let reference = format!("{}/private/busybox:1", registry.addr);
    let pull = |token: Option<&str>| {
        let mut req = proto_field(1, &proto_field(1, reference.as_bytes()));
        if let Some(t) = token {
            req.extend(proto_field(2, &proto_field(6, t.as_bytes())));
        }
        d.raw_grpc("/runtime.v1.ImageService/PullImage", Some(&req))
    };
    let listed = || d.ok(&["images"]).contains("private/busybox");
    for refused in [None, Some("tok-wrong")] {
        let answer = pull(refused);
        let said = |w: &str| answer.contains(w);
        assert!(said("grpc-status: 14") && (said("token%20service%20refused") || said("not%20authorized")), "{refused:?}: {answer}");
        assert!(refused.is_some() || said("refused%20an%20anonymous%20pull%20(give%20credentials"), "{answer}");
        assert!(!listed(), "pulled with {refused:?}");
    }
    pull(Some("tok-3141"));
    assert!(listed(), "the right token did not pull");
    let seen = registry.seen();
    assert!(seen.iter().any(|r| r.to_ascii_lowercase().contains("authorization: bearer tok-3141")), "{seen:?}");
}

#[test]
fn crictl_pulls_with_the_credentials_a_registry_asks_for() {
    need_root();
    let node = TestNode::new("criauth");
    let h = Harness::new("cri-auth");
    let (registry, _, basic) = private_registry(&h);
    let d = Daemon::start(h, &node.node_ns());
    let reference = format!("{}/private/busybox:1", registry.1);
    let refused = d.crictl(&["pull", &reference]);
    assert!(!refused.status.success(), "pulled without credentials");
    let wrong = d.crictl(&["pull", "--creds", &format!("{REGISTRY_USER}:wrong"), &reference]);
    assert!(!wrong.status.success(), "pulled with a wrong password");
    assert!(!d.ok(&["images"]).contains("private/busybox"));
    let pulled = d.ok(&["pull", "--creds", &format!("{REGISTRY_USER}:{REGISTRY_PASSWORD}"), &reference]);
    assert!(pulled.contains("Image is up to date for sha256:"), "{pulled}");
    // A Docker config's `auth` (base64 of user:password), as image pull secrets carry it.
    d.ok(&["rmi", &reference]);
    assert!(d.ok(&["pull", "--auth", &basic, &reference]).contains("Image is up to date"));
    assert!(d.ok(&["images"]).contains("private/busybox"));
    let bad = d.crictl(&["pull", "--auth", "not base64!", &reference]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("InvalidArgument"), "{}", String::from_utf8_lossy(&bad.stderr));
}

/// StopContainer sends TERM, and KILLs what still runs when its timeout is up; the List
/// calls' filters (state, labels, pod) select just what they name, alone and together.
#[test]
fn stop_kills_after_its_timeout_and_list_filters_select_what_they_name() {
    need_root();
    let node = TestNode::new("cristop");
    let d = Daemon::start(Harness::new("cri-stop"), &node.node_ns());
    d.import_busybox();
    let logs = d.h.base.join("logs");
    let (pod_a, pod_b) = (d.write("a.json", &pod_json("fa", &logs, json!([]))), d.write("b.json", &pod_json("fb", &logs, json!([]))));
    let (a, b) = (d.ok(&["runp", &pod_a]).trim().to_string(), d.ok(&["runp", &pod_b]).trim().to_string());
    let run = |pod: &str, pod_cfg: &str, name: &str, cmd: &[&str], tier: &str| -> String {
        let mut cfg = ctr_json(name, cmd);
        cfg["labels"] = json!({ "tier": tier });
        let id = d.ok(&["create", pod, &d.write(&format!("{name}.json"), &cfg), pod_cfg]).trim().to_string();
        d.ok(&["start", &id]);
        id
    };
    let until_ready = |id: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !d.crictl(&["exec", "-s", id, "test", "-e", "/tmp/ready"]).status.success() {
            assert!(Instant::now() < deadline, "{id} never got ready");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let polite = run(&a, &pod_a, "polite", &["sh", "-c", "trap 'exit 7' TERM; touch /tmp/ready; while true; do sleep 0.1; done"], "front");
    let stubborn = run(&b, &pod_b, "stubborn", &["sh", "-c", "trap '' TERM; touch /tmp/ready; while true; do sleep 0.1; done"], "back");
    let runner = run(&a, &pod_a, "runner", &["sleep", "300"], "front");
    until_ready(&polite);
    until_ready(&stubborn);
    // TERM first: the polite one ends with its own code, well before its timeout.
    d.ok(&["stop", "-t", "15", &polite]);
    assert_eq!(d.wait_exited(&polite)["status"]["exitCode"], 7, "TERM was not sent first");
    // Ignored TERM: KILL when the timeout is up (crictl gives the call 20 s).
    d.ok(&["stop", "-t", "2", &stubborn]);
    let killed = d.wait_exited(&stubborn);
    assert_eq!((&killed["status"]["state"], &killed["status"]["exitCode"]), (&json!("CONTAINER_EXITED"), &json!(137)), "{killed}");

    let ids = |args: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = d.ok(&[args, &["-q", "--no-trunc"]].concat()).split_whitespace().map(str::to_string).collect();
        v.sort();
        v
    };
    let sorted = |v: &[&String]| -> Vec<String> {
        let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
        v.sort();
        v
    };
    assert_eq!(ids(&["ps"]), sorted(&[&runner]), "running ones by default");
    assert_eq!(ids(&["ps", "-a"]), sorted(&[&polite, &stubborn, &runner]));
    assert_eq!(ids(&["ps", "-a", "--state", "exited"]), sorted(&[&polite, &stubborn]));
    assert_eq!(ids(&["ps", "-a", "--label", "tier=back"]), sorted(&[&stubborn]));
    assert_eq!(ids(&["ps", "-a", "--pod", &a]), sorted(&[&polite, &runner]));
    assert_eq!(ids(&["ps", "-a", "--pod", &a, "--label", "tier=front", "--state", "exited"]), sorted(&[&polite]));
    assert_eq!(ids(&["ps", "-a", "--label", "tier=nosuch"]), Vec::<String>::new());
    d.ok(&["stopp", &b]);
    assert_eq!(ids(&["pods"]), sorted(&[&a, &b]));
    assert_eq!(ids(&["pods", "--state", "ready"]), sorted(&[&a]));
    assert_eq!(ids(&["pods", "--state", "notready"]), sorted(&[&b]));
    assert_eq!(ids(&["pods", "--label", "app=fb"]), sorted(&[&b]));
    assert_eq!(ids(&["pods", "--label", "app=fb", "--state", "ready"]), Vec::<String>::new());
}

#[test]
fn crictl_events_streams_each_containers_lifecycle_once_in_order() {
    need_root();
    use std::io::BufRead;
    let node = TestNode::new("crievents");
    let d = Daemon::start(Harness::new("cri-events"), &node.node_ns());
    d.import_busybox();
    let ep = format!("unix://{}", d.sock.display());
    // The event stream as a kubelet's evented PLEG reads it; one JSON object per event.
    let mut watcher = Command::new(support::cri::crictl_bin())
        .args(["--runtime-endpoint", &ep, "--image-endpoint", &ep, "--config", "/dev/null", "events", "-o", "json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    struct Kill(Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = watcher.stdout.take().unwrap();
    let _watcher = Kill(watcher);
    let (tx, rx) = std::sync::mpsc::channel::<Value>();
    std::thread::spawn(move || {
        // crictl prints each event as indented JSON: gather lines until one parses.
        let mut buf = String::new();
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            buf.push_str(&line);
            if let Ok(v) = serde_json::from_str::<Value>(&buf) {
                buf.clear();
                if tx.send(v).is_err() {
                    return;
                }
            }
        }
    });
    // The stream is open once the daemon has a listener; give crictl its start.
    std::thread::sleep(Duration::from_millis(500));
    let logs = d.h.base.join("logs");
    let pod = d.write("pod.json", &pod_json("events", &logs, json!([])));
    let id = d.ok(&["runp", &pod]).trim().to_string();
    let job = d.write("job.json", &ctr_json("job", &["sh", "-c", "sleep 1; exit 3"]));
    let c = d.ok(&["create", &id, &job, &pod]).trim().to_string();
    d.ok(&["start", &c]);
    // It exits by itself: the sweep tells it.
    d.wait_exited(&c);
    d.ok(&["rm", &c]);
    let mut kinds = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while kinds.len() < 4 && Instant::now() < deadline {
        if let Ok(e) = rx.recv_timeout(Duration::from_millis(200)) {
            if e["containerId"] == c.as_str() {
                assert_eq!(e["podSandboxStatus"]["id"], id.as_str(), "{e}");
                // The enum's zero (created) may be left out of the JSON.
                kinds.push(e["containerEventType"].as_str().unwrap_or("CONTAINER_CREATED_EVENT").to_string());
            }
        }
    }
    assert_eq!(kinds, ["CONTAINER_CREATED_EVENT", "CONTAINER_STARTED_EVENT", "CONTAINER_STOPPED_EVENT", "CONTAINER_DELETED_EVENT"]);
    d.ok(&["rmp", "-f", &id]);
}

/// Sends the pod CIDR as a kubelet does; returns the response's headers and trailers.
fn update_pod_cidr(d: &Daemon, cidr: &str) -> String {
    // UpdateRuntimeConfigRequest { runtime_config { network_config { pod_cidr } } }.
    let mut inner = vec![0x0a, cidr.len() as u8];
    inner.extend_from_slice(cidr.as_bytes());
    let mut mid = vec![0x0a, inner.len() as u8];
    mid.extend_from_slice(&inner);
    let mut msg = vec![0x0a, mid.len() as u8];
    msg.extend_from_slice(&mid);
    d.raw_grpc("/runtime.v1.RuntimeService/UpdateRuntimeConfig", Some(&msg))
}

/// Two daemons as two nodes of a cluster (`serve --overlay-uplink --overlay-address
/// --cluster-peer`): once the kubelet's pod CIDRs arrive, a pod of one reaches a pod of
/// the other by its address, on links that fit the tunnel; a restarted daemon makes
/// its tunnel and peers again (deleted while it was down) before any kubelet call.
#[test]
fn daemons_given_cluster_peers_carry_their_pod_cidrs_over_the_overlay() {
    need_root();
    let ul = support::node::Underlay::new();
    let (n1, n2) = (TestNode::new("criov1"), TestNode::new("criov2"));
    let (a1, a2) = (ul.plug(&n1, 31, 1500), ul.plug(&n2, 32, 1500));
    let args = |me: std::net::Ipv4Addr, peer: std::net::Ipv4Addr, cidr: &str| -> Vec<String> {
        ["--overlay-uplink", "ul0", "--overlay-address", &me.to_string(), "--vni", "42", "--cluster-peer", &format!("{peer}={cidr}")]
            .map(String::from)
            .to_vec()
    };
    let mut d1 = Daemon::start_with(Harness::new("cri-ov1"), &n1.node_ns(), &args(a1, a2, "10.244.72.0/24"));
    let d2 = Daemon::start_with(Harness::new("cri-ov2"), &n2.node_ns(), &args(a2, a1, "10.244.71.0/24"));
    for (d, cidr) in [(&d1, "10.244.71.0/24"), (&d2, "10.244.72.0/24")] {
        let answer = update_pod_cidr(d, cidr);
        assert!(answer.contains("grpc-status: 0"), "{answer}");
        d.import_busybox();
    }
    let logs = d1.h.base.join("logs");
    let web_pod = d2.write("web.json", &pod_json("web", &logs, json!([])));
    let web = d2.ok(&["runp", &web_pod]).trim().to_string();
    let serve = "mkdir /www && echo across > /www/index.html && exec httpd -f -p 80 -h /www";
    let httpd = d2.ok(&["create", &web, &d2.write("httpd.json", &ctr_json("httpd", &["sh", "-c", serve])), &web_pod]).trim().to_string();
    d2.ok(&["start", &httpd]);
    let v: Value = serde_json::from_str(&d2.ok(&["inspectp", &web])).unwrap();
    let web_ip = v["status"]["network"]["ip"].as_str().unwrap().to_string();
    assert!(web_ip.starts_with("10.244.72."), "{web_ip}");
    let client_pod = d1.write("client.json", &pod_json("client", &logs, json!([])));
    let client = d1.ok(&["runp", &client_pod]).trim().to_string();
    let sh = d1.ok(&["create", &client, &d1.write("sh.json", &ctr_json("sh", &["sleep", "300"])), &client_pod]).trim().to_string();
    d1.ok(&["start", &sh]);
    assert_eq!(d1.ok(&["exec", "-s", &sh, "cat", "/sys/class/net/eth0/mtu"]).trim(), "1450", "the uplink's MTU less 50");
    let fetch = |d: &Daemon| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = d.crictl(&["exec", "-s", &sh, "timeout", "3", "wget", "-qO-", &format!("http://{web_ip}/")]);
            if out.status.success() || Instant::now() > deadline {
                return String::from_utf8_lossy(&out.stdout).trim().to_string();
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    assert_eq!(fetch(&d1), "across", "a pod of node 1 reaches a pod of node 2");
    d1.kill(libc::SIGTERM);
    // The tunnel goes while the daemon is down: the restart must put it back.
    support::node::sh(&n1.node_ns(), "ip link del mpvx42");
    d1.spawn();
    let routes = support::node::sh(&n1.node_ns(), "ip route; bridge fdb show dev mpvx42");
    assert!(routes.contains("10.244.72.0/24 via 10.244.72.0 dev mpvx42") && routes.contains(&format!("dst {a2}")), "{routes}");
    assert_eq!(fetch(&d1), "across", "and after node 1's daemon restarted");
    d1.ok(&["rmp", "-f", &client]);
    d2.ok(&["rmp", "-f", &web]);
}

/// The pod CIDR a kubelet sends in UpdateRuntimeConfig (the Node's spec.podCIDR) is the
/// subnet new pods get addresses from, across a daemon restart; another CIDR is refused
/// while a pod holds an address of the first, and taken once none does.
#[test]
fn the_kubelets_pod_cidr_is_the_subnet_of_new_pods() {
    need_root();
    let node = TestNode::new("cricidr");
    let mut d = Daemon::start(Harness::new("cri-cidr"), &node.node_ns());
    d.import_busybox();
    let logs = d.h.base.join("logs");
    let update = update_pod_cidr;
    let ip_of = |d: &Daemon, pod: &str| {
        let v: Value = serde_json::from_str(&d.ok(&["inspectp", pod])).unwrap();
        v["status"]["network"]["ip"].as_str().unwrap().to_string()
    };
    let first = d.write("p1.json", &pod_json("p1", &logs, json!([])));
    let p1 = d.ok(&["runp", &first]).trim().to_string();
    assert!(ip_of(&d, &p1).starts_with("10.88."), "before any pod CIDR: the default network");
    let answer = update(&d, "10.244.7.0/24");
    assert!(answer.contains("grpc-status: 0"), "{answer}");
    let second = d.write("p2.json", &pod_json("p2", &logs, json!([])));
    let p2 = d.ok(&["runp", &second]).trim().to_string();
    assert!(ip_of(&d, &p2).starts_with("10.244.7."), "a new pod is on the node's pod CIDR");
    // Kept across a restart, before the kubelet sends it again.
    d.kill(libc::SIGTERM);
    d.spawn();
    let third = d.write("p3.json", &pod_json("p3", &logs, json!([])));
    let p3 = d.ok(&["runp", &third]).trim().to_string();
    assert!(ip_of(&d, &p3).starts_with("10.244.7."), "still the pod CIDR after a restart");
    // grpc-message is percent-encoded.
    let refused = update(&d, "10.244.8.0/24").replace("%20", " ");
    assert!(refused.contains("grpc-status: 3") && refused.contains("2 pods hold addresses of it"), "{refused}");
    for bad in ["10.244.7.1/24", "fd00::/64", "nonsense"] {
        let refused = update(&d, bad);
        assert!(refused.contains("grpc-status: 3"), "{bad}: {refused}");
    }
    for p in [&p2, &p3] {
        d.ok(&["stopp", p]);
        d.ok(&["rmp", p]);
    }
    assert!(update(&d, "10.244.8.0/24").contains("grpc-status: 0"), "taken once no pod holds the old one");
    let fourth = d.write("p4.json", &pod_json("p4", &logs, json!([])));
    let p4 = d.ok(&["runp", &fourth]).trim().to_string();
    assert!(ip_of(&d, &p4).starts_with("10.244.8."));
    for p in [&p1, &p4] {
        d.ok(&["stopp", p]);
        d.ok(&["rmp", p]);
    }
}
