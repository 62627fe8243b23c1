//! `minipod serve`: the CRI v1 RuntimeService and ImageService on a root-only Unix
//! socket, on the same pods, containers and images as the library and the CLI. Exec,
//! Attach and PortForward hand out URLs of the [`crate::streaming`] server.

mod convert;
mod events;
mod from_cri;
mod image_service;
mod limits;
mod overlay;
mod runtime_service;
mod security;
mod stats;
mod to_cri;
mod unknown_method;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use k8s_cri::v1::image_service_server::ImageServiceServer;
use k8s_cri::v1::runtime_service_server::RuntimeServiceServer;
use minipod_runtime::image::PullOptions;
use minipod_runtime::{PodError, Pods, PodsOptions};
use tonic::Status;

/// How long connections get to finish their requests once the daemon is told to stop;
/// pod work already handed to a blocking thread still runs to its end.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Default socket, as `unix://` URL or path.
pub const DEFAULT_SOCKET: &str = "unix:///run/minipod/minipod.sock";

/// The state both services share.
pub struct Server {
    pods: Arc<Pods>,
    /// The overlay the node's pod CIDR network joins, if it is a node of a cluster.
    overlay: Option<ClusterOverlay>,
    pull: minipod_runtime::image::PullOptions,
    events: Arc<events::Events>,
    streams: Arc<crate::streaming::StreamServer>,
}

/// The tokio runtime's own threads: gRPC, streaming, DNS and the event sweep.
const ASYNC_THREADS: usize = 2;
/// Threads for work that blocks (pod work and execs), at most.
const BLOCKING_THREADS: usize = 80;
/// Turns for ExecSync (probes, each ended by its timeout) and for streaming execs
/// (shells, open for hours): a share each of the blocking threads, held for as long as
/// the process runs, so that a node full of open shells still runs its probes; what is
/// left (16) is pod work's, which never waits for a turn. A further exec waits for one.
pub(crate) static EXEC_SYNC: Turns = Turns::new(32);
pub(crate) static STREAM_EXEC: Turns = Turns::new(32);

pub(crate) struct Turns(tokio::sync::Semaphore, usize);

impl Turns {
    const fn new(turns: usize) -> Self {
        Self(tokio::sync::Semaphore::const_new(turns), turns)
    }

    /// How many turns there are.
    pub(crate) const fn size(&self) -> usize {
        self.1
    }

    /// A turn: held by the blocking thread that runs the exec, until it ends.
    pub(crate) async fn take(&'static self) -> Option<tokio::sync::SemaphorePermit<'static>> {
        // Never closed: None cannot happen, and would only mean no limit.
        self.0.acquire().await.ok()
    }
}

/// Runs blocking pod work off the gRPC threads; errors become gRPC statuses.
async fn blocking<T: Send + 'static>(pods: &Arc<Pods>, f: impl FnOnce(&Pods) -> Result<T, PodError> + Send + 'static) -> Result<T, Status> {
    let pods = pods.clone();
    match tokio::task::spawn_blocking(move || f(&pods)).await {
        Ok(r) => r.map_err(convert::status),
        Err(e) => Err(Status::internal(format!("the request's worker failed: {e}"))),
    }
}

/// Serves until SIGINT or SIGTERM. Pods and containers stay when it stops: the next
/// daemon (or the CLI) finds them in the state dir.
///
/// The socket's directory must be ours and writable by nobody else: whoever can write
/// it can put a socket of their own in its place, and every CRI client would talk to
/// them.
pub use overlay::{parse_peer, ClusterOverlay};

