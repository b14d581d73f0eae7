//! `cellbus-operator render`: the objects it prints for the examples and for a Windows
//! pool, that every one of them passes `kubernetes-validate --strict`, and that invalid
//! manifests fail it with the object and field named.

use std::path::{Path, PathBuf};
use std::process::Command;

use cellbus_contracts::manifest;
use cellbus_operator::builders::{Retention, Storage};
use cellbus_operator::render::{self, placeholder_uid, Rendered};
use cellbus_operator::Config;
use serde_json::Value;

/// The pinned validator, installed into the repository's .venv by scripts/setup.
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";
/// The oldest Kubernetes the rendered objects must be valid for, and the newest the
/// validator knows.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.32.0", "1.37.0"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn echo_example() -> PathBuf {
    repo().join("examples/echo")
}

/// A Windows pool of process cells with its own NATS Secret, resources, a node selector
/// and a toleration; a durable cell on it; a cell whose pool is not in the manifests; and
/// a Secret, which render passes over.
const WINDOWS_MANIFESTS: &str = r#"
apiVersion: cellbus.io/v1alpha1
kind: CellPool
metadata:
  name: native
  namespace: shop
spec:
  runtime: process
  os: windows
  replicas: 1
  resources:
    requests: { cpu: 500m, memory: 256Mi }
    limits: { memory: 2Gi }
  nodeSelector:
    node.kubernetes.io/windows-build: "10.0.20348"
  tolerations:
    - key: dedicated
      operator: Equal
      value: cells
      effect: NoSchedule
  nats:
    credentialsSecret: shop-nats
  sandbox:
    timeoutMs: 60000
---
apiVersion: cellbus.io/v1alpha1
kind: Cell
metadata:
  name: orders
  namespace: shop
spec:
  service: orders
  poolRef: native
  verbs:
    - name: get
    - name: ingest
      delivery: durable
      retry: { maxDeliver: 5, backoffMs: [1000, 5000] }
  module:
    command: ["C:\\cells\\orders.exe"]
  stream:
    duplicateWindowSeconds: 300
    maxAgeSeconds: 86400
    replicas: 3
---
apiVersion: cellbus.io/v1alpha1
kind: Cell
metadata:
  name: ledger
  namespace: shop
spec:
  service: ledger
  poolRef: elsewhere
  verbs:
    - name: append
  module:
    digest: sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa
---
apiVersion: v1
kind: Secret
metadata:
  name: shop-nats
  namespace: shop
stringData:
  token: s3cret
"#;

fn render_windows() -> Rendered {
    let documents = manifest::parse_yaml(WINDOWS_MANIFESTS).unwrap();
    render::render(&documents, &Config::default()).unwrap()
}

/// The Kubernetes objects of a rendered stream, as `(kind, namespace/name)`.
fn kinds_and_names(yaml: &str) -> Vec<(String, String)> {
    manifest::parse_yaml(yaml)
        .unwrap()
        .iter()
        .map(|object| {
            let text = |pointer: &str| object.pointer(pointer).and_then(Value::as_str).unwrap();
            (
                text("/kind").to_owned(),
                format!("{}/{}", text("/metadata/namespace"), text("/metadata/name")),
            )
        })
        .collect()
}

fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    expected
        .iter()
        .map(|(kind, name)| ((*kind).to_owned(), (*name).to_owned()))
        .collect()
}

/// The operator's binary, with none of the settings it reads from the environment, so the
/// output does not depend on the shell the tests run in.
fn operator() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cellbus-operator"));
    for name in [
        "CELLBUS_RUNTIME_IMAGE",
        "CELLBUS_RUNTIME_IMAGE_WINDOWS",
        "NATS_URL",
        "NATS_CREDENTIALS_SECRET",
        "WATCH_NAMESPACES",
        "CELLBUS_LEASE_NAME",
        "CELLBUS_RUNTIME_PORT",
        "CELLBUS_RUNTIME_CPU_REQUEST",
        "CELLBUS_RUNTIME_CPU_LIMIT",
        "CELLBUS_RUNTIME_MEMORY_REQUEST",
        "CELLBUS_RUNTIME_MEMORY_LIMIT",
    ] {
        command.env_remove(name);
    }
    command
}

