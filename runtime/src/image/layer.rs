//! Unpacking one layer blob into a directory that overlayfs can stack as a lower layer.
//!
//! An OCI layer marks deletions with AUFS-style whiteout files (`dir/.wh.name`,
//! `dir/.wh..wh..opq`); overlayfs wants a 0:0 character device and the
//! `trusted.overlay.opaque` xattr instead. Converting once, at unpack time, lets the
//! unpacked layers be mounted as they are, shared read-only by every container.

use std::ffi::OsStr;
use std::fs;
use std::io::{self, BufReader, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use flate2::read::MultiGzDecoder;
use nix::errno::Errno;
use nix::fcntl::{open, openat, AtFlags, OFlag};
use nix::sys::stat::{fstatat, makedev, mkdirat, mknodat, Mode, SFlag};
use nix::unistd::{unlinkat, UnlinkatFlags};
use oci_spec::image::Descriptor;
use sha2::{Digest as _, Sha256};
use tracing::warn;

use super::{hex, ImageError, TmpDir};

/// How a layer blob is compressed, as far as its media type tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Compression {
    /// Says plain tar; gzip is still detected by its magic bytes, since some tools
    /// label gzipped layers as plain.
    Tar,
    Gzip,
}

/// The compression of a layer, or UnsupportedMediaType for anything but tar and
/// tar+gzip (zstd needs a decoder minipod does not carry).
pub(super) fn compression(desc: &Descriptor) -> Result<Compression, ImageError> {
    match desc.media_type().as_ref() {
        "application/vnd.oci.image.layer.v1.tar" | "application/vnd.oci.image.layer.nondistributable.v1.tar" => Ok(Compression::Tar),
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip" => Ok(Compression::Gzip),
        other => Err(ImageError::UnsupportedMediaType {
            what: format!("layer {}", desc.digest()),
            media_type: other.to_string(),
            supported: "tar and tar+gzip layers",
        }),
    }
}

/// Unpacks the layer `desc` read from `blob` into `<layers>/<hex>`, by way of a
/// temporary directory renamed into place only once the blob's digest has been checked,
/// so a layer directory that exists is always complete and verified.
pub(super) fn unpack(layers: &Path, desc: &Descriptor, blob: Box<dyn Read>) -> Result<PathBuf, ImageError> {
    let digest = desc.digest().to_string();
    let compression = compression(desc)?;
    let Some(hex_digest) = desc.as_digest_sha256() else {
        return Err(ImageError::UnsupportedDigest { what: "layer".into(), digest });
    };
    let dest = layers.join(hex_digest);
    let tmp = TmpDir::create(layers.join(format!(".tmp-{hex_digest}-{}", std::process::id())))?;
    let io_err = |what: String, path: &Path| {
        let path = path.to_path_buf();
        move |source| ImageError::Io { what, path, source }
    };
    // Whatever the umask, the layer root is searchable by all (a tar without a "./"
    // entry leaves it as created, and it becomes the container's / when on top).
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755))
        .map_err(io_err(format!("creating layer {digest} in"), tmp.path()))?;

    let mut hashed = HashingReader { inner: blob, hasher: Sha256::new() };
    let unpacked = unpack_stream(&mut hashed, compression, tmp.path(), &digest);
    // The digest covers every byte of the blob, including what follows the tar's end
    // marker; and when unpacking failed, a blob that does not match its digest is the
    // real cause, so it is reported instead of whatever the tar or gzip reader saw.
    io::copy(&mut hashed, &mut io::sink()).map_err(io_err(format!("reading layer {digest} to unpack into"), tmp.path()))?;
    let actual = format!("sha256:{}", hex(&hashed.hasher.finalize()));
    if actual != digest {
        return Err(ImageError::DigestMismatch { digest, actual });
    }
    unpacked?;

    // Data still in the page cache would be lost by a power cut after the rename, and
    // the complete-looking layer then reused; one syncfs is far cheaper than an fsync
    // per file.
    let dir = open(tmp.path(), OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(|e| io_err(format!("syncing layer {digest} in"), tmp.path())(e.into()))?;
    nix::unistd::syncfs(&dir).map_err(|e| io_err(format!("syncing layer {digest} in"), tmp.path())(e.into()))?;
    fs::rename(tmp.path(), &dest).map_err(io_err(format!("moving unpacked layer {digest} into place at"), &dest))?;
    Ok(dest)
}

