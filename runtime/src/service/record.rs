//! What is recorded about a service under `<root>/services/<namespace>/<name>.json`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::Selector;
use crate::netstack::{Namespace, PortName, Proto, ServiceName};
use crate::pod::NodeRef;

/// A service's identity: its name within its namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ServiceKey {
    pub namespace: Namespace,
    pub name: ServiceName,
}

impl ServiceRecord {
    /// Its DNS identity on the node.
    pub fn dns(&self) -> crate::netstack::ServiceDns {
        crate::netstack::ServiceDns { namespace: self.key.namespace.clone(), name: self.key.name.clone() }
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A port of a service and the pods' port its connections go to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePortSpec {
    /// Needed when a service has several ports (for DNS SRV records and messages).
    pub name: Option<String>,
    pub protocol: Proto,
    pub port: u16,
    pub target_port: TargetPort,
    /// The port on the node's addresses, for a NodePort service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_port: Option<u16>,
}

/// Where a service port's connections go on each endpoint: a number, or the port a
/// pod declares by that name (which may be a different number on each pod).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetPort {
    Number(u16),
    Name(PortName),
}

impl fmt::Display for TargetPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetPort::Number(n) => write!(f, "{n}"),
            TargetPort::Name(n) => write!(f, "{n}"),
        }
    }
}

/// A service as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRecord {
    #[serde(flatten)]
    pub key: ServiceKey,
    /// None for a headless service (`clusterIP: None`).
    pub cluster_ip: Option<Ipv4Addr>,
    pub selector: Selector,
    pub ports: Vec<ServicePortSpec>,
    /// `type: NodePort` (each port has its `node_port`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub node_ports: bool,
    /// `sessionAffinity: ClientIP`, with its timeout in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ip_affinity: Option<u32>,
    /// Only the pods of its own node are its endpoints (`internalTrafficPolicy` and,
    /// with node ports, `externalTrafficPolicy` Local): what a node of a cluster
    /// serves at its cluster IP and node ports.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub node_local: bool,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// The node whose firewall serves it, and whose pods are its endpoints.
    pub node: NodeRef,
    pub created: crate::time::Timestamp,
}
