//! Cells and CellPools as the operator reads them from the API: untyped objects judged
//! with the same schema and rules as `cellbus check`. A typed watch fails as a whole when
//! one object does not deserialize (a spec an older CRD let through, a hand edit with the
//! schema off); read this way, that object alone ends as field errors in a condition.

use cellbus_contracts::manifest;
use cellbus_contracts::resources::{
    Cell, CellPool, CellPoolSpec, CellPoolStatus, CellSpec, CellStatus,
};
use cellbus_contracts::validate::FieldError;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::{ApiResource, DynamicObject};
use serde::de::DeserializeOwned;
use serde_json::Value;

/// The API resource of `Cell`, for untyped clients and watches.
pub fn cell_resource() -> ApiResource {
    ApiResource::erase::<Cell>(&())
}

/// The API resource of `CellPool`.
pub fn pool_resource() -> ApiResource {
    ApiResource::erase::<CellPool>(&())
}

/// An object's metadata and spec judged, its status as last written.
#[derive(Clone, Debug)]
pub struct Observed<S, T> {
    pub meta: ObjectMeta,
    /// The spec, or every rule it breaks, each naming its field.
    pub spec: Result<S, Vec<FieldError>>,
    pub status: T,
}

/// A Cell as read from the API.
pub type ObservedCell = Observed<CellSpec, CellStatus>;
/// A CellPool as read from the API.
pub type ObservedPool = Observed<CellPoolSpec, CellPoolStatus>;

impl ObservedCell {
    pub fn from_object(object: &DynamicObject) -> Self {
        Observed::judge(object, manifest::cell_spec)
    }

    /// The typed Cell, when its spec is valid.
    pub fn typed(&self) -> Option<Cell> {
        let spec = self.spec.as_ref().ok()?.clone();
        Some(Cell {
            metadata: self.meta.clone(),
            spec,
            status: Some(self.status.clone()),
        })
    }
}

impl ObservedPool {
    pub fn from_object(object: &DynamicObject) -> Self {
        Observed::judge(object, manifest::pool_spec)
    }

    /// The typed CellPool, when its spec is valid.
    pub fn typed(&self) -> Option<CellPool> {
        let spec = self.spec.as_ref().ok()?.clone();
        Some(CellPool {
            metadata: self.meta.clone(),
            spec,
            status: Some(self.status.clone()),
        })
    }
}

impl<S, T: DeserializeOwned + Default> Observed<S, T> {
    fn judge(object: &DynamicObject, judge: impl Fn(&Value) -> Result<S, Vec<FieldError>>) -> Self {
        let mut document = serde_json::Map::new();
        document.insert(
            "metadata".into(),
            serde_json::json!({ "name": object.metadata.name }),
        );
        if let Some(spec) = object.data.get("spec") {
            document.insert("spec".into(), spec.clone());
        }
        // The status is ours; one we cannot read is rebuilt from scratch.
        let status = object
            .data
            .get("status")
            .and_then(|status| serde_json::from_value(status.clone()).ok())
            .unwrap_or_default();
        Self {
            meta: object.metadata.clone(),
            spec: judge(&Value::Object(document)),
            status,
        }
    }
}

impl<S, T> Observed<S, T> {
    pub fn name(&self) -> &str {
        self.meta.name.as_deref().unwrap_or_default()
    }

    pub fn namespace(&self) -> &str {
        self.meta.namespace.as_deref().unwrap_or_default()
    }

    /// `namespace/name`, how messages and logs name an object.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace(), self.name())
    }

    pub fn generation(&self) -> i64 {
        self.meta.generation.unwrap_or_default()
    }

    pub fn is_deleting(&self) -> bool {
        self.meta.deletion_timestamp.is_some()
    }

    pub fn has_finalizer(&self, finalizer: &str) -> bool {
        self.meta
            .finalizers
            .as_ref()
            .is_some_and(|all| all.iter().any(|f| f == finalizer))
    }

    /// The spec's errors as one message, each naming its field.
    pub fn spec_errors(&self) -> Option<String> {
        self.spec.as_ref().err().map(|errors| {
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        })
    }
}
