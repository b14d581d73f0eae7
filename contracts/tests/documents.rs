//! Envelopes and assignments the constructors build match the published JSON Schemas, and
//! pool selection and assignment building follow their documented rules.

use cellbus_contracts::assignment::{assignment_key, PoolAssignment};
use cellbus_contracts::manifest::{self, select_pool, PoolChoiceError};
use cellbus_contracts::resources::{
    CellPoolSpec, CellSpec, Delivery, ModuleSpec, Runtime, SandboxLimits, VerbSpec,
};
use cellbus_contracts::schemas;
use cellbus_contracts::wire::{ErrorBody, ErrorCode, Reply, Request};
use serde_json::{json, Value};

fn schema(file: &str) -> jsonschema::Validator {
    let schema = schemas::all()
        .into_iter()
        .find(|s| s.file == file)
        .unwrap_or_else(|| panic!("no schema {file}"))
        .schema;
    jsonschema::validator_for(&schema).unwrap()
}

fn value(document: &impl serde::Serialize) -> Value {
    serde_json::to_value(document).unwrap()
}

#[test]
fn envelopes_match_their_schemas() {
    let request = Request::new("echo", "say", json!({"text": "hi"})).with_timeout_ms(250);
    let ok = Reply::ok(&request, json!({"text": "hi"}));
    let error = Reply::error(&request, ErrorBody::new(ErrorCode::Timeout, "late"));

    assert!(schema("request.json").is_valid(&value(&request)));
    assert!(schema("reply.json").is_valid(&value(&ok)));
    assert!(schema("reply.json").is_valid(&value(&error)));
    assert!(schema("error.json").is_valid(&value(&error)));
    assert!(!schema("error.json").is_valid(&value(&ok)));
}

#[test]
fn schemas_refuse_envelopes_that_break_the_wire_rules() {
    let request = value(&Request::new("echo", "say", json!(1)));
    let mut extra = request.clone();
    extra["surprise"] = json!(true);
    assert!(!schema("request.json").is_valid(&extra));
    let mut no_payload = request.clone();
    no_payload.as_object_mut().unwrap().remove("payload");
    assert!(!schema("request.json").is_valid(&no_payload));

    let mut unknown_code = value(&Reply::error_for_raw(
        b"x",
        ErrorBody::new(ErrorCode::BadRequest, "x"),
    ));
    unknown_code["error"]["code"] = json!("teapot");
    assert!(!schema("reply.json").is_valid(&unknown_code));
}

fn pool(runtime: Runtime) -> CellPoolSpec {
    serde_json::from_value(json!({ "runtime": runtime })).unwrap()
}

fn cell(service: &str) -> CellSpec {
    CellSpec {
        service: service.into(),
        runtime: None,
        os: None,
        pool_ref: None,
        verbs: vec![VerbSpec {
            name: "say".into(),
            input: None,
            output: None,
            timeout_ms: None,
            delivery: Delivery::Request,
            retry: None,
        }],
        module: ModuleSpec {
            digest: Some(format!("sha256:{}", "a".repeat(64))),
            url: None,
            command: None,
        },
        signature: None,
        limits: None,
        stream: None,
        database: None,
        env: Vec::new(),
        capabilities: Default::default(),
    }
}

#[test]
fn a_cell_without_pool_ref_goes_to_the_one_pool_of_its_runtime_and_os() {
    let (wasm, process) = (pool(Runtime::Wasm), pool(Runtime::Process));
    let pools = [("wasm", &wasm), ("native", &process)];
    assert_eq!(select_pool(&cell("echo"), &pools).unwrap().0, "wasm");

    let mut native = cell("native");
    native.runtime = Some(Runtime::Process);
    assert_eq!(select_pool(&native, &pools).unwrap().0, "native");

    let mut python = cell("py");
    python.runtime = Some(Runtime::Python);
    assert_eq!(
        select_pool(&python, &pools).unwrap_err(),
        PoolChoiceError::NoneMatch {
            runtime: "python",
            os: "linux"
        }
    );
}

#[test]
fn several_matching_pools_or_a_missing_pool_ref_are_named() {
    let (a, b) = (pool(Runtime::Wasm), pool(Runtime::Wasm));
    let pools = [("zeta", &a), ("alpha", &b)];
    let error = select_pool(&cell("echo"), &pools).unwrap_err();
    assert_eq!(
        error.to_string(),
        "several CellPools run wasm on linux (alpha, zeta); set spec.poolRef"
    );

    let mut pinned = cell("echo");
    pinned.pool_ref = Some("zeta".into());
    assert_eq!(select_pool(&pinned, &pools).unwrap().0, "zeta");
    pinned.pool_ref = Some("gone".into());
    assert_eq!(
        select_pool(&pinned, &pools).unwrap_err().to_string(),
        "CellPool gone does not exist"
    );
}

