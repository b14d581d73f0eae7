//! Reading Cell and CellPool manifests as `kubectl apply` takes them (multi-document
//! YAML) and judging them the way a cluster would: the resource's schema first, then the
//! rules of [`crate::validate`], then each Cell against the pool that would run it.
//! `cellbus up` and the tests read manifests through here; nothing here does I/O.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::fmt;
use std::sync::OnceLock;

use jsonschema::error::ValidationErrorKind;
use jsonschema::Validator;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::resources::{
    CellPoolSpec, CellSpec, Os, Runtime, API_VERSION, NAMESPACE_PATTERN, OBJECT_NAME_PATTERN,
};
use crate::schemas;
use crate::validate::{self, FieldError};

/// The namespace an object without one lands in.
pub const DEFAULT_NAMESPACE: &str = "default";

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("not YAML: {0}")]
    Yaml(String),
}

/// Splits a YAML stream into its documents, as JSON values; empty documents are dropped.
pub fn parse_yaml(text: &str) -> Result<Vec<Value>, ManifestError> {
    let documents: Vec<Value> =
        serde_saphyr::from_str_multiple(text).map_err(|e| ManifestError::Yaml(e.to_string()))?;
    Ok(documents.into_iter().filter(|d| !d.is_null()).collect())
}

/// The name and namespace of an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectRef {
    pub kind: String,
    pub name: String,
    pub namespace: String,
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// A Cellbus object that passed every check.
// Held only while a directory is checked, a few at a time: boxing the larger spec would
// cost every reader a deref for no memory that matters.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    Cell { at: ObjectRef, spec: CellSpec },
    CellPool { at: ObjectRef, spec: CellPoolSpec },
}

/// A rule an object in a manifest breaks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectError {
    pub object: ObjectRef,
    pub error: FieldError,
}

impl fmt::Display for ObjectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.object, self.error)
    }
}

/// The outcome of checking a set of manifests.
#[derive(Debug, Default)]
pub struct Checked {
    /// Objects with no error.
    pub objects: Vec<Object>,
    /// Every error found.
    pub errors: Vec<ObjectError>,
    /// Documents of other kinds (Secrets, Deployments, …), left to whoever applies them.
    pub others: Vec<ObjectRef>,
}

/// Rules the contracts cannot judge alone: module signatures need cryptography, which
/// lives with the callers (`cellbus_control::signature::SignatureCheck`).
pub trait Verifier {
    /// The errors of a pool of `namespace` beyond its schema and rules (its trust, read).
    fn pool(&self, namespace: &str, spec: &CellPoolSpec) -> Vec<FieldError>;
    /// The errors of a cell of `namespace` in `pool` (its signature, verified against the
    /// pool's trust).
    fn cell_in_pool(
        &self,
        namespace: &str,
        cell: &CellSpec,
        pool: &CellPoolSpec,
    ) -> Vec<FieldError>;
}

/// Checks shapes and rules only: signatures are not verified. For the contracts' own
/// tests and tools that never run a module.
pub struct ShapeOnly;

impl Verifier for ShapeOnly {
    fn pool(&self, _: &str, _: &CellPoolSpec) -> Vec<FieldError> {
        Vec::new()
    }

    fn cell_in_pool(&self, _: &str, _: &CellSpec, _: &CellPoolSpec) -> Vec<FieldError> {
        Vec::new()
    }
}

/// Checks every document's shape and rules, without verifying signatures (see
/// [`check_with`]).
pub fn check(documents: &[Value]) -> Checked {
    check_with(documents, &ShapeOnly)
}

