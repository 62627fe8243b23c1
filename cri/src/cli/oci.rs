//! The runc-compatible verbs.

use super::OutputFormat;
use std::path::{Path, PathBuf};

use std::os::fd::AsFd;

use anyhow::{bail, Context};
use clap::Args;
use minipod_runtime::{ContainerId, CreateOptions, ExecOptions, Runtime, Signal, Stdio};

#[derive(Args, Debug)]
pub struct IdArg {
    /// Container id.
    id: ContainerId,
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// Bundle directory (config.json + rootfs).
    #[arg(short, long, default_value = ".")]
    bundle: PathBuf,
    /// Write the container's PID to this file.
    #[arg(long)]
    pid_file: Option<PathBuf>,
    /// With `process.terminal: true`: send the terminal's master end over this Unix
    /// socket (as runc does; the receiver drives the terminal).
    #[arg(long)]
    console_socket: Option<PathBuf>,
    /// Container id.
    id: ContainerId,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Bundle directory (config.json + rootfs).
    #[arg(short, long, default_value = ".")]
    bundle: PathBuf,
    /// Write the container's PID to this file.
    #[arg(long)]
    pid_file: Option<PathBuf>,
    /// With `process.terminal: true` and --detach: send the terminal's master end over
    /// this Unix socket (in the foreground, the terminal is joined to this one).
    #[arg(long)]
    console_socket: Option<PathBuf>,
    /// Start it and return at once instead of waiting (stdio goes to /dev/null).
    #[arg(short, long)]
    detach: bool,
    /// Container id.
    id: ContainerId,
}

#[derive(Args, Debug)]
pub struct KillArgs {
    /// Signal every process in the container's cgroup, not only its init.
    #[arg(short, long)]
    all: bool,
    /// Container id.
    id: ContainerId,
    /// Signal name (TERM, SIGKILL, HUP...) or number.
    #[arg(default_value = "TERM")]
    signal: String,
}

#[derive(Args, Debug)]
pub struct DeleteArgs {
    /// Kill the container first if it is running.
    #[arg(long)]
    force: bool,
    /// Container id.
    #[arg(required_unless_present = "filename")]
    id: Option<ContainerId>,
    /// Instead of a container: delete the Kubernetes objects (Services) this YAML or JSON
    /// file names (`-` reads stdin), as `kubectl delete -f` does.
    #[arg(short = 'f', long, conflicts_with_all = ["id", "force"])]
    pub filename: Option<PathBuf>,
    #[command(flatten)]
    pub common: super::pod::Common,
}

#[derive(Args, Debug)]
pub struct ExecArgs {
    /// Extra environment entries (KEY=VALUE), repeatable.
    #[arg(short, long)]
    env: Vec<String>,
    /// Working directory inside the container.
    #[arg(long)]
    cwd: Option<PathBuf>,
    /// User as `UID[:GID]`.
    #[arg(short, long)]
    user: Option<String>,
    /// Container id.
    id: ContainerId,
    /// Command and arguments (after `--`).
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
    format: OutputFormat,
    /// Print only the ids.
    #[arg(short, long)]
    quiet: bool,
}

#[derive(Args, Debug)]
pub struct SpecArgs {
    /// Directory to write config.json into.
    #[arg(short, long, default_value = ".")]
    bundle: PathBuf,
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Where to build the demo bundle.
    #[arg(long, default_value = "/var/lib/minipod/demo")]
    dir: PathBuf,
}

fn open(root: &Path) -> anyhow::Result<Runtime> {
    Ok(Runtime::new(root)?)
}

fn report_warnings(warnings: &[String]) {
    for w in warnings {
        eprintln!("minipod: warning: {w}");
    }
}

pub fn create(root: &Path, a: CreateArgs) -> anyhow::Result<i32> {
    let rt = open(root)?;
    let opts = CreateOptions { stdio: Stdio::Inherit, pid_file: a.pid_file, console_socket: a.console_socket, ..Default::default() };
    let created = rt.create(&a.id, &a.bundle, opts)?;
    refuse_a_terminal_left_alone(&rt, &a.id, &created)?;
    report_warnings(&created.warnings);
    Ok(0)
}

