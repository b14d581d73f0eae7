//! The runtime's own memory while a wasm cell with `limits.memory: 32Mi` asks a real
//! PostgreSQL for millions of rows: it grows by a few times the cell's memory at most,
//! whatever the query would return. Alone in its binary, since the peak it reads belongs
//! to the whole process.

mod support;

use std::sync::Arc;

use cellbus_contracts::wire::ErrorCode;
use cellbus_runtime::db::Databases;
use serde_json::json;
use support::database::*;
use support::*;

const CELL_MEMORY: u64 = 32 << 20;

/// A field of /proc/self/status, in bytes.
fn status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"));
    let kib: u64 = line
        .trim_start_matches(&format!("{field}:"))
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    kib << 10
}

/// Resets the process's peak resident memory to what it holds now, and returns that.
fn reset_peak() -> u64 {
    // Writing 5 to clear_refs resets VmHWM (Linux 4.0 and later).
    std::fs::write("/proc/self/clear_refs", "5").expect("resetting VmHWM");
    status_bytes("VmRSS")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn millions_of_rows_grow_the_runtime_by_a_few_times_the_cells_memory_at_most() {
    let db = Database::start().await;
    db.provision("alpha", &access("readOnly"), false).await;
    let mut bus = Bus::start().await;
    bus.node.shared.databases = Arc::new(Databases::new(Some(db.secrets.clone())));
    let server = bus
        .deploy(&[TestCell::new(
            "alpha",
            json!([{"name": "sql", "timeoutMs": 60000}]),
            sql_cell(),
            json!({"database": {"access": "readOnly"}, "limits": {"memory": "32Mi"}}),
        )])
        .await;
    let sql = |statement: &'static str| bus.call("alpha", "sql", json!(statement));
    assert_eq!(sql("SELECT 1 AS one").await.unwrap(), json!([{"one": 1}]));

    let before = reset_peak();
    for (statement, cap) in [
        // 2 million small rows: past the row cap.
        ("SELECT n FROM generate_series(1, 2000000) n", "rows"),
        // 200,000 rows of a kilobyte: past the cell's memory.
        (
            "SELECT n, repeat('x', 1000) AS x FROM generate_series(1, 200000) n",
            "bytes",
        ),
    ] {
        let error = sql(statement).await.unwrap_err();
        assert_eq!(error.code, ErrorCode::ResourceExhausted, "{error:?}");
        assert_eq!(
            error.details.as_ref().map(|d| d["cap"].clone()),
            Some(json!(cap)),
            "{error:?}"
        );
    }
    let growth = status_bytes("VmHWM").saturating_sub(before);
    println!(
        "peak growth {} MiB for a cell of {} MiB",
        growth >> 20,
        CELL_MEMORY >> 20
    );
    assert!(
        growth <= 4 * CELL_MEMORY,
        "the runtime grew by {} MiB for a cell of {} MiB",
        growth >> 20,
        CELL_MEMORY >> 20
    );

    db.wait_until_not_running("alpha", "%generate_series%", 10)
        .await;
    assert_eq!(sql("SELECT 2 AS two").await.unwrap(), json!([{"two": 2}]));
    server.shutdown().await;
}
