//! The on-disk registry of a node's networks: configs, members, locks.

use super::*;

impl Node {
    pub(super) fn net_dir(&self, name: &NetworkName) -> PathBuf {
        self.state_dir.join("networks").join(name.as_str())
    }

    pub(super) fn ipam(&self, cfg: &NetworkConfig) -> Ipam {
        Ipam::new(self.net_dir(&cfg.name).join("ipam"), cfg.subnet.into(), cfg.gateway().into())
    }

    pub(super) fn ipam6(&self, cfg: &NetworkConfig) -> Option<Ipam> {
        Some(Ipam::new(self.net_dir(&cfg.name).join("ipam6"), cfg.subnet6?.into(), cfg.gateway6()?.into()))
    }

    /// Every network recorded on this node.
    pub fn networks(&self) -> Result<Vec<NetworkConfig>, NetworkError> {
        recorded_networks(&self.state_dir)
    }

    /// The names of the networks recorded on this node.
    pub(super) fn network_names(&self) -> Result<Vec<NetworkName>, NetworkError> {
        network_names(&self.state_dir)
    }

    /// The recorded config of network `name`.
    pub fn network(&self, name: &NetworkName) -> Result<Option<NetworkConfig>, NetworkError> {
        recorded_network(&self.state_dir, name)
    }

    /// Members of network `name`.
    pub fn members(&self, name: &NetworkName) -> Result<Vec<Attachment>, NetworkError> {
        let dir = self.net_dir(name).join("members");
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(state_err(&dir)(e)),
        };
        let mut out = Vec::new();
        for e in entries.flatten() {
            let path = e.path();
            if path.extension().is_some_and(|x| x == "json") {
                out.push(record::read_json(&path).map_err(state_err(&path))?);
            }
        }
        Ok(out)
    }

    pub(super) fn member_file(&self, name: &NetworkName, owner: &OwnerId) -> PathBuf {
        self.net_dir(name).join("members").join(format!("{owner}.json"))
    }

    fn lock_path(&self, name: &NetworkName) -> Result<PathBuf, NetworkError> {
        // Outside the network's own directory, which removal deletes: a lock on a
        // deleted file would guard nothing.
        let dir = self.state_dir.join("network-locks");
        std::fs::create_dir_all(&dir).map_err(state_err(&dir))?;
        Ok(dir.join(format!("{name}.lock")))
    }

    pub(super) fn lock_file(path: &Path) -> Result<std::fs::File, NetworkError> {
        std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(path).map_err(state_err(path))
    }

    /// Takes the network's lock without ever blocking the caller's thread: attaches
    /// hold it across awaits, and a blocking flock on a single-threaded runtime would
    /// wait for a holder that can then never run again. Holders in this process queue
    /// on an async lock; only a holder in another process is waited for, on a
    /// blocking thread.
    pub(super) async fn network_lock(&self, name: &NetworkName, how: FlockArg) -> Result<NetworkLock, NetworkError> {
        let path = self.lock_path(name)?;
        let local = local_lock(&path);
        let (local, shared) = match how {
            FlockArg::LockShared | FlockArg::LockSharedNonblock => (LocalGuard::Shared(local.read_owned().await), true),
            _ => (LocalGuard::Exclusive(local.write_owned().await), false),
        };
        let (nonblock, block) = if shared {
            (FlockArg::LockSharedNonblock, FlockArg::LockShared)
        } else {
            (FlockArg::LockExclusiveNonblock, FlockArg::LockExclusive)
        };
        let fail = |e: nix::Error| NetworkError::State { path: path.clone(), source: e.into() };
        let flock = match Flock::lock(Self::lock_file(&path)?, nonblock) {
            Ok(l) => l,
            Err((f, nix::Error::EWOULDBLOCK)) => {
                // Dropped with its lock if the caller gives up meanwhile.
                let waited = tokio::task::spawn_blocking(move || Flock::lock(f, block).map_err(|(_, e)| e)).await;
                match waited {
                    Ok(r) => r.map_err(fail)?,
                    // The runtime shuts down under the wait.
                    Err(e) => return Err(NetworkError::State { path: path.clone(), source: std::io::Error::other(e) }),
                }
            }
            Err((_, e)) => return Err(fail(e)),
        };
        Ok(NetworkLock { _flock: flock, _local: local })
    }

    /// The network's exclusive lock if nobody holds it, in this process or another.
    pub(super) fn try_network_lock(&self, name: &NetworkName) -> Result<Option<NetworkLock>, NetworkError> {
        let path = self.lock_path(name)?;
        let Ok(local) = local_lock(&path).try_write_owned() else { return Ok(None) };
        match Flock::lock(Self::lock_file(&path)?, FlockArg::LockExclusiveNonblock) {
            Ok(l) => Ok(Some(NetworkLock { _flock: l, _local: LocalGuard::Exclusive(local) })),
            Err((_, nix::Error::EWOULDBLOCK)) => Ok(None),
            Err((_, e)) => Err(NetworkError::State { path, source: e.into() }),
        }
    }
}

