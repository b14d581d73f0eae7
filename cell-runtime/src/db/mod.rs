//! Database access for cells: the host side of the `db` interface. A cell whose Cell has
//! `spec.database` reaches its own schema through a small connection pool, shared by the
//! versions of the cell a pod runs, with the credentials of the Secret the operator (or
//! `cellbus up`) made for it.
//!
//! The credentials are read when the first connection is opened, and again when the
//! database refuses them (the password was rotated). They are held only inside the
//! connection settings: never logged, never put in an error, a metric or an envelope.
//!
//! A connection goes back to the pool only once `session` has cleared what the call left
//! on it; one that cannot be cleared, or whose call was cut short, is closed and whatever
//! it still runs on the server cancelled.
//!
//! The pool is ours, not `deadpool-postgres`: deadpool recycles a connection when it is
//! next taken, but the reset must run inside the call's own transaction, before the
//! connection is handed back (through a transaction-mode pooler, a transaction left open
//! until the next call would hold a server connection, and its locks, meanwhile); and a
//! call cut short must cancel and close its connection, which deadpool returns on drop.
//! With both done around deadpool's objects, what it would keep is a semaphore and an
//! idle list, a few lines here.

pub mod rows;
pub mod secrets;
pub mod session;
pub mod statement;
pub mod values;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use cellbus_contracts::assignment::AssignedDatabase;
use futures::TryStreamExt;
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;
use tracing::{debug, warn};

pub use rows::{Caps, MAX_ROWS};

use crate::error::RequestError;

/// How long a refused password is tried again (with the Secret read again each time)
/// before a call fails: the gap between a rotated role and its Secret, and a pooler's
/// credentials cache catching up (Supavisor's takes a few seconds).
pub const CREDENTIALS_WAIT: Duration = Duration::from_secs(10);
const CREDENTIALS_RETRY_FIRST: Duration = Duration::from_millis(50);
const CREDENTIALS_RETRY_MAX: Duration = Duration::from_secs(1);
pub use secrets::{SecretSource, SourceError};
use session::{Connection, Leftover};

/// The pools of one runtime process, by Secret: two versions of a cell (an update in
/// flight) share one.
pub struct Databases {
    source: Option<Arc<dyn SecretSource>>,
    pools: Mutex<HashMap<(String, String), Weak<CellDatabase>>>,
}

impl Databases {
    /// `source` reads the Secrets; without one, cells with a database do not load.
    pub fn new(source: Option<Arc<dyn SecretSource>>) -> Self {
        Self {
            source,
            pools: Mutex::default(),
        }
    }

    /// The pool of the cell's database Secret in `namespace`, made when first asked for
    /// with as many connections as the assignment says (a role's connection limit covers
    /// all pods of the pool; the operator shares it among them).
    pub fn pool(
        &self,
        namespace: &str,
        database: &AssignedDatabase,
    ) -> Result<Arc<CellDatabase>, NoSecretSource> {
        let secret = database.secret.as_str();
        let Some(source) = &self.source else {
            return Err(NoSecretSource {
                namespace: namespace.to_owned(),
                secret: secret.to_owned(),
            });
        };
        let key = (namespace.to_owned(), secret.to_owned());
        let mut pools = self.pools.lock().expect("pools lock");
        if let Some(pool) = pools.get(&key).and_then(Weak::upgrade) {
            return Ok(pool);
        }
        pools.retain(|_, pool| pool.strong_count() > 0);
        let pool = Arc::new(CellDatabase::new(
            source.clone(),
            namespace.to_owned(),
            secret.to_owned(),
            database.connections,
        ));
        pools.insert(key, Arc::downgrade(&pool));
        Ok(pool)
    }
}

/// A cell has a database, but its runtime cannot read the database's Secret.
#[derive(Debug, thiserror::Error)]
#[error(
    "the cell has a database, but this runtime has no way to read its Secret \
     {namespace}/{secret} (it reads Secrets through the Kubernetes API in a pod, and from \
     `cellbus up` when CELLBUS_DATABASE_URL is set)"
)]
pub struct NoSecretSource {
    namespace: String,
    secret: String,
}

/// One cell's connections.
pub struct CellDatabase {
    source: Arc<dyn SecretSource>,
    namespace: String,
    secret: String,
    /// Connection settings from the Secret's DATABASE_URL, once read.
    settings: tokio::sync::Mutex<Option<Arc<Settings>>>,
    /// Connections cleared after their last call, ready for the next.
    idle: Mutex<Vec<Connection>>,
    slots: Semaphore,
}

