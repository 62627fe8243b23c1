//! The embedded DNS server: one UDP listener per DNS-enabled network, on its gateway
//! address inside the node namespace. It answers A and PTR for the names attached to
//! that network, only to askers from that network's subnet (a pod never learns names
//! of networks it is not on), the names of the node's Services ([`cluster`]) to askers
//! of every network, and forwards everything else to the network's upstreams.
//!
//! On a node of an overlay, a name the network does not know is asked of the DNS
//! server of each peer node (on the first host address of its pod subnet, the
//! default gateway) before the upstreams: pods find pods of every node by name. A peer
//! asking is answered from the network's own names only (never passed on, so no query
//! goes round the cluster).
//!
//! The services are read from the firewall's records, which any process serving them
//! on the node writes: a watcher looks at their directory every 100 ms and reloads it
//! when it changed, so names of services made by another process are answered too.

pub mod cluster;

use std::path::PathBuf;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::{rdata, Name, RData, Record, RecordType};
use ipnetwork::{Ipv4Network, Ipv6Network};

use crate::names::NetworkName;
use crate::netns::{Netns, NetnsError};

/// How long one upstream gets to answer a forwarded query.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a peer node's server gets: it answers from memory, over the overlay.
const PEER_TIMEOUT: Duration = Duration::from_millis(500);
const TTL: u32 = 30;
/// How often the watcher looks for changed service records.
const SERVICES_POLL: Duration = Duration::from_millis(100);

/// Starting the DNS server failed.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("listening for DNS on {addr} (network {network})")]
    Bind {
        network: NetworkName,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("starting the DNS server's thread")]
    Thread(#[source] std::io::Error),
}

/// The names one network answers for.
#[derive(Debug, Default, Clone)]
struct Zone {
    subnet: Option<Ipv4Network>,
    subnet6: Option<Ipv6Network>,
    upstreams: Vec<SocketAddr>,
    names: HashMap<String, Vec<IpAddr>>,
    reverse: HashMap<IpAddr, String>,
    /// The pod subnets of the overlay peers of this network's node.
    peers: Vec<Ipv4Network>,
}

/// Records of every network, shared by the listeners; writers hold the lock only to
/// insert or remove a name, never across I/O.
#[derive(Debug, Default, Clone)]
pub struct Records {
    zones: Arc<RwLock<HashMap<NetworkName, Zone>>>,
    cluster: Arc<RwLock<ClusterState>>,
}

/// The cluster zone and the services it was made of.
#[derive(Debug, Default)]
struct ClusterState {
    zone: cluster::ClusterZone,
    services: Vec<crate::firewall::VirtualService>,
    headless: Vec<cluster::HeadlessService>,
}

impl ClusterState {
    fn rebuild(&mut self, domain: &str) {
        self.zone = cluster::ClusterZone::new(domain, &self.services, &self.headless);
    }
}

