//! Past one NATS server: a three-node JetStream cluster from the testkit (real routes,
//! real RAFT). The buckets keep three copies and survive a node; a runtime connected to
//! every node keeps serving when the node it talks to is killed, within a bound this
//! test measures and prints.

mod support;

use std::time::{Duration, Instant};

use async_nats::jetstream;
use cellbus_contracts::assignment::PoolAssignment;
use cellbus_contracts::resources::CellPoolSpec;
use cellbus_contracts::wire::Request;
use cellbus_control::NatsArgs;
use cellbus_runtime::server::Identity;
use cellbus_runtime::{EngineArgs, Node};
use cellbus_testkit::NatsCluster;
use serde_json::json;
use support::{logs, settle, stream_leader, until_ok, TestCell, MAX_PAYLOAD, NAMESPACE, POOL};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_buckets_keep_three_copies_and_one_node_lost_loses_nothing() {
    logs();
    let mut cluster = NatsCluster::start();
    let client = cellbus_control::connect_once(&NatsArgs::url(cluster.urls()), "test")
        .await
        .unwrap();
    let js = jetstream::new(client.clone());
    let buckets = until_ok("making the buckets", async || {
        cellbus_control::ensure_buckets_replicated(&js, 3).await
    })
    .await;
    for stream in ["KV_cbs-assignments", "KV_cbs-status", "OBJ_cbs-modules"] {
        let info = js
            .get_stream(stream)
            .await
            .unwrap()
            .info()
            .await
            .unwrap()
            .clone();
        assert_eq!(info.config.num_replicas, 3, "{stream}");
        let cluster_info = info.cluster.expect("a clustered stream");
        assert_eq!(cluster_info.replicas.len(), 2, "{stream}: {cluster_info:?}");
    }
    // A runtime opening them as they are does not fight the operator over copies.
    cellbus_control::ensure_buckets(&js).await.unwrap();
    // More copies than servers: said plainly.
    let error = cellbus_control::ensure_buckets_replicated(&js, 5)
        .await
        .err()
        .expect("five copies on three servers");
    assert!(
        cellbus_contracts::error_chain(&error).contains("fewer JetStream servers"),
        "{}",
        cellbus_contracts::error_chain(&error)
    );

    // A module and an assignment written, then the assignments bucket's leader killed:
    // both are still there, read through the other nodes.
    let digest = cellbus_control::push_module(&buckets.modules, support::echo_wasm().as_slice())
        .await
        .unwrap();
    let echo = TestCell::echo(json!({}));
    let assignment = assign(&buckets, &echo).await;
    let leader = stream_leader(&js, "KV_cbs-assignments").await;
    let index = cluster.index_of(&leader).unwrap();
    cluster.kill(index);
    let read = until_ok("reading the assignment without its leader", async || {
        cellbus_control::read_assignment(&buckets.assignments, &assignment.key()).await
    })
    .await;
    assert_eq!(read, Some(assignment));
    let fetched = until_ok("fetching the module without a node", async || {
        cellbus_control::fetch_module(&buckets.modules, &digest).await
    })
    .await;
    assert_eq!(fetched, support::echo_wasm());
    cluster.start_again(index).unwrap();
}

