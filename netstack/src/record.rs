//! Record files: small JSON documents that describe an object on the node (a network,
//! a pod, a container, an image), replaced whole so that a reader sees the old or the
//! new one and never a part.
//!
//! The one implementation that netstack and minipod-runtime share: a temporary file
//! named for this process *and* this call (two threads of one daemon saving one record
//! at once must not share a temporary file, or one of them renames the other's half
//! written data into place), renamed over the record, and, where a record must survive
//! a crash of the machine, fsync'd together with its directory.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// How far a write must have reached before it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Readers see the old or the new record; after a power loss either may be there.
    /// For state of processes that a reboot ends anyway (a fsync on a disk-backed /run
    /// costs about a millisecond per write).
    Atomic,
    /// As `Atomic`, and the new record is on disk when this returns (data and directory
    /// entry): for what must outlive a reboot, such as image records.
    Durable,
}

/// Replaces `path` with `data`. The temporary file is removed when anything fails.
pub fn write_atomic(path: &Path, data: &[u8], durability: Durability) -> io::Result<()> {
    let tmp = temp_path(path);
    let written = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(data)?;
        if durability == Durability::Durable {
            f.sync_all()?;
        }
        fs::rename(&tmp, path)?;
        if durability == Durability::Durable {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                fs::File::open(dir)?.sync_all()?;
            }
        }
        Ok(())
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// Encodes `value` as (pretty) JSON and replaces `path` with it.
pub fn write_json(path: &Path, value: &impl serde::Serialize, durability: Durability) -> io::Result<()> {
    let data = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
    write_atomic(path, &data, durability)
}

/// Reads a record; a document that does not decode is `InvalidData`.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> io::Result<T> {
    let data = fs::read(path)?;
    serde_json::from_slice(&data).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Whether `name` is a temporary file that [`write_atomic`] left behind (a process
/// killed between create and rename); a sweep may remove such files.
pub fn is_temp_name(name: &str) -> bool {
    name.starts_with('.') && name.contains(".tmp.")
}

/// `.NAME.tmp.PID.SEQ` next to the record: hidden from listings that skip dot files,
/// unique per process and call.
fn temp_path(path: &Path) -> PathBuf {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("record");
    path.with_file_name(format!(".{name}.tmp.{}.{n}", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct Record {
        writer: u32,
        filler: Vec<String>,
    }

    /// Two threads save one record over and over while a third reads it: the reader
    /// sees one writer's whole record every time, and no temporary file stays behind.
    #[test]
    fn concurrent_saves_of_one_record_are_never_seen_half_written() {
        let dir = std::env::temp_dir().join(format!("minipod-record-race-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let _cleanup = Cleanup(dir.clone());
        let path = dir.join("pod.json");
        // Large enough that a write takes several syscalls.
        let record = |writer: u32| Record { writer, filler: (0..2000).map(|i| format!("{writer}-{i}")).collect() };
        write_json(&path, &record(0), Durability::Atomic).unwrap();
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            for writer in [1, 2] {
                let (path, stop, rec) = (&path, &stop, record(writer));
                s.spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        write_json(path, &rec, Durability::Atomic).unwrap();
                    }
                });
            }
            let mut seen = [0u32; 3];
            for _ in 0..2000 {
                let r: Record = read_json(&path).unwrap();
                assert_eq!(r, record(r.writer), "a record that no writer wrote");
                seen[r.writer as usize] += 1;
            }
            stop.store(true, Ordering::Relaxed);
        });
        let left: Vec<_> = fs::read_dir(&dir).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(left, vec![std::ffi::OsString::from("pod.json")]);
    }

    #[test]
    fn a_durable_write_replaces_and_a_failed_one_leaves_no_temporary_file() {
        let dir = std::env::temp_dir().join(format!("minipod-record-durable-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let _cleanup = Cleanup(dir.clone());
        let path = dir.join("image.json");
        write_atomic(&path, b"{\"a\":1}", Durability::Durable).unwrap();
        write_atomic(&path, b"{\"a\":2}", Durability::Durable).unwrap();
        assert_eq!(read_json::<serde_json::Value>(&path).unwrap()["a"], 2);
        // Renaming onto a directory fails after the temporary file was written.
        fs::create_dir(dir.join("taken")).unwrap();
        fs::write(dir.join("taken").join("x"), b"").unwrap();
        assert!(write_atomic(&dir.join("taken"), b"x", Durability::Atomic).is_err());
        let mut left: Vec<_> = fs::read_dir(&dir).unwrap().flatten().map(|e| e.file_name().into_string().unwrap()).collect();
        left.sort();
        assert_eq!(left, ["image.json", "taken"]);
        assert!(is_temp_name(temp_path(&path).file_name().unwrap().to_str().unwrap()));
        assert_eq!(read_json::<serde_json::Value>(&dir.join("taken/x")).unwrap_err().kind(), io::ErrorKind::InvalidData);
    }

    struct Cleanup(PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}
