//! `cargo xtask lab`: the main command. A one-host lab that shows power by function, live:
//! setup when needed, release build, the collector on an embedded SQLite store in a data
//! directory, the agent on this host, optional demo workloads, and a terminal view refreshed
//! every interval. Ctrl-C stops everything in order and leaves nothing running; the data
//! directory keeps the history for the next run.

use std::{
    fs,
    net::{SocketAddr, TcpListener, TcpStream},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{cmd, setup, view};

/// Options of `cargo xtask lab`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Directory for the store, logs, spool and flame graph (kept between runs).
    #[arg(long, default_value = "target/lab")]
    pub data_dir: PathBuf,
    /// Collector port on 127.0.0.1.
    #[arg(long, default_value_t = 7070)]
    pub port: u16,
    /// Profile interval: how often the agent ships and the view refreshes, in seconds.
    #[arg(long, default_value_t = 10)]
    pub interval: u64,
    /// Sampling frequency per CPU, Hz.
    #[arg(long, default_value_t = 19)]
    pub frequency: u64,
    /// Do not start the demo workloads (profile whatever this host runs).
    #[arg(long)]
    pub no_demo: bool,
    /// Stop by itself after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    pub duration: Option<u64>,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// A child process of the lab, in its own process group so the terminal's Ctrl-C reaches only
/// the lab, which then stops children in order.
struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &'static str, cmd: &mut Command, log: PathBuf) -> anyhow::Result<Self> {
        let file = fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {name}: `{}`", cmd::display(cmd)))?;
        say(&format!(
            "lab: started {name} (pid {}, log {})",
            child.id(),
            log.display()
        ));
        Ok(Self { name, child, log })
    }

    fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(format!(
                "{} exited ({status}); last lines of {}:\n{}",
                self.name,
                self.log.display(),
                tail(&self.log, 15)
            )),
            _ => None,
        }
    }

    /// SIGTERM, a grace period, then SIGKILL: nothing survives the lab.
    fn stop(&mut self, grace: Duration) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: signalling our own child's process group.
        unsafe { libc::kill(-pid, libc::SIGTERM) };
        let start = Instant::now();
        while start.elapsed() < grace {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                say(&format!("lab: stopped {}", self.name));
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
        // SAFETY: as above.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
        let _ = self.child.wait();
        say(&format!(
            "lab: killed {} (did not stop within {}s)",
            self.name,
            grace.as_secs()
        ));
    }
}

/// Writes a line to stderr, ignoring errors: when the lab runs under `| tee`, the same
/// Ctrl-C kills tee, and a panic on the broken pipe must not skip stopping the children.
pub fn say(msg: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "{msg}");
}

/// The lab's children; dropping it (normal exit, error or panic) stops them all, last
/// started first, so nothing outlives the lab.
#[derive(Default)]
struct Children(Vec<Proc>);

impl Drop for Children {
    fn drop(&mut self) {
        for p in self.0.iter_mut().rev() {
            p.stop(Duration::from_secs(15));
        }
    }
}

fn tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "the lab starts the agent, which loads BPF: run it as root (or give the agent \
             CAP_BPF, CAP_PERFMON and CAP_SYS_RESOURCE)"
        );
    }
    let addr = SocketAddr::from(([127, 0, 0, 1], args.port));
    if let Err(e) = TcpListener::bind(addr) {
        bail!(
            "port {} on 127.0.0.1 is not free ({e}): stop what uses it or pass --port",
            args.port
        );
    }
    eprintln!("lab: checking prerequisites");
    setup::ensure(false, false)?;
    eprintln!("lab: building release binaries (the first build takes a few minutes)");
    cmd::run(cmd::cargo().args([
        "build",
        "--release",
        "-p",
        "wattson-agent",
        "-p",
        "wattson-collector",
        "-p",
        "wattson-e2e",
        "--bins",
    ]))?;

    let data = cmd::root().join(&args.data_dir);
    fs::create_dir_all(&data).with_context(|| format!("creating --data-dir {}", data.display()))?;
    let bin = |name: &str| cmd::root().join("target/release").join(name);
    let url = format!("http://{addr}");

    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }

    let mut children = Children::default();
    let procs = &mut children.0;
    let result = (|| -> anyhow::Result<()> {
        procs.push(Proc::spawn(
            "collector",
            Command::new(bin("wattson-collector")).args([
                "serve",
                "--listen",
                &addr.to_string(),
                "--store",
                &format!("sqlite://{}", data.join("wattson.db").display()),
            ]),
            data.join("collector.log"),
        )?);
        wait_for_port(addr, &mut procs[0])?;
        procs.push(Proc::spawn(
            "agent",
            Command::new(bin("wattson-agent")).args([
                "run",
                "--collector",
                &url,
                "--interval",
                &format!("{}s", args.interval),
                "--frequency",
                &args.frequency.to_string(),
                "--spool-dir",
                &data.join("spool").display().to_string(),
            ]),
            data.join("agent.log"),
        )?);
        if !args.no_demo {
            for (workload, duty) in [("mixed", "0.6"), ("hash", "0.3")] {
                procs.push(Proc::spawn(
                    "demo workload",
                    Command::new(bin("wattson-demo")).args([
                        "--workload",
                        workload,
                        "--duty",
                        duty,
                    ]),
                    data.join(format!("demo-{workload}.log")),
                )?);
            }
        }
        let view = view::View::new(&bin("wattson"), &url, &data, args.interval);
        let started = Instant::now();
        let mut next = Instant::now();
        while !STOP.load(Ordering::SeqCst) {
            if let Some(msg) = procs.iter_mut().find_map(Proc::exited) {
                bail!("{msg}");
            }
            if args
                .duration
                .is_some_and(|d| started.elapsed() >= Duration::from_secs(d))
            {
                break;
            }
            if Instant::now() >= next {
                view.refresh(started.elapsed());
                next = Instant::now() + Duration::from_secs(args.interval);
            }
            thread::sleep(Duration::from_millis(200));
        }
        Ok(())
    })();

    say("\nlab: stopping");
    // Workloads first, then the agent (it ships its last interval), then the collector.
    drop(children);
    result?;
    view::where_next(&url, &data);
    Ok(())
}

fn wait_for_port(addr: SocketAddr, proc: &mut Proc) -> anyhow::Result<()> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if let Some(msg) = proc.exited() {
            bail!("{msg}");
        }
        thread::sleep(Duration::from_millis(200));
    }
    bail!(
        "the collector did not listen on {addr} within 30s; see {}",
        proc.log.display()
    )
}
