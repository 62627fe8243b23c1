//! Kubernetes NetworkPolicy on a minipod node: which pods may open connections to
//! which, applied by the node's firewall.
//!
//! Policies come from the same YAML or JSON as Services ([`crate::service::parse`],
//! through k8s-openapi's typed `NetworkPolicy`), are recorded under
//! `<root>/policies/<namespace>/<name>.json` and apply on the node of the runtime that
//! applied them, to its pods on every network. On a node of a cluster
//! ([`crate::pod::PodsOptions::peer_roots`]) the peers its selectors pick are the pods
//! of every node, which reach its pods over the overlay by their own addresses; a pod's
//! change on one node re-programs the policies of the others (`Cluster::apply_yaml`
//! applies a policy on every node, so that it isolates the pods it selects wherever
//! they run). The semantics are Kubernetes': a pod
//! that no policy selects is open; one that a policy with `Ingress` (or `Egress`) in
//! its `policyTypes` selects is isolated in that direction, and only connections that
//! some rule of some policy selecting it allows are let through (rules add up); replies
//! to allowed connections pass; `policyTypes` defaults to Ingress, plus Egress when
//! the policy has egress rules. Peers are `podSelector` (pods of the policy's
//! namespace), `namespaceSelector` (every pod of the namespaces it selects, matched
//! against the label `kubernetes.io/metadata.name`, the only label minipod's
//! namespaces carry), both together (the pods it selects in those namespaces), and
//! `ipBlock` with `except`; ports by number, with `protocol` and `endPort`, or by name:
//! the number each destination pod declares for it (the selected pod's on ingress, the
//! peer's on egress), so a rule by name opens nothing on a pod that declares no such
//! port, and on each pod only its own number.
//!
//! As in Kubernetes: the pod's node may always reach it; traffic to a Service's
//! virtual IP is judged by the endpoint it is sent to (the firewall DNATs before the
//! policy looks); a pod's DNS queries to the node's resolver are egress like any other
//! (a default-deny egress policy blocks them until a rule allows UDP and TCP port 53).
//! A pod's connections to itself always pass.
//!
//! Selectors are resolved to the addresses of the pods they pick whenever a pod
//! becomes ready, begins to stop, stops or goes, and whenever a policy is applied or
//! deleted, by whichever process does it; what changed is programmed in one
//! transaction. A terminating pod stays isolated until its network is gone.
//!
//! Refused by name, never accepted and ignored: `SCTP`, IPv6 `ipBlock`s. A pod isolated in a direction gets no new IPv6
//! connections in that direction.

mod apply;
mod manifest;
mod record;
mod rules;

pub use manifest::{checked, PolicyManifest};
pub use record::{Peer, PolicyKey, PolicyRecord, PortSpec, RuleSpec};
pub use rules::NAMESPACE_NAME_LABEL;

/// A policy could not be applied, found or deleted: nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("no network policy {0}")]
    NoSuchPolicy(PolicyKey),
    #[error("document {doc}: NetworkPolicy {key} is in the file twice")]
    Twice { doc: usize, key: PolicyKey },
}
