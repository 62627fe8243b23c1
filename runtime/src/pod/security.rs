//! What a pod's container may do and what it may use, as the CRI and the embedding API
//! ask for it, and how that lands in the OCI spec the runtime applies: the user and
//! groups (names resolved in the image's `/etc/passwd` and `/etc/group`),
//! capabilities, privileged, read-only root, masked and read-only paths, sysctls, the
//! PID namespace, and cgroup limits.
//!
//! Nothing here is dropped quietly: a setting that cannot be applied is an error that
//! names it ([`SecurityError`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::str::FromStr;

use caps::Capability;

/// Capabilities containerd and CRI-O give a container by default.
pub const CRI_DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// A security setting that cannot be applied as asked.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error("user {name:?} is not in the image's /etc/passwd: add it to the image or give a numeric uid")]
    NoSuchUser { name: String },
    #[error("group {name:?} is not in the image's /etc/group: add it to the image or give a numeric gid")]
    NoSuchGroup { name: String },
    #[error("capability {name:?} is not a Linux capability (known: CAP_CHOWN ... CAP_CHECKPOINT_RESTORE, or ALL)")]
    UnknownCapability { name: String },
    #[error("{what} is not supported: {why}")]
    Unsupported { what: String, why: String },
    #[error("capability {name} is not in this node's bounding set, so no container here can have it: drop it from the request")]
    NotGranted { name: String },
    #[error("device {host}: {why}")]
    Device { host: PathBuf, why: String },
}

/// A device of the node the container gets (the CRI's `devices`, as a kubelet's
/// device plugins ask for them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceMapping {
    /// A device node of the node, or a directory of them (taken whole, as containerd does).
    pub host: PathBuf,
    /// Where it appears in the container; empty: the host path.
    pub container: PathBuf,
    /// Some of `r`, `w`, `m` (mknod); empty: all three.
    pub access: String,
}

/// Who the workload runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunAs {
    Uid(u32),
    /// A name looked up in the image's `/etc/passwd`.
    Name(String),
}

/// Which supplemental groups the workload gets besides the ones asked for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum GroupsPolicy {
    /// Also the groups the image's `/etc/group` lists the user in (Kubernetes' Merge).
    #[default]
    Merge,
    /// Only the primary group and the supplemental groups asked for.
    Strict,
}

/// The system-call filter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Seccomp {
    #[default]
    Unconfined,
    /// The runtime's default profile (Docker's and containerd's allow-list).
    RuntimeDefault,
    /// An OCI seccomp profile (JSON, `linux.seccomp` shape) at this path on the node.
    Profile(PathBuf),
}

/// The PID namespace a container runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PidNamespace {
    /// A new one of its own: the workload is its PID 1.
    Container,
    /// The pod's shared one (the pod must have been made with `share_pid`).
    Pod,
    /// The node's.
    Node,
    /// The one this process (of another container) is in.
    Target(i32),
}

/// The container's security settings. The default is what the CRI gives a container
/// that asks for nothing in particular: the image's user, the CRI default
/// capabilities, no_new_privs, the default masked and read-only paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Security {
    /// Replaces the image's user.
    pub user: Option<RunAs>,
    /// Replaces the user's primary group.
    pub group: Option<u32>,
    pub supplemental_groups: Vec<u32>,
    pub groups_policy: GroupsPolicy,
    /// All capabilities and devices, no masked paths, writable `/sys` and `/proc/sys`.
    pub privileged: bool,
    pub readonly_rootfs: bool,
    /// Capability names (`NET_ADMIN` or `CAP_NET_ADMIN`), or `ALL`.
    pub add_capabilities: Vec<String>,
    pub drop_capabilities: Vec<String>,
    /// Kept across exec also by a non-root user (added to the other sets too).
    pub ambient_capabilities: Vec<String>,
    pub no_new_privs: bool,
    /// `None`: the default list.
    pub masked_paths: Option<Vec<String>>,
    /// `None`: the default list.
    pub readonly_paths: Option<Vec<String>>,
    pub seccomp: Seccomp,
    /// Set in the pod's namespaces (only namespaced sysctls pass).
    pub sysctls: BTreeMap<String, String>,
    /// `None`: the pod's when it shares one, else the container's own.
    pub pid: Option<PidNamespace>,
    /// Node devices made in the container's /dev and allowed by its device cgroup.
    pub devices: Vec<DeviceMapping>,
}

