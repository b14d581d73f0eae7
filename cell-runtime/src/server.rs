//! Serving one pool: watch its assignment in `cbs-assignments`, load, replace and remove
//! cells live, subscribe each service in its queue group, answer `$ping`, and report what
//! is loaded to `cbs-status`.
//!
//! A replaced cell keeps its subscription; each request takes the cell version current
//! when it arrives and holds it until it has answered, so in-flight requests of an old
//! version finish on that version while new requests reach the new one. A removed
//! service drains its subscription: messages already delivered are answered, then it
//! stops.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use async_nats::Message;
use cellbus_contracts::assignment::{assignment_key, AssignedCell, PoolAssignment};
use cellbus_contracts::resources::Runtime;
use cellbus_contracts::status::{status_key, CellLoadState, LoadState, PingPayload, PodStatus};
use cellbus_contracts::subject::{self, PING_VERB};
use cellbus_contracts::wire::{ErrorBody, Reply, Request};
use cellbus_control::signature::{self, Trust, TrustError};
use futures::StreamExt;
use jiff::Timestamp;
use tokio::sync::{oneshot, Notify};
use tracing::{info, warn, Instrument};

use crate::cell::{Answer, CellCode, LoadedCell};
use crate::durable::DurableWorkers;
use crate::error::{LoadError, RequestError};
use crate::modules;
use crate::process::{self, ProcessCell};
use crate::shared::Shared;
use crate::wasm::WasmCell;

/// How soon a cell that failed to load is tried again.
const RETRY_FAILED_AFTER: Duration = Duration::from_secs(10);
/// How long shutting down waits for requests already running: Kubernetes' default
/// termination grace period, so a pod stops before it is killed.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// How long a subscription may take to drain before it is dropped: draining needs the
/// server, and a runtime whose server has gone must still stop.
const DRAIN_LIMIT: Duration = Duration::from_secs(5);

/// Who this runtime is.
#[derive(Clone, Debug)]
pub struct Identity {
    pub namespace: String,
    pub pool: String,
    pub pod: String,
}

/// A running pool server; dropping it does not stop it, [`PoolServer::shutdown`] does.
#[derive(Clone)]
pub struct PoolServer {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Shared,
    identity: Identity,
    cells: RwLock<HashMap<String, Arc<LoadedCell>>>,
    subscriptions: Mutex<HashMap<String, ServiceSubscription>>,
    /// Workers of the durable verbs, by service.
    durable: tokio::sync::Mutex<HashMap<String, DurableWorkers>>,
    states: Mutex<Vec<CellLoadState>>,
    assignment_loaded: AtomicBool,
    stop: Mutex<Option<oneshot::Sender<()>>>,
    running: Running,
}

/// Requests being answered, so shutting down can wait for them.
#[derive(Default)]
struct Running {
    count: AtomicUsize,
    idle: Notify,
}

/// Counts one request as running until dropped.
struct RunningGuard(Arc<Inner>);

impl RunningGuard {
    fn new(inner: &Arc<Inner>) -> Self {
        inner.running.count.fetch_add(1, Ordering::AcqRel);
        Self(inner.clone())
    }
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        if self.0.running.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.running.idle.notify_waiters();
        }
    }
}

struct ServiceSubscription {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl PoolServer {
    /// Starts serving the pool `identity` names.
    pub fn start(shared: Shared, identity: Identity) -> Self {
        let (stop, stopped) = oneshot::channel();
        let inner = Arc::new(Inner {
            shared,
            identity,
            cells: RwLock::default(),
            subscriptions: Mutex::default(),
            durable: tokio::sync::Mutex::default(),
            states: Mutex::default(),
            assignment_loaded: AtomicBool::new(false),
            stop: Mutex::new(Some(stop)),
            running: Running::default(),
        });
        let span = tracing::info_span!("pool", namespace = %inner.identity.namespace, pool = %inner.identity.pool);
        tokio::spawn(inner.clone().watch(stopped).instrument(span));
        Self { inner }
    }

    /// Whether the pool's assignment has been read and applied at least once.
    pub fn assignment_loaded(&self) -> bool {
        self.inner.assignment_loaded.load(Ordering::Acquire)
    }

