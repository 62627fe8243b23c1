//! The bridge that carries one network in the node namespace.

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use rtnetlink::packet_route::link::InfoBridge;
use rtnetlink::{LinkBridge, LinkUnspec};

use crate::netlink::{Netlink, NetlinkError};

/// Creates bridge `name` if it is missing, with the gateway address and MTU, and sets
/// it up. An existing bridge is reused (after a restart, or a second process).
/// Returns whether this call created it.
pub async fn ensure(
    nl: &Netlink,
    name: &str,
    gateway: Ipv4Addr,
    cidr: Ipv4Network,
    v6: Option<(std::net::Ipv6Addr, u8)>,
    mtu: u32,
) -> Result<bool, NetlinkError> {
    let mut created = nl.link(name).await?.is_none();
    if created {
        // Without multicast snooping: with it, every port added or removed re-arms
        // query timers on every other port (br_port_state_selection), a cost that grows
        // with the number of pods. Pods' multicast (IPv6 neighbour discovery included)
        // is then flooded, as by a plain switch.
        // And with an address of its own: a bridge without one takes the lowest of its
        // ports' addresses, re-computed over all ports on every add or remove, and the
        // gateway's MAC then changes under the pods whenever that port comes or goes.
        let msg = LinkBridge::new(name)
            .mtu(mtu)
            .address(bridge_mac(name).to_vec())
            .append_info_data(InfoBridge::MulticastSnooping(false))
            .build();
        match nl.add_link(msg, &format!("creating bridge {name}")).await {
            // Someone else made it between our look-up and the add: theirs, not ours.
            Err(e) if e.errno() == Some(libc::EEXIST) => created = false,
            other => other?,
        }
    }
    let index = nl.index(name).await?;
    nl.add_address(index, gateway.into(), cidr.prefix(), &format!("adding {gateway}/{} to bridge {name}", cidr.prefix())).await?;
    if let Some((gw6, prefix)) = v6 {
        nl.add_address(index, gw6.into(), prefix, &format!("adding {gw6}/{prefix} to bridge {name}")).await?;
    }
    nl.set_link(LinkUnspec::new_with_index(index).up().build(), &format!("setting bridge {name} up")).await?;
    Ok(created)
}

/// A locally administered unicast address derived from the bridge's name: stable
/// across re-creation, so pods' ARP entries for the gateway stay right.
fn bridge_mac(name: &str) -> [u8; 6] {
    // FNV-1a: a fixed function, unlike std's hasher, whose output may change.
    let h = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    let b = h.to_be_bytes();
    [0x02, b[3], b[4], b[5], b[6], b[7]]
}

/// Deletes bridge `name`; one already gone is fine.
pub async fn remove(nl: &Netlink, name: &str) -> Result<(), NetlinkError> {
    match nl.link(name).await? {
        Some(link) => nl.delete_link(link.header.index, &format!("deleting bridge {name}")).await,
        None => Ok(()),
    }
}
