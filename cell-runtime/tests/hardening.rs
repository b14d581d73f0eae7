//! Hostile cells against a real runtime on a real nats-server: replies the bus cannot
//! carry or the cell may not send, and log lines a cell writes to look like the
//! runtime's own. Each is answered with a typed error or contained, and the runtime keeps
//! serving.

mod support;

use cellbus_contracts::wire::{ErrorBody, ErrorCode};
use rstest::rstest;
use serde_json::{json, Value};
use support::*;

/// `handle` replying a JSON string of exactly `len` bytes (quotes included), built in
/// fresh pages of linear memory.
fn string_cell(len: u32) -> Vec<u8> {
    let pages = len / 65536 + 1;
    let body = format!(
        r#"(local $at i32)
    (local.set $at (i32.mul (memory.grow (i32.const {pages})) (i32.const 65536)))
    (memory.fill (local.get $at) (i32.const 0x61) (i32.const {len}))
    (i32.store8 (local.get $at) (i32.const 0x22))
    (i32.store8 (i32.add (local.get $at) (i32.const {last})) (i32.const 0x22))
    (i32.store8 (i32.const 16) (i32.const 0))
    (i32.store (i32.const 20) (local.get $at))
    (i32.store (i32.const 24) (i32.const {len}))
    (i32.const 16)"#,
        last = len - 1
    );
    component(&cell_wat("", "", &body, ""))
}

/// `handle` failing with a `bad-request` cell error whose message has `len` bytes.
fn long_error_cell(len: u32) -> Vec<u8> {
    let pages = len / 65536 + 1;
    // result<string, cell-error>: tag 1, then the record: code (u8), message (ptr, len),
    // details (option: none), retryable.
    let body = format!(
        r#"(local $at i32)
    (local.set $at (i32.mul (memory.grow (i32.const {pages})) (i32.const 65536)))
    (memory.fill (local.get $at) (i32.const 0x65) (i32.const {len}))
    (i32.store8 (i32.const 16) (i32.const 1))
    (i32.store8 (i32.const 20) (i32.const 0))
    (i32.store (i32.const 24) (local.get $at))
    (i32.store (i32.const 28) (i32.const {len}))
    (i32.store8 (i32.const 32) (i32.const 0))
    (i32.store8 (i32.const 44) (i32.const 0))
    (i32.const 16)"#
    );
    component(&cell_wat("", "", &body, ""))
}

/// `handle` logging `text` at info, then replying `null`.
fn logging_cell(text: &str) -> Vec<u8> {
    let imports = r#"(import "cellbus:cell/log@0.1.0" "log" (func $log (param i32 i32 i32)))"#;
    let body = format!(
        r#"(call $log (i32.const 2) (i32.const 1024) (i32.const {len}))
    (i32.store8 (i32.const 16) (i32.const 0))
    (i32.store (i32.const 20) (i32.const 2048))
    (i32.store (i32.const 24) (i32.const 4))
    (i32.const 16)"#,
        len = text.len()
    );
    let escaped: String = text.bytes().map(|b| format!("\\{b:02x}")).collect();
    let data = format!(r#"(data (i32.const 1024) "{escaped}") (data (i32.const 2048) "null")"#);
    component(&cell_wat(imports, "", &body, &data))
}

/// The lines logged under the target `cell`: what cells wrote.
fn cell_lines(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|line| line.contains(" cell: "))
        .collect()
}

fn exhausted(result: Result<Value, ErrorBody>) -> ErrorBody {
    let error = result.expect_err("a reply over its limit was sent");
    assert_eq!(error.code, ErrorCode::ResourceExhausted, "{error:?}");
    assert!(!error.retryable, "{error:?}");
    error
}

#[rstest]
#[case::over_the_bus_max_payload(2 << 20, None, "the reply of 2097152 bytes is over the 1048576-byte limit (the bus's max_payload)")]
#[case::over_the_cells_own_limit(
    10_000,
    Some(4096),
    "is over the 4096-byte limit (the cell's limits.maxReplyBytes)"
)]
#[case::a_cells_limit_above_the_bus_is_the_bus(2 << 20, Some(8 << 20), "over the 1048576-byte limit (the bus's max_payload)")]
#[tokio::test]
async fn a_wasm_reply_over_its_limit_is_answered_resource_exhausted_naming_size_and_limit(
    #[case] len: u32,
    #[case] max_reply_bytes: Option<u32>,
    #[case] message: &str,
) {
    let bus = Bus::start().await;
    let limits = max_reply_bytes.map_or(json!({}), |bytes| json!({"maxReplyBytes": bytes}));
    bus.deploy(&[
        TestCell::new(
            "big",
            json!([{"name": "get"}]),
            string_cell(len),
            json!({"limits": limits}),
        ),
        TestCell::echo(json!({})),
    ])
    .await;

    let error = exhausted(bus.call("big", "get", json!(null)).await);
    assert!(error.message.contains(message), "{}", error.message);
    assert!(error.details.unwrap()["size"].as_u64().unwrap() >= u64::from(len));
    assert_eq!(
        bus.call("echo", "say", json!({"after": 1})).await,
        Ok(json!({"after": 1}))
    );
}

