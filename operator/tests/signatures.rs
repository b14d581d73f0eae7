//! The operator's verification of signed modules, on the matrix the command line and the
//! runtime are tested with (cell-runtime/tests/signed_modules.rs): keys, certificates and
//! signatures made by `openssl`. Placement decides from the watch caches alone; the
//! reconcile then reports the signer, or why not, in `ModuleVerified`, and a Cell that
//! fails never reaches its pool's assignment in KV.

mod support;

use std::sync::Arc;

use cellbus_contracts::assignment::assignment_key;
use cellbus_control::NatsArgs;
use cellbus_operator::controller::cell;
use cellbus_operator::state::observed::ObservedCell;
use cellbus_operator::Error;
use cellbus_runtime::bench::ECHO_WASM;
use cellbus_testkit::pki::{Case, Signatures, TrustKind};
use cellbus_testkit::NatsServer;
use serde_json::{json, Value};
use support::api::{mock_client, object_for};
use support::*;

fn pool_name(kind: TrustKind) -> &'static str {
    match kind {
        TrustKind::Keys => "keys",
        TrustKind::Certificates => "certificates",
    }
}

fn spec_of(case: &Case) -> Value {
    let mut spec = echo_spec(&case.service, &cellbus_control::digest_of(&case.module));
    spec["poolRef"] = json!(pool_name(case.trust));
    if let Some(signature) = &case.signature {
        spec["signature"] = signature.clone();
    }
    spec
}

#[tokio::test]
async fn only_cells_whose_signature_verifies_are_placed_and_assigned() {
    let signatures = Signatures::new(ECHO_WASM).unwrap();
    let (client, _api) = mock_client();
    let (ctx, mut caches) = context(client, "nats://127.0.0.1:4222");
    for kind in [TrustKind::Keys, TrustKind::Certificates] {
        let spec = json!({"runtime": "wasm", "trust": signatures.trust(kind)});
        caches.apply(&pool(pool_name(kind), spec));
    }
    for case in &signatures.cases {
        caches.apply(&cell(&case.service, spec_of(case), 10));
    }
    let snapshot = ctx.snapshot();
    for case in &signatures.cases {
        let object = caches_cell(&caches, &case.service);
        match (snapshot.placement(&object, &ctx.config), case.refused) {
            (Ok(pool), None) => assert_eq!(pool.name(), pool_name(case.trust)),
            (Err(not_placed), Some(reason)) => {
                assert_eq!(
                    not_placed.reason, reason,
                    "{}: {}",
                    case.service, not_placed.message
                );
                assert!(not_placed.unverified, "{}", case.service);
            }
            (placed, expected) => panic!(
                "{}: placed {:?}, expected refusal {expected:?}",
                case.service,
                placed.map(|pool| pool.name().to_owned())
            ),
        }
    }
    for kind in [TrustKind::Keys, TrustKind::Certificates] {
        let pool = snapshot.pool(NAMESPACE, pool_name(kind)).unwrap().clone();
        let assignment = snapshot.assignment(&pool, &ctx.config).unwrap().unwrap();
        let mut assigned: Vec<&str> = assignment.cells.iter().map(|c| c.name.as_str()).collect();
        assigned.sort();
        let mut expected: Vec<&str> = signatures
            .cases
            .iter()
            .filter(|case| case.trust == kind && case.refused.is_none())
            .map(|case| case.service.as_str())
            .collect();
        expected.sort();
        assert_eq!(assigned, expected);
        // The pods verify again against the trust the assignment carries.
        assert_eq!(
            serde_json::to_value(&assignment.trust).unwrap(),
            signatures.trust(kind)
        );
    }

    // Rotating the key pool away from key A takes A's Cell out; B's stays.
    let spec = json!({"runtime": "wasm", "trust": signatures.trust_without("rotate-a")});
    let mut rotated = pool("keys", spec);
    rotated.metadata.resource_version = Some("2".into());
    rotated.metadata.generation = Some(2);
    drop(snapshot);
    caches.apply(&rotated);
    let snapshot = ctx.snapshot();
    let refused = snapshot
        .placement(&caches_cell(&caches, "rotate-a"), &ctx.config)
        .unwrap_err();
    assert_eq!(refused.reason, "UnknownKey");
    assert!(snapshot
        .placement(&caches_cell(&caches, "rotate-b"), &ctx.config)
        .is_ok());
}

/// The Cell as the reconciler reads it from the caches.
fn caches_cell(caches: &Caches, name: &str) -> ObservedCell {
    ObservedCell::from_object(&caches.cell(name))
}

