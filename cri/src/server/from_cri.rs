//! A CRI sandbox config and its mounts as the library's pod config.

use std::net::Ipv4Addr;
use std::path::{Component, Path, PathBuf};

use k8s_cri::v1 as cri;
use minipod_runtime::netstack::{PortMapping, Proto};
use minipod_runtime::pod::{Alias, BindMount, DnsConfig, Hostname, Namespace, PodConfig, Propagation};
use tonic::Status;

use super::convert::{self, ATTEMPT, NAME, NAMESPACE, UID};
use super::security;

/// A CRI mount as a bind mount, or the reason it cannot be made.
pub(super) fn mount(m: &cri::Mount) -> Result<BindMount, Status> {
    let what = format!("mount {}", m.container_path);
    if m.image.is_some() {
        return Err(Status::unimplemented(format!("{what}: image volumes are not supported by minipod yet")));
    }
    if !m.uid_mappings.is_empty() || !m.gid_mappings.is_empty() {
        return Err(Status::failed_precondition(format!(
            "{what}: id-mapped mounts need user namespaces, which minipod does not support yet"
        )));
    }
    if m.recursive_read_only {
        return Err(Status::failed_precondition(format!("{what}: recursive read-only mounts are not supported by minipod yet")));
    }
    // selinux_relabel: nothing to relabel on a node without SELinux.
    let propagation = match m.propagation {
        x if x == cri::MountPropagation::PropagationPrivate as i32 => Propagation::Private,
        x if x == cri::MountPropagation::PropagationHostToContainer as i32 => Propagation::HostToContainer,
        x if x == cri::MountPropagation::PropagationBidirectional as i32 => Propagation::Bidirectional,
        x => return Err(Status::invalid_argument(format!("{what}: propagation {x} is unknown"))),
    };
    Ok(BindMount { host: m.host_path.clone().into(), container: m.container_path.clone().into(), readonly: m.readonly, propagation })
}

pub(super) fn pod_config(cfg: &cri::PodSandboxConfig) -> Result<PodConfig, Status> {
    let m = cfg.metadata.as_ref().ok_or_else(|| Status::invalid_argument("the sandbox config has no metadata"))?;
    if m.name.is_empty() || m.namespace.is_empty() {
        return Err(Status::invalid_argument("the sandbox metadata needs a name and a namespace"));
    }
    let mut annotations = convert::to_btree(&cfg.annotations);
    annotations.insert(NAME.into(), m.name.clone());
    annotations.insert(NAMESPACE.into(), m.namespace.clone());
    annotations.insert(UID.into(), m.uid.clone());
    annotations.insert(ATTEMPT.into(), m.attempt.to_string());
    let mut ports = Vec::new();
    for p in &cfg.port_mappings {
        if p.host_port == 0 {
            continue; // a container port without a host port publishes nothing
        }
        let proto = match p.protocol {
            x if x == cri::Protocol::Tcp as i32 => Proto::Tcp,
            x if x == cri::Protocol::Udp as i32 => Proto::Udp,
            _ => return Err(Status::invalid_argument("only TCP and UDP ports can be published")),
        };
        let port = |n: i32, what: &str| {
            u16::try_from(n).ok().filter(|p| *p != 0).ok_or_else(|| Status::invalid_argument(format!("{what} {n} is not a port")))
        };
        let host_ip = match p.host_ip.as_str() {
            "" | "0.0.0.0" => None,
            ip => Some(ip.parse::<Ipv4Addr>().map_err(|_| Status::invalid_argument(format!("host_ip {ip:?} is not an IPv4 address")))?),
        };
        ports.push(PortMapping {
            proto,
            host_port: port(p.host_port, "host_port")?,
            host_ip,
            container_port: port(p.container_port, "container_port")?,
        });
    }
    let opts = security::sandbox(cfg)?;
    if opts.privileged {
        annotations.insert(security::PRIVILEGED.into(), "true".into());
    }
    Ok(PodConfig {
        name: convert::pod_name(m).map_err(convert::invalid)?,
        // A host-network pod has the node's name; an empty one means just that.
        hostname: match (cfg.hostname.is_empty(), opts.host_network) {
            (true, true) => None,
            (true, false) => Some(Hostname::new(convert::label(&m.name, 63)).map_err(convert::invalid)?),
            (false, _) => Some(Hostname::new(cfg.hostname.as_str()).map_err(convert::invalid)?),
        },
        // Kubernetes namespaces are DNS labels: services select the pod in its own.
        namespace: Namespace::new(m.namespace.as_str()).map_err(convert::invalid)?,
        labels: convert::to_btree(&cfg.labels),
        annotations,
        networks: vec![],
        ports,
        // Other pods find it by its Kubernetes name (a host-network pod is on no
        // network to be found on).
        aliases: if opts.host_network { vec![] } else { vec![Alias::new(convert::label(&m.name, 63)).map_err(convert::invalid)?] },
        dns: cfg.dns_config.as_ref().map(|d| DnsConfig {
            servers: d.servers.clone(),
            searches: d.searches.clone(),
            options: d.options.clone(),
        }),
        log_dir: log_directory(&cfg.log_directory)?,
        // Declared by its containers as the kubelet creates them (the sandbox's port
        // mappings carry no names).
        named_ports: vec![],
        share_pid: opts.share_pid,
        cgroup_parent: opts.cgroup_parent,
        host_ipc: opts.host_ipc,
        host_network: opts.host_network,
        sysctls: opts.sysctls,
    })
}

