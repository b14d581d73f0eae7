//! Fixtures of the controller tests: objects as the API server would send them, and a
//! reconcile context over a mock API server and a real nats-server.
#![allow(dead_code)]

pub mod api;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use cellbus_control::NatsCredentials;
use cellbus_operator::controller::context::{Buses, Context, Timing};
use cellbus_operator::metrics::Metrics;
use cellbus_operator::state::conditions::FixedClock;
use cellbus_operator::state::index::Index;
use cellbus_operator::state::observed::{CellObject, PoolObject, Watched};
use cellbus_operator::Config;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use serde_json::{json, Value};

/// The namespace of every fixture.
pub const NAMESPACE: &str = "apps";

/// The instant the fixed clock tells.
pub fn now() -> Time {
    Time(Timestamp::from_second(1_800_000_000).unwrap())
}

/// A Cell as the API server sends it: generation 1, created `age` seconds before
/// [`now`] (older Cells hold their service).
pub fn cell(name: &str, spec: Value, age: i64) -> CellObject {
    object("Cell", name, spec, age)
}

/// A CellPool as the API server sends it.
pub fn pool(name: &str, spec: Value) -> PoolObject {
    object("CellPool", name, spec, 1_000)
}

fn object<K>(kind: &str, name: &str, spec: Value, age: i64) -> Watched<K> {
    let created = Timestamp::from_second(1_800_000_000 - age).unwrap();
    serde_json::from_value(json!({
        "apiVersion": "cellbus.io/v1alpha1",
        "kind": kind,
        "metadata": {
            "name": name,
            "namespace": NAMESPACE,
            "uid": uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, format!("{kind}/{name}").as_bytes()).to_string(),
            "generation": 1,
            "resourceVersion": "1",
            "creationTimestamp": created.to_string(),
        },
        "spec": spec,
    }))
    .unwrap()
}

/// A Cell or a CellPool.
pub enum Object {
    Cell(CellObject),
    Pool(PoolObject),
}

/// A document (as a manifest holds it) as the API server would send it.
pub fn from_document(document: &Value) -> Object {
    let mut document = document.clone();
    let metadata = document["metadata"].as_object_mut().unwrap();
    metadata.insert("namespace".into(), json!(NAMESPACE));
    metadata.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
    metadata.insert("generation".into(), json!(1));
    metadata.insert("resourceVersion".into(), json!("1"));
    metadata.insert("creationTimestamp".into(), json!("2027-01-01T00:00:00Z"));
    match document["kind"].as_str() {
        Some("Cell") => Object::Cell(serde_json::from_value(document).unwrap()),
        Some("CellPool") => Object::Pool(serde_json::from_value(document).unwrap()),
        other => panic!("not a Cellbus kind: {other:?}"),
    }
}

/// `object` with the finalizer the Cell controller adds.
pub fn with_finalizer<K>(mut object: Watched<K>) -> Watched<K> {
    object.metadata.finalizers = Some(vec![cellbus_operator::controller::cell::FINALIZER.into()]);
    object
}

/// `object` with `status` as the operator last wrote it, at a new resourceVersion.
pub fn with_status<K>(object: Watched<K>, status: &Value) -> Watched<K> {
    let mut object = object.with_status(status);
    bump(&mut object);
    object
}

/// `object` marked for deletion.
pub fn deleting<K>(mut object: Watched<K>) -> Watched<K> {
    object.metadata.deletion_timestamp = Some(now());
    bump(&mut object);
    object
}

fn bump<K>(object: &mut Watched<K>) {
    let version: u64 = object
        .metadata
        .resource_version
        .as_deref()
        .unwrap_or("0")
        .parse()
        .unwrap();
    object.metadata.resource_version = Some((version + 1).to_string());
}

/// The watch caches and the index they feed, which the tests fill as the watches would.
pub struct Caches {
    cells: Writer<CellObject>,
    pools: Writer<PoolObject>,
    index: Arc<RwLock<Index>>,
}

/// What the caches hold.
pub trait Cached {
    fn apply_to(&self, caches: &mut Caches);
}

impl Cached for CellObject {
    fn apply_to(&self, caches: &mut Caches) {
        caches.cell_event(&watcher::Event::Apply(self.clone()));
    }
}

