//! Each `db` call is one transaction of ours, so a transaction-mode pooler (Supavisor,
//! PgBouncer) keeps the call on one server connection from its first message to its
//! last: `BEGIN` and a savepoint go out with the statement's prepare, and the reset that
//! ends the call commits. Statements are prepared and closed inside the transaction, so
//! none outlives it on a server connection another client gets next.
//!
//! The reset clears what the statement left on the session before the transaction ends:
//! cursors, the role and session user, settings, `LISTEN`s, advisory locks, temporary
//! tables, sequence state and prepared statements (`DISCARD ALL` cannot run inside a
//! transaction; this is its list). A statement that failed is rolled back to the
//! savepoint first, so the reset still runs in the same transaction. The connection is
//! closed instead of reused when the statement ended our transaction (its reset ran
//! wherever the pooler sent it), prepared statements with SQL `PREPARE`, or made the
//! driver prepare statements of its own to look up custom types (enums, domains): the
//! driver keeps those for the life of the connection, and they were just deallocated.

use super::statement;
use tokio_postgres::{Client, SimpleQueryMessage};

/// Opens the transaction of one call; sent with the statement's prepare, in one round trip.
pub const BEGIN: &str = "BEGIN; SAVEPOINT cellbus_call";

/// Undoes a failed statement, so the reset runs in the call's transaction.
const ROLLBACK_FAILED: &str = "ROLLBACK TO SAVEPOINT cellbus_call;\n";

/// One simple-query message: a single round trip. The check comes first so that it sees
/// the session as the call left it. `now()` is when our transaction began and
/// `statement_timestamp()` when this message arrived, so they are equal exactly when the
/// statement ended our transaction and this message began another.
const RESET: &str = "\
SELECT now() <> statement_timestamp() AS ours,
       count(*) FILTER (WHERE from_sql) AS cell_statements,
       count(*) FILTER (WHERE NOT from_sql) AS driver_statements
  FROM pg_prepared_statements;
CLOSE ALL;
SET SESSION AUTHORIZATION DEFAULT;
RESET ALL;
UNLISTEN *;
SELECT pg_advisory_unlock_all();
DISCARD TEMP;
DISCARD SEQUENCES;
DEALLOCATE ALL;
COMMIT";

/// A connection of the pool.
pub struct Connection {
    pub client: Client,
}

impl Connection {
    pub fn new(client: Client) -> Self {
        Self { client }
    }
}

/// Why a connection cannot be given to another call.
#[derive(Debug, thiserror::Error)]
pub enum Leftover {
    /// The cell's statement ended the transaction of the call.
    #[error("the statement ended the request's transaction")]
    TransactionEnded,
    /// The cell prepared statements with SQL `PREPARE`.
    #[error("the statement prepared {count} statement(s), which were dropped with its connection")]
    PreparedStatements { count: u64 },
    /// The driver prepared statements to look up types; they were deallocated.
    #[error(
        "the driver looked up custom types with statements of its own, which were deallocated"
    )]
    TypeLookups,
    #[error("resetting the connection")]
    Reset(#[source] tokio_postgres::Error),
    #[error("resetting the connection: the server's answer had no check row")]
    NoCheck,
    #[error("resetting the connection: no time left in the request")]
    Unfinished,
}

impl Leftover {
    /// What a cell does instead of leaving this on a connection.
    pub fn advice(&self) -> &'static str {
        match self {
            Self::TransactionEnded => statement::TRANSACTION,
            _ => statement::SESSION,
        }
    }
}

/// Clears what the last call left on `connection` and ends its transaction, rolling the
/// statement back first when it `failed`; an error means the connection must be closed.
pub async fn reset(connection: &mut Connection, failed: bool) -> Result<(), Leftover> {
    let messages = if failed {
        connection
            .client
            .simple_query(&format!("{ROLLBACK_FAILED}{RESET}"))
            .await
    } else {
        connection.client.simple_query(RESET).await
    }
    .map_err(Leftover::Reset)?;
    let row = messages
        .iter()
        .find_map(|message| match message {
            SimpleQueryMessage::Row(row) => Some(row),
            _ => None,
        })
        .ok_or(Leftover::NoCheck)?;
    let number = |index: usize| {
        row.get(index)
            .and_then(|text| text.parse::<u64>().ok())
            .ok_or(Leftover::NoCheck)
    };
    if row.get(0) != Some("t") {
        return Err(Leftover::TransactionEnded);
    }
    let cell_statements = number(1)?;
    if cell_statements > 0 {
        return Err(Leftover::PreparedStatements {
            count: cell_statements,
        });
    }
    if number(2)? > 0 {
        return Err(Leftover::TypeLookups);
    }
    Ok(())
}
