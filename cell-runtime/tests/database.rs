//! Cells with a database, through the bus, against a real PostgreSQL and nats-server: each
//! cell reaches its own schema and nothing else, a rotated password is picked up, a Secret
//! that is not there yet or a database that is down is an `unavailable` envelope that
//! clears by itself, a statement past its deadline is cancelled, and no password reaches
//! the runtime's logs.

mod support;

use std::sync::Arc;

use cellbus_contracts::assignment::MAX_DATABASE_CONNECTIONS_PER_POD;
use cellbus_contracts::status::LoadState;
use cellbus_contracts::wire::{ErrorBody, ErrorCode};
use cellbus_control::postgres;
use cellbus_runtime::db::Databases;
use serde_json::{json, Value};
use support::database::*;
use support::*;

fn assert_not_logged(password: &str) {
    let text = logs().text();
    assert!(
        text.contains("CREATE ROLE"),
        "the database client's statements were not captured"
    );
    let leaks: Vec<String> = text
        .lines()
        .filter(|line| line.contains(password))
        .map(|line| line.replace(password, "<PASSWORD>"))
        .collect();
    assert!(
        leaks.is_empty(),
        "a password appears in the runtime's logs:\n{}",
        leaks.join("\n")
    );
}

/// A cell `service` whose verb `sql` runs its payload through `db`.
fn sql_cell(service: &str, database: Option<&str>, timeout_ms: u32) -> TestCell {
    let extra = match database {
        Some(access) => json!({"database": {"access": access}}),
        None => json!({}),
    };
    TestCell::new(
        service,
        json!([{"name": "sql", "timeoutMs": timeout_ms}]),
        support::sql_cell(),
        extra,
    )
}

async fn bus_reading(database: &Database) -> Bus {
    logs();
    let mut bus = Bus::start().await;
    bus.node.shared.databases = Arc::new(Databases::new(Some(database.secrets.clone())));
    bus
}

async fn sql(bus: &Bus, service: &str, statement: &str) -> Result<Value, ErrorBody> {
    bus.call(service, "sql", json!(statement)).await
}

