//! The `minipod` command's surface, without root: help texts and argument errors.

use std::process::Command;

fn minipod(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_minipod")).args(args).output().unwrap()
}

#[test]
fn every_verb_has_help() {
    for verb in ["create", "start", "state", "kill", "delete", "run", "exec", "list", "spec", "demo"] {
        let out = minipod(&[verb, "--help"]);
        assert!(out.status.success(), "{verb} --help");
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage: minipod"), "{verb}");
    }
}

#[test]
fn invalid_ids_are_rejected_before_anything_runs() {
    let out = minipod(&["--root", "/nonexistent-minipod-root", "state", "a/b"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("has the character '/'"));
}

#[test]
fn the_helper_argument_alone_does_not_start_anything() {
    // Without the marker variable the hook stays out of the way and clap refuses the
    // failsafe argument, so a stray re-exec can never run a command.
    let out = minipod(&["--minipod-internal-helper-do-not-use"]);
    assert_eq!(out.status.code(), Some(2));
}
