//! A private `clickhouse-server` for tests, benches and the lab: started on 127.0.0.1 with a
//! temporary config and data directory and free ports, stopped (and its directory removed) on
//! drop. No systemd, no shared state: every harness gets its own server.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::StoreError;

/// Where the Debian package puts the server; `WATTSON_CLICKHOUSE_SERVER` overrides.
const CANDIDATES: &[&str] = &["/usr/bin/clickhouse-server", "/usr/sbin/clickhouse-server"];

/// A running private ClickHouse server.
pub struct ClickHouseServer {
    child: Child,
    dir: tempfile::TempDir,
    http_port: u16,
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> StoreError {
    let what = what.into();
    move |source| StoreError::Io { what, source }
}

fn free_port() -> Result<u16, StoreError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(io("finding a free port"))?;
    Ok(l.local_addr().map_err(io("finding a free port"))?.port())
}

/// The server binary, or an error that says how to install it.
pub fn server_binary() -> Result<PathBuf, StoreError> {
    if let Some(p) = std::env::var_os("WATTSON_CLICKHOUSE_SERVER") {
        return Ok(PathBuf::from(p));
    }
    CANDIDATES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .ok_or_else(|| StoreError::Io {
            what: format!(
                "clickhouse-server not found at {CANDIDATES:?} (run `cargo xtask setup` or \
                 `apt-get install clickhouse-server`, or set WATTSON_CLICKHOUSE_SERVER)"
            ),
            source: std::io::ErrorKind::NotFound.into(),
        })
}

fn config(dir: &Path, http: u16, tcp: u16) -> String {
    let d = dir.display();
    format!(
        r#"<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><log>{d}/server.log</log><errorlog>{d}/server.err.log</errorlog></logger>
  <http_port>{http}</http_port>
  <tcp_port>{tcp}</tcp_port>
  <listen_host>127.0.0.1</listen_host>
  <path>{d}/data/</path>
  <tmp_path>{d}/tmp/</tmp_path>
  <user_files_path>{d}/user_files/</user_files_path>
  <format_schema_path>{d}/format_schemas/</format_schema_path>
  <users_config>{d}/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <mark_cache_size>268435456</mark_cache_size>
  <uncompressed_cache_size>268435456</uncompressed_cache_size>
  <mlock_executable>false</mlock_executable>
  <timezone>UTC</timezone>
</yandex>
"#
    )
}

const USERS: &str = r#"<?xml version="1.0"?>
<yandex>
  <profiles><default></default></profiles>
  <users><default><password></password><networks><ip>127.0.0.1</ip></networks>
    <profile>default</profile><quota>default</quota></default></users>
  <quotas><default></default></quotas>
</yandex>
"#;

impl ClickHouseServer {
    /// Starts a server and waits until its HTTP interface answers `/ping` (a few hundred ms).
    pub fn start() -> Result<ClickHouseServer, StoreError> {
        let bin = server_binary()?;
        let mut last = None;
        // A free port can be taken between probing and binding: retry with new ports.
        for _ in 0..3 {
            match Self::try_start(&bin) {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| StoreError::Io {
            what: "starting clickhouse-server".into(),
            source: std::io::ErrorKind::Other.into(),
        }))
    }

    fn try_start(bin: &Path) -> Result<ClickHouseServer, StoreError> {
        let dir = tempfile::Builder::new()
            .prefix("wattson-clickhouse-")
            .tempdir()
            .map_err(io("creating a temp dir for clickhouse-server"))?;
        let (http_port, tcp_port) = (free_port()?, free_port()?);
        let cfg = dir.path().join("config.xml");
        std::fs::write(&cfg, config(dir.path(), http_port, tcp_port))
            .map_err(io(format!("writing {}", cfg.display())))?;
        std::fs::write(dir.path().join("users.xml"), USERS)
            .map_err(io("writing clickhouse users.xml"))?;
        let out = std::fs::File::create(dir.path().join("stdout.log"))
            .map_err(io("creating clickhouse stdout log"))?;
        let child = Command::new(bin)
            .arg(format!("--config-file={}", cfg.display()))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(out.try_clone().map_err(io("cloning log handle"))?)
            .stderr(out)
            .spawn()
            .map_err(io(format!("spawning {}", bin.display())))?;
        let mut server = ClickHouseServer {
            child,
            dir,
            http_port,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let ping = format!("http://127.0.0.1:{http_port}/ping");
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| StoreError::ClickHouse {
                url: ping.clone(),
                message: e.to_string(),
            })?;
        loop {
            if let Ok(r) = client.get(&ping).send()
                && r.status().is_success()
            {
                tracing::debug!(port = http_port, "clickhouse-server up");
                return Ok(server);
            }
            let exited = server
                .child
                .try_wait()
                .map_err(io("waiting for clickhouse-server"))?;
            if exited.is_some() || Instant::now() > deadline {
                let log = std::fs::read_to_string(server.dir.path().join("server.err.log"))
                    .unwrap_or_default();
                return Err(StoreError::ClickHouse {
                    url: ping,
                    message: format!(
                        "clickhouse-server did not come up ({}); error log tail: {}",
                        exited.map_or("timed out after 30 s".into(), |s| s.to_string()),
                        log.lines().rev().take(5).collect::<Vec<_>>().join(" | ")
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// HTTP endpoint, `http://127.0.0.1:PORT`.
    pub fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// A `--store` URL for database `db` on this server.
    pub fn store_url(&self, db: &str) -> String {
        format!("clickhouse://127.0.0.1:{}/{db}", self.http_port)
    }
}

impl Drop for ClickHouseServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
