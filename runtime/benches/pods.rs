//! Pod start and teardown latency through the embedding API, and the monitor's memory.
//!
//! `cargo bench -p minipod-runtime --bench pods` (root). Starts 500 pods one after the
//! other on a private node, each with one busybox container running `sleep`, and prints
//! the latency of "pod + network + first container running" around the 1st, 100th and
//! 500th pod, then teardown latency, then the private memory of the containers'
//! monitors. Environment: MINIPOD_BENCH_PODS (default 500).
//!
//! Everything lives on a tmpfs in a mount namespace of the benchmark's own, as the
//! runtime's state does under a stock /run: on this VM's ext4 /tmp, inode allocation
//! (which steps around recently deleted inodes) slowed every run after the first, up
//! to 3x, as the previous runs' files piled up as deleted.

use std::time::{Duration, Instant};

use minipod_runtime::embed::Minipod;

fn stats(label: &str, mut v: Vec<Duration>) {
    v.sort();
    let pick = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "{label:<28} n={:<4} median {:>7.2} ms   p99 {:>7.2} ms",
        v.len(),
        pick(0.5).as_secs_f64() * 1e3,
        pick(0.99).as_secs_f64() * 1e3
    );
}

/// Private (unshared) memory of a process, from smaps_rollup: (private kB, pss kB).
fn private_kb(pid: i32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let field = |name: &str| -> u64 {
        text.lines().find(|l| l.starts_with(name)).and_then(|l| l.split_whitespace().nth(1)).and_then(|n| n.parse().ok()).unwrap_or(0)
    };
    Some((field("Private_Clean:") + field("Private_Dirty:"), field("Pss:")))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("the pod benchmark needs root");
        return Ok(());
    }
    let base = std::env::temp_dir().join(format!("minipod-bench-pods-{}", std::process::id()));
    std::fs::create_dir_all(&base)?;
    // Before any thread exists: a mount namespace belongs to the thread that made it.
    use nix::mount::{mount, MsFlags};
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)?;
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)?;
    mount(Some("tmpfs"), &base, Some("tmpfs"), MsFlags::empty(), Some("mode=0700"))?;
    let result = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?.block_on(run(&base));
    // The tmpfs goes with this mount namespace; the directory under it is the host's.
    let _ = nix::mount::umount2(&base, nix::mount::MntFlags::MNT_DETACH);
    let _ = std::fs::remove_dir(&base);
    result
}

async fn run(base: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::var("MINIPOD_BENCH_PODS").ok().and_then(|v| v.parse().ok()).unwrap_or(500);
    let rootfs = base.join("rootfs");
    std::fs::create_dir_all(&rootfs)?;
    minipod_runtime::busybox::build_rootfs(&rootfs)?;
    // A /20 holds the pods (a /24 would run out at 253).
    let rt =
        Minipod::builder().state_dir(base.join("state")).image_dir(base.join("images")).private_node().cidr("10.89.0.0/20")?.open().await?;

    let mut pods = Vec::with_capacity(n);
    let mut start = Vec::with_capacity(n);
    let (mut pod_part, mut ctr_part) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n {
        let t = Instant::now();
        let pod = rt.pod(&format!("pod-{i}")).start().await?;
        let made = t.elapsed();
        let c = pod.container("main").rootfs(&rootfs).cmd(["sleep", "3600"]).start().await?;
        start.push(t.elapsed());
        pod_part.push(made);
        ctr_part.push(t.elapsed() - made);
        pods.push((pod, c));
    }
    println!("minipod pod start (pod + network + first container running), {n} pods, one at a time");
    let window = |at: usize| start[at.saturating_sub(5).min(n - 1)..(at + 5).min(n)].to_vec();
    stats("pods 1-5", start[..5.min(n)].to_vec());
    if n >= 100 {
        stats("around the 100th pod", window(99));
    }
    if n >= 500 {
        stats("around the 500th pod", window(499));
    }
    stats("all pods", start.clone());
    stats("  of which the pod", pod_part);
    stats("  of which the container", ctr_part);

    let mut private = Vec::new();
    for (_, c) in pods.iter().take(20) {
        let st = c.state().await?;
        if let Some(kb) = private_kb(st.monitor_pid) {
            private.push(kb);
        }
    }
    if !private.is_empty() {
        let avg = |f: fn(&(u64, u64)) -> u64| private.iter().map(f).sum::<u64>() as f64 / private.len() as f64;
        println!(
            "monitor memory over {} containers: private {:.0} KiB, PSS {:.0} KiB each (monitor = this benchmark's binary, re-executed)",
            private.len(),
            avg(|p| p.0),
            avg(|p| p.1)
        );
    }

    let mut teardown = Vec::with_capacity(n);
    for (pod, _c) in pods.drain(..) {
        let t = Instant::now();
        pod.remove().await?;
        teardown.push(t.elapsed());
    }
    stats("pod teardown (kill + remove)", teardown);
    rt.shutdown().await?;
    Ok(())
}
