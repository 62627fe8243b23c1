//! Containers of the embedding API: built, started, exec'd into, read, stopped.

use super::*;

/// A container being described; [`ContainerBuilder::start`] makes and starts it.
pub struct ContainerBuilder {
    pub(super) rt: Arc<Inner>,
    pub(super) pod: PodRecord,
    /// A bad name is kept here and reported by `create`.
    pub(super) cfg: Result<ContainerConfig>,
    pub(super) source_set: bool,
    pub(super) ready: Vec<Ready>,
    pub(super) readiness: Option<Ready>,
}

impl ContainerBuilder {
    fn edit<R>(mut self, f: impl FnOnce(&mut ContainerConfig) -> R) -> Self {
        if let Ok(c) = &mut self.cfg {
            f(c);
        }
        self
    }

    /// Root filesystem from an image in the store (by reference or id).
    pub fn image(mut self, reference: &str) -> Self {
        self.source_set = true;
        self.edit(|c| c.source = RootfsSource::Image(reference.into()))
    }

    /// Root filesystem from a directory, kept unchanged under an overlay.
    pub fn rootfs(mut self, dir: impl Into<PathBuf>) -> Self {
        self.source_set = true;
        self.edit(|c| c.source = RootfsSource::Dir(dir.into()))
    }

    /// The command, replacing the image's entrypoint and cmd.
    pub fn cmd<S: Into<String>>(self, args: impl IntoIterator<Item = S>) -> Self {
        self.edit(|c| c.process.args = Some(args.into_iter().map(Into::into).collect()))
    }

    pub fn env(self, key: &str, value: &str) -> Self {
        self.edit(|c| c.process.env.push(format!("{key}={value}")))
    }

    pub fn workdir(self, dir: &str) -> Self {
        self.edit(|c| c.process.workdir = Some(dir.into()))
    }

    pub fn user(self, uid: u32, gid: u32) -> Self {
        self.edit(|c| c.process.user = Some((uid, gid)))
    }

    /// Bind-mounts host path `host` at `container`, writable.
    pub fn mount(self, host: impl Into<PathBuf>, container: impl Into<PathBuf>) -> Self {
        self.edit(|c| {
            c.mounts.push(BindMount { host: host.into(), container: container.into(), readonly: false, propagation: Default::default() })
        })
    }

    /// Bind-mounts host path `host` at `container`, read-only.
    pub fn mount_ro(self, host: impl Into<PathBuf>, container: impl Into<PathBuf>) -> Self {
        self.edit(|c| {
            c.mounts.push(BindMount { host: host.into(), container: container.into(), readonly: true, propagation: Default::default() })
        })
    }

    pub fn label(self, key: &str, value: &str) -> Self {
        self.edit(|c| c.labels.insert(key.into(), value.into()))
    }

    /// Where the container's CRI-format log goes.
    pub fn log_path(self, path: impl Into<PathBuf>) -> Self {
        self.edit(|c| c.log_path = Some(path.into()))
    }

    /// [`ContainerBuilder::start`] returns once this holds (checks run in order).
    pub fn wait_for(mut self, ready: Ready) -> Self {
        self.ready.push(ready);
        self
    }

    /// A readiness probe, as a Kubernetes container's `readinessProbe`: `probe` is
    /// checked every [`Ready::period`] for as long as the container runs. From its
    /// create until a check first passes, after [`Ready::failure_threshold`] failed
    /// checks in a row, and once it stopped, the container is unready, and its pod no
    /// endpoint of the Services that select it.
    pub fn readiness(mut self, probe: Ready) -> Self {
        self.readiness = Some(probe);
        self
    }

