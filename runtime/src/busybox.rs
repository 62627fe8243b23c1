//! Root filesystems built from the host's static busybox (Debian's `busybox-static`):
//! one binary plus an applet symlink per command. Used by `minipod demo` and by tests,
//! where no image registry is reachable; [`write_oci_layout`] packs one as an OCI image.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::{Path, PathBuf};

use crate::image::sha256_digest;

/// Where Debian's busybox-static installs the binary.
pub const BUSYBOX: &str = "/bin/busybox";

/// Building the rootfs failed.
#[derive(Debug, thiserror::Error)]
pub enum BusyboxError {
    #[error("{BUSYBOX} is missing or not static: install Debian's busybox-static (`apt-get install busybox-static`)")]
    Missing,
    #[error("listing busybox applets")]
    List(#[source] io::Error),
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("building the {layer} layer of the test image")]
    Layer {
        layer: &'static str,
        #[source]
        source: io::Error,
    },
}

/// Fills `rootfs` with busybox, its applets under /bin, and the directories and
/// /etc files a small container expects.
pub fn build_rootfs(rootfs: &Path) -> Result<(), BusyboxError> {
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BusyboxError::Write { path, source }
    };
    let data = fs::read(BUSYBOX).map_err(|_| BusyboxError::Missing)?;
    // A dynamically linked busybox would need the host's libraries inside the rootfs.
    if !is_static_elf(&data) {
        return Err(BusyboxError::Missing);
    }
    for dir in ["bin", "dev", "etc", "proc", "sys", "tmp", "root", "home", "var", "run"] {
        fs::create_dir_all(rootfs.join(dir)).map_err(err(&rootfs.join(dir)))?;
    }
    let bin = rootfs.join("bin/busybox");
    fs::copy(BUSYBOX, &bin).map_err(err(&bin))?;
    let out = std::process::Command::new(BUSYBOX).arg("--list").output().map_err(BusyboxError::List)?;
    for applet in String::from_utf8_lossy(&out.stdout).lines() {
        let applet = applet.trim();
        if applet.is_empty() || applet.contains('/') || applet == "busybox" {
            continue;
        }
        let link = rootfs.join("bin").join(applet);
        match symlink("busybox", &link) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(err(&link)(e)),
            _ => {}
        }
    }
    for (file, content) in [
        ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"),
        ("etc/group", "root:x:0:\ntty:x:5:\nuser:x:1000:\nnogroup:x:65534:\n"),
        ("etc/hosts", "127.0.0.1 localhost\n"),
    ] {
        let path = rootfs.join(file);
        fs::write(&path, content).map_err(err(&path))?;
    }
    Ok(())
}

/// The PATH a container of the test image starts with, as in Debian's and Alpine's images.
const IMAGE_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The mtime of every entry of the test image's layers, so that two layouts written from
/// the same busybox hold the same blobs (2023-11-14T22:13:20Z).
const IMAGE_MTIME: u64 = 1_700_000_000;

/// Writes an OCI image layout at `dir` holding a two-layer busybox image tagged `reference` (annotation org.opencontainers.image.ref.name = reference).
/// Layer 1 (gzip): the rootfs `build_rootfs` makes, plus /etc/motd and /opt/gone/old. Layer 2 (plain tar): `etc/.wh.motd` and `opt/gone/.wh..wh..opq` plus opt/gone/new and /etc/image-release ("minipod test image\n").
/// Config: Cmd ["sh"], Env ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], WorkingDir "/", os linux, architecture from the host, rootfs.diff_ids right (sha256 of the uncompressed tars).
///
/// Every entry is owned by 0:0 with a fixed mtime whoever runs it, so the same host
/// busybox always gives the same digests.
pub fn write_oci_layout(dir: &Path, reference: &str) -> Result<(), BusyboxError> {
    write_oci_layout_with_cmd(dir, reference, &["sh"])
}

