//! Buckets, modules, assignments and the `$ping` check.

use std::time::Duration;

use async_nats::jetstream::{self, kv, object_store};
use async_nats::Client;
use bytes::Bytes;
use cellbus_contracts::assignment::{PoolAssignment, ASSIGNMENTS_BUCKET, MODULES_BUCKET};
use cellbus_contracts::status::{PingPayload, STATUS_BUCKET};
use cellbus_contracts::subject;
use cellbus_contracts::wire::{Reply, Request};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use crate::Error;

/// The three buckets every Cellbus NATS holds.
#[derive(Clone)]
pub struct Buckets {
    pub assignments: kv::Store,
    pub status: kv::Store,
    pub modules: object_store::ObjectStore,
}

fn bucket_error(what: &str) -> impl FnOnce(Box<dyn std::error::Error + Send + Sync>) -> Error + '_ {
    move |source| Error::Bucket {
        what: what.to_owned(),
        source,
    }
}

/// Opens the buckets, creating with one copy each one that is missing: what a runtime pod
/// or a tool does, leaving how many copies a bucket keeps to whoever made it.
pub async fn ensure_buckets(js: &jetstream::Context) -> Result<Buckets, Error> {
    open_buckets(js, None).await
}

/// Opens the buckets with `replicas` copies each on a NATS cluster: creates a missing one
/// so, and changes an existing one that keeps another number (JetStream moves the copies
/// while the bucket stays in use). What the operator and `cellbus up --replicas` do.
pub async fn ensure_buckets_replicated(
    js: &jetstream::Context,
    replicas: usize,
) -> Result<Buckets, Error> {
    open_buckets(js, Some(replicas.max(1))).await
}

async fn open_buckets(js: &jetstream::Context, replicas: Option<usize>) -> Result<Buckets, Error> {
    let copies = replicas.unwrap_or(1);
    let assignments = open_kv(
        js,
        kv::Config {
            bucket: ASSIGNMENTS_BUCKET.into(),
            description: "Cellbus: the cells each pool serves, by {namespace}.{pool}".into(),
            history: 5,
            storage: jetstream::stream::StorageType::File,
            num_replicas: copies,
            ..Default::default()
        },
        replicas,
    )
    .await?;
    let status = open_kv(
        js,
        kv::Config {
            bucket: STATUS_BUCKET.into(),
            description: "Cellbus: what each runtime pod loaded, by {namespace}.{pool}.{pod}"
                .into(),
            history: 1,
            storage: jetstream::stream::StorageType::File,
            num_replicas: copies,
            ..Default::default()
        },
        replicas,
    )
    .await?;
    let what = "the object store cbs-modules";
    let exists = stream_exists(js, &format!("OBJ_{MODULES_BUCKET}"))
        .await
        .map_err(bucket_error(what))?;
    let modules = if exists {
        js.get_object_store(MODULES_BUCKET)
            .await
            .map_err(|e| bucket_error(what)(e.into()))?
    } else {
        js.create_object_store(object_store::Config {
            bucket: MODULES_BUCKET.into(),
            description: Some("Cellbus: cell modules, named by sha256 digest".into()),
            storage: jetstream::stream::StorageType::File,
            num_replicas: copies,
            ..Default::default()
        })
        .await
        .map_err(|e| bucket_error(what)(replicas_error(e.into(), copies)))?
    };
    if let Some(replicas) = replicas {
        set_replicas(js, &format!("OBJ_{MODULES_BUCKET}"), replicas, what).await?;
    }
    Ok(Buckets {
        assignments,
        status,
        modules,
    })
}

async fn open_kv(
    js: &jetstream::Context,
    config: kv::Config,
    replicas: Option<usize>,
) -> Result<kv::Store, Error> {
    let what = format!("the KV bucket {}", config.bucket);
    let bucket = config.bucket.clone();
    let copies = config.num_replicas;
    let exists = stream_exists(js, &format!("KV_{bucket}"))
        .await
        .map_err(bucket_error(&what))?;
    let store = if exists {
        js.get_key_value(&bucket)
            .await
            .map_err(|e| bucket_error(&what)(e.into()))?
    } else {
        js.create_key_value(config)
            .await
            .map_err(|e| bucket_error(&what)(replicas_error(e.into(), copies)))?
    };
    if let Some(replicas) = replicas {
        set_replicas(js, &format!("KV_{bucket}"), replicas, &what).await?;
    }
    Ok(store)
}

/// Whether the stream `name` exists; `Err` when JetStream could not say.
async fn stream_exists(
    js: &jetstream::Context,
    name: &str,
) -> Result<bool, Box<dyn std::error::Error + Send + Sync>> {
    use jetstream::context::GetStreamErrorKind;
    match js.get_stream(name).await {
        Ok(_) => Ok(true),
        Err(error) => match error.kind() {
            GetStreamErrorKind::JetStream(inner)
                if inner.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
            {
                Ok(false)
            }
            _ => Err(error.into()),
        },
    }
}

