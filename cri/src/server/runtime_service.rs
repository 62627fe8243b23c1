//! CRI RuntimeService on [`Pods`]: sandboxes are pods, containers are pod containers.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_server::RuntimeService;
use minipod_runtime::disk::DiskUsage;
use minipod_runtime::netstack::{PortMapping, Proto};
use minipod_runtime::pod::{
    BindMount, ContainerConfig, ContainerRecord, DnsConfig, PodConfig, PodRecord, PodStatus, ProcessOverrides, Propagation, Resources,
    RootfsSource,
};
use minipod_runtime::{PodError, Pods, Status as CtrStatus};
use tonic::{Request, Response, Status};

use super::convert::{self, ATTEMPT, NAME, NAMESPACE, UID};
use super::{blocking, security, Server};

type Reply<T> = Result<Response<T>, Status>;

fn unimplemented(what: &str) -> Status {
    Status::unimplemented(format!("{what} is not served by minipod yet"))
}

fn need(id: &str, what: &str) -> Result<(), Status> {
    if id.is_empty() {
        return Err(Status::invalid_argument(format!("{what} is empty")));
    }
    Ok(())
}

fn sandbox(p: &PodRecord) -> cri::PodSandbox {
    cri::PodSandbox {
        id: p.id.to_string(),
        metadata: Some(convert::pod_metadata(p)),
        state: convert::pod_state(p),
        created_at: convert::nanos(Some(&p.created)),
        labels: convert::to_hash(&p.labels),
        annotations: convert::user_annotations(&p.annotations),
        runtime_handler: String::new(),
    }
}

