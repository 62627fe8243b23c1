//! A lean mount namespace for containers to be copied from.
//!
//! Every pod pins three namespaces with bind mounts, so the host's mount table grows
//! by three entries a pod, and every container's new mount namespace is a copy of
//! that table: at 500 pods a container start paid ~5 ms more for copying 1500 mounts
//! it can never use (and again for detaching them after `pivot_root`). The template is
//! a copy of the host's table without namespace pins (nsfs mounts), made private
//! first so that nothing done to it reaches the host. Containers keep joining the
//! pod's namespaces through descriptors opened before the switch.
//!
//! A template does not see mounts the host makes after it, so it is rebuilt as soon as
//! the host's table changes other than by namespace pins (the kernel flags
//! `/proc/self/mountinfo`; a volume mounted right before a container is created must
//! be in the container), when older than [`MAX_AGE`], or when the state root's
//! filesystem changed under it. Since it
//! holds the host's mounts of its moment, it is dropped once stale even when unused,
//! and monitors go back to the host's namespace right after cloning the init: only the
//! container's copy is made from it, and that one detaches the old root.

use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};

/// How long a template is used before the host's newer mounts are picked up.
pub const MAX_AGE: Duration = Duration::from_secs(10);

struct Made {
    fd: Arc<OwnedFd>,
    at: Instant,
    root_dev: u64,
    /// The host's mountinfo, open: the kernel flags it (POLLPRI) once the host's table
    /// changes, and re-reading it clears the flag.
    watch: std::fs::File,
    /// A hash of the host's table without namespace pins, as the template copied it.
    table: u64,
}

/// The host's mount table as seen through `watch`, from its start, without namespace
/// pins (which the template leaves out anyway, and which every pod adds): its hash.
fn table_hash(watch: &mut std::fs::File) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    use std::io::{Read, Seek};
    watch.rewind().ok()?;
    let mut table = String::new();
    watch.read_to_string(&mut table).ok()?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    table.lines().filter(|l| l.split_once(" - ").is_none_or(|(_, rest)| !rest.starts_with("nsfs "))).for_each(|l| l.hash(&mut h));
    Some(h.finish())
}

/// Whether the host mounted or unmounted anything (but namespace pins) since `m` was
/// made: a volume a kubelet mounts right before it creates a container must be in it.
fn host_changed(m: &mut Made) -> bool {
    use std::os::fd::AsFd;
    let mut fds = [nix::poll::PollFd::new(m.watch.as_fd(), nix::poll::PollFlags::POLLPRI)];
    let flagged = match nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO) {
        Ok(0) => false,
        Ok(_) => fds[0].revents().is_some_and(|r| r.intersects(nix::poll::PollFlags::POLLPRI | nix::poll::PollFlags::POLLERR)),
        Err(_) => true,
    };
    flagged && table_hash(&mut m.watch) != Some(m.table)
}

/// The current template of one runtime, rebuilt when stale.
pub struct MountTemplate {
    root: PathBuf,
    current: Arc<Mutex<Option<Made>>>,
    /// Where the timer that drops an unused template runs.
    timers: tokio::runtime::Handle,
}

impl MountTemplate {
    pub fn new(root: &Path, timers: tokio::runtime::Handle) -> Self {
        Self { root: root.to_path_buf(), current: Default::default(), timers }
    }

    /// A descriptor of a fresh enough template, or None (a warning is logged) when one
    /// cannot be made: containers are then made from the host's table, as before.
    pub fn get(&self) -> Option<Arc<OwnedFd>> {
        let root_dev = std::fs::metadata(&self.root).ok()?.dev();
        let mut current = self.current.lock().ok()?;
        if let Some(m) = current.as_mut().filter(|m| m.at.elapsed() < MAX_AGE && m.root_dev == root_dev) {
            if !host_changed(m) {
                return Some(m.fd.clone());
            }
        }
        // Opened and read before the copy is made: a change in between shows as one
        // more flag later, never as a missed one.
        let mut watch = std::fs::File::open("/proc/self/mountinfo").ok()?;
        let table = table_hash(&mut watch)?;
        match build() {
            Ok(fd) => {
                let fd = Arc::new(fd);
                let at = Instant::now();
                *current = Some(Made { fd: fd.clone(), at, root_dev, watch, table });
                // The template holds every host mount of its moment: an idle runtime
                // must not keep an unmounted disk busy, so it goes when stale.
                let cur = self.current.clone();
                self.timers.spawn(async move {
                    tokio::time::sleep(MAX_AGE).await;
                    if let Ok(mut c) = cur.lock() {
                        if c.as_ref().is_some_and(|m| m.at == at) {
                            *c = None;
                        }
                    }
                });
                Some(fd)
            }
            Err(e) => {
                tracing::warn!("making a lean mount namespace for containers failed ({e}); using the host's");
                *current = None;
                None
            }
        }
    }
}

/// Makes the template on a thread of its own (a mount namespace is per thread once
/// the thread stops sharing its filesystem context) and returns its descriptor.
fn build() -> Result<OwnedFd, String> {
    std::thread::spawn(|| -> Result<OwnedFd, String> {
        unshare(CloneFlags::CLONE_FS | CloneFlags::CLONE_NEWNS).map_err(|e| format!("unshare: {e}"))?;
        // Private before anything else: an unmount in a namespace that still shares
        // propagation with the host would unmount the host's pins too.
        mount(None::<&str>, "/", None::<&str>, MsFlags::MS_PRIVATE | MsFlags::MS_REC, None::<&str>)
            .map_err(|e| format!("making the copy private: {e}"))?;
        let table = std::fs::read_to_string("/proc/thread-self/mountinfo").map_err(|e| format!("reading mountinfo: {e}"))?;
        for point in nsfs_mount_points(&table) {
            // Gone already when a pin was stacked twice or removed meanwhile.
            let _ = umount2(point.as_str(), MntFlags::MNT_DETACH);
        }
        std::fs::File::open("/proc/thread-self/ns/mnt").map(OwnedFd::from).map_err(|e| format!("opening the namespace: {e}"))
    })
    .join()
    .map_err(|_| "the template thread panicked".to_string())?
}

/// Mount points of nsfs mounts (namespace pins) in a mountinfo table, with the
/// kernel's octal escapes (`\040` for a space) decoded.
fn nsfs_mount_points(mountinfo: &str) -> Vec<String> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (fields, rest) = line.split_once(" - ")?;
            (rest.split_whitespace().next()? == "nsfs").then(|| crate::rootfs::unescape_mountinfo(fields.split_whitespace().nth(4)?))?
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn namespace_pins_are_found_and_unescaped() {
        let table = "\
36 35 98:0 / / rw,relatime shared:1 - ext4 /dev/root rw
210 36 0:4 net:[4026532456] /run/minipod/pods/0123456789ab/ns/net rw shared:1 - nsfs nsfs rw
211 36 0:4 net:[4026532457] /tmp/with\\040space/ns rw - nsfs nsfs rw
212 36 0:22 / /proc rw - proc proc rw
";
        assert_eq!(super::nsfs_mount_points(table), vec!["/run/minipod/pods/0123456789ab/ns/net", "/tmp/with space/ns"]);
    }
}
