//! The controllers through the kube client over a mock API server that asserts each
//! request (method, path, field manager, body), with their NATS side on a real
//! nats-server and, where Ready is at stake, a real runtime serving the pool.

mod support;

use std::sync::Arc;
use std::time::Duration;

use cellbus_contracts::assignment::assignment_key;
use cellbus_control::NatsArgs;
use cellbus_operator::controller::{cell, error_policy, pool};
use cellbus_operator::state::observed::{CellObject, PoolObject};
use cellbus_operator::Error;
use cellbus_runtime::bench::ECHO_WASM;
use cellbus_runtime::server::Identity;
use cellbus_runtime::Node;
use cellbus_testkit::NatsServer;
use futures::StreamExt;
use kube::runtime::controller::Action;
use serde_json::{json, Value};
use support::api::{mock_client, not_found, object_for, ApiServer, Call};
use support::*;

const CELLS: &str = "/apis/cellbus.io/v1alpha1/namespaces/apps/cells";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/apps/events";
const MANAGER: &str = "cellbus-operator";

fn digest() -> String {
    cellbus_control::digest_of(ECHO_WASM)
}

/// A Cell spec whose verb `append` is durable, with `stream`.
fn ledger_spec(stream: Value) -> Value {
    json!({
        "service": "ledger",
        "verbs": [{"name": "append", "delivery": "durable"}],
        "module": {"digest": digest()},
        "stream": stream,
    })
}

/// Runs one reconcile of a Cell in the background; the test plays the API server.
fn reconcile_cell(
    object: &CellObject,
    ctx: &Arc<cellbus_operator::controller::context::Context>,
) -> tokio::task::JoinHandle<Result<Action, Error>> {
    tokio::spawn(cell::reconcile(Arc::new(object.clone()), ctx.clone()))
}

fn reconcile_pool(
    object: &PoolObject,
    ctx: &Arc<cellbus_operator::controller::context::Context>,
) -> tokio::task::JoinHandle<Result<Action, Error>> {
    tokio::spawn(pool::reconcile(Arc::new(object.clone()), ctx.clone()))
}

/// Expects the JSON patch adding the finalizer to a Cell without finalizers (kube's
/// finalizer helper sends it without a field manager: a JSON patch owns no fields).
async fn expect_finalizer_added(api: &mut ApiServer, name: &str) -> Call {
    let call = api.next(|call| (200, object_for(call))).await;
    assert_eq!(call.line(), format!("PATCH {CELLS}/{name}"));
    assert_eq!(call.field_manager(), None);
    assert_eq!(
        call.body,
        json!([
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": ["cellbus.io/cleanup"]},
        ])
    );
    call
}

/// Expects a server-side apply of a Cell's status; returns the status.
async fn expect_status(api: &mut ApiServer, name: &str) -> Value {
    let call = api.next(|call| (200, object_for(call))).await;
    assert_eq!(call.line(), format!("PATCH {CELLS}/{name}/status"));
    assert_eq!(call.field_manager(), Some(MANAGER));
    assert_eq!(call.query.get("force").map(String::as_str), Some("true"));
    assert_eq!(call.body["apiVersion"], "cellbus.io/v1alpha1");
    assert_eq!(call.body["kind"], "Cell");
    call.body["status"].clone()
}

/// Expects `count` Events; returns their (type, reason, action).
async fn expect_events(api: &mut ApiServer, count: usize) -> Vec<(String, String, String)> {
    let mut events = Vec::new();
    for _ in 0..count {
        let call = api.next(|call| (201, object_for(call))).await;
        assert_eq!(call.line(), format!("POST {EVENTS}"));
        let text = |key: &str| call.body[key].as_str().unwrap_or_default().to_owned();
        events.push((text("type"), text("reason"), text("action")));
    }
    events
}

async fn read_assignment(nats: &NatsServer, pool: &str) -> Option<Vec<String>> {
    let client = cellbus_control::connect_once(&NatsArgs::url(nats.url()), "test")
        .await
        .unwrap();
    let js = async_nats::jetstream::new(client);
    let buckets = cellbus_control::ensure_buckets(&js).await.unwrap();
    cellbus_control::read_assignment(&buckets.assignments, &assignment_key(NAMESPACE, pool))
        .await
        .unwrap()
        .map(|a| a.cells.into_iter().map(|c| c.name).collect())
}

