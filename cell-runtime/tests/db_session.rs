//! A cell's pool of database connections against a real PostgreSQL, one connection
//! large, so that the request after a statement provably gets the connection the
//! statement ran on: whatever a statement tries to leave there (a transaction, settings,
//! a role, temporary tables, prepared statements, advisory locks, LISTENs, cursors) the
//! next request sees none of it, whether or not the statement gets past the refusals of
//! session statements; and a query returning more than a cell could hold stops at its cap,
//! is cancelled on the server, and leaves the pool working.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use cellbus_contracts::wire::{ErrorBody, ErrorCode};
use cellbus_control::postgres::role_name;
use cellbus_runtime::db::{Caps, CellDatabase, MAX_ROWS};
use rstest::rstest;
use serde_json::{json, Value};
use support::database::*;
use support::NAMESPACE;

/// Long enough a deadline that no statement here meets it.
fn deadline() -> Instant {
    Instant::now() + Duration::from_secs(30)
}

/// What cells of the tests may return: the 32 MiB of a cell with `limits.memory: 32Mi`.
const CAPS: Caps = Caps {
    rows: MAX_ROWS,
    bytes: 32 << 20,
};

async fn query(pool: &CellDatabase, sql: &str) -> Result<Value, ErrorBody> {
    pool.query(sql, "", deadline(), CAPS)
        .await
        .map(|text| serde_json::from_str(&text).unwrap())
        .map_err(|error| ErrorBody::from(&error))
}

/// `sql` after a comment longer than the refusals of session statements read, so that it
/// reaches the server whatever its first keyword.
fn unread(sql: &str) -> String {
    format!("/*{}*/ {sql}", " ".repeat(8192))
}

/// Everything a statement could leave on its session, as the session sees it.
const SESSION: &str = "
SELECT current_setting('search_path') AS search_path,
       current_user::text AS current_role,
       session_user::text AS session_role,
       current_setting('application_name') AS application_name,
       to_regclass('pg_temp.scratch')::text AS temp_table,
       (SELECT count(*)::int FROM pg_prepared_statements WHERE from_sql) AS prepared,
       (SELECT count(*)::int FROM pg_cursors) AS cursors,
       (SELECT count(*)::int FROM pg_listening_channels()) AS listening,
       (SELECT count(*)::int FROM pg_locks
         WHERE locktype = 'advisory' AND pid = pg_backend_pid()) AS advisory_locks";

const PID: &str = "SELECT pg_backend_pid() AS pid";

/// Whether the statement's connection served the next request, or was closed.
#[derive(Debug, PartialEq)]
enum Next {
    SameConnection,
    NewConnection,
}

/// A cell `alpha` with read-write access to its schema, a table `notes`, and a role
/// `alpha_helper` its role may switch to, served by a pool of one connection.
async fn one_connection() -> (Database, cellbus_runtime::db::Databases, Arc<CellDatabase>) {
    let db = Database::start().await;
    db.provision("alpha", &access("readWrite"), false).await;
    let role = role_name(NAMESPACE, "alpha");
    db.admin_sql(&format!(
        "CREATE TABLE alpha.notes (id serial PRIMARY KEY, body text NOT NULL);
         GRANT ALL ON alpha.notes, alpha.notes_id_seq TO \"{role}\";
         CREATE ROLE alpha_helper NOLOGIN;
         GRANT alpha_helper TO \"{role}\";"
    ))
    .await;
    let (databases, pool) = db.pool("alpha", 1);
    (db, databases, pool)
}

