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
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().map_err(|source| HookError::Spawn {
        point,
        path: path.clone(),
        source,
    })?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its state is free to; a broken pipe is no failure.
        let _ = stdin.write_all(state.as_bytes());
    }
    let deadline = h.timeout().filter(|t| *t > 0).map(|t| (t, Instant::now() + Duration::from_secs(t as u64)));
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(source) => return Err(HookError::Spawn { point, path, source }),
        }
        if let Some((secs, at)) = deadline {
            if Instant::now() >= at {
                let _ = child.kill();
                let _ = child.wait();
                return Err(HookError::TimedOut { point, path, secs });
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    if status.success() {
        return Ok(());
    }
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    let stderr = stderr.trim();
    Err(HookError::Failed {
        point,
        path,
        status: status.to_string(),
        stderr: if stderr.is_empty() { String::new() } else { format!(": {stderr}") },
    })
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
        let err = run("poststart", Some(&vec![hook(&["sh", "-c", "sleep 5"], Some(1))]), &state).unwrap_err();
        assert!(matches!(err, HookError::TimedOut { secs: 1, .. }), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
