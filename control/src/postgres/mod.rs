//! The PostgreSQL side: a least-privilege role and schema per Cell, made through an admin
//! connection: what the operator and `cellbus up` do for a Cell with `spec.database`.
//! Works on plain PostgreSQL and on Supabase (whose pooler, Supavisor, names users
//! `role.projectref`).
//!
//! Every name in a statement is quoted as an identifier and the password as a literal;
//! nothing from a spec is ever interpolated bare. Provisioning is idempotent: running it
//! again changes nothing, and an existing role keeps its password unless asked to rotate.

pub mod tls;

use std::collections::BTreeMap;

use cellbus_contracts::resources::{DatabaseAccess, DatabaseSpec};
use sha2::{Digest, Sha256};
use tokio_postgres::Client;

pub use cellbus_contracts::resources::DEFAULT_CONNECTION_LIMIT;
/// Prefix of every role the operator makes, so they are easy to find and never collide
/// with people's roles.
pub const ROLE_PREFIX: &str = "cbs_";

/// What can go wrong provisioning.
#[derive(Debug, thiserror::Error)]
pub enum DatabaseError {
    #[error("connecting to the admin database at {location}")]
    Connect {
        /// Host, port and database, never the credentials.
        location: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("the admin URL is not a PostgreSQL URL: {0}")]
    Url(String),
    #[error("reading the admin URL")]
    AdminUrl {
        #[source]
        source: tls::TlsError,
    },
    #[error("setting up TLS to the admin database at {location}")]
    Tls {
        location: String,
        #[source]
        source: tls::TlsError,
    },
    #[error("{action} for role {role}")]
    Statement {
        action: &'static str,
        role: String,
        #[source]
        source: tokio_postgres::Error,
    },
}

/// An admin connection and where it points.
pub struct Admin {
    client: Client,
    /// The role the admin connection runs as, owner of the cells' schemas.
    pub role: String,
    pub database: String,
    /// Whether that role is a superuser. Supabase's `postgres` is not: it has
    /// `CREATEROLE`, which may not touch the superuser, replication and bypass-RLS
    /// attributes, and needs membership in a role to hand over what it owns.
    pub superuser: bool,
}

impl Admin {
    /// Connects with the admin URL (`postgres://user:password@host:5432/db`), with TLS as
    /// its `sslmode` and `sslrootcert` say (libpq's meanings; `prefer` when it says none).
    pub async fn connect(url: &str) -> Result<Self, DatabaseError> {
        let (config, mode, root_cert) =
            tls::parse_url(url).map_err(|source| DatabaseError::AdminUrl { source })?;
        let location = location(&config);
        let client = tls::connect(&config, mode, root_cert.as_deref())
            .await
            .map_err(|error| match error {
                tls::ConnectError::Tls { source } => DatabaseError::Tls {
                    location: location.clone(),
                    source,
                },
                tls::ConnectError::Connect { source, .. }
                | tls::ConnectError::Cancel { source } => DatabaseError::Connect {
                    location: location.clone(),
                    source,
                },
            })?;
        let row = client
            .query_one(
                "SELECT current_user::text, current_database()::text,
                        (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)",
                &[],
            )
            .await
            .map_err(|source| DatabaseError::Connect { location, source })?;
        Ok(Self {
            client,
            role: row.get(0),
            database: row.get(1),
            superuser: row.get(2),
        })
    }

    /// Whether the connection is still usable.
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }
}