impl Default for Security {
    fn default() -> Self {
        Self {
            user: None,
            group: None,
            supplemental_groups: vec![],
            groups_policy: GroupsPolicy::Merge,
            privileged: false,
            readonly_rootfs: false,
            add_capabilities: vec![],
            drop_capabilities: vec![],
            ambient_capabilities: vec![],
            no_new_privs: true,
            masked_paths: None,
            readonly_paths: None,
            seccomp: Seccomp::Unconfined,
            sysctls: BTreeMap::new(),
            pid: None,
            devices: vec![],
        }
    }
}

/// The process's credentials, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub uid: u32,
    pub gid: u32,
    /// Primary group first, as containerd gives them.
    pub additional_gids: Vec<u32>,
}

/// `/etc/passwd` and `/etc/group` of a root filesystem made of `layers` (top first).
pub struct AccountFiles<'a> {
    layers: &'a [PathBuf],
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

impl<'a> AccountFiles<'a> {
    pub fn new(layers: &'a [PathBuf]) -> Self {
        Self { layers }
    }

    /// The topmost layer's copy of `etc/NAME`, whole; none when no layer has it.
    fn read(&self, name: &str) -> String {
        self.layers.iter().find_map(|l| std::fs::read_to_string(l.join("etc").join(name)).ok()).unwrap_or_default()
    }

    fn passwd(&self) -> Vec<PasswdEntry> {
        self.read("passwd")
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                Some(PasswdEntry { name: f.first()?.to_string(), uid: f.get(2)?.parse().ok()?, gid: f.get(3)?.parse().ok()? })
            })
            .collect()
    }

    fn groups(&self) -> Vec<GroupEntry> {
        self.read("group")
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                Some(GroupEntry {
                    name: f.first()?.to_string(),
                    gid: f.get(2)?.parse().ok()?,
                    members: f.get(3).map(|m| m.split(',').filter(|s| !s.is_empty()).map(String::from).collect()).unwrap_or_default(),
                })
            })
            .collect()
    }
}

/// The workload's uid, gid and groups: the caller's user over the image's (`user`,
/// `uid`, `user:group`, names or numbers), names resolved in the image's account files.
pub fn credentials(sec: &Security, image_user: Option<&str>, files: &AccountFiles) -> Result<Credentials, SecurityError> {
    let passwd = files.passwd();
    let by_name = |name: &str| passwd.iter().find(|p| p.name == name).cloned();
    let by_uid = |uid: u32| passwd.iter().find(|p| p.uid == uid).cloned();
    let (uid, mut gid, name) = match &sec.user {
        Some(RunAs::Uid(uid)) => {
            let entry = by_uid(*uid);
            (*uid, entry.as_ref().map_or(0, |e| e.gid), entry.map(|e| e.name))
        }
        Some(RunAs::Name(n)) => {
            let e = by_name(n).ok_or_else(|| SecurityError::NoSuchUser { name: n.clone() })?;
            (e.uid, e.gid, Some(e.name))
        }
        None => {
            let spec = image_user.unwrap_or_default();
            let (u, g) = spec.split_once(':').unwrap_or((spec, ""));
            let (uid, gid, name) = match u {
                "" => (0, 0, by_uid(0).map(|e| e.name)),
                u => match u.parse::<u32>() {
                    Ok(uid) => {
                        let entry = by_uid(uid);
                        (uid, entry.as_ref().map_or(0, |e| e.gid), entry.map(|e| e.name))
                    }
                    Err(_) => {
                        let e = by_name(u).ok_or_else(|| SecurityError::NoSuchUser { name: u.into() })?;
                        (e.uid, e.gid, Some(e.name))
                    }
                },
            };
            let gid = match g {
                "" => gid,
                g => match g.parse::<u32>() {
                    Ok(gid) => gid,
                    Err(_) => files.groups().iter().find(|e| e.name == g).ok_or_else(|| SecurityError::NoSuchGroup { name: g.into() })?.gid,
                },
            };
            (uid, gid, name)
        }
    };
    if let Some(g) = sec.group {
        gid = g;
    }
    let mut gids = vec![gid];
    if sec.groups_policy == GroupsPolicy::Merge {
        if let Some(name) = &name {
            gids.extend(files.groups().iter().filter(|g| g.members.iter().any(|m| m == name)).map(|g| g.gid));
        }
    }
    gids.extend(&sec.supplemental_groups);
    let mut seen = BTreeSet::new();
    gids.retain(|g| seen.insert(*g));
    Ok(Credentials { uid, gid, additional_gids: gids })
}

fn capability(name: &str) -> Result<Capability, SecurityError> {
    let upper = name.trim().to_ascii_uppercase();
    let full = if upper.starts_with("CAP_") { upper } else { format!("CAP_{upper}") };
    Capability::from_str(&full).map_err(|_| SecurityError::UnknownCapability { name: name.into() })
}

