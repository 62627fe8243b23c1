//! The on-disk record of one container: `<root>/<id>/state.json`, written only by the
//! container's monitor (one writer), read by everyone, replaced atomically.

use crate::time::Timestamp;
use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::id::ContainerId;

/// Reading or writing a state file failed.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is corrupt: {source}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// Where a container is in its life (OCI runtime spec, "state").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Set up, workload blocked before exec.
    Created,
    /// The workload has been exec'd and has not exited.
    Running,
    /// The workload has exited (or was never seen again).
    Stopped,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Stopped => "stopped",
        })
    }
}

/// How a workload ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExitStatus {
    /// It called exit with this code.
    Code(i32),
    /// A signal with this number killed it.
    Signal(i32),
}

impl ExitStatus {
    /// The code a shell reports: the exit code, or 128 + the signal number.
    pub fn shell_code(self) -> i32 {
        match self {
            ExitStatus::Code(c) => c,
            ExitStatus::Signal(s) => 128 + s,
        }
    }

    /// From a `waitpid` status.
    pub fn from_wait(status: nix::sys::wait::WaitStatus) -> Option<Self> {
        use nix::sys::wait::WaitStatus as W;
        match status {
            W::Exited(_, code) => Some(ExitStatus::Code(code)),
            W::Signaled(_, sig, _) => Some(ExitStatus::Signal(sig as i32)),
            _ => None,
        }
    }
}

/// Everything minipod keeps about one container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerState {
    /// The container id.
    pub id: ContainerId,
    /// Absolute path of the bundle it was created from.
    pub bundle: PathBuf,
    /// Absolute path of its root filesystem on the host.
    pub rootfs: PathBuf,
    /// Status as last recorded by the monitor (see [`ContainerState::live_status`]).
    pub status: Status,
    /// Host PID of the workload (PID 1 of its namespace), once created.
    pub pid: Option<i32>,
    /// Start time of `pid` in clock ticks since boot, to tell it from a reused PID.
    pub pid_start_time: Option<u64>,
    /// Host PID of the monitor that owns the workload.
    pub monitor_pid: i32,
    /// Start time of the monitor, as for `pid_start_time`.
    pub monitor_start_time: u64,
    /// Cgroup directories of the container, one per hierarchy.
    pub cgroup_paths: Vec<PathBuf>,
    /// When it was created.
    pub created: Timestamp,
    /// When the workload was released by `start`, if it was.
    pub started: Option<Timestamp>,
    /// When the workload exited, if it did.
    pub finished: Option<Timestamp>,
    /// How it exited, if it did.
    pub exit: Option<ExitStatus>,
    /// Whether the kernel's OOM killer killed a process of it (its memory limit hit).
    #[serde(default)]
    pub oom_killed: bool,
    /// Annotations from the spec.
    pub annotations: HashMap<String, String>,
}

impl ContainerState {
    /// The status with a dead workload or monitor taken into account: a container
    /// whose recorded PID is gone (or reused) is stopped whatever the file says.
    pub fn live_status(&self) -> Status {
        match (self.status, self.pid, self.pid_start_time) {
            (Status::Stopped, _, _) => Status::Stopped,
            (s, Some(pid), Some(start)) if process_start_time(pid) == Some(start) => s,
            _ => Status::Stopped,
        }
    }

    /// The OCI runtime-spec state document (`minipod state`).
    pub fn oci_state(&self) -> serde_json::Value {
        self.oci_state_as(self.live_status())
    }

    /// [`Self::oci_state`] with the status given rather than looked up: what the
    /// monitor hands `poststart` hooks, which run once the workload started whether or
    /// not it has exited since (a workload that exits at once would otherwise make the
    /// hooks see `stopped` one run in a few; it is not reaped before they finish, so its
    /// pid is still its own).
    pub fn oci_state_as(&self, status: Status) -> serde_json::Value {
        let mut v = serde_json::json!({
            "ociVersion": "1.2.0",
            "id": self.id,
            "status": status,
            "bundle": self.bundle,
            "rootfs": self.rootfs,
            "created": self.created.to_string(),
            "annotations": self.annotations,
        });
        if status != Status::Stopped {
            v["pid"] = self.pid.into();
        }
        if let Some(exit) = self.exit {
            v["exitCode"] = exit.shell_code().into();
        }
        v
    }

    /// Reads `state.json` from a container's state dir.
    pub fn load(dir: &Path) -> Result<Self, StateError> {
        let path = dir.join(STATE_FILE);
        let data = fs::read(&path).map_err(|source| StateError::Read { path: path.clone(), source })?;
        serde_json::from_slice(&data).map_err(|source| StateError::Corrupt { path, source })
    }

    /// Writes `state.json` atomically (temp file, fsync, rename).
    pub fn save(&self, dir: &Path) -> Result<(), StateError> {
        let data =
            serde_json::to_vec_pretty(self).map_err(|e| StateError::Write { path: dir.join(STATE_FILE), source: io::Error::other(e) })?;
        write_atomic(&dir.join(STATE_FILE), &data)
    }
}

/// Name of the state file inside a container's state dir.
pub const STATE_FILE: &str = "state.json";

/// Replaces `path` with `data` so that readers see the old or the new file, never a part.
///
/// No fsync: state describes processes that a reboot ends anyway, and the rename alone
/// is what makes the switch atomic for readers. (On hosts where /run is a disk
/// filesystem, as here, an fsync per state change cost about a millisecond.)
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<(), StateError> {
    crate::netstack::record::write_atomic(path, data, crate::netstack::record::Durability::Atomic)
        .map_err(|source| StateError::Write { path: path.to_path_buf(), source })
}

/// Start time (field 22 of `/proc/PID/stat`) of a live process, or None when it is gone.
pub fn process_start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_code_adds_128_to_signals() {
        assert_eq!(ExitStatus::Code(3).shell_code(), 3);
        assert_eq!(ExitStatus::Signal(9).shell_code(), 137);
    }

    #[test]
    fn own_start_time_is_readable_and_stable() {
        let me = std::process::id() as i32;
        let a = process_start_time(me);
        assert!(a.is_some());
        assert_eq!(a, process_start_time(me));
    }
}
