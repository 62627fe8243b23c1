//! The name index: which pod holds each pod name of a scope, as one file per name
//! under `pods/.names/SCOPE/` holding the pod's id. Every process sharing a state root
//! claims and releases names there at once; a hard link decides who gets a name.

use std::io;
use std::path::{Path, PathBuf};

use super::store::has_record;
use super::{io_err, PodError, PodId, Result};
use crate::netstack::{self, PodName, Scope};

/// The name index of one state root.
pub(super) struct NameIndex<'a> {
    root: &'a Path,
}

impl<'a> NameIndex<'a> {
    pub(super) fn of(root: &'a Path) -> Self {
        NameIndex { root }
    }

    /// Where every scope's names are.
    fn base(&self) -> PathBuf {
        self.root.join("pods").join(".names")
    }

    fn dir(&self, scope: &Scope) -> PathBuf {
        self.base().join(scope.as_str())
    }

    fn file(&self, scope: &Scope, name: &PodName) -> PathBuf {
        self.dir(scope).join(name.as_str())
    }

    /// The id a pod name of `scope` is claimed by, if any.
    pub(super) fn holder(&self, scope: &Scope, name: &PodName) -> Option<PodId> {
        PodId::parse(std::fs::read_to_string(self.file(scope, name)).ok()?.trim())
    }

