//! Clusters on one machine: N nodes, each a node namespace with a runtime of its own
//! (its firewall, DNS and pods), wired to an underlay of their own (a bridge in a
//! namespace, the nodes at 192.0.2.11, .12, ...) and joined by a VXLAN overlay, so
//! that every pod reaches every pod by its address whatever node it is on, and sees
//! the sender's own address (see [`crate::netstack::overlay`]).
//!
//! Each node takes the /24 of the cluster CIDR (default 10.244.0.0/16, as flannel and
//! kubeadm do) of its index; its pods' links carry the uplink's MTU less the VXLAN
//! overhead. Every node is told every other's uplink MAC (permanent neighbour entries,
//! which the machine's ARP table, one for all namespaces, does not count), so that a
//! cluster can have as many nodes as it has addresses for (200), not as many as could
//! learn each other by ARP (~32). Dropping the cluster removes every pod, node and the
//! underlay; the cluster of a harness killed with SIGKILL is swept by the next
//! [`ClusterBuilder::open`] on the same directory.

use std::sync::atomic::{AtomicUsize, Ordering};

use ipnetwork::Ipv4Network;

use super::*;
use crate::netstack::netns::{create_pinned, remove_pinned, Netns};
use crate::netstack::overlay::{OverlayPeer, VXLAN_OVERHEAD};
use crate::netstack::{underlay, IfName, NetworkError};
use crate::pod::Owner;
use crate::service::{self, Change, Document, Object, ObjectKey};

/// The pod CIDR a cluster's nodes take their /24s from unless told (flannel's).
pub const DEFAULT_CLUSTER_CIDR: &str = "10.244.0.0/16";
/// The VXLAN network identifier unless told (flannel's).
pub const DEFAULT_VNI: u32 = 1;
/// Where clusters live unless told.
pub const DEFAULT_CLUSTER_DIR: &str = "/run/minipod/clusters";

/// Each node's link to the underlay, in its namespace.
const UPLINK: &str = "ul0";
/// The MTU of the underlay, as of a plain Ethernet LAN.
const UNDERLAY_MTU: u32 = 1500;

static CLUSTERS: AtomicUsize = AtomicUsize::new(0);

/// What is recorded of a cluster, so that the next open can sweep it if its owner died.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct ClusterRecord {
    owner: Owner,
    nodes: usize,
    images: PathBuf,
    /// Kept after its maker (the CLI's `minipod cluster create`): never swept, removed
    /// by [`Cluster::remove_kept`].
    #[serde(default)]
    kept: bool,
    /// The CIDR its nodes' subnets come from (a record without one used the default).
    #[serde(default)]
    cidr: Option<Ipv4Network>,
}

const RECORD: &str = "cluster.json";

/// Options for a [`Cluster`].
#[derive(Debug, Clone)]
pub struct ClusterBuilder {
    nodes: usize,
    vni: u32,
    cidr: Result<Ipv4Network, String>,
    dir: PathBuf,
    images: PathBuf,
}

impl Default for ClusterBuilder {
    fn default() -> Self {
        Self {
            nodes: 1,
            vni: DEFAULT_VNI,
            cidr: DEFAULT_CLUSTER_CIDR.parse().map_err(|e: ipnetwork::IpNetworkError| e.to_string()),
            dir: PathBuf::from(DEFAULT_CLUSTER_DIR),
            images: PathBuf::from(crate::image::DEFAULT_DIR),
        }
    }
}

impl ClusterBuilder {
    /// How many nodes (default 1).
    pub fn nodes(mut self, n: usize) -> Self {
        self.nodes = n;
        self
    }

    /// The VXLAN network identifier (default 1).
    pub fn vni(mut self, vni: u32) -> Self {
        self.vni = vni;
        self
    }

    /// The CIDR the nodes' pod subnets (a /24 each) come from.
    pub fn cluster_cidr(mut self, cidr: &str) -> Self {
        self.cidr = cidr.parse().map_err(|e: ipnetwork::IpNetworkError| format!("{cidr:?}: {e}"));
        self
    }