fn image_spec(c: &ContainerRecord) -> cri::ImageSpec {
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
        created_at: convert::nanos(Some(&c.created)),
        started_at: convert::nanos(st.started.as_deref()),
        finished_at: convert::nanos(st.finished.as_deref()),
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

fn cri_mount(m: &BindMount) -> cri::Mount {
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
fn cri_resources(r: &Resources) -> cri::LinuxContainerResources {
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

/// A container as ListContainers shows it; `None` while its CreateContainer is still
/// running (its record is written before its runtime state): a kubelet that saw it
/// listed would ask for its status and get NotFound.
fn container(pods: &Pods, c: &ContainerRecord) -> Option<cri::Container> {
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
        created_at: convert::nanos(Some(&c.created)),
        labels: convert::to_hash(&c.labels),
        annotations: convert::user_annotations(&c.annotations),
    })
}

/// CPU and memory of a container's cgroup, now.
fn stats(pods: &Pods, c: &ContainerRecord) -> Result<cri::ContainerStats, PodError> {
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
fn pod_stats(pods: &Pods, pod: &PodRecord) -> Result<cri::PodSandboxStats, PodError> {
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

/// A CRI mount as a bind mount, or the reason it cannot be made.
fn mount(m: &cri::Mount) -> Result<BindMount, Status> {
    let what = format!("mount {}", m.container_path);
    if m.image.is_some() {
        return Err(Status::unimplemented(format!("{what}: image volumes are not supported by minipod yet")));
    }
    if !m.uid_mappings.is_empty() || !m.gid_mappings.is_empty() {
        return Err(Status::failed_precondition(format!(
            "{what}: id-mapped mounts need user namespaces, which minipod does not support yet"
        )));
    }
    if m.recursive_read_only {
        return Err(Status::failed_precondition(format!("{what}: recursive read-only mounts are not supported by minipod yet")));
    }
    // selinux_relabel: nothing to relabel on a node without SELinux.
    let propagation = match m.propagation {
        x if x == cri::MountPropagation::PropagationPrivate as i32 => Propagation::Private,
        x if x == cri::MountPropagation::PropagationHostToContainer as i32 => Propagation::HostToContainer,
        x if x == cri::MountPropagation::PropagationBidirectional as i32 => Propagation::Bidirectional,
        x => return Err(Status::invalid_argument(format!("{what}: propagation {x} is unknown"))),
    };
    Ok(BindMount { host: m.host_path.clone().into(), container: m.container_path.clone().into(), readonly: m.readonly, propagation })
}

/// The ids of a pod's containers (none when the pod is gone).
fn pod_container_ids(pods: &Pods, pod: &str) -> Vec<String> {
    let Ok(pod) = pods.pod(pod) else { return vec![] };
    pods.containers(Some(&pod.id)).unwrap_or_default().iter().map(|c| c.id.to_string()).collect()
}

fn selects(labels: &BTreeMap<String, String>, selector: &std::collections::HashMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn pod_config(cfg: &cri::PodSandboxConfig) -> Result<PodConfig, Status> {
    let m = cfg.metadata.as_ref().ok_or_else(|| Status::invalid_argument("the sandbox config has no metadata"))?;
    if m.name.is_empty() || m.namespace.is_empty() {
        return Err(Status::invalid_argument("the sandbox metadata needs a name and a namespace"));
    }
    let mut annotations = convert::to_btree(&cfg.annotations);
    annotations.insert(NAME.into(), m.name.clone());
    annotations.insert(NAMESPACE.into(), m.namespace.clone());
    annotations.insert(UID.into(), m.uid.clone());
    annotations.insert(ATTEMPT.into(), m.attempt.to_string());
    let mut ports = Vec::new();
    for p in &cfg.port_mappings {
        if p.host_port == 0 {
            continue; // a container port without a host port publishes nothing
        }
        let proto = match p.protocol {
            x if x == cri::Protocol::Tcp as i32 => Proto::Tcp,
            x if x == cri::Protocol::Udp as i32 => Proto::Udp,
            _ => return Err(Status::invalid_argument("only TCP and UDP ports can be published")),
        };
        let port = |n: i32, what: &str| {
            u16::try_from(n).ok().filter(|p| *p != 0).ok_or_else(|| Status::invalid_argument(format!("{what} {n} is not a port")))
        };
        let host_ip = match p.host_ip.as_str() {
            "" | "0.0.0.0" => None,
            ip => Some(ip.parse::<Ipv4Addr>().map_err(|_| Status::invalid_argument(format!("host_ip {ip:?} is not an IPv4 address")))?),
        };
        ports.push(PortMapping {
            proto,
            host_port: port(p.host_port, "host_port")?,
            host_ip,
            container_port: port(p.container_port, "container_port")?,
        });
    }
    let opts = security::sandbox(cfg)?;
    if opts.privileged {
        annotations.insert(security::PRIVILEGED.into(), "true".into());
    }
    Ok(PodConfig {
        name: convert::pod_name(m),
        // A host-network pod has the node's name; an empty one means just that.
        hostname: match (cfg.hostname.is_empty(), opts.host_network) {
            (true, true) => None,
            (true, false) => Some(convert::label(&m.name, 63)),
            (false, _) => Some(cfg.hostname.clone()),
        },
        labels: convert::to_btree(&cfg.labels),
        annotations,
        networks: vec![],
        ports,
        // Other pods find it by its Kubernetes name (a host-network pod is on no
        // network to be found on).
        aliases: if opts.host_network { vec![] } else { vec![convert::label(&m.name, 63)] },
        dns: cfg.dns_config.as_ref().map(|d| DnsConfig {
            servers: d.servers.clone(),
            searches: d.searches.clone(),
            options: d.options.clone(),
        }),
        log_dir: (!cfg.log_directory.is_empty()).then(|| PathBuf::from(&cfg.log_directory)),
        share_pid: opts.share_pid,
        cgroup_parent: opts.cgroup_parent,
        host_ipc: opts.host_ipc,
        host_network: opts.host_network,
        sysctls: opts.sysctls,
    })
}

pub(super) fn sandbox_status(pod: &PodRecord) -> cri::PodSandboxStatus {
    cri::PodSandboxStatus {
        id: pod.id.to_string(),
        metadata: Some(convert::pod_metadata(pod)),
        state: convert::pod_state(pod),
        created_at: convert::nanos(Some(&pod.created)),
        network: Some(cri::PodSandboxNetworkStatus {
            ip: pod.ip().map(|ip| ip.to_string()).unwrap_or_default(),
            additional_ips: pod
                .networks
                .iter()
                .skip(1)
                .map(|n| n.ip.to_string())
                .chain(pod.networks.iter().filter_map(|n| n.ip6).map(|ip| ip.to_string()))
                .map(|ip| cri::PodIp { ip })
                .collect(),
        }),
        labels: convert::to_hash(&pod.labels),
        annotations: convert::user_annotations(&pod.annotations),
        ..Default::default()
    }
}

/// Why the runtime cannot work, if it cannot: its state dir is unreadable.
fn runtime_problem(pods: &Pods) -> Option<String> {
    pods.pods().err().map(|e| minipod_runtime::error_chain(&e))
}

/// Why pods' networking will not work, if it will not: the default network's record
/// is unreadable, or something outside minipod drops its traffic.
fn network_problem(pods: &Pods) -> Option<(&'static str, String)> {
    let name = pods.default_network();
    let problems = match pods.node().network(name) {
        Ok(Some(_)) => pods.node().problems(name),
        // Made with the first pod that joins it.
        Ok(None) => return None,
        Err(e) => Err(e),
    };
    match problems {
        Ok(p) if p.is_empty() => None,
        Ok(p) => Some(("NetworkBlocked", p.join("; "))),
        Err(e) => Some(("NetworkUnreadable", minipod_runtime::error_chain(&e))),
    }
}

#[tonic::async_trait]
impl RuntimeService for Server {
    async fn version(&self, _: Request<cri::VersionRequest>) -> Reply<cri::VersionResponse> {
        Ok(Response::new(cri::VersionResponse {
            version: "0.1.0".into(),
            runtime_name: "minipod".into(),
            runtime_version: env!("CARGO_PKG_VERSION").into(),
            runtime_api_version: "v1".into(),
        }))
    }

    async fn status(&self, _: Request<cri::StatusRequest>) -> Reply<cri::StatusResponse> {
        let (runtime, network) = blocking(&self.pods, |p| Ok((runtime_problem(p), network_problem(p)))).await?;
        let cond = |t: &str, problem: Option<(&str, String)>| cri::RuntimeCondition {
            r#type: t.into(),
            status: problem.is_none(),
            reason: problem.as_ref().map(|p| p.0.to_string()).unwrap_or_default(),
            message: problem.map(|p| p.1).unwrap_or_default(),
        };
        Ok(Response::new(cri::StatusResponse {
            status: Some(cri::RuntimeStatus {
                conditions: vec![cond("RuntimeReady", runtime.map(|m| ("StateUnreadable", m))), cond("NetworkReady", network)],
            }),
            runtime_handlers: vec![cri::RuntimeHandler {
                name: String::new(),
                features: Some(cri::RuntimeHandlerFeatures { recursive_read_only_mounts: false, user_namespaces: false }),
            }],
            features: Some(cri::RuntimeFeatures { supplemental_groups_policy: true }),
            ..Default::default()
        }))
    }

    async fn run_pod_sandbox(&self, req: Request<cri::RunPodSandboxRequest>) -> Reply<cri::RunPodSandboxResponse> {
        let cfg = req.into_inner().config.ok_or_else(|| Status::invalid_argument("no sandbox config"))?;
        let cfg = pod_config(&cfg)?;
        let pod = blocking(&self.pods, move |p| p.create_pod(cfg)).await?;
        Ok(Response::new(cri::RunPodSandboxResponse { pod_sandbox_id: pod.id.to_string() }))
    }

    async fn stop_pod_sandbox(&self, req: Request<cri::StopPodSandboxRequest>) -> Reply<cri::StopPodSandboxResponse> {
        let id = req.into_inner().pod_sandbox_id;
        need(&id, "pod_sandbox_id")?;
        // The kubelet stopped the containers with their grace periods already.
        let events = self.events.clone();
        blocking(&self.pods, move |p| {
            let ids = pod_container_ids(p, &id);
            let stopped = match p.stop_pod(&id, Duration::ZERO) {
                Ok(_) | Err(PodError::NoSuchPod(_)) => Ok(()),
                Err(e) => Err(e),
            };
            ids.iter().for_each(|c| events.changed(p, c));
            stopped
        })
        .await?;
        Ok(Response::new(cri::StopPodSandboxResponse {}))
    }

    async fn remove_pod_sandbox(&self, req: Request<cri::RemovePodSandboxRequest>) -> Reply<cri::RemovePodSandboxResponse> {
        let id = req.into_inner().pod_sandbox_id;
        need(&id, "pod_sandbox_id")?;
        let events = self.events.clone();
        blocking(&self.pods, move |p| {
            let ids = pod_container_ids(p, &id);
            let removed = p.remove_pod(&id, true);
            ids.iter().for_each(|c| events.changed(p, c));
            removed
        })
        .await?;
        Ok(Response::new(cri::RemovePodSandboxResponse {}))
    }

    async fn pod_sandbox_status(&self, req: Request<cri::PodSandboxStatusRequest>) -> Reply<cri::PodSandboxStatusResponse> {
        let id = req.into_inner().pod_sandbox_id;
        need(&id, "pod_sandbox_id")?;
        let pod = blocking(&self.pods, move |p| p.pod(&id)).await?;
        Ok(Response::new(cri::PodSandboxStatusResponse { status: Some(sandbox_status(&pod)), ..Default::default() }))
    }

    async fn list_pod_sandbox(&self, req: Request<cri::ListPodSandboxRequest>) -> Reply<cri::ListPodSandboxResponse> {
        let filter = req.into_inner().filter.unwrap_or_default();
        let pods = blocking(&self.pods, |p| p.pods()).await?;
        let items = pods
            .iter()
            .filter(|p| filter.id.is_empty() || p.id.as_str().starts_with(&filter.id))
            .filter(|p| filter.state.as_ref().is_none_or(|s| s.state == convert::pod_state(p)))
            .filter(|p| selects(&p.labels, &filter.label_selector))
            .map(sandbox)
            .collect();
        Ok(Response::new(cri::ListPodSandboxResponse { items }))
    }

    async fn create_container(&self, req: Request<cri::CreateContainerRequest>) -> Reply<cri::CreateContainerResponse> {
        let req = req.into_inner();
        need(&req.pod_sandbox_id, "pod_sandbox_id")?;
        let cfg = req.config.ok_or_else(|| Status::invalid_argument("no container config"))?;
        let m = cfg.metadata.clone().ok_or_else(|| Status::invalid_argument("the container config has no metadata"))?;
        if m.name.is_empty() {
            return Err(Status::invalid_argument("the container metadata needs a name"));
        }
        let image = cfg.image.as_ref().map(|i| i.image.clone()).filter(|i| !i.is_empty());
        let image = image.ok_or_else(|| Status::invalid_argument("the container config names no image"))?;
        if cfg.tty || cfg.stdin {
            return Err(Status::invalid_argument("tty and stdin are not supported yet"));
        }
        let pod_id = req.pod_sandbox_id.clone();
        let pod = blocking(&self.pods, move |p| p.pod(&pod_id)).await?;
        let target_pid = match security::target_id(&cfg) {
            Some(target) => {
                let target = target.to_string();
                let state = blocking(&self.pods, move |p| p.container_state(&p.container_by_id(&target)?)).await?;
                state.pid.filter(|_| state.live_status() == CtrStatus::Running)
            }
            None => None,
        };
        let privileged = pod.annotations.get(security::PRIVILEGED).is_some_and(|v| v == "true");
        let (sec, resources, oom) = security::container(&cfg, privileged, pod.host_network, target_pid)?;
        let mounts = cfg.mounts.iter().map(mount).collect::<Result<Vec<_>, _>>()?;
        let events = self.events.clone();
        let created = blocking(&self.pods, move |pods| {
            let img = pods.images().get(&image)?;
            // CRI: command replaces the entrypoint, args the cmd.
            let args = match (cfg.command.is_empty(), cfg.args.is_empty()) {
                (true, true) => None,
                (false, _) => Some(cfg.command.iter().chain(&cfg.args).cloned().collect()),
                (true, false) => Some(img.config.entrypoint.iter().chain(&cfg.args).cloned().collect()),
            };
            let mut annotations = convert::to_btree(&cfg.annotations);
            annotations.insert(NAME.into(), m.name.clone());
            annotations.insert(ATTEMPT.into(), m.attempt.to_string());
            let log_path = match (&pod.log_dir, cfg.log_path.is_empty()) {
                (Some(dir), false) => Some(dir.join(&cfg.log_path)),
                _ => None,
            };
            let config = ContainerConfig {
                name: convert::container_name(&m),
                source: RootfsSource::Image(image.clone()),
                process: ProcessOverrides {
                    args,
                    env: cfg.envs.iter().map(|kv| format!("{}={}", kv.key, kv.value)).collect(),
                    workdir: (!cfg.working_dir.is_empty()).then(|| cfg.working_dir.clone()),
                    user: None,
                    oom_score_adj: oom,
                },
                mounts,
                security: sec,
                resources,
                labels: convert::to_btree(&cfg.labels),
                annotations,
                log_path,
                attempt: m.attempt,
            };
            pods.create_container(pod.id.as_str(), config).inspect(|c| events.changed(pods, c.id.as_str()))
        })
        .await?;
        Ok(Response::new(cri::CreateContainerResponse { container_id: created.id.to_string() }))
    }

    async fn start_container(&self, req: Request<cri::StartContainerRequest>) -> Reply<cri::StartContainerResponse> {
        let id = req.into_inner().container_id;
        need(&id, "container_id")?;
        let events = self.events.clone();
        blocking(&self.pods, move |p| p.start_container(&p.container_by_id(&id)?).inspect(|()| events.changed(p, &id))).await?;
        Ok(Response::new(cri::StartContainerResponse {}))
    }

    async fn stop_container(&self, req: Request<cri::StopContainerRequest>) -> Reply<cri::StopContainerResponse> {
        let req = req.into_inner();
        need(&req.container_id, "container_id")?;
        let timeout = Duration::from_secs(req.timeout.max(0) as u64);
        let events = self.events.clone();
        blocking(&self.pods, move |p| match p.container_by_id(&req.container_id) {
            Ok(c) => p.stop_container_record(&c, timeout).inspect(|()| events.changed(p, &req.container_id)),
            Err(PodError::NoSuchContainer { .. }) => Ok(()),
            Err(e) => Err(e),
        })
        .await?;
        Ok(Response::new(cri::StopContainerResponse {}))
    }

    async fn remove_container(&self, req: Request<cri::RemoveContainerRequest>) -> Reply<cri::RemoveContainerResponse> {
        let id = req.into_inner().container_id;
        need(&id, "container_id")?;
        let events = self.events.clone();
        blocking(&self.pods, move |p| match p.container_by_id(&id) {
            Ok(c) => p.remove_container_record(&c, true).inspect(|()| events.changed(p, &id)),
            Err(PodError::NoSuchContainer { .. }) => Ok(()),
            Err(e) => Err(e),
        })
        .await?;
        Ok(Response::new(cri::RemoveContainerResponse {}))
    }

    async fn list_containers(&self, req: Request<cri::ListContainersRequest>) -> Reply<cri::ListContainersResponse> {
        let filter = req.into_inner().filter.unwrap_or_default();
        let containers = blocking(&self.pods, move |p| {
            let all = p.containers(None)?;
            Ok(all
                .iter()
                .filter(|c| filter.id.is_empty() || c.id.as_str().starts_with(&filter.id))
                .filter(|c| filter.pod_sandbox_id.is_empty() || c.pod.as_str().starts_with(&filter.pod_sandbox_id))
                .filter(|c| selects(&c.labels, &filter.label_selector))
                .filter_map(|c| container(p, c))
                .filter(|c| filter.state.as_ref().is_none_or(|s| s.state == c.state))
                .collect())
        })
        .await?;
        Ok(Response::new(cri::ListContainersResponse { containers }))
    }

    async fn container_status(&self, req: Request<cri::ContainerStatusRequest>) -> Reply<cri::ContainerStatusResponse> {
        let id = req.into_inner().container_id;
        need(&id, "container_id")?;
        let status = blocking(&self.pods, move |p| container_status(p, &p.container_by_id(&id)?)).await?;
        Ok(Response::new(cri::ContainerStatusResponse { status: Some(status), ..Default::default() }))
    }

    async fn update_container_resources(
        &self,
        req: Request<cri::UpdateContainerResourcesRequest>,
    ) -> Reply<cri::UpdateContainerResourcesResponse> {
        let req = req.into_inner();
        need(&req.container_id, "container_id")?;
        let linux = req.linux.ok_or_else(|| Status::invalid_argument("linux: no resources to update"))?;
        let (resources, oom_score_adj) = security::resources(&linux)?;
        if oom_score_adj.is_some_and(|v| v != 0) {
            // The score belongs to the container's processes, set when each starts.
            return Err(Status::invalid_argument("linux.oom_score_adj: a running container's OOM score cannot be changed; recreate it"));
        }
        blocking(&self.pods, move |p| p.update_container_resources(&p.container_by_id(&req.container_id)?, &resources)).await?;
        Ok(Response::new(cri::UpdateContainerResourcesResponse {}))
    }

    async fn reopen_container_log(&self, req: Request<cri::ReopenContainerLogRequest>) -> Reply<cri::ReopenContainerLogResponse> {
        let id = req.into_inner().container_id;
        need(&id, "container_id")?;
        blocking(&self.pods, move |p| Ok(p.runtime().reopen_log(&p.container_by_id(&id)?.id)?)).await?;
        Ok(Response::new(cri::ReopenContainerLogResponse {}))
    }

    async fn exec_sync(&self, req: Request<cri::ExecSyncRequest>) -> Reply<cri::ExecSyncResponse> {
        let req = req.into_inner();
        need(&req.container_id, "container_id")?;
        if req.cmd.is_empty() {
            return Err(Status::invalid_argument("cmd is empty"));
        }
        let timeout = (req.timeout > 0).then(|| Duration::from_secs(req.timeout as u64));
        let out = blocking(&self.pods, move |p| p.exec(&p.container_by_id(&req.container_id)?, req.cmd, timeout)).await?;
        Ok(Response::new(cri::ExecSyncResponse { stdout: out.stdout, stderr: out.stderr, exit_code: out.status.shell_code() }))
    }

    async fn exec(&self, _: Request<cri::ExecRequest>) -> Reply<cri::ExecResponse> {
        Err(unimplemented("Exec (streaming; use ExecSync)"))
    }

    async fn attach(&self, _: Request<cri::AttachRequest>) -> Reply<cri::AttachResponse> {
        Err(unimplemented("Attach"))
    }

    async fn port_forward(&self, _: Request<cri::PortForwardRequest>) -> Reply<cri::PortForwardResponse> {
        Err(unimplemented("PortForward"))
    }

    async fn container_stats(&self, req: Request<cri::ContainerStatsRequest>) -> Reply<cri::ContainerStatsResponse> {
        let id = req.into_inner().container_id;
        need(&id, "container_id")?;
        let stats = blocking(&self.pods, move |p| stats(p, &p.container_by_id(&id)?)).await?;
        Ok(Response::new(cri::ContainerStatsResponse { stats: Some(stats) }))
    }

    async fn list_container_stats(&self, req: Request<cri::ListContainerStatsRequest>) -> Reply<cri::ListContainerStatsResponse> {
        let filter = req.into_inner().filter.unwrap_or_default();
        let stats = blocking(&self.pods, move |p| {
            let mut out = Vec::new();
            for c in p.containers(None)? {
                let wanted = (filter.id.is_empty() || c.id.as_str().starts_with(&filter.id))
                    && (filter.pod_sandbox_id.is_empty() || c.pod.as_str().starts_with(&filter.pod_sandbox_id))
                    && selects(&c.labels, &filter.label_selector);
                // Containers removed meanwhile simply drop out of the list.
                if let (true, Ok(s)) = (wanted, stats(p, &c)) {
                    out.push(s);
                }
            }
            Ok(out)
        })
        .await?;
        Ok(Response::new(cri::ListContainerStatsResponse { stats }))
    }

    async fn pod_sandbox_stats(&self, req: Request<cri::PodSandboxStatsRequest>) -> Reply<cri::PodSandboxStatsResponse> {
        let id = req.into_inner().pod_sandbox_id;
        need(&id, "pod_sandbox_id")?;
        let stats = blocking(&self.pods, move |p| pod_stats(p, &p.pod(&id)?)).await?;
        Ok(Response::new(cri::PodSandboxStatsResponse { stats: Some(stats) }))
    }

    async fn list_pod_sandbox_stats(&self, req: Request<cri::ListPodSandboxStatsRequest>) -> Reply<cri::ListPodSandboxStatsResponse> {
        let filter = req.into_inner().filter.unwrap_or_default();
        let stats = blocking(&self.pods, move |p| {
            let wanted = |pod: &PodRecord| {
                (filter.id.is_empty() || pod.id.as_str().starts_with(&filter.id)) && selects(&pod.labels, &filter.label_selector)
            };
            // Pods removed meanwhile simply drop out of the list.
            Ok(p.pods()?.iter().filter(|pod| wanted(pod)).filter_map(|pod| pod_stats(p, pod).ok()).collect())
        })
        .await?;
        Ok(Response::new(cri::ListPodSandboxStatsResponse { stats }))
    }

    async fn update_runtime_config(&self, _: Request<cri::UpdateRuntimeConfigRequest>) -> Reply<cri::UpdateRuntimeConfigResponse> {
        // The pod CIDR the kubelet sends is the network's; minipod's networks carry
        // their own subnets, so there is nothing to change.
        Ok(Response::new(cri::UpdateRuntimeConfigResponse {}))
    }

    async fn checkpoint_container(&self, _: Request<cri::CheckpointContainerRequest>) -> Reply<cri::CheckpointContainerResponse> {
        Err(unimplemented("CheckpointContainer"))
    }

    type GetContainerEventsStream = tonic::codegen::BoxStream<cri::ContainerEventResponse>;

    async fn get_container_events(&self, _: Request<cri::GetEventsRequest>) -> Reply<Self::GetContainerEventsStream> {
        use tokio_stream::StreamExt;
        let events = self.events.clone();
        let rx = blocking(&self.pods, move |p| Ok(events.subscribe(p))).await?;
        // A listener that fell behind lost events: the stream ends with that said, and
        // the kubelet relists, as it does when the stream breaks.
        let stream = tokio_stream::wrappers::BroadcastStream::new(rx).map(|e| {
            e.map_err(|tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(n)| {
                Status::data_loss(format!("{n} container events were dropped while this listener fell behind: list the containers again"))
            })
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_metric_descriptors(&self, _: Request<cri::ListMetricDescriptorsRequest>) -> Reply<cri::ListMetricDescriptorsResponse> {
        Err(unimplemented("ListMetricDescriptors"))
    }

    async fn list_pod_sandbox_metrics(&self, _: Request<cri::ListPodSandboxMetricsRequest>) -> Reply<cri::ListPodSandboxMetricsResponse> {
        Err(unimplemented("ListPodSandboxMetrics"))
    }

    async fn runtime_config(&self, _: Request<cri::RuntimeConfigRequest>) -> Reply<cri::RuntimeConfigResponse> {
        // Cgroups are directories minipod makes under each controller, as cgroupfs does;
        // no systemd units.
        Ok(Response::new(cri::RuntimeConfigResponse {
            linux: Some(cri::LinuxRuntimeConfiguration { cgroup_driver: cri::CgroupDriver::Cgroupfs as i32 }),
        }))
    }
}
