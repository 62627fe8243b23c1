//! What is recorded about pods and their containers under `<root>/pods/`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::netstack::{Alias, ContainerName, Hostname, Namespace, NetworkName, PodName, PortMapping, PortName, Proto, Scope};
use crate::ContainerId;

/// A pod's id: 12 random hex digits, unique under a state root.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PodId(String);

impl PodId {
    /// A fresh random id.
    pub fn random() -> Self {
        let mut bytes = [0u8; 6];
        // SAFETY: fills a local buffer of the given length.
        let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
        if n != bytes.len() as isize {
            // getrandom cannot fail for 6 bytes once the pool is up; a time-and-pid
            // fallback still gives distinct ids within a boot.
            let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos() as u64;
            bytes.copy_from_slice(&(t ^ u64::from(std::process::id()) << 40).to_le_bytes()[..6]);
        }
        Self(bytes.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// Checks a text id (as given on a command line).
    pub fn parse(s: &str) -> Option<Self> {
        (s.len() == 12 && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())).then(|| Self(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for PodId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Self::parse(&s).ok_or_else(|| format!("{s:?} is not a pod id (12 lowercase hex digits)"))
    }
}

impl From<PodId> for String {
    fn from(id: PodId) -> String {
        id.0
    }
}

impl fmt::Display for PodId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The process a pod belongs to while it exists; a pod whose owner is gone is swept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub pid: i32,
    pub start_time: u64,
}

impl Owner {
    /// The calling process.
    pub fn me() -> Self {
        let pid = std::process::id() as i32;
        Self { pid, start_time: crate::state::process_start_time(pid).unwrap_or_default() }
    }

    /// Whether the owner still runs (and is the same process, not a reused PID).
    pub fn alive(&self) -> bool {
        crate::state::process_start_time(self.pid) == Some(self.start_time)
    }
}

/// Where a pod's network lives: the netstack state dir and node namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRef {
    pub state_dir: PathBuf,
    /// The node namespace; None is the namespace of whoever opened the runtime.
    pub netns: Option<PathBuf>,
}

impl NodeRef {
    /// Whether pods on `self` and on `other` reach each other by their own addresses:
    /// the same node, or two nodes of one cluster (both among the state roots
    /// `cluster`, joined by its overlay).
    pub fn reaches(&self, other: &NodeRef, cluster: &[PathBuf]) -> bool {
        self == other || (cluster.contains(&self.state_dir) && cluster.contains(&other.state_dir))
    }
}

/// A pod's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PodStatus {
    /// Being set up; a crash here leaves a record the sweep finds.
    Creating,
    /// Namespaces and networks are up.
    Ready,
    /// A stop began: not ready any more. Recorded before its first step, so that a
    /// stop cut short by a crash is finished when the pods are next opened.
    Stopping,
    /// Containers stopped and networks detached; only removal is left.
    Stopped,
}

impl fmt::Display for PodStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PodStatus::Creating => "creating",
            PodStatus::Ready => "ready",
            PodStatus::Stopping => "stopping",
            PodStatus::Stopped => "stopped",
        })
    }
}

/// One network a pod is attached to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodNetwork {
    pub network: NetworkName,
    pub ip: Ipv4Addr,
    pub ip6: Option<Ipv6Addr>,
    pub ifname: String,
}

/// DNS settings for the pod's resolv.conf instead of the network's (CRI DNSConfig).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsConfig {
    pub servers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

