//! Applying and deleting services: all of a manifest's documents or none, under one
//! lock per state root, their cluster IPs given from the service CIDR.

use std::io;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use super::{Document, Object, ObjectKey, ServiceError, ServiceKey, ServiceManifest, ServicePortSpec, ServiceRecord, TargetPort};
use crate::netstack::Namespace;
use crate::pod::{PodError, Pods};

type Result<T> = std::result::Result<T, PodError>;

/// What an apply did to one service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Created,
    Configured,
    Unchanged,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Change::Created => "created",
            Change::Configured => "configured",
            Change::Unchanged => "unchanged",
        })
    }
}

use crate::pod::io_err;

impl Pods {
    pub(crate) fn services_dir(&self) -> PathBuf {
        self.root().join("services")
    }

    fn service_file(&self, key: &ServiceKey) -> PathBuf {
        self.services_dir().join(&key.namespace).join(format!("{}.json", key.name))
    }

    /// Held while services or their endpoints change, so that two processes never
    /// program one service from different views of the pods.
    pub(crate) fn services_lock(&self) -> Result<nix::fcntl::Flock<std::fs::File>> {
        services_lock_in(&self.services_dir())
    }

    /// The services of `namespace` (all namespaces with None), by name.
    pub fn services(&self, namespace: Option<&Namespace>) -> Result<Vec<ServiceRecord>> {
        let mut all: Vec<ServiceRecord> = read_records(&self.services_dir(), namespace.map(|n| n.as_str()))?;
        all.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(all)
    }

