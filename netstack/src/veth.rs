//! veth pairs: the host end on a bridge in the node namespace, the peer created
//! directly inside the pod's namespace under its final name (no rename, no move).

use std::os::fd::AsRawFd;

use rtnetlink::packet_route::link::{InfoData, InfoVeth};
use rtnetlink::{LinkBridgePort, LinkUnspec, LinkVeth};

use crate::netlink::{Netlink, NetlinkError};
use crate::netns::Netns;

/// Creates `host` (in the namespace of `node`) paired with `peer` inside `pod`,
/// both with `mtu`, puts `host` on bridge `bridge` with hairpin on, and sets it up.
/// Returns the host end's index. On failure nothing is left: deleting the host end
/// takes the peer with it.
/// `before_up` runs once the host end exists and before it goes up (to turn off
/// IPv6 on it, say).
pub async fn create(
    node: &Netlink,
    host: &str,
    pod: &Netns,
    peer: &str,
    bridge: u32,
    mtu: u32,
    before_up: impl FnOnce() -> Result<(), NetlinkError>,
) -> Result<u32, NetlinkError> {
    let pod_fd = std::fs::File::open(pod.path())
        .map_err(|e| NetlinkError::Request { what: format!("opening {}", pod.path().display()), source: e })?;
    let peer_msg = LinkUnspec::new_with_name(peer).mtu(mtu).setns_by_fd(pod_fd.as_raw_fd()).build();
    let msg = LinkVeth::new(host, peer).mtu(mtu).set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg))).build();
    node.add_link(msg, &format!("creating veth {host} with {peer} in {}", pod.path().display())).await?;
    let index = node.index(host).await?;
    let wired = async {
        node.set_link(LinkUnspec::new_with_index(index).controller(bridge).build(), &format!("attaching {host} to its bridge")).await?;
        // Hairpin lets a pod reach itself through a published port on the node.
        node.set_port(LinkBridgePort::new(index).hairpin(true).build(), &format!("enabling hairpin on {host}")).await?;
        before_up()?;
        node.up(index, &format!("setting {host} up")).await
    };
    if let Err(e) = wired.await {
        let _ = node.delete_link(index, &format!("rolling back {host}")).await;
        return Err(e);
    }
    Ok(index)
}
