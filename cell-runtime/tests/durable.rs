//! Durable verbs through a real nats-server with JetStream: answered once and
//! acknowledged, retried with the verb's backoff, dead-lettered with their error envelope,
//! de-duplicated by envelope id, and kept in the stream while no cell serves them.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::header::HeaderMap;
use async_nats::jetstream::{self, consumer};
use cellbus_contracts::durable::{consumer_name, DeadLetter};
use cellbus_contracts::resources::CellSpec;
use cellbus_contracts::status::LoadState;
use cellbus_contracts::wire::{headers, ErrorBody, ErrorCode, Reply, Request};
use cellbus_control::nats::durable::durable_request;
use futures::StreamExt;
use serde_json::{json, Value};
use support::*;

/// A cell whose verb `append` is durable, with `retry`, answering with `module`.
fn durable_cell(service: &str, module: Vec<u8>, retry: Value, extra: Value) -> TestCell {
    let mut verb = json!({"name": "append", "delivery": "durable", "timeoutMs": 2000});
    if !retry.is_null() {
        verb["retry"] = retry;
    }
    let mut extra = extra;
    extra["stream"] = json!({"duplicateWindowSeconds": 60});
    TestCell::new(service, json!([verb]), module, extra)
}

async fn ensure_stream(bus: &Bus, spec: &CellSpec) {
    let plan = cellbus_contracts::stream::stream_plan(spec)
        .unwrap()
        .unwrap();
    cellbus_control::ensure_stream(&jetstream::new(bus.client.clone()), &plan)
        .await
        .unwrap();
}

/// Serves `cbs.{service}.try` from the test: each call is answered by `answer` with the
/// call's number (1 for the first) and counted.
fn serve_calls(
    bus: &Bus,
    service: &str,
    answer: impl Fn(usize, &Request) -> Reply + Send + 'static,
) -> Arc<Mutex<Vec<Request>>> {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let seen = calls.clone();
    let client = bus.client.clone();
    let subject = format!("cbs.{service}.try");
    tokio::spawn(async move {
        let mut requests = client.subscribe(subject).await.unwrap();
        client.flush().await.unwrap();
        while let Some(message) = requests.next().await {
            let request: Request = serde_json::from_slice(&message.payload).unwrap();
            let number = {
                let mut seen = seen.lock().unwrap();
                seen.push(request.clone());
                seen.len()
            };
            let reply = answer(number, &request);
            if let Some(reply_to) = message.reply {
                client
                    .publish(reply_to, serde_json::to_vec(&reply).unwrap().into())
                    .await
                    .unwrap();
            }
        }
    });
    calls
}

async fn stream_messages(bus: &Bus, stream: &str) -> u64 {
    let mut stream = jetstream::new(bus.client.clone())
        .get_stream(stream)
        .await
        .unwrap();
    stream.info().await.unwrap().state.messages
}

async fn dead_letters(bus: &Bus) -> Vec<DeadLetter> {
    support::dead_letters(&jetstream::new(bus.client.clone())).await
}

fn ok_count(bus: &Bus, service: &str) -> u64 {
    bus.node
        .shared
        .metrics
        .requests
        .with_label_values(&[service, "append", "ok"])
        .get()
}

