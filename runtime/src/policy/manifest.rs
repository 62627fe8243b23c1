//! A `networking.k8s.io/v1` NetworkPolicy, checked into what minipod applies: every
//! field honoured or refused by name, with Kubernetes' defaults and validation.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{Peer, PolicyKey, PortSpec, RuleSpec};
use crate::netstack::{PolicyName, PortName, Proto};
use crate::service::{checked_meta, LabelSelector, ManifestError};

/// A NetworkPolicy as a manifest gives it, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyManifest {
    pub key: PolicyKey,
    pub pod_selector: LabelSelector,
    pub ingress: Option<Vec<RuleSpec>>,
    pub egress: Option<Vec<RuleSpec>>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

/// Checks a typed NetworkPolicy (document `doc` of its input).
pub fn checked(doc: usize, np: NetworkPolicy) -> Result<PolicyManifest, ManifestError> {
    let meta = checked_meta(doc, "NetworkPolicy", np.metadata, PolicyName::new)?;
    let key = PolicyKey { namespace: meta.namespace.clone(), name: meta.name.clone() };
    let invalid = |field: &str, reason: String| meta.invalid(field, reason);
    let not_built = |field: &str, what: &str| meta.not_built(field, what);
    let Some(spec) = np.spec else { return Err(invalid("spec", "required".into())) };
    let pod_selector = match spec.pod_selector {
        None => LabelSelector::default(),
        Some(s) => LabelSelector::checked(s, "spec.podSelector").map_err(|(f, r)| invalid(&f, r))?,
    };
    // Kubernetes' default: Ingress always, Egress when there are egress rules.
    let types = match spec.policy_types {
        Some(types) => {
            let mut seen = (false, false);
            for (i, t) in types.iter().enumerate() {
                match t.as_str() {
                    "Ingress" => seen.0 = true,
                    "Egress" => seen.1 = true,
                    t => return Err(invalid(&format!("spec.policyTypes[{i}]"), format!("{t:?} is not Ingress or Egress"))),
                }
            }
            seen
        }
        None => (true, spec.egress.as_ref().is_some_and(|e| !e.is_empty())),
    };
    let unused = |field: &str, kind: &str| {
        invalid(field, format!("rules given, but spec.policyTypes does not name {kind}: add {kind} to it, or remove the rules"))
    };
    if !types.0 && spec.ingress.as_ref().is_some_and(|r| !r.is_empty()) {
        return Err(unused("spec.ingress", "Ingress"));
    }
    if !types.1 && spec.egress.as_ref().is_some_and(|r| !r.is_empty()) {
        return Err(unused("spec.egress", "Egress"));
    }
    // `field` is the rule (`spec.ingress[0]`); its peers are `from` (ingress) or `to`.
    let rule = |field: String, peers_key: &str, peers: Option<Vec<NetworkPolicyPeer>>, ports: Option<Vec<NetworkPolicyPort>>| {
        let peers_field = format!("{field}.{peers_key}");
        let peers = match peers {
            None => None,
            Some(p) if p.is_empty() => None,
            Some(p) => Some(
                p.into_iter()
                    .enumerate()
                    .map(|(i, peer)| checked_peer(&format!("{peers_field}[{i}]"), peer))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        let ports = ports
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(|(i, p)| checked_port(&format!("{field}.ports[{i}]"), p))
            .collect::<Result<Vec<_>, _>>()?;
        Ok::<_, PolicyFieldError>(RuleSpec { peers, ports })
    };
    let field_err = |e: PolicyFieldError| match e {
        PolicyFieldError::Invalid(field, reason) => invalid(&field, reason),
        PolicyFieldError::NotBuilt(field, what) => not_built(&field, &what),
    };
    // Each direction's rules as (peers, ports), checked when the direction is a type.
    let direction = |on: bool, field: &str, peers_key: &str, given: Vec<GivenRule>| {
        on.then(|| {
            given.into_iter().enumerate().map(|(i, (peers, ports))| rule(format!("spec.{field}[{i}]"), peers_key, peers, ports)).collect()
        })
        .transpose()
        .map_err(field_err)
    };
    let ingress = direction(types.0, "ingress", "from", spec.ingress.unwrap_or_default().into_iter().map(|r| (r.from, r.ports)).collect())?;
    let egress = direction(types.1, "egress", "to", spec.egress.unwrap_or_default().into_iter().map(|r| (r.to, r.ports)).collect())?;
    Ok(PolicyManifest { key, pod_selector, ingress, egress, labels: meta.labels.clone(), annotations: meta.annotations.clone() })
}

/// A rule as k8s-openapi gives it, either direction: its peers and its ports.
type GivenRule = (Option<Vec<NetworkPolicyPeer>>, Option<Vec<NetworkPolicyPort>>);

/// A field of a rule that is wrong or not built: (field, reason or what).
enum PolicyFieldError {
    Invalid(String, String),
    NotBuilt(String, String),
}

fn checked_peer(field: &str, peer: NetworkPolicyPeer) -> Result<Peer, PolicyFieldError> {
    let invalid = |f: &str, r: String| PolicyFieldError::Invalid(format!("{field}{f}"), r);
    let selector = |s, f: &str| LabelSelector::checked(s, &format!("{field}.{f}")).map_err(|(f, r)| PolicyFieldError::Invalid(f, r));
    match (peer.ip_block, peer.pod_selector, peer.namespace_selector) {
        (Some(block), None, None) => {
            let cidr = parse_cidr(&block.cidr).map_err(|r| match r {
                CidrError::V6 => PolicyFieldError::NotBuilt(format!("{field}.ipBlock.cidr"), "an IPv6 ipBlock".into()),
                CidrError::Bad(r) => invalid(".ipBlock.cidr", r),
            })?;
            let mut except = Vec::new();
            for (i, e) in block.except.unwrap_or_default().iter().enumerate() {
                let f = format!(".ipBlock.except[{i}]");
                let net = parse_cidr(e).map_err(|r| match r {
                    CidrError::V6 => invalid(&f, format!("{e:?} is IPv6, and the cidr is IPv4")),
                    CidrError::Bad(r) => invalid(&f, r),
                })?;
                // Kubernetes' rule: strictly inside the block.
                if !(cidr.contains(net.network()) && net.prefix() > cidr.prefix()) {
                    return Err(invalid(&f, format!("{net} is not strictly inside the cidr {cidr}")));
                }
                except.push(net);
            }
            Ok(Peer::IpBlock { cidr, except })
        }
        (Some(_), _, _) => Err(invalid("", "ipBlock cannot be given with podSelector or namespaceSelector: make them two peers".into())),
        (None, None, None) => Err(invalid("", "a peer needs podSelector, namespaceSelector or ipBlock".into())),
        (None, pods, namespaces) => Ok(Peer::Pods {
            pods: pods.map(|s| selector(s, "podSelector")).transpose()?,
            namespaces: namespaces.map(|s| selector(s, "namespaceSelector")).transpose()?,
        }),
    }
}

enum CidrError {
    V6,
    Bad(String),
}

/// A CIDR as Kubernetes takes it: an address with its prefix length, the address the
/// network's own (`10.0.0.1/8` is refused, as the API server's validation does).
fn parse_cidr(text: &str) -> Result<ipnetwork::Ipv4Network, CidrError> {
    let Some((addr, len)) = text.split_once('/') else {
        return Err(CidrError::Bad(format!("{text:?} is not a CIDR (ADDRESS/LENGTH, such as 10.0.0.0/8)")));
    };
    if addr.parse::<std::net::Ipv6Addr>().is_ok() {
        return Err(CidrError::V6);
    }
    let net: ipnetwork::Ipv4Network = format!("{addr}/{len}")
        .parse()
        .map_err(|_| CidrError::Bad(format!("{text:?} is not a CIDR (ADDRESS/LENGTH, such as 10.0.0.0/8)")))?;
    if net.network() != net.ip() {
        return Err(CidrError::Bad(format!("{text:?} has host bits set: the network is {}/{}", net.network(), net.prefix())));
    }
    Ok(net)
}

fn checked_port(field: &str, p: NetworkPolicyPort) -> Result<PortSpec, PolicyFieldError> {
    let invalid = |f: &str, r: String| PolicyFieldError::Invalid(format!("{field}.{f}"), r);
    let protocol = match p.protocol.as_deref() {
        None | Some("TCP") => Proto::Tcp,
        Some("UDP") => Proto::Udp,
        Some("SCTP") => return Err(PolicyFieldError::NotBuilt(format!("{field}.protocol"), "SCTP".into())),
        Some(x) => return Err(invalid("protocol", format!("{x:?} is not TCP, UDP or SCTP"))),
    };
    let number = |n: i32, f: &str| u16::try_from(n).ok().filter(|n| *n != 0).ok_or_else(|| invalid(f, format!("{n} is not 1 to 65535")));
    let (port, name) = match p.port {
        None => (None, None),
        Some(IntOrString::Int(n)) => (Some(number(n, "port")?), None),
        Some(IntOrString::String(s)) => match s.parse::<i32>() {
            Ok(n) => (Some(number(n, "port")?), None),
            Err(_) => (None, Some(PortName::new(s.as_str()).map_err(|e| invalid("port", e.to_string()))?)),
        },
    };
    let end_port = match (p.end_port, port) {
        (None, _) => None,
        (Some(_), None) if name.is_some() => return Err(invalid("endPort", "needs port to be a number, not a name".into())),
        (Some(_), None) => return Err(invalid("endPort", "needs port (the first of the range)".into())),
        (Some(e), Some(first)) => {
            let e = number(e, "endPort")?;
            if e < first {
                return Err(invalid("endPort", format!("{e} is below port {first}")));
            }
            Some(e)
        }
    };
    Ok(PortSpec { protocol, port, end_port, name })
}

#[cfg(test)]
mod tests {
    use crate::service::{parse, Object};

    use super::*;

    const EXAMPLE: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-frontend-to-backend}
spec:
  podSelector: {matchLabels: {role: backend}}
  ingress: [{from: [{podSelector: {matchLabels: {role: frontend}}}]}]
";

    fn policy_of(text: &str) -> Result<PolicyManifest, String> {
        let docs = parse(text).map_err(|e| e.to_string())?;
        match docs.into_iter().next().map(|d| d.object) {
            Some(Object::NetworkPolicy(p)) => Ok(p),
            other => Err(format!("not a policy: {other:?}")),
        }
    }

    #[test]
    fn the_documented_example_applies_unchanged() {
        let p = policy_of(EXAMPLE).unwrap();
        assert_eq!(p.key.to_string(), "default/allow-frontend-to-backend");
        assert_eq!(p.pod_selector.to_string(), "role=backend");
        assert_eq!(p.egress, None, "no egress rules, no policyTypes: ingress only");
        let rules = p.ingress.unwrap();
        let Some(Peer::Pods { pods: Some(sel), namespaces: None }) = rules[0].peers.as_ref().and_then(|p| p.first()) else {
            panic!("{rules:?}")
        };
        assert_eq!((sel.to_string(), rules[0].ports.len()), ("role=frontend".to_string(), 0));
    }

    #[test]
    fn policy_types_default_as_in_kubernetes() {
        let deny_all = policy_of("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: d}\nspec: {podSelector: {}, policyTypes: [Ingress, Egress]}\n").unwrap();
        assert_eq!((deny_all.ingress, deny_all.egress), (Some(vec![]), Some(vec![])));
        let egress = policy_of(&EXAMPLE.replace("ingress: [{from:", "egress: [{ports: [{port: 53, protocol: UDP}], to:")).unwrap();
        assert_eq!(egress.ingress, Some(vec![]), "Ingress is always a type unless policyTypes says");
        assert_eq!(egress.egress.unwrap()[0].ports, vec![PortSpec { protocol: Proto::Udp, port: Some(53), end_port: None, name: None }]);
        let open = policy_of(&EXAMPLE.replace("[{from: [{podSelector: {matchLabels: {role: frontend}}}]}]", "[{}]")).unwrap();
        assert_eq!(open.ingress, Some(vec![RuleSpec { peers: None, ports: vec![] }]));
    }

    #[test]
    fn each_refusal_names_the_document_and_field() {
        let peer = |p: &str| EXAMPLE.replace("{podSelector: {matchLabels: {role: frontend}}}", p);
        let ports = |p: &str| EXAMPLE.replace("{from:", &format!("{{ports: [{p}], from:"));
        let cases = [
            (
                peer("{ipBlock: {cidr: 10.0.0.0/8, except: [192.168.0.0/16]}}"),
                "spec.ingress[0].from[0].ipBlock.except[0]: 192.168.0.0/16 is not strictly inside the cidr 10.0.0.0/8",
            ),
            (peer("{ipBlock: {cidr: 10.0.0.1/8}}"), "spec.ingress[0].from[0].ipBlock.cidr: \"10.0.0.1/8\" has host bits set"),
            (peer("{ipBlock: {cidr: 10.0.0.0}}"), "ipBlock.cidr: \"10.0.0.0\" is not a CIDR"),
            (peer("{ipBlock: {cidr: 'fd00::/8'}}"), "spec.ingress[0].from[0].ipBlock.cidr: an IPv6 ipBlock is not built"),
            (peer("{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}"), "from[0]: ipBlock cannot be given with podSelector"),
            (peer("{}"), "from[0]: a peer needs podSelector, namespaceSelector or ipBlock"),
            (peer("{podSelector: {matchLabels: {role: -x}}}"), "spec.ingress[0].from[0].podSelector.matchLabels: label value \"-x\""),
            (ports("{port: HTTP}"), "spec.ingress[0].ports[0].port: port name \"HTTP\" is not valid"),
            (ports("{port: http, endPort: 90}"), "spec.ingress[0].ports[0].endPort: needs port to be a number, not a name"),
            (ports("{port: 80, endPort: 79}"), "spec.ingress[0].ports[0].endPort: 79 is below port 80"),
            (ports("{endPort: 90}"), "spec.ingress[0].ports[0].endPort: needs port"),
            (ports("{port: 70000}"), "spec.ingress[0].ports[0].port: 70000 is not 1 to 65535"),
            (ports("{port: 80, protocol: SCTP}"), "spec.ingress[0].ports[0].protocol: SCTP is not built"),
            (
                EXAMPLE.replace("ingress:", "policyTypes: [Egress]\n  ingress:"),
                "spec.ingress: rules given, but spec.policyTypes does not name Ingress",
            ),
            (
                EXAMPLE.replace("ingress:", "policyTypes: [Sideways]\n  ingress:"),
                "spec.policyTypes[0]: \"Sideways\" is not Ingress or Egress",
            ),
            (
                EXAMPLE.replace("ingress:", "ingres:"),
                "document 1 (NetworkPolicy allow-frontend-to-backend): spec.ingres: no such field in a networking.k8s.io/v1 NetworkPolicy",
            ),
            (EXAMPLE.replace("allow-frontend-to-backend", "Allow"), "metadata.name: network policy name \"Allow\""),
            (
                EXAMPLE.replace("{role: backend}", "{role: backend}, matchExpressions: [{key: x, operator: In}]"),
                "spec.podSelector.matchExpressions[0].values: In needs at least one value",
            ),
        ];
        for (text, want) in cases {
            let got = policy_of(&text).map(|p| format!("parsed: {p:?}")).unwrap_or_else(|e| e);
            assert!(got.contains(want), "want {want:?} in {got:?}");
        }
    }
}
