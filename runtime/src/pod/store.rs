//! Where pods and containers are recorded: their directories, records and the pod
//! locks. Names are claimed in `names`.

use super::names::NameIndex;
use super::*;

impl Pods {
    pub(super) fn pod_dir(&self, id: &PodId) -> PathBuf {
        pod_dir(&self.root, id)
    }

    /// Every pod under the root, of every scope, sorted by creation.
    pub fn pods(&self) -> Result<Vec<PodRecord>> {
        let dir = self.root.join("pods");
        let entries = std::fs::read_dir(&dir).map_err(io_err("listing", &dir))?;
        let mut out = pods_in(&dir, entries);
        out.sort_by_key(|a| a.created);
        Ok(out)
    }

    /// This node's pods and those of the other nodes of its cluster
    /// ([`PodsOptions::peer_roots`]), whose pods it reaches over the overlay; a peer
    /// root not made yet has none.
    pub fn cluster_pods(&self) -> Result<Vec<PodRecord>> {
        let mut out = self.pods()?;
        for root in &self.peer_roots {
            let dir = root.join("pods");
            match std::fs::read_dir(&dir) {
                Ok(entries) => out.extend(pods_in(&dir, entries)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("listing", &dir)(e)),
            }
        }
        Ok(out)
    }

    /// A pod by id, or by name (this scope first, then any scope if unambiguous).
    pub fn pod(&self, name_or_id: &str) -> Result<PodRecord> {
        if let Some(id) = PodId::parse(name_or_id) {
            if let Ok(p) = netstack::record::read_json::<PodRecord>(&self.pod_dir(&id).join(POD_FILE)) {
                return Ok(p);
            }
        }
        if let Some(p) = PodName::new(name_or_id)
            .ok()
            .and_then(|name| self.names().holder(&self.scope, &name))
            .and_then(|id| netstack::record::read_json::<PodRecord>(&self.pod_dir(&id).join(POD_FILE)).ok())
        {
            return Ok(p);
        }
        let all: Vec<PodRecord> = self.pods()?.into_iter().filter(|p| p.name == name_or_id).collect();
        if let Some(mine) = all.iter().find(|p| p.scope == self.scope) {
            return Ok(mine.clone());
        }
        match all.len() {
            0 => Err(PodError::NoSuchPod(name_or_id.to_string())),
            1 => Ok(all.into_iter().next().ok_or_else(|| PodError::NoSuchPod(name_or_id.to_string()))?),
            _ => Err(PodError::AmbiguousPod { name: name_or_id.to_string(), ids: all.iter().map(|p| p.id.to_string()).collect() }),
        }
    }

    pub(super) fn save_pod(&self, pod: &PodRecord) -> Result<()> {
        write_json(&self.pod_dir(&pod.id).join(POD_FILE), pod)
    }

    /// This root's name index.
    pub(super) fn names(&self) -> NameIndex<'_> {
        NameIndex::of(&self.root)
    }

    pub(super) fn container_dir(&self, pod: &PodId, name: &ContainerName) -> PathBuf {
        self.pod_dir(pod).join("containers").join(name.as_str())
    }

    /// Containers of one pod, or of all pods.
    pub fn containers(&self, pod: Option<&PodId>) -> Result<Vec<ContainerRecord>> {
        let pods: Vec<PodId> = match pod {
            Some(p) => vec![p.clone()],
            None => self.pods()?.into_iter().map(|p| p.id).collect(),
        };
        let mut out = Vec::new();
        for p in pods {
            let dir = self.pod_dir(&p).join("containers");
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for e in entries.flatten() {
                // A record is trusted no further than its names: they reach paths.
                match netstack::record::read_json::<ContainerRecord>(&e.path().join(CONTAINER_FILE)) {
                    Ok(c) if c.pod == p && e.file_name() == c.name.as_str() => out.push(c),
                    _ => {}
                }
            }
        }
        out.sort_by_key(|a| a.created);
        Ok(out)
    }

    /// A container by runtime id, or by name within `pod`.
    pub fn container(&self, pod: &str, name: &str) -> Result<ContainerRecord> {
        let p = self.pod(pod)?;
        let no_such = || PodError::NoSuchContainer { pod: p.name.to_string(), name: name.to_string() };
        let name = ContainerName::new(name).map_err(|_| no_such())?;
        netstack::record::read_json(&self.container_dir(&p.id, &name).join(CONTAINER_FILE)).map_err(|_| no_such())
    }

    /// A container by its runtime id (`<pod id>-<name>`).
    pub fn container_by_id(&self, id: &str) -> Result<ContainerRecord> {
        let not_found = || PodError::NoSuchContainer { pod: "?".into(), name: id.to_string() };
        let (pod, name) = id.split_at_checked(12).ok_or_else(not_found)?;
        let pod = PodId::parse(pod).ok_or_else(not_found)?;
        let name = ContainerName::new(name.strip_prefix('-').ok_or_else(not_found)?).map_err(|_| not_found())?;
        netstack::record::read_json(&self.container_dir(&pod, &name).join(CONTAINER_FILE)).map_err(|_| not_found())
    }

    /// Whether nobody holds the pod's lock: no stop, removal or container create of it
    /// is under way in any process.
    pub(super) fn pod_lock_free(&self, id: &PodId) -> bool {
        let Ok(f) = std::fs::OpenOptions::new().write(true).open(self.pod_dir(id).join("lock")) else {
            // Never locked, or gone.
            return self.pod_dir(id).exists();
        };
        nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock).is_ok()
    }

    /// The pod's lock, held while a container is made in it and while it is torn
    /// down, so that no container starts in a pod being removed. None when the pod is
    /// gone.
    pub(super) fn pod_lock(&self, id: &PodId, how: nix::fcntl::FlockArg) -> Result<Option<nix::fcntl::Flock<std::fs::File>>> {
        let path = self.pod_dir(id).join("lock");
        let f = match std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("opening", &path)(e)),
        };
        let lock = nix::fcntl::Flock::lock(f, how).map_err(|(_, e)| io_err("locking", &path)(io::Error::from(e)))?;
        // Removed while we waited: the lock guards a deleted file.
        Ok(has_record(&self.root, id).then_some(lock))
    }
}

pub(super) fn pod_dir(root: &Path, id: &PodId) -> PathBuf {
    root.join("pods").join(id.as_str())
}

/// Whether pod `id` exists: its directory is renamed into place with its record
/// and renamed away whole, so the record is what says so.
pub(super) fn has_record(root: &Path, id: &PodId) -> bool {
    pod_dir(root, id).join(POD_FILE).exists()
}

/// The pods recorded in the pod directories `entries` of `dir` lists.
pub(super) fn pods_in(dir: &Path, entries: std::fs::ReadDir) -> Vec<PodRecord> {
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| PodId::parse(&e.file_name().to_string_lossy()))
        .filter_map(|id| netstack::record::read_json(&dir.join(id.as_str()).join(POD_FILE)).ok())
        .collect()
}