/// [`write_oci_layout`] with another Cmd, e.g. a long `sleep` for a pod's pause image.
pub fn write_oci_layout_with_cmd(dir: &Path, reference: &str, cmd: &[&str]) -> Result<(), BusyboxError> {
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BusyboxError::Write { path, source }
    };
    fs::create_dir_all(dir).map_err(err(dir))?;
    let rootfs = RemoveOnDrop(dir.join(".rootfs-build"));
    let _ = fs::remove_dir_all(&rootfs.0);
    build_rootfs(&rootfs.0)?;
    fs::create_dir_all(rootfs.0.join("opt/gone")).map_err(err(&rootfs.0.join("opt/gone")))?;
    for (file, content) in [("etc/motd", "Welcome to the minipod test image.\n"), ("opt/gone/old", "hidden by the second layer\n")] {
        let path = rootfs.0.join(file);
        fs::write(&path, content).map_err(err(&path))?;
    }
    let base = tar_tree(&rootfs.0).map_err(|source| BusyboxError::Layer { layer: "busybox", source })?;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let base_gz = gz.write_all(&base).and_then(|()| gz.finish()).map_err(|source| BusyboxError::Layer { layer: "busybox", source })?;
    let top = whiteout_layer().map_err(|source| BusyboxError::Layer { layer: "whiteout", source })?;

    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).map_err(err(&blobs))?;
    // Writes a blob and returns its descriptor.
    let put = |media_type: &str, data: &[u8]| -> Result<serde_json::Value, BusyboxError> {
        let digest = sha256_digest(data);
        let path = blobs.join(digest.trim_start_matches("sha256:"));
        fs::write(&path, data).map_err(err(&path))?;
        Ok(serde_json::json!({ "mediaType": media_type, "digest": digest, "size": data.len() }))
    };
    let to_json = |value: &serde_json::Value, path: &Path| serde_json::to_vec_pretty(value).map_err(|e| err(path)(io::Error::other(e)));

    let config = serde_json::json!({
        "architecture": oci_spec::image::Arch::default().to_string(),
        "os": "linux",
        "config": { "Cmd": cmd, "Env": [IMAGE_PATH], "WorkingDir": "/" },
        "rootfs": { "type": "layers", "diff_ids": [sha256_digest(&base), sha256_digest(&top)] },
    });
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": put("application/vnd.oci.image.config.v1+json", &to_json(&config, &blobs)?)?,
        "layers": [
            put("application/vnd.oci.image.layer.v1.tar+gzip", &base_gz)?,
            put("application/vnd.oci.image.layer.v1.tar", &top)?,
        ],
    });
    let mut manifest_desc = put("application/vnd.oci.image.manifest.v1+json", &to_json(&manifest, &blobs)?)?;
    manifest_desc["annotations"] = serde_json::json!({ "org.opencontainers.image.ref.name": reference });
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [manifest_desc],
    });
    for (file, value) in [("index.json", index), ("oci-layout", serde_json::json!({ "imageLayoutVersion": "1.0.0" }))] {
        let path = dir.join(file);
        fs::write(&path, to_json(&value, &path)?).map_err(err(&path))?;
    }
    Ok(())
}

/// The test image's second layer: it deletes /etc/motd and empties /opt/gone of the
/// first, and adds files of its own.
fn whiteout_layer() -> io::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    for (path, content) in [
        ("etc", None),
        ("etc/.wh.motd", Some("")),
        ("etc/image-release", Some("minipod test image\n")),
        ("opt", None),
        ("opt/gone", None),
        ("opt/gone/.wh..wh..opq", Some("")),
        ("opt/gone/new", Some("added by the second layer\n")),
    ] {
        let mut header = image_header(if content.is_some() { tar::EntryType::Regular } else { tar::EntryType::Directory }, 0o644);
        match content {
            Some(content) => {
                header.set_size(content.len() as u64);
                tar.append_data(&mut header, path, content.as_bytes())?;
            }
            None => {
                header.set_mode(0o755);
                tar.append_data(&mut header, path, io::empty())?;
            }
        }
    }
    tar.into_inner()
}

/// A tar of everything under `root`, in name order, each entry keeping its mode but
/// owned by 0:0 (as files of an image are, whoever built it).
fn tar_tree(root: &Path) -> io::Result<Vec<u8>> {
    fn append(tar: &mut tar::Builder<Vec<u8>>, root: &Path, rel: &Path) -> io::Result<()> {
        let mut entries = fs::read_dir(root.join(rel))?.collect::<Result<Vec<_>, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let (path, rel) = (entry.path(), rel.join(entry.file_name()));
            let md = fs::symlink_metadata(&path)?;
            let kind = md.file_type();
            if kind.is_dir() {
                tar.append_data(&mut image_header(tar::EntryType::Directory, md.mode()), &rel, io::empty())?;
                append(tar, root, &rel)?;
            } else if kind.is_symlink() {
                tar.append_link(&mut image_header(tar::EntryType::Symlink, md.mode()), &rel, fs::read_link(&path)?)?;
            } else if kind.is_file() {
                let mut header = image_header(tar::EntryType::Regular, md.mode());
                header.set_size(md.len());
                tar.append_data(&mut header, &rel, fs::File::open(&path)?)?;
            }
        }
        Ok(())
    }
    let mut tar = tar::Builder::new(Vec::new());
    append(&mut tar, root, Path::new(""))?;
    tar.into_inner()
}

fn image_header(kind: tar::EntryType, mode: u32) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode & 0o7777);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(IMAGE_MTIME);
    header.set_size(0);
    header
}

/// A scratch directory removed when dropped.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A 64-bit ELF with no PT_INTERP program header needs no dynamic loader.
fn is_static_elf(data: &[u8]) -> bool {
    let u16_at = |o: usize| data.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let u64_at = |o: usize| data.get(o..o + 8).and_then(|b| b.try_into().ok()).map(|b| u64::from_le_bytes(b) as usize);
    if !data.starts_with(b"\x7fELF\x02") {
        return false;
    }
    let (Some(phoff), Some(entsize), Some(count)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38)) else {
        return false;
    };
    const PT_INTERP: u32 = 3;
    (0..count).all(|i| {
        data.get(phoff + i * entsize..phoff + i * entsize + 4).is_some_and(|t| u32::from_le_bytes([t[0], t[1], t[2], t[3]]) != PT_INTERP)
    })
}
