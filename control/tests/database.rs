//! Per-cell roles and schemas on a real PostgreSQL (started by the harness, password
//! authentication over TCP): least privilege, idempotence, rotation, deletion policies,
//! and names that would break a statement if they were ever interpolated.

use cellbus_contracts::resources::DatabaseSpec;
use cellbus_control::postgres::{deprovision, provision, role_name, Admin, DatabaseError, Wanted};
use cellbus_testkit::Postgres;
use rstest::rstest;
use serde_json::json;
use tokio_postgres::NoTls;

fn spec(access: &str) -> DatabaseSpec {
    serde_json::from_value(json!({"access": access})).unwrap()
}

/// A connection as `role` with `password`, or the error the server gave.
async fn connect_as(
    admin_url: &str,
    role: &str,
    password: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut config: tokio_postgres::Config = admin_url.parse().unwrap();
    config.user(role).password(password);
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// What the catalogs say about a role and its schema: attributes, settings, schema ACL
/// and default privileges.
async fn snapshot(admin: &tokio_postgres::Client, role: &str, schema: &str) -> Vec<String> {
    let queries = [
        "SELECT row(rolname, rolsuper, rolinherit, rolcreaterole, rolcreatedb, rolcanlogin, rolbypassrls, rolconnlimit, rolconfig)::text FROM pg_roles WHERE rolname = $1 AND $2 <> ''",
        "SELECT coalesce(nspacl::text, '') FROM pg_namespace WHERE nspname = $2 AND $1 <> ''",
        "SELECT coalesce(string_agg(defaclacl::text, ',' ORDER BY defaclobjtype), '') FROM pg_default_acl d JOIN pg_namespace n ON n.oid = d.defaclnamespace WHERE n.nspname = $2 AND $1 <> ''",
    ];
    let mut out = Vec::new();
    for query in queries {
        let row = admin.query_one(query, &[&role, &schema]).await.unwrap();
        out.push(row.get::<_, String>(0));
    }
    out
}

/// The server's message of an error, or the error itself.
fn message(error: &tokio_postgres::Error) -> String {
    error
        .as_db_error()
        .map_or_else(|| error.to_string(), |db| db.message().to_owned())
}

/// Who provisions: a superuser (plain PostgreSQL) or, as in a Supabase project, a
/// `CREATEROLE` role that is not one, owning the database.
#[derive(Clone, Copy, Debug)]
enum AdminKind {
    Superuser,
    CreateRole,
}

async fn admin_client_url(postgres: &Postgres, kind: AdminKind) -> String {
    match kind {
        AdminKind::Superuser => postgres.url().to_owned(),
        AdminKind::CreateRole => postgres.admin_url().await,
    }
}

async fn plain(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

#[rstest]
#[case::superuser(AdminKind::Superuser)]
#[case::createrole(AdminKind::CreateRole)]
#[tokio::test]
async fn each_cell_gets_its_own_schema_and_nothing_more(#[case] kind: AdminKind) {
    let postgres = Postgres::start();
    let url = admin_client_url(&postgres, kind).await;
    let admin = Admin::connect(&url).await.unwrap();
    let superuser = plain(&url).await;
    let (write_spec, read_spec) = (spec("readWrite"), spec("readOnly"));
    let a = Wanted {
        role: role_name("apps", "a"),
        schema: "a_data".into(),
        spec: &write_spec,
    };
    let b = Wanted {
        role: role_name("apps", "b"),
        schema: "b_data".into(),
        spec: &read_spec,
    };

    let first = provision(&admin, &a, false).await.unwrap();
    let a_password = first.password.clone().expect("a new role gets a password");
    let before = snapshot(&superuser, &a.role, &a.schema).await;
    let again = provision(&admin, &a, false).await.unwrap();
    assert_eq!(again.password, None, "an existing role keeps its password");
    assert_eq!(
        snapshot(&superuser, &a.role, &a.schema).await,
        before,
        "provisioning twice changed the catalogs"
    );
    let b_password = provision(&admin, &b, false)
        .await
        .unwrap()
        .password
        .unwrap();

    // Tables the admin makes later follow the default privileges.
    superuser
        .batch_execute("CREATE TABLE a_data.visits (n int); CREATE TABLE b_data.notes (t text); INSERT INTO b_data.notes VALUES ('hello')")
        .await
        .unwrap();

    let cell_a = connect_as(&url, &a.role, &a_password).await.unwrap();
    cell_a
        .batch_execute(
            "INSERT INTO visits VALUES (1); UPDATE visits SET n = 2; SELECT * FROM visits",
        )
        .await
        .expect("readWrite writes rows in its own schema, found through search_path");
    for forbidden in [
        "SELECT * FROM b_data.notes",
        "CREATE TABLE a_data.extra (n int)",
        "CREATE SCHEMA mine",
        "CREATE ROLE someone",
        "CREATE TABLE public.sneaky (n int)",
    ] {
        let error = cell_a.batch_execute(forbidden).await.unwrap_err();
        assert!(
            message(&error).contains("permission denied"),
            "{forbidden}: {error}"
        );
    }

    let cell_b = connect_as(&url, &b.role, &b_password).await.unwrap();
    let rows = cell_b.query("SELECT t FROM notes", &[]).await.unwrap();
    assert_eq!(rows[0].get::<_, String>(0), "hello");
    let error = cell_b
        .batch_execute("INSERT INTO notes VALUES ('no')")
        .await
        .unwrap_err();
    assert!(message(&error).contains("permission denied"), "{error}");
    assert!(cell_b
        .batch_execute("SELECT * FROM a_data.visits")
        .await
        .is_err());

    // ddl may also create tables in its schema.
    let ddl_spec = spec("ddl");
    let c = Wanted {
        role: role_name("apps", "c"),
        schema: "c_data".into(),
        spec: &ddl_spec,
    };
    let c_password = provision(&admin, &c, false)
        .await
        .unwrap()
        .password
        .unwrap();
    let cell_c = connect_as(&url, &c.role, &c_password).await.unwrap();
    cell_c
        .batch_execute("CREATE TABLE counters (n int); INSERT INTO counters VALUES (1)")
        .await
        .unwrap();
}

#[rstest]
#[case::superuser(AdminKind::Superuser)]
#[case::createrole(AdminKind::CreateRole)]
#[tokio::test]
async fn rotation_makes_the_old_password_fail(#[case] kind: AdminKind) {
    let postgres = Postgres::start();
    let url = admin_client_url(&postgres, kind).await;
    let admin = Admin::connect(&url).await.unwrap();
    let spec = spec("readOnly");
    let cell = Wanted {
        role: role_name("apps", "rotating"),
        schema: "rotating".into(),
        spec: &spec,
    };
    let old = provision(&admin, &cell, false)
        .await
        .unwrap()
        .password
        .unwrap();
    connect_as(&url, &cell.role, &old).await.unwrap();
    let new = provision(&admin, &cell, true)
        .await
        .unwrap()
        .password
        .unwrap();
    assert_ne!(old, new);
    let refused = connect_as(&url, &cell.role, &old).await.unwrap_err();
    assert!(
        message(&refused).contains("password authentication failed"),
        "{refused}"
    );
    connect_as(&url, &cell.role, &new).await.unwrap();
}

#[rstest]
#[case::superuser(AdminKind::Superuser)]
#[case::createrole(AdminKind::CreateRole)]
#[tokio::test]
async fn delete_drops_the_role_and_retain_keeps_role_and_data(#[case] kind: AdminKind) {
    let postgres = Postgres::start();
    let url = admin_client_url(&postgres, kind).await;
    let admin = Admin::connect(&url).await.unwrap();
    let superuser = plain(&url).await;
    let ddl = spec("ddl");
    let cell = Wanted {
        role: role_name("apps", "going"),
        schema: "going".into(),
        spec: &ddl,
    };
    let password = provision(&admin, &cell, false)
        .await
        .unwrap()
        .password
        .unwrap();
    let own = connect_as(&url, &cell.role, &password).await.unwrap();
    own.batch_execute("CREATE TABLE kept (n int); INSERT INTO kept VALUES (7)")
        .await
        .unwrap();
    drop(own);

    let role_exists = async |role: &str| {
        superuser
            .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&role])
            .await
            .unwrap()
            .is_some()
    };
    // Retain: nothing is dropped.
    deprovision(&admin, &cell, false, false).await.unwrap();
    assert!(role_exists(&cell.role).await);
    // Delete: the role goes, the table it owned is handed to the admin and kept.
    deprovision(&admin, &cell, true, false).await.unwrap();
    assert!(!role_exists(&cell.role).await);
    let kept = superuser
        .query_one("SELECT n FROM going.kept", &[])
        .await
        .unwrap();
    assert_eq!(kept.get::<_, i32>(0), 7);
    // Again, with the role already gone, and this time the schema too.
    deprovision(&admin, &cell, true, true).await.unwrap();
    assert!(superuser
        .query("SELECT n FROM going.kept", &[])
        .await
        .is_err());
}

