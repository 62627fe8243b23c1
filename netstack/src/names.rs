//! Validated names: networks, interface names and owner ids, which reach paths or the
//! kernel, and the pod, container and host names the runtime builds on them, which
//! also become DNS names. The one place their rules are written.

use std::fmt;

/// A name that is not acceptable.
#[derive(Debug, thiserror::Error)]
pub enum NameError {
    #[error("{kind} {name:?} is empty or longer than {max} bytes")]
    Length { kind: &'static str, name: String, max: usize },
    #[error("{kind} {name:?} has the character {ch:?}: use letters, digits, `-`, `_` and `.`, not starting with `.` or `-`")]
    Char { kind: &'static str, name: String, ch: char },
    #[error("{kind} {name:?} is not valid: use 1 to {max} lowercase letters, digits and `-`, not starting or ending with `-`")]
    Label { kind: &'static str, name: String, max: usize },
    #[error("{kind} {name:?} must start with a lowercase letter")]
    Letter { kind: &'static str, name: String },
    #[error("hostname {name:?} is not valid: use DNS labels (letters, digits, `-` inside) separated by dots, at most 64 bytes")]
    Hostname { name: String },
    #[error("{kind} {name:?} is not valid: use lowercase DNS labels joined by dots, at most {max} bytes")]
    Subdomain { kind: &'static str, name: String, max: usize },
    #[error("{kind} {name:?} is not valid: use 1 to {max} lowercase letters, digits and `-` with at least one letter, no `-` first, last or twice in a row")]
    PortName { kind: &'static str, name: String, max: usize },
}

fn check_path_safe(kind: &'static str, name: &str, max: usize) -> Result<(), NameError> {
    if name.is_empty() || name.len() > max {
        return Err(NameError::Length { kind, name: name.to_string(), max });
    }
    for (i, ch) in name.chars().enumerate() {
        let ok = ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_' | '.');
        if !ok || (i == 0 && matches!(ch, '.' | '-')) {
            return Err(NameError::Char { kind, name: name.to_string(), ch });
        }
    }
    Ok(())
}

/// A lowercase DNS label of at most `max` bytes: it becomes a DNS name, a hostname and
/// part of paths.
fn check_label(kind: &'static str, name: &str, max: usize) -> Result<(), NameError> {
    if name.len() <= max && is_dns_label(name) && !name.bytes().any(|b| b.is_ascii_uppercase()) {
        Ok(())
    } else {
        Err(NameError::Label { kind, name: name.to_string(), max })
    }
}

/// A Kubernetes DNS-1035 label (a Service's name): a label that starts with a letter,
/// because it also becomes an environment variable's prefix and a DNS name.
fn check_dns1035(kind: &'static str, name: &str, max: usize) -> Result<(), NameError> {
    check_label(kind, name, max)?;
    if name.starts_with(|c: char| c.is_ascii_lowercase()) {
        Ok(())
    } else {
        Err(NameError::Letter { kind, name: name.to_string() })
    }
}

/// What sethostname(2) takes and resolvers accept: dotted DNS labels, at most 64 bytes.
fn check_hostname(_kind: &'static str, name: &str, _max: usize) -> Result<(), NameError> {
    if name.len() <= 64 && name.split('.').all(is_dns_label) {
        Ok(())
    } else {
        Err(NameError::Hostname { name: name.to_string() })
    }
}

/// A Kubernetes DNS subdomain (a NetworkPolicy's name): lowercase labels joined by
/// dots, with no trailing dot.
fn check_subdomain(kind: &'static str, name: &str, max: usize) -> Result<(), NameError> {
    if name.len() <= max && !name.ends_with('.') && is_dns_name(name) && !name.bytes().any(|b| b.is_ascii_uppercase()) {
        Ok(())
    } else {
        Err(NameError::Subdomain { kind, name: name.to_string(), max })
    }
}

/// A Kubernetes port name (IANA_SVC_NAME): at most 15 lowercase letters, digits and
/// `-`, with a letter among them and no `-` first, last or twice in a row, so that it
/// cannot be mistaken for a number.
fn check_port_name(kind: &'static str, name: &str, max: usize) -> Result<(), NameError> {
    let ok = name.len() <= max
        && is_dns_label(name)
        && !name.contains("--")
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.bytes().any(|b| b.is_ascii_lowercase());
    if ok {
        Ok(())
    } else {
        Err(NameError::PortName { kind, name: name.to_string(), max })
    }
}

macro_rules! name_type {
    ($(#[$doc:meta])* $t:ident, $kind:literal, $max:expr) => {
        name_type!($(#[$doc])* $t, $kind, $max, check_path_safe);
    };
    ($(#[$doc:meta])* $t:ident, $kind:literal, $max:expr, $check:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $t(String);

        impl $t {
            /// Checks and wraps `name`.
            pub fn new(name: impl Into<String>) -> Result<Self, NameError> {
                let name = name.into();
                $check($kind, &name, $max)?;
                Ok(Self(name))
            }

            /// The name as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $t {
            type Error = NameError;
            fn try_from(s: String) -> Result<Self, NameError> {
                Self::new(s)
            }
        }

        impl From<$t> for String {
            fn from(n: $t) -> String {
                n.0
            }
        }

        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(&self.0)
            }
        }

        impl AsRef<str> for $t {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        /// Valid names are single path components.
        impl AsRef<std::path::Path> for $t {
            fn as_ref(&self) -> &std::path::Path {
                std::path::Path::new(&self.0)
            }
        }

        impl PartialEq<str> for $t {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $t {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl std::str::FromStr for $t {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                Self::new(s)
            }
        }
    };
}

name_type!(
    /// A network's name (also a directory name under the state dir).
    NetworkName,
    "network name",
    64
);
name_type!(
    /// A Linux interface name: at most 15 bytes (IFNAMSIZ - 1).
    IfName,
    "interface name",
    15
);
name_type!(
    /// Who an attachment belongs to (a pod or container id); release and GC go by it.
    OwnerId,
    "owner id",
    128
);

name_type!(
    /// A pod's name: unique among the live pods of a scope, its DNS name on every
    /// network it joins and its default hostname.
    PodName,
    "pod name",
    63,
    check_label
);
name_type!(
    /// A container's name, unique within its pod (a directory name under the pod).
    ContainerName,
    "container name",
    63,
    check_label
);
name_type!(
    /// A further DNS name of a pod on its networks.
    Alias,
    "alias",
    63,
    check_label
);
name_type!(
    /// Whose pods a runtime instance sees and sweeps (part of netns and link names,
    /// hence short).
    Scope,
    "scope",
    40,
    check_label
);
name_type!(
    /// A Kubernetes namespace: pods and services are in one (`default` unless told),
    /// and a service selects pods of its own.
    Namespace,
    "namespace",
    63,
    check_label
);
name_type!(
    /// A Service's name, unique within its namespace: its DNS name and a file name.
    ServiceName,
    "service name",
    63,
    check_dns1035
);
name_type!(
    /// A NetworkPolicy's name, unique within its namespace (a file name).
    PolicyName,
    "network policy name",
    253,
    check_subdomain
);
name_type!(
    /// An EndpointSlice's name, unique within its namespace (a file name).
    SliceName,
    "endpoint slice name",
    253,
    check_subdomain
);
name_type!(
    /// The name of a port a pod's container declares (Kubernetes' `ports[].name`), by
    /// which a Service's `targetPort` and a NetworkPolicy's `port` may give it.
    PortName,
    "port name",
    15,
    check_port_name
);
name_type!(
    /// A pod's hostname (its UTS namespace's name).
    Hostname,
    "hostname",
    64,
    check_hostname
);

impl From<PodName> for Hostname {
    /// A pod name is always a valid hostname: a pod's default hostname is its name.
    fn from(n: PodName) -> Self {
        Self(n.0)
    }
}

impl Default for Namespace {
    /// `default`, as in Kubernetes.
    fn default() -> Self {
        Self("default".to_string())
    }
}

impl IfName {
    /// `eth0`, the usual name of a pod's interface.
    pub fn eth0() -> Self {
        Self("eth0".to_string())
    }
}

/// Whether `l` is a DNS label (RFC 1123): 1 to 63 letters, digits and `-`, neither
/// first nor last a `-`. The one rule for pod, container and host names, aliases and
/// the names members resolve by.
pub fn is_dns_label(l: &str) -> bool {
    !l.is_empty() && l.len() <= 63 && !l.starts_with('-') && !l.ends_with('-') && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Whether `name` is a DNS name: labels joined by dots, a trailing dot allowed, at most
/// 253 bytes.
pub fn is_dns_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty() && name.len() <= 253 && name.split('.').all(is_dns_label)
}

/// FNV-1a over `parts` joined by NULs: a fixed function (unlike std's hasher, whose
/// output may change between builds), for names and addresses derived from names
/// that must come out the same in every process and release.
pub(crate) fn stable_hash<'a>(parts: impl IntoIterator<Item = &'a str>) -> u64 {
    let step = |h: u64, b: u8| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    let mut h = 0xcbf2_9ce4_8422_2325;
    for (i, part) in parts.into_iter().enumerate() {
        if i > 0 {
            h = step(h, 0);
        }
        h = part.bytes().fold(h, step);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_and_container_names_are_lowercase_dns_labels() {
        assert!(PodName::new("web-1").is_ok() && ContainerName::new("c0").is_ok());
        for bad in ["", "Web", "a_b", "-a", "a-", "a/b", "..", "a.b", &"x".repeat(64)] {
            assert!(PodName::new(bad).is_err(), "{bad:?}");
            assert!(ContainerName::new(bad).is_err(), "{bad:?}");
        }
        assert!(Scope::new("x".repeat(40)).is_ok() && Scope::new("x".repeat(41)).is_err());
        let e = PodName::new("Web").unwrap_err().to_string();
        assert!(e.contains("pod name \"Web\"") && e.contains("lowercase"), "{e}");
        // Records are checked as they are read back: a name on disk is never trusted.
        assert!(serde_json::from_str::<PodName>("\"../etc\"").is_err());
    }

    #[test]
    fn namespaces_are_labels_and_service_names_start_with_a_letter() {
        assert_eq!(Namespace::default(), "default");
        assert!(Namespace::new("kube-system").is_ok() && Namespace::new("1a").is_ok() && Namespace::new("A").is_err());
        assert!(ServiceName::new("my-service").is_ok());
        let e = ServiceName::new("1web").unwrap_err().to_string();
        assert!(e.contains("service name \"1web\" must start with a lowercase letter"), "{e}");
        assert!(ServiceName::new("web_1").is_err() && ServiceName::new("x".repeat(64)).is_err());
    }

    #[test]
    fn policy_and_slice_names_are_dns_subdomains() {
        let label = |c: &str, n: usize| c.repeat(n);
        let longest = format!("{}.{}.{}.{}", label("a", 63), label("b", 63), label("c", 63), label("d", 61));
        for good in ["allow-frontend-to-backend", "a.b-c.d", "x", "1a", longest.as_str()] {
            assert!(PolicyName::new(good).is_ok() && SliceName::new(good).is_ok(), "{good:?}");
        }
        let too_long = format!("{longest}d");
        for bad in ["", "Allow", "a.", ".a", "a..b", "a_b", "-a", "a-.b", "a/b", too_long.as_str()] {
            assert!(PolicyName::new(bad).is_err() && SliceName::new(bad).is_err(), "{bad:?}");
        }
        let e = PolicyName::new("Allow").unwrap_err().to_string();
        assert!(
            e.contains("network policy name \"Allow\" is not valid: use lowercase DNS labels joined by dots, at most 253 bytes"),
            "{e}"
        );
    }

    #[test]
    fn port_names_are_iana_service_names() {
        for good in ["http", "http-alt", "h2c", "x", "a1", "1a", "metrics-9090"] {
            assert!(PortName::new(good).is_ok(), "{good:?}");
        }
        for bad in ["", "8080", "HTTP", "-http", "http-", "a--b", "a.b", "a_b", &"x".repeat(16)] {
            assert!(PortName::new(bad).is_err(), "{bad:?}");
        }
        let e = PortName::new("8080").unwrap_err().to_string();
        assert!(e.contains("port name \"8080\"") && e.contains("at least one letter"), "{e}");
    }

    #[test]
    fn hostnames_are_dotted_labels_of_at_most_64_bytes() {
        assert!(Hostname::new("Node-1.example").is_ok());
        for bad in ["", "a..b", "-a", "a b", &"x".repeat(65)] {
            assert!(Hostname::new(bad).is_err(), "{bad:?}");
        }
        assert_eq!(Hostname::from(PodName::new("web").unwrap()), "web");
    }

    #[test]
    fn interface_names_fit_ifnamsiz() {
        assert!(IfName::new("eth0").is_ok());
        assert!(IfName::new("a234567890abcde").is_ok());
        assert!(IfName::new("a234567890abcdef").is_err());
        assert!(IfName::new("eth/0").is_err());
        assert!(IfName::new("").is_err());
    }

    #[test]
    fn dns_labels_and_names_follow_rfc_1123() {
        for good in ["a", "web-1", "0x", &"x".repeat(63)] {
            assert!(is_dns_label(good), "{good:?}");
        }
        for bad in ["", "-a", "a-", "a_b", "a.b", &"x".repeat(64)] {
            assert!(!is_dns_label(bad), "{bad:?}");
        }
        assert!(is_dns_name("db.svc.cluster.local.") && is_dns_name("db"));
        assert!(!is_dns_name("a..b") && !is_dns_name(".") && !is_dns_name("a.-b"));
        assert!(!is_dns_name(&vec!["x".repeat(63); 5].join(".")));
    }

    #[test]
    fn names_cannot_escape_a_directory() {
        for bad in ["..", ".", "a/b", "-x", "a b", "x\0"] {
            assert!(NetworkName::new(bad).is_err(), "{bad:?}");
            assert!(OwnerId::new(bad).is_err(), "{bad:?}");
        }
    }
}
