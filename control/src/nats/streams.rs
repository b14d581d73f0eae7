//! JetStream streams of durable verbs, made to match a [`StreamPlan`] from the contracts.

use std::time::Duration;

use async_nats::jetstream::stream::{Config, RetentionPolicy, StorageType};
use async_nats::jetstream::{self, ErrorCode};
use cellbus_contracts::stream::{Retention, Storage, StreamPlan};

use crate::Error;

/// What [`ensure_stream`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamChange {
    Created,
    Updated,
    Unchanged,
}

/// The server's stream configuration for a plan.
pub fn stream_config(plan: &StreamPlan) -> Config {
    Config {
        name: plan.name.clone(),
        description: Some("Cellbus: durable verbs of one service".into()),
        subjects: plan.subjects.clone(),
        retention: match plan.retention {
            Retention::WorkQueue => RetentionPolicy::WorkQueue,
        },
        storage: match plan.storage {
            Storage::File => StorageType::File,
        },
        duplicate_window: Duration::from_secs(plan.duplicate_window_seconds.into()),
        // The server reads 0 as "no age limit" and -1 as "no size limit".
        max_age: Duration::from_secs(plan.max_age_seconds.unwrap_or(0)),
        max_bytes: plan.max_bytes.unwrap_or(-1),
        num_replicas: plan.replicas.into(),
        ..Default::default()
    }
}

/// Creates the stream, or updates it when the plan's settings differ from the server's.
pub async fn ensure_stream(
    js: &jetstream::Context,
    plan: &StreamPlan,
) -> Result<StreamChange, Error> {
    let error = |source: Box<dyn std::error::Error + Send + Sync>| Error::Stream {
        name: plan.name.clone(),
        source,
    };
    let wanted = stream_config(plan);
    match js.get_stream(&plan.name).await {
        Ok(stream) => {
            let current = &stream.cached_info().config;
            let same = current.subjects == wanted.subjects
                && current.retention == wanted.retention
                && current.storage == wanted.storage
                && current.duplicate_window == wanted.duplicate_window
                && current.max_age == wanted.max_age
                && current.max_bytes == wanted.max_bytes
                && current.num_replicas == wanted.num_replicas;
            if same {
                return Ok(StreamChange::Unchanged);
            }
            js.update_stream(&wanted)
                .await
                .map_err(|e| error(e.into()))?;
            Ok(StreamChange::Updated)
        }
        Err(e) if is_not_found(&e) => {
            js.create_stream(wanted)
                .await
                .map_err(|e| error(e.into()))?;
            Ok(StreamChange::Created)
        }
        Err(e) => Err(error(e.into())),
    }
}

/// Deletes a stream; `false` when it was already gone.
pub async fn delete_stream(js: &jetstream::Context, name: &str) -> Result<bool, Error> {
    match js.delete_stream(name).await {
        Ok(_) => Ok(true),
        Err(e) if is_not_found(&e) => Ok(false),
        Err(e) => Err(Error::Stream {
            name: name.to_owned(),
            source: e.into(),
        }),
    }
}

fn is_not_found(error: &jetstream::context::GetStreamError) -> bool {
    matches!(
        error.kind(),
        jetstream::context::GetStreamErrorKind::JetStream(e)
            if e.error_code() == ErrorCode::STREAM_NOT_FOUND
    )
}
