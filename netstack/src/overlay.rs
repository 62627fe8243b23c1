//! A VXLAN overlay between nodes, as flannel's vxlan backend builds it: one VXLAN
//! device per node (UDP 4789, one VNI per cluster, no learning), and for each peer
//! node three static entries written over netlink, so that nothing is flooded or
//! learnt: a route to the peer's pod subnet via the peer's tunnel address, a permanent
//! neighbour entry giving that address the peer's device MAC, and a forwarding entry
//! sending that MAC to the peer's underlay address.
//!
//! A node's tunnel address is the network address of its pod subnet (`10.244.1.0`
//! for `10.244.1.0/24`), and its device MAC is derived from its underlay address, so
//! that peers need nothing but the peer's underlay address and subnet to reach it.
//! The device carries the uplink's MTU less the 50 bytes of VXLAN over IPv4, and is in
//! the interface group of the node's pod network: to the firewall, traffic between
//! the pods of two nodes is traffic within one network (allowed, never masqueraded,
//! isolated from the node's other networks).

use std::net::{IpAddr, Ipv4Addr};

use ipnetwork::Ipv4Network;
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkInfo};
use rtnetlink::{LinkUnspec, LinkVxlan};
use serde::{Deserialize, Serialize};

use crate::netlink::{Netlink, NetlinkError};
use crate::IfName;

/// The IANA port of VXLAN, which the Linux default (8472) is not.
pub const VXLAN_PORT: u16 = 4789;

/// What VXLAN over IPv4 adds to each packet: outer IPv4 (20), UDP (8), VXLAN (8) and
/// the inner Ethernet header (14).
pub const VXLAN_OVERHEAD: u32 = 50;

/// The smallest overlay MTU that carries what pods send (IPv6 needs 1280).
pub const MIN_OVERLAY_MTU: u32 = 1280;

/// An overlay could not be set up or changed; what was made is taken back.
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error("uplink {uplink} has MTU {mtu}: an overlay over it would carry {} bytes, less than the {MIN_OVERLAY_MTU} pods need; raise the uplink's MTU to at least {}", mtu.saturating_sub(VXLAN_OVERHEAD), MIN_OVERLAY_MTU + VXLAN_OVERHEAD)]
    MtuTooSmall { uplink: IfName, mtu: u32 },
    #[error("VXLAN device {device} exists with VNI {found}, not {vni}: another cluster uses it; give this cluster another VNI")]
    VniClash { device: IfName, vni: u32, found: u32 },
    #[error("VNI {0} is not 1 to 16777215")]
    BadVni(u32),
    #[error("peer {peer}'s pod subnet {subnet} overlaps {other} (of {holder}): every node needs a subnet of its own")]
    Overlap { peer: Ipv4Addr, subnet: Ipv4Network, other: Ipv4Network, holder: String },
    #[error("peer {0} is this node's own underlay address")]
    PeerIsSelf(Ipv4Addr),
    #[error("network {network} has MTU {mtu}, more than the {overlay} the overlay carries: make it with an MTU of at most {overlay}")]
    NetworkMtu { network: crate::NetworkName, mtu: u32, overlay: u32 },
    #[error("this node is in no overlay: join one first")]
    NotJoined,
    #[error("peer {peer} does not answer on the underlay (no echo reply through {uplink} within {within:?}): check that it is up at that address and that the uplink reaches it, then add it again")]
    PeerSilent { peer: Ipv4Addr, uplink: IfName, within: std::time::Duration },
}

/// This node's end of an overlay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlaySpec {
    pub vni: u32,
    /// The link the tunnel's packets leave through, and the node's address on it.
    pub uplink: IfName,
    pub local: Ipv4Addr,
    /// The node's pod subnet: what peers route to this node.
    pub subnet: Ipv4Network,
    /// The interface group of the node's pod network.
    pub group: u32,
}

/// Another node of the overlay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlayPeer {
    pub underlay: Ipv4Addr,
    pub subnet: Ipv4Network,
}

impl OverlaySpec {
    /// The VXLAN device's name (`mpvx` and the VNI: one device per cluster).
    pub fn device(&self) -> Result<IfName, crate::NameError> {
        IfName::new(format!("mpvx{}", self.vni))
    }

    /// This node's tunnel address.
    pub fn vtep(&self) -> Ipv4Addr {
        self.subnet.network()
    }
}

/// The device MAC of the node at underlay address `underlay`: locally administered,
/// and the same wherever it is computed.
pub fn vtep_mac(underlay: Ipv4Addr) -> [u8; 6] {
    let o = underlay.octets();
    [0x02, 0x76, o[0], o[1], o[2], o[3]]
}

/// The VNI of a VXLAN link message, if it is one.
fn vni_of(link: &rtnetlink::packet_route::link::LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => {
            let is_vxlan = infos.iter().any(|i| matches!(i, LinkInfo::Kind(InfoKind::Vxlan)));
            let id = infos.iter().find_map(|i| match i {
                LinkInfo::Data(InfoData::Vxlan(data)) => data.iter().find_map(|d| match d {
                    InfoVxlan::Id(id) => Some(*id),
                    _ => None,
                }),
                _ => None,
            });
            id.filter(|_| is_vxlan)
        }
        _ => None,
    })
}

