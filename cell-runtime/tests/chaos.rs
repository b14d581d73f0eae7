//! No durable request is lost: 10,000 requests to a durable verb while the runtime
//! process (`cellbus serve`) is SIGKILLed and restarted twice and nats-server is killed
//! and restarted once on the same store. Afterwards every request has been processed
//! (recorded by the service the cell calls) or dead-lettered with its reason; requests
//! processed more than once are counted and reported: that happens only where a pod died
//! (or NATS went away) after the work and before its acknowledgement.

mod support;

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::header::HeaderMap;
use async_nats::jetstream;
use cellbus_contracts::assignment::PoolAssignment;
use cellbus_contracts::resources::{CellPoolSpec, CellSpec};
use cellbus_contracts::wire::{headers, Reply, Request};
use cellbus_testkit::NatsServer;
use futures::StreamExt;
use serde_json::json;
use support::{calling_cell, dead_letters};
use uuid::Uuid;

const REQUESTS: usize = 10_000;
/// The whole test gives up after this long.
const LIMIT: Duration = Duration::from_secs(300);

fn spawn_runtime(url: &str, cache: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_cellbus"))
        .arg("serve")
        .env("NATS_URL", url)
        .env("CELLBUS_NAMESPACE", "test")
        .env("CELLBUS_POOL", "chaos")
        .env("POD_NAME", "pod-0")
        .env("CELLBUS_HTTP_ADDR", "127.0.0.1:0")
        .env("CELLBUS_CACHE_DIR", cache)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting cellbus serve")
}

