//! `wattson-agent run --metrics-listen` end to end, as root on this kernel: the real daemon
//! samples a busy thread while its collector is down (so batches pile up in the spool), and
//! `GET /metrics` over loopback is scraped a few times. The figures must agree with what can
//! be checked from outside: the spool directory's files, the energy source this host offers,
//! and samples that keep coming.

use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use wattson_agent::energy::{EnergyArgs, SourceKind, diagnose};

const AGENT: &str = env!("CARGO_BIN_EXE_wattson-agent");

/// The agent, its stderr lines, and a SIGKILL if the test fails before stopping it.
struct Agent {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Agent {
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(AGENT)
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = lines.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Agent { child, lines }
    }

    fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// The address logged by `serving Prometheus /metrics addr=...`.
    fn metrics_addr(&mut self) -> SocketAddr {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let found = self.lines.lock().unwrap().iter().find_map(|l| {
                let at = l.find("serving Prometheus /metrics")?;
                let rest = &l[at..];
                let start = rest.find("127.0.0.1:")?;
                let addr: String = rest[start..]
                    .chars()
                    .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
                    .collect();
                addr.parse().ok()
            });
            if let Some(addr) = found {
                return addr;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "agent exited ({status}) before serving metrics:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no metrics address:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET path` over HTTP/1.1: (status line, body).
fn get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut sock = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(sock, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut response = String::new();
    sock.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(length, body.len(), "Content-Length");
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

/// `name{labels}` -> value of every sample; every family must have HELP and TYPE lines.
fn scrape(addr: SocketAddr) -> BTreeMap<String, f64> {
    let (status, body) = get(addr, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    let mut samples = BTreeMap::new();
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let (key, value) = line.rsplit_once(' ').unwrap();
        let name = key.split('{').next().unwrap();
        assert!(name.starts_with("wattson_agent_"), "{line}");
        for head in ["# HELP", "# TYPE"] {
            assert!(
                body.contains(&format!("{head} {name} ")),
                "{head} missing for {name}"
            );
        }
        samples.insert(key.to_owned(), value.parse().unwrap());
    }
    samples
}

/// (batch files, their bytes) in the spool directory.
fn spool_files(dir: &Path) -> (u64, u64) {
    let Ok(entries) = fs::read_dir(dir) else {
        return (0, 0);
    };
    entries
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".batch.zst"))
        .fold((0, 0), |(n, bytes), e| {
            (n + 1, bytes + e.metadata().unwrap().len())
        })
}

#[test]
fn metrics_endpoint_reports_samples_spool_and_energy_as_they_are() {
    let expected = diagnose(&EnergyArgs::default())
        .auto
        .expect("auto picks a source: the model at worst");
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let stop = Arc::new(AtomicBool::new(false));
    let busy = {
        let stop = stop.clone();
        thread::spawn(move || {
            let mut x = 1u64;
            while !stop.load(Ordering::Relaxed) {
                x = std::hint::black_box(x.wrapping_mul(0x5851_f42d_4c95_7f2d).rotate_left(7));
            }
        })
    };
    // Nothing listens on port 1: every send fails and batches stay in the spool.
    let mut agent = Agent::start(&[
        "run",
        "--collector",
        "http://127.0.0.1:1",
        "--frequency",
        "99",
        "--interval",
        "1s",
        "--max-backoff",
        "1s",
        "--host-id",
        "metrics-test",
        "--spool-dir",
        spool.to_str().unwrap(),
        "--metrics-listen",
        "127.0.0.1:0",
    ]);
    let addr = agent.metrics_addr();

    // Wait for two spooled batches.
    let deadline = Instant::now() + Duration::from_secs(60);
    let first = loop {
        let m = scrape(addr);
        if m["wattson_agent_batches_spooled_total"] >= 2.0 {
            break m;
        }
        assert!(Instant::now() < deadline, "no batches:\n{}", agent.log());
        thread::sleep(Duration::from_millis(200));
    };
    thread::sleep(Duration::from_millis(1500));
    let second = scrape(addr);
    let samples = |m: &BTreeMap<String, f64>| m["wattson_agent_samples_total"];
    assert!(samples(&first) > 0.0, "{first:?}");
    assert!(samples(&second) > samples(&first), "{first:?}\n{second:?}");
    assert!(second["wattson_agent_intervals_total"] >= 2.0);
    assert!(
        second["wattson_agent_ship_retries_total"] >= 1.0,
        "{second:?}"
    );
    assert_eq!(
        second["wattson_agent_batches_shipped_total{result=\"stored\"}"],
        0.0
    );
    for reason in [
        "map_full",
        "stack_missing",
        "unread",
        "user_stack_error",
        "kernel_stack_error",
        "ringbuf_full",
        "filtered",
    ] {
        let key = format!("wattson_agent_samples_dropped_total{{reason=\"{reason}\"}}");
        assert!(second.contains_key(&key), "{key} missing");
    }
    assert_eq!(
        second["wattson_agent_samples_dropped_total{reason=\"filtered\"}"], 0.0,
        "run has no pid filter"
    );

    // The spool gauges are the directory's batch files. A batch may land between the scrape
    // and the listing: retry until both listings around a scrape agree.
    let mut agreed = None;
    for _ in 0..20 {
        let before = spool_files(&spool);
        let m = scrape(addr);
        if spool_files(&spool) == before {
            agreed = Some((before, m));
            break;
        }
    }
    let ((files, bytes), m) = agreed.expect("the spool kept changing under every scrape");
    assert!(files >= 2, "the collector is down: batches accumulate");
    assert_eq!(m["wattson_agent_spool_batches"], files as f64);
    assert_eq!(m["wattson_agent_spool_bytes"], bytes as f64);
    assert_eq!(m["wattson_agent_spool_lost_batches_total"], 0.0);

    // Energy: the source this host offers, and measured and estimated never mixed.
    let model = expected == SourceKind::Model;
    let info = format!(
        "wattson_agent_energy_source{{source=\"{}\",estimated=\"{model}\"}}",
        expected.name()
    );
    assert_eq!(m.get(&info), Some(&1.0), "{m:?}");
    let measured = m["wattson_agent_measured_energy_microjoules_total"];
    let estimated = m["wattson_agent_estimated_energy_microjoules_total"];
    if model {
        assert_eq!((measured, estimated > 0.0), (0.0, true), "{m:?}");
    } else {
        assert!(measured > 0.0, "{m:?}");
    }

    let (status, _) = get(addr, "/other");
    assert_eq!(status, "HTTP/1.1 404 Not Found");

    // SIGTERM: the agent stops cleanly, its batches left in the spool.
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(
        unsafe { libc::kill(agent.child.id() as libc::pid_t, libc::SIGTERM) },
        0
    );
    let status = agent.child.wait().unwrap();
    stop.store(true, Ordering::Relaxed);
    busy.join().unwrap();
    assert!(status.success(), "{status}\n{}", agent.log());
}
