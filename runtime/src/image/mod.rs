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
mod pull;

pub use pull::{pull, Credentials, PullOptions, RegistryMirror};

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
    #[error("image {reference} is not in the store at {}: import it with `minipod image import PATH` or pull it", dir.display())]
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

    fn layers_dir(&self) -> PathBuf {
        self.dir.join("layers")
    }

    fn images_dir(&self) -> PathBuf {
        self.dir.join("images")
    }

    fn tmp_dir(&self) -> PathBuf {
        self.dir.join("tmp")
    }

    fn record_path(&self, id: &str) -> PathBuf {
        self.images_dir().join(format!("{}.json", id.trim_start_matches("sha256:")))
    }

    /// Waits for the other writers of this store (in this or another process) to finish.
    fn lock(&self) -> Result<Flock<File>, ImageError> {
        let path = self.dir.join("lock");
        let file =
            fs::OpenOptions::new().create(true).truncate(false).write(true).mode(0o600).open(&path).map_err(io_err("opening", &path))?;
        Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| io_err("locking", &path)(errno.into()))
    }

    /// Removes what a crashed writer left: half-unpacked or half-deleted layers, half-written
    /// records, extracted archives. Only ever called with the lock held, so none of
    /// them belongs to a writer still at work.
    fn clean_leftovers(&self) {
        let scratch = |dir: PathBuf, is_leftover: fn(&str) -> bool| {
            let Ok(entries) = fs::read_dir(&dir) else { return };
            for entry in entries.flatten() {
                let name = entry.file_name();
                if !is_leftover(&name.to_string_lossy()) {
                    continue;
                }
                let path = entry.path();
                let removed = if path.is_dir() { fs::remove_dir_all(&path) } else { fs::remove_file(&path) };
                match removed {
                    Ok(()) => info!(path = %path.display(), "removed the leftover of an interrupted image store write"),
                    Err(e) => warn!(path = %path.display(), error = %e, "cannot remove the leftover of an interrupted image store write"),
                }
            }
        };
        scratch(self.layers_dir(), |n| n.starts_with(".tmp-"));
        scratch(self.images_dir(), |n| n.starts_with('.'));
        scratch(self.tmp_dir(), |_| true);
    }

    fn import_layout(&self, layout: &Layout, reference: Option<&str>) -> Result<Image, ImageError> {
        layout.check_header()?;
        let index_path = layout.root.join("index.json");
        let index: ImageIndex = read_json(&index_path, &layout.shown_path("index.json"))?;
        let top = choose(index.manifests(), &layout.shown_path("index.json"))?;

        let annotated = top.annotations().as_ref().and_then(|a| a.get(CONTAINERD_NAME).or_else(|| a.get(REF_NAME)));
        let reference = match (reference, annotated) {
            (Some(r), _) => Some(r.to_string()),
            (None, Some(name)) if !name.contains('/') && !name.contains(':') => {
                warn!(layout = %layout.shown.display(), name = %name, "the layout names its image only by the tag {name:?}, with no repository: storing it untagged; give a reference to name it");
                None
            }
            (None, Some(name)) => match Reference::parse(name) {
                Ok(_) => Some(name.clone()),
                Err(e) => {
                    warn!(layout = %layout.shown.display(), error = %e, "the layout's image name is not a valid reference: storing it untagged; give a reference to name it");
                    None
                }
            },
            (None, None) => None,
        };

        // Down through nested indexes (multi-platform images) to this host's manifest.
        let mut desc = top.clone();
        let manifest: ImageManifest = loop {
            let media_type = desc.media_type().to_string();
            match media_type.as_str() {
                OCI_INDEX | DOCKER_MANIFEST_LIST => {
                    let (path, data) = layout.read_blob(&desc, "image index")?;
                    let nested: ImageIndex =
                        serde_json::from_slice(&data).map_err(|source| ImageError::Json { path: path.clone(), source })?;
                    desc = choose(nested.manifests(), &path)?.clone();
                }
                OCI_MANIFEST | DOCKER_MANIFEST => {
                    let (path, data) = layout.read_blob(&desc, "image manifest")?;
                    break serde_json::from_slice(&data).map_err(|source| ImageError::Json { path, source })?;
                }
                other => {
                    return Err(ImageError::UnsupportedMediaType {
                        what: format!("{} entry {}", layout.shown_path("index.json").display(), desc.digest()),
                        media_type: other.to_string(),
                        supported: "OCI and docker v2 image manifests and indexes",
                    })
                }
            }
        };
        let (_, config) = layout.read_blob(manifest.config(), "image config")?;
        let mut open_blob = |d: &Descriptor| -> Result<Box<dyn Read>, ImageError> {
            let path = layout.blob_path(d, "layer")?;
            let file = File::open(&path).map_err(io_err("opening layer blob", &layout.shown_blob(d)))?;
            Ok(Box::new(file))
        };
        self.add_locked(&manifest, top.digest().as_ref(), &config, &mut open_blob, reference.as_deref())
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
        if let Some(digest) = reference.as_ref().and_then(|r| r.digest.as_deref()) {
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
            let repo_digest = format!("{}@{manifest_digest}", r.repo);
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
                if let Some(digest) = &r.digest {
                    let repo_digest = format!("{}@{digest}", r.repo);
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

    fn load_record(&self, id: &str) -> Result<Image, ImageError> {
        let path = self.record_path(id);
        match fs::read(&path) {
            Ok(data) => serde_json::from_slice(&data).map_err(|source| ImageError::Json { path, source }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(ImageError::NotFound { reference: format!("sha256:{}", id.trim_start_matches("sha256:")), dir: self.dir.clone() })
            }
            Err(e) => Err(io_err("reading image record", &path)(e)),
        }
    }

    /// Every record, each parsed or the error that stopped it.
    fn records(&self) -> Result<Vec<Result<Image, ImageError>>, ImageError> {
        let dir = self.images_dir();
        let entries = fs::read_dir(&dir).map_err(io_err("listing image records in", &dir))?;
        let mut records = vec![];
        for entry in entries {
            let entry = entry.map_err(io_err("listing image records in", &dir))?;
            let name = entry.file_name();
            let Some(hex) = name.to_str().and_then(|n| n.strip_suffix(".json")).filter(|h| is_hex(h)) else {
                continue;
            };
            match self.load_record(hex) {
                // Deleted since the listing.
                Err(ImageError::NotFound { .. }) => {}
                r => records.push(r),
            }
        }
        Ok(records)
    }

    /// The records that can be read, for lookups that must not fail because of one bad
    /// file; the others are logged.
    fn readable_records(&self) -> Vec<Image> {
        let records = match self.records() {
            Ok(records) => records,
            Err(e) => {
                warn!(error = %e, "cannot list image records");
                return vec![];
            }
        };
        records
            .into_iter()
            .filter_map(|r| {
                r.map_err(|e| warn!(error = %e, "skipping an unreadable image record: remove it and import the image again")).ok()
            })
            .collect()
    }

    /// Replaces the record of `image`, so that readers see the old or the new one, and
    /// a crash leaves one or the other on disk.
    fn write_record(&self, image: &Image) -> Result<(), ImageError> {
        let path = self.record_path(&image.id);
        let err = |source| ImageError::Io { what: "writing image record".into(), path: path.clone(), source };
        crate::netstack::record::write_json(&path, image, crate::netstack::record::Durability::Durable).map_err(err)
    }

    fn delete_record(&self, image: &Image) -> Result<(), ImageError> {
        let path = self.record_path(&image.id);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("deleting image record", &path)(e)),
            _ => Ok(()),
        }
    }

    /// Deletes the layers no record uses. Keeps them all when a record cannot be read,
    /// since it might be the one that uses them.
    fn collect_layers(&self) -> Result<(), ImageError> {
        let records = match self.records().and_then(|r| r.into_iter().collect::<Result<Vec<_>, _>>()) {
            Ok(records) => records,
            Err(e) => {
                warn!(error = %e, "an image record is unreadable: keeping every layer");
                return Ok(());
            }
        };
        let used: HashSet<&str> = records.iter().flat_map(|i| &i.layers).map(|d| d.trim_start_matches("sha256:")).collect();
        let dir = self.layers_dir();
        let entries = fs::read_dir(&dir).map_err(io_err("listing layers in", &dir))?;
        for entry in entries {
            let entry = entry.map_err(io_err("listing layers in", &dir))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') || used.contains(&*name) {
                continue;
            }
            // Renamed away first: a half-deleted directory under the layer's own name
            // would be taken for the complete layer by the next import.
            let doomed = dir.join(format!(".tmp-del-{name}-{}", std::process::id()));
            fs::rename(entry.path(), &doomed).map_err(io_err("deleting unused layer", &entry.path()))?;
            fs::remove_dir_all(&doomed).map_err(io_err("deleting unused layer", &doomed))?;
            info!(layer = %name, "deleted a layer no image uses");
        }
        Ok(())
    }
}

