//! The cluster zone: the names of Services under the cluster domain, as Kubernetes'
//! DNS gives them (`NAME.NAMESPACE.svc.DOMAIN` A records, `_PORT._PROTO.NAME...` SRV
//! records for named ports, PTR for the virtual IPs), answered to members of every
//! network, since a Service is reachable from every pod. Names under the domain that
//! no service has are answered NXDOMAIN here, never forwarded upstream.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{rdata, Name, RData, Record, RecordType};

use serde::{Deserialize, Serialize};

use super::{normalise, TTL};
use crate::firewall::{ServiceDns, ServicePort, VirtualService};

/// A headless Service (`clusterIP: None`): no virtual IP, a DNS name that answers with
/// its endpoints' own addresses (and SRV records with their ports).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeadlessService {
    pub dns: ServiceDns,
    pub ports: Vec<ServicePort>,
}

impl HeadlessService {
    /// Every endpoint address, once, in order.
    fn addresses(&self) -> Vec<Ipv4Addr> {
        let mut ips: Vec<Ipv4Addr> = self.ports.iter().flat_map(|p| p.endpoints.iter().map(|e| *e.ip())).collect();
        ips.sort();
        ips.dedup();
        ips
    }
}

/// Kubernetes' default cluster domain.
pub const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";

/// The names of a node's services, ready to answer from.
#[derive(Debug, Clone)]
pub struct ClusterZone {
    domain: String,
    a: HashMap<String, Vec<Ipv4Addr>>,
    srv: HashMap<String, Vec<(u16, String)>>,
    /// Reverse names (`D.C.B.A.in-addr.arpa`) of the virtual IPs.
    ptr: HashMap<String, String>,
}

impl Default for ClusterZone {
    fn default() -> Self {
        Self::new(DEFAULT_CLUSTER_DOMAIN, &[], &[])
    }
}

impl ClusterZone {
    /// The zone of `services` (those with a DNS name) and of `headless` ones under
    /// `domain`.
    pub fn new(domain: &str, services: &[VirtualService], headless: &[HeadlessService]) -> Self {
        let domain = normalise(domain);
        let mut zone = Self { domain: domain.clone(), a: HashMap::new(), srv: HashMap::new(), ptr: HashMap::new() };
        let fqdn = |dns: &ServiceDns| format!("{}.{}.svc.{domain}", dns.name, dns.namespace);
        for svc in services {
            let Some(dns) = &svc.dns else { continue };
            let name = fqdn(dns);
            zone.a.insert(name.clone(), vec![svc.ip]);
            zone.ptr.insert(normalise(&Name::from(IpAddr::V4(svc.ip)).to_ascii()), name.clone());
            zone.add_srv(&name, svc.ports.iter().map(|p| (p, p.port)));
        }
        for svc in headless {
            let name = fqdn(&svc.dns);
            zone.a.insert(name.clone(), svc.addresses());
            // The endpoints' port: there is no virtual port in front of them.
            zone.add_srv(&name, svc.ports.iter().filter_map(|p| Some((p, p.endpoints.first()?.port()))));
        }
        zone
    }

