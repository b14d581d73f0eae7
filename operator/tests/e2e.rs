//! End to end against a real cluster: the echo example applied as a user would, served over
//! NATS by the operator's runtime pods, and cleaned up by the Cell's finalizer.
//!
//! Needs a cluster in `KUBECONFIG` with the CRDs installed and the operator running, NATS at
//! `NATS_URL` (the one the pools use, reachable from here) and `examples/echo/echo.wasm`
//! pushed (`cellbus module push`). The kind workflow sets all of that up; run with
//! `cargo test -p cellbus-operator --test e2e -- --ignored`. `CELLBUS_E2E_NAMESPACE`
//! chooses the namespace (default `default`).

use std::fmt::Debug;
use std::time::Duration;

use cellbus_contracts::assignment::{assignment_key, PoolAssignment};
use cellbus_contracts::error_chain;
use cellbus_contracts::resources::{condition, Cell, CellPool};
use cellbus_contracts::subject::request_subject;
use cellbus_contracts::wire::{Reply, Request};
use cellbus_control::NatsArgs;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition as StatusCondition;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::wait::{await_condition, conditions, Condition};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

const FIELD_MANAGER: &str = "cellbus-e2e";
/// Pulling images and starting pods on a fresh kind node takes a while.
const WAIT: Duration = Duration::from_secs(300);

fn namespace() -> String {
    std::env::var("CELLBUS_E2E_NAMESPACE").unwrap_or_else(|_| "default".into())
}

fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// Reads one object from `examples/echo`, the manifests users apply unchanged.
fn example<K: DeserializeOwned>(file: &str) -> K {
    let path = format!("{}/../examples/echo/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("parsing {path}: {e}"))
}

/// Server-side applies `object` into the namespace of `api`, as `kubectl apply
/// --server-side` would.
async fn apply<K>(api: &Api<K>, object: &K) -> K
where
    K: Resource + Clone + Debug + Serialize + DeserializeOwned,
{
    let name = object.name_any();
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(object),
    )
    .await
    .unwrap_or_else(|e| panic!("applying {name}: {}", error_chain(&e)))
}

/// Holds once the object's condition `type_` is True for its current generation.
fn condition_true<K: Resource>(
    type_: &'static str,
    conditions_of: fn(&K) -> Option<&[StatusCondition]>,
) -> impl Condition<K> {
    move |object: Option<&K>| {
        let Some(object) = object else { return false };
        let generation = object.meta().generation;
        conditions_of(object).unwrap_or_default().iter().any(|c| {
            c.type_ == type_
                && c.status == "True"
                && (c.observed_generation.is_none() || c.observed_generation == generation)
        })
    }
}

fn cell_conditions(cell: &Cell) -> Option<&[StatusCondition]> {
    cell.status.as_ref().map(|s| s.conditions.as_slice())
}

fn pool_conditions(pool: &CellPool) -> Option<&[StatusCondition]> {
    pool.status.as_ref().map(|s| s.conditions.as_slice())
}

/// Waits up to [`WAIT`] for `condition`; on a timeout, fails naming `what` and showing the
/// object as last seen (its status, finalizers and deletion time).
async fn wait_for<K>(
    api: &Api<K>,
    name: &str,
    what: &str,
    condition: impl Condition<K>,
) -> Option<K>
where
    K: Resource + Clone + Debug + Send + Serialize + DeserializeOwned + 'static,
{
    match tokio::time::timeout(WAIT, await_condition(api.clone(), name, condition)).await {
        Ok(Ok(object)) => object,
        Ok(Err(e)) => panic!("waiting for {what}: {}", error_chain(&e)),
        Err(_) => panic!(
            "{what}: not within {WAIT:?}; last seen: {}",
            last_seen(api, name).await
        ),
    }
}

async fn last_seen<K>(api: &Api<K>, name: &str) -> String
where
    K: Resource + Clone + Debug + Serialize + DeserializeOwned,
{
    let object = match api.get_opt(name).await {
        Ok(Some(object)) => object,
        Ok(None) => return "it does not exist".into(),
        Err(e) => return format!("reading it failed: {}", error_chain(&e)),
    };
    let meta = object.meta();
    let value = serde_json::to_value(&object).unwrap_or(Value::Null);
    let seen = json!({
        "generation": meta.generation,
        "finalizers": meta.finalizers,
        "deletionTimestamp": meta.deletion_timestamp,
        "status": value.get("status"),
    });
    serde_json::to_string_pretty(&seen).unwrap_or_default()
}

