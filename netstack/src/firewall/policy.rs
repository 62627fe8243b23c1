//! Kubernetes NetworkPolicy on the node's firewall: which members may open connections
//! to and from which addresses, with every selector already resolved to addresses.
//!
//! Three base chains run before the `forward` chain (and, for a member's connections
//! to the node itself, such as DNS, at `input`): replies (`established,related`) pass,
//! and a new connection to an address in `policy_ingress4`, or from one in
//! `policy_egress4`, goes to that member's chain (`npi_`/`npe_` and the address in hex),
//! which jumps to the chain of each policy that selects it and drops what none accepts.
//! A policy's chain holds a rule per port of each of its rules, matching the peer
//! addresses in an anonymous interval set (pods are single addresses, `ipBlock`s
//! ranges): a named set would make libnftables fetch every set's elements before each
//! change, a cost that grows with the policies on the node. Egress and ingress are separate base chains, so that a connection between
//! two isolated members needs both; an accept there only ends the policy check, and
//! the `forward` chain's network isolation still applies. Traffic from the node to a
//! member is never checked (it is not forwarded), as Kubernetes lets a pod's node reach
//! it; a member's traffic to itself (a hairpin through a Service) always passes.
//!
//! IPv6 is not built: a member isolated in a direction gets no new IPv6 connections in
//! that direction (its IPv6 addresses map to `drop`), rather than open ones.
//!
//! What is programmed is recorded as one file, `firewall/policies.json`; a change
//! touches only the chains and map elements of the policies and members whose rules
//! changed, in one transaction.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{Firewall, FirewallError, Proto};

/// An inclusive range of IPv4 addresses (one address when both ends are equal).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AddrRange {
    pub first: Ipv4Addr,
    pub last: Ipv4Addr,
}

impl AddrRange {
    pub fn one(ip: Ipv4Addr) -> Self {
        Self { first: ip, last: ip }
    }

    /// The addresses of `net`.
    pub fn of(net: ipnetwork::Ipv4Network) -> Self {
        Self { first: net.network(), last: net.broadcast() }
    }

    /// `ranges` merged where they overlap or touch, in order: an interval set refuses
    /// overlapping elements.
    pub fn merged(mut ranges: Vec<AddrRange>) -> Vec<AddrRange> {
        ranges.sort();
        let mut out: Vec<AddrRange> = Vec::with_capacity(ranges.len());
        for r in ranges {
            match out.last_mut() {
                Some(prev) if u32::from(r.first) <= u32::from(prev.last).saturating_add(1) => prev.last = prev.last.max(r.last),
                _ => out.push(r),
            }
        }
        out
    }

    /// `self` without the addresses of `holes`.
    pub fn without(self, holes: &[AddrRange]) -> Vec<AddrRange> {
        let mut out = Vec::new();
        let mut from = u64::from(u32::from(self.first));
        let end = u64::from(u32::from(self.last));
        for h in AddrRange::merged(holes.to_vec()) {
            let (a, b) = (u64::from(u32::from(h.first)), u64::from(u32::from(h.last)));
            if b < from || a > end {
                continue;
            }
            if a > from {
                out.push(AddrRange { first: Ipv4Addr::from((from) as u32), last: Ipv4Addr::from((a - 1) as u32) });
            }
            from = b + 1;
        }
        if from <= end {
            out.push(AddrRange { first: Ipv4Addr::from(from as u32), last: self.last });
        }
        out
    }
}

impl std::fmt::Display for AddrRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// Which connections a rule lets through, by protocol and destination port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyPort {
    pub proto: Proto,
    /// First and last port; every port of the protocol when unset.
    pub ports: Option<(u16, u16)>,
}

/// One rule of a policy in one direction: connections with these peers, to these ports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRule {
    /// The peers' addresses; every address when unset (a rule with no `from`/`to`).
    pub peers: Option<Vec<AddrRange>>,
    /// Every port and protocol when empty.
    pub ports: Vec<PolicyPort>,
    /// Only for these of the policy's members (every one when unset): an ingress port
    /// given by name is a different number on each member that declares it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub members: Option<Vec<AddrRange>>,
}

