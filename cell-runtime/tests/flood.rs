//! A flood of large requests against one cell: 2,000 concurrent requests of 240 KiB to a
//! cell that runs 4 at a time. Every one gets a typed reply (its echo or
//! `resource_exhausted`), another cell of the same runtime keeps answering meanwhile, and
//! nats-server never drops the runtime as a slow consumer. Alone in its binary: it loads
//! both cores.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cellbus_contracts::wire::{ErrorCode, Reply, Request};
use cellbus_testkit::NatsServer;
use futures::stream::{FuturesUnordered, StreamExt};
use serde_json::json;

const FLOOD: usize = 2_000;
const FLOOD_BYTES: usize = 240 << 10;

/// A directory `cellbus up` serves: a wasm pool with the echo cell twice, as `flood`
/// (4 requests at a time) and as `other`.
fn manifests() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let echo = cellbus_runtime::bench::ECHO_WASM;
    std::fs::write(dir.path().join("echo.wasm"), echo).unwrap();
    let digest = cellbus_control::digest_of(echo);
    let mut yaml = String::from(
        "apiVersion: cellbus.io/v1alpha1\nkind: CellPool\nmetadata: {name: wasm}\n\
         spec: {runtime: wasm, sandbox: {memory: 64Mi}}\n",
    );
    for (service, in_flight) in [("flood", 4), ("other", 64)] {
        yaml.push_str(&format!(
            "---\napiVersion: cellbus.io/v1alpha1\nkind: Cell\nmetadata: {{name: {service}}}\n\
             spec:\n  service: {service}\n  verbs: [{{name: say}}]\n  module: {{digest: \"{digest}\"}}\n\
             \x20 limits: {{maxInFlight: {in_flight}}}\n"
        ));
    }
    std::fs::write(dir.path().join("cells.yaml"), yaml).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_gets_typed_replies_and_another_cell_keeps_answering() {
    let nats = NatsServer::start();
    let dir = manifests();
    let cache = tempfile::tempdir().unwrap();
    // The runtime in a process of its own, as in a pod: the flood comes from outside.
    // As a pool's pods run it when the test runs as root.
    let cellbus = std::path::Path::new(env!("CARGO_BIN_EXE_cellbus"));
    let mut runtime = if support::root() {
        support::as_the_pods_user(
            cellbus,
            &[dir.path(), cache.path()],
            support::Grant::Nothing,
        )
    } else {
        Command::new(cellbus)
    };
    runtime
        .arg("up")
        .arg(dir.path())
        .env("NATS_URL", nats.url())
        .env("CELLBUS_CACHE_DIR", cache.path())
        // Requests of 240 KiB are within what this runtime accepts.
        .env("CELLBUS_MAX_PAYLOAD", (1 << 20).to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut runtime = runtime.spawn().unwrap();
    let logs = Arc::new(Mutex::new(String::new()));
    {
        let logs = logs.clone();
        let stderr = runtime.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut logs = logs.lock().unwrap();
                logs.push_str(&line);
                logs.push('\n');
            }
        });
    }
    let stdout = BufReader::new(runtime.stdout.take().unwrap());
    let ready = tokio::task::spawn_blocking(move || {
        let mut seen = Vec::new();
        for line in stdout.lines().map_while(Result::ok) {
            if line.starts_with("ready") {
                return Ok(seen);
            }
            seen.push(line);
        }
        Err(seen)
    });
    let served = tokio::time::timeout(Duration::from_secs(120), ready)
        .await
        .expect("`cellbus up` got ready within 120 s")
        .unwrap()
        .unwrap_or_else(|seen| panic!("`cellbus up` stopped: {seen:?} {}", logs.lock().unwrap()));
    assert_eq!(
        served.iter().filter(|l| l.starts_with("serving")).count(),
        2,
        "{served:?}"
    );

    let flooder = async_nats::ConnectOptions::new()
        .request_timeout(Some(Duration::from_secs(60)))
        .connect(nats.url())
        .await
        .unwrap();
    let caller = async_nats::connect(nats.url()).await.unwrap();
    let text = "x".repeat(FLOOD_BYTES - 200);
    let bodies: Vec<bytes::Bytes> = (0..FLOOD)
        .map(|_| {
            serde_json::to_vec(&Request::new("flood", "say", json!({"text": text})))
                .unwrap()
                .into()
        })
        .collect();

    let flood = tokio::spawn(async move {
        let mut replies: FuturesUnordered<_> = bodies
            .into_iter()
            .map(|body| {
                let flooder = flooder.clone();
                async move { flooder.request("cbs.flood.say", body).await }
            })
            .collect();
        let (mut echoed, mut refused, mut untyped) = (0, 0, Vec::new());
        while let Some(reply) = replies.next().await {
            let outcome = reply.map_err(|e| e.to_string()).and_then(|m| {
                serde_json::from_slice::<Reply>(&m.payload).map_err(|e| e.to_string())
            });
            match outcome {
                Ok(Reply::Ok(_)) => echoed += 1,
                Ok(Reply::Err(e)) if e.error.code == ErrorCode::ResourceExhausted => refused += 1,
                other => untyped.push(format!("{other:?}")),
            }
        }
        (echoed, refused, untyped)
    });

    // The other cell, one call at a time, and the control traffic ($ping), for as long as
    // the flood lasts.
    let (mut answered, mut calls, mut pongs, mut pings) = (0usize, 0usize, 0usize, 0usize);
    let started = Instant::now();
    while !flood.is_finished() {
        if calls % 5 == 0 {
            pings += 1;
            let ping = Request::new("flood", "$ping", json!(null));
            let pong = tokio::time::timeout(
                Duration::from_secs(2),
                caller.request("cbs.flood.$ping", serde_json::to_vec(&ping).unwrap().into()),
            )
            .await;
            pongs += usize::from(matches!(pong, Ok(Ok(_))));
        }
        calls += 1;
        let request = Request::new("other", "say", json!({"n": calls}));
        let reply = tokio::time::timeout(
            Duration::from_secs(2),
            caller.request(
                "cbs.other.say",
                serde_json::to_vec(&request).unwrap().into(),
            ),
        )
        .await;
        if let Ok(Ok(message)) = reply {
            if let Ok(Reply::Ok(ok)) = serde_json::from_slice::<Reply>(&message.payload) {
                answered += usize::from(ok.payload == json!({"n": calls}));
            }
        }
    }
    let (echoed, refused, untyped) = flood.await.unwrap();
    println!(
        "flood of {FLOOD} x {} KiB: {echoed} echoed, {refused} refused resource_exhausted, \
         {} untyped in {:.1} s; the other cell answered {answered} of {calls} calls, \
         the flooded cell's $ping {pongs} of {pings}",
        FLOOD_BYTES >> 10,
        untyped.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        untyped.is_empty(),
        "{} replies were not typed, such as {:?}",
        untyped.len(),
        &untyped[..untyped.len().min(3)]
    );
    assert_eq!(echoed + refused, FLOOD);
    assert!(
        refused > 0,
        "the flood never went past the cell's in-flight limit"
    );
    assert!(
        calls >= 10,
        "the flood ended before the other cell was called"
    );
    assert!(
        answered * 100 >= calls * 99,
        "the other cell answered only {answered} of {calls} calls during the flood"
    );
    assert_eq!(pongs, pings, "$ping went unanswered during the flood");
    let text = logs.lock().unwrap().clone();
    for sign in ["disconnected", "slow consumer"] {
        assert!(!text.contains(sign), "the runtime logged {sign:?}:\n{text}");
    }
    runtime.kill().unwrap();
    runtime.wait().unwrap();
}
