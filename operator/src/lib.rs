//! The Cellbus operator: controllers for `Cell` and `CellPool`, the provisioners of the
//! resources cells need outside Kubernetes, and the generator of the CRDs and schemas.

#![forbid(unsafe_code)]

pub mod crdgen;
