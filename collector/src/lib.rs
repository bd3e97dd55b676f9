//! Wattson's collector as a library: ingest, storage, fleet attribution, queries, regression detection and change events. The
//! `wattson-collector` and `wattson` binaries are thin edges over it.

pub mod attribute;
pub mod changes;
pub mod detect;
pub mod detection;
pub mod flame;
pub mod ingest_cpu;
pub mod ingest_endpoint;
pub mod ingest_summary;
pub mod metrics;
pub mod pprof;
pub mod query;
pub mod query_service;
pub mod report;
pub mod retention;
pub mod server;
pub mod store;
pub mod validate;
