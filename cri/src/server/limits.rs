//! Limits on the sizes of request fields, checked before anything is stored or made:
//! a record, a reply and the daemon's memory stay small whatever a client sends, and an
//! error names the field and its limit without sending a huge value back.
//!
//! Where Kubernetes has a limit, it is the one used (DNS: 3 servers, 32 search domains
//! of 2048 characters together; annotations: 256 KiB together); where the kernel has
//! one, so is that (a path 4095 bytes, an argument or environment string 128 KiB);
//! elsewhere a bound far above what a kubelet sends.

use k8s_cri::v1 as cri;
use tonic::Status;

/// Names, namespaces and uids: a Kubernetes object name is a DNS subdomain (253).
const NAME: usize = 253;
/// A label or annotation key: a DNS-subdomain prefix, '/', and a 63-byte name.
const KEY: usize = 253 + 1 + 63;
/// Labels of one object, keys and values together.
const LABELS: usize = 64 * 1024;
/// Annotations of one object, keys and values together (Kubernetes' own limit).
const ANNOTATIONS: usize = 256 * 1024;
/// Entries of one map or list (labels, annotations, ports, mounts, devices, envs).
const ENTRIES: usize = 1024;
/// A path (the kernel's PATH_MAX, without the NUL).
const PATH: usize = 4095;
/// One argument or environment string (the kernel's MAX_ARG_STRLEN).
const ARG: usize = 128 * 1024;
/// A process's arguments and environment together (half of the kernel's default
/// ARG_MAX, leaving room for what the runtime adds).
const ARGV_ENV: usize = 1024 * 1024;
/// DNS: the resolver reads 3 servers (glibc's MAXNS; Kubernetes refuses more), 32
/// search domains of at most 2048 characters together (Kubernetes' limits).
const DNS_SERVERS: usize = 3;
const DNS_SEARCHES: usize = 32;
const DNS_SEARCH_CHARS: usize = 2048;
/// A resolv.conf option and a sysctl key or value.
const SHORT: usize = 256;
const SYSCTL_VALUE: usize = 4096;
/// An image reference.
const IMAGE: usize = 4096;

fn too_long(field: &str, len: usize, limit: usize) -> Status {
    Status::invalid_argument(format!("{field} is {len} bytes; the limit is {limit}"))
}

fn at_most(field: &str, value: &str, limit: usize) -> Result<(), Status> {
    if value.len() > limit {
        return Err(too_long(field, value.len(), limit));
    }
    Ok(())
}

fn count(field: &str, n: usize, limit: usize) -> Result<(), Status> {
    if n > limit {
        return Err(Status::invalid_argument(format!("{field} has {n} entries; the limit is {limit}")));
    }
    Ok(())
}

/// Keys at most [`KEY`] bytes, at most [`ENTRIES`] entries, `total` bytes together.
fn map(field: &str, m: &std::collections::HashMap<String, String>, total: usize) -> Result<(), Status> {
    count(field, m.len(), ENTRIES)?;
    if let Some(k) = m.keys().find(|k| k.len() > KEY) {
        return Err(Status::invalid_argument(format!(
            "{field}: a key of {} bytes (starting {:?}); the limit is {KEY}",
            k.len(),
            k.chars().take(40).collect::<String>()
        )));
    }
    let size: usize = m.iter().map(|(k, v)| k.len() + v.len()).sum();
    if size > total {
        return Err(Status::invalid_argument(format!("{field} are {size} bytes together; the limit is {total}")));
    }
    Ok(())
}

/// Strings each at most [`ARG`] bytes, `total` together.
fn strings<'a>(field: &str, items: impl Iterator<Item = &'a str> + Clone, total: usize) -> Result<(), Status> {
    count(field, items.clone().count(), 64 * ENTRIES)?;
    if let Some(s) = items.clone().find(|s| s.len() > ARG) {
        return Err(Status::invalid_argument(format!("{field}: an entry of {} bytes; the limit is {ARG}", s.len())));
    }
    let size: usize = items.map(str::len).sum();
    if size > total {
        return Err(Status::invalid_argument(format!("{field} are {size} bytes together; the limit is {total}")));
    }
    Ok(())
}

/// A command (ExecSync, Exec): its arguments as a process's.
pub(super) fn command(cmd: &[String]) -> Result<(), Status> {
    strings("cmd", cmd.iter().map(String::as_str), ARGV_ENV)
}

pub(super) fn sandbox(cfg: &cri::PodSandboxConfig) -> Result<(), Status> {
    if let Some(m) = &cfg.metadata {
        at_most("metadata.name", &m.name, NAME)?;
        at_most("metadata.namespace", &m.namespace, NAME)?;
        at_most("metadata.uid", &m.uid, NAME)?;
    }
    at_most("hostname", &cfg.hostname, NAME)?;
    at_most("log_directory", &cfg.log_directory, PATH)?;
    map("labels", &cfg.labels, LABELS)?;
    map("annotations", &cfg.annotations, ANNOTATIONS)?;
    count("port_mappings", cfg.port_mappings.len(), ENTRIES)?;
    if let Some(dns) = &cfg.dns_config {
        count("dns_config.servers", dns.servers.len(), DNS_SERVERS)?;
        if let Some(s) = dns.servers.iter().find(|s| s.len() > 45) {
            return Err(too_long("a dns_config.servers entry", s.len(), 45));
        }
        count("dns_config.searches", dns.searches.len(), DNS_SEARCHES)?;
        let chars: usize = dns.searches.iter().map(String::len).sum::<usize>() + dns.searches.len().saturating_sub(1);
        if chars > DNS_SEARCH_CHARS {
            return Err(Status::invalid_argument(format!(
                "dns_config.searches are {chars} characters together; the limit is {DNS_SEARCH_CHARS}"
            )));
        }
        count("dns_config.options", dns.options.len(), 32)?;
        if let Some(o) = dns.options.iter().find(|o| o.len() > SHORT) {
            return Err(too_long("a dns_config.options entry", o.len(), SHORT));
        }
    }
    if let Some(linux) = &cfg.linux {
        at_most("linux.cgroup_parent", &linux.cgroup_parent, PATH)?;
        count("linux.sysctls", linux.sysctls.len(), ENTRIES)?;
        for (k, v) in &linux.sysctls {
            at_most("a linux.sysctls key", k, SHORT)?;
            at_most(&format!("linux.sysctls[{k}]"), v, SYSCTL_VALUE)?;
        }
    }
    Ok(())
}

