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

impl Node {
    /// Starts the DNS server on the caller's tokio runtime: a listener on the gateway
    /// of every DNS-enabled network (and of those created later), answering for the
    /// names members were attached with, until the node is dropped.
    pub fn serve_dns(&self) -> Result<(), NetworkError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| NetworkError::NoRuntime)?;
        self.serve_dns_on(runtime, true)
    }

    /// Starts the DNS server with its listeners on `runtime`: for every DNS-enabled
    /// network now if `all`, else only for networks this node creates or joins from
    /// now on (so that several processes can share a node, each serving its own).
    pub fn serve_dns_on(&self, runtime: tokio::runtime::Handle, all: bool) -> Result<(), NetworkError> {
        if let Ok(mut dns) = self.dns.lock() {
            dns.get_or_insert_with(|| crate::dns::DnsServer::new(runtime));
        }
        if all {
            for cfg in self.networks()?.into_iter().filter(|c| c.dns) {
                self.serve_dns_for(&cfg)?;
            }
        }
        Ok(())
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
