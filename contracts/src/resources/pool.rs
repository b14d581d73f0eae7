//! `CellPool`: a set of runtime pods of one runtime on one OS, and the sandbox defaults
//! of the cells they run.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Os, Runtime, SandboxLimits};
use super::k8s::{ResourceRequirements, Toleration};
use super::TrustSpec;

/// A pool of Cellbus runtime pods of one runtime on one OS.
// Each `printcolumn(...)` repeats `type_`, which clippy takes for a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "kube", derive(kube::CustomResource))]
#[cfg_attr(
    feature = "kube",
    kube(
        group = "cellbus.io",
        version = "v1alpha1",
        kind = "CellPool",
        namespaced,
        status = "CellPoolStatus",
        shortname = "cpool",
        category = "cellbus",
        doc = "A pool of Cellbus runtime pods of one runtime on one OS that runs the Cells assigned to it.",
        scale(
            spec_replicas_path = ".spec.replicas",
            status_replicas_path = ".status.replicas",
            label_selector_path = ".status.selector"
        ),
        printcolumn(name = "Runtime", type_ = "string", json_path = ".spec.runtime"),
        printcolumn(name = "OS", type_ = "string", json_path = ".spec.os"),
        printcolumn(name = "Replicas", type_ = "integer", json_path = ".spec.replicas"),
        printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
        printcolumn(
            name = "Age",
            type_ = "date",
            json_path = ".metadata.creationTimestamp"
        )
    )
)]
#[serde(rename_all = "camelCase")]
pub struct CellPoolSpec {
    /// What runs the pool's cells: `wasm`, `process` or `python`.
    pub runtime: Runtime,
    /// OS of the pool's nodes. `windows` schedules onto Windows nodes and runs native cells
    /// in Job Objects.
    #[serde(default)]
    pub os: Os,
    /// Runtime pods; each serves every cell of the pool.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,
    /// Runtime image; defaults to the operator's image for the runtime and OS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,
    /// CPU and memory of each runtime pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Labels a node must have to run the pool's pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Taints the pool's pods tolerate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Defaults for each cell, and the most a cell may ask for.
    #[serde(default)]
    pub sandbox: SandboxLimits,
    /// The NATS the pool serves on; defaults to the operator's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nats: Option<NatsSpec>,
    /// Who may sign modules. When set, every cell must carry a signature that verifies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust: Option<TrustSpec>,
}

fn default_replicas() -> i32 {
    1
}

/// Where a pool's NATS is and how to log in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NatsSpec {
    /// Server URL, such as `nats://nats.nats.svc:4222` or `tls://…`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048), pattern(r"^(nats|tls|ws|wss)://[^\s]+$"))]
    pub url: Option<String>,
    /// Secret in this namespace with the credentials: `user` and `password`, `token`,
    /// `nkey` (a seed), `creds` (a creds file) and optionally `ca.crt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub credentials_secret: Option<String>,
}

#[cfg(feature = "kube")]
pub use status::{CellPoolStatus, PoolCells};

#[cfg(feature = "kube")]
mod status {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
    use schemars::JsonSchema;
    use serde::{Deserialize, Serialize};

    /// What the operator observed of a CellPool.
    #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
    #[serde(rename_all = "camelCase")]
    pub struct CellPoolStatus {
        /// The `metadata.generation` this status describes.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub observed_generation: Option<i64>,
        /// Runtime pods that exist.
        #[serde(default)]
        pub replicas: i32,
        /// Runtime pods that are ready.
        #[serde(default)]
        pub ready_replicas: i32,
        /// Label selector of the pool's pods, for the scale subresource.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub selector: Option<String>,
        /// The cells assigned to the pool.
        #[serde(default)]
        pub cells: PoolCells,
        /// Ready, Progressing and Degraded.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
        pub conditions: Vec<Condition>,
    }

    /// The cells assigned to a pool.
    #[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
    #[serde(rename_all = "camelCase")]
    pub struct PoolCells {
        /// How many.
        pub count: i32,
        /// Their names, sorted.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub names: Vec<String>,
    }
}
