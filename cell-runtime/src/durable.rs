//! Durable verbs: each durable verb of a loaded cell is pulled from the cell's stream
//! through the durable consumer all pods of the pool share, so each request runs once.
//!
//! A worker fetches only as many requests as the cell has free in-flight permits, so a
//! slow cell never makes the runtime buffer requests (and the consumer's max ack pending
//! bounds what the pool as a whole holds). A request is acknowledged only after its reply
//! is published (the reply and the ack leave on the same connection, in that order); a
//! retryable failure is handed back with the verb's backoff; a non-retryable failure, or
//! the last delivery's, goes to `cbs.$dlq.{service}.{verb}` with its error envelope, its
//! caller gets that envelope, and the request is terminated. Long work sends in-progress
//! acks. Draining (a new version of the cell, its removal, shutdown) stops fetching and
//! waits for every request already taken, so none is acknowledged unprocessed and none
//! runs on a version that is gone.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, AckKind};
use cellbus_contracts::durable::{DeadLetter, Redelivery};
use cellbus_contracts::resources::{Delivery, VerbSpec};
use cellbus_contracts::subject;
use cellbus_contracts::wire::headers;
use futures::StreamExt;
use jiff::Timestamp;
use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio::task::JoinSet;
use tracing::{info, warn, Instrument};

use crate::cell::{Answer, LoadedCell};
use crate::shared::Shared;

/// Most requests fetched in one pull.
const MAX_BATCH: usize = 64;
/// How long one pull waits for requests before asking again.
const FETCH_EXPIRES: Duration = Duration::from_secs(1);
/// How often running work tells JetStream it is still alive.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);
/// How often the pending count is refreshed.
const PENDING_EVERY: Duration = Duration::from_secs(5);
/// Wait before trying again when the stream or the consumer cannot be reached.
const RETRY_AFTER: Duration = Duration::from_secs(2);

