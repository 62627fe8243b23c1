//! Kubernetes documents (YAML or JSON, one or several, `kind: List` too) read into
//! k8s-openapi's typed objects and checked into what minipod applies: every field is
//! honoured or refused by name.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Deserialize;

use super::{check_label_key, check_label_value, Selector, ServiceKey, ServicePortSpec, TargetPort};
use crate::netstack::{is_dns_label, Namespace, PortName, Proto, ServiceName};

/// A document could not be read or asks for what cannot be applied.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("document {doc} is not valid YAML or JSON")]
    Syntax {
        doc: usize,
        #[source]
        source: serde_yaml_ng::Error,
    },
    /// The error is part of the message (it says what the field should be), not a
    /// source of its own.
    #[error("document {doc} ({object}): {field}: {error}")]
    Shape { doc: usize, object: String, field: String, error: serde_yaml_ng::Error },
    #[error("document {doc}: {reason}")]
    NotAnObject { doc: usize, reason: String },
    #[error("document {doc}: {kind} of apiVersion {api_version} is not something minipod applies: it takes v1 Service, discovery.k8s.io/v1 EndpointSlice and networking.k8s.io/v1 NetworkPolicy")]
    UnknownKind { doc: usize, api_version: String, kind: String },
    #[error("document {doc} ({object}): {field}: {reason}")]
    Invalid { doc: usize, object: String, field: String, reason: String },
    #[error("document {doc} ({object}): {field}: {what} is not built in minipod yet")]
    NotBuilt { doc: usize, object: String, field: String, what: String },
    #[error("the input holds no objects: give one or more Kubernetes documents")]
    Empty,
}

/// One object of the input, with its place in it (1-based) for messages.
#[derive(Debug, Clone)]
pub struct Document {
    pub index: usize,
    pub object: Object,
}

/// What a document describes.
#[derive(Debug, Clone)]
pub enum Object {
    Service(ServiceManifest),
    NetworkPolicy(crate::policy::PolicyManifest),
    EndpointSlice(super::EndpointSliceRecord),
}

/// Which object a document is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectKey {
    Service(ServiceKey),
    NetworkPolicy(crate::policy::PolicyKey),
    EndpointSlice(super::SliceKey),
}

impl std::fmt::Display for ObjectKey {
    /// As kubectl names it (`service/NAME`, `networkpolicy.networking.k8s.io/NAME`),
    /// with `NAMESPACE/` before the name unless it is `default`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (kind, namespace, name) = match self {
            ObjectKey::Service(k) => ("service", &k.namespace, k.name.as_str()),
            ObjectKey::NetworkPolicy(k) => ("networkpolicy.networking.k8s.io", &k.namespace, k.name.as_str()),
            ObjectKey::EndpointSlice(k) => ("endpointslice.discovery.k8s.io", &k.namespace, k.name.as_str()),
        };
        if *namespace == Namespace::default() {
            write!(f, "{kind}/{name}")
        } else {
            write!(f, "{kind}/{namespace}/{name}")
        }
    }
}

impl Object {
    /// Its kind and name.
    pub fn key(&self) -> ObjectKey {
        match self {
            Object::Service(s) => ObjectKey::Service(s.key.clone()),
            Object::NetworkPolicy(p) => ObjectKey::NetworkPolicy(p.key.clone()),
            Object::EndpointSlice(s) => ObjectKey::EndpointSlice(s.key.clone()),
        }
    }

    /// `Service NAMESPACE/NAME`.
    pub fn describe(&self) -> String {
        match self {
            Object::Service(s) => format!("Service {}", s.key),
            Object::NetworkPolicy(p) => format!("NetworkPolicy {}", p.key),
            Object::EndpointSlice(s) => format!("EndpointSlice {}", s.key),
        }
    }
}

/// Where node ports come from (Kubernetes' default `--service-node-port-range`).
pub const NODE_PORTS: std::ops::RangeInclusive<i32> = 30000..=32767;

