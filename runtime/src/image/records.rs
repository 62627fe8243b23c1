//! The store's own files: its directories, image records, the writers' lock, and
//! what an interrupted writer left.

use super::*;

impl ImageStore {
    pub(super) fn layers_dir(&self) -> PathBuf {
        self.dir.join("layers")
    }

    pub(super) fn images_dir(&self) -> PathBuf {
        self.dir.join("images")
    }

    pub(super) fn tmp_dir(&self) -> PathBuf {
        self.dir.join("tmp")
    }

    fn record_path(&self, id: &str) -> PathBuf {
        self.images_dir().join(format!("{}.json", id.trim_start_matches("sha256:")))
    }

    /// Waits for the other writers of this store (in this or another process) to finish.
    pub(super) fn lock(&self) -> Result<Flock<File>, ImageError> {
        let path = self.dir.join("lock");
        let file =
            fs::OpenOptions::new().create(true).truncate(false).write(true).mode(0o600).open(&path).map_err(io_err("opening", &path))?;
        Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| io_err("locking", &path)(errno.into()))
    }

    /// Removes what a crashed writer left: half-unpacked or half-deleted layers, half-written
    /// records, extracted archives. Only ever called with the lock held, so none of
    /// them belongs to a writer still at work.
    pub(super) fn clean_leftovers(&self) {
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
        scratch(self.images_dir(), crate::netstack::record::is_temp_name);
        scratch(self.tmp_dir(), |_| true);
    }

    pub(super) fn load_record(&self, id: &str) -> Result<Image, ImageError> {
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
    pub(super) fn records(&self) -> Result<Vec<Result<Image, ImageError>>, ImageError> {
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
    pub(super) fn readable_records(&self) -> Vec<Image> {
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
    pub(super) fn write_record(&self, image: &Image) -> Result<(), ImageError> {
        let path = self.record_path(&image.id);
        let err = |source| ImageError::Io { what: "writing image record".into(), path: path.clone(), source };
        crate::netstack::record::write_json(&path, image, crate::netstack::record::Durability::Durable).map_err(err)
    }

    pub(super) fn delete_record(&self, image: &Image) -> Result<(), ImageError> {
        let path = self.record_path(&image.id);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("deleting image record", &path)(e)),
            _ => Ok(()),
        }
    }

    /// Deletes the layers no record uses. Keeps them all when a record cannot be read,
    /// since it might be the one that uses them.
    pub(super) fn collect_layers(&self) -> Result<(), ImageError> {
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
