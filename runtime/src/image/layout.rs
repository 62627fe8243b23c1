//! OCI image layouts on disk (a directory, or an archive of one): reading their
//! index, manifests and blobs, and importing one.

use super::*;

/// An OCI image layout on disk, possibly extracted from an archive.
pub(super) struct Layout {
    pub(super) root: PathBuf,
    /// What the user gave, for messages (an extracted archive's root is a temp dir).
    pub(super) shown: PathBuf,
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
pub(super) fn extract_archive(path: &Path, dest: &Path) -> Result<(), ImageError> {
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
pub(super) fn single_subdir(dir: &Path) -> Option<PathBuf> {
    let mut entries = fs::read_dir(dir).ok()?;
    let only = entries.next()?.ok()?;
    (entries.next().is_none() && only.file_type().ok()?.is_dir()).then(|| only.path())
}

/// A directory removed with everything in it when dropped: scratch space that must not
/// outlive the operation that made it, also when it fails.
pub(super) struct TmpDir(PathBuf);

impl TmpDir {
    pub(super) fn create(path: PathBuf) -> Result<Self, ImageError> {
        fs::create_dir(&path).map_err(io_err("creating temporary directory", &path))?;
        Ok(TmpDir(path))
    }

    pub(super) fn path(&self) -> &Path {
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

impl ImageStore {
    pub(super) fn import_layout(&self, layout: &Layout, reference: Option<&str>) -> Result<Image, ImageError> {
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
}
