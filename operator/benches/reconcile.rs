//! 1,000 Cells over 10 CellPools through the reconcilers, with a mock API server (every
//! request answered and counted) and a real nats-server: how long until every Cell is in
//! its pool's assignment, how many API writes each Cell costs on the first pass and on a
//! pass where nothing changed (goal 0), and the resident memory with 10,000 Cells in the
//! watch caches (goal ≤ 100 MB).
//!
//! `cargo bench -p cellbus-operator --bench reconcile`

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cellbus_contracts::assignment::assignment_key;
use cellbus_operator::controller::context::{Context, Timing};
use cellbus_operator::controller::{cell, pool};
use cellbus_operator::state::observed::CellObject;
use cellbus_testkit::NatsServer;
use futures::StreamExt;
use serde_json::{json, Value};
use support::api::mock_client;
use support::{context, with_finalizer, with_status};

const POOLS: usize = 10;
const CELLS: usize = 1_000;
const CACHED_CELLS: usize = 10_000;
const CONCURRENCY: usize = 100;

fn main() {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(run());
}

fn cells(count: usize) -> impl Iterator<Item = CellObject> {
    let digest = format!("sha256:{}", "e".repeat(64));
    (0..count).map(move |i| {
        let spec = json!({
            "service": format!("svc-{i}"),
            "poolRef": format!("pool-{}", i % POOLS),
            "verbs": [{"name": "get"}, {"name": "put", "input": {"type": "object"}}],
            "module": {"digest": digest},
        });
        support::cell(&format!("cell-{i}"), spec, 1_000 + i as i64)
    })
}

async fn reconcile_all(objects: &[CellObject], ctx: &Arc<Context>) {
    futures::stream::iter(objects.iter().cloned())
        .map(|object| cell::reconcile(Arc::new(object), ctx.clone()))
        .buffer_unordered(CONCURRENCY)
        .for_each(|outcome| async move {
            outcome.expect("a Cell of the benchmark failed to reconcile");
        })
        .await;
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |kb| kb * 1024)
}

