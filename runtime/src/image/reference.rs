//! Image references as containerd shows them (`docker.io/library/busybox:latest`).

use super::*;

/// A normalised image reference: `registry/repository[:tag][@sha256:hex]`, parsed by
/// the distribution grammar of `oci_spec` (the one `oci_client` pulls with), so what
/// is stored and what is pulled agree on every reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Reference(oci_client::Reference);

impl Reference {
    /// Parses and normalises the way docker and containerd do: `busybox` is
    /// `docker.io/library/busybox:latest`.
    pub(super) fn parse(reference: &str) -> Result<Self, ImageError> {
        let bad = |why: String| ImageError::BadReference { reference: reference.to_string(), why };
        if reference.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("it contains whitespace".into()));
        }
        let parsed = oci_client::Reference::try_from(reference).map_err(|e| {
            let name = reference.split('@').next().unwrap_or_default();
            let name = name.rsplit_once(':').filter(|(_, tag)| !tag.contains('/')).map_or(name, |(n, _)| n);
            // The grammar's one "invalid reference format" hides the commonest mistake.
            let hint = match name.split_once('/') {
                Some((_, path)) if path.contains(|c: char| c.is_ascii_uppercase()) => ": repository names must be lowercase",
                None if name.contains(|c: char| c.is_ascii_uppercase()) => ": repository names must be lowercase",
                _ => "",
            };
            bad(format!("{e}{hint}; the form is [registry[:port]/]path[:tag][@sha256:<64 hex digits>]"))
        })?;
        // Images are stored and verified by sha256 only.
        if let Some(digest) = parsed.digest() {
            if !digest.strip_prefix("sha256:").is_some_and(|h| h.len() == 64 && is_hex(h)) {
                return Err(bad(format!("the digest {digest:?} after '@' is not sha256: and 64 lowercase hex digits")));
            }
        }
        Ok(Self(parsed))
    }

    /// The reference as the registry client takes it.
    pub(super) fn oci(&self) -> &oci_client::Reference {
        &self.0
    }

    /// `registry/repository`, e.g. `docker.io/library/busybox`.
    pub(super) fn repo(&self) -> String {
        format!("{}/{}", self.0.registry(), self.0.repository())
    }

    pub(super) fn digest(&self) -> Option<&str> {
        self.0.digest()
    }

    /// `repo:tag`, when it has a tag.
    pub(super) fn tagged(&self) -> Option<String> {
        self.0.tag().map(|t| format!("{}:{t}", self.repo()))
    }
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
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
