//! A Cell with `spec.database` through the Cell controller, against a mock API server
//! and a real PostgreSQL: its Secret written once, an unchanged Cell writing nothing, a
//! lost Secret and a changed `rotate` giving a new password, an unreachable admin
//! database reported and retried until it returns, `Delete` dropping the role, no
//! password in the logs, and a schema another Cell holds refused to a later one.

mod support;

use std::sync::Arc;
use std::time::Duration;

use cellbus_control::postgres::role_name;
use cellbus_operator::controller::context::Context;
use cellbus_operator::controller::database::DatabaseArgs;
use cellbus_operator::controller::database::Databases;
use cellbus_operator::controller::{cell, error_policy};
use cellbus_operator::state::observed::CellObject;
use cellbus_testkit::{CapturedLogs, NatsServer, Postgres};
use kube::runtime::controller::Action;
use serde_json::{json, Value};
use support::api::{mock_client, not_found, object_for, ApiServer};
use support::*;
use tokio_postgres::NoTls;

const SECRET: &str = "/api/v1/namespaces/apps/secrets/visits-db";
const ROLE: &str = "/apis/rbac.authorization.k8s.io/v1/namespaces/apps/roles/cellbus-wasm";
const ROLE_BINDING: &str =
    "/apis/rbac.authorization.k8s.io/v1/namespaces/apps/rolebindings/cellbus-wasm";

fn context_with_database(
    client: kube::Client,
    nats: &NatsServer,
    url: &str,
) -> (Arc<Context>, Caches) {
    let (ctx, caches) = context(client, nats.url());
    let ctx = Arc::try_unwrap(ctx)
        .ok()
        .expect("a fresh context")
        .with_databases(Databases::new(DatabaseArgs {
            url: Some(url.to_owned()),
            sslmode: "disable".into(),
            ..DatabaseArgs::default()
        }));
    (Arc::new(ctx), caches)
}

fn visits(database: Value) -> CellObject {
    let mut spec = echo_spec("visits", &format!("sha256:{}", "e".repeat(64)));
    spec["database"] = database;
    with_finalizer(cell("visits", spec, 10))
}

/// The password in a Secret body as the client sent it (data is base64).
fn password_of(secret: &Value) -> String {
    let encoded = secret["data"]["PGPASSWORD"].as_str().unwrap();
    String::from_utf8(base64_decode(encoded)).unwrap()
}

fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let bytes: Vec<u8> = text.bytes().filter(|c| *c != b'=').map(value).collect();
    bytes
        .chunks(4)
        .flat_map(|chunk| {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, v)| n | (u32::from(*v) << (18 - 6 * i)));
            let bytes = n.to_be_bytes();
            bytes[1..chunk.len()].to_vec()
        })
        .collect()
}

async fn login(url: &str, role: &str, password: &str) -> Result<(), String> {
    let mut config: tokio_postgres::Config = url.parse().unwrap();
    config.user(role).password(password);
    match config.connect(NoTls).await {
        Ok((_, connection)) => {
            drop(connection);
            Ok(())
        }
        Err(error) => Err(error
            .as_db_error()
            .map_or_else(|| error.to_string(), |db| db.message().to_owned())),
    }
}

/// What one reconcile did.
struct Reconciled {
    /// The Secret it applied.
    secret: Option<Value>,
    /// The status it wrote.
    status: Option<Value>,
    /// The pool's Role and RoleBinding it applied.
    access: Vec<Value>,
    /// The paths it read.
    reads: Vec<String>,
    /// Every other call, as `METHOD path`.
    writes: Vec<String>,
    outcome: Result<Action, cellbus_operator::Error>,
}