#[tokio::test]
async fn a_durable_request_is_answered_then_acknowledged_and_leaves_the_stream() {
    let bus = Bus::start().await;
    let cell = durable_cell("ledger", echo_wasm(), Value::Null, json!({}));
    ensure_stream(&bus, &cell.spec).await;
    let _server = bus.deploy(&[cell]).await;

    let js = jetstream::new(bus.client.clone());
    let request = Request::new("ledger", "append", json!({"entry": "coffee", "cents": 250}));
    let reply = durable_request(&bus.client, &js, &request, Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(
        reply.into_result().unwrap(),
        json!({"entry": "coffee", "cents": 250})
    );
    eventually(10, "the stream to be empty", async || {
        stream_messages(&bus, "CBS_LEDGER").await == 0
    })
    .await;
    assert_eq!(ok_count(&bus, "ledger"), 1);
}

#[tokio::test]
async fn a_resend_with_the_same_id_inside_the_window_runs_once() {
    let bus = Bus::start().await;
    let cell = durable_cell("ledger", echo_wasm(), Value::Null, json!({}));
    ensure_stream(&bus, &cell.spec).await;
    let _server = bus.deploy(&[cell]).await;

    let js = jetstream::new(bus.client.clone());
    let request = Request::new("ledger", "append", json!({"entry": "tea", "cents": 180}));
    let body = serde_json::to_vec(&request).unwrap();
    let mut duplicates = Vec::new();
    for _ in 0..3 {
        let mut headers = HeaderMap::new();
        headers.insert(headers::MSG_ID, request.id.to_string().as_str());
        let ack = js
            .publish_with_headers("cbs.ledger.append", headers, body.clone().into())
            .await
            .unwrap()
            .await
            .unwrap();
        duplicates.push(ack.duplicate);
    }
    assert_eq!(duplicates, [false, true, true]);
    eventually(10, "the request to run", async || {
        ok_count(&bus, "ledger") == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(ok_count(&bus, "ledger"), 1);
}

#[tokio::test]
async fn a_retryable_failure_that_succeeds_on_the_third_try_is_processed_once() {
    let bus = Bus::start().await;
    let calls = serve_calls(&bus, "flaky", |number, request| {
        if number < 3 {
            Reply::error(request, ErrorBody::new(ErrorCode::Unavailable, "not yet"))
        } else {
            Reply::ok(request, json!({"done": number}))
        }
    });
    let cell = durable_cell(
        "ledger",
        calling_cell("flaky", "try", "{}"),
        json!({"maxDeliver": 5, "backoffMs": [50]}),
        json!({"capabilities": {"call": ["cbs.flaky.try"]}}),
    );
    ensure_stream(&bus, &cell.spec).await;
    let _server = bus.deploy(&[cell]).await;

    let js = jetstream::new(bus.client.clone());
    let request = Request::new("ledger", "append", json!({"entry": "cake", "cents": 400}));
    let reply = durable_request(&bus.client, &js, &request, Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(reply.into_result().unwrap(), json!({"done": 3}));
    assert_eq!(calls.lock().unwrap().len(), 3);
    assert_eq!(ok_count(&bus, "ledger"), 1);
    let redeliveries = bus
        .node
        .shared
        .metrics
        .durable_redeliveries
        .with_label_values(&["ledger", "append"])
        .get();
    assert_eq!(redeliveries, 2);
    assert!(dead_letters(&bus).await.is_empty());
    // Each try carried the request's correlation id to the called service.
    for call in calls.lock().unwrap().iter() {
        assert_eq!(call.correlation_id, Some(request.id));
    }
}

#[tokio::test]
async fn a_poison_request_reaches_the_dead_letters_after_max_deliver_with_its_error() {
    let bus = Bus::start().await;
    let calls = serve_calls(&bus, "broken", |_, request| {
        Reply::error(
            request,
            ErrorBody::new(ErrorCode::Unavailable, "always down"),
        )
    });
    let cell = durable_cell(
        "ledger",
        calling_cell("broken", "try", "{}"),
        json!({"maxDeliver": 3, "backoffMs": [20]}),
        json!({"capabilities": {"call": ["cbs.broken.try"]}}),
    );
    ensure_stream(&bus, &cell.spec).await;
    let _server = bus.deploy(&[cell]).await;

    let js = jetstream::new(bus.client.clone());
    let request = Request::new("ledger", "append", json!({"entry": "poison", "cents": 1}));
    let reply = durable_request(&bus.client, &js, &request, Duration::from_secs(20))
        .await
        .unwrap();
    let error = reply.into_result().unwrap_err();
    assert_eq!(error.code, ErrorCode::Unavailable);
    assert_eq!(calls.lock().unwrap().len(), 3);

    let letters = dead_letters(&bus).await;
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!(
        (letter.service.as_str(), letter.verb.as_str()),
        ("ledger", "append")
    );
    assert_eq!(letter.deliveries, 3);
    assert_eq!(letter.error.error.code, ErrorCode::Unavailable);
    assert_eq!(letter.error.correlation_id, request.id);
    assert_eq!(letter.request["id"], json!(request.id));
    eventually(10, "the stream to be empty", async || {
        stream_messages(&bus, "CBS_LEDGER").await == 0
    })
    .await;
    let counted = bus
        .node
        .shared
        .metrics
        .dead_letters
        .with_label_values(&["ledger", "append"])
        .get();
    assert_eq!(counted, 1);
}

#[tokio::test]
async fn a_request_that_can_never_succeed_is_dead_lettered_at_once() {
    let bus = Bus::start().await;
    let mut cell = durable_cell("ledger", echo_wasm(), json!({"maxDeliver": 5}), json!({}));
    cell.spec.verbs[0].input =
        serde_json::from_value(json!({"type": "object", "required": ["entry"]})).unwrap();
    ensure_stream(&bus, &cell.spec).await;
    let _server = bus.deploy(&[cell]).await;

    let js = jetstream::new(bus.client.clone());
    for body in [
        serde_json::to_vec(&Request::new("ledger", "append", json!({"cents": 1}))).unwrap(),
        b"not an envelope".to_vec(),
    ] {
        js.publish("cbs.ledger.append", body.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    eventually(10, "two dead letters", async || {
        dead_letters(&bus).await.len() == 2
    })
    .await;
    let letters = dead_letters(&bus).await;
    let codes: Vec<ErrorCode> = letters.iter().map(|l| l.error.error.code).collect();
    assert_eq!(codes, [ErrorCode::SchemaViolation, ErrorCode::BadRequest]);
    assert!(letters.iter().all(|l| l.deliveries == 1));
    assert_eq!(letters[1].request, json!("not an envelope"));
}

#[tokio::test]
async fn requests_wait_in_the_stream_while_no_cell_serves_them_and_in_flight_is_bounded() {
    let bus = Bus::start().await;
    let cell = durable_cell(
        "ledger",
        constant_cell("{\"slow\":true}", 2_000_000),
        Value::Null,
        json!({"limits": {"maxInFlight": 2}}),
    );
    ensure_stream(&bus, &cell.spec).await;

    // Accepted before any pod serves the verb: kept, not lost.
    let js = jetstream::new(bus.client.clone());
    for _ in 0..10 {
        let request = Request::new("ledger", "append", json!({}));
        js.publish(
            "cbs.ledger.append",
            serde_json::to_vec(&request).unwrap().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    assert_eq!(stream_messages(&bus, "CBS_LEDGER").await, 10);

    let _server = bus.deploy(&[cell]).await;
    let stream = js.get_stream("CBS_LEDGER").await.unwrap();
    // The cell reports loaded once its code is ready; its consumer follows a moment later.
    let mut found = None;
    eventually(30, "the verb's consumer to exist", async || {
        found = stream.get_consumer(&consumer_name("append")).await.ok();
        found.is_some()
    })
    .await;
    let mut consumer: consumer::PullConsumer = found.unwrap();
    eventually(30, "every request to be served", async || {
        let info = consumer.info().await.unwrap();
        assert!(
            info.num_ack_pending <= 2,
            "{} requests handed out with maxInFlight 2",
            info.num_ack_pending
        );
        info.num_pending == 0 && info.num_ack_pending == 0
    })
    .await;
    assert_eq!(ok_count(&bus, "ledger"), 10);
    assert_eq!(consumer.info().await.unwrap().config.max_ack_pending, 2);
}

/// Publishes a durable request for `ledger.append` whose reply goes to `replies.{id}`.
async fn publish_with_reply(js: &jetstream::Context) -> uuid::Uuid {
    let request = Request::new("ledger", "append", json!({}));
    let mut headers = HeaderMap::new();
    headers.insert(headers::MSG_ID, request.id.to_string().as_str());
    headers.insert(
        headers::REPLY_TO,
        format!("replies.{}", request.id).as_str(),
    );
    js.publish_with_headers(
        "cbs.ledger.append",
        headers,
        serde_json::to_vec(&request).unwrap().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    request.id
}

#[tokio::test]
async fn a_new_version_or_a_removal_drains_the_old_one_without_losing_requests() {
    let bus = Bus::start().await;
    let version = |n: u32, spin: u32| {
        durable_cell(
            "ledger",
            constant_cell(&format!("{{\"version\":{n}}}"), spin),
            Value::Null,
            json!({"limits": {"maxInFlight": 4}}),
        )
    };
    let first = version(1, 3_000_000);
    ensure_stream(&bus, &first.spec).await;
    let replies: Arc<Mutex<HashMap<uuid::Uuid, Vec<Value>>>> = Arc::default();
    let mut subscription = bus.client.subscribe("replies.>").await.unwrap();
    let seen = replies.clone();
    tokio::spawn(async move {
        while let Some(message) = subscription.next().await {
            let reply: Reply = serde_json::from_slice(&message.payload).unwrap();
            let Reply::Ok(ok) = reply else {
                panic!("an error reply")
            };
            seen.lock()
                .unwrap()
                .entry(ok.correlation_id)
                .or_default()
                .push(ok.payload);
        }
    });
    let server = bus.deploy(&[first]).await;
    let js = jetstream::new(bus.client.clone());

    // Requests in flight on version 1 while version 2 is assigned.
    let mut before = Vec::new();
    for _ in 0..40 {
        before.push(publish_with_reply(&js).await);
    }
    let second = version(2, 0);
    let digest = second.spec.module.digest.clone();
    bus.assign(&[second]).await;
    eventually(30, "version 2 to be loaded", async || {
        server
            .states()
            .iter()
            .any(|s| s.digest == digest && s.state == LoadState::Loaded)
    })
    .await;
    let mut after = Vec::new();
    for _ in 0..20 {
        after.push(publish_with_reply(&js).await);
    }
    eventually(30, "every request to be answered", async || {
        replies.lock().unwrap().len() == 60
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let replies_now = replies.lock().unwrap().clone();
    for id in before.iter().chain(&after) {
        assert_eq!(
            replies_now[id].len(),
            1,
            "{id} answered {:?}",
            replies_now[id]
        );
    }
    for id in &after {
        assert_eq!(
            replies_now[id][0],
            json!({"version": 2}),
            "a request reached a removed version"
        );
    }
    assert_eq!(stream_messages(&bus, "CBS_LEDGER").await, 0);

    // Removed: requests wait in the stream, unacknowledged, until a cell serves them.
    bus.assign(&[]).await;
    eventually(30, "the cell to be removed", async || {
        server.services().is_empty()
    })
    .await;
    let mut waiting = Vec::new();
    for _ in 0..5 {
        waiting.push(publish_with_reply(&js).await);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(waiting
        .iter()
        .all(|id| !replies.lock().unwrap().contains_key(id)));
    assert_eq!(stream_messages(&bus, "CBS_LEDGER").await, 5);
    bus.assign(&[version(2, 0)]).await;
    eventually(30, "the waiting requests to be answered", async || {
        let replies = replies.lock().unwrap();
        waiting
            .iter()
            .all(|id| replies.get(id).is_some_and(|r| r.len() == 1))
    })
    .await;
}

/// A wasm cell calling a durable verb through its `call` capability goes through the
/// stream and gets the verb's reply (not the stream's publish acknowledgement), and the
/// request is worked off once.
#[tokio::test]
async fn a_cell_calling_a_durable_verb_gets_the_verbs_reply_through_the_stream() {
    let bus = Bus::start().await;
    let ledger = durable_cell("ledger", echo_wasm(), Value::Null, json!({}));
    ensure_stream(&bus, &ledger.spec).await;
    let relay = TestCell::new(
        "relay",
        json!([{"name": "go"}]),
        calling_cell("ledger", "append", r#"{"entry":"coffee","cents":250}"#),
        json!({"capabilities": {"call": ["cbs.ledger.append"]}}),
    );
    let _server = bus.deploy(&[ledger, relay]).await;

    for _ in 0..3 {
        assert_eq!(
            bus.call("relay", "go", json!({})).await.unwrap(),
            json!({"entry": "coffee", "cents": 250})
        );
    }
    assert_eq!(ok_count(&bus, "ledger"), 3);
    // Each was acknowledged and left the stream.
    let limit = std::time::Instant::now() + Duration::from_secs(10);
    while stream_messages(&bus, "CBS_LEDGER").await > 0 {
        assert!(
            std::time::Instant::now() < limit,
            "requests stayed in the stream"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