impl Cached for PoolObject {
    fn apply_to(&self, caches: &mut Caches) {
        let event = watcher::Event::Apply(self.clone());
        caches.pools.apply_watcher_event(&event);
        caches
            .index
            .write()
            .unwrap()
            .pool_event(Some(NAMESPACE), &event);
    }
}

impl<T: Cached> Cached for Arc<T> {
    fn apply_to(&self, caches: &mut Caches) {
        self.as_ref().apply_to(caches);
    }
}

impl Cached for Object {
    fn apply_to(&self, caches: &mut Caches) {
        match self {
            Object::Cell(cell) => cell.apply_to(caches),
            Object::Pool(pool) => pool.apply_to(caches),
        }
    }
}

impl Caches {
    pub fn apply(&mut self, object: &impl Cached) {
        object.apply_to(self);
    }

    pub fn delete(&mut self, object: &CellObject) {
        self.cell_event(&watcher::Event::Delete(object.clone()));
    }

    fn cell_event(&mut self, event: &watcher::Event<CellObject>) {
        self.cells.apply_watcher_event(event);
        self.index
            .write()
            .unwrap()
            .cell_event(Some(NAMESPACE), event);
    }

    /// The Cell `name` as the cache holds it.
    pub fn cell(&self, name: &str) -> CellObject {
        let found = self
            .cells
            .as_reader()
            .get(&ObjectRef::new(name).within(NAMESPACE))
            .unwrap_or_else(|| panic!("no Cell {name} in the cache"));
        (*found).clone()
    }
}

/// Timings for tests: a short wait for `$ping`, the real backoffs.
pub fn timing() -> Timing {
    Timing {
        ping_wait: Duration::from_millis(300),
        ..Timing::default()
    }
}

/// A context whose Kubernetes requests go to `client` and whose pools use the NATS at
/// `nats_url`, with a fixed clock.
pub fn context(client: kube::Client, nats_url: &str) -> (Arc<Context>, Caches) {
    context_with(
        client,
        nats_url,
        cellbus_contracts::status::REPORT_STALE_AFTER,
    )
}

/// The same, taking a pod report not renewed for `stale_after` for a gone pod's.
pub fn context_with(
    client: kube::Client,
    nats_url: &str,
    stale_after: Duration,
) -> (Arc<Context>, Caches) {
    let index: Arc<RwLock<Index>> = Arc::default();
    let config = Config {
        nats_url: nats_url.to_owned(),
        ..Config::default()
    };
    let context = Context::new(
        client,
        config,
        Buses::new(NatsCredentials::default(), HashMap::new()).with_stale_after(stale_after),
        index.clone(),
        Arc::new(Metrics::new()),
    )
    .with_timing(timing())
    .with_clock(Arc::new(FixedClock(now())));
    let caches = Caches {
        cells: Writer::new(()),
        pools: Writer::new(()),
        index,
    };
    (Arc::new(context), caches)
}

/// The spec of a wasm pool.
pub fn wasm_pool() -> Value {
    json!({"runtime": "wasm"})
}

/// The spec of an echo Cell with module `digest`.
pub fn echo_spec(service: &str, digest: &str) -> Value {
    json!({"service": service, "verbs": [{"name": "say"}], "module": {"digest": digest}})
}

/// The condition `type_` of a status, as (status, reason, message).
pub fn condition(status: &Value, type_: &str) -> (String, String, String) {
    let found = status["conditions"]
        .as_array()
        .unwrap_or_else(|| panic!("no conditions in {status}"))
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {status}"));
    let text = |key: &str| found[key].as_str().unwrap_or_default().to_owned();
    (text("status"), text("reason"), text("message"))
}

/// A runtime process's node (engine, NATS connection, buckets) on `nats`, in this
/// process, with a code cache of its own.
pub async fn runtime_node(nats: &cellbus_testkit::NatsServer) -> cellbus_runtime::Node {
    let cache = tempfile::tempdir().unwrap();
    cellbus_runtime::Node::start(
        &cellbus_control::NatsArgs::url(nats.url()),
        &cellbus_runtime::EngineArgs {
            cache_dir: cache.keep(),
            ..cellbus_runtime::EngineArgs::default()
        },
        "runtime",
    )
    .await
    .unwrap()
}