/// How long a client stays with its endpoint under `sessionAffinity: ClientIP` unless
/// `timeoutSeconds` says (Kubernetes' default, three hours), and the most it may say.
pub const DEFAULT_AFFINITY_SECONDS: u32 = 10800;
const MAX_AFFINITY_SECONDS: i32 = 86400;

/// A Service as a manifest gives it: checked, its cluster IP still to be given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceManifest {
    pub key: ServiceKey,
    pub cluster_ip: Option<Ipv4Addr>,
    pub selector: Selector,
    pub ports: Vec<ServicePortSpec>,
    /// `clusterIP: None`: no cluster IP; DNS answers with the endpoints' addresses.
    pub headless: bool,
    /// `type: NodePort`: every port is on the node's addresses too (on the port given,
    /// or one picked from 30000-32767).
    pub node_ports: bool,
    /// `sessionAffinity: ClientIP`: its timeout in seconds.
    pub client_ip_affinity: Option<u32>,
    /// `externalTrafficPolicy: Local`: connections to a node port go only to
    /// endpoints on the node they came to.
    pub external_local: bool,
    /// `internalTrafficPolicy: Local`: connections to the cluster IP go only to
    /// endpoints on the client's node.
    pub internal_local: bool,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

impl ServiceManifest {
    /// Whether only the pods of the service's own node are its endpoints: for its
    /// cluster IP (`internalTrafficPolicy: Local`) and, if it has node ports, for them
    /// too (`externalTrafficPolicy: Local`). The two differing for a NodePort, the field
    /// that asks for Local: its cluster IP and node ports would need endpoints of their
    /// own, which a node of one cluster does not program (on a node of none, the
    /// cluster IP's policy is taken: every pod is on the node).
    pub fn node_local(&self) -> Result<bool, &'static str> {
        if !self.node_ports {
            return Ok(self.internal_local);
        }
        match (self.internal_local, self.external_local) {
            (internal, external) if internal == external => Ok(internal),
            (true, false) => Err("spec.internalTrafficPolicy"),
            _ => Err("spec.externalTrafficPolicy"),
        }
    }
}

/// Reads every document of `text`: all of them or an error naming the first bad one.
pub fn parse(text: &str) -> Result<Vec<Document>, ManifestError> {
    let mut docs = Vec::new();
    for (i, de) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let doc = i + 1;
        let value = serde_yaml_ng::Value::deserialize(de).map_err(|source| ManifestError::Syntax { doc, source })?;
        if value.is_null() {
            continue; // an empty document, as between two `---`
        }
        if str_field(&value, "kind") == Some("List") {
            let items = value.get("items").and_then(|v| v.as_sequence()).cloned().unwrap_or_default();
            for item in items {
                docs.push(Document { index: doc, object: object(doc, item)? });
            }
        } else {
            docs.push(Document { index: doc, object: object(doc, value)? });
        }
    }
    if docs.is_empty() {
        return Err(ManifestError::Empty);
    }
    Ok(docs)
}

fn str_field<'a>(v: &'a serde_yaml_ng::Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(|v| v.as_str())
}

fn object(doc: usize, value: serde_yaml_ng::Value) -> Result<Object, ManifestError> {
    if !value.is_mapping() {
        return Err(ManifestError::NotAnObject {
            doc,
            reason: "not a mapping: a Kubernetes object has apiVersion, kind and metadata".into(),
        });
    }
    let (Some(api_version), Some(kind)) = (str_field(&value, "apiVersion"), str_field(&value, "kind")) else {
        return Err(ManifestError::NotAnObject { doc, reason: "apiVersion and kind are required".into() });
    };
    let (api_version, kind) = (api_version.to_string(), kind.to_string());
    let object = format!("{kind} {}", str_field_in(&value, "metadata", "name").unwrap_or("(no name)"));
    match (api_version.as_str(), kind.as_str()) {
        ("v1", "Service") => Ok(Object::Service(checked(doc, typed(doc, &object, value, "v1 Service")?)?)),
        ("networking.k8s.io/v1", "NetworkPolicy") => {
            Ok(Object::NetworkPolicy(crate::policy::checked(doc, typed(doc, &object, value, "networking.k8s.io/v1 NetworkPolicy")?)?))
        }
        ("discovery.k8s.io/v1", "EndpointSlice") => {
            Ok(Object::EndpointSlice(super::slice::checked(doc, typed(doc, &object, value, "discovery.k8s.io/v1 EndpointSlice")?)?))
        }
        _ => Err(ManifestError::UnknownKind { doc, api_version, kind }),
    }
}