/// A pod as recorded in `<root>/pods/<id>/pod.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRecord {
    pub id: PodId,
    pub name: PodName,
    /// Names are unique within a scope: one per embedding runtime, `default` for the CLI.
    pub scope: Scope,
    pub status: PodStatus,
    pub hostname: Hostname,
    /// The Kubernetes namespace: services select pods of their own.
    #[serde(default)]
    pub namespace: Namespace,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub created: crate::time::Timestamp,
    /// None: the pod outlives whoever made it (CLI, daemon) until removed.
    pub owner: Option<Owner>,
    pub node: NodeRef,
    /// First network first: it carries the default route and the published ports.
    pub networks: Vec<PodNetwork>,
    pub ports: Vec<PortMapping>,
    /// DNS names besides `name`.
    pub aliases: Vec<Alias>,
    pub dns: Option<DnsConfig>,
    /// Where container logs go by default (CRI log directory).
    pub log_dir: Option<PathBuf>,
    /// With a PID namespace shared by the containers: the process holding it as PID 1.
    #[serde(default)]
    pub pid_holder: Option<Owner>,
    /// The cgroup (relative to each hierarchy's root) that holds the pod's containers.
    #[serde(default)]
    pub cgroup_parent: Option<PathBuf>,
    /// Containers use the node's IPC namespace.
    #[serde(default)]
    pub host_ipc: bool,
    /// Containers use the node's network and UTS namespaces: no networks, no address
    /// of the pod's own.
    #[serde(default)]
    pub host_network: bool,
    /// Set in the pod's namespaces by each container as it starts.
    #[serde(default)]
    pub sysctls: BTreeMap<String, String>,
    /// A removal began (recorded before its first step): the next open of the pods
    /// finishes one that a crash cut short.
    #[serde(default)]
    pub removing: bool,
    /// Its containers whose readiness probe does not pass now (or has not passed yet):
    /// while any is, the pod is no Service's endpoint, as in Kubernetes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unready: Vec<ContainerName>,
    /// The ports its containers declare by name (Kubernetes' `containers[].ports`),
    /// which a Service's `targetPort` or a NetworkPolicy's `port` may give by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub named_ports: Vec<NamedPort>,
}

impl PodRecord {
    /// The address on the pod's first network.
    pub fn ip(&self) -> Option<Ipv4Addr> {
        self.networks.first().map(|n| n.ip)
    }

    /// The number of its port `name` of `protocol`, as Kubernetes finds a named port.
    pub fn named_port(&self, name: &PortName, protocol: Proto) -> Option<u16> {
        self.named_ports.iter().find(|p| p.name == *name && p.protocol == protocol).map(|p| p.port)
    }
}

/// A port a pod's container declares by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedPort {
    pub name: PortName,
    pub port: u16,
    pub protocol: Proto,
}

impl fmt::Display for NamedPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}/{}", self.name, self.port, self.protocol)
    }
}

impl std::str::FromStr for NamedPort {
    type Err = String;

    /// `NAME=PORT`, or `NAME=PORT/udp` (`/tcp` is the default), as [`fmt::Display`] writes it.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: String| format!("named port {s:?}: {why}; write it as NAME=PORT[/udp], such as http=8080");
        let (name, rest) = s.split_once('=').ok_or_else(|| bad("no `=`".into()))?;
        let (port, protocol) = match rest.rsplit_once('/') {
            None => (rest, Proto::Tcp),
            Some((port, p)) if p.eq_ignore_ascii_case("tcp") => (port, Proto::Tcp),
            Some((port, p)) if p.eq_ignore_ascii_case("udp") => (port, Proto::Udp),
            Some((_, p)) => return Err(bad(format!("protocol {p:?} is not tcp or udp"))),
        };
        let name = PortName::new(name).map_err(|e| bad(e.to_string()))?;
        let port = port.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| bad(format!("{port:?} is not a port of 1 to 65535")))?;
        Ok(NamedPort { name, port, protocol })
    }
}

/// The annotation in which a kubelet gives a container's `ports` (JSON of Kubernetes'
/// `[]ContainerPort`) with CreateContainer: the CRI has no field of its own for them.
pub const KUBELET_PORTS_ANNOTATION: &str = "io.kubernetes.container.ports";

/// The named ones of the ports a kubelet gives in [`KUBELET_PORTS_ANNOTATION`].
pub fn kubelet_named_ports(json: &str) -> Result<Vec<NamedPort>, String> {
    let bad = |why: String| format!("annotation {KUBELET_PORTS_ANNOTATION}: {why}");
    let ports: Vec<k8s_openapi::api::core::v1::ContainerPort> =
        serde_json::from_str(json).map_err(|e| bad(format!("not a JSON list of Kubernetes container ports ({e})")))?;
    let mut named = Vec::new();
    for p in ports {
        let Some(name) = p.name.filter(|n| !n.is_empty()) else { continue };
        let protocol = match p.protocol.as_deref() {
            None | Some("TCP") => Proto::Tcp,
            Some("UDP") => Proto::Udp,
            // Nothing serves SCTP yet: such a name matches no Service or policy port.
            Some("SCTP") => continue,
            Some(x) => return Err(bad(format!("port {name}: protocol {x:?} is not TCP, UDP or SCTP"))),
        };
        let port = u16::try_from(p.container_port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad(format!("port {name}: containerPort {} is not 1 to 65535", p.container_port)))?;
        let name = PortName::new(name).map_err(|e| bad(e.to_string()))?;
        named.push(NamedPort { name, port, protocol });
    }
    Ok(named)
}

