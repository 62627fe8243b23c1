//! The container's root filesystem, built inside its new mount namespace: propagation,
//! the rootfs bind, the spec's mounts, /dev, `pivot_root`, then masked and read-only
//! paths. Runs only in the container's init process.

use std::collections::VecDeque;
use std::fs;
use std::io;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use oci_spec::runtime::{LinuxDevice, LinuxDeviceType, Mount, Spec};

/// A rootfs step failed.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("{what}")]
    Mount {
        what: String,
        #[source]
        source: Errno,
    },
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("mount {0}: {1}")]
    Spec(String, String),
}

fn merr(what: impl Into<String>) -> impl FnOnce(Errno) -> RootfsError {
    let what = what.into();
    move |source| RootfsError::Mount { what, source }
}

fn ioerr(what: impl Into<String>) -> impl FnOnce(io::Error) -> RootfsError {
    let what = what.into();
    move |source| RootfsError::Io { what, source }
}

/// Mount flags and data parsed from a spec mount's options.
#[derive(Debug, PartialEq)]
pub struct MountOptions {
    pub flags: MsFlags,
    pub propagation: Vec<MsFlags>,
    pub data: Vec<String>,
    pub bind: bool,
}

/// Splits `options` into flags, propagation changes and filesystem data, as mount(8) does.
pub fn parse_options(options: &[String]) -> MountOptions {
    let mut o = MountOptions { flags: MsFlags::empty(), propagation: vec![], data: vec![], bind: false };
    for opt in options {
        let (set, clear) = match opt.as_str() {
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS),
            "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty()),
            "mand" => (MsFlags::MS_MANDLOCK, MsFlags::empty()),
            "nomand" => (MsFlags::empty(), MsFlags::MS_MANDLOCK),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "nostrictatime" => (MsFlags::empty(), MsFlags::MS_STRICTATIME),
            "defaults" => (MsFlags::empty(), MsFlags::empty()),
            "bind" => {
                o.bind = true;
                (MsFlags::MS_BIND, MsFlags::empty())
            }
            "rbind" => {
                o.bind = true;
                (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty())
            }
            other => {
                let prop = match other {
                    "private" => Some(MsFlags::MS_PRIVATE),
                    "rprivate" => Some(MsFlags::MS_PRIVATE | MsFlags::MS_REC),
                    "shared" => Some(MsFlags::MS_SHARED),
                    "rshared" => Some(MsFlags::MS_SHARED | MsFlags::MS_REC),
                    "slave" => Some(MsFlags::MS_SLAVE),
                    "rslave" => Some(MsFlags::MS_SLAVE | MsFlags::MS_REC),
                    "unbindable" => Some(MsFlags::MS_UNBINDABLE),
                    "runbindable" => Some(MsFlags::MS_UNBINDABLE | MsFlags::MS_REC),
                    _ => None,
                };
                match prop {
                    Some(p) => o.propagation.push(p),
                    None => o.data.push(other.to_string()),
                }
                continue;
            }
        };
        o.flags |= set;
        o.flags &= !clear;
    }
    o
}

/// Joins `path` to `root` resolving symlinks as if `root` were `/`, so that no
/// symlink or `..` in a rootfs can point a mount outside it.
pub fn secure_join(root: &Path, path: &Path) -> io::Result<PathBuf> {
    let mut resolved = PathBuf::new();
    let mut todo: VecDeque<PathBuf> = path.components().map(|c| PathBuf::from(c.as_os_str())).collect();
    let mut links = 0;
    while let Some(part) = todo.pop_front() {
        match part.components().next() {
            None | Some(Component::RootDir) | Some(Component::CurDir) | Some(Component::Prefix(_)) => continue,
            Some(Component::ParentDir) => {
                resolved.pop();
            }
            Some(Component::Normal(name)) => {
                let candidate = resolved.join(name);
                let full = root.join(&candidate);
                match fs::symlink_metadata(&full) {
                    Ok(md) if md.file_type().is_symlink() => {
                        links += 1;
                        if links > 255 {
                            return Err(io::Error::from_raw_os_error(libc::ELOOP));
                        }
                        let target = fs::read_link(&full)?;
                        if target.is_absolute() {
                            resolved.clear();
                        }
                        for c in target.components().rev() {
                            todo.push_front(PathBuf::from(c.as_os_str()));
                        }
                    }
                    _ => resolved = candidate,
                }
            }
        }
    }
    Ok(root.join(resolved))
}

