//! The Cellbus operator: controllers for `Cell` and `CellPool`, the provisioners of the
//! resources cells need outside Kubernetes, and the generator of the CRDs and schemas.
//!
//! Pure parts, tested without a cluster: [`state`] (what the watches show, indexed, and
//! what follows from it: placement, conditions, names) and [`builders`] (every object the
//! operator makes). I/O: [`controller`] (the reconcilers and what they write to the API,
//! NATS and PostgreSQL), [`run`] (the watches feeding them), [`leader`], [`http`]. `render`
//! prints what the builders make of a set of manifests.

#![forbid(unsafe_code)]

// The test support names the crate as its integration tests do.
#[cfg(test)]
extern crate self as cellbus_operator;

pub mod builders;
pub mod config;
pub mod controller;
pub mod crdgen;
mod error;
pub mod http;
pub mod leader;
pub mod metrics;
/// The mock API server of the controller tests, shared with the unit tests here.
#[cfg(test)]
#[allow(dead_code)]
#[path = "../tests/support/api.rs"]
mod mock_api;
pub mod rbac;
pub mod render;
pub mod run;
pub mod state;

pub use config::Config;
pub use error::Error;
