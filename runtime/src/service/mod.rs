//! Kubernetes Services on a minipod node: a stable virtual IP (a ClusterIP) in front
//! of the ready pods that a selector picks, load-balanced by the node's firewall.
//!
//! Services come from Kubernetes YAML or JSON ([`parse`], through k8s-openapi's typed
//! `Service`), are recorded under `<root>/services/<namespace>/<name>.json` and are
//! served on the node of the runtime that applied them. Their endpoints follow the
//! pods with no action by anyone: a pod that becomes ready in a service's namespace
//! with labels its selector matches is added, one that begins to stop or be removed
//! is taken out before its containers get their signal (as the Kubernetes endpoint
//! controller does for a terminating pod), and one whose container fails its
//! readiness probe ([`crate::embed::ContainerBuilder::readiness`]) is out until it
//! passes again. An endpoint is a pod's address on its first network and the service
//! port's `targetPort`.
//!
//! The node's DNS server answers `NAME.NAMESPACE.svc.DOMAIN` (domain `cluster.local`
//! unless [`crate::PodsOptions::cluster_domain`] says otherwise) with the cluster IP,
//! `_PORT._PROTO.NAME.NAMESPACE.svc.DOMAIN` SRV for named ports and PTR for the cluster
//! IP; pods get the search path `NAMESPACE.svc.DOMAIN svc.DOMAIN DOMAIN` with
//! `ndots:5`, so `web` and `web.prod` are found as in Kubernetes. A service applied by
//! any process sharing the state dir is answered within 100 ms (the server polls the
//! records' directory); one this process applies, at once. The embedding API makes
//! them in code too ([`crate::embed::Minipod::service`]).
//!
//! A headless service (`clusterIP: None`) has no cluster IP and no firewall state:
//! its DNS name answers with the addresses of its ready endpoints (and SRV records
//! with their ports), as Kubernetes' DNS does.
//!
//! `type: NodePort` serves each port on every IPv4 address of the node too, on its
//! `nodePort` (given, kept from before, or picked at random from 30000-32767), for
//! clients outside the node, the node itself and pods alike.
//!
//! `sessionAffinity: ClientIP` keeps a client's connections to a port on the endpoint
//! its first one went to, until it has been quiet for `timeoutSeconds` (default three
//! hours), as kube-proxy's nftables mode does with a timed set per endpoint.
//!
//! A `targetPort` by name is the port each pod declares by that name (a different
//! number on each, as Kubernetes' containers `ports` give them; see
//! [`crate::pod::NamedPort`]); a pod that declares none is no endpoint of that port. A
//! name that none of the pods the service selects declares is refused, as a typo.
//!
//! A service without a selector gets its endpoints from EndpointSlices given by hand
//! (`discovery.k8s.io/v1`, labelled `kubernetes.io/service-name`; see
//! [`EndpointSliceRecord`]), added to those of its selector when it has one, as
//! kube-proxy merges every slice of a service.
//!
//! What a manifest asks for that is not built yet is refused with the field that asks
//! for it, never accepted and ignored: `type: LoadBalancer`/`ExternalName`, `SCTP`,
//! `externalIPs`, `publishNotReadyAddresses`, IPv6, and per-endpoint `hostname`s.
//! NetworkPolicy objects come in the same documents (see [`crate::policy`]). A pod
//! none of whose containers has a readiness probe is ready from the moment its network
//! is up until it stops.
//!
//! On a node of a cluster a service's endpoints are the pods of every node, unless
//! `internalTrafficPolicy: Local` (and, for a NodePort, `externalTrafficPolicy: Local`
//! too) makes them the node's own: a pod's connections to the cluster IP then stay on
//! its node, and a node port sends a client only to that node's pods, which see the
//! client's own address (none there: refused). The two policies differing for a
//! NodePort is refused on a cluster node (the cluster IP and the node ports would need
//! endpoints of their own); on a node of no cluster every endpoint is the node's, and
//! any pair is met.

