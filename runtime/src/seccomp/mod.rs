//! System-call filters: the OCI `linux.seccomp` section compiled with libseccomp and
//! loaded by the container's init, and the runtime's default profile, the allow-list
//! that Docker and containerd give a container (`RuntimeDefault` in Kubernetes), with
//! the same additions for the capabilities the container holds.

use std::collections::BTreeSet;

use libseccomp::{ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall};
use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction, LinuxSeccompOperator};

use crate::pod::security::Seccomp;

mod default_profile;
pub use default_profile::default_profile;

/// A profile that cannot be read or loaded.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("reading seccomp profile {path}: give the path of a profile on the node")]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("seccomp profile {path} is not an OCI/Docker seccomp profile: {message}")]
    Parse { path: std::path::PathBuf, message: String },
    #[error("seccomp: {what}")]
    Filter {
        what: String,
        #[source]
        source: libseccomp::error::SeccompError,
    },
    #[error("seccomp: {0}")]
    Unsupported(String),
    #[error("seccomp: the compiled filter could not be handed over or installed")]
    Export(#[source] std::io::Error),
}

fn filter_err(what: impl Into<String>) -> impl FnOnce(libseccomp::error::SeccompError) -> SeccompError {
    let what = what.into();
    move |source| SeccompError::Filter { what, source }
}

/// The `linux.seccomp` JSON for `profile`, given the capabilities the container holds;
/// `None` for no filter.
pub fn profile_json(profile: &Seccomp, caps: &BTreeSet<String>) -> Result<Option<serde_json::Value>, SeccompError> {
    match profile {
        Seccomp::Unconfined => Ok(None),
        Seccomp::RuntimeDefault => {
            // Built once per capability set: each container of a daemon asks again.
            use std::collections::HashMap;
            use std::sync::{Mutex, OnceLock};
            static BUILT: OnceLock<Mutex<HashMap<BTreeSet<String>, serde_json::Value>>> = OnceLock::new();
            let built = BUILT.get_or_init(Default::default);
            if let Some(v) = built.lock().ok().and_then(|b| b.get(caps).cloned()) {
                return Ok(Some(v));
            }
            let v = default_profile(caps);
            if let Ok(mut b) = built.lock() {
                b.insert(caps.clone(), v.clone());
            }
            Ok(Some(v))
        }
        Seccomp::Profile(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| SeccompError::Read { path: path.clone(), source })?;
            let parsed: LinuxSeccomp =
                serde_json::from_str(&text).map_err(|e| SeccompError::Parse { path: path.clone(), message: e.to_string() })?;
            // Compiled here (once per profile) so that a bad one fails at create, not in
            // the init.
            program(&parsed)?;
            serde_json::to_value(&parsed).map(Some).map_err(|e| SeccompError::Parse { path: path.clone(), message: e.to_string() })
        }
    }
}

fn action(a: LinuxSeccompAction, errno: Option<u32>, default_errno: u32) -> Result<ScmpAction, SeccompError> {
    Ok(match a {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => ScmpAction::KillThread,
        LinuxSeccompAction::ScmpActKillProcess => ScmpAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => ScmpAction::Trap,
        LinuxSeccompAction::ScmpActErrno => ScmpAction::Errno(errno.unwrap_or(default_errno) as i32),
        LinuxSeccompAction::ScmpActTrace => ScmpAction::Trace(errno.unwrap_or(default_errno) as u16),
        LinuxSeccompAction::ScmpActAllow => ScmpAction::Allow,
        LinuxSeccompAction::ScmpActLog => ScmpAction::Log,
        LinuxSeccompAction::ScmpActNotify => {
            return Err(SeccompError::Unsupported("SCMP_ACT_NOTIFY needs a listener: use another action".into()))
        }
    })
}