/// `ranges` as the elements of an anonymous set after `what` (`ip saddr`), with a space
/// after; None when there are none (the rule then lets nothing through).
fn set_match(what: &str, ranges: &Option<Vec<AddrRange>>) -> Option<String> {
    match ranges {
        None => Some(String::new()),
        Some(r) if r.is_empty() => None,
        Some(r) => {
            let elements: Vec<String> = r.iter().map(ToString::to_string).collect();
            Some(format!("{what} {{ {} }} ", elements.join(", ")))
        }
    }
}

/// One NetworkPolicy as the firewall applies it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRules {
    /// The members it selects (all their addresses).
    pub selected: Vec<IpAddr>,
    /// Set: the selected members are isolated for ingress, and these rules let
    /// connections in (none: nothing may).
    pub ingress: Option<Vec<PolicyRule>>,
    /// The same for egress.
    pub egress: Option<Vec<PolicyRule>>,
}

/// Every policy of a node, by owner (`NAMESPACE/NAME`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodePolicies(pub BTreeMap<String, PolicyRules>);

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    fn rules(self, p: &PolicyRules) -> Option<&Vec<PolicyRule>> {
        match self {
            Direction::Ingress => p.ingress.as_ref(),
            Direction::Egress => p.egress.as_ref(),
        }
    }

    /// (chain suffix, member chain prefix, IPv4 map, IPv6 map, the peer's address).
    fn names(self) -> (&'static str, &'static str, &'static str, &'static str, &'static str) {
        match self {
            Direction::Ingress => ("in", "npi", "policy_ingress4", "policy_ingress6", "ip saddr"),
            Direction::Egress => ("out", "npe", "policy_egress4", "policy_egress6", "ip daddr"),
        }
    }
}

/// The stable name part of a policy's chains and sets.
fn policy_id(owner: &str) -> String {
    format!("np_{:016x}", crate::names::stable_hash([owner]))
}

/// For each member address, the ids of the policies isolating it in `dir`.
fn members(all: &NodePolicies, dir: Direction) -> BTreeMap<IpAddr, Vec<String>> {
    let mut out: BTreeMap<IpAddr, Vec<String>> = BTreeMap::new();
    for (owner, p) in &all.0 {
        if dir.rules(p).is_some() {
            for ip in &p.selected {
                out.entry(*ip).or_default().push(policy_id(owner));
            }
        }
    }
    out
}

