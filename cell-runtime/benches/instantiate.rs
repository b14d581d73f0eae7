//! Instantiate + call of the echo cell in a fresh store, as every request does. Criterion
//! reports the mean; the percentiles the goal is stated in (p99 ≤ 20 µs) are printed from
//! every sample taken.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cellbus_contracts::assignment::PoolAssignment;
use cellbus_contracts::resources::{CellPoolSpec, CellSpec};
use cellbus_runtime::bench::ECHO_WASM;
use cellbus_runtime::metrics::Metrics;
use cellbus_runtime::wasm::{CallContext, EngineSettings, Executor};
use criterion::{criterion_group, criterion_main, Criterion};
use serde_json::json;

fn instantiate_and_call(c: &mut Criterion) {
    let cache = tempfile::tempdir().unwrap();
    let executor = Executor::new(
        &EngineSettings {
            max_memory: 64 << 20,
            max_instances: 100,
            cache_dir: cache.path().to_owned(),
        },
        Arc::new(Metrics::new()),
    )
    .unwrap();
    let digest = cellbus_control::digest_of(ECHO_WASM);
    let pool: CellPoolSpec = serde_json::from_value(json!({"runtime": "wasm"})).unwrap();
    let spec: CellSpec = serde_json::from_value(json!({
        "service": "echo", "verbs": [{"name": "say"}], "module": {"digest": digest},
    }))
    .unwrap();
    let assignment = PoolAssignment::new("bench", "bench", &pool, [("echo", &spec)]).unwrap();
    let (component, _) = executor.component(&digest, ECHO_WASM).unwrap();
    let cell = executor
        .prepare(&assignment.cells[0], &component, None)
        .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let payload = json!({"text": "x".repeat(128)}).to_string();
    let samples = Mutex::new(Vec::<Duration>::new());

    c.bench_function("echo instantiate + call", |b| {
        b.iter_custom(|iterations| {
            let mut total = Duration::ZERO;
            let mut mine = Vec::with_capacity(iterations as usize);
            for _ in 0..iterations {
                let context = CallContext {
                    service: "echo".into(),
                    verb: "say".into(),
                    correlation_id: uuid::Uuid::new_v4(),
                    deadline: Instant::now() + Duration::from_secs(5),
                    client: None,
                };
                let started = Instant::now();
                let output = runtime
                    .block_on(executor.invoke(&cell, "say", &payload, context))
                    .unwrap();
                let took = started.elapsed();
                assert_eq!(output.len(), payload.len());
                total += took;
                mine.push(took);
            }
            samples.lock().unwrap().extend(mine);
            total
        })
    });

    let mut samples = samples.into_inner().unwrap();
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    println!(
        "echo instantiate + call over {} samples: p50 {:.1} µs, p99 {:.1} µs, p99.9 {:.1} µs (goal: p99 ≤ 20 µs)",
        samples.len(),
        at(0.5).as_secs_f64() * 1e6,
        at(0.99).as_secs_f64() * 1e6,
        at(0.999).as_secs_f64() * 1e6,
    );
}

criterion_group!(benches, instantiate_and_call);
criterion_main!(benches);