/// Publishes until JetStream has stored it: the same envelope id each time, so a publish
/// whose acknowledgement was lost is dropped as a duplicate when sent again.
async fn publish(js: &jetstream::Context, request: &Request) {
    let body: bytes::Bytes = serde_json::to_vec(request).unwrap().into();
    let deadline = Instant::now() + LIMIT;
    loop {
        assert!(
            Instant::now() < deadline,
            "could not publish {}",
            request.id
        );
        let mut headers = HeaderMap::new();
        headers.insert(headers::MSG_ID, request.id.to_string().as_str());
        headers.insert(
            headers::REPLY_TO,
            format!("chaos.replies.{}", request.id).as_str(),
        );
        if let Ok(ack) = js
            .publish_with_headers("cbs.chaos.append", headers, body.clone())
            .await
        {
            if ack.await.is_ok() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_durable_request_is_lost_across_runtime_kills_and_a_nats_restart() {
    let started = Instant::now();
    // A private server even when CELLBUS_TEST_NATS_URL names one: this test restarts it.
    let mut nats = NatsServer::start_with_args(&[]);
    let url = nats.url().to_owned();
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .max_reconnects(None)
        .reconnect_delay_callback(|_| Duration::from_millis(100))
        .connect(&url)
        .await
        .unwrap();
    let js = jetstream::new(client.clone());
    let buckets = cellbus_control::ensure_buckets(&js).await.unwrap();
    cellbus_control::durable::ensure_dead_letter_stream(&js)
        .await
        .unwrap();

    let module = calling_cell("recorder", "record", "{}");
    cellbus_control::push_module(&buckets.modules, &module)
        .await
        .unwrap();
    let cell: CellSpec = serde_json::from_value(json!({
        "service": "chaos",
        "verbs": [{
            "name": "append", "delivery": "durable", "timeoutMs": 2000,
            "retry": {"maxDeliver": 30, "backoffMs": [100, 500]},
        }],
        "module": {"digest": cellbus_control::digest_of(&module)},
        "stream": {"duplicateWindowSeconds": 900},
        "capabilities": {"call": ["cbs.recorder.record"]},
        "limits": {"maxInFlight": 32},
    }))
    .unwrap();
    let plan = cellbus_contracts::stream::stream_plan(&cell)
        .unwrap()
        .unwrap();
    cellbus_control::ensure_stream(&js, &plan).await.unwrap();
    let pool: CellPoolSpec = serde_json::from_value(json!({"runtime": "wasm"})).unwrap();
    let assignment = PoolAssignment::new("test", "chaos", &pool, [("chaos", &cell)]).unwrap();
    cellbus_control::write_assignment(&buckets.assignments, &assignment)
        .await
        .unwrap();

    // The service the cell calls: each call carries the durable request's id as its
    // correlation id, so this is the record of processing per request.
    let recorded: Arc<Mutex<HashMap<Uuid, u32>>> = Arc::default();
    let mut calls = client.subscribe("cbs.recorder.record").await.unwrap();
    let record = recorded.clone();
    let recorder_client = client.clone();
    tokio::spawn(async move {
        while let Some(message) = calls.next().await {
            let Ok(request) = serde_json::from_slice::<Request>(&message.payload) else {
                continue;
            };
            if let Some(id) = request.correlation_id {
                *record.lock().unwrap().entry(id).or_default() += 1;
            }
            if let Some(reply_to) = message.reply {
                let reply = Reply::ok(&request, json!({}));
                let _ = recorder_client
                    .publish(reply_to, serde_json::to_vec(&reply).unwrap().into())
                    .await;
            }
        }
    });
    let replied: Arc<Mutex<HashSet<Uuid>>> = Arc::default();
    let mut replies = client.subscribe("chaos.replies.>").await.unwrap();
    let seen = replied.clone();
    tokio::spawn(async move {
        while let Some(message) = replies.next().await {
            if let Ok(reply) = serde_json::from_slice::<Reply>(&message.payload) {
                let id = match &reply {
                    Reply::Ok(ok) => ok.correlation_id,
                    Reply::Err(error) => error.correlation_id,
                };
                seen.lock().unwrap().insert(id);
            }
        }
    });
    client.flush().await.unwrap();

    let cache = tempfile::tempdir().unwrap();
    let mut runtime = spawn_runtime(&url, cache.path());
    let mut ids = Vec::with_capacity(REQUESTS);
    let mut events = Vec::new();
    for i in 0..REQUESTS {
        match i {
            2_000 | 8_000 => {
                runtime.kill().unwrap();
                runtime.wait().unwrap();
                runtime = spawn_runtime(&url, cache.path());
                events.push(format!("runtime SIGKILLed and restarted at request {i}"));
            }
            5_000 => {
                nats.restart().unwrap();
                events.push(format!(
                    "nats-server SIGKILLed and restarted at request {i}"
                ));
            }
            _ => {}
        }
        let request = Request::new("chaos", "append", json!({"n": i}));
        publish(&js, &request).await;
        ids.push(request.id);
    }
    let published = started.elapsed();

    // Done when the work-queue stream is empty: every request acknowledged or dead.
    let mut stream = js.get_stream(&plan.name).await.unwrap();
    loop {
        let left = stream.info().await.map(|info| info.state.messages);
        if left.as_ref().is_ok_and(|left| *left == 0) {
            break;
        }
        assert!(
            started.elapsed() < LIMIT,
            "{left:?} requests still in the stream after {LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let drained = started.elapsed();
    runtime.kill().unwrap();
    runtime.wait().unwrap();

    let letters = dead_letters(&js).await;
    let dead: HashSet<Uuid> = letters
        .iter()
        .filter_map(|letter| letter.request["id"].as_str()?.parse().ok())
        .collect();
    let recorded = recorded.lock().unwrap().clone();
    let replied = replied.lock().unwrap().clone();
    let once = ids.iter().filter(|id| recorded.get(id) == Some(&1)).count();
    let duplicated: Vec<u32> = ids
        .iter()
        .filter_map(|id| recorded.get(id).copied().filter(|n| *n > 1))
        .collect();
    let lost: Vec<&Uuid> = ids
        .iter()
        .filter(|id| !recorded.contains_key(id) && !dead.contains(id))
        .collect();
    let unreplied = ids.iter().filter(|id| !replied.contains(id)).count();

    // Written to stderr directly, not through println!, so the counts show in the test
    // run's output even when the test passes.
    let mut report: Vec<String> = Vec::new();
    report.push(format!("durable chaos: {REQUESTS} requests"));
    for event in &events {
        report.push(format!("  {event}"));
    }
    report.push(format!(
        "  published in {:.1} s, stream drained after {:.1} s",
        published.as_secs_f64(),
        drained.as_secs_f64()
    ));
    report.push(format!("  processed exactly once: {once}"));
    report.push(format!(
        "  processed more than once (work done, acknowledgement lost): {} requests, {} extra runs",
        duplicated.len(),
        duplicated.iter().map(|n| n - 1).sum::<u32>()
    ));
    report.push(format!("  dead-lettered: {}", dead.len()));
    for letter in letters.iter().take(5) {
        report.push(format!(
            "    {}: {}",
            letter.request["id"], letter.error.error.message
        ));
    }
    report.push(format!("  lost: {}", lost.len()));
    report.push(format!(
        "  replies the caller never saw (sent while it was reconnecting): {unreplied}"
    ));

    let _ = std::io::stderr().write_all(format!("{}\n", report.join("\n")).as_bytes());

    assert!(lost.is_empty(), "lost requests: {lost:?}");
    assert_eq!(
        once + duplicated.len() + dead.iter().filter(|id| !recorded.contains_key(id)).count(),
        REQUESTS
    );
}
