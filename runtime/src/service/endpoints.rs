//! Endpoints: which pods a service's connections go to, kept in step with the pods.

use std::net::SocketAddrV4;
use std::path::PathBuf;

use super::{read_records, slice_endpoints, EndpointSliceRecord, ServicePortSpec, ServiceRecord, TargetPort};
use crate::netstack::{HeadlessService, ServicePort, VirtualService};
use crate::pod::{PodError, PodRecord, PodStatus, Pods};

type Result<T> = std::result::Result<T, PodError>;

/// Whether `pod` is one of `svc`'s endpoints now: ready (not stopping or being
/// removed, every readiness probe of its containers passing), in its namespace,
/// carrying its selector's labels, on its node (or, unless the service is node-local,
/// on a node of the same cluster, among the state roots `cluster`) and with an
/// address of its own.
fn is_endpoint(svc: &ServiceRecord, pod: &PodRecord, cluster: &[PathBuf]) -> bool {
    pod.status == PodStatus::Ready
        && pod.unready.is_empty()
        && !pod.removing
        && !pod.host_network
        && pod.namespace == svc.key.namespace
        && (pod.node == svc.node || (!svc.node_local && pod.node.reaches(&svc.node, cluster)))
        && svc.selector.matches(&pod.labels)
}

/// Where connections to `port` of `svc` go on `pod`, if it is an endpoint of that port:
/// the target port by number, or the port the pod declares by its name (a pod that
/// declares none of that name is no endpoint of this port, as in Kubernetes).
fn target(port: &ServicePortSpec, pod: &PodRecord) -> Option<SocketAddrV4> {
    let number = match &port.target_port {
        TargetPort::Number(n) => *n,
        TargetPort::Name(name) => pod.named_port(name, port.protocol)?,
    };
    Some(SocketAddrV4::new(pod.ip()?, number))
}

/// `svc` as its node's firewall serves it, with the endpoints among `pods` and those
/// its EndpointSlices give.
fn virtual_service(svc: &ServiceRecord, pods: &[PodRecord], slices: &[EndpointSliceRecord], cluster: &[PathBuf]) -> VirtualService {
    let selected: Vec<&PodRecord> = pods.iter().filter(|p| is_endpoint(svc, p, cluster)).collect();
    VirtualService {
        owner: svc.key.to_string(),
        // A headless service's ports are never programmed as a virtual IP.
        ip: svc.cluster_ip.unwrap_or(std::net::Ipv4Addr::UNSPECIFIED),
        ports: svc
            .ports
            .iter()
            .map(|p| {
                let mut endpoints: Vec<SocketAddrV4> = selected.iter().filter_map(|pod| target(p, pod)).collect();
                endpoints.extend(slice_endpoints(slices, p));
                // In one order, so that the same endpoints are the same service to the firewall.
                endpoints.sort();
                endpoints.dedup();
                ServicePort { proto: p.protocol, port: p.port, name: p.name.clone(), endpoints, node_port: p.node_port }
            })
            .collect(),
        dns: Some(svc.dns()),
        affinity: svc.client_ip_affinity.map(|secs| std::time::Duration::from_secs(secs.into())),
    }
}

impl Pods {
    /// The state roots of this node's cluster: its own and its peers'.
    pub(crate) fn cluster_roots(&self) -> Vec<PathBuf> {
        std::iter::once(self.root().to_path_buf()).chain(self.peer_roots().iter().cloned()).collect()
    }

    /// Programs `svc` on its node with its endpoints among `pods`; returns whether
    /// anything changed.
    pub(crate) fn serve(&self, svc: &ServiceRecord, pods: &[PodRecord]) -> Result<bool> {
        if svc.node.netns.as_ref().is_some_and(|p| !p.exists()) {
            // The node namespace is gone, and its firewall with it: nothing to serve on.
            return Ok(false);
        }
        let node = self.node_at(&svc.node)?;
        let served = virtual_service(svc, pods, &self.slices_for(svc)?, &self.cluster_roots());
        if svc.cluster_ip.is_none() {
            let headless = HeadlessService { dns: svc.dns(), ports: served.ports };
            node.node().program_headless(&headless)?;
            return Ok(true);
        }
        Ok(node.node().program_service(&served)?)
    }

