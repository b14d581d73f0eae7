//! Pure builders of the desired state: what a CellPool needs in Kubernetes (ServiceAccount,
//! Deployment, Service, PodDisruptionBudget) and what a Cell needs in NATS (its stream
//! plan). No I/O and no clock: a reconciler reads, calls these and applies the result, and
//! tests call them with plain values.

mod pool;
mod stream;

pub use pool::*;
pub use stream::*;

#[cfg(test)]
pub(crate) mod fixtures;
