//! Pods: made (namespaces, networks, /etc files), stopped, removed, disowned.

use super::*;

/// What a pod is made from.
#[derive(Debug, Clone)]
pub struct PodConfig {
    pub name: PodName,
    pub hostname: Option<Hostname>,
    /// `default` unless told: services select pods of their namespace by label.
    pub namespace: Namespace,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// Networks to join, the first carrying the default route and the ports; empty
    /// means the runtime's default network.
    pub networks: Vec<NetworkName>,
    pub ports: Vec<PortMapping>,
    /// DNS names besides the pod's name.
    pub aliases: Vec<Alias>,
    pub dns: Option<DnsConfig>,
    pub log_dir: Option<PathBuf>,
    /// One PID namespace for all containers of the pod (Kubernetes'
    /// shareProcessNamespace), held by a small PID 1 of the pod's own.
    pub share_pid: bool,
    /// The cgroup that holds the pod's containers (a kubelet's
    /// `/kubepods/burstable/pod<uid>`); default: each container under `minipod/`.
    pub cgroup_parent: Option<PathBuf>,
    /// Containers use the node's IPC namespace instead of the pod's.
    pub host_ipc: bool,
    /// Containers use the node's network namespace (the one this runtime's pods are
    /// wired in) and the node's hostname: a kubelet's `hostNetwork` pod. It joins no
    /// network, so it takes no networks, aliases or port mappings but identity ones
    /// (host port = container port), which the node's own stack serves as they are.
    pub host_network: bool,
    /// Namespaced sysctls set in the pod's namespaces (by each container as it starts).
    pub sysctls: BTreeMap<String, String>,
    /// Ports declared by name (a Kubernetes container's `ports`), for Services'
    /// `targetPort`s and NetworkPolicies' ports that give a name.
    pub named_ports: Vec<NamedPort>,
}

impl PodConfig {
    /// A pod named `name`, on the runtime's default network, with nothing else set.
    pub fn new(name: PodName) -> Self {
        Self {
            name,
            hostname: None,
            namespace: Namespace::default(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            networks: vec![],
            ports: vec![],
            aliases: vec![],
            dns: None,
            log_dir: None,
            share_pid: false,
            cgroup_parent: None,
            host_ipc: false,
            host_network: false,
            sysctls: BTreeMap::new(),
            named_ports: vec![],
        }
    }
}

/// The address of `pod` that is reachable from the node (its first network).
pub fn pod_ip(pod: &PodRecord) -> Option<IpAddr> {
    pod.ip().map(IpAddr::V4)
}

impl Pods {
    /// Traffic counters of the pod's interfaces (lo left out), for stats.
    pub fn network_counters(&self, pod: &PodRecord) -> Result<Vec<netstack::netns::InterfaceCounters>> {
        if pod.host_network {
            // The node's interfaces are not the pod's to report.
            return Ok(vec![]);
        }
        Ok(netstack::netns::Netns::open(&self.pod_dir(&pod.id).join("ns/net"))?.interface_counters()?)
    }

    /// The network namespace the pod's containers live in: its own, or the node's for
    /// a host-network pod.
    pub fn network_namespace(&self, pod: &PodRecord) -> Result<netstack::netns::Netns> {
        if pod.host_network {
            return Ok(self.node.node().netns().try_clone()?);
        }
        Ok(netstack::netns::Netns::open(&self.pod_dir(&pod.id).join("ns/net"))?)
    }

