//! minipod's OCI runtime: runs OCI runtime-spec bundles the way runc does, keeps their
//! state under a root directory, runs pods of containers from local OCI images, and is
//! safe to embed in a tokio program or a test.
//!
//! Three levels, each built on the one before:
//!
//! - [`Runtime`]: the runc verbs on bundles (create, start, state, kill, delete, exec).
//! - [`pod::Pods`]: pods (pinned namespaces on networks, /etc files) and their
//!   containers from an [`ImageStore`] or a directory, CRI-format logs ([`logs`]),
//!   and the sweep of what dead processes left; synchronous, shared by the CLI.
//! - [`embed`]: the async API for test harnesses, whose handles clean up on drop.
//!
//! Beside pods, [`service`]: Kubernetes Services (from YAML or in code) in front of the
//! pods their selectors pick, served by the node's firewall and DNS; and [`policy`]:
//! Kubernetes NetworkPolicy, from the same YAML, enforced by the node's firewall.
//!
//! # Model
//!
//! - [`Runtime::create`] loads and checks the bundle, then re-executes the current
//!   binary as a helper (a constructor this crate installs runs it before `main`), so
//!   no container setup ever happens in the caller's possibly multi-threaded process.
//! - The helper detaches and becomes the container's **monitor**: it creates the
//!   cgroup, clones the container's init into new namespaces, and owns it until it
//!   exits, recording the exit status in the state dir. The caller may exit at once.
//! - The init builds the root filesystem (mounts, /dev, `pivot_root`, masked and
//!   read-only paths), sets hostname, sysctls, rlimits, user, capabilities and
//!   no_new_privs, then blocks before exec until [`Runtime::start`]; the spec's
//!   seccomp filter (compiled by libseccomp once per profile) is loaded last, right before
//!   exec when no_new_privs allows it.
//! - With `process.terminal` the init opens a terminal in the container's devpts once
//!   its root is in place, leads a session with it as the controlling terminal, and
//!   hands the master end on: to the monitor for a container logging through it
//!   ([`Stdio::Log`]: the terminal is its output and, for attach, its stdin), over
//!   [`CreateOptions::console_socket`] as runc does, or back in [`Created::terminal`].
//! - The spec's OCI hooks run where the runtime spec puts them, each with the
//!   container's state on stdin and killed at its timeout: `prestart` and
//!   `createRuntime` by the monitor and `createContainer` by the init, once the init
//!   is in its cgroup with its mounts made and before `pivot_root`; `startContainer` in
//!   the container right before exec; `poststart` before `start` returns; `poststop`
//!   at `delete`. A failing hook before the workload runs fails create (or start),
//!   leaving nothing; `poststart` and `poststop` failures are warnings.
//! - What a spec asks for and the host cannot give (user namespaces, AppArmor
//!   or SELinux labels, cgroup settings with no file on this host) is refused at
//!   create, naming the setting, never skipped.
//! - State lives in `<root>/<id>/state.json`, written atomically by the monitor only
//!   (netstack's [`netstack::record`], which pod and container records use too); times
//!   in it are [`time::Timestamp`]s.
//! - A pod's network work runs on netstack's executor thread through a
//!   [`netstack::BlockingNode`]; the pod layer never drives netlink itself.
//! - Images live in an [`ImageStore`]: imported OCI layouts, unpacked once per layer
//!   into directories that containers stack read-only as overlayfs lower layers.
//!
//! The `busybox` feature adds the `busybox` module: root filesystems and
//! OCI layouts made from the node's static busybox, for tests, benchmarks and
//! examples.
//!
//! # Example (runc level)
//!
//! ```no_run
//! use minipod_runtime::{ContainerId, CreateOptions, Runtime};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let rt = Runtime::new("/run/minipod")?;
//! let id = ContainerId::new("hello")?;
//! let (_, status) = rt.run(&id, "/path/to/bundle".as_ref(), CreateOptions::default())?;
//! println!("exited with {}", status.shell_code());
//! # Ok(())
//! # }
//! ```
//!
//! A binary that links this crate gets the helper entry point automatically; it must
//! be started normally (the helper is `/proc/self/exe`), and it must not spawn threads
//! from its own constructors before the helper hook runs.

pub mod bundle;
#[cfg(any(test, feature = "busybox"))]
pub mod busybox;
mod capabilities;
pub mod cgroups;
mod container;
pub mod disk;
pub mod embed;
mod hooks;
mod id;
pub mod image;
pub mod logs;
pub mod pidfd;
pub mod pod;
pub mod policy;
mod process;
mod rootfs;
mod seccomp;
pub mod service;
mod signal;
pub mod spec;
pub mod state;
pub mod time;

pub use bundle::{Bundle, BundleError};
pub use container::{AttachOptions, Attached, ContainerError, CreateOptions, Created, ExecOptions, Runtime, Stdio, DEFAULT_ROOT};
pub use id::{ContainerId, IdError};
pub use image::{Image, ImageConfig, ImageError, ImageStore};
pub use pod::{PodError, Pods, PodsOptions};
pub use process::channel::ChannelError;
pub use process::SpawnError;
pub use signal::{Signal, SignalError};
pub use state::{ContainerState, ExitStatus, Status};

/// An error and its causes on one line: `a: b: c`.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    process::chain(e)
}

/// The networking crate, re-exported so embedders need one dependency.
pub use minipod_netstack as netstack;
