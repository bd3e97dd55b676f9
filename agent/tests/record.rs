//! `wattson-agent record` end to end, as root on this kernel: the outputs are readable by the
//! tools they are for (folded by inferno, pprof by a decoder built from profile.proto), and bad
//! input gets a clear, early error.

use std::{
    borrow::Cow,
    fs,
    io::Read as _,
    os::unix::process::CommandExt as _,
    path::Path,
    process::{Command, Output},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use prost_reflect::{DynamicMessage, Value};

const AGENT: &str = env!("CARGO_BIN_EXE_wattson-agent");

#[inline(never)]
fn wattson_record_test_hot_loop(stop: &AtomicBool) -> u64 {
    let mut x = 1u64;
    while !stop.load(Ordering::Relaxed) {
        for _ in 0..1000 {
            x = std::hint::black_box(x.wrapping_mul(0x5851_f42d_4c95_7f2d).rotate_left(7));
        }
    }
    x
}

/// Runs `wattson-agent record` with `args` while this process spins in a named function.
fn record_while_busy(args: &[&str]) -> Output {
    let stop = Arc::new(AtomicBool::new(false));
    let busy = {
        let stop = Arc::clone(&stop);
        thread::spawn(move || wattson_record_test_hot_loop(&stop))
    };
    let out = Command::new(AGENT)
        .arg("record")
        .args(args)
        .output()
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    busy.join().unwrap();
    assert!(
        out.status.success(),
        "record {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn folded_output_renders_with_inferno_and_names_the_hot_function() {
    let dir = tempfile::tempdir().unwrap();
    let folded = dir.path().join("out.folded");
    let me = std::process::id().to_string();
    let out = record_while_busy(&[
        "--duration",
        "2s",
        "--pid",
        &me,
        "--output",
        folded.to_str().unwrap(),
    ]);
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(summary.contains("clock event"), "summary: {summary}");
    assert!(summary.contains("top functions"), "summary: {summary}");

    let text = fs::read_to_string(&folded).unwrap();
    for line in text.lines() {
        let (stack, count) = line.rsplit_once(' ').expect("`stack count` lines");
        assert!(!stack.is_empty());
        count.parse::<u64>().expect("integer counts");
    }
    let mut svg = Vec::new();
    inferno::flamegraph::from_reader(
        &mut inferno::flamegraph::Options::default(),
        text.as_bytes(),
        &mut svg,
    )
    .expect("inferno renders the folded output");
    assert!(
        text.contains("wattson_record_test_hot_loop"),
        "hot loop not in folded stacks"
    );
    assert!(
        text.contains("wattson_record_test_hot_loop"),
        "hot loop not in folded stacks"
    );
    let svg = String::from_utf8(svg).unwrap();
    assert!(svg.starts_with("<?xml") && svg.contains("<svg"));
    assert!(svg.contains("wattson_record_test_hot_loop"));
}

fn field<'a>(m: &'a DynamicMessage, name: &str) -> Cow<'a, Value> {
    m.get_field_by_name(name)
        .unwrap_or_else(|| panic!("profile.proto has no field {name}"))
}

fn list(m: &DynamicMessage, name: &str) -> Vec<Value> {
    field(m, name).as_list().unwrap_or_default().to_vec()
}

