//! The library's pod and container records as the CRI's messages.

use k8s_cri::v1 as cri;
use minipod_runtime::disk::DiskUsage;
use minipod_runtime::pod::{BindMount, ContainerRecord, PodRecord, Propagation, Resources, RootfsSource};
use minipod_runtime::{PodError, Pods, Status as CtrStatus};

use super::convert;

pub(super) fn sandbox(p: &PodRecord) -> cri::PodSandbox {
    cri::PodSandbox {
        id: p.id.to_string(),
        metadata: Some(convert::pod_metadata(p)),
        state: convert::pod_state(p),
        created_at: p.created.unix_nanos(),
        labels: convert::to_hash(&p.labels),
        annotations: convert::user_annotations(&p.annotations),
        runtime_handler: String::new(),
    }
}

pub(super) fn image_spec(c: &ContainerRecord) -> cri::ImageSpec {
    let image = match &c.source {
        RootfsSource::Image(r) => r.clone(),
        RootfsSource::Dir(d) => d.display().to_string(),
    };
    cri::ImageSpec { image: image.clone(), user_specified_image: image, ..Default::default() }
}

pub(super) fn container_status(pods: &Pods, c: &ContainerRecord) -> Result<cri::ContainerStatus, PodError> {
    let st = pods.container_state(c)?;
    let status = st.live_status();
    let exit = st.exit.map(|e| e.shell_code()).unwrap_or(0);
    let reason = match (status, exit) {
        // The kernel's count, not a guess from the exit code: a process can die of
        // SIGKILL for other reasons, and one OOM kill of a child can leave init alive.
        (CtrStatus::Stopped, _) if st.oom_killed => "OOMKilled",
        (CtrStatus::Stopped, 0) => "Completed",
        (CtrStatus::Stopped, _) => "Error",
        _ => "",
    };
    let (uid, gid, groups) = pods.container_user(c)?;
    let user =
        cri::LinuxContainerUser { uid: uid.into(), gid: gid.into(), supplemental_groups: groups.into_iter().map(i64::from).collect() };
    Ok(cri::ContainerStatus {
        id: c.id.to_string(),
        metadata: Some(convert::container_metadata(c)),
        state: convert::container_state(status),
        created_at: c.created.unix_nanos(),
        started_at: st.started.map_or(0, |t| t.unix_nanos()),
        finished_at: st.finished.map_or(0, |t| t.unix_nanos()),
        exit_code: exit,
        image: Some(image_spec(c)),
        image_ref: c.image_id.clone().unwrap_or_else(|| image_spec(c).image),
        image_id: c.image_id.clone().unwrap_or_default(),
        reason: reason.into(),
        labels: convert::to_hash(&c.labels),
        annotations: convert::user_annotations(&c.annotations),
        log_path: c.log_path.display().to_string(),
        mounts: c.mounts.iter().map(cri_mount).collect(),
        resources: Some(cri::ContainerResources { linux: Some(cri_resources(&c.resources)), windows: None }),
        user: Some(cri::ContainerUser { linux: Some(user) }),
        ..Default::default()
    })
}

pub(super) fn cri_mount(m: &BindMount) -> cri::Mount {
    let propagation = match m.propagation {
        Propagation::Private => cri::MountPropagation::PropagationPrivate,
        Propagation::HostToContainer => cri::MountPropagation::PropagationHostToContainer,
        Propagation::Bidirectional => cri::MountPropagation::PropagationBidirectional,
    };
    cri::Mount {
        container_path: m.container.display().to_string(),
        host_path: m.host.display().to_string(),
        readonly: m.readonly,
        propagation: propagation as i32,
        ..Default::default()
    }
}

/// The limits as last set; 0 where a setting was left to the kernel.
pub(super) fn cri_resources(r: &Resources) -> cri::LinuxContainerResources {
    cri::LinuxContainerResources {
        cpu_period: r.cpu_period.unwrap_or(0) as i64,
        cpu_quota: r.cpu_quota.unwrap_or(0),
        cpu_shares: r.cpu_shares.unwrap_or(0) as i64,
        memory_limit_in_bytes: r.memory_limit.unwrap_or(0),
        memory_swap_limit_in_bytes: r.memory_swap.unwrap_or(0),
        cpuset_cpus: r.cpuset_cpus.clone().unwrap_or_default(),
        cpuset_mems: r.cpuset_mems.clone().unwrap_or_default(),
        hugepage_limits: r.hugepages.iter().map(|(page_size, &limit)| cri::HugepageLimit { page_size: page_size.clone(), limit }).collect(),
        unified: r.unified.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        ..Default::default()
    }
}

/// A container as ListContainers shows it; `None` while its CreateContainer is still
/// running (its record is written before its runtime state): a kubelet that saw it
/// listed would ask for its status and get NotFound.
pub(super) fn container(pods: &Pods, c: &ContainerRecord) -> Option<cri::Container> {
    let state = match pods.container_state(c) {
        Ok(s) => convert::container_state(s.live_status()),
        Err(PodError::Container(minipod_runtime::ContainerError::NotFound { .. })) => return None,
        Err(_) => cri::ContainerState::ContainerUnknown as i32,
    };
    Some(cri::Container {
        id: c.id.to_string(),
        pod_sandbox_id: c.pod.to_string(),
        metadata: Some(convert::container_metadata(c)),
        image: Some(image_spec(c)),
        image_ref: c.image_id.clone().unwrap_or_else(|| image_spec(c).image),
        image_id: c.image_id.clone().unwrap_or_default(),
        state,
        created_at: c.created.unix_nanos(),
        labels: convert::to_hash(&c.labels),
        annotations: convert::user_annotations(&c.annotations),
    })
}

pub(super) fn now_nanos() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

/// A filesystem use as the kubelet reads it; `mountpoint` is the directory measured.
pub(super) fn fs_usage(mountpoint: &std::path::Path, u: DiskUsage) -> cri::FilesystemUsage {
    cri::FilesystemUsage {
        timestamp: now_nanos(),
        fs_id: Some(cri::FilesystemIdentifier { mountpoint: mountpoint.display().to_string() }),
        used_bytes: Some(cri::UInt64Value { value: u.bytes }),
        inodes_used: Some(cri::UInt64Value { value: u.inodes }),
    }
}

pub(super) fn sandbox_status(pod: &PodRecord) -> cri::PodSandboxStatus {
    let state = convert::pod_state(pod);
    // A pod that is not ready has given its addresses back (a new pod may hold them
    // now): it reports none, as containerd's does once its namespace is closed.
    let network = (state == cri::PodSandboxState::SandboxReady as i32).then(|| cri::PodSandboxNetworkStatus {
        ip: pod.ip().map(|ip| ip.to_string()).unwrap_or_default(),
        additional_ips: pod
            .networks
            .iter()
            .skip(1)
            .map(|n| n.ip.to_string())
            .chain(pod.networks.iter().filter_map(|n| n.ip6).map(|ip| ip.to_string()))
            .map(|ip| cri::PodIp { ip })
            .collect(),
    });
    cri::PodSandboxStatus {
        id: pod.id.to_string(),
        metadata: Some(convert::pod_metadata(pod)),
        state,
        created_at: pod.created.unix_nanos(),
        network: Some(network.unwrap_or_default()),
        labels: convert::to_hash(&pod.labels),
        annotations: convert::user_annotations(&pod.annotations),
        ..Default::default()
    }
}
