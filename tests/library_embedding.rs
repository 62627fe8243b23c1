//! The runtime as a library inside a multi-threaded tokio test: the helper hook takes
//! over the re-exec'd test binary, so setup never forks this threaded process.

mod support;

use minipod_runtime::{ContainerId, CreateOptions, ExitStatus, Runtime, Signal, Status, Stdio};
use support::{need_root, Harness};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn create_start_wait_delete_from_a_tokio_runtime() {
    need_root();
    let h = Harness::new("lib");
    let b = h.bundle(&["sh", "-c", "echo from-the-library > /dev/shm/x; exit 5"]);
    let dir = b.write().to_path_buf();
    let rt = Runtime::new(&h.root).unwrap();
    let id = ContainerId::new(h.id("lib")).unwrap();
    let (rt2, id2) = (rt.clone(), id.clone());
    let status = tokio::task::spawn_blocking(move || {
        let created = rt2.create(&id2, &dir, CreateOptions::default())?;
        assert!(created.pid > 0);
        assert_eq!(rt2.state(&id2)?.live_status(), Status::Created);
        rt2.start(&id2)?;
        rt2.wait(&id2)
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(status, ExitStatus::Code(5));
    assert_eq!(rt.state(&id).unwrap().live_status(), Status::Stopped);
    rt.delete(&id, false).unwrap();
    assert!(matches!(rt.state(&id), Err(minipod_runtime::ContainerError::NotFound { .. })));
}

#[test]
fn run_returns_the_signal_and_stdio_fds_reach_the_workload() {
    need_root();
    let h = Harness::new("libfds");
    let b = h.bundle(&["sh", "-c", "echo out; echo err >&2; kill -TERM $$; sleep 5"]);
    let out_path = h.base.join("out");
    let out = std::fs::File::create(&out_path).unwrap();
    let err = out.try_clone().unwrap();
    let null = std::fs::File::open("/dev/null").unwrap();
    let rt = Runtime::new(&h.root).unwrap();
    let id = ContainerId::new(h.id("fds")).unwrap();
    // PID 1 has no TERM handler, so its own TERM is ignored; the outside KILL is not.
    let rt2 = rt.clone();
    let id2 = id.clone();
    let killer = std::thread::spawn(move || {
        for _ in 0..500 {
            if rt2.state(&id2).map(|s| s.live_status() == Status::Running).unwrap_or(false) {
                std::thread::sleep(std::time::Duration::from_millis(50));
                return rt2.kill(&id2, Signal::KILL, false).is_ok();
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        false
    });
    let stdio = Stdio::Fds(null.into(), out.into(), err.into());
    let (_, status) = rt.run(&id, b.write(), CreateOptions { stdio, ..Default::default() }).unwrap();
    assert!(killer.join().unwrap());
    assert_eq!(status, ExitStatus::Signal(9));
    assert_eq!(status.shell_code(), 137);
    assert_eq!(std::fs::read_to_string(&out_path).unwrap(), "out\nerr\n");
    assert!(!h.state_dir(id.as_str()).exists(), "run deletes the container");
}