/// A detached container whose terminal came back to us would lose it when this
/// command exits (and its process would get a hangup): refused, as runc does, and
/// removed again.
fn refuse_a_terminal_left_alone(rt: &Runtime, id: &ContainerId, created: &minipod_runtime::Created) -> anyhow::Result<()> {
    if created.terminal.is_some() {
        let _ = rt.delete(id, true);
        bail!(
            "process.terminal is true, and a detached container needs somewhere to send its terminal: give --console-socket PATH \
             (a Unix socket whose listener receives the terminal's master end), or run it in the foreground with `minipod run`"
        );
    }
    Ok(())
}

pub fn start(root: &Path, a: IdArg) -> anyhow::Result<i32> {
    open(root)?.start(&a.id)?;
    Ok(0)
}

pub fn state(root: &Path, a: IdArg) -> anyhow::Result<i32> {
    let st = open(root)?.state(&a.id)?;
    println!("{}", serde_json::to_string_pretty(&st.oci_state())?);
    Ok(0)
}

pub fn kill(root: &Path, a: KillArgs) -> anyhow::Result<i32> {
    let signal: Signal = a.signal.parse()?;
    open(root)?.kill(&a.id, signal, a.all)?;
    Ok(0)
}

pub fn delete(root: &Path, a: DeleteArgs) -> anyhow::Result<i32> {
    match (&a.filename, &a.id) {
        (Some(file), _) => super::service::delete(root, &a.common, file),
        (None, Some(id)) => {
            open(root)?.delete(id, a.force)?;
            Ok(0)
        }
        (None, None) => anyhow::bail!("give a container id, or -f FILE for Kubernetes objects"),
    }
}

pub fn run(root: &Path, a: RunArgs) -> anyhow::Result<i32> {
    let rt = open(root)?;
    if a.detach {
        let opts = CreateOptions { stdio: Stdio::Null, pid_file: a.pid_file, console_socket: a.console_socket, ..Default::default() };
        let created = rt.create(&a.id, &a.bundle, opts)?;
        refuse_a_terminal_left_alone(&rt, &a.id, &created)?;
        report_warnings(&created.warnings);
        if let Err(e) = rt.start(&a.id) {
            let _ = rt.delete(&a.id, true);
            return Err(e.into());
        }
        return Ok(0);
    }
    if a.console_socket.is_some() {
        bail!("--console-socket is for a detached container (-d): in the foreground the terminal is joined to this one");
    }
    // A terminal, if the spec asks for one, starts with our size.
    let window = crate::winsize::get(std::io::stdin().as_fd());
    let opts = CreateOptions { stdio: Stdio::Inherit, pid_file: a.pid_file, window, ..Default::default() };
    let mut joined = None;
    let ran = rt.run_with(&a.id, &a.bundle, opts, |c| {
        forward_signals_to(c.pid);
        if let Some(master) = &c.terminal {
            joined = Some(super::terminal::Joined::start(master));
        }
    });
    // The output is all there once the process is gone; then our terminal is restored.
    if let Some(Ok(j)) = joined.as_mut().map(|j| j.as_mut()) {
        j.finish();
    }
    let (created, status) = ran?;
    joined.transpose()?;
    report_warnings(&created.warnings);
    Ok(status.shell_code())
}

/// pidfd of the workload that [`forward_signal`] relays to; set once it exists. A
/// pidfd, not a PID: after the workload exits its PID may belong to someone else.
static FORWARD_TO: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

extern "C" fn forward_signal(sig: libc::c_int) {
    let fd = FORWARD_TO.load(std::sync::atomic::Ordering::Relaxed);
    if fd >= 0 {
        // pidfd_send_signal is a plain syscall: async-signal-safe.
        let _ = minipod_runtime::pidfd::send(fd, sig);
    }
}

