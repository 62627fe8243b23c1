//! From policies and pods to what the firewall applies: every selector resolved to
//! the addresses of the pods it picks now.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::{Peer, PolicyRecord, RuleSpec};
use crate::netstack::{AddrRange, Namespace, NodePolicies, PolicyPort, PolicyRule, PolicyRules};
use crate::pod::{NodeRef, PodRecord, PodStatus};

/// The label every namespace carries, as Kubernetes gives it (minipod's namespaces
/// have no others): what a `namespaceSelector` is matched against.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

fn namespace_labels(ns: &Namespace) -> BTreeMap<String, String> {
    [(NAMESPACE_NAME_LABEL.to_string(), ns.to_string())].into()
}

/// Whether `pod` has addresses on `node` that policies see: ready or stopping (a
/// terminating pod stays isolated until its network goes), not of the node's network.
fn counts(pod: &PodRecord, node: &NodeRef) -> bool {
    matches!(pod.status, PodStatus::Ready | PodStatus::Stopping) && !pod.host_network && &pod.node == node && !pod.networks.is_empty()
}

impl PolicyRecord {
    /// Whether the policy isolates `pod` now (in the directions it names).
    pub fn selects(&self, pod: &PodRecord) -> bool {
        counts(pod, &self.node) && pod.namespace == self.key.namespace && self.pod_selector.matches(&pod.labels)
    }
}

/// Whether `pod` is one a policy of `namespace` with `peer` means.
fn is_peer(peer: &Peer, namespace: &Namespace, pod: &PodRecord) -> bool {
    let Peer::Pods { pods, namespaces } = peer else { return false };
    let in_namespace = match namespaces {
        None => &pod.namespace == namespace,
        Some(sel) => sel.matches(&namespace_labels(&pod.namespace)),
    };
    in_namespace && pods.as_ref().is_none_or(|sel| sel.matches(&pod.labels))
}

fn rule(policy: &PolicyRecord, r: &RuleSpec, pods: &[&PodRecord]) -> PolicyRule {
    let peers = r.peers.as_ref().map(|peers| {
        let mut ranges = Vec::new();
        for peer in peers {
            match peer {
                Peer::IpBlock { cidr, except } => {
                    let holes: Vec<AddrRange> = except.iter().map(|e| AddrRange::of(*e)).collect();
                    ranges.extend(AddrRange::of(*cidr).without(&holes));
                }
                Peer::Pods { .. } => {
                    let of = pods.iter().filter(|p| is_peer(peer, &policy.key.namespace, p));
                    ranges.extend(of.flat_map(|p| p.networks.iter().map(|n| AddrRange::one(n.ip))));
                }
            }
        }
        AddrRange::merged(ranges)
    });
    let ports =
        r.ports.iter().map(|p| PolicyPort { proto: p.protocol, ports: p.port.map(|first| (first, p.end_port.unwrap_or(first))) }).collect();
    PolicyRule { peers, ports }
}

/// What the policies of `node` among `policies` do now, with `pods` as they are.
pub(crate) fn node_policies(node: &NodeRef, policies: &[PolicyRecord], pods: &[PodRecord]) -> NodePolicies {
    let pods: Vec<&PodRecord> = pods.iter().filter(|p| counts(p, node)).collect();
    let mut out = NodePolicies::default();
    for policy in policies.iter().filter(|p| &p.node == node) {
        let mut selected: Vec<IpAddr> = pods
            .iter()
            .filter(|p| policy.selects(p))
            .flat_map(|p| p.networks.iter().flat_map(|n| std::iter::once(IpAddr::V4(n.ip)).chain(n.ip6.map(IpAddr::V6))))
            .collect();
        selected.sort();
        let rules = |given: &Option<Vec<RuleSpec>>| given.as_ref().map(|rs| rs.iter().map(|r| rule(policy, r, &pods)).collect());
        out.0.insert(policy.key.to_string(), PolicyRules { selected, ingress: rules(&policy.ingress), egress: rules(&policy.egress) });
    }
    out
}