    /// The addresses `svc` sends connections to now (of its first port's target).
    pub fn endpoints(&self, svc: &ServiceRecord) -> Result<Vec<std::net::Ipv4Addr>> {
        Ok(self.port_endpoints(svc)?.into_iter().next().map(|p| p.endpoints.iter().map(|e| *e.ip()).collect()).unwrap_or_default())
    }

    /// Each port of `svc` with the endpoints its connections go to now.
    pub fn port_endpoints(&self, svc: &ServiceRecord) -> Result<Vec<ServicePort>> {
        let pods = self.cluster_pods()?;
        Ok(virtual_service(svc, &pods, &self.slices_for(svc)?, &self.cluster_roots()).ports)
    }

    /// The EndpointSlices of `svc`: a peer node's service has them under that node's
    /// root, this node's under its own. A node-local service takes only the endpoints
    /// on its node, those in one of the node's pod networks: minipod reads no node from
    /// a slice, and kube-proxy takes an endpoint that names no node as not local.
    fn slices_for(&self, svc: &ServiceRecord) -> Result<Vec<EndpointSliceRecord>> {
        let root = if self.peer_roots().contains(&svc.node.state_dir) { &svc.node.state_dir } else { self.root() };
        let mut slices = self.slices_under(root, &svc.key)?;
        if svc.node_local && !slices.is_empty() {
            let nets: Vec<_> = crate::netstack::recorded_networks(&svc.node.state_dir)?.into_iter().map(|n| n.subnet).collect();
            for s in &mut slices {
                s.endpoints.retain(|e| nets.iter().any(|n| n.contains(e.address)));
            }
        }
        Ok(slices)
    }

    /// Brings the services that select `pod` up to date with the pods, after the pod
    /// became ready or began to stop: this node's, and those of the other nodes of its
    /// cluster (one state root's lock at a time). Costs one directory lookup per root
    /// when its namespace has no services there.
    pub(crate) fn sync_services_of(&self, pod: &PodRecord) -> Result<()> {
        // One root that fails does not keep the others stale: each is tried, and the
        // first error returned.
        let mut first = Ok(());
        for root in self.cluster_roots() {
            let dir = root.join("services");
            if !std::fs::read_dir(dir.join(&pod.namespace)).is_ok_and(|mut entries| entries.next().is_some()) {
                continue;
            }
            first = first.and(self.sync_services_under(&dir, pod));
        }
        first
    }

    /// The services under the services directory `dir` that select `pod`, brought up
    /// to date under that directory's lock.
    fn sync_services_under(&self, dir: &std::path::Path, pod: &PodRecord) -> Result<()> {
        let _lock = super::apply::services_lock_in(dir)?;
        let selecting: Vec<ServiceRecord> = read_records::<ServiceRecord>(dir, Some(pod.namespace.as_str()))?
            .into_iter()
            .filter(|s| s.selector.matches(&pod.labels))
            .collect();
        if selecting.is_empty() {
            return Ok(());
        }
        // Read under this root's lock: a view read under another root's could be
        // older than the one a peer just programmed these services from.
        let pods = self.cluster_pods()?;
        for svc in &selecting {
            self.serve(svc, &pods)?;
        }
        Ok(())
    }

    /// Brings every service of this node up to date with the pods (after a sweep
    /// stopped or removed some, say), and those of its cluster's other nodes; returns
    /// how many changed.
    pub fn sync_services(&self) -> Result<usize> {
        let mut changed = 0;
        for root in self.cluster_roots() {
            let dir = root.join("services");
            if !dir.exists() {
                continue;
            }
            let _lock = super::apply::services_lock_in(&dir)?;
            let pods = self.cluster_pods()?;
            for svc in read_records::<ServiceRecord>(&dir, None)? {
                changed += usize::from(self.serve(&svc, &pods)?);
            }
        }
        Ok(changed)
    }
}
