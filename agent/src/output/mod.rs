//! Profile outputs: Brendan Gregg's folded stacks, pprof (gzipped profile.proto) and JSON.
//! Each format is a pure function of a [`Profile`]; writing to a file lives in `record`.

pub mod folded;
pub mod json;
pub mod pprof;

use crate::profile::{Profile, Weight};

/// Output file formats of `wattson-agent record`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// gzipped profile.proto, for `go tool pprof`, Pyroscope, Parca, speedscope.
    Pprof,
    /// `frame;frame;frame count` lines, for inferno / flamegraph.pl.
    Folded,
    /// The interval profile model as JSON.
    Json,
}

impl Format {
    /// Guesses the format from a file name (`.folded`/`.txt`, `.json`, else pprof).
    pub fn from_path(path: &std::path::Path) -> Self {
        match path.extension().and_then(|e| e.to_str()) {
            Some("folded" | "txt" | "collapsed") => Self::Folded,
            Some("json") => Self::Json,
            _ => Self::Pprof,
        }
    }
}

/// Errors while encoding a profile.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// Compressing or serializing failed.
    #[error("encoding the profile: {0}")]
    Encode(#[from] std::io::Error),
    /// JSON serialization failed.
    #[error("encoding the profile as JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// Encodes `profile` in `format`; `weight` applies to folded output (pprof carries every
/// weight as its own sample type, JSON carries the raw counts).
pub fn encode(profile: &Profile, format: Format, weight: Weight) -> Result<Vec<u8>, OutputError> {
    Ok(match format {
        Format::Folded => folded::render(profile, weight).into_bytes(),
        Format::Pprof => pprof::encode_gzip(profile)?,
        Format::Json => json::render(profile)?,
    })
}