/// Where and how to connect. No `Debug`: it holds the password.
struct Settings {
    config: tokio_postgres::Config,
    tls: cellbus_control::postgres::tls::SslMode,
    root_cert: Option<std::path::PathBuf>,
}

impl CellDatabase {
    fn new(
        source: Arc<dyn SecretSource>,
        namespace: String,
        secret: String,
        connections: u32,
    ) -> Self {
        Self {
            source,
            namespace,
            secret,
            settings: tokio::sync::Mutex::new(None),
            idle: Mutex::default(),
            slots: Semaphore::new(usize::try_from(connections.max(1)).unwrap_or(1)),
        }
    }

    /// Runs a query; rows come back as a JSON array of objects, within `caps`.
    pub async fn query(
        &self,
        sql: &str,
        params: &str,
        deadline: Instant,
        caps: Caps,
    ) -> Result<String, RequestError> {
        let values = values::parse_params(params).map_err(RequestError::Value)?;
        match self
            .run(Statement::Query(caps), sql, &values, deadline)
            .await?
        {
            Done::Rows(rows) => Ok(rows),
            Done::Count(_) => unreachable!("a query returns rows"),
        }
    }

    /// Runs a statement; returns the number of rows it touched.
    pub async fn execute(
        &self,
        sql: &str,
        params: &str,
        deadline: Instant,
    ) -> Result<u64, RequestError> {
        let values = values::parse_params(params).map_err(RequestError::Value)?;
        match self.run(Statement::Execute, sql, &values, deadline).await? {
            Done::Count(count) => Ok(count),
            Done::Rows(_) => unreachable!("an execute returns a count"),
        }
    }

    /// Runs one statement on a pooled connection within the request's deadline, then
    /// clears what it left on the connection before another call may take it.
    async fn run(
        &self,
        kind: Statement,
        sql: &str,
        values: &[serde_json::Value],
        deadline: Instant,
    ) -> Result<Done, RequestError> {
        if let Some(refusal) = statement::refusal(sql) {
            return Err(RequestError::StatementRefused(refusal));
        }
        let remaining = || deadline.saturating_duration_since(Instant::now());
        let mut lease = match tokio::time::timeout(remaining(), self.lease()).await {
            Ok(lease) => lease?,
            Err(_) => return Err(RequestError::NoConnectionInTime),
        };
        let outcome =
            tokio::time::timeout(remaining(), perform(lease.client(), kind, sql, values)).await;
        let answer = match outcome {
            Ok(Ok(done)) => Ok(done),
            Ok(Err(Failure::Value(error))) => Err(RequestError::Value(error)),
            Ok(Err(Failure::Database(error))) => Err(RequestError::Database(error)),
            Ok(Err(Failure::Rows(error))) => {
                // The server goes on producing rows nobody reads.
                lease.abandon();
                return Err(RequestError::Rows(error));
            }
            Err(_) => {
                lease.abandon();
                return Err(RequestError::StatementDeadline);
            }
        };
        let failed = answer.is_err();
        match lease.release(remaining(), failed).await {
            Ok(()) => answer,
            // The commit ran; only the connection is not worth keeping.
            Err(leftover @ (Leftover::NoCheck | Leftover::TypeLookups)) => {
                debug!(namespace = %self.namespace, secret = %self.secret, reason = %leftover, "closing a database connection after its call");
                answer
            }
            Err(leftover) if failed && !matches!(leftover, Leftover::TransactionEnded) => {
                debug!(namespace = %self.namespace, secret = %self.secret, error = %cellbus_contracts::error_chain(&leftover), "closing a database connection that could not be reset");
                answer
            }
            // The statement succeeded but its transaction did not commit: the commit's
            // own error (a deferred constraint is the cell's; a lost connection is not).
            Err(Leftover::Reset(error)) => Err(RequestError::Database(error)),
            Err(Leftover::Unfinished) => Err(RequestError::CommitDeadline),
            Err(leftover) => Err(RequestError::Leftover(leftover)),
        }
    }

