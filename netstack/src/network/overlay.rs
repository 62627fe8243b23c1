//! A node's place in a cluster's overlay: its VXLAN device over an uplink, carrying
//! one of its networks (its pod subnet) to the same network of every peer node. What
//! is set up is recorded as `overlay.json` in the node's state dir, with its peers;
//! peers are changed under `overlay.lock` there.

use super::*;
use crate::overlay::{self, OverlayError, OverlayPeer, OverlaySpec};

/// How long a peer being added gets to answer an echo on the underlay.
const PEER_PROBE: std::time::Duration = std::time::Duration::from_secs(3);

/// The node's overlay as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlayRecord {
    pub spec: OverlaySpec,
    pub network: NetworkName,
    /// The MTU the tunnel carries (the uplink's less the VXLAN overhead).
    pub mtu: u32,
    pub peers: Vec<OverlayPeer>,
}

impl Node {
    fn overlay_file(&self) -> PathBuf {
        self.state_dir.join("overlay.json")
    }

    /// The overlay this node is part of, if any.
    pub fn overlay(&self) -> Result<Option<OverlayRecord>, NetworkError> {
        let path = self.overlay_file();
        match record::read_json(&path) {
            Ok(r) => Ok(Some(r)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(state_err(&path)(e)),
        }
    }

    /// Held while the overlay's record is read, changed (with what it records) and
    /// written, so that two processes changing it at once (the CLI and a daemon's
    /// retry, say) cannot lose one's change, nor a peer added bring back the record of
    /// an overlay just left.
    async fn overlay_lock(&self) -> Result<Flock<std::fs::File>, NetworkError> {
        let path = self.state_dir.join("overlay.lock");
        let file = Self::lock_file(&path)?;
        // Another holder keeps it for a few netlink calls: waited for off the async threads.
        let at = path.clone();
        tokio::task::spawn_blocking(move || Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| state_err(&path)(e.into())))
            .await
            .map_err(|e| state_err(&at)(std::io::Error::other(e)))?
    }

    fn write_overlay(&self, r: &OverlayRecord) -> Result<(), NetworkError> {
        let path = self.overlay_file();
        record::write_json(&path, r, Durability::Atomic).map_err(state_err(&path))?;
        // This process's DNS at once; others' within their watcher's poll.
        self.records.set_peers(&r.network, r.peers.iter().map(|p| p.subnet).collect());
        Ok(())
    }

    /// Carries network `network` (its subnet is this node's pod subnet) to the same
    /// network of the peers that are added, over VXLAN `vni` on `uplink`, whose address
    /// on the node is `local`. The network's links must fit in the tunnel: make the
    /// network with an MTU of at most the uplink's less [`overlay::VXLAN_OVERHEAD`].
    pub async fn join_overlay(
        &self,
        network: &NetworkName,
        vni: u32,
        uplink: &IfName,
        local: Ipv4Addr,
    ) -> Result<OverlayRecord, NetworkError> {
        let cfg = self.network(network)?.ok_or_else(|| NetworkError::NoSuchNetwork(network.clone()))?;
        let _lock = self.overlay_lock().await?;
        let spec = OverlaySpec { vni, uplink: uplink.clone(), local, subnet: cfg.subnet, group: cfg.group() };
        if let Some(had) = self.overlay()? {
            if had.spec != spec || had.network != *network {
                return Err(NetworkError::Conflict {
                    name: network.clone(),
                    what: format!("this node is in the overlay of VNI {} over {} already", had.spec.vni, had.spec.uplink),
                });
            }
        }
        let nl = Netlink::open(&self.netns)?;
        let mtu = overlay::ensure(&nl, &spec).await?;
        if let Some(net_mtu) = cfg.mtu.filter(|m| *m > mtu) {
            let _ = overlay::remove(&nl, &spec).await;
            return Err(OverlayError::NetworkMtu { network: network.clone(), mtu: net_mtu, overlay: mtu }.into());
        }
        let rec = match self.overlay()? {
            Some(had) => had,
            None => OverlayRecord { spec, network: network.clone(), mtu, peers: vec![] },
        };
        if let Err(e) = self.write_overlay(&rec) {
            let _ = overlay::remove(&nl, &rec.spec).await;
            return Err(e);
        }
        Ok(rec)
    }