/// Every mount of the new root, before [`pivot`] (which waits for the cgroup and the
/// OCI hooks that run before it), except cgroup filesystems: those must be mounted
/// from inside the container's cgroup namespace, which can only be created once the
/// process is in its cgroup. They are returned for [`mount_cgroups`].
pub fn prepare(
    spec: &Spec,
    bundle: &Path,
    rootfs: &Path,
    overlay: Option<&Overlay>,
    warn: &dyn Fn(String),
) -> Result<DeferredCgroups, RootfsError> {
    let linux = spec.linux().clone().unwrap_or_default();
    let propagation = root_propagation(spec).map_err(|e| RootfsError::Spec("/".into(), e))?;
    // Nothing we mount may propagate back to the host (but through a shared root).
    mount(None::<&str>, "/", None::<&str>, propagation | MsFlags::MS_REC, None::<&str>)
        .map_err(merr(format!("setting the propagation of / ({propagation:?})")))?;
    if propagation == MsFlags::MS_SHARED {
        // As runc does: the mount that holds the rootfs goes private, so the rootfs
        // and all that setup mounts under it stay in this namespace; only binds of the
        // node's shared mounts (Bidirectional volumes) keep their peers on the node.
        let table = fs::read_to_string("/proc/self/mountinfo").map_err(ioerr("reading /proc/self/mountinfo"))?;
        let (point, _) = mount_holding_in(&table, rootfs).ok_or_else(|| {
            RootfsError::Spec("/".into(), format!("no mount holds the rootfs {} in /proc/self/mountinfo", rootfs.display()))
        })?;
        // A shared bind from that same mount would be private too, and the container's
        // mounts would silently stay inside: refused instead.
        for m in spec.mounts().iter().flatten() {
            let opts = m.options().clone().unwrap_or_default();
            let (Some(source), true) = (m.source(), opts.iter().any(|o| o == "rshared" || o == "shared")) else { continue };
            if mount_holding_in(&table, source).is_some_and(|(p, _)| p == point) {
                return Err(RootfsError::Spec(
                    m.destination().display().to_string(),
                    format!(
                        "its source {} is on the mount {} that holds the container's rootfs, which must stay private to the container: \
                         give the volume a mount of its own (mount --bind DIR DIR; mount --make-rshared DIR)",
                        source.display(),
                        point.display()
                    ),
                ));
            }
        }
        mount(None::<&str>, &point, None::<&str>, MsFlags::MS_PRIVATE, None::<&str>)
            .map_err(merr(format!("making {}, which holds the rootfs, private", point.display())))?;
    }
    match overlay {
        // Mounted in the container's own mount namespace: it goes away with the
        // container, and a crash can leave no mount behind on the host.
        Some(o) => mount(Some("overlay"), rootfs, Some("overlay"), MsFlags::empty(), Some(o.options().as_str())).map_err(merr(format!(
            "mounting the overlay rootfs ({}) on {}",
            o.options(),
            rootfs.display()
        )))?,
        None => mount(Some(rootfs), rootfs, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
            .map_err(merr(format!("bind-mounting the rootfs {}", rootfs.display())))?,
    }

    let mounts = spec.mounts().clone().unwrap_or_default();
    let is_cgroup = |m: &Mount| matches!(m.typ().as_deref(), Some("cgroup" | "cgroup2"));
    for m in mounts.iter().filter(|m| !is_cgroup(m)) {
        mount_one(rootfs, bundle, m, warn)?;
    }
    let dev_is_bind =
        mounts.iter().any(|m| m.destination() == Path::new("/dev") && parse_options(m.options().as_deref().unwrap_or_default()).bind);
    if !dev_is_bind {
        create_devices(rootfs, &linux.devices().clone().unwrap_or_default())?;
    }
    let cgroup_mounts: Vec<Mount> = mounts.into_iter().filter(is_cgroup).collect();
    // The host's v1 hierarchies are only visible in mountinfo before the root switch.
    // Asked here too: after the root switch the node's cgroup mount is out of sight.
    let unified = crate::cgroups::is_unified();
    let hierarchies = if cgroup_mounts.is_empty() || unified { vec![] } else { v1_hierarchies()? };
    Ok(DeferredCgroups { mounts: cgroup_mounts, hierarchies, unified })
}

/// The propagation the spec's `linux.rootfsPropagation` asks for (rslave when unset);
/// an error says why a value cannot hold a container root.
pub fn root_propagation(spec: &Spec) -> Result<MsFlags, String> {
    match spec.linux().as_ref().and_then(|l| l.rootfs_propagation().as_deref()).unwrap_or("") {
        "" | "rslave" | "slave" => Ok(MsFlags::MS_SLAVE),
        "rprivate" | "private" => Ok(MsFlags::MS_PRIVATE),
        "rshared" | "shared" => Ok(MsFlags::MS_SHARED),
        // Unbindable breaks the rootfs bind.
        other @ ("runbindable" | "unbindable") => {
            Err(format!("linux.rootfsPropagation {other:?} cannot hold a container root: use rslave, rprivate or rshared"))
        }
        other => Err(format!("linux.rootfsPropagation {other:?} is not a propagation mode")),
    }
}

/// A mountinfo field with the kernel's octal escapes (`\040` for a space) decoded.
pub(crate) fn unescape_mountinfo(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b)) {
            out.push(u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 4]).ok()?, 8).ok()?);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The mount that holds `path` in this process's mount table (the deepest mount
