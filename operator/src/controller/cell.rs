//! The Cell controller: place the Cell in a pool, check its module, reconcile the stream
//! of its durable verbs, write its pool's assignment, and call it Ready only when a pod
//! answers its `$ping` with the Cell's digest. The finalizer takes it out of the
//! assignment and deletes its stream (unless `Retain`) before Kubernetes forgets it.

use std::sync::Arc;
use std::time::Duration;

use std::collections::HashMap;

use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::ErrorCode;
use cellbus_contracts::durable::DEAD_LETTER_STREAM;
use cellbus_contracts::resources::{
    CellSpec, CellStatus, DeletionPolicy, Delivery, DurableVerbStatus,
};
use cellbus_contracts::status::PingPayload;
use futures::StreamExt;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{self, finalizer, Event as FinalizerEvent};
use tracing::Instrument;

use super::write_status;
use crate::builders;
use crate::controller::context::{Bus, Context};
use crate::state::conditions::{reasons, set_conditions, types, NewCondition, Status};
use crate::state::observed::{CellObject, ObservedCell, ObservedPool};
use crate::state::readiness::cell_ready;
use crate::state::scheduling::NotPlaced;
use crate::Error;

/// The finalizer that holds a Cell until its NATS side is cleaned up.
pub const FINALIZER: &str = "cellbus.io/cleanup";

/// How metrics and logs name this controller.
pub const CONTROLLER: super::ControllerName = "cell";

/// Reconciles one Cell.
pub async fn reconcile(object: Arc<CellObject>, ctx: Arc<Context>) -> Result<Action, Error> {
    let cell = ctx.observed_cell(&object);
    let span = tracing::info_span!(
        "reconcile",
        controller = CONTROLLER,
        object = %cell.key(),
        generation = cell.generation()
    );
    async {
        let measure = ctx.metrics.reconcile(CONTROLLER);
        let result = reconcile_cell(&object, cell, &ctx).await;
        measure.finish(result.as_ref().map(|_| ()).map_err(Error::metric_label));
        result
    }
    .instrument(span)
    .await
}

async fn reconcile_cell(
    object: &CellObject,
    cell: Arc<ObservedCell>,
    ctx: &Context,
) -> Result<Action, Error> {
    let key = cell.key();
    let has_finalizer = cell.has_finalizer(FINALIZER);
    if cell.is_deleting() && !has_finalizer {
        ctx.forget(&key);
        return Ok(Action::await_change());
    }
    // kube's finalizer helper: added (and nothing else this pass) before the Cell is
    // applied, cleanup run and the finalizer removed once it is being deleted.
    let api: Api<CellObject> = Api::namespaced(ctx.client.clone(), cell.namespace());
    let outcome = finalizer(&api, FINALIZER, Arc::new(object.clone()), |event| async {
        match event {
            FinalizerEvent::Apply(object) => {
                let action = apply(&object, cell.clone(), ctx).await?;
                ctx.failures.succeeded(&key);
                Ok(action)
            }
            FinalizerEvent::Cleanup(_) => {
                cleanup(&cell, ctx).await?;
                ctx.forget(&key);
                tracing::info!("cleaned up; releasing");
                Ok(Action::await_change())
            }
        }
    })
    .await;
    if outcome.is_ok() && (!has_finalizer || cell.is_deleting()) {
        ctx.wrote("Cell", "patch");
    }
    outcome.map_err(|error| match error {
        finalizer::Error::ApplyFailed(error) | finalizer::Error::CleanupFailed(error) => error,
        finalizer::Error::AddFinalizer(source) => Error::Kube {
            action: "add the finalizer to",
            object: format!("Cell {key}"),
            source,
        },
        finalizer::Error::RemoveFinalizer(source) => Error::Kube {
            action: "remove the finalizer from",
            object: format!("Cell {key}"),
            source,
        },
        finalizer::Error::UnnamedObject | finalizer::Error::InvalidFinalizer => {
            Error::InvalidSpec {
                object: format!("Cell {key}"),
                message: error.to_string(),
            }
        }
    })
}

/// What one look at a placed Cell found.
struct Observation {
    conditions: Vec<NewCondition>,
    stream: Option<String>,
    durable: Vec<DurableVerbStatus>,
    database_secret: Option<String>,
    ready: bool,
    /// A failure to report in the conditions and then retry with backoff.
    retry: Option<Error>,
    /// When the database password's next scheduled rotation is due.
    rotate_in: Option<Duration>,
}

