//! Command-line parsing, logging setup and error printing for `minipod`.

mod cluster;
mod doctor;
mod hint;
mod net;
mod oci;
mod pod;
mod service;
mod signals;
mod terminal;

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// minipod: an embedded container runtime with built-in networking.
///
/// The OCI verbs (create, start, state, kill, delete, run, exec, list, spec) behave
/// like runc's, so tools that drive runc can drive minipod.
#[derive(Parser, Debug)]
#[command(name = "minipod", version, about, long_about = None)]
pub struct Cli {
    /// Directory for container state (tmpfs: a reboot forgets everything).
    #[arg(long, global = true, default_value = minipod_runtime::DEFAULT_ROOT)]
    root: PathBuf,
    /// Also write log messages to this file.
    #[arg(long, global = true)]
    log: Option<PathBuf>,
    /// Format of the --log file.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// More log output (-v info, -vv debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

/// How a listing is printed.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OutputFormat {
    /// Columns for people.
    #[default]
    Table,
    /// One JSON document, for scripts.
    Json,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create a container from a bundle; its process waits for `start`.
    Create(oci::CreateArgs),
    /// Start a created container's process.
    Start(oci::IdArg),
    /// Print a container's state as OCI state JSON.
    State(oci::IdArg),
    /// Send a signal (default TERM) to a container's process.
    Kill(oci::KillArgs),
    /// Remove a container; a running one needs --force.
    Delete(oci::DeleteArgs),
    /// Create, start and wait for a container; exit with its exit code (128+N on signal).
    Run(oci::RunArgs),
    /// Run a command inside a running container.
    Exec(oci::ExecArgs),
    /// List containers.
    #[command(visible_alias = "ls")]
    List(oci::ListArgs),
    /// Write a default config.json into a bundle directory.
    Spec(oci::SpecArgs),
    /// Build a busybox bundle and run it: a first look at minipod.
    Demo(oci::DemoArgs),
    /// Networks: create, ls, inspect, rm, gc.
    Net(net::NetArgs),
    /// Pods: run, ls, inspect, stop, rm.
    Pod(pod::PodArgs),
    /// Containers of pods: run, exec, logs, ls, stop, rm.
    Ctr(pod::CtrArgs),
    /// Local images: import, ls, rm.
    Image(pod::ImageArgs),
    /// Clean up after processes that died mid-way (SIGKILL, a crash): finish the stops
    /// and removals they began, remove half-written files, name claims without a pod and
    /// network state of pods that are gone; prints what it did. Opening the pods (any
    /// pod command, the daemon) does the same.
    Gc(pod::GcArgs),
    /// Create or change the Kubernetes objects (Services, EndpointSlices, NetworkPolicies) of a YAML or
    /// JSON file (`-` reads stdin), as `kubectl apply -f` does: all of its documents or none.
    Apply(service::ApplyArgs),
    /// Services: list them, or show one with its cluster IP and endpoints.
    Svc(service::SvcArgs),
    /// NetworkPolicies: list them, or show one with the pods it isolates now.
    Policy(service::PolicyArgs),
    /// Clusters on this machine: N nodes joined by a VXLAN overlay, kept until removed.
    Cluster(cluster::ClusterArgs),
    /// Check the node's network as one would by hand (forwarding, firewall, bridges,
    /// DNS, pods' links and routes, MTU, the overlay), or one flow between two pods;
    /// exits 1 if a check fails.
    Doctor(doctor::DoctorArgs),
    /// Serve the Kubernetes CRI (RuntimeService, ImageService) on a Unix socket.
    Serve(ServeArgs),
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// The socket, as unix:///path or a path; created root-only (0660).
    #[arg(long, default_value = crate::server::DEFAULT_SOCKET)]
    socket: String,
    /// Where the streaming server (the URLs of Exec and PortForward) listens; port 0
    /// picks a free one. Keep it on loopback: the URLs' tokens are all that guards it.
    #[arg(long, default_value = "127.0.0.1:0")]
    streaming_address: std::net::SocketAddr,
    /// The node's network namespace (a pinned namespace file); the current one by default.
    #[arg(long)]
    netns: Option<PathBuf>,
    /// Image store.
    #[arg(long, default_value = minipod_runtime::image::DEFAULT_DIR)]
    images: PathBuf,
    /// A registry (host[:port]) to pull from over plain HTTP; loopback ones always are.
    #[arg(long)]
    insecure_registry: Vec<String>,
    /// Mirrors of a registry, tried in order before it: HOST=MIRROR[,MIRROR...]
    /// (e.g. docker.io=mirror.gcr.io). Repeat for other registries.
    #[arg(long)]
    registry_mirror: Vec<minipod_runtime::image::RegistryMirror>,
    /// Where the cluster IPs of services applied through this daemon's state root come from.
    #[arg(long, default_value = minipod_runtime::service::DEFAULT_SERVICE_CIDR)]
    service_cidr: ipnetwork::Ipv4Network,
    /// The DNS domain service names are under, and that pods search.
    #[arg(long, default_value = minipod_runtime::netstack::DEFAULT_CLUSTER_DOMAIN)]
    cluster_domain: String,
    /// The link a cluster's VXLAN overlay runs over: the pod CIDR network a kubelet
    /// gives the node is carried to its peers' (with --overlay-address; the pods'
    /// links get this link's MTU less 50).
    #[arg(long, requires = "overlay_address")]
    overlay_uplink: Option<minipod_runtime::netstack::IfName>,
    /// The node's address on --overlay-uplink, which its peers send to.
    #[arg(long, requires = "overlay_uplink")]
    overlay_address: Option<std::net::Ipv4Addr>,
    /// The overlay's VXLAN network identifier, the same on every node.
    #[arg(long, default_value_t = 1, requires = "overlay_uplink")]
    vni: u32,
    /// A peer node of the overlay: ADDRESS=POD_CIDR (its address on the underlay and
    /// its pod CIDR, e.g. 192.0.2.12=10.244.1.0/24). Repeat for each.
    #[arg(long, value_parser = crate::server::parse_peer, requires = "overlay_uplink")]
    cluster_peer: Vec<minipod_runtime::netstack::overlay::OverlayPeer>,
}

