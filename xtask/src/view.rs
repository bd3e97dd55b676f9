//! The lab's live terminal view: host watts (measured, or estimated and labelled so), the top
//! services and functions by watts with their share, open regressions once detection finds
//! any, and the flame graph it keeps writing.
//! Everything comes from the `wattson` CLI's `--json` output, so the view sees exactly what a
//! user's script would.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use serde_json::Value;

/// Window the view summarizes, as the CLI's `--from`.
const WINDOW: &str = "-2m";
const ROWS: usize = 8;

pub struct View {
    wattson: PathBuf,
    url: String,
    flame: PathBuf,
    interval: u64,
}

impl View {
    pub fn new(wattson: &Path, url: &str, data: &Path, interval: u64) -> Self {
        Self {
            wattson: wattson.to_path_buf(),
            url: url.to_owned(),
            flame: data.join("flame.svg"),
            interval,
        }
    }

    fn query(&self, args: &[&str]) -> Result<Value, String> {
        let out = Command::new(&self.wattson)
            .args(["--collector", &self.url, "--json"])
            .args(args)
            .output()
            .map_err(|e| format!("running {}: {e}", self.wattson.display()))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
        }
        serde_json::from_slice(&out.stdout).map_err(|e| format!("bad JSON from wattson: {e}"))
    }

    /// Redraws the screen.
    pub fn refresh(&self, uptime: Duration) {
        let mut screen = String::from("\x1b[2J\x1b[H");
        screen.push_str(&format!(
            "Wattson lab on this host: up {}s, refresh every {}s, window {}; Ctrl-C stops\n\n",
            uptime.as_secs(),
            self.interval,
            WINDOW.trim_start_matches('-')
        ));
        let total = match self.query(&["power", "--from", WINDOW]) {
            Ok(power) => {
                screen.push_str(&render_power(&power));
                f(&power, &["total", "watts"])
            }
            Err(e) => {
                screen.push_str(&format!(
                    "waiting for the agent's first interval (every {}s): {e}\n",
                    self.interval
                ));
                0.0
            }
        };
        if let Ok(top) = self.query(&["top", "--from", WINDOW, "--limit", &ROWS.to_string()]) {
            screen.push_str(&render_top(&top, total));
        }
        if let Ok(found) = self.query(&["regressions"]) {
            screen.push_str(&render_regressions(&found));
        }
        let flame = Command::new(&self.wattson)
            .args([
                "--collector",
                &self.url,
                "flame",
                "--from",
                "-10m",
                "--output",
            ])
            .arg(&self.flame)
            .output();
        if flame.is_ok_and(|o| o.status.success()) {
            screen.push_str(&format!(
                "\nflame graph (last 10 min): {}\n",
                self.flame.display()
            ));
        }
        // A closed stdout (`| tee` killed by Ctrl-C) must not panic the lab.
        let _ = std::io::Write::write_all(&mut std::io::stdout(), screen.as_bytes());
    }
}

fn f(v: &Value, path: &[&str]) -> f64 {
    path.iter().fold(v, |v, k| &v[*k]).as_f64().unwrap_or(0.0)
}

fn label(estimated: bool) -> &'static str {
    if estimated {
        "ESTIMATED (utilization model: no RAPL counters here)"
    } else {
        "measured (RAPL)"
    }
}