/// The transaction that takes the node from `old` to `new`. Like the services', it
/// deletes nothing it has not `add`ed first, so that a rebuilt table cannot fail it.
pub(super) fn script(old: &NodePolicies, new: &NodePolicies) -> String {
    let t = "inet minipod";
    let gone = |line: &str| format!("add {line}\ndelete {line}\n");
    let mut s = String::new();
    let mut later = String::new();
    for dir in [Direction::Ingress, Direction::Egress] {
        let (suffix, _, _, _, peer) = dir.names();
        let member_addr = if dir == Direction::Ingress { "ip daddr" } else { "ip saddr" };
        // Policies whose rules in this direction changed: their chain and sets anew.
        for (owner, p) in &new.0 {
            let id = policy_id(owner);
            let (chain, was) = (format!("{id}_{suffix}"), old.0.get(owner).and_then(|o| dir.rules(o)));
            let Some(rules) = dir.rules(p) else { continue };
            if was == Some(rules) {
                continue;
            }
            s.push_str(&format!("add chain {t} {chain}\nflush chain {t} {chain}\n"));
            for rule in rules {
                // No peer or no member: the rule lets nothing through.
                let (Some(peers), Some(members)) = (set_match(peer, &rule.peers), set_match(member_addr, &rule.members)) else { continue };
                let matches = format!("{members}{peers}");
                if rule.ports.is_empty() {
                    s.push_str(&format!("add rule {t} {chain} {matches}accept\n"));
                }
                for port in &rule.ports {
                    let dport = match port.ports {
                        Some((a, b)) if a == b => format!(" th dport {a}"),
                        Some((a, b)) => format!(" th dport {a}-{b}"),
                        None => String::new(),
                    };
                    s.push_str(&format!("add rule {t} {chain} {matches}meta l4proto {}{dport} accept\n", port.proto));
                }
            }
        }
        // Members whose list of isolating policies changed.
        let (before, after) = (members(old, dir), members(new, dir));
        let (_, prefix, map4, map6, _) = dir.names();
        let addrs: BTreeSet<&IpAddr> = before.keys().chain(after.keys()).collect();
        for ip in addrs {
            let (had, has) = (before.get(ip), after.get(ip));
            if had == has {
                continue;
            }
            match (ip, has) {
                (IpAddr::V4(v4), Some(ids)) => {
                    let member = format!("{prefix}_{:08x}", u32::from(*v4));
                    s.push_str(&format!("add chain {t} {member}\nflush chain {t} {member}\n"));
                    let own = if dir == Direction::Ingress { "ip saddr" } else { "ip daddr" };
                    s.push_str(&format!("add rule {t} {member} {own} {v4} accept\n"));
                    for id in ids {
                        s.push_str(&format!("add rule {t} {member} jump {id}_{suffix}\n"));
                    }
                    s.push_str(&format!("add rule {t} {member} drop\n"));
                    s.push_str(&format!("add element {t} {map4} {{ {v4} : goto {member} }}\n"));
                }
                (IpAddr::V4(v4), None) => {
                    let member = format!("{prefix}_{:08x}", u32::from(*v4));
                    s.push_str(&gone(&format!("element {t} {map4} {{ {v4} : goto {member} }}")));
                    s.push_str(&format!("add chain {t} {member}\nflush chain {t} {member}\ndelete chain {t} {member}\n"));
                }
                (IpAddr::V6(v6), Some(_)) => s.push_str(&format!("add element {t} {map6} {{ {v6} : drop }}\n")),
                (IpAddr::V6(v6), None) => s.push_str(&gone(&format!("element {t} {map6} {{ {v6} : drop }}"))),
            }
        }
        // Policies that no longer isolate in this direction: no member jumps to their
        // chain any more.
        for owner in old.0.iter().filter(|(_, o)| dir.rules(o).is_some()).map(|(owner, _)| owner) {
            if new.0.get(owner).and_then(|p| dir.rules(p)).is_none() {
                let chain = format!("{}_{suffix}", policy_id(owner));
                later.push_str(&format!("add chain {t} {chain}\nflush chain {t} {chain}\ndelete chain {t} {chain}\n"));
            }
        }
    }
    s + &later
}

impl Firewall {
    fn policies_file(&self) -> PathBuf {
        self.state_dir.join("policies.json")
    }

    /// The policies as last programmed (none when never).
    pub(crate) fn recorded_policies(&self) -> NodePolicies {
        let path = self.policies_file();
        match crate::record::read_json(&path) {
            Ok(p) => p,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => NodePolicies::default(),
            Err(e) => {
                // Programmed as if new: adding is idempotent; chains of policies it no
                // longer names stay until the table is rebuilt.
                tracing::warn!("{}: {e}; programming the policies anew", path.display());
                NodePolicies::default()
            }
        }
    }

