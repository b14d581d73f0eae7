//! The committed CRDs and JSON Schemas are what the code generates.

use std::path::Path;

use cellbus_operator::crdgen;

#[test]
fn committed_crds_and_schemas_match_the_code() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut stale = Vec::new();
    for file in crdgen::files().unwrap() {
        let committed = std::fs::read_to_string(root.join(&file.path)).unwrap_or_default();
        if committed != file.contents {
            stale.push(file.path);
        }
    }
    assert!(
        stale.is_empty(),
        "generated files differ from the code: {}\nregenerate them with: {}",
        stale.join(", "),
        crdgen::REGENERATE
    );
}

#[test]
fn crdgen_prints_both_crds() {
    let stream = crdgen::crds_stream().unwrap();
    let documents: Vec<serde_json::Value> = serde_saphyr::from_str_multiple(&stream).unwrap();
    let names: Vec<&str> = documents
        .iter()
        .map(|d| d["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["cells.cellbus.io", "cellpools.cellbus.io"]);
}

#[test]
fn crds_carry_names_columns_and_subresources() {
    let [cell, pool] = crdgen::crds();
    let cell = serde_json::to_value(cell).unwrap();
    let pool = serde_json::to_value(pool).unwrap();

    assert_eq!(cell["spec"]["scope"], "Namespaced");
    assert_eq!(
        cell["spec"]["names"]["categories"],
        serde_json::json!(["cellbus"])
    );
    assert_eq!(
        pool["spec"]["names"]["shortNames"],
        serde_json::json!(["cpool"])
    );
    assert_eq!(
        pool["spec"]["names"]["categories"],
        serde_json::json!(["cellbus"])
    );

    let columns = |crd: &serde_json::Value| -> Vec<String> {
        crd["spec"]["versions"][0]["additionalPrinterColumns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(columns(&cell), ["Service", "Pool", "Ready", "Age"]);
    assert_eq!(
        columns(&pool),
        ["Runtime", "OS", "Replicas", "Ready", "Age"]
    );

    assert!(cell["spec"]["versions"][0]["subresources"]["status"].is_object());
    let pool_subresources = &pool["spec"]["versions"][0]["subresources"];
    assert!(pool_subresources["status"].is_object());
    assert_eq!(
        pool_subresources["scale"]["specReplicasPath"],
        ".spec.replicas"
    );
}

#[test]
fn every_field_is_documented() {
    fn walk(schema: &serde_json::Value, path: &str, missing: &mut Vec<String>) {
        if let Some(properties) = schema.get("properties").and_then(|p| p.as_object()) {
            for (name, field) in properties {
                let at = format!("{path}.{name}");
                // apiVersion, kind and metadata are described by Kubernetes itself.
                let standard = path.is_empty() && name != "spec" && name != "status";
                if !standard && field.get("description").is_none() {
                    missing.push(at.clone());
                }
                walk(field, &at, missing);
            }
        }
        if let Some(items) = schema.get("items") {
            walk(items, &format!("{path}[]"), missing);
        }
    }
    for crd in crdgen::crds() {
        let crd = serde_json::to_value(crd).unwrap();
        let mut missing = Vec::new();
        walk(
            &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"],
            "",
            &mut missing,
        );
        assert!(
            missing.is_empty(),
            "{}: undocumented {missing:?}",
            crd["metadata"]["name"]
        );
    }
}