/// point above it, the top one where mounts are stacked): its mount point and
/// whether it is shared with a peer group.
pub(crate) fn mount_holding(path: &Path) -> Option<(PathBuf, bool)> {
    mount_holding_in(&fs::read_to_string("/proc/self/mountinfo").ok()?, path)
}

/// [`mount_holding`] in a mountinfo table already read.
fn mount_holding_in(table: &str, path: &Path) -> Option<(PathBuf, bool)> {
    let path = fs::canonicalize(path).ok()?;
    let mut best: Option<(PathBuf, bool)> = None;
    for line in table.lines() {
        let Some((left, _)) = line.split_once(" - ") else { continue };
        let fields: Vec<&str> = left.split_whitespace().collect();
        let Some(point) = fields.get(4).and_then(|p| unescape_mountinfo(p)).map(PathBuf::from) else { continue };
        let deeper = best.as_ref().is_none_or(|(b, _)| point.components().count() >= b.components().count());
        if path.starts_with(&point) && deeper {
            best = Some((point, fields.iter().skip(6).any(|f| f.starts_with("shared:"))));
        }
    }
    best
}

/// A root filesystem stacked from read-only image layers and a writable upper dir.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Overlay {
    /// Layer directories, top first (overlayfs' lowerdir order).
    pub lower: Vec<PathBuf>,
    /// The container's own changes.
    pub upper: PathBuf,
    /// overlayfs' scratch dir, on the same filesystem as `upper`.
    pub work: PathBuf,
}

impl Overlay {
    /// The mount data.
    pub fn options(&self) -> String {
        let lower: Vec<String> = self.lower.iter().map(|p| p.display().to_string()).collect();
        format!("lowerdir={},upperdir={},workdir={}", lower.join(":"), self.upper.display(), self.work.display())
    }
}

/// Cgroup mounts [`prepare`] left for after the process joined its cgroup namespace.
#[derive(Debug, Default)]
pub struct DeferredCgroups {
    mounts: Vec<Mount>,
    /// (directory name, mount data) of each v1 hierarchy on the host.
    hierarchies: Vec<(String, String)>,
    /// Whether the node runs cgroup v2.
    unified: bool,
}