    /// What this pod reports about each assigned cell.
    pub fn states(&self) -> Vec<CellLoadState> {
        self.inner.states.lock().expect("state lock").clone()
    }

    /// Services currently served.
    pub fn services(&self) -> Vec<String> {
        let mut services: Vec<String> = self
            .inner
            .cells
            .read()
            .expect("cells lock")
            .keys()
            .cloned()
            .collect();
        services.sort();
        services
    }

    /// Stops watching, drains every service's subscription and waits for the requests
    /// already running to be answered: all of it within [`SHUTDOWN_GRACE`], also when the
    /// server cannot be reached.
    pub async fn shutdown(&self) {
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        if let Some(stop) = self.inner.stop.lock().expect("stop lock").take() {
            let _ = stop.send(());
        }
        let services: Vec<String> = self
            .inner
            .subscriptions
            .lock()
            .expect("subscription lock")
            .keys()
            .cloned()
            .collect();
        futures::future::join_all(services.iter().map(|s| self.inner.unsubscribe(s))).await;
        let durable: Vec<DurableWorkers> = self
            .inner
            .durable
            .lock()
            .await
            .drain()
            .map(|(_, workers)| workers)
            .collect();
        let drained = futures::future::join_all(durable.into_iter().map(DurableWorkers::drain));
        if tokio::time::timeout_at(deadline, drained).await.is_err() {
            warn!("durable requests still running after the shutdown grace period");
        }
        let running = &self.inner.running;
        let idle = async {
            loop {
                let notified = running.idle.notified();
                if running.count.load(Ordering::Acquire) == 0 {
                    return;
                }
                notified.await;
            }
        };
        if tokio::time::timeout_at(deadline, idle).await.is_err() {
            warn!(
                running = running.count.load(Ordering::Acquire),
                "requests still running after the shutdown grace period"
            );
        }
        // Process cells stop with their last reference.
        self.inner.cells.write().expect("cells lock").clear();
        // The pod is gone: its report would only mislead (the operator also drops reports
        // not written again for a while, for pods that could not say goodbye).
        let key = status_key(
            &self.inner.identity.namespace,
            &self.inner.identity.pool,
            &self.inner.identity.pod,
        );
        if let Err(error) = self.inner.shared.buckets.status.delete(&key).await {
            warn!(%error, %key, "removing the pod status");
        }
    }
}

impl Inner {
    fn key(&self) -> String {
        assignment_key(&self.identity.namespace, &self.identity.pool)
    }

