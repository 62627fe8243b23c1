//! The typed messages minipod's processes exchange (one enum per direction).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::state::ExitStatus;

/// What a freshly exec'd helper is asked to do; the first message on its stdin.
#[derive(Debug, Serialize, Deserialize)]
pub enum HelperRequest {
    /// Become the monitor of a new container.
    Create(Box<CreateRequest>),
    /// Run a process inside a running container.
    Exec(Box<ExecRequest>),
    /// Start the PID 1 of a new PID namespace for a pod whose containers share one.
    PodInit,
}

/// Everything the monitor needs to create a container.
#[derive(Debug, Serialize, Deserialize)]
pub struct CreateRequest {
    pub id: crate::ContainerId,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub state_dir: PathBuf,
    pub spec: oci_spec::runtime::Spec,
    pub cgroup: PathBuf,
    /// Three descriptors (stdin, stdout, stderr) travel with the request when set.
    pub stdio: bool,
    /// Release the workload as soon as it is ready (`run`), saving a round trip.
    pub start: bool,
    /// Stdout and stderr go through the monitor into this CRI-format log (stdin is
    /// /dev/null); `stdio` is false then.
    pub log: Option<PathBuf>,
    /// With `log`: the workload's stdin is a pipe the monitor holds open for attach
    /// (CRI stdin); `Some(true)` closes it after the first attach session (stdin_once).
    #[serde(default)]
    pub stdin: Option<bool>,
    /// With `process.terminal`: the terminal's master end is sent over this Unix socket
    /// (runc's `--console-socket`); without it, it stays with the monitor when there is
    /// a `log`, and goes back to the creator (`Report::Terminal`) otherwise.
    #[serde(default)]
    pub console_socket: Option<PathBuf>,
    /// Mount this overlay as the rootfs, inside the container's mount namespace only.
    pub overlay: Option<crate::rootfs::Overlay>,
    /// The spec's seccomp filter, compiled.
    pub seccomp: Option<crate::seccomp::Program>,
    /// A mount namespace descriptor travels last with the request: the container's
    /// mount namespace is made from it rather than from the caller's.
    pub mount_template: bool,
}

/// A process to start inside a running container.
#[derive(Debug, Serialize, Deserialize)]
pub struct ExecRequest {
    pub pid: i32,
    pub pid_start_time: u64,
    pub cgroup_paths: Vec<PathBuf>,
    pub process: oci_spec::runtime::Process,
    /// The container's system-call filter, compiled.
    pub seccomp: Option<crate::seccomp::Program>,
    pub stdio: bool,
    /// Kill the process (SIGKILL) if it runs longer than this.
    pub timeout: Option<std::time::Duration>,
    /// The process leads a process group of its own (one that can be killed whole)
    /// and its PID is reported as it starts.
    pub own_group: bool,
}

/// Requests to a container's monitor, over its stdin channel or its control socket.
#[derive(Debug, Serialize, Deserialize)]
pub enum MonitorRequest {
    /// Release the workload (runc `start`).
    Start,
    /// Answer with `Exited` once the workload has exited.
    Wait,
    /// Start a new log file at the same path (after rotation); answered with `LogReopened`.
    ReopenLog,
    /// Copy the workload's output, from now on, into the pipes that come along (stdout's,
    /// then stderr's, for those asked for), and hand over its stdin if asked; answered
    /// with `Attached` (and the stdin pipe's write end).
    Attach { stdin: bool, stdout: bool, stderr: bool },
}

/// What a helper (monitor or exec helper) tells the process that talks to it.
#[derive(Debug, Serialize, Deserialize)]
pub enum Report {
    /// Something was degraded but setup went on.
    Warning(String),
    /// The container exists and its workload waits for `Start`.
    Created { pid: i32, pid_start_time: u64 },
    /// The workload has been exec'd (or, for exec, the process started).
    Started { pid: i32 },
    /// The process's terminal (an exec's, or a container's that goes back to its
    /// creator): its master end comes with this message.
    Terminal,
    /// An attach is set up: the workload's stdin comes along when it was asked for.
    Attached,
    /// The workload exited.
    Exited(ExitStatus),
    /// An exec'd process ran past its timeout and was killed.
    TimedOut,
    /// The log file was reopened.
    LogReopened,
    /// The request failed; the text carries the whole cause chain.
    Failed(String),
}

/// From the monitor to the container's init process.
#[derive(Debug, Serialize, Deserialize)]
pub enum ToInit {
    /// The cgroup exists; its join files come along (see `Cgroup::open_join_files`).
    CgroupReady,
    /// The monitor ran the `prestart` and `createRuntime` hooks; the state (JSON) that
    /// the init's own `createContainer` hooks read (`startContainer` ones read it with
    /// the status `created`).
    HooksDone { state: String },
    /// Exec the workload.
    Start,
}

/// From the container's init process to the monitor.
#[derive(Debug, Serialize, Deserialize)]
pub enum FromInit {
    Warning(String),
    /// In its cgroup, mounts made, before `pivot_root`: run the runtime-side hooks and
    /// answer `HooksDone` (sent only when the spec has hooks that run before start).
    Hooks,
    /// The workload's terminal (`process.terminal`): its master end comes along.
    Terminal,
    /// Setup done; blocked until `Start`.
    Ready,
    /// `Start` received; execve follows (EOF after this means it succeeded).
    Execing,
    Failed(String),
}