async fn apply(
    object: &CellObject,
    cell: Arc<ObservedCell>,
    ctx: &Context,
) -> Result<Action, Error> {
    // One look at the index, which is not held across an await.
    let (placed, previous, schema_conflict, signer) = {
        let snapshot = ctx.snapshot();
        let placed = snapshot.placement(&cell, &ctx.config).cloned();
        // A Cell that moved or can no longer run leaves its old pool's assignment.
        let previous = cell
            .status
            .pool
            .as_deref()
            .filter(|previous| {
                placed
                    .as_ref()
                    .map_or(true, |pool| pool.name() != *previous)
            })
            .and_then(|previous| snapshot.pool(cell.namespace(), previous).cloned());
        let (schema_conflict, signer) = match (&placed, &cell.spec) {
            (Ok(pool), Ok(spec)) => (
                snapshot.schema_conflict(&cell, &ctx.config),
                snapshot.signer(spec, pool),
            ),
            _ => (None, None),
        };
        (placed, previous, schema_conflict, signer)
    };
    if let Some(previous) = previous {
        ctx.assignments.write(ctx, &previous).await?;
    }

    let pool = match placed {
        Ok(pool) => pool,
        Err(not_placed) => {
            let mut conditions = vec![
                NewCondition::new(
                    types::SCHEDULED,
                    Status::False,
                    not_placed.reason,
                    &not_placed.message,
                ),
                NewCondition::new(
                    types::READY,
                    Status::False,
                    not_placed.reason,
                    &not_placed.message,
                ),
            ];
            if not_placed.unverified {
                conditions.push(NewCondition::new(
                    types::MODULE_VERIFIED,
                    Status::False,
                    not_placed.reason,
                    &not_placed.message,
                ));
            }
            let status = CellStatus {
                pool: None,
                subjects: Vec::new(),
                stream: None,
                ..next_status(&cell, conditions, ctx)
            };
            update_status(object, &cell, &status, ctx).await?;
            let NotPlaced {
                reason, message, ..
            } = not_placed;
            return Err(Error::NotPlaced {
                cell: cell.key(),
                reason,
                message,
            });
        }
    };
    let spec = cell.spec.as_ref().expect("a placed Cell has a valid spec");
    let pool_spec = pool.spec.as_ref().expect("a placed Cell's pool is valid");
    let scheduled = NewCondition::new(
        types::SCHEDULED,
        Status::True,
        reasons::SCHEDULED,
        format!("in CellPool {}", pool.name()),
    );
    let subjects = builders::request_subjects(spec)?;

    let observed = match ctx.buses.get(ctx.config.bus(pool_spec)).await {
        Ok(bus) => observe(&cell, spec, &pool, &bus, schema_conflict, signer, ctx).await,
        Err(error) => Err(error),
    };
    let observation = match observed {
        Ok(observation) => observation,
        Err(error) => {
            // Say so on the Cell, then let the error policy retry.
            let message = cellbus_contracts::error_chain(&error);
            let conditions = [
                scheduled,
                NewCondition::new(
                    types::READY,
                    Status::Unknown,
                    reasons::NATS_UNAVAILABLE,
                    message,
                ),
            ];
            let status = CellStatus {
                pool: Some(pool.name().to_owned()),
                subjects,
                ..next_status(&cell, conditions, ctx)
            };
            update_status(object, &cell, &status, ctx).await?;
            return Err(error);
        }
    };

    let conditions = std::iter::once(scheduled).chain(observation.conditions);
    let status = CellStatus {
        pool: Some(pool.name().to_owned()),
        subjects,
        stream: observation.stream,
        durable: observation.durable,
        database_secret: observation.database_secret,
        ..next_status(&cell, conditions, ctx)
    };
    update_status(object, &cell, &status, ctx).await?;
    if let Some(error) = observation.retry {
        return Err(error);
    }
    if observation.ready {
        ctx.waits.succeeded(&cell.key());
        // Back when the next rotation is due, if that comes before the resync.
        let next = observation
            .rotate_in
            .map_or(ctx.timing.resync, |due| due.min(ctx.timing.resync));
        Ok(Action::requeue(next))
    } else {
        Ok(Action::requeue(ctx.waits.failed(&cell.key())))
    }
}

