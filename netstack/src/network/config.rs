//! What a network is: its settings, their defaults and their checks.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use serde::{Deserialize, Serialize};

use crate::names::{IfName, NetworkName};

/// Settings that cannot make a network, found before anything is made.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("network {name}: {cidr} is too small: use a /30 (IPv4) or /126 (IPv6) or larger: a gateway and at least one pod")]
    TooSmall { name: NetworkName, cidr: IpNetwork },
    #[error("network {name}: gateway {gateway} is not a host address of {cidr}")]
    BadGateway { name: NetworkName, gateway: Ipv4Addr, cidr: Ipv4Network },
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

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.subnet.prefix() > 30 {
            return Err(ConfigError::TooSmall { name: self.name.clone(), cidr: self.subnet.into() });
        }
        if let Some(v6) = self.subnet6 {
            if v6.prefix() > 126 {
                return Err(ConfigError::TooSmall { name: self.name.clone(), cidr: v6.into() });
            }
        }
        let gw = self.gateway();
        if !self.subnet.contains(gw) || gw == self.subnet.network() || gw == self.subnet.broadcast() {
            return Err(ConfigError::BadGateway { name: self.name.clone(), gateway: gw, cidr: self.subnet });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_are_checked_before_anything_is_made() {
        let mut cfg = NetworkConfig::new(NetworkName::new("t").unwrap(), IfName::new("br-t").unwrap(), "10.9.0.0/31".parse().unwrap());
        assert!(matches!(cfg.validate(), Err(ConfigError::TooSmall { .. })));
        cfg.subnet = "10.9.0.0/24".parse().unwrap();
        cfg.gateway = Some("10.9.1.1".parse().unwrap());
        assert!(matches!(cfg.validate(), Err(ConfigError::BadGateway { .. })));
        cfg.gateway = None;
        assert!(cfg.validate().is_ok());
        assert_eq!(cfg.gateway(), "10.9.0.1".parse::<Ipv4Addr>().unwrap());
    }
}
