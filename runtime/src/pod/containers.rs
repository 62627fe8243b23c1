//! Containers of pods: made from images or directories, started, stopped, removed,
//! their limits changed.

use super::*;

/// What a container is made from.
#[derive(Debug, Clone)]
pub struct ContainerConfig {
    pub name: ContainerName,
    pub source: RootfsSource,
    pub process: ProcessOverrides,
    pub mounts: Vec<BindMount>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// Log file; default: `<pod log dir>/<name>_<attempt>.log` or the container's dir.
    pub log_path: Option<PathBuf>,
    pub attempt: u32,
    pub security: Security,
    pub resources: Resources,
    /// Its stdin is a pipe kept open for [`Pods::attach`] (CRI stdin); with
    /// `stdin_once` it is closed when the first attach session ends.
    pub stdin: bool,
    pub stdin_once: bool,
    /// It runs on a terminal of its own (CRI tty): its output is the terminal's, and
    /// with `stdin` an attach types into it and resizes it.
    pub tty: bool,
    /// Ports it declares by name: they become the pod's (a Service's `targetPort` or a
    /// NetworkPolicy's port may name them), for as long as the pod lives.
    pub named_ports: Vec<NamedPort>,
}

impl ContainerConfig {
    pub fn new(name: ContainerName, source: RootfsSource) -> Self {
        Self {
            name,
            source,
            process: ProcessOverrides::default(),
            mounts: vec![],
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            log_path: None,
            attempt: 0,
            security: Security::default(),
            resources: Resources::default(),
            stdin: false,
            stdin_once: false,
            tty: false,
            named_ports: vec![],
        }
    }
}

/// `new` over `old`, field by field.
fn merge_resources(old: &Resources, new: &Resources) -> Resources {
    let mut hugepages = old.hugepages.clone();
    hugepages.extend(new.hugepages.clone());
    let mut unified = old.unified.clone();
    unified.extend(new.unified.clone());
    Resources {
        cpu_shares: new.cpu_shares.or(old.cpu_shares),
        cpu_quota: new.cpu_quota.or(old.cpu_quota),
        cpu_period: new.cpu_period.or(old.cpu_period),
        cpuset_cpus: new.cpuset_cpus.clone().or_else(|| old.cpuset_cpus.clone()),
        cpuset_mems: new.cpuset_mems.clone().or_else(|| old.cpuset_mems.clone()),
        memory_limit: new.memory_limit.or(old.memory_limit),
        memory_swap: new.memory_swap.or(old.memory_swap),
        hugepages,
        unified,
        pids: new.pids.or(old.pids),
    }
}

impl Pods {
    /// The runtime's view of a container (status, pid, exit).
    pub fn container_state(&self, c: &ContainerRecord) -> Result<ContainerState> {
        Ok(self.oci.state(&c.id)?)
    }

    /// Changes a container's cgroup limits (running or not) and records them; the
    /// settings not given stay as they were.
    pub fn update_container_resources(&self, c: &ContainerRecord, resources: &Resources) -> Result<ContainerRecord> {
        let oci = resources.to_oci().map_err(ConfigError::Limits)?;
        crate::cgroups::check_resources(&oci).map_err(PodError::Limits)?;
        let st = self.container_state(c)?;
        if st.live_status() == Status::Stopped {
            return Err(PodError::ContainerExited { pod: c.pod.to_string(), name: c.name.to_string() });
        }
        crate::cgroups::Cgroup::from_paths(st.cgroup_paths.clone()).update(&oci).map_err(PodError::Limits)?;
        let mut rec = c.clone();
        rec.resources = merge_resources(&c.resources, resources);
        write_json(&self.container_dir(&c.pod, &c.name).join(CONTAINER_FILE), &rec)?;
        Ok(rec)
    }

    /// The uid, gid and supplementary gids a container's processes run with, as its
    /// spec resolved them (image user names, merged image groups).
    pub fn container_user(&self, c: &ContainerRecord) -> Result<(u32, u32, Vec<u32>)> {
        let path = self.container_dir(&c.pod, &c.name).join("config.json");
        let spec: oci_spec::runtime::Spec = netstack::record::read_json(&path).map_err(io_err("reading", &path))?;
        let user = spec.process().as_ref().map(|p| p.user().clone()).unwrap_or_default();
        Ok((user.uid(), user.gid(), user.additional_gids().clone().unwrap_or_default()))
    }

