//! Endpoints: which pods a service's connections go to, kept in step with the pods.

use std::net::SocketAddrV4;

use super::ServiceRecord;
use crate::netstack::{HeadlessService, ServicePort, VirtualService};
use crate::pod::{PodError, PodRecord, PodStatus, Pods};

type Result<T> = std::result::Result<T, PodError>;

/// Whether `pod` is one of `svc`'s endpoints now: ready (not stopping or being
/// removed), in its namespace, carrying its selector's labels, on its node and with
/// an address of its own.
fn is_endpoint(svc: &ServiceRecord, pod: &PodRecord) -> bool {
    pod.status == PodStatus::Ready
        && !pod.removing
        && !pod.host_network
        && pod.namespace == svc.key.namespace
        && pod.node == svc.node
        && svc.selector.matches(&pod.labels)
}

/// `svc` as its node's firewall serves it, with the endpoints among `pods`.
fn virtual_service(svc: &ServiceRecord, pods: &[PodRecord]) -> VirtualService {
    let mut ips: Vec<_> = pods.iter().filter(|p| is_endpoint(svc, p)).filter_map(PodRecord::ip).collect();
    // In one order, so that the same endpoints are the same service to the firewall.
    ips.sort();
    VirtualService {
        owner: svc.key.to_string(),
        // A headless service's ports are never programmed as a virtual IP.
        ip: svc.cluster_ip.unwrap_or(std::net::Ipv4Addr::UNSPECIFIED),
        ports: svc
            .ports
            .iter()
            .map(|p| ServicePort {
                proto: p.protocol,
                port: p.port,
                name: p.name.clone(),
                endpoints: ips.iter().map(|ip| SocketAddrV4::new(*ip, p.target_port)).collect(),
                node_port: p.node_port,
            })
            .collect(),
        dns: Some(svc.dns()),
        affinity: svc.client_ip_affinity.map(|secs| std::time::Duration::from_secs(secs.into())),
    }
}

impl Pods {
    /// Programs `svc` on its node with its endpoints among `pods`; returns whether
    /// anything changed.
    pub(crate) fn serve(&self, svc: &ServiceRecord, pods: &[PodRecord]) -> Result<bool> {
        if svc.node.netns.as_ref().is_some_and(|p| !p.exists()) {
            // The node namespace is gone, and its firewall with it: nothing to serve on.
            return Ok(false);
        }
        let node = self.node_at(&svc.node)?;
        let served = virtual_service(svc, pods);
        if svc.cluster_ip.is_none() {
            let headless = HeadlessService { dns: svc.dns(), ports: served.ports };
            node.node().program_headless(&headless)?;
            return Ok(true);
        }
        Ok(node.node().program_service(&served)?)
    }

    /// The addresses `svc` sends connections to now (of its first port's target).
    pub fn endpoints(&self, svc: &ServiceRecord) -> Result<Vec<std::net::Ipv4Addr>> {
        let pods = self.pods()?;
        Ok(virtual_service(svc, &pods).ports.first().map(|p| p.endpoints.iter().map(|e| *e.ip()).collect()).unwrap_or_default())
    }

    /// Brings the services that select `pod` up to date with the pods, after the pod
    /// became ready or began to stop. Costs one directory lookup when its namespace
    /// has no services.
    pub(crate) fn sync_services_of(&self, pod: &PodRecord) -> Result<()> {
        let dir = self.services_dir().join(&pod.namespace);
        if !std::fs::read_dir(&dir).is_ok_and(|mut entries| entries.next().is_some()) {
            return Ok(());
        }
        let _lock = self.services_lock()?;
        let selecting: Vec<ServiceRecord> =
            self.services(Some(&pod.namespace))?.into_iter().filter(|s| s.selector.matches(&pod.labels)).collect();
        if selecting.is_empty() {
            return Ok(());
        }
        let pods = self.pods()?;
        for svc in &selecting {
            self.serve(svc, &pods)?;
        }
        Ok(())
    }

    /// Brings every service up to date with the pods (after a sweep stopped or
    /// removed some, say); returns how many changed.
    pub fn sync_services(&self) -> Result<usize> {
        if !self.services_dir().exists() {
            return Ok(0);
        }
        let _lock = self.services_lock()?;
        let pods = self.pods()?;
        let mut changed = 0;
        for svc in self.services(None)? {
            changed += usize::from(self.serve(&svc, &pods)?);
        }
        Ok(changed)
    }
}
