//! The `wattson-collector serve` a fleet simulation starts when given no `--collector`: built
//! in xtask's own profile (release under `cargo xtask bench`), on a free 127.0.0.1 port, with a fresh SQLite store in the data directory and
//! minute rows kept longer than the simulated history (so a 14-day backfill is not cut to
//! hours by retention before detection reads it). Stopped when dropped.

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::cmd;

/// A running collector child process.
pub struct Collector {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Collector {
    /// Builds (in xtask's profile) and starts a collector storing in `dir/wattson.db` (replaced), keeping minute
    /// rows for `days` + 2 days; `extra` arguments go to `serve` as they are.
    pub fn start(dir: &Path, days: f64, extra: &[String]) -> anyhow::Result<Collector> {
        Self::start_on(dir, days, extra, true)
    }

    /// [`Self::start`], on the store already in `dir` unless `fresh`.
    pub fn start_on(
        dir: &Path,
        days: f64,
        extra: &[String],
        fresh: bool,
    ) -> anyhow::Result<Collector> {
        let mut build = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
        build.current_dir(cmd::root()).args([
            "build",
            "--quiet",
            "-p",
            "wattson-collector",
            "--bin",
            "wattson-collector",
        ]);
        let profile = if cfg!(debug_assertions) {
            "debug"
        } else {
            build.arg("--release");
            "release"
        };
        cmd::run(&mut build)?;
        let bin = cmd::root()
            .join("target")
            .join(profile)
            .join("wattson-collector");
        fs::create_dir_all(dir)
            .with_context(|| format!("creating --data-dir {}", dir.display()))?;
        let stale: &[&str] = if fresh {
            &[
                "wattson.db",
                "wattson.db-wal",
                "wattson.db-shm",
                "wattson.db.journal",
                "collector.log",
            ]
        } else {
            &[]
        };
        for f in stale {
            let p = dir.join(f);
            if p.exists() {
                fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
            }
        }
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let log = dir.join("collector.log");
        // Appended: a restart on the same store keeps the log of the ingest before it.
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        let raw_days = days.ceil() as u64 + 2;
        let mut serve = Command::new(&bin);
        serve
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--store")
            .arg(format!("sqlite://{}", dir.join("wattson.db").display()))
            .args(["--retain-raw", &format!("{raw_days}d")])
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        let child = serve
            .spawn()
            .with_context(|| format!("starting `{}`", cmd::display(&serve)))?;
        let mut c = Collector { child, port, log };
        eprintln!(
            "fleet-sim: started `{}` (pid {}, log {})",
            cmd::display(&serve),
            c.child.id(),
            c.log.display()
        );
        c.ready(Duration::from_secs(60))?;
        Ok(c)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn ready(&mut self, within: Duration) -> anyhow::Result<()> {
        let began = Instant::now();
        while began.elapsed() < within {
            if let Some(status) = self.child.try_wait()? {
                anyhow::bail!(
                    "the collector exited ({status}) before serving; see {}:\n{}",
                    self.log.display(),
                    fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        anyhow::bail!(
            "the collector did not listen on 127.0.0.1:{} within {:?}; see {}",
            self.port,
            within,
            self.log.display()
        )
    }

    /// Waits until the collector exits (Ctrl-C reaches it with this process).
    pub fn wait(mut self) -> anyhow::Result<()> {
        let status = self.child.wait()?;
        eprintln!("fleet-sim: collector exited ({status})");
        Ok(())
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let began = Instant::now();
        while began.elapsed() < Duration::from_secs(10) {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