    /// Creates a pod: namespaces, networks, /etc files. Undone completely on failure.
    pub fn create_pod(&self, cfg: PodConfig) -> Result<PodRecord> {
        let hostname = if cfg.host_network {
            // The node's UTS namespace: its name is the pod's.
            let node = nix::unistd::gethostname().map_err(PodError::NodeHostname)?;
            let node = node.to_string_lossy().into_owned();
            if cfg.hostname.as_ref().is_some_and(|h| *h != node.as_str()) {
                return Err(ConfigError::HostNetworkHostname { node }.into());
            }
            Hostname::new(node)?
        } else {
            cfg.hostname.clone().unwrap_or_else(|| cfg.name.clone().into())
        };
        if let Some(dns) = &cfg.dns {
            if let Some(bad) =
                dns.servers.iter().chain(&dns.searches).chain(&dns.options).find(|v| v.is_empty() || v.contains(char::is_whitespace))
            {
                return Err(ConfigError::DnsSetting(bad.clone()).into());
            }
        }
        if let Some(parent) = &cfg.cgroup_parent {
            if parent.components().any(|c| !matches!(c, std::path::Component::Normal(_) | std::path::Component::RootDir))
                || parent.as_os_str().len() > 4096
            {
                return Err(ConfigError::CgroupParent(parent.clone()).into());
            }
        }
        if cfg.host_network {
            if !cfg.networks.is_empty() || !cfg.aliases.is_empty() {
                return Err(ConfigError::HostNetworkJoins.into());
            }
            if let Some(p) = cfg.ports.iter().find(|p| p.host_port != p.container_port) {
                return Err(ConfigError::HostNetworkPort { host_port: p.host_port, container_port: p.container_port }.into());
            }
            if let Some(key) = cfg.sysctls.keys().find(|k| k.starts_with("net.")) {
                return Err(ConfigError::HostNetworkSysctl(key.clone()).into());
            }
        }
        let mut named_ports = Vec::new();
        add_named_ports(&mut named_ports, &cfg.named_ports).map_err(ConfigError::NamedPort)?;
        let networks = if cfg.host_network {
            vec![]
        } else if cfg.networks.is_empty() {
            vec![self.default_network()]
        } else {
            cfg.networks.clone()
        };
        for (i, n) in networks.iter().enumerate() {
            if networks[..i].contains(n) {
                return Err(ConfigError::NetworkTwice(n.clone()).into());
            }
            if *n != NetworkConfig::default_network().name && self.node.node().network(n)?.is_none() {
                return Err(NetworkError::NoSuchNetwork(n.clone()).into());
            }
        }
        let id = PodId::random();
        let dir = self.pod_dir(&id);
        let mut pod = PodRecord {
            id: id.clone(),
            name: cfg.name.clone(),
            scope: self.scope.clone(),
            status: PodStatus::Creating,
            hostname,
            namespace: cfg.namespace.clone(),
            labels: cfg.labels.clone(),
            annotations: cfg.annotations.clone(),
            created: crate::time::Timestamp::now(),
            // Owned while being made, also when it is to outlive us: a crash mid-way
            // leaves a pod the next sweep removes.
            owner: Some(Owner::me()),
            node: self.node_ref.clone(),
            networks: vec![],
            ports: cfg.ports.clone(),
            aliases: cfg.aliases.clone(),
            dns: cfg.dns.clone(),
            log_dir: cfg.log_dir.clone(),
            pid_holder: None,
            cgroup_parent: cfg.cgroup_parent.clone(),
            host_ipc: cfg.host_ipc,
            host_network: cfg.host_network,
            sysctls: cfg.sysctls.clone(),
            removing: false,
            unready: vec![],
            named_ports,
        };
        {
            // Put together under a temporary name and renamed into place, so that a pod
            // directory always holds its record: a crash leaves a whole pod (which its
            // owner's death gets swept) or a temporary directory (swept too), never a
            // directory that no listing shows and no removal finds.
            let staging = netstack::record::temp_path(&dir);
            let made = std::fs::create_dir_all(staging.join("ns"))
                .and_then(|()| std::fs::create_dir(staging.join("containers")))
                .map_err(io_err("creating", &staging))
                .and_then(|()| write_json(&staging.join(POD_FILE), &pod))
                .and_then(|()| std::fs::rename(&staging, &dir).map_err(io_err("renaming into place", &dir)));
            if let Err(e) = made {
                let _ = std::fs::remove_dir_all(&staging);
                return Err(e);
            }
            // Claimed through the name index, so that the check costs the same with one
            // pod or a thousand; after the record exists, so that a claim whose pod has
            // no record is stale and may be taken over.
            if let Err(e) = self.names().claim(&self.scope, &cfg.name, &id) {
                let _ = self.remove_pod_dir(&id);
                return Err(e);
            }
        }
        // Ready, isolated by the policies that select it (before anything runs in it),
        // then an endpoint of the services that select it.
        let ready = self.setup_pod(&mut pod, &networks, cfg.share_pid);
        match ready.and_then(|()| self.sync_policies_of(&pod)).and_then(|()| self.sync_services_of(&pod)) {
            Ok(()) => Ok(pod),
            Err(e) => {
                let _ = self.teardown(&pod);
                Err(e)
            }
        }
    }