    /// Adds (or updates) the peer node at `peer.underlay`: this node's pods reach its
    /// pods by their addresses.
    pub async fn add_overlay_peer(&self, peer: OverlayPeer) -> Result<(), NetworkError> {
        let rec = self.overlay()?.ok_or(OverlayError::NotJoined)?;
        overlaps_no_peer(&rec, &peer)?;
        overlay::check_peer(&rec.spec, &peer)?;
        // One that does not answer on the underlay would be a route into nothing.
        let (ns, to) = (self.netns.try_clone()?, peer.underlay);
        if !crate::probe::answers(&ns, to, PEER_PROBE)? {
            return Err(OverlayError::PeerSilent { peer: to, uplink: rec.spec.uplink.clone(), within: PEER_PROBE }.into());
        }
        // Read again under the lock: a peer another process added or took away during
        // the probe stays added or taken away.
        let _lock = self.overlay_lock().await?;
        let mut rec = self.overlay()?.ok_or(OverlayError::NotJoined)?;
        overlaps_no_peer(&rec, &peer)?;
        let nl = Netlink::open(&self.netns)?;
        let known = rec.peers.contains(&peer);
        // A peer that changed subnet: its old route goes first.
        let old = rec.peers.iter().find(|p| p.underlay == peer.underlay && p.subnet != peer.subnet).copied();
        if let Some(old) = &old {
            overlay::remove_peer(&nl, &rec.spec, old).await?;
        }
        overlay::add_peer(&nl, &rec.spec, &peer).await?;
        rec.peers.retain(|p| p.underlay != peer.underlay);
        rec.peers.push(peer);
        rec.peers.sort_by_key(|p| p.underlay);
        if let Err(e) = self.write_overlay(&rec) {
            // The kernel is put back as the record still has it: entries it does not
            // name would outlive every removal, which goes by the record.
            if !known {
                let _ = overlay::remove_peer(&nl, &rec.spec, &peer).await;
            }
            if let Some(old) = &old {
                let _ = overlay::add_peer(&nl, &rec.spec, old).await;
            }
            return Err(e);
        }
        Ok(())
    }

    /// Takes the peer at `underlay` away: its route, neighbour and forwarding entries
    /// go. One that is not a peer is fine.
    pub async fn remove_overlay_peer(&self, underlay: Ipv4Addr) -> Result<(), NetworkError> {
        let _lock = self.overlay_lock().await?;
        let Some(mut rec) = self.overlay()? else { return Ok(()) };
        let Some(peer) = rec.peers.iter().find(|p| p.underlay == underlay).copied() else { return Ok(()) };
        let nl = Netlink::open(&self.netns)?;
        overlay::remove_peer(&nl, &rec.spec, &peer).await?;
        rec.peers.retain(|p| p.underlay != underlay);
        self.write_overlay(&rec)
    }

    /// Leaves the overlay: the VXLAN device goes, and every peer entry with it.
    pub async fn leave_overlay(&self) -> Result<(), NetworkError> {
        let _lock = self.overlay_lock().await?;
        let Some(rec) = self.overlay()? else { return Ok(()) };
        let nl = Netlink::open(&self.netns)?;
        overlay::remove(&nl, &rec.spec).await?;
        self.records.clear_peers();
        let path = self.overlay_file();
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(state_err(&path)(e)),
            _ => Ok(()),
        }
    }
}

/// Refuses a peer whose pod CIDR overlaps another peer's.
fn overlaps_no_peer(rec: &OverlayRecord, peer: &OverlayPeer) -> Result<(), NetworkError> {
    match rec.peers.iter().find(|p| p.underlay != peer.underlay && p.subnet.overlaps(peer.subnet)) {
        Some(other) => Err(OverlayError::Overlap {
            peer: peer.underlay,
            subnet: peer.subnet,
            other: other.subnet,
            holder: format!("peer {}", other.underlay),
        }
        .into()),
        None => Ok(()),
    }
}