    /// Follows the assignment key for ever, re-watching after any interruption (a NATS
    /// restart ends the watch), and retries failed loads now and then.
    async fn watch(self: Arc<Self>, mut stopped: oneshot::Receiver<()>) {
        let key = self.key();
        let mut current: Option<PoolAssignment> = None;
        let watch_again =
            || cellbus_control::backoff::delays(Duration::from_millis(100), Duration::from_secs(5));
        let mut backoff = watch_again();
        loop {
            let mut watch = match self
                .shared
                .buckets
                .assignments
                .watch_with_history(&key)
                .await
            {
                Ok(watch) => watch,
                Err(error) => {
                    warn!(%error, "watching the assignment; retrying");
                    let delay = backoff.next().unwrap_or(Duration::from_secs(5));
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = &mut stopped => return,
                    }
                    continue;
                }
            };
            // An empty key yields no entry; serve nothing until one is written.
            if !self.assignment_loaded.load(Ordering::Acquire) {
                if let Ok(None) = self.shared.buckets.assignments.get(&key).await {
                    self.apply(None).await;
                }
            }
            let mut heartbeat = tokio::time::interval(self.shared.report_every);
            heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            heartbeat.reset();
            loop {
                let retry = tokio::time::sleep(RETRY_FAILED_AFTER);
                tokio::select! {
                    _ = &mut stopped => return,
                    entry = watch.next() => match entry {
                        Some(Ok(entry)) => {
                            backoff = watch_again();
                            current = match entry.operation {
                                kv::Operation::Put => match serde_json::from_slice(&entry.value) {
                                    Ok(assignment) => Some(assignment),
                                    Err(error) => {
                                        warn!(%error, revision = entry.revision, "the assignment is not a pool assignment; keeping the current cells");
                                        continue;
                                    }
                                },
                                kv::Operation::Delete | kv::Operation::Purge => None,
                            };
                            self.apply(current.as_ref()).await;
                        }
                        Some(Err(error)) => {
                            warn!(%error, "assignment watch failed; watching again");
                            break;
                        }
                        None => break,
                    },
                    _ = retry, if self.has_failures() => self.apply(current.as_ref()).await,
                    _ = heartbeat.tick(), if self.assignment_loaded.load(Ordering::Acquire) => {
                        let states = self.states.lock().expect("state lock").clone();
                        self.report(states).await;
                    }
                }
            }
            let delay = backoff.next().unwrap_or(Duration::from_secs(5));
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = &mut stopped => return,
            }
        }
    }

    fn has_failures(&self) -> bool {
        self.states
            .lock()
            .expect("state lock")
            .iter()
            .any(|s| s.state == LoadState::Failed)
    }

    /// Makes the served cells match `assignment`.
    async fn apply(self: &Arc<Self>, assignment: Option<&PoolAssignment>) {
        let assigned: Vec<AssignedCell> = assignment.map(|a| a.cells.clone()).unwrap_or_default();
        let runtime = assignment.map_or(Runtime::Wasm, |a| a.runtime);
        let mut states = Vec::new();
        // Verified again here, whatever the operator found: the assignment's bucket is
        // the pods' only word on what to run, and a loaded cell is dropped the moment its
        // signature stops verifying (a trust rotated away from its key, a certificate
        // that expired).
        let trust = assignment
            .and_then(|a| a.trust.as_ref())
            .map(|spec| Trust::from_spec(spec).map_err(Arc::new));
        let mut wanted = Vec::with_capacity(assigned.len());
        for spec in assigned {
            match verify_signature(trust.as_ref(), &spec) {
                Ok(()) => wanted.push(spec),
                Err(error) => states.push(not_loaded(&spec, &error)),
            }
        }
        for spec in wanted.iter() {
            let current = self.cell(&spec.service);
            if let Some(current) = current.filter(|c| &c.spec == spec) {
                states.push(loaded_state(&current));
                continue;
            }
            match self.load(spec, runtime).await {
                Ok(cell) => {
                    let cell = Arc::new(cell);
                    info!(service = %spec.service, digest = ?spec.module.digest, "cell loaded");
                    states.push(loaded_state(&cell));
                    self.cells
                        .write()
                        .expect("cells lock")
                        .insert(spec.service.clone(), cell.clone());
                    self.subscribe(&spec.service).await;
                    self.restart_durable(&spec.service, Some(cell)).await;
                }
                Err(error) => states.push(not_loaded(spec, &error)),
            }
        }
        let removed: Vec<String> = self
            .cells
            .read()
            .expect("cells lock")
            .keys()
            .filter(|service| !wanted.iter().any(|c| &&c.service == service))
            .cloned()
            .collect();
        for service in removed {
            info!(%service, "cell removed");
            self.unsubscribe(&service).await;
            self.restart_durable(&service, None).await;
            self.cells.write().expect("cells lock").remove(&service);
        }
        *self.states.lock().expect("state lock") = states.clone();
        self.report(states).await;
        self.assignment_loaded.store(true, Ordering::Release);
    }

    /// Drains the durable workers of `service`'s current version, then starts those of
    /// `cell` (none when the service is removed): no request runs on a version that is
    /// gone, and none is acknowledged without being run.
    async fn restart_durable(&self, service: &str, cell: Option<Arc<LoadedCell>>) {
        let mut durable = self.durable.lock().await;
        if let Some(old) = durable.remove(service) {
            old.drain().await;
        }
        if let Some(workers) = cell.and_then(|cell| DurableWorkers::start(&self.shared, cell)) {
            durable.insert(service.to_owned(), workers);
        }
    }

    fn cell(&self, service: &str) -> Option<Arc<LoadedCell>> {
        self.cells.read().expect("cells lock").get(service).cloned()
    }

    /// Fetches, verifies and prepares one cell.
    async fn load(&self, spec: &AssignedCell, runtime: Runtime) -> Result<LoadedCell, LoadError> {
        let code = match runtime {
            Runtime::Wasm => CellCode::Wasm(self.load_wasm(spec).await?),
            Runtime::Process => CellCode::Process(self.load_process(spec).await?),
            #[cfg(feature = "python")]
            Runtime::Python => {
                let (digest, bytes) = self.fetch(spec).await?;
                let service = spec.service.clone();
                let code = tokio::task::spawn_blocking(move || {
                    crate::python::PythonCell::load(&service, &digest, &bytes)
                })
                .await
                .map_err(LoadError::PythonTask)??;
                CellCode::Python(Arc::new(code))
            }
            #[cfg(not(feature = "python"))]
            Runtime::Python => return Err(LoadError::PythonNotBuilt),
        };
        Ok(LoadedCell::new(spec.clone(), code, self.bus_max_payload())?)
    }

    /// The largest message the server takes, as it said when the runtime connected.
    fn bus_max_payload(&self) -> usize {
        match self.shared.client.server_info().max_payload {
            0 => crate::DEFAULT_MAX_PAYLOAD,
            bytes => bytes,
        }
    }

    /// The module's bytes, checked against its digest, and the digest.
    async fn fetch(&self, spec: &AssignedCell) -> Result<(String, Vec<u8>), LoadError> {
        Ok(modules::fetch(&self.shared, &spec.module).await?)
    }

    async fn load_wasm(&self, spec: &AssignedCell) -> Result<WasmCell, LoadError> {
        let (digest, bytes) = self.fetch(spec).await?;
        let executor = &self.shared.executor;
        let compiler = executor.clone();
        let compiled = tokio::task::spawn_blocking(move || compiler.component(&digest, &bytes))
            .await
            .map_err(LoadError::CompileTask)??;
        let database = spec.database.as_ref().map(|database| {
            self.shared
                .databases
                .pool(&self.identity.namespace, database)
        });
        Ok(executor.prepare(spec, &compiled.0, database)?)
    }

    async fn load_process(&self, spec: &AssignedCell) -> Result<ProcessCell, LoadError> {
        let processes = &self.shared.processes;
        let (command, executable) = match &spec.module.command {
            Some(command) => (command.clone(), None),
            // An executable from cbs-modules (or its URL), run only once its bytes match
            // the digest, and checked again before every start.
            None => {
                let (digest, bytes) = self.fetch(spec).await?;
                let executable =
                    process::Executable::install(&processes.files()?.executables, &digest, &bytes)
                        .map_err(LoadError::StoreExecutable)?;
                (
                    vec![executable.path.display().to_string()],
                    Some(executable),
                )
            }
        };
        let reply_limit = crate::cell::reply_limit(spec, self.bus_max_payload()).bytes;
        Ok(ProcessCell::new(
            spec,
            command,
            executable,
            reply_limit,
            processes,
            self.shared.metrics.clone(),
        )?)
    }

    async fn report(&self, cells: Vec<CellLoadState>) {
        let status = PodStatus {
            namespace: self.identity.namespace.clone(),
            pool: self.identity.pool.clone(),
            pod: self.identity.pod.clone(),
            updated_at: Timestamp::now(),
            cells,
            sandbox: cfg!(target_os = "linux").then(process::sandbox::report),
        };
        let key = status_key(
            &self.identity.namespace,
            &self.identity.pool,
            &self.identity.pod,
        );
        let body = match serde_json::to_vec(&status) {
            Ok(body) => body,
            Err(error) => return warn!(%error, "encoding the pod status"),
        };
        if let Err(error) = self.shared.buckets.status.put(&key, body.into()).await {
            warn!(%error, %key, "reporting the pod status");
        }
    }

    /// Subscribes a service's verbs (queue group) and its `$ping` (every pod answers).
    async fn subscribe(self: &Arc<Self>, service: &str) {
        if self
            .subscriptions
            .lock()
            .expect("subscription lock")
            .contains_key(service)
        {
            return;
        }
        let client = &self.shared.client;
        let control = &self.shared.control;
        let (Ok(verbs), Ok(group), Ok(ping)) = (
            subject::service_wildcard(service),
            subject::queue_group(service),
            subject::ping_subject(service),
        ) else {
            return warn!(%service, "service name cannot be subscribed");
        };
        let requests = client.queue_subscribe(verbs, group).await;
        let pings = control.subscribe(ping).await;
        let (mut requests, mut pings) = match (requests, pings) {
            (Ok(r), Ok(p)) => (r, p),
            (Err(error), _) | (_, Err(error)) => {
                return warn!(%error, %service, "subscribing");
            }
        };
        let (stop, mut stopped) = oneshot::channel::<()>();
        let inner = self.clone();
        let span = tracing::info_span!("service", %service);
        let task = tokio::spawn(
            async move {
                let mut draining = false;
                loop {
                    tokio::select! {
                        message = requests.next() => match message {
                            Some(message) => {
                                // What needs no cell work (no reply subject, a durable
                                // subject, no such verb, too large, no free permit) is
                                // answered here, before the next message is taken: a
                                // flood past the cell's limit costs a scan of each
                                // request, holds nothing and spawns nothing.
                                if let Some(admitted) = inner.admit(message).await {
                                    let running = RunningGuard::new(&inner);
                                    let inner = inner.clone();
                                    tokio::spawn(async move {
                                        inner.handle(admitted).await;
                                        drop(running);
                                    });
                                }
                            }
                            None => break,
                        },
                        message = pings.next(), if !draining => {
                            if let Some(message) = message {
                                inner.pong(message).await;
                            }
                        }
                        _ = &mut stopped, if !draining => {
                            draining = true;
                            // Messages already delivered are still answered; the stream ends
                            // once they are.
                            let _ = requests.drain().await;
                            let _ = pings.unsubscribe().await;
                        }
                    }
                }
            }
            .instrument(span),
        );
        self.subscriptions
            .lock()
            .expect("subscription lock")
            .insert(service.to_owned(), ServiceSubscription { stop, task });
    }

    async fn unsubscribe(&self, service: &str) {
        let subscription = self
            .subscriptions
            .lock()
            .expect("subscription lock")
            .remove(service);
        if let Some(mut subscription) = subscription {
            let _ = subscription.stop.send(());
            if tokio::time::timeout(DRAIN_LIMIT, &mut subscription.task)
                .await
                .is_err()
            {
                // Requests already taken keep running on their own tasks; only the
                // reading of new ones stops.
                warn!(%service, "the subscription did not drain in time (is NATS reachable?); dropping it");
                subscription.task.abort();
            }
        }
    }

    /// Takes one message on `cbs.{service}.{verb}` for the version of the service current
    /// now, with one of its in-flight permits; or answers it at once with why not.
    async fn admit(&self, message: Message) -> Option<Admitted> {
        let metrics = &self.shared.metrics;
        let Some(reply_to) = message.reply.clone() else {
            metrics
                .dropped
                .with_label_values(&["no_reply_subject"])
                .inc();
            return None;
        };
        let Some((service, verb)) = parse_subject(&message.subject) else {
            metrics.dropped.with_label_values(&["bad_subject"]).inc();
            return None;
        };
        if verb == PING_VERB {
            return None;
        }
        let started = Instant::now();
        let cell = self.cell(service);
        if cell.as_ref().is_some_and(|c| c.is_durable(verb)) {
            // The stream owns this subject; a core reply would race its acknowledgement.
            return None;
        }
        let refusal = match cell {
            _ if message.payload.len() > self.shared.max_payload => RequestError::RequestTooLarge {
                size: message.payload.len(),
                limit: self.shared.max_payload,
            },
            None => RequestError::NotLoaded {
                service: service.to_owned(),
            },
            Some(cell) => match cell.admit(verb) {
                Ok(permit) => {
                    return Some(Admitted {
                        message,
                        reply_to,
                        cell,
                        permit,
                        started,
                    })
                }
                Err(refusal) => refusal,
            },
        };
        let answer = Answer::refusal(&message.payload, &refusal);
        self.send(reply_to, service, verb, &answer, started).await;
        None
    }

    /// Answers an admitted message with the cell version it was admitted to.
    async fn handle(&self, admitted: Admitted) {
        let Admitted {
            message,
            reply_to,
            cell,
            permit,
            started,
        } = admitted;
        let Some((service, verb)) = parse_subject(&message.subject) else {
            return;
        };
        let metrics = &self.shared.metrics;
        let series = cell.verb_metrics(metrics, verb);
        if let Some(series) = series {
            series.in_flight().inc();
        }
        // Boxed: running a cell takes a future of kilobytes, which would otherwise be
        // copied into the task spawned for each request and moved on the way there.
        let answer = Box::pin(cell.answer(
            permit,
            &self.shared.executor,
            Some(self.shared.client.clone()),
            verb,
            &message.payload,
        ))
        .await;
        match series {
            Some(series) => {
                series.in_flight().dec();
                self.publish(reply_to, &answer).await;
                series.answered(metrics, answer.outcome(), started.elapsed());
            }
            // `admit` found the verb in this cell; total rather than a panic all the same.
            None => self.send(reply_to, service, verb, &answer, started).await,
        }
    }

    async fn publish(&self, reply_to: async_nats::Subject, answer: &Answer) {
        if let Err(error) = self.shared.client.publish(reply_to, answer.body()).await {
            warn!(%error, "publishing a reply");
        }
    }

    async fn send(
        &self,
        reply_to: async_nats::Subject,
        service: &str,
        verb: &str,
        answer: &Answer,
        started: Instant,
    ) {
        self.publish(reply_to, answer).await;
        self.shared
            .metrics
            .answered(service, verb, answer.outcome(), started.elapsed());
    }

    /// Answers `$ping` with the pod, the digest and when the cell was loaded.
    async fn pong(&self, message: Message) {
        let Some(reply_to) = message.reply.clone() else {
            return;
        };
        let Some((service, _)) = parse_subject(&message.subject) else {
            return;
        };
        let reply = match (
            Request::parse(&message.payload, service, PING_VERB),
            self.cell(service),
        ) {
            (Err(error), _) => Reply::error_for_raw(&message.payload, error),
            (Ok(request), None) => Reply::error(
                &request,
                ErrorBody::from(&RequestError::NotLoaded {
                    service: service.to_owned(),
                }),
            ),
            (Ok(request), Some(cell)) => Reply::ok(
                &request,
                serde_json::to_value(PingPayload {
                    pod: self.identity.pod.clone(),
                    service: service.to_owned(),
                    digest: cell.digest().map(str::to_owned),
                    loaded_at: cell.loaded_at,
                })
                .unwrap_or_default(),
            ),
        };
        if let Ok(body) = serde_json::to_vec(&reply) {
            let _ = self.shared.control.publish(reply_to, body.into()).await;
        }
    }
}