mod apply;
mod endpoints;
mod labels;
mod manifest;
mod record;
mod slice;

pub use apply::Change;
pub(crate) use apply::{read_records, remove_record, services_lock_in, write_record};
pub use labels::{check_label_key, check_label_value, LabelOp, LabelRequirement, LabelSelector, Selector};
pub(crate) use manifest::checked_meta;
pub use manifest::{checked, parse, Document, ManifestError, Object, ObjectKey, ServiceManifest};
pub use record::{ServiceKey, ServicePortSpec, ServiceRecord, TargetPort};
pub use slice::{slice_endpoints, EndpointSliceRecord, SliceEndpoint, SliceKey, SlicePort, SERVICE_NAME_LABEL};

use std::net::Ipv4Addr;

/// The ClusterIP range unless one is given (Kubernetes' default).
pub const DEFAULT_SERVICE_CIDR: &str = "10.96.0.0/12";

/// The default service CIDR as a value.
pub fn default_service_cidr() -> ipnetwork::Ipv4Network {
    ipnetwork::Ipv4Network::new(Ipv4Addr::new(10, 96, 0, 0), 12).unwrap_or_else(|_| unreachable!("a /12 is a valid prefix"))
}

/// A service could not be applied, found or deleted: nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("no service {0}")]
    NoSuchService(ServiceKey),
    #[error("document {doc} (Service {key}): spec.clusterIP {ip} is taken by service {by}: leave it out to get a free one")]
    IpTaken { doc: usize, key: ServiceKey, ip: Ipv4Addr, by: ServiceKey },
    #[error("document {doc} (Service {key}): {field}: Local for only one of the service's cluster IP and node ports is not built for a node of a cluster (each would need endpoints of its own): give internalTrafficPolicy and externalTrafficPolicy the same")]
    LocalTraffic { doc: usize, key: ServiceKey, field: &'static str },
    #[error("document {doc} (Service {key}): spec.clusterIP {ip} is not in the service CIDR {cidr}")]
    IpOutside { doc: usize, key: ServiceKey, ip: Ipv4Addr, cidr: ipnetwork::Ipv4Network },
    #[error("document {doc} (Service {key}): spec.clusterIP cannot change ({old} to {new}): delete the service and apply it again")]
    IpImmutable { doc: usize, key: ServiceKey, old: String, new: String },
    #[error("document {doc}: Service {key} is in the file twice")]
    Twice { doc: usize, key: ServiceKey },
    #[error("the service CIDR {0} has no free address left: delete services or give a larger one")]
    Full(ipnetwork::Ipv4Network),
    #[error("document {doc} (Service {key}): node port {proto}/{port} is taken by service {by}: leave nodePort out to get a free one")]
    NodePortTaken { doc: usize, key: ServiceKey, proto: crate::netstack::Proto, port: u16, by: ServiceKey },
    #[error("document {doc} (Service {key}): node port {proto}/{port} is published by pod {pod} as a host port: give another nodePort, or leave it out to get a free one")]
    NodePortPublished { doc: usize, key: ServiceKey, proto: crate::netstack::Proto, port: u16, pod: String },
    #[error("no {0} node port of 30000-32767 is free: delete NodePort services")]
    NodePortsFull(crate::netstack::Proto),
    #[error("no endpoint slice {0}")]
    NoSuchSlice(SliceKey),
    #[error("document {doc}: EndpointSlice {key} is in the file twice")]
    SliceTwice { doc: usize, key: SliceKey },
    #[error("document {doc} (EndpointSlice {key}): endpoint {ip} is in the service CIDR {cidr}: a cluster IP cannot be an endpoint")]
    SliceClusterIp { doc: usize, key: SliceKey, ip: Ipv4Addr, cidr: ipnetwork::Ipv4Network },
    #[error("document {doc} (Service {key}): spec.ports[{index}].targetPort: {reason}")]
    NoSuchPortName { doc: usize, key: ServiceKey, index: usize, reason: String },
}
