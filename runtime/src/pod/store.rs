//! Where pods and containers are recorded: their directories, records, the name
//! index and the pod locks.

use super::*;

impl Pods {
    pub(super) fn pod_dir(&self, id: &PodId) -> PathBuf {
        self.root.join("pods").join(id.as_str())
    }

    /// Every pod under the root, of every scope, sorted by creation.
    pub fn pods(&self) -> Result<Vec<PodRecord>> {
        let dir = self.root.join("pods");
        let entries = std::fs::read_dir(&dir).map_err(io_err("listing", &dir))?;
        let mut out: Vec<PodRecord> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| PodId::parse(&e.file_name().to_string_lossy()))
            .filter_map(|id| netstack::record::read_json(&self.pod_dir(&id).join(POD_FILE)).ok())
            .collect();
        out.sort_by_key(|a| a.created);
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
        self.root.join("pods").join(".names").join(scope.as_str()).join(name.as_str())
    }

    /// The id a pod name of `scope` is claimed by, if any.
    fn name_index(&self, scope: &Scope, name: &PodName) -> Option<PodId> {
        PodId::parse(std::fs::read_to_string(self.name_file(scope, name)).ok()?.trim())
    }

    /// Claims `name` in this scope for pod `id` (an exclusive create). A claim whose
    /// pod is gone (a crash before its record) is taken over.
    pub(super) fn claim_name(&self, name: &PodName, id: &PodId) -> Result<()> {
        use std::io::Write;
        let path = self.name_file(&self.scope, name);
        let dir = path.parent().unwrap_or(&path);
        std::fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
        for _ in 0..2 {
            match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut f) => return f.write_all(id.as_str().as_bytes()).map_err(io_err("writing", &path)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    let holder = std::fs::read_to_string(&path).ok().and_then(|t| PodId::parse(t.trim()));
                    match holder {
                        Some(other) if self.pod_dir(&other).exists() => return Err(PodError::PodExists { name: name.clone(), id: other }),
                        // A claim being written right now reads as empty: never steal it.
                        None if path.metadata().is_ok_and(|m| m.len() == 0) => return Err(PodError::NameContended(name.clone())),
                        _ => {
                            let _ = std::fs::remove_file(&path);
                        }
                    }
                }
                Err(e) => return Err(io_err("claiming the name in", &path)(e)),
            }
        }
        Err(PodError::NameContended(name.clone()))
    }

    pub(super) fn release_name(&self, pod: &PodRecord) {
        if self.name_index(&pod.scope, &pod.name).as_ref() == Some(&pod.id) {
            let _ = std::fs::remove_file(self.name_file(&pod.scope, &pod.name));
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
        Ok(self.pod_dir(id).join(POD_FILE).exists().then_some(lock))
    }
}