    /// What the image store uses on disk (its unpacked layers, blobs and indexes).
    pub fn image_fs_usage(&self) -> Result<crate::disk::DiskUsage> {
        let dir = self.images.dir();
        crate::disk::usage(dir).map_err(io_err("measuring", dir))
    }

    /// The directory that holds every container's writable layer.
    pub fn writable_layers_dir(&self) -> PathBuf {
        self.root.join("pods")
    }

    /// What one container has written to its root filesystem (its overlay upper dir).
    pub fn writable_layer_usage(&self, c: &ContainerRecord) -> Result<crate::disk::DiskUsage> {
        let upper = self.container_dir(&c.pod, &c.name).join("upper");
        crate::disk::usage(&upper).map_err(io_err("measuring", &upper))
    }

    /// Creates a container in a ready pod; its process waits for [`Pods::start_container`].
    /// Ports it declares by name that the pod did not have yet are added to the pod,
    /// and the services and policies that give them by name follow.
    pub fn create_container(&self, pod: &str, cfg: ContainerConfig) -> Result<ContainerRecord> {
        let declares = !cfg.named_ports.is_empty();
        let (made, pod) = self.create_container_locked(pod, cfg)?;
        if declares {
            // After the pod's lock is let go: the syncs take the services' lock, which
            // is held while pods are read. Also when the ports were declared before: a
            // create that failed here is retried with the same ports.
            let synced = self.sync_policies_of(&pod).and_then(|()| self.sync_services_of(&pod));
            if let Err(e) = synced {
                let _ = self.remove_container_record(&made, true);
                return Err(e);
            }
        }
        Ok(made)
    }

    /// [`Pods::create_container`] under the pod's lock, with the pod as it is after.
    fn create_container_locked(&self, pod: &str, cfg: ContainerConfig) -> Result<(ContainerRecord, PodRecord)> {
        let pod = self.pod(pod)?;
        // Exclusive: creates in one pod are serialised, which also makes a crashed
        // create's leftovers safe to take over below.
        let Some(_lock) = self.pod_lock(&pod.id, nix::fcntl::FlockArg::LockExclusive)? else {
            return Err(PodError::NoSuchPod(pod.name.to_string()));
        };
        // Re-read under the lock: a stop may have come first.
        let pod = self.pod(pod.id.as_str())?;
        if pod.status != PodStatus::Ready {
            return Err(PodError::PodNotReady { pod: pod.name.to_string(), status: pod.status, what: "containers need a ready pod" });
        }
        if pod.pid_holder.is_some_and(|h| !h.alive()) {
            return Err(PodError::PodNotReady {
                pod: pod.name.to_string(),
                status: pod.status,
                what: "the PID 1 holding its shared PID namespace is gone (killed from outside): remove the pod and make it again",
            });
        }
        for m in cfg.mounts.iter().filter(|m| m.propagation == Propagation::Bidirectional) {
            // Mounts made in the container reach the node only through a mount that has
            // peers on the node: from a private one they would silently stay inside.
            match crate::rootfs::mount_holding(&m.host) {
                Some((_, true)) => {}
                Some((point, false)) => {
                    return Err(ConfigError::NotSharedMount { target: m.container.clone(), host: m.host.clone(), point }.into())
                }
                None => return Err(ConfigError::NoMountSource { target: m.container.clone(), host: m.host.clone() }.into()),
            }
        }
        let (lower, image) = match &cfg.source {
            RootfsSource::Image(r) => {
                let img = self.images.get(r)?;
                (self.images.lower_dirs(&img), Some(img))
            }
            RootfsSource::Dir(d) => {
                if !d.is_dir() {
                    return Err(PodError::NoRootfs(d.clone()));
                }
                let d = std::path::absolute(d).map_err(io_err("resolving", d))?;
                (vec![d], None)
            }
        };
        let args = spec::args(&cfg.process, image.as_ref().map(|i| &i.config))?;
        let dir = self.container_dir(&pod.id, &cfg.name);
        // Not create_dir_all: a pod removed meanwhile must not come back as a bare directory.
        let mut made = std::fs::create_dir(&dir);
        if matches!(&made, Err(e) if e.kind() == io::ErrorKind::AlreadyExists) && !dir.join(CONTAINER_FILE).exists() {
            // A create that crashed before its record (we hold the pod's lock, so no
            // create is running): what it left has no process and is taken over.
            if let Ok(id) = ContainerId::new(format!("{}-{}", pod.id, cfg.name)) {
                let _ = self.oci.delete(&id, true);
            }
            let _ = std::fs::remove_dir_all(&dir);
            made = std::fs::create_dir(&dir);
        }
        match made {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(PodError::ContainerExists { pod: pod.name.to_string(), name: cfg.name.to_string() });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(PodError::NoSuchPod(pod.name.to_string())),
            r => r.map_err(io_err("creating", &dir))?,
        }
        let mut with_ports = pod.clone();
        let added = add_named_ports(&mut with_ports.named_ports, &cfg.named_ports).map_err(ConfigError::NamedPort);
        let made = added.map_err(PodError::from).and_then(|added| {
            let rec = self.make_container(&pod, &dir, &cfg, args, lower, image.as_ref())?;
            if added {
                if let Err(e) = self.save_pod(&with_ports) {
                    let _ = self.oci.delete(&rec.id, true);
                    return Err(e);
                }
            }
            Ok((rec, with_ports))
        });
        if made.is_err() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        made
    }