#[test]
fn render_prints_the_echo_pool_objects_and_the_echo_cell_plan() {
    let output = operator()
        .args(["render", "-f"])
        .arg(echo_example())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "render failed: {stderr}");
    let yaml = String::from_utf8(output.stdout).unwrap();

    assert_eq!(
        kinds_and_names(&yaml),
        pairs(&[
            ("ServiceAccount", "default/cellbus-wasm"),
            ("Deployment", "default/cellbus-wasm"),
            ("Service", "default/cellbus-wasm"),
            // The example pool has two replicas.
            ("PodDisruptionBudget", "default/cellbus-wasm"),
        ])
    );
    assert!(yaml.starts_with("# Rendered by `cellbus-operator render`"));
    assert!(yaml.contains("placeholder"), "the header explains the uid");
    assert!(yaml.contains(&format!("uid: {}", placeholder_uid("default", "wasm"))));
    // The NATS side, as comments.
    for line in [
        "# Assignment of CellPool default/wasm (NATS KV cbs-assignments, key default.wasm):",
        "# NATS plan of Cell default/echo:",
        "#   - cbs.echo.say",
        "#   assignmentKey: default.wasm",
        "#   stream: null",
    ] {
        assert!(
            yaml.lines().any(|l| l == line),
            "no line {line:?} in\n{yaml}"
        );
    }
}

#[test]
fn render_of_the_echo_example_assigns_the_echo_cell_to_the_wasm_pool() {
    let documents = render::load(&[echo_example()]).unwrap();
    let rendered = render::render(&documents, &Config::default()).unwrap();
    assert_eq!(rendered.pools.len(), 1);
    let pool = &rendered.pools[0];
    assert_eq!(pool.assignment.key(), "default.wasm");
    let cells: Vec<&str> = pool
        .assignment
        .cells
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(cells, ["echo"]);
    assert_eq!(rendered.cells.len(), 1);
    let echo = &rendered.cells[0];
    assert_eq!(echo.pool.as_deref(), Some("wasm"));
    assert_eq!(echo.subjects, ["cbs.echo.say"]);
    assert_eq!(echo.stream, None);
}

#[test]
fn rendering_the_same_manifests_twice_prints_the_same_bytes() {
    let first = render::render_paths(&[echo_example()], &Config::default()).unwrap();
    let second = render::render_paths(&[echo_example()], &Config::default()).unwrap();
    assert_eq!(first, second);
}

