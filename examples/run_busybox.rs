//! Embedding the runtime: build a busybox root filesystem, run one container from it
//! with the default spec, print what it printed and how it exited, leave nothing behind.
//!
//! `sudo cargo run --example run_busybox` (needs root and Debian's busybox-static).

use minipod_runtime::{busybox, spec, ContainerId, CreateOptions, Runtime, Stdio};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let base = std::env::temp_dir().join(format!("minipod-example-{}", std::process::id()));
    let bundle = base.join("bundle");
    busybox::build_rootfs(&bundle.join("rootfs"))?;

    let mut config = spec::default_spec();
    if let Some(process) = config.process_mut() {
        process.set_args(Some(vec!["sh".into(), "-c".into(), "echo hello from $(hostname), I am PID $$".into()]));
    }
    std::fs::write(bundle.join("config.json"), serde_json::to_vec_pretty(&config)?)?;

    let runtime = Runtime::new(base.join("state"))?;
    let id = ContainerId::new("example")?;
    let result = runtime.run(&id, &bundle, CreateOptions { stdio: Stdio::Inherit, ..Default::default() });
    std::fs::remove_dir_all(&base)?;
    let (_, status) = result?;
    println!("the container exited with code {}", status.shell_code());
    Ok(())
}