    async fn lease(&self) -> Result<Lease<'_>, RequestError> {
        let permit = self
            .slots
            .acquire()
            .await
            .map_err(|_| RequestError::PoolClosed)?;
        let reused = {
            let mut idle = self.idle.lock().expect("idle lock");
            let mut found = None;
            while let Some(connection) = idle.pop() {
                if !connection.client.is_closed() {
                    found = Some(connection);
                    break;
                }
            }
            found
        };
        let connection = match reused {
            Some(connection) => connection,
            None => Connection::new(self.connect().await?),
        };
        let settings = self.settings.lock().await.clone();
        Ok(Lease {
            database: self,
            connection: Some(connection),
            settings,
            _permit: permit,
        })
    }

    /// Opens a connection, reading the Secret first if needed, and again when the database
    /// (or its pooler) refuses the password it holds: the password was rotated. The
    /// operator changes the role's password a moment before the Secret, and a pooler may
    /// take a moment to see the new one, so a refusal is tried again for up to
    /// [`CREDENTIALS_WAIT`], reading the Secret before each try, instead of failing the
    /// request.
    async fn connect(&self) -> Result<Client, RequestError> {
        let mut settings = self.settings.lock().await;
        if settings.is_none() {
            *settings = Some(self.read_secret().await?);
        }
        let refused_since = Instant::now();
        let mut pauses =
            cellbus_control::backoff::delays(CREDENTIALS_RETRY_FIRST, CREDENTIALS_RETRY_MAX);
        loop {
            let current = settings.clone().expect("settings were read");
            let error = match cellbus_control::postgres::tls::connect(
                &current.config,
                current.tls,
                current.root_cert.as_deref(),
            )
            .await
            {
                Ok(client) => return Ok(client),
                Err(error) => error,
            };
            // The role's connection limit, met for a moment by connections just closed
            // whose server processes have not exited yet.
            if is_too_many_connections(&error) && refused_since.elapsed() < CREDENTIALS_WAIT {
                drop(current);
                tokio::time::sleep(pauses.next().unwrap_or(CREDENTIALS_RETRY_MAX)).await;
                continue;
            }
            let refused = refused_credentials(&error);
            if refused && refused_since.elapsed() < CREDENTIALS_WAIT {
                debug!(namespace = %self.namespace, secret = %self.secret, "credentials refused; reading the Secret again");
                let fresh = self.read_secret().await?;
                // The same password again: the Secret has not caught up with the role, or
                // the pooler with the role. Wait a little before trying it.
                if fresh.config.get_password() == current.config.get_password() {
                    drop(current);
                    tokio::time::sleep(pauses.next().unwrap_or(CREDENTIALS_RETRY_MAX)).await;
                }
                *settings = Some(fresh);
                continue;
            }
            warn!(namespace = %self.namespace, secret = %self.secret, error = %cellbus_contracts::error_chain(&error), "cannot connect to the cell's database");
            return Err(RequestError::Connect(error));
        }
    }

    async fn read_secret(&self) -> Result<Arc<Settings>, RequestError> {
        let url = self
            .source
            .database_url(&self.namespace, &self.secret)
            .await
            .map_err(|source| RequestError::ReadSecret {
                namespace: self.namespace.clone(),
                secret: self.secret.clone(),
                source,
            })?;
        let Some(url) = url else {
            return Err(RequestError::NoSecret {
                namespace: self.namespace.clone(),
                secret: self.secret.clone(),
            });
        };
        let (config, tls, root_cert) =
            cellbus_control::postgres::tls::parse_url(&url).map_err(|source| {
                RequestError::SecretUrl {
                    namespace: self.namespace.clone(),
                    secret: self.secret.clone(),
                    source,
                }
            })?;
        Ok(Arc::new(Settings {
            config,
            tls,
            root_cert,
        }))
    }
}

/// A connection taken from the pool for one call. It goes back through
/// [`Lease::release`]; dropped otherwise (the call was cut short), it is closed and what
/// it still runs on the server cancelled.
struct Lease<'a> {
    database: &'a CellDatabase,
    connection: Option<Connection>,
    /// How to reach the server to cancel a statement.
    settings: Option<Arc<Settings>>,
    _permit: SemaphorePermit<'a>,
}

