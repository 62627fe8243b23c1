//! The async API for test harnesses and other embedders: real pods in a few lines,
//! cleaned up when the handles drop.
//!
//! ```no_run
//! # async fn demo() -> Result<(), minipod_runtime::PodError> {
//! use minipod_runtime::embed::{Minipod, Ready};
//!
//! let rt = Minipod::builder().private_node().open().await?;
//! let pod = rt.pod("web").publish(8080, 80).start().await?;
//! let web = pod.container("httpd").rootfs("/srv/busybox").cmd(["httpd", "-f", "-p", "80"]).wait_for(Ready::port(80)).start().await?;
//! let out = web.exec(["wget", "-qO-", "http://127.0.0.1/"]).await?;
//! # let _ = out;
//! # Ok(())
//! # }
//! ```
//!
//! - [`Minipod`] opens a state root (default `/run/minipod`) and sweeps what dead
//!   processes left there. Each instance has a scope of its own (pod names are unique
//!   per scope) and, unless told a network, a network of its own on a free /24 of
//!   10.89.0.0/16, so parallel tests never see each other's pods.
//! - [`Pod`] and the runtime itself clean up on `Drop` with blocking calls on a
//!   private thread: a plain `#[test]`, either tokio flavour and a panic unwinding
//!   all work. A [`Container`] belongs to its pod and goes with it. For the errors of
//!   teardown, call [`Pod::remove`] or [`Minipod::shutdown`].
//! - [`Service`] puts a cluster IP in front of the pods a selector picks
//!   (`rt.service("web").selector("app", "web").port(80, 8080).apply()`), found by
//!   name through the node's DNS; [`Minipod::apply_yaml`] takes the Kubernetes YAML
//!   that `minipod apply -f` does. Pods carry labels and a namespace
//!   ([`PodBuilder::namespace`]).
//! - [`NetworkPolicy`] isolates the pods a selector picks, letting through what its
//!   [`PolicyRule`]s allow (`rt.network_policy("db").select("app", "db")
//!   .ingress(PolicyRule::new().pods(&[("app", "web")]).tcp(5432)).apply()`), deleted
//!   on drop like a service.
//! - [`Cluster`] makes N nodes on this machine, each with a runtime of its own, joined
//!   by a VXLAN overlay (`Cluster::builder().nodes(3).open()`, then
//!   `cluster.node(1).unwrap().pod("web")`): pods reach pods of every node by address.
//! - A process killed with SIGKILL runs no `Drop`: the next runtime that opens the
//!   same root removes its pods, containers, addresses, links, rules and mounts.

mod cluster;
mod container;
mod pod;
mod policy;
mod ready;
mod service;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use cluster::{Cluster, ClusterBuilder, ClusterNode, DEFAULT_CLUSTER_CIDR, DEFAULT_CLUSTER_DIR, DEFAULT_VNI};
pub use container::{Container, ContainerBuilder};
pub use pod::{Pod, PodBuilder};
pub use policy::{NetworkPolicy, NetworkPolicyBuilder, PolicyRule};
pub use ready::{probe_until_stopped, Ready, DEFAULT_FAILURE_THRESHOLD, DEFAULT_PROBE_PERIOD, DEFAULT_READY_TIMEOUT};
pub use service::{Service, ServiceBuilder};

use crate::image::Image;
use crate::logs::LogLine;
use crate::netstack::{Alias, ContainerName, Hostname, NameError, Namespace, NetworkName, PodName, PortMapping, Proto, Scope, ServiceName};
use crate::pod::{
    BindMount, ConfigError, ContainerConfig, ContainerRecord, DnsConfig, ExecOutput, PodConfig, PodError, PodRecord, Pods, PodsOptions,
    RootfsSource,
};
use crate::state::{ContainerState, ExitStatus};
use crate::Signal;

/// Default time an exec may run before it is killed.
pub const DEFAULT_EXEC_TIMEOUT: Duration = Duration::from_secs(30);

type Result<T, E = PodError> = std::result::Result<T, E>;

struct Inner {
    pods: Pods,
    shut: std::sync::atomic::AtomicBool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if !self.shut.swap(true, std::sync::atomic::Ordering::AcqRel) {
            if let Err(e) = self.pods.shutdown() {
                tracing::warn!("minipod teardown on drop: {}", crate::process::chain(&e));
            }
        }
    }
}

/// Runs blocking work off the caller's async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(PodError::ShuttingDown),
    }
}

/// An open pod runtime. Cheap to clone; the last clone to drop removes every pod it
/// owns and whatever it made for itself.
#[derive(Clone)]
pub struct Minipod {
    inner: Arc<Inner>,
}

/// Options for [`Minipod`].
#[derive(Debug, Clone, Default)]
pub struct MinipodBuilder {
    opts: PodsOptions,
}

