//! Image references as containerd shows them (`docker.io/library/busybox:latest`).

use super::*;

/// A normalised image reference: `registry/repository[:tag][@sha256:hex]`, parsed by
/// the distribution grammar (`distribution/reference/regexp.go`) and normalised as
/// docker does, then handed to `oci_client` in its parts, so what is stored and what
/// is pulled agree on every reference.
///
/// The grammar is checked here by hand rather than by `oci_spec`'s parser: its regex
/// takes a tag's `\w` as Unicode (Go's is ASCII), and compiling it costs 4.2 MB that
/// stay in the daemon for good, an eighth of its resident memory.
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
        let parsed =
            parts(reference).map_err(|why| bad(format!("{why}; the form is [registry[:port]/]path[:tag][@sha256:<64 hex digits>]")))?;
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

/// The longest repository path docker takes.
const NAME_MAX: usize = 255;
/// The longest tag: a word character and up to 127 more.
const TAG_MAX: usize = 128;

/// A reference split by the distribution grammar and normalised: docker.io for a name
/// without a registry, `library/` for its one-part names, `latest` without tag or
/// digest. The error says which part broke the grammar.
fn parts(reference: &str) -> Result<oci_client::Reference, String> {
    let (rest, digest) = match reference.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (reference, None),
    };
    if let Some(d) = digest {
        if !is_digest(d) {
            return Err(format!("the digest {d:?} after '@' is not algorithm:hex (32 or more hex digits)"));
        }
    }
    let (name, tag) = match rest.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name, Some(tag)),
        _ => (rest, None),
    };
    if let Some(t) = tag {
        if !is_tag(t) {
            return Err(format!("the tag {t:?} is not a letter, digit or '_' followed by up to {} of those, '.' or '-'", TAG_MAX - 1));
        }
    }
    if name.is_empty() {
        return Err("the repository name is empty".into());
    }
    let components: Vec<&str> = name.split('/').collect();
    match components.as_slice() {
        [first, path @ ..] if !path.is_empty() && is_domain(first) && path.iter().all(|c| is_path_component(c)) => {}
        all if all.iter().all(|c| is_path_component(c)) => {}
        all => {
            // The commonest mistake is said as such (a registry's name may have capitals).
            let path = if all.len() > 1 { &all[1..] } else { all };
            let upper = path.iter().any(|c| c.contains(|c: char| c.is_ascii_uppercase()));
            let hint = if upper { ": repository names must be lowercase" } else { "" };
            return Err(format!(
                "invalid reference format: {name:?} is not [registry[:port]/]path, the path being lowercase letters and digits between '/', '.', '_', '__' or '-'{hint}"
            ));
        }
    };
    // As docker: the first of two or more parts is a registry if it looks like a host
    // (even `a_b.io`, which the grammar reads as a path).
    let (mut registry, mut repository) = match name.split_once('/') {
        Some((r, path)) if r.contains(['.', ':']) || r == "localhost" => (r.to_string(), path.to_string()),
        _ => ("docker.io".to_string(), name.to_string()),
    };
    if registry == "index.docker.io" {
        registry = "docker.io".into();
    }
    if registry == "docker.io" && !repository.contains('/') {
        repository = format!("library/{repository}");
    }
    if repository.len() > NAME_MAX {
        return Err(format!("the repository name is {} bytes; the limit is {NAME_MAX}", repository.len()));
    }
    let tag = tag.map(str::to_string);
    Ok(match (tag, digest) {
        (Some(tag), Some(digest)) => oci_client::Reference::with_tag_and_digest(registry, repository, tag, digest.to_string()),
        (None, Some(digest)) => oci_client::Reference::with_digest(registry, repository, digest.to_string()),
        (tag, None) => oci_client::Reference::with_tag(registry, repository, tag.unwrap_or_else(|| "latest".into())),
    })
}

/// `[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]`, joined by '.', then `:port`.
fn is_domain(s: &str) -> bool {
    let (host, port) = match s.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (s, None),
    };
    let label = |l: &str| {
        let b = l.as_bytes();
        !b.is_empty()
            && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
    };
    host.split('.').all(label) && port.is_none_or(|p| !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit()))
}

/// `[a-z0-9]+` runs joined by '.', '_', '__' or any number of '-'.
fn is_path_component(s: &str) -> bool {
    let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let b = s.as_bytes();
    if !b.first().is_some_and(alnum) || !b.last().is_some_and(alnum) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(&b[i]) {
            i += 1;
            continue;
        }
        let run = b[i..].iter().take_while(|c| !alnum(c)).count();
        let sep = &b[i..i + run];
        if !(sep == b"." || sep == b"_" || sep == b"__" || sep.iter().all(|c| *c == b'-')) {
            return false;
        }
        i += run;
    }
    true
}

/// `[\w][\w.-]{0,127}`, `\w` being ASCII as in Go.
fn is_tag(s: &str) -> bool {
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let b = s.as_bytes();
    b.len() <= TAG_MAX && b.first().is_some_and(|c| word(*c)) && b.iter().all(|c| word(*c) || *c == b'.' || *c == b'-')
}

/// `[A-Za-z][A-Za-z0-9]*([-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}`.
fn is_digest(s: &str) -> bool {
    let Some((algorithm, hex)) = s.split_once(':') else { return false };
    let part = |p: &str| p.as_bytes().first().is_some_and(u8::is_ascii_alphabetic) && p.bytes().all(|c| c.is_ascii_alphanumeric());
    algorithm.split(['-', '_', '+', '.']).all(part) && hex.len() >= 32 && hex.bytes().all(|c| c.is_ascii_hexdigit())
}

pub(super) fn is_hex(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}
