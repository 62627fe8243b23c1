//! The pods' half of `minipod doctor`: what each pod's resolver is told, read from the
//! resolv.conf its containers see (the network checks ask the network's DNS server
//! itself, from the pod's namespace).

use std::path::Path;

use super::store::pods_in;
use super::{PodRecord, PodStatus};
use crate::netstack::doctor::{fail, pass, warn, Finding};
use crate::netstack::Node;

/// The nameservers of resolv.conf text, in order.
fn nameservers(text: &str) -> Vec<&str> {
    text.lines().filter_map(|l| l.trim().strip_prefix("nameserver")).filter_map(|rest| rest.split_whitespace().next()).collect()
}

/// One finding per ready pod (of its own network) under the state root `root` on the
/// node `node` (whose namespace is pinned at `netns`, the current one if none):
/// whether its resolv.conf names the servers it should, its DNS config's (a CRI pod's
/// `dns_config`) or else its first network's DNS server. Pods of other nodes (private
/// ones) under the same root are not this node's to judge.
pub fn resolver_findings(root: &Path, netns: Option<&Path>, node: &Node) -> Vec<Finding> {
    let dir = root.join("pods");
    let Ok(entries) = std::fs::read_dir(&dir) else { return vec![] };
    let netns = netns.map(|p| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf()));
    let mut pods: Vec<PodRecord> = pods_in(&dir, entries);
    pods.retain(|p| {
        p.status == PodStatus::Ready && !p.host_network && !p.networks.is_empty() && p.node.netns.as_deref() == netns.as_deref()
    });
    pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    pods.iter().map(|pod| resolver_finding(&dir, node, pod)).collect()
}

fn resolver_finding(dir: &Path, node: &Node, pod: &PodRecord) -> Finding {
    let check = format!("pod {}: resolv.conf", pod.name);
    let path = dir.join(pod.id.as_str()).join("etc/resolv.conf");
    let restart = "restart the pod: its /etc files are written when its network comes up";
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => return fail(check, format!("cannot read {}: {e}", path.display()), restart),
    };
    let found = nameservers(&text);
    let (want, whose): (Vec<String>, String) = match pod.dns.as_ref().filter(|d| !d.servers.is_empty()) {
        Some(dns) => (dns.servers.clone(), "the servers its DNS config gives".into()),
        None => {
            let net = &pod.networks[0].network;
            match node.network(net) {
                Ok(Some(cfg)) if cfg.dns => (vec![cfg.gateway().to_string()], format!("network {net}'s DNS server")),
                Ok(Some(_)) => {
                    return match found.first() {
                        Some(first) => pass(check, format!("nameserver {first} (network {net} serves no DNS of its own)")),
                        None => warn(
                            check,
                            format!("{}: no nameserver line", path.display()),
                            format!("give network {net} DNS, or the pod a DNS config"),
                        ),
                    }
                }
                Ok(None) => return fail(check, format!("its network {net} is gone"), restart),
                Err(e) => return fail(check, format!("reading network {net}: {e}"), "check the node's state dir"),
            }
        }
    };
    if found.len() >= want.len() && found.iter().zip(&want).all(|(f, w)| f == w) {
        return pass(check, format!("nameserver {} ({whose})", want.join(", ")));
    }
    let seen = if found.is_empty() {
        "no nameserver line (lookups go to 127.0.0.1, inside the pod)".to_string()
    } else {
        format!("nameserver {}", found.join(", "))
    };
    fail(
        check,
        format!("{}: {seen}, not {} ({whose})", path.display(), want.join(", ")),
        format!("{restart}, or put back `nameserver {}`", want.join("` and `nameserver ")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nameservers_are_read_in_order_and_nothing_else_is() {
        let text =
            "# a comment\nsearch default.svc.cluster.local\nnameserver 10.88.0.1\n  nameserver   192.0.2.53 # two\noptions ndots:5\n";
        assert_eq!(nameservers(text), ["10.88.0.1", "192.0.2.53"]);
        assert!(nameservers("search a\n").is_empty());
    }
}
