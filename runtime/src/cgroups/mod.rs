//! Container cgroups on v1 hierarchies (as on these machines) or a v2 unified tree:
//! create with limits, place a process, list members, remove.
//!
//! The hierarchies are found at `/sys/fs/cgroup`, or where `MINIPOD_CGROUP_ROOT`
//! (read once per process) says: a node whose cgroupfs is mounted elsewhere, or a
//! test that mounts a cgroup2 hierarchy in a mount namespace of its own. A limit
//! whose file the host lacks is refused, naming it, never skipped.

use std::fs;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use oci_spec::runtime::LinuxResources;

mod limits;
pub use limits::check_resources;

/// Where the node mounts its cgroup hierarchies unless `MINIPOD_CGROUP_ROOT` says
/// otherwise (a node whose cgroupfs lives elsewhere, or a test that mounts a cgroup2
/// hierarchy of its own in a mount namespace of its own).
const DEFAULT_ROOT: &str = "/sys/fs/cgroup";

fn root() -> &'static Path {
    static ROOT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    ROOT.get_or_init(|| std::env::var_os("MINIPOD_CGROUP_ROOT").map_or_else(|| PathBuf::from(DEFAULT_ROOT), PathBuf::from))
}
/// v1 hierarchies a container gets a directory in (those the host mounts).
const V1_CONTROLLERS: &[&str] = &["memory", "pids", "cpu", "cpuacct", "cpuset", "devices", "freezer", "blkio", "hugetlb", "systemd"];

/// A cgroup operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("creating cgroup {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cgroup {path} already exists, probably for a container of the same id under another --root: pick another id or set linux.cgroupsPath")]
    Exists { path: PathBuf },
    #[error("setting {file} to {value:?}")]
    Write {
        file: PathBuf,
        value: String,
        #[source]
        source: io::Error,
    },
    #[error("reading {file}")]
    Read {
        file: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{setting} cannot be applied on this host: {why}")]
    Unsupported { setting: String, why: String },
    #[error("removing cgroup {path}: it still holds processes after 2 s")]
    Busy { path: PathBuf },
    #[error("removing cgroup {path}")]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Whether the host mounts cgroup v2 at /sys/fs/cgroup (or `MINIPOD_CGROUP_ROOT`).
pub fn is_unified() -> bool {
    nix::sys::statfs::statfs(root()).is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
}

/// The directories of one container's cgroup, one per hierarchy (one on v2).
#[derive(Debug, Clone)]
pub struct Cgroup {
    paths: Vec<PathBuf>,
    unified: bool,
}

/// What a cgroup's processes use ([`Cgroup::usage`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// CPU time, all CPUs, since the cgroup was made.
    pub cpu_nanos: Option<u64>,
    /// Memory charged, page cache included.
    pub memory_bytes: Option<u64>,
    /// Page cache that can be reclaimed without writeback.
    pub inactive_file: Option<u64>,
}

impl Usage {
    /// Memory minus reclaimable page cache: the kubelet's "working set".
    pub fn working_set(&self) -> Option<u64> {
        self.memory_bytes.map(|m| m.saturating_sub(self.inactive_file.unwrap_or(0)))
    }
}

impl Cgroup {
    /// The cgroup at `relative` (e.g. `minipod/web-1`) in every hierarchy; creates nothing.
    pub fn at(relative: &Path) -> Self {
        let relative = relative.strip_prefix("/").unwrap_or(relative);
        if is_unified() {
            return Self { paths: vec![root().join(relative)], unified: true };
        }
        let paths = V1_CONTROLLERS.iter().map(|c| root().join(c)).filter(|p| p.is_dir()).map(|p| p.join(relative)).collect();
        Self { paths, unified: false }
    }

    /// A cgroup from directories recorded earlier.
    pub fn from_paths(paths: Vec<PathBuf>) -> Self {
        let unified = is_unified();
        Self { paths, unified }
    }