fn render_power(power: &Value) -> String {
    let total = f(power, &["total", "watts"]);
    let idle = f(power, &["idle_watts"]);
    let estimated = power["total"]["estimated"].as_bool().unwrap_or(true);
    let mut s = format!(
        "host power {:.2} W = {:.2} W charged to functions + {:.2} W idle, {}\n",
        total + idle,
        total,
        idle,
        label(estimated)
    );
    s.push_str(&format!(
        "agents reporting: {}, samples dropped: {}\n\n",
        power["hosts_reporting"], power["dropped_samples"]
    ));
    let mut services: Vec<&Value> = power["services"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    services.sort_by(|a, b| f(b, &["power", "watts"]).total_cmp(&f(a, &["power", "watts"])));
    s.push_str("top services by watts\n     watts   share  service\n");
    for svc in services.iter().take(ROWS) {
        let w = f(svc, &["power", "watts"]);
        s.push_str(&format!(
            "  {w:>8.3}  {:>5.1}%  {}\n",
            share(w, total),
            svc["service"].as_str().unwrap_or("?")
        ));
    }
    s
}

/// Function rows; `total` is the watts charged to all functions, so shares match the
/// services table.
fn render_top(top: &Value, total: f64) -> String {
    let rows: Vec<&Value> = top["rows"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let mut s =
        String::from("\ntop functions by self watts\n     watts   share  service / function\n");
    for r in rows {
        let w = f(r, &["self", "watts"]);
        let mut function = r["function"].as_str().unwrap_or("?").to_owned();
        if function.len() > 90 {
            function.truncate(87);
            function.push_str("...");
        }
        s.push_str(&format!(
            "  {w:>8.3}  {:>5.1}%  {} / {function}\n",
            share(w, total),
            r["service"].as_str().unwrap_or("?")
        ));
    }
    s
}

/// Open regressions (the `regressions --json` array), biggest first as the collector sorts
/// them; nothing until there is one.
fn render_regressions(found: &Value) -> String {
    let Some(list) = found.as_array().filter(|l| !l.is_empty()) else {
        return String::new();
    };
    let mut s =
        String::from("\nopen regressions\n    delta   fleet W  service / function (cause)\n");
    for g in list.iter().take(ROWS) {
        let cause = g["causes"][0]["change_id"].as_str().unwrap_or("no culprit");
        s.push_str(&format!(
            "{:+8.3}% {:>9.3}  {} / {} ({cause}){}\n",
            f(g, &["delta_share"]) * 100.0,
            f(g, &["fleet_delta_watts"]),
            g["service"].as_str().unwrap_or(""),
            g["function"].as_str().unwrap_or(""),
            if g["estimated"].as_bool().unwrap_or(false) {
                ", estimated W"
            } else {
                ""
            }
        ));
    }
    s
}

fn share(part: f64, total: f64) -> f64 {
    if total > 0.0 {
        100.0 * part / total
    } else {
        0.0
    }
}

/// Queries that work against the lab's data (the README lists the same ones).
pub const QUERIES: [&str; 9] = [
    "top --from -1h",
    "top --by cpu --inclusive --from -1h",
    "power --from -1h",
    "series --service wattson-demo --function wattson_demo::hash_records --from -1h",
    "flame --from -1h --output flame.svg",
    "profile --from -1h --output profile.pb.gz",
    "diff --baseline=-2h..-1h --from -1h",
    "regressions --all",
    "changes list",
];

/// `println!` that ignores a closed stdout.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// Printed when the lab stops: what to run next against the data it kept.
pub fn where_next(url: &str, data: &Path) {
    let bin = crate::cmd::root().join("target/release");
    let w = bin.join("wattson");
    say!(
        "\nThe lab's data stays in {} for the next run.",
        data.display()
    );
    say!("While `cargo xtask lab` runs, or with a collector serving the same store:");
    say!(
        "  {} serve --listen {} --store sqlite://{}",
        bin.join("wattson-collector").display(),
        url.trim_start_matches("http://"),
        data.join("wattson.db").display()
    );
    say!("these queries work (add --json for scripts):");
    for q in QUERIES {
        say!("  {} --collector {url} {q}", w.display());
    }
    say!(
        "Flame graph written by the lab: {}",
        data.join("flame.svg").display()
    );
    say!("Logs: {}/{{collector,agent,demo-*}}.log", data.display());
}

#[cfg(test)]
mod tests {
    #[test]
    fn regressions_show_once_there_are_any() {
        assert_eq!(super::render_regressions(&serde_json::json!([])), "");
        let found = serde_json::json!([{
            "service": "wattson-demo", "function": "hash_records", "delta_share": 0.0123,
            "fleet_delta_watts": 1.5, "estimated": true, "causes": [{"change_id": "PR-9"}]
        }]);
        let s = super::render_regressions(&found);
        assert!(
            s.contains("+1.230%") && s.contains("hash_records (PR-9), estimated W"),
            "{s}"
        );
    }

    /// The README promises these queries; keep the two lists the same.
    #[test]
    fn readme_lists_every_lab_query() {
        let readme = std::fs::read_to_string(crate::cmd::root().join("README.md")).unwrap();
        for q in super::QUERIES {
            assert!(readme.contains(&format!("$W {q}")), "README lacks `{q}`");
        }
    }
}