#[test]
fn pprof_output_parses_as_profile_proto() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.pb.gz");
    let me = std::process::id().to_string();
    record_while_busy(&[
        "--duration",
        "2s",
        "--pid",
        &me,
        "--output",
        path.to_str().unwrap(),
    ]);

    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(fs::File::open(&path).unwrap())
        .read_to_end(&mut raw)
        .expect("pprof output is gzipped");
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let pool = protox::Compiler::new([&fixtures])
        .unwrap()
        .open_files(["profile.proto"])
        .unwrap()
        .descriptor_pool();
    let desc = pool
        .get_message_by_name("perftools.profiles.Profile")
        .unwrap();
    let profile = DynamicMessage::decode(desc, raw.as_slice()).expect("decodes as profile.proto");
    assert!(
        profile.unknown_fields().next().is_none(),
        "fields outside profile.proto"
    );

    let strings: Vec<String> = list(&profile, "string_table")
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(strings.first().map(String::as_str), Some(""));
    let string = |v: &Value| strings[v.as_i64().unwrap() as usize].clone();
    let types: Vec<String> = list(&profile, "sample_type")
        .iter()
        .map(|v| string(&field(v.as_message().unwrap(), "type")))
        .collect();
    assert_eq!(types[..2], ["samples".to_owned(), "cpu".to_owned()]);

    let ids = |name: &str| -> std::collections::HashSet<u64> {
        list(&profile, name)
            .iter()
            .map(|v| field(v.as_message().unwrap(), "id").as_u64().unwrap())
            .collect()
    };
    let (locations, functions, mappings) = (ids("location"), ids("function"), ids("mapping"));
    let mut samples = 0;
    for s in list(&profile, "sample") {
        let s = s.as_message().unwrap();
        for id in list(s, "location_id") {
            assert!(
                locations.contains(&id.as_u64().unwrap()),
                "dangling location"
            );
        }
        let values = list(s, "value");
        assert_eq!(values.len(), types.len());
        samples += values[0].as_i64().unwrap();
    }
    assert!(samples > 0);
    let mut names = Vec::new();
    for l in list(&profile, "location") {
        let l = l.as_message().unwrap();
        assert!(mappings.contains(&field(l, "mapping_id").as_u64().unwrap()));
        for line in list(l, "line") {
            let id = field(line.as_message().unwrap(), "function_id")
                .as_u64()
                .unwrap();
            assert!(functions.contains(&id), "dangling function");
        }
    }
    for f in list(&profile, "function") {
        names.push(string(&field(f.as_message().unwrap(), "name")));
    }
    assert!(
        names
            .iter()
            .any(|n| n.ends_with("wattson_record_test_hot_loop")),
        "hot function not among {} functions",
        names.len()
    );
}

#[test]
fn json_output_holds_the_profile_model() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.json");
    let me = std::process::id().to_string();
    record_while_busy(&[
        "--duration",
        "1s",
        "--pid",
        &me,
        "--output",
        path.to_str().unwrap(),
    ]);
    let v: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    assert_eq!(v["frequency"], 99);
    let samples = v["samples"].as_array().unwrap();
    assert!(!samples.is_empty());
    assert!(
        samples
            .iter()
            .any(|s| s["tgid"].as_u64() == Some(u64::from(std::process::id()))),
        "no sample of the --pid process"
    );
    // --pid follows the process's descendants: here the programs other tests of this binary
    // run at the same time (agents, shells, python3). Nothing else gets through.
    let agent = fs::canonicalize(AGENT).unwrap();
    for s in samples {
        let tgid = s["tgid"].to_string();
        let exe = v["processes"][&tgid]["exe"].as_str().unwrap_or_default();
        let name = exe.rsplit('/').next().unwrap_or_default();
        assert!(
            tgid == me
                || Path::new(exe) == agent
                || ["sh", "dash", "bash"].contains(&name)
                || name.starts_with("python3"),
            "--pid let a process outside its tree through: {tgid} {exe}"
        );
    }
    let p = &v["processes"][&me];
    assert!(p["exe"].as_str().unwrap().contains("record"));
    assert!(!p["service"].as_str().unwrap().is_empty());
    assert!(p["build_id"].as_str().is_some_and(|b| b.len() >= 40));
}

fn run_agent(args: &[&str]) -> (Output, Duration) {
    let started = Instant::now();
    let out = Command::new(AGENT)
        .arg("record")
        .args(args)
        .output()
        .unwrap();
    (out, started.elapsed())
}

#[test]
fn missing_pid_is_a_clear_error_before_sampling() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.folded");
    let (o, took) = run_agent(&[
        "--pid",
        "999999999",
        "--duration",
        "30s",
        "--output",
        out.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("--pid 999999999: no such process"), "{err}");
    assert!(took < Duration::from_secs(5));
}

