//! Soak: pod cycles (RunPodSandbox, CreateContainer, StartContainer, StopPodSandbox,
//! RemovePodSandbox) by 8 concurrent gRPC clients against one `minipod serve`, on a
//! node namespace of its own. Every 500 cycles it samples the daemon's RSS, open fds
//! and threads; per 1,000 cycles it prints the cycle latency's p50 and p99; then it
//! draws both against the cycle count (an SVG). What it looks for: flat lines, and an
//! RSS under 30 MB.
//!
//! `cargo bench -p minipod-cri --bench soak` (root). `MINIPOD_SOAK_CYCLES` (10,000),
//! `MINIPOD_SOAK_CLIENTS` (8) and `MINIPOD_SOAK_SVG` (target/soak.svg) change it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;

#[path = "../../netstack/benches/support/chart.rs"]
mod chart;
#[path = "support/daemon.rs"]
mod daemon;
use daemon::{connect, quantile, run_pod, start_container, Bench, Client};

const IMAGE: &str = "bench/busybox:1";
const SAMPLE_EVERY: usize = 500;
const LATENCY_WINDOW: usize = 1000;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The daemon's resident memory (MB), open fds and threads.
#[derive(Clone, Copy)]
struct Sample {
    cycles: usize,
    rss_mb: f64,
    fds: usize,
    threads: usize,
}

fn sample(pid: u32, cycles: usize) -> Sample {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.split_whitespace().next()).and_then(|v| v.parse::<f64>().ok())
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0);
    Sample { cycles, rss_mb: field("VmRSS:").unwrap_or(0.0) / 1024.0, fds, threads: field("Threads:").unwrap_or(0.0) as usize }
}

async fn cycle(client: &mut Client, n: usize) {
    let (id, config) = run_pod(client, &format!("soak{n}"), "soak").await;
    let ctr = cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata { name: "main".into(), attempt: 0 }),
        image: Some(cri::ImageSpec { image: IMAGE.into(), ..Default::default() }),
        // Ends at the stop's TERM, as a well-behaved workload does.
        command: vec!["sh".into(), "-c".into(), "trap 'exit 0' TERM; sleep 3600 & wait".into()],
        ..Default::default()
    };
    start_container(client, &id, config, ctr).await;
    client
        .stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: id.clone() })
        .await
        .unwrap_or_else(|e| panic!("StopPodSandbox: {e}"));
    client
        .remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id })
        .await
        .unwrap_or_else(|e| panic!("RemovePodSandbox: {e}"));
}

fn main() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("the soak benchmark needs root");
        return;
    }
    let cycles = env("MINIPOD_SOAK_CYCLES", 10_000);
    let clients = env("MINIPOD_SOAK_CLIENTS", 8);
    let svg = std::env::var("MINIPOD_SOAK_SVG").unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../target/soak.svg").into());
    let bench = Bench::start("soak", IMAGE);
    let pid = bench.pid();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap_or_else(|e| panic!("tokio: {e}"));
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let latencies = Arc::new(Mutex::new(vec![Duration::ZERO; cycles]));
    let samples = Arc::new(Mutex::new(vec![sample(pid, 0)]));
    let started = Instant::now();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let (next, done, latencies, samples, sock) =
                (next.clone(), done.clone(), latencies.clone(), samples.clone(), bench.sock.clone());
            tasks.push(tokio::spawn(async move {
                let mut client = connect(&sock).await;
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= cycles {
                        return;
                    }
                    let t = Instant::now();
                    cycle(&mut client, n).await;
                    let k = done.fetch_add(1, Ordering::Relaxed);
                    // By the order of completion: a window is 1,000 consecutive cycles.
                    if let Ok(mut l) = latencies.lock() {
                        l[k] = t.elapsed();
                    }
                    if (k + 1) % SAMPLE_EVERY == 0 {
                        if let Ok(mut s) = samples.lock() {
                            s.push(sample(pid, k + 1));
                        }
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap_or_else(|e| panic!("a client failed: {e}"));
        }
    });
    let elapsed = started.elapsed();
    let latencies = latencies.lock().map(|l| l.clone()).unwrap_or_default();
    let samples = samples.lock().map(|s| s.clone()).unwrap_or_default();
    println!(
        "minipod serve, {cycles} pod cycles (runp, create, start, stopp, rmp) by {clients} clients in {:.1} s: {:.0} cycles/s",
        elapsed.as_secs_f64(),
        cycles as f64 / elapsed.as_secs_f64()
    );
    println!("{:>8} {:>9} {:>5} {:>8} {:>12} {:>12}", "cycles", "RSS MB", "fds", "threads", "p50 ms", "p99 ms");
    let mut windows = Vec::new();
    for s in &samples {
        let window = (s.cycles >= LATENCY_WINDOW && s.cycles % LATENCY_WINDOW == 0).then(|| {
            let mut w = latencies[s.cycles - LATENCY_WINDOW..s.cycles].to_vec();
            w.sort();
            (quantile(&w, 0.5), quantile(&w, 0.99))
        });
        match window {
            Some((p50, p99)) => {
                windows.push((s.cycles, p50, p99));
                println!("{:>8} {:>9.1} {:>5} {:>8} {:>12.2} {:>12.2}", s.cycles, s.rss_mb, s.fds, s.threads, p50, p99);
            }
            None => println!("{:>8} {:>9.1} {:>5} {:>8}", s.cycles, s.rss_mb, s.fds, s.threads),
        }
    }
    let peak = samples.iter().map(|s| s.rss_mb).fold(0.0, f64::max);
    println!("peak RSS {peak:.1} MB (goal: under 30 MB)");
    match std::fs::write(&svg, draw(cycles, &samples, &windows)) {
        Ok(()) => println!("drawn: {svg}"),
        Err(e) => eprintln!("drawing {svg}: {e}"),
    }
}

/// Two panels over the cycle count: RSS (MB), fds and threads; cycle p50 and p99 (ms).
fn draw(cycles: usize, samples: &[Sample], windows: &[(usize, f64, f64)]) -> String {
    use chart::Panel;
    let of = |f: &dyn Fn(&Sample) -> f64| samples.iter().map(|s| (s.cycles as f64, f(s))).collect::<Vec<_>>();
    let ticks = vec![(cycles as f64, format!("{cycles} cycles"))];
    let daemon = Panel {
        title: "daemon, sampled every 500 cycles",
        x_max: cycles as f64,
        ticks: ticks.clone(),
        series: vec![
            ("RSS MB", "#c0392b", of(&|s| s.rss_mb)),
            ("open fds", "#2471a3", of(&|s| s.fds as f64)),
            ("threads", "#229954", of(&|s| s.threads as f64)),
        ],
    };
    let latency = Panel {
        title: "cycle latency per 1,000 cycles (ms)",
        x_max: cycles as f64,
        ticks,
        series: vec![
            ("p50", "#2471a3", windows.iter().map(|(c, p50, _)| (*c as f64, *p50)).collect()),
            ("p99", "#c0392b", windows.iter().map(|(c, _, p99)| (*c as f64, *p99)).collect()),
        ],
    };
    chart::draw(&[daemon, latency])
}