    /// Claims `name` in `scope` for pod `id`, whose record exists already. The claim
    /// appears whole or not at all (a complete file hard-linked into place, which fails
    /// if the name is taken), so a crash never leaves an empty claim. A claim whose pod
    /// has no record (a crash before its release, or a removal whose release is still
    /// to come) is stale and taken over.
    pub(super) fn claim(&self, scope: &Scope, name: &PodName, id: &PodId) -> Result<()> {
        let path = self.file(scope, name);
        let dir = self.dir(scope);
        // Written whole under a name of its own (nobody reads it there; a crash leaves a
        // temporary file the sweep removes), then linked into place. Not fsynced: the
        // pod records it guards are not either, and a reboot ends the pods anyway.
        let whole = netstack::record::temp_path(&path);
        // The scope's directory goes with its last name (`release`, the sweep), so it
        // may go between its creation and the write, or between mkdir's EEXIST and
        // create_dir_all's look at what exists; once the write is in, it stays. Bounded
        // so that a file in the directory's place is an error, not a spin.
        let mut attempts = 0;
        loop {
            let made = match std::fs::create_dir_all(&dir) {
                Ok(()) => std::fs::write(&whole, id.as_str()).map_err(|e| (e, "writing", &whole)),
                Err(e) => Err((e, "creating", &dir)),
            };
            match made {
                Ok(()) => break,
                Err((e, ..)) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::AlreadyExists) && attempts < 100 => {
                    attempts += 1
                }
                Err((e, what, path)) => return Err(io_err(what, path)(e)),
            }
        }
        let claimed = (|| {
            for _ in 0..2 {
                match std::fs::hard_link(&whole, &path) {
                    Ok(()) => return Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => match self.holder(scope, name) {
                        Some(other) if has_record(self.root, &other) => return Err(PodError::PodExists { name: name.clone(), id: other }),
                        _ => self.drop_stale(&path),
                    },
                    Err(e) => return Err(io_err("claiming the name in", &path)(e)),
                }
            }
            Err(PodError::NameContended(name.clone()))
        })();
        let _ = std::fs::remove_file(&whole);
        claimed
    }

    /// Gives up `name` in `scope` if pod `id` still holds it: another pod may have
    /// taken it over once `id`'s record went, and under the index lock that takeover
    /// cannot come between the look and the removal (and lose its new claim). Without
    /// the lock (it cannot be opened) the name is still given up.
    pub(super) fn release(&self, scope: &Scope, name: &PodName, id: &PodId) {
        let _lock = self.lock();
        if self.holder(scope, name).as_ref() == Some(id) {
            let _ = std::fs::remove_file(self.file(scope, name));
            // The scope's last name takes its directory along (it fails while others remain).
            let _ = std::fs::remove_dir(self.dir(scope));
        }
    }

    /// Removes the claim at `path` if it is still stale (its pod has no record) once
    /// the index lock is held, so that two processes taking over one stale claim at
    /// once cannot remove each other's new one.
    fn drop_stale(&self, path: &Path) {
        let Some(_lock) = self.lock() else { return };
        // Gone already: another process's claim may appear any moment, and is not ours to remove.
        let Ok(text) = std::fs::read_to_string(path) else { return };
        if PodId::parse(text.trim()).is_none_or(|other| !has_record(self.root, &other)) {
            let _ = std::fs::remove_file(path);
        }
    }

    /// The index lock, held by whoever removes a claim, so that two removals cannot
    /// overlap: a claim is removed only after a look at it under the lock (a stale one
    /// not at all when the lock cannot be had). A dot name, which no scope can have.
    fn lock(&self) -> Option<nix::fcntl::Flock<std::fs::File>> {
        let path = self.base().join(".lock");
        let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(path).ok()?;
        nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive).ok()
    }

    /// Name claims whose pod has no record (a crash between a pod's removal and the
    /// release of its name), and claim files a dead process was writing. Removed;
    /// returns them as `scope/name` and as paths.
    pub(super) fn sweep_stale(&self) -> (Vec<String>, Vec<PathBuf>) {
        let (mut swept, mut temps) = (Vec::new(), Vec::new());
        for scope in std::fs::read_dir(self.base()).into_iter().flatten().flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())) {
            temps.extend(netstack::record::remove_dead_temps(&scope.path()).0);
            for claim in std::fs::read_dir(scope.path()).into_iter().flatten().flatten() {
                let file = claim.file_name().to_string_lossy().into_owned();
                if netstack::record::is_temp_name(&file) {
                    continue;
                }
                let path = claim.path();
                let holder = std::fs::read_to_string(&path).ok().and_then(|t| PodId::parse(t.trim()));
                if holder.is_none_or(|id| !has_record(self.root, &id)) {
                    self.drop_stale(&path);
                    if !path.exists() {
                        swept.push(format!("{}/{file}", scope.file_name().to_string_lossy()));
                    }
                }
            }
            // Empty once its last stale claim went (it fails while names remain).
            let _ = std::fs::remove_dir(scope.path());
        }
        (swept, temps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

    /// A state root of a test's own, removed with it.
    struct Root(PathBuf);

    impl Root {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("minipod-names-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(dir.join("pods")).unwrap();
            Root(dir)
        }

        /// Writes or removes pod `id`'s record, as its creation and removal do.
        fn record(&self, id: &PodId, exists: bool) {
            let dir = super::super::store::pod_dir(&self.0, id);
            if exists {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(dir.join(super::super::POD_FILE), "{}").unwrap();
            } else {
                std::fs::remove_dir_all(&dir).unwrap();
            }
        }
    }

    impl Drop for Root {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Names of one scope claimed and released at once by several threads, as by the
    /// processes of one node: the scope's directory comes and goes with its last name,
    /// and every claim still succeeds.
    #[test]
    fn claims_succeed_while_their_scopes_directory_comes_and_goes() {
        let root = Root::new("dir");
        let scope = Scope::new("churn").unwrap();
        let scopes_dir = root.0.join("pods/.names/churn");
        let (gone, active, failures) = (AtomicUsize::new(0), AtomicUsize::new(0), std::sync::Mutex::new(Vec::new()));
        let start = std::sync::Barrier::new(4);
        std::thread::scope(|s| {
            for t in 0..4 {
                let (root, scope, gone, active, failures, scopes_dir, start) =
                    (&root, &scope, &gone, &active, &failures, &scopes_dir, &start);
                s.spawn(move || {
                    let (name, id) = (PodName::new(format!("pod{t}")).unwrap(), PodId::random());
                    root.record(&id, true);
                    let names = NameIndex::of(&root.0);
                    let claim_file = scopes_dir.join(name.as_str());
                    active.fetch_add(1, SeqCst);
                    start.wait();
                    // 3,000 rounds, and on a loaded machine more (up to 30,000) until the
                    // directory has been seen gone while another thread claims.
                    for round in 0.. {
                        if round >= 3000 && (gone.load(SeqCst) > 0 || round >= 30_000) {
                            break;
                        }
                        match names.claim(scope, &name, &id) {
                            Ok(()) => {
                                assert!(claim_file.exists(), "a claim that succeeded is not at {}", claim_file.display());
                                names.release(scope, &name, &id);
                            }
                            Err(e) => failures.lock().unwrap().push(format!("{e}: {:?}", std::error::Error::source(&e))),
                        }
                        // Seen gone while another thread still claims, not only after the last release.
                        gone.fetch_add(usize::from(active.load(SeqCst) >= 2 && !scopes_dir.exists()), SeqCst);
                    }
                    active.fetch_sub(1, SeqCst);
                });
            }
        });
        let failures = failures.into_inner().unwrap();
        assert!(failures.is_empty(), "{} claims failed, the first: {}", failures.len(), failures[0]);
        // The control: the directory did go while others were claiming.
        assert!(gone.load(SeqCst) > 0, "the scope's directory never went");
        assert!(!scopes_dir.exists(), "the last release leaves the scope's directory behind");
    }

    /// A claim over a live pod's is refused naming it; one over a pod without a record
    /// (a crash before its release) takes the name over; the sweep removes stale claims
    /// and dead writers' files and keeps live claims; and a file where the scope's
    /// directory belongs is an error, not an endless retry.
    #[test]
    fn live_claims_hold_stale_ones_are_taken_over_or_swept() {
        let root = Root::new("takeover");
        let names = NameIndex::of(&root.0);
        let scope = Scope::new("one").unwrap();
        let (name, other) = (PodName::new("web").unwrap(), PodName::new("db").unwrap());
        let (live, gone, next) = (PodId::random(), PodId::random(), PodId::random());
        root.record(&live, true);
        names.claim(&scope, &name, &live).unwrap();
        assert!(matches!(names.claim(&scope, &name, &next), Err(PodError::PodExists { id, .. }) if id == live));
        // A crash between the record's removal and the release.
        root.record(&live, false);
        root.record(&next, true);
        names.claim(&scope, &name, &next).unwrap();
        assert_eq!(names.holder(&scope, &name), Some(next.clone()), "the stale claim was not taken over");
        // The old pod's late release leaves the new claim alone.
        names.release(&scope, &name, &live);
        assert_eq!(names.holder(&scope, &name), Some(next.clone()));
        // A stale claim and a dead writer's file for the sweep (pid 0x7fffffff is no process).
        root.record(&gone, true);
        names.claim(&scope, &other, &gone).unwrap();
        root.record(&gone, false);
        let dead = root.0.join("pods/.names/one/.db.tmp.2147483647.0");
        std::fs::write(&dead, "x").unwrap();
        let (swept, temps) = names.sweep_stale();
        assert_eq!((swept, temps), (vec!["one/db".to_string()], vec![dead]));
        assert_eq!(names.holder(&scope, &name), Some(next.clone()), "the sweep took a live claim");
        assert_eq!(names.holder(&scope, &other), None);
        names.release(&scope, &name, &next);
        assert!(!root.0.join("pods/.names/one").exists(), "the scope's last release leaves its directory");
        let blocked = Scope::new("blocked").unwrap();
        std::fs::write(root.0.join("pods/.names/blocked"), "").unwrap();
        assert!(names.claim(&blocked, &name, &next).is_err(), "a file in the scope directory's place");
    }

    /// Three pods in turn for one name, each removing its record before it releases
    /// the name (as a pod's removal does), so that its claim is stale meanwhile and the
    /// others race to take it over: the name is never held by two pods at once.
    #[test]
    fn a_stale_claim_is_taken_over_by_one_pod_at_a_time() {
        let root = Root::new("stale");
        let scope = Scope::new("race").unwrap();
        let name = PodName::new("shared").unwrap();
        let holding = AtomicUsize::new(0);
        let (most, wins) = (AtomicUsize::new(0), std::sync::Mutex::new(Vec::new()));
        std::thread::scope(|s| {
            for _ in 0..3 {
                let (root, scope, name, holding, most, wins) = (&root, &scope, &name, &holding, &most, &wins);
                s.spawn(move || {
                    let id = PodId::random();
                    let names = NameIndex::of(&root.0);
                    let mut won = 0;
                    for _ in 0..2000 {
                        root.record(&id, true);
                        match names.claim(scope, name, &id) {
                            Ok(()) => {
                                won += 1;
                                most.fetch_max(holding.fetch_add(1, SeqCst) + 1, SeqCst);
                                assert_eq!(names.holder(scope, name).as_ref(), Some(&id), "a claim that succeeded does not hold");
                                holding.fetch_sub(1, SeqCst);
                                root.record(&id, false);
                                names.release(scope, name, &id);
                            }
                            Err(PodError::PodExists { id: other, .. }) => {
                                assert_ne!(other, id, "refused the name it holds");
                                root.record(&id, false);
                            }
                            Err(PodError::NameContended(_)) => root.record(&id, false),
                            Err(e) => panic!("{e}"),
                        }
                    }
                    wins.lock().unwrap().push(won);
                });
            }
        });
        assert_eq!(most.load(SeqCst), 1, "the name was held by more than one pod at once");
        let wins = wins.into_inner().unwrap();
        // The control: each pod got the name, most of the times over a stale claim.
        assert!(wins.iter().all(|&w| w > 0), "some pod never got the name: {wins:?}");
    }
}
