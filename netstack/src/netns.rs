//! Network namespaces as handles: the current one, or one pinned at a path (a bind
//! mount of a namespace file, the CRI-O `pinns` idea). Work that must happen inside
//! a namespace runs on a short-lived thread that entered it, never after a fork; in
//! the caller's thread only when that thread is in the namespace already.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

/// A namespace operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("opening network namespace {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("entering network namespace {path}")]
    Enter {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("creating a network namespace at {path}: {what}")]
    Create {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error("removing the pinned network namespace {path}")]
    Remove {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("work inside a network namespace panicked")]
    Worker,
    #[error("reading the interface counters of {path}")]
    Counters {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Traffic counters of one interface, as the kernel keeps them since it was made.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InterfaceCounters {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_errors: u64,
    pub tx_bytes: u64,
    pub tx_errors: u64,
}

/// The interfaces of a `/proc/net/dev` table, lo left out.
fn parse_net_dev(table: &str) -> Vec<InterfaceCounters> {
    table
        .lines()
        .skip(2)
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            let n: Vec<u64> = rest.split_whitespace().map(|v| v.parse().unwrap_or(0)).collect();
            // Receive: bytes packets errs ...(8 columns); transmit: bytes packets errs ...
            (n.len() >= 11 && name.trim() != "lo").then(|| InterfaceCounters {
                name: name.trim().to_string(),
                rx_bytes: n[0],
                rx_errors: n[2],
                tx_bytes: n[8],
                tx_errors: n[10],
            })
        })
        .collect()
}

/// An open network namespace.
#[derive(Debug)]
pub struct Netns {
    fd: OwnedFd,
    path: PathBuf,
    /// The namespace's identity (device and inode of its nsfs file).
    id: (u64, u64),
}

impl Netns {
    /// The calling thread's network namespace.
    pub fn current() -> Result<Self, NetnsError> {
        Self::open(Path::new("/proc/thread-self/ns/net"))
    }

    /// The namespace at `path` (a pinned namespace or `/proc/PID/ns/net`).
    pub fn open(path: &Path) -> Result<Self, NetnsError> {
        let err = |source| NetnsError::Open { path: path.to_path_buf(), source };
        let f = File::open(path).map_err(err)?;
        let meta = f.metadata().map_err(err)?;
        Ok(Self { fd: f.into(), path: path.to_path_buf(), id: (meta.dev(), meta.ino()) })
    }

    /// Another handle on the same namespace (`/proc/thread-self` paths would name
    /// another thread's once reopened).
    pub fn try_clone(&self) -> Result<Self, NetnsError> {
        let fd = self.fd.try_clone().map_err(|source| NetnsError::Open { path: self.path.clone(), source })?;
        Ok(Self { fd, path: self.path.clone(), id: self.id })
    }

    /// Where it was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` inside this namespace: on a fresh thread that has entered it, or on the
    /// calling thread if that is in it already (the node namespace is usually the
    /// caller's own, and a thread costs more than the work). Sockets `f` opens stay
    /// bound to the namespace.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T, NetnsError> {
        let here = std::fs::metadata("/proc/thread-self/ns/net").map(|m| (m.dev(), m.ino()));
        if here.is_ok_and(|id| id == self.id) {
            // A panic in `f` is an error, as it is from a worker thread.
            return std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|_| NetnsError::Worker);
        }
        let fd = self.fd.try_clone().map_err(|source| NetnsError::Open { path: self.path.clone(), source })?;
        let path = self.path.clone();
        std::thread::spawn(move || {
            setns(fd.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Enter { path, source })?;
            Ok(f())
        })
        .join()
        .map_err(|_| NetnsError::Worker)?
    }

    /// The traffic counters of this namespace's interfaces (lo left out).
    pub fn interface_counters(&self) -> Result<Vec<InterfaceCounters>, NetnsError> {
        // thread-self: the table of the worker's namespace, not of the process's.
        let table = self.run(|| std::fs::read_to_string("/proc/thread-self/net/dev"))?;
        table.map(|t| parse_net_dev(&t)).map_err(|source| NetnsError::Counters { path: self.path.clone(), source })
    }

    /// Writes sysctls (keys as in `sysctl`, under /proc/sys) in order from inside this
    /// namespace, stopping at the first that fails, which is returned with its key.
    pub fn write_sysctls(&self, pairs: &[(String, String)]) -> Result<Result<(), (String, io::Error)>, NetnsError> {
        let pairs = pairs.to_vec();
        self.run(move || {
            for (key, value) in pairs {
                let path = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
                std::fs::write(path, value).map_err(|e| (key, e))?;
            }
            Ok(())
        })
    }
}