    /// Where the cluster's namespaces and node state go (default `/run/minipod/clusters`).
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = dir.into();
        self
    }

    /// The image store every node uses.
    pub fn image_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.images = dir.into();
        self
    }

    /// Makes the underlay, the nodes and their overlay, after sweeping the clusters of
    /// dead owners under the same directory. Nothing is left of a cluster that fails
    /// to open.
    pub async fn open(self) -> Result<Cluster> {
        let cidr = self.cidr.clone().map_err(|why| ConfigError::Cluster(format!("cluster CIDR {why}")))?;
        let room = if cidr.prefix() <= 24 { 1usize << (24 - cidr.prefix()).min(16) } else { 0 };
        if self.nodes == 0 || self.nodes > room || self.nodes > 200 {
            return Err(ConfigError::Cluster(format!(
                "{} nodes: give 1 to {} (one /24 of {cidr} each, and an underlay address each)",
                self.nodes,
                room.min(200)
            ))
            .into());
        }
        sweep(&self.dir).await;
        let name = format!("{}-{}", std::process::id(), CLUSTERS.fetch_add(1, Ordering::SeqCst));
        let dir = self.dir.join(name);
        std::fs::create_dir_all(dir.join("ns")).map_err(crate::pod::io_err("creating", &dir))?;
        let record = ClusterRecord { owner: Owner::me(), nodes: self.nodes, images: self.images.clone(), kept: false, cidr: Some(cidr) };
        let mut cluster = Cluster { dir, underlay: None, nodes: Vec::new(), kept: false };
        crate::pod::write_json(&cluster.dir.join(RECORD), &record)?;
        // On any failure the partial cluster's Drop takes back what was made.
        let ns = cluster.dir.join("ns/underlay");
        let underlay_ns = create_pinned(&ns)?;
        cluster.underlay = Some(ns);
        underlay::make(&underlay_ns).await.map_err(NetworkError::from)?;
        for i in 0..self.nodes {
            let peers: Vec<PathBuf> = (0..self.nodes).filter(|j| *j != i).map(|j| cluster.dir.join(format!("node-{j}"))).collect();
            let node = make_node(&cluster.dir, &underlay_ns, i, &cidr, self.vni, &self.images, peers).await?;
            cluster.nodes.push(node);
        }
        // Every node knows every other's uplink before the first probe: a node that had
        // to ask by ARP would fill the machine's ARP table (see underlay::know).
        let uplink = IfName::new(UPLINK)?;
        for a in &cluster.nodes {
            let ns = Netns::open(&a.netns)?;
            for b in cluster.nodes.iter().filter(|b| b.index != a.index) {
                underlay::know(&ns, &uplink, b.address).await.map_err(NetworkError::from)?;
            }
        }
        for a in &cluster.nodes {
            for b in cluster.nodes.iter().filter(|b| b.index != a.index) {
                a.runtime().pods().node().add_overlay_peer(b.peer()).await?;
            }
        }
        Ok(cluster)
    }
}

/// Node `i`: its namespace, uplink, runtime and place in the overlay.
async fn make_node(
    dir: &Path,
    underlay_ns: &Netns,
    i: usize,
    cidr: &Ipv4Network,
    vni: u32,
    images: &Path,
    peers: Vec<PathBuf>,
) -> Result<ClusterNode> {
    let netns = dir.join(format!("ns/node-{i}"));
    let ns = create_pinned(&netns)?;
    let mut node = ClusterNode::at(dir, i, cidr)?;
    let (address, subnet, port) = (node.address, node.subnet, node.port.clone());
    let uplink = IfName::new(UPLINK)?;
    // Dropped on failure: the namespace goes with what is in it.
    let wired = async {
        let nl = crate::netstack::netlink::Netlink::open(&ns).map_err(NetworkError::from)?;
        let lo = nl.index("lo").await.map_err(NetworkError::from)?;
        nl.up(lo, "setting lo up in a cluster node").await.map_err(NetworkError::from)?;
        underlay::plug(underlay_ns, &ns, &port, &uplink, address, 24, UNDERLAY_MTU).await.map_err(NetworkError::from)?;
        let rt = node_runtime(dir, i, images)
            .network("cluster")?
            .cidr(&subnet.to_string())?
            .mtu(UNDERLAY_MTU - VXLAN_OVERHEAD)
            .peer_roots(peers)
            .open()
            .await?;
        let net = rt.pods().default_network().clone();
        rt.pods().node().join_overlay(&net, vni, &uplink, address).await?;
        Ok::<_, PodError>(rt)
    };
    match wired.await {
        Ok(rt) => {
            node.rt = Some(rt);
            Ok(node)
        }
        Err(e) => {
            drop(node);
            Err(e)
        }
    }
}

