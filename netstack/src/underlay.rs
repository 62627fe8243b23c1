//! The underlay of a cluster on one machine: a namespace holding a bridge, and for
//! each node a veth from one of the bridge's ports to the node's uplink, addressed
//! from a documentation range. Nodes reach each other over it as hosts on one LAN;
//! nothing of it touches the machine's own interfaces.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;

use rtnetlink::packet_route::link::{InfoData, InfoVeth};
use rtnetlink::{LinkBridge, LinkUnspec, LinkVeth};

use crate::netlink::{Netlink, NetlinkError};
use crate::netns::Netns;
use crate::IfName;

/// The underlay's bridge.
pub const BRIDGE: &str = "mpul0";

/// ARP entries kept for everything else on the machine when sizing an underlay.
pub const ARP_RESERVE: usize = 64;

/// The size of the kernel's ARP table: one for every namespace of the machine, which
/// refuses new entries beyond `net.ipv4.neigh.default.gc_thresh3` (1024 by default).
pub fn arp_table_limit() -> usize {
    std::fs::read_to_string("/proc/sys/net/ipv4/neigh/default/gc_thresh3").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(1024)
}

/// How many nodes one underlay on this machine holds: each node learns the address of
/// every other it talks to (n·(n-1) ARP entries in all), and once the machine's ARP
/// table is full a node goes silent to the next peer that asks for it (the kernel logs
/// "neighbor table overflow"). The largest n whose entries fit in the table less
/// [`ARP_RESERVE`].
pub fn max_nodes() -> usize {
    let room = arp_table_limit().saturating_sub(ARP_RESERVE);
    (1..).take_while(|n: &usize| n * (n - 1) <= room).last().unwrap_or(1)
}

/// Sets `lo` and the bridge up in the (fresh) underlay namespace `ns`.
pub async fn make(ns: &Netns) -> Result<(), NetlinkError> {
    let nl = Netlink::open(ns)?;
    let lo = nl.index("lo").await?;
    nl.up(lo, "setting lo up in the underlay").await?;
    if nl.link(BRIDGE).await?.is_none() {
        nl.add_link(LinkBridge::new(BRIDGE).build(), &format!("creating the underlay bridge {BRIDGE}")).await?;
    }
    let bridge = nl.index(BRIDGE).await?;
    nl.up(bridge, format!("setting {BRIDGE} up")).await
}

/// Wires `node` to the underlay: a veth whose end `port` is a port of the bridge and
/// whose end `uplink` is in `node` with `addr/prefix`, both with `mtu`. On a failure
/// the veth goes again.
pub async fn plug(
    underlay: &Netns,
    node: &Netns,
    port: &IfName,
    uplink: &IfName,
    addr: Ipv4Addr,
    prefix: u8,
    mtu: u32,
) -> Result<(), NetlinkError> {
    let nl = Netlink::open(underlay)?;
    let node_fd = std::fs::File::open(node.path())
        .map_err(|source| NetlinkError::Request { what: format!("opening {}", node.path().display()), source })?;
    let peer = LinkUnspec::new_with_name(uplink.as_str()).mtu(mtu).setns_by_fd(node_fd.as_raw_fd()).build();
    let veth = LinkVeth::new(port.as_str(), uplink.as_str()).mtu(mtu).set_info_data(InfoData::Veth(InfoVeth::Peer(peer))).build();
    nl.add_link(veth, &format!("creating the underlay link {port} to {uplink} in {}", node.path().display())).await?;
    let wired = async {
        let bridge = nl.index(BRIDGE).await?;
        let index = nl.index(port.as_str()).await?;
        nl.set_link(LinkUnspec::new_with_index(index).controller(bridge).up().build(), format!("putting {port} on {BRIDGE}")).await?;
        let in_node = Netlink::open(node)?;
        let up = in_node.index(uplink.as_str()).await?;
        in_node.add_address(up, IpAddr::V4(addr), prefix, true, format!("adding {addr}/{prefix} to {uplink}")).await?;
        in_node.up(up, format!("setting {uplink} up")).await
    };
    if let Err(e) = wired.await {
        if let Ok(Some(link)) = nl.link(port.as_str()).await {
            let _ = nl.delete_link(link.header.index, &format!("rolling back {port}")).await;
        }
        return Err(e);
    }
    Ok(())
}

/// Takes the veth of port `port` away (and the node's uplink with it); one that is
/// gone is fine.
pub async fn unplug(underlay: &Netns, port: &IfName) -> Result<(), NetlinkError> {
    let nl = Netlink::open(underlay)?;
    match nl.link(port.as_str()).await? {
        Some(link) => nl.delete_link(link.header.index, &format!("deleting underlay link {port}")).await,
        None => Ok(()),
    }
}