/// Runs a reconcile, answering a GET of the Secret with `live` (404 when `None`) and of
/// anything else with 404.
async fn reconcile_once(
    object: &CellObject,
    ctx: &Arc<Context>,
    api: &mut ApiServer,
    live: Option<&Value>,
) -> Reconciled {
    let mut task = tokio::spawn(cell::reconcile(Arc::new(object.clone()), ctx.clone()));
    let (mut secret, mut status, mut access, mut reads, mut writes) =
        (None, None, Vec::new(), Vec::new(), Vec::new());
    let outcome = loop {
        tokio::select! {
            done = &mut task => break done.unwrap(),
            call = api.next(|call| match (call.method.as_str(), live) {
                ("GET", Some(live)) if call.path == SECRET => (200, live.clone()),
                ("GET", _) => not_found(),
                _ => (if call.method == "POST" { 201 } else { 200 }, object_for(call)),
            }) => {
                if call.method == "GET" {
                    reads.push(call.path.clone());
                } else {
                    writes.push(format!("{} {}", call.method, call.path));
                }
                if call.method == "PATCH" && call.path == SECRET {
                    assert_eq!(call.field_manager(), Some("cellbus-operator"));
                    secret = Some(call.body.clone());
                } else if call.method == "PATCH" && [ROLE, ROLE_BINDING].contains(&call.path.as_str()) {
                    assert_eq!(call.field_manager(), Some("cellbus-operator"));
                    access.push(call.body.clone());
                } else if call.path.ends_with("/status") {
                    status = Some(call.body["status"].clone());
                }
            }
        }
    };
    Reconciled {
        secret,
        status,
        access,
        reads,
        writes,
        outcome,
    }
}

