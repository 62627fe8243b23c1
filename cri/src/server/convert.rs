//! Between CRI messages and minipod's records: names, metadata, states, times and
//! errors as gRPC codes.

use std::collections::{BTreeMap, HashMap};

use k8s_cri::v1 as cri;
use minipod_runtime::image::Credentials;
use minipod_runtime::netstack::NameError;
use minipod_runtime::pod::{ContainerName, ContainerRecord, PodName, PodRecord, PodStatus};
use minipod_runtime::{ContainerError, PodError, Status as CtrStatus};
use tonic::Status;

/// Annotation keys that keep the CRI metadata on minipod's records.
pub const NAME: &str = "io.minipod.cri.name";
pub const NAMESPACE: &str = "io.minipod.cri.namespace";
pub const UID: &str = "io.minipod.cri.uid";
pub const ATTEMPT: &str = "io.minipod.cri.attempt";

/// A DNS label made of `s`: lowercase letters, digits and `-`, at most `max` bytes.
pub fn label(s: &str, max: usize) -> String {
    let mut out: String = s.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
    out.truncate(max);
    let out = out.trim_matches('-').to_string();
    if out.is_empty() {
        "x".into()
    } else {
        out
    }
}

/// A PullImage's credentials, as a kubelet fills them from an image pull secret:
/// username and password, or `auth` (base64 of `user:password`, as in a Docker
/// config), or a registry token.
pub fn credentials(auth: Option<cri::AuthConfig>) -> Result<Credentials, Status> {
    use base64::Engine;
    let Some(a) = auth else { return Ok(Credentials::Anonymous) };
    if !a.username.is_empty() || !a.password.is_empty() {
        return Ok(Credentials::Basic { username: a.username, password: a.password });
    }
    if !a.auth.is_empty() {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(a.auth.trim())
            .ok()
            .and_then(|d| String::from_utf8(d).ok())
            .ok_or_else(|| Status::invalid_argument("auth is not base64 of user:password"))?;
        return Credentials::from_pair(&decoded).ok_or_else(|| Status::invalid_argument("auth decodes to no user:password pair"));
    }
    if !a.registry_token.is_empty() {
        return Ok(Credentials::Bearer(a.registry_token));
    }
    if !a.identity_token.is_empty() {
        return Err(Status::invalid_argument(
            "identity_token (an OAuth refresh token) is not supported: pass a registry_token or a password",
        ));
    }
    Ok(Credentials::Anonymous)
}

/// FNV-1a, hex: a short stable digest for names.
pub fn short_hash(parts: &[&str]) -> String {
    let mut h: u32 = 0x811c9dc5;
    for b in parts.iter().flat_map(|p| p.bytes().chain([0])) {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x01000193);
    }
    format!("{h:08x}")
}

/// minipod's pod name for a sandbox: unique per (name, namespace, uid, attempt), as
/// containerd reserves it, and a valid DNS label. The uid is in it because a pod that
/// Kubernetes deletes and makes again under its name gets a new uid, and its first
/// sandbox (attempt 0) must not wait for the old pod's to be removed.
pub fn pod_name(m: &cri::PodSandboxMetadata) -> Result<PodName, NameError> {
    PodName::new(format!("{}-{}-{}", label(&m.name, 40), m.attempt, short_hash(&[&m.namespace, &m.name, &m.uid])))
}

/// minipod's container name for a container: unique per (name, attempt) in its pod.
/// The hash of the exact name keeps apart what the DNS label alone would merge (`x.y`
/// and `x_y`, `Web` and `web`, two long names cut to the same 40 characters).
pub fn container_name(m: &cri::ContainerMetadata) -> Result<ContainerName, NameError> {
    ContainerName::new(format!("{}-{}-{}", label(&m.name, 40), m.attempt, short_hash(&[&m.name])))
}

/// A name the CRI gave that minipod cannot take.
pub fn invalid(e: NameError) -> Status {
    Status::invalid_argument(e.to_string())
}