    fn make_container(
        &self,
        pod: &PodRecord,
        dir: &Path,
        cfg: &ContainerConfig,
        args: Vec<String>,
        lower: Vec<PathBuf>,
        image: Option<&crate::image::Image>,
    ) -> Result<ContainerRecord> {
        let log_path = match (&cfg.log_path, &pod.log_dir) {
            (Some(p), _) => p.clone(),
            (None, Some(d)) => d.join(format!("{}_{}.log", cfg.name, cfg.attempt)),
            (None, None) => dir.join("container.log"),
        };
        // The monitor writes it from `/`.
        let log_path = std::path::absolute(&log_path).map_err(io_err("resolving", &log_path))?;
        if let Some(parent) = log_path.parent() {
            std::fs::create_dir_all(parent).map_err(io_err("creating the log directory", parent))?;
        }
        let rec = ContainerRecord {
            name: cfg.name.clone(),
            id: ContainerId::new(format!("{}-{}", pod.id, cfg.name))?,
            pod: pod.id.clone(),
            source: cfg.source.clone(),
            image_id: image.map(|i| i.id.clone()),
            args,
            log_path: log_path.clone(),
            labels: cfg.labels.clone(),
            annotations: cfg.annotations.clone(),
            created: crate::time::Timestamp::now(),
            attempt: cfg.attempt,
            mounts: cfg.mounts.clone(),
            resources: cfg.resources.clone(),
            tty: cfg.tty,
        };
        let pod_dir = self.pod_dir(&pod.id);
        let inputs = spec::SpecInputs { config: cfg, image: image.map(|i| &i.config), layers: &lower };
        let spec = spec::container_spec(pod, &pod_dir, &rec, &inputs)?;
        for d in ["rootfs", "upper", "work"] {
            std::fs::create_dir(dir.join(d)).map_err(io_err("creating", &dir.join(d)))?;
        }
        write_json(&dir.join("config.json"), &spec)?;
        write_json(&dir.join(CONTAINER_FILE), &rec)?;
        let overlay = Overlay { lower, upper: dir.join("upper"), work: dir.join("work") };
        let opts = CreateOptions {
            stdio: Stdio::Log(log_path),
            stdin: cfg.stdin.then_some(cfg.stdin_once),
            overlay: Some(overlay),
            // A mount that receives the node's later mounts must be bound from the node's
            // own table: the template is a copy from an earlier moment, in which a source
            // made shared since is a plain directory with no peer on the node.
            mount_template: if cfg.mounts.iter().all(|m| m.propagation == Propagation::Private) { self.template.get() } else { None },
            ..Default::default()
        };
        self.oci.create(&rec.id, dir, opts)?;
        Ok(rec)
    }

    /// Releases a created container's process.
    pub fn start_container(&self, c: &ContainerRecord) -> Result<()> {
        Ok(self.oci.start(&c.id)?)
    }

