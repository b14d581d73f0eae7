//! A durable cell's stream is created, left alone, updated and deleted to match its plan,
//! on a real nats-server.

use async_nats::jetstream::{self, stream::RetentionPolicy};
use cellbus_contracts::resources::CellSpec;
use cellbus_contracts::stream::stream_plan;
use cellbus_control::{delete_stream, ensure_stream, StreamChange};
use cellbus_testkit::NatsServer;
use serde_json::json;

fn ledger(extra_verb: Option<&str>, window: u32) -> CellSpec {
    let mut verbs = vec![
        json!({"name": "append", "delivery": "durable"}),
        json!({"name": "read"}),
    ];
    if let Some(verb) = extra_verb {
        verbs.push(json!({"name": verb, "delivery": "durable"}));
    }
    serde_json::from_value(json!({
        "service": "ledger",
        "verbs": verbs,
        "module": {"digest": format!("sha256:{}", "a".repeat(64))},
        "stream": {"duplicateWindowSeconds": window, "maxAgeSeconds": 3600},
    }))
    .unwrap()
}

#[tokio::test]
async fn a_stream_follows_its_plan_and_deleting_twice_is_fine() {
    let nats = NatsServer::start();
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let plan = stream_plan(&ledger(None, 120)).unwrap().unwrap();

    assert_eq!(
        ensure_stream(&js, &plan).await.unwrap(),
        StreamChange::Created
    );
    assert_eq!(
        ensure_stream(&js, &plan).await.unwrap(),
        StreamChange::Unchanged
    );
    let mut stream = js.get_stream("CBS_LEDGER").await.unwrap();
    let config = &stream.info().await.unwrap().config;
    assert_eq!(config.subjects, ["cbs.ledger.append"]);
    assert_eq!(config.retention, RetentionPolicy::WorkQueue);
    assert_eq!(config.duplicate_window.as_secs(), 120);

    // A durable request is captured; a request verb's subject is not.
    let ack = js
        .publish("cbs.ledger.append", "{}".into())
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(ack.stream, "CBS_LEDGER");

    let changed = stream_plan(&ledger(Some("rewind"), 300)).unwrap().unwrap();
    assert_eq!(
        ensure_stream(&js, &changed).await.unwrap(),
        StreamChange::Updated
    );
    let mut stream = js.get_stream("CBS_LEDGER").await.unwrap();
    let config = &stream.info().await.unwrap().config;
    assert_eq!(config.subjects, ["cbs.ledger.append", "cbs.ledger.rewind"]);
    assert_eq!(config.duplicate_window.as_secs(), 300);
    assert_eq!(
        stream.info().await.unwrap().state.messages,
        1,
        "an update keeps messages"
    );

    assert!(delete_stream(&js, "CBS_LEDGER").await.unwrap());
    assert!(!delete_stream(&js, "CBS_LEDGER").await.unwrap());
}
