//! Pods: pinned network, IPC and UTS namespaces with no infra process, wired to one or
//! more networks, with their hostname, /etc/hosts and resolv.conf; and the containers
//! that join them, made from images or directories through an overlay.
//!
//! [`Pods`] is the synchronous core shared by the async embedding API
//! ([`crate::embed`]) and the CLI. Every record lives under `<root>/pods/<id>/`:
//!
//! ```text
//! pod.json                  PodRecord
//! ns/{net,ipc,uts}          the pinned namespaces
//! etc/{hostname,hosts,resolv.conf}
//! containers/<name>/        container.json, config.json (bundle), rootfs/, upper/, work/,
//!                           container.log (unless a log path was given)
//! ```
//!
//! Containers themselves are ordinary runtime containers (`<root>/<pod id>-<name>`),
//! each with its monitor, so they outlive the process that made them.
//!
//! A container's [`Security`] (user and groups resolved in its image, capabilities,
//! privileged, read-only root, seccomp, PID namespace, node devices) and its mounts
//! (Bidirectional ones get a shared container root) and [`Resources`] (cgroup
//! limits, changeable later with [`Pods::update_container_resources`]) become its OCI
//! spec in [`spec`]; a pod's `cgroup_parent` holds its containers' cgroups, as a
//! kubelet's cgroupfs layout expects.

mod files;
mod mount_template;
mod netthread;
pub mod record;
pub mod resources;
pub mod security;
pub mod spec;
mod sweep;

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::image::{ImageError, ImageStore};
use crate::logs::LogLine;
use crate::netstack::{self, AttachRequest, IfName, NetworkConfig, NetworkError, NetworkName, Node, OwnerId, PortMapping};
use crate::rootfs::Overlay;
use crate::state::{self, ContainerState, ExitStatus, Status};
use crate::{ContainerError, ContainerId, CreateOptions, ExecOptions, Runtime, Signal, Stdio};

pub use netthread::NetThreadGone;
pub use record::{
    BindMount, ContainerRecord, DnsConfig, NodeRef, Owner, PodId, PodNetwork, PodRecord, PodStatus, Propagation, RootfsSource,
};
pub use resources::Resources;
pub use security::{DeviceMapping, GroupsPolicy, PidNamespace, RunAs, Seccomp, Security, SecurityError};
pub use spec::ProcessOverrides;
pub use sweep::SweepReport;

/// The scope of pods made by the CLI and the daemon.
pub const DEFAULT_SCOPE: &str = "default";
/// How long `stop` waits after SIGTERM before SIGKILL, unless told otherwise.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);

const POD_FILE: &str = "pod.json";
const CONTAINER_FILE: &str = "container.json";