#[test]
fn assignments_are_ordered_and_resolve_limits_against_the_pool() {
    let mut pool = pool(Runtime::Wasm);
    pool.sandbox = SandboxLimits {
        memory: Some("64Mi".into()),
        timeout_ms: Some(5_000),
        max_in_flight: Some(64),
        ..Default::default()
    };
    let mut echo = cell("echo");
    echo.limits = Some(SandboxLimits {
        memory: Some("16Mi".into()),
        ..Default::default()
    });
    echo.database = Some(serde_json::from_value(json!({})).unwrap());
    let mut ledger = cell("ledger");
    ledger.verbs[0].delivery = Delivery::Durable;
    ledger.stream = Some(serde_json::from_value(json!({})).unwrap());

    let forward = PoolAssignment::new(
        "shop",
        "wasm",
        &pool,
        [("ledger", &ledger), ("echo", &echo)],
    )
    .unwrap();
    let backward = PoolAssignment::new(
        "shop",
        "wasm",
        &pool,
        [("echo", &echo), ("ledger", &ledger)],
    )
    .unwrap();
    assert_eq!(
        serde_json::to_string(&forward).unwrap(),
        serde_json::to_string(&backward).unwrap()
    );
    assert_eq!(forward.key(), "shop.wasm");
    assert_eq!(assignment_key("shop", "wasm"), forward.key());

    let [first, second] = forward.cells.as_slice() else {
        panic!("two cells expected")
    };
    assert_eq!(first.service, "echo");
    assert_eq!(first.limits.memory.as_deref(), Some("16Mi"));
    assert_eq!(first.limits.timeout_ms, Some(5_000));
    assert_eq!(
        first.database.as_ref().map(|d| d.secret.as_str()),
        Some("echo-db")
    );
    assert_eq!(first.stream, None);
    assert_eq!(second.stream.as_deref(), Some("CBS_LEDGER"));

    assert!(schema("assignment.json").is_valid(&value(&forward)));
}

#[test]
fn manifests_of_other_kinds_are_passed_over_and_bad_yaml_is_an_error() {
    let documents = manifest::parse_yaml(
        "apiVersion: v1\nkind: Secret\nmetadata: {name: creds}\n---\n# only a comment\n",
    )
    .unwrap();
    let checked = manifest::check(&documents);
    assert!(checked.errors.is_empty());
    assert_eq!(checked.others.len(), 1);
    assert_eq!(checked.others[0].to_string(), "Secret default/creds");

    let error = manifest::parse_yaml("kind: [unclosed").unwrap_err();
    assert!(error.to_string().starts_with("not YAML"), "{error}");
}

#[test]
fn a_cellbus_kind_with_a_foreign_api_version_or_a_bad_name_is_refused() {
    let documents = manifest::parse_yaml(
        "apiVersion: cellbus.io/v9\nkind: CellPool\nmetadata: {name: p}\nspec: {runtime: wasm}\n\
         ---\napiVersion: cellbus.io/v1alpha1\nkind: CellPool\nmetadata: {name: Bad_Name}\nspec: {runtime: wasm}\n",
    )
    .unwrap();
    let fields: Vec<String> = manifest::check(&documents)
        .errors
        .iter()
        .map(|e| e.error.field.clone())
        .collect();
    assert_eq!(fields, ["apiVersion", "metadata.name"]);
}

#[test]
fn the_same_object_twice_is_one_object_and_a_clash_is_an_error() {
    let pool = "apiVersion: cellbus.io/v1alpha1\nkind: CellPool\nmetadata: {name: p}\nspec: {runtime: wasm}\n";
    let twice = manifest::parse_yaml(&format!("{pool}---\n{pool}")).unwrap();
    let checked = manifest::check(&twice);
    assert!(checked.errors.is_empty(), "{:?}", checked.errors);
    assert_eq!(checked.objects.len(), 1);

    let clash = manifest::parse_yaml(&format!(
        "{pool}---\n{}",
        pool.replace("runtime: wasm", "runtime: process")
    ))
    .unwrap();
    let errors = manifest::check(&clash).errors;
    assert_eq!(errors.len(), 1);
    assert_eq!(
        errors[0].to_string(),
        "CellPool default/p: metadata.name: defined twice with different contents"
    );
}