/// Makes this node's VXLAN device (or checks the one there) with its address, MTU
/// and group, and sets it up. Returns the MTU it carries, which pod links must not
/// exceed.
pub async fn ensure(nl: &Netlink, spec: &OverlaySpec) -> Result<u32, OverlayError> {
    if spec.vni == 0 || spec.vni > 0x00ff_ffff {
        return Err(OverlayError::BadVni(spec.vni));
    }
    let device = spec.device().map_err(|_| OverlayError::BadVni(spec.vni))?;
    let uplink_mtu = nl.link_mtu(spec.uplink.as_str()).await?;
    let mtu = uplink_mtu.saturating_sub(VXLAN_OVERHEAD);
    if mtu < MIN_OVERLAY_MTU {
        return Err(OverlayError::MtuTooSmall { uplink: spec.uplink.clone(), mtu: uplink_mtu });
    }
    let uplink = nl.index(spec.uplink.as_str()).await?;
    let created = match nl.link(device.as_str()).await? {
        Some(link) => match vni_of(&link) {
            Some(found) if found != spec.vni => return Err(OverlayError::VniClash { device, vni: spec.vni, found }),
            _ => false,
        },
        None => {
            let msg = LinkVxlan::new(device.as_str(), spec.vni)
                .dev(uplink)
                .local(spec.local)
                .port(VXLAN_PORT)
                .learning(false)
                .mtu(mtu)
                .address(vtep_mac(spec.local).to_vec())
                .link_group(spec.group)
                .build();
            nl.add_link(msg, &format!("creating VXLAN device {device} (VNI {})", spec.vni)).await?;
            true
        }
    };
    let configured = async {
        let index = nl.index(device.as_str()).await?;
        nl.add_address(index, IpAddr::V4(spec.vtep()), 32, false, format!("adding {}/32 to {device}", spec.vtep())).await?;
        nl.no_ipv6_addresses(index, format!("keeping IPv6 off {device}")).await?;
        let up = LinkUnspec::new_with_index(index).mtu(mtu).link_group(spec.group).up().build();
        nl.set_link(up, format!("setting {device} up")).await
    };
    if let Err(e) = configured.await {
        if created {
            let _ = remove(nl, spec).await;
        }
        return Err(e.into());
    }
    Ok(mtu)
}

/// Writes the route, neighbour and forwarding entries that reach `peer` (replacing
/// any for it); on a failure the ones written are taken back.
pub async fn add_peer(nl: &Netlink, spec: &OverlaySpec, peer: &OverlayPeer) -> Result<(), OverlayError> {
    check_peer(spec, peer)?;
    let device = spec.device().map_err(|_| OverlayError::BadVni(spec.vni))?;
    let index = nl.index(device.as_str()).await?;
    let (vtep, mac) = (peer.subnet.network(), vtep_mac(peer.underlay));
    let written = async {
        nl.add_fdb(index, mac, peer.underlay, format!("adding the forwarding entry of {} on {device}", peer.underlay)).await?;
        nl.add_neighbour(index, IpAddr::V4(vtep), mac, format!("adding the neighbour entry of {vtep} on {device}")).await?;
        match nl.add_route_via(Some(peer.subnet.into()), IpAddr::V4(vtep), index, format!("routing {} via {vtep}", peer.subnet)).await {
            // The same route from an earlier add: it is what we want.
            Err(e) if e.errno() == Some(libc::EEXIST) => Ok(()),
            other => other,
        }
    };
    if let Err(e) = written.await {
        let _ = remove_peer(nl, spec, peer).await;
        return Err(e.into());
    }
    Ok(())
}

/// Refuses a peer that is this node, or whose subnet overlaps this node's.
pub fn check_peer(spec: &OverlaySpec, peer: &OverlayPeer) -> Result<(), OverlayError> {
    if peer.underlay == spec.local {
        return Err(OverlayError::PeerIsSelf(peer.underlay));
    }
    if peer.subnet.overlaps(spec.subnet) {
        return Err(OverlayError::Overlap { peer: peer.underlay, subnet: peer.subnet, other: spec.subnet, holder: "this node".into() });
    }
    Ok(())
}

/// Takes away what [`add_peer`] wrote; entries already gone are fine.
pub async fn remove_peer(nl: &Netlink, spec: &OverlaySpec, peer: &OverlayPeer) -> Result<(), OverlayError> {
    let device = spec.device().map_err(|_| OverlayError::BadVni(spec.vni))?;
    let Some(link) = nl.link(device.as_str()).await? else { return Ok(()) };
    let index = link.header.index;
    let vtep = peer.subnet.network();
    // Every one is tried: one that fails leaves the others still to go.
    let route = nl.delete_route(peer.subnet, index, format!("removing the route to {}", peer.subnet)).await;
    let neighbour = nl.delete_neighbour(index, vtep, format!("removing the neighbour entry of {vtep}")).await;
    let fdb =
        nl.delete_fdb(index, vtep_mac(peer.underlay), peer.underlay, format!("removing the forwarding entry of {}", peer.underlay)).await;
    route.and(neighbour).and(fdb)?;
    Ok(())
}

/// Deletes this node's VXLAN device, and with it every peer entry on it.
pub async fn remove(nl: &Netlink, spec: &OverlaySpec) -> Result<(), OverlayError> {
    let device = spec.device().map_err(|_| OverlayError::BadVni(spec.vni))?;
    if let Some(link) = nl.link(device.as_str()).await? {
        nl.delete_link(link.header.index, &format!("deleting {device}")).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_is_found_by_its_underlay_address_and_subnet_alone() {
        let spec = OverlaySpec {
            vni: 1,
            uplink: IfName::new("eth0").unwrap(),
            local: Ipv4Addr::new(192, 0, 2, 11),
            subnet: "10.244.1.0/24".parse().unwrap(),
            group: 7,
        };
        assert_eq!(spec.device().unwrap(), "mpvx1");
        assert_eq!(spec.vtep(), Ipv4Addr::new(10, 244, 1, 0));
        assert_eq!(vtep_mac(spec.local), [0x02, 0x76, 192, 0, 2, 11]);
        // The largest VNI still names a device that fits IFNAMSIZ.
        assert!(OverlaySpec { vni: 0x00ff_ffff, ..spec }.device().is_ok());
    }
}
