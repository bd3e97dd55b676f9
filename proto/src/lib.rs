//! Wattson's wire format, package `wattson.v1`: the messages agents ship and the services the
//! collector serves, generated from `proto/wattson/v1/*.proto` with protox (no protoc needed).
