//! The node's NetworkPolicies: programmed on its firewall, which is made first if this
//! process has not yet checked it.

use super::{NetworkError, Node};
use crate::firewall::NodePolicies;

impl Node {
    /// Makes `policies` the node's whole NetworkPolicy state (an empty one lifts every
    /// isolation); returns whether anything changed.
    pub fn program_policies(&self, policies: &NodePolicies) -> Result<bool, NetworkError> {
        // Nothing to do (no policies, never any): no table is made for it.
        if self.firewall.recorded_policies() == *policies {
            return Ok(false);
        }
        self.ensure_firewall()?;
        Ok(self.firewall.program_policies(policies)?)
    }
}
