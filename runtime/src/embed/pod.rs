//! Pods of the embedding API: built, started, waited for, removed on drop.

use super::*;

/// A pod being described; [`PodBuilder::start`] makes it.
pub struct PodBuilder {
    pub(super) rt: Arc<Inner>,
    /// The first bad argument seen while building is kept here and reported by `start`.
    pub(super) cfg: Result<PodConfig>,
}

impl PodBuilder {
    fn edit<R>(mut self, f: impl FnOnce(&mut PodConfig) -> R) -> Self {
        if let Ok(c) = &mut self.cfg {
            f(c);
        }
        self
    }

    /// Puts a checked `value` into the config, or keeps its error for `start`.
    fn try_edit<T>(mut self, value: Result<T, NameError>, put: impl FnOnce(&mut PodConfig, T)) -> Self {
        match (&mut self.cfg, value) {
            (Ok(c), Ok(v)) => put(c, v),
            (Ok(_), Err(e)) => self.cfg = Err(e.into()),
            (Err(_), _) => {}
        }
        self
    }

    /// The Kubernetes namespace (default `default`): services select pods of their own,
    /// and the pod's DNS search path starts with `NAMESPACE.svc.DOMAIN`.
    pub fn namespace(self, namespace: &str) -> Self {
        self.try_edit(Namespace::new(namespace), |c, n| c.namespace = n)
    }

    pub fn label(self, key: &str, value: &str) -> Self {
        self.edit(|c| c.labels.insert(key.into(), value.into()))
    }

    pub fn annotation(self, key: &str, value: &str) -> Self {
        self.edit(|c| c.annotations.insert(key.into(), value.into()))
    }

    pub fn hostname(self, hostname: &str) -> Self {
        self.try_edit(Hostname::new(hostname), |c, h| c.hostname = Some(h))
    }

    /// Joins network `name` (in order; the first carries the default route and ports).
    pub fn network(self, name: &str) -> Self {
        self.try_edit(NetworkName::new(name), |c, n| c.networks.push(n))
    }

    /// Another DNS name for the pod on its networks.
    pub fn alias(self, name: &str) -> Self {
        self.try_edit(Alias::new(name), |c, a| c.aliases.push(a))
    }

    /// Publishes TCP `host_port` on every node address to the pod's `container_port`.
    pub fn publish(self, host_port: u16, container_port: u16) -> Self {
        self.publish_port(PortMapping { proto: Proto::Tcp, host_port, host_ip: None, container_port })
    }

    /// Publishes UDP `host_port` to the pod's `container_port`.
    pub fn publish_udp(self, host_port: u16, container_port: u16) -> Self {
        self.publish_port(PortMapping { proto: Proto::Udp, host_port, host_ip: None, container_port })
    }

    /// Declares the pod's TCP port `port` by `name` (a Kubernetes container's
    /// `ports[].name`): a Service's `targetPort` or a NetworkPolicy's port may give it
    /// by name.
    pub fn named_port(self, name: &str, port: u16) -> Self {
        self.named_port_of(name, port, Proto::Tcp)
    }

    /// Declares a port by name, of any protocol.
    pub fn named_port_of(self, name: &str, port: u16, protocol: Proto) -> Self {
        self.try_edit(crate::netstack::PortName::new(name), |c, name| c.named_ports.push(crate::pod::NamedPort { name, port, protocol }))
    }

    pub fn publish_port(self, p: PortMapping) -> Self {
        self.edit(|c| c.ports.push(p))
    }

    /// resolv.conf settings instead of the network's DNS server.
    pub fn dns(self, dns: DnsConfig) -> Self {
        self.edit(|c| c.dns = Some(dns))
    }

    /// One PID namespace for all the pod's containers: they see each other's
    /// processes (Kubernetes' shareProcessNamespace).
    pub fn share_pid(self) -> Self {
        self.edit(|c| c.share_pid = true)
    }

    /// Where container logs go (`<dir>/<name>_<attempt>.log`).
    pub fn log_dir(self, dir: impl Into<PathBuf>) -> Self {
        self.edit(|c| c.log_dir = Some(dir.into()))
    }

