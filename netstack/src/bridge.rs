//! The bridge that carries one network in the node namespace.

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
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
        let msg = LinkBridge::new(name).mtu(mtu).build();
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

/// Deletes bridge `name`; one already gone is fine.
pub async fn remove(nl: &Netlink, name: &str) -> Result<(), NetlinkError> {
    match nl.link(name).await? {
        Some(link) => nl.delete_link(link.header.index, &format!("deleting bridge {name}")).await,
        None => Ok(()),
    }
}
