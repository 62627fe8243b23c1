//! The local image store: OCI images imported from image layouts (a directory, or a
//! tar archive of one) or pulled from registries ([`pull`], with per-registry mirrors:
//! [`RegistryMirror`]), kept as unpacked layers that containers stack read-only with
//! overlayfs.
//!
//! # Layout
//!
//! - `<dir>/layers/<hex>/`: the unpacked tree of layer blob `sha256:<hex>`, whiteouts
//!   already in overlayfs' form. Shared by every image that has the layer, never changed
//!   once it is renamed into place, deleted when no image uses it any more.
//! - `<dir>/images/<hex>.json`: an [`Image`] record, `<hex>` being its config digest.
//! - `<dir>/lock`: an flock that writers (import, add, remove) hold for their whole
//!   run. Readers (get, list) go without it: every file is replaced atomically.
//! - `<dir>/tmp/`: archives being imported.
//!
//! # Example
//!
//! ```no_run
//! use minipod_runtime::ImageStore;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = ImageStore::open(minipod_runtime::image::DEFAULT_DIR)?;
//! let image = store.import("busybox-oci.tar".as_ref(), Some("busybox:1.36"))?;
//! // overlayfs wants the top layer first: lowerdir=top:...:bottom
//! let lower = store.lower_dirs(&image);
//! # Ok(())
//! # }
//! ```

mod layer;
mod layout;
mod pull;
mod records;
mod reference;

use layout::{extract_archive, single_subdir, Layout, TmpDir};
pub use pull::{pull, Credentials, PullOptions, RegistryMirror};
pub use reference::normalize_reference;
use reference::{is_hex, Reference};

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use oci_spec::image::{Arch, Descriptor, ImageConfiguration, ImageIndex, ImageManifest, Os};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tracing::{info, warn};

/// Where callers keep the store unless told otherwise.
pub const DEFAULT_DIR: &str = "/var/lib/minipod/images";

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// The annotation naming an image in an OCI layout's index.json.
const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// containerd's exports put the full name here and only the tag in [`REF_NAME`].
const CONTAINERD_NAME: &str = "io.containerd.image.name";