fn normalise(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl Records {
    /// Declares a network (its subnet and upstreams); keeps names it already has.
    pub fn set_network(&self, network: &NetworkName, subnet: Ipv4Network, subnet6: Option<Ipv6Network>, upstreams: Vec<SocketAddr>) {
        if let Ok(mut zones) = self.zones.write() {
            let zone = zones.entry(network.clone()).or_default();
            zone.subnet = Some(subnet);
            zone.subnet6 = subnet6;
            zone.upstreams = upstreams;
        }
    }

    /// The pod subnets of `network`'s overlay peers: names it does not know are asked
    /// of their DNS servers, and they are answered from its own names.
    pub fn set_peers(&self, network: &NetworkName, peers: Vec<Ipv4Network>) {
        if let Ok(mut zones) = self.zones.write() {
            zones.entry(network.clone()).or_default().peers = peers;
        }
    }

    /// Forgets every network's peers (the node left its overlay).
    pub fn clear_peers(&self) {
        if let Ok(mut zones) = self.zones.write() {
            for z in zones.values_mut() {
                z.peers.clear();
            }
        }
    }

    /// Forgets a network.
    pub fn remove_network(&self, network: &NetworkName) {
        if let Ok(mut zones) = self.zones.write() {
            zones.remove(network);
        }
    }

    /// Adds `names` for `ip` on `network` (the first one answers PTR).
    pub fn add(&self, network: &NetworkName, names: &[String], ip: IpAddr) {
        if let Ok(mut zones) = self.zones.write() {
            let zone = zones.entry(network.clone()).or_default();
            for n in names {
                let ips = zone.names.entry(normalise(n)).or_default();
                if !ips.contains(&ip) {
                    ips.push(ip);
                }
            }
            if let Some(first) = names.first() {
                zone.reverse.insert(ip, normalise(first));
            }
        }
    }

    /// Removes every name pointing at `ip` on `network`.
    pub fn remove(&self, network: &NetworkName, ip: IpAddr) {
        if let Ok(mut zones) = self.zones.write() {
            if let Some(zone) = zones.get_mut(network) {
                for ips in zone.names.values_mut() {
                    ips.retain(|v| *v != ip);
                }
                zone.names.retain(|_, v| !v.is_empty());
                zone.reverse.remove(&ip);
            }
        }
    }

    /// Whether `network` was declared with [`Records::set_network`].
    pub fn has_network(&self, network: &NetworkName) -> bool {
        self.zones.read().is_ok_and(|z| z.get(network).is_some_and(|zone| zone.subnet.is_some()))
    }

    fn zone(&self, network: &NetworkName) -> Option<Zone> {
        self.zones.read().ok()?.get(network).cloned()
    }

    /// The services whose names the cluster zone answers with, replacing those it had.
    pub fn set_services(&self, services: Vec<crate::firewall::VirtualService>, headless: Vec<cluster::HeadlessService>) {
        self.edit_cluster(|c| {
            c.services = services;
            c.headless = headless;
        });
    }

    /// Adds `svc` to the cluster zone, or replaces the service of its address: what
    /// this process programs is answered at once, before the state dir is polled.
    pub fn put_service(&self, svc: &crate::firewall::VirtualService) {
        self.edit_cluster(|c| {
            c.services.retain(|s| s.ip != svc.ip);
            c.services.push(svc.clone());
        });
    }

    /// Takes the service of address `ip` out of the cluster zone.
    pub fn drop_service(&self, ip: std::net::Ipv4Addr) {
        self.edit_cluster(|c| c.services.retain(|s| s.ip != ip));
    }

    /// Adds or replaces a headless service.
    pub fn put_headless(&self, svc: &cluster::HeadlessService) {
        self.edit_cluster(|c| {
            c.headless.retain(|s| s.dns != svc.dns);
            c.headless.push(svc.clone());
        });
    }

    /// Takes the headless service named `dns` out of the cluster zone.
    pub fn drop_headless(&self, dns: &crate::firewall::ServiceDns) {
        self.edit_cluster(|c| c.headless.retain(|s| s.dns != *dns));
    }

    fn edit_cluster(&self, edit: impl FnOnce(&mut ClusterState)) {
        if let Ok(mut c) = self.cluster.write() {
            edit(&mut c);
            let domain = c.zone.domain().to_string();
            c.rebuild(&domain);
        }
    }

    /// The domain service names are under (default `cluster.local`).
    pub fn set_cluster_domain(&self, domain: &str) {
        if let Ok(mut c) = self.cluster.write() {
            c.rebuild(domain);
        }
    }

    /// The domain service names are under.
    pub fn cluster_domain(&self) -> String {
        self.cluster.read().map(|c| c.zone.domain().to_string()).unwrap_or_else(|_| cluster::DEFAULT_CLUSTER_DOMAIN.into())
    }

    fn answer(&self, zone: &Zone, query: &[u8], from: IpAddr) -> Answer {
        match self.cluster.read() {
            Ok(c) => answer(zone, &c.zone, query, from),
            Err(_) => answer(zone, &cluster::ClusterZone::default(), query, from),
        }
    }
}

/// What to do with one query.
enum Answer {
    Reply(Vec<u8>),
    Forward(Vec<SocketAddr>),
    /// Ask the peers' servers; if none knows the name, forward to the upstreams (or
    /// fail without any).
    AskPeers {
        peers: Vec<SocketAddr>,
        upstreams: Vec<SocketAddr>,
    },
    Drop,
}

/// A peer's DNS server: the first host address of its pod subnet.
fn peer_server(subnet: &Ipv4Network) -> SocketAddr {
    SocketAddr::new(Ipv4Addr::from(u32::from(subnet.network()) + 1).into(), 53)
}

fn answer(zone: &Zone, cluster: &cluster::ClusterZone, query: &[u8], from: IpAddr) -> Answer {
    let Ok(msg) = Message::from_vec(query) else { return Answer::Drop };
    if msg.metadata.message_type != MessageType::Query {
        return Answer::Drop;
    }
    let mut reply = Message::response(msg.metadata.id, msg.metadata.op_code);
    reply.metadata.recursion_desired = msg.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.queries = msg.queries.clone();
    // An IPv4 asker may also come as v4-mapped IPv6 on a dual-stack socket.
    let from = match from {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(from),
        v4 => v4,
    };
    let asker_inside = match from {
        IpAddr::V4(ip) => zone.subnet.is_some_and(|n| n.contains(ip)),
        IpAddr::V6(ip) => zone.subnet6.is_some_and(|n| n.contains(ip)),
    };
    let asker_peer = matches!(from, IpAddr::V4(ip) if zone.peers.iter().any(|n| n.contains(ip)));
    if !asker_inside && !asker_peer {
        reply.metadata.response_code = ResponseCode::Refused;
        return reply.to_vec().map(Answer::Reply).unwrap_or(Answer::Drop);
    }
    let Some(q) = msg.queries.first() else { return Answer::Drop };
    let name = normalise(&q.name().to_ascii());
    let qtype = q.query_type();
    if asker_peer {
        // Its own names only: the Services of this node are this node's.
        return match zone.names.get(&name) {
            Some(ips) => {
                reply.metadata.authoritative = true;
                for ip in ips {
                    if let (IpAddr::V4(v4), RecordType::A | RecordType::ANY) = (ip, qtype) {
                        reply.answers.push(Record::from_rdata(q.name().clone(), TTL, RData::A(rdata::A(*v4))));
                    }
                }
                reply.to_vec().map(Answer::Reply).unwrap_or(Answer::Drop)
            }
            None => {
                reply.metadata.response_code = ResponseCode::NXDomain;
                reply.to_vec().map(Answer::Reply).unwrap_or(Answer::Drop)
            }
        };
    }
    if cluster.answer(&name, qtype, q.name(), &mut reply) {
        return reply.to_vec().map(Answer::Reply).unwrap_or(Answer::Drop);
    }
    if let Some(ips) = zone.names.get(&name) {
        reply.metadata.authoritative = true;
        for ip in ips {
            let data = match (ip, qtype) {
                (IpAddr::V4(v4), RecordType::A | RecordType::ANY) => RData::A(rdata::A(*v4)),
                (IpAddr::V6(v6), RecordType::AAAA | RecordType::ANY) => RData::AAAA(rdata::AAAA(*v6)),
                _ => continue,
            };
            reply.answers.push(Record::from_rdata(q.name().clone(), TTL, data));
        }
        // Other types (AAAA on an IPv4-only network): the name exists, with no such data.
        return reply.to_vec().map(Answer::Reply).unwrap_or(Answer::Drop);
    }
    if qtype == RecordType::PTR {
        let member = zone.reverse.iter().find(|(ip, _)| normalise(&Name::from(**ip).to_ascii()) == name);
        if let Some((_, target)) = member {
            if let Ok(target) = Name::from_ascii(format!("{target}.")) {
                reply.metadata.authoritative = true;
                reply.answers.push(Record::from_rdata(q.name().clone(), TTL, RData::PTR(rdata::PTR(target))));
                return reply.to_vec().map(Answer::Reply).unwrap_or(Answer::Drop);
            }
        }
    }
    if !zone.peers.is_empty() && matches!(qtype, RecordType::A | RecordType::ANY) {
        return Answer::AskPeers { peers: zone.peers.iter().map(peer_server).collect(), upstreams: zone.upstreams.clone() };
    }
    if zone.upstreams.is_empty() {
        reply.metadata.response_code = ResponseCode::ServFail;
        return reply.to_vec().map(Answer::Reply).unwrap_or(Answer::Drop);
    }
    Answer::Forward(zone.upstreams.clone())
}

/// Whether `reply` answers its question (an answer record and no error).
fn knows(reply: &[u8]) -> bool {
    Message::from_vec(reply).is_ok_and(|m| m.metadata.response_code == ResponseCode::NoError && !m.answers.is_empty())
}

/// Asks every peer at once; the first that knows the name answers.
async fn ask_peers(node: &std::path::Path, query: &[u8], peers: &[SocketAddr]) -> Option<Vec<u8>> {
    let mut asks: futures::stream::FuturesUnordered<_> =
        peers.iter().map(|p| forward_within(node, query, std::slice::from_ref(p), PEER_TIMEOUT)).collect();
    while let Some(reply) = futures::StreamExt::next(&mut asks).await {
        if let Some(reply) = reply.filter(|r| knows(r)) {
            return Some(reply);
        }
    }
    None
}

fn servfail(query: &[u8]) -> Option<Vec<u8>> {
    let msg = Message::from_vec(query).ok()?;
    let mut reply = Message::error_msg(msg.metadata.id, msg.metadata.op_code, ResponseCode::ServFail);
    reply.queries = msg.queries;
    reply.to_vec().ok()
}

/// Listeners of one node, on a thread of their own; they stop when this is dropped.
pub struct DnsServer {
    tasks: HashMap<NetworkName, tokio::task::JoinHandle<()>>,
    watcher: Option<tokio::task::JoinHandle<()>>,
    /// Where the listeners run: nothing else runs there, so no other work of the
    /// process (a firewall change waiting for `nft`) delays an answer. Dropped after
    /// the tasks are aborted (fields drop in order).
    executor: crate::executor::Executor,
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        for t in self.tasks.values().chain(&self.watcher) {
            t.abort();
        }
    }
}

