//! Readiness: a pod whose containers' readiness probes do not all pass is no Service's
//! endpoint. The probes run where the pod's runtime lives (the embedding API's
//! [`crate::embed::ContainerBuilder::readiness`]) or in a process of their own
//! (`minipod ctr run --readiness`, [`crate::embed::probe_until_stopped`]); what they
//! find is recorded here, and the services selecting the pod follow at once. A
//! container removed gates nothing.

use super::{ContainerName, ContainerRecord, PodError, PodId, Pods, CONTAINER_FILE};
use crate::netstack;
use crate::time::Timestamp;

type Result<T> = std::result::Result<T, PodError>;

impl Pods {
    /// Records whether container `ctr` of pod `pod` is ready (its readiness probe
    /// passes); the services that select the pod follow. Returns whether that changed.
    /// A pod that is gone changes nothing.
    pub fn set_container_ready(&self, pod: &PodId, ctr: &ContainerName, ready: bool) -> Result<bool> {
        self.record_ready(pod, ctr, None, ready)
    }

    /// As [`Pods::set_container_ready`], for what the probe of `c` (as it was made)
    /// found: nothing is recorded once `c` was removed or a container of its name took
    /// its place. Checked under the pod's lock, which every readiness write takes, so
    /// that a check that ran across a removal cannot outlast the removal's own write.
    pub fn set_probed_ready(&self, c: &ContainerRecord, ready: bool) -> Result<bool> {
        self.record_ready(&c.pod, &c.name, Some(&c.created), ready)
    }

    fn record_ready(&self, pod: &PodId, ctr: &ContainerName, made: Option<&Timestamp>, ready: bool) -> Result<bool> {
        let changed = {
            // Under the pod's lock: a create or another probe may be writing its record.
            let Some(_lock) = self.pod_lock(pod, nix::fcntl::FlockArg::LockExclusive)? else { return Ok(false) };
            if let Some(made) = made {
                let current = netstack::record::read_json::<ContainerRecord>(&self.container_dir(pod, ctr).join(CONTAINER_FILE));
                if !current.is_ok_and(|c| c.created == *made) {
                    return Ok(false);
                }
            }
            let mut rec = match self.pod(pod.as_str()) {
                Ok(p) => p,
                Err(PodError::NoSuchPod(_)) => return Ok(false),
                Err(e) => return Err(e),
            };
            if rec.unready.contains(ctr) != ready {
                return Ok(false);
            }
            if ready {
                rec.unready.retain(|c| c != ctr);
            } else {
                rec.unready.push(ctr.clone());
                rec.unready.sort();
            }
            self.save_pod(&rec)?;
            rec
        };
        // After the pod's lock is let go: the sync takes the services' lock, which is
        // held while pods are read.
        self.sync_services_of(&changed)?;
        Ok(true)
    }
}