#[rstest]
// Transactions: refused by their keyword, however it is hidden; past the refusal the
// transaction is rolled back and its connection closed.
#[case::begin("BEGIN", Err((ErrorCode::BadRequest, "BEGIN statements are not available to cells: each db call is its own transaction")), Next::SameConnection)]
#[case::begin_after_an_empty_statement(";BEGIN", Err((ErrorCode::BadRequest, "BEGIN statements are not available to cells")), Next::SameConnection)]
#[case::begin_after_a_comment_ended_by_a_carriage_return("--x\rBEGIN", Err((ErrorCode::BadRequest, "BEGIN statements are not available to cells")), Next::SameConnection)]
#[case::start_transaction("START TRANSACTION", Err((ErrorCode::BadRequest, "START statements are not available to cells")), Next::SameConnection)]
// Past the refusal, BEGIN is a no-op inside the call's own transaction; ending that
// transaction closes the connection (a pooler may already have handed it on).
#[case::begin_unread(&unread("BEGIN"), Ok(json!([])), Next::SameConnection)]
#[case::start_transaction_unread(&unread("START TRANSACTION ISOLATION LEVEL SERIALIZABLE"), Err((ErrorCode::BadRequest, "SET TRANSACTION ISOLATION LEVEL must not be called in a subtransaction")), Next::SameConnection)]
#[case::commit_unread(&unread("COMMIT"), Err((ErrorCode::BadRequest, "the statement ended the request's transaction: each db call is its own transaction")), Next::NewConnection)]
#[case::rollback_unread(&unread("ROLLBACK"), Err((ErrorCode::BadRequest, "the statement ended the request's transaction")), Next::NewConnection)]
#[case::release_our_savepoint_unread(&unread("RELEASE SAVEPOINT cellbus_call"), Ok(json!([])), Next::SameConnection)]
// Settings: SET is refused; set_config and SET past the refusal are reset.
#[case::set_config_for_the_session("SELECT set_config('search_path', 'x', false) AS s", Ok(json!([{"s": "x"}])), Next::SameConnection)]
#[case::set("SET search_path TO x", Err((ErrorCode::BadRequest, "SET statements are not available to cells: settings would outlive the request")), Next::SameConnection)]
#[case::set_unread(&unread("SET search_path TO x"), Ok(json!([])), Next::SameConnection)]
#[case::set_session_unread(&unread("SET SESSION application_name = 'x'"), Ok(json!([])), Next::SameConnection)]
#[case::set_role_unread(&unread("SET ROLE alpha_helper"), Ok(json!([])), Next::SameConnection)]
#[case::set_config_of_the_role("SELECT set_config('role', 'alpha_helper', false) AS r", Ok(json!([{"r": "alpha_helper"}])), Next::SameConnection)]
#[case::set_session_authorization_unread(&unread("SET SESSION AUTHORIZATION postgres"), Err((ErrorCode::Forbidden, "permission denied to set session authorization")), Next::SameConnection)]
// Session objects: dropped, closed, released, unlistened.
#[case::temp_table("CREATE TEMP TABLE scratch AS SELECT 1 AS one", Ok(json!([])), Next::SameConnection)]
#[case::advisory_lock("SELECT pg_advisory_lock(1) AS locked", Ok(json!([{"locked": null}])), Next::SameConnection)]
#[case::listen_unread(&unread("LISTEN things"), Ok(json!([])), Next::SameConnection)]
#[case::cursor_with_hold_unread(&unread("DECLARE c CURSOR WITH HOLD FOR SELECT 1"), Ok(json!([])), Next::SameConnection)]
// Prepared statements: refused; past the refusal, closed with their connection.
#[case::prepare("PREPARE p AS SELECT 1", Err((ErrorCode::BadRequest, "PREPARE statements are not available to cells: session state would outlive the request")), Next::SameConnection)]
#[case::prepare_unread(&unread("PREPARE p AS SELECT 1"), Err((ErrorCode::BadRequest, "the statement prepared 1 statement(s), which were dropped with its connection: session state would outlive the request")), Next::NewConnection)]
#[case::execute("EXECUTE p", Err((ErrorCode::BadRequest, "EXECUTE statements are not available to cells")), Next::SameConnection)]
#[case::deallocate_unread(&unread("DEALLOCATE ALL"), Ok(json!([])), Next::SameConnection)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_a_statement_leaves_on_its_connection_reaches_the_next_request(
    #[case] statement: &str,
    #[case] answer: Result<Value, (ErrorCode, &str)>,
    #[case] next: Next,
) {
    let (db, _databases, pool) = one_connection().await;
    let before = query(&pool, SESSION).await.unwrap();
    let pid = query(&pool, PID).await.unwrap();

    match (query(&pool, statement).await, answer) {
        (Ok(rows), Ok(expected)) => assert_eq!(rows, expected),
        (Err(error), Err((code, message))) => {
            assert_eq!(error.code, code, "{error:?}");
            assert!(error.message.starts_with(message), "{error:?}");
        }
        (got, expected) => panic!("{statement:?} answered {got:?}, not {expected:?}"),
    }

    let after_pid = query(&pool, PID).await.unwrap();
    assert_eq!(
        if after_pid == pid {
            Next::SameConnection
        } else {
            Next::NewConnection
        },
        next
    );
    // The next write is committed at once, not held in a transaction nobody ends.
    query(
        &pool,
        "INSERT INTO notes (body) VALUES ('after') RETURNING id",
    )
    .await
    .unwrap();
    let admin = db.admin_client().await;
    let committed: i64 = admin
        .query_one("SELECT count(*) FROM alpha.notes WHERE body = 'after'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(committed, 1);
    // Others may take the advisory lock.
    let free: bool = admin
        .query_one("SELECT pg_try_advisory_lock(1)", &[])
        .await
        .unwrap()
        .get(0);
    assert!(free, "advisory lock 1 is still held");
    assert_eq!(query(&pool, SESSION).await.unwrap(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_types_are_looked_up_afresh_and_the_lookups_never_outlive_the_call() {
    let (db, _databases, pool) = one_connection().await;
    db.admin_sql(
        "CREATE TYPE alpha.mood AS ENUM ('happy', 'sad');
         CREATE TYPE alpha.size AS ENUM ('small', 'large');",
    )
    .await;
    let pid = query(&pool, PID).await.unwrap();
    // The driver looks a type up with statements it prepares and keeps for the life of
    // its connection; the call's reset deallocates them (a pooler would hand them to
    // another client), so that connection is closed after its answer.
    assert_eq!(
        query(&pool, "SELECT 'happy'::mood AS m").await.unwrap(),
        json!([{"m": "happy"}])
    );
    let after_lookup = query(&pool, PID).await.unwrap();
    assert_ne!(after_lookup, pid);
    assert_eq!(
        query(&pool, "SELECT 'large'::size AS s, 'sad'::mood AS m")
            .await
            .unwrap(),
        json!([{"s": "large", "m": "sad"}])
    );
    // No connection of the cell's is left in a transaction.
    let admin = db.superuser_client().await;
    let role = role_name(NAMESPACE, "alpha");
    let _ = query(&pool, PID).await.unwrap();
    let left: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND state = 'idle in transaction'",
            &[&role],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        left, 0,
        "a connection of the cell was left in a transaction"
    );
}

#[rstest]
#[case::more_rows_than_a_cell_gets(
    "SELECT n FROM generate_series(1, 2000000) n",
    "rows",
    Some(MAX_ROWS)
)]
#[case::more_bytes_than_the_cell_holds(
    "SELECT n, repeat('x', 1000) AS x FROM generate_series(1, 2000000) n",
    "bytes",
    None
)]
#[case::one_row_larger_than_the_cell(
    "SELECT repeat('x', 40000000) AS x FROM generate_series(1, 3)",
    "bytes",
    Some(0)
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_past_its_cap_is_resource_exhausted_and_cancelled_and_the_pool_goes_on(
    #[case] sql: &str,
    #[case] cap: &str,
    #[case] rows: Option<u64>,
) {
    let (db, _databases, pool) = one_connection().await;
    let error = query(&pool, sql).await.unwrap_err();
    assert_eq!(error.code, ErrorCode::ResourceExhausted, "{error:?}");
    assert!(!error.retryable, "{error:?}");
    let details = error.details.clone().unwrap();
    assert_eq!(details["cap"], json!(cap), "{error:?}");
    let limit = match cap {
        "rows" => MAX_ROWS,
        _ => CAPS.bytes as u64,
    };
    assert_eq!(details["limit"], json!(limit), "{error:?}");
    let (reached, written) = (
        details["rows"].as_u64().unwrap(),
        details["bytes"].as_u64().unwrap(),
    );
    if let Some(rows) = rows {
        assert_eq!(reached, rows, "{error:?}");
    }
    assert!(written <= CAPS.bytes as u64, "{error:?}");
    let prefix = match cap {
        "rows" => format!(
            "the query returns more than {MAX_ROWS} rows, the most one query returns to a cell \
             (stopped after {reached} rows, {written} bytes of JSON)"
        ),
        _ => format!(
            "the query's rows come to more than {} bytes of JSON, the cell's memory \
             (stopped after {reached} rows, {written} bytes)",
            CAPS.bytes
        ),
    };
    assert!(error.message.starts_with(&prefix), "{error:?}");

    db.wait_until_not_running("alpha", "%generate_series%", 10)
        .await;
    assert_eq!(
        query(&pool, "SELECT 4 AS four").await.unwrap(),
        json!([{"four": 4}])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_of_exactly_the_capped_rows_returns_them_all() {
    let (_db, _databases, pool) = one_connection().await;
    let rows = query(
        &pool,
        &format!("SELECT n FROM generate_series(1, {MAX_ROWS}) n"),
    )
    .await
    .unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len() as u64, MAX_ROWS);
    assert_eq!(rows.last(), Some(&json!({"n": MAX_ROWS})));
}