impl DnsServer {
    /// No listeners yet; its thread (`minipod-dns`) is started.
    pub fn start() -> Result<Self, DnsError> {
        let executor = crate::executor::Executor::start("minipod-dns").map_err(DnsError::Thread)?;
        Ok(Self { tasks: HashMap::new(), watcher: None, executor })
    }

    /// Keeps `records`' services in step with the service records in `dir`, and its
    /// overlay peers with the overlay record `overlay`, whoever writes them. Does
    /// nothing if it watches already.
    pub fn watch_services(&mut self, dir: PathBuf, overlay: PathBuf, records: Records) {
        if self.watcher.is_some() {
            return;
        }
        self.watcher = Some(self.executor.handle().spawn(async move {
            let mut seen = None;
            let mut seen_overlay = None;
            loop {
                // The overlay's peers, whoever changes them (`minipod net overlay`).
                let stamp = std::fs::metadata(&overlay).and_then(|m| m.modified()).ok();
                if stamp != seen_overlay {
                    seen_overlay = stamp;
                    match crate::record::read_json::<crate::OverlayRecord>(&overlay) {
                        Ok(rec) => records.set_peers(&rec.network, rec.peers.iter().map(|p| p.subnet).collect()),
                        Err(_) => records.clear_peers(),
                    }
                }
                // A rename into place or a removal changes the directory's mtime. The
                // clock it is taken from ticks coarsely (a jiffy), so a change in the
                // tick of the last look keeps the stamp: a stamp under a second old is
                // looked behind again.
                let stamp = std::fs::metadata(&dir).and_then(|m| m.modified()).ok();
                let recent = stamp.is_some_and(|s| s.elapsed().map_or(true, |age| age < std::time::Duration::from_secs(1)));
                if stamp != seen || recent {
                    seen = stamp;
                    records.set_services(crate::firewall::read_services(&dir), crate::network::read_headless(&dir));
                }
                tokio::time::sleep(SERVICES_POLL).await;
            }
        }));
    }

