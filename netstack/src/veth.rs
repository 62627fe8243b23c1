//! veth pairs: the host end on a bridge in the node namespace, the peer created
//! directly inside the pod's namespace under its final name (no rename, no move).

use std::os::fd::AsRawFd;

use rtnetlink::packet_route::link::{InfoData, InfoVeth};
use rtnetlink::{LinkBridgePort, LinkUnspec, LinkVeth};

use crate::netlink::{Netlink, NetlinkError};
use crate::netns::{Netns, NetnsError};

/// Making a veth pair failed.
#[derive(Debug, thiserror::Error)]
pub enum VethError {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("turning IPv6 off on {link}")]
    NoIpv6 {
        link: String,
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

/// Creates `host` (in `node`, the namespace `node_ns`) paired with `peer` inside
/// `pod`, both with `mtu`, with `host` on bridge `bridge` from birth, hairpin on and
/// IPv6 off, and sets it up. Returns the host end's index. On failure nothing is left:
/// deleting the host end takes the peer with it.
pub async fn create(node: &Netlink, node_ns: &Netns, host: &str, pod: &Netns, peer: &str, bridge: u32, mtu: u32) -> Result<u32, VethError> {
    let pod_fd = std::fs::File::open(pod.path())
        .map_err(|e| NetlinkError::Request { what: format!("opening {}", pod.path().display()), source: e })?;
    let peer_msg = LinkUnspec::new_with_name(peer).mtu(mtu).setns_by_fd(pod_fd.as_raw_fd()).build();
    // The bridge is named in the create message itself: one round trip fewer.
    let msg = LinkVeth::new(host, peer).mtu(mtu).controller(bridge).set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg))).build();
    node.add_link(msg, &format!("creating veth {host} with {peer} in {}", pod.path().display())).await?;
    let index = match node.index(host).await {
        Ok(i) => i,
        Err(e) => {
            if let Ok(Some(link)) = node.link(host).await {
                let _ = node.delete_link(link.header.index, &format!("rolling back {host}")).await;
            }
            return Err(e.into());
        }
    };
    let wired = async {
        // Hairpin lets a pod reach itself through a published port on the node.
        node.set_port(LinkBridgePort::new(index).hairpin(true).build(), &format!("enabling hairpin on {host}")).await?;
        // A bridge port needs no IPv6 of its own (it bridges IPv6 frames all the same):
        // each DAD, router solicitation or MLD report from it would be flooded to every
        // port, and the multicast route each IPv6 link gets sits in one list of the
        // node's routing table that every new link walks.
        let key = format!("net.ipv6.conf.{host}.disable_ipv6");
        match node_ns.write_sysctl(&key, "1")? {
            // A kernel without IPv6 has nothing to turn off.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !std::path::Path::new("/proc/sys/net/ipv6").exists() => {}
            other => other.map_err(|source| VethError::NoIpv6 { link: host.to_string(), source })?,
        }
        node.up(index, &format!("setting {host} up")).await?;
        Ok::<(), VethError>(())
    };
    if let Err(e) = wired.await {
        let _ = node.delete_link(index, &format!("rolling back {host}")).await;
        return Err(e);
    }
    Ok(index)
}