/// The runtime of node `i` of the cluster at `dir`: its state root and namespace.
fn node_runtime(dir: &Path, i: usize, images: &Path) -> MinipodBuilder {
    Minipod::builder().state_dir(dir.join(format!("node-{i}"))).image_dir(images).node_netns(dir.join(format!("ns/node-{i}")))
}

/// One node of a [`Cluster`].
pub struct ClusterNode {
    index: usize,
    rt: Option<Minipod>,
    address: Ipv4Addr,
    subnet: Ipv4Network,
    netns: PathBuf,
    port: IfName,
    /// Left in place on drop (a kept cluster).
    kept: bool,
}

impl ClusterNode {
    /// Node `i` of the cluster at `dir` whose pod subnets come from `cidr`, with no
    /// runtime yet: its underlay address, subnet, namespace and underlay port.
    fn at(dir: &Path, i: usize, cidr: &Ipv4Network) -> Result<ClusterNode> {
        let subnet = Ipv4Network::new(Ipv4Addr::from(u32::from(cidr.network()) + ((i as u32) << 8)), 24)
            .map_err(|e| ConfigError::Cluster(format!("the subnet of node {i}: {e}")))?;
        Ok(ClusterNode {
            index: i,
            rt: None,
            address: Ipv4Addr::new(192, 0, 2, 11 + i as u8),
            subnet,
            netns: dir.join(format!("ns/node-{i}")),
            port: IfName::new(format!("n{i}"))?,
            kept: false,
        })
    }

    /// Its place in the cluster (0-based).
    pub fn index(&self) -> usize {
        self.index
    }

    /// Its runtime: pods, services and policies on this node.
    pub fn runtime(&self) -> &Minipod {
        // Set for as long as the node is in a cluster's list.
        self.rt.as_ref().unwrap_or_else(|| unreachable!("a listed node has its runtime"))
    }

    /// Starts describing a pod on this node.
    pub fn pod(&self, name: &str) -> PodBuilder {
        self.runtime().pod(name)
    }

    /// Its address on the underlay.
    pub fn address(&self) -> Ipv4Addr {
        self.address
    }

    /// The subnet its pods get addresses from.
    pub fn pod_cidr(&self) -> Ipv4Network {
        self.subnet
    }

    /// Its node namespace.
    pub fn netns(&self) -> &Path {
        &self.netns
    }

    fn peer(&self) -> OverlayPeer {
        OverlayPeer { underlay: self.address, subnet: self.subnet }
    }
}

impl Drop for ClusterNode {
    fn drop(&mut self) {
        // The runtime first (its pods and their processes), then the namespace, which
        // takes the uplink, the VXLAN device and the firewall with it.
        drop(self.rt.take());
        if self.kept {
            return;
        }
        if let Err(e) = remove_pinned(&self.netns) {
            tracing::warn!("removing cluster node {}: {e}", self.netns.display());
        }
    }
}

/// A cluster of nodes on this machine. Dropping it removes everything it made.
pub struct Cluster {
    dir: PathBuf,
    underlay: Option<PathBuf>,
    nodes: Vec<ClusterNode>,
    kept: bool,
}