/// The NATS side of a placed Cell: module, stream, assignment, then the `$ping` check; and
/// its database unless `schema_conflict` says an older Cell has the schema.
async fn observe(
    cell: &Arc<ObservedCell>,
    spec: &CellSpec,
    pool: &ObservedPool,
    bus: &Bus,
    schema_conflict: Option<NotPlaced>,
    signer: Option<cellbus_control::signature::Signer>,
    ctx: &Context,
) -> Result<Observation, Error> {
    let mut module = module_condition(spec, bus).await?;
    if let Some(signer) = signer {
        if module.status == Status::True {
            module.reason = reasons::SIGNED;
        }
        module.message = format!("signed by {signer}; {}", module.message);
    }
    let mut rotate_in = None;
    let (database, database_secret, retry) = match (&spec.database, &schema_conflict) {
        (None, _) => (None, None, None),
        // Neither role nor grant: the schema and its rows are the holder's.
        (Some(_), Some(conflict)) => (
            Some(NewCondition::new(
                types::DATABASE_READY,
                Status::False,
                conflict.reason,
                &conflict.message,
            )),
            None,
            None,
        ),
        (Some(wanted), None) => {
            match crate::controller::database::reconcile(ctx, cell, spec, wanted).await {
                Ok(reconciled) => {
                    let condition = reconciled.condition;
                    rotate_in = reconciled.rotate_in;
                    let secret = (condition.status == Status::True)
                        .then(|| crate::controller::database::secret_name(cell.name()));
                    (Some(condition), secret, None)
                }
                Err(error) => (
                    Some(NewCondition::new(
                        types::DATABASE_READY,
                        Status::False,
                        reasons::DATABASE_UNAVAILABLE,
                        cellbus_contracts::error_chain(&error),
                    )),
                    cell.status.database_secret.clone(),
                    Some(error),
                ),
            }
        }
    };

    let (stream_condition, stream) = match builders::stream_config(spec, ctx.config.replicas)? {
        None => (
            NewCondition::new(
                types::STREAM_READY,
                Status::True,
                reasons::NO_DURABLE_VERBS,
                "no durable verbs, so no stream",
            ),
            None,
        ),
        Some(plan) => match cellbus_control::ensure_stream(&bus.js, &plan).await {
            Ok(_) => (
                NewCondition::new(
                    types::STREAM_READY,
                    Status::True,
                    reasons::STREAM_READY,
                    format!("stream {} matches the spec", plan.name),
                ),
                Some(plan.name),
            ),
            Err(error) => (
                NewCondition::new(
                    types::STREAM_READY,
                    Status::False,
                    reasons::STREAM_FAILED,
                    cellbus_contracts::error_chain(&error),
                ),
                Some(plan.name),
            ),
        },
    };

    ctx.assignments.write(ctx, pool).await?;
    let durable = match &stream {
        Some(stream) => backlog(bus, stream, spec).await?,
        None => Vec::new(),
    };

    let digest = spec.module.digest.as_deref();
    let expected = |pong: &PingPayload| pong.digest.as_deref() == digest;
    let pongs =
        cellbus_control::ping_until(&bus.client, &spec.service, ctx.timing.ping_wait, expected)
            .await?;
    let statuses = if pongs.iter().any(expected) {
        Vec::new()
    } else {
        bus.pod_statuses(cell.namespace(), pool.name())
    };
    let mut ready = cell_ready(cell.name(), &spec.service, digest, &pongs, &statuses);
    // A missing module explains a pod that cannot load it better than waiting does.
    if ready.status != Status::True && module.status == Status::False {
        ready = NewCondition::new(types::READY, Status::False, module.reason, &module.message);
    }
    // A cell declared with a database does not do its work without it.
    if let Some(conflict) = &schema_conflict {
        ready = NewCondition::new(
            types::READY,
            Status::False,
            conflict.reason,
            &conflict.message,
        );
    }
    let is_ready = ready.status == Status::True;
    let mut conditions = vec![module, stream_condition];
    conditions.extend(database);
    conditions.push(ready);
    Ok(Observation {
        conditions,
        stream,
        durable,
        database_secret,
        ready: is_ready,
        retry,
        rotate_in,
    })
}

