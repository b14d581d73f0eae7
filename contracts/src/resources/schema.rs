//! Schema pieces the derive cannot express on its own.

use schemars::{json_schema, Schema, SchemaGenerator};

/// A JSON Schema document embedded in a resource (a verb's input or output): any object,
/// kept verbatim by the API server.
pub(crate) fn json_schema_document(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}
