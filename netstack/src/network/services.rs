//! The node's virtual IPs (Services): programmed on its firewall, which is made first
//! if this process has not yet checked it.

use std::net::Ipv4Addr;

use super::{NetworkError, Node};
use crate::dns::cluster::HeadlessService;
use crate::firewall::{FirewallError, ServiceDns, VirtualService, HEADLESS_PREFIX};

fn headless_file(dir: &std::path::Path, dns: &ServiceDns) -> std::path::PathBuf {
    dir.join(format!("{HEADLESS_PREFIX}{}.{}.json", dns.namespace, dns.name))
}

/// The headless services recorded in `dir`; unreadable ones are skipped.
pub(crate) fn read_headless(dir: &std::path::Path) -> Vec<HeadlessService> {
    let Ok(entries) = std::fs::read_dir(dir) else { return vec![] };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(HEADLESS_PREFIX))
        .filter_map(|e| crate::record::read_json(&e.path()).ok())
        .collect()
}

impl Node {
    /// Serves `svc` on this node, replacing what its IP had; returns whether anything
    /// changed.
    pub fn program_service(&self, svc: &VirtualService) -> Result<bool, NetworkError> {
        self.ensure_firewall()?;
        let changed = self.firewall.program_service(svc)?;
        self.records.put_service(svc);
        Ok(changed)
    }

    /// Serves the DNS names of a headless service (no firewall state: it has no
    /// virtual IP), for every process's DNS server on this state dir.
    pub fn program_headless(&self, svc: &HeadlessService) -> Result<(), NetworkError> {
        let dir = self.firewall.services_dir();
        let state = |path: std::path::PathBuf| move |source| NetworkError::from(FirewallError::State { path, source });
        std::fs::create_dir_all(&dir).map_err(state(dir.clone()))?;
        let path = headless_file(&dir, &svc.dns);
        crate::record::write_json(&path, svc, crate::record::Durability::Atomic).map_err(state(path.clone()))?;
        self.records.put_headless(svc);
        Ok(())
    }

    /// Stops serving the headless service `dns`; one that is not served is fine.
    pub fn remove_headless(&self, dns: &ServiceDns) -> Result<(), NetworkError> {
        let path = headless_file(&self.firewall.services_dir(), dns);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(FirewallError::State { path, source: e }.into()),
            _ => {}
        }
        self.records.drop_headless(dns);
        Ok(())
    }

    /// Stops serving the virtual IP `ip` on this node; one that is not served is fine.
    pub fn remove_service(&self, ip: Ipv4Addr) -> Result<(), NetworkError> {
        self.ensure_firewall()?;
        self.firewall.remove_service(ip)?;
        self.records.drop_service(ip);
        Ok(())
    }
}
