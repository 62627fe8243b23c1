//! `minipod pod`, `minipod ctr` and `minipod image`: pods, their containers and local
//! images for people. Pods made here outlive the command (scope `default`).

use super::OutputFormat;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use minipod_runtime::embed::Ready;
use minipod_runtime::image::DEFAULT_DIR as DEFAULT_IMAGES;
use minipod_runtime::netstack::{NetworkName, PortMapping, Proto};
use minipod_runtime::pod::{
    Alias, BindMount, ContainerConfig, ContainerName, Hostname, Namespace, PodConfig, PodName, ProcessOverrides, RootfsSource,
};
use minipod_runtime::{Pods, PodsOptions};

/// Options every pod, ctr and image command takes.
#[derive(Args, Debug)]
pub struct Common {
    /// The node's network namespace (a pinned namespace file) for new pods; the current one by default.
    #[arg(long, global = true)]
    netns: Option<PathBuf>,
    /// Image store.
    #[arg(long, global = true, default_value = DEFAULT_IMAGES)]
    images: PathBuf,
    /// Where services' cluster IPs come from.
    #[arg(long, global = true, default_value = minipod_runtime::service::DEFAULT_SERVICE_CIDR)]
    service_cidr: ipnetwork::Ipv4Network,
    /// The DNS domain service names are under, and that pods search.
    #[arg(long, global = true, default_value = minipod_runtime::netstack::DEFAULT_CLUSTER_DOMAIN)]
    cluster_domain: String,
}

#[derive(Args, Debug)]
pub struct PodArgs {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    command: PodCommand,
}

#[derive(Subcommand, Debug)]
enum PodCommand {
    /// Create a pod (namespaces, network, /etc files); prints its id.
    Run(PodRunArgs),
    /// List pods.
    #[command(visible_alias = "list")]
    Ls(Output),
    /// Show a pod and its containers as JSON.
    Inspect { pod: String },
    /// Stop a pod's containers (TERM, then KILL after --timeout) and detach its networks.
    Stop {
        pod: String,
        /// Seconds between TERM and KILL.
        #[arg(long, default_value_t = 10)]
        timeout: u64,
    },
    /// Remove a pod; one with running containers needs --force. Removing a pod that is gone succeeds.
    Rm {
        pod: String,
        #[arg(short, long)]
        force: bool,
    },
}

#[derive(Args, Debug)]
struct Output {
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
    output: OutputFormat,
}

#[derive(Args, Debug)]
struct PodRunArgs {
    name: PodName,
    /// Network to join (repeat for several; the first carries the default route and ports). Default: minipod0.
    #[arg(long)]
    network: Vec<NetworkName>,
    /// Publish a port: HOST_PORT:CONTAINER_PORT[/udp], or HOST_IP:HOST_PORT:CONTAINER_PORT[/udp].
    #[arg(short, long)]
    publish: Vec<String>,
    /// Another DNS name for the pod.
    #[arg(long)]
    alias: Vec<Alias>,
    #[arg(long)]
    hostname: Option<Hostname>,
    /// The Kubernetes namespace, whose services may select the pod.
    #[arg(short, long, default_value = "default")]
    namespace: Namespace,
    /// KEY=VALUE, as Kubernetes labels are (services select pods by them).
    #[arg(short, long)]
    label: Vec<String>,
    /// One PID namespace for all the pod's containers.
    #[arg(long)]
    share_pid: bool,
    /// Declare a port by name, NAME=PORT[/udp], as a Kubernetes container's `ports`
    /// do: a Service's targetPort or a NetworkPolicy's port may give it by name.
    #[arg(long, value_name = "NAME=PORT[/udp]")]
    named_port: Vec<minipod_runtime::pod::NamedPort>,
}

#[derive(Args, Debug)]
pub struct CtrArgs {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    command: CtrCommand,
}

