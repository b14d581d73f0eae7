//! A real PostgreSQL with cells' databases provisioned as the operator does, and the
//! credentials the runtime reads.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cellbus_contracts::assignment::AssignedDatabase;
use cellbus_contracts::resources::DatabaseSpec;
use cellbus_control::postgres::{self, Admin, Endpoint, Pooler, Wanted};
use cellbus_runtime::db::secrets::{LocalSecrets, DATABASE_URL_KEY};
use cellbus_runtime::db::{CellDatabase, Databases};
use cellbus_testkit::{PgBouncer, Postgres};
use serde_json::json;

use super::NAMESPACE;

/// A PostgreSQL, its admin connection, and the credentials the runtime reads. The admin
/// is what Supabase gives: a `CREATEROLE` role that is not a superuser, owning the
/// database the cells use.
pub struct Database {
    pub postgres: Postgres,
    pub admin: Admin,
    pub admin_url: String,
    pub secrets: Arc<LocalSecrets>,
    /// Cells connect through it when there is one; provisioning never does.
    pub pgbouncer: Option<PgBouncer>,
}

impl Database {
    pub async fn start() -> Self {
        let postgres = Postgres::start();
        let admin_url = postgres.admin_url().await;
        let admin = Admin::connect(&admin_url).await.unwrap();
        Self {
            postgres,
            admin,
            admin_url,
            secrets: Arc::default(),
            pgbouncer: None,
        }
    }

    /// The same with PgBouncer in transaction mode in front of the server, holding at
    /// most `server_connections` server connections per role: cells connect through it.
    pub async fn start_with_pooler(server_connections: u32) -> Self {
        let mut db = Self::start().await;
        db.pgbouncer = Some(PgBouncer::start(&db.postgres, server_connections));
        db
    }

    /// The pooler cells go through, if any.
    pub fn pooler(&self) -> Option<Pooler> {
        self.pgbouncer.as_ref().map(|pgbouncer| Pooler {
            host: "127.0.0.1".into(),
            port: pgbouncer.port(),
            project_ref: None,
        })
    }

    /// Provisions the database of Cell `cell` as the operator does and hands the runtime
    /// its URL; returns the password.
    pub async fn provision(&self, cell: &str, spec: &DatabaseSpec, rotate: bool) -> String {
        let password = self.change_role(cell, spec, rotate).await;
        self.publish(cell, &password);
        password
    }

    /// The operator's first half of a rotation: the role's new password, which the
    /// Secret does not hold yet.
    pub async fn change_role(&self, cell: &str, spec: &DatabaseSpec, rotate: bool) -> String {
        let wanted = Wanted {
            role: postgres::role_name(NAMESPACE, cell),
            schema: cell.to_owned(),
            spec,
        };
        let provisioned = postgres::provision(&self.admin, &wanted, rotate)
            .await
            .unwrap();
        provisioned.password.expect("a new password")
    }

    /// The second half: the Secret with `password`, as the runtime reads it.
    pub fn publish(&self, cell: &str, password: &str) {
        let endpoint =
            Endpoint::of_admin(&self.admin_url, &self.admin, None, self.pooler()).unwrap();
        let data =
            postgres::secret_data(&endpoint, &postgres::role_name(NAMESPACE, cell), password);
        self.secrets.insert(
            NAMESPACE,
            &format!("{cell}-db"),
            data[DATABASE_URL_KEY].clone(),
        );
    }

    /// A connection as the admin, for the tables and rows the test sets up (made, as in
    /// a Supabase project, by the admin role).
    pub async fn admin_client(&self) -> tokio_postgres::Client {
        connect(&self.admin_url).await
    }

    /// A superuser connection to the cells' database, for what the admin may not see
    /// (other roles' statements in `pg_stat_activity`).
    pub async fn superuser_client(&self) -> tokio_postgres::Client {
        connect(&self.postgres.url_to(&self.admin.database)).await
    }

    /// Runs admin statements (tables and rows the test sets up).
    pub async fn admin_sql(&self, sql: &str) {
        self.admin_client().await.batch_execute(sql).await.unwrap();
    }

    /// The pool a runtime makes for the provisioned cell `cell`, with `connections`
    /// connections, and the `Databases` that keeps it.
    pub fn pool(&self, cell: &str, connections: u32) -> (Databases, Arc<CellDatabase>) {
        let databases = Databases::new(Some(self.secrets.clone()));
        let pool = databases
            .pool(
                NAMESPACE,
                &AssignedDatabase {
                    secret: format!("{cell}-db"),
                    connections,
                },
            )
            .unwrap();
        (databases, pool)
    }

    /// Waits until no statement of the cell `cell`'s role matching `like` is running on
    /// the server, for at most `seconds`; returns what still runs if something does.
    pub async fn wait_until_not_running(&self, cell: &str, like: &str, seconds: u64) {
        let admin = self.superuser_client().await;
        let role = postgres::role_name(NAMESPACE, cell);
        let limit = Instant::now() + Duration::from_secs(seconds);
        loop {
            let running: Vec<String> = admin
                .query(
                    "SELECT query FROM pg_stat_activity
                      WHERE usename = $1 AND state <> 'idle' AND query LIKE $2",
                    &[&role, &like],
                )
                .await
                .unwrap()
                .iter()
                .map(|row| row.get(0))
                .collect();
            if running.is_empty() {
                return;
            }
            assert!(
                Instant::now() < limit,
                "still running on the server after {seconds} s: {running:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

pub fn access(access: &str) -> DatabaseSpec {
    serde_json::from_value(json!({ "access": access })).unwrap()
}