/// `host:port/database` of a connection config, for messages.
pub(crate) fn location(config: &tokio_postgres::Config) -> String {
    let host = config
        .get_hosts()
        .first()
        .map(|host| match host {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".into());
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let database = config.get_dbname().unwrap_or("postgres");
    format!("{host}:{port}/{database}")
}

/// An error text with anything after `password=` blanked, in case a parser quotes it.
pub(crate) fn redact(text: &str) -> String {
    match text.find("password") {
        Some(at) => format!("{}password=…", &text[..at]),
        None => text.to_owned(),
    }
}

/// The role of the Cell `namespace/name`: a hash of both, so it stays the same for the
/// same Cell, differs between Cells, and tells nothing a role list should not.
pub fn role_name(namespace: &str, name: &str) -> String {
    // NUL cannot occur in either name, so no two pairs hash the same input.
    let hash = Sha256::digest(format!("{namespace}\0{name}").as_bytes());
    format!("{ROLE_PREFIX}{}", hex::encode(&hash[..10]))
}

/// `name` as a PostgreSQL identifier: double-quoted, inner quotes doubled.
pub fn quote_identifier(name: &str) -> String {
    postgres_protocol::escape::escape_identifier(name)
}

/// `text` as a PostgreSQL string literal: single-quoted, inner quotes doubled; an `E''`
/// literal when it holds a backslash, so the meaning never depends on
/// `standard_conforming_strings`.
pub fn quote_literal(text: &str) -> String {
    // libpq's escaping puts a space before an `E''` literal, for pasting after a word.
    postgres_protocol::escape::escape_literal(text)
        .trim_start()
        .to_owned()
}

/// A new random password: 32 bytes from the operating system's CSPRNG, hex.
pub fn new_password() -> String {
    use rand_core::RngCore;
    let mut bytes = [0u8; 32];
    rand_core::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// What a Cell asks of the database.
#[derive(Clone, Debug)]
pub struct Wanted<'a> {
    pub role: String,
    pub schema: String,
    pub spec: &'a DatabaseSpec,
}

/// What provisioning did.
#[derive(Clone, PartialEq, Eq)]
pub struct Provisioned {
    pub role: String,
    pub schema: String,
    /// The new password, when the role was created or its password rotated; `None` when
    /// it kept the one it had.
    pub password: Option<String>,
}

impl std::fmt::Debug for Provisioned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provisioned")
            .field("role", &self.role)
            .field("schema", &self.schema)
            .field("password", &self.password.as_ref().map(|_| "…"))
            .finish()
    }
}

/// The statements that give `role` its privileges on `schema` (owned by `owner`), for
/// the tables and sequences there now and those made later.
pub fn grants(role: &str, schema: &str, owner: &str, access: DatabaseAccess) -> Vec<String> {
    let role = quote_identifier(role);
    let schema = quote_identifier(schema);
    let owner = quote_identifier(owner);
    let (tables, sequences) = match access {
        DatabaseAccess::ReadOnly => ("SELECT", "SELECT"),
        DatabaseAccess::ReadWrite | DatabaseAccess::Ddl => {
            ("SELECT, INSERT, UPDATE, DELETE", "USAGE, SELECT, UPDATE")
        }
    };
    let mut statements = vec![
        format!("REVOKE ALL ON SCHEMA {schema} FROM PUBLIC"),
        format!("REVOKE CREATE ON SCHEMA {schema} FROM {role}"),
        format!("GRANT USAGE ON SCHEMA {schema} TO {role}"),
        format!("REVOKE ALL ON ALL TABLES IN SCHEMA {schema} FROM {role}"),
        format!("GRANT {tables} ON ALL TABLES IN SCHEMA {schema} TO {role}"),
        format!("GRANT {sequences} ON ALL SEQUENCES IN SCHEMA {schema} TO {role}"),
        format!(
            "ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA {schema} GRANT {tables} ON TABLES TO {role}"
        ),
        format!(
            "ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA {schema} GRANT {sequences} ON SEQUENCES TO {role}"
        ),
    ];
    if access == DatabaseAccess::Ddl {
        statements.push(format!("GRANT CREATE ON SCHEMA {schema} TO {role}"));
    }
    statements
}

