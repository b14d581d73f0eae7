//! Every invalid manifest under tests/fixtures/invalid is refused, with a message naming
//! the field, in both readings a manifest gets:
//! - the cluster's: the generated CRD's openAPIV3Schema (with strict field validation, as
//!   `kubectl apply` asks for), then its CEL rules, then the operator's `validate()`;
//! - the local one (`cellbus check`, `cellbus up`): `cellbus_contracts::manifest::check`.
//!
//! Each fixture starts with `# field: PATH`, the field its error must name, and either
//! `# cel: MESSAGE`, the message the CRD's CEL rule refuses it with (checked on its own,
//! whatever the schema says), or `# not cel: WHY`. Every example under examples/ is
//! accepted by both readings.
//!
//! What CEL does not check, and why:
//! - what the schema refuses first (patterns, ranges, enums, required and unknown fields);
//! - repeated verb and env names: the API server refuses a repeated key of a list-type map
//!   itself (emulated below);
//! - object names and namespaces: the API server's own checks (emulated below);
//! - everything between a Cell and its pool (runtime, OS, limits, timeouts, signatures,
//!   commands in non-process pools): a CRD rule sees one object;
//! - a service or database schema claimed by two Cells: it depends on other objects, so
//!   the operator decides it (the oldest Cell keeps it, later ones get `Conflict`);
//! - whether a verb's `input`/`output` is a JSON Schema: CEL cannot compile one.

use std::path::{Path, PathBuf};

use cellbus_contracts::manifest::{self, schema_error, select_pool, Verifier as _};
use cellbus_contracts::resources::{
    CellPoolSpec, CellSpec, NAMESPACE_PATTERN, OBJECT_NAME_PATTERN,
};
use cellbus_contracts::schemas::forbid_unknown_fields;
use cellbus_contracts::validate;
use cellbus_control::signature::SignatureCheck;
use cellbus_operator::crdgen;
use serde_json::Value;

struct Fixture {
    name: String,
    field: String,
    /// The message of the CEL rule that refuses it, if one does.
    cel: Option<String>,
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
            let cel = text
                .lines()
                .find_map(|line| line.strip_prefix("# cel: "))
                .map(str::to_owned);
            assert!(
                cel.is_some() || text.lines().any(|l| l.starts_with("# not cel: ")),
                "{} says neither `# cel:` nor `# not cel:`",
                path.display()
            );
            Fixture {
                name: path.file_stem().unwrap().to_string_lossy().into_owned(),
                field,
                cel,
                documents: manifest::parse_yaml(&text).unwrap(),
            }
        })
        .collect()
}

/// Which part of the cluster refused an object.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Stage {
    /// The API server's own checks: names, and unique keys of list-type maps.
    ApiServer,
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

/// Object names are DNS subdomains and namespaces DNS labels, whatever the CRD says.
fn api_server_names(document: &Value) -> Vec<Refusal> {
    let rule = |max: usize, pattern: &str| {
        jsonschema::validator_for(&serde_json::json!({"maxLength": max, "pattern": pattern}))
            .unwrap()
    };
    let (subdomain, label) = (rule(253, OBJECT_NAME_PATTERN), rule(63, NAMESPACE_PATTERN));
    let text = |pointer: &str| document.pointer(pointer).and_then(Value::as_str);
    let mut refusals = Vec::new();
    if let Some(name) = text("/metadata/name") {
        if !subdomain.is_valid(&name.into()) {
            refusals.push(Refusal {
                stage: Stage::ApiServer,
                field: "metadata.name".into(),
                message: format!("Invalid value: {name:?}: a lowercase RFC 1123 subdomain"),
            });
        }
    }
    if let Some(namespace) = text("/metadata/namespace") {
        if !label.is_valid(&namespace.into()) {
            refusals.push(Refusal {
                stage: Stage::ApiServer,
                field: "metadata.namespace".into(),
                message: format!("Invalid value: {namespace:?}: a lowercase RFC 1123 label"),
            });
        }
    }
    refusals
}

/// Items of a list-type map repeating a key, as the API server refuses them.
fn repeated_map_keys(schema: &Value, value: &Value, path: &str, into: &mut Vec<Refusal>) {
    if let (Some(items), Some(list)) = (schema.get("items"), value.as_array()) {
        if schema["x-kubernetes-list-type"] == "map" {
            let keys: Vec<&str> = schema["x-kubernetes-list-map-keys"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| k.as_str().unwrap())
                .collect();
            let mut seen = Vec::new();
            for (i, item) in list.iter().enumerate() {
                let key: Vec<&Value> = keys.iter().map(|k| &item[k]).collect();
                if seen.contains(&key) {
                    into.push(Refusal {
                        stage: Stage::ApiServer,
                        field: format!("{path}[{i}].{}", keys[0]),
                        message: format!("Duplicate value: {key:?}"),
                    });
                }
                seen.push(key);
            }
        }
        for (i, item) in list.iter().enumerate() {
            repeated_map_keys(items, item, &format!("{path}[{i}]"), into);
        }
    }
    if let (Some(properties), Some(object)) = (
        schema.get("properties").and_then(Value::as_object),
        value.as_object(),
    ) {
        for (name, value) in object {
            if let Some(schema) = properties.get(name) {
                let path = if path.is_empty() {
                    name.clone()
                } else {
                    format!("{path}.{name}")
                };
                repeated_map_keys(schema, value, &path, into);
            }
        }
    }
}