/// How a reference named an image: by tag (removing it removes only the tag), or by
/// something that names the image itself.
enum Resolved {
    Tag(String),
    Id,
    Digest,
}

/// An OCI image layout on disk, possibly extracted from an archive.
struct Layout {
    root: PathBuf,
    /// What the user gave, for messages (an extracted archive's root is a temp dir).
    shown: PathBuf,
}

impl Layout {
    fn shown_path(&self, rel: &str) -> PathBuf {
        self.shown.join(rel)
    }

    fn shown_blob(&self, desc: &Descriptor) -> PathBuf {
        let digest = desc.digest();
        self.shown.join("blobs").join(digest.algorithm().as_ref()).join(digest.digest())
    }

    /// Checks the `oci-layout` header file, telling a docker-save archive apart.
    fn check_header(&self) -> Result<(), ImageError> {
        let not_a_layout = |why: String| ImageError::NotALayout { path: self.shown.clone(), why };
        let header = self.root.join("oci-layout");
        if !header.exists() {
            if self.root.join("manifest.json").exists() && !self.root.join("index.json").exists() {
                return Err(not_a_layout(
                    "it is in `docker save` format, which minipod cannot import yet: convert it with \
                     `skopeo copy docker-archive:PATH oci:DIR` and import DIR"
                        .into(),
                ));
            }
            return Err(not_a_layout("it has no oci-layout file".into()));
        }
        #[derive(Deserialize)]
        struct Header {
            #[serde(rename = "imageLayoutVersion")]
            version: String,
        }
        let header: Header = read_json(&header, &self.shown_path("oci-layout"))?;
        if !header.version.starts_with("1.") {
            return Err(not_a_layout(format!("its imageLayoutVersion is {:?}; minipod reads version 1.0.0", header.version)));
        }
        Ok(())
    }