/// Like `runc run`: signals sent to the foreground command (Ctrl-C, a supervisor's
/// TERM) go to the container's process instead of leaving it running unattended.
fn forward_signals_to(pid: i32) {
    let Some(start) = minipod_runtime::state::process_start_time(pid) else { return };
    let Ok(Some(fd)) = minipod_runtime::pidfd::open(pid, start) else { return };
    // Kept open for the life of this process.
    FORWARD_TO.store(std::os::fd::IntoRawFd::into_raw_fd(fd), std::sync::atomic::Ordering::Relaxed);
    for sig in [libc::SIGHUP, libc::SIGINT, libc::SIGQUIT, libc::SIGTERM, libc::SIGUSR1, libc::SIGUSR2] {
        // The handler only calls pidfd_send_signal(2).
        let _ = super::signals::catch(sig, forward_signal);
    }
}

pub fn exec(root: &Path, a: ExecArgs) -> anyhow::Result<i32> {
    let user = a.user.as_deref().map(parse_user).transpose()?;
    let status = open(root)?
        .exec(&a.id, ExecOptions { args: a.command, env: a.env, cwd: a.cwd, user, stdio: Stdio::Inherit, ..Default::default() })?;
    Ok(status.shell_code())
}

fn parse_user(s: &str) -> anyhow::Result<(u32, u32)> {
    let (u, g) = s.split_once(':').unwrap_or((s, s));
    let parse = |v: &str| v.parse::<u32>().with_context(|| format!("--user {s:?}: expected numeric UID[:GID], e.g. 1000:1000"));
    Ok((parse(u)?, parse(g)?))
}

pub fn list(root: &Path, a: ListArgs) -> anyhow::Result<i32> {
    let rt = open(root)?;
    let all = rt.list()?;
    if a.quiet {
        for c in &all {
            println!("{}", c.id);
        }
        return Ok(0);
    }
    if a.format == OutputFormat::Json {
        let states: Vec<_> = all.iter().map(|c| c.oci_state()).collect();
        println!("{}", serde_json::to_string_pretty(&states)?);
        return Ok(0);
    }
    println!("{:<24} {:<8} {:<8} {:<40} CREATED", "ID", "PID", "STATUS", "BUNDLE");
    for c in &all {
        let status = c.live_status();
        let pid = if status == minipod_runtime::Status::Stopped { 0 } else { c.pid.unwrap_or(0) };
        println!("{:<24} {:<8} {:<8} {:<40} {}", c.id, pid, status, c.bundle.display(), c.created);
    }
    Ok(0)
}

pub fn spec(a: SpecArgs) -> anyhow::Result<i32> {
    let path = a.bundle.join("config.json");
    if path.exists() {
        bail!("{} exists already: remove it first or pass another --bundle", path.display());
    }
    std::fs::write(&path, minipod_runtime::spec::default_spec_json()).with_context(|| format!("writing {}", path.display()))?;
    Ok(0)
}

/// Builds a busybox bundle and runs one container from it in the foreground.
pub fn demo(root: &Path, a: DemoArgs) -> anyhow::Result<i32> {
    let rootfs = a.dir.join("rootfs");
    if !rootfs.join("bin/busybox").exists() {
        std::fs::create_dir_all(&rootfs).with_context(|| format!("creating {}", rootfs.display()))?;
        minipod_runtime::busybox::build_rootfs(&rootfs)?;
    }
    let mut spec = minipod_runtime::spec::default_spec();
    let script =
        "echo \"hello from minipod: I am PID $$ on host $(hostname), $(id)\"; echo 'capabilities:'; grep Cap /proc/self/status; ls /";
    if let Some(p) = spec.process_mut() {
        p.set_args(Some(vec!["sh".into(), "-c".into(), script.into()]));
    }
    std::fs::write(a.dir.join("config.json"), serde_json::to_vec_pretty(&spec)?)?;
    let rt = open(root)?;
    let id = ContainerId::new(format!("demo-{}", std::process::id()))?;
    println!("$ minipod run --bundle {} {id}", a.dir.display());
    let (created, status) = rt.run(&id, &a.dir, CreateOptions { stdio: Stdio::Inherit, pid_file: None, ..Default::default() })?;
    report_warnings(&created.warnings);
    println!("container {id} exited with {}", status.shell_code());
    Ok(status.shell_code())
}
