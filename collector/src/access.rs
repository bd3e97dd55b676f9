//! Who may call what: bearer tokens with scopes (`ingest`, `read`, `admin`), checked per
//! service, and the binding of a batch's host id to the mutual-TLS client certificate.
//!
//! Tokens are never compared as given: each is reduced to a 128-bit digest under a key drawn
//! at start, and digests are compared in constant time over every configured token, so
//! neither timing nor a token's length tells a caller how close a guess was.

use std::collections::BTreeSet;
use std::hash::BuildHasher as _;
use std::path::Path;
use std::sync::Arc;

use tonic::{Request, Status};

/// What a token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// Send batches (IngestService), record changes.
    Ingest,
    /// Queries, skills, detection reads, server reflection.
    Read,
    /// Everything, including recording changes.
    Admin,
}

impl Scope {
    fn parse(word: &str) -> Option<Vec<Scope>> {
        Some(match word {
            "ingest" => vec![Scope::Ingest],
            "read" => vec![Scope::Read],
            "admin" => vec![Scope::Admin],
            "all" => vec![Scope::Ingest, Scope::Read, Scope::Admin],
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Scope::Ingest => "ingest",
            Scope::Read => "read",
            Scope::Admin => "admin",
        }
    }
}

/// Errors reading a token file.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    /// The file could not be read.
    #[error("cannot read --token-file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A line is not `SCOPE TOKEN`.
    #[error(
        "--token-file {path} line {line}: {why} (expected `SCOPE TOKEN`, SCOPE one of ingest, read, admin, all)"
    )]
    Line {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        why: String,
    },
}

type Digest = [u64; 2];

/// The configured tokens, as keyed digests with their scopes. Empty: no authentication.
#[derive(Clone, Default)]
pub struct Tokens {
    keys: Arc<(
        std::collections::hash_map::RandomState,
        std::collections::hash_map::RandomState,
    )>,
    entries: Arc<Vec<(Digest, BTreeSet<Scope>)>>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the tokens, not even their digests.
        write!(f, "Tokens({} configured)", self.entries.len())
    }
}

impl Tokens {
    /// `all`: a token with every scope (`--token`); `file`: lines `SCOPE TOKEN`
    /// (`--token-file`; `#` starts a comment, a token may appear on several lines).
    pub fn new(all: Option<&str>, file: Option<&Path>) -> Result<Tokens, TokenFileError> {
        let mut t = Tokens::default();
        let mut entries = Vec::new();
        if let Some(token) = all {
            entries.push((t.digest(token), Scope::parse("all").unwrap_or_default()));
        }
        if let Some(path) = file {
            let shown = path.display().to_string();
            let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Read {
                path: shown.clone(),
                source,
            })?;
            for (i, line) in text.lines().enumerate() {
                let line = line.split('#').next().unwrap_or("").trim();
                if line.is_empty() {
                    continue;
                }
                let bad = |why: String| TokenFileError::Line {
                    path: shown.clone(),
                    line: i + 1,
                    why,
                };
                let mut words = line.split_whitespace();
                let (Some(scope), Some(token), None) = (words.next(), words.next(), words.next())
                else {
                    return Err(bad("not two words".into()));
                };
                let scopes =
                    Scope::parse(scope).ok_or_else(|| bad(format!("unknown scope {scope:?}")))?;
                entries.push((t.digest(token), scopes));
            }
        }
        // One entry per token, scopes merged.
        let mut merged: Vec<(Digest, BTreeSet<Scope>)> = Vec::new();
        for (d, scopes) in entries {
            match merged.iter_mut().find(|(m, _)| *m == d) {
                Some((_, s)) => s.extend(scopes),
                None => merged.push((d, scopes.into_iter().collect())),
            }
        }
        t.entries = Arc::new(merged);
        Ok(t)
    }

    /// True when no token is configured (every call is let through).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn digest(&self, token: &str) -> Digest {
        [
            self.keys.0.hash_one(token.as_bytes()),
            self.keys.1.hash_one(token.as_bytes()),
        ]
    }

    /// The scopes of `token`, looked up in constant time over every configured token.
    fn scopes(&self, token: &str) -> BTreeSet<Scope> {
        let d = self.digest(token);
        let mut found = BTreeSet::new();
        for (e, scopes) in self.entries.iter() {
            let diff = (e[0] ^ d[0]) | (e[1] ^ d[1]);
            // Visited whatever matched; only the merge depends on the result.
            if std::hint::black_box(diff) == 0 {
                found.extend(scopes.iter().copied());
            }
        }
        found
    }

    /// Checks the call's `authorization: Bearer TOKEN` for `scope` (admin allows all).
    pub fn check(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        scope: Scope,
    ) -> Result<(), Status> {
        if self.is_empty() {
            return Ok(());
        }
        let given = metadata
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let Some(token) = given else {
            return Err(Status::unauthenticated(
                "missing `authorization: Bearer TOKEN` (the collector runs with --token or --token-file)",
            ));
        };
        let scopes = self.scopes(token);
        if scopes.is_empty() {
            return Err(Status::unauthenticated("bearer token does not match"));
        }
        if scopes.contains(&scope) || scopes.contains(&Scope::Admin) {
            return Ok(());
        }
        let held: Vec<&str> = scopes.iter().map(|s| s.name()).collect();
        Err(Status::permission_denied(format!(
            "this call needs a token with scope {} (this token has {})",
            scope.name(),
            held.join(", ")
        )))
    }

    /// An interceptor admitting calls whose token has `scope`.
    pub fn require(&self, scope: Scope) -> Require {
        Require {
            tokens: self.clone(),
            scope,
        }
    }
}

/// A tonic interceptor for one service: [`Tokens::check`] with its scope.
#[derive(Clone)]
pub struct Require {
    tokens: Tokens,
    scope: Scope,
}

impl tonic::service::Interceptor for Require {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        self.tokens.check(request.metadata(), self.scope)?;
        Ok(request)
    }
}

/// The names a client certificate (DER) vouches for: its subject's common names and its DNS
/// and IP subject alternative names.
pub fn certificate_names(der: &[u8]) -> Vec<String> {
    use x509_parser::prelude::*;
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return Vec::new();
    };
    let mut names: Vec<String> = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_string))
        .collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(d) => names.push(d.to_string()),
                GeneralName::IPAddress(ip) => match ip.len() {
                    4 => names.push(
                        std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*ip).unwrap_or_default())
                            .to_string(),
                    ),
                    16 => names.push(
                        std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*ip).unwrap_or_default())
                            .to_string(),
                    ),
                    _ => {}
                },
                _ => {}
            }
        }
    }
    names
}

/// With mutual TLS, a batch's host id must be one of the names of the client's certificate:
/// otherwise any agent could write as any host (and pre-empt its sequence numbers).
pub fn check_host(
    peer_certs: Option<&[tonic::transport::CertificateDer<'static>]>,
    host_id: &str,
) -> Result<(), Status> {
    let Some(leaf) = peer_certs.and_then(|c| c.first()) else {
        return Ok(());
    };
    let names = certificate_names(leaf);
    if names.iter().any(|n| n == host_id) {
        return Ok(());
    }
    Err(Status::permission_denied(format!(
        "the batch's host_id {host_id:?} is not a name of the client certificate ({}); issue the agent a certificate whose CN or SAN is its host id",
        if names.is_empty() {
            "none found".to_string()
        } else {
            names.join(", ")
        }
    )))
}
