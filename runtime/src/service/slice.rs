//! EndpointSlices given by hand (`discovery.k8s.io/v1`): the endpoints of a service
//! without a selector, Kubernetes' "Services without selectors", such as a database
//! outside the node or pods another runtime runs. Recorded under
//! `<root>/endpointslices/<namespace>/<name>.json`; a slice belongs to the service its
//! `kubernetes.io/service-name` label names, and its ready endpoints are added to
//! that service's (with a selector too, as kube-proxy merges every slice of a service).

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;

use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::{Deserialize, Serialize};

use super::{Change, ManifestError, ServiceKey, ServicePortSpec};
use crate::netstack::{is_dns_label, Namespace, Proto, ServiceName, SliceName};
use crate::pod::{PodError, Pods};

type Result<T> = std::result::Result<T, PodError>;

/// The label that says which service a slice is of (Kubernetes' own).
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// A slice's identity: its name within its namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SliceKey {
    pub namespace: Namespace,
    pub name: SliceName,
}

impl fmt::Display for SliceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A port of a slice: the service port of the same name and protocol goes to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlicePort {
    pub name: Option<String>,
    pub protocol: Proto,
    pub port: u16,
}

/// An endpoint of a slice and its conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SliceEndpoint {
    pub address: Ipv4Addr,
    pub ready: bool,
    /// Still answering while it terminates: used when a port has no ready endpoint at
    /// all, as kube-proxy does.
    pub serving: bool,
}

/// An EndpointSlice as applied and recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointSliceRecord {
    #[serde(flatten)]
    pub key: SliceKey,
    pub service: ServiceName,
    pub ports: Vec<SlicePort>,
    pub endpoints: Vec<SliceEndpoint>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

impl EndpointSliceRecord {
    /// The service it gives endpoints to.
    pub fn service_key(&self) -> ServiceKey {
        ServiceKey { namespace: self.key.namespace.clone(), name: self.service.clone() }
    }
}

/// Where the service port `port` goes among `slices`: the ready endpoints of every
/// slice port of its name and protocol, or the serving ones if none is ready.
pub fn slice_endpoints(slices: &[EndpointSliceRecord], port: &ServicePortSpec) -> Vec<SocketAddrV4> {
    let pick = |want: fn(&SliceEndpoint) -> bool| -> Vec<SocketAddrV4> {
        let mut out = Vec::new();
        for s in slices {
            for p in s.ports.iter().filter(|p| p.name == port.name && p.protocol == port.protocol) {
                out.extend(s.endpoints.iter().filter(|e| want(e)).map(|e| SocketAddrV4::new(e.address, p.port)));
            }
        }
        out
    };
    let ready = pick(|e| e.ready);
    if ready.is_empty() {
        pick(|e| e.serving)
    } else {
        ready
    }
}