/// At most the first 100 characters of `s`, for an error that names a bad value
/// without sending a huge one back.
fn quoted(s: &str) -> String {
    match s.char_indices().nth(100) {
        Some((end, _)) => format!("{:?}... ({} bytes)", &s[..end], s.len()),
        None => format!("{s:?}"),
    }
}

/// A pod's log directory: absolute, as the kubelet's (/var/log/pods/...) is; a
/// relative one would land wherever the daemon happened to be started.
fn log_directory(dir: &str) -> Result<Option<PathBuf>, Status> {
    if dir.is_empty() {
        return Ok(None);
    }
    let path = Path::new(dir);
    if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
        return Err(Status::invalid_argument(format!(
            "log_directory {} must be an absolute path without '..' (the kubelet's is /var/log/pods/NAMESPACE_NAME_UID)",
            quoted(dir)
        )));
    }
    Ok(Some(path.to_path_buf()))
}

/// A container's log file: `path` inside its pod's log directory, as the CRI defines
/// it (relative to it), never outside: no absolute path, no '..'.
pub(super) fn log_path(dir: Option<&Path>, path: &str) -> Result<Option<PathBuf>, Status> {
    if path.is_empty() {
        return Ok(None);
    }
    let Some(dir) = dir else {
        return Err(Status::invalid_argument(format!(
            "log_path {} is relative to the pod's log_directory, and the pod has none: give the pod one, or leave log_path out",
            quoted(path)
        )));
    };
    let inside = Path::new(path).components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if !inside {
        return Err(Status::invalid_argument(format!(
            "log_path {} must stay inside the pod's log_directory: a relative path without '..' (the kubelet's is NAME/ATTEMPT.log)",
            quoted(path)
        )));
    }
    Ok(Some(dir.join(path)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_paths_stay_inside_an_absolute_log_directory() {
        let dir = log_directory("/var/log/pods/ns_web_uid").unwrap();
        assert_eq!(log_path(dir.as_deref(), "web/0.log").unwrap(), Some(PathBuf::from("/var/log/pods/ns_web_uid/web/0.log")));
        assert_eq!(log_path(dir.as_deref(), "").unwrap(), None);
        for bad in ["../../../../tmp/x.log", "/tmp/x.log", "web/../../x.log"] {
            let err = log_path(dir.as_deref(), bad).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument);
            assert!(err.message().contains("inside the pod's log_directory"), "{bad}: {}", err.message());
        }
        assert!(log_path(None, "web/0.log").unwrap_err().message().contains("the pod has none"));
        assert_eq!(log_directory("").unwrap(), None);
        for bad in ["logs", "./logs", "/var/log/../../etc"] {
            assert!(log_directory(bad).unwrap_err().message().contains("absolute path"), "{bad}");
        }
        // A huge value is not sent back whole.
        let huge = "x".repeat(1 << 20);
        let err = log_directory(&huge).unwrap_err();
        assert!(err.message().len() < 400 && err.message().contains("1048576 bytes"), "{}", err.message().len());
    }
}
