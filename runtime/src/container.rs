//! The runtime API: create, start, state, kill, delete, list, wait, run and exec on
//! containers kept under one state root.

use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;

use crate::bundle::{Bundle, BundleError};
use crate::cgroups::{Cgroup, CgroupError};
use crate::id::{ContainerId, IdError};
use crate::process::channel::{Channel, ChannelError};
use crate::process::messages::{CreateRequest, ExecRequest, HelperRequest, MonitorRequest, Report};
use crate::process::{self, monitor, SpawnError};
use crate::signal::Signal;
use crate::state::{self, ContainerState, ExitStatus, StateError, Status};

mod attach;
pub use attach::{AttachOptions, Attached};

/// Default state root, as for runc's `/run/runc`.
pub const DEFAULT_ROOT: &str = "/run/minipod";
/// Copy of the container's spec kept for `exec`, so later bundle edits do not leak in.
const SPEC_COPY: &str = "config.json";
/// How long delete waits for a killed workload and its monitor to go.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// A container operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error(transparent)]
    Id(#[from] IdError),
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error("the spec's seccomp filter")]
    Seccomp(#[from] crate::seccomp::SeccompError),
    #[error("container {id} already exists in {root}")]
    AlreadyExists { id: ContainerId, root: PathBuf },
    #[error("container {id} does not exist in {root}")]
    NotFound { id: ContainerId, root: PathBuf },
    #[error("container {id} is running")]
    StillRunning { id: ContainerId },
    #[error("cannot {op} container {id}: it is {status}{hint}")]
    WrongState { id: ContainerId, op: &'static str, status: Status, hint: &'static str },
    #[error(
        "cgroup {0} already exists, probably for a container of the same id under another --root: pick another id or set linux.cgroupsPath"
    )]
    CgroupTaken(PathBuf),
    #[error("creating container {id}: {message}")]
    Setup { id: ContainerId, message: String },
    #[error("starting container {id}: {message}")]
    Start { id: ContainerId, message: String },
    #[error("exec in container {id}: {message}")]
    Exec { id: ContainerId, message: String },
    #[error("exec in container {id}: the process ran longer than {secs} s and was killed")]
    ExecTimeout { id: ContainerId, secs: f64 },
    #[error("the minipod helper exited without a report: a binary that embeds minipod-runtime must link it normally (see the crate docs)")]
    HelperVanished,
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    #[error("talking to the container's monitor")]
    Channel(#[from] ChannelError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error("sending {signal} to container {id} (pid {pid})")]
    Kill {
        id: ContainerId,
        signal: Signal,
        pid: i32,
        #[source]
        source: Errno,
    },
    #[error("container {id}: pid {pid} did not exit within {secs} s of SIGKILL")]
    KillTimeout { id: ContainerId, pid: i32, secs: u64 },
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

type Result<T, E = ContainerError> = std::result::Result<T, E>;

/// Where a container's stdin, stdout and stderr go.
#[derive(Debug, Default)]
pub enum Stdio {
    /// /dev/null for all three.
    #[default]
    Null,
    /// The caller's own 0, 1 and 2.
    Inherit,
    /// These three descriptors.
    Fds(OwnedFd, OwnedFd, OwnedFd),
    /// stdin /dev/null; stdout and stderr copied by the monitor into a CRI-format
    /// log at this path ([`crate::logs`]). Only for containers, not exec.
    Log(PathBuf),
}

impl Stdio {
    fn fds(&self) -> Result<Vec<OwnedFd>> {
        let dup = |fd: RawFd| {
            // SAFETY: 0..2 are open in any process started normally; dup checks it.
            let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
            borrowed.try_clone_to_owned().map_err(|source| ContainerError::Io {
                what: "duplicating stdio descriptor",
                path: PathBuf::from(format!("fd {fd}")),
                source,
            })
        };
        Ok(match self {
            Stdio::Null | Stdio::Log(_) => vec![],
            Stdio::Inherit => vec![dup(0)?, dup(1)?, dup(2)?],
            Stdio::Fds(a, b, c) => vec![dup(a.as_raw_fd())?, dup(b.as_raw_fd())?, dup(c.as_raw_fd())?],
        })
    }
}

/// A terminal size for a spec's `process.consoleSize`.
fn console_size(cols: u16, rows: u16) -> Option<oci_spec::runtime::Box> {
    oci_spec::runtime::BoxBuilder::default().width(u64::from(cols)).height(u64::from(rows)).build().ok()
}

/// Options of [`Runtime::create`].
#[derive(Debug, Default)]
pub struct CreateOptions {
    /// The workload's stdio.
    pub stdio: Stdio,
    /// Write the workload's host PID here once created.
    pub pid_file: Option<PathBuf>,
    /// Mount this overlay as the bundle's rootfs (inside the container only).
    pub overlay: Option<crate::rootfs::Overlay>,
    /// Make the container's mount namespace from this one instead of the caller's (a
    /// lean copy without thousands of namespace pins costs less to copy).
    pub mount_template: Option<std::sync::Arc<OwnedFd>>,
    /// With [`Stdio::Log`]: the workload's stdin is a pipe kept open for
    /// [`Runtime::attach`] (CRI stdin); `Some(true)` closes it after the first attach
    /// session ends (CRI stdin_once).
    pub stdin: Option<bool>,
    /// A spec with `process.terminal`: the terminal's master end goes over this Unix
    /// socket (runc's `--console-socket`). Without it, the monitor keeps it with
    /// [`Stdio::Log`] (the container's output, and its stdin for attach), and
    /// [`Created::terminal`] brings it back otherwise.
    pub console_socket: Option<PathBuf>,
    /// With `process.terminal`: the terminal's size, `(columns, rows)`, set before the
    /// process starts (it overrides `process.consoleSize`).
    pub window: Option<(u16, u16)>,
}

/// A container that [`Runtime::create`] made.
#[derive(Debug, Clone)]
pub struct Created {
    /// Host PID of the workload (blocked before exec until `start`).
    pub pid: i32,
    /// What was degraded during setup (e.g. an rlimit or oom_score_adj not allowed here).
    pub warnings: Vec<String>,
    /// The master end of the workload's terminal, when the spec asks for one and
    /// neither a log nor a console socket takes it: the caller drives it.
    pub terminal: Option<std::sync::Arc<OwnedFd>>,
}

/// Options of [`Runtime::exec`].
#[derive(Debug, Default)]
pub struct ExecOptions {
    /// Command and arguments.
    pub args: Vec<String>,
    /// `KEY=VALUE` entries added to (or replacing those of) the container's environment.
    pub env: Vec<String>,
    /// Working directory; the container's when unset.
    pub cwd: Option<PathBuf>,
    /// `(uid, gid)`; the container's user when unset.
    pub user: Option<(u32, u32)>,
    /// The process's stdio.
    pub stdio: Stdio,
    /// Kill the process with SIGKILL once it has run this long
    /// ([`ContainerError::ExecTimeout`]).
    pub timeout: Option<Duration>,
    /// The process runs on a terminal of the container's own (its stdin, stdout and
    /// stderr; `stdio` is not used), leading a session with it as the controlling
    /// terminal, as a shell expects. The terminal's master end goes to `terminal`.
    pub tty: bool,
    pub terminal: Option<tokio::sync::oneshot::Sender<OwnedFd>>,
    /// The terminal's size, `(columns, rows)`, set before the process starts.
    pub window: Option<(u16, u16)>,
    /// Told the process's PID (in the caller's PID namespace) once it runs, so that
    /// the caller can signal it while this call waits. The process then leads a
    /// process group of its own, which such a signal is best sent to.
    pub started: Option<std::sync::mpsc::Sender<i32>>,
}

/// Containers under one state root (`/run/minipod` by default).
#[derive(Debug, Clone)]
pub struct Runtime {
    root: PathBuf,
}

impl Runtime {
    /// Opens the state root, creating it owner-only (0700) if it does not exist. An
    /// existing directory keeps its mode: `--root /tmp` must not lock down /tmp.
    pub fn new(root: impl Into<PathBuf>) -> Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        let root = std::path::absolute(root.into()).map_err(|source| ContainerError::Io {
            what: "resolving state root",
            path: PathBuf::new(),
            source,
        })?;
        fs::DirBuilder::new().recursive(true).mode(0o700).create(&root).map_err(|source| ContainerError::Io {
            what: "creating state root",
            path: root.clone(),
            source,
        })?;
        Ok(Self { root })
    }

    /// The state root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn dir(&self, id: &ContainerId) -> PathBuf {
        self.root.join(id.as_str())
    }

    /// Sets up a container from `bundle`; its workload waits for [`Runtime::start`].
    pub fn create(&self, id: &ContainerId, bundle: &Path, opts: CreateOptions) -> Result<Created> {
        self.create_inner(id, bundle, opts, false).map(|(created, _)| created)
    }

    /// `start`: release the workload as soon as it is ready (for `run`).
    fn create_inner(&self, id: &ContainerId, bundle: &Path, opts: CreateOptions, start: bool) -> Result<(Created, Channel)> {
        let bundle = Bundle::load(bundle)?;
        let dir = self.dir(id);
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(ContainerError::AlreadyExists { id: id.clone(), root: self.root.clone() })
            }
            Err(source) => return Err(ContainerError::Io { what: "creating state dir", path: dir, source }),
        }
        let result = self.spawn_monitor(id, &bundle, &dir, opts, start);
        if result.is_err() {
            // The monitor removed the cgroup and its processes before reporting.
            let _ = fs::remove_dir_all(&dir);
        }
        result
    }

    fn spawn_monitor(&self, id: &ContainerId, bundle: &Bundle, dir: &Path, opts: CreateOptions, start: bool) -> Result<(Created, Channel)> {
        let linux = bundle.spec.linux().clone().unwrap_or_default();
        let cgroup = linux.cgroups_path().clone().unwrap_or_else(|| PathBuf::from(crate::cgroups::DEFAULT_PARENT).join(id.as_str()));
        let spec_json = serde_json::to_vec(&bundle.spec).map_err(|e| ContainerError::Io {
            what: "encoding spec for",
            path: dir.join(SPEC_COPY),
            source: io::Error::other(e),
        })?;
        state::write_atomic(&dir.join(SPEC_COPY), &spec_json)?;
        let stdio = opts.stdio.fds()?;
        let mut raw: Vec<RawFd> = stdio.iter().map(|f| f.as_raw_fd()).collect();
        raw.extend(opts.mount_template.as_ref().map(|t| t.as_raw_fd()));
        // Compiled by the bundle check already: a cache hit.
        let seccomp = linux.seccomp().as_ref().map(crate::seccomp::program).transpose()?;
        // The init loads the compiled filter: the profile itself (hundreds of names)
        // need not be encoded, sent and decoded again by a process that starts cold.
        let mut spec = bundle.spec.clone();
        if let Some(l) = spec.linux_mut() {
            l.set_seccomp(None);
        }
        if let (Some((cols, rows)), Some(process)) = (opts.window, spec.process_mut()) {
            process.set_console_size(console_size(cols, rows));
        }
        let request = HelperRequest::Create(Box::new(CreateRequest {
            id: id.clone(),
            bundle: bundle.dir.clone(),
            rootfs: bundle.rootfs.clone(),
            state_dir: dir.to_path_buf(),
            spec,
            cgroup,
            stdio: !stdio.is_empty(),
            start,
            log: match &opts.stdio {
                Stdio::Log(path) => Some(path.clone()),
                _ => None,
            },
            stdin: opts.stdin.filter(|_| matches!(opts.stdio, Stdio::Log(_))),
            console_socket: opts.console_socket.clone(),
            overlay: opts.overlay.clone(),
            mount_template: opts.mount_template.is_some(),
            seccomp,
        }));
        let (helper, chan) = process::spawn_helper(&request, &raw)?;
        drop(stdio);
        let mut warnings = Vec::new();
        let mut terminal = None;
        let outcome = loop {
            match chan.recv_with_fds::<Report>().map(|r| r.map(|(m, fds)| (m, fds.into_iter().next()))) {
                Ok(Some((Report::Terminal, fd))) => terminal = fd.map(std::sync::Arc::new),
                Ok(Some((Report::Warning(w), _))) => {
                    tracing::warn!(container = %id, "{w}");
                    warnings.push(w);
                }
                Ok(Some((Report::Created { pid, .. }, _))) => break Ok(pid),
                Ok(Some((Report::Failed(message), _))) => break Err(ContainerError::Setup { id: id.clone(), message }),
                Ok(Some((other, _))) => {
                    break Err(ContainerError::Setup { id: id.clone(), message: format!("unexpected report {other:?}") })
                }
                Ok(None) => break Err(ContainerError::HelperVanished),
                Err(e) => break Err(e.into()),
            }
        };
        // The helper forked the monitor off and exits at once: reap it.
        helper.reap();
        let pid = outcome?;
        if let Some(pid_file) = &opts.pid_file {
            if let Err(e) = state::write_atomic(pid_file, pid.to_string().as_bytes()) {
                let _ = self.delete(id, true);
                return Err(e.into());
            }
        }
        Ok((Created { pid, warnings, terminal }, chan))
    }

    /// Releases a created container's workload (it execs its process).
    pub fn start(&self, id: &ContainerId) -> Result<()> {
        let st = self.state(id)?;
        let status = st.live_status();
        if status != Status::Created {
            return Err(ContainerError::WrongState {
                id: id.clone(),
                op: "start",
                status,
                hint: ": only a created container can be started",
            });
        }
        let chan = monitor::connect(&self.dir(id))
            .ok_or_else(|| ContainerError::Start { id: id.clone(), message: "its monitor is gone".into() })?;
        Self::start_on(id, &chan)
    }

    /// Asks the monitor to start the workload. A workload so quick that its exit
    /// arrives before the start reply has started too.
    fn start_on(id: &ContainerId, chan: &Channel) -> Result<()> {
        chan.send(&MonitorRequest::Start)?;
        loop {
            match chan.expect::<Report>()? {
                Report::Started { .. } | Report::Exited(_) => return Ok(()),
                Report::Failed(message) => return Err(ContainerError::Start { id: id.clone(), message }),
                Report::Warning(w) => tracing::warn!(container = %id, "{w}"),
                _ => continue,
            }
        }
    }

    /// Creates, starts and waits for a container, then deletes it (runc `run`).
    pub fn run(&self, id: &ContainerId, bundle: &Path, opts: CreateOptions) -> Result<(Created, ExitStatus)> {
        self.run_with(id, bundle, opts, |_| {})
    }

    /// [`Runtime::run`], calling `on_created` once the workload exists (with its PID)
    /// and before waiting for it, e.g. to forward the caller's signals to it.
    pub fn run_with(
        &self,
        id: &ContainerId,
        bundle: &Path,
        opts: CreateOptions,
        on_created: impl FnOnce(&Created),
    ) -> Result<(Created, ExitStatus)> {
        // The monitor releases the workload as soon as it is ready and tells every
        // connected client when it exits, so no `Start` or `Wait` round trips are needed.
        let (created, chan) = self.create_inner(id, bundle, opts, true)?;
        on_created(&created);
        let waited = loop {
            match chan.expect::<Report>() {
                Ok(Report::Exited(status)) => break Ok(status),
                Ok(Report::Failed(message)) => break Err(ContainerError::Start { id: id.clone(), message }),
                Ok(Report::Warning(w)) => tracing::warn!(container = %id, "{w}"),
                Ok(_) => continue,
                Err(e) => break Err(e.into()),
            }
        };
        let deleted = self.delete(id, true);
        let status = waited?;
        deleted?;
        Ok((created, status))
    }

    /// Reads a container's recorded state.
    pub fn state(&self, id: &ContainerId) -> Result<ContainerState> {
        let dir = self.dir(id);
        match ContainerState::load(&dir) {
            Ok(st) => Ok(st),
            Err(StateError::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                Err(ContainerError::NotFound { id: id.clone(), root: self.root.clone() })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Every container under the root, sorted by id; half-created entries are skipped.
    pub fn list(&self) -> Result<Vec<ContainerState>> {
        let entries = fs::read_dir(&self.root).map_err(|source| ContainerError::Io { what: "listing", path: self.root.clone(), source })?;
        let mut out: Vec<ContainerState> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| ContainerId::new(e.file_name().to_string_lossy().into_owned()).ok())
            .filter_map(|id| self.state(&id).ok())
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// Sends `signal` to the workload, or with `all` to every process in its cgroup
    /// (also after the workload has exited, for processes it left behind).
    pub fn kill(&self, id: &ContainerId, signal: Signal, all: bool) -> Result<()> {
        let st = self.state(id)?;
        if all {
            Cgroup::from_paths(st.cgroup_paths.clone()).signal_all(signal.number())?;
            return Ok(());
        }
        let status = st.live_status();
        let (Some(pid), Some(start), Status::Created | Status::Running) = (st.pid, st.pid_start_time, status) else {
            return Err(ContainerError::WrongState { id: id.clone(), op: "kill", status, hint: ": it has no process to signal" });
        };
        crate::pidfd::signal(pid, start, signal.number()).map(drop).map_err(|source| ContainerError::Kill {
            id: id.clone(),
            signal,
            pid,
            source,
        })
    }

    /// Waits until the workload exits and returns how.
    pub fn wait(&self, id: &ContainerId) -> Result<ExitStatus> {
        let dir = self.dir(id);
        if let Some(chan) = monitor::connect(&dir) {
            if chan.send(&MonitorRequest::Wait).is_ok() {
                while let Ok(Some(report)) = chan.recv::<Report>() {
                    if let Report::Exited(status) = report {
                        return Ok(status);
                    }
                }
            }
        }
        // The monitor is gone: it recorded the exit before leaving, or it was killed.
        let st = self.state(id)?;
        st.exit.ok_or_else(|| ContainerError::WrongState {
            id: id.clone(),
            op: "wait for",
            status: st.live_status(),
            hint: ", and its monitor is gone without recording an exit",
        })
    }

    /// Removes a container: its processes (with `force`, or if never started), cgroup
    /// and state. A running container without `force` is an error.
    pub fn delete(&self, id: &ContainerId, force: bool) -> Result<()> {
        let dir = self.dir(id);
        if !dir.exists() {
            return Err(ContainerError::NotFound { id: id.clone(), root: self.root.clone() });
        }
        match ContainerState::load(&dir) {
            Ok(st) => {
                let status = st.live_status();
                if status == Status::Running && !force {
                    return Err(ContainerError::StillRunning { id: id.clone() });
                }
                let cgroup = Cgroup::from_paths(st.cgroup_paths.clone());
                // Every member, whatever the status: without a PID namespace a daemon
                // the workload left behind would keep the cgroup busy forever.
                cgroup.signal_all(libc::SIGKILL)?;
                if let (Some(pid), Some(start)) = (st.pid, st.pid_start_time) {
                    if !crate::pidfd::wait_gone(pid, start, KILL_WAIT) {
                        return Err(ContainerError::KillTimeout { id: id.clone(), pid, secs: KILL_WAIT.as_secs() });
                    }
                }
                let removed = cgroup.remove();
                // Let the monitor record the exit and leave before its directory goes.
                crate::pidfd::wait_gone(st.monitor_pid, st.monitor_start_time, KILL_WAIT);
                removed?;
                Self::poststop(&dir, &st);
            }
            // A create that crashed half-way left no state.json; nothing runs for it.
            Err(StateError::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
            Err(e) if !force => return Err(e.into()),
            Err(_) => {}
        }
        fs::remove_dir_all(&dir)
            .or_else(|e| if e.kind() == io::ErrorKind::NotFound { Ok(()) } else { Err(e) })
            .map_err(|source| ContainerError::Io { what: "removing state dir", path: dir, source })
    }

    /// The spec's `poststop` hooks, once the container is gone. The runtime spec makes
    /// their failure a warning: the delete goes on.
    fn poststop(dir: &Path, st: &ContainerState) {
        let Ok(spec) = oci_spec::runtime::Spec::load(dir.join(SPEC_COPY)) else { return };
        let Some(hooks) = spec.hooks().as_ref().and_then(|h| h.poststop().as_ref()) else { return };
        let state = st.oci_state().to_string();
        for e in crate::hooks::run_each("poststop", Some(hooks), &state) {
            tracing::warn!(container = %st.id, "{} (the container is deleted all the same)", crate::process::chain(&e));
        }
    }

    /// Asks the monitor to start a new log file at the container's log path (after a
    /// rotator moved the old one away).
    pub fn reopen_log(&self, id: &ContainerId) -> Result<()> {
        let st = self.state(id)?;
        let chan = monitor::connect(&self.dir(id)).ok_or_else(|| ContainerError::WrongState {
            id: id.clone(),
            op: "reopen the log of",
            status: st.live_status(),
            hint: ": its monitor is gone",
        })?;
        chan.send(&MonitorRequest::ReopenLog)?;
        loop {
            match chan.expect::<Report>()? {
                Report::LogReopened => return Ok(()),
                Report::Failed(message) => return Err(ContainerError::Exec { id: id.clone(), message }),
                _ => continue,
            }
        }
    }

    /// Runs a process inside a running container and returns its exit status.
    pub fn exec(&self, id: &ContainerId, mut opts: ExecOptions) -> Result<ExitStatus> {
        let st = self.state(id)?;
        let status = st.live_status();
        let (Some(pid), Some(pid_start_time)) = (st.pid, st.pid_start_time) else {
            return Err(ContainerError::WrongState { id: id.clone(), op: "exec in", status, hint: "" });
        };
        if status == Status::Stopped {
            return Err(ContainerError::WrongState { id: id.clone(), op: "exec in", status, hint: ": start a new container instead" });
        }
        if opts.args.is_empty() {
            return Err(ContainerError::Exec { id: id.clone(), message: "no command given".into() });
        }
        let spec_path = self.dir(id).join(SPEC_COPY);
        let spec: oci_spec::runtime::Spec = fs::read(&spec_path)
            .map_err(|source| ContainerError::Io { what: "reading", path: spec_path.clone(), source })
            .and_then(|d| {
                serde_json::from_slice(&d).map_err(|e| ContainerError::Io {
                    what: "decoding",
                    path: spec_path.clone(),
                    source: io::Error::other(e),
                })
            })?;
        let mut process = spec.process().clone().unwrap_or_default();
        let mut env = process.env().clone().unwrap_or_default();
        for kv in &opts.env {
            let key = kv.split('=').next().unwrap_or_default();
            env.retain(|e| e.split('=').next() != Some(key));
            env.push(kv.clone());
        }
        process.set_env(Some(env));
        process.set_args(Some(opts.args.clone()));
        if let Some(cwd) = &opts.cwd {
            process.set_cwd(cwd.clone());
        }
        if let Some((uid, gid)) = opts.user {
            process.user_mut().set_uid(uid);
            process.user_mut().set_gid(gid);
        }
        process.set_terminal(Some(opts.tty));
        if let Some((cols, rows)) = opts.window {
            process.set_console_size(console_size(cols, rows));
        }
        let stdio = opts.stdio.fds()?;
        let raw: Vec<RawFd> = stdio.iter().map(|f| f.as_fd().as_raw_fd()).collect();
        let request = HelperRequest::Exec(Box::new(ExecRequest {
            pid,
            pid_start_time,
            cgroup_paths: st.cgroup_paths.clone(),
            process,
            // An exec is filtered as the container's own process is.
            seccomp: spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()).map(crate::seccomp::program).transpose()?,
            stdio: !stdio.is_empty(),
            timeout: opts.timeout,
            own_group: opts.timeout.is_some() || opts.started.is_some(),
        }));
        let (helper, chan) = process::spawn_helper(&request, &raw)?;
        drop(stdio);
        let outcome = loop {
            match chan.recv_with_fds::<Report>().map(|r| r.map(|(m, fds)| (m, fds.into_iter().next()))) {
                Ok(Some((Report::Terminal, Some(master)))) => {
                    if let Some(tx) = opts.terminal.take() {
                        let _ = tx.send(master);
                    }
                }
                Ok(Some((report, _))) => match report {
                    Report::Exited(status) => break Ok(status),
                    Report::TimedOut => {
                        break Err(ContainerError::ExecTimeout { id: id.clone(), secs: opts.timeout.unwrap_or_default().as_secs_f64() })
                    }
                    Report::Failed(message) => break Err(ContainerError::Exec { id: id.clone(), message }),
                    Report::Started { pid } => {
                        if let Some(tx) = &opts.started {
                            let _ = tx.send(pid);
                        }
                    }
                    _ => continue,
                },
                Ok(None) => break Err(ContainerError::HelperVanished),
                Err(e) => break Err(e.into()),
            }
        };
        helper.reap();
        outcome
    }
}
