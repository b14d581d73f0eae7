//! Cells' databases through a transaction-mode pooler: a real PgBouncer 1.18 (which keeps
//! no named prepared statement across transactions) in front of a real PostgreSQL, with
//! three server connections per role for six client connections per cell, as Supavisor
//! serves a Supabase project on port 6543. Provisioning goes to the server directly, as
//! a `CREATEROLE` admin that is not a superuser.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use cellbus_contracts::wire::{ErrorBody, ErrorCode};
use cellbus_control::postgres::role_name;
use cellbus_runtime::db::{Caps, CellDatabase, MAX_ROWS};
use futures::StreamExt;
use serde_json::{json, Value};
use support::database::*;
use support::NAMESPACE;

const CAPS: Caps = Caps {
    rows: MAX_ROWS,
    bytes: 32 << 20,
};
/// Client connections of each cell's pool; the pooler has half as many to the server.
const CONNECTIONS: u32 = 6;
const SERVER_CONNECTIONS: u32 = 3;

fn deadline() -> Instant {
    Instant::now() + Duration::from_secs(30)
}

async fn query(pool: &CellDatabase, sql: &str, params: Value) -> Result<Value, ErrorBody> {
    pool.query(sql, &params.to_string(), deadline(), CAPS)
        .await
        .map(|text| serde_json::from_str(&text).unwrap())
        .map_err(|error| ErrorBody::from(&error))
}

/// Cells `alpha` and `beta`, each with a table of hits and an enum type of its own,
/// reached through PgBouncer.
async fn two_cells() -> (
    Database,
    Vec<(cellbus_runtime::db::Databases, Arc<CellDatabase>)>,
) {
    let db = Database::start_with_pooler(SERVER_CONNECTIONS).await;
    let mut pools = Vec::new();
    for cell in ["alpha", "beta"] {
        db.provision(cell, &access("readWrite"), false).await;
        db.admin_sql(&format!(
            "CREATE TYPE {cell}.kind AS ENUM ('page', 'api');
             CREATE TABLE {cell}.hits (page text PRIMARY KEY, kind {cell}.kind NOT NULL, count int NOT NULL);"
        ))
        .await;
        pools.push(db.pool(cell, CONNECTIONS));
    }
    (db, pools)
}

const HIT: &str = "INSERT INTO hits (page, kind, count) VALUES ($1, 'page', 1)
  ON CONFLICT (page) DO UPDATE SET count = hits.count + 1 RETURNING count";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_of_two_cells_counts_through_a_transaction_mode_pooler() {
    let (db, pools) = two_cells().await;
    const HITS: usize = 300;
    // Twelve at a time across both cells: more calls than client connections, more client
    // connections than server connections, typed parameters, results and an enum.
    let answers: Vec<Result<Value, ErrorBody>> = futures::stream::iter(0..2 * HITS)
        .map(|i| {
            let pool = pools[i % 2].1.clone();
            async move {
                match i % 3 {
                    0 => query(&pool, HIT, json!(["/"])).await,
                    1 => query(&pool, HIT, json!(["/about"])).await,
                    _ => {
                        query(
                            &pool,
                            "SELECT $1::int + 1 AS next, 'api'::kind AS kind",
                            json!([i]),
                        )
                        .await
                    }
                }
            }
        })
        .buffer_unordered(12)
        .collect()
        .await;
    let failed: Vec<&ErrorBody> = answers.iter().filter_map(|a| a.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{} calls failed: {failed:?}",
        failed.len()
    );

    // Every hit counted once: the counts are what was sent, per cell and page.
    let superuser = db.superuser_client().await;
    for cell in ["alpha", "beta"] {
        let rows = superuser
            .query(
                &format!("SELECT page, count FROM {cell}.hits ORDER BY page"),
                &[],
            )
            .await
            .unwrap();
        let counts: Vec<(String, i32)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        assert_eq!(
            counts,
            [("/".to_owned(), 100), ("/about".to_owned(), 100)],
            "{cell}"
        );
    }
    // The pooler held at most its server connections for each role, all idle now, none
    // in a transaction a call left open.
    for cell in ["alpha", "beta"] {
        let role = role_name(NAMESPACE, cell);
        let row = superuser
            .query_one(
                "SELECT count(*), count(*) FILTER (WHERE state LIKE 'idle in transaction%')
                   FROM pg_stat_activity WHERE usename = $1",
                &[&role],
            )
            .await
            .unwrap();
        let (connections, in_transaction): (i64, i64) = (row.get(0), row.get(1));
        assert!(
            connections <= i64::from(SERVER_CONNECTIONS),
            "{cell}: {connections}"
        );
        assert_eq!(in_transaction, 0, "{cell}");
    }
}