impl MinipodBuilder {
    /// State root (default `/run/minipod`).
    pub fn state_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.opts.root = dir.into();
        self
    }

    /// Image store (default `/var/lib/minipod/images`).
    pub fn image_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.opts.images = dir.into();
        self
    }

    /// The node: a network namespace pinned at `path` holds the bridges instead of the
    /// caller's own.
    pub fn node_netns(mut self, path: impl Into<PathBuf>) -> Self {
        self.opts.node_netns = Some(path.into());
        self
    }

    /// A node namespace of this runtime's own: nothing touches the host's network,
    /// and pods are reached through [`Minipod::connect`].
    pub fn private_node(mut self) -> Self {
        self.opts.private_node = true;
        self
    }

    /// The network pods join by default (created with [`MinipodBuilder::cidr`] if it
    /// does not exist).
    pub fn network(mut self, name: &str) -> Result<Self> {
        self.opts.network = Some(NetworkName::new(name)?);
        Ok(self)
    }

    /// Subnet of the default network, e.g. `10.77.0.0/24`.
    pub fn cidr(mut self, cidr: &str) -> Result<Self> {
        let net = cidr.parse().map_err(|e: ipnetwork::IpNetworkError| ConfigError::Cidr { cidr: cidr.to_string(), why: e.to_string() })?;
        self.opts.cidr = Some(net);
        Ok(self)
    }

    /// The state roots of the other nodes of a cluster on this machine: their pods are
    /// endpoints of this node's services and their services follow this node's pods
    /// (what [`Cluster`] gives each node).
    pub fn peer_roots(mut self, roots: Vec<PathBuf>) -> Self {
        self.opts.peer_roots = roots;
        self
    }

    /// MTU of the pods' links on the network this runtime makes (default: the node's
    /// default-route link's, or 1500).
    pub fn mtu(mut self, mtu: u32) -> Self {
        self.opts.mtu = Some(mtu);
        self
    }

    /// Where services' cluster IPs come from (default 10.96.0.0/12).
    pub fn service_cidr(mut self, cidr: &str) -> Result<Self> {
        let net = cidr.parse().map_err(|e: ipnetwork::IpNetworkError| ConfigError::Cidr { cidr: cidr.to_string(), why: e.to_string() })?;
        self.opts.service_cidr = Some(net);
        Ok(self)
    }

    /// The DNS domain service names are under (default `cluster.local`).
    pub fn cluster_domain(mut self, domain: &str) -> Self {
        self.opts.cluster_domain = Some(domain.into());
        self
    }

    /// Pod names are unique per scope (default: unique to this runtime).
    pub fn scope(mut self, scope: &str) -> Result<Self> {
        self.opts.scope = Some(Scope::new(scope)?);
        Ok(self)
    }

    /// Pods outlive this process (as for the CLI): nothing is removed on drop.
    pub fn keep_pods(mut self) -> Self {
        self.opts.keep_pods = true;
        self
    }

    /// Opens the runtime (and sweeps what dead processes left).
    pub async fn open(self) -> Result<Minipod> {
        let opts = self.opts;
        let pods = blocking(move || Pods::open(opts)).await?;
        Ok(Minipod { inner: Arc::new(Inner { pods, shut: false.into() }) })
    }
}

impl Minipod {
    /// A runtime with every default: state in `/run/minipod`, the host as node.
    pub async fn open() -> Result<Self> {
        Self::builder().open().await
    }

    pub fn builder() -> MinipodBuilder {
        MinipodBuilder::default()
    }

    /// The synchronous core, for what this API does not cover.
    pub fn pods(&self) -> &Pods {
        &self.inner.pods
    }

    /// Starts describing a pod named `name`.
    pub fn pod(&self, name: &str) -> PodBuilder {
        PodBuilder { rt: self.inner.clone(), cfg: PodName::new(name).map(PodConfig::new).map_err(Into::into) }
    }

    /// A pod made earlier (by name in this scope, or id); it is not removed on drop.
    pub async fn get_pod(&self, name_or_id: &str) -> Result<Pod> {
        let rt = self.inner.clone();
        let key = name_or_id.to_string();
        let record = blocking(move || rt.pods.pod(&key)).await?;
        Ok(Pod { rt: self.inner.clone(), record, cleanup: false })
    }

    /// Imports an OCI image layout directory or archive into the image store.
    pub async fn import_image(&self, path: impl AsRef<Path>, reference: Option<&str>) -> Result<Image> {
        let rt = self.inner.clone();
        let path = path.as_ref().to_path_buf();
        let reference = reference.map(str::to_string);
        blocking(move || Ok(rt.pods.images().import(&path, reference.as_deref())?)).await
    }

    /// A TCP connection to `addr` from the node's namespace: a pod's IP, or a port the
    /// node publishes on 127.0.0.1. Works for private nodes, which the caller's own
    /// namespace cannot reach.
    pub async fn connect(&self, addr: SocketAddr) -> Result<tokio::net::TcpStream> {
        let stream = self.connect_std(addr, Duration::from_secs(5)).await?;
        tokio::net::TcpStream::from_std(stream).map_err(|e| PodError::Io {
            what: "connecting to",
            path: addr.to_string().into(),
            source: e,
        })
    }

    async fn connect_std(&self, addr: SocketAddr, timeout: Duration) -> Result<std::net::TcpStream> {
        let node = self.inner.pods.node_ref().netns.clone();
        blocking(move || {
            let io = |source| PodError::Io { what: "connecting to", path: addr.to_string().into(), source };
            let ns = match &node {
                Some(p) => crate::netstack::netns::Netns::open(p)?,
                None => crate::netstack::netns::Netns::current()?,
            };
            let s = ns.run(move || std::net::TcpStream::connect_timeout(&addr, timeout))?.map_err(io)?;
            s.set_nonblocking(true).map_err(io)?;
            Ok(s)
        })
        .await
    }

    /// Removes every pod this runtime owns and what it made for itself, reporting the
    /// first error (drop does the same, silently).
    pub async fn shutdown(self) -> Result<()> {
        let inner = self.inner.clone();
        blocking(move || {
            if inner.shut.swap(true, std::sync::atomic::Ordering::AcqRel) {
                return Ok(());
            }
            inner.pods.shutdown()
        })
        .await
    }
}

/// Labels as a map, for callers that build them elsewhere.
pub type Labels = BTreeMap<String, String>;

impl std::fmt::Debug for Minipod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Minipod").field("root", &self.inner.pods.root()).field("scope", &self.inner.pods.scope()).finish()
    }
}
