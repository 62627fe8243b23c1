//! Image references as containerd shows them (`docker.io/library/busybox:latest`).

use super::*;

/// A normalised image reference: `registry/repository[:tag][@sha256:hex]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Reference {
    /// `registry/path`, e.g. `docker.io/library/busybox`.
    pub(super) repo: String,
    pub(super) tag: Option<String>,
    pub(super) digest: Option<String>,
}

impl Reference {
    /// Parses and normalises the way docker and containerd do: `busybox` is
    /// `docker.io/library/busybox:latest`.
    pub(super) fn parse(reference: &str) -> Result<Self, ImageError> {
        let bad = |why: String| ImageError::BadReference { reference: reference.to_string(), why };
        if reference.is_empty() {
            return Err(bad("it is empty".into()));
        }
        if reference.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("it contains whitespace".into()));
        }
        let (name, digest) = match reference.split_once('@') {
            Some((name, digest)) => {
                let hex = digest.strip_prefix("sha256:").filter(|h| h.len() == 64 && is_hex(h));
                if hex.is_none() {
                    return Err(bad(format!("the digest {digest:?} after '@' is not sha256: and 64 lowercase hex digits")));
                }
                (name, Some(digest.to_string()))
            }
            None => (reference, None),
        };
        // A ':' after the last '/' starts the tag; one before it is a registry port.
        let (name, tag) = match name.rsplit_once(':') {
            Some((n, t)) if !t.contains('/') => (n, Some(t)),
            _ => (name, None),
        };
        if let Some(tag) = tag {
            let valid = (1..=128).contains(&tag.len())
                && tag.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
                && !tag.starts_with(['.', '-']);
            if !valid {
                return Err(bad(format!("the tag {tag:?} is not 1 to 128 of a-z, A-Z, 0-9, '_', '.', '-' (not starting with '.' or '-')")));
            }
        }
        let parts: Vec<&str> = name.split('/').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(bad("it has an empty path component".into()));
        }
        let (registry, path) = match parts[..] {
            [first, ..] if parts.len() > 1 && (first.contains(['.', ':']) || first == "localhost") => (first, &parts[1..]),
            _ => ("docker.io", &parts[..]),
        };
        let registry = if registry == "index.docker.io" { "docker.io" } else { registry };
        let (host, port) = match registry.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (registry, None),
        };
        if host.is_empty()
            || !host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'))
            || port.is_some_and(|p| p.is_empty() || !p.chars().all(|c| c.is_ascii_digit()))
        {
            return Err(bad(format!("the registry {registry:?} is not a host name with an optional :port")));
        }
        for part in path {
            if part.chars().any(|c| c.is_ascii_uppercase()) {
                return Err(bad(format!("repository names must be lowercase, and {part:?} is not")));
            }
            let valid = part.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
                && part.starts_with(|c: char| c.is_ascii_alphanumeric())
                && part.ends_with(|c: char| c.is_ascii_alphanumeric());
            if !valid {
                return Err(bad(format!(
                    "the path component {part:?} must hold only a-z, 0-9, '.', '_', '-' and start and end with a letter or digit"
                )));
            }
        }
        let library = if registry == "docker.io" && path.len() == 1 { "library/" } else { "" };
        let tag = match (tag, &digest) {
            (None, None) => Some("latest".to_string()),
            (tag, _) => tag.map(str::to_string),
        };
        Ok(Reference { repo: format!("{registry}/{library}{}", path.join("/")), tag, digest })
    }

    /// `repo:tag`, when it has a tag.
    pub(super) fn tagged(&self) -> Option<String> {
        self.tag.as_ref().map(|t| format!("{}:{t}", self.repo))
    }
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.repo)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// Normalises an image reference as containerd and crictl show it:
/// `busybox` -> `docker.io/library/busybox:latest`, `foo/bar:1` -> `docker.io/foo/bar:1`,
/// `localhost:5000/x` -> `localhost:5000/x:latest`; a `@sha256:...` digest is kept.
pub fn normalize_reference(r: &str) -> Result<String, ImageError> {
    Reference::parse(r).map(|r| r.to_string())
}

pub(super) fn is_hex(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}