    /// Stops the listener of `network` (it was removed), freeing its address.
    pub fn stop(&mut self, network: &NetworkName) {
        if let Some(t) = self.tasks.remove(network) {
            t.abort();
        }
    }

    /// Listens on `gateway:53` inside `node` for `network`. Does nothing if `network`
    /// is served already.
    pub fn listen(&mut self, node: &Netns, network: NetworkName, gateway: Ipv4Addr, records: Records) -> Result<(), DnsError> {
        if self.tasks.contains_key(&network) {
            return Ok(());
        }
        let addr = SocketAddr::new(gateway.into(), 53);
        let bind = node.run(move || std::net::UdpSocket::bind(addr).and_then(|s| s.set_nonblocking(true).map(|()| s)))?;
        let std_sock = bind.map_err(|source| DnsError::Bind { network: network.clone(), addr, source })?;
        let runtime = self.executor.handle();
        let _entered = runtime.enter();
        let sock = tokio::net::UdpSocket::from_std(std_sock).map_err(|source| DnsError::Bind { network: network.clone(), addr, source })?;
        let sock = Arc::new(sock);
        let node_path = node.path().to_path_buf();
        let key = network.clone();
        let task = runtime.spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((len, from)) = sock.recv_from(&mut buf).await else {
                    // A persistent socket error must not turn into a busy loop.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let query = buf[..len].to_vec();
                let Some(zone) = records.zone(&network) else { continue };
                match records.answer(&zone, &query, from.ip()) {
                    Answer::Reply(bytes) => {
                        let _ = sock.send_to(&bytes, from).await;
                    }
                    Answer::Forward(upstreams) => {
                        let sock = sock.clone();
                        let node_path = node_path.clone();
                        tokio::spawn(async move {
                            let bytes = forward(&node_path, &query, &upstreams).await.or_else(|| servfail(&query));
                            if let Some(bytes) = bytes {
                                let _ = sock.send_to(&bytes, from).await;
                            }
                        });
                    }
                    Answer::AskPeers { peers, upstreams } => {
                        let sock = sock.clone();
                        let node_path = node_path.clone();
                        tokio::spawn(async move {
                            let mut bytes = ask_peers(&node_path, &query, &peers).await;
                            if bytes.is_none() && !upstreams.is_empty() {
                                bytes = forward(&node_path, &query, &upstreams).await;
                            }
                            if let Some(bytes) = bytes.or_else(|| servfail(&query)) {
                                let _ = sock.send_to(&bytes, from).await;
                            }
                        });
                    }
                    Answer::Drop => {}
                }
            }
        });
        self.tasks.insert(key, task);
        Ok(())
    }
}

