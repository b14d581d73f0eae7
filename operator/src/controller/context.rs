//! What every reconcile shares: the API client, the index of what the watches show, the NATS connections,
//! the event recorder, metrics, the clock and the per-object backoff.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use cellbus_contracts::status::{status_key, PodStatus, REPORT_STALE_AFTER};
use cellbus_control::{Buckets, NatsArgs, NatsCredentials};
use futures::StreamExt;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::Client;

use crate::controller::assignments::Assignments;
use crate::controller::database::Databases;
use crate::metrics::Metrics;
use crate::state::backoff::{Attempts, Backoff};
use crate::state::conditions::{Clock, SystemClock};
use crate::state::index::{key_of, Index};
use crate::state::names::FIELD_MANAGER;
use crate::state::observed::{CellObject, ObservedCell};
use crate::state::scheduling::{ResolvedTrust, Snapshot};
use crate::{Config, Error};

/// How long the operator waits for things and how it spaces retries.
#[derive(Clone, Debug)]
pub struct Timing {
    /// How long a Ready check waits for `$ping` replies.
    pub ping_wait: Duration,
    /// Retries after a failed reconcile or a spec that cannot be served.
    pub error_backoff: Backoff,
    /// Re-checks of a Cell that is not Ready yet.
    pub ready_backoff: Backoff,
    /// Re-check of a healthy object, in case something outside the watches changed.
    pub resync: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            ping_wait: Duration::from_secs(1),
            error_backoff: Backoff {
                base: Duration::from_secs(5),
                cap: Duration::from_secs(300),
            },
            ready_backoff: Backoff {
                base: Duration::from_secs(2),
                cap: Duration::from_secs(60),
            },
            resync: Duration::from_secs(300),
        }
    }
}

/// One NATS the pools use, connected, with its buckets open.
pub struct Bus {
    pub url: String,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub buckets: Buckets,
    /// The pods' load reports, kept current by one watch of `cbs-status`: a Ready check
    /// reads them here instead of opening a consumer per check. Each with when it last
    /// arrived: by the operator's own monotonic clock, so neither the pods' clocks nor
    /// their skew matter.
    reports: Reports,
    /// A report that has not arrived again for this long is of a pod that is gone.
    stale_after: Duration,
    watch: tokio::task::JoinHandle<()>,
}

type Reports = Arc<RwLock<HashMap<String, (PodStatus, Instant)>>>;

impl Bus {
    /// The latest load reports of the live pods of pool `namespace/pool`.
    pub fn pod_statuses(&self, namespace: &str, pool: &str) -> Vec<PodStatus> {
        let prefix = status_key(namespace, pool, "");
        self.reports
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(key, (_, arrived))| {
                key.starts_with(&prefix) && arrived.elapsed() <= self.stale_after
            })
            .map(|(_, (report, _))| report.clone())
            .collect()
    }

    /// Deletes the reports of pool `namespace/pool` that stopped arriving (their pods
    /// are gone), so that no one reads an old error as a current one.
    pub async fn forget_gone_pods(&self, namespace: &str, pool: &str) -> Result<(), Error> {
        let prefix = status_key(namespace, pool, "");
        let stale: Vec<String> = self
            .reports
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(key, (_, arrived))| {
                key.starts_with(&prefix) && arrived.elapsed() > self.stale_after
            })
            .map(|(key, _)| key.clone())
            .collect();
        for key in stale {
            tracing::info!(%key, "deleting the report of a pod that stopped reporting");
            self.buckets.status.delete(&key).await.map_err(|source| {
                Error::Nats(cellbus_control::Error::DeleteReport {
                    key: key.clone(),
                    source: source.into(),
                })
            })?;
            self.reports
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&key);
        }
        Ok(())
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        self.watch.abort();
    }
}