async fn run() {
    let nats = NatsServer::start();
    // Memory with 10,000 Cells in the caches and the index (which judges each as it
    // arrives), then with every pool's members placed as an assignment write places them.
    // Measured first, in a context of its own, so nothing of the passes below (nor the
    // mock API server's log) is counted.
    let (memory_ctx, mut memory_caches) = context(mock_client().0, nats.url());
    memory_ctx.buses.get(nats.url()).await.unwrap();
    for i in 0..POOLS {
        memory_caches.apply(&support::pool(
            &format!("pool-{i}"),
            json!({"runtime": "wasm"}),
        ));
    }
    let before = rss_bytes();
    for object in cells(CACHED_CELLS) {
        memory_caches.apply(&object);
    }
    let cached = rss_bytes();
    let snapshot = memory_ctx.snapshot();
    let placed = (0..POOLS)
        .filter_map(|i| {
            snapshot
                .pool(support::NAMESPACE, &format!("pool-{i}"))
                .cloned()
        })
        .map(|pool| snapshot.members(&pool, &memory_ctx.config).len())
        .sum::<usize>();
    let after = rss_bytes();
    drop(snapshot);
    drop(memory_caches);
    drop(memory_ctx);

    let (client, api) = mock_client();
    let calls = api.serve_all();
    let (ctx, mut caches) = context(client, nats.url());
    // The wait for `$ping` replies is the Ready check's; no runtime answers here, so
    // every Cell waits it out in full.
    let ctx = Arc::new(Arc::try_unwrap(ctx).ok().unwrap().with_timing(Timing {
        ping_wait: Duration::from_millis(100),
        ..Timing::default()
    }));
    for i in 0..POOLS {
        let object = support::pool(&format!("pool-{i}"), json!({"runtime": "wasm"}));
        caches.apply(&object);
        pool::reconcile(Arc::new(object), ctx.clone())
            .await
            .unwrap();
    }
    // Past their finalizers, which a pass of its own adds before the first apply.
    let objects: Vec<CellObject> = cells(CELLS).map(with_finalizer).collect();
    for object in &objects {
        caches.apply(object);
    }
    let writes_before = writes(&calls);

    // First pass, while a watcher of the assignments notes when every Cell is in one.
    let bus = ctx.buses.get(nats.url()).await.unwrap();
    let assignments = bus.buckets.assignments.clone();
    let started = Instant::now();
    let scheduled = tokio::spawn(async move {
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut watch = assignments.watch_all().await.unwrap();
        while let Some(entry) = watch.next().await {
            let entry = entry.unwrap();
            let assignment: Value = serde_json::from_slice(&entry.value).unwrap();
            seen.insert(
                entry.key,
                assignment["cells"].as_array().map_or(0, Vec::len),
            );
            if seen.values().sum::<usize>() == CELLS {
                return started.elapsed();
            }
        }
        panic!("the assignment watch ended");
    });
    reconcile_all(&objects, &ctx).await;
    let first_pass = started.elapsed();
    let all_scheduled = tokio::time::timeout(Duration::from_secs(60), scheduled)
        .await
        .expect("not every Cell was scheduled")
        .unwrap();
    let first_writes = writes(&calls) - writes_before;

    // Feed back what the first pass wrote, as the watches would, and go again.
    let statuses = last_statuses(&calls);
    let updated: Vec<CellObject> = objects
        .iter()
        .map(|object| {
            let name = object.metadata.name.as_deref().unwrap();
            with_status(with_finalizer(object.clone()), &statuses[name])
        })
        .collect();
    for object in &updated {
        caches.apply(object);
    }
    let writes_before = writes(&calls);
    let started = Instant::now();
    reconcile_all(&updated, &ctx).await;
    let second_pass = started.elapsed();
    let noop_writes = writes(&calls) - writes_before;
    let key = assignment_key(support::NAMESPACE, "pool-0");
    let pool_0 = cellbus_control::read_assignment(&bus.buckets.assignments, &key)
        .await
        .unwrap()
        .unwrap();

    println!("cellbus-operator reconcile benchmark ({CELLS} Cells over {POOLS} CellPools, mock API, real nats-server, {CONCURRENCY} reconciles at a time)");
    println!(
        "  first pass: every Cell in its pool's assignment after {:.2} s; pass done after {:.2} s (each Cell also waits {} ms for $ping)",
        all_scheduled.as_secs_f64(),
        first_pass.as_secs_f64(),
        ctx.timing.ping_wait.as_millis()
    );
    println!(
        "  API writes on the first pass: {first_writes} ({:.2} per Cell: status, one Event per new condition)",
        first_writes as f64 / CELLS as f64
    );
    println!(
        "  API writes on a pass with nothing changed: {noop_writes} ({:.2} per Cell; goal 0), pass took {:.2} s",
        noop_writes as f64 / CELLS as f64,
        second_pass.as_secs_f64()
    );
    println!("  pool-0 serves {} cells", pool_0.cells.len());
    println!(
        "  resident memory with {CACHED_CELLS} Cells in the caches: {:.1} MB ({:.1} MB before adding them, {:.1} MB once cached and indexed, the rest once placed; {placed} placed; goal <= 100 MB)",
        after as f64 / 1e6,
        before as f64 / 1e6,
        cached as f64 / 1e6
    );
}

fn writes(calls: &std::sync::Mutex<Vec<support::api::Call>>) -> usize {
    calls
        .lock()
        .unwrap()
        .iter()
        .filter(|c| c.is_write())
        .count()
}

fn last_statuses(calls: &std::sync::Mutex<Vec<support::api::Call>>) -> HashMap<String, Value> {
    let mut statuses = HashMap::new();
    for call in calls.lock().unwrap().iter() {
        if let Some(rest) = call.path.strip_suffix("/status") {
            if rest.contains("/cells/") {
                let name = rest.rsplit('/').next().unwrap().to_owned();
                statuses.insert(name, call.body["status"].clone());
            }
        }
    }
    statuses
}
