//! Readiness waits (poll a condition until it holds or its timeout passes) and
//! readiness probes (check it for as long as the container runs).

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{blocking, Inner, Result};
use crate::container::ContainerError;
use crate::netstack::netns::Netns;
use crate::pod::{ContainerRecord, PodError, PodRecord, Pods};

/// How long a readiness wait lasts unless told otherwise.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Time between two checks.
const POLL: Duration = Duration::from_millis(50);

/// How often a readiness probe checks unless told (see [`Ready::period`]).
pub const DEFAULT_PROBE_PERIOD: Duration = Duration::from_secs(1);
/// Failed checks in a row that make a ready container unready unless told (the
/// kubelet's default `failureThreshold`).
pub const DEFAULT_FAILURE_THRESHOLD: u32 = 3;

/// A condition to wait for, with its timeout; or, given to
/// [`super::ContainerBuilder::readiness`], a readiness probe checked every period.
#[derive(Debug, Clone)]
pub struct Ready {
    check: Check,
    timeout: Duration,
    period: Duration,
    failure_threshold: u32,
}

#[derive(Debug, Clone)]
enum Check {
    /// A TCP socket listening on the port inside the pod, read from the pod's own
    /// socket table: no connection is made and no port needs publishing.
    Port(u16),
    /// A log line containing the text.
    Log(String),
    /// A command that exits 0 inside the container.
    Exec(Vec<String>),
    /// An HTTP GET of the path on the pod's IP and port answering 200.
    Http(u16, String),
}

impl Ready {
    fn new(check: Check) -> Self {
        Self { check, timeout: DEFAULT_READY_TIMEOUT, period: DEFAULT_PROBE_PERIOD, failure_threshold: DEFAULT_FAILURE_THRESHOLD }
    }

    /// Something listens on TCP `port` in the pod.
    pub fn port(port: u16) -> Self {
        Self::new(Check::Port(port))
    }

    /// The container logged a line containing `text`.
    pub fn log_line(text: &str) -> Self {
        Self::new(Check::Log(text.into()))
    }

    /// `args` run inside the container exits 0.
    pub fn exec<S: Into<String>>(args: impl IntoIterator<Item = S>) -> Self {
        Self::new(Check::Exec(args.into_iter().map(Into::into).collect()))
    }

    /// GET `path` on the pod's IP and `port` answers 200.
    pub fn http(port: u16, path: &str) -> Self {
        Self::new(Check::Http(port, path.into()))
    }

    /// Gives up after `timeout` instead of 30 s.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// As a readiness probe: checks every `period` (default 1 s), each given at most
    /// that long.
    pub fn period(mut self, period: Duration) -> Self {
        self.period = period.max(POLL);
        self
    }

    /// As a readiness probe: this many failed checks in a row make a ready container
    /// unready (default 3; at least 1).
    pub fn failure_threshold(mut self, n: u32) -> Self {
        self.failure_threshold = n.max(1);
        self
    }

    fn describe(&self) -> String {
        match &self.check {
            Check::Port(p) => format!("TCP port {p} listening"),
            Check::Log(t) => format!("a log line containing {t:?}"),
            Check::Exec(a) => format!("`{}` exiting 0", a.join(" ")),
            Check::Http(p, path) => format!("HTTP 200 from port {p} path {path}"),
        }
    }
}

/// A check as a command line writes it: `tcp:PORT`, `http:PORT/PATH`, `exec:COMMAND
/// ARGS...` (split into words as a POSIX shell does, quotes and backslashes included,
/// with nothing expanded) or `log:TEXT`.
impl std::str::FromStr for Ready {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let port = |p: &str| p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| format!("{s:?}: {p:?} is no port (1 to 65535)"));
        match s.split_once(':') {
            Some(("tcp", p)) => Ok(Ready::port(port(p)?)),
            Some(("http", rest)) => {
                let (p, path) = rest.find('/').map_or((rest, "/"), |i| (&rest[..i], &rest[i..]));
                Ok(Ready::http(port(p)?, path))
            }
            Some(("exec", cmd)) if !cmd.trim().is_empty() => match shlex::split(cmd) {
                Some(words) if !words.is_empty() => Ok(Ready::exec(words)),
                _ => Err(format!("{s:?}: the command does not split into words (a quote not closed, or only a # comment?)")),
            },
            Some(("log", text)) if !text.is_empty() => Ok(Ready::log_line(text)),
            _ => Err(format!("{s:?}: write a check as tcp:PORT, http:PORT/PATH, exec:COMMAND ARGS... or log:TEXT")),
        }
    }
}