#[derive(Subcommand, Debug)]
enum CtrCommand {
    /// Create and start a container in a pod; prints its id (with --wait, waits and exits with its code).
    Run(CtrRunArgs),
    /// Run a container's readiness probe until it stops (what `ctr run --readiness` starts).
    #[command(hide = true)]
    Probe {
        pod: String,
        name: String,
        #[command(flatten)]
        probe: ProbeArgs,
    },
    /// Run a command in a running container; exits with its code.
    Exec {
        pod: String,
        name: String,
        /// Kill the command after this many seconds.
        #[arg(long)]
        timeout: Option<u64>,
        /// Stream this command's stdin to the process, and its output back as it comes.
        #[arg(short, long)]
        interactive: bool,
        /// Run it on a terminal of the container's own, joined to this one (raw while it runs).
        #[arg(short, long)]
        tty: bool,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Print a container's log (stdout and stderr lines).
    Logs { pod: String, name: String },
    /// List containers, of one pod or all.
    #[command(visible_alias = "list")]
    Ls {
        #[arg(long)]
        pod: Option<String>,
        #[command(flatten)]
        output: Output,
    },
    /// Stop a container: TERM, then KILL after --timeout.
    Stop {
        pod: String,
        name: String,
        #[arg(long, default_value_t = 10)]
        timeout: u64,
    },
    /// Remove a container; a running one needs --force.
    Rm {
        pod: String,
        name: String,
        #[arg(short, long)]
        force: bool,
    },
}

#[derive(Args, Debug)]
struct CtrRunArgs {
    pod: String,
    name: ContainerName,
    /// Image reference or id from the store.
    #[arg(long, conflicts_with = "rootfs", required_unless_present = "rootfs")]
    image: Option<String>,
    /// A directory to use as the (unchanged) root filesystem.
    #[arg(long)]
    rootfs: Option<PathBuf>,
    /// KEY=VALUE
    #[arg(short, long)]
    env: Vec<String>,
    #[arg(short, long)]
    workdir: Option<String>,
    /// HOST_PATH:CONTAINER_PATH[:ro]
    #[arg(short, long)]
    mount: Vec<String>,
    /// Wait for the container to exit and exit with its code.
    #[arg(long)]
    wait: bool,
    #[command(flatten)]
    probe: ProbeArgs,
    /// The command; the image's entrypoint and cmd by default.
    #[arg(last = true)]
    command: Vec<String>,
}

/// A container's readiness probe, as a Kubernetes container's `readinessProbe`.
#[derive(Args, Debug, Clone)]
struct ProbeArgs {
    /// A readiness probe: tcp:PORT, http:PORT/PATH, exec:COMMAND ARGS... (words as a shell
    /// splits them, quotes included) or log:TEXT.
    /// The pod is no Service's endpoint until it passes, after --readiness-failures
    /// failed checks in a row, and once the container stopped; a process of its own
    /// runs it for as long as the container runs.
    #[arg(long, value_name = "CHECK")]
    readiness: Option<String>,
    /// Seconds between two checks (each is given as long).
    #[arg(long, value_name = "SECONDS", requires = "readiness")]
    readiness_period: Option<u64>,
    /// Failed checks in a row that make a ready container unready.
    #[arg(long, value_name = "N", requires = "readiness")]
    readiness_failures: Option<u32>,
}

impl ProbeArgs {
    fn probe(&self) -> anyhow::Result<Option<Ready>> {
        let Some(check) = &self.readiness else { return Ok(None) };
        let mut probe: Ready = check.parse().map_err(|e: String| anyhow::anyhow!("--readiness {e}"))?;
        if let Some(secs) = self.readiness_period {
            anyhow::ensure!(secs > 0, "--readiness-period 0: give at least 1 second");
            probe = probe.period(Duration::from_secs(secs));
        }
        if let Some(n) = self.readiness_failures {
            anyhow::ensure!(n > 0, "--readiness-failures 0: give at least 1");
            probe = probe.failure_threshold(n);
        }
        Ok(Some(probe))
    }

