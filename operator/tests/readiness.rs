//! Ready comes from the data path: a `$ping` round trip through a real nats-server to a
//! real runtime serving the cell, and the load state the runtime reports in cbs-status.

use std::time::Duration;

use cellbus_contracts::assignment::PoolAssignment;
use cellbus_contracts::resources::{CellPoolSpec, CellSpec};
use cellbus_contracts::status::{status_key, PodStatus};
use cellbus_operator::state::conditions::{reasons, Status};
use cellbus_operator::state::readiness::cell_ready;
use cellbus_runtime::bench::ECHO_WASM;
use cellbus_runtime::server::Identity;
use cellbus_runtime::Node;
use cellbus_testkit::NatsServer;

mod support;
use serde_json::json;

async fn serve(nats: &NatsServer, digest: &str) -> (Node, async_nats::Client) {
    let node = support::runtime_node(nats).await;
    cellbus_control::push_module(&node.shared.buckets.modules, ECHO_WASM)
        .await
        .unwrap();
    let pool: CellPoolSpec = serde_json::from_value(json!({"runtime": "wasm"})).unwrap();
    let cell: CellSpec = serde_json::from_value(json!({
        "service": "echo", "verbs": [{"name": "say"}], "module": {"digest": digest},
    }))
    .unwrap();
    let assignment = PoolAssignment::new("default", "wasm", &pool, [("echo", &cell)]).unwrap();
    cellbus_control::write_assignment(&node.shared.buckets.assignments, &assignment)
        .await
        .unwrap();
    let server = node.serve_pool(Identity {
        namespace: "default".into(),
        pool: "wasm".into(),
        pod: "wasm-0".into(),
    });
    let limit = tokio::time::Instant::now() + Duration::from_secs(60);
    while server.states().is_empty() {
        assert!(
            tokio::time::Instant::now() < limit,
            "the cell did not settle"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let client = async_nats::connect(nats.url()).await.unwrap();
    (node, client)
}

async fn report(node: &Node) -> Vec<PodStatus> {
    let entry = node
        .shared
        .buckets
        .status
        .get(status_key("default", "wasm", "wasm-0"))
        .await
        .unwrap()
        .unwrap();
    vec![serde_json::from_slice(&entry).unwrap()]
}

#[tokio::test]
async fn a_cell_served_with_its_digest_is_ready() {
    let nats = NatsServer::start();
    let digest = cellbus_control::digest_of(ECHO_WASM);
    let (node, client) = serve(&nats, &digest).await;
    let pongs = cellbus_control::ping(&client, "echo", Duration::from_millis(500))
        .await
        .unwrap();
    let ready = cell_ready("echo", "echo", Some(&digest), &pongs, &report(&node).await);
    assert_eq!(ready.status, Status::True, "{}", ready.message);
    assert_eq!(ready.message, "answered $ping from wasm-0");
}

#[tokio::test]
async fn a_module_that_fails_to_load_is_not_ready_and_says_why() {
    let nats = NatsServer::start();
    let missing = format!("sha256:{}", "9".repeat(64));
    let (node, client) = serve(&nats, &missing).await;
    let pongs = cellbus_control::ping(&client, "echo", Duration::from_millis(300))
        .await
        .unwrap();
    assert!(pongs.is_empty());
    let ready = cell_ready("echo", "echo", Some(&missing), &pongs, &report(&node).await);
    assert_eq!(ready.status, Status::False);
    assert_eq!(ready.reason, reasons::NOT_LOADED);
    assert_eq!(
        ready.message,
        format!(
            "pod wasm-0 could not load the module: module {missing} is not in the object store"
        )
    );
}