/// Asks each upstream in turn, from a socket inside the node namespace.
async fn forward(node: &std::path::Path, query: &[u8], upstreams: &[SocketAddr]) -> Option<Vec<u8>> {
    forward_within(node, query, upstreams, UPSTREAM_TIMEOUT).await
}

/// [`forward`], each given `timeout` to answer.
async fn forward_within(node: &std::path::Path, query: &[u8], upstreams: &[SocketAddr], timeout: Duration) -> Option<Vec<u8>> {
    let ns = Netns::open(node).ok()?;
    for up in upstreams {
        let local: SocketAddr = if up.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().ok()?;
        let Ok(Ok(std_sock)) = ns.run(move || std::net::UdpSocket::bind(local).and_then(|s| s.set_nonblocking(true).map(|()| s))) else {
            continue;
        };
        let Ok(sock) = tokio::net::UdpSocket::from_std(std_sock) else { continue };
        if sock.send_to(query, up).await.is_err() {
            continue;
        }
        let mut buf = vec![0u8; 4096];
        if let Ok(Ok((len, _))) = tokio::time::timeout(timeout, sock.recv_from(&mut buf)).await {
            buf.truncate(len);
            return Some(buf);
        }
    }
    None
}

/// Nameservers of the node's /etc/resolv.conf (port 53).
pub fn resolv_conf_upstreams() -> Vec<SocketAddr> {
    std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|ip| ip.trim().parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;

    fn query(name: &str, t: RecordType) -> Vec<u8> {
        let mut m = Message::query();
        m.queries.push(Query::query(Name::from_ascii(name).unwrap(), t));
        m.to_vec().unwrap()
    }

    fn zone() -> Zone {
        let mut z = Zone { subnet: Some("10.5.0.0/24".parse().unwrap()), ..Default::default() };
        z.names.insert("web".into(), vec!["10.5.0.2".parse().unwrap()]);
        z.reverse.insert("10.5.0.2".parse().unwrap(), "web".into());
        z
    }

    #[test]
    fn members_get_a_and_ptr_others_are_refused_and_the_rest_is_forwarded() {
        let z = zone();
        let inside: IpAddr = "10.5.0.9".parse().unwrap();
        let c = cluster::ClusterZone::default();
        let answer = |z: &Zone, q: &[u8], from: IpAddr| answer(z, &c, q, from);
        let Answer::Reply(r) = answer(&z, &query("WEB.", RecordType::A), inside) else { panic!() };
        let r = Message::from_vec(&r).unwrap();
        assert_eq!(r.answers.len(), 1);
        assert!(matches!(r.answers[0].data, RData::A(rdata::A(ip)) if ip == Ipv4Addr::new(10, 5, 0, 2)));
        let Answer::Reply(r) = answer(&z, &query("2.0.5.10.in-addr.arpa.", RecordType::PTR), inside) else { panic!() };
        assert_eq!(Message::from_vec(&r).unwrap().answers.len(), 1);
        let Answer::Reply(r) = answer(&z, &query("web.", RecordType::A), "10.6.0.9".parse().unwrap()) else { panic!() };
        assert_eq!(Message::from_vec(&r).unwrap().metadata.response_code, ResponseCode::Refused);
        let Answer::Reply(r) = answer(&z, &query("example.test.", RecordType::A), inside) else { panic!() };
        assert_eq!(Message::from_vec(&r).unwrap().metadata.response_code, ResponseCode::ServFail, "no upstream");
        let z = Zone { upstreams: vec!["192.0.2.53:53".parse().unwrap()], ..zone() };
        assert!(matches!(answer(&z, &query("example.test.", RecordType::A), inside), Answer::Forward(_)));
    }

    #[test]
    fn overlay_peers_are_asked_what_the_network_does_not_know_and_answered_from_it_only() {
        let z = Zone { peers: vec!["10.244.2.0/24".parse().unwrap()], upstreams: vec!["192.0.2.53:53".parse().unwrap()], ..zone() };
        let c = cluster::ClusterZone::default();
        let inside: IpAddr = "10.5.0.9".parse().unwrap();
        let Answer::AskPeers { peers, upstreams } = answer(&z, &c, &query("web-2.", RecordType::A), inside) else {
            panic!("asks the peers")
        };
        assert_eq!(peers, vec!["10.244.2.1:53".parse::<SocketAddr>().unwrap()], "on the peer's gateway");
        assert_eq!(upstreams.len(), 1, "then the upstreams");
        // A peer asking gets this network's names, and no more: nothing is passed on.
        let peer: IpAddr = "10.244.2.0".parse().unwrap();
        let Answer::Reply(r) = answer(&z, &c, &query("web.", RecordType::A), peer) else { panic!() };
        let r = Message::from_vec(&r).unwrap();
        assert!(r.answers.len() == 1 && knows(&r.to_vec().unwrap()));
        let Answer::Reply(r) = answer(&z, &c, &query("example.test.", RecordType::A), peer) else { panic!("not forwarded") };
        assert_eq!(Message::from_vec(&r).unwrap().metadata.response_code, ResponseCode::NXDomain);
        // Nobody else.
        let Answer::Reply(r) = answer(&z, &c, &query("web.", RecordType::A), "10.244.3.5".parse().unwrap()) else { panic!() };
        assert_eq!(Message::from_vec(&r).unwrap().metadata.response_code, ResponseCode::Refused);
    }
}