fn is_all(name: &str) -> bool {
    name.eq_ignore_ascii_case("ALL") || name.eq_ignore_ascii_case("CAP_ALL")
}

/// The capability sets: the CRI defaults (all of them when privileged), then `ALL`
/// added or dropped, then the named additions, then the named drops (a drop wins, as
/// in containerd). Returns (bounding = effective = permitted, ambient = inheritable).
pub fn capabilities(sec: &Security) -> Result<(BTreeSet<String>, BTreeSet<String>), SecurityError> {
    // ALL (and privileged) means every capability this node can give, as containerd
    // takes the runtime's own: a host whose root lacks some (CAP_SYS_RESOURCE on some VMs)
    // could not set them.
    let granted: BTreeSet<String> =
        caps::read(None, caps::CapSet::Bounding).unwrap_or_else(|_| caps::all()).into_iter().map(|c| c.to_string()).collect();
    let all = || granted.clone();
    let mut set: BTreeSet<String> = if sec.privileged { all() } else { CRI_DEFAULT_CAPS.iter().map(|c| c.to_string()).collect() };
    if sec.add_capabilities.iter().any(|c| is_all(c)) {
        set = all();
    }
    if sec.drop_capabilities.iter().any(|c| is_all(c)) {
        set.clear();
    }
    for c in sec.add_capabilities.iter().filter(|c| !is_all(c)) {
        let c = capability(c)?.to_string();
        if !granted.contains(&c) {
            return Err(SecurityError::NotGranted { name: c });
        }
        set.insert(c);
    }
    for c in sec.drop_capabilities.iter().filter(|c| !is_all(c)) {
        set.remove(&capability(c)?.to_string());
    }
    let mut ambient = BTreeSet::new();
    for c in &sec.ambient_capabilities {
        let c = capability(c)?.to_string();
        set.insert(c.clone());
        ambient.insert(c);
    }
    Ok((set, ambient))
}

/// The OCI `linux.devices` entries and device cgroup rules of `mappings`.
pub fn mapped_devices(mappings: &[DeviceMapping]) -> Result<(Vec<serde_json::Value>, Vec<serde_json::Value>), SecurityError> {
    let (mut nodes, mut rules) = (Vec::new(), Vec::new());
    for m in mappings {
        let err = |why: String| SecurityError::Device { host: m.host.clone(), why };
        let access = if m.access.is_empty() { "rwm" } else { m.access.as_str() };
        if !access.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
            return Err(err(format!("permissions {access:?}: use some of r, w and m")));
        }
        let container = if m.container.as_os_str().is_empty() { &m.host } else { &m.container };
        if !m.host.is_absolute() || !container.is_absolute() {
            return Err(err(format!("host and container paths must be absolute (container path {})", container.display())));
        }
        let md = std::fs::metadata(&m.host).map_err(|e| err(format!("not found on the node ({e})")))?;
        let found = if md.is_dir() {
            let mut found = Vec::new();
            walk_devices(&m.host, &mut found);
            found.into_iter().filter_map(|(path, node)| Some((container.join(path.strip_prefix(&m.host).ok()?), node))).collect()
        } else {
            let node = device_node(&m.host, &md).ok_or_else(|| err("is not a character or block device".into()))?;
            vec![(container.clone(), node)]
        };
        for (path, mut node) in found {
            rules.push(serde_json::json!({ "allow": true, "type": node["type"], "major": node["major"], "minor": node["minor"], "access": access }));
            node["path"] = path.display().to_string().into();
            nodes.push(node);
        }
    }
    Ok((nodes, rules))
}

/// A device node as an OCI `linux.devices` entry (its path still to be set).
fn device_node(path: &std::path::Path, md: &std::fs::Metadata) -> Option<serde_json::Value> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let typ = if md.file_type().is_char_device() {
        "c"
    } else if md.file_type().is_block_device() {
        "b"
    } else {
        return None;
    };
    let rdev = md.rdev();
    Some(serde_json::json!({
        "path": path.display().to_string(),
        "type": typ,
        "major": libc::major(rdev),
        "minor": libc::minor(rdev),
        "fileMode": md.mode() & 0o7777,
        "uid": md.uid(),
        "gid": md.gid(),
    }))
}

/// Every device node under `dir` (not following symlinks), with its entry.
fn walk_devices(dir: &std::path::Path, out: &mut Vec<(PathBuf, serde_json::Value)>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let path = e.path();
        let Ok(md) = std::fs::symlink_metadata(&path) else { continue };
        if md.is_dir() {
            walk_devices(&path, out);
        } else if let Some(node) = device_node(&path, &md) {
            out.push((path, node));
        }
    }
}

