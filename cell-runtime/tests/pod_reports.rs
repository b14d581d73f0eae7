//! A runtime pod's report in `cbs-status`: written again now and then, changed or not, so
//! the operator can tell a live pod from a gone one, and removed when the pod stops.

mod support;

use std::time::Duration;

use cellbus_contracts::status::status_key;
use serde_json::json;
use support::{eventually, logs, Bus, TestCell, NAMESPACE, POOL};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_renews_its_report_and_removes_it_when_it_stops() {
    logs();
    let mut bus = Bus::start().await;
    bus.node.shared.report_every = Duration::from_millis(200);
    let server = bus.deploy(&[TestCell::echo(json!({}))]).await;
    let status = bus.node.shared.buckets.status.clone();
    let key = status_key(NAMESPACE, POOL, "pod-0");
    let revision = async || {
        status
            .entry(&key)
            .await
            .unwrap()
            .map_or(0, |entry| entry.revision)
    };
    let first = revision().await;
    assert!(first > 0, "no report");
    eventually(10, "the unchanged report written twice more", async || {
        revision().await >= first + 2
    })
    .await;

    server.shutdown().await;
    assert_eq!(
        status.get(&key).await.unwrap(),
        None,
        "the stopped pod's report stayed"
    );
}
