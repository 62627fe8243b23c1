//! The CRI's security contexts, namespace options and resources, mapped onto minipod's
//! [`Security`] and [`Resources`]. Every field is either carried over or refused with
//! an error that names it; none is dropped.

// The deprecated profile-path fields are still what older kubelets send: read, not dropped.
#![allow(deprecated)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use k8s_cri::v1 as cri;
use minipod_runtime::pod::{DeviceMapping, GroupsPolicy, PidNamespace, Resources, RunAs, Seccomp, Security};
use tonic::Status;

/// Annotation marking a sandbox whose security context is privileged.
pub const PRIVILEGED: &str = "io.minipod.cri.privileged";

fn invalid(msg: impl Into<String>) -> Status {
    Status::invalid_argument(msg.into())
}

fn precondition(msg: impl Into<String>) -> Status {
    Status::failed_precondition(msg.into())
}

/// What a sandbox's Linux config asks of the pod.
#[derive(Debug, Default)]
pub struct SandboxOptions {
    pub share_pid: bool,
    pub host_ipc: bool,
    pub host_network: bool,
    pub privileged: bool,
    pub sysctls: BTreeMap<String, String>,
    pub cgroup_parent: Option<PathBuf>,
}

fn is_mode(v: i32, m: cri::NamespaceMode) -> bool {
    v == m as i32
}

fn check_userns(ns: &cri::NamespaceOption, what: &str) -> Result<(), Status> {
    match &ns.userns_options {
        Some(u) if !is_mode(u.mode, cri::NamespaceMode::Node) || !u.uids.is_empty() || !u.gids.is_empty() => Err(precondition(format!(
            "{what}.namespace_options.userns_options: user namespaces are not supported by minipod yet (use mode NODE)"
        ))),
        _ => Ok(()),
    }
}

fn check_selinux(opts: &Option<cri::SeLinuxOption>, what: &str) -> Result<(), Status> {
    match opts {
        Some(o) if !(o.user.is_empty() && o.role.is_empty() && o.r#type.is_empty() && o.level.is_empty()) => {
            Err(precondition(format!("{what}.selinux_options: SELinux is not enabled on this node, so the labels cannot be applied")))
        }
        _ => Ok(()),
    }
}

fn check_apparmor(profile: &Option<cri::SecurityProfile>, deprecated: &str, what: &str) -> Result<(), Status> {
    let localhost = match profile {
        Some(p) if p.profile_type == cri::security_profile::ProfileType::Localhost as i32 => Some(p.localhost_ref.clone()),
        Some(_) => None,
        None => deprecated.strip_prefix("localhost/").map(String::from),
    };
    match localhost {
        // Unconfined, or the runtime default: with no AppArmor in the kernel, running
        // unconfined is what the runtime default is (as containerd does).
        None => Ok(()),
        Some(name) if !minipod_runtime::bundle::apparmor_enabled() => Err(precondition(format!(
            "{what}.apparmor: profile {name:?} cannot be applied: this node's kernel has no AppArmor (use Unconfined or RuntimeDefault)"
        ))),
        Some(name) => Err(precondition(format!(
            "{what}.apparmor: profile {name:?}: minipod does not apply AppArmor profiles yet (use Unconfined or RuntimeDefault)"
        ))),
    }
}

fn seccomp(profile: &Option<cri::SecurityProfile>, deprecated: &str, what: &str) -> Result<Seccomp, Status> {
    use cri::security_profile::ProfileType;
    let localhost = |path: &str| {
        let p = PathBuf::from(path);
        if !p.is_absolute() {
            return Err(invalid(format!("{what}.seccomp: localhost profile {path:?} must be an absolute path on the node")));
        }
        Ok(Seccomp::Profile(p))
    };
    match profile {
        Some(p) if p.profile_type == ProfileType::RuntimeDefault as i32 => Ok(Seccomp::RuntimeDefault),
        Some(p) if p.profile_type == ProfileType::Unconfined as i32 => Ok(Seccomp::Unconfined),
        Some(p) if p.profile_type == ProfileType::Localhost as i32 => localhost(&p.localhost_ref),
        Some(p) => Err(invalid(format!("{what}.seccomp: profile type {} is unknown", p.profile_type))),
        None => match deprecated {
            "" | "unconfined" => Ok(Seccomp::Unconfined),
            "runtime/default" | "docker/default" => Ok(Seccomp::RuntimeDefault),
            other => match other.strip_prefix("localhost/") {
                Some(path) => localhost(path),
                None => Err(invalid(format!("{what}.seccomp_profile_path {other:?} is not runtime/default, unconfined or localhost/PATH"))),
            },
        },
    }
}