/// A request taken for a cell, holding one of its in-flight permits.
struct Admitted {
    message: Message,
    reply_to: async_nats::Subject,
    cell: Arc<LoadedCell>,
    permit: tokio::sync::OwnedSemaphorePermit,
    started: Instant,
}

fn parse_subject(subject: &str) -> Option<(&str, &str)> {
    let rest = subject.strip_prefix(subject::PREFIX)?.strip_prefix('.')?;
    rest.split_once('.')
}

/// Whether the pool's `trust` (absent: signatures are not checked) vouches for `spec`'s
/// module.
fn verify_signature(
    trust: Option<&Result<Trust, Arc<TrustError>>>,
    spec: &AssignedCell,
) -> Result<(), LoadError> {
    let trust = match trust {
        None => return Ok(()),
        Some(Ok(trust)) => trust,
        Some(Err(error)) => return Err(LoadError::Trust(error.clone())),
    };
    let signer = signature::verify_module(
        spec.signature.as_ref(),
        spec.module.digest.as_deref(),
        &spec.service,
        trust,
        std::time::SystemTime::now(),
    )
    .map_err(LoadError::Signature)?;
    info!(service = %spec.service, %signer, "signature verified");
    Ok(())
}

/// The state of a cell that did not load, logged with why.
fn not_loaded(spec: &AssignedCell, error: &LoadError) -> CellLoadState {
    let reason = cellbus_contracts::error_chain(error);
    warn!(service = %spec.service, digest = ?spec.module.digest, %reason, "cell not loaded");
    CellLoadState {
        name: spec.name.clone(),
        service: spec.service.clone(),
        digest: spec.module.digest.clone(),
        state: LoadState::Failed,
        loaded_at: None,
        reason: Some(reason),
    }
}

fn loaded_state(cell: &LoadedCell) -> CellLoadState {
    CellLoadState {
        name: cell.spec.name.clone(),
        service: cell.spec.service.clone(),
        digest: cell.spec.module.digest.clone(),
        state: LoadState::Loaded,
        loaded_at: Some(cell.loaded_at),
        reason: None,
    }
}
