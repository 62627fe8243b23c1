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
        let mut out = Vec::new();
        for name in self.network_names()? {
            out.extend(self.network(&name)?);
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The names of the networks recorded on this node.
    pub(super) fn network_names(&self) -> Result<Vec<NetworkName>, NetworkError> {
        let dir = self.state_dir.join("networks");
        match std::fs::read_dir(&dir) {
            Ok(entries) => {
                Ok(entries.flatten().filter_map(|e| NetworkName::new(e.file_name().to_string_lossy().into_owned()).ok()).collect())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(vec![]),
            Err(e) => Err(state_err(&dir)(e)),
        }
    }

    /// The recorded config of network `name`.
    pub fn network(&self, name: &NetworkName) -> Result<Option<NetworkConfig>, NetworkError> {
        let path = self.net_dir(name).join("config.json");
        match record::read_json(&path) {
            Ok(cfg) => Ok(Some(cfg)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(state_err(&path)(e)),
        }
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

    fn lock_file(&self, name: &NetworkName) -> Result<std::fs::File, NetworkError> {
        // Outside the network's own directory, which removal deletes: a lock on a
        // deleted file would guard nothing.
        let dir = self.state_dir.join("network-locks");
        std::fs::create_dir_all(&dir).map_err(state_err(&dir))?;
        let path = dir.join(format!("{name}.lock"));
        std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(state_err(&path))
    }

    /// Takes the network's lock without ever blocking the thread: attaches of one
    /// process hold it across awaits, and a blocking flock on a single-threaded runtime
    /// would wait for a holder that can then never run again.
    pub(super) async fn network_lock(&self, name: &NetworkName, how: FlockArg) -> Result<Flock<std::fs::File>, NetworkError> {
        let nonblock = match how {
            FlockArg::LockShared | FlockArg::LockSharedNonblock => FlockArg::LockSharedNonblock,
            _ => FlockArg::LockExclusiveNonblock,
        };
        loop {
            let f = self.lock_file(name)?;
            match Flock::lock(f, nonblock) {
                Ok(l) => return Ok(l),
                Err((_, nix::Error::EWOULDBLOCK)) => tokio::time::sleep(std::time::Duration::from_millis(2)).await,
                Err((_, e)) => return Err(NetworkError::State { path: self.state_dir.join("network-locks"), source: e.into() }),
            }
        }
    }

    pub(super) fn try_network_lock(&self, name: &NetworkName) -> Result<Option<Flock<std::fs::File>>, NetworkError> {
        let f = self.lock_file(name)?;
        match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
            Ok(l) => Ok(Some(l)),
            Err((_, nix::Error::EWOULDBLOCK)) => Ok(None),
            Err((_, e)) => Err(NetworkError::State { path: self.state_dir.join("network-locks"), source: e.into() }),
        }
    }
}