    /// CPU time and memory use of every process in the cgroup, as far as the host's
    /// controllers tell (None where a controller is missing).
    pub fn usage(&self) -> Usage {
        let read = |p: PathBuf| fs::read_to_string(p).ok();
        let stat = |text: Option<String>, key: &str| {
            text.and_then(|t| t.lines().find_map(|l| l.strip_prefix(key).and_then(|v| v.trim().parse::<u64>().ok())))
        };
        let mut u = Usage::default();
        for dir in &self.paths {
            if self.unified {
                u.cpu_nanos = stat(read(dir.join("cpu.stat")), "usage_usec ").map(|us| us * 1000);
                u.memory_bytes = read(dir.join("memory.current")).and_then(|t| t.trim().parse().ok());
                u.inactive_file = stat(read(dir.join("memory.stat")), "inactive_file ");
            } else if dir.join("cpuacct.usage").exists() {
                u.cpu_nanos = read(dir.join("cpuacct.usage")).and_then(|t| t.trim().parse().ok());
            } else if dir.join("memory.usage_in_bytes").exists() {
                u.memory_bytes = read(dir.join("memory.usage_in_bytes")).and_then(|t| t.trim().parse().ok());
                u.inactive_file = stat(read(dir.join("memory.stat")), "total_inactive_file ");
            }
        }
        u
    }

    /// How many processes of the cgroup the OOM killer has killed.
    pub fn oom_kills(&self) -> u64 {
        let (dir, file) = if self.unified {
            (self.paths.first(), "memory.events")
        } else {
            (self.paths.iter().find(|p| p.starts_with(root().join("memory"))), "memory.oom_control")
        };
        dir.and_then(|d| fs::read_to_string(d.join(file)).ok())
            .and_then(|t| t.lines().find_map(|l| l.strip_prefix("oom_kill ").and_then(|v| v.trim().parse().ok())))
            .unwrap_or(0)
    }

    /// The directories, one per hierarchy.
    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// Creates the directories and applies `resources`. Each leaf must be new: an
    /// existing one belongs to someone else and is neither used nor removed. On
    /// failure the leaves this call made are removed again.
    pub fn create(&self, resources: Option<&LinuxResources>) -> Result<(), CgroupError> {
        let mut made = Vec::new();
        let result = self.create_dirs(&mut made).and_then(|()| match resources {
            Some(r) => self.apply(r),
            None => Ok(()),
        });
        if result.is_err() {
            for dir in made.iter().rev() {
                if remove_dir_waiting(dir).is_ok() {
                    remove_default_parent(dir);
                }
            }
        }
        result
    }