fn v1_hierarchies() -> Result<Vec<(String, String)>, RootfsError> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").map_err(ioerr("reading /proc/self/mountinfo"))?;
    let mut out = Vec::new();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else { continue };
        let mut r = right.split_whitespace();
        if r.next() != Some("cgroup") {
            continue;
        }
        let (Some(point), Some(super_opts)) = (left.split_whitespace().nth(4), r.nth(1)) else { continue };
        let Some(name) = Path::new(point).file_name().and_then(|n| n.to_str()) else { continue };
        let opts: Vec<&str> = super_opts.split(',').filter(|o| *o != "rw" && *o != "ro").collect();
        let mut data = opts.join(",");
        if opts.iter().all(|o| o.starts_with("name=")) {
            data = format!("none,{data}");
        }
        out.push((name.to_string(), data));
    }
    Ok(out)
}

/// Mounts the cgroup filesystems `prepare` deferred, inside the new root.
pub fn mount_cgroups(deferred: &DeferredCgroups) -> Result<(), RootfsError> {
    for m in &deferred.mounts {
        let name = m.destination().display().to_string();
        let dest = secure_join(Path::new("/"), m.destination()).map_err(ioerr(format!("resolving mount destination {name}")))?;
        fs::create_dir_all(&dest).map_err(ioerr(format!("creating mount point {name}")))?;
        mount_cgroup(&dest, parse_options(m.options().as_deref().unwrap_or_default()).flags, deferred)?;
    }
    Ok(())
}

fn mount_one(rootfs: &Path, bundle: &Path, m: &Mount, warn: &dyn Fn(String)) -> Result<(), RootfsError> {
    let dest_name = m.destination().display().to_string();
    let opts = parse_options(m.options().as_deref().unwrap_or_default());
    let typ = match m.typ().as_deref() {
        Some(t) if !t.is_empty() => t.to_string(),
        _ if opts.bind => "bind".to_string(),
        _ => return Err(RootfsError::Spec(dest_name, "no type given and not a bind mount: set \"type\"".into())),
    };
    let dest = secure_join(rootfs, m.destination()).map_err(ioerr(format!("resolving mount destination {dest_name}")))?;
    let data = opts.data.join(",");
    let data = (!data.is_empty()).then_some(data.as_str());
    if opts.bind || typ == "bind" {
        let source = m.source().clone().ok_or_else(|| RootfsError::Spec(dest_name.clone(), "bind mount without a source".into()))?;
        let source = if source.is_absolute() { source } else { bundle.join(source) };
        let md = fs::metadata(&source).map_err(ioerr(format!("bind mount source {} for {dest_name}", source.display())))?;
        make_mount_point(&dest, md.is_dir()).map_err(ioerr(format!("creating mount point {dest_name}")))?;
        let rec = opts.flags & MsFlags::MS_REC;
        mount(Some(&source), &dest, None::<&str>, MsFlags::MS_BIND | rec, None::<&str>)
            .map_err(merr(format!("bind-mounting {} on {dest_name}", source.display())))?;
        let extra = opts.flags & !(MsFlags::MS_BIND | MsFlags::MS_REC);
        if !extra.is_empty() {
            remount_bind(&dest, extra | rec).map_err(merr(format!("applying options to bind mount {dest_name}")))?;
        }
    } else {
        make_mount_point(&dest, true).map_err(ioerr(format!("creating mount point {dest_name}")))?;
        let source = m.source().clone().unwrap_or_else(|| PathBuf::from(&typ));
        match mount(Some(&source), &dest, Some(typ.as_str()), opts.flags, data) {
            Ok(()) => {}
            // sysfs may not be mounted fresh without a new network namespace: bind the host's.
            Err(Errno::EPERM) if typ == "sysfs" => {
                warn(format!("{dest_name}: a new sysfs is not allowed here; bind-mounting the host's /sys read-only"));
                // Not recursive: a read-only remount changes only the top mount, and the
                // host's submounts (debugfs, bpf, efivars...) must not come along writable.
                mount(Some("/sys"), &dest, None::<&str>, MsFlags::MS_BIND, None::<&str>)
                    .map_err(merr(format!("bind-mounting /sys on {dest_name}")))?;
                remount_bind(&dest, MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC)
                    .map_err(merr(format!("making {dest_name} read-only")))?;
            }
            Err(e) => {
                return Err(merr(format!("mounting {typ} on {dest_name} (options {:?})", m.options().clone().unwrap_or_default()))(e))
            }
        }
    }
    for p in &opts.propagation {
        mount(None::<&str>, &dest, None::<&str>, *p, None::<&str>).map_err(merr(format!("setting propagation of {dest_name}")))?;
    }
    Ok(())
}

