//! Applying, listing and deleting policies, and keeping the node's firewall in step
//! with them and the pods.

use std::io;
use std::path::{Path, PathBuf};

use super::rules::node_policies;
use super::{PolicyError, PolicyKey, PolicyManifest, PolicyRecord};
use crate::netstack::Namespace;
use crate::pod::{NodeRef, PodError, PodRecord, Pods};
use crate::service::Change;

type Result<T> = std::result::Result<T, PodError>;

use crate::pod::io_err;
use crate::service::{read_records, remove_record, services_lock_in, write_record};

/// One policy of an apply: what it was (none if new) and what it becomes.
pub(crate) struct PolicyStep {
    pub(crate) doc: usize,
    old: Option<PolicyRecord>,
    new: PolicyRecord,
}

impl Pods {
    fn policies_dir(&self) -> PathBuf {
        self.root().join("policies")
    }

    fn policy_file(&self, key: &PolicyKey) -> PathBuf {
        self.policies_dir().join(&key.namespace).join(format!("{}.json", key.name))
    }

    /// The policies of `namespace` (all namespaces with None), by name.
    pub fn network_policies(&self, namespace: Option<&Namespace>) -> Result<Vec<PolicyRecord>> {
        let mut all: Vec<PolicyRecord> = read_records(&self.policies_dir(), namespace.map(|n| n.as_str()))?;
        all.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(all)
    }