    fn create_dirs(&self, made: &mut Vec<PathBuf>) -> Result<(), CgroupError> {
        for path in &self.paths {
            if self.unified {
                enable_v2_controllers(path)?;
            }
            // A concurrent delete may remove the shared parent between our two mkdirs
            // (see `remove`): then make it again.
            for attempt in 0..3 {
                if let Some(parent) = path.parent() {
                    if self.is_v1_cpuset(path) {
                        match create_cpuset_dirs(parent) {
                            // Removed by that delete while we filled it in.
                            Err(_) if !parent.exists() && attempt < 2 => continue,
                            other => other?,
                        }
                    } else {
                        fs::create_dir_all(parent).map_err(|source| CgroupError::Create { path: parent.to_path_buf(), source })?;
                    }
                }
                match fs::create_dir(path) {
                    Ok(()) => {
                        made.push(path.clone());
                        if self.is_v1_cpuset(path) {
                            inherit_cpuset(path)?;
                        }
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Err(CgroupError::Exists { path: path.clone() }),
                    Err(e) if e.kind() == io::ErrorKind::NotFound && attempt < 2 => continue,
                    Err(source) => return Err(CgroupError::Create { path: path.clone(), source }),
                }
            }
        }
        Ok(())
    }

    fn is_v1_cpuset(&self, path: &Path) -> bool {
        !self.unified && path.starts_with(root().join("cpuset"))
    }

    fn file(&self, controller: &str, name: &str) -> Option<PathBuf> {
        let dir = if self.unified {
            self.paths.first()?
        } else {
            let hierarchy = root().join(controller);
            self.paths.iter().find(|p| p.starts_with(&hierarchy))?
        };
        Some(dir.join(name))
    }

    /// Writes a limit; a controller or file the host lacks is an error naming it.
    fn write(&self, controller: &str, name: &str, value: String) -> Result<(), CgroupError> {
        let file = self.file(controller, name).filter(|f| f.exists()).ok_or_else(|| CgroupError::Unsupported {
            setting: name.to_string(),
            why: if self.unified {
                let controller = name.split('.').next().unwrap_or(name);
                let available =
                    self.paths.first().and_then(|d| d.parent()).and_then(|p| fs::read_to_string(p.join("cgroup.controllers")).ok());
                format!(
                    "the cgroup v2 tree has no {name}: the {controller} controller is not available to it (available: {})",
                    available.as_deref().map(str::trim).filter(|a| !a.is_empty()).unwrap_or("none")
                )
            } else {
                format!("no cgroup v1 {controller} hierarchy with {name} is mounted")
            },
        })?;
        fs::write(&file, &value).map_err(|source| CgroupError::Write { file, value, source })
    }

    /// Opens, in every hierarchy, the file through which a single-threaded process
    /// moves itself in by writing `0` ([`join_self`]).
    ///
    /// Moving another process (its PID into `cgroup.procs`) write-locks the global
    /// thread-group rwsem, which waits for an RCU grace period: 6-14 ms on these
    /// machines. A thread that moves itself through v1's `tasks` skips that lock
    /// (~0.1 ms). On v2 `cgroup.procs` is the only way in, so the lock is taken there.
    pub fn open_join_files(&self) -> Result<Vec<OwnedFd>, CgroupError> {
        let name = if self.unified { "cgroup.procs" } else { "tasks" };
        self.paths
            .iter()
            .map(|p| {
                let file = p.join(name);
                fs::OpenOptions::new().write(true).open(&file).map(OwnedFd::from).map_err(|source| CgroupError::Write {
                    file,
                    value: "0".into(),
                    source,
                })
            })
            .collect()
    }

    /// Moves the calling (single-threaded) process into the cgroup.
    pub fn join_self(&self) -> Result<(), CgroupError> {
        join_self(&self.open_join_files()?)
    }

    /// Sends `signal` to every process in the cgroup. The cgroup is frozen meanwhile
    /// (where a freezer is available), so that no member can fork a new one or exit
    /// and free its PID for reuse between the listing and the kill.
    pub fn signal_all(&self, signal: i32) -> Result<usize, CgroupError> {
        // The common case on delete: the workload is gone and took everything with it.
        if self.pids()?.is_empty() {
            return Ok(0);
        }
        let frozen = self.freeze(true);
        let pids = self.pids();
        let mut sent = 0;
        for pid in pids.iter().flatten() {
            // SAFETY: kill with integer arguments; frozen members cannot be reaped.
            if unsafe { libc::kill(*pid, signal) } == 0 {
                sent += 1;
            }
        }
        if frozen {
            self.freeze(false);
        }
        pids.map(|_| sent)
    }

    /// Freezes or thaws the cgroup; false if it has no freezer (or it failed).
    fn freeze(&self, on: bool) -> bool {
        let (file, value, done) = if self.unified {
            let Some(f) = self.paths.first().map(|p| p.join("cgroup.freeze")) else { return false };
            (f, if on { "1" } else { "0" }, None)
        } else {
            let hierarchy = root().join("freezer");
            let Some(dir) = self.paths.iter().find(|p| p.starts_with(&hierarchy)) else { return false };
            (dir.join("freezer.state"), if on { "FROZEN" } else { "THAWED" }, Some(if on { "FROZEN" } else { "THAWED" }))
        };
        if fs::write(&file, value).is_err() {
            return false;
        }
        // v1 passes through FREEZING: wait (briefly) until the state settles.
        if let Some(want) = done {
            for _ in 0..200 {
                if fs::read_to_string(&file).is_ok_and(|s| s.trim() == want) {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        true
    }

    /// PIDs in the cgroup (from the first hierarchy; all hold the same processes).
    pub fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        let Some(path) = self.paths.first() else {
            return Ok(vec![]);
        };
        let file = path.join("cgroup.procs");
        let text = match fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(vec![]),
            Err(source) => return Err(CgroupError::Read { file, source }),
        };
        Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
    }

    /// Removes the directories; already-gone ones are fine. Waits up to 2 s for exiting
    /// processes to leave, since the kernel refuses to remove a cgroup that has members.
    pub fn remove(&self) -> Result<(), CgroupError> {
        let mut first_err = None;
        for path in &self.paths {
            if let Err(e) = remove_dir_waiting(path) {
                first_err.get_or_insert(e);
                continue;
            }
            remove_default_parent(path);
        }
        first_err.map_or(Ok(()), Err)
    }
}

/// The default parent (`minipod`, right under a hierarchy root) is ours: taken away
/// once its last container's cgroup `path` is gone. rmdir fails harmlessly while
/// siblings remain.
fn remove_default_parent(path: &Path) {
    if let Some(parent) = path.parent().filter(|p| p.ends_with(DEFAULT_PARENT) && p.parent().is_some_and(is_hierarchy_root)) {
        let _ = fs::remove_dir(parent);
    }
}

/// Moves the calling single-threaded process into the cgroups whose join files are
/// given (see [`Cgroup::open_join_files`]).
pub fn join_self(files: &[OwnedFd]) -> Result<(), CgroupError> {
    for fd in files {
        let mut f = fs::File::from(fd.try_clone().map_err(|source| CgroupError::Write {
            file: "cgroup join file".into(),
            value: "0".into(),
            source,
        })?);
        f.write_all(b"0").map_err(|source| CgroupError::Write {
            file: format!("cgroup join file (fd {})", fd.as_raw_fd()).into(),
            value: "0".into(),
            source,
        })?;
    }
    Ok(())
}

/// The parent directory of containers whose spec sets no cgroupsPath.
pub const DEFAULT_PARENT: &str = "minipod";

fn is_hierarchy_root(p: &Path) -> bool {
    p == root() || p.parent() == Some(root())
}

fn remove_dir_waiting(path: &Path) -> Result<(), CgroupError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        match fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                if std::time::Instant::now() > deadline {
                    return Err(CgroupError::Busy { path: path.to_path_buf() });
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Err(source) => return Err(CgroupError::Remove { path: path.to_path_buf(), source }),
        }
    }
}

