//! No durable request is lost: 10,000 requests to a durable verb while the runtime
//! process (`cellbus serve`) is SIGKILLed and restarted twice and nats-server is killed
//! and restarted once on the same store; and, on a three-node cluster with three copies
//! of the stream, 10,000 while the stream's leader node is SIGKILLed and restarted and
//! 10,000 more while a node that is not the leader is. Afterwards every request has been
//! processed (recorded by the service the cell calls) or dead-lettered with its reason,
//! and stored once however often its publish was retried; every reply the caller saw
//! answers the request it was sent for. Requests processed more than once are counted
//! and reported: that happens only where a pod died (or its NATS node went away) after
//! the work and before its acknowledgement.

mod support;

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use cellbus_contracts::assignment::PoolAssignment;
use cellbus_contracts::resources::{CellPoolSpec, CellSpec};
use cellbus_contracts::stream::StreamPlan;
use cellbus_contracts::wire::{Reply, Request};
use cellbus_control::NatsArgs;
use cellbus_testkit::{NatsCluster, NatsServer};
use futures::StreamExt;
use serde_json::json;
use support::{calling_cell, dead_letters, stream_leader, until_ok};
use uuid::Uuid;

const REQUESTS: usize = 10_000;
/// Each round gives up after this long.
const LIMIT: Duration = Duration::from_secs(300);

/// The runtime as its own process (`cellbus serve`), so it can be SIGKILLed.
struct Runtime {
    url: String,
    cache: tempfile::TempDir,
    child: Child,
}

impl Runtime {
    fn start(url: &str) -> Self {
        let cache = tempfile::tempdir().unwrap();
        let child = Self::spawn(url, cache.path());
        Self {
            url: url.to_owned(),
            cache,
            child,
        }
    }