/// The pod-level options of a sandbox config.
pub fn sandbox(cfg: &cri::PodSandboxConfig) -> Result<SandboxOptions, Status> {
    let Some(linux) = &cfg.linux else { return Ok(SandboxOptions::default()) };
    let mut out = SandboxOptions { sysctls: linux.sysctls.iter().map(|(k, v)| (k.clone(), v.clone())).collect(), ..Default::default() };
    if !linux.cgroup_parent.is_empty() {
        if linux.cgroup_parent.ends_with(".slice") {
            return Err(precondition(format!(
                "linux.cgroup_parent {:?} is a systemd slice: minipod uses the cgroupfs driver (set the kubelet's cgroupDriver to cgroupfs)",
                linux.cgroup_parent
            )));
        }
        out.cgroup_parent = Some(PathBuf::from(&linux.cgroup_parent));
    }
    if let Some(sc) = &linux.security_context {
        const WHAT: &str = "linux.security_context";
        out.privileged = sc.privileged;
        check_selinux(&sc.selinux_options, WHAT)?;
        if let Some(ns) = &sc.namespace_options {
            check_userns(ns, WHAT)?;
            out.host_network = match ns.network {
                x if is_mode(x, cri::NamespaceMode::Node) => true,
                x if is_mode(x, cri::NamespaceMode::Pod) => false,
                _ => return Err(invalid(format!("{WHAT}.namespace_options.network must be POD or NODE"))),
            };
            out.host_ipc = match ns.ipc {
                x if is_mode(x, cri::NamespaceMode::Node) => true,
                x if is_mode(x, cri::NamespaceMode::Pod) => false,
                _ => return Err(invalid(format!("{WHAT}.namespace_options.ipc must be POD or NODE"))),
            };
            out.share_pid = is_mode(ns.pid, cri::NamespaceMode::Pod);
        }
        // The sandbox's own user, groups, read-only root and seccomp/AppArmor profile
        // are for an infra container; minipod's pods have none (the PID namespace
        // holder, where there is one, runs as root and execs nothing).
        check_apparmor(&sc.apparmor, "", WHAT)?;
        seccomp(&sc.seccomp, &sc.seccomp_profile_path, WHAT)?;
    }
    for key in out.sysctls.keys() {
        let ipc = key.starts_with("kernel.shm") || key.starts_with("kernel.msg") || key == "kernel.sem" || key.starts_with("fs.mqueue.");
        if out.host_ipc && ipc {
            return Err(invalid(format!("linux.sysctls {key}: the pod uses the node's IPC namespace, so it would change the node")));
        }
    }
    Ok(out)
}

/// The CRI's resources as minipod's limits, and the OOM score adjustment.
pub fn resources(r: &cri::LinuxContainerResources) -> Result<(Resources, Option<i32>), Status> {
    let mut resources = Resources::default();
    let positive = |v: i64| (v > 0).then_some(v);
    resources.cpu_shares = positive(r.cpu_shares).map(|v| v as u64);
    resources.cpu_quota = positive(r.cpu_quota);
    resources.cpu_period = positive(r.cpu_period).map(|v| v as u64);
    resources.memory_limit = positive(r.memory_limit_in_bytes);
    resources.memory_swap = match r.memory_swap_limit_in_bytes {
        0 => None,
        v if v < -1 => return Err(invalid(format!("linux.resources.memory_swap_limit_in_bytes {v} is not a limit"))),
        v => Some(v),
    };
    resources.cpuset_cpus = (!r.cpuset_cpus.is_empty()).then(|| r.cpuset_cpus.clone());
    resources.cpuset_mems = (!r.cpuset_mems.is_empty()).then(|| r.cpuset_mems.clone());
    for h in &r.hugepage_limits {
        if h.page_size.is_empty() || !h.page_size.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(invalid(format!("linux.resources.hugepage_limits: page size {:?} is not like 2MB or 1GB", h.page_size)));
        }
        resources.hugepages.insert(h.page_size.clone(), h.limit);
    }
    resources.unified = r.unified.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    if !(-1000..=1000).contains(&r.oom_score_adj) {
        return Err(invalid(format!("linux.resources.oom_score_adj {} is outside -1000..1000", r.oom_score_adj)));
    }
    Ok((resources, Some(r.oom_score_adj as i32)))
}