    /// Starts `minipod ctr probe` for container `c`, in a session of its own with no
    /// terminal or pipes of ours: it outlives this command, and ends when `c` stops.
    fn spawn(&self, root: &Path, common: &Common, c: &minipod_runtime::pod::ContainerRecord) -> anyhow::Result<()> {
        use std::os::unix::process::CommandExt;
        let mut cmd = std::process::Command::new(std::env::current_exe().context("finding minipod's own binary")?);
        cmd.arg("--root").arg(root).arg("ctr").arg("--images").arg(&common.images);
        cmd.arg("--service-cidr").arg(common.service_cidr.to_string()).arg("--cluster-domain").arg(&common.cluster_domain);
        if let Some(ns) = &common.netns {
            cmd.arg("--netns").arg(ns);
        }
        cmd.args(["probe", c.pod.as_str(), c.name.as_str()]).arg("--readiness").args(&self.readiness);
        if let Some(secs) = self.readiness_period {
            cmd.arg("--readiness-period").arg(secs.to_string());
        }
        if let Some(n) = self.readiness_failures {
            cmd.arg("--readiness-failures").arg(n.to_string());
        }
        cmd.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
        // SAFETY: setsid is async-signal-safe, and only it runs between fork and exec.
        unsafe { cmd.pre_exec(|| nix::unistd::setsid().map(drop).map_err(std::io::Error::from)) };
        cmd.spawn().context("starting the readiness probe's process")?;
        Ok(())
    }
}

#[derive(Args, Debug)]
pub struct ImageArgs {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    command: ImageCommand,
}

#[derive(Subcommand, Debug)]
enum ImageCommand {
    /// Import an OCI image layout directory or archive.
    Import {
        path: PathBuf,
        /// Name to give it (default: the layout's ref.name annotation).
        #[arg(long)]
        name: Option<String>,
    },
    /// Pull an image from a registry (plain HTTP for loopback and --insecure-registry ones).
    Pull {
        reference: String,
        /// A registry (host[:port]) to pull from over plain HTTP; loopback ones always are.
        #[arg(long)]
        insecure_registry: Vec<String>,
        /// Mirrors of a registry, tried in order before it: HOST=MIRROR[,MIRROR...].
        #[arg(long)]
        registry_mirror: Vec<minipod_runtime::image::RegistryMirror>,
        /// USER:PASSWORD for the image's registry (not sent to mirrors); MINIPOD_REGISTRY_CREDS
        /// keeps it out of the process list.
        #[arg(long, env = "MINIPOD_REGISTRY_CREDS", hide_env_values = true)]
        creds: Option<String>,
    },
    /// List images.
    #[command(visible_alias = "list")]
    Ls(Output),
    /// Remove an image (by reference or id).
    Rm { image: String },
}

#[derive(Args, Debug)]
pub struct GcArgs {
    #[command(flatten)]
    common: Common,
}

/// `minipod gc`: the sweep every open of the pods runs, printed. Exit code 1 when
/// something could not be cleaned.
pub fn gc(root: &Path, a: GcArgs) -> anyhow::Result<i32> {
    let pods = open(root, &a.common)?;
    let r = pods.swept_at_open();
    let done = [
        ("removed pod of a dead owner", &r.pods),
        ("finished", &r.finished),
        ("removed", &r.files),
        ("removed container of a gone pod", &r.containers),
        ("removed runtime instance", &r.instances),
        ("cleaned network", &r.network),
    ];
    for (what, items) in done {
        for item in items {
            println!("{what}: {item}");
        }
    }
    for e in &r.errors {
        eprintln!("minipod: gc: {e}");
    }
    if r.is_empty() {
        println!("nothing to clean");
    }
    Ok(i32::from(!r.errors.is_empty()))
}

pub(super) fn open(root: &Path, c: &Common) -> anyhow::Result<Pods> {
    Ok(Pods::open(PodsOptions {
        root: root.to_path_buf(),
        images: c.images.clone(),
        node_netns: c.netns.clone(),
        service_cidr: Some(c.service_cidr),
        cluster_domain: Some(c.cluster_domain.clone()),
        keep_pods: true,
        ..Default::default()
    })?)
}

fn key_values(items: &[String], what: &str) -> anyhow::Result<BTreeMap<String, String>> {
    items
        .iter()
        .map(|kv| {
            kv.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).with_context(|| format!("{what} {kv:?}: write it as KEY=VALUE"))
        })
        .collect()
}

