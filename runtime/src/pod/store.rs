//! Where pods and containers are recorded: their directories, records, the name
//! index and the pod locks.

use super::*;

impl Pods {
    pub(super) fn pod_dir(&self, id: &PodId) -> PathBuf {
        self.root.join("pods").join(id.as_str())
    }

    /// Whether pod `id` exists: its directory is renamed into place with its record
    /// and renamed away whole, so the record is what says so.
    fn has_record(&self, id: &PodId) -> bool {
        self.pod_dir(id).join(POD_FILE).exists()
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
            .and_then(|name| self.name_index(&self.scope, &name))
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

    fn name_file(&self, scope: &Scope, name: &PodName) -> PathBuf {
        name_index_dir(&self.root, scope).join(name.as_str())
    }

    /// The id a pod name of `scope` is claimed by, if any.
    fn name_index(&self, scope: &Scope, name: &PodName) -> Option<PodId> {
        PodId::parse(std::fs::read_to_string(self.name_file(scope, name)).ok()?.trim())
    }

    /// Claims `name` in this scope for pod `id`, whose record exists already. The claim
    /// appears whole or not at all (a complete file hard-linked into place, which fails
    /// if the name is taken), so a crash never leaves an empty claim. A claim whose pod
    /// has no record (a crash before its release) is stale and taken over.
    pub(super) fn claim_name(&self, name: &PodName, id: &PodId) -> Result<()> {
        let path = self.name_file(&self.scope, name);
        let dir = path.parent().unwrap_or(&path);
        // Written whole under a name of its own (nobody reads it there; a crash leaves a
        // temporary file the sweep removes), then linked into place. Not fsynced: the
        // pod records it guards are not either, and a reboot ends the pods anyway.
        let whole = netstack::record::temp_path(&path);
        // The scope's directory goes with its last name (`release_name`), so it may go
        // between its creation and the write; once the write is in, it stays.
        let mut attempts = 0;
        loop {
            std::fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
            match std::fs::write(&whole, id.as_str()) {
                Err(e) if e.kind() == io::ErrorKind::NotFound && attempts < 3 => attempts += 1,
                written => break written.map_err(io_err("writing", &whole))?,
            }
        }
        let claimed = (|| {
            for _ in 0..2 {
                match std::fs::hard_link(&whole, &path) {
                    Ok(()) => return Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => match self.name_index(&self.scope, name) {
                        Some(other) if self.has_record(&other) => return Err(PodError::PodExists { name: name.clone(), id: other }),
                        _ => self.drop_stale_claim(&path),
                    },
                    Err(e) => return Err(io_err("claiming the name in", &path)(e)),
                }
            }
            Err(PodError::NameContended(name.clone()))
        })();
        let _ = std::fs::remove_file(&whole);
        claimed
    }

    /// Removes the claim at `path` if it is still stale (its pod has no record) once
    /// the index lock is held, so that two processes taking over one stale claim at
    /// once cannot remove each other's new one.
    fn drop_stale_claim(&self, path: &Path) {
        let Ok(lock) =
            std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(self.root.join("pods").join(".names").join("lock"))
        else {
            return;
        };
        let Ok(_lock) = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive) else { return };
        // Gone already: another process's claim may appear any moment, and is not ours to remove.
        let Ok(text) = std::fs::read_to_string(path) else { return };
        if PodId::parse(text.trim()).is_none_or(|other| !self.has_record(&other)) {
            let _ = std::fs::remove_file(path);
        }
    }

    /// Name claims whose pod has no record (a crash between a pod's removal and the
    /// release of its name), and claim files a dead process was writing. Removed;
    /// returns them as `scope/name` and as paths.
    pub(super) fn sweep_stale_claims(&self) -> (Vec<String>, Vec<PathBuf>) {
        let (mut swept, mut temps) = (Vec::new(), Vec::new());
        let names = self.root.join("pods").join(".names");
        for scope in std::fs::read_dir(&names).into_iter().flatten().flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())) {
            temps.extend(netstack::record::remove_dead_temps(&scope.path()).0);
            for claim in std::fs::read_dir(scope.path()).into_iter().flatten().flatten() {
                let file = claim.file_name().to_string_lossy().into_owned();
                if netstack::record::is_temp_name(&file) {
                    continue;
                }
                let path = claim.path();
                let holder = std::fs::read_to_string(&path).ok().and_then(|t| PodId::parse(t.trim()));
                if holder.is_none_or(|id| !self.has_record(&id)) {
                    self.drop_stale_claim(&path);
                    if !path.exists() {
                        swept.push(format!("{}/{file}", scope.file_name().to_string_lossy()));
                    }
                }
            }
            // Empty once its last stale claim went (it fails while names remain).
            let _ = std::fs::remove_dir(scope.path());
        }
        (swept, temps)
    }

    pub(super) fn release_name(&self, pod: &PodRecord) {
        if self.name_index(&pod.scope, &pod.name).as_ref() == Some(&pod.id) {
            let _ = std::fs::remove_file(self.name_file(&pod.scope, &pod.name));
            // The scope's last name takes its directory along (it fails while others remain).
            let _ = std::fs::remove_dir(name_index_dir(&self.root, &pod.scope));
        }
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
        Ok(self.has_record(id).then_some(lock))
    }
}

/// Where the pod names of `scope` are claimed, one file per name.
pub(super) fn name_index_dir(root: &Path, scope: &Scope) -> PathBuf {
    root.join("pods").join(".names").join(scope.as_str())
}

/// The pods recorded in the pod directories `entries` of `dir` lists.
pub(super) fn pods_in(dir: &Path, entries: std::fs::ReadDir) -> Vec<PodRecord> {
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| PodId::parse(&e.file_name().to_string_lossy()))
        .filter_map(|id| netstack::record::read_json(&dir.join(id.as_str()).join(POD_FILE)).ok())
        .collect()
}
