//! `cellbus check` and `cellbus up` judge a directory as one bus and one database: a
//! service or a database schema claimed by two Cells is refused on the later one, naming
//! the first; names that cannot be Kubernetes names are refused naming the field.

use cellbus_contracts::manifest::{self, Object};
use rstest::rstest;
use serde_json::{json, Value};

fn pool(namespace: &str, name: &str) -> Value {
    json!({
        "apiVersion": "cellbus.io/v1alpha1",
        "kind": "CellPool",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"runtime": "wasm"}
    })
}

/// A Cell; `schema` is `None` for no database, `Some(None)` for a database in the default
/// schema, `Some(Some(name))` for a named one.
fn cell(namespace: &str, name: &str, service: &str, schema: Option<Option<&str>>) -> Value {
    let mut cell = json!({
        "apiVersion": "cellbus.io/v1alpha1",
        "kind": "Cell",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "service": service,
            "verbs": [{"name": "say"}],
            "module": {"digest": format!("sha256:{}", "e".repeat(64))}
        }
    });
    match schema {
        None => {}
        Some(None) => cell["spec"]["database"] = json!({}),
        Some(Some(schema)) => cell["spec"]["database"] = json!({"schema": schema}),
    }
    cell
}

/// Every error as `Kind namespace/name: field: message`.
fn errors(documents: &[Value]) -> Vec<String> {
    manifest::check(documents)
        .errors
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[rstest]
#[case::same_service_twice_in_one_namespace(
    vec![pool("default", "wasm"), cell("default", "echo", "echo", None), cell("default", "echo-two", "echo", None)],
    vec!["Cell default/echo-two: spec.service: service echo is already claimed by Cell default/echo; one Cell per service per bus: rename spec.service or drop one of them"],
)]
#[case::same_service_in_two_namespaces(
    vec![pool("a", "wasm"), pool("b", "wasm"), cell("a", "echo", "echo", None), cell("b", "echo", "echo", None)],
    vec!["Cell b/echo: spec.service: service echo is already claimed by Cell a/echo; one Cell per service per bus: rename spec.service or drop one of them"],
)]
#[case::same_named_schema_in_two_namespaces(
    vec![pool("a", "wasm"), pool("b", "wasm"), cell("a", "orders", "orders", Some(Some("shop"))), cell("b", "stock", "stock", Some(Some("shop")))],
    vec!["Cell b/stock: spec.database.schema: schema shop is already claimed by Cell a/orders; one Cell per schema per database: set spec.database.schema to a schema of this Cell's own"],
)]
#[case::default_schema_meets_a_named_one(
    vec![pool("default", "wasm"), cell("default", "orders", "orders", Some(Some("order_book"))), cell("default", "book", "order-book", Some(None))],
    vec!["Cell default/book: spec.database.schema: schema order_book (the default, from spec.service) is already claimed by Cell default/orders; one Cell per schema per database: set spec.database.schema to a schema of this Cell's own"],
)]
#[case::namespace_with_a_dot(
    vec![pool("a.b", "wasm")],
    vec!["CellPool a.b/wasm: metadata.namespace: \"a.b\" is not a DNS label (at most 63 lowercase letters, digits and `-`, starting and ending with a letter or digit)"],
)]
#[case::namespace_with_a_wildcard(
    vec![pool("a.*", "wasm"), cell("a.*", "echo", "echo", None)],
    vec![
        "CellPool a.*/wasm: metadata.namespace: \"a.*\" is not a DNS label (at most 63 lowercase letters, digits and `-`, starting and ending with a letter or digit)",
        "Cell a.*/echo: metadata.namespace: \"a.*\" is not a DNS label (at most 63 lowercase letters, digits and `-`, starting and ending with a letter or digit)",
    ],
)]
#[case::namespace_too_long(
    vec![pool(&"n".repeat(64), "wasm")],
    vec![format!("CellPool {}/wasm: metadata.namespace: \"{}\" is not a DNS label (at most 63 lowercase letters, digits and `-`, starting and ending with a letter or digit)", "n".repeat(64), "n".repeat(64))],
)]
#[case::pool_name_with_an_underscore(
    vec![pool("default", "my_pool")],
    vec!["CellPool default/my_pool: metadata.name: \"my_pool\" is not a DNS subdomain (lowercase letters, digits, `-` and `.`)"],
)]
#[case::cell_name_in_capitals(
    vec![pool("default", "wasm"), cell("default", "Echo", "echo", None)],
    vec!["Cell default/Echo: metadata.name: \"Echo\" is not a DNS subdomain (lowercase letters, digits, `-` and `.`)"],
)]
fn a_directory_is_refused_what_one_bus_and_one_database_cannot_hold(
    #[case] documents: Vec<Value>,
    #[case] expected: Vec<impl AsRef<str>>,
) {
    let expected: Vec<&str> = expected.iter().map(AsRef::as_ref).collect();
    assert_eq!(errors(&documents), expected);
}

#[test]
fn the_first_claim_keeps_its_service_and_schema() {
    let checked = manifest::check(&[
        pool("default", "wasm"),
        cell("default", "first", "echo", Some(None)),
        cell("default", "second", "echo", Some(None)),
    ]);
    let cells: Vec<&str> = checked
        .objects
        .iter()
        .filter_map(|object| match object {
            Object::Cell { at, .. } => Some(at.name.as_str()),
            Object::CellPool { .. } => None,
        })
        .collect();
    assert_eq!(cells, ["first"]);
    // The later Cell is told of both, each naming its field.
    let fields: Vec<&str> = checked
        .errors
        .iter()
        .map(|e| e.error.field.as_str())
        .collect();
    assert_eq!(fields, ["spec.service", "spec.database.schema"]);
}

#[test]
fn namespace_a_with_pool_b_c_and_namespace_a_b_with_pool_c_are_both_accepted_apart() {
    // The second pair cannot exist (a namespace is a DNS label), and the first keeps its
    // own key, so the two never meet on one assignment key.
    let checked = manifest::check(&[pool("a", "b.c"), pool("a.b", "c")]);
    assert_eq!(checked.objects.len(), 1, "{:?}", checked.errors);
    assert_eq!(checked.errors[0].error.field, "metadata.namespace");
    assert_eq!(
        cellbus_contracts::assignment::assignment_key("a", "b.c"),
        "a.b_c"
    );
}