/// Checks a typed EndpointSlice (document `doc` of its input) against what minipod
/// serves: every field honoured or refused by name.
pub fn checked(doc: usize, slice: EndpointSlice) -> std::result::Result<EndpointSliceRecord, ManifestError> {
    let meta = super::manifest::checked_meta(doc, "EndpointSlice", slice.metadata, SliceName::new)?;
    let key = SliceKey { namespace: meta.namespace.clone(), name: meta.name.clone() };
    let invalid = |field: &str, reason: String| meta.invalid(field, reason);
    let not_built = |field: &str, what: &str| meta.not_built(field, what);
    let service = match meta.labels.get(SERVICE_NAME_LABEL) {
        None => {
            return Err(invalid(
                "metadata.labels",
                format!("{SERVICE_NAME_LABEL} is required: it names the service whose endpoints these are"),
            ))
        }
        Some(s) => ServiceName::new(s.as_str()).map_err(|e| invalid(&format!("metadata.labels.{SERVICE_NAME_LABEL}"), e.to_string()))?,
    };
    match slice.address_type.as_str() {
        "IPv4" => {}
        "IPv6" => return Err(not_built("addressType", "an IPv6 service")),
        "FQDN" => return Err(not_built("addressType", "FQDN endpoints (kube-proxy does not serve them either)")),
        t => return Err(invalid("addressType", format!("{t:?} is not IPv4, IPv6 or FQDN"))),
    }
    let mut ports: Vec<SlicePort> = Vec::new();
    for (i, p) in slice.ports.unwrap_or_default().iter().enumerate() {
        let field = |f: &str| format!("ports[{i}].{f}");
        let name = p.name.clone().filter(|n| !n.is_empty());
        if let Some(n) = &name {
            if !is_dns_label(n) || n.bytes().any(|b| b.is_ascii_uppercase()) {
                return Err(invalid(&field("name"), format!("{n:?} is not a lowercase DNS label")));
            }
        }
        let port = match p.port {
            None => {
                return Err(invalid(
                    &field("port"),
                    "required: a port without a number (every port) is served by no proxy, kube-proxy neither".into(),
                ))
            }
            Some(n) => {
                u16::try_from(n).ok().filter(|n| *n != 0).ok_or_else(|| invalid(&field("port"), format!("{n} is not 1 to 65535")))?
            }
        };
        let protocol = match p.protocol.as_deref() {
            None | Some("TCP") => Proto::Tcp,
            Some("UDP") => Proto::Udp,
            Some("SCTP") => return Err(not_built(&field("protocol"), "SCTP")),
            Some(x) => return Err(invalid(&field("protocol"), format!("{x:?} is not TCP, UDP or SCTP"))),
        };
        // appProtocol is a hint for the consumers of the slice; the firewall forwards
        // whatever the protocol carries.
        if ports.iter().any(|q| q.name == name && q.protocol == protocol) {
            return Err(invalid(&field("name"), format!("{protocol} port {:?} is given twice", name.as_deref().unwrap_or(""))));
        }
        ports.push(SlicePort { name, protocol, port });
    }
    let mut endpoints = Vec::new();
    for (i, e) in slice.endpoints.unwrap_or_default().iter().enumerate() {
        let field = |f: &str| format!("endpoints[{i}].{f}");
        let address = match e.addresses.as_slice() {
            [] => return Err(invalid(&field("addresses"), "an endpoint needs its address".into())),
            [one] => one,
            _ => return Err(invalid(&field("addresses"), "give one address (Kubernetes' consumers use only the first)".into())),
        };
        let address = match address.parse::<IpAddr>() {
            Ok(IpAddr::V4(ip)) => ip,
            Ok(IpAddr::V6(_)) => return Err(invalid(&field("addresses"), format!("{address} is IPv6 in an IPv4 slice"))),
            Err(_) => return Err(invalid(&field("addresses"), format!("{address:?} is not an IP address"))),
        };
        if address.is_loopback() || address.is_link_local() || address.is_unspecified() || address.is_multicast() || address.is_broadcast()
        {
            return Err(invalid(
                &field("addresses"),
                format!("{address} cannot be an endpoint (loopback, link-local, multicast or unspecified)"),
            ));
        }
        if e.hostname.is_some() {
            return Err(not_built(&field("hostname"), "DNS names of single endpoints"));
        }
        // nodeName, zone, hints and targetRef place and name an endpoint; every
        // endpoint is served from this node, so each is met as it is.
        let c = e.conditions.clone().unwrap_or_default();
        // Kubernetes: an unknown readiness is ready, and serving follows it unless given.
        let ready = c.ready.unwrap_or(true);
        endpoints.push(SliceEndpoint { address, ready, serving: c.serving.unwrap_or(ready) });
    }
    Ok(EndpointSliceRecord { key, service, ports, endpoints, labels: meta.labels.clone(), annotations: meta.annotations.clone() })
}

/// A slice applied: what was recorded before (to undo) and what now.
pub(super) struct SliceStep {
    pub doc: usize,
    pub old: Option<EndpointSliceRecord>,
    pub new: EndpointSliceRecord,
}

