//! The Kubernetes resources of group `cellbus.io`, version `v1alpha1`. Specs are plain
//! types everyone reads; the `Cell` and `CellPool` objects and their statuses exist with
//! the `kube` feature.

mod cell;
mod common;
mod pool;
pub(crate) mod schema;
mod signature;

pub use cell::*;
pub use common::*;
pub use pool::*;
pub use signature::*;

pub const GROUP: &str = "cellbus.io";
pub const VERSION: &str = "v1alpha1";
pub const API_VERSION: &str = "cellbus.io/v1alpha1";

/// Kubernetes types a pool spec carries through to its pods. Without the `kube` feature
/// they are kept as plain JSON, which is all a runtime reading a manifest needs of them.
pub mod k8s {
    #[cfg(feature = "kube")]
    pub use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
    #[cfg(not(feature = "kube"))]
    pub type ResourceRequirements = serde_json::Value;
    #[cfg(not(feature = "kube"))]
    pub type Toleration = serde_json::Value;
}

/// Condition types on Cell and CellPool status (`meta/v1` Conditions).
pub mod condition {
    pub const READY: &str = "Ready";
    pub const SCHEDULED: &str = "Scheduled";
    pub const MODULE_VERIFIED: &str = "ModuleVerified";
    pub const STREAM_READY: &str = "StreamReady";
    pub const DATABASE_READY: &str = "DatabaseReady";
    pub const PROGRESSING: &str = "Progressing";
    pub const DEGRADED: &str = "Degraded";
    /// Process pools: whether every pod's kernel holds process cells to all the sandbox
    /// asks of it (Landlock).
    pub const SANDBOX_ENFORCED: &str = "SandboxEnforced";
    /// Pools whose trust names ConfigMaps or Secrets: whether the operator read them.
    pub const TRUST_RESOLVED: &str = "TrustResolved";
}
