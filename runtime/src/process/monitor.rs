//! The per-container monitor (the conmon role): a detached, single-threaded helper that
//! clones the container's init, owns it for its whole life, releases it on `start`,
//! reaps it and records how it ended in the state dir.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use oci_spec::runtime::LinuxNamespaceType;

use super::channel::{Channel, Listener};
use super::messages::{CreateRequest, FromInit, MonitorRequest, Report, ToInit};
use super::{chain, init};
use crate::cgroups::{Cgroup, CgroupError};
use crate::logs::Stream;
use crate::state::{self, ContainerState, ExitStatus, Status};

/// Name of the monitor's control socket in the container's state dir.
pub(crate) const SOCKET: &str = "monitor.sock";

/// Creating the container failed before its workload could be released.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("preparing the monitor: {0}")]
    Setup(&'static str, #[source] Errno),
    #[error("setting up the cgroup")]
    Cgroup(#[from] CgroupError),
    #[error("opening the {typ} namespace to join at {path}")]
    Namespace {
        typ: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("joining the pid namespace at {path}")]
    JoinPid {
        path: String,
        #[source]
        source: Errno,
    },
    #[error("cloning the container's init process into new namespaces")]
    Clone(#[source] Errno),
    #[error("talking to the container's init process")]
    Channel(#[from] super::channel::ChannelError),
    #[error("{0}")]
    Init(String),
    #[error(transparent)]
    Hook(#[from] crate::hooks::HookError),
    #[error("the container's init process exited during setup without saying why")]
    InitDied,
    #[error("recording the container's state")]
    State(#[from] state::StateError),
    #[error("sending the terminal to the console socket {path}")]
    Console {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("opening the container log {path}")]
    Log {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Entry from the helper hook: detach, create, then serve until the workload exits.
pub(super) fn run(chan: Channel, req: &CreateRequest, mut stdio: Vec<OwnedFd>) -> i32 {
    let template = if req.mount_template { stdio.pop() } else { None };
    // The caller reaps this process at once; the grandchild is the monitor, owned by
    // init (or the nearest subreaper) from now on, so no caller is left with a zombie.
    // SAFETY: the helper is single-threaded (checked by the hook).
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Parent { .. }) => return 0,
        Ok(nix::unistd::ForkResult::Child) => {}
        Err(e) => {
            let _ = chan.send(&Report::Failed(format!("forking the container monitor: {e}")));
            return 1;
        }
    }
    let _ = nix::unistd::setsid();
    let _ = std::env::set_current_dir("/");
    // Every channel message gets a 1 MiB receive buffer. glibc raises its mmap
    // threshold after the first such buffer is freed and then serves the next ones from
    // the heap, zeroing them there: a MiB of dirty heap kept for the container's whole
    // life. A fixed threshold keeps them in mappings that are returned on free.
    // SAFETY: mallopt with integer arguments, in this single-threaded process.
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024) };
    let cgroup = Cgroup::at(&req.cgroup);
    let mut made = Made::default();
    match create(&chan, req, &cgroup, stdio, template, &mut made) {
        Ok(monitor) => monitor.serve(chan, req.start),
        Err(e) => {
            // Undo everything this create made: the creator may be gone (Ctrl-C) and
            // nobody else would. Only a cgroup we created is ours to remove.
            if made.cgroup {
                let _ = cgroup.remove();
            }
            if made.hooks {
                // The runtime spec goes on to delete, and so to poststop, once a hook
                // has run: whatever prestart set up gets its chance to be undone.
                let hooks = req.spec.hooks().as_ref().and_then(|h| h.poststop().as_ref());
                let state = crate::hooks::state(req.id.as_str(), "stopped", None, &req.bundle, req.spec.annotations().as_ref());
                for w in crate::hooks::run_each("poststop", hooks, &state) {
                    let _ = chan.send(&Report::Warning(chain(&w)));
                }
            }
            let _ = std::fs::remove_dir_all(&req.state_dir);
            let _ = chan.send(&Report::Failed(chain(&e)));
            1
        }
    }
}

/// What a create has made so far, for its rollback.
#[derive(Default)]
struct Made {
    cgroup: bool,
    /// Hooks ran (or began to): poststop is owed.
    hooks: bool,
}

mod stdio;
use stdio::Log;

/// Sends the workload's terminal where it goes: into the log (a CRI container: the
/// monitor copies it as the workload's output and hands it to attach), over the
/// console socket (runc's protocol: the descriptor with its name), or back to the
/// creator.
fn hand_over_terminal(master: OwnedFd, log: Option<&mut Log>, req: &CreateRequest, chan: &Channel) -> Result<(), MonitorError> {
    if let Some(log) = log {
        return log.take_terminal(master);
    }
    if let Some(path) = &req.console_socket {
        let send = || -> std::io::Result<()> {
            let sock = std::os::unix::net::UnixStream::connect(path)?;
            let fds = [master.as_raw_fd()];
            let iov = [std::io::IoSlice::new(b"/dev/ptmx")];
            let cmsg = [nix::sys::socket::ControlMessage::ScmRights(&fds)];
            nix::sys::socket::sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsg, nix::sys::socket::MsgFlags::empty(), None)?;
            Ok(())
        };
        return send().map_err(|source| MonitorError::Console { path: path.display().to_string(), source });
    }
    chan.send_with_fds(&Report::Terminal, &[master.as_raw_fd()])?;
    Ok(())
}

struct Monitor {
    state: ContainerState,
    state_dir: std::path::PathBuf,
    init: Channel,
    pid: Pid,
    sigchld: SignalFd,
    listener: Listener,
    log: Option<Log>,
    hooks: oci_spec::runtime::Hooks,
}

fn create(
    chan: &Channel,
    req: &CreateRequest,
    cgroup: &Cgroup,
    mut stdio: Vec<OwnedFd>,
    template: Option<OwnedFd>,
    made: &mut Made,
) -> Result<Monitor, MonitorError> {
    let mut log = match &req.log {
        Some(path) => {
            let (log, pipes) = Log::open(path, req.stdin)?;
            stdio = pipes;
            Some(log)
        }
        None => None,
    };
    // SAFETY: prctl with integer arguments only.
    Errno::result(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) })
        .map_err(|e| MonitorError::Setup("becoming a subreaper", e))?;
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    mask.thread_block().map_err(|e| MonitorError::Setup("blocking SIGCHLD", e))?;
    let sigchld = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(|e| MonitorError::Setup("creating a signalfd", e))?;

    let linux = req.spec.linux().clone().unwrap_or_default();

    let mut flags = libc::SIGCHLD;
    let mut joins = Vec::new();
    for ns in linux.namespaces().clone().unwrap_or_default() {
        let typ = ns.typ();
        match ns.path() {
            None if typ == LinuxNamespaceType::Cgroup => {} // unshared by init once it is in its cgroup
            None => flags |= typ as i32,
            Some(path) => {
                let fd = std::fs::File::open(path).map_err(|source| MonitorError::Namespace {
                    typ: typ.to_string(),
                    path: path.display().to_string(),
                    source,
                })?;
                if typ == LinuxNamespaceType::Pid {
                    // Affects only children: the init cloned below starts inside it.
                    nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWPID)
                        .map_err(|source| MonitorError::JoinPid { path: path.display().to_string(), source })?;
                } else {
                    joins.push((typ, OwnedFd::from(fd)));
                }
            }
        }
    }

    // The monitor's own mount namespace, to return to once the init is cloned: a
    // monitor living in the template would keep every host mount of that moment busy
    // (an unmounted disk could not be released) for as long as its container runs.
    let home = match &template {
        Some(_) => Some(
            std::fs::File::open("/proc/self/ns/mnt")
                .map_err(|e| MonitorError::Setup("opening its mount namespace", Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))))?,
        ),
        None => None,
    };
    if let Some(t) = &template {
        // Every path is resolved already or lives on a filesystem the template shares;
        // the namespaces to join are open. The init's mount namespace is now a copy of
        // the template's table instead of the host's.
        nix::sched::setns(t, nix::sched::CloneFlags::CLONE_NEWNS).map_err(|e| MonitorError::Setup("entering the mount template", e))?;
    }
    drop(template);
    let (to_init, init_end) = Channel::pair()?;
    // SAFETY: raw clone without CLONE_VM behaves like fork with new namespaces; this
    // process is single-threaded, so the child may run ordinary Rust.
    let ret = unsafe { libc::syscall(libc::SYS_clone, flags as libc::c_ulong, 0usize, 0usize, 0usize, 0usize) };
    let pid = Errno::result(ret).map_err(MonitorError::Clone)? as i32;
    if pid == 0 {
        drop(to_init);
        drop(home);
        init::run(init_end, req, stdio, joins);
    }
    drop(init_end);
    if let Some(home) = home {
        // The init is cloned; its copy of the template is its own.
        if let Err(e) = nix::sched::setns(&home, nix::sched::CloneFlags::CLONE_NEWNS) {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            let _ = waitpid(Pid::from_raw(pid as i32), None);
            return Err(MonitorError::Setup("returning from the mount template", e));
        }
    }
    drop(stdio);
    let pid = Pid::from_raw(pid);
    let kill_init = |e: MonitorError| {
        // Killed first: an init still alive (waiting for its next message) would never
        // close the channel, and reading it below would block for ever.
        let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
        let _ = waitpid(pid, None);
        // A channel error usually means the init failed and left: its own report,
        // still queued on the channel, says why far better than "channel closed".
        match e {
            MonitorError::Channel(_) => loop {
                match to_init.recv::<FromInit>() {
                    Ok(Some(FromInit::Failed(msg))) => break MonitorError::Init(msg),
                    Ok(Some(_)) => continue,
                    _ => break e,
                }
            },
            other => other,
        }
    };
    // While the init builds its rootfs (which needs no cgroup), create the cgroup and
    // hand the init the files through which it moves itself in (the cheap way in).
    cgroup.create(linux.resources().as_ref()).map_err(|e| kill_init(e.into()))?;
    made.cgroup = true;
    let join = cgroup.open_join_files().map_err(|e| kill_init(e.into()))?;
    let raw: Vec<i32> = join.iter().map(std::os::fd::AsRawFd::as_raw_fd).collect();
    to_init.send_with_fds(&ToInit::CgroupReady, &raw).map_err(|e| kill_init(e.into()))?;
    drop(join);
    loop {
        let (message, mut fds) = match to_init.recv_with_fds::<FromInit>().map_err(|e| kill_init(e.into()))? {
            Some((m, fds)) => (Some(m), fds),
            None => (None, vec![]),
        };
        match message {
            Some(FromInit::Terminal) => {
                let master = fds.pop().ok_or_else(|| kill_init(MonitorError::Init("the init sent its terminal without it".into())))?;
                hand_over_terminal(master, log.as_mut(), req, chan).map_err(&kill_init)?;
            }
            Some(FromInit::Warning(w)) => {
                let _ = chan.send(&Report::Warning(w));
            }
            Some(FromInit::Hooks) => {
                made.hooks = true;
                let hooks = req.spec.hooks().clone().unwrap_or_default();
                let creating =
                    crate::hooks::state(req.id.as_str(), "creating", Some(pid.as_raw()), &req.bundle, req.spec.annotations().as_ref());
                crate::hooks::run("prestart", hooks.prestart().as_ref(), &creating)
                    .and_then(|()| crate::hooks::run("createRuntime", hooks.create_runtime().as_ref(), &creating))
                    .map_err(|e| kill_init(e.into()))?;
                to_init.send(&ToInit::HooksDone { state: creating }).map_err(|e| kill_init(e.into()))?;
            }
            Some(FromInit::Ready) => break,
            Some(FromInit::Failed(msg)) => return Err(kill_init(MonitorError::Init(msg))),
            Some(FromInit::Execing) | None => return Err(kill_init(MonitorError::InitDied)),
        }
    }

    let me = std::process::id() as i32;
    let pid_start_time = state::process_start_time(pid.as_raw()).unwrap_or_default();
    let st = ContainerState {
        id: req.id.clone(),
        bundle: req.bundle.clone(),
        rootfs: req.rootfs.clone(),
        status: Status::Created,
        pid: Some(pid.as_raw()),
        pid_start_time: Some(pid_start_time),
        monitor_pid: me,
        monitor_start_time: state::process_start_time(me).unwrap_or_default(),
        cgroup_paths: cgroup.paths().to_vec(),
        created: crate::time::Timestamp::now(),
        started: None,
        finished: None,
        exit: None,
        oom_killed: false,
        annotations: req.spec.annotations().clone().unwrap_or_default(),
    };
    let listener = Listener::bind(&req.state_dir.join(SOCKET)).map_err(|e| kill_init(e.into()))?;
    st.save(&req.state_dir).map_err(|e| kill_init(e.into()))?;
    chan.send(&Report::Created { pid: pid.as_raw(), pid_start_time }).map_err(|e| kill_init(e.into()))?;
    let hooks = req.spec.hooks().clone().unwrap_or_default();
    Ok(Monitor { state: st, state_dir: req.state_dir.clone(), init: to_init, pid, sigchld, listener, log, hooks })
}

