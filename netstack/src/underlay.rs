//! The underlay of a cluster on one machine: a namespace holding a bridge, and for
//! each node a veth from one of the bridge's ports to the node's uplink, addressed
//! from a documentation range, and with a MAC derived from that address. Nodes reach
//! each other over it as hosts on one LAN, each told the others' MACs rather than
//! asking by ARP (see [`know`]); nothing of it touches the machine's own interfaces.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;

use rtnetlink::packet_route::link::{InfoData, InfoVeth};
use rtnetlink::{LinkBridge, LinkUnspec, LinkVeth};

use crate::netlink::{Netlink, NetlinkError};
use crate::netns::Netns;
use crate::IfName;

/// The underlay's bridge.
pub const BRIDGE: &str = "mpul0";

/// The MAC of the uplink whose underlay address is `addr`: locally administered, and
/// the same wherever it is computed, so that every node can be told every other's
/// (see [`know`]) without asking it.
pub fn uplink_mac(addr: Ipv4Addr) -> [u8; 6] {
    let o = addr.octets();
    [0x02, 0x75, o[0], o[1], o[2], o[3]]
}

/// Tells `node` that the node at underlay address `peer` has [`uplink_mac`]`(peer)`:
/// a permanent neighbour entry on its uplink, so that it never asks by ARP. The
/// kernel's ARP table is one for every namespace of the machine and refuses learnt
/// entries past `net.ipv4.neigh.default.gc_thresh3` (1024 by default); n nodes that
/// learnt each other would need n·(n-1) of them (a node went silent at ~33 nodes),
/// while permanent entries are not counted against it.
pub async fn know(node: &Netns, uplink: &IfName, peer: Ipv4Addr) -> Result<(), NetlinkError> {
    let nl = Netlink::open(node)?;
    let index = nl.index(uplink.as_str()).await?;
    nl.add_neighbour(index, IpAddr::V4(peer), uplink_mac(peer), format!("adding the underlay neighbour {peer} on {uplink}")).await
}

/// Takes away what [`know`] wrote; an entry or uplink that is gone is fine.
pub async fn forget(node: &Netns, uplink: &IfName, peer: Ipv4Addr) -> Result<(), NetlinkError> {
    let nl = Netlink::open(node)?;
    let Some(link) = nl.link(uplink.as_str()).await? else { return Ok(()) };
    nl.delete_neighbour(link.header.index, peer, format!("removing the underlay neighbour {peer} from {uplink}")).await
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
/// whose end `uplink` is in `node` with `addr/prefix` and [`uplink_mac`]`(addr)`, both
/// with `mtu`. On a failure
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
    let peer =
        LinkUnspec::new_with_name(uplink.as_str()).mtu(mtu).address(uplink_mac(addr).to_vec()).setns_by_fd(node_fd.as_raw_fd()).build();
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