/// `value` as k8s-openapi's type `T`, refusing a field of the wrong shape or one that
/// `T` does not have (`what` names it in the message).
fn typed<T: serde::de::DeserializeOwned + serde::Serialize>(
    doc: usize,
    object: &str,
    value: serde_yaml_ng::Value,
    what: &str,
) -> Result<T, ManifestError> {
    let shape = |field: String, error| ManifestError::Shape { doc, object: object.to_string(), field, error };
    let t: T = serde_path_to_error::deserialize(value.clone()).map_err(|e| shape(e.path().to_string(), e.into_inner()))?;
    let back = serde_yaml_ng::to_value(&t).map_err(|error| shape(".".into(), error))?;
    if let Some(field) = unknown_field(&value, &back, "") {
        return Err(ManifestError::Invalid { doc, object: object.to_string(), field, reason: format!("no such field in a {what}") });
    }
    Ok(t)
}

fn str_field_in<'a>(v: &'a serde_yaml_ng::Value, outer: &str, key: &str) -> Option<&'a str> {
    v.get(outer).and_then(|o| str_field(o, key))
}

/// The first key of `given` that the typed object did not keep: a misspelt or unknown
/// field, which Kubernetes' strict decoding refuses too.
fn unknown_field(given: &serde_yaml_ng::Value, typed: &serde_yaml_ng::Value, path: &str) -> Option<String> {
    use serde_yaml_ng::Value;
    match (given, typed) {
        (Value::Mapping(g), Value::Mapping(t)) => g.iter().find_map(|(k, gv)| {
            let name = k.as_str().map_or_else(|| format!("{k:?}"), str::to_string);
            let here = if path.is_empty() { name.clone() } else { format!("{path}.{name}") };
            // Free-form maps keep every key; `status` is the server's to write.
            if matches!(here.as_str(), "metadata.labels" | "metadata.annotations" | "spec.selector" | "status") {
                return None;
            }
            match t.get(k) {
                Some(tv) => unknown_field(gv, tv, &here),
                None if gv.is_null() => None,
                None => Some(here),
            }
        }),
        (Value::Sequence(g), Value::Sequence(t)) => {
            g.iter().zip(t).enumerate().find_map(|(i, (gv, tv))| unknown_field(gv, tv, &format!("{path}[{i}]")))
        }
        _ => None,
    }
}

/// The checked metadata of one object of a document: its name and namespace, its
/// labels and annotations, and how messages name it (`Service NAMESPACE/NAME`).
pub(crate) struct Meta<N> {
    pub doc: usize,
    pub object: String,
    pub namespace: Namespace,
    pub name: N,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

impl<N> Meta<N> {
    pub fn invalid(&self, field: &str, reason: String) -> ManifestError {
        ManifestError::Invalid { doc: self.doc, object: self.object.clone(), field: field.into(), reason }
    }