    fn spawn(url: &str, cache: &std::path::Path) -> Child {
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

    fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    fn restart(&mut self) {
        self.kill();
        self.child = Self::spawn(&self.url, self.cache.path());
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A durable cell that records each request with a service on the test's connection, and
/// the caller's view: what was recorded, which replies arrived.
struct Chaos {
    js: jetstream::Context,
    plan: StreamPlan,
    /// Runs of each request, by its id.
    recorded: Arc<Mutex<HashMap<Uuid, u32>>>,
    /// For each reply the caller saw, the id its subject was made for and the
    /// correlation id it carries.
    replied: Arc<Mutex<Vec<(Uuid, Uuid)>>>,
    report: Vec<String>,
}

/// What one round of requests came to.
struct Round {
    ids: Vec<Uuid>,
    /// Messages the stream stored for the round: one per request, whatever was resent.
    stored: u64,
}

impl Chaos {
    /// Connects to `url` (one server or several, comma-separated) and sets up the cell
    /// with a stream of `replicas` copies.
    async fn set_up(url: &str, replicas: u8) -> Self {
        let client = cellbus_control::connect(&NatsArgs::url(url), "chaos test")
            .await
            .unwrap();
        let js = jetstream::new(client.clone());
        let buckets = until_ok("making the buckets", async || {
            cellbus_control::ensure_buckets_replicated(&js, usize::from(replicas)).await
        })
        .await;
        until_ok("making the dead-letter stream", async || {
            cellbus_control::nats::durable::ensure_dead_letter_stream(&js).await
        })
        .await;

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
        let plan = cellbus_contracts::stream::stream_plan_with(&cell, replicas)
            .unwrap()
            .unwrap();
        until_ok("making the cell's stream", async || {
            cellbus_control::ensure_stream(&js, &plan).await
        })
        .await;
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
        let replied: Arc<Mutex<Vec<(Uuid, Uuid)>>> = Arc::default();
        let mut replies = client.subscribe("chaos.replies.>").await.unwrap();
        let seen = replied.clone();
        tokio::spawn(async move {
            while let Some(message) = replies.next().await {
                let Some(sent_for) = message
                    .subject
                    .strip_prefix("chaos.replies.")
                    .and_then(|id| id.parse().ok())
                else {
                    continue;
                };
                if let Ok(reply) = serde_json::from_slice::<Reply>(&message.payload) {
                    let correlation = match &reply {
                        Reply::Ok(ok) => ok.correlation_id,
                        Reply::Err(error) => error.correlation_id,
                    };
                    seen.lock().unwrap().push((sent_for, correlation));
                }
            }
        });
        client.flush().await.unwrap();
        Self {
            js,
            plan,
            recorded,
            replied,
            report: Vec::new(),
        }
    }

    /// Sends `REQUESTS` requests, calling `at` before each with its number (what it does
    /// is reported), and waits until the stream has none left.
    async fn round(&mut self, title: &str, mut at: impl FnMut(usize) -> Option<String>) -> Round {
        let started = Instant::now();
        let first = self.last_sequence().await;
        self.report.push(format!("{title}: {REQUESTS} requests"));
        let mut ids = Vec::with_capacity(REQUESTS);
        for i in 0..REQUESTS {
            if let Some(event) = at(i) {
                self.report.push(format!("  {event} at request {i}"));
            }
            let request = Request::new("chaos", "append", json!({"n": i}));
            self.publish(&request, started).await;
            ids.push(request.id);
        }
        let published = started.elapsed();

        // Done when the work-queue stream is empty: every request acknowledged or dead.
        loop {
            let left = match self.js.get_stream(&self.plan.name).await {
                Ok(mut stream) => stream.info().await.map(|info| info.state.messages).ok(),
                Err(_) => None,
            };
            if left == Some(0) {
                break;
            }
            assert!(
                started.elapsed() < LIMIT,
                "{left:?} requests still in the stream after {LIMIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        self.report.push(format!(
            "  published in {:.1} s, stream drained after {:.1} s",
            published.as_secs_f64(),
            started.elapsed().as_secs_f64()
        ));
        Round {
            stored: self.last_sequence().await - first,
            ids,
        }
    }

    /// The node leading the cell's stream.
    async fn leader(&self) -> String {
        stream_leader(&self.js, &self.plan.name).await
    }

    async fn last_sequence(&self) -> u64 {
        until_ok("reading the stream's state", async || {
            let mut stream = self.js.get_stream(&self.plan.name).await?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                stream.info().await?.state.last_sequence,
            )
        })
        .await
    }

    /// Stores the request as callers do: sent again with the same envelope id (and reply
    /// subject) when the publish or its acknowledgement is lost.
    async fn publish(&self, request: &Request, started: Instant) {
        let deadline = tokio::time::Instant::from_std(started + LIMIT);
        cellbus_control::nats::durable::store_request(
            &self.js,
            "cbs.chaos.append",
            request,
            &format!("chaos.replies.{}", request.id),
            deadline,
        )
        .await
        .unwrap_or_else(|error| panic!("storing {}: {error}", request.id));
    }

    /// Counts what became of each request of `round`, adds them to the report, and
    /// checks none was lost, none stored twice and every reply correlated.
    async fn settle(&mut self, round: &Round) {
        let letters = dead_letters(&self.js).await;
        let ids: HashSet<Uuid> = round.ids.iter().copied().collect();
        let dead: HashSet<Uuid> = letters
            .iter()
            .filter_map(|letter| letter.request["id"].as_str()?.parse().ok())
            .filter(|id| ids.contains(id))
            .collect();
        let recorded = self.recorded.lock().unwrap().clone();
        let replied: Vec<(Uuid, Uuid)> = self
            .replied
            .lock()
            .unwrap()
            .iter()
            .filter(|(sent_for, _)| ids.contains(sent_for))
            .copied()
            .collect();
        let once = round
            .ids
            .iter()
            .filter(|id| recorded.get(id) == Some(&1))
            .count();
        let duplicated: Vec<u32> = round
            .ids
            .iter()
            .filter_map(|id| recorded.get(id).copied().filter(|n| *n > 1))
            .collect();
        let lost: Vec<&Uuid> = round
            .ids
            .iter()
            .filter(|id| !recorded.contains_key(id) && !dead.contains(id))
            .collect();
        let miscorrelated: Vec<&(Uuid, Uuid)> = replied
            .iter()
            .filter(|(sent_for, correlation)| sent_for != correlation)
            .collect();
        let answered: HashSet<Uuid> = replied.iter().map(|(sent_for, _)| *sent_for).collect();
        let unreplied = round.ids.len() - answered.len();

        let report = &mut self.report;
        report.push(format!("  stored by the stream: {} messages", round.stored));
        report.push(format!("  processed exactly once: {once}"));
        report.push(format!(
            "  processed more than once (work done, acknowledgement lost): {} requests, {} extra runs",
            duplicated.len(),
            duplicated.iter().map(|n| n - 1).sum::<u32>()
        ));
        report.push(format!("  dead-lettered: {}", dead.len()));
        for letter in letters
            .iter()
            .filter(|letter| {
                letter.request["id"]
                    .as_str()
                    .and_then(|id| id.parse().ok())
                    .is_some_and(|id| ids.contains(&id))
            })
            .take(5)
        {
            report.push(format!(
                "    {}: {}",
                letter.request["id"], letter.error.error.message
            ));
        }
        report.push(format!("  lost: {}", lost.len()));
        report.push(format!(
            "  replies seen: {} for {} requests, all correlated: {}",
            replied.len(),
            answered.len(),
            miscorrelated.is_empty()
        ));
        report.push(format!(
            "  replies the caller never saw (sent while a connection was moving): {unreplied}"
        ));
        // Written to stderr directly, not through println!, so the counts show in the
        // test run's output even when the test passes.
        let _ = std::io::stderr().write_all(format!("{}\n", report.join("\n")).as_bytes());
        report.clear();

        assert!(lost.is_empty(), "lost requests: {lost:?}");
        assert_eq!(
            once + duplicated.len() + dead.iter().filter(|id| !recorded.contains_key(id)).count(),
            REQUESTS
        );
        assert!(miscorrelated.is_empty(), "miscorrelated: {miscorrelated:?}");
        assert_eq!(
            round.stored, REQUESTS as u64,
            "a resent request was stored twice inside the duplicate window"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_durable_request_is_lost_across_runtime_kills_and_a_nats_restart() {
    // A private server even when CELLBUS_TEST_NATS_URL names one: this test restarts it.
    let mut nats = NatsServer::start_with_args(&[]);
    let url = nats.url().to_owned();
    let mut chaos = Chaos::set_up(&url, 1).await;
    let mut runtime = Runtime::start(&url);
    let round = chaos
        .round("durable chaos, one nats-server", |i| match i {
            2_000 | 8_000 => {
                runtime.restart();
                Some("runtime SIGKILLed and restarted".into())
            }
            5_000 => {
                nats.restart().unwrap();
                Some("nats-server SIGKILLed and restarted".into())
            }
            _ => None,
        })
        .await;
    runtime.kill();
    chaos.settle(&round).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_durable_request_is_lost_when_the_streams_leader_or_another_node_dies() {
    let mut cluster = NatsCluster::start();
    let urls = cluster.urls();
    let mut chaos = Chaos::set_up(&urls, 3).await;
    let runtime = Runtime::start(&urls);

    let leader = cluster.index_of(&chaos.leader().await).unwrap();
    let round = chaos
        .round(
            "durable chaos, three nodes, the stream's leader killed",
            |i| match i {
                2_000 => {
                    cluster.kill(leader);
                    Some(format!("leader {} SIGKILLed", cluster.name(leader)))
                }
                6_000 => {
                    cluster.start_again(leader).unwrap();
                    Some(format!("{} restarted", cluster.name(leader)))
                }
                _ => None,
            },
        )
        .await;
    chaos.settle(&round).await;

    let leader = cluster.index_of(&chaos.leader().await).unwrap();
    let follower = (leader + 1) % 3;
    let round = chaos
        .round(
            "durable chaos, three nodes, a follower killed",
            |i| match i {
                2_000 => {
                    cluster.kill(follower);
                    Some(format!("follower {} SIGKILLed", cluster.name(follower)))
                }
                6_000 => {
                    cluster.start_again(follower).unwrap();
                    Some(format!("{} restarted", cluster.name(follower)))
                }
                _ => None,
            },
        )
        .await;
    drop(runtime);
    chaos.settle(&round).await;
}
