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
//! - A process killed with SIGKILL runs no `Drop`: the next runtime that opens the
//!   same root removes its pods, containers, addresses, links, rules and mounts.

mod ready;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use ready::{Ready, DEFAULT_READY_TIMEOUT};

use crate::image::Image;
use crate::logs::LogLine;
use crate::netstack::{NetworkName, PortMapping, Proto};
use crate::pod::{
    BindMount, ContainerConfig, ContainerRecord, DnsConfig, ExecOutput, PodConfig, PodError, PodRecord, Pods, PodsOptions, RootfsSource,
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
        Err(_) => Err(PodError::Invalid("the runtime is shutting down".into())),
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
        self.opts.network = Some(NetworkName::new(name).map_err(|e| PodError::Invalid(e.to_string()))?);
        Ok(self)
    }

    /// Subnet of the default network, e.g. `10.77.0.0/24`.
    pub fn cidr(mut self, cidr: &str) -> Result<Self> {
        let net = cidr.parse().map_err(|e| PodError::Invalid(format!("CIDR {cidr:?}: {e}: give one such as 10.77.0.0/24")))?;
        self.opts.cidr = Some(net);
        Ok(self)
    }

    /// Pod names are unique per scope (default: unique to this runtime).
    pub fn scope(mut self, scope: &str) -> Self {
        self.opts.scope = Some(scope.to_string());
        self
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
        PodBuilder { rt: self.inner.clone(), cfg: PodConfig { name: name.to_string(), ..Default::default() }, invalid: None }
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

/// A pod being described; [`PodBuilder::start`] makes it.
pub struct PodBuilder {
    rt: Arc<Inner>,
    cfg: PodConfig,
    /// A bad argument seen while building, reported by `start`.
    invalid: Option<String>,
}

impl PodBuilder {
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.cfg.labels.insert(key.into(), value.into());
        self
    }

    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        self.cfg.annotations.insert(key.into(), value.into());
        self
    }

    pub fn hostname(mut self, hostname: &str) -> Self {
        self.cfg.hostname = Some(hostname.into());
        self
    }

    /// Joins network `name` (in order; the first carries the default route and ports).
    pub fn network(mut self, name: &str) -> Self {
        match NetworkName::new(name) {
            Ok(n) => self.cfg.networks.push(n),
            Err(e) => self.invalid = Some(e.to_string()),
        }
        self
    }

    /// Another DNS name for the pod on its networks.
    pub fn alias(mut self, name: &str) -> Self {
        self.cfg.aliases.push(name.into());
        self
    }

    /// Publishes TCP `host_port` on every node address to the pod's `container_port`.
    pub fn publish(self, host_port: u16, container_port: u16) -> Self {
        self.publish_port(PortMapping { proto: Proto::Tcp, host_port, host_ip: None, container_port })
    }

    /// Publishes UDP `host_port` to the pod's `container_port`.
    pub fn publish_udp(self, host_port: u16, container_port: u16) -> Self {
        self.publish_port(PortMapping { proto: Proto::Udp, host_port, host_ip: None, container_port })
    }

    pub fn publish_port(mut self, p: PortMapping) -> Self {
        self.cfg.ports.push(p);
        self
    }

    /// resolv.conf settings instead of the network's DNS server.
    pub fn dns(mut self, dns: DnsConfig) -> Self {
        self.cfg.dns = Some(dns);
        self
    }

    /// One PID namespace for all the pod's containers: they see each other's
    /// processes (Kubernetes' shareProcessNamespace).
    pub fn share_pid(mut self) -> Self {
        self.cfg.share_pid = true;
        self
    }

    /// Where container logs go (`<dir>/<name>_<attempt>.log`).
    pub fn log_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cfg.log_dir = Some(dir.into());
        self
    }

    /// Makes the pod: namespaces, addresses, routes, ports, DNS names, /etc files.
    pub async fn start(self) -> Result<Pod> {
        if let Some(why) = self.invalid {
            return Err(PodError::Invalid(why));
        }
        let rt = self.rt.clone();
        let cfg = self.cfg;
        let record = blocking(move || rt.pods.create_pod(cfg)).await?;
        let cleanup = !self.rt.pods.keeps_pods();
        Ok(Pod { rt: self.rt, record, cleanup })
    }
}

/// A running pod. Dropping it removes it with its containers (unless [`Pod::keep`]).
pub struct Pod {
    rt: Arc<Inner>,
    record: PodRecord,
    cleanup: bool,
}

impl Drop for Pod {
    fn drop(&mut self) {
        if self.cleanup {
            if let Err(e) = self.rt.pods.remove_pod(self.record.id.as_str(), true) {
                tracing::warn!(pod = %self.record.name, "removing pod on drop: {}", crate::process::chain(&e));
            }
        }
    }
}

impl Pod {
    pub fn id(&self) -> &str {
        self.record.id.as_str()
    }

