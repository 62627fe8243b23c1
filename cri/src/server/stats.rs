//! Container and pod statistics (cgroup usage, writable layer, network counters)
//! as the CRI reports them.

use k8s_cri::v1 as cri;
use minipod_runtime::pod::{ContainerRecord, PodRecord, PodStatus};
use minipod_runtime::{PodError, Pods};

use super::convert;
use super::to_cri::{fs_usage, now_nanos};

/// CPU and memory of a container's cgroup, now.
pub(super) fn stats(pods: &Pods, c: &ContainerRecord) -> Result<cri::ContainerStats, PodError> {
    let st = pods.container_state(c)?;
    let usage = minipod_runtime::cgroups::Cgroup::from_paths(st.cgroup_paths.clone()).usage();
    let now = now_nanos();
    let layer = pods.writable_layer_usage(c)?;
    let value = |v: Option<u64>| v.map(|value| cri::UInt64Value { value });
    Ok(cri::ContainerStats {
        attributes: Some(cri::ContainerAttributes {
            id: c.id.to_string(),
            metadata: Some(convert::container_metadata(c)),
            labels: convert::to_hash(&c.labels),
            annotations: convert::user_annotations(&c.annotations),
        }),
        cpu: Some(cri::CpuUsage { timestamp: now, usage_core_nano_seconds: value(usage.cpu_nanos), usage_nano_cores: None }),
        memory: Some(cri::MemoryUsage {
            timestamp: now,
            working_set_bytes: value(usage.working_set()),
            usage_bytes: value(usage.memory_bytes),
            ..Default::default()
        }),
        writable_layer: Some(fs_usage(&pods.writable_layers_dir(), layer)),
        ..Default::default()
    })
}

/// A pod's stats: its containers', their CPU and memory summed, and its interfaces'
/// traffic (the first network's interface is the default one).
pub(super) fn pod_stats(pods: &Pods, pod: &PodRecord) -> Result<cri::PodSandboxStats, PodError> {
    let now = now_nanos();
    // Containers removed meanwhile simply drop out.
    let containers: Vec<cri::ContainerStats> = pods.containers(Some(&pod.id))?.iter().filter_map(|c| stats(pods, c).ok()).collect();
    let sum = |f: fn(&cri::ContainerStats) -> Option<u64>| {
        let values: Vec<u64> = containers.iter().filter_map(f).collect();
        (!values.is_empty()).then(|| cri::UInt64Value { value: values.iter().sum() })
    };
    let interface = |c: &minipod_runtime::netstack::netns::InterfaceCounters| cri::NetworkInterfaceUsage {
        name: c.name.clone(),
        rx_bytes: Some(cri::UInt64Value { value: c.rx_bytes }),
        rx_errors: Some(cri::UInt64Value { value: c.rx_errors }),
        tx_bytes: Some(cri::UInt64Value { value: c.tx_bytes }),
        tx_errors: Some(cri::UInt64Value { value: c.tx_errors }),
    };
    // A stopped pod has no namespace any more: no network stats, not an error.
    let counters = if pod.status == PodStatus::Ready { pods.network_counters(pod).unwrap_or_default() } else { vec![] };
    let default_ifname = pod.networks.first().map(|n| n.ifname.as_str());
    let network = (!counters.is_empty()).then(|| cri::NetworkUsage {
        timestamp: now,
        default_interface: counters.iter().find(|c| Some(c.name.as_str()) == default_ifname).map(interface),
        interfaces: counters.iter().map(interface).collect(),
    });
    Ok(cri::PodSandboxStats {
        attributes: Some(cri::PodSandboxAttributes {
            id: pod.id.to_string(),
            metadata: Some(convert::pod_metadata(pod)),
            labels: convert::to_hash(&pod.labels),
            annotations: convert::user_annotations(&pod.annotations),
        }),
        linux: Some(cri::LinuxPodSandboxStats {
            cpu: Some(cri::CpuUsage {
                timestamp: now,
                usage_core_nano_seconds: sum(|c| c.cpu.as_ref()?.usage_core_nano_seconds.as_ref().map(|v| v.value)),
                usage_nano_cores: None,
            }),
            memory: Some(cri::MemoryUsage {
                timestamp: now,
                working_set_bytes: sum(|c| c.memory.as_ref()?.working_set_bytes.as_ref().map(|v| v.value)),
                usage_bytes: sum(|c| c.memory.as_ref()?.usage_bytes.as_ref().map(|v| v.value)),
                ..Default::default()
            }),
            network,
            process: None,
            containers,
        }),
        windows: None,
    })
}
