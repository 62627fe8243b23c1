//! The container's init process, cloned by the monitor into the new namespaces: it joins
//! namespaces, builds the root filesystem, drops privileges, reports `Ready`, blocks
//! until `Start`, then execs the workload. It is a fork of a single-threaded process,
//! so ordinary Rust is safe here.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sched::CloneFlags;
use oci_spec::runtime::{LinuxNamespaceType, PosixRlimitType, Process};

use super::chain;
use super::channel::Channel;
use super::messages::{CreateRequest, FromInit, ToInit};
use crate::capabilities::{self, CapsError};
use crate::rootfs::{self, RootfsError};

/// A step of container setup failed.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("waiting for the monitor")]
    Channel(#[from] super::channel::ChannelError),
    #[error("joining the {typ} namespace")]
    Join {
        typ: String,
        #[source]
        source: Errno,
    },
    #[error("{what}")]
    Sys {
        what: String,
        #[source]
        source: Errno,
    },
    #[error("setting up the root filesystem")]
    Rootfs(#[from] RootfsError),
    #[error("setting sysctl {key}={value}")]
    Sysctl {
        key: String,
        value: String,
        #[source]
        source: std::io::Error,
    },
    #[error("joining the container's cgroup")]
    Cgroup(#[from] crate::cgroups::CgroupError),
    #[error("applying capabilities")]
    Caps(#[from] CapsError),
    #[error("the working directory {0} does not exist in the container")]
    Cwd(PathBuf, #[source] Errno),
    #[error("executable {0:?} not found in the container (searched {1})")]
    NotFound(String, String),
    #[error("monitor protocol error: {0}")]
    Protocol(&'static str),
    #[error("{0:?} is not a valid argument or environment entry: it contains a NUL byte")]
    Nul(String),
    #[error("applying the seccomp profile")]
    Seccomp(#[from] crate::seccomp::SeccompError),
    #[error("setting up stdio")]
    Stdio(#[from] super::stdio::StdioError),
    #[error("setting up the process's terminal")]
    Terminal(#[from] super::terminal::TerminalError),
    #[error(transparent)]
    Hook(#[from] crate::hooks::HookError),
}

fn sys(what: impl Into<String>) -> impl FnOnce(Errno) -> InitError {
    let what = what.into();
    move |source| InitError::Sys { what, source }
}

/// What `exec` needs once `Start` arrives.
pub(crate) struct Prepared {
    pub path: CString,
    pub args: Vec<CString>,
    pub env: Vec<CString>,
    /// A filter still to load right before exec (with no_new_privs, as runc does, so
    /// that it need not allow what the setup does).
    pub seccomp: Option<crate::seccomp::Program>,
    /// The state `startContainer` hooks read, when the spec has any.
    pub start_state: Option<String>,
}

/// Runs in the cloned child; never returns.
pub(super) fn run(chan: Channel, req: &CreateRequest, stdio: Vec<OwnedFd>, joins: Vec<(LinuxNamespaceType, OwnedFd)>) -> ! {
    let code = match setup(&chan, req, stdio, joins) {
        Ok(prepared) => match chan.recv::<ToInit>() {
            Ok(Some(ToInit::Start)) => {
                let hooks = req.spec.hooks().as_ref().and_then(|h| h.start_container().as_ref());
                if let (Some(state), Some(_)) = (&prepared.start_state, hooks) {
                    if let Err(e) = crate::hooks::run("startContainer", hooks, state) {
                        let _ = chan.send(&FromInit::Failed(chain(&e)));
                        // SAFETY: leave without unwinding into the monitor's copy of the stack.
                        unsafe { libc::_exit(1) }
                    }
                }
                let _ = chan.send(&FromInit::Execing);
                let err = exec(&prepared);
                let _ = chan.send(&FromInit::Failed(err));
                127
            }
            _ => 1,
        },
        Err(e) => {
            let _ = chan.send(&FromInit::Failed(chain(&e)));
            1
        }
    };
    // SAFETY: leave without unwinding into the monitor's copy of the stack.
    unsafe { libc::_exit(code) }
}

fn setup(
    chan: &Channel,
    req: &CreateRequest,
    stdio: Vec<OwnedFd>,
    joins: Vec<(LinuxNamespaceType, OwnedFd)>,
) -> Result<Prepared, InitError> {
    let warn = |msg: String| {
        let _ = chan.send(&FromInit::Warning(msg));
    };
    // Until exec this process is the host's minipod binary: keep /proc/PID/exe, mem
    // and fds closed to anyone else (the CVE-2019-5736 class). execve resets it.
    // SAFETY: prctl with integer arguments.
    Errno::result(unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) }).map_err(sys("making the init non-dumpable"))?;
    // Without the monitor nobody would ever release or reap us.
    set_parent_death_signal()?;
    let spec = &req.spec;
    let linux = spec.linux().clone().unwrap_or_default();
    let namespaces = linux.namespaces().clone().unwrap_or_default();
    // The mount namespace last: the other namespace files are opened already, but a
    // later setns must not resolve anything through the joined mount namespace.
    let (mnt, others): (Vec<_>, Vec<_>) = joins.into_iter().partition(|(t, _)| *t == LinuxNamespaceType::Mount);
    for (typ, fd) in others.into_iter().chain(mnt) {
        nix::sched::setns(&fd, CloneFlags::from_bits_retain(typ as i32))
            .map_err(|source| InitError::Join { typ: typ.to_string(), source })?;
    }
    let process = spec.process().clone().unwrap_or_default();
    if let Some(adj) = process.oom_score_adj() {
        if let Err(e) = std::fs::write("/proc/self/oom_score_adj", adj.to_string()) {
            warn(format!("oom_score_adj {adj} not applied ({e}): continuing with the inherited value"));
        }
    }
    super::stdio::set_stdio(stdio)?;

    let cgroup_mounts = rootfs::prepare(spec, &req.bundle, &req.rootfs, req.overlay.as_ref(), &warn)?;
    match chan.recv_with_fds::<ToInit>()? {
        Some((ToInit::CgroupReady, join)) => crate::cgroups::join_self(&join)?,
        Some(_) => return Err(InitError::Protocol("expected the cgroup first")),
        None => return Err(InitError::Channel(super::channel::ChannelError::Closed)),
    }
    // The runtime spec puts prestart, createRuntime and createContainer after the
    // environment is made and before pivot_root: they may still mount into the rootfs.
    let mut start_state = None;
    if crate::hooks::any_before_start(spec) {
        chan.send(&FromInit::Hooks)?;
        match chan.recv::<ToInit>()? {
            Some(ToInit::HooksDone { state }) => {
                crate::hooks::run("createContainer", spec.hooks().as_ref().and_then(|h| h.create_container().as_ref()), &state)?;
                start_state = Some(crate::hooks::with_status(&state, "created"));
            }
            Some(_) => return Err(InitError::Protocol("expected the hooks' outcome")),
            None => return Err(InitError::Channel(super::channel::ChannelError::Closed)),
        }
    }
    rootfs::pivot(&req.rootfs)?;
    rootfs::share_new_root(spec)?;
    if namespaces.iter().any(|n| n.typ() == LinuxNamespaceType::Cgroup && n.path().is_none()) {
        // Only now: the namespace's root is the cgroup the process is in when it unshares.
        nix::sched::unshare(CloneFlags::CLONE_NEWCGROUP).map_err(sys("creating the cgroup namespace"))?;
    }
    rootfs::mount_cgroups(&cgroup_mounts)?;
    if let Some(h) = spec.hostname().as_ref().filter(|h| !h.is_empty()) {
        nix::unistd::sethostname(h).map_err(sys(format!("setting hostname {h:?}")))?;
    }
    if let Some(d) = spec.domainname().as_ref().filter(|d| !d.is_empty()) {
        // SAFETY: pointer and length of a live byte slice.
        Errno::result(unsafe { libc::setdomainname(d.as_ptr().cast(), d.len()) }).map_err(sys(format!("setting domainname {d:?}")))?;
    }
    for (key, value) in linux.sysctl().clone().unwrap_or_default() {
        let path = Path::new("/proc/sys").join(key.replace('.', "/"));
        std::fs::write(&path, &value).map_err(|source| InitError::Sysctl { key, value, source })?;
    }
    rootfs::finish(spec)?;
    if process.terminal() == Some(true) {
        // In the container's devpts, now that it is mounted and the root is the container's.
        let master = super::terminal::take(&process)?;
        chan.send_with_fds(&FromInit::Terminal, &[master.as_raw_fd()])?;
    }
    set_rlimits(&process, &warn)?;

    let mut prepared = prepare_exec(&process)?;
    prepared.start_state = start_state;
    let filter = req.seccomp.clone();
    let nnp = process.no_new_privileges() == Some(true);
    if let (Some(f), false) = (&filter, nnp) {
        // Without no_new_privs only CAP_SYS_ADMIN may load a filter: before the drop.
        crate::seccomp::install(f)?;
    }
    let cwd = process.cwd().clone();
    let early_cwd = nix::unistd::chdir(&cwd);
    capabilities::apply(&process, &warn)?;
    if let Err(e) = early_cwd {
        // A directory only the target user may enter: try again as that user.
        nix::unistd::chdir(&cwd).map_err(|_| InitError::Cwd(cwd.clone(), e))?;
    }
    // Changing credentials cleared the parent-death signal.
    set_parent_death_signal()?;
    if nnp {
        prepared.seccomp = filter;
        // SAFETY: prctl with integer arguments.
        Errno::result(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) }).map_err(sys("setting no_new_privs"))?;
    }
    if let Some(mask) = process.user().umask() {
        // SAFETY: umask cannot fail.
        unsafe { libc::umask(mask as libc::mode_t) };
    }
    // Nothing the monitor or the caller had open may reach the workload.
    // SAFETY: marks descriptors close-on-exec, closes nothing.
    Errno::result(unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC) })
        .map_err(sys("marking inherited descriptors close-on-exec"))?;
    reset_signals();
    chan.send(&FromInit::Ready)?;
    Ok(prepared)
}

fn set_parent_death_signal() -> Result<(), InitError> {
    // SAFETY: prctl with integer arguments.
    Errno::result(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) })
        .map_err(sys("setting the parent-death signal"))?;
    Ok(())
}

pub(crate) fn set_rlimits(process: &Process, warn: &dyn Fn(String)) -> Result<(), InitError> {
    for rl in process.rlimits().clone().unwrap_or_default() {
        let resource = rlimit_resource(rl.typ());
        let want = libc::rlimit { rlim_cur: rl.soft(), rlim_max: rl.hard() };
        // SAFETY: valid resource and struct pointer.
        if unsafe { libc::setrlimit(resource, &want) } == 0 {
            continue;
        }
        let err = Errno::last();
        if err != Errno::EPERM {
            return Err(InitError::Sys { what: format!("setting {:?} to {}/{}", rl.typ(), rl.soft(), rl.hard()), source: err });
        }
        // Raising a hard limit needs CAP_SYS_RESOURCE, which these machines withhold
        // even from root: keep the current hard limit and cap the soft one to it.
        let mut cur = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: valid resource and struct pointer.
        unsafe { libc::getrlimit(resource, &mut cur) };
        let degraded = libc::rlimit { rlim_cur: rl.soft().min(cur.rlim_max), rlim_max: rl.hard().min(cur.rlim_max) };
        // SAFETY: as above.
        Errno::result(unsafe { libc::setrlimit(resource, &degraded) }).map_err(sys(format!("setting {:?}", rl.typ())))?;
        warn(format!(
            "{:?} hard limit {} not allowed here (EPERM): using {}/{}",
            rl.typ(),
            rl.hard(),
            degraded.rlim_cur,
            degraded.rlim_max
        ));
    }
    Ok(())
}

fn rlimit_resource(t: PosixRlimitType) -> libc::__rlimit_resource_t {
    use PosixRlimitType as R;
    match t {
        R::RlimitCpu => libc::RLIMIT_CPU,
        R::RlimitFsize => libc::RLIMIT_FSIZE,
        R::RlimitData => libc::RLIMIT_DATA,
        R::RlimitStack => libc::RLIMIT_STACK,
        R::RlimitCore => libc::RLIMIT_CORE,
        R::RlimitRss => libc::RLIMIT_RSS,
        R::RlimitNproc => libc::RLIMIT_NPROC,
        R::RlimitNofile => libc::RLIMIT_NOFILE,
        R::RlimitMemlock => libc::RLIMIT_MEMLOCK,
        R::RlimitAs => libc::RLIMIT_AS,
        R::RlimitLocks => libc::RLIMIT_LOCKS,
        R::RlimitSigpending => libc::RLIMIT_SIGPENDING,
        R::RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
        R::RlimitNice => libc::RLIMIT_NICE,
        R::RlimitRtprio => libc::RLIMIT_RTPRIO,
        R::RlimitRttime => libc::RLIMIT_RTTIME,
    }
}

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Resolves the executable (in the container's root, as execvp would) and builds argv/envp.
pub(crate) fn prepare_exec(process: &Process) -> Result<Prepared, InitError> {
    let cstr = |s: &str| CString::new(s).map_err(|_| InitError::Nul(s.to_string()));
    let args = process.args().clone().unwrap_or_default();
    let env = process.env().clone().unwrap_or_default();
    let program = args.first().cloned().unwrap_or_default();
    let path = if program.contains('/') {
        program.clone()
    } else {
        let search = env.iter().find_map(|e| e.strip_prefix("PATH=")).unwrap_or(DEFAULT_PATH);
        search
            .split(':')
            .map(|dir| Path::new(if dir.is_empty() { "." } else { dir }).join(&program))
            .find(|p| is_executable(p))
            .map(|p| p.to_string_lossy().into_owned())
            .ok_or_else(|| InitError::NotFound(program.clone(), search.to_string()))?
    };
    if !Path::new(&path).exists() {
        return Err(InitError::NotFound(program, path));
    }
    Ok(Prepared {
        path: cstr(&path)?,
        args: args.iter().map(|a| cstr(a)).collect::<Result<_, _>>()?,
        env: env.iter().map(|e| cstr(e)).collect::<Result<_, _>>()?,
        seccomp: None,
        start_state: None,
    })
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Signal dispositions and the mask are inherited across exec: give the workload defaults.
pub(crate) fn reset_signals() {
    for sig in 1..32 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: restoring the default disposition.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
    let _ = nix::sys::signal::SigSet::empty().thread_set_mask();
}

/// Replaces this process with the workload; returns only on failure.
/// Loads the filter still pending, then execs; returns only with what went wrong.
pub(crate) fn exec(p: &Prepared) -> String {
    if let Some(filter) = &p.seccomp {
        if let Err(e) = crate::seccomp::install(filter) {
            return chain(&e);
        }
    }
    match nix::unistd::execve(&p.path, &p.args, &p.env) {
        Err(e) => format!("starting {:?}: {e}", p.path),
        Ok(never) => match never {},
    }
}
