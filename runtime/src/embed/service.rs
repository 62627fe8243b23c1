//! Services of the embedding API: described in code or in YAML, served by the node's
//! firewall and DNS, deleted on drop.

use k8s_openapi::api::core::v1::{Service as K8sService, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::*;
use crate::service::{self, Change, Document, Object, ObjectKey, ServiceKey, ServiceRecord};

/// A Service being described; [`ServiceBuilder::apply`] serves it. What it builds is
/// the Kubernetes object that a manifest would give, checked by the same rules.
pub struct ServiceBuilder {
    pub(super) rt: Arc<Inner>,
    pub(super) svc: K8sService,
}

impl ServiceBuilder {
    pub(super) fn new(rt: Arc<Inner>, name: &str) -> Self {
        let svc = K8sService {
            metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
            spec: Some(ServiceSpec::default()),
            ..Default::default()
        };
        ServiceBuilder { rt, svc }
    }

    fn spec(&mut self) -> &mut ServiceSpec {
        self.svc.spec.get_or_insert_with(Default::default)
    }

    /// The namespace (default `default`): the service selects pods of its own.
    pub fn namespace(mut self, namespace: &str) -> Self {
        self.svc.metadata.namespace = Some(namespace.into());
        self
    }

    /// Selects the pods carrying label `key=value` (every pair given must match).
    pub fn selector(mut self, key: &str, value: &str) -> Self {
        self.spec().selector.get_or_insert_with(Default::default).insert(key.into(), value.into());
        self
    }

    /// A TCP port of the service, forwarded to the pods' `target_port`.
    pub fn port(self, port: u16, target_port: u16) -> Self {
        self.add_port(None, "TCP", port, target_port)
    }

    /// A UDP port of the service.
    pub fn udp_port(self, port: u16, target_port: u16) -> Self {
        self.add_port(None, "UDP", port, target_port)
    }

    /// A named TCP port (a service with several needs names; DNS gives each an SRV
    /// record `_NAME._tcp.SERVICE.NAMESPACE.svc.DOMAIN`).
    pub fn named_port(self, name: &str, port: u16, target_port: u16) -> Self {
        self.add_port(Some(name), "TCP", port, target_port)
    }

    /// A named TCP port forwarded to the port each pod declares as `target_port`
    /// (see [`crate::embed::PodBuilder::named_port`]); on each pod it may be another number.
    pub fn named_port_to(self, name: &str, port: u16, target_port: &str) -> Self {
        self.push_port(Some(name), "TCP", port, IntOrString::String(target_port.into()))
    }

    fn add_port(self, name: Option<&str>, protocol: &str, port: u16, target_port: u16) -> Self {
        self.push_port(name, protocol, port, IntOrString::Int(i32::from(target_port)))
    }

    fn push_port(mut self, name: Option<&str>, protocol: &str, port: u16, target_port: IntOrString) -> Self {
        self.spec().ports.get_or_insert_with(Vec::new).push(ServicePort {
            name: name.map(str::to_string),
            protocol: Some(protocol.into()),
            port: i32::from(port),
            target_port: Some(target_port),
            ..Default::default()
        });
        self
    }

    /// `clusterIP: None`: no cluster IP; its DNS name answers with the addresses of
    /// the pods it selects.
    pub fn headless(mut self) -> Self {
        self.spec().cluster_ip = Some("None".into());
        self
    }

    /// `type: NodePort`: each port on every IPv4 address of the node too, on a free
    /// port of 30000-32767 (see [`Service::record`] for which).
    pub fn node_ports(mut self) -> Self {
        self.spec().type_ = Some("NodePort".into());
        self
    }

    /// `sessionAffinity: ClientIP`: a client stays with its first endpoint until it has
    /// been quiet for `timeout` (whole seconds, 1 s to a day).
    pub fn client_ip_affinity(mut self, timeout: Duration) -> Self {
        let spec = self.spec();
        spec.session_affinity = Some("ClientIP".into());
        let secs = i32::try_from(timeout.as_secs()).unwrap_or(i32::MAX);
        spec.session_affinity_config = Some(k8s_openapi::api::core::v1::SessionAffinityConfig {
            client_ip: Some(k8s_openapi::api::core::v1::ClientIPConfig { timeout_seconds: Some(secs) }),
        });
        self
    }

    /// Asks for this cluster IP instead of a free one of the service CIDR.
    pub fn cluster_ip(mut self, ip: Ipv4Addr) -> Self {
        self.spec().cluster_ip = Some(ip.to_string());
        self
    }

    /// Creates the service (or changes it to this description) and serves it with the
    /// ready pods it selects.
    pub async fn apply(self) -> Result<Service> {
        let manifest = service::checked(1, self.svc).map_err(service::ServiceError::from)?;
        let rt = self.rt.clone();
        let key = manifest.key.clone();
        let docs = vec![Document { index: 1, object: Object::Service(manifest) }];
        let record = blocking(move || {
            rt.pods.apply(&docs)?;
            rt.pods.service(&key)
        })
        .await?;
        let cleanup = !self.rt.pods.keeps_pods();
        Ok(Service { rt: self.rt, record, cleanup })
    }
}

/// A served service. Dropping it deletes it, unless the runtime keeps its pods or
/// the handle came from [`Minipod::get_service`] (or [`Service::keep`]).
pub struct Service {
    rt: Arc<Inner>,
    record: ServiceRecord,
    cleanup: bool,
}

impl Drop for Service {
    fn drop(&mut self) {
        if self.cleanup {
            if let Err(e) = self.rt.pods.delete_services(std::slice::from_ref(&self.record.key)) {
                tracing::warn!(service = %self.record.key, "deleting service on drop: {}", crate::process::chain(&e));
            }
        }
    }
}

impl Service {
    pub fn key(&self) -> &ServiceKey {
        &self.record.key
    }

    /// The cluster IP its connections are made to; None for a headless service.
    pub fn ip(&self) -> Option<Ipv4Addr> {
        self.record.cluster_ip
    }

    /// `NAME.NAMESPACE.svc.DOMAIN`, as the node's DNS server answers it.
    pub fn dns_name(&self) -> String {
        format!("{}.{}.svc.{}", self.record.key.name, self.record.key.namespace, self.rt.pods.cluster_domain())
    }

    pub fn record(&self) -> &ServiceRecord {
        &self.record
    }

    /// The pod addresses its connections go to now.
    pub async fn endpoints(&self) -> Result<Vec<Ipv4Addr>> {
        let rt = self.rt.clone();
        let record = self.record.clone();
        blocking(move || rt.pods.endpoints(&record)).await
    }

    /// Deletes the service, reporting what went wrong.
    pub async fn remove(mut self) -> Result<()> {
        self.cleanup = false;
        let rt = self.rt.clone();
        let key = self.record.key.clone();
        blocking(move || rt.pods.delete_services(&[key]).map(drop)).await
    }

    /// Leaves the service in place when the handle drops.
    pub fn keep(mut self) -> ServiceRecord {
        self.cleanup = false;
        self.record.clone()
    }
}

impl Minipod {
    /// Starts describing a service named `name`.
    pub fn service(&self, name: &str) -> ServiceBuilder {
        ServiceBuilder::new(self.inner.clone(), name)
    }

    /// A service made earlier, by anyone sharing the state root; not deleted on drop.
    pub async fn get_service(&self, namespace: &str, name: &str) -> Result<Service> {
        let rt = self.inner.clone();
        let key = ServiceKey { namespace: Namespace::new(namespace)?, name: ServiceName::new(name)? };
        let record = blocking(move || rt.pods.service(&key)).await?;
        Ok(Service { rt: self.inner.clone(), record, cleanup: false })
    }

    /// `minipod apply -f`: applies Kubernetes YAML or JSON (Services, EndpointSlices and
    /// NetworkPolicies, one or several documents, all or none). What it makes stays
    /// until deleted, like the CLI's.
    pub async fn apply_yaml(&self, text: &str) -> Result<Vec<(ObjectKey, Change)>> {
        let docs = service::parse(text).map_err(service::ServiceError::from)?;
        self.apply_documents(docs).await
    }

    /// Applies parsed documents (all or none).
    pub(super) async fn apply_documents(&self, docs: Vec<Document>) -> Result<Vec<(ObjectKey, Change)>> {
        let rt = self.inner.clone();
        blocking(move || rt.pods.apply(&docs)).await
    }

    /// `minipod delete -f`: deletes what the documents name.
    pub async fn delete_yaml(&self, text: &str) -> Result<Vec<ObjectKey>> {
        let docs = service::parse(text).map_err(service::ServiceError::from)?;
        let rt = self.inner.clone();
        blocking(move || rt.pods.delete(&docs)).await
    }
}
