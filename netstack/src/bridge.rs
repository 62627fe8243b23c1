//! The bridge of one network in the node namespace. Members are not its ports (they
//! are routed, see `veth`): it holds the network's gateway addresses, which the DNS
//! server listens on and hairpin traffic comes from, and names the network in
//! `ip link`. A member attached by a minipod from before routed members is a port of
//! it, and keeps working over IPv4: the bridge answers ARP for routed members on its
//! behalf (IPv6 neighbour discovery it does not proxy).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::Ipv4Network;
use rtnetlink::packet_route::link::InfoBridge;
use rtnetlink::{LinkBridge, LinkUnspec};

use crate::netlink::{Netlink, NetlinkError};

/// What a network's bridge carries.
pub struct BridgeSpec<'a> {
    pub name: &'a str,
    pub gateway: Ipv4Addr,
    pub subnet: Ipv4Network,
    /// The IPv6 gateway and prefix length, on a dual-stack network.
    pub v6: Option<(Ipv6Addr, u8)>,
    pub mtu: u32,
    /// The interface group of the network's links, which the firewall matches on.
    pub group: u32,
}

/// Creates the bridge if it is missing, with the gateway addresses, MTU and group, and
/// sets it up. An existing bridge is reused (after a restart, or a second process) and
/// given the group. Returns whether this call created it.
pub async fn ensure(nl: &Netlink, spec: &BridgeSpec<'_>) -> Result<bool, NetlinkError> {
    let name = spec.name;
    let mut created = nl.link(name).await?.is_none();
    if created {
        // Without multicast snooping: with it, every port added or removed re-arms
        // query timers on every other port. And with an address of its own: a bridge
        // without one takes the lowest of its ports' addresses, and the gateway's MAC
        // then changes under ports whenever that port comes or goes.
        let msg = LinkBridge::new(name)
            .mtu(spec.mtu)
            .address(bridge_mac(name).to_vec())
            .link_group(spec.group)
            .append_info_data(InfoBridge::MulticastSnooping(false))
            .build();
        match nl.add_link(msg, &format!("creating bridge {name}")).await {
            // Someone else made it between our look-up and the add: theirs, not ours.
            Err(e) if e.errno() == Some(libc::EEXIST) => created = false,
            other => other?,
        }
    }
    let configured = async {
        let index = nl.index(name).await?;
        let prefix = spec.subnet.prefix();
        nl.add_address(index, spec.gateway.into(), prefix, true, &format!("adding {}/{prefix} to bridge {name}", spec.gateway)).await?;
        if let Some((gw6, prefix)) = spec.v6 {
            nl.add_address(index, IpAddr::V6(gw6), prefix, true, &format!("adding {gw6}/{prefix} to bridge {name}")).await?;
        }
        let up = LinkUnspec::new_with_index(index).up().link_group(spec.group).build();
        nl.set_link(up, &format!("setting bridge {name} up in group {:#x}", spec.group)).await
    };
    if let Err(e) = configured.await {
        // Only one this call made is ours to take back.
        if created {
            let _ = remove(nl, name).await;
        }
        return Err(e);
    }
    Ok(created)
}

/// A locally administered unicast address derived from the bridge's name: stable
/// across re-creation, so ARP entries for the gateway stay right.
fn bridge_mac(name: &str) -> [u8; 6] {
    let b = crate::names::stable_hash([name]).to_be_bytes();
    [0x02, b[3], b[4], b[5], b[6], b[7]]
}

/// Deletes bridge `name`; one already gone is fine.
pub async fn remove(nl: &Netlink, name: &str) -> Result<(), NetlinkError> {
    match nl.link(name).await? {
        Some(link) => nl.delete_link(link.header.index, &format!("deleting bridge {name}")).await,
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_bridge_mac_is_the_one_earlier_releases_gave() {
        // Pods attached before keep an ARP entry for it.
        assert_eq!(super::bridge_mac("minipod0"), [0x02, 0x8e, 0x5c, 0xd5, 0x8b, 0x6f]);
    }
}