fn make_mount_point(dest: &Path, dir: bool) -> io::Result<()> {
    if dir {
        return fs::create_dir_all(dest);
    }
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent)?;
    }
    if !dest.exists() {
        fs::File::create(dest)?;
    }
    Ok(())
}

/// Remounts a bind mount with `flags` added to the ones the mount already has: a
/// `bind,ro` of a nosuid/nodev/noexec source must stay nosuid/nodev/noexec (and the
/// kernel refuses to clear flags a source mount has locked anyway).
fn remount_bind(dest: &Path, flags: MsFlags) -> Result<(), Errno> {
    use nix::sys::statvfs::FsFlags as F;
    let st = nix::sys::statvfs::statvfs(dest)?;
    let mut all = flags;
    for (f, m) in [
        (F::ST_NOSUID, MsFlags::MS_NOSUID),
        (F::ST_NODEV, MsFlags::MS_NODEV),
        (F::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (F::ST_RDONLY, MsFlags::MS_RDONLY),
        (F::ST_NOATIME, MsFlags::MS_NOATIME),
        (F::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (F::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if st.flags().contains(f) {
            all |= m;
        }
    }
    mount(None::<&str>, dest, None::<&str>, MsFlags::MS_REMOUNT | MsFlags::MS_BIND | all, None::<&str>)
}

/// A cgroup filesystem for the container: cgroup2 on a unified host; on v1 a tmpfs
/// holding each hierarchy, each showing the container's cgroup namespace as its root.
fn mount_cgroup(dest: &Path, flags: MsFlags, deferred: &DeferredCgroups) -> Result<(), RootfsError> {
    let flags = flags | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let hierarchies = &deferred.hierarchies;
    if deferred.unified {
        return mount(Some("cgroup2"), dest, Some("cgroup2"), flags, None::<&str>)
            .map_err(merr(format!("mounting cgroup2 on {}", dest.display())));
    }
    mount(Some("tmpfs"), dest, Some("tmpfs"), flags & !MsFlags::MS_RDONLY, Some("mode=755"))
        .map_err(merr(format!("mounting a tmpfs for cgroups on {}", dest.display())))?;
    for (name, data) in hierarchies {
        let target = dest.join(name);
        fs::create_dir_all(&target).map_err(ioerr(format!("creating {}", target.display())))?;
        mount(Some("cgroup"), &target, Some("cgroup"), flags, Some(data.as_str()))
            .map_err(merr(format!("mounting cgroup hierarchy {data} on {}", target.display())))?;
    }
    if flags.contains(MsFlags::MS_RDONLY) {
        mount(None::<&str>, dest, None::<&str>, MsFlags::MS_REMOUNT | flags, Some("mode=755"))
            .map_err(merr(format!("making {} read-only", dest.display())))?;
    }
    Ok(())
}

struct DefaultDevice {
    name: &'static str,
    major: u64,
    minor: u64,
}

const DEFAULT_DEVICES: &[DefaultDevice] = &[
    DefaultDevice { name: "null", major: 1, minor: 3 },
    DefaultDevice { name: "zero", major: 1, minor: 5 },
    DefaultDevice { name: "full", major: 1, minor: 7 },
    DefaultDevice { name: "random", major: 1, minor: 8 },
    DefaultDevice { name: "urandom", major: 1, minor: 9 },
    DefaultDevice { name: "tty", major: 5, minor: 0 },
];

fn create_devices(rootfs: &Path, extra: &[LinuxDevice]) -> Result<(), RootfsError> {
    // Still under the host's root here: an image's `dev -> /usr/bin` must not make us
    // create nodes on the host.
    let dev = secure_join(rootfs, Path::new("/dev")).map_err(ioerr("resolving /dev in the rootfs"))?;
    fs::create_dir_all(&dev).map_err(ioerr("creating /dev"))?;
    if !fs::symlink_metadata(&dev).is_ok_and(|m| m.is_dir()) {
        return Err(RootfsError::Spec("/dev".into(), "is not a directory in the rootfs".into()));
    }
    for d in DEFAULT_DEVICES {
        make_device(&dev.join(d.name), SFlag::S_IFCHR, d.major, d.minor, 0o666, None)?;
    }
    for d in extra {
        let kind = match d.typ() {
            LinuxDeviceType::C | LinuxDeviceType::U => SFlag::S_IFCHR,
            LinuxDeviceType::B => SFlag::S_IFBLK,
            LinuxDeviceType::P => SFlag::S_IFIFO,
            LinuxDeviceType::A => {
                return Err(RootfsError::Spec(d.path().display().to_string(), "device type \"a\" is only valid in cgroup rules".into()))
            }
        };
        let path = secure_join(rootfs, d.path()).map_err(ioerr(format!("resolving device {}", d.path().display())))?;
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(ioerr(format!("creating the directory of {}", d.path().display())))?;
        }
        let owner = Some((d.uid().unwrap_or(0), d.gid().unwrap_or(0)));
        make_device(&path, kind, d.major() as u64, d.minor() as u64, d.file_mode().unwrap_or(0o666), owner)?;
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("core", "/proc/kcore"),
        ("ptmx", "pts/ptmx"),
    ] {
        match symlink(target, dev.join(link)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(ioerr(format!("linking /dev/{link}"))(e)),
        }
    }
    Ok(())
}

/// mknod, or a bind mount of the host's node where mknod is not permitted.
fn make_device(path: &Path, kind: SFlag, major: u64, minor: u64, mode: u32, owner: Option<(u32, u32)>) -> Result<(), RootfsError> {
    let what = || format!("creating device {}", path.display());
    let _ = fs::remove_file(path);
    match mknod(path, kind, Mode::from_bits_truncate(mode), makedev(major, minor)) {
        Ok(()) => {
            fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(ioerr(what()))?;
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(ioerr(what()))?;
            }
            Ok(())
        }
        Err(Errno::EPERM) => {
            let dir = if kind == SFlag::S_IFBLK { "block" } else { "char" };
            let host = PathBuf::from(format!("/dev/{dir}/{major}:{minor}"));
            fs::File::create(path).map_err(ioerr(what()))?;
            mount(Some(&host), path, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(merr(what()))
        }
        Err(e) => Err(merr(what())(e)),
    }
}

/// After [`pivot`]: a spec that asks for a shared root gets its new `/` shared too
/// (in a peer group of the container's own), as runc leaves it.
pub fn share_new_root(spec: &Spec) -> Result<(), RootfsError> {
    if root_propagation(spec).is_ok_and(|p| p == MsFlags::MS_SHARED) {
        mount(None::<&str>, "/", None::<&str>, MsFlags::MS_SHARED | MsFlags::MS_REC, None::<&str>)
            .map_err(merr("making the new root shared"))?;
    }
    Ok(())
}

/// Makes `rootfs` the process's root and detaches the old one.
pub fn pivot(rootfs: &Path) -> Result<(), RootfsError> {
    let old_root =
        nix::fcntl::open("/", nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC, Mode::empty())
            .map_err(merr("opening the old root"))?;
    nix::unistd::chdir(rootfs).map_err(merr(format!("entering {}", rootfs.display())))?;
    // Stacking the old root under the new one and detaching it avoids needing a
    // writable directory for it inside a (possibly read-only) rootfs.
    nix::unistd::pivot_root(".", ".").map_err(merr("pivot_root"))?;
    // Only the old root's tree goes slave (so detaching it unmounts nothing on the
    // node): "." is the new root after pivot_root, and a recursive change there would
    // cut the container's Bidirectional volumes off their peers on the node.
    nix::unistd::fchdir(&old_root).map_err(merr("entering the old root"))?;
    drop(old_root);
    mount(None::<&str>, ".", None::<&str>, MsFlags::MS_SLAVE | MsFlags::MS_REC, None::<&str>)
        .map_err(merr("making the old root a slave"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(merr("detaching the old root"))?;
    nix::unistd::chdir("/").map_err(merr("entering the new root"))
}

/// After `pivot_root` and sysctls: read-only paths, masked paths, read-only root.
pub fn finish(spec: &Spec) -> Result<(), RootfsError> {
    let linux = spec.linux().clone().unwrap_or_default();
    for p in linux.readonly_paths().clone().unwrap_or_default() {
        // Not recursive, for the reason given at the sysfs fallback: submounts under a
        // read-only path end up hidden rather than writable.
        match mount(Some(p.as_str()), p.as_str(), None::<&str>, MsFlags::MS_BIND, None::<&str>) {
            Err(Errno::ENOENT) => continue,
            r => r.map_err(merr(format!("bind-mounting read-only path {p}")))?,
        }
        remount_bind(Path::new(&p), MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC)
            .map_err(merr(format!("making {p} read-only")))?;
    }
    for p in linux.masked_paths().clone().unwrap_or_default() {
        let r = match fs::metadata(&p) {
            Err(_) => continue,
            Ok(md) if md.is_dir() => mount(Some("tmpfs"), p.as_str(), Some("tmpfs"), MsFlags::MS_RDONLY, None::<&str>),
            Ok(_) => mount(Some("/dev/null"), p.as_str(), None::<&str>, MsFlags::MS_BIND, None::<&str>),
        };
        r.map_err(merr(format!("masking {p}")))?;
    }
    if spec.root().as_ref().and_then(|r| r.readonly()) == Some(true) {
        remount_bind(Path::new("/"), MsFlags::MS_RDONLY).map_err(merr("making the root filesystem read-only"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("minipod-rootfs-test-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn secure_join_keeps_dotdot_and_symlinks_inside_the_root() {
        let root = tmpdir("join");
        fs::create_dir_all(root.join("usr/lib")).unwrap();
        symlink("/usr/lib", root.join("lib")).unwrap();
        symlink("../../../../etc", root.join("usr/evil")).unwrap();
        assert_eq!(secure_join(&root, Path::new("/lib/x")).unwrap(), root.join("usr/lib/x"));
        assert_eq!(secure_join(&root, Path::new("/../../etc/passwd")).unwrap(), root.join("etc/passwd"));
        assert_eq!(secure_join(&root, Path::new("/usr/evil/shadow")).unwrap(), root.join("etc/shadow"));
        symlink("loop", root.join("loop")).unwrap();
        assert!(secure_join(&root, Path::new("/loop")).is_err());
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn options_split_into_flags_propagation_and_data() {
        let o = parse_options(&["nosuid", "rbind", "ro", "rslave", "mode=755", "size=64k"].map(String::from));
        assert!(o.bind);
        assert_eq!(o.flags, MsFlags::MS_NOSUID | MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_RDONLY);
        assert_eq!(o.propagation, vec![MsFlags::MS_SLAVE | MsFlags::MS_REC]);
        assert_eq!(o.data, vec!["mode=755", "size=64k"]);
        assert!(!parse_options(&["ro", "rw"].map(String::from)).flags.contains(MsFlags::MS_RDONLY));
    }
}