    pub fn not_built(&self, field: &str, what: &str) -> ManifestError {
        ManifestError::NotBuilt { doc: self.doc, object: self.object.clone(), field: field.into(), what: what.into() }
    }
}

/// Checks the metadata of a `kind` object of document `doc`: a name that `name` takes,
/// a namespace (`default` when left out), labels as Kubernetes has them.
pub(crate) fn checked_meta<N: std::fmt::Display>(
    doc: usize,
    kind: &str,
    meta: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    name: impl FnOnce(String) -> Result<N, crate::netstack::NameError>,
) -> Result<Meta<N>, ManifestError> {
    let invalid = |object: String, field: &str, reason: String| ManifestError::Invalid { doc, object, field: field.into(), reason };
    let unnamed = format!("{kind} {}", meta.name.as_deref().unwrap_or_default());
    let name = match meta.name {
        None => return Err(invalid(unnamed, "metadata.name", "required".into())),
        Some(n) => name(n).map_err(|e| invalid(unnamed.clone(), "metadata.name", e.to_string()))?,
    };
    let namespace = match meta.namespace {
        None => Namespace::default(),
        Some(n) => Namespace::new(n).map_err(|e| invalid(unnamed, "metadata.namespace", e.to_string()))?,
    };
    let object = format!("{kind} {namespace}/{name}");
    let labels = meta.labels.unwrap_or_default();
    for (k, v) in &labels {
        check_label_key(k).and_then(|()| check_label_value(v)).map_err(|r| invalid(object.clone(), "metadata.labels", r))?;
    }
    Ok(Meta { doc, object, namespace, name, labels, annotations: meta.annotations.unwrap_or_default() })
}

/// Checks a typed Service (document `doc` of its input) against what minipod builds.
pub fn checked(doc: usize, svc: Service) -> Result<ServiceManifest, ManifestError> {
    let meta = checked_meta(doc, "Service", svc.metadata, ServiceName::new)?;
    let key = ServiceKey { namespace: meta.namespace.clone(), name: meta.name.clone() };
    let invalid = |field: &str, reason: String| meta.invalid(field, reason);
    let not_built = |field: &str, what: &str| meta.not_built(field, what);
    let Some(spec) = svc.spec else { return Err(invalid("spec", "required".into())) };
    let node_ports = match spec.type_.as_deref() {
        None | Some("ClusterIP") => false,
        Some("NodePort") => true,
        Some(t @ ("LoadBalancer" | "ExternalName")) => return Err(not_built("spec.type", &format!("type {t}"))),
        Some(t) => return Err(invalid("spec.type", format!("{t:?} is not ClusterIP, NodePort, LoadBalancer or ExternalName"))),
    };
    let cluster_ip = match spec.cluster_ip.as_deref() {
        None | Some("") => None,
        Some("None") => None,
        Some(ip) => match ip.parse::<IpAddr>() {
            Ok(IpAddr::V4(ip)) => Some(ip),
            Ok(IpAddr::V6(_)) => return Err(not_built("spec.clusterIP", "an IPv6 service")),
            Err(_) => return Err(invalid("spec.clusterIP", format!("{ip:?} is not an IP address"))),
        },
    };
    let headless = spec.cluster_ip.as_deref() == Some("None");
    if headless && node_ports {
        return Err(invalid("spec.clusterIP", "None (headless) cannot be of type NodePort: a node port needs a cluster IP".into()));
    }
    match spec.cluster_ips.as_deref() {
        None | Some([]) => {}
        Some([one]) if headless && one == "None" => {}
        Some([one]) if cluster_ip.map(|ip| ip.to_string()).as_deref() == Some(one.as_str()) => {}
        Some([_]) => return Err(invalid("spec.clusterIPs", "must be [spec.clusterIP] (or left out)".into())),
        Some(_) => return Err(not_built("spec.clusterIPs", "a dual-stack service")),
    }
    if spec.ip_families.iter().flatten().any(|f| f != "IPv4") {
        return Err(not_built("spec.ipFamilies", "an IPv6 service"));
    }
    match spec.ip_family_policy.as_deref() {
        // PreferDualStack on a single-stack node is single-stack, as in Kubernetes.
        None | Some("SingleStack" | "PreferDualStack") => {}
        Some("RequireDualStack") => return Err(not_built("spec.ipFamilyPolicy", "a dual-stack service")),
        Some(p) => return Err(invalid("spec.ipFamilyPolicy", format!("{p:?} is not SingleStack, PreferDualStack or RequireDualStack"))),
    }
    let client_ip_affinity = match spec.session_affinity.as_deref() {
        None | Some("None") => {
            if spec.session_affinity_config.is_some() {
                return Err(invalid("spec.sessionAffinityConfig", "only with sessionAffinity: ClientIP".into()));
            }
            None
        }
        Some("ClientIP") if headless => {
            return Err(invalid(
                "spec.sessionAffinity",
                "ClientIP needs a cluster IP: a headless service's clients pick addresses themselves".into(),
            ))
        }
        Some("ClientIP") => {
            let given = spec.session_affinity_config.as_ref().and_then(|c| c.client_ip.as_ref()).and_then(|c| c.timeout_seconds);
            match given {
                None => Some(DEFAULT_AFFINITY_SECONDS),
                Some(t) if (1..=MAX_AFFINITY_SECONDS).contains(&t) => Some(t as u32),
                Some(t) => {
                    return Err(invalid(
                        "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                        format!("{t} is not 1 to {MAX_AFFINITY_SECONDS} (a day)"),
                    ))
                }
            }
        }
        Some(a) => return Err(invalid("spec.sessionAffinity", format!("{a:?} is not None or ClientIP"))),
    };
    if spec.external_ips.as_ref().is_some_and(|v| !v.is_empty()) {
        return Err(not_built("spec.externalIPs", "externalIPs"));
    }
    if spec.publish_not_ready_addresses == Some(true) {
        return Err(not_built("spec.publishNotReadyAddresses", "publishing pods that are not ready"));
    }
    let external_local = spec.external_traffic_policy.as_deref() == Some("Local");
    let internal_local = spec.internal_traffic_policy.as_deref() == Some("Local");
    match spec.external_traffic_policy.as_deref() {
        None => {}
        Some("Cluster" | "Local") if node_ports => {}
        Some(p @ ("Cluster" | "Local")) => {
            return Err(invalid("spec.externalTrafficPolicy", format!("{p} is for type NodePort or LoadBalancer, not ClusterIP")))
        }
        Some(p) => return Err(invalid("spec.externalTrafficPolicy", format!("{p:?} is not Cluster or Local"))),
    }
    let lb_only = [
        ("spec.externalName", spec.external_name.is_some()),
        ("spec.loadBalancerIP", spec.load_balancer_ip.is_some()),
        ("spec.loadBalancerSourceRanges", spec.load_balancer_source_ranges.as_ref().is_some_and(|v| !v.is_empty())),
        ("spec.loadBalancerClass", spec.load_balancer_class.is_some()),
        ("spec.allocateLoadBalancerNodePorts", spec.allocate_load_balancer_node_ports.is_some()),
        ("spec.healthCheckNodePort", spec.health_check_node_port.is_some()),
    ];
    if let Some((field, _)) = lb_only.iter().find(|(_, set)| *set) {
        return Err(invalid(field, "belongs to type LoadBalancer or ExternalName, not built in minipod yet".into()));
    }
    // On a node of no cluster, Local and Cluster pick from the same set, and every
    // traffic distribution is met.
    match spec.internal_traffic_policy.as_deref() {
        None | Some("Cluster" | "Local") => {}
        Some(p) => return Err(invalid("spec.internalTrafficPolicy", format!("{p:?} is not Cluster or Local"))),
    }
    match spec.traffic_distribution.as_deref() {
        None | Some("PreferClose" | "PreferSameZone" | "PreferSameNode") => {}
        Some(d) => return Err(invalid("spec.trafficDistribution", format!("{d:?} is not PreferClose, PreferSameZone or PreferSameNode"))),
    }
    // Without one, its endpoints are the EndpointSlices that name it.
    let selector = spec.selector.unwrap_or_default();
    for (k, v) in &selector {
        check_label_key(k).and_then(|()| check_label_value(v)).map_err(|r| invalid("spec.selector", r))?;
    }
    let given = spec.ports.unwrap_or_default();
    if given.is_empty() {
        return Err(invalid("spec.ports", "a ClusterIP service needs at least one port".into()));
    }
    let mut ports: Vec<ServicePortSpec> = Vec::new();
    for (i, p) in given.iter().enumerate() {
        let field = |f: &str| format!("spec.ports[{i}].{f}");
        let port = u16::try_from(p.port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| invalid(&field("port"), format!("{} is not 1 to 65535", p.port)))?;
        let protocol = match p.protocol.as_deref() {
            None | Some("TCP") => Proto::Tcp,
            Some("UDP") => Proto::Udp,
            Some("SCTP") => return Err(not_built(&field("protocol"), "SCTP")),
            Some(x) => return Err(invalid(&field("protocol"), format!("{x:?} is not TCP, UDP or SCTP"))),
        };
        match &p.name {
            None if given.len() > 1 => return Err(invalid(&field("name"), "required when a service has several ports".into())),
            Some(n) if !is_dns_label(n) || n.bytes().any(|b| b.is_ascii_uppercase()) => {
                return Err(invalid(&field("name"), format!("{n:?} is not a lowercase DNS label")))
            }
            Some(n) if ports.iter().any(|q| q.name.as_ref() == Some(n)) => {
                return Err(invalid(&field("name"), format!("{n:?} is used twice")))
            }
            _ => {}
        }
        if ports.iter().any(|q| q.protocol == protocol && q.port == port) {
            return Err(invalid(&field("port"), format!("{protocol} port {port} is given twice")));
        }
        let node_port = match p.node_port {
            None => None,
            Some(_) if !node_ports => return Err(invalid(&field("nodePort"), "only for type NodePort or LoadBalancer".into())),
            Some(n) if NODE_PORTS.contains(&n) => Some(n as u16),
            Some(n) => {
                return Err(invalid(
                    &field("nodePort"),
                    format!("{n} is not in the node port range {}-{}", NODE_PORTS.start(), NODE_PORTS.end()),
                ))
            }
        };
        let target_port = match &p.target_port {
            None => TargetPort::Number(port),
            Some(IntOrString::Int(n)) => TargetPort::Number(
                u16::try_from(*n)
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| invalid(&field("targetPort"), format!("{n} is not 1 to 65535")))?,
            ),
            Some(IntOrString::String(s)) => match s.parse::<u16>() {
                Ok(n) if n != 0 => TargetPort::Number(n),
                _ => TargetPort::Name(PortName::new(s.as_str()).map_err(|e| invalid(&field("targetPort"), e.to_string()))?),
            },
        };
        ports.push(ServicePortSpec { name: p.name.clone(), protocol, port, target_port, node_port });
    }
    Ok(ServiceManifest {
        key,
        cluster_ip,
        selector: Selector(selector),
        ports,
        headless,
        node_ports,
        client_ip_affinity,
        external_local,
        internal_local,
        labels: meta.labels.clone(),
        annotations: meta.annotations.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "apiVersion: v1
kind: Service
metadata: {name: my-service}
spec:
  selector: {app: my-app}
  ports: [{protocol: TCP, port: 80, targetPort: 8080}]
";

    fn service_of(text: &str) -> Result<ServiceManifest, ManifestError> {
        let docs = parse(text)?;
        match docs.into_iter().next().map(|d| d.object) {
            Some(Object::Service(s)) => Ok(s),
            _ => Err(ManifestError::Empty),
        }
    }

    fn error_of(text: &str) -> String {
        service_of(text).map(|s| format!("parsed: {s:?}")).unwrap_or_else(|e| e.to_string())
    }

    #[test]
    fn node_local_endpoints_need_both_policies_of_a_node_port_service() {
        let with = |policies: &str, node_port: bool| {
            let typed = if node_port { "spec:\n  type: NodePort\n" } else { "spec:\n" };
            service_of(&EXAMPLE.replace("spec:\n", &format!("{typed}{policies}"))).unwrap().node_local()
        };
        assert_eq!(with("", false), Ok(false));
        assert_eq!(with("  internalTrafficPolicy: Local\n", false), Ok(true));
        assert_eq!(with("  internalTrafficPolicy: Local\n  externalTrafficPolicy: Local\n", true), Ok(true));
        assert_eq!(with("  externalTrafficPolicy: Cluster\n", true), Ok(false));
        assert_eq!(with("  internalTrafficPolicy: Local\n", true), Err("spec.internalTrafficPolicy"));
        assert_eq!(with("  externalTrafficPolicy: Local\n", true), Err("spec.externalTrafficPolicy"));
    }

    #[test]
    fn the_documented_example_applies_unchanged() {
        let s = service_of(EXAMPLE).unwrap();
        assert_eq!(s.key.to_string(), "default/my-service");
        assert_eq!(s.selector.to_string(), "app=my-app");
        assert_eq!(
            s.ports,
            vec![ServicePortSpec { name: None, protocol: Proto::Tcp, port: 80, target_port: TargetPort::Number(8080), node_port: None }]
        );
        assert_eq!(s.cluster_ip, None);
    }

    #[test]
    fn several_documents_json_and_lists_are_read_in_order() {
        let json = r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"b","namespace":"prod"},"spec":{"selector":{"app":"b"},"ports":[{"port":53,"protocol":"UDP"}]}}"#;
        let docs = parse(&format!("{EXAMPLE}---\n---\n{json}\n")).unwrap();
        let names: Vec<String> = docs.iter().map(|d| format!("{} {}", d.index, d.object.describe())).collect();
        assert_eq!(names, ["1 Service default/my-service", "3 Service prod/b"]);
        let list = format!("apiVersion: v1\nkind: List\nitems: [{json}]\n");
        assert_eq!(parse(&list).unwrap().len(), 1);
        assert!(matches!(parse("---\n"), Err(ManifestError::Empty)));
    }

