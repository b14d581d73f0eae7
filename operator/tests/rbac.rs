//! The operator's RBAC (`operator/src/rbac.rs`, from which the Helm chart's is generated)
//! is exactly what its code calls. Every test's mock API server already refuses a request
//! the rules do not grant; this test runs every path that calls the API — the
//! controllers' watches, a pool scaled up and down, a Cell with a database created and
//! deleted, a repeated Event, leader election — against an API server that remembers what
//! it is sent, and checks that each rule is used.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cellbus_operator::controller::database::DatabaseArgs;
use cellbus_operator::controller::database::Databases;
use cellbus_operator::controller::{cell, pool};
use cellbus_operator::leader::{self, LeaseSettings};
use cellbus_operator::metrics::Metrics;
use cellbus_operator::rbac::{Access, RULES};
use cellbus_operator::run::{self, RunArgs};
use cellbus_testkit::{NatsServer, Postgres};
use clap::Parser;
use futures::FutureExt;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::Api;
use serde_json::{json, Value};
use support::api::{mock_client, not_found, object_for, Call};
use support::*;

/// Rules the operator holds without calling them: the API server's
/// OwnerReferencesPermissionEnforcement admission asks for them when a child names its
/// owner with blockOwnerDeletion.
const ADMISSION_ONLY: &[&str] = &["cells/finalizers", "cellpools/finalizers"];

/// An API server that keeps what it is sent: applied objects can be read back, listed and
/// deleted. Watches end at once (the watcher lists again later).
#[derive(Clone, Default)]
struct Remembering(Arc<Mutex<BTreeMap<String, Value>>>);

impl Remembering {
    fn respond(&self, call: &Call) -> (u16, Value) {
        let mut objects = self.0.lock().unwrap();
        match call.method.as_str() {
            "GET" if call.query.contains_key("watch") => (200, Value::Null),
            "GET" => match objects.get(&call.path) {
                Some(object) => (200, object.clone()),
                None if is_collection(&call.path) => {
                    let prefix = format!("{}/", call.path);
                    let items: Vec<Value> = objects
                        .iter()
                        .filter(|(path, _)| path.starts_with(&prefix))
                        .map(|(_, object)| object.clone())
                        .collect();
                    (
                        200,
                        json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"}, "items": items}),
                    )
                }
                None => not_found(),
            },
            "DELETE" => match objects.remove(&call.path) {
                Some(_) => (
                    200,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
                ),
                None => not_found(),
            },
            _ => {
                let mut object = object_for(call);
                object["metadata"]["resourceVersion"] = json!("1");
                let path = match call.method.as_str() {
                    "POST" => format!(
                        "{}/{}",
                        call.path,
                        object["metadata"]["name"].as_str().unwrap()
                    ),
                    _ => call.path.trim_end_matches("/status").to_owned(),
                };
                objects.insert(path, object.clone());
                (200, object)
            }
        }
    }
}

