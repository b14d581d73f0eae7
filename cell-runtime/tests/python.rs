//! Python cells (feature `python`: `cargo test -p cellbus-runtime --features python --test
//! python`): modules run by the CPython embedded in the runtime, through the bus and
//! through `cellbus up`.

#![cfg(feature = "python")]

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cellbus_contracts::wire::ErrorCode;
use serde_json::json;
use support::*;

const HELLO: &str = r#"
import cellbus

greeted = []

def handle(verb, payload):
    if verb == "hello":
        if not payload.get("name"):
            raise cellbus.CellError("bad_request", "name is required", details={"field": "name"})
        greeted.append(payload["name"])
        return {"greeting": f"Hello, {payload['name']}!", "count": len(greeted)}
    if verb == "crash":
        return 1 / 0
    if verb == "spin":
        while True:
            pass
    if verb == "odd":
        return {1, 2}
    raise cellbus.CellError("unknown_verb", verb)
"#;

fn python_cell(service: &str, source: &str, timeout_ms: u32) -> TestCell {
    let verbs: Vec<_> = ["hello", "crash", "spin", "odd"]
        .iter()
        .map(|name| json!({"name": name, "timeoutMs": timeout_ms}))
        .collect();
    let mut cell = TestCell::new(service, json!(verbs), source.as_bytes().to_vec(), json!({}));
    cell.runtime = "python";
    cell
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_cell_answers_errors_and_times_out_like_any_cell() {
    let bus = Bus::start().await;
    let server = bus
        .deploy(&[
            python_cell("hello", HELLO, 1500),
            python_cell("other", HELLO, 1500),
        ])
        .await;

    assert_eq!(
        bus.call("hello", "hello", json!({"name": "Ada"}))
            .await
            .unwrap(),
        json!({"greeting": "Hello, Ada!", "count": 1})
    );
    // Each cell has its own module globals.
    assert_eq!(
        bus.call("other", "hello", json!({"name": "Bo"}))
            .await
            .unwrap()["count"],
        json!(1)
    );
    let refused = bus.call("hello", "hello", json!({})).await.unwrap_err();
    assert_eq!(refused.code, ErrorCode::BadRequest, "{refused:?}");
    assert_eq!(refused.details, Some(json!({"field": "name"})));
    let crashed = bus.call("hello", "crash", json!({})).await.unwrap_err();
    assert_eq!(crashed.code, ErrorCode::CellFailed);
    assert_eq!(crashed.message, "ZeroDivisionError: division by zero");
    let odd = bus.call("hello", "odd", json!({})).await.unwrap_err();
    assert_eq!(odd.code, ErrorCode::CellFailed, "{odd:?}");

    // A loop is interrupted at its deadline, and the interpreter serves on.
    let started = Instant::now();
    let spun = bus.call("hello", "spin", json!({})).await.unwrap_err();
    assert_eq!(spun.code, ErrorCode::Timeout, "{spun:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(
        bus.call("hello", "hello", json!({"name": "Cy"}))
            .await
            .unwrap()["count"],
        json!(2)
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_without_handle_does_not_load_and_says_why() {
    let bus = Bus::start().await;
    let server = bus.deploy(&[python_cell("empty", "x = 1\n", 1000)]).await;
    let state = server
        .states()
        .into_iter()
        .find(|s| s.service == "empty")
        .unwrap();
    assert!(
        state
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("handle")),
        "{state:?}"
    );
    server.shutdown().await;
}

/// `cellbus up` on a directory holding a python pool, a Cell and its module file.
#[test]
fn a_python_cell_answers_through_cellbus_up() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hello.py"), HELLO).unwrap();
    let digest = cellbus_control::digest_of(HELLO.as_bytes());
    std::fs::write(
        dir.path().join("cells.yaml"),
        format!(
            "apiVersion: cellbus.io/v1alpha1\nkind: CellPool\nmetadata: {{name: python}}\n\
             spec: {{runtime: python}}\n---\n\
             apiVersion: cellbus.io/v1alpha1\nkind: Cell\nmetadata: {{name: hello}}\n\
             spec:\n  service: hello\n  runtime: python\n  verbs: [{{name: hello}}]\n  module: {{digest: \"{digest}\"}}\n"
        ),
    )
    .unwrap();
    let nats = cellbus_testkit::NatsServer::start();
    let cache = tempfile::tempdir().unwrap();
    let mut up = Command::new(env!("CARGO_BIN_EXE_cellbus"))
        .args(["up", dir.path().to_str().unwrap()])
        .env("NATS_URL", nats.url())
        .env("CELLBUS_CACHE_DIR", cache.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = up.stdout.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
    let mut printed = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let ready = line.starts_with("ready");
        printed.push(line);
        if ready {
            break;
        }
    }
    assert!(
        printed
            .iter()
            .any(|l| l.starts_with("serving cbs.hello.hello")),
        "{printed:?}"
    );
    let reply = Command::new(env!("CARGO_BIN_EXE_cellbus"))
        .args(["call", "hello.hello", r#"{"name":"Up"}"#])
        .env("NATS_URL", nats.url())
        .output()
        .unwrap();
    let payload: serde_json::Value = serde_json::from_slice(&reply.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&reply.stderr)));
    assert_eq!(payload, json!({"greeting": "Hello, Up!", "count": 1}));
    up.kill().unwrap();
    up.wait().unwrap();
}