    #[test]
    fn each_refusal_names_the_document_and_field() {
        let with = |extra: &str| format!("{EXAMPLE}  {extra}\n");
        let cases = [
            (with("type: LoadBalancer"), "document 1 (Service default/my-service): spec.type: type LoadBalancer is not built"),
            (EXAMPLE.replace("targetPort: 8080", "targetPort: 8080, nodePort: 30080"), "spec.ports[0].nodePort: only for type NodePort"),
            (
                with("type: NodePort").replace("targetPort: 8080", "targetPort: 8080, nodePort: 80"),
                "spec.ports[0].nodePort: 80 is not in the node port range 30000-32767",
            ),
            (with("externalTrafficPolicy: Local"), "spec.externalTrafficPolicy: Local is for type NodePort"),
            (with("clusterIP: None\n  type: NodePort"), "spec.clusterIP: None (headless) cannot be of type NodePort"),
            (with("clusterIP: None\n  sessionAffinity: ClientIP"), "spec.sessionAffinity: ClientIP needs a cluster IP"),
            (with("clusterIP: 10.96.0.300"), "spec.clusterIP: \"10.96.0.300\" is not an IP address"),
            (
                with("sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 86401}}"),
                "spec.sessionAffinityConfig.clientIP.timeoutSeconds: 86401 is not 1 to 86400",
            ),
            (
                with("sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}"),
                "spec.sessionAffinityConfig: only with sessionAffinity: ClientIP",
            ),
            (with("sessionAffinity: Cookie"), "spec.sessionAffinity: \"Cookie\" is not None or ClientIP"),
            (with("selectr: {app: x}"), "spec.selectr: no such field in a v1 Service"),
            (EXAMPLE.replace("8080", "http--x"), "spec.ports[0].targetPort: port name \"http--x\" is not valid"),
            (EXAMPLE.replace("port: 80,", "port: 0,"), "spec.ports[0].port: 0 is not 1 to 65535"),
            (EXAMPLE.replace("TCP", "SCTP"), "spec.ports[0].protocol: SCTP is not built"),
            (EXAMPLE.replace("my-service", "My"), "metadata.name: service name \"My\""),
            (EXAMPLE.replace("app: my-app", "app: -x"), "spec.selector: label value \"-x\""),
            (EXAMPLE.replace("port: 80,", "port: eighty,"), "spec.ports[0].port: invalid type: string \"eighty\""),
            (EXAMPLE.replace("kind: Service", "kind: Deployment"), "document 1: Deployment of apiVersion v1 is not something"),
        ];
        for (text, want) in cases {
            let got = error_of(&text);
            assert!(got.contains(want), "want {want:?} in {got:?}");
        }
        let two = format!("{EXAMPLE}---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p}}\nspec: {{}}\n");
        let kinds: Vec<String> = parse(&two).unwrap().iter().map(|d| d.object.key().to_string()).collect();
        assert_eq!(kinds, ["service/my-service", "networkpolicy.networking.k8s.io/p"]);
        let e = parse("a: [").unwrap_err();
        assert!(e.to_string() == "document 1 is not valid YAML or JSON" && std::error::Error::source(&e).is_some());
    }