/// Makes the v1 cpuset directories down to `path`, each given its parent's CPUs and
/// memory nodes: a cpuset with none cannot take a process.
fn create_cpuset_dirs(path: &Path) -> Result<(), CgroupError> {
    if !path.exists() {
        if let Some(parent) = path.parent() {
            create_cpuset_dirs(parent)?;
        }
        match fs::create_dir(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(source) => return Err(CgroupError::Create { path: path.to_path_buf(), source }),
        }
    }
    // Also when it exists: a concurrent create may have made it a moment ago and not
    // yet filled it in, and a child of an empty cpuset cannot be joined (ENOSPC).
    inherit_cpuset(path)
}

/// Fills a v1 cpuset's empty `cpus` and `mems` from its parent (filling the parent
/// first when a concurrent create left it empty too).
fn inherit_cpuset(path: &Path) -> Result<(), CgroupError> {
    let Some(parent) = path.parent() else { return Ok(()) };
    let read = |file: PathBuf| fs::read_to_string(&file).map(|v| v.trim().to_string()).map_err(|source| CgroupError::Read { file, source });
    for name in ["cpuset.cpus", "cpuset.mems"] {
        let file = path.join(name);
        if fs::read_to_string(&file).is_ok_and(|v| !v.trim().is_empty()) {
            continue;
        }
        let mut value = read(parent.join(name))?;
        if value.is_empty() && !is_hierarchy_root(parent) {
            inherit_cpuset(parent)?;
            value = read(parent.join(name))?;
        }
        fs::write(&file, &value).map_err(|source| CgroupError::Write { file, value, source })?;
    }
    Ok(())
}

/// On v2 a controller's files appear in a child only if every ancestor delegates it.
fn enable_v2_controllers(path: &Path) -> Result<(), CgroupError> {
    let mut dir = root().to_path_buf();
    let rel = path.strip_prefix(root()).unwrap_or(path);
    for part in rel.components() {
        let available = fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
        let wanted: Vec<String> = ["memory", "pids", "cpu", "cpuset", "hugetlb", "io"]
            .iter()
            .filter(|c| available.split_whitespace().any(|a| a == **c))
            .map(|c| format!("+{c}"))
            .collect();
        if !wanted.is_empty() {
            // Fails harmlessly where the controller is already on or cannot be delegated.
            let _ = fs::write(dir.join("cgroup.subtree_control"), wanted.join(" "));
        }
        dir.push(part);
        if !dir.exists() && dir != path {
            fs::create_dir(&dir).map_err(|source| CgroupError::Create { path: dir.clone(), source })?;
        }
    }
    Ok(())
}
