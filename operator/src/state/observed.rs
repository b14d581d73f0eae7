//! Cells and CellPools as the operator reads them from the API: each object's spec kept
//! as the JSON text the API server sent, then judged with the same schema and rules as
//! `cellbus check`. A typed watch fails as a whole when one object does not deserialize
//! (a spec an older CRD let through, a hand edit with the schema off); read this way, that
//! object alone ends as field errors in a condition.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use cellbus_contracts::manifest;
use cellbus_contracts::resources::{
    Cell, CellPool, CellPoolSpec, CellPoolStatus, CellSpec, CellStatus,
};
use cellbus_contracts::validate::FieldError;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

/// The annotation `kubectl apply` keeps a copy of the whole object in.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// A `K` as the watch caches keep it: metadata without `managedFields` or kubectl's copy
/// of the object, spec and status as the JSON text the API server sent. Any object
/// deserializes this way, whatever its spec, and costs little to keep: the operator holds
/// every Cell it watches in memory.
#[derive(Serialize, Deserialize)]
pub struct Watched<K> {
    #[serde(deserialize_with = "lean_metadata")]
    pub metadata: ObjectMeta,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<Box<RawValue>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Box<RawValue>>,
    #[serde(skip)]
    kind: PhantomData<fn() -> K>,
}

/// A Cell as the operator watches it.
pub type CellObject = Watched<Cell>;
/// A CellPool as the operator watches it.
pub type PoolObject = Watched<CellPool>;

impl<K> Watched<K> {
    /// An object with `metadata` and `spec`.
    pub fn new(metadata: ObjectMeta, spec: &Value) -> Self {
        Self {
            metadata,
            spec: Some(raw(spec)),
            status: None,
            kind: PhantomData,
        }
    }

    /// The same object with `status`.
    pub fn with_status(mut self, status: &Value) -> Self {
        self.status = Some(raw(status));
        self
    }

    /// The spec's field at `pointer` (`/service`), if the spec is JSON and has it.
    pub fn spec_field(&self, pointer: &str) -> Option<Value> {
        let spec: Value = serde_json::from_str(self.spec.as_ref()?.get()).ok()?;
        spec.pointer(pointer).cloned()
    }
}

fn raw(value: &Value) -> Box<RawValue> {
    RawValue::from_string(value.to_string()).expect("a JSON value is valid JSON")
}

fn lean_metadata<'de, D: Deserializer<'de>>(deserializer: D) -> Result<ObjectMeta, D::Error> {
    let mut metadata = ObjectMeta::deserialize(deserializer)?;
    metadata.managed_fields = None;
    if let Some(annotations) = &mut metadata.annotations {
        annotations.remove(LAST_APPLIED);
    }
    Ok(metadata)
}

impl<K> Clone for Watched<K> {
    fn clone(&self) -> Self {
        Self {
            metadata: self.metadata.clone(),
            spec: self.spec.clone(),
            status: self.status.clone(),
            kind: PhantomData,
        }
    }
}

impl<K> fmt::Debug for Watched<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watched")
            .field("metadata", &self.metadata)
            .field("spec", &self.spec)
            .field("status", &self.status)
            .finish()
    }
}

impl<K: Resource<DynamicType = ()>> Resource for Watched<K> {
    type DynamicType = ();
    type Scope = K::Scope;

    fn kind(_: &()) -> Cow<'_, str> {
        K::kind(&())
    }

    fn group(_: &()) -> Cow<'_, str> {
        K::group(&())
    }

    fn version(_: &()) -> Cow<'_, str> {
        K::version(&())
    }

    fn api_version(_: &()) -> Cow<'_, str> {
        K::api_version(&())
    }

    fn plural(_: &()) -> Cow<'_, str> {
        K::plural(&())
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
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
    pub fn from_object(object: &CellObject) -> Self {
        Observed::judge(object, manifest::cell_spec)
    }
}

impl ObservedPool {
    pub fn from_object(object: &PoolObject) -> Self {
        Observed::judge(object, |document| {
            let spec = manifest::pool_spec(document)?;
            // The trust's keys and authorities must be readable for the pool to be valid.
            match cellbus_control::signature::inline_trust_errors(&spec) {
                errors if errors.is_empty() => Ok(spec),
                errors => Err(errors),
            }
        })
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
    fn judge<K>(object: &Watched<K>, judge: impl Fn(&Value) -> Result<S, Vec<FieldError>>) -> Self {
        let mut document = serde_json::Map::new();
        document.insert(
            "metadata".into(),
            serde_json::json!({ "name": object.metadata.name }),
        );
        if let Some(spec) = &object.spec {
            let spec = serde_json::from_str(spec.get()).unwrap_or(Value::Null);
            document.insert("spec".into(), spec);
        }
        // The status is ours; one we cannot read is rebuilt from scratch.
        let status = object
            .status
            .as_ref()
            .and_then(|status| serde_json::from_str(status.get()).ok())
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

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::ObjectList;
    use serde_json::json;

    fn cell(name: &str, spec: Value) -> Value {
        json!({
            "apiVersion": "cellbus.io/v1alpha1",
            "kind": "Cell",
            "metadata": {
                "name": name,
                "namespace": "apps",
                "managedFields": [{"manager": "kubectl", "operation": "Apply", "fieldsV1": {"f:spec": {}}}],
                "annotations": {LAST_APPLIED: "{\"a\": \"copy of the whole object\"}", "team": "payments"},
            },
            "spec": spec,
        })
    }

    #[test]
    fn one_object_that_breaks_the_schema_does_not_break_the_list() {
        let list = json!({
            "apiVersion": "cellbus.io/v1alpha1",
            "kind": "CellList",
            "metadata": {"resourceVersion": "7"},
            "items": [
                cell("good", json!({"service": "echo", "verbs": [{"name": "say"}], "module": {"digest": format!("sha256:{}", "e".repeat(64))}})),
                cell("bad", json!({"service": 42, "verbs": "say", "module": null})),
            ],
        });
        let list: ObjectList<CellObject> = serde_json::from_value(list).unwrap();
        let judged: Vec<ObservedCell> = list.items.iter().map(ObservedCell::from_object).collect();
        assert!(judged[0].spec.is_ok());
        let message = judged[1].spec_errors().unwrap();
        assert!(message.contains("spec.service"), "{message}");
        assert!(message.contains("spec.verbs"), "{message}");
    }

    #[test]
    fn the_cache_keeps_neither_managed_fields_nor_kubectls_copy() {
        let object: CellObject = serde_json::from_value(cell("echo", json!({}))).unwrap();
        assert_eq!(object.metadata.managed_fields, None);
        let annotations = object.metadata.annotations.unwrap();
        assert_eq!(annotations.keys().collect::<Vec<_>>(), ["team"]);
    }

    #[test]
    fn a_status_we_cannot_read_is_rebuilt() {
        let object: CellObject = serde_json::from_value(cell("echo", json!({}))).unwrap();
        let object = object.with_status(&json!({"conditions": "not a list"}));
        assert_eq!(
            ObservedCell::from_object(&object).status,
            CellStatus::default()
        );
    }
}