/// What the CRD's CEL rules alone say of `document`.
fn cel_refusals(schema: &Value, document: &Value, old: Option<&Value>) -> Vec<Refusal> {
    match kube_cel::Validator::new().validate(schema, document, old) {
        Ok(()) => Vec::new(),
        Err(errors) => errors
            .iter()
            .map(|error| Refusal {
                stage: Stage::Cel,
                field: error.field_path.clone(),
                message: error.message.clone(),
            })
            .collect(),
    }
}

fn admission(document: &Value, old: Option<&Value>) -> Vec<Refusal> {
    let kind = document["kind"].as_str().unwrap();
    let schema = crd_schema(kind);
    let mut refusals = api_server_names(document);
    repeated_map_keys(&schema, document, "", &mut refusals);
    if !refusals.is_empty() {
        return refusals;
    }
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
    cel_refusals(&schema, document, old)
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
                verifier_refusals(SignatureCheck::now().pool("default", &spec), &mut refusals);
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
            verifier_refusals(
                SignatureCheck::now().cell_in_pool("default", cell, pool),
                &mut refusals,
            );
        }
    }
    refusals
}

/// What the operator's signature checks refuse: a pool's trust it cannot read, a Cell
/// whose module no trusted signer vouches for.
fn verifier_refusals(errors: Vec<validate::FieldError>, into: &mut Vec<Refusal>) {
    into.extend(errors.into_iter().map(|error| Refusal {
        stage: Stage::Operator,
        message: error.to_string(),
        field: error.field,
    }));
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
fn every_bad_manifest_a_cel_rule_can_catch_is_refused_by_that_rule_with_its_message() {
    let mut wrong = Vec::new();
    let mut caught = 0;
    for fixture in fixtures() {
        let Some(message) = &fixture.cel else {
            continue;
        };
        caught += 1;
        let refusals: Vec<Refusal> = fixture
            .documents
            .iter()
            .flat_map(|document| {
                cel_refusals(
                    &crd_schema(document["kind"].as_str().unwrap()),
                    document,
                    None,
                )
            })
            .collect();
        if !refusals
            .iter()
            .any(|r| r.field == fixture.field && &r.message == message)
        {
            wrong.push(format!(
                "{}: expected {} `{message}`, got {refusals:?}",
                fixture.name, fixture.field
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert!(caught >= 12, "only {caught} fixtures say `# cel:`");
}

/// The CEL rule on `capabilities.call` items and `subject::check_subject_pattern` agree,
/// Unicode whitespace included (RE2's `\s` alone would not see most of it).
#[rstest::rstest]
#[case::plain("cbs.echo.say", true)]
#[case::star_token("cbs.*.say", true)]
#[case::tail("cbs.echo.>", true)]
#[case::only_tail(">", true)]
#[case::unicode_letters("cbs.échø.say", true)]
#[case::empty_token("cbs..say", false)]
#[case::trailing_dot("cbs.echo.", false)]
#[case::leading_dot(".cbs", false)]
#[case::tail_not_last("cbs.>.say", false)]
#[case::star_inside_a_token("cbs.ec*o", false)]
#[case::tail_inside_a_token("cbs.echo>", false)]
#[case::space("cbs.echo say", false)]
#[case::tab("cbs.echo\tsay", false)]
#[case::vertical_tab("cbs.echo\u{b}say", false)]
#[case::next_line("cbs.echo\u{85}say", false)]
#[case::no_break_space("cbs.echo\u{a0}say", false)]
#[case::line_separator("cbs.echo\u{2028}say", false)]
#[case::ideographic_space("cbs.echo\u{3000}say", false)]
fn the_call_pattern_rule_and_the_runtimes_check_agree(#[case] pattern: &str, #[case] ok: bool) {
    assert_eq!(
        cellbus_contracts::subject::check_subject_pattern(pattern).is_ok(),
        ok
    );
    let mut cell = manifest::parse_yaml(
        &std::fs::read_to_string(repo().join("examples/echo/cell.yaml")).unwrap(),
    )
    .unwrap()
    .remove(0);
    cell["spec"]["capabilities"] = serde_json::json!({ "call": [pattern] });
    let refusals = cel_refusals(&crd_schema("Cell"), &cell, None);
    assert_eq!(refusals.is_empty(), ok, "{refusals:?}");
}

#[test]
fn no_cel_rule_is_estimated_over_the_api_servers_budget() {
    for kind in ["Cell", "CellPool"] {
        let schema = crd_schema(kind);
        let compiled = kube_cel::compile_schema(&schema);
        let mut rules = Vec::new();
        collect_rules(&schema, &mut rules);
        assert!(!rules.is_empty(), "{kind} has no CEL rule");
        for rule in rules {
            let warnings = kube_cel::estimate_rule_cost(&rule, &compiled);
            assert!(warnings.is_empty(), "{kind}: {rule}: {warnings:?}");
        }
    }
}

fn collect_rules(schema: &Value, into: &mut Vec<String>) {
    match schema {
        Value::Object(map) => {
            if let Some(Value::Array(rules)) = map.get("x-kubernetes-validations") {
                into.extend(rules.iter().map(|r| r["rule"].as_str().unwrap().to_owned()));
            }
            map.values().for_each(|v| collect_rules(v, into));
        }
        Value::Array(items) => items.iter().for_each(|v| collect_rules(v, into)),
        _ => {}
    }
}

#[test]
fn cellbus_check_refuses_every_bad_manifest_naming_the_field() {
    let mut wrong = Vec::new();
    for fixture in fixtures() {
        let checked = manifest::check_with(&fixture.documents, &SignatureCheck::now());
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