impl Pods {
    fn slices_dir(&self) -> PathBuf {
        self.root().join("endpointslices")
    }

    fn slice_file(&self, key: &SliceKey) -> PathBuf {
        self.slices_dir().join(&key.namespace).join(format!("{}.json", key.name))
    }

    /// The slices of `namespace` (all namespaces with None), by name.
    pub fn endpoint_slices(&self, namespace: Option<&Namespace>) -> Result<Vec<EndpointSliceRecord>> {
        let mut all: Vec<EndpointSliceRecord> = super::read_records(&self.slices_dir(), namespace.map(|n| n.as_str()))?;
        all.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(all)
    }

    /// The slices under the state root `root` (this node's, or a peer's) that give
    /// `svc` endpoints; one directory lookup when its namespace has none.
    pub(crate) fn slices_under(&self, root: &std::path::Path, svc: &ServiceKey) -> Result<Vec<EndpointSliceRecord>> {
        let dir = root.join("endpointslices");
        if !dir.join(&svc.namespace).exists() {
            return Ok(vec![]);
        }
        let all: Vec<EndpointSliceRecord> = super::read_records(&dir, Some(svc.namespace.as_str()))?;
        Ok(all.into_iter().filter(|s| s.service == svc.name).collect())
    }

    /// Records each slice (under the services' lock); on a failure the ones written
    /// before are put back. The services they name are not served here.
    pub(super) fn commit_slices(&self, docs: &[(usize, &EndpointSliceRecord)]) -> Result<Vec<SliceStep>> {
        let cidr = *self.service_cidr();
        let mut steps: Vec<SliceStep> = Vec::new();
        for &(doc, new) in docs {
            let fail = |e: PodError, steps: &[SliceStep]| {
                self.undo_slices(steps);
                Err(e)
            };
            if steps.iter().any(|s| s.new.key == new.key) {
                return fail(super::ServiceError::SliceTwice { doc, key: new.key.clone() }.into(), &steps);
            }
            if let Some(e) = new.endpoints.iter().find(|e| cidr.contains(e.address)) {
                let e = super::ServiceError::SliceClusterIp { doc, key: new.key.clone(), ip: e.address, cidr };
                return fail(e.into(), &steps);
            }
            let path = self.slice_file(&new.key);
            let old = match crate::netstack::record::read_json::<EndpointSliceRecord>(&path) {
                Ok(old) => Some(old),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return fail(crate::pod::io_err("reading", &path)(e), &steps),
            };
            if old.as_ref() != Some(new) {
                if let Err(e) = super::write_record(&path, new) {
                    return fail(e, &steps);
                }
            }
            steps.push(SliceStep { doc, old, new: new.clone() });
        }
        Ok(steps)
    }

    /// Puts back what `steps` replaced (best effort: each failure is logged).
    pub(super) fn undo_slices(&self, steps: &[SliceStep]) {
        for s in steps.iter().rev() {
            let path = self.slice_file(&s.new.key);
            let undone = match &s.old {
                Some(old) => super::write_record(&path, old),
                None => super::remove_record(&path),
            };
            if let Err(e) = undone {
                tracing::warn!("undoing endpoint slice {}: {e}", s.new.key);
            }
        }
    }

    /// The slices `keys` name, every one of them or an error naming the first missing.
    pub(super) fn find_slices(&self, keys: &[SliceKey]) -> Result<Vec<EndpointSliceRecord>> {
        keys.iter()
            .map(|k| {
                let path = self.slice_file(k);
                crate::netstack::record::read_json::<EndpointSliceRecord>(&path).map_err(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => super::ServiceError::NoSuchSlice(k.clone()).into(),
                    _ => crate::pod::io_err("reading", &path)(e),
                })
            })
            .collect()
    }

    /// Forgets the slices found by [`Pods::find_slices`].
    pub(super) fn forget_slices(&self, found: &[EndpointSliceRecord]) -> Result<()> {
        found.iter().try_for_each(|s| super::remove_record(&self.slice_file(&s.key)))
    }
}

