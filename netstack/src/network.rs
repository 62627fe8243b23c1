//! Networks on a node: validate -> apply -> roll back. A network is an IPv4 subnet
//! (and optionally an IPv6 one) with a gateway held by a bridge in the node namespace;
//! members are network namespaces, each wired with one routed veth pair and one
//! address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use futures::future::{BoxFuture, FutureExt};
use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::firewall::{Firewall, FirewallError, PortMapping};
use crate::ipam::{Ipam, IpamError};
use crate::names::{IfName, NameError, NetworkName, OwnerId};
use crate::netlink::{Netlink, NetlinkError};
use crate::netns::{Netns, NetnsError};
use crate::record::{self, Durability};
use crate::{bridge, veth};

/// Something about a network went wrong.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("network {name}: {cidr} is too small: use a /30 (IPv4) or /126 (IPv6) or larger: a gateway and at least one pod")]
    TooSmall { name: NetworkName, cidr: IpNetwork },
    #[error("network {name}: gateway {gateway} is not a host address of {cidr}")]
    BadGateway { name: NetworkName, gateway: Ipv4Addr, cidr: Ipv4Network },
    #[error("network {name}: {cidr} overlaps {other_cidr} of network {other}: pick a separate range")]
    Overlap { name: NetworkName, cidr: IpNetwork, other: NetworkName, other_cidr: IpNetwork },
    #[error("network {name}: bridge {bridge} already carries network {other}: pick another bridge name")]
    BridgeTaken { name: NetworkName, bridge: IfName, other: NetworkName },
    #[error("network {name} exists with different settings ({what}): remove it first or use its settings")]
    Conflict { name: NetworkName, what: String },
    #[error("network {0} does not exist: create it first (`minipod net ls` lists them)")]
    NoSuchNetwork(NetworkName),
    #[error("network {name} still has {count} member(s): detach them first")]
    InUse { name: NetworkName, count: usize },
    #[error("{owner} is already attached to network {name} with {ip}")]
    AlreadyAttached { owner: OwnerId, name: NetworkName, ip: IpAddr },
    #[error("{0:?} is not a DNS name: use labels of letters, digits and `-`, at most 63 bytes each")]
    BadDnsName(String),
    #[error(transparent)]
    Dns(#[from] crate::dns::DnsError),
    #[error("serving DNS needs a tokio runtime: call this from inside one, or use serve_dns_on with a runtime handle")]
    NoRuntime,
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
    #[error("interface {0} already exists in the node namespace: another runtime or a stale attachment holds it (`minipod net gc`)")]
    LinkClash(String),
    #[error(transparent)]
    Ipam(#[from] IpamError),
    #[error(transparent)]
    Firewall(#[from] FirewallError),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
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

/// What a network is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkConfig {
    /// Its name.
    pub name: NetworkName,
    /// The bridge interface in the node namespace: it holds the gateway addresses
    /// (members are routed, not its ports) and its name gives the network's group.
    pub bridge: IfName,
    /// The IPv4 subnet pods get addresses from.
    pub subnet: Ipv4Network,
    /// The bridge's address and the pods' default route; the first host address by default.
    pub gateway: Option<Ipv4Addr>,
    /// MTU of the veths; the node's default-route link's, or 1500, by default.
    pub mtu: Option<u32>,
    /// Masquerade traffic leaving the network (default on).
    pub masquerade: bool,
    /// No traffic out of the network at all.
    pub internal: bool,
    /// Serve DNS for members on the gateway address.
    pub dns: bool,
    /// Where names that are not members go; the node's resolv.conf when empty.
    #[serde(default)]
    pub dns_upstreams: Vec<SocketAddr>,
    /// An IPv6 subnet too (dual-stack); the gateway is its first host address.
    #[serde(default)]
    pub subnet6: Option<Ipv6Network>,
    /// Created on first use (the default network): removed when its last member leaves.
    #[serde(default)]
    pub implicit: bool,
}

impl NetworkConfig {
    /// A network with defaults: masquerade on, not internal, DNS on.
    pub fn new(name: NetworkName, bridge: IfName, subnet: Ipv4Network) -> Self {
        Self {
            name,
            bridge,
            subnet,
            gateway: None,
            mtu: None,
            masquerade: true,
            internal: false,
            dns: true,
            dns_upstreams: vec![],
            subnet6: None,
            implicit: false,
        }
    }

    /// `minipod0` on 10.88.0.0/16, used when nothing else is configured. Attaching to
    /// it creates it; it goes away again with its last member.
    pub fn default_network() -> Self {
        let mut cfg = Self::new(
            NetworkName::new("minipod0").unwrap_or_else(|_| unreachable!("a valid literal")),
            IfName::new("minipod0").unwrap_or_else(|_| unreachable!("a valid literal")),
            Ipv4Network::new(Ipv4Addr::new(10, 88, 0, 0), 16).unwrap_or_else(|_| unreachable!("a valid literal")),
        );
        cfg.implicit = true;
        cfg
    }

    /// The gateway address in use.
    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway.unwrap_or_else(|| Ipv4Addr::from(u32::from(self.subnet.network()) + 1))
    }

    /// The interface group of the network's links (its bridge and its members' host
    /// ends), which the firewall's rules match on: derived from the bridge's name.
    pub fn group(&self) -> u32 {
        // 0x6d ('m') on top: clear of the default group 0 and of the small numbers
        // people pick by hand, and positive where `ip` prints it as a signed number.
        0x6d00_0000 | (crate::names::stable_hash([self.bridge.as_str()]) as u32 & 0x00ff_ffff)
    }

    /// The IPv6 gateway, when the network is dual-stack.
    pub fn gateway6(&self) -> Option<Ipv6Addr> {
        self.subnet6.map(|n| Ipv6Addr::from(u128::from(n.network()) + 1))
    }

    fn validate(&self) -> Result<(), NetworkError> {
        if self.subnet.prefix() > 30 {
            return Err(NetworkError::TooSmall { name: self.name.clone(), cidr: self.subnet.into() });
        }
        if let Some(v6) = self.subnet6 {
            if v6.prefix() > 126 {
                return Err(NetworkError::TooSmall { name: self.name.clone(), cidr: v6.into() });
            }
        }
        let gw = self.gateway();
        if !self.subnet.contains(gw) || gw == self.subnet.network() || gw == self.subnet.broadcast() {
            return Err(NetworkError::BadGateway { name: self.name.clone(), gateway: gw, cidr: self.subnet });
        }
        Ok(())
    }
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

    fn net_dir(&self, name: &NetworkName) -> PathBuf {
        self.state_dir.join("networks").join(name.as_str())
    }

    fn ipam(&self, cfg: &NetworkConfig) -> Ipam {
        Ipam::new(self.net_dir(&cfg.name).join("ipam"), cfg.subnet.into(), cfg.gateway().into())
    }

    fn ipam6(&self, cfg: &NetworkConfig) -> Option<Ipam> {
        Some(Ipam::new(self.net_dir(&cfg.name).join("ipam6"), cfg.subnet6?.into(), cfg.gateway6()?.into()))
    }

    /// Every network recorded on this node.
    pub fn networks(&self) -> Result<Vec<NetworkConfig>, NetworkError> {
        let mut out = Vec::new();
        for name in self.network_names()? {
            out.extend(self.network(&name)?);
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The names of the networks recorded on this node.
    fn network_names(&self) -> Result<Vec<NetworkName>, NetworkError> {
        let dir = self.state_dir.join("networks");
        match std::fs::read_dir(&dir) {
            Ok(entries) => {
                Ok(entries.flatten().filter_map(|e| NetworkName::new(e.file_name().to_string_lossy().into_owned()).ok()).collect())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(vec![]),
            Err(e) => Err(state_err(&dir)(e)),
        }
    }

    /// The recorded config of network `name`.
    pub fn network(&self, name: &NetworkName) -> Result<Option<NetworkConfig>, NetworkError> {
        let path = self.net_dir(name).join("config.json");
        match record::read_json(&path) {
            Ok(cfg) => Ok(Some(cfg)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(state_err(&path)(e)),
        }
    }

    /// Creates network `cfg` (its bridge in the node namespace) or, if a network of
    /// that name exists with the same settings, makes sure its bridge is there.
    pub async fn create_network(&self, mut cfg: NetworkConfig) -> Result<NetworkConfig, NetworkError> {
        cfg.validate()?;
        let nl = Netlink::open(&self.netns)?;
        if cfg.mtu.is_none() {
            cfg.mtu = Some(nl.default_route_mtu().await?.unwrap_or(1500));
        }
        let existing = self.network(&cfg.name)?;
        let is_new = existing.is_none();
        match existing {
            Some(existing) if existing != cfg => {
                return Err(NetworkError::Conflict { name: cfg.name.clone(), what: format!("{} on {}", existing.subnet, existing.bridge) });
            }
            Some(_) => {}
            None => {
                for other in self.networks()? {
                    if other.subnet.overlaps(cfg.subnet) {
                        return Err(NetworkError::Overlap {
                            name: cfg.name.clone(),
                            cidr: cfg.subnet.into(),
                            other: other.name,
                            other_cidr: other.subnet.into(),
                        });
                    }
                    if let (Some(a), Some(b)) = (cfg.subnet6, other.subnet6) {
                        if a.overlaps(b) {
                            return Err(NetworkError::Overlap {
                                name: cfg.name.clone(),
                                cidr: a.into(),
                                other: other.name,
                                other_cidr: b.into(),
                            });
                        }
                    }
                    if other.bridge == cfg.bridge {
                        return Err(NetworkError::BridgeTaken { name: cfg.name.clone(), bridge: cfg.bridge.clone(), other: other.name });
                    }
                    if other.group() == cfg.group() {
                        return Err(NetworkError::GroupTaken {
                            name: cfg.name.clone(),
                            bridge: cfg.bridge.clone(),
                            group: cfg.group(),
                            other: other.name,
                        });
                    }
                }
            }
        }
        let created = match self.prepare(&nl, &cfg).await {
            Ok(created) => created,
            Err((created, e)) => {
                if created {
                    let _ = bridge::remove(&nl, cfg.bridge.as_str()).await;
                }
                return Err(e);
            }
        };
        if let Err(e) = self.configure_network(&cfg, is_new) {
            if created {
                let _ = bridge::remove(&nl, cfg.bridge.as_str()).await;
            }
            return Err(e);
        }
        if let Ok(mut ready) = self.ready.lock() {
            ready.insert(cfg.name.clone());
        }
        for chain in self.firewall.forward_droppers() {
            tracing::warn!(network = %cfg.name, "{}", forward_drop_warning(&chain, &cfg));
        }
        // Served from now on if DNS runs at all (a no-op when it is served already).
        self.serve_dns_for(&cfg)?;
        Ok(cfg)
    }

    /// Problems outside minipod that will break network `name`'s traffic, each with
    /// the fix: another firewall's forward chain with a drop policy (Docker sets one on
    /// iptables' FORWARD).
    pub fn problems(&self, name: &NetworkName) -> Result<Vec<String>, NetworkError> {
        let cfg = self.network(name)?.ok_or_else(|| NetworkError::NoSuchNetwork(name.clone()))?;
        Ok(self.firewall.forward_droppers().iter().map(|chain| forward_drop_warning(chain, &cfg)).collect())
    }

    /// `is_new`: no record of the network existed, so a failure may undo everything;
    /// an existing network's elements and state belong to its members.
    fn configure_network(&self, cfg: &NetworkConfig, is_new: bool) -> Result<(), NetworkError> {
        self.ensure_firewall()?;
        self.firewall.add_network(cfg)?;
        let dir = self.net_dir(&cfg.name);
        let recorded = std::fs::create_dir_all(dir.join("members")).map_err(state_err(&dir)).and_then(|()| {
            let path = dir.join("config.json");
            record::write_json(&path, cfg, Durability::Atomic).map_err(state_err(&path))
        });
        if recorded.is_err() && is_new {
            let _ = self.firewall.remove_network(cfg);
            let _ = std::fs::remove_dir_all(&dir);
        }
        recorded
    }

    /// The network's bridge (made if missing, with its addresses and group) and the
    /// sysctls routing its members needs. On failure, also says whether the bridge was
    /// made by this call.
    async fn prepare(&self, nl: &Netlink, cfg: &NetworkConfig) -> Result<bool, (bool, NetworkError)> {
        let spec = bridge::BridgeSpec {
            name: cfg.bridge.as_str(),
            gateway: cfg.gateway(),
            subnet: cfg.subnet,
            v6: cfg.gateway6().zip(cfg.subnet6.map(|n| n.prefix())),
            mtu: cfg.mtu.unwrap_or(1500),
            group: cfg.group(),
        };
        let created = bridge::ensure(nl, &spec).await.map_err(|e| (false, e.into()))?;
        // Members are routed: forwarding on.
        let mut sysctls = vec![("net.ipv4.ip_forward".to_string(), "1".to_string())];
        if cfg.subnet6.is_some() {
            sysctls.push(("net.ipv6.conf.all.forwarding".into(), "1".into()));
        }
        // For members that an older minipod made ports of the bridge: DNAT of the
        // node's 127.0.0.1 to them, and ARP answers for routed members, which they
        // think are on their link (at once: the default proxy delay is random, up to
        // 0.8 s).
        let br = &cfg.bridge;
        sysctls.push((format!("net.ipv4.conf.{br}.route_localnet"), "1".into()));
        sysctls.push((format!("net.ipv4.neigh.{br}.proxy_delay"), "0".into()));
        sysctls.push((format!("net.ipv4.conf.{br}.proxy_arp"), "1".into()));
        let written =
            self.netns.write_sysctls(&sysctls).map_err(NetworkError::from).and_then(|r| {
                r.map_err(|(key, source)| NetworkError::Sysctl { key, netns: self.netns.path().display().to_string(), source })
            });
        written.map_err(|e| (created, e))?;
        Ok(created)
    }

    /// Once per process and network, before its first attach: the bridge and sysctls
    /// as [`Node::create_network`] leaves them, and the firewall table current. What a
    /// minipod from before routed members, a reboot of the bridge or a flushed
    /// ruleset left is mended here, not only when someone creates the network again.
    async fn ensure_ready(&self, cfg: &NetworkConfig) -> Result<(), NetworkError> {
        if self.ready.lock().map(|r| r.contains(&cfg.name)).unwrap_or(false) {
            return Ok(());
        }
        let nl = Netlink::open(&self.netns)?;
        self.prepare(&nl, cfg).await.map_err(|(_, e)| e)?;
        self.ensure_firewall()?;
        if let Ok(mut ready) = self.ready.lock() {
            ready.insert(cfg.name.clone());
        }
        Ok(())
    }

    /// The table, made or brought up to date (with every recorded network's elements)
    /// the first time this process needs it. A record that cannot be read is left
    /// out, and said so, rather than leaving every network without its rules.
    fn ensure_firewall(&self) -> Result<(), FirewallError> {
        self.firewall.ensure(|| {
            let names = self.network_names().unwrap_or_else(|e| {
                tracing::warn!("no network's firewall rules are restored: {e}");
                vec![]
            });
            names
                .into_iter()
                .filter_map(|name| match self.network(&name) {
                    Ok(cfg) => cfg,
                    Err(e) => {
                        tracing::warn!("the firewall rules of network {name} are not restored: {e}");
                        None
                    }
                })
                .collect()
        })
    }

    /// Starts the DNS server on the caller's tokio runtime: a listener on the gateway
    /// of every DNS-enabled network (and of those created later), answering for the
    /// names members were attached with, until the node is dropped.
    pub fn serve_dns(&self) -> Result<(), NetworkError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| NetworkError::NoRuntime)?;
        self.serve_dns_on(runtime, true)
    }

    /// Starts the DNS server with its listeners on `runtime`: for every DNS-enabled
    /// network now if `all`, else only for networks this node creates or joins from
    /// now on (so that several processes can share a node, each serving its own).
    pub fn serve_dns_on(&self, runtime: tokio::runtime::Handle, all: bool) -> Result<(), NetworkError> {
        if let Ok(mut dns) = self.dns.lock() {
            dns.get_or_insert_with(|| crate::dns::DnsServer::new(runtime));
        }
        if all {
            for cfg in self.networks()?.into_iter().filter(|c| c.dns) {
                self.serve_dns_for(&cfg)?;
            }
        }
        Ok(())
    }

    /// Serves network `cfg`'s names if the DNS server runs (a no-op when they are
    /// served already). Another process serving them already is only a warning.
    fn serve_dns_for(&self, cfg: &NetworkConfig) -> Result<(), NetworkError> {
        let Ok(mut dns) = self.dns.lock() else { return Ok(()) };
        let (Some(server), true) = (dns.as_mut(), cfg.dns) else { return Ok(()) };
        if !self.records.has_network(&cfg.name) {
            self.records.set_network(&cfg.name, cfg.subnet, cfg.subnet6, upstreams(cfg));
            for m in self.members(&cfg.name)? {
                self.records.add(&cfg.name, &m.dns_names, m.ip.into());
                if let Some(v6) = m.ip6 {
                    self.records.add(&cfg.name, &m.dns_names, v6.into());
                }
            }
        }
        match server.listen(&self.netns, cfg.name.clone(), cfg.gateway(), self.records.clone()) {
            Err(crate::dns::DnsError::Bind { source, .. }) if source.kind() == std::io::ErrorKind::AddrInUse => {
                tracing::warn!(network = %cfg.name, "another process serves DNS on {}:53; names attached here are not served", cfg.gateway());
                Ok(())
            }
            other => Ok(other?),
        }
    }

    /// Members of network `name`.
    pub fn members(&self, name: &NetworkName) -> Result<Vec<Attachment>, NetworkError> {
        let dir = self.net_dir(name).join("members");
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(state_err(&dir)(e)),
        };
        let mut out = Vec::new();
        for e in entries.flatten() {
            let path = e.path();
            if path.extension().is_some_and(|x| x == "json") {
                out.push(record::read_json(&path).map_err(state_err(&path))?);
            }
        }
        Ok(out)
    }

    /// Wires `req.netns` to network `name`: an address, a veth pair (the peer created
    /// inside the namespace as `req.ifname`), lo up, and a default route via the
    /// gateway. Everything done is undone if a later step fails.
    pub async fn attach(&self, name: &NetworkName, req: AttachRequest) -> Result<Attachment, NetworkError> {
        // Held shared for the whole attach, so that a network emptied meanwhile by
        // another member's detach is not removed under us.
        let default = NetworkConfig::default_network();
        // The default network is made on first use, under the exclusive lock so that
        // two first attaches do not race to create it; then held shared as above.
        // A detach may remove it again in between: try a few times.
        let mut attempts = 0;
        let (_lock, cfg) = loop {
            if *name == default.name && self.network(name)?.is_none() {
                let _create = self.network_lock(name, FlockArg::LockExclusive).await?;
                if self.network(name)?.is_none() {
                    self.create_network(default.clone()).await?;
                }
            }
            let lock = self.network_lock(name, FlockArg::LockShared).await?;
            match self.network(name)? {
                Some(cfg) => break (lock, cfg),
                None if *name == default.name && attempts < 3 => attempts += 1,
                None => return Err(NetworkError::NoSuchNetwork(name.clone())),
            }
        };
        if let Some(bad) = req.dns_names.iter().find(|n| !is_dns_name(n)) {
            return Err(NetworkError::BadDnsName(bad.clone()));
        }
        if !req.ports.is_empty() && !req.default_route {
            return Err(NetworkError::PortsOffDefaultRoute(name.clone()));
        }
        self.ensure_ready(&cfg).await?;
        let pod = Netns::open(&req.netns)?;
        let ipam = self.ipam(&cfg);
        if let Some(ip) = ipam.address_of(&req.owner)? {
            return Err(NetworkError::AlreadyAttached { owner: req.owner.clone(), name: name.clone(), ip });
        }
        let IpAddr::V4(ip) = ipam.allocate(&req.owner, req.ip.map(IpAddr::V4))? else { unreachable!("an IPv4 pool gives IPv4 addresses") };
        let ipam6 = self.ipam6(&cfg);
        let ip6 = match ipam6.as_ref().map(|p| p.allocate(&req.owner, None)).transpose() {
            Ok(Some(IpAddr::V6(v6))) => Some(v6),
            Ok(_) => None,
            Err(e) => {
                let _ = ipam.release(&req.owner);
                return Err(e.into());
            }
        };
        let release = || {
            let _ = ipam.release(&req.owner);
            if let Some(p) = &ipam6 {
                let _ = p.release(&req.owner);
            }
        };
        let wired = self.wire(&cfg, &req, &pod, ip, ip6).await;
        let attachment = match wired {
            Ok(a) => a,
            Err(e) => {
                release();
                return Err(e);
            }
        };
        let path = self.member_file(name, &req.owner);
        let recorded = self
            .firewall
            .publish(&req.owner, ip, ip6, &req.ports)
            .map_err(NetworkError::from)
            .and_then(|()| record::write_json(&path, &attachment, Durability::Atomic).map_err(state_err(&path)));
        if let Err(e) = recorded {
            let _ = self.firewall.unpublish(&req.owner);
            let _ = self.unwire(&attachment.host_ifname).await;
            release();
            return Err(e);
        }
        // Joining a network someone else created: serve it from here too.
        self.serve_dns_for(&cfg)?;
        if cfg.dns {
            self.records.add(name, &attachment.dns_names, attachment.ip.into());
            if let Some(v6) = attachment.ip6 {
                self.records.add(name, &attachment.dns_names, v6.into());
            }
        }
        Ok(attachment)
    }

    async fn wire(
        &self,
        cfg: &NetworkConfig,
        req: &AttachRequest,
        pod: &Netns,
        ip: Ipv4Addr,
        ip6: Option<Ipv6Addr>,
    ) -> Result<Attachment, NetworkError> {
        let node = Netlink::open(&self.netns)?;
        let host_ifname = host_ifname(&cfg.name, &req.owner);
        let mtu = cfg.mtu.unwrap_or(1500);
        let gateway = cfg.gateway();
        let mac = veth::member_mac(ip);
        let spec = veth::VethSpec {
            host: &host_ifname,
            pod,
            peer: req.ifname.as_str(),
            peer_mac: mac,
            mtu,
            group: cfg.group(),
            ipv6: ip6.is_some(),
        };
        // No look-up first: the create fails on a clash, and only then is it worth
        // asking which end clashed.
        let pair = match veth::create(&node, &self.netns, &spec).await {
            Ok(pair) => pair,
            Err(e) => {
                return Err(match e.errno() {
                    Some(libc::EEXIST) if node.link(&host_ifname).await.ok().flatten().is_some() => NetworkError::LinkClash(host_ifname),
                    _ => e.into(),
                });
            }
        };
        // The node reaches the member through its own link, and knows its MAC.
        let host = pair.host;
        let mut node_side: Vec<BoxFuture<'_, Result<(), NetlinkError>>> = vec![
            node.up(host, format!("setting {host_ifname} up")).boxed(),
            node.add_host_route(ip.into(), host, gateway.into(), format!("routing {ip} to {host_ifname}")).boxed(),
            node.add_neighbour(host, ip.into(), mac, format!("adding {ip}'s MAC on {host_ifname}")).boxed(),
        ];
        if let (Some(v6), Some(gw6)) = (ip6, cfg.gateway6()) {
            node_side.push(node.add_host_route(v6.into(), host, gw6.into(), format!("routing {v6} to {host_ifname}")).boxed());
            node_side.push(node.add_neighbour(host, v6.into(), mac, format!("adding {v6}'s MAC on {host_ifname}")).boxed());
        }
        // The member has its address with the network's prefix, but no route to the
        // prefix on its link: everything, its own subnet too, goes via the gateway,
        // whose MAC (the host end's) it is told.
        let inside = async {
            let nl = Netlink::open(pod)?;
            let (index, ifname) = (pair.peer, &req.ifname);
            // Loopback is the first link of every namespace: index 1.
            let mut steps: Vec<BoxFuture<'_, Result<(), NetlinkError>>> = vec![nl.up(1, "setting lo up in the pod").boxed()];
            if ip6.is_none() {
                // IPv4-only network: no IPv6 neighbour traffic from this interface.
                steps.push(nl.no_ipv6_addresses(index, format!("turning IPv6 addresses off on {ifname}")).boxed());
            }
            let prefix = cfg.subnet.prefix();
            steps.push(nl.add_address(index, ip.into(), prefix, false, format!("adding {ip} to {ifname}")).boxed());
            steps.push(nl.up(index, format!("setting {ifname} up")).boxed());
            steps.push(nl.add_neighbour(index, gateway.into(), veth::HOST_MAC, format!("adding the gateway's MAC on {ifname}")).boxed());
            let dest = (!req.default_route).then_some(IpNetwork::V4(cfg.subnet));
            steps.push(nl.add_route_via(dest, gateway.into(), index, format!("routing via {gateway} on {ifname}")).boxed());
            if let (Some(v6), Some(gw6), Some(net6)) = (ip6, cfg.gateway6(), cfg.subnet6) {
                steps.push(nl.add_address(index, v6.into(), net6.prefix(), false, format!("adding {v6} to {ifname}")).boxed());
                steps.push(
                    nl.add_neighbour(index, gw6.into(), veth::HOST_MAC, format!("adding the IPv6 gateway's MAC on {ifname}")).boxed(),
                );
                let dest = (!req.default_route).then_some(IpNetwork::V6(net6));
                steps.push(nl.add_route_via(dest, gw6.into(), index, format!("routing via {gw6} on {ifname}")).boxed());
            }
            Netlink::pipelined(steps).await
        };
        // Both sides at once: they are different namespaces, and their requests are
        // independent until the first packet.
        let (node_done, inside_done) = futures::future::join(Netlink::pipelined(node_side), inside).await;
        if let Err(e) = node_done.and(inside_done) {
            let _ = self.unwire(&host_ifname).await;
            // The only request of these that can clash is a route to the member.
            if e.errno() == Some(libc::EEXIST) {
                return Err(NetworkError::AddressRouted { network: cfg.name.clone(), ip: ip.into() });
            }
            return Err(e.into());
        }
        Ok(Attachment {
            network: cfg.name.clone(),
            owner: req.owner.clone(),
            ip,
            prefix: cfg.subnet.prefix(),
            gateway,
            ip6,
            mtu,
            host_ifname,
            ifname: req.ifname.clone(),
            netns: req.netns.clone(),
            ports: req.ports.clone(),
            dns_names: req.dns_names.clone(),
            resolv_conf: resolv_conf(cfg),
        })
    }

    async fn unwire(&self, host_ifname: &str) -> Result<(), NetworkError> {
        let node = Netlink::open(&self.netns)?;
        if let Some(link) = node.link(host_ifname).await? {
            node.delete_link(link.header.index, &format!("deleting {host_ifname}")).await?;
        }
        Ok(())
    }

    fn member_file(&self, name: &NetworkName, owner: &OwnerId) -> PathBuf {
        self.net_dir(name).join("members").join(format!("{owner}.json"))
    }

    /// Undoes [`Node::attach`]: deletes the veth (its peer goes with it), frees the
    /// address, forgets the member. Works when the member's namespace is gone, and
    /// when there is nothing to undo.
    pub async fn detach(&self, name: &NetworkName, owner: &OwnerId) -> Result<(), NetworkError> {
        let Some(cfg) = self.network(name)? else { return Ok(()) };
        // The member's routes go with its veth.
        self.unwire(&host_ifname(name, owner)).await?;
        self.forget(&cfg, owner).await
    }

    /// Detach for a member whose namespace is about to be destroyed: withdraws its
    /// ports, frees its address and forgets it, but leaves the veth to the kernel,
    /// which deletes it in the background once the namespace goes (a synchronous
    /// delete costs ~25 ms here). If the namespace lives on, [`Node::gc`] deletes
    /// the veth later.
    pub async fn detach_released(&self, name: &NetworkName, owner: &OwnerId) -> Result<(), NetworkError> {
        let Some(cfg) = self.network(name)? else { return Ok(()) };
        // The routes to the member go now, not with its veth, whose namespace may be
        // held on for a while: its address may be handed out again at once. Only the
        // routes through its own link (a route to the same address elsewhere is not
        // ours), and before the address is freed, so that no new holder's is taken.
        let node = Netlink::open(&self.netns)?;
        if let Some(link) = node.link(&host_ifname(name, owner)).await? {
            let addresses = [self.ipam(&cfg).address_of(owner)?, self.ipam6(&cfg).map(|p| p.address_of(owner)).transpose()?.flatten()];
            for ip in addresses.into_iter().flatten() {
                node.delete_host_route(ip, link.header.index, format!("deleting the route to {ip} of {owner}")).await?;
            }
        }
        self.forget(&cfg, owner).await
    }

    /// The bookkeeping half of a detach: ports withdrawn, addresses freed, the member's
    /// record and names gone, an emptied implicit network removed.
    async fn forget(&self, cfg: &NetworkConfig, owner: &OwnerId) -> Result<(), NetworkError> {
        let name = &cfg.name;
        self.firewall.unpublish(owner)?;
        if let Some(ip) = self.ipam(cfg).release(owner)? {
            self.records.remove(name, ip);
        }
        if let Some(ip6) = self.ipam6(cfg).map(|p| p.release(owner)).transpose()?.flatten() {
            self.records.remove(name, ip6);
        }
        let path = self.member_file(name, owner);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(state_err(&path)(e)),
        }
        if cfg.implicit {
            self.remove_if_unused(name).await?;
        }
        Ok(())
    }

    /// Removes an implicit network that has no members, unless an attach holds it.
    async fn remove_if_unused(&self, name: &NetworkName) -> Result<(), NetworkError> {
        let Some(_lock) = self.try_network_lock(name)? else { return Ok(()) };
        // Whether any member is left, without reading them all: this runs on the pod
        // teardown path of the default network.
        let dir = self.net_dir(name).join("members");
        if std::fs::read_dir(&dir).map_err(state_err(&dir))?.next().is_some() {
            return Ok(());
        }
        match self.remove_network_locked(name).await {
            Err(NetworkError::NoSuchNetwork(_)) => Ok(()),
            other => other,
        }
    }

    fn lock_file(&self, name: &NetworkName) -> Result<std::fs::File, NetworkError> {
        // Outside the network's own directory, which removal deletes: a lock on a
        // deleted file would guard nothing.
        let dir = self.state_dir.join("network-locks");
        std::fs::create_dir_all(&dir).map_err(state_err(&dir))?;
        let path = dir.join(format!("{name}.lock"));
        std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(state_err(&path))
    }

    /// Takes the network's lock without ever blocking the thread: attaches of one
    /// process hold it across awaits, and a blocking flock on a single-threaded runtime
    /// would wait for a holder that can then never run again.
    async fn network_lock(&self, name: &NetworkName, how: FlockArg) -> Result<Flock<std::fs::File>, NetworkError> {
        let nonblock = match how {
            FlockArg::LockShared | FlockArg::LockSharedNonblock => FlockArg::LockSharedNonblock,
            _ => FlockArg::LockExclusiveNonblock,
        };
        loop {
            let f = self.lock_file(name)?;
            match Flock::lock(f, nonblock) {
                Ok(l) => return Ok(l),
                Err((_, nix::Error::EWOULDBLOCK)) => tokio::time::sleep(std::time::Duration::from_millis(2)).await,
                Err((_, e)) => return Err(NetworkError::State { path: self.state_dir.join("network-locks"), source: e.into() }),
            }
        }
    }

    fn try_network_lock(&self, name: &NetworkName) -> Result<Option<Flock<std::fs::File>>, NetworkError> {
        let f = self.lock_file(name)?;
        match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
            Ok(l) => Ok(Some(l)),
            Err((_, nix::Error::EWOULDBLOCK)) => Ok(None),
            Err((_, e)) => Err(NetworkError::State { path: self.state_dir.join("network-locks"), source: e.into() }),
        }
    }

    /// Removes everything owned by owners not in `live`: what a crashed process left.
    /// For each network: members whose owner is gone are detached (ports withdrawn,
    /// veth deleted, address freed, record removed); addresses allocated without a
    /// member record (a crash mid-attach) are freed; and host veths of this node that
    /// no record names are deleted. Returns what was removed.
    pub async fn gc(&self, live: &std::collections::HashSet<OwnerId>) -> Result<GcReport, NetworkError> {
        self.gc_with(|o| live.contains(o), true).await
    }

    /// [`Node::gc`] asking `is_live` about each owner when it is met, so that an owner
    /// made while this runs (whose record appears before its attachment) is kept.
    /// Without `stray_links`, host veths that no record of this state dir names are
    /// left alone: on a node that other state dirs share, they may be theirs.
    pub async fn gc_with(&self, is_live: impl Fn(&OwnerId) -> bool, stray_links: bool) -> Result<GcReport, NetworkError> {
        let mut report = GcReport::default();
        // Links first: an attach that starts after this snapshot allocates its address
        // (and so shows in the state read below) before it makes its veth.
        let node = Netlink::open(&self.netns)?;
        let links = node.link_names().await?;
        let mut known_ifnames = std::collections::HashSet::new();
        // One failure (a veth the kernel refuses to delete, an unreadable record) must
        // not keep the rest from being cleaned: it is reported and gc goes on. But a
        // record that could not be read may be a live pod's: then no link counts as
        // stray, as a veth's name does not say which network it is of.
        let mut unread = false;
        for cfg in self.networks()? {
            let members = match self.members(&cfg.name) {
                Ok(m) => m,
                Err(e) => {
                    report.failures.push((format!("reading the members of {}", cfg.name), e));
                    unread = true;
                    vec![]
                }
            };
            for m in members {
                // Handled here either way: not a stray in the link snapshot below.
                known_ifnames.insert(m.host_ifname.clone());
                if is_live(&m.owner) {
                    continue;
                }
                match self.detach(&cfg.name, &m.owner).await {
                    Ok(()) => report.members.push((cfg.name.clone(), m.owner)),
                    Err(e) => report.failures.push((format!("detaching {} from {}", m.owner, cfg.name), e)),
                }
            }
            for pool in std::iter::once(self.ipam(&cfg)).chain(self.ipam6(&cfg)) {
                let owners = match pool.owners() {
                    Ok(o) => o,
                    Err(e) => {
                        report.failures.push((format!("reading the addresses of {}", cfg.name), e.into()));
                        unread = true;
                        continue;
                    }
                };
                for (owner, ip) in owners {
                    known_ifnames.insert(host_ifname(&cfg.name, &owner));
                    if is_live(&owner) {
                        continue;
                    }
                    match self.detach(&cfg.name, &owner).await {
                        Ok(()) => report.addresses.push((cfg.name.clone(), ip)),
                        Err(e) => report.failures.push((format!("freeing {ip} of {owner} in {}", cfg.name), e)),
                    }
                }
            }
        }
        // Host ends are named `mp` + hash; any not accounted for is a leftover.
        for name in links.into_iter().filter(|_| stray_links && !unread) {
            if is_host_ifname(&name) && !known_ifnames.contains(&name) {
                match self.unwire(&name).await {
                    Ok(()) => report.links.push(name),
                    Err(e) => report.failures.push((format!("deleting stray veth {name}"), e)),
                }
            }
        }
        Ok(report)
    }

    /// Removes network `name` and its bridge; refuses while it has members.
    pub async fn remove_network(&self, name: &NetworkName) -> Result<(), NetworkError> {
        let _lock = self.network_lock(name, FlockArg::LockExclusive).await?;
        self.remove_network_locked(name).await
    }

    async fn remove_network_locked(&self, name: &NetworkName) -> Result<(), NetworkError> {
        let Some(cfg) = self.network(name)? else { return Err(NetworkError::NoSuchNetwork(name.clone())) };
        let members = self.members(name)?;
        if !members.is_empty() {
            return Err(NetworkError::InUse { name: name.clone(), count: members.len() });
        }
        // The record goes aside first: a process starting meanwhile puts back the
        // firewall elements of every recorded network, and would revive these.
        let record = self.net_dir(name).join("config.json");
        let aside = record.with_extension("json.removing");
        std::fs::rename(&record, &aside).map_err(state_err(&record))?;
        let removed = async {
            self.firewall.remove_network(&cfg)?;
            let nl = Netlink::open(&self.netns)?;
            bridge::remove(&nl, cfg.bridge.as_str()).await?;
            Ok::<(), NetworkError>(())
        };
        if let Err(e) = removed.await {
            let _ = std::fs::rename(&aside, &record);
            return Err(e);
        }
        if let Ok(mut ready) = self.ready.lock() {
            ready.remove(name);
        }
        self.records.remove_network(name);
        if let Ok(mut dns) = self.dns.lock() {
            if let Some(server) = dns.as_mut() {
                server.stop(name);
            }
        }
        let dir = self.net_dir(name);
        std::fs::remove_dir_all(&dir).map_err(state_err(&dir))
    }
}

