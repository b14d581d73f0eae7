//! The runtime serving cells through a real nats-server: bad input, malicious cells, the
//! in-flight limit, live assignment changes, the code cache, `$ping`, reconnection and
//! the HTTP endpoints.

mod support;

use std::sync::Arc;
use std::time::Duration;

use cellbus_contracts::status::LoadState;
use cellbus_contracts::wire::{ErrorCode, Reply, Request};
use cellbus_runtime::http::{self, Health};
use rstest::rstest;
use serde_json::{json, Value};
use support::*;

/// The echo cell with an input schema, as the bad-input rows need.
fn schema_echo() -> TestCell {
    TestCell::new(
        "echo",
        json!([{
            "name": "say",
            "input": {
                "type": "object",
                "properties": {"text": {"type": "string"}},
                "required": ["text"],
            },
        }]),
        echo_wasm(),
        json!({}),
    )
}

fn envelope(service: &str, verb: &str, payload: Value) -> Value {
    serde_json::to_value(Request::new(service, verb, payload)).unwrap()
}

fn bytes(value: Value) -> Vec<u8> {
    serde_json::to_vec(&value).unwrap()
}

fn nested(depth: usize) -> Vec<u8> {
    let mut text = String::from(
        r#"{"id":"00000000-0000-4000-8000-000000000000","service":"echo","verb":"say","sentAt":"2026-01-01T00:00:00Z","payload":{"text":"x","deep":"#,
    );
    text.push_str(&"[".repeat(depth));
    text.push_str(&"]".repeat(depth));
    text.push_str("}}");
    text.into_bytes()
}

#[rstest]
#[case::not_json("cbs.echo.say", b"{oops".to_vec(), ErrorCode::BadRequest)]
#[case::not_an_envelope("cbs.echo.say", bytes(json!({"hello": "world"})), ErrorCode::BadRequest)]
#[case::body_names_another_service("cbs.echo.say", bytes(envelope("ledger", "say", json!({"text": "x"}))), ErrorCode::BadRequest)]
#[case::unknown_verb("cbs.echo.shout", bytes(envelope("echo", "shout", json!({"text": "x"}))), ErrorCode::UnknownVerb)]
#[case::payload_breaks_the_input_schema("cbs.echo.say", bytes(envelope("echo", "say", json!({"text": 5}))), ErrorCode::SchemaViolation)]
#[case::oversized_payload("cbs.echo.say", bytes(envelope("echo", "say", json!({"text": "x".repeat(MAX_PAYLOAD)}))), ErrorCode::ResourceExhausted)]
#[case::nested_ten_thousand_deep("cbs.echo.say", nested(10_000), ErrorCode::BadRequest)]
#[case::timeout_zero("cbs.echo.say", bytes({ let mut e = envelope("echo", "say", json!({"text": "x"})); e["timeoutMs"] = json!(0); e }), ErrorCode::BadRequest)]
#[case::timeout_beyond_u64("cbs.echo.say", bytes({ let mut e = envelope("echo", "say", json!({"text": "x"})); e["timeoutMs"] = json!(18446744073709551616.0_f64); e }), ErrorCode::BadRequest)]
#[case::invalid_utf8("cbs.echo.say", { let mut b = bytes(envelope("echo", "say", json!({"text": "x"}))); let at = b.len() - 5; b[at] = 0xff; b }, ErrorCode::BadRequest)]
#[tokio::test]
async fn bad_input_gets_its_error_code_and_the_next_request_is_served(
    #[case] subject: &str,
    #[case] body: Vec<u8>,
    #[case] code: ErrorCode,
) {
    let bus = Bus::start().await;
    bus.deploy(&[schema_echo()]).await;
    match bus.send(subject, body).await {
        Reply::Err(reply) => {
            assert_eq!(reply.error.code, code, "{}", reply.error.message);
            if code == ErrorCode::SchemaViolation {
                assert_eq!(reply.error.details.unwrap()[0]["path"], "/text");
            }
        }
        Reply::Ok(reply) => panic!("expected {code:?}, got {:?}", reply.payload),
    }
    assert_eq!(
        bus.call("echo", "say", json!({"text": "next"}))
            .await
            .unwrap(),
        json!({"text": "next"})
    );
}

