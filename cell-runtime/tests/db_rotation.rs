//! A cell's password rotated several times while it serves: the operator changes the
//! role's password, then (a moment later) the Secret; a pod opening a connection in
//! between is refused, reads the Secret again, and waits for the new password instead of
//! failing the request. Every fourth call here returns an enum, whose lookup closes its
//! connection after the call, so logins go on all the time, and rotations go on until the
//! last call is answered. Directly and through PgBouncer.

mod support;

use std::time::{Duration, Instant};

use cellbus_contracts::wire::ErrorBody;
use cellbus_runtime::db::{Caps, MAX_ROWS};
use futures::StreamExt;
use rstest::rstest;
use serde_json::Value;
use support::database::*;

const CALLS: usize = 600;
/// Rotations at least, one every [`ROTATE_EVERY`] while calls run.
const ROTATIONS: usize = 3;
const ROTATE_EVERY: Duration = Duration::from_millis(400);
/// How long the Secret lags behind the role's new password, at most: the operator writes
/// it right after, through the Kubernetes API.
const SECRET_LAG: Duration = Duration::from_millis(300);

#[rstest]
#[case::direct(false)]
#[case::through_pgbouncer(true)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_call_fails_while_the_password_rotates(#[case] pooled: bool) {
    let db = if pooled {
        Database::start_with_pooler(3).await
    } else {
        Database::start().await
    };
    let spec = access("readWrite");
    db.provision("alpha", &spec, false).await;
    db.admin_sql(
        "CREATE TYPE alpha.kind AS ENUM ('page');
         CREATE TABLE alpha.hits (page text PRIMARY KEY, kind alpha.kind NOT NULL, count int NOT NULL);",
    )
    .await;
    let (_databases, pool) = db.pool("alpha", 4);
    let caps = Caps {
        rows: MAX_ROWS,
        bytes: 1 << 20,
    };

    let done = tokio::sync::Notify::new();
    let calls = futures::stream::iter(0..CALLS)
        .map(|i| {
            let pool = pool.clone();
            let returning = if i % 4 == 0 { "count, kind" } else { "count" };
            async move {
                pool.query(
                    &format!(
                        "INSERT INTO hits VALUES ('/', 'page', 1)
                           ON CONFLICT (page) DO UPDATE SET count = hits.count + 1 RETURNING {returning}"
                    ),
                    "[]",
                    Instant::now() + Duration::from_secs(20),
                    caps,
                )
                .await
                .map(|text| serde_json::from_str::<Value>(&text).unwrap())
                .map_err(|error| ErrorBody::from(&error))
            }
        })
        .buffer_unordered(6)
        .collect::<Vec<Result<Value, ErrorBody>>>();
    let calls = async {
        let answers = calls.await;
        done.notify_one();
        answers
    };
    let rotations = async {
        let mut passwords = Vec::new();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(ROTATE_EVERY) => {}
                _ = done.notified() => return passwords,
            }
            let password = db.change_role("alpha", &spec, true).await;
            tokio::time::sleep(SECRET_LAG).await;
            db.publish("alpha", &password);
            passwords.push(password);
        }
    };
    let started = Instant::now();
    let (answers, passwords) = tokio::join!(calls, rotations);
    let elapsed = started.elapsed();

    let failed: Vec<&ErrorBody> = answers.iter().filter_map(|a| a.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{} calls failed: {failed:?}",
        failed.len()
    );
    let mut counts: Vec<i64> = answers
        .iter()
        .map(|a| a.as_ref().unwrap()[0]["count"].as_i64().unwrap())
        .collect();
    counts.sort_unstable();
    assert_eq!(counts, (1..=CALLS as i64).collect::<Vec<_>>());
    assert!(
        passwords.len() >= ROTATIONS,
        "only {} rotations while the calls ran",
        passwords.len()
    );
    println!(
        "rotation ({}): {CALLS} calls, {} rotations with the Secret {SECRET_LAG:?} behind, none failed, {:.1} s",
        if pooled { "through PgBouncer" } else { "direct" },
        passwords.len(),
        elapsed.as_secs_f64()
    );
}