fn forward_drop_warning(chain: &str, cfg: &NetworkConfig) -> String {
    let g = cfg.group();
    let fix = if chain == "ip filter FORWARD" {
        format!(
            "iptables -I FORWARD -m devgroup --src-group {g:#x} -j ACCEPT && iptables -I FORWARD -m devgroup --dst-group {g:#x} -j ACCEPT"
        )
    } else {
        format!("nft insert rule {chain} meta iifgroup {g:#x} accept && nft insert rule {chain} meta oifgroup {g:#x} accept")
    };
    format!(
        "{chain} has a forward policy of drop, which drops traffic of network {} whatever minipod allows; to let it through run: {fix}",
        cfg.name
    )
}

fn upstreams(cfg: &NetworkConfig) -> Vec<SocketAddr> {
    if cfg.dns_upstreams.is_empty() {
        crate::dns::resolv_conf_upstreams()
    } else {
        cfg.dns_upstreams.clone()
    }
}

fn resolv_conf(cfg: &NetworkConfig) -> String {
    if cfg.dns {
        return format!("nameserver {}\n", cfg.gateway());
    }
    upstreams(cfg).iter().map(|u| format!("nameserver {}\n", u.ip())).collect()
}

fn is_dns_name(name: &str) -> bool {
    let name = name.trim_end_matches('.');
    !name.is_empty()
        && name.len() <= 253
        && name
            .split('.')
            .all(|l| !l.is_empty() && l.len() <= 63 && !l.starts_with('-') && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
}

/// What [`Node::gc`] removed, and what it could not.
#[derive(Debug, Default)]
pub struct GcReport {
    /// Members detached because their owner is gone.
    pub members: Vec<(NetworkName, OwnerId)>,
    /// Addresses freed that no member record held.
    pub addresses: Vec<(NetworkName, IpAddr)>,
    /// Host veth ends deleted that no record named.
    pub links: Vec<String>,
    /// What could not be cleaned (what was tried, why it failed); the rest was.
    pub failures: Vec<(String, NetworkError)>,
}

impl GcReport {
    /// Whether nothing was left to clean.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty() && self.addresses.is_empty() && self.links.is_empty() && self.failures.is_empty()
    }
}

fn is_host_ifname(name: &str) -> bool {
    name.len() == 12 && name.starts_with("mp") && name[2..].bytes().all(|b| b.is_ascii_hexdigit())
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

    #[test]
    fn configs_are_checked_before_anything_is_made() {
        let mut cfg = NetworkConfig::new(NetworkName::new("t").unwrap(), IfName::new("br-t").unwrap(), "10.9.0.0/31".parse().unwrap());
        assert!(matches!(cfg.validate(), Err(NetworkError::TooSmall { .. })));
        cfg.subnet = "10.9.0.0/24".parse().unwrap();
        cfg.gateway = Some("10.9.1.1".parse().unwrap());
        assert!(matches!(cfg.validate(), Err(NetworkError::BadGateway { .. })));
        cfg.gateway = None;
        assert!(cfg.validate().is_ok());
        assert_eq!(cfg.gateway(), "10.9.0.1".parse::<Ipv4Addr>().unwrap());
    }
}
