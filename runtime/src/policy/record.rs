//! What is recorded about a NetworkPolicy under `<root>/policies/<namespace>/<name>.json`.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::netstack::{Namespace, PolicyName, PortName, Proto};
use crate::pod::NodeRef;
use crate::service::LabelSelector;

/// A policy's identity: its name within its namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PolicyKey {
    pub namespace: Namespace,
    pub name: PolicyName,
}

impl fmt::Display for PolicyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Who a rule lets connections come from (ingress) or go to (egress).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Peer {
    /// Pods: those `pods` selects (every one when unset) in the namespaces that
    /// `namespaces` selects (the policy's own when unset).
    Pods { pods: Option<LabelSelector>, namespaces: Option<LabelSelector> },
    /// Addresses: `cidr` without `except`.
    IpBlock { cidr: ipnetwork::Ipv4Network, except: Vec<ipnetwork::Ipv4Network> },
}

/// The ports of a rule: a protocol, and a port or a range of them (every port of the
/// protocol when unset), or a port given by the name pods declare it by.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortSpec {
    pub protocol: Proto,
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_port: Option<u16>,
    /// The port the destination pod declares by this name (for ingress, the pod the
    /// policy selects; for egress, the peer): a number for each pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<PortName>,
}

/// One ingress or egress rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleSpec {
    /// None: every peer (a rule without `from`/`to`, or with an empty list).
    pub peers: Option<Vec<Peer>>,
    /// Empty: every port.
    pub ports: Vec<PortSpec>,
}

/// A NetworkPolicy as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRecord {
    #[serde(flatten)]
    pub key: PolicyKey,
    /// The pods of its namespace it isolates.
    pub pod_selector: LabelSelector,
    /// Set when it isolates the pods for ingress (`policyTypes` has Ingress): the
    /// rules that let connections in (none: nothing may).
    pub ingress: Option<Vec<RuleSpec>>,
    /// The same for egress.
    pub egress: Option<Vec<RuleSpec>>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// The node whose firewall applies it, to its pods.
    pub node: NodeRef,
    pub created: crate::time::Timestamp,
}
