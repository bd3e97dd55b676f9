//! How `wattson` reaches a collector: plain `http://`, or mutual TLS with the flags and PEM
//! files the collector's `serve` and the agent's `run` take (`--tls-ca`, `--tls-cert`,
//! `--tls-key`: all three or none). Every failure names the flag and file at fault. Also the
//! query client every command uses (bearer token, answer size cap) and how its errors read.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use wattson_proto::v1::detection_service_client::DetectionServiceClient;
use wattson_proto::v1::query_service_client::QueryServiceClient;

/// Largest answer accepted from the collector.
const MAX_RESPONSE_BYTES: usize = 512 << 20;

/// The query client the commands share.
pub type Client = QueryServiceClient<InterceptedService<Channel, Auth>>;

/// The detection client (`changes`, `regressions`), on the same connection.
pub type Detection = DetectionServiceClient<InterceptedService<Channel, Auth>>;

/// Puts `authorization: Bearer TOKEN` on every call when `--token` is given.
#[derive(Clone)]
pub struct Auth(Option<MetadataValue<Ascii>>);

impl Interceptor for Auth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(h) = &self.0 {
            req.metadata_mut().insert("authorization", h.clone());
        }
        Ok(req)
    }
}

/// Mutual-TLS files of the CLI (PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    /// CA the collector's certificate must chain to (`--tls-ca`).
    pub ca: PathBuf,
    /// Client certificate (`--tls-cert`).
    pub cert: PathBuf,
    /// Client private key (`--tls-key`).
    pub key: PathBuf,
}

impl Tls {
    /// From the three optional flags: all or none.
    pub fn from_flags(
        ca: Option<PathBuf>,
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
    ) -> anyhow::Result<Option<Tls>> {
        match (ca, cert, key) {
            (None, None, None) => Ok(None),
            (Some(ca), Some(cert), Some(key)) => Ok(Some(Tls { ca, cert, key })),
            (ca, cert, key) => {
                let missing: Vec<&str> = [
                    ("--tls-ca", ca.is_none()),
                    ("--tls-cert", cert.is_none()),
                    ("--tls-key", key.is_none()),
                ]
                .into_iter()
                .filter_map(|(flag, absent)| absent.then_some(flag))
                .collect();
                bail!(
                    "mutual TLS needs all of --tls-ca, --tls-cert and --tls-key (or none); \
                     missing {}",
                    missing.join(" and ")
                )
            }
        }
    }
}

/// Reads a PEM file named by `flag`, refusing what is plainly not PEM (tonic would only say
/// "handshake failed" later, without naming the file).
fn pem(flag: &str, path: &Path) -> anyhow::Result<Vec<u8>> {
    let data = std::fs::read(path)
        .with_context(|| format!("cannot read {flag} file {}", path.display()))?;
    if !data.windows(11).any(|w| w == b"-----BEGIN ") {
        bail!(
            "{flag} file {} is not PEM (no \"-----BEGIN\" line); give the PEM file the \
             collector's --tls-ca/--tls-cert/--tls-key use",
            path.display()
        );
    }
    Ok(data)
}

/// The URL to dial: `http://` as given, or `https://` with TLS (an `http://` URL is upgraded
/// when the TLS flags are given, as the agent does).
fn url(collector: &str, tls: bool) -> anyhow::Result<String> {
    let bad = |why: &str| anyhow::anyhow!("--collector {collector}: {why}");
    let scheme = collector.split_once("://").map(|(s, _)| s);
    match (scheme, tls) {
        (Some("http"), false) | (Some("https"), true) => Ok(collector.to_string()),
        (Some("http"), true) => Ok(collector.replacen("http://", "https://", 1)),
        (Some("https"), false) => Err(bad(
            "https needs --tls-ca, --tls-cert and --tls-key (the collector requires a client \
             certificate)",
        )),
        _ => Err(bad("expected http://HOST:PORT or https://HOST:PORT")),
    }
}

