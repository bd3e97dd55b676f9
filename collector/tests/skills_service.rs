//! The skills service's surfaces end to end: a real collector on 127.0.0.1:0 over SQLite, fed
//! synthetic batches through the ingest service, asked over gRPC (`ListSkills`, `RunSkill`,
//! `Diff`, `Source`), through the real `wattson` CLI (`skills list`, `suggest`), and through
//! the real `wattson mcp` driven by rmcp's MCP client over its stdio. Energy is synthetic (no
//! RAPL here): one measured host.

mod common;

use std::process::Command;

use common::{Collector, bearer};
use rmcp::model::{CallToolRequestParams, ErrorCode};
use rmcp::service::{RoleClient, RunningService};
use rmcp::transport::{ConfigureCommandExt as _, TokioChildProcess};
use rmcp::{ServiceError, ServiceExt as _};
use serde_json::{Value, json};
use tonic::Code;
use wattson_collector::attribute::FleetConfig;
use wattson_collector::server::ServeConfig;
use wattson_collector::skills::catalogue;
use wattson_collector::skills_service::SkillSet;
use wattson_collector::store::synthetic::BatchBuilder;
use wattson_proto::v1::query_service_client::QueryServiceClient;
use wattson_proto::v1::skills_service_client::SkillsServiceClient;
use wattson_proto::v1::{
    Batch, DiffRequest, ListSkillsRequest, PowerRequest, RankBy, RunSkillRequest, SourceRequest,
    TimeWindow, TopRequest,
};

/// 2026-11-02 00:00:00 UTC.
const T0: i64 = 1_793_577_600;
/// Ten minutes of data from T0.
const MINUTES: i64 = 10;
/// How Rust's std names SipHash in a profile.
const SIPHASH: &str = "<std::hash::random::DefaultHasher as core::hash::Hasher>::write";
const HASH_STACK: &str =
    "main;api::serve;<std::hash::random::DefaultHasher as core::hash::Hasher>::write";
/// Samples and µJ per minute of `api`'s two stacks and `db`'s one.
const HASH: (u64, f64) = (40, 4_000_000.0);
const PARSE: (u64, f64) = (60, 6_000_000.0);
const QUERY: (u64, f64) = (10, 600_000.0);
/// `ids` compiles a regex per call at src/ids.rs:5 (DWARF file:line on the frame), and
/// `IDS_RS` is that source.
const REGEX_STACK: &str = "main@src/main.rs:3;ids::check@src/ids.rs:5;regex::regex::string::Regex::new;regex_automata::meta::regex::Builder::build";
const IDS_RS: &str = "use regex::Regex;\n\npub fn check(ids: &[String]) -> usize {\n    ids.iter()\n        .filter(|id| Regex::new(r\"^[a-z]+-\\d+$\").unwrap().is_match(id))\n        .count()\n}\n";

/// A user skill matching `api`'s parse stack, and one the loader refuses on line 5.
const USER_SKILLS: &str = r#"[[skill]]
name = "api-parse"
description = "api parsing its requests"
frames = ["api::parse"]
services = ["api"]
min_share = 0.3
savings_factor = 0.5
savings_model = "parse once"
advice = "Parse each request once"
"#;
const BAD_SKILLS: &str = r#"[[skill]]
name = "bad"
description = "a threshold that is not a number"
frames = ["x"]
min_share = "lots"
savings_factor = 0.5
advice = "none"
"#;

/// A collector with the built-in skills and `USER_SKILLS`, loaded with the test data.
async fn start(token: Option<&str>) -> Collector {
    let dir = tempfile::tempdir().unwrap();
    let skills_file = dir.path().join("skills.toml");
    std::fs::write(&skills_file, USER_SKILLS).unwrap();
    let config = ServeConfig {
        fleet: FleetConfig::default(),
        token: token.map(String::from),
        skills: SkillSet::load(Some(&skills_file)).unwrap(),
        ..ServeConfig::default()
    };
    let col = Collector::serve_in(dir, config).await;
    col.ingest_as(token, test_data()).await;
    col
}