    #[test]
    fn a_target_port_may_be_a_name_and_the_selector_may_be_left_out() {
        let named = service_of(&EXAMPLE.replace("targetPort: 8080", "targetPort: http")).unwrap();
        assert_eq!(named.ports[0].target_port, TargetPort::Name(PortName::new("http").unwrap()));
        // Without a selector the endpoints are given by EndpointSlices.
        let by_hand = service_of(&EXAMPLE.replace("  selector: {app: my-app}\n", "")).unwrap();
        assert!(by_hand.selector.0.is_empty() && by_hand.selector.to_string() == "<none>");
        let slice = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: s, labels: {kubernetes.io/service-name: my-service}}\naddressType: IPv4\nendpoints: [{addresses: [10.1.2.3]}]\nports: [{port: 80}]\n";
        let docs = parse(&format!("{EXAMPLE}---\n{slice}")).unwrap();
        assert_eq!(docs[1].object.key().to_string(), "endpointslice.discovery.k8s.io/s");
        assert!(error_of(&slice.replace("addressType: IPv4\n", "addressType: IPv4\nbogus: 1\n"))
            .contains("bogus: no such field in a discovery.k8s.io/v1 EndpointSlice"));
    }

    #[test]
    fn client_ip_affinity_defaults_to_three_hours() {
        let with = |extra: &str| service_of(&format!("{EXAMPLE}  {extra}\n")).unwrap().client_ip_affinity;
        assert_eq!(with("sessionAffinity: ClientIP"), Some(10800));
        assert_eq!(with("sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}"), Some(60));
        assert_eq!(with("sessionAffinity: None"), None);
    }

    #[test]
    fn several_ports_need_distinct_names() {
        let two = EXAMPLE.replace("ports: [{protocol: TCP, port: 80, targetPort: 8080}]", "ports: [{port: 80}, {port: 81}]");
        assert!(error_of(&two).contains("spec.ports[0].name: required when a service has several ports"));
        let same =
            EXAMPLE.replace("ports: [{protocol: TCP, port: 80, targetPort: 8080}]", "ports: [{name: a, port: 80}, {name: a, port: 81}]");
        assert!(error_of(&same).contains("spec.ports[1].name: \"a\" is used twice"));
        let ok = EXAMPLE.replace(
            "ports: [{protocol: TCP, port: 80, targetPort: 8080}]",
            "ports: [{name: a, port: 80}, {name: b, port: 80, protocol: UDP}]",
        );
        let s = service_of(&ok).unwrap();
        assert_eq!((&s.ports[0].target_port, s.ports[1].protocol), (&TargetPort::Number(80), Proto::Udp));
    }
}
