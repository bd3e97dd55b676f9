//! Prometheus text exposition (format 0.0.4), the other wire format Wattson speaks: both
//! `wattson-agent run` and `wattson-collector serve` answer `GET /metrics` with it
//! (`--metrics-listen`), as Kepler and Scaphandre users expect.
//!
//! [`Text`] writes metric families (HELP and TYPE lines, then samples with escaped labels);
//! [`bind`] and [`serve`] answer scrapes with a minimal HTTP/1.1 responder on tokio, one
//! response per connection, which is all a Prometheus scrape needs. Each binary only says what
//! its families hold.

use std::fmt::{self, Display, Write as _};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// `Content-Type` of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// Metric type, as the TYPE line states it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (reset when the process restarts).
    Counter,
    /// Goes up and down.
    Gauge,
}

impl Kind {
    /// The name on the TYPE line.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

/// A sample's value: integers as they are, floats with the format's spelling of NaN and
/// infinities (Rust writes `inf`, which Prometheus rejects).
pub trait Value {
    /// Appends the value to `out`.
    fn write_to(&self, out: &mut String);
}

impl Value for u64 {
    fn write_to(&self, out: &mut String) {
        let _ = write!(out, "{self}");
    }
}

impl Value for f64 {
    fn write_to(&self, out: &mut String) {
        match *self {
            v if v.is_nan() => out.push_str("NaN"),
            f64::INFINITY => out.push_str("+Inf"),
            f64::NEG_INFINITY => out.push_str("-Inf"),
            v => {
                let _ = write!(out, "{v}");
            }
        }
    }
}

/// A label: name and value (any [`Display`], escaped as it is written).
pub type Label<'a> = (&'a str, &'a dyn Display);

/// An exposition being written.
#[derive(Debug, Default)]
pub struct Text {
    out: String,
}

impl Text {
    /// An empty exposition.
    pub fn new() -> Text {
        Text {
            out: String::with_capacity(4096),
        }
    }

    /// Starts the family `name` with its HELP and TYPE lines; add its samples to the result.
    pub fn family<'a>(&'a mut self, name: &'a str, kind: Kind, help: &str) -> Family<'a> {
        let out = &mut self.out;
        let _ = write!(out, "# HELP {name} ");
        let _ = write!(
            Escape {
                out: &mut *out,
                quote: false,
            },
            "{help}"
        );
        let _ = writeln!(out, "\n# TYPE {name} {}", kind.name());
        Family { out, name }
    }

    /// The text, ready to send.
    pub fn finish(self) -> String {
        self.out
    }
}

/// One family's samples, written after its HELP and TYPE lines.
#[derive(Debug)]
pub struct Family<'a> {
    out: &'a mut String,
    name: &'a str,
}

impl Family<'_> {
    /// Appends `name{labels} value` (`name value` without labels).
    pub fn sample(&mut self, labels: &[Label<'_>], value: impl Value) -> &mut Self {
        let out = &mut *self.out;
        out.push_str(self.name);
        for (i, (label, v)) in labels.iter().enumerate() {
            out.push_str(if i == 0 { "{" } else { "," });
            let _ = write!(out, "{label}=\"");
            let _ = write!(
                Escape {
                    out: &mut *out,
                    quote: true,
                },
                "{v}"
            );
            out.push('"');
        }
        if !labels.is_empty() {
            out.push('}');
        }
        out.push(' ');
        value.write_to(out);
        out.push('\n');
        self
    }
}

/// Writes through to `out` with the format's escapes: `\` and newline everywhere, `"` too in
/// label values (HELP text keeps its quotes).
struct Escape<'a> {
    out: &'a mut String,
    quote: bool,
}

impl fmt::Write for Escape<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            match c {
                '\\' => self.out.push_str("\\\\"),
                '\n' => self.out.push_str("\\n"),
                '"' if self.quote => self.out.push_str("\\\""),
                c => self.out.push(c),
            }
        }
        Ok(())
    }
}

/// The metrics listener could not be opened.
#[derive(Debug, thiserror::Error)]
#[error(
    "binding --metrics-listen {addr}: {source} (pick a free port, or an address of this host; \
     port 0 picks a free one)"
)]
pub struct BindError {
    /// The address asked for.
    pub addr: SocketAddr,
    /// Underlying error.
    #[source]
    pub source: std::io::Error,
}

/// Binds the metrics listener on `addr`.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { addr, source })
}

/// What one connection may take, so that no client holds its task (and socket) for long.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request head read; a longer one is answered 431.
    pub max_head: usize,
    /// How long a client may take to send its request head; a slower one is answered 408.
    pub head_timeout: Duration,
    /// How long a client may take to accept the response.
    pub write_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_head: 8192,
            head_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(10),
        }
    }
}