    fn add_srv<'a>(&mut self, fqdn: &str, ports: impl Iterator<Item = (&'a ServicePort, u16)>) {
        for (p, port) in ports {
            if let Some(port_name) = &p.name {
                self.srv.entry(format!("_{port_name}._{}.{fqdn}", p.proto)).or_default().push((port, fqdn.to_string()));
            }
        }
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// Answers `name` (normalised) into `reply` if the zone holds it: names under the
    /// domain, and the reverse names of the virtual IPs. False: not the zone's.
    pub(super) fn answer(&self, name: &str, qtype: RecordType, qname: &Name, reply: &mut Message) -> bool {
        if let Some(target) = self.ptr.get(name) {
            reply.metadata.authoritative = true;
            if let (RecordType::PTR | RecordType::ANY, Ok(target)) = (qtype, Name::from_ascii(format!("{target}."))) {
                reply.answers.push(Record::from_rdata(qname.clone(), TTL, RData::PTR(rdata::PTR(target))));
            }
            return true;
        }
        let suffix = format!(".{}", self.domain);
        if name != self.domain && !name.ends_with(&suffix) {
            return false;
        }
        reply.metadata.authoritative = true;
        if let Some(ips) = self.a.get(name) {
            if matches!(qtype, RecordType::A | RecordType::ANY) {
                for ip in ips {
                    reply.answers.push(Record::from_rdata(qname.clone(), TTL, RData::A(rdata::A(*ip))));
                }
            }
        } else if let Some(targets) = self.srv.get(name) {
            if matches!(qtype, RecordType::SRV | RecordType::ANY) {
                for (port, target) in targets {
                    let Ok(t) = Name::from_ascii(format!("{target}.")) else { continue };
                    reply.answers.push(Record::from_rdata(qname.clone(), TTL, RData::SRV(rdata::SRV::new(0, 100, *port, t.clone()))));
                    for ip in self.a.get(target).into_iter().flatten() {
                        reply.additionals.push(Record::from_rdata(t.clone(), TTL, RData::A(rdata::A(*ip))));
                    }
                }
            }
        } else {
            // A name above some service's (`svc.DOMAIN`, `NAMESPACE.svc.DOMAIN`) exists,
            // with no data of its own; any other is not there.
            let below = format!(".{name}");
            if !self.a.keys().chain(self.srv.keys()).any(|k| k.ends_with(&below)) && name != self.domain {
                reply.metadata.response_code = ResponseCode::NXDomain;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firewall::Proto;
    use hickory_proto::op::MessageType;

    fn zone() -> ClusterZone {
        let svc = VirtualService {
            owner: "prod/web".into(),
            ip: Ipv4Addr::new(10, 96, 0, 10),
            ports: vec![ServicePort { proto: Proto::Tcp, port: 80, name: Some("http".into()), endpoints: vec![], node_port: None }],
            dns: Some(ServiceDns { namespace: "prod".parse().unwrap(), name: "web".parse().unwrap() }),
            affinity: None,
        };
        let headless = HeadlessService {
            dns: ServiceDns { namespace: "prod".parse().unwrap(), name: "db".parse().unwrap() },
            ports: vec![ServicePort {
                proto: Proto::Tcp,
                port: 5432,
                name: Some("pg".into()),
                endpoints: vec!["10.88.0.3:5433".parse().unwrap(), "10.88.0.2:5433".parse().unwrap()],
                node_port: None,
            }],
        };
        ClusterZone::new("Cluster.Local.", &[svc], &[headless])
    }

    fn ask(z: &ClusterZone, name: &str, t: RecordType) -> Option<Message> {
        let mut reply = Message::response(1, hickory_proto::op::OpCode::Query);
        reply.metadata.message_type = MessageType::Response;
        let qname = Name::from_ascii(name).unwrap();
        z.answer(&normalise(name), t, &qname, &mut reply).then_some(reply)
    }

    #[test]
    fn services_answer_a_srv_and_ptr_and_the_rest_of_the_domain_is_nxdomain() {
        let z = zone();
        let r = ask(&z, "web.prod.svc.cluster.local.", RecordType::A).unwrap();
        assert!(matches!(r.answers[..], [ref a] if a.data == RData::A(rdata::A(Ipv4Addr::new(10, 96, 0, 10)))), "{r:?}");
        let r = ask(&z, "_http._tcp.web.prod.svc.cluster.local.", RecordType::SRV).unwrap();
        assert!(
            matches!(&r.answers[0].data, RData::SRV(s) if s.port == 80 && s.target.to_ascii() == "web.prod.svc.cluster.local."),
            "{r:?}"
        );
        assert_eq!(r.additionals.len(), 1);
        let r = ask(&z, "10.0.96.10.in-addr.arpa.", RecordType::PTR).unwrap();
        assert!(matches!(&r.answers[0].data, RData::PTR(p) if p.0.to_ascii() == "web.prod.svc.cluster.local."), "{r:?}");
        let r = ask(&z, "nope.prod.svc.cluster.local.", RecordType::A).unwrap();
        assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
        let r = ask(&z, "prod.svc.cluster.local.", RecordType::A).unwrap();
        assert_eq!((r.metadata.response_code, r.answers.len()), (ResponseCode::NoError, 0), "a name above a service exists");
        assert!(ask(&z, "example.com.", RecordType::A).is_none(), "not the zone's: forwarded");
        // Headless: the endpoints' addresses, and SRV with their port.
        let r = ask(&z, "db.prod.svc.cluster.local.", RecordType::A).unwrap();
        let ips: Vec<_> = r.answers.iter().map(|a| a.data.clone()).collect();
        assert_eq!(ips, vec![RData::A(rdata::A(Ipv4Addr::new(10, 88, 0, 2))), RData::A(rdata::A(Ipv4Addr::new(10, 88, 0, 3)))]);
        let r = ask(&z, "_pg._tcp.db.prod.svc.cluster.local.", RecordType::SRV).unwrap();
        assert!(matches!(&r.answers[0].data, RData::SRV(s) if s.port == 5433), "{r:?}");
        assert_eq!(r.additionals.len(), 2);
    }
}
