//! How much of a filesystem a directory tree holds: the bytes and inodes the image
//! store and containers' writable layers use, which a kubelet's eviction manager and
//! image garbage collection decide on (CRI `ImageFsInfo`, `writable_layer`).

use std::collections::HashSet;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Space a tree takes on disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskUsage {
    /// Bytes of allocated blocks (as `du` counts them, so sparse files count what
    /// they hold, not their length).
    pub bytes: u64,
    /// Distinct inodes (hard links count once).
    pub inodes: u64,
}

impl std::ops::Add for DiskUsage {
    type Output = Self;
    fn add(self, o: Self) -> Self {
        Self { bytes: self.bytes + o.bytes, inodes: self.inodes + o.inodes }
    }
}

/// The usage of `root` and everything under it on the same filesystem; symlinks are
/// not followed and mounts below it (a container's rootfs) are not entered. A missing
/// root uses nothing; entries removed while walking are skipped.
pub fn usage(root: &Path) -> io::Result<DiskUsage> {
    let top = match std::fs::symlink_metadata(root) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(DiskUsage::default()),
        Err(e) => return Err(e),
    };
    let dev = top.dev();
    let mut seen = HashSet::new();
    let mut total = DiskUsage::default();
    let mut stack = vec![(root.to_path_buf(), top)];
    while let Some((path, meta)) = stack.pop() {
        if meta.nlink() <= 1 || seen.insert(meta.ino()) {
            total.bytes += meta.blocks() * 512;
            total.inodes += 1;
        }
        if !meta.is_dir() {
            continue;
        }
        let entries = match std::fs::read_dir(&path) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io::Error::new(e.kind(), format!("reading {}: {e}", path.display()))),
        };
        for entry in entries.flatten() {
            let Ok(m) = entry.metadata() else { continue };
            if m.dev() == dev {
                stack.push((entry.path(), m));
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_count_their_blocks_and_hard_links_count_once() {
        let dir = std::env::temp_dir().join(format!("minipod-disk-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("sub/a"), vec![1u8; 64 * 1024]).unwrap();
        std::fs::hard_link(dir.join("sub/a"), dir.join("b")).unwrap();
        let u = usage(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        // dir, sub, and the one file behind a and b.
        assert_eq!(u.inodes, 3);
        assert!(u.bytes >= 64 * 1024, "{u:?}");
        assert_eq!(usage(&dir).unwrap(), DiskUsage::default());
    }
}