/// Follows `cbs-status` into `reports` for ever, watching again after any interruption.
async fn follow_reports(status: kv::Store, reports: Reports) {
    loop {
        // A watch with history starts from the latest value of every key.
        match status.watch_with_history(">").await {
            Ok(mut entries) => {
                reports.write().unwrap_or_else(|e| e.into_inner()).clear();
                while let Some(Ok(entry)) = entries.next().await {
                    let mut reports = reports.write().unwrap_or_else(|e| e.into_inner());
                    match entry.operation {
                        kv::Operation::Put => {
                            if let Ok(report) = serde_json::from_slice(&entry.value) {
                                reports.insert(entry.key, (report, Instant::now()));
                            }
                        }
                        kv::Operation::Delete | kv::Operation::Purge => {
                            reports.remove(&entry.key);
                        }
                    }
                }
                tracing::warn!("the watch of cbs-status ended; watching again");
            }
            Err(error) => tracing::warn!(%error, "could not watch cbs-status; retrying"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Connections to every NATS the pools name, made on first use with the operator's
/// credentials.
pub struct Buses {
    credentials: NatsCredentials,
    /// How the operator itself reaches a URL, when not by that URL (an operator outside
    /// the cluster reaching the pods' NATS through a port-forward).
    routes: HashMap<String, String>,
    connected: tokio::sync::Mutex<HashMap<String, Arc<Bus>>>,
    /// When a pod's report counts as gone; [`REPORT_STALE_AFTER`] unless a test says.
    stale_after: Duration,
    /// Copies of each bucket on a clustered NATS.
    replicas: u8,
}

impl Buses {
    pub fn new(credentials: NatsCredentials, routes: HashMap<String, String>) -> Self {
        Self {
            credentials,
            routes,
            connected: tokio::sync::Mutex::default(),
            stale_after: REPORT_STALE_AFTER,
            replicas: 1,
        }
    }

    /// The same, keeping `replicas` copies of each bucket.
    pub fn with_replicas(mut self, replicas: u8) -> Self {
        self.replicas = replicas;
        self
    }

    /// The same, taking a report not renewed for `stale_after` for a gone pod's.
    pub fn with_stale_after(mut self, stale_after: Duration) -> Self {
        self.stale_after = stale_after;
        self
    }

    /// The NATS at `url`, connecting and creating the buckets the first time.
    pub async fn get(&self, url: &str) -> Result<Arc<Bus>, Error> {
        let mut connected = self.connected.lock().await;
        if let Some(bus) = connected.get(url) {
            return Ok(bus.clone());
        }
        let args = NatsArgs {
            url: self
                .routes
                .get(url)
                .cloned()
                .unwrap_or_else(|| url.to_owned()),
            credentials: self.credentials.clone(),
        };
        let client = cellbus_control::connect(&args, "cellbus-operator").await?;
        let js = jetstream::new(client.clone());
        let buckets =
            cellbus_control::ensure_buckets_replicated(&js, usize::from(self.replicas)).await?;
        cellbus_control::nats::durable::ensure_dead_letter_stream(&js).await?;
        let reports = Arc::default();
        let watch = tokio::spawn(follow_reports(buckets.status.clone(), Arc::clone(&reports)));
        let bus = Arc::new(Bus {
            url: url.to_owned(),
            client,
            js,
            buckets,
            reports,
            stale_after: self.stale_after,
            watch,
        });
        connected.insert(url.to_owned(), bus.clone());
        Ok(bus)
    }
}

/// Shared by every reconcile of both controllers.
pub struct Context {
    pub client: Client,
    pub config: Config,
    pub buses: Buses,
    /// What the watches show, indexed; fed by the watch streams (see `run`).
    pub index: Arc<RwLock<Index>>,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub clock: Arc<dyn Clock>,
    pub timing: Timing,
    /// The admin database Cells' roles are made in.
    pub databases: Databases,
    /// Failures in a row per object, for the error backoff.
    pub failures: Attempts,
    /// Not-Ready checks in a row per Cell, for the readiness backoff.
    pub waits: Attempts,
    /// Writes the pools' assignments, one writer per pool.
    pub assignments: Assignments,
}

impl Context {
    pub fn new(
        client: Client,
        config: Config,
        buses: Buses,
        index: Arc<RwLock<Index>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let timing = Timing::default();
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            config,
            buses,
            index,
            metrics,
            clock: Arc::new(SystemClock),
            failures: Attempts::new(timing.error_backoff),
            waits: Attempts::new(timing.ready_backoff),
            timing,
            databases: Databases::none(),
            assignments: Assignments::default(),
        }
    }

    /// The same context with other timings (tests wait less).
    pub fn with_timing(mut self, timing: Timing) -> Self {
        self.failures = Attempts::new(timing.error_backoff);
        self.waits = Attempts::new(timing.ready_backoff);
        self.timing = timing;
        self
    }

    /// The same context provisioning Cells' databases through `databases`.
    pub fn with_databases(mut self, databases: Databases) -> Self {
        self.databases = databases;
        self
    }

    /// The same context with another clock.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// What the watches show now, for one reconcile to read between two awaits.
    pub fn snapshot(&self) -> Snapshot<'_> {
        Snapshot::new(
            self.index.read().unwrap_or_else(|e| e.into_inner()),
            self.clock.now().0.into(),
        )
    }

    /// `object` judged: the index's judgement when it holds this very version (the watch
    /// that delivered the object judged it a moment ago), else judged now.
    pub fn observed_cell(&self, object: &CellObject) -> Arc<ObservedCell> {
        let key = key_of(object);
        let version = object.metadata.resource_version.as_ref();
        let indexed = self
            .index
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .cell(&key)
            .filter(|cell| version.is_some() && cell.meta.resource_version.as_ref() == version)
            .cloned();
        indexed.unwrap_or_else(|| Arc::new(ObservedCell::from_object(object)))
    }

    /// Records the trust a pool's sources were read into (`None`: they could not be),
    /// and whether that changed anything.
    pub fn set_trust(&self, pool: &str, trust: Option<ResolvedTrust>) -> bool {
        self.index
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .set_trust(pool, trust)
    }

    /// Drops what the context remembers of a Cell that is gone.
    pub fn forget(&self, key: &str) {
        self.failures.succeeded(key);
        self.waits.succeeded(key);
    }

    /// Counts one write to the Kubernetes API.
    pub fn wrote(&self, kind: &str, verb: &str) {
        self.metrics.write(kind, verb);
    }

    /// Publishes an Event about `object`; a failure is logged, never fatal: Events are
    /// for people, the conditions carry the state.
    pub async fn publish(&self, object: &ObjectReference, event: Event) {
        let reason = event.reason.clone();
        match self.recorder.publish(&event, object).await {
            Ok(()) => self.wrote("Event", "publish"),
            Err(error) => tracing::warn!(%error, reason, "could not publish an Event"),
        }
    }
}

/// An Event for a condition that just changed: Warning when it went bad.
pub fn transition_event(type_: &str, healthy: bool, reason: &str, message: &str) -> Event {
    Event {
        type_: if healthy {
            EventType::Normal
        } else {
            EventType::Warning
        },
        reason: reason.to_owned(),
        note: Some(truncate(message, 1024)),
        action: type_.to_owned(),
        secondary: None,
    }
}

/// At most `limit` bytes of `text`, cut at a character boundary.
fn truncate(text: &str, limit: usize) -> String {
    if text.len() <= limit {
        return text.to_owned();
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}
