//! Loading and checking an OCI bundle (`config.json` + root filesystem) before anything
//! is created, so that a bad bundle fails with nothing to roll back.

use std::io;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Spec};

/// What is wrong with a bundle.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("bundle {0} does not exist")]
    Missing(PathBuf),
    #[error("bundle {0} has no config.json")]
    NoConfig(PathBuf),
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not a valid OCI runtime spec: {message} (line {line}, column {column})")]
    Malformed { path: PathBuf, message: String, line: usize, column: usize },
    #[error("{path}: {what}")]
    Invalid { path: PathBuf, what: String },
    #[error("rootfs {rootfs} (root.path in {config}) does not exist: unpack a root filesystem there or fix root.path")]
    NoRootfs { rootfs: PathBuf, config: PathBuf },
}

/// A bundle whose spec parsed and passed the checks below.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// Absolute bundle directory.
    pub dir: PathBuf,
    /// The parsed spec.
    pub spec: Spec,
    /// Absolute root filesystem path.
    pub rootfs: PathBuf,
}

impl Bundle {
    /// Reads `dir/config.json` and checks what minipod needs of it.
    pub fn load(dir: &Path) -> Result<Self, BundleError> {
        let dir = std::path::absolute(dir).map_err(|source| BundleError::Read { path: dir.to_path_buf(), source })?;
        if !dir.is_dir() {
            return Err(BundleError::Missing(dir));
        }
        let config = dir.join("config.json");
        let data = match std::fs::read_to_string(&config) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(BundleError::NoConfig(dir)),
            Err(source) => return Err(BundleError::Read { path: config, source }),
        };
        let spec: Spec = serde_json::from_str(&data).map_err(|e| BundleError::Malformed {
            path: config.clone(),
            // serde_json appends " at line L column C"; we print those ourselves.
            message: e.to_string().split(" at line ").next().unwrap_or_default().to_string(),
            line: e.line(),
            column: e.column(),
        })?;
        let rootfs = check_spec(&spec).map_err(|what| BundleError::Invalid { path: config.clone(), what })?;
        let rootfs = if rootfs.is_absolute() { rootfs } else { dir.join(rootfs) };
        if !rootfs.is_dir() {
            return Err(BundleError::NoRootfs { rootfs, config });
        }
        Ok(Self { dir, spec, rootfs })
    }
}

/// Whether the kernel has AppArmor turned on.
pub fn apparmor_enabled() -> bool {
    std::fs::read_to_string("/sys/module/apparmor/parameters/enabled").is_ok_and(|v| v.trim() == "Y")
}