fn assert_refused(result: Result<Value, ErrorBody>, code: ErrorCode, sqlstate: &str) {
    let error = result.expect_err("the statement should be refused");
    assert_eq!(error.code, code, "{error:?}");
    assert_eq!(
        error.details.as_ref().map(|d| d["sqlstate"].clone()),
        Some(json!(sqlstate)),
        "{error:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_cell_reaches_its_own_schema_with_the_access_it_was_granted() {
    let db = Database::start().await;
    let alpha_password = db.provision("alpha", &access("readWrite"), false).await;
    let beta_password = db.provision("beta", &access("readOnly"), false).await;
    db.admin_sql(
        "CREATE TABLE alpha.notes (id serial PRIMARY KEY, body text NOT NULL);
         CREATE TABLE beta.notes (id serial PRIMARY KEY, body text NOT NULL);
         INSERT INTO beta.notes (body) VALUES ('from admin');",
    )
    .await;
    let bus = bus_reading(&db).await;
    let server = bus
        .deploy(&[
            sql_cell("alpha", Some("readWrite"), 5000),
            sql_cell("beta", Some("readOnly"), 5000),
            sql_cell("gamma", None, 5000),
        ])
        .await;

    // The search path is the cell's schema, so names need no schema.
    assert_eq!(
        sql(&bus, "alpha", "SHOW search_path").await.unwrap(),
        json!([{"search_path": "alpha"}])
    );
    assert_eq!(
        sql(
            &bus,
            "alpha",
            "INSERT INTO notes (body) VALUES ('one') RETURNING id, body"
        )
        .await
        .unwrap(),
        json!([{"id": 1, "body": "one"}])
    );
    assert_eq!(
        sql(&bus, "alpha", "SELECT body FROM notes").await.unwrap(),
        json!([{"body": "one"}])
    );
    assert_eq!(
        sql(&bus, "beta", "SELECT body FROM notes").await.unwrap(),
        json!([{"body": "from admin"}])
    );

    // Another cell's schema, DDL without the grant, roles and schemas: refused.
    assert_refused(
        sql(&bus, "alpha", "SELECT * FROM beta.notes").await,
        ErrorCode::Forbidden,
        "42501",
    );
    assert_refused(
        sql(&bus, "alpha", "CREATE TABLE more (id int)").await,
        ErrorCode::Forbidden,
        "42501",
    );
    assert_refused(
        sql(&bus, "alpha", "CREATE SCHEMA elsewhere").await,
        ErrorCode::Forbidden,
        "42501",
    );
    assert_refused(
        sql(&bus, "alpha", "CREATE ROLE intruder").await,
        ErrorCode::Forbidden,
        "42501",
    );
    assert_refused(
        sql(&bus, "beta", "INSERT INTO notes (body) VALUES ('no')").await,
        ErrorCode::Forbidden,
        "42501",
    );
    // Supabase's own schemas, made by its superuser and granted to its API roles: out of
    // reach, as is every way up to a role with more.
    db.superuser_client()
        .await
        .batch_execute(
            "CREATE ROLE authenticated NOLOGIN; CREATE ROLE service_role NOLOGIN BYPASSRLS;
             CREATE SCHEMA auth; CREATE TABLE auth.users (id uuid PRIMARY KEY, email text);
             CREATE SCHEMA storage; CREATE TABLE storage.objects (id uuid PRIMARY KEY, name text);
             GRANT USAGE ON SCHEMA auth, storage TO authenticated, service_role;
             GRANT ALL ON ALL TABLES IN SCHEMA auth, storage TO authenticated, service_role;",
        )
        .await
        .unwrap();
    for statement in [
        "SELECT * FROM auth.users",
        "SELECT * FROM storage.objects",
        "SELECT set_config('role', 'service_role', false) AS r",
        "SELECT set_config('role', 'cells_admin', false) AS r",
        "ALTER ROLE CURRENT_USER CREATEROLE",
        "ALTER ROLE CURRENT_USER BYPASSRLS",
        "GRANT authenticated TO CURRENT_USER",
        "SELECT rolpassword FROM pg_authid",
        "CREATE SCHEMA IF NOT EXISTS auth",
        "DROP SCHEMA beta CASCADE",
    ] {
        let error = sql(&bus, "alpha", statement).await.expect_err(statement);
        assert_eq!(error.code, ErrorCode::Forbidden, "{statement}: {error:?}");
    }

    // The cell's own mistakes are its bad requests, with the SQLSTATE to tell them apart.
    assert_refused(
        sql(&bus, "alpha", "SELEC 1").await,
        ErrorCode::BadRequest,
        "42601",
    );
    assert_refused(
        sql(&bus, "alpha", "SELECT * FROM missing").await,
        ErrorCode::BadRequest,
        "42P01",
    );
    let unsupported = sql(&bus, "alpha", "SELECT point(1, 2) AS p")
        .await
        .expect_err("a point cannot be returned as JSON");
    assert_eq!(unsupported.code, ErrorCode::BadRequest);
    assert!(unsupported.message.contains("p::text"), "{unsupported:?}");
    // One statement per call, and none that would leave a transaction or a setting on a
    // pooled connection for the cell's next request.
    assert_refused(
        sql(&bus, "alpha", "SELECT 1; DROP TABLE notes").await,
        ErrorCode::BadRequest,
        "42601",
    );
    for session in ["/* hold it */ BEGIN", "set search_path to beta"] {
        let refused = sql(&bus, "alpha", session)
            .await
            .expect_err("a session statement is refused");
        assert_eq!(refused.code, ErrorCode::BadRequest, "{refused:?}");
        assert!(
            refused.message.contains("not available to cells"),
            "{refused:?}"
        );
    }
    assert_eq!(
        sql(&bus, "alpha", "SELECT count(*)::int AS n FROM notes")
            .await
            .unwrap(),
        json!([{"n": 1}])
    );

    // A component importing `db` without spec.database does not load.
    let gamma = server
        .states()
        .into_iter()
        .find(|s| s.service == "gamma")
        .unwrap();
    assert_eq!(gamma.state, LoadState::Failed);
    assert!(
        gamma
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("cellbus:cell/db") && r.contains("spec.database")),
        "{gamma:?}"
    );

    server.shutdown().await;
    assert_not_logged(&alpha_password);
    assert_not_logged(&beta_password);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_password_is_read_again_when_the_database_refuses_the_old_one() {
    let db = Database::start().await;
    let old = db.provision("alpha", &access("readOnly"), false).await;
    let bus = bus_reading(&db).await;
    let server = bus
        .deploy(&[sql_cell("alpha", Some("readOnly"), 5000)])
        .await;
    assert_eq!(
        sql(&bus, "alpha", "SELECT 1 AS one").await.unwrap(),
        json!([{"one": 1}])
    );

    let new = db.provision("alpha", &access("readOnly"), true).await;
    assert_ne!(old, new);
    // Sessions opened with the old password live on; end them so the pool reconnects.
    let role = postgres::role_name(NAMESPACE, "alpha");
    db.superuser_client()
        .await
        .batch_execute(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'"
        ))
        .await
        .unwrap();
    eventually(10, "a query after the rotation", async || {
        sql(&bus, "alpha", "SELECT 2 AS two").await.ok() == Some(json!([{"two": 2}]))
    })
    .await;

    server.shutdown().await;
    assert_not_logged(&old);
    assert_not_logged(&new);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_not_there_yet_and_a_database_that_is_down_are_unavailable_until_they_are_back() {
    let db = Database::start().await;
    let bus = bus_reading(&db).await;
    let server = bus
        .deploy(&[sql_cell("alpha", Some("readOnly"), 5000)])
        .await;

    let missing = sql(&bus, "alpha", "SELECT 1 AS one")
        .await
        .expect_err("no Secret yet");
    assert_eq!(missing.code, ErrorCode::Unavailable);
    assert!(
        missing.message.contains("test/alpha-db") && missing.message.contains("does not exist"),
        "{missing:?}"
    );

    let password = db.provision("alpha", &access("readOnly"), false).await;
    assert_eq!(
        sql(&bus, "alpha", "SELECT 1 AS one").await.unwrap(),
        json!([{"one": 1}])
    );

    db.postgres.stop().unwrap();
    let down = sql(&bus, "alpha", "SELECT 1 AS one")
        .await
        .expect_err("the database is down");
    assert_eq!(down.code, ErrorCode::Unavailable, "{down:?}");
    assert!(down.retryable, "{down:?}");
    // The runtime's own line about it names the request it was serving.
    let text = logs().text();
    let line = text
        .lines()
        .find(|line| line.contains("cannot connect to the cell's database"))
        .expect("the failure was logged");
    for field in ["request{", "service=alpha", "verb=sql", "correlation_id="] {
        assert!(line.contains(field), "{field} missing from {line}");
    }
    db.postgres.start_again().unwrap();
    eventually(20, "a query once the database is back", async || {
        sql(&bus, "alpha", "SELECT 3 AS three").await.ok() == Some(json!([{"three": 3}]))
    })
    .await;

    server.shutdown().await;
    assert_not_logged(&password);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_past_the_deadline_times_out_and_is_cancelled_on_the_server() {
    let db = Database::start().await;
    let password = db.provision("alpha", &access("readOnly"), false).await;
    let bus = bus_reading(&db).await;
    let server = bus
        .deploy(&[sql_cell("alpha", Some("readOnly"), 500)])
        .await;

    let slow = sql(&bus, "alpha", "SELECT pg_sleep(60)")
        .await
        .expect_err("past the deadline");
    assert_eq!(slow.code, ErrorCode::Timeout, "{slow:?}");

    let (client, connection) = tokio_postgres::connect(db.postgres.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    eventually(10, "the sleeping statement to be cancelled", async || {
        let running: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(60)' AND state = 'active'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        running == 0
    })
    .await;
    assert_eq!(
        sql(&bus, "alpha", "SELECT 4 AS four").await.unwrap(),
        json!([{"four": 4}])
    );

    server.shutdown().await;
    assert_not_logged(&password);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_the_pools_connections_wait_their_turn_within_their_deadline() {
    let db = Database::start().await;
    let password = db.provision("alpha", &access("readOnly"), false).await;
    let bus = bus_reading(&db).await;
    let server = bus
        .deploy(&[sql_cell("alpha", Some("readOnly"), 1500)])
        .await;

    // More sleepers than the pool has connections (one pod, the default limit of 5: the
    // most a pod opens): the last ones wait for one and time out instead of queueing past
    // their deadline.
    let waiting: Vec<_> = (0..MAX_DATABASE_CONNECTIONS_PER_POD + 2)
        .map(|_| bus.spawn_call("alpha", "sql", json!("SELECT pg_sleep(1)")))
        .collect();
    let mut codes = Vec::new();
    for call in waiting {
        codes.push(
            call.await
                .unwrap()
                .into_result()
                .map(|_| ())
                .map_err(|e| e.code),
        );
    }
    assert!(codes.contains(&Ok(())), "{codes:?}");
    assert!(codes.contains(&Err(ErrorCode::Timeout)), "{codes:?}");

    server.shutdown().await;
    assert_not_logged(&password);
}