#[tokio::test]
async fn a_timeout_of_two_to_the_63_ms_is_bounded_by_the_verb_and_served() {
    let bus = Bus::start().await;
    bus.deploy(&[schema_echo()]).await;
    let mut request = envelope("echo", "say", json!({"text": "patient"}));
    request["timeoutMs"] = json!(1u64 << 63);
    let reply = bus.send("cbs.echo.say", bytes(request)).await;
    assert_eq!(reply.into_result().unwrap(), json!({"text": "patient"}));
}

#[tokio::test]
async fn a_request_without_a_reply_subject_is_dropped_and_counted() {
    let bus = Bus::start().await;
    bus.deploy(&[schema_echo()]).await;
    let dropped = || {
        bus.node
            .shared
            .metrics
            .dropped
            .with_label_values(&["no_reply_subject"])
            .get()
    };
    bus.client
        .publish(
            "cbs.echo.say",
            bytes(envelope("echo", "say", json!({"text": "x"}))).into(),
        )
        .await
        .unwrap();
    bus.client.flush().await.unwrap();
    eventually(10, "the drop to be counted", async || dropped() == 1).await;
    assert!(bus.call("echo", "say", json!({"text": "x"})).await.is_ok());
}

#[tokio::test]
async fn a_full_cell_answers_resource_exhausted_at_once_and_none_hang() {
    let bus = Bus::start().await;
    let slow = TestCell::new(
        "slow",
        json!([{"name": "work"}]),
        constant_cell(r#"{"done":true}"#, 3_000_000),
        json!({"limits": {"maxInFlight": 4}}),
    );
    bus.deploy(&[slow, schema_echo()]).await;
    let requests = (0..1000).map(|_| bus.call("slow", "work", json!(null)));
    let replies =
        tokio::time::timeout(Duration::from_secs(60), futures::future::join_all(requests))
            .await
            .expect("every one of 1000 requests is answered");
    let ok = replies.iter().filter(|r| r.is_ok()).count();
    let exhausted = replies
        .iter()
        .filter(|r| matches!(r, Err(e) if e.code == ErrorCode::ResourceExhausted && e.retryable))
        .count();
    assert_eq!(
        ok + exhausted,
        1000,
        "only ok and resource_exhausted replies"
    );
    assert!(ok >= 4, "{ok} served");
    assert!(exhausted > 0, "the excess is refused");
    assert!(bus.call("echo", "say", json!({"text": "x"})).await.is_ok());
}

/// Hostile cells, each with the error code that contains it.
fn hostile(case: &str) -> (TestCell, ErrorCode) {
    let verbs = json!([{"name": "go", "timeoutMs": 300}]);
    let cell = |module, extra| TestCell::new("hostile", verbs.clone(), module, extra);
    match case {
        "infinite_loop" => (
            cell(component(&cell_wat("", "", "(loop $l (br $l)) (i32.const 16)", "")), json!({})),
            ErrorCode::Timeout,
        ),
        "memory_growth" => (
            cell(
                component(&cell_wat(
                    "",
                    "",
                    "(loop $l (br_if $l (i32.ne (memory.grow (i32.const 16)) (i32.const -1)))) unreachable",
                    "",
                )),
                json!({"limits": {"memory": "4Mi"}}),
            ),
            ErrorCode::ResourceExhausted,
        ),
        "stack_overflow" => (
            cell(
                component(&cell_wat(
                    "",
                    "(func $down (param i32) (result i32) (call $down (i32.add (local.get 0) (i32.const 1))))",
                    "(call $down (i32.const 0))",
                    "",
                )),
                json!({}),
            ),
            ErrorCode::CellFailed,
        ),
        "unreachable" => (
            cell(component(&cell_wat("", "", "unreachable", "")), json!({})),
            ErrorCode::CellFailed,
        ),
        "output_not_json" => (cell(constant_cell("not json", 0), json!({})), ErrorCode::CellFailed),
        "call_not_granted" => (
            cell(
                calling_cell("ledger", "append", "{}"),
                json!({"capabilities": {"call": ["cbs.echo.say"]}}),
            ),
            ErrorCode::Forbidden,
        ),
        other => panic!("no hostile cell {other}"),
    }
}

#[rstest]
#[case::infinite_loop("infinite_loop")]
#[case::memory_growth("memory_growth")]
#[case::stack_overflow("stack_overflow")]
#[case::unreachable("unreachable")]
#[case::output_not_json("output_not_json")]
#[case::call_not_granted("call_not_granted")]
#[tokio::test]
async fn a_hostile_cell_is_contained_with_a_typed_error_and_others_keep_answering(
    #[case] case: &str,
) {
    let bus = Bus::start().await;
    let (cell, code) = hostile(case);
    let server = bus.deploy(&[cell, schema_echo()]).await;
    assert!(loaded(&server.states(), "hostile"), "{:?}", server.states());
    for _ in 0..2 {
        let error = bus.call("hostile", "go", json!({})).await.unwrap_err();
        assert_eq!(error.code, code, "{}", error.message);
        assert_eq!(
            bus.call("echo", "say", json!({"text": "still here"}))
                .await
                .unwrap(),
            json!({"text": "still here"})
        );
    }
}

#[tokio::test]
async fn output_breaking_the_output_schema_is_cell_failed_with_the_path() {
    let bus = Bus::start().await;
    let strict = TestCell::new(
        "echo",
        json!([{"name": "say", "output": {"type": "object", "required": ["reply"]}}]),
        echo_wasm(),
        json!({}),
    );
    bus.deploy(&[strict]).await;
    let error = bus
        .call("echo", "say", json!({"text": "x"}))
        .await
        .unwrap_err();
    assert_eq!(error.code, ErrorCode::CellFailed);
    assert_eq!(error.details.unwrap()[0]["path"], "");
}

#[tokio::test]
async fn a_granted_call_reaches_the_other_cell_in_the_same_conversation() {
    let bus = Bus::start().await;
    let relay = TestCell::new(
        "relay",
        json!([{"name": "go"}]),
        calling_cell("echo", "say", r#"{"text":"via relay"}"#),
        json!({"capabilities": {"call": ["cbs.echo.*"]}}),
    );
    bus.deploy(&[relay, TestCell::echo(json!({}))]).await;
    assert_eq!(
        bus.call("relay", "go", json!({})).await.unwrap(),
        json!({"text": "via relay"})
    );
}

#[tokio::test]
async fn a_module_whose_bytes_do_not_match_its_digest_is_never_loaded() {
    let bus = Bus::start().await;
    let digest = format!("sha256:{}", "0".repeat(64));
    let mut bytes = echo_wasm();
    bus.node
        .shared
        .buckets
        .modules
        .put(digest.as_str(), &mut bytes.as_slice())
        .await
        .unwrap();
    let mut forged = TestCell::echo(json!({}));
    forged.spec.module.digest = Some(digest.clone());
    bytes.clear();
    // The module is already stored under the forged name; deploy must not re-push it.
    bus.assign(&[]).await;
    let pool: cellbus_contracts::resources::CellPoolSpec =
        serde_json::from_value(json!({"runtime": "wasm"})).unwrap();
    let assignment = cellbus_contracts::assignment::PoolAssignment::new(
        NAMESPACE,
        POOL,
        &pool,
        [("echo", &forged.spec)],
    )
    .unwrap();
    cellbus_control::write_assignment(&bus.node.shared.buckets.assignments, &assignment)
        .await
        .unwrap();
    let server = bus.node.serve_pool(cellbus_runtime::server::Identity {
        namespace: NAMESPACE.into(),
        pool: POOL.into(),
        pod: "pod-0".into(),
    });
    let states = settle(&server, &["echo"]).await;
    assert_eq!(states[0].state, LoadState::Failed);
    let reason = states[0].reason.clone().unwrap();
    assert!(
        reason.contains("not") && reason.contains(&digest),
        "{reason}"
    );
    assert_eq!(
        bus.node.shared.executor.compiles(),
        0,
        "bad bytes are never compiled"
    );

    // The operator reads the same report from cbs-status.
    let status = bus
        .node
        .shared
        .buckets
        .status
        .get("test.pool.pod-0")
        .await
        .unwrap()
        .unwrap();
    let status: cellbus_contracts::status::PodStatus = serde_json::from_slice(&status).unwrap();
    assert_eq!(status.cells[0].state, LoadState::Failed);
    assert_eq!(status.cells[0].reason.as_deref(), Some(reason.as_str()));
}

#[tokio::test]
async fn a_second_start_with_the_same_cells_compiles_nothing() {
    let bus = Bus::start().await;
    bus.deploy(&[TestCell::echo(json!({}))]).await;
    assert_eq!(bus.node.shared.executor.compiles(), 1);
    assert_eq!(bus.node.shared.executor.cache_hits(), 0);

    let again = node_for(&bus.nats, bus.cache.path()).await;
    let server = again.serve_pool(cellbus_runtime::server::Identity {
        namespace: NAMESPACE.into(),
        pool: POOL.into(),
        pod: "pod-1".into(),
    });
    assert!(loaded(&settle(&server, &["echo"]).await, "echo"));
    assert_eq!(again.shared.executor.compiles(), 0);
    assert_eq!(again.shared.executor.cache_hits(), 1);
}

#[tokio::test]
async fn replacing_a_cell_finishes_in_flight_requests_on_the_old_version() {
    let bus = Bus::start().await;
    let version = |text: &str, spin| {
        TestCell::new(
            "versioned",
            json!([{"name": "which", "timeoutMs": 20000}]),
            constant_cell(text, spin),
            json!({}),
        )
    };
    let server = bus.deploy(&[version(r#""v1""#, 400_000_000)]).await;
    let in_flight = bus.spawn_call("versioned", "which", json!(null));
    tokio::time::sleep(Duration::from_millis(100)).await;
    bus.assign(&[version(r#""v2""#, 0)]).await;
    let v2 = cellbus_control::digest_of(&version(r#""v2""#, 0).module);
    eventually(30, "v2 to load", async || {
        server
            .states()
            .iter()
            .any(|s| s.digest.as_deref() == Some(v2.as_str()) && s.state == LoadState::Loaded)
    })
    .await;
    assert_eq!(
        bus.call("versioned", "which", json!(null)).await.unwrap(),
        json!("v2")
    );
    assert_eq!(in_flight.await.unwrap().into_result().unwrap(), json!("v1"));

    bus.assign(&[]).await;
    eventually(10, "the cell to be removed", async || {
        server.services().is_empty()
    })
    .await;
    let gone = bus
        .client
        .request(
            "cbs.versioned.which",
            bytes(envelope("versioned", "which", json!(null))).into(),
        )
        .await
        .unwrap_err();
    assert_eq!(gone.kind(), async_nats::RequestErrorKind::NoResponders);
}

#[tokio::test]
async fn ping_reports_pod_digest_and_load_time() {
    let bus = Bus::start().await;
    let echo = TestCell::echo(json!({}));
    let digest = cellbus_control::digest_of(&echo.module);
    bus.deploy(&[echo]).await;
    let pongs = cellbus_control::ping(&bus.client, "echo", Duration::from_millis(500))
        .await
        .unwrap();
    assert_eq!(pongs.len(), 1);
    assert_eq!(pongs[0].pod, "pod-0");
    assert_eq!(pongs[0].digest.as_deref(), Some(digest.as_str()));
    assert!(pongs[0].loaded_at <= jiff::Timestamp::now());
}

#[tokio::test]
async fn after_a_nats_restart_the_runtime_serves_again_and_readiness_follows() {
    let mut bus = Bus::start().await;
    let server = bus.deploy(&[TestCell::echo(json!({}))]).await;
    let health = Health {
        client: bus.node.shared.client.clone(),
        pools: vec![server],
        metrics: bus.node.shared.metrics.clone(),
    };
    assert_eq!(health.ready(), Ok(()));

    bus.nats.kill().unwrap();
    eventually(20, "readiness to drop", async || health.ready().is_err()).await;
    assert_eq!(
        health.ready().map_err(|why| why.to_string()),
        Err("not connected to NATS".into())
    );
    bus.nats.start_again().unwrap();
    eventually(30, "readiness to return", async || health.ready().is_ok()).await;

    let client = async_nats::connect(bus.nats.url()).await.unwrap();
    bus.client = client;
    eventually(30, "echo to answer again", async || {
        let request = Request::new("echo", "say", json!({"text": "back"}));
        match bus
            .client
            .request("cbs.echo.say", serde_json::to_vec(&request).unwrap().into())
            .await
        {
            Ok(reply) => serde_json::from_slice::<Reply>(&reply.payload)
                .is_ok_and(|r| r.into_result() == Ok(json!({"text": "back"}))),
            Err(_) => false,
        }
    })
    .await;
}

#[tokio::test]
async fn health_readiness_and_metrics_are_served_over_http() {
    let bus = Bus::start().await;
    let server = bus.deploy(&[TestCell::echo(json!({}))]).await;
    bus.call("echo", "say", json!({"text": "count me"}))
        .await
        .unwrap();
    let health = Health {
        client: bus.node.shared.client.clone(),
        pools: vec![server],
        metrics: Arc::clone(&bus.node.shared.metrics),
    };
    let address = http::serve("127.0.0.1:0".parse().unwrap(), health)
        .await
        .unwrap();
    let get = |path: &'static str| async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    };
    assert!(get("/healthz").await.starts_with("HTTP/1.1 200"));
    assert!(get("/readyz").await.starts_with("HTTP/1.1 200"));
    let metrics = get("/metrics").await;
    assert!(
        metrics.contains(
            r#"cellbus_runtime_requests_total{outcome="ok",service="echo",verb="say"} 1"#
        ),
        "{metrics}"
    );
    for name in [
        "cellbus_runtime_request_duration_seconds",
        "cellbus_runtime_instantiate_duration_seconds",
        "cellbus_runtime_module_compiles_total 1",
        "cellbus_runtime_in_flight",
    ] {
        assert!(metrics.contains(name), "{name} missing");
    }
}

#[tokio::test]
async fn shutting_down_answers_the_requests_already_running() {
    let bus = Bus::start().await;
    let slow = TestCell::new(
        "slow",
        json!([{"name": "work", "timeoutMs": 20000}]),
        constant_cell(r#""finished""#, 300_000_000),
        json!({}),
    );
    let server = bus.deploy(&[slow]).await;
    let running = bus.spawn_call("slow", "work", json!(null));
    eventually(10, "the request to start", async || {
        bus.node
            .shared
            .metrics
            .in_flight
            .with_label_values(&["slow"])
            .get()
            == 1
    })
    .await;
    server.shutdown().await;
    assert_eq!(
        bus.node
            .shared
            .metrics
            .in_flight
            .with_label_values(&["slow"])
            .get(),
        0,
        "shutdown returned before the running request was answered"
    );
    assert_eq!(
        running.await.unwrap().into_result().unwrap(),
        json!("finished")
    );
}