/// Checks every document: Cells and CellPools are judged, signatures verified with
/// `verifier`, other kinds are passed over.
pub fn check_with(documents: &[Value], verifier: &dyn Verifier) -> Checked {
    let mut checked = Checked::default();
    let mut cells = Vec::new();
    let mut pools = Vec::new();
    let mut seen: Vec<(ObjectRef, &Value)> = Vec::new();
    for document in documents {
        let at = object_ref(document);
        // The same object applied twice is one object, as with `kubectl apply`; two
        // different objects under one name are a mistake.
        if let Some((_, first)) = seen.iter().find(|(other, _)| other == &at) {
            if *first != document {
                checked.errors.push(ObjectError {
                    object: at.clone(),
                    error: FieldError::new(
                        "metadata.name",
                        "defined twice with different contents",
                    ),
                });
            }
            continue;
        }
        seen.push((at.clone(), document));
        let is_ours = document.get("apiVersion").and_then(Value::as_str) == Some(API_VERSION);
        let result = match at.kind.as_str() {
            "Cell" if is_ours => judge::<CellSpec>(document, cell_schema(), validate::cell)
                .map(|spec| cells.push((at.clone(), spec))),
            "CellPool" if is_ours => judge::<CellPoolSpec>(document, pool_schema(), validate::pool)
                .and_then(|spec| match verifier.pool(&at.namespace, &spec) {
                    errors if errors.is_empty() => Ok(spec),
                    errors => Err(errors),
                })
                .map(|spec| pools.push((at.clone(), spec))),
            "Cell" | "CellPool" => Err(vec![FieldError::new(
                "apiVersion",
                format!("expected {API_VERSION}"),
            )]),
            _ => {
                checked.others.push(at);
                continue;
            }
        };
        if let Err(errors) = result {
            checked
                .errors
                .extend(errors.into_iter().map(|error| ObjectError {
                    object: at.clone(),
                    error,
                }));
        }
    }

    let mut claims = Claims::default();
    for (at, spec) in cells {
        let candidates: Vec<(&str, &CellPoolSpec)> = pools
            .iter()
            .filter(|(pool, _)| pool.namespace == at.namespace)
            .map(|(pool, spec)| (pool.name.as_str(), spec))
            .collect();
        let mut errors = match select_pool(&spec, &candidates) {
            Ok((name, pool)) => match validate::cell_in_pool(&spec, name, pool) {
                Ok(()) => verifier.cell_in_pool(&at.namespace, &spec, pool),
                Err(invalid) => invalid.0,
            },
            Err(error @ PoolChoiceError::Several { .. }) => {
                vec![FieldError::new("spec.poolRef", error.to_string())]
            }
            // The pool may be applied separately; scheduling reports it if it never is.
            Err(_) => Vec::new(),
        };
        errors.extend(claims.claim(&at, &spec));
        if errors.is_empty() {
            checked.objects.push(Object::Cell { at, spec });
        } else {
            checked
                .errors
                .extend(errors.into_iter().map(|error| ObjectError {
                    object: at.clone(),
                    error,
                }));
        }
    }
    checked.objects.extend(
        pools
            .into_iter()
            .map(|(at, spec)| Object::CellPool { at, spec }),
    );
    checked
}

/// What the Cells read so far hold, each the first to name it. Services share one subject
/// space per bus and schemas one database, whatever the namespace (`cellbus up` serves a
/// whole directory on one NATS and one PostgreSQL), so a later claim would take over the
/// first one's traffic or rows; it is refused, as the operator refuses it in a cluster
/// (where the oldest Cell keeps it).
#[derive(Default)]
struct Claims {
    services: HashMap<String, ObjectRef>,
    schemas: HashMap<String, ObjectRef>,
}