async fn push_echo(nats: &NatsServer) {
    let client = cellbus_control::connect_once(&NatsArgs::url(nats.url()), "test")
        .await
        .unwrap();
    let js = async_nats::jetstream::new(client);
    let buckets = cellbus_control::ensure_buckets(&js).await.unwrap();
    cellbus_control::push_module(&buckets.modules, ECHO_WASM)
        .await
        .unwrap();
}

/// A runtime pod of pool `apps/wasm`, in this process.
async fn runtime(nats: &NatsServer) -> (Node, cellbus_runtime::server::PoolServer) {
    let node = support::runtime_node(nats).await;
    let server = node.serve_pool(Identity {
        namespace: NAMESPACE.into(),
        pool: "wasm".into(),
        pod: "wasm-0".into(),
    });
    (node, server)
}

#[tokio::test]
async fn a_new_cell_gets_its_finalizer_assignment_and_status_then_ready_from_a_real_runtime() {
    let nats = NatsServer::start();
    push_echo(&nats).await;
    let (_node, _server) = runtime(&nats).await;
    let (client, mut api) = mock_client();
    let (ctx, mut caches) = context(client, nats.url());
    caches.apply(&pool("wasm", wasm_pool()));
    let object = cell("echo", echo_spec("echo", &digest()), 10);
    caches.apply(&object);

    // First pass: the finalizer and nothing else; the watch event of that patch brings
    // the second: the assignment (KV), then the status and one Event per new condition.
    let task = reconcile_cell(&object, &ctx);
    expect_finalizer_added(&mut api, "echo").await;
    assert_eq!(task.await.unwrap().unwrap(), Action::await_change());
    assert_eq!(read_assignment(&nats, "wasm").await, None);
    let object = with_finalizer(object);
    caches.apply(&object);
    let task = reconcile_cell(&object, &ctx);
    let status = expect_status(&mut api, "echo").await;
    let events = expect_events(&mut api, 4).await;
    task.await.unwrap().unwrap();
    assert_eq!(
        read_assignment(&nats, "wasm").await,
        Some(vec!["echo".into()])
    );
    assert_eq!(status["pool"], "wasm");
    assert_eq!(status["subjects"], json!(["cbs.echo.say"]));
    assert_eq!(status["observedGeneration"], 1);
    let types: Vec<&str> = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        ["Scheduled", "ModuleVerified", "StreamReady", "Ready"]
    );
    assert_eq!(condition(&status, "Scheduled").0, "True");
    assert_eq!(condition(&status, "ModuleVerified").1, "ModuleFound");
    assert_eq!(condition(&status, "StreamReady").1, "NoDurableVerbs");
    let actions: Vec<&str> = events
        .iter()
        .map(|(_, _, action)| action.as_str())
        .collect();
    assert_eq!(actions, types);

    // Until the runtime has loaded the cell, Ready says why not; once a pod answers $ping
    // with the digest it turns True, with one status write and one Event.
    let mut object = with_status(with_finalizer(object), &status);
    let mut status = status;
    let limit = tokio::time::Instant::now() + Duration::from_secs(60);
    while condition(&status, "Ready").0 != "True" {
        assert!(
            tokio::time::Instant::now() < limit,
            "never Ready: {:?}",
            condition(&status, "Ready")
        );
        assert_eq!(condition(&status, "Ready").1, "Waiting");
        caches.apply(&object);
        let task = reconcile_cell(&object, &ctx);
        let outcome = tokio::select! {
            done = task => Err(done),
            status = expect_status(&mut api, "echo") => Ok(status),
        };
        match outcome {
            // No write: nothing changed yet.
            Err(done) => {
                done.unwrap().unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(new) => {
                let events = expect_events(&mut api, 1).await;
                assert_eq!(events[0].1, "Serving");
                assert_eq!(events[0].0, "Normal");
                status = new;
                object = with_status(object, &status);
            }
        }
    }
    let (_, reason, message) = condition(&status, "Ready");
    assert_eq!(reason, "Serving");
    assert_eq!(message, "answered $ping from wasm-0");

    // Nothing changed since: a reconcile makes no API request at all.
    caches.apply(&object);
    let task = reconcile_cell(&object, &ctx);
    let action = task.await.unwrap().unwrap();
    api.expect_silence(Duration::from_millis(200)).await;
    assert_eq!(action, Action::requeue(ctx.timing.resync));
}

