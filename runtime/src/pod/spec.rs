//! The OCI spec of a pod's container: the default spec, joined to the pod's pinned
//! namespaces, with the CRI default capabilities, the pod's /etc files and the
//! image's process settings under the caller's overrides.

use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;

use super::files::FILES;
use super::record::{ContainerRecord, PodRecord, Propagation};
use super::security::{self, AccountFiles, Credentials, PidNamespace};
use super::ContainerConfig;
use crate::image::ImageConfig;

/// Annotation naming the pod a container belongs to (the sweep reads it).
pub const POD_ANNOTATION: &str = "io.minipod.pod";

/// What the caller asked for the process; unset fields come from the image.
#[derive(Debug, Clone, Default)]
pub struct ProcessOverrides {
    /// Replaces the image's entrypoint and command together.
    pub args: Option<Vec<String>>,
    /// `KEY=VALUE`, added to (or replacing) the image's.
    pub env: Vec<String>,
    pub workdir: Option<String>,
    /// `(uid, gid)`; [`super::Security::user`] wins over it.
    pub user: Option<(u32, u32)>,
    /// The kernel's OOM-killer preference (-1000..1000).
    pub oom_score_adj: Option<i32>,
}

/// A container's OCI spec cannot be made from what it was given.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("no command: give one (the image has no entrypoint or cmd, or there is no image)")]
    NoCommand,
    #[error("the container asks for the pod's PID namespace, and the pod has none to share: make the pod with a shared PID namespace")]
    NoPodPidNamespace,
    #[error("device {}: inside the volume at {}; put it elsewhere", device.display(), volume.display())]
    DeviceInVolume { device: PathBuf, volume: PathBuf },
    #[error("mount destination {} is not an absolute path", .0.display())]
    RelativeMountTarget(PathBuf),
    #[error("mount source {}", path.display())]
    MountSource {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the runtime's default spec has no mounts")]
    NoDefaultMounts,
    #[error(transparent)]
    Security(#[from] security::SecurityError),
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
    #[error("building the container's spec")]
    Json(#[from] serde_json::Error),
}

/// The command a container runs: the caller's, else the image's entrypoint + cmd.
pub fn args(over: &ProcessOverrides, image: Option<&ImageConfig>) -> Result<Vec<String>, SpecError> {
    let args = match (&over.args, image) {
        (Some(a), _) if !a.is_empty() => a.clone(),
        (_, Some(img)) => img.entrypoint.iter().chain(&img.cmd).cloned().collect(),
        _ => vec![],
    };
    if args.is_empty() {
        return Err(SpecError::NoCommand);
    }
    Ok(args)
}

/// Merges `KEY=VALUE` lists: later keys win, order of first appearance kept.
pub fn merge_env<'a>(lists: impl IntoIterator<Item = &'a String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for kv in lists {
        let key = kv.split('=').next().unwrap_or_default();
        if let Some(slot) = out.iter_mut().find(|e| e.split('=').next() == Some(key)) {
            *slot = kv.clone();
        } else {
            out.push(kv.clone());
        }
    }
    out
}

/// What the spec of a container is made from, besides its pod.
pub struct SpecInputs<'a> {
    pub config: &'a ContainerConfig,
    pub image: Option<&'a ImageConfig>,
    /// The root filesystem's layers, top first (users and groups are looked up there).
    pub layers: &'a [PathBuf],
}

