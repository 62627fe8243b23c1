//! The runtime instance: opening a state root on a node (its default network, a
//! private node when asked), the accessors, and shutting down what it made.

use super::*;
use crate::netstack::executor::Executor;
use crate::netstack::{BlockingNode, DnsScope};

/// The network a kubelet's pod CIDR is made on (see [`Pods::use_pod_cidr`]).
pub const POD_CIDR_NETWORK: &str = "kubepods";

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
    /// The state roots of the other nodes of a cluster on this machine (see
    /// [`crate::embed::Cluster`]): their pods are endpoints of this node's services
    /// and peers of its policies, and theirs follow this node's pods. Recorded under
    /// the root; when empty, those recorded there are taken (a node's root opened by
    /// a later process is still that node of its cluster).
    pub peer_roots: Vec<PathBuf>,
    /// MTU of the pod links of a network this runtime creates (its own, the default
    /// one, the pod CIDR's: an overlay's, say).
    /// Default: that of the node's default-route link, or 1500.
    pub mtu: Option<u32>,
    /// Pod names are unique per scope. Default: unique to this runtime.
    pub scope: Option<Scope>,
    /// Pods outlive this process (CLI, daemon). Otherwise they belong to it, and the
    /// next runtime opened after it died removes them.
    pub keep_pods: bool,
    /// Where services' cluster IPs come from. Default: 10.96.0.0/12.
    pub service_cidr: Option<ipnetwork::Ipv4Network>,
    /// The domain services' names are under (`NAME.NAMESPACE.svc.DOMAIN`). Default:
    /// cluster.local.
    pub cluster_domain: Option<String>,
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
            peer_roots: vec![],
            mtu: None,
            scope: None,
            keep_pods: false,
            service_cidr: None,
            cluster_domain: None,
        }
    }
}

/// A record of this runtime instance, so that the next one can clean up after it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(super) struct Instance {
    pub(super) scope: Scope,
    pub(super) owner: Owner,
    /// A network this instance made for itself.
    pub(super) network: Option<NetworkName>,
    pub(super) node: NodeRef,
    /// The private node namespace's pin, if any.
    pub(super) private_node: Option<PathBuf>,
}

