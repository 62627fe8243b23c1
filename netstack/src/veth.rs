//! veth pairs of members: the host end in the node namespace, the peer created
//! directly inside the pod's namespace under its final name (no rename, no move).
//!
//! Host ends are routed links, not bridge ports: a bridge walks all of its ports on
//! every port added (adjacency lists, port numbers, features, MTU) and again when a
//! port's carrier comes up, so that attaching the 1000th pod cost ~1.7x the 1st.
//! A routed link costs the same whatever the number of pods.

use std::os::fd::AsRawFd;

use rtnetlink::packet_route::link::{InfoData, InfoVeth, LinkAttribute};
use rtnetlink::{LinkUnspec, LinkVeth};

use crate::netlink::{Netlink, NetlinkError};
use crate::netns::{Netns, NetnsError};

/// The MAC of every host end. Each host end is a link of its own with one member on
/// the far side, so they can all share it, and members can be told it up front (a
/// permanent neighbour entry for the gateway) instead of asking with ARP.
pub const HOST_MAC: [u8; 6] = [0xee; 6];

/// Making a veth pair failed.
#[derive(Debug, thiserror::Error)]
pub enum VethError {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("setting {key} on the host end")]
    Sysctl {
        key: String,
        #[source]
        source: std::io::Error,
    },
}

impl VethError {
    /// The errno behind a failed netlink request, if that is what failed.
    pub fn errno(&self) -> Option<i32> {
        match self {
            VethError::Netlink(e) => e.errno(),
            _ => None,
        }
    }
}

/// One pair to make.
pub struct VethSpec<'a> {
    /// The host end's name, in the node namespace.
    pub host: &'a str,
    /// The member's namespace, and the peer's name and MAC in it.
    pub pod: &'a Netns,
    pub peer: &'a str,
    pub peer_mac: [u8; 6],
    pub mtu: u32,
    /// The host end's interface group: the network's, which the firewall matches on.
    pub group: u32,
    /// Whether the host end carries IPv6 (a dual-stack network). It gets no IPv6
    /// address of its own either way.
    pub ipv6: bool,
}

/// The two ends of a pair just made.
pub struct Pair {
    /// The host end's index in the node namespace.
    pub host: u32,
    /// The peer's index inside the member's namespace.
    pub peer: u32,
}

/// Creates the pair, both ends down, the host end's sysctls set. On failure nothing is
/// left: deleting the host end takes the peer with it.
pub async fn create(node: &Netlink, node_ns: &Netns, spec: &VethSpec<'_>) -> Result<Pair, VethError> {
    let (host, pod) = (spec.host, spec.pod);
    let pod_fd = std::fs::File::open(pod.path())
        .map_err(|e| NetlinkError::Request { what: format!("opening {}", pod.path().display()), source: e })?;
    let peer_msg =
        LinkUnspec::new_with_name(spec.peer).mtu(spec.mtu).address(spec.peer_mac.to_vec()).setns_by_fd(pod_fd.as_raw_fd()).build();
    let msg = LinkVeth::new(host, spec.peer)
        .mtu(spec.mtu)
        .address(HOST_MAC.to_vec())
        .link_group(spec.group)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
        .build();
    node.add_link(msg, &format!("creating veth {host} with {} in {}", spec.peer, pod.path().display())).await?;
    // One look-up gives both indexes: a veth's link attribute is its peer's index in
    // the peer's namespace.
    let found = match node.link(host).await {
        Ok(found) => found,
        Err(e) => {
            if let Ok(Some(link)) = node.link(host).await {
                let _ = node.delete_link(link.header.index, &format!("rolling back {host}")).await;
            }
            return Err(e.into());
        }
    };
    let pair = match found {
        Some(link) => {
            let peer = link.attributes.iter().find_map(|a| match a {
                LinkAttribute::Link(i) => Some(*i),
                _ => None,
            });
            let Some(peer) = peer else {
                let _ = node.delete_link(link.header.index, &format!("rolling back {host}")).await;
                return Err(NetlinkError::NoLink(format!("the peer of {host}")).into());
            };
            Pair { host: link.header.index, peer }
        }
        None => return Err(NetlinkError::NoLink(host.to_string()).into()),
    };
    if let Err(e) = host_sysctls(node_ns, host, spec.ipv6) {
        let _ = node.delete_link(pair.host, &format!("rolling back {host}")).await;
        return Err(e);
    }
    Ok(pair)
}

fn host_sysctls(node_ns: &Netns, host: &str, ipv6: bool) -> Result<(), VethError> {
    let mut sysctls = vec![
        // The node's own 127.0.0.1:hostPort, DNAT'd to the member, leaves through this
        // link, and the kernel drops 127/8 sources on a link without it.
        (format!("net.ipv4.conf.{host}.route_localnet"), "1".to_string()),
    ];
    if ipv6 {
        // IPv6 must be on to carry the member's IPv6, but the link needs no address:
        // the member is told the gateway's MAC, so no neighbour discovery runs across it.
        sysctls.push((format!("net.ipv6.conf.{host}.addr_gen_mode"), "1".to_string()));
    } else {
        // Fully off, not just without addresses: the multicast route every IPv6 link
        // gets sits in one list of the node's routing table that every new link walks.
        sysctls.push((format!("net.ipv6.conf.{host}.disable_ipv6"), "1".to_string()));
    }
    match node_ns.write_sysctls(&sysctls)? {
        Ok(()) => Ok(()),
        // A kernel without IPv6 has nothing to turn off (and carries none).
        Err((key, e))
            if key.starts_with("net.ipv6.")
                && e.kind() == std::io::ErrorKind::NotFound
                && !std::path::Path::new("/proc/sys/net/ipv6").exists() =>
        {
            Ok(())
        }
        Err((key, source)) => Err(VethError::Sysctl { key, source }),
    }
}

/// The MAC a member's interface gets: locally administered, derived from its IPv4
/// address, so that the node can be told it before the member says anything.
pub fn member_mac(ip: std::net::Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x02, 0x6d, o[0], o[1], o[2], o[3]]
}
