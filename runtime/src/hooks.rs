//! OCI hooks: the programs a spec names for points of a container's life, each run
//! with the container's state (JSON) on its stdin and killed at its timeout.
//!
//! Where each runs, as the runtime spec says: `prestart` and `createRuntime` by the
//! monitor in the runtime's namespaces once the container's namespaces and mounts
//! exist and before `pivot_root`; `createContainer` by the init in the container's
//! namespaces, also before `pivot_root`; `startContainer` by the init right before it
//! execs the workload; `poststart` by the monitor once the workload runs; `poststop`
//! by `delete` once the container is gone. A failing hook before the workload runs
//! fails the container; `poststart` and `poststop` failures are warnings.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oci_spec::runtime::Hook;

/// A hook did not run to success.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("{point} hook {path}: could not be started")]
    Spawn {
        point: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{point} hook {path} failed ({status}){stderr}")]
    Failed { point: &'static str, path: String, status: String, stderr: String },
    #[error("{point} hook {path} ran past its timeout of {secs} s and was killed")]
    TimedOut { point: &'static str, path: String, secs: i64 },
}

/// The state a hook reads on stdin (the runtime spec's state object).
pub fn state(id: &str, status: &str, pid: Option<i32>, bundle: &Path, annotations: Option<&HashMap<String, String>>) -> String {
    let mut s = serde_json::json!({ "ociVersion": "1.2.0", "id": id, "status": status, "bundle": bundle.display().to_string() });
    if let Some(pid) = pid {
        s["pid"] = pid.into();
    }
    if let Some(a) = annotations.filter(|a| !a.is_empty()) {
        s["annotations"] = serde_json::to_value(a).unwrap_or_default();
    }
    s.to_string()
}

/// `state` with another status.
pub fn with_status(state: &str, status: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(state) {
        Ok(mut v) => {
            v["status"] = status.into();
            v.to_string()
        }
        Err(_) => state.to_string(),
    }
}

/// Whether the spec has hooks that run before the workload does (these need the
/// init and the monitor to meet before `pivot_root`).
pub fn any_before_start(spec: &oci_spec::runtime::Spec) -> bool {
    let Some(h) = spec.hooks() else { return false };
    [h.prestart(), h.create_runtime(), h.create_container(), h.start_container()].iter().any(|l| l.as_ref().is_some_and(|l| !l.is_empty()))
}

/// Runs `hooks` one after the other; stops at the first that fails.
pub fn run(point: &'static str, hooks: Option<&Vec<Hook>>, state: &str) -> Result<(), HookError> {
    for h in hooks.into_iter().flatten() {
        run_one(point, h, state)?;
    }
    Ok(())
}

/// Runs every hook of a point whose failure is only a warning (`poststart`,
/// `poststop`): a failing one does not keep the next from running.
pub fn run_each(point: &'static str, hooks: Option<&Vec<Hook>>, state: &str) -> Vec<HookError> {
    hooks.into_iter().flatten().filter_map(|h| run_one(point, h, state).err()).collect()
}

fn run_one(point: &'static str, h: &Hook, state: &str) -> Result<(), HookError> {
    let path = h.path().display().to_string();
    let args = h.args().clone().unwrap_or_default();
    let mut cmd = Command::new(h.path());
    if let Some((arg0, rest)) = args.split_first() {
        cmd.arg0(arg0).args(rest);
    }
    cmd.env_clear();
    for kv in h.env().iter().flatten() {
        if let Some((k, v)) = kv.split_once('=') {
            cmd.env(k, v);
        }
    }
    // A group of its own, so that a timeout kills what the hook started too.
    cmd.process_group(0);
    // A hook that exits without reading its state must not kill us with SIGPIPE (the
    // init and monitor run with default dispositions); the hook gets the default back.
    let _sigpipe = IgnoreSigpipe::new();
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().map_err(|source| HookError::Spawn {
        point,
        path: path.clone(),
        source,
    })?;
    let mut stdin = child.stdin.take();
    let mut stderr = child.stderr.take();
    for fd in [stdin.as_ref().map(|f| f.as_fd()), stderr.as_ref().map(|f| f.as_fd())].into_iter().flatten() {
        let _ = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK));
    }
    let mut unsent = state.as_bytes();
    let mut said = Vec::new();
    let deadline = h.timeout().filter(|t| *t > 0).map(|t| (t, Instant::now() + Duration::from_secs(t as u64)));
    // The state is fed and stderr kept (16 KiB of it) while waiting, never blocking:
    // a hook that reads nothing or writes much cannot outlast its timeout.
    let status = loop {
        if let Some(w) = &mut stdin {
            match w.write(unsent) {
                Ok(n) => unsent = &unsent[n..],
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => unsent = &[],
            }
            if unsent.is_empty() {
                stdin = None;
            }
        }
        if let Some(r) = &mut stderr {
            let mut buf = [0u8; 4096];
            match r.read(&mut buf) {
                Ok(0) => stderr = None,
                Ok(n) => said.extend_from_slice(&buf[..n.min((16 << 10) - said.len().min(16 << 10))]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => stderr = None,
            }
        }
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(source) => return Err(HookError::Spawn { point, path, source }),
        }
        if let Some((secs, at)) = deadline {
            if Instant::now() >= at {
                let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGKILL);
                let _ = child.wait();
                return Err(HookError::TimedOut { point, path, secs });
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    if status.success() {
        return Ok(());
    }
    // What it wrote last, without waiting for anything it left running.
    if let Some(r) = &mut stderr {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = r.read(&mut buf) {
            said.extend_from_slice(&buf[..n.min((16 << 10) - said.len().min(16 << 10))]);
        }
    }
    let said = String::from_utf8_lossy(&said);
    let said = said.trim();
    Err(HookError::Failed {
        point,
        path,
        status: status.to_string(),
        stderr: if said.is_empty() { String::new() } else { format!(": {said}") },
    })
}

/// SIGPIPE ignored while it lives; the disposition before restored on drop.
struct IgnoreSigpipe(Option<nix::sys::signal::SigHandler>);

impl IgnoreSigpipe {
    fn new() -> Self {
        use nix::sys::signal::{signal, SigHandler, Signal};
        // SAFETY: SIG_IGN installs no handler code.
        Self(unsafe { signal(Signal::SIGPIPE, SigHandler::SigIgn) }.ok())
    }
}

impl Drop for IgnoreSigpipe {
    fn drop(&mut self) {
        if let Some(old) = self.0 {
            // SAFETY: puts back the disposition that was there before.
            let _ = unsafe { nix::sys::signal::signal(nix::sys::signal::Signal::SIGPIPE, old) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hooks_get_the_state_and_fail_or_time_out_clearly() {
        let dir = std::env::temp_dir().join(format!("minipod-hooks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("state");
        let hook = |args: &[&str], timeout: Option<i64>| -> Hook {
            serde_json::from_value(serde_json::json!({
                "path": "/bin/sh", "args": args, "env": ["OUT=".to_string() + out.to_str().unwrap()], "timeout": timeout
            }))
            .unwrap()
        };
        let state = state("c1", "creating", Some(42), Path::new("/b"), None);
        run("prestart", Some(&vec![hook(&["sh", "-c", "cat > \"$OUT\""], None)]), &state).unwrap();
        let got: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
        assert_eq!((got["id"].as_str(), got["pid"].as_i64(), got["status"].as_str()), (Some("c1"), Some(42), Some("creating")));
        let err = run("createRuntime", Some(&vec![hook(&["sh", "-c", "echo nope >&2; exit 3"], None)]), &state).unwrap_err();
        assert!(err.to_string().contains("createRuntime hook /bin/sh failed") && err.to_string().contains("nope"), "{err}");
        // What a timed-out hook started dies with it.
        let err = run("poststart", Some(&vec![hook(&["sh", "-c", "sleep 5 & echo $! > \"$OUT\"; wait"], Some(1))]), &state).unwrap_err();
        assert!(matches!(err, HookError::TimedOut { secs: 1, .. }), "{err}");
        let sleeper: i32 = std::fs::read_to_string(&out).unwrap().trim().parse().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let stat = std::fs::read_to_string(format!("/proc/{sleeper}/stat")).unwrap_or_default();
        assert!(stat.is_empty() || stat.contains(") Z "), "the hook's child outlived its timeout: {stat}");
        // A hook that neither reads a large state nor exits is still timed out.
        let big = "x".repeat(1 << 20);
        let err = run("prestart", Some(&vec![hook(&["sh", "-c", "sleep 5"], Some(1))]), &big).unwrap_err();
        assert!(matches!(err, HookError::TimedOut { secs: 1, .. }), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