impl Cluster {
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder::default()
    }

    /// Its nodes, by index.
    pub fn nodes(&self) -> &[ClusterNode] {
        &self.nodes
    }

    /// Node `index`, if the cluster has it.
    pub fn node(&self, index: usize) -> Option<&ClusterNode> {
        self.nodes.iter().find(|n| n.index == index)
    }

    /// Applies Kubernetes documents on every node, as one cluster's API server would:
    /// a Service gets the same cluster IP and node ports on each (picked on the first),
    /// and its endpoints are the ready pods it selects on every node, followed as they
    /// come and go on any of them; the DNS of every node answers its name. A
    /// NetworkPolicy isolates the pods it selects on every node, and its peers are the
    /// pods it means on any node, followed the same way. On a failure
    /// the objects this call created are deleted again.
    pub async fn apply_yaml(&self, text: &str) -> Result<Vec<(ObjectKey, Change)>> {
        let docs = service::parse(text).map_err(service::ServiceError::from)?;
        let Some(first) = self.nodes.first() else { return Ok(vec![]) };
        let changes = first.runtime().apply_documents(docs.clone()).await?;
        let created: Vec<Document> =
            docs.iter().filter(|d| changes.iter().any(|(k, c)| *k == d.object.key() && *c == Change::Created)).cloned().collect();
        // The others get what the first one picked.
        let mut pinned = Vec::new();
        for d in docs {
            let object = match d.object {
                Object::Service(mut m) => {
                    let rec = first.runtime().pods().service(&m.key)?;
                    m.cluster_ip = rec.cluster_ip;
                    for (p, q) in m.ports.iter_mut().zip(&rec.ports) {
                        p.node_port = q.node_port;
                    }
                    Object::Service(m)
                }
                other => other,
            };
            pinned.push(Document { index: d.index, object });
        }
        for (done, node) in self.nodes.iter().enumerate().skip(1) {
            if let Err(e) = node.runtime().apply_documents(pinned.clone()).await {
                // Best effort: what this call created goes from the nodes it reached.
                for n in &self.nodes[..done] {
                    let rt = n.runtime().inner.clone();
                    let gone = created.clone();
                    let _ = blocking(move || rt.pods.delete(&gone)).await;
                }
                return Err(e);
            }
        }
        Ok(changes)
    }

    /// Deletes what the documents name on every node: a node that fails does not stop
    /// the others; the first error is returned (deleting again finishes the job).
    pub async fn delete_yaml(&self, text: &str) -> Result<Vec<ObjectKey>> {
        let mut deleted = Vec::new();
        let mut first_err = None;
        for n in &self.nodes {
            match n.runtime().delete_yaml(text).await {
                Ok(keys) => deleted = keys,
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(deleted), Err)
    }

    /// Where it lives: its record, namespaces (`ns/`) and each node's state root
    /// (`node-N/`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Leaves the cluster in place when this goes (its namespaces, networks and
    /// overlay, which need no process): for the CLI's `minipod cluster create`, whose
    /// pods are made by later commands on each node's state root and namespace. Its
    /// pods made through this handle go; [`Cluster::remove_kept`] removes the rest.
    pub fn keep(mut self) -> Result<PathBuf> {
        let path = self.dir.join(RECORD);
        let mut rec: ClusterRecord = crate::netstack::record::read_json(&path).map_err(crate::pod::io_err("reading", &path))?;
        rec.kept = true;
        crate::pod::write_json(&path, &rec)?;
        self.kept = true;
        for n in &mut self.nodes {
            n.kept = true;
        }
        Ok(self.dir.clone())
    }

    /// The kept cluster at `dir` (see [`Cluster::keep`]), for later commands on it (the
    /// CLI's `minipod cluster apply`): each node's runtime opened on its state root and
    /// namespace, as that node of the cluster. Dropping the handle leaves everything in
    /// place, the pods too.
    pub async fn attach(dir: &Path) -> Result<Cluster> {
        let path = dir.join(RECORD);
        let rec: ClusterRecord = crate::netstack::record::read_json(&path).map_err(crate::pod::io_err("reading", &path))?;
        if !rec.kept {
            return Err(ConfigError::Cluster(format!(
                "{} belongs to the process that made it (pid {}); only a kept cluster (`minipod cluster create`) can be attached",
                dir.display(),
                rec.owner.pid
            ))
            .into());
        }
        let cidr = match rec.cidr {
            Some(c) => c,
            None => DEFAULT_CLUSTER_CIDR.parse().map_err(|e| ConfigError::Cluster(format!("{DEFAULT_CLUSTER_CIDR}: {e}")))?,
        };
        let mut cluster = Cluster { dir: dir.to_path_buf(), underlay: Some(dir.join("ns/underlay")), nodes: Vec::new(), kept: true };
        for i in 0..rec.nodes {
            let mut node = ClusterNode::at(dir, i, &cidr)?;
            node.kept = true;
            let state = dir.join(format!("node-{i}"));
            if !node.netns.exists() || !state.exists() {
                // Taken out of the cluster.
                continue;
            }
            let rt = node_runtime(dir, i, &rec.images).network("cluster")?.keep_pods().open().await?;
            node.rt = Some(rt);
            cluster.nodes.push(node);
        }
        Ok(cluster)
    }

    /// Removes the kept cluster at `dir`: every pod of each node (whoever made it),
    /// the nodes, the underlay, the directory.
    pub async fn remove_kept(dir: &Path) -> Result<()> {
        let path = dir.join(RECORD);
        let rec: ClusterRecord = crate::netstack::record::read_json(&path).map_err(crate::pod::io_err("reading", &path))?;
        let mut failures = Vec::new();
        for i in 0..rec.nodes {
            let (netns, state) = (dir.join(format!("ns/node-{i}")), dir.join(format!("node-{i}")));
            if netns.exists() && state.exists() {
                let rt = node_runtime(dir, i, &rec.images).keep_pods().open().await?;
                if let Err(e) = remove_every_pod(&rt).await {
                    failures.push(format!("node {i}: {e}"));
                }
            }
            let _ = remove_pinned(&netns);
        }
        let _ = remove_pinned(&dir.join("ns/underlay"));
        if !failures.is_empty() {
            return Err(ConfigError::Cluster(format!("removing {}: {}", dir.display(), failures.join("; "))).into());
        }
        std::fs::remove_dir_all(dir).map_err(crate::pod::io_err("removing", dir))
    }

    /// The clusters under `dir` (kept ones and those of live harnesses).
    pub fn list(dir: &Path) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(dir) else { return vec![] };
        let mut out: Vec<PathBuf> = entries.flatten().map(|e| e.path()).filter(|p| p.join(RECORD).exists()).collect();
        out.sort();
        out
    }

    /// Takes node `index` out: its pods (whoever made them, in a kept cluster too) and
    /// its overlay device go, then every other node forgets it (its route, neighbour
    /// and forwarding entries, and its underlay neighbour entry), then its runtime,
    /// namespace and state, so that no later [`Cluster::attach`] finds it.
    pub async fn remove_node(&mut self, index: usize) -> Result<()> {
        let Some(at) = self.nodes.iter().position(|n| n.index == index) else { return Ok(()) };
        let address = self.nodes[at].address;
        // Its pods go first, while it is still every peer's: none is an endpoint the
        // others cannot reach, and a failure here leaves a whole node in the list.
        remove_every_pod(self.nodes[at].runtime()).await?;
        self.nodes[at].runtime().pods().node().leave_overlay().await?;
        let uplink = IfName::new(UPLINK)?;
        for other in self.nodes.iter().filter(|n| n.index != index) {
            other.runtime().pods().node().remove_overlay_peer(address).await?;
            underlay::forget(&Netns::open(&other.netns)?, &uplink, address).await.map_err(NetworkError::from)?;
        }
        let mut node = self.nodes.remove(at);
        node.kept = false;
        let port = node.port.clone();
        drop(node);
        if let Some(ns) = &self.underlay {
            underlay::unplug(&Netns::open(ns)?, &port).await.map_err(NetworkError::from)?;
        }
        let state = self.dir.join(format!("node-{index}"));
        match std::fs::remove_dir_all(&state) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(crate::pod::io_err("removing", &state)(e)),
            _ => Ok(()),
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.nodes.clear();
        if self.kept {
            return;
        }
        if let Some(ns) = self.underlay.take() {
            if let Err(e) = remove_pinned(&ns) {
                tracing::warn!("removing the cluster's underlay {}: {e}", ns.display());
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            tracing::warn!("removing {}: {e}", self.dir.display());
        }
    }
}

