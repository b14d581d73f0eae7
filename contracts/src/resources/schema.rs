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

/// Subjects a cell may call: the rules of `subject::check_subject_pattern` as a CEL rule on
/// each item, so the API server refuses a pattern that could never match. Whitespace is
/// spelled out as the characters Rust's `char::is_whitespace` takes, because `\s` means
/// ASCII whitespace to the API server's RE2 and Unicode whitespace to Rust's regex.
pub(crate) fn call_patterns(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "maxItems": 32,
        "items": {
            "type": "string",
            "minLength": 1,
            "maxLength": 256,
            "x-kubernetes-validations": [{
                "rule": CALL_PATTERN_RULE,
                "message": "not a subject pattern: tokens separated by `.`, none empty or holding whitespace; `*` stands for a whole token, a final `>` for the rest"
            }]
        }
    })
}

/// `char::is_whitespace` is `\t\n\v\f\r`, U+0085 and `\p{Z}`; backslashes doubled for the CEL
/// string literal.
const CALL_PATTERN_RULE: &str = r"self.matches('^(([^.*>\\t\\n\\v\\f\\r\\x{85}\\p{Z}]+|[*])[.])*([^.*>\\t\\n\\v\\f\\r\\x{85}\\p{Z}]+|[*]|>)$')";