/// Checks the parts of a spec that minipod relies on; returns `root.path`.
pub fn check_spec(spec: &Spec) -> Result<PathBuf, String> {
    let root = spec.root().as_ref().ok_or("no `root` section: set root.path to the rootfs directory")?;
    let process = spec.process().as_ref().ok_or("no `process` section: minipod needs process.args")?;
    if process.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err("process.args is empty: give the command to run, e.g. [\"sh\"]".into());
    }
    let linux = spec.linux().as_ref().ok_or("no `linux` section: minipod runs Linux containers only")?;
    // Confinement the spec asks for and this kernel cannot give is refused, never
    // dropped: the container would run with less protection than its author chose.
    if process.apparmor_profile().as_ref().is_some_and(|p| !p.is_empty()) {
        return Err(if apparmor_enabled() {
            "process.apparmorProfile: minipod does not load AppArmor profiles yet: remove it".into()
        } else {
            "process.apparmorProfile: this kernel has no AppArmor: remove the profile".into()
        });
    }
    if process.selinux_label().as_ref().is_some_and(|l| !l.is_empty()) || linux.mount_label().as_ref().is_some_and(|l| !l.is_empty()) {
        return Err("process.selinuxLabel/linux.mountLabel: minipod does not apply SELinux labels: remove them".into());
    }
    let namespaces = linux.namespaces().clone().unwrap_or_default();
    let has = |t: LinuxNamespaceType| namespaces.iter().any(|n| n.typ() == t);
    if namespaces.iter().any(|n| n.typ() == LinuxNamespaceType::Mount && n.path().is_some()) {
        return Err("joining an existing mount namespace is not supported: its root would be pivoted (use a new mount namespace)".into());
    }
    for ns in &namespaces {
        match ns.typ() {
            LinuxNamespaceType::User | LinuxNamespaceType::Time => {
                return Err(format!("the {} namespace is not supported yet: remove it from linux.namespaces", ns.typ()))
            }
            _ => {}
        }
        if let Some(path) = ns.path() {
            if !path.exists() {
                return Err(format!("linux.namespaces: {} namespace path {} does not exist", ns.typ(), path.display()));
            }
        }
        if namespaces.iter().filter(|n| n.typ() == ns.typ()).count() > 1 {
            return Err(format!("linux.namespaces lists the {} namespace twice", ns.typ()));
        }
    }
    crate::rootfs::root_propagation(spec)?;
    if !has(LinuxNamespaceType::Mount) {
        return Err("linux.namespaces has no mount namespace: minipod needs one to set up the rootfs".into());
    }
    if spec.hostname().as_ref().is_some_and(|h| !h.is_empty()) && !has(LinuxNamespaceType::Uts) {
        return Err("hostname is set but there is no uts namespace: add one or drop the hostname".into());
    }
    // A namespace is the container's own when it is new, or joined and not the host's
    // (a pod's pinned one), as runc decides.
    let own = |t: LinuxNamespaceType, proc_name: &str| {
        namespaces.iter().filter(|n| n.typ() == t).any(|n| match n.path() {
            None => true,
            Some(p) => {
                use std::os::unix::fs::MetadataExt;
                let id = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
                id(p).is_some() && id(p) != id(&Path::new("/proc/self/ns").join(proc_name))
            }
        })
    };
    let (own_net, own_ipc, own_uts) =
        (own(LinuxNamespaceType::Network, "net"), own(LinuxNamespaceType::Ipc, "ipc"), own(LinuxNamespaceType::Uts, "uts"));
    for (key, _) in linux.sysctl().clone().unwrap_or_default() {
        if key.is_empty() || key.contains("..") || key.contains('\0') || key.starts_with('/') || key.contains('/') {
            return Err(format!("linux.sysctl key {key:?} is not a sysctl name"));
        }
        check_sysctl(&key, own_net, own_ipc, own_uts)?;
    }
    for mount in spec.mounts().clone().unwrap_or_default() {
        if !mount.destination().is_absolute() {
            return Err(format!("mount destination {} is not absolute", mount.destination().display()));
        }
    }
    if let Some(r) = linux.resources() {
        crate::cgroups::check_resources(r).map_err(|e| e.to_string())?;
    }
    if let Some(profile) = linux.seccomp() {
        crate::seccomp::check(profile).map_err(|e| crate::error_chain(&e))?;
    }
    if let Some(cg) = linux.cgroups_path() {
        if cg.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
            return Err(format!("linux.cgroupsPath {} must not contain `..`", cg.display()));
        }
    }
    Ok(root.path().clone())
}

/// Only sysctls that belong to one of the container's own namespaces may be set (as
/// runc allows): anything else would change the whole host, e.g. kernel.core_pattern.
fn check_sysctl(key: &str, own_net: bool, own_ipc: bool, own_uts: bool) -> Result<(), String> {
    const IPC: &[&str] = &[
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    ];
    let allowed = if IPC.contains(&key) || key.starts_with("fs.mqueue.") {
        own_ipc
    } else if key.starts_with("net.") {
        own_net
    } else if key == "kernel.hostname" || key == "kernel.domainname" {
        own_uts
    } else {
        return Err(format!("linux.sysctl {key} is not namespaced: setting it would change the whole host (allowed: net.* with a new network namespace, kernel.msg*/sem/shm*, fs.mqueue.*)"));
    };
    if allowed {
        Ok(())
    } else {
        Err(format!("linux.sysctl {key} needs a namespace of the container's own for it (a new one, or a pod's), not the host's"))
    }
}

#[cfg(test)]
mod tests {
    use super::check_sysctl;

    #[test]
    fn only_namespaced_sysctls_pass() {
        assert!(check_sysctl("net.ipv4.ip_forward", true, true, true).is_ok());
        assert!(check_sysctl("net.ipv4.ip_forward", false, true, true).is_err(), "host netns");
        assert!(check_sysctl("kernel.shmmax", false, true, false).is_ok());
        assert!(check_sysctl("kernel.core_pattern", true, true, true).is_err());
        assert!(check_sysctl("vm.overcommit_memory", true, true, true).is_err());
        assert!(check_sysctl("fs.mqueue.msg_max", true, false, true).is_err());
    }
}
