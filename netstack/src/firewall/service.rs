//! Virtual IPs in front of sets of endpoints: Kubernetes Services on the node's firewall,
//! the way kube-proxy's nftables mode does it, smaller.
//!
//! A packet to `VIP . proto . port` is looked up in the `services4` verdict map (nat
//! prerouting for members, nat output for the node) and goes to that port's chain,
//! which picks an endpoint with `numgen random mod N` and goes to the endpoint's chain:
//! it DNATs, and marks the packet for SNAT to the member's gateway when the endpoint is
//! the sender itself (hairpin: the reply would otherwise never pass the node to be
//! un-DNATed). A port without endpoints is in `no_endpoints4`, whose packets from members are
//! rejected at once, before routing, rather than left to time out. Service traffic
//! is accepted between networks (a Service is reachable from every pod, as in
//! Kubernetes); other DNATed traffic from members is SNATed as before.
//!
//! Only a service's own elements and chains change when it does, in one transaction;
//! its last programmed form is recorded under `firewall/services/` so that an unchanged
//! service costs no `nft` run and a rebuilt table gets every service back.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

use super::{Firewall, FirewallError, Proto};

/// The packet mark that asks for SNAT of a hairpin connection (kube-proxy's bit).
pub const HAIRPIN_MARK: u32 = 0x4000;

/// One virtual IP as the firewall serves it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtualService {
    /// Who it is for, for messages (`NAMESPACE/NAME`).
    pub owner: String,
    pub ip: Ipv4Addr,
    pub ports: Vec<ServicePort>,
    /// The name the node's DNS server gives the IP under the cluster domain, if any.
    #[serde(default)]
    pub dns: Option<ServiceDns>,
    /// Kubernetes' `sessionAffinity: ClientIP`: a client's connections to a port keep
    /// going to the endpoint its first one went to, until it has been quiet this long.
    #[serde(default)]
    pub affinity: Option<std::time::Duration>,
}

/// A Service's DNS identity: `NAME.NAMESPACE.svc.DOMAIN`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceDns {
    pub namespace: crate::Namespace,
    pub name: crate::ServiceName,
}

/// A port of a virtual IP and where its connections go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePort {
    pub proto: Proto,
    pub port: u16,
    /// A named port gets a DNS SRV record.
    #[serde(default)]
    pub name: Option<String>,
    /// Chosen at random per connection; none rejects connections.
    pub endpoints: Vec<SocketAddrV4>,
    /// The same port on every IPv4 address of the node (Kubernetes' `nodePort`).
    #[serde(default)]
    pub node_port: Option<u16>,
}

impl Firewall {
    /// Where the programmed services are recorded (read by the DNS server too).
    pub(crate) fn services_dir(&self) -> PathBuf {
        self.state_dir.join("services")
    }

    fn service_file(&self, ip: Ipv4Addr) -> PathBuf {
        self.services_dir().join(format!("{ip}.json"))
    }