/// `/api/v1/namespaces/apps/secrets` lists; `/api/v1/namespaces/apps/secrets/x` is one.
fn is_collection(path: &str) -> bool {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match parts.as_slice() {
        ["api", _, rest @ ..] | ["apis", _, _, rest @ ..] => {
            matches!(rest, [_] | ["namespaces", _, _])
        }
        _ => false,
    }
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    run: RunArgs,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rule_is_called_and_every_call_is_a_rule() {
    let nats = NatsServer::start();
    let postgres = Postgres::start();
    let (client, api) = mock_client();
    let server = Remembering::default();
    let respond = server.clone();
    let calls = api.serve_with(move |call| respond.respond(call));

    // The controllers' watches: Cells, CellPools and the pools' Deployments.
    let args = Cli::parse_from(["cellbus-operator", "--nats-url", nats.url()]).run;
    let shutdown = tokio::time::sleep(Duration::from_secs(2)).boxed().shared();
    run::controllers(client.clone(), &args, Arc::new(Metrics::new()), shutdown).await;

    let (ctx, mut caches) = context(client.clone(), nats.url());
    let ctx = Arc::new(
        Arc::try_unwrap(ctx)
            .ok()
            .expect("a fresh context")
            .with_databases(Databases::new(DatabaseArgs {
                url: Some(postgres.url().to_owned()),
                sslmode: "disable".into(),
                ..DatabaseArgs::default()
            })),
    );

    // A pool of two replicas gets a PodDisruptionBudget, which goes when it shrinks to one.
    let two = pool("wasm", json!({"runtime": "wasm", "replicas": 2}));
    caches.apply(&two);
    pool::reconcile(Arc::new(two), ctx.clone()).await.unwrap();
    let one = pool("wasm", json!({"runtime": "wasm", "replicas": 1}));
    caches.apply(&one);
    pool::reconcile(Arc::new(one), ctx.clone()).await.unwrap();

    // A pool whose trust reads its keys from a ConfigMap (missing here: it says so).
    let trust = json!({"from": [{"configMapKeyRef": {"name": "signers", "key": "signers.pem"}}]});
    let trusting = pool("trusting", json!({"runtime": "process", "trust": trust}));
    caches.apply(&trusting);
    pool::reconcile(Arc::new(trusting), ctx.clone())
        .await
        .unwrap();

    // A Cell with a database: the finalizer, its Secret, the pool's Role for it; then
    // deleted, which takes the Role away and releases the Cell.
    let mut spec = echo_spec("visits", &format!("sha256:{}", "e".repeat(64)));
    spec["database"] = json!({"access": "readWrite"});
    let fresh = cell("visits", spec, 10);
    caches.apply(&fresh);
    cell::reconcile(Arc::new(fresh.clone()), ctx.clone())
        .await
        .unwrap();
    let finalized = with_finalizer(fresh);
    caches.apply(&finalized);
    cell::reconcile(Arc::new(finalized.clone()), ctx.clone())
        .await
        .unwrap();
    let status = server.0.lock().unwrap()["/apis/cellbus.io/v1alpha1/namespaces/apps/cells/visits"]
        ["status"]
        .clone();
    let gone = deleting(with_status(finalized, &status));
    caches.apply(&gone);
    cell::reconcile(Arc::new(gone), ctx.clone()).await.unwrap();

    // The same Event twice: the second is a patch of the first's series.
    let object = ObjectReference {
        api_version: Some("cellbus.io/v1alpha1".into()),
        kind: Some("Cell".into()),
        name: Some("visits".into()),
        namespace: Some(NAMESPACE.into()),
        ..ObjectReference::default()
    };
    for _ in 0..2 {
        let event = cellbus_operator::controller::context::transition_event(
            "Ready", false, "Waiting", "again",
        );
        ctx.publish(&object, event).await;
    }

    // Leader election: the Lease is created, renewed, then given up.
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), "cellbus-system");
    let settings = LeaseSettings::new("cellbus-system", "cellbus-operator", "replica-0");
    for _ in 0..2 {
        assert!(
            leader::try_acquire(&leases, &settings, jiff::Timestamp::now())
                .await
                .unwrap()
        );
    }
    assert!(leader::release(&leases, &settings).await.unwrap());

    let called: BTreeSet<(String, String, String)> = calls
        .lock()
        .unwrap()
        .iter()
        .map(|call| {
            let query: Vec<String> = call.query.iter().map(|(k, v)| format!("{k}={v}")).collect();
            Access::of_request(&call.method, &call.path, &query.join("&"))
                .unwrap_or_else(|| panic!("{} is not a resource", call.line()))
        })
        .map(|access| (access.group, access.resource, access.verb.to_owned()))
        .collect();
    let mut unused = Vec::new();
    for rule in RULES {
        for resource in rule.resources {
            if ADMISSION_ONLY.contains(resource) {
                continue;
            }
            for verb in rule.verbs {
                let key = (
                    rule.group.to_owned(),
                    resource.to_string(),
                    verb.to_string(),
                );
                if !called.contains(&key) {
                    unused.push(format!("{verb} {}/{resource}", rule.group));
                }
            }
        }
    }
    assert!(
        unused.is_empty(),
        "rbac::RULES grants what the operator never calls: {unused:?}\ncalled: {called:?}"
    );
}