    fn blob_path(&self, desc: &Descriptor, what: &str) -> Result<PathBuf, ImageError> {
        // Digest parsing already refused anything but [a-z0-9+._-] and [a-zA-Z0-9=_-],
        // so neither part can climb out of blobs/.
        let Some(hex) = desc.as_digest_sha256() else {
            return Err(ImageError::UnsupportedDigest { what: what.to_string(), digest: desc.digest().to_string() });
        };
        let path = self.root.join("blobs/sha256").join(hex);
        if is_special(&path) {
            return Err(ImageError::NotALayout {
                path: self.shown.clone(),
                why: format!("its {what} blob {} is not a regular file", desc.digest()),
            });
        }
        Ok(path)
    }

    /// Reads a small (JSON) blob whole and checks it against its digest.
    fn read_blob(&self, desc: &Descriptor, what: &str) -> Result<(PathBuf, Vec<u8>), ImageError> {
        let path = self.blob_path(desc, what)?;
        let shown = self.shown_blob(desc);
        let data = fs::read(&path).map_err(io_err(format!("reading {what}"), &shown))?;
        let actual = sha256_digest(&data);
        if actual != desc.digest().as_ref() {
            return Err(ImageError::DigestMismatch { digest: desc.digest().to_string(), actual });
        }
        Ok((shown, data))
    }
}

/// The one entry of an index to import: the first for linux on this host's architecture,
/// else the only one that names no platform.
fn choose<'a>(entries: &'a [Descriptor], index: &Path) -> Result<&'a Descriptor, ImageError> {
    let host = Arch::default();
    if let Some(d) = entries.iter().find(|d| d.platform().as_ref().is_some_and(|p| *p.os() == Os::Linux && *p.architecture() == host)) {
        return Ok(d);
    }
    let unnamed: Vec<_> = entries.iter().filter(|d| d.platform().is_none()).collect();
    match unnamed[..] {
        [one] => Ok(one),
        [] if entries.is_empty() => Err(ImageError::NotALayout { path: index.to_path_buf(), why: "it lists no image".into() }),
        [] => {
            let platforms: Vec<_> =
                entries.iter().filter_map(|d| d.platform().as_ref()).map(|p| format!("{}/{}", p.os(), p.architecture())).collect();
            Err(ImageError::NotALayout {
                path: index.to_path_buf(),
                why: format!("it has no image for linux/{host}, only for {}", platforms.join(", ")),
            })
        }
        _ => {
            let names: Vec<_> = unnamed
                .iter()
                .map(|d| d.annotations().as_ref().and_then(|a| a.get(REF_NAME)).cloned().unwrap_or_else(|| d.digest().to_string()))
                .collect();
            Err(ImageError::NotALayout {
                path: index.to_path_buf(),
                why: format!(
                    "it holds {} images ({}) and minipod imports one: copy it into a layout of its own with \
                     `skopeo copy oci:DIR:NAME oci:NEWDIR`",
                    names.len(),
                    names.join(", ")
                ),
            })
        }
    }
}

/// Reads `path` as JSON, naming `shown` in errors.
fn read_json<T: serde::de::DeserializeOwned>(path: &Path, shown: &Path) -> Result<T, ImageError> {
    if is_special(path) {
        return Err(ImageError::NotALayout { path: shown.to_path_buf(), why: "it is not a regular file".into() });
    }
    let data = fs::read(path).map_err(io_err("reading", shown))?;
    serde_json::from_slice(&data).map_err(|source| ImageError::Json { path: shown.to_path_buf(), source })
}

