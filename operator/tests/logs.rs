//! The operator's log lines: with `--log-format json` (the chart's `logFormat: json`)
//! each is one JSON object a log collector can read, with its fields; text by default.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

/// The first `count` lines the operator logs while it tries an API server that is not
/// there, started with `args`.
fn first_lines(args: &[&str], count: usize) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\n\
         clusters: [{name: c, cluster: {server: 'http://127.0.0.1:1'}}]\n\
         users: [{name: u, user: {token: t}}]\n\
         contexts: [{name: c, context: {cluster: c, user: u, namespace: default}}]\n\
         current-context: c\n",
    )
    .unwrap();
    let mut operator = Command::new(env!("CARGO_BIN_EXE_cellbus-operator"))
        .args(args)
        .arg("run")
        .env("KUBECONFIG", &kubeconfig)
        .env("CELLBUS_METRICS_ADDRESS", "127.0.0.1:0")
        .env_remove("CELLBUS_LOG_FORMAT")
        .env_remove("RUST_LOG")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let lines: Vec<String> = BufReader::new(operator.stderr.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .take(count)
        .collect();
    operator.kill().unwrap();
    operator.wait().unwrap();
    lines
}

#[test]
fn with_json_each_log_line_is_an_object_with_its_fields() {
    let lines = first_lines(&["--log-format", "json"], 2);
    assert_eq!(lines.len(), 2, "{lines:?}");
    for line in &lines {
        let object: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
        assert!(object["level"].is_string(), "{line}");
        assert!(object["fields"]["message"].is_string(), "{line}");
    }
    assert!(
        lines.iter().any(|l| l.contains("\"address\":\"127.0.0.1:")),
        "{lines:?}"
    );
}

#[test]
fn by_default_log_lines_are_text() {
    let lines = first_lines(&[], 1);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        serde_json::from_str::<serde_json::Value>(&lines[0]).is_err(),
        "{lines:?}"
    );
    assert!(lines[0].contains("INFO"), "{lines:?}");
}
