//! The Cellbus operator: controllers for `Cell` and `CellPool`, the provisioners of the
//! resources cells need outside Kubernetes, and the generator of the CRDs and schemas.
//! The desired state comes from pure builders ([`builders`], [`conditions`]) that need no
//! cluster; `render` prints what they make of a set of manifests.

#![forbid(unsafe_code)]

// The test support names the crate as its integration tests do.
#[cfg(test)]
extern crate self as cellbus_operator;

pub mod assignments;
pub mod backoff;
pub mod builders;
pub mod children;
pub mod conditions;
pub mod config;
pub mod context;
pub mod controller;
pub mod crdgen;
pub mod database;
mod error;
pub mod http;
pub mod index;
pub mod leader;
pub mod metrics;
/// The mock API server of the controller tests, shared with the unit tests here.
#[cfg(test)]
#[allow(dead_code)]
#[path = "../tests/support/api.rs"]
mod mock_api;
pub mod names;
pub mod observed;
pub mod rbac;
pub mod readiness;
pub mod render;
pub mod run;
pub mod scheduling;

pub use config::Config;
pub use error::Error;
