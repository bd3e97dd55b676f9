//! Wattson's wire format, package `wattson.v1`: the messages agents ship and the services the
//! collector serves, generated from `proto/wattson/v1/*.proto` with protox (no protoc needed).
//!
//! [`v1`] holds the generated types; [`FILE_DESCRIPTOR_SET`] is the encoded descriptor set that
//! the collector hands to tonic-reflection so `grpcurl` can discover the services.
//! [`exposition`] is the Prometheus text format and `/metrics` responder that the agent and the
//! collector both serve. [`cli`] is what the binaries' `main`s share. [`compressed`] builds
//! and reads the zstd frames agents send batches in.

pub mod cli;
pub mod codec;
pub mod compressed;
pub mod exposition;
pub mod synthetic;
pub mod view;

/// Package `wattson.v1`.
pub mod v1 {
    tonic::include_proto!("wattson.v1");
}

/// Longest string a batch may carry, bytes: the collector refuses a batch holding a longer one
/// (its default `max_string_bytes`), and the agent truncates below it so one process's huge
/// command line or symbol never costs the host its whole batch.
pub const MAX_STRING_BYTES: usize = 64 << 10;

/// Encoded `google.protobuf.FileDescriptorSet` of every `wattson.v1` file (with imports).
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("wattson_descriptor");