impl SliceStep {
    /// What the apply did to it.
    pub fn change(&self) -> Change {
        match &self.old {
            None => Change::Created,
            Some(old) if *old == self.new => Change::Unchanged,
            Some(_) => Change::Configured,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> std::result::Result<EndpointSliceRecord, ManifestError> {
        let slice: EndpointSlice = serde_yaml_ng::from_str(text).unwrap();
        checked(1, slice)
    }

    const DOCS_EXAMPLE: &str = "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: my-service-1
  labels:
    kubernetes.io/service-name: my-service
addressType: IPv4
ports:
  - name: http
    appProtocol: http
    protocol: TCP
    port: 9376
endpoints:
  - addresses:
      - \"10.4.5.6\"
  - addresses:
      - \"10.1.2.3\"
    conditions: {ready: false}
";

    #[test]
    fn the_kubernetes_documentation_example_is_taken() {
        let s = parse(DOCS_EXAMPLE).unwrap();
        assert_eq!(s.service, "my-service");
        assert_eq!(s.ports, vec![SlicePort { name: Some("http".into()), protocol: Proto::Tcp, port: 9376 }]);
        assert_eq!(s.endpoints[0], SliceEndpoint { address: Ipv4Addr::new(10, 4, 5, 6), ready: true, serving: true });
        assert!(!s.endpoints[1].ready && !s.endpoints[1].serving);
        let port = |name: Option<&str>| ServicePortSpec {
            name: name.map(str::to_string),
            protocol: Proto::Tcp,
            port: 80,
            target_port: super::super::TargetPort::Number(80),
            node_port: None,
        };
        // The service port of the slice port's name goes to the ready endpoint only.
        assert_eq!(slice_endpoints(std::slice::from_ref(&s), &port(Some("http"))), vec!["10.4.5.6:9376".parse().unwrap()]);
        assert!(slice_endpoints(std::slice::from_ref(&s), &port(None)).is_empty());
    }

    #[test]
    fn terminating_endpoints_serve_only_when_none_is_ready() {
        let mut s = parse(DOCS_EXAMPLE).unwrap();
        s.endpoints[0] = SliceEndpoint { ready: false, serving: false, ..s.endpoints[0] };
        s.endpoints[1].serving = true;
        let port = ServicePortSpec {
            name: Some("http".into()),
            protocol: Proto::Tcp,
            port: 80,
            target_port: super::super::TargetPort::Number(80),
            node_port: None,
        };
        assert_eq!(slice_endpoints(&[s], &port), vec!["10.1.2.3:9376".parse().unwrap()]);
    }

    #[test]
    fn what_cannot_be_served_is_refused_by_field() {
        let cases = [
            ("kubernetes.io/service-name: my-service", "other: x", "kubernetes.io/service-name is required"),
            ("addressType: IPv4", "addressType: FQDN", "FQDN endpoints"),
            ("port: 9376", "port: 0", "ports[0].port: 0 is not 1 to 65535"),
            ("protocol: TCP", "protocol: SCTP", "ports[0].protocol: SCTP is not built"),
            ("\"10.4.5.6\"", "\"127.0.0.1\"", "endpoints[0].addresses: 127.0.0.1 cannot be an endpoint"),
            ("\"10.4.5.6\"", "\"10.4.5\"", "\"10.4.5\" is not an IP address"),
            ("conditions: {ready: false}", "hostname: db-0", "endpoints[1].hostname: DNS names of single endpoints is not built"),
        ];
        for (from, to, want) in cases {
            let e = parse(&DOCS_EXAMPLE.replace(from, to)).unwrap_err().to_string();
            assert!(e.contains(want) && e.contains("EndpointSlice default/my-service-1"), "{to}: {e}");
        }
    }
}