    /// Makes the node's policies `new`, changing only what differs from what was
    /// programmed; returns whether anything did. Call [`Firewall::ensure`] first.
    pub fn program_policies(&self, new: &NodePolicies) -> Result<bool, FirewallError> {
        let _lock = self.lock()?;
        let old = self.recorded_policies();
        if &old == new {
            return Ok(false);
        }
        self.nft(&script(&old, new), "programming network policies")?;
        let path = self.policies_file();
        crate::record::write_json(&path, new, crate::record::Durability::Atomic).map_err(|source| FirewallError::State { path, source })?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(a: &str, b: &str) -> AddrRange {
        AddrRange { first: a.parse().unwrap(), last: b.parse().unwrap() }
    }

    #[test]
    fn ranges_merge_and_holes_are_cut_out() {
        let m = AddrRange::merged(vec![range("10.0.0.5", "10.0.0.9"), range("10.0.0.1", "10.0.0.4"), range("10.0.1.0", "10.0.1.0")]);
        assert_eq!(m, vec![range("10.0.0.1", "10.0.0.9"), range("10.0.1.0", "10.0.1.0")]);
        let all = AddrRange::of("10.0.0.0/8".parse().unwrap());
        let cut = all.without(&[AddrRange::of("10.1.0.0/16".parse().unwrap()), AddrRange::one("10.0.0.0".parse().unwrap())]);
        assert_eq!(cut, vec![range("10.0.0.1", "10.0.255.255"), range("10.2.0.0", "10.255.255.255")]);
        assert_eq!(AddrRange::of("0.0.0.0/0".parse().unwrap()).without(&[range("0.0.0.0", "255.255.255.255")]), vec![]);
        assert_eq!(range("10.0.0.1", "10.0.0.1").to_string(), "10.0.0.1");
    }

    fn backend(from: Vec<AddrRange>) -> NodePolicies {
        let rules = PolicyRules {
            selected: vec!["10.88.0.5".parse().unwrap(), "fd00::5".parse().unwrap()],
            ingress: Some(vec![PolicyRule {
                peers: Some(from),
                ports: vec![PolicyPort { proto: Proto::Tcp, ports: Some((80, 90)) }],
                members: None,
            }]),
            egress: None,
        };
        NodePolicies([("default/b".to_string(), rules)].into())
    }

    #[test]
    fn a_policy_is_a_chain_and_its_members_jump_to_it() {
        let s = script(&NodePolicies::default(), &backend(vec![AddrRange::one("10.88.0.7".parse().unwrap())]));
        let id = policy_id("default/b");
        assert!(
            s.contains(&format!("add rule inet minipod {id}_in ip saddr {{ 10.88.0.7 }} meta l4proto tcp th dport 80-90 accept\n")),
            "{s}"
        );
        let member = "npi_0a580005";
        let jump = format!("add rule inet minipod {member} jump {id}_in\nadd rule inet minipod {member} drop\n");
        assert!(s.contains(&jump), "{s}");
        assert!(s.contains(&format!("add element inet minipod policy_ingress4 {{ 10.88.0.5 : goto {member} }}")), "{s}");
        assert!(s.contains("add element inet minipod policy_ingress6 { fd00::5 : drop }"), "{s}");
        assert!(!s.contains("policy_egress"), "no egress isolation: {s}");
        // The member's chain is made after the policy's chain it jumps to.
        assert!(s.find(&format!("add chain inet minipod {id}_in\n")) < s.find(&format!("add chain inet minipod {member}\n")));
    }

    #[test]
    fn a_peer_change_touches_only_its_chain_and_removal_takes_everything() {
        let one = backend(vec![AddrRange::one("10.88.0.7".parse().unwrap())]);
        let two = backend(vec![range("10.88.0.7", "10.88.0.8")]);
        let s = script(&one, &two);
        assert!(!s.contains("npi_") && s.contains("10.88.0.7-10.88.0.8"), "{s}");
        let s = script(&two, &NodePolicies::default());
        let id = policy_id("default/b");
        assert!(s.contains("delete element inet minipod policy_ingress4 { 10.88.0.5 : goto npi_0a580005 }"), "{s}");
        assert!(s.contains("delete chain inet minipod npi_0a580005\n"), "{s}");
        assert!(s.ends_with(&format!("delete chain inet minipod {id}_in\n")), "{s}");
        assert!(s.find("delete chain inet minipod npi_") < s.find(&format!("delete chain inet minipod {id}_in\n")), "{s}");
        assert_eq!(script(&two, &two), "");
        // No peer at all (a selector that picks no pod): the rule lets nothing in.
        let s = script(&NodePolicies::default(), &backend(vec![]));
        assert!(!s.contains(&format!("add rule inet minipod {id}_in ")), "{s}");
    }

    #[test]
    fn a_rule_for_some_members_matches_their_addresses_too() {
        let mut p = backend(vec![AddrRange::one("10.88.0.7".parse().unwrap())]);
        let rules = p.0.get_mut("default/b").unwrap();
        let rule = &mut rules.ingress.as_mut().unwrap()[0];
        rule.members = Some(vec![AddrRange::one("10.88.0.5".parse().unwrap())]);
        let id = policy_id("default/b");
        let s = script(&NodePolicies::default(), &p);
        let want = format!(
            "add rule inet minipod {id}_in ip daddr {{ 10.88.0.5 }} ip saddr {{ 10.88.0.7 }} meta l4proto tcp th dport 80-90 accept\n"
        );
        assert!(s.contains(&want), "{s}");
        // For no member (a port name none declares): nothing.
        p.0.get_mut("default/b").unwrap().ingress.as_mut().unwrap()[0].members = Some(vec![]);
        let s = script(&NodePolicies::default(), &p);
        assert!(!s.contains(&format!("add rule inet minipod {id}_in ")), "{s}");
    }
}