/// Waits for `ready` on `pod` (and `ctr`, which log and exec checks need).
pub(super) async fn wait(rt: &Arc<Inner>, pod: &PodRecord, ctr: Option<&ContainerRecord>, ready: Ready) -> Result<()> {
    let what = ready.describe();
    let need_ctr = matches!(ready.check, Check::Log(_) | Check::Exec(_));
    if need_ctr && ctr.is_none() {
        return Err(crate::pod::ConfigError::WaitNeedsContainer(what).into());
    }
    let deadline = Instant::now() + ready.timeout;
    loop {
        let (rt2, pod2, ctr2, check) = (rt.clone(), pod.clone(), ctr.cloned(), ready.check.clone());
        let left = deadline.saturating_duration_since(Instant::now());
        let outcome = blocking(move || Ok(check_once(&rt2.pods, &pod2, ctr2.as_ref(), &check, left))).await?;
        let last = match outcome {
            Ok(()) => return Ok(()),
            Err(why) => why,
        };
        if let Some(c) = ctr {
            // A workload that exited will never become ready: say so now.
            let (rt2, c2) = (rt.clone(), c.clone());
            let st = blocking(move || rt2.pods.container_state(&c2)).await?;
            if st.live_status() == crate::Status::Stopped {
                return Err(PodError::NotReady {
                    what,
                    secs: ready.timeout.as_secs_f64(),
                    last: format!("the container exited ({:?}) before that happened", st.exit),
                });
            }
        }
        if Instant::now() >= deadline {
            return Err(PodError::NotReady { what, secs: ready.timeout.as_secs_f64(), last });
        }
        tokio::time::sleep(POLL.min(deadline.saturating_duration_since(Instant::now()))).await;
    }
}

/// What one round of a readiness probe found.
enum Probed {
    Passed,
    Failed(String),
    /// The container exited: it is not ready, and will not be.
    Stopped,
    /// The container or its runtime is gone: the probe ends.
    Gone,
}

/// Runs readiness probe `probe` of container `ctr` until the container stops or goes,
/// or the runtime does: see [`probe_round`].
pub(super) fn run_probe(rt: &Arc<Inner>, pod: PodRecord, ctr: ContainerRecord, probe: Ready) {
    let weak = Arc::downgrade(rt);
    tokio::spawn(async move {
        let mut state = ProbeState::default();
        loop {
            // The runtime is not kept alive by its probes.
            let Some(rt) = weak.upgrade() else { return };
            let (pod2, ctr2, probe2) = (pod.clone(), ctr.clone(), probe.clone());
            let round = blocking(move || {
                let more = probe_round(&rt.pods, &pod2, &ctr2, &probe2, &mut state);
                Ok((more, state))
            });
            match round.await {
                Ok((true, now)) => state = now,
                _ => return,
            }
            tokio::time::sleep(probe.period).await;
        }
    });
}

/// Runs readiness probe `probe` of container `ctr` on this thread until the container
/// stops or goes (see [`probe_round`]): for a process of its own, which is what
/// `minipod ctr run --readiness` leaves running beside a container of the CLI's.
pub fn probe_until_stopped(pods: &Pods, pod: &PodRecord, ctr: &ContainerRecord, probe: &Ready) {
    let mut state = ProbeState::default();
    while probe_round(pods, pod, ctr, probe, &mut state) {
        std::thread::sleep(probe.period);
    }
}

/// Where a readiness probe stands between two rounds.
#[derive(Debug, Clone, Copy, Default)]
struct ProbeState {
    ready: bool,
    /// Failed checks in a row.
    failures: u32,
}

/// One round of readiness probe `probe` of container `ctr`: the container is unready
/// (recorded at its create) until a check passes, and again after the probe's
/// failure threshold of failed checks in a row, or once it stopped. Each change is
/// recorded in the pod, which the services selecting it follow. Returns whether the
/// probe goes on (not once the container stopped or is gone).
fn probe_round(pods: &Pods, pod: &PodRecord, ctr: &ContainerRecord, probe: &Ready, state: &mut ProbeState) -> bool {
    // A container of its name made since (removed and created again within a period)
    // has a probe of its own: its readiness is not this probe's to record.
    let current = pods.container(pod.id.as_str(), ctr.name.as_str());
    if current.as_ref().is_ok_and(|c| c.created != ctr.created) {
        return false;
    }
    let probed = match pods.container_state(ctr) {
        Err(PodError::Container(ContainerError::NotFound { .. })) => Probed::Gone,
        // Not known to be gone (the state could not be read just now): a failed check.
        Err(e) => Probed::Failed(format!("reading the container's state: {e}")),
        Ok(st) if st.live_status() == crate::Status::Stopped => Probed::Stopped,
        Ok(_) => match check_once(pods, pod, Some(ctr), &probe.check, probe.period) {
            Ok(()) => Probed::Passed,
            Err(why) => Probed::Failed(why),
        },
    };
    let becomes = match &probed {
        Probed::Gone => {
            // Removed some other way than Container::remove: it gates nothing, unless
            // a container of its name took its place (with a probe of its own).
            if matches!(current, Err(PodError::NoSuchContainer { .. } | PodError::NoSuchPod(_))) {
                let _ = pods.set_container_ready(&pod.id, &ctr.name, true);
            }
            return false;
        }
        Probed::Passed => {
            state.failures = 0;
            true
        }
        Probed::Failed(why) => {
            state.failures += 1;
            tracing::debug!(pod = %pod.name, container = %ctr.name, "readiness probe failed ({} in a row): {why}", state.failures);
            state.ready && state.failures < probe.failure_threshold
        }
        Probed::Stopped => false,
    };
    if becomes != state.ready {
        match pods.set_probed_ready(ctr, becomes) {
            Ok(_) => state.ready = becomes,
            Err(e) => tracing::warn!(pod = %pod.name, container = %ctr.name, "recording readiness {becomes}: {e}"),
        }
    }
    !matches!(probed, Probed::Stopped)
}