/// Every device node under the node's `/dev` (pseudo-terminals and shared memory
/// aside), for a privileged container, as OCI `linux.devices` entries.
pub fn host_devices() -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    let mut dirs = vec![PathBuf::from("/dev")];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            let path = e.path();
            let Ok(md) = std::fs::symlink_metadata(&path) else { continue };
            if md.is_dir() {
                if !matches!(path.to_str(), Some("/dev/pts" | "/dev/shm" | "/dev/mqueue" | "/dev/fd")) {
                    dirs.push(path);
                }
                continue;
            }
            // /dev/console and the pty master belong to the container's own /dev.
            if matches!(path.to_str(), Some("/dev/console" | "/dev/ptmx")) {
                continue;
            }
            out.extend(device_node(&path, &md));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rootfs(passwd: &str, group: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("minipod-sec-{}-{}", std::process::id(), crate::time::Timestamp::now().unix_nanos()));
        std::fs::create_dir_all(dir.join("etc")).unwrap();
        std::fs::write(dir.join("etc/passwd"), passwd).unwrap();
        std::fs::write(dir.join("etc/group"), group).unwrap();
        dir
    }

    #[test]
    fn users_and_groups_resolve_in_the_image() {
        let dir = rootfs("root:x:0:0::/root:/bin/sh\nnginx:x:101:102::/:/bin/false\n", "root:x:0:\nnginx:x:102:\nweb:x:500:nginx,other\n");
        let layers = vec![dir.clone()];
        let files = AccountFiles::new(&layers);
        let plain = Security::default();
        assert_eq!(credentials(&plain, None, &files).unwrap(), Credentials { uid: 0, gid: 0, additional_gids: vec![0] });
        assert_eq!(
            credentials(&plain, Some("nginx"), &files).unwrap(),
            Credentials { uid: 101, gid: 102, additional_gids: vec![102, 500] }
        );
        assert_eq!(credentials(&plain, Some("nginx:web"), &files).unwrap().gid, 500);
        assert_eq!(credentials(&plain, Some("7:8"), &files).unwrap(), Credentials { uid: 7, gid: 8, additional_gids: vec![8] });
        assert!(matches!(credentials(&plain, Some("nobody"), &files), Err(SecurityError::NoSuchUser { .. })));
        assert!(matches!(credentials(&plain, Some("0:none"), &files), Err(SecurityError::NoSuchGroup { .. })));

        let by_name = Security { user: Some(RunAs::Name("nginx".into())), supplemental_groups: vec![9, 102], ..Default::default() };
        assert_eq!(credentials(&by_name, Some("0"), &files).unwrap().additional_gids, vec![102, 500, 9]);
        let strict = Security { groups_policy: GroupsPolicy::Strict, ..by_name.clone() };
        assert_eq!(credentials(&strict, None, &files).unwrap().additional_gids, vec![102, 9]);
        let uid = Security { user: Some(RunAs::Uid(1000)), group: Some(3000), ..Default::default() };
        assert_eq!(credentials(&uid, Some("nginx"), &files).unwrap(), Credentials { uid: 1000, gid: 3000, additional_gids: vec![3000] });
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn capabilities_add_and_drop_with_all() {
        let sec = |add: &[&str], drop: &[&str]| Security {
            add_capabilities: add.iter().map(|s| s.to_string()).collect(),
            drop_capabilities: drop.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let (set, _) = capabilities(&sec(&["net_admin"], &["CAP_CHOWN"])).unwrap();
        assert!(set.contains("CAP_NET_ADMIN") && !set.contains("CAP_CHOWN") && set.contains("CAP_KILL"));
        let (set, _) = capabilities(&sec(&["NET_BIND_SERVICE"], &["ALL"])).unwrap();
        assert_eq!(set.into_iter().collect::<Vec<_>>(), vec!["CAP_NET_BIND_SERVICE"]);
        // ALL is this node's bounding set, which a CI container or an older kernel
        // keeps smaller than every capability the crate knows.
        let mut bounding: BTreeSet<String> = caps::read(None, caps::CapSet::Bounding).unwrap().into_iter().map(|c| c.to_string()).collect();
        let (set, _) = capabilities(&sec(&["ALL"], &["SYS_ADMIN"])).unwrap();
        bounding.remove("CAP_SYS_ADMIN");
        assert_eq!(set, bounding);
        assert!(matches!(capabilities(&sec(&["FLY"], &[])), Err(SecurityError::UnknownCapability { .. })));
        let privileged = Security { privileged: true, ..Default::default() };
        bounding.insert("CAP_SYS_ADMIN".into());
        assert_eq!(capabilities(&privileged).unwrap().0, bounding);
    }
}