/// Serves `GET /metrics` on `listener` with [`Limits::default`] until the task is dropped:
/// the body is what `render` returns at each scrape.
pub async fn serve<F>(listener: TcpListener, render: F)
where
    F: Fn() -> String + Send + Sync + 'static,
{
    serve_with(listener, Limits::default(), render).await;
}

/// [`serve`] within `limits`.
pub async fn serve_with<F>(listener: TcpListener, limits: Limits, render: F)
where
    F: Fn() -> String + Send + Sync + 'static,
{
    let render = Arc::new(render);
    loop {
        let (sock, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors, typically: wait rather than spin.
                tracing::warn!(error = %e, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Each connection in its own task: a slow client delays no other scrape.
        tokio::spawn(answer(sock, peer, limits, render.clone()));
    }
}

/// How reading a request head ended.
enum Head {
    /// The blank line after the headers arrived.
    Complete,
    /// The client stopped sending first (answered from what it sent, as a scrape is only
    /// its request line).
    Closed,
    /// `max_head` bytes without the end of the head.
    TooLarge,
    /// Not all of it within `head_timeout`.
    TimedOut,
    /// The connection failed (reset): nobody to answer.
    Failed,
}

/// Reads one request head and answers it.
async fn answer<F>(mut sock: TcpStream, peer: SocketAddr, limits: Limits, render: Arc<F>)
where
    F: Fn() -> String + Send + Sync + 'static,
{
    let mut head = Vec::with_capacity(1024);
    let read = async {
        // The head may arrive in pieces.
        let mut chunk = [0u8; 1024];
        loop {
            // A bare LF ends lines too (RFC 9112 2.2), e.g. `nc` without `-C`.
            if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
                return Head::Complete;
            }
            let room = limits.max_head.saturating_sub(head.len()).min(chunk.len());
            if room == 0 {
                return Head::TooLarge;
            }
            match sock.read(&mut chunk[..room]).await {
                Ok(0) => return Head::Closed,
                Ok(n) => head.extend_from_slice(&chunk[..n]),
                Err(_) => return Head::Failed,
            }
        }
    };
    let outcome = tokio::time::timeout(limits.head_timeout, read)
        .await
        .unwrap_or(Head::TimedOut);
    let (status, body) = match outcome {
        Head::Complete | Head::Closed if is_scrape(&head) => {
            // Rendering may block (a lock held through an fsync, a database query): not on
            // the async workers.
            match tokio::task::spawn_blocking(move || (*render)()).await {
                Ok(body) => ("200 OK", body),
                Err(e) => {
                    tracing::warn!(error = %e, "metrics: rendering failed");
                    ("500 Internal Server Error", "rendering failed\n".to_owned())
                }
            }
        }
        Head::Complete | Head::Closed => ("404 Not Found", "try GET /metrics\n".to_owned()),
        Head::TooLarge => (
            "431 Request Header Fields Too Large",
            format!("request head over {} bytes\n", limits.max_head),
        ),
        Head::TimedOut => (
            "408 Request Timeout",
            "request head not received in time\n".to_owned(),
        ),
        Head::Failed => return,
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {CONTENT_TYPE}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    match tokio::time::timeout(limits.write_timeout, sock.write_all(response.as_bytes())).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "metrics: write failed"),
        Err(_) => tracing::debug!(%peer, "metrics: client too slow to take the response"),
    }
}