    fn setup_pod(&self, pod: &mut PodRecord, networks: &[NetworkName], share_pid: bool) -> Result<()> {
        let dir = self.pod_dir(&pod.id);
        if share_pid {
            let (pid, start_time) = crate::process::spawn_pod_init().map_err(PodError::PidHolder)?;
            pod.pid_holder = Some(Owner { pid, start_time });
            self.save_pod(pod)?;
        }
        let (net, ipc, uts) = (dir.join("ns/net"), dir.join("ns/ipc"), dir.join("ns/uts"));
        let hostname = pod.hostname.clone();
        if pod.host_network {
            netstack::netns::create_pinned_set(&[("ipc", &ipc)], || Ok(()))?;
        } else {
            netstack::netns::create_pinned_set(&[("net", &net), ("ipc", &ipc), ("uts", &uts)], move || {
                nix::unistd::sethostname(hostname.as_str())
            })?;
        }
        let owner = OwnerId::new(pod.id.as_str())?;
        let names: Vec<String> =
            std::iter::once(pod.name.as_str()).chain(pod.aliases.iter().map(Alias::as_str)).map(str::to_string).collect();
        let mut resolv = String::new();
        for (i, name) in networks.iter().enumerate() {
            let req = AttachRequest {
                ifname: IfName::new(format!("eth{i}"))?,
                ports: if i == 0 { pod.ports.clone() } else { vec![] },
                dns_names: names.clone(),
                default_route: i == 0,
                ..AttachRequest::new(owner.clone(), net.clone())
            };
            let wired = self.node.attach(name, req)?;
            if i == 0 {
                resolv = wired.resolv_conf.clone();
            }
            pod.networks.push(PodNetwork { network: name.clone(), ip: wired.ip, ip6: wired.ip6, ifname: wired.ifname.to_string() });
            // Recorded at once: a failure at the next network detaches this one.
            self.save_pod(pod)?;
        }
        if pod.host_network {
            // The node's resolver, as a kubelet gives a host-network pod.
            resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        }
        let mut resolv = files::resolv_conf(pod.dns.as_ref(), &resolv);
        // The node's DNS server answers service names: the pod finds them by their short
        // names, as in Kubernetes (a CRI pod gets the search path its kubelet sends).
        if pod.dns.is_none() {
            if let Some(first) = networks.first() {
                if self.node.node().network(first)?.is_some_and(|c| c.dns) {
                    resolv.push_str(&files::cluster_search(&pod.namespace, &self.cluster_domain));
                }
            }
        }
        files::write(&dir.join("etc"), pod, &resolv).map_err(io_err("writing the /etc files of", &dir))?;
        pod.status = PodStatus::Ready;
        if self.keep_pods {
            pod.owner = None;
        }
        self.save_pod(pod)
    }

    /// Stops every container (SIGTERM, then SIGKILL after `timeout`) and detaches the
    /// pod from its networks; its record stays until [`Pods::remove_pod`]. Idempotent.
    pub fn stop_pod(&self, name_or_id: &str, timeout: Duration) -> Result<PodRecord> {
        let pod = self.pod(name_or_id)?;
        // Under the pod's lock: a remove running alongside waits, or has finished and
        // the pod is gone (which a stop, like a remove, takes quietly above it).
        let Some(_lock) = self.pod_lock(&pod.id, nix::fcntl::FlockArg::LockExclusive)? else {
            return Err(PodError::NoSuchPod(name_or_id.to_string()));
        };
        let mut pod = self.pod(pod.id.as_str())?;
        if pod.status != PodStatus::Stopped && pod.status != PodStatus::Stopping {
            // The intent, before the first step: from here on the pod is not ready, and
            // a stop that a crash cuts short is finished by the next open.
            pod.status = PodStatus::Stopping;
            self.save_pod(&pod)?;
            // Out of its services before its containers get their signal, as Kubernetes
            // takes a terminating pod out of its endpoints; a failure here leaves the
            // endpoint to the next change of the service, and does not keep the pod up.
            if let Err(e) = self.sync_services_of(&pod) {
                tracing::warn!(pod = %pod.name, "taking the pod out of its services: {e}");
            }
        }
        for c in self.containers(Some(&pod.id))? {
            self.stop_container_record(&c, timeout)?;
        }
        if pod.status == PodStatus::Stopped {
            return Ok(pod);
        }
        self.detach_all(&pod, false)?;
        pod.status = PodStatus::Stopped;
        self.save_pod(&pod)?;
        // Its addresses are free now: out of every policy's peers and members.
        if let Err(e) = self.sync_policies_of(&pod) {
            tracing::warn!(pod = %pod.name, "taking the pod out of the network policies: {e}");
        }
        Ok(pod)
    }

    fn detach_all(&self, pod: &PodRecord, released: bool) -> Result<()> {
        let owner = OwnerId::new(pod.id.as_str())?;
        let node = self.node_for(pod)?;
        for n in &pod.networks {
            if released {
                node.detach_released(&n.network, &owner)?;
            } else {
                node.detach(&n.network, &owner)?;
            }
        }
        Ok(())
    }

    fn node_for(&self, pod: &PodRecord) -> Result<netstack::BlockingNode> {
        self.node_at(&pod.node)
    }

    /// The node `node` names: this runtime's own, or another one opened for the call.
    pub(crate) fn node_at(&self, node: &NodeRef) -> Result<netstack::BlockingNode> {
        if *node == self.node_ref {
            return Ok(self.node.clone());
        }
        Ok(netstack::BlockingNode::open(&node.state_dir, node.netns.as_deref(), self.executor.clone())?)
    }

