//! JSON Schemas (draft 2020-12) of the documents Cellbus exchanges, generated from the
//! types so they cannot drift. The committed copies under `schemas/` are for people and
//! other languages; `cellbus up` checks manifests against the same generated schemas.

use schemars::generate::SchemaSettings;
use schemars::JsonSchema;
use serde_json::Value;

use crate::assignment::PoolAssignment;
use crate::resources::{CellPoolSpec, CellSpec};
use crate::wire::{ErrorReply, Reply, Request};

/// One generated schema and the file it is committed as under `schemas/`.
pub struct SchemaFile {
    pub file: &'static str,
    pub schema: Value,
}

/// Every schema committed under `schemas/`.
pub fn all() -> Vec<SchemaFile> {
    vec![
        file::<Request>("request.json"),
        file::<Reply>("reply.json"),
        file::<ErrorReply>("error.json"),
        file::<PoolAssignment>("assignment.json"),
        file::<CellSpec>("cell-spec.json"),
        file::<CellPoolSpec>("cellpool-spec.json"),
    ]
}

fn file<T: JsonSchema>(file: &'static str) -> SchemaFile {
    SchemaFile {
        file,
        schema: schema_for::<T>(),
    }
}

/// The schema of `T`, strict about unknown fields (a typo in a manifest is an error, as
/// with `kubectl apply`'s strict field validation).
pub fn schema_for<T: JsonSchema>() -> Value {
    let generator = SchemaSettings::draft2020_12().into_generator();
    let mut schema = generator.into_root_schema_for::<T>().to_value();
    forbid_null(&mut schema);
    forbid_unknown_fields(&mut schema);
    schema
}

/// Optional fields are left out rather than sent as null, so null is not a value: drops
/// `"null"` from `type` lists and `{"type": "null"}` branches from `anyOf`.
fn forbid_null(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            if let Some(Value::Array(types)) = map.get_mut("type") {
                types.retain(|t| t != "null");
                if let [only] = types.as_slice() {
                    let only = only.clone();
                    map.insert("type".into(), only);
                }
            }
            if let Some(Value::Array(branches)) = map.get_mut("anyOf") {
                branches.retain(|b| b.get("type").is_none_or(|t| t != "null"));
                if let [Value::Object(only)] = branches.as_slice() {
                    let only = only.clone();
                    map.remove("anyOf");
                    for (key, value) in only {
                        map.entry(key).or_insert(value);
                    }
                }
            }
            map.values_mut().for_each(forbid_null);
        }
        Value::Array(items) => items.iter_mut().for_each(forbid_null),
        _ => {}
    }
}

/// Sets `additionalProperties: false` on every object schema that lists its properties,
/// except where unknown fields are kept on purpose.
pub fn forbid_unknown_fields(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            let keeps_unknown = map
                .get("x-kubernetes-preserve-unknown-fields")
                .is_some_and(|v| v == &Value::Bool(true));
            if map.contains_key("properties")
                && !keeps_unknown
                && !map.contains_key("additionalProperties")
            {
                map.insert("additionalProperties".into(), Value::Bool(false));
            }
            if keeps_unknown {
                return;
            }
            for value in map.values_mut() {
                forbid_unknown_fields(value);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(forbid_unknown_fields),
        _ => {}
    }
}