/// Parses arguments, runs the command and returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    let _guard = init_logging(&cli);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            let text = match hint::for_error(&e) {
                Some(hint) => format!("{e:#}: {hint}"),
                None => format!("{e:#}"),
            };
            tracing::error!("{text}");
            eprintln!("minipod: {text}");
            1
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<i32> {
    let root = cli.root;
    match cli.command {
        Command::Create(a) => oci::create(&root, a),
        Command::Start(a) => oci::start(&root, a),
        Command::State(a) => oci::state(&root, a),
        Command::Kill(a) => oci::kill(&root, a),
        Command::Delete(a) => oci::delete(&root, a),
        Command::Run(a) => oci::run(&root, a),
        Command::Exec(a) => oci::exec(&root, a),
        Command::List(a) => oci::list(&root, a),
        Command::Spec(a) => oci::spec(a),
        Command::Demo(a) => oci::demo(&root, a),
        Command::Net(a) => net::net(&root, a),
        Command::Pod(a) => pod::pod(&root, a),
        Command::Gc(a) => pod::gc(&root, a),
        Command::Apply(a) => service::apply(&root, a),
        Command::Svc(a) => service::svc(&root, a),
        Command::Policy(a) => service::policy(&root, a),
        Command::Ctr(a) => pod::ctr(&root, a),
        Command::Image(a) => pod::image(&root, a),
        Command::Doctor(a) => doctor::doctor(&root, a),
        Command::Cluster(a) => cluster::cluster(a),
        Command::Serve(a) => {
            let pull = minipod_runtime::image::PullOptions {
                insecure_registries: a.insecure_registry,
                mirrors: a.registry_mirror,
                credentials: Default::default(),
            };
            let opts = minipod_runtime::PodsOptions {
                root,
                images: a.images,
                node_netns: a.netns,
                service_cidr: Some(a.service_cidr),
                cluster_domain: Some(a.cluster_domain),
                ..Default::default()
            };
            let overlay = match (a.overlay_uplink, a.overlay_address) {
                (Some(uplink), Some(address)) => Some(crate::server::ClusterOverlay { uplink, address, vni: a.vni, peers: a.cluster_peer }),
                _ => None,
            };
            crate::server::serve(opts, &a.socket, a.streaming_address, pull, overlay)
        }
    }
}

/// Logs go to stderr (warnings by default) and, with --log, to a file as well.
fn init_logging(cli: &Cli) -> Option<()> {
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::{filter::LevelFilter, fmt};
    let level = match cli.verbose {
        0 => LevelFilter::WARN,
        1 => LevelFilter::INFO,
        _ => LevelFilter::DEBUG,
    };
    let stderr = fmt::layer().with_writer(std::io::stderr).with_target(false).without_time().with_filter(level);
    let file = cli.log.as_ref().and_then(|p| std::fs::OpenOptions::new().create(true).append(true).open(p).ok());
    let (text, json) = match (file, cli.log_format) {
        (Some(f), LogFormat::Json) => {
            (None, Some(fmt::layer().json().with_writer(std::sync::Mutex::new(f)).with_filter(LevelFilter::INFO)))
        }
        (Some(f), LogFormat::Text) => {
            (Some(fmt::layer().with_ansi(false).with_writer(std::sync::Mutex::new(f)).with_filter(LevelFilter::INFO)), None)
        }
        (None, _) => (None, None),
    };
    // stderr gets only what is not printed as the final error line.
    let stderr = stderr.with_filter(tracing_subscriber::filter::filter_fn(|m| *m.level() != tracing::Level::ERROR));
    tracing_subscriber::registry().with(stderr).with(text).with(json).try_init().ok()
}