async fn assignment(nats: &async_nats::Client, key: &str) -> Option<PoolAssignment> {
    let buckets = cellbus_control::ensure_buckets(&async_nats::jetstream::new(nats.clone()))
        .await
        .unwrap_or_else(|e| panic!("opening the buckets: {}", error_chain(&e)));
    cellbus_control::read_assignment(&buckets.assignments, key)
        .await
        .unwrap_or_else(|e| panic!("reading the assignment {key}: {}", error_chain(&e)))
}

fn serves(assignment: Option<&PoolAssignment>, service: &str) -> bool {
    assignment.is_some_and(|a| a.cells.iter().any(|c| c.service == service))
}

#[tokio::test]
#[ignore = "needs cluster"]
async fn the_echo_example_answers_over_nats_and_its_deletion_unassigns_it() {
    let namespace = namespace();
    let client = Client::try_default().await.unwrap_or_else(|e| {
        panic!(
            "connecting to the cluster in KUBECONFIG: {}",
            error_chain(&e)
        )
    });
    let pools: Api<CellPool> = Api::namespaced(client.clone(), &namespace);
    let cells: Api<Cell> = Api::namespaced(client, &namespace);
    let pool: CellPool = example("cellpool.yaml");
    let cell: Cell = example("cell.yaml");
    let (pool_name, cell_name) = (pool.name_any(), cell.name_any());
    let service = cell.spec.service.clone();

    apply(&pools, &pool).await;
    let cell = apply(&cells, &cell).await;
    let uid = cell.uid().expect("an applied Cell has a uid");

    wait_for(
        &pools,
        &pool_name,
        &format!("CellPool {namespace}/{pool_name} Ready=True"),
        condition_true(condition::READY, pool_conditions),
    )
    .await;
    let ready = wait_for(
        &cells,
        &cell_name,
        &format!("Cell {namespace}/{cell_name} Ready=True"),
        condition_true(condition::READY, cell_conditions),
    )
    .await
    .expect("a Cell that is Ready exists");
    assert_eq!(
        ready.status.as_ref().and_then(|s| s.pool.as_deref()),
        Some(pool_name.as_str()),
        "the Cell's status names the pool that runs it"
    );

    let url = nats_url();
    let nats = cellbus_control::connect_once(&NatsArgs::url(&url), "cellbus-e2e")
        .await
        .unwrap_or_else(|e| panic!("connecting to NATS at {url}: {}", error_chain(&e)));
    let key = assignment_key(&namespace, &pool_name);
    assert!(
        serves(assignment(&nats, &key).await.as_ref(), &service),
        "the assignment {key} holds {service} while the Cell exists"
    );

    let request = Request::new(&service, "say", json!({"text": "hi"}));
    let subject = request_subject(&service, "say").expect("the example's service is valid");
    let body = serde_json::to_vec(&request).expect("a request always encodes");
    let message = nats
        .request(subject.clone(), body.into())
        .await
        .unwrap_or_else(|e| panic!("requesting {subject}: {}", error_chain(&e)));
    let reply: Reply = serde_json::from_slice(&message.payload).unwrap_or_else(|e| {
        panic!(
            "{subject} answered with something that is not a reply ({e}): {}",
            String::from_utf8_lossy(&message.payload)
        )
    });
    assert_eq!(reply.correlation_id(), request.id);
    match reply.into_result() {
        Ok(payload) => assert_eq!(payload, json!({"text": "hi"})),
        Err(error) => panic!(
            "{subject} answered {}: {}",
            error.code.as_str(),
            error.message
        ),
    }

    cells
        .delete(&cell_name, &DeleteParams::default())
        .await
        .unwrap_or_else(|e| panic!("deleting Cell {cell_name}: {}", error_chain(&e)));
    wait_for(
        &cells,
        &cell_name,
        &format!("Cell {namespace}/{cell_name} to be gone (its finalizer to finish)"),
        conditions::is_deleted(&uid),
    )
    .await;
    assert!(
        !serves(assignment(&nats, &key).await.as_ref(), &service),
        "the assignment {key} still holds {service} after its Cell is gone"
    );
    // A pool reconcile working from a stale cache must not put it back either.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(
        !serves(assignment(&nats, &key).await.as_ref(), &service),
        "the assignment {key} holds {service} again after its Cell is gone"
    );
}
