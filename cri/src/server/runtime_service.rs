//! CRI RuntimeService on [`Pods`]: sandboxes are pods, containers are pod containers.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_server::RuntimeService;
use minipod_runtime::pod::{ContainerConfig, PodRecord, ProcessOverrides, RootfsSource};
use minipod_runtime::{PodError, Pods, Status as CtrStatus};
use tonic::{Request, Response, Status};

use super::convert::{self, ATTEMPT, NAME};
use super::from_cri::{self, mount, pod_config};
use super::stats::{pod_stats, stats};
use super::to_cri::{container, container_status, sandbox, sandbox_status};
use super::{blocking, limits, security, Server};

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

/// The ids of a pod's containers (none when the pod is gone).
fn pod_container_ids(pods: &Pods, pod: &str) -> Vec<String> {
    let Ok(pod) = pods.pod(pod) else { return vec![] };
    pods.containers(Some(&pod.id)).unwrap_or_default().iter().map(|c| c.id.to_string()).collect()
}

fn selects(labels: &BTreeMap<String, String>, selector: &std::collections::HashMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Why the runtime cannot work, if it cannot: its state dir is unreadable.
fn runtime_problem(pods: &Pods) -> Option<String> {
    pods.pods().err().map(|e| minipod_runtime::error_chain(&e))
}

/// Why pods' networking will not work, if it will not: the default network's record
/// is unreadable, or something outside minipod drops its traffic.
fn network_problem(pods: &Pods) -> Option<(&'static str, String)> {
    let name = pods.default_network();
    let problems = match pods.node().network(&name) {
        Ok(Some(_)) => pods.node().problems(&name),
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
        limits::sandbox(&cfg)?;
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
        limits::container(&cfg)?;
        let m = cfg.metadata.clone().ok_or_else(|| Status::invalid_argument("the container config has no metadata"))?;
        if m.name.is_empty() {
            return Err(Status::invalid_argument("the container metadata needs a name"));
        }
        let image = cfg.image.as_ref().map(|i| i.image.clone()).filter(|i| !i.is_empty());
        let image = image.ok_or_else(|| Status::invalid_argument("the container config names no image"))?;
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
        let log_path = from_cri::log_path(pod.log_dir.as_deref(), &cfg.log_path)?;
        let named_ports = match cfg.annotations.get(minipod_runtime::pod::KUBELET_PORTS_ANNOTATION) {
            Some(json) => minipod_runtime::pod::kubelet_named_ports(json).map_err(Status::invalid_argument)?,
            None => vec![],
        };
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
            let config = ContainerConfig {
                name: convert::container_name(&m)?,
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
                stdin: cfg.stdin,
                stdin_once: cfg.stdin_once,
                tty: cfg.tty,
                named_ports,
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
        // The CRI removes a running container too (it is killed first).
        blocking(&self.pods, move |p| p.remove_container_by_id(&id, true).inspect(|()| events.changed(p, &id))).await?;
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
        limits::command(&req.cmd)?;
        let timeout = (req.timeout > 0).then(|| Duration::from_secs(req.timeout as u64));
        // The timeout is the whole call's, as the kubelet's probe that sent it counts
        // it: a wait for a turn uses it up too, and the exec gets what is left.
        let asked = std::time::Instant::now();
        let turn = match timeout {
            None => super::EXEC_SYNC.take().await,
            Some(t) => tokio::time::timeout(t, super::EXEC_SYNC.take()).await.map_err(|_| no_turn_within(t))?,
        };
        let left = match timeout {
            None => None,
            Some(t) => Some(t.checked_sub(asked.elapsed()).filter(|left| !left.is_zero()).ok_or_else(|| no_turn_within(t))?),
        };
        let out = blocking(&self.pods, move |p| {
            let _turn = turn;
            p.exec(&p.container_by_id(&req.container_id)?, req.cmd, left).map_err(|e| match e {
                // Said with the timeout the client gave, not what the wait left of it.
                PodError::Container(minipod_runtime::ContainerError::ExecTimeout { id, .. }) => {
                    PodError::Container(minipod_runtime::ContainerError::ExecTimeout { id, secs: req.timeout as f64 })
                }
                e => e,
            })
        })
        .await?;
        Ok(Response::new(cri::ExecSyncResponse { stdout: out.stdout, stderr: out.stderr, exit_code: out.status.shell_code() }))
    }

    async fn exec(&self, req: Request<cri::ExecRequest>) -> Reply<cri::ExecResponse> {
        let req = req.into_inner();
        need(&req.container_id, "container_id")?;
        if req.cmd.is_empty() {
            return Err(Status::invalid_argument("cmd is empty"));
        }
        limits::command(&req.cmd)?;
        if !(req.stdin || req.stdout || req.stderr) {
            return Err(Status::invalid_argument("one of stdin, stdout and stderr must be set"));
        }
        if req.tty && req.stderr {
            return Err(Status::invalid_argument("tty and stderr cannot both be set: a terminal carries both outputs as one"));
        }
        let id = req.container_id.clone();
        let container = blocking(&self.pods, move |p| {
            let c = p.container_by_id(&id)?;
            match p.container_state(&c)?.live_status() {
                CtrStatus::Running => Ok(c),
                status => Err(PodError::Container(minipod_runtime::ContainerError::WrongState {
                    id: c.id.clone(),
                    op: "exec in",
                    status,
                    hint: "",
                })),
            }
        })
        .await?;
        let session = crate::streaming::ExecSession {
            container,
            cmd: req.cmd,
            tty: req.tty,
            stdin: req.stdin,
            stdout: req.stdout,
            stderr: req.stderr,
        };
        let url = self
            .streams
            .issue(crate::streaming::Session::Exec(Box::new(session)))
            .map_err(|e| Status::internal(format!("issuing a URL: {e}")))?;
        Ok(Response::new(cri::ExecResponse { url }))
    }

    async fn attach(&self, req: Request<cri::AttachRequest>) -> Reply<cri::AttachResponse> {
        let req = req.into_inner();
        need(&req.container_id, "container_id")?;
        if !(req.stdin || req.stdout || req.stderr) {
            return Err(Status::invalid_argument("one of stdin, stdout and stderr must be set"));
        }
        let id = req.container_id.clone();
        let container = blocking(&self.pods, move |p| p.container_by_id(&id)).await?;
        if req.tty && !container.tty {
            return Err(Status::invalid_argument(format!(
                "tty: container {} has no terminal (it was created without tty): attach without -t",
                container.id
            )));
        }
        if req.tty && req.stderr {
            return Err(Status::invalid_argument("tty and stderr cannot both be set: a terminal carries both outputs as one"));
        }
        let session = crate::streaming::AttachSession { container, stdin: req.stdin, stdout: req.stdout, stderr: req.stderr, tty: req.tty };
        let url = self
            .streams
            .issue(crate::streaming::Session::Attach(Box::new(session)))
            .map_err(|e| Status::internal(format!("issuing a URL: {e}")))?;
        Ok(Response::new(cri::AttachResponse { url }))
    }

    async fn port_forward(&self, req: Request<cri::PortForwardRequest>) -> Reply<cri::PortForwardResponse> {
        let req = req.into_inner();
        need(&req.pod_sandbox_id, "pod_sandbox_id")?;
        if let Some(bad) = req.port.iter().find(|p| !(1..=65535).contains(*p)) {
            return Err(Status::invalid_argument(format!("port {bad} is not 1 to 65535")));
        }
        let id = req.pod_sandbox_id.clone();
        let (pod, netns) = blocking(&self.pods, move |p| {
            let pod = p.pod(&id)?;
            if pod.status != minipod_runtime::pod::PodStatus::Ready {
                return Err(PodError::PodNotReady {
                    pod: pod.id.to_string(),
                    status: pod.status,
                    what: "port forwarding needs a ready pod",
                });
            }
            let netns = p.network_namespace(&pod)?;
            Ok((pod, netns))
        })
        .await?;
        let session = crate::streaming::PortForwardSession { netns, pod: pod.id.to_string() };
        let url = self
            .streams
            .issue(crate::streaming::Session::PortForward(session))
            .map_err(|e| Status::internal(format!("issuing a URL: {e}")))?;
        Ok(Response::new(cri::PortForwardResponse { url }))
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

    async fn update_runtime_config(&self, req: Request<cri::UpdateRuntimeConfigRequest>) -> Reply<cri::UpdateRuntimeConfigResponse> {
        // The Node's spec.podCIDR: the subnet this node's new pods get addresses from.
        let cidr = req.into_inner().runtime_config.and_then(|c| c.network_config).map(|n| n.pod_cidr).unwrap_or_default();
        if cidr.is_empty() {
            return Ok(Response::new(cri::UpdateRuntimeConfigResponse {}));
        }
        // Dual-stack nodes get "v4,v6".
        let mut v4 = None;
        for part in cidr.split(',').map(str::trim) {
            match part.parse::<ipnetwork::IpNetwork>() {
                Ok(ipnetwork::IpNetwork::V4(n)) if v4.is_none() => v4 = Some(n),
                Ok(ipnetwork::IpNetwork::V4(_)) => return Err(Status::invalid_argument(format!("pod_cidr {cidr:?}: two IPv4 CIDRs"))),
                Ok(ipnetwork::IpNetwork::V6(_)) => {
                    return Err(Status::invalid_argument(format!("pod_cidr {cidr:?}: IPv6 pod CIDRs are not built in minipod yet")))
                }
                Err(e) => return Err(Status::invalid_argument(format!("pod_cidr {part:?}: {e}: give a CIDR such as 10.244.1.0/24"))),
            }
        }
        let Some(v4) = v4 else { return Err(Status::invalid_argument(format!("pod_cidr {cidr:?} holds no IPv4 CIDR"))) };
        blocking(&self.pods, move |p| p.use_pod_cidr(v4)).await?;
        if let Some(o) = &self.overlay {
            o.join_and_follow(&self.pods).await.map_err(|e| Status::failed_precondition(format!("{e:#}")))?;
        }
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

/// An ExecSync whose timeout passed while it waited for a turn to run.
fn no_turn_within(timeout: Duration) -> Status {
    Status::deadline_exceeded(format!(
        "the exec's timeout of {}s passed while it waited for a turn: all {} that may run at once in this daemon are \
         running; it was not started",
        timeout.as_secs(),
        super::EXEC_SYNC.size()
    ))
}