/// Extracts a tar archive, gzipped or not, into `dest`.
fn extract_archive(path: &Path, dest: &Path) -> Result<(), ImageError> {
    let file = File::open(path).map_err(io_err("opening image archive", path))?;
    let mut reader = BufReader::new(file);
    let gzip = reader.fill_buf().map_err(io_err("reading image archive", path))?.starts_with(&[0x1f, 0x8b]);
    let stream: Box<dyn Read> = if gzip { Box::new(flate2::read::MultiGzDecoder::new(reader)) } else { Box::new(reader) };
    let mut archive = tar::Archive::new(stream);
    archive.unpack(dest).map_err(|e| ImageError::NotALayout {
        path: path.to_path_buf(),
        why: format!("it is not a directory, and reading it as a tar archive failed: {e}"),
    })
}

/// Whether `path` exists but is no regular file. An archive can hold a fifo or a device
/// node where a blob should be, and reading one would block or never end.
fn is_special(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|md| !md.is_file())
}

/// The only entry of `dir`, if it is a directory.
fn single_subdir(dir: &Path) -> Option<PathBuf> {
    let mut entries = fs::read_dir(dir).ok()?;
    let only = entries.next()?.ok()?;
    (entries.next().is_none() && only.file_type().ok()?.is_dir()).then(|| only.path())
}

/// A directory removed with everything in it when dropped: scratch space that must not
/// outlive the operation that made it, also when it fails.
struct TmpDir(PathBuf);