    /// One service.
    pub fn service(&self, key: &ServiceKey) -> Result<ServiceRecord> {
        let path = self.service_file(key);
        crate::netstack::record::read_json(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => ServiceError::NoSuchService(key.clone()).into(),
            _ => io_err("reading", &path)(e),
        })
    }

    /// Applies every document: each service, endpoint slice or network policy is created or changed
    /// to what its document says, and served (or enforced) at once with the pods as
    /// they are. All or none: a bad document, a taken cluster IP or a failure to
    /// program one leaves every object as it was. The changes come in document order.
    pub fn apply(&self, docs: &[Document]) -> Result<Vec<(ObjectKey, Change)>> {
        let _lock = self.services_lock()?;
        let mut services = Vec::new();
        let mut policies = Vec::new();
        let mut slices = Vec::new();
        for doc in docs {
            match &doc.object {
                Object::Service(m) => services.push((doc.index, m)),
                Object::NetworkPolicy(m) => policies.push((doc.index, m)),
                Object::EndpointSlice(m) => slices.push((doc.index, m)),
            }
        }
        let plan = self.plan_policies(&policies)?;
        let mut changes: Vec<(usize, ObjectKey, Change)> =
            self.commit_policies(&plan)?.into_iter().map(|(doc, key, change)| (doc, ObjectKey::NetworkPolicy(key), change)).collect();
        let undo_policies = || self.undo_policies(&plan.iter().collect::<Vec<_>>());
        let steps = self.commit_slices(&slices).inspect_err(|_| undo_policies())?;
        // The services the slices give endpoints to, served again with them; those the
        // documents apply too are served as they are applied.
        let touched: Vec<ServiceKey> = touched_services(steps.iter().flat_map(|s| s.old.iter().chain([&s.new])));
        let applied: Vec<&ServiceKey> = services.iter().map(|(_, m)| &m.key).collect();
        let others: Vec<ServiceKey> = touched.iter().filter(|k| !applied.contains(k)).cloned().collect();
        match self.serve_keys(&others).and_then(|()| self.apply_services(&services)) {
            Ok(done) => changes.extend(done.into_iter().map(|(doc, key, change)| (doc, ObjectKey::Service(key), change))),
            Err(e) => {
                // The services undone were served with the new slices: again with the old.
                self.undo_slices(&steps);
                if let Err(u) = self.serve_keys(&touched) {
                    tracing::warn!("serving services again with their former endpoint slices: {u}");
                }
                undo_policies();
                return Err(e);
            }
        }
        changes.extend(steps.iter().map(|s| (s.doc, ObjectKey::EndpointSlice(s.new.key.clone()), s.change())));
        changes.sort_by_key(|(doc, _, _)| *doc);
        Ok(changes.into_iter().map(|(_, key, change)| (key, change)).collect())
    }

    /// Serves the services of `keys` that exist as they are recorded now.
    fn serve_keys(&self, keys: &[ServiceKey]) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let pods = self.cluster_pods()?;
        for key in keys {
            match self.service(key) {
                Ok(svc) => {
                    self.serve(&svc, &pods)?;
                }
                Err(PodError::Service(ServiceError::NoSuchService(_))) => {} // given endpoints before the service
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The services part of [`Pods::apply`], under its lock.
    fn apply_services(&self, docs: &[(usize, &ServiceManifest)]) -> Result<Vec<(usize, ServiceKey, Change)>> {
        if docs.is_empty() {
            return Ok(vec![]);
        }
        let existing = self.services(None)?;
        let pods = self.cluster_pods()?;
        let cidr = *self.service_cidr();
        let mut plan: Vec<(Option<ServiceRecord>, ServiceRecord)> = Vec::new();
        let mut unassigned = Vec::new();
        let mut unassigned_ports: Vec<(usize, usize)> = Vec::new();
        for &(index, m) in docs {
            let key = m.key.clone();
            if plan.iter().any(|(_, n)| n.key == key) {
                return Err(ServiceError::Twice { doc: index, key }.into());
            }
            let node_local = match m.node_local() {
                // Kubernetes ignores traffic policies for a headless service: its DNS
                // answers every endpoint.
                _ if m.headless => false,
                Ok(local) => local,
                Err(field) if !self.peer_roots().is_empty() => return Err(ServiceError::LocalTraffic { doc: index, key, field }.into()),
                // On a node of no cluster every pod is on the node, so the policies
                // differ only for endpoints given by hand off the node: the cluster IP's
                // decides (its node ports then reach those too).
                Err(_) => m.internal_local,
            };
            let old = existing.iter().find(|s| s.key == key).cloned();
            let old_ip = old.as_ref().map(|o| o.cluster_ip);
            let immutable = |old: Option<Ipv4Addr>, new: Option<Ipv4Addr>| {
                let text = |ip: Option<Ipv4Addr>| ip.map_or_else(|| "None".to_string(), |ip| ip.to_string());
                ServiceError::IpImmutable { doc: index, key: key.clone(), old: text(old), new: text(new) }
            };
            let ip = match (m.headless, m.cluster_ip, old_ip) {
                (true, _, Some(Some(was))) => return Err(immutable(Some(was), None).into()),
                (true, _, _) => None,
                (false, given, Some(None)) => return Err(immutable(None, given.or(Some(Ipv4Addr::UNSPECIFIED))).into()),
                (false, Some(ip), Some(Some(was))) if ip != was => return Err(immutable(Some(was), Some(ip)).into()),
                (false, Some(ip), _) => {
                    if !cidr.contains(ip) || ip == cidr.network() || ip == cidr.broadcast() {
                        return Err(ServiceError::IpOutside { doc: index, key, ip, cidr }.into());
                    }
                    let by = existing.iter().chain(plan.iter().map(|(_, n)| n)).find(|s| s.cluster_ip == Some(ip) && s.key != key);
                    if let Some(by) = by {
                        return Err(ServiceError::IpTaken { doc: index, key, ip, by: by.key.clone() }.into());
                    }
                    Some(ip)
                }
                (false, None, Some(Some(was))) => Some(was),
                (false, None, None) => {
                    unassigned.push(plan.len());
                    None
                }
            };
            let node = old.as_ref().map_or_else(|| self.node_ref().clone(), |o| o.node.clone());
            let mut ports = m.ports.clone();
            if m.node_ports {
                for (i, p) in ports.iter_mut().enumerate() {
                    let same = |q: &ServicePortSpec| q.protocol == p.protocol && q.port == p.port;
                    p.node_port =
                        p.node_port.or_else(|| old.as_ref().and_then(|o| o.ports.iter().find(|q| same(q))).and_then(|q| q.node_port));
                    let Some(np) = p.node_port else {
                        unassigned_ports.push((plan.len(), i));
                        continue;
                    };
                    let on_node = |pod: &&crate::pod::PodRecord| pod.node == node && pod.status != crate::pod::PodStatus::Stopped;
                    if let Some(pod) =
                        pods.iter().filter(on_node).find(|pod| pod.ports.iter().any(|h| h.proto == p.protocol && h.host_port == np))
                    {
                        return Err(ServiceError::NodePortPublished {
                            doc: index,
                            key,
                            proto: p.protocol,
                            port: np,
                            pod: pod.name.to_string(),
                        }
                        .into());
                    }
                    let others = existing.iter().filter(|s| s.key != key).chain(plan.iter().map(|(_, n)| n));
                    if let Some(by) =
                        others.into_iter().find(|s| s.ports.iter().any(|q| q.protocol == p.protocol && q.node_port == Some(np)))
                    {
                        return Err(ServiceError::NodePortTaken { doc: index, key, proto: p.protocol, port: np, by: by.key.clone() }.into());
                    }
                }
                for (i, p) in ports.iter().enumerate() {
                    if let Some(np) = p.node_port {
                        if ports[..i].iter().any(|q| q.protocol == p.protocol && q.node_port == Some(np)) {
                            return Err(
                                ServiceError::NodePortTaken { doc: index, key: key.clone(), proto: p.protocol, port: np, by: key }.into()
                            );
                        }
                    }
                }
            }
            check_port_names(index, &key, m, &node, &pods)?;
            let new = ServiceRecord {
                key,
                cluster_ip: ip,
                selector: m.selector.clone(),
                ports,
                node_ports: m.node_ports,
                client_ip_affinity: m.client_ip_affinity,
                node_local,
                labels: m.labels.clone(),
                annotations: m.annotations.clone(),
                node,
                created: old.as_ref().map_or_else(crate::time::Timestamp::now, |o| o.created),
            };
            plan.push((old, new));
        }
        // After every given address is claimed, so that a free pick never takes one
        // that a later document asks for.
        for i in unassigned {
            let taken: std::collections::HashSet<Ipv4Addr> =
                existing.iter().filter_map(|s| s.cluster_ip).chain(plan.iter().filter_map(|(_, n)| n.cluster_ip)).collect();
            plan[i].1.cluster_ip = Some(free_ip(cidr, &taken).ok_or(ServiceError::Full(cidr))?);
        }
        for (s, i) in unassigned_ports {
            let proto = plan[s].1.ports[i].protocol;
            let replaced: std::collections::HashSet<&ServiceKey> = plan.iter().map(|(_, n)| &n.key).collect();
            let taken: std::collections::HashSet<u16> = existing
                .iter()
                .filter(|e| !replaced.contains(&e.key))
                .chain(plan.iter().map(|(_, n)| n))
                .flat_map(|e| e.ports.iter())
                .filter(|q| q.protocol == proto)
                .filter_map(|q| q.node_port)
                // Nor a host port a pod of its node publishes: the same DNAT.
                .chain(
                    pods.iter()
                        .filter(|pod| pod.node == plan[s].1.node)
                        .flat_map(|pod| pod.ports.iter())
                        .filter(|h| h.proto == proto)
                        .map(|h| h.host_port),
                )
                .collect();
            plan[s].1.ports[i].node_port = Some(free_node_port(&taken).ok_or(ServiceError::NodePortsFull(proto))?);
        }
        let index_of = |n: &ServiceRecord| docs.iter().find(|(_, m)| m.key == n.key).map_or(0, |(i, _)| *i);
        let mut done: Vec<&(Option<ServiceRecord>, ServiceRecord)> = Vec::new();
        let mut changes = Vec::new();
        for step in &plan {
            let (old, new) = step;
            if old.as_ref() == Some(new) {
                changes.push((index_of(new), new.key.clone(), Change::Unchanged));
                continue;
            }
            let applied = self.write_service(new).and_then(|()| self.serve(new, &pods).map(|_| ()));
            done.push(step);
            if let Err(e) = applied {
                for (old, new) in done.into_iter().rev() {
                    let undone = match old {
                        Some(old) => self.write_service(old).and_then(|()| self.serve(old, &pods).map(|_| ())),
                        None => self.unserve(new),
                    };
                    if let Err(u) = undone {
                        tracing::warn!("undoing service {}: {u}", new.key);
                    }
                }
                return Err(e);
            }
            changes.push((index_of(new), new.key.clone(), if old.is_some() { Change::Configured } else { Change::Created }));
        }
        Ok(changes)
    }

    /// Deletes the objects the documents name (their specs are not compared): each
    /// service stops being served and its cluster IP is free, each policy stops
    /// isolating. One that does not exist is an error, found before anything is
    /// deleted.
    pub fn delete(&self, docs: &[Document]) -> Result<Vec<ObjectKey>> {
        let _lock = self.services_lock()?;
        let mut services = Vec::new();
        let mut policies = Vec::new();
        let mut slices = Vec::new();
        for doc in docs {
            match &doc.object {
                Object::Service(m) => services.push(m.key.clone()),
                Object::NetworkPolicy(m) => policies.push(m.key.clone()),
                Object::EndpointSlice(m) => slices.push(m.key.clone()),
            }
        }
        // Every service and slice must exist before a policy goes.
        let found = services.iter().map(|k| self.service(k)).collect::<Result<Vec<_>>>()?;
        let found_slices = self.find_slices(&slices)?;
        self.delete_policies_locked(&policies)?;
        for svc in &found {
            self.unserve(svc)?;
        }
        self.forget_slices(&found_slices)?;
        // Their services, but those just deleted, lose those endpoints.
        let left: Vec<ServiceKey> = touched_services(found_slices.iter()).into_iter().filter(|k| !services.contains(k)).collect();
        self.serve_keys(&left)?;
        Ok(docs.iter().map(|doc| doc.object.key()).collect())
    }

    /// Deletes the services `keys` name, all or none (as [`Pods::delete`]).
    pub fn delete_services(&self, keys: &[ServiceKey]) -> Result<Vec<ServiceKey>> {
        let _lock = self.services_lock()?;
        let found = keys.iter().map(|k| self.service(k)).collect::<Result<Vec<_>>>()?;
        for svc in &found {
            self.unserve(svc)?;
        }
        Ok(found.into_iter().map(|s| s.key).collect())
    }

    fn write_service(&self, svc: &ServiceRecord) -> Result<()> {
        write_record(&self.service_file(&svc.key), svc)
    }

    /// Stops serving `svc` and forgets it; one that is gone is fine.
    fn unserve(&self, svc: &ServiceRecord) -> Result<()> {
        // A node namespace that is gone took its firewall along.
        if svc.node.netns.as_ref().is_none_or(|p| p.exists()) {
            let node = self.node_at(&svc.node)?;
            match svc.cluster_ip {
                Some(ip) => node.node().remove_service(ip)?,
                None => node.node().remove_headless(&svc.dns())?,
            }
        }
        remove_record(&self.service_file(&svc.key))
    }
}

/// The services `slices` give endpoints to, each once.
fn touched_services<'a>(slices: impl Iterator<Item = &'a super::EndpointSliceRecord>) -> Vec<ServiceKey> {
    let mut keys: Vec<ServiceKey> = slices.map(|s| s.service_key()).collect();
    keys.sort();
    keys.dedup();
    keys
}

