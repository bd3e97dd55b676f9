//! Arguments more than one command takes: the time window (`--from`/`--to`, and the same
//! syntax in `diff --baseline`) and the weight of flame graphs and diffs, with their
//! conversion to what the query service and the flame module take.

use anyhow::Context as _;
use clap::ValueEnum;
use wattson_collector::flame::Weight;
use wattson_collector::report;
use wattson_proto::v1::TimeWindow;

/// A time window. Times are `now`, `-2h` / `2h` (ago), Unix seconds, or RFC 3339.
#[derive(clap::Args, Debug, Clone)]
pub struct WindowArgs {
    /// Start of the window.
    #[arg(long, default_value = "-1h", allow_hyphen_values = true)]
    from: String,
    /// End of the window.
    #[arg(long, default_value = "now", allow_hyphen_values = true)]
    to: String,
}

impl WindowArgs {
    /// The window asked for, relative times taken from now.
    pub fn window(&self) -> anyhow::Result<TimeWindow> {
        time_window(&self.from, &self.to, "--from", "--to")
    }
}

/// The window from `from` to `to`; errors name the argument at fault (`from_arg`, `to_arg`).
pub fn time_window(
    from: &str,
    to: &str,
    from_arg: &'static str,
    to_arg: &'static str,
) -> anyhow::Result<TimeWindow> {
    let now = report::now();
    Ok(TimeWindow {
        from_unix_seconds: report::parse_time(from, now).context(from_arg)?,
        to_unix_seconds: report::parse_time(to, now).context(to_arg)?,
    })
}

/// `--as-of` as the wire has it: Unix seconds, 0 when not given (now).
pub fn as_of(t: Option<&str>) -> anyhow::Result<i64> {
    t.map_or(Ok(0), |t| {
        report::parse_time(t, report::now()).context("--as-of")
    })
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightArg {
    /// Widths by samples (CPU time).
    Samples,
    /// Widths by attributed microjoules.
    Energy,
}

impl From<WeightArg> for Weight {
    fn from(w: WeightArg) -> Weight {
        match w {
            WeightArg::Samples => Weight::Samples,
            WeightArg::Energy => Weight::Energy,
        }
    }
}
