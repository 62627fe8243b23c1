//! Every user mistake the OCI verbs can meet: one clear line on stderr, a non-zero
//! exit, and nothing left behind (state dir, cgroup, mount or process).

mod support;

use serde_json::json;
use support::{cgroup_dirs, host_mounts_mention, need_root, processes_mentioning, Harness};

/// Runs `args`, expects failure with `needle` in a one-line message, and checks the host.
fn fails(h: &Harness, args: &[&str], needle: &str) -> String {
    let out = h.minipod(args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{args:?} should fail");
    assert!(err.contains(needle), "{args:?}: expected {needle:?} in {err:?}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err:?}");
    err
}

fn nothing_left(h: &Harness, id: &str) {
    assert!(!h.state_dir(id).exists(), "state dir of {id} left");
    assert!(cgroup_dirs(id).iter().all(|d| !d.exists()), "cgroup of {id} left");
    assert!(!host_mounts_mention(&h.base), "mount left");
    assert!(processes_mentioning(h.base.to_str().unwrap()).is_empty(), "process left");
}

#[test]
fn bad_bundles_are_refused_with_nothing_left() {
    need_root();
    let h = Harness::new("badbundle");
    let id = h.id("bad");
    let missing = h.base.join("nowhere");
    fails(&h, &["create", "--bundle", missing.to_str().unwrap(), &id], "does not exist: pass --bundle");
    nothing_left(&h, &id);

    let b = h.bundle(&["true"]);
    std::fs::remove_file(b.dir.join("config.json")).unwrap();
    fails(&h, &["create", "--bundle", b.dir.to_str().unwrap(), &id], "has no config.json");
    nothing_left(&h, &id);

    std::fs::write(b.dir.join("config.json"), "{\n  \"ociVersion\": \"1.2.0\",\n  \"process\": { \"args\": [\"true\"] \n").unwrap();
    fails(&h, &["create", "--bundle", b.dir.to_str().unwrap(), &id], "EOF while parsing an object (line 4, column 0)");
    std::fs::write(b.dir.join("config.json"), r#"{"ociVersion": "1.2.0", "process": {"args": 5}}"#).unwrap();
    fails(&h, &["create", "--bundle", b.dir.to_str().unwrap(), &id], "not a valid OCI runtime spec");
    nothing_left(&h, &id);

    let mut b = h.bundle(&["true"]);
    b.config["root"]["path"] = json!("missing-rootfs");
    b.write();
    fails(&h, &["create", "--bundle", b.dir.to_str().unwrap(), &id], "missing-rootfs (root.path in");
    nothing_left(&h, &id);

    let mut b = h.bundle(&["no-such-binary"]);
    b.write();
    fails(&h, &["create", "--bundle", b.dir.to_str().unwrap(), &id], "executable \"no-such-binary\" not found");
    nothing_left(&h, &id);

    b.config["process"]["args"] = json!(["true"]);
    b.config["mounts"]
        .as_array_mut()
        .unwrap()
        .push(json!({"destination": "/x", "type": "bind", "source": "/definitely/not/here", "options": ["bind"]}));
    b.write();
    fails(&h, &["create", "--bundle", b.dir.to_str().unwrap(), &id], "/definitely/not/here");
    nothing_left(&h, &id);
}

#[test]
fn unknown_ids_and_bad_ids_are_clear_errors() {
    need_root();
    let h = Harness::new("unknown");
    let id = h.id("ghost");
    for verb in [&["state", &id][..], &["start", &id], &["kill", &id], &["delete", &id], &["exec", &id, "--", "true"]] {
        fails(&h, verb, "does not exist in");
    }
    // Ids are checked while parsing arguments (clap adds its usage hint line).
    for (bad, needle) in [("a/b", "has the character '/'"), ("..", "not starting with `.`")] {
        let out = h.minipod(&["state", bad]);
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.lines().next().unwrap_or_default().contains(needle), "{bad:?}: {err}");
    }
}

#[test]
fn duplicate_id_is_refused_and_the_first_container_survives() {
    need_root();
    let h = Harness::new("dup");
    let b = h.bundle(&["sleep", "300"]);
    let id = h.create(&b, "dup");
    fails(&h, &["create", "--bundle", b.dir.to_str().unwrap(), &id], "already exists");
    assert_eq!(h.state(&id)["status"], "created");
    assert!(h.minipod(&["delete", &id]).status.success());
    nothing_left(&h, &id);
}

#[test]
fn deleting_a_running_container_needs_force() {
    need_root();
    let h = Harness::new("force");
    let id = h.create(&h.bundle(&["sleep", "300"]), "force");
    assert!(h.minipod(&["start", &id]).status.success());
    fails(&h, &["delete", &id], "is running: stop it first");
    assert_eq!(h.state(&id)["status"], "running");
    assert!(h.minipod(&["delete", "--force", &id]).status.success());
    nothing_left(&h, &id);
}

#[test]
fn bad_signal_names_are_refused() {
    need_root();
    let h = Harness::new("sig");
    let id = h.create(&h.bundle(&["sleep", "300"]), "sig");
    fails(&h, &["kill", &id, "SIGFOO"], "unknown signal \"SIGFOO\"");
    fails(&h, &["kill", &id, "99"], "unknown signal \"99\"");
    assert_eq!(h.state(&id)["status"], "created");
    assert!(h.minipod(&["delete", &id]).status.success());
    nothing_left(&h, &id);
}

#[test]
fn spec_writes_a_default_config_and_refuses_to_overwrite() {
    let h = Harness::new("spec");
    let dir = h.base.to_str().unwrap();
    assert!(h.minipod(&["spec", "--bundle", dir]).status.success());
    let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(h.base.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["root"]["path"], "rootfs");
    fails(&h, &["spec", "--bundle", dir], "exists already");
}
