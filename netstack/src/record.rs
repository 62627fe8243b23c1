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

/// Whether the process that made temporary entry `name` (a `.NAME.tmp.PID.SEQ` file or
/// directory) is gone, so that the entry can never be finished. A reused PID keeps an
/// entry longer, never shorter.
pub fn temp_writer_gone(name: &str) -> bool {
    let Some(pid) = name.rsplit('.').nth(1).and_then(|p| p.parse::<i32>().ok()).filter(|p| *p > 0) else { return false };
    if !is_temp_name(name) {
        return false;
    }
    // SAFETY: signal 0 only asks whether the process exists.
    unsafe { libc::kill(pid, 0) != 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) }
}

/// Removes the temporary files and directories in `dir` whose writer is gone (a
/// process killed between create and rename). Returns what went, and what could not.
pub fn remove_dead_temps(dir: &Path) -> (Vec<PathBuf>, Vec<(PathBuf, io::Error)>) {
    let (mut removed, mut failed) = (vec![], vec![]);
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        if !e.file_name().to_str().is_some_and(temp_writer_gone) {
            continue;
        }
        let path = e.path();
        let gone = if e.file_type().is_ok_and(|t| t.is_dir()) { fs::remove_dir_all(&path) } else { fs::remove_file(&path) };
        match gone {
            Ok(()) => removed.push(path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => failed.push((path, e)),
        }
    }
    (removed, failed)
}

/// `.NAME.tmp.PID.SEQ` next to the record: hidden from listings that skip dot files,
/// unique per process and call. Also the name of a directory being put together
/// before it is renamed into place, or taken apart after it was renamed away.
pub fn temp_path(path: &Path) -> PathBuf {
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

    /// A temporary entry of a process that is gone goes; one of a live process (this
    /// one) and any other file stay.
    #[test]
    fn temporary_entries_of_dead_writers_are_removed_and_no_others() {
        let dir = std::env::temp_dir().join(format!("minipod-record-dead-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let _cleanup = Cleanup(dir.clone());
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let mine = temp_path(&dir.join("pod.json"));
        fs::write(&mine, b"").unwrap();
        fs::write(dir.join(format!(".pod.json.tmp.{dead}.7")), b"").unwrap();
        fs::create_dir_all(dir.join(format!(".0123456789ab.tmp.{dead}.0/ns"))).unwrap();
        fs::write(dir.join("pod.json"), b"{}").unwrap();
        fs::write(dir.join(format!("x.tmp.{dead}")), b"").unwrap();
        let (removed, failed) = remove_dead_temps(&dir);
        assert!(failed.is_empty(), "{failed:?}");
        assert_eq!(removed.len(), 2, "{removed:?}");
        let mut left: Vec<_> = fs::read_dir(&dir).unwrap().flatten().map(|e| e.path()).collect();
        left.sort();
        let mut want = vec![mine, dir.join("pod.json"), dir.join(format!("x.tmp.{dead}"))];
        want.sort();
        assert_eq!(left, want);
    }

    struct Cleanup(PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}
