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
//! # Crashes
//!
//! Any process may be killed at any step, and [`Pods::open`] mends what it left (the
//! sweep, also `minipod gc`):
//!
//! - a pod directory is put together under a temporary name and renamed into place,
//!   so it always holds its record; its name is claimed after that, by hard-linking a
//!   whole claim file, so a claim whose pod has no record is stale and taken over;
//! - a stop records `stopping` and a removal `removing` before their first step,
//!   under the pod's lock: one found with the lock free was cut short, and is
//!   finished (a `stopping` pod is not ready meanwhile);
//! - temporary files and directories (`.NAME.tmp.PID.SEQ`) of dead writers go, and
//!   so do pods made by a process that died before they were ready;
//! - a ready pod on this node whose host link is gone (deleted by hand, say) is
//!   stopped, so that it is reported not ready rather than ready and unreachable.
//!
//! A container's [`Security`] (user and groups resolved in its image, capabilities,
//! privileged, read-only root, seccomp, PID namespace, node devices) and its mounts
//! (Bidirectional ones get a shared container root) and [`Resources`] (cgroup
//! limits, changeable later with [`Pods::update_container_resources`]) become its OCI
//! spec in [`spec`]; a pod's `cgroup_parent` holds its containers' cgroups, as a
//! kubelet's cgroupfs layout expects.

mod containers;
pub mod doctor;
mod exec;
mod files;
mod instance;
mod mount_template;
mod names;
mod pods;
mod readiness;
pub mod record;
pub mod resources;
pub mod security;
pub mod spec;
mod store;
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
use crate::state::{ContainerState, ExitStatus, Status};
use crate::{ContainerError, ContainerId, CreateOptions, ExecOptions, Runtime, Signal, Stdio};

pub use containers::ContainerConfig;
// The names pods and containers are known by, validated where they are written.
pub use crate::netstack::{Alias, ContainerName, Hostname, Namespace, PodName, PortName, Scope};
pub use exec::ExecOutput;
use instance::Instance;
pub use instance::{PodsOptions, POD_CIDR_NETWORK};
pub use pods::{pod_ip, PodConfig};
use record::add_named_ports;
pub use record::{
    kubelet_named_ports, BindMount, ContainerRecord, DnsConfig, NamedPort, NodeRef, Owner, PodId, PodNetwork, PodRecord, PodStatus,
    Propagation, RootfsSource, KUBELET_PORTS_ANNOTATION,
};
pub use resources::Resources;
pub use security::{DeviceMapping, GroupsPolicy, PidNamespace, RunAs, Seccomp, Security, SecurityError};
pub use spec::ProcessOverrides;
pub use spec::SpecError;
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
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("pod {name:?} already exists (id {id}): pick another name or remove it first")]
    PodExists { name: PodName, id: PodId },
    #[error("pod name {0:?} is being claimed by another process at the same time")]
    NameContended(PodName),
    #[error("no pod {0:?}")]
    NoSuchPod(String),
    #[error("pod name {name:?} is ambiguous: pods {ids:?} carry it; use an id")]
    AmbiguousPod { name: String, ids: Vec<String> },
    #[error("pod {pod} is {status}: {what}")]
    PodNotReady { pod: String, status: PodStatus, what: &'static str },
    #[error("pod {pod} has running containers ({names})")]
    PodBusy { pod: String, names: String },
    #[error("container {name:?} already exists in pod {pod}: pick another name or remove it first")]
    ContainerExists { pod: String, name: String },
    #[error("no container {name:?} in pod {pod}")]
    NoSuchContainer { pod: String, name: String },
    #[error("container {name} in pod {pod} is running")]
    ContainerRunning { pod: String, name: String },
    #[error("container {name} in pod {pod} has exited: its limits can no longer change")]
    ContainerExited { pod: String, name: String },
    #[error("image {reference} is used by container(s) {}", users.join(", "))]
    ImageInUse { reference: String, users: Vec<String> },
    #[error("setting cgroup limits")]
    Limits(#[source] crate::cgroups::CgroupError),
    #[error("starting the PID 1 of a shared PID namespace: {0}")]
    PidHolder(String),
    #[error("reading the node's hostname")]
    NodeHostname(#[source] nix::Error),
    #[error("waited {secs} s for {what}: {last}")]
    NotReady { what: String, secs: f64, last: String },
    #[error("the runtime is shutting down")]
    ShuttingDown,
    #[error("rootfs directory {0} does not exist or is not a directory")]
    NoRootfs(PathBuf),
    #[error(transparent)]
    Spec(#[from] spec::SpecError),
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
    Service(#[from] crate::service::ServiceError),
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
    #[error(transparent)]
    Netns(#[from] netstack::netns::NetnsError),
    /// A teardown went on past its failures: all of them, in order.
    #[error("{what}: {} steps failed: {}", errors.len(), join_errors(errors))]
    Teardown { what: String, errors: Vec<PodError> },
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A pod, container or runtime was described in a way that cannot be made: nothing
/// was changed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("pods that outlive this process cannot live on a private node, which goes with it: drop one of the two")]
    KeptPodsOnPrivateNode,
    #[error("cluster domain {0:?} is not a DNS name (such as cluster.local)")]
    ClusterDomain(String),
    #[error("a pod on a private node cannot outlive the runtime, whose node goes with it")]
    DisownOnPrivateNode,
    #[error("CIDR {cidr:?}: {why}: give one such as 10.77.0.0/24")]
    Cidr { cidr: String, why: String },
    #[error("a host-network pod has the node's hostname {node:?}: give no other")]
    HostNetworkHostname { node: String },
    #[error("a host-network pod joins no network: give it no networks or aliases")]
    HostNetworkJoins,
    #[error(
        "port mapping {host_port}->{container_port}: a host-network pod's ports are the node's own, so the host port must equal the container port"
    )]
    HostNetworkPort { host_port: u16, container_port: u16 },
    #[error("sysctl {0}: the pod uses the node's network namespace, so it would change the node")]
    HostNetworkSysctl(String),
    #[error("DNS setting {0:?} is empty or has whitespace")]
    DnsSetting(String),
    #[error("cgroup parent {} must be a plain path under the cgroup root (no `.` or `..`)", .0.display())]
    CgroupParent(PathBuf),
    #[error("network {0} is listed twice")]
    NetworkTwice(NetworkName),
    #[error("container {0}: give an image or a rootfs directory")]
    NoRootfsSource(ContainerName),
    #[error(
        "mount {}: bidirectional propagation needs its source {} on a shared mount of the node, and {} is not: make it shared (mount --make-rshared {}) or use HostToContainer",
        target.display(), host.display(), point.display(), point.display()
    )]
    NotSharedMount { target: PathBuf, host: PathBuf, point: PathBuf },
    #[error("mount {}: source {} not found on the node", target.display(), host.display())]
    NoMountSource { target: PathBuf, host: PathBuf },
    #[error("limits: {0}")]
    Limits(String),
    #[error("waiting for {0} needs a container: call wait_for on the container")]
    WaitNeedsContainer(String),
    #[error("named ports: {0}")]
    NamedPort(String),
    #[error("readiness probe: {0}")]
    Readiness(String),
    #[error("cluster: {0}")]
    Cluster(String),
    #[error("pod CIDR {cidr}: {why}")]
    PodCidr { cidr: String, why: String },
}

type Result<T, E = PodError> = std::result::Result<T, E>;

fn join_errors(errors: &[PodError]) -> String {
    errors.iter().map(|e| crate::error_chain(e)).collect::<Vec<_>>().join("; ")
}

/// The errors of a teardown that goes on past a failed step and reports every one
/// (netavark's way): none is Ok, one is returned as it is, several together.
#[derive(Default)]
struct Failures(Vec<PodError>);

impl Failures {
    /// Keeps the error of `r`, if any.
    fn note(&mut self, r: Result<()>) {
        if let Err(e) = r {
            self.0.push(e);
        }
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn finish(mut self, what: impl Into<String>) -> Result<()> {
        match self.0.len() {
            0 => Ok(()),
            1 => Err(self.0.remove(0)),
            _ => Err(PodError::Teardown { what: what.into(), errors: self.0 }),
        }
    }
}

pub(crate) fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> PodError + 'a {
    move |source| PodError::Io { what, path: path.to_path_buf(), source }
}

/// Writes a record atomically.
pub(crate) fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    netstack::record::write_json(path, value, netstack::record::Durability::Atomic).map_err(io_err("writing", path))
}

