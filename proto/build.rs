//! Compiles `proto/wattson/v1/*.proto` with protox (pure Rust, no protoc) into prost messages and
//! tonic services, and writes the encoded file descriptor set for server reflection.
use std::path::PathBuf;

use prost::Message as _;

const PROTOS: &[&str] = &[
    "wattson/v1/profile.proto",
    "wattson/v1/ingest.proto",
    "wattson/v1/query.proto",
    "wattson/v1/detection.proto",
    "wattson/v1/skills.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("proto");
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    println!("cargo:rerun-if-changed={}", root.display());
    let fds = protox::compile(PROTOS, [&root])?;
    std::fs::write(out.join("wattson_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .codec_path("crate::codec::Codec")
        // A whole Batch inline would make every IngestRequest as large as one.
        .boxed(".wattson.v1.IngestRequest.payload.batch")
        // Answers of the query, detection and skills services serialize to JSON as they are,
        // for `--json` and MCP, so there is one shape for every consumer.
        .type_attribute(".wattson.v1", "#[derive(serde::Serialize)]")
        .compile_fds(fds)?;
    Ok(())
}