/// Makes `wanted` true: creates the role (with a new password) and the schema where
/// missing, brings the role's attributes, grants and search path to what the spec says,
/// and sets a new password when `rotate` is true. An existing role keeps its password
/// otherwise.
pub async fn provision(
    admin: &Admin,
    wanted: &Wanted<'_>,
    rotate: bool,
) -> Result<Provisioned, DatabaseError> {
    let role = &wanted.role;
    let failed = |action| statement_failed(role, action);
    let exists = role_exists(admin, role).await?;
    let limit = wanted.spec.role_connection_limit();
    let quoted = quote_identifier(role);
    // Only a superuser may name the superuser, replication and bypass-RLS attributes,
    // even to deny them; a role a CREATEROLE admin made or may alter has none of them.
    let attributes = if admin.superuser || !exists {
        format!("LOGIN NOINHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS CONNECTION LIMIT {limit}")
    } else {
        format!("LOGIN NOINHERIT NOCREATEDB NOCREATEROLE CONNECTION LIMIT {limit}")
    };
    let password = if !exists || rotate {
        Some(new_password())
    } else {
        None
    };
    // The statement carries the password's SCRAM-SHA-256 verifier, as `psql`'s
    // `\password` does, never the password: statements end up in client debug logs, the
    // server's log (`log_statement`) and pg_stat_statements.
    let verifier = password.as_deref().map(|password| {
        quote_literal(&postgres_protocol::password::scram_sha_256(
            password.as_bytes(),
        ))
    });
    let statement = match (&verifier, exists) {
        (Some(verifier), false) => format!("CREATE ROLE {quoted} {attributes} PASSWORD {verifier}"),
        (Some(verifier), true) => format!("ALTER ROLE {quoted} {attributes} PASSWORD {verifier}"),
        (None, _) => format!("ALTER ROLE {quoted} {attributes}"),
    };
    admin
        .client
        .batch_execute(&statement)
        .await
        .map_err(failed(if exists {
            "updating the role"
        } else {
            "creating the role"
        }))?;

    let schema = quote_identifier(&wanted.schema);
    let owner = quote_identifier(&admin.role);
    let mut statements = vec![format!(
        "CREATE SCHEMA IF NOT EXISTS {schema} AUTHORIZATION {owner}"
    )];
    statements.extend(grants(
        role,
        &wanted.schema,
        &admin.role,
        wanted.spec.access,
    ));
    statements.push(format!("ALTER ROLE {quoted} SET search_path = {schema}"));
    // A role must not reach another cell's data through `public` either.
    statements.push(format!(
        "REVOKE ALL ON DATABASE {} FROM {quoted}",
        quote_identifier(&admin.database)
    ));
    statements.push(format!(
        "GRANT CONNECT ON DATABASE {} TO {quoted}",
        quote_identifier(&admin.database)
    ));
    // One message, so one transaction: a revoke and the grant after it take effect
    // together, and the role's sessions never see the moment between (a re-run on
    // rotation would otherwise fail their statements with "permission denied").
    admin
        .client
        .batch_execute(&statements.join(";\n"))
        .await
        .map_err(failed("granting the schema"))?;
    Ok(Provisioned {
        role: role.clone(),
        schema: wanted.schema.clone(),
        password,
    })
}

/// The error of a statement about `role` that failed while `action`.
fn statement_failed<'a>(
    role: &'a str,
    action: &'static str,
) -> impl FnOnce(tokio_postgres::Error) -> DatabaseError + 'a {
    move |source| DatabaseError::Statement {
        action,
        role: role.to_owned(),
        source,
    }
}

async fn role_exists(admin: &Admin, role: &str) -> Result<bool, DatabaseError> {
    admin
        .client
        .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&role])
        .await
        .map(|row| row.is_some())
        .map_err(statement_failed(role, "looking up the role"))
}