#[rstest]
#[case::superuser(AdminKind::Superuser)]
#[case::createrole(AdminKind::CreateRole)]
#[tokio::test]
async fn hostile_names_are_quoted_never_interpolated(#[case] kind: AdminKind) {
    let postgres = Postgres::start();
    let url = admin_client_url(&postgres, kind).await;
    let admin = Admin::connect(&url).await.unwrap();
    let superuser = plain(&url).await;
    let spec = spec("readWrite");
    for schema in [
        "we\"ird; DROP ROLE postgres; --",
        "Visits",
        "zählerstände_😀",
        "semi;colon",
        "it's",
    ] {
        let cell = Wanted {
            role: role_name("apps", schema),
            schema: schema.into(),
            spec: &spec,
        };
        let password = provision(&admin, &cell, false)
            .await
            .unwrap()
            .password
            .unwrap();
        let found = superuser
            .query_opt("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[&schema])
            .await
            .unwrap();
        assert!(
            found.is_some(),
            "schema {schema:?} was not created under its exact name"
        );
        let own = connect_as(&url, &cell.role, &password).await.unwrap();
        let path = own.query_one("SHOW search_path", &[]).await.unwrap();
        assert!(path
            .get::<_, String>(0)
            .contains(schema.split('"').next().unwrap()));
    }
    // The injection attempt did nothing but name a schema.
    assert!(superuser
        .query_opt("SELECT 1 FROM pg_roles WHERE rolname = 'postgres'", &[])
        .await
        .unwrap()
        .is_some());
}

#[tokio::test]
async fn an_unreachable_admin_database_is_a_clear_error_without_the_password() {
    let error = match Admin::connect("postgres://admin:s3cret-pw@127.0.0.1:1/app").await {
        Ok(_) => panic!("connected to nothing"),
        Err(error) => error,
    };
    assert!(matches!(error, DatabaseError::Connect { .. }));
    let text = cellbus_contracts::error_chain(&error);
    assert!(
        text.starts_with("connecting to the admin database at 127.0.0.1:1/app"),
        "{text}"
    );
    assert!(!text.contains("s3cret-pw"), "{text}");
}