/// The workers of one version of one cell's durable verbs.
pub struct DurableWorkers {
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl DurableWorkers {
    /// Starts a worker for each durable verb of `cell`; `None` when it has none.
    pub fn start(shared: &Shared, cell: Arc<LoadedCell>) -> Option<Self> {
        let verbs: Vec<VerbSpec> = cell
            .spec
            .verbs
            .iter()
            .filter(|verb| verb.delivery == Delivery::Durable)
            .cloned()
            .collect();
        if verbs.is_empty() {
            return None;
        }
        let (stop, stopped) = watch::channel(false);
        let tasks = verbs
            .into_iter()
            .map(|verb| {
                let span =
                    tracing::info_span!("durable", service = %cell.service(), verb = %verb.name);
                let worker = Worker {
                    shared: shared.clone(),
                    cell: cell.clone(),
                    redelivery: Redelivery::of(&verb),
                    verb,
                };
                tokio::spawn(worker.run(stopped.clone()).instrument(span))
            })
            .collect();
        Some(Self { stop, tasks })
    }

    /// Stops fetching and waits until every request already taken has been answered and
    /// acknowledged, handed back or dead-lettered.
    pub async fn drain(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

struct Worker {
    shared: Shared,
    cell: Arc<LoadedCell>,
    verb: VerbSpec,
    redelivery: Redelivery,
}

impl Worker {
    async fn run(self, mut stopped: watch::Receiver<bool>) {
        let worker = Arc::new(self);
        let Some(consumer) = worker.consumer(&mut stopped).await else {
            return;
        };
        let permits = worker.cell.permits();
        let mut running = JoinSet::new();
        let mut pending_checked = Instant::now() - PENDING_EVERY;
        loop {
            if pending_checked.elapsed() >= PENDING_EVERY {
                worker.report_pending(&consumer).await;
                pending_checked = Instant::now();
            }
            // Requests are fetched only for free permits: what is not fetched stays in
            // the stream, where another pod (or this one, later) takes it.
            let first = tokio::select! {
                permit = permits.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
                _ = stopped.changed() => break,
            };
            let mut held = vec![first];
            while held.len() < MAX_BATCH {
                match permits.clone().try_acquire_owned() {
                    Ok(permit) => held.push(permit),
                    Err(_) => break,
                }
            }
            let fetch = consumer
                .fetch()
                .max_messages(held.len())
                .expires(FETCH_EXPIRES)
                .messages();
            let mut batch = tokio::select! {
                batch = fetch => match batch {
                    Ok(batch) => batch,
                    Err(error) => {
                        warn!(%error, "fetching durable requests; retrying");
                        drop(held);
                        tokio::select! {
                            _ = tokio::time::sleep(RETRY_AFTER) => continue,
                            _ = stopped.changed() => break,
                        }
                    }
                },
                _ = stopped.changed() => break,
            };
            // A fetch ends by itself after FETCH_EXPIRES; whatever it delivered is run,
            // even when draining began meanwhile.
            while let Some(message) = batch.next().await {
                let message = match message {
                    Ok(message) => message,
                    Err(error) => {
                        warn!(%error, "receiving a durable request");
                        continue;
                    }
                };
                let Some(permit) = held.pop() else {
                    // More than asked for: hand it back at once.
                    let _ = message.ack_with(AckKind::Nak(None)).await;
                    continue;
                };
                let worker = worker.clone();
                running.spawn(async move { worker.handle(message, permit).await });
            }
            drop(held);
            while running.try_join_next().is_some() {}
            if *stopped.borrow() {
                break;
            }
        }
        while running.join_next().await.is_some() {}
    }

    /// The shared consumer, created or brought up to date; waits for the stream (the
    /// operator or `cellbus up` creates it) until it exists. `None` when stopped first.
    async fn consumer(
        &self,
        stopped: &mut watch::Receiver<bool>,
    ) -> Option<consumer::Consumer<consumer::pull::Config>> {
        let service = self.cell.service();
        let js = jetstream::new(self.shared.client.clone());
        let max_in_flight = self.cell.max_in_flight();
        let mut warned = false;
        loop {
            let attempt = async {
                let name = subject::stream_name(service).map_err(|e| e.to_string())?;
                let config = cellbus_control::nats::durable::consumer_config(
                    service,
                    &self.verb,
                    max_in_flight,
                )
                .map_err(|e| e.to_string())?;
                let stream = js
                    .get_stream(&name)
                    .await
                    .map_err(|e| format!("stream {name}: {e}"))?;
                stream
                    .create_consumer(config)
                    .await
                    .map_err(|e| format!("consumer on {name}: {e}"))
            };
            match attempt.await {
                Ok(consumer) => {
                    info!("pulling durable requests");
                    return Some(consumer);
                }
                Err(reason) => {
                    if !warned {
                        warn!(%reason, "durable verb not served yet; retrying");
                        warned = true;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(RETRY_AFTER) => {}
                        _ = stopped.changed() => return None,
                    }
                }
            }
        }
    }

    async fn report_pending(&self, consumer: &consumer::Consumer<consumer::pull::Config>) {
        let mut consumer = consumer.clone();
        if let Ok(info) = consumer.info().await {
            let pending = info.num_pending + info.num_ack_pending as u64;
            self.shared
                .metrics
                .durable_pending
                .with_label_values(&[self.cell.service(), &self.verb.name])
                .set(i64::try_from(pending).unwrap_or(i64::MAX));
        }
    }

    /// Runs one delivery of a durable request and settles it with JetStream.
    async fn handle(&self, message: jetstream::Message, permit: OwnedSemaphorePermit) {
        let service = self.cell.service();
        let verb = self.verb.name.as_str();
        let metrics = &self.shared.metrics;
        let delivered = message
            .info()
            .map_or(1, |info| info.delivered.max(1) as u64);
        if delivered > 1 {
            metrics
                .durable_redeliveries
                .with_label_values(&[service, verb])
                .inc();
        }
        let reply_to = message
            .headers
            .as_ref()
            .and_then(|h| h.get(headers::REPLY_TO))
            .map(|value| value.as_str().to_owned());
        let started = Instant::now();

        let work = self.cell.answer(
            permit,
            &self.shared.executor,
            Some(self.shared.client.clone()),
            verb,
            &message.payload,
        );
        tokio::pin!(work);
        let mut progress =
            tokio::time::interval_at(tokio::time::Instant::now() + PROGRESS_EVERY, PROGRESS_EVERY);
        let reply = loop {
            tokio::select! {
                reply = &mut work => break reply,
                _ = progress.tick() => {
                    let _ = message.ack_with(AckKind::Progress).await;
                }
            }
        };

        metrics.answered(service, verb, reply.outcome(), started.elapsed());

        let settled = match &reply {
            Answer::Ok(_) => match self.send_reply(reply_to.as_deref(), &reply).await {
                Ok(()) => message.ack().await,
                Err(()) => {
                    message
                        .ack_with(AckKind::Nak(Some(self.redelivery.delay(delivered))))
                        .await
                }
            },
            Answer::Err(error) if error.error.retryable && !self.redelivery.is_last(delivered) => {
                message
                    .ack_with(AckKind::Nak(Some(self.redelivery.delay(delivered))))
                    .await
            }
            Answer::Err(error) => {
                let letter = DeadLetter {
                    service: service.to_owned(),
                    verb: verb.to_owned(),
                    deliveries: delivered,
                    failed_at: Timestamp::now(),
                    error: error.clone(),
                    request: serde_json::from_slice(&message.payload).unwrap_or_else(|_| {
                        String::from_utf8_lossy(&message.payload)
                            .into_owned()
                            .into()
                    }),
                };
                match self.dead_letter(&letter).await {
                    Ok(()) => {
                        metrics
                            .dead_letters
                            .with_label_values(&[service, verb])
                            .inc();
                        let _ = self.send_reply(reply_to.as_deref(), &reply).await;
                        message.ack_with(AckKind::Term).await
                    }
                    // Not stored as a dead letter: it must not be dropped, so it stays in
                    // the stream for a later delivery to try again.
                    Err(error) => {
                        warn!(error = %cellbus_contracts::error_chain(&error), "storing a dead letter");
                        message
                            .ack_with(AckKind::Nak(Some(self.redelivery.delay(delivered))))
                            .await
                    }
                }
            }
        };
        if let Err(error) = settled {
            // The request is redelivered after the ack wait; the cell may run it again.
            warn!(%error, "settling a durable request with JetStream");
        }
    }

    /// Publishes `reply` to the caller, if it named where.
    async fn send_reply(&self, reply_to: Option<&str>, reply: &Answer) -> Result<(), ()> {
        let Some(reply_to) = reply_to else {
            return Ok(());
        };
        self.shared
            .client
            .publish(reply_to.to_owned(), reply.body())
            .await
            .map_err(|error| warn!(%error, "publishing a durable reply"))
    }

    async fn dead_letter(&self, letter: &DeadLetter) -> Result<(), DeadLetterError> {
        let subject = subject::dead_letter_subject(&letter.service, &letter.verb)?;
        let body = serde_json::to_vec(letter)?;
        jetstream::new(self.shared.client.clone())
            .publish(subject, body.into())
            .await?
            .await?;
        Ok(())
    }
}

/// Why a dead letter was not stored.
#[derive(Debug, thiserror::Error)]
enum DeadLetterError {
    #[error(transparent)]
    Subject(#[from] subject::SubjectError),
    #[error("encoding the dead letter")]
    Encode(#[from] serde_json::Error),
    #[error("publishing the dead letter")]
    Publish(#[from] jetstream::context::PublishError),
}