pub fn to_btree(m: &HashMap<String, String>) -> BTreeMap<String, String> {
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// User annotations, without the ones minipod keeps its metadata in.
pub fn user_annotations(m: &BTreeMap<String, String>) -> HashMap<String, String> {
    m.iter().filter(|(k, _)| !k.starts_with("io.minipod.")).map(|(k, v)| (k.clone(), v.clone())).collect()
}

pub fn to_hash(m: &BTreeMap<String, String>) -> HashMap<String, String> {
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

pub fn pod_metadata(p: &PodRecord) -> cri::PodSandboxMetadata {
    let get = |k: &str| p.annotations.get(k).cloned().unwrap_or_default();
    cri::PodSandboxMetadata {
        name: p.annotations.get(NAME).cloned().unwrap_or_else(|| p.name.to_string()),
        uid: get(UID),
        namespace: get(NAMESPACE),
        attempt: get(ATTEMPT).parse().unwrap_or(0),
    }
}

pub fn pod_state(p: &PodRecord) -> i32 {
    match p.status {
        PodStatus::Ready => cri::PodSandboxState::SandboxReady as i32,
        PodStatus::Creating | PodStatus::Stopping | PodStatus::Stopped => cri::PodSandboxState::SandboxNotready as i32,
    }
}

pub fn container_metadata(c: &ContainerRecord) -> cri::ContainerMetadata {
    cri::ContainerMetadata {
        name: c.annotations.get(NAME).cloned().unwrap_or_else(|| c.name.to_string()),
        attempt: c.annotations.get(ATTEMPT).and_then(|a| a.parse().ok()).unwrap_or(c.attempt),
    }
}

pub fn container_state(s: CtrStatus) -> i32 {
    match s {
        CtrStatus::Created => cri::ContainerState::ContainerCreated as i32,
        CtrStatus::Running => cri::ContainerState::ContainerRunning as i32,
        CtrStatus::Stopped => cri::ContainerState::ContainerExited as i32,
    }
}

/// The gRPC status for a minipod error: the kind of failure, with the whole message.
pub fn status(e: PodError) -> Status {
    let text = minipod_runtime::error_chain(&e);
    match e {
        PodError::Config(_) | PodError::Spec(_) | PodError::Name(_) | PodError::Id(_) | PodError::NoRootfs(_) => {
            Status::invalid_argument(text)
        }
        PodError::PodExists { .. } | PodError::ContainerExists { .. } => Status::already_exists(text),
        PodError::NoSuchPod(_) | PodError::NoSuchContainer { .. } => Status::not_found(text),
        PodError::PodNotReady { .. }
        | PodError::PodBusy { .. }
        | PodError::ContainerRunning { .. }
        | PodError::ContainerExited { .. }
        | PodError::ImageInUse { .. } => Status::failed_precondition(text),
        PodError::NameContended(_) => Status::aborted(text),
        // Limits the node cannot apply, as the kubelet's UpdateContainerResources expects.
        PodError::Limits(_) => Status::invalid_argument(text),
        PodError::Image(minipod_runtime::ImageError::NotFound { .. }) => Status::not_found(text),
        PodError::Container(ContainerError::NotFound { .. }) => Status::not_found(text),
        PodError::Container(ContainerError::WrongState { .. } | ContainerError::StillRunning { .. }) => Status::failed_precondition(text),
        PodError::Container(ContainerError::ExecTimeout { .. }) => Status::deadline_exceeded(text),
        PodError::Network(minipod_runtime::netstack::NetworkError::Firewall(_)) => Status::already_exists(text),
        _ => Status::internal(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_credentials_come_from_any_of_the_cri_forms() {
        let auth = |f: fn(&mut cri::AuthConfig)| {
            let mut a = cri::AuthConfig::default();
            f(&mut a);
            credentials(Some(a))
        };
        let basic = Credentials::Basic { username: "u".into(), password: "p:w".into() };
        assert_eq!(
            auth(|a| {
                a.username = "u".into();
                a.password = "p:w".into()
            })
            .unwrap(),
            basic
        );
        assert_eq!(auth(|a| a.auth = "dTpwOnc=".into()).unwrap(), basic);
        assert_eq!(auth(|a| a.registry_token = "t".into()).unwrap(), Credentials::Bearer("t".into()));
        assert_eq!(credentials(None).unwrap(), Credentials::Anonymous);
        assert_eq!(auth(|a| a.identity_token = "r".into()).unwrap_err().code(), tonic::Code::InvalidArgument);
        assert_eq!(auth(|a| a.auth = "dXNlcg==".into()).unwrap_err().code(), tonic::Code::InvalidArgument);
        assert!(!format!("{basic:?}").contains("p:w"), "secrets stay out of logs");
    }

    #[test]
    fn names_are_dns_labels_and_unique_per_namespace_uid_and_attempt() {
        let m =
            |name: &str, ns: &str, attempt| cri::PodSandboxMetadata { name: name.into(), namespace: ns.into(), uid: "u".into(), attempt };
        let a = pod_name(&m("Web.Server_1", "default", 0)).unwrap();
        assert!(a.as_str().starts_with("web-server-1-0-"), "{a}");
        assert_ne!(a, pod_name(&m("Web.Server_1", "other", 0)).unwrap());
        assert_ne!(a, pod_name(&m("Web.Server_1", "default", 1)).unwrap());
        // A pod made again under its name has a new uid.
        let again = cri::PodSandboxMetadata { uid: "u2".into(), ..m("Web.Server_1", "default", 0) };
        assert_ne!(a, pod_name(&again).unwrap());
        // The longest a kubelet can send still makes a name.
        assert!(pod_name(&m(&"x".repeat(253), &"n".repeat(63), u32::MAX)).is_ok());
        assert_eq!(label("--", 10), "x");
        let c = |name: &str, attempt| container_name(&cri::ContainerMetadata { name: name.into(), attempt }).unwrap();
        assert!(c("Web.Server_1", 0).as_str().starts_with("web-server-1-0-"), "{}", c("Web.Server_1", 0));
        assert_eq!(c("x.y", 0), c("x.y", 0));
        assert_ne!(c("x.y", 0), c("x_y", 0));
        assert_ne!(c("Web", 0), c("web", 0));
        assert_ne!(c("web", 0), c("web", 1));
        let long = "a".repeat(60);
        assert_ne!(c(&format!("{long}1"), 0), c(&format!("{long}2"), 0));
        assert!(container_name(&cri::ContainerMetadata { name: "x".repeat(253), attempt: u32::MAX }).is_ok());
        for made in [label("My_Pod.v2", 40), label("-a-", 5), label(&"Ab".repeat(40), 50)] {
            assert!(minipod_runtime::netstack::is_dns_label(&made), "{made:?}");
        }
    }
}
