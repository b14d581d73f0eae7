//! A real PostgreSQL with cells' databases provisioned as the operator does, and the
//! credentials the runtime reads.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cellbus_contracts::assignment::AssignedDatabase;
use cellbus_contracts::resources::DatabaseSpec;
use cellbus_control::database::{self, Admin, Endpoint, Wanted};
use cellbus_runtime::db::secrets::{LocalSecrets, DATABASE_URL_KEY};
use cellbus_runtime::db::{CellDatabase, Databases};
use cellbus_testkit::Postgres;
use serde_json::json;

use super::NAMESPACE;

/// A PostgreSQL, its admin connection, and the credentials the runtime reads.
pub struct Database {
    pub postgres: Postgres,
    pub admin: Admin,
    pub secrets: Arc<LocalSecrets>,
}

impl Database {
    pub async fn start() -> Self {
        let postgres = Postgres::start();
        let admin = Admin::connect(postgres.url()).await.unwrap();
        Self {
            postgres,
            admin,
            secrets: Arc::default(),
        }
    }

    /// Provisions the database of Cell `cell` as the operator does and hands the runtime
    /// its URL; returns the password.
    pub async fn provision(&self, cell: &str, spec: &DatabaseSpec, rotate: bool) -> String {
        let wanted = Wanted {
            role: database::role_name(NAMESPACE, cell),
            schema: cell.to_owned(),
            spec,
        };
        let provisioned = database::provision(&self.admin, &wanted, rotate)
            .await
            .unwrap();
        let password = provisioned.password.expect("a new password");
        let endpoint = Endpoint::of_admin(self.postgres.url(), &self.admin, None, None).unwrap();
        let data = database::secret_data(&endpoint, &provisioned.role, &password);
        self.secrets.insert(
            NAMESPACE,
            &format!("{cell}-db"),
            data[DATABASE_URL_KEY].clone(),
        );
        password
    }

    /// A connection of the admin's own, for statements the test makes and checks.
    pub async fn admin_client(&self) -> tokio_postgres::Client {
        let (client, connection) =
            tokio_postgres::connect(self.postgres.url(), tokio_postgres::NoTls)
                .await
                .unwrap();
        tokio::spawn(connection);
        client
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
        let admin = self.admin_client().await;
        let role = database::role_name(NAMESPACE, cell);
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

pub fn access(access: &str) -> DatabaseSpec {
    serde_json::from_value(json!({ "access": access })).unwrap()
}
