//! What the three binaries' `main`s share: logs to stderr filtered by `RUST_LOG`, and a failure
//! printed as one line with its causes (`error: a: b: c`), never as a backtrace: errors are
//! meant for the operator, and a `RUST_BACKTRACE` left set in the environment would bury them.
//! Plus the warning all three give before sending a token in clear text.

use std::error::Error;
use std::process::ExitCode;

/// The warning to log when a bearer token is about to travel in clear text: an `http://` URL
/// to a host that is not loopback. `None` for https, loopback, or a URL without a host.
pub fn token_in_clear(url: &str) -> Option<String> {
    let rest = url.strip_prefix("http://")?;
    let authority = rest.split('/').next().unwrap_or(rest);
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    (!host.is_empty() && !loopback).then(|| {
        format!(
            "the bearer token goes to {host} over plain http: anyone on the path can read and reuse it (use https with --tls-ca/--tls-cert/--tls-key)"
        )
    })
}

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

    #[test]
    fn a_token_in_clear_is_flagged_unless_https_or_loopback() {
        assert!(
            token_in_clear("http://10.0.0.5:7070")
                .unwrap()
                .contains("10.0.0.5")
        );
        assert!(token_in_clear("http://collector.example/").is_some());
        for quiet in [
            "https://10.0.0.5:7070",
            "http://127.0.0.1:7070",
            "http://localhost:7070",
            "http://[::1]:7070",
        ] {
            assert_eq!(token_in_clear(quiet), None, "{quiet}");
        }
    }
}