/// Removes every pod of `rt`'s node, whoever made it.
async fn remove_every_pod(rt: &Minipod) -> Result<()> {
    let inner = rt.inner.clone();
    blocking(move || {
        for p in inner.pods.pods()? {
            inner.pods.remove_pod(p.id.as_str(), true)?;
        }
        Ok(())
    })
    .await
}

/// Removes the clusters under `dir` whose owner is gone: each node's runtime is opened
/// on its state (which sweeps the dead owner's pods, processes and links) and shut,
/// then the namespaces go. Best effort: what cannot be removed is logged.
async fn sweep(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let path = e.path();
        let Ok(rec) = crate::netstack::record::read_json::<ClusterRecord>(&path.join(RECORD)) else { continue };
        if rec.kept || rec.owner.alive() {
            continue;
        }
        for i in 0..rec.nodes {
            let netns = path.join(format!("ns/node-{i}"));
            let state = path.join(format!("node-{i}"));
            if netns.exists() && state.exists() {
                let opened = node_runtime(&path, i, &rec.images).network("cluster");
                match opened {
                    Ok(b) => match b.open().await {
                        Ok(rt) => {
                            if let Err(e) = rt.shutdown().await {
                                tracing::warn!("sweeping cluster node {}: {e}", state.display());
                            }
                        }
                        Err(e) => tracing::warn!("sweeping cluster node {}: {e}", state.display()),
                    },
                    Err(e) => tracing::warn!("sweeping cluster node {}: {e}", state.display()),
                }
            }
            let _ = remove_pinned(&netns);
        }
        let _ = remove_pinned(&path.join("ns/underlay"));
        if let Err(e) = std::fs::remove_dir_all(&path) {
            tracing::warn!("removing the swept cluster {}: {e}", path.display());
        }
    }
}