/// Gives the stream behind a bucket `replicas` copies, when it keeps another number.
async fn set_replicas(
    js: &jetstream::Context,
    stream: &str,
    replicas: usize,
    what: &str,
) -> Result<(), Error> {
    let mut current = js
        .get_stream(stream)
        .await
        .map_err(|e| bucket_error(what)(e.into()))?;
    let info = current
        .info()
        .await
        .map_err(|e| bucket_error(what)(e.into()))?;
    if info.config.num_replicas == replicas {
        return Ok(());
    }
    let config = jetstream::stream::Config {
        num_replicas: replicas,
        ..info.config.clone()
    };
    js.update_stream(config)
        .await
        .map_err(|e| bucket_error(what)(replicas_error(e.into(), replicas)))?;
    tracing::info!(
        stream,
        from = info.config.num_replicas,
        to = replicas,
        "changed the copies of a bucket"
    );
    Ok(())
}

/// JetStream's refusal of more copies than the cluster has servers, said plainly.
fn replicas_error(
    error: Box<dyn std::error::Error + Send + Sync>,
    replicas: usize,
) -> Box<dyn std::error::Error + Send + Sync> {
    let text = error.to_string();
    let refusals = [
        "insufficient resources",
        "no suitable peers",
        "replicas > 1 not supported",
    ];
    if replicas > 1 && refusals.iter().any(|refusal| text.contains(refusal)) {
        format!("{replicas} copies asked for, but the NATS has fewer JetStream servers in its cluster (set --replicas to at most that number): {text}").into()
    } else {
        error
    }
}

/// `sha256:` and the hex digest of `bytes`, the form `spec.module.digest` takes.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The digest an object store records for `bytes` in its info: `SHA-256=` and the
/// URL-safe base64 of the hash.
fn object_digest(bytes: &[u8]) -> String {
    use base64::Engine;
    format!(
        "SHA-256={}",
        base64::engine::general_purpose::URL_SAFE.encode(Sha256::digest(bytes))
    )
}

/// Stores a module under its digest and returns the digest. An object already under that
/// name is kept only when it holds exactly these bytes (then nothing is written); any
/// other object there (other bytes, a cut-off upload, metadata its chunks do not match) is
/// replaced, since every runtime would refuse it and nothing else would ever repair it.
pub async fn push_module(
    modules: &object_store::ObjectStore,
    bytes: &[u8],
) -> Result<String, Error> {
    let digest = digest_of(bytes);
    if holds(modules, &digest, bytes).await {
        return Ok(digest);
    }
    let mut reader = bytes;
    // A put under an existing name replaces the object's metadata and drops its chunks.
    modules
        .put(digest.as_str(), &mut reader)
        .await
        .map_err(|source| Error::PushModule {
            digest: digest.clone(),
            source: source.into(),
        })?;
    Ok(digest)
}

/// Whether the object `name` holds exactly `bytes`. Its info (size and the SHA-256 its
/// writer recorded) tells most differences without a read; since a writer records those,
/// a match is confirmed by reading the object back. When it cannot be told the answer is
/// no: the put that follows replaces the object, or reports why it cannot.
async fn holds(modules: &object_store::ObjectStore, name: &str, bytes: &[u8]) -> bool {
    let Ok(info) = modules.info(name).await else {
        return false;
    };
    if info.deleted
        || info.size != bytes.len()
        || info.digest.as_deref() != Some(object_digest(bytes).as_str())
    {
        return false;
    }
    matches!(read_object(modules, name).await, Ok(Some(stored)) if stored == bytes)
}

/// Whether a module is stored under `digest`: an object by that name whose metadata
/// describes bytes with that digest (an object holding other bytes is as good as none,
/// and `cellbus module push` replaces it). The bytes themselves are checked where they are
/// read.
pub async fn module_exists(
    modules: &object_store::ObjectStore,
    digest: &str,
) -> Result<bool, Error> {
    match modules.info(digest).await {
        Ok(info) => Ok(!info.deleted && describes(&info, digest)),
        Err(error) if error.kind() == object_store::InfoErrorKind::NotFound => Ok(false),
        Err(error) => Err(Error::FetchModule {
            digest: digest.to_owned(),
            source: error.into(),
        }),
    }
}

/// Whether an object's recorded SHA-256 is the one `digest` (`sha256:` and hex) names.
fn describes(info: &object_store::ObjectInfo, digest: &str) -> bool {
    use base64::Engine;
    let Some(recorded) = info
        .digest
        .as_deref()
        .and_then(|d| d.strip_prefix("SHA-256="))
        .and_then(|d| base64::engine::general_purpose::URL_SAFE.decode(d).ok())
    else {
        return false;
    };
    digest.strip_prefix("sha256:") == Some(hex::encode(recorded).as_str())
}

