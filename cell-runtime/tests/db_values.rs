//! JSON values through a real PostgreSQL: every supported type is bound from JSON in the
//! type the server inferred and read back as the same JSON; numeric results keep every
//! digit and their scale; bad values, unsupported types and duplicate column names are
//! errors naming the parameter or column before anything runs.

use cellbus_runtime::db::values::{
    check_columns, check_params, parse_params, rows_to_json, Param, ValueError,
};
use cellbus_testkit::Postgres;
use futures::TryStreamExt;
use serde_json::{json, Value};
use tokio_postgres::{Client, NoTls, Row};

async fn connect(postgres: &Postgres) -> Client {
    let (client, connection) = tokio_postgres::connect(postgres.url(), NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

/// Prepares `sql`, checks and binds `params` as the host does, and returns the rows as
/// JSON.
async fn query(client: &Client, sql: &str, params: Value) -> Result<Value, ValueError> {
    let values = parse_params(&params.to_string())?;
    let statement = client.prepare(sql).await.unwrap();
    check_params(statement.params(), &values)?;
    check_columns(statement.columns())?;
    let rows: Vec<Row> = client
        .query_raw(&statement, Param::list(&values))
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    rows_to_json(&rows)
}

/// The one row `sql` returns.
async fn row(client: &Client, sql: &str, params: Value) -> Value {
    let rows = query(client, sql, params).await.unwrap();
    assert_eq!(rows.as_array().map(Vec::len), Some(1), "{rows}");
    rows[0].clone()
}

async fn prepare_error(client: &Client, sql: &str, params: Value) -> String {
    query(client, sql, params).await.unwrap_err().to_string()
}

#[tokio::test]
async fn every_supported_type_binds_from_json_and_reads_back_as_the_same_json() {
    let postgres = Postgres::start();
    let client = connect(&postgres).await;
    // citext comes with PostgreSQL's contrib package, which a test machine may lack.
    let _ = client.batch_execute("CREATE EXTENSION citext").await;
    client
        .batch_execute(
            "CREATE TYPE mood AS ENUM ('happy', 'sad');
             CREATE DOMAIN positive AS int4 CHECK (VALUE > 0);",
        )
        .await
        .unwrap();
    let citext = client
        .query_opt("SELECT 1 FROM pg_extension WHERE extname = 'citext'", &[])
        .await
        .unwrap()
        .is_some();

    let values = json!({
        "b": true,
        "i2": -32768,
        "i4": 2147483647,
        "i8": -9223372036854775808i64,
        "o": 4294967295u32,
        "f4": 0.1,
        "f8": -1.5e300,
        "f8nan": "NaN",
        "f8inf": "Infinity",
        "n": "-12345.678900",
        "nnum": 1e20,
        "t": "héllo ✓",
        "vc": "varchar",
        "bp": "ab   ",
        "nm": "a_name",
        "j": {"a": [1, null, "x"]},
        "jb": [{"b": false}],
        "u": "67e55044-10b1-426f-9247-bb680e5fe0c8",
        "tz": "2026-11-22T07:37:16.123456Z",
        "ts": "2026-11-22T07:37:16.5",
        "d": "1999-12-31",
        "dinf": "-infinity",
        "tm": "23:59:59.999999",
        "by": "\\x00ff10",
        "ai4": [1, null, 3],
        "atext": ["a", "b c", null],
        "ai8": [],
        "mood": "sad",
        "pos": 7,
        "nul": null,
    });
    let sql = "SELECT $1::bool AS b, $2::int2 AS i2, $3::int4 AS i4, $4::int8 AS i8, \
               $5::oid AS o, $6::float4 AS f4, $7::float8 AS f8, $8::float8 AS f8nan, \
               $9::float8 AS f8inf, $10::numeric AS n, $11::numeric AS nnum, $12::text AS t, \
               $13::varchar AS vc, $14::bpchar AS bp, $15::name AS nm, $16::json AS j, \
               $17::jsonb AS jb, $18::uuid AS u, $19::timestamptz AS tz, \
               $20::timestamp AS ts, $21::date AS d, $22::date AS dinf, $23::time AS tm, \
               $24::bytea AS by, $25::int4[] AS ai4, $26::text[] AS atext, \
               $27::int8[] AS ai8, $28::mood AS mood, $29::positive AS pos, \
               $30::int4 AS nul";
    let names = [
        "b", "i2", "i4", "i8", "o", "f4", "f8", "f8nan", "f8inf", "n", "nnum", "t", "vc", "bp",
        "nm", "j", "jb", "u", "tz", "ts", "d", "dinf", "tm", "by", "ai4", "atext", "ai8", "mood",
        "pos", "nul",
    ];
    let params = Value::Array(names.iter().map(|name| values[name].clone()).collect());
    let mut expected = values.clone();
    // numeric keeps the exact text; a JSON number arrives as its digits.
    expected["nnum"] = json!("100000000000000000000");
    assert_eq!(row(&client, sql, params).await, expected);

    // What comes back binds again unchanged, so a row can be written back as it is.
    let reread = names.iter().map(|name| expected[name].clone()).collect();
    assert_eq!(row(&client, sql, Value::Array(reread)).await, expected);

    // Parameter types the server infers from context, not from casts.
    client
        .batch_execute(
            "CREATE TABLE things (id int8, at timestamptz, tags text[], mood mood, doc jsonb)",
        )
        .await
        .unwrap();
    let inserted = query(
        &client,
        "INSERT INTO things VALUES ($1, $2, $3, $4, $5) RETURNING *",
        json!([42, "2026-11-22T08:37:16+01:00", ["x"], "happy", {"k": 1}]),
    )
    .await
    .unwrap();
    assert_eq!(
        inserted,
        json!([{
            "id": 42,
            "at": "2026-11-22T07:37:16Z",
            "tags": ["x"],
            "mood": "happy",
            "doc": {"k": 1},
        }])
    );
    let found = query(
        &client,
        "SELECT id FROM things WHERE id = ANY($1) AND doc @> $2",
        json!([[41, 42], {"k": 1}]),
    )
    .await
    .unwrap();
    assert_eq!(found, json!([{"id": 42}]));

    if citext {
        assert_eq!(
            row(&client, "SELECT $1::citext AS c", json!(["MiXed"])).await,
            json!({"c": "MiXed"})
        );
    }
    assert_eq!(
        row(
            &client,
            "SELECT ARRAY[[1, 2], [3, NULL]]::int2[] AS grid, '{}'::text[] AS none, \
             'infinity'::timestamptz AS forever, '24:00:00'::time AS midnight, \
             NULL::int4 AS nothing",
            json!([]),
        )
        .await,
        json!({
            "grid": [[1, 2], [3, null]],
            "none": [],
            "forever": "infinity",
            "midnight": "24:00:00",
            "nothing": null,
        })
    );
    assert_eq!(
        query(&client, "SELECT 1 WHERE false", json!([]))
            .await
            .unwrap(),
        json!([])
    );
}

#[tokio::test]
async fn numeric_results_keep_every_digit_and_their_scale() {
    let postgres = Postgres::start();
    let client = connect(&postgres).await;
    let values = row(
        &client,
        "SELECT 12345.6789::numeric AS a, -0.001::numeric AS b, 0::numeric AS c, \
         1e20::numeric AS d, 'NaN'::numeric AS e, 'Infinity'::numeric AS f, \
         '-Infinity'::numeric AS g, 0.00::numeric AS h, 1.50::numeric(6, 3) AS i, \
         123456789012345678901234567890.123456789::numeric AS j, 1e-20::numeric AS k, \
         10000.0001::numeric AS l, (SELECT sum(x) FROM (VALUES (1::bigint), (2)) v(x)) AS s, \
         (SELECT avg(x) FROM (VALUES (1), (2)) v(x)) AS m",
        json!([]),
    )
    .await;
    assert_eq!(
        values,
        json!({
            "a": "12345.6789",
            "b": "-0.001",
            "c": "0",
            "d": "100000000000000000000",
            "e": "NaN",
            "f": "Infinity",
            "g": "-Infinity",
            "h": "0.00",
            "i": "1.500",
            "j": "123456789012345678901234567890.123456789",
            "k": "0.00000000000000000001",
            "l": "10000.0001",
            "s": "3",
            "m": "1.5000000000000000",
        })
    );

    // Bound numerics reach the server exactly, whatever their form; its own text output
    // is the reference.
    for input in [
        json!("12345.6789"),
        json!("-0.001"),
        json!("0.000"),
        json!(1.5e-7),
        json!(-42),
        json!("9999.9999e4"),
        json!("NaN"),
    ] {
        let rows = query(
            &client,
            "SELECT $1::numeric AS value, $1::numeric::text AS text",
            json!([input]),
        )
        .await
        .unwrap();
        assert_eq!(rows[0]["value"], rows[0]["text"], "{input}");
    }
}

#[tokio::test]
async fn bad_params_are_errors_naming_the_parameter_and_types_before_anything_runs() {
    let postgres = Postgres::start();
    let client = connect(&postgres).await;
    client
        .batch_execute("CREATE TABLE log (n int4)")
        .await
        .unwrap();
    let cases = [
        (
            "INSERT INTO log VALUES ($1)",
            json!(["12"]),
            "parameter $1 has type int4 and needs an integer, but the string \"12\" was given",
        ),
        (
            "INSERT INTO log VALUES ($1)",
            json!([2147483648u32]),
            "parameter $1 has type int4, and 2147483648 is out of range for it",
        ),
        (
            "INSERT INTO log VALUES ($1)",
            json!([0.5]),
            "parameter $1 has type int4 and needs an integer, but the number 0.5 was given",
        ),
        (
            "INSERT INTO log VALUES ($1), ($2)",
            json!([1, 2, 3]),
            "the statement takes 2 parameters, 3 given",
        ),
        (
            "INSERT INTO log VALUES ($1), ($2)",
            json!([1]),
            "the statement takes 2 parameters, 1 given",
        ),
        (
            "SELECT $1::text",
            json!([true]),
            "parameter $1 has type text and needs a string, but true was given",
        ),
        (
            "SELECT $1::point",
            json!(["(1,2)"]),
            "parameter $1 has type point, which the db capability cannot bind; \
             cast it in SQL, e.g. $1::text",
        ),
        (
            "SELECT $1::int8[]",
            json!([[1, "2"]]),
            "parameter $1 element 2 has type int8 and needs an integer, \
             but the string \"2\" was given",
        ),
        (
            "SELECT $1::uuid",
            json!(["not-a-uuid"]),
            "parameter $1 has type uuid and needs a UUID string; \
             the string \"not-a-uuid\" is not one: ",
        ),
    ];
    for (sql, params, message) in cases {
        let error = prepare_error(&client, sql, params).await;
        assert!(error.starts_with(message), "{sql}: {error}");
    }
    let logged = client
        .query_one("SELECT count(*) FROM log", &[])
        .await
        .unwrap();
    assert_eq!(logged.get::<_, i64>(0), 0, "a rejected statement ran");

    // Null binds as SQL NULL whatever the type, and an empty params string is none.
    assert_eq!(
        row(
            &client,
            "SELECT $1::point IS NULL AS missing",
            json!([null])
        )
        .await,
        json!({"missing": true})
    );
    assert!(parse_params("").unwrap().is_empty());
    assert_eq!(
        parse_params(r#"{"n": 1}"#).unwrap_err().to_string(),
        "params must be a JSON array"
    );

    // A value that skipped the check still fails in binding, with the same message.
    let statement = client.prepare("SELECT $1::int2").await.unwrap();
    let values = [json!(40000)];
    let error = client
        .query_raw(&statement, Param::list(&values))
        .await
        .err()
        .expect("binding an out-of-range int2 fails");
    let cause = std::error::Error::source(&error).expect("the binding error is the cause");
    assert_eq!(
        cause.to_string(),
        "parameter $1 has type int2, and 40000 is out of range for it"
    );
}

#[tokio::test]
async fn columns_that_cannot_be_json_are_errors_naming_the_column_and_a_cast() {
    let postgres = Postgres::start();
    let client = connect(&postgres).await;
    assert_eq!(
        prepare_error(&client, "SELECT point(1, 2) AS p", json!([])).await,
        "column `p` has type point, which the db capability cannot return; \
         cast it in SQL, e.g. p::text"
    );
    assert_eq!(
        prepare_error(
            &client,
            "SELECT ARRAY['1 day'::interval] AS spans",
            json!([])
        )
        .await,
        "column `spans` has type interval[], which the db capability cannot return; \
         cast it in SQL, e.g. spans::text"
    );
    assert_eq!(
        prepare_error(&client, "SELECT 1 AS id, 2 AS id", json!([])).await,
        "two columns are named `id`; give them different names with AS"
    );
    // rows_to_json checks too, for callers that did not check the statement first.
    let rows = client.query("SELECT point(1, 2) AS p", &[]).await.unwrap();
    assert_eq!(
        rows_to_json(&rows).unwrap_err().to_string(),
        "column `p` has type point, which the db capability cannot return; \
         cast it in SQL, e.g. p::text"
    );
    // Years jiff cannot hold come back as an error asking for text, not a wrong date.
    let error = prepare_error(&client, "SELECT '20000-01-01'::date AS far", json!([])).await;
    assert!(
        error.starts_with("column `far` has type date, and its value is outside the years"),
        "{error}"
    );
    assert_eq!(
        row(
            &client,
            "SELECT '20000-01-01'::date::text AS far",
            json!([])
        )
        .await,
        json!({"far": "20000-01-01"})
    );
}
