//! NetworkPolicies of the embedding API: described in code (or in YAML through
//! [`Minipod::apply_yaml`]), enforced by the node's firewall, deleted on drop.

use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy as K8sPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::*;
use crate::policy::{self, PolicyKey, PolicyRecord};
use crate::service::{Document, Object};

fn selector(labels: &[(&str, &str)]) -> LabelSelector {
    LabelSelector { match_labels: Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()), match_expressions: None }
}

/// One ingress or egress rule: the peers it lets through (everyone when none is
/// given) and the ports (every port when none is given).
#[derive(Default, Clone)]
pub struct PolicyRule {
    peers: Vec<NetworkPolicyPeer>,
    ports: Vec<NetworkPolicyPort>,
}

impl PolicyRule {
    pub fn new() -> Self {
        Self::default()
    }

    /// The pods of the policy's namespace carrying every one of `labels` (all of its
    /// pods with none).
    pub fn pods(mut self, labels: &[(&str, &str)]) -> Self {
        self.peers.push(NetworkPolicyPeer { pod_selector: Some(selector(labels)), ..Default::default() });
        self
    }

    /// Every pod of namespace `namespace`, or with `labels`, those carrying them.
    pub fn namespace_pods(mut self, namespace: &str, labels: &[(&str, &str)]) -> Self {
        self.peers.push(NetworkPolicyPeer {
            namespace_selector: Some(selector(&[(policy::NAMESPACE_NAME_LABEL, namespace)])),
            pod_selector: (!labels.is_empty()).then(|| selector(labels)),
            ..Default::default()
        });
        self
    }

    /// The addresses of `cidr` (such as `10.0.0.0/8`) without those of `except`.
    pub fn cidr(mut self, cidr: &str, except: &[&str]) -> Self {
        let except = (!except.is_empty()).then(|| except.iter().map(|e| e.to_string()).collect());
        self.peers.push(NetworkPolicyPeer { ip_block: Some(IPBlock { cidr: cidr.into(), except }), ..Default::default() });
        self
    }

    /// TCP port `port`.
    pub fn tcp(self, port: u16) -> Self {
        self.port("TCP", Some(port), None)
    }

    /// UDP port `port`.
    pub fn udp(self, port: u16) -> Self {
        self.port("UDP", Some(port), None)
    }

    /// TCP ports `first` to `last`.
    pub fn tcp_range(self, first: u16, last: u16) -> Self {
        self.port("TCP", Some(first), Some(last))
    }

    fn port(mut self, protocol: &str, port: Option<u16>, end: Option<u16>) -> Self {
        self.ports.push(NetworkPolicyPort {
            protocol: Some(protocol.into()),
            port: port.map(|p| IntOrString::Int(i32::from(p))),
            end_port: end.map(i32::from),
        });
        self
    }

    fn parts(self) -> (Option<Vec<NetworkPolicyPeer>>, Option<Vec<NetworkPolicyPort>>) {
        ((!self.peers.is_empty()).then_some(self.peers), (!self.ports.is_empty()).then_some(self.ports))
    }
}

/// A NetworkPolicy being described; [`NetworkPolicyBuilder::apply`] enforces it. It
/// isolates the pods it selects for ingress when it has ingress rules or
/// [`NetworkPolicyBuilder::isolate_ingress`] (and when it has no rules at all, as a
/// Kubernetes policy with no `policyTypes` does), for egress likewise.
pub struct NetworkPolicyBuilder {
    rt: Arc<Inner>,
    meta: ObjectMeta,
    pods: Vec<(String, String)>,
    ingress: Option<Vec<NetworkPolicyIngressRule>>,
    egress: Option<Vec<NetworkPolicyEgressRule>>,
}

impl NetworkPolicyBuilder {
    /// The namespace (default `default`): the policy selects pods of its own.
    pub fn namespace(mut self, namespace: &str) -> Self {
        self.meta.namespace = Some(namespace.into());
        self
    }

    /// Selects the pods carrying label `key=value` (every pair given must match; all
    /// pods of the namespace when none is given).
    pub fn select(mut self, key: &str, value: &str) -> Self {
        self.pods.push((key.into(), value.into()));
        self
    }

