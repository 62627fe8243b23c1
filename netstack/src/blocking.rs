//! A [`Node`] for synchronous callers (minipod-runtime's pods, the CLI): every call
//! runs on netstack's [`Executor`] and returns its result, so that a caller needs no
//! tokio runtime of its own and never blocks one (it may itself run on a tokio worker,
//! through `spawn_blocking`, or in a `Drop` while a panic unwinds).

use std::path::Path;
use std::sync::Arc;

use ipnetwork::Ipv4Network;

use crate::executor::Executor;
use crate::names::{IfName, NetworkName, OwnerId};
use crate::network::{AttachRequest, Attachment, GcReport, NetworkConfig, NetworkError, Node};

/// A node and the executor its async work runs on. Cheap to clone: clones share both.
#[derive(Clone)]
pub struct BlockingNode {
    node: Arc<Node>,
    executor: Arc<Executor>,
}

impl BlockingNode {
    /// The node in the namespace pinned at `netns` (the caller's own when None), with
    /// its state under `state_dir`.
    pub fn open(state_dir: &Path, netns: Option<&Path>, executor: Arc<Executor>) -> Result<Self, NetworkError> {
        Ok(Self { node: Arc::new(Node::new(state_dir, netns)?), executor })
    }

    /// Pins a fresh namespace at `pin`, with `lo` up, to be a private node (a node that
    /// touches nothing of the host's network). The pin's directory is made if missing.
    pub fn create_private(pin: &Path, executor: &Executor) -> Result<(), NetworkError> {
        let dir = pin.parent().unwrap_or(pin);
        std::fs::create_dir_all(dir).map_err(|source| NetworkError::State { path: dir.to_path_buf(), source })?;
        let ns = crate::netns::create_pinned(pin)?;
        let up = executor.block(async move {
            let nl = crate::netlink::Netlink::open(&ns)?;
            let lo = nl.index("lo").await?;
            nl.up(lo, "setting lo up in the private node").await?;
            Ok::<_, NetworkError>(())
        });
        let up = up.map_err(NetworkError::from).and_then(|r| r);
        if up.is_err() {
            // Nothing half-made: a pinned node without lo up is no node.
            let _ = crate::netns::remove_pinned(pin);
        }
        up
    }

    /// The node itself: its synchronous queries (networks, members, problems) and DNS.
    pub fn node(&self) -> &Node {
        &self.node
    }

    fn run<T, F>(&self, work: impl FnOnce(Arc<Node>) -> F) -> Result<T, NetworkError>
    where
        T: Send + 'static,
        F: std::future::Future<Output = Result<T, NetworkError>> + Send + 'static,
    {
        self.executor.block(work(self.node.clone()))?
    }

    /// [`Node::create_network`].
    pub fn create_network(&self, cfg: NetworkConfig) -> Result<NetworkConfig, NetworkError> {
        self.run(|node| async move { node.create_network(cfg).await })
    }

    /// Creates network `name` on the first /24 of `pool` that no network of this node
    /// and no address on the node overlaps. Processes creating networks this way on one
    /// node take turns (a lock file in the node's state dir).
    pub fn create_network_in(&self, name: NetworkName, bridge: IfName, pool: Ipv4Network) -> Result<NetworkConfig, NetworkError> {
        let lock_path = self.node.state_dir().join("auto-subnet.lock");
        let state = |source| NetworkError::State { path: lock_path.clone(), source };
        std::fs::create_dir_all(self.node.state_dir()).map_err(state)?;
        let lock = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path).map_err(state)?;
        let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, e)| state(e.into()))?;
        let free = self.run(move |node| async move { node.free_subnet(pool).await })?;
        match free {
            Some(subnet) => self.create_network(NetworkConfig::new(name, bridge, subnet)),
            None => Err(NetworkError::PoolExhausted { name, pool }),
        }
    }

    /// [`Node::remove_network`].
    pub fn remove_network(&self, name: &NetworkName) -> Result<(), NetworkError> {
        let name = name.clone();
        self.run(|node| async move { node.remove_network(&name).await })
    }

    /// [`Node::attach`].
    pub fn attach(&self, name: &NetworkName, req: AttachRequest) -> Result<Attachment, NetworkError> {
        let name = name.clone();
        self.run(|node| async move { node.attach(&name, req).await })
    }

    /// [`Node::detach`].
    pub fn detach(&self, name: &NetworkName, owner: &OwnerId) -> Result<(), NetworkError> {
        let (name, owner) = (name.clone(), owner.clone());
        self.run(|node| async move { node.detach(&name, &owner).await })
    }

    /// [`Node::detach_released`].
    pub fn detach_released(&self, name: &NetworkName, owner: &OwnerId) -> Result<(), NetworkError> {
        let (name, owner) = (name.clone(), owner.clone());
        self.run(|node| async move { node.detach_released(&name, &owner).await })
    }

    /// [`Node::gc_with`].
    pub fn gc_with(&self, is_live: impl Fn(&OwnerId) -> bool + Send + 'static, stray_links: bool) -> Result<GcReport, NetworkError> {
        self.run(move |node| async move { node.gc_with(is_live, stray_links).await })
    }
}

impl std::fmt::Debug for BlockingNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockingNode").field("state_dir", &self.node.state_dir()).finish_non_exhaustive()
    }
}