/// A network's lock: the file lock other processes see, and this process's own.
pub(super) struct NetworkLock {
    _flock: Flock<std::fs::File>,
    _local: LocalGuard,
}

#[expect(dead_code, reason = "the guards are held for their Drop")]
enum LocalGuard {
    Shared(tokio::sync::OwnedRwLockReadGuard<()>),
    Exclusive(tokio::sync::OwnedRwLockWriteGuard<()>),
}

/// This process's lock for the lock file at `path` (one per file, for all nodes of
/// the process: two of them on one state dir share it).
fn local_lock(path: &Path) -> std::sync::Arc<tokio::sync::RwLock<()>> {
    type Locks = std::collections::BTreeMap<PathBuf, std::sync::Arc<tokio::sync::RwLock<()>>>;
    static LOCKS: std::sync::Mutex<Locks> = std::sync::Mutex::new(Locks::new());
    let mut locks = LOCKS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    // Locks nobody holds or waits for go, so that networks come and go without the map
    // growing: one made again later is as good.
    locks.retain(|p, l| p == path || std::sync::Arc::strong_count(l) > 1);
    locks.entry(path.to_path_buf()).or_default().clone()
}

/// Every network recorded under a node's state dir `state_dir`, read from its files
/// alone: the node's namespace is not opened (it may be gone).
pub fn recorded_networks(state_dir: &Path) -> Result<Vec<NetworkConfig>, NetworkError> {
    let mut out = Vec::new();
    for name in network_names(state_dir)? {
        out.extend(recorded_network(state_dir, &name)?);
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn network_names(state_dir: &Path) -> Result<Vec<NetworkName>, NetworkError> {
    let dir = state_dir.join("networks");
    match std::fs::read_dir(&dir) {
        Ok(entries) => Ok(entries.flatten().filter_map(|e| NetworkName::new(e.file_name().to_string_lossy().into_owned()).ok()).collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(vec![]),
        Err(e) => Err(state_err(&dir)(e)),
    }
}

fn recorded_network(state_dir: &Path, name: &NetworkName) -> Result<Option<NetworkConfig>, NetworkError> {
    let path = state_dir.join("networks").join(name.as_str()).join("config.json");
    match record::read_json(&path) {
        Ok(cfg) => Ok(Some(cfg)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(state_err(&path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::time::Duration;

    use super::*;

    struct Scratch(PathBuf);
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    struct Child(std::process::Child);
    impl Drop for Child {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[test]
    fn network_lock_waits_for_holders_in_this_process_and_in_others() {
        let dir = Scratch(std::env::temp_dir().join(format!("minipod-lock-test-{}", std::process::id())));
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let node = Node::new(&dir.0, None).unwrap();
        let name = NetworkName::new("locked").unwrap();
        let short = Duration::from_millis(100);
        let long = Duration::from_secs(30);
        rt.block_on(async {
            // In this process: a holder keeps a taker waiting, and its release lets it in.
            let held = node.network_lock(&name, FlockArg::LockExclusive).await.unwrap();
            assert!(node.try_network_lock(&name).unwrap().is_none());
            assert!(tokio::time::timeout(short, node.network_lock(&name, FlockArg::LockShared)).await.is_err());
            drop(held);
            let a = tokio::time::timeout(long, node.network_lock(&name, FlockArg::LockShared)).await.unwrap().unwrap();
            let b = tokio::time::timeout(long, node.network_lock(&name, FlockArg::LockShared)).await.unwrap().unwrap();
            assert!(node.try_network_lock(&name).unwrap().is_none(), "shared holders keep an exclusive taker out");
            drop((a, b));
        });

        // Another process holds the file lock until its stdin closes.
        let path = node.lock_path(&name).unwrap();
        let mut holder = Child(
            std::process::Command::new("flock")
                .arg(&path)
                .arg("cat")
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        );
        let deadline = std::time::Instant::now() + long;
        while node.try_network_lock(&name).unwrap().is_some() {
            assert!(std::time::Instant::now() < deadline, "flock(1) never took the lock");
            std::thread::sleep(Duration::from_millis(10));
        }
        rt.block_on(async {
            assert!(tokio::time::timeout(short, node.network_lock(&name, FlockArg::LockExclusive)).await.is_err());
            let mut stdin = holder.0.stdin.take().unwrap();
            stdin.write_all(b"bye\n").unwrap();
            drop(stdin);
            let got = tokio::time::timeout(long, node.network_lock(&name, FlockArg::LockExclusive)).await;
            assert!(got.is_ok_and(|l| l.is_ok()), "the lock is taken once the other process lets go");
        });
    }
}
