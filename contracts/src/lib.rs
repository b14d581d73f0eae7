//! The contracts every Cellbus component shares and nothing else: the `Cell` and
//! `CellPool` resources, the wire envelopes and error codes, subject rules, the pool
//! assignment document and the rules a manifest must keep. No I/O happens here.
//!
//! The `kube` feature adds the Kubernetes objects (`Cell`, `CellPool` and their statuses)
//! for the operator; the runtime reads specs and assignments without it and so never
//! compiles k8s-openapi.

#![forbid(unsafe_code)]

pub mod assignment;
pub mod manifest;
pub mod quantity;
pub mod resources;
pub mod schemas;
pub mod subject;
pub mod validate;
pub mod wire;

/// The WIT world a WebAssembly cell implements (`contracts/wit/cell.wit`).
pub const CELL_WIT: &str = include_str!("../wit/cell.wit");