/// What a call could leave on the server connection the pooler hands to the next.
const SESSION: &str = "
SELECT current_setting('search_path') AS search_path,
       current_user::text AS current_role,
       current_setting('application_name') AS application_name,
       to_regclass('pg_temp.scratch')::text AS temp_table,
       (SELECT count(*)::int FROM pg_prepared_statements) AS prepared,
       (SELECT count(*)::int FROM pg_locks
         WHERE locktype = 'advisory' AND pid = pg_backend_pid()) AS advisory_locks";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_a_call_leaves_reaches_another_through_the_pooler() {
    let (_db, pools) = two_cells().await;
    let pool = &pools[0].1;
    let clean = query(pool, SESSION, json!([])).await.unwrap();
    // Only the statement of the call itself is prepared while it runs.
    assert_eq!(clean[0]["prepared"], json!(1), "{clean}");
    for leftover in [
        "SELECT set_config('search_path', 'public', false) AS s",
        "SELECT set_config('application_name', 'left', false) AS s",
        "CREATE TEMP TABLE scratch AS SELECT 1 AS one",
        "SELECT pg_advisory_lock(7) AS locked",
    ] {
        query(pool, leftover, json!([])).await.unwrap();
        // Every server connection of the role, many times over.
        let seen: Vec<Value> = futures::stream::iter(0..24)
            .map(|_| query(pool, SESSION, json!([])))
            .buffer_unordered(6)
            .map(Result::unwrap)
            .collect()
            .await;
        for session in seen {
            assert_eq!(session, clean, "after {leftover:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_gone_behind_the_pooler_is_unavailable_never_the_callers_fault() {
    let (db, pools) = two_cells().await;
    let pool = &pools[0].1;
    query(pool, HIT, json!(["/"])).await.unwrap();
    db.postgres.stop().unwrap();
    for _ in 0..3 {
        let error = query(pool, HIT, json!(["/"])).await.unwrap_err();
        assert!(
            matches!(error.code, ErrorCode::Unavailable | ErrorCode::Internal),
            "{error:?}"
        );
    }
    db.postgres.start_again().unwrap();
    // Back once PgBouncer reconnects; the connections it lost are not reused.
    let limit = Instant::now() + Duration::from_secs(30);
    loop {
        match query(pool, HIT, json!(["/"])).await {
            Ok(rows) => {
                assert_eq!(rows, json!([{"count": 2}]));
                break;
            }
            Err(error) => {
                assert_ne!(error.code, ErrorCode::BadRequest, "{error:?}");
                assert!(Instant::now() < limit, "still failing: {error:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_callers_own_mistakes_through_the_pooler_are_bad_requests() {
    let (_db, pools) = two_cells().await;
    let pool = &pools[0].1;
    for (sql, params) in [
        ("SELECT FROM nowhere_at_all", json!([])),
        ("SELEC 1", json!([])),
        ("SELECT $1::int AS n", json!(["not a number"])),
        (HIT, json!([1, 2])),
        (
            "INSERT INTO hits (page, kind, count) VALUES ('/', 'nope', 1)",
            json!([]),
        ),
    ] {
        let error = query(pool, sql, params).await.unwrap_err();
        assert_eq!(error.code, ErrorCode::BadRequest, "{sql}: {error:?}");
    }
    // And the connections they ran on serve on.
    assert_eq!(
        query(pool, HIT, json!(["/after"])).await.unwrap(),
        json!([{"count": 1}])
    );
}
