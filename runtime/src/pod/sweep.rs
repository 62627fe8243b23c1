//! Cleaning up after processes that died without cleaning up (SIGKILL, a crash): run
//! whenever a pod runtime opens, so that the next run starts clean.

use std::path::Path;

use super::record::PodId;
use super::spec::POD_ANNOTATION;
use super::{Instance, Pods};
use crate::netstack::OwnerId;
use crate::process::chain;

/// What a sweep removed, and what it could not.
#[derive(Debug, Default, Clone)]
pub struct SweepReport {
    /// Pods whose owner died.
    pub pods: Vec<String>,
    /// Containers whose pod is gone.
    pub containers: Vec<String>,
    /// Runtime instances (their own networks and private nodes) whose process died.
    pub instances: Vec<String>,
    /// Network members, addresses and links no pod accounts for.
    pub network: Vec<String>,
    /// What failed; the sweep goes on past errors.
    pub errors: Vec<String>,
}

impl SweepReport {
    pub fn is_empty(&self) -> bool {
        self.pods.is_empty() && self.containers.is_empty() && self.instances.is_empty() && self.network.is_empty() && self.errors.is_empty()
    }
}

impl Pods {
    /// Removes every pod whose owning process is gone, containers of pods that no
    /// longer exist, the networks and private nodes of dead runtimes, and network
    /// members on this node that belong to no pod.
    pub fn sweep(&self) -> SweepReport {
        let mut report = SweepReport::default();
        let mut errors = Vec::new();
        for pod in self.pods().unwrap_or_default() {
            if pod.owner.is_some_and(|o| !o.alive()) {
                match self.teardown(&pod) {
                    Ok(()) => report.pods.push(format!("{} ({})", pod.name, pod.id)),
                    Err(e) => errors.push(format!("pod {} ({}): {}", pod.name, pod.id, chain(&e))),
                }
            }
        }
        for c in self.oci.list().unwrap_or_default() {
            let Some(pod) = c.annotations.get(POD_ANNOTATION) else { continue };
            let gone = PodId::parse(pod).is_none_or(|id| !self.pod_dir(&id).exists());
            if gone {
                match self.oci.delete(&c.id, true) {
                    Ok(()) => report.containers.push(c.id.to_string()),
                    Err(e) => errors.push(format!("container {}: {}", c.id, chain(&e))),
                }
            }
        }
        let dir = self.root.join("instances");
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let Ok(inst) = crate::netstack::record::read_json::<Instance>(&e.path()) else { continue };
            if inst.owner.alive() || inst.scope == self.scope {
                continue;
            }
            match self.remove_instance(&inst) {
                Ok(()) => report.instances.push(inst.scope.to_string()),
                Err(e) => errors.push(format!("runtime instance {}: {}", inst.scope, chain(&e))),
            }
        }
        // Private nodes whose instance record is gone (a crash between the two).
        let nodes = self.root.join("nodes");
        for e in std::fs::read_dir(&nodes).into_iter().flatten().flatten() {
            let scope = e.file_name().to_string_lossy().into_owned();
            if self.scope != scope.as_str() && !dir.join(format!("{scope}.json")).exists() {
                let pin = e.path().join("netns");
                let removed = crate::netstack::netns::remove_pinned(&pin)
                    .map_err(|e| e.to_string())
                    .and_then(|()| std::fs::remove_dir_all(e.path()).map_err(|e| e.to_string()));
                match removed {
                    Ok(()) => report.instances.push(format!("node {scope}")),
                    Err(why) => errors.push(format!("private node {}: {why}", e.path().display())),
                }
            }
        }
        let pods_dir = self.root.join("pods");
        // Links no record names are deleted only on a private node: a shared node may
        // carry other state roots' pods.
        let stray_links = self.node_ref.netns.as_ref().is_some_and(|p| p.starts_with(&nodes));
        // Asked per owner as it is met: a pod made meanwhile has its directory before
        // its first attachment.
        let gc = self.node.gc_with(
            move |o: &OwnerId| PodId::parse(o.as_str()).is_none_or(|id| Path::new(&pods_dir).join(id.as_str()).exists()),
            stray_links,
        );
        match gc {
            Ok(r) => {
                report.network.extend(r.members.iter().map(|(n, o)| format!("member {o} of {n}")));
                report.network.extend(r.addresses.iter().map(|(n, ip)| format!("address {ip} of {n}")));
                report.network.extend(r.links.iter().map(|l| format!("link {l}")));
                errors.extend(r.failures.iter().map(|(what, e)| format!("network gc, {what}: {}", chain(e))));
            }
            Err(e) => errors.push(format!("network gc: {}", chain(&e))),
        }
        report.errors = errors;
        for e in &report.errors {
            tracing::warn!("sweep: {e}");
        }
        report
    }
}