/// A pod or container operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error("{0}")]
    Invalid(String),
    #[error("pod {name:?} already exists (id {id}): pick another name or remove it first")]
    PodExists { name: String, id: PodId },
    #[error("no pod {0:?}: `minipod pod ls` lists the pods")]
    NoSuchPod(String),
    #[error("pod name {name:?} is ambiguous: pods {ids:?} carry it; use an id")]
    AmbiguousPod { name: String, ids: Vec<String> },
    #[error("pod {pod} is {status}: {what}")]
    PodNotReady { pod: String, status: PodStatus, what: &'static str },
    #[error("pod {pod} has running containers ({names}): stop them first (`minipod pod stop {pod}`) or remove it with force")]
    PodBusy { pod: String, names: String },
    #[error("container {name:?} already exists in pod {pod}: pick another name or remove it first")]
    ContainerExists { pod: String, name: String },
    #[error("no container {name:?} in pod {pod}: `minipod ctr ls` lists the containers")]
    NoSuchContainer { pod: String, name: String },
    #[error("waited {secs} s for {what}: {last}")]
    NotReady { what: String, secs: f64, last: String },
    #[error("rootfs directory {0} does not exist or is not a directory")]
    NoRootfs(PathBuf),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Name(#[from] netstack::NameError),
    #[error(transparent)]
    Id(#[from] crate::IdError),
    #[error(transparent)]
    Container(#[from] ContainerError),
    #[error(transparent)]
    Network(#[from] NetworkError),
    #[error(transparent)]
    Netns(#[from] netstack::netns::NetnsError),
    #[error(transparent)]
    NetThread(#[from] NetThreadGone),
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

type Result<T, E = PodError> = std::result::Result<T, E>;

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> PodError + 'a {
    move |source| PodError::Io { what, path: path.to_path_buf(), source }
}

/// How to open [`Pods`].
#[derive(Debug, Clone)]
pub struct PodsOptions {
    /// State root (default `/run/minipod`).
    pub root: PathBuf,
    /// Image store (default `/var/lib/minipod/images`).
    pub images: PathBuf,
    /// Node namespace holding the bridges; None is the caller's own.
    pub node_netns: Option<PathBuf>,
    /// A fresh node namespace of this runtime's own (lo up, no uplink), removed with
    /// it: pods reach each other and the caller through [`Pods::node`], never the host.
    pub private_node: bool,
    /// Network for pods that name none. Default: with `keep_pods`, `minipod0`; else a
    /// network of this runtime's own, removed with it.
    pub network: Option<NetworkName>,
    /// Subnet of the runtime's own network, or of `network` if it must be created.
    pub cidr: Option<ipnetwork::Ipv4Network>,
    /// Pod names are unique per scope. Default: unique to this runtime.
    pub scope: Option<String>,
    /// Pods outlive this process (CLI, daemon). Otherwise they belong to it, and the
    /// next runtime opened after it died removes them.
    pub keep_pods: bool,
}

impl Default for PodsOptions {
    fn default() -> Self {
        Self {
            root: PathBuf::from(crate::DEFAULT_ROOT),
            images: PathBuf::from(crate::image::DEFAULT_DIR),
            node_netns: None,
            private_node: false,
            network: None,
            cidr: None,
            scope: None,
            keep_pods: false,
        }
    }
}

/// What a pod is made from.
#[derive(Debug, Clone, Default)]
pub struct PodConfig {
    pub name: String,
    pub hostname: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// Networks to join, the first carrying the default route and the ports; empty
    /// means the runtime's default network.
    pub networks: Vec<NetworkName>,
    pub ports: Vec<PortMapping>,
    /// DNS names besides the pod's name.
    pub aliases: Vec<String>,
    pub dns: Option<DnsConfig>,
    pub log_dir: Option<PathBuf>,
    /// One PID namespace for all containers of the pod (Kubernetes'
    /// shareProcessNamespace), held by a small PID 1 of the pod's own.
    pub share_pid: bool,
    /// The cgroup that holds the pod's containers (a kubelet's
    /// `/kubepods/burstable/pod<uid>`); default: each container under `minipod/`.
    pub cgroup_parent: Option<PathBuf>,
    /// Containers use the node's IPC namespace instead of the pod's.
    pub host_ipc: bool,
    /// Containers use the node's network namespace (the one this runtime's pods are
    /// wired in) and the node's hostname: a kubelet's `hostNetwork` pod. It joins no
    /// network, so it takes no networks, aliases or port mappings but identity ones
    /// (host port = container port), which the node's own stack serves as they are.
    pub host_network: bool,
    /// Namespaced sysctls set in the pod's namespaces (by each container as it starts).
    pub sysctls: BTreeMap<String, String>,
}

/// What a container is made from.
#[derive(Debug, Clone)]
pub struct ContainerConfig {
    pub name: String,
    pub source: RootfsSource,
    pub process: ProcessOverrides,
    pub mounts: Vec<BindMount>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// Log file; default: `<pod log dir>/<name>_<attempt>.log` or the container's dir.
    pub log_path: Option<PathBuf>,
    pub attempt: u32,
    pub security: Security,
    pub resources: Resources,
}

impl ContainerConfig {
    pub fn new(name: impl Into<String>, source: RootfsSource) -> Self {
        Self {
            name: name.into(),
            source,
            process: ProcessOverrides::default(),
            mounts: vec![],
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            log_path: None,
            attempt: 0,
            security: Security::default(),
            resources: Resources::default(),
        }
    }
}

/// What an exec printed and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl ExecOutput {
    /// Whether the process exited with 0.
    pub fn success(&self) -> bool {
        self.status == ExitStatus::Code(0)
    }

    /// Stdout as text (lossy).
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// A record of this runtime instance, so that the next one can clean up after it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Instance {
    scope: String,
    owner: Owner,
    /// A network this instance made for itself.
    network: Option<NetworkName>,
    node: NodeRef,
    /// The private node namespace's pin, if any.
    private_node: Option<PathBuf>,
}

/// Pods and containers under one state root, on one node.
pub struct Pods {
    root: PathBuf,
    oci: Runtime,
    images: ImageStore,
    node: Arc<Node>,
    node_ref: NodeRef,
    net: netthread::NetThread,
    scope: String,
    default_network: NetworkName,
    keep_pods: bool,
    instance: Option<Instance>,
    template: mount_template::MountTemplate,
}

impl Pods {
    /// Opens the runtime: state dirs, node, DNS server, and a sweep of whatever dead
    /// processes left behind.
    pub fn open(opts: PodsOptions) -> Result<Self> {
        if opts.keep_pods && opts.private_node {
            return Err(PodError::Invalid(
                "pods that outlive this process cannot live on a private node, which goes with it: drop one of the two".into(),
            ));
        }
        let oci = Runtime::new(&opts.root)?;
        let root = oci.root().to_path_buf();
        // The monitor and the container's init run from `/`: every path they get must be absolute.
        let images_dir = std::path::absolute(&opts.images).map_err(io_err("resolving", &opts.images))?;
        let images = ImageStore::open(&images_dir)?;
        for d in ["pods", "instances"] {
            let p = root.join(d);
            std::fs::create_dir_all(&p).map_err(io_err("creating", &p))?;
        }
        let net = netthread::NetThread::start().map_err(io_err("starting the network thread for", &root))?;
        let scope = match &opts.scope {
            Some(s) => {
                record::check_name("scope", s).map_err(PodError::Invalid)?;
                if s.len() > 40 {
                    return Err(PodError::Invalid(format!("scope {s:?} is longer than 40 bytes")));
                }
                s.clone()
            }
            None if opts.keep_pods => DEFAULT_SCOPE.to_string(),
            None => unique_scope(),
        };
        let node_netns = opts.node_netns.as_ref().map(|p| std::path::absolute(p).map_err(io_err("resolving", p))).transpose()?;
        let private_pin = opts.private_node.then(|| root.join("nodes").join(&scope).join("netns"));
        let node_ref = match &private_pin {
            Some(pin) => NodeRef { state_dir: pin.parent().unwrap_or(&root).to_path_buf(), netns: Some(pin.clone()) },
            None => NodeRef { state_dir: root.clone(), netns: node_netns },
        };
        // Recorded before anything is made, with what will be made, so that a crash at
        // any later point leaves something the next sweep can find and remove.
        let own_network = (!opts.keep_pods && opts.network.is_none()).then(|| NetworkName::new(format!("mp-{scope}"))).transpose()?;
        let instance = (!opts.keep_pods).then(|| Instance {
            scope: scope.clone(),
            owner: Owner::me(),
            network: own_network.clone(),
            node: node_ref.clone(),
            private_node: private_pin.clone(),
        });
        if let Some(inst) = &instance {
            write_json(&root.join("instances").join(format!("{}.json", inst.scope)), inst)?;
        }
        let undo = |e: PodError| {
            if let Some(inst) = &instance {
                let _ = remove_instance(&net, &root, inst);
            }
            e
        };
        if let Some(pin) = &private_pin {
            make_private_node(&net, pin).map_err(undo)?;
        }
        let node = Node::new(&node_ref.state_dir, node_ref.netns.as_deref()).map_err(|e| undo(e.into()))?;
        let node = Arc::new(node);
        // Only the networks this runtime uses: another process may serve the others.
        node.serve_dns_on(net.handle(), false).map_err(|e| undo(e.into()))?;
        let timers = net.handle();
        let mut pods = Self {
            root: root.clone(),
            oci,
            images,
            node,
            node_ref,
            net,
            scope,
            default_network: NetworkConfig::default_network().name,
            keep_pods: opts.keep_pods,
            instance,
            template: mount_template::MountTemplate::new(&root, timers),
        };
        let report = pods.sweep();
        if !report.is_empty() {
            tracing::info!(?report, "swept what dead processes left behind");
        }
        match pods.setup_default_network(&opts, own_network) {
            Ok(name) => pods.default_network = name,
            Err(e) => {
                // Drop would not: the instance is only torn down by shutdown.
                let _ = pods.shutdown();
                return Err(e);
            }
        }
        Ok(pods)
    }

    fn setup_default_network(&mut self, opts: &PodsOptions, own: Option<NetworkName>) -> Result<NetworkName> {
        let default = NetworkConfig::default_network();
        match &opts.network {
            Some(name) if *name == default.name => return Ok(default.name),
            Some(name) => {
                if let Some(cfg) = self.node.network(name)? {
                    // Joined, so that this runtime serves its names too.
                    self.create_network(cfg)?;
                    return Ok(name.clone());
                }
                let Some(cidr) = opts.cidr else { return Err(NetworkError::NoSuchNetwork(name.clone()).into()) };
                let cfg = NetworkConfig::new(name.clone(), bridge_name(name.as_str()), cidr);
                self.create_network(cfg)?;
                return Ok(name.clone());
            }
            None => {}
        }
        // A network of our own: pods of parallel runtimes never see each other.
        let Some(name) = own else { return Ok(default.name) };
        let bridge = bridge_name(&format!("{}{}", self.root.display(), self.scope));
        match opts.cidr {
            Some(cidr) => self.create_network(NetworkConfig::new(name.clone(), bridge, cidr))?,
            None => self.create_network_auto(name.clone(), bridge)?,
        };
        Ok(name)
    }

    fn create_network(&self, cfg: NetworkConfig) -> Result<NetworkConfig> {
        let node = self.node.clone();
        Ok(self.net.block(async move { node.create_network(cfg).await })??)
    }

    /// Creates network `name` on the first free /24 of 10.89.0.0/16.
    fn create_network_auto(&self, name: NetworkName, bridge: IfName) -> Result<NetworkConfig> {
        let lock_path = self.node_ref.state_dir.join("auto-subnet.lock");
        let lock =
            std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path).map_err(io_err("opening", &lock_path))?;
        let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| io_err("locking", &lock_path)(io::Error::from(e)))?;
        let mut taken: Vec<ipnetwork::Ipv4Network> = self.node.networks()?.into_iter().map(|n| n.subnet).collect();
        // Addresses already on the node (its own links, other state roots' bridges on a
        // shared node): a subnet that overlaps one would clash.
        let netns = self.node_ref.netns.clone();
        let present = self.net.block(async move {
            let ns = match &netns {
                Some(p) => netstack::netns::Netns::open(p)?,
                None => netstack::netns::Netns::current()?,
            };
            netstack::netlink::Netlink::open(&ns)?.ipv4_addresses().await
        })?;
        let present = present.map_err(|e| PodError::Network(e.into()))?;
        taken.extend(present.into_iter().filter_map(|(ip, prefix)| ipnetwork::Ipv4Network::new(ip, prefix).ok()));
        for third in 0..=255u8 {
            let Ok(subnet) = ipnetwork::Ipv4Network::new(Ipv4Addr::new(10, 89, third, 0), 24) else { continue };
            if taken.iter().any(|t| t.overlaps(subnet)) {
                continue;
            }
            return self.create_network(NetworkConfig::new(name, bridge, subnet));
        }
        Err(PodError::Invalid("every /24 of 10.89.0.0/16 is taken by a network: give the runtime a CIDR".into()))
    }

    /// The state root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The node: to inspect networks or open sockets in its namespace.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// Where the node lives.
    pub fn node_ref(&self) -> &NodeRef {
        &self.node_ref
    }

    /// The image store.
    pub fn images(&self) -> &ImageStore {
        &self.images
    }

    /// The low-level container runtime on the same root.
    pub fn runtime(&self) -> &Runtime {
        &self.oci
    }

    /// Network pods join when they name none.
    pub fn default_network(&self) -> &NetworkName {
        &self.default_network
    }

    /// This runtime's scope (pod names are unique within it).
    pub fn scope(&self) -> &str {
        &self.scope
    }

    /// Traffic counters of the pod's interfaces (lo left out), for stats.
    pub fn network_counters(&self, pod: &PodRecord) -> Result<Vec<netstack::netns::InterfaceCounters>> {
        if pod.host_network {
            // The node's interfaces are not the pod's to report.
            return Ok(vec![]);
        }
        Ok(netstack::netns::Netns::open(&self.pod_dir(&pod.id).join("ns/net"))?.interface_counters()?)
    }

    fn pod_dir(&self, id: &PodId) -> PathBuf {
        self.root.join("pods").join(id.as_str())
    }

    /// Every pod under the root, of every scope, sorted by creation.
    pub fn pods(&self) -> Result<Vec<PodRecord>> {
        let dir = self.root.join("pods");
        let entries = std::fs::read_dir(&dir).map_err(io_err("listing", &dir))?;
        let mut out: Vec<PodRecord> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| PodId::parse(&e.file_name().to_string_lossy()))
            .filter_map(|id| netstack::record::read_json(&self.pod_dir(&id).join(POD_FILE)).ok())
            .collect();
        out.sort_by(|a, b| a.created.cmp(&b.created));
        Ok(out)
    }

    /// A pod by id, or by name (this scope first, then any scope if unambiguous).
    pub fn pod(&self, name_or_id: &str) -> Result<PodRecord> {
        if let Some(id) = PodId::parse(name_or_id) {
            if let Ok(p) = netstack::record::read_json::<PodRecord>(&self.pod_dir(&id).join(POD_FILE)) {
                return Ok(p);
            }
        }
        if let Some(p) = self
            .name_index(&self.scope, name_or_id)
            .and_then(|id| netstack::record::read_json::<PodRecord>(&self.pod_dir(&id).join(POD_FILE)).ok())
        {
            return Ok(p);
        }
        let all: Vec<PodRecord> = self.pods()?.into_iter().filter(|p| p.name == name_or_id).collect();
        if let Some(mine) = all.iter().find(|p| p.scope == self.scope) {
            return Ok(mine.clone());
        }
        match all.len() {
            0 => Err(PodError::NoSuchPod(name_or_id.to_string())),
            1 => Ok(all.into_iter().next().ok_or_else(|| PodError::NoSuchPod(name_or_id.to_string()))?),
            _ => Err(PodError::AmbiguousPod { name: name_or_id.to_string(), ids: all.iter().map(|p| p.id.to_string()).collect() }),
        }
    }

    fn save_pod(&self, pod: &PodRecord) -> Result<()> {
        write_json(&self.pod_dir(&pod.id).join(POD_FILE), pod)
    }

    /// Creates a pod: namespaces, networks, /etc files. Undone completely on failure.
    pub fn create_pod(&self, cfg: PodConfig) -> Result<PodRecord> {
        record::check_name("pod", &cfg.name).map_err(PodError::Invalid)?;
        let hostname = if cfg.host_network {
            // The node's UTS namespace: its name is the pod's.
            let node = nix::unistd::gethostname().map_err(|e| PodError::Invalid(format!("reading the node's hostname: {e}")))?;
            let node = node.to_string_lossy().into_owned();
            if cfg.hostname.as_ref().is_some_and(|h| *h != node) {
                return Err(PodError::Invalid(format!("a host-network pod has the node's hostname {node:?}: give no other")));
            }
            node
        } else {
            cfg.hostname.clone().unwrap_or_else(|| cfg.name.clone())
        };
        let label_ok = |l: &str| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if hostname.len() > 64 || !hostname.split('.').all(label_ok) {
            return Err(PodError::Invalid(format!(
                "hostname {hostname:?} is not valid: use DNS labels (letters, digits, `-`) separated by dots, at most 64 bytes"
            )));
        }
        if let Some(dns) = &cfg.dns {
            if let Some(bad) =
                dns.servers.iter().chain(&dns.searches).chain(&dns.options).find(|v| v.is_empty() || v.contains(char::is_whitespace))
            {
                return Err(PodError::Invalid(format!("DNS setting {bad:?} is empty or has whitespace")));
            }
        }
        for a in &cfg.aliases {
            record::check_name("alias", a).map_err(PodError::Invalid)?;
        }
        if let Some(parent) = &cfg.cgroup_parent {
            if parent.components().any(|c| !matches!(c, std::path::Component::Normal(_) | std::path::Component::RootDir))
                || parent.as_os_str().len() > 4096
            {
                return Err(PodError::Invalid(format!(
                    "cgroup parent {} must be a plain path under the cgroup root (no `.` or `..`)",
                    parent.display()
                )));
            }
        }
        if cfg.host_network {
            if !cfg.networks.is_empty() || !cfg.aliases.is_empty() {
                return Err(PodError::Invalid("a host-network pod joins no network: give it no networks or aliases".into()));
            }
            if let Some(p) = cfg.ports.iter().find(|p| p.host_port != p.container_port) {
                return Err(PodError::Invalid(format!(
                    "port mapping {}->{}: a host-network pod's ports are the node's own, so the host port must equal the container port",
                    p.host_port, p.container_port
                )));
            }
            if let Some(key) = cfg.sysctls.keys().find(|k| k.starts_with("net.")) {
                return Err(PodError::Invalid(format!(
                    "sysctl {key}: the pod uses the node's network namespace, so it would change the node"
                )));
            }
        }
        let networks = if cfg.host_network {
            vec![]
        } else if cfg.networks.is_empty() {
            vec![self.default_network.clone()]
        } else {
            cfg.networks.clone()
        };
        for (i, n) in networks.iter().enumerate() {
            if networks[..i].contains(n) {
                return Err(PodError::Invalid(format!("network {n} is listed twice")));
            }
            if *n != NetworkConfig::default_network().name && self.node.network(n)?.is_none() {
                return Err(NetworkError::NoSuchNetwork(n.clone()).into());
            }
        }
        let id = PodId::random();
        let dir = self.pod_dir(&id);
        let mut pod = PodRecord {
            id: id.clone(),
            name: cfg.name.clone(),
            scope: self.scope.clone(),
            status: PodStatus::Creating,
            hostname,
            labels: cfg.labels.clone(),
            annotations: cfg.annotations.clone(),
            created: state::now_rfc3339(),
            // Owned while being made, also when it is to outlive us: a crash mid-way
            // leaves a pod the next sweep removes.
            owner: Some(Owner::me()),
            node: self.node_ref.clone(),
            networks: vec![],
            ports: cfg.ports.clone(),
            aliases: cfg.aliases.clone(),
            dns: cfg.dns.clone(),
            log_dir: cfg.log_dir.clone(),
            pid_holder: None,
            cgroup_parent: cfg.cgroup_parent.clone(),
            host_ipc: cfg.host_ipc,
            host_network: cfg.host_network,
            sysctls: cfg.sysctls.clone(),
        };
        {
            // Claimed through the name index, so that the check costs the same with one
            // pod or a thousand.
            self.claim_name(&cfg.name, &id)?;
            let made = std::fs::create_dir_all(dir.join("ns"))
                .and_then(|()| std::fs::create_dir(dir.join("containers")))
                .map_err(io_err("creating", &dir))
                .and_then(|()| self.save_pod(&pod));
            if let Err(e) = made {
                let _ = std::fs::remove_dir_all(&dir);
                self.release_name(&pod);
                return Err(e);
            }
        }
        match self.setup_pod(&mut pod, &networks, cfg.share_pid) {
            Ok(()) => Ok(pod),
            Err(e) => {
                let _ = self.teardown(&pod);
                Err(e)
            }
        }
    }

    fn setup_pod(&self, pod: &mut PodRecord, networks: &[NetworkName], share_pid: bool) -> Result<()> {
        let dir = self.pod_dir(&pod.id);
        if share_pid {
            let (pid, start_time) =
                crate::process::spawn_pod_init().map_err(|m| PodError::Invalid(format!("sharing a PID namespace: {m}")))?;
            pod.pid_holder = Some(Owner { pid, start_time });
            self.save_pod(pod)?;
        }
        let (net, ipc, uts) = (dir.join("ns/net"), dir.join("ns/ipc"), dir.join("ns/uts"));
        let hostname = pod.hostname.clone();
        if pod.host_network {
            netstack::netns::create_pinned_set(&[("ipc", &ipc)], || Ok(()))?;
        } else {
            netstack::netns::create_pinned_set(&[("net", &net), ("ipc", &ipc), ("uts", &uts)], move || {
                nix::unistd::sethostname(&hostname)
            })?;
        }
        let owner = OwnerId::new(pod.id.as_str())?;
        let mut names = vec![pod.name.clone()];
        names.extend(pod.aliases.iter().cloned());
        let mut resolv = String::new();
        for (i, name) in networks.iter().enumerate() {
            let req = AttachRequest {
                ifname: IfName::new(format!("eth{i}"))?,
                ports: if i == 0 { pod.ports.clone() } else { vec![] },
                dns_names: names.clone(),
                default_route: i == 0,
                ..AttachRequest::new(owner.clone(), net.clone())
            };
            let node = self.node.clone();
            let name2 = name.clone();
            let wired = self.net.block(async move { node.attach(&name2, req).await })??;
            if i == 0 {
                resolv = wired.resolv_conf.clone();
            }
            pod.networks.push(PodNetwork { network: name.clone(), ip: wired.ip, ip6: wired.ip6, ifname: wired.ifname.to_string() });
            // Recorded at once: a failure at the next network detaches this one.
            self.save_pod(pod)?;
        }
        if pod.host_network {
            // The node's resolver, as a kubelet gives a host-network pod.
            resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        }
        files::write(&dir.join("etc"), pod, &files::resolv_conf(pod.dns.as_ref(), &resolv))
            .map_err(io_err("writing the /etc files of", &dir))?;
        pod.status = PodStatus::Ready;
        if self.keep_pods {
            pod.owner = None;
        }
        self.save_pod(pod)
    }

    fn name_file(&self, scope: &str, name: &str) -> PathBuf {
        self.root.join("pods").join(".names").join(scope).join(name)
    }

    /// The id a pod name of `scope` is claimed by, if any.
    fn name_index(&self, scope: &str, name: &str) -> Option<PodId> {
        record::check_name("pod", name).ok()?;
        PodId::parse(std::fs::read_to_string(self.name_file(scope, name)).ok()?.trim())
    }

    /// Claims `name` in this scope for pod `id` (an exclusive create). A claim whose
    /// pod is gone (a crash before its record) is taken over.
    fn claim_name(&self, name: &str, id: &PodId) -> Result<()> {
        use std::io::Write;
        let path = self.name_file(&self.scope, name);
        let dir = path.parent().unwrap_or(&path);
        std::fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
        for _ in 0..2 {
            match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut f) => return f.write_all(id.as_str().as_bytes()).map_err(io_err("writing", &path)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    let holder = std::fs::read_to_string(&path).ok().and_then(|t| PodId::parse(t.trim()));
                    match holder {
                        Some(other) if self.pod_dir(&other).exists() => {
                            return Err(PodError::PodExists { name: name.to_string(), id: other })
                        }
                        // A claim being written right now reads as empty: never steal it.
                        None if path.metadata().is_ok_and(|m| m.len() == 0) => {
                            return Err(PodError::Invalid(format!("pod name {name:?} is being claimed by another process")))
                        }
                        _ => {
                            let _ = std::fs::remove_file(&path);
                        }
                    }
                }
                Err(e) => return Err(io_err("claiming the name in", &path)(e)),
            }
        }
        Err(PodError::Invalid(format!("pod name {name:?} is contended: try again")))
    }

    fn release_name(&self, pod: &PodRecord) {
        if self.name_index(&pod.scope, &pod.name).as_ref() == Some(&pod.id) {
            let _ = std::fs::remove_file(self.name_file(&pod.scope, &pod.name));
        }
    }

    /// Stops every container (SIGTERM, then SIGKILL after `timeout`) and detaches the
    /// pod from its networks; its record stays until [`Pods::remove_pod`]. Idempotent.
    pub fn stop_pod(&self, name_or_id: &str, timeout: Duration) -> Result<PodRecord> {
        let mut pod = self.pod(name_or_id)?;
        for c in self.containers(Some(&pod.id))? {
            self.stop_container_record(&c, timeout)?;
        }
        if pod.status == PodStatus::Stopped {
            return Ok(pod);
        }
        self.detach_all(&pod, false)?;
        pod.status = PodStatus::Stopped;
        self.save_pod(&pod)?;
        Ok(pod)
    }

    fn detach_all(&self, pod: &PodRecord, released: bool) -> Result<()> {
        let owner = OwnerId::new(pod.id.as_str())?;
        let node = self.node_for(pod)?;
        for n in &pod.networks {
            let (node, name, owner) = (node.clone(), n.network.clone(), owner.clone());
            self.net.block(async move {
                if released {
                    node.detach_released(&name, &owner).await
                } else {
                    node.detach(&name, &owner).await
                }
            })??;
        }
        Ok(())
    }

    fn node_for(&self, pod: &PodRecord) -> Result<Arc<Node>> {
        if pod.node == self.node_ref {
            return Ok(self.node.clone());
        }
        Ok(Arc::new(Node::new(&pod.node.state_dir, pod.node.netns.as_deref())?))
    }

    /// Removes a pod: containers, networks, namespaces, files. Refuses while a
    /// container runs unless `force`. Removing a pod that is gone is not an error.
    pub fn remove_pod(&self, name_or_id: &str, force: bool) -> Result<()> {
        let pod = match self.pod(name_or_id) {
            Ok(p) => p,
            Err(PodError::NoSuchPod(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let containers = self.containers(Some(&pod.id))?;
        if !force {
            let running: Vec<&str> = containers
                .iter()
                .filter(|c| self.oci.state(&c.id).map(|s| s.live_status() == Status::Running).unwrap_or(false))
                .map(|c| c.name.as_str())
                .collect();
            if !running.is_empty() {
                return Err(PodError::PodBusy { pod: pod.name.clone(), names: running.join(", ") });
            }
        }
        self.teardown(&pod)
    }

    /// Everything of `pod` goes, whatever state it is in.
    fn teardown(&self, pod: &PodRecord) -> Result<()> {
        let _lock = self.pod_lock(&pod.id, nix::fcntl::FlockArg::LockExclusive)?;
        let mut first_err = None;
        for c in self.containers(Some(&pod.id)).unwrap_or_default() {
            if let Err(e) = self.remove_container_record(&c, true) {
                first_err.get_or_insert(e);
            }
        }
        if let Some(e) = first_err {
            // A process that may still run keeps the namespace and the address: freeing
            // the address now would hand it to the next pod twice.
            return Err(e);
        }
        // The namespaces go right after: the kernel deletes the veths in the background.
        if pod.status != PodStatus::Stopped {
            match self.detach_all(pod, true) {
                // The node namespace is gone, and with it the bridge, the veths and the
                // rules: only records would be left, in a state dir that goes too.
                Err(PodError::Network(NetworkError::Netns(_))) if pod.node.netns.as_ref().is_some_and(|p| !p.exists()) => {}
                Err(e) => {
                    first_err.get_or_insert(e);
                }
                Ok(()) => {}
            }
        }
        if let Some(h) = pod.pid_holder {
            // Its containers are gone; nothing else lives in the namespace.
            let _ = crate::pidfd::signal(h.pid, h.start_time, libc::SIGKILL);
            crate::pidfd::wait_gone(h.pid, h.start_time, Duration::from_secs(5));
        }
        let dir = self.pod_dir(&pod.id);
        for ns in ["net", "ipc", "uts"] {
            if let Err(e) = netstack::netns::remove_pinned(&dir.join("ns").join(ns)) {
                first_err.get_or_insert(e.into());
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err("removing", &dir)(e)),
            _ => {}
        }
        self.release_name(pod);
        Ok(())
    }

    fn container_dir(&self, pod: &PodId, name: &str) -> PathBuf {
        self.pod_dir(pod).join("containers").join(name)
    }

    /// Containers of one pod, or of all pods.
    pub fn containers(&self, pod: Option<&PodId>) -> Result<Vec<ContainerRecord>> {
        let pods: Vec<PodId> = match pod {
            Some(p) => vec![p.clone()],
            None => self.pods()?.into_iter().map(|p| p.id).collect(),
        };
        let mut out = Vec::new();
        for p in pods {
            let dir = self.pod_dir(&p).join("containers");
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for e in entries.flatten() {
                // A record is trusted no further than its names: they reach paths.
                match netstack::record::read_json::<ContainerRecord>(&e.path().join(CONTAINER_FILE)) {
                    Ok(c) if record::check_name("container", &c.name).is_ok() && c.pod == p && e.file_name() == c.name.as_str() => {
                        out.push(c)
                    }
                    _ => {}
                }
            }
        }
        out.sort_by(|a, b| a.created.cmp(&b.created));
        Ok(out)
    }

    /// A container by runtime id, or by name within `pod`.
    pub fn container(&self, pod: &str, name: &str) -> Result<ContainerRecord> {
        let p = self.pod(pod)?;
        if record::check_name("container", name).is_err() {
            return Err(PodError::NoSuchContainer { pod: p.name.clone(), name: name.to_string() });
        }
        netstack::record::read_json(&self.container_dir(&p.id, name).join(CONTAINER_FILE))
            .map_err(|_| PodError::NoSuchContainer { pod: p.name.clone(), name: name.to_string() })
    }

    /// A container by its runtime id (`<pod id>-<name>`).
    pub fn container_by_id(&self, id: &str) -> Result<ContainerRecord> {
        let not_found = || PodError::NoSuchContainer { pod: "?".into(), name: id.to_string() };
        let (pod, name) = id.split_at_checked(12).ok_or_else(not_found)?;
        let pod = PodId::parse(pod).ok_or_else(not_found)?;
        let name = name.strip_prefix('-').ok_or_else(not_found)?;
        record::check_name("container", name).map_err(|_| not_found())?;
        netstack::record::read_json(&self.container_dir(&pod, name).join(CONTAINER_FILE)).map_err(|_| not_found())
    }

    /// The runtime's view of a container (status, pid, exit).
    pub fn container_state(&self, c: &ContainerRecord) -> Result<ContainerState> {
        Ok(self.oci.state(&c.id)?)
    }

    /// Changes a container's cgroup limits (running or not) and records them; the
    /// settings not given stay as they were.
    pub fn update_container_resources(&self, c: &ContainerRecord, resources: &Resources) -> Result<ContainerRecord> {
        let oci = resources.to_oci().map_err(PodError::Invalid)?;
        crate::cgroups::check_resources(&oci).map_err(|e| PodError::Invalid(e.to_string()))?;
        let st = self.container_state(c)?;
        if st.live_status() == Status::Stopped {
            return Err(PodError::Invalid(format!("container {} has exited: its limits can no longer change", c.name)));
        }
        crate::cgroups::Cgroup::from_paths(st.cgroup_paths.clone()).update(&oci).map_err(|e| PodError::Invalid(crate::error_chain(&e)))?;
        let mut rec = c.clone();
        rec.resources = merge_resources(&c.resources, resources);
        write_json(&self.container_dir(&c.pod, &c.name).join(CONTAINER_FILE), &rec)?;
        Ok(rec)
    }

    /// The uid, gid and supplementary gids a container's processes run with, as its
    /// spec resolved them (image user names, merged image groups).
    pub fn container_user(&self, c: &ContainerRecord) -> Result<(u32, u32, Vec<u32>)> {
        let path = self.container_dir(&c.pod, &c.name).join("config.json");
        let spec: oci_spec::runtime::Spec = netstack::record::read_json(&path).map_err(io_err("reading", &path))?;
        let user = spec.process().as_ref().map(|p| p.user().clone()).unwrap_or_default();
        Ok((user.uid(), user.gid(), user.additional_gids().clone().unwrap_or_default()))
    }

    /// What the image store uses on disk (its unpacked layers, blobs and indexes).
    pub fn image_fs_usage(&self) -> Result<crate::disk::DiskUsage> {
        let dir = self.images.dir();
        crate::disk::usage(dir).map_err(io_err("measuring", dir))
    }

    /// The directory that holds every container's writable layer.
    pub fn writable_layers_dir(&self) -> PathBuf {
        self.root.join("pods")
    }

    /// What one container has written to its root filesystem (its overlay upper dir).
    pub fn writable_layer_usage(&self, c: &ContainerRecord) -> Result<crate::disk::DiskUsage> {
        let upper = self.container_dir(&c.pod, &c.name).join("upper");
        crate::disk::usage(&upper).map_err(io_err("measuring", &upper))
    }

    /// The pod's lock, held while a container is made in it and while it is torn
    /// down, so that no container starts in a pod being removed. None when the pod is
    /// gone.
    fn pod_lock(&self, id: &PodId, how: nix::fcntl::FlockArg) -> Result<Option<nix::fcntl::Flock<std::fs::File>>> {
        let path = self.pod_dir(id).join("lock");
        let f = match std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("opening", &path)(e)),
        };
        let lock = nix::fcntl::Flock::lock(f, how).map_err(|(_, e)| io_err("locking", &path)(io::Error::from(e)))?;
        // Removed while we waited: the lock guards a deleted file.
        Ok(self.pod_dir(id).join(POD_FILE).exists().then_some(lock))
    }

    /// Creates a container in a ready pod; its process waits for [`Pods::start_container`].
    pub fn create_container(&self, pod: &str, cfg: ContainerConfig) -> Result<ContainerRecord> {
        record::check_name("container", &cfg.name).map_err(PodError::Invalid)?;
        let pod = self.pod(pod)?;
        // Exclusive: creates in one pod are serialised, which also makes a crashed
        // create's leftovers safe to take over below.
        let Some(_lock) = self.pod_lock(&pod.id, nix::fcntl::FlockArg::LockExclusive)? else { return Err(PodError::NoSuchPod(pod.name)) };
        // Re-read under the lock: a stop may have come first.
        let pod = self.pod(pod.id.as_str())?;
        if pod.status != PodStatus::Ready {
            return Err(PodError::PodNotReady { pod: pod.name, status: pod.status, what: "containers need a ready pod" });
        }
        if pod.pid_holder.is_some_and(|h| !h.alive()) {
            return Err(PodError::PodNotReady {
                pod: pod.name,
                status: pod.status,
                what: "the PID 1 holding its shared PID namespace is gone (killed from outside): remove the pod and make it again",
            });
        }
        for m in cfg.mounts.iter().filter(|m| m.propagation == Propagation::Bidirectional) {
            // Mounts made in the container reach the node only through a mount that has
            // peers on the node: from a private one they would silently stay inside.
            match crate::rootfs::mount_holding(&m.host) {
                Some((_, true)) => {}
                Some((point, false)) => {
                    return Err(PodError::Invalid(format!(
                        "mount {}: bidirectional propagation needs its source {} on a shared mount of the node, and {} is not: \
                         make it shared (mount --make-rshared {}) or use HostToContainer",
                        m.container.display(),
                        m.host.display(),
                        point.display(),
                        point.display()
                    )))
                }
                None => {
                    return Err(PodError::Invalid(format!(
                        "mount {}: source {} not found on the node",
                        m.container.display(),
                        m.host.display()
                    )))
                }
            }
        }
        let (lower, image) = match &cfg.source {
            RootfsSource::Image(r) => {
                let img = self.images.get(r)?;
                (self.images.lower_dirs(&img), Some(img))
            }
            RootfsSource::Dir(d) => {
                if !d.is_dir() {
                    return Err(PodError::NoRootfs(d.clone()));
                }
                let d = std::path::absolute(d).map_err(io_err("resolving", d))?;
                (vec![d], None)
            }
        };
        let args = spec::args(&cfg.process, image.as_ref().map(|i| &i.config)).map_err(PodError::Invalid)?;
        let dir = self.container_dir(&pod.id, &cfg.name);
        // Not create_dir_all: a pod removed meanwhile must not come back as a bare directory.
        let mut made = std::fs::create_dir(&dir);
        if matches!(&made, Err(e) if e.kind() == io::ErrorKind::AlreadyExists) && !dir.join(CONTAINER_FILE).exists() {
            // A create that crashed before its record (we hold the pod's lock, so no
            // create is running): what it left has no process and is taken over.
            if let Ok(id) = ContainerId::new(format!("{}-{}", pod.id, cfg.name)) {
                let _ = self.oci.delete(&id, true);
            }
            let _ = std::fs::remove_dir_all(&dir);
            made = std::fs::create_dir(&dir);
        }
        match made {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(PodError::ContainerExists { pod: pod.name, name: cfg.name });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(PodError::NoSuchPod(pod.name)),
            r => r.map_err(io_err("creating", &dir))?,
        }
        let made = self.make_container(&pod, &dir, &cfg, args, lower, image.as_ref());
        if made.is_err() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        made
    }

    fn make_container(
        &self,
        pod: &PodRecord,
        dir: &Path,
        cfg: &ContainerConfig,
        args: Vec<String>,
        lower: Vec<PathBuf>,
        image: Option<&crate::image::Image>,
    ) -> Result<ContainerRecord> {
        let log_path = match (&cfg.log_path, &pod.log_dir) {
            (Some(p), _) => p.clone(),
            (None, Some(d)) => d.join(format!("{}_{}.log", cfg.name, cfg.attempt)),
            (None, None) => dir.join("container.log"),
        };
        // The monitor writes it from `/`.
        let log_path = std::path::absolute(&log_path).map_err(io_err("resolving", &log_path))?;
        if let Some(parent) = log_path.parent() {
            std::fs::create_dir_all(parent).map_err(io_err("creating the log directory", parent))?;
        }
        let rec = ContainerRecord {
            name: cfg.name.clone(),
            id: ContainerId::new(format!("{}-{}", pod.id, cfg.name))?,
            pod: pod.id.clone(),
            source: cfg.source.clone(),
            image_id: image.map(|i| i.id.clone()),
            args,
            log_path: log_path.clone(),
            labels: cfg.labels.clone(),
            annotations: cfg.annotations.clone(),
            created: state::now_rfc3339(),
            attempt: cfg.attempt,
            mounts: cfg.mounts.clone(),
            resources: cfg.resources.clone(),
        };
        let pod_dir = self.pod_dir(&pod.id);
        let inputs = spec::SpecInputs { config: cfg, image: image.map(|i| &i.config), layers: &lower };
        let spec = spec::container_spec(pod, &pod_dir, &rec, &inputs).map_err(PodError::Invalid)?;
        for d in ["rootfs", "upper", "work"] {
            std::fs::create_dir(dir.join(d)).map_err(io_err("creating", &dir.join(d)))?;
        }
        write_json(&dir.join("config.json"), &spec)?;
        write_json(&dir.join(CONTAINER_FILE), &rec)?;
        let overlay = Overlay { lower, upper: dir.join("upper"), work: dir.join("work") };
        let opts = CreateOptions {
            stdio: Stdio::Log(log_path),
            overlay: Some(overlay),
            // A mount that receives the node's later mounts must be bound from the node's
            // own table: the template is a copy from an earlier moment, in which a source
            // made shared since is a plain directory with no peer on the node.
            mount_template: if cfg.mounts.iter().all(|m| m.propagation == Propagation::Private) { self.template.get() } else { None },
            ..Default::default()
        };
        self.oci.create(&rec.id, dir, opts)?;
        Ok(rec)
    }

    /// Releases a created container's process.
    pub fn start_container(&self, c: &ContainerRecord) -> Result<()> {
        Ok(self.oci.start(&c.id)?)
    }

    /// Stops a container: SIGTERM to its process, SIGKILL to all of them after
    /// `timeout`. Stopping a stopped container is fine.
    pub fn stop_container_record(&self, c: &ContainerRecord, timeout: Duration) -> Result<()> {
        let st = match self.oci.state(&c.id) {
            Ok(st) => st,
            Err(ContainerError::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        if !matches!(st.live_status(), Status::Running | Status::Created) {
            return Ok(());
        }
        if st.live_status() == Status::Running && !timeout.is_zero() {
            if let (Some(pid), Some(start)) = (st.pid, st.pid_start_time) {
                if self.terminate(c, pid, start, timeout) {
                    // Let the monitor record the exit before the caller reads it.
                    crate::pidfd::wait_gone(st.monitor_pid, st.monitor_start_time, Duration::from_secs(2));
                    return Ok(());
                }
            }
        }
        match self.oci.kill(&c.id, Signal::KILL, true) {
            Ok(()) | Err(ContainerError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        if let (Some(pid), Some(start)) = (st.pid, st.pid_start_time) {
            crate::pidfd::wait_gone(pid, start, Duration::from_secs(10));
        }
        crate::pidfd::wait_gone(st.monitor_pid, st.monitor_start_time, Duration::from_secs(2));
        Ok(())
    }

    /// Sends SIGTERM to a container's init and waits up to `timeout` for it to exit.
    /// A container stopped just after it started may get the signal before its program
    /// installed a handler; as a PID namespace's init it then drops it, so the signal
    /// is sent again once the handler is there (never twice to a program that had one).
    fn terminate(&self, c: &ContainerRecord, pid: i32, start: u64, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        let mut handled = Signal::TERM.caught_by(pid);
        let _ = self.oci.kill(&c.id, Signal::TERM, false);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            let slice = if handled { left } else { left.min(Duration::from_millis(100)) };
            if crate::pidfd::wait_gone(pid, start, slice) {
                return true;
            }
            if !handled && Signal::TERM.caught_by(pid) {
                handled = true;
                let _ = self.oci.kill(&c.id, Signal::TERM, false);
            }
        }
    }

    /// Removes a container (killing it with `force`); removing one that is gone is fine.
    pub fn remove_container_record(&self, c: &ContainerRecord, force: bool) -> Result<()> {
        match self.oci.delete(&c.id, force) {
            Ok(()) | Err(ContainerError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        let dir = self.container_dir(&c.pod, &c.name);
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("removing", &dir)(e)),
            _ => Ok(()),
        }
    }

    /// Waits for a container's process to exit.
    pub fn wait_container(&self, c: &ContainerRecord) -> Result<ExitStatus> {
        Ok(self.oci.wait(&c.id)?)
    }

    /// The container's log, line by line.
    pub fn logs(&self, c: &ContainerRecord) -> Result<Vec<LogLine>> {
        crate::logs::read(&c.log_path).map_err(io_err("reading the log", &c.log_path))
    }

    /// Runs `args` in a running container and collects its output; killed after `timeout`.
    pub fn exec(&self, c: &ContainerRecord, args: Vec<String>, timeout: Option<Duration>) -> Result<ExecOutput> {
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let null = std::fs::File::open("/dev/null").map_err(io_err("opening", Path::new("/dev/null")))?;
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let done = done.clone();
            std::thread::spawn(move || collect(out_r, err_r, &done))
        };
        let opts = ExecOptions { args, stdio: Stdio::Fds(null.into(), out_w, err_w), timeout, ..Default::default() };
        let status = self.oci.exec(&c.id, opts);
        done.store(true, std::sync::atomic::Ordering::Release);
        let (stdout, stderr) = reader.join().unwrap_or_default();
        Ok(ExecOutput { status: status?, stdout, stderr })
    }

    /// Removes an image from the store, unless a container uses it (its layers are
    /// that container's root filesystem).
    pub fn remove_image(&self, reference: &str) -> Result<()> {
        let img = self.images.get(reference)?;
        let users: Vec<String> = self
            .containers(None)?
            .into_iter()
            .filter(|c| c.image_id.as_deref() == Some(img.id.as_str()))
            .map(|c| c.id.to_string())
            .collect();
        if !users.is_empty() {
            return Err(PodError::Invalid(format!("image {reference} is used by container(s) {}: remove them first", users.join(", "))));
        }
        Ok(self.images.remove(reference)?)
    }

    /// Makes a pod outlive this process: it is no longer swept when the process is
    /// gone. It stays on its network; a runtime's own network is then kept too.
    pub fn disown(&self, id: &PodId) -> Result<PodRecord> {
        if self.instance.as_ref().is_some_and(|i| i.private_node.is_some()) {
            return Err(PodError::Invalid("a pod on a private node cannot outlive the runtime, whose node goes with it".into()));
        }
        let mut pod: PodRecord =
            netstack::record::read_json(&self.pod_dir(id).join(POD_FILE)).map_err(|_| PodError::NoSuchPod(id.to_string()))?;
        pod.owner = None;
        self.save_pod(&pod)?;
        Ok(pod)
    }

    /// Whether pods of this runtime outlive it.
    pub fn keeps_pods(&self) -> bool {
        self.keep_pods
    }

    /// Sends `signal` to a container's process.
    pub fn kill(&self, c: &ContainerRecord, signal: Signal) -> Result<()> {
        Ok(self.oci.kill(&c.id, signal, false)?)
    }

    /// Removes the pods this runtime owns and what it made for itself (its network,
    /// its private node). The first error is returned after trying everything.
    pub fn shutdown(&self) -> Result<()> {
        let mut first_err = None;
        if self.instance.is_some() && !self.keep_pods {
            let pods = self.pods().unwrap_or_else(|e| {
                first_err = Some(e);
                vec![]
            });
            for pod in pods.into_iter().filter(|p| p.scope == self.scope && p.owner.is_some_and(|o| o == Owner::me())) {
                if let Err(e) = self.teardown(&pod) {
                    first_err.get_or_insert(e);
                }
            }
        }
        if let Some(inst) = &self.instance {
            if let Err(e) = self.remove_instance(inst) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    fn remove_instance(&self, inst: &Instance) -> Result<()> {
        remove_instance(&self.net, &self.root, inst)
    }
}

/// Removes what runtime instance `inst` made for itself: its network, its private
/// node, its record. Parts already gone are fine.
fn remove_instance(net: &netthread::NetThread, root: &Path, inst: &Instance) -> Result<()> {
    if let Some(name) = inst.network.clone() {
        match Node::new(&inst.node.state_dir, inst.node.netns.as_deref()) {
            Ok(node) => {
                let r = net.block(async move { node.remove_network(&name).await })?;
                match r {
                    Ok(()) | Err(NetworkError::NoSuchNetwork(_)) => {}
                    // Pods kept past this runtime (`disown`) still use it.
                    Err(NetworkError::InUse { .. }) => {
                        tracing::info!(network = %inst.network.as_ref().map(|n| n.to_string()).unwrap_or_default(), "kept: pods that outlive the runtime use it")
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            // The node namespace is gone, and its bridges with it.
            Err(NetworkError::Netns(_)) if inst.private_node.is_some() || inst.node.netns.as_ref().is_some_and(|p| !p.exists()) => {}
            Err(e) => return Err(e.into()),
        }
    }
    if let Some(pin) = &inst.private_node {
        netstack::netns::remove_pinned(pin)?;
        if let Some(dir) = pin.parent() {
            match std::fs::remove_dir_all(dir) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err("removing", dir)(e)),
                _ => {}
            }
        }
    }
    let path = root.join("instances").join(format!("{}.json", inst.scope));
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("removing", &path)(e)),
        _ => Ok(()),
    }
}

/// Pins a fresh node namespace at `pin` with lo up.
fn make_private_node(net: &netthread::NetThread, pin: &Path) -> Result<()> {
    let dir = pin.parent().unwrap_or(pin);
    std::fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
    let ns = netstack::netns::create_pinned(pin)?;
    let up = net.block(async move {
        let nl = netstack::netlink::Netlink::open(&ns)?;
        let lo = nl.index("lo").await?;
        nl.up(lo, "setting lo up in the private node").await
    })?;
    up.map_err(|e| PodError::Network(e.into()))
}

/// Writes a record atomically.
/// `new` over `old`, field by field.
fn merge_resources(old: &Resources, new: &Resources) -> Resources {
    let mut hugepages = old.hugepages.clone();
    hugepages.extend(new.hugepages.clone());
    let mut unified = old.unified.clone();
    unified.extend(new.unified.clone());
    Resources {
        cpu_shares: new.cpu_shares.or(old.cpu_shares),
        cpu_quota: new.cpu_quota.or(old.cpu_quota),
        cpu_period: new.cpu_period.or(old.cpu_period),
        cpuset_cpus: new.cpuset_cpus.clone().or_else(|| old.cpuset_cpus.clone()),
        cpuset_mems: new.cpuset_mems.clone().or_else(|| old.cpuset_mems.clone()),
        memory_limit: new.memory_limit.or(old.memory_limit),
        memory_swap: new.memory_swap.or(old.memory_swap),
        hugepages,
        unified,
        pids: new.pids.or(old.pids),
    }
}

fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    netstack::record::write_json(path, value, netstack::record::Durability::Atomic).map_err(io_err("writing", path))
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| io_err("creating a pipe for", Path::new("exec"))(io::Error::from(e)))
}

/// Reads both pipes until EOF; once `done` is set (the process exited), gives what
/// is left half a second, since a process it started in the background may hold
/// the pipes open forever.
fn collect(out: OwnedFd, err: OwnedFd, done: &std::sync::atomic::AtomicBool) -> (Vec<u8>, Vec<u8>) {
    use nix::poll::{PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let mut bufs = (Vec::new(), Vec::new());
    let mut open = [true, true];
    let mut deadline: Option<std::time::Instant> = None;
    let mut chunk = [0u8; 8192];
    while open.iter().any(|o| *o) {
        if deadline.is_none() && done.load(std::sync::atomic::Ordering::Acquire) {
            deadline = Some(std::time::Instant::now() + Duration::from_millis(500));
        }
        if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
            break;
        }
        let mut fds = vec![];
        let mut which = vec![];
        for (i, fd) in [&out, &err].into_iter().enumerate() {
            if open[i] {
                fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
                which.push(i);
            }
        }
        match nix::poll::poll(&mut fds, PollTimeout::from(100u8)) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => break,
            Ok(_) => {}
        }
        let ready: Vec<bool> = fds.iter().map(|f| f.revents().is_some_and(|r| !r.is_empty())).collect();
        drop(fds);
        for (k, i) in which.into_iter().enumerate() {
            if !ready[k] {
                continue;
            }
            let fd = if i == 0 { &out } else { &err };
            match nix::unistd::read(fd, &mut chunk) {
                Ok(0) | Err(_) => open[i] = false,
                Ok(n) => {
                    let buf = if i == 0 { &mut bufs.0 } else { &mut bufs.1 };
                    buf.extend_from_slice(&chunk[..n]);
                }
            }
        }
    }
    bufs
}

/// A scope unique to this runtime instance: pid, start time (a reused PID has
/// another) and a counter.
fn unique_scope() -> String {
    static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let me = Owner::me();
    format!("p{}-{}-{n}", me.pid, me.start_time)
}

/// A bridge name derived from `seed`: `mpb` + 8 hex digits, within IFNAMSIZ.
fn bridge_name(seed: &str) -> IfName {
    let mut h: u32 = 0x811c9dc5;
    for b in seed.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x01000193);
    }
    // 11 bytes of letters and digits: always a valid interface name.
    IfName::new(format!("mpb{h:08x}")).unwrap_or_else(|_| IfName::eth0())
}

/// The address of `pod` that is reachable from the node (its first network).
pub fn pod_ip(pod: &PodRecord) -> Option<IpAddr> {
    pod.ip().map(IpAddr::V4)
}
