//! The pool assignment: the document the operator (or `cellbus up`) writes to the KV
//! bucket `cbs-assignments` under `{namespace}.{pool}` and every runtime pod of the pool
//! watches. It holds everything a pod needs to load and serve the pool's cells, already
//! resolved against the pool, so the runtime never reads Kubernetes.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::resources::{
    Capabilities, CellPoolSpec, CellSpec, DatabaseSpec, EnvVar, ModuleSignature, ModuleSpec, Os,
    Runtime, SandboxLimits, TrustSpec, VerbSpec,
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

/// Connections one pod opens at most for one cell's database.
pub const MAX_DATABASE_CONNECTIONS_PER_POD: u32 = 4;

/// Connections each of `replicas` pods opens at most for a cell with `spec`: the role's
/// connection limit shared among them, from 1 to [`MAX_DATABASE_CONNECTIONS_PER_POD`].
/// Pods opening more than the role may hold would have connections refused under load.
pub fn database_connections_per_pod(spec: &DatabaseSpec, replicas: i32) -> u32 {
    let pods = u32::try_from(replicas).unwrap_or(0).max(1);
    (spec.role_connection_limit() / pods).clamp(1, MAX_DATABASE_CONNECTIONS_PER_POD)
}

/// The KV key of a pool's assignment: `{namespace}.{pool}`, each name a
/// [`crate::kv::key_token`], so no two pools share a key.
pub fn assignment_key(namespace: &str, pool: &str) -> String {
    crate::kv::key(&[namespace, pool])
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
    /// Who may sign the pool's modules; without it, signatures are not checked. The
    /// pods verify every cell against it again before loading it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust: Option<TrustSpec>,
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
    /// The module's signature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<ModuleSignature>,
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
    /// Its database, when the Cell has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<AssignedDatabase>,
}

/// How a pod reaches a cell's database.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AssignedDatabase {
    /// Name of the Secret with its credentials, in the pool's namespace.
    pub secret: String,
    /// Connections each pod opens at most (see [`database_connections_per_pod`]).
    pub connections: u32,
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
            .map(|(name, spec)| AssignedCell::new(name, spec, pool_spec))
            .collect::<Result<Vec<_>, _>>()?;
        cells.sort_by(|a, b| (&a.service, &a.name).cmp(&(&b.service, &b.name)));
        Ok(Self {
            namespace: namespace.into(),
            pool: pool.into(),
            runtime: pool_spec.runtime,
            os: pool_spec.os,
            trust: pool_spec.trust.clone(),
            cells,
        })
    }

    /// The KV key this assignment is stored under.
    pub fn key(&self) -> String {
        assignment_key(&self.namespace, &self.pool)
    }
}

impl AssignedCell {
    fn new(name: &str, spec: &CellSpec, pool: &CellPoolSpec) -> Result<Self, SubjectError> {
        Ok(Self {
            name: name.into(),
            service: spec.service.clone(),
            verbs: spec.verbs.clone(),
            module: spec.module.clone(),
            signature: spec.signature.clone(),
            limits: spec.limits.clone().unwrap_or_default().over(&pool.sandbox),
            stream: spec
                .has_durable_verbs()
                .then(|| subject::stream_name(&spec.service))
                .transpose()?,
            env: spec.env.clone(),
            capabilities: spec.capabilities.clone(),
            database: spec.database.as_ref().map(|database| AssignedDatabase {
                secret: database_secret_name(name),
                connections: database_connections_per_pod(database, pool.replicas),
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case::default_limit_one_pod(None, 1, 4)]
    #[case::default_limit_two_pods(None, 2, 2)]
    #[case::default_limit_more_pods_than_connections(None, 8, 1)]
    #[case::large_limit_capped(Some(100), 3, 4)]
    #[case::limit_shared_evenly(Some(9), 3, 3)]
    #[case::limit_rounded_down(Some(7), 2, 3)]
    #[case::no_pods_counts_as_one(Some(3), 0, 3)]
    #[case::negative_replicas_count_as_one(Some(2), -1, 2)]
    fn a_roles_connections_are_shared_among_the_pools_pods(
        #[case] limit: Option<u32>,
        #[case] replicas: i32,
        #[case] expected: u32,
    ) {
        let spec: DatabaseSpec =
            serde_json::from_value(serde_json::json!({ "connectionLimit": limit })).unwrap();
        assert_eq!(database_connections_per_pod(&spec, replicas), expected);
    }
}
