//! The workload's user, groups and capability sets, applied in the order the kernel
//! allows: bounding set first (needs CAP_SETPCAP), then the uid switch with
//! keep-caps, then inheritable, effective, permitted and ambient.

use std::collections::HashSet;

use caps::{CapSet, Capability as Cap};
use nix::errno::Errno;
use oci_spec::runtime::{Capabilities, Process};

/// Applying the user or capabilities failed.
#[derive(Debug, thiserror::Error)]
pub enum CapsError {
    #[error("setting the {set} capability set")]
    Set {
        set: &'static str,
        #[source]
        source: caps::errors::CapsError,
    },
    #[error("switching to uid {uid} gid {gid}: {what}")]
    User {
        uid: u32,
        gid: u32,
        what: &'static str,
        #[source]
        source: Errno,
    },
}

fn convert(set: &Option<Capabilities>, warn: &dyn Fn(String)) -> HashSet<Cap> {
    let mut out = HashSet::new();
    for c in set.iter().flatten() {
        match format!("CAP_{c}").parse::<Cap>() {
            Ok(cap) => {
                out.insert(cap);
            }
            Err(_) => warn(format!("capability CAP_{c} is unknown to this build: skipped")),
        }
    }
    out
}

/// Switches to the process's user and capability sets. `None` capabilities keep the
/// current sets, as runc does; CRI always sends a set.
pub fn apply(process: &Process, warn: &dyn Fn(String)) -> Result<(), CapsError> {
    let caps = process.capabilities().as_ref();
    let set_err = |set| move |source| CapsError::Set { set, source };
    if let Some(c) = caps {
        let bounding = convert(c.bounding(), warn);
        for cap in caps::all() {
            if !bounding.contains(&cap) && caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) {
                caps::drop(None, CapSet::Bounding, cap).map_err(set_err("bounding"))?;
            }
        }
    }
    set_user(process)?;
    if let Some(c) = caps {
        caps::set(None, CapSet::Inheritable, &convert(c.inheritable(), warn)).map_err(set_err("inheritable"))?;
        caps::set(None, CapSet::Effective, &convert(c.effective(), warn)).map_err(set_err("effective"))?;
        caps::set(None, CapSet::Permitted, &convert(c.permitted(), warn)).map_err(set_err("permitted"))?;
        let ambient = convert(c.ambient(), warn);
        if !ambient.is_empty() || caps::read(None, CapSet::Ambient).is_ok_and(|a| !a.is_empty()) {
            caps::set(None, CapSet::Ambient, &ambient).map_err(set_err("ambient"))?;
        }
    }
    Ok(())
}

fn set_user(process: &Process) -> Result<(), CapsError> {
    let user = process.user();
    let (uid, gid) = (user.uid(), user.gid());
    let err = |what| move |source| CapsError::User { uid, gid, what, source };
    let groups: Vec<libc::gid_t> = user.additional_gids().clone().unwrap_or_default();
    // SAFETY: pointer and length of a live vector.
    Errno::result(unsafe { libc::setgroups(groups.len(), groups.as_ptr()) }).map_err(err("setgroups"))?;
    // Keep the permitted set across the uid change; the sets are set explicitly after.
    // SAFETY: prctl and set*id take integers only.
    Errno::result(unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) }).map_err(err("keeping capabilities"))?;
    Errno::result(unsafe { libc::setresgid(gid, gid, gid) }).map_err(err("setresgid"))?;
    Errno::result(unsafe { libc::setresuid(uid, uid, uid) }).map_err(err("setresuid"))?;
    Errno::result(unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0) }).map_err(err("clearing keep-caps"))?;
    Ok(())
}
