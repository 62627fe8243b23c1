//! The node's virtual IPs (Services): programmed on its firewall, which is made first
//! if this process has not yet checked it.

use std::net::Ipv4Addr;

use super::{NetworkError, Node};
use crate::firewall::VirtualService;

impl Node {
    /// Serves `svc` on this node, replacing what its IP had; returns whether anything
    /// changed.
    pub fn program_service(&self, svc: &VirtualService) -> Result<bool, NetworkError> {
        self.ensure_firewall()?;
        let changed = self.firewall.program_service(svc)?;
        self.records.put_service(svc);
        Ok(changed)
    }

    /// Stops serving the virtual IP `ip` on this node; one that is not served is fine.
    pub fn remove_service(&self, ip: Ipv4Addr) -> Result<(), NetworkError> {
        self.ensure_firewall()?;
        self.firewall.remove_service(ip)?;
        self.records.drop_service(ip);
        Ok(())
    }
}
