//! From policies and pods to what the firewall applies: every selector resolved to
//! the addresses of the pods it picks now.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use super::{Peer, PolicyRecord, RuleSpec};
use crate::netstack::{AddrRange, Namespace, NodePolicies, PolicyPort, PolicyRule, PolicyRules};
use crate::pod::{NodeRef, PodRecord, PodStatus};

/// The label every namespace carries, as Kubernetes gives it (minipod's namespaces
/// have no others): what a `namespaceSelector` is matched against.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

fn namespace_labels(ns: &Namespace) -> BTreeMap<String, String> {
    [(NAMESPACE_NAME_LABEL.to_string(), ns.to_string())].into()
}

/// Whether `pod` has addresses that policies see: ready or stopping (a terminating
/// pod stays isolated until its network goes), not of its node's network.
fn addressed(pod: &PodRecord) -> bool {
    matches!(pod.status, PodStatus::Ready | PodStatus::Stopping) && !pod.host_network && !pod.networks.is_empty()
}

/// Whether `pod` has addresses on `node` that policies see.
fn counts(pod: &PodRecord, node: &NodeRef) -> bool {
    addressed(pod) && &pod.node == node
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

/// Whether `ip` is among `ranges` (every address when unset).
fn within(ranges: &Option<Vec<AddrRange>>, ip: std::net::Ipv4Addr) -> bool {
    ranges.as_ref().is_none_or(|r| r.iter().any(|r| r.first <= ip && ip <= r.last))
}

/// The firewall rules of rule `r` of `policy` in direction `ingress` or egress. Ports
/// by number are one rule; each port by name is a rule per number it stands for, as
/// each pod declares it: on ingress for the members that declare it (the destination
/// is the member), on egress to the peers that declare it.
fn rules(policy: &PolicyRecord, r: &RuleSpec, pods: &[&PodRecord], ingress: bool) -> Vec<PolicyRule> {
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
    let numbered: Vec<PolicyPort> = r
        .ports
        .iter()
        .filter(|p| p.name.is_none())
        .map(|p| PolicyPort { proto: p.protocol, ports: p.port.map(|first| (first, p.end_port.unwrap_or(first))) })
        .collect();
    let mut out = Vec::new();
    // A rule of named ports only is no rule for every port.
    if !numbered.is_empty() || r.ports.iter().all(|p| p.name.is_none()) {
        out.push(PolicyRule { peers: peers.clone(), ports: numbered, members: None });
    }
    for p in &r.ports {
        let Some(name) = &p.name else { continue };
        let declaring: Vec<&&PodRecord> = if ingress {
            pods.iter().filter(|pod| policy.selects(pod)).collect()
        } else {
            pods.iter().filter(|pod| pod.ip().is_some_and(|ip| within(&peers, ip))).collect()
        };
        let mut by_number: BTreeMap<u16, Vec<AddrRange>> = BTreeMap::new();
        for pod in declaring {
            if let Some(n) = pod.named_port(name, p.protocol) {
                by_number.entry(n).or_default().extend(pod.networks.iter().map(|n| AddrRange::one(n.ip)));
            }
        }
        for (n, addrs) in by_number {
            let ports = vec![PolicyPort { proto: p.protocol, ports: Some((n, n)) }];
            let addrs = AddrRange::merged(addrs);
            out.push(if ingress {
                PolicyRule { peers: peers.clone(), ports, members: Some(addrs) }
            } else {
                PolicyRule { peers: Some(addrs), ports, members: None }
            });
        }
    }
    out
}

/// What the policies of `node` among `policies` do now, with `pods` as they are: it
/// isolates its own pods, and its rules' peers are the pods that reach them, of its
/// cluster's nodes too (the state roots `cluster`).
pub(crate) fn node_policies(node: &NodeRef, policies: &[PolicyRecord], pods: &[PodRecord], cluster: &[PathBuf]) -> NodePolicies {
    let pods: Vec<&PodRecord> = pods.iter().filter(|p| addressed(p) && p.node.reaches(node, cluster)).collect();
    let mut out = NodePolicies::default();
    for policy in policies.iter().filter(|p| &p.node == node) {
        let mut selected: Vec<IpAddr> = pods
            .iter()
            .filter(|p| policy.selects(p))
            .flat_map(|p| p.networks.iter().flat_map(|n| std::iter::once(IpAddr::V4(n.ip)).chain(n.ip6.map(IpAddr::V6))))
            .collect();
        selected.sort();
        let of = |given: &Option<Vec<RuleSpec>>, ingress: bool| {
            given.as_ref().map(|rs| rs.iter().flat_map(|r| rules(policy, r, &pods, ingress)).collect())
        };
        out.0.insert(
            policy.key.to_string(),
            PolicyRules { selected, ingress: of(&policy.ingress, true), egress: of(&policy.egress, false) },
        );
    }
    out
}