/// Whether the request line is `GET /metrics ...`.
fn is_scrape(head: &[u8]) -> bool {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let mut words = line
        .split(|b| b.is_ascii_whitespace())
        .filter(|w| !w.is_empty());
    words.next() == Some(&b"GET"[..]) && words.next() == Some(&b"/metrics"[..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_have_help_and_type_and_samples_their_labels() {
        let mut t = Text::new();
        t.family("a_total", Kind::Counter, "Things, by \"kind\".")
            .sample(&[], 7u64)
            .sample(&[("kind", &"x"), ("estimated", &true)], 3u64);
        t.family("b", Kind::Gauge, "A gauge.").sample(&[], 1.5);
        assert_eq!(
            t.finish(),
            "# HELP a_total Things, by \"kind\".\n# TYPE a_total counter\na_total 7\n\
             a_total{kind=\"x\",estimated=\"true\"} 3\n\
             # HELP b A gauge.\n# TYPE b gauge\nb 1.5\n"
        );
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        let mut t = Text::new();
        t.family("m", Kind::Gauge, "back\\slash\nnewline")
            .sample(&[("service", &"a\\b\"c\nd")], 1u64);
        assert_eq!(
            t.finish(),
            "# HELP m back\\\\slash\\nnewline\n# TYPE m gauge\nm{service=\"a\\\\b\\\"c\\nd\"} 1\n"
        );
    }

    #[test]
    fn floats_are_spelled_as_prometheus_reads_them() {
        let spell = |v: f64| {
            let mut s = String::new();
            v.write_to(&mut s);
            s
        };
        assert_eq!(spell(3.0), "3");
        assert_eq!(spell(0.25), "0.25");
        assert_eq!(spell(f64::NAN), "NaN");
        assert_eq!(spell(f64::INFINITY), "+Inf");
        assert_eq!(spell(f64::NEG_INFINITY), "-Inf");
    }

    #[test]
    fn only_get_metrics_is_a_scrape() {
        assert!(is_scrape(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert!(is_scrape(b"GET /metrics HTTP/1.0\n\n"));
        assert!(!is_scrape(b"GET /other HTTP/1.1\r\n\r\n"));
        assert!(!is_scrape(b"POST /metrics HTTP/1.1\r\n\r\n"));
        assert!(!is_scrape(b"GET /metricsX HTTP/1.1\r\n\r\n"));
        // Only the request line counts.
        assert!(!is_scrape(b"GET\r\n/metrics\r\n\r\n"));
        assert!(!is_scrape(b""));
    }

    /// A server on 127.0.0.1:0 within `limits`, rendering one fixed sample.
    async fn server(limits: Limits) -> SocketAddr {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve_with(listener, limits, || "m 1\n".to_owned()));
        addr
    }

    fn limits() -> Limits {
        Limits {
            max_head: 256,
            head_timeout: Duration::from_millis(300),
            write_timeout: Duration::from_secs(5),
        }
    }

    /// Sends `request` and returns (status line, body); the whole exchange within 5 s.
    async fn exchange(addr: SocketAddr, request: &[u8]) -> (String, String) {
        tokio::time::timeout(Duration::from_secs(5), async {
            let mut sock = TcpStream::connect(addr).await.unwrap();
            sock.write_all(request).await.unwrap();
            let mut response = String::new();
            sock.read_to_string(&mut response).await.unwrap();
            let (head, body) = response.split_once("\r\n\r\n").unwrap();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(length, body.len());
            assert!(head.contains(&format!("Content-Type: {CONTENT_TYPE}")));
            (head.lines().next().unwrap().to_owned(), body.to_owned())
        })
        .await
        .expect("no response within 5 s")
    }

    #[tokio::test]
    async fn metrics_are_served_and_other_paths_are_not_found() {
        let addr = server(limits()).await;
        let ok = exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(ok, ("HTTP/1.1 200 OK".to_owned(), "m 1\n".to_owned()));
        let other = exchange(addr, b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(other.0, "HTTP/1.1 404 Not Found");
        let post = exchange(addr, b"POST /metrics HTTP/1.1\r\n\r\n").await;
        assert_eq!(post.0, "HTTP/1.1 404 Not Found");
        // Bare LF line ends are answered at once, not after the head timeout.
        let started = std::time::Instant::now();
        let lf = exchange(addr, b"GET /metrics HTTP/1.0\n\n").await;
        assert_eq!(lf.0, "HTTP/1.1 200 OK");
        assert!(started.elapsed() < limits().head_timeout);
    }

    #[tokio::test]
    async fn an_oversized_head_is_refused_and_the_server_goes_on() {
        let addr = server(limits()).await;
        // Exactly the limit, no end of head: all of it is read, so closing does not reset
        // the connection under the response.
        let mut request = b"GET /metrics HTTP/1.1\r\nX-Pad: ".to_vec();
        request.resize(limits().max_head, b'a');
        let (status, _) = exchange(addr, &request).await;
        assert_eq!(status, "HTTP/1.1 431 Request Header Fields Too Large");
        let (status, _) = exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n").await;
        assert_eq!(status, "HTTP/1.1 200 OK");
    }

    #[tokio::test]
    async fn a_slow_client_times_out_without_holding_up_others() {
        let addr = server(limits()).await;
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET /metr").await.unwrap();
        // Served while the slow client still holds its connection open.
        let (status, _) = exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n").await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        let mut response = String::new();
        tokio::time::timeout(Duration::from_secs(5), slow.read_to_string(&mut response))
            .await
            .expect("the slow client was never answered")
            .unwrap();
        assert!(
            response.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
            "{response}"
        );
    }

    #[test]
    fn bind_names_the_flag_and_the_address() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let taken = rt.block_on(bind("127.0.0.1:0".parse().unwrap())).unwrap();
        let addr = taken.local_addr().unwrap();
        let err = rt.block_on(bind(addr)).unwrap_err();
        assert_eq!(err.addr, addr);
        assert!(
            err.to_string()
                .starts_with(&format!("binding --metrics-listen {addr}: ")),
            "{err}"
        );
    }
}