pub(super) fn container(cfg: &cri::ContainerConfig) -> Result<(), Status> {
    if let Some(m) = &cfg.metadata {
        at_most("metadata.name", &m.name, NAME)?;
    }
    if let Some(i) = &cfg.image {
        at_most("image.image", &i.image, IMAGE)?;
    }
    let argv = cfg.command.iter().chain(&cfg.args).map(String::as_str);
    let env: Vec<String> = cfg.envs.iter().map(|kv| format!("{}={}", kv.key, kv.value)).collect();
    strings("command and args", argv.clone(), ARGV_ENV)?;
    strings("envs", env.iter().map(String::as_str), ARGV_ENV)?;
    let together: usize = argv.map(str::len).chain(env.iter().map(String::len)).sum();
    if together > ARGV_ENV {
        return Err(Status::invalid_argument(format!("command, args and envs are {together} bytes together; the limit is {ARGV_ENV}")));
    }
    at_most("working_dir", &cfg.working_dir, PATH)?;
    at_most("log_path", &cfg.log_path, PATH)?;
    map("labels", &cfg.labels, LABELS)?;
    map("annotations", &cfg.annotations, ANNOTATIONS)?;
    count("mounts", cfg.mounts.len(), ENTRIES)?;
    for m in &cfg.mounts {
        at_most("a mount's container_path", &m.container_path, PATH)?;
        at_most("a mount's host_path", &m.host_path, PATH)?;
    }
    count("devices", cfg.devices.len(), ENTRIES)?;
    for d in &cfg.devices {
        at_most("a device's container_path", &d.container_path, PATH)?;
        at_most("a device's host_path", &d.host_path, PATH)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> cri::PodSandboxConfig {
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata { name: "web".into(), namespace: "default".into(), uid: "u".into(), attempt: 0 }),
            ..Default::default()
        }
    }

    /// Each oversized field is refused by name and limit, and the message stays short
    /// however large the value.
    #[test]
    fn oversized_fields_are_refused_by_name_and_limit_without_echoing_them() {
        assert!(sandbox(&pod()).is_ok());
        let huge = "x".repeat(1 << 20);
        let cases: Vec<(&str, cri::PodSandboxConfig)> = vec![
            ("metadata.name is 1048576 bytes; the limit is 253", {
                let mut p = pod();
                p.metadata.as_mut().unwrap().name = huge.clone();
                p
            }),
            ("metadata.uid is 1048576 bytes", {
                let mut p = pod();
                p.metadata.as_mut().unwrap().uid = huge.clone();
                p
            }),
            ("labels: a key of 1048576 bytes", {
                let mut p = pod();
                p.labels.insert(huge.clone(), "v".into());
                p
            }),
            ("annotations are 1048577 bytes together; the limit is 262144", {
                let mut p = pod();
                p.annotations.insert("a".into(), huge.clone());
                p
            }),
            ("log_directory is 1048577 bytes", {
                let mut p = pod();
                p.log_directory = format!("/{huge}");
                p
            }),
            ("dns_config.searches has 33 entries; the limit is 32", {
                let mut p = pod();
                p.dns_config = Some(cri::DnsConfig { searches: vec!["a".into(); 33], ..Default::default() });
                p
            }),
            ("dns_config.searches are 2051 characters together", {
                let mut p = pod();
                p.dns_config = Some(cri::DnsConfig { searches: vec!["a".repeat(1025), "b".repeat(1025)], ..Default::default() });
                p
            }),
            ("dns_config.servers has 4 entries; the limit is 3", {
                let mut p = pod();
                p.dns_config = Some(cri::DnsConfig { servers: vec!["10.0.0.1".into(); 4], ..Default::default() });
                p
            }),
        ];
        for (want, p) in cases {
            let err = sandbox(&p).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument);
            assert!(err.message().contains(want), "{want}: {}", err.message());
            assert!(err.message().len() < 200, "{}", err.message().len());
        }
        let mut c = cri::ContainerConfig { args: vec!["a".repeat(ARG + 1)], ..Default::default() };
        assert!(container(&c).unwrap_err().message().contains("command and args: an entry of 131073 bytes"));
        c.args = vec!["a".repeat(ARG); 5];
        c.envs = vec![cri::KeyValue { key: "K".into(), value: "v".repeat(ARG - 2) }; 4];
        assert!(container(&c).unwrap_err().message().contains("command, args and envs are"));
        c.args.clear();
        c.envs.clear();
        c.mounts = vec![cri::Mount { container_path: huge.clone(), ..Default::default() }];
        assert!(container(&c).unwrap_err().message().contains("a mount's container_path is 1048576 bytes; the limit is 4095"));
        assert!(command(std::slice::from_ref(&huge)).unwrap_err().message().contains("cmd: an entry of 1048576 bytes"));
    }
}