    /// Removes a pod: containers, networks, namespaces, files. Refuses while a
    /// container runs unless `force`. Removing a pod that is gone is not an error.
    pub fn remove_pod(&self, name_or_id: &str, force: bool) -> Result<()> {
        let pod = match self.pod(name_or_id) {
            Ok(p) => p,
            Err(PodError::NoSuchPod(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let containers = self.containers(Some(&pod.id))?;
        if !force {
            let running: Vec<&str> = containers
                .iter()
                .filter(|c| self.oci.state(&c.id).map(|s| s.live_status() == Status::Running).unwrap_or(false))
                .map(|c| c.name.as_str())
                .collect();
            if !running.is_empty() {
                return Err(PodError::PodBusy { pod: pod.name.to_string(), names: running.join(", ") });
            }
        }
        self.teardown(&pod)
    }

    /// Everything of `pod` goes, whatever state it is in.
    pub(super) fn teardown(&self, pod: &PodRecord) -> Result<()> {
        let Some(_lock) = self.pod_lock(&pod.id, nix::fcntl::FlockArg::LockExclusive)? else {
            // Removed by someone else while we waited.
            return Ok(());
        };
        // Re-read under the lock: a stop that came first has detached it already.
        let fresh = self.pod(pod.id.as_str());
        let mut pod = match fresh {
            Ok(fresh) => fresh,
            Err(PodError::NoSuchPod(_)) => return Ok(()),
            Err(_) => pod.clone(),
        };
        if !pod.removing {
            // The intent: a removal that a crash cuts short is finished by the next open.
            pod.removing = true;
            self.save_pod(&pod)?;
        }
        let pod = &pod;
        // Out of its services first, as in a stop; a failure leaves the endpoint to the
        // service's next change, and does not keep the pod.
        if let Err(e) = self.sync_services_of(pod) {
            tracing::warn!(pod = %pod.name, "taking the pod out of its services: {e}");
        }
        let mut failures = Failures::default();
        match self.containers(Some(&pod.id)) {
            Ok(containers) => {
                for c in containers {
                    failures.note(self.remove_container_record(&c, true));
                }
            }
            Err(e) => failures.note(Err(e)),
        }
        let what = format!("removing pod {}", pod.name);
        if !failures.is_empty() {
            // A process that may still run keeps the namespace and the address: freeing
            // the address now would hand it to the next pod twice.
            return failures.finish(what);
        }
        // The namespaces go right after: the kernel deletes the veths in the background.
        if pod.status != PodStatus::Stopped {
            match self.detach_all(pod, true) {
                // The node namespace is gone, and with it the bridge, the veths and the
                // rules: only records would be left, in a state dir that goes too.
                Err(PodError::Network(NetworkError::Netns(_))) if pod.node.netns.as_ref().is_some_and(|p| !p.exists()) => {}
                other => failures.note(other),
            }
        }
        if let Some(h) = pod.pid_holder {
            // Its containers are gone; nothing else lives in the namespace.
            let _ = crate::pidfd::signal(h.pid, h.start_time, libc::SIGKILL);
            crate::pidfd::wait_gone(h.pid, h.start_time, Duration::from_secs(5));
        }
        let dir = self.pod_dir(&pod.id);
        for ns in ["net", "ipc", "uts"] {
            failures.note(netstack::netns::remove_pinned(&dir.join("ns").join(ns)).map_err(PodError::from));
        }
        if !failures.is_empty() {
            return failures.finish(what);
        }
        self.remove_pod_dir(&pod.id)?;
        self.names().release(&pod.scope, &pod.name, &pod.id);
        if let Err(e) = self.sync_policies_of(pod) {
            tracing::warn!(pod = %pod.name, "taking the pod out of the network policies: {e}");
        }
        Ok(())
    }

    /// Takes a pod's directory away whole: renamed to a temporary name first, so that
    /// a crash halfway through the removal leaves a temporary directory the next sweep
    /// removes, not a pod directory without its record.
    pub(super) fn remove_pod_dir(&self, id: &PodId) -> Result<()> {
        let dir = self.pod_dir(id);
        let doomed = netstack::record::temp_path(&dir);
        match std::fs::rename(&dir, &doomed) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err("removing", &dir)(e)),
        }
        std::fs::remove_dir_all(&doomed).map_err(io_err("removing", &doomed))
    }

    /// Makes a pod outlive this process: it is no longer swept when the process is
    /// gone. It stays on its network; a runtime's own network is then kept too.
    pub fn disown(&self, id: &PodId) -> Result<PodRecord> {
        if self.instance.as_ref().is_some_and(|i| i.private_node.is_some()) {
            return Err(ConfigError::DisownOnPrivateNode.into());
        }
        let mut pod: PodRecord =
            netstack::record::read_json(&self.pod_dir(id).join(POD_FILE)).map_err(|_| PodError::NoSuchPod(id.to_string()))?;
        pod.owner = None;
        self.save_pod(&pod)?;
        Ok(pod)
    }
}
