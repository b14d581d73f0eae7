//! What one `db` call leaves on a pooled connection, cleared before the connection serves
//! another: cursors, the role and session user, settings, `LISTEN`s, advisory locks,
//! temporary tables and sequence state are reset; an open transaction and prepared
//! statements of the cell's own are not, and their connection is closed instead (closing
//! rolls the transaction back).
//!
//! This is `DISCARD ALL` without its `DEALLOCATE ALL` (the list deadpool-postgres runs to
//! recycle a connection): tokio-postgres keeps the statements it prepares to look up
//! custom types (enums, domains) for the life of the connection and would fail on its next
//! lookup had they gone. The statements the cell prepared with SQL are told apart from the
//! driver's by `pg_prepared_statements.from_sql`.

use tokio_postgres::{Client, SimpleQueryMessage};

/// One simple-query message: a single round trip. The check comes first so that it sees
/// the session as the call left it. `statement_timestamp()` is when this message arrived,
/// and `transaction_timestamp()` equals it only in a transaction this message started, so
/// the two differ exactly when a transaction was already open.
const RESET: &str = "\
SELECT statement_timestamp() <> transaction_timestamp() AS in_transaction,
       count(*) FILTER (WHERE from_sql) AS cell_statements,
       count(*) FILTER (WHERE NOT from_sql) AS driver_statements
  FROM pg_prepared_statements;
CLOSE ALL;
SET SESSION AUTHORIZATION DEFAULT;
RESET ALL;
UNLISTEN *;
SELECT pg_advisory_unlock_all();
DISCARD TEMP;
DISCARD SEQUENCES";

/// A connection of the pool with what its reset last found.
pub struct Connection {
    pub client: Client,
    /// Statements the driver had prepared on this connection at its last reset. They are
    /// only ever added to, so fewer means the cell deallocated them.
    driver_statements: u64,
}

impl Connection {
    pub fn new(client: Client) -> Self {
        Self {
            client,
            driver_statements: 0,
        }
    }
}

/// Why a connection cannot be given to another call.
#[derive(Debug, thiserror::Error)]
pub enum Leftover {
    /// The cell's statement opened a transaction.
    #[error("the statement opened a transaction, which was rolled back")]
    Transaction,
    /// The cell prepared statements with SQL `PREPARE`.
    #[error("the statement prepared {count} statement(s), which were dropped with its connection")]
    PreparedStatements { count: u64 },
    /// The cell deallocated statements the driver relies on.
    #[error("the statement deallocated the connection's own prepared statements, so the connection was closed")]
    DriverStatements,
    #[error("resetting the connection")]
    Reset(#[source] tokio_postgres::Error),
    #[error("resetting the connection: the server's answer had no check row")]
    NoCheck,
    #[error("resetting the connection: no time left in the request")]
    Unfinished,
}

/// Clears what the last call left on `connection`; an error means it must be closed.
pub async fn reset(connection: &mut Connection) -> Result<(), Leftover> {
    let messages = connection
        .client
        .simple_query(RESET)
        .await
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
    if row.get(0) != Some("f") {
        return Err(Leftover::Transaction);
    }
    let cell_statements = number(1)?;
    if cell_statements > 0 {
        return Err(Leftover::PreparedStatements {
            count: cell_statements,
        });
    }
    let driver_statements = number(2)?;
    if driver_statements < connection.driver_statements {
        return Err(Leftover::DriverStatements);
    }
    connection.driver_statements = driver_statements;
    Ok(())
}
