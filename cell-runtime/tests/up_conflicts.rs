//! `cellbus up` refuses a service something on the bus already answers — a foreign
//! responder on `cbs.{service}.>`, or a first `cellbus up` — before it writes any bucket,
//! stream or assignment, unless `--replace` says to serve alongside.

use std::path::{Path, PathBuf};

use cellbus_contracts::assignment::{assignment_key, ASSIGNMENTS_BUCKET};
use cellbus_runtime::up::{self, UpArgs, UpError};
use cellbus_runtime::EngineArgs;
use cellbus_testkit::NatsServer;
use futures::StreamExt;
use tempfile::TempDir;

fn echo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/echo")
}

fn args(nats: &NatsServer, cache: &TempDir, replace: bool) -> UpArgs {
    UpArgs {
        dir: echo_dir(),
        nats_url: Some(nats.url().to_owned()),
        database_url: None,
        pooler: Default::default(),
        replace,
        replicas: None,
        engine: EngineArgs {
            cache_dir: cache.path().to_owned(),
            max_memory: 64 << 20,
            max_instances: 50,
            ..EngineArgs::default()
        },
    }
}

/// A plain async-nats subscriber on `cbs.echo.>` that answers everything it gets.
async fn foreign_responder(nats: &NatsServer) -> tokio::task::JoinHandle<()> {
    let client = async_nats::connect(nats.url()).await.unwrap();
    let mut requests = client.subscribe("cbs.echo.>").await.unwrap();
    client.flush().await.unwrap();
    tokio::spawn(async move {
        while let Some(request) = requests.next().await {
            if let Some(reply) = request.reply {
                let _ = client.publish(reply, "mine".into()).await;
            }
        }
    })
}

fn taken(result: Result<up::Up, UpError>) -> UpError {
    match result {
        Err(error @ UpError::ServicesTaken { .. }) => error,
        Err(other) => panic!("expected ServicesTaken, got {other:?}"),
        Ok(_) => panic!("expected ServicesTaken, but up started"),
    }
}

/// The streams on the server: KV buckets and object stores are streams too.
async fn streams(nats: &NatsServer) -> Vec<String> {
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut names: Vec<String> = js.stream_names().map(|name| name.unwrap()).collect().await;
    names.sort();
    names
}

#[tokio::test]
async fn up_refuses_a_service_a_foreign_responder_answers_and_writes_nothing() {
    let nats = NatsServer::start();
    let cache = tempfile::tempdir().unwrap();
    let responder = foreign_responder(&nats).await;

    let refused = up::start(&args(&nats, &cache, false)).await;
    let error = taken(refused);
    assert_eq!(
        error.to_string(),
        format!(
            "service echo (Cell default/echo) is already answered on {} by a responder that \
             is not a Cellbus runtime\nstop it, rename spec.service, or pass --replace to \
             serve alongside",
            nats.url()
        )
    );
    assert_eq!(streams(&nats).await, Vec::<String>::new());
    responder.abort();
}

#[tokio::test]
async fn up_with_replace_serves_a_taken_service_and_says_so() {
    let nats = NatsServer::start();
    let cache = tempfile::tempdir().unwrap();
    let responder = foreign_responder(&nats).await;

    let up = up::start(&args(&nats, &cache, true)).await.unwrap();
    let note = format!(
        "note    service echo (Cell default/echo) is already answered on {} by a responder \
         that is not a Cellbus runtime; serving it too (--replace)",
        nats.url()
    );
    assert!(up.report.contains(&note), "{:?}", up.report);
    assert!(
        up.report
            .iter()
            .any(|l| l.starts_with("serving cbs.echo.say")),
        "{:?}",
        up.report
    );
    up.shutdown().await;
    responder.abort();
}

#[tokio::test]
async fn a_second_up_on_the_same_bus_is_refused_naming_the_first_ones_pod() {
    let nats = NatsServer::start();
    let cache = tempfile::tempdir().unwrap();
    let first = up::start(&args(&nats, &cache, false)).await.unwrap();
    let assignments = async_nats::jetstream::new(first.node.shared.client.clone())
        .get_key_value(ASSIGNMENTS_BUCKET)
        .await
        .unwrap();
    let key = assignment_key("default", "wasm");
    let written = assignments.entry(&key).await.unwrap().unwrap().revision;

    let second = tempfile::tempdir().unwrap();
    let refused = up::start(&args(&nats, &second, false)).await;
    let error = taken(refused);
    let digest = std::fs::read_to_string(echo_dir().join("cell.yaml"))
        .unwrap()
        .lines()
        .find_map(|l| l.trim().strip_prefix("digest: ").map(str::to_owned))
        .unwrap();
    assert_eq!(
        error.to_string(),
        format!(
            "service echo (Cell default/echo) is already answered on {} by the Cellbus \
             runtime of pod local (module {digest})\nstop it, rename spec.service, or pass \
             --replace to serve alongside",
            nats.url()
        )
    );
    // The first one's assignment is as it wrote it.
    let entry = assignments.entry(&key).await.unwrap().unwrap();
    assert_eq!(entry.revision, written);
    first.shutdown().await;
}