/// An image store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image {reference} is not in the store at {}", dir.display())]
    NotFound { reference: String, dir: PathBuf },
    #[error("{prefix} is the start of {} image ids in {} ({}): give more of the id", ids.len(), dir.display(), ids.join(", "))]
    Ambiguous { prefix: String, dir: PathBuf, ids: Vec<String> },
    #[error("{} is not an OCI image layout: {why}", path.display())]
    NotALayout { path: PathBuf, why: String },
    #[error("{what} has media type {media_type}, which minipod does not support (it reads {supported})")]
    UnsupportedMediaType { what: String, media_type: String, supported: &'static str },
    #[error("{what} has digest {digest}: minipod verifies only sha256 digests")]
    UnsupportedDigest { what: String, digest: String },
    #[error("blob {digest} is corrupt: its content hashes to {actual}; fetch or export the image again")]
    DigestMismatch { digest: String, actual: String },
    #[error("pulling {reference}: {why}")]
    Pull { reference: String, why: String },
    #[error("invalid image reference {reference:?}: {why}")]
    BadReference { reference: String, why: String },
    #[error("config blob {digest} is not an OCI image config")]
    BadConfig {
        digest: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("layer {digest} cannot be unpacked safely: {why}")]
    BadLayer { digest: String, why: String },
    #[error("{what} {}", path.display())]
    Io {
        what: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("parsing {}", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

fn io_err(what: impl Into<String>, path: &Path) -> impl FnOnce(io::Error) -> ImageError {
    let (what, path) = (what.into(), path.to_path_buf());
    move |source| ImageError::Io { what, path, source }
}

/// Gives the content of a blob (layer) given its descriptor: a file in a layout, or a
/// registry download.
pub type OpenBlob<'a> = dyn FnMut(&Descriptor) -> Result<Box<dyn Read>, ImageError> + 'a;

/// One image in the store.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Image {
    /// `sha256:<hex>` of its config blob, as docker and containerd show it.
    pub id: String,
    /// Normalised `registry/repo:tag` names, e.g. `docker.io/library/busybox:latest`.
    pub repo_tags: Vec<String>,
    /// `registry/repo@sha256:<hex>`: the manifest (or index) a registry serves for it.
    pub repo_digests: Vec<String>,
    /// Layer blob digests, bottom layer first.
    pub layers: Vec<String>,
    /// Sum of the layer blob sizes (compressed, as the registry stores them).
    pub size: u64,
    /// What a container of this image runs, by default.
    pub config: ImageConfig,
}

/// The parts of an image's config that decide how its containers run.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ImageConfig {
    /// The command's fixed first words (`ENTRYPOINT`).
    pub entrypoint: Vec<String>,
    /// The default command, or the entrypoint's default arguments (`CMD`).
    pub cmd: Vec<String>,
    /// `NAME=value` environment of the process.
    pub env: Vec<String>,
    /// The process's working directory, when the image sets one.
    pub working_dir: Option<String>,
    /// `user[:group]` by name or number, when the image sets one.
    pub user: Option<String>,
    /// The image's labels.
    pub labels: BTreeMap<String, String>,
    /// The signal that asks the process to stop (e.g. `SIGQUIT`), when not SIGTERM.
    pub stop_signal: Option<String>,
}

impl ImageConfig {
    fn from_oci(config: &ImageConfiguration) -> Self {
        let Some(c) = config.config() else {
            return Self::default();
        };
        let non_empty = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
        ImageConfig {
            entrypoint: c.entrypoint().clone().unwrap_or_default(),
            cmd: c.cmd().clone().unwrap_or_default(),
            env: c.env().clone().unwrap_or_default(),
            working_dir: non_empty(c.working_dir()),
            user: non_empty(c.user()),
            labels: c.labels().clone().unwrap_or_default().into_iter().collect(),
            stop_signal: non_empty(c.stop_signal()),
        }
    }
}

/// The image store at one directory.
#[derive(Debug, Clone)]
pub struct ImageStore {
    dir: PathBuf,
}

impl ImageStore {
    /// Opens (creating 0700) the store at dir (default used by callers: /var/lib/minipod/images).
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, ImageError> {
        let store = ImageStore { dir: dir.into() };
        for d in [store.dir.clone(), store.layers_dir(), store.images_dir(), store.tmp_dir()] {
            fs::DirBuilder::new().recursive(true).mode(0o700).create(&d).map_err(io_err("creating image store directory", &d))?;
        }
        Ok(store)
    }

    /// The directory the store lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Imports an OCI image layout directory, or a tar archive (plain or gzip, detected by magic bytes) holding one.
    /// `reference` names the image (overrides the layout's org.opencontainers.image.ref.name annotation);
    /// with neither, the image is stored untagged (by id only).
    pub fn import(&self, path: &Path, reference: Option<&str>) -> Result<Image, ImageError> {
        // Checked before anything is unpacked.
        if let Some(r) = reference {
            Reference::parse(r)?;
        }
        let md = fs::metadata(path).map_err(io_err("reading image to import", path))?;
        let _lock = self.lock()?;
        self.clean_leftovers();
        if md.is_dir() {
            return self.import_layout(&Layout { root: path.to_path_buf(), shown: path.to_path_buf() }, reference);
        }
        let tmp = TmpDir::create(self.tmp_dir().join(format!("import-{}", std::process::id())))?;
        extract_archive(path, tmp.path())?;
        // Some tools put the layout in a directory of its own inside the archive.
        let root = match single_subdir(tmp.path()) {
            Some(sub) if !tmp.path().join("index.json").exists() => sub,
            _ => tmp.path().to_path_buf(),
        };
        self.import_layout(&Layout { root, shown: path.to_path_buf() }, reference)
    }

    /// Stores an image given its manifest and config, fetching each layer blob it does not have yet through
    /// `open_blob` (the registry pull of a later issue will use this; import uses it too). Verifies each
    /// blob's sha256 against its descriptor while unpacking, and the config's.
    ///
    /// `manifest_digest` is the digest a registry serves for the image: the manifest's,
    /// or the index's when the image came out of a multi-platform index.
    pub fn add(
        &self,
        manifest: &ImageManifest,
        manifest_digest: &str,
        config: &[u8],
        open_blob: &mut OpenBlob<'_>,
        reference: Option<&str>,
    ) -> Result<Image, ImageError> {
        let _lock = self.lock()?;
        self.clean_leftovers();
        self.add_locked(manifest, manifest_digest, config, open_blob, reference)
    }

    /// By reference (normalised the same way) or by id: full `sha256:<hex>`, bare hex, or a unique hex prefix of at least 12.
    pub fn get(&self, reference: &str) -> Result<Image, ImageError> {
        self.resolve(reference).map(|(image, _)| image)
    }

    /// Every image in the store, tagged ones by name, then the untagged by id.
    pub fn list(&self) -> Result<Vec<Image>, ImageError> {
        let mut images = self.records()?.into_iter().collect::<Result<Vec<_>, _>>()?;
        images.sort_by(|a, b| {
            (a.repo_tags.is_empty(), a.repo_tags.first(), &a.id).cmp(&(b.repo_tags.is_empty(), b.repo_tags.first(), &b.id))
        });
        Ok(images)
    }

    /// Removes a tag; an image whose last tag goes (or removed by id) is deleted, and layers no image uses any more are deleted.
    ///
    /// A digest reference (`repo@sha256:...`) deletes the image as an id does.
    pub fn remove(&self, reference: &str) -> Result<(), ImageError> {
        let _lock = self.lock()?;
        let (mut image, by) = self.resolve(reference)?;
        match by {
            Resolved::Tag(tag) => {
                image.repo_tags.retain(|t| *t != tag);
                if image.repo_tags.is_empty() {
                    self.delete_record(&image)?;
                } else {
                    self.write_record(&image)?;
                }
            }
            Resolved::Id | Resolved::Digest => self.delete_record(&image)?,
        }
        self.collect_layers()
    }

    /// The unpacked layer directories of `image`, top layer first (the order overlayfs' lowerdir= wants).
    ///
    /// A layer listed twice appears once, at its topmost place: the view is the same, and
    /// overlayfs may refuse a directory given twice.
    pub fn lower_dirs(&self, image: &Image) -> Vec<PathBuf> {
        let mut seen = HashSet::new();
        image
            .layers
            .iter()
            .rev()
            .filter(|d| seen.insert(d.as_str()))
            .map(|d| self.layers_dir().join(d.trim_start_matches("sha256:")))
            .collect()
    }

    /// Whether the layer blob `sha256:<hex>` is unpacked already.
    pub fn has_layer(&self, hex: &str) -> bool {
        !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()) && self.dir.join("layers").join(hex).is_dir()
    }

    fn add_locked(
        &self,
        manifest: &ImageManifest,
        manifest_digest: &str,
        config: &[u8],
        open_blob: &mut OpenBlob<'_>,
        reference: Option<&str>,
    ) -> Result<Image, ImageError> {
        let reference = reference.map(Reference::parse).transpose()?;
        if let Some(digest) = reference.as_ref().and_then(Reference::digest) {
            if digest != manifest_digest {
                return Err(ImageError::BadReference {
                    reference: reference.as_ref().map(Reference::to_string).unwrap_or_default(),
                    why: format!("it names digest {digest}, but the image's is {manifest_digest}"),
                });
            }
        }

        // Validate everything that can be checked before fetching a byte.
        let config_desc = manifest.config();
        let config_type = config_desc.media_type().to_string();
        if config_type != OCI_CONFIG && config_type != DOCKER_CONFIG {
            return Err(ImageError::UnsupportedMediaType {
                what: format!("config {} of manifest {manifest_digest}", config_desc.digest()),
                media_type: config_type,
                supported: "OCI and docker image configs (this may be an artifact, not an image)",
            });
        }
        let actual = sha256_digest(config);
        if actual != config_desc.digest().as_ref() {
            return Err(ImageError::DigestMismatch { digest: config_desc.digest().to_string(), actual });
        }
        let oci_config: ImageConfiguration =
            serde_json::from_slice(config).map_err(|source| ImageError::BadConfig { digest: actual.clone(), source })?;
        if *oci_config.os() != Os::Linux || *oci_config.architecture() != Arch::default() {
            warn!(image = %actual, os = %oci_config.os(), arch = %oci_config.architecture(), host = %Arch::default(), "the image is for another platform: its programs may not run here");
        }
        for desc in manifest.layers() {
            layer::compression(desc)?;
            if desc.as_digest_sha256().is_none() {
                return Err(ImageError::UnsupportedDigest { what: "layer".into(), digest: desc.digest().to_string() });
            }
        }

        for desc in manifest.layers() {
            let dir = self.layers_dir().join(desc.as_digest_sha256().unwrap_or_default());
            if dir.exists() {
                continue;
            }
            let blob = open_blob(desc)?;
            layer::unpack(&self.layers_dir(), desc, blob)?;
            info!(layer = %desc.digest(), size = desc.size(), "unpacked layer");
        }

        let id = actual;
        let mut image = match self.load_record(&id) {
            Ok(existing) => existing,
            Err(ImageError::NotFound { .. }) => {
                Image { id: id.clone(), repo_tags: vec![], repo_digests: vec![], layers: vec![], size: 0, config: ImageConfig::default() }
            }
            Err(e) => {
                warn!(error = %e, "replacing an unreadable image record");
                Image { id: id.clone(), repo_tags: vec![], repo_digests: vec![], layers: vec![], size: 0, config: ImageConfig::default() }
            }
        };
        image.layers = manifest.layers().iter().map(|d| d.digest().to_string()).collect();
        image.size = manifest.layers().iter().map(Descriptor::size).sum();
        image.config = ImageConfig::from_oci(&oci_config);
        let tag = reference.as_ref().and_then(Reference::tagged);
        if let Some(tag) = &tag {
            if !image.repo_tags.contains(tag) {
                image.repo_tags.push(tag.clone());
            }
        }
        if let Some(r) = &reference {
            let repo_digest = format!("{}@{manifest_digest}", r.repo());
            if !image.repo_digests.contains(&repo_digest) {
                image.repo_digests.push(repo_digest);
            }
        }
        self.write_record(&image)?;

        // The tag moves here, as `docker tag` moves it. The new record is written first:
        // a crash in between leaves the tag on two images rather than on none.
        if let Some(tag) = &tag {
            for mut other in self.readable_records() {
                if other.id == image.id || !other.repo_tags.contains(tag) {
                    continue;
                }
                other.repo_tags.retain(|t| t != tag);
                if other.repo_tags.is_empty() {
                    info!(image = %other.id, tag = %tag, "the tag moved to {}, the image it left has no tag left: deleting it", image.id);
                    self.delete_record(&other)?;
                } else {
                    self.write_record(&other)?;
                }
            }
        }
        self.collect_layers()?;
        Ok(image)
    }

    /// The image `reference` names, and how it named it.
    fn resolve(&self, reference: &str) -> Result<(Image, Resolved), ImageError> {
        let hex_part = reference.strip_prefix("sha256:").unwrap_or(reference);
        if is_hex(hex_part) && hex_part.len() == 64 {
            return Ok((self.load_record(hex_part)?, Resolved::Id));
        }
        if reference.starts_with("sha256:") {
            return Ok((self.by_prefix(reference, hex_part)?, Resolved::Id));
        }
        let parse_error = match Reference::parse(reference) {
            Ok(r) => {
                let records = self.readable_records();
                if let Some(digest) = r.digest() {
                    let repo_digest = format!("{}@{digest}", r.repo());
                    if let Some(image) = records.into_iter().find(|i| i.repo_digests.contains(&repo_digest)) {
                        return Ok((image, Resolved::Digest));
                    }
                } else if let Some(tag) = r.tagged() {
                    if let Some(image) = records.into_iter().find(|i| i.repo_tags.contains(&tag)) {
                        return Ok((image, Resolved::Tag(tag)));
                    }
                }
                None
            }
            Err(e) => Some(e),
        };
        if is_hex(reference) && reference.len() >= 12 {
            return Ok((self.by_prefix(reference, reference)?, Resolved::Id));
        }
        match parse_error {
            Some(e) => Err(e),
            None => Err(ImageError::NotFound { reference: reference.to_string(), dir: self.dir.clone() }),
        }
    }

    fn by_prefix(&self, reference: &str, prefix: &str) -> Result<Image, ImageError> {
        if !is_hex(prefix) || prefix.len() < 12 {
            return Err(ImageError::BadReference {
                reference: reference.to_string(),
                why: "an image id is 64 lowercase hex digits, or a unique prefix of at least 12".into(),
            });
        }
        let dir = self.images_dir();
        let entries = fs::read_dir(&dir).map_err(io_err("listing image records in", &dir))?;
        let mut ids = vec![];
        for entry in entries {
            let entry = entry.map_err(io_err("listing image records in", &dir))?;
            if let Some(hex) = entry.file_name().to_str().and_then(|n| n.strip_suffix(".json")) {
                if hex.starts_with(prefix) && !hex.starts_with('.') {
                    ids.push(format!("sha256:{hex}"));
                }
            }
        }
        match ids.len() {
            0 => Err(ImageError::NotFound { reference: reference.to_string(), dir: self.dir.clone() }),
            1 => self.load_record(&ids[0]),
            _ => {
                ids.sort();
                Err(ImageError::Ambiguous { prefix: reference.to_string(), dir: self.dir.clone(), ids })
            }
        }
    }
}

/// How a reference named an image: by tag (removing it removes only the tag), or by
/// something that names the image itself.
enum Resolved {
    Tag(String),
    Id,
    Digest,
}

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// `sha256:<hex>` of `data`, the form OCI descriptors give digests in.
pub(crate) fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(data)))
}

#[cfg(test)]
mod tests;