/// Removes what runtime instance `inst` made for itself: its network, its private
/// node, its record. Parts already gone are fine.
pub(super) fn remove_instance(executor: &Arc<Executor>, root: &Path, inst: &Instance) -> Result<()> {
    if let Some(name) = inst.network.clone() {
        match BlockingNode::open(&inst.node.state_dir, inst.node.netns.as_deref(), executor.clone()) {
            Ok(node) => match node.remove_network(&name) {
                Ok(()) | Err(NetworkError::NoSuchNetwork(_)) => {}
                // Pods kept past this runtime (`disown`) still use it.
                Err(NetworkError::InUse { .. }) => tracing::info!(network = %name, "kept: pods that outlive the runtime use it"),
                Err(e) => return Err(e.into()),
            },
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

/// A scope unique to this runtime instance: pid, start time (a reused PID has
/// another) and a counter.
fn unique_scope() -> Scope {
    static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let me = Owner::me();
    // At most 1 + 7 (pid_max is 2^22) + 1 + 20 + 1 + 10 = 40 bytes of letters, digits and `-`.
    Scope::new(format!("p{}-{}-{n}", me.pid, me.start_time)).unwrap_or_else(|_| unreachable!("a scope of digits is valid"))
}

/// Where a cluster node's state root records its peers' roots.
const PEERS_FILE: &str = "peers.json";

/// The state roots of the other nodes of `root`'s cluster: `given` (then recorded
/// under `root`), or else those recorded there when the node was made, so that every
/// process that opens a node's root (the CLI's commands on a kept cluster) acts as
/// that node of its cluster. None for a root of no cluster.
fn cluster_peers(root: &Path, given: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let path = root.join(PEERS_FILE);
    if given.is_empty() {
        return match netstack::record::read_json::<Vec<PathBuf>>(&path) {
            Ok(peers) => Ok(peers),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(vec![]),
            Err(e) => Err(io_err("reading", &path)(e)),
        };
    }
    let peers: Vec<PathBuf> = given.iter().map(|p| std::path::absolute(p).map_err(io_err("resolving", p))).collect::<Result<_>>()?;
    write_json(&path, &peers)?;
    Ok(peers)
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

impl Pods {
    /// Opens the runtime: state dirs, node, DNS server, and a sweep of whatever dead
    /// processes left behind.
    pub fn open(opts: PodsOptions) -> Result<Self> {
        if opts.keep_pods && opts.private_node {
            return Err(ConfigError::KeptPodsOnPrivateNode.into());
        }
        let cluster_domain = opts.cluster_domain.clone().unwrap_or_else(|| netstack::DEFAULT_CLUSTER_DOMAIN.into());
        if !netstack::is_dns_name(&cluster_domain) {
            return Err(ConfigError::ClusterDomain(cluster_domain).into());
        }
        let cluster_domain = cluster_domain.trim_end_matches('.').to_ascii_lowercase();
        let oci = Runtime::new(&opts.root)?;
        let root = oci.root().to_path_buf();
        // The monitor and the container's init run from `/`: every path they get must be absolute.
        let images_dir = std::path::absolute(&opts.images).map_err(io_err("resolving", &opts.images))?;
        let images = ImageStore::open(&images_dir)?;
        for d in ["pods", "instances"] {
            let p = root.join(d);
            std::fs::create_dir_all(&p).map_err(io_err("creating", &p))?;
        }
        let peer_roots = cluster_peers(&root, &opts.peer_roots)?;
        let executor = Arc::new(Executor::start("minipod-net").map_err(io_err("starting the network thread for", &root))?);
        let scope = match &opts.scope {
            Some(s) => s.clone(),
            None if opts.keep_pods => Scope::new(DEFAULT_SCOPE)?,
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
                let _ = remove_instance(&executor, &root, inst);
            }
            e
        };
        if let Some(pin) = &private_pin {
            BlockingNode::create_private(pin, &executor).map_err(|e| undo(e.into()))?;
        }
        let node = BlockingNode::open(&node_ref.state_dir, node_ref.netns.as_deref(), executor.clone()).map_err(|e| undo(e.into()))?;
        node.node().set_cluster_domain(&cluster_domain);
        // Only the networks this runtime uses: another process may serve the others.
        node.node().serve_dns(DnsScope::JoinedFromNow).map_err(|e| undo(e.into()))?;
        let timers = executor.handle();
        let mut pods = Self {
            root: root.clone(),
            oci,
            images,
            node,
            node_ref,
            executor,
            scope,
            default_network: std::sync::RwLock::new(NetworkConfig::default_network().name),
            service_cidr: opts.service_cidr.unwrap_or_else(crate::service::default_service_cidr),
            peer_roots,
            mtu: opts.mtu,
            cluster_domain,
            keep_pods: opts.keep_pods,
            instance,
            template: mount_template::MountTemplate::new(&root, timers),
            swept: SweepReport::default(),
        };
        pods.swept = pods.sweep();
        if !pods.swept.is_empty() {
            tracing::info!(report = ?pods.swept, "swept what dead processes left behind");
            // The pods it stopped or removed are no one's endpoints any more.
            if let Err(e) = pods.sync_services() {
                tracing::warn!("bringing services up to date after the sweep: {e}");
            }
            if let Err(e) = pods.sync_network_policies() {
                tracing::warn!("bringing network policies up to date after the sweep: {e}");
            }
        }
        match pods.setup_default_network(&opts, own_network) {
            Ok(name) => pods.default_network = std::sync::RwLock::new(name),
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
                if let Some(cfg) = self.node.node().network(name)? {
                    // Joined, so that this runtime serves its names too.
                    self.create_network(cfg)?;
                    return Ok(name.clone());
                }
                let Some(cidr) = opts.cidr else { return Err(NetworkError::NoSuchNetwork(name.clone()).into()) };
                let cfg = NetworkConfig { mtu: opts.mtu, ..NetworkConfig::new(name.clone(), bridge_name(name.as_str()), cidr) };
                self.create_network(cfg)?;
                return Ok(name.clone());
            }
            None => {}
        }
        // A network of our own: pods of parallel runtimes never see each other.
        let Some(name) = own else { return Ok(default.name) };
        let bridge = bridge_name(&format!("{}{}", self.root.display(), self.scope));
        match opts.cidr {
            Some(cidr) => self.create_network(NetworkConfig { mtu: opts.mtu, ..NetworkConfig::new(name.clone(), bridge, cidr) })?,
            None => self.create_network_auto(name.clone(), bridge)?,
        };
        Ok(name)
    }

    fn create_network(&self, cfg: NetworkConfig) -> Result<NetworkConfig> {
        Ok(self.node.create_network(cfg)?)
    }

    /// Creates network `name` on the first free /24 of 10.89.0.0/16.
    fn create_network_auto(&self, name: NetworkName, bridge: IfName) -> Result<NetworkConfig> {
        let pool = ipnetwork::Ipv4Network::new(Ipv4Addr::new(10, 89, 0, 0), 16)
            .map_err(|e| ConfigError::Cidr { cidr: "10.89.0.0/16".into(), why: e.to_string() })?;
        Ok(self.node.create_network_in(name, bridge, pool)?)
    }

    /// The state root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The state roots of the other nodes of its cluster (see [`PodsOptions::peer_roots`]).
    pub fn peer_roots(&self) -> &[PathBuf] {
        &self.peer_roots
    }

    /// The node: to inspect networks or open sockets in its namespace.
    pub fn node(&self) -> &Node {
        self.node.node()
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
    pub fn default_network(&self) -> NetworkName {
        match self.default_network.read() {
            Ok(n) => n.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Makes `cidr` (the Node's `spec.podCIDR`, which a kubelet sends in
    /// UpdateRuntimeConfig) the subnet new pods get addresses from: network
    /// [`POD_CIDR_NETWORK`] on it becomes the default network. The same CIDR again
    /// changes nothing; another one replaces the network if no pod is on it, and is
    /// refused if one is. Returns the network.
    pub fn use_pod_cidr(&self, cidr: ipnetwork::Ipv4Network) -> Result<NetworkName> {
        let name = NetworkName::new(POD_CIDR_NETWORK)?;
        let refuse = |why: String| PodError::from(ConfigError::PodCidr { cidr: cidr.to_string(), why });
        if cidr.network() != cidr.ip() {
            return Err(refuse(format!("has host bits set: the network is {}/{}", cidr.network(), cidr.prefix())));
        }
        // Unless told (an overlay's), the MTU the network has.
        let mut mtu = self.mtu;
        if let Some(had) = self.node.node().network(&name)? {
            let new_mtu = self.mtu.filter(|m| had.mtu != Some(*m));
            if had.subnet != cidr || new_mtu.is_some() {
                let held = self.node.node().members(&name)?.len();
                if held > 0 {
                    return Err(refuse(match new_mtu {
                        Some(m) if had.subnet == cidr => format!(
                            "network {name} has links of MTU {} and {held} pods are on it: remove them before its MTU changes to {m}",
                            had.mtu.unwrap_or_default()
                        ),
                        _ => format!(
                            "network {name} is on {} and {held} pods hold addresses of it: remove them before the node's pod CIDR changes",
                            had.subnet
                        ),
                    }));
                }
                self.node.remove_network(&name)?;
            } else {
                mtu = had.mtu;
            }
        }
        self.create_network(NetworkConfig { mtu, ..NetworkConfig::new(name.clone(), bridge_name(name.as_str()), cidr) })?;
        match self.default_network.write() {
            Ok(mut d) => *d = name.clone(),
            Err(poisoned) => *poisoned.into_inner() = name.clone(),
        }
        Ok(name)
    }

    /// This runtime's scope (pod names are unique within it).
    /// What the sweep at open removed and finished (see [`Pods::sweep`]), and what it
    /// could not: `minipod gc` prints it.
    pub fn swept_at_open(&self) -> &SweepReport {
        &self.swept
    }

    /// Where services' cluster IPs come from.
    pub fn service_cidr(&self) -> &ipnetwork::Ipv4Network {
        &self.service_cidr
    }

    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    /// The domain service names are under in DNS (default `cluster.local`).
    pub fn cluster_domain(&self) -> &str {
        &self.cluster_domain
    }

    /// Whether pods of this runtime outlive it.
    pub fn keeps_pods(&self) -> bool {
        self.keep_pods
    }

    /// Removes the pods this runtime owns and what it made for itself (its network,
    /// its private node). Every step is tried and every error returned: one as it
    /// is, several as [`PodError::Teardown`].
    pub fn shutdown(&self) -> Result<()> {
        let mut failures = Failures::default();
        if self.instance.is_some() && !self.keep_pods {
            match self.pods() {
                Ok(pods) => {
                    for pod in pods.into_iter().filter(|p| p.scope == self.scope && p.owner.is_some_and(|o| o == Owner::me())) {
                        failures.note(self.teardown(&pod));
                    }
                }
                Err(e) => failures.note(Err(e)),
            }
        }
        if let Some(inst) = &self.instance {
            failures.note(self.remove_instance(inst));
        }
        failures.finish(format!("shutting down runtime instance {}", self.scope))
    }

    pub(super) fn remove_instance(&self, inst: &Instance) -> Result<()> {
        remove_instance(&self.executor, &self.root, inst)
    }
}