#[test]
fn unwritable_output_is_an_error_before_sampling() {
    let (o, took) = run_agent(&["--duration", "30s", "--output", "/nonexistent-dir/x.pb.gz"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("--output /nonexistent-dir/x.pb.gz"), "{err}");
    assert!(
        took < Duration::from_secs(5),
        "took {took:?}: checked after sampling?"
    );
}

#[test]
fn unprivileged_user_gets_one_error_naming_the_capabilities() {
    let dir = tempfile::tempdir().unwrap();
    // SAFETY: chmod on a path we own.
    fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let out = dir.path().join("x.pb.gz");
    let mut cmd = Command::new(AGENT);
    cmd.args([
        "record",
        "--duration",
        "30s",
        "--output",
        out.to_str().unwrap(),
    ]);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setgid(65534) != 0 || libc::setuid(65534) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let o = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    for cap in ["CAP_BPF", "CAP_PERFMON", "CAP_SYS_PTRACE", "CAP_SYSLOG"] {
        assert!(err.contains(cap), "{cap} not named in: {err}");
    }
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn pid_exiting_mid_record_keeps_the_partial_profile() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("partial.json");
    // A child that is busy for about a second, then exits.
    let mut child = Command::new("/bin/sh")
        .args(["-c", "i=0; while [ $i -lt 400000 ]; do i=$((i+1)); done"])
        .spawn()
        .unwrap();
    let pid = child.id().to_string();
    let (o, took) = run_agent(&[
        "--pid",
        &pid,
        "--duration",
        "60s",
        "--output",
        out.to_str().unwrap(),
    ]);
    child.wait().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains(&format!("process {pid} exited")), "{err}");
    assert!(
        took < Duration::from_secs(30),
        "kept recording after the process exited"
    );
    let v: serde_json::Value = serde_json::from_slice(&fs::read(&out).unwrap()).unwrap();
    let samples: u64 = v["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["count"].as_u64().unwrap())
        .sum();
    assert!(samples > 0, "partial profile is empty");
    assert_eq!(v["processes"][&pid]["comm"], "sh");
}

/// A Python loop encoding and decoding JSON, as a user would start it: from a shell.
const PYTHON_JSON_LOOP: &str =
    "import json\nd = {'a': [1, 2, 3] * 100}\nwhile True:\n    json.loads(json.dumps(d))\n";

/// CPU seconds `pid` has used (utime + stime of `/proc/PID/stat`).
fn cpu_secs(pid: u32) -> f64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    ticks as f64 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// Records `--pid pid` at 199 Hz for 3 s as folded stacks; returns the samples per process
/// name (the first field of each line) and the samples `python` should have had: its CPU
/// time over the recording x 199 Hz (this machine is shared, so its share of a CPU varies).
fn folded_by_comm(pid: u32, python: u32) -> (std::collections::BTreeMap<String, u64>, f64) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("py.folded");
    let before = cpu_secs(python);
    let (o, _) = run_agent(&[
        "--duration",
        "3s",
        "-F",
        "199",
        "--pid",
        &pid.to_string(),
        "--output",
        out.to_str().unwrap(),
        "--format",
        "folded",
    ]);
    let expected = (cpu_secs(python) - before) * 199.0;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut by_comm = std::collections::BTreeMap::new();
    for line in fs::read_to_string(&out).unwrap().lines() {
        let (stack, count) = line.rsplit_once(' ').unwrap();
        let comm = stack.split(';').next().unwrap().to_owned();
        *by_comm.entry(comm).or_default() += count.parse::<u64>().unwrap();
    }
    (by_comm, expected)
}
/// Regression: `record -F 199 --pid PID` on a busy python3 started from a shell recorded 0
/// samples: `sh -c 'python3 ...'` (dash) waits for python3 as its child instead of exec'ing
/// it, so the pid the user had was the idle shell's and the filter let only it through.
/// `--pid` now follows the process's descendants; the interpreter's pid alone still works.
#[test]
fn record_pid_of_a_shell_running_python_samples_the_interpreter() {
    let script = tempfile::NamedTempFile::new().unwrap();
    fs::write(script.path(), PYTHON_JSON_LOOP).unwrap();
    let command = format!("python3 {}; true", script.path().display());
    let mut shell = Command::new("/bin/sh")
        .args(["-c", &command])
        .process_group(0)
        .spawn()
        .expect("python3 is installed (cargo xtask setup)");
    // The interpreter: the shell's child once it has started.
    let children = format!("/proc/{0}/task/{0}/children", shell.id());
    let deadline = Instant::now() + Duration::from_secs(10);
    let python: u32 = loop {
        let text = fs::read_to_string(&children).unwrap_or_default();
        if let Some(pid) = text.split_whitespace().next() {
            break pid.parse().unwrap();
        }
        assert!(Instant::now() < deadline, "python3 never started");
        thread::sleep(Duration::from_millis(20));
    };
    thread::sleep(Duration::from_millis(300)); // past the interpreter's start-up
    let via_shell = folded_by_comm(shell.id(), python);
    let direct = folded_by_comm(python, python);
    // SAFETY: signalling the process group this test created.
    unsafe { libc::kill(-(shell.id() as i32), libc::SIGKILL) };
    shell.wait().unwrap();
    for (how, (by_comm, expected)) in [("the shell's pid", &via_shell), ("python3's pid", &direct)]
    {
        let got = by_comm.get("python3").copied().unwrap_or(0) as f64;
        // The recording window is a little shorter than the CPU-time window around it.
        assert!(
            *expected >= 20.0 && got >= 0.5 * expected,
            "--pid of {how}: {got} python3 samples at 199 Hz where its CPU time says \
             {expected:.0}; by comm {by_comm:?}"
        );
    }
    assert!(
        !direct.0.contains_key("sh"),
        "--pid python3 sampled its parent shell: {:?}",
        direct.0
    );
}