impl AsFd for Netns {
    /// The open namespace file, to `setns` a thread into it.
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Creates a new network namespace and pins it at `path` (an empty file is created).
/// The namespace lives until [`remove_pinned`], whatever process created it.
pub fn create_pinned(path: &Path) -> Result<Netns, NetnsError> {
    create_pinned_set(&[("net", path)], || Ok(()))?;
    Netns::open(path)
}

/// Creates new namespaces of the given kinds (`net`, `ipc`, `uts`) together, runs
/// `inside` in them (to set a hostname, say) and pins each at its path. On failure
/// nothing stays pinned.
pub fn create_pinned_set(
    pins: &[(&'static str, &Path)],
    inside: impl FnOnce() -> nix::Result<()> + Send + 'static,
) -> Result<(), NetnsError> {
    let mut flags = CloneFlags::empty();
    let mut targets = Vec::new();
    for (kind, path) in pins {
        flags |= match *kind {
            "net" => CloneFlags::CLONE_NEWNET,
            "ipc" => CloneFlags::CLONE_NEWIPC,
            "uts" => CloneFlags::CLONE_NEWUTS,
            _ => {
                return Err(NetnsError::Create { path: path.to_path_buf(), what: "unsupported namespace kind", source: nix::Error::EINVAL })
            }
        };
        let target = path.to_path_buf();
        if let Err(source) = File::create(&target) {
            undo(&targets);
            return Err(NetnsError::Open { path: target, source });
        }
        targets.push((*kind, target));
    }
    let inner = targets.clone();
    let made = std::thread::spawn(move || -> Result<(), NetnsError> {
        let first = inner.first().map(|(_, p)| p.clone()).unwrap_or_default();
        unshare(flags).map_err(|source| NetnsError::Create { path: first.clone(), what: "unshare", source })?;
        inside().map_err(|source| NetnsError::Create { path: first, what: "preparing the new namespaces", source })?;
        for (kind, t) in &inner {
            mount(Some(format!("/proc/thread-self/ns/{kind}").as_str()), t, None::<&str>, MsFlags::MS_BIND, None::<&str>)
                .map_err(|source| NetnsError::Create { path: t.clone(), what: "bind mount", source })?;
        }
        Ok(())
    })
    .join()
    .map_err(|_| NetnsError::Worker)
    .and_then(|r| r);
    if made.is_err() {
        undo(&targets);
    }
    made
}

fn undo(targets: &[(&str, PathBuf)]) {
    for (_, t) in targets {
        let _ = remove_pinned(t);
    }
}

/// Unpins a namespace made by [`create_pinned`]; a path already gone is fine. The
/// kernel frees the namespace (and the veth ends in it) once nothing else holds it.
pub fn remove_pinned(path: &Path) -> Result<(), NetnsError> {
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
        Err(source) => return Err(NetnsError::Remove { path: path.to_path_buf(), source }),
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(NetnsError::Remove { path: path.to_path_buf(), source: nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO)) }),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn net_dev_tables_give_counters_per_interface_without_lo() {
        let table = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     140       2    0    0    0     0          0         0      140       2    0    0    0     0       0          0
  eth0:    5012      40    1    0    0     0          0         0     2096      24    3    0    0     0       0          0
";
        let got = super::parse_net_dev(table);
        assert_eq!(got.len(), 1);
        assert_eq!(
            (got[0].name.as_str(), got[0].rx_bytes, got[0].rx_errors, got[0].tx_bytes, got[0].tx_errors),
            ("eth0", 5012, 1, 2096, 3)
        );
    }
}