fn arch(a: &oci_spec::runtime::Arch) -> Option<ScmpArch> {
    use oci_spec::runtime::Arch;
    Some(match a {
        Arch::ScmpArchX86 => ScmpArch::X86,
        Arch::ScmpArchX86_64 => ScmpArch::X8664,
        Arch::ScmpArchX32 => ScmpArch::X32,
        Arch::ScmpArchArm => ScmpArch::Arm,
        Arch::ScmpArchAarch64 => ScmpArch::Aarch64,
        _ => return None,
    })
}

/// A filter for `profile`, ready to load. System calls this libseccomp does not know
/// are skipped, as runc does: a profile written for a newer kernel still loads.
pub fn compile(profile: &LinuxSeccomp) -> Result<ScmpFilterContext, SeccompError> {
    const EPERM: u32 = libc::EPERM as u32;
    let default_errno = profile.default_errno_ret().unwrap_or(EPERM);
    let mut ctx = ScmpFilterContext::new(action(profile.default_action(), Some(default_errno), default_errno)?)
        .map_err(filter_err("creating the filter"))?;
    for a in profile.architectures().iter().flatten() {
        if let Some(a) = arch(a) {
            // The native one is in every filter already; one libseccomp cannot add is
            // left out, as runc does.
            if a != ScmpArch::native() {
                let _ = ctx.add_arch(a);
            }
        }
    }
    // Without this, libseccomp refuses a rule whose action equals the default one.
    ctx.set_ctl_nnp(false).map_err(filter_err("leaving no_new_privs to the runtime"))?;
    // A binary tree of syscall numbers instead of a list: the kernel walks the filter
    // for every syscall number when it is loaded (to cache what is always allowed),
    // which took 1.4 ms a container for the default profile as a list, 0.7 ms as a
    // tree. libseccomp before 2.5 cannot: it then stays a list.
    let _ = ctx.set_ctl_optimize(2);
    for rule in profile.syscalls().iter().flatten() {
        let act = action(rule.action(), rule.errno_ret(), default_errno)?;
        let conds: Vec<ScmpArgCompare> = rule
            .args()
            .iter()
            .flatten()
            .map(|a| {
                let op = match a.op() {
                    LinuxSeccompOperator::ScmpCmpNe => ScmpCompareOp::NotEqual,
                    LinuxSeccompOperator::ScmpCmpLt => ScmpCompareOp::Less,
                    LinuxSeccompOperator::ScmpCmpLe => ScmpCompareOp::LessOrEqual,
                    LinuxSeccompOperator::ScmpCmpEq => ScmpCompareOp::Equal,
                    LinuxSeccompOperator::ScmpCmpGe => ScmpCompareOp::GreaterEqual,
                    LinuxSeccompOperator::ScmpCmpGt => ScmpCompareOp::Greater,
                    LinuxSeccompOperator::ScmpCmpMaskedEq => ScmpCompareOp::MaskedEqual(a.value()),
                };
                let datum = if matches!(a.op(), LinuxSeccompOperator::ScmpCmpMaskedEq) { a.value_two().unwrap_or(0) } else { a.value() };
                ScmpArgCompare::new(a.index() as u32, op, datum)
            })
            .collect();
        for name in rule.names() {
            let Ok(call) = ScmpSyscall::from_name(name) else { continue };
            if act == action(profile.default_action(), Some(default_errno), default_errno)? && conds.is_empty() {
                continue;
            }
            let added = if conds.is_empty() { ctx.add_rule(act, call) } else { ctx.add_rule_conditional(act, call, &conds) };
            added.map_err(filter_err(format!("adding a rule for {name}")))?;
        }
    }
    Ok(ctx)
}

/// Reads and checks a profile for `minipod create` bundles; fails like a bad spec would.
pub fn check(profile: &LinuxSeccomp) -> Result<(), SeccompError> {
    program(profile).map(drop)
}

/// A filter compiled to the kernel's BPF, ready to install: what travels to a
/// container's init (hex, in the JSON messages) instead of the profile, so that
/// libseccomp's ~15 ms of compiling a default profile is paid once per profile and
/// process, not per container.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Program(String);