impl Monitor {
    /// Serves `Start` and `Wait` from the creator's channel and the control socket
    /// until the workload exits, then records the exit and answers every waiter.
    fn serve(mut self, creator: Channel, start_now: bool) -> i32 {
        // Setup (decoding the request, the spec, the caller's heap when forked from it)
        // left free heap pages dirty; this process lives as long as the workload, once
        // per container: give them back.
        // SAFETY: malloc_trim only releases free memory of this single-threaded process.
        unsafe { libc::malloc_trim(0) };
        if start_now {
            self.start_for(&creator);
        }
        // Every connected client hears `Exited` at the end; one that hangs up is dropped.
        let mut clients = vec![creator];
        let exit = loop {
            let (sig_ready, listen_ready, ready, logs_ready) = {
                let mut fds =
                    vec![PollFd::new(self.sigchld.as_fd(), PollFlags::POLLIN), PollFd::new(self.listener.as_fd(), PollFlags::POLLIN)];
                let pipes = self.log.as_ref().map_or(&[][..], |l| &l.streams[..]);
                fds.extend(pipes.iter().map(|(fd, _)| PollFd::new(fd.as_fd(), PollFlags::POLLIN)));
                fds.extend(clients.iter().map(|c| PollFd::new(c.as_fd(), PollFlags::POLLIN)));
                match nix::poll::poll(&mut fds, PollTimeout::NONE) {
                    Ok(_) | Err(Errno::EINTR) => {}
                    Err(_) => break None,
                }
                let hit = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
                let logs_ready: Vec<bool> = fds[2..2 + pipes.len()].iter().map(hit).collect();
                let ready: Vec<bool> = fds[2 + pipes.len()..].iter().map(hit).collect();
                (hit(&fds[0]), hit(&fds[1]), ready, logs_ready)
            };
            if logs_ready.iter().any(|r| *r) {
                if let Some(log) = &mut self.log {
                    log.pump(&logs_ready, 256 << 10);
                }
            }
            if sig_ready {
                while self.sigchld.read_signal().ok().flatten().is_some() {}
                if let Some(exit) = self.reap() {
                    break Some(exit);
                }
            }
            if listen_ready {
                loop {
                    match self.listener.accept() {
                        Ok(Some(c)) => clients.push(c),
                        Ok(None) => break,
                        // Out of descriptors: the listener stays readable, so back off
                        // instead of spinning until a client leaves.
                        Err(_) => {
                            std::thread::sleep(std::time::Duration::from_millis(50));
                            break;
                        }
                    }
                }
            }
            // Walk backwards so removing a client keeps the remaining indexes valid.
            for i in (0..ready.len()).rev() {
                if !ready[i] {
                    continue;
                }
                let client = clients.remove(i);
                match client.recv_with_fds::<MonitorRequest>() {
                    Ok(Some((MonitorRequest::Attach { stdin, stdout, stderr }, fds))) => {
                        let kinds = [(stdout, Stream::Stdout), (stderr, Stream::Stderr)];
                        let outputs: Vec<(Stream, OwnedFd)> = kinds.iter().filter(|(on, _)| *on).map(|(_, s)| *s).zip(fds).collect();
                        let reply = match self.log.as_mut() {
                            Some(log) => log.attach(stdin, outputs),
                            None => {
                                Err(format!("container {} does not keep its stdio in the monitor: nothing to attach to", self.state.id))
                            }
                        };
                        let _ = match reply {
                            Ok(Some(fd)) => client.send_with_fds(&Report::Attached, &[fd.as_raw_fd()]),
                            Ok(None) => client.send(&Report::Attached),
                            Err(why) => client.send(&Report::Failed(why)),
                        };
                    }
                    Ok(Some((MonitorRequest::Start, _))) => {
                        if self.start_for(&client) {
                            clients.push(client);
                        }
                    }
                    Ok(Some((MonitorRequest::Wait, _))) => clients.push(client),
                    Ok(Some((MonitorRequest::ReopenLog, _))) => {
                        let reply = match self.log.as_mut().map(|l| l.writer.reopen()) {
                            Some(Ok(())) => Report::LogReopened,
                            Some(Err(e)) => Report::Failed(format!("reopening the container log: {e}")),
                            None => Report::Failed(format!("container {} does not log to a file", self.state.id)),
                        };
                        if client.send(&reply).is_ok() {
                            clients.push(client);
                        }
                    }
                    Ok(None) | Err(_) => {}
                }
            }
        };
        let exit = exit.unwrap_or(ExitStatus::Code(255));
        // Whoever waits for the exit then reads a complete log.
        if let Some(log) = &mut self.log {
            log.drain();
        }
        self.state.status = Status::Stopped;
        self.state.exit = Some(exit);
        self.state.oom_killed = crate::cgroups::Cgroup::from_paths(self.state.cgroup_paths.clone()).oom_kills() > 0;
        self.state.finished = Some(crate::time::Timestamp::now());
        // The state dir may already be gone (delete --force); nothing to record then.
        let _ = self.state.save(&self.state_dir);
        for w in &clients {
            let _ = w.send(&Report::Exited(exit));
        }
        0
    }