/// The bytes of the object `name`; `None` when there is none.
async fn read_object(
    modules: &object_store::ObjectStore,
    name: &str,
) -> Result<Option<Vec<u8>>, Error> {
    let fetch_error = |source: Box<dyn std::error::Error + Send + Sync>| Error::FetchModule {
        digest: name.to_owned(),
        source,
    };
    let mut object = match modules.get(name).await {
        Ok(object) => object,
        Err(error) if error.kind() == object_store::GetErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(fetch_error(error.into())),
    };
    // Read by hand rather than with `read_to_end`: on a checksum mismatch the reader fills
    // the buffer and fails in one call, which `read_to_end` asserts never happens (a panic
    // in debug builds).
    let mut bytes = Vec::with_capacity(object.info.size.min(64 << 20));
    let mut chunk = vec![0; 128 << 10];
    loop {
        match object.read(&mut chunk).await {
            Ok(0) => return Ok(Some(bytes)),
            Ok(read) => bytes.extend_from_slice(&chunk[..read]),
            // The reader checks the chunks against the SHA-256 in the object's metadata.
            Err(error) if error.kind() == std::io::ErrorKind::InvalidData => {
                return Err(Error::ObjectCorrupt {
                    digest: name.to_owned(),
                })
            }
            Err(error) => return Err(fetch_error(error.into())),
        }
    }
}

/// Reads the module stored under `digest` and checks that its bytes have that digest.
pub async fn fetch_module(
    modules: &object_store::ObjectStore,
    digest: &str,
) -> Result<Vec<u8>, Error> {
    let bytes = read_object(modules, digest)
        .await?
        .ok_or_else(|| Error::ModuleMissing {
            digest: digest.to_owned(),
        })?;
    let actual = digest_of(&bytes);
    if actual != digest {
        return Err(Error::DigestMismatch {
            expected: digest.to_owned(),
            actual,
        });
    }
    Ok(bytes)
}

/// Writes a pool's assignment unless the stored one is already the same; returns whether
/// it wrote.
pub async fn write_assignment(
    assignments: &kv::Store,
    assignment: &PoolAssignment,
) -> Result<bool, Error> {
    let key = assignment.key();
    let error = |source: Box<dyn std::error::Error + Send + Sync>| Error::WriteAssignment {
        key: key.clone(),
        source,
    };
    let bytes = Bytes::from(serde_json::to_vec(assignment).map_err(|e| error(e.into()))?);
    let current = assignments.get(&key).await.map_err(|e| error(e.into()))?;
    if current.as_ref() == Some(&bytes) {
        return Ok(false);
    }
    assignments
        .put(&key, bytes)
        .await
        .map_err(|e| error(e.into()))?;
    Ok(true)
}

/// Reads a pool's assignment; `None` when the pool has none.
pub async fn read_assignment(
    assignments: &kv::Store,
    key: &str,
) -> Result<Option<PoolAssignment>, Error> {
    let error = |source: Box<dyn std::error::Error + Send + Sync>| Error::ReadAssignment {
        key: key.to_owned(),
        source,
    };
    match assignments.get(key).await.map_err(|e| error(e.into()))? {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| error(e.into())),
    }
}

/// Removes a pool's assignment, so its pods (if any are left) serve nothing; fine when
/// there is none.
pub async fn delete_assignment(assignments: &kv::Store, key: &str) -> Result<(), Error> {
    assignments
        .purge(key)
        .await
        .map_err(|source| Error::WriteAssignment {
            key: key.to_owned(),
            source: source.into(),
        })
}

/// Sends `$ping` to a service and collects the replies of every pod that answers within
/// `wait`.
pub async fn ping(
    client: &Client,
    service: &str,
    wait: Duration,
) -> Result<Vec<PingPayload>, Error> {
    ping_until(client, service, wait, |_| false).await
}

/// [`ping`] that stops early, as soon as a reply satisfies `enough`.
pub async fn ping_until(
    client: &Client,
    service: &str,
    wait: Duration,
    enough: impl Fn(&PingPayload) -> bool,
) -> Result<Vec<PingPayload>, Error> {
    let error = |source: Box<dyn std::error::Error + Send + Sync>| Error::Ping {
        service: service.to_owned(),
        source,
    };
    let subject = subject::ping_subject(service).map_err(|e| error(e.into()))?;
    let inbox = client.new_inbox();
    let mut replies = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| error(e.into()))?;
    let request = Request::new(service, subject::PING_VERB, serde_json::Value::Null);
    let body = serde_json::to_vec(&request).map_err(|e| error(e.into()))?;
    client
        .publish_with_reply(subject, inbox, body.into())
        .await
        .map_err(|e| error(e.into()))?;
    client.flush().await.map_err(|e| error(e.into()))?;
    let mut pongs = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(Some(message)) = tokio::time::timeout_at(deadline, replies.next()).await {
        if let Ok(Reply::Ok(reply)) = serde_json::from_slice::<Reply>(&message.payload) {
            if let Ok(pong) = serde_json::from_value::<PingPayload>(reply.payload) {
                let done = enough(&pong);
                pongs.push(pong);
                if done {
                    break;
                }
            }
        }
    }
    Ok(pongs)
}