fn parse_port(s: &str) -> anyhow::Result<PortMapping> {
    let bad = || format!("port {s:?}: write it as HOST_PORT:CONTAINER_PORT[/udp] or HOST_IP:HOST_PORT:CONTAINER_PORT[/udp]");
    let (spec, proto) = match s.rsplit_once('/') {
        Some((spec, "tcp")) => (spec, Proto::Tcp),
        Some((spec, "udp")) => (spec, Proto::Udp),
        Some(_) => anyhow::bail!(bad()),
        None => (s, Proto::Tcp),
    };
    let parts: Vec<&str> = spec.split(':').collect();
    let (host_ip, host, ctr) = match parts[..] {
        [h, c] => (None, h, c),
        [ip, h, c] => (Some(ip.parse::<Ipv4Addr>().with_context(bad)?), h, c),
        _ => anyhow::bail!(bad()),
    };
    let port = |p: &str| p.parse::<u16>().ok().filter(|p| *p != 0).with_context(bad);
    Ok(PortMapping { proto, host_port: port(host)?, host_ip, container_port: port(ctr)? })
}

pub fn pod(root: &Path, a: PodArgs) -> anyhow::Result<i32> {
    let pods = open(root, &a.common)?;
    match a.command {
        PodCommand::Run(r) => {
            let labels = key_values(&r.label, "label")?;
            for (k, v) in &labels {
                minipod_runtime::service::check_label_key(k)
                    .and_then(|()| minipod_runtime::service::check_label_value(v))
                    .map_err(anyhow::Error::msg)?;
            }
            let cfg = PodConfig {
                hostname: r.hostname,
                namespace: r.namespace,
                labels,
                networks: r.network,
                ports: r.publish.iter().map(|p| parse_port(p)).collect::<anyhow::Result<_>>()?,
                aliases: r.alias,
                share_pid: r.share_pid,
                named_ports: r.named_port,
                ..PodConfig::new(r.name)
            };
            let pod = pods.create_pod(cfg)?;
            println!("{}", pod.id);
        }
        PodCommand::Ls(o) => {
            let all = pods.pods()?;
            if o.output == OutputFormat::Json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                println!("{:<14}{:<24}{:<10}{:<18}{:<12}CREATED", "ID", "NAME", "STATUS", "IP", "CONTAINERS");
                for p in all {
                    let n = pods.containers(Some(&p.id))?.len();
                    let ip = p.ip().map(|ip| ip.to_string()).unwrap_or_default();
                    println!("{:<14}{:<24}{:<10}{:<18}{:<12}{}", p.id, p.name, p.status, ip, n, p.created);
                }
            }
        }
        PodCommand::Inspect { pod } => {
            let p = pods.pod(&pod)?;
            let containers: Vec<serde_json::Value> = pods
                .containers(Some(&p.id))?
                .into_iter()
                .map(|c| {
                    let st = pods.container_state(&c).ok();
                    serde_json::json!({ "record": c, "state": st })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "pod": p, "containers": containers }))?);
        }
        PodCommand::Stop { pod, timeout } => {
            pods.stop_pod(&pod, Duration::from_secs(timeout))?;
        }
        PodCommand::Rm { pod, force } => pods.remove_pod(&pod, force)?,
    }
    Ok(0)
}