    pub fn name(&self) -> &str {
        &self.record.name
    }

    /// The pod's address on its first network.
    pub fn ip(&self) -> Ipv4Addr {
        // A ready pod has at least one network (create_pod attaches one or fails).
        self.record.ip().unwrap_or(Ipv4Addr::UNSPECIFIED)
    }

    /// Everything recorded about the pod.
    pub fn record(&self) -> &PodRecord {
        &self.record
    }

    /// Starts describing a container of this pod named `name`.
    pub fn container(&self, name: &str) -> ContainerBuilder {
        ContainerBuilder {
            rt: self.rt.clone(),
            pod: self.record.clone(),
            cfg: ContainerConfig::new(name, RootfsSource::Dir(PathBuf::new())),
            source_set: false,
            ready: vec![],
        }
    }

    /// A container of this pod made earlier.
    pub async fn get_container(&self, name: &str) -> Result<Container> {
        let rt = self.rt.clone();
        let (pod, name) = (self.record.id.to_string(), name.to_string());
        let record = blocking(move || rt.pods.container(&pod, &name)).await?;
        Ok(Container { rt: self.rt.clone(), pod: self.record.clone(), record })
    }

    /// Waits until `ready` holds for the pod (a listening port, an HTTP 200).
    pub async fn wait_for(&self, ready: Ready) -> Result<()> {
        ready::wait(&self.rt, &self.record, None, ready).await
    }

    /// An HTTP/1.0 GET of `path` on the pod's `port`, from the node: (status, body).
    pub async fn http_get(&self, port: u16, path: &str) -> Result<(u16, String)> {
        let rt = self.rt.clone();
        let addr = SocketAddr::new(IpAddr::V4(self.ip()), port);
        let path = path.to_string();
        blocking(move || ready::http_get(&rt.pods, addr, &path)).await
    }

    /// Stops every container (SIGTERM, SIGKILL after 10 s) and detaches the networks.
    pub async fn stop(&mut self) -> Result<()> {
        let rt = self.rt.clone();
        let id = self.record.id.to_string();
        self.record = blocking(move || rt.pods.stop_pod(&id, crate::pod::DEFAULT_STOP_TIMEOUT)).await?;
        Ok(())
    }

    /// Removes the pod and its containers, reporting teardown errors.
    pub async fn remove(mut self) -> Result<()> {
        self.cleanup = false;
        let rt = self.rt.clone();
        let id = self.record.id.to_string();
        blocking(move || rt.pods.remove_pod(&id, true)).await
    }

    /// Keeps the pod after this handle and this process are gone: neither drop, nor
    /// shutdown, nor the next runtime's sweep removes it. Returns its record.
    pub async fn keep(mut self) -> Result<PodRecord> {
        let rt = self.rt.clone();
        let id = self.record.id.clone();
        let kept = blocking(move || rt.pods.disown(&id)).await?;
        self.cleanup = false;
        Ok(kept)
    }
}

/// A container being described; [`ContainerBuilder::start`] makes and starts it.
pub struct ContainerBuilder {
    rt: Arc<Inner>,
    pod: PodRecord,
    cfg: ContainerConfig,
    source_set: bool,
    ready: Vec<Ready>,
}

impl ContainerBuilder {
    /// Root filesystem from an image in the store (by reference or id).
    pub fn image(mut self, reference: &str) -> Self {
        self.cfg.source = RootfsSource::Image(reference.into());
        self.source_set = true;
        self
    }

    /// Root filesystem from a directory, kept unchanged under an overlay.
    pub fn rootfs(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cfg.source = RootfsSource::Dir(dir.into());
        self.source_set = true;
        self
    }