impl TmpDir {
    fn create(path: PathBuf) -> Result<Self, ImageError> {
        fs::create_dir(&path).map_err(io_err("creating temporary directory", &path))?;
        Ok(TmpDir(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TmpDir {
    fn drop(&mut self) {
        match fs::remove_dir_all(&self.0) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                warn!(path = %self.0.display(), error = %e, "cannot remove temporary directory")
            }
            _ => {}
        }
    }
}

/// A normalised image reference: `registry/repository[:tag][@sha256:hex]`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Reference {
    /// `registry/path`, e.g. `docker.io/library/busybox`.
    repo: String,
    tag: Option<String>,
    digest: Option<String>,
}

impl Reference {
    /// Parses and normalises the way docker and containerd do: `busybox` is
    /// `docker.io/library/busybox:latest`.
    fn parse(reference: &str) -> Result<Self, ImageError> {
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
    fn tagged(&self) -> Option<String> {
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

fn is_hex(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
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
mod tests {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    use std::sync::atomic::{AtomicUsize, Ordering};

    use nix::mount::{mount, umount2, MntFlags, MsFlags};

    use super::*;
    use crate::busybox::write_oci_layout;

    /// A scratch directory under the system temp dir, removed with its contents on drop.
    struct TestDir(PathBuf);

    impl TestDir {
        fn new(name: &str) -> Self {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!("minipod-image-test-{name}-{}-{n}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            TestDir(dir)
        }
    }

    impl Drop for TestDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// Unpacking whiteouts needs mknod and trusted.* xattrs.
    fn is_root(test: &str) -> bool {
        let root = nix::unistd::geteuid().is_root();
        if !root {
            eprintln!("skipping {test}: needs root (mknod, trusted.* xattrs)");
        }
        root
    }

    fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
        let path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        let name = std::ffi::CString::new(name).unwrap();
        let mut buf = [0u8; 64];
        // SAFETY: both strings are NUL-terminated and buf is writable for its length.
        let n = unsafe { libc::lgetxattr(path.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        (n >= 0).then(|| buf[..n as usize].to_vec())
    }

    /// The manifest of the (single) image in a layout, as `write_oci_layout` writes it.
    fn manifest_of(layout: &Path) -> (ImageManifest, String) {
        let index: ImageIndex = serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
        let desc = &index.manifests()[0];
        let data = fs::read(layout.join("blobs/sha256").join(desc.as_digest_sha256().unwrap())).unwrap();
        (serde_json::from_slice(&data).unwrap(), desc.digest().to_string())
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    }

    #[test]
    fn references_normalise_as_containerd_shows_them() {
        let n = |r: &str| normalize_reference(r).unwrap();
        assert_eq!(n("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(n("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(n("foo/bar:1"), "docker.io/foo/bar:1");
        assert_eq!(n("localhost:5000/x"), "localhost:5000/x:latest");
        assert_eq!(n("localhost/x"), "localhost/x:latest");
        assert_eq!(n("quay.io/a/b/c:v1.0-rc_1"), "quay.io/a/b/c:v1.0-rc_1");
        assert_eq!(n("index.docker.io/library/busybox"), "docker.io/library/busybox:latest");
        assert_eq!(n("docker.io/library/busybox:latest"), "docker.io/library/busybox:latest");
        let digest = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(n(&format!("busybox@{digest}")), format!("docker.io/library/busybox@{digest}"));
        assert_eq!(n(&format!("r.io:443/x:1@{digest}")), format!("r.io:443/x:1@{digest}"));
        for bad in ["", "Busybox", "busy box", "a//b", "/a", "a/", "busybox:", "busybox:-x", "busybox@sha256:abc", "host:port/x", "-a/b"] {
            match normalize_reference(bad) {
                Err(ImageError::BadReference { reference, .. }) => assert_eq!(reference, bad),
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn docker_save_archive_is_refused_with_the_skopeo_way_out() {
        let dir = TestDir::new("docker-save");
        let store = ImageStore::open(dir.0.join("store")).unwrap();
        let save = dir.0.join("save");
        fs::create_dir_all(&save).unwrap();
        fs::write(save.join("manifest.json"), "[]").unwrap();
        let err = store.import(&save, None).unwrap_err();
        assert!(matches!(err, ImageError::NotALayout { .. }), "{err:?}");
        assert!(err.to_string().contains("skopeo copy docker-archive:"), "{err}");
        assert!(matches!(store.get("busybox"), Err(ImageError::NotFound { .. })));
    }

    #[test]
    fn imported_layout_is_unpacked_for_overlayfs_and_found_by_tag_and_id() {
        if !is_root("imported_layout_is_unpacked_for_overlayfs_and_found_by_tag_and_id") {
            return;
        }
        let dir = TestDir::new("import");
        let layout = dir.0.join("layout");
        write_oci_layout(&layout, "minipod.test/busybox:1.0").unwrap();
        let store = ImageStore::open(dir.0.join("store")).unwrap();

        let image = store.import(&layout, None).unwrap();
        assert_eq!(image.repo_tags, ["minipod.test/busybox:1.0"]);
        let (manifest, manifest_digest) = manifest_of(&layout);
        assert_eq!(image.repo_digests, [format!("minipod.test/busybox@{manifest_digest}")]);
        assert_eq!(image.layers.len(), 2);
        assert_eq!(image.id, manifest.config().digest().to_string());
        assert_eq!(image.size, manifest.layers().iter().map(|d| d.size()).sum::<u64>());
        assert_eq!(image.config.cmd, ["sh"]);
        assert_eq!(image.config.working_dir.as_deref(), Some("/"));

        let lower = store.lower_dirs(&image);
        let layer_dir = |digest: &str| store.dir().join("layers").join(digest.trim_start_matches("sha256:"));
        assert_eq!(lower, [layer_dir(&image.layers[1]), layer_dir(&image.layers[0])], "top layer first");
        let (top, base) = (&lower[0], &lower[1]);
        let motd = fs::symlink_metadata(top.join("etc/motd")).unwrap();
        assert!(motd.file_type().is_char_device() && motd.rdev() == 0, "etc/motd is a 0:0 whiteout");
        assert_eq!(xattr(&top.join("opt/gone"), "trusted.overlay.opaque").as_deref(), Some(&b"y"[..]));
        assert!(!top.join("etc/.wh.motd").exists() && !top.join("opt/gone/.wh..wh..opq").exists());
        assert_eq!(fs::read_to_string(top.join("etc/image-release")).unwrap(), "minipod test image\n");
        assert!(base.join("bin/busybox").is_file() && base.join("opt/gone/old").is_file());
        assert_eq!(fs::symlink_metadata(base.join("bin/busybox")).unwrap().uid(), 0);

        assert_eq!(store.get("minipod.test/busybox:1.0").unwrap(), image);
        assert_eq!(store.get(&image.id).unwrap(), image);
        let hex = image.id.trim_start_matches("sha256:");
        assert_eq!(store.get(hex).unwrap(), image);
        assert_eq!(store.get(&hex[..12]).unwrap(), image);
        assert!(matches!(store.get(&hex[..11]), Err(ImageError::NotFound { .. })));
        assert!(matches!(store.get("minipod.test/busybox:2.0"), Err(ImageError::NotFound { .. })));

        // A second import finds both layers in place and unpacks nothing.
        let inodes = |dirs: &[PathBuf]| dirs.iter().map(|d| fs::metadata(d).unwrap().ino()).collect::<Vec<_>>();
        let before = inodes(&lower);
        let again = store.import(&layout, Some("busybox:again")).unwrap();
        assert_eq!(again.id, image.id);
        assert_eq!(store.lower_dirs(&again), lower);
        assert_eq!(inodes(&lower), before);
        assert_eq!(again.repo_tags, ["minipod.test/busybox:1.0", "docker.io/library/busybox:again"]);
        assert_eq!(store.list().unwrap(), std::slice::from_ref(&again));

        // Removing one tag keeps the image; removing the last deletes it and its layers.
        store.remove("busybox:again").unwrap();
        assert_eq!(store.get(&image.id).unwrap().repo_tags, ["minipod.test/busybox:1.0"]);
        store.remove("minipod.test/busybox:1.0").unwrap();
        assert!(matches!(store.get(&image.id), Err(ImageError::NotFound { .. })));
        assert!(store.list().unwrap().is_empty());
        assert!(names_in(&store.dir().join("layers")).is_empty());
        assert!(names_in(&store.dir().join("images")).is_empty());
    }

    #[test]
    fn tampered_layer_blob_is_refused_and_leaves_nothing_behind() {
        if !is_root("tampered_layer_blob_is_refused_and_leaves_nothing_behind") {
            return;
        }
        let dir = TestDir::new("tamper");
        let layout = dir.0.join("layout");
        write_oci_layout(&layout, "minipod.test/busybox:tampered").unwrap();
        let (manifest, _) = manifest_of(&layout);
        let store = ImageStore::open(dir.0.join("store")).unwrap();

        for layer in manifest.layers() {
            let blob = layout.join("blobs/sha256").join(layer.as_digest_sha256().unwrap());
            let mut data = fs::read(&blob).unwrap();
            let middle = data.len() / 2;
            data[middle] ^= 0x20;
            fs::write(&blob, &data).unwrap();
            match store.import(&layout, None) {
                Err(ImageError::DigestMismatch { digest, actual }) => {
                    assert_eq!(digest, layer.digest().to_string());
                    assert_ne!(actual, digest);
                }
                other => panic!("a flipped byte in layer {} gave {other:?}", layer.digest()),
            }
            data[middle] ^= 0x20;
            fs::write(&blob, &data).unwrap();
            // Layers before the tampered one may stay for the next try, but no half-unpacked one.
            assert!(names_in(&store.dir().join("layers")).iter().all(|n| !n.starts_with('.')), "a tmp dir was left");
            assert!(names_in(&store.dir().join("images")).is_empty());
            assert!(names_in(&store.dir().join("tmp")).is_empty());
        }
        assert_eq!(store.import(&layout, None).unwrap().layers.len(), 2);
    }

    #[test]
    fn gzipped_archive_of_a_layout_imports_and_leaves_no_scratch() {
        if !is_root("gzipped_archive_of_a_layout_imports_and_leaves_no_scratch") {
            return;
        }
        let dir = TestDir::new("archive");
        let layout = dir.0.join("layout");
        write_oci_layout(&layout, "minipod.test/busybox:archived").unwrap();
        let archive = dir.0.join("image.tar.gz");
        let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(File::create(&archive).unwrap(), flate2::Compression::fast()));
        tar.append_dir_all(".", &layout).unwrap();
        tar.into_inner().unwrap().finish().unwrap();
        let store = ImageStore::open(dir.0.join("store")).unwrap();

        let image = store.import(&archive, Some("localhost:5000/bb")).unwrap();
        assert_eq!(image.repo_tags, ["localhost:5000/bb:latest"]);
        assert!(store.lower_dirs(&image).iter().all(|d| d.is_dir()));
        assert!(names_in(&store.dir().join("tmp")).is_empty());

        let err = store.import(&dir.0.join("layout/oci-layout"), None).unwrap_err();
        assert!(matches!(err, ImageError::NotALayout { .. }), "{err:?}");
        assert!(names_in(&store.dir().join("tmp")).is_empty());
    }

    #[test]
    fn moving_a_tag_deletes_the_image_it_leaves_but_not_shared_layers() {
        if !is_root("moving_a_tag_deletes_the_image_it_leaves_but_not_shared_layers") {
            return;
        }
        let dir = TestDir::new("tag-move");
        let layout = dir.0.join("layout");
        write_oci_layout(&layout, "minipod.test/busybox:moving").unwrap();
        let store = ImageStore::open(dir.0.join("store")).unwrap();
        let old = store.import(&layout, None).unwrap();

        // The same layers under another config: a different image.
        let (manifest, _) = manifest_of(&layout);
        let mut config: serde_json::Value =
            serde_json::from_slice(&fs::read(layout.join("blobs/sha256").join(manifest.config().as_digest_sha256().unwrap())).unwrap())
                .unwrap();
        config["config"]["Cmd"] = serde_json::json!(["echo", "new"]);
        let config = serde_json::to_vec(&config).unwrap();
        let mut new_manifest = manifest.clone();
        let config_digest: oci_spec::image::Digest = sha256_digest(&config).parse().unwrap();
        new_manifest.set_config(Descriptor::new(oci_spec::image::MediaType::ImageConfig, config.len() as u64, config_digest));
        let new_manifest_digest = sha256_digest(&serde_json::to_vec(&new_manifest).unwrap());
        let mut open_blob = |d: &Descriptor| -> Result<Box<dyn Read>, ImageError> {
            Ok(Box::new(File::open(layout.join("blobs/sha256").join(d.as_digest_sha256().unwrap())).unwrap()))
        };

        let new = store.add(&new_manifest, &new_manifest_digest, &config, &mut open_blob, Some("minipod.test/busybox:moving")).unwrap();
        assert_ne!(new.id, old.id);
        assert_eq!(new.config.cmd, ["echo", "new"]);
        assert_eq!(store.get("minipod.test/busybox:moving").unwrap(), new);
        assert!(matches!(store.get(&old.id), Err(ImageError::NotFound { .. })), "the untagged old image is deleted");
        assert!(store.lower_dirs(&new).iter().all(|d| d.is_dir()), "its layers are the new image's too");

        let wrong = format!("minipod.test/busybox@sha256:{}", "0".repeat(64));
        let err = store.add(&new_manifest, &new_manifest_digest, &config, &mut open_blob, Some(&wrong)).unwrap_err();
        assert!(matches!(err, ImageError::BadReference { .. }), "{err:?}");
        let by_digest = format!("minipod.test/busybox@{new_manifest_digest}");
        assert_eq!(store.get(&by_digest).unwrap(), new);
        store.remove(&by_digest).unwrap();
        assert!(store.list().unwrap().is_empty());
        assert!(names_in(&store.dir().join("layers")).is_empty());
    }

    #[test]
    fn written_layout_has_the_diff_ids_of_its_uncompressed_layers() {
        let dir = TestDir::new("diff-ids");
        let layout = dir.0.join("layout");
        if let Err(e) = write_oci_layout(&layout, "minipod.test/busybox:ids") {
            eprintln!("skipping: {e}");
            return;
        }
        let (manifest, _) = manifest_of(&layout);
        let blob = |d: &Descriptor| fs::read(layout.join("blobs/sha256").join(d.as_digest_sha256().unwrap())).unwrap();
        let config: ImageConfiguration = serde_json::from_slice(&blob(manifest.config())).unwrap();
        let mut base = vec![];
        flate2::read::GzDecoder::new(&blob(&manifest.layers()[0])[..]).read_to_end(&mut base).unwrap();
        assert_eq!(config.rootfs().diff_ids(), &[sha256_digest(&base), sha256_digest(&blob(&manifest.layers()[1]))]);
        assert_eq!(*config.architecture(), Arch::default());
        // Written twice, the layout holds the same blobs: its digests are reproducible.
        write_oci_layout(&dir.0.join("again"), "minipod.test/busybox:ids").unwrap();
        assert_eq!(manifest_of(&dir.0.join("again")).0, manifest);
    }

    #[test]
    fn id_prefix_must_be_unique_and_at_least_12_digits() {
        let dir = TestDir::new("prefix");
        let store = ImageStore::open(dir.0.join("store")).unwrap();
        let record = |hex: &str| Image {
            id: format!("sha256:{hex}"),
            repo_tags: vec![],
            repo_digests: vec![],
            layers: vec![],
            size: 0,
            config: ImageConfig::default(),
        };
        let (a, b) = (format!("{}{}", "a".repeat(12), "0".repeat(52)), format!("{}{}", "a".repeat(12), "1".repeat(52)));
        store.write_record(&record(&a)).unwrap();
        store.write_record(&record(&b)).unwrap();
        match store.get(&"a".repeat(12)) {
            Err(ImageError::Ambiguous { ids, .. }) => assert_eq!(ids, [format!("sha256:{a}"), format!("sha256:{b}")]),
            other => panic!("{other:?}"),
        }
        assert_eq!(store.get(&a[..13]).unwrap().id, format!("sha256:{a}"));
        assert_eq!(store.get(&format!("sha256:{}", &b[..13])).unwrap().id, format!("sha256:{b}"));
        assert!(matches!(store.get("sha256:aaaa"), Err(ImageError::BadReference { .. })));
        store.remove(&a).unwrap();
        assert_eq!(store.list().unwrap(), [record(&b)]);
    }

    #[test]
    fn whiteouts_and_files_never_reach_through_a_symlink() {
        if !is_root("whiteouts_and_files_never_reach_through_a_symlink") {
            return;
        }
        let dir = TestDir::new("escape");
        let victim = dir.0.join("victim");
        fs::create_dir_all(victim.join("sub")).unwrap();
        fs::write(victim.join("keep"), "host file").unwrap();
        let layers = dir.0.join("layers");
        fs::create_dir(&layers).unwrap();

        for (evil, expect_bad_layer) in [("evil/.wh.keep", true), ("evil/sub/.wh..wh..opq", true), ("evil/keep", false)] {
            let header = |kind, size| {
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(kind);
                h.set_size(size);
                h.set_mode(0o644);
                h.set_uid(0);
                h.set_gid(0);
                h.set_mtime(0);
                h
            };
            let mut tar = tar::Builder::new(Vec::new());
            tar.append_link(&mut header(tar::EntryType::Symlink, 0), "evil", &victim).unwrap();
            tar.append_data(&mut header(tar::EntryType::Regular, 1), evil, &b"x"[..]).unwrap();
            let blob = tar.into_inner().unwrap();
            let digest: oci_spec::image::Digest = sha256_digest(&blob).parse().unwrap();
            let desc = Descriptor::new(oci_spec::image::MediaType::ImageLayer, blob.len() as u64, digest);

            let err = layer::unpack(&layers, &desc, Box::new(io::Cursor::new(blob))).unwrap_err();
            assert_eq!(matches!(err, ImageError::BadLayer { .. }), expect_bad_layer, "{evil}: {err:?}");
            assert_eq!(fs::read_to_string(victim.join("keep")).unwrap(), "host file", "{evil}");
            assert_eq!(xattr(&victim.join("sub"), "trusted.overlay.opaque"), None, "{evil}");
            assert!(names_in(&layers).is_empty(), "{evil}: the tmp dir is removed");
        }
    }

    #[test]
    fn layout_named_only_by_a_tag_is_stored_untagged() {
        if !is_root("layout_named_only_by_a_tag_is_stored_untagged") {
            return;
        }
        let dir = TestDir::new("bare-tag");
        let layout = dir.0.join("layout");
        write_oci_layout(&layout, "1.0").unwrap();
        let store = ImageStore::open(dir.0.join("store")).unwrap();
        let image = store.import(&layout, None).unwrap();
        assert!(image.repo_tags.is_empty() && image.repo_digests.is_empty());
        assert_eq!(store.get(&image.id).unwrap(), image);
    }

    #[test]
    fn concurrent_imports_into_one_store_both_land() {
        if !is_root("concurrent_imports_into_one_store_both_land") {
            return;
        }
        let dir = TestDir::new("concurrent");
        let layout = dir.0.join("layout");
        write_oci_layout(&layout, "minipod.test/busybox:concurrent").unwrap();
        let store_dir = dir.0.join("store");
        let imports: Vec<_> = ["one", "two"]
            .map(|tag| {
                let (layout, store_dir) = (layout.clone(), store_dir.clone());
                std::thread::spawn(move || ImageStore::open(store_dir).unwrap().import(&layout, Some(&format!("busybox:{tag}"))).unwrap())
            })
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        let store = ImageStore::open(store_dir).unwrap();
        let mut tags = store.get(&imports[0].id).unwrap().repo_tags;
        tags.sort();
        assert_eq!(tags, ["docker.io/library/busybox:one", "docker.io/library/busybox:two"]);
        assert_eq!(names_in(&store.dir().join("layers")).len(), 2);
    }

    #[test]
    fn overlay_of_lower_dirs_shows_the_image_with_whiteouts_applied() {
        if !is_root("overlay_of_lower_dirs_shows_the_image_with_whiteouts_applied") {
            return;
        }
        let dir = TestDir::new("overlay");
        let layout = dir.0.join("layout");
        write_oci_layout(&layout, "minipod.test/busybox:overlay").unwrap();
        let store = ImageStore::open(dir.0.join("store")).unwrap();
        let image = store.import(&layout, None).unwrap();

        let (upper, work, merged) = (dir.0.join("upper"), dir.0.join("work"), dir.0.join("merged"));
        for d in [&upper, &work, &merged] {
            fs::create_dir(d).unwrap();
        }
        let lower = store.lower_dirs(&image).iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(":");
        let data = format!("lowerdir={lower},upperdir={},workdir={}", upper.display(), work.display());
        mount(Some("overlay"), &merged, Some("overlay"), MsFlags::empty(), Some(data.as_str())).unwrap();
        /// Unmounts even when an assertion fails, so the TestDir can go.
        struct Unmount<'a>(&'a Path);
        impl Drop for Unmount<'_> {
            fn drop(&mut self) {
                let _ = umount2(self.0, MntFlags::MNT_DETACH);
            }
        }
        let _unmount = Unmount(&merged);

        assert!(fs::symlink_metadata(merged.join("etc/motd")).is_err(), "etc/motd is whited out");
        assert_eq!(names_in(&merged.join("opt/gone")), ["new"]);
        assert!(merged.join("bin/busybox").is_file());
        assert_eq!(fs::read_to_string(merged.join("etc/image-release")).unwrap(), "minipod test image\n");
        assert!(merged.join("etc/passwd").is_file());
    }
}
