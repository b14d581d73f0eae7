//! The NATS side of durable verbs: the dead-letter stream, the consumer each verb is
//! pulled through, and the caller's half (publish through JetStream, wait for the reply).

use std::time::Duration;

use async_nats::header::HeaderMap;
use async_nats::jetstream::{self, consumer, stream};
use async_nats::Client;
use cellbus_contracts::durable::{
    consumer_name, Redelivery, DEAD_LETTER_MAX_AGE, DEAD_LETTER_STREAM, DEAD_LETTER_SUBJECTS,
};
use cellbus_contracts::resources::VerbSpec;
use cellbus_contracts::subject;
use cellbus_contracts::wire::{headers, Reply, Request};
use futures::StreamExt;

use crate::Error;

/// How long a pod may hold a durable request without a sign of life before JetStream
/// gives it to another pod; a pod working longer sends in-progress acks well within it.
pub const ACK_WAIT: Duration = Duration::from_secs(30);

/// Creates the dead-letter stream where missing.
pub async fn ensure_dead_letter_stream(js: &jetstream::Context) -> Result<(), Error> {
    js.get_or_create_stream(stream::Config {
        name: DEAD_LETTER_STREAM.into(),
        description: Some("Cellbus: durable requests that will not be run again".into()),
        subjects: vec![DEAD_LETTER_SUBJECTS.into()],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        max_age: DEAD_LETTER_MAX_AGE,
        ..Default::default()
    })
    .await
    .map(|_| ())
    .map_err(|source| Error::Stream {
        name: DEAD_LETTER_STREAM.into(),
        source: source.into(),
    })
}

/// The durable consumer the pods of a pool share for `verb` of `service`, with at most
/// `max_in_flight` requests handed out and not yet acknowledged.
pub fn consumer_config(
    service: &str,
    verb: &VerbSpec,
    max_in_flight: u32,
) -> Result<consumer::pull::Config, subject::SubjectError> {
    let redelivery = Redelivery::of(verb);
    Ok(consumer::pull::Config {
        durable_name: Some(consumer_name(&verb.name)),
        description: Some(format!("Cellbus: pods serving {service}.{}", verb.name)),
        filter_subject: subject::request_subject(service, &verb.name)?,
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: ACK_WAIT,
        max_deliver: i64::from(redelivery.max_deliver),
        max_ack_pending: i64::from(max_in_flight.max(1)),
        deliver_policy: consumer::DeliverPolicy::All,
        ..Default::default()
    })
}

/// Publishes `request` to its durable verb through JetStream and waits up to `wait` for
/// the reply. The envelope id is the de-duplication key: a publish whose acknowledgement
/// is lost (the stream's leader died, the connection moved to another node) is sent again
/// with the same id and the same reply subject, so the request is stored and run once and
/// its one reply still reaches this caller.
pub async fn durable_request(
    client: &Client,
    js: &jetstream::Context,
    request: &Request,
    wait: Duration,
) -> Result<Reply, Error> {
    let deadline = tokio::time::Instant::now() + wait;
    let subject = subject::request_subject(&request.service, &request.verb).map_err(|source| {
        Error::Durable {
            what: "addressing the request".into(),
            source: source.into(),
        }
    })?;
    let error = |what: &str| {
        let what = format!("{what} {subject}");
        move |source: Box<dyn std::error::Error + Send + Sync>| Error::Durable { what, source }
    };
    let inbox = client.new_inbox();
    let mut replies = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| error("waiting for replies on")(e.into()))?;
    store_request(js, &subject, request, &inbox, deadline)
        .await
        .map_err(|error| match error {
            Error::DurableTimeout { subject, .. } => Error::DurableTimeout {
                subject,
                waited: wait,
            },
            other => other,
        })?;
    let message = tokio::time::timeout_at(deadline, replies.next())
        .await
        .map_err(|_| Error::DurableTimeout {
            subject: subject.clone(),
            waited: wait,
        })?
        .ok_or_else(|| error("waiting for the reply of")("the subscription ended".into()))?;
    serde_json::from_slice(&message.payload).map_err(|e| error("reading the reply of")(e.into()))
}

/// Pause before the first publish sent again; doubled each time up to [`RESEND_MAX`].
const RESEND_FIRST: Duration = Duration::from_millis(50);
const RESEND_MAX: Duration = Duration::from_secs(1);

/// Stores `request` in the stream of `subject` with `reply_to` as where its reply goes,
/// publishing again with the same envelope id until JetStream acknowledges it or
/// `deadline` passes: the duplicate window drops every copy but the first, so a resend
/// never runs the request twice. Fails with the last refusal at the deadline.
pub async fn store_request(
    js: &jetstream::Context,
    subject: &str,
    request: &Request,
    reply_to: &str,
    deadline: tokio::time::Instant,
) -> Result<(), Error> {
    let body: bytes::Bytes = serde_json::to_vec(request)
        .map_err(|e| Error::Durable {
            what: format!("encoding a request to {subject}"),
            source: e.into(),
        })?
        .into();
    let started = tokio::time::Instant::now();
    let mut pauses = crate::backoff::delays(RESEND_FIRST, RESEND_MAX);
    loop {
        let mut headers = HeaderMap::new();
        headers.insert(headers::MSG_ID, request.id.to_string().as_str());
        headers.insert(headers::REPLY_TO, reply_to);
        let stored = async {
            js.publish_with_headers(subject.to_owned(), headers, body.clone())
                .await
                .map_err(|e| {
                    (
                        "publishing to",
                        Box::new(e) as Box<dyn std::error::Error + Send + Sync>,
                    )
                })?
                .await
                .map_err(|e| ("storing a request for", Box::new(e) as _))
        };
        // Out of time while unacknowledged: it may be stored and run, so a timeout, not
        // a refusal.
        let failure = match tokio::time::timeout_at(deadline, stored).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(failure)) => failure,
            Err(_) => {
                return Err(Error::DurableTimeout {
                    subject: subject.to_owned(),
                    waited: started.elapsed(),
                })
            }
        };
        let pause = pauses.next().unwrap_or(RESEND_MAX);
        let now = tokio::time::Instant::now();
        if now + pause >= deadline {
            let (what, source) = failure;
            return Err(Error::Durable {
                what: format!("{what} {subject}"),
                source,
            });
        }
        tracing::debug!(error = %failure.1, "{} {subject}; sending again", failure.0);
        tokio::time::sleep(pause).await;
    }
}
