//! Running the real `wattson-collector` and `wattson-agent` binaries from a test: build them
//! once, start them with arguments, capture their logs (ANSI stripped) while they run, find
//! the address a collector bound with `--listen 127.0.0.1:0`, and stop them by signal (SIGTERM
//! for a graceful stop, SIGKILL for a crash).

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

/// Path of a workspace binary in the target directory of the running test (or xtask), built
/// on first use (`cargo build -p wattson-agent -p wattson-collector`, with the `wattson` CLI).
pub fn binary(name: &str) -> PathBuf {
    static BUILD: Once = Once::new();
    // A test executable lives in target/<profile>/deps/, xtask in target/<profile>/.
    let exe = std::env::current_exe().expect("test executable path");
    let mut dir = exe.parent().expect("target/<profile>").to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    BUILD.call_once(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let release = dir.file_name().is_some_and(|n| n == "release");
        let mut cmd = Command::new(cargo);
        cmd.args([
            "build",
            "-p",
            "wattson-agent",
            "--bin",
            "wattson-agent",
            "-p",
            "wattson-collector",
            "--bin",
            "wattson-collector",
            "--bin",
            "wattson",
        ]);
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("running cargo build");
        assert!(status.success(), "building the binaries failed");
    });
    let path = dir.join(name);
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// Removes ANSI colour escapes.
pub fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A running binary and its captured stderr.
pub struct Proc {
    /// What it is, for messages.
    pub name: String,
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    /// Starts `binary` with `args`, logging at `rust_log`.
    pub fn start(name: &str, binary: &str, args: &[String], rust_log: &str) -> Proc {
        let mut child = Command::new(self::binary(binary))
            .args(args)
            .env("RUST_LOG", rust_log)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {binary}: {e}"));
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("piped stderr");
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(strip_ansi(&line));
            }
        });
        Proc {
            name: name.into(),
            child,
            log,
        }
    }

    /// Log lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// The whole log, for failure messages.
    pub fn dump(&self) -> String {
        format!("--- {} ---\n{}", self.name, self.lines().join("\n"))
    }

    /// Waits until a log line satisfies `pred`, returning it; panics with the log on timeout.
    pub fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.lines().into_iter().find(|l| pred(l)) {
                return l;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                // Give the reader thread a moment to collect the last lines.
                std::thread::sleep(Duration::from_millis(200));
                if let Some(l) = self.lines().into_iter().find(|l| pred(l)) {
                    return l;
                }
                panic!(
                    "{} exited ({status}) before {what}\n{}",
                    self.name,
                    self.dump()
                );
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}\n{}",
                self.dump()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until `cond(self)` holds; panics with the log on timeout or early exit.
    pub fn wait_until(&mut self, what: &str, timeout: Duration, cond: impl Fn(&Proc) -> bool) {
        if let Err(e) = self.try_wait_until(what, timeout, cond) {
            panic!("{e}");
        }
    }

    /// Waits until `cond(self)` holds; on timeout or early exit, `Err` with the log.
    pub fn try_wait_until(
        &mut self,
        what: &str,
        timeout: Duration,
        cond: impl Fn(&Proc) -> bool,
    ) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        while !cond(self) {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "{} exited ({status}) before {what}\n{}",
                    self.name,
                    self.dump()
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!("timed out waiting for {what}\n{}", self.dump()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Number of log lines containing `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.lines().iter().filter(|l| l.contains(needle)).count()
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`).
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.child.id() as i32, signal) };
        assert_eq!(rc, 0, "kill({}, {signal})", self.child.id());
    }

    /// Sends `signal` and waits for the process to exit (at most `timeout`).
    pub fn stop(&mut self, signal: i32, timeout: Duration) -> std::process::ExitStatus {
        self.signal(signal);
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                std::thread::sleep(Duration::from_millis(100));
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "{} did not exit within {timeout:?}\n{}",
                    self.name,
                    self.dump()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Value of `key=VALUE` in a tracing log line.
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let at = line.find(&format!(" {key}="))? + key.len() + 2;
    let rest = &line[at..];
    Some(
        rest.split_whitespace()
            .next()
            .unwrap_or("")
            .trim_matches('"'),
    )
}

/// Starts `wattson-collector serve` on `listen` with `store` plus `extra` flags; returns it
/// with the address it bound.
pub fn collector(listen: &str, store: &str, extra: &[String]) -> (Proc, String) {
    let mut args = vec![
        "serve".to_string(),
        "--listen".into(),
        listen.into(),
        "--store".into(),
        store.into(),
    ];
    args.extend_from_slice(extra);
    let mut p = Proc::start("collector", "wattson-collector", &args, "info");
    let line = p.wait_for("the collector to listen", Duration::from_secs(30), |l| {
        l.contains(" listening ") && l.contains("addr=")
    });
    let addr = field(&line, "addr")
        .expect("addr= in the listening line")
        .to_owned();
    (p, addr)
}
