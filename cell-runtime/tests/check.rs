//! `cellbus check` accepts the examples and refuses a bad manifest with a message naming
//! the field, the object and the file problem, exiting non-zero.

use std::path::Path;
use std::process::{Command, Output};

fn cellbus(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cellbus"))
        .args(args)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn check_accepts_the_examples() {
    let output = cellbus(&["check", "examples"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    assert!(stdout.contains("ok      Cell default/echo"), "{stdout}");
    assert!(stdout.contains("ok      CellPool default/wasm"), "{stdout}");
}

#[test]
fn check_refuses_a_bad_manifest_naming_object_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("cell.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: cellbus.io/v1alpha1\nkind: Cell\nmetadata: {name: shout, namespace: shop}\n\
         spec:\n  service: shout\n  verbs: [{name: 'a.b'}]\n  module: {digest: 'sha256:abc'}\n",
    )
    .unwrap();
    let output = cellbus(&["check", manifest.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("invalid Cell shop/shout: spec.verbs[0].name:"),
        "{stderr}"
    );
    assert!(
        stderr.contains("invalid Cell shop/shout: spec.module.digest:"),
        "{stderr}"
    );
}

#[test]
fn check_reports_unreadable_and_empty_inputs() {
    let output = cellbus(&["check", "/nonexistent/cells"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output.stderr).contains("cellbus: reading /nonexistent/cells: No such file"),
        "{}",
        text(&output.stderr)
    );

    let dir = tempfile::tempdir().unwrap();
    let output = cellbus(&["check", dir.path().to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stderr).contains("holds no YAML manifest"));

    std::fs::write(dir.path().join("broken.yaml"), "kind: [unclosed").unwrap();
    let output = cellbus(&["check", dir.path().to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("broken.yaml: not YAML"), "{stderr}");
}

#[test]
fn check_refuses_a_service_and_a_schema_claimed_twice_naming_the_first_cell() {
    let dir = tempfile::tempdir().unwrap();
    let cell = |namespace: &str, name: &str| {
        format!(
            "apiVersion: cellbus.io/v1alpha1\nkind: Cell\nmetadata: {{name: {name}, namespace: {namespace}}}\n\
             spec:\n  service: visits\n  verbs: [{{name: hit}}]\n  module: {{digest: 'sha256:{}'}}\n  database: {{}}\n",
            "e".repeat(64)
        )
    };
    std::fs::write(dir.path().join("a.yaml"), cell("shop", "visits")).unwrap();
    std::fs::write(dir.path().join("b.yaml"), cell("blog", "visits")).unwrap();
    let output = cellbus(&["check", dir.path().to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains(
            "invalid Cell blog/visits: spec.service: service visits is already claimed by Cell shop/visits"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "invalid Cell blog/visits: spec.database.schema: schema visits (the default, from spec.service) is already claimed by Cell shop/visits"
        ),
        "{stderr}"
    );
}