/// Pods and containers under one state root, on one node.
pub struct Pods {
    root: PathBuf,
    oci: Runtime,
    images: ImageStore,
    node: netstack::BlockingNode,
    node_ref: NodeRef,
    /// Where the node's async work and the mount template's timers run.
    executor: Arc<netstack::executor::Executor>,
    scope: Scope,
    /// Where pods that name no network go; a kubelet's pod CIDR may change it.
    default_network: std::sync::RwLock<NetworkName>,
    /// Where services' cluster IPs come from.
    service_cidr: ipnetwork::Ipv4Network,
    /// The state roots of the other nodes of its cluster (absolute).
    peer_roots: Vec<PathBuf>,
    /// The MTU of the pod links of the networks it makes ([`PodsOptions::mtu`]).
    mtu: Option<u32>,
    /// The domain services' names are under, and pods' search path.
    cluster_domain: String,
    keep_pods: bool,
    instance: Option<Instance>,
    template: mount_template::MountTemplate,
    /// What the sweep at open found and did.
    swept: SweepReport,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_teardown_reports_every_failure_and_a_single_one_as_it_is() {
        assert!(Failures::default().finish("x").is_ok());
        let mut one = Failures::default();
        one.note(Ok(()));
        one.note(Err(PodError::NoSuchPod("a".into())));
        assert!(matches!(one.finish("x"), Err(PodError::NoSuchPod(_))));
        let mut two = Failures::default();
        two.note(Err(PodError::NoSuchPod("a".into())));
        two.note(Err(PodError::ShuttingDown));
        let e = two.finish("removing pod p").unwrap_err();
        assert!(matches!(&e, PodError::Teardown { errors, .. } if errors.len() == 2));
        assert_eq!(e.to_string(), "removing pod p: 2 steps failed: no pod \"a\"; the runtime is shutting down");
    }
}
