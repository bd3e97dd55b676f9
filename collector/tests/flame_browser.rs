//! Flame graphs open in a browser: batches shaped like a real fleet (the `wattson-demo`
//! workload's stacks under a service, plus a database and a gateway) go into a collector over
//! gRPC on 127.0.0.1:0 with a SQLite store, the real `wattson flame` CLI writes the SVG, and
//! headless Chromium renders it to a PNG screenshot, which must show many coloured frames.
//! Energy here is synthetic (no RAPL on this host). Needs `/usr/bin/chromium`
//! (`cargo xtask setup` installs it); without it the test fails rather than skipping.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wattson_collector::attribute::FleetConfig;
use wattson_collector::server::{self, ServeConfig};
use wattson_collector::store::synthetic::BatchBuilder;
use wattson_collector::store::{self, Store};
use wattson_proto::v1::ingest_service_client::IngestServiceClient;
use wattson_proto::v1::{Batch, IngestRequest};

const CHROMIUM: &str = "/usr/bin/chromium";
/// 2026-11-02 00:00:00 UTC.
const T0: i64 = 1_793_577_600;

/// Five minutes of three services on two hosts: the demo's hot functions under its real
/// call chain, a database and a gateway, with measured microjoules per stack.
fn batches() -> Vec<Batch> {
    let demo = "_start;__libc_start_main;main;std::rt::lang_start_internal;wattson_demo::main";
    let stacks: Vec<(&str, String, u64)> = vec![
        (
            "demo",
            format!("{demo};wattson_demo::work_unit;wattson_demo::hash_records"),
            50,
        ),
        (
            "demo",
            format!("{demo};wattson_demo::work_unit;wattson_demo::compress_blocks"),
            30,
        ),
        (
            "demo",
            format!(
                "{demo};wattson_demo::work_unit;wattson_demo::parse_numbers;core::num::from_str_radix"
            ),
            20,
        ),
        ("demo", format!("{demo};std::thread::sleep;clock_nanosleep"), 3),
        (
            "db",
            "main;postgres_main;exec_simple_query;ExecutorRun;ExecScan;heap_getnext".into(),
            25,
        ),
        (
            "db",
            "main;postgres_main;exec_simple_query;pg_plan_query;standard_planner".into(),
            8,
        ),
        ("db", "main;postgres_main;XLogFlush;pg_fsync".into(), 4),
        (
            "gateway",
            "main;tokio::runtime::park;hyper::proto::h1::dispatch;serde_json::de::from_slice".into(),
            12,
        ),
        (
            "gateway",
            "main;tokio::runtime::park;rustls::conn::ConnectionCommon::process_new_packets;ring::aead::seal"
                .into(),
            9,
        ),
    ];
    let mut out = Vec::new();
    for m in 0..5i64 {
        for (h, host) in ["web-1", "web-2"].iter().enumerate() {
            let samples: Vec<(&str, &str, &str, u64, f64)> = stacks
                .iter()
                .map(|(svc, folded, n)| {
                    // Hosts differ a little, as real ones do; 0.1 J per sample.
                    let n = n + (m as u64 + h as u64) % 3;
                    (*svc, "b1", folded.as_str(), n, n as f64 * 100_000.0)
                })
                .collect();
            out.push(
                BatchBuilder::new(host, m as u64 + 1)
                    .interval(T0 + m * 60, 60, false, 2_000_000.0, &samples)
                    .build(),
            );
        }
    }
    out
}