#[test]
fn a_pool_whose_trust_cannot_be_read_is_invalid_naming_the_entry() {
    let weak = cellbus_testkit::pki::Pki::new().unwrap();
    let key = weak
        .key("weak", cellbus_testkit::pki::KeyKind::Rsa(1024))
        .unwrap();
    let good = weak
        .key("good", cellbus_testkit::pki::KeyKind::Ed25519)
        .unwrap();
    let read = cellbus_testkit::pki::read;
    for (trust, field, words) in [
        (
            json!({"keys": [read(&good.public), read(&key.public)]}),
            "spec.trust.keys[1]",
            "1024 bits; at least 2048",
        ),
        (
            json!({"keys": ["ed25519:AAAA"]}),
            "spec.trust.keys[0]",
            "not a PEM public key",
        ),
        (
            json!({"certificateAuthorities": [read(&good.public)]}),
            "spec.trust.certificateAuthorities[0]",
            "not a PEM certificate",
        ),
    ] {
        let object = pool("keys", json!({"runtime": "wasm", "trust": trust}));
        let observed = cellbus_operator::state::observed::ObservedPool::from_object(&object);
        let errors = observed.spec.expect_err("the pool is invalid");
        assert_eq!(errors[0].field, field, "{errors:?}");
        assert!(errors[0].message.contains(words), "{errors:?}");
    }
}

#[tokio::test]
async fn module_verified_names_the_signer_or_why_not() {
    let signatures = Signatures::new(ECHO_WASM).unwrap();
    let nats = NatsServer::start();
    let client = cellbus_control::connect_once(&NatsArgs::url(nats.url()), "test")
        .await
        .unwrap();
    let buckets = cellbus_control::ensure_buckets(&async_nats::jetstream::new(client))
        .await
        .unwrap();
    cellbus_control::push_module(&buckets.modules, ECHO_WASM)
        .await
        .unwrap();
    let (client, mut api) = mock_client();
    let (ctx, mut caches) = context(client, nats.url());
    for kind in [TrustKind::Keys, TrustKind::Certificates] {
        let spec = json!({"runtime": "wasm", "trust": signatures.trust(kind)});
        caches.apply(&pool(pool_name(kind), spec));
    }
    let case = |service: &str| {
        signatures
            .cases
            .iter()
            .find(|case| case.service == service)
            .unwrap()
    };

    for (service, status, reason, words) in [
        (
            "signed-ed25519",
            "True",
            "Signed",
            "signed by key sha256:".to_owned(),
        ),
        (
            "cert-chained",
            "True",
            "Signed",
            "signed by certificate CN=release-chained (rsa-pss-sha256) issued under CN=cellbus-test-root"
                .to_owned(),
        ),
        (
            "cert-expired",
            "False",
            "CertificateExpired",
            "spec.signature: CellPool certificates does not run this module: certificate CN=release-expired has expired"
                .to_owned(),
        ),
        (
            "untrusted",
            "False",
            "UnknownKey",
            "which is not trusted".to_owned(),
        ),
    ] {
        let object = with_finalizer(cell(service, spec_of(case(service)), 10));
        caches.apply(&object);
        let task = tokio::spawn(cell::reconcile(Arc::new(object.clone()), ctx.clone()));
        let call = api.next(|call| (200, object_for(call))).await;
        assert!(call.line().ends_with(&format!("/cells/{service}/status")), "{}", call.line());
        let status_value = call.body["status"].clone();
        // One Event per new condition.
        let conditions = status_value["conditions"].as_array().unwrap().len();
        for _ in 0..conditions {
            api.next(|call| (201, object_for(call))).await;
        }
        let outcome = task.await.unwrap();
        let (verified, why, message) = condition(&status_value, "ModuleVerified");
        assert_eq!((verified.as_str(), why.as_str()), (status, reason), "{service}: {message}");
        assert!(message.contains(&words), "{service}: {message}");
        if status == "False" {
            assert!(matches!(outcome, Err(Error::NotPlaced { .. })), "{outcome:?}");
            assert_eq!(condition(&status_value, "Scheduled").1, reason);
        } else {
            outcome.unwrap();
        }
    }
    let assigned = |pool: &'static str| {
        let buckets = buckets.clone();
        async move {
            cellbus_control::read_assignment(&buckets.assignments, &assignment_key(NAMESPACE, pool))
                .await
                .unwrap()
                .map(|a| a.cells.into_iter().map(|c| c.name).collect::<Vec<_>>())
        }
    };
    assert_eq!(
        assigned("keys").await,
        Some(vec!["signed-ed25519".to_owned()])
    );
    assert_eq!(
        assigned("certificates").await,
        Some(vec!["cert-chained".to_owned()])
    );
}