/// Connects to the collector (plain or mutual TLS).
pub async fn channel(collector: &str, tls: Option<&Tls>) -> anyhow::Result<Channel> {
    let url = url(collector, tls.is_some())?;
    let mut endpoint = Endpoint::from_shared(url.clone())
        .with_context(|| format!("--collector {collector}: not a valid URL"))?;
    if let Some(t) = tls {
        // The collector's certificate must name the host as dialled (DNS name or IP SAN).
        let host = endpoint.uri().host().unwrap_or("localhost").to_owned();
        let config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(pem("--tls-ca", &t.ca)?))
            .identity(Identity::from_pem(
                pem("--tls-cert", &t.cert)?,
                pem("--tls-key", &t.key)?,
            ))
            .domain_name(host);
        endpoint = endpoint
            .tls_config(config)
            .context("TLS configuration (--tls-ca, --tls-cert, --tls-key)")?;
    }
    endpoint.connect().await.with_context(|| {
        let hint = if tls.is_some() {
            " over mutual TLS: is it serving TLS, does its certificate chain to --tls-ca and \
             name this host, and does it accept --tls-cert's CA?"
        } else {
            ""
        };
        format!("connecting to collector {url} (--collector){hint}")
    })
}

/// Connects (see [`channel`]) and wraps the channel in the query and detection clients,
/// with `token`.
pub async fn client(
    collector: &str,
    tls: Option<&Tls>,
    token: Option<&str>,
) -> anyhow::Result<(Client, Detection)> {
    let channel = channel(collector, tls).await?;
    let header = match token {
        Some(t) => Some(
            format!("Bearer {t}")
                .parse()
                .context("--token has characters not allowed in a header")?,
        ),
        None => None,
    };
    let auth = Auth(header);
    // Merged stacks of a busy fleet run to tens of MB; tonic's default cap is 4 MB.
    Ok((
        QueryServiceClient::with_interceptor(channel.clone(), auth.clone())
            .max_decoding_message_size(MAX_RESPONSE_BYTES),
        DetectionServiceClient::with_interceptor(channel, auth)
            .max_decoding_message_size(MAX_RESPONSE_BYTES),
    ))
}

/// A failed call as one line: the collector's message and the gRPC code.
pub fn status(e: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{} ({:?})", e.message(), e.code())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_flags_are_all_or_none_and_errors_name_the_missing_ones() {
        let p = |s: &str| Some(PathBuf::from(s));
        assert_eq!(Tls::from_flags(None, None, None).unwrap(), None);
        assert!(Tls::from_flags(p("ca"), p("c"), p("k")).unwrap().is_some());
        let e = Tls::from_flags(p("ca"), None, p("k"))
            .unwrap_err()
            .to_string();
        assert!(e.ends_with("missing --tls-cert"), "{e}");
        let e = Tls::from_flags(None, None, p("k")).unwrap_err().to_string();
        assert!(e.ends_with("missing --tls-ca and --tls-cert"), "{e}");
    }

    #[test]
    fn urls_upgrade_to_https_with_tls_and_https_needs_the_flags() {
        assert_eq!(url("http://h:7070", false).unwrap(), "http://h:7070");
        assert_eq!(url("http://h:7070", true).unwrap(), "https://h:7070");
        assert_eq!(url("https://h:7070", true).unwrap(), "https://h:7070");
        let e = url("https://h:7070", false).unwrap_err().to_string();
        assert!(e.contains("--tls-ca, --tls-cert and --tls-key"), "{e}");
        assert!(url("h:7070", false).is_err());
    }

    #[test]
    fn unreadable_or_non_pem_files_name_the_flag_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let e = format!("{:#}", pem("--tls-key", &missing).unwrap_err());
        assert!(e.contains("--tls-key") && e.contains("nope.pem"), "{e}");
        let der = dir.path().join("cert.der");
        std::fs::write(&der, [0x30, 0x82, 0x01, 0x0a]).unwrap();
        let e = pem("--tls-cert", &der).unwrap_err().to_string();
        assert!(e.contains("--tls-cert") && e.contains("not PEM"), "{e}");
        let ok = dir.path().join("ca.pem");
        std::fs::write(&ok, "-----BEGIN CERTIFICATE-----\nAA==\n").unwrap();
        assert!(pem("--tls-ca", &ok).is_ok());
    }
}