fn parse_mount(s: &str) -> anyhow::Result<BindMount> {
    let parts: Vec<&str> = s.split(':').collect();
    let (host, ctr, readonly) = match parts[..] {
        [h, c] => (h, c, false),
        [h, c, "ro"] => (h, c, true),
        [h, c, "rw"] => (h, c, false),
        _ => anyhow::bail!("mount {s:?}: write it as HOST_PATH:CONTAINER_PATH[:ro]"),
    };
    Ok(BindMount { host: host.into(), container: ctr.into(), readonly, propagation: Default::default() })
}

pub fn ctr(root: &Path, a: CtrArgs) -> anyhow::Result<i32> {
    let pods = open(root, &a.common)?;
    match a.command {
        CtrCommand::Run(r) => {
            let source = match (r.image, r.rootfs) {
                (Some(i), _) => RootfsSource::Image(i),
                (None, Some(d)) => RootfsSource::Dir(d),
                (None, None) => anyhow::bail!("give --image REF or --rootfs DIR"),
            };
            let mut cfg = ContainerConfig::new(r.name, source);
            cfg.process = ProcessOverrides {
                args: (!r.command.is_empty()).then_some(r.command),
                env: r.env,
                workdir: r.workdir,
                user: None,
                oom_score_adj: None,
            };
            cfg.mounts = r.mount.iter().map(|m| parse_mount(m)).collect::<anyhow::Result<_>>()?;
            let probe = r.probe.probe()?;
            if probe.is_some() && pods.pod(&r.pod)?.host_network {
                anyhow::bail!("pod {} is on the node's network, no Service's endpoint: a readiness probe would gate nothing", r.pod);
            }
            let c = pods.create_container(&r.pod, cfg)?;
            let started = (|| {
                if probe.is_some() {
                    // Unready before its process runs, so that no connection reaches it early.
                    pods.set_container_ready(&c.pod, &c.name, false)?;
                }
                pods.start_container(&c)?;
                if probe.is_some() {
                    r.probe.spawn(root, &a.common, &c)?;
                }
                anyhow::Ok(())
            })();
            if let Err(e) = started {
                let _ = pods.remove_container_record(&c, true);
                let _ = pods.set_container_ready(&c.pod, &c.name, true);
                return Err(e);
            }
            if r.wait {
                return Ok(pods.wait_container(&c)?.shell_code());
            }
            println!("{}", c.id);
        }
        CtrCommand::Probe { pod, name, probe } => {
            let ready = probe.probe()?.context("--readiness is needed")?;
            let c = pods.container(&pod, &name)?;
            let p = pods.pod(&pod)?;
            minipod_runtime::embed::probe_until_stopped(&pods, &p, &c, &ready);
        }
        CtrCommand::Exec { pod, name, timeout, interactive, tty, command } => {
            let c = pods.container(&pod, &name)?;
            let timeout = timeout.map(Duration::from_secs);
            if tty {
                return Ok(super::terminal::exec(&pods, &c, command, timeout)?.shell_code());
            }
            if interactive {
                let opts =
                    minipod_runtime::ExecOptions { args: command, stdio: minipod_runtime::Stdio::Inherit, timeout, ..Default::default() };
                return Ok(pods.exec_attached(&c, opts)?.shell_code());
            }
            let out = pods.exec(&c, command, timeout)?;
            use std::io::Write;
            std::io::stdout().write_all(&out.stdout)?;
            std::io::stderr().write_all(&out.stderr)?;
            return Ok(out.status.shell_code());
        }
        CtrCommand::Logs { pod, name } => {
            let c = pods.container(&pod, &name)?;
            for l in pods.logs(&c)? {
                match l.stream {
                    minipod_runtime::logs::Stream::Stdout => println!("{}", l.text),
                    minipod_runtime::logs::Stream::Stderr => eprintln!("{}", l.text),
                }
            }
        }
        CtrCommand::Ls { pod, output } => {
            let pod_id = pod.map(|p| pods.pod(&p)).transpose()?.map(|p| p.id);
            let all = pods.containers(pod_id.as_ref())?;
            if output.output == OutputFormat::Json {
                let rows: Vec<serde_json::Value> =
                    all.iter().map(|c| serde_json::json!({ "record": c, "state": pods.container_state(c).ok() })).collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!("{:<40}{:<16}{:<20}{:<10}{:<6}IMAGE", "ID", "POD", "NAME", "STATUS", "EXIT");
                for c in all {
                    let st = pods.container_state(&c).ok();
                    let status = st.as_ref().map(|s| s.live_status().to_string()).unwrap_or_else(|| "unknown".into());
                    let exit = st.and_then(|s| s.exit).map(|e| e.shell_code().to_string()).unwrap_or_default();
                    let pod_name = pods.pod(c.pod.as_str()).map(|p| p.name.to_string()).unwrap_or_default();
                    let image = match &c.source {
                        RootfsSource::Image(i) => i.clone(),
                        RootfsSource::Dir(d) => d.display().to_string(),
                    };
                    println!("{:<40}{:<16}{:<20}{:<10}{:<6}{}", c.id, pod_name, c.name, status, exit, image);
                }
            }
        }
        CtrCommand::Stop { pod, name, timeout } => {
            let c = pods.container(&pod, &name)?;
            pods.stop_container_record(&c, Duration::from_secs(timeout))?;
        }
        CtrCommand::Rm { pod, name, force } => pods.remove_container(&pod, &name, force)?,
    }
    Ok(0)
}