/// A pool whose keys live in a ConfigMap: read through the API at every reconcile, the
/// trust they make places the Cells and travels in the assignment; when the ConfigMap
/// is gone, the pool says so, its Cells wait, and the pods keep the assignment they have.
#[tokio::test]
async fn a_pools_trust_sources_are_read_through_the_api() {
    let signatures = Signatures::new(ECHO_WASM).unwrap();
    let nats = NatsServer::start();
    let (client, api) = mock_client();
    let (ctx, mut caches) = context(client, nats.url());
    let bundle: String = signatures.trust(TrustKind::Keys)["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|key| key.as_str().unwrap())
        .collect();
    let present = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let calls = {
        let present = present.clone();
        api.serve_with(move |call| {
            if call.path == "/api/v1/namespaces/apps/configmaps/signers" {
                if present.load(std::sync::atomic::Ordering::SeqCst) {
                    return (
                        200,
                        json!({
                            "apiVersion": "v1",
                            "kind": "ConfigMap",
                            "metadata": {"name": "signers", "namespace": NAMESPACE},
                            "data": {"signers.pem": bundle},
                        }),
                    );
                }
                return support::api::not_found();
            }
            support::api::forgetful(call)
        })
    };
    let spec = json!({
        "runtime": "wasm",
        "trust": {"from": [{"configMapKeyRef": {"name": "signers", "key": "signers.pem"}}]},
    });
    let object = pool("keys", spec);
    caches.apply(&object);
    for service in ["signed-ed25519", "untrusted"] {
        let case = signatures
            .cases
            .iter()
            .find(|case| case.service == service)
            .unwrap();
        caches.apply(&cell(service, spec_of(case), 10));
    }
    // Before the pool has read its sources, its Cells wait.
    let waiting = ctx
        .snapshot()
        .placement(&caches_cell(&caches, "signed-ed25519"), &ctx.config)
        .unwrap_err();
    assert_eq!(waiting.reason, "TrustPending");

    cellbus_operator::controller::pool::reconcile(Arc::new(object.clone()), ctx.clone())
        .await
        .unwrap();
    let pool_status = |calls: &[support::api::Call]| {
        calls
            .iter()
            .rev()
            .find(|call| call.path.ends_with("/cellpools/keys/status"))
            .map(|call| call.body["status"].clone())
            .expect("a status write")
    };
    let status = pool_status(&calls.lock().unwrap());
    let (resolved, reason, message) = condition(&status, "TrustResolved");
    assert_eq!(
        (resolved.as_str(), reason.as_str()),
        ("True", "TrustResolved")
    );
    assert_eq!(
        message,
        "6 keys and 0 certificate authorities, with 1 sources read"
    );
    let snapshot = ctx.snapshot();
    assert!(snapshot
        .placement(&caches_cell(&caches, "signed-ed25519"), &ctx.config)
        .is_ok());
    assert_eq!(
        snapshot
            .placement(&caches_cell(&caches, "untrusted"), &ctx.config)
            .unwrap_err()
            .reason,
        "UnknownKey"
    );
    drop(snapshot);
    let client = cellbus_control::connect_once(&NatsArgs::url(nats.url()), "test")
        .await
        .unwrap();
    let buckets = cellbus_control::ensure_buckets(&async_nats::jetstream::new(client))
        .await
        .unwrap();
    let key = assignment_key(NAMESPACE, "keys");
    let assignment = cellbus_control::read_assignment(&buckets.assignments, &key)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(assignment.cells.len(), 1);
    let trust = assignment.trust.unwrap();
    assert!(
        trust.from.is_empty(),
        "the pods are given keys, not sources"
    );
    assert_eq!(trust.keys.len(), 6);

    // The ConfigMap is deleted: the pool says why, Cells wait, the assignment stays.
    present.store(false, std::sync::atomic::Ordering::SeqCst);
    let object = with_status(object, &status);
    caches.apply(&object);
    cellbus_operator::controller::pool::reconcile(Arc::new(object), ctx.clone())
        .await
        .unwrap();
    let status = pool_status(&calls.lock().unwrap());
    let (resolved, reason, message) = condition(&status, "TrustResolved");
    assert_eq!(
        (resolved.as_str(), reason.as_str()),
        ("False", "TrustSourceUnavailable")
    );
    assert_eq!(
        message,
        "spec.trust.from[0]: trust source ConfigMap signers key signers.pem: ConfigMap signers does not exist in namespace apps"
    );
    assert_eq!(
        ctx.snapshot()
            .placement(&caches_cell(&caches, "signed-ed25519"), &ctx.config)
            .unwrap_err()
            .reason,
        "TrustPending"
    );
    let kept = cellbus_control::read_assignment(&buckets.assignments, &key)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(kept.cells.len(), 1);
}