impl Claims {
    fn claim(&mut self, at: &ObjectRef, spec: &CellSpec) -> Vec<FieldError> {
        let mut errors = Vec::new();
        match self.services.entry(spec.service.clone()) {
            Entry::Occupied(holder) => errors.push(FieldError::new(
                "spec.service",
                format!(
                    "service {} is already claimed by {}; one Cell per service per bus: \
                     rename spec.service or drop one of them",
                    spec.service,
                    holder.get()
                ),
            )),
            Entry::Vacant(slot) => {
                slot.insert(at.clone());
            }
        }
        if let Some(schema) = spec.database_schema() {
            let defaulted = spec.database.as_ref().is_some_and(|d| d.schema.is_none());
            match self.schemas.entry(schema.clone()) {
                Entry::Occupied(holder) => errors.push(FieldError::new(
                    "spec.database.schema",
                    format!(
                        "schema {schema}{} is already claimed by {}; one Cell per schema per \
                         database: set spec.database.schema to a schema of this Cell's own",
                        if defaulted {
                            " (the default, from spec.service)"
                        } else {
                            ""
                        },
                        holder.get()
                    ),
                )),
                Entry::Vacant(slot) => {
                    slot.insert(at.clone());
                }
            }
        }
        errors
    }
}

/// Why no single pool can run a cell.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PoolChoiceError {
    #[error("CellPool {name} does not exist")]
    NotFound { name: String },
    #[error("no CellPool runs {runtime} on {os}")]
    NoneMatch {
        runtime: &'static str,
        os: &'static str,
    },
    #[error("several CellPools run {runtime} on {os} ({}); set spec.poolRef", names.join(", "))]
    Several {
        runtime: &'static str,
        os: &'static str,
        names: Vec<String>,
    },
}

/// The pool that runs a cell: the one `poolRef` names, or else the one pool whose runtime
/// and OS match the cell's (`wasm` on `linux` unless it says otherwise).
pub fn select_pool<'a>(
    cell: &CellSpec,
    pools: &[(&'a str, &'a CellPoolSpec)],
) -> Result<(&'a str, &'a CellPoolSpec), PoolChoiceError> {
    if let Some(name) = &cell.pool_ref {
        return pools
            .iter()
            .find(|(pool, _)| pool == name)
            .copied()
            .ok_or_else(|| PoolChoiceError::NotFound { name: name.clone() });
    }
    let runtime = cell.runtime.unwrap_or(Runtime::Wasm);
    let os = cell.os.unwrap_or(Os::Linux);
    let mut matching: Vec<_> = pools
        .iter()
        .filter(|(_, pool)| pool.runtime == runtime && pool.os == os)
        .copied()
        .collect();
    match matching.len() {
        0 => Err(PoolChoiceError::NoneMatch {
            runtime: runtime.as_str(),
            os: os.as_str(),
        }),
        1 => Ok(matching.remove(0)),
        _ => {
            let mut names: Vec<String> = matching.iter().map(|(n, _)| n.to_string()).collect();
            names.sort();
            Err(PoolChoiceError::Several {
                runtime: runtime.as_str(),
                os: os.as_str(),
                names,
            })
        }
    }
}

fn object_ref(document: &Value) -> ObjectRef {
    let text = |pointer: &str| document.pointer(pointer).and_then(Value::as_str);
    ObjectRef {
        kind: text("/kind").unwrap_or("(no kind)").into(),
        name: text("/metadata/name").unwrap_or("(no name)").into(),
        namespace: text("/metadata/namespace")
            .unwrap_or(DEFAULT_NAMESPACE)
            .into(),
    }
}

/// A Cell's spec judged as [`check`] judges one in a manifest: its schema, then its rules.
/// The operator reads Cells from the API through here, so a spec an older CRD let through
/// ends as field errors on that one object instead of breaking the watch of all of them.
pub fn cell_spec(document: &Value) -> Result<CellSpec, Vec<FieldError>> {
    judge(document, cell_schema(), validate::cell)
}

/// A CellPool's spec judged as [`cell_spec`] judges a Cell's.
pub fn pool_spec(document: &Value) -> Result<CellPoolSpec, Vec<FieldError>> {
    judge(document, pool_schema(), validate::pool)
}