pub fn image(root: &Path, a: ImageArgs) -> anyhow::Result<i32> {
    if let ImageCommand::Rm { image } = &a.command {
        open(root, &a.common)?.remove_image(image)?;
        return Ok(0);
    }
    let store = minipod_runtime::image::ImageStore::open(&a.common.images)?;
    match a.command {
        ImageCommand::Pull { reference, insecure_registry, registry_mirror, creds } => {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let credentials = match creds {
                None => minipod_runtime::image::Credentials::Anonymous,
                Some(c) => minipod_runtime::image::Credentials::from_pair(&c).context("--creds takes USER:PASSWORD")?,
            };
            let opts =
                minipod_runtime::image::PullOptions { insecure_registries: insecure_registry, mirrors: registry_mirror, credentials };
            let img = rt.block_on(minipod_runtime::image::pull(&store, &reference, &opts, &mut |line| eprintln!("{line}")))?;
            println!("{}", img.id);
        }
        ImageCommand::Import { path, name } => {
            let img = store.import(&path, name.as_deref())?;
            println!("{}", img.id);
        }
        ImageCommand::Ls(o) => {
            let all = store.list()?;
            if o.output == OutputFormat::Json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                println!("{:<50}{:<22}SIZE", "REFERENCE", "ID");
                for img in all {
                    let short = img.id.trim_start_matches("sha256:").chars().take(12).collect::<String>();
                    let tags = if img.repo_tags.is_empty() { vec!["<none>".to_string()] } else { img.repo_tags.clone() };
                    for t in tags {
                        println!("{:<50}{:<22}{}", t, short, img.size);
                    }
                }
            }
        }
        ImageCommand::Rm { .. } => {}
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_parse_with_protocol_and_host_ip() {
        let p = parse_port("8080:80").unwrap();
        assert_eq!((p.host_port, p.container_port, p.proto, p.host_ip), (8080, 80, Proto::Tcp, None));
        let p = parse_port("127.0.0.1:53:5353/udp").unwrap();
        assert_eq!((p.host_port, p.container_port, p.proto, p.host_ip), (53, 5353, Proto::Udp, Some(Ipv4Addr::LOCALHOST)));
        for bad in ["80", "0:80", "a:80", "1:2:3:4", "80:80/sctp"] {
            assert!(parse_port(bad).is_err(), "{bad}");
        }
        assert!(parse_mount("/a:/b:ro").unwrap().readonly);
        assert!(parse_mount("/a").is_err());
    }
}
