//! The files every container of a pod shares: /etc/hostname, /etc/hosts and
//! /etc/resolv.conf, written once per pod and bind-mounted into each container.

use std::path::Path;

use super::record::{DnsConfig, PodRecord};

/// Names of the files under `<pod dir>/etc/`, and where they go in a container.
pub const FILES: [&str; 3] = ["hostname", "hosts", "resolv.conf"];

/// The pod's /etc/hosts: localhost, and its own name on each of its addresses.
pub fn hosts(pod: &PodRecord) -> String {
    let mut out = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    for n in &pod.networks {
        out.push_str(&format!("{}\t{}\n", n.ip, pod.hostname));
        if let Some(v6) = n.ip6 {
            out.push_str(&format!("{v6}\t{}\n", pod.hostname));
        }
    }
    out
}

/// The pod's resolv.conf: the CRI DNS config when given, else what the first
/// network says (its DNS server on the gateway, or its upstreams).
pub fn resolv_conf(dns: Option<&DnsConfig>, network_default: &str) -> String {
    let Some(dns) = dns.filter(|d| !d.servers.is_empty() || !d.searches.is_empty() || !d.options.is_empty()) else {
        return network_default.to_string();
    };
    let mut out = String::new();
    if dns.servers.is_empty() {
        out.push_str(network_default);
    }
    for s in &dns.servers {
        out.push_str(&format!("nameserver {s}\n"));
    }
    if !dns.searches.is_empty() {
        out.push_str(&format!("search {}\n", dns.searches.join(" ")));
    }
    if !dns.options.is_empty() {
        out.push_str(&format!("options {}\n", dns.options.join(" ")));
    }
    out
}

/// The search path and options of Kubernetes' cluster DNS for a pod in `namespace`:
/// `web` finds the service web of its namespace, `web.prod` that of namespace prod
/// (hence ndots:5, which tries the search path first for names of up to four dots).
pub fn cluster_search(namespace: &crate::netstack::Namespace, domain: &str) -> String {
    format!("search {namespace}.svc.{domain} svc.{domain} {domain}\noptions ndots:5\n")
}

/// Writes the three files into `etc_dir`.
pub fn write(etc_dir: &Path, pod: &PodRecord, resolv: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(etc_dir)?;
    std::fs::write(etc_dir.join("hostname"), format!("{}\n", pod.hostname))?;
    std::fs::write(etc_dir.join("hosts"), hosts(pod))?;
    std::fs::write(etc_dir.join("resolv.conf"), resolv)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cri_dns_config_replaces_the_network_resolver() {
        let net = "nameserver 10.1.0.1\n";
        assert_eq!(resolv_conf(None, net), net);
        assert_eq!(resolv_conf(Some(&DnsConfig::default()), net), net);
        let dns = DnsConfig {
            servers: vec!["192.0.2.53".into()],
            searches: vec!["svc.local".into(), "local".into()],
            options: vec!["ndots:5".into()],
        };
        assert_eq!(resolv_conf(Some(&dns), net), "nameserver 192.0.2.53\nsearch svc.local local\noptions ndots:5\n");
        let search_only = DnsConfig { searches: vec!["a".into()], ..Default::default() };
        assert_eq!(resolv_conf(Some(&search_only), net), "nameserver 10.1.0.1\nsearch a\n");
    }
}