    /// Starts the workload and runs the `poststart` hooks before telling `client`,
    /// as the runtime spec orders them; false when the client is gone.
    fn start_for(&mut self, client: &Channel) -> bool {
        let reply = self.start();
        if matches!(reply, Report::Started { .. }) {
            if let Some(warning) = self.poststart() {
                let _ = client.send(&Report::Warning(warning));
            }
        }
        client.send(&reply).is_ok()
    }

    fn start(&mut self) -> Report {
        if self.state.status != Status::Created {
            return Report::Failed(format!(
                "container {} is {}: only a created container can be started",
                self.state.id, self.state.status
            ));
        }
        if let Err(e) = self.init.send(&ToInit::Start) {
            return Report::Failed(format!("releasing the workload: {}", chain(&e)));
        }
        // The init says `Execing` right before execve; its end is close-on-exec, so EOF
        // after that means the workload runs. EOF without it means the init died first.
        let mut execing = false;
        loop {
            match self.init.recv::<FromInit>() {
                Ok(Some(FromInit::Execing)) => execing = true,
                Ok(Some(FromInit::Failed(msg))) => return Report::Failed(msg),
                Ok(Some(FromInit::Warning(_) | FromInit::Ready | FromInit::Hooks | FromInit::Terminal)) => continue,
                Ok(None) | Err(_) => break,
            }
        }
        if !execing {
            return Report::Failed(format!("container {}: its process died before it could be started", self.state.id));
        }
        self.state.status = Status::Running;
        self.state.started = Some(crate::time::Timestamp::now());
        if let Err(e) = self.state.save(&self.state_dir) {
            return Report::Failed(chain(&e));
        }
        Report::Started { pid: self.pid.as_raw() }
    }

    /// The `poststart` hooks, once the workload runs. The runtime spec makes their
    /// failure a warning: the container keeps running.
    fn poststart(&self) -> Option<String> {
        let hooks = self.hooks.poststart().as_ref()?;
        let state = self.state.oci_state_as(Status::Running).to_string();
        let failed: Vec<String> = crate::hooks::run_each("poststart", Some(hooks), &state).iter().map(|e| chain(e)).collect();
        (!failed.is_empty()).then(|| format!("{} (the container keeps running)", failed.join("; ")))
    }

    /// Reaps every exited child (orphans re-parent to us as subreaper); returns the
    /// workload's status once it is among them.
    fn reap(&self) -> Option<ExitStatus> {
        let mut exit = None;
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => return exit,
                Ok(status) if status.pid() == Some(self.pid) => exit = ExitStatus::from_wait(status),
                Ok(_) => {}
            }
        }
    }
}

/// Whether the monitor recorded in `dir` still answers on its control socket.
pub(crate) fn connect(dir: &Path) -> Option<Channel> {
    Channel::connect(&dir.join(SOCKET)).ok()
}