/// Starts a collector on 127.0.0.1:0 over SQLite in `dir`, ingests [`batches`], and runs
/// `wattson flame` into `svg`.
fn write_flame_graph(dir: &Path, svg: &Path) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let url = format!("sqlite://{}", dir.join("w.db").display());
        let store: Arc<dyn Store> = Arc::from(store::open(&url).unwrap());
        let listener = server::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let config = ServeConfig {
            fleet: FleetConfig::default(),
            ..ServeConfig::default()
        };
        let task = tokio::spawn(async move {
            server::serve(listener, store, config, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        let mut c = IngestServiceClient::connect(addr.clone()).await.unwrap();
        for b in batches() {
            c.ingest(IngestRequest::plain(b)).await.unwrap();
        }
        let svg = svg.to_owned();
        let o = tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_wattson"))
                .args(["--collector", &addr, "flame", "--weight", "energy"])
                .args(["--from", &T0.to_string(), "--to", &(T0 + 300).to_string()])
                .arg("--output")
                .arg(&svg)
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        assert!(
            o.status.success(),
            "wattson flame failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let _ = tx.send(());
        task.await.unwrap();
    });
}

/// Screenshots `svg` with headless Chromium into `png`, killing it after a minute.
fn screenshot(svg: &Path, png: &Path, profile: &Path) {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: the flame graph browser test needs Chromium; \
         `cargo xtask setup` installs it (apt package `chromium`)"
    );
    let mut child = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--window-size=1200,800",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("file://{}", svg.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting chromium");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let o = child.wait_with_output().unwrap();
            panic!(
                "chromium did not finish the screenshot within 60 s:\n{}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let o = child.wait_with_output().unwrap();
    assert!(
        o.status.success() && png.exists(),
        "chromium failed ({}), no screenshot at {}:\n{}",
        o.status,
        png.display(),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Decoded RGB(A) pixels: (width, height, channels, bytes).
fn decode(png: &Path) -> (u32, u32, usize, Vec<u8>) {
    let file = std::io::BufReader::new(std::fs::File::open(png).unwrap());
    let mut reader = png::Decoder::new(file).read_info().expect("a valid PNG");
    let mut buf = vec![
        0;
        reader
            .output_buffer_size()
            .expect("PNG size fits in memory")
    ];
    let info = reader.next_frame(&mut buf).expect("PNG frame");
    let channels = match info.color_type {
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        other => panic!("unexpected screenshot colour type {other:?}"),
    };
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    buf.truncate(info.buffer_size());
    (info.width, info.height, channels, buf)
}

#[test]
fn flame_graph_svg_renders_in_headless_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("flame.svg");
    write_flame_graph(dir.path(), &svg);
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.contains("wattson_demo::hash_records"), "{text}");

    let png = dir.path().join("flame.png");
    screenshot(&svg, &png, &dir.path().join("chromium-profile"));
    // Kept for people to look at: WATTSON_FLAME_PNG=/some/path.png.
    if let Ok(keep) = std::env::var("WATTSON_FLAME_PNG") {
        std::fs::copy(&png, &keep).unwrap();
        std::fs::copy(&svg, Path::new(&keep).with_extension("svg")).unwrap();
    }

    let (width, height, channels, pixels) = decode(&png);
    assert_eq!((width, height), (1200, 800), "screenshot size");
    let mut non_white = 0usize;
    // inferno's default "hot" palette: red high, blue low.
    let mut hot = 0usize;
    let mut colours = std::collections::HashSet::new();
    for p in pixels.chunks_exact(channels) {
        let (r, g, b) = (p[0], p[1], p[2]);
        if r < 240 || g < 240 || b < 240 {
            non_white += 1;
        }
        if r > 180 && b < 110 && r > g {
            hot += 1;
        }
        colours.insert((r >> 3, g >> 3, b >> 3));
    }
    let total = (width * height) as usize;
    eprintln!(
        "screenshot {width}x{height}: {non_white} non-white pixels ({:.1}%), {hot} flame-coloured \
         ({:.1}%), {} distinct colours (5-bit channels)",
        non_white as f64 * 100.0 / total as f64,
        hot as f64 * 100.0 / total as f64,
        colours.len()
    );
    // Nine stacks up to eight frames deep at 16 px a frame fill a good part of the page.
    assert!(
        non_white * 20 > total,
        "only {non_white} of {total} pixels are not white: the SVG did not render"
    );
    assert!(
        hot * 50 > total,
        "only {hot} of {total} pixels have flame colours: the frames did not render"
    );
    assert!(
        colours.len() >= 20,
        "only {} distinct colours: the frames did not render",
        colours.len()
    );
}