pub fn serve(
    mut opts: PodsOptions,
    socket: &str,
    streaming: std::net::SocketAddr,
    pull: PullOptions,
    overlay: Option<ClusterOverlay>,
) -> anyhow::Result<i32> {
    // Two malloc arenas rather than glibc's 8 per core: each of the dozen or so request
    // threads would get one that keeps what it freed (the soak benchmark: 34 MB of RSS
    // with the default, 30 MB with two, the same latency). And a fixed mmap threshold:
    // glibc's moves up to 32 MiB once a large chunk is freed, after which buffers of a
    // megabyte come from the heap and stay there (37.0 MB after 1,000 soak cycles
    // against 31.7 MB, the same latency). A failure leaves the default.
    // SAFETY: mallopt only tunes the allocator, and may be called from any thread.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 128 * 1024);
    }
    let path = PathBuf::from(socket.strip_prefix("unix://").unwrap_or(socket));
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).context("the socket path has no directory: give an absolute path")?;
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    check_socket_dir(parent)?;
    let _held = hold_socket(&path)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(ASYNC_THREADS)
        .max_blocking_threads(BLOCKING_THREADS)
        .enable_all()
        .build()?;
    if let Some(o) = &overlay {
        // The pod CIDR network's links must fit in the tunnel.
        opts.mtu = Some(rt.block_on(o.pod_mtu(opts.node_netns.as_deref()))?);
    }
    let pods = Pods::open(PodsOptions { keep_pods: true, ..opts })?;
    // A pod CIDR a kubelet gave before a restart stays this node's until it sends one.
    let kubepods = minipod_runtime::netstack::NetworkName::new(minipod_runtime::pod::POD_CIDR_NETWORK)?;
    if let Some(cfg) = pods.node().network(&kubepods)? {
        pods.use_pod_cidr(cfg.subnet)?;
    }
    let pods = Arc::new(pods);
    let served = rt.block_on(async move {
        // Names of every network, from now on, are served by this process.
        pods.node().serve_dns(minipod_runtime::netstack::DnsScope::AllNetworks)?;
        // A daemon of a build from before the lock holds none.
        if std::os::unix::net::UnixStream::connect(&path).is_ok() {
            anyhow::bail!("another daemon already serves {}: stop it first", path.display());
        }
        // Before the socket exists, so that whoever waits for it (a kubelet, systemd, a
        // test) finds the tunnel and the routes to the peers' pod CIDRs already there.
        if let Some(o) = &overlay {
            o.join_and_follow(&pods).await?;
        }
        // A socket file left by a daemon that was killed.
        let _ = std::fs::remove_file(&path);
        // Root-only from its first moment: no window where another user could connect.
        // SAFETY: umask only changes this process's file creation mask.
        let old = unsafe { libc::umask(0o117) };
        let bound = tokio::net::UnixListener::bind(&path);
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        let listener = bound.with_context(|| format!("listening on {}", path.display()))?;
        // Ours, whatever group a setgid directory would have given it.
        std::os::unix::fs::chown(&path, Some(nix::unistd::geteuid().as_raw()), Some(nix::unistd::getegid().as_raw()))
            .with_context(|| format!("taking ownership of {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660))?;
        eprintln!("minipod: serving CRI on unix://{}", path.display());
        let streams = crate::streaming::StreamServer::start(streaming, pods.clone())
            .await
            .with_context(|| format!("listening for streams (exec, port-forward) on {streaming}"))?;
        eprintln!("minipod: serving streams on http://{}", streams.addr());
        let events = events::Events::new();
        events.clone().sweep(pods.clone());
        let server = Arc::new(Server { pods, overlay, pull, events, streams });
        let signalled = async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {},
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {},
            }
        };
        let stop = Arc::new(tokio::sync::Notify::new());
        let stopping = stop.clone();
        let serving = tonic::transport::Server::builder()
            .layer(unknown_method::NameUnknownMethods)
            .add_service(RuntimeServiceServer::from_arc(server.clone()))
            .add_service(ImageServiceServer::from_arc(server))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::UnixListenerStream::new(listener),
                async move { stopping.notified().await },
            );
        tokio::pin!(serving);
        tokio::select! {
            served = &mut serving => served?,
            () = signalled => {
                stop.notify_one();
                // A graceful stop waits for every connection to close, and a kubelet
                // never closes its own: requests in flight get this long, then the
                // daemon goes (pods and containers stay either way).
                match tokio::time::timeout(SHUTDOWN_GRACE, &mut serving).await {
                    Ok(served) => served?,
                    Err(_) => tracing::info!("stopping with clients still connected after {SHUTDOWN_GRACE:?}"),
                }
            }
        }
        let _ = std::fs::remove_file(&path);
        Ok(0)
    });
    // Work still on the blocking pool (a streaming exec whose client is still there)
    // must not keep the daemon from stopping: it is cut off, its process left running.
    rt.shutdown_timeout(SHUTDOWN_GRACE);
    served
}

/// Holds `SOCKET.lock` for as long as the daemon runs, so that a second daemon on the
/// same socket is refused before it touches the node or the state root, also when both
/// start at once (a look at the socket alone lets both through, and the later bind
/// then takes the socket from the earlier one). The file stays when the daemon stops:
/// removed, a daemon that had opened it a moment before would lock a file nobody else
/// sees.
fn hold_socket(socket: &Path) -> anyhow::Result<nix::fcntl::Flock<std::fs::File>> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut path = socket.as_os_str().to_owned();
    path.push(".lock");
    let path = PathBuf::from(path);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(held) => Ok(held),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
            anyhow::bail!("another daemon already serves {} (it holds {}): stop it first", socket.display(), path.display())
        }
        Err((_, e)) => Err(e).with_context(|| format!("locking {}", path.display())),
    }
}

/// Refuses a socket directory that another user owns or that others may write to.
fn check_socket_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(dir).with_context(|| format!("looking at {}", dir.display()))?;
    let ours = nix::unistd::geteuid().as_raw();
    if meta.uid() != ours {
        anyhow::bail!(
            "the socket's directory {} belongs to uid {}, not to this daemon (uid {ours}): its owner could replace the socket; put it in a directory of root's, e.g. /run/minipod",
            dir.display(),
            meta.uid()
        );
    }
    if meta.mode() & 0o022 != 0 {
        anyhow::bail!(
            "the socket's directory {} can be written by others (mode {:o}): they could replace the socket; put it in a directory only root can write, e.g. /run/minipod, or chmod go-w it",
            dir.display(),
            meta.mode() & 0o7777
        );
    }
    Ok(())
}