/// Reads the tar stream (after gunzip if needed) and unpacks it entry by entry into
/// `dir`, turning whiteouts into their overlayfs form. Stops at the tar's end marker.
fn unpack_stream(blob: &mut dyn Read, compression: Compression, dir: &Path, digest: &str) -> Result<(), ImageError> {
    let io_err = |what: String| move |source| ImageError::Io { what, path: dir.to_path_buf(), source };
    let mut magic = [0u8; 2];
    let got = read_up_to(blob, &mut magic).map_err(io_err(format!("reading layer {digest} to unpack into")))?;
    let blob = io::Cursor::new(&magic[..got]).chain(blob);
    let gzip = compression == Compression::Gzip || magic[..got] == [0x1f, 0x8b];
    let stream: Box<dyn Read + '_> =
        if gzip { Box::new(MultiGzDecoder::new(blob)) } else { Box::new(BufReader::with_capacity(64 * 1024, blob)) };

    let mut archive = tar::Archive::new(stream);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(true);
    // File capabilities (security.capability) are what make e.g. ping work unprivileged.
    archive.set_unpack_xattrs(true);
    let entries = archive.entries().map_err(io_err(format!("reading layer {digest} to unpack into")))?;
    for entry in entries {
        let mut entry = entry.map_err(io_err(format!("reading layer {digest} to unpack into")))?;
        let path = entry.path().map_err(io_err(format!("reading an entry name of layer {digest} to unpack into")))?.into_owned();
        let at = |source| ImageError::Io {
            what: format!("unpacking {} from layer {digest} into", path.display()),
            path: dir.to_path_buf(),
            source,
        };
        if let Some(xattr) = overlay_xattr(&mut entry).map_err(at)? {
            let why = format!("{} sets xattr {xattr}, which only overlayfs itself may set", path.display());
            return Err(ImageError::BadLayer { digest: digest.to_string(), why });
        }
        let name = path.file_name().map(OsStr::as_bytes).unwrap_or_default();
        let parent = path.parent().unwrap_or(Path::new(""));
        if name == b".wh..wh..opq" {
            make_opaque(dir, parent).map_err(|e| whiteout_error(e, &path, digest, dir))?;
        } else if name.starts_with(b".wh..wh.") {
            // AUFS' own bookkeeping (.wh..wh.plnk, .wh..wh.aufs): nothing to show.
        } else if let Some(hidden) = name.strip_prefix(b".wh.") {
            make_whiteout(dir, parent, OsStr::from_bytes(hidden)).map_err(|e| whiteout_error(e, &path, digest, dir))?;
        } else if !entry.unpack_in(dir).map_err(at)? {
            warn!(layer = digest, entry = %path.display(), "skipped a layer entry whose path holds '..'");
        }
    }
    Ok(())
}

/// The first overlayfs xattr (`trusted.overlay.*`) the entry would set, if any: a layer
/// must not set them, since they would forge whiteouts, opaque directories or redirects
/// that hide or expose files of the layers below.
fn overlay_xattr(entry: &mut tar::Entry<'_, impl Read>) -> io::Result<Option<String>> {
    let Some(extensions) = entry.pax_extensions()? else {
        return Ok(None);
    };
    for ext in extensions {
        if let Some(xattr) = ext?.key_bytes().strip_prefix(b"SCHILY.xattr.") {
            if xattr.starts_with(b"trusted.overlay.") {
                return Ok(Some(String::from_utf8_lossy(xattr).into_owned()));
            }
        }
    }
    Ok(None)
}