/// The effective capabilities of every thread of `pid` (`CapEff` of /proc/PID/task/*/status).
fn thread_caps(pid: u32) -> Vec<u64> {
    fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .filter_map(|t| fs::read_to_string(t.path().join("status")).ok())
        .filter_map(|s| {
            let v = s.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
            u64::from_str_radix(v.trim(), 16).ok()
        })
        .collect()
}

/// Regression: the agent kept every capability of root for its whole life, though after
/// loading and attaching the sampler it only reads /proc, binaries and kallsyms and opens perf
/// events on CPUs that come online. Checked on every thread of `record` and of the daemon,
/// whose runtime threads must not have been started with the full set.
#[test]
fn capabilities_are_dropped_after_attach_on_every_thread() {
    // CAP_DAC_READ_SEARCH, CAP_SYS_PTRACE, CAP_SYSLOG, CAP_PERFMON.
    let kept: u64 = (1 << 2) | (1 << 19) | (1 << 34) | (1 << 38);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("caps.folded");
    let spool = dir.path().join("spool");
    let runs: [Vec<&str>; 2] = [
        vec![
            "record",
            "--duration",
            "30s",
            "--output",
            out.to_str().unwrap(),
        ],
        // Nothing listens on port 1: the daemon keeps its batches and runs on.
        vec![
            "run",
            "--collector",
            "http://127.0.0.1:1",
            "--host-id",
            "caps-test",
            "--spool-dir",
            spool.to_str().unwrap(),
        ],
    ];
    for args in runs {
        let mut agent = Command::new(AGENT)
            .args(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let pid = agent.id();
        let deadline = Instant::now() + Duration::from_secs(30);
        // Sampling has started once the capabilities of the main thread went down.
        let caps = loop {
            let caps = thread_caps(pid);
            if caps
                .first()
                .is_some_and(|&c| c != u64::MAX && c & (1 << 39) == 0)
            {
                thread::sleep(Duration::from_millis(500)); // let the runtime start its threads
                break thread_caps(pid);
            }
            assert!(
                Instant::now() < deadline,
                "{args:?}: capabilities never dropped: {caps:x?}"
            );
            thread::sleep(Duration::from_millis(100));
        };
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        agent.wait().unwrap();
        assert!(!caps.is_empty());
        for c in &caps {
            assert_eq!(
                c & !kept,
                0,
                "{args:?}: a thread kept {c:#x} (allowed {kept:#x})"
            );
            assert_ne!(c & (1 << 19), 0, "{args:?}: CAP_SYS_PTRACE dropped: {c:#x}");
        }
    }
}