/// Writes the assignment of a wasm pool serving `cell`.
async fn assign(buckets: &cellbus_control::Buckets, cell: &TestCell) -> PoolAssignment {
    let pool: CellPoolSpec = serde_json::from_value(json!({"runtime": "wasm"})).unwrap();
    let assignment =
        PoolAssignment::new(NAMESPACE, POOL, &pool, [(cell.name.as_str(), &cell.spec)]).unwrap();
    cellbus_control::write_assignment(&buckets.assignments, &assignment)
        .await
        .unwrap();
    assignment
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_keeps_serving_when_the_node_it_talks_to_dies() {
    logs();
    let mut cluster = NatsCluster::start();
    let urls = cluster.urls();
    let admin = cellbus_control::connect_once(&NatsArgs::url(&urls), "test")
        .await
        .unwrap();
    let buckets = until_ok("making the buckets", async || {
        cellbus_control::ensure_buckets_replicated(&jetstream::new(admin.clone()), 3).await
    })
    .await;
    let echo = TestCell::echo(json!({}));
    cellbus_control::push_module(&buckets.modules, &echo.module)
        .await
        .unwrap();
    assign(&buckets, &echo).await;

    let cache = tempfile::tempdir().unwrap();
    let node = until_ok("starting the runtime", async || {
        Node::start(
            &NatsArgs::url(&urls),
            &EngineArgs {
                cache_dir: cache.path().to_owned(),
                max_memory: 64 << 20,
                max_instances: 200,
                max_payload: MAX_PAYLOAD,
            },
            "cluster runtime",
        )
        .await
    })
    .await;
    let server = node.serve_pool(Identity {
        namespace: NAMESPACE.into(),
        pool: POOL.into(),
        pod: "pod-0".into(),
    });
    settle(&server, &["echo"]).await;

    // The caller talks to a node the runtime does not, so its own connection lives.
    let serving = node.shared.client.server_info().server_name;
    let victim = cluster.index_of(&serving).expect("the runtime's node");
    let caller_node = (victim + 1) % 3;
    let caller = async_nats::connect(cluster.url(caller_node)).await.unwrap();
    let call = async |text: &str| {
        let request = Request::new("echo", "say", json!({"text": text}));
        let body = serde_json::to_vec(&request).unwrap();
        tokio::time::timeout(
            Duration::from_secs(1),
            caller.request("cbs.echo.say", body.into()),
        )
        .await
    };
    assert!(matches!(call("before").await, Ok(Ok(_))));

    cluster.kill(victim);
    let killed = Instant::now();
    let mut failed = 0;
    let resumed = loop {
        match call("after").await {
            Ok(Ok(message)) => {
                let reply: cellbus_contracts::wire::Reply =
                    serde_json::from_slice(&message.payload).unwrap();
                assert_eq!(reply.into_result().unwrap(), json!({"text": "after"}));
                break killed.elapsed();
            }
            // In flight on the killed node: no responders or a timeout at the caller,
            // never a hang.
            _ => failed += 1,
        }
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "no answer within 30 s of the node's death"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!(
        "cluster: echo answered again {:.2} s after its runtime's node was killed ({failed} calls failed meanwhile)",
        resumed.as_secs_f64()
    );
    let now_on = node.shared.client.server_info().server_name;
    assert_ne!(now_on, serving, "the runtime moved to another node");
    server.shutdown().await;
    cluster.start_again(victim).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cellbus_up_on_a_cluster_keeps_the_copies_it_is_told() {
    logs();
    let cluster = NatsCluster::start();
    let cache = tempfile::tempdir().unwrap();
    let args = cellbus_runtime::up::UpArgs {
        dir: std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/echo"),
        nats_url: Some(cluster.urls()),
        database_url: None,
        pooler: Default::default(),
        replace: false,
        replicas: Some(3),
        engine: EngineArgs {
            cache_dir: cache.path().to_owned(),
            max_memory: 64 << 20,
            max_instances: 50,
            ..EngineArgs::default()
        },
    };
    let up = until_ok("cellbus up on the cluster", async || {
        cellbus_runtime::up::start(&args).await
    })
    .await;
    let js = jetstream::new(up.node.shared.control.clone());
    for stream in ["KV_cbs-assignments", "KV_cbs-status", "OBJ_cbs-modules"] {
        let mut stream = js.get_stream(stream).await.unwrap();
        assert_eq!(stream.info().await.unwrap().config.num_replicas, 3);
    }
    assert!(
        up.report
            .iter()
            .any(|line| line.starts_with("serving cbs.echo.say")),
        "{:?}",
        up.report
    );
    up.shutdown().await;
}