/// Requests waiting in `stream` and dead letters, per durable verb of `spec`.
async fn backlog(
    bus: &Bus,
    stream: &str,
    spec: &CellSpec,
) -> Result<Vec<DurableVerbStatus>, Error> {
    let counts = |stream: String, filter: String| async move {
        let error = |source: Box<dyn std::error::Error + Send + Sync>| {
            Error::Nats(cellbus_control::Error::Stream {
                name: stream.clone(),
                source,
            })
        };
        let handle = match bus.js.get_stream(&stream).await {
            Ok(handle) => handle,
            // Not created yet (or already gone): nothing is waiting in it.
            Err(e)
                if matches!(
                    e.kind(),
                    GetStreamErrorKind::JetStream(j) if j.error_code() == ErrorCode::STREAM_NOT_FOUND
                ) =>
            {
                return Ok(HashMap::new())
            }
            Err(e) => return Err(error(e.into())),
        };
        let mut subjects = handle
            .info_with_subjects(filter)
            .await
            .map_err(|e| error(e.into()))?;
        let mut counts: HashMap<String, u64> = HashMap::new();
        while let Some(entry) = subjects.next().await {
            let (subject, count) = entry.map_err(|e| error(e.into()))?;
            counts.insert(subject, count as u64);
        }
        Ok::<_, Error>(counts)
    };
    let service = &spec.service;
    let pending = counts(stream.to_owned(), format!("cbs.{service}.*")).await?;
    let dead = counts(
        DEAD_LETTER_STREAM.to_owned(),
        format!("cbs.$dlq.{service}.*"),
    )
    .await?;
    Ok(spec
        .verbs
        .iter()
        .filter(|verb| verb.delivery == Delivery::Durable)
        .map(|verb| DurableVerbStatus {
            verb: verb.name.clone(),
            pending: pending
                .get(&format!("cbs.{service}.{}", verb.name))
                .copied()
                .unwrap_or(0),
            dead_letters: dead
                .get(&format!("cbs.$dlq.{service}.{}", verb.name))
                .copied()
                .unwrap_or(0),
        })
        .collect())
}

async fn module_condition(spec: &CellSpec, bus: &Bus) -> Result<NewCondition, Error> {
    let verified = |status, reason, message: String| {
        NewCondition::new(types::MODULE_VERIFIED, status, reason, message)
    };
    let module = &spec.module;
    Ok(match (&module.digest, &module.url, &module.command) {
        (_, Some(url), _) => verified(
            Status::True,
            reasons::MODULE_URL,
            format!(
                "pods fetch {} and check its digest",
                cellbus_control::redact_url(url)
            ),
        ),
        (Some(digest), None, _) => {
            if cellbus_control::module_exists(&bus.buckets.modules, digest).await? {
                verified(
                    Status::True,
                    reasons::MODULE_FOUND,
                    format!("module {digest} is in cbs-modules"),
                )
            } else {
                verified(
                    Status::False,
                    reasons::MODULE_MISSING,
                    format!(
                        "module {digest} is not in cbs-modules on {}; push it with `cellbus module push FILE`",
                        cellbus_control::redact_url(&bus.url)
                    ),
                )
            }
        }
        (None, None, Some(command)) => verified(
            Status::True,
            reasons::MODULE_COMMAND,
            format!("runs `{}` from the pool's image", command.join(" ")),
        ),
        (None, None, None) => verified(
            Status::False,
            reasons::INVALID_SPEC,
            "spec.module names no digest, url or command".into(),
        ),
    })
}

/// The next status: the Cell's generation and `conditions` folded into the current ones.
fn next_status(
    cell: &ObservedCell,
    conditions: impl IntoIterator<Item = NewCondition>,
    ctx: &Context,
) -> CellStatus {
    let now = ctx.clock.now();
    CellStatus {
        observed_generation: Some(cell.generation()),
        conditions: set_conditions(&cell.status.conditions, conditions, &now, cell.generation()),
        ..cell.status.clone()
    }
}

async fn update_status(
    object: &CellObject,
    cell: &ObservedCell,
    status: &CellStatus,
    ctx: &Context,
) -> Result<bool, Error> {
    write_status(
        ctx,
        object,
        (&cell.status, &cell.status.conditions),
        (status, &status.conditions),
    )
    .await
}

/// Takes a deleted Cell out of its pool's assignment and deletes its stream unless its
/// policy retains it. Fine when either is already gone.
async fn cleanup(cell: &Arc<ObservedCell>, ctx: &Context) -> Result<(), Error> {
    let pool = cell
        .status
        .pool
        .as_deref()
        .and_then(|name| ctx.snapshot().pool(cell.namespace(), name).cloned());
    if let Some(pool) = &pool {
        ctx.assignments.write(ctx, pool).await?;
    }
    if let Ok(spec) = &cell.spec {
        if let Some(database) = &spec.database {
            crate::controller::database::cleanup(ctx, cell, spec, database).await?;
        }
        let retain = spec
            .stream
            .as_ref()
            .is_some_and(|s| s.deletion_policy == DeletionPolicy::Retain);
        if let (Some(plan), false) = (builders::stream_config(spec, ctx.config.replicas)?, retain) {
            let url = pool
                .as_ref()
                .and_then(|pool| pool.spec.as_ref().ok())
                .map(|pool_spec| ctx.config.bus(pool_spec))
                .unwrap_or(&ctx.config.nats_url);
            let bus = ctx.buses.get(url).await?;
            if cellbus_control::delete_stream(&bus.js, &plan.name).await? {
                tracing::info!(stream = plan.name, "deleted the stream");
            }
        }
    }
    Ok(())
}