#[test]
fn a_windows_pool_renders_with_the_windows_image_its_secret_and_its_durable_cell_stream() {
    let rendered = render_windows();
    let yaml = rendered.to_yaml().unwrap();
    assert_eq!(
        kinds_and_names(&yaml),
        pairs(&[
            ("ServiceAccount", "shop/cellbus-native"),
            ("Deployment", "shop/cellbus-native"),
            ("Service", "shop/cellbus-native"),
        ]),
        "one replica, so no PodDisruptionBudget"
    );
    assert!(yaml.contains("#   Secret shop/shop-nats"), "{yaml}");
    assert!(
        !yaml.contains("s3cret"),
        "a passed-over Secret is not printed"
    );

    let deployment = &rendered.pools[0].objects.deployment;
    let pod = deployment.spec.template.spec.as_ref().unwrap();
    assert_eq!(
        pod.containers[0].image.as_deref(),
        Some("ghcr.io/cellbus/cellbus-runtime-windows:0.1.0")
    );
    assert_eq!(
        pod.node_selector.as_ref().unwrap()["kubernetes.io/os"],
        "windows"
    );
    let tolerations: Vec<(Option<&str>, Option<&str>)> = pod
        .tolerations
        .iter()
        .flatten()
        .map(|t| (t.key.as_deref(), t.value.as_deref()))
        .collect();
    assert_eq!(
        tolerations,
        [
            (Some("dedicated"), Some("cells")),
            (Some("os"), Some("windows"))
        ]
    );

    let orders = rendered
        .cells
        .iter()
        .find(|c| c.cell == "shop/orders")
        .unwrap();
    assert_eq!(orders.assignment_key.as_deref(), Some("shop.native"));
    let stream = orders.stream.as_ref().unwrap();
    assert_eq!(stream.name, "CBS_ORDERS");
    assert_eq!(stream.subjects, ["cbs.orders.ingest"]);
    assert_eq!(stream.retention, Retention::WorkQueue);
    assert_eq!(stream.storage, Storage::File);
    assert_eq!(stream.duplicate_window_seconds, 300);
    assert_eq!(stream.max_age_seconds, Some(86_400));
    assert_eq!(stream.replicas, 3);

    let ledger = rendered
        .cells
        .iter()
        .find(|c| c.cell == "shop/ledger")
        .unwrap();
    let not_scheduled = ledger.not_scheduled.as_ref().unwrap();
    assert_eq!(not_scheduled.reason, "PoolNotFound");
    assert_eq!(not_scheduled.message, "CellPool elsewhere does not exist");
    assert!(
        yaml.contains("#   notScheduled:\n#     reason: PoolNotFound\n"),
        "{yaml}"
    );
}

#[test]
fn rendered_objects_pass_kubernetes_validate_strict() {
    let validator = repo().join(".venv/bin/kubernetes-validate");
    assert!(
        validator.exists(),
        "{} is missing; install it with: .venv/bin/pip install {KUBERNETES_VALIDATE} \
         (or run ./scripts/setup)",
        validator.display()
    );
    let version = Command::new(&validator).arg("--version").output().unwrap();
    let pinned = KUBERNETES_VALIDATE.trim_start_matches("kubernetes-validate==");
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        pinned,
        "install the pinned validator with: .venv/bin/pip install {KUBERNETES_VALIDATE}"
    );

    let echo = render::render_paths(&[echo_example()], &Config::default()).unwrap();
    let windows = render_windows().to_yaml().unwrap();
    let with_defaults_changed = render::render_paths(
        &[echo_example()],
        &Config {
            nats_credentials_secret: Some("nats".into()),
            runtime_cpu_limit: Some("2".into()),
            ..Config::default()
        },
    )
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    for (name, yaml, objects) in [
        ("echo.yaml", echo, 4),
        ("windows.yaml", windows, 3),
        ("echo-secret.yaml", with_defaults_changed, 4),
    ] {
        let file = dir.path().join(name);
        std::fs::write(&file, &yaml).unwrap();
        let mut command = Command::new(&validator);
        command.arg("--strict");
        for version in KUBERNETES_VERSIONS {
            command.args(["-k", version]);
        }
        let output = command.arg(&file).output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "kubernetes-validate refused {name}:\n{stdout}{stderr}\n--- {name}:\n{yaml}"
        );
        // A kind it has no schema for is only a warning; every object must have passed.
        let passed = stdout
            .lines()
            .filter(|l| l.contains(" passed for "))
            .count();
        assert_eq!(
            passed,
            objects * KUBERNETES_VERSIONS.len(),
            "not every object of {name} was validated:\n{stdout}{stderr}"
        );
    }
}

#[test]
fn invalid_manifests_fail_render_naming_the_object_and_field() {
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/invalid/service-uppercase.yaml");
    let output = operator()
        .args(["render", "-f"])
        .arg(&fixture)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty(), "nothing is rendered");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("Cell default/echo: spec.service:"),
        "stderr: {stderr}"
    );
}

#[test]
fn a_path_without_manifests_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let error = render::render_paths(&[dir.path().to_owned()], &Config::default()).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!("{} holds no YAML manifest", dir.path().display())
    );
}