    /// The command, replacing the image's entrypoint and cmd.
    pub fn cmd<S: Into<String>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.cfg.process.args = Some(args.into_iter().map(Into::into).collect());
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.cfg.process.env.push(format!("{key}={value}"));
        self
    }

    pub fn workdir(mut self, dir: &str) -> Self {
        self.cfg.process.workdir = Some(dir.into());
        self
    }

    pub fn user(mut self, uid: u32, gid: u32) -> Self {
        self.cfg.process.user = Some((uid, gid));
        self
    }

    /// Bind-mounts host path `host` at `container`, writable.
    pub fn mount(mut self, host: impl Into<PathBuf>, container: impl Into<PathBuf>) -> Self {
        self.cfg.mounts.push(BindMount {
            host: host.into(),
            container: container.into(),
            readonly: false,
            propagation: Default::default(),
        });
        self
    }

    /// Bind-mounts host path `host` at `container`, read-only.
    pub fn mount_ro(mut self, host: impl Into<PathBuf>, container: impl Into<PathBuf>) -> Self {
        self.cfg.mounts.push(BindMount { host: host.into(), container: container.into(), readonly: true, propagation: Default::default() });
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.cfg.labels.insert(key.into(), value.into());
        self
    }

    /// Where the container's CRI-format log goes.
    pub fn log_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.cfg.log_path = Some(path.into());
        self
    }

    /// [`ContainerBuilder::start`] returns once this holds (checks run in order).
    pub fn wait_for(mut self, ready: Ready) -> Self {
        self.ready.push(ready);
        self
    }

    /// Creates the container without starting its process.
    pub async fn create(self) -> Result<Container> {
        if !self.source_set {
            return Err(PodError::Invalid(format!("container {}: give an image or a rootfs directory", self.cfg.name)));
        }
        let rt = self.rt.clone();
        let (pod, cfg) = (self.pod.id.to_string(), self.cfg);
        let record = blocking(move || rt.pods.create_container(&pod, cfg)).await?;
        Ok(Container { rt: self.rt, pod: self.pod, record })
    }

    /// Creates and starts the container, then waits for every readiness condition.
    pub async fn start(self) -> Result<Container> {
        let ready = self.ready.clone();
        let c = self.create().await?;
        c.start().await?;
        for r in ready {
            c.wait_for(r).await?;
        }
        Ok(c)
    }
}

/// A container of a pod. It goes with its pod; dropping this handle keeps it.
#[derive(Clone)]
pub struct Container {
    rt: Arc<Inner>,
    pod: PodRecord,
    record: ContainerRecord,
}

impl Container {
    /// The id under the runtime root.
    pub fn id(&self) -> &str {
        self.record.id.as_str()
    }

    pub fn name(&self) -> &str {
        &self.record.name
    }

    pub fn record(&self) -> &ContainerRecord {
        &self.record
    }

    async fn with<T: Send + 'static>(&self, f: impl FnOnce(&Pods, &ContainerRecord) -> Result<T> + Send + 'static) -> Result<T> {
        let (rt, rec) = (self.rt.clone(), self.record.clone());
        blocking(move || f(&rt.pods, &rec)).await
    }

    /// Releases a created container's process.
    pub async fn start(&self) -> Result<()> {
        self.with(|p, c| p.start_container(c)).await
    }

    /// Runs a command inside (killed after 30 s) and collects its output.
    pub async fn exec<S: Into<String>>(&self, args: impl IntoIterator<Item = S>) -> Result<ExecOutput> {
        self.exec_timeout(args, DEFAULT_EXEC_TIMEOUT).await
    }

    /// [`Container::exec`] with another time limit.
    pub async fn exec_timeout<S: Into<String>>(&self, args: impl IntoIterator<Item = S>, timeout: Duration) -> Result<ExecOutput> {
        let args: Vec<String> = args.into_iter().map(Into::into).collect();
        self.with(move |p, c| p.exec(c, args, Some(timeout))).await
    }

    /// The log so far.
    pub async fn logs(&self) -> Result<Vec<LogLine>> {
        self.with(|p, c| p.logs(c)).await
    }

    /// The log so far as text, one line per line, stdout and stderr interleaved.
    pub async fn logs_text(&self) -> Result<String> {
        Ok(self.logs().await?.into_iter().map(|l| l.text + "\n").collect())
    }

    /// Waits for the process to exit.
    pub async fn wait(&self) -> Result<ExitStatus> {
        self.with(|p, c| p.wait_container(c)).await
    }

    /// The runtime's state of the container.
    pub async fn state(&self) -> Result<ContainerState> {
        self.with(|p, c| p.container_state(c)).await
    }

    /// SIGTERM, then SIGKILL after `timeout`.
    pub async fn stop(&self, timeout: Duration) -> Result<()> {
        self.with(move |p, c| p.stop_container_record(c, timeout)).await
    }

    pub async fn kill(&self, signal: Signal) -> Result<()> {
        self.with(move |p, c| p.kill(c, signal)).await
    }

    /// Removes the container (killing it if it runs).
    pub async fn remove(self) -> Result<()> {
        self.with(|p, c| p.remove_container_record(c, true)).await
    }

    /// Waits until `ready` holds (a port, a log line, an exec, an HTTP 200).
    pub async fn wait_for(&self, ready: Ready) -> Result<()> {
        ready::wait(&self.rt, &self.pod, Some(&self.record), ready).await
    }
}

/// Labels as a map, for callers that build them elsewhere.
pub type Labels = BTreeMap<String, String>;

impl std::fmt::Debug for Minipod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Minipod").field("root", &self.inner.pods.root()).field("scope", &self.inner.pods.scope()).finish()
    }
}

impl std::fmt::Debug for Pod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pod").field("id", &self.record.id).field("name", &self.record.name).field("ip", &self.record.ip()).finish()
    }
}

impl std::fmt::Debug for Container {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Container").field("id", &self.record.id).field("pod", &self.pod.name).finish()
    }
}