/// `new` added to `declared`: a name given again must be the same port (a restarted
/// container declares its ports again), one given as another port is refused, as
/// Kubernetes refuses two ports of one name in a pod.
pub fn add_named_ports(declared: &mut Vec<NamedPort>, new: &[NamedPort]) -> Result<bool, String> {
    let mut changed = false;
    for p in new {
        match declared.iter().find(|d| d.name == p.name) {
            Some(d) if d == p => {}
            Some(d) => return Err(format!("port name {} is declared as {d} in this pod already; a port name is one port per pod", p.name)),
            None => {
                declared.push(p.clone());
                changed = true;
            }
        }
    }
    Ok(changed)
}

/// How a container's root filesystem is made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RootfsSource {
    /// An image in the store, by reference or id.
    Image(String),
    /// A directory used as the read-only bottom layer (an overlay keeps it unchanged).
    Dir(PathBuf),
}

/// A host path mounted into a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindMount {
    pub host: PathBuf,
    pub container: PathBuf,
    pub readonly: bool,
    #[serde(default)]
    pub propagation: Propagation,
}

/// Whether mounts made under a bind mount's source or target show on the other side.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Propagation {
    /// Neither way.
    #[default]
    Private,
    /// Mounts the node makes under the source appear in the container (rslave).
    HostToContainer,
    /// Both ways (rshared; the source must be on a shared mount of the node).
    Bidirectional,
}

impl Propagation {
    /// The OCI mount option.
    pub fn option(self) -> &'static str {
        match self {
            Self::Private => "rprivate",
            Self::HostToContainer => "rslave",
            Self::Bidirectional => "rshared",
        }
    }
}

/// A container recorded in `<root>/pods/<pod>/containers/<name>/container.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub name: ContainerName,
    /// The id under the runtime root (`<pod id>-<name>`).
    pub id: ContainerId,
    pub pod: PodId,
    pub source: RootfsSource,
    /// The image's id when made from an image.
    pub image_id: Option<String>,
    pub args: Vec<String>,
    pub log_path: PathBuf,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub created: crate::time::Timestamp,
    /// How many times this name was created in the pod (CRI attempt).
    pub attempt: u32,
    /// The node paths mounted into it.
    #[serde(default)]
    pub mounts: Vec<BindMount>,
    /// Its cgroup limits, as last set.
    #[serde(default)]
    pub resources: super::Resources,
    /// It runs on a terminal of its own.
    #[serde(default)]
    pub tty: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_random_hex_and_parse_back() {
        let a = PodId::random();
        assert_ne!(a, PodId::random());
        assert_eq!(PodId::parse(a.as_str()), Some(a));
        assert_eq!(PodId::parse("../../etc/x1"), None);
        assert_eq!(PodId::parse("ABCDEF012345"), None);
    }

    #[test]
    fn named_ports_come_from_the_cli_and_the_kubelet_and_one_name_is_one_port() {
        let http: NamedPort = "http=8080".parse().unwrap();
        assert_eq!(http.to_string(), "http=8080/tcp");
        assert_eq!("dns=53/udp".parse::<NamedPort>().unwrap().protocol, Proto::Udp);
        for bad in ["http", "http=0", "8080=8080", "http=80/sctp"] {
            let e = bad.parse::<NamedPort>().unwrap_err();
            assert!(e.contains(bad) && e.contains("NAME=PORT"), "{e}");
        }
        let kubelet = r#"[{"name":"http","containerPort":8080,"protocol":"TCP"},{"containerPort":9000},{"name":"dns","containerPort":53,"protocol":"UDP"}]"#;
        let got = kubelet_named_ports(kubelet).unwrap();
        assert_eq!(got.iter().map(ToString::to_string).collect::<Vec<_>>(), ["http=8080/tcp", "dns=53/udp"]);
        assert!(kubelet_named_ports("{").unwrap_err().contains(KUBELET_PORTS_ANNOTATION));
        let mut declared = vec![];
        assert_eq!(add_named_ports(&mut declared, &got), Ok(true));
        assert_eq!(add_named_ports(&mut declared, &got[..1]), Ok(false), "a restarted container declares its ports again");
        let e = add_named_ports(&mut declared, &["http=9090".parse().unwrap()]).unwrap_err();
        assert!(e.contains("port name http is declared as http=8080/tcp"), "{e}");
    }
}
