//! GetContainerEvents: containers' lifecycle as a stream, which a kubelet's evented
//! PLEG reads instead of listing every container each second.
//!
//! Events are worked out only while someone listens: the CRI calls that change a
//! container look at that one container afterwards, and a sweep each second finds
//! what changed by itself (an exit, an OOM kill, a container removed with the CLI).
//! Each container's last event is remembered, so a change is told once, in order.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_cri::v1 as cri;
use minipod_runtime::pod::ContainerRecord;
use minipod_runtime::{Pods, Status as CtrStatus};
use tokio::sync::broadcast;

use cri::ContainerEventType as Kind;

/// How many events a slow listener may fall behind before it misses some (it then
/// sees the stream end and, as a kubelet does, relists).
const BACKLOG: usize = 1024;
/// How often containers are looked at for changes nobody asked for.
const SWEEP: Duration = Duration::from_secs(1);

pub struct Events {
    tx: broadcast::Sender<cri::ContainerEventResponse>,
    /// The last event told of each container.
    told: Mutex<HashMap<String, Kind>>,
}

/// The event a container's state stands for.
fn kind(pods: &Pods, c: &ContainerRecord) -> Kind {
    match pods.container_state(c).map(|s| s.live_status()) {
        Ok(CtrStatus::Running) => Kind::ContainerStartedEvent,
        Ok(CtrStatus::Stopped) => Kind::ContainerStoppedEvent,
        _ => Kind::ContainerCreatedEvent,
    }
}

impl Events {
    pub fn new() -> Arc<Self> {
        Arc::new(Self { tx: broadcast::channel(BACKLOG).0, told: Mutex::new(HashMap::new()) })
    }

    /// A new listener. The first one takes the containers as they are now as told:
    /// events are changes from here on.
    pub fn subscribe(&self, pods: &Pods) -> broadcast::Receiver<cri::ContainerEventResponse> {
        if self.tx.receiver_count() == 0 {
            let now: HashMap<String, Kind> =
                pods.containers(None).unwrap_or_default().iter().map(|c| (c.id.to_string(), kind(pods, c))).collect();
            if let Ok(mut told) = self.told.lock() {
                *told = now;
            }
        }
        self.tx.subscribe()
    }

    /// Tells what became of container `id` since its last event, if anything and if
    /// anyone listens.
    pub fn changed(&self, pods: &Pods, id: &str) {
        if self.tx.receiver_count() == 0 {
            return;
        }
        let now = pods.container_by_id(id).ok().map(|c| kind(pods, &c)).unwrap_or(Kind::ContainerDeletedEvent);
        self.tell(pods, id, now);
    }

    fn tell(&self, pods: &Pods, id: &str, now: Kind) {
        let Ok(mut told) = self.told.lock() else { return };
        let last = told.get(id).copied();
        if last == Some(now) || (last.is_none() && now == Kind::ContainerDeletedEvent) {
            return;
        }
        // A container seen first when it already runs or has exited was created too.
        let mut kinds = Vec::new();
        if last.is_none() && now != Kind::ContainerCreatedEvent {
            kinds.push(Kind::ContainerCreatedEvent);
        }
        // Removed before a sweep saw it exit: it stopped first.
        if now == Kind::ContainerDeletedEvent && last == Some(Kind::ContainerStartedEvent) {
            kinds.push(Kind::ContainerStoppedEvent);
        }
        kinds.push(now);
        if now == Kind::ContainerDeletedEvent {
            told.remove(id);
        } else {
            told.insert(id.to_string(), now);
        }
        // Sent under the lock: two changes of one container are told in their order.
        for k in kinds {
            let _ = self.tx.send(event(pods, id, k));
        }
        drop(told);
    }

    /// Looks at every container each [`SWEEP`] while anyone listens.
    pub fn sweep(self: Arc<Self>, pods: Arc<Pods>) {
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(SWEEP).await;
                if self.tx.receiver_count() == 0 {
                    continue;
                }
                let (events, pods) = (self.clone(), pods.clone());
                let _ = tokio::task::spawn_blocking(move || {
                    let containers = pods.containers(None).unwrap_or_default();
                    let mut gone: Vec<String> = events.told.lock().map(|t| t.keys().cloned().collect()).unwrap_or_default();
                    for c in &containers {
                        let id = c.id.to_string();
                        gone.retain(|g| *g != id);
                        events.tell(&pods, &id, kind(&pods, c));
                    }
                    for id in gone {
                        events.tell(&pods, &id, Kind::ContainerDeletedEvent);
                    }
                })
                .await;
            }
        });
    }
}

/// The event with its pod's status and the statuses of the pod's containers, as the
/// CRI wants them (what a kubelet would otherwise ask for next).
fn event(pods: &Pods, id: &str, k: Kind) -> cri::ContainerEventResponse {
    // `<pod id>-<name>`: the pod outlives a deleted container's record.
    let pod = id.get(..12).and_then(|p| pods.pod(p).ok());
    let containers_statuses = pod
        .as_ref()
        .and_then(|p| pods.containers(Some(&p.id)).ok())
        .unwrap_or_default()
        .iter()
        .filter_map(|c| super::to_cri::container_status(pods, c).ok())
        .collect();
    cri::ContainerEventResponse {
        container_id: id.to_string(),
        container_event_type: k as i32,
        created_at: super::to_cri::now_nanos(),
        pod_sandbox_status: pod.as_ref().map(super::to_cri::sandbox_status),
        containers_statuses,
    }
}