    /// One policy.
    pub fn network_policy(&self, key: &PolicyKey) -> Result<PolicyRecord> {
        let path = self.policy_file(key);
        crate::netstack::record::read_json(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => PolicyError::NoSuchPolicy(key.clone()).into(),
            _ => io_err("reading", &path)(e),
        })
    }

    /// What applying `given` (document index and manifest) would do; checks that no
    /// policy is in it twice. Changes nothing. Call under the services lock.
    pub(crate) fn plan_policies(&self, given: &[(usize, &PolicyManifest)]) -> Result<Vec<PolicyStep>> {
        let mut plan: Vec<PolicyStep> = Vec::new();
        for (doc, m) in given {
            if plan.iter().any(|s| s.new.key == m.key) {
                return Err(PolicyError::Twice { doc: *doc, key: m.key.clone() }.into());
            }
            let old = match self.network_policy(&m.key) {
                Ok(p) => Some(p),
                Err(PodError::Policy(PolicyError::NoSuchPolicy(_))) => None,
                Err(e) => return Err(e),
            };
            let new = PolicyRecord {
                key: m.key.clone(),
                pod_selector: m.pod_selector.clone(),
                ingress: m.ingress.clone(),
                egress: m.egress.clone(),
                labels: m.labels.clone(),
                annotations: m.annotations.clone(),
                node: old.as_ref().map_or_else(|| self.node_ref().clone(), |o| o.node.clone()),
                created: old.as_ref().map_or_else(crate::time::Timestamp::now, |o| o.created),
            };
            plan.push(PolicyStep { doc: *doc, old, new });
        }
        Ok(plan)
    }

    /// Records `plan` and programs its nodes; on a failure puts every record back as
    /// it was (and programs that). Call under the services lock.
    pub(crate) fn commit_policies(&self, plan: &[PolicyStep]) -> Result<Vec<(usize, PolicyKey, Change)>> {
        let mut changes = Vec::new();
        let mut written = Vec::new();
        let mut outcome = Ok(());
        for step in plan {
            if step.old.as_ref() == Some(&step.new) {
                changes.push((step.doc, step.new.key.clone(), Change::Unchanged));
                continue;
            }
            if let Err(e) = self.write_policy(&step.new) {
                outcome = Err(e);
                break;
            }
            written.push(step);
            changes.push((step.doc, step.new.key.clone(), if step.old.is_some() { Change::Configured } else { Change::Created }));
        }
        if outcome.is_ok() {
            outcome = self.sync_policy_nodes(written.iter().map(|s| &s.new.node));
        }
        if let Err(e) = outcome {
            self.undo_policies(&written);
            return Err(e);
        }
        Ok(changes)
    }

    /// Puts the records of `steps` back as they were before, and programs that.
    pub(crate) fn undo_policies(&self, steps: &[&PolicyStep]) {
        for step in steps {
            let undone = match &step.old {
                Some(old) => self.write_policy(old),
                None => self.remove_policy_file(&step.new.key),
            };
            if let Err(e) = undone {
                tracing::warn!("undoing network policy {}: {e}", step.new.key);
            }
        }
        if let Err(e) = self.sync_policy_nodes(steps.iter().map(|s| &s.new.node)) {
            tracing::warn!("programming the network policies as they were: {e}");
        }
    }

    /// Deletes the policies `keys` name, all or none: one that does not exist is an
    /// error found before anything is deleted. Call under the services lock.
    pub(crate) fn delete_policies_locked(&self, keys: &[PolicyKey]) -> Result<Vec<PolicyRecord>> {
        let found = keys.iter().map(|k| self.network_policy(k)).collect::<Result<Vec<_>>>()?;
        for p in &found {
            self.remove_policy_file(&p.key)?;
        }
        if let Err(e) = self.sync_policy_nodes(found.iter().map(|p| &p.node)) {
            for p in &found {
                if let Err(u) = self.write_policy(p) {
                    tracing::warn!("restoring network policy {}: {u}", p.key);
                }
            }
            return Err(e);
        }
        Ok(found)
    }

    /// Deletes the policies `keys` name, all or none.
    pub fn delete_network_policies(&self, keys: &[PolicyKey]) -> Result<Vec<PolicyKey>> {
        let _lock = self.services_lock()?;
        Ok(self.delete_policies_locked(keys)?.into_iter().map(|p| p.key).collect())
    }

    fn write_policy(&self, p: &PolicyRecord) -> Result<()> {
        write_record(&self.policy_file(&p.key), p)
    }

    fn remove_policy_file(&self, key: &PolicyKey) -> Result<()> {
        let path = self.policy_file(key);
        remove_record(&path)?;
        // An empty namespace directory would make every pod change look for policies.
        if let Some(dir) = path.parent() {
            let _ = std::fs::remove_dir(dir);
        }
        Ok(())
    }

    /// Programs each of `nodes` (once each) with this root's policies and the
    /// cluster's pods as they are.
    fn sync_policy_nodes<'a>(&self, nodes: impl Iterator<Item = &'a NodeRef>) -> Result<()> {
        self.sync_policy_nodes_under(self.root(), nodes)
    }

    /// Programs each of `nodes` (once each) with the policies recorded under the state
    /// root `root` (this node's or a peer's) and the cluster's pods as they are. Call
    /// under that root's services lock.
    fn sync_policy_nodes_under<'a>(&self, root: &Path, nodes: impl Iterator<Item = &'a NodeRef>) -> Result<()> {
        let mut seen: Vec<&NodeRef> = Vec::new();
        for node in nodes {
            if !seen.contains(&node) {
                seen.push(node);
            }
        }
        if seen.is_empty() {
            return Ok(());
        }
        let policies: Vec<PolicyRecord> = read_records(&root.join("policies"), None)?;
        let (pods, cluster) = (self.cluster_pods()?, self.cluster_roots());
        for node in seen {
            if node.netns.as_ref().is_some_and(|p| !p.exists()) {
                // The node namespace is gone, and its firewall with it.
                continue;
            }
            self.node_at(node)?.node().program_policies(&node_policies(node, &policies, &pods, &cluster))?;
        }
        Ok(())
    }

    /// Programs the policies under the state root `root` on the nodes they are on, and
    /// `also`, with the pods as they are, under that root's lock.
    fn sync_root_policies(&self, root: &Path, also: Option<&NodeRef>) -> Result<()> {
        let _lock = services_lock_in(&root.join("services"))?;
        let policies: Vec<PolicyRecord> = read_records(&root.join("policies"), None)?;
        let nodes: Vec<NodeRef> = policies.into_iter().map(|p| p.node).chain(also.cloned()).collect();
        self.sync_policy_nodes_under(root, nodes.iter())
    }

    /// Brings the policies up to date after `pod` became ready, began to stop,
    /// stopped or went: it may be selected, or a peer, of any of its node's, and a
    /// peer of any of its cluster's other nodes' (one state root's lock at a time).
    /// Costs one directory lookup per root without policies.
    /// One root that fails does not keep the others stale: each is tried, and the
    /// first error returned.
    pub(crate) fn sync_policies_of(&self, pod: &PodRecord) -> Result<()> {
        let mut first = Ok(());
        for root in self.cluster_roots() {
            if has_policies_under(&root) {
                let synced = self.sync_root_policies(&root, (root.as_path() == self.root()).then_some(&pod.node));
                first = first.and(synced);
            }
        }
        first
    }

    /// Brings every node's policies up to date with the pods (after a sweep, say),
    /// this node's and its cluster's others'.
    pub fn sync_network_policies(&self) -> Result<()> {
        let mut first = Ok(());
        for root in self.cluster_roots() {
            let own = root.as_path() == self.root();
            // This node's also with its last policy gone: a crash after the record
            // went may have left its rules (a node with none programmed costs nothing).
            if (own && root.join("policies").exists()) || has_policies_under(&root) {
                first = first.and(self.sync_root_policies(&root, own.then(|| self.node_ref())));
            }
        }
        first
    }
}

/// Whether any namespace has a policy directory under the state root `root` (each
/// goes with its last policy).
fn has_policies_under(root: &Path) -> bool {
    std::fs::read_dir(root.join("policies")).is_ok_and(|mut entries| entries.next().is_some())
}