/// Removes what [`provision`] made, as far as asked: the schema and its data with
/// `drop_schema`, the role (after handing what it owns to the admin) with `drop_role`.
/// Fine when either is already gone.
pub async fn deprovision(
    admin: &Admin,
    wanted: &Wanted<'_>,
    drop_role: bool,
    drop_schema: bool,
) -> Result<(), DatabaseError> {
    let role = &wanted.role;
    let failed = |action| statement_failed(role, action);
    if drop_schema {
        admin
            .client
            .batch_execute(&format!(
                "DROP SCHEMA IF EXISTS {} CASCADE",
                quote_identifier(&wanted.schema)
            ))
            .await
            .map_err(failed("dropping the schema"))?;
    }
    if drop_role && role_exists(admin, role).await? {
        let quoted = quote_identifier(role);
        let owner = quote_identifier(&admin.role);
        // REASSIGN and DROP OWNED need the privileges of the role: a superuser has them,
        // a CREATEROLE admin takes membership first (the role is dropped right after).
        let membership = if admin.superuser {
            String::new()
        } else {
            format!("GRANT {quoted} TO {owner}; ")
        };
        admin
            .client
            .batch_execute(&format!(
                "{membership}REASSIGN OWNED BY {quoted} TO {owner}; DROP OWNED BY {quoted}; DROP ROLE {quoted}"
            ))
            .await
            .map_err(failed("dropping the role"))?;
    }
    Ok(())
}

/// Where a cell's connections go, besides its role and password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub database: String,
    /// `sslmode` clients use: `disable`, `require`, `verify-full`, …
    pub sslmode: String,
    /// A transaction-mode pooler: `DATABASE_URL` then goes through it.
    pub pooler: Option<Pooler>,
}

impl Endpoint {
    /// Cells reach the server the admin URL names (its host, port and database), through
    /// `pooler` when there is one, with the admin URL's `sslmode` unless `sslmode` is given.
    pub fn of_admin(
        admin_url: &str,
        admin: &Admin,
        sslmode: Option<&str>,
        pooler: Option<Pooler>,
    ) -> Result<Self, DatabaseError> {
        let (config, mode, _) =
            tls::parse_url(admin_url).map_err(|source| DatabaseError::AdminUrl { source })?;
        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
            Some(tokio_postgres::config::Host::Unix(_)) => {
                return Err(DatabaseError::Url(
                    "it names a Unix socket, and cells connect over TCP".into(),
                ))
            }
            None => "localhost".into(),
        };
        Ok(Self {
            host,
            port: config.get_ports().first().copied().unwrap_or(5432),
            database: admin.database.clone(),
            sslmode: sslmode.map_or_else(|| mode.as_str().to_owned(), str::to_owned),
            pooler,
        })
    }
}

/// A transaction-mode pooler cells connect through: Supavisor (port 6543), PgBouncer or
/// pgcat. Provisioning always goes to the server directly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pooler {
    pub host: String,
    pub port: u16,
    /// Supabase's project ref: Supavisor names users `role.project_ref`; PgBouncer and
    /// pgcat take the role itself.
    pub project_ref: Option<String>,
}

impl Pooler {
    /// The user a cell's role logs in to the pooler as.
    pub fn user(&self, role: &str) -> String {
        match &self.project_ref {
            Some(project_ref) => format!("{role}.{project_ref}"),
            None => role.to_owned(),
        }
    }
}

/// The pooler settings the operator and `cellbus up` take alike.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct PoolerArgs {
    /// Host of the transaction-mode pooler (Supavisor, PgBouncer) that cells'
    /// DATABASE_URL goes through; provisioning still uses the admin URL directly.
    #[arg(long = "database-pooler-host", env = "CELLBUS_DATABASE_POOLER_HOST")]
    pub pooler_host: Option<String>,
    /// Port of the pooler.
    #[arg(
        long = "database-pooler-port",
        env = "CELLBUS_DATABASE_POOLER_PORT",
        default_value_t = 6543
    )]
    pub pooler_port: u16,
    /// Supabase project ref: with it, pooler users are `role.projectref` as Supavisor
    /// wants; without it, the role itself, as PgBouncer and pgcat want.
    #[arg(long = "database-project-ref", env = "CELLBUS_DATABASE_PROJECT_REF")]
    pub project_ref: Option<String>,
}

impl PoolerArgs {
    /// The pooler, when a host is given.
    pub fn pooler(&self) -> Option<Pooler> {
        self.pooler_host.as_ref().map(|host| Pooler {
            host: host.clone(),
            port: self.pooler_port,
            project_ref: self.project_ref.clone(),
        })
    }
}