    /// Isolates the selected pods for ingress, letting in only what an ingress rule
    /// (of this or another policy) allows.
    pub fn isolate_ingress(mut self) -> Self {
        self.ingress.get_or_insert_with(Vec::new);
        self
    }

    /// Isolates the selected pods for egress.
    pub fn isolate_egress(mut self) -> Self {
        self.egress.get_or_insert_with(Vec::new);
        self
    }

    /// Lets connections in that `rule` describes.
    pub fn ingress(mut self, rule: PolicyRule) -> Self {
        let (from, ports) = rule.parts();
        self.ingress.get_or_insert_with(Vec::new).push(NetworkPolicyIngressRule { from, ports });
        self
    }

    /// Lets connections out that `rule` describes.
    pub fn egress(mut self, rule: PolicyRule) -> Self {
        let (to, ports) = rule.parts();
        self.egress.get_or_insert_with(Vec::new).push(NetworkPolicyEgressRule { to, ports });
        self
    }

    /// Creates the policy (or changes it to this description) and enforces it at once.
    pub async fn apply(self) -> Result<NetworkPolicy> {
        let labels: Vec<(&str, &str)> = self.pods.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let (isolate_in, isolate_out) = (self.ingress.is_some() || self.egress.is_none(), self.egress.is_some());
        let types = [("Ingress", isolate_in), ("Egress", isolate_out)].iter().filter(|(_, on)| *on).map(|(t, _)| t.to_string()).collect();
        let np = K8sPolicy {
            metadata: self.meta,
            spec: Some(NetworkPolicySpec {
                pod_selector: Some(selector(&labels)),
                policy_types: Some(types),
                ingress: self.ingress,
                egress: self.egress,
            }),
        };
        let manifest = policy::checked(1, np).map_err(crate::service::ServiceError::from)?;
        let (rt, key) = (self.rt.clone(), manifest.key.clone());
        let docs = vec![Document { index: 1, object: Object::NetworkPolicy(manifest) }];
        let record = blocking(move || {
            rt.pods.apply(&docs)?;
            rt.pods.network_policy(&key)
        })
        .await?;
        let cleanup = !self.rt.pods.keeps_pods();
        Ok(NetworkPolicy { rt: self.rt, record, cleanup })
    }
}

/// An enforced policy. Dropping it deletes it, unless the runtime keeps its pods (or
/// [`NetworkPolicy::keep`]).
pub struct NetworkPolicy {
    rt: Arc<Inner>,
    record: PolicyRecord,
    cleanup: bool,
}

impl Drop for NetworkPolicy {
    fn drop(&mut self) {
        if self.cleanup {
            if let Err(e) = self.rt.pods.delete_network_policies(std::slice::from_ref(&self.record.key)) {
                tracing::warn!(policy = %self.record.key, "deleting network policy on drop: {}", crate::process::chain(&e));
            }
        }
    }
}

impl NetworkPolicy {
    pub fn key(&self) -> &PolicyKey {
        &self.record.key
    }

    pub fn record(&self) -> &PolicyRecord {
        &self.record
    }

    /// Deletes the policy, reporting what went wrong.
    pub async fn remove(mut self) -> Result<()> {
        self.cleanup = false;
        let (rt, key) = (self.rt.clone(), self.record.key.clone());
        blocking(move || rt.pods.delete_network_policies(&[key]).map(drop)).await
    }

    /// Leaves the policy in place when the handle drops.
    pub fn keep(mut self) -> PolicyRecord {
        self.cleanup = false;
        self.record.clone()
    }
}

impl Minipod {
    /// Starts describing a NetworkPolicy named `name`.
    pub fn network_policy(&self, name: &str) -> NetworkPolicyBuilder {
        NetworkPolicyBuilder {
            rt: self.inner.clone(),
            meta: ObjectMeta { name: Some(name.into()), ..Default::default() },
            pods: Vec::new(),
            ingress: None,
            egress: None,
        }
    }
}
