//! The daemon's node in a cluster's overlay (`minipod serve --overlay-uplink ...
//! --cluster-peer ...`): the pod CIDR network a kubelet gives the node is carried over
//! VXLAN to the same network of each peer node, so that pods of every node reach each
//! other by their addresses.

use std::net::Ipv4Addr;
use std::sync::Arc;

use anyhow::Context;
use minipod_runtime::netstack::netns::Netns;
use minipod_runtime::netstack::overlay::{OverlayPeer, VXLAN_OVERHEAD};
use minipod_runtime::netstack::{IfName, NetworkName};
use minipod_runtime::pod::POD_CIDR_NETWORK;
use minipod_runtime::Pods;

/// Where the node's tunnel runs and who its peers are.
#[derive(Debug, Clone)]
pub struct ClusterOverlay {
    /// The link the tunnel's packets leave through.
    pub uplink: IfName,
    /// The node's address on it, which peers send to.
    pub address: Ipv4Addr,
    /// The VXLAN network identifier, the same on every node.
    pub vni: u32,
    /// Each peer node's address on the underlay and its pod CIDR.
    pub peers: Vec<OverlayPeer>,
}

impl ClusterOverlay {
    /// The MTU the pods' links need to fit in the tunnel: the uplink's (in the node
    /// namespace `netns`, the current one if none) less the VXLAN overhead.
    pub async fn pod_mtu(&self, netns: Option<&std::path::Path>) -> anyhow::Result<u32> {
        let ns = match netns {
            Some(p) => Netns::open(p)?,
            None => Netns::current()?,
        };
        let nl = minipod_runtime::netstack::netlink::Netlink::open(&ns)?;
        let mtu = nl.link_mtu(self.uplink.as_str()).await.with_context(|| format!("--overlay-uplink {}", self.uplink))?;
        Ok(mtu.saturating_sub(VXLAN_OVERHEAD))
    }

    /// Carries the node's pod CIDR network over the tunnel, takes away the peers no
    /// longer given and adds every peer given; does nothing before a kubelet gave the
    /// node a pod CIDR. After the CIDR or the tunnel's settings changed, the old overlay
    /// is left first. Joining again changes nothing. Returns the peers that could not
    /// be added (one that is not up yet, say), each with why.
    async fn join(&self, pods: &Pods) -> anyhow::Result<Vec<String>> {
        let name = NetworkName::new(POD_CIDR_NETWORK)?;
        let node = pods.node();
        let Some(net) = node.network(&name)? else { return Ok(vec![]) };
        if let Some(had) = node.overlay()? {
            let spec = &had.spec;
            let same = had.network == name
                && spec.subnet == net.subnet
                && spec.uplink == self.uplink
                && spec.vni == self.vni
                && spec.local == self.address;
            if !same {
                node.leave_overlay().await?;
            }
        }
        let rec = node
            .join_overlay(&name, self.vni, &self.uplink, self.address)
            .await
            .with_context(|| format!("joining {} (pod CIDR {}) to the overlay over {}", name, net.subnet, self.uplink))?;
        for gone in rec.peers.iter().filter(|p| !self.peers.iter().any(|q| q.underlay == p.underlay)) {
            node.remove_overlay_peer(gone.underlay).await?;
        }
        let mut missing = Vec::new();
        for peer in &self.peers {
            if let Err(e) = node.add_overlay_peer(*peer).await {
                missing.push(format!("--cluster-peer {}={}: {e}", peer.underlay, peer.subnet));
            }
        }
        Ok(missing)
    }

    /// [`ClusterOverlay::join`] off the async threads (a peer's probe waits up to 3 s),
    /// and while some peers could not be added, again every 10 s in the background
    /// until they are: one node's daemon need not wait for its peers' to start.
    pub async fn join_and_follow(&self, pods: &Arc<Pods>) -> anyhow::Result<()> {
        let missing = tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(self.join(pods)))?;
        if missing.is_empty() {
            return Ok(());
        }
        tracing::warn!("overlay peers not added yet, trying again every 10 s: {}", missing.join("; "));
        let (me, pods) = (self.clone(), pods.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(RETRY).await;
                let tried = tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(me.join(&pods)));
                match tried {
                    Ok(missing) if missing.is_empty() => {
                        tracing::info!("every overlay peer is added");
                        return;
                    }
                    Ok(missing) => tracing::warn!("overlay peers not added yet: {}", missing.join("; ")),
                    Err(e) => tracing::warn!("joining the overlay: {e:#}"),
                }
            }
        });
        Ok(())
    }
}

/// How long a daemon waits before it tries again the peers it could not add.
const RETRY: std::time::Duration = std::time::Duration::from_secs(10);

/// A `--cluster-peer ADDRESS=POD_CIDR` argument.
pub fn parse_peer(s: &str) -> Result<OverlayPeer, String> {
    let (addr, cidr) =
        s.split_once('=').ok_or_else(|| format!("{s:?}: write a peer as ADDRESS=POD_CIDR, e.g. 192.0.2.12=10.244.1.0/24"))?;
    let underlay = addr.parse().map_err(|e| format!("{s:?}: the address {addr:?}: {e}"))?;
    let subnet: ipnetwork::Ipv4Network = cidr.parse().map_err(|e| format!("{s:?}: the pod CIDR {cidr:?}: {e}"))?;
    if subnet.network() != subnet.ip() {
        return Err(format!("{s:?}: the pod CIDR has host bits set: write {}/{}", subnet.network(), subnet.prefix()));
    }
    Ok(OverlayPeer { underlay, subnet })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_are_an_address_and_a_pod_cidr() {
        let p = parse_peer("192.0.2.12=10.244.1.0/24").unwrap();
        assert_eq!((p.underlay.to_string(), p.subnet.to_string()), ("192.0.2.12".into(), "10.244.1.0/24".into()));
        for bad in ["192.0.2.12", "192.0.2=10.244.1.0/24", "192.0.2.12=10.244.1.1/24", "192.0.2.12=nonsense"] {
            assert!(parse_peer(bad).is_err(), "{bad}");
        }
    }
}
