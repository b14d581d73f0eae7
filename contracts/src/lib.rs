//! The contracts every Cellbus component shares and nothing else: the `Cell` and
//! `CellPool` resources, the wire envelopes and error codes, subject rules, the pool
//! assignment document and the rules a manifest must keep. No I/O happens here.
//!
//! The `kube` feature adds the Kubernetes objects (`Cell`, `CellPool` and their statuses)
//! for the operator; the runtime reads specs and assignments without it and so never
//! compiles k8s-openapi.

#![forbid(unsafe_code)]

pub mod assignment;
pub mod durable;
pub mod kv;
pub mod manifest;
pub mod quantity;
pub mod resources;
pub mod schemas;
pub mod status;
pub mod stream;
pub mod subject;
pub mod validate;
pub mod wire;

/// The WIT world a WebAssembly cell implements (`contracts/wit/cell.wit`).
pub const CELL_WIT: &str = include_str!("../wit/cell.wit");

/// An error and its causes on one line, `outer: cause: root cause`, as the command lines
/// print them.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