/// One check: Ok, or why not yet.
fn check_once(pods: &Pods, pod: &PodRecord, ctr: Option<&ContainerRecord>, check: &Check, left: Duration) -> Result<(), String> {
    match check {
        Check::Port(port) => {
            let ns = Netns::open(&pods.root().join("pods").join(pod.id.as_str()).join("ns/net")).map_err(|e| e.to_string())?;
            let port = *port;
            let tables = ns.run(move || {
                let v4 = std::fs::read_to_string("/proc/thread-self/net/tcp").unwrap_or_default();
                let v6 = std::fs::read_to_string("/proc/thread-self/net/tcp6").unwrap_or_default();
                v4 + &v6
            });
            let tables = tables.map_err(|e| e.to_string())?;
            if listening(&tables, port) {
                Ok(())
            } else {
                Err(format!("nothing listens on port {port} yet"))
            }
        }
        Check::Log(text) => {
            let c = ctr.ok_or("no container")?;
            let lines = pods.logs(c).map_err(|e| e.to_string())?;
            if lines.iter().any(|l| l.text.contains(text.as_str())) {
                Ok(())
            } else {
                Err(format!("{} log lines so far, none matching", lines.len()))
            }
        }
        Check::Exec(args) => {
            let c = ctr.ok_or("no container")?;
            let out = pods.exec(c, args.clone(), Some(left.max(Duration::from_millis(100)))).map_err(|e| e.to_string())?;
            if out.success() {
                Ok(())
            } else {
                Err(format!("last run: {:?}, stderr {:?}", out.status, String::from_utf8_lossy(&out.stderr).trim()))
            }
        }
        Check::Http(port, path) => {
            let ip = pod.ip().ok_or("the pod has no address")?;
            match http_get(pods, SocketAddr::new(ip.into(), *port), path) {
                Ok((200, _)) => Ok(()),
                Ok((code, _)) => Err(format!("last answer: HTTP {code}")),
                Err(e) => Err(e.to_string()),
            }
        }
    }
}

/// Whether a `/proc/net/tcp{,6}` table has a socket listening on `port`.
fn listening(tables: &str, port: u16) -> bool {
    tables.lines().skip_while(|l| l.trim_start().starts_with("sl")).any(|l| {
        let mut f = l.split_whitespace();
        let local = f.nth(1).unwrap_or_default();
        let state = f.nth(1).unwrap_or_default();
        // 0A is TCP_LISTEN.
        state == "0A" && local.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok()) == Some(port)
    })
}

/// A minimal HTTP/1.0 GET from the node namespace: (status, body).
pub(super) fn http_get(pods: &Pods, addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let io = |source| PodError::Io { what: "HTTP GET from", path: addr.to_string().into(), source };
    let ns = match &pods.node_ref().netns {
        Some(p) => Netns::open(p)?,
        None => Netns::current()?,
    };
    let mut stream = ns.run(move || std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)))?.map_err(io)?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).map_err(io)?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n").map_err(io)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(io)?;
    let text = String::from_utf8_lossy(&raw);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| io(std::io::Error::other(format!("not an HTTP answer: {:?}", text.chars().take(80).collect::<String>()))))?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::{Check, Ready};

    #[test]
    fn checks_are_read_as_a_command_line_writes_them() {
        let check = |s: &str| s.parse::<Ready>().map(|r| format!("{:?}", r.check));
        assert_eq!(check("tcp:8080"), Ok(format!("{:?}", Check::Port(8080))));
        assert_eq!(check("http:80/healthz"), Ok(format!("{:?}", Check::Http(80, "/healthz".into()))));
        assert_eq!(check("http:80"), Ok(format!("{:?}", Check::Http(80, "/".into()))));
        assert_eq!(check("exec:test -e /ready"), Ok(format!("{:?}", Check::Exec(vec!["test".into(), "-e".into(), "/ready".into()]))));
        let words = |w: &[&str]| Ok(format!("{:?}", Check::Exec(w.iter().map(|w| w.to_string()).collect())));
        assert_eq!(check(r#"exec:sh -c "test -e '/a b'" x\ y"#), words(&["sh", "-c", "test -e '/a b'", "x y"]));
        assert!(check("exec:sh -c \"test").is_err_and(|e| e.contains("a quote not closed")));
        for bad in ["tcp:0", "tcp:http", "udp:53", "exec:", "8080"] {
            assert!(check(bad).is_err_and(|e| e.contains(bad)), "{bad}");
        }
    }

    #[test]
    fn listening_sockets_are_found_by_port() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1\n   1: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 2 1\n";
        assert!(super::listening(table, 80));
        assert!(!super::listening(table, 8080), "established, not listening");
        assert!(!super::listening(table, 81));
        let v6 = "  sl  local_address                         remote_address                        st\n   0: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 0\n";
        assert!(super::listening(v6, 8080));
    }
}
