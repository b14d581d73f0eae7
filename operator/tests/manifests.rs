//! Every invalid manifest under tests/fixtures/invalid is refused, with a message naming
//! the field, in both readings a manifest gets:
//! - the cluster's: the generated CRD's openAPIV3Schema (with strict field validation, as
//!   `kubectl apply` asks for), then its CEL rules, then the operator's `validate()`;
//! - the local one (`cellbus check`, `cellbus up`): `cellbus_contracts::manifest::check`.
//!
//! Each fixture starts with `# field: PATH`, the field its error must name. Every example
//! under examples/ is accepted by both.

use std::path::{Path, PathBuf};

use cellbus_contracts::manifest::{self, schema_error, select_pool};
use cellbus_contracts::resources::{CellPoolSpec, CellSpec};
use cellbus_contracts::schemas::forbid_unknown_fields;
use cellbus_contracts::validate;
use cellbus_operator::crdgen;
use serde_json::Value;

struct Fixture {
    name: String,
    field: String,
    documents: Vec<Value>,
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn fixtures() -> Vec<Fixture> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/invalid");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            let field = text
                .lines()
                .find_map(|line| line.strip_prefix("# field: "))
                .unwrap_or_else(|| panic!("{} lacks a `# field:` line", path.display()))
                .to_owned();
            Fixture {
                name: path.file_stem().unwrap().to_string_lossy().into_owned(),
                field,
                documents: manifest::parse_yaml(&text).unwrap(),
            }
        })
        .collect()
}

/// Which part of the cluster refused an object.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Stage {
    Schema,
    Cel,
    Operator,
}

#[derive(Debug)]
struct Refusal {
    stage: Stage,
    field: String,
    message: String,
}

/// The CRD's openAPIV3Schema for a kind, as the API server enforces it with strict field
/// validation.
fn crd_schema(kind: &str) -> Value {
    let crd = crdgen::crds()
        .into_iter()
        .find(|crd| crd.spec.names.kind == kind)
        .unwrap_or_else(|| panic!("no CRD for {kind}"));
    serde_json::to_value(
        &crd.spec.versions[0]
            .schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema,
    )
    .unwrap()
}

fn admission(document: &Value, old: Option<&Value>) -> Vec<Refusal> {
    let kind = document["kind"].as_str().unwrap();
    let schema = crd_schema(kind);
    let mut strict = schema.clone();
    // The API server itself owns the object's type and metadata fields.
    for field in ["apiVersion", "kind", "metadata"] {
        strict["properties"][field] = serde_json::json!({"type": ["string", "object"]});
    }
    forbid_unknown_fields(&mut strict);
    let validator = jsonschema::validator_for(&strict).unwrap();
    let refusals: Vec<Refusal> = validator
        .iter_errors(document)
        .map(|error| {
            let error = schema_error("", &error);
            Refusal {
                stage: Stage::Schema,
                field: error.field,
                message: error.message,
            }
        })
        .collect();
    if !refusals.is_empty() {
        return refusals;
    }
    match kube_cel::Validator::new().validate(&schema, document, old) {
        Ok(()) => Vec::new(),
        Err(errors) => errors
            .iter()
            .map(|error| Refusal {
                stage: Stage::Cel,
                field: error.field_path.clone(),
                message: error.to_string(),
            })
            .collect(),
    }
}

/// The cluster's reading: admission for every object, then the operator's checks for those
/// admitted, each Cell against the admitted pool that would run it.
fn cluster_reading(documents: &[Value]) -> Vec<Refusal> {
    let mut refusals = Vec::new();
    let mut pools: Vec<(String, CellPoolSpec)> = Vec::new();
    let mut cells: Vec<CellSpec> = Vec::new();
    for document in documents {
        let refused = admission(document, None);
        if !refused.is_empty() {
            refusals.extend(refused);
            continue;
        }
        let spec = document["spec"].clone();
        match document["kind"].as_str().unwrap() {
            "CellPool" => {
                let spec: CellPoolSpec = serde_json::from_value(spec).unwrap();
                operator_refusals(validate::pool(&spec), &mut refusals);
                pools.push((document["metadata"]["name"].as_str().unwrap().into(), spec));
            }
            _ => {
                let spec: CellSpec = serde_json::from_value(spec).unwrap();
                operator_refusals(validate::cell(&spec), &mut refusals);
                cells.push(spec);
            }
        }
    }
    let candidates: Vec<(&str, &CellPoolSpec)> = pools
        .iter()
        .map(|(name, spec)| (name.as_str(), spec))
        .collect();
    for cell in &cells {
        if let Ok((name, pool)) = select_pool(cell, &candidates) {
            operator_refusals(validate::cell_in_pool(cell, name, pool), &mut refusals);
        }
    }
    refusals
}