    /// Creates the container without starting its process (and its readiness probe,
    /// if it has one).
    pub async fn create(self) -> Result<Container> {
        let cfg = self.cfg?;
        if !self.source_set {
            return Err(ConfigError::NoRootfsSource(cfg.name).into());
        }
        if let (Some(_), Some(why)) = (&self.readiness, self.pod.host_network.then_some("a pod of the node's network")) {
            return Err(ConfigError::Readiness(format!("{why} is no Service's endpoint: a readiness probe would gate nothing")).into());
        }
        let rt = self.rt.clone();
        let pod = self.pod.id.to_string();
        let gated = self.readiness.is_some();
        let record = blocking(move || {
            let made = rt.pods.create_container(&pod, cfg)?;
            if gated {
                // Unready before its process runs, so that no connection reaches it early.
                if let Err(e) = rt.pods.set_container_ready(&made.pod, &made.name, false) {
                    let _ = rt.pods.remove_container_record(&made, true);
                    return Err(e);
                }
            }
            Ok(made)
        })
        .await?;
        if let Some(probe) = self.readiness {
            ready::run_probe(&self.rt, self.pod.clone(), record.clone(), probe);
        }
        Ok(Container { rt: self.rt, pod: self.pod, record })
    }

    /// Creates and starts the container, then waits for every readiness condition.
    pub async fn start(self) -> Result<Container> {
        let ready = self.ready.clone();
        let c = self.create().await?;
        c.start().await?;
        for r in ready {
            c.wait_for(r).await?;
        }
        Ok(c)
    }
}

/// A container of a pod. It goes with its pod; dropping this handle keeps it.
#[derive(Clone)]
pub struct Container {
    pub(super) rt: Arc<Inner>,
    pub(super) pod: PodRecord,
    pub(super) record: ContainerRecord,
}

impl Container {
    /// The id under the runtime root.
    pub fn id(&self) -> &str {
        self.record.id.as_str()
    }

    pub fn name(&self) -> &str {
        self.record.name.as_str()
    }

    pub fn record(&self) -> &ContainerRecord {
        &self.record
    }

    async fn with<T: Send + 'static>(&self, f: impl FnOnce(&Pods, &ContainerRecord) -> Result<T> + Send + 'static) -> Result<T> {
        let (rt, rec) = (self.rt.clone(), self.record.clone());
        blocking(move || f(&rt.pods, &rec)).await
    }

    /// Releases a created container's process.
    pub async fn start(&self) -> Result<()> {
        self.with(|p, c| p.start_container(c)).await
    }

    /// Runs a command inside (killed after 30 s) and collects its output.
    pub async fn exec<S: Into<String>>(&self, args: impl IntoIterator<Item = S>) -> Result<ExecOutput> {
        self.exec_timeout(args, DEFAULT_EXEC_TIMEOUT).await
    }

    /// [`Container::exec`] with another time limit.
    pub async fn exec_timeout<S: Into<String>>(&self, args: impl IntoIterator<Item = S>, timeout: Duration) -> Result<ExecOutput> {
        let args: Vec<String> = args.into_iter().map(Into::into).collect();
        self.with(move |p, c| p.exec(c, args, Some(timeout))).await
    }

    /// The log so far.
    pub async fn logs(&self) -> Result<Vec<LogLine>> {
        self.with(|p, c| p.logs(c)).await
    }

    /// The log so far as text, one line per line, stdout and stderr interleaved.
    pub async fn logs_text(&self) -> Result<String> {
        Ok(self.logs().await?.into_iter().map(|l| l.text + "\n").collect())
    }

    /// Waits for the process to exit.
    pub async fn wait(&self) -> Result<ExitStatus> {
        self.with(|p, c| p.wait_container(c)).await
    }

    /// The runtime's state of the container.
    pub async fn state(&self) -> Result<ContainerState> {
        self.with(|p, c| p.container_state(c)).await
    }

    /// SIGTERM, then SIGKILL after `timeout`.
    pub async fn stop(&self, timeout: Duration) -> Result<()> {
        self.with(move |p, c| p.stop_container_record(c, timeout)).await
    }

    pub async fn kill(&self, signal: Signal) -> Result<()> {
        self.with(move |p, c| p.kill(c, signal)).await
    }

    /// Removes the container (killing it if it runs); it gates its pod's readiness no
    /// more.
    pub async fn remove(self) -> Result<()> {
        self.with(|p, c| p.remove_container_checked(c, true)).await
    }

    /// Waits until `ready` holds (a port, a log line, an exec, an HTTP 200).
    pub async fn wait_for(&self, ready: Ready) -> Result<()> {
        ready::wait(&self.rt, &self.pod, Some(&self.record), ready).await
    }
}

impl std::fmt::Debug for Container {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Container").field("id", &self.record.id).field("pod", &self.pod.name).finish()
    }
}
