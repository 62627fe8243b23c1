//! The glue between networks and the DNS server: which networks it serves, where
//! names go upstream, the resolv.conf a member gets.

use super::*;

fn upstreams(cfg: &NetworkConfig) -> Vec<SocketAddr> {
    if cfg.dns_upstreams.is_empty() {
        crate::dns::resolv_conf_upstreams()
    } else {
        cfg.dns_upstreams.clone()
    }
}

pub(super) fn resolv_conf(cfg: &NetworkConfig) -> String {
    if cfg.dns {
        return format!("nameserver {}\n", cfg.gateway());
    }
    upstreams(cfg).iter().map(|u| format!("nameserver {}\n", u.ip())).collect()
}

/// Which networks [`Node::serve_dns`] serves besides those the node creates or joins
/// from then on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsScope {
    /// Every DNS-enabled network recorded on the node.
    AllNetworks,
    /// None yet: several processes may share a node, each serving its own members'.
    JoinedFromNow,
}

impl Node {
    /// Starts the DNS server, on a thread of its own: a listener on the gateway of
    /// each DNS-enabled network that `scope` names, and of those this node creates or
    /// joins later, answering for the names members were attached with, until the node
    /// is dropped. Calling it again only widens the scope.
    pub fn serve_dns(&self, scope: DnsScope) -> Result<(), NetworkError> {
        if let Ok(mut dns) = self.dns.lock() {
            if dns.is_none() {
                let mut server = crate::dns::DnsServer::start()?;
                server.watch_services(self.firewall.services_dir(), self.state_dir.join("overlay.json"), self.records.clone());
                *dns = Some(server);
            }
        }
        if scope == DnsScope::AllNetworks {
            for cfg in self.networks()?.into_iter().filter(|c| c.dns) {
                self.serve_dns_for(&cfg)?;
            }
        }
        Ok(())
    }

    /// Puts service names under `domain` (default `cluster.local`).
    pub fn set_cluster_domain(&self, domain: &str) {
        self.records.set_cluster_domain(domain);
    }

    /// The domain service names are under.
    pub fn cluster_domain(&self) -> String {
        self.records.cluster_domain()
    }

    /// Serves network `cfg`'s names if the DNS server runs (a no-op when they are
    /// served already). Another process serving them already is only a warning.
    pub(super) fn serve_dns_for(&self, cfg: &NetworkConfig) -> Result<(), NetworkError> {
        let Ok(mut dns) = self.dns.lock() else { return Ok(()) };
        let (Some(server), true) = (dns.as_mut(), cfg.dns) else { return Ok(()) };
        if !self.records.has_network(&cfg.name) {
            self.records.set_network(&cfg.name, cfg.subnet, cfg.subnet6, upstreams(cfg));
            for m in self.members(&cfg.name)? {
                self.records.add(&cfg.name, &m.dns_names, m.ip.into());
                if let Some(v6) = m.ip6 {
                    self.records.add(&cfg.name, &m.dns_names, v6.into());
                }
            }
        }
        match server.listen(&self.netns, cfg.name.clone(), cfg.gateway(), self.records.clone()) {
            Err(crate::dns::DnsError::Bind { source, .. }) if source.kind() == std::io::ErrorKind::AddrInUse => {
                tracing::warn!(network = %cfg.name, "another process serves DNS on {}:53; names attached here are not served", cfg.gateway());
                Ok(())
            }
            other => Ok(other?),
        }
    }
}
