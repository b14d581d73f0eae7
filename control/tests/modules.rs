//! The module store repairs itself: a push replaces whatever else is stored under a
//! module's digest, and a fetch names what is wrong with such an object.

use async_nats::jetstream::{self, object_store::ObjectStore};
use async_nats::HeaderMap;
use base64::Engine;
use cellbus_control::{digest_of, fetch_module, module_exists, push_module, NatsArgs};
use cellbus_testkit::NatsServer;
use rstest::rstest;
use sha2::{Digest, Sha256};

async fn modules(nats: &NatsServer) -> (jetstream::Context, ObjectStore) {
    let client = cellbus_control::connect_once(&NatsArgs::url(nats.url()), "test")
        .await
        .unwrap();
    let js = jetstream::new(client);
    let buckets = cellbus_control::ensure_buckets(&js).await.unwrap();
    (js, buckets.modules)
}

/// A module of three object store chunks (128 KiB each).
fn module() -> Vec<u8> {
    (0..300_000u32).map(|i| (i % 251) as u8).collect()
}

/// Messages the object store's stream has taken so far.
async fn writes(js: &jetstream::Context) -> u64 {
    let mut stream = js.get_stream("OBJ_cbs-modules").await.unwrap();
    stream.info().await.unwrap().state.last_sequence
}

#[derive(Debug, Clone, Copy)]
enum Poison {
    OtherBytes,
    CutOff,
    /// Metadata claiming the module's size and SHA-256 over chunks of other bytes.
    ForgedMetadata,
}

/// Stores something other than `real` under its digest, as `poison` says.
async fn poison(js: &jetstream::Context, modules: &ObjectStore, real: &[u8], poison: Poison) {
    let digest = digest_of(real);
    let mut other = real.to_vec();
    other.reverse();
    let stored = match poison {
        Poison::OtherBytes | Poison::ForgedMetadata => other,
        Poison::CutOff => real[..real.len() / 2].to_vec(),
    };
    modules
        .put(digest.as_str(), &mut stored.as_slice())
        .await
        .unwrap();
    if let Poison::ForgedMetadata = poison {
        let mut info = modules.info(&digest).await.unwrap();
        info.digest = Some(format!(
            "SHA-256={}",
            base64::engine::general_purpose::URL_SAFE.encode(Sha256::digest(real))
        ));
        let name = base64::engine::general_purpose::URL_SAFE.encode(&digest);
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Rollup", "sub");
        js.publish_with_headers(
            format!("$O.cbs-modules.M.{name}"),
            headers,
            serde_json::to_vec(&info).unwrap().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
}

#[rstest]
#[case::other_bytes(Poison::OtherBytes, false, "module bytes have digest DIGEST_OF_STORED, not DIGEST: the object stored under that name is another module; `cellbus module push` the right file to replace it")]
#[case::cut_off(Poison::CutOff, false, "module bytes have digest DIGEST_OF_STORED, not DIGEST: the object stored under that name is another module; `cellbus module push` the right file to replace it")]
#[case::forged_metadata(Poison::ForgedMetadata, true, "the object stored as module DIGEST does not match its own checksum (cut off or tampered with); `cellbus module push` the right file to replace it")]
#[tokio::test]
async fn a_poisoned_object_is_refused_by_fetch_and_replaced_by_push(
    #[case] kind: Poison,
    #[case] metadata_claims_it: bool,
    #[case] refusal: &str,
) {
    let nats = NatsServer::start();
    let (js, modules) = modules(&nats).await;
    let real = module();
    let digest = digest_of(&real);
    poison(&js, &modules, &real, kind).await;

    let mut stored = Vec::new();
    if !metadata_claims_it {
        use tokio::io::AsyncReadExt;
        let mut object = modules.get(&digest).await.unwrap();
        object.read_to_end(&mut stored).await.unwrap();
    }
    let error = fetch_module(&modules, &digest).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        refusal
            .replace("DIGEST_OF_STORED", &digest_of(&stored))
            .replace("DIGEST", &digest)
    );
    // Only metadata is read to tell, so forged metadata passes; the pods refuse the bytes.
    assert_eq!(
        module_exists(&modules, &digest).await.unwrap(),
        metadata_claims_it
    );

    assert_eq!(push_module(&modules, &real).await.unwrap(), digest);
    assert_eq!(fetch_module(&modules, &digest).await.unwrap(), real);
    assert!(module_exists(&modules, &digest).await.unwrap());
}

#[tokio::test]
async fn pushing_the_module_already_stored_writes_nothing() {
    let nats = NatsServer::start();
    let (js, modules) = modules(&nats).await;
    let real = module();
    push_module(&modules, &real).await.unwrap();
    let before = writes(&js).await;
    push_module(&modules, &real).await.unwrap();
    assert_eq!(writes(&js).await, before);
    assert_eq!(
        fetch_module(&modules, &digest_of(&real)).await.unwrap(),
        real
    );
}
