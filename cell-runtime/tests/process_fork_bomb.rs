//! A fork bomb in a process cell, in a test binary of its own (it loads the machine): its
//! processes count against the process limit of its own user, not its neighbour's. It is
//! stopped at its deadline with every process of its user, and the cell beside it serves.

#![cfg(target_os = "linux")]

mod support;

use std::time::{Duration, Instant};

use cellbus_contracts::wire::ErrorCode;
use serde_json::json;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_bomb_is_stopped_at_its_deadline_with_every_fork() {
    let bus = Bus::start().await;
    let verbs = json!([{"name": "go", "timeoutMs": 2000}, {"name": "echo"}]);
    let server = bus
        .deploy(&[
            TestCell::process("lines", "well-behaved", verbs.clone(), json!({})),
            TestCell::process("bomb", "fork-bomb", verbs, json!({})),
        ])
        .await;
    assert_eq!(bus.call("lines", "echo", json!(1)).await.unwrap(), json!(1));

    let started = Instant::now();
    let error = bus.call("bomb", "go", json!({})).await.unwrap_err();
    assert_eq!(error.code, ErrorCode::Timeout, "{error:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let mark = marker("bomb");
    let until = Instant::now() + Duration::from_secs(20);
    while !processes_marked(&mark).is_empty() {
        assert!(
            Instant::now() < until,
            "{} forks outlived the deadline",
            processes_marked(&mark).len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(bus.call("lines", "echo", json!(2)).await.unwrap(), json!(2));
    server.shutdown().await;
}