#[tokio::test]
async fn a_module_the_runtime_cannot_load_is_not_ready_with_the_runtimes_own_reason() {
    let nats = NatsServer::start();
    let (_node, _server) = runtime(&nats).await;
    let bytes = b"\0asm but not a component".to_vec();
    let client = cellbus_control::connect_once(&NatsArgs::url(nats.url()), "test")
        .await
        .unwrap();
    let buckets = cellbus_control::ensure_buckets(&async_nats::jetstream::new(client))
        .await
        .unwrap();
    let broken = cellbus_control::push_module(&buckets.modules, &bytes)
        .await
        .unwrap();
    let (client, mut api) = mock_client();
    let (ctx, mut caches) = context(client, nats.url());
    caches.apply(&pool("wasm", wasm_pool()));
    let mut object = with_finalizer(cell("echo", echo_spec("echo", &broken), 10));
    caches.apply(&object);

    // The pod reports the failure in cbs-status shortly after the assignment names the
    // module; until then Ready waits.
    let limit = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut status = json!({});
    while condition_or_none(&status, "Ready").1 != "NotLoaded" {
        assert!(
            tokio::time::Instant::now() < limit,
            "never NotLoaded: {status}"
        );
        let task = reconcile_cell(&object, &ctx);
        let outcome = tokio::select! {
            done = task => Err(done),
            status = expect_status(&mut api, "echo") => Ok(status),
        };
        match outcome {
            Err(done) => {
                done.unwrap().unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(new) => {
                let changed = if status == json!({}) { 4 } else { 1 };
                expect_events(&mut api, changed).await;
                status = new;
                object = with_status(object, &status);
                caches.apply(&object);
            }
        }
    }
    assert_eq!(condition(&status, "ModuleVerified").0, "True");
    let (ready, _, message) = condition(&status, "Ready");
    assert_eq!(ready, "False");
    assert!(
        message.starts_with("pod wasm-0 could not load the module: "),
        "{message}"
    );
}

/// Like [`condition`], but empty when the status has none of that type.
fn condition_or_none(status: &Value, type_: &str) -> (String, String, String) {
    if status["conditions"].is_array() {
        condition(status, type_)
    } else {
        Default::default()
    }
}

#[tokio::test]
async fn an_unchanged_cell_makes_no_writes() {
    let nats = NatsServer::start();
    let (client, mut api) = mock_client();
    let (ctx, mut caches) = context(client, nats.url());
    caches.apply(&pool("wasm", wasm_pool()));
    let object = with_finalizer(cell("echo", echo_spec("echo", &digest()), 10));
    caches.apply(&object);

    let task = reconcile_cell(&object, &ctx);
    let status = expect_status(&mut api, "echo").await;
    expect_events(&mut api, 4).await;
    task.await.unwrap().unwrap();
    // No runtime and no module: not Ready, saying why.
    let (ready, reason, message) = condition(&status, "Ready");
    assert_eq!(
        (ready.as_str(), reason.as_str()),
        ("False", "ModuleMissing")
    );
    assert!(message.contains("cellbus module push"), "{message}");

    let object = with_status(object, &status);
    caches.apply(&object);
    for _ in 0..3 {
        let task = reconcile_cell(&object, &ctx);
        task.await.unwrap().unwrap();
    }
    api.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn a_deleted_cell_leaves_the_assignment_loses_its_stream_and_is_released() {
    let nats = NatsServer::start();
    let (client, mut api) = mock_client();
    let (ctx, mut caches) = context(client, nats.url());
    caches.apply(&pool("wasm", wasm_pool()));
    let durable = ledger_spec(json!({}));
    let ledger = with_finalizer(cell("ledger", durable, 20));
    let echo = with_finalizer(cell("echo", echo_spec("echo", &digest()), 10));
    caches.apply(&ledger);
    caches.apply(&echo);

    // Both served: the stream exists and the assignment holds both.
    for object in [&ledger, &echo] {
        let name = object.metadata.name.clone().unwrap();
        let task = reconcile_cell(object, &ctx);
        let status = expect_status(&mut api, &name).await;
        expect_events(&mut api, 4).await;
        task.await.unwrap().unwrap();
        caches.apply(&with_status((*object).clone(), &status));
    }
    assert_eq!(
        read_assignment(&nats, "wasm").await,
        Some(vec!["echo".into(), "ledger".into()])
    );
    let bus = ctx.buses.get(nats.url()).await.unwrap();
    bus.js.get_stream("CBS_LEDGER").await.unwrap();

    // Deleted: out of the assignment, stream gone, finalizer removed — in that order.
    let ledger = deleting(caches.cell("ledger"));
    caches.apply(&ledger);
    let task = reconcile_cell(&ledger, &ctx);
    let call = api.next(|call| (200, object_for(call))).await;
    assert_eq!(call.line(), format!("PATCH {CELLS}/ledger"));
    assert_eq!(call.field_manager(), None);
    assert_eq!(
        call.body,
        json!([
            {"op": "test", "path": "/metadata/finalizers/0", "value": "cellbus.io/cleanup"},
            {"op": "remove", "path": "/metadata/finalizers/0"},
        ])
    );
    assert_eq!(task.await.unwrap().unwrap(), Action::await_change());
    assert_eq!(
        read_assignment(&nats, "wasm").await,
        Some(vec!["echo".into()])
    );
    assert!(bus.js.get_stream("CBS_LEDGER").await.is_err());

    // Cleaning up again, with the NATS side already gone, is fine.
    let task = reconcile_cell(&ledger, &ctx);
    let call = api.next(|call| (200, object_for(call))).await;
    assert_eq!(call.line(), format!("PATCH {CELLS}/ledger"));
    task.await.unwrap().unwrap();
    api.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn a_retained_stream_outlives_its_cell() {
    let nats = NatsServer::start();
    let (client, mut api) = mock_client();
    let (ctx, mut caches) = context(client, nats.url());
    caches.apply(&pool("wasm", wasm_pool()));
    let durable = ledger_spec(json!({"deletionPolicy": "Retain"}));
    let ledger = with_finalizer(cell("ledger", durable, 20));
    caches.apply(&ledger);
    let task = reconcile_cell(&ledger, &ctx);
    let status = expect_status(&mut api, "ledger").await;
    expect_events(&mut api, 4).await;
    task.await.unwrap().unwrap();
    assert_eq!(status["stream"], "CBS_LEDGER");
    assert_eq!(
        status["durable"],
        json!([{"verb": "append", "pending": 0, "deadLetters": 0}])
    );

    // Two requests waiting and one dead letter show in the status, with no Event.
    let bus = ctx.buses.get(nats.url()).await.unwrap();
    for subject in [
        "cbs.ledger.append",
        "cbs.ledger.append",
        "cbs.$dlq.ledger.append",
    ] {
        bus.js
            .publish(subject, "{}".into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let ledger = with_status(ledger, &status);
    caches.apply(&ledger);
    let task = reconcile_cell(&ledger, &ctx);
    let status = expect_status(&mut api, "ledger").await;
    task.await.unwrap().unwrap();
    assert_eq!(
        status["durable"],
        json!([{"verb": "append", "pending": 2, "deadLetters": 1}])
    );

    let ledger = deleting(with_status(ledger, &status));
    caches.apply(&ledger);
    let task = reconcile_cell(&ledger, &ctx);
    api.next(|call| (200, object_for(call))).await;
    task.await.unwrap().unwrap();
    assert_eq!(read_assignment(&nats, "wasm").await, Some(vec![]));
    bus.js.get_stream("CBS_LEDGER").await.unwrap();
}

#[tokio::test]
async fn a_cell_whose_pool_is_missing_says_so_once_and_backs_off() {
    let nats = NatsServer::start();
    let (client, mut api) = mock_client();
    let (ctx, mut caches) = context(client, nats.url());
    let mut spec = echo_spec("echo", &digest());
    spec["poolRef"] = json!("gpu");
    let object = with_finalizer(cell("echo", spec, 10));
    caches.apply(&object);

    let task = reconcile_cell(&object, &ctx);
    let status = expect_status(&mut api, "echo").await;
    let events = expect_events(&mut api, 2).await;
    let error = task.await.unwrap().unwrap_err();
    assert!(matches!(error, Error::NotPlaced { .. }), "{error}");
    let (scheduled, reason, message) = condition(&status, "Scheduled");
    assert_eq!(
        (scheduled.as_str(), reason.as_str()),
        ("False", "PoolNotFound")
    );
    assert_eq!(
        message,
        "CellPool gpu does not exist; create it or change spec.poolRef"
    );
    assert_eq!(condition(&status, "Ready").1, "PoolNotFound");
    assert!(events
        .iter()
        .all(|(type_, reason, _)| type_ == "Warning" && reason == "PoolNotFound"));
    assert_eq!(read_assignment(&nats, "gpu").await, None);

    // Retried ever more slowly, with no new write or Event.
    let object = Arc::new(with_status(object, &status));
    caches.apply(&object);
    let mut delays = vec![error_policy(object.clone(), &error, ctx.clone())];
    for _ in 0..3 {
        let error = cell::reconcile(object.clone(), ctx.clone())
            .await
            .unwrap_err();
        delays.push(error_policy(object.clone(), &error, ctx.clone()));
    }
    api.expect_silence(Duration::from_millis(200)).await;
    assert_eq!(
        delays,
        [5, 10, 20, 40].map(|s| Action::requeue(Duration::from_secs(s)))
    );

    // The pool appears: scheduled, and the backoff starts over.
    caches.apply(&pool("gpu", wasm_pool()));
    let task = tokio::spawn(cell::reconcile(object.clone(), ctx.clone()));
    let status = expect_status(&mut api, "echo").await;
    expect_events(&mut api, 4).await;
    task.await.unwrap().unwrap();
    assert_eq!(condition(&status, "Scheduled").0, "True");
    assert_eq!(
        read_assignment(&nats, "gpu").await,
        Some(vec!["echo".into()])
    );
    assert_eq!(
        error_policy(object, &error, ctx.clone()),
        Action::requeue(Duration::from_secs(5))
    );
}

#[tokio::test]
async fn a_second_cell_claiming_a_served_service_gets_conflict_and_the_first_keeps_serving() {
    let nats = NatsServer::start();
    let (client, mut api) = mock_client();
    let (ctx, mut caches) = context(client, nats.url());
    caches.apply(&pool("wasm", wasm_pool()));
    let first = with_finalizer(cell("echo", echo_spec("echo", &digest()), 100));
    let second = with_finalizer(cell("echo-copy", echo_spec("echo", &digest()), 10));
    caches.apply(&first);
    caches.apply(&second);

    let task = reconcile_cell(&second, &ctx);
    let status = expect_status(&mut api, "echo-copy").await;
    expect_events(&mut api, 2).await;
    task.await.unwrap().unwrap_err();
    let conflicted = status.clone();
    let (scheduled, reason, message) = condition(&status, "Scheduled");
    assert_eq!((scheduled.as_str(), reason.as_str()), ("False", "Conflict"));
    assert!(message.contains("by Cell apps/echo"), "{message}");

    let task = reconcile_cell(&first, &ctx);
    let status = expect_status(&mut api, "echo").await;
    expect_events(&mut api, 4).await;
    task.await.unwrap().unwrap();
    assert_eq!(condition(&status, "Scheduled").0, "True");
    assert_eq!(
        read_assignment(&nats, "wasm").await,
        Some(vec!["echo".into()])
    );

    // The first one goes: the second takes the service over on its next reconcile.
    caches.delete(&first);
    let second = with_status(second, &conflicted);
    caches.apply(&second);
    let task = reconcile_cell(&second, &ctx);
    let status = expect_status(&mut api, "echo-copy").await;
    expect_events(&mut api, 4).await;
    task.await.unwrap().unwrap();
    assert_eq!(condition(&status, "Scheduled").0, "True");
    assert_eq!(
        read_assignment(&nats, "wasm").await,
        Some(vec!["echo-copy".into()])
    );
}

#[tokio::test]
async fn a_pool_gets_its_children_once_and_an_unchanged_pool_makes_no_writes() {
    let nats = NatsServer::start();
    let (client, mut api) = mock_client();
    let (ctx, mut caches) = context(client, nats.url());
    let object = pool("wasm", json!({"runtime": "wasm", "replicas": 2}));
    caches.apply(&object);

    let children = [
        "/api/v1/namespaces/apps/serviceaccounts/cellbus-wasm",
        "/apis/apps/v1/namespaces/apps/deployments/cellbus-wasm",
        "/api/v1/namespaces/apps/services/cellbus-wasm",
        "/apis/policy/v1/namespaces/apps/poddisruptionbudgets/cellbus-wasm",
    ];
    let task = reconcile_pool(&object, &ctx);
    let mut applied = Vec::new();
    for path in children {
        let get = api.next(|_| not_found()).await;
        assert_eq!(get.line(), format!("GET {path}"));
        let apply = api
            .next(|call| {
                let mut live = object_for(call);
                if call.path.contains("deployments") {
                    live["status"] = json!({"observedGeneration": 1, "replicas": 2, "updatedReplicas": 2, "readyReplicas": 2});
                    live["metadata"]["generation"] = json!(1);
                }
                (200, live)
            })
            .await;
        assert_eq!(apply.line(), format!("PATCH {path}"));
        assert_eq!(apply.field_manager(), Some(MANAGER));
        assert_eq!(apply.query.get("force").map(String::as_str), Some("true"));
        let owners = &apply.body["metadata"]["ownerReferences"];
        assert_eq!(owners[0]["kind"], "CellPool");
        assert_eq!(owners[0]["controller"], true);
        applied.push(apply.body);
    }
    let call = api.next(|call| (200, object_for(call))).await;
    assert_eq!(
        call.line(),
        "PATCH /apis/cellbus.io/v1alpha1/namespaces/apps/cellpools/wasm/status"
    );
    let status = call.body["status"].clone();
    expect_events(&mut api, 3).await;
    task.await.unwrap().unwrap();
    assert_eq!(status["replicas"], 2);
    assert_eq!(status["readyReplicas"], 2);
    assert_eq!(condition(&status, "Ready").0, "True");
    assert_eq!(condition(&status, "Degraded").0, "False");
    assert_eq!(condition(&status, "Progressing").1, "RolledOut");
    assert_eq!(read_assignment(&nats, "wasm").await, Some(vec![]));

    // Again, with the children as the API server keeps them (defaults added): reads only.
    let object = with_status(object, &status);
    caches.apply(&object);
    let task = reconcile_pool(&object, &ctx);
    for (path, body) in children.iter().zip(&applied) {
        let get = api
            .next(|call| {
                let mut live = object_for(&Call {
                    body: body.clone(),
                    ..call.clone()
                });
                live["metadata"]["uid"] = json!("live");
                live["metadata"]["managedFields"] = json!([]);
                if path.contains("deployments") {
                    live["spec"]["progressDeadlineSeconds"] = json!(600);
                    live["metadata"]["generation"] = json!(1);
                    live["status"] = json!({"observedGeneration": 1, "replicas": 2, "updatedReplicas": 2, "readyReplicas": 2});
                }
                (200, live)
            })
            .await;
        assert_eq!(get.line(), format!("GET {path}"));
    }
    task.await.unwrap().unwrap();
    api.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn every_bad_manifest_past_the_schema_ends_as_a_condition_and_an_event_with_growing_backoff()
{
    let nats = NatsServer::start();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/invalid");
    let mut fixtures: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    fixtures.sort();
    assert!(fixtures.len() >= 30);
    for path in fixtures {
        let text = std::fs::read_to_string(&path).unwrap();
        let field = text
            .lines()
            .find_map(|l| l.strip_prefix("# field: "))
            .unwrap()
            .trim()
            .to_owned();
        // The API server refuses bad names itself; no such object reaches the operator.
        if field.starts_with("metadata.") {
            continue;
        }
        let documents = cellbus_contracts::manifest::parse_yaml(&text).unwrap();
        let (client, mut api) = mock_client();
        let (ctx, mut caches) = context(client, nats.url());
        // Past the finalizer, which a first pass adds and nothing else.
        let objects: Vec<Object> = documents
            .iter()
            .map(from_document)
            .map(|object| match object {
                Object::Cell(cell) => Object::Cell(with_finalizer(cell)),
                pool => pool,
            })
            .collect();
        for object in &objects {
            caches.apply(object);
        }
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let mut refused = false;
        for object in &objects {
            let (status, events, outcome) = reconcile_recording(object, &ctx, &mut api).await;
            let Err(error) = outcome else { continue };
            let Some(status) = status else {
                panic!("{name}: {error} but no status was written");
            };
            let names_field =
                status["conditions"].as_array().unwrap().iter().any(|c| {
                    c["status"] == "False" && c["message"].as_str().unwrap().contains(&field)
                });
            if !names_field {
                continue;
            }
            assert!(!events.is_empty(), "{name}: no Event");
            refused = true;

            // Again and again: no write, no Event, and ever longer waits.
            let object = match object {
                Object::Cell(cell) => {
                    Object::Cell(with_status(with_finalizer(cell.clone()), &status))
                }
                Object::Pool(pool) => Object::Pool(with_status(pool.clone(), &status)),
            };
            caches.apply(&object);
            let mut delays = Vec::new();
            for _ in 0..3 {
                let (status, events, outcome) = reconcile_recording(&object, &ctx, &mut api).await;
                assert!(status.is_none() && events.is_empty(), "{name}: wrote again");
                delays.push(policy(&object, &outcome.unwrap_err(), &ctx));
            }
            let expected = [10, 20, 40].map(|s| Action::requeue(Duration::from_secs(s)));
            assert_eq!(delays, expected, "{name}");
        }
        assert!(refused, "{name}: no condition names {field}");
    }
}

/// Reconciles `object` with its kind's controller, answering every request, and returns
/// the status it wrote (if any), the reasons of its Events and its outcome. Counts the
/// failure with the error policy as the controller would.
async fn reconcile_recording(
    object: &Object,
    ctx: &Arc<cellbus_operator::controller::context::Context>,
    api: &mut ApiServer,
) -> (Option<Value>, Vec<String>, Result<Action, Error>) {
    let mut task = match object {
        Object::Cell(cell) => reconcile_cell(cell, ctx),
        Object::Pool(pool) => reconcile_pool(pool, ctx),
    };
    let mut status = None;
    let mut events = Vec::new();
    let outcome = loop {
        tokio::select! {
            done = &mut task => break done.unwrap(),
            call = api.next(support::api::forgetful) => {
                if call.path.ends_with("/status") {
                    status = Some(call.body["status"].clone());
                } else if call.path.ends_with("/events") {
                    events.push(call.body["reason"].as_str().unwrap().to_owned());
                }
            }
        }
    };
    if let (Err(error), Some(_)) = (&outcome, &status) {
        policy(object, error, ctx);
    }
    (status, events, outcome)
}

/// The error policy's answer for `object` after `error`.
fn policy(
    object: &Object,
    error: &Error,
    ctx: &Arc<cellbus_operator::controller::context::Context>,
) -> Action {
    match object {
        Object::Cell(cell) => error_policy(Arc::new(cell.clone()), error, ctx.clone()),
        Object::Pool(pool) => error_policy(Arc::new(pool.clone()), error, ctx.clone()),
    }
}

/// A field removed from a CellPool (a node selector entry, a toleration, a resource
/// limit) is removed from its Deployment, and a pool changed back and forth makes no
/// write once the children match.
#[tokio::test]
async fn a_field_removed_from_a_pool_is_removed_from_its_children() {
    let nats = NatsServer::start();
    let (client, api) = mock_client();
    let (ctx, mut caches) = context(client, nats.url());
    // An API server that keeps what is applied, as server-side apply with one manager
    // does: the applied object replaces the last one.
    let kept: Arc<std::sync::Mutex<std::collections::HashMap<String, Value>>> = Arc::default();
    let calls = {
        let kept = kept.clone();
        api.serve_with(move |call| {
            let mut kept = kept.lock().unwrap();
            match call.method.as_str() {
                "GET" => kept
                    .get(&call.path)
                    .map(|object| (200, object.clone()))
                    .unwrap_or_else(not_found),
                "PATCH" if !call.path.ends_with("/status") => {
                    let object = object_for(call);
                    kept.insert(call.path.clone(), object.clone());
                    (200, object)
                }
                _ => support::api::forgetful(call),
            }
        })
    };
    let deployment = "/apis/apps/v1/namespaces/apps/deployments/cellbus-wasm";
    let full = json!({
        "runtime": "wasm",
        "nodeSelector": {"disk": "ssd", "zone": "a"},
        "tolerations": [{"key": "gpu", "operator": "Exists"}],
        "resources": {"limits": {"memory": "1Gi", "cpu": "2"}},
    });
    let mut generation = 0;
    let mut reconcile = async |spec: &Value| {
        generation += 1;
        let mut object = pool("wasm", spec.clone());
        object.metadata.generation = Some(generation);
        object.metadata.resource_version = Some(generation.to_string());
        caches.apply(&object);
        let before = calls.lock().unwrap().len();
        reconcile_pool(&object, &ctx).await.unwrap().unwrap();
        let calls = calls.lock().unwrap();
        calls[before..]
            .iter()
            .filter(|call| call.method == "PATCH" && call.path == deployment)
            .map(|call| call.body.clone())
            .collect::<Vec<_>>()
    };
    let applied = reconcile(&full).await;
    assert_eq!(applied.len(), 1);
    assert!(reconcile(&full).await.is_empty(), "an unchanged pool wrote");

    let pod = |body: &Value| body["spec"]["template"]["spec"].clone();
    let removals = [
        ("/nodeSelector/zone", "a node selector entry"),
        ("/tolerations/0", "a toleration"),
        ("/resources/limits/cpu", "a resource limit"),
    ];
    let mut spec = full.clone();
    for (pointer, what) in removals {
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        match spec.pointer_mut(parent).unwrap() {
            Value::Object(map) => {
                map.remove(key);
            }
            Value::Array(items) => {
                items.remove(key.parse().unwrap());
            }
            _ => unreachable!(),
        }
        let applied = reconcile(&spec).await;
        assert_eq!(applied.len(), 1, "removing {what} was not applied");
        let template = pod(&applied[0]);
        let container = &template["containers"][0];
        let removed = match what {
            "a node selector entry" => template["nodeSelector"].get("zone").is_some(),
            "a toleration" => template["tolerations"]
                .as_array()
                .is_some_and(|t| t.iter().any(|t| t["key"] == "gpu")),
            _ => container["resources"]["limits"].get("cpu").is_some(),
        };
        assert!(
            !removed,
            "{what} is still in the applied Deployment: {template}"
        );
        assert!(
            reconcile(&spec).await.is_empty(),
            "wrote again after removing {what}"
        );
    }
}

/// A pod that is gone without a word (killed, its node lost) leaves its report in
/// `cbs-status`: once it has not been renewed for a while it is ignored and deleted, so
/// its old errors stop showing in Cells' status; a live pod's renewed report stays.
#[tokio::test]
async fn the_report_of_a_pod_that_stopped_reporting_is_ignored_and_deleted() {
    let nats = NatsServer::start();
    let (client, api) = mock_client();
    api.serve_all();
    let stale_after = Duration::from_millis(600);
    let (ctx, mut caches) = context_with(client, nats.url(), stale_after);
    let object = pool("wasm", wasm_pool());
    caches.apply(&object);
    let bus = ctx.buses.get(nats.url()).await.unwrap();
    let report = |pod: &str| {
        json!({
            "namespace": NAMESPACE,
            "pool": "wasm",
            "pod": pod,
            "updatedAt": "2026-12-07T00:00:00Z",
            "cells": [{"name": "echo", "service": "echo", "state": "failed", "reason": "an old error"}],
        })
    };
    let put = |pod: &'static str| {
        let bus = bus.clone();
        async move {
            let key = cellbus_contracts::status::status_key(NAMESPACE, "wasm", pod);
            bus.buckets
                .status
                .put(&key, report(pod).to_string().into())
                .await
                .unwrap();
        }
    };
    put("wasm-gone").await;
    put("wasm-live").await;
    let pods = |bus: &cellbus_operator::controller::context::Bus| {
        let mut pods: Vec<String> = bus
            .pod_statuses(NAMESPACE, "wasm")
            .into_iter()
            .map(|report| report.pod)
            .collect();
        pods.sort();
        pods
    };
    let limit = tokio::time::Instant::now() + Duration::from_secs(10);
    while pods(&bus).len() < 2 {
        assert!(
            tokio::time::Instant::now() < limit,
            "the reports never arrived"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The live pod renews its report; the gone one does not.
    for _ in 0..4 {
        tokio::time::sleep(stale_after / 3).await;
        put("wasm-live").await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(pods(&bus), ["wasm-live"]);

    reconcile_pool(&object, &ctx).await.unwrap().unwrap();
    let keys: Vec<String> = bus
        .buckets
        .status
        .keys()
        .await
        .unwrap()
        .map(|key| key.unwrap())
        .collect()
        .await;
    assert_eq!(
        keys,
        [cellbus_contracts::status::status_key(
            NAMESPACE,
            "wasm",
            "wasm-live"
        )]
    );
}