/// Ten minutes of `api`, `db` and `ids` on one measured host.
fn test_data() -> Vec<Batch> {
    (0..MINUTES)
        .map(|m| {
            BatchBuilder::new("m1", m as u64 + 1)
                .interval(
                    T0 + m * 60,
                    60,
                    false,
                    0.0,
                    &[
                        ("api", "b1", HASH_STACK, HASH.0, HASH.1),
                        ("api", "b1", "main;api::serve;api::parse", PARSE.0, PARSE.1),
                        ("db", "b9", "main;db::query", QUERY.0, QUERY.1),
                        ("ids", "b5", REGEX_STACK, 30, 3_000_000.0),
                        ("ids", "b5", "main;ids::load", 30, 3_000_000.0),
                    ],
                )
                .build()
        })
        .collect()
}

/// `a` and `b` are the same JSON, figures equal but for float rounding (the collector sums
/// per-host figures in hash order, so two answers may differ in the last bit).
fn assert_same(a: &Value, b: &Value) {
    fn same(a: &Value, b: &Value) -> bool {
        match (a, b) {
            (Value::Number(x), Value::Number(y)) => {
                let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
                (x - y).abs() <= 1e-12 * x.abs().max(y.abs()).max(1.0)
            }
            (Value::Array(x), Value::Array(y)) => {
                x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
            }
            (Value::Object(x), Value::Object(y)) => {
                x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
            }
            _ => a == b,
        }
    }
    assert!(same(a, b), "not the same answer:\n{a}\n{b}");
}

fn window() -> Option<TimeWindow> {
    Some(TimeWindow {
        from_unix_seconds: T0,
        to_unix_seconds: T0 + MINUTES * 60,
    })
}

fn run(skill: &str, service: &str) -> RunSkillRequest {
    RunSkillRequest {
        skill: skill.into(),
        window: window(),
        service: service.into(),
        ..RunSkillRequest::default()
    }
}

/// `api`'s watts over the window, as the query service attributes them.
async fn api_watts(addr: &str) -> f64 {
    let mut q = QueryServiceClient::connect(addr.to_string()).await.unwrap();
    let p = q
        .power(PowerRequest { window: window() })
        .await
        .unwrap()
        .into_inner();
    let api = p.services.iter().find(|s| s.service == "api").unwrap();
    api.power.unwrap().watts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_and_run_skills_over_grpc() {
    let col = start(None).await;
    let mut s = col.skills().await;

    let list = s
        .list_skills(ListSkillsRequest {})
        .await
        .unwrap()
        .into_inner();
    let names: Vec<&str> = list.skills.iter().map(|s| s.name.as_str()).collect();
    for p in catalogue::patterns() {
        assert!(
            names.contains(&p.name.as_str()),
            "{} missing: {names:?}",
            p.name
        );
    }
    let user = list.skills.iter().find(|s| s.name == "api-parse").unwrap();
    assert!(user.origin.ends_with("skills.toml"), "{user:?}");
    let siphash = list
        .skills
        .iter()
        .find(|s| s.name == "siphash-small-keys")
        .unwrap();
    assert_eq!(siphash.origin, "builtin");

    // The opportunity finder on api: SipHash is 40% of its samples and energy, and the
    // savings are that share of api's watts times the pattern's factor.
    let r = s.run_skill(run("", "api")).await.unwrap().into_inner();
    let f = r
        .findings
        .iter()
        .find(|f| f.skill == "siphash-small-keys")
        .unwrap_or_else(|| panic!("no siphash finding: {r:?}"));
    assert_eq!(f.service, "api");
    let share = HASH.1 / (HASH.1 + PARSE.1);
    assert!(
        (f.share - HASH.0 as f64 / (HASH.0 + PARSE.0) as f64).abs() < 1e-9,
        "{f:?}"
    );
    let factor = catalogue::patterns()
        .into_iter()
        .find(|p| p.name == "siphash-small-keys")
        .unwrap()
        .savings_factor;
    let expect = share * api_watts(&col.addr).await * factor;
    assert!(
        expect > 0.0 && (f.savings_watts - expect).abs() < 1e-9 * expect,
        "{f:?} vs {expect}"
    );
    assert!(!f.estimated, "measured energy came out estimated: {f:?}");
    assert!(f.confidence > 0.0 && f.confidence <= 1.0, "{f:?}");
    assert!(
        f.evidence.iter().any(|e| e.contains(SIPHASH)),
        "{:?}",
        f.evidence
    );
    // The user skill fires from the same engine.
    assert!(r.findings.iter().any(|f| f.skill == "api-parse"), "{r:?}");
    // Best first.
    let fleet: Vec<f64> = r.findings.iter().map(|f| f.savings_fleet_watts).collect();
    assert!(fleet.windows(2).all(|w| w[0] >= w[1]), "{fleet:?}");

    // Negative: db has neither pattern's evidence.
    let r = s.run_skill(run("", "db")).await.unwrap().into_inner();
    assert!(r.findings.is_empty(), "{r:?}");
    // One skill by name.
    let r = s
        .run_skill(run("siphash-small-keys", ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.findings.len(), 1, "{r:?}");

    // Refusals name what to fix.
    let e = s.run_skill(run("no-such-skill", "")).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("unknown skill \"no-such-skill\"")
            && e.message().contains("siphash-small-keys"),
        "{e:?}"
    );
    let e = s.run_skill(run("", "nosuch")).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("nosuch"), "{e:?}");
    let mut bad_root = run("", "api");
    bad_root.source_root = col.dir.path().join("absent").display().to_string();
    let e = s.run_skill(bad_root).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("not a directory"), "{e:?}");

    // The solver needs detection: without it, a clear refusal; with it, an answer.
    match s.run_skill(run("regression-solver", "")).await {
        Ok(r) => assert!(
            r.get_ref()
                .findings
                .iter()
                .all(|f| !f.regression_id.is_empty())
        ),
        Err(e) => {
            assert_eq!(e.code(), Code::Unimplemented, "{e:?}");
            assert!(e.message().contains("detection is not available"), "{e:?}");
        }
    }
    col.stop().await;
}