#[tokio::test]
async fn a_cells_database_secret_is_written_once_rotated_when_lost_or_asked_and_never_logged() {
    let logs = CapturedLogs::default();
    let writer = logs.clone();
    // The PostgreSQL client logs through `log`, which the operator's subscriber bridges
    // (its statements are where a password would show).
    tracing_log::LogTracer::init().expect("the only logger of this test binary");
    let _guard = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || writer.clone())
            .finish(),
    );
    let nats = NatsServer::start();
    let postgres = Postgres::start();
    let admin_url = postgres.admin_url().await;
    let (client, mut api) = mock_client();
    let (ctx, mut caches) = context_with_database(client, &nats, &admin_url);
    caches.apply(&pool("wasm", wasm_pool()));
    let object = visits(json!({"access": "readWrite"}));
    caches.apply(&object);
    let role = role_name(NAMESPACE, "visits");

    // New: role, schema and Secret; DatabaseReady=True naming them; the pool's pods may
    // read that Secret and no other.
    let first_pass = reconcile_once(&object, &ctx, &mut api, None).await;
    first_pass.outcome.unwrap();
    let secret = first_pass.secret.expect("the Secret was applied");
    let status = first_pass.status.expect("the status was written");
    let [role_object, binding] = &first_pass.access[..] else {
        panic!(
            "expected the pool's Role and RoleBinding: {:?}",
            first_pass.access
        );
    };
    assert_eq!(
        role_object["rules"],
        json!([{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"], "resourceNames": ["visits-db"]}])
    );
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": "cellbus-wasm", "namespace": "apps"}])
    );
    assert_eq!(secret["metadata"]["labels"]["cellbus.io/cell"], "visits");
    assert_eq!(secret["metadata"]["annotations"]["cellbus.io/rotate"], "");
    assert!(
        secret["metadata"].get("ownerReferences").is_none(),
        "a retained role's Secret must outlive its Cell"
    );
    let keys: Vec<&str> = secret["data"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "DATABASE_URL",
            "DIRECT_URL",
            "PGDATABASE",
            "PGHOST",
            "PGPASSWORD",
            "PGPORT",
            "PGSSLMODE",
            "PGUSER"
        ]
    );
    let first = password_of(&secret);
    login(&admin_url, &role, &first).await.unwrap();
    let (ready, reason, message) = condition(&status, "DatabaseReady");
    assert_eq!((ready.as_str(), reason.as_str()), ("True", "DatabaseReady"));
    assert!(
        message.contains("credentials in Secret visits-db"),
        "{message}"
    );
    assert_eq!(status["databaseSecret"], "visits-db");

    // Unchanged: the Secret is read, nothing is written.
    let object = with_status(object, &status);
    caches.apply(&object);
    let unchanged = reconcile_once(&object, &ctx, &mut api, Some(&secret)).await;
    unchanged.outcome.unwrap();
    assert!(
        unchanged.secret.is_none() && unchanged.status.is_none() && unchanged.access.is_empty(),
        "an unchanged Cell wrote"
    );

    // Lost Secret: a new password, the old one no longer works.
    let lost = reconcile_once(&object, &ctx, &mut api, None).await;
    lost.outcome.unwrap();
    let lost = lost.secret.expect("a lost Secret is written again");
    let second = password_of(&lost);
    assert_ne!(first, second);
    assert!(login(&admin_url, &role, &first)
        .await
        .unwrap_err()
        .contains("password authentication failed"));
    login(&admin_url, &role, &second).await.unwrap();

    // rotate changed: a new password again, the Secret remembers the trigger.
    let mut rotated = visits(json!({"access": "readWrite", "rotate": "2026-11-22"}));
    rotated.metadata.generation = Some(2);
    let rotated = with_status(rotated, &status);
    caches.apply(&rotated);
    let applied = reconcile_once(&rotated, &ctx, &mut api, Some(&lost)).await;
    applied.outcome.unwrap();
    let applied = applied.secret.expect("a rotation writes the Secret");
    assert_eq!(
        applied["metadata"]["annotations"]["cellbus.io/rotate"],
        "2026-11-22"
    );
    let third = password_of(&applied);
    assert!(login(&admin_url, &role, &second).await.is_err());
    login(&admin_url, &role, &third).await.unwrap();

    // A schedule: not due an hour after the last rotation, so nothing is written; due once
    // its period has passed since the time the Secret was stamped with.
    let mut scheduled = visits(json!({
        "access": "readWrite", "rotate": "2026-11-22", "rotation": {"every": "720h"}
    }));
    scheduled.metadata.generation = Some(3);
    let scheduled = with_status(scheduled, &status);
    caches.apply(&scheduled);
    let stamp = |hours_ago: i64| {
        let mut secret = applied.clone();
        let at = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(hours_ago);
        secret["metadata"]["annotations"]["cellbus.io/rotated-at"] = json!(at.to_string());
        secret
    };
    let recent = reconcile_once(&scheduled, &ctx, &mut api, Some(&stamp(1))).await;
    recent.outcome.unwrap();
    assert!(recent.secret.is_none(), "rotated before it was due");
    login(&admin_url, &role, &third).await.unwrap();
    let due = reconcile_once(&scheduled, &ctx, &mut api, Some(&stamp(721))).await;
    due.outcome.unwrap();
    let due = due.secret.expect("a due rotation writes the Secret");
    let fourth = password_of(&due);
    assert!(login(&admin_url, &role, &third).await.is_err());
    login(&admin_url, &role, &fourth).await.unwrap();
    let rotated_at: jiff::Timestamp = due["metadata"]["annotations"]["cellbus.io/rotated-at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((jiff::Timestamp::now() - rotated_at).get_seconds().abs() < 60);

    let logs = logs.text();
    assert!(
        logs.contains("database credentials written"),
        "the logs were not captured"
    );
    assert!(
        logs.contains("CREATE ROLE"),
        "the database client's statements were not captured"
    );
    for password in [&first, &second, &third, &fourth] {
        assert!(
            !logs.contains(password.as_str()),
            "a password is in the logs"
        );
    }
    let admin_password = admin_url
        .rsplit_once('@')
        .and_then(|(credentials, _)| credentials.rsplit_once(':'))
        .map(|(_, password)| password)
        .unwrap();
    assert!(
        !logs.contains(admin_password),
        "the admin password is in the logs"
    );
}

#[tokio::test]
async fn an_unreachable_admin_database_is_reported_retried_and_recovered_from() {
    let nats = NatsServer::start();
    let postgres = Postgres::start();
    let admin_url = postgres.admin_url().await;
    let (client, mut api) = mock_client();
    let (ctx, mut caches) = context_with_database(client, &nats, &admin_url);
    caches.apply(&pool("wasm", wasm_pool()));
    let object = visits(json!({"access": "readOnly"}));
    caches.apply(&object);

    postgres.stop().unwrap();
    let failed = reconcile_once(&object, &ctx, &mut api, None).await;
    assert!(failed.secret.is_none());
    let error = failed.outcome.unwrap_err();
    assert!(
        matches!(error, cellbus_operator::Error::Database { .. }),
        "{error}"
    );
    let status = failed.status.expect("the failure is in the status");
    let (ready, reason, message) = condition(&status, "DatabaseReady");
    assert_eq!(
        (ready.as_str(), reason.as_str()),
        ("False", "DatabaseUnavailable")
    );
    assert!(
        message.contains("connecting to the admin database at 127.0.0.1:"),
        "{message}"
    );
    let object = Arc::new(with_status(object, &status));
    caches.apply(&object);
    let mut delays = vec![error_policy(object.clone(), &error, ctx.clone())];
    let again = reconcile_once(&object, &ctx, &mut api, None).await;
    assert!(
        again.status.is_none(),
        "the same failure wrote the status again"
    );
    delays.push(error_policy(
        object.clone(),
        &again.outcome.unwrap_err(),
        ctx.clone(),
    ));
    assert_eq!(
        delays,
        [5, 10].map(|s| Action::requeue(Duration::from_secs(s)))
    );

    postgres.start_again().unwrap();
    let recovered = reconcile_once(&object, &ctx, &mut api, None).await;
    recovered.outcome.unwrap();
    assert!(recovered.secret.is_some());
    assert_eq!(
        condition(&recovered.status.unwrap(), "DatabaseReady").0,
        "True"
    );
}

#[tokio::test]
async fn deleting_a_cell_with_policy_delete_drops_its_role() {
    let nats = NatsServer::start();
    let postgres = Postgres::start();
    let admin_url = postgres.admin_url().await;
    let (client, mut api) = mock_client();
    let (ctx, mut caches) = context_with_database(client, &nats, &admin_url);
    caches.apply(&pool("wasm", wasm_pool()));
    let object = visits(json!({"access": "ddl", "deletionPolicy": "Delete", "dropSchema": true}));
    caches.apply(&object);
    let created = reconcile_once(&object, &ctx, &mut api, None).await;
    created.outcome.unwrap();
    let secret = created.secret.unwrap();
    assert_eq!(secret["metadata"]["ownerReferences"][0]["kind"], "Cell");
    let role = role_name(NAMESPACE, "visits");
    login(&admin_url, &role, &password_of(&secret))
        .await
        .unwrap();

    let object = deleting(with_status(object, &created.status.unwrap()));
    caches.apply(&object);
    let deleted = reconcile_once(&object, &ctx, &mut api, None).await;
    assert_eq!(deleted.outcome.unwrap(), Action::await_change());
    // The pool's pods lose their access with the Cell: its Role and RoleBinding are
    // looked up to be deleted (the mock answers that they are gone already).
    assert!(
        deleted.reads.iter().any(|p| p == ROLE) && deleted.reads.iter().any(|p| p == ROLE_BINDING),
        "{:?}",
        deleted.reads
    );
    let (admin, connection) = tokio_postgres::connect(&admin_url, NoTls).await.unwrap();
    tokio::spawn(connection);
    let role_left = admin
        .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&role])
        .await
        .unwrap();
    assert!(role_left.is_none());
    let schema_left = admin
        .query_opt("SELECT 1 FROM pg_namespace WHERE nspname = 'visits'", &[])
        .await
        .unwrap();
    assert!(schema_left.is_none());
}