fn operator_refusals(result: Result<(), validate::Invalid>, into: &mut Vec<Refusal>) {
    if let Err(invalid) = result {
        into.extend(invalid.0.into_iter().map(|error| Refusal {
            stage: Stage::Operator,
            message: error.to_string(),
            field: error.field,
        }));
    }
}

#[test]
fn there_are_enough_bad_manifests() {
    assert!(fixtures().len() >= 15);
}

#[test]
fn a_cluster_refuses_every_bad_manifest_naming_the_field() {
    let mut wrong = Vec::new();
    for fixture in fixtures() {
        let refusals = cluster_reading(&fixture.documents);
        let named = refusals.iter().find(|r| r.field == fixture.field);
        match named {
            Some(refusal) => println!(
                "{:<32} refused by {:?}: {} ({})",
                fixture.name, refusal.stage, refusal.field, refusal.message
            ),
            None => wrong.push(format!(
                "{}: expected {}, got {refusals:?}",
                fixture.name, fixture.field
            )),
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn cellbus_check_refuses_every_bad_manifest_naming_the_field() {
    let mut wrong = Vec::new();
    for fixture in fixtures() {
        let checked = manifest::check(&fixture.documents);
        let named = checked
            .errors
            .iter()
            .find(|e| e.error.field == fixture.field);
        match named {
            // The message a person reads carries the field path too.
            Some(error) => assert!(error.to_string().contains(&fixture.field), "{error}"),
            None => wrong.push(format!(
                "{}: expected {}, got {:?}",
                fixture.name, fixture.field, checked.errors
            )),
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

fn example_documents() -> Vec<Value> {
    let mut documents = Vec::new();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(repo().join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    assert!(!dirs.is_empty(), "examples/ has no example");
    for dir in dirs {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                let text = std::fs::read_to_string(&path).unwrap();
                documents.extend(manifest::parse_yaml(&text).unwrap());
            }
        }
    }
    documents
}

#[test]
fn every_example_is_accepted_by_both_readings() {
    let documents = example_documents();
    let refusals = cluster_reading(&documents);
    assert!(refusals.is_empty(), "{refusals:?}");
    let checked = manifest::check(&documents);
    assert!(checked.errors.is_empty(), "{:?}", checked.errors);
    assert!(checked.objects.len() >= 2);
}

#[test]
fn service_is_immutable_once_created() {
    let text = std::fs::read_to_string(repo().join("examples/echo/cell.yaml")).unwrap();
    let old = manifest::parse_yaml(&text).unwrap().remove(0);
    let mut renamed = old.clone();
    renamed["spec"]["service"] = "echo-two".into();
    let refusals = admission(&renamed, Some(&old));
    assert_eq!(refusals.len(), 1, "{refusals:?}");
    assert_eq!(refusals[0].stage, Stage::Cel);
    assert!(refusals[0].message.contains("service is immutable"));

    let mut retuned = old.clone();
    retuned["spec"]["verbs"][0]["timeoutMs"] = 2000.into();
    assert!(admission(&retuned, Some(&old)).is_empty());
}

#[test]
fn every_cel_rule_compiles() {
    for kind in ["Cell", "CellPool"] {
        let compiled = kube_cel::compile_schema(&crd_schema(kind));
        assert!(
            !compiled.has_errors(),
            "{kind}: {:?}",
            compiled.compilation_errors()
        );
    }
}
