//! The pool assignment: the document the operator (or `cellbus up`) writes to the KV
//! bucket `cbs-assignments` under `{namespace}.{pool}` and every runtime pod of the pool
//! watches. It holds everything a pod needs to load and serve the pool's cells, already
//! resolved against the pool, so the runtime never reads Kubernetes.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::resources::{
    Capabilities, CellPoolSpec, CellSpec, EnvVar, ModuleSpec, Os, Runtime, SandboxLimits, VerbSpec,
};
use crate::subject::{self, SubjectError};

/// JetStream KV bucket of pool assignments.
pub const ASSIGNMENTS_BUCKET: &str = "cbs-assignments";
/// JetStream object store bucket of modules, named by digest.
pub const MODULES_BUCKET: &str = "cbs-modules";

/// The Secret holding the database credentials of the Cell `cell`.
pub fn database_secret_name(cell: &str) -> String {
    format!("{cell}-db")
}

/// The KV key of a pool's assignment.
pub fn assignment_key(namespace: &str, pool: &str) -> String {
    format!("{namespace}.{pool}")
}

/// All cells one pool serves.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolAssignment {
    /// Namespace of the pool and its cells.
    pub namespace: String,
    /// Name of the CellPool.
    pub pool: String,
    /// The pool's runtime.
    pub runtime: Runtime,
    /// The pool's OS.
    pub os: Os,
    /// Keys allowed to sign modules; empty means signatures are not checked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_keys: Vec<String>,
    /// The cells, ordered by service so the same set always serializes the same.
    pub cells: Vec<AssignedCell>,
}

/// One cell as a runtime pod loads it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AssignedCell {
    /// Name of the Cell object.
    pub name: String,
    /// Service the cell answers on.
    pub service: String,
    /// Its verbs.
    pub verbs: Vec<VerbSpec>,
    /// Its module.
    pub module: ModuleSpec,
    /// Signature over the module digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// The limits it runs with: the cell's own over the pool's defaults.
    pub limits: SandboxLimits,
    /// The stream of its durable verbs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// Environment variables.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// What it may use.
    pub capabilities: Capabilities,
    /// Name of the Secret with its database credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_secret: Option<String>,
}

impl PoolAssignment {
    /// The assignment of `cells` (name and spec) to the pool `pool`. Cells are expected to
    /// have passed [`crate::validate`] against the pool.
    pub fn new<'a>(
        namespace: &str,
        pool: &str,
        pool_spec: &CellPoolSpec,
        cells: impl IntoIterator<Item = (&'a str, &'a CellSpec)>,
    ) -> Result<Self, SubjectError> {
        let mut cells = cells
            .into_iter()
            .map(|(name, spec)| AssignedCell::new(name, spec, &pool_spec.sandbox))
            .collect::<Result<Vec<_>, _>>()?;
        cells.sort_by(|a, b| (&a.service, &a.name).cmp(&(&b.service, &b.name)));
        Ok(Self {
            namespace: namespace.into(),
            pool: pool.into(),
            runtime: pool_spec.runtime,
            os: pool_spec.os,
            trusted_keys: pool_spec
                .trust
                .as_ref()
                .map(|t| t.keys.clone())
                .unwrap_or_default(),
            cells,
        })
    }

    /// The KV key this assignment is stored under.
    pub fn key(&self) -> String {
        assignment_key(&self.namespace, &self.pool)
    }
}

impl AssignedCell {
    fn new(name: &str, spec: &CellSpec, pool: &SandboxLimits) -> Result<Self, SubjectError> {
        Ok(Self {
            name: name.into(),
            service: spec.service.clone(),
            verbs: spec.verbs.clone(),
            module: spec.module.clone(),
            signature: spec.signature.clone(),
            limits: spec.limits.clone().unwrap_or_default().over(pool),
            stream: spec
                .has_durable_verbs()
                .then(|| subject::stream_name(&spec.service))
                .transpose()?,
            env: spec.env.clone(),
            capabilities: spec.capabilities.clone(),
            database_secret: spec.database.as_ref().map(|_| database_secret_name(name)),
        })
    }
}