/// The container whose PID namespace a container asks to join (namespace mode TARGET).
pub fn target_id(cfg: &cri::ContainerConfig) -> Option<&str> {
    let ns = cfg.linux.as_ref()?.security_context.as_ref()?.namespace_options.as_ref()?;
    (is_mode(ns.pid, cri::NamespaceMode::Target) && !ns.target_id.is_empty()).then_some(ns.target_id.as_str())
}

/// The container's security and resources. `pod_privileged` is the sandbox's
/// setting; `target_pid` the process of the [`target_id`] container, if it runs.
pub fn container(
    cfg: &cri::ContainerConfig,
    pod_privileged: bool,
    pod_host_network: bool,
    target_pid: Option<i32>,
) -> Result<(Security, Resources, Option<i32>), Status> {
    if !cfg.cdi_devices.is_empty() {
        return Err(precondition("CDI_devices: CDI devices are not supported by minipod"));
    }
    let devices = cfg
        .devices
        .iter()
        .map(|d| DeviceMapping {
            host: d.host_path.clone().into(),
            container: d.container_path.clone().into(),
            access: d.permissions.clone(),
        })
        .collect();
    let mut sec = Security { no_new_privs: false, devices, ..Default::default() };
    let mut resources = Resources::default();
    let mut oom = None;
    let Some(linux) = &cfg.linux else { return Ok((sec, resources, oom)) };
    if let Some(r) = &linux.resources {
        (resources, oom) = self::resources(r)?;
    }
    let Some(sc) = &linux.security_context else { return Ok((sec, resources, oom)) };
    const WHAT: &str = "linux.security_context";
    if sc.privileged && !pod_privileged {
        return Err(invalid(format!(
            "{WHAT}.privileged: a privileged container needs a privileged sandbox (set it in the pod's security context)"
        )));
    }
    sec.privileged = sc.privileged;
    if let Some(c) = &sc.capabilities {
        sec.add_capabilities = c.add_capabilities.clone();
        sec.drop_capabilities = c.drop_capabilities.clone();
        sec.ambient_capabilities = c.add_ambient_capabilities.clone();
    }
    check_selinux(&sc.selinux_options, WHAT)?;
    let uid = |v: i64, what: &str| u32::try_from(v).map_err(|_| invalid(format!("{WHAT}.{what} {v} is not a valid id")));
    sec.user = match (&sc.run_as_user, sc.run_as_username.as_str()) {
        (Some(u), _) => Some(RunAs::Uid(uid(u.value, "run_as_user")?)),
        (None, "") => None,
        (None, name) => Some(RunAs::Name(name.to_string())),
    };
    if let Some(g) = &sc.run_as_group {
        if sec.user.is_none() {
            return Err(invalid(format!("{WHAT}.run_as_group needs run_as_user or run_as_username as well")));
        }
        sec.group = Some(uid(g.value, "run_as_group")?);
    }
    sec.supplemental_groups = sc.supplemental_groups.iter().map(|g| uid(*g, "supplemental_groups")).collect::<Result<_, _>>()?;
    sec.groups_policy = match sc.supplemental_groups_policy {
        x if x == cri::SupplementalGroupsPolicy::Merge as i32 => GroupsPolicy::Merge,
        x if x == cri::SupplementalGroupsPolicy::Strict as i32 => GroupsPolicy::Strict,
        x => return Err(invalid(format!("{WHAT}.supplemental_groups_policy {x} is unknown"))),
    };
    sec.readonly_rootfs = sc.readonly_rootfs;
    sec.no_new_privs = sc.no_new_privs;
    // Empty lists mean the defaults (protobuf cannot tell empty from unset), as in
    // containerd.
    sec.masked_paths = (!sc.masked_paths.is_empty()).then(|| sc.masked_paths.clone());
    sec.readonly_paths = (!sc.readonly_paths.is_empty()).then(|| sc.readonly_paths.clone());
    sec.seccomp = seccomp(&sc.seccomp, &sc.seccomp_profile_path, WHAT)?;
    check_apparmor(&sc.apparmor, &sc.apparmor_profile, WHAT)?;
    if let Some(ns) = &sc.namespace_options {
        check_userns(ns, WHAT)?;
        // The network namespace is the pod's choice; a container can only repeat it.
        if is_mode(ns.network, cri::NamespaceMode::Node) && !pod_host_network {
            return Err(invalid(format!(
                "{WHAT}.namespace_options.network NODE: the sandbox is not a host-network one; containers share the pod's network"
            )));
        }
        sec.pid = Some(match ns.pid {
            x if is_mode(x, cri::NamespaceMode::Container) => PidNamespace::Container,
            x if is_mode(x, cri::NamespaceMode::Pod) => PidNamespace::Pod,
            x if is_mode(x, cri::NamespaceMode::Node) => PidNamespace::Node,
            x if is_mode(x, cri::NamespaceMode::Target) => {
                if ns.target_id.is_empty() {
                    return Err(invalid(format!("{WHAT}.namespace_options.pid TARGET needs a target_id")));
                }
                let pid = target_pid.ok_or_else(|| {
                    precondition(format!("{WHAT}.namespace_options.target_id {}: no such running container", ns.target_id))
                })?;
                PidNamespace::Target(pid)
            }
            x => return Err(invalid(format!("{WHAT}.namespace_options.pid {x} is unknown"))),
        });
    }
    Ok((sec, resources, oom))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctr(sc: cri::LinuxContainerSecurityContext) -> cri::ContainerConfig {
        cri::ContainerConfig {
            linux: Some(cri::LinuxContainerConfig { security_context: Some(sc), resources: None }),
            ..Default::default()
        }
    }

    #[test]
    fn security_fields_are_carried_or_refused() {
        let sc = cri::LinuxContainerSecurityContext {
            run_as_user: Some(cri::Int64Value { value: 1000 }),
            run_as_group: Some(cri::Int64Value { value: 2000 }),
            readonly_rootfs: true,
            no_new_privs: true,
            capabilities: Some(cri::Capability { drop_capabilities: vec!["ALL".into()], ..Default::default() }),
            seccomp: Some(cri::SecurityProfile {
                profile_type: cri::security_profile::ProfileType::RuntimeDefault as i32,
                ..Default::default()
            }),
            ..Default::default()
        };
        let (sec, _, _) = container(&ctr(sc.clone()), false, false, None).unwrap();
        assert_eq!(sec.user, Some(RunAs::Uid(1000)));
        assert_eq!(sec.group, Some(2000));
        assert!(sec.readonly_rootfs && sec.no_new_privs);
        assert_eq!(sec.seccomp, Seccomp::RuntimeDefault);

        let group_only = cri::LinuxContainerSecurityContext { run_as_user: None, ..sc.clone() };
        assert_eq!(container(&ctr(group_only), false, false, None).unwrap_err().code(), tonic::Code::InvalidArgument);
        let privileged = cri::LinuxContainerSecurityContext { privileged: true, ..sc.clone() };
        assert!(container(&ctr(privileged.clone()), false, false, None).is_err());
        assert!(container(&ctr(privileged), true, false, None).unwrap().0.privileged);
        let selinux = cri::LinuxContainerSecurityContext {
            selinux_options: Some(cri::SeLinuxOption { r#type: "spc_t".into(), ..Default::default() }),
            ..sc.clone()
        };
        assert_eq!(container(&ctr(selinux), false, false, None).unwrap_err().code(), tonic::Code::FailedPrecondition);
        let relative = cri::LinuxContainerSecurityContext { seccomp_profile_path: "localhost/x.json".into(), seccomp: None, ..sc };
        assert!(container(&ctr(relative), false, false, None).is_err());
    }

    #[test]
    fn no_security_context_means_unconfined_and_escalation_allowed() {
        let (sec, res, oom) = container(&cri::ContainerConfig::default(), false, false, None).unwrap();
        assert_eq!(sec.seccomp, Seccomp::Unconfined);
        assert!(!sec.no_new_privs && res.is_empty() && oom.is_none());
    }
}