impl Lease<'_> {
    fn client(&self) -> &Client {
        &self
            .connection
            .as_ref()
            .expect("a lease holds a connection until released")
            .client
    }

    /// Clears the session and ends the call's transaction within `time` (rolling the
    /// statement back first when it `failed`), then gives the connection back to the
    /// pool, or closes it and says why.
    async fn release(mut self, time: Duration, failed: bool) -> Result<(), Leftover> {
        let connection = self
            .connection
            .as_mut()
            .expect("a lease holds a connection until released");
        match tokio::time::timeout(time, session::reset(connection, failed)).await {
            Ok(Ok(())) => {
                let connection = self.connection.take().expect("still held");
                self.database
                    .idle
                    .lock()
                    .expect("idle lock")
                    .push(connection);
                Ok(())
            }
            Ok(Err(leftover)) => {
                // Closing the connection rolls back what it left open.
                self.connection = None;
                Err(leftover)
            }
            // Dropping the lease cancels the reset on the server.
            Err(_) => Err(Leftover::Unfinished),
        }
    }

    /// Closes the connection and cancels what it runs on the server: a statement whose
    /// client went away runs on until it next writes to the socket, holding its locks.
    fn abandon(&mut self) {
        let Some(connection) = self.connection.take() else {
            return;
        };
        let token = connection.client.cancel_token();
        drop(connection);
        let (Some(settings), Ok(runtime)) =
            (self.settings.clone(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        runtime.spawn(async move {
            if let Err(error) = cellbus_control::postgres::tls::cancel(
                &token,
                settings.tls,
                settings.root_cert.as_deref(),
            )
            .await
            {
                debug!(error = %error, "cancelling an abandoned statement");
            }
        });
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        self.abandon();
    }
}

enum Failure {
    Database(tokio_postgres::Error),
    /// Before the statement ran: its parameters or result columns.
    Value(values::ValueError),
    /// While its rows arrived: the rest are not read.
    Rows(rows::RowsError),
}

#[derive(Clone, Copy)]
enum Statement {
    Query(Caps),
    Execute,
}

enum Done {
    Rows(String),
    Count(u64),
}

/// Opens the call's transaction and prepares `sql` in the same round trip, so its
/// parameter and column types are known; checks the cell's values against them, and runs
/// it, writing rows as they arrive. The statement is closed when it is dropped here,
/// inside the transaction.
async fn perform(
    client: &Client,
    kind: Statement,
    sql: &str,
    values: &[serde_json::Value],
) -> Result<Done, Failure> {
    let (begun, statement) =
        futures::join!(client.batch_execute(session::BEGIN), client.prepare(sql));
    begun.map_err(Failure::Database)?;
    let statement = statement.map_err(Failure::Database)?;
    values::check_params(statement.params(), values).map_err(Failure::Value)?;
    let params = values::Param::list(values);
    match kind {
        Statement::Query(caps) => {
            values::check_columns(statement.columns()).map_err(Failure::Value)?;
            let rows = client
                .query_raw(&statement, params)
                .await
                .map_err(Failure::Database)?;
            let mut rows = std::pin::pin!(rows);
            let mut json = rows::JsonRows::new(caps);
            while let Some(row) = rows.try_next().await.map_err(Failure::Database)? {
                json.push(&row).map_err(Failure::Rows)?;
            }
            Ok(Done::Rows(json.finish()))
        }
        Statement::Execute => {
            let params: Vec<&(dyn ToSql + Sync)> =
                params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
            client
                .execute(&statement, &params)
                .await
                .map(Done::Count)
                .map_err(Failure::Database)
        }
    }
}

/// Whether the server or its pooler refused the role's password (or the role is gone).
/// PostgreSQL and Supavisor say so with SQLSTATE 28P01 or 28000; PgBouncer closes the
/// login with a protocol-violation state (08P01) and a message naming the failure.
fn refused_credentials(error: &cellbus_control::postgres::tls::ConnectError) -> bool {
    match error.sql_state() {
        Some(state)
            if *state == SqlState::INVALID_PASSWORD
                || *state == SqlState::INVALID_AUTHORIZATION_SPECIFICATION =>
        {
            true
        }
        Some(state) if *state == SqlState::PROTOCOL_VIOLATION => error
            .db_message()
            .is_some_and(|message| message.contains("authentication failed")),
        _ => false,
    }
}

fn is_too_many_connections(error: &cellbus_control::postgres::tls::ConnectError) -> bool {
    error.sql_state() == Some(&SqlState::TOO_MANY_CONNECTIONS)
}
