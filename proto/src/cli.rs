//! What the three binaries' `main`s share: logs to stderr filtered by `RUST_LOG`, and a failure
//! printed as one line with its causes (`error: a: b: c`), never as a backtrace: errors are
//! meant for the operator, and a `RUST_BACKTRACE` left set in the environment would bury them.

use std::error::Error;
use std::process::ExitCode;

/// Sends `tracing` to stderr at `RUST_LOG`, else at `default` (e.g. `info`).
pub fn init_logging(default: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default.into()),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// The exit code of `main`'s outcome, printing a failure as `error: a: b: c`.
pub fn exit<E: Into<Box<dyn Error + Send + Sync>>>(outcome: Result<(), E>) -> ExitCode {
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&*e.into()));
            ExitCode::FAILURE
        }
    }
}

/// `e` and its sources joined by `: `. A source whose text already ends the line is skipped:
/// many errors also print their source in their own message.
fn one_line(e: &(dyn Error + 'static)) -> String {
    let mut line = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !line.ends_with(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = s.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("opening --store sqlite://x")]
    struct Outer(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("spool /x: creating: {0}")]
    struct SaysItsSource(#[source] std::io::Error);

    #[test]
    fn causes_join_on_one_line_once_each() {
        let e = Outer(std::io::Error::other("disk full"));
        assert_eq!(one_line(&e), "opening --store sqlite://x: disk full");
        let e = SaysItsSource(std::io::Error::other("no such file"));
        assert_eq!(one_line(&e), "spool /x: creating: no such file");
    }
}