/// `object` moved to `namespace`.
fn in_namespace<K>(
    mut object: cellbus_operator::state::observed::Watched<K>,
    namespace: &str,
) -> cellbus_operator::state::observed::Watched<K> {
    object.metadata.namespace = Some(namespace.into());
    object
}

async fn admin(url: &str) -> tokio_postgres::Client {
    let (admin, connection) = tokio_postgres::connect(url, NoTls).await.unwrap();
    tokio::spawn(connection);
    admin
}

#[tokio::test]
async fn a_later_cell_naming_a_held_schema_gets_conflict_and_no_role_while_the_holder_keeps_working(
) {
    let nats = NatsServer::start();
    let postgres = Postgres::start();
    let admin_url = postgres.admin_url().await;
    let (client, mut api) = mock_client();
    let (ctx, mut caches) = context_with_database(client, &nats, &admin_url);
    caches.apply(&pool("wasm", wasm_pool()));
    caches.apply(&in_namespace(pool("wasm", wasm_pool()), "other"));
    // The holder: older, schema `visits` by default. The other: newer, in another
    // namespace, naming that schema outright.
    let holder = visits(json!({"access": "readWrite"}));
    let mut spec = echo_spec("spy", &format!("sha256:{}", "e".repeat(64)));
    spec["database"] = json!({"schema": "visits", "access": "ddl"});
    let intruder = in_namespace(with_finalizer(cell("spy", spec, 5)), "other");
    caches.apply(&holder);
    caches.apply(&intruder);
    let intruder_role = role_name("other", "spy");
    let conflict = (
        "False".to_owned(),
        "Conflict".to_owned(),
        "schema visits is already the database schema of Cell apps/visits; set \
         spec.database.schema to a schema of this Cell's own or delete that Cell"
            .to_owned(),
    );

    // Before the holder ever ran, and after: the later Cell is refused, touching neither
    // PostgreSQL nor its Secret, and says why.
    let refused = reconcile_once(&intruder, &ctx, &mut api, None).await;
    refused.outcome.unwrap();
    let status = refused.status.expect("the conflict is in the status");
    assert_eq!(condition(&status, "DatabaseReady"), conflict);
    assert_eq!(condition(&status, "Ready"), conflict);
    assert!(status.get("databaseSecret").is_none(), "{status}");
    assert!(
        refused.writes.iter().all(|w| !w.contains("/secrets/")),
        "{:?}",
        refused.writes
    );
    assert!(
        !refused.reads.iter().any(|r| r.contains("/secrets/")),
        "{:?}",
        refused.reads
    );

    let held = reconcile_once(&holder, &ctx, &mut api, None).await;
    held.outcome.unwrap();
    let secret = held.secret.expect("the holder's Secret");
    let holder_status = held.status.unwrap();
    assert_eq!(condition(&holder_status, "DatabaseReady").0, "True");
    let password = password_of(&secret);
    let holder_role = role_name(NAMESPACE, "visits");
    let mut config: tokio_postgres::Config = admin_url.parse().unwrap();
    config.user(&holder_role).password(&password);
    let (as_holder, connection) = config.connect(NoTls).await.unwrap();
    tokio::spawn(connection);
    // A table made by the admin role reaches the holder through its default privileges.
    admin(&admin_url)
        .await
        .batch_execute("CREATE TABLE visits.hits (page text)")
        .await
        .unwrap();
    as_holder
        .batch_execute("INSERT INTO visits.hits VALUES ('/secret')")
        .await
        .unwrap();

    let intruder = with_status(intruder, &status);
    caches.apply(&intruder);
    let again = reconcile_once(&intruder, &ctx, &mut api, None).await;
    again.outcome.unwrap();
    assert!(
        again.status.is_none(),
        "an unchanged conflict wrote the status again"
    );
    assert!(again.secret.is_none());
    let intruder_exists = admin(&admin_url)
        .await
        .query_opt(
            "SELECT 1 FROM pg_roles WHERE rolname = $1",
            &[&intruder_role],
        )
        .await
        .unwrap();
    assert!(intruder_exists.is_none(), "the later Cell got a role");

    // The holder is untouched: an unchanged reconcile writes nothing, its rows are there.
    let holder = with_status(holder, &holder_status);
    caches.apply(&holder);
    let unchanged = reconcile_once(&holder, &ctx, &mut api, Some(&secret)).await;
    unchanged.outcome.unwrap();
    assert!(unchanged.secret.is_none() && unchanged.status.is_none());
    let rows = as_holder
        .query("SELECT page FROM visits.hits", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, String>(0), "/secret");
}