    /// Makes the pod: namespaces, addresses, routes, ports, DNS names, /etc files.
    pub async fn start(self) -> Result<Pod> {
        let rt = self.rt.clone();
        let cfg = self.cfg?;
        let record = blocking(move || rt.pods.create_pod(cfg)).await?;
        let cleanup = !self.rt.pods.keeps_pods();
        Ok(Pod { rt: self.rt, record, cleanup })
    }
}

/// A running pod. Dropping it removes it with its containers (unless [`Pod::keep`]).
pub struct Pod {
    pub(super) rt: Arc<Inner>,
    pub(super) record: PodRecord,
    pub(super) cleanup: bool,
}

impl Drop for Pod {
    fn drop(&mut self) {
        if self.cleanup {
            if let Err(e) = self.rt.pods.remove_pod(self.record.id.as_str(), true) {
                tracing::warn!(pod = %self.record.name, "removing pod on drop: {}", crate::process::chain(&e));
            }
        }
    }
}

impl Pod {
    pub fn id(&self) -> &str {
        self.record.id.as_str()
    }

    pub fn name(&self) -> &str {
        self.record.name.as_str()
    }

    /// The pod's address on its first network.
    pub fn ip(&self) -> Ipv4Addr {
        // A ready pod has at least one network (create_pod attaches one or fails).
        self.record.ip().unwrap_or(Ipv4Addr::UNSPECIFIED)
    }

    /// Everything recorded about the pod.
    pub fn record(&self) -> &PodRecord {
        &self.record
    }

    /// Starts describing a container of this pod named `name`.
    pub fn container(&self, name: &str) -> ContainerBuilder {
        ContainerBuilder {
            rt: self.rt.clone(),
            pod: self.record.clone(),
            cfg: ContainerName::new(name).map(|n| ContainerConfig::new(n, RootfsSource::Dir(PathBuf::new()))).map_err(Into::into),
            source_set: false,
            ready: vec![],
            readiness: None,
        }
    }

    /// A container of this pod made earlier.
    pub async fn get_container(&self, name: &str) -> Result<Container> {
        let rt = self.rt.clone();
        let (pod, name) = (self.record.id.to_string(), name.to_string());
        let record = blocking(move || rt.pods.container(&pod, &name)).await?;
        Ok(Container { rt: self.rt.clone(), pod: self.record.clone(), record })
    }

    /// Waits until `ready` holds for the pod (a listening port, an HTTP 200).
    pub async fn wait_for(&self, ready: Ready) -> Result<()> {
        ready::wait(&self.rt, &self.record, None, ready).await
    }

    /// An HTTP/1.0 GET of `path` on the pod's `port`, from the node: (status, body).
    pub async fn http_get(&self, port: u16, path: &str) -> Result<(u16, String)> {
        let rt = self.rt.clone();
        let addr = SocketAddr::new(IpAddr::V4(self.ip()), port);
        let path = path.to_string();
        blocking(move || ready::http_get(&rt.pods, addr, &path)).await
    }

    /// Stops every container (SIGTERM, SIGKILL after 10 s) and detaches the networks.
    pub async fn stop(&mut self) -> Result<()> {
        let rt = self.rt.clone();
        let id = self.record.id.to_string();
        self.record = blocking(move || rt.pods.stop_pod(&id, crate::pod::DEFAULT_STOP_TIMEOUT)).await?;
        Ok(())
    }

    /// Removes the pod and its containers, reporting teardown errors.
    pub async fn remove(mut self) -> Result<()> {
        self.cleanup = false;
        let rt = self.rt.clone();
        let id = self.record.id.to_string();
        blocking(move || rt.pods.remove_pod(&id, true)).await
    }

    /// Keeps the pod after this handle and this process are gone: neither drop, nor
    /// shutdown, nor the next runtime's sweep removes it. Returns its record.
    pub async fn keep(mut self) -> Result<PodRecord> {
        let rt = self.rt.clone();
        let id = self.record.id.clone();
        let kept = blocking(move || rt.pods.disown(&id)).await?;
        self.cleanup = false;
        Ok(kept)
    }
}

impl std::fmt::Debug for Pod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pod").field("id", &self.record.id).field("name", &self.record.name).field("ip", &self.record.ip()).finish()
    }
}