/// Why a whiteout could not be made: the layer is malformed, or the system failed.
enum WhiteoutError {
    Bad(String),
    Io(io::Error),
}

impl From<Errno> for WhiteoutError {
    fn from(e: Errno) -> Self {
        WhiteoutError::Io(e.into())
    }
}

fn whiteout_error(e: WhiteoutError, path: &Path, digest: &str, dir: &Path) -> ImageError {
    match e {
        WhiteoutError::Bad(why) => ImageError::BadLayer { digest: digest.to_string(), why: format!("whiteout {}: {why}", path.display()) },
        WhiteoutError::Io(source) => {
            ImageError::Io { what: format!("making whiteout {} of layer {digest} in", path.display()), path: dir.to_path_buf(), source }
        }
    }
}

/// `parent/.wh.name`: hides `name` of the lower layers. Whatever this layer put at
/// `name` before goes too.
fn make_whiteout(root: &Path, parent: &Path, name: &OsStr) -> Result<(), WhiteoutError> {
    if name.is_empty() || name == "." || name == ".." {
        return Err(WhiteoutError::Bad(format!("{name:?} is not a name to hide")));
    }
    let dir = open_dir_beneath(root, parent)?;
    match fstatat(&dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR => {
            // The parent is reached through its descriptor, so no symlink swapped in
            // on the way can redirect the removal (remove_dir_all itself never follows).
            let via_fd = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name);
            fs::remove_dir_all(via_fd).map_err(WhiteoutError::Io)?;
        }
        Ok(_) => unlinkat(&dir, name, UnlinkatFlags::NoRemoveDir)?,
        Err(Errno::ENOENT) => {}
        Err(e) => return Err(e.into()),
    }
    mknodat(&dir, name, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0))?;
    Ok(())
}

/// `dir/.wh..wh..opq`: `dir` hides everything the lower layers have in it.
fn make_opaque(root: &Path, dir: &Path) -> Result<(), WhiteoutError> {
    let fd = open_dir_beneath(root, dir)?;
    const NAME: &[u8] = b"trusted.overlay.opaque\0";
    // SAFETY: fd is open, NAME is NUL-terminated, and the value is one readable byte.
    let rc = unsafe { libc::fsetxattr(fd.as_raw_fd(), NAME.as_ptr().cast(), b"y".as_ptr().cast(), 1, 0) };
    if rc != 0 {
        return Err(WhiteoutError::Io(io::Error::last_os_error()));
    }
    Ok(())
}

/// Opens `rel` under `root` one component at a time without following symlinks,
/// creating missing directories (a whiteout may be the first entry of its directory),
/// so a whiteout can never land outside the layer.
fn open_dir_beneath(root: &Path, rel: &Path) -> Result<OwnedFd, WhiteoutError> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mut dir = open(root, flags, Mode::empty())?;
    for component in rel.components() {
        let name = match component {
            Component::Normal(name) => name,
            Component::RootDir | Component::CurDir => continue,
            Component::ParentDir | Component::Prefix(_) => return Err(WhiteoutError::Bad("its path leaves the layer".into())),
        };
        let next = match openat(&dir, name, flags, Mode::empty()) {
            Err(Errno::ENOENT) => {
                mkdirat(&dir, name, Mode::from_bits_truncate(0o755))?;
                openat(&dir, name, flags, Mode::empty())
            }
            other => other,
        };
        dir = match next {
            Ok(fd) => fd,
            Err(Errno::ELOOP | Errno::ENOTDIR) => {
                return Err(WhiteoutError::Bad(format!("{} is a symlink or not a directory in the layer", name.to_string_lossy())))
            }
            Err(e) => return Err(e.into()),
        };
    }
    Ok(dir)
}

/// Fills `buf` as far as the reader has bytes; returns how many it got.
fn read_up_to(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Hashes every byte read through it.
struct HashingReader {
    inner: Box<dyn Read>,
    hasher: Sha256,
}

impl Read for HashingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}