/// The variables of a cell's database Secret: `DATABASE_URL` (through the pooler when
/// there is one), `DIRECT_URL` and libpq's `PG*`.
pub fn secret_data(endpoint: &Endpoint, role: &str, password: &str) -> BTreeMap<String, String> {
    let url = |user: &str, host: &str, port: u16| {
        format!(
            "postgresql://{}:{}@{host}:{port}/{}?sslmode={}",
            percent(user),
            percent(password),
            percent(&endpoint.database),
            endpoint.sslmode
        )
    };
    let direct = url(role, &endpoint.host, endpoint.port);
    let pooled = match &endpoint.pooler {
        Some(pooler) => url(&pooler.user(role), &pooler.host, pooler.port),
        None => direct.clone(),
    };
    BTreeMap::from([
        ("DATABASE_URL".into(), pooled),
        ("DIRECT_URL".into(), direct),
        ("PGHOST".into(), endpoint.host.clone()),
        ("PGPORT".into(), endpoint.port.to_string()),
        ("PGUSER".into(), role.to_owned()),
        ("PGPASSWORD".into(), password.to_owned()),
        ("PGDATABASE".into(), endpoint.database.clone()),
        ("PGSSLMODE".into(), endpoint.sslmode.clone()),
    ])
}

/// Everything but RFC 3986's unreserved characters is percent-encoded in a URL's parts.
const URL_PART: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn percent(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, URL_PART).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_quoted_never_interpolated() {
        assert_eq!(quote_identifier("visits"), "\"visits\"");
        assert_eq!(
            quote_identifier("a\"; DROP ROLE x; --"),
            "\"a\"\"; DROP ROLE x; --\""
        );
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal("back\\slash"), "E'back\\\\slash'");
    }

    #[test]
    fn roles_are_stable_per_cell_and_distinct_between_cells() {
        let a = role_name("apps", "visits");
        assert_eq!(a, role_name("apps", "visits"));
        assert_ne!(a, role_name("apps", "visits2"));
        assert_ne!(role_name("a", "b/c"), role_name("a/b", "c"));
        assert!(a.starts_with(ROLE_PREFIX) && a.len() == ROLE_PREFIX.len() + 20);
    }

    #[test]
    fn passwords_are_long_and_fresh() {
        let (a, b) = (new_password(), new_password());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
    }

    #[test]
    fn the_secret_goes_through_the_pooler_when_there_is_one() {
        let mut endpoint = Endpoint {
            host: "db.abc.supabase.co".into(),
            port: 5432,
            database: "postgres".into(),
            sslmode: "require".into(),
            pooler: None,
        };
        let direct = secret_data(&endpoint, "cbs_1", "p@ss/word");
        assert_eq!(
            direct["DATABASE_URL"],
            "postgresql://cbs_1:p%40ss%2Fword@db.abc.supabase.co:5432/postgres?sslmode=require"
        );
        assert_eq!(direct["DATABASE_URL"], direct["DIRECT_URL"]);
        endpoint.pooler = Some(Pooler {
            host: "aws-0-eu-central-1.pooler.supabase.com".into(),
            port: 6543,
            project_ref: Some("abc".into()),
        });
        let pooled = secret_data(&endpoint, "cbs_1", "pw");
        assert_eq!(
            pooled["DATABASE_URL"],
            "postgresql://cbs_1.abc:pw@aws-0-eu-central-1.pooler.supabase.com:6543/postgres?sslmode=require"
        );
        assert_eq!(pooled["PGUSER"], "cbs_1");
        assert_eq!(pooled["PGPORT"], "5432");
        // PgBouncer and pgcat take the role itself: no project ref.
        endpoint.pooler = Some(Pooler {
            host: "pgbouncer.db.svc".into(),
            port: 6432,
            project_ref: None,
        });
        assert_eq!(
            secret_data(&endpoint, "cbs_1", "pw")["DATABASE_URL"],
            "postgresql://cbs_1:pw@pgbouncer.db.svc:6432/postgres?sslmode=require"
        );
        let keys: Vec<&str> = pooled.keys().map(String::as_str).collect();
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
    }
}