/// The spec for container `ctr` of `pod`, whose shared files are under `pod_dir/etc`.
pub fn container_spec(pod: &PodRecord, pod_dir: &Path, ctr: &ContainerRecord, inputs: &SpecInputs) -> Result<Spec, SpecError> {
    let (cfg, image) = (inputs.config, inputs.image);
    let (over, sec) = (&cfg.process, &cfg.security);
    let mut spec = serde_json::to_value(crate::spec::default_spec())?;
    let image_user = image.and_then(|i| i.user.clone()).filter(|u| !u.is_empty());
    let creds = match over.user {
        // The embedding API's explicit uid:gid.
        Some((uid, gid)) if sec.user.is_none() => Credentials { uid, gid, additional_gids: vec![gid] },
        _ => security::credentials(sec, image_user.as_deref(), &AccountFiles::new(inputs.layers))?,
    };
    let default_path = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string();
    let image_env = image.map(|i| i.env.clone()).unwrap_or_default();
    let env = merge_env(
        std::iter::once(&default_path).chain(&image_env).chain(&over.env).chain(std::iter::once(&format!("HOSTNAME={}", pod.hostname))),
    );
    let cwd =
        over.workdir.clone().or_else(|| image.and_then(|i| i.working_dir.clone())).filter(|w| !w.is_empty()).unwrap_or_else(|| "/".into());
    let (caps, ambient) = security::capabilities(sec)?;
    spec["process"] = serde_json::json!({
        "terminal": cfg.tty,
        "user": { "uid": creds.uid, "gid": creds.gid, "additionalGids": creds.additional_gids },
        "args": ctr.args,
        "env": env,
        "cwd": cwd,
        "capabilities": { "bounding": caps, "effective": caps, "permitted": caps, "inheritable": ambient, "ambient": ambient },
        "noNewPrivileges": sec.no_new_privs
    });
    if let Some(adj) = over.oom_score_adj {
        spec["process"]["oomScoreAdj"] = adj.into();
    }
    spec["root"] = serde_json::json!({ "path": "rootfs", "readonly": sec.readonly_rootfs });
    if let Some(obj) = spec.as_object_mut() {
        // The pod's UTS namespace already carries its hostname.
        obj.remove("hostname");
    }
    let ns = |typ: &str| pod_dir.join("ns").join(typ).display().to_string();
    let pid_ns = match (sec.pid, &pod.pid_holder) {
        (Some(PidNamespace::Pod) | None, Some(h)) => Some(format!("/proc/{}/ns/pid", h.pid)),
        (Some(PidNamespace::Pod), None) => return Err(SpecError::NoPodPidNamespace),
        (Some(PidNamespace::Target(pid)), _) => Some(format!("/proc/{pid}/ns/pid")),
        (Some(PidNamespace::Container) | None, None) | (Some(PidNamespace::Container), Some(_)) => Some(String::new()),
        (Some(PidNamespace::Node), _) => None,
    };
    let mut namespaces = vec![serde_json::json!({ "type": "mount" }), serde_json::json!({ "type": "cgroup" })];
    if pod.host_network {
        // The node's network and UTS namespaces: the runtime's node namespace when it
        // has one, else the one of the process that runs the container (none listed).
        if let Some(node) = &pod.node.netns {
            namespaces.push(serde_json::json!({ "type": "network", "path": node.display().to_string() }));
        }
    } else {
        namespaces.push(serde_json::json!({ "type": "network", "path": ns("net") }));
        namespaces.push(serde_json::json!({ "type": "uts", "path": ns("uts") }));
    }
    if !pod.host_ipc {
        namespaces.push(serde_json::json!({ "type": "ipc", "path": ns("ipc") }));
    }
    match pid_ns.as_deref() {
        Some("") => namespaces.insert(0, serde_json::json!({ "type": "pid" })),
        Some(path) => namespaces.insert(0, serde_json::json!({ "type": "pid", "path": path })),
        None => {}
    }
    spec["linux"]["namespaces"] = namespaces.into();
    let sysctls: std::collections::BTreeMap<&String, &String> = pod.sysctls.iter().chain(&sec.sysctls).collect();
    if !sysctls.is_empty() {
        spec["linux"]["sysctl"] = serde_json::to_value(&sysctls)?;
    }
    let mut resources = cfg.resources.to_oci_json();
    if sec.privileged {
        // Every device of the node, usable: what `docker run --privileged` gives.
        spec["linux"]["devices"] = security::host_devices().into();
        resources["devices"] = serde_json::json!([{ "allow": true, "access": "rwm" }]);
        spec["linux"]["maskedPaths"] = serde_json::json!([]);
        spec["linux"]["readonlyPaths"] = serde_json::json!([]);
    } else {
        resources["devices"] = spec["linux"]["resources"]["devices"].clone();
        if let Some(paths) = &sec.masked_paths {
            spec["linux"]["maskedPaths"] = serde_json::to_value(paths)?;
        }
        if let Some(paths) = &sec.readonly_paths {
            spec["linux"]["readonlyPaths"] = serde_json::to_value(paths)?;
        }
    }
    if !sec.devices.is_empty() {
        let (nodes, rules) = security::mapped_devices(&sec.devices)?;
        for n in &nodes {
            // Made after the mounts: inside a volume the node would be made on the node.
            let path = Path::new(n["path"].as_str().unwrap_or_default());
            if let Some(m) = cfg.mounts.iter().find(|m| path.starts_with(&m.container)) {
                return Err(SpecError::DeviceInVolume { device: path.to_path_buf(), volume: m.container.clone() });
            }
        }
        let mut all = spec["linux"]["devices"].as_array().cloned().unwrap_or_default();
        // A privileged container has the node's devices at their own paths already:
        // the mapping asked for wins.
        all.retain(|d| !nodes.iter().any(|n| n["path"] == d["path"]));
        all.extend(nodes);
        spec["linux"]["devices"] = all.into();
        if let Some(list) = resources["devices"].as_array_mut() {
            list.extend(rules);
        }
    }
    spec["linux"]["resources"] = resources;
    if let Some(parent) = &pod.cgroup_parent {
        spec["linux"]["cgroupsPath"] = parent.join(ctr.id.as_str()).display().to_string().into();
    }
    // A privileged container runs unfiltered, as with containerd.
    if !sec.privileged {
        if let Some(profile) = crate::seccomp::profile_json(&sec.seccomp, &caps)? {
            spec["linux"]["seccomp"] = profile;
        }
    }
    let list = spec["mounts"].as_array_mut().ok_or(SpecError::NoDefaultMounts)?;
    if sec.privileged {
        // Writable /sys and cgroup tree, as runc gives a privileged container.
        for m in list.iter_mut() {
            if let Some(opts) = m["options"].as_array_mut() {
                opts.retain(|o| o != "ro");
            }
        }
    }
    for f in FILES {
        list.push(serde_json::json!({
            "destination": format!("/etc/{f}"),
            "type": "bind",
            "source": pod_dir.join("etc").join(f).display().to_string(),
            "options": ["rbind", "rprivate", "rw"]
        }));
    }
    for m in &cfg.mounts {
        if !m.container.is_absolute() {
            return Err(SpecError::RelativeMountTarget(m.container.clone()));
        }
        std::fs::metadata(&m.host).map_err(|source| SpecError::MountSource { path: m.host.clone(), source })?;
        list.push(serde_json::json!({
            "destination": m.container.display().to_string(),
            "type": "bind",
            "source": m.host.display().to_string(),
            "options": ["rbind", m.propagation.option(), if m.readonly { "ro" } else { "rw" }]
        }));
    }
    if cfg.mounts.iter().any(|m| m.propagation == Propagation::Bidirectional) {
        // As containerd: a container's mounts reach the node only from a shared root
        // (the rootfs itself is kept private to the container, see rootfs::prepare).
        spec["linux"]["rootfsPropagation"] = "rshared".into();
    }
    let mut annotations: serde_json::Map<String, serde_json::Value> =
        ctr.annotations.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect();
    annotations.insert(POD_ANNOTATION.into(), pod.id.to_string().into());
    annotations.insert("io.minipod.container-name".into(), ctr.name.as_str().into());
    spec["annotations"] = serde_json::Value::Object(annotations);
    Ok(serde_json::from_value(spec)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callers_override_the_image() {
        let img = ImageConfig { entrypoint: vec!["/bin/entry".into()], cmd: vec!["arg".into()], ..Default::default() };
        assert_eq!(args(&ProcessOverrides::default(), Some(&img)).unwrap(), vec!["/bin/entry", "arg"]);
        let over = ProcessOverrides { args: Some(vec!["sh".into()]), ..Default::default() };
        assert_eq!(args(&over, Some(&img)).unwrap(), vec!["sh"]);
        assert!(args(&ProcessOverrides::default(), None).is_err());
        let env = merge_env(&["A=1".to_string(), "B=2".to_string(), "A=3".to_string()]);
        assert_eq!(env, vec!["A=3", "B=2"]);
    }
}