/// A `targetPort` given by name must be declared by a pod the service selects, when it
/// selects some already: a name none of them declares is a typo that would leave the
/// port without endpoints. With no pod yet, the pods to come may declare it.
fn check_port_names(
    doc: usize,
    key: &ServiceKey,
    m: &ServiceManifest,
    node: &crate::pod::NodeRef,
    pods: &[crate::pod::PodRecord],
) -> Result<()> {
    let selected: Vec<&crate::pod::PodRecord> = pods
        .iter()
        .filter(|p| !p.removing && !p.host_network && p.namespace == key.namespace && p.node == *node && m.selector.matches(&p.labels))
        .collect();
    if selected.is_empty() {
        return Ok(());
    }
    for (index, p) in m.ports.iter().enumerate() {
        let TargetPort::Name(name) = &p.target_port else { continue };
        if selected.iter().any(|pod| pod.named_port(name, p.protocol).is_some()) {
            continue;
        }
        let mut declared: Vec<String> = selected.iter().flat_map(|pod| pod.named_ports.iter().map(|n| n.to_string())).collect();
        declared.sort();
        declared.dedup();
        let declared = if declared.is_empty() { "no named ports".to_string() } else { declared.join(", ") };
        let reason = format!(
            "no pod the service selects declares a {} port named {name} (its pods declare {declared}): name a declared port, or give the number",
            p.protocol
        );
        return Err(ServiceError::NoSuchPortName { doc, key: key.clone(), index, reason }.into());
    }
    Ok(())
}

