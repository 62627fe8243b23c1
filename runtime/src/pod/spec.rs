//! The OCI spec of a pod's container: the default spec, joined to the pod's pinned
//! namespaces, with the CRI default capabilities, the pod's /etc files and the
//! image's process settings under the caller's overrides.

use std::path::Path;

use oci_spec::runtime::Spec;

use super::files::FILES;
use super::record::{BindMount, ContainerRecord, PodRecord};
use crate::image::ImageConfig;

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
    /// `(uid, gid)`.
    pub user: Option<(u32, u32)>,
}

/// The command a container runs: the caller's, else the image's entrypoint + cmd.
pub fn args(over: &ProcessOverrides, image: Option<&ImageConfig>) -> Result<Vec<String>, String> {
    let args = match (&over.args, image) {
        (Some(a), _) if !a.is_empty() => a.clone(),
        (_, Some(img)) => img.entrypoint.iter().chain(&img.cmd).cloned().collect(),
        _ => vec![],
    };
    if args.is_empty() {
        return Err("no command: give one (the image has no entrypoint or cmd, or there is no image)".into());
    }
    Ok(args)
}

fn user(over: &ProcessOverrides, image: Option<&ImageConfig>) -> Result<(u32, u32), String> {
    if let Some(u) = over.user {
        return Ok(u);
    }
    let Some(spec) = image.and_then(|i| i.user.as_deref()).filter(|u| !u.is_empty()) else { return Ok((0, 0)) };
    let (u, g) = spec.split_once(':').unwrap_or((spec, ""));
    let uid = u
        .parse::<u32>()
        .map_err(|_| format!("the image's user {spec:?} is a name: only numeric users are supported yet; give a uid:gid explicitly"))?;
    let gid = if g.is_empty() { uid } else { g.parse::<u32>().map_err(|_| format!("the image's group in {spec:?} is not numeric"))? };
    Ok((uid, gid))
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

/// The spec for container `ctr` of `pod`, whose shared files are under `pod_dir/etc`.
pub fn container_spec(
    pod: &PodRecord,
    pod_dir: &Path,
    ctr: &ContainerRecord,
    over: &ProcessOverrides,
    image: Option<&ImageConfig>,
    mounts: &[BindMount],
) -> Result<Spec, String> {
    let mut spec = serde_json::to_value(crate::spec::default_spec()).map_err(|e| e.to_string())?;
    let (uid, gid) = user(over, image)?;
    let default_path = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string();
    let image_env = image.map(|i| i.env.clone()).unwrap_or_default();
    let env = merge_env(
        std::iter::once(&default_path).chain(&image_env).chain(&over.env).chain(std::iter::once(&format!("HOSTNAME={}", pod.hostname))),
    );
    let cwd =
        over.workdir.clone().or_else(|| image.and_then(|i| i.working_dir.clone())).filter(|w| !w.is_empty()).unwrap_or_else(|| "/".into());
    spec["process"] = serde_json::json!({
        "terminal": false,
        "user": { "uid": uid, "gid": gid },
        "args": ctr.args,
        "env": env,
        "cwd": cwd,
        "capabilities": { "bounding": CRI_DEFAULT_CAPS, "effective": CRI_DEFAULT_CAPS, "permitted": CRI_DEFAULT_CAPS },
        "noNewPrivileges": true
    });
    spec["root"] = serde_json::json!({ "path": "rootfs", "readonly": false });
    if let Some(obj) = spec.as_object_mut() {
        // The pod's UTS namespace already carries its hostname.
        obj.remove("hostname");
    }
    let ns = |typ: &str| pod_dir.join("ns").join(typ).display().to_string();
    let pid = match &pod.pid_holder {
        Some(h) => serde_json::json!({ "type": "pid", "path": format!("/proc/{}/ns/pid", h.pid) }),
        None => serde_json::json!({ "type": "pid" }),
    };
    spec["linux"]["namespaces"] = serde_json::json!([
        pid,
        { "type": "mount" },
        { "type": "cgroup" },
        { "type": "network", "path": ns("net") },
        { "type": "ipc", "path": ns("ipc") },
        { "type": "uts", "path": ns("uts") },
    ]);
    let list = spec["mounts"].as_array_mut().ok_or("the default spec has no mounts")?;
    for f in FILES {
        list.push(serde_json::json!({
            "destination": format!("/etc/{f}"),
            "type": "bind",
            "source": pod_dir.join("etc").join(f).display().to_string(),
            "options": ["rbind", "rprivate", "rw"]
        }));
    }
    for m in mounts {
        if !m.container.is_absolute() {
            return Err(format!("mount destination {} is not an absolute path", m.container.display()));
        }
        std::fs::metadata(&m.host).map_err(|e| format!("mount source {}: {e}", m.host.display()))?;
        list.push(serde_json::json!({
            "destination": m.container.display().to_string(),
            "type": "bind",
            "source": m.host.display().to_string(),
            "options": ["rbind", "rprivate", if m.readonly { "ro" } else { "rw" }]
        }));
    }
    let mut annotations: serde_json::Map<String, serde_json::Value> =
        ctr.annotations.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect();
    annotations.insert(POD_ANNOTATION.into(), pod.id.to_string().into());
    annotations.insert("io.minipod.container-name".into(), ctr.name.clone().into());
    spec["annotations"] = serde_json::Value::Object(annotations);
    serde_json::from_value(spec).map_err(|e| format!("building the container's spec: {e}"))
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

    #[test]
    fn numeric_image_users_only() {
        let img = |u: &str| ImageConfig { user: Some(u.into()), ..Default::default() };
        assert_eq!(user(&ProcessOverrides::default(), Some(&img("1000"))).unwrap(), (1000, 1000));
        assert_eq!(user(&ProcessOverrides::default(), Some(&img("1:2"))).unwrap(), (1, 2));
        assert!(user(&ProcessOverrides::default(), Some(&img("nginx"))).is_err());
    }
}