/// The profile's program, compiled once per distinct profile in this process.
pub fn program(profile: &LinuxSeccomp) -> Result<Program, SeccompError> {
    use std::sync::{Mutex, OnceLock};
    // Few distinct profiles (the default one per capability set, some Localhost ones):
    // comparing them is cheaper than serialising each to hash it.
    static CACHE: OnceLock<Mutex<Vec<(LinuxSeccomp, Program)>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(p) = cache.lock().ok().and_then(|c| c.iter().find(|(known, _)| known == profile).map(|(_, p)| p.clone())) {
        return Ok(p);
    }
    let ctx = compile(profile)?;
    let fd = nix::sys::memfd::memfd_create("minipod-seccomp", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
        .map_err(|e| SeccompError::Export(std::io::Error::from(e)))?;
    let mut file = std::fs::File::from(fd);
    ctx.export_bpf(&file).map_err(filter_err("compiling the filter to BPF"))?;
    let mut bytes = Vec::new();
    {
        use std::io::{Read, Seek};
        file.rewind().and_then(|_| file.read_to_end(&mut bytes)).map_err(SeccompError::Export)?;
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let p = Program(hex);
    if let Ok(mut c) = cache.lock() {
        c.push((profile.clone(), p.clone()));
    }
    Ok(p)
}

/// Installs a program as this process's filter (inherited by all it executes). Needs
/// no_new_privs or CAP_SYS_ADMIN, as any filter does.
pub fn install(p: &Program) -> Result<(), SeccompError> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    let bytes: Vec<u8> = p.0.as_bytes().chunks_exact(2).map_while(|h| Some(nibble(h[0])? << 4 | nibble(h[1])?)).collect();
    if bytes.is_empty() || !bytes.len().is_multiple_of(8) || bytes.len() * 2 != p.0.len() {
        return Err(SeccompError::Export(std::io::Error::other("the filter program is garbled")));
    }
    let filter: Vec<libc::sock_filter> = bytes
        .chunks_exact(8)
        .map(|c| libc::sock_filter {
            code: u16::from_ne_bytes([c[0], c[1]]),
            jt: c[2],
            jf: c[3],
            k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect();
    // The kernel takes at most BPF_MAXINSNS (4096) instructions; a longer program
    // must not be cut to a prefix by the u16 length.
    let len = u16::try_from(filter.len()).map_err(|_| {
        SeccompError::Export(std::io::Error::other(format!("the filter has {} instructions, more than a filter can", filter.len())))
    })?;
    let prog = libc::sock_fprog { len, filter: filter.as_ptr() as *mut libc::sock_filter };
    // SAFETY: prog points at `filter`, alive for the call; the kernel copies it.
    let r = unsafe {
        libc::syscall(libc::SYS_seccomp, 1 /* SECCOMP_SET_MODE_FILTER */, 0, &prog as *const libc::sock_fprog)
    };
    if r != 0 {
        return Err(SeccompError::Export(std::io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_profile_compiles_and_grows_with_capabilities() {
        let plain: BTreeSet<String> = ["CAP_CHOWN".to_string()].into();
        let json = default_profile(&plain);
        let parsed: LinuxSeccomp = serde_json::from_value(json.clone()).unwrap();
        compile(&parsed).unwrap();
        let text = json.to_string();
        assert!(!text.contains("\"mount\"") && text.contains("SCMP_CMP_MASKED_EQ"));
        // Only what this kernel runs: no section for a foreign architecture.
        if cfg!(target_arch = "x86_64") {
            assert_eq!(json["architectures"], serde_json::json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]));
        }
        let admin: BTreeSet<String> = ["CAP_SYS_ADMIN".to_string()].into();
        let text = default_profile(&admin).to_string();
        assert!(text.contains("\"mount\"") && !text.contains("SCMP_CMP_MASKED_EQ"));
    }
}