    fn service_record(&self, ip: Ipv4Addr) -> Result<Option<VirtualService>, FirewallError> {
        let path = self.service_file(ip);
        match crate::record::read_json(&path) {
            Ok(svc) => Ok(Some(svc)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            // Unreadable: programmed as if new (adding is idempotent); chains of ports
            // it no longer has may stay until the service goes.
            Err(source) => {
                tracing::warn!("{}: {source}; programming the service anew", path.display());
                Ok(None)
            }
        }
    }

    /// Every recorded service, for [`Firewall::ensure`] and the doctor.
    pub(crate) fn recorded_services(&self) -> Vec<VirtualService> {
        read_services(&self.services_dir())
    }

    /// Serves `svc`: its ports and endpoints replace what its IP had. Returns whether
    /// anything changed (an unchanged service runs no `nft`). Call
    /// [`Firewall::ensure`] first.
    pub fn program_service(&self, svc: &VirtualService) -> Result<bool, FirewallError> {
        let _lock = self.lock()?;
        let old = self.service_record(svc.ip)?;
        if old.as_ref() == Some(svc) {
            return Ok(false);
        }
        if let Some((proto, port, holder)) = self.node_port_holder(old.as_ref(), svc)? {
            return Err(FirewallError::NodePortPublished { proto, port, service: svc.owner.clone(), holder });
        }
        let path = self.service_file(svc.ip);
        let dir = self.state_dir.join("services");
        std::fs::create_dir_all(&dir).map_err(|source| FirewallError::State { path: dir, source })?;
        self.nft(&script(old.as_ref(), Some(svc)), &format!("programming service {} ({})", svc.owner, svc.ip))?;
        crate::record::write_json(&path, svc, crate::record::Durability::Atomic)
            .map_err(|source| FirewallError::State { path: path.clone(), source })?;
        if let Some(old) = &old {
            self.forget_flows(old, Some(svc));
        }
        Ok(true)
    }

    /// Stops serving the virtual IP `ip`; a service that is not there is fine.
    pub fn remove_service(&self, ip: Ipv4Addr) -> Result<(), FirewallError> {
        let _lock = self.lock()?;
        let Some(old) = self.service_record(ip)? else { return Ok(()) };
        self.nft(&script(Some(&old), None), &format!("removing service {} ({ip})", old.owner))?;
        self.forget_flows(&old, None);
        let path = self.service_file(ip);
        std::fs::remove_file(&path).map_err(|source| FirewallError::State { path, source })
    }

    /// Forgets the UDP flows to endpoints that `old` had and `new` has not: an
    /// established UDP flow would otherwise keep reaching a stopped endpoint (TCP ones
    /// end with their endpoint, as in Kubernetes).
    fn forget_flows(&self, old: &VirtualService, new: Option<&VirtualService>) {
        for p in old.ports.iter().filter(|p| p.proto == Proto::Udp) {
            let kept = new.and_then(|n| n.ports.iter().find(|q| q.proto == p.proto && q.port == p.port));
            for ep in p.endpoints.iter().filter(|ep| kept.is_none_or(|k| !k.endpoints.contains(ep))) {
                let _ = Command::new("nsenter")
                    .arg(format!("--net={}", self.netns.display()))
                    .args(["conntrack", "-D", "-p", "udp", "--orig-dst", &old.ip.to_string(), "--orig-port-dst"])
                    .arg(p.port.to_string())
                    .args(["--reply-src", &ep.ip().to_string()])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}

/// Headless services are recorded beside the others as `headless.NAMESPACE.NAME.json`
/// (a file name with no IP in it), so that one directory's mtime tells the DNS server
/// of every change.
pub(crate) const HEADLESS_PREFIX: &str = "headless.";

/// The service records in `dir` (none if it is missing); unreadable ones are skipped.
pub(crate) fn read_services(dir: &std::path::Path) -> Vec<VirtualService> {
    let Ok(entries) = std::fs::read_dir(dir) else { return vec![] };
    entries
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter(|e| !e.file_name().to_string_lossy().starts_with(HEADLESS_PREFIX))
        .filter_map(|e| crate::record::read_json(&e.path()).ok())
        .collect()
}

fn port_chain(ip: Ipv4Addr, p: &ServicePort) -> String {
    format!("svc_{:08x}_{}_{}", u32::from(ip), p.proto, p.port)
}

/// The set of clients pinned to endpoint `i` of a port (kube-proxy's affinity sets).
/// The timeout is part of the name: a set's timeout cannot change in place, so a new
/// one is a new set and the old one goes.
fn affinity_set(chain: &str, i: usize, timeout: std::time::Duration) -> String {
    format!("{chain}_{i}_a{}", timeout.as_secs())
}

/// The transaction that takes the firewall from `old` to `new` for one virtual IP
/// (both of one IP; `None` for none). It holds no `delete` of anything it has not
/// `add`ed first, so it cannot fail on an element or chain that a rebuilt table lost.
pub(super) fn script(old: Option<&VirtualService>, new: Option<&VirtualService>) -> String {
    let Some(ip) = new.or(old).map(|s| s.ip) else { return String::new() };
    let t = "inet minipod";
    let mut s = format!("add element {t} service_ips4 {{ {ip} }}\n");
    let gone = |line: &str| format!("add {line}\ndelete {line}\n");
    for p in new.map(|n| n.ports.as_slice()).unwrap_or_default() {
        let chain = port_chain(ip, p);
        let key = format!("{ip} . {} . {}", p.proto, p.port);
        s.push_str(&format!("add chain {t} {chain}\nflush chain {t} {chain}\n"));
        if let Some(np) = p.node_port {
            let nkey = format!("{} . {np}", p.proto);
            s.push_str(&format!("add element {t} nodeport_keys4 {{ {nkey} }}\n"));
            if p.endpoints.is_empty() {
                s.push_str(&gone(&format!("element {t} nodeports4 {{ {nkey} : goto {chain} }}")));
                s.push_str(&format!("add element {t} no_endpoint_nodeports4 {{ {nkey} }}\n"));
            } else {
                s.push_str(&format!("add element {t} nodeports4 {{ {nkey} : goto {chain} }}\n"));
                s.push_str(&gone(&format!("element {t} no_endpoint_nodeports4 {{ {nkey} }}")));
            }
        }
        if p.endpoints.is_empty() {
            s.push_str(&gone(&format!("element {t} services4 {{ {key} : goto {chain} }}")));
            s.push_str(&format!("add element {t} no_endpoints4 {{ {key} }}\n"));
        } else {
            let mut picks = Vec::new();
            let was = old.and_then(|o| o.ports.iter().find(|q| q.proto == p.proto && q.port == p.port).map(|q| (o, q)));
            for (i, ep) in p.endpoints.iter().enumerate() {
                let ep_chain = format!("{chain}_{i}");
                s.push_str(&format!(
                    "add chain {t} {ep_chain}\nflush chain {t} {ep_chain}\n\
                     add rule {t} {ep_chain} ip saddr {} meta mark set meta mark | {HAIRPIN_MARK:#x}\n",
                    ep.ip()
                ));
                if let Some(timeout) = new.and_then(|n| n.affinity) {
                    let set = affinity_set(&chain, i, timeout);
                    s.push_str(&format!(
                        "add set {t} {set} {{ type ipv4_addr; flags dynamic,timeout; timeout {}s; }}\n",
                        timeout.as_secs()
                    ));
                    // Its clients were pinned to the endpoint this index had.
                    if was.is_some_and(|(o, q)| o.affinity == Some(timeout) && q.endpoints.get(i).is_some_and(|e| e != ep)) {
                        s.push_str(&format!("flush set {t} {set}\n"));
                    }
                    s.push_str(&format!("add rule {t} {chain} ip saddr @{set} goto {ep_chain}\n"));
                    s.push_str(&format!("add rule {t} {ep_chain} update @{set} {{ ip saddr }}\n"));
                }
                s.push_str(&format!("add rule {t} {ep_chain} meta l4proto {} dnat ip to {ep}\n", p.proto));
                picks.push(format!("{i} : goto {ep_chain}"));
            }
            s.push_str(&format!("add rule {t} {chain} numgen random mod {} vmap {{ {} }}\n", p.endpoints.len(), picks.join(", ")));
            s.push_str(&format!("add element {t} services4 {{ {key} : goto {chain} }}\n"));
            s.push_str(&gone(&format!("element {t} no_endpoints4 {{ {key} }}")));
        }
    }
    // What `old` had and `new` has not: endpoint chains past the new count, and
    // whole ports; unreferenced by now, so they can go.
    for p in old.map(|o| o.ports.as_slice()).unwrap_or_default() {
        let chain = port_chain(ip, p);
        let kept = new.and_then(|n| n.ports.iter().find(|q| q.proto == p.proto && q.port == p.port));
        let from = kept.map_or(0, |k| k.endpoints.len());
        if let Some(np) = p.node_port.filter(|np| kept.is_none_or(|k| k.node_port != Some(*np))) {
            let nkey = format!("{} . {np}", p.proto);
            s.push_str(&gone(&format!("element {t} nodeports4 {{ {nkey} : goto {chain} }}")));
            s.push_str(&gone(&format!("element {t} no_endpoint_nodeports4 {{ {nkey} }}")));
            s.push_str(&gone(&format!("element {t} nodeport_keys4 {{ {nkey} }}")));
        }
        if kept.is_none() {
            let key = format!("{ip} . {} . {}", p.proto, p.port);
            s.push_str(&gone(&format!("element {t} services4 {{ {key} : goto {chain} }}")));
            s.push_str(&gone(&format!("element {t} no_endpoints4 {{ {key} }}")));
            // Its rule refers to the endpoint chains: emptied before they go.
            s.push_str(&format!("add chain {t} {chain}\nflush chain {t} {chain}\n"));
        }
        for i in from..p.endpoints.len() {
            s.push_str(&format!("add chain {t} {chain}_{i}\nflush chain {t} {chain}_{i}\ndelete chain {t} {chain}_{i}\n"));
        }
        if kept.is_none() {
            s.push_str(&format!("delete chain {t} {chain}\n"));
        }
        // Affinity sets that no rule refers to any more (every chain that did was
        // flushed above): of endpoints gone, or of another timeout.
        if let Some(timeout) = old.and_then(|o| o.affinity) {
            let still = if new.and_then(|n| n.affinity) == Some(timeout) { from } else { 0 };
            for i in still..p.endpoints.len() {
                let set = affinity_set(&chain, i, timeout);
                s.push_str(&format!(
                    "add set {t} {set} {{ type ipv4_addr; flags dynamic,timeout; timeout {}s; }}\ndelete set {t} {set}\n",
                    timeout.as_secs()
                ));
            }
        }
    }
    if new.is_none() {
        s.push_str(&format!("delete element {t} service_ips4 {{ {ip} }}\n"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(endpoints: &[&str]) -> VirtualService {
        VirtualService {
            owner: "default/web".into(),
            ip: "10.96.0.10".parse().unwrap(),
            ports: vec![ServicePort {
                proto: Proto::Tcp,
                port: 80,
                name: None,
                endpoints: endpoints.iter().map(|e| e.parse().unwrap()).collect(),
                node_port: None,
            }],
            dns: None,
            affinity: None,
        }
    }

    #[test]
    fn a_node_port_goes_to_the_same_port_chain_and_is_withdrawn_whole() {
        let mut np = svc(&["10.88.0.2:8080"]);
        np.ports[0].node_port = Some(30080);
        let s = script(None, Some(&np));
        assert!(s.contains("add element inet minipod nodeports4 { tcp . 30080 : goto svc_0a60000a_tcp_80 }\n"), "{s}");
        assert!(s.contains("add element inet minipod nodeport_keys4 { tcp . 30080 }\n"), "{s}");
        let mut none = svc(&[]);
        none.ports[0].node_port = Some(30080);
        let s = script(Some(&np), Some(&none));
        assert!(s.contains("add element inet minipod no_endpoint_nodeports4 { tcp . 30080 }\n"), "{s}");
        assert!(s.contains("delete element inet minipod nodeports4 { tcp . 30080 : goto svc_0a60000a_tcp_80 }\n"), "{s}");
        // Another node port, or none: the old one's elements all go.
        let s = script(Some(&np), Some(&svc(&["10.88.0.2:8080"])));
        assert!(s.contains("delete element inet minipod nodeport_keys4 { tcp . 30080 }\n"), "{s}");
        let s = script(Some(&np), None);
        assert!(s.contains("delete element inet minipod nodeport_keys4 { tcp . 30080 }\n"), "{s}");
    }

    #[test]
    fn client_ip_affinity_pins_a_client_and_its_sets_follow_the_endpoints() {
        let day = std::time::Duration::from_secs(86400);
        let two = VirtualService { affinity: Some(day), ..svc(&["10.88.0.2:80", "10.88.0.3:80"]) };
        let s = script(None, Some(&two));
        let set = "svc_0a60000a_tcp_80_1_a86400";
        assert!(s.contains(&format!("add set inet minipod {set} {{ type ipv4_addr; flags dynamic,timeout; timeout 86400s; }}")), "{s}");
        let pinned = format!("add rule inet minipod svc_0a60000a_tcp_80 ip saddr @{set} goto svc_0a60000a_tcp_80_1\n");
        let random = "add rule inet minipod svc_0a60000a_tcp_80 numgen random";
        assert!(s.find(&pinned).zip(s.find(random)).is_some_and(|(a, b)| a < b), "a pinned client is looked up before the pick: {s}");
        assert!(s.contains(&format!("add rule inet minipod svc_0a60000a_tcp_80_1 update @{set} {{ ip saddr }}")), "{s}");
        // The endpoint at index 1 changes: its clients are unpinned; index 0 keeps its.
        let moved = VirtualService { affinity: Some(day), ..svc(&["10.88.0.2:80", "10.88.0.4:80"]) };
        let s = script(Some(&two), Some(&moved));
        assert!(
            s.contains(&format!("flush set inet minipod {set}\n")) && !s.contains("flush set inet minipod svc_0a60000a_tcp_80_0_"),
            "{s}"
        );
        // Affinity off: every set goes, after the chains that used them were flushed.
        let s = script(Some(&two), Some(&svc(&["10.88.0.2:80", "10.88.0.3:80"])));
        assert!(s.ends_with(&format!("delete set inet minipod {set}\n")) && !s.contains("update @"), "{s}");
        assert!(s.contains("delete set inet minipod svc_0a60000a_tcp_80_0_a86400\n"), "{s}");
        // Removed: the same.
        let s = script(Some(&two), None);
        assert!(s.contains(&format!("delete set inet minipod {set}\n")), "{s}");
    }

    #[test]
    fn a_port_picks_an_endpoint_at_random_and_marks_hairpin_connections() {
        let s = script(None, Some(&svc(&["10.88.0.2:8080", "10.88.0.3:8080"])));
        assert!(s.contains("add rule inet minipod svc_0a60000a_tcp_80 numgen random mod 2 vmap { 0 : goto svc_0a60000a_tcp_80_0, 1 : goto svc_0a60000a_tcp_80_1 }"), "{s}");
        assert!(s.contains("add rule inet minipod svc_0a60000a_tcp_80_1 ip saddr 10.88.0.3 meta mark set meta mark | 0x4000"), "{s}");
        assert!(s.contains("add rule inet minipod svc_0a60000a_tcp_80_1 meta l4proto tcp dnat ip to 10.88.0.3:8080"), "{s}");
        assert!(s.contains("add element inet minipod services4 { 10.96.0.10 . tcp . 80 : goto svc_0a60000a_tcp_80 }\n"), "{s}");
        assert!(s.contains("delete element inet minipod no_endpoints4 { 10.96.0.10 . tcp . 80 }"), "{s}");
    }

    #[test]
    fn fewer_endpoints_drop_their_chains_and_none_rejects() {
        let (two, one, none) = (svc(&["10.88.0.2:80", "10.88.0.3:80"]), svc(&["10.88.0.2:80"]), svc(&[]));
        let s = script(Some(&two), Some(&one));
        assert!(
            s.contains("delete chain inet minipod svc_0a60000a_tcp_80_1\n")
                && !s.contains("delete chain inet minipod svc_0a60000a_tcp_80_0"),
            "{s}"
        );
        let s = script(Some(&one), Some(&none));
        assert!(s.contains("add element inet minipod no_endpoints4 { 10.96.0.10 . tcp . 80 }\n"), "{s}");
        assert!(s.contains("delete element inet minipod services4 { 10.96.0.10 . tcp . 80 : goto svc_0a60000a_tcp_80 }"), "{s}");
        let s = script(Some(&one), None);
        assert!(
            s.ends_with("delete chain inet minipod svc_0a60000a_tcp_80\ndelete element inet minipod service_ips4 { 10.96.0.10 }\n"),
            "{s}"
        );
    }
}