#[tokio::test]
async fn a_reply_within_the_cells_limit_is_sent_whole() {
    let bus = Bus::start().await;
    bus.deploy(&[TestCell::new(
        "big",
        json!([{"name": "get"}]),
        string_cell(3000),
        json!({"limits": {"maxReplyBytes": 4096}}),
    )])
    .await;
    let text = bus.call("big", "get", json!(null)).await.unwrap();
    assert_eq!(text.as_str().unwrap().len(), 2998);
}

#[tokio::test]
async fn a_wasm_error_over_the_limit_is_answered_resource_exhausted() {
    let bus = Bus::start().await;
    bus.deploy(&[TestCell::new(
        "noisy",
        json!([{"name": "fail"}]),
        long_error_cell(2 << 20),
        json!({}),
    )])
    .await;
    let error = exhausted(bus.call("noisy", "fail", json!(null)).await);
    assert!(
        error.message.contains("1048576-byte limit"),
        "{}",
        error.message
    );
}

#[rstest]
#[case::reply_over_the_bus_max_payload(
    "big",
    1_060_000,
    None,
    "1048576-byte limit (the bus's max_payload)"
)]
#[case::error_over_the_bus_max_payload(
    "big-error",
    1_060_000,
    None,
    "1048576-byte limit (the bus's max_payload)"
)]
#[case::reply_over_the_cells_own_limit(
    "big",
    10_000,
    Some(4096),
    "4096-byte limit (the cell's limits.maxReplyBytes)"
)]
#[tokio::test]
async fn a_process_reply_over_its_limit_is_answered_and_the_process_keeps_serving(
    #[case] verb: &str,
    #[case] bytes: u64,
    #[case] max_reply_bytes: Option<u32>,
    #[case] message: &str,
) {
    // A name of this row's own: the rows run at once, and the check below counts the
    // processes of one cell.
    let name = format!("talker-{verb}-{}", max_reply_bytes.unwrap_or(0));
    let bus = Bus::start().await;
    let limits = max_reply_bytes.map_or(json!({}), |bytes| json!({"maxReplyBytes": bytes}));
    bus.deploy(&[TestCell::process(
        &name,
        "well-behaved",
        json!([{"name": verb}, {"name": "echo"}]),
        json!({"limits": limits}),
    )])
    .await;
    let error = exhausted(bus.call(&name, verb, json!({"bytes": bytes})).await);
    assert!(error.message.contains(message), "{}", error.message);
    let pids = processes_marked(&marker(&name));
    assert_eq!(
        bus.call(&name, "echo", json!({"still": "here"})).await,
        Ok(json!({"still": "here"}))
    );
    // The processes of this cell are still there, not replaced.
    let after = processes_marked(&marker(&name));
    assert!(
        !pids.is_empty() && pids.iter().all(|pid| after.contains(pid)),
        "the process was restarted: {pids:?} then {after:?}"
    );
}

#[tokio::test]
async fn a_wasm_cell_cannot_forge_log_lines() {
    let logs = logs();
    let bus = Bus::start().await;
    let forged = "first\nERROR cellbus_runtime::server: forged\r\u{1b}[2Jcleared\u{202e}";
    bus.deploy(&[TestCell::new(
        "forger",
        json!([{"name": "log"}]),
        logging_cell(forged),
        json!({}),
    )])
    .await;
    assert_eq!(
        bus.call("forger", "log", json!(null)).await,
        Ok(json!(null))
    );
    let text = logs.text();
    let line = cell_lines(&text)
        .into_iter()
        .find(|line| line.contains("first"))
        .expect("the cell's line was logged");
    assert!(
        line.contains(r"first\nERROR cellbus_runtime::server: forged\r\u{1b}[2Jcleared\u{202e}"),
        "{line}"
    );
    assert!(
        line.contains("service=\"forger\"") || line.contains("service=forger"),
        "{line}"
    );
    assert!(line.contains("correlation_id="), "{line}");
    assert!(!text
        .lines()
        .any(|l| l.starts_with("ERROR cellbus_runtime::server: forged")));
    assert!(!cell_lines(&text).iter().any(|l| l.contains('\u{1b}')));
}

#[tokio::test]
async fn a_process_cell_cannot_forge_log_lines() {
    let logs = logs();
    let bus = Bus::start().await;
    bus.deploy(&[TestCell::process(
        "scribe",
        "well-behaved",
        json!([{"name": "write-log"}]),
        json!({}),
    )])
    .await;
    let forged = "scribe says\rWARN cellbus_runtime: forged\u{1b}[31m\u{2028}";
    assert_eq!(
        bus.call("scribe", "write-log", json!({"text": forged}))
            .await,
        Ok(json!(null))
    );
    let mut line = None;
    eventually(10, "the cell's stderr line is logged", async || {
        line = cell_lines(&logs.text())
            .into_iter()
            .find(|line| line.contains("scribe says"))
            .map(str::to_owned);
        line.is_some()
    })
    .await;
    let line = line.unwrap();
    assert!(
        line.contains(r"scribe says\rWARN cellbus_runtime: forged\u{1b}[31m\u{2028}"),
        "{line}"
    );
    assert!(!cell_lines(&logs.text())
        .iter()
        .any(|l| l.contains('\u{1b}')));
}