    /// Stops a container: SIGTERM to its process, SIGKILL to all of them after
    /// `timeout`. Stopping a stopped container is fine.
    pub fn stop_container_record(&self, c: &ContainerRecord, timeout: Duration) -> Result<()> {
        let st = match self.oci.state(&c.id) {
            Ok(st) => st,
            Err(ContainerError::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        if !matches!(st.live_status(), Status::Running | Status::Created) {
            return Ok(());
        }
        if st.live_status() == Status::Running && !timeout.is_zero() {
            if let (Some(pid), Some(start)) = (st.pid, st.pid_start_time) {
                if self.terminate(c, pid, start, timeout) {
                    // Let the monitor record the exit before the caller reads it.
                    crate::pidfd::wait_gone(st.monitor_pid, st.monitor_start_time, Duration::from_secs(2));
                    return Ok(());
                }
            }
        }
        match self.oci.kill(&c.id, Signal::KILL, true) {
            Ok(()) | Err(ContainerError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        if let (Some(pid), Some(start)) = (st.pid, st.pid_start_time) {
            crate::pidfd::wait_gone(pid, start, Duration::from_secs(10));
        }
        crate::pidfd::wait_gone(st.monitor_pid, st.monitor_start_time, Duration::from_secs(2));
        Ok(())
    }

    /// Sends SIGTERM to a container's init and waits up to `timeout` for it to exit.
    /// A container stopped just after it started may get the signal before its program
    /// installed a handler; as a PID namespace's init it then drops it, so the signal
    /// is sent again once the handler is there (never twice to a program that had one).
    fn terminate(&self, c: &ContainerRecord, pid: i32, start: u64, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        let mut handled = Signal::TERM.caught_by(pid);
        let _ = self.oci.kill(&c.id, Signal::TERM, false);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            let slice = if handled { left } else { left.min(Duration::from_millis(100)) };
            if crate::pidfd::wait_gone(pid, start, slice) {
                return true;
            }
            if !handled && Signal::TERM.caught_by(pid) {
                handled = true;
                let _ = self.oci.kill(&c.id, Signal::TERM, false);
            }
        }
    }

    /// Removes container `name` of pod `pod`: refused while it runs unless `force`
    /// (then it is killed first). Removing a container that is gone is not an error.
    pub fn remove_container(&self, pod: &str, name: &str, force: bool) -> Result<()> {
        match self.container(pod, name) {
            Ok(c) => self.remove_container_checked(&c, force),
            Err(PodError::NoSuchContainer { .. } | PodError::NoSuchPod(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// As [`Pods::remove_container`], by container id.
    pub fn remove_container_by_id(&self, id: &str, force: bool) -> Result<()> {
        match self.container_by_id(id) {
            Ok(c) => self.remove_container_checked(&c, force),
            Err(PodError::NoSuchContainer { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub(crate) fn remove_container_checked(&self, c: &ContainerRecord, force: bool) -> Result<()> {
        if !force && self.container_state(c).is_ok_and(|s| s.live_status() == Status::Running) {
            return Err(PodError::ContainerRunning { pod: c.pod.to_string(), name: c.name.to_string() });
        }
        self.remove_container_record(c, true)?;
        // A removed container gates its pod's readiness no more (its probe, if any,
        // ended with it, perhaps after recording it unready).
        self.set_container_ready(&c.pod, &c.name, true)?;
        Ok(())
    }

    /// Removes a container (killing it with `force`); removing one that is gone is fine.
    pub fn remove_container_record(&self, c: &ContainerRecord, force: bool) -> Result<()> {
        match self.oci.delete(&c.id, force) {
            Ok(()) | Err(ContainerError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        let dir = self.container_dir(&c.pod, &c.name);
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("removing", &dir)(e)),
            _ => Ok(()),
        }
    }

    /// Waits for a container's process to exit.
    pub fn wait_container(&self, c: &ContainerRecord) -> Result<ExitStatus> {
        Ok(self.oci.wait(&c.id)?)
    }

    /// The container's log, line by line.
    pub fn logs(&self, c: &ContainerRecord) -> Result<Vec<LogLine>> {
        crate::logs::read(&c.log_path).map_err(io_err("reading the log", &c.log_path))
    }

    /// Removes an image from the store, unless a container uses it (its layers are
    /// that container's root filesystem).
    pub fn remove_image(&self, reference: &str) -> Result<()> {
        let img = self.images.get(reference)?;
        let users: Vec<String> = self
            .containers(None)?
            .into_iter()
            .filter(|c| c.image_id.as_deref() == Some(img.id.as_str()))
            .map(|c| c.id.to_string())
            .collect();
        if !users.is_empty() {
            return Err(PodError::ImageInUse { reference: reference.to_string(), users });
        }
        Ok(self.images.remove(reference)?)
    }

    /// Sends `signal` to a container's process.
    pub fn kill(&self, c: &ContainerRecord, signal: Signal) -> Result<()> {
        Ok(self.oci.kill(&c.id, signal, false)?)
    }
}
