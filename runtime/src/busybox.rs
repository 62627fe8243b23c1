//! Root filesystems built from the host's static busybox (Debian's `busybox-static`):
//! one binary plus an applet symlink per command. Used by `minipod demo` and by tests,
//! where no image registry is reachable.

use std::fs;
use std::io;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

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
