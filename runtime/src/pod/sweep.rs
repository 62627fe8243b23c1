//! Cleaning up after processes that died without cleaning up (SIGKILL, a crash): run
//! whenever a pod runtime opens, so that the next run starts clean.

use std::path::Path;

use super::record::PodId;
use super::spec::POD_ANNOTATION;
use super::{Instance, PodStatus, Pods, POD_FILE};
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
    /// Stops and removals that a crash cut short, finished.
    pub finished: Vec<String>,
    /// Temporary files and directories of writers that died, pod directories without
    /// a record, and name claims without a pod.
    pub files: Vec<String>,
    /// Network members, addresses and links no pod accounts for.
    pub network: Vec<String>,
    /// What failed; the sweep goes on past errors.
    pub errors: Vec<String>,
}

impl SweepReport {
    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
            && self.containers.is_empty()
            && self.instances.is_empty()
            && self.finished.is_empty()
            && self.files.is_empty()
            && self.network.is_empty()
            && self.errors.is_empty()
    }
}

impl Pods {
    /// Removes every pod whose owning process is gone, finishes the stops and removals
    /// that a crash cut short, removes what half-done writes left (temporary files,
    /// pod directories without a record, name claims without a pod), containers of
    /// pods that no longer exist, the networks and private nodes of dead runtimes, and
    /// network members on this node that belong to no pod.
    pub fn sweep(&self) -> SweepReport {
        let mut report = SweepReport::default();
        let mut errors = Vec::new();
        let pods_dir = self.root.join("pods");
        self.sweep_files(&pods_dir, &mut report.files, &mut errors);
        for e in std::fs::read_dir(&pods_dir).into_iter().flatten().flatten() {
            let Some(id) = PodId::parse(&e.file_name().to_string_lossy()) else { continue };
            if e.path().join(POD_FILE).symlink_metadata().is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound) {
                // Only an older version's crash leaves one: pods are renamed into place whole.
                match self.remove_recordless(&id) {
                    Ok(()) => report.files.push(format!("pod directory {} without a record", e.path().display())),
                    Err(e) => errors.push(format!("pod directory of {id}: {}", chain(&e))),
                }
            }
        }
        for pod in self.pods().unwrap_or_default() {
            let dir = self.pod_dir(&pod.id);
            self.sweep_files(&dir, &mut report.files, &mut errors);
            for c in std::fs::read_dir(dir.join("containers")).into_iter().flatten().flatten() {
                self.sweep_files(&c.path(), &mut report.files, &mut errors);
            }
            let what = format!("{} ({})", pod.name, pod.id);
            if pod.owner.is_some_and(|o| !o.alive()) {
                match self.teardown(&pod) {
                    Ok(()) => report.pods.push(what),
                    Err(e) => errors.push(format!("pod {what}: {}", chain(&e))),
                }
                continue;
            }
            // A free lock on a pod that is being stopped or removed: whoever began is gone.
            let unfinished = pod.removing || pod.status == PodStatus::Stopping;
            if !unfinished || !self.pod_lock_free(&pod.id) {
                continue;
            }
            let finished = if pod.removing {
                self.teardown(&pod).map(|()| format!("removal of pod {what}"))
            } else {
                self.stop_pod(pod.id.as_str(), RECOVERY_STOP_GRACE).map(|_| format!("stop of pod {what}"))
            };
            match finished {
                Ok(done) => report.finished.push(done),
                Err(e) => errors.push(format!("finishing pod {what}: {}", chain(&e))),
            }
        }
        let (claims, temps) = self.names().sweep_stale();
        report.files.extend(claims.into_iter().map(|c| format!("name claim {c} without a pod")));
        report.files.extend(temps.iter().map(|p| format!("temporary {}", p.display())));
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
                report.network.extend(r.files.iter().map(|f| format!("temporary file {}", f.display())));
                report.network.extend(r.networks.iter().map(|n| format!("removal of network {n}, finished")));
                for (net, owner) in &r.unwired {
                    match self.stop_unwired(owner.as_str(), net) {
                        Ok(Some(done)) => report.finished.push(done),
                        Ok(None) => {}
                        Err(e) => errors.push(format!("stopping pod {owner}, whose link on {net} is gone: {}", chain(&e))),
                    }
                }
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

    /// Stops a ready pod whose link on `net` is gone, so that it is reported not ready
    /// (a kubelet then makes it again) instead of ready and unreachable. Nothing when
    /// the pod is not ready or is being worked on.
    fn stop_unwired(&self, id: &str, net: &crate::netstack::NetworkName) -> super::Result<Option<String>> {
        let Some(id) = PodId::parse(id) else { return Ok(None) };
        let Ok(pod) = self.pod(id.as_str()) else { return Ok(None) };
        // Only a pod on this runtime's node: the links looked at are this node's, and
        // one state dir may serve pods of other node namespaces too.
        if pod.node != self.node_ref || pod.status != PodStatus::Ready || !self.pod_lock_free(&id) {
            return Ok(None);
        }
        self.stop_pod(id.as_str(), RECOVERY_STOP_GRACE)?;
        Ok(Some(format!("stop of pod {} ({id}), whose link on {net} was gone", pod.name)))
    }

    /// Temporary entries of dead writers in `dir`.
    fn sweep_files(&self, dir: &Path, files: &mut Vec<String>, errors: &mut Vec<String>) {
        let (removed, failed) = crate::netstack::record::remove_dead_temps(dir);
        files.extend(removed.iter().map(|p| format!("temporary {}", p.display())));
        errors.extend(failed.iter().map(|(p, e)| format!("removing {}: {e}", p.display())));
    }

    /// A pod directory without its record: its namespaces unpinned, then removed.
    fn remove_recordless(&self, id: &PodId) -> super::Result<()> {
        let ns = self.pod_dir(id).join("ns");
        for n in ["net", "ipc", "uts"] {
            crate::netstack::netns::remove_pinned(&ns.join(n))?;
        }
        self.remove_pod_dir(id)
    }
}

/// How long a stop finished at open gives a container that still runs: the kubelet
/// asked for the stop already.
const RECOVERY_STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(2);
