//! `run` of the same `true` bundle (the default spec of `minipod spec`) with minipod,
//! crun and runc, interleaved so that machine noise hits all three alike. Prints each
//! one's median, p90 and p99 wall time and minipod's ratio to the others.
//!
//! Run as root: `cargo bench -p minipod-cri --bench oci_run` (MINIPOD_BENCH_RUNS=N to
//! change the 300 runs per runtime). Runtimes that are not installed are skipped.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Runtime {
    name: &'static str,
    bin: PathBuf,
    root: PathBuf,
    times: Vec<Duration>,
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(name)).find(|p| p.is_file())
}

fn run_once(rt: &Runtime, bundle: &Path, id: &str) -> Result<Duration, String> {
    let start = Instant::now();
    let out = Command::new(&rt.bin)
        .arg("--root")
        .arg(&rt.root)
        .args(["run", "--bundle"])
        .arg(bundle)
        .arg(id)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| e.to_string())?;
    let took = start.elapsed();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    Ok(took)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// crun refuses this host's hybrid cgroup layout unless hugetlb is mounted as v1
/// (see DESIGN.md, machine facts). Mount it, as the design notes say, and say so.
fn prepare_crun(rt: &Runtime, bundle: &Path) -> bool {
    match run_once(rt, bundle, "probe") {
        Ok(_) => true,
        Err(e) if e.contains("hybrid") && !Path::new("/sys/fs/cgroup/hugetlb").exists() || e.contains("hybrid") => {
            println!("note: crun refuses hybrid cgroups here ({e}); mounting the hugetlb v1 hierarchy at /sys/fs/cgroup/hugetlb");
            let _ = std::fs::create_dir_all("/sys/fs/cgroup/hugetlb");
            let ok = Command::new("mount")
                .args(["-t", "cgroup", "-o", "hugetlb", "cgroup", "/sys/fs/cgroup/hugetlb"])
                .status()
                .is_ok_and(|s| s.success());
            ok && run_once(rt, bundle, "probe2").is_ok()
        }
        Err(e) => {
            println!("skipping crun: {e}");
            false
        }
    }
}

fn main() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        println!("oci_run benchmark skipped: it needs root (namespaces, cgroups, mounts)");
        return;
    }
    let runs: usize = std::env::var("MINIPOD_BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(300);
    let base = PathBuf::from(format!("/run/minipod-bench-{}", std::process::id()));
    let bundle = base.join("bundle");
    let rootfs = bundle.join("rootfs");
    std::fs::create_dir_all(&rootfs).expect("creating the bench dir under /run");
    if let Err(e) = minipod_runtime::busybox::build_rootfs(&rootfs) {
        println!("oci_run benchmark skipped: {e}");
        return;
    }
    let mut spec: serde_json::Value = serde_json::from_str(&minipod_runtime::spec::default_spec_json()).expect("default spec");
    spec["process"]["args"] = serde_json::json!(["true"]);
    std::fs::write(bundle.join("config.json"), serde_json::to_vec_pretty(&spec).expect("json")).expect("config.json");

    let mut runtimes =
        vec![Runtime { name: "minipod", bin: PathBuf::from(env!("CARGO_BIN_EXE_minipod")), root: base.join("minipod"), times: vec![] }];
    for name in ["crun", "runc"] {
        match which(name) {
            Some(bin) => runtimes.push(Runtime { name, root: base.join(name), bin, times: vec![] }),
            None => println!("skipping {name}: not installed (apt-get install {name})"),
        }
    }
    runtimes.retain(|rt| rt.name != "crun" || prepare_crun(rt, &bundle));

    println!("{runs} runs each of `RUNTIME run` on a busybox `true` bundle (default spec: pid, net, ipc, uts, mount, cgroup namespaces; read-only rootfs)");
    for i in 0..runs + 10 {
        for rt in runtimes.iter_mut() {
            match run_once(rt, &bundle, &format!("bench-{i}")) {
                // The first ten are warm-up (page cache, cgroup parents).
                Ok(t) if i >= 10 => rt.times.push(t),
                Ok(_) => {}
                Err(e) => panic!("{} run failed: {e}", rt.name),
            }
        }
    }

    println!("{:<10} {:>10} {:>10} {:>10} {:>10}", "runtime", "median ms", "p90 ms", "p99 ms", "mean ms");
    let mut medians = Vec::new();
    for rt in runtimes.iter_mut() {
        rt.times.sort();
        let mean = rt.times.iter().sum::<Duration>() / rt.times.len() as u32;
        let median = percentile(&rt.times, 0.5);
        println!(
            "{:<10} {:>10.2} {:>10.2} {:>10.2} {:>10.2}",
            rt.name,
            ms(median),
            ms(percentile(&rt.times, 0.9)),
            ms(percentile(&rt.times, 0.99)),
            ms(mean)
        );
        medians.push((rt.name, median));
    }
    let ours = medians[0].1;
    for (name, median) in &medians[1..] {
        println!("minipod / {name} (median): {:.2}x", ms(ours) / ms(*median));
    }
    let _ = std::fs::remove_dir_all(&base);
}