/// The services lock of the state root whose services directory is `dir`.
pub(crate) fn services_lock_in(dir: &std::path::Path) -> Result<nix::fcntl::Flock<std::fs::File>> {
    std::fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
    let path = dir.join(".lock");
    let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(io_err("opening", &path))?;
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, e)| io_err("locking", &path)(e.into()))
}

/// Writes the record of an object at `path` (`dir/<namespace>/<name>.json`), making
/// its namespace's directory first.
pub(crate) fn write_record(path: &std::path::Path, value: &impl serde::Serialize) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
    }
    crate::pod::write_json(path, value)
}

/// Removes the record of an object; one that is gone is fine.
pub(crate) fn remove_record(path: &std::path::Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("removing", path)(e)),
        _ => Ok(()),
    }
}

/// The records under `dir/<namespace>/*.json` of `namespace` (of every namespace with
/// None); a record deleted meanwhile is skipped, one that cannot be read is left alone
/// with a warning.
pub(crate) fn read_records<T: serde::de::DeserializeOwned>(dir: &std::path::Path, namespace: Option<&str>) -> Result<Vec<T>> {
    let dirs: Vec<PathBuf> = match namespace {
        Some(ns) => vec![dir.join(ns)],
        None => match std::fs::read_dir(dir) {
            Ok(entries) => entries.flatten().filter(|e| e.path().is_dir()).map(|e| e.path()).collect(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => vec![],
            Err(e) => return Err(io_err("listing", dir)(e)),
        },
    };
    let mut all = Vec::new();
    for dir in dirs {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err("listing", &dir)(e)),
        };
        for e in entries.flatten() {
            let path = e.path();
            if path.extension().is_none_or(|x| x != "json") {
                continue; // the temporary files of a writer
            }
            match crate::netstack::record::read_json::<T>(&path) {
                Ok(r) => all.push(r),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {} // deleted meanwhile
                Err(e) => tracing::warn!("{}: {e}; not a record, left alone", path.display()),
            }
        }
    }
    Ok(all)
}