/// Metadata, then the spec against its schema, then the spec's own rules.
fn judge<S: DeserializeOwned>(
    document: &Value,
    schema: &Validator,
    rules: impl Fn(&S) -> Result<(), validate::Invalid>,
) -> Result<S, Vec<FieldError>> {
    let mut errors = check_metadata(document);
    let Some(spec) = document.get("spec") else {
        errors.push(FieldError::new("spec", "required field is missing"));
        return Err(errors);
    };
    errors.extend(schema.iter_errors(spec).map(|e| schema_error("spec", &e)));
    if !errors.is_empty() {
        return Err(errors);
    }
    let spec: S = serde_json::from_value(spec.clone())
        .map_err(|e| vec![FieldError::new("spec", e.to_string())])?;
    rules(&spec).map_err(|invalid| invalid.0)?;
    Ok(spec)
}

/// The names the API server itself insists on: the object's a DNS subdomain, its
/// namespace's a DNS label. Both end up in KV keys and subjects, so a manifest for
/// `cellbus up` is held to them too.
fn check_metadata(document: &Value) -> Vec<FieldError> {
    let rule = |max_length: usize, pattern: &str| {
        jsonschema::validator_for(&serde_json::json!({
            "type": "string", "minLength": 1, "maxLength": max_length, "pattern": pattern
        }))
        .expect("the name schemas compile")
    };
    static NAME: OnceLock<Validator> = OnceLock::new();
    static NAMESPACE: OnceLock<Validator> = OnceLock::new();
    let name = NAME.get_or_init(|| rule(253, OBJECT_NAME_PATTERN));
    let namespace = NAMESPACE.get_or_init(|| rule(63, NAMESPACE_PATTERN));
    let mut errors = Vec::new();
    match document.pointer("/metadata/name") {
        None => errors.push(FieldError::new(
            "metadata.name",
            "required field is missing",
        )),
        Some(value) if !name.is_valid(value) => errors.push(FieldError::new(
            "metadata.name",
            format!("{value} is not a DNS subdomain (lowercase letters, digits, `-` and `.`)"),
        )),
        Some(_) => {}
    }
    match document.pointer("/metadata/namespace") {
        Some(value) if !namespace.is_valid(value) => errors.push(FieldError::new(
            "metadata.namespace",
            format!(
                "{value} is not a DNS label (at most 63 lowercase letters, digits and `-`, \
                 starting and ending with a letter or digit)"
            ),
        )),
        _ => {}
    }
    errors
}

/// A schema error as a field error: the JSON pointer becomes a field path under `root`
/// (empty for the object root), and for a missing or unknown property the path names that
/// property.
pub fn schema_error(root: &str, error: &jsonschema::ValidationError<'_>) -> FieldError {
    let mut field = root.to_owned();
    for token in error.instance_path().as_str().split('/').skip(1) {
        let token = token.replace("~1", "/").replace("~0", "~");
        if token.parse::<usize>().is_ok() {
            field.push_str(&format!("[{token}]"));
        } else {
            push_field(&mut field, &token);
        }
    }
    match error.kind() {
        ValidationErrorKind::Required { property } => {
            if let Some(property) = property.as_str() {
                push_field(&mut field, property);
            }
            FieldError::new(field, "required field is missing")
        }
        ValidationErrorKind::AdditionalProperties { unexpected } => {
            if let [only] = unexpected.as_slice() {
                push_field(&mut field, only);
            }
            FieldError::new(
                field,
                format!("unknown field(s): {}", unexpected.join(", ")),
            )
        }
        _ => FieldError::new(field, error.to_string()),
    }
}

fn push_field(path: &mut String, name: &str) {
    if !path.is_empty() {
        path.push('.');
    }
    path.push_str(name);
}

fn compiled(schema: Value) -> Validator {
    jsonschema::validator_for(&schema).expect("generated schemas compile")
}

fn cell_schema() -> &'static Validator {
    static SCHEMA: OnceLock<Validator> = OnceLock::new();
    SCHEMA.get_or_init(|| compiled(schemas::schema_for::<CellSpec>()))
}

fn pool_schema() -> &'static Validator {
    static SCHEMA: OnceLock<Validator> = OnceLock::new();
    SCHEMA.get_or_init(|| compiled(schemas::schema_for::<CellPoolSpec>()))
}
