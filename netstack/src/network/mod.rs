//! Networks on a node: validate -> apply -> roll back. A network is an IPv4 subnet
//! (and optionally an IPv6 one) with a gateway held by a bridge in the node namespace;
//! members are network namespaces, each wired with one routed veth pair and one
//! address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use futures::future::{BoxFuture, FutureExt};
use ipnetwork::{IpNetwork, Ipv4Network};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::firewall::{Firewall, FirewallError, PortMapping};
use crate::ipam::{Ipam, IpamError};
use crate::names::{IfName, NameError, NetworkName, OwnerId};
use crate::netlink::{Netlink, NetlinkError};
use crate::netns::{Netns, NetnsError};
use crate::record::{self, Durability};
use crate::{bridge, veth};

mod attach;
pub mod config;
mod dns_service;
pub mod doctor;
mod gc;
mod lifecycle;
mod overlay;
mod policies;
mod services;
pub(crate) use services::read_headless;
mod store;
pub use store::recorded_networks;

pub use config::{ConfigError, NetworkConfig};
pub use dns_service::DnsScope;
pub use gc::GcReport;
pub use overlay::OverlayRecord;

/// Something about a network went wrong.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error(transparent)]
    Name(#[from] NameError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("network {name}: {cidr} overlaps {other_cidr} of network {other}: pick a separate range")]
    Overlap { name: NetworkName, cidr: IpNetwork, other: NetworkName, other_cidr: IpNetwork },
    #[error("network {name}: bridge {bridge} already carries network {other}: pick another bridge name")]
    BridgeTaken { name: NetworkName, bridge: IfName, other: NetworkName },
    #[error("network {name} exists with different settings ({what}): remove it first or use its settings")]
    Conflict { name: NetworkName, what: String },
    #[error("network {0} does not exist")]
    NoSuchNetwork(NetworkName),
    #[error("network {name} still has {count} member(s): detach them first")]
    InUse { name: NetworkName, count: usize },
    #[error("{owner} is already attached to network {name} with {ip}")]
    AlreadyAttached { owner: OwnerId, name: NetworkName, ip: IpAddr },
    #[error("{0:?} is not a DNS name: use labels of letters, digits and `-`, at most 63 bytes each")]
    BadDnsName(String),
    #[error(transparent)]
    Dns(#[from] crate::dns::DnsError),
    #[error(transparent)]
    ExecutorGone(#[from] crate::executor::ExecutorGone),
    #[error("network {name}: every /24 of {pool} is taken by a network or an address on the node: give a subnet")]
    PoolExhausted { name: NetworkName, pool: Ipv4Network },
    #[error("network {name}: bridge {bridge} gives interface group {group:#x}, which network {other} has: pick another bridge name")]
    GroupTaken { name: NetworkName, bridge: IfName, group: u32, other: NetworkName },
    #[error(
        "network {0}: published ports need the network that carries the namespace's default route (replies leave by it, and \
         the node drops a reply from an address of another link): publish them on that network"
    )]
    PortsOffDefaultRoute(NetworkName),
    #[error(
        "network {network}: {ip} is routed to another link on the node already: another minipod state dir (or a tool) hands out \
         the same subnet here; give each its own network and subnet, or remove the stale route"
    )]
    AddressRouted { network: NetworkName, ip: IpAddr },
    #[error("interface {0} already exists in the node namespace: another runtime or a stale attachment holds it")]
    LinkClash(String),
    #[error(transparent)]
    Ipam(#[from] IpamError),
    #[error(transparent)]
    Firewall(#[from] FirewallError),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Overlay(#[from] crate::overlay::OverlayError),
    #[error(transparent)]
    Veth(#[from] crate::veth::VethError),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("setting {key} in {netns}")]
    Sysctl {
        key: String,
        netns: String,
        #[source]
        source: std::io::Error,
    },
    #[error("network state {path}")]
    State {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn state_err(path: &Path) -> impl FnOnce(std::io::Error) -> NetworkError + '_ {
    move |source| NetworkError::State { path: path.to_path_buf(), source }
}

/// What to attach.
#[derive(Debug, Clone)]
pub struct AttachRequest {
    /// Who the attachment belongs to.
    pub owner: OwnerId,
    /// The network namespace to wire (pinned path or /proc/PID/ns/net).
    pub netns: PathBuf,
    /// The interface name inside it.
    pub ifname: IfName,
    /// A specific address, or the next free one.
    pub ip: Option<Ipv4Addr>,
    /// Host ports forwarded to it.
    pub ports: Vec<PortMapping>,
    /// Names other members of the network can resolve it by (name, then aliases).
    pub dns_names: Vec<String>,
    /// Route everything not on a connected subnet via this network's gateway. Only one
    /// network of a namespace can do this: the others reach their own subnet only.
    pub default_route: bool,
}

impl AttachRequest {
    /// `netns` as `eth0`, next free address, no ports or names, default route.
    pub fn new(owner: OwnerId, netns: impl Into<PathBuf>) -> Self {
        Self {
            owner,
            netns: netns.into(),
            // Valid by construction: 4 bytes of letters and digits.
            ifname: IfName::eth0(),
            ip: None,
            ports: vec![],
            dns_names: vec![],
            default_route: true,
        }
    }
}

/// One member of a network, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub network: NetworkName,
    pub owner: OwnerId,
    pub ip: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
    /// The IPv6 address on a dual-stack network.
    #[serde(default)]
    pub ip6: Option<Ipv6Addr>,
    pub mtu: u32,
    /// The host end of the veth, in the node namespace.
    pub host_ifname: String,
    /// The interface inside the member's namespace.
    pub ifname: IfName,
    pub netns: PathBuf,
    /// Host ports forwarded to it.
    pub ports: Vec<PortMapping>,
    /// Names it resolves by on this network.
    #[serde(default)]
    pub dns_names: Vec<String>,
    /// The resolv.conf the member should use: the network's DNS server on the
    /// gateway, or the upstreams when the network serves no DNS.
    #[serde(default)]
    pub resolv_conf: String,
}

/// A node: the namespace that holds the networks, and the state dir for them.
///
/// A node namespace is expected to look like a host: `lo` up (published ports on
/// 127.0.0.1 go through it) and, for egress, a default route.
pub struct Node {
    netns: Netns,
    state_dir: PathBuf,
    firewall: Firewall,
    records: crate::dns::Records,
    dns: std::sync::Mutex<Option<crate::dns::DnsServer>>,
    /// Networks whose bridge, sysctls and firewall this process has checked.
    ready: std::sync::Mutex<std::collections::HashSet<NetworkName>>,
}

impl Node {
    /// A node in the namespace pinned at `netns`, or the caller's own namespace.
    pub fn new(state_dir: impl Into<PathBuf>, netns: Option<&Path>) -> Result<Self, NetworkError> {
        let netns = match netns {
            Some(p) => Netns::open(p)?,
            None => Netns::current()?,
        };
        let state_dir = state_dir.into();
        let firewall = Firewall::new(netns.path(), &state_dir);
        Ok(Self { netns, state_dir, firewall, records: Default::default(), dns: Default::default(), ready: Default::default() })
    }

    /// The node's network namespace.
    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// Where the node's networks are recorded.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }
}

/// The host end's name: short (it must fit 15 bytes), stable for a (network, owner)
/// pair so that detach and GC find it without state.
pub fn host_ifname(network: &NetworkName, owner: &OwnerId) -> String {
    let h = crate::names::stable_hash([network.as_str(), owner.as_str()]);
    format!("mp{:010x}", h & 0xff_ffff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_fit_and_differ_per_owner_and_network() {
        let n = NetworkName::new("net-a").unwrap();
        let a = host_ifname(&n, &OwnerId::new("pod-1").unwrap());
        let b = host_ifname(&n, &OwnerId::new("pod-2").unwrap());
        let c = host_ifname(&NetworkName::new("net-b").unwrap(), &OwnerId::new("pod-1").unwrap());
        assert!(a.len() <= 15 && a.starts_with("mp"));
        assert!(a != b && a != c);
        assert_eq!(a, host_ifname(&n, &OwnerId::new("pod-1").unwrap()));
        // Detach and gc find the veths of members attached by earlier releases by
        // this name: it must not change.
        assert_eq!(a, "mp58bb032d2f");
    }
}