/// A random start, as both pickers take one.
fn random_u64() -> u64 {
    let mut r = [0u8; 8];
    // SAFETY: fills a local buffer of the given length.
    unsafe { libc::getrandom(r.as_mut_ptr().cast(), r.len(), 0) };
    u64::from_le_bytes(r)
}

/// A node port of 30000-32767 not in `taken`, from a random place on.
fn free_node_port(taken: &std::collections::HashSet<u16>) -> Option<u16> {
    let (lo, hi) = (*super::manifest::NODE_PORTS.start() as u16, *super::manifest::NODE_PORTS.end() as u16);
    let size = u64::from(hi - lo) + 1;
    let start = random_u64() % size;
    (0..size).map(|i| lo + ((start + i) % size) as u16).find(|p| !taken.contains(p))
}

/// A free address of `cidr` (not its network or broadcast address), from a random
/// place on, so that services made in turn do not all crowd its start.
fn free_ip(cidr: ipnetwork::Ipv4Network, taken: &std::collections::HashSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    let base = u32::from(cidr.network());
    let size = 1u64 << (32 - u32::from(cidr.prefix()));
    if size < 4 {
        return None;
    }
    let hosts = size - 2;
    let start = random_u64() % hosts;
    (0..hosts.min(1 << 22)).map(|i| (start + i) % hosts + 1).map(|off| Ipv4Addr::from(base + off as u32)).find(|ip| !taken.contains(ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_free_ip_is_inside_the_cidr_and_not_taken() {
        let cidr: ipnetwork::Ipv4Network = "10.96.0.0/30".parse().unwrap();
        let mut taken = std::collections::HashSet::new();
        let a = free_ip(cidr, &taken).unwrap();
        assert!(a == Ipv4Addr::new(10, 96, 0, 1) || a == Ipv4Addr::new(10, 96, 0, 2), "{a}");
        taken.insert(a);
        let b = free_ip(cidr, &taken).unwrap();
        assert_ne!(a, b);
        taken.insert(b);
        assert_eq!(free_ip(cidr, &taken), None);
    }
}