/// `grpcurl`'s view: health says SERVING and reflection lists the service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skills_service_has_health_and_reflection() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let col = start(None).await;
    let channel = tonic::transport::Endpoint::from_shared(col.addr.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut h = HealthClient::new(channel.clone());
    let r = h
        .check(HealthCheckRequest {
            service: "wattson.v1.SkillsService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.status, ServingStatus::Serving as i32);
    let mut refl = ServerReflectionClient::new(channel);
    let ask = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = refl
        .server_reflection_info(tokio_stream::iter([ask]))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        answers.message().await.unwrap().unwrap().message_response
    else {
        panic!("not a service list")
    };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"wattson.v1.SkillsService"), "{names:?}");
    col.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diff_and_source_reads_for_mcp() {
    let col = start(None).await;
    let mut s = col.skills().await;
    // The second half of the window against the first: the same rates, so no function moved.
    let half = T0 + MINUTES * 30;
    let d = s
        .diff(DiffRequest {
            window: Some(TimeWindow {
                from_unix_seconds: half,
                to_unix_seconds: T0 + MINUTES * 60,
            }),
            baseline: Some(TimeWindow {
                from_unix_seconds: T0,
                to_unix_seconds: half,
            }),
            service: "api".into(),
            ..DiffRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.unit, "W");
    assert_eq!(d.sides, ["baseline", "window"]);
    let hash = d.functions.iter().find(|f| f.function == SIPHASH).unwrap();
    assert!(
        hash.before > 0.0 && (hash.after - hash.before).abs() < 1e-9 * hash.before,
        "{hash:?}"
    );
    let e = s
        .diff(DiffRequest {
            window: window(),
            weight: "joules".into(),
            baseline: window(),
            ..DiffRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("\"joules\""), "{e:?}");
    // Synthetic frames carry no DWARF lines: an empty answer, not an error.
    let src = s
        .source(SourceRequest {
            window: window(),
            service: "api".into(),
            function: "api::serve".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(src.lines.is_empty(), "{src:?}");
    // ids::check's frames carry their file:line: the call into the regex crate is there.
    let src = s
        .source(SourceRequest {
            window: window(),
            service: "ids".into(),
            function: "ids::check".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let call = src.lines.first().unwrap_or_else(|| panic!("{src:?}"));
    assert_eq!(
        (call.file.as_str(), call.line),
        ("src/ids.rs", 5),
        "{src:?}"
    );
    assert_eq!(call.callee, "regex::regex::string::Regex::new");
    assert_eq!(call.samples, 30 * MINUTES as u64);
    let e = s
        .source(SourceRequest {
            window: window(),
            ..SourceRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    col.stop().await;
}

/// Regression guard: the skills service must sit behind `--token` like the query service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skills_need_the_collectors_token() {
    let col = start(Some("s3cret")).await;
    let e = col
        .skills()
        .await
        .list_skills(ListSkillsRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let channel = tonic::transport::Endpoint::from_shared(col.addr.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut s = SkillsServiceClient::with_interceptor(channel, bearer(Some("s3cret")));
    assert!(
        !s.list_skills(ListSkillsRequest {})
            .await
            .unwrap()
            .into_inner()
            .skills
            .is_empty()
    );
    // The CLI passes --token through.
    let (ok, out, err) = wattson(&col.addr, &["--token", "s3cret", "skills", "list"]);
    assert!(ok, "{err}");
    assert!(out.contains("siphash-small-keys"), "{out}");
    col.stop().await;
}

/// Runs the real `wattson` CLI against `addr`, wide enough that no column is cut.
fn wattson(addr: &str, args: &[&str]) -> (bool, String, String) {
    let wide: Vec<&str> = ["--width", "200"].iter().chain(args).copied().collect();
    common::wattson(addr, &wide)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_skills_list_and_suggest() {
    let col = start(None).await;
    let (from, to) = (T0.to_string(), (T0 + MINUTES * 60).to_string());
    let win = ["--from", from.as_str(), "--to", to.as_str()];

    let (ok, out, err) = wattson(&col.addr, &["skills", "list"]);
    assert!(ok, "{err}");
    let row = out.lines().find(|l| l.starts_with("api-parse ")).unwrap();
    assert!(row.trim_end().ends_with("skills.toml"), "{row}");
    assert!(out.contains("siphash-small-keys: SipHash"), "{out}");

    let (ok, out, err) = wattson(
        &col.addr,
        &[&["suggest", "--service", "api"][..], &win].concat(),
    );
    assert!(ok, "{err}");
    let head = out.lines().next().unwrap();
    for col in [
        "FUNCTION",
        "SKILL",
        "SAVES W",
        "FLEET W",
        "CONF",
        "FILE:LINE",
    ] {
        assert!(head.contains(col), "{head}");
    }
    let row = out
        .lines()
        .find(|l| l.starts_with('#') && l.contains("siphash-small-keys"))
        .unwrap_or_else(|| panic!("{out}"));
    // Measured energy: watts without "est".
    assert!(row.contains(" W ") && !row.contains("est"), "{row}");
    assert!(out.contains("advice: HashMap/HashSet"), "{out}");

    let (ok, out, err) = wattson(
        &col.addr,
        &[&["--json", "suggest", "--service", "api"][..], &win].concat(),
    );
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    // The wire type as it is, the same as the gRPC answer.
    let grpc = col
        .skills()
        .await
        .run_skill(run("", "api"))
        .await
        .unwrap()
        .into_inner();
    assert_same(&v, &serde_json::to_value(&grpc).unwrap());

    let (ok, out, _) = wattson(
        &col.addr,
        &[&["suggest", "--service", "db"][..], &win].concat(),
    );
    assert!(ok);
    assert!(out.starts_with("no findings"), "{out}");
    let (ok, _, err) = wattson(
        &col.addr,
        &[&["suggest", "--skill", "nope"][..], &win].concat(),
    );
    assert!(!ok);
    assert!(
        err.contains("unknown skill \"nope\"") && err.contains("InvalidArgument"),
        "{err}"
    );
    col.stop().await;
}

/// `--source-root` is read by the collector: the patch it makes lands in `--patch-dir` and
/// applies to the tree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_suggest_writes_patches_the_collector_made() {
    let col = start(None).await;
    let (from, to) = (T0.to_string(), (T0 + MINUTES * 60).to_string());
    let src = tempfile::tempdir().unwrap();
    std::fs::create_dir(src.path().join("src")).unwrap();
    std::fs::write(src.path().join("src/ids.rs"), IDS_RS).unwrap();
    let git = |args: &[&str]| {
        let ok = Command::new("git")
            .args(args)
            .current_dir(src.path())
            .output()
            .unwrap()
            .status
            .success();
        assert!(ok, "git {args:?}");
    };
    git(&["init", "-q"]);
    let patches = src.path().join("patches");
    let root = src.path().display().to_string();
    let args = [
        "suggest",
        "--service",
        "ids",
        "--from",
        &from,
        "--to",
        &to,
        "--source-root",
        &root,
        "--patch-dir",
    ];
    let (ok, out, err) = wattson(
        &col.addr,
        &[&args[..], &[patches.to_str().unwrap()]].concat(),
    );
    assert!(ok, "{err}");
    let row = out
        .lines()
        .find(|l| l.contains("regex-compile-per-call"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        row.contains("ids::check") && row.ends_with("src/ids.rs:5"),
        "{row}"
    );
    let patch = patches.join("01-regex-compile-per-call.patch");
    assert!(err.contains(&format!("wrote {}", patch.display())), "{err}");
    git(&["apply", patch.to_str().unwrap()]);
    let after = std::fs::read_to_string(src.path().join("src/ids.rs")).unwrap();
    assert!(
        after.contains("LazyLock<Regex>") && after != IDS_RS,
        "{after}"
    );
    // A second run refuses to overwrite what the first wrote.
    let (ok, _, err) = wattson(
        &col.addr,
        &[&args[..], &[patches.to_str().unwrap()]].concat(),
    );
    assert!(
        !ok && err.contains("exists; give an empty directory"),
        "{err}"
    );
    col.stop().await;
}

#[test]
fn collector_refuses_a_bad_skills_file_at_start_naming_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, BAD_SKILLS).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_wattson-collector"))
        .args(["serve", "--listen", "127.0.0.1:0", "--store"])
        .arg(format!("sqlite://{}", dir.path().join("w.db").display()))
        .arg("--skills")
        .arg(&bad)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains(&format!("--skills: {}:5:", bad.display())),
        "{err}"
    );
}

type Client = RunningService<RoleClient, ()>;

/// The real `wattson mcp` against `addr`, with rmcp's client on its stdio.
async fn mcp(addr: &str) -> Client {
    let cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_wattson")).configure(|c| {
        c.args(["--collector", addr, "mcp"]);
    });
    ().serve(TokioChildProcess::new(cmd).unwrap())
        .await
        .expect("MCP initialization with `wattson mcp`")
}

/// A tool call's structured answer, or its tool error: (JSON-RPC code, text). A protocol
/// error or a dead server fails the test.
async fn call(c: &Client, tool: &'static str, args: Value) -> Result<Value, (i64, String)> {
    let args = args.as_object().unwrap().clone();
    let r = c
        .call_tool(CallToolRequestParams::new(tool).with_arguments(args))
        .await
        .unwrap_or_else(|e| panic!("{tool}: not a tool result: {e:?}"));
    let text = r
        .content
        .iter()
        .filter_map(|c| c.as_text())
        .map(|t| t.text.clone())
        .collect();
    match r.is_error {
        Some(true) => {
            let code = r.structured_content.as_ref().map_or(
                // rmcp's own answer to arguments that do not fit the schema: text only.
                ErrorCode::INVALID_PARAMS.0 as i64,
                |v| v["error"]["code"].as_i64().unwrap(),
            );
            Err((code, text))
        }
        _ => Ok(r
            .structured_content
            .unwrap_or_else(|| panic!("{tool}: no structured content: {text}"))),
    }
}

const INVALID: i64 = ErrorCode::INVALID_PARAMS.0 as i64;
const INTERNAL: i64 = ErrorCode::INTERNAL_ERROR.0 as i64;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_serves_the_tools_to_a_real_client() {
    let col = start(None).await;
    let c = mcp(&col.addr).await;
    let (from, to) = (T0.to_string(), (T0 + MINUTES * 60).to_string());

    let tools = c.list_all_tools().await.unwrap();
    let mut names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "builds",
            "changes",
            "diff",
            "list_skills",
            "power",
            "regressions",
            "run_skill",
            "series",
            "source",
            "stacks",
            "suggest",
            "top"
        ]
    );
    let top_tool = tools.iter().find(|t| t.name == "top").unwrap();
    let props = &top_tool.input_schema["properties"];
    for p in ["from", "to", "service", "rank", "limit"] {
        assert!(props.get(p).is_some(), "top's schema lacks {p}: {props}");
    }

    // top: the query service's answer as it is, and api's hash at 4 J a minute.
    let v = call(&c, "top", json!({"from": from, "to": to, "service": "api"}))
        .await
        .unwrap();
    let mut q = QueryServiceClient::connect(col.addr.clone()).await.unwrap();
    let grpc = q
        .top(TopRequest {
            window: window(),
            service: "api".into(),
            rank: RankBy::EnergySelf as i32,
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_same(&v, &serde_json::to_value(&grpc).unwrap());
    let hash = v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["function"] == SIPHASH)
        .unwrap();
    let watts = hash["self_power"]["watts"].as_f64().unwrap();
    assert!((watts - HASH.1 / 1e6 / 60.0).abs() < 1e-9, "{hash}");

    // suggest: the opportunity finder, as the skills service answers it.
    let v = call(
        &c,
        "suggest",
        json!({"from": from, "to": to, "service": "api"}),
    )
    .await
    .unwrap();
    let grpc = col
        .skills()
        .await
        .run_skill(run("", "api"))
        .await
        .unwrap()
        .into_inner();
    assert_same(&v, &serde_json::to_value(&grpc).unwrap());
    assert!(
        v["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["skill"] == "siphash-small-keys"),
        "{v}"
    );

    // regressions: detection's answer, or, on a collector without detection, an MCP error
    // that says so.
    match call(&c, "regressions", json!({"from": from, "to": to})).await {
        Ok(v) => {
            let regs = v["regressions"].as_array().unwrap();
            assert!(
                regs.iter()
                    .all(|r| ["api", "db", "ids"].iter().any(|s| r["service"] == *s)),
                "{v}"
            );
        }
        Err((code, text)) => {
            assert_eq!(code, INTERNAL, "{text}");
            assert!(text.contains("regressions) is not available"), "{text}");
        }
    }

    // Bad arguments are tool errors saying what to fix, and the server lives on.
    let (code, text) = call(&c, "top", json!({"from": "yesterday-ish"}))
        .await
        .unwrap_err();
    assert_eq!(code, INVALID);
    assert!(
        text.starts_with("invalid params: from: cannot read time"),
        "{text}"
    );
    let (code, text) = call(&c, "regressions", json!({"as_of": "last tuesday"}))
        .await
        .unwrap_err();
    assert_eq!(code, INVALID);
    assert!(
        text.starts_with("invalid params: as_of: cannot read time"),
        "{text}"
    );
    let (code, text) = call(&c, "top", json!({"limit": "ten"})).await.unwrap_err();
    assert_eq!(code, INVALID);
    assert!(text.contains("invalid type: string \"ten\""), "{text}");
    let args = json!({"from": from, "to": to, "service": "nosuch", "function": "f"});
    let (code, text) = call(&c, "series", args).await.unwrap_err();
    assert_eq!(code, INVALID);
    assert!(text.contains("unknown service \"nosuch\""), "{text}");
    let (code, text) = call(&c, "run_skill", json!({"skill": "nope"}))
        .await
        .unwrap_err();
    assert_eq!(code, INVALID);
    assert!(text.contains("unknown skill \"nope\""), "{text}");
    let (code, text) = call(&c, "suggest", json!({"source_root": "src"}))
        .await
        .unwrap_err();
    assert_eq!(code, INVALID);
    assert!(
        text.contains("absolute path on the collector's host"),
        "{text}"
    );
    // An unknown tool is not a tool call: a protocol error.
    let e = c
        .call_tool(CallToolRequestParams::new("no_such_tool"))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ServiceError::McpError(e) if e.code == ErrorCode::INVALID_PARAMS),
        "{e:?}"
    );
    let v = call(&c, "list_skills", json!({})).await.unwrap();
    assert!(v["skills"].as_array().unwrap().len() > 12, "{v}");

    // A collector gone away is an internal error naming it, not a crash.
    col.stop().await;
    let (code, text) = call(&c, "power", json!({"from": from, "to": to}))
        .await
        .unwrap_err();
    assert_eq!(code, INTERNAL);
    assert!(
        text.contains("power: collector http://127.0.0.1:"),
        "{text}"
    );
    c.cancel().await.unwrap();
}
